"""Model registry: every model is built by name with `create_model(name, **kwargs)`.

Families: `cnn_gru` (the thesis CNN-GRU, models/cnn_gru.py) and `patch_transformer` (a
patched causal transformer, models/patch_transformer.py), both light-curve classifiers; `timm`
(models/timm_classifier.py), image classifiers on any timm backbone; `lens_pinn`
(models/lens_pinn.py), an image classifier that first fits a smooth lens and reconstructs
the source; `mae` and `vit` (models/mae.py), the masked autoencoder and the ViT classifier
fine-tuned from its encoder; `bicubic`, `edsr` and `mae_sr` (models/superres.py), super-resolution.
Classifiers return a dict with "log_probs" (B, n_classes) and the logits their loss needs; the
MAE its patch predictions, targets and mask; super-resolution models "sr" (B, C, f*H, f*W).
"""
from __future__ import annotations

import inspect

_REGISTRY = {}
_KINDS = {}


def register(name, kind="light_curve"):
    """Class decorator; `kind` says what the model reads (light_curve, image)."""
    def wrap(cls):
        _REGISTRY[name] = cls
        _KINDS[name] = kind
        return cls
    return wrap


def list_models(kind=None):
    _import_all()
    return sorted(n for n in _REGISTRY if kind is None or _KINDS[n] == kind)


def model_kwargs(name: str, options: dict) -> dict:
    """The subset of `options` that model `name` takes (what a checkpoint records)."""
    cls = _get(name)
    accepted = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in options.items() if k in accepted}


def create_model(name: str, **kwargs):
    cls = _get(name)
    return cls(**kwargs)


def _get(name):
    _import_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _import_all():
    from models import (cnn_gru, domain_adversarial, lens_pinn, mae, patch_transformer, superres,  # noqa: F401
                        timm_classifier)  # (registration side effect)
