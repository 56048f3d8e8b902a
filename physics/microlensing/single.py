"""Single-lens magnification: point source (PSPL, Paczynski 1986) and finite source (ESPL)."""
from __future__ import annotations

import functools
import os

import numpy as np

ESPL_RANGE = 30.0  # ESPLMag2 where u < ESPL_RANGE rho; beyond, PSPL plus its second-order finite-source term


def pspl_magnification(t, t0, tE, u0, dtype=np.float64):
    """A(t) = (u^2 + 2) / (u sqrt(u^2 + 4)), u^2 = u0^2 + ((t - t0)/tE)^2.

    t: (T,) days; t0, tE (days), u0 (Einstein radii): scalars or (N, 1) arrays; returns
    (T,) or (N, T) of `dtype` (float32 is ~2x faster and accurate to ~1e-6 relative).
    """
    t = np.asarray(t, dtype=dtype)
    tau = (t - np.asarray(t0, dtype=dtype)) * (1 / np.asarray(tE, dtype=dtype))
    u2 = tau * tau + np.asarray(u0, dtype=dtype) ** 2
    return (u2 + 2) / np.sqrt(u2 * (u2 + 4))


@functools.lru_cache(maxsize=1)
def _espl_vbbl():
    """A VBBinaryLensing instance with its precomputed ESPL table loaded (uniform source)."""
    import VBBinaryLensing
    table = os.path.join(os.path.dirname(VBBinaryLensing.__file__), "data", "ESPL.tbl")
    if not os.path.isfile(table):
        raise RuntimeError(f"VBBinaryLensing's ESPL table is missing ({table}); reinstall VBBinaryLensing")
    vbbl = VBBinaryLensing.VBBinaryLensing()
    vbbl.LoadESPLTable(table)
    vbbl.a1 = 0.0  # uniform disk, as the binary curves
    # ESPLMag2 returns the point-source value wherever the finite-source term is below Tol (default
    # 1e-2: at u ~ 7 rho for rho = 0.05, a 2.6e-3 step in the light curve that Roman photometry sees)
    vbbl.Tol = 1e-6
    return vbbl


def finite_source_correction(u, rho):
    """Second-order finite-source term of a uniform disk far from the lens (u >> rho):
    A_ESPL - A_PSPL = rho^2 / 8 * Laplacian(A_PSPL)(u), accurate to O(rho^4 / u^4)."""
    w = u * u + 4.0
    return rho * rho / 8.0 * (8.0 / (u ** 3 * w ** 1.5) + 24.0 / (u * w ** 2.5))


def espl_magnification(t, t0, tE, u0, rho, dtype=np.float64):
    """Finite (uniform) source, point lens: VBBinaryLensing's ESPLMag2 where u < 30 rho, PSPL plus
    `finite_source_correction` elsewhere (continuous to ~3e-6 across u = 30 rho). Same shapes as
    `pspl_magnification`, plus rho (Einstein radii) of t0's shape.

    Where u0 is comparable to rho the peak is rounded and capped near sqrt(1 + 4 / rho^2);
    for u0 >> rho the curve is PSPL's.
    """
    amp = pspl_magnification(t, t0, tE, u0, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    tau = (t - np.asarray(t0, dtype=np.float64)) / np.asarray(tE, dtype=np.float64)
    u = np.sqrt(tau * tau + np.asarray(u0, dtype=np.float64) ** 2)
    rho_full = np.broadcast_to(np.asarray(rho, dtype=np.float64), u.shape)
    near = u < ESPL_RANGE * rho_full
    amp = amp + np.where(near, 0.0, finite_source_correction(u, rho_full))
    if near.any():
        vbbl = _espl_vbbl()
        amp[near] = [vbbl.ESPLMag2(float(a), float(b)) for a, b in zip(u[near], rho_full[near])]
    return amp.astype(dtype, copy=False)
