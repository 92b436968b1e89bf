"""Issue 15, defects 9 and 10: chat, web chat, export and evaluation use what the run trained with.

A release records the text processor of its training datasets (system
message, max_len), and chat / export render that prompt, not
``model.preprocess``'s "You are a helpful assistant.". The model runs in the
run's ``run.precision`` unless ``--dtype`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from conftest import DEMO_DATA, launch

SYSTEM = "You are Shapey, who names colours and shapes."


def run_config(path: Path, precision: str | None = "bf16", systems: tuple[str, ...] = (SYSTEM,), max_len: int = 200) -> Path:
    """A run config training the demo model with a custom system message (one dataset per message) and an eval-only set."""
    datasets: dict[str, Any] = {}
    for k, (builder, ann) in enumerate([("minigpt4_instruction", "minigpt4_instruction.json"), ("llava_instruction", "llava_instruction.json")][: len(systems)]):
        datasets[builder] = {
            "build_info": {"annotations": {"train": {"storage": str(DEMO_DATA / ann)}}, "images": {"storage": str(DEMO_DATA / "images")}},
            "vis_processor": {"train": {"name": "blip_image_eval", "image_size": 64}},
            "text_processor": {"train": {"name": "qwen_chat", "max_len": max_len, "system_message": systems[k]}},
        }
    datasets["vqav2"] = {  # evaluation only: its text processor says nothing of training
        "build_info": {"annotations": {"test": {"storage": str(DEMO_DATA / "eval_vqa.json")}}, "images": {"storage": str(DEMO_DATA / "images")}},
        "prompt": "{question}",
        "vis_processor": {"eval": {"name": "blip_image_eval", "image_size": 64}},
        "text_processor": {"eval": {"name": "qwen_chat", "max_len": 256, "system_message": "Eval-only message."}},
    }
    config = {"model": {"arch": "blip2_qwen", "model_type": "demo"}, "datasets": datasets,
              "run": {"task": "vqa", "test_splits": ["test"], "output_dir": str(path.parent / "out"), **({"precision": precision} if precision else {})}}
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    return path


def merged(path: Path) -> dict[str, Any]:
    import lavislite  # noqa: F401
    from lavislite.common.config import Config

    return OmegaConf.to_container(Config(str(path)).config, resolve=True)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def release(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release as the runner writes it (write_release with the merged run config), trained in bf16."""
    from lavislite.models.release import write_release

    folder = tmp_path_factory.mktemp("trained")
    cfg = merged(run_config(folder / "run.yaml"))
    write_release(str(folder / "release"), tiny_model.trainable_state_dict(), cfg)
    return folder / "release"


def chat_args(**kw: Any) -> argparse.Namespace:
    base = {"checkpoint": None, "cfg_path": None, "options": [], "imports": [], "device": "cpu", "dtype": None, "system": None}
    return argparse.Namespace(**{**base, **kw})


def system_of(model: Any) -> str:
    ids = model.chat_inputs([], [{"role": "user", "content": "Hello"}])["input_ids"][0].tolist()
    text = model.tokenizer.decode(ids)
    return text.split("<|im_start|>system\n", 1)[1].split("<|im_end|>", 1)[0]


def test_release_records_the_training_text_processor(release: Path) -> None:
    stored = yaml.safe_load((release / "config.yaml").read_text())
    for split in ("train", "eval"):
        spec = stored["model"]["preprocess"]["text_processor"][split]
        assert (spec["name"], spec["system_message"], spec["max_len"]) == ("qwen_chat", SYSTEM, 200)


def test_chat_from_the_release_renders_its_system_message_in_its_precision(release: Path) -> None:
    from lavislite.chat import load_chat_model

    model = load_chat_model(chat_args(checkpoint=str(release)))
    assert system_of(model) == SYSTEM  # before: "You are a helpful assistant."
    assert model.chat_processors()[1].cfg.max_len == 200
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # run.precision bf16; before: fp32
    reply = model.chat([torch.zeros(3, 64, 64)], [{"role": "user", "content": "<image>\nWhat colour?"}], max_new_tokens=3)
    assert isinstance(reply, str)
    fp32 = load_chat_model(chat_args(checkpoint=str(release), dtype="fp32"))  # --dtype overrides
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}


def test_chat_from_a_run_config_uses_its_datasets_processor_and_precision(release: Path) -> None:
    from lavislite.chat import load_chat_model

    model = load_chat_model(chat_args(cfg_path=str(release.parent / "run.yaml"), checkpoint=str(release)))
    assert system_of(model) == SYSTEM
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert load_chat_model(chat_args(cfg_path=str(release.parent / "run.yaml"), checkpoint=str(release), dtype="fp16")).llm.dtype == torch.float16


def test_export_chat_template_uses_the_trained_system_message(release: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from lavislite.models.hf_export import export_hf
    from lavislite.models.release import load_from_checkpoint

    model, _, _ = load_from_checkpoint(str(release))
    export_hf(model, str(tmp_path / "hf"))
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    rendered = tok.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True)
    assert rendered.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")
    # The export reads back with the same processor.
    again, _, _ = load_from_checkpoint(str(tmp_path / "hf"))
    assert system_of(again) == SYSTEM


def test_disagreeing_training_datasets_warn_and_the_first_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from lavislite.models.release import trained_text_processor

    cfg = merged(run_config(tmp_path / "two.yaml", systems=(SYSTEM, "Another message.")))
    with caplog.at_level(logging.WARNING, logger="lavislite"):
        spec = trained_text_processor(cfg)
    assert spec is not None and spec["system_message"] == SYSTEM
    warned = [r.getMessage() for r in caplog.records if "disagree" in r.getMessage()]
    assert len(warned) == 1 and "datasets.minigpt4_instruction: 'You are Shapey" in warned[0] and "datasets.llava_instruction: 'Another message.'" in warned[0]
    assert "vqav2" not in warned[0]  # the evaluation-only dataset does not count


@pytest.mark.slow  # trains the demo model
def test_evaluate_runs_in_the_run_precision_and_dtype_overrides(release: Path, tmp_path: Path) -> None:
    """evaluate.py: run.precision bf16 -> bf16 weights; --dtype fp32 -> fp32; a checkpoint's own precision when the config names none."""
    two = json.loads((DEMO_DATA / "eval_vqa.json").read_text())[:2]
    (tmp_path / "two.json").write_text(json.dumps(two))
    cfg = str(release.parent / "run.yaml")
    common = [f"datasets.vqav2.build_info.annotations.test.storage={tmp_path / 'two.json'}", f"run.output_dir={tmp_path}", "run.generate.max_new_tokens=2",
              "run.batch_size_eval=2"]
    proc = launch("evaluate.py", ["--cfg-path", cfg, "--checkpoint", str(release), "--options", *common, "run.job_id=bf16"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "evaluating in bf16 (run.precision): weights torch.bfloat16" in proc.stderr
    proc = launch("evaluate.py", ["--cfg-path", cfg, "--checkpoint", str(release), "--dtype", "fp32", "--options", *common, "run.job_id=fp32"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "evaluating in fp32 (--dtype): weights torch.float32" in proc.stderr
    # An evaluation config that names no precision scores a checkpoint in the precision its run trained in.
    plain = run_config(tmp_path / "no_precision.yaml", precision=None)
    proc = launch("evaluate.py", ["--cfg-path", str(plain), "--checkpoint", str(release), "--options", *common, "run.job_id=stored"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"evaluating in bf16 (run.precision of {release}): weights torch.bfloat16" in proc.stderr
