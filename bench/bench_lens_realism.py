"""How much simulated `lens-finding-64` images look like the public DeepLense lens-finding
samples, and how learnable the simulated lenses are; prints tables, asserts nothing.

    python bench/bench_lens_realism.py                  # statistics + PNGs (~1 min on a CPU core)
    python bench/bench_lens_realism.py --learn          # + the small CNN's AUC (~4 min more)
    python bench/bench_lens_realism.py --h5 data/lf.h5  # an existing lens-finding-64 set
    python bench/bench_lens_realism.py --tiny           # every part on a few images (the tests run it)
    # the same figures for an older simulator (a checkout made with `git archive`)
    git archive OLD | tar -x -C /tmp/old && python bench/bench_lens_realism.py --sim-root /tmp/old --learn

Parts:
- images: a grid of real lenses / simulated lenses / real non-lenses / simulated non-lenses,
  shown alike (each channel as stored, min-max scaled; R, G, B = i, r, g; asinh stretch and
  linear), written to --out (realism_asinh.png, realism_linear.png).
- statistics, per class, simulated against real (medians, with the 10-90% range where it
  matters), all computed on the min-max scaled images, so they compare like with like:
  corner std (the four 8x8 corners' median std, per channel: how visible the noise is after
  scaling), the sky level after scaling, the fraction of the background-subtracted g flux
  within 3" of the centre that lies beyond 1.5", and the colour of the ring annulus (0.8-2")
  relative to the centre (< 0.6"), (g-i)_ring - (g-i)_centre: per-channel scale factors
  cancel, negative = a bluer ring.
  Then the simulated set's own truth: theta_E, arc S/N, magnification, the unlensed light over
  the arc light in the Einstein annulus, and the nuisance rates (stars, masks, faint
  deflectors, blends) for each class.
- learn (--learn): a small CNN (4 conv layers, 40k parameters, 1 thread) trained on --n-train
  per class and scored on --n-test per class held out: AUC overall, against each kind of
  non-lens (plain galaxies, rings, spirals, mergers, pairs) and for the obvious lenses (arc
  S/N > 30); its most confident mistakes go to realism_errors.png. Also its scores on the real
  samples (a handful of images: a sanity check of transfer, not a figure of merit).

The real samples default to ../shared/samples/deeplense_lens_finding (folders whose names
contain "nonlens" are non-lenses, other folders with "lens" lenses).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data import lens_images  # noqa: E402
from physics.strong.survey import KIND_CODES  # noqa: E402

PIXEL = 0.2  # arcsec, lens-finding-64
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
REAL_DEFAULT = os.path.join(os.path.dirname(ROOT), "shared", "samples", "deeplense_lens_finding")


def get_args_parser():
    p = argparse.ArgumentParser("bench_lens_realism.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", default=REAL_DEFAULT, help="folder of the DeepLense lens-finding samples")
    p.add_argument("--h5", help="use this simulated lens-finding-64 set instead of simulating one")
    p.add_argument("--save-h5", help="keep the simulated set here (reuse it with --h5)")
    p.add_argument("--sim-root", default=ROOT, help="checkout whose simulate.py makes the set (default: this one)")
    p.add_argument("--n-train", type=int, default=2000, help="simulated images per class to train on")
    p.add_argument("--n-test", type=int, default=500, help="held-out simulated images per class")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--out", default="bench_realism", help="folder for the PNGs and realism.json")
    p.add_argument("--learn", action="store_true", help="also train the small CNN and quote its AUC")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="a smoke run in seconds: 8 + 4 images per class, --learn, 1 epoch")
    return p


# --------------------------------------------------------------------------- data
def load_real(folder):
    """(images (N, 3, 64, 64) float32, labels (N,)) of the .npy samples under `folder`."""
    images, labels = [], []
    for sub in sorted(os.listdir(folder)):
        name = sub.lower()
        if "lens" not in name:
            continue
        for path in sorted(glob.glob(os.path.join(folder, sub, "*.npy"))):
            images.append(np.load(path).astype(np.float32))
            labels.append(0 if "nonlens" in name else 1)
    if not images:
        raise SystemExit(f"no lens / nonlens .npy samples under {folder}")
    return np.stack(images), np.array(labels)


def simulate(root, n_per_class, seed, path, threads):
    """A lens-finding-64 h5 set made by `root`'s simulate.py (so an old checkout can be compared)."""
    cmd = [sys.executable, os.path.join(root, "simulate.py"), "--task", "lens", "--config", "lens-finding-64",
           "--n-lens", str(n_per_class), "--n-nonlens", str(n_per_class), "--seed", str(seed),
           "--output", path, "--no-progress"]
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, 
                       env={**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": str(threads)})
    if r.returncode:
        raise SystemExit(r.stderr)
    print(f"simulated {2 * n_per_class} images with {root} in {time.perf_counter() - start:.0f} s")


# --------------------------------------------------------------------------- statistics
def _radius_px(size):
    axis = np.arange(size) - (size - 1) / 2
    return np.hypot(*np.meshgrid(axis, axis, indexing="ij"))


def image_stats(images):
    """{name: (N,) or (N, 3)} statistics of min-max scaled (N, 3, H, W) images (channels g, r, i)."""
    images = np.nan_to_num(images.astype(np.float64))
    n, c, h, w = images.shape
    k = 8
    corners = np.stack([images[..., :k, :k], images[..., :k, -k:], images[..., -k:, :k], images[..., -k:, -k:]], 2)
    corners = corners.reshape(n, c, 4, -1)
    corner_std = np.median(corners.std(-1), 2)            # (N, C): a star or a mask in one corner is ignored
    sky = np.median(corners.reshape(n, c, -1), -1)         # (N, C)
    flux = images - sky[..., None, None]
    r = _radius_px(h) * PIXEL
    # within 3" only: a bright star or neighbour in a corner would decide the fraction otherwise
    centre, ring, outer, inner = r < 0.6, (r >= 0.8) & (r < 2.0), (r >= 1.5) & (r < 3.0), r < 3.0
    total_g = flux[:, 0][:, inner].sum(1)
    out_frac = np.where(total_g > 0, flux[:, 0][:, outer].sum(1) / np.where(total_g > 0, total_g, 1), np.nan)
    sums = lambda m: flux[:, :, m].sum(-1)  # noqa: E731  (N, C)
    fc, fr = sums(centre), sums(ring)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (fc[:, [0, 2]] > 0).all(1) & (fr[:, [0, 2]] > 0).all(1)
        d_colour = np.where(ok, -2.5 * np.log10((fr[:, 0] / fc[:, 0]) / (fr[:, 2] / fc[:, 2])), np.nan)
    return dict(corner_std=corner_std, sky=sky, out_frac_g=out_frac, ring_minus_centre_gi=d_colour)


def _q(values, qs=(10, 50, 90)):
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return [float(np.percentile(values, q)) if len(values) else math.nan for q in qs]


def stats_table(sim_images, sim_labels, real_images, real_labels):
    """Rows (statistic, class, simulated 10/50/90, real 10/50/90) printed and returned."""
    s, r = image_stats(sim_images), image_stats(real_images)
    rows = []
    for cls, name in ((1, "lens"), (0, "nonlens")):
        ms, mr = sim_labels == cls, real_labels == cls
        for key, label in (("corner_std", "corner std"), ("sky", "sky after scaling")):
            for ch, band in enumerate("gri"):
                rows.append((f"{label} {band}", name, _q(s[key][ms, ch]), _q(r[key][mr, ch])))
        rows.append(("g flux at 1.5-3\" / within 3\"", name, _q(s["out_frac_g"][ms]), _q(r["out_frac_g"][mr])))
        rows.append(("(g-i) ring - centre", name, _q(s["ring_minus_centre_gi"][ms]), _q(r["ring_minus_centre_gi"][mr])))
    print(f"\n{'statistic (min-max scaled images)':34s} {'class':8s} {'simulated 10/50/90%':>24s}  "
          f"{f'real 10/50/90% (n={len(real_labels)})':>26s}")
    for stat, cls, sq, rq in rows:
        print(f"{stat:34s} {cls:8s} {' '.join(f'{v:7.3f}' for v in sq):>24s}  {' '.join(f'{v:7.3f}' for v in rq):>26s}")
    return rows


def truth_table(data):
    """The simulated set's true parameters: how obvious the lenses are, and the nuisance rates."""
    labels = data["labels"]
    p = {k[7:]: v for k, v in data.items() if k.startswith("params/")}
    lens = labels == 1
    out = {}
    print("\nsimulated truth (lenses):")
    for key, label in (("theta_e", "theta_E (arcsec)"), ("arc_snr", "arc S/N in i"),
                       ("arc_snr_best", "arc S/N, best band"), ("magnification", "magnification"),
                       ("unlensed_to_arc_g", "unlensed / arc light at theta_E, g"),
                       ("unlensed_to_arc_i", "unlensed / arc light at theta_E, i")):
        if key in p:
            q = _q(p[key][lens])
            out[key] = q
            print(f"  {label:38s} 10/50/90%: {q[0]:8.2f} {q[1]:8.2f} {q[2]:8.2f}")
    fractions = {"theta_E >= 0.8\"": p["theta_e"][lens] >= 0.8, "arc S/N (i) > 30": p["arc_snr"][lens] > 30}
    if "arc_snr_best" in p:
        fractions["arc S/N (best band) > 30"] = p["arc_snr_best"][lens] > 30
    for band in "gi":
        if f"unlensed_to_arc_{band}" in p:
            fractions[f"unlensed / arc < 1 in {band} (arc outshines)"] = p[f"unlensed_to_arc_{band}"][lens] < 1
    for label, flags in fractions.items():
        out[label] = float(np.mean(flags))
        print(f"  fraction {label:40s} {out[label]:.2f}")
    nuisances = [("n_star", "with a star"), ("n_saturated", "with saturated pixels"),
                 ("mask_frac", "with masked pixels"), ("faint_deflector", "faint deflector"),
                 ("blend", "with a blended neighbour")]
    print("\nnuisance rates           lens  nonlens")
    for key, label in nuisances:
        if key in p:
            a, b = float(np.mean(p[key][lens] > 0)), float(np.mean(p[key][~lens] > 0))
            out[f"rate {key}"] = (a, b)
            print(f"  {label:24s} {a:5.2f}  {b:5.2f}")
    return out


# --------------------------------------------------------------------------- pictures
def _rgb(image, stretch):
    """(3, H, W) g, r, i in [0, 1] -> (H, W, 3) RGB = i, r, g."""
    rgb = np.moveaxis(np.nan_to_num(image[::-1]), 0, -1).astype(np.float64)
    if stretch == "asinh":
        rgb = np.arcsinh(np.clip(rgb, 0, None) / 0.05) / np.arcsinh(1 / 0.05)
    return np.clip(rgb, 0, 1)


def picture(path, groups, stretch, title, columns=10):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(groups), columns, figsize=(1.6 * columns, 1.75 * len(groups)), squeeze=False)
    for row, (name, images, titles) in enumerate(groups):
        for col in range(columns):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(images):
                ax.imshow(_rgb(images[col], stretch), origin="lower", interpolation="nearest")
                ax.set_title(titles[col] if titles else "", fontsize=6)
        axes[row, 0].text(-0.1, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, ha="right", va="center",
                          fontsize=8)
    fig.suptitle(f"lens-finding-64: {title} (RGB = i, r, g, {stretch})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _titles(p, rows, lens):
    out = []
    for i in rows:
        text = f"θE {p['theta_e'][i]:.2f} S/N {p['arc_snr'][i]:.0f}" if lens else KIND_NAMES[int(p["kind"][i])]
        extra = [name for key, name in (("n_star", "star"), ("mask_frac", "mask"), ("faint_deflector", "faint"))
                 if key in p and p[key][i] > 0]
        out.append(text + ("\n" + ",".join(extra) if extra else "\n"))
    return out


# --------------------------------------------------------------------------- learnability
def tiny_cnn():
    import torch.nn as nn
    def block(a, b):
        return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2))
    return nn.Sequential(block(3, 16), block(16, 32), block(32, 48), nn.Conv2d(48, 48, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 1))


def auc(score, label):
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    score, label = np.asarray(score, dtype=np.float64), np.asarray(label).astype(bool)
    pos, neg = score[label], score[~label]
    if not len(pos) or not len(neg):
        return math.nan
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def learn(images, labels, n_train, n_test, epochs, seed, real_images, real_labels):
    """Train the small CNN on n_train per class; returns (held-out rows, their scores, scores of
    the real samples, seconds)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.nan_to_num(images).astype(np.float32))
    y = torch.from_numpy(labels.astype(np.float32))
    idx = [torch.nonzero(y == c).flatten() for c in (0, 1)]  # rows are in random order already
    if min(len(i) for i in idx) < n_train + n_test:
        raise SystemExit(f"need {n_train + n_test} images per class, the set has {min(len(i) for i in idx)}")
    train = torch.cat([i[:n_train] for i in idx])
    test = torch.cat([i[n_train:n_train + n_test] for i in idx])
    torch.manual_seed(seed)
    model = tiny_cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(train) / 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = train[torch.randperm(len(train), generator=gen)]
        for b in range(0, len(order), 64):
            rows = order[b:b + 64]
            xb = x[rows]
            # the label does not depend on orientation: random flips and quarter turns
            if torch.rand(1, generator=gen) < 0.5:
                xb = xb.flip(-1)
            xb = torch.rot90(xb, int(torch.randint(4, (1,), generator=gen)), (2, 3))
            loss = loss_fn(model(xb)[:, 0], y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        score = torch.cat([model(x[test[b:b + 256]])[:, 0] for b in range(0, len(test), 256)]).numpy()
        real_score = model(torch.from_numpy(np.nan_to_num(real_images)))[:, 0].numpy()
    return test.numpy(), score, real_score, time.perf_counter() - start


def main(args):
    if args.tiny:
        args.n_train, args.n_test, args.learn, args.epochs = 8, 4, True, 1
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    real_images, real_labels = load_real(args.real)
    n_per_class = args.n_train + args.n_test
    if args.h5:
        data, _ = lens_images.read_h5(args.h5)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.abspath(args.save_h5) if args.save_h5 else os.path.join(tmp, "lf.h5")
            simulate(os.path.abspath(args.sim_root), n_per_class, args.seed, path, args.threads)
            data, _ = lens_images.read_h5(path)
    images, labels = data["images"], data["labels"].astype(int)
    p = {k[7:]: v for k, v in data.items() if k.startswith("params/")}
    print(f"simulated set: {np.sum(labels == 1)} lenses, {np.sum(labels == 0)} non-lenses; "
          f"real samples: {np.sum(real_labels == 1)} lenses, {np.sum(real_labels == 0)} non-lenses ({args.real})")

    rows = stats_table(images, labels, real_images, real_labels)
    truth = truth_table(data)
    sim_lens, sim_non = np.flatnonzero(labels == 1)[:20], np.flatnonzero(labels == 0)[:20]
    groups = [("real lenses", real_images[real_labels == 1], None),
              ("simulated lenses", images[sim_lens[:10]], _titles(p, sim_lens[:10], True)),
              ("simulated lenses", images[sim_lens[10:]], _titles(p, sim_lens[10:], True)),
              ("real non-lenses", real_images[real_labels == 0], None),
              ("simulated non-lenses", images[sim_non[:10]], _titles(p, sim_non[:10], False)),
              ("simulated non-lenses", images[sim_non[10:]], _titles(p, sim_non[10:], False))]
    for stretch in ("asinh", "linear"):
        png = os.path.join(args.out, f"realism_{stretch}.png")
        picture(png, groups, stretch, "real (DeepLense samples) vs simulated")
        print(f"wrote {png}")
    result = dict(stats=[dict(statistic=s, cls=c, simulated=sq, real=rq) for s, c, sq, rq in rows], truth=truth)
    if args.learn:
        test, score, real_score, seconds = learn(images, labels, args.n_train, args.n_test, args.epochs,
                                                 args.seed, real_images, real_labels)
        test_auc, real_auc = auc(score, labels[test]), auc(real_score, real_labels)
        print(f"\nsmall CNN, {args.epochs} epochs on {args.n_train} + {args.n_train} simulated images "
              f"({seconds:.0f} s, {args.threads} thread): AUC {test_auc:.3f} on {args.n_test} + {args.n_test} "
              f"held out; "
              f"AUC {real_auc:.2f} on the {len(real_labels)} real samples (logits: lenses "
              f"{' '.join(f'{v:.1f}' for v in real_score[real_labels == 1])}; non-lenses "
              f"{' '.join(f'{v:.1f}' for v in real_score[real_labels == 0])})")
        # where the difficulty lies: held-out lenses against each kind of non-lens, and the
        # obvious lenses (arc S/N > 30) against all non-lenses
        kind, snr, lens = p["kind"][test], p["arc_snr"][test], labels[test] == 1
        per_kind = {}
        for code, name in KIND_NAMES.items():
            if code != KIND_CODES["lens"]:
                rows = lens | (kind == code)
                per_kind[name] = auc(score[rows], lens[rows])
        rows = ~lens | (snr > 30)
        per_kind["lenses with arc S/N > 30 vs all"] = auc(score[rows], lens[rows])
        print("  AUC, held-out lenses vs " + ", ".join(f"{k} {v:.3f}" for k, v in per_kind.items()))
        order = np.argsort(score)
        missed = test[order[lens[order]][:10]]
        false_pos = test[order[~lens[order]][::-1][:10]]
        png = os.path.join(args.out, "realism_errors.png")
        picture(png, [("lenses scored lowest", images[missed], _titles(p, missed, True)),
                      ("non-lenses scored highest", images[false_pos], _titles(p, false_pos, False))], "asinh",
                "the small CNN's most confident mistakes on held-out images")
        print(f"wrote {png}")
        result.update(test_auc=test_auc, real_auc=real_auc, auc_by_kind=per_kind, n_train=args.n_train,
                      n_test=args.n_test, epochs=args.epochs)
    with open(os.path.join(args.out, "realism.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
