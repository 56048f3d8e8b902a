"""The SLURM files parse, and their commands run locally on tiny data."""
import glob
import json
import os
import subprocess

import numpy as np
import pytest

from data import microlensing_h5 as mlh5
from tests.conftest import ROOT, run_script


def test_sbatch_files_parse():
    files = glob.glob(os.path.join(ROOT, "sbatch", "*"))
    assert len(files) >= 6
    for path in files:
        r = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
        assert r.returncode == 0, (path, r.stderr)


def test_simulate_array_and_merge_run_locally(tmp_path, venv):
    env = dict(os.environ, OUT=str(tmp_path), N_PER_CLASS="5", SEED="3", VENV=venv,
               SLURM_ARRAY_TASK_COUNT="2", SLURM_CPUS_PER_TASK="1")
    for task in ("0", "1"):
        r = subprocess.run(["bash", "sbatch/simulate.sbatch"], cwd=ROOT, capture_output=True, text=True,
                           env=dict(env, SLURM_ARRAY_TASK_ID=task))
        assert r.returncode == 0, r.stderr
    r = subprocess.run(["bash", "sbatch/merge.sbatch"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    d = mlh5.load(tmp_path / "microlensing.h5")
    assert np.bincount(d["labels"]).tolist() == [5, 5, 5, 5]  # N_VARIABLE defaults to N_PER_CLASS
    assert list(d["attrs"]["class_names"]) == ["flat", "pspl", "binary", "variable"]


def read(name):
    with open(os.path.join(ROOT, "sbatch", name)) as f:
        return f.read()


def test_no_cluster_paths():
    for name in os.listdir(os.path.join(ROOT, "sbatch")):
        text = read(name)
        for literal in ("/home/", "/scratch/", "/gpfs/", "/lustre/", "/project", "/work/"):
            assert literal not in text, (name, literal)


def test_train_requeues_on_time_limit_signal():
    text = read("train.sbatch")
    for needed in ("#SBATCH --signal=B:USR1@", "#SBATCH --requeue", "scontrol requeue", "torchrun",
                   "--rdzv-backend=c10d", "/dev/shm", "trap stop_training USR1"):
        assert needed in text, needed


def fake_sbatch(tmp_path):
    """An `sbatch` on PATH that logs its arguments and answers --parsable with job ids 101, 102, ..."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "sbatch"
    script.write_text('#!/usr/bin/env bash\n'
                      'echo "$*" >> "$SBATCH_LOG"\n'
                      'echo $((100 + $(wc -l < "$SBATCH_LOG")))\n')
    script.chmod(0o755)
    return str(bin_dir)


@pytest.mark.parametrize("data_exists", [False, True])
def test_pipeline_chains_jobs_with_afterok(tmp_path, data_exists):
    out = tmp_path / "sim"
    out.mkdir()
    if data_exists:  # a second submission reuses the simulation
        (out / "microlensing.h5").touch()
    log = tmp_path / "sbatch.log"
    env = dict(os.environ, PATH=fake_sbatch(tmp_path) + os.pathsep + os.environ["PATH"], SBATCH_LOG=str(log),
               OUT=str(out), NAME="run", SHARDS="4", NODES="2", GPUS_PER_NODE="8", GPU_SBATCH="--partition=gpu")
    r = subprocess.run(["bash", os.path.join(ROOT, "sbatch", "pipeline.sh"), "--account=proj"], cwd=tmp_path,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert all(c.startswith("--parsable --account=proj") for c in calls)
    if data_exists:
        train, evaluate = calls
        assert "--dependency" not in train
    else:
        simulate, merge, train, evaluate = calls
        assert "--array=0-3" in simulate and simulate.endswith("sbatch/simulate.sbatch")
        assert "--dependency=afterok:101" in merge and "NAME=microlensing.h5" in merge
        assert "--dependency=afterok:102" in train
    assert train.endswith("sbatch/train.sbatch") and evaluate.endswith("sbatch/evaluate.sbatch")
    assert "--partition=gpu" in train and "--nodes=2" in train and "--gres=gpu:8" in train
    assert f"DATA={out}/microlensing.h5,NAME=run" in train
    assert f"--dependency=afterok:{100 + len(calls) - 1}" in evaluate
    assert "--nodes" not in evaluate and "--gres" not in evaluate


def test_pipeline_runs_locally(tmp_path, venv):
    name = f"smoke{os.getpid()}"
    results = tmp_path / "results"
    env = dict(os.environ, LOCAL="1", OUT=str(tmp_path / "sim"), RESULTS=str(results), NAME=name,
               N_PER_CLASS="20", SHARDS="2", SEED="3", GPUS_PER_NODE="1", VENV=venv,
               TRAIN_ARGS="--epochs 1 --batch-size 16 --d-model 16 --n-layers 1 --device cpu --no-progress",
               EVAL_ARGS="--no-progress")
    r = subprocess.run(["bash", "sbatch/pipeline.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    run_dir = results / name
    assert (run_dir / "best.pt").is_file()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    with open(run_dir / "eval_microlensing" / "evaluation_summary.json") as f:
        summary = json.load(f)
    assert not os.path.exists(f"/dev/shm/lensing-local-{name}")  # the staged copy is removed
    assert summary["rows"] == "test split"  # evaluate recognised the training file: no training events scored


def test_image_array_shards_fill_one_folder(tmp_path, venv):
    """Two array tasks writing the LSST FITS layout into one folder give the one-shot run's files."""
    from data import lens_images
    env = dict(os.environ, OUT=str(tmp_path / "sharded"), TASK="lens", N="40", FORMAT="fits", SEED="3",
               VENV=venv, SLURM_ARRAY_TASK_COUNT="2", SLURM_CPUS_PER_TASK="1")
    for task in ("1", "0"):
        r = subprocess.run(["bash", "sbatch/simulate_images.sbatch"], cwd=ROOT, capture_output=True, text=True,
                           env=dict(env, SLURM_ARRAY_TASK_ID=task))
        assert r.returncode == 0, r.stderr
    r = run_script("simulate.py", "--task", "lens", "--n-lens", "40", "--n-nonlens", "40", "--format", "fits",
                   "--seed", "3", "--no-progress", "--output", str(tmp_path / "one"))
    assert r.returncode == 0, r.stderr
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.fits"))
    sharded = sorted(p.relative_to(tmp_path / "sharded") for p in (tmp_path / "sharded").rglob("*.fits"))
    assert one == sharded and len(one) == 80 * 5
    for name in one[::37]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "sharded" / name).read_bytes()
    tables = [lens_images.read_params_csv(str(tmp_path / "sharded" / f"params_shard{i}of2.csv")) for i in (0, 1)]
    assert sorted(np.concatenate([t["index"] for t in tables]).tolist()) == list(range(80))


def test_lens_pipeline_runs_locally(tmp_path, venv):
    """simulate (2 FITS shards) -> train -> evaluate with candidates, as the SLURM chain runs it."""
    name = f"lens{os.getpid()}"
    results = tmp_path / "results"
    env = dict(os.environ, LOCAL="1", OUT=str(tmp_path / "lsst"), RESULTS=str(results), NAME=name, N="24",
               SHARDS="2", SEED="3", GPUS_PER_NODE="1", VENV=venv, CANDIDATES="8",
               TRAIN_ARGS="--epochs 1 --batch-size 16 --device cpu --no-progress",
               EVAL_ARGS="--no-progress --n-bootstrap 10")
    r = subprocess.run(["bash", "sbatch/lens_pipeline.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert len(list((tmp_path / "lsst" / "lenses").glob("*.fits"))) == 24 * 5
    evaluation = results / name / "eval_test"
    with open(evaluation / "evaluation_summary.json") as f:
        summary = json.load(f)
    assert summary["rows"] == "test split" and summary["candidates"]["n"] == min(8, summary["metrics"]["n"])
    assert (evaluation / "candidates.png").stat().st_size > 1000
    assert set(summary["auc_vs_nonlens_kind"]) <= {"isolated", "ring", "spiral", "merger", "pair"}  # simulated kinds
    assert "recall_vs_parameters" in summary  # against the simulator's true parameters


def test_substructure_pipeline_runs_locally(tmp_path, venv):
    """simulate (2 npy shards) -> train two models (the job array) -> evaluate each -> one comparison table."""
    name = f"sub{os.getpid()}"
    results = tmp_path / "results"
    env = dict(os.environ, LOCAL="1", OUT=str(tmp_path / "sim"), RESULTS=str(results), NAME=name, N="8",
               SHARDS="2", SEED="3", GPUS_PER_NODE="1", VENV=venv, MODELS="resnet18 mobilenetv3_small_100",
               TRAIN_ARGS="--epochs 1 --batch-size 8 --test-fraction 0.25 --device cpu --no-progress",
               EVAL_ARGS="--no-progress --n-bootstrap 10 --tta 1")
    r = subprocess.run(["bash", "sbatch/substructure_pipeline.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert sum(len(list((tmp_path / "sim" / c).glob("*.npy"))) for c in ("no", "sphere", "vort")) == 24
    for model in ("resnet18", "mobilenetv3_small_100"):
        summary = json.load(open(results / f"{name}_{model}" / "eval_test" / "evaluation_summary.json"))
        assert summary["model"] == model and summary["rows"] == "test split"
    table = (results / f"{name}_comparison" / "comparison.md").read_text()
    assert f"{name}_resnet18" in table and f"{name}_mobilenetv3_small_100" in table and "macro_auc" in table


def test_mae_pipeline_runs_locally(tmp_path, venv):
    """pretrain an MAE -> fine-tune it, probe it and train the same ViT from scratch -> evaluate each -> one table."""
    from tests.test_substructure import write_class_folders
    write_class_folders(tmp_path / "data", n=10, size=32)
    name = f"mae{os.getpid()}"
    results = tmp_path / "results"
    arch = "--embed-dim 32 --depth 2 --num-heads 2 --patch-size 4"
    env = dict(os.environ, LOCAL="1", DATA=str(tmp_path / "data"), RESULTS=str(results), NAME=name,
               GPUS_PER_NODE="1", VENV=venv, ARCH_ARGS=arch,
               MAE_ARGS="--decoder-embed-dim 16 --decoder-depth 1 --decoder-num-heads 2 --epochs 1 --batch-size 8 "
                        "--device cpu --no-progress",
               FT_ARGS="--epochs 1 --batch-size 8 --device cpu --no-progress",
               EVAL_ARGS="--no-progress --n-bootstrap 10 --tta 1")
    r = subprocess.run(["bash", "sbatch/mae_pipeline.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    mae_split = np.load(results / f"{name}_mae" / "split.npz")
    for variant in ("finetune", "probe", "scratch"):
        run = results / f"{name}_{variant}"
        summary = json.load(open(run / "eval_test" / "evaluation_summary.json"))
        assert summary["model"] == "vit" and summary["rows"] == "test split"
        np.testing.assert_array_equal(np.load(run / "split.npz")["test"], mae_split["test"])
        config = json.load(open(run / "config.json"))
        assert (config["init_from"] is not None) == (variant != "scratch")
        assert config["linear_probe"] == (variant == "probe")
    table = (results / f"{name}_comparison" / "comparison.md").read_text()
    assert all(f"{name}_{v}" in table for v in ("finetune", "probe", "scratch")) and "macro_auc" in table
