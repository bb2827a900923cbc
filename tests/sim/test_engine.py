"""The discrete-event engine."""

from shoal.sim.engine import Engine


def test_events_run_in_time_order_and_ties_in_insertion_order():
    engine = Engine()
    seen = []
    engine.at(2.0, lambda: seen.append(("b", engine.now)))
    engine.at(1.0, lambda: seen.append(("a", engine.now)))
    engine.at(2.0, lambda: seen.append(("c", engine.now)))
    engine.at(1.0, lambda: engine.after(0.5, lambda: seen.append(("d", engine.now))))
    engine.run(until_s=10.0)
    assert seen == [("a", 1.0), ("d", 1.5), ("b", 2.0), ("c", 2.0)]
    assert engine.now == 10.0 and engine.events_run == 5


def test_run_stops_at_the_horizon_and_the_past_is_now():
    engine = Engine()
    seen = []
    engine.at(5.0, lambda: seen.append(engine.now))
    engine.run(until_s=3.0)
    assert seen == [] and engine.clock() == 3.0
    engine.at(1.0, lambda: seen.append(engine.now))  # in the past: runs at the current time
    engine.run(until_s=6.0)
    assert seen == [3.0, 5.0]
