"""Super-resolution pairs: a low- and a high-resolution image of the same scene, read as they are found.

Sources:
- a folder with `LR/` and `HR/` sub-folders (or `lr/`, `hr/`): one image per file, the same file
  name in both (`.npy` (C, H, W) or (H, W), or a FITS image); the simulator's `--task superres
  --format npy` layout and the DeepLense super-resolution set unpack this way;
- a folder of low-resolution images alone (prediction only): every `.npy` / FITS file in it;
- the simulator's HDF5 file (datasets `lr`, `hr`).

Checks, each one error line naming the file: a name in one folder without its pair, an HR image
that is not the LR image's size times one integer factor (the same factor for every pair, with
the same channels), images of mixed shapes, unreadable files. NaN / Inf pixels become 0 and
are counted, as for the other image readers.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
from tqdm import tqdm

from data.lens_data import LensDataError, read_object

EXTENSIONS = (".npy", ".fits", ".fits.gz", ".fit")
LR_FOLDERS, HR_FOLDERS = ("LR", "lr"), ("HR", "hr")


class PairError(LensDataError):
    """Unusable super-resolution input; the message names the file and the problem."""


def image_files(folder) -> list:
    return sorted(f for f in os.listdir(folder) if f.endswith(EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))


def pair_folders(root):
    """(LR folder, HR folder or None) of a root; a root without LR/ is itself a folder of LR images."""
    lr = next((os.path.join(root, d) for d in LR_FOLDERS if os.path.isdir(os.path.join(root, d))), None)
    hr = next((os.path.join(root, d) for d in HR_FOLDERS if os.path.isdir(os.path.join(root, d))), None)
    if lr is None:
        return root, None
    return lr, hr


def listing_key(path) -> str:
    """Hash of a source's files' names, sizes and mtimes (a changed folder is never served stale);
    the same for a relative and an absolute spelling of the path."""
    path = os.path.abspath(path)
    h = hashlib.sha1(path.encode())
    folders = [d for d in pair_folders(path) if d] if os.path.isdir(path) else [path]
    for folder in folders:
        for name in (image_files(folder) if os.path.isdir(folder) else [""]):
            st = os.stat(os.path.join(folder, name) if name else folder)
            h.update(f"{folder}/{name} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()


def _stack(paths, what, progress):
    images, shape = [], None
    for path in tqdm(paths, desc=f"read {what}", unit="img", disable=not progress or len(paths) < 200, leave=False):
        image = read_object([path])
        if shape is None:
            shape = image.shape
        elif image.shape != shape:
            raise PairError(f"{path}: image of shape {image.shape}, other {what} images have {shape} "
                            "(images of mixed shapes)")
        images.append(image)
    return np.stack(images).astype(np.float32, copy=False)


def scale_factor(lr_shape, hr_shape, where: str) -> int:
    """The integer factor f with hr = (C, f h, f w) of lr = (C, h, w); an error naming `where` otherwise."""
    (c, h, w), (C, H, W) = lr_shape, hr_shape
    f = H // h if h else 0
    if c != C or f < 1 or H != f * h or W != f * w:
        raise PairError(f"{where}: HR {tuple(hr_shape)} is not the LR {tuple(lr_shape)} times one integer factor "
                        "(same channels)")
    return f


def _finite(images, report):
    finite = np.isfinite(images)
    if not finite.all():
        report["nonfinite_pixels"] += int(finite.size - finite.sum())
        report["nonfinite_objects"] += int((~finite).any(axis=(1, 2, 3)).sum())
        images[~finite] = 0.0
    return images


def load_pairs(path, need_hr: bool = True, progress: bool = True):
    """({"lr" (N, C, h, w), "hr" (N, C, H, W) or absent, "ids", "files"}, report) of one source."""
    report = {"nonfinite_pixels": 0, "nonfinite_objects": 0, "source": os.path.abspath(path)}
    if not os.path.exists(path):
        raise PairError(f"{path}: no such file or folder")
    if os.path.isfile(path):
        if not path.endswith((".h5", ".hdf5")):
            return _single_files([path], need_hr, report, progress)
        import h5py
        try:
            with h5py.File(path, "r") as f:
                lr = f["lr"][()].astype(np.float32)
                hr = f["hr"][()].astype(np.float32) if "hr" in f else None
                index = f["index"][()] if "index" in f else np.arange(len(lr))
        except (OSError, KeyError) as err:
            raise PairError(f"{path}: not a readable super-resolution HDF5 file with lr/hr datasets ({err})") from None
        if hr is None and need_hr:
            raise PairError(f"{path}: no hr dataset (the HR images to train or evaluate against)")
        out = {"lr": _finite(lr, report), "ids": np.array([f"{os.path.basename(path)}:{i}" for i in index]),
               "files": np.array([path] * len(lr))}
        if hr is not None:
            if len(hr) != len(lr):
                raise PairError(f"{path}: {len(lr)} LR and {len(hr)} HR images")
            scale_factor(lr.shape[1:], hr.shape[1:], path)
            out["hr"] = _finite(hr, report)
        return out, report
    lr_dir, hr_dir = pair_folders(path)
    names = image_files(lr_dir)
    if not names:
        raise PairError(f"{lr_dir}: no .npy or FITS images")
    if hr_dir is None:
        if need_hr:
            raise PairError(f"{path}: no LR/ and HR/ folders of paired images")
        return _single_files([os.path.join(lr_dir, n) for n in names], False, report, progress)
    hr_names = image_files(hr_dir)
    lonely = sorted(set(names) ^ set(hr_names))
    if lonely:
        first = lonely[0]
        where, other = (lr_dir, hr_dir) if first in names else (hr_dir, lr_dir)
        raise PairError(f"{os.path.join(where, first)}: no {os.path.join(other, first)} of the same name"
                        + (f" ({len(lonely) - 1} more unpaired files)" if len(lonely) > 1 else ""))
    lr = _finite(_stack([os.path.join(lr_dir, n) for n in names], "LR", progress), report)
    hr = _finite(_stack([os.path.join(hr_dir, n) for n in names], "HR", progress), report)
    scale_factor(lr.shape[1:], hr.shape[1:], f"{os.path.join(hr_dir, names[0])} and its LR image")
    ids = np.array([os.path.splitext(n[:-3] if n.endswith(".gz") else n)[0] for n in names])
    return {"lr": lr, "hr": hr, "ids": ids, "files": np.array([os.path.join(lr_dir, n) for n in names])}, report


def _single_files(paths, need_hr, report, progress):
    if need_hr:
        raise PairError(f"{paths[0]}: a single image, not LR/HR pairs")
    lr = _finite(_stack(paths, "LR", progress), report)
    ids = np.array([os.path.splitext(os.path.basename(p[:-3] if p.endswith(".gz") else p))[0] for p in paths])
    return {"lr": lr, "ids": ids, "files": np.array(paths)}, report


def scaled_header(header, scale: int):
    """A FITS header for the image `scale` times finer: NAXIS dropped (astropy writes the data's),
    the WCS reference pixel moved and its pixel size divided by `scale`, so every sky position
    keeps its coordinates. In FITS pixel units (1-based centres) a coarse position x is the fine
    position (x - 0.5) * scale + 0.5: both grids share the outer edge at 0.5."""
    from astropy.wcs import WCS
    header = header.copy()
    wcs = WCS(header)
    if wcs.has_celestial or wcs.naxis:
        wcs.wcs.crpix = (wcs.wcs.crpix - 0.5) * scale + 0.5
        if wcs.wcs.has_cd():
            wcs.wcs.cd = wcs.wcs.cd / scale
        else:
            wcs.wcs.cdelt = wcs.wcs.cdelt / scale
        for key in [k for k in header if k.startswith(("CD1_", "CD2_", "PC1_", "PC2_", "CDELT", "CRPIX"))]:
            del header[key]
        header.update(wcs.to_header())
    for key in ("NAXIS1", "NAXIS2"):
        header.pop(key, None)
    header["HISTORY"] = f"super-resolved x{scale} by predict.py (tasks/superres.py)"
    return header


def write_image(path, image, scale: int, source_fits=None):
    """One super-resolved (C, H, W) image, written whole (temporary name, then renamed): `.npy`, or
    FITS whose header is the input's (`source_fits`) with its WCS scaled to the finer pixels."""
    tmp = f"{path}.tmp{os.getpid()}"
    if path.endswith(".npy"):
        with open(tmp, "wb") as f:
            np.save(f, image.astype(np.float32))
    else:
        from astropy.io import fits
        header = None
        if source_fits is not None:
            with fits.open(source_fits) as hdul:
                hdu = next((h for h in hdul if h.data is not None and h.data.ndim >= 2), hdul[0])
                header = scaled_header(hdu.header, scale)
        data = image[0] if image.shape[0] == 1 else image
        fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(tmp, overwrite=True, output_verify="silentfix")
    os.replace(tmp, path)
