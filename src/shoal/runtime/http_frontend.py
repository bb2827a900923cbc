"""KServe v2 / Open Inference Protocol over HTTP (Starlette), with Triton's binary extension.

Routes: /v2, /v2/health/{live,ready}, /v2/models/{m}[/versions/{v}][/ready|/infer|/config|/stats],
where {m} is a family, a `<family>.<variant>` or a served workflow (its deployment's name) and
{v}, if given, must be 1 (every model has that one version), /v2/models/stats (every variant's,
Triton's statistics extension),
/v2/repository/index, /v2/repository/models/{m}/{load,unload}, shoal's replica extension
(POST /v2/repository/models/{m}/replicas {"replicas": n}, GET /v2/repository/replicas),
registration (POST /v2/repository/families/{f}/variants/{v}, the ONNX file as body: accuracy
and profile are measured before the variant becomes selectable), Triton's system shared-memory
extension (/v2/systemsharedmemory[/region/{r}]/{status,register,unregister}: `shoal.runtime.shared_memory`),
/metrics and /openapi.json (this API, for clients and fuzzers). Every error is a
JSON body `{"error": ...}` with the status the ServingError carries; anything unexpected is
a 500 with a generic message, logged with its traceback.
"""

from __future__ import annotations

import json
import logging
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from shoal.runtime.codec import decode_http_request, encode_http_response
from shoal.runtime.endpoints import ServedModels, check_admin_authorization
from shoal.runtime.errors import BadRequestError, OverloadedError, PayloadTooLargeError, RequirementsUnmetError, ServingError, UnsupportedEncodingError
from shoal.runtime.http_body import read_limited_body
from shoal.runtime.openapi import openapi_document
from shoal.runtime.scheduler import monotonic_ms
from shoal.runtime.service import GATE_REFUSAL_MESSAGE, InferenceService
from shoal.runtime.shared_memory import check_same_host

if TYPE_CHECKING:
    from shoal.runtime.workflow import WorkflowExecutor

__all__ = ["InferFastPath", "build_http_app", "check_admin_token", "error_response", "guarded"]

logger = logging.getLogger(__name__)
HEADER_LENGTH = "inference-header-content-length"


def check_admin_token(request: Request, admin_token: str | None) -> None:
    """Management endpoints need 'Authorization: Bearer <token>' when the server has a token."""
    check_admin_authorization(request.headers.get("authorization"), admin_token)


def error_response(error: ServingError) -> JSONResponse:
    headers = {}
    if isinstance(error, OverloadedError):
        headers["Retry-After"] = str(error.retry_after_whole_s)
    body: dict = {"error": error.message}
    if isinstance(error, RequirementsUnmetError):
        body["alternatives"] = error.alternatives
    return JSONResponse(body, status_code=error.http_status, headers=headers)


_DECOMPRESSORS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "identity": None}
"""Content-Encoding -> zlib's wbits: the request compressions tritonclient.http offers
(`request_compression_algorithm`), as Triton reads them; Inference-Header-Content-Length then
counts the decompressed body."""


def decompress_body(body: bytes, encoding: str, max_body_bytes: int) -> bytes:
    """The body as sent before its Content-Encoding, bounded by the body limit after
    decompression too (a few kilobytes of gzip can hold gigabytes)."""
    name = encoding.strip().lower()
    if name not in _DECOMPRESSORS:
        raise UnsupportedEncodingError(f"Content-Encoding {encoding[:40]!r} is not supported; send the body as is, gzip or deflate")
    wbits = _DECOMPRESSORS[name]
    if wbits is None:
        return body
    parts, size, rest = [], 0, body
    while True:  # gzip allows several members one after the other (gzip.decompress reads them all)
        decompressor = zlib.decompressobj(wbits)
        try:
            part = decompressor.decompress(rest, max_body_bytes + 1 - size)
        except zlib.error as error:
            raise BadRequestError(f"request body is not valid {name} data ({error})") from None
        size += len(part)
        parts.append(part)
        if size > max_body_bytes or decompressor.unconsumed_tail:
            raise PayloadTooLargeError(f"request body exceeds the limit of {max_body_bytes} bytes once decompressed")
        if not decompressor.eof:
            raise BadRequestError(f"request body ends in the middle of its {name} data")
        rest = decompressor.unused_data
        if not rest:
            return b"".join(parts)
        if name != "gzip":
            raise BadRequestError(f"request body has {len(rest)} bytes after its {name} data")


def guarded(handler):
    """Wrap a route handler: a ServingError becomes its status and message, anything else a
    logged, generic 500."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ServingError as error:
            return error_response(error)
        except ClientDisconnect:  # gone while its body was read: nobody reads this, and it is no server fault
            logger.debug("client left during its request to %s", request.url.path)
            return JSONResponse({"error": "client disconnected"}, status_code=400)
        except Exception:
            logger.exception("unexpected error on %s", request.url.path)
            return JSONResponse({"error": "internal server error"}, status_code=500)

    return endpoint


_INFER_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


_SATURATED_BODY = json.dumps({"error": GATE_REFUSAL_MESSAGE}).encode()
_SATURATED_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_SATURATED_BODY)).encode()),
    (b"retry-after", b"1"),
]


class InferFastPath:
    """ASGI app: inference requests go straight to their endpoint, everything else to Starlette.

    Why: Starlette's two middlewares and its route-by-route matching cost about a tenth of the
    frontend's CPU per inference request on light models, where the frontend is the bottleneck.
    The endpoint is the same `guarded` handler the Starlette routes use (it turns every error
    into a response itself), so behaviour does not depend on which way a request came; other
    methods on these paths still reach Starlette (405). The endpoint gets no `app` or `router`
    in its scope (it uses neither); behind a `root_path` the paths carry a prefix, do not match
    here, and take Starlette's way.

    `refuse(model)` is asked first: when it says so, the request is answered 429 from prebuilt
    bytes without reading its body (`InferenceService.refuse_at_gate`: the cheapest answer
    the loop can give when it is itself the bottleneck; the HTTP server discards the unread body
    and keeps the connection)."""

    def __init__(self, infer_endpoint, app: ASGIApp, refuse: Callable[[str], bool] | None = None):
        self.infer_endpoint = infer_endpoint
        self.app = app
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                # A version that does not exist is a 404 whatever the load (the endpoint says so).
                if self.refuse is not None and match["version"] in (None, "1") and self.refuse(match["model"]):
                    await send({"type": "http.response.start", "status": 429, "headers": _SATURATED_HEADERS})
                    await send({"type": "http.response.body", "body": _SATURATED_BODY})
                    return
                scope["path_params"] = {key: value for key, value in match.groupdict().items() if value is not None}
                response = await self.infer_endpoint(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_http_app(
    service: InferenceService,
    *,
    max_body_bytes: int = 64 * 1024 * 1024,
    admin_token: str | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    workflows: Mapping[str, "WorkflowExecutor"] | None = None,
) -> InferFastPath:
    models = ServedModels(service, workflows)

    def require_token(request: Request) -> None:
        check_admin_token(request, admin_token)

    async def read_body(request: Request) -> bytes:
        body = await read_limited_body(request, max_body_bytes)
        encoding = request.headers.get("content-encoding")
        return body if encoding is None else decompress_body(body, encoding, max_body_bytes)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(service.server_metadata())

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        is_ready = service.is_ready()
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    def versioned_model(request: Request) -> str:
        """The path's model (all of them with /v2/models/stats), after checking it and the
        version it names, if any: both a 404 (before a large body is read)."""
        model = request.path_params.get("model", "")
        if model:
            models.check(model, request.path_params.get("version"))
        return model

    async def model_metadata(request: Request) -> Response:
        return JSONResponse(models.metadata(versioned_model(request)))

    async def model_config(request: Request) -> Response:
        return JSONResponse(models.config(versioned_model(request)))

    async def model_statistics(request: Request) -> Response:
        return JSONResponse({"model_stats": models.statistics(versioned_model(request))})

    async def model_ready(request: Request) -> Response:
        is_ready = models.is_ready(versioned_model(request))
        return JSONResponse({"name": request.path_params["model"], "ready": is_ready}, status_code=200 if is_ready else 503)

    async def infer(request: Request) -> Response:
        received_ms = monotonic_ms()
        model = versioned_model(request)
        body = await read_body(request)
        header_length = request.headers.get(HEADER_LENGTH)
        # str.isdigit takes "²"; past 20 digits int() is slow, and past 4,300 it raises.
        if header_length is not None and not (header_length.isascii() and header_length.isdigit() and len(header_length) <= 20):
            raise BadRequestError(f"Inference-Header-Content-Length must be a non-negative integer, got {header_length[:40]!r}")
        decoded = decode_http_request(body, int(header_length) if header_length is not None else None, service.shared_memory)
        answer = await models.infer(model, decoded.inputs, decoded.parameters, decoded.requested_outputs, received_ms=received_ms,
                                    classifications=decoded.classifications)
        payload, json_length = encode_http_response(
            model,
            answer.outputs,
            request_id=decoded.request_id,
            parameters=answer.parameters,
            binary_outputs=decoded.binary_outputs,
            binary_by_default=decoded.binary_by_default,
            shared_memory_outputs=decoded.shared_memory_outputs,
            shared_memory=service.shared_memory,
        )
        if json_length is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(json_length)})

    async def repository_index(request: Request) -> Response:
        entries = service.repository_index()
        body = await read_body(request) if request.method == "POST" else b""
        if body.strip():
            try:
                query = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                raise BadRequestError('body must be JSON like {"ready": true}') from None
            ready = query.get("ready", False) if isinstance(query, dict) else None
            if not isinstance(ready, bool):
                raise BadRequestError("'ready' must be true or false")
            if ready:  # only the models ready now, as the request asks
                entries = [entry for entry in entries if entry["state"] == "READY"]
        return JSONResponse(entries)

    async def load(request: Request) -> Response:
        require_token(request)
        await service.load_model(request.path_params["model"])
        return JSONResponse({})

    async def unload(request: Request) -> Response:
        require_token(request)
        await service.unload_model(request.path_params["model"])
        return JSONResponse({})

    async def register(request: Request) -> Response:
        require_token(request)
        body = await read_body(request)
        if not body:
            raise BadRequestError("the body must be the variant's ONNX file (Content-Type: application/octet-stream)")
        answer = await service.register_variant(request.path_params["family"], request.path_params["variant"], body)
        return JSONResponse(answer, status_code=201)

    async def replicas(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(service.replica_counts())
        require_token(request)
        try:
            body = json.loads(await read_body(request))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
            raise BadRequestError("body must be JSON like {\"replicas\": 2}") from None
        if not isinstance(body, dict) or "replicas" not in body:
            raise BadRequestError("body must be JSON like {\"replicas\": 2}")
        reached = await service.set_replicas(request.path_params["model"], body["replicas"])
        return JSONResponse({"model": request.path_params["model"], "replicas": reached})

    async def shared_memory_status(request: Request) -> Response:
        return JSONResponse(service.shared_memory.status(request.path_params.get("region", "")))

    async def shared_memory_register(request: Request) -> Response:
        check_same_host(request.client.host if request.client else None)
        require_token(request)
        usage = 'body must be JSON like {"key": "/images", "offset": 0, "byte_size": 196608}'
        try:
            body = json.loads(await read_body(request))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise BadRequestError(usage) from None
        if not isinstance(body, dict) or "key" not in body or "byte_size" not in body:
            raise BadRequestError(usage)
        service.shared_memory.register(request.path_params["region"], body["key"], body.get("offset", 0), body["byte_size"])
        return JSONResponse({})

    async def shared_memory_unregister(request: Request) -> Response:
        check_same_host(request.client.host if request.client else None)
        require_token(request)
        service.shared_memory.unregister(request.path_params.get("region", ""))
        return JSONResponse({})

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(str(request.base_url).rstrip("/"), models.names()))

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")

    infer_endpoint = guarded(infer)
    routes = [
        Route("/v2", guarded(server_metadata), methods=["GET"]),
        Route("/v2/health/live", guarded(live), methods=["GET"]),
        Route("/v2/health/ready", guarded(ready), methods=["GET"]),
        Route("/v2/models/stats", guarded(model_statistics), methods=["GET"]),
        Route("/v2/models/{model}", guarded(model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/stats", guarded(model_statistics), methods=["GET"]),
        Route("/v2/models/{model}/config", guarded(model_config), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/config", guarded(model_config), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/stats", guarded(model_statistics), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", guarded(model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/ready", guarded(model_ready), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", guarded(model_ready), methods=["GET"]),
        Route("/v2/models/{model}/infer", infer_endpoint, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer_endpoint, methods=["POST"]),
        Route("/v2/repository/index", guarded(repository_index), methods=["POST", "GET"]),
        Route("/v2/repository/models/{model}/load", guarded(load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", guarded(unload), methods=["POST"]),
        Route("/v2/repository/models/{model}/replicas", guarded(replicas), methods=["POST"]),
        Route("/v2/repository/replicas", guarded(replicas), methods=["GET"]),
        Route("/v2/repository/families/{family}/variants/{variant}", guarded(register), methods=["POST"]),
        Route("/v2/systemsharedmemory/status", guarded(shared_memory_status), methods=["GET"]),
        Route("/v2/systemsharedmemory/region/{region}/status", guarded(shared_memory_status), methods=["GET"]),
        Route("/v2/systemsharedmemory/region/{region}/register", guarded(shared_memory_register), methods=["POST"]),
        Route("/v2/systemsharedmemory/unregister", guarded(shared_memory_unregister), methods=["POST"]),
        Route("/v2/systemsharedmemory/region/{region}/unregister", guarded(shared_memory_unregister), methods=["POST"]),
        Route("/metrics", guarded(metrics), methods=["GET"]),
        Route("/openapi.json", guarded(openapi), methods=["GET"]),
    ]

    return InferFastPath(infer_endpoint, Starlette(routes=[*routes, *extra_routes]), refuse=models.refuse_at_gate)
