"""Evaluate a trained run: metrics, predictions and the plots scientists expect.

    # the run's own held-out test split (never seen by training or checkpoint selection)
    python evaluate.py --experiment-name d64_l4_hier --data test.h5

    # another file (every event of it), colour-blind-safe plots
    python evaluate.py --run results/d64_l4_hier_patch_transformer_test_s42 --data other.h5 --colorblind-safe

    # on SLURM: sbatch/evaluate.sbatch

`--experiment-name` matches a run directory under --output by substring (the newest wins).
When --data is the file the run was trained on, only its test split is evaluated. Outputs go
to <run>/eval_<data stem>/: evaluation_summary.json, predictions.npz, confusion_matrix.png,
roc_curves.png, calibration.png, per_class_metrics.png, u0_dependency.png,
temporal_bias_check.png, early_detection_curve.png, evolution_<class>_<i>.png,
example_light_curves.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from engine.cli import OneLineErrorParser
from data import microlensing as task_data
from data import microlensing_h5 as mlh5
from data.lightcurves import light_curve_features, truncate
from engine.checkpoint import CheckpointError
from engine.inference import find_run, load_run, predict_log_probs
from plots import microlensing_eval as plots

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


class EvaluateError(Exception):
    """Bad input: reported as one line."""


def get_args_parser():
    p = OneLineErrorParser("evaluate.py", description=__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment-name", help="run directory name under --output, or part of it")
    which.add_argument("--run", help="a run directory or checkpoint file")
    p.add_argument("--output", default="results", help="folder holding run directories")
    p.add_argument("--data", default=None, help="HDF5 file (default: the run's training file, test split)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--early-detection", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--fractions", type=float, nargs="+", default=list(DEFAULT_FRACTIONS),
                   help="fractions of the season observed for the early-detection curve")
    p.add_argument("--n-evolution-per-type", type=int, default=2, help="probability-evolution plots per class")
    p.add_argument("--n-bootstrap", type=int, default=200)
    p.add_argument("--colorblind-safe", action="store_true")
    p.add_argument("--out-dir", default=None, help="default: <run>/eval_<data stem>")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and example selection")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    return p


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
            raise EvaluateError(f"{data_path}: the run's test split is empty (trained with --test-fraction 0)")
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


def main(args):
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        run = args.run or find_run(args.experiment_name, args.output)
        ckpt, model, ckpt_path = load_run(run, task_data.TASK, args.checkpoint)
    except CheckpointError as err:
        raise EvaluateError(str(err)) from None
    run_dir = os.path.dirname(os.path.abspath(ckpt_path))
    grid, stats, names = ckpt["grid"], ckpt["stats"], tuple(ckpt["class_names"])
    data_path = args.data or ckpt["config"]["data_abs"]
    if not os.path.isfile(data_path):
        raise EvaluateError(f"{data_path}: no such file")
    try:
        rows, what = select_rows(ckpt, data_path)
        features, y, params = task_data.h5_features(data_path, grid, rows, progress=not args.no_progress)
    except (mlh5.SchemaError, task_data.DataError) as err:
        raise EvaluateError(str(err)) from None
    out_dir = args.out_dir or os.path.join(run_dir, f"eval_{os.path.splitext(os.path.basename(data_path))[0]}")
    os.makedirs(out_dir, exist_ok=True)
    print(f"evaluating {ckpt_path} (epoch {ckpt['epoch']}) on {data_path} ({what}, {len(y)} events)", flush=True)

    def log_probs_of(feats, desc="predict"):
        return predict_log_probs(model, feats, stats, args.batch_size, device, not args.no_progress, desc)

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
    if args.early_detection:
        acc, per_class = [], {n: [] for n in names}
        for frac in args.fractions:
            feats, _, _ = task_data.h5_features(data_path, grid, rows, progress=False, truncate_fraction=frac)
            p = log_probs_of(feats, f"early {frac:.0%}").argmax(1)
            acc.append(float((p == y).mean()))
            for c, n in enumerate(names):
                per_class[n].append(float((p[y == c] == c).mean()) if (y == c).any() else float("nan"))
        summary["early_detection"] = plots.early_detection_plot(args.fractions, acc, P("early_detection_curve.png"),
                                                                per_class=per_class, class_names=names, colors=colors)
        summary["evolution"] = evolution_plots(raw, grid, log_probs_of, names, args.n_evolution_per_type, P, colors)
    raw_pred = np.exp(log_probs_of(light_curve_features(raw["time"], raw["mag"], raw["mag_err"], 0.0,
                                                        grid["n_bins"], grid["bin_days"])))
    plots.example_grid(raw["time"], raw["mag"], raw["mag_err"], raw["labels"].astype(int), raw_pred.argmax(1),
                       raw_pred, names, P("example_light_curves.png"), seed=args.seed, colors=colors)

    with open(P("evaluation_summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    m = summary["metrics"]
    recall = ", ".join(f"{n} {summary['per_class'][n]['recall']:.3f}" for n in names)
    early = ""
    if args.early_detection:
        early = " | early detection " + ", ".join(f"{f:.0%}: {a:.3f}" for f, a in zip(args.fractions, acc))
    print(f"accuracy {m['accuracy']:.4f} [{m['accuracy_ci95'][0]:.3f}, {m['accuracy_ci95'][1]:.3f}] | recall "
          f"{recall} | ECE {m['ece']:.3f}{early}\nplots and metrics in {out_dir}", flush=True)
    return 0


def _examples(y, n_per_class, seed):
    """Positions (into the evaluated rows) of up to n_per_class random events per class."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(y == c))[:n_per_class] for c in np.unique(y)]
    return np.concatenate(picks) if picks else np.zeros(0, int)


def evolution_plots(raw, grid, log_probs_of, names, n_per_class, P, colors, n_steps=24):
    """Probabilities of a few events as the season is observed, each from its truncated curve."""
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


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    try:
        sys.exit(main(arguments))
    except EvaluateError as error:
        sys.exit(f"evaluate.py: error: {error}")
