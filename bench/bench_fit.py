"""Speed and quality of the single-lens fits behind the residual features and the Δχ² ceiling.

    python bench/bench_fit.py --data outputs/ml_bench/planetary.h5 --n 600
    python bench/bench_fit.py --data small.h5 --tiny      # 3 events per class (seconds; the tests run it)

For n single-lens and n binary events of a simulator file: seconds per event of the point-source
fit and of the point-or-finite-source fit (`fit_pspl(..., finite_source=True)`), and the share of
each class that the fit leaves more than 25 in χ² above the true model (single lenses: what the
residual features would show as an anomaly; binaries: what stays visible).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import microlensing_h5 as mlh5  # noqa: E402
from data.microlensing_ceiling import event_dchi2  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a simulate.py --task microlensing file")
    parser.add_argument("--n", type=int, default=600, help="events per class")
    parser.add_argument("--tiny", action="store_true", help="3 events per class (a smoke run)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.n = 3
    with mlh5.open_checked(args.data) as f:
        y = f["labels"][:]
        rows = np.sort(np.concatenate([np.nonzero(y == c)[0][:args.n] for c in (1, 2)]))
        t = f["time"][:]
        block = [f[k][rows] for k in ("mag", "mag_err", "magnification", "params")]
    y = y[rows]
    print(f"{args.data}: {len(rows)} events ({(y == 1).sum()} single lens, {(y == 2).sum()} binary), "
          f"{len(t)} epochs each")
    for finite in (False, True):
        start = time.perf_counter()
        d = event_dchi2(t, *block, finite_source=finite)["dchi2_pspl"]
        per_event = (time.perf_counter() - start) / len(rows)
        shares = ", ".join(f"{name} {np.mean(d[y == c] > 25):.3f}" for c, name in ((1, "single lens"), (2, "binary")))
        print(f"{'point or finite source' if finite else 'point source':>22}: {1e3 * per_event:6.1f} ms/event | "
              f"share with Δχ² > 25: {shares}")


if __name__ == "__main__":
    main()
