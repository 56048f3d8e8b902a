"""RAM cache: a dataset's arrays built once per node into shared memory, read by every rank.

The node's local rank 0 builds the arrays and saves them as .npy files under the cache folder
(/dev/shm by default: RAM-backed, shared by all processes of the node), writing to a temporary
name then renaming, so no rank can read a half-written file. After a barrier every rank maps the
same files read-only (np.load(mmap_mode="r")), so the node holds one copy however many ranks
read it; batches are gathered from the map by index.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np

from engine.distributed import DistInfo, barrier


def default_cache_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def cache_key(path, config: dict, identity: str | None = None) -> str:
    """Name of a cache entry: the source's identity (a file's path, size and mtime, or `identity`,
    e.g. the hash of a folder listing), the build config and the job (torchrun's run id, else
    SLURM's job id, else the process), so concurrent jobs on one node never delete each other's cache."""
    if identity is None:
        st = os.stat(path)
        identity = {"path": os.path.abspath(path), "size": st.st_size, "mtime": st.st_mtime_ns}
    job = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("SLURM_JOB_ID") or str(os.getpid())
    ident = json.dumps({"source": identity, "config": config, "job": job}, sort_keys=True)
    return "lensing_cache_" + hashlib.sha1(ident.encode()).hexdigest()[:16]


class CacheBuildError(RuntimeError):
    """The local rank 0 failed to build the cache; raised on the ranks that waited for it."""


class SharedArrays:
    """Arrays named in `build()`'s returned dict, mapped from the node's shared cache."""

    def __init__(self, key: str, build, info: DistInfo, cache_dir: str | None = None):
        self.dir = os.path.join(cache_dir or default_cache_dir(), key)
        self.info = info
        done = os.path.join(self.dir, "done.json")
        failed = os.path.join(self.dir, "failed.txt")
        if info.is_local_main and not os.path.exists(done):
            os.makedirs(self.dir, exist_ok=True)
            if os.path.exists(failed):  # from an earlier attempt of this job (a requeued SLURM job keeps its id)
                os.remove(failed)
            try:
                arrays = build()
            except Exception as err:  # tell the waiting ranks, so that no rank hangs at the barrier
                with open(failed, "w") as f:
                    f.write(str(err))
                barrier(info)
                raise
            for name, value in arrays.items():
                tmp = os.path.join(self.dir, f".{name}.{os.getpid()}.npy")
                np.save(tmp, np.ascontiguousarray(value))
                os.replace(tmp, os.path.join(self.dir, f"{name}.npy"))
            with open(done + ".tmp", "w") as f:
                json.dump(sorted(arrays), f)
            os.replace(done + ".tmp", done)
            del arrays
        barrier(info)  # every node's builder has finished before anyone reads
        if os.path.exists(failed):
            with open(failed) as f:
                raise CacheBuildError(f"the node's data cache could not be built: {f.read()}")
        with open(done) as f:
            names = json.load(f)
        self.arrays = {name: np.load(os.path.join(self.dir, f"{name}.npy"), mmap_mode="r") for name in names}

    def __getitem__(self, name):
        return self.arrays[name]

    def get(self, name, default=None):
        return self.arrays.get(name, default)

    def remove(self) -> None:
        """Delete the node's copy once every rank is done with it."""
        self.arrays = {}
        barrier(self.info)
        if self.info.is_local_main:
            for name in os.listdir(self.dir) if os.path.isdir(self.dir) else []:
                os.remove(os.path.join(self.dir, name))
            if os.path.isdir(self.dir):
                os.rmdir(self.dir)
