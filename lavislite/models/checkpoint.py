"""Reading the checkpoints people have into blip2_qwen, with a full report.

Formats:
    * LAVIS ``eva_vit_g.pth``: the EVA ViT alone (``blocks.N.attn.q_bias`` ...).
    * LAVIS BLIP-2 ``{"model": state_dict}`` (``visual_encoder.*``, ``ln_vision.*``,
      ``Qformer.bert.*``, ``query_tokens``).
    * MiniGPT4Qwen / MPP-LLaVA: the same names plus ``llm_proj.*`` (our ``proj``) and,
      with an unfrozen LLM, Qwen-1 ``llm_model.transformer.*`` keys; as a LAVIS
      runner file ``{"model": ...}``, a flat dict (``llm_proj.*`` alone, often
      bf16) or a DeepSpeed ``{"module": ...}`` state dict.
    * Hugging Face BLIP-2 folders / files (``vision_model.*``, ``qformer.*``,
      ``query_tokens``, ``language_projection.*``, ``language_model.*``), sharded
      safetensors with an index included. The projection and the language model
      load when they fit this model's LLM (a lavislite export, another BLIP-2 +
      Qwen) and are reported as another LLM's otherwise (an OPT / Flan-T5
      BLIP-2). A lavislite export's LoRA adapter (``adapter/``) comes with it.
    * lavislite release folders (``model.safetensors`` + ``config.yaml``) and
      older release files (``{"model": {our parameter names}}``).

Every key is renamed by an explicit rule below. A load returns a ``LoadReport``:
how many tensors were loaded, every checkpoint key not used (with why), every
model key left unfilled; a shape mismatch is an error naming the key and both
shapes. LAVIS loads with ``strict=False`` and says nothing; we say everything.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from lavislite.common.logger import logger
from lavislite.common.errors import CheckpointError, MissingFileError
from lavislite.models.release import ADAPTER_WEIGHTS, EXPORT_ADAPTER_DIR, is_hf_export, is_lora_key, resolve_checkpoint

# Why a checkpoint key is not used.
TEXT_BRANCH = "Q-Former text branch (not used for image-only queries)"
STAGE1_HEAD = "BLIP-2 stage-1 head (image-text contrastive / matching)"
OTHER_LLM = "another LLM's weights or projection"
NO_TARGET = "no matching parameter in the model"
NO_LORA = "LoRA adapter weights (this model has no LoRA layers there)"
PROJ_OTHER_WIDTH = "projection for another LLM (its shape does not fit this model's; it trains anew)"


def part_of(parts: Mapping[str, tuple[str, ...]], key: str) -> str | None:
    """The part a (converted, canonical) key belongs to: the part with the longest matching prefix, or None.

    Longest first, so a part nested in another's module (BLIP-2's ``ln_vision``
    inside ``vision.``) wins over the enclosing one.

    Args:
        parts: a family's ``PARTS`` (part name -> parameter-name prefixes).
        key: a parameter name.
    """
    best, best_len = None, -1
    for part, prefixes in parts.items():
        for prefix in prefixes:
            if key.startswith(prefix) and len(prefix) > best_len:
                best, best_len = part, len(prefix)
    return best


def model_parts(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """The parts a model declares (``PARTS``), or one part holding everything for a model that declares none."""
    return dict(getattr(model, "PARTS", None) or {"model": ("",)})


@dataclass(frozen=True)
class WeightFormat:
    """One checkpoint layout a family reads: how to recognise it and how to rename its keys.

    Attributes:
        name: the layout's name in load reports (``lavis_blip2``, ``hf_llava``, ...).
        detect: given a file's keys, whether they are in this layout (formats are tried in order).
        convert: ``state_dict -> (converted, unused)``: tensors under the model's
            parameter names, and ``{file key: why not used}``.
        scope_parts: the parts a file of this layout is expected to fill
            (default: the parts its converted keys touch).
        llm_may_be_foreign: the file may carry another LLM (and the projection
            trained for it): those keys load only when every LLM key fits this
            model's LLM, and are reported as another LLM's otherwise.
        source_key: a converted key back to the file's name, for reports.
        misfit_parts: parts whose tensors are reported (``PROJ_OTHER_WIDTH``), not
            loaded, when their shapes do not fit the model: a projection trained
            for another LLM's width, the common case when the LLM changes.
    """

    name: str
    detect: Callable[[list[str]], bool]
    convert: Callable[[dict[str, torch.Tensor]], tuple[dict[str, torch.Tensor], dict[str, str]]]
    scope_parts: tuple[str, ...] | None = None
    llm_may_be_foreign: bool = False
    source_key: Callable[[str], str] | None = None
    misfit_parts: tuple[str, ...] = ()


@dataclass
class LoadReport:
    """What one checkpoint load did."""

    path: str
    format: str
    loaded: list[str] = field(default_factory=list)  # model keys filled
    unused: dict[str, str] = field(default_factory=dict)  # checkpoint key -> reason
    missing: list[str] = field(default_factory=list)  # model keys (in the parts the file holds) not filled
    parts: list[str] = field(default_factory=list)  # the model parts the file holds
    llm_may_be_foreign: bool = False  # the layout can carry another LLM (a finetuned file's must fit)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for reason in self.unused.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        held = f"; holds {', '.join(self.parts)}" if self.parts else ""
        lines = [f"loaded {len(self.loaded)} tensors from {self.path} ({self.format}{held})"]
        for reason, n in sorted(reasons.items()):
            lines.append(f"  unused: {n} key(s): {reason}")
        if self.unused:
            lines.append("  unused keys: " + ", ".join(sorted(self.unused)))
        if self.missing:
            lines.append(f"  NOT FILLED: {len(self.missing)} model key(s): " + ", ".join(self.missing))
        return "\n".join(lines)


# Where the LAVIS files come from (LAVIS's own download addresses), for the not-found message.
KNOWN_SOURCES = {
    "eva_vit_g.pth": "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth",
    "blip2_pretrained.pth": "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/blip2_pretrained.pth",
}


def resolve_weights_path(path: str) -> str:
    """Absolute, relative to the current folder, or relative to cache_root; raises if absent."""
    from lavislite.common.utils import resolve_data_path

    resolved = resolve_data_path(path)
    if not os.path.exists(resolved):
        source = KNOWN_SOURCES.get(os.path.basename(path))
        hint = f"; download it from {source} to that path" if source else ""
        raise MissingFileError(f"weights not found: {resolved} (from '{path}'){hint}")
    return resolved


# -- reading files ------------------------------------------------------------------
def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Reads a checkpoint file or folder into a flat ``{key: tensor}``.

    Folders: a Hugging Face model folder (sharded or not; a lavislite export's
    PEFT adapter in ``adapter/`` is read with it, its keys under
    ``language_model.``), a lavislite release folder (``model.safetensors``),
    or a run folder (its ``release/``, or an older run's ``checkpoint_release.pth``).
    Uses safetensors or ``torch.load(weights_only=True)``; never unpickles code.
    """
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in _FOLDER_WEIGHTS):
        path = resolve_checkpoint(path)  # a run folder; raises naming what it looked for
    if os.path.isdir(path):
        out = _read_folder(path)
        adapter = os.path.join(path, EXPORT_ADAPTER_DIR, ADAPTER_WEIGHTS)
        if is_hf_export(path) and os.path.isfile(adapter):
            from safetensors.torch import load_file

            # PEFT names are relative to the LLM the adapter wraps: language_model.
            out.update({"language_model." + k: v for k, v in load_file(adapter).items()})
        return out
    return _read_file(path)


_FOLDER_WEIGHTS = ("model.safetensors.index.json", "pytorch_model.bin.index.json", "model.safetensors", "pytorch_model.bin")


def _read_folder(path: str) -> dict[str, torch.Tensor]:
    """The weights of a model folder: an index with its shards, or one weights file."""
    for index in _FOLDER_WEIGHTS[:2]:
        index_path = os.path.join(path, index)
        if os.path.exists(index_path):
            with open(index_path, encoding="utf-8") as fh:
                shards = sorted(set(json.load(fh)["weight_map"].values()))
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                out.update(_read_file(os.path.join(path, shard)))
            return out
    for name in _FOLDER_WEIGHTS[2:]:
        if os.path.exists(os.path.join(path, name)):
            return _read_file(os.path.join(path, name))
    raise MissingFileError(f"{path}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json) in this folder")


def _read_file(path: str) -> dict[str, torch.Tensor]:
    """One checkpoint file: safetensors, or a torch file read with ``weights_only=True``."""
    if not os.path.exists(path):
        raise MissingFileError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (or {{'model': state_dict}}) of tensors")
    return obj


# -- key renaming ---------------------------------------------------------------------
_VIT_RULES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.(weight|bias)$", r"embeddings.patch_embedding.\1"),
    (r"^blocks\.(\d+)\.norm1\.(weight|bias)$", r"encoder.layers.\1.layer_norm1.\2"),
    (r"^blocks\.(\d+)\.norm2\.(weight|bias)$", r"encoder.layers.\1.layer_norm2.\2"),
    (r"^blocks\.(\d+)\.attn\.qkv\.weight$", r"encoder.layers.\1.self_attn.qkv.weight"),
    (r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"^blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$", r"encoder.layers.\1.mlp.\2.\3"),
]

_QFORMER_RULES = [
    (r"^bert\.embeddings\.LayerNorm\.(weight|bias)$", r"layernorm.\1"),
    (r"^bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)$", r"encoder.layer.\1.\2.attention.\3.\4"),
    (r"^bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)$", r"encoder.layer.\1.\2.output.\3.\4"),
    (r"^bert\.encoder\.layer\.(\d+)\.(intermediate_query|output_query)\.(dense|LayerNorm)\.(weight|bias)$", r"encoder.layer.\1.\2.\3.\4"),
]
_QFORMER_TEXT = [
    r"^bert\.embeddings\.(word_embeddings|position_embeddings)\.weight$",
    r"^bert\.embeddings\.position_ids$",
    r"^bert\.encoder\.layer\.\d+\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)$",
    r"^cls\.",
]
# An instruction-aware Q-Former (InstructBLIP, transformers' InstructBlipQFormerModel) reads text:
# its word/position embeddings and the text FFNs load; the embeddings' LayerNorm is its own.
_QFORMER_TEXT_RULES = [
    (r"^bert\.embeddings\.LayerNorm\.(weight|bias)$", r"embeddings.layernorm.\1"),
    (r"^bert\.embeddings\.(word_embeddings|position_embeddings)\.weight$", r"embeddings.\1.weight"),
    (r"^bert\.encoder\.layer\.(\d+)\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)$", r"encoder.layer.\1.\2.\3.\4"),
]
# Why an instruction-aware Q-Former leaves a key unused.
POSITION_IDS = "position ids buffer (transformers computes it)"
MLM_HEAD = "Q-Former language-modelling head (BLIP-2 stage 1)"


def _apply(rules: list[tuple[str, str]], key: str) -> str | None:
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def convert_lavis_vit(sd: dict[str, torch.Tensor], prefix: str = "vision.") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """LAVIS EVA ViT keys -> ``Blip2VisionModel`` keys (under ``prefix``).

    LAVIS stores ``q_bias`` and ``v_bias`` (the k bias is always zero);
    transformers has one ``qkv.bias`` = cat(q_bias, 0, v_bias).
    """
    out: dict[str, torch.Tensor] = {}
    unused: dict[str, str] = {}
    biases: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        m = re.match(r"^blocks\.(\d+)\.attn\.(q_bias|v_bias)$", key)
        if m:
            biases.setdefault(m.group(1), {})[m.group(2)] = value
            continue
        new = _apply(_VIT_RULES, key)
        if new is None:
            unused[key] = NO_TARGET
        else:
            out[prefix + new] = value
    for block, pair in biases.items():
        if set(pair) != {"q_bias", "v_bias"}:
            raise ValueError(f"blocks.{block}.attn: has {sorted(pair)} but needs both q_bias and v_bias")
        q, v = pair["q_bias"], pair["v_bias"]
        out[f"{prefix}encoder.layers.{block}.self_attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    return out, unused


def convert_lavis_blip2(sd: dict[str, torch.Tensor], text_branch: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A LAVIS BLIP-2 / InstructBLIP / MiniGPT4Qwen state dict -> lavislite keys.

    Args:
        sd: the file's state dict (``visual_encoder.*``, ``ln_vision.*``, ``Qformer.bert.*``,
            ``query_tokens``, ``llm_proj.*`` / ``t5_proj.*``).
        text_branch: the model's Q-Former reads text (instructblip_qwen): the word and
            position embeddings and the text FFNs load, and so does a FlanT5
            InstructBLIP's ``t5_proj`` (as the projection); otherwise they are
            reported unused (``TEXT_BRANCH``, ``OTHER_LLM``).
    """
    out: dict[str, torch.Tensor] = {}
    unused: dict[str, str] = {}
    vit = {k[len("visual_encoder.") :]: v for k, v in sd.items() if k.startswith("visual_encoder.")}
    vit_out, vit_unused = convert_lavis_vit(vit)
    out.update(vit_out)
    unused.update({"visual_encoder." + k: r for k, r in vit_unused.items()})
    for key, value in sd.items():
        if key.startswith("visual_encoder."):
            continue
        if key.startswith("ln_vision."):
            out["vision.post_layernorm." + key[len("ln_vision.") :]] = value
        elif key == "query_tokens":
            out["query_tokens"] = value
        elif key.startswith("Qformer."):
            sub = key[len("Qformer.") :]
            new = _apply(_QFORMER_TEXT_RULES if text_branch else [], sub) or _apply(_QFORMER_RULES, sub)
            if new is not None:
                out["qformer." + new] = value
            elif text_branch and sub == "bert.embeddings.position_ids":
                unused[key] = POSITION_IDS
            elif text_branch and sub.startswith("cls."):
                unused[key] = MLM_HEAD
            elif any(re.match(p, sub) for p in _QFORMER_TEXT):
                unused[key] = TEXT_BRANCH
            else:
                unused[key] = NO_TARGET
        elif key.split(".")[0] in ("vision_proj", "text_proj", "itm_head", "temp"):
            unused[key] = STAGE1_HEAD
        elif key.startswith("llm_proj."):  # MiniGPT4Qwen's / InstructBLIP-Vicuna's name for the projection
            out["proj." + key[len("llm_proj.") :]] = value
        elif text_branch and key.startswith("t5_proj."):  # InstructBLIP-FlanT5's
            out["proj." + key[len("t5_proj.") :]] = value
        elif key.split(".")[0] in ("opt_proj", "t5_proj", "llm_model", "opt_model", "t5_model"):
            # MiniGPT4Qwen's unfrozen-LLM files hold Qwen-1 weights (transformer.h.N.attn.c_attn):
            # another architecture than the Qwen2/3 this model uses.
            unused[key] = OTHER_LLM
        else:
            unused[key] = NO_TARGET
    return out, unused


# The one Hugging Face BLIP-2 name table (lavislite prefix, transformers prefix): the
# loader reads it right to left, the export (``Blip2Qwen``'s writer) left to right.
HF_BLIP2_NAMES: tuple[tuple[str, str], ...] = (
    ("vision.", "vision_model."),
    ("qformer.", "qformer."),
    ("query_tokens", "query_tokens"),
    ("proj.", "language_projection."),
    ("llm.", "language_model."),
)


def rename_prefix(key: str, table: tuple[tuple[str, str], ...], to_hf: bool = True) -> str | None:
    """Renames ``key`` by the first matching prefix pair of ``table`` (ours -> HF, or HF -> ours), or None."""
    for ours, theirs in table:
        src, dst = (ours, theirs) if to_hf else (theirs, ours)
        if key == src or key.startswith(src):
            return dst + key[len(src) :]
    return None


def convert_hf_blip2(sd: dict[str, torch.Tensor], text_branch: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A Hugging Face ``Blip2*`` / ``InstructBlip*`` state dict -> lavislite keys (``HF_BLIP2_NAMES``).

    ``vision_model.*`` -> ``vision.*``, ``qformer.*`` and ``query_tokens`` as they
    are, ``language_projection.*`` -> ``proj.*``, ``language_model.*`` -> ``llm.*``
    (transformers v5 names the causal LM's parts ``language_model.model.*`` and
    ``language_model.lm_head``, as lavislite's ``llm`` holds them). Whether the
    language model is this model's LLM at all is decided against the model
    (``split_foreign_llm``), not here.

    Args:
        sd: the folder's state dict.
        text_branch: the model's Q-Former reads text (InstructBLIP): its
            ``qformer.embeddings.*`` load; otherwise they are reported unused.
    """
    out: dict[str, torch.Tensor] = {}
    unused: dict[str, str] = {}
    for key, value in sd.items():
        if key.startswith("qformer.embeddings.") and not text_branch:  # Q-Former text input (InstructBLIP-style)
            unused[key] = TEXT_BRANCH
            continue
        new = rename_prefix(key, HF_BLIP2_NAMES, to_hf=False)
        if new is None:
            unused[key] = NO_TARGET
        else:
            out[new] = value
    return out, unused


def hf_source_key(key: str) -> str:
    """The Hugging Face name of a key ``convert_hf_blip2`` produced (for reports)."""
    return rename_prefix(key, HF_BLIP2_NAMES) or key


def split_foreign_llm(
    model: nn.Module, converted: dict[str, torch.Tensor], source_key: Callable[[str], str] = hf_source_key
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Moves an HF BLIP-2's language model and projection out when they are not this model's LLM.

    They load only when every (non-LoRA) ``llm.*`` key has a place in the model
    with the same shape: a lavislite export, or another BLIP-2 + Qwen of the
    same size. Otherwise (an OPT or Flan-T5 BLIP-2, a Qwen of another size) all
    of them, and the projection trained for that LLM, are reported as another
    LLM's instead of loaded piecemeal or stopping on a shape mismatch.

    Returns:
        (the keys to load, ``{checkpoint key: OTHER_LLM}`` for those set aside).
    """
    shapes = {canonical_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    llm_keys = [k for k in converted if k.startswith("llm.") and not is_lora_key(k)]
    fits = bool(llm_keys) and all(shapes.get(canonical_key(k)) == tuple(converted[k].shape) for k in llm_keys)
    if fits or not llm_keys:
        return converted, {}
    keep = {k: v for k, v in converted.items() if not k.startswith(("llm.", "proj."))}
    aside = {source_key(k): OTHER_LLM for k in converted if k.startswith(("llm.", "proj."))}
    return keep, aside


def _has_prefix(*prefixes: str) -> Callable[[list[str]], bool]:
    return lambda keys: any(k.startswith(prefixes) for k in keys)


# The layouts blip2_qwen reads, tried in this order. MiniGPT4Qwen files may hold
# nothing but ``llm_proj.*`` (its pipeline-parallel conversion) or ``llm_proj.*``
# plus Qwen-1 ``llm_model.*`` keys, so those prefixes alone identify it; they are
# read by the LAVIS converter.
BLIP2_FORMATS: tuple[WeightFormat, ...] = (
    WeightFormat("minigpt4qwen", _has_prefix("llm_proj.", "llm_model."), convert_lavis_blip2),
    WeightFormat("lavis_blip2", _has_prefix("visual_encoder.", "Qformer.", "ln_vision."), convert_lavis_blip2),
    WeightFormat("hf_blip2", _has_prefix("vision_model."), convert_hf_blip2, llm_may_be_foreign=True, source_key=hf_source_key),
    WeightFormat(
        "lavis_vit", lambda keys: "cls_token" in keys and any(k.startswith("blocks.") for k in keys), convert_lavis_vit, scope_parts=("vit",)
    ),
)
# lavislite's own names (releases, older .pth releases): every family reads them.
LAVISLITE_FORMAT = WeightFormat("lavislite", lambda keys: True, lambda sd: (dict(sd), {}))


def detect_format(keys: list[str], formats: tuple[WeightFormat, ...] = BLIP2_FORMATS) -> WeightFormat:
    """The first of ``formats`` whose ``detect`` accepts ``keys``; lavislite's own layout otherwise."""
    for fmt in formats:
        if fmt.detect(keys):
            return fmt
    return LAVISLITE_FORMAT


# -- loading ----------------------------------------------------------------------------
def canonical_key(key: str) -> str:
    """A model key with peft's wrapping removed, so files match with and without LoRA.

    ``llm.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight`` ->
    ``llm.model.layers.0.self_attn.q_proj.weight``; LoRA weights lose the
    adapter name, as PEFT files store them
    (``...q_proj.lora_A.default.weight`` -> ``...q_proj.lora_A.weight``).
    """
    if key.startswith("llm.base_model.model."):
        key = "llm." + key[len("llm.base_model.model.") :]
    key = re.sub(r"(\.lora_(?:A|B|embedding_A|embedding_B))\.default\.", r"\1.", key)
    return key.replace(".base_layer.", ".")


def load_converted(
    model: nn.Module, converted: dict[str, torch.Tensor], scope: tuple[str, ...] | None = None, trainable_only: bool = False
) -> tuple[list[str], list[str], dict[str, str]]:
    """Copies converted tensors into ``model``.

    Args:
        scope: model key prefixes this checkpoint is expected to fill; unfilled
            keys under them are reported as missing. Default: the parts
            (the model's ``PARTS``) that the converted keys touch.
        trainable_only: count only trainable parameters as missing (for files
            that hold only the trainable weights, such as a lavislite release).

    Returns:
        (loaded model keys, missing model keys, converted keys with no target).

    Raises:
        ValueError: on a shape mismatch, naming the key and both shapes.
    """
    targets = dict(model.named_parameters())
    # Only buffers a state dict holds: non-persistent ones (rotary inv_freq)
    # are computed, never read from a file, so never "missing".
    persistent = _persistent_buffer_names(model)
    targets.update({k: b for k, b in model.named_buffers() if k in persistent})
    by_canonical = {canonical_key(k): k for k in targets}
    if scope is None:
        parts = model_parts(model)
        held = {part_of(parts, canonical_key(k)) for k in converted} - {None}
        scope = tuple(p for part in parts if part in held for p in parts[part])
    loaded: list[str] = []
    no_target: dict[str, str] = {}
    for key, value in converted.items():
        name = key if key in targets else by_canonical.get(canonical_key(key))
        if name is None:
            no_target[key] = NO_TARGET
            continue
        target = targets[name]
        if tuple(target.shape) != tuple(value.shape):
            raise CheckpointError(f"shape mismatch for {key}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(value.to(dtype=target.dtype))
        loaded.append(name)
    filled = set(loaded)
    params = dict(model.named_parameters())
    missing = [
        k for k in targets
        if canonical_key(k).startswith(scope) and k not in filled and (not trainable_only or (k in params and params[k].requires_grad))
    ]
    return loaded, missing, no_target


def _persistent_buffer_names(model: nn.Module) -> set[str]:
    names: set[str] = set()
    for prefix, module in model.named_modules():
        skip = getattr(module, "_non_persistent_buffers_set", set())
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in skip:
                names.add(f"{prefix}.{name}" if prefix else name)
    return names


def load_checkpoint(
    model: nn.Module,
    path: str,
    scope: tuple[str, ...] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> LoadReport:
    """Loads any supported checkpoint into ``model`` and logs the report.

    Args:
        model: a lavislite model (its ``WEIGHT_FORMATS`` and ``PARTS`` say what it reads).
        path: a file or Hugging Face folder.
        scope: model key prefixes the checkpoint should fill (default: the parts
            the file holds; for a lavislite release, its trainable weights there).
        state_dict: an already read state dict (``path`` is then only a label).
    """
    sd = state_dict if state_dict is not None else read_state_dict(path)
    fmt = detect_format(list(sd), tuple(getattr(model, "WEIGHT_FORMATS", BLIP2_FORMATS)))
    converted, unused = fmt.convert(sd)
    if fmt.llm_may_be_foreign:
        converted, aside = split_foreign_llm(model, converted, fmt.source_key or (lambda k: k))
        unused.update(aside)
    parts = model_parts(model)
    if fmt.misfit_parts:
        converted, misfits = set_aside_misfits(model, converted, tuple(p for part in fmt.misfit_parts for p in parts[part]))
        # Reported under the file's own names: a converter passes such tensors through as they are.
        file_key = {id(v): k for k, v in sd.items()}
        unused.update({file_key.get(id(tensor), k): r for k, (tensor, r) in misfits.items()})
    if scope is None and fmt.scope_parts:
        scope = tuple(p for part in fmt.scope_parts for p in parts[part])
    # A lavislite release holds only what trained: frozen weights in its parts are not "missing".
    loaded, missing, no_target = load_converted(model, converted, scope, trainable_only=fmt is LAVISLITE_FORMAT)
    for key in no_target:
        source = fmt.source_key(key) if fmt.source_key else key
        unused[source] = NO_LORA if is_lora_key(key) else NO_TARGET
    held = sorted({p for p in (part_of(parts, canonical_key(k)) for k in loaded) if p}, key=list(parts).index)
    report = LoadReport(path=path, format=fmt.name, loaded=loaded, unused=unused, missing=missing, parts=held, llm_may_be_foreign=fmt.llm_may_be_foreign)
    logger.info("%s", report.summary())
    return report


def set_aside_misfits(
    model: nn.Module, converted: dict[str, torch.Tensor], prefixes: tuple[str, ...]
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, str]]]:
    """Takes the tensors under ``prefixes`` whose shapes differ from the model's out of ``converted``.

    They are all set aside together (a projection half loaded would be worse
    than none), each with a reason that names both shapes.

    Returns:
        (the tensors to load, ``{key: (tensor, reason)}`` of those set aside).
    """
    shapes = {canonical_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    keys = [k for k in converted if k.startswith(prefixes)]
    misfit = [k for k in keys if shapes.get(canonical_key(k)) not in (None, tuple(converted[k].shape))]
    if not misfit:
        return converted, {}
    aside = {k: (converted[k], f"{PROJ_OTHER_WIDTH}: file {tuple(converted[k].shape)}, model {shapes.get(canonical_key(k))}") for k in keys}
    return {k: v for k, v in converted.items() if k not in aside}, aside


def check_finetuned(report: LoadReport) -> None:
    """Raises unless a finetuned load filled what the file holds.

    A finetuned file is the model the user means to use: a load that fills
    nothing, or (for a lavislite release, which holds only trained weights)
    leaves any of its keys unused, would silently evaluate random weights.

    Raises:
        CheckpointError: naming the file, its layout and the keys that found no place.
    """
    where = f"model.finetuned={report.path} ({report.format} layout)"
    if not report.loaded:
        sample = ", ".join(sorted(report.unused)[:5])
        raise CheckpointError(f"{where}: filled no model weight; its keys ({len(report.unused)}) look like: {sample}")
    lora_unused = sorted(k for k, reason in report.unused.items() if reason == NO_LORA)
    if (report.format == "lavislite" and report.unused) or lora_unused:
        keys = sorted(report.unused) if report.format == "lavislite" else lora_unused
        lora = [k for k in keys if is_lora_key(k) or ".lora_" in k]
        hint = (
            " The file holds LoRA weights: set model.lora.enabled=true with the lora settings of the run that wrote it."
            if lora
            else " Was it written by a model with another config (parts, sizes, freeze switches)?"
        )
        raise CheckpointError(f"{where}: {len(keys)} of its trained weights have no place in this model, e.g. {', '.join(keys[:3])}.{hint}")
    foreign = sorted(k for k, reason in report.unused.items() if reason == OTHER_LLM)
    if report.llm_may_be_foreign and foreign:
        # A finetuned folder's language model is part of the model the user means to use.
        raise CheckpointError(
            f"{where}: its language model does not fit this model's LLM ({len(foreign)} keys, e.g. {', '.join(foreign[:3])}); "
            "set model.llm_model / llm_config to the LLM it was exported with"
        )
