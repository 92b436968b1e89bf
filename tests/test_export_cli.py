"""``python -m lavislite.export`` as a user runs it (issue 15): its output holds no DeepSpeed accelerator warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import REPO, run_env


def test_export_prints_only_its_own_lines(tiny_model: Any, tmp_path: Path) -> None:
    from lavislite.models.release import write_release

    write_release(str(tmp_path / "release"), tiny_model.trainable_state_dict(), {"model": {"arch": "blip2_qwen", "model_type": "demo"}})
    env = run_env()
    env.pop("DS_ACCELERATOR")  # as a user runs it: DeepSpeed detects the accelerator itself
    proc = subprocess.run([sys.executable, "-m", "lavislite.export", "--checkpoint", str(tmp_path / "release"), "--out", str(tmp_path / "hf")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accelerator" not in (proc.stdout + proc.stderr).lower()  # before: "Setting accelerator to CPU. If you have GPU ..." on stdout
    assert proc.stdout.splitlines() == [f"exported {tmp_path / 'release'} -> {tmp_path / 'hf'} (104 tensors, 1 shard(s), LoRA: none)"]
