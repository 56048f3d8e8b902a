"""Non-lensing variable stars a survey records beside microlensing events (class `variable`).

Each kind is a source-flux factor V(t) >= 0 (V = 1: the star at rest), applied to the source
exactly as a magnification is, so a variable goes through the same stars, blending, noise and
missing epochs as a lensing event: observed flux = F_base (fs V(t) + 1 - fs). Ranges follow
`../shared/REFERENCE.md` ("Non-lensing variables"); amplitudes overlap those of lensing events
(a 0.1-6 mag brightening), so only the shape tells them apart.

| kind        | shape                                                      | period, d      | amplitude, mag |
|-------------|------------------------------------------------------------|----------------|----------------|
| `cv`        | dwarf-nova outbursts: linear rise in mag over 0.3-2 d,     | recurrence     | 2-6            |
|             | linear decline at 0.3-1.2 mag/d (>= 3x the rise time),     | 8-150, +-20%   |                |
|             | recurrent                                                  | jitter         |                |
| `pulsator`  | sawtooth in mag, rise over 10-45% of the cycle (RR Lyrae,  | 0.2-50         | 0.1-1.2 p-p    |
|             | Cepheids): asymmetric, strictly periodic                   |                |                |
| `eclipsing` | primary + secondary eclipses (U-shaped, half-width 2-12%   | 0.3-40         | depth 0.05-1.5 |
|             | of the period), ellipsoidal modulation up to 5%            |                |                |
| `lpv`       | Mira / semi-regular: two-harmonic cycle, a trend over one  | 80-1,000       | 0.3-4 p-p      |
|             | season                                                     |                |                |
| `flare`     | 1-4 flares: rise 5-45 min, exponential decay 15 min-7 h,   | -              | peak flux      |
|             | peak source flux x1.1-x30                                  |                | x1.1-x30       |

Periods are log-uniform, amplitudes uniform, phases uniform; each kind is drawn equally often.
What was drawn is kept in the event's `params` (var_kind, period, amplitude, phase, rise,
decay; see `VARIABLE_FIELDS`).
"""
from __future__ import annotations

import numpy as np

KINDS = ("cv", "pulsator", "eclipsing", "lpv", "flare")
CV, PULSATOR, ECLIPSING, LPV, FLARE = range(len(KINDS))

# params fields a variable fills (NaN for every other class); meaning per kind:
# period: d (cv: mean recurrence; flare: NaN); amplitude: mag (cv: outburst; pulsator, lpv:
# peak to peak; eclipsing: primary depth; flare: peak of the source flux factor - 1, flux);
# phase: d, time of the first outburst / maximum / primary eclipse / first flare;
# rise: cv, flare: rise time, d; pulsator: rise share of the cycle; eclipsing: secondary depth
# / primary depth; lpv: second-harmonic amplitude ratio;
# decay: cv: decline rate, mag/d; flare: e-folding time, d; eclipsing: eclipse half-width,
# share of the period; pulsator, lpv: NaN.
VARIABLE_FIELDS = ("var_kind", "period", "amplitude", "phase", "rise", "decay")

CV_RECURRENCE = (8.0, 150.0)      # d, log-uniform; each interval jittered by +-20%
CV_AMPLITUDE = (2.0, 6.0)         # mag
CV_RISE = (0.3, 2.0)              # d, log-uniform
CV_DECLINE_RATE = (0.3, 1.2)      # mag / d
PULSATOR_PERIOD = (0.2, 50.0)     # d
PULSATOR_AMPLITUDE = (0.1, 1.2)   # mag, peak to peak
PULSATOR_RISE = (0.10, 0.45)      # share of the cycle spent brightening
ECLIPSING_PERIOD = (0.3, 40.0)    # d
ECLIPSING_DEPTH = (0.05, 1.5)     # mag, primary eclipse
ECLIPSING_WIDTH = (0.02, 0.12)    # half-width, share of the period
ELLIPSOIDAL = (0.0, 0.05)         # flux, semi-amplitude of the cos(4 pi phase) modulation
LPV_PERIOD = (80.0, 1000.0)       # d
LPV_AMPLITUDE = (0.3, 4.0)        # mag, peak to peak
LPV_HARMONIC = (0.0, 0.3)         # second harmonic / first
FLARE_COUNT = (1, 4)              # flares per season, uniform integer
FLARE_RISE = (0.0035, 0.03)       # d (5-45 min), log-uniform
FLARE_DECAY = (0.01, 0.3)         # d, e-folding, log-uniform
FLARE_PEAK = (0.1, 29.0)          # peak source flux factor - 1, log-uniform
FLARE_MARGIN = 5.0                # d: flares added outside the season (`extend`) keep this far from it


def _log_uniform(rng, lo_hi, n=None):
    return np.exp(rng.uniform(np.log(lo_hi[0]), np.log(lo_hi[1]), n))


def draw(rng, kind: int, season_days: float) -> dict:
    """Parameters of one variable of the given kind (floats; see VARIABLE_FIELDS), plus the
    private arrays its light curve needs (outburst / flare times)."""
    p = dict(var_kind=float(kind), period=np.nan, amplitude=np.nan, phase=np.nan, rise=np.nan, decay=np.nan)
    if kind == CV:
        p["period"] = _log_uniform(rng, CV_RECURRENCE)
        p["amplitude"] = rng.uniform(*CV_AMPLITUDE)
        p["rise"] = _log_uniform(rng, CV_RISE)
        rate = rng.uniform(*CV_DECLINE_RATE)
        p["decay"] = min(rate, p["amplitude"] / (3.0 * p["rise"]))  # decline lasts >= 3x the rise
        p["phase"] = rng.uniform(-p["period"], p["period"])
        n = int(np.ceil((season_days - p["phase"]) / (0.8 * p["period"]))) + 2
        gaps = p["period"] * rng.uniform(0.8, 1.2, n)
        p["_times"] = p["phase"] + np.concatenate([[0.0], np.cumsum(gaps)])
    elif kind == PULSATOR:
        p["period"] = _log_uniform(rng, PULSATOR_PERIOD)
        p["amplitude"] = rng.uniform(*PULSATOR_AMPLITUDE)
        p["rise"] = rng.uniform(*PULSATOR_RISE)
        p["phase"] = rng.uniform(0.0, p["period"])
    elif kind == ECLIPSING:
        p["period"] = _log_uniform(rng, ECLIPSING_PERIOD)
        p["amplitude"] = rng.uniform(*ECLIPSING_DEPTH)
        p["rise"] = rng.uniform(0.0, 1.0)
        p["decay"] = rng.uniform(*ECLIPSING_WIDTH)
        p["phase"] = rng.uniform(0.0, p["period"])
        p["_ellipsoidal"] = rng.uniform(*ELLIPSOIDAL)
    elif kind == LPV:
        p["period"] = _log_uniform(rng, LPV_PERIOD)
        p["amplitude"] = rng.uniform(*LPV_AMPLITUDE)
        p["rise"] = rng.uniform(*LPV_HARMONIC)
        p["phase"] = rng.uniform(0.0, p["period"])
        p["_phase2"] = rng.uniform(0.0, 2.0 * np.pi)
    elif kind == FLARE:
        n = rng.integers(FLARE_COUNT[0], FLARE_COUNT[1] + 1)
        p["_times"] = np.sort(rng.uniform(0.0, season_days, n))
        p["_rises"] = _log_uniform(rng, FLARE_RISE, n)
        p["_decays"] = _log_uniform(rng, FLARE_DECAY, n)
        p["_peaks"] = _log_uniform(rng, FLARE_PEAK, n)
        k = int(np.argmax(p["_peaks"]))  # the largest flare is the one recorded
        p.update(phase=p["_times"][k], rise=p["_rises"][k], decay=p["_decays"][k], amplitude=p["_peaks"][k])
    else:
        raise ValueError(f"unknown variable kind {kind}")
    return p


def extend(rng, p: dict, t_lo: float, t_hi: float, season_days: float) -> dict:
    """A copy of a variable drawn for one season, its recurrent events (dwarf-nova outbursts,
    flares) continued over [t_lo, t_hi] (the context, physics/microlensing/context.py) with the
    same recurrence (outbursts) or rate per day (flares); the season's own events are kept, so the
    copy's curve equals the original inside the season. Periodic kinds need nothing."""
    kind = int(p["var_kind"])
    q = dict(p)
    if kind == CV:
        before, after = [], []
        t = p["_times"][0]
        while t > t_lo - p["amplitude"] / p["decay"]:
            t -= p["period"] * rng.uniform(0.8, 1.2)
            before.append(t)
        t = p["_times"][-1]
        while t < t_hi:
            t += p["period"] * rng.uniform(0.8, 1.2)
            after.append(t)
        q["_times"] = np.concatenate([before[::-1], p["_times"], after])
    elif kind == FLARE:
        # outside the season and FLARE_MARGIN days from it, so no added flare's rise or tail reaches into it
        rate = len(p["_times"]) / season_days
        outside = (t_hi - t_lo) - season_days - 2 * FLARE_MARGIN
        n = rng.poisson(rate * max(outside, 0.0))
        times = rng.uniform(t_lo, t_lo + max(outside, 0.0), n)
        times = np.where(times >= -FLARE_MARGIN, times + season_days + 2 * FLARE_MARGIN, times)
        q["_times"] = np.concatenate([p["_times"], times])
        q["_rises"] = np.concatenate([p["_rises"], _log_uniform(rng, FLARE_RISE, n)])
        q["_decays"] = np.concatenate([p["_decays"], _log_uniform(rng, FLARE_DECAY, n)])
        q["_peaks"] = np.concatenate([p["_peaks"], _log_uniform(rng, FLARE_PEAK, n)])
    return q


def flux_factor(t, p: dict) -> np.ndarray:
    """(T,) float64 source-flux factor V(t) of a variable drawn by `draw` (t in days)."""
    t = np.asarray(t, dtype=np.float64)
    kind = int(p["var_kind"])
    if kind == CV:
        dmag = np.zeros_like(t)  # brightening, mag (>= 0)
        decline = p["amplitude"] / p["decay"]
        for peak in p["_times"]:
            if peak + decline < t[0] or peak - p["rise"] > t[-1]:
                continue
            rising = (t >= peak - p["rise"]) & (t < peak)
            falling = (t >= peak) & (t < peak + decline)
            dmag[rising] = np.maximum(dmag[rising], p["amplitude"] * (1.0 - (peak - t[rising]) / p["rise"]))
            dmag[falling] = np.maximum(dmag[falling], p["amplitude"] - p["decay"] * (t[falling] - peak))
        return 10.0 ** (0.4 * dmag)
    if kind == PULSATOR:
        # phase 0 = maximum light; the star fades over (1 - rise) of the cycle, brightens over `rise`
        phase = np.mod((t - p["phase"]) / p["period"], 1.0)
        fade = np.where(phase < 1.0 - p["rise"], phase / (1.0 - p["rise"]), (1.0 - phase) / p["rise"])
        return 10.0 ** (-0.4 * p["amplitude"] * fade)
    if kind == ECLIPSING:
        phase = np.mod((t - p["phase"]) / p["period"], 1.0)
        depth1 = 1.0 - 10.0 ** (-0.4 * p["amplitude"])          # flux lost at mid primary
        depth2 = depth1 * p["rise"]
        width = p["decay"]
        flux = 1.0 - p["_ellipsoidal"] * (1.0 - np.cos(4.0 * np.pi * phase)) / 2.0
        for centre, depth in ((0.0, depth1), (0.5, depth2)):
            x = np.abs(np.mod(phase - centre + 0.5, 1.0) - 0.5) / width
            flux -= depth * np.sqrt(np.clip(1.0 - x ** 2, 0.0, None))
        return np.clip(flux, 1e-3, None)
    if kind == LPV:
        w = 2.0 * np.pi * (t - p["phase"]) / p["period"]
        shape = np.cos(w) + p["rise"] * np.cos(2.0 * w + p["_phase2"])
        shape = shape / (1.0 + p["rise"])                            # within [-1, 1]
        return 10.0 ** (0.4 * 0.5 * p["amplitude"] * shape)
    if kind == FLARE:
        extra = np.zeros_like(t)
        for t_f, rise, decay, peak in zip(p["_times"], p["_rises"], p["_decays"], p["_peaks"]):
            before = (t >= t_f - rise) & (t < t_f)
            after = t >= t_f
            extra[before] += peak * (t[before] - (t_f - rise)) / rise
            extra[after] += peak * np.exp(-(t[after] - t_f) / decay)
        return 1.0 + extra
    raise ValueError(f"unknown variable kind {kind}")
