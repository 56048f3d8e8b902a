"""Light curve → model features, one code path for simulated and real photometry.

A light curve (time in days, magnitude, magnitude error) is put on a grid of `n_bins` bins of
`bin_days` starting at `t_start` (inverse-variance weighted flux per bin; a bin with no epoch
is masked). Each bin then carries four channels, all of which exist in real data:

| channel | meaning                                                                 |
|---------|-------------------------------------------------------------------------|
| 0       | log10(flux / baseline); baseline = 25th percentile of the binned flux   |
|         | (a robust estimate that the magnified part of an event does not move)   |
| 1       | log10(time since the previous observed bin / bin width)                 |
| 2       | log10(relative flux error)                                              |
| 3       | mask: 1 observed, 0 missing (channels 0-2 are 0 there)                  |
| 4       | asinh(binned residual / error) from the curve's best single-lens fit     |
| 5       | log10(binned fitted flux / the fit's baseline): the fitted shape        |

Channels 4 and 5 exist in the residual feature sets only (FEATURE_SETS). The fit behind them is
made to the epochs pre-binned (`fit_bins`: 30 minutes in the window, a quarter of a grid bin; a
day within 20 days of it; 5 days beyond), its model then evaluated at every epoch: a dense Roman
season costs half the epochs. A fit whose peak is a few pre-bins long (tE max(u0, rho) < 0.2 d:
free-floating planets, the sharpest peaks) is then refined on the epochs themselves, so no
timescale the grid resolves is smeared.

The event's own timescale (`scaled_bins` > 0 in a run's grid, residual sets only): after the
day grid come `scaled_bins` more bins of the same channels on a grid in units of the fitted
Einstein time, tau = (t - t0_fit) / tE_fit over [-scaled_span, +scaled_span], so a PSPL event
of tE 0.3 d and one of 100 d look alike there (where the season covers them) while the day grid
keeps the absolute timescale. A curve whose fit failed has that part masked.

The years around the window (`context_bins` > 0 in a run's grid, residual sets only): then come
`context_bins` bins of `context_days` (15 d: 128 of them span 1,920 d) centred on the window, the
same channels from every epoch the curve has there (a real file's other seasons; a simulated
star's context days, physics/microlensing/context.py). With a context, the single-lens fit of
channels 4-5 is made to the window's and the context's epochs together: in one season a long
event's blending and tE are degenerate, its other seasons pin the baseline. A long-period
variable varies in its other seasons (and leaves residuals there), a lensing event's star stays
at its baseline; a file of one season has the window's bins only.

Every channel but the mask is standardised with statistics of the training split
(`feature_stats`, saved in every checkpoint) by `normalize`. Everything is computed from the epochs given, so a
curve truncated at a fraction of the season gets its own baseline (early detection is honest).
"""
from __future__ import annotations

import warnings

import numpy as np

N_CHANNELS = 4
MASK_CHANNEL = 3
# name -> channels; the residual sets add channels 4 and 5 from each curve's best single-lens fit:
# point source only (pspl_residual), or point or finite source, whichever fits better (fspl_residual)
FEATURE_SETS = {"basic": 4, "pspl_residual": 6, "fspl_residual": 6}
RESIDUAL_FIT = {"pspl_residual": "pspl", "fspl_residual": "fspl"}
LN10 = np.log(10.0)


def nanpercentile_rows(x, q: float) -> np.ndarray:
    """np.nanpercentile(x, q, axis=1, keepdims=True) of a 2-d array (linear interpolation), in
    one sort: numpy's own goes row by row where a row holds NaN. An all-NaN row gives NaN."""
    x = np.sort(np.asarray(x, dtype=np.float64), axis=1)                   # NaN sort last
    if x.shape[1] == 0:
        return np.full((len(x), 1), np.nan)
    n = (~np.isnan(x)).sum(1)
    pos = q / 100.0 * np.maximum(n - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    rows = np.arange(len(x))
    out = x[rows, lo] + (pos - lo) * (x[rows, hi] - x[rows, lo])
    return np.where(n > 0, out, np.nan)[:, None]


def _bin_rows(index, n_bins, weight, values):
    """Weighted means of `values` (list of (N, L)) in bins `index` (N, L) (outside [0, n_bins): dropped).
    Returns the (N, n_bins) sums of weights and the weighted means (NaN in empty bins)."""
    N = weight.shape[0]
    inside = (index >= 0) & (index < n_bins)
    flat = (np.arange(N)[:, None] * n_bins + np.where(inside, index, 0))[inside]
    w = weight[inside]
    sum_w = np.bincount(flat, weights=w, minlength=N * n_bins).reshape(N, n_bins)
    with np.errstate(all="ignore"):
        means = [np.where(sum_w > 0, np.bincount(flat, weights=w * v[inside], minlength=N * n_bins).reshape(N, n_bins)
                          / sum_w, np.nan) for v in values]
    return sum_w, means


def scaled_view(time, flux, weight, model, t0, tE, n_bins: int, span: float):
    """The curves binned in units of their fitted Einstein time: tau = (t - t0) / tE over
    [-span, span] in n_bins bins. time (L,) days; flux, weight, model (N, L); t0, tE (N,).
    Returns binned flux, error, observed, binned model (N, n_bins) as `bin_light_curves`."""
    with np.errstate(all="ignore"):
        tau = (np.asarray(time)[None, :] - np.asarray(t0)[:, None]) / np.asarray(tE)[:, None]
        index = np.floor((tau + span) / (2.0 * span / n_bins))
    index = np.where(np.isfinite(index), index, -1).astype(np.int64)
    sum_w, (binned, binned_model) = _bin_rows(index, n_bins, weight, [flux, model])
    observed = sum_w > 0
    with np.errstate(all="ignore"):
        binned_err = np.where(observed, 1.0 / np.sqrt(sum_w), np.nan)
    return binned, binned_err, observed, binned_model


def quiet_curves(binned, binned_err, observed, sigma: float) -> np.ndarray:
    """(N,) bool: curves with fewer than 3 observed bins brighter than their 10th percentile
    binned flux by more than `sigma` errors: no brightening for a lens fit to explain (flat
    stars, most eclipsing binaries: most of a survey's stream). The 10th percentile, not the
    median: a long event can brighten most of the season."""
    with np.errstate(all="ignore"):
        ref = nanpercentile_rows(np.where(observed, binned, np.nan), 10)
        excess = (binned - ref) / binned_err
    return (observed & (excess > sigma)).sum(1) < 3


def context_view(time, flux, weight, model, centre: float, n_bins: int, bin_days: float):
    """The curves over the years around the window: `n_bins` bins of `bin_days` centred on
    `centre`. time (L,) days; flux, weight, model (N, L): the epochs, on the window's flux scale,
    and the single-lens fit to all of them. Returns binned flux, error, observed and binned model
    (N, n_bins), as `scaled_view`."""
    start = centre - n_bins * bin_days / 2.0
    index = np.broadcast_to(np.floor((np.asarray(time, dtype=np.float64) - start) / bin_days).astype(np.int64),
                            flux.shape)
    sum_w, (binned, binned_model) = _bin_rows(index, n_bins, weight, [flux, model])
    observed = sum_w > 0
    with np.errstate(all="ignore"):
        binned_err = np.where(observed, 1.0 / np.sqrt(sum_w), np.nan)
    return binned, binned_err, observed, binned_model


FIT_BIN_DAYS = (30.0 / 1440.0, 1.0, 5.0)  # the fit's pre-bins: in the window, within FIT_NEAR_DAYS of it, beyond
FIT_NEAR_DAYS = 20.0
FIT_SHARP_DAYS = 0.2   # a fit whose peak lasts ~tE max(u0, rho) < this (~10 pre-bins) is refined on the epochs


def fit_bins(time, start: float, end: float) -> tuple[np.ndarray, int]:
    """Pre-bins of the single-lens fit's epochs, (L,) index into n bins ordered in time, and n:
    30 minutes in the window [start, end) (a quarter of the feature grid's 2-hour bins: a
    Roman season's 6,912 epochs become 3,456, and no event the grid resolves is smeared), a day
    within FIT_NEAR_DAYS of it (an event peaking just outside keeps its shape), 5 days beyond (the
    other seasons pin the baseline; a 15-day context bin holds three of them)."""
    t = np.asarray(time, dtype=np.float64)
    before, after = t < start, t >= end
    near = (before & (t >= start - FIT_NEAR_DAYS)) | (after & (t < end + FIT_NEAR_DAYS))
    region = np.select([before & ~near, before & near, after & near, after & ~near], [0, 1, 3, 4], 2)
    width = np.select([region == 2, near], [FIT_BIN_DAYS[0], FIT_BIN_DAYS[1]], FIT_BIN_DAYS[2])
    key = region.astype(np.int64) * 10**9 + np.floor((t - start) / width + 1e-4).astype(np.int64)  # edges: as below
    keys, index = np.unique(key, return_inverse=True)
    return index.reshape(-1), len(keys)


def bin_light_curves(time, mag, mag_err, t_start: float, n_bins: int, bin_days: float, fit_model: str | None = None,
                     scaled: tuple | None = None, quiet_sigma: float | None = None, context: tuple | None = None):
    """Bin curves sharing one time grid.

    time (L,) days; mag, mag_err (N, L), NaN where not observed.
    Returns flux, flux_err (N, n_bins) relative to each curve's median magnitude (NaN in empty
    bins) and observed (N, n_bins) bool; with fit_model ("pspl": point source, "fspl": point or
    finite source), also the best single-lens fit to the epochs inside the grid (fitted to them
    pre-binned by `fit_bins`, evaluated at each), binned with the same weights (N, n_bins), and
    its baseline flux (N,); with scaled = (bins, span), then the
    four arrays of `scaled_view` of the epochs inside the grid. quiet_sigma: curves that
    `quiet_curves` calls quiet are not fitted; their model is their weighted mean flux (no t0,
    tE: an empty scaled view). context = (time_c (Lc,), mag_c, err_c (N, Lc), bins, days): the
    fit also sees the context's epochs outside the window, and the four arrays of `context_view`
    of the window's and those epochs follow (after the scaled view's, or in its place).
    """
    time = np.asarray(time, dtype=np.float64)
    mag = np.atleast_2d(np.asarray(mag, dtype=np.float64))
    mag_err = np.atleast_2d(np.asarray(mag_err, dtype=np.float64))
    N, L = mag.shape
    good = np.isfinite(mag) & np.isfinite(mag_err) & (mag_err > 0)
    with np.errstate(all="ignore"):
        m_ref = nanpercentile_rows(np.where(good, mag, np.nan), 50)
    m_ref = np.where(np.isfinite(m_ref), m_ref, 0.0)
    flux = 10.0 ** (-0.4 * (np.where(good, mag, m_ref) - m_ref))            # (N, L)
    weight = np.where(good, 1.0 / (0.4 * LN10 * flux * np.where(good, mag_err, 1.0)) ** 2, 0.0)
    # epochs on a regular grid sit exactly on bin edges: a small tolerance keeps rounding from
    # moving them to the previous bin (a 1e-4 bin shift is 0.7 s for 2-hour bins)
    bin_index = np.floor((time - t_start) / bin_days + 1e-4).astype(np.int64)  # (L,)
    inside = (bin_index >= 0) & (bin_index < n_bins)
    index = np.broadcast_to(bin_index[inside], (N, int(inside.sum())))
    w_in, flux_in = weight[:, inside], flux[:, inside]
    sum_w, (binned,) = _bin_rows(index, n_bins, w_in, [flux_in])
    observed = sum_w > 0
    with np.errstate(all="ignore"):
        binned_err = np.where(observed, 1.0 / np.sqrt(sum_w), np.nan)
    if fit_model is None:
        return binned, binned_err, observed
    if fit_model not in ("pspl", "fspl"):
        raise ValueError(f"unknown single-lens fit {fit_model!r} (pspl, fspl)")
    from physics.microlensing.fit import fit_pspl, single_lens_model
    # the fit sees the window's epochs and, with a context, the epochs around it: a long event's
    # baseline is pinned by its other seasons (in one season the blend and tE are degenerate)
    fit_time, fit_flux, fit_w = time[inside], np.where(good[:, inside], flux_in, np.nan), w_in
    if context:
        time_c, mag_c, err_c, c_bins, c_days = context
        time_c = np.asarray(time_c, dtype=np.float64)
        away = (time_c < t_start) | (time_c >= t_start + n_bins * bin_days)   # the window's own epochs are above
        mag_c = np.atleast_2d(np.asarray(mag_c, dtype=np.float64))[:, away]
        err_c = np.atleast_2d(np.asarray(err_c, dtype=np.float64))[:, away]
        good_c = np.isfinite(mag_c) & np.isfinite(err_c) & (err_c > 0)
        flux_c = 10.0 ** (-0.4 * (np.where(good_c, mag_c, m_ref) - m_ref))   # the window's flux scale
        weight_c = np.where(good_c, 1.0 / (0.4 * LN10 * flux_c * np.where(good_c, err_c, 1.0)) ** 2, 0.0)
        fit_time = np.concatenate([fit_time, time_c[away]])
        fit_flux = np.concatenate([fit_flux, np.where(good_c, flux_c, np.nan)], axis=1)
        fit_w = np.concatenate([fit_w, weight_c], axis=1)
    # a quiet curve (no brightening) is "fitted" by its weighted mean flux: nothing to fit a lens to
    todo = np.arange(N) if quiet_sigma is None else np.flatnonzero(~quiet_curves(binned, binned_err, observed,
                                                                                 quiet_sigma))
    with np.errstate(all="ignore"):
        mean = (w_in * flux_in).sum(1) / w_in.sum(1)
        fit = {"model": np.repeat(mean[:, None], len(fit_time), axis=1), "t0": np.full(N, np.nan),
               "tE": np.full(N, np.nan), "fs": np.zeros((N, 1)), "fb": mean[:, None].copy()}
        if len(todo):
            # fitted to the epochs pre-binned (`fit_bins`), the model then evaluated at every epoch
            fit_index, n_fit = fit_bins(fit_time, t_start, t_start + n_bins * bin_days)
            shape = (len(todo), len(fit_time))
            sum_w, (b_time, b_flux) = _bin_rows(np.broadcast_to(fit_index, shape), n_fit, fit_w[todo],
                                                [np.broadcast_to(fit_time, shape),
                                                 np.where(fit_w[todo] > 0, fit_flux[todo], 0.0)])
            part = fit_pspl(np.where(sum_w > 0, b_time, 0.0), b_flux, np.where(sum_w > 0, sum_w, np.nan) ** -0.5,
                            finite_source=fit_model == "fspl")
            # a peak of a few pre-bins (tE max(u0, rho) < FIT_SHARP_DAYS) is smeared by them: refined on the epochs
            sharp = np.flatnonzero(part["tE"] * np.fmax(part["u0"], part["rho"]) < FIT_SHARP_DAYS)
            if len(sharp):
                order = np.argsort(fit_time, kind="stable")
                rows = todo[sharp]
                raw = fit_pspl(fit_time[order], fit_flux[rows][:, order],
                               np.where(fit_w[rows] > 0, fit_w[rows], np.nan)[:, order] ** -0.5,
                               finite_source=fit_model == "fspl", start={k: part[k][sharp] for k in ("t0", "tE", "u0")})
                for key in ("t0", "tE", "u0", "rho", "fs", "fb"):
                    part[key][sharp] = raw[key]
            fit["model"][todo] = single_lens_model(part, fit_time)
            for key in ("t0", "tE", "fs", "fb"):
                fit[key][todo] = part[key][:, :1] if key in ("fs", "fb") else part[key]
    n_in = int(inside.sum())
    model = fit["model"][:, :n_in]                                          # (N, L_inside) fitted flux
    binned_model = _bin_rows(index, n_bins, w_in, [model])[1][0]
    baseline = fit["fs"][:, 0] + fit["fb"][:, 0]
    out = (binned, binned_err, observed, binned_model, baseline)
    if scaled:
        out += (scaled_view(time[inside], flux[:, inside], weight[:, inside], model, fit["t0"], fit["tE"], *scaled),)
    if context:
        out += (context_view(fit_time, np.concatenate([flux_in, flux_c], axis=1), fit_w, fit["model"],
                             t_start + n_bins * bin_days / 2.0, c_bins, c_days),)
    return out


def features_from_bins(flux, flux_err, observed, model=None, model_baseline=None, fit_baseline: bool = False) -> np.ndarray:
    """(N, T) binned flux, error, observed [, binned PSPL model, its baseline (N,)] →
    (N, T, 4) or (N, T, 6) float32 features (see module docstring). fit_baseline: channel 0
    relative to the fit's baseline where it is positive (the scaled view, which may see the peak
    only), else to the binned flux's 25th percentile."""
    N, T = flux.shape
    out = np.zeros((N, T, N_CHANNELS if model is None else 6), dtype=np.float32)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a curve with nothing in view: all-NaN, masked anyway
        baseline = nanpercentile_rows(np.where(observed, flux, np.nan), 25)
        if fit_baseline:
            fitted = np.asarray(model_baseline, dtype=np.float64)[:, None]
            baseline = np.where(np.isfinite(fitted) & (fitted > 0), fitted, baseline)
        log_ratio = np.log10(flux / baseline)
        log_rel_err = np.log10(flux_err / flux)
    index = np.where(observed, np.arange(T), -1)
    last_seen = np.maximum.accumulate(index, axis=1)                        # latest observed bin ≤ j
    previous = np.concatenate([np.full((N, 1), -1), last_seen[:, :-1]], axis=1)
    gap_bins = np.where(previous >= 0, np.arange(T) - previous, 1)          # first epoch: one bin
    out[..., 0] = np.where(observed, log_ratio, 0.0)
    out[..., 1] = np.where(observed, np.log10(gap_bins), 0.0)
    out[..., 2] = np.where(observed, log_rel_err, 0.0)
    out[..., MASK_CHANNEL] = observed
    bad = observed & ~np.isfinite(out[..., :3]).all(axis=-1)
    out[bad] = 0.0                                                          # e.g. a 0-flux bin: treat as missing
    if model is not None:
        with np.errstate(all="ignore"):
            pull = np.arcsinh((flux - model) / flux_err)
            shape = np.log10(model / np.asarray(model_baseline)[:, None])
        ok = observed & ~bad
        out[..., 4] = np.where(ok & np.isfinite(pull), pull, 0.0)
        out[..., 5] = np.where(ok & np.isfinite(shape), shape, 0.0)      # a failed fit: no residual signal
    return out


def light_curve_features(time, mag, mag_err, t_start: float, n_bins: int, bin_days: float,
                         residuals: str | None = None, scaled: tuple | None = None,
                         quiet_sigma: float | None = None, context: tuple | None = None) -> np.ndarray:
    """time (L,), mag and mag_err (N, L) → features (N, n_bins, 4), or 6 with residuals from a
    "pspl" or "fspl" fit (see `bin_light_curves`), float32; with scaled = (bins, span) (residuals
    only) the scaled view's bins follow, then with context = (time_c, mag_c, err_c, bins, days)
    the context's: (N, n_bins [+ bins] [+ context bins], 6)."""
    if (scaled or context) and residuals is None:
        raise ValueError("the scaled and context views need a single-lens fit: a residual feature set")
    out = bin_light_curves(time, mag, mag_err, t_start, n_bins, bin_days, fit_model=residuals, scaled=scaled,
                           quiet_sigma=quiet_sigma, context=context)
    if not scaled and not context:
        return features_from_bins(*out)
    binned, binned_err, observed, model, baseline = out[:5]
    parts = [features_from_bins(binned, binned_err, observed, model, baseline)]
    views = list(out[5:])
    if scaled:
        parts.append(features_from_bins(*views.pop(0), baseline, fit_baseline=True))
    if context:
        parts.append(features_from_bins(*views.pop(0), baseline))
    return np.concatenate(parts, axis=1)


DESPIKE_SIGMA = 4.0  # departure from each neighbour, in their combined errors, of an epoch dropped as an outlier
DESPIKE_CALM = 3.0   # ... while its four neighbours agree within 1/DESPIKE_CALM of that departure


def despike(time, mag, mag_err, sigma: float = DESPIKE_SIGMA, calm: float = DESPIKE_CALM):
    """Copies of mag, mag_err (N, L) (epochs at time (L,), NaN where not observed) with isolated
    one-epoch outliers set to NaN, as photometry pipelines' outliers are removed before a fit: an
    epoch that departs from its previous and its next observed epoch in the same direction by more
    than `sigma` combined errors each, while its two neighbours on each side agree among
    themselves within 1/`calm` of that departure (a flat or smooth stretch). A real peak, a caustic
    crossing or a flare sampled by two or more epochs keeps them: its neighbours rise or fall too.
    The first and last two epochs of a curve are kept."""
    order = np.argsort(np.asarray(time, dtype=np.float64), kind="stable")
    mag_out, err_out = np.array(mag, copy=True), np.array(mag_err, copy=True)
    for k in range(mag_out.shape[0]):
        m, e = mag_out[k, order].astype(np.float64), err_out[k, order].astype(np.float64)
        seen = np.flatnonzero(np.isfinite(m) & np.isfinite(e) & (e > 0))
        if len(seen) < 5:
            continue
        m, e = m[seen], e[seen]
        with np.errstate(invalid="ignore", divide="ignore"):
            step = np.diff(m) / np.hypot(e[1:], e[:-1])           # epoch j+1 against epoch j
        up, down = step[1:-2], -step[2:-1]                           # epochs 2..n-3 against both neighbours
        spike = np.where(np.sign(up) == np.sign(down), np.minimum(np.abs(up), np.abs(down)), 0.0)
        i = np.arange(2, len(m) - 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            across = (m[i + 1] - m[i - 1]) / np.hypot(e[i + 1], e[i - 1])
        spread = np.maximum.reduce([np.abs(step[:-3]), np.abs(step[3:]), np.abs(across)])
        drop = seen[i[(spike > sigma) & (spread * calm < spike)]]
        mag_out[k, order[drop]] = np.nan
        err_out[k, order[drop]] = np.nan
    return mag_out, err_out


def grid_features(time, mag, mag_err, t_start: float, grid: dict, context: tuple | None = None) -> np.ndarray:
    """Features on a run's grid (n_bins, bin_days, feature set, scaled view, context view, outliers
    removed (`despike`) or not; runs without them are `basic`, without the views, with every
    epoch). context = (time_c, mag_c, err_c): the epochs of the years around the window
    (default: the curve's own, as a real file has them)."""
    scaled = (grid["scaled_bins"], grid["scaled_span"]) if grid.get("scaled_bins") else None
    if grid.get("despike"):
        if context is not None:
            context = (context[0], *despike(*context))
        mag, mag_err = despike(time, mag, mag_err)
    if grid.get("context_bins"):
        context = (*(context or (time, mag, mag_err)), grid["context_bins"], grid["context_days"])
    else:
        context = None
    return light_curve_features(time, mag, mag_err, t_start, grid["n_bins"], grid["bin_days"],
                                residuals=RESIDUAL_FIT.get(grid.get("features", "basic")), scaled=scaled,
                                quiet_sigma=grid.get("quiet_sigma"), context=context)


def grid_length(grid: dict) -> int:
    """Time steps of a run's features: the day grid, the scaled view and the context view."""
    return grid["n_bins"] + int(grid.get("scaled_bins") or 0) + int(grid.get("context_bins") or 0)


def grid_size(season_days: float, bin_minutes: float) -> tuple[int, float]:
    """Number of bins and bin width (days) for a season."""
    bin_days = bin_minutes / 1440.0
    return int(round(season_days / bin_days)), bin_days


def _value_channels(n_channels: int) -> list:
    return [c for c in range(n_channels) if c != MASK_CHANNEL]


def feature_stats(features: np.ndarray, rows=None, block: int = 2048) -> dict:
    """Mean and std of every channel but the mask over observed bins of the given rows (the
    training split)."""
    rows = np.arange(len(features)) if rows is None else np.sort(np.asarray(rows))
    channels = _value_channels(features.shape[-1])
    total = np.zeros(len(channels))
    total_sq = np.zeros(len(channels))
    count = 0.0
    for i in range(0, len(rows), block):
        x = np.asarray(features[rows[i:i + block]], dtype=np.float64)
        m = x[..., MASK_CHANNEL] > 0.5
        v = x[..., channels][m]
        total += v.sum(axis=0)
        total_sq += (v ** 2).sum(axis=0)
        count += len(v)
    if count == 0:
        raise ValueError("no observed epochs in the training split")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    # a channel constant in training (e.g. the gap on a gap-free simulated grid) is left unscaled,
    # so a real curve's gaps give O(1) inputs rather than values blown up by a ~0 std
    std = np.where(std < 1e-3, 1.0, std)
    return {"mean": mean.tolist(), "std": std.tolist()}


def normalize(x, stats: dict):
    """A standardised copy of a (..., C) torch tensor: every channel but the mask scaled, masked
    bins kept at 0."""
    import torch
    mean = torch.tensor(stats["mean"], dtype=x.dtype, device=x.device)
    std = torch.tensor(stats["std"], dtype=x.dtype, device=x.device)
    if len(stats["mean"]) != x.shape[-1] - 1:
        raise ValueError(f"features have {x.shape[-1]} channels, the statistics {len(stats['mean'])} + mask")
    mask = x[..., MASK_CHANNEL:MASK_CHANNEL + 1]
    scaled = (x[..., _value_channels(x.shape[-1])] - mean) / std * mask
    return torch.cat([scaled[..., :MASK_CHANNEL], mask, scaled[..., MASK_CHANNEL:]], dim=-1)
