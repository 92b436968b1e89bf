"""GPU-ready step settings as pure functions, on a CPU: the attention kernel a run gets, and MFU (issue 18)."""

from __future__ import annotations

import pytest

from lavislite.common.flops import PEAK_BF16_TFLOPS, llm_flops_per_token, mfu, peak_bf16_flops
from lavislite.common.schema import ConfigError, validate
from lavislite.models.attention import resolve_attn_implementation


@pytest.mark.parametrize(
    ("requested", "device", "precision", "flash", "expected"),
    [
        ("auto", "cuda", "bf16", True, "flash_attention_2"),
        ("auto", "cuda", "fp16", True, "flash_attention_2"),
        ("auto", "cuda", "bf16", False, "sdpa"),  # no flash-attn: sdpa
        ("auto", "cuda", "fp32", True, "sdpa"),  # flash-attn has no fp32 kernel
        ("auto", "cuda", None, True, "sdpa"),  # precision not known yet (the model's own build)
        ("auto", "cpu", "bf16", True, "sdpa"),
        ("eager", "cuda", "bf16", True, "eager"),
        ("sdpa", "cpu", "fp32", False, "sdpa"),
        ("flash_attention_2", "cuda", "bf16", True, "flash_attention_2"),
    ],
)
def test_attn_implementation_resolves_by_device_precision_and_flash_attn(requested: str, device: str, precision: str | None, flash: bool, expected: str) -> None:
    assert resolve_attn_implementation(requested, device_type=device, precision=precision, flash_available=flash) == expected


def test_flash_attention_where_it_cannot_run_fails_naming_the_key_and_why() -> None:
    with pytest.raises(ConfigError, match=r"model.attn_implementation: flash_attention_2 cannot run here: the flash-attn package is not installed"):
        resolve_attn_implementation("flash_attention_2", device_type="cuda", precision="bf16", flash_available=False)
    with pytest.raises(ConfigError, match=r"runs on CUDA only, this run is on cpu; it has no fp32 kernel"):
        resolve_attn_implementation("flash_attention_2", device_type="cpu", precision="fp32", flash_available=True)
    with pytest.raises(ConfigError, match=r"'flash' is not one of auto, eager, sdpa, flash_attention_2"):
        resolve_attn_implementation("flash", device_type="cuda", precision="bf16", flash_available=True)


def test_attn_implementation_is_a_typed_model_key() -> None:
    from lavislite.models.blip2_qwen import Blip2QwenConfig

    assert validate(Blip2QwenConfig, {}, "model")["attn_implementation"] == "auto"
    assert validate(Blip2QwenConfig, {"attn_implementation": "eager"}, "model")["attn_implementation"] == "eager"
    with pytest.raises(ConfigError, match=r"model.attn_implementation: expected one of 'auto', 'eager', 'sdpa', 'flash_attention_2', got 'flash2'"):
        validate(Blip2QwenConfig, {"attn_implementation": "flash2"}, "model")


def test_the_model_sets_its_llm_attention_for_the_run(tiny_model) -> None:  # type: ignore[no-untyped-def]
    # On this CPU auto is sdpa in any precision; eager switches the LLM's kernel in place.
    assert tiny_model.configure_attention("bf16") == "sdpa" and tiny_model.llm.config._attn_implementation == "sdpa"
    tiny_model.cfg.attn_implementation = "eager"
    try:
        assert tiny_model.configure_attention("fp32") == "eager" and tiny_model.llm.config._attn_implementation == "eager"
    finally:
        tiny_model.cfg.attn_implementation = "auto"
        tiny_model.configure_attention("fp32")
    assert tiny_model.llm.config._attn_implementation == "sdpa"


def test_peak_table_lookup_by_device_name() -> None:
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA GeForce RTX 3090") is None  # not in the table: no MFU rather than a wrong one
    assert dict(PEAK_BF16_TFLOPS) == {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def test_mfu_formula() -> None:
    # Full fine-tuning is PaLM's 6N + 12 L H S per token.
    n, layers, hidden, seq = 1_310_000_000, 28, 1536, 300.0
    full = llm_flops_per_token(n, n, layers, hidden, seq)
    assert full == 6 * n + 12 * layers * hidden * seq
    # A frozen LLM still runs its forward and the backward's input gradients (4N), not the weight gradients.
    assert llm_flops_per_token(n, 0, layers, hidden, seq) == 4 * n + 12 * layers * hidden * seq
    # 20,000 tokens/s of that model on 8 A100s
    assert mfu(full, 20_000.0, 312e12, n_devices=8) == pytest.approx(full * 20_000 / (8 * 312e12))
    assert 0.06 < mfu(full, 20_000.0, 312e12, n_devices=8) < 0.07


def test_the_model_reports_its_llm_shape_for_flops(tiny_model) -> None:  # type: ignore[no-untyped-def]
    shape = tiny_model.llm_flops_shape()
    cfg = tiny_model.llm.config
    assert (shape["n_layers"], shape["hidden"]) == (cfg.num_hidden_layers, cfg.hidden_size)
    embed = tiny_model.llm.get_input_embeddings().weight.numel()
    assert shape["n_params"] == sum(p.numel() for p in tiny_model.llm.parameters()) - embed  # tied head: counted once, as the embedding
    assert shape["n_trainable"] == shape["n_params"]  # the demo trains everything
