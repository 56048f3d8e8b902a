"""Distances and mass-to-angle conversions for flat LambdaCDM (H0 = 70, Om0 = 0.3 by default)."""
from __future__ import annotations

import functools
import math

from astropy import constants, units
from astropy.cosmology import FlatLambdaCDM

ARCSEC = math.pi / 180 / 3600  # radians


@functools.lru_cache(maxsize=64)
def _distances(z_lens, z_source, h0, om0):
    """(D_l, D_s, D_ls) in metres."""
    cosmo = FlatLambdaCDM(H0=h0, Om0=om0)
    d_l = cosmo.angular_diameter_distance(z_lens).to_value(units.m)
    d_s = cosmo.angular_diameter_distance(z_source).to_value(units.m)
    d_ls = cosmo.angular_diameter_distance(z_lens, z_source).to_value(units.m)
    return d_l, d_s, d_ls


def point_mass_einstein_radius(mass_msun, z_lens=0.5, z_source=1.0, h0=70.0, om0=0.3):
    """Einstein radius (arcsec) of a point mass of `mass_msun` solar masses; works on floats,
    numpy arrays and tensors: theta_E = sqrt(4 G M / c^2 * D_ls / (D_l D_s))."""
    d_l, d_s, d_ls = _distances(float(z_lens), float(z_source), h0, om0)
    k = 4 * constants.G.value * constants.M_sun.value / constants.c.value ** 2 * d_ls / (d_l * d_s)
    return (k * mass_msun) ** 0.5 / ARCSEC


def sigma_crit(z_lens=0.5, z_source=1.0, h0=70.0, om0=0.3):
    """Critical surface density in solar masses per arcsec^2 (in the lens plane)."""
    d_l, d_s, d_ls = _distances(float(z_lens), float(z_source), h0, om0)
    c, g = constants.c.value, constants.G.value
    per_m2 = c ** 2 / (4 * math.pi * g) * d_s / (d_l * d_ls)  # kg / m^2
    return per_m2 / constants.M_sun.value * (d_l * ARCSEC) ** 2
