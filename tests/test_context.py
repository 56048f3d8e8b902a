"""The years around an event's season (physics/microlensing/context.py): what the simulator records
of each star outside the season, the survey schedules that choose which days were seen, and the
context view of the features (data/lightcurves.py)."""
import numpy as np
import pytest

from data.lightcurves import grid_features
from physics.microlensing import context as C
from physics.microlensing import variables as V
from physics.microlensing.binary import make_vbbl
from physics.microlensing.events import (BINARY, FLAT, PSPL, VARIABLE, EventConfig, EventSimulator,
                                         shuffled_labels)
from physics.microlensing.single import espl_magnification
from physics.microlensing.survey import NoiseModel, Season, model_magnitude


def test_context_grid_and_day_noise():
    t = C.context_times(72.0)
    assert len(t) == 1920 and np.allclose(np.diff(t), 1.0) and abs(t.mean() - 36.0) < 1e-9
    noise, season = NoiseModel(), Season()
    day = C.day_noise(noise, season)
    k = 96 * (1 - season.missing_fraction)
    for mag in (20.0, 24.0):  # photon + sky + read noise of the day's mean fall as 1/sqrt(k)
        single = noise.flux_sigma(noise.counts(mag)) / noise.counts(mag)
        daily = day.flux_sigma(day.counts(mag)) / day.counts(mag)
        assert np.isclose(daily, single / np.sqrt(k), rtol=1e-9)
    assert day.floor_mag == noise.floor_mag


def test_season_rows_do_not_depend_on_the_context():
    labels = shuffled_labels(3, 6, 6, 3, 6)
    a = EventSimulator(EventConfig()).block(3, 0, labels)
    b = EventSimulator(EventConfig(context_days=0)).block(3, 0, labels)
    assert "context_mag" in a and "context_mag" not in b
    for key in ("mag", "mag_err", "magnification"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["context_mag"].shape == (len(labels), 1920)
    with pytest.raises(ValueError, match="context_days"):
        EventConfig(context_days=10.0)


@pytest.fixture(scope="module")
def block():
    sim = EventSimulator(EventConfig())
    labels = shuffled_labels(4, 12, 12, 6, 20)
    return sim, labels, sim.block(4, 0, labels)


def test_context_of_flat_and_single_lens_stars_follows_their_model(block):
    sim, labels, b = block
    p, t = b["params"], sim.t_context
    A = np.ones((len(labels), len(t)))
    lensed = labels == PSPL
    A[lensed] = espl_magnification(t, p["t0"][lensed, None], p["tE"][lensed, None], p["u0"][lensed, None],
                                   p["rho"][lensed, None])
    model = model_magnitude(p["m_base"][:, None], p["fs"][:, None], A)
    for rows in (labels == FLAT, lensed):
        chi2 = np.nanmean(((b["context_mag"][rows] - model[rows]) / b["context_err"][rows]) ** 2)
        assert 0.8 < chi2 < 1.2, chi2
    # the same star: the context's baseline is the season's
    flat = np.flatnonzero(labels == FLAT)
    assert np.abs(np.nanmedian(b["context_mag"][flat], 1) - np.nanmedian(b["mag"][flat], 1)).max() < 0.01


def test_binary_context_matches_the_season_curve(block):
    """Where the context's days fall in the season, its binary magnification (VBBinaryLensing on the
    days near the lens, the single lens farther out) equals the adaptive season curve's."""
    sim, labels, b = block
    p, t = b["params"], sim.t_context
    inside = (t > 0) & (t < 72)
    idx = np.searchsorted(sim.t, t[inside])
    vbbl = make_vbbl(1e-3, 1e-3)
    for i in np.flatnonzero(labels == BINARY):
        single = espl_magnification(t, p["t0"][i], p["tE"][i], p["u0"][i], p["rho"][i])
        ctx = C.binary_context(vbbl, t, p[i], single)
        np.testing.assert_allclose(ctx[inside], b["magnification"][i, idx], rtol=5e-3)


def test_variables_keep_varying_outside_the_season(block):
    sim, labels, b = block
    p = b["params"]
    season = (sim.t_context > 0) & (sim.t_context < 72)
    rows = np.flatnonzero(labels == VARIABLE)
    kinds = p["var_kind"][rows].astype(int)
    scatter = np.nanstd(b["context_mag"][rows][:, ~season], axis=1) / np.nanmedian(b["context_err"][rows], axis=1)
    for kind in (V.LPV, V.PULSATOR):  # periodic: the same variability every season
        if (kinds == kind).any():
            assert (scatter[kinds == kind] > 3).all(), (V.KINDS[kind], scatter[kinds == kind])
    assert np.median(scatter[kinds != V.FLARE]) > 5


@pytest.mark.parametrize("kind", [V.CV, V.FLARE])
def test_extended_recurrent_variables_equal_the_season_inside_it(kind):
    rng = np.random.default_rng(1)
    season = np.arange(0, 72, 1 / 96)
    for _ in range(10):
        p = V.draw(rng, kind, 72.0)
        q = V.extend(rng, p, -924.0, 996.0, 72.0)
        np.testing.assert_allclose(V.flux_factor(season, q), V.flux_factor(season, p), rtol=1e-9)
        outside = np.asarray(q["_times"])
        outside = outside[(outside < -5) | (outside > 80)]
        if kind == V.CV:  # outbursts recur over the years at the drawn recurrence
            assert len(outside) >= 1800 / (1.2 * p["period"]) - 2
            gaps = np.diff(np.sort(q["_times"]))
            assert gaps.min() >= 0.8 * p["period"] - 1e-9 and gaps.max() <= 1.2 * p["period"] + 1e-9


def test_roman_and_ground_schedules():
    t = C.context_times(72.0)
    season = (t > 0) & (t < 72)
    rng = np.random.default_rng(0)
    single = 0
    for _ in range(200):
        seen = C.roman_days(rng, t, 72.0)
        assert seen[season].all()
        if seen.sum() == season.sum():
            single += 1
            continue
        # every seen stretch is (part of) one of Roman's 72-day seasons, 2-3 others within the context
        runs = np.split(np.flatnonzero(seen), np.flatnonzero(np.diff(np.flatnonzero(seen)) > 1) + 1)
        assert 3 <= len(runs) <= 4 and all(len(r) <= 73 for r in runs), [len(r) for r in runs]
    assert 20 < single < 65  # SINGLE_SEASON = 0.2 of 200
    for _ in range(100):
        seen = C.ground_days(rng, t, 72.0)
        days = t[seen]
        assert len(days) > 0
        if days.min() < 0 or days.max() > 72 + 270:  # more than one bulge season: gaps of >= 95 days
            assert (np.diff(days) >= 95).sum() >= 1


def test_context_view_tells_a_long_period_variable_from_a_long_event():
    """Five years of an OGLE-like file: a tE = 60 d event in one season and a 300-day Mira. In the
    event's season both are smooth brightenings; the years around it tell them apart."""
    rng = np.random.default_rng(2)
    nights = np.arange(0, 1800, 1.0)
    t = nights[np.mod(nights, 365.25) < 240] + 0.3
    err = np.full((1, len(t)), 0.01)
    event = 18.0 - 2.5 * np.log10(espl_magnification(t, 400.0, 60.0, 0.3, 1e-3))[None]
    mira = 18.0 - 1.0 * np.cos(2 * np.pi * (t - 400.0) / 300.0)[None]
    grid = {"n_bins": 216, "bin_days": 1 / 3, "season_days": 72.0, "features": "pspl_residual",
            "context_bins": 128, "context_days": 15.0}
    start = 364.0
    pulls = []
    for mag in (event, mira):
        f = grid_features(t, mag + 0.01 * rng.standard_normal(mag.shape), err, start, grid)[0]
        ctx = f[216:]
        assert ctx.shape == (128, 6) and ctx[:, 3].sum() > 60  # many seasons of 15-day bins seen
        pulls.append(np.abs(np.sinh(ctx[ctx[:, 3] > 0, 4])).mean())
    assert pulls[1] > 20 * pulls[0], pulls
    # one season only: the context holds the window's bins and nothing else
    one = (t > start) & (t < start + 72)
    f = grid_features(t[one], event[:, one], err[:, one], start, grid)[0]
    assert 4 <= f[216:, 3].sum() <= 6


CTX_GRID = {"season_days": 72.0, "bin_minutes": 120.0, "n_bins": 864, "bin_days": 120 / 1440,
            "features": "pspl_residual", "context_bins": 128, "context_days": 15.0}


def test_simulated_context_as_roman_and_ground_surveys_see_it(tiny_h5):
    from data import microlensing as task_data
    rows = np.arange(40)
    dense, labels, _ = task_data.h5_features(tiny_h5, CTX_GRID, rows, progress=False)
    ground, _, _ = task_data.h5_features(tiny_h5, CTX_GRID, rows, progress=False, survey_seed=5)
    assert dense.shape == ground.shape == (40, 864 + 128, 6)
    centres = 36.0 - 960.0 + 15.0 * (np.arange(128) + 0.5)  # the context bins, centred on the season
    seen_d, seen_g = dense[:, 864:, 3] > 0, ground[:, 864:, 3] > 0
    # Roman: the event's season and 0 or 2-3 other 72-day seasons: at most 4 x 6 bins; the season always
    assert (seen_d.sum(1) <= 24).all() and seen_d[:, (centres > 0) & (centres < 72)].all()
    assert seen_g.sum() > seen_d.sum()  # a ground survey watches the bulge most of each year
    # early detection: nothing after the cut, in the window or the years around it
    cut, _, _ = task_data.h5_features(tiny_h5, CTX_GRID, rows, progress=False, truncate_fraction=0.5)
    assert not (cut[:, 864:, 3][:, centres - 7.5 > 36.0] > 0).any()
    assert not (cut[:, 433:864, 3] > 0).any()  # (bin 432 holds the epoch at t = 36.0 d itself)


def test_an_event_of_two_telescopes_over_several_seasons_is_tied_in_its_context(tmp_path):
    """Two telescopes with their own baselines and blending watch a star for three seasons, a
    tE = 40 d event in the second: tied by the joint fit, their other seasons sit on the baseline."""
    from data import microlensing as task_data
    rng = np.random.default_rng(4)
    for name, base, fs, n in (("a.dat", 18.0, 0.5, 600), ("b.dat", 19.1, 0.8, 400)):
        t = np.sort(rng.uniform(8000, 8900, n))
        t = t[np.mod(t - 8000, 365.25) < 220]
        mag = base - 2.5 * np.log10(fs * espl_magnification(t, 8400.0, 40.0, 0.2, 1e-3) + 1 - fs)
        np.savetxt(tmp_path / name, np.c_[t, mag + 0.01 * rng.standard_normal(len(t)), np.full(len(t), 0.01)])
    feats, info = task_data.event_features([str(tmp_path / "a.dat"), str(tmp_path / "b.dat")], CTX_GRID, "ev")
    ctx = feats[0, 864:].astype(np.float64)
    seen = ctx[:, 3] > 0
    assert info["n_files"] == 2 and seen.sum() > 20   # three seasons of 15-day bins
    pulls = np.sinh(ctx[seen, 4])
    assert np.sqrt(np.mean(pulls ** 2)) < 3.0, pulls


def test_files_with_other_seasons_are_told_from_one_season_files(tiny_h5):
    """evaluate.py quotes the lensing recall at 1% of variables apart for curves whose context
    holds other seasons and for files of their season only (their one-season ceiling)."""
    from data import microlensing as task_data
    from tasks.microlensing_eval import other_seasons_seen, variable_summary
    rng = np.random.default_rng(0)

    def star(time):  # a constant star observed at these times
        mag = 20.0 + 0.01 * rng.standard_normal(len(time))
        return grid_features(time, mag, np.full(len(time), 0.01), 0.0, CTX_GRID).reshape(1, -1, 6)
    one = np.sort(rng.uniform(0.0, 72.0, 300))
    three = np.concatenate([one - 365.0, one, one + 365.0])
    feats = np.concatenate([star(one), star(three)])
    np.testing.assert_array_equal(other_seasons_seen(feats, CTX_GRID), [False, True])
    assert other_seasons_seen(feats, {**CTX_GRID, "context_bins": 0}) is None
    sim = other_seasons_seen(task_data.h5_features(tiny_h5, CTX_GRID, np.arange(40), progress=False)[0], CTX_GRID)
    assert 0 < sim.sum() < 40  # Roman: some stars' files hold their season only
    # 100 variables of each view; those of one season look like lensing, the others do not
    y = np.array([1] * 20 + [3] * 200)
    view = np.array([True] * 10 + [False] * 10 + [True] * 100 + [False] * 100)
    score = np.where(y == 1, 0.95, np.where(view, 0.1, 0.99))
    probs = np.stack([1 - score, score, np.zeros_like(score), np.zeros_like(score)], 1)
    params = np.zeros(len(y), dtype=[("var_kind", "f4")])
    out = variable_summary(y, probs, probs.argmax(1), params, other_seasons=view)
    assert out["by_view"]["other seasons"]["at_false_alarm"]["lensing_recall"] == 1.0
    assert out["by_view"]["one season"]["at_false_alarm"]["lensing_recall"] == 0.0
    assert out["by_view"]["one season"]["n_variable"] == 100 and out["by_view"]["other seasons"]["n_lensed"] == 10
    # with variables simulated apart (--calibrate-variables) the thresholds are theirs: here none
    # of their one-season files looks like lensing, so the same events pass there too
    ref = {"probs": np.tile([[0.9, 0.1, 0.0, 0.0]], (300, 1)), "other_seasons": np.arange(300) < 150}
    out = variable_summary(y, probs, probs.argmax(1), params, other_seasons=view, reference=ref)
    assert out["by_view"]["one season"]["at_false_alarm"]["lensing_recall"] == 1.0
    assert out["by_view"]["one season"]["n_variable"] == 150 and out["at_false_alarm"]["n_variable"] == 300
