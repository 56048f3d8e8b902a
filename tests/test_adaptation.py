"""Unsupervised domain adaptation (`train.py --adapt-data`, engine/adaptation.py): the run logs
its domain loss apart, selects on the labelled validation split, evaluates and predicts like any
run, resumes after a kill to the same weights, and refuses unusable targets with one line."""
import json
import os
import signal
import time

import numpy as np
import torch

from engine.checkpoint import build_from_checkpoint
from tests.conftest import run_script, start_script
from tests.test_substructure import one_error_line, write_class_folders

COMMON = ["--task", "substructure", "--model", "resnet18", "--batch-size", "8", "--no-progress", "--seed", "3"]


def folders(tmp_path):
    write_class_folders(tmp_path / "src", n=8, size=32, seed=1)
    write_class_folders(tmp_path / "tgt", n=4, size=32, seed=2)
    return str(tmp_path / "src"), str(tmp_path / "tgt")


def test_adapted_run_logs_its_domain_loss_resumes_and_predicts(tmp_path):
    src, tgt = folders(tmp_path)
    base = ["train.py", *COMMON, "--data", src, "--adapt-data", tgt, "--output", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path), "--epochs", "4"]
    full = run_script(*base, "--experiment-name", "full")
    assert full.returncode == 0, full.stderr[-3000:]
    assert "adaptation target: 12 unlabelled images (1x32x32)" in full.stdout
    lines = [json.loads(line) for line in open(tmp_path / "runs" / "full" / "metrics.jsonl")]
    assert all(m["train_loss_domain"] > 0.3 and m["val_loss_domain"] == 0 for m in lines)  # logged apart
    ckpt = torch.load(tmp_path / "runs" / "full" / "best.pt", weights_only=True)
    assert ckpt["model_name"] == "domain_adversarial" and ckpt["model_kwargs"]["backbone"] == "resnet18"
    last = torch.load(tmp_path / "runs" / "full" / "last.pt", weights_only=True)
    assert int(last["model"]["steps"]) == ckpt["model_kwargs"]["total_steps"] == 4 * 2  # 16 train images, batch 8
    # killed after its first epoch, relaunched: the same weights as the uninterrupted run
    cmd = [*base, "--experiment-name", "killed"]
    proc = start_script(*cmd)
    metrics = tmp_path / "runs" / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while not metrics.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    again = run_script(*cmd)
    assert again.returncode == 0 and "resuming" in again.stdout, again.stderr[-3000:]
    a = torch.load(tmp_path / "runs" / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "runs" / "killed" / "last.pt", weights_only=True)["model"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
    # evaluate and predict see an ordinary classifier (the domain head is skipped)
    r = run_script("evaluate.py", "--run", str(tmp_path / "runs" / "full"), "--tta", "1", "--n-bootstrap", "5",
                   "--no-progress")
    assert r.returncode == 0 and "macro AUC" in r.stdout, r.stderr[-3000:]
    out = tmp_path / "p.csv"
    r = run_script("predict.py", "--runs", str(tmp_path / "runs" / "full"), "--input", os.path.join(tgt, "no"),
                   "--output", str(out), "--tta", "1", "--amp", "fp32", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    model = build_from_checkpoint(ckpt)
    image = torch.from_numpy(np.load(os.path.join(tgt, "no", "1.npy"))).float()[None]
    from data import augment
    with torch.no_grad():
        expected = torch.softmax(model.classifier(augment.normalize(image, ckpt["stats"]["norm"]))["logits"], -1)[0]
    row = next(line.split(",") for line in open(out) if line.startswith("no/1,") or line.startswith("1,"))
    assert np.allclose([float(v) for v in row[1:4]], expected.numpy(), atol=1e-4)


def test_unusable_targets_are_refused_with_one_line(tmp_path):
    src, tgt = folders(tmp_path)

    def train(*extra):
        return run_script("train.py", *COMMON, "--data", src, "--output", str(tmp_path / "runs"), "--cache-dir",
                          str(tmp_path), "--epochs", "1", *extra)
    line = one_error_line(train("--adapt-data", os.path.join(src, "sphere")), "train.py")
    assert "files are training data too" in line
    os.makedirs(tmp_path / "empty")
    assert "no FITS cutouts" in one_error_line(train("--adapt-data", str(tmp_path / "empty")), "train.py")
    write_class_folders(tmp_path / "big", n=2, size=40)
    assert "images of shape (1, 40, 40), the training images are (1, 32, 32)" in one_error_line(
        train("--adapt-data", str(tmp_path / "big")), "train.py")
    assert "not lens_pinn" in one_error_line(train("--adapt-data", tgt, "--model", "lens_pinn"), "train.py")
    assert "no such file or folder" in one_error_line(train("--adapt-data", str(tmp_path / "nowhere")), "train.py")
