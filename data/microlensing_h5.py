"""The microlensing HDF5 schema: the one definition every writer and reader uses.

| name            | shape, type   | meaning                                                     |
|-----------------|---------------|-------------------------------------------------------------|
| `time`          | (T,) f8       | days since season start                                     |
| `mag`, `mag_err`| (N, T) f4     | observed magnitude and its error; NaN where not observed    |
| `magnification` | (N, T) f4     | true magnification (1 for flat); reference, never an input  |
| `labels`        | (N,) i1       | 0 flat, 1 PSPL, 2 binary, 3 variable                        |
| `params`        | (N,) compound | t0, tE, u0, alpha, s, q, rho, m_source, fs, m_base; var_kind,|
|                 |               | period, amplitude, phase, rise, decay (variables)           |
| `context_time`  | (Lc,) f8      | optional: the context's days, around the season (days since |
|                 |               | its start; physics/microlensing/context.py)                 |
| `context_mag`,  | (N, Lc) f4    | optional: each star's daily magnitude and error over the    |
| `context_err`   |               | context (every day; which a survey saw is chosen later)     |
| attrs           |               | schema_version, class_names, cadence_min, season_days,      |
|                 |               | missing_fraction, preset, seed, code_version, counts, config|

Row i of every dataset is the same event, so that
mag = m_base - 2.5 log10(fs A + 1 - fs) + noise holds row by row (for a variable, A is its source
flux factor). `class_names` lists the classes the file can hold: the first three, and
`variable` where it was asked for (`--n-variable`), so a three-class file trains a three-class
model. Files written before variables existed lack the variable params fields. Rows are in a seeded random
order. (N, T) datasets are chunked by row, so reading one event touches one chunk; rows are
written as whole chunks. `magnification` has fill value 1, so flat rows are not stored at all.
Files use the default (oldest) HDF5 format, so a partial file of a killed run reopens.
Shard files carry `shard_index`, `n_shards`, `row_start`, `row_stop` on top.
"""
from __future__ import annotations

import json

import h5py
import numpy as np

from physics.microlensing.events import CLASS_NAMES, PARAMS_DTYPE

SCHEMA_VERSION = 1
ROW_DATASETS = ("mag", "mag_err", "magnification")
CONTEXT_DATASETS = ("context_mag", "context_err")  # optional, on the `context_time` grid
SHARD_ATTRS = ("shard_index", "n_shards", "row_start", "row_stop")


class SchemaError(ValueError):
    """A file that is not a readable microlensing HDF5 file of this schema."""


def create(path, n_rows: int, time, attrs: dict, context_time=None) -> h5py.File:
    """Create a file of n_rows events on the time grid `time` (and the context's days
    `context_time`, if given), datasets allocated, attrs set."""
    time = np.asarray(time, dtype=np.float64)
    f = h5py.File(path, "w")  # default format: a killed writer leaves a file that reopens
    f.create_dataset("time", data=time)
    T = len(time)
    for name in ROW_DATASETS:
        f.create_dataset(name, shape=(n_rows, T), dtype="<f4", chunks=(1, T) if n_rows else None,
                         fillvalue=1.0 if name == "magnification" else np.nan)
    if context_time is not None:
        context_time = np.asarray(context_time, dtype=np.float64)
        f.create_dataset("context_time", data=context_time)
        for name in CONTEXT_DATASETS:
            f.create_dataset(name, shape=(n_rows, len(context_time)), dtype="<f4",
                             chunks=(1, len(context_time)) if n_rows else None, fillvalue=np.nan)
    f.create_dataset("labels", shape=(n_rows,), dtype="i1")
    f.create_dataset("params", shape=(n_rows,), dtype=PARAMS_DTYPE)
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["class_names"] = list(CLASS_NAMES[:3])
    for key, value in attrs.items():
        f.attrs[key] = value
    return f


def write_rows(f: h5py.File, start: int, labels, block: dict) -> None:
    """Write one block of events (dict of row-aligned arrays) at rows [start, start + n).

    Each (N, T) row is one chunk, written directly (no selection machinery); flat rows'
    magnification is left to the fill value 1.
    """
    labels = np.asarray(labels)
    stop = start + len(labels)
    f["labels"][start:stop] = labels
    f["params"][start:stop] = block["params"]
    for name in ROW_DATASETS:
        rows = np.ascontiguousarray(block[name], dtype="<f4")
        write_chunk = f[name].id.write_direct_chunk
        skip = labels == 0 if name == "magnification" else np.zeros(len(labels), bool)
        for i in np.flatnonzero(~skip):
            write_chunk((start + i, 0), rows[i])
    for name in CONTEXT_DATASETS:
        if name in f:
            if name not in block:
                raise SchemaError(f"{f.filename}: the file has a context, the block written to it has none")
            rows = np.ascontiguousarray(block[name], dtype="<f4")
            for i in range(len(labels)):
                f[name].id.write_direct_chunk((start + i, 0), rows[i])


def open_checked(path) -> h5py.File:
    """Open a microlensing HDF5 file read-only, checking the schema; SchemaError names the problem."""
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise SchemaError(f"{path}: not a readable HDF5 file ({err})") from None
    try:
        version = f.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SchemaError(f"{path}: schema_version {version!r}, expected {SCHEMA_VERSION} "
                              "(is this a microlensing file from simulate.py?)")
        missing = [k for k in ("time", "labels", "params", *ROW_DATASETS) if k not in f]
        if missing:
            raise SchemaError(f"{path}: missing dataset(s) {', '.join(missing)}")
        n, T = len(f["labels"]), len(f["time"])
        for name in ROW_DATASETS:
            if f[name].shape != (n, T):
                raise SchemaError(f"{path}: dataset {name} has shape {f[name].shape}, expected {(n, T)}")
        if "context_time" in f:
            for name in CONTEXT_DATASETS:
                if name not in f or f[name].shape != (n, len(f["context_time"])):
                    raise SchemaError(f"{path}: dataset {name} missing or not of shape {(n, len(f['context_time']))}")
        if f["params"].shape != (n,):
            raise SchemaError(f"{path}: dataset params has shape {f['params'].shape}, expected {(n,)}")
        if "rows_done" in f.attrs:
            raise SchemaError(f"{path}: an unfinished simulation ({f.attrs['rows_done']} of {n} rows)")
    except SchemaError:
        f.close()
        raise
    except (OSError, KeyError) as err:  # truncated or damaged files fail on first access
        f.close()
        raise SchemaError(f"{path}: damaged HDF5 file ({err})") from None
    return f


def load(path, rows=None) -> dict:
    """Read a whole file (or the given sorted row indices) into memory as numpy arrays."""
    with open_checked(path) as f:
        sel = slice(None) if rows is None else np.asarray(rows)
        try:
            out = {name: f[name][sel] for name in ("labels", "params", *ROW_DATASETS)}
            if "context_time" in f:
                out.update({name: f[name][sel] for name in CONTEXT_DATASETS}, context_time=f["context_time"][:])
        except (OSError, KeyError) as err:
            raise SchemaError(f"{path}: damaged HDF5 file ({err})") from None
        out["time"] = f["time"][:]
        out["attrs"] = dict(f.attrs)
    return out


def fingerprint(path) -> str:
    """Content identity of a file (labels, parameters, time grid), the same for copies of it
    (e.g. one staged to /dev/shm), different for a regenerated file."""
    import hashlib
    with open_checked(path) as f:
        digest = hashlib.sha1()
        for name in ("time", "labels", "params"):
            digest.update(np.ascontiguousarray(f[name][:]).tobytes())
    return digest.hexdigest()[:16]


def merge_shards(paths, output) -> int:
    """Merge shard files of one run into `output`, equal to the file a one-shot run writes.

    Checks that the shards come from the same run and cover every shard index once.
    Returns the number of rows written.
    """
    metas = []
    for path in paths:
        with open_checked(path) as f:
            if "shard_index" not in f.attrs:
                raise SchemaError(f"{path}: not a shard file (no shard_index attribute)")
            attrs = {k: v for k, v in f.attrs.items() if k not in SHARD_ATTRS}
            metas.append((int(f.attrs["shard_index"]), int(f.attrs["n_shards"]),
                          int(f.attrs["row_start"]), int(f.attrs["row_stop"]), path, attrs, f["time"][:],
                          f["context_time"][:] if "context_time" in f else None))
    metas.sort(key=lambda m: m[0])
    n_shards = metas[0][1]
    first_attrs = metas[0][5]
    for idx, n, _, _, path, attrs, time, context_time in metas:
        if n != n_shards or json.dumps(_plain(attrs), sort_keys=True) != json.dumps(_plain(first_attrs), sort_keys=True):
            raise SchemaError(f"{path}: shard of a different run than {metas[0][4]}")
        if not np.array_equal(time, metas[0][6]) or (context_time is None) != (metas[0][7] is None) \
                or (context_time is not None and not np.array_equal(context_time, metas[0][7])):
            raise SchemaError(f"{path}: time grid differs from {metas[0][4]}")
    indices = [m[0] for m in metas]
    if indices != list(range(n_shards)):
        missing = sorted(set(range(n_shards)) - set(indices))
        dup = sorted({i for i in indices if indices.count(i) > 1})
        raise SchemaError(f"shards do not cover 0..{n_shards - 1} once: missing {missing}, repeated {dup}")
    n_rows = metas[-1][3]
    with create(output, n_rows, metas[0][6], {k: v for k, v in first_attrs.items()
                                             if k != "schema_version"}, metas[0][7]) as out:
        names = ROW_DATASETS + (CONTEXT_DATASETS if metas[0][7] is not None else ())
        for _, _, start, stop, path, _, _, _ in metas:
            with h5py.File(path, "r") as f:
                for offset in range(0, stop - start, 1024):
                    sel = slice(offset, min(offset + 1024, stop - start))
                    params = np.full(sel.stop - sel.start, np.nan, dtype=PARAMS_DTYPE)
                    old = f["params"][sel]
                    for name in old.dtype.names:
                        params[name] = old[name]
                    write_rows(out, start + offset, f["labels"][sel],
                               {"params": params, **{name: f[name][sel] for name in names}})
    return n_rows


def _plain(attrs: dict) -> dict:
    """Attrs as JSON-comparable Python values."""
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in attrs.items()}
