"""Image normalisation and augmentation on batch tensors, on the device (hlb-CIFAR10 style).

Lensing images have no preferred orientation, so the 8 symmetries of the square (the dihedral
group D4: 4 rotations, each with or without a flip) are exact augmentations and test-time
augmentations. All functions take and return (B, C, H, W) float tensors.
"""
from __future__ import annotations

import functools

import torch

NORMS = ("standardize", "band", "asinh", "none")


def normalize(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-image normalisation, identical in training and prediction.

    standardize: (x - mean) / std over all bands and pixels of an image (the seed's);
    band:        the same per band (colours are lost, band shapes kept);
    asinh:       asinh(x / (3 sigma_b)) per band, sigma_b the band's robust noise (1.4826 MAD),
                 which keeps faint arcs and bright cores both in range (Lupton et al. 2004 stretch);
    none:        as stored (e.g. already min-max scaled DeepLense images).
    """
    if mode == "none":
        return x
    if mode in ("standardize", "band"):
        # two passes (mean, then the mean square of the residual): exact like torch.std, and
        # ~5x faster on a CPU than torch.var_mean's single-pass kernel
        B, C = x.shape[:2]
        flat = x.reshape(B, -1) if mode == "standardize" else x.reshape(B * C, -1)
        d = flat - flat.mean(dim=1, keepdim=True)
        var = (d * d).sum(dim=1, keepdim=True) / max(flat.shape[1] - 1, 1)
        return d.mul_(var.sqrt().clamp_min(1e-8).reciprocal_()).view_as(x)
    if mode == "asinh":
        flat = x.flatten(2)
        med = flat.median(dim=2, keepdim=True).values
        sigma = 1.4826 * (flat - med).abs().median(dim=2, keepdim=True).values
        scale = (3 * sigma).clamp_min(1e-8 * flat.abs().amax(dim=2, keepdim=True).clamp_min(1e-30))
        return torch.asinh((flat - med) / scale).view_as(x)
    raise ValueError(f"unknown normalisation {mode!r}; choose from {', '.join(NORMS)}")


def d4(x: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry k in 0..7 of the square: rotation by 90 deg x (k % 4), then a left-right flip if k >= 4."""
    y = torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


def tta_transforms(n: int) -> tuple:
    """Test-time symmetries: 1 identity; 3 identity, left-right flip, up-down flip (the seed's); 8 all of D4."""
    return {1: (0,), 3: (0, 4, 6), 8: tuple(range(8))}[n]


@functools.lru_cache(maxsize=8)
def _d4_tables(H: int, W: int) -> torch.Tensor:
    """(8, H, W) int64: for symmetry k, the flat input index each output pixel takes."""
    grid = torch.arange(H * W).view(1, 1, H, W)
    return torch.cat([d4(grid, k) for k in range(8)]).view(8, H, W)


def random_geometry(x: torch.Tensor, symmetries: bool = True, max_shift: int = 0,
                    generator: torch.Generator | None = None, return_transforms: bool = False):
    """Each image under its own random D4 symmetry and shift of up to +-max_shift pixels per
    axis, as ONE gather of pixels (B index maps of H x W), so the cost does not grow with the
    number of transforms. Shifted-in edges are zeros (the mean of a standardised image), not
    wrapped, so no flux comes in from the other side. With `return_transforms`, also the
    symmetry (B,) and the shift (B, 2) (rows, columns) of each image (see `transform_lens_params`)."""
    B, C, H, W = x.shape
    if not symmetries and max_shift <= 0:
        return (x, torch.zeros(B, dtype=torch.long), torch.zeros(B, 2, dtype=torch.long)) if return_transforms else x
    if symmetries and H != W:
        raise ValueError(f"the 8 symmetries of the square need square images, not {H}x{W}")
    ks = torch.randint(0, 8, (B,), generator=generator) if symmetries else torch.zeros(B, dtype=torch.long)
    shifts = torch.randint(-max_shift, max_shift + 1, (B, 2), generator=generator) if max_shift > 0 \
        else torch.zeros(B, 2, dtype=torch.long)
    rows = torch.arange(H)[None] - shifts[:, :1]  # (B, H): row of the symmetric image each output row shows
    cols = torch.arange(W)[None] - shifts[:, 1:]
    valid = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]  # (B, H, W)
    table = _d4_tables(H, W)[ks[:, None, None], rows.clamp(0, H - 1)[:, :, None], cols.clamp(0, W - 1)[:, None, :]]
    index = table.view(B, 1, H * W).expand(B, C, H * W).to(x.device)
    out = torch.gather(x.reshape(B, C, H * W), 2, index).view(B, C, H, W)
    if max_shift > 0:
        out = out * valid[:, None].to(device=x.device, dtype=x.dtype)
    return (out, ks, shifts) if return_transforms else out


def transform_lens_params(params: torch.Tensor, ks: torch.Tensor, shifts: torch.Tensor,
                          pixel_scale: float) -> torch.Tensor:
    """Lens parameters (B, 7): theta_e, e1, e2, gamma1, gamma2, centre x, centre y (arcsec, the
    simulator's frame: x along columns, y along rows) of images transformed by `d4(., k)` and then
    shifted by (rows, columns) pixels, as `random_geometry` does. rot90 maps (x, y) to (y, -x), a
    clockwise quarter turn, so the spin-2 (e1, e2) and (gamma1, gamma2) change sign; the
    left-right flip maps x to -x and negates e2 and gamma2; theta_e is invariant."""
    p = params.clone()
    ks, shifts = ks.to(p.device), shifts.to(device=p.device, dtype=p.dtype)
    for _ in range(3):  # rotations: k % 4 quarter turns, applied one by one to the rows that need them
        turn = (ks % 4) > _
        cx, cy = p[:, 5].clone(), p[:, 6].clone()
        p[:, 5], p[:, 6] = torch.where(turn, cy, cx), torch.where(turn, -cx, cy)
        p[:, 1:5] = torch.where(turn[:, None], -p[:, 1:5], p[:, 1:5])
    flip = ks >= 4
    for col in (2, 4, 5):
        p[:, col] = torch.where(flip, -p[:, col], p[:, col])
    p[:, 5] += shifts[:, 1] * pixel_scale
    p[:, 6] += shifts[:, 0] * pixel_scale
    return p


def apply_d4(x: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Image i under symmetry ks[i] (e.g. the HR image of a pair under its LR image's symmetry)."""
    out = torch.empty_like(x)
    ks = ks.to(x.device)
    for k in torch.unique(ks).tolist():
        rows = ks == k
        out[rows] = d4(x[rows], k)
    return out


def random_d4(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of the batch under its own random symmetry of the square."""
    return random_geometry(x, True, 0, generator)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image moved by up to +-max_shift pixels per axis, edges filled with zeros."""
    return random_geometry(x, False, max_shift, generator)


def add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise of up to `sigma` (drawn uniformly per image), in units of the normalised image."""
    if sigma <= 0:
        return x
    level = sigma * torch.rand(x.shape[0], 1, 1, 1, generator=generator).to(x.device)
    return x.add_(torch.randn(x.shape, generator=generator).to(x.device).mul_(level))
