"""Ingest speed of LSST strong-lens challenge cutouts: objects/s per core for astropy
(`data.lens_images.read_fits_cutout`), fitsio (if installed) and `data.fits_fast.read_object`.

    python bench/bench_lens_ingest.py                       # 2000 objects x 5 bands, ~1.5 min on 1 core
    python bench/bench_lens_ingest.py --n-objects 500 --repeats 5 --keep /tmp/cutouts
    python bench/bench_lens_ingest.py --tiny                # 8 objects, one pass (the tests run it)

Writes N objects (grizy, 41x41 float32, a few NaN/Inf pixels) twice: with FitsTemplate (the
simulator's writer, the challenge layout) and with astropy's own BinTableHDU writer (same
columns, astropy's header). Every file is read once before timing, so the figures are with
the page cache warm: they measure parsing, not the disk. One process, one thread (numpy's
thread pools pinned to 1; torch is not imported). Rate = objects / best time of --repeats
passes (others share this host: a slow pass is their load, not ours; astropy gets one pass),
and per CPU second of the process, which the ratio to astropy uses (steadier on a busy host).
Each reader's cubes are checked equal to astropy's (NaN positions included).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data import fits_fast  # noqa: E402
from data.lens_images import FitsTemplate, fits_name, read_fits_cutout  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--n-objects", type=int, default=2000)
    parser.add_argument("--bands", default="grizy")
    parser.add_argument("--size", type=int, default=41, help="cutout side, pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per reader; the best is quoted")
    parser.add_argument("--keep", default="", help="write the files here and keep them (default: a temp folder)")
    parser.add_argument("--tiny", action="store_true", help="8 objects, one pass (a smoke run)")
    return parser


def write_objects(root, n_objects, bands, size):
    """[[path per band] per object] in both layouts: {"template": ..., "astropy": ...}."""
    from astropy.io import fits
    rng = np.random.default_rng(0)
    templates = {b: FitsTemplate(b, (size, size), {"MAGZERO": 27.0}) for b in bands}
    layouts = {"template": [], "astropy": []}
    for layout in layouts:
        os.makedirs(os.path.join(root, layout, "lenses"), exist_ok=True)
    for index in range(n_objects):
        cube = rng.normal(0, 1, (len(bands), size, size)).astype(np.float32)  # (C, H, W)
        cube.flat[rng.integers(0, cube.size, 3)] = [np.nan, np.inf, -np.inf]
        for layout, paths in layouts.items():
            paths.append([os.path.join(root, layout, "lenses", fits_name(index, 1, b)) for b in bands])
        for c, band in enumerate(bands):
            templates[band].write(layouts["template"][-1][c], index, cube[c])
            columns = [fits.Column(name="object_id", format="K", array=[index]),
                       fits.Column(name=f"band_{band}", format=f"{size * size}E", dim=f"({size},{size})",
                                   array=cube[c][None])]
            fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)]).writeto(layouts["astropy"][-1][c])
    return layouts


def read_astropy(paths):
    cutouts = [read_fits_cutout(p) for p in paths]
    return cutouts[0][0], np.stack([image for _, image in cutouts])


def fitsio_reader():
    """read_object-like function built on fitsio, or None where fitsio is not installed."""
    try:
        import fitsio
    except ImportError:
        return None

    def read(paths):
        images, object_id = [], None
        for path in paths:
            row = fitsio.read(path, ext=1, rows=[0])
            band = next(n for n in row.dtype.names if n.lower().startswith("band_"))
            images.append(np.asarray(row[band][0], dtype=np.float32))
            object_id = int(row["object_id"][0])
        return object_id, np.stack(images)
    return read


def time_reader(read, objects, repeats):
    """(best wall s, its CPU s, outputs of the last pass)."""
    best = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = [read(paths) for paths in objects]
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if best is None or wall < best[0]:
            best = (wall, cpu)
    return best[0], best[1], out


def main(args):
    if args.tiny:
        args.n_objects, args.repeats = 8, 1
    root = args.keep or tempfile.mkdtemp(prefix="lens_ingest_")
    try:
        t = time.perf_counter()
        layouts = write_objects(root, args.n_objects, args.bands, args.size)
        print(f"wrote {args.n_objects} objects x {len(args.bands)} bands x 2 layouts to {root} "
              f"in {time.perf_counter() - t:.1f} s")
        readers = {"astropy": read_astropy, "fitsio": fitsio_reader(), "fits_fast": fits_fast.read_object}
        if readers["fitsio"] is None:
            print("fitsio: not installed, skipped")
        print(f"page cache warm (every file read once before timing); 1 process, 1 thread; "
              f"best of {args.repeats} passes (astropy: 1)")
        print(f"{'layout':<10} {'reader':<10} {'objects/s':>10} {'per CPU s':>10} {'vs astropy':>10}  equal")
        for layout, objects in layouts.items():
            for paths in objects:
                for path in paths:
                    with open(path, "rb") as f:
                        f.read()
            reference, reference_rate = None, None
            for name, read in readers.items():
                if read is None:
                    continue
                # astropy is 50x slower and steadier: one pass (its cubes are the reference)
                wall, cpu, out = time_reader(read, objects, 1 if name == "astropy" else args.repeats)
                if reference is None:
                    reference, reference_rate = out, len(objects) / cpu
                equal = all(a[0] == b[0] and a[1].dtype == b[1].dtype == np.float32
                            and np.array_equal(a[1], b[1], equal_nan=True) for a, b in zip(out, reference))
                cpu_rate = len(objects) / max(cpu, 1e-9)
                print(f"{layout:<10} {name:<10} {len(objects) / wall:>10.0f} {cpu_rate:>10.0f} "
                      f"{cpu_rate / reference_rate:>9.1f}x  {'yes' if equal else 'NO'}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
