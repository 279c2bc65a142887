"""The service's Prometheus metrics, bounded, and the ``/metrics`` and ``/readyz`` answers.

Why its own: BentoML's traffic metrics label every request by its raw path, so anyone could grow the server's
memory and ``/metrics`` without limit by asking for random paths (14,884 of them took a worker from 428 to 800 MB).
Here requests are labelled by route *template* and every unknown path shares one label (``unmatched``); methods and
status codes are finite sets. BentoML's own metrics are turned off (``serving/service.py``).

CareCast's own series: models served (name, version), predictions by target and risk tier (channel: the chosen
channel), feature-read latency, capture counts (failures included), and whether the feature store, the registry and
the service are ready. ``/metrics`` needs an API key when ``serving.metrics_require_key`` is set. ``/readyz``
answers 503 with the reasons (feature store, registry, missing models) while the runtime is not ready, else BentoML
answers it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from serving.auth import key_ok

if TYPE_CHECKING:
    from serving.runtime import Runtime

#: every path the service answers (the coordinators' page's included); anything else is ``unmatched``
ROUTES = frozenset({
    "/", "/livez", "/healthz", "/readyz", "/metrics", "/docs.json",
    "/v1/no-show", "/v1/churn", "/v1/channel", "/v1/outreach-plan", "/v1/admin/reload", "/v1/models",
    "/ui", "/ui/", "/ui/login", "/ui/logout", "/ui/appointments", "/ui/patients", "/ui/appointments.csv",
    "/ui/patients.csv",
})
PREFIX_ROUTES = (("/ui/static/", "/ui/static/{path}"),)
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})


def route_of(path: str) -> str:
    """The route template a request path is counted under: a bounded set of labels, whatever the path."""
    if path in ROUTES:
        return path
    for prefix, template in PREFIX_ROUTES:
        if path.startswith(prefix):
            return template
    return UNMATCHED


class ServiceMetrics:
    """One registry per runtime (a test or a reload builds another runtime in the same process)."""

    def __init__(self, state: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("carecast_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=r)
        self.duration = Histogram("carecast_http_request_duration_seconds", "HTTP request time by route template",
                                  ["route"], registry=r,
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.reads = Histogram("carecast_feature_read_seconds", "Online feature-store read time per prediction call",
                               ["target"], registry=r,
                               buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.tiers = Counter("carecast_predictions", "Predictions by target and risk tier (channel: chosen channel)",
                             ["target", "tier"], registry=r)
        self._state = state
        if state is not None:
            r.register(_StateCollector(state))

    def predicted(self, target: str, preds: Sequence[Mapping[str, Any]]) -> None:
        counts: dict[str, int] = {}
        for p in preds:
            tier = str(p.get("risk_tier") or p.get("channel") or "none")
            counts[tier] = counts.get(tier, 0) + 1
        for tier, n in counts.items():
            self.tiers.labels(target, tier).inc(n)

    def feature_read(self, target: str, seconds: float) -> None:
        self.reads.labels(target).observe(seconds)

    def request(self, path: str, method: str, status: int, seconds: float) -> None:
        route = route_of(path)
        self.requests.labels(route, method if method in METHODS else "other", str(int(status))).inc()
        self.duration.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector:
    """Read at scrape time: models served, capture counts and what is ready (no state kept here, so nothing goes
    stale: prometheus_client cannot clear labels in BentoML's multi-process mode)."""

    def __init__(self, state: Callable[[], Mapping[str, Any]]) -> None:
        self.state = state

    def describe(self) -> list:
        return []

    def collect(self):
        s = self.state()
        cap = GaugeMetricFamily("carecast_capture_rows", "Prediction capture counts since start", labels=["kind"])
        for kind, n in (s.get("capture") or {}).items():
            if isinstance(n, int | float) and not isinstance(n, bool):
                cap.add_metric([kind], float(n))
        yield cap
        served = GaugeMetricFamily("carecast_model_served", "1 for each model version serving a target",
                                   labels=["target", "name", "version"])
        for target, m in (s.get("models") or {}).items():
            served.add_metric([target, m["name"], m["version"]], 1.0)
        yield served
        ready = GaugeMetricFamily("carecast_ready", "1 when the part is ready", labels=["part"])
        for part in ("service", "feature_store", "registry"):
            ready.add_metric([part], 1.0 if s.get(part) else 0.0)
        yield ready


def _send_json(status: int, body: Mapping[str, Any]) -> tuple[dict, dict]:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return ({"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]},
            {"type": "http.response.body", "body": raw})


class ServiceMiddleware:
    """Outer ASGI middleware of the whole service (BentoML's routes included): counts every request by route
    template, answers ``/metrics`` (behind a key when configured) and ``/readyz`` while not ready (with reasons).

    ``runtime()`` gives the bound runtime or None (before start, after shutdown)."""

    def __init__(self, app: Any, runtime: Callable[[], Runtime | None]) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rt = self.runtime()
        path = scope.get("path", "")
        if path == "/metrics":
            await self._metrics(rt, scope, send)
            return
        if path == "/readyz" and (rt is None or not rt.ready):
            reasons = rt.not_ready() if rt is not None else ["service not initialised"]
            for message in _send_json(503, {"error": "not ready", "detail": [
                    {"field": "service", "rule": r, "type": "not_ready"} for r in reasons]}):
                await send(message)
            return
        if rt is None:
            await self.app(scope, receive, send)
            return
        status = [500]
        replaced = [False]
        t0 = time.perf_counter()

        async def counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                ctype = dict(message.get("headers", [])).get(b"content-type", b"")
                if status[0] == 404 and ctype.startswith(b"text/plain"):  # BentoML's router: the one error shape
                    replaced[0] = True
                    start, body = _send_json(404, {"error": "not found", "detail": [
                        {"field": "path", "rule": "no such route", "type": "not_found"}]})
                    await send(start)
                    await send(body)
                    return
            elif replaced[0]:
                return  # the original body of a replaced answer
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            rt.metrics.request(path, scope.get("method", ""), status[0], time.perf_counter() - t0)

    async def _metrics(self, rt: Runtime | None, scope: dict, send: Callable) -> None:
        if rt is None:
            messages = _send_json(503, {"error": "not ready", "detail": [
                {"field": "service", "rule": "service not initialised", "type": "not_ready"}]})
        elif rt.settings.serving.metrics_require_key and not key_ok(
                dict(scope["headers"]).get(b"authorization"), rt.keys):
            start, body = _send_json(401, {"error": "unauthorized", "detail": [
                {"field": "Authorization", "rule": "must be 'Bearer <key>' with a valid API key "
                                                   "(serving.metrics_require_key)", "type": "unauthorized"}]})
            start["headers"].append((b"www-authenticate", b'Bearer realm="carecast"'))
            messages = (start, body)
        else:
            raw = rt.metrics.exposition()
            messages = ({"type": "http.response.start", "status": 200,
                         "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                                     (b"content-length", str(len(raw)).encode())]},
                        {"type": "http.response.body", "body": raw})
        for m in messages:
            await send(m)
