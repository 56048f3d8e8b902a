"""The image side of `simulate.py`: blocks of seeded scenes rendered and written to disk.

Images are made in blocks of BLOCK_SIZE rows; a block's random numbers come from
(seed, block index) alone, so the output does not depend on --num-workers or sharding.
Progress is recorded after every block: a killed run resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import signal
import time

import numpy as np
import torch
from tqdm import tqdm

import physics
from data import lens_images
from engine import injection
from engine.workers import Interrupted, ordered_results
from physics.strong import render, scenes, survey

BLOCK_SIZE = 64           # images per random-number block (part of the output's definition)
MAX_REDRAWS = 50          # rounds of the arc S/N cut before giving up
COMPILE_AUTO_MIN = 4000   # --compile auto compiles from this many images
OWNED = ("lenses", "nonlenses", "no", "sphere", "vort", "HR", "LR")


class SimulationError(Exception):
    """Bad input or an output that cannot be written: reported as one line."""


def check_output(path, overwrite):
    """Fail early (before any work) if an output file cannot or must not be written."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise SimulationError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise SimulationError(f"cannot write {path}: folder {folder} is not writable")
    if os.path.exists(path) and not overwrite:
        raise SimulationError(f"{path} exists; pass --overwrite to replace it")


def block_seed(seed, task, block_index):
    state = np.random.SeedSequence([seed, block_index], spawn_key=(sum(map(ord, task)),)).generate_state(2)
    return int(state[0]), int(state[1])


def shuffled_labels(seed, counts):
    """(N,) class labels in a seeded random order: rows and file indices never follow class."""
    labels = np.repeat(np.arange(len(counts), dtype=np.int8), counts)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    return labels[rng.permutation(len(labels))]


# --------------------------------------------------------------------------- worker side
_STATE = {}


def init_worker(spec):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles interrupts
    torch.set_num_threads(spec["threads"])
    if spec["compile"] and mp.current_process().name != "MainProcess":
        import torch._inductor.config as inductor_config
        inductor_config.compile_threads = 1  # no compile pool inside a pool worker
    if "hosts_file" in spec:  # painting into hosts: no scene renderer
        _STATE.update(spec=spec, cfg=None, renderer=None)
        return
    cfg = dataclasses.replace(scenes.CONFIGS[spec["config"]], negatives=spec["negatives"])
    _STATE.update(spec=spec, cfg=cfg, renderer=render.Renderer(
        cfg, spec["device"], torch.float32, compile=spec["compile"]))


def run_block(job):
    """(block_index, labels) -> (block_index, images {name: np.ndarray}, params {name: np.ndarray})."""
    spec, cfg, renderer = _STATE["spec"], _STATE["cfg"], _STATE["renderer"]
    if "hosts_file" in spec:
        return injection.run_block(spec, job, *block_seed(spec["seed"], "lens", job[0]))
    block_index, labels = job
    scene_seed, noise_seed = block_seed(spec["seed"], cfg.task, block_index)
    gen = torch.Generator().manual_seed(scene_seed)
    noise_gen = torch.Generator(spec["device"]).manual_seed(noise_seed)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    scene, params = scenes.sample(cfg, labels_t, gen)
    images = renderer.render(scene, params, noise_gen, spec["bands"])
    if spec["min_arc_snr"] > 0 and cfg.task == "lens":
        for _ in range(MAX_REDRAWS):
            # lensed arcs and the non-lens look-alikes pass the same cut; plain galaxies have no feature
            redo = (params["kind"] != survey.KIND_CODES["isolated"]) & (params["arc_snr"] < spec["min_arc_snr"])
            if not redo.any():
                break
            rows = torch.nonzero(redo).flatten()
            scene2, params2 = scenes.sample(cfg, labels_t[rows], gen)
            images2 = renderer.render(scene2, params2, noise_gen, spec["bands"])
            for key in params:
                params[key][rows] = params2[key]
            for key in images:
                images[key][rows.to(images[key].device)] = images2[key]
        else:
            raise SimulationError(f"block {block_index}: arcs stay below --min-arc-snr {spec['min_arc_snr']} "
                                  f"after {MAX_REDRAWS} redraws; lower it")
    return (block_index, {k: v.cpu().numpy() for k, v in images.items()},
            {k: v.cpu().numpy() for k, v in params.items()})


# --------------------------------------------------------------------------- parent side
def plan(args, cfg):
    counts = {"lens": (args.n_nonlens, args.n_lens), "substructure": (args.n_per_class,) * len(cfg.classes),
              "superres": None}[cfg.task]
    if counts is None:  # superres: the class decides the substructure, drawn evenly
        counts = [args.n // 3 + (1 if i < args.n % 3 else 0) for i in range(3)]
    if sum(counts) == 0:
        raise SimulationError("nothing to simulate: all image counts are 0")
    labels = shuffled_labels(args.seed, counts)
    n_blocks = -(-len(labels) // BLOCK_SIZE)
    shard_index, n_shards = args.shard or (0, 1)
    first, last = shard_index * n_blocks // n_shards, (shard_index + 1) * n_blocks // n_shards
    return labels, counts, first, last


def run(args, cfg, bands):
    """Simulate (or with --hosts paint into the user's cutouts); returns the injection context or None."""
    labels, counts, first, last = plan(args, cfg)
    painting = None
    if getattr(args, "hosts", None):
        try:
            cfg, bands, painting = injection.prepare(args, labels)
        except injection.InjectionError as err:
            raise SimulationError(str(err)) from None
    try:
        _run(args, cfg, bands, labels, counts, first, last, painting)
    finally:
        if painting:
            shutil.rmtree(painting["tmp"], ignore_errors=True)
    return painting


def _run(args, cfg, bands, labels, counts, first, last, painting):
    n_total = len(labels)
    row_start, row_stop = first * BLOCK_SIZE, min(last * BLOCK_SIZE, n_total)
    # compiling pays off where subhalos make ray shooting dominate (Model I, superres); for the
    # small lsst stamps writing and the PSF dominate and the first compile costs more than it saves
    compile_on = args.compile == "on" or (args.compile == "auto" and cfg.task != "lens" and n_total >= COMPILE_AUTO_MIN)
    definition = {  # what the output is: the same definition resumes, other shards may join
        "task": cfg.task, "config": cfg.name, "bands": list(bands), "format": args.format, "seed": args.seed,
        "counts": dict(zip(cfg.classes, map(int, counts))), "block_size": BLOCK_SIZE,
        "min_arc_snr": args.min_arc_snr, "compile": compile_on, "code_version": physics.__version__,
        "pixel_scale": cfg.pixel_scale, "size": cfg.size, "scaling": cfg.scaling,
        **({"negatives": cfg.negatives} if cfg.task == "lens" else {}),
        **(painting["definition"] if painting else {}),
    }
    shard_tag = f"_shard{args.shard[0]}of{args.shard[1]}" if args.shard else ""
    spec = dict(config=cfg.name, negatives=cfg.negatives, seed=args.seed, bands=list(bands), device=args.device, compile=compile_on,
                min_arc_snr=args.min_arc_snr, threads=max(1, torch.get_num_threads() // args.num_workers))
    spec.update(painting["spec"] if painting else {})
    if args.format == "h5":
        sink = H5Sink(args, cfg, bands, definition, row_start, row_stop, shard_tag)
    else:
        sink = FolderSink(args, cfg, bands, definition, shard_tag)
    done_blocks = sink.blocks_done
    jobs = [(b, labels[b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE]) for b in range(first + done_blocks, last)]
    if painting:
        jobs = [(b, block, painting["host_rows"][b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE]) for b, block in jobs]
        table = os.path.join(args.output, "hosts.csv") if args.format != "h5" \
            else os.path.splitext(args.output)[0] + "_hosts.csv"
        injection.write_host_table(painting, table)
    if done_blocks:
        print(f"resuming {sink.where} after {done_blocks} blocks of {last - first}")

    start_time = time.perf_counter()
    n_rows = row_stop - row_start
    done_rows = min(done_blocks * BLOCK_SIZE, n_rows)
    bar = tqdm(total=n_rows, initial=done_rows, unit="img", disable=args.no_progress,
               desc=f"simulate {cfg.name}" + (" (compiling first)" if compile_on else ""))
    try:
        with ordered_results(run_block, jobs, args.num_workers, init_worker, (spec,)) as results:
            for block_index, images, params in results:
                block_labels = labels[block_index * BLOCK_SIZE:(block_index + 1) * BLOCK_SIZE]
                indices = np.arange(block_index * BLOCK_SIZE, block_index * BLOCK_SIZE + len(block_labels))
                sink.write(block_index - first, indices, block_labels, images, params)
                bar.update(len(block_labels))
    except Interrupted as why:
        sink.close()
        raise SimulationError(f"interrupted by {why} after {sink.blocks_done} blocks; "
                              f"rerun the same command to resume {sink.where}") from None
    finally:
        bar.close()
    sink.finish()
    elapsed = time.perf_counter() - start_time
    n_new = n_rows - done_rows
    print(f"wrote {n_new} images ({', '.join(f'{c} {n}' for c, n in zip(cfg.classes, counts))} in the whole set) "
          f"to {args.output} in {elapsed:.1f} s ({n_new / max(elapsed, 1e-9):.0f} images/s)")


class FolderSink:
    """npy / fits folders; DIR/simulation.json defines the set, a state file per shard
    records finished blocks and the size of its parameter table."""

    def __init__(self, args, cfg, bands, definition, shard_tag):
        root = args.output
        self.where = root
        self.state_path = os.path.join(root, f".simulate_state{shard_tag}.json")
        definition_path = os.path.join(root, "simulation.json")
        signature = json.dumps(definition, sort_keys=True)
        if os.path.isfile(root):
            raise SimulationError(f"{root} is a file; --format {args.format} writes a folder")
        if os.path.isdir(root) and os.listdir(root):
            if args.overwrite:
                for name in os.listdir(root):
                    path = os.path.join(root, name)
                    if name in OWNED and os.path.isdir(path):
                        shutil.rmtree(path)
                    elif name == "simulation.json" or name.startswith((".simulate_state", "params")):
                        os.remove(path)
            elif not _same_definition(definition_path, signature):
                raise SimulationError(f"{root} is not empty; pass --overwrite to replace the simulated files "
                                      f"there, or choose another --output")
        os.makedirs(root, exist_ok=True)
        if not os.path.exists(definition_path):
            _write_json(definition_path, definition)
        state = {"blocks_done": 0, "params_bytes": 0}
        if os.path.exists(self.state_path):
            with open(self.state_path) as f:
                state = json.load(f)
        self.blocks_done = state["blocks_done"]
        params_name = f"params{shard_tag}.csv"
        if not os.path.exists(self.state_path) and os.path.exists(os.path.join(root, params_name)) \
                and not args.overwrite:
            raise SimulationError(f"{root} already holds this simulation{' shard' if shard_tag else ''}, "
                                  f"complete; pass --overwrite to make it again")
        self.writer = lens_images.FolderWriter(root, cfg, args.format, bands, params_name,
                                               resume_bytes=state["params_bytes"])
        if not self.blocks_done and self.writer.params_bytes():
            os.remove(self.writer.params_path)  # a table from a run killed before its first block

    def write(self, block_offset, indices, labels, images, params):
        self.writer.write_block(indices, labels, images, params)
        self.blocks_done = block_offset + 1
        _write_json(self.state_path, {"blocks_done": self.blocks_done, "params_bytes": self.writer.params_bytes()})

    def close(self):
        """Nothing stays open between blocks: every file and the state are complete on disk."""

    def finish(self):
        if os.path.exists(self.state_path):  # a shard with no blocks (more shards than blocks) wrote none
            os.remove(self.state_path)


def _same_definition(path, signature):
    try:
        with open(path) as f:
            return json.dumps(json.load(f), sort_keys=True) == signature
    except (OSError, ValueError):
        return False


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


class H5Sink:
    """One packed file written as <output>.partial and renamed when complete."""

    def __init__(self, args, cfg, bands, definition, row_start, row_stop, shard_tag):
        self.path, self.partial = args.output, args.output + ".partial"
        self.where = self.partial
        self.cfg, self.bands, self.n_rows = cfg, bands, row_stop - row_start
        if os.path.isdir(self.path):
            raise SimulationError(f"{self.path} is a folder; --format h5 writes one file (e.g. {self.path.rstrip('/')}.h5)")
        check_output(self.path, args.overwrite)
        self.attrs = dict(definition, row_start=row_start, row_stop=row_stop)
        if args.shard:
            self.attrs.update(shard_index=args.shard[0], n_shards=args.shard[1])
        self.signature = json.dumps(self.attrs, sort_keys=True)
        self.f, self.blocks_done = None, 0
        if os.path.exists(self.partial):
            try:
                self.f = lens_images.h5py.File(self.partial, "a")
                same = self.f.attrs.get("run_signature") == self.signature
            except OSError:
                raise SimulationError(f"{self.partial}: damaged unfinished output of an earlier run; delete it") from None
            if not same:
                self.f.close()
                raise SimulationError(f"{self.partial}: unfinished output of a different run; "
                                      f"delete it or use another --output")
            self.blocks_done = int(self.f.attrs["blocks_done"])

    def write(self, block_offset, indices, labels, images, params):
        if self.f is None:
            shapes = {k: v.shape[1:] for k, v in params.items()}
            try:
                self.f = lens_images.create_h5(self.partial, self.cfg, self.bands, self.n_rows, shapes, self.attrs)
            except OSError as err:
                raise SimulationError(f"cannot write {self.partial}: {err}") from None
            self.f.attrs["run_signature"] = self.signature
        lens_images.write_h5_rows(self.f, block_offset * BLOCK_SIZE, indices, labels, images, params)
        self.blocks_done = block_offset + 1
        self.f.attrs["blocks_done"] = self.blocks_done
        self.f.flush()

    def close(self):
        if self.f is not None:
            self.f.close()

    def finish(self):
        del self.f.attrs["run_signature"], self.f.attrs["blocks_done"]
        self.f.close()
        os.replace(self.partial, self.path)


def merge_h5(paths, output):
    """Concatenate the shard files of one image run (any order) into `output`; returns rows."""
    shards = []
    for path in paths:
        try:
            with lens_images.h5py.File(path, "r") as f:
                shards.append((int(f.attrs["row_start"]), path, dict(f.attrs)))
        except (OSError, KeyError):
            raise SimulationError(f"{path}: not a finished shard of an image simulation") from None
    shards.sort()
    keys = ("task", "config", "negatives", "seed", "counts", "bands", "n_shards")
    first = shards[0][2]
    for start, path, attrs in shards:
        if any(str(attrs.get(k)) != str(first.get(k)) for k in keys):
            raise SimulationError(f"{path}: shard of a different run than {shards[0][1]}")
    expected = 0
    for start, path, attrs in shards:
        if start != expected:
            raise SimulationError(f"missing rows {expected}-{start - 1}: a shard is absent from the list")
        expected = int(attrs["row_stop"])
    with lens_images.h5py.File(output, "w") as out:
        with lens_images.h5py.File(shards[0][1], "r") as f0:
            for name, ds in f0.items():
                if isinstance(ds, lens_images.h5py.Group):
                    continue
                out.create_dataset(name, (expected,) + ds.shape[1:], dtype=ds.dtype, chunks=ds.chunks)
            for name, ds in f0["params"].items():
                out.create_dataset(f"params/{name}", (expected,) + ds.shape[1:], dtype=ds.dtype)
            out.attrs.update({k: v for k, v in f0.attrs.items() if k not in ("row_start", "row_stop", "shard_index")})
        for start, path, attrs in shards:
            with lens_images.h5py.File(path, "r") as f:
                stop = int(attrs["row_stop"])
                for name in out:
                    if name == "params":
                        for p in out["params"]:
                            out["params"][p][start:stop] = f["params"][p][()]
                    else:
                        out[name][start:stop] = f[name][()]
        out.attrs["row_start"], out.attrs["row_stop"] = 0, expected
    return expected
