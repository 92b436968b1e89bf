"""Collation of chat tensors: one batch from samples the chat processor made.

Lives in ``processors/`` (below ``models`` and ``datasets``) because both use
it: the data sets' collaters for training and evaluation, and ``model.chat``
for a batch of one.
"""

from __future__ import annotations

from typing import Any

import torch

from lavislite.processors.chat_processor import IGNORE_INDEX

# Batch keys that carry data-quality facts from the workers to the runner, which
# pops them before the forward (see ``lavislite.datasets.bad_samples``):
# the records of samples left out (a list of dicts), and how many samples of
# the batch had a reply cut by ``max_len`` (an int). Absent when there are none.
BAD_SAMPLES_KEY = "bad_samples"
TRUNCATED_KEY = "truncated"


def _ids_and_images(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """The batch's sample ids, every image stacked in sample order (or None), and each sample's image count.

    Also the items' bad-sample records (``BAD_SAMPLES_KEY``) and their count of
    cut replies (``TRUNCATED_KEY``), only when there are any.
    """
    images = [b["image"] for b in batch if b.get("image") is not None]
    out: dict[str, Any] = {
        "ids": [b["id"] for b in batch],
        "image": torch.cat(images) if images else None,
        "num_images": [0 if b.get("image") is None else len(b["image"]) for b in batch],
    }
    records = [r for b in batch for r in (b.get(BAD_SAMPLES_KEY) or [])]
    if records:
        out[BAD_SAMPLES_KEY] = records
    truncated = sum(1 for b in batch if b.get(TRUNCATED_KEY))
    if truncated:
        out[TRUNCATED_KEY] = truncated
    if any("qformer_input_ids" in b for b in batch):
        out.update(collate_qformer_text([ids for b in batch for ids in b.get("qformer_input_ids") or []]))
    return out


# The Q-Former tokenizer's [PAD] (bert-base-uncased); padded positions are masked, so any id would do.
QFORMER_PAD_ID = 0


def collate_qformer_text(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    """One instruction per image (in the batch's image order) -> ``qformer_input_ids`` / ``qformer_attention_mask``.

    Padded on the right to the longest instruction of the batch (LAVIS's
    ``padding="longest"``); the attention mask covers the text only, the model
    puts the queries' ones in front.
    """
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), QFORMER_PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"qformer_input_ids": ids, "qformer_attention_mask": mask}


def text_fields(text: dict[str, Any], labels: bool = True) -> dict[str, Any]:
    """A sample's tensors from the chat processor's output: ``input_ids``, ``labels`` and, for InstructBLIP, ``qformer_input_ids``."""
    out: dict[str, Any] = {"input_ids": torch.tensor(text["input_ids"], dtype=torch.long)}
    if labels:
        out["labels"] = torch.tensor(text["labels"], dtype=torch.long)
    if "qformer_input_ids" in text:
        out["qformer_input_ids"] = text["qformer_input_ids"]  # one list per image; collate_qformer_text pads them
    return out


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
    return {
        **_ids_and_images(batch),
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": labels,
    }


def collate_packed(batch: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Packs samples into rows: each item's ``row`` says which row of the micro-batch it joins.

    Samples sit in their row in the order given (the packing sampler's order),
    each with ``position_ids`` restarting at 0, so the LLM's packed-sequence
    path (``attention_mask`` None, reset position ids, no cache) gives attention
    a block-diagonal causal mask: no token sees another sample. A row's padding
    tail is one more "sample" of its own (positions from 0, labels -100), so it
    is never attended by a real token either.

    Labels stay per sample: each sample's first label is set to -100, so the
    position just before it (the previous sample's last token) is never trained
    to predict it (the loss predicts ``labels[:, t + 1]`` from position ``t``).

    Args:
        batch: items with ``input_ids``, ``labels``, ``image`` (or None),
            ``id`` and ``row`` (0-based; the rows are 0..R-1, none empty).
        pad_token_id: the id that fills the rows' tails.

    Returns:
        ``input_ids``, ``labels``, ``position_ids`` (R, L_max longest row);
        ``attention_mask`` None; ``token_mask`` (R, L_max, 1 on sample tokens:
        for counting real tokens, never for attention); ``image`` (total
        images in sample order, 3, H, W) or None; ``num_images`` and ``ids``
        per sample; ``spans``: each sample's ``(row, start, end)``.

    Raises:
        ValueError: an item without ``row``, or a row with no sample.
    """
    missing = [b.get("id") for b in batch if "row" not in b]
    if missing:
        raise ValueError(f"collate_packed: sample(s) {missing} carry no 'row' (use the packing batch sampler)")
    n_rows = max(int(b["row"]) for b in batch) + 1
    lengths = [0] * n_rows
    spans: list[tuple[int, int, int]] = []
    for b in batch:
        row = int(b["row"])
        spans.append((row, lengths[row], lengths[row] + len(b["input_ids"])))
        lengths[row] += len(b["input_ids"])
    empty = [r for r, n in enumerate(lengths) if n == 0]
    if empty:
        raise ValueError(f"collate_packed: row(s) {empty} of {n_rows} hold no sample")
    max_len = max(lengths)
    input_ids = torch.full((n_rows, max_len), pad_token_id, dtype=torch.long)
    labels = torch.full((n_rows, max_len), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((n_rows, max_len), dtype=torch.long)
    token_mask = torch.zeros((n_rows, max_len), dtype=torch.long)
    for b, (row, start, end) in zip(batch, spans):
        input_ids[row, start:end] = b["input_ids"]
        position_ids[row, start:end] = torch.arange(end - start)
        token_mask[row, start:end] = 1
        if "labels" in b:
            labels[row, start:end] = b["labels"]
        labels[row, start] = IGNORE_INDEX  # no target crosses into this sample from the one before
    for row, n in enumerate(lengths):
        position_ids[row, n:] = torch.arange(max_len - n)  # the tail restarts too: a sequence of its own
    return {
        **_ids_and_images(batch),
        "input_ids": input_ids,
        "attention_mask": None,
        "position_ids": position_ids,
        "token_mask": token_mask,
        "labels": labels,
        "spans": spans,
    }


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An explicit block-diagonal causal 4-D mask for packed rows, for attention that cannot build it.

    Samples are told apart as transformers' ``find_packed_sequence_indices``
    does: a new sample starts wherever the position id does not go up by one.

    Args:
        position_ids: (R, L) per-sample positions, restarting at 0.
        dtype: the dtype of the attention scores the mask is added to.

    Returns:
        (R, 1, L, L) additive mask: 0 where query ``q`` may see key ``k`` (same
        sample, ``k <= q``), the dtype's minimum elsewhere.
    """
    step = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)
    sample = (step != 1).cumsum(-1)
    n = position_ids.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (sample[:, :, None] == sample[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
