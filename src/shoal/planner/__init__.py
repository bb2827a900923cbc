"""Pure decision logic: no I/O, no clocks, no processes.

Every planner is a function from typed inputs to a typed plan, shared by the simulator and the
live controller, so what is evaluated in simulation is what is served. Sub-packages: `edge`
(Jellyfish-style client/variant/batch scheduling), `capacity` and `queueing` (Inferno-style
capacity planning), `workflow` (JellyBean-style DAG placement).
"""
