"""One settings object for the whole product.

Read from a YAML file (``$CARECAST_CONFIG``, else ``$CARECAST_HOME/carecast.yaml`` when present),
then overridden by environment variables ``CARECAST_<SECTION>__<KEY>`` (for example
``CARECAST_SERVING__PORT=3100``). Unknown keys are an error that names the file and the key, so a
typo never silently falls back to a default. Nothing here runs at import time: call ``load_settings``.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "CARECAST_"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = REPO_ROOT / ".carecast"


class SettingsError(ValueError):
    """A settings file or environment override is invalid; the message names the source and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthSettings(_Section):
    """Defaults for the synthetic history generator (the embedded demo data)."""

    patients: int = Field(2000, gt=0)
    seed: int = 7
    start: str = "2021-01-01"
    end: str = "2026-06-30"
    today: str = "2026-06-01"


class OnlineStoreSettings(_Section):
    """Feast online store: SQLite for one process, Redis when several serving workers read it."""

    type: Literal["sqlite", "redis"] = "sqlite"
    redis_connection_string: str = "127.0.0.1:6379"
    project: str = "carecast"
    #: "bulk": features/store/online_write.py (same rows as Feast's materialize, tests check); "feast": Feast's own
    materialize_method: Literal["bulk", "feast"] = "bulk"
    #: seconds one serving read of the online store may take in all (connect, read, no retries): past it the
    #: request answers 503 ``feature_store_unavailable`` instead of waiting (``features.store.reader.OnlineReader``)
    read_deadline_s: float = Field(2.0, gt=0, le=30)


class FeaturesSettings(_Section):
    """``features:`` section: resources of the feature build (DuckDB runs in-process)."""

    #: DuckDB memory limit, e.g. "3GB" (DuckDB spills to $CARECAST_HOME/tmp beyond it); None: DuckDB's default (80% of RAM)
    duckdb_memory_limit: str | None = Field(None, pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
    #: training frames (``features.store.repo.training_frame``) with more entity rows than this are joined by DuckDB ASOF
    #: joins generated from the registered views (``features.store.repo._asof_join``; tests check the frames equal Feast's
    #: bit for bit); up to it, by Feast's ``get_historical_features``. Feast's join expands every row against every
    #: earlier snapshot of its patient: at 20,000 patients it took 28 s for no-show's 163k rows, the ASOF join 2.5 s.
    #: Small worlds (tests, notebooks) stay on Feast's join; a very large value keeps every frame there.
    asof_above_rows: int = Field(10_000, ge=0)
    #: where the feature build runs: ``duckdb`` (this process) or ``spark`` (``features/build/spark.py``: the same
    #: compiled pass per hash bucket of patients, in Spark tasks on ``spark.master``)
    engine: Literal["duckdb", "spark"] = "duckdb"
    #: the Spark build's hash buckets of patients (one task each): more buckets, smaller tasks
    spark_buckets: int = Field(8, ge=1, le=100_000)


class SparkSettings(_Section):
    """``spark:`` section: the Spark session the Spark feature build and ``training.engine: spark`` use
    (``carecast/spark.py``). Nothing here is read unless an engine is ``spark``."""

    #: ``local[N]`` (in this process's JVM), ``spark://host:7077``, ``yarn``, ...
    master: str = "local[2]"
    #: the driver JVM's heap (a local master's executors live in it)
    driver_memory: str = Field("2g", pattern=r"^\d+[kmgt]$")
    shuffle_partitions: int = Field(8, ge=1)
    #: Spark's scratch folder (shuffle files, spills); default ``$CARECAST_HOME/tmp/spark``
    local_dir: Path | None = None


class TrainingSettings(_Section):
    """``training:`` section: where the models are fitted."""

    #: ``single``: XGBoost in this process; ``spark``: ``xgboost.spark.SparkXGBClassifier`` on ``spark.master``
    #: (``training/spark_fit.py``), then the same calibration, evaluation and registration
    engine: Literal["single", "spark"] = "single"
    #: XGBoost workers (Spark tasks, one barrier stage) of a Spark fit
    spark_workers: int = Field(2, ge=1)


class ValidationSettings(_Section):
    """``validation:`` section: when a feed's timestamp is implausible (``features/feeds/integrity.py``). Bounds are
    relative to the validation run's clock, or to the feed's own bulk when the feed runs ahead of the clock."""

    #: a recorded time (booked, status, billed, paid, occurred, registered) later than this many days past the
    #: clock is quarantined (past the column's 99th percentile when its median is ahead of the clock)
    max_future_days: int = Field(2, ge=0)
    #: the same for planned times (``scheduled_at``, ``due_at``): appointments are booked months ahead
    max_planned_days: int = Field(730, ge=0)
    #: any time more than this many years before the clock is quarantined (1900 and 1970 placeholder dates)
    max_past_years: int = Field(50, ge=1)


class PipelineSettings(_Section):
    """``pipeline:`` section: when the pipeline refuses to promote or replace the risk lists (``--force`` overrides)."""

    #: the build's as-of time may move forward by at most this many days since the last run (never backwards)
    max_as_of_jump_days: int = Field(366, ge=1)


class VocabularySettings(_Section):
    """``vocabulary:`` section: the site's codes (features/feeds/vocabulary.py, docs/data-contracts.md).

    Learned from the feeds at validation unless a column is pinned here: a pinned column takes exactly the
    listed codes in that order (``other`` added last), so its features stay the same whatever the feeds hold."""

    #: a code seen fewer times than this in the loaded rows is read as ``other`` (unless declared or pinned)
    min_count: int = Field(10, ge=1)
    #: at most this many learned codes per column (the rest are ``other``)
    max_codes: int = Field(50, ge=1, le=100)
    sex: list[str] | None = None
    preferred_language: list[str] | None = None
    insurance_type: list[str] | None = None
    department: list[str] | None = None
    visit_type: list[str] | None = None

    @field_validator("sex", "preferred_language", "insurance_type", "department", "visit_type")
    @classmethod
    def _unique_codes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value or any(not v.strip() for v in value):
            raise ValueError("must list at least one code, none empty")
        if len(set(value)) != len(value):
            raise ValueError("codes must be unique")
        if len(value) > 99:
            raise ValueError("at most 99 codes")
        return value

    def pinned(self) -> dict[str, list[str] | None]:
        """The pinned codes per vocabulary column (None: learned)."""
        return {c: getattr(self, c) for c in ("sex", "preferred_language", "insurance_type", "department",
                                               "visit_type")}


class MlflowSettings(_Section):
    """MLflow tracking: a SQLite file under the home by default, or a real server."""

    tracking_uri: str | None = None
    registry_uri: str | None = None


class GateSettings(_Section):
    """Promotion gate bounds (``training/gate.py``, docs/models.md): how much worse than the champion,
    and than the floor of past champions, a challenger may be, and when a subgroup gap refuses it."""

    max_auc_drop: float = Field(0.005, ge=0)
    max_logloss_rise: float = Field(0.005, ge=0)
    max_ece: float = Field(0.03, ge=0)
    #: challenger ECE may exceed the champion's on the same window by at most this (unless it is within the
    #: window's noise floor of a perfectly calibrated model)
    max_ece_rise: float = Field(0.01, ge=0)
    max_subgroup_auc_gap: float = Field(0.10, ge=0)
    #: family-wise error of "this subgroup gap is above the bound", Holm over every pairwise test
    fairness_alpha: float = Field(0.05, gt=0, lt=1)
    #: the attributes whose subgroups are compared (``group_<name>`` columns); a missing one is reported
    fairness_attributes: tuple[str, ...] = ("age_band", "sex", "insurance", "language")
    #: fewer labelled rows than this in the comparison window: promotion refused (subgroups cannot be scored)
    min_window_rows: int = Field(200, ge=1)
    #: the floor: the first promoted champion and the best of the last N champions
    floor_last_n: int = Field(5, ge=1)
    #: refused when worse than a floor model by more than this, and significantly so (paired test, ``floor_alpha``)
    floor_max_auc_drop: float = Field(0.01, ge=0)
    floor_max_logloss_rise: float = Field(0.01, ge=0)
    floor_alpha: float = Field(0.05, gt=0, lt=1)


class Effects(_Section):
    """Relative reduction of the outcome probability against no outreach, per action (0..1).

    Defaults (docs/coordinators.md, shared/domain.md):
    - reminder 0.24: SMS reminder vs none, relative risk of attending 1.08 (NIHR review 2014:
      1.06-1.10) at a 25% no-show baseline: 25% -> 19%.
    - two_reminders 0.36: a second reminder cuts no-shows among high-risk patients from 24-25% to
      20.5% (AJMC 2018: x0.84) on top of the first: 1 - 0.76 x 0.84.
    - call 0.41: calls to high-risk patients cut no-shows 29.2% -> 22.8% (JGIM 2016: x0.78) on top
      of the usual reminder: 1 - 0.76 x 0.78.
    - telehealth_or_reschedule 0.41, billing_counselling 0.41: a coordinator contact aimed at the
      reason; no published figure, assumed equal to a call.
    - re_engagement 0.10: churn; no published figure (domain.md), a conservative assumption.
    - churn_billing_counselling 0.15: billing counselling for a patient at risk of leaving; no
      published figure, an assumption a little above the re-engagement message.
    """

    reminder: float = Field(0.24, ge=0, le=1)
    two_reminders: float = Field(0.36, ge=0, le=1)
    call: float = Field(0.41, ge=0, le=1)
    telehealth_or_reschedule: float = Field(0.41, ge=0, le=1)
    billing_counselling: float = Field(0.41, ge=0, le=1)
    re_engagement: float = Field(0.10, ge=0, le=1)
    churn_billing_counselling: float = Field(0.15, ge=0, le=1)

    def of(self, action: str, target: str = "no_show") -> float:
        if action == "none":
            return 0.0
        if target == "churn" and action == "billing_counselling":
            return float(self.churn_billing_counselling)
        return float(getattr(self, action))


class OutreachSettings(_Section):
    """Outreach plan settings (see docs/coordinators.md for the defaults' sources)."""

    calls_per_day: int = Field(40, ge=0, description="Coordinator contacts (calls, counselling, offers) per day.")
    effects: Effects = Effects()
    #: no-show probability below which nothing beyond the usual contact is planned
    min_risk_for_reminder: float = Field(0.05, ge=0, le=1)
    #: tier at or above which a no-show risk is a call candidate
    call_tier: Literal["medium", "high"] = "high"
    #: tier at or above which billing/access reasons make a coordinator action a candidate
    coordinator_tier: Literal["medium", "high"] = "medium"
    #: share of the risk-raising contributions among the top reasons that makes a reason group "drive" the risk
    driver_share: float = Field(0.5, gt=0, le=1)
    #: plans from uplift models: coordinator capacity one action takes, in contacts (calls_per_day is the daily
    #: capacity); arranging transport is assumed to take two calls' time
    coordinator_cost: dict[Literal["personal_call", "transport_offer", "telehealth_offer", "reschedule_offer"],
                           Annotated[float, Field(gt=0)]] = {
        "personal_call": 1.0, "transport_offer": 2.0, "telehealth_offer": 1.0, "reschedule_offer": 1.0}
    #: plans from uplift models: what one automated message costs, in no-shows prevented; a message is planned
    #: only where its predicted reduction of the risk exceeds its cost (assumed: a phone reminder costs most)
    message_cost: dict[Literal["sms_reminder", "email_reminder", "phone_reminder"], Annotated[float, Field(ge=0)]] = {
        "sms_reminder": 0.002, "email_reminder": 0.0005, "phone_reminder": 0.003}
    #: value of keeping a patient from leaving, relative to averting one no-show (for ranking across lists)
    churn_weight: float = Field(1.0, ge=0)
    #: how many of a prediction's reasons the plan reads (and the lists show)
    top_k: int = Field(3, ge=1, le=20)


class CaptureSettings(_Section):
    """``capture:`` section prediction capture, ids pseudonymised (see docs/monitoring.md)."""

    enabled: bool = True
    key_file: Path | None = None            # default: $CARECAST_HOME/secrets/capture.key
    flush_seconds: float = Field(1.0, gt=0)
    flush_rows: int = Field(2000, gt=0)
    max_queue_rows: int = Field(200_000, gt=0)
    #: where captures go: None, the embedded SQLite file ``$CARECAST_HOME/captures/predictions.sqlite`` (one
    #: machine: every worker of a home shares it); a ``postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE`` URL, one
    #: store that several replicas share and monitoring reads (docs/scaling.md, Replicas). The database must exist.
    database_url: str | None = None

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        from carecast.shared_db import check_url

        return None if value is None or not value.strip() else check_url(value.strip())


DEFAULT_TREND_FEATURES = (
    "visits_all", "no_shows_all", "completed_all", "max_no_show_streak", "statements_all", "billed_total",
    "paid_total", "portal_logins_all", "sends_sms", "sends_email", "sends_phone", "sends_portal",
    "responses_sms", "responses_email", "responses_phone", "responses_portal")


class MonitorSettings(_Section):
    """``monitor:`` section drift checks (see docs/monitoring.md)."""

    #: 0.1: with patient-level noise floors a real shift moves a coherent handful of features (the
    #: billing policy: 7 of 52, 0.13) while unshifted worlds stay at or below 0.06 (docs/monitoring.md)
    drift_share: float = Field(0.1, gt=0, le=1)
    num_method: str = "wasserstein"
    cat_method: str = "jensenshannon"
    threshold: float = Field(0.1, gt=0)
    reference_window: Literal["train", "validation", "test", "all"] = "test"
    reference_rows: int = Field(5000, gt=0)
    current_rows: int = Field(5000, gt=0)
    min_current_rows: int = Field(100, gt=0)
    #: fewer distinct patients (appointments for no-show) than this among the captured predictions: drift is
    #: judged on the latest feature snapshots instead (one patient asked about 1,000 times is one patient)
    min_current_entities: int = Field(100, gt=0)
    recent_days: int = Field(90, gt=0)
    noise_reps: int = Field(40, ge=0)       # permutations for each feature's noise floor (0: fixed threshold only)
    noise_quantile: float = Field(0.95, gt=0.5, lt=1)
    #: processes for the Evidently reports when several targets are checked (forked from the drift process, see
    #: ``monitoring.monitor._report_pool``); 1: every report in the drift process itself. Same reports either way.
    report_workers: int = Field(2, ge=1)
    trend_features: list[str] = Field(default_factory=lambda: list(DEFAULT_TREND_FEATURES))


class ServingSettings(_Section):
    """The prediction API: loopback unless configured, behind API keys."""

    host: str = "127.0.0.1"
    port: int = Field(3000, gt=0, lt=65536)
    api_keys: list[str] = Field(default_factory=list)
    max_batch: int = Field(1000, gt=0)
    risk_tiers: dict[str, float] = Field(default_factory=lambda: {"medium": 0.15, "high": 0.30})
    reload_poll_seconds: float = Field(30.0, ge=0)
    #: largest request body accepted (bytes); larger ones get 413 before being read in full
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    #: ``/metrics`` needs an API key (``Authorization: Bearer``) when true; open (loopback only) by default
    metrics_require_key: bool = False
    #: ids of API keys (``id:secret``: the id) whose traffic is not production (benchmarks, tests, demos): served,
    #: but their captured
    #: predictions are marked and left out of drift (``monitoring/monitor.py``)
    non_production_keys: list[str] = Field(default_factory=list)
    #: an API key ``id:secret`` (or a bare secret) whose secret is shorter than this is refused at start
    api_key_min_length: int = Field(16, ge=8)
    #: BentoML worker processes of one `carecast serve` (one machine, one home); each loads the models and polls the
    #: registry itself. Safe with the SQLite stores of the home (docs/scaling.md, Replicas)
    workers: int = Field(1, ge=1, le=64)
    #: how many `carecast serve` replicas (on one or several machines, behind a load balancer) serve this deployment.
    #: Declared, because a replica cannot see the others: above 1 the service refuses to start on a store only one
    #: machine can read or write (SQLite online store, SQLite capture) and says which setting to change
    replicas: int = Field(1, ge=1)

    @field_validator("api_keys", "non_production_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @model_validator(mode="after")
    def _long_keys(self) -> ServingSettings:
        """A short key is a guessable password: refuse it, naming its position (never its value)."""
        for i, key in enumerate(self.api_keys):
            kid, sep, secret = key.partition(":")
            if not sep:
                secret = key
            elif not kid or not kid.replace("-", "").replace("_", "").replace(".", "").isalnum():
                raise ValueError(f"api_keys[{i}]: the id before ':' must be letters, digits, '-', '_' or '.'")
            if len(secret) < self.api_key_min_length:
                raise ValueError(f"api_keys[{i}]: the secret must be at least {self.api_key_min_length} characters "
                                 f"(serving.api_key_min_length); got {len(secret)}")
        return self


class AccountsSettings(_Section):
    """``accounts:`` section: coordinators' logins on the page (docs/coordinators.md)."""

    #: a session ends this long after login, and after ``idle_minutes`` without a request
    session_hours: float = Field(10.0, gt=0)
    idle_minutes: float = Field(60.0, gt=0)
    #: more failed logins than this for one user name, or from one address, within ``failure_window_seconds``
    #: locks that name (or address) for ``lockout_seconds``: further attempts are refused, right password or not
    max_failures: int = Field(10, ge=1)
    failure_window_seconds: float = Field(60.0, gt=0)
    lockout_seconds: float = Field(900.0, gt=0)
    min_password_length: int = Field(12, ge=8)
    #: origins besides the page's own that may POST to it (a reverse proxy's public origin, e.g. https://carecast.example)
    trusted_origins: list[str] = Field(default_factory=list)

    @field_validator("trusted_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        return [o.strip().rstrip("/") for o in value.split(",") if o.strip()] if isinstance(value, str) else value


class AuditSettings(_Section):
    """``audit:`` section: the access trail of patient-data reads (``carecast/audit.py``)."""

    #: records older than this are removed by ``carecast audit purge`` (HIPAA keeps documentation six years)
    retention_days: int = Field(2192, ge=1)
    #: SQLite ``synchronous``: "normal" survives a crash of the service (not of the machine) at 0.2 ms a record;
    #: "full" also survives power loss at one fsync a record (6 ms here, which caps the API near 150 answers/s)
    sync: Literal["normal", "full"] = "normal"


class WorklistSettings(_Section):
    """``worklist:`` section: what coordinators record against the risk lists' rows (``serving/worklist.py``,
    docs/coordinators.md)."""

    #: outcomes recorded longer ago than this are removed by the daily purge (``carecast worklist purge``, and each
    #: ``carecast pipeline run`` once a day); six years by default, as the access trail (``audit.retention_days``):
    #: they document what was done for a patient. Once purged they no longer reach the engagement feed.
    retention_days: int = Field(2192, ge=1)
    #: the longest free note a coordinator may add to an outcome (characters; 0: no notes)
    max_note_chars: int = Field(500, ge=0, le=5000)
    #: add the recorded outcomes to the engagement feed on every pipeline run (``pipelines/pipeline.py``); off when
    #: the site's own engagement export already carries the coordinators' calls (they would count twice)
    fold_into_engagement: bool = True


class Settings(_Section):
    """Everything configurable. All state lives under ``home`` so two homes never share data."""

    home: Path = DEFAULT_HOME
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    synth: SynthSettings = SynthSettings()
    online_store: OnlineStoreSettings = OnlineStoreSettings()
    features: FeaturesSettings = FeaturesSettings()
    spark: SparkSettings = SparkSettings()
    training: TrainingSettings = TrainingSettings()
    validation: ValidationSettings = ValidationSettings()
    pipeline: PipelineSettings = PipelineSettings()
    vocabulary: VocabularySettings = VocabularySettings()
    mlflow: MlflowSettings = MlflowSettings()
    gate: GateSettings = GateSettings()
    serving: ServingSettings = ServingSettings()
    outreach: OutreachSettings = OutreachSettings()
    capture: CaptureSettings = CaptureSettings()
    monitor: MonitorSettings = MonitorSettings()
    accounts: AccountsSettings = AccountsSettings()
    audit: AuditSettings = AuditSettings()
    worklist: WorklistSettings = WorklistSettings()

    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=(cached_property,))

    # Paths under the home: one place that says where each kind of state lives.
    @property
    def feeds_dir(self) -> Path:
        return self.home / "feeds"

    @property
    def validated_dir(self) -> Path:
        return self.home / "validated"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def truth_dir(self) -> Path:
        return self.home / "truth"

    @property
    def feature_dir(self) -> Path:
        return self.home / "features"

    @property
    def feature_repo_dir(self) -> Path:
        return self.home / "feature_repo"

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.mlflow_db}"

    @property
    def risk_list_dir(self) -> Path:
        return self.home / "risk_lists"

    @property
    def capture_dir(self) -> Path:
        return self.home / "captures"

    @property
    def accounts_db(self) -> Path:
        return self.home / "accounts.db"

    @property
    def audit_dir(self) -> Path:
        return self.home / "audit"

    @property
    def worklist_dir(self) -> Path:
        return self.home / "worklist"

    @property
    def bench_results(self) -> Path:
        return self.home / "benchmarks" / "results.jsonl"


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """Turn ``CARECAST_SECTION__KEY=value`` variables into a nested dict."""
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in {"CARECAST_CONFIG", "CARECAST_API_KEYS"}:
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    if "CARECAST_API_KEYS" in environ:
        out.setdefault("serving", {})["api_keys"] = environ["CARECAST_API_KEYS"]
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        rule = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{source}: {key}: {rule}")
    return "; ".join(lines)


def load_settings(config: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Build the settings from file and environment; raise ``SettingsError`` naming file and key."""
    env = dict(os.environ if environ is None else environ)
    home = Path(env.get("CARECAST_HOME", DEFAULT_HOME)).expanduser().resolve()
    path = config or (Path(env["CARECAST_CONFIG"]) if env.get("CARECAST_CONFIG") else home / "carecast.yaml")
    data: dict[str, Any] = {}
    source = "defaults"
    if path.exists():
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"{path}: top level must be a mapping of settings")
        data = loaded
    elif config is not None:
        raise SettingsError(f"{path}: settings file not found")
    try:
        Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, source)) from None
    overrides = _env_overrides(env)
    overrides["home"] = str(Path(data.get("home", home)).expanduser()) if "home" not in overrides else overrides["home"]
    try:
        return Settings.model_validate(_merge(data, overrides))
    except ValidationError as exc:
        raise SettingsError(_describe(exc, "environment (CARECAST_*)")) from None
