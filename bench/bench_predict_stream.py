"""predict.py on a survey's stream of light curves: light curves/s end to end; prints, asserts nothing.

A survey's curves are nearly all flat or variable: this bench simulates such a file (by default
89% flat, 10% variables, 1% lensing events, Roman cadence) and times predict.py on it (read, fit,
features, model), with the run given or a small one trained here on a balanced set.

    python bench/bench_predict_stream.py                       # ~5 min on 2 cores
    python bench/bench_predict_stream.py --run outputs/ml_survey/runs/days --n 2000
    python bench/bench_predict_stream.py --tiny                # seconds (the tests run it)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    r = subprocess.run([os.environ.get("PY", sys.executable), *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(args[:2])} failed: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}")
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a microlensing run directory (default: a small run trained here)")
    p.add_argument("--n", type=int, default=1000, help="light curves in the stream")
    p.add_argument("--lensing-share", type=float, default=0.01)
    p.add_argument("--variable-share", type=float, default=0.1, help="of the curves: non-lensing variables")
    p.add_argument("--repeat", type=int, default=3, help="timed predict.py runs; the median is reported "
                   "(a shared machine's timings vary by 20%%)")
    p.add_argument("--tiny", action="store_true", help="a few curves, a one-epoch run (a smoke run)")
    args = p.parse_args(argv)
    if args.tiny:
        args.n, args.repeat = 40, 1
    n_lens = max(2, round(args.n * args.lensing_share))
    n_var = round(args.n * args.variable_share)
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        stream = os.path.join(tmp, "stream.h5")
        run("simulate.py", "--n-flat", str(args.n - n_lens - n_var), "--n-variable", str(n_var),
            "--n-pspl", str(n_lens // 2), "--n-binary", str(n_lens - n_lens // 2), "--seed", "77",
            "--output", stream, "--no-progress")
        run_dir = args.run
        if run_dir is None:
            train_set = os.path.join(tmp, "train.h5")
            k = "8" if args.tiny else "100"
            run("simulate.py", "--n-flat", k, "--n-pspl", k, "--n-binary", k, "--n-variable", k, "--seed", "78",
                "--output", train_set, "--no-progress")
            run("train.py", "--data", train_set, "--output", tmp, "--experiment-name", "stream", "--epochs", "1",
                "--no-progress", *(["--d-model", "16", "--n-layers", "1"] if args.tiny else []))
            run_dir = os.path.join(tmp, "stream")
        out = os.path.join(tmp, "stream.csv")
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            run("predict.py", "--runs", run_dir, "--input", stream, "--output", out, "--no-progress")
            times.append(time.perf_counter() - start)
    elapsed = sorted(times)[len(times) // 2]
    print(f"machine: {os.cpu_count()} cores; run {run_dir if args.run else '(trained here)'}")
    print(f"predict.py end to end on {args.n} light curves ({n_lens} lensing, {n_var} variables, the rest flat; "
          f"72-day Roman seasons): median of {len(times)} runs {elapsed:.1f} s, {args.n / elapsed:.1f} light curves/s "
          f"(process start and model load included; runs: {', '.join(f'{t:.1f}' for t in times)} s)")


if __name__ == "__main__":
    main()
