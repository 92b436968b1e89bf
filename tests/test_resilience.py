"""Never lose a run: kill -9 and resume, a save that dies half-way, a failing rank, two nodes, non-finite losses.

Faults are injected from the outside, as a user would meet them: SIGKILL to the
whole process group, or a task / runner registered through ``run.imports``
(no test hooks in the library).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import DEMO, REPO, SMALL, TWO_PROC, free_port, launch, launch_cmd, metrics, run_env

FAULTS = '''
import os
import signal

from lavislite.common.registry import registry
from lavislite.runners.runner_base import RunnerBase
from lavislite.tasks.generation_tasks import VQATask


@registry.register_runner("dies_while_saving")
class DiesWhileSaving(RunnerBase):
    """SIGKILLs itself after writing step_4's files, before the checkpoint is marked complete."""

    def checkpoint_written(self, tag_dir):
        if tag_dir.endswith("step_4"):
            os.kill(os.getpid(), signal.SIGKILL)


@registry.register_task("fails_on_rank1")
class FailsOnRank1(VQATask):
    calls = 0

    def train_step(self, model, samples):
        type(self).calls += 1
        if int(os.environ.get("RANK", 0)) == 1 and type(self).calls == 3:
            raise RuntimeError("injected failure on rank 1 at step 3")
        return super().train_step(model, samples)


@registry.register_task("nan_for_one_sample")
class NaNForOneSample(VQATask):
    """The loss of any batch holding sample mg_colour_0003 is NaN."""

    def train_step(self, model, samples):
        out = super().train_step(model, samples)
        if "mg_colour_0003" in samples["ids"]:
            out["loss"] = out["loss"] * float("nan")
        return out
'''


@pytest.fixture()
def faults(tmp_path: Path) -> Path:
    path = tmp_path / "faults.py"
    path.write_text(FAULTS)
    return path


def _by_step(records: list[dict]) -> dict[int, dict]:
    """The last record of each step (a resumed run logs the steps after its checkpoint again)."""
    return {r["step"]: r for r in records}


def _release(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "release" / "model.safetensors")


def _kill_when(cmd: list[str], run_dir: Path, ready: str, min_step: int, timeout: float = 400) -> int:
    """Starts ``cmd`` in its own process group; SIGKILLs the whole group once ``ready`` is complete and ``min_step`` is logged."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + timeout
    killed_at = -1
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before the kill: {proc.stderr.read()[-3000:] if proc.stderr else ''}")
            marker = run_dir / "checkpoints" / ready / "COMPLETE"
            logged = metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
            if marker.exists() and logged and logged[-1]["step"] >= min_step:
                killed_at = logged[-1]["step"]
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the run never reached the kill point")
    finally:
        kill_tree(proc.pid)
        proc.wait()
    return killed_at


def kill_tree(pid: int) -> None:
    """SIGKILLs a process and all its descendants at once, as a preempted node would.

    torchrun starts each worker in a session of its own, so killing torchrun's
    process group alone would leave the workers running.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_kill_9_mid_epoch_then_auto_resume_equals_the_uninterrupted_run(tmp_path: Path, zero2_run: Path) -> None:
    """Issue 8.1: two processes, step checkpoints every 3 steps, SIGKILL mid-epoch 0, ``--resume RUN_FOLDER``."""
    run_dir = tmp_path / "k"
    args = ["--cfg-path", DEMO, "--options", f"run.output_dir={tmp_path}", "run.job_id=k", *TWO_PROC, "run.save_freq_steps=3"]
    killed_at = _kill_when(launch_cmd("train.py", args, nproc=2), run_dir, ready="step_3", min_step=4)
    assert 4 <= killed_at < 7  # inside epoch 0 (7 steps per epoch)
    proc = launch("train.py", ["--resume", str(run_dir), "--cfg-path", DEMO, "--options", *TWO_PROC, "run.save_freq_steps=3"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed_from = int(proc.stderr.split("resumed from ")[1].split(" step ")[1].split()[0])
    assert resumed_from in (3, 6)
    reference, resumed = _by_step(metrics(zero2_run)), _by_step(metrics(run_dir))
    assert sorted(resumed) == sorted(reference) == list(range(1, 15))  # metrics.jsonl continued in the same file
    for step in range(resumed_from + 1, 15):
        assert abs(resumed[step]["loss"] - reference[step]["loss"]) <= 1e-6, (step, resumed[step], reference[step])
        assert resumed[step]["lr"] == reference[step]["lr"]
    final, expected = _release(run_dir), _release(zero2_run)
    assert final.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(final[key], expected[key], atol=1e-6, rtol=0)


ITER = [*SMALL, "run.runner=runner_iter", "run.max_iters=8", "run.iters_per_inner_epoch=4", "run.log_freq=1", "run.num_workers=1", "run.save_freq_epochs=1"]


def test_kill_9_and_resume_under_runner_iter(tmp_path: Path) -> None:
    """Issue 8.1 for runner_iter: 8 steps of 16 samples cross a pass over the 120 samples (7 steps)."""
    full = launch("train.py", ["--cfg-path", DEMO, "--options", f"run.output_dir={tmp_path}", "run.job_id=full", *ITER], nproc=2)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "8 optimizer steps (4 per epoch)" in full.stderr
    run_dir = tmp_path / "k"
    args = ["--cfg-path", DEMO, "--options", f"run.output_dir={tmp_path}", "run.job_id=k", *ITER, "run.save_freq_steps=3"]
    _kill_when(launch_cmd("train.py", args, nproc=2), run_dir, ready="step_3", min_step=4)
    proc = launch("train.py", ["--resume", str(run_dir), "--cfg-path", DEMO, "--options", *ITER, "run.save_freq_steps=3"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed_from = int(proc.stderr.split("resumed from ")[1].split(" step ")[1].split()[0])
    reference, resumed = _by_step(metrics(tmp_path / "full")), _by_step(metrics(run_dir))
    assert sorted(resumed) == sorted(reference) == list(range(1, 9))
    assert {r["epoch"] for r in reference.values()} == {0, 1}  # the run crossed into a second pass over the data
    for step in range(resumed_from + 1, 9):
        assert abs(resumed[step]["loss"] - reference[step]["loss"]) <= 1e-6, (step, resumed[step], reference[step])
    final, expected = _release(run_dir), _release(tmp_path / "full")
    for key in expected:
        torch.testing.assert_close(final[key], expected[key], atol=1e-6, rtol=0)


def test_a_save_killed_half_way_is_skipped_and_resume_takes_the_previous_one(tmp_path: Path, faults: Path) -> None:
    """Issue 8.2: step_4's files are written but the process dies before its COMPLETE marker."""
    common = [*SMALL, "run.max_epoch=1", "run.max_steps=6", "run.save_freq_steps=2", "run.log_freq=1", "run.num_workers=0", f"run.imports=[{faults}]"]
    proc = launch("train.py", ["--cfg-path", DEMO, "--options", f"run.output_dir={tmp_path}", "run.job_id=s", "run.runner=dies_while_saving", *common])
    assert proc.returncode == -signal.SIGKILL
    ckpts = tmp_path / "s" / "checkpoints"
    assert (ckpts / "step_2" / "COMPLETE").exists()
    assert (ckpts / "step_4").is_dir() and not (ckpts / "step_4" / "COMPLETE").exists()
    assert (ckpts / "latest").read_text() == "step_2"
    proc = launch("train.py", ["--resume", str(tmp_path / "s"), "--cfg-path", DEMO, "--options", *common])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipping incomplete checkpoint {ckpts / 'step_4'}" in proc.stderr
    assert f"resumed from {ckpts / 'step_2'} at epoch 0, batch 2, step 2" in proc.stderr
    assert (ckpts / "step_4" / "COMPLETE").exists()  # rewritten whole this time
    assert sorted(_by_step(metrics(tmp_path / "s"))) == list(range(1, 7))


def test_a_failing_rank_ends_every_rank_with_its_traceback(tmp_path: Path, faults: Path) -> None:
    """Issue 8.3: rank 1 raises at step 3; both processes exit non-zero within the timeout + 30 s."""
    start = time.time()
    proc = launch(
        "train.py",
        ["--cfg-path", DEMO, "--options", *SMALL, f"run.output_dir={tmp_path}", "run.job_id=f", "run.task=fails_on_rank1", f"run.imports=[{faults}]",
         "run.dist_timeout_minutes=0.5", "run.num_workers=0"],
        nproc=2, timeout=300,
    )
    elapsed = time.time() - start
    assert proc.returncode != 0
    assert "RuntimeError: injected failure on rank 1 at step 3" in proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert elapsed < 30 + 30 + 60  # timeout + 30 s, plus start-up on this 2-core machine


def test_two_nodes_on_one_machine_give_the_one_launch_losses(tmp_path: Path, zero2_run: Path) -> None:
    """Issue 8.4: ``torchrun --nnodes=2 --node_rank=K --master_addr=...``, one process per node."""
    port = free_port()
    args = ["--cfg-path", DEMO, "--options", f"run.output_dir={tmp_path}", "run.job_id=nodes", *TWO_PROC]
    nodes = [
        subprocess.Popen(
            launch_cmd("train.py", args, nproc=1, torchrun_args=["--nnodes=2", f"--node_rank={k}", "--master_addr=127.0.0.1", f"--master_port={port}"]),
            cwd=REPO, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for k in (0, 1)
    ]
    errors = [n.communicate(timeout=600)[1] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    assert "world size 2" in errors[0]
    two_nodes, one_launch = metrics(tmp_path / "nodes"), metrics(zero2_run)
    assert [r["step"] for r in two_nodes] == [r["step"] for r in one_launch]
    for a, b in zip(two_nodes, one_launch):
        assert abs(a["loss"] - b["loss"]) <= 1e-6


def test_nonfinite_loss_stop_names_the_step_and_samples(tmp_path: Path, faults: Path) -> None:
    proc = launch("train.py", ["--cfg-path", DEMO, "--options", *SMALL, f"run.output_dir={tmp_path}", "run.job_id=n", "run.task=nan_for_one_sample",
                               f"run.imports=[{faults}]", "run.num_workers=0"])
    assert proc.returncode != 0
    assert "NonFiniteLossError: non-finite loss at optimizer step" in proc.stderr
    assert "'mg_colour_0003'" in proc.stderr and "run.on_nonfinite_loss=stop" in proc.stderr


def test_nonfinite_loss_skip_counts_and_stops_after_the_limit(tmp_path: Path, faults: Path) -> None:
    """``skip``: the batch adds a zero gradient and is counted; one more than max_nonfinite_steps stops the run."""
    proc = launch("train.py", ["--cfg-path", DEMO, "--options", *SMALL, f"run.output_dir={tmp_path}", "run.job_id=n", "run.task=nan_for_one_sample",
                               f"run.imports=[{faults}]", "run.num_workers=0", "run.on_nonfinite_loss=skip", "run.max_nonfinite_steps=1",
                               "run.max_epoch=2", "run.log_freq=1"])
    assert proc.returncode != 0
    assert "2 non-finite losses, more than run.max_nonfinite_steps=1" in proc.stderr
    records = metrics(tmp_path / "n")
    counts = [r["nonfinite_skipped"] for r in records]
    assert counts[0] in (0, 1) and counts[-1] == 1 and counts == sorted(counts)  # counted once, in epoch 0
    assert all(r["loss"] == r["loss"] for r in records)  # no NaN reached the logged loss or the weights
    assert len(records) >= 15  # epoch 0 trained through


def test_a_resume_on_another_world_size_under_zero2_is_refused_naming_it(tmp_path: Path, zero2_run: Path) -> None:
    """Issue 15.3: ZeRO-2 optimizer partitions of 2 processes, resumed on 1: a clear refusal, not DeepSpeed's traceback."""
    ckpt = zero2_run / "checkpoints" / "epoch_0"
    proc = launch("train.py", ["--cfg-path", DEMO, "--options", *TWO_PROC, f"run.output_dir={tmp_path}", "run.job_id=w1", f"run.resume_ckpt_path={ckpt}"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"cannot resume {ckpt} with world_size 2 -> 1: its ZeRO-2 optimizer state is partitioned over 2 process(es)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_resume_on_another_world_size_continues_at_the_exact_sample(tmp_path: Path) -> None:
    """Issue 15.3: 2 processes x batch 4 stop after 16 samples (ZeRO-0: the optimizer state is whole);
    one process with batch 8 continues with the 17th, exactly as a one-process run of batch 8 trains it."""
    from test_runner_positions import HELPERS

    helpers = tmp_path / "runner_helpers.py"
    helpers.write_text(HELPERS)
    common = [*SMALL, "run.runner=records_ids", f"run.imports=[{helpers}]", "run.num_workers=0", "run.deepspeed_config.zero_optimization.stage=0", "run.log_freq=1"]

    def ids(run_dir: Path, rank: int = 0) -> dict[int, list[str]]:
        return {r["step"]: r["ids"] for r in map(json.loads, (run_dir / f"ids_rank{rank}.jsonl").read_text().splitlines())}

    two = launch("train.py", ["--cfg-path", DEMO, "--options", *common, f"run.output_dir={tmp_path}", "run.job_id=two", "run.batch_size_train=4", "run.max_steps=2"], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    state = json.loads((tmp_path / "two" / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert (state["batch"], state["samples"], state["world_size"], state["batch_size_train"]) == (2, 16, 2, 4)
    one = launch("train.py", ["--cfg-path", DEMO, "--options", *common, f"run.output_dir={tmp_path}", "run.job_id=one", "run.max_steps=3"])
    assert one.returncode == 0, one.stderr[-3000:]
    resumed = launch("train.py", ["--cfg-path", DEMO, "--options", *common, f"run.output_dir={tmp_path}", "run.job_id=res", "run.max_steps=3",
                                  f"run.resume_ckpt_path={tmp_path / 'two' / 'checkpoints' / 'step_2'}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "batch 2 of epoch 0 in the checkpoint's batches is batch 2 of 8 x 1 process(es) (the same sample)" in resumed.stderr
    ref, r0, r1 = ids(tmp_path / "one"), ids(tmp_path / "two", 0), ids(tmp_path / "two", 1)
    # the two ranks together trained the one-process run's first 16 samples (rank-strided) ...
    for step in (1, 2):
        assert sorted(r0[step] + r1[step]) == sorted(ref[step])
    # ... and the resumed run goes on with the 17th to 24th
    assert ids(tmp_path / "res") == {3: ref[3]}
