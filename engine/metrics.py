"""Metrics of the binary lens finder (1 lens, 0 non-lens) from sigmoid scores in [0, 1], and the
image-quality metrics of super-resolution (PSNR, SSIM; torch, batched, at the end).

Besides the usual threshold metrics and calibration, these are the numbers lens searches quote
(Metcalf et al. 2019, the Bologna lens-finding challenge): AUC, TPR0 (recall before the first
false positive), TPR10 (recall with fewer than ten false positives) and the TPR at a fixed
false-positive rate.

Conventions:
- At a threshold t an object is called a lens when score >= t (as in sklearn's roc_curve).
- A positive tied with a negative at a cut that must exclude that negative is NOT detected, so
  TPR0, TPR10 and TPR at fixed FPR never gain from ties (conservative). AUC (sklearn) counts a
  tied positive-negative pair as half a correct ordering.
- TPR0 and TPR10 count false positives, not a rate: they fall as the number of negatives grows,
  so compare them only between test sets of the same size and lens fraction (n_neg is returned).
- Undefined numbers are NaN, never an exception: one class present, fewer negatives than a
  false-positive rate can resolve, an empty bin.
Every returned value is a plain float, int, bool, str, None or list of them (json.dumps writes NaN
as NaN and an unreachable threshold as Infinity).
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics

NAN = float("nan")
FPR_TARGETS = {"1e-2": 1e-2, "1e-3": 1e-3}  # key suffix -> false-positive rate
ECE_BINS = 10


def as_binary(y, score):
    """(y as bool (N,), score as float (N,)), after checking that they are labels 0/1 and
    probabilities: logits passed by mistake would silently break calibration and the thresholds."""
    y, score = np.asarray(y).ravel(), np.asarray(score, dtype=float).ravel()
    if len(y) != len(score):
        raise ValueError(f"{len(y)} labels but {len(score)} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (non-lens) or 1 (lens)")
    if not np.isfinite(score).all():
        raise ValueError(f"{np.sum(~np.isfinite(score))} scores are NaN or infinite")
    if len(score) and (score.min() < 0 or score.max() > 1):
        raise ValueError("scores must be probabilities in [0, 1] (sigmoid of the logits)")
    return y.astype(bool), score


def tpr_at_fp_count(y, score, max_fp):
    """Recall with at most `max_fp` false positives: the fraction of positives scored strictly
    above the (max_fp + 1)-th highest negative. max_fp=0 is TPR0, max_fp=9 is TPR10. NaN without
    positives or with no more than max_fp negatives (no such cut exists)."""
    y, score = as_binary(y, score)
    return _recall_above(score[y], score[~y], max_fp + 1)


def _recall_above(positives, negatives, k):
    """Fraction of `positives` strictly above the k-th highest of `negatives`."""
    if len(positives) == 0 or len(negatives) < k:
        return NAN
    cut = np.partition(negatives, len(negatives) - k)[len(negatives) - k]
    return float(np.mean(positives > cut))


def tpr_at_fpr(y, score, max_fpr):
    """(tpr, threshold, defined): the largest TPR on the ROC curve's thresholds whose FPR is at
    most `max_fpr`, and the lowest threshold reaching it (call a lens when score >= threshold;
    inf when nothing can be called one). Undefined (NaN, NaN, False) with one class or with fewer
    than 1 / max_fpr negatives, where the rate cannot be resolved by a single false positive."""
    y, score = as_binary(y, score)
    n_neg = int(np.sum(~y))
    if not y.any() or n_neg * max_fpr < 1 - 1e-9:
        return NAN, NAN, False
    fpr, tpr, thresholds = metrics.roc_curve(y, score, drop_intermediate=False)
    # compare false-positive counts, not rates: 0.01 * 300 must allow exactly 3 despite rounding
    fp = np.rint(fpr * n_neg)
    last = np.flatnonzero(fp <= np.floor(max_fpr * n_neg + 1e-9))[-1]  # fp never decreases
    return float(tpr[last]), float(thresholds[last]), True


def reliability_bins(confidence, outcome, n_bins):
    """(ECE, mean confidence, mean outcome, count) in n_bins equal-width bins of confidence in
    [0, 1]; ECE = sum_b (n_b / N) |outcome_b - confidence_b|; empty bins are NaN."""
    confidence, outcome = np.asarray(confidence, float), np.asarray(outcome, float)
    which = np.minimum((confidence * n_bins).astype(int), n_bins - 1)  # confidence 1.0 -> last bin
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(which, weights=confidence, minlength=n_bins) / count
        frac = np.bincount(which, weights=outcome, minlength=n_bins) / count
    filled = count > 0
    n = max(len(confidence), 1)
    ece = float(np.sum(count[filled] * np.abs(frac[filled] - mean[filled])) / n) if len(confidence) else NAN
    return ece, mean, frac, count


def calibration_bins(y, score, n_bins=ECE_BINS):
    """Reliability of the lens probability in `n_bins` equal-width bins of score: the fraction
    of lenses vs the mean score per bin, and ECE = sum_b (n_b / N) |frac_b - mean_b|. This bins
    the positive-class score (not the top-label confidence), so the rare lens side stays visible
    under class imbalance. Empty bins are NaN. Keys: ece, bin_edges, bin_mean_score,
    bin_fraction_positive, bin_count."""
    y, score = as_binary(y, score)
    ece, mean, frac, count = reliability_bins(score, y, n_bins)
    return {"ece": ece, "bin_edges": np.linspace(0, 1, n_bins + 1).tolist(), "bin_mean_score": mean.tolist(),
            "bin_fraction_positive": frac.tolist(), "bin_count": count.tolist()}


def _bootstrap_auc(positives, negatives, n_bootstrap, seed):
    """95% interval of the AUC, resampling lenses and non-lenses separately with replacement
    (stratified: every resample keeps the class counts, so none loses a class). TPR0 and TPR10 get
    none: they hang on the few highest-scoring non-lenses, whose bootstrap is biased upwards
    (a resample leaves out the top non-lens about a third of the time)."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(len(positives), bool), np.zeros(len(negatives), bool)]
    auc = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        pos = positives[rng.integers(0, len(positives), len(positives))]
        neg = negatives[rng.integers(0, len(negatives), len(negatives))]
        auc[b] = metrics.roc_auc_score(labels, np.r_[pos, neg])
    return np.percentile(auc, [2.5, 97.5]).tolist()


def binary_metrics(y, score, threshold=0.5, n_bootstrap=200, seed=0) -> dict:
    """Everything evaluate.py stores for the lens task (see the module docstring for the
    conventions). Keys: n, n_pos, n_neg, threshold, auc, auc_ci95, average_precision, accuracy,
    precision, recall, confusion_matrix [[tn, fp], [fn, tp]] (at `threshold`), tpr0, tpr10,
    tpr10_defined, for each FPR in FPR_TARGETS tpr_at_fpr_<r>, tpr_at_fpr_<r>_defined and
    threshold_at_fpr_<r>, ece, and auc_undefined_reason (None, or why the ranking metrics are
    NaN). auc_ci95 is the 2.5-97.5 percentile of a stratified bootstrap over objects."""
    y, score = as_binary(y, score)
    if len(y) == 0:
        raise ValueError("no objects to evaluate")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    pred = score >= threshold
    tn, fp, fn, tp = (int(np.sum((y == truth) & (pred == called))) for truth, called in
                      ((0, 0), (0, 1), (1, 0), (1, 1)))
    out = {"n": len(y), "n_pos": n_pos, "n_neg": n_neg, "threshold": float(threshold),
           "accuracy": (tp + tn) / len(y), "precision": tp / (tp + fp) if tp + fp else NAN,
           "recall": tp / n_pos if n_pos else NAN, "confusion_matrix": [[tn, fp], [fn, tp]],
           "ece": calibration_bins(y, score)["ece"]}
    both = n_pos > 0 and n_neg > 0
    out["auc_undefined_reason"] = None if both else f"only one class present ({n_pos} lenses, {n_neg} non-lenses)"
    out["auc"] = float(metrics.roc_auc_score(y, score)) if both else NAN
    out["average_precision"] = float(metrics.average_precision_score(y, score)) if both else NAN
    positives, negatives = score[y], score[~y]
    out["tpr0"], out["tpr10"] = _recall_above(positives, negatives, 1), _recall_above(positives, negatives, 10)
    out["tpr10_defined"] = both and n_neg >= 10
    bootstrap = both and n_bootstrap > 0
    out["auc_ci95"] = _bootstrap_auc(positives, negatives, n_bootstrap, seed) if bootstrap else [NAN, NAN]
    for key, rate in FPR_TARGETS.items():
        tpr, cut, defined = tpr_at_fpr(y, score, rate)
        out[f"tpr_at_fpr_{key}"], out[f"threshold_at_fpr_{key}"], out[f"tpr_at_fpr_{key}_defined"] = tpr, cut, defined
    return out


def binned_recall(y, score, values, bins, threshold=0.5) -> dict:
    """Recall of the lenses (score >= threshold) in bins of a true parameter `values` (N,), e.g.
    Einstein radius (arcsec) or arc S/N. Only positives count; their NaN values are skipped and
    counted. `bins` is an edge list, or a number of equal-width bins over the positives' finite
    values; as in np.histogram the last bin includes its right edge. Keys: bin_edges, recall
    (NaN in an empty bin), n_pos, n_detected (per bin), n_nan, n_outside, threshold."""
    y, score = as_binary(y, score)
    values = np.asarray(values, dtype=float).ravel()
    if len(values) != len(y):
        raise ValueError(f"{len(values)} parameter values for {len(y)} objects")
    v, hit = values[y], score[y] >= threshold
    finite = np.isfinite(v)
    edges = np.histogram_bin_edges(v[finite], bins=bins) if np.ndim(bins) == 0 else np.asarray(bins, dtype=float)
    which = np.searchsorted(edges, v[finite], side="right") - 1
    which[v[finite] == edges[-1]] = len(edges) - 2  # right edge belongs to the last bin
    inside = (which >= 0) & (which < len(edges) - 1)
    n_pos = np.bincount(which[inside], minlength=len(edges) - 1)
    n_detected = np.bincount(which[inside], weights=hit[finite][inside], minlength=len(edges) - 1).astype(int)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(n_pos > 0, n_detected / n_pos, np.nan)
    return {"bin_edges": edges.tolist(), "recall": recall.tolist(), "n_pos": n_pos.tolist(),
            "n_detected": n_detected.tolist(), "n_nan": int(np.sum(~finite)), "n_outside": int(np.sum(~inside)),
            "threshold": float(threshold)}


# --------------------------------------------------------------------------- image quality (super-resolution)
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5  # Wang et al. (2004): an 11x11 Gaussian window of sigma 1.5 pixels


def data_range(reference):
    """(B,) max - min of each reference image (B, C, H, W): the range PSNR and SSIM are quoted on."""
    flat = reference.flatten(1)
    return flat.amax(1) - flat.amin(1)


def psnr(pred, reference, value_range=None):
    """(B,) peak signal-to-noise ratio in dB, 10 log10(R^2 / MSE) per image over all its pixels
    and bands; R the reference's own range unless given. Identical images give +inf."""
    import torch
    value_range = data_range(reference) if value_range is None else value_range
    mse = ((pred.double() - reference.double()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(value_range.double() ** 2 / mse)


def ssim(pred, reference, value_range=None):
    """(B,) mean structural similarity (Wang et al. 2004) per image, averaged over bands: Gaussian
    window sigma 1.5 (11x11), K1 0.01, K2 0.03, population (co)variances, over the pixels whose
    whole window lies inside the image; R the reference's range unless given. The same numbers as
    skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)."""
    import torch
    import torch.nn.functional as F
    value_range = data_range(reference) if value_range is None else value_range
    x, y = pred.double(), reference.double()
    B, C, H, W = x.shape
    taps = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64, device=x.device)
    g = torch.exp(-taps ** 2 / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(C, 1, -1, -1).contiguous()

    def blur(t):  # separable would be faster; 11x11 on HR cutouts is cheap enough
        return F.conv2d(t, kernel, groups=C)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    r = value_range.double().view(B, 1, 1, 1)
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)
