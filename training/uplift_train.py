"""Train the uplift set: per action, XGBoost meta-learners of the no-show probability under that action.

The learners are fitted and compared on the validation patients' randomised appointments (no fit trains on them);
the S-learner's set is registered unless another's plan prevents more there by a lower bound above 0
(``choose_learner``), and the gate judges it on the test window, which played no part in the choice:

* **T-learner**: one classifier per action (and one for "none") on the rows that got it, weighted by 1 / propensity
  (randomised rows: the draw's; policy rows: the logged one), so the policy's confounding is undone where it is known.
* **DR-learner**: cross-fitted T-learner outcome models, doubly robust pseudo-outcomes per action
  (mu_a - mu_0 + [T=a](Y - mu_a)/e_a - [T=none](Y - mu_0)/e_0), and a regressor of them per action on the features.

Each is ``BAGS`` bootstrap fits: their spread is the interval serving shows. Split: the test rows are the randomised
appointments whose prediction point is in the last ``TEST_SHARE`` of the randomised ones' time span; training rows
end ``PURGE_DAYS`` before it (their outcomes are known by then). Validation (early stopping) is a fixed share of the
training rows' patients. Evaluation: per action, the Qini curve and AUUC against a random and a risk ranking
(``training/uplift_metrics.py``), and the plans' no-shows prevented at capacity ``CAPACITY`` of the appointments.
"""

from __future__ import annotations

import json
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from carecast import logs
from carecast.settings import Effects, Settings
from training import uplift_metrics as UM
from training.uplift import (
    ACTIONS,
    BASELINE,
    CHALLENGER,
    EXPERIMENT,
    REGISTERED_MODEL,
    ActionProbabilities,
    UpliftModels,
    feasible,
)
from training.uplift_data import UpliftFrame

log = logs.get("training.uplift")

BAGS = 3
TEST_SHARE = 0.25
PURGE_DAYS = 7
VAL_SHARE = 0.2
#: the plans' capacity: this share of the appointments get an action (the rest: none)
CAPACITY = 0.10
LEARNERS = ("t", "t_offset", "dr", "s")


@dataclass(frozen=True)
class UpliftShape:
    max_depth: int = 3
    eta: float = 0.1
    num_boost_round: int = 200
    early_stopping_rounds: int = 20
    min_child_weight: float = 10.0
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    reg_lambda: float = 5.0
    seed: int = 7

    def params(self, objective: str, seed: int) -> dict:
        return {"max_depth": self.max_depth, "eta": self.eta, "min_child_weight": self.min_child_weight,
                "subsample": self.subsample, "colsample_bytree": self.colsample_bytree, "lambda": self.reg_lambda,
                "seed": seed, "tree_method": "hist", "nthread": 1, "objective": objective,
                "max_bin": 128}


def _fit(X: pd.DataFrame, y: np.ndarray, w: np.ndarray, val: np.ndarray, objective: str, shape: UpliftShape,
         seed: int, margin: np.ndarray | None = None):
    """One booster with early stopping on the ``val`` rows (all rows train when there are too few); ``margin``: a
    base margin per row (the offset learner fits only the shift from it)."""
    import xgboost as xgb

    tr = ~val if (val.sum() >= 20 and (~val).sum() >= 20) else np.ones(len(y), bool)
    dtr = xgb.DMatrix(X[tr].astype("float32"), label=y[tr], weight=w[tr], missing=np.nan,
                      base_margin=None if margin is None else margin[tr])
    evals = []
    if tr.sum() < len(y):
        dva = xgb.DMatrix(X[val].astype("float32"), label=y[val], weight=w[val], missing=np.nan,
                          base_margin=None if margin is None else margin[val])
        evals = [(dva, "val")]
    b = xgb.train(shape.params(objective, seed), dtr, num_boost_round=shape.num_boost_round, evals=evals,
                  early_stopping_rounds=shape.early_stopping_rounds if evals else None, verbose_eval=False)
    if evals and b.best_iteration is not None:
        b = b[: b.best_iteration + 1]
    return b


def _boot(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, n, n)


def fit_t(X: pd.DataFrame, y: np.ndarray, taken: np.ndarray, e: np.ndarray, val: np.ndarray, shape: UpliftShape,
          bags: int = BAGS) -> dict[str, list]:
    """T-learner: per action, ``bags`` bootstrap classifiers on its rows, weighted 1 / propensity."""
    out: dict[str, list] = {}
    for k, a in enumerate(ACTIONS):
        rows = np.flatnonzero(taken == a)
        if len(rows) < 50 or len(np.unique(y[rows])) < 2:
            raise ValueError(f"action {a}: {len(rows)} training rows with both outcomes needed, too few to learn")
        w = 1.0 / e[rows]
        w = w / w.mean()
        rng = np.random.default_rng(shape.seed + 101 * k)
        out[a] = []
        for b in range(bags):
            s = rows if bags == 1 else rows[_boot(rng, len(rows))]
            ws = w if bags == 1 else w[np.searchsorted(rows, s)]
            out[a].append(_fit(X.iloc[s], y[s], ws, val[s], "binary:logistic", shape, shape.seed + b))
    return out


#: the offset learner's shift models: shallow and slow, they only learn how an action moves the baseline's log-odds
OFFSET_SHAPE = UpliftShape(max_depth=2, eta=0.05, num_boost_round=300, early_stopping_rounds=30,
                           min_child_weight=30.0, reg_lambda=10.0)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def fit_t_offset(X: pd.DataFrame, y: np.ndarray, taken: np.ndarray, e: np.ndarray, val: np.ndarray,
                 t_models: dict[str, list], shape: UpliftShape = OFFSET_SHAPE) -> dict[str, list]:
    """Offset T-learner: "none" keeps the T-learner's baseline classifiers (bag k); each action's bag k is a
    classifier on the action's rows started from bag k's baseline log-odds (XGBoost base margin), so it learns only
    the action's shift: far fewer rows are needed to learn a shift than a whole risk model."""
    import xgboost as xgb

    d = xgb.DMatrix(X.astype("float32"), missing=np.nan)
    base = [_logit(b.predict(d)) for b in t_models[BASELINE]]
    out: dict[str, list] = {BASELINE: t_models[BASELINE]}
    for k, a in enumerate(ACTIONS[1:], start=1):
        rows = np.flatnonzero(taken == a)
        w = 1.0 / e[rows]
        w = w / w.mean()
        rng = np.random.default_rng(shape.seed + 307 * k)
        out[a] = []
        for b, m in enumerate(base):
            s = rows[_boot(rng, len(rows))] if len(base) > 1 else rows
            ws = w[np.searchsorted(rows, s)] if len(base) > 1 else w
            out[a].append(_fit(X.iloc[s], y[s], ws, val[s], "binary:logistic", shape, shape.seed + b, margin=m[s]))
    return out


def _predict_all(boosters: dict[str, list], X: pd.DataFrame) -> np.ndarray:
    import xgboost as xgb

    d = xgb.DMatrix(X.astype("float32"), missing=np.nan)
    return np.stack([np.mean([b.predict(d) for b in boosters[a]], axis=0) for a in ACTIONS], axis=1)


def fit_dr(X: pd.DataFrame, y: np.ndarray, taken: np.ndarray, e: np.ndarray, val: np.ndarray, groups: np.ndarray,
           shape: UpliftShape, t_models: dict[str, list], bags: int = BAGS) -> dict[str, list]:
    """DR-learner: cross-fitted (2 folds by patient) outcome models, pseudo-outcomes, one regressor set per action;
    "none" keeps the T-learner's baseline classifiers (the set adds each action's difference to it)."""
    fold = (groups % 2).astype(bool)
    mu = np.zeros((len(y), len(ACTIONS)))
    for f in (False, True):
        other = fold != f
        m = fit_t(X[other].reset_index(drop=True), y[other], taken[other], e[other], val[other], shape, bags=1)
        mu[fold == f] = _predict_all(m, X[fold == f])
    out: dict[str, list] = {BASELINE: t_models[BASELINE]}
    t0 = taken == BASELINE
    base = mu[:, 0] + np.where(t0, (y - mu[:, 0]) / e, 0.0)
    for k, a in enumerate(ACTIONS[1:], start=1):
        ta = taken == a
        psi = mu[:, k] + np.where(ta, (y - mu[:, k]) / e, 0.0) - base
        psi = np.clip(psi, -5.0, 5.0)
        rng = np.random.default_rng(shape.seed + 211 * k)
        out[a] = []
        for b in range(bags):
            s = _boot(rng, len(y)) if bags > 1 else np.arange(len(y))
            out[a].append(_fit(X.iloc[s], psi[s], np.ones(len(s)), val[s], "reg:squarederror", shape, shape.seed + b))
    return out


#: the S-learner's shared model: deeper than the T-learner's (it must find action x feature interactions itself)
S_SHAPE = UpliftShape(max_depth=5, eta=0.05, num_boost_round=2000, early_stopping_rounds=50, min_child_weight=20.0,
                      reg_lambda=5.0)
#: the S-learner's row weights 1 / propensity are capped here: uncapped, a few policy rows with a rare action carry
#: weights up to 50 and the shared model chases their noise (measured in docs/models.md)
S_MAX_WEIGHT = 5.0
#: the distilled per-action boosters (what the set stores): they copy the shared model's differences closely
DISTIL_SHAPE = UpliftShape(max_depth=6, eta=0.2, num_boost_round=150, min_child_weight=5.0, subsample=1.0,
                           colsample_bytree=1.0, reg_lambda=1.0)


def _with_action(X: pd.DataFrame, action: int | np.ndarray) -> np.ndarray:
    """``X`` and a one-hot of the action (every action but "none" a column): the S-learner's design matrix."""
    a = np.broadcast_to(np.asarray(action), (len(X),))
    oh = np.zeros((len(X), len(ACTIONS) - 1), dtype=np.float32)
    on = np.flatnonzero(a > 0)
    oh[on, a[on] - 1] = 1.0
    return np.hstack([X.to_numpy(dtype=np.float32), oh])


def fit_s(X: pd.DataFrame, y: np.ndarray, taken: np.ndarray, e: np.ndarray, val: np.ndarray,
          shape: UpliftShape = S_SHAPE, bags: int = BAGS) -> dict[str, list]:
    """S-learner: ``bags`` shared classifiers over the features and the action (one-hot), every action's rows
    together (weights 1 / propensity, capped at ``S_MAX_WEIGHT``), so each action's effect is learned from all rows'
    risk structure instead of its own eighth of them. The set stores, per bag, boosters over the features alone
    (what serving and its explanations read): "none" copies the shared model's probability under "none", each action
    its difference from "none" (the learner then reads like "dr": baseline + difference; ``UpliftModels``)."""
    import xgboost as xgb

    col = {a: k for k, a in enumerate(ACTIONS)}
    ai = np.array([col[a] for a in taken], dtype=int)
    w = np.minimum(1.0 / e, S_MAX_WEIGHT)
    w = w / w.mean()
    design = _with_action(X, ai)
    tr = ~val if (val.sum() >= 20 and (~val).sum() >= 20) else np.ones(len(y), bool)
    dfeat = xgb.DMatrix(X.astype("float32"), missing=np.nan)
    out: dict[str, list] = {a: [] for a in ACTIONS}
    for b in range(bags):
        seed = shape.seed + b
        dtr = xgb.DMatrix(design[tr], label=y[tr], weight=w[tr], missing=np.nan)
        evals = [] if tr.all() else [(xgb.DMatrix(design[~tr], label=y[~tr], weight=w[~tr], missing=np.nan), "val")]
        m = xgb.train(shape.params("binary:logistic", seed), dtr, num_boost_round=shape.num_boost_round,
                      evals=evals, early_stopping_rounds=shape.early_stopping_rounds if evals else None,
                      verbose_eval=False)
        if evals and m.best_iteration is not None:
            m = m[: m.best_iteration + 1]
        p = np.stack([m.predict(xgb.DMatrix(_with_action(X, k), missing=np.nan)) for k in range(len(ACTIONS))], 1)
        for k, a in enumerate(ACTIONS):
            target, objective = (p[:, 0], "binary:logistic") if k == 0 else (p[:, k] - p[:, 0], "reg:squarederror")
            dfeat.set_label(target)
            out[a].append(xgb.train(DISTIL_SHAPE.params(objective, seed), dfeat,
                                    num_boost_round=DISTIL_SHAPE.num_boost_round))
    return out


def reachable_mask(X: pd.DataFrame) -> np.ndarray:
    """(n, A) which actions can be delivered to each row (contact flags and the telehealth flag among the features)."""
    cols = {c: (X[c].to_numpy(dtype=float) >= 0.5) if c in X else np.zeros(len(X), bool)
            for c in ("has_mobile", "has_email", "portal_enrolled")}
    tele = (X["telehealth_flag"].to_numpy(dtype=float) >= 0.5) if "telehealth_flag" in X else np.zeros(len(X), bool)
    out = np.zeros((len(X), len(ACTIONS)), dtype=bool)
    for i in range(len(X)):
        reach = {k: bool(v[i]) for k, v in cols.items()}
        out[i] = [feasible(a, reach, bool(tele[i])) for a in ACTIONS]
    return out


def uplift_plan(ap: ActionProbabilities, allowed: np.ndarray, k: int) -> np.ndarray:
    """The uplift plan: each row's action with the largest predicted reduction; the ``k`` largest reductions act."""
    idx, gain = ap.best(allowed)
    act = UM.top_k(gain, k)
    return np.where(act, np.asarray(ap.actions, dtype=object)[idx], BASELINE)


def risk_plan(p_risk: np.ndarray, allowed: np.ndarray, k: int, effects: Effects | None = None) -> np.ndarray:
    """Today's plan (``serving/outreach.py``): risk x the configured effect of the coordinator action; with the
    defaults that is a personal call (the largest effect), for the ``k`` riskiest who can take a call."""
    from training.uplift import ACTION_EFFECT, COORDINATOR_ACTIONS

    eff = effects or Effects()
    coord = [a for a in ACTIONS if a in COORDINATOR_ACTIONS]
    best = max(coord, key=lambda a: (eff.of(ACTION_EFFECT[a]), a == "personal_call"))
    col = ACTIONS.index(best)
    gain = np.where(allowed[:, col], np.asarray(p_risk, float) * eff.of(ACTION_EFFECT[best]), 0.0)
    return np.where(UM.top_k(gain, k), best, BASELINE)


def evaluate(models: UpliftModels, X: pd.DataFrame, y: np.ndarray, taken: np.ndarray, e: np.ndarray,
             mu: np.ndarray | None = None, groups: np.ndarray | None = None, alpha: float = 0.05,
             n_boot: int = 1000, p_risk: np.ndarray | None = None, effects: Effects | None = None) -> dict:
    """Qini / AUUC per action (model, random, risk ranking) and the plans' prevented no-shows on randomised rows;
    with ``groups`` (patients) also the ``1 - alpha`` lower bound of uplift minus risk (paired patient bootstrap).
    The risk plan ranks by ``p_risk`` (the gate passes the promoted no-show model's: today's plan) with ``effects``,
    else by the set's own probability under "none"."""
    ap = models.predict(X)
    mu = ap.probability if mu is None else mu
    p_none = ap.probability[:, 0] if p_risk is None else np.asarray(p_risk, dtype=float)
    per_action = {}
    for k, a in enumerate(ACTIONS[1:], start=1):
        rows = np.isin(taken, [a, BASELINE])
        t = taken[rows] == a
        if t.sum() < 5 or (~t).sum() < 5:
            continue
        q = UM.qini(y[rows], t, -ap.difference()[rows, k])
        qr = UM.qini(y[rows], t, p_none[rows])
        per_action[a] = {"auuc": q.auuc, "random_auuc": q.random_auuc, "risk_auuc": qr.auuc,
                         "qini": q.qini_coefficient, "n_treated": q.n_treated, "n_control": q.n_control}
    allowed = reachable_mask(X)
    cap = max(1, int(round(CAPACITY * len(y))))
    up = uplift_plan(ap, allowed, cap)
    rk = risk_plan(p_none, allowed, cap, effects)
    up_rows = UM.prevented_dr_rows(y, taken, e, up, mu, ACTIONS)
    rk_rows = UM.prevented_dr_rows(y, taken, e, rk, mu, ACTIONS)
    gap = {}
    if groups is not None:
        diff, low = UM.paired_lower_bound(up_rows - rk_rows, groups, alpha, n_boot)
        gap = {"uplift_minus_risk": diff, "uplift_minus_risk_low": low, "alpha": alpha, "n_boot": n_boot,
               "groups": int(len(np.unique(groups)))}
    return gap | {"per_action": per_action, "capacity": cap, "rows": len(y),
            "prevented_uplift": float(up_rows.sum()),
            "prevented_risk": float(rk_rows.sum()),
            "mean_auuc": float(np.mean([v["auuc"] for v in per_action.values()])) if per_action else float("nan"),
            "mean_risk_auuc": float(np.mean([v["risk_auuc"] for v in per_action.values()])) if per_action else float("nan"),
            "mean_random_auuc": float(np.mean([v["random_auuc"] for v in per_action.values()])) if per_action else float("nan")}


#: the learner kept unless another is ahead of it on validation by a lower bound above 0 (``choose_learner``)
DEFAULT_LEARNER = "s"
#: the one-sided level of that bound
CHOICE_ALPHA = 0.10


def choose_learner(sets: dict[str, UpliftModels], X: pd.DataFrame, y: np.ndarray, taken: np.ndarray, e: np.ndarray,
                   mu: np.ndarray, groups: np.ndarray) -> tuple[str, str]:
    """The learner whose set is registered, and why in words.

    Why not simply the best point estimate: the validation rows are the validation patients' randomised appointments
    (about 5,000 at 20,000 patients), whose doubly robust estimates of four plans differ by less than their noise,
    so the best of four point estimates is mostly the luckiest (measured in docs/models.md: at 20,000 patients, seed
    11, the offset T-learner won validation 54 to the S-learner's 6 and prevented 397 no-shows against S's 535 by the
    truth). ``DEFAULT_LEARNER`` (S: it learns every action's effect from all rows, so it is the least noisy) is kept
    unless another learner's plan prevents more by a paired patient-bootstrap lower bound above 0 (``CHOICE_ALPHA``);
    then the one with the largest point estimate among those. Without the default, the largest point estimate."""
    allowed = reachable_mask(X)
    cap = max(1, int(round(CAPACITY * len(y))))
    rows = {n: UM.prevented_dr_rows(y, taken, e, uplift_plan(m.predict(X), allowed, cap), mu, ACTIONS)
            for n, m in sets.items()}
    total = {n: float(r.sum()) for n, r in rows.items()}
    if DEFAULT_LEARNER not in sets:
        best = max(total, key=lambda n: (total[n], n == "t"))
        return best, f"largest validation estimate {total[best]:.1f}"
    ahead = {}
    for n, r in rows.items():
        if n != DEFAULT_LEARNER:
            diff, low = UM.paired_lower_bound(r - rows[DEFAULT_LEARNER], groups, CHOICE_ALPHA, 500)
            if low > 0:
                ahead[n] = diff
    if not ahead:
        return DEFAULT_LEARNER, (f"the default; no other learner ahead of it on validation by a {1 - CHOICE_ALPHA:.0%} "
                                 f"lower bound above 0 (estimates: "
                                 + ", ".join(f"{n} {v:.1f}" for n, v in total.items()) + ")")
    best = max(ahead, key=lambda n: ahead[n])
    return best, f"ahead of {DEFAULT_LEARNER} on validation by {ahead[best]:.1f}, lower bound above 0"


@dataclass
class UpliftSplit:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_start: pd.Timestamp


def split(df: pd.DataFrame) -> UpliftSplit:
    """Test: randomised rows in the last ``TEST_SHARE`` of the randomised rows' span; train: every usable row ending
    ``PURGE_DAYS`` before; validation: the training rows of a fixed share of patients (by a hash of the id)."""
    ts = pd.to_datetime(df["event_timestamp"], utc=True)
    rnd = (df["source"] == "randomised").to_numpy()
    r_ts = ts[rnd]
    if len(r_ts) < 100:
        raise ValueError(f"{len(r_ts)} randomised appointments: too few to train and validate uplift models")
    start = r_ts.min() + (r_ts.max() - r_ts.min()) * (1 - TEST_SHARE)
    test = rnd & (ts >= start).to_numpy()
    train = (ts < start - pd.Timedelta(days=PURGE_DAYS)).to_numpy()
    pid = df["patient_id"].astype(str).map(lambda s: zlib.crc32(s.encode()) % 1000).to_numpy()
    val = train & (pid < VAL_SHARE * 1000)
    return UpliftSplit(train, val, test, start)


def train_uplift(settings: Settings, uf: UpliftFrame | None = None, register: bool = True,
                 shape: UpliftShape | None = None, learners: tuple[str, ...] = LEARNERS) -> dict:
    """Fit both learners, compare them on the held-out randomised rows, register the better one as ``challenger``."""
    from training import uplift_data

    shape = shape or UpliftShape()
    t0 = time.perf_counter()
    uf = uf if uf is not None else uplift_data.load(settings)
    df = uf.frame.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    sp = split(df)
    feats = list(uf.feature_columns)
    X = df[feats].astype("float32")
    y = df["label"].to_numpy(dtype=int)
    taken = df["action"].to_numpy(dtype=object)
    e = df["propensity"].to_numpy(dtype=float)
    groups = df["patient_id"].astype(str).map(lambda s: zlib.crc32(s.encode())).to_numpy()
    tr = sp.train
    Xtr = X[tr].reset_index(drop=True)
    meta_base = {"actions": list(ACTIONS), "feature_columns": feats, "categorical_columns": uf.categorical_columns,
                 "feature_service": uf.feature_service, "snapshot_hash": uf.snapshot_hash,
                 "vocabulary": uf.vocabulary, "test_start": sp.test_start.isoformat(), "capacity_share": CAPACITY,
                 "bags": BAGS}
    sets: dict[str, UpliftModels] = {}
    with logs.stage(log, "uplift: fit t-learner") as info:
        t_models = fit_t(Xtr, y[tr], taken[tr], e[tr], sp.val[tr], shape)
        sets["t"] = UpliftModels(t_models, meta_base | {"learner": "t"}, version="unregistered")
        info["train_rows"] = int(tr.sum())
    if "t_offset" in learners:
        with logs.stage(log, "uplift: fit offset t-learner"):
            sets["t_offset"] = UpliftModels(fit_t_offset(Xtr, y[tr], taken[tr], e[tr], sp.val[tr], t_models),
                                            meta_base | {"learner": "t_offset"}, version="unregistered")
    if "dr" in learners:
        with logs.stage(log, "uplift: fit dr-learner"):
            dr = fit_dr(Xtr, y[tr], taken[tr], e[tr], sp.val[tr], groups[tr], shape, t_models)
            sets["dr"] = UpliftModels(dr, meta_base | {"learner": "dr"}, version="unregistered")
    # the learner is chosen on the validation patients' randomised rows (no fit trained on them; early stopping
    # read them), never on the test window: the gate judges the chosen set there, and a choice made on the same rows
    # would carry its luck into the gate's estimate
    if "s" in learners:
        with logs.stage(log, "uplift: fit s-learner (shared model, distilled per action)"):
            sets["s"] = UpliftModels(fit_s(Xtr, y[tr], taken[tr], e[tr], sp.val[tr]),
                                     meta_base | {"learner": "s"}, version="unregistered")
    sel = sp.val & (df["source"] == "randomised").to_numpy()
    Xsel = X[sel].reset_index(drop=True)
    with logs.stage(log, "uplift: choose the learner on validation") as info:
        mu_sel = sets["t"].predict(Xsel).probability     # one outcome model for every DR estimate: fair comparisons
        chosen_on = {name: evaluate(m, Xsel, y[sel], taken[sel], e[sel], mu_sel) for name, m in sets.items()}
        info["validation_rows"] = int(sel.sum())
    Xte = X[sp.test].reset_index(drop=True)
    with logs.stage(log, "uplift: evaluate") as info:
        mu = sets["t"].predict(Xte).probability
        figures = {name: evaluate(m, Xte, y[sp.test], taken[sp.test], e[sp.test], mu) for name, m in sets.items()}
        info["test_rows"] = int(sp.test.sum())
    for name, f in figures.items():
        f["validation_prevented_uplift"] = chosen_on[name]["prevented_uplift"]
        f["validation_prevented_risk"] = chosen_on[name]["prevented_risk"]
        f["validation_rows"] = chosen_on[name]["rows"]
    chosen, why = choose_learner(sets, Xsel, y[sel], taken[sel], e[sel], mu_sel, groups[sel])
    log.info("uplift: learner %s chosen (%s)", chosen, why)
    best = sets[chosen]
    result = {"learner": chosen, "chosen_because": why, "comparison": figures, "test_start": sp.test_start.isoformat(),
              "n": {"train": int(tr.sum()), "val": int(sp.val.sum()), "test": int(sp.test.sum()),
                    "validation_randomised": int(sel.sum()),
                    "randomised_train": int((tr & (df["source"] == "randomised").to_numpy()).sum()),
                    "policy_train": int((tr & (df["source"] == "policy").to_numpy()).sum())},
              "excluded": uf.excluded, "fit_seconds": time.perf_counter() - t0}
    best.meta = best.meta | {"figures": figures[chosen], "comparison": {n: {k: v for k, v in f.items()
                                                                              if k != "per_action"}
                                                                          for n, f in figures.items()}}
    result["models"] = best
    #: every learner's set (only ``models`` is registered): the outreach benchmark scores each against its truth
    result["sets"] = sets
    if register:
        with logs.stage(log, "uplift: log to MLflow") as info:
            _register(settings, best, result)
            info["version"] = result["version"]
    return result


def _register(settings: Settings, models: UpliftModels, result: dict) -> None:
    """An MLflow run in the ``carecast-uplift`` experiment holding the set's folder, registered as a version of
    ``carecast-uplift`` with alias ``challenger``."""
    import mlflow

    from training import tracking

    client = tracking.setup(settings)
    exp = tracking.ensure_experiment(settings, EXPERIMENT, tags={"carecast.target": "uplift"})
    fig = result["comparison"][result["learner"]]
    metrics = {"prevented_uplift": fig["prevented_uplift"], "prevented_risk": fig["prevented_risk"],
               "mean_auuc": fig["mean_auuc"], "mean_risk_auuc": fig["mean_risk_auuc"],
               "mean_random_auuc": fig["mean_random_auuc"]}
    for name, f in result["comparison"].items():
        metrics[f"{name}_prevented_uplift"] = f["prevented_uplift"]
        for a, v in f["per_action"].items():
            metrics[f"{name}_auuc_{a}"] = v["auuc"]
            metrics[f"{name}_risk_auuc_{a}"] = v["risk_auuc"]
            metrics[f"{name}_random_auuc_{a}"] = v["random_auuc"]
    with mlflow.start_run(experiment_id=exp, run_name="train-uplift",
                          tags={"carecast.target": "uplift", "git_commit": tracking.git_commit(),
                                "snapshot_hash": models.meta.get("snapshot_hash", "")}) as run, \
            tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({"learner": result["learner"], "bags": BAGS, "capacity_share": CAPACITY,
                           "n_train": result["n"]["train"], "n_test": result["n"]["test"],
                           "n_randomised_train": result["n"]["randomised_train"],
                           "n_policy_train": result["n"]["policy_train"], "test_start": result["test_start"]})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)})
        folder = models.save(Path(tmp) / "uplift")
        mlflow.log_artifacts(str(folder), "uplift")
        (Path(tmp) / "evaluation.json").write_text(json.dumps({k: v for k, v in result.items() if k not in ("models", "sets")},
                                                              indent=1, default=str))
        mlflow.log_artifact(str(Path(tmp) / "evaluation.json"), "evaluation")
        source = f"{run.info.artifact_uri}/uplift"
        run_id = run.info.run_id
    try:
        client.create_registered_model(REGISTERED_MODEL, description="Uplift set: the no-show probability under "
                                       "each outreach action (training/uplift.py).")
    except Exception:  # noqa: BLE001  (it exists already)
        pass
    mv = client.create_model_version(REGISTERED_MODEL, source=source, run_id=run_id,
                                     tags={"learner": result["learner"], "test_start": result["test_start"]})
    client.set_registered_model_alias(REGISTERED_MODEL, CHALLENGER, mv.version)
    models.version, models.run_id, models.alias = str(mv.version), run_id, CHALLENGER
    result["version"], result["run_id"] = str(mv.version), run_id


def summary(r: dict) -> str:
    """The training result in words: the learners compared, the chosen one's Qini / AUUC per action."""
    lines = []
    for name, f in r["comparison"].items():
        val = (f"validation ({f['validation_rows']:,} randomised rows, where the learner is chosen): uplift plan "
               f"{f['validation_prevented_uplift']:.1f}, risk plan {f['validation_prevented_risk']:.1f}; "
               if "validation_rows" in f else "")
        lines.append(f"  {name}-learner: {val}prevented on {f['rows']:,} held-out randomised appointments at "
                     f"capacity {f['capacity']:,}: uplift plan {f['prevented_uplift']:.1f}, risk plan "
                     f"{f['prevented_risk']:.1f} (doubly robust); mean AUUC {f['mean_auuc']:.4f} vs risk ranking "
                     f"{f['mean_risk_auuc']:.4f}, random {f['mean_random_auuc']:.4f}")
    f = r["comparison"][r["learner"]]
    for a, v in f["per_action"].items():
        lines.append(f"    {a}: AUUC {v['auuc']:.4f} (risk ranking {v['risk_auuc']:.4f}, random {v['random_auuc']:.4f}); "
                     f"{v['n_treated']} treated vs {v['n_control']} none")
    ver = f"v{r['version']} -> challenger" if "version" in r else "not registered"
    head = (f"uplift: {ver}; learner {r['learner']} ({r.get('chosen_because', 'chosen on validation')}); train {r['n']['train']:,} rows "
            f"({r['n']['randomised_train']:,} randomised, {r['n']['policy_train']:,} policy with a logged propensity), "
            f"left out: " + ", ".join(f"{v:,} {k}" for k, v in r["excluded"].items() if v))
    return "\n".join([head, *lines])
