"""What physics can tell apart in a simulator file: Δχ² of each event, computed once and kept.

For every event, with χ² over the observed magnitudes and their errors:
- `dchi2_pspl` = χ²(best PSPL fit) − χ²(true model): how far the event is from any point-source
  single-lens curve (≈ −5 for a PSPL event, the fit's five parameters; large for a binary
  whose anomaly is seen; large too for a single lens whose finite source rounds the peak);
- `dchi2_flat` = χ²(constant flux) − χ²(true model): how far it is from no lensing.

The oracle that knows the true model calls an event lensed iff dchi2_flat > 25 and a lensed
event binary iff dchi2_pspl > 25 (single-lens events count as single lens: a finite-source
fit would reach their true χ²). Its accuracy is the ceiling a classifier is quoted against.

Values are kept in `<file>.dchi2.npz` next to the data (or in `fallback_dir` when that folder
is read-only), keyed by the file's fingerprint and filled in for the rows asked for.

With `survey_seed`, the same Δχ² of the ground-survey versions of the curves (the epochs, errors
as reported and outliers `data.microlensing.h5_features` gives for that seed; kept in
`<file>.dchi2_ground<seed>.npz`): the ceiling on ground photometry, what a ground network's
sampling and noise leave of the season's signal. Like the dense ceiling it reads the season
only, not the years around it.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from tqdm import tqdm

from data import microlensing_h5 as mlh5
from physics.microlensing.fit import fit_pspl
from physics.microlensing.survey import model_magnitude

THRESHOLD = 25.0
BINS = (25.0, 100.0, 500.0, 2000.0)  # edges of the Δχ² bins binary recall is reported in
BIN_LABELS = ("<=25", "25-100", "100-500", "500-2000", ">2000")
LN10_04 = 0.4 * np.log(10.0)


def event_dchi2(time, mag, mag_err, magnification, params, finite_source: bool = False) -> dict:
    """Δχ² of a block of events: mag, mag_err, magnification (N, T), params (N,) PARAMS_DTYPE.
    finite_source: dchi2_pspl from the best single-lens fit with a finite source allowed (FSPL)
    instead of the point-source one the ceiling is defined by."""
    mag = np.asarray(mag, dtype=np.float64)
    err = np.asarray(mag_err, dtype=np.float64)
    ref = np.nanmedian(mag, axis=1, keepdims=True)
    flux = 10.0 ** (-0.4 * (mag - ref))                     # NaN where not observed
    fit = fit_pspl(time, flux, LN10_04 * flux * err, finite_source=finite_source)
    true_mag = model_magnitude(params["m_base"][:, None], params["fs"][:, None], np.asarray(magnification, np.float64))
    good = np.isfinite(mag) & np.isfinite(err) & (err > 0)
    w = np.where(good, 1.0 / np.where(good, err, 1.0) ** 2, 0.0)
    chi2_true = (w * np.where(good, mag - true_mag, 0.0) ** 2).sum(1)
    mean = (w * np.where(good, mag, 0.0)).sum(1, keepdims=True) / np.maximum(w.sum(1, keepdims=True), 1e-300)
    chi2_flat = (w * np.where(good, mag - mean, 0.0) ** 2).sum(1)
    return {"dchi2_pspl": fit["chi2"] - chi2_true, "dchi2_flat": chi2_flat - chi2_true}


def annotations(path, rows, fallback_dir=None, block: int = 128, progress: bool = True,
                survey_seed: int | None = None) -> dict:
    """dchi2_pspl and dchi2_flat (len(rows),) for the given rows of a simulator file (of their
    ground-survey versions with survey_seed)."""
    from data.microlensing import _ground
    rows = np.asarray(rows, dtype=np.int64)
    key = mlh5.fingerprint(path)
    cache = path + (".dchi2.npz" if survey_seed is None else f".dchi2_ground{int(survey_seed)}.npz")
    if not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK) and fallback_dir:
        cache = os.path.join(fallback_dir, os.path.basename(cache))
    known = {}
    if os.path.isfile(cache):
        try:
            with np.load(cache) as z:
                if str(z["fingerprint"]) == key:
                    known = {int(r): (a, b) for r, a, b in zip(z["rows"], z["dchi2_pspl"], z["dchi2_flat"])}
        except (OSError, ValueError, KeyError):
            known = {}  # a damaged cache is recomputed
    todo = np.array(sorted(set(rows.tolist()) - set(known)), dtype=np.int64)
    if len(todo):
        with mlh5.open_checked(path) as f:
            time = f["time"][:]
            desc = "Δχ² ceiling" + (" (ground versions)" if survey_seed is not None else "")
            bar = tqdm(total=len(todo), desc=desc, unit="ev", disable=not progress, leave=False)
            for i in range(0, len(todo), block):
                idx = todo[i:i + block]
                try:
                    mag, err = f["mag"][idx], f["mag_err"][idx]
                    if survey_seed is not None:
                        mag, err = _ground(f, survey_seed, idx, time, mag, err)
                    out = event_dchi2(time, mag, err, f["magnification"][idx], f["params"][idx])
                except (OSError, KeyError) as err:
                    raise mlh5.SchemaError(f"{path}: damaged HDF5 file ({err})") from None
                known.update({int(r): (a, b) for r, a, b in zip(idx, out["dchi2_pspl"], out["dchi2_flat"])})
                bar.update(len(idx))
            bar.close()
        keys = np.array(sorted(known), dtype=np.int64)
        tmp = f"{cache}.{os.getpid()}.tmp.npz"  # concurrent evaluations never share a temporary file
        try:
            np.savez(tmp, fingerprint=key, rows=keys, dchi2_pspl=np.array([known[k][0] for k in keys]),
                     dchi2_flat=np.array([known[k][1] for k in keys]))
            os.replace(tmp, cache)
        except OSError as err:  # nowhere to keep it: computed again next time, and said so
            print(f"warning: cannot keep the Δχ² values in {cache} ({err}); they are recomputed next time",
                  file=sys.stderr)
    return {"dchi2_pspl": np.array([known[int(r)][0] for r in rows]),
            "dchi2_flat": np.array([known[int(r)][1] for r in rows])}


def oracle_predictions(dchi2_pspl, dchi2_flat, labels, threshold: float = THRESHOLD):
    """The true-model oracle's classes (see the module docstring)."""
    lensed = dchi2_flat > threshold
    binary = np.where(labels == 2, dchi2_pspl > threshold, False)
    return np.where(~lensed, 0, np.where(binary, 2, 1))


def binned_recall(dchi2, correct) -> dict:
    """Binary recall in the Δχ² bins: {label: {"n", "recall"}} over binary events."""
    which = np.digitize(dchi2, BINS, right=True)
    return {label: {"n": int((which == b).sum()),
                    "recall": float(correct[which == b].mean()) if (which == b).any() else float("nan")}
            for b, label in enumerate(BIN_LABELS)}


def ceiling_summary(y, pred, dchi2_pspl, dchi2_flat) -> dict:
    """Recall per Δχ² bin for the model and the oracle, and both accuracies."""
    oracle = oracle_predictions(dchi2_pspl, dchi2_flat, y)
    binary = y == 2
    single = y == 1
    return {"threshold": THRESHOLD, "bins": list(BIN_LABELS),
            "model_binary_recall": binned_recall(dchi2_pspl[binary], pred[binary] == 2),
            "oracle_binary_recall": binned_recall(dchi2_pspl[binary], oracle[binary] == 2),
            "model_accuracy": float((pred == y).mean()), "oracle_accuracy": float((oracle == y).mean()),
            # a point-source χ² test alone also calls finite-source single lenses binary
            "pspl_test_accuracy": float((np.where(single & (oracle == 1) & (dchi2_pspl > THRESHOLD), 2, oracle) == y).mean()),
            # the oracle at other thresholds: 25 is conservative, a likelihood-ratio test would go lower
            "oracle_accuracy_by_threshold": {str(t): float((oracle_predictions(dchi2_pspl, dchi2_flat, y, t) == y).mean())
                                             for t in (5.0, 10.0, 25.0, 50.0)},
            # shortcut check: binaries no single-lens fit can tell from one (Δχ² <= 0) should be
            # called binary no more often than single lenses are
            "binary_recall_dchi2_below_0": float((pred[binary & (dchi2_pspl <= 0)] == 2).mean())
            if (binary & (dchi2_pspl <= 0)).any() else float("nan"),
            "n_binary_dchi2_below_0": int((binary & (dchi2_pspl <= 0)).sum()),
            "single_lens_called_binary": float((pred[single] == 2).mean()) if single.any() else float("nan"),
            "single_lens_dchi2_above_threshold": float((dchi2_pspl[single] > THRESHOLD).mean()) if single.any()
            else float("nan"),
            "binary_dchi2_quantiles": {str(q): float(np.percentile(dchi2_pspl[binary], q)) for q in (10, 25, 50, 75, 90)}
            if binary.any() else {}}
