"""The substructure signal, measured with physics: what a smooth lens (SIE + shear + Sersic
source) leaves in each image, public DeepLense samples against each simulator configuration.

    python bench/bench_substructure_residuals.py --n 100 --out outputs/bench_substructure_residuals  # ~15 min, 2 cores
    python bench/bench_substructure_residuals.py --tiny --out /tmp/residuals   # a smoke run (the tests run it)

For the 9 public samples (../shared/samples/deeplense_substructure) and --n images per class of
each configuration in --configs (default deeplense-model1, deeplense-common, deeplense-broad;
seeded, in memory), `physics.strong.fit.fit_smooth` fits
each image (simulations through their own PSF, the public samples through the one that fits
them best: `--public-psf scan`, a Gaussian of FWHM 0.21") and `residual_stats` measures the residuals in units of the noise (a noise model
measured from the image itself, not from the fit). Prints and writes (residuals.json,
residuals.png):
- per source and class: chi^2 per degree of freedom, the residual power above the noise on the
  ring (mean r^2 - 1) and in annuli of r / theta_E (where on the ring it sits), the largest
  smoothed residual in sigma, and the share of images whose ring residual is not significant
  (`undetectable`: no network can classify those by their substructure);
- the physics ceiling of each configuration: the accuracy of an oracle on the residual
  statistics (a logistic regression on them, 5-fold cross-validated, chance 1/3);
- the fit speed (images/s on this machine) and its accuracy on the no-substructure images
  (true against fitted theta_E, shear);
- the residual-statistics classifier trained on each configuration, scored on the others and on
  the public samples (per-image predictions): a physics baseline for the networks' transfer.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from bench_substructure_realism import PUBLIC_DEFAULT, load_public, simulate  # noqa: E402
from physics.strong import fit, scenes  # noqa: E402
from tasks.substructure import psf_fwhm_arg  # noqa: E402

CLASSES = ("no", "sphere", "vort")
CONFIG_NAMES = ("deeplense-model1", "deeplense-common", "deeplense-broad")
SHOWN = ("chi2_dof", "ring_excess", "ring_power_0_0.6", "ring_power_0.6_0.85", "ring_power_0.85_1.15",
         "ring_power_1.15_1.5", "ring_power_1.5_10", "max_residual_sigma")
FEATURES = SHOWN + ("max_residual_radius",)  # what the oracle sees


def measure(images, batch, psf_fwhm):
    """(stats {name: (N,)}, fits' params {name: (N,)}, seconds, examples (image, model, residual) of the
    first 3), each image fitted through the PSF psf_fwhm (arcsec; one value or one per image)."""
    stats, params, start = {}, {}, time.perf_counter()
    examples = None
    psf = np.broadcast_to(np.asarray(psf_fwhm, np.float64), (len(images),))
    for i in range(0, len(images), batch):
        result = fit.fit_smooth(torch.from_numpy(images[i:i + batch]), 0.05, torch.from_numpy(psf[i:i + batch].copy()))
        for k, v in fit.residual_stats(result, 0.05).items():
            stats.setdefault(k, []).append(v.double().numpy())
        for k, v in result["params"].items():
            params.setdefault(k, []).append(v.numpy())
        if examples is None:
            r = (result["image"] - result["model"]) / result["sigma"]
            examples = [(result["image"][j].numpy(), result["model"][j].numpy(), r[j].numpy())
                        for j in range(min(3, len(r)))]
    seconds = time.perf_counter() - start
    return ({k: np.concatenate(v) for k, v in stats.items()}, {k: np.concatenate(v) for k, v in params.items()},
            seconds, examples)


def table(stats, labels):
    """{class: {statistic: [mean, std]}, plus undetectable share and n}."""
    out = {}
    for c, name in enumerate(CLASSES):
        sel = labels == c
        if not sel.any():
            continue
        row = {k: [float(np.mean(stats[k][sel])), float(np.std(stats[k][sel]))] for k in SHOWN}
        row["undetectable"] = float(1 - np.mean(stats["detectable"][sel]))
        row["n"] = int(sel.sum())
        out[name] = row
    return out


def oracle_model():
    """The residual-statistics classifier: a logistic regression on the standardised FEATURES."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def features(stats):
    """(N, len(FEATURES)): what the residual-statistics classifier sees of each image."""
    return np.stack([stats[k] for k in FEATURES], 1)


def oracle_accuracy(stats, labels, seed=0):
    """5-fold cross-validated accuracy of a logistic regression on the residual statistics."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    folds = min(5, int(np.bincount(labels).min()))
    if folds < 2:
        return float("nan")
    return float(cross_val_score(oracle_model(), features(stats), labels,
                                 cv=StratifiedKFold(folds, shuffle=True, random_state=seed)).mean())


def oracle_transfer(measured):
    """The residual-statistics classifier trained on each configuration's images, scored on every
    other source: {trained on: {source: accuracy, or for the public samples per-image predictions}}.
    A physics baseline for the networks' transfer: it sees only how much and where the smooth lens
    misfits, not the image."""
    out = {}
    for name, (stats, labels, ids) in measured.items():
        if name == "public" or len(np.unique(labels)) < 3:
            continue
        model = oracle_model().fit(features(stats), labels)
        row = {}
        for other, (o_stats, o_labels, o_ids) in measured.items():
            if other == name:
                continue
            pred = model.predict(features(o_stats))
            row[other] = float(np.mean(pred == o_labels))
            if other == "public":
                proba = model.predict_proba(features(o_stats))
                row["public_predictions"] = {i: dict(zip(CLASSES, map(float, p))) | {"class": CLASSES[c]}
                                             for i, p, c in zip(o_ids, proba, pred)}
        out[name] = row
    return out


def print_table(source, rows):
    print(f"\n{source}")
    print(f"{'class':8s} {'n':>4s} " + " ".join(f"{k[:18]:>18s}" for k in SHOWN) + f" {'undetectable':>12s}")
    for name, row in rows.items():
        print(f"{name:8s} {row['n']:4d} " + " ".join(f"{row[k][0]:8.3f}+-{row[k][1]:<8.3f}" for k in SHOWN)
              + f" {row['undetectable']:12.2f}")


def figure(path, examples):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [(source, i, ex) for source, exs in examples.items() for i, ex in enumerate(exs)]
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.4 * len(rows)), squeeze=False)
    for ax_row, (source, i, (image, model, residual)) in zip(axes, rows):
        for ax, panel, title in zip(ax_row, (image, model, residual), ("image", "smooth fit", "residual / sigma")):
            kw = dict(cmap="RdBu_r", vmin=-5, vmax=5) if title.startswith("residual") else dict(cmap="magma")
            ax.imshow(panel, origin="lower", **kw)
            ax.set_title(f"{source} #{i}: {title}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="simulated images per class and configuration")
    p.add_argument("--public", default=PUBLIC_DEFAULT, help="folder with no/ sphere/ vort/ .npy samples")
    p.add_argument("--out", default="outputs/bench_substructure_residuals")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", nargs="+", default=list(CONFIG_NAMES), choices=CONFIG_NAMES,
                   help="simulator configurations to measure beside the public samples")
    p.add_argument("--public-psf", default="scan", type=psf_fwhm_arg,
                   help="Gaussian FWHM (arcsec) the public samples are fitted through, or 'scan': the median "
                        "of the FWHMs that fit each best (physics.strong.fit.psf_scan; 0.208 for the 9 samples)")
    p.add_argument("--tiny", action="store_true", help="2 images per class, a short fit (a smoke run)")
    return p


def main(args):
    if args.tiny:
        args.n = 2
        fit.STEPS, fit.STARTS = (10, 10), fit.STARTS[:2]
    os.makedirs(args.out, exist_ok=True)
    results, examples = {}, {}
    sources = []
    public_psf = None
    if os.path.isdir(args.public):
        images, ids = load_public(args.public)
        labels = np.array([CLASSES.index(i.split("/")[-2]) for i in ids])
        sources.append(("public", images, labels, None, ids))
        if args.public_psf == "scan":
            scan = fit.psf_scan(images, 0.05, fit.PSF_GRID[1:6] if args.tiny else fit.PSF_GRID, batch=args.batch)
            public_psf = float(np.median(scan["fwhm"]))
            results["public_psf_scan"] = dict(grid=scan["grid"].tolist(), median=public_psf,
                                              per_image={i: float(v) for i, v in zip(ids, scan["fwhm"])})
            print(f"public samples' PSF (the FWHM whose smooth-lens fit leaves the least chi^2): median "
                  f"{public_psf:.3f}\" (" + ", ".join(f"{i} {v:.3f}" for i, v in zip(ids, scan["fwhm"])) + ")")
        else:
            public_psf = args.public_psf
    for config in args.configs:
        images, labels, truth = simulate(config, args.n, args.seed)
        sources.append((config, images, labels, truth, None))
    measured = {}
    for name, images, labels, truth, ids in sources:
        # simulations are fitted through each image's own PSF, the public samples through the measured one
        psf = public_psf if truth is None else truth.get("psf_fwhm", scenes.CONFIGS[name].psf_fwhm[0])
        stats, params, seconds, examples[name] = measure(images, args.batch, psf)
        measured[name] = (stats, labels, ids)
        entry = dict(table=table(stats, labels), images_per_s=len(images) / seconds, n=len(images))
        if name != "public":
            entry["oracle_accuracy"] = oracle_accuracy(stats, labels, args.seed)
            no = labels == 0
            entry["fit_error_no_substructure"] = {
                k: float(np.median(np.abs(params[k][no] - truth[k][no]))) for k in ("theta_e", "gamma1", "gamma2")}
        else:
            entry["per_image"] = {i: {k: float(stats[k][j]) for k in FEATURES + ("detectable",)}
                                  for j, i in enumerate(ids)}
        results[name] = entry
        print_table(f"{name}: {len(images)} images, {entry['images_per_s']:.2f} images/s fitted"
                    + (f"; oracle accuracy on the residuals {entry['oracle_accuracy']:.3f} (chance 0.333); "
                       f"median |fit - true| on no-substructure images: "
                       + ", ".join(f"{k} {v:.4f}" for k, v in entry["fit_error_no_substructure"].items())
                       if name != "public" else ""), entry["table"])
    results["oracle_transfer"] = transfer = oracle_transfer(measured)
    if transfer:
        print("\nresidual-statistics classifier (logistic regression) trained on a configuration's images, "
              "accuracy on each other source (chance 0.333):")
        for name, row in transfer.items():
            print(f"  {name:18s} " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "public_predictions"))
            if "public_predictions" in row:
                print("    public samples: " + ", ".join(f"{i} -> {p['class']}" for i, p in row["public_predictions"].items()))
    with open(os.path.join(args.out, "residuals.json"), "w") as f:
        json.dump(results, f, indent=1)
    figure(os.path.join(args.out, "residuals.png"), examples)
    print(f"\nwrote {os.path.join(args.out, 'residuals.json')} and residuals.png")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
