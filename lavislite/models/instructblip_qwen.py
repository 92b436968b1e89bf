"""instructblip_qwen: BLIP-2's ViT and Q-Former, the Q-Former also reading the instruction (InstructBLIP).

The Q-Former (transformers' ``InstructBlipQFormerModel``) runs its learned
queries and the instruction's BERT tokens together: self-attention over
``[queries; text]`` (mask: the queries' ones, then the text's), cross-attention
to the image from the queries only, and only the query outputs go on to the
projection, as LAVIS's ``blip2_vicuna_instruct`` does. So the visual tokens the
LLM gets depend on the question. Everything else is blip2_qwen's (a subclass:
the same ViT, ln_vision, queries, projection, loaders) and the shared base's.

The instruction is tokenized in the data loader workers by the chat processor
(the Q-Former tokenizer and ``max_txt_len`` come to it from the model, like the
Qwen tokenizer), one per image: the text of the user turn that introduces the
image (``QwenChatProcessor.image_instructions``). The collater pads them to
``qformer_input_ids`` / ``qformer_attention_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from lavislite.common.errors import DataError
from lavislite.common.registry import registry
from lavislite.models.blip2_qwen import Blip2ExportWriter, Blip2Qwen, Blip2QwenConfig, QFormerConfig
from lavislite.models.checkpoint import BLIP2_FORMATS, WeightFormat, convert_hf_blip2, convert_lavis_blip2, hf_source_key
from lavislite.processors.collate import collate_qformer_text
from lavislite.processors.tokenizers import BUILTIN_BERT, load_qformer_tokenizer


@dataclass
class InstructQFormerConfig(QFormerConfig):
    """BLIP-2's Q-Former plus the instruction input (LAVIS ``blip2_vicuna_instruct``)."""

    # The Q-Former's BERT tokenizer (bert-base-uncased layout, [DEC] as bos: 30,523 ids):
    # builtin:bert-base-uncased (shipped, offline), a local folder or a hub id.
    tokenizer: str = BUILTIN_BERT
    # The instruction's longest token count (LAVIS's max_txt_len); longer ones keep their end.
    max_txt_len: int = 128


@dataclass
class InstructBlipQwenConfig(Blip2QwenConfig):
    """instructblip_qwen's options: blip2_qwen's, an instruction-aware Q-Former, and the ``qformer_text`` part."""

    arch: str = "instructblip_qwen"
    qformer: InstructQFormerConfig = field(default_factory=InstructQFormerConfig)  # type: ignore[assignment]
    # The Q-Former's text embeddings (word and position): a part of their own.
    freeze_qformer_text: bool = True


# The layouts instructblip_qwen reads: LAVIS files (InstructBLIP, BLIP-2 stage 1, whose
# Q-Former has the text branch too) and Hugging Face Blip2 / InstructBlip folders, with the
# Q-Former's text branch loaded; a projection of another LLM's width is set aside.
INSTRUCTBLIP_FORMATS: tuple[WeightFormat, ...] = (
    WeightFormat(
        "lavis_instructblip",
        lambda keys: any(k.startswith(("visual_encoder.", "Qformer.", "ln_vision.", "llm_proj.", "t5_proj.")) for k in keys),
        partial(convert_lavis_blip2, text_branch=True),
        misfit_parts=("proj",),
    ),
    WeightFormat(
        "hf_instructblip",
        # Not qformer.* alone: lavislite's own names start so too.
        lambda keys: any(k.startswith(("vision_model.", "language_projection.")) for k in keys),
        partial(convert_hf_blip2, text_branch=True),
        llm_may_be_foreign=True,
        source_key=hf_source_key,
        misfit_parts=("proj",),
    ),
    *(f for f in BLIP2_FORMATS if f.name == "lavis_vit"),
)


@registry.register_model("instructblip_qwen")
class InstructBlipQwen(Blip2Qwen):
    """InstructBLIP on Qwen: ``encode_image(pixel_values, qformer_input_ids, qformer_attention_mask)``."""

    Config = InstructBlipQwenConfig
    PRETRAINED_MODEL_CONFIG_DICT = {
        "demo": "configs/models/instructblip_qwen/demo.yaml",
        "vicuna7b-qformer_qwen2.5-7b-instruct": "configs/models/instructblip_qwen/vicuna7b-qformer_qwen2.5-7b-instruct.yaml",
        "qwen2.5-1.5b-instruct": "configs/models/instructblip_qwen/qwen2.5-1.5b-instruct.yaml",
    }
    PARTS: ClassVar[dict[str, tuple[str, ...]]] = {
        **Blip2Qwen.PARTS,
        "qformer_text": ("qformer.embeddings.word_embeddings.", "qformer.embeddings.position_embeddings."),
    }
    WEIGHT_FORMATS: ClassVar[tuple[WeightFormat, ...]] = INSTRUCTBLIP_FORMATS

    cfg: InstructBlipQwenConfig

    def build_qformer(self) -> nn.Module:
        """The instruction-aware Q-Former (``InstructBlipQFormerModel``) and its tokenizer."""
        from transformers import InstructBlipQFormerConfig, InstructBlipQFormerModel

        self.qformer_tokenizer = load_qformer_tokenizer(self.cfg.qformer.tokenizer)
        if len(self.qformer_tokenizer) > self.cfg.qformer.vocab_size:
            raise DataError(
                f"model.qformer.vocab_size={self.cfg.qformer.vocab_size} is smaller than the Q-Former tokenizer "
                f"'{self.cfg.qformer.tokenizer}' ({len(self.qformer_tokenizer)} ids)"
            )
        return InstructBlipQFormerModel(InstructBlipQFormerConfig(**self.qformer_kwargs(), pad_token_id=int(self.qformer_tokenizer.pad_token_id)))

    @classmethod
    def context_of(cls, cfg: Any) -> dict[str, Any]:
        """Also the Q-Former tokenizer and ``max_txt_len``: the chat processor tokenizes each image's instruction."""
        return {**super().context_of(cfg), "qformer_tokenizer": cfg.qformer.tokenizer, "qformer_max_len": int(cfg.qformer.max_txt_len)}

    def export_writer(self) -> "InstructBlipExportWriter":
        return InstructBlipExportWriter()

    # -- forward ------------------------------------------------------------------
    def encode_image(  # type: ignore[override]
        self, pixel_values: torch.Tensor, qformer_input_ids: torch.Tensor | None = None, qformer_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(n, 3, H, W) and each image's instruction (n, T) -> the projected query outputs, (n, queries, llm width).

        Args:
            pixel_values: the images.
            qformer_input_ids: each image's instruction in Q-Former tokens (``[CLS] ... [SEP]``, right-padded).
            qformer_attention_mask: 1 on the instruction's tokens (the queries' ones are put in front here).

        Raises:
            DataError: no instruction given, or not one per image.
        """
        if qformer_input_ids is None:
            raise DataError("instructblip_qwen: encode_image needs each image's instruction (qformer_input_ids) beside the pixels")
        image_embeds = self.image_features(pixel_values)
        n = image_embeds.shape[0]
        device = image_embeds.device
        if qformer_input_ids.shape[0] != n:
            raise DataError(f"instructblip_qwen: {n} image(s) but {qformer_input_ids.shape[0]} instruction(s) (qformer_input_ids)")
        qformer_input_ids = qformer_input_ids.to(device)
        text_mask = torch.ones_like(qformer_input_ids) if qformer_attention_mask is None else qformer_attention_mask.to(device)
        query = self.query_tokens.expand(n, -1, -1)
        # Self-attention over [queries; text]: the queries see the instruction and it sees them.
        mask = torch.cat([torch.ones(query.shape[:2], dtype=text_mask.dtype, device=device), text_mask], dim=1)
        out = self.qformer(
            input_ids=qformer_input_ids,
            attention_mask=mask,
            query_embeds=query,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device),
        )
        return self.proj(out.last_hidden_state[:, : query.shape[1]])  # type: ignore[no-any-return]

    def encode_images(self, samples: dict[str, Any]) -> torch.Tensor:
        """The batch's images, each with its own instruction (``qformer_input_ids`` from the collater)."""
        if samples.get("qformer_input_ids") is None:
            raise DataError(
                f"batch {samples.get('ids')}: no qformer_input_ids; the chat processor writes them when it has the "
                "model's Q-Former tokenizer (a qwen_chat text processor built with the model's context)"
            )
        return self.encode_image(samples["image"], samples["qformer_input_ids"], samples.get("qformer_attention_mask"))

    def encode_blank(self, device: torch.device) -> torch.Tensor:
        """A blank image with an empty instruction (``[CLS] [SEP]``), for the ranks' collectives to match."""
        size = self.image_size()
        text = collate_qformer_text([self.qformer_tokenizer("")["input_ids"]])
        return self.encode_image(torch.zeros(1, 3, size, size, device=device), text["qformer_input_ids"], text["qformer_attention_mask"])


class InstructBlipExportWriter(Blip2ExportWriter):
    """instructblip_qwen -> ``InstructBlipForConditionalGeneration`` + ``InstructBlipProcessor`` (its Q-Former tokenizer included).

    The weight names are BLIP-2's (``HF_BLIP2_NAMES``), the Q-Former's text
    embeddings under ``qformer.embeddings.*``. The processor carries the Qwen
    tokenizer with lavislite's chat template (the image tokens in place), the
    Q-Former tokenizer and the image processor; ``num_query_tokens`` is null, so
    it adds no image tokens of its own. The Q-Former reads the question alone:
    ``processor.qformer_tokenizer(question)``, as lavislite's chat processor
    gives it (the README shows the call).
    """

    hf_class = "InstructBlipForConditionalGeneration"

    def config(self, model: Any, text_config: Any) -> Any:
        from transformers import InstructBlipConfig

        return InstructBlipConfig(
            vision_config=model.vision.config.to_dict(),
            qformer_config=model.qformer.config.to_dict(),
            text_config=text_config.to_dict(),
            num_query_tokens=int(model.num_image_tokens),
            image_token_index=int(model.image_token_id),
        )

    def processor(self, model: Any, tokenizer: Any) -> tuple[Any, Any]:
        from transformers import InstructBlipProcessor

        from lavislite.models.blip2_qwen import blip_image_processor

        image_processor = blip_image_processor(model)
        processor = InstructBlipProcessor(image_processor=image_processor, tokenizer=tokenizer, qformer_tokenizer=model.qformer_tokenizer, num_query_tokens=None)
        return processor, image_processor
