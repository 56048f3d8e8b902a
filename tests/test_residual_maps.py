"""Smooth-lens residual maps as the substructure network's input (data/residual_maps.py,
`train.py --task substructure --input-kind residual`): the store fits each image once, whatever its
order, name or rank; the maps are what `fit_smooth` leaves; train, evaluate and predict show the
network the maps; adaptation targets are mapped too; bad input is one line."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from data import residual_maps
from engine.distributed import DistInfo
from physics.strong import fit
from tests.conftest import ROOT, run_script
from tests.test_substructure import FAST, one_error_line


@pytest.fixture
def short_fit(monkeypatch):
    """A short fit, and a record of the images each call fitted (the store, not the fit, is tested)."""
    monkeypatch.setattr(fit, "STEPS", (15, 15))
    monkeypatch.setattr(fit, "STARTS", fit.STARTS[:1])
    calls = []
    real = fit.fit_smooth

    def spy(images, pixel_scale, psf_fwhm, **kw):
        calls.append(len(images))
        return real(images, pixel_scale, psf_fwhm, **kw)
    monkeypatch.setattr(fit, "fit_smooth", spy)
    return calls


def rings(n, size=40, seed=0):
    """(n, 1, size, size) ring-like images with noise, each different."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(xx, yy) * 0.05
    out = [np.exp(-(r - rng.uniform(0.5, 0.8)) ** 2 / 0.01) + 0.05 * rng.standard_normal((size, size))
           for _ in range(n)]
    return np.stack(out)[:, None].astype(np.float32)


def test_maps_are_the_fits_residuals_and_each_image_is_fitted_once(tmp_path, short_fit):
    images = rings(5)
    maps = residual_maps.residual_maps(images, 0.05, 0.1, str(tmp_path), progress=False)
    assert maps.shape == (5, 1, 40, 40) and maps.dtype == np.float32 and np.isfinite(maps).all()
    direct = fit.fit_smooth(torch.from_numpy(images[:, 0].astype(np.float64)), 0.05, 0.1)
    expected = ((direct["image"] - direct["model"]) / direct["sigma"]).float().numpy()[:, None]
    assert np.allclose(maps, expected, atol=1e-5)
    assert 0.3 < maps.std() < 3  # in units of the noise
    assert short_fit == [5, 5]  # the store's fit, then the direct one
    short_fit.clear()
    # again, reversed, with a duplicate and one new image: only the new one is fitted
    more = np.concatenate([images[::-1], images[:1], rings(1, seed=9)])
    again = residual_maps.residual_maps(more, 0.05, 0.1, str(tmp_path), progress=False)
    assert short_fit == [1] and np.array_equal(again[:5], maps[::-1]) and np.array_equal(again[5], maps[0])
    # another PSF is another store
    residual_maps.residual_maps(images[:2], 0.05, 0.2, str(tmp_path), progress=False)
    assert short_fit == [1, 2] and len([d for d in os.listdir(tmp_path) if d.startswith("maps_")]) == 2
    config = json.load(open(residual_maps.FitStore(str(tmp_path), 0.05, 0.2).dir + "/config.json"))
    assert config == {"pixel_scale": 0.05, "psf_fwhm": 0.2, "fit_version": residual_maps.FIT_VERSION}


def test_ranks_share_the_fits_by_part_and_a_killed_run_keeps_its_parts(tmp_path, short_fit, monkeypatch):
    monkeypatch.setattr(residual_maps, "PART", 2)
    monkeypatch.setattr(residual_maps, "barrier", lambda info: None)  # two ranks run one after the other here
    images = rings(7)
    keys = residual_maps.fit_missing(images, 0.05, 0.1, str(tmp_path), DistInfo(rank=1, world_size=2),
                                     progress=False)
    assert short_fit == [2, 1]  # parts 1 and 3 of [0-1, 2-3, 4-5, 6]
    store = residual_maps.FitStore(str(tmp_path), 0.05, 0.1)
    assert set(store.index()) == set(keys[2:4]) | set(keys[6:])  # what rank 1 finished is kept
    residual_maps.fit_missing(images, 0.05, 0.1, str(tmp_path), DistInfo(rank=0, world_size=2), progress=False)
    assert short_fit == [2, 1, 2, 2]  # rank 0: the parts rank 1 did not do
    assert set(store.index()) == set(keys) and store.read(keys).shape == (7, 1, 40, 40)
    # a part left half-written by a kill is under a temporary name, never read
    open(os.path.join(store.dir, ".part_x.123.tmp.npz"), "wb").write(b"PK\x03")
    assert set(store.index()) == set(keys)
    # a damaged part: one line naming it
    open(os.path.join(store.dir, "part_broken.npz"), "wb").write(b"not a zip")
    with pytest.raises(residual_maps.ResidualMapError, match="part_broken.npz: unreadable fit-store part"):
        store.index()


def test_psf_scan_is_kept_and_bad_shapes_are_refused(tmp_path, monkeypatch):
    calls = []

    def scan(images, pixel_scale, fwhms=fit.PSF_GRID, batch=32):
        calls.append(len(images))
        return dict(fwhm=np.full(len(images), 0.17), chi2=None, grid=np.asarray(fwhms))
    monkeypatch.setattr(fit, "psf_scan", scan)
    images = rings(40)
    assert residual_maps.scan_psf(images, 0.05, str(tmp_path)) == 0.17
    assert residual_maps.scan_psf(images, 0.05, str(tmp_path)) == 0.17 and calls == [32]  # read back, not refitted
    for bad, why in ((images[:, :, :, :30], "square"), (np.repeat(images, 2, 1), "one-band")):
        with pytest.raises(residual_maps.ResidualMapError, match=why):
            residual_maps.residual_maps(bad, 0.05, 0.1, str(tmp_path), progress=False)


# --------------------------------------------------------------------------- the scripts
def write_folders(root, n=8, size=40, seed=0):
    for c, name in enumerate(("no", "sphere", "vort")):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i, img in enumerate(rings(n, size, seed + c)):
            np.save(os.path.join(root, name, f"{i}.npy"), img * (c + 1))


@pytest.fixture(scope="module")
def residual_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("residual")
    write_folders(work / "sim")
    r = run_script("train.py", "--task", "substructure", "--data", str(work / "sim"), "--input-kind", "residual",
                   "--psf-fwhm", "0.1", "--fit-cache", str(work / "fits"), "--epochs", "1", "--batch-size", "8",
                   "--output", str(work / "runs"), "--experiment-name", "res", "--cache-dir", str(work), *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "24 of 24 images to fit" in r.stdout and "residual maps 1x40x40" in r.stdout
    return work, r


def test_train_evaluate_predict_on_residual_maps(residual_run, tmp_path):
    from engine.inference import load_run, tta_outputs
    work, _ = residual_run
    run = work / "runs" / "res"
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["stats"]["input"] == {"kind": "residual", "psf_fwhm": 0.1, "pixel_scale": 0.05,
                                      "image_shape": [1, 40, 40]}
    assert not [p for p in os.listdir(work) if p.startswith("lensing_cache_")]  # both node caches removed
    # its own test split: through the run's PSF, from the store (nothing refitted)
    r = run_script("evaluate.py", "--run", str(run), "--tta", "1", "--n-bootstrap", "10", "--fit-cache",
                   str(work / "fits"), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "macro AUC" in r.stdout and "to fit" not in r.stdout
    # predict: the network is shown the maps (equal to the model applied to the stored maps)
    out = tmp_path / "p.csv"
    r = run_script("predict.py", "--runs", str(run), "--input", str(work / "sim" / "vort"), "--psf-fwhm", "0.1",
                   "--fit-cache", str(work / "fits"), "--tta", "1", "--amp", "fp32", "--output", str(out), *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = sorted(csv.DictReader(open(out)), key=lambda row: int(row["id"].split("/")[-1]))
    pixels = np.stack([np.load(work / "sim" / "vort" / f"{i}.npy") for i in range(8)])
    maps = residual_maps.FitStore(str(work / "fits"), 0.05, 0.1).read(residual_maps.image_keys(pixels))
    ckpt, model, _ = load_run(str(run))
    logits = tta_outputs(model, ckpt["stats"], maps, 1, 8, "cpu", "fp32", "logits")
    expected = torch.softmax(torch.as_tensor(logits), 1).numpy()
    assert np.allclose([[float(row[f"p_{c}"]) for c in ("no", "sphere", "vort")] for row in rows], expected, atol=1e-5)
    # another generator's images: the PSF is measured on them (one scan, kept), then they are fitted
    r = run_script("predict.py", "--runs", str(run), "--input", str(work / "sim" / "no"), "--fit-cache",
                   str(tmp_path / "fits"), "--tta", "1", "--output", str(out), *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "measured on these images" in r.stdout and "8 of 8 images to fit" in r.stdout
    # images of another size: one line
    os.makedirs(tmp_path / "small")
    np.save(tmp_path / "small" / "a.npy", rings(1, 32)[0])
    r = run_script("predict.py", "--runs", str(run), "--input", str(tmp_path / "small"), "--psf-fwhm", "0.1",
                   "--output", str(out), *FAST)
    assert "trained on the residual maps of 1x40x40 images; these are 1x32x32" in one_error_line(r, "predict.py")


def test_adaptation_target_is_mapped_and_refusals_are_one_line(residual_run, tmp_path):
    work, _ = residual_run
    write_folders(tmp_path / "target", n=4, seed=7)
    common = ["train.py", "--task", "substructure", "--data", str(work / "sim"), "--input-kind", "residual",
              "--psf-fwhm", "0.1", "--fit-cache", str(work / "fits"), "--epochs", "1", "--batch-size", "8",
              "--output", str(tmp_path / "runs"), "--cache-dir", str(tmp_path), *FAST]
    r = run_script(*common, "--experiment-name", "adapt", "--adapt-data", str(tmp_path / "target"))
    assert r.returncode == 0, r.stderr[-3000:]
    # the training maps come from the store; the target's 12 images are fitted through their own PSF
    assert r.stdout.count("images to fit") == 1 and "12 of 12 images to fit" in r.stdout and "measuring the PSF" in r.stdout
    assert "adaptation target: 12 unlabelled images (1x40x40)" in r.stdout
    assert json.loads(open(tmp_path / "runs" / "adapt" / "metrics.jsonl").readline())["train_loss_domain"] > 0
    r = run_script(*common, "--model", "lens_pinn")
    assert "lens_pinn fits its own lens" in one_error_line(r, "train.py")
    r = run_script(*common, "--psf-fwhm", "wide")
    assert "--psf-fwhm" in one_error_line(r, "train.py")
    write_folders(tmp_path / "wide", n=2)
    for name in ("no", "sphere", "vort"):
        for f in os.listdir(tmp_path / "wide" / name):
            np.save(tmp_path / "wide" / name / f, np.zeros((1, 40, 30), np.float32))
    bad = common[:common.index("--data") + 1] + [str(tmp_path / "wide")] + common[common.index("--data") + 2:]
    r = run_script(*bad, "--experiment-name", "wide")
    assert f"{tmp_path / 'wide'}: the smooth-lens fit takes square images" in one_error_line(r, "train.py")
    # a fit store that cannot be written (a file where its folder should be): one line
    (tmp_path / "not_a_folder").write_text("")
    unwritable = common[:common.index("--fit-cache") + 1] + [str(tmp_path / "not_a_folder" / "fits")] \
        + common[common.index("--fit-cache") + 2:]
    r = run_script(*unwritable, "--experiment-name", "unwritable")
    assert "not_a_folder" in one_error_line(r, "train.py")


def test_two_ranks_share_the_fits(tmp_path):
    """torchrun, 2 CPU ranks: the PSF measured once and broadcast, the fits shared, one store."""
    write_folders(tmp_path / "sim", n=6, seed=3)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "train.py",
           "--task", "substructure", "--data", str(tmp_path / "sim"), "--input-kind", "residual", "--fit-cache",
           str(tmp_path / "fits"), "--epochs", "1", "--batch-size", "4", "--output", str(tmp_path / "runs"),
           "--experiment-name", "ddp", "--cache-dir", str(tmp_path), *FAST]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("measuring the PSF on 18 images") == 1 and "18 of 18 images to fit" in r.stdout
    ckpt = torch.load(tmp_path / "runs" / "ddp" / "best.pt", weights_only=True)
    psf = ckpt["stats"]["input"]["psf_fwhm"]
    store = residual_maps.FitStore(str(tmp_path / "fits"), 0.05, psf)
    assert len(store.index()) == 18 and not [p for p in os.listdir(tmp_path) if p.startswith("lensing_cache_")]


def test_a_residual_run_is_named_apart_from_an_image_run():
    """The README's default run directory names: an image run and a residual run on the same data
    never share a directory."""
    import argparse
    from tasks import substructure
    args = argparse.Namespace(data="data/common/", model="resnet18", seed=42, init_from=None, linear_probe=False,
                              label_fraction=1.0, input_kind="residual")
    assert substructure.default_name(args) == "substructure_resnet18_residual_common_s42"
    args.input_kind = "image"
    assert substructure.default_name(args) == "substructure_resnet18_common_s42"


# --------------------------------------------------------------------------- a PSF per image (--psf-fwhm params)
def test_each_image_through_its_own_psf(tmp_path, short_fit):
    """One PSF per image: the maps are fit_smooth's through each image's PSF, the store keys an
    image with its PSF (the same image through another PSF is fitted again), and a PSF column with a
    missing or impossible value is refused."""
    images = rings(4)
    psfs = np.array([0.08, 0.12, 0.16, 0.2])
    maps = residual_maps.residual_maps(images, 0.05, psfs, str(tmp_path), progress=False)
    direct = fit.fit_smooth(torch.from_numpy(images[:, 0].astype(np.float64)), 0.05, torch.from_numpy(psfs))
    assert np.allclose(maps, ((direct["image"] - direct["model"]) / direct["sigma"]).float().numpy()[:, None],
                       atol=1e-5)
    one = fit.fit_smooth(torch.from_numpy(images[3:, 0].astype(np.float64)), 0.05, 0.2)  # the 4th alone, 0.2"
    assert np.allclose(maps[3], ((one["image"] - one["model"]) / one["sigma"]).float().numpy(), atol=1e-5)
    short_fit.clear()
    again = residual_maps.residual_maps(images, 0.05, psfs[[0, 1, 3, 2]], str(tmp_path), progress=False)
    assert short_fit == [2] and np.array_equal(again[:2], maps[:2])  # two images under another PSF: refitted
    store = residual_maps.FitStore(str(tmp_path), 0.05, psfs)
    assert json.load(open(os.path.join(store.dir, "config.json")))["psf_fwhm"] == "per_image"
    assert store.dir != residual_maps.FitStore(str(tmp_path), 0.05, 0.2).dir
    with pytest.raises(residual_maps.ResidualMapError, match="needs a psf_fwhm column"):
        residual_maps.psf_column(None, "sim/")
    with pytest.raises(residual_maps.ResidualMapError, match="1 of 3 images have no psf_fwhm"):
        residual_maps.psf_column(np.array([0.1, np.nan, 0.2]), "sim/")


def test_train_and_evaluate_through_each_images_psf(tmp_path):
    """--psf-fwhm params: a randomised simulation's images fitted each through its recorded PSF;
    the run's own test split through the same (nothing refitted); data without the column: one line."""
    write_folders(tmp_path / "sim", n=6, seed=5)
    rng = np.random.default_rng(0)
    with open(tmp_path / "sim" / "params.csv", "w") as f:
        f.write("file,psf_fwhm\n" + "".join(f"{c}/{i}.npy,{rng.uniform(0.08, 0.2):.4f}\n"
                                            for c in ("no", "sphere", "vort") for i in range(6)))
    common = ["--fit-cache", str(tmp_path / "fits"), "--no-progress"]
    r = run_script("train.py", "--task", "substructure", "--data", str(tmp_path / "sim"), "--input-kind", "residual",
                   "--psf-fwhm", "params", "--epochs", "1", "--batch-size", "8", "--output", str(tmp_path / "runs"),
                   "--experiment-name", "per_image", "--cache-dir", str(tmp_path), "--device", "cpu", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "18 of 18 images to fit (PSF 0." in r.stdout and "(per image)" in r.stdout
    ckpt = torch.load(tmp_path / "runs" / "per_image" / "best.pt", weights_only=True)
    assert ckpt["stats"]["input"]["psf_fwhm"] == "params"
    r = run_script("evaluate.py", "--run", str(tmp_path / "runs" / "per_image"), "--tta", "1", "--n-bootstrap", "10",
                   *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "macro AUC" in r.stdout and "to fit" not in r.stdout
    write_folders(tmp_path / "other", n=2, seed=9)  # no params.csv
    r = run_script("evaluate.py", "--run", str(tmp_path / "runs" / "per_image"), "--data", str(tmp_path / "other"),
                   "--psf-fwhm", "params", "--tta", "1", *common)
    assert "--psf-fwhm params needs a psf_fwhm column" in one_error_line(r, "evaluate.py")
