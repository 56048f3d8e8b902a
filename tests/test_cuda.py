"""The GPU paths, on a CUDA machine; skipped elsewhere (bench/gpu_check.sh runs them where a GPU is
lent): AMP bf16 / fp16 with the GradScaler, flash-attn / SDPA attention pooling, the strong-lens
renderer on CUDA against the CPU, NCCL under torchrun, torch.compile, an image task and the image
simulator on the GPU."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_script
from tests.test_engine import amp_run
from tests.test_train import train


@pytest.mark.cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_on_cuda(tmp_path, tiny_h5, amp):
    amp_run(tmp_path, tiny_h5, amp, "cuda")


@pytest.mark.cuda
def test_attention_pooling_on_cuda_matches_the_cpu():
    """flash-attn's varlen kernel (when installed) and SDPA on the GPU in bf16 give the CPU's fp32
    result to bf16 precision; curves with nothing observed included."""
    from models.layers import AttentionPooling, flash_attn_varlen_func
    torch.manual_seed(0)
    pool = AttentionPooling(64, 4).eval()
    h, mask = torch.randn(8, 50, 64), torch.rand(8, 50) > 0.3
    mask[0] = False
    with torch.no_grad():
        ref = pool(h, mask)
        gpu = pool.cuda()
        for use_flash in ((True, False) if flash_attn_varlen_func is not None else (False,)):
            gpu.use_flash = use_flash
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = gpu(h.cuda().bfloat16(), mask.cuda()).float().cpu()
            assert float((out - ref).norm() / ref.norm()) < 2e-2, use_flash
        out32 = gpu(h.cuda(), mask.cuda()).cpu()  # fp32 SDPA kernels
    assert float((out32 - ref).norm() / ref.norm()) < 1e-4


@pytest.mark.cuda
@pytest.mark.parametrize("config", ["deeplense-model1", "lsst"])
def test_renderer_on_cuda_equals_the_cpu(config):
    """Ray shooting on the GPU gives the CPU's pixels within float32 tolerance."""
    from physics.strong import render, scenes
    cfg = scenes.CONFIGS[config]
    labels = torch.arange(4) % len(cfg.classes)
    scene, params = scenes.sample(cfg, labels, torch.Generator().manual_seed(0))
    cpu = render.Renderer(cfg, "cpu").shoot(scene, cfg.size, cfg.pixel_scale, cfg.supersample)[0]
    gpu = render.Renderer(cfg, "cuda").shoot(scene, cfg.size, cfg.pixel_scale, cfg.supersample)[0]
    assert gpu.is_cuda and gpu.shape == cpu.shape
    assert float((gpu.cpu() - cpu).norm() / cpu.norm()) < 1e-4
    images = render.Renderer(cfg, "cuda").render(scene, params, torch.Generator("cuda").manual_seed(1))
    assert all(torch.isfinite(v[~torch.isnan(v)]).all() for v in images.values())


@pytest.mark.cuda
def test_smooth_lens_fit_on_cuda_equals_the_cpu(tmp_path):
    """The smooth-lens fit behind --input-kind residual runs on the GPU and leaves the CPU's residual
    maps within the optimiser's float32 tolerance; the store works from CUDA tensors."""
    from data import residual_maps
    from physics.strong import fit, render, scenes
    cfg = scenes.CONFIGS["deeplense-common"]
    scene, params = scenes.sample(cfg, torch.tensor([0, 1, 2, 1]), torch.Generator().manual_seed(4))
    images = render.Renderer(cfg, dtype=torch.float64).render(scene, params, torch.Generator().manual_seed(5))
    images = images["images"][:, 0]
    cpu, gpu = fit.fit_smooth(images, 0.05, 0.2), fit.fit_smooth(images.cuda(), 0.05, 0.2)
    assert gpu["model"].is_cuda
    r_cpu = (cpu["image"] - cpu["model"]) / cpu["sigma"]
    r_gpu = ((gpu["image"] - gpu["model"]) / gpu["sigma"]).cpu()
    assert float((r_gpu - r_cpu).std()) < 0.05 and torch.allclose(gpu["chi2"].cpu(), cpu["chi2"], rtol=0.02)
    maps = residual_maps.residual_maps(images[:, None].float().numpy(), 0.05, 0.2, str(tmp_path), "cuda",
                                       progress=False)
    assert maps.shape == (4, 1, 104, 104) and np.isfinite(maps).all()


NCCL_SCRIPT = """
import torch, torch.distributed as dist
dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
t = torch.ones(4, device="cuda")
dist.all_reduce(t)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2).cuda(), device_ids=[0])
model(torch.randn(3, 4, device="cuda")).sum().backward()
print("backend", dist.get_backend(), "sum", float(t.sum()), "grad", bool(model.module.weight.grad.abs().sum() > 0))
dist.destroy_process_group()
"""


@pytest.mark.cuda
def test_nccl_and_train_under_torchrun(tmp_path, tiny_h5):
    script = tmp_path / "nccl_check.py"
    script.write_text(NCCL_SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    r = subprocess.run([*torchrun, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "backend nccl sum 4.0 grad True" in r.stdout, r.stderr[-3000:]
    r = subprocess.run([*torchrun, "train.py", "--data", tiny_h5, "--output", str(tmp_path / "results"),
                        "--experiment-name", "torchrun", "--epochs", "1", "--batch-size", "16", "--d-model", "16",
                        "--n-layers", "1", "--features", "basic", "--truncate-augment", "0", "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "1 process(es) on cuda, amp bf16" in r.stdout, r.stderr[-3000:]


@pytest.mark.cuda
def test_compiled_training_on_cuda(tmp_path, tiny_h5):
    r = train(tmp_path, tiny_h5, "--epochs", "1", "--batch-size", "16", "--compile", "--amp", "bf16", "--device",
              "cuda", "--features", "basic", "--truncate-augment", "0", name="compiled")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(open(tmp_path / "results" / "compiled" / "metrics.jsonl").readline())["train_loss"] > 0


@pytest.mark.cuda
def test_image_simulator_training_and_predict_on_cuda(tmp_path):
    """simulate.py --device cuda -> train.py (bf16) -> predict.py with TTA, all on the GPU."""
    data = tmp_path / "lsst.h5"
    r = run_script("simulate.py", "--task", "lens", "--config", "lsst", "--n-lens", "32", "--n-nonlens", "32",
                   "--device", "cuda", "--seed", "1", "--output", str(data), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_script("train.py", "--task", "lens", "--data", str(data), "--model", "resnet18", "--epochs", "1",
                   "--batch-size", "16", "--output", str(tmp_path / "runs"), "--experiment-name", "gpu",
                   "--amp", "bf16", "--device", "cuda", "--no-progress")
    assert r.returncode == 0 and "on cuda, amp bf16" in r.stdout, r.stderr[-3000:]
    r = run_script("predict.py", "--runs", str(tmp_path / "runs" / "gpu"), "--input", str(data), "--tta", "8",
                   "--device", "cuda", "--output", str(tmp_path / "pred.csv"), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(open(tmp_path / "pred.csv").readlines()) == 1 + 64
