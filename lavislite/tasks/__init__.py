"""Tasks (registered by name): ``setup_task(cfg)`` returns the task a run config names."""

from lavislite.common.config import Config
from lavislite.common.registry import registry
from lavislite.tasks.base_task import BaseTask, ImageTextPretrainTask
from lavislite.tasks.generation_tasks import CaptionTask, GenerationTask, VQATask
from lavislite.tasks.scorers import Scorer

__all__ = ["BaseTask", "CaptionTask", "GenerationTask", "ImageTextPretrainTask", "Scorer", "VQATask", "setup_task"]


def setup_task(cfg: Config) -> BaseTask:
    return registry.get_task_class(cfg.run_cfg.task).setup_task(cfg)
