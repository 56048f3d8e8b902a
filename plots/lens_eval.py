"""Evaluation plots of the binary lens finder (0 non-lens, 1 lens; scores are sigmoid probabilities).

Every function writes one PNG at `png` and returns a small dict of what it plotted (plain Python
numbers, NaN where undefined) for evaluate.py's JSON summary. `colors` is two colours (non-lens,
lens), e.g. palette(colorblind_safe=True); the numbers come from engine.metrics, so the plots
and the summary agree.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from engine import metrics  # noqa: E402
from plots import microlensing_eval as ml  # noqa: E402
from plots.lens_images import to_display  # noqa: E402

CLASS_NAMES = ("nonlens", "lens")
NAN = float("nan")


def palette(colorblind_safe: bool) -> list:
    """(non-lens, lens) colours, the first two of the microlensing palette (Okabe-Ito or tab10)."""
    return ml.palette(colorblind_safe)[:2]


def _colors(colors):
    return list(palette(False) if colors is None else colors)


def _message(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def roc_pr_plot(y, score, png, colors=None) -> dict:
    """ROC on a log false-positive-rate axis (so FPR 1e-3 is readable; FPR 0 is drawn at half a
    false positive) with markers at the FPR_TARGETS, beside the precision-recall curve with AP.
    Both are drawn as steps that never credit a tie (the engine.metrics convention). Precision
    depends on the test set's lens fraction, drawn as the chance line. Returns {"auc",
    "average_precision", "tpr0", "tpr10", "tpr_at_fpr": {key: tpr}}."""
    colors = _colors(colors)
    y, score = metrics.as_binary(y, score)
    out = {"auc": NAN, "average_precision": NAN, "tpr0": NAN, "tpr10": NAN,
           "tpr_at_fpr": dict.fromkeys(metrics.FPR_TARGETS, NAN)}
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(10, 4.3))
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        _message(roc_ax, f"only one class ({n_pos} lenses, {n_neg} non-lenses): no ROC")
        _message(pr_ax, "no precision-recall curve")
        ml._save(fig, png)
        return out
    out["auc"] = float(skm.roc_auc_score(y, score))
    out["average_precision"] = float(skm.average_precision_score(y, score))
    out["tpr0"], out["tpr10"] = metrics.tpr_at_fp_count(y, score, 0), metrics.tpr_at_fp_count(y, score, 9)
    fpr, tpr, _ = skm.roc_curve(y, score, drop_intermediate=False)
    floor = 0.5 / n_neg
    roc_ax.step(np.maximum(fpr, floor), tpr, where="post", color=colors[1], lw=1.4,
                label=f"AUC {out['auc']:.3f}, TPR$_0$ {out['tpr0']:.2f}, TPR$_{{10}}$ {out['tpr10']:.2f}")
    grid = np.geomspace(floor, 1, 200)
    roc_ax.plot(grid, grid, ls="--", color="0.6", lw=0.8, label="chance")
    for (key, rate), marker in zip(metrics.FPR_TARGETS.items(), ("o", "s")):
        value, _, defined = metrics.tpr_at_fpr(y, score, rate)
        out["tpr_at_fpr"][key] = value
        if defined:
            roc_ax.axvline(rate, ls=":", color="0.5", lw=0.8)
            roc_ax.plot(rate, value, marker, color="black", ms=5, label=f"TPR {value:.3f} at FPR {key}")
    roc_ax.set_xscale("log")
    roc_ax.set(xlim=(floor, 1), ylim=(0, 1.01), xlabel=f"false positive rate ({n_neg} non-lenses)",
               ylabel=f"true positive rate ({n_pos} lenses)", title="ROC")
    roc_ax.legend(fontsize=8, loc="best")
    precision, recall, _ = skm.precision_recall_curve(y, score)
    pr_ax.step(recall, precision, where="post", color=colors[1], lw=1.4, label=f"AP {out['average_precision']:.3f}")
    pr_ax.axhline(n_pos / len(y), ls="--", color="0.6", lw=0.8, label=f"chance (lens fraction {n_pos / len(y):.2g})")
    pr_ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (completeness)", ylabel="precision (purity)",
              title="precision-recall")
    pr_ax.legend(fontsize=8, loc="lower left")
    ml._save(fig, png)
    return out


def calibration_plot(y, score, png, n_bins=metrics.ECE_BINS, colors=None) -> dict:
    """Reliability diagram of the lens probability (fraction of lenses vs mean score per bin)
    with the ECE, above the per-class score counts (log). Not microlensing's reliability_plot:
    that bins top-label confidence, which under imbalance puts nearly everything in the
    confident-non-lens bin and hides the lens side. Returns engine.metrics.calibration_bins."""
    colors = _colors(colors)
    y, score = metrics.as_binary(y, score)
    out = metrics.calibration_bins(y, score, n_bins)
    edges, frac, mean = (np.asarray(out[k], dtype=float) for k in ("bin_edges", "bin_fraction_positive",
                                                                   "bin_mean_score"))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 5.6), sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], ls="--", color="0.5", lw=0.8, label="perfect calibration")
    top.bar(edges[:-1], np.nan_to_num(frac), width=np.diff(edges), align="edge", color=colors[1],
            edgecolor="white", alpha=0.85, label="fraction of lenses")
    filled = np.isfinite(frac)
    top.plot(mean[filled], frac[filled], "o", color="black", ms=3, label="(mean score, fraction)")
    top.set(ylabel="fraction of lenses", ylim=(0, 1), title=f"reliability, ECE = {out['ece']:.3f}")
    top.legend(fontsize=8, loc="upper left")
    for truth, name in enumerate(CLASS_NAMES):
        if np.any(y == truth):
            bottom.hist(score[y == truth], edges, histtype="step", color=colors[truth], lw=1.3, label=name)
    bottom.set_yscale("log")
    bottom.set(xlabel="lens score", ylabel="objects", xlim=(0, 1))
    bottom.legend(fontsize=7)
    ml._save(fig, png)
    return out


def score_histograms(y, score, png, n_bins=50, colors=None) -> dict:
    """Score distribution per class (log counts) on the score axis and on logit(score), where the
    saturated tails near 0 and 1 that decide a search's purity are spread out (scores are clipped
    to [1e-7, 1 - 1e-7], the float32 sigmoid's resolution). Returns {"bin_edges", "counts":
    {class name: counts on the score axis}}."""
    colors = _colors(colors)
    y, score = metrics.as_binary(y, score)
    edges = np.linspace(0, 1, n_bins + 1)
    clipped = np.clip(score, 1e-7, 1 - 1e-7)
    logit = np.log(clipped / (1 - clipped))
    logit_edges = np.linspace(min(logit.min(initial=-1), -1), max(logit.max(initial=1), 1), n_bins + 1)
    out = {"bin_edges": edges.tolist(), "counts": {}}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for truth, name in enumerate(CLASS_NAMES):
        mask = y == truth
        out["counts"][name] = np.histogram(score[mask], edges)[0].tolist()
        if mask.any():
            axes[0].hist(score[mask], edges, histtype="step", color=colors[truth], lw=1.4,
                         label=f"{name} ({mask.sum()})")
            axes[1].hist(logit[mask], logit_edges, histtype="step", color=colors[truth], lw=1.4)
    for ax, xlabel in zip(axes, ("lens score", "logit(score) = log(p / (1 - p))")):
        ax.set_yscale("log")
        ax.set(xlabel=xlabel, ylabel="objects")
    if len(y):
        axes[0].legend(fontsize=8)
    fig.suptitle("score distributions per true class")
    ml._save(fig, png)
    return out


def confusion_plot(y, pred, png, colors=None) -> dict:
    """2x2 confusion matrix (rows: true class), via microlensing's confusion_matrix_plot.
    Returns {"counts", "normalized"} (row-normalised; NaN for an absent class)."""
    return ml.confusion_matrix_plot(np.asarray(y).astype(int), np.asarray(pred).astype(int), CLASS_NAMES, png,
                                    colors=_colors(colors))


def _displayable(image):
    """(C, H, W) -> to_display's input; two bands (which it cannot compose) become their mean."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        image = image[None]
    return image.mean(axis=0, keepdims=True) if image.shape[0] == 2 else image


def image_grid(images, titles, png, ncols=8, title="") -> dict:
    """Grid of (C, H, W) cutouts: one band in magma, several as lens_images.to_display's asinh
    composite (5 bands grizy -> i, r, g). NaN pixels show as 0. `titles` (one string per image,
    e.g. rank, id, score) may be None. Zero images give a PNG saying so. Returns {"n_images",
    "n_rows", "n_cols"}."""
    images = list(images)
    titles = [""] * len(images) if titles is None else list(titles)
    if len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    if not images:
        fig, ax = plt.subplots(figsize=(4, 1.6))
        _message(ax, f"{title}\nnone" if title else "none")
        ml._save(fig, png)
        return {"n_images": 0, "n_rows": 0, "n_cols": 0}
    ncols = min(ncols, len(images))
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.7 * ncols, 1.95 * nrows + (0.3 if title else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()  # the unused tail of the last row stays blank
    for ax, image, text in zip(axes.flat, images, titles):
        shown, cmap = to_display(_displayable(image))
        ax.imshow(shown, origin="lower", cmap=cmap, interpolation="nearest")
        ax.set_title(text, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    ml._save(fig, png)
    return {"n_images": len(images), "n_rows": nrows, "n_cols": ncols}


def recall_vs_parameter_plot(tables, png, colors=None, ylabel="recall", title=None) -> dict:
    """One panel per true parameter: recall of the lenses per bin, from {axis label:
    engine.metrics.binned_recall(...)}, with Wilson 68% error bars and the number of lenses per
    bin. A log x axis when the edges are positive and span more than a factor 20. (Substructure
    shows accuracy the same way: binned_recall of "correct" with every image a positive, and
    its own `ylabel` and panel `title`.) Returns {"parameters": [labels], "recall": {label:
    recall per bin}}."""
    colors = _colors(colors)
    names = list(tables)
    out = {"parameters": names, "recall": {}}
    ncols = max(1, min(3, len(names)))
    nrows = max(1, -(-len(names) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    if not names:
        _message(axes[0, 0], "no parameters")
    for ax, name in zip(axes.flat, names):
        ax.set_axis_on()
        table = tables[name]
        edges = np.asarray(table["bin_edges"], dtype=float)
        recall, n = np.asarray(table["recall"], dtype=float), np.asarray(table["n_pos"])
        out["recall"][name] = recall.tolist()
        log_x = len(edges) > 1 and edges[0] > 0 and edges[-1] / edges[0] > 20
        centres = np.sqrt(edges[:-1] * edges[1:]) if log_x else (edges[:-1] + edges[1:]) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            lo, hi = ml._wilson(np.asarray(table["n_detected"], dtype=float), n)
        ax.errorbar(centres, recall, yerr=[recall - lo, hi - recall],
                    xerr=[centres - edges[:-1], edges[1:] - centres], fmt="o", color=colors[1], capsize=2)
        for x, r, count in zip(centres, recall, n):
            if count:
                ax.annotate(f"{count}", (x, r), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
        if log_x:
            ax.set_xscale("log")
        ax.set(xlabel=name, ylabel=ylabel, ylim=(-0.05, 1.12),
               title=title or f"score >= {table['threshold']:.3g} (68% Wilson, lenses per bin)")
        ax.title.set_fontsize(9)
    ml._save(fig, png)
    return out
