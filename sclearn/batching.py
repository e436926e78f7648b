"""Training batches whose order is a pure function of (seed, epoch, batch index).

``EpochBatchSampler`` shuffles each epoch with its own seeded permutation, shards it evenly across processes,
and can start at any batch. The trainer resumes mid-epoch by starting the sampler where the checkpoint left
off, with no state to save beyond two integers. (Accelerate's prepared loaders prefetch one batch ahead, so
a loader-level RNG snapshot would be one batch out of step; this design has nothing to snapshot.)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Index batches of a per-epoch permutation; ``set_position(epoch, start)`` picks where to begin.

    Args:
        num_rows: Dataset size.
        batch_size: Rows per batch on each process.
        seed: Base seed; epoch ``e`` uses the permutation of seed ``seed * 1_000_003 + e``.
        drop_last: Drop the last short batch (SC batches need N >= 2; DDP needs equal sizes).
        rank, world_size: This process and the number of processes. Every process gets the same number
            of rows (the permutation's tail that does not divide evenly is dropped for that epoch).
    """

    def __init__(self, num_rows: int, batch_size: int, *, seed: int, drop_last: bool, rank: int = 0,
                 world_size: int = 1) -> None:
        if num_rows < world_size:
            raise ValueError(f"{num_rows} rows cannot be shared by {world_size} processes")
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def set_epoch(self, epoch: int) -> None:  # the DistributedSampler-style name
        self.set_position(epoch, 0)

    def __len__(self) -> int:
        rows = self.num_rows // self.world_size
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.num_rows, generator=g)
        rows = self.num_rows // self.world_size
        shard = perm[self.rank * rows : (self.rank + 1) * rows]
        for b in range(self.start, len(self)):
            yield shard[b * self.batch_size : (b + 1) * self.batch_size].tolist()


def resumable_loader(loader: DataLoader, *, seed: int, drop_last: bool, rank: int = 0,
                     world_size: int = 1) -> DataLoader:
    """The same dataset, collate and workers as ``loader``, batched by an :class:`EpochBatchSampler`."""
    sampler = EpochBatchSampler(len(loader.dataset), loader.batch_size, seed=seed, drop_last=drop_last,
                                rank=rank, world_size=world_size)
    return DataLoader(
        loader.dataset,
        batch_sampler=sampler,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
        worker_init_fn=loader.worker_init_fn,
        # Starting an iterator draws a base seed; from its own generator it leaves the global RNG alone.
        # Per rank, so that workers of different processes draw different augmentations.
        generator=torch.Generator().manual_seed(seed * 1_000_003 + 7919 * rank),
    )
