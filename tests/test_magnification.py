"""Magnifications against reference implementations: MulensModel (PSPL) and full
VBBinaryLensing calls (binary), including the adaptive scheme's accuracy bound."""
import os

import numpy as np
import pytest

from physics.microlensing.binary import (AdaptiveBinaryLightCurve, binary_trajectory, full_binary_curve,
                                         make_vbbl)
from physics.microlensing.events import PRESETS, EventConfig, draw_lensed
from physics.microlensing.single import pspl_magnification
from physics.microlensing.survey import Season


def test_pspl_against_mulensmodel_and_vbbl():
    MulensModel = pytest.importorskip("MulensModel")
    t = Season().times()
    vbbl = make_vbbl()
    rng = np.random.default_rng(0)
    for _ in range(20):
        t0, tE, u0 = rng.uniform(7, 65), rng.uniform(5, 30), 10 ** rng.uniform(-3, 0)
        ours = pspl_magnification(t, t0, tE, u0)
        model = MulensModel.Model({"t_0": t0, "u_0": u0, "t_E": tE})
        np.testing.assert_allclose(ours, model.get_magnification(t), rtol=1e-10)
        vb = np.asarray(vbbl.PSPLLightCurve([np.log(u0), np.log(tE), t0], t.tolist())[0])
        np.testing.assert_allclose(ours, vb, rtol=1e-8)


def test_pspl_known_values():
    # A(u=1) = 3/sqrt(5); A(u) ~ 1/u for small u
    assert pspl_magnification(0.0, 0.0, 10.0, 1.0) == pytest.approx(3 / np.sqrt(5))
    assert pspl_magnification(0.0, 0.0, 10.0, 1e-4) == pytest.approx(1e4, rel=1e-6)


def test_trajectory_matches_vbbl():
    vbbl = make_vbbl()
    t = np.linspace(0, 72, 50)
    s, q, u0, alpha, rho, tE, t0 = 1.1, 0.3, 0.2, 2.1, 0.01, 12.0, 30.0
    out = vbbl.BinaryLightCurve([np.log(s), np.log(q), u0, alpha, np.log(rho), np.log(tE), t0], t.tolist())
    y1, y2 = binary_trajectory(t, u0, alpha, tE, t0)
    np.testing.assert_allclose(y1, out[1], atol=1e-12)
    np.testing.assert_allclose(y2, out[2], atol=1e-12)


def _binary_events(n, preset, seed):
    cfg = EventConfig(preset=preset)
    p = draw_lensed(np.random.default_rng(seed), cfg, n, binary=True)
    return [tuple(e[k] for k in ("s", "q", "u0", "alpha", "rho", "tE", "t0")) for e in p]


# CI checks a sample (the tight reference costs ~1 s per event); bench/bench_simulate.py
# checks >= 200 events per preset. LENSING_FULL_TESTS=1 runs 200 here too.
N_EVENTS = 200 if os.environ.get("LENSING_FULL_TESTS") else 12


@pytest.mark.parametrize("preset", ["baseline", "planetary"])
def test_adaptive_binary_within_1e3_of_tight_vbbl(preset):
    season = Season()
    t = season.times()
    adaptive = AdaptiveBinaryLightCurve(t, season.dt)
    tight = make_vbbl(1e-5, 1e-5)
    worst = 0.0
    for event in _binary_events(N_EVENTS, preset, seed=123):
        ref = full_binary_curve(tight, t, *event)
        err = np.max(np.abs(adaptive(*event) / ref - 1))
        worst = max(worst, err)
        assert err <= 1e-3, (event, err)
        assert adaptive.n_evals < len(t)  # it really is adaptive
    assert worst > 0  # compared against an independent computation


def test_adaptive_catches_a_caustic_crossing():
    """A resonant caustic crossed by a small source: sharp spikes must be resolved."""
    season = Season()
    t = season.times()
    event = (1.0, 0.5, 0.05, 0.3, 2e-3, 10.0, 36.0)  # s, q, u0, alpha, rho, tE, t0
    ref = full_binary_curve(make_vbbl(1e-5, 1e-5), t, *event)
    ours = AdaptiveBinaryLightCurve(t, season.dt)(*event)
    assert ref.max() > 20  # the trajectory does cross the caustic
    assert np.max(np.abs(ours / ref - 1)) <= 1e-3


def test_presets_have_docs_and_sane_ranges():
    for preset in PRESETS.values():
        assert len(preset.doc) > 40
        for lo, hi in (preset.s, preset.q, preset.u0):
            assert 0 < lo < hi
