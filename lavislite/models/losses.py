"""Causal-LM loss computed at supervised positions only, one chunk of logits at a time.

Qwen's vocabulary has 151,936 entries: full logits for batch 8 x 1024 tokens are
8*1024*151936 floats (5 GB in fp32) before the backward pass. Selecting the
supervised hidden states first and running the LM head on those alone gives the
same loss with memory proportional to the number of supervised tokens; running
the head and the cross-entropy over those rows a chunk at a time, and computing
each chunk's logits again in the backward pass instead of keeping them, makes
the loss's memory independent of the number of tokens too: one chunk's logits
at a time, never ``rows x vocab`` (``benchmarks/loss_memory.py`` measures it).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lavislite.common.errors import DataError

IGNORE_INDEX = -100
# "auto" is "chunked" (the place where an optional fused kernel would be chosen);
# "full" runs the head once over all supervised rows (the previous implementation);
# "full_logits" computes logits at every position, padding included, as a
# transformers CausalLM's own loss and MiniGPT4Qwen do (a baseline for benchmarks).
LOSS_IMPLS = ("auto", "chunked", "full", "full_logits")
# fp32 logits of one chunk (a tile of supervised rows x vocabulary entries):
# small enough that the loss step stays a few percent of full logits (the
# weight's own gradient is most of it), large enough for efficient matmuls.
DEFAULT_CHUNK_BYTES = 8 << 20


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


def count_supervised_tokens(labels: torch.Tensor) -> int:
    """The number of targets ``supervised_cross_entropy`` averages over: ``labels[:, 1:] != -100``.

    Position ``t`` predicts label ``t + 1``, so a row's first label is never a
    target. The runner counts a window's micro-batches with this before their
    forward passes (on the loader's CPU tensors, so no device sync), to weight
    each micro-batch by its tokens (the loss is a token mean over the whole
    optimizer step).
    """
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def tile_shape(n_rows: int, vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[int, int]:
    """(rows, vocabulary entries) of one chunk whose fp32 logits fit in ``chunk_bytes``.

    Square-ish tiles (at most ``sqrt(chunk_bytes / 4)`` rows, the row blocks
    balanced) read the head's weight once per row block and the rows once per
    vocabulary slice, the least memory traffic for the tile's size.
    """
    elements = max(1, chunk_bytes // 4)
    max_rows = max(1, math.isqrt(elements))
    n_blocks = -(-n_rows // max_rows)
    rows = -(-n_rows // n_blocks)
    return rows, max(1, min(vocab_size, elements // rows))


def supervised_cross_entropy(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    lm_head: Callable[[torch.Tensor], torch.Tensor],
    ids: Any = None,
    *,
    impl: str = "auto",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over positions whose label is not ``-100``.

    The logits are computed in fp32 (upcast after the head), as transformers'
    causal-LM losses do. With ``impl`` ``auto``/``chunked`` the head and the
    cross-entropy run one chunk at a time and each chunk's logits are computed
    again in the backward pass, so no ``rows x vocab`` tensor is ever held:

    * a plain ``nn.Linear`` head goes through a fused function over tiles of
      (supervised rows x vocabulary slice) with an online log-sum-exp; each
      vocabulary slice of the weight's gradient is written in place (no
      second weight-sized temporary);
    * a DeepSpeed ZeRO-3 partitioned head is called once over the supervised
      rows (each call gathers its weight in a collective, so every rank must
      call it equally often, whatever its own row count);
    * any other head (hooked, wrapped, a plain callable) is called per chunk of
      rows under activation checkpointing, so its own ``forward`` runs in the
      forward pass and again in the backward recompute.

    Args:
        hidden: (B, L, H) final hidden states.
        labels: (B, L) unshifted labels (position t predicts label t+1).
        lm_head: the LLM's output embedding (maps (N, H) -> (N, V)).
        ids: sample ids for the error message.
        impl: ``auto`` (= ``chunked``), ``chunked``, ``full`` (one head call
            over all supervised rows: ``rows x vocab`` logits) or ``full_logits``
            (logits at every position, ``B x L x vocab``: the textbook loss,
            ``full_logits_cross_entropy``; same value, most memory and time).
        chunk_bytes: the size of one chunk's fp32 logits (default 8 MiB); larger
            chunks run faster on a GPU and take more memory.

    Returns:
        ``(loss, n_supervised_tokens)``.

    Raises:
        DataError: if the batch has no supervised token.
        ValueError: for an unknown ``impl`` or a ``chunk_bytes`` below 4.
        IndexError: for a supervised target outside the vocabulary.
    """
    if impl not in LOSS_IMPLS:
        raise ValueError(f"loss impl {impl!r} is not one of {list(LOSS_IMPLS)}")
    if chunk_bytes < 4:
        raise ValueError(f"loss chunk_bytes must hold at least one fp32 logit (4 bytes), got {chunk_bytes}")
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    n_tokens = keep.sum()
    if int(n_tokens) == 0:
        raise DataError(f"batch {ids}: no supervised token (every label is {IGNORE_INDEX}); check the templates/truncation")
    if impl == "full_logits":
        return full_logits_cross_entropy(hidden, labels, lm_head), n_tokens
    rows, row_targets = hidden[:, :-1][keep], targets[keep]
    if impl == "full" or hasattr(getattr(lm_head, "weight", None), "ds_id"):
        # A ZeRO-3 partitioned head gathers its weight in a collective on every
        # call, so every rank must call it equally often: the chunk count follows
        # this rank's supervised rows and would differ (a hang). One call per
        # forward, as before chunking; its memory is rows x vocab.
        return F.cross_entropy(lm_head(rows).float(), row_targets), n_tokens
    if _is_plain_linear(lm_head, rows):
        weight, bias = lm_head.weight, lm_head.bias  # type: ignore[union-attr]
        tile = tile_shape(rows.shape[0], weight.shape[0], chunk_bytes)
        return _LinearCrossEntropy.apply(rows, weight, bias, row_targets, tile), n_tokens
    return _checkpointed_cross_entropy(rows, row_targets, lm_head, chunk_bytes), n_tokens


def full_logits_cross_entropy(hidden: torch.Tensor, labels: torch.Tensor, lm_head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The textbook version (logits for every position), kept as the reference."""
    logits = lm_head(hidden).float()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)


def _is_plain_linear(lm_head: Any, rows: torch.Tensor) -> bool:
    """Whether reading ``lm_head.weight`` directly computes exactly what calling it would.

    Only an ``nn.Linear`` itself (not a subclass, a parametrized or peft/FSDP
    wrapped one), without hooks (DeepSpeed ZeRO-3 gathers its partitioned weight
    in forward hooks: the attribute alone is an empty shard), whose weight is
    whole, outside autocast (which would change the matmul's dtype).
    """
    if type(lm_head) is not nn.Linear:
        return False
    weight = lm_head.weight
    if lm_head._forward_hooks or lm_head._forward_pre_hooks or hasattr(weight, "ds_id"):
        return False
    if weight.dim() != 2 or weight.shape[1] != rows.shape[-1] or weight.dtype != rows.dtype or weight.device != rows.device:
        return False
    return not torch.is_autocast_enabled(rows.device.type)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``linear(x, weight, bias).float()``, tile by tile.

    Tiles are (vocabulary slice x row block), held transposed: ``weight_slice @
    x_block.T`` runs 2-3.5x faster than ``x_block @ weight_slice.T`` on a CPU
    for the LM head's shapes (a narrow inner dimension, a wide output), and a
    GPU is indifferent. The forward keeps only each row's log-sum-exp (one
    float per row, accumulated online over the slices); the backward computes
    each tile's logits again, turns them into the softmax gradient in place,
    writes (first row block) or adds (later ones) the slice's rows of the
    weight gradient in place and accumulates the rows' gradient in fp32.
    Matmuls run in the weight's dtype and the softmax in fp32, as autograd
    does for ``F.linear(...).float()``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, tile: tuple[int, int]
    ) -> torch.Tensor:
        n, vocab = x.shape[0], weight.shape[0]
        tile_rows, tile_vocab = tile
        lse = torch.empty(n, dtype=torch.float32, device=x.device)
        target_logit = torch.empty(n, dtype=torch.float32, device=x.device)
        for r0 in range(0, n, tile_rows):
            r1 = min(r0 + tile_rows, n)
            xt, tr = x[r0:r1].t(), targets[r0:r1]
            run_max = torch.full((r1 - r0,), -math.inf, dtype=torch.float32, device=x.device)
            run_sum = torch.zeros(r1 - r0, dtype=torch.float32, device=x.device)
            for v0 in range(0, vocab, tile_vocab):
                v1 = min(v0 + tile_vocab, vocab)
                logits = _tile_logits(weight, bias, xt, v0, v1)  # (slice, rows)
                inside = (tr >= v0) & (tr < v1)
                picked = logits.gather(0, (tr - v0).clamp(0, v1 - v0 - 1)[None, :]).squeeze(0)
                target_logit[r0:r1] = torch.where(inside, picked, target_logit[r0:r1])
                new_max = torch.maximum(run_max, logits.amax(0))
                run_sum.mul_(torch.exp(run_max - new_max)).add_(logits.sub_(new_max[None, :]).exp_().sum(0))
                run_max = new_max
                del logits
            lse[r0:r1] = run_max + run_sum.log()
        bad = (targets < 0) | (targets >= vocab)
        if bool(bad.any()):
            raise IndexError(f"target id(s) {targets[bad][:5].tolist()} outside the vocabulary of {vocab}")
        ctx.save_for_backward(x, weight, bias, targets, lse)
        ctx.tile = tile
        return (lse - target_logit).mean()

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight, bias, targets, lse = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        (n, _), vocab = x.shape, weight.shape[0]
        tile_rows, tile_vocab = ctx.tile
        scale = float(grad_loss) / n  # one host sync per backward, not per tile
        # (softmax - onehot) * scale with the scale folded into the exponent's shift (one pass less)
        shift = lse - math.log(scale) if scale > 0 else lse
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.empty_like(weight) if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=x.device) if (need_b and bias is not None) else None
        for r0 in range(0, n, tile_rows):
            r1 = min(r0 + tile_rows, n)
            xr, tr = x[r0:r1], targets[r0:r1]
            acc_x = torch.zeros(r1 - r0, x.shape[1], dtype=torch.float32, device=x.device) if need_x else None
            for v0 in range(0, vocab, tile_vocab):
                v1 = min(v0 + tile_vocab, vocab)
                # d(mean CE)/d(logits) = (softmax - onehot(target)) / n, built in the logits' own buffer
                g = _tile_logits(weight, bias, xr.t(), v0, v1)  # (slice, rows)
                g.sub_(shift[None, r0:r1]).exp_()
                hit = ((tr >= v0) & (tr < v1)).nonzero().squeeze(1)
                if scale > 0:
                    g[tr[hit] - v0, hit] -= scale
                else:
                    g[tr[hit] - v0, hit] -= 1.0
                    g.mul_(scale)
                if grad_b is not None:
                    grad_b[v0:v1] += g.sum(1)
                g = g.to(weight.dtype)
                if grad_w is not None:
                    if r0 == 0:
                        torch.mm(g, xr, out=grad_w[v0:v1])
                    else:
                        grad_w[v0:v1].addmm_(g, xr)
                if acc_x is not None:
                    acc_x += torch.mm(g.t(), weight[v0:v1])
                del g
            if grad_x is not None and acc_x is not None:
                grad_x[r0:r1] = acc_x
        return grad_x, grad_w, (grad_b.to(bias.dtype) if grad_b is not None else None), None, None


def _tile_logits(weight: torch.Tensor, bias: torch.Tensor | None, xt: torch.Tensor, v0: int, v1: int) -> torch.Tensor:
    """fp32 logits of vocabulary entries ``v0:v1`` for the rows of ``xt`` (H, rows), as (v1 - v0, rows)."""
    logits = torch.mm(weight[v0:v1], xt)
    if bias is not None:
        logits += bias[v0:v1, None]
    return logits.float()


def _chunk_loss_sum(lm_head: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed fp32 cross-entropy of one chunk (the checkpointed unit: head call + loss)."""
    return F.cross_entropy(lm_head(rows).float(), targets, reduction="sum")


def _checkpointed_cross_entropy(
    rows: torch.Tensor, targets: torch.Tensor, lm_head: Callable[[torch.Tensor], torch.Tensor], chunk_bytes: int
) -> torch.Tensor:
    """Mean cross-entropy with the head called per chunk of rows under non-reentrant checkpointing.

    The head is called as a module (never through its ``.weight``), in the
    forward and again when the backward recomputes the chunk, so ZeRO-3's hooks
    gather its partitioned weight both times; only the chunk's inputs are kept.
    """
    n = rows.shape[0]
    size = max(1, chunk_bytes // (4 * _vocab_size(lm_head, rows)))
    if not torch.is_grad_enabled():
        # nothing to recompute: plain chunks bound the memory already
        return sum(_chunk_loss_sum(lm_head, rows[s : s + size], targets[s : s + size]) for s in range(0, n, size)) / n  # type: ignore[return-value]
    total = None
    for start in range(0, n, size):
        part = checkpoint(_chunk_loss_sum, lm_head, rows[start : start + size], targets[start : start + size], use_reentrant=False)
        total = part if total is None else total + part
    return total / n  # type: ignore[operator]


def _vocab_size(lm_head: Any, rows: torch.Tensor) -> int:
    """The head's output size: from its config when it has one, else from one row's logits."""
    out_features = getattr(lm_head, "out_features", None)
    if isinstance(out_features, int) and out_features > 0:
        return out_features
    with torch.no_grad():
        return int(lm_head(rows[:1]).shape[-1])
