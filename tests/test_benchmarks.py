"""The benchmark scripts run and write the figures they promise (values, not timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_env


def test_train_throughput_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "tp.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--steps", "2", "--warmup", "1", "--num-workers", "0", "--out", str(out)],
        cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert json.loads(proc.stdout) == data  # stdout carries exactly the JSON
    tp, tokens, memory = data["throughput"], data["tokens"], data["memory"]
    assert tp["samples_per_sec"] > 0 and tp["tokens_per_sec"] > tp["samples_per_sec"]
    assert tokens["samples"] == 2 * 8  # 2 timed steps x batch 8
    assert 0 < tokens["real_token_fraction"] <= 1
    assert tokens["real_tokens"] <= tokens["padded_positions"]
    assert memory["peak_memory_kind"] == "cpu_max_rss" and memory["peak_memory_bytes"] > 10_000_000


def test_loss_memory_chunked_lean_and_full_agree_and_chunked_uses_least(tmp_path: Path) -> None:
    out = tmp_path / "lm.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "loss_memory.py"), "--hidden", "64", "--seq", "128", "--batch", "4", "--dtype", "fp32", "--device", "cpu", "--out", str(out)],
        cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["loss_check"]["agree"] is True
    chunked, lean, full = data["variants"]["chunked"], data["variants"]["lean"], data["variants"]["full"]
    assert abs(lean["loss"] - full["loss"]) <= 1e-5 * abs(full["loss"])
    assert abs(chunked["loss"] - full["loss"]) <= 1e-5 * abs(full["loss"])
    assert full["peak_increase_bytes"] > lean["peak_increase_bytes"] > chunked["peak_increase_bytes"] > 0
    # 25% supervised: the full-logits peak is several times the lean one
    assert data["ratio_full_over_lean"]["peak_increase"] > 2
    # the shipped (chunked) loss's peak over full logits', and the tile it used (default 8 MiB of fp32 logits)
    assert data["ratio_over_full"]["chunked"] == round(chunked["peak_increase_bytes"] / full["peak_increase_bytes"], 4)
    assert data["config"]["chunk_bytes"] == 8 << 20 and data["config"]["supervised_targets"] == 4 * 32
    assert data["full_logits_fp32_bytes"] == 4 * 128 * 151936 * 4


def test_generation_throughput_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "gen.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "generation_throughput.py"), "--batch-sizes", "1", "2", "--batches", "1", "--new-tokens", "3",
         "--eval-procs", "1", "--out", str(out)],
        cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    for key, batch in (("batch_1", 1), ("batch_2", 2)):
        fig = data["generate"][key]
        assert fig["samples"] == batch and fig["new_tokens"] == 3 * batch  # min_new_tokens forces every reply's length
        assert fig["new_tokens_per_sec"] == fig["new_tokens"] / fig["seconds"]
    evaluation = data["evaluate_demo_caption"]["procs_1"]
    assert evaluation["samples"] == len(json.loads((REPO / "projects" / "demo" / "data" / "eval_caption.json").read_text()))
    assert evaluation["eval_samples_per_sec"] > 0
