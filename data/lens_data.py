"""Lensing image data (lens finding, substructure) as they are found, ingested once into one packed array.

Sources (any mix; every one becomes objects of (C, H, W) float32 pixels and a label):
- a root of one class (`--train-roots` lenses, `--train-roots-neg` non-lenses): LSST challenge
  FITS cutouts `DX_IYYYYYYY_b.fits` (one file per band, grouped by the name before `_b`; any
  depth of sub-folders), or `.npy` images (C, H, W) / (H, W), one per object;
- a folder with class folders: `lenses` / `nonlenses` (the simulator's FITS or npy layouts,
  with its params.csv), or the DeepLense layout `train_lenses`, `train_nonlenses`,
  `test_lenses`, `test_nonlenses` (objects of the test folders are flagged `is_test`);
- the simulator's packed HDF5 file (images, labels, params/<name>);
- a hard-negative list (`--hard-negatives`): a CSV with a `file` column (evaluate.py's
  false_positives.csv or candidates.csv, predict.py's output with --extra-columns); its objects
  are non-lenses for the training split only (`train_only`), rows labelled 1 or scored below
  0.5 are left out, and an object already in the other sources is refused (mined from a test
  split it would leak that split into training).

Substructure (`class_folders=SUBSTRUCTURE_FOLDERS`): class folders `no` / `sphere` / `vort` (or
`no_substructure` / `subhalo` / `vortex`), directly under the root or under `train/` and
`val/` (or `test/`) split folders as the public Common Test I set unpacks; objects of `val/`
and `test/` are flagged `is_test` (held out as given, never used for selection). A `.npy` may
hold an object array `[image, m_axion]` (the axion-model files): it is unpickled with only
numpy's array classes allowed, so a file cannot run code.

Ingestion: the index (objects, their files and labels) comes from a listing of the roots; its
key is the roots and every file's name, size and mtime, so a changed folder is never served
stale, and `--index-cache PATH` keeps it across runs (JSON, whatever the file's extension).
Pixels are read by `data.fits_fast` (astropy only for unusual layouts), in `num_workers`
processes; NaN/Inf pixels become 0 and are counted; a missing band, a truncated or non-FITS
file is a `LensDataError` naming it, or with `skip_bad` is left out and listed.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from multiprocessing import get_context

import h5py
import numpy as np
from tqdm import tqdm

from data.lens_images import ImageFormatError, read_params_csv

BAND_ORDER = "ugrizy"
FITS_NAME = re.compile(r"^(?P<stem>.+)_(?P<band>[A-Za-z])\.fits(\.gz)?$")
CLASS_FOLDERS = {"lenses": (1, False), "nonlenses": (0, False), "train_lenses": (1, False),
                 "train_nonlenses": (0, False), "test_lenses": (1, True), "test_nonlenses": (0, True)}
SUBSTRUCTURE_FOLDERS = {"no": (0, False), "no_substructure": (0, False), "sphere": (1, False),
                        "subhalo": (1, False), "vort": (2, False), "vortex": (2, False)}
SPLIT_FOLDERS = {"train": False, "val": True, "test": True}  # is_test of a split folder's objects
INDEX_VERSION = 2


class LensDataError(ValueError):
    """Unusable input; the message names the file or folder and the problem."""


# --------------------------------------------------------------------------- the index
def _is_list(root) -> bool:
    return root.endswith(".csv") and os.path.isfile(root)


def _listed(path):
    """The files of the objects a hard-negative CSV lists: [(absolute path, size, mtime_ns)], sorted.
    A listed FITS band brings its object's other bands (NAME_b.fits beside it)."""
    import csv
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise LensDataError(f"{path}: not a readable CSV ({err})") from None
    if not rows or "file" not in rows[0]:
        raise LensDataError(f"{path}: no `file` column (evaluate.py's false_positives.csv or candidates.csv, "
                            f"predict.py --extra-columns output)")
    score_key = next((k for k in ("score", "pred") if k in rows[0]), None)
    out, siblings = set(), {}
    for n, row in enumerate(rows, start=2):
        try:
            if row.get("label") not in (None, "") and int(float(row["label"])) == 1:
                continue  # a lens is never a negative
            if score_key and float(row[score_key]) < 0.5:
                continue  # not a confident false positive
        except ValueError:
            raise LensDataError(f"{path}: line {n}: label {row.get('label')!r} / {score_key} "
                                f"{row.get(score_key)!r} is not a number") from None
        name = (row["file"] or "").strip()
        if name.endswith((".h5", ".hdf5")):
            raise LensDataError(f"{path}: line {n}: {name} is a packed HDF5 file; hard negatives are listed "
                                f"as FITS or .npy files")
        found = next((c for c in (name, os.path.join(os.path.dirname(path), name)) if name and os.path.isfile(c)), None)
        if found is None:
            raise LensDataError(f"{path}: line {n}: no such file {name!r}")
        found = os.path.abspath(found)
        m = FITS_NAME.match(os.path.basename(found))
        if m:
            folder = os.path.dirname(found)
            if folder not in siblings:
                siblings[folder] = sorted(os.listdir(folder))
            out.update(os.path.join(folder, f) for f in siblings[folder]
                       if (b := FITS_NAME.match(f)) and b["stem"] == m["stem"])
        elif found.endswith(".npy"):
            out.add(found)
        else:
            raise LensDataError(f"{path}: line {n}: {name} is neither a FITS cutout (NAME_b.fits) nor a .npy image")
    if not out:
        raise LensDataError(f"{path}: no hard negatives (every row labelled a lens or scored below 0.5)")
    return [(f, (st := os.stat(f)).st_size, st.st_mtime_ns) for f in sorted(out)]


def _scan(root):
    """Files under root: [(path relative to root, size, mtime_ns)], sorted."""
    out, stack, cut = [], [root], len(root.rstrip(os.sep)) + 1
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.name.endswith((".fits", ".fits.gz", ".npy")):
                    st = entry.stat()
                    out.append((entry.path[cut:], st.st_size, st.st_mtime_ns))
    return sorted(out)


def scan_sources(sources) -> dict:
    """{root: listing} of the folder sources and hard-negative lists (one pass over the file system,
    shared by the key and the index)."""
    return {root: _listed(root) if _is_list(root) else _scan(root)
            for root, label in sources if label is not None and (os.path.isdir(root) or _is_list(root))}


def _class_folders_of(root, class_folders):
    """[(folder, (label, is_test))] of the class folders directly under root, or under its
    split folders (train/, val/, test/)."""
    found = [(os.path.join(root, d), lab) for d, lab in class_folders.items() if os.path.isdir(os.path.join(root, d))]
    if found:
        return found
    for split, is_test in SPLIT_FOLDERS.items():
        sub = os.path.join(root, split)
        found += [(os.path.join(sub, d), (lab[0], lab[1] or is_test)) for d, lab in class_folders.items()
                  if os.path.isdir(os.path.join(sub, d))]
    return found


def has_class_folders(root, class_folders=None) -> bool:
    return bool(_class_folders_of(root, CLASS_FOLDERS if class_folders is None else class_folders))


def sources_of(data=None, pos_roots=(), neg_roots=(), class_folders=None, hard_negatives=()):
    """[(root, (label, is_test)) or (path, None) for an HDF5 file] from the options; a folder in
    `data` is a folder of class folders (`class_folders`, default the lens-finding ones); the
    hard-negative lists (CSV) come last, so the other objects keep their order (and their split)."""
    class_folders = CLASS_FOLDERS if class_folders is None else class_folders
    sources = [(p, None) for p in ([data] if isinstance(data, str) else list(data or ()))]
    sources += [(p, 1) for p in pos_roots] + [(p, 0) for p in neg_roots]
    if not sources:
        raise LensDataError("no data: give --data or --train-roots and --train-roots-neg")
    expanded = []
    for root, label in sources:
        if not os.path.exists(root):
            raise LensDataError(f"{root}: no such file or folder")
        if label is None and os.path.isdir(root):
            found = _class_folders_of(root, class_folders)
            if not found:
                raise LensDataError(f"{root}: no class folders ({', '.join(class_folders)}, directly or under "
                                    f"{'/, '.join(SPLIT_FOLDERS)}/)" + ("; give a root of one class with "
                                    "--train-roots / --train-roots-neg" if class_folders is CLASS_FOLDERS else ""))
            expanded += found
        elif os.path.isdir(root):
            expanded.append((root, (label, False)))
        elif root.endswith((".h5", ".hdf5")):
            expanded.append((root, None))
        else:
            raise LensDataError(f"{root}: neither a folder nor an HDF5 file")
    for path in hard_negatives:
        if not _is_list(path):
            raise LensDataError(f"{path}: no such CSV file (hard negatives are a CSV with a `file` column)")
        expanded.append((path, (0, False)))
    return [(os.path.abspath(r), lab) for r, lab in expanded]


def listing_key(sources, listings=None) -> str:
    """Hash of the roots and their files' names, sizes and mtimes."""
    listings = scan_sources(sources) if listings is None else listings
    h = hashlib.sha1()
    for root, label in sources:
        h.update(json.dumps([root, label]).encode())
        if root in listings:
            h.update(json.dumps(listings[root]).encode())
        if not os.path.isdir(root):
            st = os.stat(root)
            h.update(f"{st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()


def build_index(sources, key, bands=None, skip_bad=False, index_cache=None, listings=None):
    """{"objects": [[label, is_test, id, [files]]], "bands": [...], "bad": [...]} for folder
    sources (HDF5 sources are read whole); reused from `index_cache` when its key matches."""
    if index_cache and os.path.isfile(index_cache):
        try:
            with open(index_cache) as f:
                cached = json.load(f)
            if cached.get("version") == INDEX_VERSION and cached.get("key") == key and cached.get("want") == bands:
                return cached
        except (OSError, ValueError, UnicodeDecodeError):
            pass  # not ours (e.g. the seed's pickle) or damaged: rebuild it
    objects, bad, found_bands = [], [], set()
    for root, lab in sources:
        if lab is None:
            continue
        label, is_test = lab
        files = [f for f, _, _ in (listings[root] if listings else _scan(root))]
        npy = [f for f in files if f.endswith(".npy")]
        groups = {}
        for f in files:
            m = FITS_NAME.match(os.path.basename(f))
            if m:
                groups.setdefault(os.path.join(os.path.dirname(f), m["stem"]), {})[m["band"]] = os.path.join(root, f)
        if not npy and not groups:
            raise LensDataError(f"{root}: no FITS cutouts (NAME_b.fits) or .npy images in this folder")
        # "lenses/1", "val/no/1": DeepLense names repeat across class and split folders
        prefix = os.path.basename(root)
        if os.path.basename(os.path.dirname(root)) in SPLIT_FOLDERS:
            prefix = os.path.join(os.path.basename(os.path.dirname(root)), prefix)
        for f in npy:  # a hard-negative list holds absolute paths: named by the list and the file's name
            name = os.path.join(prefix, os.path.splitext(os.path.basename(f) if os.path.isabs(f) else f)[0])
            objects.append([label, is_test, name, [os.path.join(root, f)]])
        for stem in sorted(groups):
            found_bands.update(groups[stem])
        for stem, by_band in sorted(groups.items()):
            objects.append([label, is_test, os.path.basename(stem), by_band])
    order = sorted(found_bands, key=lambda b: (BAND_ORDER.find(b) % 99, b))
    want = list(bands) if bands else order
    for obj in objects:
        if isinstance(obj[3], dict):
            missing = [b for b in want if b not in obj[3]]
            if missing:
                msg = (f"{next(iter(obj[3].values()))[:-len('_x.fits')]}: missing band {','.join(missing)} "
                       f"(has {','.join(sorted(obj[3], key=BAND_ORDER.find))})")
                if not skip_bad:
                    raise LensDataError(msg + "; --skip-bad leaves such objects out")
                bad.append(msg)
                obj[3] = None
                continue
            obj[3] = [obj[3][b] for b in want]
    first_of = {}
    for obj in objects:
        if obj[3] is None:
            continue
        other = first_of.setdefault(obj[3][0], obj)
        if other is not obj:
            raise LensDataError(f"{obj[3][0]}: listed twice in the data (in {other[2]} and {obj[2]}); an object in two "
                                f"sources could sit in two splits (a hard negative mined from a run's own test "
                                f"split would leak it into training): give each object once")
    index = {"version": INDEX_VERSION, "key": key, "want": bands, "bands": want if found_bands else [],
             "objects": [o for o in objects if o[3] is not None], "bad": bad}
    if index_cache:
        tmp = f"{index_cache}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(index, f)
        os.replace(tmp, index_cache)
    return index


# --------------------------------------------------------------------------- pixels
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, scalars and dtypes, and refuses every other class (no code runs)."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array class")


def load_npy(path):
    """The image of one .npy file: a numeric array, or the first numeric array of an object
    array such as DeepLense's axion files `[image, m_axion]` (unpickled safely)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(f)
            if not dtype.hasobject:
                f.seek(0)
                return np.lib.format.read_array(f, allow_pickle=False)
            items = _NumpyOnlyUnpickler(f).load()
    except pickle.UnpicklingError as err:
        raise LensDataError(f"{path}: an object .npy that is not [image, ...] numpy arrays ({err})") from None
    except (OSError, ValueError, EOFError, AttributeError, TypeError) as err:
        raise LensDataError(f"{path}: not a readable .npy image ({err})") from None
    arrays = [a for a in np.asarray(items, dtype=object).ravel()
              if isinstance(a, np.ndarray) and a.ndim >= 2 and np.issubdtype(a.dtype, np.number)]
    if not arrays:
        raise LensDataError(f"{path}: an object .npy without an image array")
    return arrays[0]


def read_object(files):
    """(C, H, W) float32 of one object's files (FITS bands or one .npy)."""
    if len(files) == 1 and files[0].endswith(".npy"):
        image = load_npy(files[0])
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3 or not np.issubdtype(image.dtype, np.number):
            raise LensDataError(f"{files[0]}: shape {image.shape} {image.dtype}, expected (C, H, W) numbers")
        return image.astype(np.float32)
    from data import fits_fast
    try:
        return fits_fast.read_object(files)[1]
    except ImageFormatError as err:
        raise LensDataError(str(err)) from None


def _read_chunk(job):
    """(images of a chunk: one stacked array when all are readable and alike, else a list with
    None for the bad ones, bad messages); one array pickles far faster between processes."""
    files_list, skip_bad = job
    images, bad = [], []
    for files in files_list:
        try:
            images.append(read_object(files))
        except LensDataError as err:
            if not skip_bad:
                raise
            bad.append(str(err))
            images.append(None)
    if images and not bad and len({im.shape for im in images}) == 1:
        return np.stack(images), bad
    return images, bad


def read_pixels(index, num_workers=0, skip_bad=False, progress=True, chunk=256):
    """(images (N, C, H, W) float32 with NaN/Inf set to 0, kept mask (N,), bad list, n non-finite
    pixels, n objects with any); the rows are filled in place as chunks arrive. With skip_bad,
    objects of another shape are held aside and the most common shape wins at the end (an odd
    first object does not turn every other one bad)."""
    objects = index["objects"]
    jobs = [([o[3] for o in objects[i:i + chunk]], skip_bad) for i in range(0, len(objects), chunk)]
    packed, kept, bad = None, np.zeros(len(objects), bool), list(index["bad"])
    nonfinite = np.zeros(len(objects), np.int64)  # per object, summed over the kept ones at the end
    aside = {}  # shape -> [(row, image)] of objects whose shape differs from the packed one's (skip_bad)

    def zeroed(images, rows):
        finite = np.isfinite(images)
        if finite.all():
            return images
        nonfinite[rows] = (~finite).reshape(len(finite), -1).sum(1)
        return np.where(finite, images, np.float32(0))

    bar = tqdm(total=len(objects), desc="ingest", unit="obj", disable=not progress, leave=False)
    pool = get_context("spawn").Pool(num_workers) if num_workers > 1 else None
    try:
        results = pool.imap(_read_chunk, jobs) if pool else map(_read_chunk, jobs)
        for j, (chunk_images, chunk_bad) in enumerate(results):
            bad += chunk_bad
            if isinstance(chunk_images, np.ndarray):  # the usual case: a whole chunk at once
                if packed is None:
                    packed = np.empty((len(objects),) + chunk_images.shape[1:], np.float32)
                if chunk_images.shape[1:] == packed.shape[1:]:
                    rows = slice(j * chunk, j * chunk + len(chunk_images))
                    packed[rows] = zeroed(chunk_images, rows)
                    kept[rows] = True
                    bar.update(len(chunk_images))
                    continue
                chunk_images = list(chunk_images)  # another shape: object by object below
            for i, image in enumerate(chunk_images, start=j * chunk):
                if image is None:
                    continue
                if packed is None:
                    packed = np.empty((len(objects),) + image.shape, np.float32)
                elif image.shape != packed.shape[1:]:
                    if not skip_bad:
                        first = objects[int(np.argmax(kept))][3][0] if kept.any() else "the first object"
                        raise LensDataError(f"{objects[i][3][0]}: image of shape {image.shape}, {first} has "
                                            f"{packed.shape[1:]} (images of mixed shapes); --skip-bad leaves the "
                                            f"objects of the less common shapes out")
                    aside.setdefault(image.shape, []).append((i, zeroed(image[None], [i])[0]))
                    continue
                packed[i] = zeroed(image[None], [i])[0]
                kept[i] = True
            bar.update(len(chunk_images))
    finally:
        bar.close()
        if pool:
            pool.terminate()
    if packed is None:
        raise LensDataError("no readable objects in the data")
    if aside:
        shape, items = max(aside.items(), key=lambda kv: len(kv[1]))
        if len(items) > kept.sum():  # the packed shape is the odd one: the most common shape wins
            rows = np.flatnonzero(kept)
            aside[packed.shape[1:]] = [(i, None) for i in rows]
            del aside[shape]
            packed, kept = np.empty((len(objects),) + shape, np.float32), np.zeros(len(objects), bool)
            for i, image in items:
                packed[i], kept[i] = image, True
        for other, items in aside.items():
            bad += [f"{objects[i][3][0]}: image of shape {other}, most objects have {packed.shape[1:]} "
                    f"(images of mixed shapes)" for i, _ in items]
    n_pixels, n_objects = int(nonfinite[kept].sum()), int((nonfinite[kept] > 0).sum())
    return (packed if kept.all() else packed[kept]), kept, bad, n_pixels, n_objects


def read_h5_source(path):
    """images (N, C, H, W) float32, labels, ids, params {name: (N,)} of a simulator HDF5 file."""
    try:
        with h5py.File(path, "r") as f:
            images = f["images"][()].astype(np.float32)
            labels = f["labels"][()].astype(np.int64)
            params = {k: v[()] for k, v in f["params"].items() if v.ndim == 1} if "params" in f else {}
            index = f["index"][()] if "index" in f else np.arange(len(labels))
    except (OSError, KeyError) as err:
        raise LensDataError(f"{path}: not a readable lens image HDF5 file ({err})") from None
    if images.ndim != 4 or len(images) != len(labels):
        raise LensDataError(f"{path}: images of shape {images.shape} for {len(labels)} labels, expected (N, C, H, W)")
    ids = np.array([f"{os.path.basename(path)}:{i}" for i in index])
    return images, labels, ids, params


def params_for(objects, sources) -> dict:
    """Row-aligned true parameters of simulated objects ({name: (N,) float}, NaN where unknown)."""
    rows_of, columns = {}, {}  # file -> (table number, row); table number -> {name: column}
    for root in sorted({os.path.dirname(r) for r, lab in sources if lab is not None}):
        for name in sorted(os.listdir(root)):
            if name.startswith("params") and name.endswith(".csv"):
                t = read_params_csv(os.path.join(root, name))
                columns[len(columns)] = {k: v for k, v in t.items() if v.ndim == 1 and k not in ("file", "class")}
                rows_of.update({os.path.join(root, f): (len(columns) - 1, r) for r, f in enumerate(t["file"])})
    if not rows_of:
        return {}
    names = sorted({k for table in columns.values() for k in table})
    out = {k: np.full(len(objects), np.nan) for k in names}
    where = np.array([rows_of.get(obj[3][0], (-1, -1)) for obj in objects])  # (N, 2)
    for number, table in columns.items():
        sel = np.flatnonzero(where[:, 0] == number)
        for k, column in table.items():
            out[k][sel] = column[where[sel, 1]]
    return out


def load_all(sources, bands=None, skip_bad=False, num_workers=0, progress=True, index_cache=None):
    """Everything of the sources as arrays: images, labels, is_test, ids, files, params/<name>;
    plus an ingestion report {n_objects, bad, nonfinite_pixels, nonfinite_objects, bands}."""
    folder_sources = [s for s in sources if s[1] is not None]
    arrays = {"images": [], "labels": [], "is_test": [], "ids": [], "files": [], "train_only": []}
    params, report = [], {"bad": [], "nonfinite_pixels": 0, "nonfinite_objects": 0, "bands": None}
    if folder_sources:
        listings = scan_sources(folder_sources)
        key = listing_key(folder_sources, listings)
        index = build_index(folder_sources, key, bands, skip_bad, index_cache, listings)
        images, kept, bad, n_pix, n_obj = read_pixels(index, num_workers, skip_bad, progress)
        objects = [o for o, k in zip(index["objects"], kept) if k]
        arrays["images"].append(images)
        arrays["labels"].append(np.array([o[0] for o in objects], np.int64))
        arrays["is_test"].append(np.array([o[1] for o in objects], bool))
        arrays["ids"].append(np.array([o[2] for o in objects]))
        arrays["files"].append(np.array([o[3][0] for o in objects]))
        listed = {f for root, _ in folder_sources if _is_list(root) for f, _, _ in listings[root]}
        arrays["train_only"].append(np.array([o[3][0] in listed for o in objects], bool))
        params.append(params_for(objects, folder_sources))
        report.update(bad=bad, nonfinite_pixels=n_pix, nonfinite_objects=n_obj, bands=index["bands"])
    for path, _ in [s for s in sources if s[1] is None]:
        images, labels, ids, p = read_h5_source(path)
        finite = np.isfinite(images)
        report["nonfinite_pixels"] += int(images.size - finite.sum())
        report["nonfinite_objects"] += int((~finite).any(axis=(1, 2, 3)).sum())
        images[~finite] = 0.0
        for k, v in (("images", images), ("labels", labels), ("is_test", np.zeros(len(labels), bool)),
                     ("train_only", np.zeros(len(labels), bool)),
                     ("ids", ids), ("files", np.array([path] * len(labels)))):
            arrays[k].append(v)
        params.append(p)
    shapes = {a.shape[1:] for a in arrays["images"]}
    if len(shapes) > 1:
        raise LensDataError(f"sources with images of different shapes {sorted(shapes)} (images of mixed shapes)")
    out = {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in arrays.items()}  # no copy of one source
    for name in sorted({k for p in params for k in p}):  # parameters known for some sources only: NaN elsewhere
        out[f"params_{name}"] = np.concatenate([p.get(name, np.full(len(lab), np.nan))
                                                for p, lab in zip(params, arrays["labels"])])
    report["n_objects"] = int(len(out["labels"]))
    return out, report


def load_hosts(paths, bands=None, skip_bad=False, num_workers=0, progress=True):
    """Cutouts to paint lenses into (`simulate.py --hosts`): every object of roots of one class,
    the non-lens training folders of roots with class folders (lenses and test folders are never
    hosts: a lens would become a non-lens, a test object would leak into training), and the
    non-lens rows of packed HDF5 files. Returns (images (N, C, H, W) float32, files (N,), report)
    with report["bad"] listing what was left out: objects of another shape than the first and
    objects without signal (all pixels equal: all NaN, all zero) with skip_bad, else LensDataError."""
    sources = []
    for path in paths:
        if os.path.isdir(path) and has_class_folders(path):
            found = [(root, lab) for root, lab in sources_of(data=path) if lab is not None and lab == (0, False)]
            if not found:
                raise LensDataError(f"{path}: no non-lens training folder (nonlenses/, train_nonlenses/) to take hosts "
                                    f"from; give a folder of host cutouts")
            sources += found
        else:
            sources += sources_of(neg_roots=[path]) if os.path.isdir(path) else sources_of(data=path)
    data, report = load_all(sources, bands, skip_bad=skip_bad, num_workers=num_workers, progress=progress)
    keep = data["labels"] == 0
    images, files, ids = data["images"][keep], data["files"][keep], data["ids"][keep]
    flat = images.reshape(len(images), -1)
    blank = flat.min(1) == flat.max(1)  # NaN pixels were set to 0: an all-NaN cutout is all zero
    if blank.any():
        msgs = [f"{f + ':' + i if f.endswith(('.h5', '.hdf5')) else f}: "
                f"no signal (every pixel {flat[j, 0]:g} once NaN/Inf are set to 0)"
                for j, (f, i) in enumerate(zip(files, ids)) if blank[j]]
        if not skip_bad:
            raise LensDataError(msgs[0] + "; --skip-bad leaves such hosts out")
        report["bad"] = list(report["bad"]) + msgs
        images, files = images[~blank], files[~blank]
    if not len(images):
        raise LensDataError(f"no usable host cutouts in {', '.join(paths)}")
    return images, files, report
