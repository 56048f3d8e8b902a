"""evaluate.py for --task microlensing: metrics, the Δχ² ceiling, early detection and plots."""
from __future__ import annotations

import argparse
import os

import numpy as np

from data import microlensing as task_data
from data.lightcurves import MASK_CHANNEL
from data import microlensing_ceiling as ceiling
from data import microlensing_h5 as mlh5
from engine.inference import predict_log_probs
from tasks import TaskError

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
BINARY_FALSE_ALARM = 0.03  # default share of validation single lenses the operating point lets be called binary
VARIABLE_FALSE_ALARM = 0.01  # default share of validation variables it lets be called lensing
TE_BINS = (1.0, 5.0, 30.0, 100.0)  # days: recall per tE bin <1, 1-5, 5-30, 30-100, >100 d
TE_LABELS = ("<1 d", "1-5 d", "5-30 d", "30-100 d", ">100 d")


# --------------------------------------------------------------------------- the operating point
def binary_score(probs) -> np.ndarray:
    """P(binary | lensed) of (N, 3 or 4) probabilities (the hierarchical model's stage-2 sigmoid)."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs[:, 2] / np.maximum(probs[:, 1] + probs[:, 2], 1e-300)


def lensing_score(probs) -> np.ndarray:
    """P(lensing) = P(pspl) + P(binary) of (N, 3 or 4) probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs[:, 1] + probs[:, 2]


def _threshold(scores, false_alarm: float) -> float:
    """The smallest threshold >= 0.5 that at most `false_alarm` of these scores exceed."""
    scores = np.sort(np.asarray(scores))[::-1]
    allowed = int(np.floor(false_alarm * len(scores)))
    return max(0.5, float(scores[allowed]) if allowed < len(scores) else 0.5)


def _called_lensed(probs, point):
    if point and "lensed_threshold" in point:
        return lensing_score(probs) > point["lensed_threshold"]
    pred = np.asarray(probs).argmax(1)
    return (pred == 1) | (pred == 2)


def operating_point(y, log_probs, false_alarm: float = BINARY_FALSE_ALARM,
                    variable_false_alarm: float = VARIABLE_FALSE_ALARM) -> dict:
    """The thresholds chosen on validation predictions (y, log-probabilities (N, 3 or 4)).

    With a variable class, an event is lensed where P(pspl) + P(binary) > lensed_threshold: the
    smallest threshold >= 0.5 at which at most `variable_false_alarm` of the validation
    variables are called lensing (the false-alarm rate a survey pays); without one, where
    flat is not the most probable class. A lensed event is binary where P(binary | lensed) >
    binary_threshold: the smallest threshold >= 0.5 (argmax) at which at most `false_alarm` of
    the validation single lenses called lensed are called binary, the way an anomaly search fixes
    its false-alarm rate on single-lens events. Unlensed events are flat or variable by argmax.
    Never chosen on a test split.
    """
    y = np.asarray(y)
    probs = np.exp(np.asarray(log_probs, dtype=np.float64))
    point = {}
    if probs.shape[1] == 4:
        variable = y == 3
        point.update(lensed_threshold=_threshold(lensing_score(probs[variable]), variable_false_alarm),
                     variable_false_alarm=float(variable_false_alarm), n_variable=int(variable.sum()))
    single = y == 1
    lensed = _called_lensed(probs, point)
    candidates = np.sort(binary_score(probs[single & lensed]))[::-1]
    allowed = int(np.floor(false_alarm * single.sum()))
    threshold = float(candidates[allowed]) if allowed < len(candidates) else 0.5
    point.update(binary_threshold=max(0.5, threshold), false_alarm=float(false_alarm), n_single=int(single.sum()))
    return point


def decide(probs, point: dict | None) -> np.ndarray:
    """Classes of (N, 3 or 4) probabilities at an operating point (None: argmax)."""
    probs = np.asarray(probs)
    pred = probs.argmax(1)
    if not point:
        return pred
    lensed = _called_lensed(probs, point)
    unlensed = 3 * (probs[:, 3] > probs[:, 0]) if probs.shape[1] == 4 else 0
    return np.where(lensed, np.where(binary_score(probs) > point["binary_threshold"], 2, 1), unlensed)


def add_evaluate_args(parser):
    g = parser.add_argument_group("microlensing")
    g.add_argument("--early-detection", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--fractions", type=float, nargs="+", default=list(DEFAULT_FRACTIONS),
                   help="fractions of the season observed for the early-detection curve")
    g.add_argument("--n-evolution-per-type", type=int, default=2, help="probability-evolution plots per class")
    g.add_argument("--survey", choices=("as-simulated", "ground"), default="as-simulated",
                   help="ground: evaluate ground-survey versions of the curves (data/survey_augment.py), drawn "
                        "with --survey-seed, which differs from the seed training augmentation used")
    g.add_argument("--survey-seed", type=int, default=1000)
    g.add_argument("--decision", choices=("operating-point", "argmax"), default="operating-point",
                   help="operating-point: the binary threshold the run chose on its validation split "
                        "(train.py --binary-false-alarm; for older runs chosen here, on that split, when the data "
                        "file is the training file); argmax: the most probable class")
    g.add_argument("--calibrate-variables", metavar="FILE",
                   help="a simulator file of variables (label 3; other rows ignored) that is not the training file: "
                        "the lensing threshold is re-chosen on them (the share --variable-false-alarm the run was "
                        "trained with) and kept in the checkpoint for evaluate.py and predict.py. A 1%% threshold "
                        "set by a validation split's few hundred variables rests on 2-3 curves; a few thousand "
                        "(simulate.py --n-variable 2500, another seed) fix it")
    g.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=True,
                   help="binary recall per Δχ² bin (χ² of the best PSPL fit − χ² of the true model) and the "
                        "accuracy of the oracle that knows it; kept in <data>.dchi2.npz once computed")


def select_rows(ckpt, data_path):
    """Rows to evaluate: the test split when data_path is the training file, else all rows."""
    with mlh5.open_checked(data_path) as f:
        n = len(f["labels"])
    config = ckpt["config"]
    if "data_fingerprint" in config:  # same content at any path (e.g. a copy staged to /dev/shm)
        same = mlh5.fingerprint(data_path) == config["data_fingerprint"]
    else:
        same = os.path.abspath(data_path) == config.get("data_abs")
    if same:
        rows = ckpt["split"]["test"].numpy()
        if len(rows) == 0:
            raise TaskError(f"{data_path}: the run's test split is empty (trained with --test-fraction 0)")
        return rows, "test split"
    return np.arange(n), "all rows"


def metrics_summary(y, probs, pred):
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
    out = {"accuracy": float((pred == y).mean()), "n_events": int(len(y)),
           "precision_macro": float(precision_score(y, pred, average="macro", zero_division=0)),
           "recall_macro": float(recall_score(y, pred, average="macro", zero_division=0)),
           "f1_macro": float(f1_score(y, pred, average="macro", zero_division=0))}
    if len(np.unique(y)) == probs.shape[1]:
        out["auroc_macro"] = float(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
        out["auroc_weighted"] = float(roc_auc_score(y, probs, multi_class="ovr", average="weighted"))
    rng = np.random.default_rng(0)
    boot = [(pred[i] == y[i]).mean() for i in (rng.integers(0, len(y), len(y)) for _ in range(1000))]
    out["accuracy_ci95"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    return out


def recall_by_tE(tE, y, pred) -> dict:
    """Per tE bin (TE_LABELS) of the lensed events: how many, the share called lensing (PSPL or
    binary) and the share given their own class."""
    lensed = (y == 1) | (y == 2)
    which = np.digitize(tE, TE_BINS)
    out = {}
    for b, label in enumerate(TE_LABELS):
        rows = lensed & (which == b)
        out[label] = {"n": int(rows.sum()),
                      "lensing_recall": float(np.isin(pred[rows], (1, 2)).mean()) if rows.any() else float("nan"),
                      "class_recall": float((pred[rows] == y[rows]).mean()) if rows.any() else float("nan")}
    return out


def variable_summary(y, probs, pred, params, false_alarm: float = VARIABLE_FALSE_ALARM,
                     other_seasons=None, reference: dict | None = None) -> dict:
    """What the variable class costs a survey: the share of each variable kind called lensing
    (PSPL or binary) at the operating point, and the lensing recall at the P(lensing) threshold
    that `false_alarm` of these variables exceed (a point of the lensing-vs-variable ROC).
    other_seasons: (N,) bool (`other_seasons_seen`): the same apart for curves whose file holds
    other seasons and curves of their season only. reference: {"probs", "other_seasons"} of
    variables simulated apart (`--calibrate-variables`): the thresholds are set on those instead
    of the evaluated variables (2,500 of them put a 1% threshold on 25 curves, a test split's 250
    on 2)."""
    from physics.microlensing.variables import KINDS
    variable, lensed = y == 3, (y == 1) | (y == 2)
    called, called_argmax = np.isin(pred, (1, 2)), np.isin(np.asarray(probs).argmax(1), (1, 2))
    kinds = params["var_kind"] if "var_kind" in (params.dtype.names or ()) else np.full(len(y), np.nan)
    out = {"n_variable": int(variable.sum()), "called_lensing": float(called[variable].mean()) if variable.any() else
           float("nan"), "by_kind": {}}
    for k, kind in enumerate(KINDS):
        rows = variable & (kinds == k)
        out["by_kind"][kind] = {"n": int(rows.sum()),
                                "called_lensing": float(called[rows].mean()) if rows.any() else float("nan"),
                                "called_variable": float((pred[rows] == 3).mean()) if rows.any() else float("nan"),
                                "called_lensing_argmax": float(called_argmax[rows].mean()) if rows.any() else float("nan")}
    ref_probs = reference["probs"] if reference else probs[variable]
    ref_view = reference.get("other_seasons") if reference else (other_seasons[variable] if other_seasons is not None
                                                                  else None)
    if len(ref_probs) and lensed.any():
        out["at_false_alarm"] = _recall_at_false_alarm(probs[lensed], ref_probs, false_alarm)
        out["at_false_alarm"]["n_variable"] = int(len(ref_probs))
        out["at_false_alarm"]["variables"] = "calibration file" if reference else "evaluated"
    out["lensing_recall"] = float(called[lensed].mean()) if lensed.any() else float("nan")
    if other_seasons is not None and ref_view is not None:  # a file with other seasons against one of its season only
        out["by_view"] = {}
        for view, rows, ref_rows in (("other seasons", other_seasons, ref_view),
                                     ("one season", ~other_seasons, ~ref_view)):
            v, le = variable & rows, lensed & rows
            out["by_view"][view] = {"n_variable": int(ref_rows.sum()), "n_lensed": int(le.sum()),
                                    "called_lensing": float(called[v].mean()) if v.any() else float("nan"),
                                    **({"at_false_alarm": _recall_at_false_alarm(probs[le], ref_probs[ref_rows],
                                                                                 false_alarm)}
                                       if ref_rows.any() and le.any() else {})}
    return out


def _recall_at_false_alarm(lensed_probs, variable_probs, false_alarm: float) -> dict:
    """The share of lensed events above the P(lensing) threshold that `false_alarm` of the
    variables exceed."""
    scores = np.sort(lensing_score(variable_probs))[::-1]
    allowed = int(np.floor(false_alarm * len(scores)))  # variables allowed above the threshold
    threshold = float(scores[allowed]) if allowed < len(scores) else 0.0
    return {"false_alarm": float(false_alarm), "threshold": threshold,
            "lensing_recall": float((lensing_score(lensed_probs) > threshold).mean())}


def other_seasons_seen(features, grid) -> np.ndarray | None:
    """(N,) bool: the curve has epochs in its context view outside its own season (a file of
    several seasons, or a simulated star's other seasons); None for a run without a context view."""
    n = int(grid.get("context_bins") or 0)
    if not n:
        return None
    days = float(grid["context_days"])
    centres = (np.arange(n) + 0.5 - n / 2.0) * days  # bin centres from the window's centre
    outside = np.abs(centres) > grid["season_days"] / 2.0 + days / 2.0
    return (np.asarray(features[:, -n:, MASK_CHANNEL])[:, outside] > 0).any(1)


def evaluate(ckpt, model, ckpt_path, args) -> dict:
    """Metrics and plots of a run on its test split or on every event of another file."""
    from plots import microlensing_eval as plots
    run_dir = os.path.dirname(os.path.abspath(ckpt_path))
    grid, stats, names = ckpt["grid"], ckpt["stats"], tuple(ckpt["class_names"])
    data_path = args.data[0] if args.data else ckpt["config"]["data_abs"]
    if not os.path.isfile(data_path):
        raise TaskError(f"{data_path}: no such file")
    survey_seed = args.survey_seed if args.survey == "ground" else None
    try:
        rows, what = select_rows(ckpt, data_path)
        what += ", ground-survey versions" if survey_seed is not None else ""
        features, y, params = task_data.h5_features(data_path, grid, rows, progress=not args.no_progress,
                                                    survey_seed=survey_seed)
    except (mlh5.SchemaError, task_data.DataError) as err:
        raise TaskError(str(err)) from None
    suffix = "_ground" if survey_seed is not None else ""
    out_dir = args.out_dir or os.path.join(run_dir, f"eval_{os.path.splitext(os.path.basename(data_path))[0]}{suffix}")
    os.makedirs(out_dir, exist_ok=True)
    print(f"evaluating {ckpt_path} (epoch {ckpt['epoch']}) on {data_path} ({what}, {len(y)} events)", flush=True)

    def log_probs_of(feats, desc="predict"):
        return predict_log_probs(model, feats, stats, args.batch_size, args.device, not args.no_progress, desc)

    probs = np.exp(log_probs_of(features))
    reference = {}  # the calibration file's variables, where one is given
    point = _decision(ckpt, data_path, what.startswith("test split"), grid, log_probs_of, args, ckpt_path, reference)
    pred = decide(probs, point)
    colors = plots.palette(args.colorblind_safe)
    P = lambda name: os.path.join(out_dir, name)  # noqa: E731
    summary = {"run": run_dir, "checkpoint": ckpt_path, "epoch": int(ckpt["epoch"]), "data": os.path.abspath(data_path),
               "rows": what, "model": ckpt["model_name"], "metrics": metrics_summary(y, probs, pred),
               "operating_point": point}
    argmax = probs.argmax(1)
    summary["argmax"] = {"accuracy": float((argmax == y).mean()),
                         "recall": {n: float((argmax[y == c] == c).mean()) for c, n in enumerate(names) if (y == c).any()}}
    summary["confusion"] = plots.confusion_matrix_plot(y, pred, names, P("confusion_matrix.png"), colors=colors)
    summary["roc"] = plots.roc_plot(y, probs, names, P("roc_curves.png"), n_bootstrap=args.n_bootstrap,
                                    seed=args.seed, colors=colors)
    summary["calibration"] = plots.reliability_plot(y, probs, P("calibration.png"), colors=colors)
    summary["metrics"]["ece"] = summary["calibration"]["ece"]
    summary["per_class"] = plots.per_class_metrics_plot(y, pred, names, P("per_class_metrics.png"), colors=colors)
    summary["u0_dependency"] = plots.u0_dependency_plot(params["u0"], y, pred, P("u0_dependency.png"), colors=colors)
    if "tE" in (params.dtype.names or ()):
        summary["recall_by_tE"] = recall_by_tE(params["tE"], y, pred)
    if len(names) == 4:
        # the calibration file's variables are dense curves: ground versions keep their own thresholds
        summary["variables"] = variable_summary(y, probs, pred, params,
                                                reference=(reference or None) if survey_seed is None else None,
                                                other_seasons=other_seasons_seen(features, grid))
        lensing_rows = y < 3  # the three lensing classes as a three-class problem, as the oracle sees them
        if lensing_rows.any():  # a file of variables only (variables.h5) has none
            summary["three_class"] = {
                "n": int(lensing_rows.sum()), "accuracy": float((pred[lensing_rows] == y[lensing_rows]).mean()),
                "accuracy_argmax": float((probs[lensing_rows, :3].argmax(1) == y[lensing_rows]).mean())}
    if args.ceiling:  # the Δχ² of the curves evaluated: as simulated, or their ground versions
        summary["ceiling"] = _ceiling(data_path, rows, y, pred, params, out_dir, P, colors, not args.no_progress,
                                      survey_seed)
    summary["t0_check"] = plots.t0_check_plot(params["t0"], y, pred, names, P("temporal_bias_check.png"),
                                              season_days=grid["season_days"], colors=colors)
    np.savez(P("predictions.npz"), rows=rows, y_true=y, y_pred=pred, probs=probs, u0=params["u0"], t0=params["t0"],
             class_names=np.array(names))

    raw_rows = np.sort(rows[_examples(y, 4 * max(args.n_evolution_per_type, 3), args.seed)])
    raw = mlh5.load(data_path, raw_rows)
    acc = []
    if args.early_detection:
        per_class = {n: [] for n in names}
        for frac in args.fractions:
            feats, _, _ = task_data.h5_features(data_path, grid, rows, progress=False, truncate_fraction=frac,
                                                survey_seed=survey_seed)
            p = decide(np.exp(log_probs_of(feats, f"early {frac:.0%}")), point)
            acc.append(float((p == y).mean()))
            for c, n in enumerate(names):
                per_class[n].append(float((p[y == c] == c).mean()) if (y == c).any() else float("nan"))
        summary["early_detection"] = plots.early_detection_plot(args.fractions, acc, P("early_detection_curve.png"),
                                                                per_class=per_class, class_names=names, colors=colors)
        summary["evolution"] = _evolution_plots(raw, data_path, raw_rows, grid, log_probs_of, names,
                                                args.n_evolution_per_type, P, colors)
    # the file's own path to the features (its context days too, where the run has a context view)
    raw_pred = np.exp(log_probs_of(task_data.h5_features(data_path, grid, raw_rows, progress=False)[0]))
    plots.example_grid(raw["time"], raw["mag"], raw["mag_err"], raw["labels"].astype(int), decide(raw_pred, point),
                       raw_pred, names, P("example_light_curves.png"), seed=args.seed, colors=colors)
    m = summary["metrics"]
    recall = ", ".join(f"{n} {summary['per_class'][n]['recall']:.3f}" for n in names)
    early = " | early detection " + ", ".join(f"{f:.0%}: {a:.3f}" for f, a in zip(args.fractions, acc)) if acc else ""
    ceil = ""
    if "three_class" in summary:
        t = summary["three_class"]
        ceil = f" | flat/PSPL/binary rows: accuracy {t['accuracy']:.4f} (argmax over the three {t['accuracy_argmax']:.4f})"
    if "ceiling" in summary:
        c = summary["ceiling"]
        ceil += (f" | oracle accuracy {c['oracle_accuracy']:.4f}; binary recall by Δχ² "
                 + ", ".join(f"{k}: {v['recall']:.2f}" for k, v in c["model_binary_recall"].items()))
        if "variables_single_lens_like" in c:
            ceil += (" | variables a single lens fits within Δχ² 25: "
                     + ", ".join(f"{k} {v:.2f}" for k, v in c["variables_single_lens_like"].items()))
    rule = f"binary threshold {point['binary_threshold']:.3f}" if point else "argmax"
    if point and "lensed_threshold" in point:
        rule += f", lensing threshold {point['lensed_threshold']:.3f}"
    if "recall_by_tE" in summary:
        early = " | lensing recall by tE " + ", ".join(f"{k}: {v['lensing_recall']:.2f} (n={v['n']})"
                                                       for k, v in summary["recall_by_tE"].items() if v["n"]) + early
    if "variables" in summary:
        v = summary["variables"]
        early = (f" | variables called lensing {v['called_lensing']:.3f} ("
                 + ", ".join(f"{k} {d['called_lensing']:.2f}" for k, d in v["by_kind"].items() if d["n"]) + ")"
                 + (f"; lensing recall at {v['at_false_alarm']['false_alarm']:.0%} of the "
                    f"{v['at_false_alarm']['n_variable']} {v['at_false_alarm']['variables']} variables "
                    f"{v['at_false_alarm']['lensing_recall']:.3f}" if "at_false_alarm" in v else "")
                 + "".join(f", files of {k} {d['at_false_alarm']['lensing_recall']:.3f} "
                           f"({d['n_lensed']} lensed, {d['n_variable']} variables)"
                           for k, d in v.get("by_view", {}).items() if "at_false_alarm" in d) + early)
    summary["headline"] = (f"accuracy {m['accuracy']:.4f} [{m['accuracy_ci95'][0]:.3f}, {m['accuracy_ci95'][1]:.3f}] "
                           f"({rule}; argmax {summary['argmax']['accuracy']:.4f}) "
                           f"| recall {recall} | ECE {m['ece']:.3f}{ceil}{early}")
    summary["out_dir"] = out_dir
    return summary


def _decision(ckpt, data_path, training_file, grid, log_probs_of, args, ckpt_path=None, reference=None):
    """The operating point evaluate uses (None: argmax): the checkpoint's, else, for a run kept
    without one, chosen on the run's validation split of the training file (full curves).
    reference: a dict filled with the calibration variables' probabilities (calibrate_variables)."""
    if getattr(args, "calibrate_variables", None):
        point = calibrate_variables(ckpt, ckpt_path, args.calibrate_variables, grid, log_probs_of, args, reference)
        if args.decision != "argmax":
            return point
    if args.decision == "argmax":
        return None
    if ckpt.get("operating_point"):
        return ckpt["operating_point"]
    if not training_file:
        print("no operating point in this run and no validation split in this file: argmax", flush=True)
        return None
    val = ckpt["split"]["val"].numpy()
    feats, y_val, _ = task_data.h5_features(data_path, grid, val, progress=not args.no_progress)
    point = operating_point(y_val, log_probs_of(feats, "validation"))
    point["chosen_by"] = "evaluate.py on the validation split (full curves)"
    print(f"operating point chosen on the validation split: binary threshold {point['binary_threshold']:.3f}", flush=True)
    return point


def calibration_rows(path, training_fingerprint) -> np.ndarray:
    """The variables (label 3) of a --calibrate-variables file; one TaskError line for a file
    that is unreadable, holds none, or is the training file."""
    try:
        if mlh5.fingerprint(path) == training_fingerprint:
            raise TaskError(f"{path}: the run's training file; calibrate on variables simulated apart (another seed)")
        with mlh5.open_checked(path) as f:
            rows = np.flatnonzero(f["labels"][:] == 3)
    except mlh5.SchemaError as err:
        raise TaskError(str(err)) from None
    if not len(rows):
        raise TaskError(f"{path}: no variables (label 3) to calibrate the lensing threshold on")
    return rows


def calibrate_variables(ckpt, ckpt_path, path, grid, log_probs_of, args, reference=None) -> dict:
    """The run's operating point with its lensing threshold re-chosen on the variables of `path`
    (the threshold at most variable_false_alarm of them exceed), saved in the checkpoint (the
    validation split's point kept beside it as operating_point_validation). The binary threshold
    stays the validation split's. reference (a dict): filled with those variables' probabilities
    and `other_seasons_seen`."""
    import torch

    from engine.checkpoint import save_checkpoint
    point = dict(ckpt.get("operating_point_validation") or ckpt.get("operating_point") or {})
    if "lensed_threshold" not in point:
        raise TaskError(f"{ckpt_path}: a run without a variable class (or an operating point): no lensing threshold "
                        f"to calibrate")
    rows = calibration_rows(path, ckpt["config"].get("data_fingerprint"))
    try:
        feats, _, _ = task_data.h5_features(path, grid, rows, progress=not args.no_progress)
    except (mlh5.SchemaError, task_data.DataError) as err:
        raise TaskError(str(err)) from None
    probs = np.exp(log_probs_of(feats, "calibration"))
    scores = lensing_score(probs)
    if reference is not None:
        reference.update(probs=probs, other_seasons=other_seasons_seen(feats, grid))
    new = dict(point, lensed_threshold=_threshold(scores, point["variable_false_alarm"]), n_variable=int(len(rows)),
               chosen_by=f"variables of {os.path.abspath(path)}")
    n_val = int(point.get("n_variable", 0))
    if 0 < n_val < len(rows):  # how far a validation split's number of these variables could have put it
        rng = np.random.default_rng(0)
        draws = [_threshold(rng.choice(scores, n_val, replace=False), point["variable_false_alarm"]) for _ in range(2000)]
        new["validation_size_range90"] = [float(np.quantile(draws, 0.05)), float(np.quantile(draws, 0.95))]
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    state["operating_point_validation"] = point
    state["operating_point"] = new
    save_checkpoint(state, ckpt_path)
    spread = (" (from {} of these: {:.3f}-{:.3f} in 90% of draws)".format(n_val, *new["validation_size_range90"])
              if "validation_size_range90" in new else "")
    print(f"lensing threshold {point['lensed_threshold']:.3f} ({point.get('n_variable', '?')} validation variables) "
          f"-> {new['lensed_threshold']:.3f} ({len(rows)} variables of {path}){spread}; saved in {ckpt_path}",
          flush=True)
    return new


def _ceiling(data_path, rows, y, pred, params, out_dir, P, colors, progress, survey_seed=None) -> dict:
    """Model vs the true-model oracle, per Δχ² bin (data.microlensing_ceiling), on the flat, PSPL
    and binary rows; for variables, the share of each kind a single-lens fit explains as well as
    its true curve (Δχ² <= 25): no classifier can call those non-lensing from this season alone.
    With survey_seed, all of it on the ground versions evaluated. Δχ² kept in a sidecar."""
    from physics.microlensing.variables import KINDS
    from plots import microlensing_eval as plots
    try:
        d = ceiling.annotations(data_path, rows, fallback_dir=out_dir, progress=progress, survey_seed=survey_seed)
    except mlh5.SchemaError as err:
        raise TaskError(str(err)) from None
    variable = y == 3
    out = {}
    if variable.any():
        like = d["dchi2_pspl"] <= ceiling.THRESHOLD
        kinds = params["var_kind"]
        out["variables_single_lens_like"] = {
            "all": float(like[variable].mean()),
            **{kind: float(like[variable & (kinds == k)].mean()) for k, kind in enumerate(KINDS)
               if (variable & (kinds == k)).any()}}
    keep = y < 3
    np.savez(P("dchi2.npz"), rows=rows, **d)
    rows, y, pred, d = rows[keep], y[keep], pred[keep], {k: v[keep] for k, v in d.items()}
    out.update(ceiling.ceiling_summary(y, pred, d["dchi2_pspl"], d["dchi2_flat"]))
    binary = y == 2
    oracle = ceiling.oracle_predictions(d["dchi2_pspl"], d["dchi2_flat"], y)
    out["plot"] = plots.dchi2_recall_plot(d["dchi2_pspl"][binary], pred[binary] == 2, oracle[binary] == 2,
                                          ceiling.BINS, ceiling.BIN_LABELS, P("recall_vs_dchi2.png"), colors=colors)
    return out


def _examples(y, n_per_class, seed):
    """Positions (into the evaluated rows) of up to n_per_class random events per class."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(y == c))[:n_per_class] for c in np.unique(y)]
    return np.concatenate(picks) if picks else np.zeros(0, int)


def _evolution_plots(raw, data_path, raw_rows, grid, log_probs_of, names, n_per_class, P, colors, n_steps=24):
    """Probabilities of a few events as the season is observed, each from its truncated curve
    (and, with a context view, the context days up to the same time)."""
    from plots import microlensing_eval as plots
    fractions = np.linspace(1.0 / n_steps, 1.0, n_steps)
    result = {}
    labels = raw["labels"].astype(int)
    chosen = np.concatenate([np.flatnonzero(labels == c)[:n_per_class] for c in range(len(names))]).astype(int)
    chosen.sort()
    all_probs = np.stack([np.exp(log_probs_of(task_data.h5_features(data_path, grid, raw_rows[chosen], progress=False,
                                                                     truncate_fraction=f)[0], "evolution"))
                          for f in fractions], axis=1) if len(chosen) else None      # (events, steps, classes)
    for c, name in enumerate(names):
        for k, i in enumerate(np.flatnonzero(labels == c)[:n_per_class]):
            probs = all_probs[int(np.searchsorted(chosen, i))]
            result[f"{name}_{k}"] = plots.evolution_plot(
                raw["time"], raw["mag"][i], raw["mag_err"][i], fractions, probs, c, names,
                P(f"evolution_{name}_{k}.png"), title=f"{name} event {k}", colors=colors)
    return result


def compare_columns(summary) -> dict:
    """What evaluate.py --compare shows of a run's evaluation."""
    m = summary["metrics"]
    return {"accuracy": m["accuracy"], "auroc_macro": m.get("auroc_macro", float("nan")), "ece": m["ece"]}


