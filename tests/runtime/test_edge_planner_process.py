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


def test_a_planner_process_that_dies_mid_plan_fails_that_plan_at_once_and_the_next_plan_works():
    """The pool would replace its dead worker and drop the plan without a word: the caller used
    to wait out the whole timeout (60 s) with no re-planning meanwhile."""
    import os
    import signal
    import time

    from shoal.runtime.edge.planner_process import PlannerDiedError

    instance = _instance(jellyfish_synthetic_variants(), 2, 8, 0, 3)

    async def scenario():
        planner = PlannerProcess(timeout_s=30.0)
        try:
            await planner.plan(instance, "shoal")
            slow = _instance(jellyfish_synthetic_variants(), 4, 32, 0, 21)  # about 0.3-1 s
            waiting = asyncio.create_task(planner.plan(slow, "shoal"))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            os.kill(planner._pool._pool[0].pid, signal.SIGKILL)
            with pytest.raises(PlannerDiedError):
                await waiting
            failed_after_s = time.monotonic() - started
            again = await planner.plan(instance, "shoal")
            return failed_after_s, again
        finally:
            planner.stop()

    failed_after_s, again = asyncio.run(scenario())
    assert failed_after_s < 5.0 and again.objective == plan_edge(instance, "shoal").objective


def test_a_planner_process_killed_between_plans_neither_freezes_the_server_nor_stalls_the_next_plan():
    """A pool worker killed while it waits for a task dies holding the task queue's lock: its
    replacement never reads a plan, and `Pool.terminate` waits for that lock for good (it froze
    the event loop when called there). The next plan now starts a fresh process at once."""
    import os
    import signal
    import time

    instance = _instance(jellyfish_synthetic_variants(), 2, 8, 0, 3)

    async def scenario():
        planner = PlannerProcess(timeout_s=30.0)
        try:
            await planner.plan(instance, "shoal")
            os.kill(planner._pool._pool[0].pid, signal.SIGKILL)
            await asyncio.sleep(1.0)  # the pool replaces the process meanwhile
            started = time.monotonic()
            plan = await planner.plan(instance, "shoal")
            return time.monotonic() - started, plan
        finally:
            planner.stop()

    took_s, plan = asyncio.run(scenario())
    assert took_s < 10.0 and plan.objective == plan_edge(instance, "shoal").objective
