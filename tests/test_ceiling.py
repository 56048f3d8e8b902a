"""The Δχ² ceiling and the point-lens fit behind it; finite-source single lenses (ESPL)."""
import numpy as np
import pytest

from data import microlensing_ceiling as ceiling
from physics.microlensing.binary import full_binary_curve, make_vbbl
from physics.microlensing.events import PARAMS_DTYPE
from physics.microlensing.fit import fit_pspl
from physics.microlensing.single import espl_magnification, pspl_magnification
from physics.microlensing.survey import NoiseModel, Season, observe

T = Season().times()


def _observe(magnification, m_base, fs, seed):
    rng = np.random.default_rng(seed)
    n = len(magnification)
    observed = rng.random(magnification.shape) > 0.05
    mag, err = observe(rng, NoiseModel(), np.full(n, m_base), np.full(n, fs), magnification.astype(np.float32),
                       observed)
    p = np.zeros(n, dtype=PARAMS_DTYPE)
    p["m_base"], p["fs"] = m_base, fs
    return mag, err, p


def test_fit_recovers_pspl_parameters_and_dchi2_is_near_zero():
    t0, tE, u0 = np.array([20.0, 41.3, 55.0]), np.array([6.0, 17.0, 28.0]), np.array([0.02, 0.15, 0.6])
    A = pspl_magnification(T, t0[:, None], tE[:, None], u0[:, None])
    mag, err, p = _observe(A, 20.5, 0.4, seed=0)
    d = ceiling.event_dchi2(T, mag, err, A, p)
    # the fit has 5 free parameters: it beats the truth by ~5 on pure noise, never by much more
    assert np.all(np.abs(d["dchi2_pspl"]) < 25), d["dchi2_pspl"]
    assert np.all(d["dchi2_flat"] > 1000)
    ref = np.nanmedian(mag, 1, keepdims=True)
    flux = 10 ** (-0.4 * (mag - ref))
    fit = fit_pspl(T, flux, 0.4 * np.log(10) * flux * err)
    np.testing.assert_allclose(fit["t0"], t0, atol=0.05)
    np.testing.assert_allclose(fit["tE"], tE, rtol=0.1)
    np.testing.assert_allclose(fit["u0"], u0, rtol=0.1)
    blend = fit["fb"][:, 0] / (fit["fs"][:, 0] + fit["fb"][:, 0])
    np.testing.assert_allclose(blend, 0.6, atol=0.05)  # fs = 0.4 at baseline


def test_fit_shares_the_lens_across_telescopes_with_their_own_fluxes():
    rng = np.random.default_rng(4)
    t = np.sort(rng.uniform(0, 60, 600))
    tel = (rng.random(600) < 0.5).astype(int)
    A = pspl_magnification(t, 30.0, 12.0, 0.1)
    flux = np.where(tel == 0, 100 * A + 50, 3 * A + 7) * (1 + 0.002 * rng.standard_normal(600))
    fit = fit_pspl(t, flux[None], 0.002 * flux[None], telescope=tel[None])
    assert fit["u0"][0] == pytest.approx(0.1, rel=0.02) and fit["t0"][0] == pytest.approx(30.0, abs=0.02)
    np.testing.assert_allclose(fit["fs"][0], [100, 3], rtol=0.03)
    np.testing.assert_allclose(fit["fb"][0], [50, 7], rtol=0.05)
    assert fit["chi2"][0] < 700  # ~600 epochs of unit-variance residuals


def test_caustic_crossing_binary_is_far_from_every_single_lens():
    s, q, u0, alpha, rho, tE, t0 = 1.0, 0.5, 0.05, 0.3, 2e-3, 10.0, 36.0
    A = full_binary_curve(make_vbbl(1e-4, 1e-4), T, s, q, u0, alpha, rho, tE, t0)[None]
    mag, err, p = _observe(A, 20.5, 0.5, seed=1)
    d = ceiling.event_dchi2(T, mag, err, A, p)
    assert d["dchi2_pspl"][0] > 2000


def test_espl_matches_vbbinarylensing_and_rounds_the_peak():
    vbbl = make_vbbl(1e-5, 1e-5)
    t0, tE, u0, rho = 36.0, 10.0, 0.004, 0.02
    t = np.linspace(35.0, 37.0, 201)
    ours = espl_magnification(t, t0, tE, u0, rho)
    u = np.hypot(u0, (t - t0) / tE)
    # an independent algorithm: VBBinaryLensing's binary contour integration with a vanishing companion
    ref = np.array([vbbl.BinaryMag2(1.0, 1e-9, x, 0.0, rho) for x in u])
    np.testing.assert_allclose(ours, ref, rtol=2e-3)
    # and MulensModel's uniform finite-source point lens (Witt & Mao 1994)
    import MulensModel
    model = MulensModel.Model({"t_0": t0, "u_0": u0, "t_E": tE, "rho": rho})
    model.set_magnification_methods([34.9, "finite_source_uniform_WittMao94", 37.1])
    np.testing.assert_allclose(ours, model.get_magnification(t), rtol=2e-3)
    assert ours.max() < 0.6 * pspl_magnification(t0, t0, tE, u0)  # the finite source caps the peak
    far = np.linspace(0, 30, 50)
    np.testing.assert_allclose(espl_magnification(far, 15.0, 10.0, 0.5, 1e-3), pspl_magnification(far, 15.0, 10.0, 0.5),
                               rtol=1e-5)


def test_ceiling_summary_counts_bins_and_the_oracle():
    y = np.array([0, 1, 1, 2, 2, 2, 2, 2])
    dchi2 = np.array([0.0, -4.0, 80.0, 10.0, 60.0, 300.0, 1000.0, 5000.0])
    dflat = np.array([-1.0, 500, 500, 500, 500, 500, 500, 500])
    pred = np.array([0, 1, 1, 1, 2, 2, 1, 2])
    out = ceiling.ceiling_summary(y, pred, dchi2, dflat)
    assert [out["model_binary_recall"][b]["n"] for b in ceiling.BIN_LABELS] == [1, 1, 1, 1, 1]
    assert [out["model_binary_recall"][b]["recall"] for b in ceiling.BIN_LABELS] == [0, 1, 1, 0, 1]
    assert [out["oracle_binary_recall"][b]["recall"] for b in ceiling.BIN_LABELS] == [0, 1, 1, 1, 1]
    assert out["oracle_accuracy"] == pytest.approx(7 / 8)        # misses only the Δχ² = 10 binary
    assert out["pspl_test_accuracy"] == pytest.approx(6 / 8)     # also calls the Δχ² = 80 single lens binary
    assert out["model_accuracy"] == pytest.approx(6 / 8)


def test_ceiling_annotations_are_kept_and_reused(tmp_path, tiny_h5):
    import shutil
    path = str(tmp_path / "tiny.h5")
    shutil.copy(tiny_h5, path)
    first = ceiling.annotations(path, [5, 1, 3], progress=False)
    assert (tmp_path / "tiny.h5.dchi2.npz").is_file()
    with np.load(tmp_path / "tiny.h5.dchi2.npz") as z:
        assert sorted(z["rows"].tolist()) == [1, 3, 5]
    again = ceiling.annotations(path, [3, 5, 1, 7], progress=False)
    np.testing.assert_array_equal(again["dchi2_pspl"][:3], first["dchi2_pspl"][[2, 0, 1]])
    with np.load(tmp_path / "tiny.h5.dchi2.npz") as z:
        assert sorted(z["rows"].tolist()) == [1, 3, 5, 7]
