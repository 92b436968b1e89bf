"""A trained model -> a plain Hugging Face folder, loadable with transformers alone.

One shared writer (``export_hf``) does what every family's export needs: the
plain LLM state (LoRA merged or apart as a PEFT adapter), the text config's
stop and pad tokens, a strict build of the transformers class on the meta
device, the tokenizer with lavislite's chat template, the generation config,
the adapter and ``lavislite.yaml`` (so ``load_from_checkpoint`` can read the
folder back), written atomically. Each family adds a small
``HFExportWriter`` (``model.export_writer()``), named by the transformers class
it writes: its config, its weight names, its processor. blip2_qwen's writes::

    config.json                  Blip2Config: vision/qformer configs, the Qwen text_config,
                                 num_query_tokens, image_token_index = <|image_pad|>
    model.safetensors            (or model-0000N-of-0000M.safetensors + an index past --max-shard-size)
    generation_config.json       eos [<|im_end|>, <|endoftext|>], pad <|endoftext|>
    tokenizer.json, tokenizer_config.json, chat_template.jinja
                                 the Qwen2.5 tokenizer with lavislite's chat template
                                 (an image part -> <|vision_start|> + N x <|image_pad|> + <|vision_end|>)
    preprocessor_config.json     the image processor = lavislite's eval image processing
    processor_config.json        the family's processor
    adapter/                     LoRA, not merged: a PEFT adapter for the language model
    lavislite.yaml               lavislite's model config (load_from_checkpoint reads it)
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

from lavislite.common.errors import UserError
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


class HFExportWriter:
    """What one family adds to the shared export (``export_hf``); one subclass per family.

    Attributes:
        hf_class: the transformers class the folder holds (``Blip2ForConditionalGeneration``).
    """

    hf_class: str = ""

    def check(self, model: Any) -> None:
        """Raises ``ExportError`` saying why ``model`` has no transformers counterpart (a no-op where it has one)."""

    def config(self, model: Any, text_config: Any) -> Any:
        """The folder's transformers config around ``text_config`` (the LLM's, stop and pad tokens set)."""
        raise NotImplementedError

    def state_dict(self, model: Any, llm_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every weight under ``hf_class``'s names; ``llm_state`` is the plain LLM's state dict."""
        raise NotImplementedError

    def template_image_tokens(self, model: Any) -> int:
        """How many ``<|image_pad|>`` tokens the chat template writes per image (the processor may expand them)."""
        return int(model.num_image_tokens)

    def processor(self, model: Any, tokenizer: Any) -> tuple[Any, Any]:
        """``(processor, image_processor)`` the folder carries (``AutoProcessor`` / ``AutoImageProcessor`` read them)."""
        raise NotImplementedError


class ExportError(UserError, ValueError):
    """A model that cannot leave as the Hugging Face class of its family; the message says why and what is possible."""


def export_text_config(llm_config: Any, tokenizer: Any) -> Any:
    """A copy of the LLM's config as an export's ``text_config``: a reply ends on ``<|im_end|>`` or ``<|endoftext|>``.

    A transformers vision-language model's ``generate`` runs the language
    model's ``generate``, whose defaults come from the text config; lavislite's
    generate stops on both tokens, as Qwen's own generation config does.
    """
    text_config = copy.deepcopy(llm_config)
    text_config.eos_token_id = stop_token_ids(tokenizer)
    text_config.pad_token_id = int(tokenizer.convert_tokens_to_ids(ENDOFTEXT))
    return text_config


def _lavislite_config(model: Any, run_config: Mapping[str, Any] | None, merged: bool) -> dict[str, Any]:
    from omegaconf import OmegaConf

    cfg: dict[str, Any] = {}
    if run_config is not None:
        cfg = OmegaConf.to_container(OmegaConf.create(dict(run_config)), resolve=True)  # type: ignore[assignment]
    section = dataclasses.asdict(model.cfg)
    # The export holds every weight: nothing else is read to rebuild it.
    for key in model.BASE_WEIGHTS:
        target = section
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = ""
    section.update({"finetuned": "", "load_finetuned": None})
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
    """Writes ``model`` as a Hugging Face folder of its family's class (atomically; see the module docstring).

    Args:
        model: a lavislite model with its trained weights.
        out_dir: the folder (created, or replaced when it is an earlier export).
        merge_lora: merge a LoRA adapter into the LLM; otherwise the base LLM is
            exported and the adapter goes to ``out_dir/adapter``.
        run_config: the run config to keep in ``lavislite.yaml`` (its ``model``
            section is replaced by the model's own config).
        max_shard_size: ``save_pretrained``'s shard size.
        in_place: see ``plain_llm_state``.

    Returns:
        A summary: ``hf_class``, ``tensors``, ``shards``, ``lora`` (``"merged"``, ``"adapter"`` or ``None``).

    Raises:
        ExportError: the model has no transformers counterpart (the message says why).
    """
    import transformers
    import yaml
    from transformers import GenerationConfig

    writer = model.export_writer()
    writer.check(model)
    has_lora = _is_peft(model.llm)
    if merge_lora and not has_lora:
        logger.warning("--merge-lora: the model has no LoRA; exporting its LLM as it is")
    llm_config, llm_state, adapter = plain_llm_state(model, merge_lora and has_lora, in_place=in_place)
    state = writer.state_dict(model, llm_state)
    config = writer.config(model, export_text_config(llm_config, model.tokenizer))

    # Built on the meta device and given the model's own tensors: no second
    # copy of the weights, no random initialisation of a multi-GB model.
    with torch.device("meta"):
        hf = getattr(transformers, writer.hf_class)(config)
    expected = set(hf.state_dict())
    if set(state) != expected:
        raise RuntimeError(
            f"export key mismatch: not in {writer.hf_class} {sorted(set(state) - expected)[:5]}, "
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
        tokenizer = export_tokenizer(model.tokenizer, writer.template_image_tokens(model), system_message_of(model))
        processor, image_processor = writer.processor(model, tokenizer)
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
    summary = {"hf_class": writer.hf_class, "tensors": len(state), "shards": len(shards), "lora": lora}
    logger.info("exported %s: %d tensors in %d shard(s) to %s (LoRA: %s)", writer.hf_class, len(state), len(shards), out_dir, lora or "none")
    return summary
