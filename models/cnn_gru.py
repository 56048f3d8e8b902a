"""The thesis CNN-GRU light-curve classifier (seed 004, v4), causal end to end.

Input (B, T, 4) features (data/lightcurves.py) → Linear(4 → d) → two causal depthwise-separable
conv blocks (kernel `window_size`, dilation 1 then 2; residual added around each block) → stacked
GRU → LayerNorm(GRU + conv residual) → attention (or masked mean) pooling over observed steps →
hierarchical heads → log-probabilities (B, 3). Hidden state t depends on inputs ≤ t only.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from data.lightcurves import MASK_CHANNEL
from models import register
from models.layers import AttentionPooling, ClassifierHead, MaskedMeanPooling


class CausalSeparableConv(nn.Module):
    """Depthwise causal conv (left padding only) + pointwise conv; x (B, D, T) → (B, D, T)."""

    def __init__(self, d_model: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, dilation=dilation, groups=d_model)
        self.pointwise = nn.Conv1d(d_model, d_model, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        h = self.depthwise(F.pad(x, (self.left_pad, 0)))
        return x + self.dropout(self.pointwise(F.silu(h)))


@register("cnn_gru")
class CNNGRUClassifier(nn.Module):
    causal_stride = 1  # output step t sees input steps ≤ t

    def __init__(self, in_channels: int = 4, d_model: int = 64, n_layers: int = 4, dropout: float = 0.3,
                 window_size: int = 5, attention_pooling: bool = True, hierarchical: bool = True,
                 use_aux_head: bool = True, n_classes: int = 3):
        super().__init__()
        self.input_proj = nn.Linear(in_channels, d_model)
        self.convs = nn.Sequential(CausalSeparableConv(d_model, window_size, 1, dropout),
                                   CausalSeparableConv(d_model, window_size, 2, dropout))
        self.gru = nn.GRU(d_model, d_model, num_layers=n_layers, batch_first=True,
                          dropout=dropout if n_layers > 1 else 0.0)
        self.norm = nn.LayerNorm(d_model)
        self.pool = AttentionPooling(d_model, dropout=dropout) if attention_pooling else MaskedMeanPooling()
        self.head = ClassifierHead(d_model, dropout, hierarchical, use_aux_head, n_classes)

    def encode(self, x):
        # x (B, T, C) → (B, T, D), causal
        h = self.input_proj(x)
        c = self.convs(h.transpose(1, 2)).transpose(1, 2)
        g, _ = self.gru(c)
        return self.norm(g + c)

    def forward(self, x):
        mask = x[..., MASK_CHANNEL] > 0.5  # (B, T)
        return self.head(self.pool(self.encode(x), mask))
