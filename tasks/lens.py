"""Lens finding: lens / non-lens from multi-band cutouts (LSST challenge FITS, DeepLense .npy, HDF5).

Data: `data.lens_data` ingests every source once into one packed (N, C, H, W) float32 array in
the node's RAM cache; batches are gathered from it by index and normalised / augmented on the
device (`data.augment`). Models: any timm backbone (`models.timm_classifier`), one logit, BCE
with pos_weight = n_neg / n_pos of the training split. The best checkpoint is chosen on
validation ROC AUC; the test split (or the DeepLense test folders) is never used for selection.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data import augment, lens_data
from data.cache import SharedArrays, cache_key
from engine.checkpoint import write_csv
from engine.inference import ShapeError, inference_precision, tta_outputs
from models import create_model
from models.timm_classifier import BackboneError, check_backbone, native_input_size
from tasks import TaskError, TrainData, stratified_split

TASK = "lens"
CLASS_NAMES = ("nonlens", "lens")
SELECT_METRIC = "val_auc"
# the seed's defaults: AdamW 1e-4, weight decay 1e-2, cosine; stratified 20% validation
DEFAULTS = dict(model="resnet18", epochs=20, batch_size=128, lr=1e-4, weight_decay=1e-2, warmup_epochs=1.0,
                val_fraction=0.2, test_fraction=0.1, dropout=0.0)
IDENTITY_KEYS = ("task", "model", "input_size", "norm", "bands", "data_key", "seed", "val_fraction", "test_fraction")


# --------------------------------------------------------------------------- train.py
def add_train_args(parser):
    g = parser.add_argument_group("lens finding (--task lens)")
    g.add_argument("--train-roots", nargs="+", default=[], help="folders of lenses (FITS cutouts or .npy)")
    g.add_argument("--train-roots-neg", nargs="+", default=[], help="folders of non-lenses")
    g.add_argument("--index-cache", default=None, help="keep the ingestion index in this file across runs")
    g.add_argument("--num-workers", type=int, default=0, help="processes reading FITS files at ingestion")
    g.add_argument("--cache-ratio", type=float, default=1.0,
                   help="the seed's flag; the packed array is always cached whole, once per node (1 only)")
    g.add_argument("--mode", choices=("train",), default="train", help="the seed's flag (train only)")
    g.add_argument("--bands", default=None, help="comma-separated subset of FITS bands, e.g. g,r,i (default: all)")
    g.add_argument("--skip-bad", action="store_true",
                   help="leave out objects with a missing band or an unreadable file (listed in <run>/skipped.txt)")
    g.add_argument("--norm", choices=augment.NORMS, default="standardize", help="per-image normalisation")
    g.add_argument("--input-size", type=int, default=None,
                   help="model input size (default: the cutout's for CNNs, the model's own, e.g. 224, for ViTs)")
    g.add_argument("--pretrained-path", default=None, help="local ImageNet weights for the timm backbone")
    g.add_argument("--augment", choices=("d4", "none"), default="d4", help="the 8 flips/rotations per image")
    g.add_argument("--max-shift", type=int, default=0, help="random shifts of up to this many pixels")
    g.add_argument("--noise", type=float, default=0.0, help="added Gaussian noise, up to this sigma (normalised units)")
    g.add_argument("--pos-weight", type=float, default=None, help="BCE pos_weight (default n_neg / n_pos of train)")


def _sources(args):
    try:
        return lens_data.sources_of(args.data, args.train_roots, args.train_roots_neg)
    except lens_data.LensDataError as err:
        raise TaskError(str(err)) from None


def check_train_args(args):
    try:
        check_backbone(args.model)
    except BackboneError as err:
        raise TaskError(str(err)) from None
    if args.cache_ratio != 1:
        raise TaskError("--cache-ratio: only 1 (the whole packed array, one copy per node) is supported")
    if bool(args.train_roots) != bool(args.train_roots_neg) and not args.data:
        raise TaskError("give both --train-roots (lenses) and --train-roots-neg (non-lenses), or --data")
    args.bands = args.bands.split(",") if isinstance(args.bands, str) else args.bands


def default_name(args) -> str:
    first = args.data or args.train_roots[0]
    stem = os.path.splitext(os.path.basename(os.path.normpath(first)))[0]
    return f"lens_{args.model}_{stem}_s{args.seed}"


def data_identity(args) -> dict:
    sources = _sources(args)
    return {"data_sources": [[r, lab] for r, lab in sources], "data_key": lens_data.listing_key(sources)}


def _report_text(report) -> dict:
    files = {"ingest.json": json.dumps({k: v for k, v in report.items() if k != "bad"} |
                                       {"n_skipped": len(report["bad"])}, indent=2)}
    if report["bad"]:
        files["skipped.txt"] = "\n".join(report["bad"]) + "\n"
    return files


def load_train_data(args, info) -> TrainData:
    sources = _sources(args)
    cache = cache_key(None, {"task": TASK, "bands": args.bands}, identity=lens_data.listing_key(sources))

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
    labels = np.asarray(arrays["labels"])
    if info.is_main:
        n, shape = len(labels), arrays["images"].shape[1:]
        print(f"ingested {n} objects ({'x'.join(map(str, shape))}, {int(labels.sum())} lenses) in "
              f"{report['seconds']:.1f} s ({n / max(report['seconds'], 1e-9):.0f} objects/s); non-finite pixels set "
              f"to 0: {report['nonfinite_pixels']} in {report['nonfinite_objects']} objects; skipped "
              f"{len(report['bad'])}", flush=True)
    if len(np.unique(labels)) < 2:
        arrays.remove()  # every rank gets here: the node's copy goes before the error
        raise TaskError(f"the data holds only {CLASS_NAMES[int(labels[0])]} objects; lens finding needs both classes")
    meta = {"unit": "objects", "shape": tuple(arrays["images"].shape[1:]), "bands": report["bands"],
            "run_files": _report_text(report)}
    return TrainData(arrays, labels.astype(np.int64), meta)


def make_split(data, args) -> dict:
    is_test = np.asarray(data.arrays["is_test"])
    if not is_test.any():
        return stratified_split(data.labels, args.seed, args.val_fraction, args.test_fraction)
    # DeepLense layout: the test folders are the test split, as given; val comes from the training folders
    rest = np.flatnonzero(~is_test)
    inner = stratified_split(data.labels[rest], args.seed, args.val_fraction, 0.0)
    return {"train": rest[inner["train"]], "val": rest[inner["val"]], "test": np.flatnonzero(is_test)}


def fit_stats(data, split, args, info):
    """The preprocessing a run records and prediction repeats (no statistics of the data are needed)."""
    C, H, W = data.meta["shape"]
    return {"norm": args.norm, "input_size": args.input_size or native_input_size(args.model, H),
            "shape": [C, H, W], "bands": data.meta["bands"]}


def gather(images, indices) -> np.ndarray:
    """Rows of the packed array (a map of the node's RAM copy) in the order of `indices`."""
    return np.take(images, np.asarray(indices), axis=0).astype(np.float32, copy=False)


def make_fetch(data, stats, args, device, train: bool):
    images, labels = data.arrays["images"], data.labels

    def fetch(indices):
        x = torch.from_numpy(gather(images, indices)).to(device, non_blocking=True)
        x = augment.normalize(x, stats["norm"])
        if train:
            x = augment.random_geometry(x, args.augment == "d4", args.max_shift)
            x = augment.add_noise(x, args.noise)
        return x, torch.from_numpy(labels[np.asarray(indices)])
    return fetch


def build_model(args, data, stats):
    kwargs = dict(backbone=args.model, in_chans=stats["shape"][0], n_outputs=1, input_size=stats["input_size"],
                  drop_rate=args.dropout)
    try:
        model = create_model("timm", **kwargs, pretrained_path=args.pretrained_path)
    except BackboneError as err:
        raise TaskError(str(err)) from None
    return model, "timm", kwargs


class LensLoss(nn.Module):
    """BCE with logits and pos_weight (lenses are rare); mean over the batch."""

    def __init__(self, pos_weight: float):
        super().__init__()
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight)))

    def forward(self, out, y):
        loss = F.binary_cross_entropy_with_logits(out["logit"].float(), y.float(), pos_weight=self.pos_weight)
        return loss, {"bce": loss}


def make_criterion(data, split, args):
    n_pos = int(data.labels[split["train"]].sum())
    n_neg = len(split["train"]) - n_pos
    balanced = n_neg / max(n_pos, 1) if args.class_weights == "balanced" else 1.0
    return LensLoss(args.pos_weight if args.pos_weight is not None else balanced)


def val_metrics(y, log_probs) -> dict:
    from sklearn.metrics import roc_auc_score
    logit = log_probs[:, 1] - log_probs[:, 0]
    return {"auc": float(roc_auc_score(y, logit)) if len(np.unique(y)) == 2 else float("nan")}


def checkpoint_extras(data, stats, args) -> dict:
    return {}


# --------------------------------------------------------------------------- scoring (predict, evaluate)
def ensemble_scores(runs, images, args, progress=True):
    """(score = sigmoid(mean member logit), std of the member logits), both (N,)."""
    amp = inference_precision(args.amp, args.device)
    members = np.stack([tta_outputs(model, ckpt["stats"], images, args.tta, args.batch_size, args.device,
                                    amp, "logit", progress, f"member {m + 1}/{len(runs)}")
                        for m, (ckpt, model, _) in enumerate(runs)])
    mean = members.mean(0)
    return 1 / (1 + np.exp(-mean)), members.std(0)


def _load(paths, bands, args, labelled):
    """Arrays and report of files / folders given on the command line (unlabelled roots allowed
    for prediction)."""
    try:
        sources = []
        for p in paths:
            if os.path.isdir(p) and not any(os.path.isdir(os.path.join(p, d)) for d in lens_data.CLASS_FOLDERS):
                if labelled:
                    raise lens_data.LensDataError(f"{p}: no class folders ({', '.join(lens_data.CLASS_FOLDERS)}), so "
                                                  "no labels to evaluate against; use predict.py for unlabelled data")
                sources.append((os.path.abspath(p), (-1, False)))  # unlabelled root
            else:
                sources += lens_data.sources_of(p)
    except lens_data.LensDataError as err:
        raise TaskError(str(err)) from None
    return _read(sources, bands, args)


def _read(sources, bands, args):
    try:
        return lens_data.load_all(sources, bands, args.skip_bad, getattr(args, "num_workers", 0),
                                  not args.no_progress)
    except lens_data.LensDataError as err:
        raise TaskError(str(err)) from None


def predict(runs, args):
    """(header, rows, skipped): `id, pred` per object of the inputs (the challenge's format)."""
    bands = runs[0][0]["stats"]["bands"] or None
    for ckpt, _, path in runs:
        if (ckpt["stats"]["bands"] or None) != bands:
            raise TaskError(f"{path}: trained on bands {ckpt['stats']['bands']}, the first member on {bands}")
    arrays, report = _load(args.input, bands, args, labelled=False)
    try:
        score, spread = ensemble_scores(runs, arrays["images"], args, not args.no_progress)
    except ShapeError as err:
        raise TaskError(str(err)) from None
    header = ["id", "pred"] + (["logit_std", "file"] if args.extra_columns else [])
    rows = [[i, f"{s:.6f}"] + ([f"{d:.4f}", f] if args.extra_columns else [])
            for i, s, d, f in zip(arrays["ids"], score, spread, arrays["files"])]
    for line in report["bad"]:
        print(f"predict.py: skipped: {line}")
    return header, rows, len(report["bad"])


# --------------------------------------------------------------------------- evaluate.py
def add_evaluate_args(parser):
    g = parser.add_argument_group("lens finding")
    g.add_argument("--tta", type=int, choices=(1, 3, 8), default=3, help="test-time symmetries (see predict.py)")
    g.add_argument("--amp", choices=("auto", "bf16", "fp32"), default="auto",
                   help="inference precision (auto: bf16 on GPUs and CPUs with fast bf16, else fp32)")
    g.add_argument("--candidates", type=int, default=0, help="write the N best-scored objects: catalogue and grid")
    g.add_argument("--n-examples", type=int, default=16, help="most confident false positives / negatives shown")
    g.add_argument("--skip-bad", action="store_true", help="leave out unreadable objects (listed)")


def evaluate(ckpt, model, ckpt_path, args) -> dict:
    from engine import metrics
    from plots import lens_eval
    run_dir = os.path.dirname(os.path.abspath(ckpt_path))
    config, stats = ckpt["config"], ckpt["stats"]
    if args.data:
        arrays, report = _load(args.data, stats["bands"] or None, args, labelled=True)
        rows, what = np.arange(len(arrays["labels"])), "all objects"
        stem = os.path.splitext(os.path.basename(os.path.normpath(args.data[0])))[0]
    else:
        sources = [(r, tuple(lab) if lab is not None else None) for r, lab in config["data_sources"]]
        try:
            if lens_data.listing_key(sources) != config["data_key"]:
                raise TaskError(f"{run_dir}: its training data ({sources[0][0]}, ...) changed since training; "
                                "give --data to evaluate other data")
        except FileNotFoundError as err:
            raise TaskError(f"{run_dir}: its training data is gone ({err.filename}); give --data") from None
        args.skip_bad = config.get("skip_bad", False)  # the same objects as in training, in the same order
        arrays, report = _read(sources, stats["bands"] or None, args)
        rows, what, stem = ckpt["split"]["test"].numpy(), "test split", "test"
        if len(rows) == 0:
            raise TaskError(f"{run_dir}: the run's test split is empty (trained with --test-fraction 0)")
    y = arrays["labels"][rows]
    images = arrays["images"][rows]
    out_dir = args.out_dir or os.path.join(run_dir, f"eval_{stem}")
    os.makedirs(out_dir, exist_ok=True)
    print(f"evaluating {ckpt_path} (epoch {ckpt['epoch']}, {ckpt['model_kwargs']['backbone']}) on {what}: "
          f"{len(y)} objects, {int(y.sum())} lenses; TTA x{args.tta}, "
          f"{inference_precision(args.amp, args.device)}", flush=True)
    try:
        score = ensemble_scores([(ckpt, model, ckpt_path)], images, args, not args.no_progress)[0]
    except ShapeError as err:
        raise TaskError(str(err)) from None
    P = lambda name: os.path.join(out_dir, name)  # noqa: E731
    colors = lens_eval.palette(args.colorblind_safe)
    m = metrics.binary_metrics(y, score, n_bootstrap=args.n_bootstrap, seed=args.seed)
    summary = {"run": run_dir, "checkpoint": ckpt_path, "epoch": int(ckpt["epoch"]), "rows": what,
               "model": ckpt["model_kwargs"]["backbone"], "tta": args.tta, "metrics": m,
               "ingest": {k: v for k, v in report.items() if k != "bad"}}
    summary["roc_pr"] = lens_eval.roc_pr_plot(y, score, P("roc_pr.png"), colors=colors)
    summary["confusion"] = lens_eval.confusion_plot(y, (score >= 0.5).astype(int), P("confusion_matrix.png"),
                                                    colors=colors)
    summary["calibration"] = lens_eval.calibration_plot(y, score, P("calibration.png"), colors=colors)
    summary["histograms"] = lens_eval.score_histograms(y, score, P("score_histograms.png"), colors=colors)
    ids, files = arrays["ids"][rows], arrays["files"][rows]
    for name, sel, order in (("false_positives", y == 0, -1), ("false_negatives", y == 1, 1)):
        idx = np.flatnonzero(sel)[np.argsort(order * score[sel], kind="stable")][:args.n_examples]
        idx = idx[(score[idx] >= 0.5) if order < 0 else (score[idx] < 0.5)]
        lens_eval.image_grid(images[idx], [f"{ids[i]}\n{score[i]:.3f}" for i in idx], P(f"{name}.png"),
                             title=f"most confident {name.replace('_', ' ')} ({len(idx)})")
    # against the simulator's true parameters, at the score cut of FPR 1e-2 (0.5 means little under imbalance)
    cut = m.get("threshold_at_fpr_1e-2")
    cut = cut if cut is not None and np.isfinite(cut) else 0.5
    tables = {}
    for name, label, bins in (("theta_e", "Einstein radius (arcsec)", [0.5, 0.8, 1.1, 1.5, 2.0, 2.5]),
                              ("arc_snr", "arc S/N (i band)", [10, 20, 40, 80, 160, 1e6]),
                              ("magnification", "magnification", [1, 2, 4, 8, 16, 1e6])):
        values = arrays.get(f"params_{name}")
        if values is not None and np.isfinite(values[rows][y == 1]).any():
            tables[label] = metrics.binned_recall(y, score, values[rows], bins, threshold=cut)
    if tables:
        summary["recall_vs_parameters"] = lens_eval.recall_vs_parameter_plot(tables, P("recall_vs_parameters.png"),
                                                                             colors=colors)
        summary["recall_vs_parameters"]["threshold"] = cut
    kinds = arrays.get("params_kind")
    if kinds is not None and np.isfinite(kinds[rows]).all():  # simulated: how hard is each kind of non-lens?
        from physics.strong.scenes import KIND_CODES
        summary["auc_vs_nonlens_kind"] = {
            name: metrics.binary_metrics(y[(y == 1) | (kinds[rows] == code)], score[(y == 1) | (kinds[rows] == code)],
                                         n_bootstrap=0)["auc"]
            for name, code in KIND_CODES.items() if code and ((kinds[rows] == code) & (y == 0)).any()}
    write_csv(P("predictions.csv"), ["id", "label", "score", "file"],
               [[i, int(t), f"{s:.6f}", f] for i, t, s, f in zip(ids, y, score, files)])
    if args.candidates:
        summary["candidates"] = write_candidates(ids, score, files, images, args.candidates, P, y)
    by_kind = summary.get("auc_vs_nonlens_kind")
    kinds_text = " | AUC vs " + ", ".join(f"{k} {v:.3f}" for k, v in by_kind.items()) if by_kind else ""
    summary["headline"] = (f"AUC {m['auc']:.4f} [{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}] | AP "
                           f"{m['average_precision']:.4f} | TPR at FPR 1e-2 {m['tpr_at_fpr_1e-2']:.3f}, 1e-3 "
                           f"{m['tpr_at_fpr_1e-3']:.3f} | TPR0 {m['tpr0']:.3f} TPR10 {m['tpr10']:.3f} "
                           f"({m['n_pos']} lenses, {m['n_neg']} non-lenses){kinds_text}")
    summary["out_dir"] = out_dir
    return summary


def compare_columns(summary) -> dict:
    """What evaluate.py --compare shows of a run's evaluation."""
    m = summary["metrics"]
    return {"n_lenses": m["n_pos"], "n_nonlenses": m["n_neg"], "auc": m["auc"],
            "average_precision": m["average_precision"],
            "tpr_at_fpr_1e-2": m["tpr_at_fpr_1e-2"], "tpr_at_fpr_1e-3": m["tpr_at_fpr_1e-3"], "tpr0": m["tpr0"],
            "tpr10": m["tpr10"]}


def write_candidates(ids, score, files, images, n, P, y=None) -> dict:
    """The ranked catalogue (rank, id, score, file) of the n best-scored objects and their grid,
    as searches hand candidates to visual graders."""
    from plots import lens_eval
    top = np.argsort(-score, kind="stable")[:n]
    write_csv(P("candidates.csv"), ["rank", "id", "score", "file"],
               [[r + 1, ids[i], f"{score[i]:.6f}", files[i]] for r, i in enumerate(top)])
    lens_eval.image_grid(images[top], [f"#{r + 1} {ids[i]}\n{score[i]:.3f}" for r, i in enumerate(top)],
                         P("candidates.png"), title=f"top {len(top)} candidates")
    out = {"n": int(len(top)), "csv": P("candidates.csv"), "png": P("candidates.png")}
    if y is not None:
        out["lenses_among_them"] = int(np.asarray(y)[top].sum())
    return out
