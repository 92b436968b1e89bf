"""Generate the deterministic, offline demo dataset for lavislite.

This script builds a tiny synthetic vision-language dataset that lets the
lavislite training and evaluation pipelines run end to end on a CPU without
downloading anything:

* ``data/images/shape_000.jpg`` ... ``shape_047.jpg``: 48 RGB JPEGs (64x64,
  quality 90), each a light, slightly varying background with ONE filled
  shape. Every (shape, colour) pair of {circle, square, triangle} x
  {red, green, blue, yellow} appears 4 times (2 small, 2 large); positions,
  sizes and backgrounds are jittered with ``random.Random(0)``.
* ``data/minigpt4_instruction.json``: instruction-tuning samples in the
  MiniGPT4Qwen format (``<Img><ImageHere></Img>`` placeholders).
* ``data/llava_instruction.json``: the same kind of samples in the LLaVA
  ``conversations`` format (``<image>`` placeholders), phrased differently.
* ``data/eval_caption.json``: COCO-caption-style references for the 8
  held-out images.
* ``data/eval_vqa.json``: VQAv2-style questions (10 answers each) for the
  same 8 held-out images.
* ``data/metadata.json``: the ground-truth metadata of every image.

Images 0-39 are used for training, images 40-47 are held out for evaluation.
The held-out images cover all three shapes, all four colours and both sizes.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from PIL import Image, ImageDraw

IMAGE_SIZE: Final[int] = 64
SUPERSAMPLE: Final[int] = 4  # draw at 4x and downsample for smooth edges
JPEG_QUALITY: Final[int] = 90
NUM_IMAGES: Final[int] = 48
NUM_TRAIN: Final[int] = 40
SEED: Final[int] = 0

SHAPES: Final[tuple[str, ...]] = ("circle", "square", "triangle")
COLOURS: Final[dict[str, tuple[int, int, int]]] = {
    "red": (215, 35, 35),
    "green": (35, 155, 50),
    "blue": (35, 70, 215),
    "yellow": (235, 190, 15),
}
COLOUR_NAMES: Final[tuple[str, ...]] = tuple(COLOURS)
# Side length (in 64px units) of the shape's bounding box per size class.
SIZE_RANGES: Final[dict[str, tuple[int, int]]] = {"small": (16, 22), "large": (38, 46)}
MARGIN: Final[int] = 3

MG_PLACEHOLDER: Final[str] = "<Img><ImageHere></Img>"
LLAVA_PLACEHOLDER: Final[str] = "<image>"

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
        return "train" if self.index < NUM_TRAIN else "eval"

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
    """Assign (shape, colour, size) to each of the 48 image slots.

    Slot ``i = 12 * rep + c`` gets combo ``c``: shape ``SHAPES[c % 3]`` and
    colour ``COLOUR_NAMES[c % 4]`` (by the Chinese remainder theorem the 12
    values of ``c`` hit all 12 pairs). The size alternates with ``rep + c`` so
    that each pair is small twice and large twice, and the last 8 slots
    (the held-out split) mix shapes, colours and sizes.
    """
    metas: list[ImageMeta] = []
    for i in range(NUM_IMAGES):
        rep, combo = divmod(i, len(SHAPES) * len(COLOUR_NAMES))
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


def render_image(meta: ImageMeta, rng: random.Random) -> Image.Image:
    """Draw one image; consumes a fixed number of values from ``rng``."""
    background = (rng.randint(222, 248), rng.randint(222, 248), rng.randint(222, 248))
    lo, hi = SIZE_RANGES[meta.size]
    side = rng.randint(lo, hi)
    x0 = rng.randint(MARGIN, IMAGE_SIZE - MARGIN - side)
    y0 = rng.randint(MARGIN, IMAGE_SIZE - MARGIN - side)

    s = SUPERSAMPLE
    big = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), background)
    draw = ImageDraw.Draw(big)
    box = (x0 * s, y0 * s, (x0 + side) * s - 1, (y0 + side) * s - 1)
    fill = COLOURS[meta.colour]
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
    rng = random.Random(SEED)
    for meta in metas:
        image = render_image(meta, rng)
        image.save(image_dir / meta.file, format="JPEG", quality=JPEG_QUALITY, optimize=False)


# --------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------


def describe(meta: ImageMeta) -> str:
    """'large red circle'"""
    return f"{meta.size} {meta.colour} {meta.shape}"


def pick_training_subset(metas: list[ImageMeta], count: int) -> list[ImageMeta]:
    """``count`` training images spread evenly over the training split."""
    return [metas[k * NUM_TRAIN // count] for k in range(count)]


def make_pairs(metas: list[ImageMeta], attribute: str, count: int) -> list[tuple[ImageMeta, ImageMeta]]:
    """Pairs of training images; even pairs agree on ``attribute``, odd ones differ.

    Matching pairs are chosen to differ in the *other* attribute so that the
    question cannot be answered from a single glance at identical images.
    """
    other = "colour" if attribute == "shape" else "shape"
    pairs: list[tuple[ImageMeta, ImageMeta]] = []
    for k in range(count):
        first = metas[(k * 5) % NUM_TRAIN]
        want_same = k % 2 == 0
        for step in range(1, NUM_TRAIN):
            cand = metas[(first.index + step) % NUM_TRAIN]
            same = getattr(cand, attribute) == getattr(first, attribute)
            if want_same and same and getattr(cand, other) != getattr(first, other):
                break
            if not want_same and not same:
                break
        else:  # pragma: no cover - the plan always has a partner
            raise RuntimeError(f"no partner for {first.file}")
        pairs.append((first, cand))
    return pairs


# --------------------------------------------------------------------------
# MiniGPT4Qwen format
# --------------------------------------------------------------------------

MG_SINGLE_TEMPLATES: Final[tuple[str, ...]] = (
    "What shape is in the image?",
    "What colour is the shape?",
    "Describe the image briefly.",
)


def mg_single_answer(kind: int, meta: ImageMeta) -> str:
    if kind == 0:
        return f"A {meta.shape}."
    if kind == 1:
        return f"{meta.colour.capitalize()}."
    return f"A {describe(meta)} on a light background."


def build_minigpt4(metas: list[ImageMeta]) -> list[Record]:
    train = metas[:NUM_TRAIN]
    records: list[Record] = []
    for n, meta in enumerate(train):
        kind = n % len(MG_SINGLE_TEMPLATES)
        records.append(
            {
                "id": f"mg_single_{n:04d}",
                "image": meta.file,
                "instruction": f"{MG_PLACEHOLDER} {MG_SINGLE_TEMPLATES[kind]}",
                "output": mg_single_answer(kind, meta),
            }
        )
    for n, meta in enumerate(pick_training_subset(train, 12)):
        if n % 2 == 0:
            instruction = [f"{MG_PLACEHOLDER} What colour is the shape?", "And what shape is it?"]
            output = [f"{meta.colour.capitalize()}.", f"A {meta.shape}."]
        else:
            instruction = [f"{MG_PLACEHOLDER} What shape is in the image?", "Is it small or large?"]
            output = [f"A {meta.colour} {meta.shape}.", f"It is {meta.size}."]
        records.append(
            {
                "id": f"mg_multi_{n:04d}",
                "image": meta.file,
                "instruction": instruction,
                "output": output,
            }
        )
    for n, (a, b) in enumerate(make_pairs(train, "shape", 8)):
        if a.shape == b.shape:
            answer = f"Yes, both show a {a.shape}."
        else:
            answer = f"No, the first is a {a.shape} and the second is a {b.shape}."
        records.append(
            {
                "id": f"mg_pair_{n:04d}",
                "image": [a.file, b.file],
                "instruction": (
                    f"Image 1: {MG_PLACEHOLDER} Image 2: {MG_PLACEHOLDER} "
                    "Do the two images show the same shape?"
                ),
                "output": answer,
            }
        )
    return records


# --------------------------------------------------------------------------
# LLaVA format
# --------------------------------------------------------------------------

LLAVA_SINGLE_TEMPLATES: Final[tuple[str, ...]] = (
    "Which shape can you see in this picture?",
    "Which colour does the object in the picture have?",
    "Give a short description of this picture.",
)


def llava_single_answer(kind: int, meta: ImageMeta) -> str:
    if kind == 0:
        return f"I can see a {meta.shape}."
    if kind == 1:
        return f"The object is {meta.colour}."
    return f"It is a {describe(meta)}."


def conversation(*turns: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


def build_llava(metas: list[ImageMeta]) -> list[Record]:
    train = metas[:NUM_TRAIN]
    records: list[Record] = []
    for n, meta in enumerate(train):
        # Offset by one so each image gets a different question than in the
        # MiniGPT4 file.
        kind = (n + 1) % len(LLAVA_SINGLE_TEMPLATES)
        records.append(
            {
                "id": f"llava_single_{n:04d}",
                "image": meta.file,
                "conversations": conversation(
                    f"{LLAVA_PLACEHOLDER}\n{LLAVA_SINGLE_TEMPLATES[kind]}",
                    llava_single_answer(kind, meta),
                ),
            }
        )
    for n, meta in enumerate(pick_training_subset(train, 12)):
        if n % 2 == 0:
            turns = (
                f"{LLAVA_PLACEHOLDER}\nWhat kind of shape is shown here?",
                f"It is a {meta.shape}.",
                "What colour is it?",
                f"It is {meta.colour}.",
            )
        else:
            turns = (
                f"{LLAVA_PLACEHOLDER}\nIs the shape in this picture small or large?",
                f"The shape is {meta.size}.",
                "Name its colour and shape.",
                f"{meta.colour.capitalize()} {meta.shape}.",
            )
        records.append(
            {
                "id": f"llava_multi_{n:04d}",
                "image": meta.file,
                "conversations": conversation(*turns),
            }
        )
    for n, (a, b) in enumerate(make_pairs(train, "colour", 8)):
        if a.colour == b.colour:
            answer = f"Yes, both shapes are {a.colour}."
        else:
            answer = f"No, the first shape is {a.colour} and the second is {b.colour}."
        records.append(
            {
                "id": f"llava_pair_{n:04d}",
                "image": [a.file, b.file],
                "conversations": conversation(
                    f"{LLAVA_PLACEHOLDER}\n{LLAVA_PLACEHOLDER}\n"
                    "Are the shapes in these two pictures the same colour?",
                    answer,
                ),
            }
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
            ],
        }
        for meta in metas[NUM_TRAIN:]
    ]


def build_eval_vqa(metas: list[ImageMeta]) -> list[Record]:
    records: list[Record] = []
    for meta in metas[NUM_TRAIN:]:
        records.append(
            {
                "question_id": meta.index * 10,
                "image": meta.file,
                "question": "What colour is the shape?",
                "answer": [meta.colour] * 9 + [COLOUR_ALT[meta.colour]],
            }
        )
        records.append(
            {
                "question_id": meta.index * 10 + 1,
                "image": meta.file,
                "question": "What shape is in the image?",
                "answer": [meta.shape] * 9 + [SHAPE_ALT[meta.shape]],
            }
        )
    return records


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    path.write_bytes(text.encode("utf-8"))


def generate(out_dir: Path) -> None:
    metas = plan_images()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_images(metas, out_dir / "images")
    write_json(out_dir / "metadata.json", [m.to_json() for m in metas])
    write_json(out_dir / "minigpt4_instruction.json", build_minigpt4(metas))
    write_json(out_dir / "llava_instruction.json", build_llava(metas))
    write_json(out_dir / "eval_caption.json", build_eval_caption(metas))
    write_json(out_dir / "eval_vqa.json", build_eval_vqa(metas))


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
