"""LAVIS checkpoints into blip2_qwen: parity with LAVIS's own outputs, key manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lavislite.models.blip2_qwen import Blip2Qwen
from lavislite.models.checkpoint import OTHER_LLM, STAGE1_HEAD, TEXT_BRANCH, convert_lavis_vit, load_checkpoint, read_state_dict

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lavis_blip2"
TINY_LLM = {"vocab_size": 151936, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}


def _tiny_blip2_qwen(**overrides) -> Blip2Qwen:  # type: ignore[no-untyped-def]
    """blip2_qwen with the parity fixture's ViT / Q-Former sizes."""
    cfg = {
        "vision": {"image_size": 28, "patch_size": 14, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 139},
        "qformer": {"num_query_token": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 16},
        "llm_model": "qwen2", "llm_init": "random", "llm_config": TINY_LLM, "tokenizer": "builtin:qwen2.5",
        **overrides,
    }
    return Blip2Qwen.from_config(cfg).eval()


@pytest.fixture(scope="module")
def parity() -> dict:
    return torch.load(FIXTURES / "tiny_parity.pt", weights_only=True)


def test_lavis_blip2_checkpoint_matches_lavis_outputs(parity: dict, tmp_path: Path) -> None:
    path = tmp_path / "blip2_tiny.pth"
    torch.save({"model": parity["state_dict"]}, path)  # the layout of LAVIS releases
    torch.manual_seed(99)  # a different init than LAVIS's
    model = _tiny_blip2_qwen(pretrained=str(path))
    report = model.load_reports[0]
    assert report.format == "lavis_blip2"
    assert report.missing == []
    # 99 LAVIS tensors: q_bias+v_bias fold into one qkv.bias per block (-2),
    # 22 text-branch keys unused, the rest loaded.
    assert len(report.loaded) == 99 - 2 - 22
    assert sorted(report.unused) == sorted(parity["keys_not_used_by_image_forward"])
    assert set(report.unused.values()) == {TEXT_BRANCH}
    image = parity["image"]
    with torch.no_grad():
        out = model.vision(pixel_values=image, output_hidden_states=True)
        vit_out, full = out.hidden_states[-1], out.last_hidden_state
        q = model.qformer(
            query_embeds=model.query_tokens.expand(2, -1, -1), encoder_hidden_states=full, encoder_attention_mask=torch.ones(2, 5, dtype=torch.long)
        ).last_hidden_state
    torch.testing.assert_close(vit_out, parity["vit_out"], atol=5e-6, rtol=0)
    torch.testing.assert_close(full, parity["ln_vision_out"], atol=5e-6, rtol=0)
    torch.testing.assert_close(q, parity["qformer_out"], atol=5e-6, rtol=0)


def test_ln_vision_eps_matters_at_this_tolerance(parity: dict, tmp_path: Path) -> None:
    """With the ViT's eps (1e-6) instead of LAVIS's ln_vision eps (1e-5) the check fails."""
    path = tmp_path / "blip2_tiny.pth"
    torch.save({"model": parity["state_dict"]}, path)
    model = _tiny_blip2_qwen(pretrained=str(path))
    model.vision.post_layernorm.eps = 1e-6
    with torch.no_grad():
        full = model.vision(pixel_values=parity["image"]).last_hidden_state
    assert (full - parity["ln_vision_out"]).abs().max() > 5e-6


def test_vit_alone_checkpoint_fills_the_encoder_only(parity: dict, tmp_path: Path) -> None:
    vit = {k[len("visual_encoder.") :]: v for k, v in parity["state_dict"].items() if k.startswith("visual_encoder.")}
    vit["norm.weight"] = torch.ones(32)  # a key with no place in the model is reported, not dropped
    path = tmp_path / "eva_vit_tiny.pth"
    torch.save(vit, path)
    model = _tiny_blip2_qwen(vit_pretrained=str(path))
    report = model.load_reports[0]
    assert report.format == "lavis_vit"
    assert report.missing == [] and report.unused == {"norm.weight": "no matching parameter in the model"}
    torch.testing.assert_close(
        model.vision.encoder.layers[1].self_attn.qkv.bias,
        torch.cat([vit["blocks.1.attn.q_bias"], torch.zeros(32), vit["blocks.1.attn.v_bias"]]),
    )


def test_shape_mismatch_names_key_and_shapes(parity: dict, tmp_path: Path) -> None:
    sd = dict(parity["state_dict"])
    sd["query_tokens"] = torch.zeros(1, 4, 32)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(ValueError, match=r"shape mismatch for query_tokens: checkpoint \(1, 4, 32\) vs model \(1, 8, 32\)"):
        _tiny_blip2_qwen(pretrained=str(path))


def test_vit_q_and_v_bias_must_come_in_pairs() -> None:
    with pytest.raises(ValueError, match=r"blocks.0.attn: has \['q_bias'\] but needs both"):
        convert_lavis_vit({"blocks.0.attn.q_bias": torch.zeros(2)})


def _manifest_state_dict(name: str) -> dict[str, torch.Tensor]:
    manifest = json.loads((FIXTURES / name).read_text())
    return {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in manifest.items()}


@pytest.fixture(scope="module")
def full_size_meta() -> Blip2Qwen:
    """Full-size ViT-g + Q-Former (and a Qwen2.5-1.5B-sized LLM) on the meta device: no memory, no download."""
    from lavislite.common.config import load_model_config

    cfg = load_model_config("blip2_qwen", "qwen2.5-1.5b-instruct", {"llm_model": "qwen2", "llm_init": "random", "tokenizer": "builtin:qwen2.5", "pretrained": "", "vit_pretrained": ""})
    with torch.device("meta"):
        return Blip2Qwen.from_config(cfg)


def test_full_size_lavis_stage1_manifest_loads_completely(full_size_meta: Blip2Qwen) -> None:
    sd = _manifest_state_dict("blip2_qformer_pretrain_keys.json")
    assert len(sd) == 857
    report = load_checkpoint(full_size_meta, "blip2_pretrained (manifest)", state_dict=sd)
    assert report.missing == []  # no vision / Q-Former / query parameter left unfilled
    reasons: dict[str, int] = {}
    for r in report.unused.values():
        reasons[r] = reasons.get(r, 0) + 1
    # word/position embeddings + position_ids (3), 12 text FFNs x 6 tensors (72), cls.* (7 names incl. the tied decoder)
    assert reasons == {TEXT_BRANCH: 3 + 72 + 7, STAGE1_HEAD: 7}
    # every other key was loaded: 39 q/v bias pairs fold into 39 qkv biases
    assert len(report.loaded) == 857 - len(report.unused) - 39
    vision_qformer = [n for n, _ in full_size_meta.named_parameters() if n.startswith(("vision.", "qformer.", "query_tokens"))]
    assert sorted(report.loaded) == sorted(vision_qformer)


def test_full_size_eva_vit_manifest_loads_every_key(full_size_meta: Blip2Qwen) -> None:
    sd = _manifest_state_dict("eva_vit_g_keys.json")
    assert len(sd) == 511
    report = load_checkpoint(full_size_meta, "eva_vit_g.pth (manifest)", state_dict=sd)
    assert report.unused == {} and report.missing == []
    assert len(report.loaded) == 511 - 39  # q_bias/v_bias pairs -> qkv.bias
    # A 40-block file (reported for the real eva_vit_g.pth) is not silently truncated.
    sd["blocks.39.norm1.weight"] = torch.empty(1408, device="meta")
    report = load_checkpoint(full_size_meta, "eva_vit_g.pth (40 blocks)", state_dict=sd)
    assert report.unused == {"vision.encoder.layers.39.layer_norm1.weight": "no matching parameter in the model"}


def test_read_state_dict_unwraps_model_key(tmp_path: Path) -> None:
    torch.save({"model": {"a": torch.ones(2)}, "epoch": 3}, tmp_path / "c.pth")
    assert list(read_state_dict(str(tmp_path / "c.pth"))) == ["a"]
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_state_dict(str(tmp_path / "nope.pth"))


# -- MiniGPT4Qwen / MPP-LLaVA files (issue 9.3) ---------------------------------------------
QWEN1_KEYS = {
    "llm_model.transformer.wte.weight": (64, 32),
    "llm_model.transformer.h.0.attn.c_attn.weight": (96, 32),
    "llm_model.transformer.h.0.attn.c_attn.bias": (96,),
    "llm_model.lm_head.weight": (64, 32),
}


def _llm_proj(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {"llm_proj.weight": torch.randn(32, 32, generator=g).to(dtype), "llm_proj.bias": torch.randn(32, generator=g).to(dtype)}


def _qwen1() -> dict[str, torch.Tensor]:
    return {k: torch.randn(*shape) for k, shape in QWEN1_KEYS.items()}


def _minigpt4qwen_layouts(parity: dict) -> dict[str, object]:
    proj = _llm_proj()
    return {
        # LAVIS runner checkpoint: trainable weights + buffers under "model"
        "runner_model_key": {"model": {"Qformer.bert.embeddings.position_ids": torch.arange(16).unsqueeze(0), **proj}, "epoch": 3},
        # the pipeline-parallel conversion (e.g. the pretrain model.pth): llm_proj alone, bf16
        "flat_llm_proj_bf16": _llm_proj(torch.bfloat16),
        # the unfrozen-LLM model.pth: llm_proj + Qwen-1 LLM weights
        "flat_llm_proj_qwen1": {**proj, **_qwen1()},
        # a full DeepSpeed state dict: everything, LAVIS ViT names (q_bias / v_bias) included
        "deepspeed_module": {"module": {**parity["state_dict"], **proj, **_qwen1()}, "global_steps": 100, "ds_version": "0.14.0"},
    }


@pytest.mark.parametrize("layout", ["runner_model_key", "flat_llm_proj_bf16", "flat_llm_proj_qwen1", "deepspeed_module"])
def test_every_minigpt4qwen_layout_loads_llm_proj_into_proj(parity: dict, tmp_path: Path, layout: str) -> None:
    obj = _minigpt4qwen_layouts(parity)[layout]
    path = tmp_path / "model.pth"
    torch.save(obj, path)
    torch.manual_seed(5)
    model = _tiny_blip2_qwen(finetuned=str(path))
    report = model.load_reports[-1]
    assert report.format == "minigpt4qwen"
    saved = read_state_dict(str(path))
    torch.testing.assert_close(model.proj.weight, saved["llm_proj.weight"].float(), atol=0, rtol=0)
    torch.testing.assert_close(model.proj.bias, saved["llm_proj.bias"].float(), atol=0, rtol=0)
    other_llm = {k for k, why in report.unused.items() if why == OTHER_LLM}
    assert other_llm == ({k for k in QWEN1_KEYS} if "qwen1" in layout or layout == "deepspeed_module" else set())
    # NOT FILLED covers only the parts the file holds
    assert report.missing == []
    if layout == "deepspeed_module":
        assert report.parts == ["vit", "ln_vision", "qformer", "queries", "proj"]
        torch.testing.assert_close(model.query_tokens, parity["state_dict"]["query_tokens"])
    else:
        assert report.parts == ["proj"]


def test_a_finetuned_file_that_fills_nothing_is_an_error(tmp_path: Path) -> None:
    torch.save(_qwen1(), tmp_path / "qwen1_only.pth")
    with pytest.raises(ValueError, match=r"model.finetuned=.*qwen1_only.pth \(minigpt4qwen layout\): filled no model weight"):
        _tiny_blip2_qwen(finetuned=str(tmp_path / "qwen1_only.pth"))
    torch.save({"model": {"decoder.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"filled no model weight"):
        _tiny_blip2_qwen(finetuned=str(tmp_path / "other.pth"))


def test_not_filled_covers_only_the_parts_a_partial_file_holds(parity: dict) -> None:
    """A stage-1 file without the query tokens reports them; it never lists the LLM or the projection."""
    sd = {k: v for k, v in parity["state_dict"].items() if k != "query_tokens"}
    model = _tiny_blip2_qwen()
    report = load_checkpoint(model, "no-queries", state_dict=sd)
    assert report.missing == []  # the file holds no query tokens: not its part
    sd = {k: v for k, v in parity["state_dict"].items() if k != "Qformer.bert.embeddings.LayerNorm.weight"}
    report = load_checkpoint(model, "partial-qformer", state_dict=sd)
    assert report.missing == ["qformer.layernorm.weight"]
