"""Evaluation plots: each writes a PNG and returns numbers that match the reference libraries."""
import json
import math

import numpy as np
import pytest
from sklearn import metrics

from plots import microlensing_eval as ev

NAMES = ["flat", "PSPL", "binary"]


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, path


def as_json(result):
    """Round-trip through JSON, as evaluate.py will store it."""
    return json.loads(json.dumps(result))


def classifier_output(n=300, signal=1.5, seed=0):
    """Labels and softmax probabilities that lean towards the true class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + signal * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def calibrated_probs(n, seed, p_correct):
    """Probabilities with top-label confidence c ~ U(0.4, 1); the label is the argmax with
    probability p_correct(c), else one of the two other classes."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.4, 1.0, n)
    pred = rng.integers(0, 3, n)
    probs = np.repeat(((1 - conf) / 2)[:, None], 3, axis=1)
    probs[np.arange(n), pred] = conf
    right = rng.random(n) < p_correct(conf)
    y = np.where(right, pred, (pred + rng.integers(1, 3, n)) % 3)
    return y, probs


def test_palette():
    assert ev.palette(True) == ev.COLORBLIND_COLORS and ev.palette(False) == ev.DEFAULT_COLORS
    assert len(ev.COLORBLIND_COLORS) == 4 and ev.palette(True) is not ev.COLORBLIND_COLORS


def test_confusion_matrix_matches_sklearn(tmp_path):
    y, probs = classifier_output()
    pred = probs.argmax(axis=1)
    out = as_json(ev.confusion_matrix_plot(y, pred, NAMES, tmp_path / "cm.png", colors=ev.palette(True)))
    assert_png(tmp_path / "cm.png")
    expected = metrics.confusion_matrix(y, pred, labels=[0, 1, 2])
    np.testing.assert_array_equal(out["counts"], expected)
    np.testing.assert_allclose(out["normalized"], expected / expected.sum(axis=1, keepdims=True))


@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal: many tied scores
def test_roc_auc_matches_sklearn_and_ci_contains_it(tmp_path, decimals):
    y, probs = classifier_output()
    scores = probs if decimals is None else np.round(probs, decimals)
    out = as_json(ev.roc_plot(y, scores, NAMES, tmp_path / "roc.png", n_bootstrap=60, seed=1))
    assert_png(tmp_path / "roc.png")
    for c, name in enumerate(NAMES):
        expected = metrics.roc_auc_score(y == c, scores[:, c])
        assert out["auc"][name] == pytest.approx(expected, abs=1e-9)
        lo, hi = out["auc_ci"][name]
        assert lo <= out["auc"][name] <= hi and hi - lo < 0.2
    assert out["macro_auc"] == pytest.approx(np.mean(list(out["auc"].values())), abs=1e-12)
    if decimals is None:
        assert out["macro_auc"] == pytest.approx(metrics.roc_auc_score(y, probs, multi_class="ovr"), abs=1e-9)
    lo, hi = out["macro_auc_ci"]
    assert lo <= out["macro_auc"] <= hi


def test_roc_class_absent_gives_nan(tmp_path):
    y, probs = classifier_output()
    keep = y != 2
    out = as_json(ev.roc_plot(y[keep], probs[keep], NAMES, tmp_path / "roc.png", n_bootstrap=30))
    assert_png(tmp_path / "roc.png")
    assert math.isnan(out["auc"]["binary"]) and all(math.isnan(v) for v in out["auc_ci"]["binary"])
    assert out["auc"]["flat"] == pytest.approx(metrics.roc_auc_score(y[keep] == 0, probs[keep, 0]), abs=1e-9)
    assert out["macro_auc"] == pytest.approx((out["auc"]["flat"] + out["auc"]["PSPL"]) / 2)


def test_reliability_ece_calibrated_vs_overconfident(tmp_path):
    y, probs = calibrated_probs(5000, 0, lambda c: c)
    good = as_json(ev.reliability_plot(y, probs, tmp_path / "good.png", n_bins=15))
    y, probs = calibrated_probs(5000, 1, lambda c: c - 0.3)  # 30 points less accurate than it claims
    bad = as_json(ev.reliability_plot(y, probs, tmp_path / "bad.png", n_bins=15))
    assert_png(tmp_path / "good.png") and assert_png(tmp_path / "bad.png")
    assert good["ece"] < 0.05 and bad["ece"] > 0.2
    assert sum(good["bin_count"]) == 5000 and len(good["bin_accuracy"]) == 15
    assert math.isnan(good["bin_accuracy"][0])  # confidence >= 0.4: the first bins are empty
    count, acc, conf = (np.array(bad[k], dtype=float) for k in ("bin_count", "bin_accuracy", "bin_confidence"))
    filled = count > 0
    assert bad["ece"] == pytest.approx(np.sum(count[filled] / 5000 * np.abs(acc[filled] - conf[filled])))


def test_per_class_metrics_match_sklearn(tmp_path):
    y, probs = classifier_output(signal=1.0)
    pred = probs.argmax(axis=1)
    out = as_json(ev.per_class_metrics_plot(y, pred, NAMES, tmp_path / "pc.png", colors=ev.palette(True)))
    assert_png(tmp_path / "pc.png")
    p, r, f, s = metrics.precision_recall_fscore_support(y, pred, labels=[0, 1, 2])
    for c, name in enumerate(NAMES):
        assert out[name]["precision"] == pytest.approx(p[c]) and out[name]["recall"] == pytest.approx(r[c])
        assert out[name]["f1"] == pytest.approx(f[c]) and out[name]["support"] == s[c]
    assert out["macro"]["f1"] == pytest.approx(metrics.f1_score(y, pred, average="macro"))
    assert out["macro"]["support"] == len(y)


def test_u0_accuracy_in_the_right_bins(tmp_path):
    # log bins from 0.01 to 1: 0.1 is the edge between bins 4 and 5
    u0_binary = np.r_[0.01, np.repeat(np.logspace(-1.9, -0.1, 10), 3), 1.0]
    y_pred_binary = np.where(u0_binary < 0.1, 2, 1)
    u0 = np.r_[u0_binary, [0.5, 0.02]]  # two PSPL events that must be ignored
    y_true = np.r_[np.full(len(u0_binary), 2), [1, 1]]
    y_pred = np.r_[y_pred_binary, [2, 1]]
    out = as_json(ev.u0_dependency_plot(u0, y_true, y_pred, tmp_path / "u0.png", n_bins=10))
    assert_png(tmp_path / "u0.png")
    np.testing.assert_allclose(out["bin_edges"], np.logspace(-2, 0, 11))
    assert out["accuracy"] == [1.0] * 5 + [0.0] * 5
    assert out["count"] == [4] + [3] * 8 + [4] and sum(out["count"]) == len(u0_binary)
    assert all(lo <= a <= hi for lo, a, hi in zip(out["lower"], out["accuracy"], out["upper"]))
    assert 0 < out["lower"][0] < 1 and 0 < out["upper"][-1] < 1  # Wilson never collapses to 0 or 1


def test_u0_without_events(tmp_path):
    out = ev.u0_dependency_plot([0.1, 0.2], [1, 2], [1, 2], tmp_path / "u0.png")
    assert_png(tmp_path / "u0.png")
    assert out["bin_edges"] == [] and out["accuracy"] == [] and out["count"] == []


def test_t0_ks_detects_shift_only(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    # PSPL: wrong ones peak late (a temporal bias); binary: right and wrong from one distribution
    t0 = np.r_[rng.uniform(0, 72, 50), rng.normal(25, 8, n), rng.normal(50, 8, n), rng.uniform(0, 72, 2 * n)]
    y_true = np.r_[np.zeros(50), np.ones(2 * n), np.full(2 * n, 2)].astype(int)
    y_pred = np.r_[np.zeros(50), np.ones(n), np.zeros(n), np.tile([2, 1], n)].astype(int)
    out = as_json(ev.t0_check_plot(t0, y_true, y_pred, NAMES, tmp_path / "t0.png", colors=ev.palette(True)))
    assert_png(tmp_path / "t0.png")
    pspl, binary = out["ks_correct_vs_wrong"]["PSPL"], out["ks_correct_vs_wrong"]["binary"]
    assert pspl["pvalue"] < 1e-6 and pspl["n_correct"] == n and pspl["n_wrong"] == n
    assert binary["pvalue"] > 0.05 and binary["n_correct"] == n and binary["n_wrong"] == n
    assert out["ks_pspl_vs_binary"]["pvalue"] < 1e-3  # PSPL t0 piles up mid-season, binary is flat

    same = np.r_[t0[:50], t0[50 + 2 * n:], t0[50 + 2 * n:]]  # PSPL and binary share every t0
    out = ev.t0_check_plot(same, y_true, y_true, NAMES, tmp_path / "t0b.png")
    assert out["ks_pspl_vs_binary"]["statistic"] == 0.0 and out["ks_pspl_vs_binary"]["pvalue"] == 1.0
    assert math.isnan(out["ks_correct_vs_wrong"]["PSPL"]["pvalue"])  # no wrong events
    assert out["ks_correct_vs_wrong"]["PSPL"]["n_wrong"] == 0


def test_early_detection(tmp_path):
    fractions = [0.25, 0.5, 0.75, 1.0]
    per_class = {"flat": [0.9, 0.9, 0.95, 0.95], "PSPL": [0.3, 0.6, 0.8, 0.9], "binary": [0.1, 0.4, 0.7, 0.8]}
    out = as_json(ev.early_detection_plot(np.array(fractions), np.array([0.4, 0.6, 0.8, 0.9]), tmp_path / "ed.png",
                                          per_class=per_class, class_names=NAMES))
    assert_png(tmp_path / "ed.png")
    assert out == {"fractions": fractions, "accuracy": [0.4, 0.6, 0.8, 0.9], "per_class": per_class}
    assert ev.early_detection_plot(fractions, [0.5] * 4, tmp_path / "ed2.png")["per_class"] == {}
    assert_png(tmp_path / "ed2.png")


def evolution_inputs(predicted):
    time = np.linspace(0, 72, 200)
    mag = 20 - 2.5 * np.log10(1 + 2 * np.exp(-0.5 * ((time - 40) / 5) ** 2))
    mag[::7] = np.nan  # unobserved epochs
    probs = np.full((len(predicted), 3), 0.1)
    probs[np.arange(len(predicted)), predicted] = 0.8
    return time, mag, np.full_like(time, 0.02), np.linspace(0.2, 1.0, len(predicted)), probs


@pytest.mark.parametrize("predicted, expected_fraction", [
    ([0, 2, 1, 2, 2], 0.8),  # correct at 0.4 but not after: settles at 0.8
    ([2, 2, 2, 2, 2], 0.2),
    ([0, 0, 2, 2, 1], None),  # last prediction wrong: never settles
])
def test_evolution_time_of_first_correct(tmp_path, predicted, expected_fraction):
    time, mag, err, fractions, probs = evolution_inputs(predicted)
    out = as_json(ev.evolution_plot(time, mag, err, fractions, probs, 2, NAMES, tmp_path / "evo.png", title="event 7"))
    assert_png(tmp_path / "evo.png")
    if expected_fraction is None:
        assert out["time_of_first_correct"] is None
    else:
        assert out["time_of_first_correct"] == pytest.approx(expected_fraction * 72.0)


def test_example_grid(tmp_path):
    rng = np.random.default_rng(0)
    y_true = np.r_[np.zeros(5), np.ones(5), np.full(2, 2)].astype(int)  # only 2 binaries for 3 columns
    y_pred = np.r_[y_true[:-1], 0]
    probs = np.full((12, 3), 0.1)
    probs[np.arange(12), y_pred] = 0.8
    time = np.linspace(0, 72, 100)
    mags = 20 + 0.05 * rng.normal(size=(12, 100))
    mags[:, ::3] = np.nan
    out = ev.example_grid(time, mags, np.full_like(mags, 0.05), y_true, y_pred, probs, NAMES, tmp_path / "grid.png",
                          n_per_class=3, colors=ev.palette(True))
    assert out is None
    assert_png(tmp_path / "grid.png")
