"""Training samplers whose randomness depends only on (seed, epoch, sample).

A resumed run must see the same samples with the same augmentations as the
run it continues. Two things usually break that: DataLoader workers seeded
from the main process's RNG (so their state depends on how much randomness was
consumed before they started), and worker RNG that carries from one batch to
the next (so a worker that starts in the middle of an epoch draws differently).
Here every sample is processed under its own seed, derived from the run seed,
the epoch and the sample's index, whichever worker, rank or resume point
handles it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch (stable across processes and Python versions)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seeds Python's, NumPy's and torch's CPU generators for a block, then restores them.

    Restoring keeps the caller's streams intact, which matters when the block
    runs in the main process (``num_workers=0``), where torch's generator also
    drives dropout.
    """
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class EpochShardSampler(Sampler[tuple[int, int]]):
    """A shuffled, rank-strided shard of ``range(size)`` per epoch; yields ``(index, seed)``.

    The order is ``DistributedSampler``'s with ``drop_last=True`` (a permutation
    from ``seed + epoch``, cut to a multiple of the world size, every
    ``num_replicas``-th item from ``rank``), so every rank gets the same number
    of samples and none twice. Each item carries the seed its sample is
    processed under (``sample_seed(seed, epoch, index)``).

    Args:
        size: the dataset length.
        num_replicas: the world size.
        rank: this process's rank.
        seed: the run seed.
        shuffle: permute per epoch (else the natural order).
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True) -> None:
        self.size = size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Selects the epoch, and how many of this rank's items of it to skip (mid-epoch resume)."""
        self.epoch = epoch
        self.start = start

    def per_rank(self) -> int:
        """Items each rank gets in a whole epoch."""
        return self.size // self.num_replicas

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank() * self.num_replicas
        shard = order[self.rank : total : self.num_replicas]
        for index in shard[self.start :]:
            yield index, sample_seed(self.seed, self.epoch, index)


class SeededSamples(Dataset):
    """Wraps a dataset so that ``wrapped[(index, seed)]`` is ``dataset[index]`` processed under ``seed``.

    Random augmentations (Python ``random``, NumPy, torch CPU) inside the
    dataset's ``__getitem__`` then depend only on the seed that the sampler
    attached to the index.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with seeded(seed):
            return self.dataset[index]


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one intra-op thread per worker.

    Workers decode images and tokenize; torch's default of one thread per core
    in every worker (and in the main process) oversubscribes the cores as soon
    as anything else runs on the machine. ``LAVISLITE_THREADS=torch`` keeps
    torch's default (for comparison).
    """
    if os.environ.get("LAVISLITE_THREADS") != "torch":
        torch.set_num_threads(1)
