"""The BentoML 1.4 service: ``bentoml serve serving.service:CareCast`` (or ``carecast serve``).

At start it loads the three ``champion`` models and the feature store under ``CARECAST_HOME``,
warms each route up once, freezes the start-up heap out of the garbage collector's way, and then
polls the registry alias every ``serving.reload_poll_seconds`` for a new champion (also on demand:
``POST /v1/admin/reload``). Readiness (``/readyz``) is 503 until every model is loaded.

Model source: the MLflow registry, unless ``SERVING_MODEL_SOURCE=bento`` (set by the Bento built
from ``bentofile.yaml``): then the models packed into the Bento, declared below as
``bentoml.models.BentoModel`` class attributes so ``bentoml build`` includes them.
Feature source: the Feast online store (``features.store.repo``); tests and benchmarks of the serving
layer alone may set ``SERVING_FEATURE_SOURCE=module:factory`` to a callable returning a source.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import bentoml

from carecast import logs
from carecast.settings import load_settings
from carecast.targets import TARGET_NAMES, TARGETS
from serving.app import build_app
from serving.model_source import MlflowModelSource, SnapshotModelSource
from serving.outreach import OutreachSettings
from serving.predictor import Predictor
from serving.ui import create_ui_app

log = logging.getLogger("carecast.serving")

app = build_app()

BENTO_MODE = os.environ.get("SERVING_MODEL_SOURCE") == "bento"
BENTO_TAGS = {t: f"{info.registered_model}:latest" for t, info in TARGETS.items()}


def _models_in_bento_store() -> bool:
    """Declare the models (so `bentoml build` packs them) when they are in BentoML's store."""
    if BENTO_MODE:
        return True
    try:
        for tag in BENTO_TAGS.values():
            bentoml.models.get(tag)
    except Exception:
        return False
    return True


@dataclass
class Runtime:
    predictor: Predictor
    keys: list[bytes]
    max_batch: int
    outreach: OutreachSettings


def _feature_source(settings):
    spec = os.environ.get("SERVING_FEATURE_SOURCE")
    if spec:
        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr)(settings)
    from serving.feature_source import FeastFeatureSource

    return FeastFeatureSource(settings)


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


@bentoml.service(name="carecast", traffic={"timeout": 30}, workers=1,
                 http={"cors": {"enabled": False}}, **_tracing_defaults())
@bentoml.asgi_app(app, path="/")
class CareCast:
    if _models_in_bento_store():  # after `python -m serving.bento export`, and inside a Bento
        no_show_model = bentoml.models.BentoModel(BENTO_TAGS["no_show"])
        churn_model = bentoml.models.BentoModel(BENTO_TAGS["churn"])
        channel_model = bentoml.models.BentoModel(BENTO_TAGS["channel"])

    def __init__(self) -> None:
        settings = load_settings()
        # BentoML's server already sends log records to its handlers: set the level, add no handler.
        logging.getLogger(logs.LOGGER_NAME).setLevel(settings.log_level)
        quiet_bentoml_errors()
        if BENTO_MODE:
            models = SnapshotModelSource({t: Path(getattr(self, f"{t}_model").path) for t in TARGET_NAMES})
        else:
            models = MlflowModelSource(settings.tracking_uri, settings.mlflow.registry_uri)
        log.info("models from %s", "the Bento" if BENTO_MODE else "the MLflow registry")
        self.predictor = Predictor(models, _feature_source(settings), settings.serving.risk_tiers)
        self.predictor.reload()
        if not self.predictor.ready:
            log.warning("not ready: missing champion for %s",
                        ", ".join(TARGETS[t].registered_model for t in TARGET_NAMES if t not in self.predictor.versions()))
        keys = [k.encode() for k in settings.serving.api_keys]
        if not keys:
            log.warning("no API keys configured (CARECAST_API_KEYS): every /v1 request will get 401")
        app.state.runtime = Runtime(self.predictor, keys, settings.serving.max_batch, settings.outreach)
        if not any(getattr(r, "path", None) == "/ui" for r in app.routes):
            app.mount("/ui", create_ui_app(settings), name="ui")  # the coordinators' page, its own login
        if not BENTO_MODE:
            self.predictor.start_polling(settings.serving.reload_poll_seconds)
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return self.predictor.ready

    @bentoml.on_shutdown
    def _stop(self) -> None:
        self.predictor.stop()
        if app.state.runtime is not None and app.state.runtime.predictor is self.predictor:
            app.state.runtime = None
