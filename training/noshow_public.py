"""Public no-show benchmark on the Vitória 2016 dataset (Kaggle "Medical Appointment No Shows").

``carecast benchmark noshow-public CSV --test-from 2016-05-31 --predictions-out FILE``: import the CSV
into validated feeds (``features.feeds.noshow_import``), build features per appointment with the honest
protocol, train on appointments before the test day, write ``AppointmentID,probability`` for every
appointment on or after it and print the metrics.

Honest protocol. An appointment's prediction point is max(booking time, appointment day - 3 days).
Its features use only what was known then:
- booking facts (lead time in days, booking hour and weekday, appointment weekday), patient facts
  (age, sex, the Scholarship/Hipertension/Diabetes/Alcoholism/Handcap flags, neighbourhood as an
  alphabetical integer code: no target encoding at all);
- history: the patient's appointments on days *strictly earlier* than the prediction point's day
  (their outcome is recorded by the end of their day): how many, how many missed, the missed share,
  days since the last one and since the last missed one, whether the last one was missed;
- other bookings the patient already held at the prediction point (booked at or before it, for
  that day or later).
Not used: ``SMS_received``. The import records the reminder 2 days before the appointment, after
the prediction point, and in this data reminders were sent by lead-time policy (lead time already
carries it). Validation (early stopping, calibration) is the last 15% of training appointment days.

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
from features.feeds import files as feeds_io
from features.feeds.noshow_import import EXTRAS_FILE, import_noshow
from features.feeds.validate import FeedError
from training import metrics as M
from training.baselines import Logistic
from training.model import Shape, fit, predict

log = logs.get("noshow_public")
LEAD = pd.Timedelta(days=3)
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

    def describe(self) -> str:
        m = self.model
        lines = [f"no-show public benchmark: train {self.n_train:,} appointments before {self.test_from}, "
                 f"test {self.n_test:,} on or after it",
                 f"  model: AUC {m['auc']:.4f}  PR-AUC {m['pr_auc']:.4f}  Brier {m['brier']:.4f}  "
                 f"log loss {m['log_loss']:.4f}  ECE {m['ece']:.4f}  (test no-show rate {m['prevalence']:.3f})",
                 f"  lead time alone: AUC {self.lead_time_auc:.4f}; logistic regression: AUC {self.logistic['auc']:.4f}",
                 "  reference: honest published models 0.70-0.75, lead time alone ~0.69, >0.9 means leakage"]
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


def build_features(visits: pd.DataFrame, patients: pd.DataFrame, extras: pd.DataFrame) -> pd.DataFrame:
    """One row per appointment: prediction point, label and the FEATURES (see the module doc)."""
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


def run(csv: Path, test_from: str, predictions_out: Path | None = None, work: Path | None = None) -> BenchmarkResult:
    try:
        cut = pd.Timestamp(test_from)
    except ValueError:
        raise BenchmarkError(f"--test-from {test_from!r} is not a date (YYYY-MM-DD)") from None
    with tempfile.TemporaryDirectory(prefix="noshow-bench-") as tmp:
        out = Path(work) if work else Path(tmp)
        with logs.stage(log, "import"):
            try:
                import_noshow(Path(csv), out)
            except FeedError as exc:
                raise BenchmarkError(str(exc)) from None
        visits = feeds_io.read_feed(out, "visits")
        patients = feeds_io.read_feed(out, "patients")
        extras = pd.read_parquet(out / EXTRAS_FILE)
    with logs.stage(log, "features") as info:
        df = build_features(visits, patients, extras)
        info["appointments"] = len(df)
    train = df[df["appt_day"] < cut].reset_index(drop=True)
    test = df[df["appt_day"] >= cut].reset_index(drop=True)
    if len(test) == 0 or len(train) < 50:
        raise BenchmarkError(f"--test-from {test_from}: {len(train)} training and {len(test)} test appointments; "
                             "choose a day inside the data")
    days = np.sort(train["appt_day"].unique())
    val_start = days[int(len(days) * 0.85)] if len(days) > 1 else days[-1]
    tr, va = train[train["appt_day"] < val_start], train[train["appt_day"] >= val_start]
    if len(tr) == 0 or va["label"].nunique() < 2:
        tr, va = train, train
    fitted = fit("binary", tr[FEATURES], tr["label"].to_numpy(), va[FEATURES], va["label"].to_numpy(), Shape())
    p = predict(fitted.booster, test[FEATURES])
    y = test["label"].to_numpy()
    model_m = M.binary_metrics(y, p)
    lead_auc = M.binary_metrics(y, test["lead_days"].fillna(0).to_numpy() / (1 + test["lead_days"].max()))["auc"]

    lr = Logistic("binary", FEATURES, CATEGORICAL).fit(train[FEATURES], train["label"].to_numpy(), 2)
    lr_m = M.binary_metrics(y, lr.predict(test[FEATURES]))
    result = BenchmarkResult(test_from, len(train), len(test), model_m, lead_auc, lr_m,
                             float(train["label"].mean()), predictions_out,
                             notes={"best_iteration": fitted.best_iteration, "calibration": fitted.calibration.method})
    if predictions_out:
        scored = pd.DataFrame({"AppointmentID": test["appointment_id"].astype(str), "probability": p})
        raw = pd.read_csv(csv, dtype=str, usecols=["AppointmentID", "AppointmentDay"], keep_default_na=False)
        raw_day = pd.to_datetime(raw["AppointmentDay"], utc=True, errors="coerce").dt.tz_localize(None).dt.floor("D")
        raw_ids = _ids(raw.loc[raw_day >= cut, "AppointmentID"]).dropna().drop_duplicates()
        missing = raw_ids[~raw_ids.isin(scored["AppointmentID"])]
        fallback = pd.DataFrame({"AppointmentID": missing, "probability": result.prevalence_train})
        allp = pd.concat([scored, fallback], ignore_index=True) if len(fallback) else scored
        Path(predictions_out).parent.mkdir(parents=True, exist_ok=True)
        allp.to_csv(predictions_out, index=False)
        result.written, result.fallback = len(allp), len(fallback)
    return result
