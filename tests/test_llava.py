"""The llava family: towers read from timm names and Hugging Face folders, feature layers, weights in and out.

Every tower here is a real model at a tiny size: transformers' ``CLIPVisionModel``
(QuickGELU, as OpenAI's CLIP) and ``SiglipVisionModel`` written with
``save_pretrained``, timm's ViT and EVA02 built by name with small sizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from lavislite.common.schema import ConfigError
from lavislite.models import load_model
from lavislite.models.checkpoint import OTHER_LLM
from lavislite.models.hf_export import ExportError, export_hf
from lavislite.models.llava import POOL_HEAD, TEXT_TOWER, Llava
from lavislite.models.release import load_from_checkpoint

TOWER = {"hidden_size": 32, "intermediate_size": 72, "num_hidden_layers": 3, "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
# Qwen2.5-7B-Instruct's shapes (config.json as published), for meta-device builds.
QWEN25_7B = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def hf_towers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random CLIPVisionModel (quick_gelu) and SiglipVisionModel, each in a save_pretrained folder."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**TOWER, hidden_act="quick_gelu")).save_pretrained(root / "clip")
    SiglipVisionModel(SiglipVisionConfig(**TOWER)).save_pretrained(root / "siglip")
    return {"clip": root / "clip", "siglip": root / "siglip"}


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("layer", [-2, -1])
@pytest.mark.parametrize("strategy", ["default", "full"])
def test_hf_tower_folder_gives_transformers_hidden_states(hf_towers: dict[str, Path], kind: str, layer: int, strategy: str) -> None:
    """Issue 16.1: vision_features == transformers' hidden_states[layer] (class token dropped for default), 1e-5."""
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(hf_towers[kind]).eval()
    model = load_model("llava", "demo", vision={"tower": str(hf_towers[kind]), "vision_feature_layer": layer, "vision_feature_select_strategy": strategy})
    model.eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[layer]
        ours = model.vision_features(pixels)
    if kind == "clip" and strategy == "default":
        reference = reference[:, 1:]
    assert ours.shape == reference.shape == (2, 16 + (kind == "clip" and strategy == "full"), 32)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    assert model.num_image_tokens == ours.shape[1]
    # Every key reported: all used, but SigLIP's attention-pooling head; nothing left unfilled.
    (report,) = model.load_reports
    assert report.format == "hf_vision_tower" and not report.missing
    assert set(report.unused.values()) == ({POOL_HEAD} if kind == "siglip" else set())
    assert all(k.startswith("head.") for k in report.unused)
    assert {n for n, _ in model.vision.named_parameters()} <= {k[len("vision.") :] for k in report.loaded}


def test_feature_layer_out_of_range_and_embeddings_are_refused(hf_towers: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"vision_feature_layer: 4 is not a block output of this 3-block tower"):
        load_model("llava", "demo", vision={"tower": str(hf_towers["clip"]), "vision_feature_layer": 4})
    with pytest.raises(ConfigError, match=r"vision_feature_layer: 0 is the patch embeddings"):
        load_model("llava", "demo", vision={"vision_feature_layer": 0})


def test_unknown_timm_name_names_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"neither a folder nor a timm model; did you mean vit_base_patch16_clip_224"):
        load_model("llava", "demo", vision={"tower": "vit_base_patch16_clip_22"})


def test_blocks_past_the_feature_layer_never_train() -> None:
    """With the tower unfrozen, only what runs trains: the last block and the final norm do not at layer -2."""
    model = load_model("llava", "demo", freeze_vit=False, vision={"vision_feature_layer": -2})
    trainable = {n for n, p in model.vision.named_parameters() if p.requires_grad}
    assert any(n.startswith("blocks.0.") for n in trainable)
    assert not any(n.startswith(("blocks.1.", "norm.")) for n in trainable)
    assert set(model.parts()) == {"vit", "proj", "llm"}


def test_full_size_configs_build_on_meta_with_published_counts() -> None:
    """Issue 16.5: CLIP ViT-L/14-336 as transformers counts CLIPVisionModel; mlp2x_gelu 1024x3584+3584+3584x3584+3584."""
    from lavislite.common.config import load_model_config

    counts = {}
    for model_type in Llava.PRETRAINED_MODEL_CONFIG_DICT:
        if model_type == "demo":
            continue
        llm = QWEN25_7B if "7b" in model_type else {**QWEN25_7B, "hidden_size": 1536, "intermediate_size": 8960, "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936}
        overrides = {"llm_model": "qwen2", "llm_init": "random", "llm_config": llm, "tokenizer": "builtin:qwen2.5", "load_pretrained": False}
        with torch.device("meta"):
            model = Llava.from_config(load_model_config("llava", model_type, overrides))
        counts[model_type] = {part: sum(p.numel() for p in params) for part, params in model.parts().items()}
        counts[model_type]["tokens"] = model.num_image_tokens
    clip7 = counts["clip336_qwen2.5-7b-instruct"]
    assert clip7["vit"] == 303_507_456
    assert clip7["proj"] == 1024 * 3584 + 3584 + 3584 * 3584 + 3584 == 16_522_240
    assert clip7["llm"] == 7_615_616_512  # Qwen2.5-7B's own count
    assert clip7["tokens"] == 576
    assert counts["clip336_qwen2.5-1.5b-instruct"]["proj"] == 1024 * 1536 + 1536 + 1536 * 1536 + 1536
    assert counts["siglip384_qwen2.5-7b-instruct"]["tokens"] == 729  # 27 x 27, no class token


def test_mm_projector_bin_and_timm_checkpoint_load(tmp_path: Path) -> None:
    """LLaVA-1.5's mm_projector.bin fills the projector; a timm checkpoint the tower, its head reported unused."""
    model = load_model("llava", "demo")
    projector = {f"model.mm_projector.{k}": torch.randn_like(v) for k, v in model.proj.state_dict().items()}
    torch.save(projector, tmp_path / "mm_projector.bin")
    tower = {k: torch.randn_like(v) for k, v in model.vision.state_dict().items()}
    tower["head.weight"] = torch.zeros(10, 64)
    from safetensors.torch import save_file

    save_file(tower, str(tmp_path / "tower.safetensors"))
    loaded = load_model("llava", "demo", pretrained=str(tmp_path / "mm_projector.bin"), vision={"pretrained": str(tmp_path / "tower.safetensors")})
    tower_report, proj_report = loaded.load_reports
    assert (tower_report.format, proj_report.format) == ("timm_tower", "llava_mm_projector")
    assert tower_report.unused == {"head.weight": POOL_HEAD} and not tower_report.missing
    assert not proj_report.unused and not proj_report.missing and proj_report.parts == ["proj"]
    for key, value in loaded.proj.state_dict().items():
        assert torch.equal(value, projector[f"model.mm_projector.{key}"])
    for key, value in loaded.vision.state_dict().items():
        assert torch.equal(value, tower[key])


def test_hf_clip_model_folder_reads_its_vision_tower_and_reports_the_text_tower(tmp_path: Path) -> None:
    """A whole CLIPModel folder (as openai/clip-vit-large-patch14-336 is published) as vision.pretrained."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(3)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 99}
    vision = {**TOWER, "hidden_size": 64, "num_hidden_layers": 2, "image_size": 64, "patch_size": 16, "intermediate_size": 128, "hidden_act": "quick_gelu"}
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(tmp_path / "clip")
    model = load_model("llava", "demo", vision={"pretrained": str(tmp_path / "clip")})
    (report,) = model.load_reports
    assert not report.missing
    assert {r for r in report.unused.values()} == {TEXT_TOWER, POOL_HEAD}
    assert report.unused["visual_projection.weight"] == POOL_HEAD


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A random demo llava exported as a transformers LlavaForConditionalGeneration folder."""
    root = tmp_path_factory.mktemp("llava_export")
    torch.manual_seed(4)
    model = load_model("llava", "demo").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    summary = export_hf(model, str(root / "export"))
    return {"model": model, "folder": root / "export", "summary": summary}


def test_export_round_trip_and_transformers_forward_match(exported: dict[str, Any]) -> None:
    """The export reads back into lavislite exactly, and transformers' LlavaForConditionalGeneration gives lavislite's logits."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model, folder = exported["model"], exported["folder"]
    assert exported["summary"]["hf_class"] == "LlavaForConditionalGeneration"
    config = json.loads((folder / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "clip_vision_model" and config["vision_config"]["hidden_act"] == "quick_gelu"
    assert (config["vision_feature_layer"], config["vision_feature_select_strategy"], config["image_token_index"]) == (-1, "default", 151655)
    back, _, _ = load_from_checkpoint(str(folder))
    ours, theirs = model.state_dict(), back.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)

    hf = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    image = Image.new("RGB", (80, 50), (30, 160, 40))  # not square: LLaVA's pad-to-square
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    batch = processor(images=[image], text=[processor.apply_chat_template(messages, add_generation_prompt=True)], return_tensors="pt")
    inputs = model.chat_inputs([image], messages)
    assert batch["input_ids"].tolist() == inputs["input_ids"].tolist()
    torch.testing.assert_close(batch["pixel_values"], inputs["image"], atol=1e-6, rtol=0)
    with torch.no_grad():
        hf_logits = hf(**batch).logits
        hidden = model.llm.get_decoder()(inputs_embeds=model.embed(inputs), attention_mask=inputs["attention_mask"]).last_hidden_state
        our_logits = model.llm.get_output_embeddings()(hidden)
    torch.testing.assert_close(hf_logits, our_logits, atol=1e-5, rtol=0)


def test_export_refuses_towers_and_projectors_transformers_lacks(tmp_path: Path) -> None:
    """EVA02 (no transformers counterpart) and a linear projector leave as the release folder; the message says so."""
    from lavislite.common.config import load_model_config

    cfg = load_model_config("llava", "demo")
    cfg.vision.tower, cfg.vision.tower_kwargs = "eva02_tiny_patch14_224.mim_in22k", {"img_size": 28, "depth": 2}  # replaces the demo's tiny-ViT sizes
    eva = Llava.from_config(cfg)
    with pytest.raises(ExportError, match=r"Eva.*no transformers counterpart.*release folder"):
        export_hf(eva, str(tmp_path / "eva"))
    linear = load_model("llava", "demo", projector="linear")
    with pytest.raises(ExportError, match=r"model.projector=linear: .*\(mlp2x_gelu\) only"):
        export_hf(linear, str(tmp_path / "linear"))
    assert not (tmp_path / "eva").exists() and not (tmp_path / "linear").exists()


def test_hf_llava_of_another_llm_loads_the_tower_and_sets_the_rest_aside(tmp_path: Path) -> None:
    """An HF LLaVA-1.5 folder with a Llama LM (Vicuna's place): the CLIP tower loads, LLM and projector are another LLM's."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=16, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=320, hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4)
    LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=300)).save_pretrained(tmp_path / "llava15")
    model = load_model("llava", "demo", pretrained=str(tmp_path / "llava15"))
    (report,) = model.load_reports
    assert report.format == "hf_llava" and report.parts == ["vit"] and not report.missing
    assert set(report.unused.values()) == {OTHER_LLM}
    assert any(k.startswith("model.multi_modal_projector.") for k in report.unused)
    assert any(k.startswith("model.language_model.") for k in report.unused)


def test_llava_image_processor_matches_transformers_llava_processing() -> None:
    """pad (LLaVA-1.5) and crop (CLIP) give transformers' LlavaImageProcessorPil pixels (1e-6)."""
    from transformers import LlavaImageProcessorPil

    from lavislite.processors import build_processor
    from lavislite.processors.transforms import CLIP_MEAN, CLIP_STD

    image = Image.effect_noise((90, 60), 70).convert("RGB")
    for aspect, pad in (("pad", True), ("crop", False)):
        ours = build_processor({"name": "llava_image", "image_size": 48, "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "aspect": aspect})(image)
        theirs = LlavaImageProcessorPil(
            do_pad=pad, size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)
        )(image, return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
