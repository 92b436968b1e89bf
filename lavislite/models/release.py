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


# -- the text processor a model was trained with --------------------------------------------
# Filled from the model (its tokenizer and query count), not part of what the data taught it.
_CONTEXT_KEYS = ("tokenizer", "num_image_tokens")
# What a chat or an export must repeat exactly: the prompt the model learned and its length.
TRAINED_TEXT_KEYS = ("system_message", "max_len")


def trained_text_processor(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The text processor the training datasets of a run config used (their ``text_processor.train``).

    A model answers best with the system message (and within the ``max_len``)
    it was trained on; ``model.preprocess`` only holds a default. The training
    datasets are those with a ``run.train_splits`` split (``train`` unless set)
    and a ``text_processor.train``. When they disagree on ``system_message`` or
    ``max_len``, the first one (in config order) is taken, with a warning that
    names them.

    Args:
        config: a merged run config as a plain dict (``model``, ``datasets``, ``run``).

    Returns:
        The processor spec (``name``, ``system_message``, ``max_len``, ...; the
        model-given ``tokenizer`` / ``num_image_tokens`` left out), or None when
        no dataset in the config trains.
    """
    from lavislite.common.logger import logger

    train_splits = list((config.get("run") or {}).get("train_splits") or ["train"])
    found: list[tuple[str, dict[str, Any]]] = []
    for name, section in (config.get("datasets") or {}).items():
        if not isinstance(section, Mapping):
            continue
        spec = (section.get("text_processor") or {}).get("train")
        if not isinstance(spec, Mapping):
            continue
        annotations = ((section.get("build_info") or {}).get("annotations")) or {}
        if annotations and not any(split in annotations for split in train_splits):
            continue  # an evaluation-only dataset
        found.append((str(name), {k: v for k, v in spec.items() if k not in _CONTEXT_KEYS}))
    if not found:
        return None
    first_name, first = found[0]
    for key in TRAINED_TEXT_KEYS:
        values = {name: spec.get(key) for name, spec in found}
        if len({repr(v) for v in values.values()}) > 1:
            listed = ", ".join(f"datasets.{n}: {v!r}" for n, v in values.items())
            logger.warning("the training datasets disagree on text_processor.train.%s (%s): chat and export use datasets.%s's", key, listed, first_name)
    return dict(first)


def with_trained_text_processor(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a run config whose ``model.preprocess.text_processor`` is the one the model trained with.

    Both ``train`` and ``eval`` become the training datasets' processor
    (``trained_text_processor``), over the model's default spec, so
    ``load_model_and_preprocess``, ``model.chat`` (terminal and web chat) and
    the export's chat template render the prompt the model learned. A config
    without training datasets comes back unchanged.
    """
    import copy

    cfg = copy.deepcopy(dict(config))
    spec = trained_text_processor(cfg)
    model = cfg.get("model")
    if spec is None or not isinstance(model, dict):
        return cfg
    preprocess = dict(model.get("preprocess") or {})
    text = dict(preprocess.get("text_processor") or {})
    for split in ("train", "eval"):
        old = dict(text.get(split) or {})
        if old.get("name", spec.get("name")) != spec.get("name"):
            old = {}  # another processor's keys would not fit this one's schema
        text[split] = {**old, **spec}
    preprocess["text_processor"] = text
    model["preprocess"] = preprocess
    return cfg


# -- precision ----------------------------------------------------------------------------
PRECISIONS = ("fp32", "bf16", "fp16")


def precision_dtype(precision: str) -> torch.dtype:
    """``run.precision`` (``fp32`` / ``bf16`` / ``fp16``) as a torch dtype.

    Raises:
        ValueError: any other name (the message lists the valid ones).
    """
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise ValueError(f"precision '{precision}': expected one of {', '.join(PRECISIONS)}")
    return table[precision]


def run_precision(config: Mapping[str, Any], override: str | None = None) -> str:
    """The precision a model of this run config runs in: ``override`` (``--dtype``), else ``run.precision``, else fp32.

    A config with no ``run.precision`` (an older release, a bare model config)
    keeps fp32, the dtype models are built in.
    """
    if override:
        precision_dtype(override)  # checked
        return override
    value = (config.get("run") or {}).get("precision") if isinstance(config.get("run"), Mapping) else None
    return str(value) if value else "fp32"


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

    # The release says which prompt (system message, max_len) the model learned.
    cfg = with_trained_text_processor(_plain_config(config))
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
    if not os.path.exists(p):
        raise MissingFileError(f"no checkpoint at '{path}': {describe_places(path)}")
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


def checkpoint_places(path: str) -> list[str]:
    """Every place a checkpoint path is looked for, in order: as given (from the current folder), then under ``cache_root``."""
    from lavislite.common.utils import default_cache_root

    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded):
        return [expanded]
    return [os.path.abspath(expanded), os.path.join(default_cache_root(), expanded)]


def describe_places(path: str) -> str:
    """``"nothing at A, nor at B (under cache_root)"`` for a checkpoint path that exists nowhere."""
    places = checkpoint_places(path)
    if len(places) == 1:
        return f"nothing at {places[0]}"
    return f"nothing at {places[0]}, nor at {places[1]} (under cache_root)"


def check_checkpoint(path: str, label: str | None = None) -> None:
    """Raises now, before anything is built, what loading ``path`` later would raise for a missing checkpoint.

    A path that exists nowhere fails, naming each place looked at. A folder
    that holds no weight file of its own must be a run folder with a release
    (``resolve_checkpoint``); other folders and files are left to the loader,
    which reads more layouts (Hugging Face ``.bin`` shards, LAVIS ``.pth``).

    Args:
        path: the checkpoint path as the user gave it.
        label: how the user gave it (``--checkpoint X``), to start the message with.

    Raises:
        MissingFileError: no checkpoint there.
    """
    from lavislite.common.utils import resolve_data_path

    p = resolve_data_path(path)
    if not os.path.exists(p):
        raise MissingFileError(f"{label}: not found: {describe_places(path)}" if label else f"no checkpoint at '{path}': {describe_places(path)}")
    if os.path.isdir(p) and not any(f.endswith(_WEIGHT_SUFFIXES) for f in os.listdir(p)):
        try:
            resolve_checkpoint(path)
        except MissingFileError as exc:
            if label is None:
                raise
            raise MissingFileError(f"{label}: {exc}") from None


# The files a folder holds when it is a checkpoint itself (not a run folder).
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pth", ".pt")


def release_base_weights(path: str, keys: tuple[str, ...] = ("vit_pretrained", "pretrained")) -> dict[str, str]:
    """The base weights (the family's ``BASE_WEIGHTS``: ``vit_pretrained``, ``pretrained``, ...) a lavislite release was trained on.

    A release holds only the weights that trained; the frozen parts (a
    pretrained ViT, a stage-1 Q-Former) come from the files its config names,
    read again at load time. Returns ``{key: path}`` for those set in the
    release's config, or ``{}`` for a checkpoint that is not a release folder
    (an export or a ``.pth`` holds every weight it needs).

    Args:
        path: the checkpoint.
        keys: the model-config keys (dotted for nested ones) that name base weights.
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
    out = {}
    for key in keys:
        value: Any = model
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value:
            out[key] = str(value)
    return out


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
    mean a download), and no base weight file is read (``load_pretrained``
    false); a family adds its own (``export_overrides``).
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
        "load_pretrained": False,
    }


def load_from_checkpoint(
    path: str, *, is_eval: bool = True, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None, **overrides: Any
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Builds a trained model and its processors from a checkpoint and the config saved with it.

    Args:
        path: a run folder, release folder, exported Hugging Face folder or an
            older ``checkpoint_release.pth`` (``resolve_checkpoint``).
        is_eval: put the model in eval mode.
        device: where to move it.
        dtype: the dtype of its weights (``"bf16"``, ``torch.bfloat16``, ...;
            ``checkpoint_precision`` gives the run's own); None keeps the
            dtype the model is built in (fp32).
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
    # The text processor it trained with (recorded by write_release; derived
    # from the stored datasets for a release written before that).
    section = dict(with_trained_text_processor(read_release_config(resolved))["model"])
    arch, model_type = section.get("arch"), section.get("model_type")
    if not arch or not model_type:
        raise CheckpointError(f"{resolved}: the stored model config names no arch / model_type")
    model_cls = registry.get_model_class(str(arch))
    if os.path.isdir(resolved) and is_hf_export(resolved):
        section.update(export_model_overrides(resolved))  # replaces llm_config whole
        _override(section, model_cls.export_overrides(resolved))
    layers = [OmegaConf.create(section)]
    # The weights load through the model's own finetuned path: reported, and an
    # error (not a random model) when they do not fit.
    layers.append(OmegaConf.create({"finetuned": resolved, "load_finetuned": True}))
    merged = OmegaConf.to_container(OmegaConf.merge(*layers, OmegaConf.create(overrides)), resolve=True)
    merged.pop("arch", None), merged.pop("model_type", None)  # type: ignore[union-attr]
    cfg = load_model_config(str(arch), str(model_type), merged)  # type: ignore[arg-type]
    model = model_cls.from_config(cfg)
    if is_eval:
        model.eval()
    vis, txt = load_preprocess(cfg, model_cls.processor_context(cfg))
    if dtype is not None:
        model = model.to(precision_dtype(dtype) if isinstance(dtype, str) else dtype)
    return model.to(device), vis, txt


def _override(target: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Sets ``overrides`` into ``target`` key by key; a non-empty mapping recurses, anything else (``{}`` too) replaces."""
    for key, value in overrides.items():
        if isinstance(value, Mapping) and value and isinstance(target.get(key), dict):
            target[key] = dict(target[key])
            _override(target[key], value)
        else:
            target[key] = value


def checkpoint_precision(path: str, override: str | None = None) -> str:
    """The precision a checkpoint's run trained in (``run.precision`` of its stored config), or ``override``.

    Raises:
        FileNotFoundError, ValueError: as ``resolve_checkpoint`` / ``read_release_config``.
    """
    return run_precision(read_release_config(resolve_checkpoint(path)), override)
