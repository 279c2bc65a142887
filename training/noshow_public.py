"""Public no-show benchmark on the Vitória 2016 dataset (Kaggle "Medical Appointment No Shows").

``carecast benchmark noshow-public CSV --test-from 2016-05-31 --predictions-out FILE`` runs the
product's own path on the public file, in a throwaway home (never the user's store or registry):
import (``features.feeds.noshow_import``, which validates the feeds against the contracts) -> the
feature build (``features.build``: snapshots and the no-show labels) -> ``features apply`` (Feast) ->
the training frame from the feature store (``features.store.reader.training_frame``) -> the no-show
model's training, early stopping and calibration (``training.train.train_target``, the code of
``carecast train --target no_show``, not registered). It then writes ``AppointmentID,probability`` for
every appointment on or after the test day and prints the metrics.

What is honest about it: every row is predicted at the product's no-show prediction point
(``features/build/labels.py``: max(booked_at, scheduled_at - 72 h)), so an appointment booked less
than 72 hours ahead is predicted at its booking and is in the test window like any other; features
are read as of that point (``features/build/run.py``'s as-of rule: an outcome counts from its
``status_at``, the end of the appointment day in the import). The split is by appointment day:
train on days before the test day (their outcomes are known by then), validation (early stopping,
calibration) on the last 15% of those days, test on the test day and after.

``side_path_features`` is the former separate feature code, kept only as a documented comparison
(``--compare``, on by default): it adds what the contracts do not carry (neighbourhood and the clinical
flags of ``noshow_extras.parquet``) and the patient's other bookings held at the point. Its figure is
printed beside the product's so a change to either is seen.

For reference (domain.md): honest published models reach AUC 0.70-0.75, lead time alone ~0.69,
above 0.9 means leakage.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import pandas as pd

from carecast import logs
from carecast.settings import Settings
from features.feeds import files as feeds_io
from features.feeds.noshow_import import EXTRAS_FILE, import_noshow
from features.feeds.validate import FeedError
from training import metrics as M
from training.model import Shape, fit, predict
from training.split import Split

log = logs.get("noshow_public")
LEAD = pd.Timedelta(days=3)
#: the share of training days (the latest) that validates: early stopping and calibration
VAL_SHARE = 0.15
#: the side path's features (``side_path_features``)
FEATURES = ["lead_days", "same_day", "book_hour", "book_weekday", "appt_weekday", "age", "sex_f",
            "scholarship", "hipertension", "diabetes", "alcoholism", "handcap_level", "neighbourhood",
            "prior_n", "prior_noshow_n", "prior_noshow_rate", "days_since_prior", "days_since_prior_noshow",
            "last_was_noshow", "open_bookings"]
CATEGORICAL = ["neighbourhood"]


class BenchmarkError(ValueError):
    """The CSV or the test date cannot be used; the message says why."""


@dataclass
class BenchmarkResult:
    test_from: str
    n_train: int
    n_test: int
    model: dict
    lead_time_auc: float
    logistic: dict
    prevalence_train: float
    predictions_out: Path | None
    written: int = 0
    fallback: int = 0
    notes: dict = field(default_factory=dict)
    #: the side path's test metrics on the same appointments (``side_path_features``), when compared
    side_path: dict | None = None

    def describe(self) -> str:
        m = self.model
        lines = [f"no-show public benchmark through the product (import -> validate -> Feast build -> no-show "
                 f"training and calibration): train {self.n_train:,} appointments before {self.test_from}, "
                 f"test {self.n_test:,} on or after it (short-lead ones predicted at booking)",
                 f"  model: AUC {m['auc']:.4f}  PR-AUC {m['pr_auc']:.4f}  Brier {m['brier']:.4f}  "
                 f"log loss {m['log_loss']:.4f}  ECE {m['ece']:.4f}  (test no-show rate {m['prevalence']:.3f})",
                 f"  lead time alone: AUC {self.lead_time_auc:.4f}; logistic regression: AUC {M.fmt(self.logistic.get('auc'))}"]
        if self.side_path is not None:
            lines.append(f"  comparison, the side path (its own features incl. neighbourhood and clinical flags): "
                         f"AUC {self.side_path['auc']:.4f} on {self.side_path['n']:,} test appointments")
        lines.append("  reference: honest published models 0.70-0.75, lead time alone ~0.69, >0.9 means leakage")
        if m["auc"] > 0.9:
            lines.append("  WARNING: AUC above 0.9 on this data points to label leakage")
        if self.predictions_out:
            lines.append(f"  wrote {self.written:,} predictions to {self.predictions_out}"
                         + (f" ({self.fallback:,} appointments quarantined by the import got the training "
                            f"no-show rate {self.prevalence_train:.3f})" if self.fallback else ""))
        return "\n".join(lines)


def _day(ts: pd.Series) -> pd.Series:
    ts = pd.to_datetime(ts, utc=True)
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D")


def side_path_features(visits: pd.DataFrame, patients: pd.DataFrame, extras: pd.DataFrame) -> pd.DataFrame:
    """The side path (a comparison only): one row per appointment with its prediction point
    (max(booking, appointment day - 3 days)), label and FEATURES; history from days strictly before the point's day."""
    v = visits[visits["status"].isin(["no_show", "completed"])].copy()
    v["booked"] = pd.to_datetime(v["booked_at"], utc=True).dt.tz_localize(None)
    v["appt_day"] = _day(v["scheduled_at"])
    v["point"] = np.maximum(v["booked"], v["appt_day"] - LEAD)
    v["point_day"] = v["point"].dt.floor("D")
    v["label"] = (v["status"] == "no_show").astype(int)
    v["lead_days"] = (v["appt_day"] - v["booked"].dt.floor("D")).dt.days.astype(float)
    v["same_day"] = (v["lead_days"] == 0).astype(float)
    v["book_hour"] = v["booked"].dt.hour.astype(float)
    v["book_weekday"] = v["booked"].dt.weekday.astype(float)
    v["appt_weekday"] = v["appt_day"].dt.weekday.astype(float)
    p = patients[["patient_id", "birth_year", "sex"]]
    v = v.merge(p, on="patient_id", how="left")
    v["age"] = (v["appt_day"].dt.year - v["birth_year"]).astype(float)
    v["sex_f"] = (v["sex"] == "F").astype(float)
    ex = extras.copy()
    hoods = sorted(ex["neighbourhood"].dropna().unique())
    ex["neighbourhood"] = ex["neighbourhood"].map({h: i for i, h in enumerate(hoods)}).astype(float)
    for c in ("scholarship", "hipertension", "diabetes", "alcoholism"):
        ex[c] = ex[c].astype(float)
    ex["handcap_level"] = ex["handcap_level"].astype(float)
    v = v.merge(ex[["appointment_id", "scholarship", "hipertension", "diabetes", "alcoholism",
                    "handcap_level", "neighbourhood"]], on="appointment_id", how="left")
    v = _history(v)
    v = _open_bookings(v)
    return v.sort_values(["point", "appointment_id"], kind="stable").reset_index(drop=True)


def _history(v: pd.DataFrame) -> pd.DataFrame:
    """Outcomes of the patient's appointments on days strictly before the prediction point's day."""
    daily = (v.groupby(["patient_id", "appt_day"]).agg(n=("label", "size"), k=("label", "sum")).reset_index()
             .sort_values(["patient_id", "appt_day"]))
    g = daily.groupby("patient_id")
    daily["prior_n"] = g["n"].cumsum()
    daily["prior_noshow_n"] = g["k"].cumsum()
    daily["last_noshow_day"] = daily["appt_day"].where(daily["k"] > 0)
    daily["last_noshow_day"] = daily.groupby("patient_id")["last_noshow_day"].ffill()
    daily["last_was_noshow"] = (daily["k"] > 0).astype(float)
    daily = daily.rename(columns={"appt_day": "prior_day"}).sort_values("prior_day")
    left = v.sort_values("point_day")
    out = pd.merge_asof(left, daily[["patient_id", "prior_day", "prior_n", "prior_noshow_n", "last_noshow_day",
                                     "last_was_noshow"]],
                        left_on="point_day", right_on="prior_day", by="patient_id",
                        allow_exact_matches=False, direction="backward")
    out["prior_n"] = out["prior_n"].fillna(0).astype(float)
    out["prior_noshow_n"] = out["prior_noshow_n"].fillna(0).astype(float)
    out["prior_noshow_rate"] = np.where(out["prior_n"] > 0, out["prior_noshow_n"] / out["prior_n"].clip(lower=1), np.nan)
    out["days_since_prior"] = (out["point_day"] - out["prior_day"]).dt.days.astype(float)
    out["days_since_prior_noshow"] = (out["point_day"] - out["last_noshow_day"]).dt.days.astype(float)
    return out


def _open_bookings(v: pd.DataFrame) -> pd.DataFrame:
    """Other appointments of the patient booked at or before the point, for the point's day or later."""
    counts = np.zeros(len(v))
    for _, idx in v.groupby("patient_id").indices.items():
        if len(idx) == 1:
            continue
        booked = v["booked"].to_numpy()[idx]
        day = v["appt_day"].to_numpy()[idx]
        point = v["point"].to_numpy()[idx]
        pday = v["point_day"].to_numpy()[idx]
        held = (booked[None, :] <= point[:, None]) & (day[None, :] >= pday[:, None])
        np.fill_diagonal(held, False)
        counts[idx] = held.sum(axis=1)
    v["open_bookings"] = counts
    return v


def _ids(series: pd.Series) -> pd.Series:
    def one(x: str) -> str | None:
        try:
            d = Decimal(str(x).strip())
        except InvalidOperation:
            return None
        return str(int(d)) if d == d.to_integral_value() else None
    return series.map(one)


def appointment_split(cut: pd.Timestamp):
    """The benchmark's split for ``train_target``: by appointment day (the frame's ``appt_day``), train before the
    test day, validation its last ``VAL_SHARE`` of days, test on and after it. No purge gap is needed: a training
    appointment's outcome is known by the end of its day, before the test day."""
    def split(df: pd.DataFrame) -> Split:
        day = pd.to_datetime(df["appt_day"])
        before = (day < cut).to_numpy()
        test = ~before
        days = np.sort(day[before].unique())
        if len(days) < 2 or test.sum() == 0:
            raise BenchmarkError(f"--test-from {cut:%Y-%m-%d}: {len(days)} training days and {int(test.sum())} test "
                                 "appointments; choose a day inside the data")
        val = before & (day >= days[min(len(days) - 1, int(len(days) * (1 - VAL_SHARE)))]).to_numpy()
        train = before & ~val
        ts = df["event_timestamp"]
        return Split(train=train, val=val, test=test, train_start=ts[train].min(), train_end=ts[train].max(),
                     val_start=ts[val].min(), val_end=ts[val].max(), test_start=ts[test].min(),
                     test_end=ts[test].max(), purge_days=0)
    return split


def product_path(settings: Settings, feeds: Path, cut: pd.Timestamp) -> tuple[dict, pd.DataFrame, np.ndarray]:
    """Build, apply and train the no-show model the product's way on validated ``feeds``; return train_target's
    result, the test rows (appointment_id, label, lead_time_days) and their predictions."""
    from features.build.labels import label_file
    from features.build.run import build_features
    from features.store.reader import training_frame
    from features.store.repo import apply
    from training.train import train_target

    with logs.stage(log, "product path: features build") as info:
        info["summary"] = build_features(settings, feeds).describe()
    apply(settings)
    tf = training_frame(settings, "no_show")
    sched = pd.read_parquet(label_file(settings.feature_dir, "no_show"), columns=["appointment_id", "scheduled_ts"])
    day = pd.to_datetime(sched.set_index("appointment_id")["scheduled_ts"], unit="s").dt.floor("D")
    tf.frame["appt_day"] = tf.frame["appointment_id"].map(day).to_numpy()
    result = train_target(settings, "no_show", tf=tf, register=False, plots_on=False, split=appointment_split(cut))
    fb = result["fitted_baselines"]
    test = fb.checked.loc[fb.test_rows, ["appointment_id", "label", "lead_time_days"]].reset_index(drop=True)
    result["train_prevalence"] = float(fb.checked.loc[~fb.test_rows, "label"].mean())
    return result, test, np.asarray(fb.test_p)


def side_path(visits: pd.DataFrame, patients: pd.DataFrame, extras: pd.DataFrame, cut: pd.Timestamp) -> tuple[
        pd.DataFrame, np.ndarray]:
    """The former separate feature code's model (a comparison): test rows and their predictions."""
    df = side_path_features(visits, patients, extras)
    train, test = df[df["appt_day"] < cut].reset_index(drop=True), df[df["appt_day"] >= cut].reset_index(drop=True)
    days = np.sort(train["appt_day"].unique())
    val_start = days[int(len(days) * (1 - VAL_SHARE))] if len(days) > 1 else days[-1]
    tr, va = train[train["appt_day"] < val_start], train[train["appt_day"] >= val_start]
    if len(tr) == 0 or va["label"].nunique() < 2:
        tr, va = train, train
    fitted = fit("binary", tr[FEATURES], tr["label"].to_numpy(), va[FEATURES], va["label"].to_numpy(), Shape())
    return test, predict(fitted.booster, test[FEATURES])


def run(csv: Path, test_from: str, predictions_out: Path | None = None, work: Path | None = None,
        compare: bool = True, settings: Settings | None = None) -> BenchmarkResult:
    """The benchmark (module doc). ``work``: keep the imported feeds (``work/feeds``) and the benchmark's home
    (``work/home``) there; ``settings``: the site's feature-build settings to use (memory limit ...)."""
    try:
        cut = pd.Timestamp(test_from)
    except ValueError:
        raise BenchmarkError(f"--test-from {test_from!r} is not a date (YYYY-MM-DD)") from None
    with tempfile.TemporaryDirectory(prefix="noshow-bench-") as tmp:
        root = Path(work) if work else Path(tmp)
        feeds = root / "feeds"
        home = Settings(home=root / "home", features=(settings or Settings()).features)
        with logs.stage(log, "import"):
            try:
                import_noshow(Path(csv), feeds)
            except FeedError as exc:
                raise BenchmarkError(str(exc)) from None
        result, test, p = product_path(home, feeds, cut)
        side = None
        if compare:
            with logs.stage(log, "side path (comparison)") as info:
                s_test, s_p = side_path(feeds_io.read_feed(feeds, "visits"), feeds_io.read_feed(feeds, "patients"),
                                        pd.read_parquet(feeds / EXTRAS_FILE), cut)
                side = M.binary_metrics(s_test["label"].to_numpy(), s_p) | {"n": len(s_test)}
                info["auc"] = round(side["auc"], 4)
    y = test["label"].to_numpy()
    model_m = M.binary_metrics(y, p)
    lead = test["lead_time_days"].fillna(0).to_numpy()
    lead_auc = M.binary_metrics(y, (lead - lead.min()) / (1 + np.ptp(lead)))["auc"]
    prevalence = float(result["train_prevalence"])
    out = BenchmarkResult(test_from, result["n"]["train"] + result["n"]["val"], len(test), model_m, lead_auc,
                          result["baselines"].get("logistic", {}), prevalence, predictions_out, side_path=side,
                          notes={"best_iteration": result["best_iteration"],
                                 "calibration": result["calibration"]["method"], "features": len(result["features"])})
    if predictions_out:
        scored = pd.DataFrame({"AppointmentID": test["appointment_id"].astype(str), "probability": p})
        raw = pd.read_csv(csv, dtype=str, usecols=["AppointmentID", "AppointmentDay"], keep_default_na=False)
        raw_day = pd.to_datetime(raw["AppointmentDay"], utc=True, errors="coerce").dt.tz_localize(None).dt.floor("D")
        raw_ids = _ids(raw.loc[raw_day >= cut, "AppointmentID"]).dropna().drop_duplicates()
        missing = raw_ids[~raw_ids.isin(scored["AppointmentID"])]
        fallback = pd.DataFrame({"AppointmentID": missing, "probability": out.prevalence_train})
        allp = pd.concat([scored, fallback], ignore_index=True) if len(fallback) else scored
        Path(predictions_out).parent.mkdir(parents=True, exist_ok=True)
        allp.to_csv(predictions_out, index=False)
        out.written, out.fallback = len(allp), len(fallback)
    return out
