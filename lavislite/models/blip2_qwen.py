"""blip2_qwen: frozen ViT -> ln_vision -> Q-Former -> linear projection -> Qwen.

Parts come from transformers: ``Blip2VisionModel`` (EVA-ViT-g layout; its
``post_layernorm`` is LAVIS's ``ln_vision``), ``Blip2QFormerModel`` and
``AutoModelForCausalLM``. The N projected query outputs of each image replace
the N ``<|image_pad|>`` tokens the chat processor put in the sequence. What is
not BLIP-2's (the LLM, placeholders, loss, generation, chat, freezing, LoRA)
is the shared base's (``models/image_lm.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from lavislite.common.logger import logger
from lavislite.common.registry import registry
from lavislite.models.checkpoint import BLIP2_FORMATS, HF_BLIP2_NAMES, WeightFormat, rename_prefix
from lavislite.models.hf_export import PIL_RESAMPLE, HFExportWriter
from lavislite.models.image_lm import ImageLMConfig, ImageTokenLM

@dataclass
class VisionConfig:
    """EVA-ViT-g by default (LAVIS ``create_eva_vit_g``)."""

    image_size: int = 224
    patch_size: int = 14
    hidden_size: int = 1408
    num_layers: int = 39
    num_heads: int = 16
    intermediate_size: int = 6144
    layer_norm_eps: float = 1e-6
    # LAVIS's ln_vision is a torch LayerNorm (eps 1e-5), not the ViT's 1e-6.
    ln_vision_eps: float = 1e-5
    # Std of the random init (EVA's trunc-normal 0.02). transformers' Blip2VisionConfig
    # defaults to 1e-10, which leaves a randomly initialised ViT blind: its output
    # hardly depends on the image (pretrained weights overwrite it either way).
    initializer_range: float = 0.02


@dataclass
class QFormerConfig:
    """BERT-base Q-Former with cross-attention every 2nd layer (LAVIS BLIP-2)."""

    num_query_token: int = 32
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_freq: int = 2
    layer_norm_eps: float = 1e-12
    vocab_size: int = 30523
    max_position_embeddings: int = 512


@dataclass
class Blip2QwenConfig(ImageLMConfig):
    """blip2_qwen's options: the shared ones (``ImageLMConfig``) plus its vision path and parts."""

    arch: str = "blip2_qwen"
    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    # One switch per part (Blip2Qwen.PARTS); freeze_llm is the base's.
    freeze_vit: bool = True
    freeze_ln_vision: bool = True
    freeze_qformer: bool = True
    freeze_queries: bool = True
    freeze_proj: bool = False
    # Base weights (LAVIS / Hugging Face / lavislite files; see models/checkpoint.py),
    # read before ``finetuned``. The LLM's own weights come from llm_model.
    vit_pretrained: str = ""  # LAVIS eva_vit_g.pth
    pretrained: str = ""  # BLIP-2 stage-1: LAVIS blip2_pretrained*.pth or an HF Blip2 folder


@registry.register_model("blip2_qwen")
class Blip2Qwen(ImageTokenLM):
    """BLIP-2 image encoder + Qwen causal LM, instruction-tuned on ChatML.

    ``forward(samples)`` takes a collated batch (``image``, ``input_ids``,
    ``attention_mask``, ``labels``, ``ids``) and returns ``{"loss": ...}``.
    """

    Config = Blip2QwenConfig
    PRETRAINED_MODEL_CONFIG_DICT = {
        "demo": "configs/models/blip2_qwen/demo.yaml",
        "qwen2.5-7b-instruct": "configs/models/blip2_qwen/qwen2.5-7b-instruct.yaml",
        "qwen2.5-1.5b-instruct": "configs/models/blip2_qwen/qwen2.5-1.5b-instruct.yaml",
        "qwen3-8b": "configs/models/blip2_qwen/qwen3-8b.yaml",
    }
    PARTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "vit": ("vision.embeddings.", "vision.encoder."),
        "ln_vision": ("vision.post_layernorm.",),
        "qformer": ("qformer.",),
        "queries": ("query_tokens",),
        "proj": ("proj.",),
        "llm": ("llm.",),
    }
    WEIGHT_FORMATS: ClassVar[tuple[WeightFormat, ...]] = BLIP2_FORMATS
    BASE_WEIGHTS: ClassVar[tuple[str, ...]] = ("vit_pretrained", "pretrained")

    cfg: Blip2QwenConfig

    def build_vision(self) -> None:
        """The ViT (its ``post_layernorm`` is LAVIS's ``ln_vision``), the learned queries and the Q-Former."""
        from transformers import Blip2VisionConfig, Blip2VisionModel

        v, q = self.cfg.vision, self.cfg.qformer
        self.vision = Blip2VisionModel(
            Blip2VisionConfig(
                hidden_size=v.hidden_size,
                intermediate_size=v.intermediate_size,
                num_hidden_layers=v.num_layers,
                num_attention_heads=v.num_heads,
                image_size=v.image_size,
                patch_size=v.patch_size,
                layer_norm_eps=v.layer_norm_eps,
                initializer_range=v.initializer_range,
            )
        )
        self.vision.post_layernorm.eps = v.ln_vision_eps
        self.query_tokens = nn.Parameter(torch.zeros(1, q.num_query_token, q.hidden_size))
        nn.init.normal_(self.query_tokens, std=0.02)
        self.qformer = self.build_qformer()

    def qformer_kwargs(self) -> dict[str, Any]:
        """The Q-Former's transformers config arguments (the same for BLIP-2's and InstructBLIP's Q-Former)."""
        v, q = self.cfg.vision, self.cfg.qformer
        return {
            "vocab_size": q.vocab_size,
            "hidden_size": q.hidden_size,
            "num_hidden_layers": q.num_layers,
            "num_attention_heads": q.num_heads,
            "intermediate_size": q.intermediate_size,
            "cross_attention_frequency": q.cross_attention_freq,
            "layer_norm_eps": q.layer_norm_eps,
            "max_position_embeddings": q.max_position_embeddings,
            "encoder_hidden_size": v.hidden_size,
        }

    def build_qformer(self) -> nn.Module:
        """The Q-Former (queries only: ``Blip2QFormerModel``)."""
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        return Blip2QFormerModel(Blip2QFormerConfig(**self.qformer_kwargs()))

    def build_projector(self, llm_hidden: int) -> None:
        self.proj = nn.Linear(self.cfg.qformer.hidden_size, llm_hidden)

    @classmethod
    def image_tokens_of(cls, cfg: Any) -> int:
        return int(cfg.qformer.num_query_token)

    @classmethod
    def default_vis_processors(cls, cfg: Any) -> dict[str, dict[str, Any]]:
        size = int(cfg.vision.image_size)
        return {"train": {"name": "blip2_image_train", "image_size": size}, "eval": {"name": "blip_image_eval", "image_size": size}}

    def image_size(self) -> int:
        return int(self.cfg.vision.image_size)

    def checkpointing_targets(self) -> list[nn.Module]:
        """The LLM, and the ViT when it trains."""
        return [self.llm] + ([self.vision] if not self.cfg.freeze_vit else [])

    def export_writer(self) -> "Blip2ExportWriter":
        return Blip2ExportWriter()

    # -- forward ------------------------------------------------------------------
    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> the ViT's output after ln_vision, (n, patches + 1, vit width)."""
        image = image.to(device=self.query_tokens.device, dtype=self.vision.embeddings.patch_embedding.weight.dtype)
        vit_trainable = any(p.requires_grad for p in self.vision.parameters())
        # A frozen encoder needs no activations kept for backward.
        with torch.set_grad_enabled(torch.is_grad_enabled() and vit_trainable):
            return self.vision(pixel_values=image).last_hidden_state  # type: ignore[no-any-return]

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, num_query_token, llm hidden)."""
        image_embeds = self.image_features(image)
        query = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.qformer(query_embeds=query, encoder_hidden_states=image_embeds, encoder_attention_mask=atts)
        return self.proj(out.last_hidden_state)  # type: ignore[no-any-return]


class Blip2ExportWriter(HFExportWriter):
    """blip2_qwen -> ``Blip2ForConditionalGeneration`` (Qwen ``text_config``; names by ``HF_BLIP2_NAMES``).

    One known difference: lavislite's ``ln_vision`` (the vision model's
    ``post_layernorm``) uses LAVIS's eps 1e-5, while ``Blip2VisionModel`` builds
    every LayerNorm from one ``layer_norm_eps``. The export keeps the ViT's own
    eps (1e-6, exact for its 2 x num_layers LayerNorms, and what transformers'
    own BLIP-2 conversions use), so only the final LayerNorm differs, by eps
    1e-6 vs 1e-5 in ``1/sqrt(var + eps)``: a relative change below
    ``4.5e-6 / var`` of the vision features. lavislite keeps 1e-5 when it
    reads an export back (``lavislite.yaml`` holds it), so a round trip is exact.
    """

    hf_class = "Blip2ForConditionalGeneration"

    def config(self, model: Any, text_config: Any) -> Any:
        from transformers import Blip2Config

        config = Blip2Config(
            vision_config=model.vision.config.to_dict(),
            qformer_config=model.qformer.config.to_dict(),
            text_config=text_config.to_dict(),
            num_query_tokens=int(model.num_image_tokens),
            image_token_index=int(model.image_token_id),
        )
        ln_eps, vit_eps = model.vision.post_layernorm.eps, config.vision_config.layer_norm_eps
        if ln_eps != vit_eps:
            logger.info("ln_vision eps %g exported as the ViT's %g (transformers has one layer_norm_eps)", ln_eps, vit_eps)
        return config

    def state_dict(self, model: Any, llm_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, value in model.state_dict().items():
            if not key.startswith("llm."):
                out[str(rename_prefix(key, HF_BLIP2_NAMES))] = value
        out.update({str(rename_prefix("llm." + k, HF_BLIP2_NAMES)): v for k, v in llm_state.items()})
        return out

    def processor(self, model: Any, tokenizer: Any) -> tuple[Any, Any]:
        from transformers import Blip2Processor

        image_processor = blip_image_processor(model)
        # num_query_tokens=None: the processor adds no image tokens of its own
        # (the stock one prepends N of them); the chat template places them.
        return Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=None), image_processor


def blip_image_processor(model: Any) -> Any:
    """A ``BlipImageProcessor`` (PIL backend) doing what the model's ``blip_image_eval`` does.

    Resize to ``image_size`` square with PIL (bicubic), rescale by 1/255,
    normalise with the processor's mean/std, RGB conversion first.

    Raises:
        ExportError: the eval image processor is not ``blip_image_eval`` (nothing else maps to BLIP's image processor).
    """
    from transformers import BlipImageProcessorPil

    from lavislite.models.hf_export import ExportError
    from lavislite.processors.blip_processors import ImageEvalConfig

    spec = dict((model.cfg.preprocess or {}).get("vis_processor", {}).get("eval") or {})
    name = spec.pop("name", "blip_image_eval")
    if name != "blip_image_eval":
        raise ExportError(f"model.preprocess.vis_processor.eval is '{name}'; only blip_image_eval maps to a transformers image processor")
    settings = dataclasses.asdict(ImageEvalConfig(**{"image_size": model.image_size(), **spec}))
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
