import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


FRESH = os.environ.get("LENSING_TEST_FRESH", "") not in ("", "0")
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    # `make test` runs two pytest workers on two cores: one thread per process, no oversubscription
    os.environ["OMP_NUM_THREADS"] = "1"
if "LENSING_FIT_CACHE" not in os.environ:  # smooth-lens fits of test images never land in the user's cache
    import tempfile
    os.environ["LENSING_FIT_CACHE"] = tempfile.mkdtemp(prefix="lensing_test_fits_")
_launcher = []


def launcher():
    """This pytest process's pre-warmed interpreter (tests/launcher.py), started on first use."""
    if not _launcher:
        from tests.launcher import Launcher
        _launcher.append(Launcher())
    return _launcher[0]


def run_script(*args, timeout=600, cwd=ROOT, env=None):
    """Run a top-level script (`python script.py args...`) as a user would; returns the
    CompletedProcess. Through the pre-warmed interpreter unless LENSING_TEST_FRESH=1."""
    env = dict(os.environ if env is None else env)
    if FRESH or str(args[0]).startswith("-"):
        return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, env=env)
    return launcher().run(args, cwd, env, timeout)


def start_script(*args, cwd=ROOT, env=None):
    """Start a top-level script and return at once: a Popen (LENSING_TEST_FRESH=1) or the
    launcher's Popen-like handle (poll, send_signal, communicate, returncode)."""
    env = dict(os.environ if env is None else env)
    if FRESH:
        return subprocess.Popen([sys.executable, *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
    return launcher().start(args, cwd, env)


@pytest.fixture(scope="session")
def venv(tmp_path_factory):
    """VENV for the sbatch scripts (`source $VENV/bin/activate; python script.py`): this
    interpreter's environment, its `python script.py` runs handed to the pre-warmed interpreter."""
    if FRESH:
        return sys.prefix
    from tests.launcher import venv_shim
    return venv_shim(str(tmp_path_factory.mktemp("venv")), launcher())


@pytest.fixture
def script():
    return run_script


SAMPLES = os.environ.get("LENSING_SAMPLES", os.path.join(os.path.dirname(ROOT), "shared", "samples", "microlensing"))


@pytest.fixture(scope="session")
def photometry_dir(tmp_path_factory):
    """Two photometry files shaped like ../shared/samples/microlensing (which a clean clone may
    lack): years of irregular OGLE-like survey data (full BJD, 5 columns) with a single-lens peak
    at HJD' 6830, and one gzipped Roman-like 72-day season at 15.16-min cadence."""
    import gzip

    import numpy as np
    folder = tmp_path_factory.mktemp("photometry")
    rng = np.random.default_rng(1)
    t = np.sort(np.concatenate([rng.uniform(5265, 6900, 400), rng.uniform(6815, 6845, 85)]))
    u = np.hypot(0.3, (t - 6830) / 20.0)
    A = (u ** 2 + 2) / (u * np.sqrt(u ** 2 + 4))
    mag = 15.4 - 2.5 * np.log10(A) + 0.004 * rng.standard_normal(len(t))
    rows = [f"{2450000 + a:.5f} {m:.3f} 0.004 5.0 400.0" for a, m in zip(t, mag)]
    (folder / "ob140939_OGLE.dat").write_text("\n".join(rows) + "\n")
    t = 8526.2589 + np.arange(0, 72, 15.16 / 1440)
    mag = 19.7 + 0.005 * rng.standard_normal(len(t))
    with gzip.open(folder / "ulwdc1_012_W149_season1.txt.gz", "wt") as f:
        f.write("\n".join(f"{2450000 + a:.6f} {m:.6f} 0.0055" for a, m in zip(t, mag)) + "\n")
    return str(folder)


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory):
    """80 simulated events (20 per class, variables included) shared by the training tests."""
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    r = run_script("simulate.py", "--n-flat", "20", "--n-pspl", "20", "--n-binary", "20", "--n-variable", "20", "--seed", "3",
                   "--output", str(path), "--no-progress")
    assert r.returncode == 0, r.stderr
    return str(path)


def terminate_when(args, ready, timeout=120):
    """Start a script, send SIGTERM once ready() is true (or it has run `timeout` s), and return
    (returncode, stderr); skips the calling test if the script finished first."""
    import signal
    import time
    proc = start_script(*args)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be interrupted")
    return proc.returncode, err


def pytest_collection_modifyitems(config, items):
    """CUDA-marked tests are skipped on a machine without a GPU (bench/gpu_check.sh runs them)."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (bench/gpu_check.sh runs these where one is lent)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
