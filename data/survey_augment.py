"""Ground-survey photometry (OGLE / MOA / KMTNet-like) made from dense simulated seasons.

A Roman season is dense and regular. Ground surveys observe at night from one to three sites,
lose nights to weather, sample an event from once a night to every few minutes, and report
errors that are under- or over-estimated, with outliers. `ground_survey` turns one simulated
curve into such a curve:

1. sites: 1-3 observatories at random longitudes, nights of 6-10 h; an epoch is observable if
   it falls in a night at one of them;
2. weather: each site-night lost with a probability of 10-50%, and with probability 0.3 a run
   of 2-8 days lost at every site (bad weather, downtime);
3. cadence: 0.25-40 epochs per night and site (log-uniform per site; below 1, one night in 1/x
   has an epoch: OGLE-II's and OGLE-IV's low-cadence bulge fields, 28-33 epochs in 72 days in the
   shared OGLE variables' files, ~0.25 a night in the OGLE-II events'), epochs kept at random;
4. noise: extra scatter of 0-0.02 mag in quadrature (ground photometry is poorer than Roman's
   at the same magnitude), included in the errors;
5. errors: the reported errors are the true ones times a factor of 0.5-2 per site
   (log-uniform): under- and over-estimated errors, as real pipelines give;
6. outliers: 0-2% of epochs moved by 5-20 reported sigma.

The time grid, the label and the event are unchanged (epochs are only removed), so the peak
never leaves the window. A lensed curve that loses every epoch where its lensing signal is
significant is drawn again (up to 10 times, then kept dense), so labels stay meaningful.
"""
from __future__ import annotations

import numpy as np

N_SITES = (1, 3)
NIGHT_HOURS = (6.0, 10.0)
NIGHT_LOSS = (0.1, 0.5)
GAP_PROBABILITY, GAP_DAYS = 0.3, (2.0, 8.0)
PER_NIGHT = (0.25, 40.0)
EXTRA_SCATTER = (0.0, 0.02)
ERROR_FACTOR = (0.5, 2.0)
OUTLIERS = (0.0, 0.02)
OUTLIER_SIGMA = (5.0, 20.0)
MIN_SIGNIFICANT = 3  # epochs with a significant lensing signal a lensed curve must keep


def _sampling(rng, time):
    """(L,) bool: the epochs a random ground network observes; (L,) site index of each."""
    n_sites = rng.integers(N_SITES[0], N_SITES[1] + 1)
    keep = np.zeros(len(time), bool)
    site_of = np.full(len(time), -1)
    dt = np.median(np.diff(time)) if len(time) > 1 else 1.0
    gap = None
    if rng.random() < GAP_PROBABILITY:
        start = rng.uniform(time[0], time[-1])
        gap = (start, start + rng.uniform(*GAP_DAYS))
    for site in range(n_sites):
        phase = rng.uniform(0.0, 1.0)
        night = rng.uniform(*NIGHT_HOURS) / 24.0
        local = time + phase
        in_night = (local % 1.0) < night
        night_index = np.floor(local).astype(np.int64)
        nights = np.unique(night_index)
        lost = nights[rng.random(len(nights)) < rng.uniform(*NIGHT_LOSS)]
        available = in_night & ~np.isin(night_index, lost)
        per_night = np.exp(rng.uniform(np.log(PER_NIGHT[0]), np.log(PER_NIGHT[1])))
        p = min(1.0, per_night * dt / night)
        chosen = available & (rng.random(len(time)) < p) & ~keep
        keep |= chosen
        site_of[chosen] = site
    if gap is not None:
        keep &= ~((time >= gap[0]) & (time < gap[1]))
    return keep, site_of


def _with_outliers(rng, mag, reported, keep=True):
    """mag with OUTLIERS (a per-curve share) of the epochs in `keep` moved by OUTLIER_SIGMA
    reported errors, up or down."""
    n = len(mag)
    outlier = keep & (rng.random(n) < rng.uniform(*OUTLIERS))
    return mag + outlier * rng.choice([-1.0, 1.0], n) * rng.uniform(*OUTLIER_SIGMA, n) * reported


def ground_survey(rng, time, mag, mag_err, significant=None):
    """One ground-survey version of a dense curve: copies of mag, mag_err (L,) float32, NaN where
    not observed. significant: (L,) bool, epochs with a significant lensing signal (None for
    unlensed curves)."""
    time = np.asarray(time, dtype=np.float64)
    mag = np.asarray(mag, dtype=np.float32)
    err = np.asarray(mag_err, dtype=np.float32)
    seen = np.isfinite(mag) & np.isfinite(err)
    for _ in range(10):
        keep, site = _sampling(rng, time)
        keep &= seen
        if significant is None or (keep & significant).sum() >= MIN_SIGNIFICANT or significant.sum() < MIN_SIGNIFICANT:
            break
    else:
        return mag.copy(), err.copy()
    n = len(time)
    extra = rng.uniform(*EXTRA_SCATTER)
    true_err = np.sqrt(err.astype(np.float64) ** 2 + extra ** 2)
    out_mag = mag + extra * rng.standard_normal(n)
    factors = np.exp(rng.uniform(np.log(ERROR_FACTOR[0]), np.log(ERROR_FACTOR[1]), N_SITES[1]))
    reported = true_err * factors[np.maximum(site, 0)]
    out_mag = np.where(keep, _with_outliers(rng, out_mag, reported, keep), np.nan).astype(np.float32)
    return out_mag, np.where(keep, reported, np.nan).astype(np.float32)


def ground_block(seed: int, rows, time, mag, mag_err, significant):
    """Ground-survey versions of a block of curves (N, L); row r's randomness depends only on
    (seed, r), so a row gets the same version however the file is read."""
    out_m = np.empty_like(np.asarray(mag, dtype=np.float32))
    out_e = np.empty_like(out_m)
    for k, r in enumerate(rows):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7, int(r))))
        sig = significant[k] if significant is not None and significant[k].any() else None
        out_m[k], out_e[k] = ground_survey(rng, time, mag[k], mag_err[k], sig)
    return out_m, out_e


CONTEXT_PER_NIGHT = (1.0, 10.0)  # ground epochs averaged into one night of the context, log-uniform per curve


def context_block(seed, rows, time, mag, mag_err, season_days: float, ground: bool):
    """The context days (physics/microlensing/context.py) a survey saw of a block of curves:
    copies of mag, mag_err (N, Lc) with NaN on the days it did not see. Dense (Roman): the six
    seasons' schedule; ground: bulge seasons, nights kept at the curve's rate, each night the mean
    of 1-10 ground epochs (the dense day's error scaled by sqrt(day's exposures / n)), with the
    main curves' extra scatter, error rescaling and outliers. Row r's version is fixed by
    (seed, r) and independent of its season's ground version."""
    from physics.microlensing.context import ground_days, roman_days
    from physics.microlensing.survey import Season
    per_day = 1440.0 / Season().cadence_min * (1.0 - Season().missing_fraction)
    time = np.asarray(time, dtype=np.float64)
    out_m = np.array(mag, dtype=np.float32, copy=True)
    out_e = np.array(mag_err, dtype=np.float32, copy=True)
    for k, r in enumerate(rows):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(10 if ground else 11, int(r))))
        if not ground:
            seen = roman_days(rng, time, season_days)
        else:
            seen = ground_days(rng, time, season_days)
            n_night = np.exp(rng.uniform(*np.log(CONTEXT_PER_NIGHT)))
            extra = rng.uniform(*EXTRA_SCATTER)
            true_err = np.hypot(out_e[k].astype(np.float64) * np.sqrt(per_day / n_night), extra)
            noisy = out_m[k] + np.sqrt(np.maximum(true_err ** 2 - out_e[k].astype(np.float64) ** 2, 0.0)) \
                * rng.standard_normal(len(time))
            reported = true_err * np.exp(rng.uniform(np.log(ERROR_FACTOR[0]), np.log(ERROR_FACTOR[1])))
            out_m[k], out_e[k] = _with_outliers(rng, noisy, reported), reported
        out_m[k, ~seen] = np.nan
        out_e[k, ~seen] = np.nan
    return out_m, out_e
