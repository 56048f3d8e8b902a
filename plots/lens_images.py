"""Preview grids of simulated lensing images: examples per class with key true parameters."""
from __future__ import annotations

import glob
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data import lens_images  # noqa: E402
from physics.strong.survey import KIND_CODES  # noqa: E402

KIND_NAMES = {v: k for k, v in KIND_CODES.items()}


def load_examples(output, fmt, cfg, bands, per_class):
    """[(label, {"images" or "hr"/"lr": (C, H, W)}, {param: value})] for up to per_class per class."""
    if fmt == "h5":
        data, _ = lens_images.read_h5(output)
        labels = data["labels"]
        picked = [i for c in range(len(cfg.classes)) for i in np.flatnonzero(labels == c)[:per_class]]
        keys = ("hr", "lr") if cfg.task == "superres" else ("images",)
        return [(int(labels[i]), {k: data[k][i] for k in keys},
                 {k[7:]: data[k][i] for k in data if k.startswith("params/")}) for i in picked]
    tables = sorted(glob.glob(os.path.join(output, "params*.csv")))
    params = [lens_images.read_params_csv(t) for t in tables]
    table = {k: np.concatenate([p[k] for p in params]) for k in params[0]} if params else {}
    out = []
    for c in range(len(cfg.classes)):
        for row in np.flatnonzero(table["label"] == c)[:per_class]:
            name = table["file"][row]
            if cfg.task == "superres":
                images = {"hr": np.load(os.path.join(output, name)),
                          "lr": np.load(os.path.join(output, "LR", os.path.basename(name)))}
            elif fmt == "npy":
                images = {"images": np.load(os.path.join(output, name))}
            else:
                stem = os.path.join(output, name[:-len("_x.fits")])
                images = {"images": np.stack([lens_images.read_fits_cutout(f"{stem}_{b}.fits")[1] for b in bands])}
            out.append((c, images, {k: v[row] for k, v in table.items()}))
    return out


def to_display(image):
    """(C, H, W) -> something imshow shows well: one band as is, several as an asinh RGB
    composite (i, r, g of grizy: blue arcs stay blue next to a red deflector; the reddest three otherwise)."""
    image = np.nan_to_num(np.asarray(image, dtype=np.float64))
    if image.shape[0] == 1:
        return image[0], "magma"
    rgb = image[[2, 1, 0]] if image.shape[0] == 5 else image[::-1][:3]
    rgb = np.moveaxis(rgb, 0, -1)
    scale = rgb.max() + 1e-12  # asinh stretch: faint arcs visible next to a bright lens galaxy
    rgb = np.arcsinh(np.clip(rgb, 0, None) / (0.02 * scale)) / np.arcsinh(50.0)
    return np.clip(rgb, 0, 1), None


def title_for(cfg, label, p):
    name = cfg.classes[label]
    if cfg.task == "lens":
        kind = KIND_NAMES.get(int(p.get("kind", -1)), name)
        text = f"{kind}"
        if label == 1:
            text += f"  θE {p['theta_e']:.2f}\"  μ {p['magnification']:.1f}"
        return text + f"\nfeature S/N {p['arc_snr']:.0f}"
    text = f"{name}  θE {p['theta_e']:.2f}\""
    if name == "sphere":
        text += f"\n25 subhalos, max {p['subhalo_mass_max']:.1e} M☉"
    elif name == "vort":
        text += f"\nm_a {p['m_axion_ev']:.1e} eV, L {2 * p['vortex_half_length']:.2f}\""
    else:
        text += f"\nsource ({p['src_x']:+.2f}, {p['src_y']:+.2f})\""
    return text


def plot_examples(output, fmt, cfg, bands, png, per_class=6):
    examples = load_examples(output, fmt, cfg, bands, per_class)
    columns = per_class * (2 if cfg.task == "superres" else 1)
    rows = len(cfg.classes)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    filled = [0] * rows
    for label, images, params in examples:
        col = filled[label]
        filled[label] += 1
        panels = [("images", "")] if cfg.task != "superres" else [("hr", "HR "), ("lr", "LR ")]
        for j, (key, prefix) in enumerate(panels):
            ax = axes[label, col * len(panels) + j]
            shown, cmap = to_display(images[key])
            ax.imshow(shown, origin="lower", cmap=cmap, interpolation="nearest")
            ax.set_title(prefix + title_for(cfg, label, params), fontsize=7)
    fig.suptitle(f"{cfg.name} ({', '.join(bands)}): {output}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_injections(output, fmt, painting, png, per_class=6):
    """Lenses painted into hosts: each host as it went in (its symmetry and shift, rescaled as
    the output) above the painted image, and a row of non-lenses (the same hosts, unpainted)."""
    import torch

    from physics.strong import inject
    cfg, bands = painting["cfg"], painting["bands"]
    examples = load_examples(output, fmt, cfg, bands, per_class)
    lenses = [e for e in examples if e[0] == 1]
    others = [e for e in examples if e[0] == 0]
    columns = max(len(lenses), len(others), 1)
    fig, axes = plt.subplots(3, columns, figsize=(2.2 * columns, 2.7 * 3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for col, (_, images, p) in enumerate(lenses):
        host = torch.from_numpy(painting["images"][int(p["host_index"])][None]).double()
        host = inject.augment(host, torch.tensor([int(p["host_flip"])]),
                              torch.tensor([[int(p["host_shift_x"]), int(p["host_shift_y"])]]))
        before = inject.rescale(host, cfg.scaling)[0].numpy()
        for row, (image, text) in enumerate(((before, f"host {int(p['host_index'])}"),
                                             (images["images"], f"θE {p['theta_e']:.2f}\"  μ {p['magnification']:.1f}"
                                              f"\narc S/N {p['arc_snr']:.0f}"))):
            shown, cmap = to_display(image)
            axes[row, col].imshow(shown, origin="lower", cmap=cmap, interpolation="nearest")
            axes[row, col].set_title(text, fontsize=7)
    for col, (_, images, p) in enumerate(others):
        shown, cmap = to_display(images["images"])
        axes[2, col].imshow(shown, origin="lower", cmap=cmap, interpolation="nearest")
        axes[2, col].set_title(f"non-lens: host {int(p['host_index'])}", fontsize=7)
    fig.suptitle(f"lenses painted into hosts ({', '.join(bands)}; rows: host, painted, non-lenses): {output}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
