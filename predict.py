"""Predict with one or several trained runs (an ensemble) over real files → CSV.

    # microlensing: a real photometry file (time, magnitude, error; BJD/HJD or HJD-2450000; IPAC too)
    python predict.py --runs results/d64_l4_hier_patch_transformer_baseline_s42 --input ob140939_OGLE.dat
    # an ensemble over a folder of text files and HDF5 files
    python predict.py --runs results/run_a results/run_b --input photometry/ --output predictions.csv
    # events seen by several telescopes: one folder per event (one file per telescope), or --event
    python predict.py --runs results/run_a --input events/ --event-folders --output events.csv
    python predict.py --runs results/run_a --event OGLE-I.dat KMTC-I.dat KMTS-I.dat --output event.csv

    # lens finding, the challenge's submission (id,pred), as the seed spelled it
    python predict.py --run-dirs runs/convnext_tiny runs/vit_small --test-root test_dataset/ \\
        --out-csv submission.csv --batch-size 512            # --tta 8: all eight flips/rotations

    # lens finding on your survey cutouts: scores, and the 100 best as a catalogue and a grid for graders
    python predict.py --runs results/lens_resnet18_lsst_s42 --input survey_cutouts/ --output scores.csv \
        --extra-columns --candidates 100            # scores_candidates.csv, scores_candidates.png

    # substructure: id,p_no,p_sphere,p_vort,class for a folder of .npy images (or class folders, HDF5)
    python predict.py --runs results/substructure_resnet18_common_s42 --input images/ --output sub.csv --tta 8

    # super-resolution: the images into sr/ (FITS keep their header, the WCS scaled), an index in sr.csv
    python predict.py --runs results/superres_edsr_sr_s42 --input lr_images/ --output sr.csv --image-dir sr/

A run is a run directory (its best.pt) or a checkpoint file; every member uses its own input
size, normalisation (lens) or feature grid (microlensing); all members must be of one task.
Microlensing: probabilities averaged over members, `id, p_flat, p_pspl, p_binary, class,
window_start` (a curve longer than the training season is cut to the season-long window
centred on its brightest point). Lens: logits averaged over test-time augmentations per
member, then over members; `id, pred` with pred = sigmoid(mean logit), plus `logit_std`, the
spread of the members' logits, with `--extra-columns`. Substructure: logits averaged the same
way, then softmax; `id, p_no, p_sphere, p_vort, class` (`--extra-columns`: the members' spread
per class and the file); `--align-shares 1,1,1` reweights the classes to the shares the images are
known to hold (images from another generator). Superres: each LR image (a folder of them, an LR/ + HR/ root, or HDF5)
super-resolved, averaged over members, written to --image-dir; `id, input, output, scale,
height, width`. Runs offline.
"""
from __future__ import annotations

import sys

import torch

from data.residual_maps import psf_fwhm_arg
from engine.checkpoint import CheckpointError, write_csv
from engine.cli import OneLineErrorParser
from engine.inference import load_run
from tasks import TASKS, TaskError, get_task, substructure


class PredictError(Exception):
    """Bad input: reported as one line."""


def get_args_parser():
    p = OneLineErrorParser("predict.py", description=__doc__.split("\n")[0])
    p.add_argument("--runs", "--run-dirs", nargs="+", required=True,
                   help="run directories or checkpoint files (an ensemble)")
    p.add_argument("--input", "--test-root", nargs="+", default=[],
                   help="files or folders: HDF5, photometry (microlensing); FITS roots, .npy folders, HDF5 (lens)")
    p.add_argument("--event", nargs="+", action="append", metavar="FILE",
                   help="microlensing: the photometry files of one event (one per telescope or band), combined "
                        "into one prediction; repeat for more events")
    p.add_argument("--event-folders", action="store_true",
                   help="microlensing: every --input folder (or each of its subfolders) is one event of its files")
    p.add_argument("--output", "--out-csv", default="predictions.csv")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--tta", type=int, choices=(1, 3, 8), default=3,
                   help="lens, substructure: test-time augmentations (1 none, 3 identity + h/v flips, 8 all flips/rotations)")
    p.add_argument("--amp", choices=("auto", "bf16", "fp32"), default="auto",
                   help="lens: inference precision (auto: bf16 on GPUs and CPUs with fast bf16, else fp32)")
    p.add_argument("--extra-columns", action="store_true", help="lens: also write logit_std and file")
    p.add_argument("--candidates", type=int, default=0, metavar="N",
                   help="lens: also write the N best-scored objects as a ranked catalogue and an inspection grid "
                        "(<output>_candidates.csv / .png), the way searches hand candidates to graders")
    p.add_argument("--num-workers", type=int, default=0, help="lens: processes reading FITS files")
    p.add_argument("--image-dir", default=None,
                   help="superres: folder of the super-resolved images (default: <output without .csv>_sr)")
    p.add_argument("--image-format", choices=("same", "npy", "fits"), default="same",
                   help="superres: file type of the images (same: FITS for FITS inputs, with the WCS scaled; else .npy)")
    p.add_argument("--psf-fwhm", type=psf_fwhm_arg, default="scan",
                   help="substructure runs trained on residual maps (--input-kind residual): the input images' "
                        "Gaussian PSF FWHM in arcsec, 'params' (each image's own: the data's psf_fwhm column), or 'scan' "
                        "(default): measured on them")
    p.add_argument("--fit-cache", default=None, help="substructure runs trained on residual maps: the store of "
                   "fitted maps (default $LENSING_FIT_CACHE or ~/.cache/lensing/fits)")
    substructure.add_align_arg(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-bad", action="store_true", help="report unusable files and go on instead of stopping")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(args):
    args.device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if not args.input and not args.event:
        raise PredictError("give --input files or folders (or, for microlensing, --event FILE [FILE ...])")
    try:
        runs = [load_run(r, None, args.checkpoint) for r in args.runs]
    except CheckpointError as err:
        raise PredictError(str(err)) from None
    tasks = [ckpt["task"] for ckpt, _, _ in runs]
    for (ckpt, _, path), name in zip(runs, tasks):
        if name != tasks[0]:
            raise PredictError(f"{path}: a run of task {name!r}; the ensemble's first member is {tasks[0]!r}")
        if ckpt.get("class_names") != runs[0][0].get("class_names"):  # e.g. with and without the variable class
            raise PredictError(f"{path}: classes {ckpt.get('class_names')}; the ensemble's first member has "
                               f"{runs[0][0].get('class_names')}: its members must share their classes")
    if tasks[0] not in TASKS:
        raise PredictError(f"{runs[0][2]}: a run of unknown task {tasks[0]!r}")
    if args.candidates and tasks[0] != "lens":
        raise PredictError(f"--candidates ranks lens candidates; these are {tasks[0]} runs")
    if args.align_shares is not None:
        substructure.check_align_arg(args.align_shares, tasks[0], runs[0][2])
    if (args.event or args.event_folders) and tasks[0] != "microlensing":
        raise PredictError(f"--event / --event-folders group light curves; these are {tasks[0]} runs")
    header, rows, n_skipped = get_task(tasks[0]).predict(runs, args)
    write_csv(args.output, header, rows)  # whole, at the end: a failed run leaves no partial CSV
    print(f"wrote {len(rows)} predictions from {len(runs)} run(s) to {args.output}"
          + (f"; {n_skipped} file(s) skipped" if n_skipped else ""), flush=True)
    return 0


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    try:
        sys.exit(main(arguments))
    except (PredictError, TaskError) as error:
        sys.exit(f"predict.py: error: {error}")
