"""Binary-lens light curves: VBBinaryLensing evaluated only where the curve needs it.

A full-cadence Roman season is 6,912 epochs; VBBinaryLensing costs 4-10 us per epoch even
far from caustics and tens of us near them, where it integrates the finite source, so a
binary event at full cadence takes 40-70 ms. Most of a season is smooth, so we

1. compute the source trajectory and a lower bound on the distance d(t) to the caustics
   (caustic curves from VBBinaryLensing, a KD-tree queried every few epochs);
2. take as the local structure scale of A(y) d^1.5 (cusp ridges narrow like d^1.5 off a
   cusp; plain d misses them), or rho where the source is near the caustic, or |d - rho|
   where the source overlaps it (the curve has kinks when the limb touches the caustic);
3. choose sample epochs on a dyadic grid so that neighbouring samples are at most
   ``spacing`` structure scales apart in the source plane (full cadence where that is less
   than one epoch), so no caustic feature can fall between samples;
4. evaluate at the samples only: VBBinaryLensing's finite-source BinaryMag2 near caustics;
   where d^1.5 >= 30 rho, the point-source BinaryMag0 plus the disk's quadrupole term
   (rho^2/8) Laplacian(A) from a 4-point stencil (5 calls of ~1 us);
5. control the error: for every interval wider than one epoch, evaluate its midpoint and
   compare with the cubic spline (in log A) through the other samples; intervals whose
   error exceeds ``check_tol`` are bisected and checked again;
6. interpolate log A with a cubic spline through all samples to every epoch.

Against VBBinaryLensing at Tol = RelTol = 1e-5 at full cadence the result stays within
max |dA|/A <= 1e-3 (tests/test_binary.py, bench/bench_simulate.py measure it).

Conventions are VBBinaryLensing's ``BinaryLightCurve``: centre-of-mass frame, the heavier
lens on the negative y1 axis, s and rho in Einstein radii, q = m2/m1, alpha in radians,
y1 = u0 sin(alpha) - tau cos(alpha), y2 = -u0 cos(alpha) - tau sin(alpha), tau = (t - t0)/tE.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import VBBinaryLensing


def binary_trajectory(t, u0, alpha, tE, t0):
    """Source position (y1, y2) in Einstein radii at times t (days), VBBinaryLensing frame."""
    tau = (np.asarray(t, dtype=np.float64) - t0) / tE
    y1 = u0 * np.sin(alpha) - tau * np.cos(alpha)
    y2 = -u0 * np.cos(alpha) - tau * np.sin(alpha)
    return y1, y2


def make_vbbl(tol: float = 1e-3, rel_tol: float = 1e-3):
    """A VBBinaryLensing instance with the given absolute and relative tolerances."""
    vbbl = VBBinaryLensing.VBBinaryLensing()
    vbbl.Tol = tol
    vbbl.RelTol = rel_tol
    return vbbl


def full_binary_curve(vbbl, t, s, q, u0, alpha, rho, tE, t0):
    """Reference: VBBinaryLensing's BinaryLightCurve at every epoch of t."""
    params = [np.log(s), np.log(q), u0, alpha, np.log(rho), np.log(tE), t0]
    return np.asarray(vbbl.BinaryLightCurve(params, np.asarray(t, np.float64).tolist())[0])


@dataclass(frozen=True)
class AdaptiveSettings:
    """Knobs of the adaptive scheme (defaults measured to meet max |dA|/A <= 1e-3)."""

    spacing: float = 0.2        # widest sample spacing, in units of the structure scale
    check_tol: float = 2e-4     # bisect an interval whose midpoint error exceeds this
    max_block: int = 256        # widest interval between samples, epochs
    caustic_points: int = 400   # VBBinaryLensing NPcrit used for the caustic curves
    point_source_beyond: float = 30.0  # d**ridge_power / rho beyond which the point source is used
    ridge_power: float = 1.5    # structure scale = d**ridge_power (cusp ridges narrow as d^1.5)
    limb_floor: float = 0.1     # smallest scale, in rho, near limb-caustic contact
    coarse_step: int = 4        # epochs between exact caustic-distance queries


class AdaptiveBinaryLightCurve:
    """Binary-lens magnification on a fixed time grid, computed adaptively.

    One instance per process: it owns a VBBinaryLensing object (not thread-safe) and the
    time grid. Call it with one event's parameters to get A(t) at every epoch.
    """

    def __init__(self, t, dt: float, tol: float = 1e-3, settings: AdaptiveSettings = AdaptiveSettings()):
        self.t = np.asarray(t, dtype=np.float64)  # (T,) days, uniform grid
        self.dt = float(dt)                       # days between epochs
        self.settings = settings
        self.vbbl = make_vbbl(tol, tol)
        self.vbbl.NPcrit = settings.caustic_points
        self.n_evals = 0  # VBBinaryLensing evaluations made by the last call

    def caustic_distance(self, s, q, y1, y2, step):
        """Lower bound on the distance (Einstein radii) from each trajectory point to the caustics.

        y1, y2: (T,) positions along a straight trajectory, `step` apart. The exact distance is
        queried every `coarse_step` points; between them the distance can shrink by at most
        the path length travelled (it is 1-Lipschitz), which gives the bound.
        """
        curves = [np.asarray(c, dtype=np.float64).T for c in self.vbbl.Caustics(s, q)]  # (P_i, 2)
        pts = np.concatenate(curves)
        # Each caustic is a polyline through its points; a point's distance to the nearest
        # vertex overestimates its distance to the curve by at most half the longest segment.
        seg = max(np.hypot(*np.diff(c, axis=0).T).max() for c in curves)
        k = self.settings.coarse_step
        T = len(y1)
        coarse = np.arange(0, T + k - 1, k).clip(max=T - 1)
        from scipy.spatial import cKDTree  # imported here: reading files (predict.py) needs no scipy
        dist, _ = cKDTree(pts).query(np.column_stack([y1[coarse], y2[coarse]]))
        dist = dist - 0.5 * seg
        i = np.arange(T)
        left = i // k
        lower = np.maximum(dist[left] - (i - coarse[left]) * step,
                           dist[left + 1] - (coarse[left + 1] - i) * step)
        return np.maximum(lower, 0.0)

    def _evaluate(self, params, idx, point_source, y1, y2):
        """log A at epochs idx: VBBinaryLensing's finite-source BinaryMag2 near caustics; far
        from them (point_source mask) the point-source BinaryMag0 plus the quadrupole term of
        the uniform disk, A_disk = A + (rho^2 / 8) Laplacian(A) + O(rho^4), whose Laplacian
        comes from a 4-point stencil of step rho."""
        self.n_evals += len(idx)
        s, q, rho = np.exp(params[0]), np.exp(params[1]), np.exp(params[4])
        out = np.empty(len(idx))
        far = point_source[idx]
        if far.any():
            mag0 = self.vbbl.BinaryMag0
            y1, y2 = y1[idx[far]], y2[idx[far]]
            centre = np.array([mag0(s, q, a, b) for a, b in zip(y1.tolist(), y2.tolist())])
            ring = sum(np.array([mag0(s, q, a, b) for a, b in zip((y1 + d1).tolist(), (y2 + d2).tolist())])
                       for d1, d2 in ((rho, 0.0), (-rho, 0.0), (0.0, rho), (0.0, -rho)))
            out[far] = centre + (ring - 4.0 * centre) / 8.0  # (rho^2/8) * (ring - 4 centre) / rho^2
        near = idx[~far]
        if len(near):
            out[~far] = self.vbbl.BinaryLightCurve(params, self.t[near].tolist())[0]
        return np.log(out)

    def __call__(self, s, q, u0, alpha, rho, tE, t0):
        from scipy.interpolate import CubicSpline
        st = self.settings
        t, T = self.t, len(self.t)
        self.n_evals = 0
        y1, y2 = binary_trajectory(t, u0, alpha, tE, t0)
        d = self.caustic_distance(s, q, y1, y2, self.dt / tE)
        # Einstein radii over which A(y) is smooth: cusp ridges narrow as d^1.5 off the
        # caustic; where the source overlaps it (d < 2 rho) the curve has kinks when the limb
        # touches the caustic (d = rho), so there the scale is the limb's distance |d - rho|.
        scale = np.where(d < 2 * rho, np.maximum(np.abs(d - rho), st.limb_floor * rho),
                         np.maximum(d ** st.ridge_power, rho))
        point_source = d ** st.ridge_power >= st.point_source_beyond * rho
        # widest allowed gap between samples, in epochs (source moves dt/tE per epoch)
        allowed = np.floor(st.spacing * scale * tE / self.dt)

        # dyadic blocks [j*p, (j+1)*p]: accept a block when every epoch in it allows gap p
        P = st.max_block
        n_top = -(-(T - 1) // P)
        pad = np.full(n_top * P + 1, np.inf)
        pad[:T] = allowed
        edges = []      # (start, size) of accepted blocks
        active = np.arange(n_top)
        p = P
        while len(active):
            blockmin = np.minimum(pad[:-1].reshape(-1, p).min(1), pad[p::p])[active]
            ok = (blockmin >= p) | (p == 1)
            edges.append(np.column_stack([active[ok] * p, np.full(ok.sum(), p)]))
            bad = active[~ok]
            active = np.concatenate([2 * bad, 2 * bad + 1])
            p //= 2
        blocks = np.concatenate(edges)
        blocks = blocks[blocks[:, 0] < T - 1]

        params = [np.log(s), np.log(q), u0, alpha, np.log(rho), np.log(tE), t0]
        samples = np.unique(np.concatenate([blocks[:, 0], np.minimum(blocks.sum(1), T - 1), [T - 1]]))
        logA = np.full(T, np.nan)
        logA[samples] = self._evaluate(params, samples, point_source, y1, y2)

        # error control: check the midpoint of every block wider than one epoch
        todo = blocks[(blocks[:, 1] >= 2) & (blocks[:, 0] + blocks[:, 1] // 2 < T - 1)]
        while len(todo):
            known = np.flatnonzero(~np.isnan(logA))
            spline = CubicSpline(t[known], logA[known])
            mids = todo[:, 0] + todo[:, 1] // 2
            logA[mids] = self._evaluate(params, mids, point_source, y1, y2)
            err = np.abs(np.expm1(spline(t[mids]) - logA[mids]))
            bad = todo[err > st.check_tol]
            half = bad[:, 1] // 2
            children = np.concatenate([np.column_stack([bad[:, 0], half]),
                                       np.column_stack([bad[:, 0] + half, half])])
            todo = children[(children[:, 1] >= 2) & (children[:, 0] + children[:, 1] // 2 < T - 1)]

        known = np.flatnonzero(~np.isnan(logA))
        if len(known) < T:
            missing = np.isnan(logA)
            logA[missing] = CubicSpline(t[known], logA[known])(t[missing])
        return np.exp(logA)
