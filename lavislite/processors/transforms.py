"""Image transforms on PIL images and tensors, without torchvision.

torchvision is not a dependency: its CPU wheels do not exist for every torch
build, and the few transforms BLIP-2 needs are short. The maths follows
torchvision's ``RandomResizedCrop`` (area/aspect sampling with 10 tries, then
a centre crop fallback), ``Resize`` and ``Normalize``.
"""

from __future__ import annotations

import io
import math
import os
import random
from typing import IO, Union

import numpy as np
import torch
from PIL import Image, ImageOps

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}


def random_resized_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random
) -> tuple[int, int, int, int]:
    """Samples a crop box (left, top, w, h) the way torchvision's RandomResizedCrop does."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float tensor (3, H, W) in [0, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def normalize(t: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=t.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=t.dtype).view(-1, 1, 1)
    return (t - m) / s


ImageSource = Union[str, "os.PathLike[str]", bytes, IO[bytes]]


def load_image(source: ImageSource) -> Image.Image:
    """Decodes an image fully into memory, upright (EXIF orientation applied), as RGB.

    The one image loader of lavislite: JSON datasets (a file path or an opened
    file), webdataset shards (a member's bytes) and chat all read images
    through it, so a photo taken sideways with its EXIF ``Orientation`` tag
    is trained on, and asked about, the way it is shown.

    Args:
        source: a path, the file's bytes, or a binary file object.

    Raises:
        OSError / ValueError: what PIL raises for data it cannot decode (a
            truncated JPEG fails here, not later in a transform); callers name
            the file or sample.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    with Image.open(source) as image:
        # exif_transpose returns a copy (or the image itself when upright); convert() loads the pixels now.
        return ImageOps.exif_transpose(image).convert("RGB")


def open_rgb_image(path: str | os.PathLike[str]) -> Image.Image:
    """Reads an image file fully into memory as RGB, upright (``load_image``).

    Raises:
        MissingFileError: no file at ``path``.
        DataError: the file is not an image PIL can read.
    """
    from lavislite.common.errors import DataError, MissingFileError

    if not os.path.isfile(path):
        raise MissingFileError(f"no image file at '{path}'")
    try:
        return load_image(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image '{path}': {exc}") from exc
