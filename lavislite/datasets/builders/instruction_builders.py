"""Builders for image-instruction data in the MiniGPT4Qwen and LLaVA formats."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from lavislite.common.registry import registry
from lavislite.datasets.builders.base_builder import BaseDatasetBuilder
from lavislite.datasets.datasets.instruction_dataset import InstructionDataset, parse_llava, parse_minigpt4


@registry.register_builder("minigpt4_instruction")
class MiniGPT4InstructionBuilder(BaseDatasetBuilder):
    """``[{"image", "instruction", "output"}]`` with ``<ImageHere>`` placeholders (MiniGPT4Qwen)."""

    train_dataset_cls = InstructionDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/minigpt4_instruction/defaults.yaml"}

    def make_dataset(self, dataset_cls: type, **kwargs: Any) -> Dataset:
        return dataset_cls(parse=parse_minigpt4, **kwargs)


@registry.register_builder("llava_instruction")
class LlavaInstructionBuilder(BaseDatasetBuilder):
    """``[{"id", "image", "conversations": [{"from", "value"}]}]`` with ``<image>`` placeholders (LLaVA)."""

    train_dataset_cls = InstructionDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/llava_instruction/defaults.yaml"}

    def make_dataset(self, dataset_cls: type, **kwargs: Any) -> Dataset:
        return dataset_cls(parse=parse_llava, **kwargs)
