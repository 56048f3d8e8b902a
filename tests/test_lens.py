"""Lens finding end to end: readers, ingestion cache, augmentation, models, train / predict / evaluate."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from data import augment, lens_data
from data.lens_images import FitsTemplate
from tests.conftest import ROOT, run_script

SAMPLES = os.path.join(os.path.dirname(ROOT), "shared", "samples", "deeplense_lens_finding")
BANDS = "grizy"
FAST = ["--no-progress", "--batch-size", "16", "--epochs", "1"]


def write_fits_root(folder, label, n, seed, nan_in=None, size=41):
    """A root of one class in the challenge layout: D1_{L|N}IIIIIII_b.fits, bands grizy."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    templates = {b: FitsTemplate(b, (size, size)) for b in BANDS}
    images = rng.normal(0, 1, (n, 5, size, size)).astype(np.float32)
    if label == 1:  # a bright ring: learnable
        yy, xx = np.mgrid[:size, :size] - size // 2
        images += 4 * (np.abs(np.hypot(xx, yy) - 8) < 1.5)[None, None]
    for i in range(n):
        if nan_in == i:
            images[i, 2, :3, :3] = np.nan
        for c, b in enumerate(BANDS):
            templates[b].write(os.path.join(folder, f"D1_{'L' if label else 'N'}{i:07d}_{b}.fits"), i, images[i, c])
    return images


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("lensroots")
    out = {}
    for name, label, n, seed in (("A", 1, 24, 1), ("B", 1, 16, 2), ("C", 0, 24, 3), ("D", 0, 16, 4)):
        out[name] = str(base / name)
        out[name + "_images"] = write_fits_root(out[name], label, n, seed, nan_in=0 if name == "C" else None)
    return out


@pytest.fixture(scope="module")
def seed_run(roots, tmp_path_factory):
    """The seed's training command, as it was, on tiny data (then the run directory)."""
    work = tmp_path_factory.mktemp("seedrun")
    r = run_script("train.py", "--mode", "train", "--model-name", "resnet18",
                   "--train-roots", roots["A"], roots["B"], "--train-roots-neg", roots["C"], roots["D"],
                   "--index-cache", str(work / "idx.pkl"), "--val-split", "0.2", "--epochs", "2",
                   "--batch-size", "16", "--num-workers", "2", "--cache-ratio", "1",
                   "--output", str(work / "runs"), "--experiment-name", "r18", "--cache-dir", str(work),
                   "--no-progress", "--lr", "1e-3")
    assert r.returncode == 0, r.stderr
    assert "--task lens (--train-roots / --train-roots-neg)" in r.stdout  # no --task, as the seed wrote it
    assert "non-finite pixels set to 0: 9 in 1 objects" in r.stdout
    return work / "runs" / "r18", work


# --------------------------------------------------------------------------- readers and ingestion
def test_fits_roots_ingest_in_band_order_with_nan_zeroed(roots):
    sources = lens_data.sources_of(None, [roots["A"]], [roots["C"]])
    arrays, report = lens_data.load_all(sources, progress=False)
    assert report["bands"] == list(BANDS) and arrays["images"].shape == (48, 5, 41, 41)
    assert (arrays["labels"] == np.r_[np.ones(24), np.zeros(24)]).all()
    expected = np.nan_to_num(roots["C_images"], nan=0.0)
    assert np.array_equal(arrays["images"][24:], expected)  # bit for bit, in grizy order
    assert report["nonfinite_pixels"] == 9 and report["nonfinite_objects"] == 1
    subset, _ = lens_data.load_all(sources, bands=["g", "i"], progress=False)
    assert np.array_equal(subset["images"][:24], roots["A_images"][:, [0, 2]])


def test_npy_folders_h5_and_image_hdu(tmp_path):
    from astropy.io import fits

    import h5py
    rng = np.random.default_rng(0)
    for folder in ("train_lenses", "train_nonlenses", "test_lenses", "test_nonlenses"):
        os.makedirs(tmp_path / "dl" / folder)
        for i in range(3):
            np.save(tmp_path / "dl" / folder / f"{i}.npy", rng.random((3, 8, 8), dtype=np.float32))
    arrays, _ = lens_data.load_all(lens_data.sources_of(str(tmp_path / "dl")), progress=False)
    assert arrays["images"].shape == (12, 3, 8, 8) and arrays["is_test"].sum() == 6
    assert len(set(arrays["ids"])) == 12  # "test_lenses/0" and "train_lenses/0" differ
    with h5py.File(tmp_path / "sim.h5", "w") as f:
        f["images"] = rng.random((4, 2, 8, 8), dtype=np.float32)
        f["labels"] = np.array([0, 1, 0, 1], np.int8)
        f.create_group("params")["theta_e"] = np.arange(4.0)
    arrays, _ = lens_data.load_all(lens_data.sources_of(str(tmp_path / "sim.h5")), progress=False)
    assert arrays["images"].shape == (4, 2, 8, 8) and (arrays["params_theta_e"] == np.arange(4)).all()
    os.makedirs(tmp_path / "hdu")
    image = rng.random((8, 8)).astype(np.float32)
    for b in "gr":
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image)]).writeto(tmp_path / "hdu" / f"X_N0000001_{b}.fits")
    arrays, _ = lens_data.load_all([(str(tmp_path / "hdu"), (0, False))], progress=False)
    assert np.array_equal(arrays["images"][0], np.stack([image, image]))


@pytest.mark.skipif(not os.path.isdir(SAMPLES), reason="../shared/samples not present")
def test_shared_deeplense_samples_read_as_they_are():
    arrays, _ = lens_data.load_all(lens_data.sources_of(SAMPLES), progress=False)
    assert arrays["images"].shape == (10, 3, 64, 64) and arrays["labels"].sum() == 5
    assert arrays["images"].min() >= 0 and arrays["images"].max() <= 1


def test_index_key_follows_the_folder(roots, tmp_path):
    root = tmp_path / "A"
    shutil.copytree(roots["A"], root)
    sources = [(str(root), (1, False))]
    key = lens_data.listing_key(sources)
    cache = str(tmp_path / "idx.pkl")
    index = lens_data.build_index(sources, key, index_cache=cache)
    assert json.load(open(cache))["key"] == key and len(index["objects"]) == 24
    assert lens_data.listing_key(sources) == key  # unchanged folder: same key, index reused
    os.remove(root / "D1_L0000003_z.fits")  # a changed folder is never served stale
    with pytest.raises(lens_data.LensDataError, match=r"D1_L0000003: missing band z"):
        lens_data.build_index(sources, lens_data.listing_key(sources), index_cache=cache)
    index = lens_data.build_index(sources, lens_data.listing_key(sources), skip_bad=True, index_cache=cache)
    assert len(index["objects"]) == 23 and "D1_L0000003" in index["bad"][0]


# --------------------------------------------------------------------------- augmentation
def test_d4_is_the_dihedral_group():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    images = [augment.d4(x, k) for k in range(8)]
    assert len({tuple(im.flatten().tolist()) for im in images}) == 8  # eight distinct symmetries
    a = x[0, 0].numpy()
    assert np.array_equal(images[1][0, 0].numpy(), np.rot90(a, 1))
    assert np.array_equal(images[4][0, 0].numpy(), np.fliplr(a))
    assert np.array_equal(images[6][0, 0].numpy(), np.flipud(a))  # rot180 then left-right flip
    for j in range(8):  # closed under composition
        for k in range(8):
            composed = augment.d4(augment.d4(x, j), k)
            assert any(torch.equal(composed, im) for im in images)
    torch.manual_seed(0)
    batch = torch.randn(64, 2, 7, 7)
    out = augment.random_d4(batch)
    assert all(any(torch.equal(out[i], augment.d4(batch[i:i + 1], k)[0]) for k in range(8)) for i in range(64))
    shifted = augment.random_shift(batch, 2)
    assert shifted.shape == batch.shape and (shifted == 0).any()  # zero-filled edges, not wrapped
    assert torch.equal(augment.random_shift(batch, 0), batch)


@pytest.mark.parametrize("mode", augment.NORMS)
def test_normalisations_are_per_image(mode):
    x = torch.randn(4, 3, 9, 9) * 5 + 2
    one = augment.normalize(x[:1], mode)
    assert torch.allclose(one, augment.normalize(x, mode)[:1])  # an image's result ignores its batch
    if mode == "standardize":
        assert abs(float(one.mean())) < 1e-5 and abs(float(one.std()) - 1) < 1e-5


# --------------------------------------------------------------------------- models
@pytest.mark.parametrize("backbone", ["resnet18", "convnext_tiny", "convnextv2_atto", "efficientnet_b0",
                                      "mobilenetv3_small_100", "vit_small_patch16_224"])
def test_backbones_shapes_finite_and_every_gradient(backbone):
    from models import create_model
    from models.timm_classifier import native_input_size
    size = native_input_size(backbone, 41)
    model = create_model("timm", backbone=backbone, in_chans=5, input_size=size if size == 41 else 64)
    with torch.no_grad():  # timm zero-initialises the last norm of residual blocks, which blocks gradients at init
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(2, 5, 41, 41)
    out = model.train()(x)
    assert out["logit"].shape == (2,) and out["log_probs"].shape == (2, 2) and torch.isfinite(out["logit"]).all()
    assert torch.allclose(out["log_probs"].exp().sum(-1), torch.ones(2), atol=1e-5)
    out["logit"].sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, missing[:5]


def test_in_chans_adaptation_from_local_weights(tmp_path):
    import timm

    from models import create_model
    imagenet = timm.create_model("resnet18", pretrained=False)  # stands in for ImageNet weights
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    model = create_model("timm", backbone="resnet18", in_chans=5, pretrained_path=str(path))
    stem, saved = model.net.conv1.weight.detach(), imagenet.conv1.weight.detach()
    expected = saved.repeat(1, 2, 1, 1)[:, :5] * (3 / 5)  # timm's rule: repeat the RGB filters, keep the scale
    assert torch.allclose(stem, expected)
    assert torch.equal(model.net.layer1[0].conv1.weight, imagenet.layer1[0].conv1.weight)
    with pytest.raises(Exception, match="not weights of convnext_tiny"):
        create_model("timm", backbone="convnext_tiny", in_chans=5, pretrained_path=str(path))


# --------------------------------------------------------------------------- the scripts
def test_seed_commands_train_predict_evaluate(seed_run, roots, tmp_path):
    run_dir, work = seed_run
    config = json.load(open(run_dir / "config.json"))
    assert config["task"] == "lens" and config["input_size"] is None and config["val_fraction"] == 0.2
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    assert ckpt["task"] == "lens" and ckpt["stats"]["input_size"] == 41 and ckpt["stats"]["norm"] == "standardize"
    assert ckpt["select_metric"] == "val_auc" and os.path.isfile(work / "idx.pkl")
    out = tmp_path / "submission.csv"
    r = run_script("predict.py", "--run-dirs", str(run_dir), "--test-root", roots["B"], roots["D"],
                   "--out-csv", str(out), "--batch-size", "512", "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["id", "pred"] and len(rows) == 33 and all(0 <= float(p) <= 1 for _, p in rows[1:])
    r = run_script("predict.py", "--runs", str(run_dir), "--input", roots["B"], roots["D"], "--output",
                   str(tmp_path / "survey.csv"), "--candidates", "4", "--no-progress")  # unlabelled cutouts
    assert r.returncode == 0, r.stderr
    ranked = list(csv.DictReader(open(tmp_path / "survey_candidates.csv")))
    scores = sorted((float(p) for _, p in list(csv.reader(open(tmp_path / "survey.csv")))[1:]), reverse=True)
    assert [float(c["score"]) for c in ranked] == pytest.approx(scores[:4], abs=2e-6)
    assert os.path.getsize(tmp_path / "survey_candidates.png") > 1000
    r = run_script("evaluate.py", "--run", str(run_dir), "--candidates", "5", "--no-progress", "--n-bootstrap", "20")
    assert r.returncode == 0, r.stderr
    ev = run_dir / "eval_test"
    summary = json.load(open(ev / "evaluation_summary.json"))
    for key in ("auc", "average_precision", "tpr_at_fpr_1e-2", "tpr0", "tpr10", "confusion_matrix", "ece"):
        assert key in summary["metrics"]
    test_rows = ckpt["split"]["test"].numpy()
    assert summary["metrics"]["n"] == len(test_rows) > 0  # the held-out split, nothing else
    for png in ("roc_pr", "confusion_matrix", "calibration", "score_histograms", "false_positives",
                "false_negatives", "candidates"):
        assert os.path.getsize(ev / f"{png}.png") > 1000
    cands = list(csv.reader(open(ev / "candidates.csv")))
    assert cands[0] == ["rank", "id", "score", "file"] and len(cands) == 6
    assert [float(c[2]) for c in cands[1:]] == sorted((float(c[2]) for c in cands[1:]), reverse=True)
    r = run_script("evaluate.py", "--compare", str(run_dir), "--out-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    table = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    assert table[0]["model"] == "resnet18" and float(table[0]["auc"]) == summary["metrics"]["auc"]
    assert int(table[0]["parameters"]) > 1e6 and float(table[0]["train_minutes"]) > 0


def test_tta_and_ensemble_average_logits_like_a_hand_computation(seed_run, roots, tmp_path):
    run_dir, work = seed_run
    other = work / "runs" / "r18_b"
    shutil.copytree(run_dir, other)
    ckpt = torch.load(other / "best.pt", weights_only=True)
    ckpt["model"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, other / "best.pt")
    out = tmp_path / "p.csv"
    r = run_script("predict.py", "--runs", str(run_dir), str(other), "--input", roots["B"], "--output", str(out),
                   "--tta", "8", "--extra-columns", "--amp", "fp32", "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(open(out)))[1:]
    from engine.checkpoint import build_from_checkpoint
    x = augment.normalize(torch.from_numpy(roots["B_images"]), "standardize")
    members = []
    for path in (run_dir / "best.pt", other / "best.pt"):
        model = build_from_checkpoint(torch.load(path, weights_only=True))
        with torch.no_grad():
            members.append(torch.stack([model(augment.d4(x, k))["logit"] for k in range(8)]).double().mean(0))
    mean = torch.stack(members).mean(0)
    assert np.allclose([float(r[1]) for r in rows], torch.sigmoid(mean).numpy(), atol=2e-6)
    assert np.allclose([float(r[2]) for r in rows], torch.stack(members).std(0, unbiased=False).numpy(), atol=2e-4)


def test_two_ranks_share_one_ingestion(roots, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "train.py",
           "--task", "lens", "--train-roots", roots["A"], "--train-roots-neg", roots["C"], "--model", "resnet18",
           "--output", str(tmp_path / "runs"), "--experiment-name", "ddp", "--cache-dir", str(tmp_path), *FAST]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ingested 48 objects") == 1  # built by local rank 0 only, read by both
    assert "2 process(es)" in r.stdout and not [p for p in os.listdir(tmp_path) if p.startswith("lensing_cache_")]
    os.makedirs(tmp_path / "empty")
    bad = cmd[:cmd.index("--train-roots") + 1] + [str(tmp_path / "empty")] + cmd[cmd.index("--train-roots") + 2:] \
        + ["--experiment-name", "ddp_bad"]
    r = subprocess.run(bad, cwd=ROOT, capture_output=True, text=True, timeout=300)  # fails on both ranks, no hang
    assert r.returncode != 0 and r.stderr.count("no FITS cutouts") >= 2, r.stderr[-2000:]


def test_compare_takes_unevaluated_runs_and_evaluation_folders(roots, seed_run, tmp_path):
    """--compare evaluates a run that has none yet, finds an evaluation written with --out-dir
    elsewhere, and takes an evaluation folder itself."""
    run_dir, _ = seed_run
    r = run_script("train.py", "--train-roots", roots["A"], "--train-roots-neg", roots["C"], "--model", "resnet18",
                   "--output", str(tmp_path / "runs"), "--experiment-name", "fresh", "--cache-dir", str(tmp_path),
                   *FAST)
    assert r.returncode == 0 and "--task lens" in r.stdout, r.stderr
    fresh = tmp_path / "runs" / "fresh"
    elsewhere = tmp_path / "elsewhere"
    r = run_script("evaluate.py", "--run", str(run_dir), "--out-dir", str(elsewhere), "--no-progress",
                   "--n-bootstrap", "10")
    assert r.returncode == 0, r.stderr
    r = run_script("evaluate.py", "--compare", str(run_dir), str(fresh), "--out-dir", str(tmp_path / "table"),
                   "--no-progress", "--n-bootstrap", "10")
    assert r.returncode == 0, r.stderr
    assert "no evaluation yet" in r.stdout and (fresh / "eval_test" / "evaluation_summary.json").is_file()
    rows = {row["run"]: row for row in csv.DictReader(open(tmp_path / "table" / "comparison.csv"))}
    assert set(rows) == {"r18", "fresh"}
    assert rows["r18"]["evaluated_on"].endswith("(elsewhere)") and rows["fresh"]["evaluated_on"].endswith("(eval_test)")
    assert float(rows["r18"]["auc"]) == json.load(open(elsewhere / "evaluation_summary.json"))["metrics"]["auc"]
    r = run_script("evaluate.py", "--compare", str(elsewhere), "--out-dir", str(tmp_path / "table2"))
    assert r.returncode == 0, r.stderr
    assert [row["run"] for row in csv.DictReader(open(tmp_path / "table2" / "comparison.csv"))] == ["r18"]


def one_error_line(r, prog):
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), r.stderr
    return lines[0]


def test_bad_input_one_line_each(roots, seed_run, tmp_path):
    def train(*extra):
        return run_script("train.py", "--task", "lens", "--output", str(tmp_path / "runs"), "--cache-dir",
                          str(tmp_path), *FAST, *extra)
    shutil.copytree(roots["A"], tmp_path / "A")
    truncated = tmp_path / "A" / "D1_L0000002_r.fits"
    truncated.write_bytes(truncated.read_bytes()[:3000])
    assert "D1_L0000002_r.fits" in one_error_line(train("--train-roots", str(tmp_path / "A"), "--train-roots-neg",
                                                        roots["C"]), "train.py")
    r = train("--train-roots", str(tmp_path / "A"), "--train-roots-neg", roots["C"], "--skip-bad",
              "--experiment-name", "skip")
    assert r.returncode == 0, r.stderr
    assert "D1_L0000002_r.fits" in open(tmp_path / "runs" / "skip" / "skipped.txt").read()
    os.makedirs(tmp_path / "empty")
    assert "no FITS cutouts" in one_error_line(train("--train-roots", str(tmp_path / "empty"), "--train-roots-neg",
                                                     roots["C"]), "train.py")
    shutil.copytree(roots["C"], tmp_path / "C")
    os.remove(tmp_path / "C" / "D1_N0000005_y.fits")
    assert "D1_N0000005: missing band y" in one_error_line(train("--train-roots", roots["A"], "--train-roots-neg",
                                                                 str(tmp_path / "C")), "train.py")
    assert "unknown backbone 'resnet_nope'" in one_error_line(train("--train-roots", roots["A"], "--train-roots-neg",
                                                                    roots["C"], "--model", "resnet_nope"), "train.py")
    run_dir, _ = seed_run
    not_ckpt = tmp_path / "notes.pt"
    not_ckpt.write_text("hello")
    r = run_script("predict.py", "--runs", str(not_ckpt), "--input", roots["B"], "--output", str(tmp_path / "x.csv"))
    assert "not a readable checkpoint" in one_error_line(r, "predict.py")
    ml = torch.load(run_dir / "best.pt", weights_only=True)
    ml["task"] = "microlensing"
    torch.save(ml, tmp_path / "ml.pt")
    r = run_script("predict.py", "--runs", str(run_dir), str(tmp_path / "ml.pt"), "--input", roots["B"],
                   "--output", str(tmp_path / "x.csv"))
    assert "a run of task 'microlensing'; the ensemble's first member is 'lens'" in one_error_line(r, "predict.py")
    assert not os.path.exists(tmp_path / "x.csv")


def test_hard_negatives_join_the_training_split_only(roots, seed_run, tmp_path):
    """evaluate.py lists the confident false positives; train.py --hard-negatives adds the listed
    objects (all their bands) to the training split as non-lenses, splits the rest as without
    them, leaves out rows labelled 1 or scored < 0.5, and refuses objects already in the data."""
    run_dir, _ = seed_run
    pool = tmp_path / "pool"
    write_fits_root(str(pool / "lenses"), 1, 4, 7)
    write_fits_root(str(pool / "nonlenses"), 0, 6, 8)
    r = run_script("evaluate.py", "--run", str(run_dir), "--data", str(pool), "--no-progress", "--n-bootstrap", "5")
    assert r.returncode == 0, r.stderr
    preds = list(csv.DictReader(open(run_dir / "eval_pool" / "predictions.csv")))
    fps = list(csv.DictReader(open(run_dir / "eval_pool" / "false_positives.csv")))
    expected = sorted((p for p in preds if p["label"] == "0" and float(p["score"]) >= 0.5),
                      key=lambda p: -float(p["score"]))
    assert [f["id"] for f in fps] == [p["id"] for p in expected] and all(f["label"] == "0" for f in fps)

    def fits(label, i):
        return os.path.relpath(pool / ("lenses" if label else "nonlenses") / f"D1_{'L' if label else 'N'}{i:07d}_g.fits",
                               tmp_path)
    mined = tmp_path / "mined.csv"  # as a user edits predict.py's output: paths relative to the CSV
    with open(mined, "w") as f:
        f.write("id,label,score,file\n")
        f.write(f"a,0,0.91,{fits(0, 1)}\nb,0,0.80,{fits(0, 4)}\nc,0,0.30,{fits(0, 2)}\nd,1,0.95,{fits(1, 0)}\n"
                f"e,,0.70,{fits(0, 5).replace('_g.fits', '_z.fits')}\n")

    def train(name, *extra):
        return run_script("train.py", "--task", "lens", "--train-roots", roots["A"], "--train-roots-neg", roots["C"],
                          "--output", str(tmp_path / "runs"), "--experiment-name", name, "--cache-dir",
                          str(tmp_path), *FAST, *extra)
    assert train("plain").returncode == 0
    r = train("mined", "--hard-negatives", str(mined))
    assert r.returncode == 0, r.stderr
    assert "ingested 51 objects" in r.stdout and "27 nonlens" in r.stdout  # 48 + rows a, b, e (every band each)
    plain, with_mined = (np.load(tmp_path / "runs" / n / "split.npz") for n in ("plain", "mined"))
    assert np.array_equal(plain["val"], with_mined["val"]) and np.array_equal(plain["test"], with_mined["test"])
    assert np.array_equal(with_mined["train"], np.concatenate([plain["train"], [48, 49, 50]]))
    leak = tmp_path / "leak.csv"
    leak.write_text(f"file\n{os.path.join(roots['C'], 'D1_N0000003_i.fits')}\n")
    assert "D1_N0000003_g.fits: listed twice" in one_error_line(train("leak", "--hard-negatives", str(leak)),
                                                                "train.py")
    (tmp_path / "nofile.csv").write_text("id,score\nx,0.9\n")
    assert "no `file` column" in one_error_line(train("nf", "--hard-negatives", str(tmp_path / "nofile.csv")),
                                                "train.py")
    (tmp_path / "gone.csv").write_text("file\nnowhere_g.fits\n")
    assert "line 2: no such file 'nowhere_g.fits'" in one_error_line(
        train("gone", "--hard-negatives", str(tmp_path / "gone.csv")), "train.py")


def test_skip_bad_keeps_the_most_common_shape_whatever_comes_first(tmp_path):
    folder = tmp_path / "hosts"
    os.makedirs(folder)
    np.save(folder / "000_odd.npy", np.full((3, 20, 20), np.nan, np.float32))  # read first, NaN-only
    good = np.random.default_rng(0).normal(size=(5, 3, 16, 16)).astype(np.float32)
    good[2, 1, :2, :3] = np.nan
    for i, image in enumerate(good):
        np.save(folder / f"{i + 1:03d}.npy", image)
    sources = lens_data.sources_of(neg_roots=[str(folder)])
    for chunk in (1, 256):  # object by object, and the whole folder in one chunk
        index = lens_data.build_index(sources, lens_data.listing_key(sources))
        images, kept, bad, n_pixels, n_objects = lens_data.read_pixels(index, skip_bad=True, progress=False,
                                                                       chunk=chunk)
        assert images.shape == (5, 3, 16, 16) and kept.tolist() == [False] + [True] * 5
        assert np.array_equal(images, np.nan_to_num(good, nan=0.0))
        assert len(bad) == 1 and "000_odd.npy: image of shape (3, 20, 20), most objects have (3, 16, 16)" in bad[0]
        assert (n_pixels, n_objects) == (6, 1)  # the odd object's NaNs are not counted: it is left out
    with pytest.raises(lens_data.LensDataError, match=r"001.npy: image of shape \(3, 16, 16\), \S+000_odd.npy has"):
        lens_data.read_pixels(index, progress=False)
