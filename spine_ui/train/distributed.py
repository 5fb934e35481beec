"""Data-parallel classifier training with torch DistributedDataParallel, launched by ``torchrun``.

``python -m spine_ui train ... --nproc N`` re-launches itself through ``torch.distributed.run`` (torchrun)
with N processes per node; every process runs the same training, one rank each:

* the process group uses **nccl** on CUDA (one GPU per process, ``LOCAL_RANK``) and **gloo** on CPU;
* the training loader's sampler is a :class:`~torch.utils.data.DistributedSampler` over the fold's training
  indices (the study-grouped folds are computed identically on every rank), seeded by (seed, epoch); the
  global batch stays the configured one, each rank taking ``batch / world`` of it. A single process uses the
  same sampler with one replica, so a run on N ranks sees the same global batches as a run on one;
* gradients are averaged over ranks by DDP; BatchNorm layers become SyncBatchNorm on CUDA (statistics of the
  global batch, as on one GPU); on CPU torch has no SyncBatchNorm, so each rank normalises its own share;
* validation and out-of-fold predictions are computed on a shard per rank and gathered
  (``all_gather_object``) so every rank takes the same early-stopping decision;
* checkpoints, predictions and the later stages (select, report, export, the detector) are written by rank 0
  only; YOLO11 uses ultralytics' own multi-GPU training (``--det-device 0,1,...``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

#: torchrun options passed through by ``python -m spine_ui train`` (flag -> torchrun flag).
TORCHRUN_FLAGS = {"nproc": "--nproc-per-node", "nnodes": "--nnodes", "node_rank": "--node-rank",
                  "master_addr": "--master-addr", "master_port": "--master-port"}


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (``world == 1``: a plain single-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Dist:
    """The running process group's rank and size (a single process when none is initialised)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return Dist()
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                int(os.environ.get("LOCAL_RANK", "0")), torch.distributed.get_backend())


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def setup(device: str = "auto") -> tuple[Dist, torch.device]:
    """Join the torchrun job (nccl on CUDA, gloo on CPU); returns this rank and its device."""
    from spine_ui.train.classifier import resolve_device

    dev = resolve_device(device)
    if not launched_by_torchrun():
        return Dist(), dev
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return current(), dev


def teardown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def threads_per_rank() -> int:
    """CPU threads for this process: the cores shared by the ranks of this node."""
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def broadcast(obj: Any, dist: Dist) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for the splits and folds rank 0 prepared)."""
    if not dist.enabled:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch.distributed.barrier()


def per_rank_batch(batch: int, dist: Dist) -> int:
    """The share of the global batch one rank computes (the global batch must divide evenly)."""
    if batch % dist.world:
        raise ValueError(f"the batch size {batch} cannot be split evenly over {dist.world} processes; "
                         f"use a multiple of {dist.world}")
    return batch // dist.world


def train_loader(ds: Dataset, batch: int, workers: int, device: torch.device, seed: int,
                 dist: Dist) -> tuple[DataLoader, DistributedSampler]:
    """A shuffled loader over this rank's shard; call ``sampler.set_epoch(epoch)`` before each pass.

    A lone image in a rank's last batch is dropped (batch norm cannot train on one image); every rank
    holds the same number of images (DistributedSampler pads), so every rank runs the same steps."""
    sampler = DistributedSampler(ds, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=seed,
                                 drop_last=False)
    b = per_rank_batch(batch, dist)
    n = len(sampler)
    return DataLoader(ds, batch_size=b, sampler=sampler, num_workers=max(0, min(int(workers), 2)),
                      pin_memory=device.type == "cuda", drop_last=n > b and n % b == 1), sampler


def wrap(model: nn.Module, device: torch.device, dist: Dist) -> nn.Module:
    """DDP around ``model`` (SyncBatchNorm on CUDA); the model itself when not distributed."""
    if not dist.enabled:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard(n: int, dist: Dist) -> list[int]:
    """The item indices this rank scores (round robin)."""
    return list(range(dist.rank, n, dist.world))


def gather(local: list[tuple[int, Any]], n: int, dist: Dist) -> list[Any]:
    """Every rank's ``(index, value)`` pairs, gathered on every rank, in index order (each index once)."""
    if dist.enabled:
        parts: list[Any] = [None] * dist.world
        torch.distributed.all_gather_object(parts, local)
        local = [pair for part in parts for pair in part]
    values = dict(local)
    if sorted(values) != list(range(n)):
        raise RuntimeError(f"gathered {len(values)} of {n} predictions")
    return [values[i] for i in range(n)]


def torchrun_command(train_argv: Sequence[str], nproc: int, nnodes: str = "1", node_rank: int = 0,
                     master_addr: str = "127.0.0.1", master_port: int = 29500) -> list[str]:
    """``python -m torch.distributed.run ... -m spine_ui train ARGS`` (the ``--nproc`` family removed)."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={int(nproc)}",
            f"--nnodes={nnodes}", f"--node-rank={int(node_rank)}", f"--master-addr={master_addr}",
            f"--master-port={int(master_port)}", "-m", "spine_ui", "train", *train_argv]


def strip_launch_flags(argv: Sequence[str]) -> list[str]:
    """The ``train`` arguments without the launcher's own options (each ``--flag VALUE`` or ``--flag=VALUE``)."""
    flags = {"--" + k.replace("_", "-") for k in TORCHRUN_FLAGS}
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def launch(train_argv: Sequence[str], nproc: int, nnodes: str = "1", node_rank: int = 0,
           master_addr: str = "127.0.0.1", master_port: int = 29500) -> int:
    """Run the training under torchrun on this node; returns torchrun's exit code."""
    cmd = torchrun_command(strip_launch_flags(train_argv), nproc, nnodes, node_rank, master_addr, master_port)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS",
                                                           str(max(1, (os.cpu_count() or 1) // int(nproc))))}
    return subprocess.run(cmd, env=env).returncode


__all__ = ["Dist", "TORCHRUN_FLAGS", "barrier", "broadcast", "current", "gather", "launch", "launched_by_torchrun", "per_rank_batch",
           "setup", "shard", "strip_launch_flags", "teardown", "threads_per_rank", "torchrun_command", "train_loader", "unwrap", "wrap"]
