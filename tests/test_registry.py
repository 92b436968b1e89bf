"""The registry: registration, lookups, errors that list close matches."""

from __future__ import annotations

import pytest

import lavislite  # noqa: F401
from lavislite.common.registry import Registry, RegistryError, registry


def test_builtin_names_are_registered_by_importing_lavislite() -> None:
    assert "blip2_qwen" in registry.list_models()
    assert {"minigpt4_instruction", "llava_instruction", "coco_caption", "vqav2"} <= set(registry.list_builders())
    assert {"blip2_image_train", "blip_image_eval", "blip_caption", "blip_question", "qwen_chat"} <= set(registry.list_processors())
    assert registry.list_tasks() == ["benchmark", "captioning", "image_text_pretrain", "vqa"]
    assert {"caption", "gqa", "mme", "nocaps", "pope", "scienceqa", "textvqa", "vizwiz", "vqa"} <= set(registry.list_scorers())
    assert registry.list_runners() == ["runner_base", "runner_iter"]
    assert registry.list_lr_schedulers() == ["constant_lr", "linear_warmup_cosine_lr", "linear_warmup_step_lr"]


def test_lookup_returns_the_registered_class() -> None:
    r = Registry()

    @r.register_model("m1")
    class M1:
        pass

    assert r.get_model_class("m1") is M1


def test_unknown_name_raises_with_kind_close_match_and_all_names() -> None:
    with pytest.raises(RegistryError) as info:
        registry.get_model_class("blip2_qwn")
    msg = str(info.value)
    assert "Unknown model 'blip2_qwn'" in msg
    assert "Did you mean: 'blip2_qwen'" in msg
    assert "Registered models: blip2_qwen" in msg


def test_duplicate_name_raises_naming_both_classes() -> None:
    r = Registry()

    @r.register_builder("data")
    class A:
        pass

    class B:
        pass

    with pytest.raises(RegistryError, match=r"builder name 'data' is already registered by .*A; .*B cannot take it"):
        r.register_builder("data")(B)


def test_unknown_kind_and_path() -> None:
    r = Registry()
    with pytest.raises(RegistryError, match="Unknown registry kind 'modle'"):
        r.register("modle", "x")
    r.register_path("cache_root", "/tmp/x")
    assert r.get_path("cache_root") == "/tmp/x"
    with pytest.raises(RegistryError, match="Unknown path 'nope'"):
        r.get_path("nope")


def test_paths_registered_on_import() -> None:
    import os

    assert os.path.isdir(os.path.join(registry.get_path("library_root"), "configs"))
    assert registry.get_path("cache_root")


def test_name_of_is_the_reverse_lookup() -> None:
    from lavislite.models.blip2_qwen import Blip2Qwen

    assert registry.name_of("model", Blip2Qwen) == "blip2_qwen"
    with pytest.raises(RegistryError, match=r"is not a registered builder"):
        registry.name_of("builder", Blip2Qwen)
