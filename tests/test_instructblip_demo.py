"""The InstructBLIP demo end to end: trained by ``projects/instructblip/demo.yaml``, it sees, reads the question, exports, and trains on two processes.

Reads the session's InstructBLIP demo run (``instructblip_demo_run``). Slow:
every test here trains or launches processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import test_demo_sees as sees
from conftest import DEMO_DATA, INSTRUCTBLIP_DEMO, export_and_ask_without_lavislite, held_out_questions, train_zero3_with_text_only

MAX_NEW_TOKENS = 8


def test_instructblip_demo_answers_held_out_colour_and_shape(instructblip_demo_run: Path) -> None:
    """Issue 14.3: the trained demo answers held-out questions (colour >= 0.9, shape >= 0.7, exact match)."""
    sees.test_held_out_colour_and_shape_accuracy(instructblip_demo_run)


def test_instructblip_demo_answers_every_single_image_kind_on_held_out_images(instructblip_demo_run: Path) -> None:
    """Issue 15's bar on the InstructBLIP demo: every single-image kind and turn of the training data (colour, shape,
    size, captions; follow-up turns asked with the model's own replies) is right in >= 0.8 of the held-out images.

    After 4 epochs colour and shape were right everywhere but the size was one constant reply ("small": 13/25 in
    every size turn); the demo trains 6.
    """
    acc = sees.measure_kinds(instructblip_demo_run)
    keys = [key for key, v in acc.items() if not v["two_images"]]
    assert len(keys) >= 16 and all(acc[key]["of"] >= 24 for key in keys)
    assert not sees.below_the_bar(acc, keys), {key: f"{acc[key]['right']}/{acc[key]['of']}" for key in keys}


def test_the_trained_q_former_reads_the_question(instructblip_demo_run: Path) -> None:
    """Issue 14.3: for one held-out image the Q-Former's output changes with the question (by far more than float noise,
    1e-6; the same question twice gives the same tokens), and each question is answered right with its own visual tokens.

    The demo's questions need the same facts whatever is asked (colour and shape are both in every image), so the
    trained Q-Former leans on the instruction lightly: its tokens move by about 1% with the question.
    """
    from lavislite.models.release import load_from_checkpoint

    model, _, _ = load_from_checkpoint(str(instructblip_demo_run))
    path, _ = held_out_questions()[0]
    image = Path(path).name
    batches = [model.chat_inputs([path], [{"role": "user", "content": f"<image>\n{q}"}]) for q in ("What colour is the shape?", "What shape is in the image?")]
    with torch.no_grad():
        colour, shape, again = (model.encode_images(b) for b in (*batches, model.chat_inputs([path], [{"role": "user", "content": "<image>\nWhat colour is the shape?"}])))
    assert (colour - shape).abs().max() > 1e-3
    assert torch.equal(colour, again)
    meta = {m["file"]: m for m in json.loads((DEMO_DATA / "metadata.json").read_text())}
    assert [model.generate(b, max_new_tokens=MAX_NEW_TOKENS) for b in batches] == [[meta[image]["colour"]], [meta[image]["shape"]]]


TRANSFORMERS_SIDE = r"""
import json
import torch
from PIL import Image
from transformers import AutoProcessor, InstructBlipForConditionalGeneration

spec = json.load(open("spec.json"))
processor = AutoProcessor.from_pretrained("export")
assert type(processor).__name__ == "InstructBlipProcessor"
model = InstructBlipForConditionalGeneration.from_pretrained("export").eval()
out = []
for image, question in spec["questions"]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    qformer = processor.qformer_tokenizer([question], return_tensors="pt")
    pixels = processor.image_processor(Image.open(image), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ids = model.generate(pixel_values=pixels, qformer_input_ids=qformer["input_ids"], qformer_attention_mask=qformer["attention_mask"],
                             **text, do_sample=False, max_new_tokens=spec["new_tokens"])[0, text["input_ids"].shape[1]:].tolist()
    stop = [i for i, t in enumerate(ids) if t in model.generation_config.eos_token_id]
    ids = ids[: stop[0]] if stop else ids
    out.append({"ids": ids, "reply": processor.tokenizer.decode(ids, skip_special_tokens=True).strip()})
json.dump(out, open("out.json", "w"))
"""


def test_instructblip_demo_export_generates_lavislites_greedy_tokens_in_plain_transformers(instructblip_demo_run: Path, tmp_path: Path) -> None:
    """Issue 14.4: the export loads as InstructBlipForConditionalGeneration + InstructBlipProcessor where ``import lavislite``
    fails and generates the greedy tokens of lavislite's chat for the same image and question."""
    from lavislite.models.release import load_from_checkpoint

    theirs = export_and_ask_without_lavislite(instructblip_demo_run, tmp_path, TRANSFORMERS_SIDE, MAX_NEW_TOKENS)
    questions = held_out_questions()
    model, _, _ = load_from_checkpoint(str(instructblip_demo_run))
    for (image, question), hf in zip(questions, theirs):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        replies, ids = model.generate(model.chat_inputs([image], messages), return_ids=True, max_new_tokens=MAX_NEW_TOKENS)
        assert hf["ids"] == ids[0], (image, question)
        assert hf["reply"] == replies[0] == model.chat([image], messages, max_new_tokens=MAX_NEW_TOKENS)
    assert len({hf["reply"] for hf in theirs}) >= 4


def test_instructblip_demo_trains_on_two_processes_with_zero3_and_text_only_samples(tmp_path: Path) -> None:
    """Issue 14.5: the same config under torchrun --nproc_per_node=2 with ZeRO-3, text-only samples mixed in: batch 1 and
    an odd number of image samples, so some step has an image on one rank only (no collective mismatch)."""
    losses = train_zero3_with_text_only(INSTRUCTBLIP_DEMO, tmp_path)
    assert len(losses) == 7 and all(loss == loss and loss < 20 for loss in losses)  # every step logged, finite
