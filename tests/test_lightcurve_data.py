"""Photometry readers and the feature code shared by simulated and real curves; the RAM cache."""
import gzip
import os

import numpy as np
import pytest

from data import microlensing as task_data
from data.cache import SharedArrays
from data.lightcurves import feature_stats, grid_size, light_curve_features
from data.photometry import PhotometryError, read_photometry, season_window
from engine.distributed import DistInfo
from tests.conftest import SAMPLES

GRID = {"season_days": 72.0, "bin_minutes": 120.0, "n_bins": 864, "bin_days": 120 / 1440}


@pytest.mark.skipif(not os.path.isdir(SAMPLES), reason="the shared real samples are not next to this clone "
                    "(set LENSING_SAMPLES); tests/conftest.py's look-alikes cover the formats")
def test_samples_read():
    t, m, e = read_photometry(os.path.join(SAMPLES, "ob140939_OGLE.dat"))
    assert len(t) == 485 and 5000 < t[0] < 10000  # BJD converted to HJD-2450000
    assert np.all(np.diff(t) >= 0) and np.all(e > 0)
    t, m, e = read_photometry(os.path.join(SAMPLES, "ulwdc1_012_W149_season1.txt.gz"))
    assert len(t) > 6000 and 71 < t[-1] - t[0] < 73


def test_time_conventions_and_formats_agree(tmp_path):
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 60, 300))
    m = 19 + 0.01 * rng.standard_normal(300)
    e = np.full(300, 0.01)
    (tmp_path / "hjd.dat").write_text("# HJD mag err\n" + "\n".join(f"{2458000 + a:.6f} {b:.5f} {c} 1.0 77" for a, b, c in zip(t, m, e)))
    (tmp_path / "short.txt").write_text("\n".join(f"{8000 + a:.6f},{b:.5f},{c}" for a, b, c in zip(t, m, e)))
    ipac = "\\fixlen = T\n|  hjd   |  mag  |  err |\n|  double | double | double |\n"
    ipac += "\n".join(f" {2458000 + a:.6f} {b:.5f} {c}" for a, b, c in zip(t, m, e))
    (tmp_path / "table.tbl").write_text(ipac)
    with gzip.open(tmp_path / "z.dat.gz", "wt") as f:
        f.write("time mag err\n" + "\n".join(f"{8000 + a:.6f} {b:.5f} {c}" for a, b, c in zip(t, m, e)))
    feats = [task_data.file_features(str(tmp_path / n), GRID, progress=False)[0]
             for n in ("hjd.dat", "short.txt", "table.tbl", "z.dat.gz")]
    for f in feats[1:]:
        np.testing.assert_allclose(f.astype(np.float32), feats[0].astype(np.float32), atol=1e-3)
    assert feats[0][0, :, 3].sum() > 100


def test_bad_photometry(tmp_path):
    (tmp_path / "nan.dat").write_text("1 nan 0.1\n2 nan 0.1\n3 19 nan\n")
    with pytest.raises(PhotometryError, match="nan.dat: 0 usable epochs"):
        read_photometry(tmp_path / "nan.dat")
    (tmp_path / "empty.dat").write_text("")
    with pytest.raises(PhotometryError, match="empty.dat: no data rows"):
        read_photometry(tmp_path / "empty.dat")
    (tmp_path / "two.dat").write_text("1 19\n2 19\n")
    with pytest.raises(PhotometryError, match="2 columns"):
        read_photometry(tmp_path / "two.dat")


def test_simulated_row_as_text_gives_the_same_features(tmp_path, tiny_h5):
    """A simulated event written out as photometry goes through the same features as in the HDF5."""
    from data import microlensing_h5 as mlh5
    d = mlh5.load(tiny_h5)
    row = next(i for i in range(len(d["labels"])) if np.isfinite(d["mag"][i, 0]) and d["labels"][i] == 2)
    ok = np.isfinite(d["mag"][row])
    path = tmp_path / "event.dat"
    np.savetxt(path, np.c_[d["time"][ok] + 2459000.0, d["mag"][row, ok], d["mag_err"][row, ok]], fmt="%.7f")
    real, _, _ = task_data.file_features(str(path), GRID, progress=False)
    sim, labels, _ = task_data.h5_features(tiny_h5, GRID, [row], progress=False)
    np.testing.assert_allclose(real.astype(np.float32), sim.astype(np.float32), atol=2e-3)


def test_features_follow_physics():
    """Channel 0 is log10 of flux over baseline: a known magnification is recovered."""
    n_bins, bin_days = grid_size(72.0, 120.0)
    t = np.arange(0, 72, 15 / 1440)
    A = np.ones_like(t)
    A[(t > 30) & (t < 31)] = 4.0
    mag = 20 - 2.5 * np.log10(A)
    f = light_curve_features(t, mag[None], np.full((1, len(t)), 0.01), 0.0, n_bins, bin_days)[0]
    assert f[:, 3].all()
    peak = f[int(30.5 / bin_days), 0]
    assert abs(peak - np.log10(4.0)) < 1e-6
    assert abs(np.median(f[:, 0])) < 1e-9
    late = t > 36
    mag_cut = np.where(late, np.nan, mag)
    g = light_curve_features(t, mag_cut[None], np.full((1, len(t)), 0.01), 0.0, n_bins, bin_days)[0]
    assert g[int(36 / bin_days) + 1:].sum() == 0 and g[:int(36 / bin_days), 3].all()


def test_residual_features_show_an_anomaly_and_not_a_single_lens():
    """pspl_residual channels: pulls from the best point-lens fit are noise for a single lens
    and large where a short anomaly sits on it; the fitted shape follows the magnification."""
    import torch

    from data.lightcurves import normalize
    from physics.microlensing.single import pspl_magnification
    rng = np.random.default_rng(0)
    n_bins, bin_days = grid_size(72.0, 120.0)
    t = np.arange(0, 72, 15 / 1440)
    A = pspl_magnification(t, 36.0, 12.0, 0.1)
    anomaly = A * (1 + 0.05 * np.exp(-0.5 * ((t - 40.0) / 0.15) ** 2))   # a 5% bump of a few hours
    mags = 20 - 2.5 * np.log10(np.stack([A, anomaly])) + 0.005 * rng.standard_normal((2, len(t)))
    f = light_curve_features(t, mags, np.full((2, len(t)), 0.005), 0.0, n_bins, bin_days, residuals="pspl")
    assert f.shape == (2, n_bins, 6)
    near = slice(int(39.5 / bin_days), int(40.5 / bin_days))
    pulls = np.sinh(f[..., 4])
    assert np.sqrt(np.mean(pulls[0] ** 2)) < 1.5            # single lens: residuals are noise
    assert np.abs(pulls[1, near]).max() > 10                 # the anomaly stands out by > 10 sigma
    assert np.abs(np.delete(pulls[1], np.r_[near], axis=0)).max() < 6
    peak = int(36.0 / bin_days)
    assert abs(f[0, peak, 5] - np.log10(A[int(36.0 / (15 / 1440))])) < 0.02  # the fitted shape
    stats = feature_stats(f)
    assert len(stats["mean"]) == 5
    x = normalize(torch.from_numpy(f), stats)
    assert torch.equal(x[..., 3], torch.from_numpy(f[..., 3]))  # the mask is kept as it is


def test_finite_source_residual_features_do_not_flag_a_rounded_peak():
    """fspl_residual: a single lens crossing a large source leaves noise pulls (the point-source
    residuals show it at > 10 sigma), while a short anomaly on a single lens still stands out."""
    from physics.microlensing.single import espl_magnification, pspl_magnification
    rng = np.random.default_rng(1)
    n_bins, bin_days = grid_size(72.0, 120.0)
    t = np.arange(0, 72, 15 / 1440)
    A = espl_magnification(t, 36.0, 12.0, 0.004, 0.03)
    anomaly = pspl_magnification(t, 36.0, 12.0, 0.1) * (1 + 0.05 * np.exp(-0.5 * ((t - 40.0) / 0.15) ** 2))
    mags = 20 - 2.5 * np.log10(np.stack([A, anomaly])) + 0.005 * rng.standard_normal((2, len(t)))
    err = np.full((2, len(t)), 0.005)
    point = np.sinh(light_curve_features(t, mags, err, 0.0, n_bins, bin_days, residuals="pspl")[..., 4])
    finite = np.sinh(light_curve_features(t, mags, err, 0.0, n_bins, bin_days, residuals="fspl")[..., 4])
    assert np.abs(point[0]).max() > 10
    assert np.sqrt(np.mean(finite[0] ** 2)) < 1.5 and np.abs(finite[0]).max() < 6
    assert np.abs(finite[1, int(39.5 / bin_days):int(40.5 / bin_days)]).max() > 10
    with pytest.raises(ValueError, match="unknown single-lens fit"):
        light_curve_features(t, mags, err, 0.0, n_bins, bin_days, residuals="binary")


def test_residual_features_of_empty_and_unobserved_curves_are_zero():
    t = np.arange(0, 72, 15 / 1440)
    mag = np.full((2, len(t)), np.nan)
    mag[1, t < 5] = 19.0                                     # one curve seen only for 5 days
    f = light_curve_features(t, mag, np.full_like(mag, 0.01), 0.0, 864, 120 / 1440, residuals="pspl")
    assert np.isfinite(f).all() and not f[0].any() and f[1, :, 3].sum() == 60
    empty = light_curve_features(t[:0], mag[:, :0], mag[:, :0], 0.0, 864, 120 / 1440, residuals="pspl")
    assert empty.shape == (2, 864, 6) and not empty.any()


def test_window_of_a_long_curve():
    t = np.arange(0, 2000, 1.0)
    m = np.full(len(t), 18.0)
    m[1500:1510] = 15.0
    m[200] = 10.0  # a single outlier does not move the window
    start = season_window(t, m, 72.0)
    assert start <= 1500 and start + 72 >= 1510


def test_shared_cache_builds_once_and_is_read_only(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"features": np.arange(12, dtype=np.float16).reshape(3, 4), "labels": np.array([0, 1, 2])}
    a = SharedArrays("k", build, DistInfo(), str(tmp_path))
    b = SharedArrays("k", build, DistInfo(local_rank=1, rank=1), str(tmp_path))
    assert calls == [1]
    assert np.array_equal(a["features"], b["features"]) and not b["features"].flags.writeable
    st = feature_stats(np.dstack([np.ones((2, 5, 3)), np.ones((2, 5, 1))]))
    assert st["std"] == [1.0, 1.0, 1.0]  # constant channels are left unscaled
    a.remove()
    assert not os.path.exists(tmp_path / "k")


def test_quiet_curves_are_not_fitted_and_events_are():
    """A survey stream is mostly constant stars: curves with no brightening (fewer than 3 bins 5
    errors above their 10th percentile) skip the lens fit, their model being their mean flux;
    a faint short event or a long trend is still fitted. Runs made before (no quiet_sigma in
    their grid) fit every curve."""
    from data.lightcurves import grid_features
    from physics.microlensing.single import pspl_magnification
    rng = np.random.default_rng(5)
    t = np.arange(0, 72, 15 / 1440)
    A = np.stack([np.ones_like(t), np.ones_like(t), pspl_magnification(t, 30.0, 0.4, 0.5),
                  pspl_magnification(t, -40.0, 150.0, 0.8)])
    sigma = 0.01
    mag = 20 - 2.5 * np.log10(0.3 * A + 0.7) + sigma * rng.standard_normal(A.shape)
    err = np.full_like(mag, sigma)
    grid = {**GRID, "features": "fspl_residual", "scaled_bins": 64, "scaled_span": 4.0}
    fast = grid_features(t, mag, err, 0.0, {**grid, "quiet_sigma": 5.0})
    full = grid_features(t, mag, err, 0.0, grid)
    assert fast.shape == full.shape == (4, 864 + 64, 6)
    for i in (0, 1):  # flat: no scaled view, no fitted shape, residuals against the mean flux
        assert fast[i, 864:, 3].sum() == 0 and np.abs(fast[i, :864, 5]).max() < 1e-6
        pulls = np.sinh(fast[i, :864, 4][fast[i, :864, 3] > 0].astype(np.float64))  # channel 4 is asinh(pull)
        assert abs(pulls.mean()) < 0.1 and 0.8 < pulls.std() < 1.2
    for i in (2, 3):  # events: fitted as before
        np.testing.assert_allclose(fast[i], full[i], rtol=1e-3, atol=1e-3)  # (batched solves may round apart)
        assert fast[i, 864:, 3].sum() > 0


def test_data_notes_say_what_limits_a_prediction(tmp_path):
    """A file of one night, constant magnitudes, or an episode at the edge of the data is
    predicted with the reason in its note (predict.py's `note` column), never an error."""
    from data.photometry import data_notes
    rng = np.random.default_rng(1)
    night = np.sort(rng.uniform(0, 0.3, 40))
    assert "h of data" in data_notes(night, 19 + 0.01 * rng.standard_normal(40))
    t = np.arange(0, 300, 0.5)
    assert data_notes(t, np.full(len(t), 19.0)) == "constant magnitudes"
    rising = 19 + 0.01 * rng.standard_normal(len(t))
    rising[-5:] -= np.linspace(0.2, 1.0, 5)
    assert "edge of the data" in data_notes(t, rising)
    middle = 19 - np.exp(-0.5 * ((t - 150) / 5) ** 2) + 0.01 * rng.standard_normal(len(t))
    assert data_notes(t, middle) == ""
    np.savetxt(tmp_path / "edge.dat", np.c_[t + 8000, rising, np.full(len(t), 0.01)], fmt="%.5f")
    _, _, infos = task_data.file_features(str(tmp_path / "edge.dat"), GRID, progress=False)
    assert "edge of the data" in infos[0]["note"]


def test_nanpercentile_rows_is_numpys():
    from data.lightcurves import nanpercentile_rows
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 41))
    x[rng.random(x.shape) < 0.7] = np.nan
    x[0], x[1, 1:] = np.nan, np.nan                                   # no value; one value
    x[2, 3] = np.inf
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):    # numpy warns of the all-NaN row
        for q in (0, 10, 25, 50, 100):
            np.testing.assert_allclose(nanpercentile_rows(x, q), np.nanpercentile(x, q, axis=1, keepdims=True),
                                       rtol=1e-12, equal_nan=True)
    assert nanpercentile_rows(x[:, :0], 50).shape == (60, 1)


def test_fit_pre_bins_keep_every_timescale_and_the_context():
    """The single-lens fit sees the epochs pre-binned (30 min in the window, a day near it, 5 days
    beyond) and its model is then evaluated at every epoch: single lenses from 0.15 to 100 days,
    peaking inside the window or 5 days after it, leave noise-level residuals in the window's and
    the context's bins."""
    from data.lightcurves import FIT_BIN_DAYS, fit_bins, bin_light_curves
    from physics.microlensing.single import pspl_magnification
    t = np.arange(0, 72, 15 / 1440)
    t_c = np.arange(-900.0, 972.0, 1.0)
    index, n = fit_bins(np.concatenate([t, t_c[(t_c < 0) | (t_c >= 72)]]), 0.0, 72.0)
    width = np.bincount(index)
    assert n == index.max() + 1 and np.all(np.diff(index[:len(t)]) >= 0)
    assert np.all(width[index[:len(t)]] == 2)                          # two 15-min epochs per 30-min bin
    assert len(np.unique(index[:len(t)])) == int(72 / FIT_BIN_DAYS[0])
    assert n < len(t) / 2 + 40 + 2 * 900 / 5 + 2                       # 3,456 + 40 daily + 5-day bins
    t0, tE, u0 = np.array([36.0, 20.0, 50.0, 77.0]), np.array([0.15, 3.0, 100.0, 8.0]), np.array([0.1, 0.3, 0.2, 0.3])
    rng = np.random.default_rng(2)
    err = 0.01
    def mags(tt):
        return 19 - 2.5 * np.log10(pspl_magnification(tt, t0[:, None], tE[:, None], u0[:, None])) \
            + err * rng.standard_normal((4, len(tt)))
    context = (t_c, mags(t_c), np.full((4, len(t_c)), err), 128, 15.0)
    n_bins, bin_days = grid_size(72.0, 120.0)
    out = bin_light_curves(t, mags(t), np.full((4, len(t)), err), 0.0, n_bins, bin_days, fit_model="fspl",
                           context=context)
    binned, binned_err, observed, model = out[:4]
    pull = np.where(observed, (binned - model) / binned_err, 0.0)
    assert np.all(np.sqrt((pull ** 2).sum(1) / observed.sum(1)) < 1.3), (pull ** 2).sum(1) / observed.sum(1)
    c_flux, c_err, c_obs, c_model = out[5]
    c_pull = np.where(c_obs, (c_flux - c_model) / c_err, 0.0)
    assert np.all(np.sqrt((c_pull ** 2).sum(1) / c_obs.sum(1)) < 1.3), (c_pull ** 2).sum(1) / c_obs.sum(1)
