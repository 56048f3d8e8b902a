"""The survey population draws within its documented ranges, and every kind of non-lensing
variable has the shape that defines it (periods recovered by a periodogram, outbursts rising
faster than they decline, flares rising in minutes)."""
import numpy as np
import pytest
from astropy.timeseries import LombScargle

from physics.microlensing import variables as V
from physics.microlensing.events import (POPULATIONS, PRESETS, VARIABLE, EventConfig, EventSimulator, draw_lensed,
                                         draw_tE, shuffled_labels)


def test_survey_population_ranges():
    pop = POPULATIONS["survey"]
    rng = np.random.default_rng(0)
    p = draw_lensed(rng, EventConfig(preset="planetary"), 20000, binary=True)
    L = EventConfig().season.length_days
    assert p["tE"].min() >= 0.1 and p["tE"].max() <= 300
    assert np.all((p["u0"] >= 1e-3) & (p["u0"] <= 1.5))  # the population's u0, not the preset's 0.3
    assert np.all((p["t0"] >= -0.5 * L) & (p["t0"] <= 1.5 * L))
    assert (p["t0"] < 0).mean() > 0.2 and (p["t0"] > L).mean() > 0.2  # peaks outside the window
    assert np.all((p["m_source"] >= 18) & (p["m_source"] <= 26))
    assert np.all((p["fs"] >= 0.01) & (p["fs"] <= 1)) and (p["fs"] < 0.1).mean() > 0.4  # log-uniform
    assert p["rho"].max() <= pop.rho_max and (p["rho"][p["tE"] < 1] > 0.05).mean() > 0.5  # rho ~ 1/tE
    q = p["q"]  # the preset keeps its own s, q
    assert np.all((q >= PRESETS["planetary"].q[0]) & (q <= PRESETS["planetary"].q[1]))
    tE = draw_tE(rng, pop, 50000)
    main = tE[tE > 2]  # the log-normal part: median ~20 d, 0.5 dex wide
    assert 18 < np.median(main) < 23 and 0.4 < np.std(np.log10(main)) < 0.55
    assert 0.07 < (tE < 1).mean() < 0.10  # free-floating planets: 10% over 0.1-2 d (77% of it below 1 d)
    assert (tE > 100).mean() > 0.03


@pytest.mark.parametrize("kind", [V.PULSATOR, V.ECLIPSING, V.LPV])
def test_periodic_variables_periods_are_recovered(kind):
    rng = np.random.default_rng(kind)
    t = np.sort(rng.uniform(0, 3000, 3000))  # a ground survey's years of irregular epochs
    for _ in range(5):
        p = V.draw(rng, kind, 3000.0)
        mag = -2.5 * np.log10(V.flux_factor(t, p)) + 0.01 * rng.standard_normal(len(t))
        freq, power = LombScargle(t, mag).autopower(minimum_frequency=0.3 / p["period"],
                                                    maximum_frequency=2.5 / p["period"], samples_per_peak=20)
        best = 1.0 / freq[np.argmax(power)]
        # a one-term periodogram of an eclipsing binary peaks at half its period (two eclipses per cycle)
        ok = [abs(best - p["period"]) / p["period"] < 0.01]
        if kind == V.ECLIPSING:
            ok.append(abs(best - p["period"] / 2) / p["period"] < 0.01)
        assert any(ok), (kind, best, p["period"])


def test_cv_outbursts_rise_faster_than_they_decline():
    rng = np.random.default_rng(3)
    t = np.arange(0.0, 400.0, 0.01)
    for _ in range(20):
        p = V.draw(rng, V.CV, 400.0)
        dmag = 2.5 * np.log10(V.flux_factor(t, p))
        assert 2.0 <= dmag.max() <= 6.0 + 1e-9
        peak = int(np.argmax(dmag))
        above = dmag > 0.1 * dmag[peak]
        start = peak - np.argmin(above[peak::-1])       # first epoch of this outburst
        stop = peak + np.argmin(above[peak:])            # its last
        assert (t[stop] - t[peak]) > 2.0 * (t[peak] - t[start]), p
        n_outbursts = np.count_nonzero(np.diff(above.astype(int)) == 1)
        assert n_outbursts >= int(400 / (1.2 * p["period"])) - 1  # recurrent


def test_flares_rise_in_minutes_and_decay_slower():
    rng = np.random.default_rng(4)
    t = np.arange(0.0, 72.0, 0.0005)
    for _ in range(20):
        p = V.draw(rng, V.FLARE, 72.0)
        f = V.flux_factor(t, p)
        assert 0.1 <= f.max() - 1 <= 30 * 1.1  # overlapping flares may add
        k = int(np.argmin(np.abs(t - p["phase"])))
        assert np.isclose(f[k] - 1, p["amplitude"], rtol=0.05, atol=0.02) or f[k] - 1 > p["amplitude"]
        assert p["rise"] < p["decay"] * 5 and p["rise"] <= 0.03


def test_variable_class_in_the_simulator():
    """Label 3 rows: every kind drawn, what was drawn saved, and each passes the detectability cut."""
    sim = EventSimulator(EventConfig())
    labels = shuffled_labels(5, 0, 0, 0, 64)
    block = sim.block(5, 0, labels)
    p = block["params"]
    assert np.all(labels == VARIABLE)
    assert set(p["var_kind"].astype(int)) == set(range(len(V.KINDS)))
    assert np.isnan(p["tE"]).all() and np.isfinite(p["amplitude"]).all() and np.isfinite(p["phase"]).all()
    periodic = np.isin(p["var_kind"], (V.PULSATOR, V.ECLIPSING, V.LPV, V.CV))
    assert np.isfinite(p["period"][periodic]).all() and np.isnan(p["period"][p["var_kind"] == V.FLARE]).all()
    for i in np.flatnonzero(p["var_kind"] == V.PULSATOR):  # a pulsator's saved parameters give its curve
        saved = {name: p[name][i] for name in V.VARIABLE_FIELDS}
        np.testing.assert_allclose(block["magnification"][i], V.flux_factor(sim.t, saved), rtol=1e-5)
    # each passes the cut: >= 3 epochs with a >= 5 sigma change of the source's flux
    from physics.microlensing.events import detectable_variable
    assert detectable_variable(sim.cfg, p, block["magnification"].astype(np.float64)).all()
