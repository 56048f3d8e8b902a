"""The plot of evaluate.py --compare: each run's headline metric against its training time."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from plots.microlensing_eval import _save  # noqa: E402


def metric_vs_time_plot(rows, metric: str, png) -> dict:
    """Scatter of `metric` against training minutes, one labelled point per run (rows as
    evaluate.py --compare builds them: run, model, train_minutes, parameters, metric). Runs
    without a finite value are listed but not drawn. Returns {"runs", "minutes", metric}."""
    minutes = np.array([float(r.get("train_minutes", np.nan)) for r in rows])
    values = np.array([float(r.get(metric, np.nan)) for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ok = np.isfinite(minutes) & np.isfinite(values)
    sizes = np.array([float(r.get("parameters", 1e6)) for r in rows])
    ax.scatter(minutes[ok], values[ok], s=20 + 60 * np.sqrt(sizes[ok] / max(sizes.max(), 1)), color="tab:blue",
               alpha=0.8, edgecolor="k", lw=0.5)
    for r, x, v, good in zip(rows, minutes, values, ok):
        if good:
            ax.annotate(str(r.get("model", r["run"])), (x, v), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel="training time (minutes, sum over epochs)", ylabel=metric.replace("_", " "),
           title=f"{metric.replace('_', ' ')} vs training time ({int(ok.sum())} runs; marker area ~ parameters)")
    if ok.any() and minutes[ok].max() / max(minutes[ok].min(), 1e-9) > 30:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    _save(fig, png)
    return {"runs": [r["run"] for r in rows], "minutes": minutes.tolist(), metric: values.tolist()}
