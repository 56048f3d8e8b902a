"""Checkpoints are plain dicts written atomically (temp file in the same folder, then os.replace).

Keys: model (unwrapped state_dict), optimizer, scheduler, scaler, epoch (next epoch to run),
step (batches of that epoch already done: non-zero only for a checkpoint saved on a signal),
best_metric, config (a plain dict of the run's options), model_name, model_kwargs, task,
stats (feature normalisation from the training split), split (row indices per split), rng.
One loader (`load_checkpoint`) serves train.py, evaluate.py and predict.py.
"""
from __future__ import annotations

import os

import torch

REQUIRED_KEYS = ("model", "config", "model_name", "model_kwargs", "task", "stats")


class CheckpointError(ValueError):
    """A checkpoint or run directory that cannot be used; the message names it."""


def save_checkpoint(state: dict, path) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def write_csv(path, header, rows) -> None:
    """A CSV written whole under a temporary name, then renamed: a failed run leaves no partial file."""
    import csv
    tmp = f"{path}.tmp{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def load_checkpoint(path, task: str | None = None) -> dict:
    """Load a checkpoint written by train.py; checks it is complete and of the expected task."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as err:  # torch raises many types for damaged files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        raise CheckpointError(f"{path}: not a train.py checkpoint (missing {', '.join(missing)})")
    if task is not None and ckpt["task"] != task:
        raise CheckpointError(f"{path}: a run of task {ckpt['task']!r}, expected {task!r}")
    return ckpt


def build_from_checkpoint(ckpt: dict):
    """The model of a checkpoint, weights loaded strictly, in eval mode."""
    from models import create_model
    model = create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model"])
    return model.eval()
