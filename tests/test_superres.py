"""--task superres: PSNR / SSIM against known values and scikit-image, the pair reader and its
errors, a tiny CNN beating bicubic, train -> evaluate -> predict (npy and FITS with its WCS),
and mae_sr initialised from an MAE run."""
import csv
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data import sr_pairs
from engine import metrics
from models import create_model
from tests.conftest import run_script
from tests.test_mae import TINY, blobs
from tests.test_substructure import FAST, one_error_line


def write_pairs(root, n=24, size=32, factor=2, seed=0, fits=False):
    """HR images of Gaussian blobs and their LR images, the mean of factor x factor HR pixels."""
    hr = blobs(n, size, seed)
    lr = F.avg_pool2d(torch.from_numpy(hr), factor).numpy()
    for d in ("HR", "LR"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for i in range(n):
        np.save(os.path.join(root, "HR", f"img{i:03d}.npy"), hr[i])
        np.save(os.path.join(root, "LR", f"img{i:03d}.npy"), lr[i])
    return lr, hr


# --------------------------------------------------------------------------- metrics
def test_psnr_and_ssim_known_values_and_scikit_image():
    rng = np.random.default_rng(0)
    ref = torch.from_numpy(rng.random((2, 1, 96, 96)))
    ref[:, :, 0, 0], ref[:, :, -1, -1] = 0.0, 1.0  # data range exactly 1
    assert torch.isinf(metrics.psnr(ref, ref)).all()
    torch.testing.assert_close(metrics.ssim(ref, ref), torch.ones(2, dtype=torch.float64))
    sigma = 0.01  # noise of 1% of the range: 40 dB
    noisy = ref + sigma * torch.from_numpy(rng.standard_normal(ref.shape))
    assert np.allclose(metrics.psnr(noisy, ref).numpy(), 40.0, atol=0.1)
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    a, b = noisy[0, 0].numpy(), ref[0, 0].numpy()
    blurred = F.avg_pool2d(ref, 3, 1, 1)
    c = blurred[0, 0].numpy()
    assert metrics.psnr(noisy, ref)[0].item() == pytest.approx(peak_signal_noise_ratio(b, a, data_range=1.0), abs=1e-9)
    for x in (a, c):
        expected = structural_similarity(b, x, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
        ours = metrics.ssim(torch.from_numpy(x)[None, None], torch.from_numpy(b)[None, None], torch.tensor([1.0]))
        assert ours.item() == pytest.approx(expected, abs=1e-6)
    assert metrics.ssim(blurred, ref).mean() < 0.9
    # the sky-noise ceiling: a point source on sky of 1% of the range is a 40 dB bound
    from plots.superres_eval import noise_ceiling_psnr
    sky = np.zeros((4, 1, 64, 64))
    sky[:, 0, 30, 30] = 1.0
    sky += 0.01 * rng.standard_normal(sky.shape)
    assert noise_ceiling_psnr(sky) == pytest.approx(40.0, abs=1.0)
    assert np.isnan(noise_ceiling_psnr(np.zeros((2, 1, 32, 32))))


# --------------------------------------------------------------------------- the reader
def test_pair_reader_and_its_errors(tmp_path, monkeypatch):
    lr, hr = write_pairs(tmp_path / "ok", n=4)
    arrays, report = sr_pairs.load_pairs(str(tmp_path / "ok"), progress=False)
    np.testing.assert_array_equal(arrays["lr"], lr)
    np.testing.assert_array_equal(arrays["hr"], hr)
    assert arrays["ids"].tolist() == ["img000", "img001", "img002", "img003"]
    monkeypatch.chdir(tmp_path)  # a run records the absolute path: its key must not depend on the spelling
    assert sr_pairs.listing_key("ok") == sr_pairs.listing_key(str(tmp_path / "ok"))
    os.remove(tmp_path / "ok" / "HR" / "img002.npy")
    with pytest.raises(sr_pairs.PairError, match=r"LR/img002.npy: no .*HR/img002.npy of the same name"):
        sr_pairs.load_pairs(str(tmp_path / "ok"), progress=False)
    write_pairs(tmp_path / "bad", n=3)
    np.save(tmp_path / "bad" / "HR" / "img001.npy", np.zeros((1, 30, 30), np.float32))
    with pytest.raises(sr_pairs.PairError, match="mixed shapes"):
        sr_pairs.load_pairs(str(tmp_path / "bad"), progress=False)
    for i in range(3):
        np.save(tmp_path / "bad" / "HR" / f"img{i:03d}.npy", np.zeros((1, 40, 40), np.float32))
    with pytest.raises(sr_pairs.PairError, match="not the LR .* times one integer factor"):
        sr_pairs.load_pairs(str(tmp_path / "bad"), progress=False)
    assert sr_pairs.scale_factor((1, 25, 25), (1, 100, 100), "x") == 4


# --------------------------------------------------------------------------- models
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_shapes_and_gradients(scale):
    model = create_model("edsr", in_chans=2, scale=scale, n_features=8, n_blocks=1)
    out = model(torch.randn(2, 2, 10, 10))["sr"]
    assert out.shape == (2, 2, 10 * scale, 10 * scale)
    out.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_tiny_cnn_beats_bicubic_on_tiny_data():
    torch.manual_seed(0)
    from tasks.superres import normalise
    hr = torch.from_numpy(blobs(48, 32, seed=1, widths=(0.8, 2.0), noise=0.0))  # sharp: bicubic blurs them
    lr = F.avg_pool2d(hr, 2)
    x, y, _, _ = normalise(lr, hr)
    train, test = slice(0, 40), slice(40, 48)
    model = create_model("edsr", in_chans=1, scale=2, n_features=16, n_blocks=2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(200):
        loss = F.l1_loss(model(x[train])["sr"], y[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        ours = metrics.psnr(model(x[test])["sr"], y[test]).mean().item()
        bicubic = metrics.psnr(create_model("bicubic", scale=2)(x[test])["sr"], y[test]).mean().item()
    assert ours > bicubic + 2.0, (ours, bicubic)


# --------------------------------------------------------------------------- the scripts
def test_superres_train_evaluate_predict_and_bad_input(tmp_path):
    write_pairs(tmp_path / "pairs", n=30)
    base = ("train.py", "--task", "superres", "--output", str(tmp_path / "results"), "--batch-size", "8", *FAST)
    r = run_script(*base, "--data", str(tmp_path / "pairs"), "--epochs", "3", "--sr-features", "16", "--sr-blocks", "2",
                   "--lr", "2e-3")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "results" / "superres_edsr_pairs_s42"
    lines = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert all(np.isfinite(line["val_psnr"]) and "train_psnr" in line for line in lines)
    r = run_script("evaluate.py", "--run", str(run), *FAST)
    assert r.returncode == 0, r.stderr
    summary = json.load(open(run / "eval_test" / "evaluation_summary.json"))
    assert summary["n_images"] == 3 and summary["scale"] == 2
    for key in ("psnr_model", "psnr_bicubic", "ssim_model", "ssim_bicubic"):
        assert np.isfinite(summary[key]), key
    assert summary["psnr_gain_db"] == pytest.approx(summary["psnr_model"] - summary["psnr_bicubic"], abs=1e-6)
    assert {"mean", "rms", "flux_ratio_median"} <= set(summary["residuals"]["model"])
    assert np.isfinite(summary["noise_ceiling_psnr"])
    assert summary["psnr_bicubic_affine_oracle"] >= summary["psnr_bicubic"] - 1e-6  # least squares never loses
    for png in ("examples.png", "psnr_ssim_vs_bicubic.png"):
        assert os.path.getsize(run / "eval_test" / png) > 10_000
    with open(run / "eval_test" / "per_image_metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    # predict: .npy for .npy inputs, at the HR size
    r = run_script("predict.py", "--runs", str(run), "--input", str(tmp_path / "pairs" / "LR"),
                   "--output", str(tmp_path / "sr.csv"), *FAST)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "sr.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and np.load(rows[0]["output"]).shape == (1, 32, 32)
    # FITS inputs give FITS outputs with the header kept and the WCS on the finer pixels
    from astropy.io import fits
    (tmp_path / "fits_in").mkdir()
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": -5.0, "CRPIX1": 8.0,
                          "CRPIX2": 8.5, "CDELT1": -1e-5, "CDELT2": 1e-5, "BUNIT": "counts"})
    for i in range(2):
        fits.PrimaryHDU(np.load(tmp_path / "pairs" / "LR" / f"img{i:03d}.npy")[0], header=header).writeto(
            tmp_path / "fits_in" / f"lr{i}.fits")
    r = run_script("predict.py", "--runs", str(run), "--input", str(tmp_path / "fits_in"), "--output",
                   str(tmp_path / "f.csv"), "--image-dir", str(tmp_path / "f_sr"), *FAST)
    assert r.returncode == 0, r.stderr
    with fits.open(tmp_path / "f_sr" / "lr1.fits") as hdul:
        h = hdul[0].header
        assert hdul[0].data.shape == (32, 32) and h["BUNIT"] == "counts"
        assert (h["CRPIX1"], h["CRPIX2"], h["CDELT2"]) == (15.5, 16.5, 5e-6)
    # bad input, one line each
    write_pairs(tmp_path / "unpaired", n=4)
    os.remove(tmp_path / "unpaired" / "LR" / "img001.npy")
    line = one_error_line(run_script(*base, "--data", str(tmp_path / "unpaired")), "train.py")
    assert "HR/img001.npy: no" in line and "of the same name" in line
    write_pairs(tmp_path / "scale", n=4)
    for i in range(4):
        np.save(tmp_path / "scale" / "HR" / f"img{i:03d}.npy", np.zeros((1, 50, 50), np.float32))
    line = one_error_line(run_script(*base, "--data", str(tmp_path / "scale")), "train.py")
    assert "times one integer factor" in line
    line = one_error_line(run_script(*base, "--data", str(tmp_path / "pairs"), "--model", "bicubic"), "train.py")
    assert "nothing to train" in line
    line = one_error_line(run_script(*base, "--data", str(tmp_path / "pairs"), "--input-size", "64"), "train.py")
    assert "--input-size" in line
    line = one_error_line(run_script(*base, "--data", str(tmp_path / "pairs" / "LR")), "train.py")
    assert "no LR/ and HR/ folders" in line
    np.save(tmp_path / "lr_other.npy", np.zeros((1, 20, 20), np.float32))
    line = one_error_line(run_script("predict.py", "--runs", str(run), "--input", str(tmp_path / "lr_other.npy"),
                                     "--output", str(tmp_path / "x.csv"), *FAST), "predict.py")
    assert "shape (1, 20, 20)" in line


def test_fits_output_keeps_the_sky_coordinates(tmp_path):
    from astropy.io import fits
    from astropy.wcs import WCS
    for cd in (True, False):
        header = fits.Header()
        header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.1, CRVAL2=2.2, CRPIX1=8.3, CRPIX2=7.9,
                      CUNIT1="deg", CUNIT2="deg", OBJECT="lens 7")
        if cd:
            header.update(CD1_1=-5e-5, CD1_2=1e-6, CD2_1=1.2e-6, CD2_2=5e-5)
        else:
            header.update(CDELT1=-5e-5, CDELT2=5e-5)
        path = str(tmp_path / f"in{cd}.fits")
        fits.PrimaryHDU(np.ones((16, 16), np.float32), header=header).writeto(path)
        out = str(tmp_path / f"out{cd}.fits")
        sr_pairs.write_image(out, np.ones((1, 48, 48), np.float32), 3, path)
        with fits.open(out) as hdul:
            assert hdul[0].data.shape == (48, 48) and hdul[0].header["OBJECT"] == "lens 7"
            new = WCS(hdul[0].header)
        old = WCS(header)
        coarse = np.array([[1.0, 1.0], [8.3, 7.9], [16.0, 3.5], [0.5, 0.5]])  # FITS pixels (1-based)
        fine = (coarse - 0.5) * 3 + 0.5
        np.testing.assert_allclose(new.all_pix2world(fine, 1), old.all_pix2world(coarse, 1), rtol=0, atol=1e-10)


def test_mae_sr_from_an_mae_run(tmp_path):
    write_pairs(tmp_path / "pairs", n=12)
    r = run_script("train.py", "--task", "mae", "--data", str(tmp_path / "pairs" / "HR"), "--output",
                   str(tmp_path / "r"), "--experiment-name", "mae", "--epochs", "1", "--batch-size", "4",
                   "--patch-size", "4", *TINY, *FAST)
    assert r.returncode == 0, r.stderr
    mae = str(tmp_path / "r" / "mae")
    base = ("train.py", "--task", "superres", "--output", str(tmp_path / "r"), "--epochs", "1", "--batch-size", "4", *FAST)
    r = run_script(*base, "--data", str(tmp_path / "pairs"), "--init-from", mae)
    assert r.returncode == 0, r.stderr
    assert "loaded" in r.stdout
    ckpt = torch.load(tmp_path / "r" / "superres_mae_sr_pairs_mae_s42" / "best.pt", weights_only=True)
    assert ckpt["model_name"] == "mae_sr" and ckpt["model_kwargs"]["patch_size"] == 4
    write_pairs(tmp_path / "big", n=10, size=64)
    line = one_error_line(run_script(*base, "--data", str(tmp_path / "big"), "--init-from", mae), "train.py")
    assert "pretrained on 1x32x32 images, this data has 1x64x64" in line
