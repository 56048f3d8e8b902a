"""Fine-tuning image classifiers (lens, substructure) from a masked autoencoder run (tasks/mae.py).

    python train.py --task substructure --data data/common --init-from results/mae_common_s42
    python train.py --task substructure --data data/common --init-from results/mae_common_s42 --linear-probe
    python train.py --task substructure --data data/common --init-from results/mae_common_s42 \\
        --label-fraction 0.1 --layer-decay 0.75

`--init-from` builds the MAE's encoder (`models.mae.ViTClassifier`, model name `vit`) with a new
head, or the timm backbone `--model` names, and loads the encoder's weights with an exact key and
shape check (a missing, unexpected or reshaped key is one error line naming them). The images
must have the MAE's channel count and size, and the MAE's normalisation is used. When the MAE was
pretrained on this run's data, its training and validation images must not include this run's
test split (same --seed and split fractions give the same split).

`--model vit` without `--init-from` is the same ViT from random weights (its architecture from
the MAE options --embed-dim, --depth, --num-heads, --patch-size): the control that shows what
pretraining brings. `--label-fraction F` keeps a stratified fraction F of the training split's labels (chosen by the
seed); validation and test splits stay whole, so runs with different fractions are compared on
the same held-out images. Not a task: tasks/images.py adds these options to the image tasks.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from engine.checkpoint import CheckpointError
from tasks import TaskError

VIT = "vit"  # models.mae.ViTClassifier, the MAE's own encoder with a head


def add_train_args(parser):
    g = parser.add_argument_group("fine-tuning (--task lens | substructure | superres)")
    g.add_argument("--init-from", default=None,
                   help="an MAE run directory (train.py --task mae): its encoder initialises the model")
    g.add_argument("--linear-probe", action="store_true", help="with --init-from: train the new head only")
    g.add_argument("--layer-decay", type=float, default=1.0,
                   help="layer-wise LR decay of the ViT encoder (block i of n gets lr * decay^(n + 1 - i)); 1: off")
    g.add_argument("--label-fraction", type=float, default=1.0,
                   help="train on this stratified fraction of the training split's labels (fixed by --seed)")


def check_args(args, default_model: str, encoder_model: str = VIT):
    """The model default (`encoder_model`, the one built on the MAE's encoder, with --init-from; else
    `default_model`) and the options' sense."""
    if args.model is None:
        args.model = encoder_model if args.init_from else default_model
    if args.linear_probe and not args.init_from:
        raise TaskError("--linear-probe needs --init-from (an MAE run whose encoder stays frozen)")
    if not 0 < args.layer_decay <= 1:
        raise TaskError("--layer-decay must be in (0, 1]")
    if args.layer_decay < 1 and args.model != encoder_model:
        raise TaskError(f"--layer-decay applies to the ViT encoder (--model {encoder_model}), not {args.model}")
    if not 0 < args.label_fraction <= 1:
        raise TaskError("--label-fraction must be in (0, 1]")
    if args.init_from:
        mae = pretrained_encoder(args.init_from)
        if encoder_model == VIT and args.norm != mae["stats"]["norm"]:
            raise TaskError(f"--init-from {args.init_from}: pretrained on {mae['stats']['norm']!r}-normalised "
                            f"images, this run has --norm {args.norm}")
        if args.input_size not in (None, mae["kwargs"]["image_size"]):
            raise TaskError(f"--input-size {args.input_size}: the MAE's encoder works at {mae['kwargs']['image_size']}")


def name_suffix(args) -> str:
    return ("_mae" if args.init_from else "") + ("_probe" if args.linear_probe else "") + \
        (f"_f{args.label_fraction:g}" if args.label_fraction < 1 else "")


def is_main() -> bool:
    """Whether this process reports (rank 0 of torchrun or SLURM, or a single process)."""
    from engine.distributed import _env_int
    return _env_int("RANK", "SLURM_PROCID", default=0) == 0


@functools.lru_cache(maxsize=4)
def pretrained_encoder(path: str) -> dict:
    """{kwargs, state, stats, split, data_key, path} of an MAE run's encoder (its best checkpoint)."""
    from engine.inference import load_run
    try:
        ckpt, model, ckpt_path = load_run(path, "mae", "best")
    except CheckpointError as err:
        raise TaskError(f"--init-from: {err}") from None
    return {"kwargs": model.encoder_kwargs(), "state": model.encoder.state_dict(), "stats": ckpt["stats"],
            "split": {k: v.numpy() for k, v in ckpt["split"].items()}, "data_key": ckpt["config"].get("data_key"),
            "path": ckpt_path}


def check_shape(mae, shape):
    if tuple(mae["stats"]["shape"]) != tuple(shape):
        C, H, W = mae["stats"]["shape"]
        c, h, w = shape
        what = "channel count" if C != c else "image size"
        raise TaskError(f"--init-from {mae['path']}: pretrained on {C}x{H}x{W} images, this data has {c}x{h}x{w} "
                        f"(another {what})")


def load_encoder(target, state: dict, path: str, keep_prefixes=()) -> list:
    """Load the MAE encoder's `state` into module `target` with every key and shape matched; keys
    starting with `keep_prefixes` (the new head) keep their initialisation. Returns the loaded names."""
    own = target.state_dict()
    wanted = {k for k in own if not k.startswith(tuple(keep_prefixes))}
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    reshaped = sorted(k for k in wanted & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        def show(keys):
            return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        parts = [f"missing {show(missing)}" if missing else "", f"unexpected {show(unexpected)}" if unexpected else "",
                 "other shapes for " + show([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in reshaped])
                 if reshaped else ""]
        raise TaskError(f"--init-from {path}: the MAE encoder does not fit this model ({type(target).__name__}): "
                        + "; ".join(p for p in parts if p))
    target.load_state_dict({**{k: v for k, v in own.items() if k not in wanted}, **state}, strict=True)
    return sorted(wanted)


def scratch_vit(args, stats, n_outputs: int):
    """(model, name, kwargs): the MAE's ViT classifier from random weights, its architecture from the
    MAE options (--embed-dim, --depth, --num-heads, --patch-size): the from-scratch control."""
    from models import create_model
    from tasks.mae import default_patch_size
    size = stats["input_size"]
    patch = args.patch_size or default_patch_size(size, args.mask_ratio)  # as a default MAE run picks it
    if size % patch:
        raise TaskError(f"input size {size} is not a multiple of --patch-size {patch}")
    kwargs = dict(in_chans=stats["shape"][0], image_size=size, patch_size=patch, embed_dim=args.embed_dim,
                  depth=args.depth, num_heads=args.num_heads, n_outputs=n_outputs, drop_rate=args.dropout)
    return create_model(VIT, **kwargs), VIT, kwargs


def build_classifier(args, stats, n_outputs: int):
    """(model, model_name, kwargs) of a classifier initialised from the MAE run `args.init_from`
    (without it, `--model vit`: the same ViT from random weights)."""
    from models import create_model
    from models.timm_classifier import BackboneError
    if not args.init_from:
        return scratch_vit(args, stats, n_outputs)
    mae = pretrained_encoder(args.init_from)
    check_shape(mae, stats["shape"])
    if args.model == VIT:
        kwargs = dict(mae["kwargs"], n_outputs=n_outputs, drop_rate=args.dropout)
        model = create_model(VIT, **kwargs)
        target, prefix, keep = model.encoder, "encoder.", ()
    else:  # a timm backbone of the same architecture (e.g. a timm ViT of the MAE's width, depth and patch)
        kwargs = dict(backbone=args.model, in_chans=stats["shape"][0], n_outputs=n_outputs,
                      input_size=stats["input_size"], drop_rate=args.dropout)
        try:
            model = create_model("timm", **kwargs)
        except BackboneError as err:
            raise TaskError(str(err)) from None
        head = model.net.get_classifier()
        keep = [f"{n}." for n, m in model.net.named_modules() if m is head or n == "fc_norm"]
        target, prefix = model.net, "net."
    loaded = load_encoder(target, mae["state"], mae["path"], keep)
    if args.linear_probe:  # the loaded encoder stays frozen; the new head trains
        params = dict(target.named_parameters())
        for name in loaded:
            if name in params:
                params[name].requires_grad_(False)
    if is_main():
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"--init-from {mae['path']}: loaded {len(loaded)} encoder tensors into {prefix}*; "
              f"{'linear probe' if args.linear_probe else 'fine-tuning'}, {n:,} trainable parameters", flush=True)
    return model, (VIT if args.model == VIT else "timm"), kwargs


def param_groups(model, args):
    """AdamW groups with layer-wise LR decay for a ViT encoder (vit, mae_sr; frozen parameters left out)."""
    from engine.trainer import param_groups as groups
    from models.mae import layer_index
    if args.layer_decay >= 1 or not hasattr(getattr(model, "encoder", None), "blocks"):
        return groups(model, args)
    depth = len(model.encoder.blocks)
    scales = {n: args.layer_decay ** (depth + 1 - layer_index(n, depth)) for n, _ in model.named_parameters()}
    return groups(model, args, scales)


def restrict_split(split: dict, labels, args, data_key) -> dict:
    """The split with --label-fraction applied to its training part, checked against the MAE's."""
    if args.init_from:
        mae = pretrained_encoder(args.init_from)
        if mae["data_key"] is not None and mae["data_key"] == data_key:
            seen = np.intersect1d(split["test"], np.concatenate([mae["split"]["train"], mae["split"]["val"]]))
            if len(seen):
                raise TaskError(f"--init-from {os.path.dirname(mae['path'])}: the MAE was pretrained on {len(seen)} "
                                "images of this run's test split; pretrain and fine-tune with the same --seed, "
                                "--val-fraction and --test-fraction")
        elif is_main():
            print(f"--init-from: the MAE was pretrained on other data than this run's; its images may include "
                  "this run's test objects if the two data sets overlap", flush=True)
    if args.label_fraction >= 1:
        return split
    rng = np.random.default_rng(args.seed + 1)
    train = split["train"]
    keep = [rng.permutation(train[labels[train] == c])[:max(1, int(round(args.label_fraction * (labels[train] == c).sum())))]
            for c in np.unique(labels[train])]
    return dict(split, train=np.sort(np.concatenate(keep)))
