"""Hugging Face BLIP-2 folders (sharded safetensors) and lavislite release files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lavislite.models.blip2_qwen import Blip2Qwen
from lavislite.models.checkpoint import OTHER_LLM, load_checkpoint

VISION = {"image_size": 28, "patch_size": 14, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 48}
QFORMER = {"num_query_token": 6, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 16}
TINY_LLM = {"vocab_size": 151936, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}


def _hf_blip2(folder: Path):  # type: ignore[no-untyped-def]
    """A tiny transformers Blip2ForConditionalGeneration saved in sharded safetensors."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig

    torch.manual_seed(5)
    cfg = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=14).to_dict(),
        qformer_config=Blip2QFormerConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, encoder_hidden_size=32, max_position_embeddings=16).to_dict(),
        text_config=OPTConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2, word_embed_proj_dim=16).to_dict(),
        num_query_tokens=6,
    )
    hf = Blip2ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # make every weight non-trivial
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(folder, max_shard_size="40KB", safe_serialization=True)
    return hf


def test_hf_blip2_sharded_folder_matches_transformers_qformer(tmp_path: Path) -> None:
    hf = _hf_blip2(tmp_path / "hf")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    # transformers uses the vision config's eps (1e-6) for post_layernorm; match it.
    model = Blip2Qwen.from_config(
        {"vision": {**VISION, "ln_vision_eps": 1e-6}, "qformer": QFORMER, "llm_model": "qwen2", "llm_init": "random", "llm_config": TINY_LLM, "tokenizer": "builtin:qwen2.5", "pretrained": str(tmp_path / "hf")}
    ).eval()
    report = model.load_reports[0]
    assert report.format == "hf_blip2" and report.missing == []
    assert report.unused and set(report.unused.values()) == {OTHER_LLM}  # the OPT LM and its projection
    assert all(k.startswith(("language_model.", "language_projection.")) for k in report.unused)
    image = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_img = hf.vision_model(pixel_values=image).last_hidden_state
        ref = hf.qformer(query_embeds=hf.query_tokens.expand(2, -1, -1), encoder_hidden_states=ref_img, encoder_attention_mask=torch.ones(ref_img.shape[:-1], dtype=torch.long)).last_hidden_state
        img = model.vision(pixel_values=image).last_hidden_state
        ours = model.qformer(query_embeds=model.query_tokens.expand(2, -1, -1), encoder_hidden_states=img, encoder_attention_mask=torch.ones(img.shape[:-1], dtype=torch.long)).last_hidden_state
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert ref.abs().mean() > 0.1  # not a trivially small output


def test_release_file_round_trip(tmp_path: Path) -> None:
    cfg = {"vision": VISION, "qformer": QFORMER, "llm_model": "qwen2", "llm_init": "random", "llm_config": TINY_LLM, "tokenizer": "builtin:qwen2.5", "freeze_queries": False}
    torch.manual_seed(1)
    a = Blip2Qwen.from_config(cfg)
    torch.save({"model": a.trainable_state_dict()}, tmp_path / "checkpoint_release.pth")
    torch.manual_seed(2)
    b = Blip2Qwen.from_config({**cfg, "load_finetuned": True, "finetuned": str(tmp_path / "checkpoint_release.pth")})
    report = b.load_reports[-1]
    assert report.format == "lavislite" and sorted(report.loaded) == ["proj.bias", "proj.weight", "query_tokens"]
    torch.testing.assert_close(b.query_tokens, a.query_tokens)
    torch.testing.assert_close(b.proj.weight, a.proj.weight)


def test_missing_weights_file_names_path_and_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"weights not found: .*eva_vit_g.pth .*download it from https://storage.googleapis.com/.*eva_vit_g.pth"):
        Blip2Qwen.from_config({"vision": VISION, "qformer": QFORMER, "llm_model": "qwen2", "llm_init": "random", "llm_config": TINY_LLM, "tokenizer": "builtin:qwen2.5", "vit_pretrained": str(tmp_path / "eva_vit_g.pth")})


def test_report_lists_unfilled_model_keys(tmp_path: Path) -> None:
    hf = _hf_blip2(tmp_path / "hf")
    del hf
    from safetensors.torch import load_file

    shards = sorted((tmp_path / "hf").glob("*.safetensors"))
    sd = {}
    for s in shards:
        sd.update(load_file(s))
    sd.pop("qformer.layernorm.weight")
    model = Blip2Qwen.from_config({"vision": {**VISION, "ln_vision_eps": 1e-6}, "qformer": QFORMER, "llm_model": "qwen2", "llm_init": "random", "llm_config": TINY_LLM, "tokenizer": "builtin:qwen2.5"})
    report = load_checkpoint(model, "partial", state_dict=sd)
    assert report.missing == ["qformer.layernorm.weight"]
    assert "NOT FILLED: 1 model key(s): qformer.layernorm.weight" in report.summary()
