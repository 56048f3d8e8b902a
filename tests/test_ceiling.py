"""The Δχ² ceiling and the point-lens fit behind it; finite-source single lenses (ESPL)."""
import numpy as np
import pytest

from data import microlensing_ceiling as ceiling
from physics.microlensing.binary import full_binary_curve, make_vbbl
from physics.microlensing.events import PARAMS_DTYPE
from physics.microlensing.fit import finite_source_factor, fit_pspl, pspl_with_derivative
from physics.microlensing.single import espl_magnification, finite_source_correction, pspl_magnification
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


def test_fit_recovers_events_from_hours_to_hundreds_of_days():
    """The survey population's timescales: a 0.1-day free-floating-planet event is a point of the
    coarse pass (a 72-day season binned to 400) and is found from its own epochs; a 150-day event
    shows its middle only."""
    t0, tE, u0 = np.array([30.0, 44.0, 36.0, 50.0]), np.array([0.1, 0.4, 8.0, 150.0]), np.array([0.1, 0.3, 0.2, 0.1])
    A = pspl_magnification(T, t0[:, None], tE[:, None], u0[:, None])
    mag, err, p = _observe(A, 19.0, 0.5, seed=4)
    d = ceiling.event_dchi2(T, mag, err, A, p)
    assert np.all(np.abs(d["dchi2_pspl"]) < 25), d["dchi2_pspl"]
    ref = np.nanmedian(mag, 1, keepdims=True)
    flux = 10 ** (-0.4 * (mag - ref))
    fit = fit_pspl(T, flux, 0.4 * np.log(10) * flux * err, finite_source=True)
    assert np.all(np.abs(fit["t0"] - t0) < 0.01 * tE + 0.01), fit["t0"]
    np.testing.assert_allclose(fit["tE"][:3], tE[:3], rtol=0.05)
    assert abs(fit["tE"][3] / tE[3] - 1) < 0.3  # 72 of its 300 days: tE, u0, fs degenerate


def test_scaled_view_is_the_same_for_every_timescale():
    """The time-normalised view (tau = (t - t0) / tE from each curve's fit) of a PSPL event is the
    same whatever its tE, where the season covers it."""
    from data.lightcurves import light_curve_features
    rng = np.random.default_rng(0)
    views = {}
    for tE in (0.15, 0.5, 3.0, 30.0, 100.0):
        A = pspl_magnification(T, 36.0, tE, 0.1)
        mag = 19 - 2.5 * np.log10(0.5 * A + 0.5) + 0.002 * rng.standard_normal(len(T))
        f = light_curve_features(T, mag[None], np.full((1, len(T)), 0.002), 0.0, 864, 120 / 1440,
                                 residuals="fspl", scaled=(128, 4.0))
        assert f.shape == (1, 864 + 128, 6)
        views[tE] = f[0, 864:]
    ref = views[30.0]
    assert ref[:, 3].sum() > 30
    for tE, view in views.items():
        both = (view[:, 3] > 0) & (ref[:, 3] > 0)
        assert both.sum() >= min(view[:, 3].sum(), 12)
        for channel in (0, 5):  # flux over the fitted baseline, the fitted shape
            np.testing.assert_allclose(view[both, channel], ref[both, channel], atol=0.06)
        assert np.median(np.abs(view[both, 0] - ref[both, 0])) < 0.01


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


def test_espl_has_no_step_where_the_finite_source_term_gets_small():
    """Far from the lens the source still brightens the curve by ~rho^2 / (8 u^2): no step where
    VBBinaryLensing would switch to a point source (u ~ 7 rho at its default tolerance) nor where
    the simulator does (u = 30 rho); checked against MulensModel's finite source."""
    import MulensModel
    rho = 0.05
    u = np.linspace(2 * rho, 60 * rho, 3000)
    excess = espl_magnification(u, 0.0, 1.0, 1e-9, rho) / pspl_magnification(u, 0.0, 1.0, 1e-9) - 1
    assert np.all(excess > 0) and np.all(np.diff(excess) < 0)
    small = (u > 5 * rho) & (u < 0.25)  # where A ~ 1/u: the excess is rho^2 / (8 u^2)
    np.testing.assert_allclose(excess[small], rho ** 2 / (8 * u[small] ** 2), rtol=0.1)
    # from point to point the excess falls as the second-order term does: no jump anywhere
    smooth = finite_source_correction(u, rho) / pspl_magnification(u, 0.0, 1.0, 1e-9)
    far = u > 4 * rho
    np.testing.assert_allclose(np.diff(excess[far]), np.diff(smooth[far]), rtol=0.1, atol=5e-6)  # 4e-6 at 30 rho
    # MulensModel's Gould (1994) uniform source, valid where u << 1 (its Witt & Mao is noisy this far out)
    model = MulensModel.Model({"t_0": 0.0, "u_0": 1e-9, "t_E": 1.0, "rho": rho})
    model.set_magnification_methods([0.0, "finite_source_uniform_Gould94", 0.25])
    ref = model.get_magnification(u[small]) / pspl_magnification(u[small], 0.0, 1.0, 1e-9) - 1
    np.testing.assert_allclose(excess[small], ref, rtol=0.05)


def test_finite_source_factor_matches_vbbinarylensing_and_mulensmodel():
    """A_PS(u) B0(u / rho), the single-lens fit's finite-source model, against VBBinaryLensing's
    ESPL (as simulated) and MulensModel's Witt & Mao uniform source, from inside the source to
    outside it; and B0's limits."""
    import MulensModel
    import torch
    for rho in (0.003, 0.02, 0.05):
        for u0 in (1e-5, 0.5 * rho, rho, 2 * rho):
            t = np.linspace(-4 * rho, 4 * rho, 161) * 10.0 + 36.0
            u = np.hypot(u0, (t - 36.0) / 10.0)
            b0, _ = finite_source_factor(torch.tensor(u / rho))
            ours = pspl_with_derivative(torch.tensor(u))[0].numpy() * b0.numpy()
            np.testing.assert_allclose(ours, espl_magnification(t, 36.0, 10.0, u0, rho), rtol=3e-3)
            model = MulensModel.Model({"t_0": 36.0, "u_0": u0, "t_E": 10.0, "rho": rho})
            model.set_magnification_methods([t[0] - 0.1, "finite_source_uniform_WittMao94", t[-1] + 0.1])
            off_limb = np.abs(u / rho - 1) > 0.01  # Witt & Mao's expression is singular where the limb crosses the lens
            np.testing.assert_allclose(ours[off_limb], model.get_magnification(t)[off_limb], rtol=3e-3)
    z = torch.tensor([1e-6, 1e-3, 0.5, 1.0, 2.0, 10.0, 1e4], dtype=torch.float64)
    b0, db0 = finite_source_factor(z)
    np.testing.assert_allclose(b0[:2].numpy(), 2 * z[:2].numpy(), rtol=1e-3)   # peak 2 / rho
    assert b0[5] == pytest.approx(1 + 1 / (8 * 10.0 ** 2), rel=2e-3) and b0[6] == 1.0 and db0[6] == 0.0
    assert b0[3] > b0[4] > 1.0 > b0[2]  # most above a point source where the limb crosses the lens


def test_finite_source_fit_explains_a_rounded_peak_but_not_a_binary():
    """A point lens crossing a large source: far from every point-source curve (Δχ² > 100), the
    finite-source fit reaches the true χ² and rho; a PSPL event and a caustic crossing are
    unchanged by allowing a finite source."""
    t0, tE = np.array([30.0, 42.0, 25.0]), np.array([8.0, 20.0, 12.0])
    u0, rho = np.array([0.005, 0.02, 0.1]), np.array([0.03, 0.025, 0.002])
    A = np.stack([espl_magnification(T, *x) for x in zip(t0, tE, u0, rho)])
    mag, err, p = _observe(A, 19.5, 0.6, seed=2)
    point = ceiling.event_dchi2(T, mag, err, A, p)["dchi2_pspl"]
    finite = ceiling.event_dchi2(T, mag, err, A, p, finite_source=True)["dchi2_pspl"]
    assert point[0] > 100 and point[1] > 100, point
    assert np.all(np.abs(finite) < 25), finite
    ref = np.nanmedian(mag, 1, keepdims=True)
    flux = 10 ** (-0.4 * (mag - ref))
    fit = fit_pspl(T, flux, 0.4 * np.log(10) * flux * err, finite_source=True)
    np.testing.assert_allclose(fit["rho"][:2], rho[:2], rtol=0.1)
    np.testing.assert_allclose(fit["u0"][:2], u0[:2], atol=0.005)
    assert np.isnan(fit["rho"][2]) or fit["rho"][2] < 0.02  # u0 = 0.1 >> rho: nothing to round
    s, q, b_u0, alpha, b_rho = 1.0, 0.5, 0.05, 0.3, 2e-3
    B = full_binary_curve(make_vbbl(1e-4, 1e-4), T, s, q, b_u0, alpha, b_rho, 10.0, 36.0)[None]
    mag, err, p = _observe(B, 20.5, 0.5, seed=1)
    assert ceiling.event_dchi2(T, mag, err, B, p, finite_source=True)["dchi2_pspl"][0] > 2000


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


def test_fit_sees_each_curves_own_epochs_whatever_the_others():
    """fit_pspl fits each curve on its observed epochs only (compacted, curves of similar counts
    together): a curve fitted among others of any sampling, or with its unobserved epochs
    dropped, gives the same fit; the model is given at every epoch, the unobserved ones too."""
    t0, tE, u0 = np.array([30.0, 20.0, 45.0]), np.array([10.0, 3.0, 25.0]), np.array([0.1, 0.3, 0.05])
    A = pspl_magnification(T, t0[:, None], tE[:, None], u0[:, None])
    mag, err, _ = _observe(A, 19.5, 0.5, seed=7)
    ref = np.nanmedian(mag, 1, keepdims=True)
    flux = 10 ** (-0.4 * (mag - ref))
    ferr = 0.4 * np.log(10) * flux * err
    rng = np.random.default_rng(3)
    sparse = rng.random(len(T)) < 0.05                                # a ground-like curve: 5% of the epochs
    flux[1, ~sparse], ferr[1, ~sparse] = np.nan, np.nan
    together = fit_pspl(T, flux, ferr, finite_source=True)
    for i in range(3):
        alone = fit_pspl(T, flux[i:i + 1], ferr[i:i + 1], finite_source=True)
        for key in ("t0", "tE", "u0", "chi2"):
            np.testing.assert_allclose(together[key][i], alone[key][0], rtol=1e-6)
    seen = np.isfinite(flux[1])
    dropped = fit_pspl(T[seen], flux[1:2, seen], ferr[1:2, seen])
    np.testing.assert_allclose(dropped["tE"][0], together["tE"][1], rtol=1e-6)
    assert np.isfinite(together["model"]).all()                        # every epoch, observed or not
    np.testing.assert_allclose(together["tE"], tE, rtol=0.1)
    assert together["n_obs"][1] == seen.sum()


def test_finite_source_is_tried_where_the_peak_misfits_not_where_everything_does(monkeypatch):
    """The finite-source refit runs where the point-source fit misses the peak (a source rounding
    it) and not where the misfit lies beyond the peak (a pulsating star: a finite source cannot
    help there, and that refit was most of a survey stream's fitting time)."""
    import physics.microlensing.fit as fit_module
    calls = []
    original = fit_module._finite_source_refine
    monkeypatch.setattr(fit_module, "_finite_source_refine", lambda theta, *a: calls.append(len(theta)) or original(theta, *a))
    rounded = espl_magnification(T, 30.0, 8.0, 0.005, 0.03)[None]
    mag, err, _ = _observe(rounded, 19.5, 0.6, seed=2)
    flux = 10 ** (-0.4 * (mag - np.nanmedian(mag)))
    fit = fit_pspl(T, flux, 0.4 * np.log(10) * flux * err, finite_source=True)
    assert calls == [1] and np.isfinite(fit["rho"][0])
    # a pulsating star (0.3 mag, 1.7 d) with a brightening the point-source fit takes for a peak:
    # misfit all season, so no finite-source refit (without the gate it would get one)
    pulsator = 10 ** (0.4 * 0.3 * np.sin(2 * np.pi * T / 1.7)) * pspl_magnification(T, 36.0, 5.0, 0.1)
    mag, err, _ = _observe(pulsator[None].astype(np.float64), 18.0, 1.0, seed=5)
    flux = 10 ** (-0.4 * (mag - np.nanmedian(mag)))
    for peak, expected in ((fit_module.FS_PEAK, []), (np.inf, [1])):
        monkeypatch.setattr(fit_module, "FS_PEAK", peak)
        calls.clear()
        fit = fit_pspl(T, flux, 0.4 * np.log(10) * flux * err, finite_source=True)
        assert calls == expected, (peak, calls)
    assert fit["u0"][0] < fit_module.FS_U0_MAX


def test_fit_refines_from_a_given_start_to_the_searched_fit():
    """start=: the fit refines an earlier solution (the features' fit to pre-binned epochs) on
    these epochs instead of searching: from 5% off in t0, tE and u0 it reaches the searched χ²."""
    t0, tE, u0 = np.array([30.0, 36.2]), np.array([0.15, 12.0]), np.array([0.1, 0.05])
    A = pspl_magnification(T, t0[:, None], tE[:, None], u0[:, None])
    mag, err, _ = _observe(A, 19.0, 0.5, seed=9)
    flux = 10 ** (-0.4 * (mag - np.nanmedian(mag, 1, keepdims=True)))
    ferr = 0.4 * np.log(10) * flux * err
    searched = fit_pspl(T, flux, ferr)
    start = {"t0": t0 + 0.05 * tE, "tE": 1.05 * tE, "u0": 0.95 * u0}
    refined = fit_pspl(T, flux, ferr, start=start)
    np.testing.assert_allclose(refined["chi2"], searched["chi2"], rtol=1e-4)
    np.testing.assert_allclose(refined["tE"], tE, rtol=0.05)
    lost = fit_pspl(T, flux, ferr, start={"t0": t0 + 20.0, "tE": tE, "u0": u0})   # no search: a start 20 d off
    assert lost["chi2"][0] > searched["chi2"][0] + 100                        # never finds the 0.15-day event


def test_ground_ceiling_is_computed_on_the_ground_versions(tmp_path, tiny_h5):
    """With survey_seed the Δχ² are those of the ground versions the model sees (the same
    epochs and reported errors as h5_features), kept apart from the dense ones and per seed."""
    import shutil
    import h5py
    from data.microlensing import _ground
    path = str(tmp_path / "tiny.h5")
    shutil.copy(tiny_h5, path)
    rows = np.arange(80)
    dense = ceiling.annotations(path, rows, progress=False)
    ground = ceiling.annotations(path, rows, progress=False, survey_seed=5)
    assert (tmp_path / "tiny.h5.dchi2_ground5.npz").is_file() and (tmp_path / "tiny.h5.dchi2.npz").is_file()
    with h5py.File(path, "r") as f:
        y = f["labels"][:]
        mag, err = _ground(f, 5, rows[y == 1], f["time"][:], f["mag"][rows[y == 1]], f["mag_err"][rows[y == 1]])
        direct = ceiling.event_dchi2(f["time"][:], mag, err, f["magnification"][rows[y == 1]], f["params"][rows[y == 1]])
    np.testing.assert_allclose(ground["dchi2_flat"][y == 1], direct["dchi2_flat"], rtol=1e-6)
    # a ground network sees fewer epochs: a PSPL event's distance from a flat star shrinks
    lensed = y == 1
    assert np.median(ground["dchi2_flat"][lensed]) < 0.5 * np.median(dense["dchi2_flat"][lensed])
    again = ceiling.annotations(path, rows, progress=False, survey_seed=5)
    np.testing.assert_array_equal(again["dchi2_flat"], ground["dchi2_flat"])
    other = ceiling.annotations(path, rows, progress=False, survey_seed=6)
    assert not np.allclose(other["dchi2_flat"][lensed], ground["dchi2_flat"][lensed])
