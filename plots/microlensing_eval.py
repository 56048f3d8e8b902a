"""Evaluation plots and metrics of the 3-class microlensing classifier (0 flat, 1 PSPL, 2 binary).

Every function writes one PNG at `path` and returns the numbers it plotted as plain Python
floats, lists and dicts (NaN where undefined), so evaluate.py can store them in its JSON summary.
Times are in days since the season start; probabilities are (N, 3) rows summing to 1.
"""
from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn import metrics  # noqa: E402

from engine.metrics import reliability_bins  # noqa: E402

DEFAULT_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
COLORBLIND_COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7"]  # Okabe-Ito blue, orange, bluish green, purple
DPI = 120
NAN = float("nan")


def palette(colorblind_safe: bool) -> list:
    """One colour per class: Okabe-Ito when `colorblind_safe`, else matplotlib's tab10."""
    return list(COLORBLIND_COLORS if colorblind_safe else DEFAULT_COLORS)


def _colors(colors) -> list:
    return list(DEFAULT_COLORS if colors is None else colors)


def _floats(values) -> list:
    return [float(v) for v in np.asarray(values, dtype=float).ravel()]


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)  # evaluate.py makes dozens of figures: free each one


def confusion_matrix_plot(y_true, y_pred, class_names, path, colors=None) -> dict:
    """Heat map of the row-normalised confusion matrix (rows: true class), each cell annotated
    with its count and fraction. Returns {"counts", "normalized"}; a row of a class absent from
    y_true is NaN."""
    colors, k = _colors(colors), len(class_names)
    counts = metrics.confusion_matrix(y_true, y_pred, labels=np.arange(k))
    rows = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalized = np.where(rows > 0, counts / rows, np.nan)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    im = ax.imshow(normalized, cmap="cividis", vmin=0.0, vmax=1.0)  # perceptually uniform, CVD-safe
    for (i, j), v in np.ndenumerate(normalized):
        ax.text(j, i, f"{counts[i, j]}\n{v:.2f}", ha="center", va="center", fontsize=9,
                color="black" if np.isfinite(v) and v > 0.6 else "white")  # readable on cividis
    ax.set_xticks(range(k), class_names)
    ax.set_yticks(range(k), class_names)
    for c, (xt, yt) in enumerate(zip(ax.get_xticklabels(), ax.get_yticklabels())):
        xt.set_color(colors[c]), yt.set_color(colors[c])
    ax.set(xlabel="predicted class", ylabel="true class")
    fig.colorbar(im, ax=ax, label="fraction of true class")
    _save(fig, path)
    return {"counts": counts.tolist(), "normalized": normalized.tolist()}


def _roc(positive, score):
    """(fpr, tpr, auc) of one binary problem; ties in `score` form one threshold, as in sklearn."""
    order = np.argsort(-score, kind="mergesort")
    score, positive = score[order], positive[order]
    ends = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # last index of each distinct score
    tps = np.cumsum(positive)[ends]
    fps = ends + 1 - tps
    tpr, fpr = np.r_[0.0, tps / tps[-1]], np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def _ci95(samples):
    """2.5 and 97.5 percentiles over axis 0 ignoring NaN (resamples that lost a class); NaN if none."""
    samples = np.asarray(samples, dtype=float)
    if len(samples) == 0:
        return np.full((2,) + samples.shape[1:], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, which is what we want
        return np.nanpercentile(samples, [2.5, 97.5], axis=0)


def roc_plot(y_true, probs, class_names, path, n_bootstrap=200, seed=0, colors=None) -> dict:
    """One-vs-rest ROC per class with AUC and a 95% bootstrap CI (events resampled with
    replacement; the band is the 2.5-97.5 percentile of bootstrapped TPR on a common FPR grid),
    plus the macro AUC (mean over classes present). A class absent from y_true (or the only
    class) gets NaN. Returns {"auc", "auc_ci", "macro_auc", "macro_auc_ci"}."""
    colors, k = _colors(colors), len(class_names)
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=float)
    n, grid = len(y_true), np.linspace(0.0, 1.0, 101)
    onehot = y_true[:, None] == np.arange(k)  # (N, K)
    valid = onehot.any(axis=0) & ~onehot.all(axis=0)  # both positives and negatives exist
    resamples = np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))
    boot_auc = np.full((n_bootstrap, k), np.nan)
    boot_tpr = np.full((n_bootstrap, k, len(grid)), np.nan)
    for b, idx in enumerate(resamples):
        for c in np.flatnonzero(valid):
            pos = onehot[idx, c]
            if pos.all() or not pos.any():
                continue  # this resample lost the class: leave NaN
            fpr, tpr, boot_auc[b, c] = _roc(pos, probs[idx, c])
            boot_tpr[b, c] = np.interp(grid, fpr, tpr)
    out = {"auc": {}, "auc_ci": {}}
    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=0.8, label="chance")
    for c, name in enumerate(class_names):
        fpr, tpr, auc = _roc(onehot[:, c], probs[:, c]) if valid[c] else (None, None, NAN)
        (lo, hi), band = _ci95(boot_auc[:, c]), _ci95(boot_tpr[:, c])
        out["auc"][name], out["auc_ci"][name] = auc, [float(lo), float(hi)]
        if valid[c]:
            ax.fill_between(grid, band[0], band[1], color=colors[c], alpha=0.2, lw=0)
            ax.plot(fpr, tpr, color=colors[c], lw=1.4, label=f"{name}: AUC {auc:.3f} [{lo:.3f}, {hi:.3f}]")
    # macro over the classes present; a resample that lost one of them gives NaN and is skipped
    macro = boot_auc[:, valid].mean(axis=1) if valid.any() else np.full(n_bootstrap, np.nan)
    out["macro_auc"] = float(np.nanmean(list(out["auc"].values()))) if valid.any() else NAN
    out["macro_auc_ci"] = _floats(_ci95(macro))
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title=f"one-vs-rest ROC, macro AUC {out['macro_auc']:.3f}")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    return out


def reliability_plot(y_true, probs, path, n_bins=15, colors=None) -> dict:
    """Top-label reliability diagram: accuracy vs mean confidence in `n_bins` equal-width bins of
    confidence, with the confidence histogram below. ECE = sum_b (n_b / N) |acc_b - conf_b|.
    Empty bins are NaN. Returns {"ece", "bin_confidence", "bin_accuracy", "bin_count"}."""
    colors = _colors(colors)
    confidence, predicted = np.max(probs, axis=1), np.argmax(probs, axis=1)
    correct = (predicted == np.asarray(y_true)).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece, conf, acc, count = reliability_bins(confidence, correct, n_bins)
    filled = count > 0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 5.6), sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], ls="--", color="0.5", lw=0.8, label="perfect calibration")
    top.bar(edges[:-1], np.nan_to_num(acc), width=1 / n_bins, align="edge", color=colors[0],
            edgecolor="white", alpha=0.85, label="accuracy")
    top.plot(conf[filled], acc[filled], "o", color=colors[1], ms=3, label="(mean confidence, accuracy)")
    top.set(ylabel="accuracy", ylim=(0, 1), title=f"reliability (top label), ECE = {ece:.3f}")
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(edges[:-1], count, width=1 / n_bins, align="edge", color="0.5", edgecolor="white")
    bottom.set(xlabel="confidence (max probability)", ylabel="events", xlim=(0, 1))
    _save(fig, path)
    return {"ece": ece, "bin_confidence": _floats(conf), "bin_accuracy": _floats(acc), "bin_count": count.tolist()}


def per_class_metrics_plot(y_true, y_pred, class_names, path, colors=None) -> dict:
    """Grouped bars of precision, recall and F1 per class (an undefined ratio, e.g. precision of a
    class never predicted, is 0 as in sklearn's default). Returns {name: {"precision", "recall",
    "f1", "support"}, "macro": ...}, macro being the unweighted class mean and the total support."""
    colors, k = _colors(colors), len(class_names)
    p, r, f, s = metrics.precision_recall_fscore_support(y_true, y_pred, labels=np.arange(k), zero_division=0)
    width = 0.8 / k
    out = {name: {"precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]), "support": int(s[c])}
           for c, name in enumerate(class_names)}
    out["macro"] = {"precision": float(p.mean()), "recall": float(r.mean()), "f1": float(f.mean()),
                    "support": int(s.sum())}
    fig, ax = plt.subplots(figsize=(6, 4))
    for c, name in enumerate(class_names):
        x = np.arange(3) + (c - (k - 1) / 2) * width
        bars = ax.bar(x, [p[c], r[c], f[c]], width, color=colors[c], label=f"{name} (n={s[c]})")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(3), ["precision", "recall", "F1"])
    ax.set(ylim=(0, 1.1), ylabel="score", title="per-class metrics")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    return out


def _wilson(k, n, z=1.0):
    """Wilson score interval of k successes in n trials; z=1 gives the 68% interval."""
    centre, half = (k + z * z / 2) / (n + z * z), z / (n + z * z) * np.sqrt(k * (n - k) / n + z * z / 4)
    return centre - half, centre + half


def u0_dependency_plot(u0, y_true, y_pred, path, target_class=2, n_bins=10, colors=None) -> dict:
    """Recall of class `target_class` vs impact parameter u0 (Einstein radii), in log-spaced bins
    between the smallest and largest u0 of those events, with Wilson 68% error bars. Empty bins
    are NaN. Returns {"bin_edges", "accuracy", "count", "lower", "upper"}; all empty (and a
    "no events" PNG) if fewer than 2 such events."""
    colors = _colors(colors)
    y_true, y_pred, u0 = np.asarray(y_true), np.asarray(y_pred), np.asarray(u0, dtype=float)
    sel = (y_true == target_class) & (u0 > 0)  # log bins need u0 > 0
    if sel.sum() < 2:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.text(0.5, 0.5, f"no events of class {target_class}", ha="center", va="center")
        ax.set_axis_off()
        _save(fig, path)
        return {"bin_edges": [], "accuracy": [], "count": [], "lower": [], "upper": []}
    u, hit = u0[sel], (y_pred[sel] == target_class)
    edges = np.geomspace(u.min(), max(u.max(), u.min() * 1.001), n_bins + 1)
    which = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, n_bins - 1)  # max u0 -> last bin
    count = np.bincount(which, minlength=n_bins)
    hits = np.bincount(which, weights=hit, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = hits / count
        lo, hi = _wilson(hits, count)
    centres = np.sqrt(edges[:-1] * edges[1:])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(centres, acc, yerr=[acc - lo, hi - acc], fmt="o-", color=colors[target_class], capsize=3)
    for x, a, n in zip(centres, acc, count):
        if n:
            ax.annotate(f"{n}", (x, a), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7)
    ax.set_xscale("log")
    ax.set(xlabel="impact parameter $u_0$ (Einstein radii)", ylabel="recall", ylim=(-0.05, 1.12),
           title=f"recall of class {target_class} vs $u_0$ (68% Wilson, n per bin)")
    _save(fig, path)
    return {"bin_edges": _floats(edges), "accuracy": _floats(acc), "count": count.tolist(),
            "lower": _floats(lo), "upper": _floats(hi)}


def dchi2_recall_plot(dchi2, model_correct, oracle_correct, edges, labels, path, colors=None) -> dict:
    """Binary recall of the model and of the true-model oracle in the Δχ² bins given by `edges`
    (Δχ² = χ²(best PSPL fit) − χ²(true model)), Wilson 68% error bars, events per bin marked;
    below, the Δχ² histogram of the binary events. Returns {"labels", "count", "model", "oracle"}."""
    colors = _colors(colors)
    dchi2 = np.asarray(dchi2, dtype=float)
    which = np.digitize(dchi2, edges, right=True)
    nb = len(labels)
    count = np.bincount(which, minlength=nb)[:nb]
    out = {"labels": list(labels), "count": count.tolist()}
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(6.5, 5.5), height_ratios=(2, 1), sharex=True)
    x = np.arange(nb)
    for name, correct, color, offset in (("model", model_correct, colors[2], -0.06),
                                         ("oracle", oracle_correct, "0.4", 0.06)):
        hits = np.bincount(which, weights=np.asarray(correct, float), minlength=nb)[:nb]
        with np.errstate(invalid="ignore", divide="ignore"):
            rec = hits / count
            lo, hi = _wilson(hits, count)
        ax.errorbar(x + offset, rec, yerr=[rec - lo, hi - rec], fmt="o-" if name == "model" else "s--",
                    color=color, capsize=3, label=name)
        out[name] = _floats(rec)
    for xi, n in zip(x, count):
        ax.annotate(f"n={n}", (xi, 1.04), ha="center", fontsize=7)
    ax.set(ylabel="binary recall", ylim=(-0.05, 1.12), title="binary recall vs Δχ² of the best PSPL fit")
    ax.legend(loc="lower right", fontsize=8)
    finite = dchi2[np.isfinite(dchi2)]
    hx.bar(x, count, color=colors[2], alpha=0.6)
    hx.set(xticks=x, xticklabels=labels, xlabel="Δχ² = χ²(PSPL fit) − χ²(true)", ylabel="binaries")
    if len(finite):
        hx.set_title(f"median Δχ² {np.median(finite):.0f}", fontsize=8)
    _save(fig, path)
    return out


def _ks(a, b) -> dict:
    if len(a) < 2 or len(b) < 2:
        return {"statistic": NAN, "pvalue": NAN}
    result = stats.ks_2samp(a, b)
    return {"statistic": float(result.statistic), "pvalue": float(result.pvalue)}


def _t0_panel(ax, bins, groups, title):
    """Step histograms (density) of (values, label, colour) groups on one axis."""
    for values, label, color in groups:
        if len(values):  # an empty group would make density=True divide by zero
            ax.hist(values, bins, density=True, histtype="step", color=color, lw=1.5, label=f"{label} ({len(values)})")
    ax.set(title=title, xlabel="$t_0$ (days since season start)")
    if any(len(values) for values, _, _ in groups):
        ax.legend(fontsize=8)


def t0_check_plot(t0, y_true, y_pred, class_names, path, season_days=72.0, colors=None) -> dict:
    """Temporal-bias check on the peak time t0 (days): for the lensed classes (1, 2), KS test of
    t0 of correctly vs wrongly classified events; and KS of t0 of class 1 vs class 2, which the
    simulator draws from one distribution. NaN where a group has < 2 events.
    Returns {"ks_correct_vs_wrong": {name: {...}}, "ks_pspl_vs_binary": {...}}."""
    colors = _colors(colors)
    t0, y_true, y_pred = np.asarray(t0, dtype=float), np.asarray(y_true), np.asarray(y_pred)
    bins = np.linspace(min(0.0, t0.min(initial=0.0)), max(season_days, t0.max(initial=season_days)), 25)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharex=True)
    out = {"ks_correct_vs_wrong": {}}
    for ax, c in zip(axes, (1, 2)):
        right, wrong = t0[(y_true == c) & (y_pred == c)], t0[(y_true == c) & (y_pred != c)]
        ks = _ks(right, wrong) | {"n_correct": len(right), "n_wrong": len(wrong)}
        out["ks_correct_vs_wrong"][class_names[c]] = ks
        _t0_panel(ax, bins, [(right, "correct", colors[c]), (wrong, "wrong", "0.5")],
                  f"{class_names[c]}: correct vs wrong, KS p = {ks['pvalue']:.3g}")
    pspl, binary = t0[y_true == 1], t0[y_true == 2]
    out["ks_pspl_vs_binary"] = ks = _ks(pspl, binary)
    _t0_panel(axes[2], bins, [(pspl, class_names[1], colors[1]), (binary, class_names[2], colors[2])],
              f"{class_names[1]} vs {class_names[2]}, KS p = {ks['pvalue']:.3g}")
    axes[0].set_ylabel("density")
    _save(fig, path)
    return out


def early_detection_plot(fractions, accuracy, path, per_class=None, class_names=None, colors=None) -> dict:
    """Accuracy vs the fraction of the season observed (plotted in %), with optional per-class
    recall curves (`per_class`: name -> list over fractions). Returns the plotted values."""
    colors = _colors(colors)
    per_class = {name: _floats(v) for name, v in (per_class or {}).items()}
    names = list(class_names) if class_names is not None else list(per_class)
    x = 100 * np.asarray(fractions, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, accuracy, "o-", color="black", lw=1.8, label="accuracy")
    for name, recall in per_class.items():
        color = colors[names.index(name)] if name in names else None
        ax.plot(x, recall, "s--", ms=3, lw=1, color=color, label=f"recall {name}")
    ax.set(xlabel="season observed (%)", ylabel="accuracy / recall", ylim=(0, 1.02), title="early detection")
    ax.legend(fontsize=8)
    _save(fig, path)
    return {"fractions": _floats(fractions), "accuracy": _floats(accuracy), "per_class": per_class}


def evolution_plot(time, mag, mag_err, fractions, probs, true_class, class_names, path, title="", colors=None) -> dict:
    """One event as it is observed: (a) light curve (mag, NaN epochs skipped), (b) class
    probabilities and (c) confidence coloured by predicted class, each at time fraction * max(time)
    (days). Returns {"time_of_first_correct"}: the earliest time (days) from which the prediction
    is the true class at every later fraction, or None if it never settles there."""
    colors = _colors(colors)
    time, mag, mag_err = (np.asarray(a, dtype=float) for a in (time, mag, mag_err))
    order = np.argsort(fractions)
    probs = np.asarray(probs, dtype=float)[order]  # (F, 3)
    t_frac = np.asarray(fractions, dtype=float)[order] * np.nanmax(time)
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != true_class)
    first = (wrong[-1] + 1) if len(wrong) else 0  # first index after the last mistake
    first_time = float(t_frac[first]) if first < len(t_frac) else None
    fig, axes = plt.subplots(3, 1, figsize=(7, 7.5), sharex=True, gridspec_kw={"height_ratios": [2, 1.3, 1]})
    ok = np.isfinite(mag)
    axes[0].errorbar(time[ok], mag[ok], mag_err[ok], fmt=".", ms=2, elinewidth=0.4, color="0.3", ecolor="0.75")
    axes[0].invert_yaxis()
    axes[0].set(ylabel="magnitude", title=title or f"true class: {class_names[true_class]}")
    for c, name in enumerate(class_names):
        axes[1].plot(t_frac, probs[:, c], "o-", ms=3, color=colors[c], label=name)
    axes[1].set(ylabel="probability", ylim=(0, 1.02))
    axes[1].legend(fontsize=8, ncol=len(class_names))
    axes[2].plot(t_frac, probs.max(axis=1), color="0.7", lw=1, zorder=1)
    axes[2].scatter(t_frac, probs.max(axis=1), c=[colors[p] for p in pred], s=18, zorder=2)
    axes[2].axhline(1 / len(class_names), ls=":", color="0.5", lw=0.8)  # chance level
    axes[2].set(ylabel="confidence\n(colour: predicted)", ylim=(0, 1.02), xlabel="time (days since season start)")
    if first_time is not None:
        for ax in axes:
            ax.axvline(first_time, ls="--", color="0.4", lw=0.8)
    _save(fig, path)
    return {"time_of_first_correct": first_time}


def example_grid(time, mags, mag_errs, y_true, y_pred, probs, class_names, path, n_per_class=3, seed=0,
                 colors=None) -> None:
    """Grid of example light curves: one row per true class, `n_per_class` events drawn at random
    (seeded). Titles "true X / pred Y (p=...)" in green if correct, red if wrong. mags and
    mag_errs are (N, L) with NaN where not observed; time is (L,) days."""
    colors, k, rng = _colors(colors), len(class_names), np.random.default_rng(seed)
    time, y_true, y_pred = np.asarray(time, dtype=float), np.asarray(y_true), np.asarray(y_pred)
    fig, axes = plt.subplots(k, n_per_class, figsize=(4 * n_per_class, 2.8 * k), squeeze=False, sharex=True)
    for c in range(k):
        members = np.flatnonzero(y_true == c)
        picks = rng.choice(members, size=min(n_per_class, len(members)), replace=False)
        for ax in axes[c, len(picks):]:
            ax.set_axis_off()  # fewer events of this class than columns
        for ax, i in zip(axes[c], picks):
            ok = np.isfinite(mags[i])
            ax.errorbar(time[ok], mags[i][ok], mag_errs[i][ok], fmt=".", ms=2, elinewidth=0.4,
                        color=colors[c], ecolor="0.8")
            ax.invert_yaxis()
            ax.set_title(f"true {class_names[c]} / pred {class_names[y_pred[i]]} (p={probs[i][y_pred[i]]:.2f})",
                         fontsize=9, color="green" if y_pred[i] == c else "red")
    fig.supxlabel("time (days since season start)")
    fig.supylabel("magnitude")
    _save(fig, path)
