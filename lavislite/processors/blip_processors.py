"""BLIP / BLIP-2 image and text processors (LAVIS names and behaviour)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from lavislite.common.registry import registry
from lavislite.processors.base_processor import BaseProcessor
from lavislite.processors.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    INTERPOLATION,
    normalize,
    random_resized_crop_box,
    to_tensor,
)


@dataclass
class ImageTrainConfig:
    image_size: int = 224
    min_scale: float = 0.5
    max_scale: float = 1.0
    interpolation: str = "bicubic"
    hflip_prob: float = 0.5
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))


@dataclass
class ImageEvalConfig:
    image_size: int = 224
    interpolation: str = "bicubic"
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))


@registry.register_processor("blip2_image_train")
class Blip2ImageTrainProcessor(BaseProcessor):
    """Random resized crop (scale 0.5-1.0, bicubic), horizontal flip, CLIP normalisation."""

    Config = ImageTrainConfig

    def __init__(self, cfg: ImageTrainConfig | None = None, seed: int | None = None) -> None:
        super().__init__(cfg)
        # Python's ``random`` state is reseeded per DataLoader worker by torch,
        # so augmentations differ across workers and epochs.
        self.rng = random.Random(seed) if seed is not None else random

    def __call__(self, image: Image.Image) -> torch.Tensor:
        c = self.cfg
        image = image.convert("RGB")
        left, top, w, h = random_resized_crop_box(
            image.width, image.height, (c.min_scale, c.max_scale), (3 / 4, 4 / 3), self.rng  # type: ignore[arg-type]
        )
        image = image.resize((c.image_size, c.image_size), INTERPOLATION[c.interpolation], box=(left, top, left + w, top + h))
        if self.rng.random() < c.hflip_prob:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return normalize(to_tensor(image), tuple(c.mean), tuple(c.std))


@registry.register_processor("blip_image_eval")
class BlipImageEvalProcessor(BaseProcessor):
    """Resize to a square (bicubic) and CLIP normalisation."""

    Config = ImageEvalConfig

    def __call__(self, image: Image.Image) -> torch.Tensor:
        c = self.cfg
        image = image.convert("RGB").resize((c.image_size, c.image_size), INTERPOLATION[c.interpolation])
        return normalize(to_tensor(image), tuple(c.mean), tuple(c.std))


@dataclass
class CaptionConfig:
    prompt: str = ""
    max_words: int = 50


@dataclass
class QuestionConfig:
    max_words: int = 50


def _clean(text: str, max_words: int, punct: str, repl: str) -> str:
    text = re.sub(punct, repl, text.lower())
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words])


@registry.register_processor("blip_caption")
class BlipCaptionProcessor(BaseProcessor):
    """Lower-cases, strips punctuation, truncates to ``max_words`` and adds ``prompt``."""

    Config = CaptionConfig

    def __call__(self, caption: str) -> str:
        return self.cfg.prompt + _clean(caption, self.cfg.max_words, r"([.!\"()*#:;~])", " ")


@registry.register_processor("blip_question")
class BlipQuestionProcessor(BaseProcessor):
    """Lower-cases, strips punctuation (keeps the question's own marks) and truncates."""

    Config = QuestionConfig

    def __call__(self, question: str) -> str:
        return _clean(question, self.cfg.max_words, r"([.!\"()*#:;~])", "")


def build_processor(spec: dict[str, Any] | Any, context: dict[str, Any] | None = None) -> BaseProcessor:
    """Builds a processor from ``{"name": ..., **options}`` through the registry."""
    cls = registry.get_processor_class(str(spec["name"]))
    return cls.from_config(spec, context=context)
