"""runner_iter: iteration-based training, as LAVIS's ``RunnerIter`` has it.

Steps, not epochs, count: the run takes ``max_iters`` optimizer steps, in
"inner epochs" of ``iters_per_inner_epoch`` steps, each followed by validation
and a checkpoint. The data is read round after round (a data epoch is one pass
over the training set, reshuffled each pass) without ever stopping at a pass's
end, so an accumulation window may span two passes. Every rank runs the same
number of steps. This is the runner for streaming data.

A streaming training set (``ShardStream``: the ``webdataset_*`` builders) is
read through one DataLoader iterator for the whole run, pass after pass (a
data epoch is one pass over the shards). Every rank gets the same number of
batches per pass by construction (see ``datasets.wds_dataset``), so no
collective waits on a rank that ran out. The stream's position is the number
of micro-batches this rank trained (``epoch x batches per pass + batch``, as
the checkpoint records it); a resume re-creates the stream at that position
and refuses a changed stream layout (world size, workers, batch size, seed,
shards), which would change which samples follow. A stream among several
training sets mixes with them by ``sample_ratio`` (``MixedStream``: the same
loader, position and checks, with the mixture's epochs as passes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader

from lavislite.common import dist_utils
from lavislite.common.errors import CheckpointError
from lavislite.common.logger import logger
from lavislite.common.registry import registry
from lavislite.common.schema import ConfigError
from lavislite.datasets.datasets.mixed_stream import MixedStream
from lavislite.datasets.datasets.samplers import worker_init
from lavislite.datasets.datasets.wds_dataset import ShardStream
from lavislite.runners import checkpoints as ckpt
from lavislite.runners.runner_base import RunnerBase, RunnerConfig


@dataclass
class RunnerIterConfig(RunnerConfig):
    runner: str = "runner_iter"
    max_iters: int = 0  # optimizer steps in all
    iters_per_inner_epoch: int = 0  # validation and a checkpoint after each this many steps

    @staticmethod
    def check_section(data: dict[str, Any]) -> list[str]:
        problems = []
        for key in ("max_iters", "iters_per_inner_epoch"):
            if data[key] < 1:
                problems.append(f"{key}: runner_iter needs a positive {key}, got {data[key]}")
        return problems


@registry.register_runner("runner_iter")
class RunnerIter(RunnerBase):
    """Iteration-based training: ``max_iters`` steps in inner epochs of ``iters_per_inner_epoch``."""

    Config = RunnerIterConfig
    windows_restart_each_epoch = False  # an accumulation window may span two passes

    stream: ShardStream | MixedStream | None = None

    def setup_dataloader(self) -> None:
        streams = [
            (name, by_split[split])
            for name, by_split in self.datasets.items()
            for split in self.run.train_splits
            if split in by_split and isinstance(by_split[split], ShardStream)
        ]
        if streams:
            self.setup_stream(streams)
            return
        super().setup_dataloader()
        # A pass over the data ends wherever it ends: no batch is dropped, and the
        # lr schedule's "epoch" (linear_warmup_step_lr) is the inner epoch.
        self.batches_per_epoch = self.sampler.per_rank() // self.run.batch_size_train
        self.steps_per_epoch = self.run.iters_per_inner_epoch

    def setup_stream(self, streams: list[tuple[str, ShardStream]]) -> None:
        """The training loader over one shard stream, or a mixture with one: each worker yields whole micro-batches, endless.

        Raises:
            ConfigError: a stream beside other training sets without ``sample_ratio``, or with packing / length grouping.
        """
        for key in ("packing", "group_by_length"):
            if self.run[key]:
                raise ConfigError([f"run.{key}: not available for a streaming dataset ({streams[0][0]}); set run.{key}=false"])
        n_splits = sum(1 for by_split in self.datasets.values() for split in self.run.train_splits if split in by_split)
        self.mixture = self.mixture_sources() if n_splits > 1 else []
        if n_splits > 1 and not self.mixture:
            names = ", ".join(name for name, _ in streams)
            raise ConfigError(
                [f"datasets: the stream {names} is one of {n_splits} training sets; give every training set a sample_ratio to mix them (streams are not concatenated)"]
            )
        stream: ShardStream | MixedStream
        if self.mixture:
            stream = self.mixed_stream()
            name = "mixture"
        else:
            name, stream = streams[0]
        stream.configure(
            rank=dist_utils.get_rank(),
            world_size=dist_utils.get_world_size(),
            num_workers=self.run.num_workers,
            batch_size=self.run.batch_size_train,
            seed=self.run.seed,
        )
        self.stream = stream
        self.train_set = stream
        self.train_loader = DataLoader(
            stream,
            batch_size=None,  # the stream batches itself (a batch never spans two passes)
            num_workers=self.run.num_workers,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=worker_init,
            generator=torch.Generator().manual_seed(self.run.seed),
        )
        self.batches_per_epoch = stream.batches_per_pass
        self.steps_per_epoch = self.run.iters_per_inner_epoch
        if isinstance(stream, MixedStream):
            self.sampler = stream  # type: ignore[assignment]  # its .plan counts samples_seen (RunnerBase.samples_seen)
            logger.info(
                "mixing %s: %d draws per epoch (%s); %d batch(es) of %d per process and epoch",
                ", ".join(f"{n} {r:g}" for n, _, r in self.mixture),
                stream.plan.samples_per_epoch,
                ", ".join(f"{n} {q}" for (n, _, _), q in zip(self.mixture, stream.plan.quota)),
                stream.batches_per_pass,
                stream.batch_size,
            )
            return
        logger.info(
            "streaming %s: %d batch(es) of %d per process and pass (%d process(es) x %d stream(s) of %d samples)",
            name, stream.batches_per_pass, stream.batch_size, stream.world_size, stream.num_workers, stream.per_stream,
        )

    def mixed_stream(self) -> MixedStream:
        """Mixing by ``sample_ratio`` with a stream among the training sets (``MixedStream``).

        A source is one dataset (its ``run.train_splits`` concatenated when
        map-style); an epoch is ``run.samples_per_epoch`` draws (default: the
        map-style sets' sizes plus the streams' samples per pass).
        """
        sources: list[tuple[str, Any]] = []
        for name, _, _ in self.mixture:
            splits = [self.datasets[name][s] for s in self.run.train_splits if s in self.datasets[name]]
            if any(isinstance(ds, ShardStream) for ds in splits):
                sources.append((name, splits[0]))  # a stream builder builds one split
            else:
                sources.append((name, splits[0] if len(splits) == 1 else ConcatDataset(splits)))
        return MixedStream(sources, [r for _, _, r in self.mixture], samples_per_epoch=self.run.samples_per_epoch, seed=self.run.seed)

    def plan_steps(self) -> int:
        """``run.max_iters``; ``run.max_steps``, when set, wins here too (as it wins over ``max_epoch``)."""
        if self.run.max_steps is not None and self.run.max_steps != self.run.max_iters:
            logger.info("run.max_steps=%d sets the run's length (run.max_iters=%d is not used)", self.run.max_steps, self.run.max_iters)
            return int(self.run.max_steps)
        return int(self.run.max_iters)

    def plan_epochs(self) -> int:
        return 0  # steps, not epochs, count (see train)

    def train(self) -> dict[str, Any]:
        """Runs every inner epoch; returns a summary (last logged loss, steps, output folder)."""
        self.setup()
        start = time.time()
        last: dict[str, Any] = {}
        batches = self.endless_batches(self.start_epoch, self.start_batch)
        per_inner = self.run.iters_per_inner_epoch
        while not self.done:
            inner_epoch = self.global_step // per_inner
            until = min(self.max_steps, (inner_epoch + 1) * per_inner)
            last = self.train_steps(batches, until) or last
            if self.run.valid_splits and ((inner_epoch + 1) % self.run.val_freq == 0 or self.done):
                self.validate(inner_epoch)
            if (inner_epoch + 1) % self.run.save_freq_epochs == 0 or self.done:
                epoch, batch = self.position
                self.save_checkpoint(f"iter_{self.global_step}", next_epoch=epoch, next_batch=batch)
        self.finish()
        logger.info("training finished in %.1fs; outputs in %s", time.time() - start, self.output_dir)
        return {"output_dir": self.output_dir, "global_step": self.global_step, **last}

    def endless_batches(self, epoch: int, first_batch: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """``(data epoch, batch index, batch)`` pass after pass; ``position`` is where the next one starts."""
        if self.stream is not None:
            yield from self.stream_batches(epoch * self.batches_per_epoch + first_batch)
            return
        while True:
            self.sampler.set_epoch(epoch, start=first_batch * self.run.batch_size_train)
            for i, samples in enumerate(self.train_loader, start=first_batch):
                self.position = (epoch, i + 1) if i + 1 < self.batches_per_epoch else (epoch + 1, 0)
                yield epoch, i, samples
            epoch, first_batch = epoch + 1, 0

    def stream_batches(self, start: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """The stream's batches from this rank's ``start``-th on (one loader iterator for the whole run)."""
        assert self.stream is not None
        self.stream.configure(
            self.stream.rank, self.stream.world_size, self.run.num_workers, self.stream.batch_size, start_batches=start, seed=self.run.seed
        )
        per_pass = self.batches_per_epoch
        for k, samples in enumerate(self.train_loader, start=start):
            self.position = divmod(k + 1, per_pass)
            epoch, index = divmod(k, per_pass)
            yield epoch, index, samples

    def trainer_state(self, next_epoch: int, next_batch: int) -> dict[str, Any]:
        state = super().trainer_state(next_epoch, next_batch)
        if self.stream is not None:
            state["stream"] = self.stream.state()
        return state

    def resume(self, path: str) -> None:
        """As ``RunnerBase.resume``; a stream's checkpoint must match the stream's layout, which decides the samples to come.

        Raises:
            CheckpointError: naming what changed (old -> new).
        """
        if self.stream is not None:
            ckpt.check_resumable(path)
            old = ckpt.read_trainer_state(path).get("stream")
            now = self.stream.state()
            if old is None:
                raise CheckpointError(f"cannot resume {path} on a stream: it was written by a run that did not stream")
            changed = [f"{k} {old.get(k)} -> {v}" for k, v in now.items() if old.get(k) != v]
            if changed:
                raise CheckpointError(
                    f"cannot resume {path} exactly: the stream's layout changed ({', '.join(changed)}); which samples come next "
                    "depends on the world size, run.num_workers, run.batch_size_train, run.seed and the shards. Resume with the old values"
                )
        super().resume(path)

    def save_step_checkpoint(self, epoch: int, next_batch: int) -> None:
        epoch, batch = self.position
        self.save_checkpoint(f"step_{self.global_step}", next_epoch=epoch, next_batch=batch)
