"""Finding runs and predicting with them: shared by evaluate.py and predict.py."""
from __future__ import annotations

import copy
import os

import numpy as np
import torch
from tqdm import tqdm

from data import augment
from data.lightcurves import normalize
from engine.checkpoint import CheckpointError, build_from_checkpoint, load_checkpoint


def find_run(name: str, output: str) -> str:
    """Run directory under `output` named `name`, or the newest one whose name contains it."""
    exact = os.path.join(output, name)
    if os.path.isdir(exact) and _has_checkpoint(exact):
        return exact
    if not os.path.isdir(output):
        raise CheckpointError(f"{output}: no such results folder (set --output)")
    runs = [os.path.join(output, d) for d in sorted(os.listdir(output)) if _has_checkpoint(os.path.join(output, d))]
    matches = [r for r in runs if name in os.path.basename(r)]
    if not matches:
        listing = ", ".join(os.path.basename(r) for r in runs) or "none"
        raise CheckpointError(f"no run matching {name!r} in {output} (runs there: {listing})")
    matches.sort(key=lambda r: os.path.getmtime(_checkpoint_path(r)), reverse=True)
    if len(matches) > 1:
        print(f"{len(matches)} runs match {name!r}; using the newest, {os.path.basename(matches[0])} "
              f"(others: {', '.join(os.path.basename(r) for r in matches[1:])})", flush=True)
    return matches[0]


def _checkpoint_path(run_dir, which="best"):
    path = os.path.join(run_dir, f"{which}.pt")
    return path if os.path.isfile(path) else os.path.join(run_dir, "last.pt")


def _has_checkpoint(run_dir):
    return os.path.isdir(run_dir) and os.path.isfile(_checkpoint_path(run_dir))


def load_run(path: str, task: str | None = None, which: str = "best"):
    """(checkpoint dict, model in eval mode, checkpoint path) of a run directory or checkpoint file.

    `task`: the task the caller expects (None: any; the checkpoint's "task" says which)."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such run directory or checkpoint")
    if os.path.isdir(path) and not _has_checkpoint(path):
        raise CheckpointError(f"{path}: a folder without best.pt or last.pt, not a run directory")
    ckpt_path = _checkpoint_path(path, which) if os.path.isdir(path) else path
    ckpt = load_checkpoint(ckpt_path, task=task)
    try:
        model = build_from_checkpoint(ckpt)
    except (ValueError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"{ckpt_path}: cannot rebuild its model ({err})") from None
    return ckpt, model, ckpt_path


class ShapeError(ValueError):
    """Images of another shape than a run was trained on."""


def inference_precision(amp: str, device) -> str:
    """auto: bf16 where the hardware computes it fast (CUDA with bf16, CPUs with AMX or AVX512-BF16), else fp32."""
    if amp != "auto":
        return amp
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    fast = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bf16" if fast else "fp32"


@torch.no_grad()
def tta_outputs(model, stats, images, tta: int, batch_size: int, device, amp: str = "fp32", key: str = "logit",
                progress: bool = False, desc: str = "predict") -> np.ndarray:
    """out[key] of an image model averaged over the test-time symmetries (`data.augment.tta_transforms`)
    for (N, C, H, W) raw images: (N,) for a binary "logit", (N, K) for "logits" / "log_probs".

    The run's per-image normalisation (stats["norm"]) runs in float32 as in training; with amp
    bf16 the network's weights and activations are bfloat16; channels-last either way (the fast
    layout for oneDNN and cuDNN)."""
    if tuple(images.shape[1:]) != tuple(stats["shape"]):
        raise ShapeError(f"images of shape {tuple(images.shape[1:])}, the run was trained on {tuple(stats['shape'])}")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[amp]
    net = copy.deepcopy(model).to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()
    ks = augment.tta_transforms(tta)
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, leave=False,
                  disable=not progress or len(images) <= batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size], np.float32)).to(device)
        x = augment.normalize(x, stats["norm"])
        total = 0
        for k in ks:
            total = total + net(augment.d4(x, k).to(dtype).contiguous(memory_format=torch.channels_last))[key].double()
        out.append((total / len(ks)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


@torch.no_grad()
def predict_log_probs(model, features, stats: dict, batch_size: int = 256, device="cpu", progress: bool = False,
                      desc: str = "predict") -> np.ndarray:
    """features (N, T, 4) (numpy, any float type) → log-probabilities (N, 3) float64."""
    model = model.to(device).eval()
    out = []
    for i in tqdm(range(0, len(features), batch_size), desc=desc, leave=False,
                  disable=not progress or len(features) <= batch_size):
        x = torch.from_numpy(np.asarray(features[i:i + batch_size], dtype=np.float32)).to(device)
        out.append(model(normalize(x, stats))["log_probs"].double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 3))


def shares_arg(text):
    """An argparse type for class shares: 'uniform', or non-negative numbers separated by commas
    (normalised to sum 1; their count is checked against the run's classes where it is used)."""
    import argparse
    if text == "uniform":
        return text
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) < 2 or not all(np.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected 'uniform' or shares per class such as 1,1,1, got {text!r}")
    return values


def align_to_shares(probs, shares, iterations: int = 1000, tol: float = 1e-9):
    """Distribution alignment (a label-shift correction, as in Saerens et al. 2002 with the target
    shares given, or AdaMatch's alignment at inference): per-class weights w with p'_ic ∝ p_ic w_c
    such that the mean of p' over the set equals `shares`. The ranking within each image's classes
    may change; an image's most likely class is now judged against what the set is said to hold.

    probs (N, K) probabilities; shares 'uniform' or K non-negative numbers (normalised).
    Returns (aligned probabilities (N, K), weights (K,), normalised to sum 1)."""
    probs = np.asarray(probs, np.float64)
    k = probs.shape[1]
    target = np.full(k, 1.0 / k) if isinstance(shares, str) and shares == "uniform" else np.asarray(shares, np.float64)
    if target.shape != (k,):
        raise ValueError(f"{len(target)} class shares given for {k} classes")
    target = target / target.sum()
    weights = np.where(target > 0, 1.0, 0.0)
    aligned = probs
    for _ in range(iterations):
        aligned = probs * weights
        aligned /= np.maximum(aligned.sum(1, keepdims=True), 1e-300)
        mean = aligned.mean(0)
        if np.abs(mean - target).max() < tol:
            break
        weights = weights * np.where(target > 0, target / np.maximum(mean, 1e-300), 0.0)
        weights /= weights.sum()
    return aligned, weights / weights.sum()
