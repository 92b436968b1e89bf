"""End-to-end training through train.py: the demo, torchrun ZeRO-2/3, config errors.

These run the real entry point in subprocesses (real DeepSpeed on its CPU
accelerator, real Qwen tokenizer, real demo files).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_env

DEMO = str(REPO / "projects" / "demo" / "train.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train(args: list[str], cwd: Path | str = REPO, nproc: int = 1, timeout: int = 420) -> subprocess.CompletedProcess[str]:
    if nproc == 1:
        cmd = [sys.executable, str(REPO / "train.py"), *args]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(REPO / "train.py"), *args,
        ]
    return subprocess.run(cmd, cwd=cwd, env=run_env(), capture_output=True, text=True, timeout=timeout)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _check_run_folder(run_dir: Path, n_ckpt_tags: int) -> None:
    assert (run_dir / "config.yaml").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    tags = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert len(tags) == n_ckpt_tags
    release = torch.load(run_dir / "checkpoint_release.pth", weights_only=False)
    assert release["model"] and all(isinstance(v, torch.Tensor) for v in release["model"].values())


def test_demo_trains_and_loss_halves(tmp_path: Path) -> None:
    """The README demo as shipped: 8 epochs, single process, ZeRO-2 fp32."""
    proc = _train(["--cfg-path", DEMO, "--options", f"run.output_dir={tmp_path}", "run.job_id=demo"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "demo"
    _check_run_folder(run_dir, n_ckpt_tags=1)
    records = _metrics(run_dir)
    assert [r["step"] for r in records] == list(range(5, 121, 5))
    assert {"step", "epoch", "loss", "lr", "samples_per_sec", "tokens_per_sec"} <= set(records[0])
    first, last = records[0]["loss"], records[-1]["loss"]
    assert last <= first / 2
    # Pinned values of this run (fixed seed, CPU fp32). The first window is
    # nearly independent of hardware; later ones drift a little across CPUs.
    assert first == pytest.approx(11.70, abs=0.05)
    assert last == pytest.approx(0.88, abs=0.25)
    assert records[-1]["lr"] == pytest.approx(1.0e-4)


@pytest.mark.parametrize("stage", [2, 3])
def test_torchrun_two_processes_zero_stage(tmp_path: Path, stage: int) -> None:
    """torchrun --nproc_per_node=2 with the ZeRO stage picked by --options."""
    proc = _train(
        [
            "--cfg-path", DEMO, "--options", f"run.output_dir={tmp_path}", "run.job_id=z",
            f"run.deepspeed_config.zero_optimization.stage={stage}", "run.max_epoch=2", "run.log_freq=7",
        ],
        nproc=2,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"DeepSpeed ZeRO-{stage}, fp32, world size 2, 14 optimizer steps (7 per epoch)" in proc.stderr
    run_dir = tmp_path / "z"
    _check_run_folder(run_dir, n_ckpt_tags=1)
    losses = [r["loss"] for r in _metrics(run_dir)]
    assert len(losses) == 2
    # Same seed, same data order: ZeRO-2 and ZeRO-3 give the same fp32 losses.
    assert losses[0] == pytest.approx(11.47, abs=0.05)
    assert losses[1] < losses[0]


def test_config_typo_fails_fast_before_building_anything(tmp_path: Path) -> None:
    start = time.time()
    proc = _train(["--cfg-path", DEMO, "--options", "model.frezee_vit=True", f"run.output_dir={tmp_path}"])
    elapsed = time.time() - start
    assert proc.returncode != 0
    assert "model.frezee_vit" in proc.stderr and "did you mean 'model.freeze_vit'" in proc.stderr
    assert elapsed < 20
    assert not any(tmp_path.iterdir())  # nothing was built or written
    assert "parameters:" not in proc.stderr


def test_unknown_arch_and_dataset_fail_listing_close_matches(tmp_path: Path) -> None:
    proc = _train(["--cfg-path", DEMO, "--options", "model.arch=blip2_qwen2", "datasets.llava_instruct.type=default"])
    assert proc.returncode != 0
    assert "Unknown model 'blip2_qwen2'. Did you mean: 'blip2_qwen'?" in proc.stderr
    assert "Unknown builder 'llava_instruct'. Did you mean: 'llava_instruction'" in proc.stderr


def _evaluate(args: list[str], nproc: int) -> subprocess.CompletedProcess[str]:
    script = str(REPO / "evaluate.py")
    if nproc == 1:
        cmd = [sys.executable, script, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1", f"--master_port={_free_port()}", script, *args]
    return subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=300)


def test_evaluate_shards_lose_and_repeat_no_sample(tmp_path: Path) -> None:
    """59 test samples over 2 ranks: every sample scored once, same loss as 1 rank."""
    records = json.loads((REPO / "projects" / "demo" / "data" / "minigpt4_instruction.json").read_text())[:59]
    (tmp_path / "test59.json").write_text(json.dumps(records))
    proc = _train(["--cfg-path", DEMO, "--options", f"run.output_dir={tmp_path}", "run.job_id=t", "run.max_steps=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    common = [
        "--cfg-path", DEMO, "--checkpoint", str(tmp_path / "t" / "checkpoint_release.pth"), "--options",
        f"datasets.minigpt4_instruction.build_info.annotations.test.storage={tmp_path / 'test59.json'}",
        "run.test_splits=[test]", "run.batch_size_eval=4", "run.num_workers=0", f"run.output_dir={tmp_path}",
    ]
    results = []
    for nproc in (1, 2):
        proc = _evaluate([*common, f"run.job_id=e{nproc}"], nproc)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads((tmp_path / f"e{nproc}" / "evaluate.json").read_text()))
    assert results[0]["minigpt4_instruction/test/n_samples"] == results[1]["minigpt4_instruction/test/n_samples"] == 59
    assert results[1]["minigpt4_instruction/test/loss"] == pytest.approx(results[0]["minigpt4_instruction/test/loss"], abs=1e-4)
    assert 5 < results[0]["minigpt4_instruction/test/loss"] < 12.5  # two steps in: still near ln(151936) = 11.9


def test_resume_continues_step_lr_data_order_and_losses(tmp_path: Path) -> None:
    """Resuming from the epoch-0 checkpoint repeats epoch 1 of the uninterrupted run."""
    common = ["--cfg-path", DEMO, "--options", f"run.output_dir={tmp_path}", "run.max_epoch=2", "run.save_freq_epochs=1"]
    proc = _train([*common, "run.job_id=full"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _train([*common, "run.job_id=resumed", f"run.resume_ckpt_path={tmp_path / 'full' / 'checkpoints' / 'epoch_0'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at epoch 1, step 15" in proc.stderr
    full = [r for r in _metrics(tmp_path / "full") if r["epoch"] == 1]
    resumed = _metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [r["step"] for r in full] == [20, 25, 30]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in full]
    for a, b in zip(resumed, full):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)


def test_resume_from_a_missing_checkpoint_fails_clearly(tmp_path: Path) -> None:
    proc = _train(["--cfg-path", DEMO, "--options", f"run.output_dir={tmp_path}", "run.job_id=r", f"run.resume_ckpt_path={tmp_path / 'nope' / 'epoch_3'}"])
    assert proc.returncode != 0
    assert f"run.resume_ckpt_path: no DeepSpeed checkpoint at {tmp_path / 'nope' / 'epoch_3'}" in proc.stderr
