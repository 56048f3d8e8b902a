"""Training benchmarks: samples/s per model, and memory of multi-process runs with the RAM cache.

    python bench/bench_train.py --parts throughput                 # both models, d=64, 4 layers
    python bench/bench_train.py --parts memory --data data.h5      # torchrun 1, 2, 4 processes
    python bench/bench_train.py --tiny --data data.h5              # both parts in seconds (the tests run it)

Throughput: forward + backward + AdamW step on random (B, T, 4) inputs at the default grid
(T = 864, 2-hour bins), after warm-up. Memory: proportional set size (PSS: shared pages are
split between the processes that map them, so the node's total is not overcounted) summed over
the workers, sampled while they train, next to the size of the cached features.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from models import create_model, list_models  # noqa: E402


def throughput(name, device, batch, T, steps, amp):
    torch.manual_seed(0)
    model = create_model(name, d_model=64, n_layers=4, dropout=0.1).to(device)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(batch, T, 4, device=device)
    x[..., 3] = 1.0
    y = torch.randint(0, 3, (batch,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[amp]

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=amp != "fp32"):
            loss = torch.nn.functional.nll_loss(model(x)["log_probs"], y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def memory(data, nprocs, epochs):
    out_dir = tempfile.mkdtemp()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nprocs),
           os.path.join(ROOT, "train.py"), "--data", data, "--output", out_dir, "--epochs", str(epochs),
           "--batch-size", "32", "--no-progress", "--cache-dir", out_dir]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    peak, cache_bytes = 0, 0
    while proc.poll() is None:
        workers = children(proc.pid)
        peak = max(peak, sum(pss_kib(p) for p in workers))
        for root, _, files in os.walk(out_dir):
            if "lensing_cache_" in root:
                cache_bytes = max(cache_bytes, sum(os.path.getsize(os.path.join(root, f)) for f in files))
        time.sleep(0.2)
    log = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"torchrun with {nprocs} processes failed:\n{log[-2000:]}")
    return peak / 1024, cache_bytes / 2**20


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", default=["throughput", "memory"], choices=("throughput", "memory"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=864)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--amp", default="fp32", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--data", default=None, help="HDF5 file for the memory part")
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--tiny", action="store_true",
                   help="a smoke run in seconds: 2 steps of batch 4 on T=64, memory with 1 process (if --data)")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.batch_size, args.seq_len, args.nprocs = 2, 4, 64, [1]
        args.parts = [part for part in args.parts if part != "memory" or args.data]
    device = torch.device(args.device)
    if "throughput" in args.parts:
        print(f"training throughput on {device} ({torch.get_num_threads()} threads), batch {args.batch_size}, "
              f"T={args.seq_len}, d=64, 4 layers, {args.amp}")
        rates = {}
        for name in list_models("light_curve"):
            rates[name] = throughput(name, device, args.batch_size, args.seq_len, args.steps, args.amp)
            print(f"  {name:18s} {rates[name]:9.1f} samples/s")
        if "cnn_gru" in rates:
            for name, r in rates.items():
                if name != "cnn_gru":
                    print(f"  {name} / cnn_gru = {r / rates['cnn_gru']:.1f}x")
    if "memory" in args.parts:
        if not args.data:
            raise SystemExit("--data is needed for the memory part")
        print(f"peak memory of torchrun runs on {args.data} (PSS summed over workers)")
        for n in args.nprocs:
            total, cache = memory(args.data, n, args.epochs)
            print(f"  {n} process(es): {total:8.0f} MiB total, cached features {cache:.0f} MiB "
                  f"(one copy per node), {total / n:.0f} MiB per process")


if __name__ == "__main__":
    main()
