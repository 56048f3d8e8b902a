"""The SLURM files parse, and their commands run locally on tiny data."""
import glob
import os
import subprocess
import sys

import numpy as np

from data import microlensing_h5 as mlh5
from tests.conftest import ROOT


def test_sbatch_files_parse():
    files = glob.glob(os.path.join(ROOT, "sbatch", "*"))
    assert len(files) >= 3
    for path in files:
        r = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
        assert r.returncode == 0, (path, r.stderr)


def test_simulate_array_and_merge_run_locally(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), N_PER_CLASS="5", SEED="3", VENV=sys.prefix,
               SLURM_ARRAY_TASK_COUNT="2", SLURM_CPUS_PER_TASK="1")
    for task in ("0", "1"):
        r = subprocess.run(["bash", "sbatch/simulate.sbatch"], cwd=ROOT, capture_output=True, text=True,
                           env=dict(env, SLURM_ARRAY_TASK_ID=task))
        assert r.returncode == 0, r.stderr
    r = subprocess.run(["bash", "sbatch/merge.sbatch"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    d = mlh5.load(tmp_path / "microlensing.h5")
    assert np.bincount(d["labels"]).tolist() == [5, 5, 5]
