"""The smooth-lens fit of substructure images, and what it leaves: the substructure signal.

`fit_smooth` fits each image (B, H, W) with an SIE + external shear lensing one elliptical
Sersic source, blurred by the configuration's Gaussian PSF, plus a flat background: 13
non-linear parameters per image, optimised by Adam on the weighted chi^2 for all images at once
(autograd), from several starts (source positions around the centre); the amplitude and the
background are solved linearly at every step. The noise model is measured per image: the
variance of the background (corner pixels, robust) plus a term proportional to the model's
light above it (Poisson counts, as in the public DeepLense sets), the latter fitted to the
residuals of a first pass, then the fit is refined with those weights.

`residual_stats` turns the normalised residuals r = (image - model) / sigma into the numbers
issue 26 asks for: chi^2 per degree of freedom, the residual power above the noise on the ring
(mean r^2 - 1 over the pixels where the model is bright) and its share inside, on and outside the
Einstein ring, and whether it is significant at all (`detectable`: above the noise by more than
DETECT_SIGMA of its own sampling error).

`psf_scan` measures the PSF itself: the FWHM whose fit leaves the least chi^2. The residuals are only
as good as the PSF they are fitted through: the public DeepLense Common Test I samples, fitted
through Model I's 0.087" instead of their own 0.21", all leave the same negative arcs along the
ring's ridge, with or without substructure.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from physics.strong import light, mass
from physics.strong.instrument import convolve_separable, gaussian_psf_1d, pixel_grid

N_PARAMS = 13
STEPS = (120, 250)            # Adam steps from each start, then refining the best (cosine-decayed rates)
LEARNING_RATE = 0.05
STARTS = ((0.1, 0.02), (-0.1, 0.02), (0.02, 0.1), (0.02, -0.1))  # the lens ellipticity (e1, e2) of each start
FIT_RADIUS = 2.6              # arcsec: the fit and its residuals cover the central +-this (rings reach ~2.2")
NOISE_BINS = 12               # levels of the noise model's variance-vs-light line
RING_LEVEL = 0.1              # the ring: pixels where the model exceeds this fraction of its peak (above sky)
RADIAL_BINS = (0.0, 0.6, 0.85, 1.15, 1.5, 10.0)  # r / theta_E of the residual-power profile
DETECT_SIGMA = 3.0


def _corners(images, width):
    b, h, w = images.shape
    keep = torch.zeros(h, w, dtype=torch.bool, device=images.device)
    keep[:width, :width] = keep[:width, -width:] = keep[-width:, :width] = keep[-width:, -width:] = True
    return images[:, keep]


def background_noise(images):
    """(background, sigma) per image (B,) from the four corners (median and MAD): the sky."""
    corner = _corners(images, max(4, images.shape[-1] // 10))
    background = corner.median(1).values
    sigma = 1.4826 * (corner - background[:, None]).abs().median(1).values
    return background, sigma.clamp(min=1e-12)


def unpack(u):
    """Physical parameters (dict of (B,)) from unconstrained ones u (B, 13)."""
    return dict(theta_e=torch.exp(u[:, 0]), lens_e1=0.7 * torch.tanh(u[:, 1]), lens_e2=0.7 * torch.tanh(u[:, 2]),
                lens_x=u[:, 3], lens_y=u[:, 4], gamma1=0.3 * torch.tanh(u[:, 5]), gamma2=0.3 * torch.tanh(u[:, 6]),
                src_x=u[:, 7], src_y=u[:, 8], src_r_e=torch.exp(u[:, 9]), src_n=0.5 + 3.5 * torch.sigmoid(u[:, 10]),
                src_e1=0.7 * torch.tanh(u[:, 11]), src_e2=0.7 * torch.tanh(u[:, 12]))


def pack(p):
    """Unconstrained u (B, 13) from physical parameters (the inverse of `unpack`)."""
    def atanh(v, scale):
        return torch.atanh((v / scale).clamp(-0.999, 0.999))
    n = (p["src_n"] - 0.5) / 3.5
    return torch.stack([torch.log(p["theta_e"]), atanh(p["lens_e1"], 0.7), atanh(p["lens_e2"], 0.7), p["lens_x"],
                        p["lens_y"], atanh(p["gamma1"], 0.3), atanh(p["gamma2"], 0.3), p["src_x"], p["src_y"],
                        torch.log(p["src_r_e"]), torch.logit(n.clamp(1e-3, 1 - 1e-3)), atanh(p["src_e1"], 0.7),
                        atanh(p["src_e2"], 0.7)], 1)


class SmoothLens:
    """The smooth model's light (B, H, W) for unit source flux on a stamp of `size` pixels, through
    a Gaussian PSF of FWHM `psf_fwhm_arcsec`: one value, or one per image (B,)."""

    def __init__(self, size, pixel_scale, psf_fwhm_arcsec, dtype=torch.float64, device=None):
        self.size, self.pixel_scale = size, pixel_scale
        fwhm = torch.as_tensor(psf_fwhm_arcsec, dtype=dtype, device=device).reshape(-1, 1)  # (1 or B, 1)
        k = int(2 * math.ceil(2.5 * float(fwhm.max()) / pixel_scale) + 1)
        self.psf = gaussian_psf_1d(fwhm / pixel_scale, k)  # (1 or B, 1, k)
        # rendered on a margin of half the kernel, convolved, then cut to `size`: light from beyond
        # the stamp's edge blurs into it as in the image
        self.pad = k // 2
        self.x, self.y = pixel_grid(size + 2 * self.pad, pixel_scale, 1, dtype, device)

    def __call__(self, p):
        x, y = self.x, self.y
        ax, ay = mass.sie(x, y, p["theta_e"], p["lens_e1"], p["lens_e2"], p["lens_x"], p["lens_y"])
        sx, sy = mass.shear(x, y, p["gamma1"], p["gamma2"], p["lens_x"], p["lens_y"])
        n = p["src_n"]  # b_n by the Ciotti & Bertin expansion: differentiable in n (light.sersic_b is not)
        b = 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n * n) + 131 / (1148175 * n ** 3)
        src = light.sersic(x - ax - sx, y - ay - sy, 1.0, p["src_r_e"], n, p["src_e1"], p["src_e2"],
                           p["src_x"], p["src_y"], b=b)
        src = src * self.pixel_scale ** 2
        blurred = convolve_separable(src[:, None], self.psf.expand(len(src), 1, -1))[:, 0]
        return blurred[:, self.pad:self.pad + self.size, self.pad:self.pad + self.size]


def _linear(shape, images, weight):
    """Weighted least-squares amplitude and background of image = a * shape + b (B,)."""
    sw, sx, sy = weight.sum((1, 2)), (weight * shape).sum((1, 2)), (weight * images).sum((1, 2))
    sxx, sxy = (weight * shape * shape).sum((1, 2)), (weight * shape * images).sum((1, 2))
    det = (sw * sxx - sx * sx).clamp(min=1e-30)
    a = (sw * sxy - sx * sy) / det
    return a.clamp(min=0), (sy - a.clamp(min=0) * sx) / sw


def _ring_radius(images, background, pixel_scale):
    """A first theta_E (B,): the radius of the brightest annulus of the azimuthal profile."""
    b, h, w = images.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=images.dtype, device=images.device) - (h - 1) / 2,
                            torch.arange(w, dtype=images.dtype, device=images.device) - (w - 1) / 2, indexing="ij")
    r = torch.hypot(xx, yy).round().long().clamp(max=min(h, w) // 2)
    sums = torch.zeros(b, int(r.max()) + 1, dtype=images.dtype, device=images.device).index_add_(1, r.flatten(),
                                                                          (images - background[:, None, None]).flatten(1))
    counts = torch.bincount(r.flatten(), minlength=sums.shape[1]).to(images.dtype)
    profile = sums / counts.clamp(min=1)
    return (profile[:, 2:].argmax(1) + 2).to(images.dtype) * pixel_scale


def _noise_kernel():
    """(9, 9) high-pass kernel: the 4-neighbour Laplacian minus the Laplacian of a Gaussian
    (sigma 1 pixel) smoothing; a smooth signal's response cancels to fourth order."""
    lap = torch.zeros(9, 9, dtype=torch.float64)
    lap[4, 4], lap[3, 4], lap[5, 4], lap[4, 3], lap[4, 5] = 4, -1, -1, -1, -1
    axis = torch.arange(-3, 4, dtype=torch.float64)
    g = torch.exp(-axis ** 2 / 2)
    g = (g[:, None] * g[None, :]) / g.sum() ** 2
    smoothed = F.conv2d(lap[None, None], g[None, None], padding=3)[0, 0]
    return lap - smoothed


NOISE_KERNEL = _noise_kernel()


def noise_model(images, background):
    """(sky variance, slope) per image (B,): the pixel variance is sky + slope x (light above the
    sky), measured from the data alone (no lens model, so substructure cannot hide in it): the
    response to NOISE_KERNEL of white noise has variance sigma^2 sum(K^2), and the ring's smooth
    light hardly passes it; its median square in bins of the 5x5-smoothed level, a line through them."""
    x = images[:, None]
    k = NOISE_KERNEL.to(images)
    response = F.conv2d(x, k[None, None])[:, 0]  # valid: (B, H - 8, W - 8)
    level = (F.avg_pool2d(x, 5, 1, 2, count_include_pad=False)[:, 0] - background[:, None, None])[:, 4:-4, 4:-4]
    var = response.flatten(1) ** 2 / float((k * k).sum())
    level = level.flatten(1)
    bins = torch.tensor_split(level.argsort(1), NOISE_BINS, dim=1)
    lv = torch.stack([level.gather(1, b).median(1).values for b in bins], 1)  # (B, bins)
    vv = torch.stack([var.gather(1, b).median(1).values / 0.4549 for b in bins], 1)  # chi^2(1) median 0.4549
    lm, vm = lv.mean(1, keepdim=True), vv.mean(1, keepdim=True)
    slope = (((lv - lm) * (vv - vm)).sum(1) / ((lv - lm) ** 2).sum(1).clamp(min=1e-30)).clamp(min=0)
    sky = vv[:, :NOISE_BINS // 2].median(1).values  # the faint half of the pixels: the sky's variance
    return sky.clamp(min=1e-30), slope


def fit_smooth(images, pixel_scale, psf_fwhm, steps=None, starts=None, lr=LEARNING_RATE, crop=FIT_RADIUS):
    """Fit the smooth lens to each image (B, H, W) (any units; min-max scaled is fine), on the
    central square of +-crop arcsec, through a Gaussian PSF of FWHM psf_fwhm (arcsec; one value or
    one per image, (B,)). Returns a dict: params (dict of (B,)), model, sigma (the
    noise model), image (the crop; all (B, h, w)), background, amplitude, chi2 (B,), dof,
    noise_slope (B,) (variance per unit of light above the sky, image units), start (B,) the
    start that won. It runs on the images' device (a GPU fits a batch far faster than a CPU)."""
    steps, starts = steps or STEPS, starts or STARTS  # read when called (a smoke run shortens them)
    images = images.to(torch.float64)
    b, h, w = images.shape
    background, _ = background_noise(images)
    sky_var, slope = noise_model(images, background)
    half = min(h // 2, int(math.ceil(crop / pixel_scale)))
    top, left = h // 2 - half, w // 2 - half
    side = 2 * half + (h % 2)
    images = images[:, top:top + side, left:left + side]
    level = (F.avg_pool2d(images[:, None], 5, 1, 2, count_include_pad=False)[:, 0] - background[:, None, None])
    weight = 1 / (sky_var[:, None, None] + slope[:, None, None] * level.clamp(min=0))
    model_of = SmoothLens(side, pixel_scale, psf_fwhm, torch.float32, images.device)
    theta0 = _ring_radius(images, background, pixel_scale).clamp(0.3, 0.9 * half * pixel_scale)
    data32, weight32 = images.float(), weight.float()

    def descend(u, n_steps, lr_):
        u = u.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=lr_)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_steps, eta_min=lr_ / 20)
        for _ in range(n_steps):
            opt.zero_grad()
            shape = model_of(unpack(u))
            a, c = _linear(shape, data32, weight32)
            chi2 = (weight32 * (data32 - a[:, None, None] * shape - c[:, None, None]) ** 2).sum((1, 2))
            (chi2 / chi2.detach().clamp(min=1)).sum().backward()  # each image's relative chi^2: one step size for all
            opt.step()
            sched.step()
        with torch.no_grad():
            shape = model_of(unpack(u))
            a, c = _linear(shape, data32, weight32)
            chi2 = (weight32 * (data32 - a[:, None, None] * shape - c[:, None, None]) ** 2).sum((1, 2))
        return u.detach(), chi2

    # explore from every start, then refine the best of each image
    best_u, best_chi2, best_start = None, None, torch.zeros(b, dtype=torch.long, device=images.device)
    zeros = torch.zeros(b, dtype=torch.float32, device=images.device)
    for s, (e1, e2) in enumerate(starts):
        # ellipticities start off zero: the angle's gradient is undefined at e = 0
        start = dict(theta_e=theta0.float(), lens_e1=zeros + e1, lens_e2=zeros + e2, lens_x=zeros, lens_y=zeros,
                     gamma1=zeros, gamma2=zeros, src_x=zeros, src_y=zeros, src_r_e=zeros + 0.2,
                     src_n=zeros + 1.0, src_e1=zeros + 0.05, src_e2=zeros + 0.02)
        u, chi2 = descend(pack(start), steps[0], lr)
        if best_u is None:
            best_u, best_chi2 = u, chi2
        else:
            better = chi2 < best_chi2
            best_u, best_chi2 = torch.where(better[:, None], u, best_u), torch.where(better, chi2, best_chi2)
            best_start = torch.where(better, s, best_start)
    u, _ = descend(best_u, steps[1], lr / 3)
    with torch.no_grad():
        shape = model_of(unpack(u)).double()
        a, c = _linear(shape, images, weight)
        model = a[:, None, None] * shape + c[:, None, None]
        chi2 = (weight * (images - model) ** 2).sum((1, 2))
    return dict(params={k: v.detach().double() for k, v in unpack(u).items()}, model=model,
                sigma=weight.rsqrt(), image=images, background=c, amplitude=a, chi2=chi2,
                dof=side * side - N_PARAMS - 2, noise_slope=slope, sky_sigma=sky_var.sqrt(), start=best_start)


def residual_stats(fit, pixel_scale):
    """Per image (B,): chi2_dof; ring_excess, the mean of r^2 - 1 over the ring's pixels (model
    above RING_LEVEL of its peak, grown by the PSF), its error sqrt(2 / n) and `detectable`
    (excess > DETECT_SIGMA errors); ring_power_<bin>: mean r^2 - 1 in annuli of r / theta_E
    (RADIAL_BINS) about the fitted lens; max_residual_sigma, the largest 3x3-smoothed |r| (in
    units of its own noise) and its radius in theta_E."""
    images = fit["image"]
    r = (images - fit["model"]) / fit["sigma"]
    lit = fit["model"] - fit["background"][:, None, None]
    ring = lit > RING_LEVEL * lit.flatten(1).amax(1)[:, None, None]
    ring = F.max_pool2d(ring[:, None].double(), 5, 1, 2)[:, 0] > 0
    n_ring = ring.sum((1, 2)).clamp(min=1).double()
    excess = ((r * r - 1) * ring).sum((1, 2)) / n_ring
    error = torch.sqrt(2 / n_ring)
    h, w = images.shape[-2:]
    x, y = pixel_grid(h, pixel_scale, 1, torch.float64)
    p = fit["params"]
    radius = torch.hypot(x - p["lens_x"][:, None, None], y - p["lens_y"][:, None, None]) / p["theta_e"][:, None, None]
    out = dict(chi2_dof=fit["chi2"] / fit["dof"], ring_excess=excess, ring_excess_error=error,
               detectable=excess > DETECT_SIGMA * error)
    for lo, hi in zip(RADIAL_BINS[:-1], RADIAL_BINS[1:]):
        annulus = (radius >= lo) & (radius < hi)
        out[f"ring_power_{lo:g}_{hi:g}"] = ((r * r - 1) * annulus).sum((1, 2)) / annulus.sum((1, 2)).clamp(min=1)
    smooth = F.avg_pool2d(r[:, None], 3, 1, 1, count_include_pad=False)[:, 0] * 3  # unit variance on noise
    peak = smooth.abs().flatten(1).argmax(1)
    out["max_residual_sigma"] = smooth.abs().flatten(1).amax(1)
    out["max_residual_radius"] = radius.flatten(1)[torch.arange(len(r)), peak]
    out["noise_slope"], out["sky_sigma"] = fit["noise_slope"], fit["sky_sigma"]
    return out


def measure_images(images, pixel_scale, psf_fwhm, batch=32, progress=False):
    """`residual_stats` of every image (N, H, W) (numpy or tensor), fitted in batches through the
    PSF psf_fwhm (arcsec; one value or one per image, (N,)): {name: (N,) numpy}."""
    from tqdm import tqdm
    images = torch.as_tensor(images)
    psf = torch.as_tensor(psf_fwhm, dtype=torch.float64)
    out = {}
    for start in tqdm(range(0, len(images), batch), desc="smooth-lens fits", unit="batch", disable=not progress,
                      leave=False):
        result = fit_smooth(images[start:start + batch], pixel_scale,
                            psf[start:start + batch] if psf.dim() else float(psf))
        for key, value in residual_stats(result, pixel_scale).items():
            out.setdefault(key, []).append(value.double().cpu().numpy())
    return {key: np.concatenate(value) for key, value in out.items()}


PSF_GRID = (0.06, 0.087, 0.12, 0.16, 0.2, 0.24, 0.3)  # arcsec: the FWHMs `psf_scan` tries by default


def psf_scan(images, pixel_scale, fwhms=PSF_GRID, batch=32):
    """The Gaussian PSF that fits each image (N, H, W) best: the smooth lens is fitted through each
    FWHM of `fwhms` (arcsec, increasing) and the chi^2 minimum is located by a parabola through
    the best FWHM and its neighbours. Substructure perturbs the ring at the PSF's scale and can
    pull one image's value; the median over images is the robust figure. Returns
    dict(fwhm (N,) numpy, chi2 (N, len(fwhms)) numpy, grid)."""
    images = torch.as_tensor(images)
    grid = np.asarray(fwhms, dtype=np.float64)
    if len(grid) < 3 or np.any(np.diff(grid) <= 0):
        raise ValueError(f"psf_scan needs three or more increasing FWHMs, got {list(fwhms)}")
    chi2 = np.stack([np.concatenate([fit_smooth(images[i:i + batch], pixel_scale, float(f))["chi2"].cpu().numpy()
                                     for i in range(0, len(images), batch)]) for f in grid], 1)
    best = np.empty(len(chi2))
    for n, row in enumerate(chi2):
        j = int(np.clip(row.argmin(), 1, len(grid) - 2))
        a, b, _ = np.polyfit(grid[j - 1:j + 2], row[j - 1:j + 2], 2)
        # a parabola opening downwards, or a minimum outside the bracket: the best grid value
        best[n] = -b / (2 * a) if a > 0 and grid[j - 1] <= -b / (2 * a) <= grid[j + 1] else grid[row.argmin()]
    return dict(fwhm=best, chi2=chi2, grid=grid)
