"""LSST-like survey scenes (configs `lsst`, `lens-finding-64`): lenses and the non-lenses that
look like them, drawn alike for both classes wherever physics allows (deflector galaxies, seeing,
depth, field objects, stars, blends, masks, the colours and brightness of blue features), so a
classifier cannot learn a shortcut. Scene keys are listed in `physics.strong.render`.
"""
from __future__ import annotations

import math

import torch

from physics.strong.draws import log_uniform, truncated_log_normal, uniform
from physics.strong.instrument import LSST_BANDS, magnitude_to_flux
from physics.strong.mass import q_phi_to_ellipticity

NONLENS_KINDS = ("isolated", "ring", "spiral", "merger", "pair")
# Shares of each non-lens kind (in NONLENS_KINDS order), chosen with simulate.py --negatives:
# - sky (default): what a lens search's candidate deflectors mostly are when nothing is lensed behind
#   them: plain galaxies (55%), close neighbours and pairs (24%), late types with blue spiral arms
#   (15%), mergers / tidal features (5%), and ring galaxies at a rare sky rate (1%: collisional and
#   blue resonance rings are well under 1% of galaxies; 1% keeps the AUC against them measurable on a
#   test split of a few thousand).
# - hard: the look-alike-rich mix (15% rings at Einstein radii) for hard-negative training; lens
#   finders' figures depend on the negatives (HOLISMOKES XI: AUROC 0.61 against spirals alone).
NONLENS_MIXES = {"sky": (0.55, 0.01, 0.15, 0.05, 0.24), "hard": (0.25, 0.15, 0.2, 0.2, 0.2)}
KIND_CODES = {k: i for i, k in enumerate(("lens",) + NONLENS_KINDS + ("host",))}  # host: an unpainted real cutout (--hosts)
N_CLUMPS = 3
N_FIELD = 4
N_STARS = 2
# colours relative to i (mag), mean and spread per band. Deflectors are massive early types at
# z ~ 0.3-0.8, where the 4000 A break sits in g / r (g - i ~ 2, r - i ~ 0.7); lensed sources
# and look-alikes are star-forming galaxies (g - i ~ 0.35): in g the arc outshines the deflector.
RED_COLOURS = {"g": (2.0, 0.25), "r": (0.7, 0.12), "i": (0.0, 0.0), "z": (-0.35, 0.08), "y": (-0.55, 0.1)}
BLUE_COLOURS = {"g": (0.35, 0.25), "r": (0.12, 0.12), "i": (0.0, 0.0), "z": (-0.05, 0.12), "y": (-0.05, 0.15)}
# main-sequence stars: band - i as multiples of g - i (a straight-line stellar locus)
STAR_LOCUS = {"g": 1.0, "r": 0.38, "i": 0.0, "z": -0.2, "y": -0.3}
# Einstein radii of the lenses people find in ground-based surveys: a log-normal about 1.2"
# (velocity function x lensing cross-section x "resolved beyond the seeing"), cut to 0.5-2.5";
# the ~12% below 0.8" stay in as hard cases
THETA_E_MEDIAN, THETA_E_SIGMA, THETA_E_RANGE = 1.2, 0.35, (0.5, 2.5)
BETA_MAX = 0.9           # largest source offset / theta_E (distribution in sample_survey)
P_FAINT_DEFLECTOR = 0.1  # both classes: a deflector 2-4 mag fainter (near-empty, sky-dominated frames)
P_BLEND = 0.15           # both classes: a field galaxy 0.7-2.5" from the deflector
# stars, both classes: 4 per arcmin^2 to i = 25 (a field at intermediate galactic latitude),
# dN/dm ~ 10^(0.1 m) over 15-25 in i, so ~4% of stars saturate (i < 16.3)
STAR_DENSITY = 4.0       # per arcmin^2
STAR_MAG_I, STAR_COUNT_SLOPE = (15.0, 25.0), 0.1
MASK_KINDS = ("none", "edge", "corner", "column")   # chip edge strip, chip corner, bad column(s)
MASK_WEIGHTS = (0.84, 0.07, 0.05, 0.04)


def _fluxes(gen, i_mag, palette, bands):
    """(n, C) fluxes at zero point 27 for i-band magnitudes and a colour palette."""
    cols = []
    for b in bands:
        mean, spread = palette[b]
        cols.append(magnitude_to_flux(i_mag + mean + spread * torch.randn(len(i_mag), generator=gen, dtype=torch.float64)))
    return torch.stack(cols, 1)


def _ellipticity(gen, n, e_max):
    q = 1 - uniform(gen, n, 0, e_max)
    return q_phi_to_ellipticity(q, uniform(gen, n, 0, math.pi))


def sample_survey(cfg, labels, gen):
    """Lenses and non-lenses for the lsst / lens-finding-64 configs (label 1 = lens)."""
    n, bands = len(labels), cfg.bands
    lens = labels == 1
    zeros = torch.zeros(n, dtype=torch.float64)
    half = cfg.size * cfg.pixel_scale / 2
    weights = torch.tensor(NONLENS_MIXES[cfg.negatives], dtype=torch.float64)
    kinds = torch.multinomial(weights, n, True, generator=gen) + 1
    kinds[lens] = 0

    # deflector galaxy: the same distribution for both classes (a non-lens's deflector has the
    # mass it would lens with, only nothing behind it)
    theta_e = truncated_log_normal(gen, n, THETA_E_MEDIAN, THETA_E_SIGMA, *THETA_E_RANGE)
    ll_imag = uniform(gen, n, 18.5, 21.5) - 1.5 * torch.log10(theta_e)  # bigger lenses are brighter
    # a more distant or less luminous deflector, in both classes: lenses with faint lens light exist,
    # and without them near-empty non-lens frames would be a label shortcut
    faint = torch.rand(n, generator=gen, dtype=torch.float64) < P_FAINT_DEFLECTOR
    ll_imag = ll_imag + faint * uniform(gen, n, 2.0, 4.0)
    ll_e1, ll_e2 = _ellipticity(gen, n, 0.5)
    lens_x, lens_y = 0.05 * torch.randn(n, generator=gen, dtype=torch.float64), 0.05 * torch.randn(n, generator=gen, dtype=torch.float64)
    scene = dict(
        ll_flux=_fluxes(gen, ll_imag, RED_COLOURS, bands), ll_r_e=theta_e * log_uniform(gen, n, 0.3, 0.9),
        ll_n=uniform(gen, n, 2.5, 5.0), ll_e1=ll_e1, ll_e2=ll_e2,
        lens_x=lens_x, lens_y=lens_y,
        lens_e1=ll_e1 + 0.05 * torch.randn(n, generator=gen, dtype=torch.float64),
        lens_e2=ll_e2 + 0.05 * torch.randn(n, generator=gen, dtype=torch.float64),
        core=zeros.clone(),
    )
    g = uniform(gen, n, 0, 0.08)
    g_angle = uniform(gen, n, 0, math.pi)
    scene.update(gamma1=g * torch.cos(2 * g_angle), gamma2=g * torch.sin(2 * g_angle))
    scene["theta_e"] = torch.where(lens, theta_e, zeros)  # non-lenses: nothing is lensed
    scene.update(gamma1=torch.where(lens, scene["gamma1"], zeros), gamma2=torch.where(lens, scene["gamma2"], zeros))
    scene.update(pm_theta_e=torch.zeros(n, 0, dtype=torch.float64), pm_x=torch.zeros(n, 0, dtype=torch.float64),
                 pm_y=torch.zeros(n, 0, dtype=torch.float64))

    # background galaxy: lensed for lenses, unlensed companion for close pairs. Found lenses are
    # magnification-biased: p(beta) ~ beta mu(beta)^alpha with mu ~ 2 theta_E / beta for beta <
    # theta_E. Counts of slope alpha ~ 1 make that flat in beta; selection by eye, which prefers
    # long arcs and rings, steepens it to alpha ~ 4/3: p(beta) ~ beta^(-1/3), beta = max x U^1.5.
    # Sources inside or near the tangential caustic (rings, quads, long arcs) are then common.
    src_imag = uniform(gen, n, 22.0, 25.0)
    # look-alike features (and close-pair neighbours) as bright as lensed arcs, whose magnitudes
    # (source mag - 2.5 log10 mu) run 20.1-23.1 (10-90%), median 21.6
    feature_imag = uniform(gen, n, 19.5, 23.8)
    src_r_e = log_uniform(gen, n, 0.1, 0.6)
    beta = theta_e * BETA_MAX * torch.rand(n, generator=gen, dtype=torch.float64) ** 1.5
    beta_angle = uniform(gen, n, 0, 2 * math.pi)
    pair_sep = uniform(gen, n, 0.6, 3.0)
    is_pair = kinds == KIND_CODES["pair"]
    src_dist = torch.where(is_pair, pair_sep, beta)
    src_e1, src_e2 = _ellipticity(gen, n, 0.6)
    src_x, src_y = lens_x + src_dist * torch.cos(beta_angle), lens_y + src_dist * torch.sin(beta_angle)
    has_source = lens | is_pair
    src_flux = _fluxes(gen, torch.where(is_pair, feature_imag, src_imag), BLUE_COLOURS, bands) * has_source[:, None]
    clump_frac = uniform(gen, (n, N_CLUMPS), 0, 0.25)
    clump_r = src_r_e[:, None] * 1.5 * torch.sqrt(torch.rand((n, N_CLUMPS), generator=gen, dtype=torch.float64))
    clump_angle = uniform(gen, (n, N_CLUMPS), 0, 2 * math.pi)
    scene.update(src_flux=src_flux, src_r_e=src_r_e, src_n=uniform(gen, n, 0.5, 2.5), src_e1=src_e1, src_e2=src_e2,
                 src_x=src_x, src_y=src_y, clump_frac=clump_frac, clump_sigma=uniform(gen, (n, N_CLUMPS), 0.02, 0.08),
                 clump_x=src_x[:, None] + clump_r * torch.cos(clump_angle),
                 clump_y=src_y[:, None] + clump_r * torch.sin(clump_angle))

    # look-alikes (image plane, blue, as bright as lensed arcs, at the radii of Einstein rings)
    feature_flux = _fluxes(gen, feature_imag, BLUE_COLOURS, bands)
    ring = kinds == KIND_CODES["ring"]
    spiral = kinds == KIND_CODES["spiral"]
    merger = kinds == KIND_CODES["merger"]
    ring_e1, ring_e2 = _ellipticity(gen, n, 0.3)
    scene.update(ring_flux=feature_flux * ring[:, None], ring_radius=theta_e * log_uniform(gen, n, 0.8, 1.25),
                 ring_width=uniform(gen, n, 0.05, 0.25), ring_e1=ring_e1, ring_e2=ring_e2,
                 ring_clump_amp=uniform(gen, n, 0, 0.9), ring_clump_phase=uniform(gen, n, 0, 2 * math.pi))
    sp_e1, sp_e2 = _ellipticity(gen, n, 0.5)
    scene.update(sp_flux=feature_flux * spiral[:, None], sp_scale=log_uniform(gen, n, 0.3, 1.2),
                 sp_e1=sp_e1, sp_e2=sp_e2, sp_arm_amp=uniform(gen, n, 0.5, 1.0),
                 sp_pitch=uniform(gen, n, math.radians(10), math.radians(30)), sp_phase=uniform(gen, n, 0, math.pi))
    scene["ll_flux"] = scene["ll_flux"] * torch.where(spiral, 0.4, 1.0)[:, None]  # spirals: a smaller bulge
    # mergers: a tidal arc curving around the deflector plus a companion (field slot 0)
    scene.update(arc_flux=feature_flux * merger[:, None], arc_radius=theta_e * uniform(gen, n, 0.7, 1.5),
                 arc_width=uniform(gen, n, 0.06, 0.25), arc_angle=uniform(gen, n, 0, 2 * math.pi),
                 arc_half_angle=uniform(gen, n, 0.3, 1.2),
                 arc_x=lens_x + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64),
                 arc_y=lens_y + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64))

    # field objects, both classes alike: N_FIELD slots, each present with probability 0.35
    present = torch.rand((n, N_FIELD), generator=gen, dtype=torch.float64) < 0.35
    f_imag = uniform(gen, (n, N_FIELD), 20.0, 26.0)
    red = torch.rand((n, N_FIELD), generator=gen, dtype=torch.float64) < 0.5
    f_flux = torch.where(red[..., None], _fluxes(gen, f_imag.reshape(-1), RED_COLOURS, bands).reshape(n, N_FIELD, -1),
                         _fluxes(gen, f_imag.reshape(-1), BLUE_COLOURS, bands).reshape(n, N_FIELD, -1))
    f_x, f_y = uniform(gen, (n, N_FIELD), -half, half), uniform(gen, (n, N_FIELD), -half, half)
    f_r_e = log_uniform(gen, (n, N_FIELD), 0.05, 0.6)
    # blends, both classes: slot 1 becomes a group neighbour overlapping the deflector's light
    blend = torch.rand(n, generator=gen, dtype=torch.float64) < P_BLEND
    blend_sep, blend_angle = uniform(gen, n, 0.7, 2.5), uniform(gen, n, 0, 2 * math.pi)
    blend_imag = uniform(gen, n, 19.5, 23.5)
    f_flux[blend, 1] = f_flux[blend, 1] * magnitude_to_flux(blend_imag - f_imag[:, 1], 0.0)[blend, None]
    f_x[blend, 1] = (lens_x + blend_sep * torch.cos(blend_angle))[blend]
    f_y[blend, 1] = (lens_y + blend_sep * torch.sin(blend_angle))[blend]
    present[blend, 1] = True
    # merger companion: slot 0, 0.5-2.5" away, red or blue, 0-2 mag fainter than the deflector
    comp_angle = uniform(gen, n, 0, 2 * math.pi)
    comp_sep = uniform(gen, n, 0.5, 2.5)
    comp_flux = scene["ll_flux"] * (10 ** (-0.4 * uniform(gen, n, 0, 2)))[:, None]
    f_flux[merger, 0] = comp_flux[merger]
    f_x[merger, 0] = (lens_x + comp_sep * torch.cos(comp_angle))[merger]
    f_y[merger, 0] = (lens_y + comp_sep * torch.sin(comp_angle))[merger]
    f_r_e[merger, 0] = scene["ll_r_e"][merger] * 0.7
    present[merger, 0] = True
    f_e1, f_e2 = _ellipticity(gen, n * N_FIELD, 0.5)
    scene.update(field_flux=f_flux * present[..., None], field_r_e=f_r_e, field_n=uniform(gen, (n, N_FIELD), 0.8, 4.0),
                 field_e1=f_e1.reshape(n, N_FIELD), field_e2=f_e2.reshape(n, N_FIELD), field_x=f_x, field_y=f_y)
    scene.update(_survey_nuisances(cfg, gen, n))

    scene["psf_fwhm"] = uniform(gen, (n, len(bands)), *cfg.psf_fwhm)
    scene["psf_beta"] = uniform(gen, (n, len(bands)), 2.5, 4.5)
    stars = scene["star_flux"].sum(-1) > 0  # (n, N_STARS)
    params = dict(
        kind=kinds.to(torch.float64),
        theta_e=scene["theta_e"], deflector_theta_e=theta_e, lens_x=lens_x, lens_y=lens_y,
        lens_e1=scene["lens_e1"], lens_e2=scene["lens_e2"], gamma1=scene["gamma1"], gamma2=scene["gamma2"],
        lens_mag_i=ll_imag, lens_r_e=scene["ll_r_e"], lens_n=scene["ll_n"], faint_deflector=faint.to(torch.float64),
        src_mag_i=torch.where(lens, src_imag, torch.where(is_pair, feature_imag, math.nan)),
        src_x=src_x, src_y=src_y, src_r_e=src_r_e, src_n=scene["src_n"],
        feature_mag_i=torch.where(ring | spiral | merger | is_pair, feature_imag, math.nan),
        n_field=present.sum(1).to(torch.float64),
        blend=blend.to(torch.float64), blend_sep=torch.where(blend, blend_sep, math.nan),
        blend_mag_i=torch.where(blend, blend_imag, math.nan),
        depth=scene["depth"], n_star=stars.sum(1).to(torch.float64),
        star_mag_i=torch.where(stars, scene["star_mag_i"], math.nan),
        star_g_i=torch.where(stars, scene["star_g_i"], math.nan),
        star_x=torch.where(stars, scene["star_x"], math.nan), star_y=torch.where(stars, scene["star_y"], math.nan),
        mask_kind=scene["mask_kind"], mask_side=scene["mask_side"], mask_a=scene["mask_a"], mask_b=scene["mask_b"],
        mask_nan=scene["mask_nan"],
    )
    for j, b in enumerate(bands):
        params[f"psf_fwhm_{b}"] = scene["psf_fwhm"][:, j]
    return scene, params


def _survey_nuisances(cfg, gen, n):
    """What a real cutout holds besides galaxies, drawn alike for both classes: the depth of the
    stack (fraction of the 10-year exposure, log-uniform in cfg.depth), stars (point sources,
    the brightest saturating), and masked areas (an edge strip or a corner off the chip, or bad
    columns; NaN or 0 in flux images, 0 where images are min-max scaled)."""
    half = cfg.size * cfg.pixel_scale / 2
    out = dict(depth=log_uniform(gen, n, *cfg.depth))
    # stars: the stamp's expected number (density x area: 0.07 lsst, 0.18 lens-finding-64) over the slots
    expected = STAR_DENSITY * (cfg.size * cfg.pixel_scale / 60) ** 2
    on = torch.rand((n, N_STARS), generator=gen, dtype=torch.float64) < min(expected / N_STARS, 1.0)
    lo, hi = STAR_MAG_I
    growth = 10 ** (STAR_COUNT_SLOPE * (hi - lo)) - 1  # inverse CDF of dN/dm ~ 10^(slope m)
    out["star_mag_i"] = lo + torch.log10(1 + growth * torch.rand((n, N_STARS), generator=gen,
                                                                  dtype=torch.float64)) / STAR_COUNT_SLOPE
    out["star_g_i"] = uniform(gen, (n, N_STARS), 0.2, 3.0)  # F/G (hot) to M dwarfs
    flux = torch.stack([magnitude_to_flux(out["star_mag_i"] + STAR_LOCUS[b] * out["star_g_i"]) for b in cfg.bands], -1)
    out["star_flux"] = flux * on[..., None]                 # (n, N_STARS, C)
    out["star_x"], out["star_y"] = uniform(gen, (n, N_STARS), -half, half), uniform(gen, (n, N_STARS), -half, half)
    # masks, geometry in pixels: side 0-3 = left, right, bottom, top; a = strip width / corner
    # width / first bad column, b = corner height / number of bad columns
    out["mask_kind"] = torch.multinomial(torch.tensor(MASK_WEIGHTS, dtype=torch.float64), n, True,
                                         generator=gen).to(torch.float64)
    out["mask_side"] = torch.randint(4, (n,), generator=gen).to(torch.float64)
    column = out["mask_kind"] == MASK_KINDS.index("column")
    out["mask_a"] = torch.where(column, torch.randint(cfg.size, (n,), generator=gen).to(torch.float64),
                                torch.floor(uniform(gen, n, 1, 0.3 * cfg.size)))
    out["mask_b"] = torch.where(column, torch.randint(1, 4, (n,), generator=gen).to(torch.float64),
                                torch.floor(uniform(gen, n, 0.2 * cfg.size, 0.5 * cfg.size)))
    nan_ok = cfg.scaling == "flux"  # NaN cannot survive min-max scaling; those sets carry zeros
    out["mask_nan"] = ((torch.rand(n, generator=gen, dtype=torch.float64) < 0.5) & nan_ok).to(torch.float64)
    return out


def survey_bands(cfg):
    return [LSST_BANDS[b] for b in cfg.bands]
