"""The synthetic world's outreach figures (docs/synthetic-data.md): no-show rate, oracle AUC, actions taken, reason
shares, each action's mean effect (overall and among the riskiest tenth), and the oracle's plan vs a risk-ranked call
plan at 10% capacity over every attended or missed appointment.

    PYTHONPATH=. .venv/bin/python scripts/synth_outreach_figures.py 2000 /tmp/synth-outreach
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from features.synth.generate import SynthConfig, generate


def main() -> None:
    n, out = int(sys.argv[1]), Path(sys.argv[2])
    s = generate(SynthConfig(patients=n, seed=7, start=dt.date(2021, 1, 1), end=dt.date(2026, 6, 30),
                             today=dt.date(2026, 6, 1)), out)
    print(s.describe())
    v = pd.read_parquet(out / "visits.parquet")
    t = pd.read_parquet(out / "truth/noshow.parquet")
    o = pd.read_parquet(out / "truth/outreach.parquet")
    d = v.merge(t, on="appointment_id").merge(o, on="appointment_id")
    d = d[d.status.isin(["completed", "no_show"])]
    y = (d.status == "no_show").to_numpy()
    print(f"no-show rate {y.mean():.4f}, oracle AUC {roc_auc_score(y, d.p_no_show):.4f}")
    print("actions", d.outreach_action.value_counts(dropna=False).to_dict())
    print(f"randomised {d.outreach_randomised.mean():.3f}, propensity known {d.outreach_propensity.notna().mean():.3f}")
    print("reasons", o.reason.value_counts(normalize=True).round(3).to_dict())
    acts = [c for c in o.columns if c.startswith("p_") and c != "p_none"]
    top = d.p_none >= d.p_none.quantile(0.9)
    for a in acts:
        g = d.p_none - d[a]
        lo = (np.log(d[a] / (1 - d[a])) - np.log(d.p_none / (1 - d.p_none))).mean()
        print(f"{a}: mean reduction {g.mean():.4f}, riskiest tenth {g[top].mean():.4f}, mean log-odds {lo:.3f}")
    gains = np.stack([d.p_none - d[a] for a in acts], 1).max(1)
    k = int(0.1 * len(d))
    call = (d.p_none - d.p_personal_call).to_numpy()[np.argsort(-d.p_none.to_numpy())[:k]].sum()
    print(f"10% capacity: oracle prevents {np.sort(gains)[::-1][:k].sum():.1f}, a call for the riskiest {call:.1f}")


if __name__ == "__main__":
    main()
