"""What the image classification tasks (lens, substructure) share: options, ingestion into the
node's RAM cache, the split, batches, timm backbones, test-time-augmented ensembles, and the
reading of the run's own data or of other files at evaluation and prediction.

Not a task (it is not in `tasks.TASKS`): `tasks/lens.py` and `tasks/substructure.py` call it.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from data import augment, lens_data
from data.cache import SharedArrays, cache_key
from engine.inference import ShapeError, inference_precision, tta_outputs
from models import create_model
from models.timm_classifier import BackboneError, check_backbone, native_input_size
from tasks import TaskError, TrainData, finetune, stratified_split


# --------------------------------------------------------------------------- options
def _once(parser, flag) -> bool:
    """True when `flag` is not yet an option of the parser (the groups below are shared by tasks)."""
    return flag not in parser._option_string_actions


def add_train_args(parser):
    if not _once(parser, "--norm"):
        return
    g = parser.add_argument_group("image tasks (--task lens | substructure)")
    g.add_argument("--index-cache", default=None, help="keep the ingestion index in this file across runs")
    g.add_argument("--num-workers", type=int, default=0, help="processes reading image files at ingestion")
    g.add_argument("--skip-bad", action="store_true",
                   help="leave out objects with a missing band or an unreadable file (listed in <run>/skipped.txt)")
    g.add_argument("--norm", choices=augment.NORMS, default="standardize", help="per-image normalisation")
    g.add_argument("--input-size", type=int, default=None,
                   help="model input size (default: the image's for CNNs, the model's own, e.g. 224, for ViTs)")
    g.add_argument("--pretrained-path", default=None, help="local ImageNet weights for the timm backbone")
    g.add_argument("--augment", choices=("d4", "none"), default="d4", help="the 8 flips/rotations per image")
    g.add_argument("--max-shift", type=int, default=0, help="random shifts of up to this many pixels")
    g.add_argument("--noise", type=float, default=0.0, help="added Gaussian noise, up to this sigma (normalised units)")
    finetune.add_train_args(parser)


def add_evaluate_args(parser):
    if not _once(parser, "--tta"):
        return
    g = parser.add_argument_group("image tasks (lens, substructure)")
    g.add_argument("--tta", type=int, choices=(1, 3, 8), default=3, help="test-time symmetries (see predict.py)")
    g.add_argument("--amp", choices=("auto", "bf16", "fp32"), default="auto",
                   help="inference precision (auto: bf16 on GPUs and CPUs with fast bf16, else fp32)")
    g.add_argument("--n-examples", type=int, default=16, help="most confident misclassified objects shown")
    g.add_argument("--skip-bad", action="store_true", help="leave out unreadable objects (listed)")


def check_model_args(args, default_model="resnet18", own_models=()):
    """The classifier: a timm backbone, the MAE's encoder with --init-from (tasks/finetune.py), or
    one of the task's `own_models`."""
    finetune.check_args(args, default_model)
    if args.model in own_models and args.init_from:
        raise TaskError(f"--init-from: --model {args.model} has no ViT encoder to initialise; use --model "
                        f"{finetune.VIT} or a timm ViT")
    if args.model != finetune.VIT and args.model not in own_models:
        check_backbone_arg(args.model)


def check_backbone_arg(name):
    try:
        check_backbone(name)
    except BackboneError as err:
        raise TaskError(str(err)) from None


# --------------------------------------------------------------------------- train.py
def report_files(report) -> dict:
    """The run files of an ingestion report: ingest.json, and skipped.txt when objects were left out."""
    files = {"ingest.json": json.dumps({k: v for k, v in report.items() if k != "bad"} |
                                       {"n_skipped": len(report["bad"])}, indent=2)}
    if report["bad"]:
        files["skipped.txt"] = "\n".join(report["bad"]) + "\n"
    return files


def ingest(sources, args, info, task: str, class_names) -> TrainData:
    """The sources packed once into the node's RAM cache (built by local rank 0, mapped by the others)."""
    cache = cache_key(None, {"task": task, "bands": args.bands}, identity=lens_data.listing_key(sources))

    def build():
        start = time.perf_counter()
        try:
            arrays, report = lens_data.load_all(sources, args.bands, args.skip_bad, args.num_workers,
                                                not args.no_progress, args.index_cache)
        except lens_data.LensDataError as err:
            raise TaskError(str(err)) from None
        report["seconds"] = time.perf_counter() - start
        arrays["report"] = np.array([json.dumps(report)])
        return arrays

    arrays = SharedArrays(cache, build, info, args.cache_dir)
    report = json.loads(str(arrays["report"][0]))
    labels = np.asarray(arrays["labels"]).astype(np.int64)
    # class_names None (mae): labels are kept for the split only, -1 where a folder has no class
    counts = np.bincount(labels[labels >= 0], minlength=len(class_names or ()))
    if info.is_main:
        n, shape = len(labels), arrays["images"].shape[1:]
        classes = ", ".join(f"{c} {name}" for name, c in zip(class_names, counts)) if class_names else \
            f"{(labels >= 0).sum()} in class folders"
        print(f"ingested {n} objects ({'x'.join(map(str, shape))}; {classes}) in {report['seconds']:.1f} s "
              f"({n / max(report['seconds'], 1e-9):.0f} objects/s); non-finite pixels set to 0: "
              f"{report['nonfinite_pixels']} in {report['nonfinite_objects']} objects; skipped {len(report['bad'])}",
              flush=True)
    if class_names and (counts == 0).any():
        arrays.remove()  # every rank gets here: the node's copy goes before the error
        missing = [name for name, c in zip(class_names, counts) if c == 0]
        raise TaskError(f"the data holds no {', '.join(missing)} objects; {task} needs every class "
                        f"({', '.join(class_names)})")
    meta = {"unit": "objects", "shape": tuple(arrays["images"].shape[1:]), "bands": report["bands"],
            "run_files": report_files(report), "data_key": lens_data.listing_key(sources)}
    return TrainData(arrays, labels, meta)


def make_split(data, args) -> dict:
    """Stratified train / val / test; objects of the data's own test folders are the test split, as given;
    hard negatives (`train_only`, listed last) join the training split, so the other objects are split
    exactly as in a run without them and the two runs' test figures compare."""
    is_test = np.asarray(data.arrays["is_test"])
    train_only = data.arrays.get("train_only")  # absent from caches built before hard negatives
    train_only = np.zeros(len(is_test), bool) if train_only is None else np.asarray(train_only)
    mined = np.flatnonzero(train_only)
    labels = data.labels[~train_only]
    if not is_test.any():
        split = stratified_split(labels, args.seed, args.val_fraction, args.test_fraction)
    else:
        rest = np.flatnonzero(~is_test[~train_only])
        inner = stratified_split(labels[rest], args.seed, args.val_fraction, 0.0)
        split = {"train": rest[inner["train"]], "val": rest[inner["val"]], "test": np.flatnonzero(is_test)}
    if len(mined):
        if mined[0] != len(train_only) - len(mined):
            raise ValueError("hard negatives must be the last objects of the data")  # sources_of puts them there
        split["train"] = np.concatenate([split["train"], mined])
    if not hasattr(args, "label_fraction"):
        return split
    return finetune.restrict_split(split, data.labels, args, data.meta.get("data_key"))  # --label-fraction, --init-from


def fit_stats(data, args, backbone=None) -> dict:
    """The preprocessing a run records and prediction repeats (no statistics of the data are needed)."""
    C, H, W = data.meta["shape"]
    backbone = args.model if backbone is None else backbone
    if getattr(args, "init_from", None):  # the MAE encoder's grid; a timm ViT at the same size
        input_size = finetune.pretrained_encoder(args.init_from)["kwargs"]["image_size"]
    elif backbone == finetune.VIT:  # the MAE's ViT from scratch: the image's own size
        input_size = args.input_size or H
    else:
        input_size = args.input_size or native_input_size(backbone, H)
    return {"norm": args.norm, "input_size": input_size,
            "shape": [C, H, W], "bands": data.meta["bands"]}


def gather(images, indices) -> np.ndarray:
    """Rows of the packed array (a map of the node's RAM copy) in the order of `indices`."""
    return np.take(images, np.asarray(indices), axis=0).astype(np.float32, copy=False)


def batch_images(data, stats, args, device, train: bool, indices):
    """((B, C, H, W) normalised (and, when training, augmented) images on the device, the
    symmetry (B,) and shift (B, 2) each image got (zeros when not training))."""
    x = torch.from_numpy(gather(data.arrays["images"], indices)).to(device, non_blocking=True)
    x = augment.normalize(x, stats["norm"])
    symmetries, max_shift = (args.augment == "d4", args.max_shift) if train else (False, 0)
    x, ks, shifts = augment.random_geometry(x, symmetries, max_shift, return_transforms=True)
    if train:
        x = augment.add_noise(x, args.noise)
    return x, ks, shifts


def make_fetch(data, stats, args, device, train: bool):
    labels = data.labels

    def fetch(indices):
        x = batch_images(data, stats, args, device, train, indices)[0]
        return x, torch.from_numpy(labels[np.asarray(indices)])
    return fetch


def timm_model(args, stats, n_outputs):
    """The classifier: a timm backbone, or one initialised from an MAE run (--init-from)."""
    if getattr(args, "init_from", None) or args.model == finetune.VIT:
        return finetune.build_classifier(args, stats, n_outputs)
    kwargs = dict(backbone=args.model, in_chans=stats["shape"][0], n_outputs=n_outputs,
                  input_size=stats["input_size"], drop_rate=args.dropout)
    try:
        model = create_model("timm", **kwargs, pretrained_path=args.pretrained_path)
    except BackboneError as err:
        raise TaskError(str(err)) from None
    return model, "timm", kwargs


# --------------------------------------------------------------------------- scoring (predict, evaluate)
def member_outputs(runs, images, args, key: str, progress=True) -> np.ndarray:
    """(M, N, ...) out[key] of each member, averaged over its test-time augmentations."""
    amp = inference_precision(args.amp, args.device)
    try:
        return np.stack([tta_outputs(model, ckpt["stats"], images, args.tta, args.batch_size, args.device, amp, key,
                                     progress, f"member {m + 1}/{len(runs)}")
                         for m, (ckpt, model, _) in enumerate(runs)])
    except ShapeError as err:
        raise TaskError(str(err)) from None


def same_bands(runs):
    """The bands of the ensemble's members (all must agree)."""
    bands = runs[0][0]["stats"]["bands"] or None
    for ckpt, _, path in runs:
        if (ckpt["stats"]["bands"] or None) != bands:
            raise TaskError(f"{path}: trained on bands {ckpt['stats']['bands']}, the first member on {bands}")
    return bands


def report_skipped(report) -> int:
    """Print the objects prediction left out (--skip-bad); returns their number."""
    for line in report["bad"]:
        print(f"predict.py: skipped: {line}")
    return len(report["bad"])


def read_sources(sources, bands, args):
    try:
        return lens_data.load_all(sources, bands, args.skip_bad, getattr(args, "num_workers", 0),
                                  not args.no_progress)
    except lens_data.LensDataError as err:
        raise TaskError(str(err)) from None


def load_paths(paths, bands, args, labelled: bool, class_folders=None):
    """Arrays and report of files / folders given on the command line; a folder without class
    folders is unlabelled (label -1), allowed for prediction only."""
    folders = lens_data.CLASS_FOLDERS if class_folders is None else class_folders
    try:
        sources = []
        for p in paths:
            if os.path.isdir(p) and not lens_data.has_class_folders(p, folders):
                if labelled:
                    raise lens_data.LensDataError(f"{p}: no class folders ({', '.join(folders)}), so no labels to "
                                                  "evaluate against; use predict.py for unlabelled data")
                sources.append((os.path.abspath(p), (-1, False)))  # unlabelled root
            else:
                sources += lens_data.sources_of(p, class_folders=folders)
    except lens_data.LensDataError as err:
        raise TaskError(str(err)) from None
    return read_sources(sources, bands, args)


def evaluation_data(ckpt, run_dir, args, class_folders=None):
    """(arrays, report, rows, what, stem): `--data` whole, or the run's own test split (its
    data re-read, checked unchanged since training)."""
    config, stats = ckpt["config"], ckpt["stats"]
    if args.data:
        arrays, report = load_paths(args.data, stats["bands"] or None, args, True, class_folders)
        stem = os.path.splitext(os.path.basename(os.path.normpath(args.data[0])))[0]
        return arrays, report, np.arange(len(arrays["labels"])), "all objects", stem
    sources = [(r, tuple(lab) if lab is not None else None) for r, lab in config["data_sources"]]
    try:
        if lens_data.listing_key(sources) != config["data_key"]:
            raise TaskError(f"{run_dir}: its training data ({sources[0][0]}, ...) changed since training; "
                            "give --data to evaluate other data")
    except FileNotFoundError as err:
        raise TaskError(f"{run_dir}: its training data is gone ({err.filename}); give --data") from None
    except lens_data.LensDataError as err:  # a hard-negative list whose files are gone
        raise TaskError(f"{run_dir}: its training data cannot be listed ({err}); give --data") from None
    args.skip_bad = config.get("skip_bad", False)  # the same objects as in training, in the same order
    arrays, report = read_sources(sources, stats["bands"] or None, args)
    rows = ckpt["split"]["test"].numpy()
    if len(rows) == 0:
        raise TaskError(f"{run_dir}: the run's test split is empty (trained with --test-fraction 0)")
    return arrays, report, rows, "test split", "test"
