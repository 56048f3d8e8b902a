"""Roman-like survey: the season's time grid and a flux-based photometric noise model.

Magnitudes are AB in the W146 (F146) band. Fluxes are in detected photo-electrons per
exposure. The noise budget per epoch is the photon noise of source + blend + sky inside
the PSF footprint, read noise, and a systematic floor added in quadrature in magnitudes.
The defaults give ~0.01 mag per epoch at 21 mag (tests/test_survey.py checks it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAG_PER_LN = 2.5 / np.log(10.0)  # d(mag) / d(ln flux)


@dataclass(frozen=True)
class Season:
    """One observing season: a uniform grid of epochs, some of which are missed at random."""

    length_days: float = 72.0
    cadence_min: float = 15.0
    missing_fraction: float = 0.05

    @property
    def dt(self) -> float:
        """Days between epochs."""
        return self.cadence_min / 1440.0

    @property
    def n_epochs(self) -> int:
        return int(round(self.length_days / self.dt))

    def times(self) -> np.ndarray:
        """(T,) float64 days since the season start: 72 d at 15 min -> 6,912 epochs."""
        return np.arange(self.n_epochs, dtype=np.float64) * self.dt


@dataclass(frozen=True)
class NoiseModel:
    """Per-epoch photometric errors of a Roman-like W146 exposure.

    zero_point: AB magnitude giving 1 e-/s; exposure_s: seconds per epoch; psf_pixels:
    effective PSF footprint (pixels) over which sky and read noise add; sky_rate: sky plus
    unresolved-star background, e-/s/pixel (the bulge is crowded); read_noise: e- per pixel;
    floor_mag: systematic floor, mag.
    """

    zero_point: float = 27.6
    exposure_s: float = 46.8
    psf_pixels: float = 4.0
    sky_rate: float = 57.0
    read_noise: float = 16.0
    floor_mag: float = 0.003

    def counts(self, mag):
        """Expected photo-electrons per exposure of a source of AB magnitude `mag`."""
        return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - self.zero_point)) * self.exposure_s

    @property
    def background_variance(self) -> float:
        """Sky and read-noise variance inside the PSF footprint, e-^2."""
        return self.psf_pixels * (self.sky_rate * self.exposure_s + self.read_noise ** 2)

    def flux_sigma(self, counts):
        """1-sigma noise (e-) of a measured flux of `counts` e- (photon + sky + read);
        keeps the dtype of float arrays."""
        counts = np.asarray(counts)
        return np.sqrt(counts + counts.dtype.type(self.background_variance)) if counts.dtype.kind == "f" \
            else np.sqrt(counts + self.background_variance)

    def mag_error(self, counts):
        """Total magnitude error at `counts` e-: photometric noise and floor in quadrature."""
        return np.hypot(MAG_PER_LN * self.flux_sigma(counts) / counts, self.floor_mag)


def model_magnitude(m_base, fs, magnification):
    """Noise-free magnitude: m_base - 2.5 log10(fs A + 1 - fs).

    m_base: baseline magnitude of source + blend; fs: source flux fraction at baseline.
    Broadcasts (N, 1) parameters against (N, T) magnifications.
    """
    return m_base - 2.5 * np.log10(fs * magnification + (1.0 - fs))


def observe(rng, noise: NoiseModel, m_base, fs, magnification, observed):
    """Noisy photometry of N events on the season grid.

    m_base, fs: (N,); magnification: (N, T); observed: (N, T) bool, False at missed epochs.
    Returns float32 (mag, mag_err), each (N, T), NaN where not observed (or where the noisy
    flux is not positive: no detection). The flux noise is Gaussian in e- (source + blend +
    sky + read), the floor Gaussian in mag. Computed in float32, in place, for speed.
    """
    n, T = magnification.shape
    base = noise.counts(np.asarray(m_base, dtype=np.float64))[:, None]     # (N, 1) e-
    fs = np.asarray(fs, dtype=np.float64)[:, None]
    counts = np.asarray(magnification, dtype=np.float32) * (base * fs).astype(np.float32)
    counts += (base * (1.0 - fs)).astype(np.float32)                       # (N, T) expected e-
    sigma = noise.flux_sigma(counts)                                        # float32
    z = rng.standard_normal((2, n, T), dtype=np.float32)
    observed_flux = np.multiply(sigma, z[0], out=z[0])
    observed_flux += counts
    missing = ~observed | (observed_flux <= 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = np.log10(observed_flux, out=observed_flux)
    mag *= np.float32(-2.5)
    mag += np.float32(noise.zero_point + 2.5 * np.log10(noise.exposure_s))
    mag += np.float32(noise.floor_mag) * z[1]
    mag_err = np.divide(sigma, counts, out=sigma)
    mag_err *= np.float32(MAG_PER_LN)
    mag_err = np.hypot(mag_err, np.float32(noise.floor_mag), out=mag_err)
    mag[missing] = np.nan
    mag_err[missing] = np.nan
    return mag, mag_err


def min_detectable_magnification(noise: NoiseModel, m_base, fs, min_snr: float):
    """Smallest magnification whose lensing signal reaches `min_snr` sigma at one epoch.

    The signal is the source's flux excess over baseline, F_s (A - 1), against the noise of
    the magnified total flux; solving F_s^2 x^2 = k^2 (F_base + F_s x + background) for
    x = A - 1. m_base, fs: (N,) -> (N,) float64.
    """
    base = noise.counts(np.asarray(m_base, dtype=np.float64))
    source = np.asarray(fs, dtype=np.float64) * base
    var0 = noise.flux_sigma(base) ** 2                # noise variance at baseline
    k2 = min_snr ** 2
    x = (k2 * source + np.sqrt(k2 ** 2 * source ** 2 + 4.0 * k2 * source ** 2 * var0)) / (2.0 * source ** 2)
    return 1.0 + x


def lensing_snr(noise: NoiseModel, m_base, fs, magnification):
    """Signal-to-noise of the lensing signal per epoch, F_s (A - 1) / sigma(F).

    m_base, fs: (N,); magnification: (N, T). Returns (N, T) float64.
    """
    base = noise.counts(np.asarray(m_base, dtype=np.float64))[:, None]
    fs = np.asarray(fs, dtype=np.float64)[:, None]
    counts = base * (fs * magnification + (1.0 - fs))
    return base * fs * (magnification - 1.0) / noise.flux_sigma(counts)
