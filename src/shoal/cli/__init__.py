"""The `shoal` command.

Each command group lives in its own module and registers itself on the root app; this module
only assembles them and turns shoal's errors into one line on stderr and a non-zero exit status,
as the command-line contract in DESIGN.md promises.
"""

from __future__ import annotations

import signal
import sys
import threading

from shoal.cli._app import app, bench_app, plan_app, zoo_app
from shoal.core.errors import DeviceUnavailableError, ProcessFailedError, ShoalError

# Importing a command module registers its commands on the apps above.
from shoal.cli import demo as _demo  # noqa: F401,E402
from shoal.cli import plan as _plan  # noqa: F401,E402
from shoal.cli import plan_edge as _plan_edge  # noqa: F401,E402
from shoal.cli import plan_workflow as _plan_workflow  # noqa: F401,E402
from shoal.cli import plan_capacity as _plan_capacity  # noqa: F401,E402
from shoal.cli import profile as _profile  # noqa: F401,E402
from shoal.cli import serve as _serve  # noqa: F401,E402
from shoal.cli import bench_serve as _bench_serve  # noqa: F401,E402
from shoal.cli import bench_edge_serve as _bench_edge_serve  # noqa: F401,E402
from shoal.cli import bench_modelless as _bench_modelless  # noqa: F401,E402
from shoal.cli import bench_reliability as _bench_reliability  # noqa: F401,E402
from shoal.cli import bench_ray as _bench_ray  # noqa: F401,E402
from shoal.cli import experiment as _experiment  # noqa: F401,E402
from shoal.cli import workflow as _workflow  # noqa: F401,E402
from shoal.cli import zoo as _zoo  # noqa: F401,E402

__all__ = ["app", "bench_app", "main", "plan_app", "zoo_app"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; shoal's own errors become `error: ...` on stderr with exit status 2 (1 for devices and failed processes).

    Typer runs in standalone mode so that usage errors (a missing option, a bad value) are
    printed by typer itself and end in SystemExit with click's status 2.
    """
    # SIGTERM as Ctrl-C: the commands' `finally` blocks then stop the servers they started,
    # which live in sessions of their own and outlived a plain SIGTERM (`shoal demo`, experiments).
    global _terminated
    _terminated = False
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        app(args=argv, standalone_mode=True)
    except ShoalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1 if isinstance(error, (DeviceUnavailableError, ProcessFailedError)) else 2
    except SystemExit as exit_request:
        if _terminated:  # click turned it into "Aborted!" and 1: a terminated process says so
            return 128 + signal.SIGTERM
        code = exit_request.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


_terminated = False


def _interrupt(signum: int, frame: object) -> None:
    global _terminated
    _terminated = True
    raise KeyboardInterrupt(f"signal {signum}")
