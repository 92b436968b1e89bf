"""Tasks: what to build from a config and what one train / valid step does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from lavislite.common.config import Config
from lavislite.common.logger import logger
from lavislite.common.registry import registry


@dataclass
class TaskConfig:
    """Task-owned keys of the ``run`` section (merged with the runner's schema)."""


class BaseTask:
    """Builds the model and datasets named in the config; defines the steps."""

    Config: type = TaskConfig

    def __init__(self, run_cfg: Any = None) -> None:
        self.run_cfg = run_cfg

    @classmethod
    def setup_task(cls, cfg: Config) -> "BaseTask":
        return cls(cfg.run_cfg)

    def build_model(self, cfg: Config) -> nn.Module:
        model_cls = registry.get_model_class(cfg.model_cfg.arch)
        model = model_cls.from_config(cfg.model_cfg)
        if hasattr(model, "log_parameter_table"):
            model.log_parameter_table()
        return model

    def build_datasets(self, cfg: Config, for_evaluation: bool = False) -> dict[str, dict[str, Dataset]]:
        """Builds every dataset of ``cfg.datasets_cfg``; returns ``{name: {split: Dataset}}``.

        Processors get the model's facts (tokenizer, image token count) as context,
        so dataset configs never repeat them. ``for_evaluation`` gives every
        split the eval processors (see ``BaseDatasetBuilder.build_datasets``).
        """
        model_cls = registry.get_model_class(cfg.model_cfg.arch)
        context = model_cls.processor_context(cfg.model_cfg)
        datasets: dict[str, dict[str, Dataset]] = {}
        for name, ds_cfg in cfg.datasets_cfg.items():
            builder = registry.get_builder_class(str(name))(ds_cfg, context=context)
            datasets[str(name)] = builder.build_datasets(for_evaluation=for_evaluation)
        if not datasets:
            logger.warning("the config names no datasets")
        return datasets

    def train_step(self, model: nn.Module, samples: dict[str, Any]) -> dict[str, Any]:
        """One forward pass; returns the model's output dict with ``loss``."""
        return model(samples)

    def valid_step(self, model: nn.Module, samples: dict[str, Any]) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no evaluation step")


@registry.register_task("image_text_pretrain")
class ImageTextPretrainTask(BaseTask):
    """Instruction tuning / image-text pretraining: minimise the model's LM loss."""
