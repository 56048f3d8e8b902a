"""The GPU figures of bench/gpu_check.sh: training steps of every task in bf16, simulator and
predict.py throughputs; one JSON and one Markdown table in --out.

    python bench/gpu_check.py --out gpu_check/                    # on a CUDA machine (~4 min on an H100)
    python bench/gpu_check.py --out /tmp/g --device cpu --tiny    # the same steps on a few samples (the tests)

1. data, made here with simulate.py (so light curves/s and images/s are the simulator's own,
   HDF5 / .npy writing included): microlensing (baseline preset, CPU: VBBinaryLensing, every core),
   lsst lens cutouts, deeplense-model1 substructure images and superres pairs (ray shooting on --device);
2. simulator render throughput without writing: scenes sampled and rendered in batches of 256 on
   --device, deeplense-model1 (150x150) and lsst (grizy 41x41, 3x3 supersampling); the smooth-lens
   fit of --input-kind residual on one batch of 256 deeplense-common images (all its steps and starts);
3. train.py on each set in bf16 (a few hundred optimizer steps each; microlensing on the basic
   feature channels, so the CPU's single-lens fits do not set the pace): samples/s of the last epoch
   (the first one includes warm-up) and the run's peak GPU memory (metrics.jsonl);
4. predict.py throughput for convnext_tiny at batch 512 on 5x41x41: the model alone (bf16 autocast,
   channels-last, untrained weights) and predict.py end to end on FITS cutouts (start-up and FITS
   reading included; the seed quotes ~500 images/s on an A100).
Results from the CUDA-marked tests (--tests-xml, pytest's JUnit file) go into the same table.
Without CUDA (and without --device cpu) it says so in one line and exits 0.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import bench_lens  # noqa: E402

# set sizes, epochs per task (a few hundred optimizer steps each at the task's default batch), predict
# and render sizes: FULL for a GPU, TINY for a smoke run
FULL = dict(n_events=2000, n_lens=3000, n_sub=700, n_sr=1500, epochs={"microlensing": 4, "lens": 8, "substructure": 10,
                                                                       "mae": 10, "superres": 3},
            predict_n=8000, predict_batch=512, render_batch=256, render_batches=8, seconds=5.0, fit_batch=256)
TINY = dict(n_events=6, n_lens=8, n_sub=3, n_sr=6, epochs={"microlensing": 1, "lens": 1, "substructure": 1, "mae": 1,
                                                           "superres": 1},
            predict_n=4, predict_batch=4, render_batch=2, render_batches=1, seconds=0.2, fit_batch=2)
TINY_MODELS = {"microlensing": ["--d-model", "16", "--n-layers", "1"], "lens": ["--model", "resnet18"],
               "substructure": ["--model", "resnet18"],
               "mae": ["--embed-dim", "32", "--depth", "1", "--num-heads", "2", "--decoder-embed-dim", "16",
                       "--decoder-depth", "1", "--decoder-num-heads", "2"],
               "superres": ["--sr-features", "8", "--sr-blocks", "1"]}


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--device", default="cuda")
    p.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--tests-xml", default=None, help="JUnit XML of the CUDA-marked tests")
    p.add_argument("--work", default=None, help="folder for the simulated sets (default: a temporary one)")
    p.add_argument("--tiny", action="store_true", help="every step on a few samples (a smoke run, e.g. on a CPU)")
    return p


def run(cmd, log):
    """Run a stage script (with $PY, default this interpreter); its output goes to the log, and a
    failure stops the check with its tail."""
    r = subprocess.run([os.environ.get("PY", sys.executable), *cmd], cwd=ROOT, capture_output=True, text=True)
    log.write(f"$ python {' '.join(cmd)}\n{r.stdout}{r.stderr}\n")
    log.flush()
    if r.returncode != 0:
        raise SystemExit(f"gpu_check: {' '.join(cmd[:3])} ... failed:\n{r.stderr[-3000:]}")
    return r.stdout


def simulate_sets(work, device, size, log, workers):
    """Returns ({task: data path}, {what: rate}) for the simulator runs."""
    workers = str(workers)
    sets, rates = {}, {}
    n = str(size["n_events"])
    out = run(["simulate.py", "--task", "microlensing", "--n-flat", n, "--n-pspl", n, "--n-binary", n,
                  "--num-workers", workers, "--seed", "1", "--no-progress", "--output", f"{work}/ml.h5"], log)
    rates[f"simulate.py microlensing (baseline, {workers} CPU workers), light curves/s"] = float(
        re.search(r"\((\d+) events/s", out).group(1))
    sets["microlensing"] = f"{work}/ml.h5"
    for task, config, counts, fmt, key in (
            ("lens", "lsst", ["--n-lens", str(size["n_lens"]), "--n-nonlens", str(size["n_lens"])], "h5", "lens.h5"),
            ("substructure", "deeplense-model1", ["--n-per-class", str(size["n_sub"])], "npy", "sub"),
            ("superres", None, ["--n", str(size["n_sr"])], "npy", "sr")):
        out = run(["simulate.py", "--task", task, *(["--config", config] if config else []), *counts,
                      "--format", fmt, "--device", device, "--seed", "1", "--no-progress", "--output",
                      f"{work}/{key}"], log)
        rates[f"simulate.py {task} ({config or 'superres pairs'}, {device}, writing included), images/s"] = float(
            re.search(r"\((\d+) images/s\)", out).group(1))
        sets[task] = f"{work}/{key}"
    sets["mae"] = sets["substructure"]
    return sets, rates


def render_throughput(device, batch, n_batches):
    """Images/s of scene sampling + rendering (noise included, no writing) per configuration."""
    from physics.strong import render, scenes
    rates = {}
    for name in ("deeplense-model1", "lsst"):
        cfg = scenes.CONFIGS[name]
        renderer = render.Renderer(cfg, device, torch.float32)
        gen, noise = torch.Generator().manual_seed(0), torch.Generator(device).manual_seed(1)
        labels = torch.arange(batch) % len(cfg.classes)

        def one():
            scene, params = scenes.sample(cfg, labels, gen)
            images = renderer.render(scene, params, noise)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return images
        one()  # warm-up
        start = time.perf_counter()
        for _ in range(n_batches):
            one()
        rates[f"render {name} ({cfg.size}x{cfg.size}, batch {batch}, {device}), images/s"] = \
            batch * n_batches / (time.perf_counter() - start)
    return rates


def fit_throughput(device, batch):
    """Images/s of the smooth-lens fit behind --input-kind residual (physics.strong.fit.fit_smooth,
    its full steps and starts) on deeplense-common images."""
    from physics.strong import fit, render, scenes
    cfg = scenes.CONFIGS["deeplense-common"]
    scene, params = scenes.sample(cfg, torch.arange(batch) % 3, torch.Generator().manual_seed(0))
    images = render.Renderer(cfg, dtype=torch.float64).render(scene, params, torch.Generator().manual_seed(1))
    images = images["images"][:, 0].to(device)
    start = time.perf_counter()
    fit.fit_smooth(images, cfg.pixel_scale, 0.2)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {f"smooth-lens fit ({cfg.size}x{cfg.size}, batch {batch}, {device}), images/s":
            batch / (time.perf_counter() - start)}


def train_all(sets, work, args, size, log):
    rows = []
    for task in ("microlensing", "lens", "substructure", "mae", "superres"):
        extra = ["--features", "basic", "--truncate-augment", "0"] if task == "microlensing" else []
        if args.tiny:
            extra += TINY_MODELS[task] + ["--batch-size", "4"]
        name = f"gpu_{task}"
        run(["train.py", "--task", task, "--data", sets[task], "--output", f"{work}/runs", "--experiment-name", name,
             "--epochs", str(size["epochs"][task]), "--amp", args.amp, "--device", args.device, "--no-progress",
             "--cache-dir", work, *extra], log)
        run_dir = f"{work}/runs/{name}"
        metrics = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
        config = json.load(open(f"{run_dir}/config.json"))
        n_train = len(np.load(f"{run_dir}/split.npz")["train"])
        steps = math.ceil(n_train / config["batch_size"]) * len(metrics)
        rows.append(dict(task=task, model=config.get("model"), batch=config["batch_size"], amp=config["amp"],
                         epochs=len(metrics), steps=steps, samples_per_s=metrics[-1]["samples_per_s"],
                         peak_mem_mib=metrics[-1].get("peak_mem_mib"), train_loss=metrics[-1]["train_loss"]))
        print(f"  train {task:13s} {rows[-1]['samples_per_s']:10,.0f} samples/s, {steps} steps", flush=True)
    return rows


def test_results(path):
    """{test id: outcome} from a JUnit XML file."""
    if not path or not os.path.isfile(path):
        return {}
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "FAILED"
            elif child.tag == "skipped":
                outcome = "skipped"
        out[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return out


def write_report(out_dir, report):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    lines = [f"# GPU check: {report['machine']['device_name']}", "",
             f"torch {report['machine']['torch']}, CUDA {report['machine']['cuda']}, flash-attn "
             f"{report['machine']['flash_attn']}, {report['machine']['cpus']} CPU cores; {report['date']}", ""]
    if report["tests"]:
        counts = {k: sum(v == k for v in report["tests"].values()) for k in ("passed", "FAILED", "skipped")}
        lines += [f"CUDA-marked tests: {counts['passed']} passed, {counts['FAILED']} failed, "
                  f"{counts['skipped']} skipped", ""]
        lines += [f"- {name}: {outcome}" for name, outcome in report["tests"].items() if outcome != "passed"] + [""]
    lines += ["| task | model | batch | amp | steps | samples/s | peak GPU memory (MiB) |",
              "|---|---|---|---|---|---|---|"]
    for r in report["training"]:
        mem = f"{r['peak_mem_mib']:,.0f}" if r["peak_mem_mib"] is not None else "-"
        lines.append(f"| {r['task']} | {r['model']} | {r['batch']} | {r['amp']} | {r['steps']} | "
                     f"{r['samples_per_s']:,.0f} | {mem} |")
    lines += ["", "| throughput | value |", "|---|---|"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in report["throughput"].items()]
    with open(os.path.join(out_dir, "gpu_check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def main(args):
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check")
        return 0
    size = TINY if args.tiny else FULL
    os.makedirs(args.out, exist_ok=True)
    try:
        import flash_attn
        flash = flash_attn.__version__
    except ImportError:
        flash = "not installed (PyTorch SDPA fallback)"
    cuda = args.device.startswith("cuda")
    machine = dict(device=args.device, device_name=torch.cuda.get_device_name() if cuda else platform.processor()
                   or "cpu", torch=torch.__version__, cuda=torch.version.cuda, flash_attn=flash, cpus=os.cpu_count(),
                   bf16=torch.cuda.is_bf16_supported() if cuda else None)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.work) as work, open(os.path.join(args.out, "gpu_check.log"), "w") as log:
        print(f"gpu_check on {machine['device_name']}: simulating the sets", flush=True)
        sets, throughput = simulate_sets(work, args.device, size, log,
                                         1 if args.tiny else max(1, min(16, os.cpu_count() or 1)))
        throughput.update(render_throughput(args.device, size["render_batch"], size["render_batches"]))
        throughput.update(fit_throughput(args.device, size["fit_batch"]))
        print("training each task", flush=True)
        training = train_all(sets, work, args, size, log)
        print("predict throughput", flush=True)
        model = "resnet18" if args.tiny else "convnext_tiny"
        dev = torch.device(args.device)
        inference = bench_lens.inference([model], [size["predict_batch"]], size["seconds"], dev)
        throughput[f"{model} forward, batch {size['predict_batch']}, bf16 autocast channels-last, images/s"] = \
            inference[(model, size["predict_batch"], "bf16 autocast CL")]
        throughput[f"predict.py {model}, batch {size['predict_batch']}, {size['predict_n']} FITS objects, "
                   "bf16, end to end, images/s"] = bench_lens.predict_end_to_end(
            model, size["predict_n"], size["predict_batch"], 1, "bf16", args.device, warm=not args.tiny)
    report = dict(date=time.strftime("%Y-%m-%d %H:%M"), machine=machine, seconds=time.perf_counter() - start,
                  tests=test_results(args.tests_xml), training=training, throughput=throughput)
    print(write_report(args.out, report))
    print(f"\nwrote {args.out}/gpu_check.json and gpu_check.md in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
