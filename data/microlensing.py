"""The microlensing task's data: simulated HDF5 or text photometry → (B, T, 4) feature batches.

Both sources go through `data.lightcurves` with the same grid (season length, bin width), so a
model sees real and simulated curves the same way.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from tqdm import tqdm

from data import microlensing_h5 as mlh5
from data.cache import SharedArrays, cache_key
from data.lightcurves import FEATURE_SETS, grid_features, grid_length, grid_size
from data.photometry import PhotometryError, data_notes, is_photometry_file, read_bands, season_window

TASK = "microlensing"
CLASS_NAMES = ("flat", "pspl", "binary", "variable")  # a file's own attrs say how many it holds
SPLIT_NAMES = ("train", "val", "test")
# curves with fewer than 3 day-grid bins brighter than their median by this many errors are not
# fitted (data.lightcurves.quiet_curves): most of a survey's stream; runs made before keep fitting all
QUIET_SIGMA = 5.0


class DataError(ValueError):
    """An input that cannot be used; the message names the file and the problem."""


def grid_from_args(args) -> dict:
    """The feature grid a run uses, stored in its config and reused by evaluate and predict."""
    n_bins, bin_days = grid_size(args.season_days, args.bin_minutes)
    return {"season_days": float(args.season_days), "bin_minutes": float(args.bin_minutes),
            "n_bins": n_bins, "bin_days": bin_days, "features": args.features,
            "scaled_bins": int(getattr(args, "scaled_bins", 0) or 0), "scaled_span": float(getattr(args, "scaled_span", 4.0)),
            "context_bins": int(getattr(args, "context_bins", 0) or 0),
            "context_days": float(getattr(args, "context_days", 15.0)), "quiet_sigma": QUIET_SIGMA,
            **({"despike": True} if getattr(args, "despike", False) else {})}


def h5_features(path, grid: dict, rows=None, block: int = 256, progress: bool = True,
                truncate_fraction=None, survey_seed: int | None = None):
    """Features (N, T, C) float16, labels (N,) and params of the given rows of a simulator file.

    truncate_fraction: keep only epochs up to that fraction of the season (early detection),
    one for all rows or (N,) one per row; the features (and fit) see only those epochs.
    survey_seed: features of a ground-survey version of each curve (data.survey_augment), row
    r's version fixed by (survey_seed, r).
    With a context view in the grid and a file that has a context, the context days outside the
    season that the survey saw (data.survey_augment.context_block: Roman's seasons, or a ground
    survey's with survey_seed) join the season's epochs; truncation removes them after the cut too.
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
        with_context = bool(grid.get("context_bins")) and "context_time" in f
        if with_context:  # the context days outside the season: the season itself is the dense curve's
            from data.survey_augment import context_block
            time_c = f["context_time"][:]
            outside = (time_c < time[0]) | (time_c > time[-1])
            time_all = np.concatenate([time, time_c[outside]])
        rows = np.arange(n) if rows is None else np.asarray(rows)
        order = np.argsort(rows, kind="stable")
        features = np.zeros((len(rows), grid_length(grid), FEATURE_SETS[grid.get("features", "basic")]), dtype=np.float16)
        per_row = truncate_fraction is not None and np.ndim(truncate_fraction) > 0
        last = time <= truncate_fraction * season if truncate_fraction is not None and not per_row else slice(None)
        bar = tqdm(total=len(rows), desc=f"features {os.path.basename(str(path))}", unit="ev",
                   disable=not progress, leave=False)
        try:
            for i in range(0, len(rows), block):
                sel = order[i:i + block]
                idx = rows[sel]
                mag, err = f["mag"][idx], f["mag_err"][idx]  # h5py needs increasing indices: sorted
                if survey_seed is not None:
                    mag, err = _ground(f, survey_seed, idx, time, mag, err)
                context = None
                if with_context:
                    mag_c, err_c = context_block(survey_seed or 0, idx, time_c[outside], f["context_mag"][idx][:, outside],
                                                 f["context_err"][idx][:, outside], season, survey_seed is not None)
                    context = [time_all, np.concatenate([mag, mag_c], 1), np.concatenate([err, err_c], 1)]
                if per_row:
                    cut = np.asarray(truncate_fraction)[sel][:, None] * season
                    late = time[None, :] > cut
                    mag, err = np.where(late, np.nan, mag), np.where(late, np.nan, err)
                    if context:
                        late = time_all[None, :] > cut
                        context[1:] = [np.where(late, np.nan, a) for a in context[1:]]
                if context and truncate_fraction is not None and not per_row:
                    keep = time_all <= truncate_fraction * season
                    context = [context[0][keep], context[1][:, keep], context[2][:, keep]]
                features[sel] = grid_features(time[last], mag[:, last], err[:, last], 0.0, grid, context=context)
                bar.update(len(idx))
            labels = f["labels"][:][rows].astype(np.int64)
            params = f["params"][:][rows]
        except (OSError, KeyError) as err:
            raise DataError(f"{path}: damaged HDF5 file ({err})") from None
        finally:
            bar.close()
    if not np.isin(labels, (0, 1, 2, 3)).all():
        raise DataError(f"{path}: labels outside 0-3 (flat, pspl, binary, variable)")
    return features, labels, params


def class_names_of(path) -> tuple:
    """The classes a simulator file holds (its class_names attribute): three, or four with variables."""
    try:
        with mlh5.open_checked(path) as f:
            names = tuple(str(n) for n in f.attrs.get("class_names", CLASS_NAMES[:3]))
            labels = f["labels"][:]
    except mlh5.SchemaError as err:
        raise DataError(str(err)) from None
    if names != CLASS_NAMES[:len(names)]:
        raise DataError(f"{path}: class_names {list(names)}, expected the first three or all of {list(CLASS_NAMES)}")
    if len(labels) and labels.max() >= len(names):
        raise DataError(f"{path}: label {labels.max()} but only {len(names)} classes in class_names")
    return names


def _ground(f, seed, idx, time, mag, err):
    """Ground-survey versions of rows idx (data.survey_augment), keeping their significant epochs."""
    from data.survey_augment import ground_block
    from physics.microlensing.survey import NoiseModel, lensing_snr
    p = f["params"][idx]
    cfg = json.loads(f.attrs["config"]) if "config" in f.attrs else {}
    noise = NoiseModel(**cfg.get("noise", {}))
    with np.errstate(all="ignore"):
        # |signal|: a variable's source may fade (eclipses) as well as brighten
        significant = np.abs(lensing_snr(noise, p["m_base"], p["fs"], f["magnification"][idx])) >= cfg.get("min_snr", 5.0)
    return ground_block(seed, idx, time, mag, err, significant & np.isfinite(mag))


TRUNCATE_RANGE = (0.1, 1.0)  # fractions of the season a truncated training copy keeps


def truncation_fractions(seed: int, n: int) -> np.ndarray:
    """(n,) fraction of the season row r's truncated copy keeps, fixed by (seed, r)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(8,))).uniform(*TRUNCATE_RANGE, n)


def cached_h5(path, grid: dict, info, cache_dir=None, progress: bool = True, survey_seed: int | None = None,
              truncate_seed: int | None = None) -> SharedArrays:
    """The whole file's features and labels in the node's shared RAM cache; with survey_seed,
    also `features_ground`, the features of every curve's ground-survey version; with
    truncate_seed, `features_truncated`, those of every curve cut at a random fraction of the
    season (its own fit), for early detection."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    key = cache_key(path, {"task": TASK, **grid, "survey_seed": survey_seed, "truncate_seed": truncate_seed})

    def build():
        show = progress and info.is_main
        features, labels, params = h5_features(path, grid, progress=show)
        out = {"features": features, "labels": labels, "u0": params["u0"], "t0": params["t0"]}
        if survey_seed is not None:
            out["features_ground"] = h5_features(path, grid, progress=show, survey_seed=survey_seed)[0]
        if truncate_seed is not None:
            out["features_truncated"] = h5_features(path, grid, progress=show,
                                                    truncate_fraction=truncation_fractions(truncate_seed, len(labels)))[0]
        return out
    return SharedArrays(key, build, info, cache_dir)


def gather(arrays: SharedArrays, indices, key: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Batch (B, T, C) float32 and labels (B,) from the cache, in the order of `indices`."""
    indices = np.asarray(indices)
    order = np.argsort(indices, kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    x = np.asarray(arrays[key][indices[order]], dtype=np.float32)[inverse]
    y = np.asarray(arrays["labels"][indices], dtype=np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def file_features(path, grid: dict, progress: bool = True):
    """Features of any supported input for prediction: (features (N, T, 4), ids, info dicts).

    A simulator HDF5 gives one row per event (id = row index); a text photometry file one curve
    (id = file name), cut to a season-long window when it is longer; a table with several bands
    one event whose bands are its telescopes (`event_features`).
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
        bands = read_bands(path)
    except PhotometryError as e:
        raise DataError(str(e)) from None
    if len(bands) > 1:
        features, info = event_features([path], grid)
        return features, [os.path.basename(path)], [info]
    return _curve_features(path, *next(iter(bands.values())), grid)


def _curve_features(path, time, mag, err, grid):
    """(features (1, T, C), [id], [info]) of one curve."""
    start = season_window(time, mag, grid["season_days"])
    features = grid_features(time, mag[None], err[None], start, grid)
    if features[0, :, 3].sum() < 3:
        raise DataError(f"{path}: fewer than 3 observed bins in the {grid['season_days']:g}-day window")
    return features.astype(np.float16), [os.path.basename(path)], [{"window_start": start, "n_epochs": int(len(time)),
                                                                     "note": data_notes(time, mag)}]


def event_features(paths, grid: dict, name: str | None = None):
    """Features (1, T, C) of one event observed by several telescopes (or in several bands),
    one photometry file each (a file with several bands gives one curve per band), and its info dict.

    Each file keeps its own flux scale and blending: one point-lens fit shares t0, tE and u0
    over the files and gives each its own source and blend fluxes (physics.microlensing.fit),
    which map every file onto the photometric system of the file with the most epochs in the
    window. The merged curve then goes through the features of a single curve. The window is
    the season-long one around that reference file's brightest point. A file with no epochs in
    the time span of the reference file cannot be tied to it and is an error."""
    from physics.microlensing.fit import fit_pspl
    paths = [str(p) for p in paths]
    name = name or "+".join(os.path.basename(p) for p in paths)
    curves, sources = [], []
    for path in paths:
        if not is_photometry_file(path):
            raise DataError(f"{path}: event {name}: not a photometry file (time, magnitude, error in .dat, .txt, "
                            ".csv or .tbl, optionally .gz)")
        try:
            for band, curve in read_bands(path).items():
                curves.append(curve)
                sources.append(f"{path} [{band}]" if band else path)
        except PhotometryError as e:
            raise DataError(f"event {name}: {e}") from None
    if len(curves) == 1:
        features, _, info = _curve_features(paths[0], *curves[0], grid)
        return features, {**info[0], "n_files": 1}
    n_files, paths = len(paths), sources  # one curve per file and band: the messages below name which
    ref = int(np.argmax([len(c[0]) for c in curves]))
    start = season_window(curves[ref][0], curves[ref][1], grid["season_days"])
    stop = start + grid["n_bins"] * grid["bin_days"]
    inside = [(t >= start) & (t < stop) for t, _, _ in curves]
    t_ref = curves[ref][0][inside[ref]]
    for k, ((t, _, _), m) in enumerate(zip(curves, inside)):
        if m.sum() < 3:
            raise DataError(f"{paths[k]}: event {name}: {m.sum()} epochs in the {grid['season_days']:g}-day window "
                            f"({start:.2f}-{stop:.2f}) of {os.path.basename(paths[ref])}; need at least 3")
        if k != ref and (t[m].max() < t_ref.min() or t[m].min() > t_ref.max()):
            raise DataError(f"{paths[k]}: event {name}: no overlap in time with {os.path.basename(paths[ref])} "
                            f"({t[m].min():.2f}-{t[m].max():.2f} vs {t_ref.min():.2f}-{t_ref.max():.2f}): "
                            "their flux scales cannot be tied")
    time = np.concatenate([t[m] for (t, _, _), m in zip(curves, inside)])
    tel = np.concatenate([np.full(m.sum(), k) for k, m in enumerate(inside)])
    flux, err = [], []
    for (t, mag, e), m in zip(curves, inside):
        f = 10.0 ** (-0.4 * (mag[m] - np.median(mag[m])))
        flux.append(f)
        err.append(0.4 * np.log(10.0) * f * e[m])
    flux, err = np.concatenate(flux), np.concatenate(err)
    fit = fit_pspl(time, flux[None], err[None], telescope=tel[None])
    fs, fb = fit["fs"][0], fit["fb"][0]
    ok = (fs > 0) & (fs > 1e-3 * np.abs(fb))  # a telescope whose fluxes carry the event
    if ok[ref] and ok.all():
        scale_of = fs[ref] / fs
        scale = scale_of[tel]
        aligned = (flux - fb[tel]) * scale + fb[ref]
    else:  # no lensing signal to tie the scales: match baselines instead
        scale_of = (fs[ref] + fb[ref]) / (fs + fb)
        scale = scale_of[tel]
        aligned = flux * scale
    aligned_err = err * np.abs(scale)
    good = aligned > 0
    order = np.argsort(time[good], kind="stable")
    mag = -2.5 * np.log10(aligned[good][order])
    mag_err = 2.5 / np.log(10.0) * aligned_err[good][order] / aligned[good][order]
    context = None
    if grid.get("context_bins"):  # every epoch of every file, on the same scale: the years around the window
        full = [(t, 10.0 ** (-0.4 * (m - np.median(m[w]))), e) for (t, m, e), w in zip(curves, inside)]
        t_all = np.concatenate([t for t, _, _ in full])
        k_all = np.concatenate([np.full(len(t), k) for k, (t, _, _) in enumerate(full)])
        f_all = np.concatenate([f for _, f, _ in full])
        e_all = np.concatenate([0.4 * np.log(10.0) * f * e for _, f, e in full])
        if ok[ref] and ok.all():
            f_all = (f_all - fb[k_all]) * scale_of[k_all] + fb[ref]
        else:
            f_all = f_all * scale_of[k_all]
        e_all = e_all * np.abs(scale_of[k_all])
        keep = f_all > 0
        o = np.argsort(t_all[keep], kind="stable")
        context = (t_all[keep][o], -2.5 * np.log10(f_all[keep][o])[None],
                   (2.5 / np.log(10.0) * e_all[keep][o] / f_all[keep][o])[None])
    features = grid_features(time[good][order], mag[None], mag_err[None], start, grid, context=context)
    return features.astype(np.float16), {"window_start": float(start), "n_epochs": int(good.sum()),
                                         "n_files": n_files, "n_curves": len(paths),
                                         "note": data_notes(time[good][order], mag)}
