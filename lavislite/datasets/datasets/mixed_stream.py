"""Mixing shard streams with other training sets by ``sample_ratio``, under ``runner_iter``.

``MixedStream`` is an ``IterableDataset`` run in the DataLoader workers. It
walks ``MixturePlan``'s seeded global sequence of sources exactly as
``MixtureSampler`` does for map-style sets:

- a mixture epoch is ``samples_per_epoch`` global draws; rank ``r`` of ``N``
  takes draws ``r, r + N, ...`` (``per_rank = samples_per_epoch // N`` of
  them), cut into ``batches_per_epoch = per_rank // batch_size`` micro-batches
  (every rank the same number); batch ``b`` of rank ``r`` holds the global
  draws ``r + N (b B + i)``, ``i < B``. So the sequence of sources, and which
  global draw every sample is, does not depend on the rank count nor on the
  worker count;
- a draw of a map-style source is the plan's dataset index
  (``MixturePlan.source_indices``), processed under
  ``sample_seed(seed, epoch, draw)`` as ``MixtureSampler``'s items are;
- a draw of a stream source is the *next raw sample* of that source's stream
  for this (rank, logical worker): ``ShardStream.shuffled_pass`` pass after
  pass (each pass ``per_stream`` samples; a stream source's passes are its
  own, unrelated to the mixture's epochs), decoded and processed under the
  same per-draw seed.

Batch ``k`` of a rank (counted over the whole run) is built by logical worker
``k mod W``, so a stream's content depends on the ranks and workers (as it
does without mixing) but the mixture does not. A resume at batch ``K`` needs,
per (worker, stream source), how many of that source's draws fell in the
worker's batches before ``K``: counted from the plan (no data read), then the
stream is fast-forwarded by that many raw samples (read again, neither
decoded nor processed), as ``ShardStream`` fast-forwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from lavislite.common.errors import DataError
from lavislite.datasets.datasets.samplers import MixturePlan, sample_seed, seeded
from lavislite.datasets.datasets.wds_dataset import RawSample, ShardStream, logical_worker
from lavislite.processors.chat_processor import SampleError
from lavislite.processors.collate import BAD_SAMPLES_KEY


class MixedStream(IterableDataset):
    """An endless, exactly resumable stream of micro-batches mixing shard streams and map-style sets by ratio.

    Has ``ShardStream``'s runner interface (``configure``, ``batches_per_pass``,
    ``state``, ``collater``), so ``runner_iter`` drives both alike; a "pass" here
    is one mixture epoch.

    Args:
        sources: ``(dataset name, dataset)`` per training set, in the plan's
            order: a ``ShardStream`` or a map-style dataset (with ``collater``).
        ratios: each source's ``sample_ratio``.
        samples_per_epoch: global draws per mixture epoch (default: the
            map-style sets' lengths plus the streams' ``samples_per_epoch``).
        seed: the run seed.
    """

    def __init__(self, sources: Sequence[tuple[str, Dataset]], ratios: Sequence[float], samples_per_epoch: int | None = None, seed: int = 42) -> None:
        if not sources:
            raise DataError("MixedStream: no sources")
        self.names = [name for name, _ in sources]
        self.sources = [ds for _, ds in sources]
        self.is_stream = [isinstance(ds, ShardStream) for ds in self.sources]
        self.sizes: list[int | None] = [None if st else len(ds) for ds, st in zip(self.sources, self.is_stream)]  # type: ignore[arg-type]
        if samples_per_epoch is None:
            samples_per_epoch = sum(ds.samples_per_epoch if st else len(ds) for ds, st in zip(self.sources, self.is_stream))  # type: ignore[arg-type, attr-defined]
        self.ratios = [float(r) for r in ratios]
        self.seed = int(seed)
        self.plan = MixturePlan(self.sizes, self.ratios, int(samples_per_epoch), seed=self.seed)
        self.configure()

    # -- layout ----------------------------------------------------------------
    def configure(
        self, rank: int = 0, world_size: int = 1, num_workers: int = 0, batch_size: int = 1, start_batches: int = 0, seed: int | None = None
    ) -> None:
        """As ``ShardStream.configure``: where this rank's batches come from and how many it already trained.

        Raises:
            DataError: an epoch gives a rank fewer draws than one batch, or a
                stream source's per-(rank, worker) stream is empty.
        """
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_workers, self.batch_size = max(1, int(num_workers)), int(batch_size)
        self.start_batches = int(start_batches)
        if seed is not None and int(seed) != self.seed:
            self.seed = int(seed)
            self.plan = MixturePlan(self.sizes, self.ratios, self.plan.samples_per_epoch, seed=self.seed)
        self.per_rank = self.plan.samples_per_epoch // self.world_size
        self.batches_per_epoch = self.per_rank // self.batch_size
        if self.batches_per_epoch < 1:
            raise DataError(
                f"mixing {', '.join(self.names)}: {self.plan.samples_per_epoch} draws per epoch over {self.world_size} process(es) "
                f"give each {self.per_rank}, fewer than a batch of {self.batch_size}; raise run.samples_per_epoch"
            )
        for ds, st in zip(self.sources, self.is_stream):
            if st:
                # One raw sample per draw: the stream's own batching is not used (batch_size 1).
                ds.configure(self.rank, self.world_size, self.num_workers, 1, 0, seed=self.seed)  # type: ignore[attr-defined]

    @property
    def batches_per_pass(self) -> int:
        """Micro-batches each rank trains in one mixture epoch (every rank the same)."""
        return self.batches_per_epoch

    def __len__(self) -> int:
        """Draws trained in one mixture epoch, all ranks together."""
        return self.batches_per_epoch * self.batch_size * self.world_size

    def state(self) -> dict[str, Any]:
        """What a resume must find unchanged for the mixture to continue exactly (saved in the checkpoint)."""
        return {
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "sample_ratio": dict(zip(self.names, self.ratios)),
            "samples_per_epoch": self.plan.samples_per_epoch,
            "sources": {
                name: (ds.state() if st else {"size": len(ds)})  # type: ignore[arg-type, attr-defined]
                for name, ds, st in zip(self.names, self.sources, self.is_stream)
            },
        }

    # -- the plan, per rank --------------------------------------------------------
    def rank_draws(self, epoch: int) -> torch.Tensor:
        """This rank's global draw numbers of ``epoch``, ``(batches_per_epoch, batch_size)``: batch ``b`` is row ``b``."""
        draws = torch.arange(self.rank, self.batches_per_epoch * self.batch_size * self.world_size, self.world_size)
        return draws.view(self.batches_per_epoch, self.batch_size)

    def stream_positions(self, worker: int, start_batches: int) -> list[int]:
        """Per source: raw samples logical ``worker`` consumed in this rank's batches before ``start_batches`` (0 for map-style).

        Counted from the plan only: every epoch up to the position (each one
        ``samples_per_epoch`` source ids drawn again; a few ms per million draws).
        """
        counts = [0] * len(self.sources)
        if not any(self.is_stream):
            return counts
        per = self.batches_per_epoch
        last_epoch, rest = divmod(int(start_batches), per)
        for epoch in range(last_epoch + (1 if rest else 0)):
            stop = rest if epoch == last_epoch else per
            k = epoch * per + torch.arange(stop)
            mine = self.rank_draws(epoch)[:stop][k % self.num_workers == worker].reshape(-1)
            found = torch.bincount(self.plan.sources(epoch)[mine], minlength=len(self.sources)).tolist()
            counts = [c + (f if st else 0) for c, f, st in zip(counts, found, self.is_stream)]
        return counts

    def raw_samples(self, source: int, worker: int, skip: int) -> Iterator[RawSample]:
        """Stream source ``source``'s raw samples for this (rank, logical ``worker``), endless, from its ``skip``-th on."""
        stream: ShardStream = self.sources[source]  # type: ignore[assignment]
        index = self.rank * self.num_workers + worker
        epoch, skip = divmod(int(skip), stream.per_stream)
        while True:
            yield from itertools.islice(stream.shuffled_pass(epoch, index), skip, stream.per_stream)
            epoch, skip = epoch + 1, 0

    def worker_draws(self, worker: int, start_batches: int = 0) -> Iterator[tuple[int, list[tuple[int, int, int, Any]]]]:
        """Logical ``worker``'s batches from the rank's ``start_batches``-th on, unprocessed.

        Yields ``(k, [(source, epoch, draw, payload), ...])`` for every batch
        ``k`` with ``k mod W == worker``: ``payload`` is a dataset index
        (map-style) or a ``RawSample`` (stream).
        """
        positions = self.stream_positions(worker, start_batches)
        raws = {s: self.raw_samples(s, worker, positions[s]) for s, st in enumerate(self.is_stream) if st}
        k = int(start_batches)
        k += (worker - k) % self.num_workers
        indices_epoch, indices = -1, {}
        while True:
            epoch, b = divmod(k, self.batches_per_epoch)
            draws = self.rank_draws(epoch)[b].tolist()
            src, ordinal = self.plan.sources(epoch), self.plan.ordinals(epoch)
            if indices_epoch != epoch:  # each map-style source's index draws, once per epoch
                indices = {s: self.plan.source_indices(s, epoch) for s, st in enumerate(self.is_stream) if not st}
                indices_epoch = epoch
            batch = []
            for d in draws:
                s = int(src[d])
                if self.is_stream[s]:
                    payload: Any = next(raws[s])
                else:
                    payload = int(indices[s][int(ordinal[d])])
                batch.append((s, epoch, d, payload))
            yield k, batch
            k += self.num_workers

    # -- batches ---------------------------------------------------------------
    def make_batch(self, draws: list[tuple[int, int, int, Any]]) -> dict[str, Any]:
        """Processes one micro-batch's draws and collates them; bad stream samples go under ``"bad_samples"``.

        Raises:
            SampleError: ``on_bad_sample: error`` on a stream (naming shard and
                key), or every sample of the batch bad.
        """
        items, bad = [], []
        for s, epoch, draw, payload in draws:
            seed = sample_seed(self.seed, epoch, draw)
            if self.is_stream[s]:
                stream: ShardStream = self.sources[s]  # type: ignore[assignment]
                try:
                    items.append(stream.process(payload, seed))
                except SampleError as exc:
                    if stream.on_bad_sample == "error":
                        raise
                    bad.append({"dataset": self.names[s], "source": payload.shard, "key": payload.key, "reason": str(exc)})
            else:
                # A map-style set handles its own bad samples (it substitutes and records them).
                with seeded(seed):
                    item = self.sources[s][payload]
                bad.extend(item.pop(BAD_SAMPLES_KEY, None) or [])
                items.append(item)
        if not items:
            raise SampleError(f"mixing: every sample of a micro-batch is bad; the first: {bad[0]['reason']}")
        out = self.collater(items)
        if bad:
            out[BAD_SAMPLES_KEY] = bad
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        logical = logical_worker(type(self).__name__, self.num_workers, self.start_batches)
        for _, draws in self.worker_draws(logical, self.start_batches):
            yield self.make_batch(draws)

    def collater(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        """The first source's collater (every instruction dataset and stream shares the chat collater)."""
        first = self.sources[0]
        if not hasattr(first, "collater") and hasattr(first, "datasets"):  # a ConcatDataset of a set's splits
            first = first.datasets[0]  # type: ignore[attr-defined]
        return first.collater(batch)  # type: ignore[attr-defined]
