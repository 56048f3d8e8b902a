"""train.py / evaluate.py / predict.py run for real on tiny data."""
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_script, start_script

TINY = ["--d-model", "16", "--n-layers", "1", "--dropout", "0", "--no-progress"]


def train(tmp_path, data, *extra, name="run", cwd=ROOT):
    return run_script("train.py", "--data", data, "--output", str(tmp_path / "results"), "--experiment-name", name,
                      "--cache-dir", str(tmp_path), *TINY, *extra)


def weights(run_dir, which="last.pt"):
    return torch.load(os.path.join(run_dir, which), map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=1e-4), f"{k} differs: {(a[k] - b[k]).abs().max()}"


def test_two_process_ddp_equals_one_process(tmp_path, tiny_h5):
    """2 gloo processes with batch 4 each == 1 process with batch 8 (same global batch)."""
    # basic feature channels: what is checked is the distributed loop, not the single-lens fits
    common = ["--epochs", "2", "--model", "cnn_gru", "--lr", "3e-3", "--features", "basic", "--truncate-augment", "0"]
    r1 = train(tmp_path, tiny_h5, *common, "--batch-size", "8", name="one")
    assert r1.returncode == 0, r1.stderr
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "train.py",
           "--data", tiny_h5, "--output", str(tmp_path / "results"), "--experiment-name", "two",
           "--cache-dir", str(tmp_path), *TINY, *common, "--batch-size", "4"]
    r2 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "2 process(es)" in r2.stdout
    one, two = weights(tmp_path / "results" / "one"), weights(tmp_path / "results" / "two")
    assert_same_weights(one, two, atol=1e-5)
    start = create_initial(tmp_path / "results" / "one")
    assert any(not torch.allclose(one[k], start[k]) for k in one)  # training did move the weights
    m1 = [json.loads(l) for l in open(tmp_path / "results" / "one" / "metrics.jsonl")]
    m2 = [json.loads(l) for l in open(tmp_path / "results" / "two" / "metrics.jsonl")]
    assert m1[-1]["val_acc"] == m2[-1]["val_acc"]
    assert abs(m1[-1]["train_loss"] - m2[-1]["train_loss"]) < 1e-5
    assert not any(n.startswith("lensing_cache_") for n in os.listdir(tmp_path))  # cache removed at the end


def create_initial(run_dir):
    from models import create_model
    ckpt = torch.load(os.path.join(run_dir, "last.pt"), map_location="cpu", weights_only=True)
    torch.manual_seed(ckpt["config"]["seed"])
    return create_model(ckpt["model_name"], **ckpt["model_kwargs"]).state_dict()


def test_sigterm_then_relaunch_equals_uninterrupted(tmp_path, tiny_h5):
    args = ["--epochs", "6", "--batch-size", "2", "--model", "patch_transformer", "--features", "basic",
            "--truncate-augment", "0"]
    full = train(tmp_path, tiny_h5, *args, name="full")
    assert full.returncode == 0, full.stderr
    cmd = ["train.py", "--data", tiny_h5, "--output", str(tmp_path / "results"), "--experiment-name", "killed",
           "--cache-dir", str(tmp_path), *TINY, *args]
    proc = start_script(*cmd)
    metrics = tmp_path / "results" / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while not metrics.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "relaunch the same command to resume" in out
    saved = torch.load(tmp_path / "results" / "killed" / "last.pt", map_location="cpu", weights_only=True)
    assert saved["epoch"] < 6
    again = run_script(*cmd)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout
    assert_same_weights(weights(tmp_path / "results" / "full"), weights(tmp_path / "results" / "killed"), atol=1e-6)
    lines = [json.loads(l) for l in open(metrics)]
    assert [m["epoch"] for m in lines] == list(range(1, 7))


def test_seed_quick_start_commands(tmp_path):
    """The thesis README's three quick-start commands, unchanged, from its code/ folder."""
    code = tmp_path / "code"
    code.mkdir()
    (tmp_path / "data" / "raw").mkdir(parents=True)

    def run(*args):
        r = run_script(os.path.join(ROOT, args[0]), *args[1:], cwd=code)
        assert r.returncode == 0, r.stderr[-2000:]
        return r
    run("simulate.py", "--n_flat", "100", "--n_pspl", "100", "--n_binary", "100", "--binary_preset", "baseline",
        "--output", "../data/raw/test.h5")
    run("train.py", "--data", "../data/raw/test.h5", "--epochs", "5", "--batch-size", "32", "--hierarchical",
        "--use-aux-head")
    runs = os.listdir(code / "results")
    assert len(runs) == 1 and runs[0].startswith("d64_l4_hier")
    r = run("evaluate.py", "--experiment-name", "d64_l4_hier", "--data", "../data/raw/test.h5")
    assert "test split, 30 events" in r.stdout
    out = code / "results" / runs[0] / "eval_test"
    summary = json.load(open(out / "evaluation_summary.json"))
    assert summary["rows"] == "test split" and summary["metrics"]["n_events"] == 30
    for png in ("confusion_matrix", "roc_curves", "calibration", "per_class_metrics", "u0_dependency",
                "temporal_bias_check", "early_detection_curve", "example_light_curves", "evolution_flat_0",
                "recall_vs_dchi2"):
        assert (out / f"{png}.png").stat().st_size > 1000, png
    pred = np.load(out / "predictions.npz")
    split = np.load(code / "results" / runs[0] / "split.npz")
    assert np.array_equal(pred["rows"], split["test"])
    assert not set(split["test"]) & (set(split["train"]) | set(split["val"]))
    assert len(summary["early_detection"]["accuracy"]) == 6
    # the Δχ² ceiling: binary recall per bin for model and oracle, kept next to the data
    c = summary["ceiling"]
    assert sum(b["n"] for b in c["model_binary_recall"].values()) == int((pred["y_true"] == 2).sum())
    assert 0 <= c["oracle_accuracy"] <= 1 and set(c["oracle_binary_recall"]) == set(c["bins"])
    assert (tmp_path / "data" / "raw" / "test.h5.dchi2.npz").is_file()
    assert "oracle accuracy" in summary["headline"]
    # the operating point fixed on validation by training, kept in the checkpoint, used by evaluate
    best = torch.load(code / "results" / runs[0] / "best.pt", map_location="cpu", weights_only=False)
    point = best["operating_point"]
    assert point["binary_threshold"] >= 0.5 and point["n_single"] > 0
    assert summary["operating_point"] == point
    from tasks.microlensing_eval import decide
    assert np.array_equal(pred["y_pred"], decide(pred["probs"], point))
    assert summary["argmax"]["accuracy"] == float((pred["probs"].argmax(1) == pred["y_true"]).mean())
    # an ensemble must share its classes: a three-class run with a four-class one is one error line
    import shutil
    other = tmp_path / "four_class"
    shutil.copytree(code / "results" / runs[0], other)
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(other / name, map_location="cpu", weights_only=False)
        ckpt["class_names"] = ["flat", "pspl", "binary", "variable"]
        torch.save(ckpt, other / name)
    r = run_script("predict.py", "--runs", str(code / "results" / runs[0]), str(other), "--input",
                   str(tmp_path / "data" / "raw" / "test.h5"), "--output", str(tmp_path / "p.csv"))
    assert r.returncode != 0 and "must share their classes" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_seed_long_command(tmp_path, tiny_h5):
    r = run_script("train.py", "--data", tiny_h5, "--output", str(tmp_path / "results"), "--epochs", "2",
                   "--batch-size", "64", "--lr", "5e-4", "--weight-decay", "1e-4", "--warmup-epochs", "3",
                   "--d-model", "64", "--n-layers", "4", "--dropout", "0.3", "--window-size", "5",
                   "--hierarchical", "--use-aux-head", "--attention-pooling", "--stage1-weight", "1.0",
                   "--stage2-weight", "1.0", "--aux-weight", "0.5", "--accumulation-steps", "2", "--save-every", "1",
                   "--model", "cnn_gru", "--no-progress")
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "results" / "d64_l4_hier_cnn_gru_tiny_s42"
    assert {"config.json", "split.npz", "metrics.jsonl", "last.pt", "best.pt", "epoch_001.pt",
            "epoch_002.pt"} <= set(os.listdir(run_dir))
    ckpt = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["accumulation_steps"] == 2
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "best_metric", "stats", "split"}
    # --resume of a finished run continues in its own directory
    again = run_script("train.py", "--data", tiny_h5, "--resume", str(run_dir / "last.pt"), "--epochs", "3",
                       "--model", "cnn_gru", "--no-progress", "--output", str(tmp_path / "elsewhere"))
    assert again.returncode == 0, again.stderr
    assert len(open(run_dir / "metrics.jsonl").readlines()) == 3
    assert not (tmp_path / "elsewhere").exists()


def test_predict_on_samples_and_ensemble(tmp_path, tiny_h5, photometry_dir):
    # b also sees each curve in units of its tE and the years around its season (the context view)
    for name, extra in (("a", []), ("b", ["--scaled-bins", "32", "--context-bins", "32"])):
        assert train(tmp_path, tiny_h5, "--epochs", "1", "--seed", str(len(name)), *extra, name=name).returncode == 0
    r = run_script("evaluate.py", "--run", str(tmp_path / "results" / "b"), "--no-progress", "--fractions", "0.5", "1.0")
    assert r.returncode == 0, r.stderr
    summary = json.load(open(tmp_path / "results" / "b" / "eval_tiny" / "evaluation_summary.json"))
    grid = torch.load(tmp_path / "results" / "b" / "best.pt", map_location="cpu", weights_only=True)["grid"]
    assert grid["context_bins"] == 32 and grid["context_days"] == 15.0
    assert set(summary["variables"]["by_kind"]) == {"cv", "pulsator", "eclipsing", "lpv", "flare"}
    if summary["per_class"]["variable"]["support"]:  # the variables' own ceiling: those a single lens explains
        assert 0 <= summary["ceiling"]["variables_single_lens_like"]["all"] <= 1
    assert summary["three_class"]["n"] == sum(summary["per_class"][c]["support"] for c in ("flat", "pspl", "binary"))
    assert list(summary["recall_by_tE"]) == ["<1 d", "1-5 d", "5-30 d", "30-100 d", ">100 d"]
    assert sum(v["n"] for v in summary["recall_by_tE"].values()) == sum(summary["per_class"][c]["support"]
                                                                         for c in ("pspl", "binary"))
    # ground versions of the test split, quoted against the Δχ² ceiling of those same versions
    r = run_script("evaluate.py", "--run", str(tmp_path / "results" / "a"), "--no-progress", "--no-early-detection",
                   "--survey", "ground", "--survey-seed", "7")
    assert r.returncode == 0, r.stderr
    ground = json.load(open(tmp_path / "results" / "a" / "eval_tiny_ground" / "evaluation_summary.json"))
    assert 0 <= ground["ceiling"]["oracle_accuracy"] <= 1
    assert os.path.isfile(tiny_h5 + ".dchi2_ground7.npz") or os.path.isfile(
        tmp_path / "results" / "a" / "eval_tiny_ground" / "tiny.h5.dchi2_ground7.npz")
    runs = [str(tmp_path / "results" / n) for n in ("a", "b")]
    out = tmp_path / "pred.csv"
    r = run_script("predict.py", "--runs", *runs, "--input", photometry_dir, tiny_h5, "--output", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    import csv
    rows = list(csv.DictReader(open(out)))
    assert [r["id"] for r in rows[:2]] == ["ob140939_OGLE.dat", "ulwdc1_012_W149_season1.txt.gz"]
    assert len(rows) == 2 + 80
    for row in rows:  # the tiny file holds variables: four-class runs write p_variable
        p = [float(row[k]) for k in ("p_flat", "p_pspl", "p_binary", "p_variable")]
        assert abs(sum(p) - 1) < 1e-4 and row["class"] in ("flat", "pspl", "binary", "variable")
    # the OGLE curve spans years: it is cut to the 72-day window around its peak (2014, HJD' ~ 6800)
    assert 6700 < float(rows[0]["window_start"]) < 6900
    # the ensemble is the mean of the members' probabilities
    single = [list(csv.DictReader(open(tmp_path / f"{n}.csv"))) for n in ("a", "b")
              if run_script("predict.py", "--runs", str(tmp_path / "results" / n), "--input", photometry_dir,
                            "--output", str(tmp_path / f"{n}.csv"), "--no-progress").returncode == 0]
    assert len(single) == 2
    for k in ("p_flat", "p_binary"):
        assert abs(float(rows[0][k]) - (float(single[0][0][k]) + float(single[1][0][k])) / 2) < 2e-6


def one_error_line(r, prog):
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), r.stderr
    return lines[0]


def test_bad_inputs(tmp_path, tiny_h5):
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(2000))
    assert "not a readable HDF5" in one_error_line(train(tmp_path, str(corrupt)), "train.py")
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as f:
        f["images"] = np.zeros((3, 4, 4))
    assert "schema_version" in one_error_line(train(tmp_path, str(wrong)), "train.py")
    assert "unknown model 'nope'" in one_error_line(train(tmp_path, tiny_h5, "--model", "nope"), "train.py")
    assert "multiple of --patch-size" in one_error_line(train(tmp_path, tiny_h5, "--context-bins", "20"), "train.py")
    assert "needs a single-lens fit" in one_error_line(train(tmp_path, tiny_h5, "--context-bins", "32", "--features",
                                                             "basic"), "train.py")
    assert "no such file" in one_error_line(train(tmp_path, str(tmp_path / "missing.h5")), "train.py")
    # a run directory of another task
    run_dir = tmp_path / "results" / "other"
    run_dir.mkdir(parents=True)
    torch.save({"model": {}, "config": {"task": "lens"}, "model_name": "x", "model_kwargs": {}, "task": "lens",
                "stats": {}}, run_dir / "last.pt")
    assert "task 'lens'" in one_error_line(train(tmp_path, tiny_h5, name="other"), "train.py")
    r = run_script("evaluate.py", "--run", str(run_dir), "--data", tiny_h5)  # evaluate takes the run's task
    assert "cannot rebuild its model (unknown model 'x'" in one_error_line(r, "evaluate.py")
    r = run_script("evaluate.py", "--experiment-name", "zzz", "--output", str(tmp_path / "results"))
    assert "no run matching 'zzz'" in one_error_line(r, "evaluate.py")
    # photometry: NaN-only, empty, unknown type
    assert train(tmp_path, tiny_h5, "--epochs", "1", name="ok").returncode == 0
    nan_file = tmp_path / "nan.dat"
    nan_file.write_text("\n".join("2459000.%d nan nan" % i for i in range(20)))
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n")
    odd = tmp_path / "curve.xyz"
    odd.write_text("1 2 3\n")
    for bad, msg in ((nan_file, "0 usable epochs"), (empty, "no data rows"), (odd, "unknown file type")):
        r = run_script("predict.py", "--runs", str(tmp_path / "results" / "ok"), "--input", str(bad),
                       "--output", str(tmp_path / "p.csv"))
        assert msg in one_error_line(r, "predict.py")
        assert not (tmp_path / "p.csv").exists()
    r = run_script("train.py", "--data", tiny_h5, "--unknown-flag")
    assert "unrecognized arguments" in one_error_line(r, "train.py")


def test_task_follows_from_the_data_without_task(tmp_path, tiny_h5):
    """train.py without --task: seed 000's roots -> lens, class folders and image HDF5 files -> their
    task, a run to resume -> its task, the thesis's simulator file -> microlensing."""
    from argparse import Namespace

    from train import infer_task

    def task_of(**kw):
        return infer_task(Namespace(**{"resume": None, "train_roots": [], "train_roots_neg": [], "data": None,
                                       **kw}))[0]
    for name, folders in (("lens", ("lenses", "nonlenses")), ("substructure", ("no", "sphere", "vort")),
                          ("superres", ("LR", "HR"))):
        for folder in folders:
            (tmp_path / name / folder).mkdir(parents=True)
        assert task_of(data=str(tmp_path / name)) == name
    assert task_of(train_roots=["A"], train_roots_neg=["B"]) == "lens"
    with h5py.File(tmp_path / "images.h5", "w") as f:
        f.attrs["task"] = "substructure"
        f["images"] = np.zeros((2, 1, 4, 4))
    assert task_of(data=str(tmp_path / "images.h5")) == "substructure"
    assert task_of(data=tiny_h5) == "microlensing"
    assert task_of(data=str(tmp_path / "missing.h5")) == "microlensing"  # its reader reports the missing file
    run = tmp_path / "results" / "a_lens_run"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": "lens"}))
    assert task_of(resume=str(run), data=tiny_h5) == "lens"
    assert task_of(resume=str(run / "last.pt"), data=tiny_h5) == "lens"


def test_a_run_made_before_an_option_resumes_as_its_default():
    """Relaunching a run whose config predates --scaled-bins: the option's default is the same
    run, another value is a different one (one clear error)."""
    import pytest

    from tasks import microlensing as task
    from train import TrainError, check_same_run
    saved = {"task": "microlensing", "model": "patch_transformer", "seed": 42}
    config = {**saved, "scaled_bins": 0, "scaled_span": 4.0}
    keys = ("task", "model", "seed", "scaled_bins", "scaled_span")
    check_same_run(saved, config, "results/x", keys, task.IDENTITY_DEFAULTS)
    with pytest.raises(TrainError, match="scaled_bins"):
        check_same_run(saved, {**config, "scaled_bins": 128}, "results/x", keys, task.IDENTITY_DEFAULTS)
    with pytest.raises(TrainError, match="model"):
        check_same_run(saved, {**config, "model": "cnn_gru"}, "results/x", keys, task.IDENTITY_DEFAULTS)


def test_lensing_threshold_calibrated_on_more_variables(tmp_path, tiny_h5):
    """evaluate.py (or train.py) --calibrate-variables re-chooses the lensing threshold on another
    file's variables (the share the run was trained with), keeps it in the checkpoint beside the
    validation split's, and predict.py uses it; the training file itself is refused."""
    import csv

    from tasks.microlensing_eval import _threshold
    assert train(tmp_path, tiny_h5, "--epochs", "1", name="a").returncode == 0
    run_dir = tmp_path / "results" / "a"
    before = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)["operating_point"]
    calib = tmp_path / "variables.h5"
    r = run_script("simulate.py", "--n-flat", "0", "--n-pspl", "0", "--n-binary", "0", "--n-variable", "40", "--seed", "8",
                   "--output", str(calib), "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_script("evaluate.py", "--run", str(run_dir), "--calibrate-variables", tiny_h5, "--no-progress")
    assert "the run's training file" in one_error_line(r, "evaluate.py")
    r = run_script("evaluate.py", "--run", str(run_dir), "--calibrate-variables", str(tmp_path / "none.h5"), "--no-progress")
    assert "none.h5: not a readable HDF5 file" in one_error_line(r, "evaluate.py")
    r = run_script("evaluate.py", "--run", str(run_dir), "--calibrate-variables", str(calib), "--no-progress",
                   "--no-early-detection", "--no-ceiling")
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    point = ckpt["operating_point"]
    assert ckpt["operating_point_validation"] == before and point["n_variable"] == 40
    assert point["binary_threshold"] == before["binary_threshold"] and "variables.h5" in point["chosen_by"]
    # the lensing recall at 1% of variables is quoted at the threshold those 40 set, not the test split's few
    summary = json.load(open(run_dir / "eval_tiny" / "evaluation_summary.json"))
    at = summary["variables"]["at_false_alarm"]
    assert at["variables"] == "calibration file" and at["n_variable"] == 40
    assert max(0.5, at["threshold"]) == pytest.approx(point["lensed_threshold"], abs=1e-6)  # (the op's floor is 0.5)
    if before["n_variable"] < 40:  # the spread a validation split's number of variables leaves, from these 40
        low, high = point["validation_size_range90"]
        assert 0.5 <= low <= high <= 1
    out = tmp_path / "calib.csv"
    r = run_script("predict.py", "--runs", str(run_dir), "--input", str(calib), "--output", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out)))
    scores = np.array([float(x["p_pspl"]) + float(x["p_binary"]) for x in rows])
    assert point["lensed_threshold"] == pytest.approx(_threshold(scores, before["variable_false_alarm"]), abs=1e-5)
    lensing = [x["class"] in ("pspl", "binary") for x in rows]
    assert sum(lensing) == (scores > point["lensed_threshold"]).sum()   # predict.py decides with the new threshold
    # the same from train.py, once trained; the training file refused before any training
    r = train(tmp_path, tiny_h5, "--epochs", "1", "--calibrate-variables", tiny_h5, name="c")
    assert "the run's training file" in one_error_line(r, "train.py") and not (tmp_path / "results" / "c").exists()
    assert train(tmp_path, tiny_h5, "--epochs", "1", "--calibrate-variables", str(calib), name="c").returncode == 0
    ckpt = torch.load(tmp_path / "results" / "c" / "best.pt", map_location="cpu", weights_only=True)
    assert "variables.h5" in ckpt["operating_point"]["chosen_by"] and ckpt["operating_point"]["n_variable"] == 40
    assert ckpt["operating_point_validation"]["n_variable"] < 40
