"""Smooth-lens residual maps: what an SIE + shear + Sersic fit leaves in each substructure image,
in units of the image's own noise, as the network's input (`train.py --task substructure
--input-kind residual`, issue 26).

A network shown the images learns the generator's look (ring shapes, source light, noise) along
with the substructure and fails on another generator's images; shown (image - smooth model) /
sigma it sees the perturbation the class is defined by. The fit is `physics.strong.fit.fit_smooth`
on the central +-2.6" (a (1, 104, 104) map of a 150-pixel, 0.05" image), through one Gaussian PSF:
the PSF is a property of the data (telescope, seeing), so every data set is fitted through its own,
given or measured (`scan_psf`).

The fits (~1 s per image on one CPU core) are kept in a content-addressed store: a folder per fit
configuration (pixel scale, PSF, fit version) holding part files of (image hash, map), each part
written whole under a temporary name then renamed. An image fitted once (in training, evaluation
or prediction, under any file name or order) is never fitted again; a killed run loses at most the
part in progress. Under torchrun the images still to fit are shared out by part over all ranks.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import numpy as np
import torch

from engine.distributed import DistInfo, barrier, broadcast_object

FIT_VERSION = 1      # bump when physics.strong.fit changes what it returns: older stores are not read
PART = 32            # images per part file (one batch of the fit)
PSF_SCAN_IMAGES = 32  # images a PSF scan fits at each FWHM (spread over the data, the same ones every time)
PSF_COLUMN = "psf_fwhm"  # the params column of each image's PSF (arcsec) that --psf-fwhm params reads


def psf_fwhm_arg(text):
    """An argparse type for a PSF FWHM: 'scan', 'params' or a number of arcsec in (0, 10)."""
    if text in ("scan", "params"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 10:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"expected 'scan', 'params' or a FWHM in arcsec (0-10), got {text!r}")
    return value


def psf_column(values, what) -> np.ndarray:
    """Each image's PSF FWHM (arcsec, (N,) float64) from the data's `psf_fwhm` column (params.csv or
    the HDF5 params, as the simulator writes them), for --psf-fwhm params."""
    if values is None:
        raise ResidualMapError(f"{what}: --psf-fwhm params needs a {PSF_COLUMN} column in the data's params "
                               "(params.csv or HDF5 params); give a FWHM or 'scan' instead")
    values = np.asarray(values, np.float64)
    bad = ~((values > 0) & (values < 10))  # also nan (an image without a row in params.csv)
    if bad.any():
        raise ResidualMapError(f"{what}: {bad.sum()} of {len(values)} images have no {PSF_COLUMN} in (0, 10) "
                               f"arcsec (e.g. {values[np.argmax(bad)]}); --psf-fwhm params needs one per image")
    return values


def resolve_psf(psf_fwhm, images, pixel_scale, cache_dir=None, psfs=None, what="these images",
                info: DistInfo | None = None, device="cpu"):
    """The PSF a data set is fitted through, from a --psf-fwhm value: a FWHM (arcsec) as given,
    'scan' measured on `images` (N, 1, H, W) (`scan_psf`), or 'params' each image's own from the
    data's psf_fwhm column `psfs` (N,) (`psf_column`). Returns a float or an (N,) array."""
    if psf_fwhm == "params":
        return psf_column(psfs, what)
    if psf_fwhm == "scan":
        return scan_psf(images, pixel_scale, cache_dir, info, device)
    return float(psf_fwhm)


def describe_psf(psf_fwhm) -> str:
    """'0.200"' for one PSF, '0.087-0.250" (per image)' for one per image."""
    if np.ndim(psf_fwhm):
        return f"{np.min(psf_fwhm):.3f}-{np.max(psf_fwhm):.3f}\" (per image)"
    return f"{float(psf_fwhm):.3f}\""


class ResidualMapError(ValueError):
    """Images the fit cannot take (not square, not one band)."""


def default_cache_dir() -> str:
    """$LENSING_FIT_CACHE, else $XDG_CACHE_HOME/lensing/fits, else ~/.cache/lensing/fits."""
    if os.environ.get("LENSING_FIT_CACHE"):
        return os.environ["LENSING_FIT_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lensing", "fits")


def image_keys(images, psfs=None) -> np.ndarray:
    """(N,) hex digests of each image (N, 1, H, W) as float32 (and of its own PSF where each image
    has one, `psfs` (N,)): the store's keys."""
    out = []
    for n, img in enumerate(images):
        a = np.ascontiguousarray(img, dtype=np.float32)
        h = hashlib.sha1(repr(a.shape).encode() + a.tobytes())
        if psfs is not None:
            h.update(f"psf_fwhm={float(psfs[n]):.6f}".encode())
        out.append(h.hexdigest())
    return np.array(out, dtype="U40")


def _digest(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


class FitStore:
    """The residual maps of one fit configuration under <root>/maps_<digest>/ (config.json beside
    the parts, so a user can tell the folders apart)."""

    def __init__(self, root: str, pixel_scale: float, psf_fwhm):
        # one PSF for every image, or one per image (then part of each image's key)
        psf = "per_image" if np.ndim(psf_fwhm) else round(float(psf_fwhm), 6)
        self.config = {"pixel_scale": float(pixel_scale), "psf_fwhm": psf, "fit_version": FIT_VERSION}
        self.dir = os.path.join(root, f"maps_{_digest(self.config)}")

    def index(self) -> dict:
        """{key: (part file, row)} of every finished part."""
        out = {}
        if not os.path.isdir(self.dir):
            return out
        for name in sorted(os.listdir(self.dir)):
            if name.startswith("part_") and name.endswith(".npz"):
                path = os.path.join(self.dir, name)
                try:
                    with np.load(path) as part:
                        keys = part["keys"]
                except (OSError, ValueError, KeyError) as err:
                    raise ResidualMapError(f"{path}: unreadable fit-store part ({err}); delete it and rerun") from None
                out.update({str(k): (path, row) for row, k in enumerate(keys)})
        return out

    def write(self, keys, maps) -> None:
        os.makedirs(self.dir, exist_ok=True)
        config = os.path.join(self.dir, "config.json")
        if not os.path.exists(config):
            tmp = f"{config}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.config, f, indent=2)
            os.replace(tmp, config)
        name = "part_" + hashlib.sha1("".join(keys).encode()).hexdigest()[:16]
        tmp = os.path.join(self.dir, f".{name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, keys=np.asarray(keys, dtype="U40"), maps=np.asarray(maps, np.float32))
        os.replace(tmp, os.path.join(self.dir, name + ".npz"))  # a killed run leaves no half-written part

    def read(self, keys, index=None) -> np.ndarray:
        """The maps of `keys` (all in the store), (N, 1, h, w) float32, each part read once."""
        index = self.index() if index is None else index
        by_part = {}
        for n, k in enumerate(keys):
            path, row = index[str(k)]
            by_part.setdefault(path, []).append((n, row))
        out = None
        for path, rows in by_part.items():
            with np.load(path) as part:
                maps = part["maps"]
            if out is None:
                out = np.empty((len(keys),) + maps.shape[1:], np.float32)
            n, r = np.array(rows).T
            out[n] = maps[r]
        return out if out is not None else np.zeros((0, 1, 0, 0), np.float32)


def _as_stack(images) -> np.ndarray:
    if images.ndim != 4 or images.shape[1] != 1:
        raise ResidualMapError(f"the smooth-lens fit takes one-band images (N, 1, H, W), got {tuple(images.shape)}")
    if images.shape[-1] != images.shape[-2]:
        raise ResidualMapError(f"the smooth-lens fit takes square images, got {images.shape[-2]}x{images.shape[-1]}")
    return images


def fit_missing(images, pixel_scale, psf_fwhm, cache_dir=None, info: DistInfo | None = None, device="cpu",
                progress=True, keys=None) -> np.ndarray:
    """Fit every image (N, 1, H, W) whose map the store lacks (shared out by part over the ranks
    when `info` is a torchrun job; every rank must call it) and return the keys. After it every
    image's map is in the store. `psf_fwhm`: arcsec, one value or one per image (N,)."""
    from tqdm import tqdm

    from physics.strong import fit
    images = _as_stack(images)
    info = info or DistInfo()
    per_image = np.asarray(psf_fwhm, np.float64) if np.ndim(psf_fwhm) else None
    if per_image is not None and per_image.shape != (len(images),):
        raise ResidualMapError(f"{per_image.shape} PSFs for {len(images)} images")
    keys = image_keys(images, per_image) if keys is None else keys
    store = FitStore(cache_dir or default_cache_dir(), pixel_scale, psf_fwhm)
    os.makedirs(store.dir, exist_ok=True)  # an unwritable store fails here, before any fit
    have = store.index()
    first = np.sort(np.unique(keys, return_index=True)[1]).tolist()  # an image held twice is fitted once
    # parts of the data's own order, each rank its share whatever the store holds when it looks (the
    # ranks read it at different times), so no image is left to nobody
    parts = [first[i:i + PART] for i in range(0, len(first), PART)]
    mine = [[n for n in part if keys[n] not in have] for part in parts[info.rank::info.world_size]]
    n_todo = sum(keys[n] not in have for n in first)
    if info.is_main and n_todo:
        print(f"smooth-lens fits: {n_todo} of {len(keys)} images to fit (PSF {describe_psf(psf_fwhm)}, "
              f"{len(keys) - n_todo} in {store.dir})", flush=True)
    start = time.perf_counter()
    for rows in tqdm([m for m in mine if m], desc="smooth-lens fits", unit="part",
                     disable=not (progress and info.is_main)):
        batch = torch.from_numpy(np.asarray(images[rows][:, 0], np.float64)).to(device)
        psf = psf_fwhm if per_image is None else torch.from_numpy(per_image[rows]).to(device)
        f = fit.fit_smooth(batch, pixel_scale, psf)
        maps = ((f["image"] - f["model"]) / f["sigma"]).float().cpu().numpy()[:, None]
        store.write([keys[n] for n in rows], maps)
    barrier(info)
    if info.is_main and n_todo:
        took = time.perf_counter() - start
        print(f"smooth-lens fits: {n_todo} images in {took:.0f} s ({n_todo / max(took, 1e-9):.1f} images/s on "
              f"{info.world_size} process(es), {device})", flush=True)
    return keys


def residual_maps(images, pixel_scale, psf_fwhm, cache_dir=None, device="cpu", progress=True) -> np.ndarray:
    """(N, 1, h, w) float32 residual maps of the images (N, 1, H, W) through `psf_fwhm` (one or one per
    image), fitted where the store lacks them (one process; train.py uses `fit_missing` and
    `FitStore.read` across ranks)."""
    keys = fit_missing(images, pixel_scale, psf_fwhm, cache_dir, None, device, progress)
    return FitStore(cache_dir or default_cache_dir(), pixel_scale, psf_fwhm).read(keys)


def scan_psf(images, pixel_scale, cache_dir=None, info: DistInfo | None = None, device="cpu") -> float:
    """The data's Gaussian PSF FWHM (arcsec): the median over up to PSF_SCAN_IMAGES images spread
    over the data of the FWHM whose smooth fit leaves the least chi^2 (physics.strong.fit.psf_scan).
    Kept in the store under the images' hashes, so a relaunch or another rank reads the same value."""
    from physics.strong import fit
    images = _as_stack(images)
    info = info or DistInfo()
    pick = np.unique(np.linspace(0, len(images) - 1, min(PSF_SCAN_IMAGES, len(images))).round().astype(int))
    sample = np.asarray(images[pick][:, 0], np.float64)
    ident = {"keys": image_keys(images[pick]).tolist(), "grid": list(fit.PSF_GRID), "pixel_scale": float(pixel_scale),
             "fit_version": FIT_VERSION}
    path = os.path.join(cache_dir or default_cache_dir(), f"psf_{_digest(ident)}.json")
    value = None
    if info.is_main:
        if os.path.exists(path):
            with open(path) as f:
                value = json.load(f)["psf_fwhm"]
        else:
            print(f"smooth-lens fits: measuring the PSF on {len(pick)} images ({len(fit.PSF_GRID)} FWHMs each)",
                  flush=True)
            value = float(np.median(fit.psf_scan(torch.from_numpy(sample).to(device), pixel_scale)["fwhm"]))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump({"psf_fwhm": value, "images": len(pick)}, f)
            os.replace(path + ".tmp", path)
    return float(broadcast_object(value, info))
