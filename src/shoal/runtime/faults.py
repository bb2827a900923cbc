"""Opt-in fault injection: `POST /v2/faults/{loop}/kill` ends a supervised background loop.

Only mounted with `shoal serve --fault-injection`, and guarded by the admin token like the
other management endpoints. It exists so that a black-box test (`shoal bench reliability`)
can kill the controller of a running server the way a crash would, and check that the
supervisor brings it back while requests keep being answered. Worker processes need no such
hook: a test can SIGKILL them from outside.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shoal.runtime.errors import NotFoundError
from shoal.runtime.http_frontend import check_admin_token, guarded
from shoal.runtime.supervisor import Supervisor

__all__ = ["fault_route"]


def fault_route(supervisor: Supervisor, admin_token: str | None) -> Route:
    async def kill(request: Request) -> JSONResponse:
        check_admin_token(request, admin_token)
        name = request.path_params["loop"]
        if name not in supervisor.names():
            raise NotFoundError(f"no background loop {name!r}; use one of {', '.join(supervisor.names())}")
        before = supervisor.restart_count(name)
        if not supervisor.kill(name):
            return JSONResponse({"error": f"{name!r} is not running (it is waiting to be restarted); try again"}, status_code=409)
        return JSONResponse({"killed": name, "restarts_before": before}, status_code=202)

    return Route("/v2/faults/{loop}/kill", guarded(kill), methods=["POST"])
