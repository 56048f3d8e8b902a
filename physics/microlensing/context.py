"""The seasons around an event's season: the star's light curve over years (the context).

One 72-day season cannot tell a long-period variable's trend from a long event's rise, nor a
long event from a slope: a survey can, because it has watched the star for years. The simulator
therefore also records each star over `CONTEXT_DAYS` centred on the event's season (the season
the detectability cut and the dense photometry are about), one epoch per day: the curve sampled
at the day's centre with the noise of the mean of that day's exposures (`day_noise`). The file
holds every day (`context_time`, `context_mag`, `context_err`); which days a survey saw is
chosen when features are made, per curve and seeded, so one file gives Roman-like and
ground-like versions:

- `roman_days`: Roman's Galactic Bulge survey, six 72-day seasons, three half a year apart at the
  start of the mission and three at its end (`ROMAN_SEASON_STARTS`, days from the first); the
  event's season is any of the six, so 2-3 others fall within the context;
- `ground_days`: a ground survey's bulge seasons, 200-270 days a year (the event's season inside
  one of them), each night kept with a per-curve probability of 0.1-1 (cadence and weather);
- either way, with probability `SINGLE_SEASON` the file holds the event's season only, as many
  published files do (and as `ulwdc1_*_season1` does).

A real file's own epochs are its context (data/lightcurves.py bins them the same way).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from physics.microlensing.binary import full_binary_curve

CONTEXT_DAYS = 1920.0     # span of the context, centred on the event's season (about 5 years)
CONTEXT_STEP = 1.0        # days between context epochs (one per day)
ROMAN_SEASON_STARTS = (0.0, 182.6, 365.25, 1278.4, 1461.0, 1643.6)  # d: 3 seasons, 2.5 years, 3 seasons
GROUND_SEASON = (200.0, 270.0)   # days a year the bulge is observed from the ground
GROUND_NIGHTS = (0.1, 1.0)       # share of nights with an epoch, log-uniform per curve
SINGLE_SEASON = 0.2              # probability that a file holds the event's season only


def context_times(season_days: float, span: float = CONTEXT_DAYS, step: float = CONTEXT_STEP) -> np.ndarray:
    """(Lc,) day centres over `span` days centred on the season [0, season_days]."""
    centre = season_days / 2.0
    return np.arange(-span / 2.0, span / 2.0, step) + centre + step / 2.0


def day_noise(noise, season):
    """The noise model of one day's mean: the day's exposures (the season's cadence, less the
    missed ones) added, so photon, sky and read noise fall as 1/sqrt(k); the floor stays."""
    k = (CONTEXT_STEP * 1440.0 / season.cadence_min) * (1.0 - season.missing_fraction)
    return replace(noise, exposure_s=noise.exposure_s * k, read_noise=noise.read_noise * np.sqrt(k))


def _single(rng, t, season_days):
    if rng.random() < SINGLE_SEASON:
        return (t >= 0.0) & (t < season_days)
    return None


def roman_days(rng, t, season_days: float) -> np.ndarray:
    """(Lc,) bool: the context days a Roman-like survey observed (see module docstring)."""
    t = np.asarray(t)
    single = _single(rng, t, season_days)
    if single is not None:
        return single
    starts = np.asarray(ROMAN_SEASON_STARTS) - ROMAN_SEASON_STARTS[int(rng.integers(len(ROMAN_SEASON_STARTS)))]
    seen = np.zeros(len(t), bool)
    for s in starts:
        seen |= (t >= s) & (t < s + season_days)
    return seen


def ground_days(rng, t, season_days: float) -> np.ndarray:
    """(Lc,) bool: the context days a ground survey observed (see module docstring)."""
    t = np.asarray(t)
    single = _single(rng, t, season_days)
    length = rng.uniform(*GROUND_SEASON)
    offset = rng.uniform(0.0, max(length - season_days, 0.0))   # the event's season inside a bulge season
    p_night = np.exp(rng.uniform(np.log(GROUND_NIGHTS[0]), np.log(GROUND_NIGHTS[1])))
    nights = rng.random(len(t)) < p_night
    if single is not None:
        return single & nights
    return (np.mod(t + offset, 365.25) < length) & nights


def binary_context(vbbl, t, p, single):
    """(Lc,) binary magnification on the context days: VBBinaryLensing's finite-source light curve
    where the source is within s + 1/s + 3 Einstein radii of the lens's centre of mass, the
    single lens `single` (the same t0, tE, u0, rho) farther out, where the two agree to < 1e-3."""
    out = np.array(single, dtype=np.float64)
    tau = (np.asarray(t) - p["t0"]) / p["tE"]
    near = np.hypot(tau, p["u0"]) < p["s"] + 1.0 / p["s"] + 3.0
    if near.any():
        out[near] = full_binary_curve(vbbl, np.asarray(t)[near], p["s"], p["q"], p["u0"], p["alpha"], p["rho"],
                                      p["tE"], p["t0"])
    return out
