"""One module per task: what differs between tasks, picked by name by the four stage scripts.

A task module (tasks/<task>.py) provides, as plain functions and constants:

    TASK, CLASS_NAMES (empty for tasks without classes: mae, superres), DEFAULTS (train.py option
    defaults), IDENTITY_KEYS (options a relaunch must not change), SELECT_METRIC (validation
    metric of the best checkpoint; higher is better unless SELECT_MODE = "min"), COMPARE_METRIC
    (the compare_columns key evaluate.py --compare plots against training time)

    train.py:    add_train_args(parser), check_train_args(args), default_name(args),
                 data_identity(args) -> dict, load_train_data(args, info) -> TrainData,
                 make_split(data, args), fit_stats(data, split, args, info),
                 make_fetch(data, stats, args, device, train) -> fetch(indices) -> (x, y),
                 build_model(args, data, stats) -> (model, model_name, model_kwargs),
                 make_criterion(data, split, args), val_metrics(y, log_probs) -> dict,
                 checkpoint_extras(data, stats, args) -> dict; optionally
                 param_groups(model, args) -> AdamW groups (e.g. layer-wise LR decay) and
                 after_training(run_dir, args) (once, on the main process, when training is done)
    evaluate.py: add_evaluate_args(parser), evaluate(ckpt, model, ckpt_path, args) -> summary dict,
                 compare_columns(summary) -> dict (evaluate.py --compare)
    predict.py:  predict(runs, args) -> (header, rows, n_skipped)

so a new task is one new module (plus its models) and no loop is edited.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np

TASKS = ("microlensing", "lens", "substructure", "mae", "superres")


class TaskError(Exception):
    """Bad input or options of a task: reported by the scripts as one line."""


@dataclass
class TrainData:
    """What train.py needs of a task's data: the cached arrays, labels, and task-specific facts."""
    arrays: object                # data.cache.SharedArrays (or a dict of arrays)
    labels: np.ndarray            # (N,) int64
    meta: dict = field(default_factory=dict)

    def remove(self):
        if hasattr(self.arrays, "remove"):
            self.arrays.remove()


def get_task(name: str):
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return importlib.import_module(f"tasks.{name}")


def stratified_split(labels, seed: int, val_fraction: float, test_fraction: float) -> dict:
    """Stratified random split of row indices, fixed by `seed` (sorted indices per split)."""
    rng = np.random.default_rng(seed)
    parts = {name: [] for name in ("train", "val", "test")}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(idx)))
        n_val = int(round(val_fraction * len(idx)))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    return {name: np.sort(np.concatenate(v)).astype(np.int64) if v else np.zeros(0, np.int64)
            for name, v in parts.items()}
