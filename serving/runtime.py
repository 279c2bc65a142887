"""The serving runtime: everything a running service holds, built once from one settings object.

Why one object: the routes (``serving/app.py``), the coordinators' page (``serving/ui``) and the BentoML
service (``serving/service.py``) all read their state from here, so nothing loads the settings a second
time or builds a store on first use, and a test or benchmark can build a runtime over any home.

Feature source: the Feast online store (``serving.feature_source.FeastFeatureSource``); tests and
benchmarks of the serving layer alone may set ``SERVING_FEATURE_SOURCE=module:factory`` to a callable
taking the settings and returning a source. Model source: the MLflow registry unless one is given
(a Bento passes the models it carries).
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carecast.audit import AuditLog
from carecast.settings import OutreachSettings, Settings
from carecast.targets import TARGETS
from serving import capture
from serving.auth import key_id, match_key
from serving.feature_source import FeatureSource
from serving.metrics import ServiceMetrics
from serving.model_source import MlflowModelSource, ModelSource
from serving.predictor import Predictor
from serving.ui import create_ui_app
from serving.ui.data import Store
from serving.whatif import UpliftSource

log = logging.getLogger("carecast.serving")

FEATURE_SOURCE_ENV = "SERVING_FEATURE_SOURCE"


class DeploymentRefused(RuntimeError):
    """The settings ask for more replicas than the configured stores can serve; the message names the settings."""


def deployment_problems(settings: Settings, registry: bool = True) -> list[str]:
    """Why these settings cannot serve ``serving.replicas`` replicas, one line per store (empty: they can).

    A replica may run on another machine, so above one replica every store it reads or writes must be a server
    all of them reach: SQLite files are one machine's (SQLite's locks do not hold over a network filesystem).
    ``serving.workers`` is never refused: a home's workers are processes on one machine, where SQLite's file locks
    serialise the writers (capture and the access trail in WAL mode, the online store read-only); see
    docs/scaling.md, Replicas. ``registry``: False when the models come from a Bento (no registry is read)."""
    replicas = settings.serving.replicas
    if replicas <= 1:
        return []
    out = []
    if settings.online_store.type == "sqlite":
        out.append(f"serving.replicas={replicas} with online_store.type=sqlite: the SQLite online store is a file on "
                   "one machine; set online_store.type: redis and online_store.redis_connection_string, one Redis "
                   "that every replica reads")
    cap = settings.capture
    if cap.enabled and not cap.database_url:
        out.append(f"serving.replicas={replicas} with the SQLite capture store (capture.database_url not set): each "
                   "machine would keep its own captures and monitoring would read one of them; set "
                   "capture.database_url: postgresql://USER@HOST:PORT/DATABASE (or capture.enabled: false)")
    uri = settings.tracking_uri
    if registry and not (uri.startswith("http://") or uri.startswith("https://")):
        out.append(f"serving.replicas={replicas} with a {uri.split(':', 1)[0]} MLflow registry (mlflow.tracking_uri "
                   "is not a server): replicas on other machines cannot read it; set mlflow.tracking_uri: "
                   "http://HOST:PORT, the MLflow server every replica polls (docs/scaling.md)")
    return out


def check_deployment(settings: Settings, registry: bool = True) -> None:
    """Raise ``DeploymentRefused`` with every problem; warn about what stays per machine above one replica."""
    problems = deployment_problems(settings, registry)
    if problems:
        raise DeploymentRefused("refusing to serve: " + "; ".join(problems))
    if settings.serving.replicas > 1:
        log.warning("serving.replicas=%d: the access trail (%s) and the coordinators' accounts and sessions (%s) are "
                    "SQLite files under this home: replicas sharing this home share them; a replica on another "
                    "machine keeps its own (docs/scaling.md, Replicas)", settings.serving.replicas,
                    settings.audit_dir.name, settings.accounts_db.name)


def feature_source(settings: Settings) -> FeatureSource:
    """The Feast online store under the home, or the factory ``SERVING_FEATURE_SOURCE`` names."""
    spec = os.environ.get(FEATURE_SOURCE_ENV)
    if spec:
        module, _, attr = spec.partition(":")
        source: FeatureSource = getattr(importlib.import_module(module), attr)(settings)
        return source
    from serving.feature_source import FeastFeatureSource  # Feast import (~3 s): only when serving from it

    return FeastFeatureSource(settings)


@dataclass
class Runtime:
    """What the routes and the page read: the predictor (models, features, capture), the API keys, the
    batch limit, the outreach settings, the risk lists and the page over them."""

    settings: Settings
    predictor: Predictor
    keys: list[bytes]
    max_batch: int
    outreach: OutreachSettings
    risk_lists: Store
    ui: Any  # the coordinators' page, an ASGI app mounted at /ui
    audit: AuditLog  # the access trail (carecast/audit.py): the routes and the page record every read
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    #: ids of the keys marked non-production (``serving.non_production_keys``): their captures are marked
    non_production: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings, models: ModelSource | None = None,
                      features: FeatureSource | None = None) -> Runtime:
        """Build every part once; loads no model yet (``start`` does). Refuses (``DeploymentRefused``) settings that
        declare more replicas than their stores can serve."""
        check_deployment(settings, registry=models is None)
        cache_dir: Path | None = None
        if models is None:
            models = MlflowModelSource(settings.tracking_uri, settings.mlflow.registry_uri)
            cache_dir = settings.home / "serving" / "models"  # the last good version of each registry champion
        if features is None:
            features = feature_source(settings)
        predictor = Predictor(models, features, settings.serving.risk_tiers, capture=capture.from_settings(settings),
                              cache_dir=cache_dir)
        if isinstance(models, MlflowModelSource):  # a registry to follow: the uplift set's champion too
            predictor.uplift = UpliftSource(settings)
        risk_lists = Store(settings.risk_list_dir)
        audit = AuditLog.from_settings(settings)
        rt = cls(settings=settings, predictor=predictor, keys=[k.encode() for k in settings.serving.api_keys],
                 max_batch=settings.serving.max_batch, outreach=settings.outreach, risk_lists=risk_lists,
                 ui=create_ui_app(settings, store=risk_lists, audit=audit), audit=audit,
                 non_production=frozenset(settings.serving.non_production_keys))
        rt.metrics = ServiceMetrics(rt.health)
        predictor.metrics = rt.metrics
        return rt

    # --- readiness -----------------------------------------------------------------------------
    def feature_state(self) -> Any:
        """The feature source's last known state (None: a source that has none, always ready)."""
        return getattr(self.predictor.features, "state", None)

    @property
    def ready(self) -> bool:
        """Every model loaded and the online store usable; a cheap read of kept state (``/readyz`` never waits)."""
        fs = self.feature_state()
        return self.predictor.ready and (fs is None or fs.ok)

    def not_ready(self) -> list[str]:
        """Why the service is not ready, one reason per part (empty when it is)."""
        out = []
        fs = self.feature_state()
        if fs is not None and not fs.ok:
            out.append(f"{fs.code}: {fs.reason}")
        if self.predictor.registry_error is not None:
            out.append(f"model_registry_unavailable: {self.predictor.registry_error}")
        missing = [TARGETS[t].registered_model for t in self.predictor.targets if t not in self.predictor.versions()]
        if missing:
            out.append(f"model_not_available: no champion loaded for {', '.join(missing)}")
        return out

    def health(self) -> dict[str, Any]:
        """What ``/metrics`` reports at scrape time."""
        fs = self.feature_state()
        cap = self.predictor.capture
        return {"service": self.ready, "feature_store": fs is None or fs.ok, "models": self.predictor.versions(),
                "registry": self.predictor.registry_error is None, "capture": cap.stats() if cap is not None else {}}

    def check_features(self) -> None:
        """Re-read the online store's state (its stamp): on the poll, so a store emptied or restored is seen."""
        check = getattr(self.predictor.features, "check", None)
        if check is not None:
            check()

    def start(self, poll: bool = True) -> None:
        """Load the champions, say what is missing, and (``poll``) watch the registry for new ones."""
        self.predictor.reload()
        if not self.ready:
            log.warning("not ready: %s", "; ".join(self.not_ready()))
        if not self.keys:
            log.warning("no API keys configured (CARECAST_API_KEYS): every /v1 request will get 401")
        else:
            log.info("API keys: %s", ", ".join(key_id(k) for k in self.keys))   # ids only, never a key
        if poll:
            self.predictor.start_polling(self.settings.serving.reload_poll_seconds, also=self.check_features)

    def is_production(self, authorization: bytes | None) -> bool:
        """False when the request's key is one of ``serving.non_production_keys`` (its captures are marked)."""
        if not self.non_production or not authorization:
            return True
        key = match_key(authorization, self.keys)
        return key is None or key_id(key) not in self.non_production

    def stop(self) -> None:
        """Stop polling, flush the capture store, let the feature reads go, close the access trail."""
        self.predictor.stop()
        close = getattr(self.predictor.features, "close", None)
        if close is not None:
            close()
        self.audit.close()
