"""simulate.py --task lens | substructure | superres: layouts, round trips, determinism, resume,
bad input, and the class hygiene of the simulated sets."""
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from scipy import stats

from tests.conftest import terminate_when
from data import lens_images

SIM = ("simulate.py", "--no-progress", "--seed", "7")


def sim(script, *args):
    r = script(*SIM, *args)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def lsst_runs(tmp_path_factory):
    """The same 10 + 10 lsst objects as FITS folders and as one packed file."""
    from tests.conftest import run_script
    root = tmp_path_factory.mktemp("lsst")
    for fmt, out in (("fits", root / "fits"), ("h5", root / "set.h5")):
        r = run_script(*SIM, "--task", "lens", "--config", "lsst", "--n-lens", "10", "--n-nonlens", "10",
                       "--format", fmt, "--output", str(out))
        assert r.returncode == 0, r.stderr
    return root


def test_lsst_fits_layout_reads_back(lsst_runs):
    root = lsst_runs / "fits"
    packed, attrs = lens_images.read_h5(str(lsst_runs / "set.h5"))
    names = {d: sorted(os.listdir(root / d)) for d in ("lenses", "nonlenses")}
    assert len(names["lenses"]) == 10 * 5 and len(names["nonlenses"]) == 10 * 5
    pattern = re.compile(r"D1_([LN])(\d{7})_([grizy])\.fits")
    for folder, flag in (("lenses", "L"), ("nonlenses", "N")):
        for name in names[folder]:
            m = pattern.fullmatch(name)
            assert m and m.group(1) == flag, name
            index, band = int(m.group(2)), m.group(3)
            with fits.open(root / folder / name) as hdul:
                assert len(hdul) == 2 and hdul[0].data is None
                table = hdul[1]
                assert isinstance(table, fits.BinTableHDU)
                assert table.columns.names == ["object_id", f"band_{band}"]
                assert table.data["object_id"][0] == index
                image = table.data[f"band_{band}"][0]
                assert image.shape == (41, 41)
            row = int(np.flatnonzero(packed["index"] == index)[0])
            assert packed["labels"][row] == (flag == "L")
            np.testing.assert_array_equal(image, packed["images"][row, "grizy".index(band)])
    # the reader used by training accepts the files too
    oid, image = lens_images.read_fits_cutout(str(root / "lenses" / names["lenses"][0]))
    assert image.shape == (41, 41) and oid == int(names["lenses"][0][4:11])


def test_params_table_is_row_aligned(lsst_runs):
    table = lens_images.read_params_csv(str(lsst_runs / "fits" / "params.csv"))
    packed, _ = lens_images.read_h5(str(lsst_runs / "set.h5"))
    assert len(table["file"]) == 20
    for row, name in enumerate(table["file"]):
        index = int(table["index"][row])
        assert f"{index:07d}" in name and name.startswith("lenses/" if table["label"][row] == 1 else "nonlenses/")
        h5row = int(np.flatnonzero(packed["index"] == index)[0])
        for key in ("theta_e", "magnification", "arc_snr", "src_x", "psf_fwhm_i"):
            np.testing.assert_allclose(table[key][row], packed[f"params/{key}"][h5row], rtol=1e-6, equal_nan=True)
    lens = table["label"] == 1
    assert np.all(table["theta_e"][lens] >= 0.5) and np.all(table["theta_e"][~lens] == 0)
    assert np.all(table["magnification"][lens] > 1.5)  # lensed sources are magnified
    # the arc S/N cut holds for lenses and for non-lens look-alikes (kind 1 = plain galaxy)
    featured = lens | (table["kind"] != 1)
    assert np.all(table["arc_snr"][featured] >= 10)
    assert not np.all(np.diff(table["label"]) == 0)  # rows are not grouped by class


def test_model1_npy_like_the_public_set(tmp_path, script):
    sim(script, "--task", "substructure", "--config", "deeplense-model1", "--n-per-class", "4",
        "--format", "npy", "--output", str(tmp_path / "m1"), "--preview", "2")
    sim(script, "--task", "substructure", "--config", "deeplense-model1", "--n-per-class", "4", "--format", "h5",
        "--output", str(tmp_path / "m1.h5"))
    packed, attrs = lens_images.read_h5(str(tmp_path / "m1.h5"))
    table = lens_images.read_params_csv(str(tmp_path / "m1" / "params.csv"))
    assert (tmp_path / "m1" / "preview.png").stat().st_size > 10_000
    for row, name in enumerate(table["file"]):
        folder = name.split("/")[0]
        assert folder == ("no", "sphere", "vort")[int(table["label"][row])]
        image = np.load(tmp_path / "m1" / name)
        assert image.shape == (1, 150, 150) and image.dtype == np.float64
        assert image.min() == 0 and image.max() == 1
        h5row = int(np.flatnonzero(packed["index"] == table["index"][row])[0])
        np.testing.assert_array_equal(image, packed["images"][h5row])
        assert table["n_subhalos"][row] == (25 if folder == "sphere" else 0)
        assert np.isnan(table["m_axion_ev"][row]) == (folder != "vort")
        if folder == "sphere":
            masses = table["subhalo_masses"][row]
            assert masses.shape == (25,) and np.all((masses >= 1e6) & (masses <= 1e10))
            np.testing.assert_allclose(masses.sum(), table["subhalo_mass_total"][row], rtol=1e-5)
        if folder == "vort":
            assert 1e-24 <= table["m_axion_ev"][row] <= 1e-22
            np.testing.assert_allclose(table["vortex_half_length"][row], 0.03 * 1e-22 / table["m_axion_ev"][row],
                                       rtol=1e-5)
    assert json.loads(attrs["classes"]) == ["no", "sphere", "vort"]


MODEL1_COLUMNS = ("theta_e", "lens_e1", "lens_e2", "gamma1", "gamma2", "src_x", "src_y", "src_r_e", "src_n", "src_e1",
                  "src_e2", "n_subhalos", "subhalo_mass_total", "subhalo_mass_max", "subhalo_masses", "subhalo_x",
                  "subhalo_y", "m_axion_ev", "vortex_mass", "vortex_half_length", "vortex_angle", "peak_snr",
                  "magnification", "arc_snr", "psf_fwhm")


def test_substructure_default_is_common_in_the_public_layout(tmp_path, script):
    """simulate.py --task substructure without --config makes deeplense-common: the public set's
    layout, dtype and scaling, whole counts like its pixels, and Model I's parameter columns."""
    out = tmp_path / "common"
    sim(script, "--task", "substructure", "--n-per-class", "3", "--format", "npy", "--output", str(out),
        "--preview", "1")
    assert json.loads((out / "simulation.json").read_text())["config"] == "deeplense-common"
    assert (out / "preview.png").stat().st_size > 10_000
    table = lens_images.read_params_csv(str(out / "params.csv"))
    assert set(MODEL1_COLUMNS + ("peak_counts", "sky_counts")) <= set(table)
    assert len(table["file"]) == 9
    for row, name in enumerate(table["file"]):
        folder = name.split("/")[0]
        assert folder == ("no", "sphere", "vort")[int(table["label"][row])]
        image = np.load(out / name)
        assert image.shape == (1, 150, 150) and image.dtype == np.float64
        assert image.min() == 0 and image.max() == 1
        # min-max scaled whole counts: k / (max - min), as in the public samples
        steps = np.diff(np.unique(image))
        k = image / steps.min()
        np.testing.assert_allclose(k, np.round(k), atol=1e-6)
        assert 500 < 1 / steps.min() < 1200
        assert table["n_subhalos"][row] == (25 if folder == "sphere" else 0)
        assert np.isnan(table["m_axion_ev"][row]) == (folder != "vort")


PUBLIC_SUBSTRUCTURE = Path(__file__).parents[2] / "shared" / "samples" / "deeplense_substructure"
# statistics (bench/bench_substructure_realism.py) whose mean deeplense-common must match
MATCHED = ("ridge_axis_ratio", "ridge_angle_deg", "axis_ratio", "ring_radius", "ridge_radius", "peak_to_corner",
           "noise", "count_range")


@pytest.fixture(scope="module")
def substructure_statistics():
    """image_statistics of the 9 public samples, 60 deeplense-common and 30 deeplense-model1 images."""
    if not PUBLIC_SUBSTRUCTURE.is_dir():
        pytest.skip(f"no public samples at {PUBLIC_SUBSTRUCTURE}")
    from bench.bench_substructure_realism import image_statistics, load_public, simulate
    public = image_statistics(load_public(str(PUBLIC_SUBSTRUCTURE))[0])
    common = image_statistics(simulate("deeplense-common", 20, seed=0)[0])
    model1 = image_statistics(simulate("deeplense-model1", 10, seed=0)[0])
    return public, common, model1


def _public_tolerance(values):
    """Two standard errors of the public mean: 2 std / sqrt(n) over the samples that measure it."""
    values = values[np.isfinite(values)]
    return 2 * values.std() / math.sqrt(len(values))


def test_common_images_match_the_public_statistics(substructure_statistics):
    """deeplense-common's means are within two public standard errors of the public samples' (ring
    shape and orientation, ring radius, contrast, noise, counts), its rings share one orientation,
    and deeplense-model1 fails the same tolerances (rounder rings at any angle, less contrast), so
    the test can fail. (The moments' axis ratio does not separate Model I from the public set, 0.65
    against 0.63: an arc is flat whatever the lens; the ridge-line ellipse does, 0.94 against 0.76.)"""
    public, common, model1 = substructure_statistics
    for key in MATCHED:
        tol = _public_tolerance(public[key])
        off = np.nanmean(common[key]) - np.nanmean(public[key])
        assert abs(off) < tol, f"{key}: deeplense-common {np.nanmean(common[key]):.4g} vs public " \
                               f"{np.nanmean(public[key]):.4g} (tolerance {tol:.3g})"
    assert np.nanstd(public["ridge_angle_deg"]) < 20 and np.nanstd(common["ridge_angle_deg"]) < 20  # one orientation
    assert np.nanstd(model1["ridge_angle_deg"]) > 30
    for key in ("ridge_axis_ratio", "peak_to_corner", "noise", "count_range"):
        assert abs(np.nanmean(model1[key]) - np.nanmean(public[key])) > _public_tolerance(public[key]), key


def test_common_classes_share_lens_and_source_distributions():
    """Science hygiene: in deeplense-common the class changes the substructure only. The same
    seed gives every row the same lens, source, PSF and counts whatever the labels, and the
    classes' distributions agree (KS) on a set drawn with classes mixed."""
    import torch
    from physics.strong import scenes
    cfg = scenes.CONFIGS["deeplense-common"]
    shared = ("theta_e", "lens_e1", "lens_e2", "gamma1", "gamma2", "src_x", "src_y", "src_r_e", "src_n", "src_e1",
              "src_e2", "psf_fwhm", "peak_counts", "sky_counts", "peak_snr")
    labels = torch.arange(900) % 3
    _, params = scenes.sample(cfg, labels, torch.Generator().manual_seed(5))
    _, params_no = scenes.sample(cfg, torch.zeros_like(labels), torch.Generator().manual_seed(5))
    for key in shared:
        np.testing.assert_array_equal(params[key].numpy(), params_no[key].numpy(), err_msg=key)
    for key in shared[:12]:
        values = params[key].numpy()
        for c in range(3):
            p = stats.ks_2samp(values[labels == c], values[labels != c]).pvalue
            assert p > 0.001, f"{key} differs for class {c} (KS p = {p:.3g})"
    assert np.all(params["n_subhalos"].numpy()[labels == 1] == 25) and np.all(params["n_subhalos"].numpy()[labels != 1] == 0)
    # the calibrated substructure (COMMON_SUBSTRUCTURE): lighter subhalos, heavier and longer vortices than Model I's
    from physics.strong import substructure as sub
    spec, p = sub.COMMON_SUBSTRUCTURE, {k: v.numpy() for k, v in params.items()}
    sphere, vort = labels.numpy() == 1, labels.numpy() == 2
    masses = p["subhalo_masses"][sphere]
    assert spec.subhalo_mass[0] <= masses.min() and masses.max() <= spec.subhalo_mass[1] < 1e10
    assert np.all(p["vortex_mass"][vort] == spec.vortex_mass[0]) and spec.vortex_mass[0] > 3e10
    assert 0.3 - 1e-9 <= p["vortex_half_length"][vort].min() and p["vortex_half_length"][vort].max() <= 3 + 1e-9
    # the PSF measured on the public samples (0.20"), and a smooth source: no clumps (issue 26)
    lo, hi = sub.COMMON_PSF_FWHM
    assert lo <= p["psf_fwhm"].min() and p["psf_fwhm"].max() <= hi and lo > 0.087
    assert "src_clump_flux" not in p


def test_broad_draws_within_its_ranges_and_classes_share_them():
    """deeplense-broad: every drawn parameter within its documented range (and beyond Model I's and
    deeplense-common's fixed values); the class changes the substructure only (same seed, any
    labels: the same lens, source, PSF and counts; KS across classes)."""
    import torch
    from physics.strong import scenes
    from physics.strong import substructure as sub
    cfg = scenes.CONFIGS["deeplense-broad"]
    labels = torch.arange(900) % 3
    _, params = scenes.sample(cfg, labels, torch.Generator().manual_seed(5))
    _, params_no = scenes.sample(cfg, torch.zeros_like(labels), torch.Generator().manual_seed(5))
    p = {k: v.numpy() for k, v in params.items()}
    shared = ("theta_e", "lens_e1", "lens_e2", "gamma1", "gamma2", "src_x", "src_y", "src_r_e", "src_n", "src_e1",
              "src_e2", "src_clump_flux", "psf_fwhm", "peak_counts", "sky_counts")
    for key in shared:
        np.testing.assert_array_equal(p[key], params_no[key].numpy(), err_msg=key)
        for c in range(3):
            assert stats.ks_2samp(p[key][labels == c], p[key][labels != c]).pvalue > 0.001, (key, c)
    for key, (lo, hi) in (("theta_e", sub.BROAD_THETA_E), ("src_r_e", sub.BROAD_SRC_R_E), ("src_n", sub.BROAD_SRC_N),
                          ("psf_fwhm", sub.BROAD_PSF_FWHM), ("peak_counts", sub.BROAD_PEAK_COUNTS),
                          ("sky_counts", sub.BROAD_SKY_COUNTS)):
        assert lo <= p[key].min() and p[key].max() <= hi, key
        assert p[key].min() < lo + 0.1 * (hi - lo) and p[key].max() > hi - 0.1 * (hi - lo), key  # spans it
    shear = np.hypot(p["gamma1"], p["gamma2"])
    assert shear.max() <= sub.BROAD_SHEAR[1] + 1e-12 and (p["gamma2"] < -0.03).any()  # any direction
    assert (np.abs(p["src_x"]) <= sub.BROAD_SRC_BOX).all()
    sphere, vort = labels.numpy() == 1, labels.numpy() == 2
    n_sub = p["n_subhalos"][sphere]
    assert n_sub.min() == sub.BROAD_SUBSTRUCTURE.n_subhalos[0] and n_sub.max() == sub.BROAD_SUBSTRUCTURE.n_subhalos[1]
    assert (np.isfinite(p["subhalo_masses"][sphere]).sum(1) == n_sub).all() and (p["n_subhalos"][~sphere] == 0).all()
    masses = p["vortex_mass"][vort]
    assert sub.BROAD_SUBSTRUCTURE.vortex_mass[0] <= masses.min() and masses.max() <= sub.BROAD_SUBSTRUCTURE.vortex_mass[1]
    # spans Model I's and the calibrated deeplense-common's substructure
    for spec in (sub.MODEL1_SUBSTRUCTURE, sub.COMMON_SUBSTRUCTURE):
        for key in ("n_subhalos", "subhalo_slope", "vortex_mass", "axion_mass"):
            (lo, hi), (broad_lo, broad_hi) = getattr(spec, key), getattr(sub.BROAD_SUBSTRUCTURE, key)
            assert broad_lo <= lo and hi <= broad_hi, key
        assert spec.subhalo_mass[1] <= sub.BROAD_SUBSTRUCTURE.subhalo_mass[1]
    # PSFs from sharper than Model I's to broader than deeplense-common's
    assert sub.BROAD_PSF_FWHM[0] < 0.087 and sub.COMMON_PSF_FWHM[1] < sub.BROAD_PSF_FWHM[1]
    # clumps from none (Model I, deeplense-common) to BROAD_CLUMP_SCALE times BROAD_CLUMPS of BROAD_CLUMP_FRAC
    clumps, unscaled_most = p["src_clump_flux"], sub.BROAD_CLUMPS * sub.BROAD_CLUMP_FRAC[1]
    assert clumps.min() < 0.001 and unscaled_most < clumps.max() <= sub.BROAD_CLUMP_SCALE[1] * unscaled_most


def test_superres_pairs_show_the_same_scene(tmp_path, script):
    sim(script, "--task", "superres", "--n", "3", "--format", "npy", "--output", str(tmp_path / "sr"))
    hr_names, lr_names = (sorted(os.listdir(tmp_path / "sr" / d)) for d in ("HR", "LR"))
    assert hr_names == lr_names and len(hr_names) == 3
    for name in hr_names:
        hr, lr = np.load(tmp_path / "sr" / "HR" / name), np.load(tmp_path / "sr" / "LR" / name)
        assert hr.shape == (1, 150, 150) and lr.shape == (1, 75, 75)
        binned = hr[0].reshape(75, 2, 75, 2).mean((1, 3))
        assert np.corrcoef(binned.ravel(), lr[0].ravel())[0, 1] > 0.9
    sim(script, "--task", "superres", "--n", "3", "--output", str(tmp_path / "sr.h5"))
    packed, _ = lens_images.read_h5(str(tmp_path / "sr.h5"))
    assert packed["hr"].shape == (3, 1, 150, 150) and packed["lr"].shape == (3, 1, 75, 75)
    for row, index in enumerate(packed["index"]):
        np.testing.assert_array_equal(np.load(tmp_path / "sr" / "HR" / f"{index:07d}.npy"), packed["hr"][row])


def test_lens_finding_64_and_band_subsets(tmp_path, script):
    sim(script, "--task", "lens", "--config", "lens-finding-64", "--n-lens", "3", "--n-nonlens", "3",
        "--output", str(tmp_path / "lf.h5"))
    packed, _ = lens_images.read_h5(str(tmp_path / "lf.h5"))
    images = packed["images"]
    assert images.shape == (6, 3, 64, 64) and images.dtype == np.float32
    np.testing.assert_allclose(images.min((2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(images.max((2, 3)), 1, atol=1e-6)
    # a band subset is the same scenes' images in those bands
    sim(script, "--task", "lens", "--n-lens", "3", "--n-nonlens", "3", "--output", str(tmp_path / "all.h5"))
    sim(script, "--task", "lens", "--n-lens", "3", "--n-nonlens", "3", "--bands", "i,g",
        "--output", str(tmp_path / "ig.h5"))
    full, _ = lens_images.read_h5(str(tmp_path / "all.h5"))
    sub, attrs = lens_images.read_h5(str(tmp_path / "ig.h5"))
    np.testing.assert_array_equal(sub["images"], full["images"][:, [2, 0]])
    assert json.loads(attrs["bands"]) == ["i", "g"]


def test_same_output_for_workers_and_shards(tmp_path, script):
    args = ("--task", "substructure", "--n-per-class", "30")  # 90 images = 2 blocks
    sim(script, *args, "--output", str(tmp_path / "one.h5"))
    sim(script, *args, "--output", str(tmp_path / "two.h5"), "--num-workers", "2")
    for i in range(2):
        sim(script, *args, "--output", str(tmp_path / f"part{i}.h5"), "--shard", f"{i}/2")
    sim(script, "--merge", str(tmp_path / "part1.h5"), str(tmp_path / "part0.h5"), "--output", str(tmp_path / "merged.h5"))
    one, _ = lens_images.read_h5(str(tmp_path / "one.h5"))
    for other in ("two.h5", "merged.h5"):
        data, _ = lens_images.read_h5(str(tmp_path / other))
        assert data.keys() == one.keys()
        for key in one:
            np.testing.assert_array_equal(data[key], one[key], err_msg=f"{other}: {key}")
    labels = one["labels"]
    assert np.bincount(labels).tolist() == [30, 30, 30] and not np.all(np.diff(labels) >= 0)
    sim(script, *args, "--output", str(tmp_path / "seed8.h5"), "--seed", "8")
    other, _ = lens_images.read_h5(str(tmp_path / "seed8.h5"))
    assert not np.array_equal(other["images"], one["images"])


def test_killed_folder_run_resumes_to_the_same_files(tmp_path, script):
    args = ("--task", "substructure", "--n-per-class", "100", "--format", "npy")
    sim(script, *args, "--output", str(tmp_path / "ref"))
    out = tmp_path / "killed"
    state = out / ".simulate_state.json"
    code, err = terminate_when([*SIM, *args, "--output", str(out)], state.exists)
    assert code == 2 and "resume" in err, err
    r = sim(script, *args, "--output", str(out))
    assert "resuming" in r.stdout
    assert not state.exists()
    ref_files = sorted(str(p.relative_to(tmp_path / "ref")) for p in (tmp_path / "ref").rglob("*.npy"))
    out_files = sorted(str(p.relative_to(out)) for p in out.rglob("*.npy"))
    assert ref_files == out_files and len(ref_files) == 300
    for name in ref_files:
        np.testing.assert_array_equal(np.load(tmp_path / "ref" / name), np.load(out / name))
    assert (tmp_path / "ref" / "params.csv").read_text() == (out / "params.csv").read_text()


@pytest.mark.parametrize("bad, message", [
    (("--task", "lens", "--config", "hst-deep"), "invalid choice: 'hst-deep'"),
    (("--task", "lens", "--bands", "g,u"), "has bands g,r,i,z,y; cannot make u"),
    (("--task", "lens", "--n-lens", "0", "--n-nonlens", "0"), "nothing to simulate"),
    (("--task", "substructure", "--n-per-class", "-5"), "must be >= 0, got -5"),
    (("--task", "superres", "--n", "ten"), "not an integer: 'ten'"),
    (("--task", "substructure", "--config", "lsst"), "makes lens images, not --task substructure"),
    (("--task", "substructure", "--format", "fits"), "use npy or h5"),
    (("--task", "lens", "--colour", "blue"), "unrecognized arguments: --colour"),
    (("--task", "substructure", "--negatives", "hard"), "--negatives applies to --task lens only"),
    (("--task", "microlensing", "--negatives", "sky"), "--negatives applies to --task lens only"),
])
def test_bad_input_one_line(bad, message, tmp_path, script):
    r = script(*SIM, *bad, "--output", str(tmp_path / "out.h5"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_non_empty_output_folder_needs_overwrite(tmp_path, script):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    args = ("--task", "substructure", "--n-per-class", "2", "--format", "npy", "--output", str(folder))
    r = script(*SIM, *args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "is not empty; pass --overwrite" in r.stderr
    assert sorted(os.listdir(folder)) == ["notes.txt"]
    sim(script, *args, "--overwrite")
    first = sorted(str(p) for p in folder.rglob("*.npy"))
    assert len(first) == 6 and (folder / "notes.txt").exists()  # files we do not own are kept
    r = script(*SIM, *args)  # the same finished run again: refused, nothing touched
    assert r.returncode == 2 and "already holds this simulation, complete" in r.stderr
    r = script(*SIM, "--task", "substructure", "--output", str(folder))  # h5 onto a folder
    assert r.returncode == 2 and "is a folder; --format h5 writes one file" in r.stderr
    assert sorted(str(p) for p in folder.rglob("*.npy")) == first
    # a second, smaller run with --overwrite leaves no stale images of the first
    sim(script, "--task", "substructure", "--n-per-class", "1", "--format", "npy", "--output", str(folder),
        "--overwrite", "--seed", "9")
    assert len(list(folder.rglob("*.npy"))) == 3


@pytest.fixture(scope="module")
def hygiene_set(tmp_path_factory):
    """150 + 150 lsst objects with their true parameters ({name: array} as read_h5 gives)."""
    from tests.conftest import run_script
    path = tmp_path_factory.mktemp("hygiene") / "h.h5"
    r = run_script(*SIM, "--task", "lens", "--n-lens", "150", "--n-nonlens", "150", "--output", str(path))
    assert r.returncode == 0, r.stderr
    data, _ = lens_images.read_h5(str(path))
    return data


def test_classes_share_nuisance_distributions(hygiene_set):
    """Science hygiene: lenses and non-lenses draw deflector galaxies, seeing, depth, field
    objects, stars, blends and masks from one distribution, also after the arc S/N cut (a
    shortcut would show up here)."""
    data = hygiene_set
    lens = data["labels"] == 1
    for key in ("lens_mag_i", "lens_r_e", "lens_n", "deflector_theta_e", "psf_fwhm_i", "psf_fwhm_g", "n_field",
                "depth", "faint_deflector", "blend", "n_star", "n_saturated", "mask_kind", "mask_frac", "mask_nan"):
        # asymptotic p-values: counts and flags have ties, for which the exact ones are not defined
        p = stats.ks_2samp(data[f"params/{key}"][lens], data[f"params/{key}"][~lens], method="asymp").pvalue
        assert p > 0.01, f"{key} differs between lenses and non-lenses (KS p = {p:.3g})"
    # the blue features of non-lenses are about as bright as the arcs of lenses: the stamp colour
    # of lenses matches that of non-lenses with a feature (plain galaxies are redder, as they are)
    total = np.nan_to_num(data["images"]).sum((2, 3))  # (N, 5) flux
    colour = -2.5 * np.log10(np.clip(total[:, 0] / total[:, 2], 1e-3, None))  # g - i of the whole stamp
    featured = ~lens & (data["params/kind"] != 1)
    p = stats.ks_2samp(colour[lens], colour[featured]).pvalue
    assert p > 0.001, f"stamp colour separates lenses from look-alikes (KS p = {p:.3g})"
    arc = data["params/src_mag_i"][lens] - 2.5 * np.log10(data["params/magnification"][lens])
    p = stats.ks_2samp(arc, data["params/feature_mag_i"][featured]).pvalue
    assert p > 0.001, f"look-alike features and lensed arcs differ in brightness (KS p = {p:.3g})"


def test_lenses_show_resolved_arcs(hygiene_set):
    """The lens population is one a person can find: Einstein radii mostly beyond the seeing,
    arcs magnified, detected well above the cut and not buried in the deflector's light."""
    p = {k[7:]: v[hygiene_set["labels"] == 1] for k, v in hygiene_set.items() if k.startswith("params/")}
    assert np.mean(p["theta_e"] >= 0.8) > 0.75
    assert np.mean(p["theta_e"] < 0.8) > 0.03  # the hard small-theta_E tail is kept
    assert np.median(p["magnification"]) > 3.5
    assert np.mean(p["arc_snr"] > 30) > 0.8
    # unlensed light per unit arc light on the arc, around the Einstein radius
    assert np.median(p["unlensed_to_arc_g"]) < 1.0 and np.median(p["unlensed_to_arc_i"]) < 4.0
    assert np.all(np.isnan(hygiene_set["params/unlensed_to_arc_g"][hygiene_set["labels"] == 0]))


def test_flux_images_carry_masks_stars_and_nan(hygiene_set):
    """lsst flux cutouts have what real ones have: masked areas, NaN or zero, exactly where the
    saved mask parameters say, and stars."""
    images, params = hygiene_set["images"], {k[7:]: v for k, v in hygiene_set.items() if k.startswith("params/")}
    nan_frac = np.isnan(images).mean((1, 2, 3))
    nan_rows = params["mask_nan"] == 1
    np.testing.assert_allclose(nan_frac[nan_rows], params["mask_frac"][nan_rows])
    assert np.all(nan_frac[~nan_rows] == 0)
    assert np.any(nan_frac > 0) and np.any(params["n_star"] > 0)
    zero_rows = ~nan_rows & (params["mask_frac"] > 0)
    assert np.all((images[zero_rows] == 0).mean((1, 2, 3)) >= params["mask_frac"][zero_rows])


def test_stars_saturation_and_mask_geometry():
    """Renderer pieces: point sources keep their flux and centroid, saturate at the single-visit
    level with a flat top, and masks cover the pixels their geometry says."""
    import torch
    from physics.strong import render, scenes, survey
    from physics.strong.instrument import magnitude_to_flux
    cfg = scenes.CONFIGS["lsst"]
    flux = torch.tensor([[[100.0, 200.0]]], dtype=torch.float64)  # (B=1, S=1, C=2)
    x, y = torch.tensor([[0.13]], dtype=torch.float64), torch.tensor([[-0.27]], dtype=torch.float64)
    image = render.point_sources(flux, x, y, 41, 0.2)
    assert image.shape == (1, 2, 41, 41)
    np.testing.assert_allclose(image.sum((2, 3)).numpy(), [[100.0, 200.0]])
    axis = (np.arange(41) - 20) * 0.2
    band = image[0, 0].numpy()
    np.testing.assert_allclose([(band.sum(0) * axis).sum() / 100, (band.sum(1) * axis).sum() / 100], [0.13, -0.27])

    scene, params = scenes.sample(cfg, torch.tensor([1, 0, 1, 0]), torch.Generator().manual_seed(3))
    scene["star_flux"][:] = 0
    scene["star_flux"][0, 0] = magnitude_to_flux(11.0)  # far brighter than saturation in every band
    scene["star_x"][0, 0], scene["star_y"][0, 0] = 2.0, 2.0
    scene.update(mask_kind=torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64),
                 mask_side=torch.tensor([0.0, 0.0, 2.0, 0.0], dtype=torch.float64),
                 mask_a=torch.tensor([0.0, 5.0, 4.0, 10.0], dtype=torch.float64),
                 mask_b=torch.tensor([0.0, 0.0, 6.0, 2.0], dtype=torch.float64),
                 mask_nan=torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64))
    images = render.Renderer(cfg).render(scene, params, torch.Generator().manual_seed(4))["images"].numpy()
    level = render.saturation_level(survey.survey_bands(cfg), cfg.pixel_scale).numpy()
    np.testing.assert_allclose(np.nanmax(images[0], (1, 2)), level, rtol=1e-5)
    assert params["n_saturated"][0] > 4 and np.all((images[0] >= level[:, None, None] * (1 - 1e-5)).sum((1, 2)) > 4)
    np.testing.assert_allclose(params["mask_frac"].numpy(), [0, 5 * 41, 4 * 6, 2 * 41] / np.array(41.0 ** 2))
    assert np.isnan(images[1][:, :, :5]).all() and not np.isnan(images[1][:, :, 5:]).any()  # left edge strip
    corner = images[2][:, :4, -6:]  # bottom rows, right columns
    assert (corner == 0).all() and (images[2] == 0).sum() == 5 * 4 * 6
    assert np.isnan(images[3][:, :, 10:12]).all() and np.isnan(images[3]).sum() == 5 * 2 * 41


@pytest.mark.parametrize("negatives", ["sky", "hard"])
def test_nonlens_mix(negatives):
    """The non-lens kinds come in the chosen mix's shares (sky: rings at 1%; hard: 15%)."""
    import dataclasses

    import torch

    from physics.strong import scenes, survey
    cfg = dataclasses.replace(scenes.CONFIGS["lens-finding-64"], negatives=negatives)
    n = 20000
    _, params = scenes.sample(cfg, torch.zeros(n, dtype=torch.long), torch.Generator().manual_seed(0))
    shares = np.bincount(params["kind"].numpy().astype(int), minlength=len(survey.KIND_CODES))[1:1 + len(survey.NONLENS_KINDS)] / n
    expected = np.array(survey.NONLENS_MIXES[negatives])
    assert np.all(np.abs(shares - expected) < 4 * np.sqrt(expected * (1 - expected) / n) + 1e-3), (shares, expected)


def test_negatives_option_is_part_of_the_output(tmp_path, script):
    """--negatives hard is recorded with the output (part of its definition, so shards and resumes agree)."""
    out = tmp_path / "hard.h5"
    r = script("simulate.py", "--task", "lens", "--config", "lens-finding-64", "--n-lens", "4", "--n-nonlens", "40",
               "--negatives", "hard", "--seed", "2", "--output", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    import h5py
    with h5py.File(out, "r") as f:
        assert f.attrs["negatives"] == "hard"
        kinds = f["params/kind"][:][f["labels"][:] == 0]
    assert (kinds == 2).sum() >= 1  # 15% rings: ~6 of 40 (P(none) = 0.15%)
