"""Builders for webdataset shards: image-caption pairs (img2dataset's layout) and instruction conversations.

Both build one split, ``train``: a ``ShardStream`` that ``runner_iter`` reads
(streams have no length to run epochs over). See
``lavislite.datasets.datasets.wds_dataset`` for how shards are split over
ranks and workers, and how a resumed run continues the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from torch.utils.data import Dataset

from lavislite.common.logger import logger
from lavislite.common.registry import registry
from lavislite.datasets.builders.base_builder import BaseDatasetBuilder, BuilderConfig
from lavislite.datasets.datasets.wds_dataset import ShardStream, caption_sample, expand_shards, instruction_sample


@dataclass
class ShardsInfo:
    # A brace pattern (/data/cc3m/{00000..00331}.tar), a glob, a list of them; local or iopath paths.
    shards: str | list[str] = ""
    # Draw shards with replacement, samples_per_epoch samples per pass (webdataset's resampled + with_epoch).
    resampled: bool = False
    # Samples in one pass, all ranks together (default: every sample of the shards, counted at start-up).
    samples_per_epoch: int | None = None
    # Samples held in each stream's seeded shuffle buffer (0 or 1: the stored order).
    shuffle_buffer: int = 1000


@dataclass
class StreamBuilderConfig(BuilderConfig):
    build_info: ShardsInfo = field(default_factory=ShardsInfo)  # type: ignore[assignment]
    # A sample that cannot be decoded or parsed: leave it out (its record travels
    # in the batch under "bad_samples") or stop the run naming shard and key.
    on_bad_sample: Literal["skip", "error"] = "skip"

    @staticmethod
    def check_section(data: dict[str, Any]) -> list[str]:
        info = data["build_info"]
        problems = BuilderConfig.check_section(data)  # max_bad_fraction, sample_ratio
        if not info["shards"]:
            problems.append("build_info.shards: required (a brace pattern like /data/cc3m/{00000..00331}.tar, or a list)")
        if info["samples_per_epoch"] is not None and info["samples_per_epoch"] < 1:
            problems.append(f"build_info.samples_per_epoch: must be positive, got {info['samples_per_epoch']}")
        if info["shuffle_buffer"] < 0:
            problems.append(f"build_info.shuffle_buffer: must be 0 or more, got {info['shuffle_buffer']}")
        return problems


class ShardStreamBuilder(BaseDatasetBuilder):
    """Builds ``{"train": ShardStream}`` from ``build_info.shards``; subclasses say how a raw sample becomes a conversation."""

    Config = StreamBuilderConfig

    @classmethod
    def split_names(cls, section: dict[str, Any]) -> list[str]:
        return ["train"]

    def to_sample(self) -> Any:
        raise NotImplementedError

    def build_datasets(self, for_evaluation: bool = False) -> dict[str, Dataset]:
        """Finds the shards (every pattern must match), counts their samples when a pass needs it, builds the stream.

        Raises:
            MissingFileError: naming a pattern that matches nothing or its missing shards.
        """
        self.build_processors()
        info = self.config.build_info
        where = f"datasets.{self.name}.build_info.shards"
        shards = expand_shards(list(info.shards) if not isinstance(info.shards, str) else info.shards, where)
        key = "eval" if for_evaluation else "train"
        vis, text = self.vis_processors.get(key), self.text_processors.get(key)
        if vis is None or text is None:
            raise ValueError(f"datasets.{self.name}: vis_processor.{key} and text_processor.{key} are needed to read the shards")
        stream = ShardStream(
            self.name,
            shards,
            self.to_sample(),
            vis_processor=vis,
            text_processor=text,
            resampled=bool(info.resampled),
            samples_per_epoch=None if info.samples_per_epoch is None else int(info.samples_per_epoch),
            shuffle_buffer=int(info.shuffle_buffer),
            on_bad_sample=str(self.config.on_bad_sample),  # type: ignore[arg-type]
        )
        logger.info(
            "dataset %s/train: %d shard(s), %d samples per pass%s",
            self.name, len(shards), stream.samples_per_epoch, " (resampled)" if stream.resampled else "",
        )
        return {"train": stream}


@dataclass
class CaptionStreamConfig(StreamBuilderConfig):
    # The user turn of every sample; "<image>" marks where the image goes (in front if absent).
    prompt: str = "Describe the image briefly."
    # The caption: this field of KEY.json when present, else KEY.txt.
    caption_field: str = "caption"


@registry.register_builder("webdataset_caption")
class WebdatasetCaptionBuilder(ShardStreamBuilder):
    """Image-caption shards in img2dataset's layout: ``KEY.jpg|png|webp`` + ``KEY.txt`` and/or ``KEY.json``."""

    Config = CaptionStreamConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/webdataset_caption/defaults.yaml"}

    def to_sample(self) -> Any:
        from lavislite.datasets.builders.task_builders import with_image

        return partial(caption_sample, prompt=with_image(str(self.config.prompt)), caption_field=str(self.config.caption_field))


@dataclass
class InstructionStreamConfig(StreamBuilderConfig):
    # KEY.json's record format; auto: LLaVA when it has "conversations", else MiniGPT4Qwen.
    format: Literal["auto", "llava", "minigpt4"] = "auto"


@registry.register_builder("webdataset_instruction")
class WebdatasetInstructionBuilder(ShardStreamBuilder):
    """Instruction shards: ``KEY.jpg`` (or ``KEY.0.jpg``, ``KEY.1.jpg``, ...) + ``KEY.json`` (a LLaVA or MiniGPT4Qwen record)."""

    Config = InstructionStreamConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/webdataset_instruction/defaults.yaml"}

    def to_sample(self) -> Any:
        return partial(instruction_sample, fmt=str(self.config.format))
