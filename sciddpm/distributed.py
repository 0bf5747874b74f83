"""Process groups under ``torchrun``: the one way training and ensemble sampling join one (NCCL
when the work runs on CUDA, gloo otherwise) and leave it, and the few collectives they use. Without
``WORLD_SIZE`` > 1 there is no group, the work runs as rank 0 of 1 and the collectives do nothing."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist


@contextlib.contextmanager
def process_group(on_cuda: bool) -> Iterator[tuple[int, int]]:
    """``(rank, world size)`` inside a process group joined for the block and left after it; a
    group the caller had already joined is used as it is and left to the caller."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ours = world > 1 and not dist.is_initialized()
    if ours:
        dist.init_process_group("nccl" if on_cuda else "gloo", timeout=datetime.timedelta(minutes=10))
    try:
        yield (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    finally:
        if ours:
            dist.destroy_process_group()


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK`` under torchrun, else 0): its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def broadcast(value: Any, world: int) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object passed between our own ranks only,
    never read from disk)."""
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: int) -> None:
    """Wait until every rank gets here."""
    if world > 1:
        dist.barrier()


def all_mean(value: float, world: int, device: torch.device) -> float:
    """The mean of ``value`` over the ranks."""
    if world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / world
