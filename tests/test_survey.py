"""Survey grid and the flux-based noise model."""
import numpy as np

from physics.microlensing.survey import (NoiseModel, Season, lensing_snr, min_detectable_magnification,
                                        model_magnitude, observe)


def test_season_grid():
    season = Season()
    t = season.times()
    assert len(t) == 6912 == season.n_epochs
    np.testing.assert_allclose(np.diff(t), 15 / 1440)
    assert t[0] == 0 and abs(t[-1] + season.dt - 72.0) < 1e-9


def test_error_at_21_mag_is_about_a_hundredth():
    noise = NoiseModel()
    err = noise.mag_error(noise.counts(21.0))
    assert 0.008 < err < 0.012, err
    # fainter stars are noisier, and the floor bounds bright ones from below
    assert noise.mag_error(noise.counts(23.0)) > err > noise.mag_error(noise.counts(18.0)) >= noise.floor_mag


def test_noise_chi2_and_missing_fraction():
    rng = np.random.default_rng(1)
    noise, season = NoiseModel(), Season()
    n, T = 200, season.n_epochs
    m_base = rng.uniform(18, 24, n)
    fs = rng.uniform(0.1, 1, n)
    A = 1 + rng.uniform(0, 5, (n, 1)) * np.exp(-np.linspace(-3, 3, T) ** 2)[None]
    observed = rng.random((n, T)) >= season.missing_fraction
    mag, err = observe(rng, noise, m_base, fs, A, observed)
    assert mag.dtype == np.float32 and err.dtype == np.float32
    assert np.array_equal(np.isnan(mag), ~observed) and np.array_equal(np.isnan(err), ~observed)
    assert abs((~observed).mean() - 0.05) < 0.002
    resid = (mag - model_magnitude(m_base[:, None], fs[:, None], A)) / err
    chi2 = np.nanmean(resid ** 2)
    assert 0.97 < chi2 < 1.03, chi2
    assert abs(np.nanmean(resid)) < 0.01


def test_lensing_signal_and_detection_threshold():
    noise = NoiseModel()
    m_base, fs = np.array([18.0, 21.0, 23.5]), np.array([1.0, 0.5, 0.1])
    assert np.all(lensing_snr(noise, m_base, fs, np.ones((3, 4))) == 0)
    threshold = min_detectable_magnification(noise, m_base, fs, 5.0)
    assert np.all(threshold > 1) and threshold[0] < threshold[1] < threshold[2]
    # the closed form is where the per-epoch S/N crosses 5
    snr = lensing_snr(noise, m_base, fs, threshold[:, None] * np.array([[1 - 1e-9, 1.0, 1 + 1e-9]]))
    np.testing.assert_allclose(snr[:, 1], 5.0, rtol=1e-9)
    assert np.all(snr[:, 0] < 5) and np.all(snr[:, 2] > 5)
