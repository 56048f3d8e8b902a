"""Deflection angles of lens mass profiles, batched in PyTorch.

Every function takes image-plane coordinates `x, y` in arcsec, shaped (B, H, W) or
broadcastable to it (a (1, H, W) grid is fine), and per-image parameters shaped (B,) (or
(B, K) for K point masses / subhalos), and returns the deflection (alpha_x, alpha_y) in
arcsec, each (B, H, W). The lens equation is beta = theta - alpha.

Conventions (the same as lenstronomy's, so parameters carry over unchanged):
- Ellipticity (e1, e2): axis ratio q = (1 - |e|) / (1 + |e|), position angle
  phi = atan2(e2, e1) / 2 of the major axis, counter-clockwise from +x.
- The SIE Einstein radius is the "product average" one: the convergence is
  kappa = theta_E / (2 R) with R = sqrt(q x'^2 + y'^2 / q) in the frame of the major axis,
  so the area inside the critical ellipse equals pi theta_E^2, whatever q.
- NFW and truncated NFW are parametrised by the scale radius Rs and alpha_Rs, the deflection
  of the (untruncated) NFW profile at Rs; `physics.strong.cosmology` converts from halo mass.
"""
from __future__ import annotations

import math

import torch

EPS = 1e-12  # arcsec^2; keeps r^2 of a pixel centred on a point mass finite


def _col(t, ndim=3):
    """(B,) or python float -> tensor broadcastable against (B, H, W)."""
    t = torch.as_tensor(t)
    return t.reshape(t.shape + (1,) * (ndim - t.dim())) if t.dim() else t


def ellipticity_to_q_phi(e1, e2):
    """(e1, e2) -> (axis ratio q <= 1, major-axis angle phi in radians)."""
    e1, e2 = torch.as_tensor(e1), torch.as_tensor(e2)
    e = torch.sqrt(e1 * e1 + e2 * e2).clamp(max=0.9999)
    return (1 - e) / (1 + e), torch.atan2(e2, e1) / 2


def q_phi_to_ellipticity(q, phi):
    q, phi = torch.as_tensor(q), torch.as_tensor(phi)
    e = (1 - q) / (1 + q)
    return e * torch.cos(2 * phi), e * torch.sin(2 * phi)


def sie(x, y, theta_e, e1, e2, center_x=0.0, center_y=0.0, core=0.0):
    """Singular (or cored) isothermal ellipsoid.

    theta_e: product-average Einstein radius (arcsec), (B,). core: core radius s (arcsec,
    lenstronomy's NIE s_scale), 0 for the singular profile. Uses the Keeton & Kochanek (1998)
    closed form in the major-axis frame. q is capped at 0.99999 (the formula is 0/0 at q = 1;
    the error this makes is far below 1e-4); a ray through the centre is deflected by 0.
    """
    q, phi = ellipticity_to_q_phi(_col(e1), _col(e2))
    q = q.clamp(max=0.99999)
    theta_e, core = _col(theta_e), _col(core)
    b = theta_e * torch.sqrt(q)       # lenstronomy's major-axis normalisation
    s = core / torch.sqrt(q)
    cos, sin = torch.cos(phi), torch.sin(phi)
    dx, dy = x - _col(center_x), y - _col(center_y)
    xm = cos * dx + sin * dy          # major-axis frame
    ym = -sin * dx + cos * dy
    root = torch.sqrt(1 - q * q)
    psi = torch.sqrt(q * q * (s * s + xm * xm) + ym * ym)
    # at the centre itself (a ray on it) 0/0: the deflection's symmetric limit there is 0
    ax_m = b / root * torch.atan(root * xm / (psi + s).clamp(min=1e-30))
    ay_m = b / root * torch.atanh(root * ym / (psi + q * q * s).clamp(min=1e-30))
    return cos * ax_m - sin * ay_m, sin * ax_m + cos * ay_m


def shear(x, y, gamma1, gamma2, center_x=0.0, center_y=0.0):
    """External shear (gamma1, gamma2) about (center_x, center_y); potential
    psi = gamma1 (x^2 - y^2) / 2 + gamma2 x y."""
    dx, dy = x - _col(center_x), y - _col(center_y)
    g1, g2 = _col(gamma1), _col(gamma2)
    return g1 * dx + g2 * dy, g2 * dx - g1 * dy


def point_masses(x, y, theta_e, center_x, center_y, chunk=8, unroll=False):
    """Sum of K point masses. theta_e, center_x, center_y: (B, K) arcsec; a mass with
    theta_e = 0 is padding and contributes nothing. Loops over chunks of K to bound memory
    at B * chunk * H * W elements. unroll=True adds one mass at a time, which torch.compile
    fuses into a single pass over the pixels (10x faster on a CPU than the eager chunks)."""
    theta_e, center_x, center_y = (torch.as_tensor(t) for t in (theta_e, center_x, center_y))
    if unroll:
        ax = torch.zeros_like(x + _col(theta_e[:, 0])) if theta_e.shape[1] else torch.zeros_like(x)
        ay = torch.zeros_like(ax)
        for k in range(theta_e.shape[1]):
            dx, dy = x - _col(center_x[:, k]), y - _col(center_y[:, k])
            scale = _col(theta_e[:, k] ** 2) / (dx * dx + dy * dy + EPS)
            ax, ay = ax + scale * dx, ay + scale * dy
        return ax, ay
    xx, yy = x.unsqueeze(1), y.unsqueeze(1)  # (B, 1, H, W)
    ax = torch.zeros(torch.broadcast_shapes(x.shape, theta_e.shape[:1] + (1, 1)), dtype=x.dtype, device=x.device)
    ay = torch.zeros_like(ax)
    for k in range(0, theta_e.shape[1], chunk):
        t2 = _col(theta_e[:, k:k + chunk] ** 2, 4)  # (B, k, 1, 1)
        dx = xx - _col(center_x[:, k:k + chunk], 4)
        dy = yy - _col(center_y[:, k:k + chunk], 4)
        scale = t2 / (dx * dx + dy * dy + EPS)
        ax += (scale * dx).sum(1)
        ay += (scale * dy).sum(1)
    return ax, ay


def _nfw_f(X):
    """F(X) = arccosh(1/X)/sqrt(1-X^2) (X<1), 1 (X=1), arccos(1/X)/sqrt(X^2-1) (X>1), X > 0."""
    inside = X < 1
    Xi = torch.where(inside, X, torch.full_like(X, 0.5))
    Xo = torch.where(inside, torch.full_like(X, 2.0), X)
    f_in = torch.acosh(1 / Xi) / torch.sqrt(1 - Xi * Xi)
    f_out = torch.acos(1 / Xo) / torch.sqrt(Xo * Xo - 1)
    f = torch.where(inside, f_in, f_out)
    # near X = 1 both forms lose precision; use the series 1 - 2(X-1)/3 + 7(X-1)^2/15
    d = X - 1
    return torch.where(d.abs() < 1e-3, 1 - 2 * d / 3 + 7 * d * d / 15, f)


def _radial(x, y, center_x, center_y, rs):
    dx, dy = x - center_x, y - center_y
    r = torch.sqrt(dx * dx + dy * dy).clamp(min=1e-6)  # arcsec; lenstronomy's floor is similar
    return dx, dy, r, r / rs


def nfw(x, y, rs, alpha_rs, center_x, center_y, chunk=32):
    """Sum of K spherical NFW haloes, parameters (B, K): rs scale radius (arcsec), alpha_rs
    deflection at rs (arcsec). alpha(r) = alpha_rs * [g(X)/X] / g(1), X = r/rs,
    g(X) = ln(X/2) + F(X)."""
    return _sum_radial(x, y, (rs, alpha_rs, center_x, center_y), _nfw_profile, chunk)


def tnfw(x, y, rs, alpha_rs, r_trunc, center_x, center_y, chunk=32):
    """Sum of K truncated NFW haloes (Baltz, Marshall & Oguri 2009, density times
    tau^2 / (tau^2 + X^2), tau = r_trunc / rs); alpha_rs as for the untruncated profile."""
    return _sum_radial(x, y, (rs, alpha_rs, r_trunc, center_x, center_y), _tnfw_profile, chunk)


def _sum_radial(x, y, params, profile, chunk):
    """Sum over K circular profiles; params = (rs, *profile_args, center_x, center_y), each
    (B, K); profile(X, rs, *profile_args) gives the deflection modulus at X = r / rs."""
    params = [torch.as_tensor(p) for p in params]
    xx, yy = x.unsqueeze(1), y.unsqueeze(1)  # (B, 1, H, W)
    ax = torch.zeros(torch.broadcast_shapes(x.shape, params[0].shape[:1] + (1, 1)), dtype=x.dtype, device=x.device)
    ay = torch.zeros_like(ax)
    for k in range(0, params[0].shape[1], chunk):
        p = [_col(t[:, k:k + chunk], 4) for t in params]  # each (B, k, 1, 1)
        dx, dy, r, X = _radial(xx, yy, p[-2], p[-1], p[0])
        scale = profile(X, *p[:-2]) / r  # alpha(r) / r
        ax += (scale * dx).sum(1)
        ay += (scale * dy).sum(1)
    return ax, ay


G1 = 1 + math.log(0.5)  # g(1) of the NFW profile


def _nfw_profile(X, rs, alpha_rs):
    return alpha_rs * (torch.log(X / 2) + _nfw_f(X)) / (X * G1)


def _tnfw_profile(X, rs, alpha_rs, r_trunc):
    """Baltz, Marshall & Oguri (2009) projected mass of rho_NFW * tau^2 / (tau^2 + X^2),
    normalised like g(X) of the untruncated profile."""
    tau = r_trunc / rs
    t2 = tau * tau
    root = torch.sqrt(t2 + X * X)
    mass = t2 / (t2 + 1) ** 2 * ((t2 + 1 + 2 * (X * X - 1)) * _nfw_f(X) + math.pi * tau
                                 + (t2 - 1) * torch.log(tau)
                                 + root * (-math.pi + (t2 - 1) / tau * torch.log(X / (root + tau))))
    return alpha_rs * mass / (X * G1)
