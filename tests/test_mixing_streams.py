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
    # JSON draws are the plan's seeded indices into the 60 records (150 per epoch of 60: with replacement).
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


@pytest.mark.slow
def test_a_short_mixed_run_logs_samples_seen_per_dataset_and_resumes_from_a_step_checkpoint_exactly(sources, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """train.py, runner_iter: the JSON llava_instruction 3 : webdataset_instruction 1, batch 4, 4 steps; a resume from step_2."""
    _, _, pattern = sources
    cfg = OmegaConf.load(DEMO)
    section = cfg.datasets.pop("minigpt4_instruction")
    cfg.datasets["webdataset_instruction"] = {
        "build_info": {"shards": pattern, "shuffle_buffer": 6},
        "vis_processor": OmegaConf.to_container(section.vis_processor),
        "text_processor": OmegaConf.to_container(section.text_processor),
        "sample_ratio": 1,
    }
    cfg.datasets.llava_instruction.sample_ratio = 3
    path = tmp_path / "mixed.yaml"
    path.write_text(OmegaConf.to_yaml(cfg))
    common = [
        *(o for o in SMALL if not o.startswith("datasets.minigpt4_instruction.")),
        "run.runner=runner_iter", "run.max_iters=4", "run.iters_per_inner_epoch=4", "run.batch_size_train=4", "run.samples_per_epoch=24",
        "run.log_freq=1", "run.save_freq_steps=2", "run.num_workers=1", f"run.output_dir={tmp_path}",
    ]
    full = launch("train.py", ["--cfg-path", str(path), "--options", *common, "run.job_id=full"])
    assert full.returncode == 0, full.stderr[-3000:]
    assert "mixing llava_instruction 3, webdataset_instruction 1: 24 draws per epoch (llava_instruction 18, webdataset_instruction 6)" in full.stderr
    ckpt = tmp_path / "full" / "checkpoints" / "step_2"
    resumed = launch("train.py", ["--cfg-path", str(path), "--options", *common, "run.job_id=resumed", f"run.resume_ckpt_path={ckpt}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    reference = {r["step"]: r for r in metrics(tmp_path / "full")}
    assert sorted(reference) == [1, 2, 3, 4]
    for step, record in reference.items():
        seen = record["samples_seen"]
        assert set(seen) == {"llava_instruction", "webdataset_instruction"} and sum(seen.values()) == 4 * step, record
    # 6 batches of 4 per epoch: step s counted exactly the plan's first 4 s draws of each source.
    mix = MixedStream([("llava_instruction", [None] * 60), ("webdataset_instruction", sources[1])], [3, 1], samples_per_epoch=24, seed=42)
    src = mix.plan.sources(0).tolist()
    for step in range(1, 5):
        assert reference[step]["samples_seen"] == {"llava_instruction": src[: 4 * step].count(0), "webdataset_instruction": src[: 4 * step].count(1)}
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["samples_seen"] == reference[2]["samples_seen"] and state["stream"]["sample_ratio"] == {"llava_instruction": 3.0, "webdataset_instruction": 1.0}

    after = {r["step"]: r for r in metrics(tmp_path / "resumed")}
    assert sorted(after) == [3, 4]
    for step in (3, 4):
        assert abs(after[step]["loss"] - reference[step]["loss"]) <= 1e-6, (step, after[step], reference[step])
        assert after[step]["samples_seen"] == reference[step]["samples_seen"]
