"""Lens-finding benchmarks: cached loader samples/s, inference images/s, predict.py end to end.

    python bench/bench_lens.py                                  # all parts, 2 threads
    python bench/bench_lens.py --parts loader --threads 1       # per core
    python bench/bench_lens.py --parts inference --models convnext_tiny resnet18
    python bench/bench_lens.py --parts predict --n 8000         # predict.py on FITS cutouts, no TTA

loader: batches gathered by random index from a packed (N, 5, 41, 41) float32 array mapped
from the RAM cache, normalised and augmented (8 flips/rotations, shifts, noise) on the device,
the way train.py's fetch does. inference: forward passes of an untrained model on 5x41x41 in
fp32 / bf16 and NCHW / channels-last. predict: the whole command (start-up, ingestion of the
FITS files, inference, CSV) on a run directory made from an untrained model, timed from outside.
--device cuda gives the GPU figures (inference and predict.py; the loader stays on the CPU);
--tiny runs every part on a few objects in seconds (the test suite runs it, so the script cannot
rot unnoticed).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.cache import SharedArrays  # noqa: E402
from engine.distributed import DistInfo  # noqa: E402
from models import create_model  # noqa: E402
from models.timm_classifier import native_input_size  # noqa: E402
from tasks import TrainData  # noqa: E402
from tasks import lens  # noqa: E402


def loader(n, batch, seconds, cache_dir):
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (n, 5, 41, 41)).astype(np.float32)
    arrays = SharedArrays("lensing_bench_loader", lambda: {"images": images, "labels": rng.integers(0, 2, n),
                                                           "is_test": np.zeros(n, bool)}, DistInfo(), cache_dir)
    data = TrainData(arrays, np.asarray(arrays["labels"]), {"shape": (5, 41, 41)})
    stats = {"norm": "standardize"}
    rows = []
    for name, aug, shift, noise in (("gather + normalise", "none", 0, 0.0), ("+ D4", "d4", 0, 0.0),
                                    ("+ D4, shifts 2 px, noise", "d4", 2, 0.1)):
        args = argparse.Namespace(augment=aug, max_shift=shift, noise=noise)
        fetch = lens.make_fetch(data, stats, args, torch.device("cpu"), train=True)
        order = rng.permutation(n)
        done, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            idx = order[i:i + batch] if i + batch <= n else order[:batch]
            i = (i + batch) % n
            x, y = fetch(idx)
            done += len(y)
        rows.append((name, done / (time.perf_counter() - start)))
    arrays.remove()
    print(f"\ncached loader, batch {batch}, {n} objects of 5x41x41 float32 ({images.nbytes / 2**20:.0f} MiB):")
    for name, rate in rows:
        print(f"  {name:28s} {rate:10,.0f} samples/s")
    return dict(rows)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inference(models, batches, seconds, device):
    """Images/s of forward passes; returns {(model, batch, variant): images/s}."""
    variants = (("fp32 NCHW", torch.float32, False, False), ("fp32 CL", torch.float32, True, False),
                ("bf16 autocast CL", torch.float32, True, True), ("bf16 CL", torch.bfloat16, True, False))
    print(f"\ninference on {device}, 5x41x41, untrained weights, no TTA (images/s):")
    print(f"  {'model':24s} {'batch':>5s} " + " ".join(f"{v[0]:>17s}" for v in variants))
    figures = {}
    for name in models:
        model = create_model("timm", backbone=name, in_chans=5, input_size=native_input_size(name, 41)).eval()
        for batch in batches:
            x = torch.randn(batch, 5, 41, 41, device=device)
            for label, dtype, cl, autocast in variants:
                fmt = torch.channels_last if cl else torch.contiguous_format
                net = model.to(device=device, dtype=dtype, memory_format=fmt)
                xi = x.to(dtype).contiguous(memory_format=fmt)
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    net(xi)  # warm-up: kernels chosen, memory allocated
                    sync(device)
                    done, start = 0, time.perf_counter()
                    while time.perf_counter() - start < seconds:
                        net(xi)
                        done += batch
                        if done % (8 * batch) == 0:
                            sync(device)
                    sync(device)
                figures[(name, batch, label)] = done / (time.perf_counter() - start)
            print(f"  {name:24s} {batch:5d} " + " ".join(f"{figures[(name, batch, v[0])]:17,.0f}" for v in variants),
                  flush=True)
    return figures


def predict_end_to_end(model_name, n, batch, tta, amp, device="auto", warm=True):
    """predict.py on n objects of 5 FITS files each, timed from outside; returns images/s."""
    from data.lens_images import FitsTemplate
    from engine.checkpoint import save_checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "test")
        os.makedirs(root)
        templates = {b: FitsTemplate(b, (41, 41)) for b in "grizy"}
        rng = np.random.default_rng(1)
        for i in range(n):
            for b in "grizy":
                templates[b].write(os.path.join(root, f"D1_N{i:07d}_{b}.fits"), i,
                                   rng.normal(0, 1, (41, 41)).astype(np.float32))
        kwargs = dict(backbone=model_name, in_chans=5, n_outputs=1, input_size=native_input_size(model_name, 41),
                      drop_rate=0.0)
        run = os.path.join(tmp, "run")
        os.makedirs(run)
        save_checkpoint({"model": create_model("timm", **kwargs).state_dict(), "config": {"task": "lens"},
                         "model_name": "timm", "model_kwargs": kwargs, "task": "lens", "epoch": 0,
                         "stats": {"norm": "standardize", "input_size": kwargs["input_size"], "shape": [5, 41, 41],
                                   "bands": list("grizy")}}, os.path.join(run, "best.pt"))
        cmd = [sys.executable, "predict.py", "--run-dirs", run, "--test-root", root, "--out-csv",
               os.path.join(tmp, "sub.csv"), "--batch-size", str(batch), "--tta", str(tta), "--amp", amp,
               "--device", str(device), "--no-progress"]
        if warm:  # warm the page cache and imports
            subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        seconds = time.perf_counter() - start
    print(f"\npredict.py end to end on {device}: {model_name}, {n} objects (5 FITS files each), batch {batch}, "
          f"TTA x{tta}, {amp}: {seconds:.1f} s = {n / seconds:,.0f} images/s (start-up included)", flush=True)
    return n / seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", default=["loader", "inference", "predict"],
                   choices=["loader", "inference", "predict"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="inference and predict.py (the loader part stays on the CPU)")
    p.add_argument("--models", nargs="+", default=["convnext_tiny", "resnet18", "efficientnet_b0",
                                                   "mobilenetv3_small_100"])
    p.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--n", type=int, default=8000, help="objects for the end-to-end predict.py run")
    p.add_argument("--predict-batch", type=int, default=256)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--tiny", action="store_true", help="every part on a few objects, in seconds (a smoke run)")
    args = p.parse_args(argv)
    if args.tiny:
        args.models, args.batches, args.n, args.predict_batch, args.seconds = ["resnet18"], [4], 8, 4, 0.2
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the predict.py subprocess
    print(f"{args.threads} thread(s); torch {torch.__version__}; CPU AMX: "
          f"{getattr(torch.cpu, '_is_amx_tile_supported', lambda: False)()}")
    if "loader" in args.parts:
        loader(512 if args.tiny else 20000, 64 if args.tiny else 256, args.seconds, args.cache_dir)
    if "inference" in args.parts:
        inference(args.models, args.batches, args.seconds, device)
    if "predict" in args.parts:
        for amp in ("fp32",) if args.tiny else ("fp32", "bf16"):
            predict_end_to_end("resnet18" if args.tiny else "convnext_tiny", args.n, args.predict_batch, 1, amp,
                               device, warm=not args.tiny)


if __name__ == "__main__":
    main()
