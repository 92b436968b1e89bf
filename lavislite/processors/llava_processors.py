"""The image processor of projector (LLaVA-style) models: LLaVA's pad-to-square, CLIP's crop, or a plain resize.

LLaVA-1.5 pads every image to a square with the tower's mean colour
(``expand2square``) and then resizes it; CLIP's own processor resizes the
shortest side and crops the centre. The tower's image size, mean and std come
from the model (timm's pretrained config of the tower, or the Hugging Face
folder's), so a dataset config names only the processor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from lavislite.common.registry import registry
from lavislite.common.schema import validate
from lavislite.processors.base_processor import BaseProcessor
from lavislite.processors.transforms import INTERPOLATION, normalize, to_tensor


@dataclass
class LlavaImageConfig:
    # 0 / empty: the tower's own (from the model, as processor context).
    image_size: int = 0
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    # pad: LLaVA-1.5 (square with the mean colour, then resize); crop: CLIP (shortest
    # side to image_size, centre crop); resize: squash to a square.
    aspect: Literal["pad", "crop", "resize"] = "pad"
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"


def expand_to_square(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """``image`` centred on a square canvas of ``colour`` (LLaVA's ``expand2square``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), colour)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


@registry.register_processor("llava_image")
class LlavaImageProcessor(BaseProcessor):
    """An image -> (3, image_size, image_size), normalised with the tower's mean and std (train and eval alike, as LLaVA)."""

    Config = LlavaImageConfig

    @classmethod
    def from_config(cls, cfg: DictConfig | dict[str, Any] | None = None, context: dict[str, Any] | None = None) -> "LlavaImageProcessor":
        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
        data.pop("name", None)
        context = context or {}
        for key, given in (("image_size", "image_size"), ("mean", "image_mean"), ("std", "image_std")):
            if not data.get(key) and context.get(given):
                data[key] = context[given]
        checked = validate(LlavaImageConfig, data, "processor llava_image")
        missing = [k for k in ("image_size", "mean", "std") if not checked[k]]
        if missing:
            raise ValueError(f"llava_image: {', '.join(missing)} not given and not known from the model (a tower's image size, mean and std)")
        return cls(LlavaImageConfig(**checked))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        c = self.cfg
        image = image.convert("RGB")
        size = int(c.image_size)
        resample = INTERPOLATION[c.interpolation]
        if c.aspect == "pad":
            image = expand_to_square(image, tuple(int(m * 255) for m in c.mean))  # type: ignore[arg-type]
            image = image.resize((size, size), resample)
        elif c.aspect == "crop":
            # The long side as transformers' shortest_edge resize computes it (truncated).
            short, long = sorted(image.size)
            long = int(size * long / short)
            width, height = (size, long) if image.width <= image.height else (long, size)
            image = image.resize((width, height), resample)
            left, top = (width - size) // 2, (height - size) // 2
            image = image.crop((left, top, left + size, top + size))
        else:
            image = image.resize((size, size), resample)
        return normalize(to_tensor(image), tuple(c.mean), tuple(c.std))
