"""Runners (registered by name): the training loops, epoch-based and iteration-based."""

from lavislite.runners.runner_base import RunnerBase
from lavislite.runners.runner_iter import RunnerIter

__all__ = ["RunnerBase", "RunnerIter"]
