"""Surface-brightness profiles, batched in PyTorch.

Coordinates x, y in arcsec shaped (B, H, W) (or broadcastable); per-image parameters (B,),
or (B, J) for J components that are summed. Every profile returns surface brightness in
flux per arcsec^2 for the given total flux (a pixel's value is its mean surface brightness
times its area). Ellipticity (e1, e2) as in `physics.strong.mass`; radii are "product
average" radii, R = sqrt(q x'^2 + y'^2 / q) in the frame of the major axis, so a circularly
symmetric profile's total flux does not change with q.
"""
from __future__ import annotations

import math

import torch

from physics.strong.mass import _col, ellipticity_to_q_phi


def sersic_b(n):
    """b_n such that R_e encloses half the light: P(2n, b_n) = 1/2 (regularised lower
    incomplete gamma). Starts from the Ciotti & Bertin (1999) expansion (2e-3 off at n = 0.5)
    and refines with three Newton steps (relative error < 1e-10 for 0.3 < n < 10).
    lenstronomy uses the approximation b_n = 1.9992 n - 0.3271 instead."""
    n = torch.as_tensor(n)
    a = 2 * n
    b = 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n * n) + 131 / (1148175 * n ** 3)
    for _ in range(3):  # dP/db = b^(a-1) e^-b / Gamma(a)
        log_density = (a - 1) * torch.log(b) - b - torch.lgamma(a)
        b = b - (torch.special.gammainc(a, b) - 0.5) / torch.exp(log_density)
    return b


def sersic_intensity_at_re(flux, r_e, n, b=None):
    """I_e such that the profile integrates to `flux`: flux = 2 pi n I_e R_e^2 e^b b^-2n Gamma(2n)."""
    n = torch.as_tensor(n)
    b = sersic_b(n) if b is None else b
    log_norm = math.log(2 * math.pi) + torch.log(n) + 2 * torch.log(torch.as_tensor(r_e)) + b \
        - 2 * n * torch.log(b) + torch.lgamma(2 * n)
    return flux * torch.exp(-log_norm)


def elliptical_radius(x, y, e1, e2, center_x, center_y, with_angle=False):
    """Product-average elliptical radius (arcsec), and with_angle the polar angle in the
    major-axis frame (else None)."""
    q, phi = ellipticity_to_q_phi(_col(e1), _col(e2))
    dx, dy = x - _col(center_x), y - _col(center_y)
    cos, sin = torch.cos(phi), torch.sin(phi)
    xm = (cos * dx + sin * dy) * torch.sqrt(q)
    ym = (-sin * dx + cos * dy) / torch.sqrt(q)
    return torch.sqrt(xm * xm + ym * ym), (torch.atan2(ym, xm) if with_angle else None)


def sersic(x, y, flux, r_e, n, e1, e2, center_x, center_y, b=None):
    """Elliptical Sersic profile with total flux `flux`, half-light radius r_e (arcsec)."""
    b = sersic_b(n) if b is None else b
    amp = sersic_intensity_at_re(flux, r_e, n, b)
    R, _ = elliptical_radius(x, y, e1, e2, center_x, center_y)
    R = R.clamp(min=1e-4)  # the cusp of n > 1 profiles is finite at a pixel centre
    return _col(amp) * torch.exp(-_col(b) * (torch.exp(torch.log(R / _col(r_e)) / _col(n)) - 1))


def gaussians(x, y, flux, sigma, center_x, center_y):
    """Sum of J circular Gaussian blobs (star-forming clumps, stars); parameters (B, J)."""
    out = torch.zeros_like(x + _col(flux[:, 0]))
    for j in range(flux.shape[1]):
        s2 = _col(sigma[:, j] ** 2)
        dx, dy = x - _col(center_x[:, j]), y - _col(center_y[:, j])
        out = out + _col(flux[:, j]) / (2 * math.pi * s2) * torch.exp(-(dx * dx + dy * dy) / (2 * s2))
    return out


def ring(x, y, flux, radius, width, e1, e2, center_x, center_y, clump_amp, clump_phase, n_clumps=5):
    """Elliptical ring (collisional / star-forming ring galaxy): a Gaussian annulus of
    `radius` and `width` (arcsec), brightness modulated azimuthally by
    1 + clump_amp * cos(n_clumps (phi - clump_phase)). Normalised for width << radius."""
    R, ang = elliptical_radius(x, y, e1, e2, center_x, center_y, with_angle=True)
    w = _col(width)
    amp = _col(flux) / ((2 * math.pi) ** 1.5 * _col(radius) * w)
    return amp * torch.exp(-(R - _col(radius)) ** 2 / (2 * w * w)) \
        * (1 + _col(clump_amp) * torch.cos(n_clumps * (ang - _col(clump_phase))))


def spiral(x, y, flux, scale, e1, e2, center_x, center_y, arm_amp, pitch, phase):
    """Exponential disk (scale length `scale`, arcsec) with two logarithmic spiral arms of
    pitch angle `pitch` (radians) and contrast arm_amp (0-1)."""
    R, ang = elliptical_radius(x, y, e1, e2, center_x, center_y, with_angle=True)
    h = _col(scale)
    winding = torch.log(R.clamp(min=1e-3) / h) / torch.tan(_col(pitch))
    arms = 1 + _col(arm_amp) * torch.cos(2 * (ang - winding - _col(phase)))
    return _col(flux) / (2 * math.pi * h * h) * torch.exp(-R / h) * arms


def arc(x, y, flux, radius, width, angle, half_angle, center_x, center_y):
    """An arc segment (tidal tail, stream): the part of a circle of `radius` (arcsec) about
    (center_x, center_y) within ~half_angle (radians, Gaussian) of `angle`, Gaussian profile of
    `width` across it. Total flux ~ `flux`."""
    dx, dy = x - _col(center_x), y - _col(center_y)
    r = torch.sqrt(dx * dx + dy * dy)
    dphi = torch.remainder(torch.atan2(dy, dx) - _col(angle) + math.pi, 2 * math.pi) - math.pi
    w, s = _col(width), _col(half_angle)
    amp = _col(flux) / (2 * math.pi * w * _col(radius) * s)
    return amp * torch.exp(-(r - _col(radius)) ** 2 / (2 * w * w) - dphi * dphi / (2 * s * s))
