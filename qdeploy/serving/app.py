"""The HTTP API: Open Inference Protocol (KServe v2) endpoints on Starlette, plus /metrics.

Endpoints, as Triton serves them (so `tritonclient.http` works unmodified):
  GET  /v2                                   server metadata
  GET  /v2/health/live, /v2/health/ready     liveness, readiness (200 or 503)
  GET  /v2/models/{name}[/versions/{v}]      model metadata
  GET  /v2/models/{name}[/versions/{v}]/ready
  GET  /v2/models/{name}[/versions/{v}]/config   config.pbtxt as JSON
  POST /v2/models/{name}[/versions/{v}]/infer    JSON or binary tensors
  POST /v2/repository/index                  every model version and its state (Triton's repository extension)
  POST /v2/repository/models/{name}/load, /unload   explicit model control (model_control)
  GET  /metrics                              Prometheus text format
Every error is JSON `{"error": "..."}` with a 4xx/5xx status; one request's failure never
touches another's (bad input is refused before it can join a batch). Once a graceful
shutdown begins, readiness turns 503 and infer requests still arriving on open connections get
503 (retry elsewhere) while the ones already queued or running finish.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import AsyncIterator, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from qdeploy import __version__
from qdeploy.errors import QDeployError
from qdeploy.serving.batcher import SHUTTING_DOWN
from qdeploy.serving.metrics import ServingMetrics
from qdeploy.serving.model_control import ModelControl
from qdeploy.serving.models import ServedModel
from qdeploy.serving.protocol import (HEADER_LENGTH, RequestError, decode_infer_request, decompress_body,
                                      encode_infer_response)
from qdeploy.serving.repository import config_json

EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository"]
log = logging.getLogger(__name__)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class InferenceAPI:
    """Routes over the models a ModelControl serves; the app's lifespan starts and drains them."""

    def __init__(self, control: ModelControl, max_body_bytes: int) -> None:
        self.control = control
        self.max_body_bytes = max_body_bytes
        self.metrics = ServingMetrics()
        self.ready = False
        self.draining = False
        control.on_ready = self._observe

    def _observe(self, model: ServedModel) -> None:
        """Metrics for a version that starts serving: batches per model name, queue depth over its ready versions."""
        model.batcher.on_batch = self.metrics.batch_observer(model.name)
        state = self.control.models[model.name]
        self.metrics.track_queue(model.name, lambda: sum(m.batcher.queue_depth for m in state.ready.values()))

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Start batchers (and polling); at shutdown (after uvicorn let in-flight requests finish) drain them."""
        await self.control.start()
        self.ready = True
        try:
            yield
        finally:
            self.ready = False
            await self.control.close()

    def begin_drain(self) -> None:
        """Graceful shutdown has begun: not ready, and new infer requests get 503 at once."""
        self.ready = False
        self.draining = True

    def model(self, request: Request) -> ServedModel:
        """The version a URL names, else the newest ready one; 400 for path characters, 404 otherwise."""
        return self.control.resolve(request.path_params["name"], request.path_params.get("version"))

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "qdeploy", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def server_ready(self, request: Request) -> Response:
        return JSONResponse({"ready": self.ready}, status_code=200 if self.ready else 503)

    async def model_metadata(self, request: Request) -> Response:
        model = self.model(request)
        versions = sorted(self.control.models[model.name].ready, reverse=True)
        return JSONResponse({**model.metadata(), "versions": [str(v) for v in versions]})

    async def model_ready(self, request: Request) -> Response:
        """200 when the version (or any version) is READY and the server is not shutting down; 400 as Triton."""
        model = self.model(request)
        return JSONResponse({"name": model.name, "ready": self.ready}, status_code=200 if self.ready else 503)

    async def model_config(self, request: Request) -> Response:
        return JSONResponse(config_json(self.model(request).config))

    async def repository_index(self, request: Request) -> Response:
        """Triton's repository index: every model with its version and state; {"ready": true} filters."""
        body = await self._body(request)
        try:
            options = json.loads(body) if body.strip() else {}
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise RequestError(f"repository index request JSON is malformed: {exc}") from exc
        if not isinstance(options, dict) or not isinstance(options.get("ready", False), bool):
            raise RequestError("repository index request must be a JSON object like {\"ready\": true}")
        return JSONResponse(self.control.index(ready_only=options.get("ready", False)))

    async def _parameters(self, request: Request, action: str) -> dict:
        """The `parameters` object of a load/unload request body (empty body: none)."""
        body = await self._body(request)
        try:
            document = json.loads(body) if body.strip() else {}
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise RequestError(f"{action} request JSON is malformed: {exc}") from exc
        parameters = document.get("parameters", {}) if isinstance(document, dict) else None
        if not isinstance(parameters, dict):
            raise RequestError(f"{action} request must be a JSON object like {{\"parameters\": {{...}}}}")
        return parameters

    async def load_model(self, request: Request) -> Response:
        """Triton's repository extension: (re)load a model; 200 with an empty body once its versions are READY."""
        parameters = await self._parameters(request, "load")
        await self.control.load(request.path_params["name"], parameters)
        return Response(b"", media_type="application/json")

    async def unload_model(self, request: Request) -> Response:
        """Take a model out of service: no new requests from now, the in-flight ones finish first."""
        parameters = await self._parameters(request, "unload")
        if not isinstance(parameters.get("unload_dependents", False), bool):
            raise RequestError("'unload_dependents' must be true or false")
        await self.control.unload(request.path_params["name"])
        return Response(b"", media_type="application/json")

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def _body(self, request: Request) -> bytes:
        """The (decompressed) body, refused with 413 as soon as it passes the size limit."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise RequestError(f"request body of {declared} bytes exceeds the {self.max_body_bytes}-byte limit", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise RequestError(f"request body exceeds the {self.max_body_bytes}-byte limit", 413)
            chunks.append(chunk)
        return decompress_body(b"".join(chunks), request.headers.get("content-encoding"), self.max_body_bytes)

    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        label, request_id = "", None
        try:
            label = self.model(request).name  # unknown models are refused before their body is read
            infer_request = decode_infer_request(await self._body(request), request.headers.get(HEADER_LENGTH))
            request_id = infer_request.request_id
            if self.draining:  # checked once the body is in: it may have been sent as the shutdown began
                raise RequestError(SHUTTING_DOWN, 503)
            # Picked now, with no await until the request is queued on it: a version swapped out
            # meanwhile is never handed a request after its batcher began to drain.
            model = self.model(request)
            selected = infer_request.selected_outputs(model.output_names)
            outputs = await model.infer(infer_request)
            body, headers = encode_infer_response(model.name, model.version, infer_request, outputs, selected)
            response = Response(body, headers=headers)
        except RequestError as exc:
            if exc.status == 500:
                log.error("model %r request %s failed: %s", label, request_id, exc, exc_info=exc)
            response = error_response(exc.status, str(exc))
        except QDeployError as exc:  # Engine.feeds: names, dtypes, shapes, NaN
            log.warning("model %r request %s refused: %s", label, request_id, exc)
            response = error_response(400, str(exc))
        except Exception as exc:  # an engine or server bug: this request fails, the trace goes to the log
            log.exception("model %r request %s failed", label, request_id)
            response = error_response(500, f"internal server error ({type(exc).__name__}); see the server log")
        self.metrics.record(label, response.status_code, time.perf_counter() - started)
        return response

    def routes(self) -> list[Route]:
        """Every endpoint; infer first, since Starlette tries routes in order and infer is the hot path."""
        infer = [Route("/v2/models/{name}/infer", self.infer, methods=["POST"]),
                 Route("/v2/models/{name}/versions/{version}/infer", self.infer, methods=["POST"])]
        model_routes = [
            ("", self.model_metadata, ["GET"]),
            ("/ready", self.model_ready, ["GET"]),
            ("/config", self.model_config, ["GET"]),
        ]
        routes = infer + [
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.server_ready, methods=["GET"]),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/repository/models/{name}/load", self.load_model, methods=["POST"]),
            Route("/v2/repository/models/{name}/unload", self.unload_model, methods=["POST"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
        ]
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            routes += [Route(prefix + suffix, handler, methods=methods) for suffix, handler, methods in model_routes]
        return routes


async def _request_error(request: Request, exc: RequestError) -> Response:
    return error_response(exc.status, str(exc))


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404/405 (unknown paths, e.g. model names with '/'), as JSON errors."""
    return error_response(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug outside infer, not a bad request: still a JSON answer, its traceback in the log."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal server error ({type(exc).__name__}); see the server log")


def create_app(models: Sequence[ServedModel] | ModelControl, max_body_bytes: int = 64 << 20) -> Starlette:
    """The ASGI app for `models` (fixed) or a ModelControl; `app.state.api` exposes the routes' state."""
    control = models if isinstance(models, ModelControl) else ModelControl.fixed(models)
    api = InferenceAPI(control, max_body_bytes)
    app = Starlette(routes=api.routes(), lifespan=api.lifespan,
                    exception_handlers={RequestError: _request_error, HTTPException: _http_error,
                                        Exception: _internal_error})
    app.state.api = api
    return app
