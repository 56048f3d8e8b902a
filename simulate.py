"""Simulate training sets.

Microlensing light curves (flat / PSPL / binary, and non-lensing variables) on a Roman-like
72-day season, events drawn as a bulge survey records them (--population survey: tE 0.1-300 d,
faint blended sources, peaks outside the window):

    python simulate.py --task microlensing --n-flat 1000 --n-pspl 1000 --n-binary 1000 --n-variable 1000 \\
        --binary-preset baseline --output data/baseline.h5 --num-workers 2 --preview data/baseline.png

    # the thesis command works unchanged; --population thesis gives the seed's narrow table
    python simulate.py --n_flat 100 --n_pspl 100 --n_binary 100 --binary_preset baseline \\
        --population thesis --output test.h5

    # SLURM job array (see sbatch/simulate.sbatch): one shard per task, then merge
    python simulate.py --n-flat 100000 --n-pspl 100000 --n-binary 100000 --seed 42 \\
        --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT --output shards/part_$SLURM_ARRAY_TASK_ID.h5
    python simulate.py --merge shards/part_*.h5 --output data/baseline.h5

Strong-lensing images (physics in physics/strong, formats in data/lens_images.py):

    # LSST challenge layout: DIR/lenses|nonlenses/D1_{L|N}IIIIIII_b.fits, grizy 41x41 at 0.2"
    python simulate.py --task lens --config lsst --n-lens 1000 --n-nonlens 1000 --format fits \
        --output data/lsst --preview 8
    # substructure classes like the public DeepLense Common Test I set (the default config,
    # deeplense-common: flatter rings along x, Poisson counts; bench/bench_substructure_realism.py
    # measures it against the public samples): DIR/no|sphere|vort/IIIIIII.npy, (1,150,150) float64
    python simulate.py --task substructure --n-per-class 1000 --format npy --output data/common --num-workers 2
    # the same layout from DeepLenseSim's Model I code as written (rounder rings at any angle)
    python simulate.py --task substructure --config deeplense-model1 --n-per-class 1000 --format npy \\
        --output data/model1 --num-workers 2
    # super-resolution pairs DIR/LR, DIR/HR (75x75 at 0.1", 150x150 at 0.05"), or one packed file
    python simulate.py --task superres --n 1000 --format npy --output data/sr
    python simulate.py --task substructure --n-per-class 10000 --format h5 --output data/common.h5 \\
        --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT --device cuda

The output is identical for a given --seed whatever --num-workers or sharding (on one device,
with one --compile setting). A killed run resumes when the same command is run again
(`<output>.partial` for files, a state file inside folders). Existing outputs are never
replaced without --overwrite.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time

from tqdm import tqdm

import physics
from data import lens_images
from data import microlensing_h5 as mlh5
from engine import image_sim
from engine.cli import OneLineErrorParser
from engine.image_sim import SimulationError, check_output
from engine.workers import Interrupted, ordered_results
from physics.microlensing.context import CONTEXT_DAYS, context_times
from physics.microlensing.events import (BLOCK_SIZE, CLASS_NAMES, POPULATIONS, PRESETS, EventConfig, EventSimulator,
                                         shuffled_labels)
from physics.strong.scenes import CONFIGS

TASKS = ("microlensing", "lens", "substructure", "superres")
DEFAULT_CONFIG = {"lens": "lsst", "substructure": "deeplense-common", "superres": "superres"}


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def band_list(text):
    bands = [b.strip() for b in text.split(",") if b.strip()]
    if not bands:
        raise argparse.ArgumentTypeError(f"expected bands like g,r,i, got {text!r}")
    return bands


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
    parser.add_argument("--output", required=True,
                        help="output file (.h5), or folder for the npy / fits image layouts")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--num-workers", "--num_workers", type=int, default=1,
                        help="processes (the output does not depend on it)")
    parser.add_argument("--shard", type=shard_spec, default=None, metavar="I/N",
                        help="write only shard I of N (0-based), for SLURM job arrays")
    parser.add_argument("--merge", nargs="+", metavar="SHARD",
                        help="merge these shard files into --output instead of simulating")
    parser.add_argument("--preview", metavar="PNG|N",
                        help="write a grid of examples per class: a .png path, or a number N of examples per "
                             "class (images only; written next to the output)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    ml = parser.add_argument_group("microlensing")
    ml.add_argument("--n-flat", "--n_flat", type=non_negative_int, default=100)
    ml.add_argument("--n-pspl", "--n_pspl", type=non_negative_int, default=100)
    ml.add_argument("--n-binary", "--n_binary", type=non_negative_int, default=100)
    ml.add_argument("--n-variable", "--n_variable", type=non_negative_int, default=0,
                    help="non-lensing variables (class 3: dwarf novae, pulsators, eclipsing binaries, long-period "
                         "variables, flares; physics/microlensing/variables.py); 0 = the three lensing classes only")
    ml.add_argument("--population", default="survey", choices=list(POPULATIONS),
                    help=" | ".join(f"{p.name}: {p.doc}" for p in POPULATIONS.values()).replace("%", "%%"))
    ml.add_argument("--binary-preset", "--binary_preset", default="baseline", choices=list(PRESETS),
                    help=" | ".join(f"{p.name} (s {p.s[0]:g}-{p.s[1]:g}, q {p.q[0]:g}-{p.q[1]:g}, "
                                   f"u0 {p.u0[0]:g}-{p.u0[1]:g}): {p.doc}" for p in PRESETS.values()))
    ml.add_argument("--oversample", type=float, default=1.0,
                    help="candidates drawn per missing event in each round of the detectability cut (>= 1)")
    ml.add_argument("--min-snr", type=float, default=5.0,
                    help="detectability cut: epochs with lensing signal >= this many sigma ...")
    ml.add_argument("--min-epochs", type=int, default=3, help="... at least this many of them")
    ml.add_argument("--context-days", type=float, default=CONTEXT_DAYS, metavar="D",
                    help="also record each star's daily curve over D days centred on the season (the seasons a "
                         "survey saw around the event, chosen when features are made: physics/microlensing/"
                         "context.py); 0 = the season only")
    im = parser.add_argument_group("strong-lensing images (--task lens | substructure | superres)")
    im.add_argument("--config", choices=list(CONFIGS),
                    help="; ".join(f"{c.name}: {c.doc}" for c in CONFIGS.values())
                    + " (default: " + ", ".join(f"{c} for {t}" for t, c in DEFAULT_CONFIG.items()) + ")")
    im.add_argument("--n-lens", type=non_negative_int, default=100)
    im.add_argument("--n-nonlens", type=non_negative_int, default=100)
    im.add_argument("--n-per-class", type=non_negative_int, default=100, help="substructure: images per class")
    im.add_argument("--n", type=non_negative_int, default=100, help="superres: image pairs")
    im.add_argument("--format", choices=lens_images.FORMATS, default="h5",
                    help="npy / fits folders in the public layouts, or one packed h5 file (default)")
    im.add_argument("--bands", type=band_list, help="subset of the config's bands, e.g. g,r,i")
    im.add_argument("--min-arc-snr", type=float, default=None,
                    help="lens task: redraw lenses (and non-lens rings, spirals, mergers, pairs) whose blue "
                         "feature has S/N below this (default 10; 0 keeps everything)")
    im.add_argument("--negatives", choices=("sky", "hard"), default=None,
                    help="lens: the non-lens mix. sky (default): mostly plain galaxies and neighbours, ring galaxies "
                         "at a rare 1%%; hard: look-alike-rich (15%% rings at Einstein radii), for hard-negative "
                         "training (physics/strong/survey.py)")
    inj = parser.add_argument_group("lenses painted into your own cutouts (--task lens --hosts ...)")
    inj.add_argument("--hosts", nargs="+", metavar="PATH",
                     help="survey cutouts to paint lensed sources into (lens and non-lens rows share them): folders of "
                          "FITS (NAME_b.fits) or .npy cutouts, folders with class folders (their non-lens training "
                          "folders only), or packed HDF5 files (their non-lens rows); any bands, square, any size")
    inj.add_argument("--psf", metavar="FILE|stars",
                     help="the survey PSF: .npy or FITS, (k, k) for every band or (C, k, k); or 'stars': measured "
                          "from the isolated stars found in the hosts (the median of at least 5)")
    inj.add_argument("--psf-fwhm", type=lambda t: [float(v) for v in t.split(",")], metavar="F[,F...]",
                     help="Moffat PSF FWHM in arcsec, one value or one per band (default: drawn per image from the "
                          "config's seeing range)")
    inj.add_argument("--pixel-scale", type=float, help="the hosts' pixel scale in arcsec (default: the config's)")
    inj.add_argument("--host-shift", type=non_negative_int, default=4,
                     help="hosts are used under a random symmetry of the square and a shift of up to this many "
                          "pixels (edges reflected), so few hosts give many images")
    inj.add_argument("--painted-neighbours", type=float, default=0.0, metavar="F",
                     help="share of the non-lens hosts given an unlensed blue galaxy 0.6-3\" from their centre, "
                          "drawn and painted like the lensed sources (same S/N, colours, PSF): look-alikes that "
                          "only the lensing geometry tells apart (default 0: the hosts as they are)")
    inj.add_argument("--skip-bad", action="store_true",
                     help="leave out (and list) unreadable hosts, hosts of another shape, hosts with no signal")
    im.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the ray shooting")
    im.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help=f"torch.compile the ray shooting (auto: substructure and superres runs from "
                         f"{image_sim.COMPILE_AUTO_MIN} images)")
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
def run_microlensing(args):
    cfg_kwargs = dict(preset=args.binary_preset, population=args.population, oversample=args.oversample,
                      min_snr=args.min_snr, min_epochs=args.min_epochs, context_days=args.context_days)
    try:
        cfg = EventConfig(**cfg_kwargs)
    except ValueError as err:
        raise SimulationError(str(err)) from None
    labels = shuffled_labels(args.seed, args.n_flat, args.n_pspl, args.n_binary, args.n_variable)
    n_total = len(labels)
    n_blocks = -(-n_total // BLOCK_SIZE)
    shard_index, n_shards = args.shard or (0, 1)
    first, last = shard_index * n_blocks // n_shards, (shard_index + 1) * n_blocks // n_shards
    row_start, row_stop = first * BLOCK_SIZE, min(last * BLOCK_SIZE, n_total)

    attrs = {
        "task": "microlensing", "preset": cfg.preset, "population": cfg.population, "seed": args.seed,
        "n_flat": args.n_flat, "n_pspl": args.n_pspl, "n_binary": args.n_binary, "n_variable": args.n_variable,
        "class_names": list(CLASS_NAMES if args.n_variable else CLASS_NAMES[:3]),
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
            f = mlh5.create(partial, row_stop - row_start, cfg.season.times(), attrs,
                            context_times(cfg.season.length_days, cfg.context_days) if cfg.context_days else None)
        except OSError as err:
            raise SimulationError(f"cannot write {partial}: {err}") from None
        f.attrs["run_signature"] = signature
        f.attrs["rows_done"] = 0
    done = int(f.attrs["rows_done"])
    first_todo = first + done // BLOCK_SIZE
    jobs = [(args.seed, b, labels[b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE]) for b in range(first_todo, last)]
    if done:
        print(f"resuming {partial} at row {done} of {row_stop - row_start}")

    start_time = time.perf_counter()
    write_seconds = 0.0
    last_flush = start_time
    bar = tqdm(total=row_stop - row_start, initial=done, unit="ev", disable=args.no_progress,
               desc=f"simulate {cfg.preset}")
    try:
        with ordered_results(_run_block, jobs, args.num_workers, _init_worker, (cfg_kwargs,)) as results:
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
    if _image_shard(args.merge[0]):
        try:
            n = image_sim.merge_h5(args.merge, partial)
        except OSError as err:
            raise SimulationError(f"cannot merge into {args.output}: {err}") from None
        os.replace(partial, args.output)
        print(f"merged {len(args.merge)} shards ({n} images) into {args.output}")
        return
    try:
        n = mlh5.merge_shards(args.merge, partial)
    except (mlh5.SchemaError, OSError) as err:
        if os.path.exists(partial):
            os.remove(partial)
        raise SimulationError(str(err)) from None
    os.replace(partial, args.output)
    print(f"merged {len(args.merge)} shards ({n} events) into {args.output}")


def _image_shard(path):
    try:
        with mlh5.h5py.File(path, "r") as f:
            return f.attrs.get("task") in TASKS[1:]
    except OSError:
        return False


def image_setup(args):
    """Validated (config, bands) for an image task."""
    name = args.config or DEFAULT_CONFIG[args.task]
    cfg = CONFIGS[name]
    if cfg.task != args.task:
        raise SimulationError(f"--config {name} makes {cfg.task} images, not --task {args.task}")
    try:
        bands = cfg.band_list(None if args.hosts else args.bands)  # hosts name their own bands
    except ValueError as err:
        raise SimulationError(str(err)) from None
    if args.format == "fits" and cfg.task != "lens":
        raise SimulationError(f"--format fits is the LSST lens-challenge layout; use npy or h5 for {cfg.task}")
    if args.min_arc_snr is None:
        args.min_arc_snr = 10.0 if cfg.task == "lens" else 0.0
    elif args.min_arc_snr > 0 and cfg.task != "lens":
        raise SimulationError("--min-arc-snr applies to --task lens only")
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise SimulationError(f"--device {args.device}: no CUDA device is available")
    if cfg.task == "lens":
        cfg = dataclasses.replace(cfg, negatives=args.negatives or "sky")
    return cfg, bands


def preview_spec(args):
    """(png path, examples per class) from --preview PNG|N."""
    if args.preview.isdigit():
        base = args.output.rstrip("/")
        png = os.path.join(base, "preview.png") if args.format != "h5" and args.task != "microlensing" \
            else os.path.splitext(base)[0] + "_preview.png"
        return png, int(args.preview)
    return args.preview, 6


def main(args):
    if args.num_workers < 1:
        raise SimulationError(f"--num-workers must be >= 1, got {args.num_workers}")
    if args.preview and args.preview.isdigit() and int(args.preview) < 1:
        raise SimulationError(f"--preview needs at least 1 example per class, got {args.preview}")
    if args.negatives is not None and args.task != "lens":
        raise SimulationError("--negatives applies to --task lens only")
    if args.hosts:
        if args.task != "lens":
            raise SimulationError("--hosts paints lenses: it needs --task lens")
        if args.negatives is not None:
            raise SimulationError("--negatives chooses simulated non-lenses; with --hosts the non-lenses are your cutouts")
        if args.shard or args.merge:
            raise SimulationError("--hosts runs are not sharded (painting is fast); drop --shard / --merge")
        if not 0 <= args.painted_neighbours <= 1:
            raise SimulationError(f"--painted-neighbours is a share of the non-lenses (0-1), got {args.painted_neighbours}")
    elif args.psf or args.psf_fwhm or args.pixel_scale or args.painted_neighbours:
        raise SimulationError("--psf, --psf-fwhm, --pixel-scale and --painted-neighbours describe --hosts cutouts; "
                              "give --hosts")
    if args.merge:
        run_merge(args)
        return
    if args.task == "microlensing":
        run_microlensing(args)
        if args.preview:
            from plots.lightcurves import plot_examples
            png, _ = preview_spec(args)
            plot_examples(args.output, png)
            print(f"wrote {png}")
        return
    cfg, bands = image_setup(args)
    painting = image_sim.run(args, cfg, bands)
    if args.preview and painting:
        from plots.lens_images import plot_injections
        png, per_class = preview_spec(args)
        plot_injections(args.output, args.format, painting, png, per_class)
        print(f"wrote {png}")
    elif args.preview:
        from plots.lens_images import plot_examples as plot_images
        png, per_class = preview_spec(args)
        plot_images(args.output, args.format, cfg, bands, png, per_class)
        print(f"wrote {png}")


if __name__ == "__main__":
    parsed = get_args_parser().parse_args()
    try:
        main(parsed)
    except (SimulationError, mlh5.SchemaError, lens_images.ImageFormatError) as err:
        print(f"simulate.py: error: {err}", file=sys.stderr)
        sys.exit(2)
