"""What a smooth lens leaves in each substructure image, as images a network can be trained on
(issue 26, exploratory: not yet a train.py option).

    python bench/substructure_residual_maps.py --input sims/ --output sims_res/ --psf-fwhm 0.2   # ~1 s/image, 2 cores
    python train.py --task substructure --model resnet18 --data sims_res/ --epochs 10
    python bench/substructure_residual_maps.py --input ../shared/samples/deeplense_substructure --output public_res/ --psf-fwhm 0.2
    python evaluate.py --run results/<run> --data public_res/ --tta 8

Reads class folders (no/ sphere/ vort/, any format the training reader takes), fits each image's
smooth lens (SIE + shear + Sersic source through a Gaussian PSF: `physics.strong.fit.fit_smooth`)
on the central +-2.6" and writes (image - model) / sigma (the image's own noise model) as
<output>/<class>/<name>.npy, (1, 104, 104) at 0.05". No label is read by the fit; a folder already
converted is skipped (a killed run resumes). The same PSF for every image (`--psf-fwhm`, or
`scan`: the median best fit of up to 32 images, as evaluate.py --residuals).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data import lens_data  # noqa: E402
from physics.strong import fit  # noqa: E402
from tasks.substructure import PSF_SCAN_IMAGES, psf_fwhm_arg  # noqa: E402


def main(args):
    try:
        arrays, _ = lens_data.load_all(lens_data.sources_of(args.input, class_folders=lens_data.SUBSTRUCTURE_FOLDERS),
                                       progress=False)
    except lens_data.LensDataError as err:
        raise SystemExit(f"substructure_residual_maps.py: {err}") from None
    images, ids = arrays["images"][:, 0].astype(np.float64), [str(i) for i in arrays["ids"]]
    if images.shape[-1] != images.shape[-2]:
        raise SystemExit(f"substructure_residual_maps.py: {args.input}: square images only, "
                         f"these are {images.shape[-2]}x{images.shape[-1]}")
    if args.tiny:  # a smoke run: a short fit
        fit.STEPS, fit.STARTS = (10, 10), fit.STARTS[:2]
    psf = args.psf_fwhm
    if psf == "scan":
        pick = np.unique(np.linspace(0, len(images) - 1, min(PSF_SCAN_IMAGES, len(images))).round().astype(int))
        psf = float(np.median(fit.psf_scan(images[pick], args.pixel_scale)["fwhm"]))
        print(f"PSF FWHM {psf:.3f}\" (median best fit of {len(pick)} images)")
    out_of = [os.path.join(args.output, f"{i}.npy") for i in ids]
    todo = [k for k, path in enumerate(out_of) if not os.path.isfile(path)]
    start = time.time()
    for b in tqdm(range(0, len(todo), args.batch), desc="residual maps", unit="batch", disable=args.no_progress):
        rows = todo[b:b + args.batch]
        f = fit.fit_smooth(torch.from_numpy(images[rows]), args.pixel_scale, psf)
        maps = ((f["image"] - f["model"]) / f["sigma"]).float().numpy()
        for k, m in zip(rows, maps):
            os.makedirs(os.path.dirname(out_of[k]), exist_ok=True)
            tmp = out_of[k] + ".tmp"  # not *.npy: a leftover is never read as an image
            with open(tmp, "wb") as fh:
                np.save(fh, m[None])
            os.replace(tmp, out_of[k])  # a killed run leaves no half-written map
    took = time.time() - start
    print(f"wrote {len(todo)} residual maps to {args.output} ({len(ids) - len(todo)} already there) in {took:.0f} s "
          f"({len(todo) / max(took, 1e-9):.2f} images/s fitted), PSF {psf:.3f}\"")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="class folders no/ sphere/ vort/")
    p.add_argument("--output", required=True)
    p.add_argument("--psf-fwhm", type=psf_fwhm_arg, default="scan", help="arcsec, or 'scan'")
    p.add_argument("--pixel-scale", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tiny", action="store_true", help="a short fit (a smoke run; the tests run it)")
    p.add_argument("--no-progress", action="store_true")
    main(p.parse_args())
