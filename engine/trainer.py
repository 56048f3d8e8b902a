"""The generic loop: one epoch of training, one pass of evaluation, the LR schedule, AMP, signals.

Batches come from a `fetch(indices) -> (x, y)` function of the task's data module, so this
file knows nothing about light curves or images. `y` is the (B,) class labels, or a dict of
tensors holding them under "label" plus what else the task's loss needs (e.g. the simulator's
true lens parameters for an auxiliary loss, or a super-resolution target). Tasks without classes
(n_classes 0: mae, superres) log their loss and the criterion's named terms only.

A criterion returns (loss, terms); `criterion.term_names` are logged as <split>_loss_<name>,
`criterion.metric_names` (e.g. PSNR) as <split>_<name>, both averaged over samples.
"""
from __future__ import annotations

import contextlib
import math
import signal
import time

import numpy as np
import torch
from tqdm import tqdm

from engine.distributed import DistInfo, all_gather_objects, all_reduce_sum


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the run stops rather than saving garbage."""


class StopRequest:
    """Set by SIGTERM / SIGUSR1 (SLURM's warning before the time limit); checked every step."""

    def __init__(self):
        self.signum = 0

    def install(self):
        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    @property
    def name(self):
        return signal.Signals(self.signum).name if self.signum else ""


def amp_settings(amp: str, device: torch.device):
    """(autocast context factory, GradScaler); the scaler is only enabled for fp16."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=amp != "fp32")
    return amp, autocast, scaler


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.01):
    """LR multiplier per optimizer step: linear warmup, then cosine to `min_ratio`."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def param_groups(model, args, lr_scales=None) -> list:
    """AdamW groups: weight decay on weight matrices and kernels only (not biases, norms, embeddings
    of ndim < 2); frozen parameters left out; `lr_scales` {name: factor} (e.g. layer-wise LR decay)
    splits the groups further, each group's lr = args.lr * factor (the schedule multiplies it)."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0 if lr_scales is None else lr_scales[name]
        groups.setdefault((scale, p.ndim >= 2), []).append(p)
    return [{"params": ps, "weight_decay": args.weight_decay if weight else 0.0, "lr": args.lr * scale,
             "lr_scale": scale} for (scale, weight), ps in sorted(groups.items(), key=lambda g: (-g[0][0], not g[0][1]))]


def to_device(y, device):
    """The batch's targets on `device`: a tensor, or a dict of tensors."""
    if isinstance(y, dict):
        return {k: v.to(device, non_blocking=True) for k, v in y.items()}
    return y.to(device, non_blocking=True)


def labels_of(y):
    """(B,) class labels of a batch's targets."""
    return y["label"] if isinstance(y, dict) else y


def logged_names(criterion) -> tuple:
    """The criterion's named terms and metrics, in the order their sums are kept."""
    return tuple(getattr(criterion, "term_names", ())) + tuple(getattr(criterion, "metric_names", ()))


def rank_batches(indices, batch_size: int):
    """Consecutive batches of a rank's index list (the last one may be smaller, equal on all ranks)."""
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]


def train_one_epoch(model, criterion, optimizer, scheduler, scaler, autocast, fetch, batches, info: DistInfo,
                    stop: StopRequest, accumulation_steps: int = 1, clip_grad: float = 0.0, start_batch: int = 0,
                    n_classes: int = 3, progress: bool = True, desc: str = ""):
    """Train over `batches` (lists of row indices for this rank), starting at batch `start_batch`.

    Returns (sums, batches_done): sums is a tensor of loss·n, correct, n and per-class correct and
    counts reduced over ranks; batches_done < len(batches) when a stop was requested.
    """
    model.train()
    names = logged_names(criterion)  # loss terms and metrics logged separately (e.g. an auxiliary loss)
    sums = torch.zeros(3 + 2 * n_classes + len(names), dtype=torch.float64)
    bar = tqdm(total=len(batches), initial=start_batch, desc=desc, disable=not (progress and info.is_main),
               leave=False, unit="batch")
    done = start_batch
    for b in range(start_batch, len(batches)):
        x, y = fetch(batches[b])
        x, y = x.to(info.device, non_blocking=True), to_device(y, info.device)
        last_micro = (b + 1) % accumulation_steps == 0 or b + 1 == len(batches)
        sync = model.no_sync() if info.enabled and not last_micro else contextlib.nullcontext()
        with sync:
            with autocast():
                out = model(x)
                loss, terms = criterion(out, y)
            scaler.scale(loss / accumulation_steps).backward()
        # one small all-reduce per step: every rank sees the same loss and the same stop request
        flags = torch.tensor([float(loss.detach()), float(stop.signum != 0)], device=info.device)
        all_reduce_sum(flags, info)
        if not math.isfinite(flags[0].item()):
            raise NonFiniteLossError(f"non-finite training loss ({flags[0].item()}) at batch {b}: "
                                     "lower --lr, use --amp bf16/fp32, or check the data")
        if last_micro:
            if clip_grad > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        with torch.no_grad():
            sums += _counts(loss.detach(), out, y, len(x), n_classes, terms, names)
        done = b + 1
        bar.update(1)
        bar.set_postfix(loss=f"{flags[0].item() / info.world_size:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if flags[1].item() > 0 and not last_micro:
            continue  # finish the accumulation group so the checkpoint holds no half-accumulated gradient
        if flags[1].item() > 0:
            break
    bar.close()
    return all_reduce_sum(sums.to(info.device), info).cpu(), done


@torch.no_grad()
def evaluate(model, criterion, autocast, fetch, indices, batch_size: int, info: DistInfo, n_classes: int = 3,
             collect: bool = False):
    """Loss and accuracy sums over `indices`, split across ranks (rank r takes indices[r::world]).

    With `collect` (classification tasks), also (labels, log-probabilities) of every index,
    gathered from all ranks in the order of `indices` (for metrics that need every score, such
    as a ROC AUC).
    `model` must be the unwrapped module: evaluation runs on every rank without DDP's collectives.
    """
    model.eval()
    mine = np.asarray(indices)[info.rank::info.world_size]
    names = logged_names(criterion)
    sums = torch.zeros(3 + 2 * n_classes + len(names), dtype=torch.float64)
    ys, outs = [], []
    for idx in rank_batches(mine, batch_size):
        x, y = fetch(idx)
        x, y = x.to(info.device), to_device(y, info.device)
        with autocast():
            out = model(x)
            loss, terms = criterion(out, y)
        sums += _counts(loss, out, y, len(x), n_classes, terms, names)
        if collect:
            ys.append(labels_of(y).cpu().numpy())
            outs.append(out["log_probs"].float().cpu().numpy())
    sums = all_reduce_sum(sums.to(info.device), info).cpu()
    if not collect:
        return sums
    y_mine = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    lp_mine = np.concatenate(outs) if outs else np.zeros((0, n_classes), np.float32)
    parts = all_gather_objects((y_mine, lp_mine), info)
    y_all = np.empty(len(indices), np.int64)
    lp_all = np.empty((len(indices), n_classes), np.float32)
    for r, (y_r, lp_r) in enumerate(parts):  # rank r held positions r, r + world, ...
        y_all[r::info.world_size], lp_all[r::info.world_size] = y_r, lp_r
    return sums, (y_all, lp_all)


def _counts(loss, out, y, n, n_classes, terms=None, names=()):
    """Sums of a batch of n samples: loss * n, correct, n, per-class correct and counts, named terms * n."""
    correct, per_class = 0.0, torch.zeros(0, dtype=torch.float64)
    if n_classes:
        y, pred = labels_of(y), out["log_probs"].argmax(-1)
        labelled = y >= 0  # rows labelled -1 (domain-adaptation targets) count in no metric
        if not bool(labelled.all()):
            y, pred, n = y[labelled], pred[labelled], int(labelled.sum())
        correct = float((pred == y).sum())
        per_class = torch.cat([torch.bincount(y[pred == y], minlength=n_classes).double().cpu(),
                               torch.bincount(y, minlength=n_classes).double().cpu()])
    head = torch.tensor([float(loss) * n, correct, float(n)], dtype=torch.float64)
    # each named term times the batch size; a term the batch lacks counts 0
    extra = torch.tensor([float(terms[k].detach()) * n if terms and k in terms else 0.0 for k in names],
                         dtype=torch.float64)
    return torch.cat([head, per_class, extra])


def summarize(sums: torch.Tensor, prefix: str, class_names, term_names=(), metric_names=()) -> dict:
    """Loss, accuracy and per-class recall (tasks with classes), the criterion's named loss terms
    (<prefix>_loss_<name>) and metrics (<prefix>_<name>) from reduced sums."""
    n_classes = len(class_names)
    loss_sum, correct, n = sums[:3].tolist()
    per_correct, per_total = sums[3:3 + n_classes], sums[3 + n_classes:3 + 2 * n_classes]
    out = {f"{prefix}_loss": loss_sum / max(n, 1)}
    if n_classes:
        out[f"{prefix}_acc"] = correct / max(n, 1)
    for k, name in enumerate(tuple(term_names) + tuple(metric_names)):
        key = f"{prefix}_loss_{name}" if k < len(term_names) else f"{prefix}_{name}"
        out[key] = float(sums[3 + 2 * n_classes + k]) / max(n, 1)
    for c, name in enumerate(class_names):
        out[f"{prefix}_recall_{name}"] = float(per_correct[c] / per_total[c]) if per_total[c] > 0 else float("nan")
    return out


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self):
        return time.perf_counter() - self.start
