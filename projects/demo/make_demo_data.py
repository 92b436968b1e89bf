"""Generate the deterministic, offline demo dataset for lavislite.

This script builds a small synthetic vision-language dataset that lets the
lavislite training and evaluation pipelines run end to end on a CPU without
downloading anything, and that a tiny random-init model can actually learn to
*see*: answers depend on the image, and held-out images are answered right.

* ``data/images/shape_000.jpg`` ... : RGB JPEGs (64x64, quality 90), each a
  light, slightly tinted background with ONE filled shape (circle, square or
  triangle) in one of four colours (red, green, blue, yellow), small or large.
  Position, size, fill shade and background are jittered per image with
  ``random.Random(SEED * 1_000_003 + index)``.
* ``data/minigpt4_instruction.json``: instruction-tuning samples in the
  MiniGPT4Qwen format (``<Img><ImageHere></Img>`` placeholders).
* ``data/llava_instruction.json``: samples in the LLaVA ``conversations``
  format (``<image>`` placeholders).
* ``data/eval_caption.json``: COCO-caption-style references for the held-out
  images.
* ``data/eval_vqa.json``: VQAv2-style questions (10 answers each) for the
  held-out images.
* ``data/val_vqa.json``: the same questions for a second held-out set, the
  demo's validation split during training.
* ``data/metadata.json``: the ground-truth metadata of every image.

The first ``NUM_TRAIN`` images are the training split, the next ``NUM_EVAL``
the held-out test images, the last ``NUM_VAL`` the held-out validation images
(no training sample uses a held-out image). Train and test cycle through every
(shape, colour) pair in both sizes, validation through every pair once.

The two short-answer questions that the evaluation asks, "What colour is the
shape?" and "What shape is in the image?", are taught with one-word answers
("red", "circle") for every training image, in both annotation formats; the
rest of the data (other phrasings, captions, multi-turn and two-image samples)
keeps the demo representative of real instruction data.

Everything is derived from fixed seeds and the image metadata, so running the
script again rewrites byte-identical files (JPEG bytes are identical for the
same Pillow/libjpeg build). Usage::

    python projects/demo/make_demo_data.py [--out-dir DIR]

Only Pillow and the standard library are needed.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from PIL import Image, ImageDraw

IMAGE_SIZE: Final[int] = 64
SUPERSAMPLE: Final[int] = 4  # draw at 4x and downsample for smooth edges
JPEG_QUALITY: Final[int] = 90
NUM_TRAIN: Final[int] = 288  # 24 per (shape, colour) pair, 12 small and 12 large
NUM_EVAL: Final[int] = 25  # odd on purpose: does not divide over 2 processes
NUM_VAL: Final[int] = 13  # held out too: the demo validates on these during training
NUM_IMAGES: Final[int] = NUM_TRAIN + NUM_EVAL + NUM_VAL
SEED: Final[int] = 0

SHAPES: Final[tuple[str, ...]] = ("circle", "square", "triangle")
COLOURS: Final[dict[str, tuple[int, int, int]]] = {
    "red": (215, 35, 35),
    "green": (35, 155, 50),
    "blue": (35, 70, 215),
    "yellow": (235, 190, 15),
}
COLOUR_NAMES: Final[tuple[str, ...]] = tuple(COLOURS)
BACKGROUND_RANGE: Final[tuple[int, int]] = (215, 250)  # per channel
COLOUR_JITTER: Final[int] = 20  # per channel, uniform in [-20, 20]
# Side length (in 64px units) of the shape's bounding box per size class.
SIZE_RANGES: Final[dict[str, tuple[int, int]]] = {"small": (44, 47), "large": (48, 52)}
MARGIN: Final[int] = 4
# How far (in pixels) the shape's box may move from the centre (within MARGIN).
POSITION_JITTER: Final[int] = 1

# The evaluation questions, taught verbatim with one-word answers.
COLOUR_QUESTION: Final[str] = "What colour is the shape?"
SHAPE_QUESTION: Final[str] = "What shape is in the image?"

MG_PLACEHOLDER: Final[str] = "<Img><ImageHere></Img>"
LLAVA_PLACEHOLDER: Final[str] = "<image>"

# How many samples of each other kind, per annotation file.
NUM_CAPTIONS: Final[int] = 24
NUM_PHRASED: Final[int] = 24  # other phrasings of the two questions, sentence answers
NUM_MULTI: Final[int] = 24
NUM_PAIRS: Final[int] = 12

# Alternative answers used once in the 10 VQA answers (the other 9 agree).
COLOUR_ALT: Final[dict[str, str]] = {
    "red": "dark red",
    "green": "dark green",
    "blue": "dark blue",
    "yellow": "gold",
}
SHAPE_ALT: Final[dict[str, str]] = {
    "circle": "round",
    "square": "rectangle",
    "triangle": "triangular",
}

Record = dict[str, Any]


@dataclass(frozen=True)
class ImageMeta:
    """Ground truth for one generated image."""

    index: int
    file: str
    shape: str
    colour: str
    size: str

    @property
    def split(self) -> str:
        if self.index < NUM_TRAIN:
            return "train"
        return "eval" if self.index < NUM_TRAIN + NUM_EVAL else "val"

    def to_json(self) -> Record:
        return {
            "file": self.file,
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "split": self.split,
        }


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------


def plan_images() -> list[ImageMeta]:
    """Assign (shape, colour, size) to every image slot.

    Within each split, slot ``j = 12 * rep + c`` gets combo ``c``: shape
    ``SHAPES[c % 3]`` and colour ``COLOUR_NAMES[c % 4]`` (by the Chinese
    remainder theorem the 12 values of ``c`` hit all 12 pairs). The size
    alternates with ``rep + c``, so every pair comes in both sizes in both
    splits (the 25th held-out image is one more red circle).
    """
    metas: list[ImageMeta] = []
    for i in range(NUM_IMAGES):
        j = i if i < NUM_TRAIN else (i - NUM_TRAIN if i < NUM_TRAIN + NUM_EVAL else i - NUM_TRAIN - NUM_EVAL)
        rep, combo = divmod(j, len(SHAPES) * len(COLOUR_NAMES))
        metas.append(
            ImageMeta(
                index=i,
                file=f"shape_{i:03d}.jpg",
                shape=SHAPES[combo % len(SHAPES)],
                colour=COLOUR_NAMES[combo % len(COLOUR_NAMES)],
                size="small" if (rep + combo) % 2 == 0 else "large",
            )
        )
    return metas


def render_image(meta: ImageMeta) -> Image.Image:
    """Draw one image from its own seeded random stream."""
    rng = random.Random(SEED * 1_000_003 + meta.index)
    background = tuple(rng.randint(*BACKGROUND_RANGE) for _ in range(3))
    fill = tuple(max(0, min(255, c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for c in COLOURS[meta.colour])
    lo, hi = SIZE_RANGES[meta.size]
    side = rng.randint(lo, hi)
    centre = (IMAGE_SIZE - side) // 2
    lo_xy = max(MARGIN, centre - POSITION_JITTER)
    hi_xy = min(IMAGE_SIZE - MARGIN - side, centre + POSITION_JITTER)
    x0 = rng.randint(lo_xy, hi_xy)
    y0 = rng.randint(lo_xy, hi_xy)

    s = SUPERSAMPLE
    big = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), background)
    draw = ImageDraw.Draw(big)
    box = (x0 * s, y0 * s, (x0 + side) * s - 1, (y0 + side) * s - 1)
    if meta.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif meta.shape == "square":
        draw.rectangle(box, fill=fill)
    elif meta.shape == "triangle":
        left, top, right, bottom = box
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)
    else:  # pragma: no cover - plan_images only yields known shapes
        raise ValueError(f"unknown shape {meta.shape!r}")
    return big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)


def write_images(metas: list[ImageMeta], image_dir: Path) -> None:
    image_dir.mkdir(parents=True, exist_ok=True)
    wanted = {m.file for m in metas}
    for stale in image_dir.glob("shape_*.jpg"):
        if stale.name not in wanted:
            stale.unlink()
    for meta in metas:
        render_image(meta).save(image_dir / meta.file, format="JPEG", quality=JPEG_QUALITY, optimize=False)


# --------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------


def describe(meta: ImageMeta) -> str:
    """'large red circle'"""
    return f"{meta.size} {meta.colour} {meta.shape}"


def pick(train: list[ImageMeta], count: int, offset: int) -> list[ImageMeta]:
    """``count`` training images spread evenly over the split, starting at ``offset``.

    Different offsets give different images for different sample kinds.
    """
    return [train[(offset + k * len(train) // count) % len(train)] for k in range(count)]


def make_pairs(train: list[ImageMeta], attribute: str, count: int, offset: int) -> list[tuple[ImageMeta, ImageMeta]]:
    """Pairs of training images; even pairs agree on ``attribute``, odd ones differ.

    Matching pairs are chosen to differ in the *other* attribute so that the
    question cannot be answered from a single glance at identical images.
    """
    other = "colour" if attribute == "shape" else "shape"
    pairs: list[tuple[ImageMeta, ImageMeta]] = []
    for k, first in enumerate(pick(train, count, offset)):
        want_same = k % 2 == 0
        for step in range(1, len(train)):
            cand = train[(first.index + step) % len(train)]
            same = getattr(cand, attribute) == getattr(first, attribute)
            if want_same and same and getattr(cand, other) != getattr(first, other):
                break
            if not want_same and not same:
                break
        else:  # pragma: no cover - the plan always has a partner
            raise RuntimeError(f"no partner for {first.file}")
        pairs.append((first, cand))
    return pairs


def vqa_images(train: list[ImageMeta], fmt: int) -> list[ImageMeta]:
    """Every training image gets the two short questions once, in one of the two files.

    Images alternate between the files in runs of 24 (two rounds of the
    12-pair cycle, one small and one large each), so that each file sees every
    (shape, colour) pair in both sizes equally often.
    """
    return [m for m in train if (m.index // 24) % 2 == fmt]


# --------------------------------------------------------------------------
# MiniGPT4Qwen format
# --------------------------------------------------------------------------


def mg_record(rid: str, image: str | list[str], instruction: str | list[str], output: str | list[str]) -> Record:
    return {"id": rid, "image": image, "instruction": instruction, "output": output}


def build_minigpt4(metas: list[ImageMeta]) -> list[Record]:
    train = metas[:NUM_TRAIN]
    records: list[Record] = []
    for n, meta in enumerate(vqa_images(train, 0)):
        records.append(mg_record(f"mg_colour_{n:04d}", meta.file, f"{MG_PLACEHOLDER} {COLOUR_QUESTION}", meta.colour))
        records.append(mg_record(f"mg_shape_{n:04d}", meta.file, f"{MG_PLACEHOLDER} {SHAPE_QUESTION}", meta.shape))
    for n, meta in enumerate(pick(train, NUM_CAPTIONS, offset=1)):
        records.append(
            mg_record(
                f"mg_caption_{n:04d}",
                meta.file,
                f"{MG_PLACEHOLDER} Describe the image briefly.",
                f"A {describe(meta)} on a light background.",
            )
        )
    for n, meta in enumerate(pick(train, NUM_PHRASED, offset=2)):
        if n % 2 == 0:
            q, a = "What is the colour of the object in this image?", f"The object is {meta.colour}."
        else:
            q, a = "Which shape is drawn here?", f"A {meta.shape} is drawn here."
        records.append(mg_record(f"mg_phrased_{n:04d}", meta.file, f"{MG_PLACEHOLDER} {q}", a))
    for n, meta in enumerate(pick(train, NUM_MULTI, offset=3)):
        if n % 2 == 0:
            instruction = [f"{MG_PLACEHOLDER} {COLOUR_QUESTION}", "And what shape is it?"]
            output = [meta.colour, meta.shape]
        else:
            instruction = [f"{MG_PLACEHOLDER} {SHAPE_QUESTION}", "Is it small or large?"]
            output = [meta.shape, f"It is {meta.size}."]
        records.append(mg_record(f"mg_multi_{n:04d}", meta.file, instruction, output))
    for n, (a, b) in enumerate(make_pairs(train, "shape", NUM_PAIRS, offset=4)):
        if a.shape == b.shape:
            answer = f"Yes, both show a {a.shape}."
        else:
            answer = f"No, the first is a {a.shape} and the second is a {b.shape}."
        records.append(
            mg_record(
                f"mg_pair_{n:04d}",
                [a.file, b.file],
                f"Image 1: {MG_PLACEHOLDER} Image 2: {MG_PLACEHOLDER} Do the two images show the same shape?",
                answer,
            )
        )
    return records


# --------------------------------------------------------------------------
# LLaVA format
# --------------------------------------------------------------------------


def conversation(*turns: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


def llava_record(rid: str, image: str | list[str], *turns: str) -> Record:
    return {"id": rid, "image": image, "conversations": conversation(*turns)}


def build_llava(metas: list[ImageMeta]) -> list[Record]:
    train = metas[:NUM_TRAIN]
    records: list[Record] = []
    for n, meta in enumerate(vqa_images(train, 1)):
        records.append(llava_record(f"llava_colour_{n:04d}", meta.file, f"{LLAVA_PLACEHOLDER}\n{COLOUR_QUESTION}", meta.colour))
        records.append(llava_record(f"llava_shape_{n:04d}", meta.file, f"{LLAVA_PLACEHOLDER}\n{SHAPE_QUESTION}", meta.shape))
    for n, meta in enumerate(pick(train, NUM_CAPTIONS, offset=5)):
        records.append(
            llava_record(
                f"llava_caption_{n:04d}",
                meta.file,
                f"{LLAVA_PLACEHOLDER}\nGive a short description of this picture.",
                f"It is a {describe(meta)}.",
            )
        )
    for n, meta in enumerate(pick(train, NUM_PHRASED, offset=6)):
        if n % 2 == 0:
            q, a = "Which shape can you see in this picture?", f"I can see a {meta.shape}."
        else:
            q, a = "Which colour does the object in the picture have?", f"The object is {meta.colour}."
        records.append(llava_record(f"llava_phrased_{n:04d}", meta.file, f"{LLAVA_PLACEHOLDER}\n{q}", a))
    for n, meta in enumerate(pick(train, NUM_MULTI, offset=7)):
        if n % 2 == 0:
            turns = (
                f"{LLAVA_PLACEHOLDER}\n{SHAPE_QUESTION}",
                meta.shape,
                COLOUR_QUESTION,
                meta.colour,
            )
        else:
            turns = (
                f"{LLAVA_PLACEHOLDER}\nIs the shape in this picture small or large?",
                f"The shape is {meta.size}.",
                "Name its colour and shape.",
                f"{meta.colour.capitalize()} {meta.shape}.",
            )
        records.append(llava_record(f"llava_multi_{n:04d}", meta.file, *turns))
    for n, (a, b) in enumerate(make_pairs(train, "colour", NUM_PAIRS, offset=8)):
        if a.colour == b.colour:
            answer = f"Yes, both shapes are {a.colour}."
        else:
            answer = f"No, the first shape is {a.colour} and the second is {b.colour}."
        records.append(
            llava_record(
                f"llava_pair_{n:04d}",
                [a.file, b.file],
                f"{LLAVA_PLACEHOLDER}\n{LLAVA_PLACEHOLDER}\nAre the shapes in these two pictures the same colour?",
                answer,
            )
        )
    return records


# --------------------------------------------------------------------------
# Evaluation annotations
# --------------------------------------------------------------------------


def build_eval_caption(metas: list[ImageMeta]) -> list[Record]:
    return [
        {
            "image": meta.file,
            "image_id": meta.index,
            "caption": [
                f"a {meta.colour} {meta.shape}.",
                f"a {describe(meta)} on a light background.",
                f"a {meta.size} {meta.shape} in {meta.colour}.",
                f"one {meta.colour} {meta.shape} on a plain light background.",
            ],
        }
        for meta in metas
        if meta.split == "eval"
    ]


def build_eval_vqa(metas: list[ImageMeta], split: str = "eval") -> list[Record]:
    """Two questions per held-out image of ``split``, minus the last one, so the count is odd."""
    records: list[Record] = []
    for meta in (m for m in metas if m.split == split):
        records.append(
            {
                "question_id": meta.index * 10,
                "image": meta.file,
                "question": COLOUR_QUESTION,
                "answer": [meta.colour] * 9 + [COLOUR_ALT[meta.colour]],
                "answer_type": "other",
                "question_type": "what color is the",
            }
        )
        records.append(
            {
                "question_id": meta.index * 10 + 1,
                "image": meta.file,
                "question": SHAPE_QUESTION,
                "answer": [meta.shape] * 9 + [SHAPE_ALT[meta.shape]],
                "answer_type": "other",
                "question_type": "what shape is",
            }
        )
    return records[:-1]


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    path.write_bytes(text.encode("utf-8"))


def check(metas: list[ImageMeta], train_records: list[Record]) -> None:
    """Held-out images appear in no training sample; train and eval have every pair in both sizes, val every pair."""
    held_out = {m.file for m in metas if m.split != "train"}
    for rec in train_records:
        images = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
        if held_out & set(images):
            raise AssertionError(f"{rec['id']} uses a held-out image")
    for split in ("train", "eval"):
        kinds = Counter((m.shape, m.colour, m.size) for m in metas if m.split == split)
        if len(kinds) != len(SHAPES) * len(COLOURS) * 2:
            raise AssertionError(f"{split} split misses some (shape, colour, size)")
    if len({(m.shape, m.colour) for m in metas if m.split == "val"}) != len(SHAPES) * len(COLOURS):
        raise AssertionError("val split misses some (shape, colour)")


def generate(out_dir: Path) -> None:
    metas = plan_images()
    minigpt4, llava = build_minigpt4(metas), build_llava(metas)
    check(metas, minigpt4 + llava)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_images(metas, out_dir / "images")
    write_json(out_dir / "metadata.json", [m.to_json() for m in metas])
    write_json(out_dir / "minigpt4_instruction.json", minigpt4)
    write_json(out_dir / "llava_instruction.json", llava)
    write_json(out_dir / "eval_caption.json", build_eval_caption(metas))
    write_json(out_dir / "eval_vqa.json", build_eval_vqa(metas))
    write_json(out_dir / "val_vqa.json", build_eval_vqa(metas, "val"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path(__file__).resolve().parent / "data",
        help="output directory (default: the data/ folder next to this script)",
    )
    args = parser.parse_args(argv)
    generate(args.out_dir)
    print(f"wrote demo data to {args.out_dir}")


if __name__ == "__main__":
    main()
