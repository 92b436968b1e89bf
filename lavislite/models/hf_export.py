"""blip2_qwen -> a plain Hugging Face ``Blip2ForConditionalGeneration`` folder.

The folder loads with transformers alone (no lavislite, no remote code)::

    config.json                  Blip2Config: vision/qformer configs, the Qwen text_config,
                                 num_query_tokens, image_token_index = <|image_pad|>
    model-0000N-of-0000M.safetensors + model.safetensors.index.json
    generation_config.json       eos [<|im_end|>, <|endoftext|>], pad <|endoftext|>
    tokenizer.json, tokenizer_config.json, chat_template.jinja
                                 the Qwen2.5 tokenizer with lavislite's chat template
                                 (an image part -> <|vision_start|> + N x <|image_pad|> + <|vision_end|>)
    preprocessor_config.json     BlipImageProcessor = lavislite's eval image processing
    processor_config.json        Blip2Processor with num_query_tokens = null: it does
                                 not prepend image tokens (the template places them)
    adapter/                     LoRA, not merged: a PEFT adapter for model.language_model
    lavislite.yaml               lavislite's model config (load_from_checkpoint reads it)

Weight names: ``vision.*`` -> ``vision_model.*``, ``qformer.*`` and
``query_tokens`` as they are, ``proj.*`` -> ``language_projection.*``, the LLM's
``model.*`` / ``lm_head.*`` -> ``language_model.model.*`` / ``language_model.lm_head.*``
(tied embeddings stay tied: the folder holds the embedding once).

One known difference: lavislite's ``ln_vision`` (the vision model's
``post_layernorm``) uses LAVIS's eps 1e-5, while ``Blip2VisionModel`` builds
every LayerNorm from one ``layer_norm_eps``. The export keeps the ViT's own eps
(1e-6, exact for its 2 x num_layers LayerNorms, and what transformers' own
BLIP-2 conversions use), so only the final LayerNorm differs, by
eps 1e-6 vs 1e-5 in ``1/sqrt(var + eps)``: a relative change below
``4.5e-6 / var`` of the vision features. lavislite keeps 1e-5 when it reads
an export back (``lavislite.yaml`` holds it), so a round trip is exact.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import tempfile
from typing import Any, Mapping

import torch
from torch import nn

from lavislite.common.logger import logger
from lavislite.models.release import (
    EXPORT_ADAPTER_DIR,
    EXPORT_CONFIG,
    atomic_folder,
    is_lora_key,
    peft_adapter_state,
    write_adapter,
)
from lavislite.processors.tokenizers import DEFAULT_SYSTEM_MESSAGE, ENDOFTEXT, IMAGE_TOKEN, chatml_template, stop_token_ids

# PIL resampling filters by lavislite's interpolation names (PIL.Image.Resampling values).
PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}


class _AcceleratorNoticeFilter(logging.Filter):
    """Drops DeepSpeed's accelerator-detection notices ("Setting accelerator to CPU. If you have GPU ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Setting accelerator to") or message.startswith("Setting ds_accelerator to"))


def quiet_deepspeed_accelerator_notice() -> None:
    """Keeps DeepSpeed's accelerator notice off the export's output.

    ``save_pretrained`` asks accelerate to unwrap the model, and accelerate
    imports DeepSpeed whenever it is installed; DeepSpeed then detects an
    accelerator and prints, on stdout, a warning about a GPU it could not
    find: noise for an export, which uses no DeepSpeed at all. The filter sits
    on DeepSpeed's own logger (made now if DeepSpeed is not imported yet; its
    set-up keeps filters) and drops only those notices.
    """
    ds_logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _AcceleratorNoticeFilter) for f in ds_logger.filters):
        ds_logger.addFilter(_AcceleratorNoticeFilter())


def _is_peft(module: nn.Module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


def plain_llm_state(model: Any, merge_lora: bool, in_place: bool = False) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The LLM as a plain causal LM: its config, its state dict, and (unmerged) the LoRA adapter.

    Args:
        model: a blip2_qwen model.
        merge_lora: with LoRA, merge it into the weights with peft's
            ``merge_and_unload``; otherwise the base weights go out and the
            adapter is returned apart (PEFT key names).
        in_place: merge inside the model's own LLM instead of a copy (saves a
            second LLM in memory; the model's LoRA layers are consumed, so only
            for a model that is not used afterwards, as in ``lavislite.export``).

    Returns:
        (the LLM's transformers config, ``{plain LLM key: tensor}``, ``{PEFT key: tensor}``).
    """
    llm = model.llm
    if not _is_peft(llm):
        return llm.config, llm.state_dict(), {}
    if merge_lora:
        merged = (llm if in_place else copy.deepcopy(llm)).merge_and_unload(progressbar=False)
        return merged.config, merged.state_dict(), {}
    base = llm.get_base_model()
    state = {}
    for key, value in base.state_dict().items():
        if is_lora_key(key):
            continue
        state[key.replace(".base_layer.", ".")] = value
    adapter = peft_adapter_state({f"llm.{k}": v for k, v in llm.state_dict().items() if is_lora_key(k)})
    return base.config, state, adapter


def export_state_dict(model: Any, llm_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lavislite weights under ``Blip2ForConditionalGeneration``'s names."""
    out: dict[str, torch.Tensor] = {}
    out.update({f"vision_model.{k}": v for k, v in model.vision.state_dict().items()})
    out.update({f"qformer.{k}": v for k, v in model.qformer.state_dict().items()})
    out["query_tokens"] = model.query_tokens.detach()
    out.update({f"language_projection.{k}": v for k, v in model.proj.state_dict().items()})
    out.update({f"language_model.{k}": v for k, v in llm_state.items()})
    return out


def build_blip2_config(model: Any, llm_config: Any) -> Any:
    """The ``Blip2Config`` of a blip2_qwen model (vision/Q-Former settings as lavislite built them)."""
    from transformers import Blip2Config

    text_config = copy.deepcopy(llm_config)
    tok = model.tokenizer
    # Blip2ForConditionalGeneration.generate runs language_model.generate, whose
    # defaults come from the text config: a reply ends with <|im_end|> (ChatML) or
    # <|endoftext|>, as lavislite's generate stops.
    text_config.eos_token_id = stop_token_ids(tok)
    text_config.pad_token_id = int(tok.convert_tokens_to_ids(ENDOFTEXT))
    return Blip2Config(
        vision_config=model.vision.config.to_dict(),
        qformer_config=model.qformer.config.to_dict(),
        text_config=text_config.to_dict(),
        num_query_tokens=int(model.cfg.qformer.num_query_token),
        image_token_index=int(model.image_token_id),
    )


def eval_image_settings(model: Any) -> dict[str, Any]:
    """lavislite's eval image processing of this model (``preprocess.vis_processor.eval``).

    Raises:
        ValueError: the eval processor is not ``blip_image_eval`` (nothing else maps to BLIP's image processor).
    """
    from lavislite.processors.blip_processors import ImageEvalConfig

    spec = dict((model.cfg.preprocess or {}).get("vis_processor", {}).get("eval") or {})
    name = spec.pop("name", "blip_image_eval")
    if name != "blip_image_eval":
        raise ValueError(f"model.preprocess.vis_processor.eval is '{name}'; only blip_image_eval maps to a transformers image processor")
    cfg = ImageEvalConfig(**{"image_size": model.cfg.vision.image_size, **spec})
    return dataclasses.asdict(cfg)


def build_image_processor(settings: Mapping[str, Any]) -> Any:
    """A ``BlipImageProcessor`` (PIL backend) doing what ``blip_image_eval`` does.

    Resize to ``image_size`` square with PIL (bicubic), rescale by 1/255,
    normalise with CLIP mean/std, RGB conversion first.
    """
    from transformers import BlipImageProcessorPil

    size = int(settings["image_size"])
    return BlipImageProcessorPil(
        do_resize=True,
        size={"height": size, "width": size},
        resample=PIL_RESAMPLE[str(settings["interpolation"])],
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(settings["mean"]),
        image_std=list(settings["std"]),
        do_convert_rgb=True,
    )


def system_message_of(model: Any) -> str:
    """The default system message of the model's eval chat processor."""
    spec = (model.cfg.preprocess or {}).get("text_processor", {}).get("eval") or {}
    return str(spec.get("system_message") or DEFAULT_SYSTEM_MESSAGE)


def export_tokenizer(tokenizer: Any, num_image_tokens: int, system_message: str = DEFAULT_SYSTEM_MESSAGE) -> Any:
    """A copy of ``tokenizer`` as an export carries it: chat template with N baked in.

    ``image_token`` is declared as a named special token (``<|image_pad|>``, an
    existing id): ``Blip2Processor`` would otherwise add a new ``<image>``
    token to the vocabulary. Padding is on the left, for batched generation.
    """
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as stage:
        # A reload is the public way to add a named special token.
        tokenizer.save_pretrained(stage)
        tok = AutoTokenizer.from_pretrained(stage, extra_special_tokens={"image_token": IMAGE_TOKEN})
    tok.chat_template = chatml_template(int(num_image_tokens), system_message)
    tok.padding_side = "left"
    return tok


def _lavislite_config(model: Any, run_config: Mapping[str, Any] | None, merged: bool) -> dict[str, Any]:
    from omegaconf import OmegaConf

    cfg: dict[str, Any] = {}
    if run_config is not None:
        cfg = OmegaConf.to_container(OmegaConf.create(dict(run_config)), resolve=True)  # type: ignore[assignment]
    section = dataclasses.asdict(model.cfg)
    # The export holds every weight: nothing else is read to rebuild it.
    section.update({"vit_pretrained": "", "pretrained": "", "finetuned": "", "load_finetuned": None})
    if merged:
        section["lora"]["enabled"] = False
    cfg["model"] = section
    return cfg


def _is_export(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, EXPORT_CONFIG))


def export_hf(
    model: Any,
    out_dir: str,
    *,
    merge_lora: bool = False,
    run_config: Mapping[str, Any] | None = None,
    max_shard_size: str | int = "5GB",
    in_place: bool = False,
) -> dict[str, Any]:
    """Writes ``model`` as a Hugging Face BLIP-2 folder (atomically; see the module docstring).

    Args:
        model: a blip2_qwen model with its trained weights.
        out_dir: the folder (created, or replaced when it is an earlier export).
        merge_lora: merge a LoRA adapter into the LLM; otherwise the base LLM is
            exported and the adapter goes to ``out_dir/adapter``.
        run_config: the run config to keep in ``lavislite.yaml`` (its ``model``
            section is replaced by the model's own config).
        max_shard_size: ``save_pretrained``'s shard size.
        in_place: see ``plain_llm_state``.

    Returns:
        A summary: ``tensors``, ``shards``, ``lora`` (``"merged"``, ``"adapter"`` or ``None``).
    """
    import yaml
    from transformers import Blip2ForConditionalGeneration, Blip2Processor, GenerationConfig

    has_lora = _is_peft(model.llm)
    if merge_lora and not has_lora:
        logger.warning("--merge-lora: the model has no LoRA; exporting its LLM as it is")
    llm_config, llm_state, adapter = plain_llm_state(model, merge_lora and has_lora, in_place=in_place)
    state = export_state_dict(model, llm_state)
    config = build_blip2_config(model, llm_config)
    ln_eps, vit_eps = model.vision.post_layernorm.eps, config.vision_config.layer_norm_eps
    if ln_eps != vit_eps:
        # Blip2VisionModel has one eps for every LayerNorm (see the module docstring).
        logger.info("ln_vision eps %g exported as the ViT's %g (transformers has one layer_norm_eps)", ln_eps, vit_eps)

    # Built on the meta device and given the model's own tensors: no second
    # copy of the weights, no random initialisation of a multi-GB model.
    with torch.device("meta"):
        hf = Blip2ForConditionalGeneration(config)
    expected = set(hf.state_dict())
    if set(state) != expected:
        raise RuntimeError(
            f"export key mismatch: not in Blip2ForConditionalGeneration {sorted(set(state) - expected)[:5]}, "
            f"not exported {sorted(expected - set(state))[:5]}"
        )
    hf.load_state_dict(state, strict=True, assign=True)
    hf.tie_weights()
    tok = model.tokenizer
    hf.generation_config = GenerationConfig(
        # Both, as lavislite's generate and Qwen's own generation config stop.
        eos_token_id=stop_token_ids(tok),
        pad_token_id=int(tok.convert_tokens_to_ids(ENDOFTEXT)),
        bos_token_id=getattr(llm_config, "bos_token_id", None),
    )

    quiet_deepspeed_accelerator_notice()
    with atomic_folder(out_dir, replaceable=_is_export) as tmp:
        hf.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer = export_tokenizer(model.tokenizer, int(model.cfg.qformer.num_query_token), system_message_of(model))
        image_processor = build_image_processor(eval_image_settings(model))
        # num_query_tokens=None: the processor adds no image tokens of its own
        # (the stock one prepends N of them); the chat template places them.
        processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=None)
        processor.save_pretrained(tmp)  # the tokenizer files, chat_template.jinja, processor_config.json
        image_processor.save_pretrained(tmp)  # preprocessor_config.json, for AutoImageProcessor
        if adapter:
            adapter_dir = os.path.join(tmp, EXPORT_ADAPTER_DIR)
            os.makedirs(adapter_dir)
            write_adapter(adapter_dir, adapter, dataclasses.asdict(model.cfg.lora), model.cfg.llm_model)
        with open(os.path.join(tmp, EXPORT_CONFIG), "w", encoding="utf-8") as fh:
            yaml.safe_dump(_lavislite_config(model, run_config, merged=merge_lora and has_lora), fh, sort_keys=False, allow_unicode=True)
        shards = sorted(f for f in os.listdir(tmp) if f.endswith(".safetensors"))
    lora = None if not has_lora else ("merged" if merge_lora else "adapter")
    summary = {"tensors": len(state), "shards": len(shards), "lora": lora}
    logger.info("exported %d tensors in %d shard(s) to %s (LoRA: %s)", len(state), len(shards), out_dir, lora or "none")
    return summary
