"""The `--hosts` side of `simulate.py --task lens`: lenses painted into the user's own cutouts.

`prepare` (parent) reads and checks the hosts once, decides bands, size, pixel scale, PSF and
the hosts' scaling, assigns a host to every row (seeded permutations of all hosts, cycled, so
each host serves lenses and non-lenses alike whatever the labels), and saves the hosts where
the workers read them. `run_block` (worker) paints a block: host -> symmetry of the square and
shift -> measured -> mass, source and S/N drawn -> arc rendered, blurred, painted with its
Poisson noise -> both classes rescaled alike. Physics in `physics.strong.inject`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile

import numpy as np
import torch

from data import lens_data
from physics.strong import inject, survey
from physics.strong.scenes import CONFIGS


class InjectionError(Exception):
    """Bad hosts or PSF: reported as one line by simulate.py."""


def read_psf(path, n_bands, size):
    """(C, k, k) kernels of sum 1 from a .npy or FITS file holding (k, k) (every band) or (C, k, k)."""
    try:
        if path.endswith(".npy"):
            kernel = np.load(path, allow_pickle=False)
        else:
            from astropy.io import fits
            with fits.open(path) as hdus:
                kernel = next(h.data for h in hdus if h.data is not None)
    except (OSError, ValueError, StopIteration, TypeError) as err:
        raise InjectionError(f"{path}: not a readable PSF (.npy or FITS image): {err}") from None
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim == 2:
        kernel = np.repeat(kernel[None], n_bands, 0)
    if kernel.ndim != 3 or kernel.shape[0] != n_bands or kernel.shape[1] != kernel.shape[2]:
        raise InjectionError(f"{path}: PSF of shape {kernel.shape}; expected (k, k) or ({n_bands}, k, k) for "
                             f"{n_bands} bands")
    k = kernel.shape[1]
    if k % 2 == 0 or k > size:
        raise InjectionError(f"{path}: PSF of side {k}; it must be odd and at most the hosts' side {size}")
    if not np.isfinite(kernel).all() or (kernel.sum((1, 2)) <= 0).any():
        raise InjectionError(f"{path}: PSF with non-finite values or a band that sums to <= 0")
    return kernel / kernel.sum((1, 2), keepdims=True)


def _host_bands(args, cfg, report, n_channels, path):
    if report.get("bands"):  # FITS cutouts name their bands
        bands = tuple(report["bands"])
    elif args.bands:
        bands = tuple(args.bands)
    elif n_channels == len(cfg.bands):
        bands = cfg.bands
    else:
        raise InjectionError(f"{path}: hosts have {n_channels} channels and config {cfg.name} has bands "
                             f"{','.join(cfg.bands)}; name the hosts' bands with --bands")
    if len(bands) != n_channels:
        raise InjectionError(f"{path}: hosts have {n_channels} channels, --bands names {len(bands)}")
    return bands


def prepare(args, labels):
    """(cfg, bands, context) for an injection run; context holds what the workers and the
    output's definition need."""
    try:
        images, files, report = lens_data.load_hosts(args.hosts, args.bands, skip_bad=args.skip_bad,
                                                     num_workers=0, progress=not args.no_progress)
    except lens_data.LensDataError as err:
        raise InjectionError(str(err)) from None
    for msg in report["bad"]:
        print(f"skipped host {msg}")
    n, c, h, w = images.shape
    if h != w:
        raise InjectionError(f"{files[0]}: hosts of {h}x{w} pixels; injection takes square cutouts")
    name = args.config or ("lens-finding-64" if c == 3 else "lsst")
    cfg = CONFIGS[name]
    if cfg.task != "lens":
        raise InjectionError(f"--config {name} makes {cfg.task} images; --hosts needs a lens config")
    bands = _host_bands(args, cfg, report, c, args.hosts[0])
    pixel_scale = args.pixel_scale or cfg.pixel_scale
    scaling = inject.detect_scaling(torch.from_numpy(images))
    psf = None
    if args.psf == "stars":
        kernels, fwhm_px, n_stars = inject.psf_from_stars(torch.from_numpy(images), h)
        if kernels is None:
            raise InjectionError(f"--psf stars: {n_stars} isolated star(s) found in the {n} hosts ({args.hosts[0]}, "
                                 f"...), at least {inject.MIN_STARS} are needed; give --psf FILE or --psf-fwhm")
        psf = kernels.numpy()
        print(f"PSF measured from {n_stars} stars in the hosts: {psf.shape[-1]}x{psf.shape[-1]} pixels, FWHM "
              + ", ".join(f"{b} {f * (args.pixel_scale or cfg.pixel_scale):.2f}\"" for b, f in zip(bands, fwhm_px)))
    elif args.psf:
        psf = read_psf(args.psf, c, h)
    elif args.psf_fwhm:
        if len(args.psf_fwhm) not in (1, c):
            raise InjectionError(f"--psf-fwhm gives {len(args.psf_fwhm)} values for {c} bands")
    out_cfg = dataclasses.replace(cfg, bands=bands, size=h, pixel_scale=pixel_scale, scaling=scaling,
                                  negatives="hosts")
    # rows -> hosts: seeded permutations of all hosts, one after another
    rng = np.random.default_rng(np.random.SeedSequence(args.seed, spawn_key=(2,)))
    host_rows = np.concatenate([rng.permutation(n) for _ in range(-(-len(labels) // n))])[:len(labels)]
    digest = hashlib.sha1(images.tobytes()).hexdigest()
    tmp = tempfile.mkdtemp(prefix="hosts_")
    np.save(os.path.join(tmp, "hosts.npy"), images)
    context = dict(
        files=files, images=images, host_rows=host_rows, tmp=tmp, cfg=out_cfg, bands=bands,
        spec=dict(hosts_file=os.path.join(tmp, "hosts.npy"), base_config=name, bands=list(bands),
                  pixel_scale=pixel_scale, scaling=scaling, psf=None if psf is None else psf.tolist(),
                  psf_kernel_fwhm=None if psf is None else (inject.kernel_fwhm(torch.from_numpy(psf))
                                                            * pixel_scale).tolist(),
                  psf_fwhm=args.psf_fwhm, max_shift=args.host_shift, depth=math.sqrt(cfg.depth[0] * cfg.depth[1]),
                  painted_neighbours=args.painted_neighbours),
        definition=dict(hosts=digest, n_hosts=int(n), host_scaling=scaling, host_shift=args.host_shift,
                        painted_neighbours=args.painted_neighbours,
                        psf=(f"{'stars' if args.psf == 'stars' else 'file'} {hashlib.sha1(psf.tobytes()).hexdigest()}")
                        if psf is not None
                        else f"fwhm {args.psf_fwhm}" if args.psf_fwhm else f"fwhm {list(cfg.psf_fwhm)}"))
    print(f"painting lenses into {n} host cutouts ({c}x{h}x{w}, bands {','.join(bands)}, {pixel_scale:g}\"/px, "
          f"stored {scaling}; config {name})")
    return out_cfg, bands, context


_HOSTS = {}


def run_block(spec, job, scene_seed, noise_seed):
    """(block_index, images {"images": (B, C, H, W)}, params) for one block of injections."""
    block_index, labels, host_rows = job
    if _HOSTS.get("file") != spec["hosts_file"]:
        _HOSTS.update(file=spec["hosts_file"], images=torch.from_numpy(np.load(spec["hosts_file"])))
    gen = torch.Generator().manual_seed(scene_seed)
    noise_gen = torch.Generator().manual_seed(noise_seed)
    bands, pixel_scale = spec["bands"], spec["pixel_scale"]
    n, c = len(labels), len(bands)
    lensed = torch.as_tensor(labels) == 1
    base = CONFIGS[spec["base_config"]]
    survey_scene, _ = survey.sample_survey(base, torch.ones(n, dtype=torch.long), gen)
    flips = torch.randint(0, 8, (n,), generator=gen)
    m = spec["max_shift"]
    shifts = torch.randint(-m, m + 1, (n, 2), generator=gen)
    hosts = inject.augment(_HOSTS["images"][torch.as_tensor(host_rows)].double(), flips, shifts)
    measured = inject.measure_hosts(hosts, pixel_scale)
    neighbour = None  # drawn only when asked for, so the default's random stream is unchanged
    if spec.get("painted_neighbours"):
        neighbour = ~lensed & (torch.rand(n, generator=gen, dtype=torch.float64) < spec["painted_neighbours"])
    scene = inject.draw_injection(measured, lensed, survey_scene, gen, bands, spec["min_arc_snr"], neighbour)
    painted = lensed if neighbour is None else lensed | neighbour
    flux_noise, gain = inject.band_model(bands, pixel_scale, spec["depth"])
    ref = inject.reference_band(bands)
    scene.update(flux_noise=flux_noise[None], flux_noise_ref=flux_noise[ref])
    unit = measured["noise"] / (flux_noise * gain)[None]  # (B, C) host units per electron
    fwhm, beta = inject.psf_fwhm_draw(gen, n, bands, base.psf_fwhm)
    size = hosts.shape[-1]
    if spec["psf"] is not None:
        kernels = torch.tensor(spec["psf"], dtype=torch.float64)[None]
        fwhm = torch.tensor(spec["psf_kernel_fwhm"], dtype=torch.float64).expand(n, c).clone()  # fitted Moffat
    else:
        if spec["psf_fwhm"]:
            fwhm = torch.tensor(spec["psf_fwhm"], dtype=torch.float64).expand(n, c).clone()
        k = min(int(2 * math.ceil(2.5 * float(fwhm.max()) / pixel_scale) + 1), size - (1 - size % 2))
        kernels = inject.moffat_kernels(fwhm, beta, pixel_scale, k)
    arcs = inject.render_arcs(scene, (size, size), pixel_scale, base.supersample, kernels)
    images, amplitude, snr = inject.paint(hosts, arcs, scene, measured["noise"], unit, ref, noise_gen)
    images = inject.rescale(images, spec["scaling"]).float()
    codes = survey.KIND_CODES
    nan = torch.full((n,), math.nan, dtype=torch.float64)
    params = dict(
        kind=torch.where(lensed, float(codes["lens"]), torch.where(painted, float(codes["pair"]),
                                                                   float(codes["host"]))).double(),
        host_index=torch.as_tensor(host_rows, dtype=torch.float64), host_flip=flips.double(),
        host_shift_x=shifts[:, 0].double(), host_shift_y=shifts[:, 1].double(),
        host_x=measured["x"], host_y=measured["y"], host_size=measured["size"], host_q=measured["q"],
        host_phi=measured["phi"], host_has_light=measured["has_light"].double(),
        theta_e=scene["theta_e"], deflector_theta_e=scene["deflector_theta_e"],
        lens_x=scene["lens_x"], lens_y=scene["lens_y"], lens_e1=scene["lens_e1"], lens_e2=scene["lens_e2"],
        gamma1=scene["gamma1"], gamma2=scene["gamma2"],
        **{k: torch.where(painted, scene[k], nan) for k in ("src_x", "src_y", "src_r_e", "src_n", "src_e1", "src_e2")},
        # the flux of a unit source inside the stamp (an arc cut by the edge counts less)
        magnification=torch.where(lensed, arcs[:, ref].double().sum((1, 2)), nan),
        arc_snr_target=torch.where(painted, scene["snr_target"], nan), arc_snr=snr,
    )
    for j, b in enumerate(bands):
        params[f"host_noise_{b}"] = measured["noise"][:, j]
        params[f"arc_amplitude_{b}"] = torch.where(painted, amplitude[:, j], nan)
        params[f"psf_fwhm_{b}"] = fwhm[:, j]
    return block_index, {"images": images.numpy()}, {k: v.numpy() for k, v in params.items()}


def write_host_table(context, path):
    """host_index -> file, next to the output (params hold host_index)."""
    with open(path, "w") as f:
        f.write("host_index,file\n")
        for i, name in enumerate(context["files"]):
            f.write(f"{i},{name}\n")
