"""Batched least-squares fits of single-lens light curves (point or finite source), in torch.

Model, per curve and per telescope g: F(t) = F_s,g A(u(t)) + F_b,g with the PSPL A(u) and
u^2 = u0^2 + ((t - t0) / tE)^2. The three nonlinear parameters (t0 [days], ln tE, ln u0) are
shared by all telescopes (a fourth, ln rho, for a finite source: see `fit_pspl`); each
telescope's source and blend fluxes are solved exactly (weighted linear least squares) at every
step of the coarse search, so it is over three parameters only (variable projection). The
search is Levenberg-Marquardt from several starts: a coarse pass on the curve binned to at most
`coarse_points` points picks the best starts, which are then refined on the unbinned epochs (in
magnitudes, fluxes free).

Everything is vectorised over curves × starts, so a few thousand full-cadence Roman seasons
(6,912 epochs each) fit in a minute on a laptop CPU. Each curve costs its observed epochs only:
curves are compacted to those and fitted in blocks of similar counts, so a ground survey's
sparse curve on a dense grid (or a file's years of context days) is cheap. Used for the Δχ²
ceiling of evaluate.py (how far a binary is from any single-lens curve) and for the
classifier's residual features.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

LN_TE = (math.log(0.01), math.log(3000.0))  # bounds of ln tE (tE in days): free-floating planets to long binaries
LN_U0 = (math.log(1e-4), math.log(3.0))     # bounds of ln u0
START_TE = (4.0, 15.0, 40.0)
START_U0 = (0.03, 0.3)
LN_RHO = (math.log(1e-4), math.log(0.5))   # bounds of ln rho (finite-source fits)
MAG_PER_LN = 2.5 / math.log(10.0)
FIT_CHUNK = 32        # curves fitted at a time (see fit_pspl)
FS_U0_MAX = 0.5      # a finite source is tried where the point-source fit's u0 is below this
FS_WINDOW = 0.2      # ... and its χ² within |t - t0| < FS_WINDOW tE exceeds the number n of epochs there
FS_TRIGGER = 2.0     # by more than max(25, FS_TRIGGER sqrt(2 n)) (2 sigma of noise)
FS_PEAK = 1.0        # ... and its misfit within |t - t0| < FS_PEAK tE (where a source of rho <= 0.5 acts)
                     # exceeds the misfit beyond
# finite-source starts (tE, u0, rho) relative to the point-source fit's (tE, u0, u0): a rounded
# peak makes that fit too wide in u0, or, blended, too long in tE
FS_STARTS = ((1.0, 1.0, 1.0), (1.0, 0.3, 2.0), (1.0, 1.0, 0.3), (1 / 3, 3.0, 3.0), (1 / 3, 1.0, 6.0), (1 / 9, 9.0, 9.0))
LOG10_Z = (-4.0, 3.0, 7001)  # the B0 table: log10(u / rho) from, to, points


def pspl_with_derivative(u):
    """A(u) and dA/du of the point-source point-lens magnification; u > 0 tensor."""
    u2 = u * u
    root = torch.sqrt(u2 + 4.0)
    return (u2 + 2.0) / (u * root), -8.0 / (u2 * root ** 3)


@functools.lru_cache(maxsize=1)
def _b0_table():
    """B0(z) of a uniform source disk and dB0/dln z on the LOG10_Z grid, z = u / rho.

    For a point lens and a source of radius rho << 1, A_FS(u) = A_PS(u) B0(u / rho)
    (Gould 1994; Yoo et al. 2004) with B0(z) = (4 z / pi) E(min(1, 1/z), z), E the incomplete
    elliptic integral of the second kind; B0 -> 2 z for z -> 0 (peak 2 / rho) and -> 1 for
    z >> 1. Gauss-Legendre on forms without endpoint singularities."""
    lz = np.linspace(*LOG10_Z)
    z = 10.0 ** lz
    x, w = np.polynomial.legendre.leggauss(256)
    psi, w = (x + 1.0) * math.pi / 4.0, w * math.pi / 4.0                 # nodes on [0, pi/2]
    s2 = np.sin(psi) ** 2
    inner = 4.0 * z / math.pi * (w * np.sqrt(np.clip(1.0 - np.outer(np.minimum(z, 1.0) ** 2, s2), 0.0, None))).sum(1)
    # z > 1: sin(theta) = sin(psi) / z turns the integral over [0, arcsin(1/z)] into a smooth one
    outer = 4.0 / math.pi * (w * np.cos(psi) ** 2 / np.sqrt(1.0 - np.outer(1.0 / np.maximum(z, 1.0) ** 2, s2))).sum(1)
    b0 = np.where(z <= 1.0, inner, outer)
    return lz, b0, np.gradient(b0, lz * math.log(10.0))


def finite_source_factor(z):
    """B0(z) and dB0/dln z (tensors like z > 0), interpolated in the table; 2 z below it, 1 above."""
    lz, b0, db0 = (torch.as_tensor(a, dtype=z.dtype, device=z.device) for a in _b0_table())
    lo, hi, n = LOG10_Z
    x = (torch.log10(z) - lo) / (hi - lo) * (n - 1)
    i = x.floor().clamp(0, n - 2)
    frac = (x - i).clamp(0.0, 1.0)
    i = i.long()
    b = b0[i] * (1 - frac) + b0[i + 1] * frac
    d = db0[i] * (1 - frac) + db0[i + 1] * frac
    below, above = x < 0, x > n - 1
    b = torch.where(below, 2.0 * z, torch.where(above, 1.0, b))
    d = torch.where(below, 2.0 * z, torch.where(above, 0.0, d))
    return b, d


def _single_lens(theta, time):
    """u (B, L), A, dA/du and, for a finite source (theta with a 4th column ln rho), dA/dln rho."""
    tau = (time - theta[:, 0:1]) / theta[:, 1:2].exp()
    u = torch.sqrt(tau * tau + theta[:, 2:3].exp() ** 2)
    A, dA = pspl_with_derivative(u)
    if theta.shape[1] == 3:
        return tau, u, A, dA, None
    b, db = finite_source_factor(u / theta[:, 3:4].exp())
    return tau, u, A * b, dA * b + A * db / u, -A * db


def _solve_fluxes(A, flux, weight, onehot):
    """Per-telescope (F_s, F_b) minimising sum w (f - F_s A - F_b)^2.

    A, flux, weight: (B, L); onehot: (B, L, G) float. Returns F_s, F_b (B, G); a telescope with
    fewer than two distinct magnifications gets F_s = 0 (its mean flux as F_b)."""
    w = weight.unsqueeze(-1) * onehot                               # (B, L, G)
    Ag, fg = A.unsqueeze(-1), flux.unsqueeze(-1)
    s0, s1, s2 = w.sum(1), (w * Ag).sum(1), (w * Ag * Ag).sum(1)   # (B, G)
    t0, t1 = (w * fg).sum(1), (w * Ag * fg).sum(1)
    det = s0 * s2 - s1 * s1
    ok = det > 1e-12 * (s0 * s2).clamp(min=1e-300)
    fs = torch.where(ok, (s0 * t1 - s1 * t0) / torch.where(ok, det, 1.0), 0.0)
    fb = torch.where(ok, (s2 * t0 - s1 * t1) / torch.where(ok, det, 1.0), t0 / s0.clamp(min=1e-300))
    return fs, fb


def _evaluate(theta, fs, fb, time, flux, weight, onehot, jacobian: bool, mag_space: bool = False):
    """χ² (B,) of the model at theta (B, K), K = 3 (point source) or 4 (finite source), fluxes
    fs, fb (B, G); optionally J^T W J (B, P, P) and J^T W r (B, P) over all P = K + 2G
    parameters (theta, then fs, then fb).

    mag_space: `flux` holds magnitudes -2.5 log10(f) and `weight` 1/σ_mag²; the residuals are
    in magnitudes (a model flux <= 0 gives χ² = inf)."""
    tE, u0 = theta[:, 1:2].exp(), theta[:, 2:3].exp()
    tau, u, A, dA, dA_rho = _single_lens(theta, time)
    fs_t = (onehot * fs.unsqueeze(1)).sum(-1)                       # (B, L) each epoch's telescope
    fb_t = (onehot * fb.unsqueeze(1)).sum(-1)
    model = fs_t * A + fb_t
    if mag_space:
        positive = (model > 0) | (weight == 0)
        resid = flux + MAG_PER_LN * torch.log(torch.where(model > 0, model, 1.0))
        chi2 = torch.where(positive.all(1), (weight * resid * resid).sum(1), torch.inf)
    else:
        resid = flux - model
        chi2 = (weight * resid * resid).sum(1)
    if not jacobian:
        return chi2, A
    g = fs_t * dA / u                                               # (dF/du) / u
    columns = [g * (-tau / tE), g * (-tau * tau), g * (u0 * u0)] + ([] if dA_rho is None else [fs_t * dA_rho])
    J = torch.cat([torch.stack(columns, dim=-1), onehot * A.unsqueeze(-1), onehot], dim=-1)  # (B, L, P) dF/dparameter
    if mag_space:
        J = J * (-MAG_PER_LN / torch.where(model > 0, model, 1.0)).unsqueeze(-1)
    wJ = weight.unsqueeze(-1) * J
    return chi2, A, wJ.transpose(1, 2) @ J, (wJ * resid.unsqueeze(-1)).sum(1)


def _clamp(theta, t_lo, t_hi):
    columns = [torch.maximum(torch.minimum(theta[:, 0], t_hi), t_lo), theta[:, 1].clamp(*LN_TE), theta[:, 2].clamp(*LN_U0)]
    if theta.shape[1] == 4:
        columns.append(theta[:, 3].clamp(*LN_RHO))
    return torch.stack(columns, dim=1)


def _levenberg_marquardt(theta, fs, fb, time, flux, weight, onehot, n_iter, t_lo, t_hi, mag_space=False):
    """Refine theta (B, K) with every telescope's fluxes free. In flux space the fluxes are
    re-solved exactly for each trial theta (fs, fb may be None); in magnitudes they are steps of
    the search like theta. Returns (theta, fs, fb, chi2)."""
    G = onehot.shape[-1]
    if fs is None:
        fs, fb = _solve_fluxes(_magnification(theta, time), flux, weight, onehot)
    chi2, _, H, grad = _evaluate(theta, fs, fb, time, flux, weight, onehot, True, mag_space)
    lam = torch.full((len(theta),), 1e-3, dtype=theta.dtype, device=theta.device)
    K = theta.shape[1]
    eye = torch.eye(K + 2 * G, dtype=theta.dtype, device=theta.device)
    for _ in range(n_iter):
        diag = torch.diagonal(H, dim1=1, dim2=2).clamp(min=1e-12)
        step = torch.linalg.solve(H + lam[:, None, None] * (diag[:, :, None] * eye), grad.unsqueeze(-1)).squeeze(-1)
        trial = _clamp(theta + step[:, :K], t_lo, t_hi)
        if mag_space:
            fs_trial, fb_trial = fs + step[:, K:K + G], fb + step[:, K + G:]
        else:
            fs_trial, fb_trial = _solve_fluxes(_magnification(trial, time), flux, weight, onehot)
        chi2_trial, _ = _evaluate(trial, fs_trial, fb_trial, time, flux, weight, onehot, False, mag_space)
        better = torch.isfinite(chi2_trial) & (chi2_trial < chi2)
        lam = torch.where(better, lam / 3.0, lam * 4.0).clamp(1e-9, 1e9)
        if not better.any():
            continue
        idx = better.nonzero().squeeze(1)  # Jacobians only where a step was taken
        theta = theta.index_copy(0, idx, trial[idx])
        fs, fb = fs.index_copy(0, idx, fs_trial[idx]), fb.index_copy(0, idx, fb_trial[idx])
        c, _, h, g = _evaluate(theta[idx], fs[idx], fb[idx], time[idx], flux[idx], weight[idx], onehot[idx],
                               True, mag_space)
        chi2, H, grad = chi2.index_copy(0, idx, c), H.index_copy(0, idx, h), grad.index_copy(0, idx, g)
    return theta, fs, fb, chi2


def _magnification(theta, time):
    return _single_lens(theta, time)[2]


def _bin(time, flux, weight, onehot, n_points):
    """Inverse-variance weighted means in n_points equal time bins per telescope (coarse pass)."""
    B, L = flux.shape
    G = onehot.shape[-1]
    observed = weight > 0
    lo = torch.where(observed, time, torch.inf).min(1, keepdim=True).values
    hi = torch.where(observed, time, -torch.inf).max(1, keepdim=True).values
    idx = ((time - lo) / (hi - lo).clamp(min=1e-9) * (n_points - 1e-6)).long().clamp(0, n_points - 1)
    idx = idx.unsqueeze(-1) * G + torch.arange(G, device=time.device)  # (B, L, G) bin × telescope
    w = weight.unsqueeze(-1) * onehot
    size = n_points * G

    def total(x):
        return torch.zeros(B, size, dtype=x.dtype, device=x.device).scatter_add_(1, idx.reshape(B, -1), x.reshape(B, -1))
    sw = total(w)
    ok = sw > 0
    mean = lambda x: torch.where(ok, total(w * x.unsqueeze(-1)) / sw.clamp(min=1e-300), 0.0)  # noqa: E731
    tel = torch.arange(size, device=time.device) % G
    return mean(time), mean(flux), sw, (tel[None, :, None] == torch.arange(G, device=time.device)).to(flux.dtype).expand(B, -1, -1)


def fit_pspl(time, flux, flux_err, telescope=None, n_iter: int = 20, n_refine: int = 15,
             coarse_points: int = 400, finite_source: bool = False, device="cpu", start: dict | None = None) -> dict:
    """Best PSPL fit of each curve; with finite_source, the best single-lens fit (PSPL or a
    uniform finite source, FSPL).

    time: (L,) or (N, L) days; flux, flux_err: (N, L), any flux unit (each curve and telescope
    has its own F_s, F_b), NaN or err <= 0 where not observed; telescope: (N, L) ints 0..G-1 or
    None (one telescope). Returns numpy arrays: t0, tE, u0 (N,), fs, fb (N, G), n_obs (N,), model
    (N, L) the fitted flux at every epoch, and chi2 (N,) of the magnitudes, sum ((m - m_model) / σ_m)^2 with m = -2.5 log10 f and
    σ_m = 1.0857 σ_f / f (the errors the photometry came with, when it came in magnitudes).
    rho (N,): the finite-source fit's source radius where that fit is kept, else NaN.

    finite_source: where the point-source fit's u0 < FS_U0_MAX (where a source of rho <~ 0.1 can
    round the peak), A = A_PS(u) B0(u / rho) (`finite_source_factor`; accurate to ~2e-3 for
    rho <= 0.1) is refined on every epoch from the six FS_STARTS where the χ² near the peak
    exceeds the number n of epochs there by more than max(25, 2 sqrt(2 n)) and the misfit within
    FS_PEAK tE of t0 exceeds the misfit beyond (pulls capped at 5 sigma), and kept where its
    χ² is lower. (Refitting every curve with u0 < FS_U0_MAX also catches a small source's
    ~rho^2 / (8 u^2) brightening of the wings, at twice the cost, for 0 of 200 more planetary
    single lenses explained.)

    start: t0, tE, u0 (N,) of an earlier fit (e.g. to the curves pre-binned) to refine on these
    epochs instead of searching from the starts.
    """
    flux = np.asarray(flux, dtype=np.float64)
    N, L = flux.shape
    G = 1 if telescope is None or np.size(telescope) == 0 else int(np.max(telescope)) + 1
    if L == 0 or N == 0:  # nothing to fit
        nan = np.full(N, np.nan)
        return {"t0": nan, "tE": nan.copy(), "u0": nan.copy(), "rho": nan.copy(), "fs": np.full((N, G), np.nan),
                "fb": np.full((N, G), np.nan), "chi2": np.zeros(N), "n_obs": np.zeros(N, np.int64),
                "model": np.full((N, L), np.nan)}
    time = np.broadcast_to(np.asarray(time, dtype=np.float64), (N, L))
    err = np.broadcast_to(np.asarray(flux_err, dtype=np.float64), (N, L))
    tel = None if telescope is None else np.broadcast_to(np.asarray(telescope, dtype=np.int64), (N, L))
    # each curve's observed epochs only, curves of similar counts fitted together in blocks of
    # FIT_CHUNK (the per-epoch arrays of all starts stay in the CPU's cache): a ground survey's
    # curve or a year of context days costs its epochs, not the grid's
    good = np.isfinite(flux) & np.isfinite(err) & (err > 0) & np.isfinite(time)
    n_good = good.sum(1)
    rows = np.argsort(n_good, kind="stable")
    parts = []
    for i in range(0, N, FIT_CHUNK):
        r = rows[i:i + FIT_CHUNK]
        width = max(int(n_good[r].max()), 1)
        cols = _compact_columns(good[r], width)
        take = lambda a: np.take_along_axis(a[r], cols, 1)  # noqa: E731
        kept = np.arange(width)[None, :] < n_good[r][:, None]                  # the padding is no epoch
        theta0 = None if start is None else np.stack([start["t0"][r], np.log(start["tE"][r]),
                                                       np.log(start["u0"][r])], 1)
        part = _fit_block(take(time), np.where(kept, take(flux), np.nan), take(err),
                          None if tel is None else take(tel), G, n_iter, n_refine, coarse_points, finite_source, device,
                          theta0)
        part["model"] = single_lens_model(part, time[r], None if tel is None else tel[r])
        parts.append(part)
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    back = np.argsort(rows)
    return {k: v[back] for k, v in out.items()}


def _compact_columns(good, width: int) -> np.ndarray:
    """(B, width) column indices: each row's observed columns in order, then its last observed
    column repeated (padding, to be masked), or column 0 for a row with none."""
    B, L = good.shape
    order = np.argsort(~good, axis=1, kind="stable")[:, :width]   # observed first, in time order
    n = good.sum(1)
    last = order[np.arange(B), np.maximum(n - 1, 0)]
    return np.where(np.arange(width)[None, :] < n[:, None], order, last[:, None])


def single_lens_model(fit: dict, time, telescope=None) -> np.ndarray:
    """(N, L) fitted flux of `fit_pspl`'s results (t0, tE, u0, rho, fs, fb) at `time` (L,) or
    (N, L), per telescope (N, L) ints or None; NaN for a curve without a fit."""
    t0, tE, u0, rho = (torch.as_tensor(np.asarray(fit[k], dtype=np.float64)) for k in ("t0", "tE", "u0", "rho"))
    N = len(t0)
    time = torch.as_tensor(np.broadcast_to(np.asarray(time, dtype=np.float64), (N, np.shape(time)[-1])).copy())
    fs, fb = (torch.as_tensor(np.asarray(fit[k], dtype=np.float64)) for k in ("fs", "fb"))
    if telescope is None:
        fs_t, fb_t = fs[:, :1], fb[:, :1]
    else:
        tel = torch.as_tensor(np.broadcast_to(np.asarray(telescope, dtype=np.int64), time.shape).copy())
        fs_t, fb_t = fs.gather(1, tel), fb.gather(1, tel)
    finite = torch.isfinite(rho)
    theta = torch.stack([t0, tE.log(), u0.log(), torch.where(finite, rho, 1.0).log()], 1)
    A = _magnification(theta[:, :3], time)
    if finite.any():
        A[finite] = _magnification(theta[finite], time[finite])
    return (fs_t * A + fb_t).numpy()


def _fit_block(time, flux, err, telescope, G, n_iter, n_refine, coarse_points, finite_source, device,
               theta0=None) -> dict:
    """fit_pspl on a block of curves; time, flux, err (N, L); telescope (N, L) or None; G telescopes;
    theta0 (N, 3) t0, ln tE, ln u0 to refine instead of the search from the starts."""
    flux, err, time = (torch.tensor(np.asarray(x), device=device) for x in (flux, err, time))  # copies
    N, L = flux.shape
    good = torch.isfinite(flux) & torch.isfinite(err) & (err > 0) & torch.isfinite(time)
    weight = torch.where(good, 1.0 / torch.where(good, err, 1.0) ** 2, 0.0)
    flux = torch.where(good, flux, 0.0)
    time = torch.where(torch.isfinite(time), time, 0.0)
    if telescope is None:
        onehot = torch.ones(N, L, 1, dtype=flux.dtype, device=device)
    else:
        onehot = torch.nn.functional.one_hot(torch.tensor(np.asarray(telescope), device=device), G).to(flux.dtype)
    scale = (weight * flux.abs()).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp(min=1e-300)
    scale = torch.where(scale > 0, scale, 1.0)  # work in units of the mean flux (conditioning)
    flux, weight = flux / scale, weight * scale ** 2

    t_first = torch.where(good, time, torch.inf).min(1).values
    t_last = torch.where(good, time, -torch.inf).max(1).values
    span = (t_last - t_first).clamp(min=1.0)
    t_lo, t_hi = t_first - 0.5 * span, t_last + 0.5 * span
    if theta0 is not None:
        theta0 = torch.tensor(np.asarray(theta0, dtype=np.float64), device=device)
        fallback = torch.tensor([0.0, math.log(START_TE[1]), math.log(START_U0[1])], dtype=theta0.dtype, device=device)
        theta = _clamp(torch.where(torch.isfinite(theta0), theta0, fallback), t_lo, t_hi)
    else:
        theta = _search(time, flux, weight, onehot, coarse_points, n_iter, t_lo, t_hi)
    # refine on every epoch, in magnitudes: the observable whose errors are Gaussian-like and
    # do not depend on the measured flux (flux-space weights from the measured flux favour
    # models above the data)
    fs, fb = _solve_fluxes(_magnification(theta, time), flux, weight, onehot)
    mag = torch.where(good, -MAG_PER_LN * torch.log(torch.where(flux > 0, flux, 1.0)), 0.0)
    mag_weight = torch.where(good & (flux > 0), weight * flux * flux / MAG_PER_LN ** 2, 0.0)
    theta, fs, fb, chi2 = _levenberg_marquardt(theta, fs, fb, time, mag, mag_weight, onehot, n_refine, t_lo, t_hi,
                                               mag_space=True)
    if L > coarse_points and theta0 is None:  # an event shorter than a few coarse bins is smeared there:
        # a start from the epochs
        theta, fs, fb, chi2 = _short_event_start(theta, fs, fb, chi2, time, flux, weight, mag, mag_weight, onehot,
                                                 n_refine, t_lo, t_hi, coarse_points)
    model = (onehot * fs.unsqueeze(1)).sum(-1) * _magnification(theta, time) + (onehot * fb.unsqueeze(1)).sum(-1)
    rho = torch.full((N,), torch.nan, dtype=flux.dtype, device=device)
    if finite_source:
        tau = (time - theta[:, 0:1]) / theta[:, 1:2].exp()
        near = (tau.abs() < FS_WINDOW) & (mag_weight > 0)
        resid = mag + MAG_PER_LN * torch.log(torch.where(model > 0, model, 1.0))
        excess = (torch.where(near, mag_weight * resid * resid, 0.0).sum(1) - near.sum(1)).nan_to_num(0.0)
        poor = excess > torch.clamp(FS_TRIGGER * torch.sqrt(2.0 * near.sum(1)), min=25.0)
        # ... and the misfit is mostly there: a finite source changes the peak only (a variable
        # star misfit everywhere is not refitted); each epoch counted up to 5 sigma, so a few
        # outliers in the wings do not decide
        pull2 = (mag_weight * resid * resid).clamp(max=25.0)
        peak = (tau.abs() < FS_PEAK) & (mag_weight > 0)
        away = (~peak) & (mag_weight > 0)
        excess_peak = (torch.where(peak, pull2, 0.0).sum(1) - peak.sum(1)).nan_to_num(0.0)
        excess_away = (torch.where(away, pull2, 0.0).sum(1) - away.sum(1)).nan_to_num(0.0)
        poor = poor & (excess_peak > excess_away)
        rows = ((theta[:, 2].exp() < FS_U0_MAX) & torch.isfinite(chi2) & poor).nonzero().squeeze(1)
        if len(rows):
            fit = _finite_source_refine(theta[rows], time[rows], flux[rows], weight[rows], mag[rows], mag_weight[rows],
                                        onehot[rows], n_refine + 5, t_lo[rows], t_hi[rows])
            keep = fit[3] < chi2[rows]
            idx = rows[keep]
            theta = theta.index_copy(0, idx, fit[0][keep, :3])
            fs, fb = fs.index_copy(0, idx, fit[1][keep]), fb.index_copy(0, idx, fit[2][keep])
            chi2, rho = chi2.index_copy(0, idx, fit[3][keep]), rho.index_copy(0, idx, fit[0][keep, 3].exp())
            model = model.index_copy(0, idx, (onehot[idx] * fs[idx].unsqueeze(1)).sum(-1) * _magnification(fit[0][keep], time[idx])
                                     + (onehot[idx] * fb[idx].unsqueeze(1)).sum(-1))
    return {"t0": theta[:, 0].cpu().numpy(), "tE": theta[:, 1].exp().cpu().numpy(),
            "u0": theta[:, 2].exp().cpu().numpy(), "rho": rho.cpu().numpy(), "fs": (fs * scale).cpu().numpy(),
            "fb": (fb * scale).cpu().numpy(), "chi2": chi2.cpu().numpy(), "n_obs": (mag_weight > 0).sum(1).cpu().numpy(),
            "model": (model * scale).cpu().numpy()}


def _search(time, flux, weight, onehot, coarse_points, n_iter, t_lo, t_hi):
    """(N, 3) the best of the starts (`_starts`), each refined on the curve binned to at most
    coarse_points points (flux space, fluxes solved exactly)."""
    N, L = flux.shape
    if L > coarse_points:
        c_time, c_flux, c_weight, c_onehot = _bin(time, flux, weight, onehot, coarse_points)
    else:
        c_time, c_flux, c_weight, c_onehot = time, flux, weight, onehot
    starts = _starts(c_time, c_flux, c_weight)                                  # (N, S, 3)
    S = starts.shape[1]
    rep = lambda x: x.repeat_interleave(S, 0)  # noqa: E731
    theta, fs, fb, chi2 = _levenberg_marquardt(starts.reshape(N * S, 3), None, None, rep(c_time), rep(c_flux),
                                               rep(c_weight), rep(c_onehot), n_iter, rep(t_lo), rep(t_hi))
    best = chi2.reshape(N, S).nan_to_num(torch.inf).argmin(1)
    return theta.reshape(N, S, 3)[torch.arange(N), best]


SMOOTH_EPOCHS = 5  # running mean of the observed fluxes that picks peaks


def _running_mean(flux, observed):
    """(N, L) mean of the observed fluxes over SMOOTH_EPOCHS neighbouring epochs."""
    k = SMOOTH_EPOCHS
    num = torch.nn.functional.avg_pool1d((flux * observed).unsqueeze(1), k, 1, k // 2, count_include_pad=False)
    den = torch.nn.functional.avg_pool1d(observed.to(flux.dtype).unsqueeze(1), k, 1, k // 2, count_include_pad=False)
    return (num / den.clamp(min=1e-9)).squeeze(1)


def _short_event_start(theta, fs, fb, chi2, time, flux, weight, mag, mag_weight, onehot, n_iter, t_lo, t_hi,
                        coarse_points):
    """Refine again, on every epoch, the curves whose brightening (smoothed flux above half its
    maximum excess) lasts less than 3 coarse bins, from a start at its peak with tE its width,
    and keep that fit where its χ² is lower: a 0.1-day event is one point of a 72-day season
    binned to 400, so the coarse pass cannot find it."""
    observed = weight > 0
    smooth = torch.where(observed, _running_mean(flux, observed), torch.nan)
    base = torch.nanquantile(smooth, 0.25, dim=1, keepdim=True)
    peak = torch.where(observed, smooth, -torch.inf).max(1, keepdim=True)
    above = observed & (smooth - base > 0.5 * (peak.values - base))
    cadence = torch.nanmedian(torch.where(observed[:, 1:] & observed[:, :-1], time.diff(dim=1), torch.nan), dim=1).values
    width = above.sum(1) * cadence.nan_to_num(0.0)                            # days above half maximum
    span = torch.where(observed, time, -torch.inf).max(1).values - torch.where(observed, time, torch.inf).min(1).values
    sigma = torch.nanmedian(torch.where(observed, weight.clamp(min=1e-300).rsqrt(), torch.nan), dim=1).values
    noise = sigma / math.sqrt(SMOOTH_EPOCHS)                                  # of the running mean
    significant = (peak.values.squeeze(1) - base.squeeze(1)) > 5.0 * noise  # a brightening, not a noise spike
    rows = ((width < 3.0 * span / coarse_points) & significant & torch.isfinite(chi2) & (width > 0)).nonzero().squeeze(1)
    if not len(rows):
        return theta, fs, fb, chi2
    t_peak = time[rows].gather(1, peak.indices[rows]).squeeze(1)
    start = torch.stack([t_peak, width[rows].clamp(min=math.exp(LN_TE[0])).log(),
                         torch.full_like(t_peak, math.log(0.1))], 1)
    start = _clamp(start, t_lo[rows], t_hi[rows])
    fs0, fb0 = _solve_fluxes(_magnification(start, time[rows]), flux[rows], weight[rows], onehot[rows])
    th, f_s, f_b, c = _levenberg_marquardt(start, fs0, fb0, time[rows], mag[rows], mag_weight[rows], onehot[rows],
                                           n_iter, t_lo[rows], t_hi[rows], mag_space=True)
    keep = torch.isfinite(c) & (c < chi2[rows])
    idx = rows[keep]
    return (theta.index_copy(0, idx, th[keep]), fs.index_copy(0, idx, f_s[keep]), fb.index_copy(0, idx, f_b[keep]),
            chi2.index_copy(0, idx, c[keep]))


def _finite_source_refine(theta, time, flux, weight, mag, mag_weight, onehot, n_iter, t_lo, t_hi):
    """Finite-source fits (theta (B, 4), fs, fb, chi2) in magnitudes from the point-source
    solutions theta (B, 3): each curve refined from every one of FS_STARTS, the best fit kept."""
    B, S = len(theta), len(FS_STARTS)
    factor = torch.tensor(FS_STARTS, dtype=theta.dtype, device=theta.device).log().repeat(B, 1)  # (B S, 3)
    rep = lambda x: x.repeat_interleave(S, 0)  # noqa: E731
    starts = rep(theta)
    starts = _clamp(torch.stack([starts[:, 0], starts[:, 1] + factor[:, 0], starts[:, 2] + factor[:, 1],
                                 starts[:, 2] + factor[:, 2]], 1), rep(t_lo), rep(t_hi))
    fs, fb = _solve_fluxes(_magnification(starts, rep(time)), rep(flux), rep(weight), rep(onehot))
    theta4, fs, fb, chi2 = _levenberg_marquardt(starts, fs, fb, rep(time), rep(mag), rep(mag_weight), rep(onehot),
                                                n_iter, rep(t_lo), rep(t_hi), mag_space=True)
    pick = torch.arange(B, device=theta.device) * S + chi2.reshape(B, S).nan_to_num(torch.inf).argmin(1)
    return theta4[pick], fs[pick], fb[pick], chi2[pick]


def _starts(time, flux, weight):
    """(N, S, 3) starting points: t0 at the brightest smoothed point and at the flux-excess
    centroid, crossed with a few tE and u0."""
    observed = weight > 0
    smooth = torch.where(observed, _running_mean(flux, observed), -torch.inf)  # single outliers do not pick t0
    t_peak = time.gather(1, smooth.argmax(1, keepdim=True)).squeeze(1)
    base = torch.quantile(torch.where(observed, flux, torch.nan), 0.25, dim=1, keepdim=True).nan_to_num(0.0)
    excess = ((flux - base).clamp(min=0) * observed) ** 2
    t_mid = (excess * time).sum(1) / excess.sum(1).clamp(min=1e-300)
    t_mid = torch.where(excess.sum(1) > 0, t_mid, t_peak)
    grid = [(t, math.log(te), math.log(u)) for t in (0, 1) for te in START_TE for u in START_U0]
    t0 = torch.stack([t_peak, t_mid], 1)                                        # (N, 2)
    return torch.stack([torch.stack([t0[:, t], torch.full_like(t_peak, lte), torch.full_like(t_peak, lu)], 1)
                        for t, lte, lu in grid], 1)
