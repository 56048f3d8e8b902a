"""The instrument: PSFs, pixel integration, photometric zero points and noise.

Images move through the pipeline as (B, C, H, W) tensors, C = bands. Light is rendered as
surface brightness (flux / arcsec^2) on a grid `supersample` times finer than the pixels,
integrated into pixels (`pixelise`, flux per pixel), convolved with each image's and band's
PSF (`convolve`), converted to electrons for an exposure (`Band`), given sky, Poisson and
read noise (`add_noise`), and converted back to calibrated flux.
Fluxes are in units where magnitude = zero_point - 2.5 log10(flux) (AB); the writers record
the zero point (27.0 by default, as in HSC coadds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))
OUTPUT_ZERO_POINT = 27.0


@dataclass(frozen=True)
class Band:
    """One filter of a survey. zero_point: AB magnitude giving 1 electron/s; sky: sky
    brightness in mag / arcsec^2; exposure_s: total (coadded) exposure; read_noise:
    electrons per exposure, n_exposures of them."""
    name: str
    zero_point: float
    sky: float
    exposure_s: float
    read_noise: float = 9.0
    n_exposures: int = 1

    def electrons_per_flux(self, zero_point=OUTPUT_ZERO_POINT):
        """Electrons collected in the exposure per unit of flux (on the `zero_point` scale)."""
        return 10 ** (0.4 * (self.zero_point - zero_point)) * self.exposure_s

    def sky_electrons(self, pixel_scale):
        """Sky electrons per pixel of pixel_scale arcsec in the exposure."""
        return 10 ** (-0.4 * (self.sky - self.zero_point)) * pixel_scale ** 2 * self.exposure_s


# LSST 10-year coadd depths (LSST Science Book / SMTN-002 zero points and dark sky; 30 s visits).
LSST_BANDS = {
    "g": Band("g", 28.51, 22.26, 30 * 80, 8.8, 80),
    "r": Band("r", 28.36, 21.20, 30 * 184, 8.8, 184),
    "i": Band("i", 28.17, 20.48, 30 * 184, 8.8, 184),
    "z": Band("z", 27.78, 19.60, 30 * 160, 8.8, 160),
    "y": Band("y", 26.82, 18.61, 30 * 160, 8.8, 160),
}


def magnitude_to_flux(mag, zero_point=OUTPUT_ZERO_POINT):
    return 10 ** (-0.4 * (torch.as_tensor(mag) - zero_point))


def pixel_grid(size, pixel_scale, supersample=1, dtype=torch.float32, device=None):
    """Sub-pixel centre coordinates (x, y), each (1, size*ss, size*ss), arcsec, origin at the
    image centre, x along columns, y along rows (row 0 at the bottom when shown with
    origin='lower')."""
    n = size * supersample
    step = pixel_scale / supersample
    axis = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * step
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return x[None].to(dtype=dtype, device=device), y[None].to(dtype=dtype, device=device)


def pixelise(surface_brightness, supersample, pixel_scale):
    """(B, C, H*ss, W*ss) surface brightness -> (B, C, H, W) flux per pixel."""
    if supersample > 1:
        surface_brightness = F.avg_pool2d(surface_brightness, supersample)
    return surface_brightness * pixel_scale ** 2


def gaussian_psf(fwhm_px, size):
    """(B, C, size, size) normalised Gaussian kernels for FWHM in pixels (B, C)."""
    sigma = _expand(fwhm_px) / FWHM_PER_SIGMA
    kernel = torch.exp(-_radius2(size, sigma) / (2 * sigma * sigma))
    return _integrate(kernel)


def gaussian_psf_1d(fwhm_px, size):
    """(B, C, size) pixel-integrated 1-D Gaussian profiles with sum 1. The 2-D kernel of
    `gaussian_psf` is exactly their outer product, so `convolve_separable` with these equals
    `convolve` with it, at a fraction of the cost."""
    sigma = torch.as_tensor(fwhm_px)[..., None, None] / FWHM_PER_SIGMA
    sub = 5
    offsets = (torch.arange(sub, dtype=sigma.dtype, device=sigma.device) - (sub - 1) / 2) / sub
    axis = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - (size - 1) / 2
    fine = axis[:, None] + offsets[None, :]  # (size, sub)
    profile = torch.exp(-fine * fine / (2 * sigma * sigma)).mean(-1)
    return profile / profile.sum(-1, keepdim=True)


def convolve_separable(images, profiles):
    """Convolve each image and band with the outer product of its 1-D profile (B, C, k), k odd,
    along rows then columns; zero padding, like `convolve`."""
    b, c, h, w = images.shape
    k = profiles.shape[-1]
    weight = profiles.flip(-1).to(images.dtype).reshape(b * c, 1, k, 1)
    out = F.conv2d(images.reshape(1, b * c, h, w), weight, padding=(k // 2, 0), groups=b * c)
    out = F.conv2d(out, weight.reshape(b * c, 1, 1, k), padding=(0, k // 2), groups=b * c)
    return out.reshape(b, c, h, w)


def moffat_psf(fwhm_px, beta, size):
    """(B, C, size, size) normalised Moffat kernels, (1 + r^2/alpha^2)^-beta, FWHM in pixels."""
    fwhm = _expand(fwhm_px)
    beta = _expand(torch.as_tensor(beta).to(fwhm))
    alpha = fwhm / (2 * torch.sqrt(2 ** (1 / beta) - 1))
    kernel = (1 + _radius2(size, fwhm) / (alpha * alpha)) ** (-beta)
    return _integrate(kernel)


def _expand(t):
    t = torch.as_tensor(t)
    return t.reshape(t.shape + (1, 1, 1, 1))


def _radius2(size, like):
    """Squared distance from the kernel centre on 5x5 sub-pixels per pixel, shaped
    (size, 5, size, 5), so a PSF narrower than a pixel is integrated over the pixel rather
    than sampled at its centre."""
    sub = 5
    offsets = (torch.arange(sub, dtype=like.dtype, device=like.device) - (sub - 1) / 2) / sub
    axis = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    fine = (axis[:, None] + offsets[None, :]).reshape(-1)
    yy, xx = torch.meshgrid(fine, fine, indexing="ij")
    return (xx * xx + yy * yy).reshape(size, sub, size, sub)


def _integrate(kernel_fine):
    """(..., size, 5, size, 5) sub-pixel values -> (..., size, size) kernel with sum 1."""
    kernel = kernel_fine.mean((-3, -1))
    return kernel / kernel.sum((-2, -1), keepdim=True)


def convolve(images, kernels):
    """Convolve each image and band with its own kernel by FFT. images (B, C, H, W), kernels
    (B, C, k, k) with k odd and sum 1. Equal to a zero-padded linear convolution: flux that
    the PSF spreads beyond the stamp is lost, as on a real cutout."""
    h, w = images.shape[-2:]
    k = kernels.shape[-1]
    shape = (_fft_size(h + k - 1), _fft_size(w + k - 1))
    if len(kernels) > 1 and bool((kernels == kernels[:1]).all()):
        kernels = kernels[:1]  # one PSF for the whole batch (Model I): transform it once
    spectrum = torch.fft.rfft2(images, s=shape) * torch.fft.rfft2(kernels.to(images.dtype), s=shape)
    full = torch.fft.irfft2(spectrum, s=shape)
    return full[..., k // 2:k // 2 + h, k // 2:k // 2 + w]


def _fft_size(n):
    """The smallest 2^a 3^b 5^c >= n (FFTs of such sizes are fast; padding is zeros anyway)."""
    best = 1 << (n - 1).bit_length()
    f5 = 1
    while f5 < best:
        f35 = f5
        while f35 < best:
            size = f35
            while size < n:
                size *= 2
            best = min(best, size)
            f35 *= 3
        f5 *= 5
    return best


POISSON_EXACT_BELOW = 100.0  # electrons: below, Poisson deviates are drawn exactly ...
READ_VARIANCE_HIDES_SHAPE = 100.0  # ... unless read noise of this variance (e-^2) or more hides their shape


def add_noise(electrons, sky_electrons, read_noise_var, generator):
    """Noisy, sky-subtracted electrons for noise-free source electrons (B, C, H, W): Poisson
    noise of source + sky plus Gaussian read noise of variance read_noise_var ((B, C) or a
    number). Where the expected count is >= 100 e-, or the read noise variance is >= 100 e-^2,
    the sum is drawn as one normal deviate with mean lambda and variance lambda + read variance
    (the skewness it drops is below 0.04); elsewhere the Poisson count is drawn exactly.
    Random numbers come from `generator`, on its own device, so a seed gives the same noise on
    a given device whatever the batch split."""
    sky = _bc(sky_electrons, electrons)
    lam = (electrons + sky).clamp(min=0)
    gdev = generator.device
    lam_g = lam.to(gdev)
    read_var = _bc(read_noise_var, lam_g).expand_as(lam_g)
    counts = lam_g + torch.randn(lam_g.shape, generator=generator, device=gdev, dtype=lam_g.dtype) \
        * (lam_g + read_var).sqrt()
    exact = (lam_g < POISSON_EXACT_BELOW) & (read_var < READ_VARIANCE_HIDES_SHAPE)
    if exact.any():
        read = torch.randn(lam_g.shape, generator=generator, device=gdev, dtype=lam_g.dtype) * read_var.sqrt()
        counts = torch.where(exact, torch.poisson(lam_g * exact, generator=generator) + read, counts)
    return counts.to(electrons.device) - sky


def _shape(value, like):
    t = torch.as_tensor(value)
    return t.shape + (1,) * (like.dim() - t.dim()) if t.dim() else ()


def _bc(value, like):
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.reshape(_shape(t, like))
