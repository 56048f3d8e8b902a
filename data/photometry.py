"""Text photometry as users have it: one reader for every text format a survey publishes.

- Plain columns time, magnitude, error (more columns ignored): whitespace or comma separated,
  optionally gzipped; comment lines starting with '#', '%' or '!'; IPAC tables (keyword lines
  starting with '\\', column header lines with '|'); a non-numeric header line.
- KMTNet pySIS files (`*.pysis`, or 8+ columns whose second is a difference flux that goes
  negative while the fourth is a magnitude): HJD-2450000, Δflux, flux_err, mag, mag_err,
  fwhm, sky, secz; the magnitude columns are used. One file per site and field: give the files
  of an event together (predict.py --event or --event-folders).
- CSV (or whitespace) tables with a header naming their columns: time (time, hjd, bjd, jd, mjd,
  t), magnitude (mag, magnitude), error (mag_err, magerr, err, e_mag, sigma, ...) and
  optionally a band (band, filter, passband, fid). `read_photometry` takes one band (`band=`,
  else the one with the most epochs); `read_bands` gives every band, which an event treats as
  one telescope each.

Time in BJD/HJD (245xxxx.x) is converted to HJD−2450000, MJD (a column named mjd) too; times
already in HJD−2450000 (or any other offset) are kept, since only time differences enter the
model.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

SUFFIXES = (".dat", ".txt", ".csv", ".tbl", ".ipac", ".phot", ".lc", ".pysis")
FULL_JD = 2_400_000.0
JD_OFFSET = 2_450_000.0
MJD_TO_HJD = 49_999.5  # HJD - 2450000 = MJD - 49999.5 (to the light-travel time: minutes)
TIME_NAMES = ("time", "hjd", "bjd", "jd", "mjd", "t", "date", "hjd-2450000", "bjd_tdb", "obsmjd")
MAG_NAMES = ("mag", "magnitude", "m", "mag_auto", "psfmag", "mag_psf")
ERR_NAMES = ("mag_err", "magerr", "err", "e_mag", "emag", "sigma", "mag_error", "magnitude_err", "sigmapsf", "dmag",
             "error", "sig")
BAND_NAMES = ("band", "filter", "passband", "fid", "filtercode", "bandpass")
PYSIS_MAG, PYSIS_ERR = 3, 4  # columns of a KMTNet pySIS file


class PhotometryError(ValueError):
    """A photometry file that cannot be used; the message names the file and the problem."""


def is_photometry_file(path) -> bool:
    name = os.path.basename(str(path)).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(SUFFIXES)


def _lines(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt", errors="replace") as f:
            yield from enumerate(f, 1)
    except (OSError, EOFError, UnicodeError) as err:
        raise PhotometryError(f"{path}: cannot read ({err})") from None


def _header_columns(fields):
    """{role: index} of a header line that names its columns, or None."""
    names = [f.strip().strip('"').lower() for f in fields]
    roles = {}
    for role, known in (("time", TIME_NAMES), ("mag", MAG_NAMES), ("err", ERR_NAMES), ("band", BAND_NAMES)):
        for k, name in enumerate(names):
            if name in known and k not in roles.values():
                roles[role] = k
                break
    return roles if {"time", "mag", "err"} <= roles.keys() else None


def read_bands(path) -> dict:
    """{band: (time, mag, mag_err)} of a photometry file, each sorted by time, finite rows only
    (one band, named "", for files without a band column)."""
    rows, bands, roles, pysis, mjd = [], [], None, str(path).lower().removesuffix(".gz").endswith(".pysis"), False
    for line_number, line in _lines(path):
        text = line.strip()
        if not text or text[0] in "#%!\\|":
            continue
        fields = [f.strip() for f in text.split(",")] if "," in text else text.split()
        if roles is None and not rows:
            named = _header_columns(fields)
            if named:
                roles = named
                mjd = fields[roles["time"]].strip().strip('"').lower() in ("mjd", "obsmjd")
                continue
        try:
            if roles:
                values = [float(fields[roles[k]]) for k in ("time", "mag", "err")]
            else:
                values = [float(v) for v in fields[:8]]
        except (ValueError, IndexError):
            if rows:
                raise PhotometryError(f"{path}: line {line_number} is not numeric: {text[:60]!r}") from None
            continue  # a header line before the data
        if len(values) < 3:
            raise PhotometryError(f"{path}: line {line_number} has {len(values)} columns, "
                                  "expected time, magnitude, error")
        rows.append(values)
        bands.append(fields[roles["band"]].strip().strip('"') if roles and "band" in roles else "")
    if not rows:
        raise PhotometryError(f"{path}: no data rows (expected columns time, magnitude, error)")
    width = min(len(r) for r in rows)
    data = np.asarray([r[:width] for r in rows], dtype=np.float64)
    if not roles and (pysis or _looks_like_pysis(data)):
        if width <= PYSIS_ERR:
            raise PhotometryError(f"{path}: a pySIS file needs columns HJD, dflux, flux_err, mag, mag_err; "
                                  f"found {width}")
        data = data[:, [0, PYSIS_MAG, PYSIS_ERR]]
    data = data[:, :3]
    bands = np.asarray(bands)
    # finite, a positive error, and no sentinel (99.999 magnitudes, 9.999 errors)
    good = np.isfinite(data).all(axis=1) & (data[:, 2] > 0) & (data[:, 2] < 10) & (np.abs(data[:, 1]) < 90)
    out = {}
    for band in dict.fromkeys(bands):  # in order of first appearance
        take = good & (bands == band)
        if take.sum() < 3:
            continue
        d = data[take]
        time = d[:, 0] - MJD_TO_HJD if mjd else d[:, 0]
        if np.median(time) > FULL_JD:
            time = time - JD_OFFSET
        order = np.argsort(time, kind="stable")
        out[band] = (time[order], d[order, 1], d[order, 2])
    if not out:
        raise PhotometryError(f"{path}: {int(good.sum())} usable epochs (finite time, magnitude and positive "
                              f"error) of {len(data)}"
                              f"{' in any band' if len(set(bands)) > 1 else ''}; need at least 3")
    return out


def _looks_like_pysis(data) -> bool:
    """8+ columns, a second column of difference fluxes (negative somewhere, |values| far above
    a magnitude's errors) and magnitudes with small errors in the fourth and fifth."""
    if data.shape[1] < 8:
        return False
    dflux, mag, mag_err = data[:, 1], data[:, PYSIS_MAG], data[:, PYSIS_ERR]
    with np.errstate(invalid="ignore"):
        return bool((dflux < 0).any() and np.nanmedian(np.abs(dflux)) > 1.0
                    and 5 < np.nanmedian(mag) < 30 and 0 < np.nanmedian(mag_err) < 1)


def read_photometry(path, band: str | None = None):
    """Return time (days), mag, mag_err as float64 arrays sorted by time, finite rows only: of
    `band` where the file has a band column (default: the band with the most epochs)."""
    bands = read_bands(path)
    if band is not None and band not in bands:
        raise PhotometryError(f"{path}: no band {band!r} with at least 3 epochs (bands: {', '.join(bands) or 'none'})")
    if band is None:
        band = max(bands, key=lambda b: len(bands[b][0]))
    return bands[band]


def _brightest(mag, smooth: int) -> int:
    """Index of the brightest epoch after a running median over `smooth` epochs (single outliers
    do not pick it)."""
    k = min(smooth, len(mag))
    padded = np.pad(mag, (k // 2, k - 1 - k // 2), mode="edge")
    return int(np.argmin(np.median(np.lib.stride_tricks.sliding_window_view(padded, k), axis=1)))


def data_notes(time, mag, smooth: int = 5) -> str:
    """What limits a prediction on this curve, in words ("" when nothing does): a curve of less
    than a day, constant magnitudes, or a brightest point at the very edge of the data (an
    episode caught on its rise or tail)."""
    notes = []
    span = float(time[-1] - time[0])
    if span < 1.0:
        notes.append(f"only {span * 24:.1f} h of data: longer timescales cannot be told apart")
    if np.ptp(mag) == 0:
        notes.append("constant magnitudes")
    elif len(mag) >= 2 * smooth:
        brightest = _brightest(mag, smooth)
        if brightest < smooth or brightest >= len(mag) - smooth:
            notes.append("brightest point at the edge of the data (an episode on its rise or tail)")
    return "; ".join(notes)


def season_window(time, mag, season_days: float, smooth: int = 5) -> float:
    """Start (days) of the season-long window to classify.

    A curve no longer than a season starts at its first epoch. A longer one (years of survey
    baseline) is cut to the window centred on its brightest point after a running median over
    `smooth` epochs (single outliers do not move it), clipped to the data's span.
    """
    if time[-1] - time[0] <= season_days:
        return float(time[0])
    start = time[_brightest(mag, smooth)] - season_days / 2
    return float(np.clip(start, time[0], time[-1] - season_days))
