"""A timm image classifier with a domain head behind a gradient-reversal layer (DANN, Ganin et
al. 2016), for unsupervised domain adaptation (`train.py --adapt-data`).

The classifier is `models.timm_classifier.TimmClassifier` itself (same weights, same outputs);
the domain head (a small MLP on the pooled features) learns to tell training images from the
target images, and the reversed gradient teaches the backbone features it cannot tell apart.
The reversal's strength follows Ganin's schedule lambda(p) = grl_max (2 / (1 + e^(-10 p)) - 1)
over the run's training progress p, counted by the model itself (a buffer, so a resumed run
carries on where it stopped). At inference the domain head is skipped: predict.py and
evaluate.py see an ordinary classifier.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register
from models.timm_classifier import TimmClassifier, classifier_outputs


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


@register("domain_adversarial", kind="image")
class DomainAdversarial(nn.Module):
    """TimmClassifier + domain head. Training forward adds "domain_logit" (B,) (target = 1); eval
    forward is the classifier's."""

    def __init__(self, backbone: str, in_chans: int, n_outputs: int = 1, input_size: int = 41,
                 drop_rate: float = 0.0, total_steps: int = 1000, grl_max: float = 1.0, hidden: int = 256,
                 pretrained_path: str | None = None):
        super().__init__()
        self.classifier = TimmClassifier(backbone, in_chans, n_outputs, input_size, drop_rate, pretrained_path)
        width = self.classifier.net.num_features
        self.domain_head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 1))
        self.total_steps, self.grl_max = max(1, int(total_steps)), float(grl_max)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def grl_lambda(self) -> float:
        p = min(1.0, float(self.steps) / self.total_steps)
        return self.grl_max * (2 / (1 + math.exp(-10 * p)) - 1)

    def forward(self, x):
        c = self.classifier
        if c.resize and x.shape[-1] != c.input_size:
            x = F.interpolate(x, size=(c.input_size, c.input_size), mode="bilinear", align_corners=False)
        features = c.net.forward_head(c.net.forward_features(x), pre_logits=True)
        out = classifier_outputs(c.net.get_classifier()(features), c.binary)
        if self.training:
            scale = self.grl_lambda()
            self.steps += 1
            out["domain_logit"] = self.domain_head(_Reverse.apply(features, scale))[:, 0]
        return out
