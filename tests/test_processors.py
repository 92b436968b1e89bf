"""Image / text processors and lr schedulers."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from lavislite.common.optims import ConstantLRScheduler, LinearWarmupCosineLRScheduler, SchedulerArgs
from lavislite.processors import Blip2ImageTrainProcessor, BlipCaptionProcessor, BlipImageEvalProcessor, BlipQuestionProcessor
from lavislite.processors.transforms import CLIP_MEAN, CLIP_STD, random_resized_crop_box


def test_eval_processor_resizes_and_normalises_with_clip_stats() -> None:
    proc = BlipImageEvalProcessor.from_config({"image_size": 16})
    img = Image.new("RGB", (40, 30), (255, 0, 128))
    out = proc(img)
    assert out.shape == (3, 16, 16)
    expected = [(255 / 255 - CLIP_MEAN[0]) / CLIP_STD[0], (0 - CLIP_MEAN[1]) / CLIP_STD[1], (128 / 255 - CLIP_MEAN[2]) / CLIP_STD[2]]
    torch.testing.assert_close(out[:, 5, 5], torch.tensor(expected), atol=1e-5, rtol=0)


def test_random_resized_crop_box_stays_in_scale_range() -> None:
    rng = random.Random(0)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(100, 80, (0.5, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= left and left + w <= 100 and 0 <= top and top + h <= 80
        assert 0.5 * 8000 * 0.95 <= w * h <= 8000


def test_train_processor_flips_and_crops() -> None:
    # Left half black, right half white: a flip swaps the sides.
    arr = np.zeros((32, 32, 3), dtype=np.uint8)
    arr[:, 16:] = 255
    img = Image.fromarray(arr)
    flipped = Blip2ImageTrainProcessor(Blip2ImageTrainProcessor.Config(image_size=32, min_scale=1.0, hflip_prob=1.0), seed=0)(img)
    kept = Blip2ImageTrainProcessor(Blip2ImageTrainProcessor.Config(image_size=32, min_scale=1.0, hflip_prob=0.0), seed=0)(img)
    assert flipped.shape == (3, 32, 32)
    assert flipped[0, 16, 2] > flipped[0, 16, 29] and kept[0, 16, 2] < kept[0, 16, 29]


def test_text_processors_follow_lavis() -> None:
    cap = BlipCaptionProcessor.from_config({"prompt": "a photo of ", "max_words": 4})
    assert cap("A Dog, running!  On the   beach.") == "a photo of a dog, running on"
    q = BlipQuestionProcessor.from_config({})
    assert q("What colour is it?") == "what colour is it?"


def test_unknown_processor_option_fails() -> None:
    from lavislite.common.schema import ConfigError

    with pytest.raises(ConfigError, match="image_sise: unknown key; did you mean .*image_size"):
        BlipImageEvalProcessor.from_config({"image_sise": 3})


def _opt(lrs: list[float]) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs], lr=lrs[0])


def test_linear_warmup_cosine_keeps_per_group_ratios() -> None:
    opt = _opt([1.0, 0.1])
    sched = LinearWarmupCosineLRScheduler(opt, SchedulerArgs(max_steps=10, init_lr=1.0, min_lr=0.0, warmup_lr=0.0, warmup_steps=2))
    assert sched.get_last_lr() == [0.0, 0.0]
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.5, 0.05])
    sched.step()
    assert sched.get_last_lr() == pytest.approx([1.0, 0.1])
    sched.step(6)  # halfway through the cosine
    assert sched.get_last_lr() == pytest.approx([0.5, 0.05])
    sched.step(10)
    assert sched.get_last_lr() == pytest.approx([0.0, 0.0], abs=1e-12)
    state = sched.state_dict()
    other = LinearWarmupCosineLRScheduler(_opt([1.0, 0.1]), sched.args)
    other.load_state_dict(state)
    assert other.get_last_lr() == sched.get_last_lr()


def test_constant_lr_after_warmup() -> None:
    sched = ConstantLRScheduler(_opt([0.2]), SchedulerArgs(max_steps=5, init_lr=0.2, warmup_steps=0))
    sched.step(4)
    assert sched.get_last_lr() == [0.2]
