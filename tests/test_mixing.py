"""Mixing map-style datasets by ``sample_ratio``: the seeded draw sequence, its shares, its shards per
rank, the config rules, the runners' loaders, and (slow) a two-process run that logs the samples seen
per dataset and resumes mid-epoch exactly.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import lavislite  # noqa: F401
from conftest import DEMO, SMALL, launch, metrics
from lavislite.common.config import Config
from lavislite.common.registry import registry
from lavislite.common.schema import ConfigError
from lavislite.datasets.datasets.samplers import MixturePlan, MixtureSampler, apportion

RATIOS = ["datasets.llava_instruction.sample_ratio=3", "datasets.minigpt4_instruction.sample_ratio=1"]


def _global_draws(sizes: list[int], ratios: list[float], per_epoch: int, world: int, n: int, seed: int = 7) -> list[tuple[int, int]]:
    """The first ``n`` items of the training order as the ranks consume it: step by step, rank 0's item, then rank 1's, ..."""
    samplers = [MixtureSampler(sizes, ratios, per_epoch, num_replicas=world, rank=r, seed=seed) for r in range(world)]
    out: list[tuple[int, int]] = []
    epoch = 0
    while len(out) < n:
        for s in samplers:
            s.set_epoch(epoch)
        for items in zip(*(list(s) for s in samplers)):
            out.extend(items)
        epoch += 1
    return out[:n]


def test_a_3_to_1_mixture_draws_75_percent_and_the_same_sequence_on_1_and_2_processes() -> None:
    # Sizes as the demo's subsets (60 and 60): the 3-share exceeds its set, the 1-share does not.
    sizes, ratios = [60, 60], [3.0, 1.0]
    one = _global_draws(sizes, ratios, 120, world=1, n=2000)
    two = _global_draws(sizes, ratios, 120, world=2, n=2000)
    assert one == two  # the same (index, augmentation seed) in the same global order
    share = sum(index < 60 for index, _ in one) / len(one)
    assert abs(share - 0.75) <= 0.03, share
    # Another seed: another order, the same share.
    other = _global_draws(sizes, ratios, 120, world=1, n=2000, seed=8)
    assert other != one and abs(sum(i < 60 for i, _ in other) / 2000 - 0.75) <= 0.03
    # An epoch length that is not a multiple of the world size: the same draws, the odd last one dropped.
    odd1 = MixtureSampler(sizes, ratios, 121, 1, 0, seed=3)
    odd = [MixtureSampler(sizes, ratios, 121, 2, r, seed=3) for r in range(2)]
    assert [x for pair in zip(*map(list, odd)) for x in pair] == list(odd1)[:120]


def test_each_set_is_drawn_without_replacement_when_its_quota_fits_and_with_replacement_beyond() -> None:
    assert apportion(10, [3, 1]) == [8, 2]  # 7.5 / 2.5: the tie goes to the first source
    assert apportion(7, [1, 1, 1]) == [3, 2, 2]
    plan = MixturePlan([50, 200], [3, 1], 120, seed=1)
    assert plan.quota == [90, 30]
    big, small = plan.source_indices(0, 0).tolist(), plan.source_indices(1, 0).tolist()
    assert len(big) == 90 and len(set(big)) < 90 and set(big) <= set(range(50))  # 90 draws of 50: with replacement
    assert len(small) == 30 and len(set(small)) == 30 and set(small) <= set(range(200))  # 30 of 200: no repeat
    assert plan.source_indices(1, 1).tolist() != small  # a new draw each epoch
    sampler = MixtureSampler([50, 200], [3, 1], 120, seed=1)
    items = [i for i, _ in sampler]
    assert Counter(i >= 50 for i in items) == {False: 90, True: 30}
    assert sorted(i for i in items if i < 50) == sorted(big) and sorted(i - 50 for i in items if i >= 50) == sorted(small)
    seeds = [s for _, s in sampler]
    assert len(set(seeds)) == 120  # a sample drawn twice gets two augmentations


def test_a_mid_epoch_start_yields_the_rest_and_consumed_counts_every_draw_before_it() -> None:
    sampler = MixtureSampler([60, 60], [3, 1], 120, num_replicas=2, rank=1, seed=5)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, start=17)
    assert list(sampler) == whole[17:] and len(sampler) == 60 - 17
    plan = sampler.plan
    src0, src1 = plan.sources(0).tolist(), plan.sources(1).tolist()
    by_hand = Counter(src0[:96]) + Counter(src1[:96]) + Counter(plan.sources(2).tolist()[:34])
    assert plan.consumed(2, 34, per_epoch=96) == [by_hand[0], by_hand[1]]
    assert plan.consumed(3, 0) == [3 * 90, 3 * 30]
    # The interface a stream source relies on: the sequence depends on (seed, epoch, ratios, length) only.
    assert MixturePlan([None, 60], [3, 1], 120, seed=5).sources(2).tolist() == plan.sources(2).tolist()
    with pytest.raises(TypeError, match="stream"):
        MixturePlan([None, 60], [3, 1], 120).source_indices(0, 0)


def _config(*options: str) -> Config:
    return Config(DEMO, [*SMALL, *options], purpose="train")


@pytest.mark.parametrize(
    ("options", "key", "expected"),
    [
        (["datasets.llava_instruction.sample_ratio=0", "datasets.minigpt4_instruction.sample_ratio=1"], "datasets.llava_instruction.sample_ratio", "must be a positive number, got 0.0"),
        (["datasets.llava_instruction.sample_ratio=-2", "datasets.minigpt4_instruction.sample_ratio=1"], "datasets.llava_instruction.sample_ratio", "must be a positive number, got -2.0"),
        (["datasets.llava_instruction.sample_ratio=three"], "datasets.llava_instruction.sample_ratio", "expected a float, got str"),
        (["datasets.llava_instruction.sample_ratio=3"], "datasets.<name>.sample_ratio", "set on llava_instruction but not on minigpt4_instruction"),
        ([*RATIOS, "datasets.vqav2.sample_ratio=1"], "datasets.vqav2.sample_ratio", "vqav2 has no split of run.train_splits (train), so it is never drawn"),
        ([*RATIOS, "run.packing=true"], "run.packing", "does not combine with mixing (datasets.minigpt4_instruction/llava_instruction.sample_ratio)"),
        ([*RATIOS, "run.group_by_length=true"], "run.group_by_length", "does not combine with mixing"),
        (["run.samples_per_epoch=100"], "run.samples_per_epoch", "only used when mixing"),
        ([*RATIOS, "run.samples_per_epoch=0"], "run.samples_per_epoch", "must be at least 1, got 0"),
    ],
)
def test_mixing_config_errors_name_the_key(options: list[str], key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        _config(*options)
    message = str(info.value)
    assert key in message and expected in message, message


def test_the_runners_loaders_mix_by_ratio_and_without_ratios_concatenate_as_before() -> None:
    cfg = _config(*RATIOS, "run.num_workers=0", "run.batch_size_train=4")
    task = registry.get_task_class(cfg.run_cfg.task).setup_task(cfg)
    datasets = task.build_datasets(cfg)
    runner = registry.get_runner_class("runner_base")(cfg, task, None, datasets, "x")
    runner.setup_dataloader()
    assert runner.mixture == [("minigpt4_instruction", 60, 1.0), ("llava_instruction", 60, 3.0)]
    assert (runner.steps_per_epoch, runner.batches_per_epoch) == (30, 30)  # an epoch by default: 120 draws (60 + 60)
    assert runner.samples_seen(1, 0) == {"minigpt4_instruction": 30, "llava_instruction": 90}
    # A shorter epoch (run.samples_per_epoch), read through the real loader: the ids come in a 1:3 mix.
    cfg = _config(*RATIOS, "run.num_workers=0", "run.batch_size_train=4", "run.samples_per_epoch=40")
    runner = registry.get_runner_class("runner_base")(cfg, task, None, datasets, "x")
    runner.setup_dataloader()
    assert (runner.steps_per_epoch, runner.sampler.plan.quota) == (10, [10, 30])
    runner.sampler.set_epoch(0)
    ids = [i for batch in runner.train_loader for i in batch["ids"]]
    assert len(ids) == 40 and sum(i.startswith("llava_") for i in ids) == 30 and sum(i.startswith("mg_") for i in ids) == 10
    first = ids[:12]
    assert runner.samples_seen(0, 3) == {"minigpt4_instruction": sum(i.startswith("mg_") for i in first), "llava_instruction": sum(i.startswith("llava_") for i in first)}

    cfg_iter = _config(*RATIOS, "run.num_workers=0", "run.batch_size_train=4", "run.runner=runner_iter", "run.max_iters=5", "run.iters_per_inner_epoch=5", "run.samples_per_epoch=200")
    runner_iter = registry.get_runner_class("runner_iter")(cfg_iter, task, None, datasets, "y")
    runner_iter.setup_dataloader()
    assert runner_iter.batches_per_epoch == 50 and runner_iter.sampler.plan.quota == [50, 150]  # a data pass: 200 draws

    plain = _config("run.num_workers=0")
    runner_plain = registry.get_runner_class("runner_base")(plain, task, None, datasets, "z")
    runner_plain.setup_dataloader()
    assert runner_plain.mixture == [] and type(runner_plain.sampler).__name__ == "EpochShardSampler"
    assert "samples_seen" not in runner_plain.trainer_state(0, 0) and "mixing" not in runner_plain.trainer_state(0, 0)
    runner_plain.sampler.set_epoch(0)
    assert [i for i, _ in runner_plain.sampler] == [i for i, _ in type(runner_plain.sampler)(120, seed=plain.run_cfg.seed)]  # today's order


RECORDER = '''
import json
import os

from lavislite.common import dist_utils
from lavislite.common.registry import registry
from lavislite.runners.runner_base import RunnerBase


@registry.register_runner("records_mixed_ids")
class RecordsMixedIds(RunnerBase):
    """Appends each optimizer step's sample ids to ids_rank<R>.jsonl."""

    def on_step_end(self, info):
        with open(os.path.join(self.output_dir, f"ids_rank{dist_utils.get_rank()}.jsonl"), "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": info["step"], "ids": list(info["last_batch"]["ids"])}) + "\\n")
'''


@pytest.mark.slow
def test_two_processes_log_the_samples_seen_per_dataset_and_resume_mid_epoch_exactly(tmp_path: Path) -> None:
    """2 processes x batch 4, 24 draws per epoch (3 steps), 5 steps; a resume from step 2 (mid epoch 0) into a new folder."""
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    common = [
        *SMALL, *RATIOS, "run.batch_size_train=4", "run.samples_per_epoch=24", "run.max_steps=5", "run.log_freq=1",
        "run.num_workers=0", "run.save_freq_steps=2", "run.runner=records_mixed_ids", f"run.imports=[{recorder}]", f"run.output_dir={tmp_path}",
    ]
    full = launch("train.py", ["--cfg-path", DEMO, "--options", *common, "run.job_id=full"], nproc=2)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "mixing minigpt4_instruction 1, llava_instruction 3: 24 draws per epoch (minigpt4_instruction 6 of 60, llava_instruction 18 of 60)" in full.stderr
    ckpt = tmp_path / "full" / "checkpoints" / "step_2"
    resumed = launch("train.py", ["--cfg-path", DEMO, "--options", *common, "run.job_id=resumed", f"run.resume_ckpt_path={ckpt}"], nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    reference = {r["step"]: r for r in metrics(tmp_path / "full")}
    assert sorted(reference) == list(range(1, 6))
    # samples_seen: what the ranks' batches really held, summed over both ranks, cumulative.
    seen = Counter()
    steps = [{r["step"]: r["ids"] for r in map(json.loads, (tmp_path / "full" / f"ids_rank{k}.jsonl").read_text().splitlines())} for k in (0, 1)]
    for step in range(1, 6):
        seen.update("llava_instruction" if i.startswith("llava_") else "minigpt4_instruction" for rank in steps for i in rank[step])
        assert reference[step]["samples_seen"] == dict(seen), step
    assert reference[3]["samples_seen"] == {"minigpt4_instruction": 6, "llava_instruction": 18}  # epoch 0 ends: exactly 1:3
    assert json.loads((tmp_path / "full" / "checkpoints" / "step_2" / "trainer_state.json").read_text())["samples_seen"] == reference[2]["samples_seen"]

    after = {r["step"]: r for r in metrics(tmp_path / "resumed")}
    assert sorted(after) == list(range(3, 6))
    for step in range(3, 6):
        assert abs(after[step]["loss"] - reference[step]["loss"]) <= 1e-6, (step, after[step], reference[step])
        assert after[step]["samples_seen"] == reference[step]["samples_seen"], step  # cumulative over the resume
