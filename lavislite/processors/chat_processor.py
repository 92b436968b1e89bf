"""Qwen ChatML rendering, image-token expansion and label masking for one sample.

Runs inside the data-loader workers so the GPU receives ready tensors. A
conversation is rendered to the ChatML string once and tokenized once (so the
ids are exactly what the tokenizer gives for that string); labels come from the
character spans of the assistant replies through the tokenizer's offsets.

The rendering is the one chat template of lavislite
(``lavislite.processors.tokenizers.chatml_template``): message text goes in
exactly as given, as in Qwen2.5's published template, so the ids trained on are
the ids ``tokenizer.apply_chat_template`` gives at inference. Cleaning
annotation text (stripping) belongs to the annotation parsers, not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from omegaconf import DictConfig, OmegaConf

from lavislite.common.registry import registry
from lavislite.common.errors import DataError
from lavislite.common.logger import logger
from lavislite.common.schema import validate
from lavislite.processors.base_processor import BaseProcessor
from lavislite.processors.tokenizers import DEFAULT_SYSTEM_MESSAGE, IMAGE_END, IMAGE_START, IMAGE_TOKEN, load_qformer_tokenizer, load_tokenizer

IGNORE_INDEX = -100

# A message's content: a string (image placeholders such as "<image>" mark the
# images), or transformers' multimodal list of parts
# (``[{"type": "image"}, {"type": "text", "text": "..."}]``).
Content = Union[str, list[dict[str, Any]]]


class SampleError(DataError):
    """A sample is malformed; the message names the sample id."""


@dataclass
class ChatConfig:
    # Empty / 0 means "take it from the model" (the task passes the model's
    # tokenizer and query count as context), so a dataset config never repeats them.
    tokenizer: str = ""
    num_image_tokens: int = 0
    max_len: int = 512
    # A training sample longer than max_len is cut at the end (cut); a reply
    # that loses tokens to the cut (its <|im_end|> with them) is counted either
    # way (truncated_replies in metrics.jsonl). drop_sample leaves such a sample
    # out as a bad sample instead (reason in bad_samples.jsonl), whatever the
    # dataset's on_bad_sample.
    truncation: Literal["cut", "drop_sample"] = "cut"
    system_message: str = DEFAULT_SYSTEM_MESSAGE
    # Longest first: MiniGPT4Qwen writes "<Img><ImageHere></Img>", LLaVA "<image>".
    image_placeholders: list[str] = field(default_factory=lambda: ["<Img><ImageHere></Img>", "<ImageHere>", "<image>"])
    image_start: str = IMAGE_START
    image_token: str = IMAGE_TOKEN
    image_end: str = IMAGE_END
    # InstructBLIP (from the model, like tokenizer): each image's Q-Former also reads an
    # instruction, tokenized here with the Q-Former's tokenizer up to qformer_max_len
    # tokens (LAVIS's max_txt_len). "" = no Q-Former text.
    qformer_tokenizer: str = ""
    qformer_max_len: int = 128


@registry.register_processor("qwen_chat")
class QwenChatProcessor(BaseProcessor):
    """Turns ``[{"role", "content"}, ...]`` plus an image count into ``input_ids``/``labels``.

    Labels are ``-100`` everywhere except each assistant reply and the
    ``<|im_end|>`` that closes it. Each image, given by a placeholder in string
    content or by a ``{"type": "image"}`` part in list content, becomes
    ``image_start + image_token * num_image_tokens + image_end``.
    """

    Config = ChatConfig

    def __init__(self, cfg: ChatConfig) -> None:
        super().__init__(cfg)
        if not cfg.tokenizer:
            raise ValueError("qwen_chat: no tokenizer given and none came from the model config")
        if cfg.num_image_tokens <= 0:
            raise ValueError("qwen_chat: num_image_tokens must be > 0 (normally the model's query count)")
        self.tokenizer = load_tokenizer(cfg.tokenizer)
        self.image_token_id = int(self.tokenizer.convert_tokens_to_ids(cfg.image_token))
        self.image_start_id = int(self.tokenizer.convert_tokens_to_ids(cfg.image_start))
        self.image_span = cfg.image_start + cfg.image_token * cfg.num_image_tokens + cfg.image_end
        self.qformer_tokenizer = load_qformer_tokenizer(cfg.qformer_tokenizer) if cfg.qformer_tokenizer else None
        placeholders = sorted(cfg.image_placeholders, key=len, reverse=True)
        self._placeholder_re = re.compile("|".join(re.escape(p) for p in placeholders))

    @classmethod
    def from_config(
        cls, cfg: DictConfig | dict[str, Any] | None = None, context: dict[str, Any] | None = None
    ) -> "QwenChatProcessor":
        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
        data.pop("name", None)
        context = context or {}
        if not data.get("tokenizer") and context.get("tokenizer"):
            data["tokenizer"] = context["tokenizer"]
        for key in ("num_image_tokens", "qformer_tokenizer", "qformer_max_len"):
            if not data.get(key) and context.get(key):
                data[key] = context[key]
        return cls(ChatConfig(**validate(ChatConfig, data, "qwen_chat")))

    # -- rendering -----------------------------------------------------------
    def count_placeholders(self, text: str) -> int:
        """How many image placeholders (``<image>``, ``<ImageHere>``, ...) a string holds."""
        return len(self._placeholder_re.findall(text))

    def count_images(self, content: Content | None) -> int:
        """How many images one message's content holds (placeholders, or image parts)."""
        if isinstance(content, str):
            return self.count_placeholders(content)
        if isinstance(content, list):
            return sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image")
        return 0

    def render_content(self, content: Content, where: str, images: bool) -> str:
        """One message's text with each image's span in place; text itself is never changed.

        Args:
            content: a string (placeholders become image spans) or a list of
                ``{"type": "text", "text"}`` / ``{"type": "image"}`` parts (only
                image parts become spans; text parts go in as they are, as in the template).
            where: names the sample and turn in error messages.
            images: whether this turn may hold images (only user turns may).

        Raises:
            SampleError: an image where none may be, an unknown part, or no text.
        """
        if isinstance(content, str):
            if not images:
                if self.count_placeholders(content):
                    raise SampleError(f"{where} contains an image placeholder")
                return content
            return self._placeholder_re.sub(self.image_span, content)
        if not isinstance(content, list):
            raise SampleError(f"{where} has no text content")
        pieces: list[str] = []
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            elif kind == "image":
                if not images:
                    raise SampleError(f"{where} contains an image part")
                pieces.append(self.image_span)
            else:
                raise SampleError(f"{where}: part {k} must be {{'type': 'text', 'text': str}} or {{'type': 'image'}}, got {part!r}")
        return "".join(pieces)

    def render(
        self, turns: list[dict[str, Any]], sample_id: str = "?", add_generation_prompt: bool = False
    ) -> tuple[str, list[tuple[int, int]]]:
        """Renders ChatML with image spans in place, text exactly as given.

        Gives the string ``chatml_template(num_image_tokens, system_message)``
        renders for the same messages (list content with image parts), so
        training and ``apply_chat_template`` at inference agree to the id.

        Returns:
            The text and the character spans ``(start, end)`` that carry labels
            (each assistant reply plus its ``<|im_end|>``).
        """
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        pos = 0

        def add(text: str, label: bool = False) -> None:
            nonlocal pos
            if label:
                spans.append((pos, pos + len(text)))
            parts.append(text)
            pos += len(text)

        if not turns or turns[0].get("role") != "system":
            add(f"<|im_start|>system\n{self.cfg.system_message}<|im_end|>\n")
        expected = "user"
        for i, turn in enumerate(turns):
            role, content = turn.get("role"), turn.get("content")
            where = f"sample {sample_id}: turn {i} ({role})"
            if role == "system" and i == 0:
                add(f"<|im_start|>system\n{self.render_content(content, where, images=False)}<|im_end|>\n")
                continue
            if role != expected:
                raise SampleError(f"sample {sample_id}: turn {i} is '{role}', expected '{expected}' (turns must alternate user/assistant)")
            if role == "user":
                add(f"<|im_start|>user\n{self.render_content(content, where, images=True)}<|im_end|>\n")
                expected = "assistant"
            else:
                text = self.render_content(content, where, images=False)
                add("<|im_start|>assistant\n")
                add(text + "<|im_end|>", label=True)
                add("\n")
                expected = "user"
        if add_generation_prompt:
            add("<|im_start|>assistant\n")
        return "".join(parts), spans

    def __call__(  # type: ignore[override]
        self, turns: list[dict[str, Any]], num_images: int, sample_id: str = "?", add_generation_prompt: bool = False
    ) -> dict[str, Any]:
        """Tokenizes one conversation.

        Training data (``add_generation_prompt=False``) longer than ``max_len``
        is cut at the end (``truncate``), never through an image. A prompt for
        generation is never cut at the end: that would lose the newest question
        and the open assistant turn the reply starts from. Its oldest turns are
        dropped instead (``fit_prompt``), with their images.

        Args:
            turns: ``[{"role": "user"|"assistant"|"system", "content": str | list of parts}, ...]``
                (OpenAI / transformers message form; images as placeholders in
                strings or as ``{"type": "image"}`` parts).
            num_images: how many images the sample carries (must match its placeholders).
            sample_id: used in error messages.
            add_generation_prompt: end with an open assistant turn (for generation).

        Returns:
            ``{"input_ids": list[int], "labels": list[int], "num_images": int, "first_image": int,
            "truncated_reply": bool}``: ``truncated_reply`` says the cut at ``max_len`` removed
            supervised tokens (a reply cut, its ``<|im_end|>`` lost, or a whole later reply); the images that kept their tokens are ``images[first_image : first_image + num_images]``
            (``kept_images`` picks them): a cut end drops the last images, dropped
            oldest turns the first ones. With a Q-Former tokenizer (InstructBLIP) also
            ``qformer_input_ids``: one id list per kept image (``image_instructions``).

        Raises:
            SampleError: placeholders do not match ``num_images``, the turns are
                malformed, or a generation prompt does not fit ``max_len`` even
                with every droppable turn dropped.
        """
        found = sum(self.count_images(t.get("content")) for t in turns if t.get("role") == "user")
        if found != num_images:
            raise SampleError(f"sample {sample_id}: {found} image placeholder(s) in the text but {num_images} image(s)")
        if add_generation_prompt:
            out = self.fit_prompt(turns, num_images, sample_id)
        else:
            ids, labels = self.encode(turns, num_images, sample_id, add_generation_prompt=False)
            full_labels = labels
            ids, labels, kept = self.truncate(ids, labels, num_images)
            # Supervised tokens past the cut: a reply that lost its end (<|im_end|>), so it would be learnt as never ending.
            truncated_reply = any(t != IGNORE_INDEX for t in full_labels[len(labels) :])
            out = {"input_ids": ids, "labels": labels, "num_images": kept, "first_image": 0, "truncated_reply": truncated_reply}
        if self.qformer_tokenizer is not None:
            first = int(out["first_image"])
            instructions = self.image_instructions(turns)[first : first + int(out["num_images"])]
            out["qformer_input_ids"] = self.tokenize_instructions(instructions)
        return out

    def image_instructions(self, turns: list[dict[str, Any]]) -> list[str]:
        """The instruction each image's Q-Former reads (InstructBLIP), in image order.

        An image's instruction is the text of the user turn that introduces it,
        its image placeholders taken out: for a single-turn sample the question
        (as LAVIS gives the Q-Former the prompt); for a follow-up turn about the
        same image, still the turn that brought the image, so a conversation's
        image tokens are the same in every turn (training and chat alike); an
        image introduced in a later turn reads that turn.
        """
        out: list[str] = []
        for turn in turns:
            if turn.get("role") != "user":
                continue
            content = turn.get("content")
            n = self.count_images(content)
            if not n:
                continue
            if isinstance(content, str):
                text = self._placeholder_re.sub(" ", content)
            else:
                text = " ".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
            out.extend([" ".join(text.split())] * n)
        return out

    def tokenize_instructions(self, instructions: list[str]) -> list[list[int]]:
        """Q-Former token ids of each instruction (``[CLS] ... [SEP]``, cut from the left past ``qformer_max_len``)."""
        if not instructions:
            return []
        assert self.qformer_tokenizer is not None
        enc = self.qformer_tokenizer(instructions, truncation=True, max_length=self.cfg.qformer_max_len)
        return [list(ids) for ids in enc["input_ids"]]

    def encode(self, turns: list[dict[str, Any]], num_images: int, sample_id: str, add_generation_prompt: bool) -> tuple[list[int], list[int]]:
        """Renders and tokenizes a whole conversation: ``(input_ids, labels)``, nothing cut.

        Raises:
            SampleError: malformed turns, or image tokens that do not match ``num_images``.
        """
        text, spans = self.render(turns, sample_id, add_generation_prompt)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = enc["input_ids"]
        labels = [IGNORE_INDEX] * len(ids)
        span_i = 0
        for k, (start, _end) in enumerate(enc["offset_mapping"]):
            while span_i < len(spans) and start >= spans[span_i][1]:
                span_i += 1
            if span_i < len(spans) and spans[span_i][0] <= start < spans[span_i][1]:
                labels[k] = ids[k]
        n_image_tokens = ids.count(self.image_token_id)
        if n_image_tokens != num_images * self.cfg.num_image_tokens:
            # e.g. a literal "<|image_pad|>" typed into the text
            raise SampleError(
                f"sample {sample_id}: {n_image_tokens} {self.cfg.image_token} tokens but {num_images} image(s) x "
                f"{self.cfg.num_image_tokens}; the text must not contain {self.cfg.image_token} itself"
            )
        return ids, labels

    def fit_prompt(self, turns: list[dict[str, Any]], num_images: int, sample_id: str = "?") -> dict[str, Any]:
        """A generation prompt within ``max_len``: the oldest turns dropped when it is longer.

        The system message and the last user turn (with its images) always
        stay, and so does the open assistant turn after it; whole turns go,
        oldest first, starting each time at a user turn so the conversation
        still alternates user / assistant. The first time a processor drops
        turns it logs a warning (a chat would otherwise repeat it every turn).

        Returns:
            As ``__call__``; ``first_image`` counts the images of the dropped turns.

        Raises:
            SampleError: naming the prompt's length and ``max_len`` when even the
                system message plus the last user turn do not fit.
        """
        max_len = self.cfg.max_len
        ids, labels = self.encode(turns, num_images, sample_id, add_generation_prompt=True)
        if len(ids) <= max_len:
            return {"input_ids": ids, "labels": labels, "num_images": num_images, "first_image": 0}
        head = 1 if turns and turns[0].get("role") == "system" else 0
        # Where a shortened conversation may start: each later user turn.
        starts = [i for i in range(head + 1, len(turns)) if turns[i].get("role") == "user"]
        full_len = len(ids)
        for start in starts:
            kept_turns = [*turns[:head], *turns[start:]]
            dropped = sum(self.count_images(t.get("content")) for t in turns[head:start] if t.get("role") == "user")
            ids, labels = self.encode(kept_turns, num_images - dropped, sample_id, add_generation_prompt=True)
            if len(ids) <= max_len:
                message = (
                    "sample %s: the prompt has %d tokens, over max_len %d: dropped its %d oldest turn(s) and %d image(s), "
                    "kept the system message and the last %d turn(s) (%d tokens)"
                )
                args = (sample_id, full_len, max_len, start - head, dropped, len(turns) - start, len(ids))
                if not getattr(self, "_dropped_logged", False):
                    self._dropped_logged = True
                    logger.warning(message + "; said once, later prompts are shortened the same way", *args)
                else:
                    logger.debug(message, *args)
                return {"input_ids": ids, "labels": labels, "num_images": num_images - dropped, "first_image": dropped}
        last = starts[-1] if starts else head
        shortest = len(ids)
        raise SampleError(
            f"sample {sample_id}: the prompt has {shortest} tokens with only the system message and the last user turn "
            f"(turn {last}) left ({full_len} in all), over max_len {max_len}: nothing more can be dropped; "
            f"shorten the message, send fewer images, or raise the text processor's max_len"
        )

    def truncate(self, ids: list[int], labels: list[int], num_images: int) -> tuple[list[int], list[int], int]:
        """Cuts to ``max_len`` without cutting through an image's tokens.

        If the cut would fall inside an image span, it moves to just before that
        span; images whose spans are cut away are dropped (the returned count).
        """
        max_len = self.cfg.max_len
        if len(ids) <= max_len:
            return ids, labels, num_images
        cut = max_len
        starts = [i for i, t in enumerate(ids) if t == self.image_start_id]
        span_len = self.cfg.num_image_tokens + 2
        kept = 0
        for s in starts:
            if s + span_len <= cut:
                kept += 1
            else:
                cut = min(cut, s)
                break
        return ids[:cut], labels[:cut], kept


def kept_images(images: list[Any], encoded: dict[str, Any]) -> list[Any]:
    """The images of a conversation that kept their tokens in ``encoded`` (a chat processor's output).

    A cut end (training data) drops the last images; dropped oldest turns (a
    generation prompt) drop the first ones.
    """
    first = int(encoded.get("first_image", 0))
    return list(images[first : first + int(encoded["num_images"])])
