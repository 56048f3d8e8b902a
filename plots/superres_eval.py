"""Plots and residual statistics of a super-resolution evaluation."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from plots import microlensing_eval as ml  # noqa: E402


def residual_stats(sr, hr) -> dict:
    """Of the residual HR - SR, in units of each HR image's data range: the mean (bias), the RMS,
    the largest |residual| (median over images), and the flux ratio sum(SR) / sum(HR) (median and
    16-84% spread over images; 1 = flux kept)."""
    sr, hr = np.asarray(sr, np.float64), np.asarray(hr, np.float64)
    span = (hr.reshape(len(hr), -1).max(1) - hr.reshape(len(hr), -1).min(1)).clip(1e-30)
    res = (hr - sr).reshape(len(hr), -1) / span[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        flux = sr.reshape(len(sr), -1).sum(1) / hr.reshape(len(hr), -1).sum(1)
    flux = flux[np.isfinite(flux)]
    q = np.percentile(flux, [16, 50, 84]) if len(flux) else [np.nan] * 3
    return {"mean": float(res.mean()) if res.size else float("nan"),
            "rms": float(np.sqrt((res ** 2).mean())) if res.size else float("nan"),
            "max_abs_median": float(np.median(np.abs(res).max(1))) if res.size else float("nan"),
            "flux_ratio_median": float(q[1]), "flux_ratio_16_84": [float(q[0]), float(q[2])]}


def affine_matched(image, reference):
    """Each image under the per-image gain and offset that best fit its reference (least squares):
    an oracle (it sees the HR image) that tells how much of a model's gain over bicubic a mere
    rescaling of the intensities would give."""
    x = np.asarray(image, np.float64).reshape(len(image), -1)
    y = np.asarray(reference, np.float64).reshape(len(reference), -1)
    xm, ym = x.mean(1, keepdims=True), y.mean(1, keepdims=True)
    var = ((x - xm) ** 2).sum(1, keepdims=True)
    gain = np.where(var > 0, ((x - xm) * (y - ym)).sum(1, keepdims=True) / np.where(var > 0, var, 1), 0.0)
    return (gain * (x - xm) + ym).reshape(np.shape(image)).astype(np.float32)


def noise_ceiling_psnr(hr, corner: int | None = None) -> float:
    """The PSNR a perfect, noise-free prediction would reach against noisy HR images, from the sky
    noise: sigma per image = 1.4826 MAD of the four corner boxes (corner x corner pixels, default
    1/12 of the side: 12 of 150; band 0), which must hold sky only,
    PSNR = 10 log10(R^2 / sigma^2) with R the image's range, averaged over images. An upper bound
    on any model's PSNR where the noise is the sky's; photon noise on bright arcs lowers the true
    ceiling further. NaN when the corners hold no noise (noise-free HR images)."""
    hr = np.asarray(hr, np.float64)[:, 0]
    corner = corner or max(2, hr.shape[-1] // 12)
    boxes = np.concatenate([hr[:, :corner, :corner], hr[:, :corner, -corner:], hr[:, -corner:, :corner],
                            hr[:, -corner:, -corner:]], axis=1).reshape(len(hr), -1)
    sigma = 1.4826 * np.median(np.abs(boxes - np.median(boxes, 1, keepdims=True)), 1)
    span = hr.reshape(len(hr), -1).max(1) - hr.reshape(len(hr), -1).min(1)
    ok = sigma > 0
    return float(np.mean(10 * np.log10(span[ok] ** 2 / sigma[ok] ** 2))) if ok.any() else float("nan")


def pair_panels(lr, bicubic, sr, hr, titles, png, model_name="model") -> dict:
    """One row per image: LR, bicubic, the model's SR, HR, and the residual HR - SR (on a symmetric
    scale of +-3 x its RMS). Band 0 is shown; the four images of a row share the HR colour scale."""
    n = len(hr)
    fig, axes = plt.subplots(max(n, 1), 5, figsize=(11, 2.3 * max(n, 1)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for row in range(n):
        lo, hi = np.percentile(hr[row][0], [0.5, 99.8])
        res = hr[row][0] - sr[row][0]
        r = 3 * float(np.sqrt((res ** 2).mean())) or 1.0
        panels = [(lr[row][0], "LR", "magma", lo, hi), (bicubic[row][0], "bicubic", "magma", lo, hi),
                  (sr[row][0], model_name, "magma", lo, hi), (hr[row][0], "HR", "magma", lo, hi),
                  (res, "HR - SR", "RdBu_r", -r, r)]
        for col, (ax, (image, name, cmap, vmin, vmax)) in enumerate(zip(axes[row], panels)):
            im = ax.imshow(image, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{titles[row]}\n{name}" if col == 0 else name, fontsize=7, loc="left" if col == 0 else "center")
            if col == 4:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    ml._save(fig, png)
    return {"n_images": n}


def metric_scatter(per_image, png, model_name="model") -> dict:
    """PSNR and SSIM of the model against bicubic, one point per image, with the y = x line."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    out = {}
    for ax, metric, unit in zip(axes, ("psnr", "ssim"), (" (dB)", "")):
        x, y = np.asarray(per_image["bicubic"][metric]), np.asarray(per_image["model"][metric])
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=6, alpha=0.6, color="C0")
        if ok.any():
            lo, hi = min(x[ok].min(), y[ok].min()), max(x[ok].max(), y[ok].max())
            ax.plot([lo, hi], [lo, hi], color="0.4", lw=1, ls="--")
        better = float(np.mean(y[ok] > x[ok])) if ok.any() else float("nan")
        out[f"{metric}_fraction_better"] = better
        ax.set(xlabel=f"bicubic {metric.upper()}{unit}", ylabel=f"{model_name} {metric.upper()}{unit}",
               title=f"{metric.upper()}: better than bicubic on {better:.0%} of {ok.sum()} images")
        ax.title.set_fontsize(9)
    ml._save(fig, png)
    return out
