"""Microlensing light curves: flat / PSPL / binary (/ variable) from a simulator HDF5 file or text photometry.

A file simulated with --n-variable > 0 holds a fourth class, `variable` (non-lensing variable
stars); its runs are four-class and their hierarchical head adds flat vs variable among the
unlensed (models/layers.ClassifierHead).

Data: `data.microlensing` (binned features of every curve, in the node's RAM cache). Models:
`cnn_gru`, `patch_transformer` (hierarchical heads, `models/layers.ClassifierLoss`). The best
checkpoint is chosen on validation accuracy.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from data import microlensing as task_data
from data import microlensing_h5 as mlh5
from data.lightcurves import FEATURE_SETS, feature_stats, normalize
from data.photometry import is_photometry_file
from engine import distributed
from engine.inference import predict_log_probs
from models import create_model, list_models, model_kwargs
from models.layers import ClassifierLoss
from tasks import TaskError, TrainData, stratified_split
from tasks.microlensing_eval import BINARY_FALSE_ALARM, VARIABLE_FALSE_ALARM, decide, operating_point
from tasks.microlensing_eval import add_evaluate_args, compare_columns, evaluate  # noqa: F401 (task contract)

TASK = task_data.TASK
CLASS_NAMES = task_data.CLASS_NAMES
SELECT_METRIC = "val_acc"
COMPARE_METRIC = "auroc_macro"  # evaluate.py --compare plots it against training time
DEFAULTS = dict(model="patch_transformer", epochs=30, batch_size=64, lr=5e-4, weight_decay=1e-4,
                warmup_epochs=1.0, val_fraction=0.1, test_fraction=0.1, dropout=0.1)
IDENTITY_KEYS = ("task", "model", "d_model", "n_layers", "window_size", "attention_pooling", "hierarchical",
                 "use_aux_head", "patch_size", "season_days", "bin_minutes", "features", "scaled_bins", "scaled_span",
                 "context_bins", "context_days", "despike", "survey_augment",
                 "truncate_augment", "data_fingerprint", "seed", "val_fraction", "test_fraction")
IDENTITY_DEFAULTS = {"scaled_bins": 0, "scaled_span": 4.0, "context_bins": 0, "context_days": 15.0, "despike": False}  # runs made before these options ran as their defaults


# --------------------------------------------------------------------------- train.py
def add_train_args(parser):
    g = parser.add_argument_group("microlensing (--task microlensing)")
    g.add_argument("--season-days", type=float, default=72.0)
    g.add_argument("--bin-minutes", type=float, default=120.0, help="feature grid step in minutes (15 = full Roman cadence)")
    g.add_argument("--features", choices=tuple(FEATURE_SETS), default="fspl_residual",
                   help="fspl_residual: the basic channels plus the residual from each curve's best single-lens fit, "
                        "point or finite source (a peak rounded by the source is no anomaly); pspl_residual: the same "
                        "from a point-source fit only; basic: flux, gap, error and mask only (data/lightcurves.py)")
    g.add_argument("--survey-augment", type=float, default=0.0, metavar="P",
                   help="fraction of curves seen at a ground-survey cadence (OGLE/MOA/KMTNet-like sampling, nightly "
                        "and weather gaps, rescaled errors, outliers: data/survey_augment.py), so one model serves "
                        "dense Roman and sparse ground data; 0 = off")
    g.add_argument("--truncate-augment", type=float, default=0.3, metavar="P",
                   help="fraction of curves seen cut at a random 10-100%% of the season, features and fit from the "
                        "epochs kept (as evaluate.py's early detection sees them); 0 = off")
    g.add_argument("--scaled-bins", type=int, default=0, metavar="N",
                   help="add N bins of each curve in units of its fitted Einstein time (tau = (t - t0) / tE over "
                        "+-(--scaled-span)) after the day grid, so events of any tE look alike there; residual "
                        "feature sets only; 0 = the day grid only")
    g.add_argument("--scaled-span", type=float, default=4.0, metavar="K", help="the scaled view covers t0 +- K tE")
    g.add_argument("--context-bins", type=int, default=0, metavar="N",
                   help="add N bins of --context-days each, centred on the window, from every epoch of the years "
                        "around it (a real file's other seasons, a simulated star's context: physics/microlensing/"
                        "context.py), residual against the window's single-lens fit: a variable varies there, a "
                        "lensed star does not; residual feature sets only; 0 = the window only")
    g.add_argument("--context-days", type=float, default=15.0, metavar="D", help="width of a context bin, days")
    g.add_argument("--despike", action=argparse.BooleanOptionalAction, default=False,
                   help="drop isolated one-epoch outliers (an epoch far from both neighbours while they agree: "
                        "data/lightcurves.despike) before the features, in training, evaluate and predict alike; "
                        "ground photometry has them")
    g.add_argument("--d-model", type=int, default=64)
    g.add_argument("--n-layers", type=int, default=4)
    g.add_argument("--window-size", type=int, default=5, help="causal conv kernel size")
    g.add_argument("--patch-size", type=int, default=None,
                   help="patch_transformer: grid steps per token (default 16); mae, superres: pixels per ViT patch")
    g.add_argument("--attention-pooling", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--hierarchical", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--use-aux-head", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--stage1-weight", type=float, default=1.0)
    g.add_argument("--stage2-weight", type=float, default=1.0)
    g.add_argument("--aux-weight", type=float, default=0.5)
    g.add_argument("--binary-false-alarm", type=float, default=BINARY_FALSE_ALARM, metavar="F",
                   help="operating point: a lensed event is called binary where P(binary | lensed) exceeds the "
                        "threshold (>= 0.5) at which at most this share of validation single lenses are; "
                        "chosen with the best checkpoint, used by evaluate.py and predict.py")
    g.add_argument("--variable-false-alarm", type=float, default=VARIABLE_FALSE_ALARM, metavar="F",
                   help="operating point with a variable class: an event is called lensing where P(pspl) + P(binary) "
                        "exceeds the threshold (>= 0.5) at which at most this share of validation variables are")
    g.add_argument("--calibrate-variables", metavar="FILE", default=None,
                   help="once trained, re-choose that lensing threshold on the variables of FILE (a simulator file "
                        "simulated apart, e.g. --n-variable 2500 with another seed), as evaluate.py "
                        "--calibrate-variables does: a validation split's few hundred variables leave a 1%% "
                        "threshold on 2-3 curves")


def check_train_args(args):
    if getattr(args, "init_from", None) or getattr(args, "label_fraction", 1.0) < 1:
        raise TaskError("--init-from / --label-fraction are options of the image tasks (lens, substructure, superres)")
    args.patch_size = 16 if args.patch_size is None else args.patch_size
    if args.model not in list_models("light_curve"):
        raise TaskError(f"unknown model {args.model!r}; choose from {', '.join(list_models('light_curve'))}")
    for view, width in (("scaled", "span"), ("context", "days")):  # the two extra views: same rules
        bins = getattr(args, f"{view}_bins")
        if bins < 0 or getattr(args, f"{view}_{width}") <= 0:
            raise TaskError(f"--{view}-bins must be >= 0 and --{view}-{width} > 0")
        if bins and args.features == "basic":
            raise TaskError(f"--{view}-bins needs a single-lens fit: --features fspl_residual or pspl_residual")
        if bins % args.patch_size and args.model == "patch_transformer":
            raise TaskError(f"--{view}-bins {bins} must be a multiple of --patch-size {args.patch_size}")
    for name in ("d_model", "n_layers"):
        if getattr(args, name) < 1:
            raise TaskError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("binary_false_alarm", "variable_false_alarm"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise TaskError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")
    for name in ("survey_augment", "truncate_augment"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise TaskError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    if args.survey_augment + args.truncate_augment > 1.0:
        raise TaskError("--survey-augment and --truncate-augment are fractions of one batch: their sum must be <= 1")
    if not args.data:
        raise TaskError("--data FILE (a simulator HDF5 file) is required for --task microlensing")
    if not os.path.isfile(args.data):
        raise TaskError(f"{args.data}: no such file")
    if args.calibrate_variables:  # checked now, not after hours of training
        from tasks.microlensing_eval import calibration_rows
        try:
            training = mlh5.fingerprint(args.data)
        except mlh5.SchemaError as err:
            raise TaskError(str(err)) from None
        calibration_rows(args.calibrate_variables, training)


def default_name(args) -> str:
    stem = os.path.splitext(os.path.basename(args.data))[0]
    return f"d{args.d_model}_l{args.n_layers}_{'hier' if args.hierarchical else 'flat'}_{args.model}_{stem}_s{args.seed}"


def data_identity(args) -> dict:
    """Identifies the data by content: a staged copy is the same data, a regenerated file is not."""
    try:
        return {"data_abs": os.path.abspath(args.data), "data_fingerprint": mlh5.fingerprint(args.data)}
    except mlh5.SchemaError as err:
        raise TaskError(str(err)) from None


def load_train_data(args, info) -> TrainData:
    grid = task_data.grid_from_args(args)
    try:
        arrays = task_data.cached_h5(args.data, grid, info, args.cache_dir, not args.no_progress,
                                     survey_seed=args.seed if args.survey_augment > 0 else None,
                                     truncate_seed=args.seed if args.truncate_augment > 0 else None)
        names = task_data.class_names_of(args.data)
    except task_data.DataError as err:
        raise TaskError(str(err)) from None
    return TrainData(arrays, np.asarray(arrays["labels"]), {"grid": grid, "unit": "events", "class_names": names})


def make_split(data, args) -> dict:
    return stratified_split(data.labels, args.seed, args.val_fraction, args.test_fraction)


def fit_stats(data, split, args, info):
    return distributed.broadcast_object(
        feature_stats(data.arrays["features"], split["train"]) if info.is_main else None, info)


def make_fetch(data, stats, args, device, train: bool):
    """Batches of normalised features; with --survey-augment P (--truncate-augment Q) a fraction P
    (Q) of them from the curves' ground-survey (truncated) versions. Which rows, is a function of
    (seed, epoch, row) in training (the loop calls fetch.set_epoch), so any number of processes
    and a resumed run see the same batches, and of (seed, row) in validation."""
    copies = [(key, p) for key, p in (("features_ground", args.survey_augment),
                                      ("features_truncated", args.truncate_augment)) if p > 0]
    n = len(data.labels)
    draws = {"coin": np.random.default_rng([args.seed, 1]).random(n)}

    def set_epoch(epoch: int):
        draws["coin"] = np.random.default_rng([args.seed, 2, epoch]).random(n)

    def fetch(indices):
        x, y = task_data.gather(data.arrays, indices)
        draw = draws["coin"][np.asarray(indices)]
        low = 0.0
        for key, p in copies:
            pick = (draw >= low) & (draw < low + p)
            low += p
            if pick.any():
                x[torch.from_numpy(pick)] = task_data.gather(data.arrays, np.asarray(indices)[pick], key)[0]
        return normalize(x, stats), y
    if train:
        fetch.set_epoch = set_epoch
    return fetch


def build_model(args, data, stats):
    kwargs = model_kwargs(args.model, dict(vars(args), in_channels=data.arrays["features"].shape[-1],
                                           n_classes=len(data.meta["class_names"])))
    return create_model(args.model, **kwargs), args.model, kwargs


def make_criterion(data, split, args):
    k = len(data.meta["class_names"])
    counts = np.bincount(data.labels[split["train"]], minlength=k)
    weights = (counts.sum() / (k * np.maximum(counts, 1))).tolist() if args.class_weights == "balanced" else [1.0] * k
    return ClassifierLoss(weights, args.stage1_weight, args.stage2_weight, args.aux_weight)


def val_metrics(y, log_probs) -> dict:
    return {}


def val_decision(y, log_probs, args) -> dict:
    """Kept in each checkpoint: the operating point of its own validation predictions."""
    return {"operating_point": operating_point(y, log_probs, args.binary_false_alarm, args.variable_false_alarm)}


def checkpoint_extras(data, stats, args) -> dict:
    return {"grid": data.meta["grid"]}


def after_training(run_dir, args):
    """--calibrate-variables: the best checkpoint's lensing threshold re-chosen on that file's
    variables (tasks.microlensing_eval.calibrate_variables)."""
    if not args.calibrate_variables:
        return
    from engine.inference import load_run
    from tasks.microlensing_eval import calibrate_variables
    ckpt, model, ckpt_path = load_run(run_dir, TASK, "best")
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def log_probs_of(feats, desc):
        return predict_log_probs(model, feats, ckpt["stats"], 256, device, not args.no_progress, desc)
    calibrate_variables(ckpt, ckpt_path, args.calibrate_variables, ckpt["grid"], log_probs_of, args)


# --------------------------------------------------------------------------- predict.py
def input_files(paths):
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, f) for f in os.listdir(path)
                           if f.endswith((".h5", ".hdf5")) or is_photometry_file(f))
            if not found:
                raise TaskError(f"{path}: no .h5 or photometry files in this folder")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise TaskError(f"{path}: no such file or folder")
    return files


def input_events(args):
    """What to predict: [(id, [files])]. A plain input is one item per file (an HDF5 file gives a
    row per event); with --event-folders every folder is one event of its photometry files
    (one file per telescope or band); each --event FILE... is one event."""
    items = []
    for path in args.input:
        if getattr(args, "event_folders", False) and os.path.isdir(path):
            subdirs = sorted(d for d in (os.path.join(path, n) for n in os.listdir(path)) if os.path.isdir(d))
            for folder in subdirs or [path]:
                files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if is_photometry_file(f))
                if not files:
                    raise TaskError(f"{folder}: no photometry files in this event folder")
                items.append((os.path.basename(os.path.normpath(folder)), files))
        else:
            items += [(None, [f]) for f in input_files([path])]
    for files in getattr(args, "event", None) or []:
        for f in files:
            if not os.path.isfile(f):
                raise TaskError(f"{f}: no such file (in --event)")
        items.append((None, files))
    if not items:
        raise TaskError("nothing to predict: give --input files or folders, or --event FILE [FILE ...]")
    return items


def _features(ident, files, grid, progress):
    """(features, ids, infos) of one input item."""
    if len(files) == 1 and ident is None:
        return task_data.file_features(files[0], grid, progress=progress)
    features, info = task_data.event_features(files, grid, ident)
    return features, [ident or "+".join(os.path.basename(f) for f in files)], [info]


def ensemble_point(ckpts):
    """The operating point of an ensemble: its members' mean threshold (argmax where one has none,
    e.g. runs trained before operating points were kept)."""
    points = [c.get("operating_point") for c in ckpts]
    if not all(points):
        return None
    keys = [k for k in ("binary_threshold", "false_alarm", "lensed_threshold", "variable_false_alarm")
            if all(k in p for p in points)]
    return {k: float(np.mean([p[k] for p in points])) for k in keys}


def predict(runs, args):
    """(header, rows, skipped): probabilities averaged over the runs, one row per light curve or
    multi-file event."""
    import json
    import sys

    from tqdm import tqdm
    names = tuple(runs[0][0]["class_names"])
    point = ensemble_point([ckpt for ckpt, _, _ in runs])
    items = input_events(args)
    rows, bad = [], []
    for ident, files in tqdm(items, desc="files", disable=args.no_progress or len(items) < 2):
        log_probs, by_grid = [], {}  # members sharing a feature grid share one read of the file
        try:
            for ckpt, model, _ in runs:
                key = json.dumps(ckpt["grid"], sort_keys=True)
                if key not in by_grid:
                    by_grid[key] = _features(ident, files, ckpt["grid"], not args.no_progress)
                feats, ids, infos = by_grid[key]
                log_probs.append(predict_log_probs(model, feats, ckpt["stats"], args.batch_size, args.device))
        except task_data.DataError as err:
            if not args.skip_bad:
                raise TaskError(str(err)) from None
            bad.append(str(err))
            print(f"predict.py: skipped: {err}", file=sys.stderr)
            continue
        probs = np.mean([np.exp(lp) for lp in log_probs], axis=0)  # ensemble: average probabilities
        pred = decide(probs, point)
        for i, ident_i in enumerate(ids):
            rows.append([ident_i, *(f"{p:.6f}" for p in probs[i]), names[int(pred[i])],
                         f"{infos[i]['window_start']:.5f}", infos[i].get("note", "")])
    header = ["id", *(f"p_{n}" for n in names), "class", "window_start", "note"]
    if len(rows) <= 10:
        for r in rows:
            print("  " + "  ".join(r[:1] + [f"{n}={v}" for n, v in zip(names, r[1:1 + len(names)])]
                                   + [r[1 + len(names)]] + ([f"({r[-1]})"] if r[-1] else [])))
    return header, rows, len(bad)
