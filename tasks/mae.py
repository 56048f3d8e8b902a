"""Masked-autoencoder pretraining on lensing images (any image reader's files; labels ignored).

    python train.py --task mae --data data/common --epochs 100          # 150x150: 10x10-pixel patches
    python train.py --task mae --data data/lsst --input-size 40 --patch-size 8 --norm-pix-loss
    python evaluate.py --run results/mae_common_s42                     # held-out loss, reconstructions

Data: a folder of class folders of any image task (substructure no/sphere/vort, lens finding
lenses/nonlenses), a folder of unlabelled .npy / FITS images, or an image HDF5 file; one band or
several. The split is the image tasks' (stratified by class folder where there is one, so with
the same --seed and fractions a fine-tuning run's test split is this run's test split, never seen
in pretraining; tasks/finetune.py checks it). Model (models/mae.py): ViT encoder (default width
192, depth 6, 3 heads, about 2.7M parameters) and a lighter decoder (128, 2, 4 heads); the patch
size defaults to the first of 16, 10, 8, 15, 12, 6, 5, 4 pixels that divides the input size into
a grid of at least 8x8, preferring one whose patch count times --mask-ratio is whole (0.75: 150
gives 15-pixel patches, 100 of them, 75 masked; 64 gives 8; 75 gives 5). Images keep the image tasks' normalisation and
D4 / shift augmentation (--augment, --max-shift).

Loss: mean squared error over the masked patches (--mask-ratio of them, exactly round(ratio * L)
per image, the count the run prints and records), optionally plus --visible-loss-weight times
the error on the visible ones (seed 002 used a small weight); with --norm-pix-loss the target is
each patch normalised by its own mean and variance. The best checkpoint has the lowest
validation loss (fixed validation masks). AdamW, warmup then cosine, stepped per optimizer step.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn as nn

from data import augment, lens_data
from tasks import TaskError, TrainData, images

TASK = "mae"
CLASS_NAMES = ()
SELECT_METRIC = "val_loss"
SELECT_MODE = "min"
COMPARE_METRIC = "masked_loss"
# the MAE recipe (AdamW, weight decay 0.05, warmup, cosine) at a learning rate for small data sets
DEFAULTS = dict(model="mae", epochs=100, batch_size=64, lr=5e-4, weight_decay=0.05, warmup_epochs=5.0,
                val_fraction=0.2, test_fraction=0.1, dropout=0.0)
IDENTITY_KEYS = ("task", "input_size", "patch_size", "norm", "bands", "data_key", "seed", "val_fraction",
                 "test_fraction", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
                 "decoder_num_heads", "mask_ratio", "norm_pix_loss")
PATCH_SIZES = (16, 10, 8, 15, 12, 6, 5, 4)
MIN_GRID = 8


# --------------------------------------------------------------------------- train.py
def add_train_args(parser):
    images.add_train_args(parser)
    g = parser.add_argument_group("masked autoencoder (--task mae; --patch-size pixels per patch)")
    g.add_argument("--mask-ratio", type=float, default=0.75, help="fraction of patches masked in every image")
    g.add_argument("--norm-pix-loss", action="store_true", help="target: each patch normalised by its mean and std")
    g.add_argument("--visible-loss-weight", type=float, default=0.0,
                   help="weight of the visible patches' error in the loss (the masked ones have 1)")
    g.add_argument("--embed-dim", type=int, default=192, help="encoder width")
    g.add_argument("--depth", type=int, default=6, help="encoder blocks")
    g.add_argument("--num-heads", type=int, default=3)
    g.add_argument("--decoder-embed-dim", type=int, default=128)
    g.add_argument("--decoder-depth", type=int, default=2)
    g.add_argument("--decoder-num-heads", type=int, default=4)


def data_sources(path):
    """Sources of any image reader: class folders of either image task, an unlabelled folder, HDF5."""
    try:
        if os.path.isdir(path):
            for folders in (lens_data.SUBSTRUCTURE_FOLDERS, lens_data.CLASS_FOLDERS):
                if lens_data.has_class_folders(path, folders):
                    return lens_data.sources_of(path, class_folders=folders)
            return [(os.path.abspath(path), (-1, False))]  # images without classes
        return lens_data.sources_of(path)
    except lens_data.LensDataError as err:
        raise TaskError(str(err)) from None


def check_train_args(args):
    if args.data is None:
        raise TaskError("--task mae needs --data (image class folders, a folder of images, or an image HDF5 file)")
    if args.model != "mae":
        raise TaskError(f"--task mae trains the masked autoencoder (--model mae), not {args.model!r}")
    if args.init_from or args.linear_probe or args.label_fraction < 1 or args.layer_decay < 1:
        raise TaskError("--init-from, --linear-probe, --label-fraction and --layer-decay are fine-tuning options "
                        "(--task lens | substructure | superres)")
    if not 0 < args.mask_ratio < 1:
        raise TaskError("--mask-ratio must be in (0, 1)")
    if args.visible_loss_weight < 0:
        raise TaskError("--visible-loss-weight must be >= 0")
    if args.embed_dim % args.num_heads or args.decoder_embed_dim % args.decoder_num_heads:
        raise TaskError("--embed-dim / --decoder-embed-dim must be multiples of --num-heads / --decoder-num-heads")
    if args.embed_dim % 4 or args.decoder_embed_dim % 4:
        raise TaskError("--embed-dim and --decoder-embed-dim must be multiples of 4 (2-D sin-cos positions)")
    args.bands = args.bands.split(",") if isinstance(args.bands, str) else args.bands


def default_name(args) -> str:
    stem = os.path.splitext(os.path.basename(os.path.normpath(args.data)))[0]
    return f"mae_{stem}_s{args.seed}"


def data_identity(args) -> dict:
    sources = data_sources(args.data)
    return {"data_sources": [[r, lab] for r, lab in sources], "data_key": lens_data.listing_key(sources)}


def load_train_data(args, info) -> TrainData:
    return images.ingest(data_sources(args.data), args, info, TASK, None)


make_split = images.make_split
make_fetch = images.make_fetch


def default_patch_size(size: int, mask_ratio: float | None = None) -> int:
    """The first of PATCH_SIZES dividing `size` into a grid of >= MIN_GRID per side, preferring
    one whose patch count times `mask_ratio` is a whole number (so the masked fraction is exact)."""
    fits = [p for p in PATCH_SIZES if size % p == 0 and size // p >= MIN_GRID]
    exact = [p for p in fits if mask_ratio is not None and abs(mask_ratio * (size // p) ** 2 % 1) < 1e-9]
    if exact or fits:
        return (exact or fits)[0]
    raise TaskError(f"no patch size of {', '.join(map(str, PATCH_SIZES))} gives {size}x{size} images a grid of "
                    f">= {MIN_GRID}x{MIN_GRID}; give --input-size (images are resized to it) and --patch-size")


def fit_stats(data, split, args, info):
    from models.mae import n_masked_patches
    C, H, W = data.meta["shape"]
    if H != W:
        raise TaskError(f"{args.data}: {H}x{W} images; the MAE needs square images")
    size = args.input_size or H
    patch = args.patch_size or default_patch_size(size, args.mask_ratio)
    if size % patch:
        raise TaskError(f"input size {size} is not a multiple of --patch-size {patch}; give --input-size")
    n_patches = (size // patch) ** 2
    try:
        n_masked = n_masked_patches(args.mask_ratio, n_patches)
    except ValueError as err:
        raise TaskError(str(err)) from None
    if info.is_main:
        exact = n_masked == args.mask_ratio * n_patches
        print(f"MAE: {size}x{size} input, {patch}x{patch} patches: {n_masked} of {n_patches} masked in every image "
              + ("(exactly --mask-ratio)" if exact else f"(fraction {n_masked / n_patches:.4f}, not exactly "
                 f"--mask-ratio {args.mask_ratio}: {n_patches} patches)"), flush=True)
    return {"norm": args.norm, "input_size": size, "shape": [C, H, W], "bands": data.meta["bands"],
            "patch_size": patch, "n_patches": n_patches, "n_masked": n_masked, "mask_fraction": n_masked / n_patches}


def build_model(args, data, stats):
    from models import create_model
    kwargs = dict(in_chans=stats["shape"][0], image_size=stats["input_size"], patch_size=stats["patch_size"],
                  embed_dim=args.embed_dim, depth=args.depth, num_heads=args.num_heads,
                  decoder_embed_dim=args.decoder_embed_dim, decoder_depth=args.decoder_depth,
                  decoder_num_heads=args.decoder_num_heads, mask_ratio=args.mask_ratio)
    return create_model("mae", **kwargs), "mae", kwargs


def patch_errors(out, norm_pix: bool) -> torch.Tensor:
    """(B, L) mean squared error per patch, float32; targets normalised per patch with `norm_pix`."""
    target = out["target"].float()
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    return ((out["pred"].float() - target) ** 2).mean(-1)


class MAELoss(nn.Module):
    """Masked-patch MSE + visible_weight * visible-patch MSE; both logged (train_loss_masked, ...)."""
    term_names = ("masked", "visible")

    def __init__(self, norm_pix: bool = False, visible_weight: float = 0.0):
        super().__init__()
        self.norm_pix, self.visible_weight = norm_pix, visible_weight

    def forward(self, out, y):
        err, mask = patch_errors(out, self.norm_pix), out["mask"].float()
        masked = (err * mask).sum() / mask.sum()
        visible = (err * (1 - mask)).sum() / (1 - mask).sum()
        loss = masked + self.visible_weight * visible if self.visible_weight else masked
        return loss, {"masked": masked, "visible": visible}


def make_criterion(data, split, args):
    return MAELoss(args.norm_pix_loss, args.visible_loss_weight)


def val_metrics(y, log_probs) -> dict:
    return {}


def checkpoint_extras(data, stats, args) -> dict:
    return {}


# --------------------------------------------------------------------------- predict.py, evaluate.py
def predict(runs, args):
    raise TaskError(f"{runs[0][2]}: an MAE run predicts nothing; evaluate.py --run shows its reconstructions and "
                    "train.py --task substructure|lens|superres --init-from RUN fine-tunes its encoder")


def add_evaluate_args(parser):
    images.add_evaluate_args(parser)


@torch.no_grad()
def reconstruct(model, stats, pixels, batch_size, device, norm_pix, amp="fp32"):
    """Per image: masked and visible MSE, the mean-of-visible baseline's masked MSE; and the model's
    outputs ((N, L, p*p*C) predictions in pixel units of the normalised image, targets, masks)."""
    model = model.to(device).eval()
    rows, preds, targets, masks = [], [], [], []
    for i in range(0, len(pixels), batch_size):
        x = augment.normalize(torch.from_numpy(np.ascontiguousarray(pixels[i:i + batch_size], np.float32)).to(device),
                              stats["norm"])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            out = model(x)
        err, mask = patch_errors(out, norm_pix), out["mask"].float()
        target = out["target"].float()
        pred = out["pred"].float()
        if norm_pix:  # back to pixels with each patch's true mean and std (for the panels)
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
            base_err = torch.ones_like(err)  # predicting 0 for a normalised patch: its variance, 1
        else:
            vis = 1 - mask
            fill = (target * vis[..., None]).sum((1, 2)) / (vis.sum(1) * target.shape[-1])  # (B,) mean visible pixel
            base_err = ((target - fill[:, None, None]) ** 2).mean(-1)
        rows.append(torch.stack([(err * mask).sum(1) / mask.sum(1), (err * (1 - mask)).sum(1) / (1 - mask).sum(1),
                                 (base_err * mask).sum(1) / mask.sum(1)], 1).cpu())
        preds.append(pred.cpu())
        targets.append(target.cpu())
        masks.append(mask.cpu())
    return torch.cat(rows).numpy(), torch.cat(preds), torch.cat(targets), torch.cat(masks)


def evaluate(ckpt, model, ckpt_path, args) -> dict:
    from engine.inference import inference_precision
    from plots import mae_eval
    run_dir = os.path.dirname(os.path.abspath(ckpt_path))
    stats, config = ckpt["stats"], ckpt["config"]
    if args.data:
        sources = [s for p in args.data for s in data_sources(p)]
        arrays, report = images.read_sources(sources, stats["bands"] or None, args)
        rows, what = np.arange(len(arrays["images"])), "all images"
        stem = os.path.splitext(os.path.basename(os.path.normpath(args.data[0])))[0]
    else:
        arrays, report, rows, what, stem = images.evaluation_data(ckpt, run_dir, args)
    pixels = arrays["images"][rows]
    if tuple(pixels.shape[1:]) != tuple(stats["shape"]):
        raise TaskError(f"images of shape {tuple(pixels.shape[1:])}, the MAE was trained on {tuple(stats['shape'])}")
    out_dir = args.out_dir or os.path.join(run_dir, f"eval_{stem}")
    os.makedirs(out_dir, exist_ok=True)
    device = torch.device(args.device)
    amp = inference_precision(args.amp, device)
    norm_pix = bool(config.get("norm_pix_loss"))
    print(f"evaluating {ckpt_path} (epoch {ckpt['epoch']}) on {what}: {len(pixels)} images, {stats['n_masked']} of "
          f"{stats['n_patches']} patches masked (fixed masks), {amp}", flush=True)
    losses, pred, target, mask = reconstruct(model, stats, pixels, args.batch_size, device, norm_pix, amp)
    rng = np.random.default_rng(args.seed)  # pure noise: a model that memorised lenses paints them in
    noise = rng.standard_normal((min(len(pixels), 256),) + tuple(pixels.shape[1:])).astype(np.float32)
    noise_losses = reconstruct(model, stats, noise, args.batch_size, device, norm_pix, amp)[0]
    shown = rng.choice(len(pixels), size=min(len(pixels), max(1, min(args.n_examples, 8))), replace=False)
    ids = arrays["ids"][rows]
    P = lambda fname: os.path.join(out_dir, fname)  # noqa: E731
    mae_eval.reconstruction_panels(target[shown], pred[shown], mask[shown], stats["patch_size"], stats["shape"][0],
                                   [str(ids[i]) for i in shown], P("reconstructions.png"),
                                   title=f"MAE reconstructions ({stats['n_masked']}/{stats['n_patches']} patches "
                                         f"masked, epoch {ckpt['epoch']})")
    mean = lambda v: float(np.mean(v)) if len(v) else float("nan")  # noqa: E731
    summary = {"run": run_dir, "checkpoint": ckpt_path, "epoch": int(ckpt["epoch"]), "rows": what, "model": "mae",
               "n_images": int(len(pixels)), "mask_fraction": stats["mask_fraction"], "norm_pix_loss": norm_pix,
               "masked_loss": mean(losses[:, 0]), "visible_loss": mean(losses[:, 1]),
               "baseline_masked_loss": mean(losses[:, 2]), "noise_masked_loss": mean(noise_losses[:, 0]),
               "noise_baseline_masked_loss": mean(noise_losses[:, 2]),
               "ingest": {k: v for k, v in report.items() if k != "bad"}}
    from engine.checkpoint import write_csv
    write_csv(P("reconstruction_losses.csv"), ["id", "masked_loss", "visible_loss", "baseline_masked_loss"],
              [[i] + [f"{v:.6g}" for v in r] for i, r in zip(ids, losses)])
    summary["headline"] = (f"masked-patch MSE {summary['masked_loss']:.4f} (mean-of-visible baseline "
                           f"{summary['baseline_masked_loss']:.4f}), visible {summary['visible_loss']:.4f}; on pure "
                           f"noise {summary['noise_masked_loss']:.4f} (baseline {summary['noise_baseline_masked_loss']:.4f})"
                           f" ({len(pixels)} images)")
    summary["out_dir"] = out_dir
    return summary


def compare_columns(summary) -> dict:
    return {k: summary[k] for k in ("n_images", "masked_loss", "visible_loss", "baseline_masked_loss",
                                    "noise_masked_loss")}
