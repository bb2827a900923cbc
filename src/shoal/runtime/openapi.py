"""The OpenAPI 3.0 description of the HTTP API, served at /openapi.json.

Written by hand because the routes are plain Starlette handlers speaking KServe v2; the
document is what clients and fuzzers (schemathesis, in the test suite) read, so it names every
route, its parameters and the request body schemas the server validates.
"""

from __future__ import annotations

from typing import Any

from shoal import __version__
from shoal.runtime.codec import DATATYPE_TO_NUMPY

__all__ = ["openapi_document"]

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string", "enum": sorted(DATATYPE_TO_NUMPY)},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": {"type": "array"},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
    },
}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}}},
        "parameters": {
            "type": "object",
            "properties": {
                "slo_ms": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
                "timeout": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "description": "microseconds, as Triton"},
                "priority": {"type": "integer"},
                "min_accuracy": {"type": "number", "minimum": 0, "maximum": 1},
                "max_cost_per_1000_usd": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
                "binary_data_output": {"type": "boolean"},
            },
        },
    },
}


def _responses(*codes: int, ok_schema: dict | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": {"schema": ok_schema or {"type": "object"}}}}}
    for code in codes:
        responses[str(code)] = {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
    return responses


def _path(name: str, values: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if values:
        schema["enum"] = values
    return {"name": name, "in": "path", "required": True, "schema": schema}


def openapi_document(server_url: str, model_names: list[str] | None = None) -> dict[str, Any]:
    """The API description; `model_names` (families, variants, workflows) enumerate {model}."""
    model = [_path("model", model_names)]
    versioned = [_path("model", model_names), _path("version", ["1"])]
    secured = [{"bearer": []}]
    infer = {
        "post": {
            "summary": "Inference (KServe v2; Triton's binary tensor extension also accepted)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _INFER_REQUEST}}},
            "responses": _responses(400, 404, 413, 422, 429, 503, 504),
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "shoal", "version": __version__, "description": "SLO-aware, model-less inference serving (KServe v2 / Open Inference Protocol)."},
        "servers": [{"url": server_url}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v2": {"get": {"summary": "Server metadata", "responses": _responses()}},
            "/v2/health/live": {"get": {"summary": "Liveness", "responses": _responses()}},
            "/v2/health/ready": {"get": {"summary": "Readiness", "responses": _responses(503)}},
            "/v2/models/{model}": {"get": {"summary": "Model metadata", "parameters": model, "responses": _responses(404)}},
            "/v2/models/{model}/versions/{version}": {"get": {"summary": "Model metadata", "parameters": versioned, "responses": _responses(404)}},
            "/v2/models/{model}/ready": {"get": {"summary": "Model readiness", "parameters": model, "responses": _responses(404, 503)}},
            "/v2/models/{model}/versions/{version}/ready": {"get": {"summary": "Model readiness", "parameters": versioned, "responses": _responses(404, 503)}},
            "/v2/models/{model}/config": {"get": {"summary": "Model configuration, as Triton reports it", "parameters": model, "responses": _responses(404)}},
            "/v2/models/{model}/versions/{version}/config": {"get": {"summary": "Model configuration", "parameters": versioned, "responses": _responses(404)}},
            "/v2/models/stats": {"get": {"summary": "Inference statistics of every variant (Triton's statistics extension)", "responses": _responses()}},
            "/v2/models/{model}/stats": {"get": {"summary": "Inference statistics (a family: of each variant)", "parameters": model, "responses": _responses(404)}},
            "/v2/models/{model}/versions/{version}/stats": {"get": {"summary": "Inference statistics", "parameters": versioned, "responses": _responses(404)}},
            "/v2/models/{model}/infer": {"post": {**infer["post"], "parameters": model}},
            "/v2/models/{model}/versions/{version}/infer": {"post": {**infer["post"], "parameters": versioned}},
            "/v2/repository/index": {"get": {"summary": "Models and their state", "responses": _responses(ok_schema={"type": "array"})},
                                     "post": {"summary": "Models and their state", "responses": _responses(ok_schema={"type": "array"})}},
            "/v2/repository/models/{model}/load": {"post": {"summary": "Load a model", "parameters": model, "security": secured, "responses": _responses(401, 404)}},
            "/v2/repository/models/{model}/unload": {"post": {"summary": "Unload a model", "parameters": model, "security": secured, "responses": _responses(401, 404)}},
            "/v2/repository/models/{model}/replicas": {
                "post": {
                    "summary": "Run a variant on n workers", "parameters": model, "security": secured,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["replicas"], "properties": {"replicas": {"type": "integer", "minimum": 0}}}}}},
                    "responses": _responses(400, 401, 404),
                }
            },
            "/v2/repository/replicas": {"get": {"summary": "Workers holding each variant", "responses": _responses()}},
            "/v2/repository/families/{family}/variants/{variant}": {
                "post": {
                    "summary": "Register a variant (measured before it becomes selectable)", "parameters": [_path("family"), _path("variant")],
                    "security": secured,
                    "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    "responses": {**_responses(400, 401, 404, 413), "201": {"description": "registered", "content": {"application/json": {"schema": {"type": "object"}}}}},
                }
            },
            "/v2/systemsharedmemory/status": {"get": {"summary": "Registered shared-memory regions (Triton's system shared-memory extension)", "responses": _responses(ok_schema={"type": "array"})}},
            "/v2/systemsharedmemory/region/{region}/status": {"get": {"summary": "One registered region", "parameters": [_path("region")], "responses": _responses(404, ok_schema={"type": "array"})}},
            "/v2/systemsharedmemory/region/{region}/register": {
                "post": {
                    "summary": "Register a window of a POSIX shared-memory object as a region", "parameters": [_path("region")], "security": secured,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["key", "byte_size"],
                        "properties": {"key": {"type": "string"}, "offset": {"type": "integer", "minimum": 0}, "byte_size": {"type": "integer", "minimum": 1}},
                    }}}},
                    "responses": _responses(400, 401, 403, 404, 413),
                }
            },
            "/v2/systemsharedmemory/unregister": {"post": {"summary": "Unregister every region", "security": secured, "responses": _responses(401, 403)}},
            "/v2/systemsharedmemory/region/{region}/unregister": {"post": {"summary": "Unregister a region", "parameters": [_path("region")], "security": secured, "responses": _responses(401, 403)}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": _responses()}},
        },
    }
