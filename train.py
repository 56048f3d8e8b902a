"""Train a classifier; one code path for a CPU laptop, one GPU and many nodes.

    # single process (CPU or one GPU); the thesis quick-start command works unchanged
    python train.py --data test.h5 --epochs 5 --batch-size 32 --hierarchical --use-aux-head

    # the thesis CNN-GRU, as the seed trained it on one GPU
    python train.py --data baseline.h5 --model cnn_gru --output results --epochs 50 --batch-size 64 \\
        --lr 5e-4 --weight-decay 1e-4 --warmup-epochs 3 --d-model 64 --n-layers 4 --dropout 0.3 \\
        --window-size 5 --hierarchical --use-aux-head --attention-pooling

    # one node, 4 processes (NCCL on GPUs, gloo on CPU)
    torchrun --standalone --nproc-per-node 4 train.py --data baseline.h5 --amp bf16

    # SLURM, many nodes: sbatch/train.sbatch (srun torchrun with c10d rendezvous)

The run directory (<output>/<experiment-name>; the name is derived from the options when not
given, without a timestamp) holds config.json, split.npz, metrics.jsonl, last.pt and best.pt.
Relaunching the same command resumes from last.pt; SIGTERM or SIGUSR1 saves last.pt and exits.
`--batch-size` is per process: the global batch is batch-size × processes × accumulation-steps.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from engine.cli import OneLineErrorParser
from data import microlensing as task_data
from data import microlensing_h5 as mlh5
from data.lightcurves import feature_stats, normalize
from engine import distributed
from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.trainer import (NonFiniteLossError, StopRequest, Timer, amp_settings, evaluate, rank_batches,
                            summarize, train_one_epoch, warmup_cosine)
from models import create_model, list_models, model_kwargs
from models.layers import ClassifierLoss

TASKS = ("microlensing",)
# options that define what a run directory holds; a relaunch must not change them
IDENTITY_KEYS = ("task", "model", "d_model", "n_layers", "window_size", "attention_pooling", "hierarchical",
                 "use_aux_head", "patch_size", "season_days", "bin_minutes", "data_fingerprint", "seed",
                 "val_fraction", "test_fraction")


class TrainError(Exception):
    """Bad input or a run directory that cannot be used: reported as one line."""


def get_args_parser():
    p = OneLineErrorParser("train.py", description=__doc__.split("\n")[0])
    g = p.add_argument_group("data")
    g.add_argument("--task", default="microlensing", choices=TASKS)
    g.add_argument("--data", required=True, help="simulator HDF5 file (simulate.py)")
    g.add_argument("--val-fraction", type=float, default=0.1)
    g.add_argument("--test-fraction", type=float, default=0.1, help="held out; never used by training or selection")
    g.add_argument("--season-days", type=float, default=72.0)
    g.add_argument("--bin-minutes", type=float, default=120.0, help="feature grid step in minutes (15 = full Roman cadence)")
    g.add_argument("--cache-dir", default=None, help="node-local RAM folder for the data cache (default /dev/shm)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="patch_transformer", help=f"one of {', '.join(list_models())}")
    g.add_argument("--d-model", type=int, default=64)
    g.add_argument("--n-layers", type=int, default=4)
    g.add_argument("--dropout", type=float, default=0.1)
    g.add_argument("--window-size", type=int, default=5, help="causal conv kernel size")
    g.add_argument("--patch-size", type=int, default=16, help="patch_transformer: grid steps per token")
    g.add_argument("--attention-pooling", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--hierarchical", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--use-aux-head", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--stage1-weight", type=float, default=1.0)
    g.add_argument("--stage2-weight", type=float, default=1.0)
    g.add_argument("--aux-weight", type=float, default=0.5)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--batch-size", type=int, default=64, help="per process")
    g.add_argument("--accumulation-steps", type=int, default=1)
    g.add_argument("--lr", type=float, default=5e-4)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--warmup-epochs", type=float, default=1.0)
    g.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: off)")
    g.add_argument("--class-weights", choices=("balanced", "none"), default="balanced",
                   help="balanced: inverse class frequency of the training split")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="auto: bf16 on GPUs that support it, fp32 on CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g = p.add_argument_group("run")
    g.add_argument("--output", default="results", help="folder holding run directories")
    g.add_argument("--experiment-name", default=None, help="run directory name (default: from the options)")
    g.add_argument("--pretrained", default=None,
                   help="initialise the model from this local checkpoint (same model options), e.g. a run "
                        "on an easier preset; the optimizer starts afresh")
    g.add_argument("--resume", default=None, help="a checkpoint or run directory to continue (in that directory)")
    g.add_argument("--save-every", type=int, default=0, help="also keep epoch_NNN.pt every N epochs")
    g.add_argument("--seed", type=int, default=42, help="fixes the split, the initialisation and the batch order")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g.add_argument("--no-progress", action="store_true")
    return p


def default_name(args) -> str:
    stem = os.path.splitext(os.path.basename(args.data))[0]
    return f"d{args.d_model}_l{args.n_layers}_{'hier' if args.hierarchical else 'flat'}_{args.model}_{stem}_s{args.seed}"


def check_args(args):
    if args.model not in list_models():
        raise TrainError(f"unknown model {args.model!r}; choose from {', '.join(list_models())}")
    for name in ("epochs", "batch_size", "accumulation_steps", "d_model", "n_layers"):
        if getattr(args, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.val_fraction < 1 or not 0 <= args.test_fraction < 1 or args.val_fraction + args.test_fraction >= 1:
        raise TrainError("--val-fraction and --test-fraction must be in (0, 1) and sum to < 1")
    if not os.path.isfile(args.data):
        raise TrainError(f"{args.data}: no such file")


def run_directory(args):
    """(run_dir, checkpoint to resume or None)."""
    if args.resume:
        path = args.resume
        ckpt_path = os.path.join(path, "last.pt") if os.path.isdir(path) else path
        if not os.path.isfile(ckpt_path):
            raise TrainError(f"--resume {path}: no checkpoint there")
        return os.path.dirname(os.path.abspath(ckpt_path)), ckpt_path
    run_dir = os.path.join(args.output, args.experiment_name or default_name(args))
    last = os.path.join(run_dir, "last.pt")
    return run_dir, last if os.path.isfile(last) else None


def check_same_run(saved: dict, config: dict, run_dir: str):
    if saved.get("task") != config["task"]:
        raise TrainError(f"{run_dir}: a run directory of task {saved.get('task')!r}, not {config['task']!r}")
    diff = [k for k in IDENTITY_KEYS if saved.get(k) != config.get(k)]
    if diff:
        k = diff[0]
        raise TrainError(f"{run_dir}: made with {k}={saved.get(k)!r}, this command has {config.get(k)!r}; "
                         "use another --experiment-name or --output")


def main(args):
    check_args(args)
    info = distributed.init_distributed(args.device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    run_dir, resume_path = run_directory(args)
    config = {k: v for k, v in vars(args).items() if k not in ("resume",)}
    config["data_abs"] = os.path.abspath(args.data)
    try:  # identifies the data by content: a staged copy is the same data, a regenerated file is not
        config["data_fingerprint"] = mlh5.fingerprint(args.data)
    except mlh5.SchemaError as err:
        raise TrainError(str(err)) from None
    config["world_size"] = info.world_size
    ckpt = None
    if resume_path:
        try:
            ckpt = load_checkpoint(resume_path)
        except CheckpointError as err:
            raise TrainError(str(err)) from None
        check_same_run(ckpt["config"], config, run_dir)

    # data: the node's RAM cache, the split fixed by the seed, statistics of the training split
    grid = task_data.grid_from_args(args)
    try:
        arrays = task_data.cached_h5(args.data, grid, info, args.cache_dir, not args.no_progress)
    except task_data.DataError as err:
        raise TrainError(str(err)) from None
    labels = np.asarray(arrays["labels"])
    if ckpt is not None:
        split = {k: ckpt["split"][k].numpy() for k in task_data.SPLIT_NAMES}
        stats = ckpt["stats"]
    else:
        split = task_data.make_split(labels, args.seed, args.val_fraction, args.test_fraction)
        stats = distributed.broadcast_object(
            feature_stats(arrays["features"], split["train"]) if info.is_main else None, info)
    if len(split["train"]) == 0 or len(split["val"]) == 0:
        raise TrainError(f"{args.data}: {len(labels)} events are too few for a train/val/test split")
    counts = np.bincount(labels[split["train"]], minlength=3)
    class_weights = (counts.sum() / (3 * np.maximum(counts, 1))).tolist() if args.class_weights == "balanced" else [1.0] * 3

    def fetch(indices):
        x, y = task_data.gather(arrays, indices)
        return normalize(x, stats), y

    # model, loss, optimiser, schedule, AMP
    options = dict(vars(args), in_channels=4, n_classes=3)
    kwargs = model_kwargs(args.model, options)
    model = create_model(args.model, **kwargs).to(info.device)
    criterion = ClassifierLoss(class_weights, args.stage1_weight, args.stage2_weight, args.aux_weight).to(info.device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    sampler = torch.utils.data.DistributedSampler(range(len(split["train"])), num_replicas=info.world_size,
                                                  rank=info.rank, shuffle=True, seed=args.seed)
    batches_per_epoch = -(-len(sampler) // args.batch_size)
    steps_per_epoch = -(-batches_per_epoch // args.accumulation_steps)
    schedule = warmup_cosine(args.epochs * steps_per_epoch, max(1, int(args.warmup_epochs * steps_per_epoch)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp, autocast, scaler = amp_settings(args.amp, info.device)
    config["amp"] = amp

    start_epoch, start_batch, best = 0, 0, -1.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_batch, best = ckpt["epoch"], ckpt["step"], ckpt["best_metric"]
        if start_batch and ckpt["config"].get("world_size") != info.world_size:
            start_batch = 0  # another process count splits the epoch differently: redo it from its start
        torch.set_rng_state(ckpt["rng"])
        if info.is_main:
            print(f"resuming {run_dir} at epoch {start_epoch + 1}, batch {start_batch}", flush=True)
    elif args.pretrained:
        try:
            init = load_checkpoint(args.pretrained, task=args.task)
        except CheckpointError as err:
            raise TrainError(str(err)) from None
        if init["model_name"] != args.model or init["model_kwargs"] != kwargs:
            raise TrainError(f"--pretrained {args.pretrained}: a {init['model_name']} with {init['model_kwargs']}, "
                             f"this run builds a {args.model} with {kwargs}")
        model.load_state_dict(init["model"])
    unwrapped = model
    if args.compile:
        model = torch.compile(model)
    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)

    if info.is_main:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        np.savez(os.path.join(run_dir, "split.npz"), **split)
        print(f"run {run_dir}: {args.model} ({sum(p.numel() for p in unwrapped.parameters()):,} parameters), "
              f"{len(split['train'])}/{len(split['val'])}/{len(split['test'])} train/val/test events, "
              f"{info.world_size} process(es) on {info.device.type}, amp {amp}, "
              f"global batch {args.batch_size * info.world_size * args.accumulation_steps}", flush=True)

    def state(epoch, step):
        return {"model": unwrapped.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch, "step": step,
                "best_metric": best, "config": config, "model_name": args.model, "model_kwargs": kwargs,
                "task": args.task, "stats": stats, "grid": grid, "class_names": list(task_data.CLASS_NAMES),
                "split": {k: torch.from_numpy(v) for k, v in split.items()}, "rng": torch.get_rng_state()}

    stop = StopRequest().install()
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        order = np.asarray(split["train"])[list(sampler)]
        batches = rank_batches(order, args.batch_size)
        timer = Timer()
        sums, done = train_one_epoch(model, criterion, optimizer, scheduler, scaler, autocast, fetch, batches, info,
                                     stop, args.accumulation_steps, args.clip_grad, start_batch,
                                     progress=not args.no_progress, desc=f"epoch {epoch + 1}/{args.epochs}")
        if done < len(batches):  # a stop was requested: save where we are and leave
            if info.is_main:
                save_checkpoint(state(epoch, done), os.path.join(run_dir, "last.pt"))
                print(f"train.py: {stop.name} at epoch {epoch + 1}, batch {done}/{len(batches)}: saved "
                      f"{run_dir}/last.pt; relaunch the same command to resume", flush=True)
            arrays.remove()
            distributed.cleanup(info)
            return 128 + stop.signum
        train_seconds = timer()
        metrics = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": float(sums[2]) / train_seconds, "partial_epoch": start_batch > 0,
                   **summarize(sums, "train", task_data.CLASS_NAMES),
                   **summarize(evaluate(unwrapped, criterion, autocast, fetch, split["val"], args.batch_size, info),
                               "val", task_data.CLASS_NAMES)}
        start_batch = 0
        improved = metrics["val_acc"] > best
        best = max(best, metrics["val_acc"])
        metrics["best_val_acc"] = best
        if info.is_main:
            with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(metrics) + "\n")
            ckpt_state = state(epoch + 1, 0)
            save_checkpoint(ckpt_state, os.path.join(run_dir, "last.pt"))
            if improved:
                save_checkpoint(ckpt_state, os.path.join(run_dir, "best.pt"))
            if args.save_every and (epoch + 1) % args.save_every == 0:
                save_checkpoint(ckpt_state, os.path.join(run_dir, f"epoch_{epoch + 1:03d}.pt"))
            recall = " ".join(f"{c}={metrics[f'val_recall_{c}']:.3f}" for c in task_data.CLASS_NAMES)
            print(f"epoch {epoch + 1}/{args.epochs}: train loss {metrics['train_loss']:.4f} acc "
                  f"{metrics['train_acc']:.3f} | val loss {metrics['val_loss']:.4f} acc {metrics['val_acc']:.3f} "
                  f"({recall}) | {metrics['samples_per_s']:.0f} samples/s{' *' if improved else ''}", flush=True)
    if info.is_main:
        print(f"done: best val acc {best:.4f}; checkpoints in {run_dir}", flush=True)
    arrays.remove()
    distributed.cleanup(info)
    return 0


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    try:
        sys.exit(main(arguments))
    except (TrainError, NonFiniteLossError, distributed.DistributedSetupError) as error:
        sys.exit(f"train.py: error: {error}")
