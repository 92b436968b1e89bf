"""Runners (registered by name): the training / evaluation loops."""

from lavislite.runners.runner_base import RunnerBase

__all__ = ["RunnerBase"]
