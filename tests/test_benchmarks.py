"""The benchmark scripts run and write the figures they promise (values, not timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def test_the_minigpt4qwen_baseline_tokenises_in_the_step_and_pads_every_sample_to_512(tmp_path: Path) -> None:
    """The --compare baseline ran into the runner's token-mean count (it read ``labels`` before the step tokenised)."""
    out = tmp_path / "mg.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--variant", "minigpt4qwen", "--steps", "1", "--warmup", "1",
         "--batch-size", "2", "--num-workers", "0", "--out", str(out)],
        cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tokens = json.loads(out.read_text())["tokens"]
    assert tokens["samples"] == 2 and tokens["padded_positions"] == 2 * 512
    assert 0 < tokens["real_tokens"] < 2 * 512


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


CONTRACT = {"samples_per_sec", "real_tokens_per_sec", "real_token_fraction", "peak_memory_bytes"}


def test_train_throughput_compare_writes_the_contract_and_packing_wastes_less(tmp_path: Path) -> None:
    # Two variants on a tiny LLaVA-shaped set, two rounds of one step each: the mechanics (the real
    # runner in two paused-and-resumed processes), the JSON contract, and a behaviour (not a time).
    out = tmp_path / "cmp.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--compare", "--datasets", "llava_shaped", "--variants", "pad", "pack",
         "--steps", "2", "--rounds", "2", "--warmup", "1", "--batch-size", "2", "--llava-samples", "48", "--num-workers", "0", "--out", str(out)],
        cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    variants = data["data"]["llava_shaped"]["variants"]
    assert set(variants) == {"pad", "pack"}
    for figures in variants.values():
        assert CONTRACT <= set(figures)
        assert figures["samples_per_sec"] > 0 and figures["real_tokens_per_sec"] > figures["samples_per_sec"]
        assert 0 < figures["real_token_fraction"] <= 1 and figures["peak_memory_bytes"] > 10_000_000
        assert len(figures["step_time_per_round_s"]) == 2  # one timed step in each of the two rounds
    pad, pack = variants["pad"], variants["pack"]
    assert pad["samples"] == 2 * 2  # 2 timed steps x 2 samples
    assert pack["samples"] > pad["samples"]  # 2 rows of up to 512 tokens hold several conversations each
    assert pack["real_token_fraction"] > pad["real_token_fraction"]
    assert data["data"]["llava_shaped"]["ratios"]["to_pad"]["pack"]["real_tokens_per_sec"] == pytest.approx(pack["real_tokens_per_sec"] / pad["real_tokens_per_sec"])
    assert data["checks"]["pack_real_token_fraction"] == pack["real_token_fraction"]
    assert data["checks"]["pack_over_minigpt4qwen_ge_2"] is None  # the baseline did not run


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU --full-size trains (minutes); here it must refuse clearly")
def test_train_throughput_full_size_builds_its_config_and_needs_cuda(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--full-size", "--steps", "1", "--out", str(tmp_path / "fs.json")],
        cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: --full-size needs a CUDA GPU" in proc.stderr
    assert "qwen2.5-1.5b-instruct with a 28-layer, 1536-wide random LLM, precision bf16, ZeRO-2" in proc.stderr
    assert not (tmp_path / "fs.json").exists()


def test_data_throughput_reads_json_and_converted_shards_and_counts_every_batch(tmp_path: Path) -> None:
    """Issue 13: both paths (JSON, shards made by the converter) read through the real datasets, per worker count."""
    out = tmp_path / "data.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "data_throughput.py"), "--workers", "1", "--batches", "3", "--warmup", "1", "--batch-size", "4", "--out", str(out)],
        cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert json.loads(proc.stdout) == data
    for path in ("json", "shards"):
        run = data["runs"][path]["1"]
        assert run["samples"] == 3 * 4 and run["samples_per_sec"] > 0
        assert run["samples_per_sec_per_worker"] == pytest.approx(run["samples_per_sec"])
    assert data["settings"]["samples"] == len(json.loads((REPO / "projects" / "demo" / "data" / "llava_instruction.json").read_text()))
    assert data["shards_vs_json_per_worker"]["1"] > 0
