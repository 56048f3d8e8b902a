"""simulate.py --task lens | substructure | superres: layouts, round trips, determinism, resume,
bad input, and the class hygiene of the simulated sets."""
import json
import os
import re

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
    sim(script, "--task", "substructure", "--n-per-class", "4", "--format", "h5", "--output", str(tmp_path / "m1.h5"))
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


def test_classes_share_nuisance_distributions(tmp_path, script):
    """Science hygiene: lenses and non-lenses draw deflector galaxies, seeing and field objects
    from one distribution, also after the arc S/N cut (a shortcut would show up here)."""
    sim(script, "--task", "lens", "--n-lens", "150", "--n-nonlens", "150", "--output", str(tmp_path / "h.h5"))
    data, _ = lens_images.read_h5(str(tmp_path / "h.h5"))
    lens = data["labels"] == 1
    for key in ("lens_mag_i", "lens_r_e", "lens_n", "psf_fwhm_i", "psf_fwhm_g", "n_field"):
        p = stats.ks_2samp(data[f"params/{key}"][lens], data[f"params/{key}"][~lens]).pvalue
        assert p > 0.01, f"{key} differs between lenses and non-lenses (KS p = {p:.3g})"
    # the blue features of non-lenses are about as bright as the arcs of lenses
    total = data["images"].sum((2, 3))  # (N, 5) flux
    colour = -2.5 * np.log10(np.clip(total[:, 0] / total[:, 2], 1e-3, None))  # g - i of the whole stamp
    p = stats.ks_2samp(colour[lens], colour[~lens]).pvalue
    assert p > 0.001, f"stamp colour separates the classes (KS p = {p:.3g})"
