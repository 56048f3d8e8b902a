"""Training copies (ground-survey cadences, truncated seasons) and events observed by several
telescopes (real survey photometry)."""
import numpy as np
import pytest

from data import microlensing as task_data
from data.survey_augment import ground_block, ground_survey
from physics.microlensing.single import pspl_magnification
from tests.conftest import run_script

GRID = {"season_days": 72.0, "bin_minutes": 120.0, "n_bins": 864, "bin_days": 120 / 1440, "features": "pspl_residual"}


def test_ground_versions_only_remove_epochs_and_keep_the_signal(tiny_h5):
    from data import microlensing_h5 as mlh5
    d = mlh5.load(tiny_h5)
    rows = np.arange(len(d["labels"]))
    dense, labels, params = task_data.h5_features(tiny_h5, GRID, rows, progress=False)
    ground, labels_g, params_g = task_data.h5_features(tiny_h5, GRID, rows, progress=False, survey_seed=5)
    assert np.array_equal(labels, labels_g) and params.tobytes() == params_g.tobytes()  # labels, events unchanged
    assert ground.shape == dense.shape
    seen_dense, seen_ground = dense[..., 3] > 0, ground[..., 3] > 0
    assert not (seen_ground & ~seen_dense).any()          # epochs are only ever removed
    assert seen_ground.sum() < 0.7 * seen_dense.sum()     # nights, weather and cadence thin the season
    # every lensed curve and every variable keeps observed epochs of significant signal (a
    # variable's may be a fading: eclipses)
    from physics.microlensing.survey import NoiseModel, lensing_snr
    assert (labels == 3).any()
    for i in np.flatnonzero(labels > 0):
        sig = np.abs(lensing_snr(NoiseModel(), d["params"]["m_base"][i:i + 1], d["params"]["fs"][i:i + 1],
                                 d["magnification"][i:i + 1])) >= 5
        m, e = ground_block(5, [i], d["time"], d["mag"][i:i + 1], d["mag_err"][i:i + 1], sig)
        assert (np.isfinite(m[0]) & sig[0]).sum() >= 3
        t_obs = d["time"][np.isfinite(m[0])]
        assert 0 <= t_obs.min() and t_obs.max() <= 72.0
    # a row's version depends on (seed, row) only, not on which rows are read with it
    one, _, _ = task_data.h5_features(tiny_h5, GRID, [7], progress=False, survey_seed=5)
    # (up to one float16 step of the residual channel: the fit's batched solves may round differently)
    np.testing.assert_array_equal(one[0][..., :4], ground[7][..., :4])
    np.testing.assert_allclose(one[0].astype(np.float32), ground[7].astype(np.float32), rtol=2e-3, atol=2e-3)


def test_truncated_copies_are_the_early_detection_features(tiny_h5):
    """A row's truncated training copy is exactly what evaluate.py's early detection computes at
    that row's fraction: features and fit from the epochs kept only."""
    fractions = task_data.truncation_fractions(3, 60)
    assert fractions.min() >= 0.1 and fractions.max() <= 1.0
    rows = np.array([4, 11, 30])
    per_row, _, _ = task_data.h5_features(tiny_h5, GRID, rows, progress=False, truncate_fraction=fractions[rows])
    for k, r in enumerate(rows):
        one, _, _ = task_data.h5_features(tiny_h5, GRID, [r], progress=False, truncate_fraction=fractions[r])
        np.testing.assert_allclose(per_row[k].astype(np.float32), one[0].astype(np.float32), atol=2e-3)
        assert not per_row[k, int(np.ceil(fractions[r] * 864)) + 1:].any()   # nothing after the cut


def test_training_copies_depend_on_seed_epoch_and_row_only():
    from types import SimpleNamespace

    from tasks.microlensing import make_fetch
    n = 200
    arrays = {"features": np.zeros((n, 8, 6), np.float16), "labels": np.zeros(n, np.int64),
              "features_ground": np.ones((n, 8, 6), np.float16), "features_truncated": np.full((n, 8, 6), 2, np.float16)}
    data = SimpleNamespace(arrays=arrays, labels=arrays["labels"])
    stats = {"mean": [0.0] * 5, "std": [1.0] * 5}
    args = SimpleNamespace(seed=1, survey_augment=0.25, truncate_augment=0.3)
    fetch = make_fetch(data, stats, args, "cpu", train=True)
    fetch.set_epoch(3)
    whole = fetch(np.arange(n))[0][:, 0, 3].numpy()  # the mask channel is not rescaled: 0, 1 or 2 says the copy
    halves = np.concatenate([fetch(np.arange(0, n, 2))[0][:, 0, 3].numpy(), fetch(np.arange(1, n, 2))[0][:, 0, 3].numpy()])
    np.testing.assert_array_equal(np.concatenate([whole[0::2], whole[1::2]]), halves)  # any split of the rows
    assert 0.15 < (whole == 1).mean() < 0.35 and 0.2 < (whole == 2).mean() < 0.4
    fetch.set_epoch(4)
    assert not np.array_equal(fetch(np.arange(n))[0][:, 0, 3].numpy(), whole)            # new copies each epoch
    val = make_fetch(data, stats, args, "cpu", train=False)
    np.testing.assert_array_equal(val(np.arange(n))[0].numpy(), val(np.arange(n))[0].numpy())


def test_ground_survey_rescales_errors_and_adds_outliers():
    rng = np.random.default_rng(0)
    t = np.arange(0, 72, 15 / 1440)
    mag = np.full(len(t), 19.0, np.float32)
    err = np.full(len(t), 0.01, np.float32)
    ratios, n_obs = [], []
    for _ in range(40):
        m, e = ground_survey(rng, t, mag, err)
        ok = np.isfinite(m)
        assert np.array_equal(ok, np.isfinite(e))
        ratios.append(np.median(e[ok]) / np.sqrt(0.01 ** 2 + np.var(m[ok][np.abs(m[ok] - 19) < 0.2])))
        n_obs.append(ok.sum() / 72)
    assert min(ratios) < 0.8 and max(ratios) > 1.25     # reported errors both under- and over-estimate
    assert min(n_obs) < 0.5 and max(n_obs) > 30         # from an epoch every few nights to dense coverage


def _telescope_file(path, t, A, m_base, fs, sigma, rng):
    mag = m_base - 2.5 * np.log10(fs * A + 1 - fs) + sigma * rng.standard_normal(len(t))
    np.savetxt(path, np.c_[t + 2450000.0, mag, np.full(len(t), sigma)], fmt="%.6f")


def _two_telescopes(seed, n_a, n_b, path_a, path_b):
    """One PSPL event (t0 8036, tE 15 d, u0 0.08) seen by two telescopes with their own baselines
    and blending, written as two photometry files."""
    rng = np.random.default_rng(seed)
    ta = np.sort(rng.uniform(8000, 8072, n_a))
    tb = np.sort(rng.uniform(8010, 8060, n_b))
    _telescope_file(path_a, ta, pspl_magnification(ta, 8036.0, 15.0, 0.08), 18.0, 0.4, 0.01, rng)
    _telescope_file(path_b, tb, pspl_magnification(tb, 8036.0, 15.0, 0.08), 19.3, 0.9, 0.01, rng)


def test_event_of_two_telescopes_is_tied_into_one_curve(tmp_path):
    """Two telescopes see one event with their own baselines and blending: after the joint fit
    their fluxes lie on one curve (residual pulls are noise), unlike a plain concatenation."""
    _two_telescopes(2, 500, 300, tmp_path / "ogle.dat", tmp_path / "kmt.dat")
    files = [str(tmp_path / "ogle.dat"), str(tmp_path / "kmt.dat")]
    feats, info = task_data.event_features(files, GRID, "ev")
    assert feats.shape == (1, 864, 6) and info["n_files"] == 2 and info["n_epochs"] == 800
    pulls = np.sinh(feats[0, :, 4].astype(np.float64))[feats[0, :, 3] > 0]
    assert np.sqrt(np.mean(pulls ** 2)) < 2.0
    both = tmp_path / "both.dat"
    both.write_text(open(files[0]).read() + open(files[1]).read())
    naive, _, _ = task_data.file_features(str(both), GRID, progress=False)
    naive_pulls = np.sinh(naive[0, :, 4].astype(np.float64))[naive[0, :, 3] > 0]
    assert np.sqrt(np.mean(naive_pulls ** 2)) > 5 * np.sqrt(np.mean(pulls ** 2))


def test_survey_formats_pysis_and_csv_bands(tmp_path):
    """KMTNet pySIS files (HJD', dflux, flux_err, mag, mag_err, fwhm, sky, secz) are read from their
    magnitude columns; a CSV table with a band column is one event whose bands are its telescopes,
    the same as the two files given together; one band can be chosen."""
    from data.photometry import read_bands, read_photometry
    _two_telescopes(3, 400, 250, tmp_path / "a.dat", tmp_path / "b.dat")
    a, b = np.loadtxt(tmp_path / "a.dat"), np.loadtxt(tmp_path / "b.dat")
    # pySIS: HJD-2450000 first, difference fluxes that go negative, magnitudes in columns 4-5,
    # and a 99.999 magnitude where the photometry failed (dropped)
    dflux = 1000 * (10 ** (-0.4 * (a[:, 1] - 18.0)) - 1.0)
    pysis = np.c_[a[:, 0] - 2450000, dflux, np.full(len(a), 30.0), a[:, 1], a[:, 2], np.full(len(a), 3.1),
                  np.full(len(a), 900.0), np.full(len(a), 1.2)]
    pysis[5, 3] = 99.999
    np.savetxt(tmp_path / "KMTC01_I.pysis", pysis, fmt="%.5f")
    np.savetxt(tmp_path / "kmt_like.dat", pysis, fmt="%.5f")  # no suffix: recognised by its columns
    for name in ("KMTC01_I.pysis", "kmt_like.dat"):
        t, m, e = read_photometry(tmp_path / name)
        keep = np.arange(len(a)) != 5
        np.testing.assert_allclose(t, a[keep, 0] - 2450000, atol=1e-5)
        np.testing.assert_allclose(m, a[keep, 1], atol=1e-5)
        np.testing.assert_allclose(e, a[keep, 2], atol=1e-5)
    # CSV with a header and a band column (MJD times), rows interleaved
    rows = [(t - 2400000.5, m, e, "I") for t, m, e in a] + [(t - 2400000.5, m, e, "V") for t, m, e in b]
    rows.sort()
    (tmp_path / "event.csv").write_text("mjd,mag,magerr,filter\n" + "\n".join(
        f"{t:.6f},{m:.5f},{e},{band}" for t, m, e, band in rows))
    bands = read_bands(tmp_path / "event.csv")
    assert list(bands) == ["I", "V"] or list(bands) == ["V", "I"]
    np.testing.assert_allclose(bands["V"][0], b[:, 0] - 2450000, atol=1e-5)  # MJD -> HJD-2450000
    np.testing.assert_allclose(read_photometry(tmp_path / "event.csv", band="V")[1], b[:, 1], atol=1e-5)
    assert len(read_photometry(tmp_path / "event.csv")[0]) == len(a)  # default: the band with most epochs
    with pytest.raises(Exception, match="no band 'R'"):
        read_photometry(tmp_path / "event.csv", band="R")
    one, _, infos = task_data.file_features(str(tmp_path / "event.csv"), GRID, progress=False)
    two, info = task_data.event_features([str(tmp_path / "a.dat"), str(tmp_path / "b.dat")], GRID, "ev")
    assert infos[0]["n_curves"] == 2 and info["n_curves"] == 2
    np.testing.assert_allclose(one.astype(np.float32), two.astype(np.float32), atol=2e-2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_h5):
    out = tmp_path_factory.mktemp("runs")
    r = run_script("train.py", "--data", tiny_h5, "--output", str(out), "--epochs", "1", "--experiment-name", "g",
                   "--survey-augment", "0.5", "--no-progress")
    assert r.returncode == 0, r.stderr
    return str(out / "g")


def test_predict_events_from_folders_and_event_groups(tmp_path, run_dir):
    rng = np.random.default_rng(3)
    for ev in ("ev1", "ev2"):
        (tmp_path / "events" / ev).mkdir(parents=True)
        t = np.sort(rng.uniform(8000, 8072, 300))
        for name, m_base, fs in (("ogle.dat", 18.0, 0.5), ("kmt.dat", 18.7, 0.8)):
            _telescope_file(tmp_path / "events" / ev / name, t, pspl_magnification(t, 8036.0, 10.0, 0.1), m_base, fs,
                            0.01, rng)
    out = tmp_path / "p.csv"
    r = run_script("predict.py", "--runs", run_dir, "--input", str(tmp_path / "events"), "--event-folders",
                   "--output", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    import csv
    rows = list(csv.DictReader(open(out)))
    assert [row["id"] for row in rows] == ["ev1", "ev2"]
    r = run_script("predict.py", "--runs", run_dir, "--event", str(tmp_path / "events/ev1/ogle.dat"),
                   str(tmp_path / "events/ev1/kmt.dat"), "--output", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 1 and rows[0]["id"] == "ogle.dat+kmt.dat"
    assert abs(sum(float(rows[0][k]) for k in ("p_flat", "p_pspl", "p_binary", "p_variable")) - 1) < 1e-4


def test_bad_events_give_one_line(tmp_path, run_dir):
    rng = np.random.default_rng(4)
    ev = tmp_path / "ev"
    ev.mkdir()
    t = np.sort(rng.uniform(8000, 8072, 300))
    _telescope_file(ev / "ogle.dat", t, pspl_magnification(t, 8036.0, 10.0, 0.1), 18.0, 0.5, 0.01, rng)
    (ev / "broken.dat").write_text("8001.0 18.0 0.01\n8002.0 abc 0.01\n")
    r = run_script("predict.py", "--runs", run_dir, "--input", str(tmp_path), "--event-folders", "--output",
                   str(tmp_path / "p.csv"), "--no-progress")
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "broken.dat" in lines[0] and "not numeric" in lines[0], r.stderr
    assert not (tmp_path / "p.csv").exists()
    (ev / "broken.dat").unlink()
    late = np.sort(rng.uniform(8040, 8072, 100))        # another band, seen only after the first file ends
    _telescope_file(ev / "v_band.dat", late, pspl_magnification(late, 8036.0, 10.0, 0.1), 19.0, 0.5, 0.01, rng)
    _telescope_file(ev / "ogle.dat", t[t < 8030], pspl_magnification(t[t < 8030], 8036.0, 10.0, 0.1), 18.0, 0.5,
                    0.01, rng)
    r = run_script("predict.py", "--runs", run_dir, "--input", str(ev), "--event-folders", "--output",
                   str(tmp_path / "p.csv"), "--no-progress")
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "no overlap in time" in lines[0], r.stderr


def test_despike_drops_ground_outliers_and_keeps_every_lensing_epoch(tiny_h5, monkeypatch):
    """data.lightcurves.despike (`train.py --despike`): the one-epoch outliers of ground versions go,
    the rest stays; a simulated event, peaks and caustic crossings included, loses no epoch."""
    import h5py
    from data import survey_augment as sa
    from data.lightcurves import despike, grid_features
    t = np.arange(0, 72, 15 / 1440)
    err = np.full(len(t), 0.01, np.float32)
    found = kept = n_out = n_in = 0
    for s in range(30):
        mag = (19.0 + 0.01 * np.random.default_rng(100 + s).standard_normal(len(t))).astype(np.float32)
        with_out = sa.ground_survey(np.random.default_rng(s), t, mag, err)
        with monkeypatch.context() as mp:  # the same version (same draws) without its outliers
            mp.setattr(sa, "OUTLIERS", (0.0, 0.0))
            clean = sa.ground_survey(np.random.default_rng(s), t, mag, err)
        seen = np.isfinite(with_out[0])
        outlier = seen & (with_out[0] != clean[0])
        dropped = seen & ~np.isfinite(despike(t, with_out[0][None], with_out[1][None])[0][0])
        found, n_out = found + (dropped & outlier).sum(), n_out + outlier.sum()
        kept, n_in = kept + (~dropped & seen & ~outlier).sum(), n_in + (seen & ~outlier).sum()
    assert n_out > 100 and found / n_out > 0.7      # measured 248 of 324 (5-20 sigma; the faint ones stay)
    assert kept / n_in > 0.999                      # measured 2 of 22,109 dropped
    from physics.microlensing.survey import model_magnitude
    with h5py.File(tiny_h5, "r") as f:
        lensed = np.flatnonzero(np.isin(f["labels"][:], (1, 2)))  # PSPL and binary events
        time, mag, e, p = f["time"][:], f["mag"][lensed], f["mag_err"][lensed], f["params"][lensed]
        true = model_magnitude(p["m_base"][:, None], p["fs"][:, None], f["magnification"][lensed].astype(np.float64))
    out_m, out_e = despike(time, mag, e)
    dropped = np.isfinite(mag) & ~np.isfinite(out_m)
    assert np.array_equal(dropped, np.isfinite(e) & ~np.isfinite(out_e))
    # what goes is noise far from the true curve (a faint star's flux noise has a long tail in
    # magnitudes), never the event: 24 of 9.8 million epochs of 1,500 survey-set events, all 4.4-12 sigma off
    assert dropped.sum() <= 1e-4 * np.isfinite(mag).sum()
    assert (np.abs(mag - true)[dropped] > 4 * e[dropped]).all()
    # the run's grid carries the choice: features with and without differ where an outlier was
    m, e1 = sa.ground_survey(np.random.default_rng(3), t, (19.0 + 0.01 * np.random.default_rng(7).standard_normal(len(t))
                                                            ).astype(np.float32), err)
    plain = grid_features(t, m[None], e1[None], 0.0, GRID)
    assert not np.array_equal(grid_features(t, m[None], e1[None], 0.0, {**GRID, "despike": True}), plain)
    assert np.array_equal(grid_features(t, m[None], e1[None], 0.0, {**GRID, "despike": False}), plain)
