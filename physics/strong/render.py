"""From a scene (`physics.strong.scenes`) to images: ray shooting, PSF, noise, scaling.

Scene tensors (float64, CPU), B images, C bands, K point masses, J clumps, F field objects:
  lens mass   theta_e, lens_e1, lens_e2, lens_x, lens_y, core, gamma1, gamma2 (B,);
              pm_theta_e, pm_x, pm_y (B, K)
  source      src_flux (B, C); src_r_e, src_n, src_e1, src_e2, src_x, src_y (B,);
              optional clump_frac, clump_sigma, clump_x, clump_y (B, J) (source plane)
  image plane optional ll_* (lens light), ring_*, sp_* (spiral), arc_*, field_* (B, F)
  survey      star_flux (B, S, C), star_x, star_y (B, S) (point sources, added to the pixels);
              depth (B,) (fraction of the 10-year exposure); mask_kind, mask_side, mask_a,
              mask_b, mask_nan (B,) (see `artefact_mask`)
Every image is rendered with the same code; the source is evaluated at beta = theta - alpha
on a grid `supersample` times finer than the pixels, then integrated into pixels.
"""
from __future__ import annotations

import logging
import math

import torch

from physics.strong import light, mass
from physics.strong.instrument import (add_noise, convolve, convolve_separable, gaussian_psf_1d, moffat_psf,
                                       pixel_grid, pixelise)
from physics.strong.survey import survey_bands


def surface_brightness(x, y, s, unroll=False):
    """Surface brightness on the grid (x, y (1, H, W), arcsec).

    Returns the lensed source for unit total flux (B, H, W), the blue look-alike features
    (rings, spiral arms, tidal arcs; B, C, H, W) and the rest of the unlensed light (lens
    galaxy, field objects; B, C, H, W), in flux / arcsec^2. A part whose scene keys are absent
    is None (Model I has no lens light; a group of plain non-lenses has no source)."""
    ax, ay = mass.sie(x, y, s["theta_e"], s["lens_e1"], s["lens_e2"], s["lens_x"], s["lens_y"], s["core"])
    sx, sy = mass.shear(x, y, s["gamma1"], s["gamma2"], s["lens_x"], s["lens_y"])
    ax, ay = ax + sx, ay + sy
    if s["pm_theta_e"].shape[1]:
        px, py = mass.point_masses(x, y, s["pm_theta_e"], s["pm_x"], s["pm_y"], unroll=unroll)
        ax, ay = ax + px, ay + py
    bx, by = x - ax, y - ay  # lens equation
    src = None
    if "src_r_e" in s:
        main = 1.0
        if "clump_frac" in s:
            main = 1 - s["clump_frac"].sum(1)
        src = light.sersic(bx, by, main, s["src_r_e"], s["src_n"], s["src_e1"], s["src_e2"], s["src_x"], s["src_y"])
        if "clump_frac" in s:
            src = src + light.gaussians(bx, by, s["clump_frac"], s["clump_sigma"], s["clump_x"], s["clump_y"])
    if "ll_flux" not in s:
        return src, None, None
    one = torch.ones_like(s["theta_e"])
    features = []  # blue look-alikes of arcs (non-lenses)
    if "ring_flux" in s:
        features.append((light.ring(x, y, one, s["ring_radius"], s["ring_width"], s["ring_e1"], s["ring_e2"],
                                    s["lens_x"], s["lens_y"], s["ring_clump_amp"], s["ring_clump_phase"]), s["ring_flux"]))
    if "sp_flux" in s:
        features.append((light.spiral(x, y, one, s["sp_scale"], s["sp_e1"], s["sp_e2"], s["lens_x"], s["lens_y"],
                                      s["sp_arm_amp"], s["sp_pitch"], s["sp_phase"]), s["sp_flux"]))
    if "arc_flux" in s:
        features.append((light.arc(x, y, one, s["arc_radius"], s["arc_width"], s["arc_angle"], s["arc_half_angle"],
                                   s["arc_x"], s["arc_y"]), s["arc_flux"]))
    feature = sum(shape[:, None] * flux[:, :, None, None] for shape, flux in features) if features else None
    lens_light = light.sersic(x, y, one, s["ll_r_e"], s["ll_n"], s["ll_e1"], s["ll_e2"], s["lens_x"], s["lens_y"])
    rest = lens_light[:, None] * s["ll_flux"][:, :, None, None]
    for j in range(s["field_flux"].shape[1]):
        shape = light.sersic(x, y, one, s["field_r_e"][:, j], s["field_n"][:, j], s["field_e1"][:, j],
                             s["field_e2"][:, j], s["field_x"][:, j], s["field_y"][:, j])
        rest = rest + shape[:, None] * s["field_flux"][:, j, :, None, None]
    return src, feature, rest


# optional light components: the scene keys that belong to each, and the flux key that says
# whether an image has it (a group of images without it skips its evaluation)
COMPONENTS = {"src": (("src_", "clump_"), "src_flux"), "ring": (("ring_",), "ring_flux"),
              "sp": (("sp_",), "sp_flux"), "arc": (("arc_",), "arc_flux")}


class Renderer:
    """Renders scenes of one configuration. dtype float32 (default) or float64; compile=True
    wraps the ray shooting in torch.compile (one fused pass over the pixels; compiling takes
    10-60 s once per image count / subhalo count, worth it from a few thousand images)."""

    def __init__(self, cfg, device="cpu", dtype=torch.float32, compile=False, micro_batch=16):
        self.cfg, self.device, self.dtype = cfg, torch.device(device), dtype
        self.micro_batch = micro_batch
        self.unroll = compile
        if compile:  # torch says once that it found no CUDA runtime for its C++ build; not news on a CPU
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        self._sb = torch.compile(surface_brightness, dynamic=False) if compile else surface_brightness
        self.grids = {}

    def grid(self, size, pixel_scale, supersample):
        key = (size, pixel_scale, supersample)
        if key not in self.grids:
            self.grids[key] = pixel_grid(size, pixel_scale, supersample, self.dtype, self.device)
        return self.grids[key]

    def shoot(self, scene, size, pixel_scale, supersample):
        """Noise-free pixel fluxes before the PSF: source (B, 1, H, W) for unit flux, then
        features and rest (B, C, H, W) or None (see `surface_brightness`). Images are grouped
        by point-mass count and by which light components they have, so an image does not pay
        for another's subhalos or look-alikes, and cut into micro-batches (bounds memory;
        padded to a fixed size when compiled: one compilation per group layout)."""
        x, y = self.grid(size, pixel_scale, supersample)
        n = len(scene["theta_e"])
        layout = [(scene["pm_theta_e"] > 0).sum(1)]
        names = [name for name, (_, flux) in COMPONENTS.items() if flux in scene]
        layout += [scene[COMPONENTS[name][1]].abs().sum(1) > 0 for name in names]
        layout = torch.stack([t.long() for t in layout], 1)
        outs = [None, None, None]
        for key in torch.unique(layout, dim=0):
            rows = torch.nonzero((layout == key).all(1)).flatten()
            n_pm = int(key[0])
            absent = tuple(p for name, on in zip(names, key[1:].tolist()) if not on for p in COMPONENTS[name][0])
            for start in range(0, len(rows), self.micro_batch):
                idx = rows[start:start + self.micro_batch]
                pad = idx
                if self.unroll:  # compiled: pad to a static batch shape
                    pad = torch.cat([idx, idx[-1:].expand(self.micro_batch - len(idx))])
                sub = {k: self._take(v, pad, k, n_pm) for k, v in scene.items() if not k.startswith(absent)}
                parts = self._sb(x, y, sub, self.unroll)
                for i, part in enumerate(parts):
                    if part is None:
                        continue
                    part = part[:, None] if i == 0 else part
                    if outs[i] is None:
                        outs[i] = torch.zeros((n, part.shape[1], size, size), dtype=self.dtype, device=self.device)
                    outs[i][idx] = pixelise(part[:len(idx)], supersample, pixel_scale)
        if outs[0] is None:  # no image has a background source
            outs[0] = torch.zeros((n, 1, size, size), dtype=self.dtype, device=self.device)
        if outs[2] is not None and outs[1] is None:  # no look-alikes in this batch
            outs[1] = torch.zeros_like(outs[2])
        return tuple(outs)

    def _take(self, value, idx, key, n_pm):
        value = value[idx]
        if key.startswith("pm_"):
            value = value[:, :n_pm]
        return value.to(device=self.device, dtype=self.dtype)

    def blur(self, images, scene, fwhm_arcsec, pixel_scale, fwhm_range):
        """Convolve (B, C', H, W) images with each image's PSF in each band: Gaussian (exactly
        separable, convolved as two 1-D passes) or Moffat (FFT); FWHM (B, C) in arcsec, C' a
        multiple of C (stacked parts of the same bands). Kernels reach 2.5 x the widest FWHM
        of the configuration's range, whatever else is in the batch."""
        fwhm_px = torch.as_tensor(fwhm_arcsec).to(device=self.device, dtype=self.dtype) / pixel_scale
        size = int(2 * math.ceil(2.5 * max(fwhm_range) / pixel_scale) + 1)
        repeats = images.shape[1] // fwhm_px.shape[1]
        if self.cfg.psf == "moffat":
            kernels = moffat_psf(fwhm_px, scene["psf_beta"][:, :fwhm_px.shape[1]].to(fwhm_px), size)
            return convolve(images, kernels.repeat(1, repeats, 1, 1))
        return convolve_separable(images, gaussian_psf_1d(fwhm_px, size).repeat(1, repeats, 1))

    def render(self, scene, params, generator, bands=None):
        """Noisy, scaled images for a scene. Returns {"images": (B, C, H, W)} (superres:
        {"hr":..., "lr":...}) and adds magnification and arc_snr columns to `params` (survey
        configs also arc_snr_best, n_saturated, mask_frac and unlensed_to_arc_<band>)."""
        cfg = self.cfg
        if cfg.task == "superres":
            return self._render_superres(scene, params, generator)
        src, feature, rest = self.shoot(scene, cfg.size, cfg.pixel_scale, cfg.supersample)
        magnification = src.sum((1, 2, 3)).double().cpu()  # lensed flux in the stamp / source flux
        has_source = scene["src_flux"].abs().sum(1) > 0
        params["magnification"] = torch.where(has_source, magnification, math.nan)
        if cfg.task == "substructure":  # deeplense-model1, deeplense-common (Poisson counts: sky_counts)
            fwhm = scene["psf_fwhm"][:, None] if "psf_fwhm" in scene \
                else torch.full((len(src), 1), cfg.psf_fwhm[0], dtype=torch.float64)
            blurred = self.blur(src, scene, fwhm, cfg.pixel_scale, cfg.psf_fwhm)
            if "sky_counts" in scene:
                images, snr = self._count_noise(scene, blurred, generator)
            else:
                images, snr = self._model1_noise(scene, blurred, generator, 1.0)
            params["arc_snr"] = snr
            params["psf_fwhm"] = fwhm[:, 0]
            return {"images": _scale(images, cfg.scaling)}
        n_bands = len(cfg.bands)
        blue = src * scene["src_flux"][:, :, None, None].to(src) + feature  # lensed source or look-alike
        # stars are point sources: deposited on the pixels, they take the PSF's shape in the blur
        stars = point_sources(scene["star_flux"], scene["star_x"], scene["star_y"], cfg.size, cfg.pixel_scale)
        rest = rest + stars.to(rest)
        blurred = self.blur(torch.cat([blue, rest], 1), scene, scene["psf_fwhm"], cfg.pixel_scale, cfg.psf_fwhm)
        blue, rest = blurred[:, :n_bands], blurred[:, n_bands:]
        images, variance = self._survey_noise(blue + rest, scene["depth"], generator)
        level = saturation_level(survey_bands(cfg), cfg.pixel_scale).to(images)[None, :, None, None]
        params["n_saturated"] = ((blue + rest) > level).any(1).sum((1, 2)).double().cpu()
        images = torch.minimum(images, level)  # a saturated star's core is flat
        mask = artefact_mask(scene, cfg.size).to(images.device)  # (B, 1, H, W)
        params["mask_frac"] = mask.double().mean((1, 2, 3)).cpu()
        # the cut sees what survives the mask: a chip edge across an arc hides that part
        visible = blue * ~mask
        snr = torch.stack([_arc_snr(visible[:, c], variance[:, c]) for c in range(n_bands)], 1)
        params["arc_snr"] = snr[:, cfg.bands.index("i")] if "i" in cfg.bands else snr.max(1).values
        params["arc_snr_best"] = snr.max(1).values
        ratio = unlensed_to_arc(blue, rest, scene, cfg.size, cfg.pixel_scale)
        for c, b in enumerate(cfg.bands):
            params[f"unlensed_to_arc_{b}"] = ratio[:, c]
        fill = torch.where(scene["mask_nan"].to(images.device)[:, None, None, None] > 0, math.nan, 0.0).to(images)
        images = torch.where(mask, fill, images)
        band_idx = [cfg.bands.index(b) for b in (bands or cfg.bands)]
        return {"images": _scale(images[:, band_idx], cfg.scaling)}

    def _survey_noise(self, flux, depth, generator):
        """Noisy flux and per-pixel variance (flux^2) with each band's sky, read noise and
        depth: the 10-year exposure (and number of visits) times `depth` (B,) per image."""
        bands = survey_bands(self.cfg)
        scale = depth.to(torch.float64)[:, None]  # (B, 1)
        gain = torch.tensor([b.electrons_per_flux() for b in bands], dtype=torch.float64) * scale
        sky = torch.tensor([b.sky_electrons(self.cfg.pixel_scale) for b in bands], dtype=torch.float64) * scale
        read_var = torch.tensor([b.read_noise ** 2 * b.n_exposures for b in bands], dtype=torch.float64) * scale
        g = gain.to(flux)[:, :, None, None]
        electrons = flux * g
        noisy = add_noise(electrons, sky, read_var, generator) / g
        background = (sky + read_var).to(flux)[:, :, None, None]
        variance = (electrons.clamp(min=0) + background) / g ** 2
        return noisy, variance

    def _model1_noise(self, scene, img, generator, noise_factor):
        """Model I photometry for PSF-convolved images (B, 1, H, W): the lensed source's
        brightest pixel holds 5e4 electrons and the background sigma is peak / peak_snr
        (x noise_factor), plus Poisson noise of the source. Returns noisy images in electrons
        and the arc S/N."""
        peak = img.amax((1, 2, 3), keepdim=True)
        electrons = img / peak * 5e4
        sigma_bg = 5e4 / scene["peak_snr"].to(img) * noise_factor  # (B,)
        noisy = add_noise(electrons, 0.0, (sigma_bg ** 2)[:, None], generator)
        snr = _arc_snr(electrons[:, 0], electrons[:, 0].clamp(min=0) + sigma_bg[:, None, None] ** 2)
        return noisy, snr

    def _count_noise(self, scene, img, generator):
        """deeplense-common photometry for PSF-convolved images (B, 1, H, W): the lensed source's
        brightest pixel holds peak_counts above a sky of sky_counts per pixel (B,), and every
        pixel is a whole Poisson count, as in the public set (its min-max scaled pixels are
        k / (max - min)). Returns the counts in float64 (scaled exactly) and the arc S/N."""
        peak = scene["peak_counts"].to(img.device)[:, None, None, None]
        source = (img / img.amax((1, 2, 3), keepdim=True)).double() * peak
        sky = scene["sky_counts"].to(source)[:, None]  # (B, 1)
        counts = torch.round(add_noise(source, sky, 0.0, generator) + sky[:, :, None, None]).clamp(min=0)
        # float32 sums, as Model I's: the ray shooting differs in the last bit of ~1e-6 of the pixels with
        # the thread count; the rounded counts and float32 sums hide that, float64 sums would not
        snr = _arc_snr(source[:, 0].float(), (source[:, 0] + sky[:, :, None]).float())
        return counts, snr

    def _render_superres(self, scene, params, generator):
        cfg, lr = self.cfg, self.cfg.lr
        # one fine grid serves both: HR pixels are supersample x supersample sub-pixels, LR twice that
        ratio = round(lr["pixel_scale"] / cfg.pixel_scale)
        src_hr = self.shoot(scene, cfg.size, cfg.pixel_scale, cfg.supersample)[0]
        # the LR pixels integrate the same sub-pixels: each is the sum of ratio x ratio HR pixels
        src_lr = torch.nn.functional.avg_pool2d(src_hr, ratio) * ratio ** 2
        params["magnification"] = src_hr.sum((1, 2, 3)).double().cpu()
        n = len(src_hr)
        fwhm_hr = torch.full((n, 1), cfg.psf_fwhm[0], dtype=torch.float64)
        fwhm_lr = scene["psf_fwhm_lr"][:, None]
        hr, snr_hr = self._model1_noise(scene, self.blur(src_hr, scene, fwhm_hr, cfg.pixel_scale, cfg.psf_fwhm),
                                        generator, 1.0)
        lr_img, snr_lr = self._model1_noise(scene, self.blur(src_lr, scene, fwhm_lr, lr["pixel_scale"], lr["psf_fwhm"]),
                                            generator, lr["noise_factor"])
        params.update(arc_snr=snr_hr, arc_snr_lr=snr_lr, psf_fwhm=fwhm_hr[:, 0], psf_fwhm_lr=fwhm_lr[:, 0])
        return {"hr": _scale(hr, cfg.scaling), "lr": _scale(lr_img, cfg.scaling)}


FULL_WELL = 1.0e5  # electrons a pixel holds in one visit (LSST CCDs: ~1e5)


def saturation_level(bands, pixel_scale):
    """(C,) flux per pixel (zero point 27) at which a pixel saturates in a single visit, less
    the sky it already holds; a stack of visits saturates where each visit does."""
    return torch.tensor([(FULL_WELL - b.sky_electrons(pixel_scale) / b.n_exposures)
                         / (b.electrons_per_flux() / b.n_exposures) for b in bands], dtype=torch.float64)


def point_sources(flux, x, y, size, pixel_scale):
    """(B, C, H, W) pixel fluxes of point sources, flux (B, S, C) at x, y (B, S) arcsec, shared
    bilinearly between the four nearest pixels, which keeps flux and centroid exactly. Convolved
    with the PSF this is the PSF at that position, broadened by f (1 - f) px^2 of variance per
    axis (f the sub-pixel offset; mean 1/6, against the 1/12 that pixelising gives extended
    light): at 0.6" seeing on 0.2" pixels stars come out 2% wider than the galaxies' PSF on
    average, 5% at worst."""
    b, n_src, c = flux.shape
    out = torch.zeros(b, c, size * size, dtype=torch.float64)
    col = x / pixel_scale + (size - 1) / 2  # fractional pixel index, x along columns
    row = y / pixel_scale + (size - 1) / 2
    c0, r0 = torch.floor(col), torch.floor(row)
    for dc, dr in ((0, 0), (1, 0), (0, 1), (1, 1)):
        cc, rr = c0 + dc, r0 + dr
        weight = (1 - (col - cc).abs()) * (1 - (row - rr).abs())  # (B, S)
        inside = (cc >= 0) & (cc < size) & (rr >= 0) & (rr < size)
        index = (rr.clamp(0, size - 1) * size + cc.clamp(0, size - 1)).long()  # (B, S)
        contrib = flux * (weight * inside)[..., None]  # (B, S, C)
        out.scatter_add_(2, index[:, None, :].expand(b, c, n_src), contrib.transpose(1, 2))
    return out.reshape(b, c, size, size)


def artefact_mask(scene, size):
    """(B, 1, H, W) bool, True where a pixel has no data (see `scenes._survey_nuisances`):
    kind 1 an edge strip of width a on side 0-3 (left, right, bottom, top), kind 2 a corner
    region a wide from that side and b from the next (left-bottom, right-top, bottom-right,
    top-left), kind 3 b bad columns from column a."""
    idx = torch.arange(size, dtype=torch.float64)
    row, col = idx[:, None].expand(size, size), idx[None, :].expand(size, size)
    from_side = torch.stack([col, size - 1 - col, row, size - 1 - row])  # (4, H, W): distance to each edge
    side = scene["mask_side"].long()
    near = from_side[side]                                       # (B, H, W)
    other = from_side[torch.tensor([2, 3, 1, 0])[side]]         # the perpendicular edge of that corner
    a, b = scene["mask_a"][:, None, None], scene["mask_b"][:, None, None]
    kind = scene["mask_kind"].long()[:, None, None]
    mask = ((kind == 1) & (near < a)) | ((kind == 2) & (near < a) & (other < b)) \
        | ((kind == 3) & (col >= a) & (col < a + b))
    return mask[:, None]


def unlensed_to_arc(arc, unlensed, scene, size, pixel_scale, half_width=0.4):
    """(B, C) the unlensed light (deflector, neighbours, stars) per unit of arc light where the
    arc is, within half_width arcsec of the Einstein radius, seeing included: sum(arc x
    unlensed) / sum(arc^2) over that annulus. Below 1 the arc outshines what lies on it. NaN for
    images without lensed light (non-lenses)."""
    x, y = pixel_grid(size, pixel_scale, 1, arc.dtype, arc.device)
    r = torch.hypot(x - scene["lens_x"].to(arc)[:, None, None], y - scene["lens_y"].to(arc)[:, None, None])
    annulus = ((r - scene["theta_e"].to(arc)[:, None, None]).abs() < half_width)[:, None]  # (B, 1, H, W)
    a = arc * annulus
    num, den = (a * unlensed).sum((2, 3)).double().cpu(), (a * a).sum((2, 3)).double().cpu()
    lensed = (scene["theta_e"] > 0)[:, None] & (den > 0)
    return torch.where(lensed, num / den.clamp(min=1e-30), math.nan)


def _arc_snr(signal, variance):
    """S/N of the lensed light (or of a non-lens's look-alike feature): sum of signal over pixels where it exceeds 1 sigma of the
    total noise, over the root of their summed variance. (B, H, W) -> (B,) float64 CPU."""
    mask = signal > variance.sqrt()
    s = (signal * mask).sum((1, 2))
    v = (variance * mask).sum((1, 2))
    return torch.where(v > 0, s / v.clamp(min=1e-30).sqrt(), torch.zeros_like(s)).double().cpu()


def _scale(images, scaling):
    """minmax: each image to [0, 1]; minmax-channel: each channel; flux: unchanged."""
    if scaling == "flux":
        return images
    dims = (1, 2, 3) if scaling == "minmax" else (2, 3)
    lo, hi = images.amin(dims, keepdim=True), images.amax(dims, keepdim=True)
    return (images - lo) / (hi - lo).clamp(min=1e-30)
