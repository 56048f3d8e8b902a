"""Substructure scenes: a smooth lens with or without dark substructure and one Sersic source,
classes no / sphere / vort (label 0 / 1 / 2). `sample_model1`: DeepLenseSim's Model I code as
written (deeplense-model1, and the superres scenes); `sample_common`: deeplense-common, fitted
to the public DeepLense Common Test I samples (the COMMON_* constants, each with its measurement:
image statistics and the residuals a smooth lens leaves); `sample_broad`: deeplense-broad,
randomised over all of these.

Every class draws the lens, source (with its clumps, in deeplense-broad), PSF and noise from one distribution; only
the point masses differ (`draw_substructure` with the config's `Substructure`), so a classifier
cannot learn a shortcut.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from physics.strong.cosmology import point_mass_einstein_radius
from physics.strong.draws import log_uniform, power_law, uniform
from physics.strong.mass import q_phi_to_ellipticity

# --------------------------------------------------------------------------- substructure (all configs)
N_VORTEX = 100                 # point masses along a vortex
Z_LENS, Z_SOURCE = 0.5, 1.0


@dataclass(frozen=True)
class Substructure:
    """What a configuration's `sphere` and `vort` classes put in the lens, each a (lo, hi) range drawn
    per image (lo == hi: fixed, no random number drawn). sphere: n_subhalos point masses (uniform
    integer), p(m) ~ m^slope on subhalo_mass (the slope uniform in its range), radius uniform in
    subhalo_radius, angle uniform; vort: vortex_mass (log-uniform) in N_VORTEX equal point masses on
    a line through the centre at a random angle, half-length 0.03" x (1e-22 eV / m_axion), m_axion
    log-uniform in axion_mass."""
    n_subhalos: tuple = (25, 25)
    subhalo_slope: tuple = (-0.9, -0.9)
    subhalo_mass: tuple = (1e6, 1e10)      # solar masses
    subhalo_radius: tuple = (0.25, 2.0)    # arcsec
    vortex_mass: tuple = (3e10, 3e10)      # solar masses in total
    axion_mass: tuple = (1e-24, 1e-22)     # eV


MODEL1_SUBSTRUCTURE = Substructure()  # DeepLenseSim Model I as written (REFERENCE.md)


def draw_substructure(labels, gen, spec=MODEL1_SUBSTRUCTURE):
    """Point masses of the classes as `spec` (a `Substructure`) says. Returns the scene's
    pm_theta_e, pm_x, pm_y (n, max(N_VORTEX, subhalos)) (theta_e 0 = an empty slot) and the
    substructure columns of the parameter table (NaN where a class has no such quantity)."""
    n = len(labels)
    slots = spec.n_subhalos[1]
    if spec.subhalo_slope[0] == spec.subhalo_slope[1]:
        mass = power_law(gen, (n, slots), *spec.subhalo_mass, spec.subhalo_slope[0])
    else:
        slope = uniform(gen, n, *spec.subhalo_slope)
        u = torch.rand((n, slots), generator=gen, dtype=torch.float64)
        a = (slope + 1)[:, None]
        lo, hi = spec.subhalo_mass
        mass = (lo ** a + u * (hi ** a - lo ** a)) ** (1 / a)
    if spec.n_subhalos[0] == spec.n_subhalos[1]:
        n_sub = torch.full((n,), slots)
    else:
        n_sub = torch.randint(spec.n_subhalos[0], spec.n_subhalos[1] + 1, (n,), generator=gen)
    if spec.vortex_mass[0] == spec.vortex_mass[1]:
        vortex_mass = torch.full((n,), float(spec.vortex_mass[0]), dtype=torch.float64)
    else:
        vortex_mass = log_uniform(gen, n, *spec.vortex_mass)
    radius = uniform(gen, (n, slots), *spec.subhalo_radius)
    angle = uniform(gen, (n, slots), 0, 2 * math.pi)
    m_axion = log_uniform(gen, n, *spec.axion_mass)
    half_length = 0.03 * (1e-22 / m_axion)
    vortex_angle = uniform(gen, n, 0, math.pi)
    sphere, vort = labels == 1, labels == 2
    used = torch.arange(slots)[None, :] < n_sub[:, None]  # (n, slots): the subhalos an image has
    mass = torch.where(used, mass, torch.zeros_like(mass))

    pm_theta = torch.zeros(n, max(N_VORTEX, slots), dtype=torch.float64)
    pm_x, pm_y = torch.zeros_like(pm_theta), torch.zeros_like(pm_theta)
    pm_theta[sphere, :slots] = point_mass_einstein_radius(mass[sphere], Z_LENS, Z_SOURCE)
    pm_x[sphere, :slots] = (radius * torch.cos(angle) * used)[sphere]
    pm_y[sphere, :slots] = (radius * torch.sin(angle) * used)[sphere]
    t = torch.linspace(-1, 1, N_VORTEX, dtype=torch.float64)
    pm_theta[vort, :N_VORTEX] = point_mass_einstein_radius(vortex_mass[vort, None] / N_VORTEX, Z_LENS, Z_SOURCE)
    pm_x[vort, :N_VORTEX] = (half_length[:, None] * t * torch.cos(vortex_angle)[:, None])[vort]
    pm_y[vort, :N_VORTEX] = (half_length[:, None] * t * torch.sin(vortex_angle)[:, None])[vort]

    nan = torch.full((n,), math.nan, dtype=torch.float64)
    sub_mass = torch.where(sphere[:, None], mass, torch.zeros_like(mass))
    columns = dict(
        n_subhalos=torch.where(sphere, n_sub, 0).to(torch.float64),
        subhalo_mass_total=sub_mass.sum(1),
        subhalo_mass_max=sub_mass.max(1).values,
        subhalo_masses=torch.where(sphere[:, None] & used, mass, nan[:, None]),
        subhalo_x=torch.where(sphere[:, None] & used, pm_x[:, :slots], nan[:, None]),
        subhalo_y=torch.where(sphere[:, None] & used, pm_y[:, :slots], nan[:, None]),
        m_axion_ev=torch.where(vort, m_axion, nan),
        vortex_mass=torch.where(vort, vortex_mass, 0.0),
        vortex_half_length=torch.where(vort, half_length, nan),
        vortex_angle=torch.where(vort, vortex_angle, nan),
    )
    return (pm_theta, pm_x, pm_y), columns


def _scene_and_params(lens, source, point_masses, columns, extra):
    """The scene dict and the parameter table (lens and source columns, substructure columns,
    then `extra`, which both also get) of one batch."""
    pm_theta, pm_x, pm_y = point_masses
    scene = dict(lens, pm_theta_e=pm_theta, pm_x=pm_x, pm_y=pm_y, src_flux=torch.ones_like(lens["theta_e"])[:, None],
                 **source, **extra)
    params = {k: scene[k] for k in ("theta_e", "lens_e1", "lens_e2", "gamma1", "gamma2", "src_x", "src_y", "src_r_e",
                                    "src_n", "src_e1", "src_e2")}
    params.update(columns)
    params.update(extra)
    return scene, params


# --------------------------------------------------------------------------- Model I
def sample_model1(cfg, labels, gen):
    """DeepLenseSim Model I (REFERENCE.md): SIE e1 0.1 + shear gamma1 0.05 for every image,
    theta_E 1.2-1.6", Sersic source R 0.25", n 1, e (-0.1, 0.1) within +-0.35" of the centre."""
    n = len(labels)
    theta_e = uniform(gen, n, 1.2, 1.6)
    src_x, src_y = uniform(gen, n, -0.35, 0.35), uniform(gen, n, -0.35, 0.35)
    point_masses, columns = draw_substructure(labels, gen)
    peak_snr = uniform(gen, n, 240, 330)  # background sigma / peak as in the public set
    zeros, ones = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    lens = dict(theta_e=theta_e, lens_e1=zeros + 0.1, lens_e2=zeros.clone(), lens_x=zeros.clone(),
                lens_y=zeros.clone(), core=zeros.clone(), gamma1=zeros + 0.05, gamma2=zeros.clone())
    source = dict(src_r_e=zeros + 0.25, src_n=ones.clone(), src_e1=zeros - 0.1, src_e2=zeros + 0.1,
                  src_x=src_x, src_y=src_y)
    scene, params = _scene_and_params(lens, source, point_masses, columns, dict(peak_snr=peak_snr))
    if cfg.lr:  # superres: the low-resolution image's PSF
        scene["psf_fwhm_lr"] = uniform(gen, n, *cfg.lr["psf_fwhm"])
    return scene, params


# --------------------------------------------------------------------------- deeplense-common
# Fitted to the public DeepLense Common Test I set (the 9 samples in shared/samples/
# deeplense_substructure), measured by bench/bench_substructure_realism.py: mean +- std over the
# 9 public images / 900 deeplense-model1 / 900 deeplense-common images (seed 0). With 9 images a
# mean is known to about std / 3 and a spread to ~25%: each choice matches a mean (and a spread
# where one can be told) to that, in round numbers; a value is fixed where the set shows no
# variation. Found by a random search over these ranges, then rounded.
#
# Ring shape and orientation. The ellipse fitted to the ring's ridge line has axis ratio
# (ridge_axis_ratio) 0.76 +- 0.14 public, 0.94 +- 0.07 Model I, 0.75 +- 0.10 here, and every public
# ring has its major axis along x: ridge_angle_deg -1.8 +- 9.1 public (moments' angle_deg -5.1 +-
# 9.5; one orientation, no tilt detectable), 0.6 +- 12.6 here, against Model I's near-round rings
# at any angle (1 +- 43). (The moments' axis_ratio does not tell them apart: 0.63 +- 0.15 public,
# 0.65 +- 0.18 Model I, 0.66 +- 0.11 here; an arc is flat whatever the lens.) An SIE stretches the
# ring across its major axis (images sit at r = alpha_r(phi), largest along the minor axis), shear
# along its own: the mass lies along y and the shear along x, both at fixed angles. A single q
# gives a ridge ratio spread of ~0.07, half the public 0.14: q is drawn from a range.
COMMON_LENS_ANGLE = math.pi / 2   # rad: SIE major axis along y, every image
COMMON_LENS_Q = (0.5, 0.9)        # SIE axis ratio, uniform
COMMON_SHEAR = (0.04, 0.1)        # gamma1 (along x), uniform; gamma2 = 0
# Ring size: radial-profile peak (ring_radius) 1.26 +- 0.15" public, 1.47 +- 0.24" Model I,
# 1.28 +- 0.22" here; ridge ellipse sqrt(ab) (ridge_radius) 1.38 +- 0.15", 1.45 +- 0.14", 1.36 +- 0.15".
COMMON_THETA_E = (1.15, 1.4)      # arcsec, uniform (Model I 1.2-1.6)
# Source. Public rings are wider and softer, with light inside and wings outside: ring_fwhm
# 0.91 +- 0.31" public, 0.83 +- 0.23" Model I, 1.09 +- 0.30" here; centre_level 0.076 +- 0.062,
# 0.003 +- 0.006, 0.080 +- 0.058; outer_light 0.25 +- 0.15, 0.07 +- 0.13, 0.24 +- 0.17;
# frac_above_half 0.028 +- 0.014, 0.021 +- 0.012, 0.030 +- 0.015. That takes a larger source than
# Model I's (R 0.25", n 1); n 2.5-4 leaves too little above half maximum (frac_above_half < 0.01).
# Its position sets how complete the rings are: ring_coverage 0.75 +- 0.23 public, 0.67 +- 0.31
# Model I, 0.74 +- 0.20 here; sector_contrast 0.29 +- 0.22, 0.28 +- 0.24, 0.20 +- 0.13 (the one
# statistic left ~1 public standard error off); centroid_offset 0.36 +- 0.27", 0.41 +- 0.23",
# 0.45 +- 0.26". Its orientation is random: Model I's single source angle tilts complete rings by
# ~9 deg, which the public ones do not show.
# Fitted through the public samples' PSF (below), their sources are Sersic n 1.48-1.55 with R_e
# 0.48-0.52" (through Model I's 0.087" PSF: n 1.20-1.34, R_e 0.45-0.51", the values this range
# was first set from: n 0.8-1.5).
COMMON_SRC_R_E = (0.45, 0.55)     # arcsec, half-light radius, uniform
COMMON_SRC_N = (1.3, 1.7)         # Sersic index, uniform
COMMON_SRC_Q = (0.7, 1.0)         # axis ratio, uniform, at a uniform angle
COMMON_SRC_BOX = 0.45             # arcsec: centre uniform in +-this in x and in y (Model I 0.35)
# PSF: the smooth lens fitted through a Gaussian PSF
# of each FWHM (physics.strong.fit.psf_scan) leaves the least chi^2 at 0.21" for the public samples
# (median of 9; each 0.19-0.22), not at Model I's 0.087" (chi^2 higher by 300-1,800 per image). Through
# 0.087" every public image, with or without substructure, left the same pattern along its ring:
# thin negative arcs on the ridge with positive ones beside them (mean residual -0.2 to -0.7 sigma where
# the source is within 0.25 R_e of its centre, +0.3 to +0.6 at 0.25-0.5 R_e); through 0.21" the
# no-substructure images are smooth to the noise. The scan recovers 0.18-0.20" on this config's
# images and <= 0.087" on Model I's PSF. The noise is white (noise_highpass_ratio 0.940 public,
# 0.941 here), so it comes after the PSF, as here.
COMMON_PSF_FWHM = (0.18, 0.22)    # arcsec, Gaussian, uniform
# Noise. Public pixels are whole counts: the min-max scaled values are k / (max - min), with max -
# min (count_range) 824 +- 49 public, 817 +- 53 here (Model I's continuous values: ~6e8, float32
# steps). The corners' variance equals their mean count (~10, the minimum being 0 or 1) and the
# local variance follows the level along the ring: Poisson counts on a sky of 10 per pixel, no
# read noise. After scaling: noise (corner std) 0.0039 +- 0.0002 public and here, 0.0034 Model I;
# background 0.0112, 0.0137, 0.0113; peak_to_corner 89 +- 6, 74 +- 8, 89 +- 7.
COMMON_PEAK_COUNTS = (700, 870)   # counts above the sky in the noise-free lensed source's brightest pixel, uniform
COMMON_SKY_COUNTS = 10.0          # counts per pixel, every image
# Substructure (issue 26), fitted to what a smooth lens leaves in the public images
# (bench/bench_substructure_residuals.py: SIE + shear + Sersic fits through the measured PSF, residuals
# in units of a noise measured from the image). Public no / sphere / vort (3 images each, so a mean is
# known to ~0.1): ring excess (mean r^2 - 1 where the lensed light is above 10% of its peak) -0.07 /
# 0.20 (0.02, 0.25, 0.31) / 0.47 (0.38, 0.98, 0.05), chi^2/dof 0.93 / 1.05 / 1.18, largest smoothed
# residual 3.6 / 10.0 / 11.6 sigma; no residual above the noise in 3 / 1 / 1 of 3. The public
# no-substructure images are smooth, so this config's source has no clumps (they were a stand-in
# for the ridge pattern the wrong PSF left, 6 of 0.1-0.4% of the light each). Subhalos are
# dipoles of a few sigma at their place on the ring, vortices elongated ones. Tried (30-40 images per
# class, fitted through 0.20"): subhalos up to 3.5e9 Msun gave 0.09 (seed 5), 5e9 0.27 (seed 11),
# 6e9 0.29 (seed 5) and 1e10 (Model I) 0.79 (number, slope and radii as Model I's), so 4.5e9;
# vortices of 5e10 Msun on half-lengths 0.3-3" 0.40-0.49 (Model I's 3e10 on 0.03-3" left them inside
# the ring, too faint). Measured on 100 per class: README.
COMMON_SUBSTRUCTURE = Substructure(subhalo_mass=(1e6, 4.5e9), vortex_mass=(5e10, 5e10), axion_mass=(1e-24, 1e-23))


def sample_common(cfg, labels, gen):
    """deeplense-common: scenes whose images have the statistics of the public DeepLense Common
    Test I set (the COMMON_* constants, each with the measurement behind it). Every class draws
    lens, source, PSF and counts alike; only the substructure differs (`draw_substructure`)."""
    n = len(labels)
    zeros = torch.zeros(n, dtype=torch.float64)
    theta_e = uniform(gen, n, *COMMON_THETA_E)
    lens_e1, lens_e2 = q_phi_to_ellipticity(uniform(gen, n, *COMMON_LENS_Q), zeros + COMMON_LENS_ANGLE)
    gamma1 = uniform(gen, n, *COMMON_SHEAR)
    src_e1, src_e2 = q_phi_to_ellipticity(uniform(gen, n, *COMMON_SRC_Q), uniform(gen, n, 0, math.pi))
    src_x, src_y = uniform(gen, n, -COMMON_SRC_BOX, COMMON_SRC_BOX), uniform(gen, n, -COMMON_SRC_BOX, COMMON_SRC_BOX)
    src_r_e, src_n = uniform(gen, n, *COMMON_SRC_R_E), uniform(gen, n, *COMMON_SRC_N)
    point_masses, columns = draw_substructure(labels, gen, COMMON_SUBSTRUCTURE)
    psf_fwhm = uniform(gen, n, *cfg.psf_fwhm)
    peak_counts = uniform(gen, n, *COMMON_PEAK_COUNTS)
    sky_counts = zeros + COMMON_SKY_COUNTS
    lens = dict(theta_e=theta_e, lens_e1=lens_e1, lens_e2=lens_e2, lens_x=zeros.clone(), lens_y=zeros.clone(),
                core=zeros.clone(), gamma1=gamma1, gamma2=zeros.clone())
    source = dict(src_r_e=src_r_e, src_n=src_n, src_e1=src_e1, src_e2=src_e2, src_x=src_x, src_y=src_y)
    # peak_snr as in Model I (source peak over the background sigma), then this config's own columns
    extra = dict(peak_snr=peak_counts / sky_counts.sqrt(), psf_fwhm=psf_fwhm, peak_counts=peak_counts,
                 sky_counts=sky_counts)
    return _scene_and_params(lens, source, point_masses, columns, extra)


CLUMP_RADIUS = 1.5                # clumps lie within this many half-light radii of the source centre


def _add_clumps(gen, source, extra, count, frac, sigma, scale=None):
    """`count` Gaussian clumps in the source (flux share each uniform in `frac`, times the image's
    `scale` (n,) where given; sigma uniform in `sigma`; uniform over the disc of
    CLUMP_RADIUS half-light radii), and their total share as the parameter column
    src_clump_flux."""
    n = len(source["src_x"])
    shape = (n, count)
    r = CLUMP_RADIUS * source["src_r_e"][:, None] * torch.sqrt(
        torch.rand(shape, generator=gen, dtype=torch.float64))
    phi = uniform(gen, shape, 0, 2 * math.pi)
    share = uniform(gen, shape, *frac) * (1 if scale is None else scale[:, None])
    source.update(clump_frac=share, clump_sigma=uniform(gen, shape, *sigma),
                  clump_x=source["src_x"][:, None] + r * torch.cos(phi),
                  clump_y=source["src_y"][:, None] + r * torch.sin(phi))
    extra["src_clump_flux"] = source["clump_frac"].sum(1)


# --------------------------------------------------------------------------- deeplense-broad
# Randomised (issue 26): every lens, source, PSF, noise and substructure parameter spans Model I,
# deeplense-common and beyond, so that a model trained on it cannot lean on one generator's
# choices. Each range names what it covers (M: Model I, C: deeplense-common). The first version
# (PSF to 0.15", peaks from 300 counts over skies to 50, 10-50 subhalos with slopes to -1.9,
# vortices from 1e10 Msun) left no residual above the noise in 70% of its subhalo and 40% of its
# vortex images (oracle on the residuals 0.49; a ResNet18 learnt nothing): its weak side was
# narrowed to what still spans C and given source clumps (bench_substructure_residuals.py --configs
# deeplense-broad --n 30: 23% / 17%, 80% of the no-substructure images; oracle 0.611).
BROAD_THETA_E = (1.0, 1.8)           # arcsec, uniform (M 1.2-1.6, C 1.15-1.4)
BROAD_LENS_Q = (0.5, 1.0)            # SIE axis ratio at a uniform angle (M q 0.82 at 0 deg, C 0.5-0.9 at 90 deg)
BROAD_SHEAR = (0.0, 0.12)            # |gamma| at a uniform angle (M 0.05 along x, C 0.04-0.1 along x)
BROAD_SRC_R_E = (0.15, 0.7)          # arcsec, log-uniform (M 0.25, C 0.45-0.55)
BROAD_SRC_N = (0.5, 2.5)             # Sersic index, uniform (M 1, C 1.3-1.7)
BROAD_SRC_Q = (0.6, 1.0)             # axis ratio at a uniform angle (M 0.82, C 0.7-1)
BROAD_SRC_BOX = 0.5                  # arcsec: centre uniform in +-this in x and y (M 0.35, C 0.45)
BROAD_PSF_FWHM = (0.06, 0.25)        # arcsec, Gaussian, uniform (M 0.087, C 0.18-0.22)
BROAD_PEAK_COUNTS = (500.0, 3000.0)  # counts in the brightest lensed pixel, log-uniform (C 700-870)
BROAD_SKY_COUNTS = (3.0, 30.0)       # counts per pixel, log-uniform (C 10); peak / sqrt(sky) 90-1700 (M 240-330)
BROAD_CLUMPS = 6                     # source clumps (star-forming knots; M and C none): 6 of
BROAD_CLUMP_FRAC = (0.001, 0.004)    # this share of the source's light each, uniform,
BROAD_CLUMP_SCALE = (0.0, 1.5)       # times this per image, uniform,
BROAD_CLUMP_SIGMA = (0.05, 0.1)      # arcsec, Gaussian sigma, uniform
# subhalos: 15-40 (M and C 25), slope -1.3 to -0.9 (M and C -0.9) up to 1e10 Msun (M 1e10, C 5e9);
# vortices 3e10-1e11 Msun (M 3e10, C 5e10) on half-lengths 0.03-3" (M 0.03-3", C 0.3-3")
BROAD_SUBSTRUCTURE = Substructure(n_subhalos=(15, 40), subhalo_slope=(-1.3, -0.9), vortex_mass=(3e10, 1e11))


def sample_broad(cfg, labels, gen):
    """deeplense-broad: the BROAD_* ranges above, every class alike but for its substructure
    (`BROAD_SUBSTRUCTURE`); Poisson counts as deeplense-common, min-max scaled."""
    n = len(labels)
    zeros = torch.zeros(n, dtype=torch.float64)
    theta_e = uniform(gen, n, *BROAD_THETA_E)
    lens_e1, lens_e2 = q_phi_to_ellipticity(uniform(gen, n, *BROAD_LENS_Q), uniform(gen, n, 0, math.pi))
    shear, shear_angle = uniform(gen, n, *BROAD_SHEAR), uniform(gen, n, 0, math.pi)
    src_e1, src_e2 = q_phi_to_ellipticity(uniform(gen, n, *BROAD_SRC_Q), uniform(gen, n, 0, math.pi))
    src_x, src_y = uniform(gen, n, -BROAD_SRC_BOX, BROAD_SRC_BOX), uniform(gen, n, -BROAD_SRC_BOX, BROAD_SRC_BOX)
    src_r_e, src_n = log_uniform(gen, n, *BROAD_SRC_R_E), uniform(gen, n, *BROAD_SRC_N)
    psf_fwhm = uniform(gen, n, *cfg.psf_fwhm)
    peak_counts = log_uniform(gen, n, *BROAD_PEAK_COUNTS)
    sky_counts = log_uniform(gen, n, *BROAD_SKY_COUNTS)
    point_masses, columns = draw_substructure(labels, gen, BROAD_SUBSTRUCTURE)
    lens = dict(theta_e=theta_e, lens_e1=lens_e1, lens_e2=lens_e2, lens_x=zeros.clone(), lens_y=zeros.clone(),
                core=zeros.clone(), gamma1=shear * torch.cos(2 * shear_angle), gamma2=shear * torch.sin(2 * shear_angle))
    source = dict(src_r_e=src_r_e, src_n=src_n, src_e1=src_e1, src_e2=src_e2, src_x=src_x, src_y=src_y)
    extra = dict(peak_snr=peak_counts / sky_counts.sqrt(), psf_fwhm=psf_fwhm, peak_counts=peak_counts,
                 sky_counts=sky_counts)
    _add_clumps(gen, source, extra, BROAD_CLUMPS, BROAD_CLUMP_FRAC, BROAD_CLUMP_SIGMA,
                scale=uniform(gen, n, *BROAD_CLUMP_SCALE))
    return _scene_and_params(lens, source, point_masses, columns, extra)
