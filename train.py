"""Train a model of any task; one code path for a CPU laptop, one GPU and many nodes.

    # single process (CPU or one GPU); the thesis quick-start command works unchanged
    python train.py --data test.h5 --epochs 5 --batch-size 32 --hierarchical --use-aux-head

    # the thesis CNN-GRU, as the seed trained it on one GPU
    python train.py --data baseline.h5 --model cnn_gru --output results --epochs 50 --batch-size 64 \\
        --lr 5e-4 --weight-decay 1e-4 --warmup-epochs 3 --d-model 64 --n-layers 4 --dropout 0.3 \\
        --window-size 5 --hierarchical --use-aux-head --attention-pooling

    # one node, 4 processes (NCCL on GPUs, gloo on CPU)
    torchrun --standalone --nproc-per-node 4 train.py --data baseline.h5 --amp bf16

    # lens finding (--task lens): a folder of lenses/nonlenses, an image HDF5 file, or roots per class;
    # without --task, the task follows from the data (seed 000's command runs as it was written)
    python train.py --task lens --data data/lsst --model resnet18 --epochs 20
    python train.py --mode train --model-name convnext_tiny --train-roots A B --train-roots-neg C D \
        --index-cache idx.pkl --val-split 0.2 --epochs 30 --batch-size 512 --num-workers 4 --cache-ratio 1

    # substructure (--task substructure): DeepLense class folders no/sphere/vort, simulations or HDF5
    python train.py --task substructure --data data/common --model resnet18 --epochs 30
    python train.py --task substructure --data data/common --model lens_pinn --lens-param-weight 0.1

    # masked-autoencoder pretraining on any image files, then fine-tuning its encoder (10% of the labels)
    python train.py --task mae --data data/common --epochs 400
    python train.py --task substructure --data data/common --init-from results/mae_common_s42 --label-fraction 0.1

    # super-resolution (LR/ + HR/ folders of pairs or HDF5): EDSR, or the MAE's encoder with --init-from
    python train.py --task superres --data data/sr --model edsr --epochs 30

    # SLURM, many nodes: sbatch/train.sbatch (srun torchrun with c10d rendezvous); lens: sbatch/lens_pipeline.sh;
    # pretraining -> fine-tuning -> evaluation: sbatch/mae_pipeline.sh

The run directory (<output>/<experiment-name>; the name is derived from the options when not
given, without a timestamp) holds config.json, split.npz, metrics.jsonl, last.pt and best.pt.
Relaunching the same command resumes from last.pt; SIGTERM or SIGUSR1 saves last.pt and exits.
`--batch-size` is per process: the global batch is batch-size × processes × accumulation-steps.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

from data.cache import CacheBuildError
from engine import adaptation, distributed
from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.cli import OneLineErrorParser
from engine.trainer import (NonFiniteLossError, StopRequest, Timer, amp_settings, evaluate, param_groups,
                            rank_batches, summarize, train_one_epoch, warmup_cosine)
from tasks import TASKS, TaskError, get_task


class TrainError(Exception):
    """Bad input or a run directory that cannot be used: reported as one line."""


def get_args_parser():
    p = OneLineErrorParser("train.py", description=__doc__.split("\n")[0])
    g = p.add_argument_group("data")
    g.add_argument("--task", default=None, choices=TASKS,
                   help="default: from the data (--train-roots / --train-roots-neg or class folders lenses/nonlenses: "
                        "lens; no/sphere/vort: substructure; LR/ and HR/: superres; an image HDF5 file: the task it "
                        "was simulated for; --resume: the run's), else microlensing")
    g.add_argument("--data", default=None, help="microlensing: simulator HDF5 file; lens: an image HDF5 file or a "
                                                "folder with lenses/nonlenses class folders (FITS or .npy); "
                                                "substructure: a folder of no/sphere/vort class folders or HDF5; "
                                                "mae: any of those or a folder of images; superres: a folder "
                                                "with LR/ and HR/ or an HDF5 file")
    g.add_argument("--val-fraction", "--val-split", type=float, default=None, help="default per task: 0.1 (lens 0.2)")
    g.add_argument("--test-fraction", type=float, default=None,
                   help="held out; never used by training or selection (default 0.1)")
    g.add_argument("--cache-dir", default=None, help="node-local RAM folder for the data cache (default /dev/shm)")
    g = p.add_argument_group("model")
    g.add_argument("--model", "--model-name", default=None,
                   help="microlensing: cnn_gru or patch_transformer (default); lens: any timm backbone (default "
                        "resnet18); substructure: a timm backbone or lens_pinn (both: vit with --init-from); "
                        "superres: edsr or mae_sr")
    g.add_argument("--dropout", type=float, default=None, help="default per task: 0.1 (lens 0)")
    g = p.add_argument_group("optimisation (defaults per task: tasks/<task>.py DEFAULTS)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None, help="per process")
    g.add_argument("--accumulation-steps", type=int, default=1)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--warmup-epochs", type=float, default=None)
    g.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: off)")
    g.add_argument("--class-weights", choices=("balanced", "none"), default="balanced",
                   help="balanced: inverse class frequency of the training split (lens: BCE pos_weight)")
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
    for name in TASKS:
        get_task(name).add_train_args(p)
    adaptation.add_train_args(p)  # lens and substructure
    return p


def resolve_defaults(args, task):
    """Options left unset take the task's defaults (e.g. lens: AdamW 1e-4, weight decay 1e-2)."""
    for key, value in task.DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def check_args(args, task):
    for name in ("epochs", "batch_size", "accumulation_steps"):
        if getattr(args, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.val_fraction < 1 or not 0 <= args.test_fraction < 1 or args.val_fraction + args.test_fraction >= 1:
        raise TrainError("--val-fraction and --test-fraction must be in (0, 1) and sum to < 1")
    task.check_train_args(args)
    adaptation.check_args(args)


def run_directory(args, task):
    """(run_dir, checkpoint to resume or None)."""
    if args.resume:
        path = args.resume
        ckpt_path = os.path.join(path, "last.pt") if os.path.isdir(path) else path
        if not os.path.isfile(ckpt_path):
            raise TrainError(f"--resume {path}: no checkpoint there")
        return os.path.dirname(os.path.abspath(ckpt_path)), ckpt_path
    run_dir = os.path.join(args.output, args.experiment_name or task.default_name(args))
    last = os.path.join(run_dir, "last.pt")
    return run_dir, last if os.path.isfile(last) else None


def check_same_run(saved: dict, config: dict, run_dir: str, identity_keys, new_key_defaults=None):
    if saved.get("task") != config["task"]:
        raise TrainError(f"{run_dir}: a run directory of task {saved.get('task')!r}, not {config['task']!r}")
    # a key the saved run lacks is an option added since it started (the task's IDENTITY_DEFAULTS):
    # it ran as that option's default does
    defaults = new_key_defaults or {}
    diff = [k for k in identity_keys if saved.get(k, defaults.get(k)) != config.get(k)]
    if diff:
        k = diff[0]
        raise TrainError(f"{run_dir}: made with {k}={saved.get(k)!r}, this command has {config.get(k)!r}; "
                         "use another --experiment-name or --output")


def infer_task(args) -> tuple[str, str]:
    """(task, why) for a command without --task, so seed 000's `--train-roots A --train-roots-neg B`
    and the thesis's `--data file.h5` both run unchanged; image HDF5 files carry their task."""
    if args.resume:
        run_dir = args.resume if os.path.isdir(args.resume) else os.path.dirname(args.resume)
        try:
            with open(os.path.join(run_dir, "config.json")) as f:
                return json.load(f)["task"], f"the run {args.resume}"
        except (OSError, ValueError, KeyError):
            pass  # no readable config.json: run_directory() / the checkpoint loader say what is wrong
    if getattr(args, "train_roots", None) or getattr(args, "train_roots_neg", None):
        return "lens", "--train-roots / --train-roots-neg"
    data = args.data
    if data and os.path.isdir(data):
        from data import lens_data, sr_pairs
        if lens_data.has_class_folders(data):
            return "lens", f"{data} holds lenses / nonlenses folders"
        if lens_data.has_class_folders(data, lens_data.SUBSTRUCTURE_FOLDERS):
            return "substructure", f"{data} holds no / sphere / vort folders"
        if any(os.path.isdir(os.path.join(data, d)) for d in sr_pairs.LR_FOLDERS):
            return "superres", f"{data} holds LR/ and HR/ folders"
    if data and os.path.isfile(data):
        import h5py
        try:
            with h5py.File(data, "r") as f:
                task = f.attrs.get("task")
        except OSError:
            task = None  # the task's own reader reports an unreadable file
        if isinstance(task, bytes):
            task = task.decode()
        if task in TASKS:
            return task, f"{data} was simulated for it"
    return "microlensing", "the default"


def main(args):
    if args.task is None:
        args.task, why = infer_task(args)
        if args.task != "microlensing" and os.environ.get("RANK", "0") == "0":
            print(f"train.py: --task {args.task} ({why})", flush=True)
    task = get_task(args.task)
    resolve_defaults(args, task)
    check_args(args, task)
    info = distributed.init_distributed(args.device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    run_dir, resume_path = run_directory(args, task)
    config = {k: v for k, v in vars(args).items() if k not in ("resume",)}
    config.update(task.data_identity(args))
    config["world_size"] = info.world_size
    ckpt = None
    if resume_path:
        try:
            ckpt = load_checkpoint(resume_path)
        except CheckpointError as err:
            raise TrainError(str(err)) from None
        check_same_run(ckpt["config"], config, run_dir, task.IDENTITY_KEYS, getattr(task, "IDENTITY_DEFAULTS", None))

    # data: the node's RAM cache, the split fixed by the seed, statistics of the training split
    data = task.load_train_data(args, info)
    if ckpt is not None:
        split = {k: ckpt["split"][k].numpy() for k in ("train", "val", "test")}
        stats = ckpt["stats"]
    else:
        split = task.make_split(data, args)
        stats = task.fit_stats(data, split, args, info)
    unit = data.meta.get("unit", "samples")
    if len(split["train"]) == 0 or len(split["val"]) == 0:
        raise TrainError(f"{args.data or 'the data'}: {len(data.labels)} {unit} are too few for a train/val/test split")
    train_fetch = task.make_fetch(data, stats, args, info.device, train=True)
    val_fetch = task.make_fetch(data, stats, args, info.device, train=False)
    class_names = data.meta.get("class_names", task.CLASS_NAMES)  # e.g. a microlensing file with or without variables
    n_classes = len(class_names)

    # model, loss, optimiser, schedule, AMP
    model, model_name, kwargs = task.build_model(args, data, stats)
    criterion = task.make_criterion(data, split, args)
    target = None
    if getattr(args, "adapt_data", None):  # domain-adversarial: the target images join every training batch
        model, model_name, kwargs, train_fetch, criterion, target = adaptation.wrap(
            args, data, split, info, kwargs, train_fetch, criterion, stats, info.device)
    model = model.to(info.device)
    criterion = criterion.to(info.device)
    # parameter groups: the task's (e.g. layer-wise LR decay, a frozen encoder) or weight decay on weights only
    groups = task.param_groups(model, args) if hasattr(task, "param_groups") else param_groups(model, args)
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    sampler = torch.utils.data.DistributedSampler(range(len(split["train"])), num_replicas=info.world_size,
                                                  rank=info.rank, shuffle=True, seed=args.seed)
    batches_per_epoch = -(-len(sampler) // args.batch_size)
    steps_per_epoch = -(-batches_per_epoch // args.accumulation_steps)
    schedule = warmup_cosine(args.epochs * steps_per_epoch, max(1, int(args.warmup_epochs * steps_per_epoch)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp, autocast, scaler = amp_settings(args.amp, info.device)
    config["amp"] = amp
    select = task.SELECT_METRIC
    lower_is_better = getattr(task, "SELECT_MODE", "max") == "min"  # e.g. the MAE's validation loss

    start_epoch, start_batch, best = 0, 0, float("inf") if lower_is_better else -float("inf")
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
        if init["model_name"] != model_name or init["model_kwargs"] != kwargs:
            raise TrainError(f"--pretrained {args.pretrained}: a {init['model_name']} with {init['model_kwargs']}, "
                             f"this run builds a {model_name} with {kwargs}")
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
        for name, text in data.meta.get("run_files", {}).items():  # e.g. the ingestion log of image roots
            with open(os.path.join(run_dir, name), "w") as f:
                f.write(text)
        print(f"run {run_dir}: {model_name} ({sum(p.numel() for p in unwrapped.parameters()):,} parameters), "
              f"{len(split['train'])}/{len(split['val'])}/{len(split['test'])} train/val/test {unit}, "
              f"{info.world_size} process(es) on {info.device.type}, amp {amp}, "
              f"global batch {args.batch_size * info.world_size * args.accumulation_steps}", flush=True)

    def state(epoch, step):
        return {"model": unwrapped.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch, "step": step,
                "best_metric": best, "select_metric": select, "config": config, "model_name": model_name,
                "model_kwargs": kwargs, "task": args.task, "stats": stats, "class_names": list(class_names),
                "split": {k: torch.from_numpy(v) for k, v in split.items()}, "rng": torch.get_rng_state(),
                **task.checkpoint_extras(data, stats, args)}

    stop = StopRequest().install()
    terms = getattr(criterion, "term_names", ())  # loss terms logged separately (train_loss_<name>, val_loss_<name>)
    extra_metrics = getattr(criterion, "metric_names", ())  # e.g. PSNR (train_<name>, val_<name>)
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        if hasattr(train_fetch, "set_epoch"):  # a task whose batches depend on the epoch (augmented copies)
            train_fetch.set_epoch(epoch)
        order = np.asarray(split["train"])[list(sampler)]
        batches = rank_batches(order, args.batch_size)
        timer = Timer()
        sums, done = train_one_epoch(model, criterion, optimizer, scheduler, scaler, autocast, train_fetch, batches,
                                     info, stop, args.accumulation_steps, args.clip_grad, start_batch,
                                     n_classes=n_classes, progress=not args.no_progress,
                                     desc=f"epoch {epoch + 1}/{args.epochs}")
        if done < len(batches):  # a stop was requested: save where we are and leave
            if info.is_main:
                save_checkpoint(state(epoch, done), os.path.join(run_dir, "last.pt"))
                print(f"train.py: {stop.name} at epoch {epoch + 1}, batch {done}/{len(batches)}: saved "
                      f"{run_dir}/last.pt; relaunch the same command to resume", flush=True)
            data.remove()
            if target is not None:
                target.remove()
            distributed.cleanup(info)
            return 128 + stop.signum
        train_seconds = timer()
        val = evaluate(unwrapped, criterion, autocast, val_fetch, split["val"], args.batch_size, info,
                       n_classes=n_classes, collect=n_classes > 0)
        val_sums, scores = val if n_classes else (val, None)
        metrics = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "train_seconds": train_seconds,
                   "samples_per_s": float(sums[2]) / train_seconds, "partial_epoch": start_batch > 0,
                   # CUDA: the run's peak of allocated memory on this process's GPU, MiB
                   **({"peak_mem_mib": torch.cuda.max_memory_allocated(info.device) / 2**20}
                      if info.device.type == "cuda" else {}),
                   **summarize(sums, "train", class_names, terms, extra_metrics),
                   **summarize(val_sums, "val", class_names, terms, extra_metrics),
                   **({f"val_{k}": v for k, v in task.val_metrics(*scores).items()} if scores else {})}
        start_batch = 0
        value = metrics[select]
        improved = bool(value < best if lower_is_better else value > best)  # a NaN metric never improves
        best = value if improved else best
        metrics[f"best_{select}"] = best
        if info.is_main:
            with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(metrics) + "\n")
            ckpt_state = state(epoch + 1, 0)
            if scores and hasattr(task, "val_decision"):  # a decision rule fixed on this epoch's validation scores
                ckpt_state.update(task.val_decision(*scores, args))
            save_checkpoint(ckpt_state, os.path.join(run_dir, "last.pt"))
            if improved:
                save_checkpoint(ckpt_state, os.path.join(run_dir, "best.pt"))
            if args.save_every and (epoch + 1) % args.save_every == 0:
                save_checkpoint(ckpt_state, os.path.join(run_dir, f"epoch_{epoch + 1:03d}.pt"))
            if n_classes:
                recall = " ".join(f"{c}={metrics[f'val_recall_{c}']:.3f}" for c in class_names)
                extra = f" {select[4:]} {value:.4f}" if select != "val_acc" else ""
                scores_text = (f"train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.3f} | val loss "
                               f"{metrics['val_loss']:.4f} acc {metrics['val_acc']:.3f}{extra} ({recall})")
            else:
                scores_text = f"train loss {metrics['train_loss']:.4f} | val loss {metrics['val_loss']:.4f}" + "".join(
                    f" {k[4:]} {metrics[f'val_{k[4:]}']:.4f}" for k in [f"val_{m}" for m in extra_metrics])
            print(f"epoch {epoch + 1}/{args.epochs}: {scores_text} | {metrics['samples_per_s']:.0f} samples/s"
                  f"{' *' if improved else ''}", flush=True)
    if info.is_main:
        print(f"done: best {select.replace('_', ' ')} {best:.4f}; checkpoints in {run_dir}", flush=True)
    data.remove()
    if target is not None:
        target.remove()
    distributed.cleanup(info)
    if info.is_main and hasattr(task, "after_training"):  # e.g. microlensing --calibrate-variables
        task.after_training(run_dir, args)
    return 0


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    try:
        sys.exit(main(arguments))
    except (TrainError, TaskError, CacheBuildError, NonFiniteLossError, distributed.DistributedSetupError) as error:
        sys.exit(f"train.py: error: {error}")
