"""lavislite release files loaded through ``model.finetuned``: nothing trained is lost, silently or otherwise."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from lavislite.models import load_model
from lavislite.models.blip2_qwen import Blip2Qwen

VISION = {"image_size": 28, "patch_size": 14, "hidden_size": 32, "num_layers": 1, "num_heads": 4, "intermediate_size": 64}
QFORMER = {"num_query_token": 4, "hidden_size": 32, "num_layers": 1, "num_heads": 4, "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 16}
TINY_LLM = {"vocab_size": 151936, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}
BASE = {"vision": VISION, "qformer": QFORMER, "llm_model": "qwen2", "llm_init": "random", "llm_config": TINY_LLM, "tokenizer": "builtin:qwen2.5"}
LORA = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _lora_release(tmp_path: Path) -> tuple[Blip2Qwen, Path]:
    torch.manual_seed(1)
    trained = Blip2Qwen.from_config({**BASE, "lora": LORA, "freeze_llm": True})
    with torch.no_grad():  # lora_B starts at zero; make every trained tensor distinctive
        for name, p in trained.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p))
    path = tmp_path / "checkpoint_release.pth"
    torch.save({"model": trained.trainable_state_dict(), "global_step": 7}, path)
    return trained, path


def test_lora_release_through_model_finetuned_restores_every_lora_weight(tmp_path: Path) -> None:
    """Issue 9.2: weights load after apply_lora, so lora_A / lora_B find their places."""
    trained, path = _lora_release(tmp_path)
    torch.manual_seed(2)
    loaded = Blip2Qwen.from_config({**BASE, "lora": LORA, "freeze_llm": True, "finetuned": str(path)})
    report = loaded.load_reports[-1]
    lora_keys = sorted(n for n, p in trained.named_parameters() if p.requires_grad and ".lora_" in n)
    assert len(lora_keys) == 4 and set(lora_keys) <= set(report.loaded)
    assert report.unused == {} and report.missing == []
    got = dict(loaded.named_parameters())
    for name, p in trained.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(got[name], p, atol=0, rtol=0)


def test_lora_release_into_a_model_without_lora_is_an_error(tmp_path: Path) -> None:
    _, path = _lora_release(tmp_path)
    with pytest.raises(ValueError, match=r"holds LoRA weights: set model.lora.enabled=true"):
        Blip2Qwen.from_config({**BASE, "finetuned": str(path)})


def test_full_llm_release_loads_into_a_lora_model_base_weights(tmp_path: Path) -> None:
    """Key names match with and without peft's wrapping (base_model.model., base_layer)."""
    torch.manual_seed(3)
    full = Blip2Qwen.from_config({**BASE, "freeze_llm": False})
    torch.save({"model": full.trainable_state_dict()}, tmp_path / "full.pth")
    torch.manual_seed(4)
    lora = Blip2Qwen.from_config({**BASE, "lora": LORA, "freeze_llm": True, "finetuned": str(tmp_path / "full.pth")})
    base = lora.llm.get_base_model()
    torch.testing.assert_close(base.model.layers[0].self_attn.q_proj.base_layer.weight, full.llm.model.layers[0].self_attn.q_proj.weight)


def test_finetuned_alone_loads_and_load_finetuned_false_is_honoured_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``finetuned`` set is loaded (also through load_model); ``load_finetuned: false`` keeps it out, loudly."""
    _, path = _lora_release(tmp_path)
    model = load_model("blip2_qwen", "demo", **{**BASE, "lora": LORA, "freeze_llm": True, "finetuned": str(path)})
    assert model.load_reports and model.load_reports[-1].path == str(path)
    logger = logging.getLogger("lavislite")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="lavislite"):
            skipped = Blip2Qwen.from_config({**BASE, "lora": LORA, "freeze_llm": True, "finetuned": str(path), "load_finetuned": False})
    finally:
        logger.removeHandler(caplog.handler)
    assert skipped.load_reports == []
    assert "model.load_finetuned is false: NOT loading it" in caplog.text


def test_load_model_and_preprocess_with_finetuned_gives_the_trained_loss(demo_run: Path) -> None:
    """Issue 10: ``finetuned=`` alone loads the release, and the load report is printed in the Python API too."""
    import json

    from conftest import DEMO_DATA
    from lavislite.datasets.datasets.instruction_dataset import collate_chat, parse_minigpt4
    from lavislite.models import load_model_and_preprocess

    release = demo_run / "release"
    records = json.loads((DEMO_DATA / "minigpt4_instruction.json").read_text())[:8]

    def loss_of(model, vis, txt) -> float:  # type: ignore[no-untyped-def]
        from PIL import Image

        batch = []
        for i, rec in enumerate(records):
            s = parse_minigpt4(rec, f"rec{i}")
            enc = txt["eval"](s.turns, num_images=len(s.images), sample_id=s.id)
            images = torch.stack([vis["eval"](Image.open(DEMO_DATA / "images" / p)) for p in s.images])
            batch.append({"id": s.id, "image": images, "input_ids": torch.tensor(enc["input_ids"]), "labels": torch.tensor(enc["labels"])})
        with torch.no_grad():
            return float(model(collate_chat(batch, model.tokenizer.pad_token_id))["loss"])

    torch.manual_seed(0)
    from conftest import demo_model_overrides

    trained = load_model_and_preprocess("blip2_qwen", "demo", is_eval=True, finetuned=str(release), **demo_model_overrides())
    random_init = load_model_and_preprocess("blip2_qwen", "demo", is_eval=True, **demo_model_overrides())
    assert loss_of(*trained) < 3.0 < 10.0 < loss_of(*random_init)


def test_the_python_api_prints_the_load_report(demo_run: Path) -> None:
    import subprocess
    import sys

    from conftest import REPO, demo_model_overrides, run_env

    release = demo_run / "release"
    code = (
        "from lavislite.models import load_model_and_preprocess; "
        f"load_model_and_preprocess('blip2_qwen', 'demo', finetuned={str(release)!r}, **{demo_model_overrides()!r})"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The demo trains on a frozen pretrained ViT, which a release does not hold: the
    # release's config names it, so it loads first (said so), then the release.
    vit = REPO / "projects" / "demo" / "data" / "vit_pretrained.safetensors"
    assert f"{release} was trained on top of model.vit_pretrained={vit} (frozen, not in the release): loading that first" in proc.stderr
    assert f"loaded 30 tensors from {vit} (lavislite; holds vit, ln_vision)" in proc.stderr
    assert f"loaded 75 tensors from {release} (lavislite; holds ln_vision, qformer, queries, proj, llm)" in proc.stderr
