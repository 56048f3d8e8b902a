"""Plots of a masked-autoencoder evaluation: original / masked / reconstruction / prediction panels."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from plots import microlensing_eval as ml  # noqa: E402


def reconstruction_panels(target, pred, mask, patch_size, in_chans, titles, png, title="") -> dict:
    """One row per image: the (normalised) input, the visible patches only (masked ones grey), the
    reconstruction (visible input + predicted masked patches, as the MAE paper shows it) and the
    model's prediction of every patch. target, pred (N, L, p*p*C), mask (N, L), 1 = masked; several
    bands are shown as their mean. All panels of a row share the input's colour scale."""
    from models.mae import unpatchify
    target, pred, mask = (np.asarray(a, dtype=np.float32) for a in (target, pred, mask))
    n = len(target)
    cmap = plt.get_cmap("magma").copy()
    cmap.set_bad("0.6")
    fig, axes = plt.subplots(max(n, 1), 4, figsize=(8, 2.1 * max(n, 1) + (0.3 if title else 0)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no images", ha="center", va="center", transform=axes[0, 0].transAxes)
    pixels = patch_size * patch_size * in_chans

    def image(t):  # (L, p*p*C) → (H, W), bands averaged
        import torch
        return unpatchify(torch.from_numpy(t[None]), patch_size, in_chans)[0].mean(0).numpy()

    for row in range(n):
        m = mask[row][:, None].repeat(pixels, 1)
        original = image(target[row])
        panels = [original, image(np.where(m > 0, np.nan, target[row])),
                  image(np.where(m > 0, pred[row], target[row])), image(pred[row])]
        lo, hi = np.percentile(original, [1, 99.7])
        for col, (ax, shown, name) in enumerate(zip(axes[row], panels,
                                                    ("input", "visible", "reconstruction", "prediction"))):
            ax.imshow(shown, origin="lower", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(f"{titles[row]}\n{name}" if col == 0 else name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    ml._save(fig, png)
    return {"n_images": n}
