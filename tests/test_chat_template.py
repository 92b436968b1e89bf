"""Instruction data pipeline on the real Qwen2.5 tokenizer.

Pins, on real tokenizer output: ChatML rendering (checked against a string
written out by hand and against ``apply_chat_template``), image-token expansion,
label masking (only each assistant reply and its ``<|im_end|>`` carry labels),
padding to the longest sample, error messages that name the sample, truncation
that never cuts an image's tokens, and the demo annotation files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from PIL import Image

from lavislite.datasets import load_dataset
from lavislite.datasets.datasets.instruction_dataset import InstructionDataset, Sample, parse_llava, parse_minigpt4
from lavislite.processors import BlipImageEvalProcessor, QwenChatProcessor
from lavislite.processors.chat_processor import SampleError

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "projects" / "demo" / "data"

NUM_IMAGE_TOKENS = 4
IMAGE_SIZE = 32
IGNORE = -100

IM_START, IM_END, ENDOFTEXT = 151644, 151645, 151643
VISION_START, VISION_END, IMAGE_PAD = 151652, 151653, 151655
ASSISTANT_HEADER = "<|im_start|>assistant\n"
IMAGE_SPAN = "<|vision_start|>" + "<|image_pad|>" * NUM_IMAGE_TOKENS + "<|vision_end|>"
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"

MINIGPT4_PLACEHOLDER = "<Img><ImageHere></Img>"
LLAVA_PLACEHOLDER = "<image>"
IMG = "{img}"  # neutral placeholder in the case table below


@dataclass(frozen=True)
class Case:
    """One conversation: image files and (user text with ``{img}``, reply) turns."""

    id: str
    images: tuple[str, ...]
    turns: tuple[tuple[str, str], ...]


# Replies deliberately include digits, punctuation first, non-ASCII and emoji,
# so label offsets are exercised on multi-byte / multi-token characters.
CASES: tuple[Case, ...] = (
    Case("single", ("red.png",), ((IMG + " What shape is in the image?", "A small red square."),)),
    Case(
        "multi",
        ("green.png",),
        (
            (IMG + " What colour is the shape?", "Green — grün, 绿色 🟩."),
            ("And how many sides does it have?", "3 sides; it's a triangle."),
        ),
    ),
    Case(
        "pair",
        ("blue.png", "yellow.png"),
        (("Image 1: " + IMG + " Image 2: " + IMG + " Do the two images show the same colour?", "No, the first is blue and the second is yellow."),),
    ),
)
CASE_IDS = [c.id for c in CASES]
CASES_BY_ID = {c.id: c for c in CASES}
IMAGE_COLOURS = {"red.png": (220, 20, 20), "green.png": (20, 200, 40), "blue.png": (30, 40, 230), "yellow.png": (240, 220, 10)}
IMAGE_SIZES = {"red.png": (40, 30), "green.png": (17, 23), "blue.png": (64, 64), "yellow.png": (50, 20)}


# -- helpers -----------------------------------------------------------------
def minigpt4_record(case: Case) -> dict[str, Any]:
    """The case as a MiniGPT4Qwen record (strings for one turn, lists for several)."""
    users = [u.replace(IMG, MINIGPT4_PLACEHOLDER) for u, _ in case.turns]
    replies = [r for _, r in case.turns]
    image: str | list[str] = case.images[0] if len(case.images) == 1 else list(case.images)
    if len(case.turns) == 1:
        return {"id": case.id, "image": image, "instruction": users[0], "output": replies[0]}
    return {"id": case.id, "image": image, "instruction": users, "output": replies}


def llava_record(case: Case) -> dict[str, Any]:
    """The case as a LLaVA record (``human``/``gpt`` conversations)."""
    convs: list[dict[str, str]] = []
    for user, reply in case.turns:
        convs += [{"from": "human", "value": user.replace(IMG, LLAVA_PLACEHOLDER)}, {"from": "gpt", "value": reply}]
    image: str | list[str] = case.images[0] if len(case.images) == 1 else list(case.images)
    return {"id": case.id, "image": image, "conversations": convs}


FORMATS: dict[str, tuple[Callable[[Case], dict[str, Any]], Callable[[dict[str, Any], str], Sample], str]] = {
    "minigpt4": (minigpt4_record, parse_minigpt4, MINIGPT4_PLACEHOLDER),
    "llava": (llava_record, parse_llava, LLAVA_PLACEHOLDER),
}


def expected_chatml(case: Case) -> str:
    """The ChatML text, written out by hand."""
    text = SYSTEM
    for user, reply in case.turns:
        text += "<|im_start|>user\n" + user.replace(IMG, IMAGE_SPAN) + "<|im_end|>\n"
        text += "<|im_start|>assistant\n" + reply + "<|im_end|>\n"
    return text


def label_runs(labels: torch.Tensor) -> list[list[int]]:
    """Positions with a label, grouped into contiguous runs."""
    runs: list[list[int]] = []
    for pos in (labels != IGNORE).nonzero().flatten().tolist():
        if runs and runs[-1][-1] == pos - 1:
            runs[-1].append(pos)
        else:
            runs.append([pos])
    return runs


def assert_labels_are_replies(tokenizer: Any, item: dict[str, Any], replies: list[str]) -> None:
    """Each label run is one reply + ``<|im_end|>``, right after an assistant header."""
    ids, labels = item["input_ids"], item["labels"]
    assert ids.shape == labels.shape
    runs = label_runs(labels)
    decoded = [tokenizer.decode(ids[r].tolist()) for r in runs]
    assert decoded == [r + "<|im_end|>" for r in replies]
    assert len(runs) == len(replies)
    header = tokenizer(ASSISTANT_HEADER, add_special_tokens=False).input_ids
    for run in runs:
        assert labels[run].tolist() == ids[run].tolist()
        assert ids[run[0] - len(header) : run[0]].tolist() == header
        assert ids[run[-1]].item() == IM_END


def write_images(folder: Path) -> None:
    for name, colour in IMAGE_COLOURS.items():
        Image.new("RGB", IMAGE_SIZES[name], colour).save(folder / name)


def write_json(path: Path, records: list[dict[str, Any]]) -> str:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return str(path)


def make_processor(max_len: int = 512) -> QwenChatProcessor:
    return QwenChatProcessor.from_config({"max_len": max_len}, context={"tokenizer": "builtin:qwen2.5", "num_image_tokens": NUM_IMAGE_TOKENS})


# -- fixtures ----------------------------------------------------------------
@pytest.fixture(scope="module")
def text_processor() -> QwenChatProcessor:
    return make_processor()


@pytest.fixture(scope="module")
def tokenizer(text_processor: QwenChatProcessor) -> Any:
    return text_processor.tokenizer


@pytest.fixture(scope="module")
def vis_processor() -> BlipImageEvalProcessor:
    return BlipImageEvalProcessor.from_config({"image_size": IMAGE_SIZE})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chat_data")
    write_images(folder)
    return folder


@pytest.fixture(scope="module")
def datasets(data_dir: Path, vis_processor: BlipImageEvalProcessor, text_processor: QwenChatProcessor) -> dict[str, InstructionDataset]:
    """One dataset per format, holding every case in ``CASES`` order."""
    out = {}
    for fmt, (to_record, parse, _) in FORMATS.items():
        path = write_json(data_dir / f"{fmt}.json", [to_record(c) for c in CASES])
        out[fmt] = InstructionDataset(vis_processor, text_processor, vis_root=str(data_dir), ann_paths=[path], parse=parse)
    return out


# -- 1. tokenizer identity -----------------------------------------------------
def test_builtin_tokenizer_is_qwen25(tokenizer: Any) -> None:
    """builtin:qwen2.5 gives Qwen2.5's published ids for text and special tokens."""
    assert tokenizer("Hello world!", add_special_tokens=False).input_ids == [9707, 1879, 0]
    assert tokenizer("Hello world!").input_ids == [9707, 1879, 0]  # no BOS/EOS added
    specials = {
        "<|im_start|>": IM_START,
        "<|im_end|>": IM_END,
        "<|endoftext|>": ENDOFTEXT,
        "<|vision_start|>": VISION_START,
        "<|vision_end|>": VISION_END,
        "<|image_pad|>": IMAGE_PAD,
    }
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in specials} == specials
    # Each special token is one id inside running text, never split into BPE pieces.
    assert tokenizer("a<|image_pad|>b<|im_end|>", add_special_tokens=False).input_ids == [64, IMAGE_PAD, 65, IM_END]
    assert len(tokenizer) == 151665
    assert tokenizer.pad_token_id == ENDOFTEXT
    assert tokenizer.eos_token_id == IM_END


# -- 2. rendering, labels and image tokens per sample --------------------------
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_sample_labels_ids_and_images(fmt: str, index: int, datasets: dict[str, InstructionDataset], tokenizer: Any) -> None:
    """A sample's labels are exactly its replies, its ids are the hand-written ChatML, and each image gets 4 pad tokens."""
    case = CASES[index]
    item = datasets[fmt][index]
    replies = [r for _, r in case.turns]
    assert item["id"] == case.id

    # a. labels: one run per assistant turn, each decoding to reply + <|im_end|>.
    assert_labels_are_replies(tokenizer, item, replies)

    # b. ids: the ChatML text written out by hand, tokenized in one go ...
    text = expected_chatml(case)
    assert item["input_ids"].tolist() == tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(item["input_ids"].tolist()) == text
    # ... which is also what the tokenizer's own chat template renders.
    messages: list[dict[str, str]] = []
    for user, reply in case.turns:
        messages += [{"role": "user", "content": user.replace(IMG, IMAGE_SPAN)}, {"role": "assistant", "content": reply}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == text

    # c. image tokens and tensors.
    n = len(case.images)
    ids = item["input_ids"].tolist()
    assert ids.count(IMAGE_PAD) == n * NUM_IMAGE_TOKENS
    assert ids.count(VISION_START) == n and ids.count(VISION_END) == n
    assert item["image"].shape == (n, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert item["labels"][torch.tensor(ids) == IMAGE_PAD].eq(IGNORE).all()


def test_both_formats_give_identical_samples(datasets: dict[str, InstructionDataset]) -> None:
    """The same conversation in MiniGPT4Qwen and LLaVA form tokenizes to the same ids, labels and images."""
    for i in range(len(CASES)):
        a, b = datasets["minigpt4"][i], datasets["llava"][i]
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["labels"], b["labels"])
        assert torch.equal(a["image"], b["image"])


# -- 3. collation pads to the longest sample -----------------------------------
def test_collater_pads_to_longest(datasets: dict[str, InstructionDataset]) -> None:
    """Batches pad to the longest sample with <|endoftext|>, mask 0 and label -100, and stack images in sample order."""
    ds = datasets["minigpt4"]
    items = [ds[i] for i in range(len(CASES))]
    lengths = [len(it["input_ids"]) for it in items]
    assert len(set(lengths)) == 3, lengths
    batch = ds.collater(items)

    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["labels"].shape == batch["attention_mask"].shape == (3, max(lengths))
    for row, (it, n) in enumerate(zip(items, lengths)):
        assert torch.equal(batch["input_ids"][row, :n], it["input_ids"])
        assert torch.equal(batch["labels"][row, :n], it["labels"])
        assert batch["attention_mask"][row, :n].eq(1).all()
        assert batch["input_ids"][row, n:].eq(ENDOFTEXT).all()
        assert batch["attention_mask"][row, n:].eq(0).all()
        assert batch["labels"][row, n:].eq(IGNORE).all()
    assert (batch["attention_mask"].sum(1)).tolist() == lengths

    counts = [len(c.images) for c in CASES]
    assert batch["num_images"] == counts == [1, 1, 2]
    assert batch["image"].shape == (sum(counts), 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(batch["image"], torch.cat([it["image"] for it in items]))
    assert batch["ids"] == CASE_IDS


# -- 4. errors name the sample ---------------------------------------------------
def test_image_count_mismatch_names_sample(data_dir: Path, vis_processor: BlipImageEvalProcessor, text_processor: QwenChatProcessor) -> None:
    """Two images but one placeholder fails at construction with the sample id (and in the processor itself)."""
    record = {"id": "pair_missing_ph_42", "image": ["red.png", "blue.png"], "instruction": MINIGPT4_PLACEHOLDER + " Compare them.", "output": "Same."}
    path = write_json(data_dir / "bad_count.json", [minigpt4_record(CASES[0]), record])
    with pytest.raises(SampleError, match="pair_missing_ph_42") as err:
        InstructionDataset(vis_processor, text_processor, vis_root=str(data_dir), ann_paths=[path], parse=parse_minigpt4)
    assert "1 image placeholder(s) in the text but 2 image(s)" in str(err.value)

    turns = [{"role": "user", "content": LLAVA_PLACEHOLDER + "\nCompare."}, {"role": "assistant", "content": "Same."}]
    with pytest.raises(SampleError, match="llava_sample_9"):
        text_processor(turns, num_images=2, sample_id="llava_sample_9")


def test_minigpt4_unequal_turn_lists_name_file(data_dir: Path, vis_processor: BlipImageEvalProcessor, text_processor: QwenChatProcessor) -> None:
    """instruction/output lists of unequal length fail with the file path and index."""
    record = {"id": "uneven_7", "image": "red.png", "instruction": [MINIGPT4_PLACEHOLDER + " Q1?", "Q2?"], "output": ["A1."]}
    path = write_json(data_dir / "bad_uneven.json", [minigpt4_record(CASES[0]), record])
    with pytest.raises(SampleError) as err:
        InstructionDataset(vis_processor, text_processor, vis_root=str(data_dir), ann_paths=[path], parse=parse_minigpt4)
    message = str(err.value)
    assert f"{path}[1]" in message
    assert "uneven_7" in message
    assert "'instruction' has 2 turn(s) but 'output' has 1" in message


def test_llava_non_alternating_turns_name_id(data_dir: Path, vis_processor: BlipImageEvalProcessor, text_processor: QwenChatProcessor) -> None:
    """A LLaVA conversation with two human turns in a row fails with its id (at build time or, at the latest, on access)."""
    record = {
        "id": "llava_bad_turns_3",
        "image": "red.png",
        "conversations": [
            {"from": "human", "value": LLAVA_PLACEHOLDER + "\nWhat is it?"},
            {"from": "human", "value": "Answer please."},
            {"from": "gpt", "value": "A square."},
        ],
    }
    path = write_json(data_dir / "bad_turns.json", [record])
    with pytest.raises(SampleError, match="llava_bad_turns_3") as err:
        ds = InstructionDataset(vis_processor, text_processor, vis_root=str(data_dir), ann_paths=[path], parse=parse_llava)
        ds[0]
    assert "turn 1 is 'user', expected 'assistant'" in str(err.value)


# -- 5. truncation keeps image spans whole --------------------------------------
def test_truncation_never_cuts_image_tokens(data_dir: Path, vis_processor: BlipImageEvalProcessor, datasets: dict[str, InstructionDataset]) -> None:
    """A max_len falling anywhere inside the second image's span drops that whole span and its image."""
    pair = CASES_BY_ID["pair"]
    full = datasets["minigpt4"][CASE_IDS.index("pair")]["input_ids"].tolist()
    second_start = [i for i, t in enumerate(full) if t == VISION_START][1]
    span_len = NUM_IMAGE_TOKENS + 2
    path = write_json(data_dir / "trunc.json", [minigpt4_record(pair)])

    for max_len in range(second_start + 1, second_start + span_len):  # every cut strictly inside the span
        ds = InstructionDataset(vis_processor, make_processor(max_len), vis_root=str(data_dir), ann_paths=[path], parse=parse_minigpt4)
        item = ds[0]
        ids = item["input_ids"].tolist()
        assert len(ids) <= max_len
        assert ids == full[:second_start], max_len
        assert (ids.count(VISION_START), ids.count(IMAGE_PAD), ids.count(VISION_END)) == (1, NUM_IMAGE_TOKENS, 1)
        first = ids.index(VISION_START)
        assert ids[first : first + span_len] == [VISION_START] + [IMAGE_PAD] * NUM_IMAGE_TOKENS + [VISION_END]
        assert item["image"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert torch.equal(item["image"][0], datasets["minigpt4"][CASE_IDS.index("pair")]["image"][0])
        assert item["labels"].tolist() == [IGNORE] * len(ids)

    # A cut just after the span keeps both images.
    ds = InstructionDataset(vis_processor, make_processor(second_start + span_len), vis_root=str(data_dir), ann_paths=[path], parse=parse_minigpt4)
    item = ds[0]
    assert item["input_ids"].tolist() == full[: second_start + span_len]
    assert item["image"].shape[0] == 2



# -- 6. the demo annotation files through the builders --------------------------
def _demo_replies(fmt: str, record: dict[str, Any]) -> list[str]:
    if fmt == "minigpt4_instruction":
        out = record["output"]
        return list(out) if isinstance(out, list) else [out]
    return [t["value"] for t in record["conversations"] if t["from"] == "gpt"]


def _demo_images(record: dict[str, Any]) -> int:
    image = record["image"]
    return len(image) if isinstance(image, list) else 1


@pytest.mark.parametrize(("name", "file"), [("minigpt4_instruction", "minigpt4_instruction.json"), ("llava_instruction", "llava_instruction.json")])
def test_demo_files_label_the_replies(name: str, file: str, tokenizer: Any) -> None:
    """Every demo sample, built through load_dataset, labels exactly its JSON replies."""
    ann = DEMO_DATA / file
    records = json.loads(ann.read_text(encoding="utf-8"))
    overrides = {
        "build_info": {"annotations": {"train": {"storage": str(ann)}}, "images": {"storage": str(DEMO_DATA / "images")}},
        "vis_processor": {"train": {"name": "blip2_image_train", "image_size": IMAGE_SIZE}},
        "text_processor": {"train": {"name": "qwen_chat", "max_len": 512}},
    }
    splits = load_dataset(name, overrides=overrides, context={"tokenizer": "builtin:qwen2.5", "num_image_tokens": NUM_IMAGE_TOKENS})
    assert list(splits) == ["train"]
    ds = splits["train"]
    assert len(ds) == len(records) > 0
    for i, record in enumerate(records):
        item = ds[i]
        assert item["id"] == record["id"]
        assert_labels_are_replies(tokenizer, item, _demo_replies(name, record))
        n = _demo_images(record)
        assert item["input_ids"].tolist().count(IMAGE_PAD) == n * NUM_IMAGE_TOKENS
        assert item["image"].shape == (n, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_malformed_conversations_fail_when_the_dataset_is_built(tmp_path: Path) -> None:
    """Turn order, replies and stray image tokens are checked at start-up, naming id and file."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    cases = {
        "twice_human": [{"from": "human", "value": "<image>\nQ"}, {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A"}],
        "no_reply": [{"from": "human", "value": "<image>\nQ"}],
        "image_in_reply": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A <image>"}],
    }
    text = QwenChatProcessor.from_config({"max_len": 512}, context={"tokenizer": "builtin:qwen2.5", "num_image_tokens": 4})
    vis = BlipImageEvalProcessor.from_config({"image_size": 32})
    for sid, convs in cases.items():
        path = tmp_path / f"{sid}.json"
        path.write_text(json.dumps([{"id": sid, "image": "a.png", "conversations": convs}]))
        with pytest.raises(SampleError, match=rf"^{re.escape(str(path))}\[0\] \(id={sid}\): "):
            InstructionDataset(vis, text, str(tmp_path), [str(path)], parse_llava)
    with pytest.raises(SampleError, match=r"sample lit: 1 <\|image_pad\|> tokens but 0 image\(s\)"):
        text([{"role": "user", "content": "what is <|image_pad|>?"}, {"role": "assistant", "content": "x"}], num_images=0, sample_id="lit")


def test_missing_annotation_file_names_split_path_and_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"datasets.llava_instruction.build_info.annotations.train: .*missing.json not found \(download it from https://example.org/a.json\)"):
        load_dataset(
            "llava_instruction",
            overrides={"build_info": {"annotations": {"train": {"storage": str(tmp_path / "missing.json"), "url": "https://example.org/a.json"}}, "images": {"storage": str(tmp_path)}}},
            context={"tokenizer": "builtin:qwen2.5", "num_image_tokens": 4},
        )
