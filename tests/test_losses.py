"""The chunked LM-head loss: same loss and gradients as full logits, never rows x vocab (issue 18.3)."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lavislite.common.errors import DataError
from lavislite.models.losses import IGNORE_INDEX, full_logits_cross_entropy, supervised_cross_entropy, tile_shape

B, L, H, V = 3, 23, 16, 257


def _inputs(dtype: torch.dtype = torch.float32, bias: bool = False) -> tuple[torch.Tensor, torch.Tensor, nn.Linear]:
    """Hidden states, labels with an unsupervised prompt and a hole, and a head; seeded."""
    torch.manual_seed(0)
    hidden = torch.randn(B, L, H, dtype=dtype, requires_grad=True)
    head = nn.Linear(H, V, bias=bias, dtype=dtype)
    labels = torch.randint(0, V, (B, L))
    labels[:, :6] = IGNORE_INDEX
    labels[1, 12:15] = IGNORE_INDEX
    labels[2, -1] = V - 1  # the last vocabulary entry is a target (the last, partial vocabulary slice)
    return hidden, labels, head


def _loss_and_grads(loss_fn: Callable[..., torch.Tensor], hidden: torch.Tensor, head: nn.Linear, *args: Any) -> list[torch.Tensor]:
    hidden.grad = None
    head.zero_grad(set_to_none=True)
    loss = loss_fn(*args)
    loss.backward()
    grads = [hidden.grad, head.weight.grad] + ([head.bias.grad] if head.bias is not None else [])
    return [loss.detach(), *grads]  # type: ignore[list-item]


def _n_rows(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


# (rows, vocab) tiles: 1x1; rows and vocabulary both split unevenly; whole rows, vocabulary split unevenly; one tile
@pytest.mark.parametrize("chunk_bytes", [4, 4 * 7 * 7, 4 * 64 * 30, 8 << 20])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_loss_and_gradients_equal_full_logits(chunk_bytes: int, bias: bool) -> None:
    hidden, labels, head = _inputs(bias=bias)
    rows, vocab_slice = tile_shape(_n_rows(labels), V, chunk_bytes)
    if chunk_bytes == 4 * 7 * 7:
        assert _n_rows(labels) % rows and V % vocab_slice  # neither dimension divides evenly
    ref = _loss_and_grads(lambda: full_logits_cross_entropy(hidden, labels, head), hidden, head)
    got = _loss_and_grads(lambda: supervised_cross_entropy(hidden, labels, head, chunk_bytes=chunk_bytes)[0], hidden, head)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_bytes", [4 * V, 4 * V * 5, 8 << 20])  # 1 row, 5 rows (not dividing 49), all rows per chunk
def test_a_hooked_head_is_called_per_chunk_in_forward_and_backward_with_the_same_result(chunk_bytes: int) -> None:
    """A head with forward hooks (how DeepSpeed ZeRO-3 gathers a partitioned weight) is never read
    through ``.weight``: it is called per chunk of rows, and again per chunk in the backward recompute."""
    hidden, labels, head = _inputs()
    n = _n_rows(labels)
    ref = _loss_and_grads(lambda: full_logits_cross_entropy(hidden, labels, head), hidden, head)
    calls = {"n": 0, "rows": []}

    def count(module: nn.Module, args: tuple[torch.Tensor]) -> None:
        calls["n"] += 1
        calls["rows"].append(args[0].shape[0])

    handle = head.register_forward_pre_hook(count)
    try:
        hidden.grad = None
        head.zero_grad(set_to_none=True)
        loss, n_tokens = supervised_cross_entropy(hidden, labels, head, chunk_bytes=chunk_bytes)
        chunks = -(-n // max(1, chunk_bytes // (4 * V)))
        assert calls["n"] == chunks and max(calls["rows"]) <= max(1, chunk_bytes // (4 * V))
        loss.backward()
        assert calls["n"] == 2 * chunks  # each chunk recomputed through the module in backward
    finally:
        handle.remove()
    assert int(n_tokens) == n
    for a, b in zip([loss.detach(), hidden.grad, head.weight.grad], ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_tied_head_gets_the_gradients_of_both_uses() -> None:
    """lm_head tied to the input embedding (Qwen's small models, the demo): one weight, two uses."""
    torch.manual_seed(0)
    emb = nn.Embedding(V, H)
    head = nn.Linear(H, V, bias=False)
    head.weight = emb.weight
    mix = nn.Linear(H, H)
    ids = torch.randint(0, V, (B, L))
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX

    def run(loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        emb.zero_grad(set_to_none=True)
        mix.zero_grad(set_to_none=True)
        loss = loss_fn(torch.tanh(mix(emb(ids))))
        loss.backward()
        return [loss.detach(), emb.weight.grad, mix.weight.grad]  # type: ignore[list-item]

    ref = run(lambda h: full_logits_cross_entropy(h, labels, head))
    got = run(lambda h: supervised_cross_entropy(h, labels, head, chunk_bytes=4 * 9 * 50)[0])
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_runs_and_matches_full_logits_loosely() -> None:
    hidden, labels, head = _inputs(dtype=torch.bfloat16)
    ref = _loss_and_grads(lambda: full_logits_cross_entropy(hidden, labels, head), hidden, head)
    got = _loss_and_grads(lambda: supervised_cross_entropy(hidden, labels, head, chunk_bytes=4 * 7 * 7)[0], hidden, head)
    assert all(t.dtype == torch.bfloat16 for t in got[1:])
    assert got[0].dtype == torch.float32 and abs(got[0].item() - ref[0].item()) <= 1e-3 * abs(ref[0].item())
    for a, b in zip(got[1:], ref[1:]):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=1e-3)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward): deterministic on CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("hooked", [False, True])
def test_no_rows_x_vocab_tensor_is_saved_for_backward_or_ever_created(hooked: bool) -> None:
    """Peak memory, measured by what the step creates rather than by a clock: the chunked loss never
    creates (forward or backward) nor saves for backward a tensor of rows x vocab; the unchunked one does."""
    torch.manual_seed(0)
    hidden = torch.randn(4, 64, 32, requires_grad=True)
    head = nn.Linear(32, 4096, bias=False)
    if hooked:
        head.register_forward_hook(lambda module, args, out: None)  # forces the checkpointed module path
    labels = torch.randint(0, 4096, (4, 64))
    labels[:, :16] = IGNORE_INDEX
    n_rows = _n_rows(labels)
    chunk_bytes = 4 * 4096 * 8  # 8 rows x the whole vocabulary, or a square-ish tile of as many logits

    def measure(impl: str) -> tuple[int, int]:
        saved: list[torch.Tensor] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(t)
            return t

        hidden.grad = None
        head.zero_grad(set_to_none=True)
        mode = _LargestTensor()
        with mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = supervised_cross_entropy(hidden, labels, head, impl=impl, chunk_bytes=chunk_bytes)
            loss.backward()
        weight_ptr = head.weight.untyped_storage().data_ptr()
        # the head's own weight (vocab x hidden, not an activation) is the only large tensor allowed
        largest_saved = max((t.numel() for t in saved if t.untyped_storage().data_ptr() != weight_ptr), default=0)
        return largest_saved, mode.largest

    weight_numel = head.weight.numel()
    saved, created = measure("chunked")
    assert saved <= n_rows * 32  # the supervised rows' hidden states at most
    assert created <= max(weight_numel, chunk_bytes // 4)  # the weight's gradient, or one chunk of logits
    saved_full, created_full = measure("full")
    assert saved_full >= n_rows * 4096 and created_full >= n_rows * 4096


def test_impls_agree_and_errors_name_the_batch() -> None:
    hidden, labels, head = _inputs()
    loss_full, n_full = supervised_cross_entropy(hidden, labels, head, impl="full")
    loss_auto, n_auto = supervised_cross_entropy(hidden, labels, head)
    assert int(n_full) == int(n_auto) == _n_rows(labels)
    torch.testing.assert_close(loss_auto, loss_full, rtol=1e-5, atol=1e-5)
    # eval (no grad) goes through the same chunks
    with torch.no_grad():
        torch.testing.assert_close(supervised_cross_entropy(hidden, labels, head)[0], loss_full.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            supervised_cross_entropy(hidden, labels, lambda x: head(x), chunk_bytes=4 * V * 3)[0], loss_full.detach(), rtol=1e-5, atol=1e-5
        )
    with pytest.raises(DataError, match=r"batch \['a', 'b', 'c'\]: no supervised token"):
        supervised_cross_entropy(hidden, torch.full_like(labels, IGNORE_INDEX), head, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"loss impl 'liger' is not one of \['auto', 'chunked', 'full', 'full_logits'\]"):
        supervised_cross_entropy(hidden, labels, head, impl="liger")
    with pytest.raises(IndexError, match="outside the vocabulary of 257"):
        supervised_cross_entropy(hidden, labels.masked_fill(labels == V - 1, V + 3), head)


def test_loss_scale_reaches_the_gradients() -> None:
    """A scaled loss (token-mean weighting, fp16 loss scaling) scales the gradients, negative and zero included."""
    hidden, labels, head = _inputs()
    ref = _loss_and_grads(lambda: full_logits_cross_entropy(hidden, labels, head), hidden, head)
    for scale in (3.5, -0.25, 0.0):
        got = _loss_and_grads(lambda: scale * supervised_cross_entropy(hidden, labels, head, chunk_bytes=4 * 7 * 7)[0], hidden, head)
        for a, b in zip(got[1:], ref[1:]):
            torch.testing.assert_close(a, scale * b, rtol=1e-5, atol=1e-5)


def test_loss_equals_f_cross_entropy_on_the_supervised_rows() -> None:
    hidden, labels, head = _inputs()
    keep = labels[:, 1:] != IGNORE_INDEX
    expected = F.cross_entropy(head(hidden[:, :-1][keep]).float(), labels[:, 1:][keep])
    torch.testing.assert_close(supervised_cross_entropy(hidden, labels, head, chunk_bytes=4 * 5)[0], expected, rtol=1e-5, atol=1e-5)


def test_full_logits_impl_is_the_textbook_loss_with_the_same_gradients() -> None:
    # model.loss_impl=full_logits: logits at every position (the MiniGPT4Qwen-style baseline of
    # benchmarks/train_throughput.py --compare); the same loss and gradients as the chunked default.
    hidden, labels, head = _inputs()
    ref = _loss_and_grads(lambda: supervised_cross_entropy(hidden, labels, head)[0], hidden, head)
    got = _loss_and_grads(lambda: supervised_cross_entropy(hidden, labels, head, impl="full_logits")[0], hidden, head)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert int(supervised_cross_entropy(hidden, labels, head, impl="full_logits")[1]) == _n_rows(labels)


def test_model_loss_impl_is_a_checked_config_switch() -> None:
    from lavislite.common.schema import ConfigError, validate
    from lavislite.models.blip2_qwen import Blip2QwenConfig

    data = validate(Blip2QwenConfig, {"loss_impl": "full", "loss_chunk_bytes": 1 << 20}, "model")
    assert (data["loss_impl"], data["loss_chunk_bytes"]) == ("full", 1 << 20)
    assert validate(Blip2QwenConfig, {}, "model")["loss_impl"] == "auto"
    with pytest.raises(ConfigError, match=r"model.loss_impl: expected one of 'auto', 'chunked', 'full', 'full_logits', got 'liger'"):
        validate(Blip2QwenConfig, {"loss_impl": "liger"}, "model")
