"""run.group_by_length: batches of similar length, text-only and image samples apart, exactly resumable (issue 18)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import DEMO, DEMO_DATA, SMALL, launch, metrics
from lavislite.datasets.datasets.samplers import LengthGroupedBatchSampler


def _demo_lengths() -> list[tuple[int, int]]:
    """``(tokens, images)`` of the shipped demo's training samples (both annotation files)."""
    from lavislite.common.config import Config
    from lavislite.tasks import setup_task

    cfg = Config(DEMO, [])
    datasets = setup_task(cfg).build_datasets(cfg)
    return [length for by_split in datasets.values() if "train" in by_split for length in by_split["train"].token_lengths()]


@pytest.fixture(scope="module")
def lengths() -> list[tuple[int, int]]:
    """The demo's lengths (all with images) and 100 seeded text-only samples of 10-200 tokens."""
    rng = random.Random(0)
    return _demo_lengths() + [(rng.randint(10, 200), 0) for _ in range(100)]


def _epoch(lengths: list[tuple[int, int]], batch: int, world: int, rank: int, seed: int = 42, epoch: int = 0, start: int = 0) -> list[list[tuple[int, int]]]:
    sampler = LengthGroupedBatchSampler(lengths, batch, num_replicas=world, rank=rank, seed=seed)
    sampler.set_epoch(epoch, start=start)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    return batches


def test_the_order_depends_only_on_seed_and_epoch(lengths: list[tuple[int, int]]) -> None:
    assert _epoch(lengths, 8, 2, 1) == _epoch(lengths, 8, 2, 1)
    assert _epoch(lengths, 8, 2, 1, epoch=1) != _epoch(lengths, 8, 2, 1, epoch=0)
    assert _epoch(lengths, 8, 2, 1, seed=7) != _epoch(lengths, 8, 2, 1, seed=42)
    # the seeds are the samples' own (sample_seed(seed, epoch, index)), as the plain sampler gives them
    from lavislite.datasets.datasets.samplers import sample_seed

    assert all(s == sample_seed(42, 3, i) for b in _epoch(lengths, 8, 1, 0, epoch=3) for i, s in b)


def test_every_batch_is_all_text_or_all_image(lengths: list[tuple[int, int]]) -> None:
    batches = _epoch(lengths, 8, 1, 0)
    kinds = [{lengths[i][1] > 0 for i, _ in b} for b in batches]
    assert all(len(k) == 1 for k in kinds)
    assert {True} in kinds and {False} in kinds
    # text and image batches are shuffled together, not one modality after the other
    first_text = next(n for n, k in enumerate(kinds) if k == {False})
    assert any(k == {True} for k in kinds[first_text:])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_get_equal_batch_counts_and_no_sample_twice(lengths: list[tuple[int, int]], world: int) -> None:
    batch = 8
    per_rank = [_epoch(lengths, batch, world, rank, epoch=2) for rank in range(world)]
    counts = {len(b) for b in per_rank}
    images = sum(1 for _, n in lengths if n)
    expected = images // (world * batch) + (len(lengths) - images) // (world * batch)
    assert counts == {expected}
    assert LengthGroupedBatchSampler(lengths, batch, num_replicas=world).batches_per_rank() == expected
    indices = [i for rank_batches in per_rank for b in rank_batches for i, _ in b]
    assert all(len(b) == batch for rank_batches in per_rank for b in rank_batches)
    assert len(indices) == len(set(indices))  # each sample at most once in the epoch, across ranks
    # at most one incomplete step per modality is left out
    assert len(lengths) - len(indices) < 2 * world * batch


def test_batches_spread_far_less_in_length_than_random_ones(lengths: list[tuple[int, int]]) -> None:
    """The mean (longest - shortest) of a batch of 8: grouped vs the plain sampler's consecutive samples."""
    from lavislite.datasets.datasets.samplers import EpochShardSampler

    for lens in (_demo_lengths(), lengths):
        grouped = [[i for i, _ in b] for b in _epoch(lens, 8, 1, 0)]
        shard = [i for i, _ in EpochShardSampler(len(lens), seed=42)]
        random_batches = [shard[b : b + 8] for b in range(0, len(shard) - 7, 8)]

        def spread(batches: list[list[int]], lens: list[tuple[int, int]] = lens) -> float:
            return sum(max(lens[i][0] for i in b) - min(lens[i][0] for i in b) for b in batches) / len(batches)

        assert spread(grouped) < 0.3 * spread(random_batches), (spread(grouped), spread(random_batches))


@pytest.mark.parametrize("world", [1, 2])
def test_a_start_skips_exactly_the_first_batches(lengths: list[tuple[int, int]], world: int) -> None:
    for rank in range(world):
        full = _epoch(lengths, 4, world, rank, epoch=1)
        for start_batch in (0, 1, 5, len(full) - 1, len(full)):
            assert _epoch(lengths, 4, world, rank, epoch=1, start=start_batch * 4) == full[start_batch:]
    with pytest.raises(ValueError, match="not a whole number of batches of 4"):
        LengthGroupedBatchSampler(lengths, 4).set_epoch(0, start=3)


# -- the runner's pieces -------------------------------------------------------------------------


def _runner(options: list[str]):  # type: ignore[no-untyped-def]
    """A runner of the demo on SMALL's 120 samples, datasets built, nothing set up yet."""
    from lavislite.common.config import Config
    from lavislite.runners.runner_base import RunnerBase
    from lavislite.tasks import setup_task

    cfg = Config(DEMO, [*SMALL, *options])
    task = setup_task(cfg)
    return RunnerBase(cfg, task, model=None, datasets=task.build_datasets(cfg), job_id="t")  # type: ignore[arg-type]


def test_the_option_is_a_checked_bool() -> None:
    from lavislite.common.config import Config
    from lavislite.common.schema import ConfigError

    assert Config(DEMO, []).run_cfg.group_by_length is False
    assert Config(DEMO, ["run.group_by_length=true"]).run_cfg.group_by_length is True
    with pytest.raises(ConfigError, match=r"run.group_by_length=3: expected a bool \(true/false\), got int"):
        Config(DEMO, ["run.group_by_length=3"])


def test_the_loader_yields_grouped_batches_of_the_concatenated_datasets() -> None:
    runner = _runner(["run.group_by_length=true", "run.num_workers=0"])
    runner.setup_dataloader()
    assert isinstance(runner.sampler, LengthGroupedBatchSampler)
    assert runner.batches_per_epoch == 15  # 120 samples, all with images, in batches of 8
    runner.sampler.set_epoch(0)
    lengths = runner.train_token_lengths()
    assert len(lengths) == len(runner.train_set) == 120
    seen = []
    for batch in runner.train_loader:
        assert batch["attention_mask"].shape[0] == 8
        # the collater's real lengths are the planned ones (both datasets' samples, by ConcatDataset index)
        assert batch["attention_mask"].sum(1).tolist() == [lengths[i][0] for i in runner.sampler.steps()[len(seen)][0]]
        seen.append(batch["ids"])
    assert len(seen) == 15 and len({i for ids in seen for i in ids}) == 120


def test_a_dataset_without_token_lengths_is_named() -> None:
    from torch.utils.data import TensorDataset

    import torch

    from lavislite.common.schema import ConfigError

    runner = _runner(["run.group_by_length=true"])
    runner.datasets["plain_tensors"] = {"train": TensorDataset(torch.zeros(4, 2))}
    with pytest.raises(ConfigError, match=r"run.group_by_length: datasets.plain_tensors \(split train, TensorDataset\) has no token_lengths\(\)"):
        runner.setup_dataloader()


def test_a_grouped_mid_epoch_position_converts_only_within_its_layout() -> None:
    from lavislite.common.errors import CheckpointError

    runner = _runner(["run.group_by_length=true"])
    now = {"world_size": 1, "batch_size_train": 8, "accum_grad_iters": 1}
    state = {"epoch": 0, "batch": 4, "samples": 64, "world_size": 2, "batch_size_train": 8, "accum_grad_iters": 1, "group_by_length": True}
    # 64 samples are 8 plain batches of 8 on one process, but not the grouped ones: refused, naming the key
    with pytest.raises(CheckpointError, match=r"cannot resume ck mid-epoch with world_size 2 -> 1: it stopped after batch 4 of epoch 0"):
        runner.grouped_resume_batch("ck", state, now)
    with pytest.raises(CheckpointError, match=r"with run.batch_size_train 4 -> 8, run.group_by_length false -> true"):
        runner.grouped_resume_batch("ck", {**state, "world_size": 1, "batch_size_train": 4, "samples": 16, "group_by_length": False}, now)
    # the same batches, another accumulation: the same position (a window's start)
    assert runner.grouped_resume_batch("ck", {**state, "world_size": 1, "samples": 32, "accum_grad_iters": 2}, now) == 4
    assert runner.grouped_resume_batch("ck", {**state, "world_size": 1, "samples": 32}, now) == 4


# -- end to end ----------------------------------------------------------------------------------


def _varied_data(folder: Path) -> list[str]:
    """``--options``: the demo's 24 first MiniGPT-4 records, and LLaVA records of every kind (38 to 74 tokens)
    with 24 of them made text-only, so that batches of random samples mix lengths and modalities."""
    minigpt = json.loads((DEMO_DATA / "minigpt4_instruction.json").read_text())[:24]
    llava = json.loads((DEMO_DATA / "llava_instruction.json").read_text())
    by_kind: dict[str, list[dict]] = {}
    for record in llava:
        by_kind.setdefault(record["id"].rsplit("_", 1)[0], []).append(record)
    picked = [r for records in by_kind.values() for r in records[:12]]
    text_only = []
    for record in picked[::3]:
        record = json.loads(json.dumps(record))
        record.pop("image")
        record["id"] += "_text"
        for turn in record["conversations"]:
            turn["value"] = turn["value"].replace("<image>\n", "")
        text_only.append(record)
    (folder / "minigpt4.json").write_text(json.dumps(minigpt))
    (folder / "llava.json").write_text(json.dumps(picked + text_only))
    return [
        *SMALL,
        f"datasets.minigpt4_instruction.build_info.annotations.train.storage={folder / 'minigpt4.json'}",
        f"datasets.llava_instruction.build_info.annotations.train.storage={folder / 'llava.json'}",
        "run.num_workers=0",
    ]


@pytest.mark.slow  # trains the demo model
def test_grouped_training_pads_less_and_resumes_mid_epoch_exactly(tmp_path: Path) -> None:
    """One process, 6 steps of 8: grouping raises the real-token fraction; a resume from step 3 repeats steps 4-6 (1e-6)."""
    data = _varied_data(tmp_path)
    common = ["--cfg-path", DEMO, "--options", *data, f"run.output_dir={tmp_path}", "run.max_steps=6"]
    plain = launch("train.py", [*common, "run.job_id=plain", "run.log_freq=6"])
    assert plain.returncode == 0, plain.stderr[-3000:]
    grouped_opts = [*common, "run.group_by_length=true", "run.log_freq=1", "run.save_freq_steps=3"]
    grouped = launch("train.py", [*grouped_opts, "run.job_id=grouped"])
    assert grouped.returncode == 0, grouped.stderr[-3000:]

    (plain_record,) = metrics(tmp_path / "plain")
    by_step = {r["step"]: r for r in metrics(tmp_path / "grouped")}
    assert sorted(by_step) == list(range(1, 7))
    # real_token_fraction is per logged interval: the plain run's over its 6 steps, the grouped run's per step
    plain_fraction = plain_record["real_token_fraction"]
    grouped_fraction = sum(r["real_token_fraction"] for r in by_step.values()) / 6
    assert grouped_fraction > plain_fraction + 0.05, (grouped_fraction, plain_fraction)

    ckpt = tmp_path / "grouped" / "checkpoints" / "step_3"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert (state["epoch"], state["batch"], state["group_by_length"]) == (0, 3, True)
    resumed = launch("train.py", [*grouped_opts, "run.job_id=resumed", f"run.resume_ckpt_path={ckpt}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = {r["step"]: r for r in metrics(tmp_path / "resumed")}
    assert sorted(again) == [4, 5, 6]
    for step in (4, 5, 6):
        assert abs(again[step]["loss"] - by_step[step]["loss"]) <= 1e-6, (step, again[step], by_step[step])
        assert again[step]["real_token_fraction"] == by_step[step]["real_token_fraction"]

    # another batch size cannot find the same samples in grouped batches: refused, naming the key
    refused = launch("train.py", [*grouped_opts, "run.job_id=refused", f"run.resume_ckpt_path={ckpt}", "run.batch_size_train=4"])
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"cannot resume {ckpt} mid-epoch with run.batch_size_train 8 -> 4" in refused.stderr
    assert "Traceback" not in refused.stderr
