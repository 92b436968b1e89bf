"""Batched generation on blip2_qwen and the captioning / VQA builders that feed it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import DEMO_DATA
from lavislite.common.schema import ConfigError
from lavislite.datasets import load_dataset
from lavislite.datasets.datasets.instruction_dataset import collate_chat

CONTEXT = {"tokenizer": "builtin:qwen2.5", "num_image_tokens": 8}
EVAL_PROCESSORS = {"vis_processor": {"eval": {"name": "blip_image_eval", "image_size": 64}}, "text_processor": {"eval": {"name": "qwen_chat", "max_len": 256}}}


@pytest.fixture(scope="module")
def trained(demo_run: Path):  # type: ignore[no-untyped-def]
    from conftest import demo_model_overrides
    from lavislite.models import load_model_and_preprocess

    return load_model_and_preprocess("blip2_qwen", "demo", is_eval=True, finetuned=str(demo_run / "release"), **demo_model_overrides())


def _item(vis, txt, image: str, prompt: str, i: int) -> dict:  # type: ignore[no-untyped-def]
    enc = txt["eval"]([{"role": "user", "content": f"<image>\n{prompt}"}], num_images=1, sample_id=f"g{i}", add_generation_prompt=True)
    return {"id": f"g{i}", "image": vis["eval"](Image.open(DEMO_DATA / "images" / image)).unsqueeze(0), "input_ids": torch.tensor(enc["input_ids"])}


def test_batched_greedy_generation_equals_one_sample_at_a_time(trained) -> None:  # type: ignore[no-untyped-def]
    """Issue 6.4: 4 images, prompts of different lengths, left-padded: each row as if alone."""
    model, vis, txt = trained
    prompts = ["What colour is the shape?", "Describe the image briefly.", "What shape is in the image?", "Look closely at this small picture and tell me what colour the shape has."]
    images = ["shape_040.jpg", "shape_041.jpg", "shape_042.jpg", "shape_043.jpg"]
    items = [_item(vis, txt, img, p, i) for i, (img, p) in enumerate(zip(images, prompts))]
    assert len({len(it["input_ids"]) for it in items}) >= 3  # really different lengths: padding matters
    pad = model.tokenizer.pad_token_id
    batch = collate_chat(items, pad, padding_side="left")
    texts, ids = model.generate(batch, max_new_tokens=12, return_ids=True)
    assert len(texts) == 4 and len(set(texts)) >= 2  # the replies depend on the image and the prompt
    for i, item in enumerate(items):
        alone_texts, alone_ids = model.generate(collate_chat([item], pad, padding_side="left"), max_new_tokens=12, return_ids=True)
        assert alone_ids[0] == ids[i] and alone_texts[0] == texts[i]
    assert all(model.tokenizer.convert_tokens_to_ids("<|im_end|>") not in row for row in ids)


def test_beam_search_sampling_and_settings_validation(trained) -> None:  # type: ignore[no-untyped-def]
    model, vis, txt = trained
    batch = collate_chat([_item(vis, txt, "shape_044.jpg", "Describe the image briefly.", 0)], model.tokenizer.pad_token_id, padding_side="left")
    beams = model.generate(batch, num_beams=3, max_new_tokens=8, length_penalty=1.0)
    assert len(beams) == 1 and beams[0]
    torch.manual_seed(3)
    a = model.generate(batch, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=8)
    torch.manual_seed(3)
    assert model.generate(batch, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=8) == a
    _, ids = model.generate(batch, max_new_tokens=3, min_new_tokens=3, repetition_penalty=1.3, return_ids=True)
    assert len(ids[0]) == 3
    with pytest.raises(ConfigError, match=r"generate.max_new_tokns: unknown key; did you mean 'generate.max_new_tokens'"):
        model.generate(batch, max_new_tokns=3)
    with pytest.raises(ConfigError, match=r"generate.top_p: must be in \(0, 1\]"):
        model.generate(batch, top_p=0.0)


def test_vqav2_official_files_and_flattened_list_build_the_same_questions(tmp_path: Path) -> None:
    flat = json.loads((DEMO_DATA / "eval_vqa.json").read_text())[:4]
    questions = {"data_subtype": "val2014", "questions": [{"question_id": q["question_id"], "image_id": int(q["image"][6:9]), "question": q["question"]} for q in flat]}
    annotations = {"annotations": [{"question_id": q["question_id"], "image_id": int(q["image"][6:9]), "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(q["answer"])],
                                    "answer_type": "other", "question_type": "what color is the", "multiple_choice_answer": q["answer"][0]} for q in flat]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    images = tmp_path / "images" / "val2014"
    images.mkdir(parents=True)
    for q in questions["questions"]:
        Image.open(DEMO_DATA / "images" / f"shape_{q['image_id']:03d}.jpg").save(images / f"COCO_val2014_{q['image_id']:012d}.jpg")
    official = load_dataset("vqav2", {"build_info": {"annotations": {"val": {"storage": [str(tmp_path / "q.json"), str(tmp_path / "a.json")]}}, "images": {"storage": str(tmp_path / "images")}}, **EVAL_PROCESSORS}, CONTEXT)["val"]
    flattened = load_dataset("vqav2", {"build_info": {"annotations": {"val": {"storage": str(DEMO_DATA / "eval_vqa.json")}}, "images": {"storage": str(DEMO_DATA / "images")}}, **EVAL_PROCESSORS}, CONTEXT)["val"]
    assert [s.id for s in official.samples] == [s.id for s in flattened.samples[:4]]
    assert [s.references for s in official.samples] == [s.references for s in flattened.samples[:4]]
    assert official.samples[0].images == [f"val2014/COCO_val2014_{questions['questions'][0]['image_id']:012d}.jpg"]
    assert official.samples[0].prompt == f"<image>\n{flat[0]['question']} Answer the question using a single word or phrase."
    batch = official.collater([official[0], official[1]])
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]  # left-padded: every prompt ends at the last column
    assert batch["references"][0] == flat[0]["answer"] and batch["extra"][0]["answer_type"] == "other"


def test_coco_caption_train_and_eval_splits(tmp_path: Path) -> None:
    evals = json.loads((DEMO_DATA / "eval_caption.json").read_text())[:3]
    train = [{"image": e["image"], "caption": c, "image_id": e["image_id"]} for e in evals for c in e["caption"]]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "val.json").write_text(json.dumps(evals))
    processors = {"vis_processor": {**EVAL_PROCESSORS["vis_processor"], "train": {"name": "blip_image_eval", "image_size": 64}},
                  "text_processor": {**EVAL_PROCESSORS["text_processor"], "train": {"name": "qwen_chat", "max_len": 256}}}
    splits = load_dataset("coco_caption", {"build_info": {"annotations": {"train": {"storage": str(tmp_path / "train.json")}, "val": {"storage": str(tmp_path / "val.json")}},
                                                          "images": {"storage": str(DEMO_DATA / "images")}}, **processors}, CONTEXT)
    assert sorted(splits) == ["train", "val"]  # the run's annotations replace the default splits
    assert len(splits["train"]) == len(train) and len(splits["val"]) == 3
    first = splits["train"].samples[0]
    assert first.turns[1] == {"role": "assistant", "content": train[0]["caption"]}
    assert splits["val"].samples[0].references == evals[0]["caption"]
    assert splits["val"][0]["input_ids"].tolist()[-3:] == splits["val"].text_processor.tokenizer.encode("<|im_start|>assistant\n")
