"""One chat template: lavislite's chat processor, the exported tokenizer and Qwen2.5's own template agree.

Pins, on the real Qwen2.5 tokenizer:

* the tokenizer an export carries (saved and loaded back with plain
  ``AutoTokenizer``) renders every conversation below, with and without a
  generation prompt, to exactly the ids lavislite's ``qwen_chat`` processor
  trains on, image parts included;
* for text-only conversations both equal the published Qwen2.5-Instruct
  template (written out below as the reference), which inserts each message's
  content as is: whitespace and newlines inside turns are kept, not stripped;
* supervised labels are each reply + ``<|im_end|>``;
* the string form with ``<image>`` / ``<ImageHere>`` placeholders (lavislite's
  annotation form) gives the same ids as the list-of-parts form.
"""

from __future__ import annotations

from typing import Any

import pytest

from lavislite.models.hf_export import export_tokenizer
from lavislite.processors import QwenChatProcessor
from lavislite.processors.tokenizers import CHATML_TEMPLATE, DEFAULT_SYSTEM_MESSAGE

N = 5  # query tokens per image
IGNORE = -100
IM_END, IMAGE_PAD, VISION_START, VISION_END = 151645, 151655, 151652, 151653

# Qwen2.5-Instruct's published chat template (tokenizer_config.json of
# Qwen/Qwen2.5-7B-Instruct), verbatim. Without tools it inserts message content as is.
QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def user(*parts: Any) -> dict[str, Any]:
    """A user message; str parts are text, None is an image."""
    if len(parts) == 1 and isinstance(parts[0], str):
        return {"role": "user", "content": parts[0]}
    return {"role": "user", "content": [{"type": "image"} if p is None else {"type": "text", "text": p} for p in parts]}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


# Conversations ending with a reply (rendered without, then with a generation
# prompt after one more user turn) and their image counts. Replies avoid a
# leading newline (see test_reply_with_a_leading_newline).
CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "single": [user("What colour is the sky?"), assistant("Blue.")],
    "multi": [user("Hi!"), assistant("Hello, how can I help?"), user("Count to three."), assistant("1, 2, 3.")],
    "system": [system("You answer in one word."), user("Capital of France?"), assistant("Paris")],
    "unicode": [user("Grüß dich — 你好 🟩, ça va ?"), assistant("Très bien, 谢谢! 🎉 ∑x²")],
    "whitespace": [
        system("  Be terse.\n"),
        user("  leading spaces, trailing newline\n"),
        assistant("Kept as is.\n\n"),
        user("\n\nnewlines first\tand\ttabs  \n  "),
        assistant("  two spaces first, a newline inside\nand at the end\n"),
    ],
    "image": [user(None, " What shape is this?"), assistant("A red square.")],
    "image_middle_two": [user("First ", None, " then\n", None, "\nSame colour?"), assistant("No.")],
    "image_multi_turn": [user(None, "Describe it."), assistant("A circle."), user("And this one? ", None), assistant("A star.\n")],
}
TEXT_ONLY = [k for k, conv in CONVERSATIONS.items() if all(isinstance(m["content"], str) for m in conv)]


def n_images(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image")


def replies(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


@pytest.fixture(scope="module")
def processor() -> QwenChatProcessor:
    return QwenChatProcessor.from_config({"max_len": 4096}, context={"tokenizer": "builtin:qwen2.5", "num_image_tokens": N})


@pytest.fixture(scope="module")
def exported(processor: QwenChatProcessor, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tokenizer as an export writes it, loaded back with plain AutoTokenizer."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("exported_tokenizer")
    export_tokenizer(processor.tokenizer, N, DEFAULT_SYSTEM_MESSAGE).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def hf_ids(tokenizer: Any, messages: list[dict[str, Any]], generation: bool, **kwargs: Any) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True, **kwargs)["input_ids"])


def cases() -> list[tuple[str, bool]]:
    return [(name, gen) for name in CONVERSATIONS for gen in (False, True)]


def conversation(name: str, generation: bool) -> list[dict[str, Any]]:
    """The conversation; for a generation prompt it ends with an open user turn instead of its last reply."""
    conv = CONVERSATIONS[name]
    return conv[:-1] if generation else conv


@pytest.mark.parametrize(("name", "generation"), cases(), ids=[f"{n}-{'gen' if g else 'train'}" for n, g in cases()])
def test_exported_template_gives_the_ids_lavislite_trains_on(name: str, generation: bool, processor: QwenChatProcessor, exported: Any) -> None:
    messages = conversation(name, generation)
    ours = processor(messages, num_images=n_images(messages), sample_id=name, add_generation_prompt=generation)
    theirs = hf_ids(exported, messages, generation)
    assert ours["input_ids"] == theirs
    # Each image is one span of N pad tokens between vision start/end, and never supervised.
    assert theirs.count(IMAGE_PAD) == N * n_images(messages)
    assert theirs.count(VISION_START) == theirs.count(VISION_END) == n_images(messages)
    assert all(lab == IGNORE for i, lab in zip(ours["input_ids"], ours["labels"]) if i == IMAGE_PAD)
    # The builtin tokenizer's template (N passed at call time) renders the same.
    assert hf_ids(processor.tokenizer, messages, generation, num_image_tokens=N) == theirs


@pytest.mark.parametrize("name", TEXT_ONLY)
@pytest.mark.parametrize("generation", [False, True], ids=["train", "gen"])
def test_text_only_equals_qwen25_published_template(name: str, generation: bool, processor: QwenChatProcessor, exported: Any) -> None:
    """Same string, same ids as Qwen2.5's template; content (spaces, newlines, tabs) is not stripped.

    Qwen2.5's default system message names Qwen; lavislite's (that of
    Qwen2-Instruct and MiniGPT4Qwen) does not. Without a system message the
    reference therefore gets lavislite's default given explicitly: every other
    character must match.
    """
    messages = conversation(name, generation)
    reference_messages = messages if messages[0]["role"] == "system" else [system(DEFAULT_SYSTEM_MESSAGE), *messages]
    reference = exported.apply_chat_template(reference_messages, chat_template=QWEN25_TEMPLATE, add_generation_prompt=generation, tokenize=False)
    ours_text, _ = processor.render(messages, name, add_generation_prompt=generation)
    assert exported.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False) == reference
    assert ours_text == reference
    assert processor(messages, num_images=0, add_generation_prompt=generation)["input_ids"] == exported(reference, add_special_tokens=False)["input_ids"]
    for m in messages:  # nothing was stripped
        assert m["content"] in reference


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_labels_are_each_reply_and_im_end(name: str, processor: QwenChatProcessor) -> None:
    messages = CONVERSATIONS[name]
    item = processor(messages, num_images=n_images(messages), sample_id=name)
    runs: list[list[int]] = []
    for pos, (tok, lab) in enumerate(zip(item["input_ids"], item["labels"])):
        if lab == IGNORE:
            continue
        assert lab == tok
        if runs and runs[-1][-1] == pos - 1:
            runs[-1].append(pos)
        else:
            runs.append([pos])
    decoded = [processor.tokenizer.decode([item["input_ids"][p] for p in run]) for run in runs]
    assert decoded == [r + "<|im_end|>" for r in replies(messages)]


def test_reply_with_a_leading_newline(processor: QwenChatProcessor, exported: Any) -> None:
    """A reply that starts with a newline shares one BPE token with the header's newline.

    Qwen's pre-tokenizer joins "assistant\\n" + "\\nreply" into ``\\n\\n``; that
    token starts in the header, so it carries no label. The ids still equal
    ``apply_chat_template``'s; the annotation parsers strip replies, so
    training data never has this case.
    """
    messages = [user("Q?"), assistant("\nA.")]
    item = processor(messages, num_images=0)
    assert item["input_ids"] == hf_ids(exported, messages, False)
    supervised = [t for t, lab in zip(item["input_ids"], item["labels"]) if lab != IGNORE]
    assert processor.tokenizer.decode(supervised) == "A.<|im_end|>"


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("<image>\nWhat is it?", [None, "\nWhat is it?"]),
        ("<Img><ImageHere></Img> Describe.", [None, " Describe."]),
        ("Left <ImageHere> right <image>", ["Left ", None, " right ", None]),
    ],
)
def test_placeholder_strings_equal_image_parts(text: str, parts: list[Any], processor: QwenChatProcessor, exported: Any) -> None:
    """lavislite's annotation form (placeholders in a string) and the transformers form give one id sequence."""
    as_string = [user(text), assistant("Ok.")]
    as_parts = [user(*parts), assistant("Ok.")]
    k = sum(p is None for p in parts)
    a = processor(as_string, num_images=k)
    b = processor(as_parts, num_images=k)
    assert a["input_ids"] == b["input_ids"] == hf_ids(exported, as_parts, False)
    assert a["labels"] == b["labels"]


def test_template_errors_and_images_only_in_user_turns(processor: QwenChatProcessor, exported: Any) -> None:
    from jinja2 import TemplateError

    from lavislite.processors.chat_processor import SampleError

    with pytest.raises(TemplateError, match="num_image_tokens"):
        processor.tokenizer.apply_chat_template([user(None, "x")], tokenize=False, chat_template=CHATML_TEMPLATE)
    with pytest.raises(TemplateError, match="unsupported content part type: video"):
        exported.apply_chat_template([{"role": "user", "content": [{"type": "video"}]}], tokenize=False)
    with pytest.raises(SampleError, match=r"sample s1: turn 1 \(assistant\) contains an image part"):
        processor([user("Q"), {"role": "assistant", "content": [{"type": "image"}]}], num_images=0, sample_id="s1")
    with pytest.raises(SampleError, match="sample s2: 1 image placeholder"):
        processor([user(None, "Q"), assistant("A")], num_images=2, sample_id="s2")


def test_system_message_is_escaped_into_the_template(processor: QwenChatProcessor) -> None:
    """A configured default system message with quotes, backslashes, newlines and emoji survives the Jinja literal."""
    odd = "It's a \\ test\nwith \"quotes\" and 🟩"
    tok = export_tokenizer(processor.tokenizer, N, odd)
    text = tok.apply_chat_template([user("Hi")], tokenize=False)
    assert text == f"<|im_start|>system\n{odd}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    custom = QwenChatProcessor.from_config({"system_message": odd}, context={"tokenizer": "builtin:qwen2.5", "num_image_tokens": N})
    assert custom.render([user("Hi")])[0] == text
