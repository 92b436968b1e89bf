"""A user error under torchrun: printed once, the worker's exit code 2 reported by torchrun (README)."""

from __future__ import annotations

from pathlib import Path

from conftest import DEMO, SMALL, launch

RANK1_DATA_ERROR = '''
import os

from lavislite.common.errors import DataError
from lavislite.common.registry import registry
from lavislite.tasks.generation_tasks import VQATask


@registry.register_task("bad_sample_on_rank1")
class BadSampleOnRank1(VQATask):
    def train_step(self, model, samples):
        if int(os.environ.get("RANK", 0)) == 1:
            raise DataError(f"sample {samples['ids'][0]}: injected bad record on rank 1")
        return super().train_step(model, samples)
'''


def test_a_config_error_under_torchrun_is_printed_once_and_torchrun_reports_exit_code_2() -> None:
    proc = launch("train.py", ["--cfg-path", DEMO, "--options", "run.max_epochz=1"], nproc=2, timeout=120)
    assert proc.stderr.count("--options run.max_epochz=1: unknown key; did you mean 'run.max_epoch'?") == 1, proc.stderr[-3000:]
    assert "error (rank 0): Invalid config" in proc.stderr
    # torchrun's own summary names the worker's code; torchrun itself exits 1 (README, "A user error ...")
    assert "exitcode  : 2" in proc.stderr
    assert proc.returncode == 1


def test_an_error_only_one_rank_meets_is_still_printed(tmp_path: Path) -> None:
    faults = tmp_path / "faults.py"
    faults.write_text(RANK1_DATA_ERROR)
    proc = launch(
        "train.py",
        ["--cfg-path", DEMO, "--options", *SMALL, f"run.output_dir={tmp_path}", "run.job_id=r1", "run.task=bad_sample_on_rank1",
         f"run.imports=[{faults}]", "run.num_workers=0", "run.dist_timeout_minutes=1"],
        nproc=2, timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("injected bad record on rank 1") == 1, proc.stderr[-3000:]
    assert "error (rank 1): sample " in proc.stderr
