"""Lens finding: lens / non-lens from multi-band cutouts (LSST challenge FITS, DeepLense .npy, HDF5).

Data: `data.lens_data` ingests every source once into one packed (N, C, H, W) float32 array in
the node's RAM cache; batches are gathered from it by index and normalised / augmented on the
device (`data.augment`). Models: any timm backbone (`models.timm_classifier`), one logit, BCE
with pos_weight = n_neg / n_pos of the training split. The best checkpoint is chosen on
validation ROC AUC; the test split (or the DeepLense test folders) is never used for selection.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data import lens_data
from engine.checkpoint import write_csv
from engine.inference import inference_precision
from tasks import TaskError, TrainData, finetune, images

TASK = "lens"
CLASS_NAMES = ("nonlens", "lens")
SELECT_METRIC = "val_auc"
COMPARE_METRIC = "auc"  # evaluate.py --compare plots it against training time
# the seed's defaults: AdamW 1e-4, weight decay 1e-2, cosine; stratified 20% validation
DEFAULTS = dict(epochs=20, batch_size=128, lr=1e-4, weight_decay=1e-2, warmup_epochs=1.0,
                val_fraction=0.2, test_fraction=0.1, dropout=0.0)
IDENTITY_KEYS = ("task", "model", "input_size", "norm", "bands", "data_key", "seed", "val_fraction", "test_fraction",
                 "init_from", "linear_probe", "label_fraction", "adapt_data")


# --------------------------------------------------------------------------- train.py
def add_train_args(parser):
    images.add_train_args(parser)
    g = parser.add_argument_group("lens finding (--task lens)")
    g.add_argument("--train-roots", nargs="+", default=[], help="folders of lenses (FITS cutouts or .npy)")
    g.add_argument("--train-roots-neg", nargs="+", default=[], help="folders of non-lenses")
    g.add_argument("--hard-negatives", nargs="+", default=[], metavar="CSV",
                   help="hard-negative mining: CSVs with a `file` column (evaluate.py's false_positives.csv, "
                        "predict.py --extra-columns output); their objects (rows not labelled 1, score >= 0.5) "
                        "join the training split as non-lenses; the other objects keep the split they had without")
    g.add_argument("--cache-ratio", type=float, default=1.0,
                   help="the seed's flag; the packed array is always cached whole, once per node (1 only)")
    g.add_argument("--mode", choices=("train",), default="train", help="the seed's flag (train only)")
    g.add_argument("--bands", default=None, help="comma-separated subset of FITS bands, e.g. g,r,i (default: all)")
    g.add_argument("--pos-weight", type=float, default=None, help="BCE pos_weight (default n_neg / n_pos of train)")


def _sources(args):
    try:
        return lens_data.sources_of(args.data, args.train_roots, args.train_roots_neg,
                                    hard_negatives=getattr(args, "hard_negatives", ()))
    except lens_data.LensDataError as err:
        raise TaskError(str(err)) from None


def check_train_args(args):
    images.check_model_args(args)  # a timm backbone (default resnet18), or the MAE's encoder with --init-from
    if args.cache_ratio != 1:
        raise TaskError("--cache-ratio: only 1 (the whole packed array, one copy per node) is supported")
    if bool(args.train_roots) != bool(args.train_roots_neg) and not args.data:
        raise TaskError("give both --train-roots (lenses) and --train-roots-neg (non-lenses), or --data")
    args.bands = args.bands.split(",") if isinstance(args.bands, str) else args.bands


def default_name(args) -> str:
    first = args.data or args.train_roots[0]
    stem = os.path.splitext(os.path.basename(os.path.normpath(first)))[0]
    return f"lens_{args.model}_{stem}{finetune.name_suffix(args)}_s{args.seed}"


def data_identity(args) -> dict:
    sources = _sources(args)
    try:
        key = lens_data.listing_key(sources)  # reads the hard-negative lists
    except lens_data.LensDataError as err:
        raise TaskError(str(err)) from None
    return {"data_sources": [[r, lab] for r, lab in sources], "data_key": key}


def load_train_data(args, info) -> TrainData:
    return images.ingest(_sources(args), args, info, TASK, CLASS_NAMES)


make_split = images.make_split
make_fetch = images.make_fetch
param_groups = finetune.param_groups


def fit_stats(data, split, args, info):
    return images.fit_stats(data, args)


def build_model(args, data, stats):
    return images.timm_model(args, stats, n_outputs=1)


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
def ensemble_scores(runs, images_, args, progress=True):
    """(score = sigmoid(mean member logit), std of the member logits), both (N,)."""
    members = images.member_outputs(runs, images_, args, "logit", progress)
    mean = members.mean(0)
    return 1 / (1 + np.exp(-mean)), members.std(0)


def predict(runs, args):
    """(header, rows, skipped): `id, pred` per object of the inputs (the challenge's format)."""
    arrays, report = images.load_paths(args.input, images.same_bands(runs), args, labelled=False)
    score, spread = ensemble_scores(runs, arrays["images"], args, not args.no_progress)
    if args.candidates:
        stem = os.path.splitext(args.output)[0]
        out = write_candidates(arrays["ids"], score, arrays["files"], arrays["images"], args.candidates,
                               lambda name: f"{stem}_{name}")
        print(f"wrote the {out['n']} best-scored objects to {out['csv']} and {out['png']}")
    header = ["id", "pred"] + (["logit_std", "file"] if args.extra_columns else [])
    rows = [[i, f"{s:.6f}"] + ([f"{d:.4f}", f] if args.extra_columns else [])
            for i, s, d, f in zip(arrays["ids"], score, spread, arrays["files"])]
    return header, rows, images.report_skipped(report)


# --------------------------------------------------------------------------- evaluate.py
def add_evaluate_args(parser):
    images.add_evaluate_args(parser)
    g = parser.add_argument_group("lens finding")
    g.add_argument("--candidates", type=int, default=0, help="write the N best-scored objects: catalogue and grid")


def evaluate(ckpt, model, ckpt_path, args) -> dict:
    from engine import metrics
    from plots import lens_eval
    run_dir = os.path.dirname(os.path.abspath(ckpt_path))
    arrays, report, rows, what, stem = images.evaluation_data(ckpt, run_dir, args)
    y = arrays["labels"][rows]
    pixels = arrays["images"][rows]
    out_dir = args.out_dir or os.path.join(run_dir, f"eval_{stem}")
    os.makedirs(out_dir, exist_ok=True)
    print(f"evaluating {ckpt_path} (epoch {ckpt['epoch']}, {ckpt['model_kwargs']['backbone']}) on {what}: "
          f"{len(y)} objects, {int(y.sum())} lenses; TTA x{args.tta}, "
          f"{inference_precision(args.amp, args.device)}", flush=True)
    score = ensemble_scores([(ckpt, model, ckpt_path)], pixels, args, not args.no_progress)[0]
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
        lens_eval.image_grid(pixels[idx], [f"{ids[i]}\n{score[i]:.3f}" for i in idx], P(f"{name}.png"),
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
        from physics.strong.survey import KIND_CODES
        summary["auc_vs_nonlens_kind"] = {
            name: metrics.binary_metrics(y[(y == 1) | (kinds[rows] == code)], score[(y == 1) | (kinds[rows] == code)],
                                         n_bootstrap=0)["auc"]
            for name, code in KIND_CODES.items() if code and ((kinds[rows] == code) & (y == 0)).any()}
    # every non-lens scored >= 0.5, most confident first: the next run's --hard-negatives (evaluated with
    # --data on a mining set: a run's own test split is refused there, it would leak into training)
    fp = np.flatnonzero(y == 0)[np.argsort(-score[y == 0], kind="stable")]
    fp = fp[score[fp] >= 0.5]
    write_csv(P("false_positives.csv"), ["rank", "id", "label", "score", "file"],
              [[r + 1, ids[i], 0, f"{score[i]:.6f}", files[i]] for r, i in enumerate(fp)])
    summary["false_positives_csv"] = {"n": int(len(fp)), "csv": P("false_positives.csv")}
    write_csv(P("predictions.csv"), ["id", "label", "score", "file"],
               [[i, int(t), f"{s:.6f}", f] for i, t, s, f in zip(ids, y, score, files)])
    if args.candidates:
        summary["candidates"] = write_candidates(ids, score, files, pixels, args.candidates, P, y)
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


def write_candidates(ids, score, files, pixels, n, P, y=None) -> dict:
    """The ranked catalogue (rank, id, score, file) of the n best-scored objects and their grid,
    as searches hand candidates to visual graders."""
    from plots import lens_eval
    top = np.argsort(-score, kind="stable")[:n]
    write_csv(P("candidates.csv"), ["rank", "id", "score", "file"],
               [[r + 1, ids[i], f"{score[i]:.6f}", files[i]] for r, i in enumerate(top)])
    lens_eval.image_grid(pixels[top], [f"#{r + 1} {ids[i]}\n{score[i]:.3f}" for r, i in enumerate(top)],
                         P("candidates.png"), title=f"top {len(top)} candidates")
    out = {"n": int(len(top)), "csv": P("candidates.csv"), "png": P("candidates.png")}
    if y is not None:
        out["lenses_among_them"] = int(np.asarray(y)[top].sum())
    return out
