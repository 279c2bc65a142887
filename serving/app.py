"""The HTTP routes (FastAPI, mounted into the BentoML service by ``serving/service.py``).

Why FastAPI routes instead of ``@bentoml.api``: BentoML 1.4 logs every request-validation error at
ERROR with a traceback whose pydantic message echoes the input (patient ids, feature values), and
answers other 4xx with a body it builds itself. Here every input error is answered by our own
handler (field + rule, never the value) and nothing about the request is logged. BentoML still
provides the server, health (``/livez``, ``/healthz``), readiness (``/readyz``), ``/metrics``,
OpenAPI (``/docs.json``, which includes these routes) and the Bento packaging.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from carecast.audit import AuditUnavailable
from serving import capture, whatif
from serving.auth import PRINCIPAL, BearerKeyMiddleware
from serving.feature_source import FeatureStoreUnavailable
from serving.model_source import ModelNotAvailable
from serving.outreach import OutreachPlanRequest, OutreachPlanResponse, plan_request
from serving.schemas import (
    MAX_BATCH,
    ChannelResponse,
    ChurnResponse,
    ErrorResponse,
    NoShowRequest,
    NoShowResponse,
    PatientsRequest,
    ReloadResponse,
    WhatIfResponse,
)

if TYPE_CHECKING:
    from serving.runtime import Runtime

log = logging.getLogger("carecast.serving")

_ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": ErrorResponse, "description": "Malformed JSON."},
           401: {"model": ErrorResponse, "description": "Missing or invalid API key."},
           413: {"model": ErrorResponse, "description": "Body larger than serving.max_body_bytes."},
           415: {"model": ErrorResponse, "description": "Body not sent as application/json."},
           422: {"model": ErrorResponse, "description": "A field breaks a rule; the body names the field and the rule."},
           503: {"model": ErrorResponse, "description": "No champion model loaded, or the feature store is "
                                                        "unavailable or empty; the body says which and why."}}

#: POST routes that take a JSON body (the content type and body limit apply to them)
BODY_ROUTES = frozenset({"/v1/no-show", "/v1/churn", "/v1/channel", "/v1/outreach-plan"})

_bearer = HTTPBearer(auto_error=False, description="An API key from CARECAST_API_KEYS or serving.api_keys.")


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, separators=(",", ":"), allow_nan=False), status_code=status,
                    media_type="application/json")


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "body"


def _rule(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return msg


def input_error(errors: list[dict[str, Any]], status: int = 422, error: str = "invalid request") -> Response:
    """The one 4xx shape: names each field and its rule; never echoes an input value."""
    detail = [{"field": _field(e.get("loc", ())), "rule": _rule(e), "type": str(e.get("type", "invalid"))}
              for e in errors]
    return _json({"error": error, "detail": detail}, status)


async def _send(send: Send, response: Response, scope: Scope, receive: Receive) -> None:
    await response(scope, receive, send)


class _Bounds:
    """Pure ASGI, behind the key check: a JSON content type (415), a body no larger than
    ``serving.max_body_bytes`` (413, read no further), and the request's batch limit and production flag
    for the schemas (``serving.schemas.MAX_BATCH``) and the capture (``serving.capture.PRODUCTION``).

    Why here: FastAPI would read and validate a body of any size on the event loop before a route could refuse
    it (a 19 MB body of 100k invalid items blocked the loop for seconds and got a 21 MB 422)."""

    def __init__(self, app: Any, runtime: Any) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        rt = self.runtime()
        headers = dict(scope["headers"])
        if scope["method"] == "POST" and scope["path"] in BODY_ROUTES:
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                await _send(send, input_error([{"loc": ("Content-Type",), "msg": "must be application/json",
                                                "type": "unsupported_media_type"}], 415, "unsupported media type"),
                            scope, receive)
                return
            limit = rt.settings.serving.max_body_bytes if rt is not None else 4 * 1024 * 1024
            too_big = input_error([{"loc": ("body",), "msg": f"must be at most {limit} bytes "
                                    "(serving.max_body_bytes)", "type": "too_large"}], 413, "request too large")
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > limit:
                await _send(send, too_big, scope, receive)
                return
            body, more = bytearray(), True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    await _send(send, too_big, scope, receive)
                    return
            sent = [False]

            async def replay() -> Any:
                if not sent[0]:
                    sent[0] = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            receive = replay
        tokens = (MAX_BATCH.set(rt.max_batch if rt is not None else MAX_BATCH.get()),
                  capture.PRODUCTION.set(rt.is_production(headers.get(b"authorization")) if rt is not None else True))
        try:
            await self.app(scope, receive, send)
        finally:
            MAX_BATCH.reset(tokens[0])
            capture.PRODUCTION.reset(tokens[1])


def _too_many(field: str, n: int, limit: int) -> Response:
    return input_error([{"loc": (field,), "msg": f"must hold at most {limit} items (serving.max_batch); got {n}",
                         "type": "too_long"}])


def build_app(runtime: Runtime | None = None) -> FastAPI:
    """The routes and the coordinators' page (at ``/ui``) over ``app.state.runtime``.

    The app holds no state of its own: everything comes from the runtime (``serving/runtime.py``), given
    here or bound later by the service (``app.state.runtime = ...``: BentoML needs the route table when
    the service class is declared, the runtime only exists once the service starts). Unbound, every
    route answers 503.
    """
    app = FastAPI(title="CareCast prediction API", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  description="No-show, churn and preferred-channel predictions, each with its reasons.")
    app.state.runtime = runtime

    def runtime_now() -> Runtime | None:
        return app.state.runtime

    def keys() -> list[bytes]:
        rt = app.state.runtime
        return rt.keys if rt is not None else []

    app.add_middleware(_Bounds, runtime=runtime_now)  # added first: runs after the key check below
    app.add_middleware(BearerKeyMiddleware, keys=keys)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        """404, 405 and any other HTTP error in the one error shape."""
        field, rule, kind = {404: ("path", "no such route", "not_found"),
                             405: ("method", "method not allowed on this route", "method_not_allowed")}.get(
            exc.status_code, ("request", str(exc.detail), "http_error"))
        return input_error([{"loc": (field,), "msg": rule, "type": kind}], exc.status_code,
                           kind.replace("_", " "))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return input_error([{"loc": ("body",), "msg": "must be valid JSON", "type": "json_invalid"}], 400,
                               "malformed JSON")
        return input_error(errors)

    async def _run(fn) -> Response:
        """``fn`` in a worker thread, always: a feature read never holds the event loop (``/livez``, other
        requests), and the reader gives up at ``online_store.read_deadline_s``."""
        try:
            if app.state.runtime is None:
                raise ModelNotAvailable("service not initialised")
            result = await anyio.to_thread.run_sync(fn)
        except ModelNotAvailable as exc:
            return _json({"error": "model not available", "detail": [
                {"field": "model", "rule": str(exc), "type": "model_not_available"}]}, 503)
        except FeatureStoreUnavailable as exc:
            log.error("prediction refused: %s: %s", exc.code, exc)   # the store's state, never an id
            return _json({"error": exc.code.replace("_", " "), "detail": [
                {"field": "features", "rule": f"{exc}; retry later", "type": exc.code}]}, 503)
        except Exception as exc:  # noqa: BLE001  (answer 500 rather than crash; log the kind of failure only: messages can carry ids or values)
            log.error("prediction failed: %s", type(exc).__name__)
            return _json({"error": "internal error"}, 500)
        return _json(result)

    @app.post("/v1/no-show", response_model=NoShowResponse, responses=_ERRORS, tags=["predictions"],
              summary="No-show probability per appointment, with reasons")
    async def no_show(body: NoShowRequest, _: Any = Depends(_bearer)) -> Response:
        appts = [a.__dict__ for a in body.appointments]
        return await _batch("appointments", len(appts), lambda rt: rt.predictor.no_show(appts, body.top_k),
                            seen=("POST /v1/no-show", [a["patient_id"] for a in appts]))

    async def _batch(field: str, n: int, fn, seen: tuple[str, list[str]] | None = None) -> Response:
        """The shared route body: 503 before start-up, the batch limit, then ``fn(runtime)``; the answer
        leaves only once the access trail holds who saw ``seen`` (route, patient ids)."""
        rt = runtime_now()
        if rt is None:
            return await _run(None)
        if n > rt.max_batch:
            return _too_many(field, n, rt.max_batch)
        resp = await _run(lambda: fn(rt))
        if resp.status_code == 200 and seen is not None:
            who = PRINCIPAL.get()
            try:
                await anyio.to_thread.run_sync(lambda: rt.audit.record(who, seen[0], seen[1]))
            except AuditUnavailable:
                log.error("access trail not writable: answer withheld")
                return _json({"error": "audit unavailable", "detail": [
                    {"field": "audit", "rule": "the access record could not be written; retry later",
                     "type": "audit_unavailable"}]}, 503)
        return resp

    async def _patients(target: str, body: PatientsRequest) -> Response:
        return await _batch("patient_ids", len(body.patient_ids),
                            lambda rt: rt.predictor.patients(target, body.patient_ids, body.top_k),
                            seen=(f"POST /v1/{target}", list(body.patient_ids)))

    @app.post("/v1/churn", response_model=ChurnResponse, responses=_ERRORS, tags=["predictions"],
              summary="Probability each patient leaves the practice, with reasons")
    async def churn(body: PatientsRequest, _: Any = Depends(_bearer)) -> Response:
        return await _patients("churn", body)

    @app.post("/v1/channel", response_model=ChannelResponse, responses=_ERRORS, tags=["predictions"],
              summary="Channel most likely to reach each patient, with probabilities and reasons")
    async def channel(body: PatientsRequest, _: Any = Depends(_bearer)) -> Response:
        return await _patients("channel", body)

    @app.post("/v1/outreach-plan", response_model=OutreachPlanResponse, responses=_ERRORS, tags=["predictions"],
              summary="Personalised outreach: an action and channel per appointment or patient, within capacity")
    async def outreach_plan(body: OutreachPlanRequest, _: Any = Depends(_bearer)) -> Response:
        n = len(body.appointments) + len(body.patient_ids)
        return await _batch("appointments+patient_ids", n, lambda rt: plan_request(rt.predictor, body, rt.outreach),
                            seen=("POST /v1/outreach-plan", [*(a.patient_id for a in body.appointments),
                                                             *body.patient_ids]))

    @app.post("/v1/what-if", response_model=WhatIfResponse, responses=_ERRORS, tags=["predictions"],
              summary="No-show probability under each outreach action, the difference from doing nothing, and why")
    async def what_if(body: NoShowRequest, _: Any = Depends(_bearer)) -> Response:
        appts = [a.__dict__ for a in body.appointments]
        return await _batch("appointments", len(appts),
                            lambda rt: whatif.what_if(rt.predictor, rt.predictor.uplift, rt.outreach.effects, appts,
                                                      body.top_k),
                            seen=("POST /v1/what-if", [a["patient_id"] for a in appts]))

    @app.post("/v1/admin/reload", response_model=ReloadResponse, responses=_ERRORS, tags=["admin"],
              summary="Load any new champion now (the service also polls every serving.reload_poll_seconds)")
    async def reload(_: Any = Depends(_bearer)) -> Response:
        rt = runtime_now()
        if rt is None:
            return await _run(None)
        changed = await anyio.to_thread.run_sync(rt.predictor.reload)
        await anyio.to_thread.run_sync(rt.check_features)
        return _json({"models": rt.predictor.versions(), "changed": changed, **_status(rt)})

    @app.get("/v1/models", response_model=ReloadResponse, responses=_ERRORS, tags=["admin"],
             summary="The model name and version serving each route")
    async def models(_: Any = Depends(_bearer)) -> Response:
        rt = runtime_now()
        if rt is None:
            return await _run(None)
        cap = rt.predictor.capture
        extra = {"capture": cap.stats()} if cap is not None else {}
        return _json({"models": rt.predictor.versions(), "changed": [], **_status(rt), **extra})

    def _status(rt: Runtime) -> dict[str, Any]:
        """Champions, load failures, version gaps, registry and feature-store state, readiness and its reasons."""
        fs = rt.feature_state()
        return {**rt.predictor.status(), "feature_store": fs.describe() if fs is not None else {"ok": True},
                "ready": rt.ready, "not_ready": rt.not_ready()}

    async def page(scope: Scope, receive: Receive, send: Send) -> None:
        """The coordinators' page of the bound runtime (its own login, its own risk lists)."""
        rt = runtime_now()
        if rt is None:
            await PlainTextResponse("service not initialised\n", status_code=503)(scope, receive, send)
            return
        await rt.ui(scope, receive, send)

    app.mount("/ui", page, name="ui")
    return app

