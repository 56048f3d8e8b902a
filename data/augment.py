"""Image normalisation and augmentation on batch tensors, on the device (hlb-CIFAR10 style).

Lensing images have no preferred orientation, so the 8 symmetries of the square (the dihedral
group D4: 4 rotations, each with or without a flip) are exact augmentations and test-time
augmentations. All functions take and return (B, C, H, W) float tensors.
"""
from __future__ import annotations

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
    if mode == "standardize":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / std.clamp_min(1e-8)
    if mode == "band":
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True)
        return (x - mean) / std.clamp_min(1e-8)
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


def random_d4(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of the batch under its own random symmetry (8 grouped calls, not B)."""
    ks = torch.randint(0, 8, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for k in range(8):
        sel = (ks == k).nonzero().flatten().to(x.device)
        if len(sel):
            out[sel] = d4(x[sel], k)
    return out


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image moved by up to +-max_shift pixels per axis, edges filled with zeros (the mean
    of a standardised image), not wrapped, so no flux comes in from the other side."""
    if max_shift <= 0:
        return x
    B, C, H, W = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (B, 2), generator=generator).to(x.device)
    rows = (torch.arange(H, device=x.device)[None] - shifts[:, :1])  # (B, H) source row of each output row
    cols = (torch.arange(W, device=x.device)[None] - shifts[:, 1:])
    valid = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
    rows, cols = rows.clamp(0, H - 1), cols.clamp(0, W - 1)
    batch = torch.arange(B, device=x.device)[:, None, None]
    out = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return out * valid[:, None].to(x.dtype)


def add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise of up to `sigma` (drawn uniformly per image), in units of the normalised image."""
    if sigma <= 0:
        return x
    level = sigma * torch.rand(x.shape[0], 1, 1, 1, generator=generator).to(x.device)
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    return x + level * noise
