"""Plots logged as artifacts: ROC, reliability curve, SHAP beeswarm (on a sample)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from training import metrics as M


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc(kind: str, y: np.ndarray, curves: dict[str, np.ndarray], classes: tuple[str, ...], out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, p in curves.items():
        if kind == "binary":
            if len(np.unique(y)) < 2:
                continue
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, label=f"{name} (AUC {M.binary_metrics(y, p)['auc']:.3f})")
        elif name == "model":
            for k, c in enumerate(classes):
                if 0 < (y == k).sum() < len(y):
                    fpr, tpr, _ = roc_curve(y == k, p[:, k])
                    ax.plot(fpr, tpr, label=f"{c} vs rest")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test window")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def reliability(kind: str, y: np.ndarray, p: np.ndarray, out: Path) -> Path:
    plt = _plt()
    if kind == "binary":
        conf, hit, label = p, y, "predicted probability"
    else:
        conf, hit, label = p.max(axis=1), (p.argmax(axis=1) == y).astype(int), "confidence of the top channel"
    table = M.reliability(hit, conf)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.plot(table["mean_p"], table["rate"], "o-", label=f"model (ECE {M.ece(y, p):.3f})")
    for _, r in table.iterrows():
        ax.annotate(f"{int(r['n'])}", (r["mean_p"], r["rate"]), fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set(xlabel=label, ylabel="observed rate", title="Reliability, test window", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def beeswarm(booster, X: pd.DataFrame, classes: tuple[str, ...], out_dir: Path, rows: int = 1000,
             seed: int = 7) -> list[Path]:
    """SHAP summary from XGBoost's own TreeSHAP (identical to shap.TreeExplainer), drawn by shap."""
    import shap

    from training.model import matrix

    plt = _plt()
    sample = X.sample(min(rows, len(X)), random_state=seed) if len(X) else X
    contribs = booster.predict(matrix(sample), pred_contribs=True)
    paths = []
    if contribs.ndim == 2:
        per_class = {"": contribs[:, :-1]}
    else:
        per_class = {f"_{c}": contribs[:, k, :-1] for k, c in enumerate(classes)}
    for suffix, values in per_class.items():
        shap.summary_plot(values, sample, show=False, max_display=15, plot_size=(7, 6))
        fig = plt.gcf()
        fig.suptitle(f"SHAP (log-odds){' ' + suffix[1:] if suffix else ''}", fontsize=10)
        path = out_dir / f"shap_beeswarm{suffix}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
