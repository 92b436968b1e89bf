"""Dataset builders and the LAVIS-style ``load_dataset`` / ``dataset_zoo``."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from lavislite.common.config import load_dataset_config
from lavislite.common.registry import registry
from lavislite.datasets.builders.base_builder import BaseDatasetBuilder, BuilderConfig
from lavislite.datasets.builders.benchmark_builders import (
    BenchmarkBuilder,
    Flickr30kBuilder,
    GQABuilder,
    MMEBuilder,
    NocapsBuilder,
    OKVQABuilder,
    POPEBuilder,
    ScienceQABuilder,
    TextVQABuilder,
    VizWizBuilder,
)
from lavislite.datasets.builders.instruction_builders import LlavaInstructionBuilder, MiniGPT4InstructionBuilder
from lavislite.datasets.builders.stream_builders import WebdatasetCaptionBuilder, WebdatasetInstructionBuilder
from lavislite.datasets.builders.task_builders import CocoCaptionBuilder, VQAv2Builder

__all__ = [
    "BaseDatasetBuilder",
    "BenchmarkBuilder",
    "BuilderConfig",
    "CocoCaptionBuilder",
    "Flickr30kBuilder",
    "GQABuilder",
    "MMEBuilder",
    "NocapsBuilder",
    "OKVQABuilder",
    "POPEBuilder",
    "ScienceQABuilder",
    "TextVQABuilder",
    "VizWizBuilder",
    "LlavaInstructionBuilder",
    "MiniGPT4InstructionBuilder",
    "VQAv2Builder",
    "WebdatasetCaptionBuilder",
    "WebdatasetInstructionBuilder",
    "dataset_zoo",
    "load_dataset",
]


def load_dataset(name: str, overrides: dict[str, Any] | None = None, context: dict[str, Any] | None = None) -> dict[str, Dataset]:
    """Builds every split of a registered dataset from its default config.

    Args:
        name: a registered builder name (``minigpt4_instruction``).
        overrides: merged over the default config (e.g. ``{"build_info": {...}}``).
        context: model facts for processors, e.g. ``{"tokenizer": "builtin:qwen2.5", "num_image_tokens": 32}``.
    """
    cfg = load_dataset_config(name, overrides)
    builder = registry.get_builder_class(name)(cfg, context=context)
    return builder.build_datasets()


class DatasetZoo:
    """Lists registered builders and their dataset types."""

    def __str__(self) -> str:
        rows = ["=" * 60, f"{'Builder':<32}{'Types'}", "=" * 60]
        for name in registry.list_builders():
            rows.append(f"{name:<32}{', '.join(registry.get_builder_class(name).DATASET_CONFIG_DICT)}")
        return "\n".join(rows)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(registry.list_builders())

    def __len__(self) -> int:
        return len(registry.list_builders())


dataset_zoo = DatasetZoo()
