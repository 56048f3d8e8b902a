"""Dark-matter substructure: no substructure / subhalos ("sphere") / vortex, from single-band
lensing images (DeepLense .npy class folders, the simulator's folders or HDF5).

Data: `data.lens_data` with the substructure class folders (`no`/`no_substructure`,
`sphere`/`subhalo`, `vort`/`vortex`; directly or under train/ and val/, val/ being held out as
the test split, as given), packed once into the node's RAM cache like lens finding; float
images stay float. The classes do not depend on orientation, so every image is drawn under one
of the 8 symmetries of the square. Models: any timm backbone (3 outputs), or `lens_pinn`
(models/lens_pinn.py: a smooth lens model fitted per image, the source reconstructed through the
lens equation, the classifier shown both). Loss: cross-entropy weighted by inverse class
frequency; optionally (lens_pinn on simulated data) an auxiliary loss on the true lens
parameters, reported separately. With `--input-kind residual` a timm backbone is shown each image's
smooth-lens residual map instead of the image (data/residual_maps.py: (image - SIE + shear +
Sersic fit) / noise, the perturbation the classes are defined by), fitted once per image and kept
in a store; evaluation and prediction fit their images the same way, through the PSF of their
own data. The best checkpoint is chosen on validation macro AUC
(one-vs-rest); the test split is never used for selection.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data import augment, lens_data
from data.residual_maps import PSF_COLUMN, PSF_SCAN_IMAGES, psf_fwhm_arg
from engine.checkpoint import write_csv
from engine.inference import align_to_shares, inference_precision, shares_arg
from models import create_model
from tasks import TaskError, TrainData, finetune, images

TASK = "substructure"
CLASS_NAMES = ("no", "sphere", "vort")
SELECT_METRIC = "val_macro_auc"
COMPARE_METRIC = "macro_auc"  # evaluate.py --compare plots it against training time
# seed 003's recipe: AdamW 1e-4, weight decay 1e-2, cosine; 20% validation
DEFAULTS = dict(epochs=20, batch_size=64, lr=1e-4, weight_decay=1e-2, warmup_epochs=1.0,
                val_fraction=0.2, test_fraction=0.1, dropout=0.0)
IDENTITY_KEYS = ("task", "model", "input_size", "norm", "data_key", "seed", "val_fraction", "test_fraction",
                 "pinn_encoder", "pinn_classifier", "residual_field", "init_from", "linear_probe", "label_fraction",
                 "adapt_data", "input_kind", "psf_fwhm", "pixel_scale")
IDENTITY_DEFAULTS = {"input_kind": "image", "psf_fwhm": "scan", "pixel_scale": 0.05}  # runs made before these options
PINN = "lens_pinn"
ALIGN_FEW = 100  # --align-shares on fewer images: the set's shares are a rough estimate (said so)
PIXEL_SCALE = 0.05  # arcsec per pixel of the DeepLense / Model I images
# the simulator's params columns of the PINN's smooth lens (models/lens_pinn.LENS_PARAM_NAMES)
LENS_PARAM_COLUMNS = ("theta_e", "lens_e1", "lens_e2", "gamma1", "gamma2", "lens_x", "lens_y")
# evaluate.py: accuracy against the simulator's true parameters, where the data has them
PARAMETER_BINS = (("subhalo_mass_max", "largest subhalo mass (M_sun)", "sphere", np.logspace(6, 10, 9)),
                  ("m_axion_ev", "axion mass (eV)", "vort", np.logspace(-24, -22, 7)),
                  ("vortex_half_length", "vortex half-length (arcsec)", "vort", np.logspace(np.log10(0.03), 0.5, 7)),
                  ("theta_e", "Einstein radius (arcsec)", None, np.linspace(0.6, 2.2, 9)))


# --------------------------------------------------------------------------- train.py
def add_train_args(parser):
    images.add_train_args(parser)
    g = parser.add_argument_group("substructure (--task substructure; --model a timm name or lens_pinn)")
    g.add_argument("--pinn-encoder", default="resnet18", help="lens_pinn: timm backbone predicting the lens")
    g.add_argument("--pinn-classifier", default="resnet18", help="lens_pinn: timm backbone classifying")
    g.add_argument("--no-residual-field", dest="residual_field", action="store_false",
                   help="lens_pinn: the smooth lens only (no learned residual deflection field)")
    g.add_argument("--lens-param-weight", type=float, default=0.0,
                   help="lens_pinn: weight of the auxiliary loss on the simulator's true lens parameters "
                        "(needs data with params; 0: off)")
    g.add_argument("--input-kind", choices=("image", "residual"), default="image",
                   help="what the network is shown: the image, or its smooth-lens residual map ((image - SIE + "
                        "shear + Sersic fit) / noise on the central +-2.6\", data/residual_maps.py; ~1 s per image "
                        "per CPU core, once: the maps are kept in --fit-cache)")
    g.add_argument("--psf-fwhm", type=psf_fwhm_arg, default="scan",
                   help="--input-kind residual: the training images' Gaussian PSF FWHM in arcsec, 'scan' "
                        f"(default): measured on {PSF_SCAN_IMAGES} of them, or 'params': each image's own from the "
                        f"data's {PSF_COLUMN} column (a randomised simulation such as deeplense-broad). An "
                        "--adapt-data target is always scanned (the PSF belongs to the data)")
    g.add_argument("--pixel-scale", type=float, default=PIXEL_SCALE, help="--input-kind residual: arcsec per pixel")
    g.add_argument("--fit-cache", default=None,
                   help="--input-kind residual: the store of fitted maps (default $LENSING_FIT_CACHE or "
                        "~/.cache/lensing/fits; on a cluster, a shared scratch folder)")


def _sources(args):
    try:
        sources = lens_data.sources_of(args.data, class_folders=lens_data.SUBSTRUCTURE_FOLDERS)
    except lens_data.LensDataError as err:
        raise TaskError(str(err)) from None
    folders = [(r, lab) for r, lab in sources if lab is not None]
    for parent in sorted({os.path.dirname(r) for r, _ in folders}):
        present = {lab[0] for r, lab in folders if os.path.dirname(r) == parent}
        missing = [c for c in range(len(CLASS_NAMES)) if c not in present]
        if missing:
            names = lambda c: " or ".join(d for d, lab in lens_data.SUBSTRUCTURE_FOLDERS.items() if lab[0] == c)  # noqa: E731
            raise TaskError(f"{parent}: no class folder {'; no '.join(names(c) for c in missing)} (found "
                            f"{', '.join(os.path.basename(r) for r, lab in folders if os.path.dirname(r) == parent)})")
    return sources


def check_train_args(args):
    if args.data is None:
        raise TaskError("--task substructure needs --data (a folder of no/sphere/vort class folders or an HDF5 file)")
    images.check_model_args(args, own_models=(PINN,))  # default resnet18; the MAE's encoder with --init-from
    if args.model == PINN:
        for name in (args.pinn_encoder, args.pinn_classifier):
            images.check_backbone_arg(name)
    else:
        if args.lens_param_weight:
            raise TaskError("--lens-param-weight applies to --model lens_pinn only")
    if args.input_kind == "residual":
        if args.model == PINN:
            raise TaskError("--input-kind residual: lens_pinn fits its own lens to the image; use a timm backbone")
        if args.init_from:
            raise TaskError("--input-kind residual: an MAE encoder (--init-from) was pretrained on images, not on "
                            "residual maps")
        if not 0 < args.pixel_scale < 10:
            raise TaskError(f"--pixel-scale {args.pixel_scale}: expected arcsec per pixel in (0, 10)")
    if args.bands:
        raise TaskError("--bands: substructure images have one band")
    args.bands = None


def default_name(args) -> str:
    stem = os.path.splitext(os.path.basename(os.path.normpath(args.data)))[0]
    model = f"{PINN}_{args.pinn_encoder}" if args.model == PINN else args.model
    kind = "_residual" if args.input_kind == "residual" else ""
    return f"substructure_{model}{kind}_{stem}{finetune.name_suffix(args)}_s{args.seed}"


def data_identity(args) -> dict:
    sources = _sources(args)
    return {"data_sources": [[r, lab] for r, lab in sources], "data_key": lens_data.listing_key(sources)}


def load_train_data(args, info) -> TrainData:
    data = images.ingest(_sources(args), args, info, TASK, CLASS_NAMES)
    if args.input_kind == "residual":
        data = residual_input(data, args, info, args.data, args.psf_fwhm)
    if args.model == PINN and args.lens_param_weight > 0:
        columns = [data.arrays.get(f"params_{name}") for name in LENS_PARAM_COLUMNS]
        if columns[0] is None:
            data.remove()
            raise TaskError(f"--lens-param-weight: {args.data} has no true lens parameters (params.csv or HDF5 "
                            "params of the simulator)")
        n = len(data.labels)  # a column the data lacks (e.g. the lens centre of Model I) is not fitted
        data.meta["lens_params"] = np.stack([np.asarray(c, np.float32) if c is not None else np.full(n, np.nan, np.float32)
                                             for c in columns], 1)  # (N, 7)
    return data


make_split = images.make_split
param_groups = finetune.param_groups


def fit_stats(data, split, args, info):
    # lens_pinn sees the image at its own size (its lens equation is on that pixel grid)
    backbone = "resnet18" if args.model == PINN else args.model
    stats = images.fit_stats(data, args, backbone) | {"pixel_scale": PIXEL_SCALE}
    if "input" in data.meta:  # the residual maps' fit, repeated on the images of evaluate and predict
        stats["input"] = data.meta["input"]
    return stats


def residual_input(data, args, info, what, psf_fwhm) -> TrainData:
    """`data` (a TrainData of images) with its images replaced by their smooth-lens residual maps:
    the fits shared out over the ranks and kept in the store, the maps packed into a new node cache
    and the images' cache removed. `psf_fwhm`: arcsec, 'scan' (measured on these images) or 'params'
    (each image's own, the data's psf_fwhm column)."""
    from data import residual_maps
    from data.cache import SharedArrays, cache_key
    pixels = data.arrays["images"]
    try:
        psf = residual_maps.resolve_psf(psf_fwhm, pixels, args.pixel_scale, args.fit_cache,
                                        data.arrays.get(f"params_{PSF_COLUMN}"), what, info, info.device)
        keys = residual_maps.fit_missing(pixels, args.pixel_scale, psf, args.fit_cache, info, info.device,
                                         not args.no_progress)
    except (residual_maps.ResidualMapError, OSError) as err:  # OSError: a fit store that cannot be written
        data.remove()
        raise TaskError(f"{what}: {err}") from None
    store = residual_maps.FitStore(args.fit_cache or residual_maps.default_cache_dir(), args.pixel_scale, psf)
    index = store.index()
    missing = len(set(keys.tolist()) - set(index))
    if missing:  # another node's parts are not here
        data.remove()
        raise TaskError(f"{store.dir}: {missing} of the fitted maps are missing after every rank's fits; under "
                        "torchrun on several nodes --fit-cache must be a folder every node sees")
    names = [name for name in data.arrays.arrays if name != "images"]

    def build():
        return {name: np.asarray(data.arrays[name]) for name in names} | {"images": store.read(keys, index)}

    maps = SharedArrays(cache_key(None, {"residual": store.config}, identity=data.meta["data_key"] + what),
                        build, info, args.cache_dir)
    image_shape = tuple(pixels.shape[1:])
    del pixels
    data.remove()
    data.arrays = maps
    data.meta["shape"] = tuple(maps["images"].shape[1:])
    data.meta["input"] = {"kind": "residual", "psf_fwhm": "params" if np.ndim(psf) else psf,
                          "pixel_scale": args.pixel_scale, "image_shape": list(image_shape)}
    if info.is_main:
        print(f"{what}: residual maps {'x'.join(map(str, data.meta['shape']))} (PSF "
              f"{residual_maps.describe_psf(psf)}, "
              f"{args.pixel_scale}\"/pixel, store {store.dir})", flush=True)
    return data


def make_fetch(data, stats, args, device, train: bool):
    lens_params = data.meta.get("lens_params")
    if lens_params is None:
        return images.make_fetch(data, stats, args, device, train)

    def fetch(indices):  # the true lens parameters follow each image's symmetry and shift
        idx = np.asarray(indices)
        x, ks, shifts = images.batch_images(data, stats, args, device, train, idx)
        p = augment.transform_lens_params(torch.from_numpy(lens_params[idx]).to(device), ks, shifts,
                                          stats["pixel_scale"])
        return x, {"label": torch.from_numpy(data.labels[idx]), "lens_params": p}
    return fetch


def build_model(args, data, stats):
    if args.model != PINN:
        return images.timm_model(args, stats, n_outputs=len(CLASS_NAMES))
    C, H, _ = stats["shape"]
    kwargs = dict(in_chans=C, n_classes=len(CLASS_NAMES), image_size=H, pixel_scale=stats["pixel_scale"],
                  encoder=args.pinn_encoder, classifier=args.pinn_classifier, residual_field=args.residual_field,
                  drop_rate=args.dropout)
    return create_model(PINN, **kwargs, pretrained_path=args.pretrained_path), PINN, kwargs


class SubstructureLoss(nn.Module):
    """Cross-entropy with class weights; for lens_pinn optionally + w * loss on the simulator's
    true lens parameters (models.lens_pinn.lens_param_loss). Each term is returned for the logs.
    (No self-consistency loss |image - relensed|^2: a lens that images every source pixel once
    makes it zero without fitting anything.)"""

    def __init__(self, class_weights, lens_param_weight=0.0):
        super().__init__()
        self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32))
        self.lens_param_weight = lens_param_weight
        self.term_names = ("ce", "lens_params") if lens_param_weight else ()  # logged as *_loss_<name>

    def forward(self, out, y):
        label = y["label"] if isinstance(y, dict) else y
        ce = F.cross_entropy(out["logits"].float(), label, weight=self.class_weights)
        terms, loss = {"ce": ce}, ce
        if self.lens_param_weight and isinstance(y, dict) and "lens_params" in y:
            from models.lens_pinn import lens_param_loss
            terms["lens_params"] = lens_param_loss(out["lens_params"].float(), y["lens_params"])
            loss = loss + self.lens_param_weight * terms["lens_params"]
        return loss, terms


def make_criterion(data, split, args):
    counts = np.bincount(data.labels[split["train"]], minlength=len(CLASS_NAMES)).astype(np.float64)
    weights = counts.sum() / (len(CLASS_NAMES) * np.maximum(counts, 1)) if args.class_weights == "balanced" \
        else np.ones(len(CLASS_NAMES))
    return SubstructureLoss(weights, args.lens_param_weight if args.model == PINN else 0.0)


def val_metrics(y, log_probs) -> dict:
    from scipy.special import softmax
    from sklearn.metrics import roc_auc_score
    probs = softmax(log_probs, axis=1)
    per_class = {f"auc_{name}": (float(roc_auc_score(y == c, probs[:, c])) if 0 < (y == c).sum() < len(y)
                                 else float("nan")) for c, name in enumerate(CLASS_NAMES)}
    return {"macro_auc": float(np.mean(list(per_class.values())))} | per_class


def checkpoint_extras(data, stats, args) -> dict:
    return {}


# --------------------------------------------------------------------------- scoring (predict, evaluate)
def ensemble_probs(runs, pixels, args, progress=True, own_split=False, psfs=None):
    """(probabilities (N, 3) = softmax of the mean member logits, std of the members' probabilities (N, 3)).
    Each member is shown what it was trained on: the images, or their residual maps (fitted once per
    distinct fit among the members). `psfs`: the images' own PSF column where the data has one
    (None otherwise), for --psf-fwhm params."""
    from scipy.special import softmax
    groups = {}  # members sharing an input
    for m, (ckpt, _, _) in enumerate(runs):
        groups.setdefault(json.dumps(ckpt["stats"].get("input"), sort_keys=True), []).append(m)
    members = [None] * len(runs)
    for key, which in groups.items():
        spec = json.loads(key)
        shown = pixels if spec is None else residual_pixels(pixels, spec, args, runs[which[0]][2], own_split, progress,
                                                            psfs)
        outputs = images.member_outputs([runs[m] for m in which], shown, args, "logits", progress)
        for m, out in zip(which, outputs):
            members[m] = out
    members = np.stack(members)  # (M, N, 3), TTA-averaged logits
    return softmax(members.mean(0), axis=-1), softmax(members, axis=-1).std(0)


def residual_pixels(pixels, spec, args, ckpt_path, own_split, progress, psfs=None) -> np.ndarray:
    """The residual maps a residual-input run (its stats' `input`) is shown of `pixels` (N, 1, H, W):
    fitted through the run's PSF on its own test split, else through --psf-fwhm (default: measured
    on these images: the PSF belongs to the data, not to the model); 'params': each image's own
    (`psfs`, the data's psf_fwhm column)."""
    from data import residual_maps
    if tuple(pixels.shape[1:]) != tuple(spec["image_shape"]):
        raise TaskError(f"{ckpt_path}: trained on the residual maps of {'x'.join(map(str, spec['image_shape']))} "
                        f"images; these are {'x'.join(map(str, pixels.shape[1:]))}")
    psf = spec["psf_fwhm"] if own_split else getattr(args, "psf_fwhm", "scan")
    cache = getattr(args, "fit_cache", None)
    try:
        scanned = psf == "scan"
        psf = residual_maps.resolve_psf(psf, pixels, spec["pixel_scale"], cache, psfs, device=args.device)
        if scanned:
            trained = spec["psf_fwhm"] if spec["psf_fwhm"] == "params" else f"{spec['psf_fwhm']:.3f}\""
            print(f"residual maps: PSF FWHM {psf:.3f}\" measured on these images (--psf-fwhm sets it; the run was "
                  f"trained through {trained})", flush=True)
        return residual_maps.residual_maps(pixels, spec["pixel_scale"], psf, cache, args.device, progress)
    except (residual_maps.ResidualMapError, OSError) as err:
        raise TaskError(str(err)) from None


def align_shares(probs, args):
    """(probabilities, None) as they are, or with --align-shares (probabilities aligned to the class
    shares the images are said to hold, {shares, weights}): engine.inference.align_to_shares."""
    shares = getattr(args, "align_shares", None)
    if shares is None:
        return probs, None
    aligned, weights = align_to_shares(probs, shares)
    target = aligned.mean(0)
    before, after = (np.bincount(p.argmax(1), minlength=len(CLASS_NAMES)) for p in (probs, aligned))
    print("--align-shares: probabilities aligned to the shares " + ", ".join(
        f"{c} {t:.2f}" for c, t in zip(CLASS_NAMES, target)) + " (class weights " + ", ".join(
        f"{w:.3g}" for w in weights) + "); calls before " + "/".join(map(str, before)) + ", after "
        + "/".join(map(str, after)) + (f"; {len(probs)} images are few to align on" if len(probs) < ALIGN_FEW else ""),
        flush=True)
    return aligned, {"shares": [float(t) for t in target], "weights": [float(w) for w in weights],
                     "calls_before": before.tolist(), "calls_after": after.tolist()}


def predict(runs, args):
    """(header, rows, skipped): `id, p_no, p_sphere, p_vort, class` per image of the inputs."""
    arrays, report = images.load_paths(args.input, None, args, labelled=False,
                                       class_folders=lens_data.SUBSTRUCTURE_FOLDERS)
    probs, spread = ensemble_probs(runs, arrays["images"], args, not args.no_progress,
                                   psfs=arrays.get(f"params_{PSF_COLUMN}"))
    probs, _ = align_shares(probs, args)
    header = ["id"] + [f"p_{c}" for c in CLASS_NAMES] + ["class"]
    header += [f"std_{c}" for c in CLASS_NAMES] + ["file"] if args.extra_columns else []
    rows = [[i] + [f"{v:.6f}" for v in p] + [CLASS_NAMES[int(p.argmax())]]
            + ([f"{v:.4f}" for v in d] + [f] if args.extra_columns else [])
            for i, p, d, f in zip(arrays["ids"], probs, spread, arrays["files"])]
    return header, rows, images.report_skipped(report)


# --------------------------------------------------------------------------- evaluate.py
def add_evaluate_args(parser):
    images.add_evaluate_args(parser)
    g = parser.add_argument_group("substructure")
    g.add_argument("--residuals", action="store_true",
                   help="also fit every image's smooth lens (SIE + shear + Sersic, physics/strong/fit.py; ~1 s per "
                        "image per core) and report the accuracy on images with and without a residual above the "
                        "noise: residuals.csv")
    g.add_argument("--pixel-scale", type=float, default=0.05, help="--residuals: arcsec per pixel")
    g.add_argument("--psf-fwhm", type=psf_fwhm_arg, default="scan",
                   help="--residuals, and runs trained with --input-kind residual on --data: the data's Gaussian "
                        f"PSF FWHM in arcsec, 'params' (each image's own, the data's {PSF_COLUMN} column), or "
                        "'scan' (default): the median over up to "
                        f"{PSF_SCAN_IMAGES} images of the FWHM whose fit leaves the least chi^2 (physics.strong.fit."
                        "psf_scan; 7 more fits of those images). deeplense-model1 0.087, deeplense-common and the "
                        "public Common Test I samples 0.2")
    g.add_argument("--fit-cache", default=None, help="runs trained with --input-kind residual: the store of fitted "
                   "maps (default $LENSING_FIT_CACHE or ~/.cache/lensing/fits)")
    add_align_arg(g)


def check_align_arg(shares, task, path):
    """--align-shares given to a run of `task` (at `path`): one line where it cannot be used."""
    if task != TASK:
        raise TaskError(f"--align-shares aligns substructure probabilities; {path} is a {task} run")
    if shares != "uniform" and len(shares) != len(CLASS_NAMES):
        raise TaskError(f"--align-shares: {len(shares)} shares given for the {len(CLASS_NAMES)} classes "
                        f"{', '.join(CLASS_NAMES)}")


def add_align_arg(group):
    group.add_argument("--align-shares", type=shares_arg, default=None, metavar="SHARES",
                       help="substructure: the class shares no,sphere,vort the images hold ('uniform', or e.g. "
                            "2,1,1): the probabilities are reweighted per class until their mean over the images "
                            "equals them (distribution alignment; for images from another generator, whose "
                            "probabilities shift between the classes). An assumption about the data: leave it out "
                            "where the shares are unknown. evaluate.py also reports the unaligned figures")


def evaluate(ckpt, model, ckpt_path, args) -> dict:
    from engine import metrics
    from plots import lens_eval
    from plots import microlensing_eval as mc
    run_dir = os.path.dirname(os.path.abspath(ckpt_path))
    arrays, report, rows, what, stem = images.evaluation_data(ckpt, run_dir, args, lens_data.SUBSTRUCTURE_FOLDERS)
    y, pixels = arrays["labels"][rows], arrays["images"][rows]
    out_dir = args.out_dir or os.path.join(run_dir, f"eval_{stem}")
    os.makedirs(out_dir, exist_ok=True)
    name = ckpt["model_kwargs"].get("backbone", ckpt["model_name"])
    print(f"evaluating {ckpt_path} (epoch {ckpt['epoch']}, {name}) on {what}: {len(y)} images ("
          + ", ".join(f"{(y == c).sum()} {n}" for c, n in enumerate(CLASS_NAMES)) + f"); TTA x{args.tta}, "
          f"{inference_precision(args.amp, args.device)}", flush=True)
    psfs = arrays.get(f"params_{PSF_COLUMN}")
    probs = ensemble_probs([(ckpt, model, ckpt_path)], pixels, args, not args.no_progress, own_split=not args.data,
                           psfs=None if psfs is None else psfs[rows])[0]
    raw, (probs, aligned) = probs, align_shares(probs, args)
    pred = probs.argmax(1)
    P = lambda fname: os.path.join(out_dir, fname)  # noqa: E731
    colors = mc.palette(args.colorblind_safe)
    summary = {"run": run_dir, "checkpoint": ckpt_path, "epoch": int(ckpt["epoch"]), "rows": what, "model": name,
               "tta": args.tta, "n_images": int(len(y)), "accuracy": float((pred == y).mean()),
               "ingest": {k: v for k, v in report.items() if k != "bad"}}
    summary["roc"] = mc.roc_plot(y, probs, CLASS_NAMES, P("roc_curves.png"), args.n_bootstrap, args.seed, colors)
    summary["confusion"] = mc.confusion_matrix_plot(y, pred, CLASS_NAMES, P("confusion_matrix.png"), colors)
    summary["calibration"] = mc.reliability_plot(y, probs, P("calibration.png"), colors=colors)
    summary["per_class"] = mc.per_class_metrics_plot(y, pred, CLASS_NAMES, P("per_class_metrics.png"), colors)
    ids, files = arrays["ids"][rows], arrays["files"][rows]
    wrong = np.flatnonzero(pred != y)
    worst = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:args.n_examples]
    lens_eval.image_grid(pixels[worst], [f"{ids[i]}\n{CLASS_NAMES[y[i]]}->{CLASS_NAMES[pred[i]]} "
                                                 f"{probs[i, pred[i]]:.2f}" for i in worst],
                                 P("misclassified.png"), title=f"most confident mistakes ({len(worst)})")
    tables = {}
    for column, label, cls, bins in PARAMETER_BINS:
        values = arrays.get(f"params_{column}")
        sel = np.ones(len(y), bool) if cls is None else y == CLASS_NAMES.index(cls)
        if values is not None and np.isfinite(values[rows][sel]).any():
            # accuracy per bin = recall of "correct" with every image counted as a positive
            tables[f"{label}{'' if cls is None else f' ({cls})'}"] = metrics.binned_recall(
                np.ones(sel.sum(), int), (pred[sel] == y[sel]).astype(float), values[rows][sel], bins)
    if tables:
        summary["accuracy_vs_parameters"] = lens_eval.recall_vs_parameter_plot(
            tables, P("accuracy_vs_parameters.png"), colors=colors, ylabel="accuracy",
            title="accuracy per bin (68% Wilson, images per bin)")
    write_csv(P("predictions.csv"), ["id", "label"] + [f"p_{c}" for c in CLASS_NAMES] + ["file"],
              [[i, CLASS_NAMES[t]] + [f"{v:.6f}" for v in p] + [f] for i, t, p, f in zip(ids, y, probs, files)])
    if aligned is not None:  # what the run's own probabilities gave
        present = np.unique(y)
        from sklearn.metrics import roc_auc_score
        aligned["unaligned"] = {"accuracy": float((raw.argmax(1) == y).mean()), "macro_auc": float(np.mean(
            [roc_auc_score(y == c, raw[:, c]) for c in present])) if len(present) > 1 else float("nan")}
        summary["aligned"] = aligned
    if args.residuals:
        summary["residuals"] = residual_report(pixels[:, 0], y, pred, ids, P("residuals.csv"), args,
                                               None if psfs is None else psfs[rows])
    roc = summary["roc"]
    lo, hi = roc["macro_auc_ci"]
    summary["headline"] = (f"macro AUC {roc['macro_auc']:.4f} [{lo:.3f}, {hi:.3f}] | "
                           + ", ".join(f"{c} {roc['auc'][c]:.4f}" for c in CLASS_NAMES)
                           + f" | accuracy {summary['accuracy']:.4f} | ECE {summary['calibration']['ece']:.3f} "
                           f"({len(y)} images)" + ("" if aligned is None else
                                                   f" | aligned to --align-shares; unaligned: macro AUC "
                                                   f"{aligned['unaligned']['macro_auc']:.4f}, accuracy "
                                                   f"{aligned['unaligned']['accuracy']:.4f}"))
    summary["out_dir"] = out_dir
    return summary


def residual_report(pixels, y, pred, ids, csv_path, args, psfs=None) -> dict:
    """The smooth-lens fit of every image (physics.strong.fit): per image its residual statistics
    (residuals.csv), per class the share without a residual above the noise (no network can
    classify those by their substructure) and the accuracy with and without one."""
    from physics.strong import fit
    if pixels.shape[-1] != pixels.shape[-2]:
        raise TaskError(f"--residuals fits square images; these are {pixels.shape[-2]}x{pixels.shape[-1]}")
    pixels = np.asarray(pixels, np.float64)
    from data import residual_maps
    try:  # a scan: images spread over the set (it may be ordered by class), the same ones every run
        psf_fwhm = residual_maps.resolve_psf(args.psf_fwhm, pixels[:, None], args.pixel_scale, args.fit_cache, psfs,
                                             "--residuals", device=args.device)
    except residual_maps.ResidualMapError as err:
        raise TaskError(str(err)) from None
    if args.psf_fwhm == "scan":
        print(f"smooth-lens residuals: PSF FWHM {psf_fwhm:.3f}\" (median of the best fits of "
              f"{min(PSF_SCAN_IMAGES, len(pixels))} images; --psf-fwhm sets it)")
    stats = fit.measure_images(pixels, args.pixel_scale, psf_fwhm, progress=not args.no_progress)
    columns = ("chi2_dof", "ring_excess", "ring_excess_error", "max_residual_sigma", "max_residual_radius")
    write_csv(csv_path, ["id", "label", "pred", "detectable"] + list(columns),
              [[i, CLASS_NAMES[t], CLASS_NAMES[p], int(d)] + [f"{stats[c][j]:.4f}" for c in columns]
               for j, (i, t, p, d) in enumerate(zip(ids, y, pred, stats["detectable"]))])
    seen = stats["detectable"] > 0
    out = {"csv": csv_path, "psf_fwhm": "params" if np.ndim(psf_fwhm) else psf_fwhm}
    for c, name in enumerate(CLASS_NAMES):
        sel = y == c
        out[name] = {"undetectable": float(1 - seen[sel].mean()) if sel.any() else float("nan"),
                     "ring_excess_mean": float(stats["ring_excess"][sel].mean()) if sel.any() else float("nan"),
                     "accuracy_detectable": float((pred == y)[sel & seen].mean()) if (sel & seen).any() else None,
                     "accuracy_undetectable": float((pred == y)[sel & ~seen].mean()) if (sel & ~seen).any() else None}
    print("smooth-lens residuals: " + "; ".join(
        f"{name} {out[name]['undetectable']:.0%} without a residual above the noise" for name in CLASS_NAMES))
    return out


def compare_columns(summary) -> dict:
    """What evaluate.py --compare shows of a run's evaluation."""
    roc = summary["roc"]
    aligned = summary.get("aligned")
    return {"n_images": summary["n_images"], "macro_auc": roc["macro_auc"],
            **{f"auc_{c}": roc["auc"][c] for c in CLASS_NAMES}, "accuracy": summary["accuracy"],
            "ece": summary["calibration"]["ece"],
            "aligned_to": "/".join(f"{t:.2f}" for t in aligned["shares"]) if aligned else "",
            "accuracy_unaligned": aligned["unaligned"]["accuracy"] if aligned else summary["accuracy"]}
