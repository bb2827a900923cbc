"""The edge planner's own process: same plans as in-process, and a stuck or abandoned plan is killed."""

from __future__ import annotations

import asyncio

import pytest

from shoal.experiments.edge_bench import _instance
from shoal.experiments.edge_instances import jellyfish_synthetic_variants
from shoal.planner.edge import plan_edge
from shoal.runtime.edge.planner_process import PlannerProcess


def test_plans_in_its_process_and_recovers_from_a_timeout_and_a_cancelled_caller():
    instance = _instance(jellyfish_synthetic_variants(), 2, 8, 0, 3)
    expected = plan_edge(instance, "shoal")

    async def scenario():
        planner = PlannerProcess()
        try:
            first = await planner.plan(instance, "shoal")
            pid = planner._pool._pool[0].pid
            planner.timeout_s = 1e-4  # a plan that runs past its time takes the process down
            with pytest.raises(TimeoutError):
                await planner.plan(instance, "shoal")
            assert planner._pool is None
            planner.timeout_s = 60.0
            await planner.start()
            slow = _instance(jellyfish_synthetic_variants(), 4, 32, 0, 21)  # about 0.3 s
            waiting = asyncio.create_task(planner.plan(slow, "shoal"))
            await asyncio.sleep(0.05)
            waiting.cancel()  # the caller gives up (the edge loop is being restarted)
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert planner._pool is None
            again = await planner.plan(instance, "shoal")  # a fresh process
            return first, again, pid, planner._pool._pool[0].pid
        finally:
            planner.stop()

    first, again, first_pid, later_pid = asyncio.run(scenario())
    assert first.objective == expected.objective and first.clients == expected.clients
    assert again.objective == expected.objective and later_pid != first_pid
