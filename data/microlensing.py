"""The microlensing task's data: simulated HDF5 or text photometry → (B, T, 4) feature batches.

Both sources go through `data.lightcurves` with the same grid (season length, bin width), so a
model sees real and simulated curves the same way.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from tqdm import tqdm

from data import microlensing_h5 as mlh5
from data.cache import SharedArrays, cache_key
from data.lightcurves import grid_size, light_curve_features
from data.photometry import PhotometryError, is_photometry_file, read_photometry, season_window

TASK = "microlensing"
CLASS_NAMES = ("flat", "pspl", "binary")
SPLIT_NAMES = ("train", "val", "test")


class DataError(ValueError):
    """An input that cannot be used; the message names the file and the problem."""


def grid_from_args(args) -> dict:
    """The feature grid a run uses, stored in its config and reused by evaluate and predict."""
    n_bins, bin_days = grid_size(args.season_days, args.bin_minutes)
    return {"season_days": float(args.season_days), "bin_minutes": float(args.bin_minutes),
            "n_bins": n_bins, "bin_days": bin_days}


def h5_features(path, grid: dict, rows=None, block: int = 256, progress: bool = True,
                truncate_fraction: float | None = None):
    """Features (N, T, 4) float16, labels (N,) and params of the given rows of a simulator file.

    truncate_fraction: keep only epochs up to that fraction of the season (early detection).
    """
    try:
        f = mlh5.open_checked(path)
    except mlh5.SchemaError as err:
        raise DataError(str(err)) from None
    with f:
        season = float(f.attrs.get("season_days", grid["season_days"]))
        if abs(season - grid["season_days"]) > 1e-6:
            raise DataError(f"{path}: season of {season} d, the run's grid expects {grid['season_days']} d")
        time = f["time"][:]
        n = len(f["labels"])
        rows = np.arange(n) if rows is None else np.asarray(rows)
        order = np.argsort(rows, kind="stable")
        features = np.zeros((len(rows), grid["n_bins"], 4), dtype=np.float16)
        last = time <= truncate_fraction * season if truncate_fraction is not None else slice(None)
        bar = tqdm(total=len(rows), desc=f"features {os.path.basename(str(path))}", unit="ev",
                   disable=not progress, leave=False)
        try:
            for i in range(0, len(rows), block):
                sel = order[i:i + block]
                idx = rows[sel]
                mag, err = f["mag"][idx], f["mag_err"][idx]  # h5py needs increasing indices: sorted
                features[sel] = light_curve_features(time[last], mag[:, last], err[:, last], 0.0,
                                                     grid["n_bins"], grid["bin_days"])
                bar.update(len(idx))
            labels = f["labels"][:][rows].astype(np.int64)
            params = f["params"][:][rows]
        except (OSError, KeyError) as err:
            raise DataError(f"{path}: damaged HDF5 file ({err})") from None
        finally:
            bar.close()
    if not np.isin(labels, (0, 1, 2)).all():
        raise DataError(f"{path}: labels outside 0, 1, 2")
    return features, labels, params


def cached_h5(path, grid: dict, info, cache_dir=None, progress: bool = True) -> SharedArrays:
    """The whole file's features and labels in the node's shared RAM cache."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    key = cache_key(path, {"task": TASK, **grid})

    def build():
        features, labels, params = h5_features(path, grid, progress=progress and info.is_main)
        return {"features": features, "labels": labels, "u0": params["u0"], "t0": params["t0"]}
    return SharedArrays(key, build, info, cache_dir)


def gather(arrays: SharedArrays, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch (B, T, 4) float32 and labels (B,) from the cache, in the order of `indices`."""
    indices = np.asarray(indices)
    order = np.argsort(indices, kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    x = np.asarray(arrays["features"][indices[order]], dtype=np.float32)[inverse]
    y = np.asarray(arrays["labels"][indices], dtype=np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def file_features(path, grid: dict, progress: bool = True):
    """Features of any supported input for prediction: (features (N, T, 4), ids, info dicts).

    A simulator HDF5 gives one row per event (id = row index); a text photometry file one curve
    (id = file name), cut to a season-long window when it is longer.
    """
    path = str(path)
    if path.endswith((".h5", ".hdf5")):
        features, labels, params = h5_features(path, grid, progress=progress)
        ids = [f"{os.path.basename(path)}:{i}" for i in range(len(labels))]
        return features, ids, [{"window_start": 0.0} for _ in ids]
    if not is_photometry_file(path):
        raise DataError(f"{path}: unknown file type (expected .h5 or text photometry: "
                        "time, magnitude, error in .dat, .txt, .csv or .tbl, optionally .gz)")
    try:
        time, mag, err = read_photometry(path)
    except PhotometryError as e:
        raise DataError(str(e)) from None
    start = season_window(time, mag, grid["season_days"])
    features = light_curve_features(time, mag[None], err[None], start, grid["n_bins"], grid["bin_days"])
    if features[0, :, 3].sum() < 3:
        raise DataError(f"{path}: fewer than 3 observed bins in the {grid['season_days']:g}-day window")
    return features.astype(np.float16), [os.path.basename(path)], [{"window_start": start,
                                                                     "n_epochs": int(len(time))}]
