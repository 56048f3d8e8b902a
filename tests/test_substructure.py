"""--task substructure: readers (both folder spellings, split folders, object arrays), bad input,
backbones with three classes, lens parameters under the augmentation's symmetries, the scripts
(train -> evaluate -> predict -> --compare), and DeepLense's imbalanced lens-finding layout."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from data import augment, lens_data
from tests.conftest import ROOT, run_script

SAMPLES = os.path.join(os.path.dirname(ROOT), "shared", "samples", "deeplense_substructure")
FAST = ("--no-progress", "--device", "cpu")


def write_class_folders(root, names=("no", "sphere", "vort"), n=3, size=20, seed=0, offset=0):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(names):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(n):
            np.save(os.path.join(root, name, f"{offset + i + 1}.npy"), rng.random((1, size, size)) * (c + 1))


def one_error_line(r, prog):
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), r.stderr
    return lines[0]


# --------------------------------------------------------------------------- readers
def test_both_spellings_split_folders_and_object_arrays(tmp_path):
    write_class_folders(tmp_path / "a")
    write_class_folders(tmp_path / "b", ("no_substructure", "subhalo", "vortex"))
    for name in ("a", "b"):
        arrays, _ = lens_data.load_all(lens_data.sources_of(str(tmp_path / name),
                                                            class_folders=lens_data.SUBSTRUCTURE_FOLDERS), progress=False)
        assert sorted(arrays["labels"].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2] and not arrays["is_test"].any()
        assert arrays["images"].dtype == np.float32 and arrays["images"].shape == (9, 1, 20, 20)
    # the public set's layout: train/ and val/ split folders; val/ is held out as the test split
    write_class_folders(tmp_path / "c" / "train", n=4)
    write_class_folders(tmp_path / "c" / "val", n=2)
    arrays, _ = lens_data.load_all(lens_data.sources_of(str(tmp_path / "c"), class_folders=lens_data.SUBSTRUCTURE_FOLDERS),
                                   progress=False)
    assert arrays["is_test"].sum() == 6 and len(arrays["labels"]) == 18
    assert "val/no/1" in set(arrays["ids"]) and "train/no/1" in set(arrays["ids"])  # ids stay unique
    # the simulator's HDF5 file, with its true parameters
    r = run_script("simulate.py", "--task", "substructure", "--config", "deeplense-model1", "--n-per-class", "2",
                   "--format", "h5", "--output", str(tmp_path / "m1.h5"), "--no-progress")
    assert r.returncode == 0, r.stderr
    arrays, _ = lens_data.load_all(lens_data.sources_of(str(tmp_path / "m1.h5")), progress=False)
    assert sorted(arrays["labels"].tolist()) == [0, 0, 1, 1, 2, 2] and arrays["images"].shape[1:] == (1, 150, 150)
    vort = arrays["labels"] == 2
    assert np.isfinite(arrays["params_m_axion_ev"][vort]).all() and np.isnan(arrays["params_m_axion_ev"][~vort]).all()
    # axion files: an object array [image, m_axion]
    image = np.random.default_rng(1).random((150, 150))
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = image, 1.3e-23
    np.save(tmp_path / "axion.npy", obj, allow_pickle=True)
    read = lens_data.read_object([str(tmp_path / "axion.npy")])
    assert read.shape == (1, 150, 150) and np.allclose(read[0], image, atol=1e-7)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_object_arrays_are_unpickled_without_running_code(tmp_path):
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = np.zeros((8, 8)), Payload()
    path = tmp_path / "evil.npy"
    with open(path, "wb") as f:  # np.save would pickle the payload the same way
        np.lib.format.write_array(f, obj, allow_pickle=True)
    with pytest.raises(lens_data.LensDataError, match="posix.system is not a numpy array class|system is not a numpy"):
        lens_data.read_object([str(path)])


@pytest.mark.skipif(not os.path.isdir(SAMPLES), reason="../shared/samples not present")
def test_public_samples_stay_float():
    arrays, _ = lens_data.load_all(lens_data.sources_of(SAMPLES, class_folders=lens_data.SUBSTRUCTURE_FOLDERS),
                                   progress=False)
    images = arrays["images"]
    assert images.shape == (9, 1, 150, 150) and np.bincount(arrays["labels"]).tolist() == [3, 3, 3]
    first = np.load(os.path.join(SAMPLES, "no", "1.npy"))
    row = list(arrays["ids"]).index("no/1")
    assert np.allclose(images[row], first, atol=1e-6)  # float64 -> float32, not truncated like the seed's PIL path
    assert len(np.unique(images[row])) > 500  # the public images are photon counts (~900 levels), min-max scaled


def test_bad_input_one_line_each(tmp_path):
    def train(data, *extra):
        return run_script("train.py", "--task", "substructure", "--data", str(data), "--output", str(tmp_path / "runs"),
                          "--cache-dir", str(tmp_path), "--epochs", "1", *FAST, *extra)
    write_class_folders(tmp_path / "missing", ("no", "sphere"))
    assert "no class folder vort or vortex" in one_error_line(train(tmp_path / "missing"), "train.py")
    write_class_folders(tmp_path / "mixed")
    np.save(tmp_path / "mixed" / "vort" / "9.npy", np.zeros((1, 24, 24)))
    assert "images of mixed shapes" in one_error_line(train(tmp_path / "mixed"), "train.py")
    write_class_folders(tmp_path / "notimage")
    np.save(tmp_path / "notimage" / "sphere" / "9.npy", np.arange(10.0))
    line = one_error_line(train(tmp_path / "notimage"), "train.py")
    assert "9.npy" in line and "expected (C, H, W)" in line
    (tmp_path / "notimage" / "sphere" / "9.npy").write_text("not numpy")
    assert "not a readable .npy image" in one_error_line(train(tmp_path / "notimage"), "train.py")
    write_class_folders(tmp_path / "ok")
    assert "applies to --model lens_pinn only" in one_error_line(train(tmp_path / "ok", "--lens-param-weight", "1"),
                                                                 "train.py")
    assert "one band" in one_error_line(train(tmp_path / "ok", "--bands", "g"), "train.py")


# --------------------------------------------------------------------------- models
@pytest.mark.parametrize("backbone", ["resnet18", "convnext_tiny", "convnextv2_atto", "efficientnet_b0",
                                      "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
                                      "mobilenetv3_large_100", "vit_small_patch16_224"])
def test_three_class_backbones_shapes_finite_and_every_gradient(backbone):
    from models import create_model
    from models.timm_classifier import native_input_size
    size = native_input_size(backbone, 64)
    model = create_model("timm", backbone=backbone, in_chans=1, n_outputs=3, input_size=size if size == 64 else 32 * 2)
    with torch.no_grad():  # timm zero-initialises the last norm of residual blocks, which blocks gradients at init
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = model.train()(torch.randn(2, 1, 64, 64))
    assert out["logits"].shape == (2, 3) and torch.isfinite(out["logits"]).all()
    assert torch.allclose(out["log_probs"].exp().sum(-1), torch.ones(2), atol=1e-5)
    torch.nn.functional.cross_entropy(out["logits"], torch.tensor([0, 2])).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, missing[:5]


@pytest.mark.parametrize("k", range(8))
def test_lens_parameters_follow_the_symmetries(k):
    """|alpha| of SIE + shear (a scalar field) of the transformed image equals that of the
    transformed parameters, for every symmetry and a shift."""
    from physics.strong import mass
    from physics.strong.instrument import pixel_grid
    x, y = pixel_grid(48, 0.05, dtype=torch.float64)
    p = torch.tensor([[1.0, 0.15, -0.08, 0.04, 0.03, 0.12, -0.2]], dtype=torch.float64)

    def field(q):
        ax, ay = mass.sie(x, y, q[:, 0], q[:, 1], q[:, 2], q[:, 5], q[:, 6])
        sx, sy = mass.shear(x, y, q[:, 3], q[:, 4], q[:, 5], q[:, 6])
        return torch.hypot(ax + sx, ay + sy)[:, None]  # (1, 1, H, W)

    shift = torch.tensor([[2, -3]])
    moved = torch.roll(augment.d4(field(p), k), shifts=(2, -3), dims=(-2, -1))
    expected = field(augment.transform_lens_params(p, torch.tensor([k]), shift, 0.05))
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # away from the rolled-in edges
    assert torch.allclose(moved[inner], expected[inner], atol=1e-6)
    if k == 1:  # the test can fail: a wrong sign convention does not pass
        wrong = p.clone()
        wrong[:, 5] = -p[:, 6]
        assert not torch.allclose(moved[inner], field(augment.transform_lens_params(wrong, torch.tensor([k]), shift,
                                                                                     0.05))[inner], atol=1e-3)


def test_random_geometry_reports_its_transforms():
    x = torch.randn(6, 1, 12, 12)
    gen = torch.Generator().manual_seed(3)
    out, ks, shifts = augment.random_geometry(x, True, 2, gen, return_transforms=True)
    for i in range(6):
        expected = augment.d4(x[i:i + 1], int(ks[i]))
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        rolled = torch.roll(expected, (dy, dx), dims=(-2, -1))
        assert torch.allclose(out[i, :, 2:-2, 2:-2], rolled[0, :, 2:-2, 2:-2])


# --------------------------------------------------------------------------- the scripts
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs on simulated 150x150 Model I images (12 per class)."""
    work = tmp_path_factory.mktemp("substructure")
    r = run_script("simulate.py", "--task", "substructure", "--config", "deeplense-model1", "--n-per-class", "12",
                   "--format", "npy", "--output", str(work / "sim"), "--no-progress")
    assert r.returncode == 0, r.stderr
    out = {}
    for model in ("resnet18", "mobilenetv3_small_100"):
        r = run_script("train.py", "--task", "substructure", "--data", str(work / "sim"), "--model", model,
                       "--epochs", "1", "--batch-size", "8", "--test-fraction", "0.25", "--output", str(work / "runs"),
                       "--cache-dir", str(work), *FAST)
        assert r.returncode == 0, r.stderr[-3000:]
        out[model] = work / "runs" / f"substructure_{model}_sim_s42"
    return work, out


def test_train_evaluate_predict_compare(runs, tmp_path):
    work, run = runs
    ckpt = torch.load(run["resnet18"] / "best.pt", weights_only=True)
    assert ckpt["task"] == "substructure" and ckpt["select_metric"] == "val_macro_auc"
    assert list(ckpt["class_names"]) == ["no", "sphere", "vort"]
    split = {k: set(v.tolist()) for k, v in ckpt["split"].items()}
    assert not split["test"] & (split["train"] | split["val"]) and len(split["test"]) == 9  # 3 per class held out
    epoch = json.loads(open(run["resnet18"] / "metrics.jsonl").readline())
    assert {"val_macro_auc", "val_auc_no", "val_auc_sphere", "val_auc_vort"} <= set(epoch)
    for r_dir in run.values():
        r = run_script("evaluate.py", "--run", str(r_dir), "--tta", "1", "--n-bootstrap", "10", "--no-progress")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "macro AUC" in r.stdout
    summary = json.load(open(run["resnet18"] / "eval_test" / "evaluation_summary.json"))
    assert summary["rows"] == "test split" and summary["n_images"] == 9
    assert set(summary["roc"]["auc"]) == {"no", "sphere", "vort"}
    assert np.isclose(summary["roc"]["macro_auc"], np.mean(list(summary["roc"]["auc"].values())))
    assert any("axion mass" in k for k in summary["accuracy_vs_parameters"]["parameters"])  # simulator's truths
    for png in ("roc_curves.png", "confusion_matrix.png", "calibration.png", "accuracy_vs_parameters.png"):
        assert (run["resnet18"] / "eval_test" / png).stat().st_size > 1000
    # predictions of the test images agree with evaluate's
    preds = list(csv.DictReader(open(run["resnet18"] / "eval_test" / "predictions.csv")))
    assert len(preds) == 9
    # --residuals: every test image's smooth-lens fit, accuracy with and without a residual above the noise
    r = run_script("evaluate.py", "--run", str(run["resnet18"]), "--tta", "1", "--n-bootstrap", "10", "--no-progress",
                   "--residuals", "--psf-fwhm", "0.2", "--out-dir", str(tmp_path / "res"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "without a residual above the noise" in r.stdout
    rows = list(csv.DictReader(open(tmp_path / "res" / "residuals.csv")))
    assert [row["id"] for row in rows] == [p["id"] for p in preds]
    assert all(float(row["chi2_dof"]) > 0.5 and row["detectable"] in ("0", "1") for row in rows)
    report = json.load(open(tmp_path / "res" / "evaluation_summary.json"))["residuals"]
    assert set(report) == {"csv", "psf_fwhm", "no", "sphere", "vort"} and 0 <= report["no"]["undetectable"] <= 1
    assert report["psf_fwhm"] == 0.2
    # predict.py on the simulated class folders (the ensemble of both runs) and on an unlabelled folder
    out = tmp_path / "p.csv"
    r = run_script("predict.py", "--runs", str(run["resnet18"]), str(run["mobilenetv3_small_100"]), "--input",
                   str(work / "sim" / "vort"), "--output", str(out), "--tta", "8", "--no-progress", "--extra-columns")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 12 and list(rows[0])[:5] == ["id", "p_no", "p_sphere", "p_vort", "class"]
    probs = np.array([[float(row[f"p_{c}"]) for c in ("no", "sphere", "vort")] for row in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert all(row["class"] == ("no", "sphere", "vort")[int(np.argmax(p))] for row, p in zip(rows, probs))
    # --compare with a glob: one table and the AUC-vs-time plot
    r = run_script("evaluate.py", "--compare", str(work / "runs" / "substructure_*"), "--out-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    table = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    assert sorted(t["model"] for t in table) == ["mobilenetv3_small_100", "resnet18"]
    assert {"parameters", "train_minutes", "train_samples_per_s", "macro_auc", "auc_sphere", "accuracy"} <= set(table[0])
    assert (tmp_path / "comparison_macro_auc_vs_time.png").stat().st_size > 1000
    markdown = (tmp_path / "comparison.md").read_text()
    assert "| macro_auc |" in markdown and "| substructure_resnet18_sim_s42 | substructure | resnet18 |" in markdown


@pytest.mark.skipif(not os.path.isdir(SAMPLES), reason="../shared/samples not present")
def test_predict_on_the_public_samples(runs, tmp_path):
    _, run = runs
    out = tmp_path / "public.csv"
    r = run_script("predict.py", "--runs", str(run["resnet18"]), "--input", SAMPLES, "--output", str(out),
                   "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(out)))
    assert sorted(row["id"] for row in rows) == sorted(f"{c}/{i}" for c in ("no", "sphere", "vort") for i in (1, 2, 3))


def test_deeplense_lens_finding_layout_is_imbalanced_and_tested_as_given(tmp_path):
    """train_lenses / train_nonlenses (1:16) and test_* folders: the test folders are the test split,
    validation comes from the training folders, and BCE's pos_weight is n_neg / n_pos of training."""
    rng = np.random.default_rng(0)
    for folder, n in (("train_lenses", 4), ("train_nonlenses", 64), ("test_lenses", 1), ("test_nonlenses", 20)):
        os.makedirs(tmp_path / "dl" / folder)
        for i in range(n):
            np.save(tmp_path / "dl" / folder / f"{i}.npy", rng.random((3, 16, 16)).astype(np.float32))
    r = run_script("train.py", "--task", "lens", "--data", str(tmp_path / "dl"), "--epochs", "1", "--batch-size", "16",
                   "--norm", "none", "--output", str(tmp_path / "runs"), "--experiment-name", "dl", "--cache-dir",
                   str(tmp_path), *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(tmp_path / "runs" / "dl" / "best.pt", weights_only=True)
    arrays, _ = lens_data.load_all(lens_data.sources_of(str(tmp_path / "dl")), progress=False)
    assert set(ckpt["split"]["test"].tolist()) == set(np.flatnonzero(arrays["is_test"]).tolist())
    train = ckpt["split"]["train"].numpy()
    n_pos = int(arrays["labels"][train].sum())
    assert n_pos >= 1 and np.isclose(float(ckpt["criterion"]["pos_weight"]) if "criterion" in ckpt else
                                     (len(train) - n_pos) / n_pos, (len(train) - n_pos) / n_pos)
    r = run_script("evaluate.py", "--run", str(tmp_path / "runs" / "dl"), "--tta", "1", "--n-bootstrap", "10",
                   "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.load(open(tmp_path / "runs" / "dl" / "eval_test" / "evaluation_summary.json"))
    assert summary["metrics"]["n_pos"] == 1 and summary["metrics"]["n_neg"] == 20  # the test folders, as given


def test_lens_pinn_trains_with_the_auxiliary_loss_logged_apart(runs, tmp_path):
    """--model lens_pinn --lens-param-weight: the lens-parameter loss is logged apart from the
    cross-entropy (train and val), the run evaluates and predicts like any other member."""
    work, run = runs
    r = run_script("train.py", "--task", "substructure", "--data", str(work / "sim"), "--model", "lens_pinn",
                   "--lens-param-weight", "0.1", "--epochs", "1", "--batch-size", "8", "--test-fraction", "0.25",
                   "--output", str(tmp_path), "--experiment-name", "pinn", "--cache-dir", str(tmp_path), *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    epoch = json.loads(open(tmp_path / "pinn" / "metrics.jsonl").readline())
    for split in ("train", "val"):
        ce, aux = epoch[f"{split}_loss_ce"], epoch[f"{split}_loss_lens_params"]
        assert np.isfinite(ce) and np.isfinite(aux) and aux > 0
        assert np.isclose(epoch[f"{split}_loss"], ce + 0.1 * aux, rtol=1e-4)
    ckpt = torch.load(tmp_path / "pinn" / "best.pt", weights_only=True)
    assert ckpt["model_name"] == "lens_pinn" and ckpt["model_kwargs"]["encoder"] == "resnet18"
    # the same split as the timm runs (same data, seed and fractions): comparable test sets
    timm_split = torch.load(run["resnet18"] / "best.pt", weights_only=True)["split"]
    assert torch.equal(ckpt["split"]["test"], timm_split["test"])
    out = tmp_path / "mixed.csv"
    r = run_script("predict.py", "--runs", str(tmp_path / "pinn"), str(run["resnet18"]), "--input",
                   str(work / "sim" / "no"), "--output", str(out), "--tta", "3", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list(csv.DictReader(open(out)))) == 12
    r = run_script("train.py", "--task", "substructure", "--data", str(work / "sim"), "--model", "lens_pinn",
                   "--pinn-encoder", "resnet_nope", "--output", str(tmp_path), *FAST)
    assert "unknown backbone 'resnet_nope'" in one_error_line(r, "train.py")


def test_residual_report_scans_for_the_psf(tmp_path, monkeypatch, capsys):
    """evaluate.py --residuals with --psf-fwhm scan (the default): the PSF is the median of psf_scan's
    per-image FWHMs over images spread across the set, is printed and reported, and every image is
    fitted through it; a FWHM that is not 'scan' or a positive number is refused by the parser. (How
    well psf_scan finds a PSF: tests/test_substructure_fit.py.)"""
    import argparse
    from physics.strong import fit, render, scenes
    from tasks import substructure as task
    monkeypatch.setattr(fit, "STEPS", (20, 20))  # a short fit: the plumbing, not the fit, is tested here
    monkeypatch.setattr(fit, "STARTS", fit.STARTS[:1])
    scanned, fitted = [], []

    def scan(images, pixel_scale, fwhms=fit.PSF_GRID, batch=32):
        scanned.append(len(images))
        return dict(fwhm=np.array([0.19, 0.23, 0.2])[:len(images)], chi2=None, grid=np.asarray(fwhms))

    real_fit = fit.fit_smooth

    def spy_fit(images, pixel_scale, psf_fwhm, **kw):
        fitted.append(float(psf_fwhm))
        return real_fit(images, pixel_scale, psf_fwhm, **kw)

    monkeypatch.setattr(fit, "psf_scan", scan)
    monkeypatch.setattr(fit, "fit_smooth", spy_fit)
    cfg = scenes.CONFIGS["deeplense-common"]
    scene, params = scenes.sample(cfg, torch.zeros(3, dtype=torch.long), torch.Generator().manual_seed(2))
    pixels = render.Renderer(cfg, dtype=torch.float64).render(scene, params, torch.Generator().manual_seed(3))
    pixels = pixels["images"][:, 0].numpy()
    parser = argparse.ArgumentParser()
    task.add_evaluate_args(parser)
    args = parser.parse_args(["--residuals"])
    args.no_progress, args.device = True, "cpu"  # evaluate.py's own options
    args.fit_cache = str(tmp_path / "fits")  # where the scanned PSF is kept
    assert args.psf_fwhm == "scan"
    out = task.residual_report(pixels, np.zeros(3, int), np.zeros(3, int), ["a", "b", "c"], str(tmp_path / "r.csv"),
                               args)
    assert scanned == [3] and out["psf_fwhm"] == 0.2 and fitted == [0.2]
    assert 'PSF FWHM 0.200"' in capsys.readouterr().out
    assert len(list(csv.DictReader(open(tmp_path / "r.csv")))) == 3
    assert parser.parse_args(["--psf-fwhm", "0.087"]).psf_fwhm == 0.087
    for bad in ("0", "-0.1", "wide", "nan", "inf"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--psf-fwhm", bad])


# --------------------------------------------------------------------------- --align-shares
def test_alignment_recovers_a_label_shift():
    """Posteriors of a calibrated model trained on balanced classes, applied to a set holding the
    classes 60/20/20: aligned to those shares, the class weights come out ~ the shares (Bayes' rule
    under the new prior), and the calls gain over the unaligned ones. Aligning balanced posteriors to
    'uniform' changes nothing."""
    from engine.inference import align_to_shares
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]])
    def posteriors(y):  # unit Gaussians around the centres, equal priors
        x = centres[y] + rng.normal(size=(len(y), 2))
        logp = -0.5 * ((x[:, None, :] - centres[None]) ** 2).sum(-1)
        p = np.exp(logp - logp.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)
    y = rng.choice(3, size=20000, p=[0.6, 0.2, 0.2])
    probs = posteriors(y)
    aligned, weights = align_to_shares(probs, [3, 1, 1])
    assert np.allclose(aligned.mean(0), [0.6, 0.2, 0.2], atol=1e-6) and np.allclose(aligned.sum(1), 1)
    assert np.allclose(weights, [0.6, 0.2, 0.2], atol=0.04), weights
    assert (aligned.argmax(1) == y).mean() > (probs.argmax(1) == y).mean() + 0.03
    balanced = posteriors(rng.permutation(np.arange(30000) % 3))
    same, w = align_to_shares(balanced, "uniform")
    assert np.allclose(w, 1 / 3, atol=0.02) and (same.argmax(1) == balanced.argmax(1)).mean() > 0.98
    with pytest.raises(ValueError, match="2 class shares given for 3 classes"):
        align_to_shares(probs, [1, 1])


def test_align_shares_in_evaluate_and_predict(runs, tmp_path):
    """evaluate.py --align-shares keeps the run's own figures beside the aligned ones; predict.py's
    probabilities average to the shares given; a wrong count of shares or a malformed one is one line."""
    work, run = runs
    base = ("evaluate.py", "--run", str(run["resnet18"]), "--tta", "1", "--n-bootstrap", "10", "--no-progress")
    r = run_script(*base, "--out-dir", str(tmp_path / "plain"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_script(*base, "--out-dir", str(tmp_path / "aligned"), "--align-shares", "uniform")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "unaligned: macro AUC" in r.stdout and "--align-shares: probabilities aligned" in r.stdout
    plain = json.load(open(tmp_path / "plain" / "evaluation_summary.json"))
    summary = json.load(open(tmp_path / "aligned" / "evaluation_summary.json"))
    assert np.isclose(summary["aligned"]["unaligned"]["accuracy"], plain["accuracy"])
    assert np.isclose(summary["aligned"]["unaligned"]["macro_auc"], plain["roc"]["macro_auc"], atol=1e-6)
    assert np.allclose(summary["aligned"]["shares"], 1 / 3, atol=1e-4) and sum(summary["aligned"]["calls_after"]) == 9
    probs = np.array([[float(row[f"p_{c}"]) for c in ("no", "sphere", "vort")]
                      for row in csv.DictReader(open(tmp_path / "aligned" / "predictions.csv"))])
    assert np.allclose(probs.mean(0), 1 / 3, atol=1e-4)
    out = tmp_path / "p.csv"
    r = run_script("predict.py", "--runs", str(run["resnet18"]), "--input", str(work / "sim"), "--output", str(out),
                   "--tta", "1", "--no-progress", "--align-shares", "2,1,1")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(out)))
    probs = np.array([[float(row[f"p_{c}"]) for c in ("no", "sphere", "vort")] for row in rows])
    assert len(rows) == 36 and np.allclose(probs.mean(0), [0.5, 0.25, 0.25], atol=1e-4)
    assert "36 images are few to align on" in r.stdout
    r = run_script("predict.py", "--runs", str(run["resnet18"]), "--input", str(work / "sim"), "--output", str(out),
                   "--no-progress", "--align-shares", "1,1")
    assert "--align-shares: 2 shares given for the 3 classes" in one_error_line(r, "predict.py")
    r = run_script(*base, "--align-shares", "1,x,1")
    assert "expected 'uniform' or shares per class" in one_error_line(r, "evaluate.py")
