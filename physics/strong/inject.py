"""Lensed sources painted into real survey cutouts (`simulate.py --task lens --hosts ...`).

The way lens searches build training sets that transfer (HOLISMOKES, Euclid Q1, Jacobs et al.):
the user's own cutouts are the deflectors and the backgrounds, and only the lensed source is
simulated. For each host:

1. `measure_hosts`: the cutout's background and noise per band (median and MAD of a border
   frame), and its central object's light from thresholded first and second moments: centre,
   size, axis ratio, major-axis angle and flux per band (host units).
2. `draw_injection`: a mass aligned with the light (SIE centred on it, axis ratio and angle
   those of the light with scatter), shear, and a source; theta_E, the shear, the source and
   its offset come from the same distributions as the `lsst` / `lens-finding-64` simulations
   (`physics.strong.survey.sample_survey`), so injected and simulated lenses are alike.
3. `render_arcs`: the source lensed by ray shooting on a supersampled grid at the host's pixel
   scale, within a window about the lens that holds all of the source's light that counts
   (`reach`), convolved with the survey PSF per band (a Moffat of drawn or given FWHM, or the
   user's kernel).
4. `paint`: the arc is added in the host's own units. Hosts are seldom calibrated (a min-max
   scaled channel has no zero point), so brightness is set by S/N against the host's measured
   noise: the arc's S/N in the reference band (i if present) is drawn like that of the simulated
   lenses (log-normal, median 69, 10-90% 20-240, at least --min-arc-snr), and the other bands
   follow a star-forming source's colours (`survey.BLUE_COLOURS`), converted to host units with
   the per-band noise of the survey model (`instrument.LSST_BANDS` at the configuration's
   depth). The arc's own Poisson noise uses the same model: a host unit holds
   (sky + read variance) / noise^2 electrons, so the noise the arc adds is sqrt(arc x unit).

Host units are kept throughout; a host stored min-max scaled is rescaled after painting, and
the non-lenses (the same hosts, unpainted) are rescaled the same way, so the scaling cannot
tell the classes apart.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import gammainccinv

from physics.strong import light, mass
from physics.strong.draws import uniform
from physics.strong.instrument import LSST_BANDS, convolve, moffat_psf, pixel_grid, pixelise
from physics.strong.survey import BLUE_COLOURS

# arc S/N of injected lenses in the reference band: the lens-finding-64 simulations' distribution
# (sky mix, 4,000 lenses: log10 S/N median 1.84, sigma 0.40), above --min-arc-snr
SNR_LOG10_MEDIAN, SNR_LOG10_SIGMA, SNR_MAX = 1.84, 0.40, 1000.0
MASS_Q_SCATTER, MASS_ANGLE_SCATTER = 0.1, math.radians(10)  # mass vs light (lensing + dynamics)
MASS_Q_MIN = 0.4
DETECT_SIGMA = 3.0   # pixels of the central object: S/N of the 3x3-smoothed detection map above this ...
APERTURE = 0.25      # ... within this fraction of the stamp side of its centre
MIN_OBJECT_SNR = 8.0  # an object's summed detection S/N; below it the stamp is empty (noise peaks)
SNR_BISECTIONS = 14  # steps of the bisection that sets the arc's amplitude (S/N to 0.05%)
SNR_BRACKET = 3.0    # ... within exp(+-3) of the guess from the arc's quadrature sum
FWHM_STEP, BETA_STEP = 0.01, 0.25  # grids of the drawn PSFs
# ray shooting within a window about the lens (`reach`): the share of a Sersic source's flux
# and the Gaussian sigmas of its clumps left outside; windows come in classes of WINDOW_STEP
# pixels of half-width (one batch each)
SOURCE_LEFT_OUT, CLUMP_REACH, WINDOW_STEP = 1e-3, 5.0, 2
NEIGHBOUR_SEP = (0.6, 3.0)  # arcsec: painted unlensed neighbours (--painted-neighbours), as the simulated pairs
# stars for the PSF (--psf stars): detection S/N of a star's peak, of a neighbour that spoils its
# stamp; size within this factor of the smallest candidates'; fewer stars than MIN_STARS: no PSF
STAR_MIN_SNR, STAR_NEIGHBOUR_SNR, STAR_SIZE_SPREAD, MIN_STARS = 30.0, 8.0, 1.2, 5
STAR_BOX, STAR_WEIGHT = 15, 3.0  # pixels: the box and the Gaussian weight of the size measurement
STAR_MIN_Q = 0.8  # axis ratio of a star's weighted moments (a PSF is nearly round; weighting makes shapes rounder)
STAR_HOST_RADII, STAR_HOST_MIN = 3.0, 5.0  # stars are sought beyond 3 host sizes (and 5 pixels) of its centre
CENTRE_ITERATIONS = 8  # of a star's weighted centroid (each removes ~2/3 of the offset left)



def _border(images, width):
    """(N, C, P) pixels of a frame `width` wide around each image."""
    h, w = images.shape[-2:]
    keep = torch.ones(h, w, dtype=torch.bool)
    keep[width:h - width, width:w - width] = False
    return images[..., keep]


def _detection_map(images):
    """(background, noise (N, C), detection (N, H, W)): each band's border median and MAD, and
    the band-summed excess over the background in units of its noise (unit variance on white noise)."""
    n, c, h, w = images.shape
    frame = _border(images, max(2, min(h, w) // 8))
    background = frame.median(-1).values
    noise = 1.4826 * (frame - background[..., None]).abs().median(-1).values
    zero = noise <= 0  # a border of zeros (masked, or min-max padded): the whole image's MAD instead
    if zero.any():
        flat = images.reshape(n, c, -1)[zero]
        noise = noise.clone()
        noise[zero] = 1.4826 * (flat - flat.median(-1, keepdim=True).values).abs().median(-1).values
    excess = (images - background[..., None, None]) / noise.clamp(min=1e-30)[..., None, None]
    return background, noise, excess.sum(1) / math.sqrt(c)


def kernel_fwhm(kernels):
    """(C,) FWHM in pixels of kernels (C, k, k): a pixel-integrated Moffat profile (centre,
    amplitude, alpha, beta; 4x4 samples per pixel) fitted by least squares to each, FWHM =
    2 alpha sqrt(2^(1/beta) - 1): the optical FWHM, as --psf-fwhm gives it."""
    from scipy.optimize import curve_fit
    k = kernels.shape[-1]
    sub = (np.arange(4) - 1.5) / 4
    yy, xx = np.mgrid[:k, :k] - (k - 1) / 2
    yy = (yy[..., None, None] + sub[:, None] + 0 * sub).reshape(k, k, 16)
    xx = (xx[..., None, None] + sub + 0 * sub[:, None]).reshape(k, k, 16)

    def moffat(_, x0, y0, amp, alpha, beta):
        return (amp * (1 + ((xx - x0) ** 2 + (yy - y0) ** 2) / alpha ** 2) ** -beta).mean(-1).ravel()
    out = []
    for kernel in kernels.double().numpy():
        guess = (0.0, 0.0, kernel.max(), max(1.0, math.sqrt((kernel > kernel.max() / 2).sum() / math.pi)), 3.0)
        try:
            (_, _, _, alpha, beta), _ = curve_fit(moffat, None, kernel.ravel(), p0=guess, maxfev=2000,
                                                  bounds=([-k, -k, 0, 0.1, 0.5], [k, k, np.inf, k, 20]))
            out.append(2 * alpha * math.sqrt(2 ** (1 / beta) - 1))
        except RuntimeError:  # no convergence: the area above half the peak
            out.append(2 * math.sqrt((kernel >= kernel.max() / 2).sum() / math.pi))
    return torch.tensor(out, dtype=torch.float64)


def psf_from_stars(images, max_side):
    """The PSF measured from the stars in host cutouts (N, C, H, W): point sources found as
    local maxima of the detection map above STAR_MIN_SNR, away from the host galaxy the cutout is
    centred on, round, whose size (weighted second moments) is within STAR_SIZE_SPREAD of the
    smallest such candidates' (galaxies are larger), with no other source within the stamp; each star background-subtracted, re-centred by a Fourier
    shift, normalised per band, and the stars' median taken. Returns (kernels (C, k, k) of sum
    1 with k odd <= max_side, FWHM per band in pixels (C,), number of stars); (None, None, n)
    when fewer than MIN_STARS stars are found."""
    images = images.to(torch.float64)
    n, c, h, w = images.shape
    background, _, det = _detection_map(images)
    local_max = det == F.max_pool2d(det[:, None], 5, 1, 2)[:, 0]
    peaks = torch.nonzero(local_max & (det > STAR_MIN_SNR))  # (P, 3): host, row, column
    others = torch.nonzero(local_max & (det > STAR_NEIGHBOUR_SNR))
    b = STAR_BOX // 2
    peaks = peaks[(peaks[:, 1] >= b) & (peaks[:, 1] < h - b) & (peaks[:, 2] >= b) & (peaks[:, 2] < w - b)]
    # not the host itself: cutouts are centred on their galaxy, stars are its neighbours
    host = measure_hosts(images, 1.0)
    near_x = peaks[:, 2] - (w - 1) / 2 - host["x"][peaks[:, 0]]
    near_y = peaks[:, 1] - (h - 1) / 2 - host["y"][peaks[:, 0]]
    keep_out = (STAR_HOST_RADII * host["size"].nan_to_num(0.0)).clamp(min=STAR_HOST_MIN)[peaks[:, 0]]
    peaks = peaks[~host["has_light"][peaks[:, 0]] | (torch.hypot(near_x, near_y) > keep_out)]
    if len(peaks) < MIN_STARS:
        return None, None, int(len(peaks))
    offsets = torch.arange(-b, b + 1)
    box = det[peaks[:, 0, None, None], peaks[:, 1, None, None] + offsets[:, None],
              peaks[:, 2, None, None] + offsets[None, :]].clamp(min=0)  # (P, box, box)
    # size: Gaussian-weighted second moments (weight sigma STAR_WEIGHT), unbiased for a Gaussian source
    r2 = (offsets[:, None] ** 2 + offsets[None, :] ** 2).double()
    weighted = box * torch.exp(-r2 / (2 * STAR_WEIGHT ** 2))
    norm = weighted.sum((1, 2)).clamp(min=1e-30)
    ixx, iyy = ((weighted * offsets[None, :] ** 2).sum((1, 2)) / norm, (weighted * offsets[:, None] ** 2).sum((1, 2)) / norm)
    ixy = (weighted * offsets[:, None] * offsets[None, :]).sum((1, 2)) / norm
    m = (ixx + iyy) / 2
    size = torch.sqrt(m * STAR_WEIGHT ** 2 / (STAR_WEIGHT ** 2 - m).clamp(min=1e-6))
    diff = torch.sqrt(((ixx - iyy) / 2) ** 2 + ixy ** 2)
    round_ = torch.sqrt((m - diff).clamp(min=0) / (m + diff).clamp(min=1e-30)) > STAR_MIN_Q  # weighted: rounder
    size = torch.where(round_, size, torch.full_like(size, math.inf))
    if not round_.any():
        return None, None, 0
    smallest = size[round_].sort().values[:max(3, int(round_.sum()) // 5)].median()
    fwhm_guess = 2.3548 * float(smallest)
    k = min(max(9, 2 * math.ceil(2.5 * fwhm_guess) + 1), max_side - (1 - max_side % 2))
    half = k // 2
    star = (size <= STAR_SIZE_SPREAD * smallest) & (peaks[:, 1] >= half) & (peaks[:, 1] < h - half) \
        & (peaks[:, 2] >= half) & (peaks[:, 2] < w - half)
    for i in torch.nonzero(star).flatten().tolist():  # isolated: no other source within the stamp
        host, row, col = peaks[i].tolist()
        near = others[(others[:, 0] == host) & ((others[:, 1] - row).abs() <= half) & ((others[:, 2] - col).abs() <= half)]
        star[i] = len(near) == 1
    chosen = peaks[star]
    if len(chosen) < MIN_STARS:
        return None, None, int(len(chosen))
    grid = torch.arange(-half, half + 1)
    stamps = images[chosen[:, 0, None, None, None], torch.arange(c)[None, :, None, None],
                    chosen[:, 1, None, None, None] + grid[:, None], chosen[:, 2, None, None, None] + grid[None, :]]
    stamps = stamps - background[chosen[:, 0]][..., None, None]
    # each star's sub-pixel centre moved onto the central pixel by a Fourier shift, found by iterating
    # the centroid within a Gaussian weight about the centre (its fixed point is the true centre)
    fy, fx = torch.fft.fftfreq(k, dtype=torch.float64), torch.fft.rfftfreq(k, dtype=torch.float64)
    spectra = torch.fft.rfft2(stamps)
    weight = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * max(fwhm_guess, 1.0) ** 2)).double()
    sx, sy = torch.zeros(len(chosen), dtype=torch.float64), torch.zeros(len(chosen), dtype=torch.float64)
    for _ in range(CENTRE_ITERATIONS):
        phase = torch.exp(2j * math.pi * (sy[:, None, None] * fy[:, None] + sx[:, None, None] * fx[None, :]))
        shifted = torch.fft.irfft2(spectra * phase[:, None], s=(k, k))
        light = shifted.sum(1).clamp(min=0) * weight
        total = light.sum((1, 2)).clamp(min=1e-30)
        sx = sx + (light * grid[None, :]).sum((1, 2)) / total
        sy = sy + (light * grid[:, None]).sum((1, 2)) / total
    stamps = shifted
    stamps = stamps / stamps.sum((2, 3), keepdim=True).clamp(min=1e-30)
    kernels = stamps.median(0).values.clamp(min=0)
    kernels = kernels / kernels.sum((1, 2), keepdim=True)
    return kernels, kernel_fwhm(kernels), int(len(chosen))


def measure_hosts(images, pixel_scale):
    """Robust properties of host cutouts (N, C, H, W) in their own units (float64 CPU tensors):
    background, noise (N, C); x, y (arcsec from the stamp centre, x along columns), size (arcsec,
    the light's geometric-mean second-moment radius), q, phi (major-axis angle, radians from x
    towards y), flux (N, C) of the central object; has_light (N,) False for an empty stamp
    (centre, q = 1 and phi = 0 taken then). noise is 0 for a constant image."""
    images = images.to(torch.float64)
    n, c, h, w = images.shape
    background, noise, detection = _detection_map(images)
    smooth = 3 * F.avg_pool2d(detection[:, None], 3, 1, 1, count_include_pad=False)[:, 0]  # ditto, 3x3 box
    detected = smooth > DETECT_SIGMA
    row = torch.arange(h, dtype=torch.float64)[:, None] - (h - 1) / 2
    col = torch.arange(w, dtype=torch.float64)[None, :] - (w - 1) / 2
    cx, cy = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    radius = APERTURE * min(h, w)
    for _ in range(3):  # re-centre on the light inside the aperture
        inside = (col - cx[:, None, None]) ** 2 + (row - cy[:, None, None]) ** 2 < radius ** 2
        weight = detection.clamp(min=0) * detected * inside
        total = weight.sum((1, 2))
        has_light = total / (detected & inside).sum((1, 2)).clamp(min=1).sqrt() > MIN_OBJECT_SNR
        safe = total.clamp(min=1e-30)
        cx = torch.where(has_light, (weight * col).sum((1, 2)) / safe, cx)
        cy = torch.where(has_light, (weight * row).sum((1, 2)) / safe, cy)
    dx, dy = col - cx[:, None, None], row - cy[:, None, None]
    ixx, iyy, ixy = ((weight * t).sum((1, 2)) / safe for t in (dx * dx, dy * dy, dx * dy))
    half_trace, diff = (ixx + iyy) / 2, torch.sqrt(((ixx - iyy) / 2) ** 2 + ixy ** 2)
    major, minor = half_trace + diff, (half_trace - diff).clamp(min=1e-12)
    q = torch.where(has_light, torch.sqrt(minor / major.clamp(min=1e-12)), torch.ones_like(ixx))
    phi = torch.where(has_light, 0.5 * torch.atan2(2 * ixy, ixx - iyy), torch.zeros_like(ixx))
    size = torch.where(has_light, (major * minor) ** 0.25 * pixel_scale, torch.full_like(ixx, math.nan))
    member = (detected & inside & has_light[:, None, None])[:, None]
    flux = ((images - background[..., None, None]) * member).sum((2, 3))
    return dict(background=background, noise=noise, x=cx * pixel_scale, y=cy * pixel_scale, size=size,
                q=q, phi=phi, flux=flux, has_light=has_light)


def band_model(bands, pixel_scale, depth):
    """(flux noise per pixel (C,), electrons per unit flux (C,)) of the survey model at `depth`
    (fraction of LSST's 10-year stack); bands without an LSST model take i's."""
    models = [LSST_BANDS.get(b, LSST_BANDS["i"]) for b in bands]
    gain = torch.tensor([m.electrons_per_flux() * depth for m in models], dtype=torch.float64)
    background = torch.tensor([(m.sky_electrons(pixel_scale) + m.read_noise ** 2 * m.n_exposures) * depth
                               for m in models], dtype=torch.float64)
    return background.sqrt() / gain, gain


def draw_injection(hosts, lensed, survey_scene, gen, bands, min_snr, neighbour=None):
    """Mass, source, colours and target S/N for each host (rows of `hosts` from
    measure_hosts, already indexed per image). survey_scene: `sample_survey` drawn for all-lens
    labels (theta_e, shear, source and its offset from the lens). Non-lens rows (lensed False)
    keep their would-be mass (deflector_theta_e) with theta_e 0, as simulated non-lenses do.
    `neighbour` (N,) bool marks non-lens rows whose source is painted unlensed, NEIGHBOUR_SEP
    from the host's centre (the simulations' close pairs): scene["neighbour"]."""
    n = len(lensed)
    q = (hosts["q"] + MASS_Q_SCATTER * torch.randn(n, generator=gen, dtype=torch.float64)).clamp(MASS_Q_MIN, 1.0)
    phi = hosts["phi"] + MASS_ANGLE_SCATTER * torch.randn(n, generator=gen, dtype=torch.float64)
    e1, e2 = mass.q_phi_to_ellipticity(q, phi)
    s = survey_scene
    theta_e = s["theta_e"]
    zeros = torch.zeros(n, dtype=torch.float64)
    dx, dy = s["src_x"] - s["lens_x"], s["src_y"] - s["lens_y"]  # source offset from the lens
    scene = dict(theta_e=torch.where(lensed, theta_e, zeros), deflector_theta_e=theta_e,
                 lens_x=hosts["x"], lens_y=hosts["y"], lens_e1=e1, lens_e2=e2, core=zeros,
                 gamma1=torch.where(lensed, s["gamma1"], zeros), gamma2=torch.where(lensed, s["gamma2"], zeros),
                 src_x=hosts["x"] + dx, src_y=hosts["y"] + dy,
                 **{k: s[k] for k in ("src_r_e", "src_n", "src_e1", "src_e2", "clump_frac", "clump_sigma")},
                 clump_x=hosts["x"][:, None] + s["clump_x"] - s["lens_x"][:, None],
                 clump_y=hosts["y"][:, None] + s["clump_y"] - s["lens_y"][:, None])
    if neighbour is not None:
        sep = uniform(gen, n, *NEIGHBOUR_SEP)
        angle = uniform(gen, n, 0, 2 * math.pi)
        nx, ny = hosts["x"] + sep * torch.cos(angle), hosts["y"] + sep * torch.sin(angle)
        for axis, new in (("x", nx), ("y", ny)):
            scene[f"clump_{axis}"] = torch.where(neighbour[:, None], scene[f"clump_{axis}"] - scene[f"src_{axis}"][:, None]
                                                 + new[:, None], scene[f"clump_{axis}"])
            scene[f"src_{axis}"] = torch.where(neighbour, new, scene[f"src_{axis}"])
        scene["neighbour"] = neighbour & ~lensed
    colours = torch.stack([BLUE_COLOURS.get(b, (0.0, 0.1))[0] + BLUE_COLOURS.get(b, (0.0, 0.1))[1]
                           * torch.randn(n, generator=gen, dtype=torch.float64) for b in bands], 1)
    scene["colour_flux"] = 10 ** (-0.4 * colours)  # (N, C) band flux / reference-band flux
    lo = math.log10(max(min_snr, 1e-3))
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    cdf = [0.5 * (1 + math.erf((v - SNR_LOG10_MEDIAN) / (SNR_LOG10_SIGMA * math.sqrt(2))))
           for v in (lo, math.log10(SNR_MAX))]
    scene["snr_target"] = 10 ** (SNR_LOG10_MEDIAN + SNR_LOG10_SIGMA
                                 * torch.special.ndtri(cdf[0] + u * (cdf[1] - cdf[0])))
    return scene


def _lensed_unit(s, side, pixel_scale, supersample, dtype):
    """(R, 1, side, side) lensed unit source of the scene rows `s`, ray-shot on a grid centred on the stamp."""
    x, y = pixel_grid(side, pixel_scale, supersample, dtype)
    ax, ay = mass.sie(x, y, s["theta_e"], s["lens_e1"], s["lens_e2"], s["lens_x"], s["lens_y"], s["core"])
    sx, sy = mass.shear(x, y, s["gamma1"], s["gamma2"], s["lens_x"], s["lens_y"])
    bx, by = x - ax - sx, y - ay - sy
    src = light.sersic(bx, by, 1 - s["clump_frac"].sum(1), s["src_r_e"], s["src_n"], s["src_e1"], s["src_e2"],
                       s["src_x"], s["src_y"])
    src = src + light.gaussians(bx, by, s["clump_frac"], s["clump_sigma"], s["clump_x"], s["clump_y"])
    return pixelise(src[:, None], supersample, pixel_scale)


def reach(s):
    """(R,) radius (arcsec) about each lens beyond which the lensed source adds nothing that
    counts: a ray at radius r lands at least r (1 - |gamma|) - max|alpha_SIE| from the lens, and
    all but SOURCE_LEFT_OUT of the Sersic's light lies within its elliptical radius for that
    share (its clumps' within CLUMP_REACH sigma of their centres)."""
    angle = torch.linspace(0, 2 * math.pi, 65, dtype=s["theta_e"].dtype)[:-1]
    ring_x = s["lens_x"][:, None, None] + torch.cos(angle)  # (R, 1, 64): the SIE deflection is the same at any radius
    ring_y = s["lens_y"][:, None, None] + torch.sin(angle)
    ax, ay = mass.sie(ring_x, ring_y, s["theta_e"], s["lens_e1"], s["lens_e2"], s["lens_x"], s["lens_y"])
    alpha = torch.hypot(ax, ay).flatten(1).amax(1)
    gamma = torch.hypot(s["gamma1"], s["gamma2"]).clamp(max=0.5)
    # the Sersic's elliptical radius enclosing all but SOURCE_LEFT_OUT of its flux, along its major axis
    n = s["src_n"].double()
    radius = (torch.from_numpy(gammainccinv(2 * n.numpy(), SOURCE_LEFT_OUT)) / light.sersic_b(n)) ** n
    q_src, _ = mass.ellipticity_to_q_phi(s["src_e1"], s["src_e2"])
    source = torch.hypot(s["src_x"] - s["lens_x"], s["src_y"] - s["lens_y"]) \
        + (radius.to(s["src_r_e"].dtype) * s["src_r_e"] / q_src.clamp(min=0.05).sqrt())
    clumps = torch.hypot(s["clump_x"] - s["lens_x"][:, None], s["clump_y"] - s["lens_y"][:, None]) \
        + CLUMP_REACH * s["clump_sigma"]
    extent = torch.maximum(source, clumps.amax(1)) if clumps.shape[1] else source
    return (extent + alpha) / (1 - gamma)


def render_arcs(scene, size, pixel_scale, supersample, kernels, dtype=torch.float32, window=True):
    """(N, C, H, W) lensed source for unit source flux, convolved with kernels (N or 1, C, k, k);
    H, W = size. Rows with theta_e = 0 (non-lenses) are not rendered (zeros) unless scene["neighbour"]. With `window`, a
    square stamp's rays are shot only within `reach` of each lens (on the stamp's own pixel
    grid, rows grouped by window size), and the PSF is applied to the window padded by the
    kernel's half-width: what is left out is at most SOURCE_LEFT_OUT of the source's flux."""
    h, w = size
    n, c = len(scene["theta_e"]), kernels.shape[1]
    out = torch.zeros(n, c, h, w, dtype=dtype)
    drawn = scene["theta_e"] > 0
    if "neighbour" in scene:  # unlensed sources of non-lenses: theta_e 0 deflects nothing
        drawn = drawn | scene["neighbour"]
    rows = torch.nonzero(drawn).flatten()
    if not len(rows):
        return out
    s = {k: v[rows].to(dtype) for k, v in scene.items() if torch.is_tensor(v) and v.dim() and len(v) == n}
    kern = (kernels if len(kernels) == 1 else kernels[rows]).to(dtype)
    side, pad = max(h, w), kernels.shape[-1] // 2
    # the stamp pixel holding each lens and the half-width of its window, in WINDOW_STEP-pixel classes
    centre = (torch.stack([s["lens_x"], s["lens_y"]], 1).double() / pixel_scale + (side - 1) / 2).round().long()
    half = (torch.ceil(reach(s).double() / pixel_scale).long() + 1 + WINDOW_STEP - 1) // WINDOW_STEP * WINDOW_STEP
    full = (half * 2 + 1 >= side) | ((centre < 0) | (centre >= side)).any(1) | (h != w) | (not window)
    if full.any():
        sel = torch.nonzero(full).flatten()
        unit = _lensed_unit({k: v[sel] for k, v in s.items()}, side, pixel_scale, supersample, dtype)
        top, left = (side - h) // 2, (side - w) // 2
        unit = unit[..., top:top + h, left:left + w].expand(-1, c, -1, -1)
        out[rows[sel]] = convolve(unit, kern if len(kern) == 1 else kern[sel])
    if full.all():
        return out
    margin = int(half[~full].max()) + pad
    canvas = torch.zeros(n, c, h + 2 * margin, w + 2 * margin, dtype=dtype)
    for hw in torch.unique(half[~full]).tolist():
        sel = torch.nonzero(~full & (half == hw)).flatten()
        sub = {k: v[sel] for k, v in s.items()}
        shift = ((centre[sel] - (side - 1) / 2) * pixel_scale).to(dtype)  # the window's centre on the sky
        for axis, names in ((0, ("lens_x", "src_x", "clump_x")), (1, ("lens_y", "src_y", "clump_y"))):
            for name in names:
                sub[name] = sub[name] - (shift[:, axis, None] if sub[name].dim() == 2 else shift[:, axis])
        unit = _lensed_unit(sub, 2 * hw + 1, pixel_scale, supersample, dtype)
        # light shot beyond the stamp is dropped before the PSF, as the whole-stamp rendering drops it
        at = centre[sel, :, None] - hw + torch.arange(2 * hw + 1)  # (R, 2, window) stamp columns, rows
        inside = (at >= 0) & (at < side)
        unit = F.pad(unit * (inside[:, 1, None, :, None] & inside[:, 0, None, None, :]), (pad,) * 4)
        arcs = convolve(unit.expand(-1, c, -1, -1), kern if len(kern) == 1 else kern[sel])
        # each window pasted at its lens's pixel (one indexed assignment for the group)
        offsets = torch.arange(2 * (hw + pad) + 1)
        xs = (centre[sel, 0] + margin - hw - pad)[:, None] + offsets  # (R, span) canvas columns, then rows
        ys = (centre[sel, 1] + margin - hw - pad)[:, None] + offsets
        canvas[rows[sel][:, None, None, None], torch.arange(c)[None, :, None, None], ys[:, None, :, None],
               xs[:, None, None, :]] = arcs
    windowed = rows[~full]
    out[windowed] = canvas[windowed, :, margin:margin + h, margin:margin + w]
    return out


def moffat_kernels(fwhm_arcsec, beta, pixel_scale, size):
    """(N, C, size, size) Moffat PSFs for FWHM (N, C) arcsec and beta (N, C); each distinct
    (FWHM, beta) pair is computed once (psf_fwhm_draw draws them on a grid)."""
    pairs, inverse = torch.unique(torch.stack([fwhm_arcsec.flatten(), beta.flatten()], 1), dim=0,
                                  return_inverse=True)
    keys = [(f, b, pixel_scale, size) for f, b in pairs.tolist()]
    new = [k for k in keys if k not in _KERNELS]
    if new:  # a worker keeps the kernels it has made: the grid is small, blocks reuse them
        made = moffat_psf(torch.tensor([k[0] for k in new], dtype=torch.float64) / pixel_scale,
                          torch.tensor([k[1] for k in new], dtype=torch.float64), size)
        _KERNELS.update(zip(new, made))
    bank = torch.stack([_KERNELS[k] for k in keys])  # (U, size, size)
    return bank[inverse].reshape(fwhm_arcsec.shape + (size, size))


_KERNELS = {}  # (FWHM, beta, pixel scale, size) -> kernel


def arc_snr(arc, noise, unit):
    """S/N of arcs (N, H, W), or (N, P) pixels of them, in host units on a background of noise (N,)
    with the arc's own Poisson variance arc x unit (N,): the simulator's definition (the sum over
    pixels above 1 sigma of the total noise, over the root of their summed variance)."""
    arc = arc.flatten(1)
    variance = noise[:, None] ** 2 + arc.clamp(min=0) * unit[:, None]
    mask = arc > variance.sqrt()
    signal = (arc * mask).sum(1)
    var = (variance * mask).sum(1)
    return torch.where(var > 0, signal / var.clamp(min=1e-30).sqrt(), torch.zeros_like(signal))


def paint(hosts_images, unit_arcs, scene, noise, unit, ref, gen):
    """Hosts (N, C, H, W) plus their arcs at each row's target S/N (reference band `ref`).
    unit_arcs from render_arcs; noise (N, C) the hosts' noise; unit (N, C) host units per
    electron. Returns (images, arc amplitude per band (N, C) in host units x unit source flux,
    achieved S/N (N,)); rows without an arc come back unchanged with amplitude 0, S/N NaN."""
    weight = scene["colour_flux"] * noise / noise[:, ref:ref + 1].clamp(min=1e-30) \
        * scene["flux_noise_ref"] / scene["flux_noise"]  # (N, C): host units of band c per reference unit
    lit = unit_arcs[:, ref].flatten(1).amax(1) > 0
    rows = torch.nonzero(lit).flatten()  # only rows with an arc are painted (the non-lenses stay as they are)
    n = len(lit)
    amplitude = torch.zeros_like(weight)
    snr = torch.full((n,), math.nan, dtype=torch.float64)
    if not len(rows):
        return hosts_images.double(), amplitude, snr
    u_ref = unit_arcs[rows, ref].double()
    noise_ref, unit_ref, target = noise[rows, ref], unit[rows, ref], scene["snr_target"][rows]
    # bisection in log amplitude: the S/N of amplitude a is monotonic in a
    guess = target * noise_ref / (u_ref.pow(2).sum((1, 2)).sqrt().clamp(min=1e-30))
    lo, hi = torch.log(guess.clamp(min=1e-30)) - SNR_BRACKET, torch.log(guess.clamp(min=1e-30)) + SNR_BRACKET
    # only pixels above the noise at the bracket's brightest can ever count: the bisection sees those alone
    flat = u_ref.flatten(1)
    can = int((flat * torch.exp(hi)[:, None] > noise_ref[:, None]).sum(1).max())
    brightest = flat.topk(max(can, 1), dim=1, sorted=False).values
    for _ in range(SNR_BISECTIONS):
        mid = (lo + hi) / 2
        too_faint = arc_snr(torch.exp(mid)[:, None] * brightest, noise_ref, unit_ref) < target
        lo, hi = torch.where(too_faint, mid, lo), torch.where(too_faint, hi, mid)
    amplitude[rows] = torch.exp(hi)[:, None] * weight[rows]  # (R, C)
    arcs = unit_arcs[rows].double() * amplitude[rows, :, None, None]
    variance = arcs.clamp(min=0) * unit[rows, :, None, None]
    noisy = arcs + variance.sqrt() * torch.randn(arcs.shape, generator=gen, dtype=torch.float64)
    snr[rows] = arc_snr(arcs[:, ref], noise_ref, unit_ref)
    return hosts_images.double().index_add(0, rows, noisy), amplitude, snr


def augment(images, flips, shifts):
    """Hosts (N, C, H, W) under one of the 8 symmetries of the square (flips (N,) in 0-7:
    bit 0 transpose, bit 1 flip rows, bit 2 flip columns) and an integer shift (N, 2) of
    (columns, rows), the vacated edge filled by reflection. Non-square stamps skip the transpose."""
    out = torch.empty_like(images)
    h, w = images.shape[-2:]
    pad = int(shifts.abs().max()) if len(shifts) else 0
    for i in range(len(images)):
        image, f = images[i], int(flips[i])
        if f & 1 and h == w:
            image = image.transpose(-1, -2)
        if f & 2:
            image = image.flip(-2)
        if f & 4:
            image = image.flip(-1)
        if pad:
            dx, dy = int(shifts[i, 0]), int(shifts[i, 1])
            padded = F.pad(image[None], (pad, pad, pad, pad), mode="reflect")[0]
            image = padded[:, pad - dy:pad - dy + h, pad - dx:pad - dx + w]
        out[i] = image
    return out


def rescale(images, scaling):
    """Both classes alike: minmax-channel (each channel to [0, 1]), minmax (each image), or
    flux (unchanged). NaN pixels (masked) are ignored and stay NaN."""
    if scaling == "flux":
        return images
    dims = (1, 2, 3) if scaling == "minmax" else (2, 3)
    finite = torch.isfinite(images)
    lo = torch.where(finite, images, math.inf).amin(dims, keepdim=True)
    hi = torch.where(finite, images, -math.inf).amax(dims, keepdim=True)
    return (images - lo) / (hi - lo).clamp(min=1e-30)


def detect_scaling(images):
    """How hosts (N, C, H, W) were stored: minmax-channel if every channel spans exactly [0, 1],
    minmax if every image does, else flux (left as it is)."""
    finite = torch.where(torch.isfinite(images), images, torch.nan)
    ch_lo, ch_hi = finite.flatten(2).nanquantile(0.0, -1), finite.flatten(2).nanquantile(1.0, -1)
    if torch.allclose(ch_lo, torch.zeros_like(ch_lo), atol=1e-6) and torch.allclose(ch_hi, torch.ones_like(ch_hi), atol=1e-6):
        return "minmax-channel"
    lo, hi = ch_lo.amin(1), ch_hi.amax(1)
    if torch.allclose(lo, torch.zeros_like(lo), atol=1e-6) and torch.allclose(hi, torch.ones_like(hi), atol=1e-6):
        return "minmax"
    return "flux"


def reference_band(bands):
    return bands.index("i") if "i" in bands else len(bands) // 2


def psf_fwhm_draw(gen, n, bands, fwhm_range):
    """Seeing FWHM (arcsec, on a 0.01" grid) and Moffat beta (on a 0.25 grid) per row and band,
    uniform in fwhm_range and in [2.5, 4.5]; the grids let moffat_kernels reuse kernels."""
    fwhm = torch.round(uniform(gen, (n, len(bands)), *fwhm_range) / FWHM_STEP) * FWHM_STEP
    beta = torch.round(uniform(gen, (n, len(bands)), 2.5, 4.5) / BETA_STEP) * BETA_STEP
    return fwhm, beta
