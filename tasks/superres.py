"""Super-resolution: low-resolution (75x75 by default) → high-resolution (150x150) lensing images.

    python simulate.py --task superres --n 2000 --format npy --output data/sr
    python train.py --task superres --data data/sr --model edsr --epochs 30
    python train.py --task superres --data data/sr --init-from results/mae_common_s42     # mae_sr
    python evaluate.py --run results/superres_edsr_sr_s42          # PSNR / SSIM against bicubic
    python predict.py --runs results/superres_edsr_sr_s42 --input lr_images/ --output sr.csv --image-dir sr/

Data (data/sr_pairs.py): LR/ + HR/ folders of same-named images or the simulator's HDF5; any
integer factor, read from the shapes. Each pair is scaled by its LR image's own min-max range
(so a model sees the same numbers whatever the flux units) and the output scaled back; D4
augmentation applies one symmetry to both images of a pair. Models (models/superres.py): edsr
(default), mae_sr (the MAE's encoder, --init-from), and bicubic, the baseline, which needs no
training and which evaluate.py reports next to every run on the same pairs. Loss L1 (--sr-loss
l2: MSE); the best checkpoint has the highest validation PSNR; the test split is never used.

PSNR and SSIM are computed per image on the HR image's own data range R = max - min
(engine.metrics.psnr, ssim; 10 log10(R^2 / MSE), SSIM with an 11x11 Gaussian window) and
averaged over images.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data import augment, sr_pairs
from data.cache import SharedArrays, cache_key
from tasks import TaskError, TrainData, finetune, images, stratified_split

TASK = "superres"
CLASS_NAMES = ()
SELECT_METRIC = "val_psnr"
COMPARE_METRIC = "psnr"
DEFAULTS = dict(epochs=30, batch_size=16, lr=2e-4, weight_decay=0.0, warmup_epochs=1.0, val_fraction=0.1,
                test_fraction=0.1, dropout=0.0)
IDENTITY_KEYS = ("task", "model", "data_key", "seed", "val_fraction", "test_fraction", "sr_features", "sr_blocks",
                 "sr_loss", "init_from", "linear_probe", "label_fraction")
MODELS = ("edsr", "mae_sr")
EPS = 1e-12


# --------------------------------------------------------------------------- train.py
def add_train_args(parser):
    images.add_train_args(parser)
    g = parser.add_argument_group("super-resolution (--task superres; --model edsr | mae_sr)")
    g.add_argument("--sr-loss", choices=("l1", "l2"), default="l1")
    g.add_argument("--sr-features", type=int, default=64, help="edsr: feature channels (mae_sr: 32 by default)")
    g.add_argument("--sr-blocks", type=int, default=8, help="edsr: residual blocks")


def check_train_args(args):
    if args.data is None:
        raise TaskError("--task superres needs --data (a folder with LR/ and HR/ image folders, or an HDF5 file)")
    if args.model == "bicubic":
        raise TaskError("--model bicubic has nothing to train: evaluate.py reports bicubic next to every "
                        "super-resolution run, on the same pairs")
    finetune.check_args(args, "edsr", encoder_model="mae_sr")
    if args.init_from and finetune.pretrained_encoder(args.init_from)["stats"]["norm"] != "standardize":
        raise TaskError(f"--init-from {args.init_from}: mae_sr standardises its encoder's input; pretrain the MAE "
                        "with --norm standardize")
    if args.model not in MODELS:
        raise TaskError(f"--task superres: unknown model {args.model!r}; choose from {', '.join(MODELS)} (bicubic "
                        "is the baseline evaluate.py reports)")
    if args.input_size:
        raise TaskError("--input-size: super-resolution works at the pairs' own sizes")
    if args.max_shift or args.noise:
        raise TaskError("--max-shift / --noise: super-resolution pairs are augmented by the D4 symmetries only")
    if args.sr_features < 1 or args.sr_blocks < 0:
        raise TaskError("--sr-features must be >= 1 and --sr-blocks >= 0")


def default_name(args) -> str:
    stem = os.path.splitext(os.path.basename(os.path.normpath(args.data)))[0]
    return f"superres_{args.model}_{stem}{finetune.name_suffix(args)}_s{args.seed}"


def data_identity(args) -> dict:
    if not os.path.exists(args.data):
        raise TaskError(f"{args.data}: no such file or folder")
    return {"data_source": os.path.abspath(args.data), "data_key": sr_pairs.listing_key(args.data)}


def read_pairs(path, need_hr=True, progress=True):
    try:
        return sr_pairs.load_pairs(path, need_hr, progress)
    except sr_pairs.LensDataError as err:
        raise TaskError(str(err)) from None


def load_train_data(args, info) -> TrainData:
    key = sr_pairs.listing_key(args.data)

    def build():
        arrays, report = read_pairs(args.data, True, not args.no_progress)
        arrays["report"] = np.array([json.dumps(report)])
        return arrays

    arrays = SharedArrays(cache_key(None, {"task": TASK}, identity=key), build, info, args.cache_dir)
    report = json.loads(str(arrays["report"][0]))
    lr_shape, hr_shape = arrays["lr"].shape[1:], arrays["hr"].shape[1:]
    scale = sr_pairs.scale_factor(lr_shape, hr_shape, args.data)
    if args.augment == "d4" and lr_shape[1] != lr_shape[2]:
        arrays.remove()
        raise TaskError(f"{args.data}: {lr_shape[1]}x{lr_shape[2]} LR images are not square; the D4 augmentation "
                        "needs square images (--augment none)")
    if info.is_main:
        print(f"ingested {len(arrays['lr'])} pairs: LR {'x'.join(map(str, lr_shape))} -> HR "
              f"{'x'.join(map(str, hr_shape))} (x{scale}); non-finite pixels set to 0: {report['nonfinite_pixels']}",
              flush=True)
    meta = {"unit": "pairs", "scale": scale, "lr_shape": tuple(lr_shape), "hr_shape": tuple(hr_shape), "data_key": key}
    return TrainData(arrays, np.zeros(len(arrays["lr"]), np.int64), meta)


def make_split(data, args) -> dict:
    split = stratified_split(data.labels, args.seed, args.val_fraction, args.test_fraction)
    return finetune.restrict_split(split, data.labels, args, data.meta["data_key"])


def fit_stats(data, split, args, info):
    return {"norm": "lr-minmax", "scale": data.meta["scale"], "shape": list(data.meta["lr_shape"]),
            "hr_shape": list(data.meta["hr_shape"])}


def normalise(lr, hr=None):
    """LR (and HR) scaled by each LR image's min-max range: ((lr - lo) / span, (hr - lo) / span, lo, span)."""
    flat = lr.flatten(1)
    lo = flat.amin(1).view(-1, 1, 1, 1)
    span = (flat.amax(1).view(-1, 1, 1, 1) - lo).clamp_min(EPS)
    return (lr - lo) / span, None if hr is None else (hr - lo) / span, lo, span


def make_fetch(data, stats, args, device, train: bool):
    lr_all, hr_all = data.arrays["lr"], data.arrays["hr"]

    def fetch(indices):
        lr = torch.from_numpy(images.gather(lr_all, indices)).to(device, non_blocking=True)
        hr = torch.from_numpy(images.gather(hr_all, indices)).to(device, non_blocking=True)
        x, y, _, _ = normalise(lr, hr)
        if train and args.augment == "d4":  # one symmetry per pair, the same for LR and HR
            x, ks, _ = augment.random_geometry(x, True, 0, return_transforms=True)
            y = augment.apply_d4(y, ks)
        return x, y
    return fetch


def build_model(args, data, stats):
    from models import create_model
    C = stats["shape"][0]
    if args.model == "edsr":
        kwargs = dict(in_chans=C, scale=stats["scale"], n_features=args.sr_features, n_blocks=args.sr_blocks)
        return create_model("edsr", **kwargs), "edsr", kwargs
    features = 32 if args.sr_features == 64 else args.sr_features  # the option's default is edsr's
    if args.init_from:
        mae = finetune.pretrained_encoder(args.init_from)
        finetune.check_shape(mae, stats["hr_shape"])
        kwargs = dict(mae["kwargs"], scale=stats["scale"], n_features=features)
        model = create_model("mae_sr", **kwargs)
        loaded = finetune.load_encoder(model.encoder, mae["state"], mae["path"])
        if args.linear_probe:  # frozen encoder: only the pixel map and the refinement train
            model.encoder.requires_grad_(False)
        if finetune.is_main():
            print(f"--init-from {mae['path']}: loaded {len(loaded)} encoder tensors into encoder.*", flush=True)
        return model, "mae_sr", kwargs
    from tasks.mae import default_patch_size
    size = stats["hr_shape"][-1]
    patch = args.patch_size or default_patch_size(size, args.mask_ratio)  # as a default MAE run on the HR images
    kwargs = dict(in_chans=C, scale=stats["scale"], image_size=size, patch_size=patch, embed_dim=args.embed_dim,
                  depth=args.depth, num_heads=args.num_heads, n_features=features)
    return create_model("mae_sr", **kwargs), "mae_sr", kwargs


param_groups = finetune.param_groups


class SRLoss(nn.Module):
    """L1 or MSE between the super-resolved and the HR image (normalised units); PSNR per image on
    the HR image's range logged as a metric (train_psnr, val_psnr)."""
    metric_names = ("psnr",)

    def __init__(self, kind="l1"):
        super().__init__()
        self.kind = kind

    def forward(self, out, hr):
        from engine.metrics import psnr
        sr = out["sr"].float()
        loss = F.l1_loss(sr, hr) if self.kind == "l1" else F.mse_loss(sr, hr)
        with torch.no_grad():
            value = psnr(sr, hr).clamp(max=100.0).mean()
        return loss, {"psnr": value}


def make_criterion(data, split, args):
    return SRLoss(args.sr_loss)


def val_metrics(y, log_probs) -> dict:
    return {}


def checkpoint_extras(data, stats, args) -> dict:
    return {}


# --------------------------------------------------------------------------- scoring (predict, evaluate)
@torch.no_grad()
def super_resolve(model, lr, batch_size, device, amp="fp32", progress=False) -> np.ndarray:
    """(N, C, f h, f w) float32 in the LR image's units: the model on min-max-scaled inputs, scaled back."""
    from tqdm import tqdm
    model = model.to(device).eval()
    out = []
    for i in tqdm(range(0, len(lr), batch_size), desc="super-resolve", leave=False,
                  disable=not progress or len(lr) <= batch_size):
        x = torch.from_numpy(np.ascontiguousarray(lr[i:i + batch_size], np.float32)).to(device)
        x, _, lo, span = normalise(x)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            sr = model(x)["sr"].float()
        out.append((sr * span + lo).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + tuple(lr.shape[1:]), np.float32)


def add_evaluate_args(parser):
    images.add_evaluate_args(parser)


def _check_scale(ckpt, lr, where):
    if tuple(lr.shape[1:]) != tuple(ckpt["stats"]["shape"]):
        raise TaskError(f"{where}: LR images of shape {tuple(lr.shape[1:])}, the run was trained on "
                        f"{tuple(ckpt['stats']['shape'])}")


def evaluate(ckpt, model, ckpt_path, args) -> dict:
    from engine import metrics
    from engine.checkpoint import write_csv
    from models.superres import Bicubic
    from plots import superres_eval
    run_dir = os.path.dirname(os.path.abspath(ckpt_path))
    config, stats = ckpt["config"], ckpt["stats"]
    if args.data:
        parts = [read_pairs(p, True, not args.no_progress)[0] for p in args.data]
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in ("lr", "hr", "ids", "files")}
        rows, what = np.arange(len(arrays["lr"])), "all pairs"
        stem = os.path.splitext(os.path.basename(os.path.normpath(args.data[0])))[0]
    else:
        source = config["data_source"]
        if not os.path.exists(source):
            raise TaskError(f"{run_dir}: its training data is gone ({source}); give --data")
        if sr_pairs.listing_key(source) != config["data_key"]:
            raise TaskError(f"{run_dir}: its training data ({source}) changed since training; give --data")
        arrays = read_pairs(source, True, not args.no_progress)[0]
        rows, what = ckpt["split"]["test"].numpy(), "test split"
        stem = "test"
        if len(rows) == 0:
            raise TaskError(f"{run_dir}: an empty test split (--test-fraction 0); give --data")
    lr, hr, ids = arrays["lr"][rows], arrays["hr"][rows], arrays["ids"][rows]
    _check_scale(ckpt, lr, args.data[0] if args.data else run_dir)
    out_dir = args.out_dir or os.path.join(run_dir, f"eval_{stem}")
    os.makedirs(out_dir, exist_ok=True)
    device = torch.device(args.device)
    amp = "bf16" if args.amp == "bf16" else "fp32"  # auto: fp32, so the metrics are not those of bf16 rounding
    name = ckpt["model_name"]
    print(f"evaluating {ckpt_path} (epoch {ckpt['epoch']}, {name}) on {what}: {len(lr)} pairs "
          f"(x{stats['scale']}), {amp}", flush=True)
    sr = super_resolve(model, lr, args.batch_size, device, amp, not args.no_progress)
    bic = super_resolve(Bicubic(stats["scale"]), lr, args.batch_size, device)
    ref = torch.from_numpy(hr)
    per_image = {}
    for key, image in (("model", sr), ("bicubic", bic)):
        t = torch.from_numpy(image)
        per_image[key] = {"psnr": metrics.psnr(t, ref).numpy(), "ssim": metrics.ssim(t, ref).numpy()}
    summary = {"run": run_dir, "checkpoint": ckpt_path, "epoch": int(ckpt["epoch"]), "rows": what, "model": name,
               "n_images": int(len(lr)), "scale": int(stats["scale"]), "precision": amp,
               "metric_range": "each HR image's max - min"}
    for key in ("model", "bicubic"):
        for metric in ("psnr", "ssim"):
            v = per_image[key][metric]
            finite = v[np.isfinite(v)]
            summary[f"{metric}_{key}"] = float(finite.mean()) if len(finite) else float("inf")
            summary[f"{metric}_{key}_sem"] = float(finite.std(ddof=1) / np.sqrt(len(finite))) if len(finite) > 1 else 0.0
    matched = torch.from_numpy(superres_eval.affine_matched(bic, hr))  # bicubic with an oracle gain and offset
    summary["psnr_bicubic_affine_oracle"] = float(metrics.psnr(matched, ref).mean())
    summary["ssim_bicubic_affine_oracle"] = float(metrics.ssim(matched, ref).mean())
    gain = per_image["model"]["psnr"] - per_image["bicubic"]["psnr"]
    summary["psnr_gain_db"] = float(np.mean(gain[np.isfinite(gain)])) if np.isfinite(gain).any() else float("nan")
    summary["fraction_improved"] = float(np.mean(gain > 0))
    summary["residuals"] = {key: superres_eval.residual_stats(image, hr) for key, image in (("model", sr), ("bicubic", bic))}
    summary["noise_ceiling_psnr"] = superres_eval.noise_ceiling_psnr(hr)
    P = lambda fname: os.path.join(out_dir, fname)  # noqa: E731
    rng = np.random.default_rng(args.seed)
    shown = np.sort(rng.choice(len(lr), size=min(len(lr), max(1, min(args.n_examples, 6))), replace=False))
    superres_eval.pair_panels(lr[shown], bic[shown], sr[shown], hr[shown],
                              [f"{ids[i]}: {per_image['model']['psnr'][i]:.1f} dB (bicubic "
                               f"{per_image['bicubic']['psnr'][i]:.1f})" for i in shown], P("examples.png"), name)
    superres_eval.metric_scatter(per_image, P("psnr_ssim_vs_bicubic.png"), name)
    write_csv(P("per_image_metrics.csv"), ["id", "psnr", "psnr_bicubic", "ssim", "ssim_bicubic"],
              [[i, f"{a:.4f}", f"{b:.4f}", f"{c:.5f}", f"{d:.5f}"] for i, a, b, c, d in
               zip(ids, per_image["model"]["psnr"], per_image["bicubic"]["psnr"], per_image["model"]["ssim"],
                   per_image["bicubic"]["ssim"])])
    summary["headline"] = (f"PSNR {summary['psnr_model']:.2f} dB (bicubic {summary['psnr_bicubic']:.2f}, "
                           f"{summary['psnr_gain_db']:+.2f} dB; better on {summary['fraction_improved']:.0%} of "
                           f"images; bicubic with an oracle gain and offset {summary['psnr_bicubic_affine_oracle']:.2f}) | "
                           f"SSIM {summary['ssim_model']:.4f} (bicubic {summary['ssim_bicubic']:.4f}) | "
                           f"HR sky-noise ceiling {summary['noise_ceiling_psnr']:.1f} dB ({len(lr)} pairs, "
                           f"x{stats['scale']})")
    summary["out_dir"] = out_dir
    return summary


def compare_columns(summary) -> dict:
    return {"n_images": summary["n_images"], "psnr": summary["psnr_model"], "psnr_bicubic": summary["psnr_bicubic"],
            "psnr_gain_db": summary["psnr_gain_db"], "psnr_bicubic_affine_oracle": summary["psnr_bicubic_affine_oracle"],
            "ssim": summary["ssim_model"],
            "ssim_bicubic": summary["ssim_bicubic"], "noise_ceiling_psnr": summary["noise_ceiling_psnr"]}


def predict(runs, args):
    """(header, rows, 0): every input's LR image super-resolved by each run (averaged over an
    ensemble), written to --image-dir as .npy, or FITS with the input's WCS scaled to the new pixels."""
    for ckpt, _, path in runs[1:]:
        if ckpt["stats"]["scale"] != runs[0][0]["stats"]["scale"]:
            raise TaskError(f"{path}: scale x{ckpt['stats']['scale']}, the first member's x{runs[0][0]['stats']['scale']}")
    parts = [read_pairs(p, False, not args.no_progress)[0] for p in args.input]
    lr = np.concatenate([p["lr"] for p in parts])
    ids, files = np.concatenate([p["ids"] for p in parts]), np.concatenate([p["files"] for p in parts])
    for ckpt, _, path in runs:
        _check_scale(ckpt, lr, path)
    amp = "bf16" if args.amp == "bf16" else "fp32"
    device = torch.device(args.device)
    sr = np.mean([super_resolve(model, lr, args.batch_size, device, amp, not args.no_progress)
                  for _, model, _ in runs], axis=0)
    scale = runs[0][0]["stats"]["scale"]
    out_dir = args.image_dir or os.path.splitext(args.output)[0] + "_sr"
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for image, i, f in zip(sr, ids, files):
        fmt = args.image_format if args.image_format != "same" else ("fits" if ".fit" in os.path.basename(f) else "npy")
        target = os.path.join(out_dir, f"{os.path.basename(str(i)).replace(':', '_')}.{fmt}")
        source = f if ".fit" in os.path.basename(f) else None
        sr_pairs.write_image(target, image, scale, source)
        rows.append([i, f, target, scale] + list(image.shape[1:]))
    return ["id", "input", "output", "scale", "height", "width"], rows, 0
