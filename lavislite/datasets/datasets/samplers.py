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
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch (stable across processes and Python versions)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seeds Python's, NumPy's and torch's CPU generators for a block, then restores them in the main process.

    Restoring keeps the caller's streams intact, which matters when the block
    runs in the main process (``num_workers=0``), where torch's generator also
    drives dropout. A DataLoader worker's generators serve its samples only,
    each seeded here anew, so a worker skips the save and restore (NumPy's
    state alone is a 2.5 KB copy each way, about a tenth of a demo sample's
    processing).
    """
    in_worker = get_worker_info() is not None
    states = None if in_worker else (random.getstate(), np.random.get_state(), torch.get_rng_state())
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if states is not None:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


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


class LengthGroupedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of similar length, text-only and image samples apart; yields this rank's batches of ``(index, seed)``.

    Padding each batch to its longest sample wastes the compute of every pad
    token; batches of similar length waste little. Per epoch (LLaVA's
    ``group_by_modality_length``, made exactly resumable):

    1. a permutation of the dataset from ``(seed, epoch)``, split by modality
       (a sample with images or without), each part keeping that order;
    2. each part cut into megabatches of ``num_replicas x batch_size x
       megabatch_mult`` samples, each megabatch sorted by length (longest
       first; ties keep the permutation's order) and cut into batches;
    3. consecutive batches grouped into steps of ``num_replicas`` (the ranks
       of one step get batches of the same megabatch, so of similar length,
       and none waits long for another); a part's last incomplete step is
       dropped (fewer than ``num_replicas x batch_size`` samples, different
       ones each epoch);
    4. the steps of both parts shuffled together (seeded); rank ``r`` takes
       the ``r``-th batch of every step.

    So every batch is all-text or all-image, every rank gets the same number
    of batches (``batches_per_rank()``, the same in every epoch), no sample
    comes twice in an epoch on any rank, and the order depends only on the
    lengths, ``seed`` and ``epoch``: ``set_epoch(epoch, start)`` skips the
    first batches of an epoch (a mid-epoch resume) and yields exactly the rest
    of the uninterrupted order.

    Args:
        lengths: ``(tokens, images)`` of every sample (``InstructionDataset.token_lengths()``);
            tokens include the image placeholder tokens.
        batch_size: samples per batch (per rank).
        num_replicas: the world size.
        rank: this process's rank.
        seed: the run seed.
        megabatch_mult: megabatches hold this many steps: larger groups
            lengths more tightly, smaller keeps batches more random.
    """

    def __init__(
        self,
        lengths: list[tuple[int, int]],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        megabatch_mult: int = 8,
    ) -> None:
        if batch_size < 1 or num_replicas < 1 or megabatch_mult < 1:
            raise ValueError(f"batch_size, num_replicas and megabatch_mult must be positive, got {batch_size}, {num_replicas}, {megabatch_mult}")
        self.tokens = [int(t) for t, _ in lengths]
        self.has_images = [int(n) > 0 for _, n in lengths]
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.megabatch_mult = megabatch_mult
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Selects the epoch, and how many of this rank's samples of it to skip (mid-epoch resume).

        ``start`` counts samples, as ``EpochShardSampler.set_epoch`` does, so
        the runner drives both alike; it must be a whole number of batches.
        """
        if start % self.batch_size:
            raise ValueError(f"start {start} is not a whole number of batches of {self.batch_size}")
        self.epoch = epoch
        self.start_batch = start // self.batch_size

    def batches_per_rank(self) -> int:
        """Batches each rank gets in a whole epoch (the same in every epoch)."""
        step = self.num_replicas * self.batch_size
        images = sum(self.has_images)
        return images // step + (len(self.tokens) - images) // step

    def per_rank(self) -> int:
        """Samples each rank gets in a whole epoch (``EpochShardSampler``'s interface)."""
        return self.batches_per_rank() * self.batch_size

    def __len__(self) -> int:
        return max(0, self.batches_per_rank() - self.start_batch)

    def steps(self) -> list[list[list[int]]]:
        """The epoch's steps in order, each ``num_replicas`` batches of dataset indices (rank ``r``'s is the ``r``-th)."""
        g = torch.Generator()
        # Its own stream, not EpochShardSampler's (seed + epoch): the two orders are unrelated.
        g.manual_seed(sample_seed(self.seed, self.epoch, -1))
        order = torch.randperm(len(self.tokens), generator=g).tolist()
        per_step = self.num_replicas * self.batch_size
        mega = per_step * self.megabatch_mult
        steps: list[list[list[int]]] = []
        for images in (False, True):
            part = [i for i in order if self.has_images[i] == images]
            part = part[: len(part) - len(part) % per_step]  # whole steps only
            for m in range(0, len(part), mega):
                # sorted() is stable: equal lengths keep the permutation's order.
                group = sorted(part[m : m + mega], key=lambda i: -self.tokens[i])
                batches = [group[b : b + self.batch_size] for b in range(0, len(group), self.batch_size)]
                steps.extend(batches[s : s + self.num_replicas] for s in range(0, len(batches), self.num_replicas))
        shuffle = torch.randperm(len(steps), generator=g).tolist()
        return [steps[i] for i in shuffle]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in self.steps()[self.start_batch :]:
            yield [(index, sample_seed(self.seed, self.epoch, index)) for index in step[self.rank]]


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

    def __getitem__(self, key: tuple[int, int] | tuple[int, int, int]) -> Any:
        # A packing sampler's key also names the sample's row in its micro-batch,
        # which the packed collater needs; it travels in the item.
        index, seed = key[0], key[1]
        with seeded(seed):
            item = self.dataset[index]
        if len(key) == 3:
            item = {**item, "row": key[2]}
        return item


def first_fit_decreasing(lengths: Sequence[int], indices: Sequence[int], max_len: int) -> list[list[int]]:
    """Packs ``indices`` (with ``lengths[i]`` tokens each) into bins of at most ``max_len`` tokens.

    Longest first (ties in the given order), each into the first bin with room,
    else a new bin; bins come back in the order they were opened.
    """
    order = sorted(indices, key=lambda i: -lengths[i])  # stable: ties keep the permutation's order
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_len - n)
    return bins


class PackingBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Micro-batches of packed rows: yields ``[(index, seed, row), ...]`` per micro-batch.

    Per epoch: a permutation from ``seed + epoch`` (as ``EpochShardSampler``),
    cut into look-ahead windows of ``window`` samples, each packed by
    first-fit-decreasing into bins (rows) of at most ``max_len`` tokens. Bins
    of similar length form the micro-batches (``rows_per_batch`` rows each, so
    little of a row is padding to the batch's longest row), ``num_replicas``
    consecutive micro-batches form one global batch, and the global batches
    are shuffled. Every rank gets the same number of micro-batches in every
    epoch: that number is fixed by epoch 0's plan; an epoch with fewer bins
    splits its fullest bins (by sample count) until it has enough, one with
    more leaves its shortest bins out (about one global batch's worth, as
    ``drop_last``; which samples those are changes with the epoch's order). So each sample is seen at most once per epoch, and all but
    those left-out bins' samples exactly once. Everything depends only on
    (seed, epoch), so a resumed rank rebuilds the same plan.

    The position unit is the row (as ``EpochShardSampler`` counts items):
    ``per_rank()`` rows per rank per epoch and ``set_epoch(epoch, start)``
    with ``start`` rows (a whole number of micro-batches) to skip.

    Args:
        lengths: each sample's token count (image tokens included).
        max_len: a row's largest token count.
        rows_per_batch: rows in one micro-batch (``run.batch_size_train``).
        num_replicas: the world size.
        rank: this process's rank.
        seed: the run seed.
        window: samples per first-fit-decreasing look-ahead window.

    Raises:
        ValueError: a sample longer than ``max_len`` (named by index), or a
            non-positive ``max_len`` / ``rows_per_batch`` / ``window``.
    """

    def __init__(
        self, lengths: Sequence[int], max_len: int, rows_per_batch: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, window: int = 1000
    ) -> None:
        for name, value in (("max_len", max_len), ("rows_per_batch", rows_per_batch), ("window", window)):
            if value < 1:
                raise ValueError(f"PackingBatchSampler: {name} must be at least 1, got {value}")
        too_long = [(i, n) for i, n in enumerate(lengths) if n > max_len]
        if too_long:
            shown = ", ".join(f"sample {i} ({n} tokens)" for i, n in too_long[:5])
            raise ValueError(f"{len(too_long)} sample(s) longer than the packing length {max_len}: {shown}; raise run.packing_max_len")
        self.lengths = [int(n) for n in lengths]
        self.max_len = max_len
        self.rows_per_batch = rows_per_batch
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.window = window
        self.epoch = 0
        self.start = 0
        self._plans: dict[int, list[list[list[int]]]] = {}
        self.batches_per_rank = len(self.bins(0)) // (rows_per_batch * num_replicas)

    def bins(self, epoch: int) -> list[list[int]]:
        """The epoch's first-fit-decreasing bins (sample indices), window by window."""
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        bins: list[list[int]] = []
        for w in range(0, len(order), self.window):
            bins.extend(first_fit_decreasing(self.lengths, order[w : w + self.window], self.max_len))
        return bins

    def plan(self, epoch: int) -> list[list[list[int]]]:
        """Every rank's micro-batches of the epoch: ``plan[rank][batch][row]`` is a list of sample indices."""
        if epoch in self._plans:
            return self._plans[epoch]
        bins = self.bins(epoch)
        per_global = self.rows_per_batch * self.num_replicas
        target = self.batches_per_rank * per_global
        while len(bins) < target:
            # Split the bin with the most samples (the first such): both halves still fit.
            b = max(range(len(bins)), key=lambda k: (len(bins[k]), -k))
            if len(bins[b]) < 2:  # cannot happen: target <= epoch 0's bin count <= the sample count
                raise RuntimeError(f"epoch {epoch}: {len(bins)} single-sample bins cannot make {target} rows")
            bins[b : b + 1] = [bins[b][0::2], bins[b][1::2]]
        # Similar-length rows share a micro-batch (padding to the longest row is small);
        # the global batches are then shuffled so the epoch does not run longest-first.
        bins = sorted(bins, key=lambda rows: -sum(self.lengths[i] for i in rows))[:target]
        g = torch.Generator()
        g.manual_seed(self.seed + epoch + (1 << 31))
        global_order = torch.randperm(self.batches_per_rank, generator=g).tolist()
        plan: list[list[list[int]]] = [[] for _ in range(self.num_replicas)]
        for gb in global_order:
            chunk = bins[gb * per_global : (gb + 1) * per_global]
            for r in range(self.num_replicas):
                plan[r].append(chunk[r * self.rows_per_batch : (r + 1) * self.rows_per_batch])
        self._plans = {epoch: plan}  # one epoch at a time: the set-up's epoch 0 plan is not kept forever
        return plan

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Selects the epoch, and how many of this rank's rows of it to skip (a whole number of micro-batches)."""
        if start % self.rows_per_batch:
            raise ValueError(f"PackingBatchSampler: start {start} is not a whole number of micro-batches of {self.rows_per_batch} rows")
        self.epoch = epoch
        self.start = start

    def per_rank(self) -> int:
        """Rows each rank gets in a whole epoch."""
        return self.batches_per_rank * self.rows_per_batch

    def __len__(self) -> int:
        return max(0, self.batches_per_rank - self.start // self.rows_per_batch)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for batch in self.plan(self.epoch)[self.rank][self.start // self.rows_per_batch :]:
            yield [(i, sample_seed(self.seed, self.epoch, i), row) for row, samples in enumerate(batch) for i in samples]


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one intra-op thread per worker.

    Workers decode images and tokenize; torch's default of one thread per core
    in every worker (and in the main process) oversubscribes the cores as soon
    as anything else runs on the machine. ``LAVISLITE_THREADS=torch`` keeps
    torch's default (for comparison).
    """
    if os.environ.get("LAVISLITE_THREADS") != "torch":
        torch.set_num_threads(1)


def _mix_seed(seed: int, epoch: int, what: str) -> int:
    """A 63-bit seed for one of the mixture's random streams (``what`` names it)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:mix:{what}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Splits ``total`` into integer shares proportional to ``weights`` (largest remainder; ties to the earlier source)."""
    weight_sum = float(sum(weights))
    exact = [total * w / weight_sum for w in weights]
    counts = [int(math.floor(x)) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda s: (-(exact[s] - counts[s]), s))
    for s in by_remainder[: total - sum(counts)]:
        counts[s] += 1
    return counts


class MixturePlan:
    """The seeded draw sequence of a weighted mixture of sources, epoch by epoch (no data touched).

    This is the interface between mixing and the sources, whatever they are
    (a map-style JSON set, a stream of shards):

    - An epoch of the mixture is ``samples_per_epoch`` draws. Source ``s`` gets
      exactly ``quota[s] = apportion(samples_per_epoch, ratios)[s]`` of them
      (largest remainder), in an order that is a seeded permutation of that
      multiset: ``sources(epoch)`` is the epoch's sequence of source ids, a
      function of ``(seed, epoch, ratios, samples_per_epoch)`` only.
    - Each draw also has its per-source position: the ``j``-th draw of source
      ``s`` in an epoch has ordinal ``j`` (``ordinals(epoch)``), and
      ``consumed(epoch, k)`` counts, per source, the draws before global draw
      ``k`` of ``epoch`` since the start of training. A stream source needs
      nothing else: it yields its next sample for each of its draws, and
      resumes by fast-forwarding to its ``consumed`` count. A map-style source
      turns ``(epoch, j)`` into a dataset index (``source_indices``).
    - Nothing depends on the world size: ranks take strided shards of the one
      global sequence (``MixtureSampler``), so 1 and N processes train on the
      same mixture.

    Args:
        sizes: each source's sample count (None for a source without a length,
            e.g. a stream; it then has no ``source_indices``).
        ratios: each source's weight (``sample_ratio``; positive, any scale).
        samples_per_epoch: draws per epoch.
        seed: the run seed.
    """

    def __init__(self, sizes: Sequence[int | None], ratios: Sequence[float], samples_per_epoch: int, seed: int = 0) -> None:
        if len(sizes) != len(ratios) or not sizes:
            raise ValueError(f"MixturePlan: {len(sizes)} source size(s) for {len(ratios)} ratio(s)")
        if any(not (r > 0 and math.isfinite(r)) for r in ratios):
            raise ValueError(f"MixturePlan: every ratio must be a positive number, got {list(ratios)}")
        if samples_per_epoch < 1:
            raise ValueError(f"MixturePlan: samples_per_epoch must be at least 1, got {samples_per_epoch}")
        empty = [s for s, n in enumerate(sizes) if n is not None and n < 1]
        if empty:
            raise ValueError(f"MixturePlan: source(s) {empty} have no samples")
        self.sizes = list(sizes)
        self.ratios = [float(r) for r in ratios]
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = seed
        self.quota = apportion(self.samples_per_epoch, self.ratios)
        self._cache: dict[str, tuple[int, torch.Tensor]] = {}
        self._heads: dict[tuple[int, int], list[int]] = {}

    def _cached(self, what: str, epoch: int, make: Callable[[int], torch.Tensor]) -> torch.Tensor:
        # One epoch at a time (the loop's current one): plans of long epochs are not kept.
        hit = self._cache.get(what)
        if hit is None or hit[0] != epoch:
            hit = (epoch, make(epoch))
            self._cache[what] = hit
        return hit[1]

    def sources(self, epoch: int) -> torch.Tensor:
        """The epoch's source id of every draw (``int64``, ``samples_per_epoch`` long)."""

        def make(e: int) -> torch.Tensor:
            ids = torch.repeat_interleave(torch.arange(len(self.quota)), torch.tensor(self.quota))
            g = torch.Generator().manual_seed(_mix_seed(self.seed, e, "sources"))
            return ids[torch.randperm(len(ids), generator=g)]

        return self._cached("sources", epoch, make)

    def ordinals(self, epoch: int) -> torch.Tensor:
        """For every draw of the epoch, how many draws of its source came before it in the epoch."""

        def make(e: int) -> torch.Tensor:
            src = self.sources(e)
            out = torch.empty_like(src)
            for s in range(len(self.quota)):
                where = src == s
                out[where] = torch.arange(int(where.sum()))
            return out

        return self._cached("ordinals", epoch, make)

    def source_indices(self, source: int, epoch: int) -> torch.Tensor:
        """A map-style source's dataset index for each of its ``quota[source]`` draws of the epoch.

        Without replacement (a seeded permutation's first ``quota`` indices)
        when the quota fits in the source; with replacement (seeded uniform
        draws) when the quota exceeds the source's size.
        """
        size = self.sizes[source]
        if size is None:
            raise TypeError(f"MixturePlan: source {source} has no length (a stream); it yields its own samples")
        g = torch.Generator().manual_seed(_mix_seed(self.seed, epoch, f"source{source}"))
        quota = self.quota[source]
        if quota <= size:
            return torch.randperm(size, generator=g)[:quota]
        return torch.randint(size, (quota,), generator=g)

    def counts(self, epoch: int, begin: int, end: int) -> list[int]:
        """Per source: its draws among global draws ``[begin, end)`` of ``epoch``."""
        if begin <= 0 and end >= self.samples_per_epoch:
            return list(self.quota)
        src = self.sources(epoch)[max(0, begin) : end]
        return torch.bincount(src, minlength=len(self.quota)).tolist()

    def consumed(self, epoch: int, draw: int, per_epoch: int | None = None) -> list[int]:
        """Per source: draws taken from the start of training up to global draw ``draw`` of ``epoch``.

        Args:
            epoch / draw: the position (the draws of ``epoch`` before ``draw``).
            per_epoch: draws a whole earlier epoch contributed (default all;
                fewer where the loop drops an epoch's tail, e.g. a partial
                accumulation window: then its first ``per_epoch`` draws).
        """
        per_epoch = self.samples_per_epoch if per_epoch is None else per_epoch
        total = [0] * len(self.quota)
        for e in range(epoch):
            # An earlier epoch's head counts are kept (a few ints each): a log call late in a
            # long run does not redraw every earlier epoch's sequence.
            key = (e, per_epoch)
            if key not in self._heads:
                self._heads[key] = self.counts(e, 0, per_epoch)
            total = [a + b for a, b in zip(total, self._heads[key])]
        return [a + b for a, b in zip(total, self.counts(epoch, 0, draw))]


class MixtureSampler(Sampler[tuple[int, int]]):
    """This rank's shard of a ``MixturePlan`` over map-style sources; yields ``(index, seed)``.

    The sources are concatenated (``ConcatDataset`` in the given order), so a
    draw of source ``s`` at its index ``i`` is item ``offsets[s] + i``. Each
    epoch's global sequence (``MixturePlan``) is cut to a multiple of the
    world size and rank ``r`` takes every ``num_replicas``-th draw from ``r``,
    as ``EpochShardSampler`` does: after ``b`` items per rank the first
    ``b x num_replicas`` draws are consumed, on any rank count. Each item is
    processed under ``sample_seed(seed, epoch, draw)`` (by draw, not index: a
    sample drawn twice in an epoch gets two augmentations).

    Args:
        sizes: each source's length.
        ratios: each source's ``sample_ratio``.
        samples_per_epoch: global draws per epoch.
        num_replicas: the world size.
        rank: this process's rank.
        seed: the run seed.
    """

    def __init__(self, sizes: Sequence[int], ratios: Sequence[float], samples_per_epoch: int, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.plan = MixturePlan(sizes, ratios, samples_per_epoch, seed)
        self.offsets = [sum(sizes[:s]) for s in range(len(sizes))]
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Selects the epoch, and how many of this rank's items of it to skip (mid-epoch resume)."""
        self.epoch = epoch
        self.start = start

    def per_rank(self) -> int:
        """Items each rank gets in a whole epoch."""
        return self.plan.samples_per_epoch // self.num_replicas

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start)

    def global_indices(self, epoch: int) -> torch.Tensor:
        """Every draw's item index (in the concatenation) of the epoch, all ranks together, in order."""
        src, ordinal = self.plan.sources(epoch), self.plan.ordinals(epoch)
        out = torch.empty_like(src)
        for s, offset in enumerate(self.offsets):
            where = src == s
            out[where] = self.plan.source_indices(s, epoch)[ordinal[where]] + offset
        return out

    def __iter__(self) -> Iterator[tuple[int, int]]:
        total = self.per_rank() * self.num_replicas
        first = self.rank + self.start * self.num_replicas
        indices = self.global_indices(self.epoch)
        for draw in range(first, total, self.num_replicas):
            yield int(indices[draw]), sample_seed(self.seed, self.epoch, draw)
