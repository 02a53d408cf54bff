"""Several processes, one run: what `torchrun` starts, through PyTorch's own distributed engine.

`torchrun --nproc-per-node N -m experiments.run STRATEGY ...` sets RANK / WORLD_SIZE / LOCAL_RANK;
`init_from_env` joins the process group (NCCL on GPUs, gloo on CPU) and gives each process its GPU.
The trainer wraps the strategy (its trainable modules; the frozen core is not a submodule, so it is
never wrapped or synchronized) in DistributedDataParallel. Rank 0 alone tracks (MLflow), locks the
run folder and writes checkpoints; the other ranks get a `SilentRun` and the folder rank 0 chose.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from s2s.errors import UserError


class DistributedError(UserError):
    """A multi-process launch that cannot work as given."""


def world_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str = "auto", timeout_s: float = 600.0) -> tuple[int, int]:
    """Join the process group torchrun describes (if any) -> (rank, world size); (0, 1) alone.

    `timeout_s` bounds how long a collective waits for a rank that died: the others then fail
    with an error instead of hanging."""
    world = world_from_env()
    if world <= 1:
        return 0, 1
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible: "
                                   "start at most one process per GPU (torchrun --nproc-per-node)")
        torch.cuda.set_device(local)  # "cuda" now means this process's GPU, for the backbones too
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def broadcast(value, src: int = 0):
    """`value` of rank `src` on every rank (a picklable object); itself when alone."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class SilentRun:
    """What a rank other than 0 holds instead of an MLflow run: it takes every call and records nothing."""

    def __init__(self, run_id: str, uri: str):
        self.run_id, self.uri = run_id, uri

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False
