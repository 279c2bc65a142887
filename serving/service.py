"""The BentoML 1.4 service: ``bentoml serve serving.service:CareCast`` (or ``carecast serve``).

At start it loads the three ``champion`` models and the feature store under ``CARECAST_HOME``,
warms each route up once, freezes the start-up heap out of the garbage collector's way, and then
polls the registry alias every ``serving.reload_poll_seconds`` for a new champion (also on demand:
``POST /v1/admin/reload``) and re-reads the online store's materialization stamp. Readiness (``/readyz``)
is 503, with the reasons, until every model is loaded and while the online store is missing, empty or
stale, or the registry cannot be read; ``/livez`` never waits on any of them. A missing or corrupt
registry at start leaves the service up and unready (never a crash loop, never a new empty registry); so do
settings that declare more replicas than their stores can serve (``serving.runtime.deployment_problems``: the reason
is logged once; `carecast serve` refuses them before starting anything).

BentoML's own traffic metrics are off (they label by raw path: unbounded); ``serving/metrics.py``'s
middleware counts by route template and answers ``/metrics`` (behind a key when
``serving.metrics_require_key``) and ``/readyz`` while not ready. Control characters are escaped in
every log line (``carecast.logs.EscapeControls`` on every handler).

Model source: the MLflow registry, unless this code runs from a built Bento (its ``bento.yaml`` beside
``src/``: ``bentoml serve <tag>``, which does not apply the Bento's ``envs``) or ``SERVING_MODEL_SOURCE=bento``
(set by ``bentofile.yaml`` in a container image): then the models packed into the Bento, declared below as
``bentoml.models.BentoModel`` class attributes so ``bentoml build`` includes them.
Everything it serves from is built once, in the constructor, from one settings object
(``serving/runtime.py``: feature source, model source, predictor, capture, the page and its risk
lists) and bound to the routes; shutdown unbinds it. At import only declarations are made: the route
table (``serving/app.py``), which BentoML reads off the class to mount it and to write ``/docs.json``,
and the Bento's model declarations.
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

import bentoml

from carecast import logs
from carecast.settings import load_settings
from carecast.targets import TARGET_NAMES, TARGETS
from serving.app import build_app
from serving.metrics import ServiceMiddleware
from serving.model_source import ModelSource, SnapshotModelSource
from serving.runtime import DeploymentRefused, Runtime

log = logging.getLogger("carecast.serving")

#: the route table, with no runtime bound: BentoML mounts it (and documents it) from the class below
app = build_app()

#: a built Bento: <bento>/bento.yaml beside <bento>/src/serving/service.py
_SRC = Path(__file__).resolve().parents[1]
BENTO_MODE = os.environ.get("SERVING_MODEL_SOURCE") == "bento" or (
    _SRC.name == "src" and (_SRC.parent / "bento.yaml").is_file())
BENTO_TAGS = {t: f"{info.registered_model}:latest" for t, info in TARGETS.items()}


def _models_in_bento_store() -> bool:
    """Declare the models (so `bentoml build` packs them) when they are in BentoML's store."""
    if BENTO_MODE:
        return True
    try:
        for tag in BENTO_TAGS.values():
            bentoml.models.get(tag)
    except Exception:  # noqa: BLE001  (any failure to find them means: the models are not in the store)
        return False
    return True


def quiet_bentoml_errors() -> None:
    """Drop tracebacks from BentoML's request-error logger: they can echo request bodies."""

    class _NoTraceback(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.exc_info = None
            record.exc_text = None
            return True

    for name in ("bentoml._internal.server.http_app", "bentoml.serve", "uvicorn.error"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _NoTraceback) for f in lg.filters):
            lg.addFilter(_NoTraceback())


def _tracing_defaults() -> dict:
    """Leave the prediction routes out of BentoML's OpenTelemetry middleware unless tracing is configured.

    BentoML samples no traces by default (``tracing.sample_rate`` 0) but its middleware still builds
    five non-recording spans per request: about a fifth of the server's CPU per explained
    prediction. With no BentoML configuration in the environment (``BENTOML_CONFIG``,
    ``BENTOML_CONFIG_OPTIONS``) nothing would be traced, so ``/v1/`` is excluded; any BentoML
    configuration keeps BentoML's own defaults (and its own ``tracing.excluded_urls`` wins anyway).
    """
    if os.environ.get("BENTOML_CONFIG") or os.environ.get("BENTOML_CONFIG_OPTIONS"):
        return {}
    return {"tracing": {"excluded_urls": ["/v1/"]}}


@bentoml.service(name="carecast", traffic={"timeout": 30}, workers=1, metrics={"enabled": False},
                 http={"cors": {"enabled": False}}, **_tracing_defaults())
@bentoml.asgi_app(app, path="/")
class CareCast:
    if _models_in_bento_store():  # after `python -m serving.bento export`, and inside a Bento
        no_show_model = bentoml.models.BentoModel(BENTO_TAGS["no_show"])
        churn_model = bentoml.models.BentoModel(BENTO_TAGS["churn"])
        channel_model = bentoml.models.BentoModel(BENTO_TAGS["channel"])

    def __init__(self) -> None:
        settings = load_settings()  # the one read of the settings in a serving process
        # BentoML's server already sends log records to its handlers: set the level, add no handler.
        logging.getLogger(logs.LOGGER_NAME).setLevel(settings.log_level)
        quiet_bentoml_errors()
        logs.escape_controls_everywhere()
        models: ModelSource | None = None  # the MLflow registry
        if BENTO_MODE:
            models = SnapshotModelSource({t: Path(getattr(self, f"{t}_model").path) for t in TARGET_NAMES})
        log.info("models from %s", "the Bento" if BENTO_MODE else "the MLflow registry")
        self.runtime: Runtime | None = None
        try:
            self.runtime = Runtime.from_settings(settings, models=models)
        except DeploymentRefused as exc:
            # up and never ready, the reason said once (not a crash loop of restarted workers): every /v1 route
            # answers 503 and /readyz stays 503 until the settings are fixed and the service restarted
            log.error("%s", exc)
            return
        self.runtime.start(poll=not BENTO_MODE)  # a Bento's models are fixed at build time
        app.state.runtime = self.runtime
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return self.runtime is not None and self.runtime.ready

    @bentoml.on_shutdown
    def _stop(self) -> None:
        if self.runtime is None:
            return
        self.runtime.stop()
        if app.state.runtime is self.runtime:
            app.state.runtime = None


CareCast.add_asgi_middleware(ServiceMiddleware, runtime=lambda: app.state.runtime)  # type: ignore[attr-defined]
