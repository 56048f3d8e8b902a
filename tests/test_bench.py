"""Every benchmark script runs in its tiny mode (seconds, tiny data), so none can rot unnoticed
(a refactor that breaks one fails here, not in the hands of the next user)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, run_script
from tests.test_substructure import write_class_folders

BENCH = os.path.join(ROOT, "bench")
# script -> (what it must print, a figure of each part)
PYTHON_BENCHES = {
    "bench_fit.py": ["ms/event", "share with Δχ² > 25"],
    "bench_inject.py": ["3x64x64", "5x41x41", "hosts/s per core", "stages"],
    "bench_lens.py": ["cached loader", "inference on cpu", "predict.py end to end"],
    "bench_lens_ingest.py": ["fits_fast", "objects/s"],
    "bench_lens_realism.py": ["small CNN", "AUC"],
    "bench_lens_simulate.py": ["img/s render", "relative L1", "MiB/image", "ray shooting", "wall time"],
    "bench_predict_stream.py": ["light curves/s", "variables"],
    "bench_simulate.py": ["events/s", "speed-up", "adaptive worst", "survey  variable"],
    "bench_substructure_realism.py": ["deeplense-common"],
    "bench_substructure_residuals.py": ["oracle accuracy", "images/s fitted", "undetectable", "public", "residual-statistics classifier"],
    "bench_train.py": ["samples/s", "process(es)"],
    "gpu_check.py": ["samples/s", "wrote"],
}
SHELL_BENCHES = ("bench_lens_quality.sh", "bench_mae_quality.sh", "bench_microlensing_quality.sh",
                 "bench_substructure_quality.sh", "bench_substructure_transfer.sh", "bench_superres_quality.sh",
                 "gpu_check.sh")
MODULES = ("__init__.py", "lenstronomy_scenes.py")  # imported by the scripts, not run


def test_every_bench_script_has_a_tiny_run_here():
    assert set(os.listdir(BENCH)) - {"__pycache__"} == set(PYTHON_BENCHES) | set(SHELL_BENCHES) | set(MODULES)


def fake_lens_samples(root):
    """Folders like ../shared/samples/deeplense_lens_finding (which a clean clone lacks)."""
    rng = np.random.default_rng(0)
    for sub in ("lenses", "nonlenses"):
        os.makedirs(os.path.join(root, sub))
        for i in range(3):
            np.save(os.path.join(root, sub, f"{i + 1}.npy"), rng.random((3, 64, 64)).astype(np.float32))
    return str(root)


def python_args(name, tmp_path, tiny_h5):
    if name == "bench_fit.py":
        return ["--data", tiny_h5, "--tiny"]
    if name == "bench_lens.py":
        return ["--tiny", "--threads", "1", "--device", "cpu", "--cache-dir", str(tmp_path)]
    if name == "bench_lens_realism.py":
        return ["--tiny", "--real", fake_lens_samples(tmp_path / "real"), "--out", str(tmp_path / "out")]
    if name == "bench_lens_simulate.py":
        return ["--tiny", "--json", str(tmp_path / "figures.json")]
    if name == "bench_substructure_realism.py":
        write_class_folders(tmp_path / "public", n=2, size=150)
        return ["--tiny", "--public", str(tmp_path / "public"), "--out", str(tmp_path / "out")]
    if name == "bench_substructure_residuals.py":
        write_class_folders(tmp_path / "public", n=2, size=150)
        return ["--tiny", "--public", str(tmp_path / "public"), "--out", str(tmp_path / "out")]
    if name == "bench_train.py":
        return ["--tiny", "--data", tiny_h5]
    if name == "gpu_check.py":  # the GPU check's steps on the CPU, tiny
        return ["--out", str(tmp_path / "gpu"), "--device", "cpu", "--tiny", "--work", str(tmp_path)]
    return ["--tiny"]


@pytest.mark.parametrize("name", sorted(PYTHON_BENCHES))
def test_python_bench_tiny(name, tmp_path, tiny_h5, venv):
    env = dict(os.environ, PY=os.path.join(venv, "bin", "python"))  # the scripts' own stage runs, pre-warmed
    r = run_script(os.path.join("bench", name), *python_args(name, tmp_path, tiny_h5), timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for text in PYTHON_BENCHES[name]:
        assert text in r.stdout, (text, r.stdout[-3000:])
    if name == "bench_lens_simulate.py":
        figures = json.load(open(tmp_path / "figures.json"))
        assert figures["rows"]
    if name == "gpu_check.py":
        report = json.load(open(tmp_path / "gpu" / "gpu_check.json"))
        assert [r["task"] for r in report["training"]] == ["microlensing", "lens", "substructure", "mae", "superres"]
        assert all(r["samples_per_s"] > 0 and r["steps"] > 0 for r in report["training"])
        assert len(report["throughput"]) == 9 and all(v > 0 for v in report["throughput"].values())
        assert "| superres |" in (tmp_path / "gpu" / "gpu_check.md").read_text()


@pytest.mark.parametrize("name", [n for n in SHELL_BENCHES if n != "gpu_check.sh"])
def test_quality_script_tiny(name, tmp_path, venv, photometry_dir):
    """The benchmark-scale recipes end to end on tiny data (TINY=1), through the same commands."""
    samples = {"bench_lens_quality.sh": fake_lens_samples(tmp_path / "lens_samples"),
               "bench_microlensing_quality.sh": photometry_dir}
    if name in ("bench_substructure_quality.sh", "bench_substructure_transfer.sh"):
        write_class_folders(tmp_path / "sub_samples", n=2, size=150)
        samples[name] = str(tmp_path / "sub_samples")
    env = dict(os.environ, TINY="1", OUT=str(tmp_path / "out"), PY=os.path.join(venv, "bin", "python"),
               SAMPLES=samples.get(name, str(tmp_path / "none")), DATA=str(tmp_path / "out" / "sim"),
               MAE=str(tmp_path / "no_mae"))
    r = subprocess.run(["bash", os.path.join("bench", name)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    out = tmp_path / "out"
    tables = list(out.rglob("comparison.md"))
    assert tables and all("|" in t.read_text() for t in tables)
    if name in samples:  # the recipe's last step ran on the (stand-in) real samples
        assert list(out.glob("*samples*.csv")), sorted(p.name for p in out.iterdir())
    if name == "bench_substructure_transfer.sh":  # each run across generators also aligned to the known shares
        table = (out / "comparison.md").read_text()
        assert "m1_source_on_common_test_aligned" in table and "| 0.33/0.33/0.33 |" in table
    if name == "bench_lens_quality.sh":  # the transfer step: lenses painted into the samples' non-lenses
        assert (out / "painted" / "hosts.csv").exists() and (out / "painted_samples.csv").exists()


def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    r = subprocess.run(["bash", "bench/gpu_check.sh", str(tmp_path / "gpu")], cwd=ROOT, capture_output=True,
                       text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES="", PY=sys.executable), timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], r.stdout
