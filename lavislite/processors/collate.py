"""Collation of chat tensors: one batch from samples the chat processor made.

Lives in ``processors/`` (below ``models`` and ``datasets``) because both use
it: the data sets' collaters for training and evaluation, and ``model.chat``
for a batch of one.
"""

from __future__ import annotations

from typing import Any

import torch

from lavislite.processors.chat_processor import IGNORE_INDEX


def collate_chat(batch: list[dict[str, Any]], pad_token_id: int, padding_side: str = "right") -> dict[str, Any]:
    """Pads to the longest sample in the batch and stacks every image in sample order.

    Returns:
        ``input_ids``, ``attention_mask``, ``labels`` (B, L_max); ``image``
        (total images, 3, H, W) or None; ``num_images`` per sample; ``ids``.
    """
    max_len = max(len(b["input_ids"]) for b in batch)
    input_ids = torch.full((len(batch), max_len), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), max_len), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), max_len), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        sl = slice(0, n) if padding_side == "right" else slice(max_len - n, max_len)
        input_ids[i, sl] = b["input_ids"]
        attention[i, sl] = 1
        if "labels" in b:
            labels[i, sl] = b["labels"]
    images = [b["image"] for b in batch if b.get("image") is not None]
    return {
        "ids": [b["id"] for b in batch],
        "image": torch.cat(images) if images else None,
        "num_images": [0 if b.get("image") is None else len(b["image"]) for b in batch],
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": labels,
    }
