"""No shortcuts: PSPL and binary events share the distributions of every shared parameter,
and flat events and variables are drawn from the same stars."""
import os

import numpy as np
import pytest
from scipy import stats

from physics.microlensing.events import BINARY, FLAT, PSPL, VARIABLE, EventConfig, EventSimulator, shuffled_labels


# Events per class: 100 here already reject a shortcut like the seed's (binaries drawn with u0 up to
# 0.5 against PSPL's 1: KS p ~ 1e-10); LENSING_FULL_TESTS=1 (make test-full) uses 300 for subtler ones.
N_PER_CLASS = 300 if os.environ.get("LENSING_FULL_TESTS") else 100


@pytest.fixture(scope="module")
def simulated():
    sim = EventSimulator(EventConfig(preset="baseline"))
    labels = shuffled_labels(11, N_PER_CLASS, N_PER_CLASS, N_PER_CLASS, N_PER_CLASS)
    blocks = [sim.block(11, b, labels[b * 64:(b + 1) * 64]) for b in range(-(-len(labels) // 64))]
    return labels, np.concatenate([b["params"] for b in blocks]), np.concatenate([b["mag"] for b in blocks])


@pytest.mark.parametrize("name", ["t0", "tE", "u0", "rho", "m_source", "fs", "m_base"])
def test_pspl_and_binary_share_parameter_distributions(simulated, name):
    labels, p, _ = simulated
    result = stats.ks_2samp(p[name][labels == PSPL], p[name][labels == BINARY])
    assert result.pvalue > 0.01, (name, result)


@pytest.mark.parametrize("name", ["m_source", "fs", "m_base"])
@pytest.mark.parametrize("cls", [FLAT, VARIABLE])
def test_flat_and_variable_stars_are_the_same_stars(simulated, name, cls):
    """Faint (to 26 mag) and blended (1% source flux) stars pass the detectability cut less
    often: unlensed stars are drawn as those that pass, so the baseline tells no class."""
    labels, p, _ = simulated
    lensed = (labels == PSPL) | (labels == BINARY)
    result = stats.ks_2samp(p[name][labels == cls], p[name][lensed])
    assert result.pvalue > 0.01, (name, result)


def test_noise_level_does_not_tell_the_class(simulated):
    """The scatter of the faintest epochs must not separate flat stars from lensed ones."""
    labels, _, mag = simulated
    baseline_mag = np.nanpercentile(mag, 90, axis=1)  # the quiet part of each curve
    result = stats.ks_2samp(baseline_mag[labels == PSPL], baseline_mag[labels == BINARY])
    assert result.pvalue > 0.01, result
