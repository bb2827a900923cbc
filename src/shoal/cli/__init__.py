"""The `shoal` command.

Each command group lives in its own module and registers itself on the root app; this module
only assembles them and turns shoal's errors into one line on stderr and a non-zero exit status,
as the command-line contract in DESIGN.md promises.
"""

from __future__ import annotations

import sys

from shoal.cli._app import app, bench_app, plan_app, zoo_app
from shoal.core.errors import DeviceUnavailableError, ShoalError

# Importing a command module registers its commands on the apps above.
from shoal.cli import demo as _demo  # noqa: F401,E402
from shoal.cli import plan as _plan  # noqa: F401,E402
from shoal.cli import plan_workflow as _plan_workflow  # noqa: F401,E402
from shoal.cli import plan_capacity as _plan_capacity  # noqa: F401,E402
from shoal.cli import profile as _profile  # noqa: F401,E402
from shoal.cli import serve as _serve  # noqa: F401,E402
from shoal.cli import zoo as _zoo  # noqa: F401,E402

__all__ = ["app", "bench_app", "main", "plan_app", "zoo_app"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; shoal's own errors become `error: ...` on stderr with exit status 2 (1 for devices)."""
    try:
        app(args=argv, standalone_mode=False)
    except ShoalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1 if isinstance(error, DeviceUnavailableError) else 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_request:
        return int(exit_request.code or 0)
    except Exception as error:  # click's usage errors arrive here in non-standalone mode
        from click.exceptions import ClickException, Abort

        if isinstance(error, ClickException):
            error.show()
            return error.exit_code
        if isinstance(error, Abort):
            return 1
        raise
    return 0
