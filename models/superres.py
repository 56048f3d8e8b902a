"""Super-resolution models: low-resolution (B, C, h, w) → {"sr": (B, C, f*h, f*w)}, same units.

    bicubic   no parameters: the baseline every figure is quoted against (never trained)
    edsr      a residual CNN (Lim et al. 2017, EDSR): residual blocks without batch norm, scaled
              residuals, pixel-shuffle upsampling, learning the correction to bicubic
    mae_sr    the MAE's ViT encoder (models/mae.py) on the bicubic image at the HR size (standardised
              per image, as the MAE saw its images), a linear
              map of each patch token to that patch's pixels and a small CNN: also a correction to
              bicubic, initialised from a pretrained MAE with train.py --init-from

All three take the input as the task normalises it (tasks/superres.py: the LR image's own
min-max range) and return the output in the same units.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register


def bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


@register("bicubic", kind="image_pair")
class Bicubic(nn.Module):
    def __init__(self, scale: int = 2):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return {"sr": bicubic(x, self.scale)}


class ResidualBlock(nn.Module):
    def __init__(self, n_features: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_features, n_features, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(n_features, n_features, 3, padding=1))
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.res_scale * self.body(x)


def upsampler(n_features: int, scale: int) -> nn.Sequential:
    """Pixel shuffle by `scale`: steps of 2 for powers of two, one step otherwise (3, 5, ...)."""
    layers, s = [], scale
    while s > 1:
        step = 2 if s % 2 == 0 else s
        layers += [nn.Conv2d(n_features, n_features * step * step, 3, padding=1), nn.PixelShuffle(step)]
        s //= step
    return nn.Sequential(*layers)


@register("edsr", kind="image_pair")
class EDSR(nn.Module):
    def __init__(self, in_chans: int = 1, scale: int = 2, n_features: int = 64, n_blocks: int = 8,
                 res_scale: float = 0.1):
        super().__init__()
        self.scale = scale
        self.head = nn.Conv2d(in_chans, n_features, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(n_features, res_scale) for _ in range(n_blocks)],
                                  nn.Conv2d(n_features, n_features, 3, padding=1))
        self.tail = nn.Sequential(upsampler(n_features, scale), nn.Conv2d(n_features, in_chans, 3, padding=1))

    def forward(self, x):
        # x (B, C, h, w) → (B, C, f h, f w)
        h = self.head(x)
        return {"sr": bicubic(x, self.scale) + self.tail(h + self.body(h))}


@register("mae_sr", kind="image_pair")
class MAESuperResolution(nn.Module):
    def __init__(self, in_chans: int, scale: int, image_size: int, patch_size: int, embed_dim: int, depth: int,
                 num_heads: int, n_features: int = 32):
        super().__init__()
        from models.mae import vit_encoder
        self.scale, self.image_size, self.patch_size = scale, image_size, patch_size
        self.encoder = vit_encoder(in_chans, image_size, patch_size, embed_dim, depth, num_heads)
        self.to_pixels = nn.Linear(embed_dim, patch_size * patch_size * n_features)
        self.refine = nn.Sequential(nn.Conv2d(n_features + in_chans, n_features, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(n_features, in_chans, 3, padding=1))
        self.n_features = n_features

    def forward(self, x):
        from models.mae import _resize, unpatchify
        up = bicubic(x, self.scale)  # (B, C, H, W)
        H = up.shape[-1]
        # the encoder sees the image as the MAE did: standardised per image (tasks/images.py "standardize")
        enc_in = _resize(up, self.image_size)
        flat = enc_in.flatten(1)
        enc_in = (enc_in - flat.mean(1).view(-1, 1, 1, 1)) / flat.std(1).clamp_min(1e-8).view(-1, 1, 1, 1)
        tokens = self.encoder.forward_features(enc_in)[:, 1:]  # (B, L, D)
        feats = unpatchify(self.to_pixels(tokens), self.patch_size, self.n_features)  # (B, F, S, S)
        feats = _resize(feats, H)
        return {"sr": up + self.refine(torch.cat([feats, up], 1))}
