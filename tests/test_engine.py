"""The generic loop: schedule, AMP settings, non-finite loss, signals; bf16/fp16 runs on CPU."""
import json
import signal

import numpy as np
import pytest
import torch

from engine.distributed import DistInfo
from engine.trainer import NonFiniteLossError, StopRequest, amp_settings, train_one_epoch, warmup_cosine
from models.layers import ClassifierLoss
from tests.test_train import train


def test_warmup_cosine_schedule():
    f = warmup_cosine(total_steps=100, warmup_steps=10, min_ratio=0.01)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.505, abs=1e-3)
    assert f(100) == pytest.approx(0.01) and f(1000) == pytest.approx(0.01)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_grad_scaler_only_for_fp16():
    cpu = torch.device("cpu")
    for amp, enabled in (("fp16", True), ("bf16", False), ("fp32", False)):
        name, autocast, scaler = amp_settings(amp, cpu)
        assert name == amp and scaler.is_enabled() == enabled
    assert amp_settings("auto", cpu)[0] == "fp32"
    with amp_settings("bf16", cpu)[1]():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16


class NaNModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))

    def forward(self, x):
        logits = self.w.expand(x.shape[0], 3) * float("nan")
        return {"logits": logits, "log_probs": torch.log_softmax(logits, -1)}


def test_non_finite_loss_stops_with_a_clear_error():
    model = NaNModel()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    _, autocast, scaler = amp_settings("fp32", torch.device("cpu"))

    def fetch(idx):
        return torch.zeros(len(idx), 5, 4), torch.zeros(len(idx), dtype=torch.long)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        train_one_epoch(model, ClassifierLoss(), opt, sched, scaler, autocast, fetch, [np.arange(4)], DistInfo(),
                        StopRequest(), progress=False)


def test_stop_request_on_sigusr1():
    stop = StopRequest().install()
    try:
        signal.raise_signal(signal.SIGUSR1)
        assert stop.signum == signal.SIGUSR1 and stop.name == "SIGUSR1"
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_reduced_precision_runs_on_cpu(tmp_path, tiny_h5, amp):
    amp_run(tmp_path, tiny_h5, amp, "cpu")  # tests/test_cuda.py runs the same on a GPU


def amp_run(tmp_path, data, amp, device):
    """Two epochs in `amp` on `device`, then one more by relaunching (the scaler's state resumes)."""
    r = train(tmp_path, data, "--epochs", "2", "--batch-size", "16", "--amp", amp, "--device", device,
              "--features", "basic", "--truncate-augment", "0", name=amp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"on {device}, amp {amp}" in r.stdout
    run = tmp_path / "results" / amp
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["config"]["amp"] == amp
    assert bool(ckpt["scaler"]) == (amp == "fp16") and (amp != "fp16" or ckpt["scaler"]["scale"] > 0)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    metrics = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert all(np.isfinite(m["train_loss"]) for m in metrics)
    assert (device == "cuda") == ("peak_mem_mib" in metrics[-1])
    again = train(tmp_path, data, "--epochs", "3", "--batch-size", "16", "--amp", amp, "--device", device,
                  "--features", "basic", "--truncate-augment", "0", name=amp)
    assert again.returncode == 0 and "resuming" in again.stdout, again.stderr[-3000:]
    assert len(open(run / "metrics.jsonl").readlines()) == 3
