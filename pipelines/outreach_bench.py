"""`carecast benchmark outreach`: no-shows prevented by four outreach plans on the same held-out appointments.

Why: the question the uplift models answer is "who should the coordinators' limited actions go to?". The benchmark
generates its own synthetic world (in a temporary work folder, never the user's home), runs the product's path
(validate, features, the no-show model and its gate, the uplift set and its gate), and on the appointments whose
prediction point is in the uplift set's held-out window (every one of them, randomised or not: the truth knows each
one's no-show probability under every action) compares, at a capacity of ``capacity`` x appointments:

* ``none``: no extra action (0 prevented, by definition);
* ``risk``: today's plan: the promoted no-show model's risk x the configured effect (``OutreachSettings.effects``),
  which with the defaults is a personal call for the riskiest patients who can take one;
* ``uplift``: each appointment's action with the largest predicted reduction (the uplift set), largest first;
* ``oracle``: the same with the true potential outcomes (the best any plan can do).

And one diagnostic that is not a plan the product could make: ``ceiling``, the best a model of *these features* can
do. Per action a regressor is fitted to the world's true gains (p(none) - p(action)) on the appointments before the
held-out window (the uplift set's training span), and its plan is made on the held-out ones. The oracle also knows
each appointment's latent reason, which no feature holds; the ceiling says how much of the oracle's figure the
features can reach at all, so a shortfall of ``uplift`` can be told apart as learning (uplift vs ceiling) or
observability (ceiling vs oracle).

Prevented no-shows are read from the truth (``truth/outreach.parquet``): the sum over the plan's appointments of
p(none) - p(action). Only the synthetic world has this truth; it is never used to train or gate.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from carecast import logs
from carecast.settings import Settings, SynthSettings

log = logs.get("pipelines.outreach_bench")
PLANS = ("none", "risk", "uplift", "oracle")


@dataclass
class OutreachResult:
    patients: int
    seed: int
    appointments: int
    capacity: int
    prevented: dict[str, float]
    expected_no_shows: float
    learner: str
    gate: str
    seconds: float
    actions: dict[str, dict[str, int]] = field(default_factory=dict)
    training: str = ""
    #: the features' ceiling (module doc): no-shows prevented by a plan from a model fitted to the true gains
    ceiling: float | None = None
    #: no-shows prevented by each learner's plan (the truth's figure; the product chose ``learner`` on validation)
    per_learner: dict[str, float] = field(default_factory=dict)

    def figures(self) -> dict:
        f: dict = {p: round(self.prevented[p], 3) for p in PLANS}
        f |= {"uplift_over_risk": _ratio(self.prevented["uplift"], self.prevented["risk"]),
              "uplift_over_oracle": _ratio(self.prevented["uplift"], self.prevented["oracle"])}
        if self.ceiling is not None:
            f |= {"ceiling": round(self.ceiling, 3), "ceiling_over_oracle": _ratio(self.ceiling, self.prevented["oracle"]),
                  "uplift_over_ceiling": _ratio(self.prevented["uplift"], self.ceiling)}
        f |= {f"learner_{n}": round(v, 3) for n, v in self.per_learner.items()}
        f |= {"appointments": self.appointments, "capacity": self.capacity, "patients": self.patients,
              "seed": self.seed, "learner": self.learner, "gate": self.gate, "seconds": round(self.seconds, 1)}
        return f

    def describe(self) -> str:
        lines = [f"outreach benchmark: {self.patients:,} patients, seed {self.seed}; {self.appointments:,} held-out "
                 f"appointments, capacity {self.capacity:,} actions (10%); expected no-shows with no extra action "
                 f"{self.expected_no_shows:.1f}"]
        for p in PLANS:
            mix = ", ".join(f"{a} {n:,}" for a, n in sorted(self.actions.get(p, {}).items(), key=lambda kv: -kv[1]))
            lines.append(f"  {p:>6}: prevents {self.prevented[p]:7.1f} no-shows" + (f" ({mix})" if mix else ""))
        f = self.figures()
        if self.ceiling is not None:
            lines.append(f"  (ceiling: a model fitted to the true gains from the same features prevents {self.ceiling:.1f}, "
                         f"{f['ceiling_over_oracle']} of the oracle: the most any model of these features can reach; "
                         f"uplift reaches {f['uplift_over_ceiling']} of it)")
        if self.per_learner:
            lines.append("  each learner's plan (truth; the product chose on validation, without it): " + ", ".join(
                f"{n} {v:.1f}" for n, v in self.per_learner.items()))
        if self.training:
            lines.append(self.training)
        lines.append(f"  uplift / risk = {f['uplift_over_risk']}, uplift / oracle = {f['uplift_over_oracle']} "
                     f"(goal: >= 1.3 and >= 0.8); uplift learner {self.learner}; uplift gate: {self.gate}")
        return "\n".join(lines)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


def _mix(plan: np.ndarray) -> dict[str, int]:
    vals, counts = np.unique(plan[plan != "none"].astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(vals, counts, strict=True)}


def _world(s: Settings, patients: int, seed: int, syn: SynthSettings) -> None:
    """The synthetic world and the product's path up to the no-show model's gate, in ``s``'s home."""
    from features.synth.generate import SynthConfig, generate
    from pipelines.pipeline import PipelineOptions
    from pipelines.pipeline import run as pipeline_run

    with logs.stage(log, "outreach bench: synth") as info:
        generate(SynthConfig(patients=patients, seed=seed, start=dt.date.fromisoformat(syn.start),
                             end=dt.date.fromisoformat(syn.end), today=dt.date.fromisoformat(syn.today)), s.feeds_dir)
        info["patients"] = patients
    with logs.stage(log, "outreach bench: pipeline (no-show)"):
        res = pipeline_run(s, PipelineOptions(targets=("no_show",), until="gate", plots=False, record=False))
        failed = [r for r in res.stages if r.status == "failed"]
        if failed:
            raise RuntimeError(f"pipeline stage {failed[0].stage} failed: {failed[0].summary}")


def run(patients: int, seed: int, work: Path | None = None, capacity: float = 0.10, reuse: bool = False
        ) -> OutreachResult:
    """The benchmark (module doc): returns the four plans' prevented no-shows. ``reuse``: keep the world and the
    no-show model already built in ``work`` (same patients and seed) and redo only the uplift set and the plans."""
    from training import registry
    from training import uplift_metrics as UM
    from training.gate import promote_uplift
    from training.model import predict
    from training.uplift import ACTIONS
    from training.uplift_data import load as load_uplift_frame
    from training.uplift_train import reachable_mask, risk_plan, summary, train_uplift, uplift_plan

    t0 = time.perf_counter()
    syn = SynthSettings()
    with tempfile.TemporaryDirectory(prefix="outreach-bench-") as tmp:
        root = Path(work) if work else Path(tmp)
        s = Settings(home=root / "home")
        built = root / "built.json"
        want = f'{{"patients": {patients}, "seed": {seed}}}'
        if reuse and built.exists() and built.read_text() == want:
            log.info("outreach bench: reusing the world and no-show model in %s", root)
        else:
            _world(s, patients, seed, syn)
            built.write_text(want)
        uf = load_uplift_frame(s)
        trained = train_uplift(s, uf)
        decision = promote_uplift(s, uf)
        models = trained["models"]
        with logs.stage(log, "outreach bench: plans") as info:
            df = uf.frame
            ts = pd.to_datetime(df["event_timestamp"], utc=True)
            held = df[(ts >= pd.Timestamp(trained["test_start"])).to_numpy()].reset_index(drop=True)
            truth = pd.read_parquet(s.feeds_dir / "truth" / "outreach.parquet")
            t = held[["appointment_id"]].merge(truth, on="appointment_id", how="left")
            p_true = t[[f"p_{a}" for a in ACTIONS]].to_numpy(dtype=float)
            gain_true = p_true[:, :1] - p_true
            champ = registry.version_by_alias(s, "no_show", registry.CHAMPION)
            ns = registry.load(s, "no_show", registry.CHAMPION if champ is not None else registry.CHALLENGER)
            p_risk = predict(ns.booster, held[ns.meta["feature_columns"]].astype("float32"))
            allowed = reachable_mask(held)
            k = max(1, int(round(capacity * len(held))))
            plans = {"none": np.full(len(held), "none", dtype=object),
                     "risk": risk_plan(p_risk, allowed, k, s.outreach.effects),
                     "uplift": uplift_plan(models.predict(held[models.feature_columns]), allowed, k)}
            best = np.argmax(np.where(allowed, gain_true, -np.inf), axis=1)
            g = gain_true[np.arange(len(held)), best]
            plans["oracle"] = np.where(UM.top_k(g, k), np.asarray(ACTIONS, dtype=object)[best], "none")
            ceiling = _ceiling(df, ts, pd.Timestamp(trained["test_start"]), truth, models.feature_columns, held,
                               gain_true, allowed, k)
            col = {a: i for i, a in enumerate(ACTIONS)}
            prevented = {}
            for name, plan in plans.items():
                idx = np.array([col[a] for a in plan])
                prevented[name] = float(gain_true[np.arange(len(held)), idx].sum())
            per_learner = {}
            for name, m in trained.get("sets", {}).items():
                plan = uplift_plan(m.predict(held[m.feature_columns]), allowed, k)
                per_learner[name] = float(gain_true[np.arange(len(held)), [col[a] for a in plan]].sum())
            info["appointments"] = len(held)
    return OutreachResult(patients, seed, len(held), k, prevented, float(p_true[:, 0].sum()), trained["learner"],
                          "promoted" if decision.promoted else "refused", time.perf_counter() - t0,
                          {n: _mix(p) for n, p in plans.items()}, summary(trained) + "\n" + decision.describe(),
                          ceiling, per_learner)


def _ceiling(df: pd.DataFrame, ts: pd.Series, test_start: pd.Timestamp, truth: pd.DataFrame, feats: list[str],
             held: pd.DataFrame, gain_held: np.ndarray, allowed: np.ndarray, k: int) -> float:
    """The features' ceiling (module doc): per action an XGBoost regressor of the true gain, fitted on the frame's
    rows before the held-out window less the uplift split's purge, its plan scored on the held-out rows."""
    import xgboost as xgb

    from training import uplift_metrics as UM
    from training.uplift import ACTIONS
    from training.uplift_train import PURGE_DAYS

    with logs.stage(log, "outreach bench: features' ceiling") as info:
        fit = df[(ts < test_start - pd.Timedelta(days=PURGE_DAYS)).to_numpy()]
        t = fit[["appointment_id"]].merge(truth, on="appointment_id", how="left")
        p = t[[f"p_{a}" for a in ACTIONS]].to_numpy(dtype=float)
        ok = np.isfinite(p).all(axis=1)
        dfit = xgb.DMatrix(fit.loc[ok, feats].astype("float32"), missing=np.nan)
        dheld = xgb.DMatrix(held[feats].astype("float32"), missing=np.nan)
        pred = np.zeros_like(gain_held)
        params = {"max_depth": 5, "eta": 0.1, "min_child_weight": 20, "subsample": 0.8, "nthread": 2,
                  "tree_method": "hist", "seed": 7}
        for j in range(1, len(ACTIONS)):
            dfit.set_label(p[ok, 0] - p[ok, j])
            pred[:, j] = xgb.train(params, dfit, num_boost_round=300).predict(dheld)
        masked = np.where(allowed, pred, -np.inf)
        best = np.argmax(masked, axis=1)
        act = UM.top_k(masked[np.arange(len(held)), best], k)
        info["rows"] = int(ok.sum())
        return float(gain_held[np.flatnonzero(act), best[act]].sum())
