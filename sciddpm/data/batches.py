"""Batches for training: a resumable, rank-sharded epoch order and the DataLoader around it.

The order of examples is a pure function of (seed, epoch), so a run resumed at step ``k`` sees
exactly the batches an uninterrupted run would have seen from step ``k`` on, and ``world`` DDP
ranks see disjoint shards of every epoch (the job of DistributedSampler + ``set_epoch``, plus
the resume offset DistributedSampler lacks).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochSampler(Sampler[int]):
    """Indices of one rank's shard, epoch after epoch, starting at a given global step.

    Each epoch is a fresh permutation of the dataset (seeded by ``seed`` and the epoch number),
    cut to a whole number of global batches (``batch_per_rank * world``) so every rank takes
    the same number of steps; rank ``r`` takes the ``r``-th slice of every global batch.
    """

    def __init__(self, size: int, batch_per_rank: int, *, seed: int, rank: int = 0, world: int = 1,
                 start_step: int = 0):
        global_batch = batch_per_rank * world
        if size < global_batch:
            raise ValueError(
                f"the training set has {size} examples, fewer than one global batch "
                f"({batch_per_rank} per rank x {world} ranks = {global_batch}); lower "
                "trainer.batch_size or add data"
            )
        self.size, self.batch_per_rank, self.seed = size, batch_per_rank, seed
        self.rank, self.world, self.start_step = rank, world, start_step
        self.steps_per_epoch = size // global_batch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[int]:
        epoch, first_batch = divmod(self.start_step, self.steps_per_epoch)
        while True:
            order = self.epoch_order(epoch)
            for batch in range(first_batch, self.steps_per_epoch):
                start = (batch * self.world + self.rank) * self.batch_per_rank
                yield from order[start:start + self.batch_per_rank].tolist()
            epoch, first_batch = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs this for progress estimates
        return self.steps_per_epoch * self.batch_per_rank


def training_batches(dataset: Dataset, batch_per_rank: int, *, seed: int, rank: int = 0,
                     world: int = 1, start_step: int = 0, num_workers: int = 0) -> Iterator[dict]:
    """An endless iterator of collated batches, continuing from ``start_step``."""
    sampler = EpochSampler(len(dataset), batch_per_rank, seed=seed, rank=rank, world=world,
                           start_step=start_step)
    loader = DataLoader(
        dataset,
        batch_size=batch_per_rank,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        # zarr 3 and fork deadlock; spawned workers open their stores themselves
        multiprocessing_context="spawn" if num_workers > 0 else None,
    )
    return iter(loader)
