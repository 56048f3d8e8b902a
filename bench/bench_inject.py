"""Injection speed: hosts painted per second per core (`simulate.py --task lens --hosts`), for
the two cutout shapes users have: 3x64x64 (DeepLense / lens-finding-64, min-max per channel)
and 5x41x41 (LSST challenge, grizy, flux units).

    python bench/bench_inject.py              # 4 blocks of 256 hosts per shape, ~1 min on 1 core
    python bench/bench_inject.py --tiny       # one block of 16 (the tests run it)

Times the worker's whole step (`engine.injection.run_block`: symmetry and shift, measurement,
mass and source draws, ray shooting, PSF, S/N bisection, Poisson noise, rescaling) on one
thread, half lenses and half non-lenses as `simulate.py` makes them, and reports the stages'
shares. Hosts are synthetic (an elliptical Sersic-like galaxy on noise) so the figure does
not depend on files; the rate is the best of --repeats passes (others share this host).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine import injection  # noqa: E402
from physics.strong import inject, survey  # noqa: E402
from physics.strong.scenes import CONFIGS  # noqa: E402

SHAPES = {"3x64x64": ("lens-finding-64", ("g", "r", "i"), 64, "minmax-channel"),
          "5x41x41": ("lsst", ("g", "r", "i", "z", "y"), 41, "flux")}


def synthetic_hosts(n, bands, size, scaling, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    out = np.empty((n, len(bands), size, size), np.float32)
    for i in range(n):
        q, phi, r = rng.uniform(0.5, 1), rng.uniform(0, np.pi), rng.uniform(2, 5)
        x = xx * np.cos(phi) + yy * np.sin(phi)
        y = -xx * np.sin(phi) + yy * np.cos(phi)
        galaxy = np.exp(-np.sqrt(x ** 2 * q + y ** 2 / q) / r * 2.5)
        for c in range(len(bands)):
            out[i, c] = 30 * galaxy * (1 + 0.3 * c) + rng.normal(0, 1, (size, size))
    if scaling == "minmax-channel":
        lo, hi = out.min((2, 3), keepdims=True), out.max((2, 3), keepdims=True)
        out = (out - lo) / (hi - lo)
    return out


def spec_for(shape, tmp):
    config, bands, size, scaling = SHAPES[shape]
    cfg = CONFIGS[config]
    return dict(hosts_file=os.path.join(tmp, f"{shape}.npy"), base_config=config, bands=list(bands),
                pixel_scale=cfg.pixel_scale, scaling=scaling, psf=None, psf_fwhm=None, max_shift=4,
                depth=math.sqrt(cfg.depth[0] * cfg.depth[1]), min_arc_snr=10.0, seed=0)  # simulate.py's default cut


def stage_shares(spec, labels, rows):
    """Seconds in each stage for one block (the same calls run_block makes)."""
    hosts_all = torch.from_numpy(np.load(spec["hosts_file"]))
    base = CONFIGS[spec["base_config"]]
    gen = torch.Generator().manual_seed(1)
    n = len(labels)
    lensed = torch.as_tensor(labels) == 1
    times = {}
    t = time.perf_counter()
    hosts = inject.augment(hosts_all[torch.as_tensor(rows)].double(), torch.randint(0, 8, (n,), generator=gen),
                           torch.randint(-4, 5, (n, 2), generator=gen))
    times["augment"], t = time.perf_counter() - t, time.perf_counter()
    measured = inject.measure_hosts(hosts, spec["pixel_scale"])
    times["measure"], t = time.perf_counter() - t, time.perf_counter()
    survey_scene, _ = survey.sample_survey(base, torch.ones(n, dtype=torch.long), gen)
    scene = inject.draw_injection(measured, lensed, survey_scene, gen, spec["bands"], spec["min_arc_snr"])
    flux_noise, gain = inject.band_model(spec["bands"], spec["pixel_scale"], spec["depth"])
    ref = inject.reference_band(spec["bands"])
    scene.update(flux_noise=flux_noise[None], flux_noise_ref=flux_noise[ref])
    fwhm, beta = inject.psf_fwhm_draw(gen, n, spec["bands"], base.psf_fwhm)
    size = hosts.shape[-1]
    k = min(int(2 * math.ceil(2.5 * float(fwhm.max()) / spec["pixel_scale"]) + 1), size - (1 - size % 2))
    kernels = inject.moffat_kernels(fwhm, beta, spec["pixel_scale"], k)
    times["draw"], t = time.perf_counter() - t, time.perf_counter()
    arcs = inject.render_arcs(scene, (size, size), spec["pixel_scale"], base.supersample, kernels)
    times["render + PSF"], t = time.perf_counter() - t, time.perf_counter()
    unit = measured["noise"] / (flux_noise * gain)[None]
    painted, _, _ = inject.paint(hosts, arcs, scene, measured["noise"], unit, ref, gen)
    times["paint (S/N)"], t = time.perf_counter() - t, time.perf_counter()
    inject.rescale(painted, spec["scaling"])
    times["rescale"] = time.perf_counter() - t
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block", type=int, default=256, help="hosts per block (simulate.py's block size)")
    parser.add_argument("--blocks", type=int, default=4, help="blocks per pass")
    parser.add_argument("--repeats", type=int, default=2, help="passes; the best is reported")
    parser.add_argument("--n-hosts", type=int, default=200, help="distinct synthetic hosts")
    parser.add_argument("--tiny", action="store_true", help="one block of 16, one pass (the tests)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.block, args.blocks, args.repeats, args.n_hosts = 16, 1, 1, 8
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for shape, (config, bands, size, scaling) in SHAPES.items():
            spec = spec_for(shape, tmp)
            np.save(spec["hosts_file"], synthetic_hosts(args.n_hosts, bands, size, scaling))
            jobs = []
            for b in range(args.blocks):
                labels = rng.permutation(np.arange(args.block) % 2).astype(np.int8)
                jobs.append((b, labels, rng.integers(0, args.n_hosts, args.block)))
            injection.run_block(spec, jobs[0], 1, 2)  # warm-up: loads the hosts
            best = math.inf
            for _ in range(args.repeats):
                start = time.perf_counter()
                for job in jobs:
                    _, images, params = injection.run_block(spec, job, 1 + job[0], 2 + job[0])
                best = min(best, time.perf_counter() - start)
            n = args.block * args.blocks
            lensed = params["kind"] == survey.KIND_CODES["lens"]
            assert np.isfinite(images["images"]).all() and images["images"].shape[1:] == (len(bands), size, size)
            print(f"{shape} ({config}, {scaling}): {n / best:.0f} hosts/s per core "
                  f"({n} hosts in {best:.2f} s, 1 thread; last block's median arc S/N "
                  f"{np.median(params['arc_snr'][lensed]):.0f})")
            times = stage_shares(spec, jobs[0][1], jobs[0][2])
            total = sum(times.values())
            print("    stages: " + ", ".join(f"{k} {v / total:.0%}" for k, v in times.items()))


if __name__ == "__main__":
    main()
