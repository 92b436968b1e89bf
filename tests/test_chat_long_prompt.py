"""Issue 15, defect 1: a generation prompt over ``max_len`` drops its oldest turns, never its end.

Before the fix the prompt was cut like training data (``ids[:max_len]``): the
newest question and the open ``<|im_start|>assistant\\n`` turn were lost, and
the model answered a conversation that did not end where the user stopped.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from lavislite.processors import QwenChatProcessor
from lavislite.processors.chat_processor import SampleError, kept_images

N = 8  # the demo's query count
SYSTEM = "You are a careful assistant."
LAST_QUESTION = "And what shape is it now?"


def processor(max_len: int = 256) -> QwenChatProcessor:
    return QwenChatProcessor.from_config({"max_len": max_len}, context={"tokenizer": "builtin:qwen2.5", "num_image_tokens": N})


def long_conversation() -> list[dict[str, Any]]:
    """System message, three earlier exchanges (the first with an image), a last question with an image."""
    filler = " ".join(["The shape in the picture is a bright red circle on a dark background."] * 5)
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "<image>\nDescribe the image in detail."},
        {"role": "assistant", "content": filler},
        {"role": "user", "content": "Tell me more about it, please: what else can you see in the picture?"},
        {"role": "assistant", "content": filler},
        {"role": "user", "content": "Anything else, then?"},
        {"role": "assistant", "content": filler},
        {"role": "user", "content": f"<image>\n{LAST_QUESTION}"},
    ]


def test_prompt_over_max_len_keeps_the_last_question_and_the_open_assistant_turn(caplog: pytest.LogCaptureFixture) -> None:
    txt = processor(256)
    tok = txt.tokenizer
    full = processor(4096)(long_conversation(), num_images=2, add_generation_prompt=True)
    assert len(full["input_ids"]) == 331  # the figure: over the demo's max_len 256
    with caplog.at_level(logging.WARNING, logger="lavislite"):
        enc = txt(long_conversation(), num_images=2, sample_id="chat", add_generation_prompt=True)
    ids = enc["input_ids"]
    assert len(ids) <= 256
    text = tok.decode(ids)
    # The end is the end the user wrote: the last question, then the open assistant turn.
    assert text.endswith(f"{LAST_QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    assert ids[-3:] == tok.encode("<|im_start|>assistant\n")
    # The system message stays first; the oldest exchange (with its image) is gone.
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n")
    assert "Describe the image in detail." not in text
    # One image left, the last one: its tokens are in the prompt and kept_images picks it.
    assert ids.count(txt.image_token_id) == N
    assert (enc["num_images"], enc["first_image"]) == (1, 1)
    assert kept_images(["first.jpg", "last.jpg"], enc) == ["last.jpg"]
    # Only the oldest exchange went: the rest is rendered exactly as it would be on its own.
    tail = [long_conversation()[0], *long_conversation()[3:]]
    assert ids == processor(4096)(tail, num_images=1, add_generation_prompt=True)["input_ids"]
    assert [r.getMessage() for r in caplog.records if "over max_len 256" in r.getMessage()]


def test_dropping_is_logged_once_per_processor(caplog: pytest.LogCaptureFixture) -> None:
    txt = processor(256)
    with caplog.at_level(logging.WARNING, logger="lavislite"):
        for _ in range(3):
            txt(long_conversation(), num_images=2, add_generation_prompt=True)
    assert len([r for r in caplog.records if "over max_len" in r.getMessage()]) == 1


def test_training_data_is_still_cut_at_the_end() -> None:
    """Without a generation prompt (training), the end is cut and the first images stay."""
    turns = long_conversation()[1:] + [{"role": "assistant", "content": "A circle."}]
    enc = processor(256)(turns, num_images=2)
    assert len(enc["input_ids"]) == 256 and (enc["num_images"], enc["first_image"]) == (1, 0)


def test_nothing_left_to_drop_is_a_clear_error() -> None:
    turns = [{"role": "user", "content": "<image>\n" + "Describe every detail of the picture. " * 60}]
    with pytest.raises(SampleError, match=r"sample q7: the prompt has \d+ tokens .* over max_len 256: nothing more can be dropped"):
        processor(256)(turns, num_images=1, sample_id="q7", add_generation_prompt=True)


def test_chat_inputs_send_only_the_kept_images(tiny_model: Any) -> None:
    """model.chat over max_len: the batch holds the last image only, and its queries fill the only image slots."""
    model = tiny_model
    model._chat_processors = None  # a fresh processor (the demo's eval text processor has max_len 256)
    first, last = torch.full((3, 64, 64), -1.0), torch.full((3, 64, 64), 1.0)
    batch = model.chat_inputs([first, last], long_conversation())
    assert batch["image"].shape[0] == 1 and torch.equal(batch["image"][0], last)
    ids = batch["input_ids"][0].tolist()
    assert len(ids) <= 256 and ids[-3:] == model.tokenizer.encode("<|im_start|>assistant\n")
    reply = model.chat([first, last], long_conversation(), max_new_tokens=2)  # image slots and images agree
    assert isinstance(reply, str)
