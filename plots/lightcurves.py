"""Example light curves per class, with their parameters, from a microlensing HDF5 file."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data import microlensing_h5 as mlh5  # noqa: E402
from physics.microlensing.survey import model_magnitude  # noqa: E402
from physics.microlensing.variables import KINDS  # noqa: E402


def describe(label: int, p) -> str:
    """Short parameter line for a panel title."""
    star = f"m_base={p['m_base']:.1f} fs={p['fs']:.2f}"
    if label == 0:
        return star
    if label == 3:
        period = f" P={p['period']:.2f}d" if np.isfinite(p["period"]) else ""
        return f"{KINDS[int(p['var_kind'])]}{period} amp={p['amplitude']:.2f} {star}"
    lens = f"tE={p['tE']:.1f}d u0={p['u0']:.3f}"
    if label == 2:
        lens += f"\ns={p['s']:.2f} q={p['q']:.1e} rho={p['rho']:.1e}"
    return f"{lens} {star}"


def plot_examples(path, png, per_class: int = 4, seed: int = 0):
    """Grid: one row per class, `per_class` random events of it, observed mag with errors
    and the noise-free model (from the stored magnification) on top."""
    with mlh5.open_checked(path) as f:
        labels = f["labels"][:]
        names = [str(n) for n in f.attrs["class_names"]]
        rng = np.random.default_rng(seed)
        picks = [np.sort(rng.permutation(np.flatnonzero(labels == c))[:per_class]) for c in range(len(names))]
        rows = np.sort(np.concatenate(picks)).astype(int)
        data = {k: f[k][rows] for k in ("mag", "mag_err", "magnification", "params")} if len(rows) else {}
        t = f["time"][:]
    index = {r: i for i, r in enumerate(rows)}
    fig, axes = plt.subplots(len(names), per_class, figsize=(4.2 * per_class, 3.2 * len(names)),
                             squeeze=False, sharex=True)
    for c, name in enumerate(names):
        for j in range(per_class):
            ax = axes[c, j]
            if j >= len(picks[c]):
                ax.set_axis_off()
                continue
            i = index[picks[c][j]]
            p = data["params"][i]
            ok = np.isfinite(data["mag"][i])
            ax.errorbar(t[ok], data["mag"][i][ok], data["mag_err"][i][ok], fmt=".", ms=1.5,
                        elinewidth=0.3, color="0.45", alpha=0.6, zorder=1)
            ax.plot(t, model_magnitude(p["m_base"], p["fs"], data["magnification"][i]), color="C3", lw=0.9, zorder=2)
            ax.invert_yaxis()
            ax.set_title(f"{name}: {describe(c, p)}", fontsize=8)
            if j == 0:
                ax.set_ylabel("W146 mag")
            if c == len(names) - 1:
                ax.set_xlabel("days since season start")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
