"""Runner pieces that need no process group: the DeepSpeed config fill, resume positions, atomic folders."""

from __future__ import annotations

from pathlib import Path

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


# -- resume positions (issue 15.3) ------------------------------------------------------------


def _state(batch: int, world: int, bs: int, accum: int = 1, epoch: int = 0) -> dict:
    return {"epoch": epoch, "batch": batch, "samples": batch * bs * world, "world_size": world, "batch_size_train": bs, "accum_grad_iters": accum}


def test_a_resume_position_converts_exactly_by_samples_consumed() -> None:
    from lavislite.runners.checkpoints import resume_batch

    now = {"world_size": 1, "batch_size_train": 8, "accum_grad_iters": 1}
    assert resume_batch("ck", _state(3, 1, 8), now, whole_windows=True) == 3  # nothing changed
    # 2 processes x 4 x 6 batches = 48 samples = 6 batches of 8 on one process
    assert resume_batch("ck", _state(6, 2, 4), now, whole_windows=True) == 6
    # 48 samples on 4 processes of 3: batch 4; with accumulation 2 it starts a window
    assert resume_batch("ck", _state(6, 2, 4), {"world_size": 4, "batch_size_train": 3, "accum_grad_iters": 2}, whole_windows=True) == 4
    # an epoch end (batch 0) converts whatever changed
    assert resume_batch("ck", _state(0, 2, 4, epoch=3), {"world_size": 3, "batch_size_train": 7, "accum_grad_iters": 5}, whole_windows=True) == 0
    # checkpoints from before `samples` was recorded: the batch size is assumed unchanged
    assert resume_batch("ck", {"epoch": 0, "batch": 4, "world_size": 2}, now | {"batch_size_train": 4}, whole_windows=True) == 8


def test_a_resume_position_that_does_not_convert_is_refused_naming_the_changed_keys() -> None:
    from lavislite.common.errors import CheckpointError
    from lavislite.runners.checkpoints import resume_batch

    with pytest.raises(CheckpointError) as info:
        resume_batch("out/j/checkpoints/step_3", _state(3, 2, 4), {"world_size": 1, "batch_size_train": 5, "accum_grad_iters": 1}, whole_windows=True)
    msg = str(info.value)
    assert "cannot resume out/j/checkpoints/step_3 at its exact sample with world_size 2 -> 1, run.batch_size_train 4 -> 5" in msg
    assert "24 sample(s) of epoch 0 (3 batch(es) of 4 x 2 process(es))" in msg
    # whole number of batches, but not the start of an accumulation window (runner_base restarts windows each epoch)
    now = {"world_size": 1, "batch_size_train": 8, "accum_grad_iters": 2}
    with pytest.raises(CheckpointError, match=r"run.accum_grad_iters 1 -> 2.*batch 3 .* does not start an accumulation window of 2"):
        resume_batch("ck", _state(3, 1, 8), now, whole_windows=True)
    assert resume_batch("ck", _state(3, 1, 8), now, whole_windows=False) == 3  # runner_iter: windows span passes


# -- the one atomic folder writer (issue 15.12) ------------------------------------------------

_WATCH = """
import os, sys, time
folder, stop, out = sys.argv[1:]
checks = misses = 0
while not os.path.exists(stop):
    checks += 1
    if not os.path.isfile(os.path.join(folder, "info.json")):
        misses += 1
open(out, "w").write(f"{checks} {misses}")
"""


def _watch_replacements(tmp_path, replace) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Replaces ``best/`` 30 times while another process checks, as fast as it can, that it is there."""
    import subprocess
    import sys
    import time

    best, stop, out = tmp_path / "best", tmp_path / "stop", tmp_path / "watch.txt"
    replace(str(best), 0)
    watcher = subprocess.Popen([sys.executable, "-c", _WATCH, str(best), str(stop), str(out)])
    time.sleep(0.5)
    for i in range(1, 31):
        replace(str(best), i)
    stop.write_text("")
    watcher.wait(timeout=30)
    checks, misses = map(int, out.read_text().split())
    assert checks > 100
    return checks, misses


def _payload(folder: str, i: int) -> None:
    import os

    for k in range(200):  # enough files that deleting the old folder takes a while
        with open(os.path.join(folder, f"part{k}.bin"), "wb") as fh:
            fh.write(bytes(64))
    with open(os.path.join(folder, "info.json"), "w") as fh:
        fh.write(str(i))


def test_best_is_never_missing_while_it_is_replaced(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import shutil

    import torch

    from lavislite.common.io import atomic_folder
    from lavislite.runners.checkpoints import read_best_info, write_best

    def old_save_best(final: str, i: int) -> None:  # what save_best did: remove, then move in
        tmp = f"{final}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        _payload(tmp, i)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def helper(final: str, i: int) -> None:
        with atomic_folder(final) as tmp:
            _payload(tmp, i)

    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    _, misses = _watch_replacements(tmp_path / "old", old_save_best)
    assert misses > 0  # the watcher does see the old gap
    _, misses = _watch_replacements(tmp_path / "new", helper)
    assert misses == 0
    assert (tmp_path / "new" / "best" / "info.json").read_text() == "30"
    assert not [p for p in os.listdir(tmp_path / "new") if p.startswith(".best")]  # no leftovers

    write_best(str(tmp_path / "run" / "best"), {"w": torch.ones(2)}, {"global_step": 3, "agg_metrics": 0.5})
    write_best(str(tmp_path / "run" / "best"), {"w": torch.zeros(2)}, {"global_step": 6, "agg_metrics": 0.7})
    assert read_best_info(str(tmp_path / "run" / "best")) == {"global_step": 6, "agg_metrics": 0.7}
    assert read_best_info(str(tmp_path / "run" / "nothing")) is None


def test_atomic_folder_refuses_a_foreign_folder_and_keeps_the_old_one_on_an_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from lavislite.common.io import atomic_folder, atomic_write

    target = tmp_path / "release"
    with atomic_folder(str(target)) as tmp:
        (Path(tmp) / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic_folder(str(target)) as tmp:
        (Path(tmp) / "a.txt").write_text("two")
        raise RuntimeError("half-way")
    assert (target / "a.txt").read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["release"]
    with pytest.raises(FileExistsError, match="holds other files"), atomic_folder(str(target), replaceable=lambda _: False):
        pass
    atomic_write(str(tmp_path / "release" / "x.json"), "{}")
    assert (target / "x.json").read_text() == "{}"
