"""BaseModel: construction from a validated config, named default configs per model type."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lavislite.common.schema import instantiate, validate


class BaseModel(nn.Module):
    """Base of every registered model.

    Subclasses set ``Config`` (their typed options, defaults included) and
    ``PRETRAINED_MODEL_CONFIG_DICT`` (``{model_type: yaml}``); ``__init__`` takes one
    ``Config`` instance, so defaults are stated once, in the dataclass.
    """

    Config: type
    PRETRAINED_MODEL_CONFIG_DICT: dict[str, str] = {}

    @classmethod
    def from_config(cls, cfg: DictConfig | dict[str, Any]) -> "BaseModel":
        """Builds the model from a ``model`` config section (validated against ``Config``)."""
        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        return cls(cls.config_from_dict(data))

    @classmethod
    def config_from_dict(cls, data: dict[str, Any]) -> Any:
        """Validates a plain dict into a ``Config`` instance (nested dataclasses included)."""
        return instantiate(cls.Config, validate(cls.Config, data, "model"))

    @classmethod
    def from_pretrained(cls, model_type: str) -> "BaseModel":
        """Builds the model from the default config of ``model_type``."""
        from lavislite.common.config import load_model_config
        from lavislite.common.registry import registry

        return cls.from_config(load_model_config(registry.name_of("model", cls), model_type))

    @classmethod
    def processor_context(cls, cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
        """Facts about this model that processors need (tokenizer, image token count)."""
        return {}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
