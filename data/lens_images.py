"""On-disk formats of lensing images: writers used by `simulate.py` and readers for them.

Layouts (N images, global index i = 0..N-1 in a seeded shuffled order, never grouped by class):
- `fits` (LSST strong-lens challenge): DIR/lenses|nonlenses/D1_{L|N}{i:07d}_{b}.fits, one file
  per object and band; an empty primary HDU and a binary table whose row 0 holds `object_id`
  and `band_<b>` (H x W float32, flux at zero point MAGZERO = 27). X = 1 marks simulated data.
- `npy`: DIR/<class folder>/{i:07d}.npy, (C, H, W) in the config's dtype (deeplense-common and -model1:
  (1, 150, 150) float64 min-max scaled, like the public set); superres: DIR/HR/{i:07d}.npy and
  DIR/LR/{i:07d}.npy, same names for the same scene.
- `h5`: one packed file: images (N, C, H, W) (superres: hr, lr), labels (N,), params/<name>
  (N,) or (N, K), attrs with the config; chunked by rows for fast reading.
The row-aligned true parameters go to DIR/params.csv (DIR/params_shard{I}of{N}.csv for a
shard) for the folder layouts: one row per object, `file` naming its (first) file.
"""
from __future__ import annotations

import csv
import io
import json
import os

import h5py
import numpy as np

FORMATS = ("npy", "fits", "h5")


class ImageFormatError(Exception):
    """A file that is not what it should be; the message names the file."""


# --------------------------------------------------------------------------- FITS
class FitsTemplate:
    """Writes LSST-challenge cutouts fast: astropy builds the header once per band and shape,
    each file is then that header, one table row (object_id, image) and padding. Files read
    back with astropy like any other FITS table."""

    def __init__(self, band, shape, extra_header=None):
        from astropy.io import fits
        cols = [fits.Column(name="object_id", format="K", array=np.zeros(1, np.int64)),
                fits.Column(name=f"band_{band}", format=f"{shape[0] * shape[1]}E", dim=f"({shape[1]},{shape[0]})",
                            array=np.zeros((1,) + tuple(shape), np.float32))]
        table = fits.BinTableHDU.from_columns(cols)
        table.header["BAND"] = band
        for key, value in (extra_header or {}).items():
            table.header[key] = value
        buffer = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), table]).writeto(buffer)
        raw = buffer.getvalue()
        with fits.open(io.BytesIO(raw)) as hdul:
            data_start = hdul.fileinfo(1)["datLoc"]
        self.head = raw[:data_start]
        self.row_bytes = 8 + 4 * shape[0] * shape[1]
        self.pad = b"\0" * (-self.row_bytes % 2880)

    def write(self, path, object_id, image):
        body = np.asarray(object_id, ">i8").tobytes() + np.ascontiguousarray(image, ">f4").tobytes()
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(self.head + body + self.pad)
        os.replace(tmp, path)


def fits_name(index, label, band):
    return f"D1_{'L' if label == 1 else 'N'}{index:07d}_{band}.fits"


def read_fits_cutout(path):
    """(object_id or None, band image (H, W) float32) from an LSST-challenge file: a table
    with a `band_<b>` column (row 0) or an image HDU. Raises ImageFormatError naming the file."""
    from astropy.io import fits
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                if isinstance(hdu, fits.BinTableHDU):
                    names = [n for n in hdu.columns.names if n.lower().startswith("band_")]
                    if names and len(hdu.data):
                        ids = [n for n in hdu.columns.names if n.lower() in ("object_id", "objid", "id")]
                        oid = int(hdu.data[ids[0]][0]) if ids else None
                        return oid, np.array(hdu.data[names[0]][0], dtype=np.float32)
                elif hdu.data is not None and hdu.data.ndim == 2:
                    return None, np.array(hdu.data, dtype=np.float32)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ImageFormatError(f"{path}: not a readable FITS cutout ({err})") from None
    raise ImageFormatError(f"{path}: no band_<b> table column and no 2-D image HDU")


# --------------------------------------------------------------------------- folder writer
class FolderWriter:
    """npy / fits layouts. Files of a block are written whole (temp + rename), so a killed
    run leaves complete files; the parameter table grows by a block at a time."""

    def __init__(self, root, cfg, fmt, bands, params_name, resume_bytes=0):
        self.root, self.cfg, self.fmt, self.bands = root, cfg, fmt, bands
        folders = ("HR", "LR") if cfg.task == "superres" else cfg.folders
        for folder in folders:
            os.makedirs(os.path.join(root, folder), exist_ok=True)
        self.params_path = os.path.join(root, params_name)
        self.templates = {}
        if fmt == "fits":
            header = {"MAGZERO": 27.0, "PIXSCALE": cfg.pixel_scale, "SIMCONF": cfg.name}
            self.templates = {b: FitsTemplate(b, (cfg.size, cfg.size), header) for b in bands}
        if resume_bytes and os.path.exists(self.params_path):
            with open(self.params_path, "r+b") as f:
                f.truncate(resume_bytes)
        self.columns = None

    def params_bytes(self):
        return os.path.getsize(self.params_path) if os.path.exists(self.params_path) else 0

    def write_block(self, indices, labels, images, params):
        names = []
        for row, (index, label) in enumerate(zip(indices, labels)):
            if self.cfg.task == "superres":
                name = f"{index:07d}.npy"
                _save_npy(os.path.join(self.root, "HR", name), images["hr"][row], self.cfg.dtype)
                _save_npy(os.path.join(self.root, "LR", name), images["lr"][row], self.cfg.dtype)
                names.append(f"HR/{name}")
                continue
            folder = self.cfg.folders[label]
            if self.fmt == "npy":
                name = f"{folder}/{index:07d}.npy"
                _save_npy(os.path.join(self.root, name), images["images"][row], self.cfg.dtype)
            else:
                for c, band in enumerate(self.bands):
                    name = f"{folder}/{fits_name(index, label, band)}"
                    self.templates[band].write(os.path.join(self.root, name), index, images["images"][row, c])
                name = f"{folder}/{fits_name(index, label, self.bands[0])}"
            names.append(name)
        self._append_params(names, indices, labels, params)

    def _append_params(self, names, indices, labels, params):
        scalar = {k: v for k, v in params.items() if v.ndim == 1}
        arrays = {k: v for k, v in params.items() if v.ndim == 2}
        new_file = self.params_bytes() == 0
        with open(self.params_path, "a", newline="") as f:
            writer = csv.writer(f)
            header = ["file", "index", "label", "class"] + list(scalar) + list(arrays)
            if new_file:
                writer.writerow(header)
            for row in range(len(names)):
                writer.writerow([names[row], indices[row], labels[row], self.cfg.classes[labels[row]]]
                                + [_fmt(scalar[k][row]) for k in scalar]
                                + [" ".join(_fmt(v) for v in arrays[k][row]) for k in arrays])


def _fmt(value):
    value = float(value)
    return "nan" if value != value else f"{value:.7g}"


def _save_npy(path, array, dtype):
    tmp = path + ".tmp.npy"
    np.save(tmp, np.asarray(array, dtype=dtype))
    os.replace(tmp, path)


def read_params_csv(path):
    """{column: np.ndarray} of a params table; array columns become (N, K) float arrays."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ImageFormatError(f"{path}: empty parameter table")
    header, body = rows[0], rows[1:]
    out = {}
    for j, name in enumerate(header):
        column = [r[j] for r in body]
        if name in ("file", "class"):
            out[name] = np.array(column)
        elif any(" " in v for v in column):
            out[name] = np.array([[float(t) for t in v.split()] for v in column])
        else:
            out[name] = np.array([float(v) for v in column])
    return out


# --------------------------------------------------------------------------- HDF5
def create_h5(path, cfg, bands, n_rows, params_shapes, attrs, chunk_rows=64):
    """A packed file for n_rows images; params_shapes {name: () or (K,)}."""
    f = h5py.File(path, "w", libver=("v110", "latest"))
    shapes = {"hr": (1, cfg.size, cfg.size), "lr": (1, cfg.lr["size"], cfg.lr["size"])} if cfg.task == "superres" \
        else {"images": (len(bands), cfg.size, cfg.size)}
    for name, shape in shapes.items():
        f.create_dataset(name, (n_rows,) + shape, dtype=cfg.dtype, chunks=(min(chunk_rows, max(n_rows, 1)),) + shape)
    f.create_dataset("labels", (n_rows,), dtype="i1")
    f.create_dataset("index", (n_rows,), dtype="i8")
    group = f.create_group("params")
    for name, shape in params_shapes.items():
        group.create_dataset(name, (n_rows,) + tuple(shape), dtype="f8")
    f.attrs.update({k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) else v) for k, v in attrs.items()})
    f.attrs["classes"] = json.dumps(list(cfg.classes))
    f.attrs["bands"] = json.dumps(list(bands))
    return f


def write_h5_rows(f, start, indices, labels, images, params):
    stop = start + len(labels)
    for name, array in images.items():
        f[name][start:stop] = np.asarray(array, dtype=f[name].dtype)
    f["labels"][start:stop] = labels
    f["index"][start:stop] = indices
    for name, value in params.items():
        f["params"][name][start:stop] = np.asarray(value, dtype=np.float64)


def read_h5(path):
    """{name: array} of a packed file (images or hr/lr, labels, index, params/<name>) and attrs."""
    try:
        with h5py.File(path, "r") as f:
            out = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
            out.update({f"params/{k}": v[()] for k, v in f["params"].items()})
            attrs = dict(f.attrs)
    except (OSError, KeyError) as err:
        raise ImageFormatError(f"{path}: not a readable packed image file ({err})") from None
    return out, attrs
