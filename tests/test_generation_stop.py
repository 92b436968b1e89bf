"""Issue 15, defect 7: generation stops on ``<|endoftext|>`` as well as ``<|im_end|>``.

The tiny demo model is made to emit ``<|endoftext|>`` as its third token by a
forward hook on its LM head that raises that token's logit at the third
decoding step only (a real change of the model's output, as a logits bias
would be): without the stop, decoding runs on after it with ordinary tokens,
which ``chat_stream`` showed although ``chat`` cut them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

ENDOFTEXT, IM_END = 151643, 151645
MESSAGES = [{"role": "user", "content": "<image>\nWhat colour is the shape?"}]
IMAGE = torch.zeros(3, 64, 64)


REPLY = "It is red."
AFTER = " And then it went on talking."


@pytest.fixture()
def ends_with_endoftext(tiny_model: Any) -> Iterator[Any]:
    """The tiny model, whose LM head says ``REPLY``, ``<|endoftext|>``, then ``AFTER``.

    A forward hook raises one token's logit per decoding step (a logits bias
    by step): the words come out of the model's own ``generate``, and
    whatever comes after the stop token shows if decoding does not stop.
    """
    tok = tiny_model.tokenizer
    forced = [*tok.encode(REPLY), ENDOFTEXT, *tok.encode(AFTER)]
    head = tiny_model.llm.get_output_embeddings()
    calls = {"n": 0}

    def bias(_module: Any, _inputs: Any, logits: torch.Tensor) -> torch.Tensor:
        # One LM-head call per decoding step (the first is the prompt's prefill).
        step = calls["n"]
        calls["n"] += 1
        if step < len(forced):
            logits = logits.clone()
            logits[:, -1, forced[step]] = logits[:, -1].max() + 100.0
        return logits

    def reset() -> dict[str, int]:
        calls["n"] = 0
        return calls

    handle = head.register_forward_hook(bias)
    tiny_model.eval()
    try:
        yield tiny_model, reset
    finally:
        handle.remove()


def test_generate_stops_at_endoftext(ends_with_endoftext: Any) -> None:
    model, reset = ends_with_endoftext
    assert model.stop_token_ids() == [IM_END, ENDOFTEXT]
    batch = model.chat_inputs([IMAGE], MESSAGES)
    calls = reset()
    texts, ids = model.generate(batch, max_new_tokens=20, return_ids=True)
    assert texts == [REPLY] and ids[0] == model.tokenizer.encode(REPLY)
    # Decoding itself stopped there, at the stop token (before the fix it ran all 20 steps).
    assert calls["n"] == len(ids[0]) + 1


def test_stream_pieces_join_to_the_chat_reply(ends_with_endoftext: Any) -> None:
    model, reset = ends_with_endoftext
    reset()
    reply = model.chat([IMAGE], MESSAGES, max_new_tokens=20)
    reset()
    pieces = list(model.chat_stream([IMAGE], MESSAGES, max_new_tokens=20))
    # Before the fix the stream went on past <|endoftext|>: "It is red. And then it went on talking."
    assert reply == REPLY and "".join(pieces) == REPLY
    assert all(pieces)


def test_chat_stream_yields_no_empty_piece(tiny_model: Any) -> None:
    """Without any stop forced: a random model's reply streams in non-empty pieces only."""
    tiny_model.eval()
    pieces = list(tiny_model.chat_stream([IMAGE], MESSAGES, max_new_tokens=16))
    assert pieces and all(pieces)


def test_exported_generation_config_stops_on_both(tiny_model: Any, tmp_path: Path) -> None:
    from transformers import GenerationConfig

    from lavislite.models.hf_export import export_hf

    export_hf(tiny_model, str(tmp_path / "hf"))
    saved = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [IM_END, ENDOFTEXT] and saved["pad_token_id"] == ENDOFTEXT
    assert GenerationConfig.from_pretrained(tmp_path / "hf").eos_token_id == [IM_END, ENDOFTEXT]
    text_config = json.loads((tmp_path / "hf" / "config.json").read_text())["text_config"]
    assert text_config["eos_token_id"] == [IM_END, ENDOFTEXT]
