"""Processor base class: a callable configured by one typed schema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lavislite.common.schema import validate


@dataclass
class EmptyConfig:
    """A processor without options."""


class BaseProcessor:
    """A processor is built from its ``Config`` dataclass and called on one sample.

    ``from_config`` merges the given options over the schema defaults (unknown
    keys and wrong types raise ``ConfigError`` with their path). ``context``
    carries facts owned by the model (its tokenizer, how many tokens an image
    takes) that a processor may need but a dataset config should not repeat.
    """

    Config: type = EmptyConfig

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg if cfg is not None else self.Config()

    @classmethod
    def from_config(cls, cfg: DictConfig | dict[str, Any] | None = None, context: dict[str, Any] | None = None) -> "BaseProcessor":
        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
        data.pop("name", None)
        return cls(cls.Config(**validate(cls.Config, data, f"processor {cls.__name__}")))

    def __call__(self, item: Any) -> Any:
        return item
