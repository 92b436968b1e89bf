"""runner_iter: iteration-based training, as LAVIS's ``RunnerIter`` has it.

Steps, not epochs, count: the run takes ``max_iters`` optimizer steps, in
"inner epochs" of ``iters_per_inner_epoch`` steps, each followed by validation
and a checkpoint. The data is read round after round (a data epoch is one pass
over the training set, reshuffled each pass) without ever stopping at a pass's
end, so an accumulation window may span two passes. Every rank runs the same
number of steps. This is the runner for streaming data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lavislite.common.logger import logger
from lavislite.common.registry import registry
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

    def setup_dataloader(self) -> None:
        super().setup_dataloader()
        # A pass over the data ends wherever it ends: no batch is dropped, and the
        # lr schedule's "epoch" (linear_warmup_step_lr) is the inner epoch.
        self.batches_per_epoch = self.sampler.per_rank() // self.run.batch_size_train
        self.steps_per_epoch = self.run.iters_per_inner_epoch

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
        while True:
            self.sampler.set_epoch(epoch, start=first_batch * self.run.batch_size_train)
            for i, samples in enumerate(self.train_loader, start=first_batch):
                self.position = (epoch, i + 1) if i + 1 < self.batches_per_epoch else (epoch + 1, 0)
                yield epoch, i, samples
            epoch, first_batch = epoch + 1, 0

    def save_step_checkpoint(self, epoch: int, next_batch: int) -> None:
        epoch, batch = self.position
        self.save_checkpoint(f"step_{self.global_step}", next_epoch=epoch, next_batch=batch)
