"""Causal-LM loss computed at supervised positions only.

Qwen's vocabulary has 151,936 entries: full logits for batch 8 x 1024 tokens are
8*1024*151936 floats (5 GB in fp32) before the backward pass. Selecting the
supervised hidden states first and running the LM head on those alone gives the
same loss with memory proportional to the number of supervised tokens.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from lavislite.common.errors import DataError

IGNORE_INDEX = -100


def check_labels(input_ids: torch.Tensor, labels: torch.Tensor, ids: Any = None) -> None:
    """Raises if labels do not line up with the template.

    A supervised label must equal the input id at its position (labels are
    unshifted copies of the ids); anything else means the collater or a custom
    dataset misaligned them, which would train on garbage without an error.
    """
    bad = (labels != IGNORE_INDEX) & (labels != input_ids)
    if bool(bad.any()):
        rows = sorted(set(bad.nonzero()[:, 0].tolist()))
        names = [ids[r] for r in rows] if ids is not None else rows
        raise DataError(f"labels do not match input_ids at supervised positions in sample(s) {names}")


def supervised_cross_entropy(
    hidden: torch.Tensor, labels: torch.Tensor, lm_head: Callable[[torch.Tensor], torch.Tensor], ids: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over positions whose label is not ``-100``.

    Args:
        hidden: (B, L, H) final hidden states.
        labels: (B, L) unshifted labels (position t predicts label t+1).
        lm_head: maps (N, H) -> (N, V).
        ids: sample ids for the error message.

    Returns:
        ``(loss, n_supervised_tokens)``.

    Raises:
        ValueError: if the batch has no supervised token.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    n_tokens = keep.sum()
    if int(n_tokens) == 0:
        raise DataError(f"batch {ids}: no supervised token (every label is {IGNORE_INDEX}); check the templates/truncation")
    logits = lm_head(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, targets[keep]), n_tokens


def full_logits_cross_entropy(hidden: torch.Tensor, labels: torch.Tensor, lm_head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The textbook version (logits for every position), kept as the reference."""
    logits = lm_head(hidden).float()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
