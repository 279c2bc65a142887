"""The model card: one markdown page per registered version, logged with the run."""

from __future__ import annotations

from training import metrics as M
from training.targets import TargetSpec


def _row(name: str, m: dict, keys: list[str]) -> str:
    return f"| {name} | " + " | ".join(M.fmt(m.get(k)) for k in keys) + " |"


def render(target: TargetSpec, r: dict) -> str:
    keys = ["auc", "pr_auc", "brier", "log_loss", "ece"] if target.kind == "binary" else \
        ["accuracy", "macro_f1", "log_loss", "auc", "ece"]
    lines = [
        f"# Model card: {target.registered_model} version {r.get('version', '?')}",
        "",
        "## Intended use",
        f"{target.description} Used by CareCast's outreach integrations and care coordinators to rank "
        "patients for a reminder, call or retention contact, with the reasons shown beside each score. "
        "It informs a person's or a system's outreach choice; it is not a clinical decision and must not "
        "be used to deny or ration care.",
        "",
        "## Data",
        f"- Feature service `{r['feature_service']}`, data snapshot `{r['snapshot_hash']}`, code `{r['git_commit']}`.",
        f"- Split by prediction point: {r['split']}.",
        f"- The purge of {r['purge_days']} days equals the label horizon: no training or validation "
        "label is observed after the test window starts.",
        f"- {len(r['features'])} features; categoricals are integer codes with the mapping in "
        "`carecast_model.json`.",
        "",
        "## Model",
        f"- XGBoost, depth {r['shape']['max_depth']}, {r['best_iteration'] + 1} rounds "
        f"({r['n_trees']} trees) chosen by early stopping on validation; eta {r['shape']['eta']}.",
        f"- Calibration: {r['calibration']['method']} (a={r['calibration']['a']:.4f}, b={r['calibration']['b']:.4f}), "
        "fitted on the validation window and folded into the booster; SHAP contributions add up to the "
        "calibrated log-odds.",
        f"- Explanation cost: {r['shap_rows_per_s']:,.0f} rows/s exact TreeSHAP on {r['cores']} cores.",
        "",
        "## Test-window metrics",
        "| model | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
        _row("**this model**", r["test"], keys),
    ]
    for name, m in r["baselines"].items():
        lines.append(_row(f"{name} ({m.get('label', name)})", m, keys))
    if r.get("oracle"):
        o = r["oracle"]
        lines += ["", f"Synthetic oracle (the true probabilities): {o['metric']} {o['oracle']:.4f}; this model "
                      f"{o['model']:.4f} on the same {o['n']:,} rows: **ratio {o['ratio']:.3f}**."]
        if "auc_ratio" in o:
            lines[-1] += (f" Macro one-vs-rest AUC: oracle {o['oracle_auc']:.4f}, this model {o['model_auc']:.4f}, "
                          f"ratio {o['auc_ratio']:.3f}.")
    if r.get("oracle_observable"):
        o = r["oracle_observable"]
        lines += ["", f"Oracle with the departure hidden (what the feeds can show): {o['metric']} {o['oracle']:.4f}; "
                      f"this model {o['model']:.4f}: **ratio {o['ratio']:.3f}**. A reference, not a bound: it knows "
                      "each patient's latent booking rate and hazard, but not the portal silence the model sees."]
    gap = r["subgroup_gap"]
    lines += ["", "## Subgroups (test window)"]
    if gap["group"]:
        lines.append(f"Largest {r['gap_metric']} gap: **{gap['gap']:.3f}** in {gap['group']} "
                     f"(lowest {gap['low']}, highest {gap['high']}).")
    else:
        lines.append("No group had two values large enough to compare.")
    lines += ["", "| group | value | n | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for s in r["subgroups"]:
        vals = " | ".join(M.fmt(s.get(k)) if s["scored"] else "-" for k in keys)
        lines.append(f"| {s['group']} | {s['value']} | {s['n']:,} | {vals} |")
    lines += [
        "",
        "## Caveats",
        "- Trained on this practice's own history; a change in booking, reminder or billing practice "
        "shifts the data (watch the monitoring drift reports and retrain).",
        "- Associations, not causes: e.g. reminders are sent more for longer lead times, so a feature's "
        "SHAP direction is not the effect of an intervention.",
        "- Subgroups smaller than 100 rows (or with fewer than 10 of a class) are not scored: their "
        "figures are too noisy to compare.",
        "- Synthetic data (when used) is a simulation; the oracle ratio says how much of the signal "
        "the simulation put in the features the model recovered, not how it will do on real patients.",
    ]
    return "\n".join(lines) + "\n"
