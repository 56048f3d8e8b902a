"""Benchmark of `simulate.py --task microlensing`; prints the figures, asserts nothing.

    python bench/bench_simulate.py                       # all parts (~15 min on 2 cores)
    python bench/bench_simulate.py --parts throughput    # end-to-end events/s only
    python bench/bench_simulate.py --tiny                # every part on a few events (seconds; the tests run it)

Parts:
- throughput: events/s on one core, end to end (simulate.py with one worker, HDF5 write
  included) for flat-only, PSPL-only, binary-only and variable-only runs of each population
  (`--populations`; survey: tE 0.1-300 d, peaks outside the season, faint blended stars), and
  the share of time writing;
- ratio: adaptive binary light curves vs VBBinaryLensing BinaryLightCurve at full cadence
  (Tol = RelTol = 1e-3) on the same parameters, one core, per preset;
- accuracy: max |dA|/A of the adaptive curves against VBBinaryLensing at Tol = RelTol = 1e-5
  at full cadence, per preset (>= 200 baseline events by default; uses all cores).
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from physics.microlensing.binary import AdaptiveBinaryLightCurve, full_binary_curve, make_vbbl  # noqa: E402
from physics.microlensing.events import PRESETS, EventConfig, draw_lensed  # noqa: E402
from physics.microlensing.survey import Season  # noqa: E402

KEYS = ("s", "q", "u0", "alpha", "rho", "tE", "t0")


def events(preset, n, seed):
    p = draw_lensed(np.random.default_rng(seed), EventConfig(preset=preset), n, binary=True)
    return [tuple(float(e[k]) for k in KEYS) for e in p]


def throughput(sizes, populations, contexts):
    print("\n== end-to-end throughput, 1 worker, baseline preset (simulate.py, HDF5 write included)")
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        for population, context in ((p, c) for p in populations for c in contexts):
            print(f"-- --context-days {context}")
            for cls, n in sizes.items():
                counts = {"flat": 0, "pspl": 0, "binary": 0, "variable": 0, cls: n}
                out = os.path.join(tmp, f"{cls}.h5")
                cmd = [os.environ.get("PY", sys.executable), "simulate.py", "--no-progress", "--output", out,
                       "--seed", "1", "--population", population, "--context-days", context,
                       *[a for c in counts for a in (f"--n-{c}", str(counts[c]))]]
                r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
                m = re.search(r"in ([\d.]+) s \((\d+) events/s, (\d+)% of the time writing\)", r.stdout)
                size = os.path.getsize(out) / 2**20
                print(f"{population:7s} {cls:8s} {n:6d} events: {m.group(2):>6s} events/s, {m.group(3):>2s}% of the "
                      f"time writing ({m.group(1)} s, {size:.0f} MiB)")
                os.remove(out)


def ratio(n):
    print(f"\n== adaptive binary vs full-cadence VBBinaryLensing (Tol=RelTol=1e-3), {n} events per preset, 1 core")
    season = Season()
    t = season.times()
    adaptive = AdaptiveBinaryLightCurve(t, season.dt)
    full = make_vbbl(1e-3, 1e-3)
    for preset in PRESETS:
        evs = events(preset, n, seed=2024)
        ta = tf = 0.0
        n_evals = 0
        for e in evs:
            t1 = time.perf_counter()
            adaptive(*e)
            t2 = time.perf_counter()
            full_binary_curve(full, t, *e)
            tf += time.perf_counter() - t2
            ta += t2 - t1
            n_evals += adaptive.n_evals
        print(f"{preset:9s}: adaptive {1e3 * ta / n:6.1f} ms/event ({n_evals / n:5.0f} evaluations), "
              f"full cadence {1e3 * tf / n:6.1f} ms/event, speed-up {tf / ta:4.2f}x")


def _accuracy_one(e):
    season = Season()
    t = season.times()
    ours = AdaptiveBinaryLightCurve(t, season.dt)(*e)
    fast = full_binary_curve(make_vbbl(1e-3, 1e-3), t, *e)
    ref = full_binary_curve(make_vbbl(1e-5, 1e-5), t, *e)
    return np.max(np.abs(ours / ref - 1)), np.max(np.abs(fast / ref - 1))


def accuracy(n_per_preset, processes=None):
    print("\n== accuracy against VBBinaryLensing Tol=RelTol=1e-5 at full cadence (max |dA|/A per event)")
    processes = processes or os.cpu_count()
    with mp.get_context("spawn").Pool(processes) if processes > 1 else contextlib.nullcontext() as pool:
        for preset, n in n_per_preset.items():
            jobs = events(preset, n, seed=777)
            res = np.array(pool.map(_accuracy_one, jobs, chunksize=1) if pool else [_accuracy_one(e) for e in jobs])
            ours, fast = res[:, 0], res[:, 1]
            print(f"{preset:9s} {n:4d} events: adaptive worst {ours.max():.2e}, median {np.median(ours):.1e}, "
                  f"over 1e-3: {(ours > 1e-3).sum()}  |  full-cadence Tol=1e-3 worst {fast.max():.2e}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["throughput", "ratio", "accuracy"],
                        choices=["throughput", "ratio", "accuracy"])
    parser.add_argument("--n-flat", type=int, default=6400)
    parser.add_argument("--n-pspl", type=int, default=6400)
    parser.add_argument("--n-binary", type=int, default=640)
    parser.add_argument("--n-variable", type=int, default=1280)
    parser.add_argument("--populations", nargs="+", default=["survey", "thesis"])
    parser.add_argument("--contexts", nargs="+", default=["1920", "0"],
                        help="--context-days values to time (the years around the season; 0 = none)")
    parser.add_argument("--n-ratio", type=int, default=100, help="events per preset for the speed ratio")
    parser.add_argument("--n-accuracy", type=int, default=200, help="baseline events; other presets get half")
    parser.add_argument("--processes", type=int, default=None, help="accuracy part (default: every core)")
    parser.add_argument("--tiny", action="store_true", help="every part on a few events, in seconds (a smoke run)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.n_flat, args.n_pspl, args.n_binary, args.n_ratio, args.n_accuracy, args.processes = 20, 20, 4, 2, 4, 1
        args.n_variable = 4
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    if "throughput" in args.parts:
        throughput({"flat": args.n_flat, "pspl": args.n_pspl, "binary": args.n_binary, "variable": args.n_variable},
                   args.populations, args.contexts)
    if "ratio" in args.parts:
        ratio(args.n_ratio)
    if "accuracy" in args.parts:
        accuracy({p: args.n_accuracy if p == "baseline" else args.n_accuracy // 2 for p in PRESETS}, args.processes)


if __name__ == "__main__":
    main()
