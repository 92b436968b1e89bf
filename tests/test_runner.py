"""Runner pieces that need no process group: the DeepSpeed config fill."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from lavislite.common.schema import ConfigError
from lavislite.runners.runner_base import RunnerConfig, fill_deepspeed_config


def _run(**kw):  # type: ignore[no-untyped-def]
    return OmegaConf.structured(RunnerConfig(**kw))


def test_auto_and_missing_fields_come_from_the_run_section(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ds.json"
    path.write_text('{"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 3, "overlap_comm": true}}')
    run = _run(batch_size_train=4, accum_grad_iters=2, grad_clip=0.5, precision="bf16", deepspeed_config_path=str(path), deepspeed_config={"zero_optimization": {"stage": 2}})
    ds = fill_deepspeed_config(run, world_size=8)
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 4 * 2 * 8
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    # inline settings override the file key by key
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}


def test_contradicting_values_name_both_keys() -> None:
    run = _run(batch_size_train=4, precision="fp32", deepspeed_config={"train_micro_batch_size_per_gpu": 16, "bf16": {"enabled": True}})
    with pytest.raises(ConfigError) as info:
        fill_deepspeed_config(run, world_size=1)
    msg = str(info.value)
    assert "run.deepspeed_config.train_micro_batch_size_per_gpu = 16 contradicts run.batch_size_train = 4" in msg
    assert "run.deepspeed_config.bf16.enabled = True contradicts run.precision = 'fp32'" in msg
