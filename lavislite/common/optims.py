"""Learning-rate schedulers, stepped once per optimizer step.

Each scheduler scales every param group's own base learning rate (``group["initial_lr"]``),
so per-part learning rates keep their ratios through warm-up and decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lavislite.common.registry import registry


@dataclass
class SchedulerArgs:
    """What every scheduler receives; filled from the ``run`` section."""

    max_steps: int
    init_lr: float
    min_lr: float = 0.0
    warmup_lr: float = 0.0
    warmup_steps: int = 0
    steps_per_epoch: int = 1  # for per-epoch schedules (linear_warmup_step_lr)
    decay_rate: float = 0.9  # linear_warmup_step_lr: lr x decay_rate per epoch


class BaseLRScheduler:
    """Sets each param group's lr to ``group["initial_lr"] * factor(step)``."""

    def __init__(self, optimizer: torch.optim.Optimizer, args: SchedulerArgs) -> None:
        self.optimizer = optimizer
        self.args = args
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.step_count = 0
        self.step(0)

    def lr_at(self, step: int, base_lr: float) -> float:
        raise NotImplementedError

    def step(self, step: int | None = None) -> None:
        """Sets the learning rates for optimizer step ``step`` (the next one when None)."""
        self.step_count = self.step_count + 1 if step is None else step
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step_count, group["initial_lr"])

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step(int(state["step_count"]))

    def _scale(self, value: float, base_lr: float) -> float:
        # warmup_lr / min_lr are stated for the run's init_lr; a part with its own
        # base lr gets them scaled by the same ratio.
        return value * (base_lr / self.args.init_lr) if self.args.init_lr > 0 else value

    def _warmup(self, step: int, base_lr: float) -> float | None:
        if step < self.args.warmup_steps:
            start = self._scale(self.args.warmup_lr, base_lr)
            return start + (base_lr - start) * step / max(1, self.args.warmup_steps)
        return None


@registry.register_lr_scheduler("linear_warmup_cosine_lr")
class LinearWarmupCosineLRScheduler(BaseLRScheduler):
    """Linear warm-up from ``warmup_lr`` over ``warmup_steps``, then cosine decay to ``min_lr``."""

    def lr_at(self, step: int, base_lr: float) -> float:
        warm = self._warmup(step, base_lr)
        if warm is not None:
            return warm
        min_lr = self._scale(self.args.min_lr, base_lr)
        span = max(1, self.args.max_steps - self.args.warmup_steps)
        progress = min(1.0, (step - self.args.warmup_steps) / span)
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@registry.register_lr_scheduler("constant_lr")
class ConstantLRScheduler(BaseLRScheduler):
    """Linear warm-up (if any), then the base learning rate."""

    def lr_at(self, step: int, base_lr: float) -> float:
        warm = self._warmup(step, base_lr)
        return base_lr if warm is None else warm


@registry.register_lr_scheduler("linear_warmup_step_lr")
class LinearWarmupStepLRScheduler(BaseLRScheduler):
    """LAVIS's step schedule, counted in optimizer steps.

    Linear warm-up from ``warmup_lr`` over ``warmup_steps``, then
    ``max(min_lr, base_lr * decay_rate ** epoch)`` with
    ``epoch = step // steps_per_epoch`` (inner epochs under ``runner_iter``).
    """

    def lr_at(self, step: int, base_lr: float) -> float:
        warm = self._warmup(step, base_lr)
        if warm is not None:
            return warm
        epoch = step // max(1, self.args.steps_per_epoch)
        return max(self._scale(self.args.min_lr, base_lr), base_lr * self.args.decay_rate**epoch)
