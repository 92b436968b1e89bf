"""instructblip_qwen: LAVIS parity of the instruction-aware Q-Former, transformers parity, the instruction's path.

The LAVIS reference (``fixtures/lavis_instructblip/tiny_instruct_parity.pt``, see
its README in ``../shared/fixtures``) was made by running LAVIS's own
``Blip2VicunaInstruct`` at a tiny size; lavislite loads its LAVIS-named state
dict through its own LAVIS loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from lavislite.models import load_model
from lavislite.models.checkpoint import POSITION_IDS, PROJ_OTHER_WIDTH, load_checkpoint
from lavislite.models.hf_export import export_hf
from lavislite.models.instructblip_qwen import InstructBlipQwen
from lavislite.models.release import load_from_checkpoint
from lavislite.processors.collate import collate_chat

FIXTURE = Path(__file__).parent / "fixtures" / "lavis_instructblip" / "tiny_instruct_parity.pt"


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return torch.load(FIXTURE, weights_only=True)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def lavis_tiny(reference: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[InstructBlipQwen, Any]:
    """instructblip_qwen at the fixture's sizes, its Q-Former tokenizer the fixture's 48 words + [DEC], loaded from the LAVIS state dict."""
    from transformers import BertTokenizer

    root = tmp_path_factory.mktemp("lavis_instructblip")
    vocab = reference["tokenizer_vocab"]
    (root / "vocab.txt").write_text("\n".join(vocab[:48]) + "\n")
    BertTokenizer(str(root / "vocab.txt"), do_lower_case=True).save_pretrained(root / "qformer_tokenizer")
    cfg = reference["config"]
    v, q = cfg["vit"], cfg["qformer"]
    model = load_model(
        "instructblip_qwen",
        "demo",
        vision={"image_size": v["img_size"], "patch_size": v["patch_size"], "hidden_size": v["embed_dim"], "num_layers": v["depth"],
                "num_heads": v["num_heads"], "intermediate_size": v["mlp_hidden_dim"]},
        qformer={"num_query_token": cfg["query_tokens_shape"][1], "hidden_size": q["hidden_size"], "num_layers": q["num_hidden_layers"],
                 "num_heads": q["num_attention_heads"], "intermediate_size": q["intermediate_size"], "vocab_size": q["vocab_size"],
                 "max_position_embeddings": q["max_position_embeddings"], "tokenizer": str(root / "qformer_tokenizer")},
        llm_config={"hidden_size": cfg["llm_proj"]["out_features"], "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48},
    ).eval()
    torch.save({"model": reference["state_dict"]}, root / "instruct_blip_tiny.pth")
    report = load_checkpoint(model, str(root / "instruct_blip_tiny.pth"))
    return model, report


def test_lavis_instructblip_outputs_reproduced_within_5e6(lavis_tiny: tuple[InstructBlipQwen, Any], reference: dict[str, Any]) -> None:
    """Issue 14.1: LAVIS's ln_vision output (3e-6), query outputs and projection outputs (5e-6) for both instructions."""
    model, _ = lavis_tiny
    ids, text_mask = reference["qformer_input_ids"], reference["qformer_text_attention_mask"]
    captured: dict[str, torch.Tensor] = {}
    hook = model.qformer.register_forward_hook(lambda _m, _i, out: captured.update(hidden=out.last_hidden_state))
    with torch.no_grad():
        projected = model.encode_image(reference["image"], ids, text_mask)
        image_embeds = model.image_features(reference["image"])
    hook.remove()
    torch.testing.assert_close(image_embeds, reference["ln_vision_out"], atol=3e-6, rtol=0)
    torch.testing.assert_close(captured["hidden"], reference["qformer_last_hidden_state"], atol=5e-6, rtol=0)
    torch.testing.assert_close(captured["hidden"][:, :4], reference["qformer_out"], atol=5e-6, rtol=0)
    torch.testing.assert_close(projected, reference["llm_proj_out"], atol=5e-6, rtol=0)
    # The instruction is live: without it (BLIP-2 style) the outputs are LAVIS's other ones, far from these.
    assert (reference["llm_proj_out_no_text"] - reference["llm_proj_out"]).abs().max() > 1.0


def test_lavis_loader_uses_every_key_but_the_position_ids(lavis_tiny: tuple[InstructBlipQwen, Any], reference: dict[str, Any]) -> None:
    _, report = lavis_tiny
    assert report.format == "lavis_instructblip"
    assert report.unused == {"Qformer.bert.embeddings.position_ids": POSITION_IDS}
    assert len(report.loaded) == len(reference["state_dict"]) - 1 - 4 + 2  # 2 blocks: q_bias + v_bias become one qkv bias
    assert not report.missing
    assert report.parts == ["vit", "ln_vision", "qformer", "queries", "proj", "qformer_text"]


def test_chat_processor_tokenizes_the_instruction_as_lavis(lavis_tiny: tuple[InstructBlipQwen, Any], reference: dict[str, Any]) -> None:
    """The data path: each image's instruction, Q-Former tokens and mask as LAVIS's tokenizer call gives them."""
    model, _ = lavis_tiny
    _, txt = model.chat_processors()
    items = []
    for k, instruction in enumerate(reference["instructions"]):
        enc = txt([{"role": "user", "content": f"<image>\n{instruction}"}], num_images=1, sample_id=str(k), add_generation_prompt=True)
        items.append({"id": str(k), "image": reference["image"][k : k + 1], "input_ids": torch.tensor(enc["input_ids"]), "qformer_input_ids": enc["qformer_input_ids"]})
    batch = collate_chat(items, pad_token_id=0)
    assert batch["qformer_input_ids"].tolist() == reference["qformer_input_ids"].tolist()
    assert batch["qformer_attention_mask"].tolist() == reference["qformer_text_attention_mask"].tolist()


def test_each_image_reads_the_turn_that_introduces_it() -> None:
    """Multi-turn, multi-image: image 1 reads turn 1's question (also when later turns ask about it), image 2 the turn that brings it."""
    model = load_model("instructblip_qwen", "demo")
    _, txt = model.chat_processors()
    turns = [
        {"role": "user", "content": "<image>\nWhat colour is it?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "And its shape?"},
        {"role": "assistant", "content": "circle"},
        {"role": "user", "content": [{"type": "text", "text": "Is this one"}, {"type": "image"}, {"type": "text", "text": " the same shape?"}]},
    ]
    tok = model.qformer_tokenizer
    enc = txt(turns, num_images=2, add_generation_prompt=True)
    assert [tok.decode(ids, skip_special_tokens=True) for ids in enc["qformer_input_ids"]] == ["what colour is it?", "is this one the same shape?"]
    assert enc["qformer_input_ids"][0][0] == tok.cls_token_id and enc["qformer_input_ids"][0][-1] == tok.sep_token_id


def test_q_former_output_changes_with_the_question() -> None:
    """Issue 14.3 (mechanics): one image, two questions -> two different sets of visual tokens; the same question -> the same."""
    torch.manual_seed(0)
    model = load_model("instructblip_qwen", "demo").eval()
    image = [Image.new("RGB", (64, 64), (200, 30, 30))]
    outputs = []
    for question in ("What colour is the shape?", "What shape is in the image?", "What colour is the shape?"):
        batch = model.chat_inputs(image, [{"role": "user", "content": f"<image>\n{question}"}])
        with torch.no_grad():
            outputs.append(model.encode_images(batch))
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3
    assert torch.equal(outputs[0], outputs[2])


@pytest.fixture(scope="module")
def hf_instructblip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A tiny random transformers InstructBlipForConditionalGeneration at the demo's sizes, saved with save_pretrained."""
    from omegaconf import OmegaConf
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipQFormerConfig, InstructBlipVisionConfig, Qwen2Config

    from conftest import REPO

    demo = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "models" / "instructblip_qwen" / "demo.yaml").model)
    v, q = demo["vision"], demo["qformer"]
    config = InstructBlipConfig(
        vision_config=InstructBlipVisionConfig(hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"], num_hidden_layers=v["num_layers"],
                                               num_attention_heads=v["num_heads"], image_size=v["image_size"], patch_size=v["patch_size"]).to_dict(),
        qformer_config=InstructBlipQFormerConfig(vocab_size=q["vocab_size"], hidden_size=q["hidden_size"], num_hidden_layers=q["num_layers"],
                                                 num_attention_heads=q["num_heads"], intermediate_size=q["intermediate_size"],
                                                 max_position_embeddings=q["max_position_embeddings"], encoder_hidden_size=v["hidden_size"]).to_dict(),
        text_config=Qwen2Config(**demo["llm_config"]).to_dict(),
        num_query_tokens=q["num_query_token"],
        image_token_index=151655,
    )
    torch.manual_seed(1)
    hf = InstructBlipForConditionalGeneration(config).eval()
    folder = tmp_path_factory.mktemp("hf_instructblip") / "model"
    hf.save_pretrained(folder)
    return hf, folder


def test_hf_instructblip_folder_loads_every_key_and_matches_transformers(hf_instructblip: tuple[Any, Path]) -> None:
    """Issue 14.2: a save_pretrained InstructBLIP folder loads with every key used; the Q-Former and projection give
    transformers' InstructBlipQFormerModel / get_image_features outputs (1e-5)."""
    hf, folder = hf_instructblip
    model = load_model("instructblip_qwen", "demo", pretrained=str(folder)).eval()
    (report,) = model.load_reports
    assert report.format == "hf_instructblip" and not report.unused and not report.missing
    assert set(report.parts) == {"vit", "ln_vision", "qformer", "qformer_text", "queries", "proj", "llm"}
    model.vision.post_layernorm.eps = hf.config.vision_config.layer_norm_eps  # transformers' one eps (see Blip2ExportWriter)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    tok = model.qformer_tokenizer
    text = tok(["what colour is the shape?", "is it small or large?"], padding="longest", return_tensors="pt")
    with torch.no_grad():
        ours = model.encode_image(pixels, text["input_ids"], text["attention_mask"])
        image_embeds = hf.vision_model(pixel_values=pixels).last_hidden_state
        query = hf.query_tokens.expand(2, -1, -1)
        mask = torch.cat([torch.ones(2, query.shape[1], dtype=torch.long), text["attention_mask"]], dim=1)
        q_out = hf.qformer(input_ids=text["input_ids"], attention_mask=mask, query_embeds=query, encoder_hidden_states=image_embeds).last_hidden_state
        theirs = hf.language_projection(q_out[:, : query.shape[1]])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_projection_of_another_llm_width_is_reported_and_skipped(tmp_path: Path) -> None:
    """A LAVIS InstructBLIP file whose llm_proj was trained for another LLM (Vicuna's 4096): the rest loads, the projection trains anew."""
    model = load_model("instructblip_qwen", "demo")
    sd = {"query_tokens": torch.randn_like(model.query_tokens), "llm_proj.weight": torch.randn(96, 64), "llm_proj.bias": torch.randn(96)}
    torch.save({"model": sd}, tmp_path / "instruct_blip_other.pth")
    before = model.proj.weight.detach().clone()
    report = load_checkpoint(model, str(tmp_path / "instruct_blip_other.pth"))
    assert report.loaded == ["query_tokens"] and torch.equal(model.proj.weight, before)
    assert set(report.unused) == {"llm_proj.weight", "llm_proj.bias"}
    assert report.unused["llm_proj.weight"].startswith(PROJ_OTHER_WIDTH) and "file (96, 64), model (64, 64)" in report.unused["llm_proj.weight"]


def test_qformer_text_is_a_part_of_its_own() -> None:
    """Freezing per part: the Q-Former's text embeddings freeze apart from the Q-Former; run.part_lr names them."""
    model = load_model("instructblip_qwen", "demo", freeze_qformer_text=True, freeze_qformer=False)
    parts = model.parts()
    assert {n for n, p in model.named_parameters() if any(p is q for q in parts["qformer_text"])} == {
        "qformer.embeddings.word_embeddings.weight",
        "qformer.embeddings.position_embeddings.weight",
    }
    assert not any(p.requires_grad for p in parts["qformer_text"]) and all(p.requires_grad for p in parts["qformer"])


def test_export_round_trip_and_transformers_logits(tmp_path: Path) -> None:
    """The export is an InstructBlipForConditionalGeneration (+ InstructBlipProcessor with the Q-Former tokenizer) that
    reads back exactly and gives lavislite's logits for the same prompt, image and instruction."""
    from transformers import AutoProcessor, InstructBlipForConditionalGeneration

    torch.manual_seed(5)
    model = load_model("instructblip_qwen", "demo").eval()
    summary = export_hf(model, str(tmp_path / "export"))
    assert summary["hf_class"] == "InstructBlipForConditionalGeneration"
    back, _, _ = load_from_checkpoint(str(tmp_path / "export"))
    ours, theirs = model.state_dict(), back.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)

    hf = InstructBlipForConditionalGeneration.from_pretrained(tmp_path / "export").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "export")
    assert type(processor).__name__ == "InstructBlipProcessor" and processor.qformer_tokenizer.bos_token == "[DEC]"
    image = Image.new("RGB", (64, 64), (30, 30, 220))
    question = "What colour is the shape?"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    ids = processor.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    q = processor.qformer_tokenizer([question], return_tensors="pt")
    pixels = processor.image_processor(image, return_tensors="pt")["pixel_values"]
    batch = model.chat_inputs([image], messages)
    assert ids["input_ids"].tolist() == batch["input_ids"].tolist()
    assert q["input_ids"].tolist() == batch["qformer_input_ids"].tolist()
    model.vision.post_layernorm.eps = hf.config.vision_config.layer_norm_eps
    with torch.no_grad():
        hf_logits = hf(pixel_values=pixels, qformer_input_ids=q["input_ids"], qformer_attention_mask=q["attention_mask"], **ids).logits
        hidden = model.llm.get_decoder()(inputs_embeds=model.embed(batch), attention_mask=batch["attention_mask"]).last_hidden_state
        our_logits = model.llm.get_output_embeddings()(hidden)
    torch.testing.assert_close(hf_logits, our_logits, atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "export" / "config.json").read_text())["qformer_config"]["vocab_size"] == 30523


def test_full_size_builds_on_meta_and_reads_lavis_stage1_with_its_text_branch() -> None:
    """The full-size model types build on the meta device; LAVIS's stage-1 Q-Former (blip2_pretrained.pth's key manifest)
    fills the instruction-aware Q-Former, text embeddings included, as InstructBLIP starts from it."""
    from lavislite.common.config import load_model_config
    from lavislite.models.checkpoint import MLM_HEAD, STAGE1_HEAD

    manifest = json.loads((Path(__file__).parent / "fixtures" / "lavis_blip2" / "blip2_qformer_pretrain_keys.json").read_text())
    sd = {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in manifest.items()}
    overrides = {"llm_model": "qwen2", "llm_init": "random", "tokenizer": "builtin:qwen2.5", "load_pretrained": False}
    for model_type in ("vicuna7b-qformer_qwen2.5-7b-instruct", "qwen2.5-1.5b-instruct"):
        with torch.device("meta"):
            model = InstructBlipQwen.from_config(load_model_config("instructblip_qwen", model_type, overrides))
        report = load_checkpoint(model, "blip2_pretrained.pth (manifest)", state_dict=sd)
        assert report.format == "lavis_instructblip" and not report.missing
        assert {"vit", "ln_vision", "qformer", "qformer_text", "queries"} <= set(report.parts)
        assert set(report.unused.values()) == {POSITION_IDS, STAGE1_HEAD, MLM_HEAD}
        assert sum(p.numel() for p in model.parts()["qformer_text"]) == 30523 * 768 + 512 * 768


def test_release_reads_back_as_lavislite_names(tmp_path: Path) -> None:
    """A run's release (lavislite names: qformer.*, query_tokens, proj.*, llm.*) is read as lavislite's own layout,
    never taken for a Hugging Face folder (whose Q-Former keys are named alike), and every trained weight comes back."""
    import dataclasses

    from lavislite.models.release import write_release

    torch.manual_seed(6)
    model = load_model("instructblip_qwen", "demo").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    write_release(str(tmp_path / "release"), model.trainable_state_dict(), {"model": dataclasses.asdict(model.cfg)})
    back, _, _ = load_from_checkpoint(str(tmp_path / "release"))
    assert back.load_reports[-1].format == "lavislite" and not back.load_reports[-1].unused
    ours, theirs = model.state_dict(), back.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
