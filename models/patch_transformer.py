"""A patched causal transformer for light curves: the fast classifier.

Input (B, T, 4) → patches of `patch_size` steps embedded by one linear map → a causal
depthwise conv over patches (local order, no absolute position: the time in the season must
not be a feature) → `n_layers` pre-norm transformer blocks with causal self-attention
(F.scaled_dot_product_attention, flash kernels on GPU) → attention pooling over patches with
observed epochs → hierarchical heads. Patch j depends on input steps < (j + 1) · patch_size only,
so it is causal at the resolution of one patch.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from data.lightcurves import MASK_CHANNEL
from models import register
from models.layers import AttentionPooling, ClassifierHead, MaskedMeanPooling


class CausalBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, mlp_ratio: int = 2):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)  # (a key bias has zero gradient)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        # x (B, N, D)
        B, N, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, N, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        # no dropout on the attention weights: it forces the unfused kernel and cost a third of
        # the CPU step time; the residual branches keep their dropout
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, N, D)))
        return x + self.drop(self.mlp(self.norm2(x)))


@register("patch_transformer")
class PatchCausalTransformer(nn.Module):
    def __init__(self, in_channels: int = 4, d_model: int = 64, n_layers: int = 4, dropout: float = 0.3,
                 window_size: int = 5, attention_pooling: bool = True, hierarchical: bool = True,
                 use_aux_head: bool = True, n_classes: int = 3, patch_size: int = 16, n_heads: int = 4):
        super().__init__()
        self.causal_stride = patch_size
        self.patch_size = patch_size
        self.embed = nn.Linear(in_channels * patch_size, d_model)
        self.local = nn.Conv1d(d_model, d_model, window_size, groups=d_model)
        self.left_pad = window_size - 1
        self.blocks = nn.ModuleList(CausalBlock(d_model, n_heads, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.pool = AttentionPooling(d_model, n_heads, dropout) if attention_pooling else MaskedMeanPooling()
        self.head = ClassifierHead(d_model, dropout, hierarchical, use_aux_head, n_classes)

    def patchify(self, x):
        # x (B, T, C) → (B, N, P·C), zero-padded at the end to a whole number of patches
        B, T, C = x.shape
        pad = (-T) % self.patch_size
        x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(B, -1, self.patch_size * C)

    def encode(self, x):
        # x (B, T, C) → (B, N, D), N = ceil(T / patch_size)
        h = self.embed(self.patchify(x))
        h = h + self.local(F.pad(h.transpose(1, 2), (self.left_pad, 0))).transpose(1, 2)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def forward(self, x):
        B, T, _ = x.shape
        mask = x[..., MASK_CHANNEL] > 0.5
        patch_mask = F.pad(mask, (0, (-T) % self.patch_size)).reshape(B, -1, self.patch_size).any(-1)
        return self.head(self.pool(self.encode(x), patch_mask))
