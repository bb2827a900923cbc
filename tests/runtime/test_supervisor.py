"""Background loops that die or hang are restarted and counted; a stopping server restarts nothing."""

import asyncio

from prometheus_client import CollectorRegistry, generate_latest

from shoal.runtime.supervisor import Heartbeat, Supervisor


class Beating:
    """A loop that beats every 10 ms; `mode` makes its next run crash, return or hang."""

    def __init__(self) -> None:
        self.runs = 0
        self.mode = "healthy"

    async def run(self, heartbeat: Heartbeat) -> None:
        self.runs += 1
        mode, self.mode = self.mode, "healthy"
        if mode == "crash":
            raise RuntimeError("bug escaped the tick")
        if mode == "return":
            return
        while True:
            if mode != "hang":
                heartbeat.beat()
            await asyncio.sleep(0.01)


def restarts(registry: CollectorRegistry, name: str) -> float:
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(f'shoal_background_restarts_total{{task="{name}"}}'):
            return float(line.split()[-1])
    return 0.0


async def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_a_killed_loop_is_restarted_and_counted():
    async def scenario():
        registry = CollectorRegistry()
        supervisor = Supervisor(registry, check_interval_s=0.02)
        loop = Beating()
        supervisor.add("controller", loop.run, stall_after_s=5.0)
        await wait_for(lambda: loop.runs == 1)
        supervisor.kill("controller")
        await wait_for(lambda: loop.runs == 2)
        assert supervisor.restart_count("controller") == 1 and restarts(registry, "controller") == 1.0
        await supervisor.stop()

    asyncio.run(scenario())


def test_crashes_and_returns_restart_with_growing_back_off():
    async def scenario():
        supervisor = Supervisor(CollectorRegistry(), check_interval_s=0.02)
        loop = Beating()
        started_at: list[float] = []
        original = loop.run

        async def timed(heartbeat):
            started_at.append(asyncio.get_running_loop().time())
            await original(heartbeat)

        loop.mode = "crash"
        supervisor.add("edge", timed, stall_after_s=5.0)
        await wait_for(lambda: loop.runs == 2)
        assert supervisor.kill("edge")  # a second quick failure in a row: the back-off doubles
        await wait_for(lambda: loop.runs == 3)
        assert started_at[1] - started_at[0] >= 0.1 and started_at[2] - started_at[1] >= 0.2
        loop.mode = "return"
        supervisor.kill("edge")  # the next run returns at once: that is an ending too
        await wait_for(lambda: supervisor.restart_count("edge") == 4)
        assert not supervisor.kill("edge")  # waiting out its back-off: nothing to kill
        await wait_for(lambda: loop.runs == 5)
        await supervisor.stop()

    asyncio.run(scenario())


def test_a_loop_whose_heartbeat_stops_is_cancelled_and_restarted():
    async def scenario():
        supervisor = Supervisor(CollectorRegistry(), check_interval_s=0.02)
        loop = Beating()
        loop.mode = "hang"
        supervisor.add("controller", loop.run, stall_after_s=1.0)
        await wait_for(lambda: loop.runs == 2)  # the hung first run was cancelled
        assert supervisor.restart_count("controller") == 1
        await asyncio.sleep(1.5)  # the second run beats: no more restarts
        assert supervisor.restart_count("controller") == 1
        await supervisor.stop()

    asyncio.run(scenario())


def test_stop_restarts_nothing():
    async def scenario():
        supervisor = Supervisor(CollectorRegistry(), check_interval_s=0.02)
        loop = Beating()
        supervisor.add("controller", loop.run, stall_after_s=5.0)
        await wait_for(lambda: loop.runs == 1)
        await supervisor.stop()
        await asyncio.sleep(0.1)
        assert loop.runs == 1 and supervisor.restart_count("controller") == 0
        assert supervisor._loops["controller"].task.done()

    asyncio.run(scenario())


def test_a_loop_that_swallows_its_cancellation_cannot_hold_up_stop():
    """A hung loop that catches CancelledError is left running when restarted; stop() cancels
    it (and its restarted copies) again and waits at most CANCEL_WAIT_S, rather than for good."""

    async def scenario():
        supervisor = Supervisor(CollectorRegistry(), check_interval_s=0.02)
        supervisor.CANCEL_WAIT_S = 0.2
        running: dict[int, asyncio.Task] = {}
        stubborn_until_released = asyncio.Event()

        async def stubborn(heartbeat: Heartbeat) -> None:
            me = len(running) + 1
            running[me] = asyncio.current_task()
            try:
                while True:
                    try:
                        await asyncio.sleep(10)  # hangs: no beat
                    except asyncio.CancelledError:
                        if not stubborn_until_released.is_set():
                            continue  # every copy swallows its cancellations (a broad except in a tick)
                        raise
            finally:
                del running[me]

        supervisor.add("controller", stubborn, stall_after_s=0.1)
        await wait_for(lambda: supervisor.restart_count("controller") >= 1 and 2 in running)
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(supervisor.stop(), timeout=5.0)
        took_s = asyncio.get_running_loop().time() - started
        left = sorted(running)
        stubborn_until_released.set()  # let the test's event loop close
        for task in list(running.values()):
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        return took_s, left

    # On a daemon thread: code that regresses to waiting for good fails here instead of hanging the suite.
    import threading

    outcome = []
    runner = threading.Thread(target=lambda: outcome.append(asyncio.run(scenario())), daemon=True)
    runner.start()
    runner.join(timeout=10.0)
    assert outcome, "stop() (or the loop's shutdown) did not finish within 10 s"
    took_s, left = outcome[0]
    assert took_s < 1.0  # it used to wait for the running copy for good
    assert left[:2] == [1, 2]  # the abandoned copy and the running one, left behind (and logged)
