"""Mixing a JSON set and a shard stream by ``sample_ratio`` under ``runner_iter`` (``MixedStream``): the share,
the same mixture on 1 and 2 processes, an exact mid-run restart with rotated workers, and (slow) a short
``train.py`` run logging ``samples_seen`` per dataset that resumes from a step checkpoint with equal losses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from conftest import DEMO, DEMO_DATA, SMALL, launch, metrics
from test_streaming import CONTEXT, _instruction_stream, write_instruction_shards

from lavislite.datasets import load_dataset
from lavislite.datasets.datasets.mixed_stream import MixedStream


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object, str]:
    """The demo's first 60 LLaVA records as JSON, and 40 as shards (13, 13, 13, 1)."""
    folder = tmp_path_factory.mktemp("mixstream")
    pattern, _ = write_instruction_shards(folder)
    ann = Path(next(o for o in SMALL if o.startswith("datasets.llava_instruction.")).split("=", 1)[1])
    vis = {"train": {"name": "blip2_image_train", "image_size": 64}}
    info = {"annotations": {"train": {"storage": str(ann)}}, "images": {"storage": str(DEMO_DATA / "images")}}
    js = load_dataset("llava_instruction", {"build_info": info, "vis_processor": vis}, context=CONTEXT)["train"]
    return js, _instruction_stream(pattern, shuffle_buffer=6), pattern


def _mixture(js: object, stream: object, per_epoch: int = 200, seed: int = 7) -> MixedStream:
    return MixedStream([("llava_instruction", js), ("webdataset_instruction", stream)], [3, 1], samples_per_epoch=per_epoch, seed=seed)


def _global_sequence(mix: MixedStream, world: int, workers: int, n: int, batch: int = 4) -> tuple[list[tuple[int, int, int, int | None]], list[list[str]]]:
    """The first ``n`` draws of every rank (all workers), ordered by (epoch, global draw); and each (rank, worker)'s stream keys."""
    per_rank_batches = n // (world * batch)
    drawn, keys = [], []
    for rank in range(world):
        mix.configure(rank=rank, world_size=world, num_workers=workers, batch_size=batch)
        for worker in range(workers):
            mine = []
            for k, draws in mix.worker_draws(worker):
                if k >= per_rank_batches:
                    break
                for s, epoch, draw, payload in draws:
                    drawn.append((epoch, draw, s, None if mix.is_stream[s] else payload))
                    if mix.is_stream[s]:
                        mine.append(payload.key)
            keys.append(mine)
    return sorted(drawn), keys


def test_a_json_set_and_a_shard_set_mixed_3_to_1_draw_75_percent_and_the_same_mixture_on_1_and_2_processes(sources) -> None:  # type: ignore[no-untyped-def]
    js, stream, _ = sources
    mix = _mixture(js, stream)
    one, keys_one = _global_sequence(mix, world=1, workers=1, n=2000)
    two, keys_two = _global_sequence(mix, world=2, workers=2, n=2000)
    assert len(one) == len(two) == 2000
    # The same draws (epoch, global draw, source, JSON index) on 1 process and on 2 x 2 workers.
    assert one == two
    share = sum(s == 0 for _, _, s, _ in one) / len(one)
    assert abs(share - 0.75) <= 0.03, share
    # Stream draws are real shard samples: the 1-process stream cycles all 40 per pass; 4 streams of 10 split a pass.
    assert len(keys_one[0]) == 2000 - sum(s == 0 for _, _, s, _ in one) and set(keys_one[0][:40]) == set(keys_one[0])
    assert len(set(keys_one[0][:40])) == 40
    firsts = [k[:10] for k in keys_two]
    assert len({x for f in firsts for x in f}) == 40  # no sample in two (rank, worker) streams of one pass
    # JSON draws are the plan's seeded indices: without replacement within an epoch while the quota fits... here 150 of 60, with.
    assert {i for _, _, s, i in one if s == 0} <= set(range(60))
    other, _ = _global_sequence(_mixture(js, stream, seed=8), world=1, workers=1, n=2000)
    assert [s for *_, s, _ in other] != [s for *_, s, _ in one]


def test_a_restart_mid_run_with_rotated_workers_continues_the_mixture_exactly(sources) -> None:  # type: ignore[no-untyped-def]
    """2 DataLoader workers, random crops and flips: batches after a restart at batch 7 (odd: rotated) equal the uninterrupted ones."""
    js, stream, _ = sources
    mix = _mixture(js, stream, per_epoch=24)  # 6 batches of 4 per epoch: the run crosses two epochs and a stream pass
    mix.configure(num_workers=2, batch_size=4)
    reference = [b for _, b in zip(range(14), DataLoader(mix, batch_size=None, num_workers=2))]
    expected_ids = []
    for k in range(14):
        draws = next(d for kk, d in mix.worker_draws(k % 2, k) if kk == k)
        expected_ids.append([js.samples[p].id if s == 0 else stream.to_sample(p)[0].id for s, _, _, p in draws])
    assert [b["ids"] for b in reference] == expected_ids  # each batch holds the plan's draws
    mix.configure(num_workers=2, batch_size=4, start_batches=7)
    resumed = [b for _, b in zip(range(7), DataLoader(mix, batch_size=None, num_workers=2))]
    for a, b in zip(resumed, reference[7:]):
        assert a["ids"] == b["ids"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
