"""blip2_qwen: frozen ViT -> ln_vision -> Q-Former -> linear projection -> Qwen.

Parts come from transformers: ``Blip2VisionModel`` (EVA-ViT-g layout; its
``post_layernorm`` is LAVIS's ``ln_vision``), ``Blip2QFormerModel`` and
``AutoModelForCausalLM``. The N projected query outputs of each image replace
the N ``<|image_pad|>`` tokens the chat processor put in the sequence.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lavislite.common.logger import logger
from lavislite.common.errors import DataError
from lavislite.common.schema import ConfigError
from lavislite.common.registry import registry
from lavislite.models.attention import AttnImplementation, flash_attn_available, resolve_attn_implementation
from lavislite.models.base_model import BaseModel
from lavislite.models.checkpoint import LoadReport, check_finetuned, load_checkpoint, resolve_weights_path
from lavislite.models.losses import check_labels, supervised_cross_entropy
from lavislite.processors.collate import block_causal_mask
from lavislite.processors.tokenizers import load_tokenizer

# Attention implementations for which transformers builds the packed (block-diagonal)
# mask itself from reset position ids when attention_mask is None and no cache is passed.
PACKED_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


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
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class Blip2QwenConfig:
    arch: str = "blip2_qwen"
    model_type: str = "demo"
    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    # A local folder or hub id; with llm_init=random also a transformers model
    # type ("qwen2", "qwen3") built from llm_config alone (no weights read).
    llm_model: str = "Qwen/Qwen2.5-7B-Instruct"
    llm_init: Literal["pretrained", "random"] = "pretrained"
    llm_config: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = ""  # "" -> llm_model; "builtin:qwen2.5" builds Qwen2.5's offline
    freeze_vit: bool = True
    freeze_ln_vision: bool = True
    freeze_qformer: bool = True
    freeze_queries: bool = True
    freeze_proj: bool = False
    freeze_llm: bool = True
    lora: LoraConfig = field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    # The LM-head loss (models/losses.py): auto = chunked (never rows x vocab logits);
    # full = one head call over the supervised rows; full_logits = logits at every
    # position (padding too), as HF CausalLMs / MiniGPT4Qwen: a baseline, never faster.
    # loss_chunk_bytes: fp32 logits per chunk.
    loss_impl: Literal["auto", "chunked", "full", "full_logits"] = "auto"
    loss_chunk_bytes: int = 8388608
    # The LLM's attention kernel (models/attention.py): auto = flash_attention_2 on CUDA
    # in bf16/fp16 when flash-attn imports, else sdpa; eager for debugging.
    attn_implementation: AttnImplementation = "auto"
    # Weights (LAVIS / Hugging Face / lavislite files; see models/checkpoint.py).
    # The LLM's own weights come from llm_model.
    load_pretrained: bool = True
    vit_pretrained: str = ""  # LAVIS eva_vit_g.pth
    pretrained: str = ""  # BLIP-2 stage-1: LAVIS blip2_pretrained*.pth or an HF Blip2 folder
    # A trained model to load last (lavislite release, MiniGPT4Qwen checkpoint).
    # Setting it loads it; load_finetuned=false keeps it unloaded (with a warning),
    # as LAVIS configs that carry both keys expect.
    finetuned: str = ""
    load_finetuned: bool | None = None
    image_token: str = "<|image_pad|>"
    # Processors for load_model_and_preprocess: {vis_processor|text_processor: {train|eval: spec}}.
    preprocess: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def check_section(data: dict[str, Any]) -> list[str]:
        """Cross-key rules, checked at start-up with the rest of the config (keys relative to ``model``)."""
        problems = []
        if data["lora"]["enabled"] and not data["freeze_llm"]:
            # peft freezes the base weights again, so "full LLM + LoRA" would silently train LoRA only.
            problems.append(
                "freeze_llm: false with lora.enabled: true is not supported (peft would freeze the LLM again); "
                "use LoRA on a frozen LLM (freeze_llm: true) or full fine-tuning (lora.enabled: false)"
            )
        if data["load_finetuned"] is True and not data["finetuned"]:
            problems.append("load_finetuned: true but finetuned is empty; name the checkpoint to load")
        return problems


@contextlib.contextmanager
def zero3_gathered(params: list[nn.Parameter]) -> Iterator[None]:
    """Gathers ZeRO-3 partitioned parameters for the block, on every rank (a no-op otherwise).

    DeepSpeed gathers a module's parameters when its ``forward`` runs. ``generate``
    is not ``forward``: the submodules it calls (ViT, Q-Former, projection, LLM)
    still gather theirs, but the model's own parameters (the queries) stay
    partitioned (empty) unless gathered here.
    """
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


def zero3_partitioned(module: nn.Module) -> bool:
    """Whether ``module`` holds ZeRO-3 partitioned parameters (DeepSpeed tags each one with a ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def build_llm_config(cfg: Blip2QwenConfig) -> Any:
    """The LLM's transformers config: from a model type or a checkpoint, with overrides."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if cfg.llm_model in CONFIG_MAPPING:
        return AutoConfig.for_model(cfg.llm_model, **cfg.llm_config)
    return AutoConfig.from_pretrained(cfg.llm_model, **cfg.llm_config)


@registry.register_model("blip2_qwen")
class Blip2Qwen(BaseModel):
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

    def __init__(self, cfg: Blip2QwenConfig) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM, Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel

        self.cfg = cfg
        v, q = cfg.vision, cfg.qformer
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
        self.qformer = Blip2QFormerModel(
            Blip2QFormerConfig(
                vocab_size=q.vocab_size,
                hidden_size=q.hidden_size,
                num_hidden_layers=q.num_layers,
                num_attention_heads=q.num_heads,
                intermediate_size=q.intermediate_size,
                cross_attention_frequency=q.cross_attention_freq,
                layer_norm_eps=q.layer_norm_eps,
                max_position_embeddings=q.max_position_embeddings,
                encoder_hidden_size=v.hidden_size,
            )
        )
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.llm_model)
        llm_config = build_llm_config(cfg)
        # The run's precision is not known yet (configure_attention sets the final kernel).
        attn = self.resolve_attention(precision=None)
        if cfg.llm_init == "random":
            self.llm = AutoModelForCausalLM.from_config(llm_config, attn_implementation=attn)
        else:
            self.llm = AutoModelForCausalLM.from_pretrained(cfg.llm_model, config=llm_config, attn_implementation=attn)
        if len(self.tokenizer) > self.llm.get_input_embeddings().num_embeddings:
            self.llm.resize_token_embeddings(len(self.tokenizer))
        self.proj = nn.Linear(q.hidden_size, self.llm.config.hidden_size)
        self.image_token_id = int(self.tokenizer.convert_tokens_to_ids(cfg.image_token))
        self.apply_freezing()
        if cfg.lora.enabled:
            self.apply_lora()
        # Weights load into the final structure: a LoRA release needs the LoRA layers to exist.
        self.load_reports = self.load_weights()
        if cfg.gradient_checkpointing:
            self.enable_gradient_checkpointing()

    # -- set-up ----------------------------------------------------------------
    def resolve_attention(self, precision: str | None) -> str:
        """``model.attn_implementation`` resolved for this machine and ``precision`` (``models.attention``)."""
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        return resolve_attn_implementation(
            self.cfg.attn_implementation, device_type=device_type, precision=precision, flash_available=flash_attn_available()
        )

    def configure_attention(self, precision: str | None) -> str:
        """Sets the LLM's attention kernel for the run's precision (the task calls it once it is known).

        Args:
            precision: ``run.precision`` (``fp32``, ``bf16``, ``fp16``) or None.

        Returns:
            The attention implementation the LLM now uses.

        Raises:
            ConfigError: ``flash_attention_2`` asked for where it cannot run.
        """
        attn = self.resolve_attention(precision)
        llm = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm  # a peft-wrapped LLM
        if llm.config._attn_implementation != attn:
            llm.set_attn_implementation(attn)
        logger.info("LLM attention: %s (model.attn_implementation=%s, precision %s)", attn, self.cfg.attn_implementation, precision)
        return attn

    def llm_flops_shape(self) -> dict[str, int]:
        """What ``common.flops.llm_flops_per_token`` needs: the LLM's transformer-block parameters
        (``n_params``, ``n_trainable``; no embedding, no head), ``n_layers`` and ``hidden``.

        Counted from ``ds_numel`` where ZeRO-3 partitioned a parameter (its local tensor is empty).
        """
        llm = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        decoder = llm.get_decoder()
        embedding = {id(p) for p in decoder.get_input_embeddings().parameters()}
        blocks = [p for p in decoder.parameters() if id(p) not in embedding]
        size = lambda p: int(getattr(p, "ds_numel", p.numel()))  # noqa: E731
        return {
            "n_params": sum(size(p) for p in blocks),
            "n_trainable": sum(size(p) for p in blocks if p.requires_grad),
            "n_layers": int(llm.config.num_hidden_layers),
            "hidden": int(llm.config.hidden_size),
        }

    def parts(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part name: vit, ln_vision, qformer, queries, proj, llm."""
        ln = set(id(p) for p in self.vision.post_layernorm.parameters())
        return {
            "vit": [p for p in self.vision.parameters() if id(p) not in ln],
            "ln_vision": list(self.vision.post_layernorm.parameters()),
            "qformer": list(self.qformer.parameters()),
            "queries": [self.query_tokens],
            "proj": list(self.proj.parameters()),
            "llm": list(self.llm.parameters()),
        }

    def load_weights(self) -> list[LoadReport]:
        """Loads vit_pretrained, then pretrained (also those a finetuned release was trained on), then finetuned; returns the reports.

        Raises:
            ValueError: if the finetuned file fills nothing, or leaves trained weights unused.
        """
        from lavislite.models.release import release_base_weights

        c = self.cfg
        finetuned = resolve_weights_path(c.finetuned) if c.finetuned and c.load_finetuned is not False else ""
        bases = {"vit_pretrained": c.vit_pretrained, "pretrained": c.pretrained} if c.load_pretrained else {}
        # A release holds only what trained: the frozen parts it was trained on
        # (its config's vit_pretrained / pretrained) load first, or they would
        # keep random weights and the model would answer nonsense, silently.
        for key, path in (release_base_weights(finetuned) if finetuned else {}).items():
            if not bases.get(key):
                logger.warning("%s was trained on top of model.%s=%s (frozen, not in the release): loading that first", finetuned, key, path)
                bases[key] = path
        reports = [load_checkpoint(self, resolve_weights_path(p)) for p in bases.values() if p]
        if c.finetuned and c.load_finetuned is False:
            logger.warning("model.finetuned=%s is set but model.load_finetuned is false: NOT loading it", c.finetuned)
        elif c.finetuned:
            report = load_checkpoint(self, finetuned)
            check_finetuned(report)
            reports.append(report)
        elif c.load_finetuned:
            raise ConfigError(["model.load_finetuned is true but model.finetuned is empty"])
        return reports

    def apply_freezing(self) -> None:
        c = self.cfg
        switches = {
            "vit": c.freeze_vit,
            "ln_vision": c.freeze_ln_vision,
            "qformer": c.freeze_qformer,
            "queries": c.freeze_queries,
            "proj": c.freeze_proj,
            "llm": c.freeze_llm,
        }
        for part, params in self.parts().items():
            for p in params:
                p.requires_grad_(not switches[part])

    def apply_lora(self) -> None:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        lc = self.cfg.lora
        peft_cfg = PeftLoraConfig(
            r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.target_modules), task_type="CAUSAL_LM"
        )
        self.llm = get_peft_model(self.llm, peft_cfg)

    def frozen_modules(self) -> list[nn.Module]:
        """Submodules that do not train and so must never run dropout.

        ``engine.train()`` puts every submodule in train mode; a frozen Q-Former
        in train mode would feed the projection dropout noise that it never
        sees at inference (MiniGPT-4 and MiniGPT4Qwen keep frozen parts in eval).
        """
        c = self.cfg
        frozen: list[nn.Module] = []
        if c.freeze_vit:
            frozen.append(self.vision)  # ln_vision (post_layernorm) has no train-mode behaviour
        if c.freeze_qformer:
            frozen.append(self.qformer)
        if c.freeze_llm and not c.lora.enabled:  # LoRA dropout must stay active
            frozen.append(self.llm)
        return frozen

    def train(self, mode: bool = True) -> "Blip2Qwen":
        """Like ``nn.Module.train``, but frozen parts stay in eval mode."""
        super().train(mode)
        if mode:
            for module in self.frozen_modules():
                module.eval()
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recomputes LLM activations in backward (and the ViT's, when the ViT trains)."""
        # Non-reentrant checkpointing works with frozen inputs (LoRA on a frozen LLM).
        options = {"use_reentrant": False}
        targets = [self.llm] + ([self.vision] if not self.cfg.freeze_vit else [])
        for module in targets:
            if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5.x name
                module.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
            else:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)

    @classmethod
    def processor_context(cls, cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        c = cls.config_from_dict(data)
        return {"tokenizer": c.tokenizer or c.llm_model, "num_image_tokens": c.qformer.num_query_token}

    # -- forward ------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, num_query_token, llm hidden)."""
        image = image.to(device=self.query_tokens.device, dtype=self.vision.embeddings.patch_embedding.weight.dtype)
        vit_trainable = any(p.requires_grad for p in self.vision.parameters())
        # A frozen encoder needs no activations kept for backward.
        with torch.set_grad_enabled(torch.is_grad_enabled() and vit_trainable):
            image_embeds = self.vision(pixel_values=image).last_hidden_state
        query = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.qformer(query_embeds=query, encoder_hidden_states=image_embeds, encoder_attention_mask=atts)
        return self.proj(out.last_hidden_state)

    def embed(self, samples: dict[str, Any]) -> torch.Tensor:
        """Token embeddings with each image's projected queries in its image-token slots."""
        input_ids = samples["input_ids"].to(self.query_tokens.device)
        embeds = self.llm.get_input_embeddings()(input_ids)
        slots = input_ids == self.image_token_id
        image = samples.get("image")
        n_images = 0 if image is None else int(image.shape[0])
        expected = n_images * self.cfg.qformer.num_query_token
        if int(slots.sum()) != expected:
            raise DataError(
                f"batch {samples.get('ids')}: {int(slots.sum())} image tokens in input_ids but {n_images} image(s) "
                f"x {self.cfg.qformer.num_query_token} queries = {expected}"
            )
        if n_images:
            image_embeds = self.encode_image(image).to(embeds.dtype)
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), image_embeds.reshape(-1, embeds.shape[-1]))
        elif (torch.is_grad_enabled() and self.vision_path_trains()) or zero3_partitioned(self.vision):
            # A text-only batch still runs the vision path, on one blank image
            # with weight zero, so every rank joins the same collectives
            # whatever its batch holds (otherwise a rank without images hangs
            # or aborts the others): under grad, every trainable parameter gets
            # a (zero) gradient for ZeRO's gradient reduction; under ZeRO-3,
            # each module forward also gathers its partitioned parameters, so
            # the ranks must run the same forwards in any grad mode and with
            # any part frozen (validation by loss, an LLM-only or LoRA run).
            size = self.cfg.vision.image_size
            blank = torch.zeros(1, 3, size, size, device=embeds.device)
            embeds = embeds + 0.0 * self.encode_image(blank).to(embeds.dtype).sum()
        return embeds

    def vision_path_trains(self) -> bool:
        """Whether any parameter between the pixels and the LLM input trains."""
        modules = (self.vision, self.qformer, self.proj)
        return self.query_tokens.requires_grad or any(p.requires_grad for m in modules for p in m.parameters())

    def forward(self, samples: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The supervised-token loss of a batch: padded rows (``attention_mask``) or packed rows.

        A packed batch (``collate_packed``) has ``position_ids`` restarting at
        each sample and ``attention_mask`` None: with no cache, transformers
        then builds the block-diagonal causal mask from the position ids (sdpa,
        eager, flex) or takes the varlen path (flash-attention); any other
        attention gets an explicit 4-D block-diagonal mask.
        """
        device = self.query_tokens.device
        labels = samples["labels"].to(device)
        attention_mask = samples.get("attention_mask")
        attention_mask = None if attention_mask is None else attention_mask.to(device)
        position_ids = samples.get("position_ids")
        position_ids = None if position_ids is None else position_ids.to(device)
        check_labels(samples["input_ids"].to(device), labels, samples.get("ids"))
        inputs_embeds = self.embed(samples)
        if position_ids is not None and attention_mask is None and self.llm.config._attn_implementation not in PACKED_ATTENTION:
            attention_mask = block_causal_mask(position_ids, inputs_embeds.dtype)
        # No cache: a cache (even an empty one) turns transformers' packed-sequence mask off.
        hidden = self.llm.get_decoder()(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        loss, n_tokens = supervised_cross_entropy(hidden, labels, self.llm.get_output_embeddings(), samples.get("ids"), impl=self.cfg.loss_impl, chunk_bytes=self.cfg.loss_chunk_bytes)
        return {"loss": loss, "n_tokens": n_tokens}

    @torch.no_grad()
    def generate(
        self, samples: dict[str, Any], return_ids: bool = False, streamer: Any = None, synced_gpus: bool = False, **settings: Any
    ) -> list[str] | tuple[list[str], list[list[int]]]:
        """Generates one reply per sample of a batch of left-padded prompts.

        The prompts end with an open assistant turn (the chat processor's
        ``add_generation_prompt``; the generation collater pads them on the
        left). Images go through the same placeholder path as in training; the
        LLM's own ``generate`` does the decoding (KV cache, beam search,
        sampling) and stops at ``<|im_end|>`` or ``<|endoftext|>`` (``stop_token_ids``).

        Args:
            samples: ``input_ids``, ``attention_mask`` (left-padded) and ``image``.
            return_ids: also return each reply's token ids (without the stop token and padding).
            streamer: a transformers streamer (e.g. ``TextIteratorStreamer``) for batch size 1.
            synced_gpus: keep decoding until every rank is done (ZeRO-3: each
                forward pass gathers parameters from all ranks).
            **settings: ``GenerateConfig`` fields (``max_new_tokens``, ``num_beams``,
                ``do_sample``, ``temperature``, ``top_p``, ...).

        Returns:
            The decoded replies (stripped), and with ``return_ids`` their token ids.
        """
        from lavislite.common.schema import instantiate, validate
        from lavislite.models.generation import GenerateConfig, hf_generate_kwargs

        config = instantiate(GenerateConfig, validate(GenerateConfig, settings, "generate"))
        with zero3_gathered(list(self.parameters(recurse=False))):
            embeds = self.embed(samples)
        attention_mask = samples["attention_mask"].to(embeds.device)
        stop_ids = self.stop_token_ids()
        pad_id = int(self.tokenizer.pad_token_id)
        out = self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            pad_token_id=pad_id,
            eos_token_id=stop_ids,
            streamer=streamer,
            synced_gpus=synced_gpus,
            **hf_generate_kwargs(config),
        )
        # With only inputs_embeds given, generate returns the new tokens alone.
        ids: list[list[int]] = []
        for row in out.tolist():
            reply = []
            for token in row:
                if token in stop_ids or token == pad_id:
                    break
                reply.append(token)
            ids.append(reply)
        texts = [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return (texts, ids) if return_ids else texts

    def stop_token_ids(self) -> list[int]:
        """The tokens that end a reply: ``<|im_end|>`` (ChatML's end of turn) and ``<|endoftext|>``.

        Qwen's own generation config stops on both: a model that ends with
        ``<|endoftext|>`` would otherwise decode on to ``max_new_tokens``, and a
        stream would show that continuation.
        """
        from lavislite.processors.tokenizers import stop_token_ids

        return stop_token_ids(self.tokenizer)

    # -- chat -----------------------------------------------------------------------
    def chat_processors(self) -> tuple[Any, Any]:
        """The eval image processor and the chat processor of ``model.preprocess`` (built on first use, then kept)."""
        if getattr(self, "_chat_processors", None) is None:
            from lavislite.processors.blip_processors import build_processor

            pre = self.cfg.preprocess or {}
            context = {"tokenizer": self.cfg.tokenizer or self.cfg.llm_model, "num_image_tokens": self.cfg.qformer.num_query_token}
            vis_spec = (pre.get("vis_processor") or {}).get("eval") or {"name": "blip_image_eval", "image_size": self.cfg.vision.image_size}
            txt_spec = (pre.get("text_processor") or {}).get("eval") or {"name": "qwen_chat"}
            self._chat_processors = (build_processor(vis_spec, context), build_processor(txt_spec, context))
        return self._chat_processors

    def chat_inputs(self, images: list[Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
        """A batch of one: the conversation so far, rendered with an open assistant turn.

        Args:
            images: every image of the conversation, in order (PIL images, file
                paths, or processed (3, H, W) tensors).
            messages: ``[{"role": "system"|"user"|"assistant", "content": ...}]``;
                content is a string (``<image>`` placeholders mark the images) or
                a list of parts (``{"type": "image"}``, ``{"type": "text", "text": ...}``).

        Raises:
            MissingFileError, DataError: an image path that is missing or not an image.
        """
        from lavislite.processors.chat_processor import kept_images
        from lavislite.processors.collate import collate_chat
        from lavislite.processors.transforms import open_rgb_image

        vis, txt = self.chat_processors()
        # Over max_len, the oldest turns are dropped with their images (the first ones).
        enc = txt(list(messages), num_images=len(images), sample_id="chat", add_generation_prompt=True)
        tensors = []
        for image in kept_images(images, enc):
            if isinstance(image, torch.Tensor):
                tensors.append(image)
            else:
                pil = open_rgb_image(image) if isinstance(image, (str, os.PathLike)) else image
                tensors.append(vis(pil.convert("RGB")))
        sample = {"id": "chat", "image": torch.stack(tensors) if tensors else None, "input_ids": torch.tensor(enc["input_ids"])}
        return collate_chat([sample], pad_token_id=int(self.tokenizer.pad_token_id), padding_side="left")

    @torch.no_grad()
    def chat(self, images: list[Any], messages: list[dict[str, Any]], streamer: Any = None, **settings: Any) -> str:
        """The assistant's next reply in a (multi-turn, multi-image) conversation.

        The caller keeps the history: append ``{"role": "assistant", "content": reply}``
        and the next user message, and call again with every image so far.

        Args:
            images: see ``chat_inputs``.
            messages: see ``chat_inputs``; the last one is the user's.
            streamer: a transformers streamer (``TextIteratorStreamer``) to receive the reply as it is generated.
            **settings: generation settings (``GenerateConfig``: ``max_new_tokens``, ``num_beams``, ...).
        """
        return self._generate_eval(self.chat_inputs(images, messages), streamer, settings)

    def chat_stream(self, images: list[Any], messages: list[dict[str, Any]], **settings: Any) -> Iterator[str]:
        """Like ``chat``, but yields the reply's text piece by piece while it is generated.

        The pieces joined give the decoded reply before ``chat``'s strip (a
        leading space, e.g.). A bad image or message raises here, in the
        caller's thread, before anything is generated; an error while
        generating ends the stream and is raised again here. Beam search
        cannot stream in transformers: with ``num_beams > 1`` the whole reply
        comes as one piece.
        """
        import threading

        from transformers import TextIteratorStreamer

        from lavislite.common.schema import validate
        from lavislite.models.generation import GenerateConfig

        checked = validate(GenerateConfig, settings, "generate")
        # Rendered here, not in the worker: an error in the worker would leave the
        # streamer without its end marker and the consumer waiting for ever.
        samples = self.chat_inputs(images, messages)
        if checked["num_beams"] > 1:
            yield self._generate_eval(samples, None, settings)
            return
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self._generate_eval(samples, streamer, settings)
            except BaseException as exc:  # noqa: BLE001  (handed to the consumer below)
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        for piece in streamer:
            if piece:  # the streamer hands out "" while a word or a character is incomplete
                yield piece
        worker.join()
        if failure:
            raise failure[0]

    def _generate_eval(self, samples: dict[str, Any], streamer: Any, settings: dict[str, Any]) -> str:
        """One reply for a batch of one, generated in eval mode (the mode is put back after)."""
        was_training = self.training
        self.eval()
        try:
            return self.generate(samples, streamer=streamer, **settings)[0]  # type: ignore[index]
        finally:
            self.train(was_training)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trainable weights (what a release file holds)."""
        return {n: p.detach().cpu() for n, p in self.named_parameters() if p.requires_grad}

    def log_parameter_table(self) -> str:
        """A table of parameters per part: total, trainable, dtype (logged at start-up)."""
        rows = [f"{'part':<10}{'total':>14}{'trainable':>14}  dtype"]
        for part, params in self.parts().items():
            total = sum(p.numel() for p in params)
            train = sum(p.numel() for p in params if p.requires_grad)
            dtypes = ",".join(sorted({str(p.dtype).replace("torch.", "") for p in params}))
            rows.append(f"{part:<10}{total:>14,}{train:>14,}  {dtypes}")
        table = "\n".join(rows)
        logger.info("parameters:\n%s", table)
        return table

