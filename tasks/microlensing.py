"""Microlensing light curves: flat / PSPL / binary from a simulator HDF5 file or text photometry.

Data: `data.microlensing` (binned features of every curve, in the node's RAM cache). Models:
`cnn_gru`, `patch_transformer` (hierarchical heads, `models/layers.ClassifierLoss`). The best
checkpoint is chosen on validation accuracy.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from data import microlensing as task_data
from data import microlensing_h5 as mlh5
from data.lightcurves import feature_stats, light_curve_features, normalize, truncate
from data.photometry import is_photometry_file
from engine import distributed
from engine.inference import predict_log_probs
from models import create_model, list_models, model_kwargs
from models.layers import ClassifierLoss
from tasks import TaskError, TrainData, stratified_split

TASK = task_data.TASK
CLASS_NAMES = task_data.CLASS_NAMES
SELECT_METRIC = "val_acc"
COMPARE_METRIC = "auroc_macro"  # evaluate.py --compare plots it against training time
DEFAULTS = dict(model="patch_transformer", epochs=30, batch_size=64, lr=5e-4, weight_decay=1e-4,
                warmup_epochs=1.0, val_fraction=0.1, test_fraction=0.1, dropout=0.1)
IDENTITY_KEYS = ("task", "model", "d_model", "n_layers", "window_size", "attention_pooling", "hierarchical",
                 "use_aux_head", "patch_size", "season_days", "bin_minutes", "data_fingerprint", "seed",
                 "val_fraction", "test_fraction")
DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


# --------------------------------------------------------------------------- train.py
def add_train_args(parser):
    g = parser.add_argument_group("microlensing (--task microlensing)")
    g.add_argument("--season-days", type=float, default=72.0)
    g.add_argument("--bin-minutes", type=float, default=120.0, help="feature grid step in minutes (15 = full Roman cadence)")
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


def check_train_args(args):
    if getattr(args, "init_from", None) or getattr(args, "label_fraction", 1.0) < 1:
        raise TaskError("--init-from / --label-fraction are options of the image tasks (lens, substructure, superres)")
    args.patch_size = 16 if args.patch_size is None else args.patch_size
    if args.model not in list_models("light_curve"):
        raise TaskError(f"unknown model {args.model!r}; choose from {', '.join(list_models('light_curve'))}")
    for name in ("d_model", "n_layers"):
        if getattr(args, name) < 1:
            raise TaskError(f"--{name.replace('_', '-')} must be >= 1")
    if not args.data:
        raise TaskError("--data FILE (a simulator HDF5 file) is required for --task microlensing")
    if not os.path.isfile(args.data):
        raise TaskError(f"{args.data}: no such file")


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
        arrays = task_data.cached_h5(args.data, grid, info, args.cache_dir, not args.no_progress)
    except task_data.DataError as err:
        raise TaskError(str(err)) from None
    return TrainData(arrays, np.asarray(arrays["labels"]), {"grid": grid, "unit": "events"})


def make_split(data, args) -> dict:
    return stratified_split(data.labels, args.seed, args.val_fraction, args.test_fraction)


def fit_stats(data, split, args, info):
    return distributed.broadcast_object(
        feature_stats(data.arrays["features"], split["train"]) if info.is_main else None, info)


def make_fetch(data, stats, args, device, train: bool):
    def fetch(indices):
        x, y = task_data.gather(data.arrays, indices)
        return normalize(x, stats), y
    return fetch


def build_model(args, data, stats):
    kwargs = model_kwargs(args.model, dict(vars(args), in_channels=4, n_classes=3))
    return create_model(args.model, **kwargs), args.model, kwargs


def make_criterion(data, split, args):
    counts = np.bincount(data.labels[split["train"]], minlength=3)
    weights = (counts.sum() / (3 * np.maximum(counts, 1))).tolist() if args.class_weights == "balanced" else [1.0] * 3
    return ClassifierLoss(weights, args.stage1_weight, args.stage2_weight, args.aux_weight)


def val_metrics(y, log_probs) -> dict:
    return {}


def checkpoint_extras(data, stats, args) -> dict:
    return {"grid": data.meta["grid"]}


# --------------------------------------------------------------------------- evaluate.py
def add_evaluate_args(parser):
    g = parser.add_argument_group("microlensing")
    g.add_argument("--early-detection", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--fractions", type=float, nargs="+", default=list(DEFAULT_FRACTIONS),
                   help="fractions of the season observed for the early-detection curve")
    g.add_argument("--n-evolution-per-type", type=int, default=2, help="probability-evolution plots per class")


def select_rows(ckpt, data_path):
    """Rows to evaluate: the test split when data_path is the training file, else all rows."""
    with mlh5.open_checked(data_path) as f:
        n = len(f["labels"])
    config = ckpt["config"]
    if "data_fingerprint" in config:  # same content at any path (e.g. a copy staged to /dev/shm)
        same = mlh5.fingerprint(data_path) == config["data_fingerprint"]
    else:
        same = os.path.abspath(data_path) == config.get("data_abs")
    if same:
        rows = ckpt["split"]["test"].numpy()
        if len(rows) == 0:
            raise TaskError(f"{data_path}: the run's test split is empty (trained with --test-fraction 0)")
        return rows, "test split"
    return np.arange(n), "all rows"


def metrics_summary(y, probs, pred):
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
    out = {"accuracy": float((pred == y).mean()), "n_events": int(len(y)),
           "precision_macro": float(precision_score(y, pred, average="macro", zero_division=0)),
           "recall_macro": float(recall_score(y, pred, average="macro", zero_division=0)),
           "f1_macro": float(f1_score(y, pred, average="macro", zero_division=0))}
    if len(np.unique(y)) == 3:
        out["auroc_macro"] = float(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
        out["auroc_weighted"] = float(roc_auc_score(y, probs, multi_class="ovr", average="weighted"))
    rng = np.random.default_rng(0)
    boot = [(pred[i] == y[i]).mean() for i in (rng.integers(0, len(y), len(y)) for _ in range(1000))]
    out["accuracy_ci95"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    return out


def evaluate(ckpt, model, ckpt_path, args) -> dict:
    """Metrics and plots of a run on its test split or on every event of another file."""
    from plots import microlensing_eval as plots
    run_dir = os.path.dirname(os.path.abspath(ckpt_path))
    grid, stats, names = ckpt["grid"], ckpt["stats"], tuple(ckpt["class_names"])
    data_path = args.data[0] if args.data else ckpt["config"]["data_abs"]
    if not os.path.isfile(data_path):
        raise TaskError(f"{data_path}: no such file")
    try:
        rows, what = select_rows(ckpt, data_path)
        features, y, params = task_data.h5_features(data_path, grid, rows, progress=not args.no_progress)
    except (mlh5.SchemaError, task_data.DataError) as err:
        raise TaskError(str(err)) from None
    out_dir = args.out_dir or os.path.join(run_dir, f"eval_{os.path.splitext(os.path.basename(data_path))[0]}")
    os.makedirs(out_dir, exist_ok=True)
    print(f"evaluating {ckpt_path} (epoch {ckpt['epoch']}) on {data_path} ({what}, {len(y)} events)", flush=True)

    def log_probs_of(feats, desc="predict"):
        return predict_log_probs(model, feats, stats, args.batch_size, args.device, not args.no_progress, desc)

    probs = np.exp(log_probs_of(features))
    pred = probs.argmax(1)
    colors = plots.palette(args.colorblind_safe)
    P = lambda name: os.path.join(out_dir, name)  # noqa: E731
    summary = {"run": run_dir, "checkpoint": ckpt_path, "epoch": int(ckpt["epoch"]), "data": os.path.abspath(data_path),
               "rows": what, "model": ckpt["model_name"], "metrics": metrics_summary(y, probs, pred)}
    summary["confusion"] = plots.confusion_matrix_plot(y, pred, names, P("confusion_matrix.png"), colors=colors)
    summary["roc"] = plots.roc_plot(y, probs, names, P("roc_curves.png"), n_bootstrap=args.n_bootstrap,
                                    seed=args.seed, colors=colors)
    summary["calibration"] = plots.reliability_plot(y, probs, P("calibration.png"), colors=colors)
    summary["metrics"]["ece"] = summary["calibration"]["ece"]
    summary["per_class"] = plots.per_class_metrics_plot(y, pred, names, P("per_class_metrics.png"), colors=colors)
    summary["u0_dependency"] = plots.u0_dependency_plot(params["u0"], y, pred, P("u0_dependency.png"), colors=colors)
    summary["t0_check"] = plots.t0_check_plot(params["t0"], y, pred, names, P("temporal_bias_check.png"),
                                              season_days=grid["season_days"], colors=colors)
    np.savez(P("predictions.npz"), rows=rows, y_true=y, y_pred=pred, probs=probs, u0=params["u0"], t0=params["t0"],
             class_names=np.array(names))

    raw = mlh5.load(data_path, np.sort(rows[_examples(y, 4 * max(args.n_evolution_per_type, 3), args.seed)]))
    acc = []
    if args.early_detection:
        per_class = {n: [] for n in names}
        for frac in args.fractions:
            feats, _, _ = task_data.h5_features(data_path, grid, rows, progress=False, truncate_fraction=frac)
            p = log_probs_of(feats, f"early {frac:.0%}").argmax(1)
            acc.append(float((p == y).mean()))
            for c, n in enumerate(names):
                per_class[n].append(float((p[y == c] == c).mean()) if (y == c).any() else float("nan"))
        summary["early_detection"] = plots.early_detection_plot(args.fractions, acc, P("early_detection_curve.png"),
                                                                per_class=per_class, class_names=names, colors=colors)
        summary["evolution"] = _evolution_plots(raw, grid, log_probs_of, names, args.n_evolution_per_type, P, colors)
    raw_pred = np.exp(log_probs_of(light_curve_features(raw["time"], raw["mag"], raw["mag_err"], 0.0,
                                                        grid["n_bins"], grid["bin_days"])))
    plots.example_grid(raw["time"], raw["mag"], raw["mag_err"], raw["labels"].astype(int), raw_pred.argmax(1),
                       raw_pred, names, P("example_light_curves.png"), seed=args.seed, colors=colors)
    m = summary["metrics"]
    recall = ", ".join(f"{n} {summary['per_class'][n]['recall']:.3f}" for n in names)
    early = " | early detection " + ", ".join(f"{f:.0%}: {a:.3f}" for f, a in zip(args.fractions, acc)) if acc else ""
    summary["headline"] = (f"accuracy {m['accuracy']:.4f} [{m['accuracy_ci95'][0]:.3f}, {m['accuracy_ci95'][1]:.3f}] "
                           f"| recall {recall} | ECE {m['ece']:.3f}{early}")
    summary["out_dir"] = out_dir
    return summary


def _examples(y, n_per_class, seed):
    """Positions (into the evaluated rows) of up to n_per_class random events per class."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(y == c))[:n_per_class] for c in np.unique(y)]
    return np.concatenate(picks) if picks else np.zeros(0, int)


def _evolution_plots(raw, grid, log_probs_of, names, n_per_class, P, colors, n_steps=24):
    """Probabilities of a few events as the season is observed, each from its truncated curve."""
    from plots import microlensing_eval as plots
    fractions = np.linspace(1.0 / n_steps, 1.0, n_steps)
    result = {}
    labels = raw["labels"].astype(int)
    for c, name in enumerate(names):
        for k, i in enumerate(np.flatnonzero(labels == c)[:n_per_class]):
            cuts = [truncate(raw["time"], raw["mag"][i], raw["mag_err"][i], f, grid["season_days"]) for f in fractions]
            mags, errs = np.stack([m for m, _ in cuts]), np.stack([e for _, e in cuts])
            probs = np.exp(log_probs_of(light_curve_features(raw["time"], mags, errs, 0.0, grid["n_bins"],
                                                             grid["bin_days"]), "evolution"))
            result[f"{name}_{k}"] = plots.evolution_plot(
                raw["time"], raw["mag"][i], raw["mag_err"][i], fractions, probs, c, names,
                P(f"evolution_{name}_{k}.png"), title=f"{name} event {k}", colors=colors)
    return result


def compare_columns(summary) -> dict:
    """What evaluate.py --compare shows of a run's evaluation."""
    m = summary["metrics"]
    return {"accuracy": m["accuracy"], "auroc_macro": m.get("auroc_macro", float("nan")), "ece": m["ece"]}


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


def predict(runs, args):
    """(header, rows, skipped): probabilities averaged over the runs, one row per light curve."""
    import json
    import sys

    from tqdm import tqdm
    names = tuple(runs[0][0]["class_names"])
    files = input_files(args.input)
    rows, bad = [], []
    for path in tqdm(files, desc="files", disable=args.no_progress or len(files) < 2):
        log_probs, by_grid = [], {}  # members sharing a feature grid share one read of the file
        try:
            for ckpt, model, _ in runs:
                key = json.dumps(ckpt["grid"], sort_keys=True)
                if key not in by_grid:
                    by_grid[key] = task_data.file_features(path, ckpt["grid"], progress=not args.no_progress)
                feats, ids, infos = by_grid[key]
                log_probs.append(predict_log_probs(model, feats, ckpt["stats"], args.batch_size, args.device))
        except task_data.DataError as err:
            if not args.skip_bad:
                raise TaskError(str(err)) from None
            bad.append(str(err))
            print(f"predict.py: skipped: {err}", file=sys.stderr)
            continue
        probs = np.mean([np.exp(lp) for lp in log_probs], axis=0)  # ensemble: average probabilities
        for i, ident in enumerate(ids):
            rows.append([ident, *(f"{p:.6f}" for p in probs[i]), names[int(probs[i].argmax())],
                         f"{infos[i]['window_start']:.5f}"])
    header = ["id", *(f"p_{n}" for n in names), "class", "window_start"]
    if len(rows) <= 10:
        for r in rows:
            print("  " + "  ".join(r[:1] + [f"{n}={v}" for n, v in zip(names, r[1:4])] + [r[4]]))
    return header, rows, len(bad)

