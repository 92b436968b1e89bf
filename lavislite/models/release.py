"""Release folders: a trained model's weights as safetensors, its config, its LoRA adapter.

A run writes ``output_dir/<job_id>/release/``::

    model.safetensors          only the trainable weights, lavislite parameter names
    config.yaml                the fully merged run config (model, datasets, run)
    adapter_config.json        with LoRA: the adapter in PEFT's own format, which
    adapter_model.safetensors  PeftModel.from_pretrained(base_qwen, release) loads

Everything here reads with safetensors, YAML, JSON or ``torch.load(weights_only=True)``
(older ``checkpoint_release.pth`` files): nothing is ever unpickled.

``load_from_checkpoint`` is how the inference entry points (chat, web UI, export)
get a model: it takes a run folder, a release folder, an exported Hugging Face
folder or an older ``.pth`` release and builds the model from the config stored
with the weights, loading them through the model's normal ``finetuned`` path
(so the usual load report is logged and checked).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from lavislite.common.errors import CheckpointError, MissingFileError
from lavislite.common.io import atomic_folder

# File names of a release folder and of an exported Hugging Face folder.
RELEASE_WEIGHTS = "model.safetensors"
RELEASE_CONFIG = "config.yaml"
RELEASE_DIR = "release"
LEGACY_RELEASE = "checkpoint_release.pth"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
# The lavislite config an export carries, so load_from_checkpoint can rebuild the model.
EXPORT_CONFIG = "lavislite.yaml"
EXPORT_ADAPTER_DIR = "adapter"

# peft's adapter name inside lavislite models (get_peft_model's default).
PEFT_ADAPTER_NAME = "default"
_LORA_KEY = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\.")


# -- writing ------------------------------------------------------------------------------
def is_lora_key(key: str) -> bool:
    """Whether a parameter name is a LoRA adapter weight (``...lora_A.default.weight``)."""
    return _LORA_KEY.search(key) is not None


def peft_adapter_state(trainable: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lavislite LoRA weights -> PEFT's saved key names, relative to the plain LLM.

    ``llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight``
    -> ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``: the
    ``llm.`` prefix goes (the adapter belongs to the LLM alone) and so does the
    adapter name, as ``peft.get_peft_model_state_dict`` writes it.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in trainable.items():
        if not is_lora_key(key):
            continue
        if not key.startswith("llm.base_model.model."):
            raise ValueError(f"LoRA weight {key} is not under llm.base_model.model.: only the LLM carries LoRA in lavislite")
        name = key[len("llm.") :].replace(f".{PEFT_ADAPTER_NAME}.", ".")
        out[name] = value
    return out


def _safetensors_ready(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, none sharing memory (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{key}: expected a tensor, got {type(value).__name__}")
        t = value.detach().to("cpu").contiguous()
        ident = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if ident in seen:
            t = t.clone()  # e.g. tied embeddings given under two names
        seen.add(ident)
        out[key] = t
    return out


def write_adapter(
    out_dir: str,
    adapter_state: Mapping[str, torch.Tensor],
    lora: Mapping[str, Any],
    base_model_name_or_path: str | None,
) -> None:
    """Writes a PEFT LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).

    The config is peft's own ``LoraConfig`` (so every field peft expects is
    there, with this peft's version), built from lavislite's LoRA settings.

    Args:
        out_dir: an existing folder.
        adapter_state: weights under PEFT's names (``peft_adapter_state``).
        lora: ``{r, alpha, dropout, target_modules}`` (lavislite's ``model.lora``).
        base_model_name_or_path: the LLM the adapter belongs to (``model.llm_model``).
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    config = LoraConfig(
        r=int(lora["r"]),
        lora_alpha=lora["alpha"],
        lora_dropout=float(lora["dropout"]),
        target_modules=list(lora["target_modules"]),
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_name_or_path,
        inference_mode=True,
    )
    config.save_pretrained(out_dir)
    save_file(_safetensors_ready(adapter_state), os.path.join(out_dir, ADAPTER_WEIGHTS), metadata={"format": "pt"})


def _plain_config(config: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected the run config as a dict (model, datasets, run), got {type(config).__name__}")
    return OmegaConf.to_container(OmegaConf.create(dict(config)), resolve=True)  # type: ignore[return-value]


def _is_release(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f)) for f in (RELEASE_WEIGHTS, RELEASE_CONFIG)) and not is_hf_export(folder)


def write_release(
    out_dir: str,
    trainable: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    lora: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Writes a release folder atomically (see the module docstring for its files).

    Takes a plain state dict so that it runs anywhere: under ZeRO-3 the runner
    gathers the trainable parameters and calls this on rank 0 only; nothing
    here touches the model or the process group.

    Args:
        out_dir: the release folder (created, or replaced when it is a release).
        trainable: ``{lavislite parameter name: tensor}``, the trainable weights
            (``Blip2Qwen.trainable_state_dict()``); saved in their own dtype.
        config: the merged run config (``model``, ``datasets``, ``run``; a dict
            or an OmegaConf config); ``model`` is required.
        lora: LoRA settings (``{enabled, r, alpha, dropout, target_modules}``);
            default ``config["model"]["lora"]``. When enabled, the adapter is
            also written in PEFT's format.
        metadata: strings stored in the safetensors header (e.g. ``global_step``).

    Raises:
        ValueError: no ``model`` section, no weights, or LoRA enabled but no LoRA weights given.
        FileExistsError: ``out_dir`` is a non-empty folder that is not a release.
    """
    import yaml
    from safetensors.torch import save_file

    cfg = _plain_config(config)
    model_cfg = cfg.get("model")
    if not isinstance(model_cfg, dict):
        raise ValueError("write_release: config has no 'model' section; pass the merged run config (model, datasets, run)")
    if not trainable:
        raise ValueError("write_release: no trainable weights given (is every part frozen?)")
    lora = dict(lora if lora is not None else model_cfg.get("lora") or {})
    adapter = peft_adapter_state(trainable) if lora.get("enabled") else {}
    if lora.get("enabled") and not adapter:
        raise ValueError("write_release: lora.enabled is true but the trainable weights hold no LoRA weight (lora_A / lora_B)")
    tensors = _safetensors_ready(trainable)
    with atomic_folder(out_dir, replaceable=_is_release) as tmp:
        save_file(tensors, os.path.join(tmp, RELEASE_WEIGHTS), metadata={"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}})
        with open(os.path.join(tmp, RELEASE_CONFIG), "w", encoding="utf-8") as fh:
            yaml.safe_dump(cfg, fh, sort_keys=False, allow_unicode=True)
        if adapter:
            write_adapter(tmp, adapter, lora, model_cfg.get("llm_model"))


# -- finding and loading --------------------------------------------------------------------
def is_hf_export(folder: str) -> bool:
    """A Hugging Face model folder: ``config.json`` with (sharded) safetensors weights."""
    return os.path.isfile(os.path.join(folder, HF_CONFIG)) and any(os.path.isfile(os.path.join(folder, f)) for f in HF_WEIGHTS)


def resolve_checkpoint(path: str) -> str:
    """The file or folder to load for ``path``.

    Accepts a run folder (-> its ``release/``; an older run's
    ``checkpoint_release.pth``), a release folder, an exported Hugging Face
    folder or a checkpoint file. A relative path that does not exist from the
    current folder is looked up under ``cache_root``, as other weights are.

    Raises:
        FileNotFoundError: naming every place looked at.
    """
    from lavislite.common.utils import resolve_data_path

    p = resolve_data_path(path)
    if os.path.isfile(p):
        parent = os.path.dirname(p)
        # release/model.safetensors names the release: its config sits beside it.
        if os.path.basename(p) == RELEASE_WEIGHTS and (_is_release(parent) or is_hf_export(parent)):
            return parent
        return p
    if os.path.isdir(p):
        if is_hf_export(p) or _is_release(p):
            return p
        release = os.path.join(p, RELEASE_DIR)
        if os.path.isdir(release) and _is_release(release):
            return release
        legacy = os.path.join(p, LEGACY_RELEASE)
        if os.path.isfile(legacy):
            return legacy
    raise MissingFileError(
        f"no lavislite checkpoint at '{path}' ({p}): looked for a run folder ({RELEASE_DIR}/{RELEASE_WEIGHTS} + "
        f"{RELEASE_DIR}/{RELEASE_CONFIG}, or {LEGACY_RELEASE}), a release folder ({RELEASE_WEIGHTS} + {RELEASE_CONFIG}), "
        f"a Hugging Face export ({HF_CONFIG} + {' or '.join(HF_WEIGHTS)}) or a checkpoint file"
    )


def release_base_weights(path: str) -> dict[str, str]:
    """The base weights (``vit_pretrained``, ``pretrained``) a lavislite release was trained on.

    A release holds only the weights that trained; the frozen parts (a
    pretrained ViT, a stage-1 Q-Former) come from the files its config names,
    read again at load time. Returns ``{key: path}`` for those set in the
    release's config, or ``{}`` for a checkpoint that is not a release folder
    (an export or a ``.pth`` holds every weight it needs).
    """
    try:
        folder = resolve_checkpoint(path)
    except MissingFileError:
        return {}
    if not os.path.isdir(folder) or is_hf_export(folder) or not _is_release(folder):
        return {}
    model = read_release_config(folder)["model"]
    if model.get("load_pretrained") is False:
        return {}
    return {key: str(model[key]) for key in ("vit_pretrained", "pretrained") if model.get(key)}


def read_release_config(path: str) -> dict[str, Any]:
    """The run config stored with a checkpoint (release folder, export folder or ``.pth``).

    Raises:
        ValueError: the checkpoint carries no config with a ``model`` section.
    """
    import yaml

    if os.path.isdir(path):
        name = EXPORT_CONFIG if is_hf_export(path) else RELEASE_CONFIG
        cfg_path = os.path.join(path, name)
        if not os.path.isfile(cfg_path):
            hint = " (a Hugging Face BLIP-2 folder not exported by lavislite: load its weights with model.pretrained=<folder>)" if is_hf_export(path) else ""
            raise CheckpointError(f"{path}: no {name} with the model config{hint}")
        with open(cfg_path, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh)
    elif path.endswith(".safetensors"):
        raise CheckpointError(f"{path}: a weights file alone has no config; pass its release folder (with {RELEASE_CONFIG})")
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        cfg = obj.get("config") if isinstance(obj, dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"{path}: holds no run config with a 'model' section (weights alone: name them as model.finetuned in a run config)")
    return cfg


def export_model_overrides(folder: str) -> dict[str, Any]:
    """Model-config overrides that build the model of an export folder from the folder alone.

    The export holds every weight, its own tokenizer and its LLM config: the LLM
    is built from that config (``llm_init: random``, its weights then come from
    the folder) rather than read again from ``llm_model`` (a hub id that may
    mean a download), and no LAVIS / BLIP-2 file is read.
    """
    import json

    with open(os.path.join(folder, HF_CONFIG), encoding="utf-8") as fh:
        text_config = dict(json.load(fh)["text_config"])
    model_type = text_config.pop("model_type")
    # Bookkeeping fields of a saved config, not constructor arguments.
    for key in ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype", "output_attentions", "output_hidden_states", "return_dict"):
        text_config.pop(key, None)
    return {
        "llm_model": model_type,
        "llm_init": "random",
        "llm_config": text_config,
        "tokenizer": folder,
        "vit_pretrained": "",
        "pretrained": "",
    }


def load_from_checkpoint(
    path: str, *, is_eval: bool = True, device: str | torch.device = "cpu", **overrides: Any
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Builds a trained model and its processors from a checkpoint and the config saved with it.

    Args:
        path: a run folder, release folder, exported Hugging Face folder or an
            older ``checkpoint_release.pth`` (``resolve_checkpoint``).
        is_eval: put the model in eval mode.
        device: where to move it.
        **overrides: merged over the stored ``model`` config (e.g. ``freeze_vit=False``).

    Returns:
        ``(model, vis_processors, txt_processors)`` as ``load_model_and_preprocess`` gives them.

    Raises:
        FileNotFoundError: nothing loadable at ``path``.
        ValueError: the checkpoint has no stored config, or its weights do not fit the model it describes.
    """
    from omegaconf import OmegaConf

    from lavislite.common.config import load_model_config
    from lavislite.common.registry import registry
    from lavislite.models import load_preprocess

    resolved = resolve_checkpoint(path)
    section = dict(read_release_config(resolved)["model"])
    if os.path.isdir(resolved) and is_hf_export(resolved):
        section.update(export_model_overrides(resolved))
    # The weights load through the model's own finetuned path: reported, and an
    # error (not a random model) when they do not fit.
    section.update({"finetuned": resolved, "load_finetuned": True})
    merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(section), OmegaConf.create(overrides)), resolve=True)
    arch, model_type = merged.pop("arch", None), merged.pop("model_type", None)  # type: ignore[union-attr]
    if not arch or not model_type:
        raise CheckpointError(f"{resolved}: the stored model config names no arch / model_type")
    cfg = load_model_config(str(arch), str(model_type), merged)  # type: ignore[arg-type]
    model_cls = registry.get_model_class(str(arch))
    model = model_cls.from_config(cfg)
    if is_eval:
        model.eval()
    vis, txt = load_preprocess(cfg, model_cls.processor_context(cfg))
    return model.to(device), vis, txt
