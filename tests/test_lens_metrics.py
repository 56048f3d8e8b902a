"""Lens-finding metrics (engine.metrics) on hand-computed examples, and the lens evaluation plots."""
import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from engine import metrics
from plots import lens_eval


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, path


def as_json(result):
    """Round-trip through JSON, as evaluate.py will store it."""
    return json.loads(json.dumps(result))


def finder_output(n=2000, lens_fraction=0.1, signal=2.0, seed=0):
    """Imbalanced labels and sigmoid scores that lean towards the truth."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < lens_fraction).astype(int)
    logit = rng.normal(size=n) + signal * (2 * y - 1)
    return y, 1 / (1 + np.exp(-logit))


def tied_example():
    """Six lenses, twelve non-lenses. The highest non-lens (0.8) ties two lenses; the 10th
    highest non-lens (0.3) ties one lens."""
    positives = [0.95, 0.9, 0.8, 0.8, 0.3, 0.01]
    negatives = [0.8, 0.7, 0.6, 0.5, 0.5, 0.4, 0.35, 0.32, 0.31, 0.3, 0.1, 0.05]
    return np.r_[np.ones(6, int), np.zeros(12, int)], np.r_[positives, negatives]


def test_tpr0_tpr10_by_hand():
    y, score = tied_example()
    out = as_json(metrics.binary_metrics(y, score, n_bootstrap=20))
    assert out["tpr0"] == pytest.approx(2 / 6)  # 0.95, 0.9; the lenses tied at 0.8 do not count
    assert out["tpr10"] == pytest.approx(4 / 6)  # above 0.3: nine false positives, the tied 0.3 lens lost
    assert out["tpr10_defined"] and out["n_pos"] == 6 and out["n_neg"] == 12 and out["n"] == 18
    assert metrics.tpr_at_fp_count(y, score, 0) == out["tpr0"]
    assert metrics.tpr_at_fp_count(y, score, 9) == out["tpr10"]
    assert math.isnan(metrics.tpr_at_fp_count(y, score, 12))  # no 13th non-lens to cut at


def test_tpr10_undefined_with_few_negatives():
    out = metrics.binary_metrics([1, 1, 0, 0, 0], [0.9, 0.2, 0.5, 0.1, 0.0], n_bootstrap=10)
    assert out["tpr0"] == pytest.approx(0.5)
    assert math.isnan(out["tpr10"]) and not out["tpr10_defined"]


def fpr_example():
    """200 non-lenses: two high ones (0.9, 0.7) and 198 spread over [0, 0.5]; seven lenses, one
    of them tied with the 3rd-highest non-lens at exactly 0.5."""
    negatives = np.r_[0.9, 0.7, np.linspace(0, 0.5, 198)]
    positives = np.array([0.95, 0.85, 0.75, 0.65, 0.6, 0.5, 0.2])
    return np.r_[np.ones(7, int), np.zeros(200, int)], np.r_[positives, negatives]


def test_tpr_at_fpr_by_hand():
    y, score = fpr_example()
    # FPR <= 1e-2 of 200 non-lenses: at most 2 false positives, so the cut lies above the 3rd (0.5)
    assert metrics.tpr_at_fpr(y, score, 1e-2) == (pytest.approx(5 / 7), 0.6, True)
    assert metrics.tpr_at_fpr(y, score, 5e-3) == (pytest.approx(3 / 7), 0.75, True)  # 1 false positive
    assert metrics.tpr_at_fpr(y, score, 1 / 300)[2] is False  # 200 < 300 non-lenses
    out = as_json(metrics.binary_metrics(y, score, n_bootstrap=0))
    assert out["tpr_at_fpr_1e-2"] == pytest.approx(5 / 7) and out["tpr_at_fpr_1e-2_defined"]
    assert out["threshold_at_fpr_1e-2"] == 0.6
    assert math.isnan(out["tpr_at_fpr_1e-3"]) and out["tpr_at_fpr_1e-3_defined"] is False


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tpr_at_fpr_is_recall_above_the_next_negative(seed):
    """On the ROC thresholds, TPR at FPR r equals the recall strictly above the
    (floor(r n_neg) + 1)-th highest non-lens, ties included (scores rounded to 2 decimals)."""
    y, score = finder_output(n=3000, seed=seed)
    score = np.round(score, 2)
    n_neg = int(np.sum(y == 0))
    for rate in (1e-2, 3e-3, 1e-3):
        tpr, cut, defined = metrics.tpr_at_fpr(y, score, rate)
        assert defined and tpr == pytest.approx(metrics.tpr_at_fp_count(y, score, int(rate * n_neg)))
        assert np.sum((score >= cut) & (y == 0)) <= rate * n_neg
        assert np.mean(score[y == 1] >= cut) == pytest.approx(tpr)  # the threshold reproduces it


def test_auc_ap_and_threshold_metrics_match_sklearn():
    y, score = finder_output()
    out = as_json(metrics.binary_metrics(y, score, threshold=0.6, n_bootstrap=100, seed=3))
    assert out["auc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
    assert out["average_precision"] == pytest.approx(skm.average_precision_score(y, score), abs=1e-12)
    pred = score >= 0.6
    assert out["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert out["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert out["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    lo, hi = out["auc_ci95"]
    assert lo < out["auc"] < hi and hi - lo < 0.1
    assert out["auc_ci95"] == as_json(metrics.binary_metrics(y, score, 0.6, 100, seed=3))["auc_ci95"]  # seeded
    assert out["auc_undefined_reason"] is None


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_gives_nan_not_an_exception(label, tmp_path):
    y, score = np.full(50, label), np.linspace(0, 1, 50)
    out = as_json(metrics.binary_metrics(y, score, n_bootstrap=20))
    for key in ("auc", "average_precision", "tpr0", "tpr10", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3"):
        assert math.isnan(out[key]), key
    assert all(math.isnan(v) for v in out["auc_ci95"])
    assert "one class" in out["auc_undefined_reason"] and not out["tpr_at_fpr_1e-2_defined"]
    assert out["accuracy"] == pytest.approx(np.mean((score >= 0.5) == label))
    assert math.isnan(out["recall"]) == (label == 0)
    result = lens_eval.roc_pr_plot(y, score, tmp_path / "roc.png")
    assert_png(tmp_path / "roc.png")
    assert math.isnan(result["auc"])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="probabilities"):
        metrics.binary_metrics([0, 1], [-2.0, 3.0])  # logits, not sigmoid scores
    with pytest.raises(ValueError, match="NaN"):
        metrics.binary_metrics([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="labels"):
        metrics.binary_metrics([0, 2], [0.1, 0.2])


def test_ece_small_when_calibrated_large_when_not():
    rng = np.random.default_rng(0)
    score = rng.random(20000)
    y = (rng.random(20000) < score).astype(int)  # P(lens | score) = score
    assert metrics.binary_metrics(y, score, n_bootstrap=0)["ece"] < 0.02
    overconfident = metrics.calibration_bins(y, score ** 3)
    assert overconfident["ece"] > 0.1 and sum(overconfident["bin_count"]) == 20000
    count, frac, mean = (np.asarray(overconfident[k], float) for k in ("bin_count", "bin_fraction_positive",
                                                                         "bin_mean_score"))
    assert overconfident["ece"] == pytest.approx(np.sum(count / 20000 * np.abs(frac - mean)))


def test_binned_recall_by_hand():
    # lenses: theta_E 0.5 (missed), 0.7 (found) | 1.2 (found), 1.5 (missed) | 2.0 (found) | NaN
    y = [1, 1, 1, 1, 1, 1, 0, 0]
    score = [0.1, 0.9, 0.6, 0.4, 0.9, 0.9, 0.99, 0.0]
    theta_e = [0.5, 0.7, 1.2, 1.5, 2.0, np.nan, 1.0, np.nan]  # the non-lenses never count
    out = as_json(metrics.binned_recall(y, score, theta_e, [0, 1, 2, 3], threshold=0.5))
    assert out["n_pos"] == [2, 2, 1] and out["n_detected"] == [1, 1, 1]
    assert out["recall"] == pytest.approx([0.5, 0.5, 1.0])
    assert out["n_nan"] == 1 and out["n_outside"] == 0 and out["bin_edges"] == [0, 1, 2, 3]
    last = metrics.binned_recall(y, score, theta_e, [0, 1, 2])
    assert last["n_pos"] == [2, 3] and last["recall"] == pytest.approx([0.5, 2 / 3])  # 2.0: the right edge
    assert math.isnan(metrics.binned_recall(y, score, theta_e, [0, 1, 2, 3, 4])["recall"][3])  # empty bin
    assert metrics.binned_recall(y, score, theta_e, [1, 2])["n_outside"] == 2
    equal = metrics.binned_recall(y, score, theta_e, 3)
    assert np.allclose(equal["bin_edges"], [0.5, 1.0, 1.5, 2.0]) and sum(equal["n_pos"]) == 5


def test_roc_pr_plot_agrees_with_metrics(tmp_path):
    y, score = finder_output(n=3000, lens_fraction=0.05)
    out = as_json(lens_eval.roc_pr_plot(y, score, tmp_path / "roc.png", colors=lens_eval.palette(True)))
    assert_png(tmp_path / "roc.png")
    summary = metrics.binary_metrics(y, score, n_bootstrap=0)
    assert out["auc"] == summary["auc"] and out["average_precision"] == summary["average_precision"]
    assert summary["tpr_at_fpr_1e-3_defined"]  # ~2850 non-lenses resolve FPR 1e-3
    assert out["tpr_at_fpr"] == {key: summary[f"tpr_at_fpr_{key}"] for key in ("1e-2", "1e-3")}
    assert out["tpr0"] == summary["tpr0"] and out["tpr10"] == summary["tpr10"]


def test_calibration_histogram_and_confusion_plots(tmp_path):
    y, score = finder_output()
    cal = as_json(lens_eval.calibration_plot(y, score, tmp_path / "cal.png"))
    assert cal["ece"] == metrics.binary_metrics(y, score, n_bootstrap=0)["ece"]
    hist = as_json(lens_eval.score_histograms(y, score, tmp_path / "hist.png"))
    assert sum(hist["counts"]["lens"]) == y.sum() and sum(hist["counts"]["nonlens"]) == len(y) - y.sum()
    cm = as_json(lens_eval.confusion_plot(y, score >= 0.5, tmp_path / "cm.png"))
    assert cm["counts"] == skm.confusion_matrix(y, score >= 0.5).tolist()
    for name in ("cal", "hist", "cm"):
        assert_png(tmp_path / f"{name}.png")
    lens_eval.score_histograms(np.zeros(5, int), np.full(5, 1e-9), tmp_path / "one.png")  # one class, saturated
    assert_png(tmp_path / "one.png")


def cutouts(n, bands, seed=0):
    """(N, C, H, W) blobs on noise, some pixels NaN (masked)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32] - 15.5
    images = np.exp(-(xx ** 2 + yy ** 2) / 20)[None, None] * rng.uniform(1, 3, (n, bands, 1, 1))
    images = images + 0.05 * rng.standard_normal(images.shape)
    images[:, :, :3, :3] = np.nan
    return images


@pytest.mark.parametrize("n, bands", [(0, 5), (1, 1), (5, 3), (11, 5), (3, 2)])
def test_image_grid(tmp_path, n, bands):
    images = cutouts(n, bands)
    if n:
        images[0] = np.nan  # a fully masked cutout must not break the stretch
    titles = [f"#{i + 1} id {1000 + i}\np=0.{99 - i}" for i in range(n)]
    out = lens_eval.image_grid(images, titles, tmp_path / "grid.png", ncols=4, title="most confident false positives")
    assert_png(tmp_path / "grid.png")
    assert out["n_images"] == n and out["n_rows"] == -(-n // 4) and out["n_cols"] == min(4, n)
    with pytest.raises(ValueError):
        lens_eval.image_grid(cutouts(2, 1), ["one title"], tmp_path / "bad.png")


def test_recall_vs_parameter_plot(tmp_path):
    rng = np.random.default_rng(0)
    y, score = np.ones(500, int), rng.random(500)
    theta_e = rng.uniform(0.5, 3.0, 500)
    arc_snr = np.r_[np.geomspace(3, 300, 499), np.nan]
    tables = {"θE (arcsec)": metrics.binned_recall(y, score, theta_e, 8),
              "arc S/N": metrics.binned_recall(y, score, arc_snr, np.geomspace(3, 300, 9))}
    out = as_json(lens_eval.recall_vs_parameter_plot(tables, tmp_path / "recall.png"))
    assert_png(tmp_path / "recall.png")
    assert out["parameters"] == list(tables) and len(out["recall"]["arc S/N"]) == 8
    lens_eval.recall_vs_parameter_plot({}, tmp_path / "empty.png")
    assert_png(tmp_path / "empty.png")
