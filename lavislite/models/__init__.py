"""Models and the LAVIS-style loading API: ``load_model``, ``load_model_and_preprocess``, ``model_zoo``."""

from __future__ import annotations

from typing import Any

import torch

from lavislite.common.config import load_model_config
from lavislite.common.logger import ensure_console_logging
from lavislite.common.registry import registry
from lavislite.models.base_model import BaseModel
from lavislite.models.blip2_qwen import Blip2Qwen
from lavislite.models.image_lm import ImageTokenLM
from lavislite.models.instructblip_qwen import InstructBlipQwen
from lavislite.models.llava import Llava
from lavislite.models.release import load_from_checkpoint, resolve_checkpoint, write_release
from lavislite.processors.blip_processors import build_processor

__all__ = [
    "BaseModel",
    "Blip2Qwen",
    "ImageTokenLM",
    "InstructBlipQwen",
    "Llava",
    "load_from_checkpoint",
    "load_model",
    "load_model_and_preprocess",
    "load_preprocess",
    "model_zoo",
    "resolve_checkpoint",
    "write_release",
]


def load_model(name: str, model_type: str, is_eval: bool = False, device: str | torch.device = "cpu", **overrides: Any) -> BaseModel:
    """Builds a registered model from the default config of ``model_type``.

    Args:
        name: the model arch (``blip2_qwen``).
        model_type: a key of its ``PRETRAINED_MODEL_CONFIG_DICT`` (``demo``).
        is_eval: put the model in eval mode.
        device: where to move it.
        **overrides: merged over the default config (e.g. ``freeze_llm=False``,
            ``finetuned="output/demo/JOB/release"``, which loads it).
    """
    ensure_console_logging()
    cfg = load_model_config(name, model_type, overrides)
    model = registry.get_model_class(name).from_config(cfg)
    if is_eval:
        model.eval()
    return model.to(device)


def load_preprocess(model_cfg: Any, context: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Builds ``(vis_processors, txt_processors)`` keyed by ``train``/``eval`` from ``model.preprocess``."""
    preprocess = model_cfg.get("preprocess") or {}
    vis = {split: build_processor(spec, context) for split, spec in (preprocess.get("vis_processor") or {}).items()}
    txt = {split: build_processor(spec, context) for split, spec in (preprocess.get("text_processor") or {}).items()}
    return vis, txt


def load_model_and_preprocess(
    name: str, model_type: str, is_eval: bool = False, device: str | torch.device = "cpu", **overrides: Any
) -> tuple[BaseModel, dict[str, Any], dict[str, Any]]:
    """LAVIS's entry point: the model plus its image and text processors.

    Returns:
        ``(model, vis_processors, txt_processors)``; processors are dicts keyed by
        ``train`` / ``eval``.
    """
    ensure_console_logging()
    cfg = load_model_config(name, model_type, overrides)
    model_cls = registry.get_model_class(name)
    model = model_cls.from_config(cfg)
    if is_eval:
        model.eval()
    vis, txt = load_preprocess(cfg, model_cls.processor_context(cfg))
    return model.to(device), vis, txt


class ModelZoo:
    """Lists registered models and their model types (``print(model_zoo)``)."""

    def __str__(self) -> str:
        rows = ["=" * 60, f"{'Architectures':<30}{'Types'}", "=" * 60]
        for name in registry.list_models():
            rows.append(f"{name:<30}{', '.join(registry.get_model_class(name).PRETRAINED_MODEL_CONFIG_DICT)}")
        return "\n".join(rows)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter((n, list(registry.get_model_class(n).PRETRAINED_MODEL_CONFIG_DICT)) for n in registry.list_models())

    def __len__(self) -> int:
        return len(registry.list_models())


model_zoo = ModelZoo()
