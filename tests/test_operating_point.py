"""The binary operating point: chosen on validation single lenses, applied by evaluate and predict."""
import numpy as np
import pytest

from tasks.microlensing import ensemble_point
from tasks.microlensing_eval import binary_score, decide, operating_point


def probs_of(p_flat, p_bin_given_lensed):
    p_flat = np.asarray(p_flat, float)
    s = np.asarray(p_bin_given_lensed, float)
    return np.stack([p_flat, (1 - p_flat) * (1 - s), (1 - p_flat) * s], axis=1)


def test_threshold_caps_the_single_lens_false_alarms():
    rng = np.random.default_rng(0)
    n = 400
    y = np.repeat([0, 1, 2], n)
    s = np.concatenate([rng.uniform(0, 1, n), rng.beta(1, 4, n), rng.beta(4, 1, n)])
    p_flat = np.concatenate([np.full(n, 0.9), np.full(2 * n, 0.05)])
    probs = probs_of(p_flat, s)
    point = operating_point(y, np.log(probs), false_alarm=0.02)
    assert point["binary_threshold"] > 0.5 and point["n_single"] == n
    pred = decide(probs, point)
    called = (pred[y == 1] == 2).mean()
    assert called <= 0.02 and called >= 0.02 - 2 / n      # the cap, and not much stricter than it
    assert (pred[y == 1] == 2).mean() < (probs[y == 1].argmax(1) == 2).mean()
    assert (pred[y == 0] == 0).all()                       # flat decisions are the argmax's
    np.testing.assert_allclose(binary_score(probs), s, atol=1e-12)


def test_threshold_never_below_argmax_and_none_is_argmax():
    y = np.array([1, 1, 1, 2, 2, 2])
    probs = probs_of(np.zeros(6), [0.1, 0.2, 0.3, 0.6, 0.8, 0.9])
    point = operating_point(y, np.log(probs), false_alarm=0.1)
    assert point["binary_threshold"] == 0.5              # no single lens above 0.5: argmax already meets it
    assert np.array_equal(decide(probs, point), probs.argmax(1))
    assert np.array_equal(decide(probs, None), probs.argmax(1))
    # a strict cap: at most floor(0 * 3) = 0 single lenses above the threshold
    probs2 = probs_of(np.zeros(6), [0.1, 0.2, 0.7, 0.6, 0.8, 0.9])
    point2 = operating_point(y, np.log(probs2), false_alarm=0.0)
    assert point2["binary_threshold"] == pytest.approx(0.7)
    assert list(decide(probs2, point2)) == [1, 1, 1, 1, 2, 2]


def test_variable_class_sets_the_lensing_threshold():
    """With variables, an event is lensing where P(pspl) + P(binary) exceeds the threshold that at
    most the given share of validation variables exceed; unlensed events are flat or variable."""
    rng = np.random.default_rng(1)
    n = 500
    y = np.repeat([0, 1, 2, 3], n)
    lens = np.concatenate([rng.beta(1, 6, n), rng.beta(6, 1, 2 * n), rng.beta(2, 3, n)])  # variables overlap
    s = np.concatenate([rng.uniform(0, 1, n), rng.beta(1, 4, n), rng.beta(4, 1, n), rng.uniform(0, 1, n)])
    var = np.concatenate([rng.beta(1, 4, n), np.full(2 * n, 0.5), rng.beta(4, 1, n)])  # P(variable | unlensed)
    probs = np.stack([(1 - lens) * (1 - var), lens * (1 - s), lens * s, (1 - lens) * var], axis=1)
    point = operating_point(y, np.log(probs), false_alarm=0.03, variable_false_alarm=0.01)
    assert point["lensed_threshold"] > 0.5 and point["n_variable"] == n
    pred = decide(probs, point)
    called = np.isin(pred[y == 3], (1, 2)).mean()
    assert 0.01 - 2 / n <= called <= 0.01                       # the cap on variables called lensing
    assert np.isin(pred[y == 3], (1, 2)).mean() < np.isin(probs[y == 3].argmax(1), (1, 2)).mean()
    unlensed = ~np.isin(pred, (1, 2))
    assert np.array_equal(pred[unlensed], np.where(var[unlensed] > 0.5, 3, 0))
    single_called = pred[(y == 1) & np.isin(pred, (1, 2))]
    assert (single_called == 2).mean() <= 0.03 * n / len(single_called) + 1e-9  # binary cap among called lenses
    assert ensemble_point([{"operating_point": point}, {"operating_point": point}])["lensed_threshold"] == \
        pytest.approx(point["lensed_threshold"])


def test_ensemble_point():
    a = {"operating_point": {"binary_threshold": 0.6, "false_alarm": 0.03}}
    b = {"operating_point": {"binary_threshold": 0.8, "false_alarm": 0.03}}
    assert ensemble_point([a, b])["binary_threshold"] == pytest.approx(0.7)
    assert ensemble_point([a, {}]) is None
