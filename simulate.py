"""Simulate training sets.

Microlensing light curves (flat / PSPL / binary) on a Roman-like 72-day season:

    python simulate.py --task microlensing --n-flat 1000 --n-pspl 1000 --n-binary 1000 \\
        --binary-preset baseline --output data/baseline.h5 --num-workers 2 --preview data/baseline.png

    # the thesis command works unchanged
    python simulate.py --n_flat 100 --n_pspl 100 --n_binary 100 --binary_preset baseline --output test.h5

    # SLURM job array (see sbatch/simulate.sbatch): one shard per task, then merge
    python simulate.py --n-flat 100000 --n-pspl 100000 --n-binary 100000 --seed 42 \\
        --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT --output shards/part_$SLURM_ARRAY_TASK_ID.h5
    python simulate.py --merge shards/part_*.h5 --output data/baseline.h5

The output is identical for a given --seed whatever --num-workers or sharding. A killed run
leaves `<output>.partial`; the same command resumes it. Existing outputs are never replaced
without --overwrite.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import sys
import time

from tqdm import tqdm

import physics
from data import microlensing_h5 as mlh5
from engine.cli import OneLineErrorParser
from physics.microlensing.events import BLOCK_SIZE, PRESETS, EventConfig, EventSimulator, shuffled_labels

TASKS = ("microlensing",)


class SimulationError(Exception):
    """Bad input or an output that cannot be written: reported as one line."""


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def shard_spec(text):
    """'I/N' with 0 <= I < N."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (e.g. 3/16), got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"shard index must satisfy 0 <= I < N, got {text}")
    return index, count


def get_args_parser():
    parser = OneLineErrorParser("simulate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="microlensing", choices=TASKS)
    parser.add_argument("--output", required=True, help="output file (.h5)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--num-workers", "--num_workers", type=int, default=1,
                        help="processes (the output does not depend on it)")
    parser.add_argument("--shard", type=shard_spec, default=None, metavar="I/N",
                        help="write only shard I of N (0-based), for SLURM job arrays")
    parser.add_argument("--merge", nargs="+", metavar="SHARD",
                        help="merge these shard files into --output instead of simulating")
    parser.add_argument("--preview", metavar="PNG", help="write a grid of example light curves per class")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    ml = parser.add_argument_group("microlensing")
    ml.add_argument("--n-flat", "--n_flat", type=non_negative_int, default=100)
    ml.add_argument("--n-pspl", "--n_pspl", type=non_negative_int, default=100)
    ml.add_argument("--n-binary", "--n_binary", type=non_negative_int, default=100)
    ml.add_argument("--binary-preset", "--binary_preset", default="baseline", choices=list(PRESETS),
                    help=" | ".join(f"{p.name} (s {p.s[0]:g}-{p.s[1]:g}, q {p.q[0]:g}-{p.q[1]:g}, "
                                   f"u0 {p.u0[0]:g}-{p.u0[1]:g}): {p.doc}" for p in PRESETS.values()))
    ml.add_argument("--oversample", type=float, default=1.0,
                    help="candidates drawn per missing event in each round of the detectability cut (>= 1)")
    ml.add_argument("--min-snr", type=float, default=5.0,
                    help="detectability cut: epochs with lensing signal >= this many sigma ...")
    ml.add_argument("--min-epochs", type=int, default=3, help="... at least this many of them")
    return parser


# --------------------------------------------------------------------------- worker side
_SIMULATOR = None


def _init_worker(cfg_kwargs):
    global _SIMULATOR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles interrupts
    _SIMULATOR = EventSimulator(EventConfig(**cfg_kwargs))


def _run_block(job):
    seed, block_index, labels = job
    return _SIMULATOR.block(seed, block_index, labels)


# --------------------------------------------------------------------------- parent side
class Interrupted(Exception):
    pass


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def check_output(path, overwrite):
    """Fail early (before any work) if the output cannot or must not be written."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise SimulationError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise SimulationError(f"cannot write {path}: folder {folder} is not writable")
    if os.path.exists(path) and not overwrite:
        raise SimulationError(f"{path} exists; pass --overwrite to replace it")


def run_microlensing(args):
    cfg_kwargs = dict(preset=args.binary_preset, oversample=args.oversample,
                      min_snr=args.min_snr, min_epochs=args.min_epochs)
    try:
        cfg = EventConfig(**cfg_kwargs)
    except ValueError as err:
        raise SimulationError(str(err)) from None
    labels = shuffled_labels(args.seed, args.n_flat, args.n_pspl, args.n_binary)
    n_total = len(labels)
    n_blocks = -(-n_total // BLOCK_SIZE)
    shard_index, n_shards = args.shard or (0, 1)
    first, last = shard_index * n_blocks // n_shards, (shard_index + 1) * n_blocks // n_shards
    row_start, row_stop = first * BLOCK_SIZE, min(last * BLOCK_SIZE, n_total)

    attrs = {
        "task": "microlensing", "preset": cfg.preset, "seed": args.seed,
        "n_flat": args.n_flat, "n_pspl": args.n_pspl, "n_binary": args.n_binary,
        "cadence_min": cfg.season.cadence_min, "season_days": cfg.season.length_days,
        "missing_fraction": cfg.season.missing_fraction, "block_size": BLOCK_SIZE,
        "code_version": physics.__version__, "config": json.dumps(cfg.to_dict()),
    }
    if args.shard:
        attrs.update(shard_index=shard_index, n_shards=n_shards, row_start=row_start, row_stop=row_stop)

    check_output(args.output, args.overwrite)
    partial = args.output + ".partial"
    signature = json.dumps(attrs, sort_keys=True)
    f = None
    if os.path.exists(partial):
        try:
            f = mlh5.h5py.File(partial, "a")
            same = f.attrs.get("run_signature") == signature
        except OSError:
            raise SimulationError(f"{partial}: damaged unfinished output from an earlier run; delete it") from None
        if not same:
            f.close()
            raise SimulationError(f"{partial}: unfinished output of a different run; delete it or use another --output")
    if f is None:
        try:
            f = mlh5.create(partial, row_stop - row_start, cfg.season.times(), attrs)
        except OSError as err:
            raise SimulationError(f"cannot write {partial}: {err}") from None
        f.attrs["run_signature"] = signature
        f.attrs["rows_done"] = 0
    done = int(f.attrs["rows_done"])
    first_todo = first + done // BLOCK_SIZE
    jobs = [(args.seed, b, labels[b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE]) for b in range(first_todo, last)]
    if done:
        print(f"resuming {partial} at row {done} of {row_stop - row_start}")

    old_handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    pool = None
    start_time = time.perf_counter()
    write_seconds = 0.0
    last_flush = start_time
    bar = tqdm(total=row_stop - row_start, initial=done, unit="ev", disable=args.no_progress,
               desc=f"simulate {cfg.preset}")
    try:
        if args.num_workers > 1:
            pool = mp.get_context("spawn").Pool(args.num_workers, _init_worker, (cfg_kwargs,))
            results = pool.imap(_run_block, jobs, chunksize=1)
        else:
            _init_worker(cfg_kwargs)
            signal.signal(signal.SIGINT, _raise_interrupted)
            results = map(_run_block, jobs)
        for (_, block_index, block_labels), block in zip(jobs, results):
            start = block_index * BLOCK_SIZE - row_start
            tick = time.perf_counter()
            mlh5.write_rows(f, start, block_labels, block)
            if tick - last_flush > 2.0 or block_index == last - 1:  # resume point every ~2 s
                f.attrs["rows_done"] = start + len(block_labels)
                f.flush()
                last_flush = tick
            write_seconds += time.perf_counter() - tick
            bar.update(len(block_labels))
    except Interrupted as why:
        rows = int(f.attrs["rows_done"])
        f.close()
        raise SimulationError(f"interrupted by {why} after {rows} rows; "
                              f"rerun the same command to resume from {partial}") from None
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
        for s, h in old_handlers.items():
            signal.signal(s, h)
    del f.attrs["rows_done"], f.attrs["run_signature"]
    f.close()
    os.replace(partial, args.output)
    elapsed = time.perf_counter() - start_time
    n_new = row_stop - row_start - done
    print(f"wrote {n_new} events to {args.output} in {elapsed:.1f} s ({n_new / max(elapsed, 1e-9):.0f} events/s, "
          f"{100 * write_seconds / max(elapsed, 1e-9):.0f}% of the time writing)")


def run_merge(args):
    check_output(args.output, args.overwrite)
    partial = args.output + ".partial"
    try:
        n = mlh5.merge_shards(args.merge, partial)
    except (mlh5.SchemaError, OSError) as err:
        if os.path.exists(partial):
            os.remove(partial)
        raise SimulationError(str(err)) from None
    os.replace(partial, args.output)
    print(f"merged {len(args.merge)} shards ({n} events) into {args.output}")


def main(args):
    if args.num_workers < 1:
        raise SimulationError(f"--num-workers must be >= 1, got {args.num_workers}")
    if args.merge:
        run_merge(args)
    else:
        run_microlensing(args)
    if args.preview:
        from plots.lightcurves import plot_examples
        plot_examples(args.output, args.preview)
        print(f"wrote {args.preview}")


if __name__ == "__main__":
    parsed = get_args_parser().parse_args()
    try:
        main(parsed)
    except (SimulationError, mlh5.SchemaError) as err:
        print(f"simulate.py: error: {err}", file=sys.stderr)
        sys.exit(2)
