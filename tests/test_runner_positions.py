"""Where a run stands: max_steps against max_epoch, the checkpoints an epoch end keeps, the exact
sample a resume continues at (also with another batch size), and which weights count as best.

Each test trains the demo model for a few steps in one process (the SMALL options of conftest,
or 16 samples: two steps per epoch). Behaviour is observed from the outside: a runner and a task
registered through ``run.imports`` record the sample ids of every step or return a chosen
validation metric (no test hooks in the library).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DEMO, SMALL, _small_demo_options, all_records, launch, metrics

# 16 + 16 records, batch 8: two optimizer steps per epoch.
TINY = _small_demo_options(8)

HELPERS = '''
import json
import math
import os
import shutil

from lavislite.common import dist_utils
from lavislite.common.registry import registry
from lavislite.runners.runner_base import RunnerBase
from lavislite.tasks.generation_tasks import VQATask


@registry.register_runner("records_ids")
class RecordsIds(RunnerBase):
    """Appends each optimizer step's sample ids (one micro-batch per step) to ids_rank<R>.jsonl."""

    def on_step_end(self, info):
        path = os.path.join(self.output_dir, f"ids_rank{dist_utils.get_rank()}.jsonl")
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": info["step"], "epoch": info["epoch"], "ids": list(info["last_batch"]["ids"])}) + "\\n")


@registry.register_runner("loses_best")
class LosesBest(RunnerBase):
    """Deletes best/ before the end of the run, as a kill in the old save_best's gap did."""

    def finish(self):
        shutil.rmtree(os.path.join(self.output_dir, "best"))
        super().finish()


@registry.register_task("nan_then_finite")
class NaNThenFinite(VQATask):
    """Validation gives agg_metrics NaN, then 0.5 twice, then 0.25 (no generation)."""

    calls = 0

    def evaluation(self, *args, **kwargs):
        value = [math.nan, 0.5, 0.5, 0.25][type(self).calls % 4]
        type(self).calls += 1
        return {"agg_metrics": value}


@registry.register_task("f1_rises_agg_falls")
class F1RisesAggFalls(VQATask):
    """Validation gives agg_metrics 1.0 then 0.1, and a nested random/f1 of 0.2 then 0.9 (no generation)."""

    calls = 0

    def evaluation(self, *args, **kwargs):
        k = type(self).calls % 2
        type(self).calls += 1
        return {"agg_metrics": [1.0, 0.1][k], "random": {"f1": [0.2, 0.9][k]}}
'''


@pytest.fixture()
def helpers(tmp_path: Path) -> Path:
    path = tmp_path / "runner_helpers.py"
    path.write_text(HELPERS)
    return path


def _train(tmp_path: Path, job: str, options: list[str], extra: list[str] | None = None):  # type: ignore[no-untyped-def]
    return launch("train.py", [*(extra or []), "--cfg-path", DEMO, "--options", f"run.output_dir={tmp_path}", f"run.job_id={job}", "run.num_workers=0", *options])


def _ids(run_dir: Path) -> dict[int, list[str]]:
    """Step -> the sample ids it trained on (the last record of a step: a resumed run repeats none here)."""
    return {r["step"]: r["ids"] for r in map(json.loads, (run_dir / "ids_rank0.jsonl").read_text().splitlines())}


def _tags(run_dir: Path) -> set[str]:
    return {p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir()}


def _state(run_dir: Path, tag: str) -> dict:
    return json.loads((run_dir / "checkpoints" / tag / "trainer_state.json").read_text())


def test_max_steps_wins_over_max_epoch_and_every_epoch_end_keeps_a_checkpoint(tmp_path: Path) -> None:
    """Trap (max_steps capped by max_epoch: max_steps=5 ran 2 steps) and defect 4 (save_freq_epochs > 1
    dropped the step checkpoints that fell on epoch ends): 7 steps at 2 per epoch with max_epoch=1."""
    proc = _train(tmp_path, "m", [*TINY, "run.max_epoch=1", "run.max_steps=7", "run.log_freq=1", "run.save_freq_epochs=2", "run.save_freq_steps=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run.max_steps=7 sets the run's length: 4 epoch(s) of 2 step(s) (run.max_epoch=1 is not used)" in proc.stderr
    run_dir = tmp_path / "m"
    records = metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 8))
    assert [r["epoch"] for r in records] == [0, 0, 1, 1, 2, 2, 3]
    # step_2 and step_6 end epochs 0 and 2, which get no epoch checkpoint (save_freq_epochs=2): they are kept;
    # step_4 is left to epoch_1 (same position); step_7 is where max_steps stopped, inside epoch 3.
    assert _tags(run_dir) == {"step_2", "epoch_1", "step_6", "step_7"}
    assert (_state(run_dir, "step_2")["epoch"], _state(run_dir, "step_2")["batch"]) == (0, 2)
    assert (_state(run_dir, "epoch_1")["epoch"], _state(run_dir, "epoch_1")["batch"]) == (2, 0)
    assert (_state(run_dir, "step_7")["epoch"], _state(run_dir, "step_7")["batch"], _state(run_dir, "step_7")["global_step"]) == (3, 1, 7)
    # step_2 holds the end of epoch 0, whatever the batch size: batches of 3 (16 samples are not a whole
    # number of them) go on with epoch 1.
    proc = _train(tmp_path, "b3", [*TINY, "run.batch_size_train=3", "run.max_steps=3", "run.log_freq=1", f"run.resume_ckpt_path={run_dir / 'checkpoints' / 'step_2'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_2'} at epoch 0, batch 5, step 2" in proc.stderr
    assert [(r["step"], r["epoch"]) for r in metrics(tmp_path / "b3")] == [(3, 1)]


def test_a_max_steps_stop_mid_epoch_records_its_position_and_a_resume_with_another_batch_size_continues_at_the_same_sample(
    tmp_path: Path, helpers: Path
) -> None:
    """Defect 5 (a max_steps stop recorded "epoch finished") and defect 3 (a changed batch size repeated or
    skipped samples): 3 steps of 8, step checkpoints every 2 steps, 15 steps per epoch."""
    common = [*SMALL, "run.log_freq=1", "run.runner=records_ids", f"run.imports=[{helpers}]"]
    proc = _train(tmp_path, "a", [*common, "run.max_steps=3", "run.save_freq_steps=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_a = tmp_path / "a"
    assert _tags(run_a) == {"step_2", "step_3"}
    state = _state(run_a, "step_3")
    assert (state["epoch"], state["batch"], state["samples"], state["global_step"]) == (0, 3, 24, 3)
    assert (state["world_size"], state["batch_size_train"], state["accum_grad_iters"]) == (1, 8, 1)
    ids_a = _ids(run_a)
    assert sorted(ids_a) == [1, 2, 3]

    # Extending the run trains the rest of epoch 0, from its fourth batch.
    proc = _train(tmp_path, "a", [*common, "run.max_steps=5", "run.save_freq_steps=2"], extra=["--resume", str(run_a)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {run_a / 'checkpoints' / 'step_3'} at epoch 0, batch 3, step 3" in proc.stderr
    ids = _ids(run_a)
    assert [r["epoch"] for r in metrics(run_a)][-2:] == [0, 0]
    seen = [i for step in range(1, 6) for i in ids[step]]
    assert len(seen) == len(set(seen)) == 40  # five batches of epoch 0, no sample twice

    # From step_2 (16 samples in) with batches of 4: batch 4 of the new size, i.e. the very samples
    # that step 3 trained on at batch 8 come next, in the same order.
    proc = _train(tmp_path, "b4", [*common, "run.batch_size_train=4", "run.max_steps=4", f"run.resume_ckpt_path={run_a / 'checkpoints' / 'step_2'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch 2 of epoch 0 in the checkpoint's batches is batch 4 of 4 x 1 process(es) (the same sample)" in proc.stderr
    ids_b = _ids(tmp_path / "b4")
    assert sorted(ids_b) == [3, 4]
    assert ids_b[3] + ids_b[4] == ids_a[3]

    # Batches of 5 cannot land on sample 16: refused, naming the changed key.
    proc = _train(tmp_path, "b5", [*common, "run.batch_size_train=5", "run.max_steps=4", f"run.resume_ckpt_path={run_a / 'checkpoints' / 'step_2'}"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "run.batch_size_train 8 -> 5" in proc.stderr and "16 sample(s) of epoch 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_nan_validation_never_becomes_the_best(tmp_path: Path, helpers: Path) -> None:
    """Defect 8: agg_metrics NaN at the first validation, then 0.5 twice, then 0.25: the NaN is never the best,
    and the tie goes to the later, longer-trained weights (the third epoch's), as on a saturated validation set."""
    proc = _train(tmp_path, "nan", [*TINY, "run.max_epoch=4", "run.valid_splits=[val]", "run.task=nan_then_finite", f"run.imports=[{helpers}]"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "nan"
    valid = [r for r in all_records(run_dir) if "valid" in r]
    assert [r["best"] for r in valid] == [False, True, True, False]
    assert json.loads((run_dir / "best" / "info.json").read_text()) == {"global_step": 6, "agg_metrics": 0.5}
    assert "agg_metrics is nan, not a number the best weights can be kept by; the best stays none yet" in proc.stderr
    assert "validation at step 6: agg_metrics 0.5000 (equals the best; these longer-trained weights replace it)" in proc.stderr
    assert "using the best weights (step 6, agg_metrics 0.5000)" in proc.stderr
    assert _state(run_dir, "epoch_3")["best_metric"] == 0.5


def test_run_best_metric_keeps_best_by_that_number_not_by_the_mean_agg_metrics(tmp_path: Path, helpers: Path) -> None:
    """Issue 17: run.best_metric=vqav2/val/random/f1 keeps the second epoch (f1 0.9), where agg_metrics would keep the first."""
    proc = _train(
        tmp_path, "f1", [*TINY, "run.max_epoch=2", "run.valid_splits=[val]", "run.task=f1_rises_agg_falls", f"run.imports=[{helpers}]", "run.best_metric=vqav2/val/random/f1"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "f1"
    valid = [r for r in all_records(run_dir) if "valid" in r]
    assert [(r["agg_metrics"], r["best_value"], r["best"]) for r in valid] == [(1.0, 0.2, True), (0.1, 0.9, True)]
    assert json.loads((run_dir / "best" / "info.json").read_text()) == {"global_step": 4, "vqav2/val/random/f1": 0.9}
    assert "using the best weights (step 4, vqav2/val/random/f1 0.9000)" in proc.stderr
    assert _state(run_dir, "epoch_1")["best_metric_name"] == "vqav2/val/random/f1"


def test_a_missing_best_folder_at_the_end_is_an_error_not_a_silent_release_of_the_last_weights(tmp_path: Path, helpers: Path) -> None:
    """Defect 12: validation kept a best, best/ is gone when the run ends."""
    proc = _train(
        tmp_path, "lost", [*TINY, "run.max_epoch=2", "run.valid_splits=[val]", "run.task=nan_then_finite", "run.runner=loses_best", f"run.imports=[{helpers}]"]
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{tmp_path / 'lost' / 'best'} is missing" in proc.stderr and "agg_metrics 0.5000" in proc.stderr
    assert not (tmp_path / "lost" / "release").exists()


def test_max_steps_wins_under_runner_iter_too(tmp_path: Path) -> None:
    """The trap, for runner_iter: run.max_steps sets the length there as well (over run.max_iters)."""
    proc = _train(tmp_path, "it", [*TINY, "run.runner=runner_iter", "run.max_iters=2", "run.iters_per_inner_epoch=2", "run.max_steps=5", "run.log_freq=1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run.max_steps=5 sets the run's length (run.max_iters=2 is not used)" in proc.stderr
    assert [r["step"] for r in metrics(tmp_path / "it")] == [1, 2, 3, 4, 5]
    assert "iter_5" in _tags(tmp_path / "it")
