"""llava: a vision tower -> one layer's patch tokens -> an MLP projector -> any causal LM.

The LLaVA family (LLaVA-1.5, ShareGPT4V, CLIP-ViT-L + Qwen recipes): every
selected token of the tower's chosen layer becomes one embedding in the LLM
sequence (576 for a 336 px CLIP ViT-L/14 with the class token dropped).

The tower is always a timm model, built by name (``model.vision.tower``: any
timm ViT, EVA02, SigLIP; weights from a timm checkpoint file in
``model.vision.pretrained``) or from the ``config.json`` of a Hugging Face
``CLIPVisionModel`` / ``SiglipVisionModel`` folder (``save_pretrained``
layout), whose weights are read through ``TOWER_NAMES``, the one name table
between transformers' vision towers and timm's ViT (also used by the export
to ``LlavaForConditionalGeneration``). What is not the vision path (the LLM,
placeholders, loss, generation, chat, freezing, LoRA) is the shared base's
(``models/image_lm.py``).
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping

import torch
from torch import nn

from lavislite.common.errors import CheckpointError
from lavislite.common.logger import logger
from lavislite.common.registry import close_matches, registry
from lavislite.common.schema import ConfigError
from lavislite.models.checkpoint import NO_TARGET, WeightFormat
from lavislite.models.hf_export import ExportError, HFExportWriter
from lavislite.models.image_lm import ImageLMConfig, ImageTokenLM

# Why a checkpoint key of a tower file is not used.
POOL_HEAD = "pooling / classifier head (lavislite takes the patch tokens)"
TEXT_TOWER = "the CLIP / SigLIP text tower (not used)"

# transformers' activation names -> timm's.
HF_TO_TIMM_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
# CLIP's and SigLIP's default normalisation (when a folder has no preprocessor_config.json).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass
class TowerConfig:
    """The vision tower and which of its tokens the LLM gets (LLaVA's names)."""

    # A timm model name (vit_large_patch14_clip_336.openai, vit_so400m_patch14_siglip_384,
    # eva02_large_patch14_clip_224.merged2b, any timm ViT) or the path of a Hugging Face
    # CLIPVisionModel / SiglipVisionModel folder (its config.json gives the architecture).
    tower: str = "vit_large_patch14_clip_336.openai"
    # timm create_model arguments over the named architecture (a tiny tower, act_layer,
    # img_size); not used with a folder.
    tower_kwargs: dict[str, Any] = field(default_factory=dict)
    # The tower's weights: a timm checkpoint file, an HF CLIP/SigLIP folder or file, or a
    # lavislite file; "" = the tower folder's own weights (none for a timm name).
    pretrained: str = ""
    # The layer as transformers' hidden_states[layer] counts it (0 = the embeddings, 1..depth
    # the blocks; -1 the last block, -2 the one before), before any final norm.
    vision_feature_layer: int = -2
    # default: drop the class (prefix) tokens; full: keep every token (SigLIP has none).
    vision_feature_select_strategy: Literal["default", "full"] = "default"


@dataclass
class LlavaConfig(ImageLMConfig):
    """llava's options: the shared ones (``ImageLMConfig``) plus its tower, projector and parts."""

    arch: str = "llava"
    vision: TowerConfig = field(default_factory=TowerConfig)
    # linear: one Linear (LLaVA-1.0); mlp2x_gelu: Linear-GELU-Linear (LLaVA-1.5).
    projector: Literal["linear", "mlp2x_gelu"] = "mlp2x_gelu"
    # One switch per part (Llava.PARTS); freeze_llm is the base's.
    freeze_vit: bool = True
    freeze_proj: bool = False
    # The projector's weights (and anything else of a trained model read before finetuned):
    # LLaVA's mm_projector.bin, a stage-1 lavislite release, an HF Llava folder.
    pretrained: str = ""

    @staticmethod
    def check_section(data: dict[str, Any]) -> list[str]:
        if data["vision"]["vision_feature_layer"] == 0:
            return ["vision.vision_feature_layer: 0 is the patch embeddings, before any block; use 1..depth or -depth..-1"]
        return []


# -- the tower -----------------------------------------------------------------------
@dataclass(frozen=True)
class TowerSpec:
    """How to build a tower, known before it is built.

    Attributes:
        name: the timm model name (a timm name given), or ``""`` (an HF folder: a timm
            ``VisionTransformer`` built from ``kwargs``).
        kwargs: the timm arguments.
        folder: the Hugging Face folder it comes from, or ``""``.
        hf_kind: ``"clip"`` / ``"siglip"`` for a folder, else ``""``.
        mean, std: the tower's image normalisation.
    """

    name: str
    kwargs: tuple[tuple[str, Any], ...]
    folder: str
    hf_kind: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _folder_vision_config(folder: str) -> dict[str, Any]:
    """The vision config of a Hugging Face folder: a CLIP / SigLIP vision model, a full CLIP / SigLIP, or a Llava."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"model.vision.tower={folder}: a folder without config.json (expected a CLIPVisionModel / SiglipVisionModel save_pretrained folder)")
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    if config.get("model_type") in ("clip_vision_model", "siglip_vision_model"):
        return config  # type: ignore[no-any-return]
    vision = config.get("vision_config")
    if isinstance(vision, dict):
        kind = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}.get(str(config.get("model_type")), vision.get("model_type"))
        return {**vision, "model_type": kind}
    raise CheckpointError(f"{path}: model_type '{config.get('model_type')}' is not a CLIP or SigLIP vision model (nor a model holding one)")


def timm_kwargs_from_hf(vision: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The timm ``VisionTransformer`` arguments equivalent to a transformers CLIP / SigLIP vision config.

    CLIP: class token, a LayerNorm before the blocks (``pre_layrnorm``), no patch bias.
    SigLIP: no class token, no pre-norm, a patch bias. Both: fused-qkv attention with
    biases, a final LayerNorm (``post_layernorm``), the config's activation and eps.

    Returns:
        ``("clip" | "siglip", kwargs)``.

    Raises:
        CheckpointError: another model type or activation.
    """
    from functools import partial

    from timm.layers import LayerNorm

    kind = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}.get(str(vision.get("model_type")))
    if kind is None:
        raise CheckpointError(f"vision model_type '{vision.get('model_type')}': lavislite reads clip_vision_model and siglip_vision_model folders")
    act = str(vision.get("hidden_act", "quick_gelu" if kind == "clip" else "gelu_pytorch_tanh"))
    if act not in HF_TO_TIMM_ACT:
        raise CheckpointError(f"vision hidden_act '{act}': expected one of {', '.join(HF_TO_TIMM_ACT)}")
    hidden = int(vision.get("hidden_size", 768))
    intermediate = int(vision.get("intermediate_size", 3072))
    kwargs: dict[str, Any] = {
        "img_size": int(vision.get("image_size", 224)),
        "patch_size": int(vision.get("patch_size", 16)),
        "embed_dim": hidden,
        "depth": int(vision.get("num_hidden_layers", 12)),
        "num_heads": int(vision.get("num_attention_heads", 12)),
        # timm makes the MLP int(dim * mlp_ratio) wide: half a unit up keeps it exact.
        "mlp_ratio": (intermediate + 0.5) / hidden,
        "qkv_bias": True,
        "class_token": kind == "clip",
        "pre_norm": kind == "clip",
        "final_norm": True,
        "norm_layer": partial(LayerNorm, eps=float(vision.get("layer_norm_eps", 1e-5 if kind == "clip" else 1e-6))),
        "act_layer": HF_TO_TIMM_ACT[act],
    }
    return kind, kwargs


def _folder_norm(folder: str, kind: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            pre = json.load(fh)
        if pre.get("image_mean") and pre.get("image_std"):
            return tuple(pre["image_mean"]), tuple(pre["image_std"])
    return (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD) if kind == "clip" else (HALF, HALF)


def tower_spec(vision: TowerConfig) -> TowerSpec:
    """What ``model.vision.tower`` names: a Hugging Face folder (read now) or a timm model name (checked now).

    Raises:
        ConfigError: a name timm does not know (with the closest names).
        CheckpointError: a folder that is not a CLIP / SigLIP vision model.
    """
    import timm

    from lavislite.common.utils import resolve_data_path

    folder = resolve_data_path(vision.tower)
    if os.path.isdir(folder):
        kind, kwargs = timm_kwargs_from_hf(_folder_vision_config(folder))
        mean, std = _folder_norm(folder, kind)
        return TowerSpec("", tuple(sorted(kwargs.items())), folder, kind, mean, std)
    arch = vision.tower.split(".")[0]
    if not timm.is_model(arch):
        hint = close_matches(arch, timm.list_models(), n=3)
        raise ConfigError([f"model.vision.tower: '{vision.tower}' is neither a folder nor a timm model{'; did you mean ' + ', '.join(hint) + '?' if hint else ''}"])
    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(vision.tower)
    except RuntimeError as exc:  # an unknown pretrained tag
        tags = ", ".join(timm.list_pretrained(arch + ".*")) or "none"
        raise ConfigError([f"model.vision.tower: {exc} (timm's tags for {arch}: {tags})"]) from None
    mean = tuple(pretrained_cfg.mean) if pretrained_cfg is not None else OPENAI_CLIP_MEAN
    std = tuple(pretrained_cfg.std) if pretrained_cfg is not None else OPENAI_CLIP_STD
    return TowerSpec(vision.tower, tuple(sorted(vision.tower_kwargs.items())), "", "", mean, std)


def build_tower(spec: TowerSpec) -> nn.Module:
    """The timm model of ``spec``, with no head and no pooling (random weights; weights load later)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    kwargs = dict(spec.kwargs)
    if not spec.name:
        return VisionTransformer(num_classes=0, global_pool="", **kwargs)
    return timm.create_model(spec.name, pretrained=False, num_classes=0, global_pool="", **kwargs)


@dataclass(frozen=True)
class TowerLayout:
    """The token layout of a tower: image size, patch grid, prefix (class / register) tokens, depth."""

    image_size: int
    grid_tokens: int
    prefix_tokens: int
    depth: int

    def feature_block(self, layer: int) -> int:
        """The index of the block whose output is ``hidden_states[layer]``.

        Raises:
            ConfigError: a layer outside 1..depth / -depth..-1.
        """
        index = layer if layer >= 0 else self.depth + 1 + layer
        if not 1 <= index <= self.depth:
            raise ConfigError(
                [f"model.vision.vision_feature_layer: {layer} is not a block output of this {self.depth}-block tower (1..{self.depth} or -{self.depth}..-1)"]
            )
        return index - 1

    def tokens(self, strategy: str) -> int:
        return self.grid_tokens + (self.prefix_tokens if strategy == "full" else 0)


def layout_of(tower: nn.Module) -> TowerLayout:
    embed = tower.patch_embed  # type: ignore[attr-defined]
    grid = tuple(embed.grid_size)
    return TowerLayout(int(embed.img_size[0]), int(grid[0] * grid[1]), int(tower.num_prefix_tokens), len(tower.blocks))  # type: ignore[arg-type]


@functools.lru_cache(maxsize=16)
def tower_layout(spec: TowerSpec) -> TowerLayout:
    """``layout_of`` a tower built on the meta device (no memory, no weights): processors need it before the model exists."""
    with torch.device("meta"):
        return layout_of(build_tower(spec))


# -- the one name table between transformers' vision towers and timm's ViT ----------------
# (name under transformers' ``vision_model.``, timm name); {i} a block index, {w} weight|bias.
# The q/k/v projections, three tensors in transformers and one fused qkv in timm, are the
# one entry that is not a rename (``hf_tower_to_timm`` / ``timm_tower_to_hf``).
TOWER_NAMES: tuple[tuple[str, str], ...] = (
    ("embeddings.patch_embedding.{w}", "patch_embed.proj.{w}"),
    ("embeddings.position_embedding.weight", "pos_embed"),
    ("embeddings.class_embedding", "cls_token"),
    ("pre_layrnorm.{w}", "norm_pre.{w}"),
    ("encoder.layers.{i}.layer_norm1.{w}", "blocks.{i}.norm1.{w}"),
    ("encoder.layers.{i}.self_attn.out_proj.{w}", "blocks.{i}.attn.proj.{w}"),
    ("encoder.layers.{i}.layer_norm2.{w}", "blocks.{i}.norm2.{w}"),
    ("encoder.layers.{i}.mlp.fc1.{w}", "blocks.{i}.mlp.fc1.{w}"),
    ("encoder.layers.{i}.mlp.fc2.{w}", "blocks.{i}.mlp.fc2.{w}"),
    ("post_layernorm.{w}", "norm.{w}"),
)
_QKV_HF = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)$")
_QKV_TIMM = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{w\}", r"(?P<w>weight|bias)")
    return re.compile(f"^{pattern}$")


_TOWER_RULES = [(_template_regex(hf), hf, _template_regex(tm), tm) for hf, tm in TOWER_NAMES]


def _rename(key: str, to_timm: bool) -> str | None:
    for hf_re, hf, tm_re, tm in _TOWER_RULES:
        match = (hf_re if to_timm else tm_re).match(key)
        if match:
            return (tm if to_timm else hf).format(**match.groupdict())
    return None


def _reshape(key: str, value: torch.Tensor, to_timm: bool) -> torch.Tensor:
    """transformers keeps the class token as (D,) and positions as (N, D); timm as (1, 1, D) and (1, N, D)."""
    if key in ("cls_token", "embeddings.class_embedding", "pos_embed", "embeddings.position_embedding.weight"):
        if to_timm:
            return value.reshape(1, -1, value.shape[-1])
        return value.reshape(-1) if key == "cls_token" else value.reshape(-1, value.shape[-1])
    return value


def hf_tower_to_timm(sd: Mapping[str, torch.Tensor], prefix: str = "vision.") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A transformers CLIP / SigLIP vision state dict (names under ``vision_model.``, that prefix removed) -> timm names under ``prefix``."""
    out: dict[str, torch.Tensor] = {}
    unused: dict[str, str] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        m = _QKV_HF.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        new = _rename(key, to_timm=True)
        if new is not None:
            out[prefix + new] = _reshape(new, value, to_timm=True)
        elif key.startswith("head."):  # SigLIP's attention-pooling head
            unused[key] = POOL_HEAD
        else:
            unused[key] = NO_TARGET
    for (block, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"encoder.layers.{block}.self_attn: has {sorted(parts)}_proj.{kind} but needs q, k and v")
        out[f"{prefix}blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out, unused


def timm_tower_to_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ViT names (no prefix) -> transformers' names under ``vision_model.`` (that prefix not added).

    Raises:
        ExportError: a tensor with no transformers counterpart (layer scale, a qk norm, registers ...).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = _QKV_TIMM.match(key)
        if m:
            for name, part in zip("qkv", value.chunk(3)):
                out[f"encoder.layers.{m.group(1)}.self_attn.{name}_proj.{m.group(2)}"] = part
            continue
        new = _rename(key, to_timm=False)
        if new is None:
            raise ExportError(f"tower weight '{key}' has no counterpart in transformers' CLIP / SigLIP vision models")
        out[new] = _reshape(key, value, to_timm=False)
    return out


# -- weight formats llava reads ------------------------------------------------------------
_HF_LLAVA_LLM = (("model.language_model.", "llm.model."), ("lm_head.", "llm.lm_head."), ("language_model.model.", "llm.model."), ("language_model.lm_head.", "llm.lm_head."))
# transformers 5 writes model.vision_tower.<tower keys>; older folders nest them under vision_model.
_HF_LLAVA_TOWER = ("model.vision_tower.vision_model.", "vision_tower.vision_model.", "model.vision_tower.", "vision_tower.")
_HF_LLAVA_PROJ = ("model.multi_modal_projector.", "multi_modal_projector.")
_HF_PROJ_LAYERS = {"linear_1": "0", "linear_2": "2"}


def convert_hf_llava(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A Hugging Face ``LlavaForConditionalGeneration`` state dict (v5 ``model.*`` names or v4's) -> lavislite names."""
    out: dict[str, torch.Tensor] = {}
    unused: dict[str, str] = {}
    tower: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in sd.items():
        tower_prefix = next((p for p in _HF_LLAVA_TOWER if key.startswith(p)), None)
        proj_prefix = next((p for p in _HF_LLAVA_PROJ if key.startswith(p)), None)
        llm = next(((src, dst) for src, dst in _HF_LLAVA_LLM if key.startswith(src)), None)
        if tower_prefix:
            tower[key[len(tower_prefix) :]] = value
            origin[key[len(tower_prefix) :]] = key
        elif proj_prefix:
            layer, _, rest = key[len(proj_prefix) :].partition(".")
            if layer in _HF_PROJ_LAYERS:
                out[f"proj.{_HF_PROJ_LAYERS[layer]}.{rest}"] = value
            else:
                unused[key] = NO_TARGET
        elif llm:
            out[llm[1] + key[len(llm[0]) :]] = value
        else:
            unused[key] = NO_TARGET
    converted, tower_unused = hf_tower_to_timm(tower)
    out.update(converted)
    unused.update({origin[k]: r for k, r in tower_unused.items()})
    return out, unused


def hf_llava_source_key(key: str) -> str:
    """The Hugging Face (v5) name of a key ``convert_hf_llava`` produced, for reports."""
    if key.startswith("llm.model."):
        return "model.language_model." + key[len("llm.model.") :]
    if key.startswith("llm.lm_head."):
        return "lm_head." + key[len("llm.lm_head.") :]
    if key.startswith("proj."):
        layer, _, rest = key[len("proj.") :].partition(".")
        names = {v: k for k, v in _HF_PROJ_LAYERS.items()}
        return f"model.multi_modal_projector.{names.get(layer, layer)}.{rest}"
    return key


def convert_mm_projector(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """LLaVA's ``mm_projector.bin`` (``model.mm_projector.0.weight`` ...) -> ``proj.*``."""
    out: dict[str, torch.Tensor] = {}
    unused: dict[str, str] = {}
    for key, value in sd.items():
        _, found, rest = key.partition("mm_projector.")
        if found:
            out["proj." + rest] = value
        else:
            unused[key] = NO_TARGET
    return out, unused


def convert_hf_tower(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A ``CLIPVisionModel`` / ``SiglipVisionModel`` state dict -> the tower (``vision.*``).

    transformers 5 saves a vision model's keys bare (``embeddings.*``,
    ``encoder.layers.*``); a whole CLIP / SigLIP model, or an older save, has
    them under ``vision_model.`` (beside ``text_model.*``, unused here).
    """
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in sd) else ""
    tower = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    out, unused = hf_tower_to_timm(tower)
    unused = {prefix + k: r for k, r in unused.items()}
    for key in sd:
        if not key.startswith(prefix):
            unused[key] = POOL_HEAD if key.startswith(("visual_projection.", "head.")) else TEXT_TOWER if key.startswith(("text_model.", "text_projection.", "logit_")) else NO_TARGET
    return out, unused


def convert_timm_tower(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A timm checkpoint of the tower (timm names) -> ``vision.*``; its classifier / pooling head unused."""
    out: dict[str, torch.Tensor] = {}
    unused: dict[str, str] = {}
    for key, value in sd.items():
        if key.startswith(("head.", "attn_pool.", "fc_norm.")):
            unused[key] = POOL_HEAD
        else:
            out["vision." + key] = value
    return out, unused


def _has_prefix(*prefixes: str) -> Any:
    return lambda keys: any(k.startswith(prefixes) for k in keys)


LLAVA_FORMATS: tuple[WeightFormat, ...] = (
    WeightFormat(
        "hf_llava", _has_prefix(*_HF_LLAVA_TOWER, *_HF_LLAVA_PROJ), convert_hf_llava, llm_may_be_foreign=True, source_key=hf_llava_source_key
    ),
    WeightFormat("llava_mm_projector", lambda keys: bool(keys) and all("mm_projector." in k for k in keys), convert_mm_projector),
    WeightFormat(
        "hf_vision_tower",
        lambda keys: any(k.startswith(("vision_model.", "embeddings.patch_embedding.")) for k in keys),
        convert_hf_tower,
        scope_parts=("vit",),
    ),
    WeightFormat("timm_tower", lambda keys: any(k.startswith(("blocks.0.", "patch_embed.")) for k in keys), convert_timm_tower, scope_parts=("vit",)),
)


# -- the model ---------------------------------------------------------------------------
@registry.register_model("llava")
class Llava(ImageTokenLM):
    """A LLaVA-style projector model: ``vision_features`` of the chosen layer -> projector -> placeholders in the LLM."""

    Config = LlavaConfig
    PRETRAINED_MODEL_CONFIG_DICT = {
        "demo": "configs/models/llava/demo.yaml",
        "clip336_qwen2.5-7b-instruct": "configs/models/llava/clip336_qwen2.5-7b-instruct.yaml",
        "siglip384_qwen2.5-7b-instruct": "configs/models/llava/siglip384_qwen2.5-7b-instruct.yaml",
        "clip336_qwen2.5-1.5b-instruct": "configs/models/llava/clip336_qwen2.5-1.5b-instruct.yaml",
    }
    PARTS: ClassVar[dict[str, tuple[str, ...]]] = {"vit": ("vision.",), "proj": ("proj.",), "llm": ("llm.",)}
    WEIGHT_FORMATS: ClassVar[tuple[WeightFormat, ...]] = LLAVA_FORMATS
    BASE_WEIGHTS: ClassVar[tuple[str, ...]] = ("vision.pretrained", "pretrained")

    cfg: LlavaConfig

    def build_vision(self) -> None:
        """The timm tower (random weights here; they load with the base weights)."""
        self.tower_spec = tower_spec(self.cfg.vision)
        if self.tower_spec.folder and self.cfg.vision.tower_kwargs:
            logger.warning("model.vision.tower_kwargs ignored: the folder's config.json gives the tower's architecture (%s)", self.tower_spec.folder)
        self.vision = build_tower(self.tower_spec)
        self.layout = layout_of(self.vision)
        self.feature_block = self.layout.feature_block(self.cfg.vision.vision_feature_layer)

    def build_projector(self, llm_hidden: int) -> None:
        width = int(self.vision.embed_dim)  # type: ignore[arg-type]
        if self.cfg.projector == "linear":
            self.proj: nn.Module = nn.Linear(width, llm_hidden)
        else:  # LLaVA-1.5's mlp2x_gelu: the names proj.0 / proj.2 are mm_projector's
            self.proj = nn.Sequential(nn.Linear(width, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden))

    @classmethod
    def image_tokens_of(cls, cfg: Any) -> int:
        layout = tower_layout(tower_spec(cfg.vision))
        return layout.tokens(cfg.vision.vision_feature_select_strategy)

    @classmethod
    def context_of(cls, cfg: Any) -> dict[str, Any]:
        """The tokenizer and image tokens per image (as every family), and the tower's image size, mean and std."""
        spec = tower_spec(cfg.vision)
        return {**super().context_of(cfg), "image_size": tower_layout(spec).image_size, "image_mean": list(spec.mean), "image_std": list(spec.std)}

    @classmethod
    def default_vis_processors(cls, cfg: Any) -> dict[str, dict[str, Any]]:
        spec = tower_spec(cfg.vision)
        processor = {"name": "llava_image", "image_size": tower_layout(spec).image_size, "mean": list(spec.mean), "std": list(spec.std)}
        return {"train": processor, "eval": processor}

    def image_size(self) -> int:
        return self.layout.image_size

    def base_weight_paths(self) -> dict[str, str]:
        """``vision.pretrained`` defaults to the tower folder's own weights."""
        paths = super().base_weight_paths()
        if not paths["vision.pretrained"] and self.tower_spec.folder:
            paths["vision.pretrained"] = self.tower_spec.folder
        return paths

    def apply_freezing(self) -> None:
        """The part switches, then: tower weights that never run (blocks after the feature layer, the final norm) never train."""
        super().apply_freezing()
        for name, param in self.vision.named_parameters():
            if not self.tower_weight_runs(name):
                param.requires_grad_(False)

    def tower_weight_runs(self, name: str) -> bool:
        """Whether a tower parameter is on the path to the feature layer."""
        m = re.match(r"blocks\.(\d+)\.", name)
        if m:
            return int(m.group(1)) <= self.feature_block
        return not name.startswith(("norm.", "fc_norm.", "attn_pool.", "head."))

    def checkpointing_targets(self) -> list[nn.Module]:
        """The LLM, and the tower when it trains."""
        return [self.llm] + ([self.vision] if not self.cfg.freeze_vit else [])

    def export_writer(self) -> "LlavaExportWriter":
        return LlavaExportWriter()

    @classmethod
    def export_overrides(cls, folder: str) -> dict[str, Any]:
        """An export's tower is built from its own ``config.json`` (its vision_config), weights from the folder."""
        return {"vision": {"tower": folder, "tower_kwargs": {}, "pretrained": ""}}

    # -- forward ------------------------------------------------------------------
    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> the selected layer's selected tokens before the projector, (n, tokens, tower width).

        The layer is ``vision_feature_layer`` as transformers' ``hidden_states``
        counts it (before any final norm); ``default`` drops the prefix (class)
        tokens, ``full`` keeps them first. Blocks past the layer do not run.
        """
        weight = self.vision.patch_embed.proj.weight  # type: ignore[union-attr]
        pixel_values = pixel_values.to(device=weight.device, dtype=weight.dtype)
        trains = any(p.requires_grad for p in self.vision.parameters())
        # A frozen tower needs no activations kept for backward.
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            (selected,) = self.vision.forward_intermediates(  # type: ignore[operator]
                pixel_values, indices=[self.feature_block], return_prefix_tokens=True, norm=False, stop_early=True, output_fmt="NLC", intermediates_only=True
            )
        tokens, prefix = selected if isinstance(selected, tuple) else (selected, None)
        if self.cfg.vision.vision_feature_select_strategy == "full" and prefix is not None:
            tokens = torch.cat([prefix, tokens], dim=1)
        return tokens  # type: ignore[no-any-return]

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, num_image_tokens, llm hidden)."""
        return self.proj(self.vision_features(image))  # type: ignore[no-any-return]


class LlavaExportWriter(HFExportWriter):
    """llava -> ``LlavaForConditionalGeneration``: a CLIP or SigLIP tower (``TOWER_NAMES``), the mlp2x_gelu projector, the Qwen LM.

    The chat template writes one ``<|image_pad|>`` per image and ``LlavaProcessor``
    expands it to the tower's token count (its patch size, prefix tokens and
    selection strategy), so the ids are those lavislite trained on.
    """

    hf_class = "LlavaForConditionalGeneration"

    def tower_kind(self, model: Llava) -> str:
        """``"clip"`` or ``"siglip"``: the transformers vision model the tower is.

        Raises:
            ExportError: a tower with no transformers counterpart, saying what differs.
        """
        from timm.layers.activations import GELUTanh, QuickGELU
        from timm.models.vision_transformer import VisionTransformer

        tower = model.vision
        if not isinstance(tower, VisionTransformer):
            raise ExportError(
                f"the tower ({type(tower).__name__}, '{model.cfg.vision.tower}') has no transformers counterpart for LlavaForConditionalGeneration; "
                "its release folder (run folder release/) is how it leaves: load_from_checkpoint, chat and evaluate read it"
            )
        block = tower.blocks[0]
        odd = []
        if tower.num_reg_tokens:
            odd.append("register tokens")
        if not isinstance(block.ls1, nn.Identity) or not isinstance(block.attn.q_norm, nn.Identity):
            odd.append("layer scale / qk norm")
        if isinstance(tower.fc_norm, nn.LayerNorm) or tower.no_embed_class and tower.has_class_token:
            odd.append("a pooled-feature norm or class token without position")
        clip = tower.has_class_token and not isinstance(tower.norm_pre, nn.Identity) and tower.patch_embed.proj.bias is None
        siglip = not tower.has_class_token and isinstance(tower.norm_pre, nn.Identity) and tower.patch_embed.proj.bias is not None
        if odd or not (clip or siglip):
            raise ExportError(
                f"the tower '{model.cfg.vision.tower}' is a timm ViT that matches neither transformers' CLIP (class token, pre-norm, "
                f"no patch bias) nor SigLIP (no class token, no pre-norm){': ' + ', '.join(odd) if odd else ''}; its release folder is how it leaves"
            )
        act = block.mlp.act
        expected = QuickGELU if clip else GELUTanh
        if not isinstance(act, (expected, nn.GELU)):
            raise ExportError(f"the tower's MLP activation {type(act).__name__} has no transformers CLIP / SigLIP name")
        return "clip" if clip else "siglip"

    def check(self, model: Any) -> None:
        self.tower_kind(model)
        if model.cfg.projector != "mlp2x_gelu":
            raise ExportError(
                f"model.projector={model.cfg.projector}: LlavaForConditionalGeneration has a two-layer projector (mlp2x_gelu) only; "
                "a linear projector leaves as the release folder"
            )

    def vision_config(self, model: Llava) -> Any:
        from timm.layers.activations import GELUTanh, QuickGELU
        from transformers import CLIPVisionConfig, SiglipVisionConfig

        kind = self.tower_kind(model)
        tower = model.vision
        block = tower.blocks[0]
        act = block.mlp.act
        if isinstance(act, QuickGELU):
            hidden_act = "quick_gelu"
        elif isinstance(act, GELUTanh) or getattr(act, "approximate", "none") == "tanh":
            hidden_act = "gelu_pytorch_tanh"
        else:
            hidden_act = "gelu"
        common = {
            "hidden_size": int(tower.embed_dim),
            "intermediate_size": int(block.mlp.fc1.out_features),
            "num_hidden_layers": len(tower.blocks),
            "num_attention_heads": int(block.attn.num_heads),
            "image_size": int(tower.patch_embed.img_size[0]),
            "patch_size": int(tower.patch_embed.patch_size[0]),
            "hidden_act": hidden_act,
            "layer_norm_eps": float(block.norm1.eps),
        }
        if kind == "clip":
            return CLIPVisionConfig(**common)
        return SiglipVisionConfig(**common, vision_use_head=False)

    def select_strategy(self, model: Llava) -> str:
        """The strategy transformers needs for the same tokens: its ``default`` always drops the first token."""
        if model.layout.prefix_tokens == 0:
            return "full"  # nothing to drop: lavislite's default keeps every (patch) token
        return model.cfg.vision.vision_feature_select_strategy

    def config(self, model: Any, text_config: Any) -> Any:
        from transformers import LlavaConfig as HFLlavaConfig

        return HFLlavaConfig(
            vision_config=self.vision_config(model).to_dict(),
            text_config=text_config.to_dict(),
            image_token_index=int(model.image_token_id),
            image_seq_length=int(model.num_image_tokens),
            projector_hidden_act="gelu",
            vision_feature_select_strategy=self.select_strategy(model),
            vision_feature_layer=int(model.cfg.vision.vision_feature_layer),
            multimodal_projector_bias=True,
        )

    def state_dict(self, model: Any, llm_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {f"model.vision_tower.{k}": v for k, v in timm_tower_to_hf(model.vision.state_dict()).items()}
        for key, value in model.proj.state_dict().items():
            layer, _, rest = key.partition(".")
            out[f"model.multi_modal_projector.{ {'0': 'linear_1', '2': 'linear_2'}[layer] }.{rest}"] = value
        for key, value in llm_state.items():
            out[("model.language_model." + key[len("model.") :]) if key.startswith("model.") else key] = value
        return out

    def template_image_tokens(self, model: Any) -> int:
        return 1  # LlavaProcessor expands each <|image_pad|> to the tower's token count

    def processor(self, model: Any, tokenizer: Any) -> tuple[Any, Any]:
        from transformers import LlavaImageProcessorPil, LlavaProcessor

        spec = dict((model.cfg.preprocess or {}).get("vis_processor", {}).get("eval") or {})
        name = spec.pop("name", "llava_image")
        if name not in ("llava_image", "blip_image_eval"):
            raise ExportError(f"model.preprocess.vis_processor.eval is '{name}'; llava_image and blip_image_eval map to a transformers image processor")
        size = int(spec.get("image_size") or model.image_size())
        mean = list(spec.get("mean") or model.tower_spec.mean)
        std = list(spec.get("std") or model.tower_spec.std)
        aspect = spec.get("aspect", "pad") if name == "llava_image" else "resize"
        from lavislite.models.hf_export import PIL_RESAMPLE

        image_processor = LlavaImageProcessorPil(
            do_pad=aspect == "pad",
            do_resize=True,
            size={"shortest_edge": size} if aspect != "resize" else {"height": size, "width": size},
            do_center_crop=aspect != "resize",
            crop_size={"height": size, "width": size},
            resample=PIL_RESAMPLE[str(spec.get("interpolation", "bicubic"))],
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=mean,
            image_std=std,
            do_convert_rgb=True,
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=int(model.vision.patch_embed.patch_size[0]),
            vision_feature_select_strategy=self.select_strategy(model),
            num_additional_image_tokens=int(model.layout.prefix_tokens),
            chat_template=tokenizer.chat_template,
        )
        return processor, image_processor
