"""Lenses painted into real cutouts (`simulate.py --task lens --hosts`): the physics of the
painting (flux, PSF, the arc's Poisson noise, mass aligned with the light), the hygiene of the
two classes (same hosts, same pixel statistics away from the arc), every host format, bad input."""
import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from engine import injection
from physics.strong import inject, survey
from physics.strong.scenes import CONFIGS
from tests.conftest import run_script, terminate_when
from tests.test_lens import one_error_line, write_fits_root


def gaussian_host(n, size=41, bands=5, q=0.5, phi_deg=30.0, x0=3.0, y0=-2.0, sigma=3.0, amp=40.0, noise=1.0, seed=0):
    """Elliptical Gaussian galaxies of known moments on white noise (flux units)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    dx, dy = xx - x0, yy - y0
    phi = math.radians(phi_deg)
    u, v = dx * math.cos(phi) + dy * math.sin(phi), -dx * math.sin(phi) + dy * math.cos(phi)
    galaxy = amp * np.exp(-0.5 * (u ** 2 / sigma ** 2 + v ** 2 / (q * sigma) ** 2))
    return (galaxy[None, None] + rng.normal(0, noise, (n, bands, size, size))).astype(np.float32)


def point_scene(n, bands, snr, gen):
    """A compact source behind a vanishing mass: the painted arc is the PSF itself."""
    base = CONFIGS["lsst"]
    s, _ = survey.sample_survey(base, torch.ones(n, dtype=torch.long), gen)
    for key in ("src_x", "src_y", "lens_x", "lens_y"):
        s[key] = torch.zeros(n, dtype=torch.float64)
    s["theta_e"] = torch.full((n,), 1e-4, dtype=torch.float64)
    s["src_r_e"] = torch.full((n,), 0.02, dtype=torch.float64)  # round, exponential: a point next to the PSF
    s["src_n"] = torch.ones(n, dtype=torch.float64)
    s["src_e1"], s["src_e2"] = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    s["clump_frac"] = torch.zeros_like(s["clump_frac"])
    s["clump_x"], s["clump_y"] = torch.zeros_like(s["clump_x"]), torch.zeros_like(s["clump_y"])
    hosts = dict(x=torch.zeros(n, dtype=torch.float64), y=torch.zeros(n, dtype=torch.float64),
                 q=torch.ones(n, dtype=torch.float64), phi=torch.zeros(n, dtype=torch.float64))
    scene = inject.draw_injection(hosts, torch.ones(n, dtype=torch.bool), s, gen, bands, 0.0)
    scene["gamma1"], scene["gamma2"] = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    scene["snr_target"] = torch.full((n,), float(snr), dtype=torch.float64)
    flux_noise, gain = inject.band_model(bands, 0.2, 0.5)
    scene.update(flux_noise=flux_noise[None], flux_noise_ref=flux_noise[inject.reference_band(bands)])
    return scene, flux_noise, gain


@pytest.mark.parametrize("config,size", [("lens-finding-64", 64), ("lsst", 41)])
def test_windowed_ray_shooting_equals_the_whole_stamp(config, size):
    """Arcs shot only within `reach` of the lens (the speed-up) equal those shot over the whole
    stamp: pixel by pixel to 1e-4 of each arc's peak, flux to 1e-3; lenses near or off the
    edge and big windows take the whole stamp, and both kinds occur here."""
    base = CONFIGS[config]
    bands, n, pix = ["g", "r", "i"], 48, base.pixel_scale
    gen = torch.Generator().manual_seed(3)
    s, _ = survey.sample_survey(base, torch.ones(n, dtype=torch.long), gen)
    side = size * pix
    hosts = dict(x=(torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * side * 0.6,
                 y=(torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * side * 0.6,
                 q=torch.rand(n, generator=gen, dtype=torch.float64) * 0.6 + 0.4,
                 phi=torch.rand(n, generator=gen, dtype=torch.float64) * math.pi)
    hosts["x"][:2] = torch.tensor([side * 0.7, -side * 0.45])  # off the stamp; on its edge
    lensed = torch.arange(n) % 8 != 0  # non-lenses stay empty
    scene = inject.draw_injection(hosts, lensed, s, gen, bands, 0.0)
    kernels = inject.moffat_kernels(torch.full((n, 3), 0.8, dtype=torch.float64),
                                    torch.full((n, 3), 3.0, dtype=torch.float64), pix, 15)
    whole = inject.render_arcs(scene, (size, size), pix, base.supersample, kernels, window=False)
    windowed = inject.render_arcs(scene, (size, size), pix, base.supersample, kernels)
    assert torch.equal(windowed[~lensed], torch.zeros_like(windowed[~lensed]))
    peak = whole[lensed].flatten(2).amax(2)[:, :, None, None]
    assert ((windowed[lensed] - whole[lensed]).abs() / peak).max() < 1e-4
    flux = whole[lensed].sum((2, 3))
    assert ((windowed[lensed].sum((2, 3)) - flux).abs() / flux).max() < 1e-3
    s_rows = {k: v[lensed].float() for k, v in scene.items() if torch.is_tensor(v) and v.dim() and len(v) == n}
    half = torch.ceil(inject.reach(s_rows) / pix) + 1
    windows = 2 * half + 1 < size
    assert windows.float().mean() > 0.2 and (~windows).any()  # both paths ran


def test_noise_only_host_gets_back_the_injected_flux_and_psf_width():
    bands, size, n, pix = ["g", "r", "i"], 81, 16, 0.05  # PSFs of 10-18 pixels: the source is a point
    gen = torch.Generator().manual_seed(0)
    hosts = torch.from_numpy(np.random.default_rng(1).normal(0, 1, (n, 3, size, size)))
    measured = inject.measure_hosts(hosts, pix)
    assert torch.allclose(measured["noise"], torch.ones(n, 3, dtype=torch.float64), atol=0.15)
    scene, flux_noise, gain = point_scene(n, bands, 300, gen)
    fwhm = torch.tensor([[0.5, 0.7, 0.9]], dtype=torch.float64).expand(n, 3)
    kernels = inject.moffat_kernels(fwhm, torch.full((n, 3), 3.5, dtype=torch.float64), pix, 61)
    arcs = inject.render_arcs(scene, (size, size), pix, 5, kernels, torch.float64)
    unit = measured["noise"] / (flux_noise * gain)[None]
    painted, amplitude, snr = inject.paint(hosts, arcs, scene, measured["noise"], unit, 2, gen)
    assert torch.allclose(snr, scene["snr_target"], rtol=2e-3)  # the bisection hits the target
    added = painted - hosts
    expected = amplitude * arcs.sum((2, 3))  # amplitude x magnification (~1 here)
    sigma = (size * size + expected * unit.mean()) ** 0.5 / expected  # sky noise + the arc's Poisson noise
    assert ((added.sum((2, 3)) / expected - 1).abs() < 4 * sigma).all()
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2

    def moffat(coords, amp, alpha, beta):
        r2 = coords[0] ** 2 + coords[1] ** 2
        return amp * (1 + r2 / alpha ** 2) ** -beta

    def fwhm_of(image):
        (amp, alpha, beta), _ = optimize.curve_fit(moffat, (xx.ravel(), yy.ravel()), image.ravel(),
                                                   p0=(image.max(), 10.0, 3.0))
        return 2 * abs(alpha) * math.sqrt(2 ** (1 / beta) - 1) * pix

    mean_image = added.mean(0).numpy()  # 16 independent noise draws of the same point source
    for c, want in enumerate((0.5, 0.7, 0.9)):
        # the kernel is the Moffat integrated over pixels (a little wider than sampled at their centres)
        kernel_fwhm = fwhm_of(np.pad(kernels[0, c].numpy(), 10))
        assert kernel_fwhm == pytest.approx(want, rel=0.05)
        assert fwhm_of(mean_image[c]) == pytest.approx(kernel_fwhm, rel=0.03), c


def test_the_arc_noise_is_its_poisson_variance():
    n, size = 64, 41
    gen = torch.Generator().manual_seed(3)
    hosts = torch.zeros(n, 1, size, size, dtype=torch.float64)  # no sky: only the arc's own noise
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    profile = np.exp(-0.5 * ((np.hypot(xx, yy) - 8) / 1.5) ** 2)
    profile[profile < 1e-3] = 0  # a ring with a clean outside
    ring = torch.from_numpy(profile)[None, None].expand(n, 1, -1, -1)
    scene = dict(colour_flux=torch.ones(n, 1, dtype=torch.float64), flux_noise=torch.ones(1, 1, dtype=torch.float64),
                 flux_noise_ref=torch.tensor(1.0, dtype=torch.float64),
                 snr_target=torch.full((n,), 50.0, dtype=torch.float64))
    noise = torch.ones(n, 1, dtype=torch.float64)  # the bisection's background (a sky the host is said to have)
    unit = torch.full((n, 1), 0.04, dtype=torch.float64)
    painted, amplitude, _ = inject.paint(hosts, ring.clone(), scene, noise, unit, 0, gen)
    model = amplitude[:, :, None, None] * ring
    bright = model > 0.5 * model.max()
    residual = (painted - model)[bright] / (model * unit[:, :, None, None]).sqrt()[bright]
    assert residual.numel() > 5000
    assert float(residual.mean()) == pytest.approx(0, abs=0.05)
    assert float(residual.std()) == pytest.approx(1, abs=0.04)
    assert (painted - model)[model == 0].abs().max() == 0  # no noise where there is no arc


def test_a_host_of_known_moments_gets_its_mass_aligned_with_its_light():
    n = 400
    images = torch.from_numpy(gaussian_host(n, q=0.5, phi_deg=30.0, x0=3.0, y0=-2.0, amp=60.0)).double()
    measured = inject.measure_hosts(images, 0.2)
    assert measured["has_light"].all()
    assert float(measured["x"].median()) == pytest.approx(0.6, abs=0.04)    # 3 px x 0.2"
    assert float(measured["y"].median()) == pytest.approx(-0.4, abs=0.04)   # y: the row offset
    assert float(measured["q"].median()) == pytest.approx(0.5, abs=0.08)    # thresholded moments: slightly rounder
    assert math.degrees(float(measured["phi"].median())) == pytest.approx(30.0, abs=3.0)
    gen = torch.Generator().manual_seed(0)
    s, _ = survey.sample_survey(CONFIGS["lsst"], torch.ones(n, dtype=torch.long), gen)
    scene = inject.draw_injection(measured, torch.ones(n, dtype=torch.bool), s, gen, list("grizy"), 10.0)
    assert torch.allclose(scene["lens_x"], measured["x"]) and torch.allclose(scene["lens_y"], measured["y"])
    angle = 0.5 * torch.atan2(scene["lens_e2"], scene["lens_e1"])
    offset = torch.remainder(angle - math.radians(30.0) + math.pi / 2, math.pi) - math.pi / 2
    assert math.degrees(float(offset.mean())) == pytest.approx(0.0, abs=2.0)
    assert math.degrees(float(offset.std())) == pytest.approx(math.degrees(inject.MASS_ANGLE_SCATTER), rel=0.25)
    e = torch.hypot(scene["lens_e1"], scene["lens_e2"])
    assert float(((1 - e) / (1 + e)).median()) == pytest.approx(float(measured["q"].median()), abs=0.05)
    # an empty stamp has no light: centred, round, no orientation
    empty = inject.measure_hosts(torch.from_numpy(np.random.default_rng(0).normal(0, 1, (4, 3, 41, 41))), 0.2)
    assert not empty["has_light"].any() and (empty["q"] == 1).all()


def test_render_and_psf_bank_match_the_direct_computation():
    gen = torch.Generator().manual_seed(0)
    fwhm, beta = inject.psf_fwhm_draw(gen, 50, list("gri"), (0.6, 0.9))
    assert len(torch.unique(fwhm)) < 40 and float(fwhm.min()) >= 0.6 - 1e-9 and float(fwhm.max()) <= 0.9 + 1e-9
    bank = inject.moffat_kernels(fwhm, beta, 0.2, 15)
    from physics.strong.instrument import moffat_psf
    assert torch.allclose(bank, moffat_psf(fwhm / 0.2, beta, 15), atol=1e-12)


def read_params(folder):
    with open(os.path.join(folder, "params.csv")) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def npy_hosts(tmp_path_factory):
    """12 min-max-per-channel 3x56x56 hosts: galaxies of different sizes and shapes (56 pixels:
    the border frame stays clear of the largest arcs)."""
    root = tmp_path_factory.mktemp("hosts") / "cutouts"
    os.makedirs(root)
    for i in range(12):
        image = gaussian_host(1, size=56, bands=3, q=0.4 + 0.05 * i, phi_deg=15 * i, x0=0, y0=0,
                              sigma=1.5 + 0.2 * i, seed=i)[0]
        lo, hi = image.min((1, 2), keepdims=True), image.max((1, 2), keepdims=True)
        np.save(root / f"galaxy_{i:02d}.npy", (image - lo) / (hi - lo))
    return str(root)


@pytest.fixture(scope="module")
def painted(npy_hosts, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("painted") / "set")
    r = run_script("simulate.py", "--task", "lens", "--hosts", npy_hosts, "--n-lens", "300", "--n-nonlens", "300",
                   "--format", "npy", "--output", out, "--no-progress", "--num-workers", "1", "--seed", "5",
                   "--preview", "4")
    assert r.returncode == 0, r.stderr
    assert "painting lenses into 12 host cutouts (3x56x56, bands g,r,i" in r.stdout
    return out


def test_painted_set_records_every_parameter_and_its_hosts(painted, npy_hosts):
    rows = read_params(painted)
    assert len(rows) == 600 and os.path.exists(os.path.join(painted, "preview.png"))
    with open(os.path.join(painted, "simulation.json")) as f:
        definition = json.load(f)
    assert definition["negatives"] == "hosts" and definition["n_hosts"] == 12
    assert definition["scaling"] == definition["host_scaling"] == "minmax-channel"
    with open(os.path.join(painted, "hosts.csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 12 and all(os.path.basename(t["file"]).startswith("galaxy_") for t in table)
    lenses = [r for r in rows if r["label"] == "1"]
    snr = np.array([float(r["arc_snr"]) for r in lenses])
    target = np.array([float(r["arc_snr_target"]) for r in lenses])
    assert (snr >= 10 * 0.99).all() and np.allclose(snr, target, rtol=5e-3)
    assert all(float(r["theta_e"]) > 0 for r in lenses)
    magnification = np.array([float(r["magnification"]) for r in lenses])  # of the flux inside the stamp
    assert np.median(magnification) > 2 and (magnification > 1).mean() > 0.95
    assert all(r["theta_e"] == "0" or float(r["theta_e"]) == 0 for r in rows if r["label"] == "0")
    for r in rows[:20]:
        image = np.load(os.path.join(painted, r["file"]))
        assert image.shape == (3, 56, 56) and image.dtype == np.float32 and np.isfinite(image).all()
        assert np.allclose(image.min((1, 2)), 0, atol=1e-6) and np.allclose(image.max((1, 2)), 1, atol=1e-6)
    # the file name says nothing: both classes number 0..N-1 in one sequence
    assert sorted(int(os.path.basename(r["file"])[:-4]) for r in rows) == list(range(600))


def test_painted_neighbours_are_unlensed_look_alikes_on_the_non_lens_side(tmp_path, npy_hosts):
    """--painted-neighbours F: about F of the non-lenses get an unlensed source 0.6-3" from the
    host, at the lenses' S/N, recorded as kind 'pair'; its light sits where its source is."""
    out = str(tmp_path / "nb")
    r = run_script("simulate.py", "--task", "lens", "--hosts", npy_hosts, "--n-lens", "60", "--n-nonlens", "60",
                   "--format", "npy", "--output", out, "--no-progress", "--num-workers", "1", "--seed", "2",
                   "--painted-neighbours", "0.5")
    assert r.returncode == 0, r.stderr
    rows = read_params(out)
    pair = [r for r in rows if r["label"] == "0" and int(float(r["kind"])) == survey.KIND_CODES["pair"]]
    plain = [r for r in rows if r["label"] == "0" and int(float(r["kind"])) == survey.KIND_CODES["host"]]
    assert len(pair) + len(plain) == 60 and 18 <= len(pair) <= 42  # binomial(60, 0.5): 4 sigma
    snr = np.array([float(r["arc_snr"]) for r in pair])
    assert np.allclose(snr, [float(r["arc_snr_target"]) for r in pair], rtol=5e-3) and (snr >= 9.9).all()
    assert all(math.isnan(float(r["arc_snr"])) for r in plain) and all(float(r["theta_e"]) == 0 for r in pair)
    sep = np.array([math.hypot(float(r["src_x"]) - float(r["host_x"]), float(r["src_y"]) - float(r["host_y"]))
                    for r in pair])
    assert (sep >= 0.6 - 1e-9).all() and (sep <= 3.0 + 1e-9).all()
    # unlensed: a neighbour's rendered light has unit flux, centred on its source
    base, n, gen = CONFIGS["lens-finding-64"], 32, torch.Generator().manual_seed(4)
    s, _ = survey.sample_survey(base, torch.ones(n, dtype=torch.long), gen)
    # resolved sources only: clumps of 0.02" and cuspy 0.1" Sersics are under-sampled on 3x3 sub-pixels, so
    # their pixel sums are off by up to 8% (2% for these; painting sets the flux by S/N, so it does not depend on that)
    s["clump_frac"] = torch.zeros_like(s["clump_frac"])
    s["src_r_e"] = s["src_r_e"].clamp(min=0.3)
    zeros = torch.zeros(n, dtype=torch.float64)
    hosts = dict(x=zeros, y=zeros, q=zeros + 0.7, phi=zeros)
    scene = inject.draw_injection(hosts, torch.zeros(n, dtype=torch.bool), s, gen, ["g", "r", "i"], 10.0,
                                  torch.ones(n, dtype=torch.bool))
    kernels = inject.moffat_kernels(torch.full((n, 3), 0.7, dtype=torch.float64),
                                    torch.full((n, 3), 3.0, dtype=torch.float64), 0.2, 15)
    light = inject.render_arcs(scene, (96, 96), 0.2, base.supersample, kernels, dtype=torch.float64)[:, 0]
    assert torch.allclose(light.sum((1, 2)), torch.ones(n, dtype=torch.float64), atol=0.02)  # magnification 1
    axis = (torch.arange(96, dtype=torch.float64) - 47.5) * 0.2
    for name, weights in (("x", light.sum(1)), ("y", light.sum(2))):
        centroid = (weights * axis).sum(1) / weights.sum(1)
        assert torch.allclose(centroid, scene[f"src_{name}"], atol=0.01)
    line = one_error_line(run_script("simulate.py", "--task", "lens", "--painted-neighbours", "0.3",
                                     "--n-lens", "2", "--n-nonlens", "2", "--output", str(tmp_path / "x")),
                          "simulate.py")
    assert "give --hosts" in line


def test_both_classes_share_their_hosts(painted):
    rows = read_params(painted)
    by_class = [[r for r in rows if r["label"] == lab] for lab in "01"]
    counts = np.array([[sum(int(r["host_index"]) == h for r in side) for h in range(12)] for side in by_class])
    assert counts.min() > 0
    assert stats.chi2_contingency(counts)[1] > 0.01  # host identity independent of the class
    for feature in ("host_size", "host_q", "host_flip", "host_shift_x"):
        values = [np.array([float(r[feature]) for r in side]) for side in by_class]
        assert stats.ks_2samp(*values).pvalue > 0.01, feature


def test_pixels_away_from_the_arc_look_alike_in_both_classes(painted):
    """Min-max rescaling after painting is the same function for both classes: pixels far from
    the arc, in units of each image's own background noise, are distributed alike."""
    rows = read_params(painted)
    samples = {"0": [], "1": []}
    for r in rows:
        image = np.load(os.path.join(painted, r["file"])).astype(np.float64)
        frame = np.concatenate([image[:, :4].reshape(3, -1), image[:, -4:].reshape(3, -1)], 1)
        med = np.median(frame, 1, keepdims=True)
        mad = 1.4826 * np.median(np.abs(frame - med), 1, keepdims=True)
        samples[r["label"]].append(((frame - med) / mad)[:, ::7].ravel())
    a, b = (np.concatenate(samples[k]) for k in "01")
    assert stats.ks_2samp(a, b).pvalue > 0.001
    # a non-lens is its host under the recorded symmetry and shift, rescaled like every image
    with open(os.path.join(painted, "hosts.csv")) as f:
        files = {int(t["host_index"]): t["file"] for t in csv.DictReader(f)}
    for r in [r for r in rows if r["label"] == "0"][:10]:
        host = torch.from_numpy(np.load(files[int(r["host_index"])]))[None].double()
        moved = inject.augment(host, torch.tensor([int(float(r["host_flip"]))]),
                               torch.tensor([[int(float(r["host_shift_x"])), int(float(r["host_shift_y"]))]]))
        expected = inject.rescale(moved, "minmax-channel")[0].numpy()
        assert np.allclose(np.load(os.path.join(painted, r["file"])), expected, atol=1e-6)


def test_hosts_in_every_reader_format(tmp_path):
    import h5py
    fits_root = tmp_path / "fits"
    write_fits_root(str(fits_root), 0, 6, seed=1)  # the challenge layout, flux units, grizy
    with h5py.File(tmp_path / "sim.h5", "w") as f:
        f["images"] = gaussian_host(8, size=41, bands=5)
        f["labels"] = np.array([0, 1] * 4, np.int8)  # the lenses (label 1) are never hosts
    for hosts, fmt, n_hosts in ((str(fits_root), "fits", 6), (str(tmp_path / "sim.h5"), "h5", 4)):
        out = str(tmp_path / f"out_{fmt}") + (".h5" if fmt == "h5" else "")
        args = ["simulate.py", "--task", "lens", "--hosts", hosts, "--n-lens", "70", "--n-nonlens", "70", "--format",
                fmt, "--output", out, "--no-progress", "--num-workers", "1", "--psf-fwhm", "0.7"]
        r = run_script(*args)
        assert r.returncode == 0, r.stderr
        assert f"painting lenses into {n_hosts} host cutouts (5x41x41, bands g,r,i,z,y" in r.stdout and "stored flux" in r.stdout
    with h5py.File(tmp_path / "out_h5.h5") as f:
        assert f["images"].shape == (140, 5, 41, 41)
        psf = f["params"]["psf_fwhm_i"][:]
        assert np.allclose(psf, 0.7)
        assert set(f["params"]["host_index"][:].astype(int)) == set(range(4))
    assert os.path.exists(tmp_path / "out_h5_hosts.csv")


def test_bad_hosts_and_psf_one_line_or_skipped(tmp_path, npy_hosts):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(npy_hosts, bad)
    np.save(bad / "odd_shape.npy", np.ones((3, 20, 20), np.float32))
    base = ["simulate.py", "--task", "lens", "--n-lens", "8", "--n-nonlens", "8", "--format", "npy", "--no-progress",
            "--num-workers", "1", "--output", str(tmp_path / "out"), "--overwrite"]
    line = one_error_line(run_script(*base, "--hosts", str(bad)), "simulate.py")
    assert "odd_shape.npy" in line and "--skip-bad" in line
    r = run_script(*base, "--hosts", str(bad), "--skip-bad")
    assert r.returncode == 0 and "skipped host" in r.stdout and "odd_shape.npy" in r.stdout, r.stdout + r.stderr
    os.remove(bad / "odd_shape.npy")
    for name, array in (("all_nan.npy", np.full((3, 56, 56), np.nan, np.float32)),
                        ("all_zero.npy", np.zeros((3, 56, 56), np.float32))):
        np.save(bad / name, array)
        line = one_error_line(run_script(*base, "--hosts", str(bad)), "simulate.py")
        assert name in line and "no signal" in line
        r = run_script(*base, "--hosts", str(bad), "--skip-bad")
        assert r.returncode == 0 and name in r.stdout, r.stdout + r.stderr
        os.remove(bad / name)
    np.save(tmp_path / "psf_even.npy", np.ones((4, 4)))
    np.save(tmp_path / "psf_bands.npy", np.ones((2, 5, 5)))
    np.save(tmp_path / "psf_big.npy", np.ones((57, 57)))
    for psf, words in (("psf_even.npy", "must be odd"), ("psf_bands.npy", "expected (k, k) or (3, k, k)"),
                       ("psf_big.npy", "at most the hosts' side 56")):
        line = one_error_line(run_script(*base, "--hosts", npy_hosts, "--psf", str(tmp_path / psf)), "simulate.py")
        assert psf in line and words in line, line
    line = one_error_line(run_script(*base, "--hosts", npy_hosts, "--psf-fwhm", "0.7,0.8"), "simulate.py")
    assert "--psf-fwhm gives 2 values for 3 bands" in line
    line = one_error_line(run_script(*base, "--psf-fwhm", "0.7"), "simulate.py")
    assert "--hosts" in line
    line = one_error_line(run_script(*base, "--hosts", npy_hosts, "--negatives", "hard"), "simulate.py")
    assert "--negatives" in line


def test_a_user_psf_file_is_used_as_given(tmp_path, npy_hosts):
    yy, xx = np.mgrid[:9, :9] - 4
    kernel = np.exp(-0.5 * (xx ** 2 + yy ** 2) / 2.0 ** 2)
    np.save(tmp_path / "psf.npy", kernel)
    psf = injection.read_psf(str(tmp_path / "psf.npy"), 3, 56)
    assert psf.shape == (3, 9, 9) and np.allclose(psf.sum((1, 2)), 1)
    out = str(tmp_path / "out")
    r = run_script("simulate.py", "--task", "lens", "--hosts", npy_hosts, "--n-lens", "8", "--n-nonlens", "8",
                   "--format", "npy", "--output", out, "--no-progress", "--num-workers", "1",
                   "--psf", str(tmp_path / "psf.npy"))
    assert r.returncode == 0, r.stderr
    with open(os.path.join(out, "simulation.json")) as f:
        assert json.load(f)["psf"].startswith("file ")
    fwhm = np.array([float(row["psf_fwhm_i"]) for row in csv.DictReader(open(os.path.join(out, "params.csv")))])
    # the kernel's own FWHM, as a pixel-integrated Moffat fitted to this Gaussian sampled at pixel centres sees it
    assert np.allclose(fwhm, 2.3548 * 2.0 * CONFIGS["lens-finding-64"].pixel_scale, rtol=0.05)


def moffat_image(size, x0, y0, fwhm, beta=3.0, sub=5):
    """A pixel-integrated (sub x sub samples) Moffat of unit flux centred at (x0, y0) pixels."""
    yy, xx = np.mgrid[:size, :size]
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
    offsets = (np.arange(sub) - (sub - 1) / 2) / sub
    image = sum((1 + ((xx + a - x0) ** 2 + (yy + b - y0) ** 2) / alpha ** 2) ** -beta for a in offsets for b in offsets)
    return image / image.sum()


def starry_hosts(n=60, size=64, fwhm=(4.0, 3.5, 3.0), seed=0):
    """Hosts with a central galaxy each and, in every other one, a star (Moffat of known FWHM per band)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    hosts = rng.normal(0, 1, (n, len(fwhm), size, size))
    for i in range(n):
        hosts[i] += 60 * np.exp(-0.5 * (((xx - rng.uniform(-2, 2)) / 4) ** 2 + (yy / 2.5) ** 2))
        x0, y0 = rng.uniform(8, size - 8, 2)
        if i % 2 == 0 and max(abs(x0 - (size - 1) / 2), abs(y0 - (size - 1) / 2)) > 12:
            flux = rng.uniform(800, 3000)
            for b, f in enumerate(fwhm):
                hosts[i, b] += flux * moffat_image(size, x0, y0, f)
    return hosts


def test_the_psf_measured_from_stars_in_the_hosts(tmp_path, npy_hosts):
    """--psf stars: the isolated stars among galaxies give each band's FWHM within 3% and the
    kernel's shape within 5% of its peak; hosts without stars get one clear line."""
    fwhm = (4.0, 3.5, 3.0)
    hosts = starry_hosts(fwhm=fwhm)
    kernels, measured, n_stars = inject.psf_from_stars(torch.from_numpy(hosts), 64)
    assert n_stars >= inject.MIN_STARS and kernels.shape[1] % 2 == 1
    assert np.allclose(measured.numpy(), fwhm, rtol=0.03), measured
    k = kernels.shape[-1]
    truth = np.stack([moffat_image(k, (k - 1) / 2, (k - 1) / 2, f) for f in fwhm])
    assert np.abs(kernels.numpy() - truth / truth.sum((1, 2), keepdims=True)).max() < 0.05 * truth.max()
    assert inject.psf_from_stars(torch.from_numpy(hosts[1::2]), 64)[0] is None  # galaxies only: no PSF
    folder = tmp_path / "starry"
    os.makedirs(folder)
    for i, host in enumerate(hosts.astype(np.float32)):
        np.save(folder / f"{i:03d}.npy", host)
    out = str(tmp_path / "out")
    r = run_script("simulate.py", "--task", "lens", "--hosts", str(folder), "--n-lens", "8", "--n-nonlens", "8",
                   "--format", "npy", "--output", out, "--no-progress", "--num-workers", "1", "--psf", "stars")
    assert r.returncode == 0 and "PSF measured from" in r.stdout, r.stderr
    assert json.load(open(os.path.join(out, "simulation.json")))["psf"].startswith("stars ")
    row = next(csv.DictReader(open(os.path.join(out, "params.csv"))))
    scale = CONFIGS["lens-finding-64"].pixel_scale
    assert [float(row[f"psf_fwhm_{b}"]) for b in "gri"] == pytest.approx([f * scale for f in fwhm], rel=0.03)
    line = one_error_line(run_script("simulate.py", "--task", "lens", "--hosts", npy_hosts, "--n-lens", "4",
                                     "--n-nonlens", "4", "--output", str(tmp_path / "none"), "--psf", "stars",
                                     "--no-progress"),
                          "simulate.py")
    assert "--psf stars:" in line and "isolated star(s) found in the 12 hosts" in line


def test_a_killed_painting_resumes_to_the_same_files(tmp_path, npy_hosts):
    args = ["--task", "lens", "--hosts", npy_hosts, "--n-lens", "400", "--n-nonlens", "400", "--format", "npy",
            "--no-progress", "--num-workers", "1", "--seed", "9"]
    assert run_script("simulate.py", *args, "--output", str(tmp_path / "ref")).returncode == 0
    out = tmp_path / "killed"
    state = out / ".simulate_state.json"
    code, err = terminate_when(["simulate.py", *args, "--output", str(out)], state.exists)
    assert code == 2 and "resume" in err, err
    r = run_script("simulate.py", *args, "--output", str(out))
    assert r.returncode == 0 and "resuming" in r.stdout, r.stdout + r.stderr
    assert (tmp_path / "ref" / "params.csv").read_text() == (out / "params.csv").read_text()
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*.npy"))
    assert len(names) == 800
    for name in names[::40]:
        np.testing.assert_array_equal(np.load(tmp_path / "ref" / name), np.load(out / name))
