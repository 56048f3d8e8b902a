"""One distributed helper: torchrun's (or srun's) environment, or a single process.

Under torchrun, RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE are set; under a bare
`srun python train.py` the SLURM_* equivalents are used (MASTER_ADDR/PORT must then be set).
Without either, a single process runs through the same code (no process group).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


class DistributedSetupError(RuntimeError):
    """A launch environment that cannot form a process group."""


def _env_int(*names, default=None):
    for name in names:
        if name in os.environ:  # SLURM writes e.g. "4(x2)" for tasks per node: take the leading number
            digits = os.environ[name].split("(")[0].split(",")[0]
            return int(digits)
    return default


def init_distributed(device: str = "auto") -> DistInfo:
    """Read the launcher's environment, pick the device, join the process group if there is one."""
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    # SLURM_STEP_* exist only inside an srun step, so a plain `python` in an allocation is one process
    world = _env_int("WORLD_SIZE", "SLURM_STEP_NUM_TASKS", default=1)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    local_world = _env_int("LOCAL_WORLD_SIZE", "SLURM_STEP_TASKS_PER_NODE", default=1)
    if "RANK" not in os.environ and world > 1 and "MASTER_ADDR" not in os.environ:
        raise DistributedSetupError("launched by srun without torchrun: set MASTER_ADDR and MASTER_PORT, "
                           "or use `srun torchrun ...` (see sbatch/train.sbatch)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    info = DistInfo(rank, world, local_rank, local_world, dev)
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                                device_id=dev if dev.type == "cuda" else None)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks in place (metrics are reduced as sums and counts, never as averages)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, info: DistInfo, src: int = 0):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj, info: DistInfo) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (small objects: per-sample scores)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
