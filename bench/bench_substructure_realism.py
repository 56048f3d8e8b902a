"""How much simulated substructure images look like the public DeepLense Common Test I set
(no / sphere / vort, (1, 150, 150) min-max scaled at 0.05"), for deeplense-model1 and
deeplense-common; prints tables, asserts nothing.

    python bench/bench_substructure_realism.py --n 300 --out outputs/bench_substructure_realism  # ~30 s, 1 core
    # with a model's scores on the public samples (header id,p_no,p_sphere,p_vort,class; id like no/1)
    python bench/bench_substructure_realism.py --n 300 --predictions scores.csv
    python bench/bench_substructure_realism.py --tiny --out /tmp/realism   # a smoke run (the tests run it)

Simulates --n images per class with each config (seeded, in memory), measures every image with
`image_statistics` (importable: the tests use it), and writes to --out:
- realism.json: per statistic and source (public, deeplense-model1, deeplense-common) the mean,
  std and (public) each sample's value; the predictions' rows when given
- realism.png: a row of examples per source (the 9 public samples, 3 per class of each config,
  one display stretch: sqrt of the stored min-max scaled pixels), histograms of each statistic for
  the two configs with the public samples' values marked, and the predictions as bars
The public samples default to ../shared/samples/deeplense_substructure/{no,sphere,vort}/*.npy.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np
import torch
from scipy import ndimage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from physics.strong import render, scenes  # noqa: E402

PUBLIC_DEFAULT = os.path.join(os.path.dirname(ROOT), "shared", "samples", "deeplense_substructure")
CLASSES = ("no", "sphere", "vort")
CONFIG_NAMES = ("deeplense-model1", "deeplense-common")

# --------------------------------------------------------------------------- statistics
PIXEL = 0.05        # arcsec per pixel (DeepLense substructure images)
CORNER = 20         # px: side of the four corner boxes that hold only background
SMOOTH = 1.5        # px: Gaussian sigma of the light smoothing before the shape measurements
RING_LEVEL = 0.2    # the ring / arc light: smoothed pixels above this fraction of the peak (above background)
MAX_RADIUS = 70     # px: the radial profile reaches this far from the centre
SECTORS = 12        # azimuthal sectors along the ring


def _corners(x):
    c = CORNER
    return np.concatenate([x[:, :c, :c], x[:, :c, -c:], x[:, -c:, :c], x[:, -c:, -c:]], 1).reshape(len(x), -1)


def _crossing(profile, start, step, level):
    """Fractional index where `profile` first falls below `level` walking from `start` by `step` (+-1);
    the end of the profile (0 or its last index) if it never does."""
    i = start
    while 0 <= i + step < len(profile):
        if profile[i + step] < level:
            a, b = profile[i], profile[i + step]
            return i + step * (a - level) / max(a - b, 1e-12)
        i += step
    return float(i)


RIDGE_SECTORS = 36   # azimuthal sectors of the ring-shape fit
RIDGE_MIN_LIGHT = 0.1  # ... that hold at least this fraction of the brightest sector's light
RIDGE_MIN_SECTORS = 12


def _ridge_ellipse(rel, r, phi, inside):
    """(axis ratio, major-axis angle in degrees, sqrt(a b) in arcsec) of the ellipse centred on the
    image centre that best fits the ring's shape: in each of RIDGE_SECTORS sectors the light-
    weighted mean radius of the ring light (pixels above RING_LEVEL), then 1 / r^2 = A + B cos 2phi
    + C sin 2phi by least squares weighted by the sector's light, twice, the second time without
    sectors more than 3 median absolute deviations off. Unlike the moments, it hardly depends on
    where along the ring the light is (an arc's moments are flat whatever the lens). NaN where
    fewer than RIDGE_MIN_SECTORS sectors hold light (a short arc)."""
    sel = inside & (rel > RING_LEVEL)
    sector = (np.floor((phi[sel] + np.pi) / (2 * np.pi) * RIDGE_SECTORS).astype(int) % RIDGE_SECTORS)
    light = np.bincount(sector, rel[sel], RIDGE_SECTORS)
    radius = np.bincount(sector, rel[sel] * r[sel], RIDGE_SECTORS) / np.maximum(light, 1e-12)
    centre = (np.arange(RIDGE_SECTORS) + 0.5) / RIDGE_SECTORS * 2 * np.pi - np.pi
    keep = light > RIDGE_MIN_LIGHT * light.max()
    for _ in range(2):
        if keep.sum() < RIDGE_MIN_SECTORS:
            return np.nan, np.nan, np.nan
        design = np.stack([np.ones(RIDGE_SECTORS), np.cos(2 * centre), np.sin(2 * centre)], 1)
        wt = np.sqrt(light) * keep
        target = 1 / np.maximum(radius, 1.0) ** 2
        coef = np.linalg.lstsq(design * wt[:, None], target * wt, rcond=None)[0]
        resid = np.abs(target - design @ coef)
        mad = np.median(resid[keep])
        keep = keep & (resid <= 3 * mad + 1e-12)
    a, b, c = coef
    d = np.hypot(b, c)
    if a - d <= 0:
        return np.nan, np.nan, np.nan
    inv_major2, inv_minor2 = a - d, a + d  # 1 / r^2 is smallest along the major axis
    angle = (np.degrees(0.5 * np.arctan2(c, b)) + 180) % 180 - 90  # 1 / r^2 peaks on the minor axis
    return np.sqrt(inv_major2 / inv_minor2), angle if angle > -90 else angle + 180, \
        (inv_major2 * inv_minor2) ** -0.25 * PIXEL


def image_statistics(images):
    """Per-image statistics of substructure lensing images, (N, 150, 150) or (N, 1, 150, 150),
    as stored (min-max scaled). Returns {name: (N,) float64 array}:

    - axis_ratio, angle_deg: from the intensity-weighted second moments of the ring / arc light
      (pixels of the SMOOTH-px Gaussian-smoothed image above RING_LEVEL of its peak, weighted by
      their level above background); angle of the major axis from +x (columns) towards +y (rows),
      in (-90, 90] degrees. An arc is flat whatever the lens, so these mix lens and source position.
    - ridge_axis_ratio, ridge_angle_deg, ridge_radius: the ellipse fitted to the ring's ridge line
      about the image centre (`_ridge_ellipse`): the ring's own shape, orientation and size
      (sqrt(a b), arcsec); NaN for short arcs
    - centroid_offset: distance of the ring light's centroid from the image centre (arcsec)
    - ring_radius, ring_fwhm: peak and full width at half maximum of the azimuthally averaged
      radial profile of the smoothed light about the image centre, where the lens is (arcsec)
    - centre_level: that profile within 2 px of the centre over its peak (0 = a dark hole)
    - outer_light: the fraction of the light (above background, within MAX_RADIUS) beyond 1.5 x
      ring_radius: the source's extended wings
    - ring_coverage: the fraction of SECTORS azimuthal sectors of the annulus within 5 px of
      ring_radius whose mean exceeds a quarter of the brightest sector's (1 = a closed ring, low =
      an arc); sector_contrast: faintest over brightest sector mean
    - frac_above_half: the fraction of the pixels above half of the smoothed peak
    - background, noise: median and standard deviation of the four CORNER x CORNER corners;
      noise_highpass_ratio: std of (image - its smoothing) in the corners over `noise` (0.945 for
      white noise at SMOOTH = 1.5 px; lower when the noise is correlated, as when it is added
      before the PSF or the image is resampled)
    - peak_to_corner: the image's maximum over the corners' median; peak_snr: the smoothed
      peak above background over `noise`
    - count_range: 1 / the smallest step between distinct pixel values: max - min in counts for
      an image of whole counts (the public samples: 742-893); 1e8-1e9 for continuous float32 values
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 4:
        x = x[:, 0]
    n, h, w = x.shape
    corners = _corners(x)
    background = np.median(corners, 1)
    noise = corners.std(1)
    smooth = ndimage.gaussian_filter(x, (0, SMOOTH, SMOOTH))
    noise_hp = _corners(x - smooth).std(1)
    rel = (smooth - background[:, None, None])
    peak = rel.reshape(n, -1).max(1)
    rel = rel / peak[:, None, None]
    rows, cols = np.mgrid[:h, :w].astype(np.float64)
    # polar coordinates about the image centre, where the lens is
    r = np.hypot(cols - (w - 1) / 2, rows - (h - 1) / 2)
    phi = np.arctan2(rows - (h - 1) / 2, cols - (w - 1) / 2)
    ring_bin = np.floor(r).astype(int)
    inside = ring_bin < MAX_RADIUS
    counts = np.bincount(ring_bin[inside], minlength=MAX_RADIUS)
    out = {k: np.full(n, np.nan) for k in (
        "axis_ratio", "angle_deg", "centroid_offset", "ring_radius", "ring_fwhm", "centre_level", "outer_light",
        "ring_coverage", "sector_contrast", "ridge_axis_ratio", "ridge_angle_deg", "ridge_radius")}
    for i in range(n):
        weight = np.where(rel[i] > RING_LEVEL, rel[i], 0.0)
        total = weight.sum()
        cx, cy = (weight * cols).sum() / total, (weight * rows).sum() / total
        dx, dy = cols - cx, rows - cy
        cxx, cyy, cxy = ((weight * dx * dx).sum() / total, (weight * dy * dy).sum() / total,
                         (weight * dx * dy).sum() / total)
        lam = np.linalg.eigvalsh(np.array([[cxx, cxy], [cxy, cyy]]))
        out["axis_ratio"][i] = np.sqrt(max(lam[0], 0) / lam[1])
        angle = 0.5 * np.degrees(np.arctan2(2 * cxy, cxx - cyy))
        out["angle_deg"][i] = angle if angle > -90 else angle + 180
        out["centroid_offset"][i] = np.hypot(cx - (w - 1) / 2, cy - (h - 1) / 2) * PIXEL
        profile = np.bincount(ring_bin[inside], rel[i][inside], minlength=MAX_RADIUS) / np.maximum(counts, 1)
        k = int(np.argmax(profile))
        if 0 < k < MAX_RADIUS - 1:  # parabolic refinement of the peak
            a, b, c = profile[k - 1:k + 2]
            shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c < 0 else 0.0
        else:
            shift = 0.0
        radius_px = k + shift + 0.5  # bin k holds radii [k, k + 1)
        half = profile[k] / 2
        out["ring_radius"][i] = radius_px * PIXEL
        out["ring_fwhm"][i] = (_crossing(profile, k, 1, half) - _crossing(profile, k, -1, half)) * PIXEL
        out["centre_level"][i] = rel[i][r < 2].mean() / profile[k]
        light = np.clip(rel[i], 0, None) * inside
        out["outer_light"][i] = light[r > 1.5 * radius_px].sum() / light.sum()
        annulus = np.abs(r - radius_px) < 5
        sector = np.floor((phi[annulus] + np.pi) / (2 * np.pi) * SECTORS).astype(int) % SECTORS
        sector_mean = np.bincount(sector, rel[i][annulus], SECTORS) / np.maximum(np.bincount(sector, None, SECTORS), 1)
        out["ring_coverage"][i] = np.mean(sector_mean > 0.25 * sector_mean.max())
        out["sector_contrast"][i] = max(sector_mean.min(), 0) / sector_mean.max()
        ridge = _ridge_ellipse(rel[i], r, phi, inside)
        out["ridge_axis_ratio"][i], out["ridge_angle_deg"][i], out["ridge_radius"][i] = ridge
    flat = np.sort(x.reshape(n, -1), 1)
    gaps = np.diff(flat, axis=1)
    step = np.where(gaps > 1e-9, gaps, np.inf).min(1)  # the smallest step between distinct pixel values
    out.update(count_range=1 / step, background=background, noise=noise, noise_highpass_ratio=noise_hp / noise,
               peak_to_corner=x.reshape(n, -1).max(1) / background, peak_snr=peak / noise,
               frac_above_half=(rel > 0.5).mean((1, 2)))
    return out


# --------------------------------------------------------------------------- data
def load_public(folder):
    """(images (N, 150, 150) float64, ids ["no/1", ...]) of the .npy samples in the class folders,
    read by the training reader (data.lens_data); the public values are k / (max - min), exact in float32."""
    from data import lens_data
    try:
        arrays, _ = lens_data.load_all(lens_data.sources_of(folder, class_folders=lens_data.SUBSTRUCTURE_FOLDERS),
                                       progress=False)
    except lens_data.LensDataError as err:
        raise SystemExit(f"no samples under {folder}: {err}") from None
    order = np.lexsort((arrays["ids"],))
    return arrays["images"][order, 0].astype(np.float64), [str(i) for i in arrays["ids"][order]]


def simulate(config, n_per_class, seed, batch=64):
    """(images (3 n, 150, 150) float64, labels (3 n,), true parameters {name: (3 n,)}) of `config`,
    classes interleaved, as simulate.py writes them (min-max scaled)."""
    cfg = scenes.CONFIGS[config]
    labels = torch.arange(3 * n_per_class) % 3
    renderer = render.Renderer(cfg)
    gen, noise_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    images, truth = [], {}
    for start in range(0, len(labels), batch):
        scene, params = scenes.sample(cfg, labels[start:start + batch], gen)
        images.append(renderer.render(scene, params, noise_gen)["images"][:, 0].double().numpy())
        for k, v in params.items():
            if v.dim() == 1:
                truth.setdefault(k, []).append(v.numpy())
    return np.concatenate(images), labels.numpy(), {k: np.concatenate(v) for k, v in truth.items()}


def read_predictions(path):
    """Rows {id, p_no, p_sphere, p_vort, class} of a model's scores on the public samples."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"id", "p_no", "p_sphere", "p_vort", "class"}
    if not rows or not need <= set(rows[0]):
        raise SystemExit(f"{path}: expected a header id,p_no,p_sphere,p_vort,class and rows")
    for row in rows:
        for c in CLASSES:
            row[f"p_{c}"] = float(row[f"p_{c}"])
    return rows


# --------------------------------------------------------------------------- report
def summary(stats):
    return {k: {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v)), "n": int(np.isfinite(v).sum())}
            for k, v in stats.items()}


def print_tables(public, public_ids, sims):
    names = list(public)
    print(f"{'statistic':22s} {'public (' + str(len(public_ids)) + ')':>18s} " + " ".join(f"{c:>18s}" for c in sims))
    for k in names:
        cells = [public[k]] + [s[k] for s in sims.values()]
        print(f"{k:22s} " + " ".join(f"{np.nanmean(v):9.4g} ± {np.nanstd(v):<6.2g}" for v in cells))
    print("\neach public sample")
    print(f"{'statistic':22s} " + " ".join(f"{i:>9s}" for i in public_ids))
    for k in names:
        print(f"{k:22s} " + " ".join(f"{v:9.4g}" for v in public[k]))


def print_predictions(rows):
    print("\nmodel scores on the public samples")
    print(f"{'id':10s} {'p_no':>7s} {'p_sphere':>9s} {'p_vort':>7s}  class  (true)")
    right = 0
    for row in rows:
        truth = row["id"].split("/")[0]
        right += row["class"] == truth
        print(f"{row['id']:10s} {row['p_no']:7.3f} {row['p_sphere']:9.3f} {row['p_vort']:7.3f}  "
              f"{row['class']:6s} ({truth})")
    print(f"{right} of {len(rows)} right")


def figure(path, public_images, public_ids, examples, public, sims, predictions=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(public)
    n_cols = 6
    n_stat_rows = -(-len(names) // n_cols)
    rows = 1 + len(examples) + n_stat_rows + (1 if predictions else 0)
    fig = plt.figure(figsize=(2.2 * 9, 2.3 * rows))
    grid = fig.add_gridspec(rows, 1, hspace=0.45)
    image_rows = [("public", public_images, public_ids)] + [(c, im, lab) for c, (im, lab) in examples.items()]
    for r, (name, images, titles) in enumerate(image_rows):
        cells = grid[r].subgridspec(1, 9, wspace=0.05)
        for j in range(min(9, len(images))):
            ax = fig.add_subplot(cells[j])
            ax.imshow(np.sqrt(np.clip(images[j], 0, 1)), origin="lower", cmap="magma", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{name}: {titles[j]}", fontsize=7)
    colors = {"deeplense-model1": "tab:blue", "deeplense-common": "tab:orange"}
    stat_cells = grid[len(image_rows):len(image_rows) + n_stat_rows].subgridspec(n_stat_rows, n_cols, hspace=0.7,
                                                                                 wspace=0.3)
    for i, k in enumerate(names):
        ax = fig.add_subplot(stat_cells[i // n_cols, i % n_cols])
        scale = np.log10 if k == "count_range" else (lambda v: v)  # continuous images: ~1e8 "counts"
        sim_values = {c: scale(s[k][np.isfinite(s[k])]) for c, s in sims.items()}
        marks = scale(public[k][np.isfinite(public[k])])
        lo, hi = np.percentile(np.concatenate([*sim_values.values(), marks]), [1, 99])
        bins = np.linspace(lo, hi + 1e-9, 30)
        for c, v in sim_values.items():
            ax.hist(np.clip(v, lo, hi), bins, density=True, alpha=0.5, color=colors.get(c), label=c)
        for v in marks:
            ax.axvline(v, color="k", lw=0.8)
        ax.set_title("log10 " + k if k == "count_range" else k, fontsize=8)
        ax.tick_params(labelsize=6)
        if i == 0:
            ax.legend(fontsize=6, title="black: public", title_fontsize=6)
    if predictions:
        ax = fig.add_subplot(grid[-1])
        x = np.arange(len(predictions))
        for j, c in enumerate(CLASSES):
            ax.bar(x + (j - 1) * 0.27, [row[f"p_{c}"] for row in predictions], 0.27, label=f"p_{c}")
        ax.set_xticks(x, [f"{row['id']}\n-> {row['class']}" for row in predictions], fontsize=7)
        ax.set(ylim=(0, 1), ylabel="score", title="model scores on the public samples (id, predicted class)")
        ax.legend(fontsize=7, ncol=3)
    fig.savefig(path, dpi=70, bbox_inches="tight")
    plt.close(fig)


def get_args_parser():
    p = argparse.ArgumentParser("bench_substructure_realism.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="simulated images per class and config")
    p.add_argument("--public", default=PUBLIC_DEFAULT, help="folder of the public samples (no, sphere, vort)")
    p.add_argument("--out", default="outputs/bench_substructure_realism", help="folder for realism.json / .png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--predictions", help="CSV id,p_no,p_sphere,p_vort,class of a model's scores on the public samples")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="a smoke run in seconds: 3 images per class and config")
    return p


def main(args):
    if args.tiny:
        args.n = 3
    torch.set_num_threads(args.threads)
    public_images, public_ids = load_public(args.public)
    public = image_statistics(public_images)
    sims, examples, timing = {}, {}, {}
    for config in CONFIG_NAMES:
        start = time.perf_counter()
        images, labels, _ = simulate(config, args.n, args.seed)
        timing[config] = time.perf_counter() - start
        sims[config] = image_statistics(images)
        order = np.concatenate([np.flatnonzero(labels == c)[:3] for c in range(3)])
        examples[config] = (images[order], [CLASSES[labels[i]] for i in order])
        print(f"{config}: {len(images)} images in {timing[config]:.1f} s")
    print_tables(public, public_ids, sims)
    predictions = read_predictions(args.predictions) if args.predictions else None
    if predictions:
        print_predictions(predictions)
    os.makedirs(args.out, exist_ok=True)
    result = {"n_per_class": args.n, "seed": args.seed, "public_ids": public_ids, "seconds": timing,
              "statistics": {k: {"public": dict(summary(public)[k], values=[float(v) for v in public[k]]),
                                 **{c: summary(s)[k] for c, s in sims.items()}} for k in public}}
    if predictions:
        result["predictions"] = predictions
    with open(os.path.join(args.out, "realism.json"), "w") as f:
        json.dump(result, f, indent=1)
    figure(os.path.join(args.out, "realism.png"), public_images, public_ids, examples, public, sims, predictions)
    print(f"wrote {args.out}/realism.json and realism.png")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
