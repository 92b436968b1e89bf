"""Each lr scheduler's value at warm-up start, warm-up end, mid-decay and the last step."""

from __future__ import annotations

import math

import pytest
import torch

from lavislite.common.optims import SchedulerArgs
from lavislite.common.registry import registry

ARGS = SchedulerArgs(max_steps=100, init_lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=10, steps_per_epoch=25, decay_rate=0.5)


def _lrs(name: str, args: SchedulerArgs = ARGS, part_lr: float | None = None) -> list[list[float]]:
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    groups = [{"params": [params[0]], "lr": args.init_lr}, {"params": [params[1]], "lr": part_lr or args.init_lr}]
    sched = registry.get_lr_scheduler_class(name)(torch.optim.AdamW(groups), args)
    out = [sched.get_last_lr()]
    for _ in range(args.max_steps):
        sched.step()
        out.append(sched.get_last_lr())
    return out


def test_linear_warmup_cosine() -> None:
    lrs = [g[0] for g in _lrs("linear_warmup_cosine_lr")]
    assert lrs[0] == pytest.approx(1e-6)  # warm-up start
    assert lrs[5] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert lrs[10] == pytest.approx(1e-3)  # warm-up end
    assert lrs[55] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))  # mid-decay
    assert lrs[100] == pytest.approx(1e-5)  # last step


def test_constant() -> None:
    lrs = [g[0] for g in _lrs("constant_lr")]
    assert lrs[0] == pytest.approx(1e-6) and lrs[10] == pytest.approx(1e-3)
    assert lrs[55] == lrs[100] == pytest.approx(1e-3)


def test_linear_warmup_step_as_lavis() -> None:
    """``max(min_lr, init_lr * decay_rate ** epoch)`` after warm-up; epoch = step // steps_per_epoch."""
    lrs = [g[0] for g in _lrs("linear_warmup_step_lr")]
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[10] == pytest.approx(1e-3)  # warm-up end, epoch 0
    assert lrs[24] == pytest.approx(1e-3)
    assert lrs[25] == pytest.approx(5e-4)  # epoch 1
    assert lrs[60] == pytest.approx(2.5e-4)  # mid-decay, epoch 2
    assert lrs[100] == pytest.approx(1.25e-4 * 0.5)  # epoch 4
    floor = SchedulerArgs(**{**ARGS.__dict__, "decay_rate": 0.01})
    assert [g[0] for g in _lrs("linear_warmup_step_lr", floor)][100] == pytest.approx(1e-5)  # min_lr floor


@pytest.mark.parametrize("name", ["linear_warmup_cosine_lr", "constant_lr", "linear_warmup_step_lr"])
def test_per_part_rates_keep_their_ratio(name: str) -> None:
    for main, part in _lrs(name, part_lr=4e-3)[10:]:
        assert part == pytest.approx(4 * main)
