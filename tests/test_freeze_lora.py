"""Freeze switches, LoRA and per-part learning rates: exactly the intended
parameters get gradients and reach the optimizer, at their part's rate."""

from __future__ import annotations

import pytest
import torch

from lavislite.common.schema import ConfigError
from lavislite.datasets.datasets.instruction_dataset import collate_chat
from lavislite.models import load_model_and_preprocess
from lavislite.runners.runner_base import param_groups

ALL_FROZEN = {f"freeze_{p}": True for p in ("vit", "ln_vision", "qformer", "queries", "proj", "llm")}


def _build(**overrides):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model, _, txt = load_model_and_preprocess("blip2_qwen", "demo", **{**ALL_FROZEN, **overrides})
    return model, txt["train"]


def _batch(model, txt) -> dict:  # type: ignore[no-untyped-def]
    turns = [{"role": "user", "content": "<image> What is it?"}, {"role": "assistant", "content": "A red circle."}]
    enc = txt(turns, num_images=1, sample_id="s0")
    sample = {"id": "s0", "image": torch.randn(1, 3, 64, 64), "input_ids": torch.tensor(enc["input_ids"]), "labels": torch.tensor(enc["labels"])}
    return collate_chat([sample], pad_token_id=model.tokenizer.pad_token_id)


def _grad_parts(model) -> set[str]:  # type: ignore[no-untyped-def]
    """Parts with at least one parameter that received a non-zero gradient."""
    out = set()
    for part, params in model.parts().items():
        if any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params):
            out.add(part)
    return out


CASES = {
    # name: (overrides, parts expected to train, LoRA expected)
    "minigpt4qwen_proj_only": ({"freeze_proj": False}, {"proj"}, False),
    "qformer_queries_proj": ({"freeze_qformer": False, "freeze_queries": False, "freeze_proj": False}, {"qformer", "queries", "proj"}, False),
    "vit_and_ln_vision": ({"freeze_vit": False, "freeze_ln_vision": False}, {"vit", "ln_vision"}, False),
    "full_llm": ({"freeze_llm": False}, {"llm"}, False),
    "lora_attention": ({"freeze_proj": False, "lora": {"enabled": True, "r": 4}}, {"proj", "llm"}, True),
    "lora_with_mlp": (
        {"lora": {"enabled": True, "r": 4, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}},
        {"llm"},
        True,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_only_intended_parameters_get_gradients_and_reach_the_optimizer(case: str) -> None:
    overrides, expected_parts, lora = CASES[case]
    model, txt = _build(**overrides)
    model.train()
    model(_batch(model, txt))["loss"].backward()
    assert _grad_parts(model) == expected_parts

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable  # nothing frozen got a gradient, nothing trainable was skipped
    if lora:
        llm_trainable = {n for n in trainable if n.startswith("llm.")}
        assert llm_trainable and all("lora_" in n for n in llm_trainable)
        targets = overrides["lora"].get("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"])
        assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in llm_trainable} == set(targets)

    groups = param_groups(model, weight_decay=0.05, init_lr=1e-3, part_lr={"proj": 5e-3})
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    for g in groups:
        assert g["lr"] == (5e-3 if g["part"] == "proj" else 1e-3)
        name_of = {id(p): n for n, p in model.named_parameters()}
        exempt = [p.ndim < 2 or "bias" in name_of[id(p)] or "norm" in name_of[id(p)].lower() for p in g["params"]]
        assert g["weight_decay"] in (0.0, 0.05)
        assert all(exempt) if g["weight_decay"] == 0.0 else not any(exempt)


def test_optimizer_step_moves_trainable_and_keeps_frozen() -> None:
    model, txt = _build(freeze_proj=False, freeze_queries=False, lora={"enabled": True, "r": 4})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = param_groups(model, 0.0, 1e-2, {"queries": 1e-1})
    opt = torch.optim.AdamW(groups)
    model.train()
    model(_batch(model, txt))["loss"].backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # lora_B starts at zero, so lora_A gets no gradient on the first step; everything
    # that moved is trainable and every trainable tensor except lora_A moved.
    assert changed <= trainable
    assert trainable - changed == {n for n in trainable if "lora_A" in n}
    # the queries moved by Adam's first step ~= lr (1e-1), the projection by ~1e-2
    assert (model.query_tokens - before["query_tokens"]).abs().max().item() == pytest.approx(0.1, rel=0.05)
    assert (model.proj.weight - before["proj.weight"]).abs().max().item() == pytest.approx(0.01, rel=0.05)


def test_unknown_part_in_part_lr_is_an_error() -> None:
    model, _ = _build(freeze_proj=False)
    with pytest.raises(ConfigError, match=r"run.part_lr.projection: unknown part; the model's parts are vit, ln_vision, qformer, queries, proj, llm"):
        param_groups(model, 0.0, 1e-3, {"projection": 1e-4})


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for ckpt in (False, True):
        model, txt = _build(freeze_vit=False, freeze_llm=False, gradient_checkpointing=ckpt)
        model.train()
        model(_batch(model, txt))["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        if ckpt:
            for part in (model.llm, model.vision):
                assert getattr(part, "is_activation_checkpointing", None) or part.is_gradient_checkpointing
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_frozen_qformer_and_vit_run_without_dropout_in_train_mode() -> None:
    """Issue 9.4: a frozen encoder stays in eval mode whatever train() is called on."""
    model, _ = _build(freeze_proj=False, freeze_vit=True, freeze_qformer=True)
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        reference = model.encode_image(image)
    model.train()
    assert not model.qformer.training and not model.vision.training and model.proj.training
    with torch.no_grad():
        first, second = model.encode_image(image), model.encode_image(image)
    torch.testing.assert_close(first, reference, atol=0, rtol=0)
    torch.testing.assert_close(second, reference, atol=0, rtol=0)
    # a Q-Former that trains does run its dropout (0.1 in the demo config)
    trainable, _ = _build(freeze_qformer=False)
    trainable.train()
    assert trainable.qformer.training
    with torch.no_grad():
        assert not torch.equal(trainable.encode_image(image), trainable.encode_image(image))


def test_lora_keeps_the_frozen_llm_in_train_mode_for_lora_dropout() -> None:
    model, _ = _build(lora={"enabled": True, "r": 4, "dropout": 0.1})
    model.train()
    assert model.llm.training and not model.qformer.training
    frozen_plain, _ = _build(freeze_proj=False)
    frozen_plain.train()
    assert not frozen_plain.llm.training


def test_freeze_llm_false_with_lora_is_a_config_error() -> None:
    """Issue 9.9: peft would silently freeze the LLM again."""
    with pytest.raises(ConfigError, match=r"model.freeze_llm: false with lora.enabled: true is not supported"):
        _build(freeze_llm=False, lora={"enabled": True})
