"""Classify light curves with one or several trained runs (probabilities averaged) → CSV.

    # a real photometry file (time, magnitude, error; BJD/HJD or HJD-2450000; IPAC tables too)
    python predict.py --runs results/d64_l4_hier_patch_transformer_baseline_s42 --input ob140939_OGLE.dat

    # an ensemble over a folder of text files and HDF5 files
    python predict.py --runs results/run_a results/run_b --input photometry/ --output predictions.csv

A run is a run directory (its best.pt) or a checkpoint file; every run uses its own feature grid
and normalisation. A curve longer than the training season is cut to the season-long window
centred on its brightest point (the window start is in the CSV). Runs offline.
"""
from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from engine.cli import OneLineErrorParser
from data import microlensing as task_data
from data.photometry import is_photometry_file
from engine.checkpoint import CheckpointError
from engine.inference import load_run, predict_log_probs


class PredictError(Exception):
    """Bad input: reported as one line."""


def get_args_parser():
    p = OneLineErrorParser("predict.py", description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="run directories or checkpoint files (an ensemble)")
    p.add_argument("--input", nargs="+", required=True, help="HDF5 files, photometry files or folders of them")
    p.add_argument("--output", default="predictions.csv")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-bad", action="store_true", help="report unusable files and go on instead of stopping")
    p.add_argument("--no-progress", action="store_true")
    return p


def input_files(paths):
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, f) for f in os.listdir(path)
                           if f.endswith((".h5", ".hdf5")) or is_photometry_file(f))
            if not found:
                raise PredictError(f"{path}: no .h5 or photometry files in this folder")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise PredictError(f"{path}: no such file or folder")
    return files


def main(args):
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        runs = [load_run(r, task_data.TASK, args.checkpoint) for r in args.runs]
    except CheckpointError as err:
        raise PredictError(str(err)) from None
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
                log_probs.append(predict_log_probs(model, feats, ckpt["stats"], args.batch_size, device))
        except task_data.DataError as err:
            if not args.skip_bad:
                raise PredictError(str(err)) from None
            bad.append(str(err))
            print(f"predict.py: skipped: {err}", file=sys.stderr)
            continue
        probs = np.mean([np.exp(lp) for lp in log_probs], axis=0)  # ensemble: average probabilities
        for i, ident in enumerate(ids):
            rows.append([ident, *(f"{p:.6f}" for p in probs[i]), names[int(probs[i].argmax())],
                         f"{infos[i]['window_start']:.5f}"])
    tmp = f"{args.output}.tmp{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", *(f"p_{n}" for n in names), "class", "window_start"])
        writer.writerows(rows)
    os.replace(tmp, args.output)
    print(f"wrote {len(rows)} predictions from {len(runs)} run(s) to {args.output}"
          + (f"; {len(bad)} file(s) skipped" if bad else ""), flush=True)
    if len(rows) <= 10:
        for r in rows:
            print("  " + "  ".join(r[:1] + [f"{n}={v}" for n, v in zip(names, r[1:4])] + [r[4]]))
    return 0


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    try:
        sys.exit(main(arguments))
    except PredictError as error:
        sys.exit(f"predict.py: error: {error}")
