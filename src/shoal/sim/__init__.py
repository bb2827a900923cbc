"""Discrete-event simulation of shoal's serving, driving the same planner code as the runtime.

    run, stats = simulate_edge(scenario, sim_variants_from_profiles("demo", profiles), "shoal")
"""

from shoal.sim.edge import SimSettings, SimVariant, sim_variants_from_profiles, simulate_edge
from shoal.sim.engine import Engine

__all__ = ["Engine", "SimSettings", "SimVariant", "sim_variants_from_profiles", "simulate_edge"]
