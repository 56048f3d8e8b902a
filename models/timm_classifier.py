"""Image classifiers: any timm backbone by name, `in_chans` = the number of bands.

    model = create_model("timm", backbone="convnext_tiny", in_chans=5, n_outputs=1, input_size=41)

Weights: random unless `pretrained_path` names a local file of (ImageNet) weights, which timm
loads with its own adaptations (the stem summed / repeated to C bands, the classifier dropped,
a ViT's position embedding resampled); nothing is ever downloaded. `pretrained_path` is a
build-time option only: a checkpoint holds the trained weights, so it is not recorded.

Input size: CNNs see the cutout at its own size (41x41 for LSST); patch-based models (ViT,
DeiT, ...) have a fixed grid, so the batch is resized on the device to their size (224 by
default, `input_size` otherwise) inside forward, never cached at that size.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register


class BackboneError(ValueError):
    """An unknown backbone or an unusable weights file."""


@functools.lru_cache(maxsize=None)
def _skeleton_facts(backbone: str):
    """(has a patch embedding, default input size) from a weightless copy on the meta device."""
    import timm
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False, num_classes=0)
    return hasattr(model, "patch_embed"), int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])


def is_fixed_size(backbone: str) -> bool:
    """Whether a timm model has a fixed input grid (patch embedding) rather than being a CNN."""
    return _skeleton_facts(backbone)[0]


def native_input_size(backbone: str, image_size: int) -> int:
    """The input size a backbone trains at: the cutout's own for CNNs, the model's default for ViTs."""
    fixed, default = _skeleton_facts(backbone)
    return default if fixed else image_size


def check_backbone(backbone: str):
    import timm
    if backbone.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or not timm.is_model(backbone):
        close = timm.list_models(f"*{backbone.split('.')[0][:6]}*")[:8]
        raise BackboneError(f"unknown backbone {backbone!r} (timm has e.g. {', '.join(close) or 'resnet18, convnext_tiny'})")


@register("timm", kind="image")
class TimmClassifier(nn.Module):
    """timm backbone → logits (B, n_outputs). Binary (n_outputs 1): "logit" (B,) and
    "log_probs" (B, 2) = log sigmoid of (-logit, logit); otherwise "logits" and "log_probs" (B, K)."""

    def __init__(self, backbone: str, in_chans: int, n_outputs: int = 1, input_size: int = 41,
                 drop_rate: float = 0.0, pretrained_path: str | None = None):
        super().__init__()
        import timm
        check_backbone(backbone)
        self.input_size = input_size
        kwargs = dict(num_classes=n_outputs, in_chans=in_chans, drop_rate=drop_rate)
        fixed = is_fixed_size(backbone)
        if fixed:
            kwargs["img_size"] = input_size
        if pretrained_path:
            if not os.path.isfile(pretrained_path):
                raise BackboneError(f"--pretrained-path {pretrained_path}: no such file")
            try:  # timm reads the file and adapts stem / head / position embedding; source "" = no hub
                self.net = timm.create_model(backbone, pretrained=True, **kwargs,
                                             pretrained_cfg_overlay=dict(file=pretrained_path, source=""))
            except (RuntimeError, KeyError, ValueError, OSError) as err:
                raise BackboneError(f"--pretrained-path {pretrained_path}: not weights of {backbone} "
                                    f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
        else:
            self.net = timm.create_model(backbone, pretrained=False, **kwargs)
        self.resize = fixed
        self.binary = n_outputs == 1

    def forward(self, x):
        # x (B, C, H, W) → dict of logits
        if self.resize and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return classifier_outputs(self.net(x), self.binary)


def classifier_outputs(z: torch.Tensor, binary: bool) -> dict:
    """The outputs of an image classifier from its logits z (B, n_outputs)."""
    if binary:
        z = z[:, 0]
        return {"logit": z, "log_probs": torch.stack([F.logsigmoid(-z), F.logsigmoid(z)], dim=-1)}
    return {"logits": z, "log_probs": F.log_softmax(z.float(), dim=-1)}
