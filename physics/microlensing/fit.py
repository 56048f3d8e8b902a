"""Batched least-squares fits of single-lens (PSPL) light curves, in torch.

Model, per curve and per telescope g: F(t) = F_s,g A(u(t)) + F_b,g with the PSPL A(u) and
u^2 = u0^2 + ((t - t0) / tE)^2. The three nonlinear parameters (t0 [days], ln tE, ln u0) are
shared by all telescopes; each telescope's source and blend fluxes are solved exactly
(weighted linear least squares) at every step, so the search is over three parameters only
(variable projection). The search is Levenberg-Marquardt from several starts: a coarse pass on
the curve binned to at most `coarse_points` points picks the best starts, which are then
refined on the unbinned epochs.

Everything is vectorised over curves × starts, so a few thousand full-cadence Roman seasons
(6,912 epochs each) fit in a minute on a laptop CPU. Used for the Δχ² ceiling of evaluate.py
(how far a binary is from any single-lens curve) and for the classifier's residual features.
"""
from __future__ import annotations

import math

import numpy as np
import torch

LN_TE = (math.log(0.3), math.log(3000.0))   # bounds of ln tE (tE in days)
LN_U0 = (math.log(1e-4), math.log(3.0))     # bounds of ln u0
START_TE = (4.0, 15.0, 40.0)
START_U0 = (0.03, 0.3)
MAG_PER_LN = 2.5 / math.log(10.0)


def pspl_with_derivative(u):
    """A(u) and dA/du of the point-source point-lens magnification; u > 0 tensor."""
    u2 = u * u
    root = torch.sqrt(u2 + 4.0)
    return (u2 + 2.0) / (u * root), -8.0 / (u2 * root ** 3)


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
    """χ² (B,) of the model at theta (B, 3), fluxes fs, fb (B, G); optionally J^T W J (B, P, P)
    and J^T W r (B, P) over all P = 3 + 2G parameters (theta, then fs, then fb).

    mag_space: `flux` holds magnitudes -2.5 log10(f) and `weight` 1/σ_mag²; the residuals are
    in magnitudes (a model flux <= 0 gives χ² = inf)."""
    t0, tE, u0 = theta[:, 0:1], theta[:, 1:2].exp(), theta[:, 2:3].exp()
    tau = (time - t0) / tE
    u = torch.sqrt(tau * tau + u0 * u0)
    A, dA = pspl_with_derivative(u)
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
    J = torch.cat([torch.stack([g * (-tau / tE), g * (-tau * tau), g * (u0 * u0)], dim=-1),
                   onehot * A.unsqueeze(-1), onehot], dim=-1)      # (B, L, P) dF/dparameter
    if mag_space:
        J = J * (-MAG_PER_LN / torch.where(model > 0, model, 1.0)).unsqueeze(-1)
    wJ = weight.unsqueeze(-1) * J
    return chi2, A, wJ.transpose(1, 2) @ J, (wJ * resid.unsqueeze(-1)).sum(1)


def _clamp(theta, t_lo, t_hi):
    return torch.stack([torch.maximum(torch.minimum(theta[:, 0], t_hi), t_lo),
                        theta[:, 1].clamp(*LN_TE), theta[:, 2].clamp(*LN_U0)], dim=1)


def _levenberg_marquardt(theta, fs, fb, time, flux, weight, onehot, n_iter, t_lo, t_hi, mag_space=False):
    """Refine theta (B, 3) with every telescope's fluxes free. In flux space the fluxes are
    re-solved exactly for each trial theta (fs, fb may be None); in magnitudes they are steps of
    the search like theta. Returns (theta, fs, fb, chi2)."""
    G = onehot.shape[-1]
    if fs is None:
        fs, fb = _solve_fluxes(_magnification(theta, time), flux, weight, onehot)
    chi2, _, H, grad = _evaluate(theta, fs, fb, time, flux, weight, onehot, True, mag_space)
    lam = torch.full((len(theta),), 1e-3, dtype=theta.dtype, device=theta.device)
    eye = torch.eye(3 + 2 * G, dtype=theta.dtype, device=theta.device)
    for _ in range(n_iter):
        diag = torch.diagonal(H, dim1=1, dim2=2).clamp(min=1e-12)
        step = torch.linalg.solve(H + lam[:, None, None] * (diag[:, :, None] * eye), grad.unsqueeze(-1)).squeeze(-1)
        trial = _clamp(theta + step[:, :3], t_lo, t_hi)
        if mag_space:
            fs_trial, fb_trial = fs + step[:, 3:3 + G], fb + step[:, 3 + G:]
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
    tau = (time - theta[:, 0:1]) / theta[:, 1:2].exp()
    return pspl_with_derivative(torch.sqrt(tau * tau + theta[:, 2:3].exp() ** 2))[0]


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
             coarse_points: int = 400, device="cpu") -> dict:
    """Best PSPL fit of each curve.

    time: (L,) or (N, L) days; flux, flux_err: (N, L), any flux unit (each curve and telescope
    has its own F_s, F_b), NaN or err <= 0 where not observed; telescope: (N, L) ints 0..G-1 or
    None (one telescope). Returns numpy arrays: t0, tE, u0 (N,), fs, fb (N, G), n_obs (N,), model
    (N, L) the fitted flux at every epoch, and chi2 (N,) of the magnitudes, sum ((m - m_model) / σ_m)^2 with m = -2.5 log10 f and
    σ_m = 1.0857 σ_f / f (the errors the photometry came with, when it came in magnitudes).
    """
    flux = torch.as_tensor(np.asarray(flux, dtype=np.float64), device=device)
    err = torch.as_tensor(np.asarray(flux_err, dtype=np.float64), device=device)
    N, L = flux.shape
    if L == 0 or N == 0:  # nothing to fit
        G = 1 if telescope is None or np.size(telescope) == 0 else int(np.max(telescope)) + 1
        nan = np.full(N, np.nan)
        return {"t0": nan, "tE": nan.copy(), "u0": nan.copy(), "fs": np.full((N, G), np.nan), "fb": np.full((N, G), np.nan),
                "chi2": np.zeros(N), "n_obs": np.zeros(N, np.int64), "model": np.full((N, L), np.nan)}
    time = torch.as_tensor(np.asarray(time, dtype=np.float64), device=device).expand(N, L).contiguous()
    good = torch.isfinite(flux) & torch.isfinite(err) & (err > 0) & torch.isfinite(time)
    weight = torch.where(good, 1.0 / torch.where(good, err, 1.0) ** 2, 0.0)
    flux = torch.where(good, flux, 0.0)
    time = torch.where(torch.isfinite(time), time, 0.0)
    if telescope is None:
        onehot = torch.ones(N, L, 1, dtype=flux.dtype, device=device)
    else:
        tel = torch.as_tensor(np.asarray(telescope, dtype=np.int64), device=device).expand(N, L)
        onehot = torch.nn.functional.one_hot(tel, int(tel.max()) + 1).to(flux.dtype)
    scale = (weight * flux.abs()).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp(min=1e-300)
    scale = torch.where(scale > 0, scale, 1.0)  # work in units of the mean flux (conditioning)
    flux, weight = flux / scale, weight * scale ** 2

    t_first = torch.where(good, time, torch.inf).min(1).values
    t_last = torch.where(good, time, -torch.inf).max(1).values
    span = (t_last - t_first).clamp(min=1.0)
    t_lo, t_hi = t_first - 0.5 * span, t_last + 0.5 * span
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
    theta = theta.reshape(N, S, 3)[torch.arange(N), best]
    # refine on every epoch, in magnitudes: the observable whose errors are Gaussian-like and
    # do not depend on the measured flux (flux-space weights from the measured flux favour
    # models above the data)
    fs, fb = _solve_fluxes(_magnification(theta, time), flux, weight, onehot)
    mag = torch.where(good, -MAG_PER_LN * torch.log(torch.where(flux > 0, flux, 1.0)), 0.0)
    mag_weight = torch.where(good & (flux > 0), weight * flux * flux / MAG_PER_LN ** 2, 0.0)
    theta, fs, fb, chi2 = _levenberg_marquardt(theta, fs, fb, time, mag, mag_weight, onehot, n_refine, t_lo, t_hi,
                                               mag_space=True)
    model = (onehot * fs.unsqueeze(1)).sum(-1) * _magnification(theta, time) + (onehot * fb.unsqueeze(1)).sum(-1)
    return {"t0": theta[:, 0].cpu().numpy(), "tE": theta[:, 1].exp().cpu().numpy(),
            "u0": theta[:, 2].exp().cpu().numpy(), "fs": (fs * scale).cpu().numpy(),
            "fb": (fb * scale).cpu().numpy(), "chi2": chi2.cpu().numpy(), "n_obs": (mag_weight > 0).sum(1).cpu().numpy(),
            "model": (model * scale).cpu().numpy()}


def _starts(time, flux, weight):
    """(N, S, 3) starting points: t0 at the brightest smoothed point and at the flux-excess
    centroid, crossed with a few tE and u0."""
    observed = weight > 0
    # a 5-point running mean of the observed fluxes (single outliers do not pick t0)
    k = 5
    num = torch.nn.functional.avg_pool1d((flux * observed).unsqueeze(1), k, 1, k // 2, count_include_pad=False)
    den = torch.nn.functional.avg_pool1d(observed.to(flux.dtype).unsqueeze(1), k, 1, k // 2, count_include_pad=False)
    smooth = torch.where(observed, (num / den.clamp(min=1e-9)).squeeze(1), -torch.inf)
    t_peak = time.gather(1, smooth.argmax(1, keepdim=True)).squeeze(1)
    base = torch.quantile(torch.where(observed, flux, torch.nan), 0.25, dim=1, keepdim=True).nan_to_num(0.0)
    excess = ((flux - base).clamp(min=0) * observed) ** 2
    t_mid = (excess * time).sum(1) / excess.sum(1).clamp(min=1e-300)
    t_mid = torch.where(excess.sum(1) > 0, t_mid, t_peak)
    grid = [(t, math.log(te), math.log(u)) for t in (0, 1) for te in START_TE for u in START_U0]
    t0 = torch.stack([t_peak, t_mid], 1)                                        # (N, 2)
    return torch.stack([torch.stack([t0[:, t], torch.full_like(t_peak, lte), torch.full_like(t_peak, lu)], 1)
                        for t, lte, lu in grid], 1)
