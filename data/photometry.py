"""Text photometry as users have it: columns time, magnitude, error (more columns ignored).

Accepted: whitespace or comma separated values, optionally gzipped; comment lines starting
with '#', '%' or '!'; IPAC tables (keyword lines starting with '\\', column header lines with
'|'); a non-numeric header line. Time in BJD/HJD (245xxxx.x) is converted to HJD−2450000;
times already in HJD−2450000 (or any other offset) are kept, since only time differences enter
the model.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

SUFFIXES = (".dat", ".txt", ".csv", ".tbl", ".ipac", ".phot", ".lc")
FULL_JD = 2_400_000.0
JD_OFFSET = 2_450_000.0


class PhotometryError(ValueError):
    """A photometry file that cannot be used; the message names the file and the problem."""


def is_photometry_file(path) -> bool:
    name = os.path.basename(str(path)).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(SUFFIXES)


def read_photometry(path):
    """Return time (days), mag, mag_err as float64 arrays sorted by time, finite rows only."""
    opener = gzip.open if str(path).endswith(".gz") else open
    rows = []
    try:
        with opener(path, "rt", errors="replace") as f:
            for line_number, line in enumerate(f, 1):
                text = line.strip()
                if not text or text[0] in "#%!\\|":
                    continue
                fields = text.replace(",", " ").split()
                try:
                    values = [float(v) for v in fields[:3]]
                except ValueError:
                    if rows:
                        raise PhotometryError(f"{path}: line {line_number} is not numeric: {text[:60]!r}") from None
                    continue  # a header line before the data
                if len(values) < 3:
                    raise PhotometryError(f"{path}: line {line_number} has {len(values)} columns, "
                                          "expected time, magnitude, error")
                rows.append(values)
    except (OSError, EOFError, UnicodeError) as err:
        raise PhotometryError(f"{path}: cannot read ({err})") from None
    if not rows:
        raise PhotometryError(f"{path}: no data rows (expected columns time, magnitude, error)")
    data = np.asarray(rows, dtype=np.float64)
    good = np.isfinite(data).all(axis=1) & (data[:, 2] > 0)
    if good.sum() < 3:
        raise PhotometryError(f"{path}: {good.sum()} usable epochs (finite time, magnitude and "
                              f"positive error) of {len(data)}; need at least 3")
    data = data[good]
    time = data[:, 0]
    if np.median(time) > FULL_JD:
        time = time - JD_OFFSET
    order = np.argsort(time, kind="stable")
    return time[order], data[order, 1], data[order, 2]


def season_window(time, mag, season_days: float, smooth: int = 5) -> float:
    """Start (days) of the season-long window to classify.

    A curve no longer than a season starts at its first epoch. A longer one (years of survey
    baseline) is cut to the window centred on its brightest point after a running median over
    `smooth` epochs (single outliers do not move it), clipped to the data's span.
    """
    if time[-1] - time[0] <= season_days:
        return float(time[0])
    k = min(smooth, len(mag))
    padded = np.pad(mag, (k // 2, k - 1 - k // 2), mode="edge")
    running = np.median(np.lib.stride_tricks.sliding_window_view(padded, k), axis=1)
    peak = time[int(np.argmin(running))]
    start = peak - season_days / 2
    return float(np.clip(start, time[0], time[-1] - season_days))
