"""The loss is the mean over an optimizer step's supervised tokens (issue 18): the arithmetic, without processes.

DeepSpeed divides every backward's loss by the accumulation steps and averages
the gradients over the ranks; ``token_mean_loss_scale`` undoes both so that
summed token losses give the gradient of the global token mean. Here the
DeepSpeed arithmetic is written out by hand over real autograd gradients of the
real loss function; ``test_token_mean_dist.py`` checks the same through real
DeepSpeed on two processes.
"""

from __future__ import annotations

import torch
from torch import nn

from lavislite.models.losses import IGNORE_INDEX, count_supervised_tokens, supervised_cross_entropy
from lavislite.runners.runner_base import token_mean_loss_scale

HIDDEN, VOCAB = 16, 50


def _batch(g: torch.Generator, rows: int, length: int, supervised: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden, labels) of a padded micro-batch whose rows each supervise their last ``supervised`` targets."""
    hidden = torch.randn(rows, length, HIDDEN, generator=g)
    labels = torch.full((rows, length), IGNORE_INDEX)
    labels[:, length - supervised :] = torch.randint(0, VOCAB, (rows, supervised), generator=g)
    return hidden, labels


def _grad(head: nn.Linear, loss: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(loss, head.weight)[0]


def test_count_supervised_tokens_is_what_the_loss_averages_over() -> None:
    g = torch.Generator().manual_seed(0)
    head = nn.Linear(HIDDEN, VOCAB, bias=False)
    hidden, labels = _batch(g, 3, 12, 5)
    labels[1, :9] = IGNORE_INDEX  # a shorter row
    labels[2, 0] = 7  # a row's first label is never a target (nothing predicts it)
    _, n_tokens = supervised_cross_entropy(hidden, labels, head)
    assert count_supervised_tokens(labels) == int(n_tokens) == 5 + 3 + 5


def test_the_scale_undoes_deepspeeds_averaging_into_the_global_token_mean() -> None:
    """2 ranks x 2 micro-batches of 3, 400, 7 and 150 tokens: DeepSpeed's (1/accum, 1/ranks) of the scaled
    summed token losses is the gradient of the mean over all 560 tokens; the old mean of micro-batch means is not."""
    g = torch.Generator().manual_seed(1)
    head = nn.Linear(HIDDEN, VOCAB, bias=False)
    ranks = [[_batch(g, 1, 8, 3), _batch(g, 4, 101, 100)], [_batch(g, 1, 9, 7), _batch(g, 3, 51, 50)]]
    world, accum = len(ranks), len(ranks[0])
    counts = [[count_supervised_tokens(labels) for _, labels in rank] for rank in ranks]
    assert counts == [[3, 400], [7, 150]]
    total = sum(map(sum, counts))
    scale = token_mean_loss_scale(total, world, accum)
    assert scale == accum * world / total

    def rank_grad(rank: list, weight) -> torch.Tensor:  # type: ignore[no-untyped-def]
        # engine.backward: the loss / accum per micro-batch, accumulated over the window
        return sum(_grad(head, weight(*supervised_cross_entropy(h, lab, head)) / accum) for h, lab in rank)  # type: ignore[return-value]

    # the data-parallel average
    token_weighted = sum(rank_grad(rank, lambda loss, n: loss * n * scale) for rank in ranks) / world
    old = sum(rank_grad(rank, lambda loss, n: loss) for rank in ranks) / world

    # the reference: one mean over every supervised token of the step
    rows = torch.cat([h[:, :-1][lab[:, 1:] != IGNORE_INDEX] for rank in ranks for h, lab in rank])
    targets = torch.cat([lab[:, 1:][lab[:, 1:] != IGNORE_INDEX] for rank in ranks for _, lab in rank])
    reference = _grad(head, nn.functional.cross_entropy(head(rows), targets))
    assert targets.numel() == total
    torch.testing.assert_close(token_weighted, reference, atol=1e-6, rtol=1e-5)
    # What the test would miss if the weighting did not matter here: the old one is far off.
    assert (old - reference).abs().max() > 100 * 1e-5


def test_one_micro_batch_on_one_rank_keeps_its_own_mean() -> None:
    """Without accumulation or ranks the scale is 1 / tokens: the summed losses become the batch's mean again."""
    assert token_mean_loss_scale(40, 1, 1) * 40 == 1.0
    assert token_mean_loss_scale(0, 2, 2) == 4.0  # no division by zero (a batch without targets fails in the loss)
