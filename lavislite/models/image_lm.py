"""The shared base of every model family: images -> N embeddings each -> one causal LM.

Every family (``blip2_qwen``, ``llava``, ``instructblip_qwen``) turns each image
into N embeddings of the LLM's width that replace the N image placeholder
tokens the chat processor put in the sequence. Everything that does not depend
on *how* an image becomes embeddings lives here, once:

* the LLM and its tokenizer, the attention kernel, the FLOP shape for MFU;
* placing image embeddings at the placeholders, the supervised-token loss
  (padded or packed rows), the ZeRO-3 rule for image-less batches;
* ``generate`` / ``chat`` / ``chat_stream``;
* parts, freezing by part, LoRA on the LLM, gradient checkpointing, per-part
  learning rates (``parts()`` feeds the runner), the trainable state, the
  parameter table, loading weights (base weights, then a finetuned release).

A family subclass declares its parts once (``PARTS``: part name -> parameter
name prefixes; its ``Config`` has a ``freeze_<part>`` switch for each), builds
its vision path (``build_vision`` before the LLM, ``build_projector`` after),
and implements ``encode_image``; it names its weight readers
(``WEIGHT_FORMATS``), the base weight files its config can name
(``BASE_WEIGHTS``) and its export writer (``export_writer``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lavislite.common.errors import DataError
from lavislite.common.logger import logger
from lavislite.common.schema import ConfigError
from lavislite.models.attention import AttnImplementation, flash_attn_available, resolve_attn_implementation
from lavislite.models.base_model import BaseModel
from lavislite.models.checkpoint import LoadReport, WeightFormat, check_finetuned, load_checkpoint, part_of, resolve_weights_path
from lavislite.models.losses import check_labels, supervised_cross_entropy
from lavislite.processors.collate import block_causal_mask
from lavislite.processors.tokenizers import load_tokenizer

# Attention implementations for which transformers builds the packed (block-diagonal)
# mask itself from reset position ids when attention_mask is None and no cache is passed.
PACKED_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ImageLMConfig:
    """The options every family shares: the LLM, its loss and kernel, LoRA, weights to load, processors.

    A family's ``Config`` extends it with its vision path and one
    ``freeze_<part>`` switch per part it declares (``freeze_llm`` is here).
    """

    arch: str = ""
    model_type: str = "demo"
    # A local folder or hub id; with llm_init=random also a transformers model
    # type ("qwen2", "qwen3") built from llm_config alone (no weights read).
    llm_model: str = "Qwen/Qwen2.5-7B-Instruct"
    llm_init: Literal["pretrained", "random"] = "pretrained"
    llm_config: dict[str, Any] = field(default_factory=dict)
    # Run code shipped with an LLM checkpoint (transformers' trust_remote_code): only when said.
    trust_remote_code: bool = False
    tokenizer: str = ""  # "" -> llm_model; "builtin:qwen2.5" builds Qwen2.5's offline
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
    # Base weights (the family's BASE_WEIGHTS keys) load only with load_pretrained.
    load_pretrained: bool = True
    # A trained model to load last (lavislite release, MiniGPT4Qwen checkpoint, an export).
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
    is not ``forward``: the submodules it calls (vision path, LLM) still gather
    theirs, but the model's own parameters (BLIP-2's queries) stay partitioned
    (empty) unless gathered here.
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


def build_llm_config(cfg: ImageLMConfig) -> Any:
    """The LLM's transformers config: from a model type or a checkpoint, with overrides."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if cfg.llm_model in CONFIG_MAPPING:
        return AutoConfig.for_model(cfg.llm_model, **cfg.llm_config)
    return AutoConfig.from_pretrained(cfg.llm_model, trust_remote_code=cfg.trust_remote_code, **cfg.llm_config)


def unwrap_peft(llm: nn.Module) -> nn.Module:
    """The plain causal LM under a peft wrapper (the LLM itself without LoRA)."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm  # type: ignore[operator, no-any-return]


class ImageTokenLM(BaseModel):
    """Base of every family: ``forward(samples)`` takes a collated batch and returns ``{"loss", "n_tokens"}``.

    Subclasses set ``Config``, ``PARTS``, ``WEIGHT_FORMATS``, ``BASE_WEIGHTS`` and
    implement ``build_vision``, ``build_projector``, ``encode_image``,
    ``image_tokens_of`` and ``default_vis_processors`` (see the module docstring).
    """

    Config: type = ImageLMConfig
    # Part name -> parameter-name prefixes (``llm`` is every family's). Declared once per
    # family: parts(), freezing, per-part lr, load reports and the parameter table read it.
    PARTS: ClassVar[dict[str, tuple[str, ...]]] = {"llm": ("llm.",)}
    # The layouts the family's weight loader reads (models/checkpoint.py); lavislite's own always.
    WEIGHT_FORMATS: ClassVar[tuple[WeightFormat, ...]] = ()
    # Config keys (dotted) naming base weight files, loaded in this order before ``finetuned``;
    # a release holds only what trained, so loading it reads these again from its config.
    BASE_WEIGHTS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        # The order is the construction (and random initialisation) order:
        # vision path, LLM, projection.
        self.build_vision()
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.llm_model)
        self.llm = self.build_llm()
        self.build_projector(int(self.llm.config.hidden_size))
        self.image_token_id = int(self.tokenizer.convert_tokens_to_ids(cfg.image_token))
        self.num_image_tokens = self.image_tokens_of(cfg)
        self.apply_freezing()
        if cfg.lora.enabled:
            self.apply_lora()
        # Weights load into the final structure: a LoRA release needs the LoRA layers to exist.
        self.load_reports = self.load_weights()
        if cfg.gradient_checkpointing:
            self.enable_gradient_checkpointing()

    # -- what a family provides -------------------------------------------------------
    def build_vision(self) -> None:
        """Builds the modules before the LLM (the vision encoder and what follows it)."""
        raise NotImplementedError

    def build_projector(self, llm_hidden: int) -> None:
        """Builds the modules that need the LLM's width (the projection into it)."""
        raise NotImplementedError

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, num_image_tokens, llm hidden): the embeddings that replace an image's placeholders."""
        raise NotImplementedError

    @classmethod
    def image_tokens_of(cls, cfg: Any) -> int:
        """The number of placeholder tokens (embeddings) per image of a model built from ``cfg``."""
        raise NotImplementedError

    @classmethod
    def default_vis_processors(cls, cfg: Any) -> dict[str, dict[str, Any]]:
        """``{"train": spec, "eval": spec}``: the image processors the family uses where a config names none."""
        raise NotImplementedError

    def image_size(self) -> int:
        """The side of the square images the vision path takes (a blank image for image-less batches)."""
        raise NotImplementedError

    def export_writer(self) -> Any:
        """The family's Hugging Face export writer (``models.hf_export.HFExportWriter``)."""
        raise NotImplementedError(f"{type(self).__name__} has no Hugging Face export")

    @classmethod
    def export_overrides(cls, folder: str) -> dict[str, Any]:
        """Model-config overrides (besides the LLM's) that rebuild this family's model from an export folder alone."""
        return {}

    def encode_images(self, samples: dict[str, Any]) -> torch.Tensor:
        """The embeddings of a batch's images (``samples["image"]``); families whose vision path reads more of the sample override it."""
        return self.encode_image(samples["image"])

    def encode_blank(self, device: torch.device) -> torch.Tensor:
        """The vision path run on one blank image (kept in the graph with weight zero by ``embed``)."""
        size = self.image_size()
        return self.encode_image(torch.zeros(1, 3, size, size, device=device))

    # -- set-up ----------------------------------------------------------------
    def build_llm(self) -> nn.Module:
        """The causal LM: from ``llm_model`` (weights read) or, with ``llm_init: random``, from its config."""
        from transformers import AutoModelForCausalLM

        cfg = self.cfg
        llm_config = build_llm_config(cfg)
        # The run's precision is not known yet (configure_attention sets the final kernel).
        attn = self.resolve_attention(precision=None)
        if cfg.llm_init == "random":
            llm = AutoModelForCausalLM.from_config(llm_config, attn_implementation=attn, trust_remote_code=cfg.trust_remote_code)
        else:
            llm = AutoModelForCausalLM.from_pretrained(
                cfg.llm_model, config=llm_config, attn_implementation=attn, trust_remote_code=cfg.trust_remote_code
            )
        if len(self.tokenizer) > llm.get_input_embeddings().num_embeddings:
            llm.resize_token_embeddings(len(self.tokenizer))
        return llm  # type: ignore[no-any-return]

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
        llm = unwrap_peft(self.llm)
        if llm.config._attn_implementation != attn:
            llm.set_attn_implementation(attn)  # type: ignore[operator]
        logger.info("LLM attention: %s (model.attn_implementation=%s, precision %s)", attn, self.cfg.attn_implementation, precision)
        return attn

    def llm_flops_shape(self) -> dict[str, int]:
        """What ``common.flops.llm_flops_per_token`` needs: the LLM's transformer-block parameters
        (``n_params``, ``n_trainable``; no embedding, no head), ``n_layers`` and ``hidden``.

        Counted from ``ds_numel`` where ZeRO-3 partitioned a parameter (its local tensor is empty).
        """
        llm = unwrap_peft(self.llm)
        decoder = llm.get_decoder()  # type: ignore[operator]
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
        """Parameters by part name (``PARTS``, in its order); every parameter belongs to exactly one part.

        Raises:
            RuntimeError: a parameter no part claims (a family that forgot to declare one).
        """
        out: dict[str, list[nn.Parameter]] = {part: [] for part in self.PARTS}
        for name, param in self.named_parameters():
            part = part_of(self.PARTS, name)
            if part is None:
                raise RuntimeError(f"{type(self).__name__}.PARTS: no part holds parameter '{name}'")
            out[part].append(param)
        return out

    def base_weight_paths(self) -> dict[str, str]:
        """``{config key: path}`` of the base weights this config names (``BASE_WEIGHTS``), empty where unset."""
        return {key: str(_dotted(self.cfg, key) or "") for key in self.BASE_WEIGHTS}

    def load_weights(self) -> list[LoadReport]:
        """Loads the base weights (``BASE_WEIGHTS``, also those a finetuned release was trained on), then finetuned.

        Returns:
            The load reports, in loading order.

        Raises:
            ValueError: if the finetuned file fills nothing, or leaves trained weights unused.
        """
        from lavislite.models.release import release_base_weights

        c = self.cfg
        finetuned = resolve_weights_path(c.finetuned) if c.finetuned and c.load_finetuned is not False else ""
        bases = {k: v for k, v in self.base_weight_paths().items() if v} if c.load_pretrained else {}
        # A release holds only what trained: the frozen parts it was trained on
        # (its config's base weights) load first, or they would keep random
        # weights and the model would answer nonsense, silently.
        for key, path in (release_base_weights(finetuned, self.BASE_WEIGHTS) if finetuned else {}).items():
            if not bases.get(key):
                logger.warning("%s was trained on top of model.%s=%s (frozen, not in the release): loading that first", finetuned, key, path)
                bases[key] = path
        reports = [self.load_base_weights(key, resolve_weights_path(bases[key])) for key in self.BASE_WEIGHTS if bases.get(key)]
        if c.finetuned and c.load_finetuned is False:
            logger.warning("model.finetuned=%s is set but model.load_finetuned is false: NOT loading it", c.finetuned)
        elif c.finetuned:
            report = load_checkpoint(self, finetuned)
            check_finetuned(report)
            reports.append(report)
        elif c.load_finetuned:
            raise ConfigError(["model.load_finetuned is true but model.finetuned is empty"])
        return reports

    def load_base_weights(self, key: str, path: str) -> LoadReport:
        """Loads the base weight file of config key ``key`` (a family may read some keys its own way)."""
        return load_checkpoint(self, path)

    def apply_freezing(self) -> None:
        """Sets ``requires_grad`` of every part from its ``freeze_<part>`` switch."""
        for part, params in self.parts().items():
            frozen = bool(getattr(self.cfg, f"freeze_{part}"))
            for p in params:
                p.requires_grad_(not frozen)

    def apply_lora(self) -> None:
        """Wraps the LLM in a peft LoRA model (``model.lora``); the base LLM weights stay frozen."""
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        lc = self.cfg.lora
        peft_cfg = PeftLoraConfig(
            r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.target_modules), task_type="CAUSAL_LM"
        )
        self.llm = get_peft_model(self.llm, peft_cfg)

    def frozen_modules(self) -> list[nn.Module]:
        """The largest submodules with parameters, none of them trainable: they never run dropout.

        ``engine.train()`` puts every submodule in train mode; a frozen
        Q-Former or ViT in train mode would feed the next part dropout noise
        that it never sees at inference (MiniGPT-4 and MiniGPT4Qwen keep frozen
        parts in eval). A LoRA-wrapped LLM keeps its LoRA layers (and their
        dropout) in train mode: only its wholly frozen submodules are listed.
        """
        frozen: list[nn.Module] = []
        covered: set[str] = set()
        for name, module in self.named_modules():
            if not name or any(name.startswith(c + ".") for c in covered):
                continue
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                frozen.append(module)
                covered.add(name)
        return frozen

    def train(self, mode: bool = True) -> "ImageTokenLM":
        """Like ``nn.Module.train``, but frozen parts stay in eval mode."""
        super().train(mode)
        if mode:
            for module in self.frozen_modules():
                module.eval()
        return self

    def checkpointing_targets(self) -> list[nn.Module]:
        """The modules whose activations are recomputed in backward: the LLM, and vision modules that train."""
        return [self.llm]

    def enable_gradient_checkpointing(self) -> None:
        """Recomputes activations in backward (``checkpointing_targets``)."""
        # Non-reentrant checkpointing works with frozen inputs (LoRA on a frozen LLM).
        options = {"use_reentrant": False}
        for module in self.checkpointing_targets():
            if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5.x name
                module.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
            elif hasattr(module, "gradient_checkpointing_enable"):
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
            else:  # timm models
                module.set_grad_checkpointing(True)

    @classmethod
    def processor_context(cls, cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
        """What the processors take from the model (``context_of``), from a ``model`` config section."""
        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        return cls.context_of(cls.config_from_dict(data))  # type: ignore[arg-type]

    @classmethod
    def context_of(cls, cfg: Any) -> dict[str, Any]:
        """The facts processors need of a model built from ``cfg``: its tokenizer and the image tokens per image.

        A family whose image processor needs more (a tower's image size, mean and std) adds them.
        """
        return {"tokenizer": cfg.tokenizer or cfg.llm_model, "num_image_tokens": cls.image_tokens_of(cfg)}

    # -- forward ------------------------------------------------------------------
    def vision_path_trains(self) -> bool:
        """Whether any parameter between the pixels and the LLM input trains."""
        return any(p.requires_grad for n, p in self.named_parameters() if not n.startswith("llm."))

    def vision_partitioned(self) -> bool:
        """Whether ZeRO-3 partitioned any parameter of the vision path."""
        return any(hasattr(p, "ds_id") for n, p in self.named_parameters() if not n.startswith("llm."))

    def embed(self, samples: dict[str, Any]) -> torch.Tensor:
        """Token embeddings with each image's embeddings in its image-token slots."""
        device = self.llm.get_input_embeddings().weight.device
        input_ids = samples["input_ids"].to(device)
        embeds = self.llm.get_input_embeddings()(input_ids)
        slots = input_ids == self.image_token_id
        image = samples.get("image")
        n_images = 0 if image is None else int(image.shape[0])
        expected = n_images * self.num_image_tokens
        if int(slots.sum()) != expected:
            raise DataError(
                f"batch {samples.get('ids')}: {int(slots.sum())} image tokens in input_ids but {n_images} image(s) "
                f"x {self.num_image_tokens} tokens = {expected}"
            )
        if n_images:
            image_embeds = self.encode_images(samples).to(embeds.dtype)
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), image_embeds.reshape(-1, embeds.shape[-1]))
        elif (torch.is_grad_enabled() and self.vision_path_trains()) or self.vision_partitioned():
            # A text-only batch still runs the vision path, on one blank image
            # with weight zero, so every rank joins the same collectives
            # whatever its batch holds (otherwise a rank without images hangs
            # or aborts the others): under grad, every trainable parameter gets
            # a (zero) gradient for ZeRO's gradient reduction; under ZeRO-3,
            # each module forward also gathers its partitioned parameters, so
            # the ranks must run the same forwards in any grad mode and with
            # any part frozen (validation by loss, an LLM-only or LoRA run).
            embeds = embeds + 0.0 * self.encode_blank(embeds.device).to(embeds.dtype).sum()
        return embeds

    def forward(self, samples: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The supervised-token loss of a batch: padded rows (``attention_mask``) or packed rows.

        A packed batch (``collate_packed``) has ``position_ids`` restarting at
        each sample and ``attention_mask`` None: with no cache, transformers
        then builds the block-diagonal causal mask from the position ids (sdpa,
        eager, flex) or takes the varlen path (flash-attention); any other
        attention gets an explicit 4-D block-diagonal mask.
        """
        device = self.llm.get_input_embeddings().weight.device
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
        loss, n_tokens = supervised_cross_entropy(
            hidden, labels, self.llm.get_output_embeddings(), samples.get("ids"), impl=self.cfg.loss_impl, chunk_bytes=self.cfg.loss_chunk_bytes
        )
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
            context = self.context_of(self.cfg)
            vis_spec = (pre.get("vis_processor") or {}).get("eval") or self.default_vis_processors(self.cfg)["eval"]
            txt_spec = (pre.get("text_processor") or {}).get("eval") or {"name": "qwen_chat"}
            self._chat_processors = (build_processor(vis_spec, context), build_processor(txt_spec, context))
        return self._chat_processors

    def chat_inputs(self, images: list[Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
        """A batch of one: the conversation so far, rendered with an open assistant turn (``chat_sample``, collated)."""
        from lavislite.processors.collate import collate_chat

        return collate_chat([self.chat_sample(images, messages)], pad_token_id=int(self.tokenizer.pad_token_id), padding_side="left")

    def chat_sample(self, images: list[Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
        """One conversation so far, rendered with an open assistant turn, as an uncollated sample.

        ``collate_chat(samples, pad_token_id, padding_side="left")`` batches
        several for ``generate`` (what ``chat_inputs`` does with one).

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
        from lavislite.processors.collate import text_fields
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
        return {"id": "chat", "image": torch.stack(tensors) if tensors else None, **text_fields(enc, labels=False)}

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


def _dotted(obj: Any, key: str) -> Any:
    """``obj.a.b`` for ``key`` ``"a.b"`` (dataclass attributes or dict keys)."""
    for part in key.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part)
    return obj
