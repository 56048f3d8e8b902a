"""--task mae and fine-tuning from it: exact masking, the loss going down, train -> evaluate ->
fine-tune (--init-from, --linear-probe, --label-fraction, --layer-decay) and the errors of bad input."""
import argparse
import json
import os

import numpy as np
import pytest
import torch

from models import create_model
from models.mae import n_masked_patches, patchify, unpatchify
from tasks import TaskError, finetune
from tests.conftest import run_script
from tests.test_substructure import FAST, one_error_line, write_class_folders

TINY = ("--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--decoder-embed-dim", "16", "--decoder-depth", "1",
        "--decoder-num-heads", "2")


def tiny_mae(mask_ratio=0.75, size=32, patch=4, in_chans=1):
    return create_model("mae", in_chans=in_chans, image_size=size, patch_size=patch, embed_dim=32, depth=2,
                        num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, mask_ratio=mask_ratio)


def blobs(n, size=32, seed=0, widths=(2, 5), noise=0.01):
    """(n, 1, size, size) images of one or two Gaussian blobs (sigma in `widths` pixels) plus
    Gaussian noise: structure a small model can learn."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 3)):
            cx, cy, s = rng.uniform(6, size - 6), rng.uniform(6, size - 6), rng.uniform(*widths)
            out[i, 0] += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    return out + noise * rng.standard_normal(out.shape).astype(np.float32)


# --------------------------------------------------------------------------- the model
@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.3, 0.9])
def test_masked_fraction_is_exactly_the_ratio_in_every_image(ratio):
    model = tiny_mae(ratio)  # 64 patches
    x = torch.randn(16, 1, 32, 32)
    expected = round(ratio * 64)
    for train in (True, False):
        model.train(train)
        out = model(x)
        assert out["mask"].shape == (16, 64)
        assert (out["mask"].sum(1) == expected).all(), out["mask"].sum(1)
        assert set(out["mask"].unique().tolist()) == {0.0, 1.0}
    model.train()
    masks = model(x)["mask"]
    assert len({tuple(m.tolist()) for m in masks}) > 1  # each image draws its own patches
    model.eval()
    torch.testing.assert_close(model(x)["mask"], model(x)["mask"])  # fixed validation masks
    with pytest.raises(ValueError, match="must leave some masked"):
        n_masked_patches(0.001, 64)


def test_patchify_round_trip_and_outputs_multiband():
    x = torch.randn(3, 5, 24, 24)
    torch.testing.assert_close(unpatchify(patchify(x, 6), 6, 5), x)
    assert patchify(x, 6)[0, 0].numel() == 6 * 6 * 5
    model = tiny_mae(size=24, patch=6, in_chans=5)
    out = model(x)
    assert out["pred"].shape == out["target"].shape == (3, 16, 180)
    torch.testing.assert_close(out["target"], patchify(x, 6))
    # images of another size are resized to the model's grid
    assert model(torch.randn(2, 5, 30, 30))["pred"].shape == (2, 16, 180)
    # every trainable parameter gets a gradient
    from tasks.mae import MAELoss
    loss, _ = MAELoss(visible_weight=0.1)(out, None)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert not model.encoder.pos_embed.requires_grad  # fixed sin-cos positions


def test_tiny_mae_loss_goes_down_on_tiny_data():
    torch.manual_seed(0)
    from tasks.mae import MAELoss
    model, criterion = tiny_mae(0.5), MAELoss()
    x = torch.from_numpy(blobs(32))
    x = (x - x.mean((1, 2, 3), keepdim=True)) / x.std((1, 2, 3), keepdim=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.eval()
    with torch.no_grad():
        before = criterion(model(x), None)[0].item()
    model.train()
    for _ in range(150):
        loss, _ = criterion(model(x), None)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after, terms = criterion(model(x), None)
    assert after.item() < 0.5 * before, (before, after.item())
    assert set(terms) == {"masked", "visible"}


# --------------------------------------------------------------------------- the scripts
@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    """A tiny MAE trained by train.py on 32x32 substructure class folders (4x4 patches)."""
    root = tmp_path_factory.mktemp("mae")
    data = root / "data"
    write_class_folders(data, n=12, size=32)
    r = run_script("train.py", "--task", "mae", "--data", str(data), "--output", str(root / "results"),
                   "--experiment-name", "mae", "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--patch-size", "4",
                   *TINY, *FAST)
    assert r.returncode == 0, r.stderr
    assert "48 of 64 masked in every image (exactly --mask-ratio)" in r.stdout
    return root, str(data), str(root / "results" / "mae")


def test_mae_train_resume_and_evaluate(mae_run, tmp_path):
    root, data, run = mae_run
    lines = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert len(lines) == 2 and {"train_loss_masked", "val_loss_masked", "val_loss_visible"} <= set(lines[0])
    assert "train_acc" not in lines[0]
    ckpt = torch.load(os.path.join(run, "best.pt"), weights_only=True)
    assert ckpt["stats"]["n_masked"] == 48 and ckpt["stats"]["mask_fraction"] == 0.75
    assert ckpt["best_metric"] == min(line["val_loss"] for line in lines)  # lower is better
    r = run_script("evaluate.py", "--run", run, *FAST)
    assert r.returncode == 0, r.stderr
    summary = json.load(open(os.path.join(run, "eval_test", "evaluation_summary.json")))
    assert summary["n_images"] == 3 and np.isfinite(summary["masked_loss"]) and summary["mask_fraction"] == 0.75
    assert os.path.getsize(os.path.join(run, "eval_test", "reconstructions.png")) > 10_000
    # an unlabelled folder of images is MAE data too
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, image in enumerate(blobs(10)):
        np.save(flat / f"{i}.npy", image)
    r = run_script("evaluate.py", "--run", run, "--data", str(flat), "--out-dir", str(tmp_path / "ev"), *FAST)
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / "ev" / "evaluation_summary.json"))["n_images"] == 10
    r = run_script("predict.py", "--runs", run, "--input", str(flat), "--output", str(tmp_path / "p.csv"), *FAST)
    assert "an MAE run predicts nothing" in one_error_line(r, "predict.py")


def finetune_args(init_from, **kw):
    args = dict(model=None, init_from=init_from, linear_probe=False, layer_decay=1.0, label_fraction=1.0,
                norm="standardize", input_size=None, dropout=0.0, weight_decay=0.05, lr=1e-3, seed=42,
                embed_dim=32, depth=2, num_heads=2, patch_size=4, mask_ratio=0.75, pretrained_path=None)
    args.update(kw)
    return argparse.Namespace(**args)


def test_fine_tuning_loads_the_encoder_exactly_and_trains_the_head(mae_run):
    _, _, run = mae_run
    mae = torch.load(os.path.join(run, "best.pt"), weights_only=True)["model"]
    encoder = {k[len("encoder."):]: v for k, v in mae.items() if k.startswith("encoder.")}
    stats = {"shape": [1, 32, 32], "input_size": 32}
    for probe in (False, True):
        args = finetune_args(run, linear_probe=probe)
        finetune.check_args(args, "resnet18")
        model, name, kwargs = finetune.build_classifier(args, stats, 3)
        assert name == "vit" and args.model == "vit"
        for k, v in model.encoder.state_dict().items():
            torch.testing.assert_close(v, encoder[k], rtol=0, atol=0)
        opt = torch.optim.AdamW(finetune.param_groups(model, args), lr=args.lr)
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        assert all(id(p) in in_opt for p in model.head.parameters())  # the new head is optimised
        head = [p.detach().clone() for p in model.head.parameters()]
        enc = [p.detach().clone() for p in model.encoder.parameters()]
        out = model(torch.randn(4, 1, 32, 32))
        torch.nn.functional.cross_entropy(out["logits"], torch.tensor([0, 1, 2, 0])).backward()
        opt.step()
        assert all(not torch.equal(a, b) for a, b in zip(head, model.head.parameters()))
        changed = [not torch.equal(a, b) for a, b in zip(enc, model.encoder.parameters())]
        assert not any(changed) if probe else sum(changed) > len(changed) // 2
    # layer-wise LR decay: block i of 2 gets decay^(3 - (i + 1)), the embeddings decay^3, the head 1
    args = finetune_args(run, layer_decay=0.5)
    finetune.check_args(args, "resnet18")
    model = finetune.build_classifier(args, stats, 3)[0]
    scales = {g["lr_scale"] for g in finetune.param_groups(model, args)}
    assert scales == {1.0, 0.5, 0.25, 0.125}


def test_fine_tune_scripts_label_fraction_and_probe(mae_run):
    root, data, run = mae_run
    base = ("train.py", "--task", "substructure", "--data", data, "--output", str(root / "results"), "--epochs", "1",
            "--batch-size", "8", *FAST)
    r = run_script(*base, "--init-from", run, "--label-fraction", "0.5", "--layer-decay", "0.75")
    assert r.returncode == 0, r.stderr
    ft = root / "results" / "substructure_vit_data_mae_f0.5_s42"
    split = np.load(ft / "split.npz")
    mae_split = np.load(os.path.join(run, "split.npz"))
    np.testing.assert_array_equal(split["test"], mae_split["test"])  # the same held-out images
    np.testing.assert_array_equal(split["val"], mae_split["val"])
    assert set(split["train"]) < set(mae_split["train"]) and len(split["train"]) == 12  # 4 of 8 per class
    r = run_script(*base, "--init-from", run, "--linear-probe")
    assert r.returncode == 0, r.stderr
    assert "linear probe" in r.stdout
    r = run_script("evaluate.py", "--run", str(root / "results" / "substructure_vit_data_mae_probe_s42"), *FAST)
    assert r.returncode == 0, r.stderr
    assert "macro AUC" in r.stdout
    # the same ViT from random weights: the control
    r = run_script(*base, "--model", "vit", "--patch-size", "4", *TINY[:6])
    assert r.returncode == 0, r.stderr


def test_fine_tune_bad_input_one_line_each(mae_run, tmp_path):
    root, data, run = mae_run
    base = ("train.py", "--task", "substructure", "--output", str(tmp_path / "r"), "--epochs", "1", *FAST)
    other = tmp_path / "small"
    write_class_folders(other, n=4, size=24)
    line = one_error_line(run_script(*base, "--data", str(other), "--init-from", run), "train.py")
    assert "pretrained on 1x32x32 images, this data has 1x24x24 (another image size)" in line
    rgb = tmp_path / "rgb"
    for c, name in enumerate(("no", "sphere", "vort")):
        os.makedirs(rgb / name)
        for i in range(4):
            np.save(rgb / name / f"{i}.npy", np.random.default_rng(i).random((3, 32, 32)))
    line = one_error_line(run_script(*base, "--data", str(rgb), "--init-from", run), "train.py")
    assert "(another channel count)" in line
    line = one_error_line(run_script(*base, "--data", data, "--init-from", run, "--model", "resnet18"), "train.py")
    assert "does not fit this model" in line and "missing" in line and "unexpected" in line
    line = one_error_line(run_script(*base, "--data", data, "--init-from", run, "--seed", "5"), "train.py")
    assert "pretrained on" in line and "of this run's test split" in line
    line = one_error_line(run_script(*base, "--data", data, "--init-from", str(tmp_path)), "train.py")
    assert "--init-from" in line
    line = one_error_line(run_script(*base, "--data", data, "--linear-probe"), "train.py")
    assert "--linear-probe needs --init-from" in line
    sub = root / "results" / "substructure_vit_data_mae_f0.5_s42"
    if sub.exists():  # a fine-tuned classifier is not an MAE run
        line = one_error_line(run_script(*base, "--data", data, "--init-from", str(sub)), "train.py")
        assert "expected 'mae'" in line
    line = one_error_line(run_script("train.py", "--task", "mae", "--data", data, "--mask-ratio", "1.5", *FAST),
                          "train.py")
    assert "--mask-ratio" in line
    line = one_error_line(run_script("train.py", "--task", "microlensing", "--init-from", run, *FAST), "train.py")
    assert "options of the image tasks" in line


def test_label_fraction_is_stratified_and_fixed_by_the_seed():
    labels = np.repeat([0, 1, 2], [40, 20, 10])
    split = {"train": np.arange(70), "val": np.arange(70, 70), "test": np.arange(70, 70)}
    a = finetune.restrict_split(split, labels, finetune_args(None, label_fraction=0.1), "k")
    b = finetune.restrict_split(split, labels, finetune_args(None, label_fraction=0.1), "k")
    np.testing.assert_array_equal(a["train"], b["train"])
    assert np.bincount(labels[a["train"]]).tolist() == [4, 2, 1]
    c = finetune.restrict_split(split, labels, finetune_args(None, label_fraction=0.1, seed=1), "k")
    assert not np.array_equal(a["train"], c["train"])
    with pytest.raises(TaskError, match="--label-fraction"):
        finetune.check_args(finetune_args(None, label_fraction=0.0), "resnet18")
