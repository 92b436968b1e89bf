"""Annotation files as they are published: repeated ids in training data, unique ids where results are keyed.

Real files written by the tests (LLaVA conversations, VQAv2 questions) on the
demo images, read by the built-in builders through ``load_dataset``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from lavislite.common.logger import logger
from lavislite.datasets import load_dataset
from lavislite.datasets.datasets.instruction_dataset import Sample, make_ids_unique
from lavislite.processors.chat_processor import SampleError

DEMO_IMAGES = Path(__file__).resolve().parent.parent / "projects" / "demo" / "data" / "images"
CONTEXT = {"tokenizer": "builtin:qwen2.5", "num_image_tokens": 4}
PROCESSORS = {
    "vis_processor": {"train": {"name": "blip_image_eval", "image_size": 32}, "eval": {"name": "blip_image_eval", "image_size": 32}},
    "text_processor": {"train": {"name": "qwen_chat", "max_len": 256}, "eval": {"name": "qwen_chat", "max_len": 256}},
}


@pytest.fixture
def warnings_seen(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    # lavislite's logger does not propagate once an entry point set it up; listen on it directly.
    # (Listening on both would count every record twice.)
    direct = not logger.propagate
    if direct:
        logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="lavislite"):
            yield caplog
    finally:
        if direct:
            logger.removeHandler(caplog.handler)


def _llava_record(image_id: str, image: str, question: str, answer: str) -> dict[str, object]:
    return {"id": image_id, "image": image, "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]}


def test_llava_training_file_with_repeated_ids_loads_every_sample_with_unique_ids(tmp_path: Path, warnings_seen: pytest.LogCaptureFixture) -> None:
    # As in llava_instruct_150k.json: one COCO image id for the conversation, detail and reasoning records of that image.
    records = [
        _llava_record("000000033471", "shape_000.jpg", "What colour is the shape?", "red"),
        _llava_record("000000033471", "shape_000.jpg", "Describe the image in detail.", "A small red circle."),
        _llava_record("000000052846", "shape_001.jpg", "What shape is it?", "square"),
        _llava_record("000000033471", "shape_000.jpg", "Why is it round?", "It is a circle."),
        _llava_record("000000052846", "shape_001.jpg", "Is it small?", "No."),
    ]
    path = tmp_path / "llava_instruct.json"
    path.write_text(json.dumps(records))
    splits = load_dataset(
        "llava_instruction",
        overrides={"build_info": {"annotations": {"train": {"storage": str(path)}}, "images": {"storage": str(DEMO_IMAGES)}}, **PROCESSORS},
        context=CONTEXT,
    )
    ds = splits["train"]
    assert [s.id for s in ds.samples] == ["000000033471", "000000033471#2", "000000052846", "000000033471#3", "000000052846#2"]
    assert [s.turns[1]["content"] for s in ds.samples] == [r["conversations"][1]["value"] for r in records]  # every sample kept, in order
    assert ds[3]["id"] == "000000033471#3"
    warnings = [r.getMessage() for r in warnings_seen.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"3 sample(s) in {path} reuse an id")
    assert "'000000033471' -> '000000033471#2'" in warnings[0]


def test_renaming_is_deterministic_and_skips_suffixes_already_taken() -> None:
    def samples() -> list[Sample]:
        return [Sample(i, [], []) for i in ("a", "a#2", "a", "b", "a")]

    first, second = make_ids_unique(samples(), ["f.json"]), make_ids_unique(samples(), ["f.json"])
    assert [s.id for s in first] == [s.id for s in second] == ["a", "a#2", "a#3", "b", "a#4"]


def test_evaluation_file_with_a_repeated_question_id_fails_naming_both_records(tmp_path: Path) -> None:
    questions = [
        {"question_id": 7, "image": "shape_000.jpg", "question": "What colour is the shape?", "answer": ["red"] * 10},
        {"question_id": 8, "image": "shape_001.jpg", "question": "What shape is it?", "answer": ["square"] * 10},
        {"question_id": 7, "image": "shape_002.jpg", "question": "What colour is the shape?", "answer": ["blue"] * 10},
    ]
    path = tmp_path / "vqa_val.json"
    path.write_text(json.dumps(questions))
    with pytest.raises(SampleError) as info:
        load_dataset(
            "vqav2",
            overrides={"build_info": {"annotations": {"val": {"storage": str(path)}}, "images": {"storage": str(DEMO_IMAGES)}}, **PROCESSORS},
            context=CONTEXT,
        )
    message = str(info.value)
    assert message.startswith(f"duplicate id 7: {path}[0] and {path}[2]; evaluation results are keyed by id"), message
    assert "\n" not in message


def test_jsonl_records_are_located_by_line(tmp_path: Path) -> None:
    path = tmp_path / "vqa_val.jsonl"
    line = {"question_id": 1, "image": "shape_000.jpg", "question": "Colour?", "answer": ["red"]}
    path.write_text(json.dumps(line) + "\n\n" + json.dumps({**line, "image": "shape_001.jpg"}) + "\n")
    with pytest.raises(SampleError, match=rf"duplicate id 1: {path} line 1 and {path} line 3;"):
        load_dataset(
            "vqav2",
            overrides={"build_info": {"annotations": {"val": {"storage": str(path)}}, "images": {"storage": str(DEMO_IMAGES)}}, **PROCESSORS},
            context=CONTEXT,
        )


def test_a_parser_that_indexes_a_missing_key_gives_a_one_line_error_naming_the_record(tmp_path: Path) -> None:
    from lavislite.datasets.datasets.instruction_dataset import load_annotations

    def parse_caption(record: dict[str, object], where: str) -> Sample:
        return Sample(str(record["image_id"]), [str(record["image"])], [])

    path = tmp_path / "captions.json"
    path.write_text(json.dumps([{"image_id": 1, "image": "a.jpg"}, {"id": "x7", "image_id": 2}]))
    with pytest.raises(SampleError) as info:
        load_annotations([str(path)], parse_caption)
    assert str(info.value) == f"{path}[1] (id=x7): missing key 'image' (raised by {parse_caption.__qualname__})"


def test_token_lengths_are_the_lengths_getitem_makes() -> None:
    """token_lengths (which grouping and packing plan from) equals each sample's real sequence length and image count."""
    from conftest import DEMO, SMALL
    from lavislite.common.config import Config
    from lavislite.tasks import setup_task

    cfg = Config(DEMO, SMALL)
    task = setup_task(cfg)
    datasets = task.build_datasets(cfg)
    ds = datasets["llava_instruction"]["train"]
    lengths = ds.token_lengths()
    assert len(lengths) == len(ds) == 60
    for i in (0, 7, 31, 59):
        item = ds[i]
        assert lengths[i] == (len(item["input_ids"]), 0 if item["image"] is None else len(item["image"]))
    assert ds.token_lengths() is lengths  # cached
    assert len({n for n, _ in lengths}) > 1
