"""blip2_qwen on the tiny demo config: image tokens, loss, errors, API."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lavislite.models import load_model_and_preprocess, model_zoo
from lavislite.processors.chat_processor import IGNORE_INDEX


def _batch(model, txt, n_images: int = 1) -> dict:  # type: ignore[no-untyped-def]
    from lavislite.datasets.datasets.instruction_dataset import collate_chat

    samples = []
    for i, n in enumerate([n_images, 0]):
        turns = [{"role": "user", "content": "<image> " * n + f"question {i}?"}, {"role": "assistant", "content": f"answer number {i}."}]
        enc = txt(turns, num_images=n, sample_id=f"s{i}")
        samples.append(
            {
                "id": f"s{i}",
                "image": torch.randn(n, 3, 64, 64) if n else None,
                "input_ids": torch.tensor(enc["input_ids"]),
                "labels": torch.tensor(enc["labels"]),
            }
        )
    return collate_chat(samples, pad_token_id=model.tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def demo():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model, vis, txt = load_model_and_preprocess("blip2_qwen", "demo", is_eval=True)
    return model, vis, txt["train"]


def test_load_model_and_preprocess_returns_processors(demo) -> None:  # type: ignore[no-untyped-def]
    model, vis, txt = demo
    assert set(vis) == {"train", "eval"}
    assert txt.cfg.num_image_tokens == 8 and txt.cfg.tokenizer == "builtin:qwen2.5"
    from PIL import Image

    assert vis["eval"](Image.new("RGB", (100, 80))).shape == (3, 64, 64)
    assert "blip2_qwen" in str(model_zoo) and "demo" in str(model_zoo)


def test_image_embeddings_land_in_image_token_slots(demo) -> None:  # type: ignore[no-untyped-def]
    model, _, txt = demo
    batch = _batch(model, txt, n_images=2)
    embeds = model.embed(batch)
    slots = batch["input_ids"] == model.image_token_id
    assert int(slots.sum()) == 2 * 8
    expected = model.encode_image(batch["image"]).reshape(-1, embeds.shape[-1])
    torch.testing.assert_close(embeds[slots], expected)
    # text positions keep their token embeddings
    text = model.llm.get_input_embeddings()(batch["input_ids"])
    torch.testing.assert_close(embeds[~slots], text[~slots])


def test_lean_loss_equals_full_logits_cross_entropy(demo) -> None:  # type: ignore[no-untyped-def]
    model, _, txt = demo
    batch = _batch(model, txt)
    with torch.no_grad():
        out = model(batch)
        embeds = model.embed(batch)
        logits = model.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
        ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert abs(out["loss"].item() - ref.item()) < 1e-5
    assert int(out["n_tokens"]) == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def test_mismatched_image_count_and_empty_labels_raise_with_ids(demo) -> None:  # type: ignore[no-untyped-def]
    model, _, txt = demo
    batch = _batch(model, txt)
    batch["image"] = torch.cat([batch["image"], batch["image"]])
    with pytest.raises(ValueError, match=r"batch \['s0', 's1'\]: 8 image tokens in input_ids but 2 image\(s\)"):
        model(batch)
    batch = _batch(model, txt)
    batch["labels"][:] = IGNORE_INDEX
    with pytest.raises(ValueError, match=r"batch \['s0', 's1'\]: no supervised token"):
        model(batch)


def test_generate_returns_one_string_per_sample(demo) -> None:  # type: ignore[no-untyped-def]
    model, _, txt = demo
    from lavislite.datasets.datasets.instruction_dataset import collate_chat

    enc = txt([{"role": "user", "content": "<image> what?"}], num_images=1, sample_id="g", add_generation_prompt=True)
    assert enc["input_ids"][-3:] == model.tokenizer.encode("<|im_start|>assistant\n")
    batch = collate_chat([{"id": "g", "image": torch.randn(1, 3, 64, 64), "input_ids": torch.tensor(enc["input_ids"])}], model.tokenizer.pad_token_id, padding_side="left")
    out = model.generate(batch, max_new_tokens=3)
    assert len(out) == 1 and isinstance(out[0], str)


def test_parameter_table_lists_parts(demo) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = demo
    table = model.log_parameter_table()
    for part in ("vit", "ln_vision", "qformer", "queries", "proj", "llm"):
        assert part in table
    # the demo trains every part; the LLM is dominated by Qwen's 151,936-row embedding
    assert sum(p.numel() for p in model.parts()["llm"]) > 151936 * 64


def test_labels_that_do_not_match_the_ids_raise_with_the_sample_id(demo) -> None:  # type: ignore[no-untyped-def]
    model, _, txt = demo
    batch = _batch(model, txt)
    supervised = (batch["labels"][1] != IGNORE_INDEX).nonzero()[0, 0]
    batch["labels"][1, supervised] += 1  # off by one token id
    with pytest.raises(ValueError, match=r"labels do not match input_ids at supervised positions in sample\(s\) \['s1'\]"):
        model(batch)


def test_qwen3_architecture_trains_through_the_same_path() -> None:
    """llm_model may be any Qwen architecture; Qwen3 (q/k norms) with LoRA on all projections."""
    torch.manual_seed(0)
    llm_config = {"vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
    lora = {"enabled": True, "r": 4, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    model, _, txt = load_model_and_preprocess("blip2_qwen", "demo", llm_model="qwen3", llm_config=llm_config, lora=lora, freeze_llm=True)
    assert type(model.llm.get_base_model()).__name__ == "Qwen3ForCausalLM"
    batch = _batch(model, txt["train"])
    out = model(batch)
    out["loss"].backward()
    assert 10 < out["loss"].item() < 13  # ~ln(151936) at random init
    lora_grads = [p.grad for n, p in model.llm.named_parameters() if "lora_B" in n]
    assert len(lora_grads) == 2 * 7 and all(g is not None and g.abs().sum() > 0 for g in lora_grads)


def test_text_only_batch_gives_every_trainable_parameter_a_gradient(demo) -> None:  # type: ignore[no-untyped-def]
    """Issue 9.1: a rank whose batch has no image must still join every ZeRO gradient collective."""
    model, _, txt = demo
    from lavislite.datasets.datasets.instruction_dataset import collate_chat

    enc = txt([{"role": "user", "content": "just text?"}, {"role": "assistant", "content": "yes."}], num_images=0, sample_id="t")
    batch = collate_chat([{"id": "t", "image": None, "input_ids": torch.tensor(enc["input_ids"]), "labels": torch.tensor(enc["labels"])}], model.tokenizer.pad_token_id)
    model.train()
    try:
        with torch.no_grad():
            loss_no_grad = model(batch)["loss"]
        model.zero_grad(set_to_none=True)
        loss = model(batch)["loss"]
        loss.backward()
        # the blank image has weight zero: the loss is the text loss exactly
        assert loss.item() == pytest.approx(loss_no_grad.item(), abs=1e-6)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad == trainable
        vision_path = [p.grad for n, p in model.named_parameters() if n.startswith(("vision.", "qformer.", "query_tokens", "proj."))]
        assert vision_path and all(float(g.abs().sum()) == 0.0 for g in vision_path)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_a_random_init_vit_sees_the_image() -> None:
    """transformers' Blip2VisionConfig initialises with std 1e-10: a random ViT built that way is blind."""
    from PIL import Image

    from conftest import DEMO_DATA

    torch.manual_seed(0)
    model, vis, _ = load_model_and_preprocess("blip2_qwen", "demo", is_eval=True)
    assert model.vision.embeddings.patch_embedding.weight.std().item() == pytest.approx(0.02, rel=0.1)
    images = sorted((DEMO_DATA / "images").glob("*.jpg"))[:2]
    x = torch.stack([vis["eval"](Image.open(p)) for p in images])
    with torch.no_grad():
        out = model.vision(pixel_values=x).last_hidden_state
    # Two different images give clearly different ViT features (with std 1e-10 they agree to 1e-5).
    assert (out[0] - out[1]).abs().mean().item() > 0.1 * out.abs().mean().item()
