"""Benchmark of the strong-lensing image simulator (`physics/strong`) against lenstronomy on
the same scenes; prints a table of figures, asserts nothing.

    PYTHONPATH=. python bench/bench_lens_simulate.py                     # throughput, memory, agree (~5 min, 2 cores)
    python bench/bench_lens_simulate.py --parts throughput --cases lsst-lens --n-images 1024
    python bench/bench_lens_simulate.py --parts profile --cases model1-sphere   # where one render's time goes
    python bench/bench_lens_simulate.py --device cuda --batch 1024 --micro-batch 256   # the GPU figure
    python bench/bench_lens_simulate.py --json bench_lens.json           # also save the figures
    python bench/bench_lens_simulate.py --tiny                           # every part on a few images (the tests run it)

Cases (scenes from `physics.strong.scenes.sample`, float32 rendering, batched):
- model1-sphere: deeplense-model1, every image of class sphere (SIE + shear + 25 point-mass
  subhalos, Sersic source, 150x150 at 0.05", Gaussian PSF 0.087", Gaussian + Poisson noise);
- lsst-lens: lsst, every image a lens (grizy 41x41 at 0.2", 3x3 supersampling, Moffat PSF per
  image and band, lens light, 4 field galaxies, 3 source clumps, sky + Poisson + read noise);
- lsst-mixed: lsst with random labels (our figure only; non-lenses carry ring / spiral / arc
  look-alikes that the lenstronomy side does not model, so the head-to-head uses lsst-lens).
lenstronomy side: model1, one ImageModel (SIE + SHEAR + 25 POINT_MASS, SERSIC_ELLIPSE source,
GAUSSIAN PSF); lsst, one ImageModel per band (SIE + SHEAR; SERSIC_ELLIPSE + 3 GAUSSIAN clumps;
lens light and 4 field galaxies SERSIC_ELLIPSE; PIXEL PSF with our Moffat kernel, replaced per
image and band, which is ~10% of its time), supersampling as ours.

Parts:
- throughput: images/s of ours (eager and torch.compile'd, 1 and 2 threads), render only
  and scene sampling + render, against lenstronomy on the same scene rows, converted to
  lenstronomy keyword arguments before timing (as our sampling is timed apart); the
  lenstronomy side adds the same noise model in numpy. 1 core: ours eager, ours compiled
  and lenstronomy run in one process, one batch (lenstronomy: a chunk of images) each in
  turn, so a slow spell of the host hits all alike. 2 cores: ours with 2 threads;
  lenstronomy (single-threaded numpy) as 2 processes started together, rates summed.
  Images/s from the median step. Ratio = ours / lenstronomy at the same number of cores.
  Compile s = the first call's time less a steady call's (cold inductor cache for the first
  process of each case; a later one may hit it; the cache key includes the thread count).
  The `others` column is the mean number of cores other processes kept busy meanwhile.
- memory: peak memory per image: CPU, the growth of peak RSS (VmHWM, reset before the
  call) over one render call of --mem-batches images, each in a fresh process; per image =
  the slope between the two sizes. CUDA: torch.cuda.max_memory_allocated likewise. Measured
  on the first case of each configuration (the buffers do not depend on the labels).
- agree: noise-free images of ours (float64) against lenstronomy's for a few scenes
  (relative L1), to show the two sides draw the same scenes.
- profile: one render call of --batch images, 1 thread, split into stages, and the top ops.

lenstronomy (1.14) is a benchmark-only dependency, imported only where needed; without it
the lenstronomy rows, ratios and the agree part are skipped with a message. Every
measurement runs in its own subprocess (thread count, inductor cache and peak RSS stay
isolated), with OMP_NUM_THREADS set to its thread count.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from physics.strong import render, scenes  # noqa: E402
from physics.strong.instrument import convolve  # noqa: E402
from bench.lenstronomy_scenes import LenstronomyCase, have_lenstronomy, moffat_kernels  # noqa: E402

CASES = {  # name: (config, labels, description)
    "model1-sphere": ("deeplense-model1", "ones", "deeplense-model1 sphere (25 subhalos), 150x150"),
    "lsst-lens": ("lsst", "ones", "lsst grizy lenses, 41x41 ss3"),
    "lsst-mixed": ("lsst", "mixed", "lsst grizy mixed labels"),
}
LENSTRONOMY_CASES = ("model1-sphere", "lsst-lens")
LENSTRONOMY_PER_CORE_NOTE = 90.0  # images/s the issue quotes for a 150x150 SIE + shear + 20 subhalo scene
TARGET_RATIO = 20.0


# --------------------------------------------------------------------------- scenes
def case_scene(case, n, seed, offset=0):
    """Scene rows offset..offset+n of the case's fixed scene stream (same seed, same rows on
    both sides). Scenes are drawn in blocks of 64 so any slice is reproducible."""
    cfg_name, label_mode, _ = CASES[case]
    cfg = scenes.CONFIGS[cfg_name]
    block = 64
    first, last = offset // block, (offset + n - 1) // block
    parts = []
    for b in range(first, last + 1):
        gen = torch.Generator().manual_seed(seed * 100003 + b)
        scene, params = scenes.sample(cfg, labels_for(cfg, label_mode, block, gen), gen)
        parts.append(scene)
    scene = {k: torch.cat([p[k] for p in parts])[offset - first * block:offset - first * block + n] for k in parts[0]}
    return cfg, scene


def labels_for(cfg, mode, n, gen):
    if mode == "ones":
        return torch.ones(n, dtype=torch.long)
    return torch.randint(0, len(cfg.classes), (n,), generator=gen)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- ours
class Ours:
    """One configuration of our renderer; step() samples and renders one batch, timing both."""

    def __init__(self, spec, compiled):
        cfg_name, self.label_mode, _ = CASES[spec["case"]]
        self.cfg = scenes.CONFIGS[cfg_name]
        self.device = torch.device(spec["device"])
        self.renderer = render.Renderer(self.cfg, device=self.device, dtype=torch.float32, compile=compiled,
                                        micro_batch=spec["micro_batch"])
        self.noise_gen = torch.Generator(self.device).manual_seed(1)
        self.gen = torch.Generator().manual_seed(spec["seed"])  # the same scenes for eager and compiled
        self.batch, self.compiled = spec["batch"], compiled
        self.sample_s, self.render_s = [], []

    def step(self):
        t0 = time.perf_counter()
        scene, params = scenes.sample(self.cfg, labels_for(self.cfg, self.label_mode, self.batch, self.gen), self.gen)
        t1 = time.perf_counter()
        self.renderer.render(scene, params, self.noise_gen)
        sync(self.device)
        t2 = time.perf_counter()
        self.sample_s.append(t1 - t0)
        self.render_s.append(t2 - t1)
        return t2 - t0

    def reset(self):
        self.sample_s, self.render_s = [], []

    def result(self, first):
        render_med = float(np.median(self.render_s))
        total_med = float(np.median(np.add(self.render_s, self.sample_s)))
        return dict(n=self.batch * len(self.render_s), render_ips=self.batch / render_med, total_ips=self.batch / total_med,
                    mean_render_ips=self.batch * len(self.render_s) / sum(self.render_s),
                    compile_s=max(0.0, first - total_med) if self.compiled else None)


class Lenstronomy:
    """lenstronomy on the case's scene rows; step() renders the next `chunk` images."""

    def __init__(self, spec, n_steps):
        _, scene = case_scene(spec["case"], spec["n_lenstronomy"], spec["seed"], spec.get("offset", 0))
        self.lc = LenstronomyCase(spec["case"], CASES[spec["case"]][0], scene)
        self.n = spec["n_lenstronomy"]
        self.chunk = max(1, -(-self.n // n_steps))
        self.rng = np.random.default_rng(spec.get("offset", 0))
        self.next, self.times = 0, []

    def step(self):
        t = time.perf_counter()
        for _ in range(self.chunk):
            self.lc.render(self.next % self.n, self.rng)
            self.next += 1
        self.times.append(time.perf_counter() - t)
        return self.times[-1]

    def reset(self):
        self.times, self.lc.psf_s = [], 0.0

    def result(self, first):
        return dict(n=self.chunk * len(self.times), render_ips=self.chunk / float(np.median(self.times)),
                    mean_render_ips=self.chunk * len(self.times) / sum(self.times),
                    psf_share=self.lc.psf_s / sum(self.times), compile_s=None)


def head_to_head(spec):
    """Our eager and compiled renderers (and lenstronomy, where asked) in one process, one batch
    (or chunk of images) each in turn, so a slow spell of the host hits every implementation
    alike; images/s from the median step. The first call of each is the warm-up."""
    n_steps = max(1, spec["n"] // spec["batch"])
    impls = {f"ours {'compiled' if c else 'eager'}": Ours(spec, c) for c in spec["compile"]}
    if spec.get("lenstronomy"):
        impls["lenstronomy"] = Lenstronomy(spec, n_steps)
    first = {name: impl.step() for name, impl in impls.items()}
    for impl in impls.values():
        impl.reset()
    for _ in range(n_steps):
        for impl in impls.values():
            impl.step()
    return {name: impl.result(first[name]) for name, impl in impls.items()}


def _vm(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # MiB
    return math.nan


def _setup(spec):
    """(config, label mode, device, renderer, noise generator, scene generator) of a worker spec."""
    cfg_name, label_mode, _ = CASES[spec["case"]]
    cfg = scenes.CONFIGS[cfg_name]
    device = torch.device(spec["device"])
    renderer = render.Renderer(cfg, device=device, dtype=torch.float32, compile=spec["compile"],
                               micro_batch=spec["micro_batch"])
    return cfg, label_mode, device, renderer, torch.Generator(device).manual_seed(1), \
        torch.Generator().manual_seed(spec["seed"])


def ours_memory(spec):
    """Peak memory growth (MiB) over one render call of spec['batch'] images."""
    cfg, label_mode, device, renderer, noise_gen, gen = _setup(spec)
    # warm-up (compiles) on one micro-batch, so the measured call allocates only what a batch needs
    scene, params = scenes.sample(cfg, labels_for(cfg, label_mode, spec["micro_batch"], gen), gen)
    renderer.render(scene, params, noise_gen)
    scene, params = scenes.sample(cfg, labels_for(cfg, label_mode, spec["batch"], gen), gen)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = renderer.render(scene, params, noise_gen)
        sync(device)
        growth = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        base = _vm("VmRSS")
        out = renderer.render(scene, params, noise_gen)
        growth = _vm("VmHWM") - base
    first = next(iter(out.values()))
    return dict(batch=spec["batch"], growth_mb=growth, output_mb=first.numel() * first.element_size() / 2**20)


def ours_profile(spec):
    """Stage timings of one render call (wrappers around render.py's module functions and the
    renderer's ray-shooting / PSF calls; `other` is indexing and glue), then top torch ops."""
    cfg, label_mode, device, renderer, noise_gen, gen = _setup(spec)
    batch = spec["batch"]
    scene, params = scenes.sample(cfg, labels_for(cfg, label_mode, batch, gen), gen)
    renderer.render(scene, params, noise_gen)  # warm-up / compile
    spent = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            sync(device)
            t = time.perf_counter()
            out = fn(*a, **k)
            sync(device)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
            return out
        return wrapper
    # leaf functions render.py calls by module-level name (whichever exist in this version), and
    # the renderer's ray-shooting callable; none of them calls another
    stages = [("ray shooting + light (Renderer._sb)", renderer, "_sb"), ("pixelise", render, "pixelise"),
              ("PSF kernels (Moffat)", render, "moffat_psf"), ("PSF kernels (Gaussian)", render, "gaussian_psf"),
              ("PSF kernels (Gaussian 1-D)", render, "gaussian_psf_1d"), ("FFT convolution", render, "convolve"),
              ("separable convolution", render, "convolve_separable"), ("noise (add_noise)", render, "add_noise"),
              ("arc S/N", render, "_arc_snr"), ("scaling", render, "_scale")]
    saved = []
    for name, owner, attr in stages:
        if hasattr(owner, attr):
            saved.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, timed(name, getattr(owner, attr)))
    scene, params = scenes.sample(cfg, labels_for(cfg, label_mode, batch, gen), gen)
    t = time.perf_counter()
    renderer.render(scene, params, noise_gen)
    sync(device)
    total = time.perf_counter() - t
    for owner, attr, fn in saved:
        setattr(owner, attr, fn)
    rows = [(k, v) for k, v in spent.items()]
    rows.append(("other (indexing, glue, magnification)", total - sum(spent.values())))
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    scene, params = scenes.sample(cfg, labels_for(cfg, label_mode, batch, gen), gen)
    with profile(activities=acts) as prof:
        renderer.render(scene, params, noise_gen)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=50)
    return dict(batch=batch, total_s=total, stages=rows, ops=table)


def lenstronomy_throughput(spec):
    """One lenstronomy process of the multi-process figure: waits for its siblings, then renders."""
    n_steps = max(1, spec["n_lenstronomy"] // 8)
    impl = Lenstronomy(spec, n_steps)
    impl.step()  # warm-up
    impl.reset()
    open(spec["ready"], "w").close()
    while not os.path.exists(spec["go"]):
        time.sleep(0.005)
    start = time.time()
    for _ in range(n_steps):
        impl.step()
    out = impl.result(None)
    out.update(start=start, end=start + sum(impl.times))
    return out


def agree(spec):
    """Relative L1 difference of noise-free images, ours (float64, eager) vs lenstronomy."""
    cfg, scene = case_scene(spec["case"], spec["n"], spec["seed"])
    lc = LenstronomyCase(spec["case"], CASES[spec["case"]][0], scene)
    r = render.Renderer(cfg, dtype=torch.float64)
    src, feature, rest = r.shoot(scene, cfg.size, cfg.pixel_scale, cfg.supersample)
    if cfg.name == "deeplense-model1":
        fwhm = torch.full((len(src), 1), cfg.psf_fwhm[0], dtype=torch.float64)
        ours = r.blur(src, scene, fwhm, cfg.pixel_scale, cfg.psf_fwhm)
    else:
        c = len(cfg.bands)
        parts = [src * scene["src_flux"][:, :, None, None]] + [p for p in (feature, rest) if p is not None]
        blurred = convolve(torch.cat(parts, 1), moffat_kernels(scene, cfg, c).repeat(1, len(parts), 1, 1))
        ours = sum(blurred[:, j * c:(j + 1) * c] for j in range(len(parts)))
    ours = ours.numpy()
    rel = [float(np.abs(ours[i] - lc.noise_free(i)).sum() / np.abs(lc.noise_free(i)).sum()) for i in range(len(ours))]
    flux = [float(ours[i].sum() / lc.noise_free(i).sum()) for i in range(len(ours))]
    return dict(n=len(rel), rel_l1_median=float(np.median(rel)), rel_l1_max=float(np.max(rel)),
                flux_ratio_median=float(np.median(flux)))


WORKERS = {"h2h": head_to_head, "memory": ours_memory, "profile": ours_profile,
           "lenstronomy": lenstronomy_throughput, "agree": agree}


def worker(spec):
    torch.set_num_threads(spec.get("threads", 1))
    out = WORKERS[spec["kind"]](spec)
    print("RESULT " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- driver
def cpu_snapshot():
    """(wall s, CPU s busy on the whole machine, CPU s of this process and its waited-for children)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    busy = (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")
    own = sum(getattr(resource.getrusage(w), a) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for a in ("ru_utime", "ru_stime"))
    return time.monotonic(), busy, own


def others_cores(before):
    """Mean number of cores that other processes (and the hypervisor's steal) kept busy since `before`."""
    after = cpu_snapshot()
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / max(after[0] - before[0], 1e-9)


class Runner:
    def __init__(self, args):
        self.args = args
        self.cache = args.inductor_cache or tempfile.mkdtemp(prefix="bench_lens_inductor_")

    def env(self, spec):
        threads = str(spec.get("threads", 1))
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
                   TORCHINDUCTOR_CACHE_DIR=self.cache, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if spec["kind"] == "memory":
            # glibc: every block of 64 KiB or more is its own mapping, returned to the system when freed,
            # so the resident set follows the live tensors and the peak is not hidden by reused heap
            env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        return env

    def start(self, spec):
        cmd = [os.environ.get("PY", sys.executable), os.path.abspath(__file__), "--worker", json.dumps(spec)]
        return subprocess.Popen(cmd, cwd=ROOT, env=self.env(spec), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    @staticmethod
    def finish(proc, spec):
        out, err = proc.communicate()
        for line in out.splitlines()[::-1]:
            if line.startswith("RESULT "):
                return json.loads(line[7:])
        raise RuntimeError(f"worker {spec} failed (exit {proc.returncode}):\n{err[-3000:]}")

    def run(self, **spec):
        spec = dict(seed=self.args.seed, device=self.args.device, micro_batch=self.args.micro_batch, **spec)
        before = cpu_snapshot()
        out = self.finish(self.start(spec), spec)
        out["others"] = others_cores(before)
        return out

    def run_parallel(self, specs):
        """Processes that wait for each other after set-up, then time the same wall-clock span."""
        with tempfile.TemporaryDirectory() as tmp:
            go = os.path.join(tmp, "go")
            before = cpu_snapshot()
            procs = []
            for j, spec in enumerate(specs):
                spec = dict(seed=self.args.seed, device="cpu", ready=os.path.join(tmp, f"ready{j}"), go=go, **spec)
                procs.append((self.start(spec), spec))
            while not all(os.path.exists(s["ready"]) or p.poll() is not None for p, s in procs):
                time.sleep(0.01)
            open(go, "w").close()
            out = [self.finish(p, s) for p, s in procs]
            for r in out:
                r["others"] = others_cores(before)
            return out


def fmt(v, spec="{:.1f}"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else spec.format(v)


def throughput(runner, args, rows):
    device = torch.device(args.device)
    print(f"\n== throughput: ours float32 batch {args.batch} (micro-batch {args.micro_batch}), {args.n_images} images "
          f"per row on {device}; lenstronomy {args.n_lenstronomy} images per process. 1 core: ours eager, compiled and "
          f"lenstronomy interleaved batch by batch in one process; more cores: ours with that many threads, "
          f"lenstronomy as that many processes side by side (separate runs)")
    lenst = {}
    compile_list = args.compile if "ours" in args.impls else []
    for case in args.cases:
        with_lenstronomy = case in LENSTRONOMY_CASES and args.lenstronomy and "lenstronomy" in args.impls
        for threads in ([1] if device.type == "cuda" else args.threads):
            t = time.perf_counter()
            one_core = threads == 1
            if compile_list or (one_core and with_lenstronomy):
                res = runner.run(kind="h2h", case=case, n=args.n_images, batch=args.batch, compile=compile_list,
                                 lenstronomy=one_core and with_lenstronomy, n_lenstronomy=args.n_lenstronomy,
                                 threads=threads)
                others = res.pop("others")
            else:
                res, others = {}, 0.0
            if with_lenstronomy and not one_core:
                par = runner.run_parallel([dict(kind="lenstronomy", case=case, n_lenstronomy=args.n_lenstronomy,
                                                offset=j * args.n_lenstronomy, threads=1) for j in range(threads)])
                span = max(r["end"] for r in par) - min(r["start"] for r in par)
                res["lenstronomy"] = dict(render_ips=sum(r["render_ips"] for r in par), compile_s=None,
                                          n=sum(r["n"] for r in par), mean_render_ips=sum(r["n"] for r in par) / span,
                                          psf_share=par[0]["psf_share"], others=par[0]["others"],
                                          per_process_ips=[r["render_ips"] for r in par])
            for name, r in res.items():
                is_ours = name != "lenstronomy"
                cores = "gpu" if is_ours and device.type == "cuda" else threads
                row = dict(case=case, impl=name, compiled=("compiled" in name) if is_ours else None, cores=cores,
                           others=r.pop("others", others), **r)
                row.setdefault("total_ips", None)
                rows.append(row)
                if is_ours:
                    how = f"{r['total_ips']:8.1f} with sampling"
                else:
                    lenst[(case, threads)] = r["render_ips"]
                    how = f"{'1 process' if threads == 1 else f'{threads} processes'}" + \
                        (f", {100 * r['psf_share']:.0f}% of it replacing the PSF per band" if r["psf_share"] else "")
                print(f"  {case:14s} {name:14s} {str(cores):>3s}: {r['render_ips']:8.1f} img/s render, {how} "
                      f"(mean over steps {r['mean_render_ips']:.1f}; others busy {row['others']:.2f} cores)", flush=True)
            print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    for row in rows:
        cores = 1 if row["cores"] == "gpu" else row["cores"]
        base = lenst.get((row["case"], cores))
        if row["impl"] != "lenstronomy" and base:
            row["ratio"] = row["render_ips"] / base
            row["ratio_vs"] = f"lenstronomy {cores} core{'s' if cores > 1 else ''}"


def one_case_per_config(cases):
    """{config: first case of it}: the renderer's buffers and stages do not depend on the labels."""
    measured = {}
    for case in cases:
        measured.setdefault(CASES[case][0], case)
    return measured


def memory(runner, args, rows):
    device = torch.device(args.device)
    lo, hi = args.mem_batches
    what = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM) growth"
    print(f"\n== memory: {what} over one render call of {lo} and {hi} images (fresh process each, 1 thread)")
    out = {}
    measured = one_case_per_config(args.cases)
    for case in measured.values():
        for compiled in args.compile:
            res = [runner.run(kind="memory", case=case, batch=b, compile=compiled, threads=1) for b in (lo, hi)]
            slope = (res[1]["growth_mb"] - res[0]["growth_mb"]) / (hi - lo)
            out[(case, compiled)] = slope
            print(f"  {case:14s} {'compiled' if compiled else 'eager':8s}: {res[0]['growth_mb']:8.1f} MiB at {lo}, "
                  f"{res[1]['growth_mb']:8.1f} MiB at {hi} -> {slope:.2f} MiB/image "
                  f"(output alone {res[1]['output_mb'] / hi:.3f} MiB/image)", flush=True)
    for row in rows:
        if row["impl"] != "lenstronomy":
            row["mb_per_image"] = out.get((measured[CASES[row["case"]][0]], row["compiled"]))
    if not rows:
        for (case, compiled), slope in out.items():
            rows.append(dict(case=case, impl=f"ours {'compiled' if compiled else 'eager'}", compiled=compiled,
                             cores=1, render_ips=None, total_ips=None, compile_s=None, mb_per_image=slope))
    return {f"{c} {'compiled' if k else 'eager'}": v for (c, k), v in out.items()}


def agreement(runner, args):
    print("\n== agree: noise-free images, ours (float64) vs lenstronomy on the same scene rows")
    out = {}
    for case in args.cases:
        if case not in LENSTRONOMY_CASES:
            continue
        r = runner.run(kind="agree", case=case, n=args.n_agree, threads=1)
        out[case] = r
        print(f"  {case:14s}: relative L1 median {r['rel_l1_median']:.2e}, max {r['rel_l1_max']:.2e}, "
              f"flux ours/lenstronomy {r['flux_ratio_median']:.4f} ({r['n']} scenes)")
    print("  (known differences: Sersic b_n, ours exact, lenstronomy 1.9992 n - 0.3271; model1 PSF, ours "
          "pixel-integrated, lenstronomy's GAUSSIAN type sampled)")
    return out


def profile_part(runner, args):
    out = {}
    measured = one_case_per_config(args.cases)
    for case in measured.values():
        for compiled in args.compile:
            r = runner.run(kind="profile", case=case, batch=args.batch, compile=compiled, threads=1)
            out[f"{case} {'compiled' if compiled else 'eager'}"] = r
            print(f"\n== profile: {case}, ours {'compiled' if compiled else 'eager'}, one render of {r['batch']} images, "
                  f"1 thread: {r['total_s'] * 1e3:.0f} ms ({r['batch'] / r['total_s']:.0f} img/s)")
            for name, s in r["stages"]:
                print(f"  {name:40s} {s * 1e3:8.1f} ms  {100 * s / r['total_s']:5.1f}%")
            print(r["ops"])
    return out


def print_table(rows):
    print("\n== figures (img/s from the median batch; ratio = ours render-only / lenstronomy at the same core count; "
          "compile s = first-call overhead; MB/image = peak memory slope; others = cores other processes kept busy)")
    head = f"{'case':14s} {'implementation':15s} {'cores':>5s} {'img/s render':>12s} {'img/s +sample':>13s} " \
           f"{'vs lenstr.':>10s} {'compile s':>9s} {'MB/image':>8s} {'others':>6s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case']:14s} {r['impl']:15s} {str(r['cores']):>5s} {fmt(r.get('render_ips')):>12s} "
              f"{fmt(r.get('total_ips')):>13s} {fmt(r.get('ratio'), '{:.1f}x'):>10s} {fmt(r.get('compile_s')):>9s} "
              f"{fmt(r.get('mb_per_image'), '{:.2f}'):>8s} {fmt(r.get('others'), '{:.2f}'):>6s}")
    busy = max((r.get("others") or 0.0) for r in rows)
    if busy > 0.3:
        print(f"WARNING: other processes kept up to {busy:.2f} cores busy during a row; its figures are disturbed, "
              "re-run on a quiet machine")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["throughput", "memory", "agree"],
                   choices=["throughput", "memory", "agree", "profile"])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--impls", nargs="+", default=["ours", "lenstronomy"], choices=["ours", "lenstronomy"],
                   help="throughput rows to run")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU figure; lenstronomy stays on the CPU)")
    p.add_argument("--compile", nargs="+", type=int, default=[0, 1], choices=[0, 1],
                   help="0 eager, 1 torch.compile (both by default)")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2],
                   help="torch threads for ours = processes for lenstronomy")
    p.add_argument("--n-images", type=int, default=512, help="timed images per row of ours")
    p.add_argument("--n-lenstronomy", type=int, default=96, help="timed images per lenstronomy process")
    p.add_argument("--batch", type=int, default=64, help="images per render call")
    p.add_argument("--micro-batch", type=int, default=16, help="Renderer micro_batch")
    p.add_argument("--mem-batches", nargs=2, type=int, default=[64, 256])
    p.add_argument("--n-agree", type=int, default=4)
    p.add_argument("--no-lenstronomy", dest="lenstronomy", action="store_false")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--inductor-cache", default=None,
                   help="TORCHINDUCTOR_CACHE_DIR for the workers (default: a fresh one, so compile times are cold)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true",
                   help="a smoke run in seconds: a few images per case, eager, 1 thread, every part")
    return p


def main(args):
    if args.worker:
        return worker(json.loads(args.worker))
    if args.tiny:
        args.parts, args.cases = ["throughput", "memory", "agree", "profile"], ["model1-sphere", "lsst-lens"]
        args.compile, args.threads, args.n_images, args.n_lenstronomy = [0], [1], 4, 2
        args.batch, args.micro_batch, args.mem_batches, args.n_agree = 2, 2, [2, 4], 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.lenstronomy and not have_lenstronomy():
        print("lenstronomy is NOT installed (pip install lenstronomy==1.14.2): the lenstronomy rows, ratios and the "
              "agree part are skipped")
        args.lenstronomy = False
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, python "
          f"{sys.version.split()[0]}, torch {torch.__version__}"
          + (f", lenstronomy {__import__('lenstronomy').__version__}" if args.lenstronomy else "")
          + f"; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}")
    t0 = time.perf_counter()
    runner = Runner(args)
    rows, extra = [], {}
    if "throughput" in args.parts:
        throughput(runner, args, rows)
    if "memory" in args.parts:
        extra["memory_mb_per_image"] = memory(runner, args, rows)
    if "agree" in args.parts and args.lenstronomy:
        extra["agree"] = agreement(runner, args)
    if "profile" in args.parts:
        extra["profile"] = profile_part(runner, args)
    if rows:
        print_table(rows)
        if "lsst-mixed" in args.cases:
            print("lsst-mixed: our figure only (non-lenses carry ring / spiral / arc look-alikes that the lenstronomy "
                  "side does not model; on lenses they are absent, so lsst-lens is the head-to-head).")
        best = [r for r in rows if r.get("ratio") and r["cores"] == 1]
        if best:
            top = max(best, key=lambda r: r["ratio"])
            print(f"target >= {TARGET_RATIO:.0f}x lenstronomy per core: best {top['ratio']:.1f}x ({top['case']}, "
                  f"{top['impl']}) -> {'reached' if top['ratio'] >= TARGET_RATIO else 'NOT reached'}; per case: "
                  + ", ".join(f"{r['case']} {r['impl']} {r['ratio']:.1f}x" for r in best))
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; load average at the end "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=dict(cores=os.cpu_count(), load_start=load, load_end=os.getloadavg(),
                                        torch=torch.__version__, device=args.device),
                           args={k: v for k, v in vars(args).items() if k != "worker"}, rows=rows, **extra),
                      f, indent=1, default=str)
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
