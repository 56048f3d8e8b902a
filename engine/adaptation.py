"""Unsupervised domain adaptation for the image classifiers (`train.py --adapt-data DIR`).

Method: domain-adversarial training (DANN, Ganin et al. 2016), chosen because it needs nothing
of the target but its pixels, works the same for the three-class substructure task and the
binary lens finder, and adds one small head (`models.domain_adversarial`). Every training batch
is the usual labelled batch plus as many target images (unlabelled: label -1), normalised and
augmented alike; the loss is the task's loss on the labelled rows plus --adapt-weight x the
domain head's cross-entropy on all rows, whose gradient the backbone receives reversed. The
domain term is logged apart (train_loss_domain); validation, the best checkpoint's selection
and early figures use the labelled validation split only, never the target.

The target images (any reader format: class folders, an unlabelled folder, HDF5; labels are
never read) are ingested once into the node's RAM cache like the training images. Which target
images a batch gets is fixed by the seed, the epoch and the batch's own rows, so a killed run
resumes to the same batches and each rank draws its own. A target that shares a file with the
training data is refused (adapting to images one also trains on measures nothing).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tasks import TaskError, TrainData

TASKS = ("substructure", "lens")


def add_train_args(parser):
    g = parser.add_argument_group("unsupervised domain adaptation (--task substructure or lens)")
    g.add_argument("--adapt-data", nargs="+", default=None, metavar="PATH",
                   help="unlabelled images of the domain to adapt to (folders of .npy / FITS, class folders, HDF5; "
                        "labels are not read): domain-adversarial training (engine/adaptation.py)")
    g.add_argument("--adapt-weight", type=float, default=1.0, help="weight of the domain loss")
    g.add_argument("--adapt-grl", type=float, default=0.1,
                   help="the gradient reversal's final strength (reached by Ganin's schedule over the run); 1, "
                        "Ganin's, collapsed a ResNet18 trained from scratch on 2,100 images (validation AUC "
                        "0.97 -> 0.57), 0.1 kept it (0.94; README, issue 26)")


def check_args(args):
    if not args.adapt_data:
        return
    if args.task not in TASKS:
        raise TaskError(f"--adapt-data adapts image classifiers (--task {' or '.join(TASKS)}), not {args.task}")
    if getattr(args, "init_from", None) or args.model in ("vit", "lens_pinn"):
        raise TaskError(f"--adapt-data works with timm backbones (e.g. resnet18), not {args.model}"
                        + (" / --init-from" if getattr(args, "init_from", None) else ""))
    for path in args.adapt_data:
        if not os.path.exists(path):
            raise TaskError(f"--adapt-data {path}: no such file or folder")


def load_target(args, info, data) -> TrainData:
    """The target images, cached once per node; refused when empty, of another shape, or sharing a
    file with the training data."""
    from tasks import images
    from tasks.mae import data_sources
    sources = [s for path in args.adapt_data for s in data_sources(path)]
    target = images.ingest(sources, args, info, f"{args.task}-target", None)
    shape = tuple(target.arrays["images"].shape[1:])
    want = tuple(data.meta["input"]["image_shape"]) if "input" in data.meta else tuple(data.arrays["images"].shape[1:])
    if shape != want:
        target.remove()
        raise TaskError(f"--adapt-data {args.adapt_data[0]}: images of shape {shape}, the training images are {want}")
    shared = set(np.asarray(target.arrays["files"]).tolist()) & set(np.asarray(data.arrays["files"]).tolist())
    if shared:
        target.remove()
        raise TaskError(f"--adapt-data {args.adapt_data[0]}: {len(shared)} of its files are training data too "
                        f"(e.g. {sorted(shared)[0]}); the target must be images the run does not train on")
    if "input" in data.meta:  # residual maps: the target is shown as the training images are, through its own PSF
        from tasks.substructure import residual_input
        target = residual_input(target, args, info, f"--adapt-data {args.adapt_data[0]}", "scan")
    target.labels = np.full(len(target.labels), -1, np.int64)
    if info.is_main:
        print(f"adaptation target: {len(target.labels)} unlabelled images ({'x'.join(map(str, shape))}) from "
              f"{', '.join(args.adapt_data)}", flush=True)
    return target


class AdaptFetch:
    """Training batches with as many target images appended (label -1)."""

    def __init__(self, source_fetch, target_fetch, n_target, seed):
        self.source, self.target, self.n_target, self.seed, self.epoch = source_fetch, target_fetch, n_target, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def __call__(self, indices):
        idx = np.asarray(indices)
        x, y = self.source(idx)
        rng = np.random.default_rng([self.seed, self.epoch, int(idx[0]), len(idx)])
        x_t, _ = self.target(rng.integers(0, self.n_target, len(idx)))
        return torch.cat([x, x_t.to(x.device)]), torch.cat([y, torch.full((len(idx),), -1, dtype=y.dtype)])


class DomainAdversarialLoss(nn.Module):
    """The task's loss on the labelled rows + weight x the domain cross-entropy on all rows."""

    def __init__(self, base, weight):
        super().__init__()
        self.base, self.weight = base, float(weight)
        self.term_names = tuple(getattr(base, "term_names", ())) + ("domain",)
        self.metric_names = tuple(getattr(base, "metric_names", ()))

    def forward(self, out, y):
        labelled = y >= 0
        if "domain_logit" not in out:  # validation: labelled images only
            loss, terms = self.base(out, y)
            return loss, dict(terms, domain=torch.zeros((), device=loss.device))
        source = {k: v[labelled] for k, v in out.items() if k != "domain_logit"}
        loss, terms = self.base(source, y[labelled])
        domain = F.binary_cross_entropy_with_logits(out["domain_logit"].float(), (~labelled).float())
        return loss + self.weight * domain, dict(terms, domain=domain)


def wrap(args, data, split, info, model_kwargs, fetch, criterion, stats, device):
    """(model, model name, kwargs, fetch, criterion) for a domain-adversarial run."""
    from models import create_model
    from tasks import images
    target = load_target(args, info, data)
    batches = -(-len(split["train"]) // (args.batch_size * info.world_size))
    kwargs = dict(model_kwargs, total_steps=args.epochs * batches, grl_max=args.adapt_grl)
    model = create_model("domain_adversarial", **kwargs, pretrained_path=args.pretrained_path)
    target_fetch = images.make_fetch(target, stats, args, device, train=True)
    adapt_fetch = AdaptFetch(fetch, target_fetch, len(target.labels), args.seed + 1000 * info.rank)
    return model, "domain_adversarial", kwargs, adapt_fetch, DomainAdversarialLoss(criterion, args.adapt_weight), target
