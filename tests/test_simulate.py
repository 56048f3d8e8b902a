"""simulate.py --task microlensing for real on tiny sizes: schema, determinism, shards,
class balance and hygiene, resume after a kill, and bad input."""
import h5py
import numpy as np
import pytest
from scipy import stats

from data import microlensing_h5 as mlh5
from physics.microlensing.survey import model_magnitude
from tests.conftest import run_script, terminate_when

COUNTS = ["--n-flat", "30", "--n-pspl", "30", "--n-binary", "30", "--n-variable", "30"]


@pytest.fixture(scope="module")
def one_shot(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "one.h5"
    r = run_script("simulate.py", *COUNTS, "--seed", "7", "--output", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    return out


def assert_same_file(a, b):
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa.keys()) == sorted(fb.keys())
        for k in fa:
            if fa[k].dtype.names:  # compound: NaN-aware per field
                for name in fa[k].dtype.names:
                    assert np.array_equal(fa[k][name], fb[k][name], equal_nan=True), name
            else:
                assert np.array_equal(fa[k][()], fb[k][()], equal_nan=k != "labels"), k
        assert dict(fa.attrs).keys() == dict(fb.attrs).keys()
        for key in fa.attrs:
            assert np.array_equal(fa.attrs[key], fb.attrs[key]), key


def test_schema_and_row_alignment(one_shot):
    d = mlh5.load(one_shot)
    N, T = 120, 6912
    assert d["time"].shape == (T,) and d["time"].dtype == np.float64
    for k in ("mag", "mag_err", "magnification"):
        assert d[k].shape == (N, T) and d[k].dtype == np.float32
    assert d["labels"].dtype == np.int8
    assert list(d["attrs"]["class_names"]) == ["flat", "pspl", "binary", "variable"]
    for key in ("schema_version", "cadence_min", "season_days", "preset", "population", "seed", "code_version"):
        assert key in d["attrs"]
    assert d["attrs"]["population"] == "survey"
    labels, p = d["labels"], d["params"]
    assert np.bincount(labels, minlength=4).tolist() == [30, 30, 30, 30]
    # NaN exactly where a parameter is not defined for the class
    lensed = (labels == 1) | (labels == 2)
    assert np.all(np.isnan(p["tE"][~lensed])) and np.all(np.isfinite(p["tE"][lensed]))
    assert np.all(np.isnan(p["q"][labels != 2])) and np.all(np.isfinite(p["q"][labels == 2]))
    assert np.all(np.isnan(p["var_kind"][labels != 3])) and np.all(np.isfinite(p["var_kind"][labels == 3]))
    assert np.all(np.isfinite(p["m_base"]))  # every class has a star
    assert np.all(d["magnification"][labels == 0] == 1)
    assert np.all(d["magnification"][lensed].max(axis=1) > 1.01)
    assert np.all(np.abs(d["magnification"][labels == 3] - 1).max(axis=1) > 1e-3)  # variables vary
    # mag = m_base - 2.5 log10(fs A + 1 - fs) + noise, row by row, with errors that fit
    model = model_magnitude(p["m_base"][:, None], p["fs"][:, None], d["magnification"].astype(np.float64))
    chi2 = np.nanmean(((d["mag"] - model) / d["mag_err"]) ** 2, axis=1)
    assert np.all((chi2 > 0.85) & (chi2 < 1.15)), chi2
    np.testing.assert_allclose(p["m_base"], p["m_source"] + 2.5 * np.log10(p["fs"]))
    # ~5% missing epochs, NaN in mag and mag_err together
    assert np.array_equal(np.isnan(d["mag"]), np.isnan(d["mag_err"]))
    assert 0.04 < np.isnan(d["mag"]).mean() < 0.06


def test_rows_not_grouped_by_class(one_shot):
    labels = mlh5.load(one_shot)["labels"]
    rho, pval = stats.spearmanr(np.arange(len(labels)), labels)
    assert pval > 1e-3
    runs = 1 + np.count_nonzero(np.diff(labels))
    assert runs > 30  # sorted labels would give 3 runs; random order ~60


def test_same_output_for_any_worker_count(one_shot, tmp_path, script):
    out = tmp_path / "two.h5"
    r = script("simulate.py", *COUNTS, "--seed", "7", "--num-workers", "2", "--output", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert_same_file(one_shot, out)


def test_shards_merge_to_the_one_shot_file(one_shot, tmp_path, script):
    for i in range(3):
        r = script("simulate.py", *COUNTS, "--seed", "7", "--shard", f"{i}/3",
                   "--output", str(tmp_path / f"part{i}.h5"), "--no-progress")
        assert r.returncode == 0, r.stderr
    r = script("simulate.py", "--merge", *[str(tmp_path / f"part{i}.h5") for i in (2, 0, 1)],
               "--output", str(tmp_path / "merged.h5"))
    assert r.returncode == 0, r.stderr
    assert_same_file(one_shot, tmp_path / "merged.h5")
    # a missing shard is refused, and nothing is written
    r = script("simulate.py", "--merge", str(tmp_path / "part0.h5"), str(tmp_path / "part2.h5"),
               "--output", str(tmp_path / "bad.h5"))
    assert r.returncode == 2 and "missing [1]" in r.stderr
    assert not (tmp_path / "bad.h5").exists() and not (tmp_path / "bad.h5.partial").exists()


def test_different_seeds_differ(one_shot, tmp_path, script):
    out = tmp_path / "other.h5"
    assert script("simulate.py", *COUNTS, "--seed", "8", "--output", str(out), "--no-progress").returncode == 0
    assert not np.array_equal(mlh5.load(one_shot)["labels"], mlh5.load(out)["labels"])


def test_seed_command_and_preview(tmp_path, script):
    out, png = tmp_path / "test.h5", tmp_path / "test.png"
    r = script("simulate.py", "--n_flat", "5", "--n_pspl", "5", "--n_binary", "5", "--binary_preset", "planetary",
               "--output", str(out), "--num_workers", "1", "--seed", "3", "--oversample", "1.3", "--preview", str(png))
    assert r.returncode == 0, r.stderr
    d = mlh5.load(out)
    assert d["attrs"]["preset"] == "planetary" and len(d["labels"]) == 15
    assert list(d["attrs"]["class_names"]) == ["flat", "pspl", "binary"]  # no variables unless asked for
    q = d["params"]["q"][d["labels"] == 2]
    assert np.all((q >= 1e-4) & (q <= 1e-2))
    # --population thesis: the seed's table
    r = script("simulate.py", "--n_flat", "5", "--n_pspl", "5", "--n_binary", "5", "--population", "thesis",
               "--output", str(tmp_path / "thesis.h5"), "--seed", "3")
    assert r.returncode == 0, r.stderr
    d = mlh5.load(tmp_path / "thesis.h5")
    lensed = d["params"][d["labels"] > 0]
    assert d["attrs"]["population"] == "thesis"
    assert np.all((lensed["tE"] >= 5) & (lensed["tE"] <= 30)) and np.all((lensed["u0"] >= 1e-3) & (lensed["u0"] <= 1))
    assert np.all((lensed["t0"] >= 0.1 * 72) & (lensed["t0"] <= 0.9 * 72))
    assert np.all((d["params"]["m_source"] >= 18) & (d["params"]["m_source"] <= 24))
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_existing_output_is_kept(one_shot, script):
    before = one_shot.read_bytes()
    r = script("simulate.py", *COUNTS, "--output", str(one_shot))
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert one_shot.read_bytes() == before


@pytest.mark.parametrize("bad, message", [
    (["--binary-preset", "nonsense"], "invalid choice"),
    (["--n-flat", "-3"], "must be >= 0"),
    (["--shard", "3/2"], "0 <= I < N"),
    (["--shard", "x"], "expected I/N"),
    (["--oversample", "0.5"], "oversample must be >= 1"),
    (["--num-workers", "0"], "num-workers must be >= 1"),
    (["--no-such-flag"], "unrecognized arguments"),
])
def test_bad_input_one_line(bad, message, tmp_path, script):
    out = tmp_path / "x.h5"
    r = script("simulate.py", *COUNTS, "--output", str(out), *bad)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output(tmp_path, script):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for target in (blocker / "x.h5", "/proc/x.h5"):
        r = script("simulate.py", *COUNTS, "--output", str(target))
        assert r.returncode == 2 and "cannot write" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(tmp_path.iterdir()) == [blocker]


def test_killed_run_resumes_to_the_same_file(tmp_path, script):
    counts = ["--n-flat", "64", "--n-pspl", "64", "--n-binary", "512", "--seed", "5"]
    ref = tmp_path / "ref.h5"
    assert script("simulate.py", *counts, "--output", str(ref), "--no-progress").returncode == 0
    out = tmp_path / "killed.h5"
    partial = tmp_path / "killed.h5.partial"

    def some_rows_written():
        try:
            with h5py.File(partial, "r", locking=False) as f:
                return f.attrs.get("rows_done", 0) > 0
        except (OSError, KeyError):
            return False

    # binaries are slow enough (~100/s) that the run is still going after the first resume point
    code, err = terminate_when(["simulate.py", *counts, "--output", str(out), "--no-progress"], some_rows_written)
    assert code == 2 and "resume" in err, err
    assert partial.exists() and not out.exists()
    r = script("simulate.py", *counts, "--output", str(out), "--no-progress")
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr
    assert not partial.exists()
    assert_same_file(ref, out)


def test_reader_rejects_bad_files(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not hdf5")
    with pytest.raises(mlh5.SchemaError, match="not a readable HDF5"):
        mlh5.load(junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(mlh5.SchemaError, match="schema_version"):
        mlh5.load(other)


def test_binary_round_where_no_candidate_passes():
    """A round of the detectability cut in which every binary candidate fails must not crash
    (regression: an empty round's magnifications were reshaped to (0, -1))."""
    from physics.microlensing.events import EventConfig, EventSimulator
    sim = EventSimulator(EventConfig(preset="baseline", min_snr=200.0))  # most candidates fail
    rng = np.random.default_rng(0)
    params, magnification = sim._lensed(rng, 2, binary=True)
    assert magnification.shape == (2, len(sim.t)) and np.isfinite(params["q"]).all()
    assert (magnification.max(axis=1) > 1.0).all()


@pytest.mark.parametrize("name", ["simulate.py", "train.py", "evaluate.py", "predict.py"])
def test_help_of_every_stage_script(name, script):
    """--help prints every option (regression: a '%' in a population's description broke argparse)."""
    r = script(name, "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout and len(r.stdout.splitlines()) > 20
