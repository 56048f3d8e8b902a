"""Evaluate a trained run: metrics, predictions and the plots scientists expect.

    # microlensing: the run's own held-out test split (never seen by training or selection)
    python evaluate.py --experiment-name d64_l4_hier --data test.h5
    # another file (every event of it), colour-blind-safe plots
    python evaluate.py --run results/d64_l4_hier_patch_transformer_test_s42 --data other.h5 --colorblind-safe

    # lens finding: the run's test split, then other data (FITS roots, .npy folders, HDF5) with a
    # ranked candidate catalogue and an inspection grid of the 64 best-scored objects
    python evaluate.py --run results/lens_resnet18_lsst_s42
    python evaluate.py --run results/lens_resnet18_lsst_s42 --data survey_cutouts/ --candidates 64
    # hard-negative mining: a labelled pool the run never saw, its confident false positives into the next run
    python evaluate.py --run results/lens_resnet18_lsst_s42 --data mining_pool/
    python train.py --task lens --data lsst --hard-negatives results/lens_resnet18_lsst_s42/eval_mining_pool/false_positives.csv

    # an MAE run: held-out reconstruction loss and panels; a super-resolution run: PSNR / SSIM against bicubic
    python evaluate.py --run results/mae_common_s42
    python evaluate.py --run results/superres_edsr_sr_s42

    # one table of several runs (CSV and Markdown); runs not evaluated yet are evaluated first
    python evaluate.py --compare results/lens_resnet18_lsst_s42 results/lens_convnext_nano_lsst_s42
    python evaluate.py --compare results/lens_* elsewhere/eval_survey   # runs and evaluation folders

    # on SLURM: sbatch/evaluate.sbatch

`--experiment-name` matches a run directory under --output by substring (the newest wins); the
task is the run's. Outputs go to <run>/eval_<data stem>/ (evaluation_summary.json, predictions,
plots; tasks/<task>.py lists them).
Microlensing: when --data is the file the run was trained on, only its test split is evaluated;
confusion_matrix.png, roc_curves.png, calibration.png, per_class_metrics.png, u0_dependency.png,
temporal_bias_check.png, early_detection_curve.png, evolution_<class>_<i>.png, example_light_curves.png.
Lens: roc_pr.png, confusion_matrix.png, calibration.png, score_histograms.png,
false_positives.png, false_negatives.png, recall_vs_parameters.png (simulated data),
false_positives.csv (every non-lens scored >= 0.5: train.py --hard-negatives takes it),
candidates.csv and candidates.png (--candidates N).
Substructure: roc_curves.png, confusion_matrix.png, calibration.png, per_class_metrics.png,
misclassified.png, accuracy_vs_parameters.png (simulated data), predictions.csv.
MAE: reconstructions.png, reconstruction_losses.csv. Superres: examples.png,
psnr_ssim_vs_bicubic.png, per_image_metrics.csv (the model and bicubic on the same pairs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from engine.checkpoint import CheckpointError
from engine.cli import OneLineErrorParser
from engine.inference import find_run, load_run
from tasks import TASKS, TaskError, get_task


EVALUATIONS_LIST = "evaluations.txt"  # in a run directory: evaluation folders written elsewhere (--out-dir)


class EvaluateError(Exception):
    """Bad input: reported as one line."""


def get_args_parser():
    p = OneLineErrorParser("evaluate.py", description=__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment-name", help="run directory name under --output, or part of it")
    which.add_argument("--run", help="a run directory or checkpoint file")
    which.add_argument("--compare", nargs="+", metavar="RUN_DIR",
                       help="one table of runs (model, parameters, training time, samples/s, metrics): "
                            "<--out-dir or .>/comparison.csv and .md, and the task's metric against training "
                            "time (comparison_<metric>_vs_time.png); RUN_DIR may be a glob, or an evaluation "
                            "folder (one with evaluation_summary.json); a run's newest evaluation is used, wherever "
                            "it was written, and a run not evaluated yet is evaluated first (its test split)")
    p.add_argument("--output", default="results", help="folder holding run directories")
    p.add_argument("--data", nargs="+", default=None,
                   help="data to evaluate (default: the run's own data, test split); lens: FITS roots, "
                        ".npy folders or HDF5 files")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n-bootstrap", type=int, default=200)
    p.add_argument("--colorblind-safe", action="store_true")
    p.add_argument("--out-dir", default=None, help="default: <run>/eval_<data stem>")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and example selection")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    for name in TASKS:
        get_task(name).add_evaluate_args(p)
    return p


def evaluations_of(run) -> list[str]:
    """evaluation_summary.json files of a run, oldest first: its eval_*/ folders and those written
    elsewhere with --out-dir (listed in <run>/evaluations.txt)."""
    import glob
    paths = glob.glob(os.path.join(run, "eval_*", "evaluation_summary.json"))
    listed = os.path.join(run, EVALUATIONS_LIST)
    if os.path.isfile(listed):
        with open(listed) as f:
            paths += [os.path.join(line.strip(), "evaluation_summary.json") for line in f if line.strip()]
    return sorted({p for p in paths if os.path.isfile(p)}, key=os.path.getmtime)


def compare(args):
    """Rows of runs side by side, from their newest evaluation_summary.json and metrics.jsonl."""
    import csv
    import glob
    rows = []
    for item in sorted({r for pattern in args.compare for r in (glob.glob(pattern) or [pattern])}):
        if os.path.isfile(os.path.join(item, "evaluation_summary.json")):  # an evaluation folder
            summary_path = os.path.join(item, "evaluation_summary.json")
            with open(summary_path) as f:
                run = os.path.dirname(json.load(f)["checkpoint"])
            if not os.path.isdir(run):
                raise EvaluateError(f"{item}: the evaluation of run {run}, which is not there")
        else:
            run = item
            summaries = evaluations_of(run)
            if summaries:
                summary_path = summaries[-1]
            else:  # not evaluated yet: its own test split, with this command's evaluation options
                print(f"{run}: no evaluation yet; evaluating its test split", flush=True)
                summary_path = os.path.join(evaluate_run(argparse.Namespace(**{**vars(args), "out_dir": None}), run),
                                            "evaluation_summary.json")
        with open(summary_path) as f:
            summary = json.load(f)
        try:
            ckpt, model, _ = load_run(run, None, "last")
        except CheckpointError as err:
            raise EvaluateError(str(err)) from None
        with open(os.path.join(run, "metrics.jsonl")) as f:
            epochs = [json.loads(line) for line in f if line.strip()]
        task = get_task(ckpt["task"])
        row = {"run": os.path.basename(os.path.normpath(run)), "task": ckpt["task"],
               "model": ckpt["model_kwargs"].get("backbone", ckpt["model_name"]),
               "parameters": sum(p.numel() for p in model.parameters()), "epochs": len(epochs),
               "train_minutes": sum(e.get("train_seconds", 0.0) for e in epochs) / 60,
               "train_samples_per_s": float(np.median([e["samples_per_s"] for e in epochs] or [np.nan])),
               "evaluated_on": f"{summary['rows']} ({os.path.basename(os.path.dirname(summary_path))})"}
        row.update(task.compare_columns(summary))
        rows.append(row)
    out_dir = args.out_dir or "."
    os.makedirs(out_dir, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(out_dir, "comparison.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    with open(os.path.join(out_dir, "comparison.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    from plots.compare import metric_vs_time_plot
    metrics = {get_task(r["task"]).COMPARE_METRIC for r in rows}
    for metric in sorted(metrics):
        metric_vs_time_plot([r for r in rows if metric in r], metric,
                            os.path.join(out_dir, f"comparison_{metric}_vs_time.png"))
    print("\n".join(lines) + f"\n(written to {out_dir}/comparison.csv and .md, "
          + ", ".join(f"comparison_{m}_vs_time.png" for m in sorted(metrics)) + ")", flush=True)
    return 0


def evaluate_run(args, run) -> str:
    """Evaluate one run (a directory or checkpoint) as args say; returns the output folder."""
    args.device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        ckpt, model, ckpt_path = load_run(os.path.abspath(run), None, args.checkpoint)
    except CheckpointError as err:
        raise EvaluateError(str(err)) from None
    if ckpt["task"] not in TASKS:
        raise EvaluateError(f"{ckpt_path}: a run of unknown task {ckpt['task']!r}")
    if getattr(args, "align_shares", None) is not None:
        get_task("substructure").check_align_arg(args.align_shares, ckpt["task"], ckpt_path)
    summary = get_task(ckpt["task"]).evaluate(ckpt, model, ckpt_path, args)
    out_dir = summary.pop("out_dir")
    with open(os.path.join(out_dir, "evaluation_summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    run_dir = os.path.dirname(os.path.abspath(ckpt_path))
    if os.path.dirname(os.path.abspath(out_dir)) != run_dir:  # written elsewhere: the run keeps a pointer
        with open(os.path.join(run_dir, EVALUATIONS_LIST), "a") as f:
            f.write(os.path.abspath(out_dir) + "\n")
    print(f"{summary['headline']}\nplots and metrics in {out_dir}", flush=True)
    return out_dir


def main(args):
    if args.compare:
        return compare(args)
    try:
        run = args.run or find_run(args.experiment_name, args.output)
    except CheckpointError as err:
        raise EvaluateError(str(err)) from None
    evaluate_run(args, run)
    return 0


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    try:
        sys.exit(main(arguments))
    except (EvaluateError, TaskError) as error:
        sys.exit(f"evaluate.py: error: {error}")
