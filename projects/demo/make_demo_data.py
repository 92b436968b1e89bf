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
("red", "circle") for every training image, in both annotation formats. The
other kinds of sample (captions, other phrasings, multi-turn and two-image
samples; ``KINDS`` lists them all, with the attributes each answer names) keep
the demo representative of real instruction data, and each of them cycles
through every (shape, colour, size) equally often (two-image kinds: as many
"yes" as "no"), so that every kind is learnt for every image and not for one
pair. ``tests/test_demo_sees.py`` asks every kind in ``KINDS`` about the
held-out images.

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
SIZES: Final[tuple[str, ...]] = ("small", "large")
# Every (shape, colour, size): each kind of training sample cycles through these in turn.
COMBOS: Final[tuple[tuple[str, str, str], ...]] = tuple((s, c, z) for s in SHAPES for c in COLOUR_NAMES for z in SIZES)
BACKGROUND_RANGE: Final[tuple[int, int]] = (215, 250)  # per channel
COLOUR_JITTER: Final[int] = 20  # per channel, uniform in [-20, 20]
# Side length (in 64px units) of the shape's bounding box per size class.
# Far enough apart that the frozen ViT tells them apart on held-out images as well as shape and colour.
SIZE_RANGES: Final[dict[str, tuple[int, int]]] = {"small": (34, 39), "large": (48, 52)}
MARGIN: Final[int] = 4
# How far (in pixels) the shape's box may move from the centre (within MARGIN).
POSITION_JITTER: Final[int] = 1

# The evaluation questions, taught verbatim with one-word answers.
COLOUR_QUESTION: Final[str] = "What colour is the shape?"
SHAPE_QUESTION: Final[str] = "What shape is in the image?"

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


def by_combo(images: list[ImageMeta]) -> list[list[ImageMeta]]:
    """The images grouped by (shape, colour, size), in ``COMBOS`` order (empty groups dropped)."""
    groups = [[m for m in images if (m.shape, m.colour, m.size) == combo] for combo in COMBOS]
    return [g for g in groups if g]


def pick(train: list[ImageMeta], count: int, offset: int) -> list[ImageMeta]:
    """``count`` training images that cycle through every (shape, colour, size) in turn.

    Sample ``n`` takes combination ``n % 24`` (so any 24 consecutive samples,
    and every multiple of 24, hold each combination once: a kind is balanced
    in every attribute), and within it image ``n // 24 + offset`` of that
    combination's images, so that kinds with different offsets use different
    images. (Striding through the split instead, with the split's own period of
    12, built a whole kind from one (shape, colour) pair.)
    """
    groups = by_combo(train)
    return [groups[n % len(groups)][(n // len(groups) + offset) % len(groups[n % len(groups)])] for n in range(count)]


def make_pairs(images: list[ImageMeta], attribute: str, count: int, offset: int) -> list[tuple[ImageMeta, ImageMeta]]:
    """``count`` balanced pairs of ``images``: half agree on ``attribute``, half differ.

    The first images cycle through every (shape, colour, size) (``pick``);
    whether a pair agrees alternates with the combination and flips every 24
    pairs, so each combination is the first image of as many "yes" as "no"
    pairs. A matching partner differs in the *other* attribute (the question
    cannot be answered from two identical pictures); partners cycle through
    the candidates, so every value of both attributes appears on both sides.
    """
    other = "colour" if attribute == "shape" else "shape"
    pairs: list[tuple[ImageMeta, ImageMeta]] = []
    for n, first in enumerate(pick(images, count, offset)):
        want_same = (n + n // len(COMBOS)) % 2 == 0
        candidates = [
            m
            for m in images
            if m is not first
            and (getattr(m, attribute) == getattr(first, attribute)) == want_same
            and (not want_same or getattr(m, other) != getattr(first, other))
        ]
        if not candidates:  # pragma: no cover - every split has partners
            raise RuntimeError(f"no partner for {first.file}")
        pairs.append((first, candidates[(n * 7 + offset) % len(candidates)]))
    return pairs


# --------------------------------------------------------------------------
# The kinds of training sample
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    """One question and its answer template; ``about`` names the attributes the answer must get right.

    Templates are ``str.format``ted with ``shape``, ``colour``, ``size`` and
    ``Colour`` (capitalised) of the image; a two-image turn with ``shape1``,
    ``shape2``, ``colour1``, ``colour2``, ``size1``, ``size2``, ``tally`` and ``yes_no``. The first turn's
    question holds the image placeholder(s).
    """

    question: str
    answer: str
    about: tuple[str, ...]


@dataclass(frozen=True)
class Kind:
    """One kind of training sample: its id prefix, annotation file, turns and how many samples.

    ``count`` is a multiple of 24 (every (shape, colour, size) equally often);
    ``pair_attribute`` is set for two-image kinds (the attribute compared, the
    reply's yes / no being what is checked).
    """

    name: str
    fmt: str
    turns: tuple[Turn, ...]
    count: int
    offset: int
    pair_attribute: str | None = None

    @property
    def num_images(self) -> int:
        return 2 if self.pair_attribute else 1


MG: Final[str] = "minigpt4"
LLAVA: Final[str] = "llava"
# Samples per kind and file, multiples of 24 (one per (shape, colour, size)). The
# evaluation's two short questions also open the multi-turn kinds; sentence
# answers get as many samples as it takes the tiny LM to read the image in them
# too. Size gets its own short question, and every two-image answer names both
# images' size, colour and shape: with size asked in a few kinds only, the
# Q-Former, trained on far more colour and shape tokens, dropped size from its
# output before the LLM learnt to read it (one constant size reply). Comparing two
# images is learnt last, so it gets the most samples.
NUM_SHORT: Final[int] = 72
NUM_PER_KIND: Final[int] = 48
NUM_SIZE: Final[int] = 96
NUM_PER_PAIR_KIND: Final[int] = 192  # half "yes", half "no"
# A two-image answer: both images named (size, colour, shape; the attribute not
# compared differs in every "yes" pair, so naming the second image by copying the
# first fails and the second image is read), then a tally of the compared
# attribute's values, then the verdict. Each count is a sum of two lookups at
# fixed places, and the verdict is "some count is 2": a step-by-step read-out.
# (A bare 2-layer Qwen2 of the demo's width did not learn "X ... Y, so yes/no"
# from 48,000 such texts; with the tally it learnt after 3,000-5,000.)
PAIR_ANSWER: Final[str] = "A {size1} {colour1} {shape1} and a {size2} {colour2} {shape2}: {tally}, so {yes_no}."

KINDS: Final[tuple[Kind, ...]] = (
    # MiniGPT4Qwen format
    Kind("mg_colour", MG, (Turn(f"{MG_PLACEHOLDER} {COLOUR_QUESTION}", "{colour}", ("colour",)),), NUM_SHORT, 0),
    Kind("mg_shape", MG, (Turn(f"{MG_PLACEHOLDER} {SHAPE_QUESTION}", "{shape}", ("shape",)),), NUM_SHORT, 3),
    Kind("mg_size", MG, (Turn(f"{MG_PLACEHOLDER} How big is the shape?", "{size}", ("size",)),), NUM_SIZE, 7),
    Kind(
        "mg_caption", MG,
        (Turn(f"{MG_PLACEHOLDER} Describe the image briefly.", "A {size} {colour} {shape} on a light background.", ("size", "colour", "shape")),),
        NUM_PER_KIND, 1,
    ),
    Kind(
        "mg_phrased_colour", MG,
        (Turn(f"{MG_PLACEHOLDER} What is the colour of the object in this image?", "The object is {colour}.", ("colour",)),),
        NUM_PER_KIND, 2,
    ),
    Kind("mg_phrased_shape", MG, (Turn(f"{MG_PLACEHOLDER} Which shape is drawn here?", "A {shape} is drawn here.", ("shape",)),), NUM_PER_KIND, 3),
    Kind(
        "mg_multi_colour_shape", MG,
        (Turn(f"{MG_PLACEHOLDER} {COLOUR_QUESTION}", "{colour}", ("colour",)), Turn("And what shape is it?", "{shape}", ("shape",))),
        NUM_PER_KIND, 4,
    ),
    Kind(
        "mg_multi_shape_size", MG,
        (Turn(f"{MG_PLACEHOLDER} {SHAPE_QUESTION}", "{shape}", ("shape",)), Turn("How big is it?", "It is {size}.", ("size",))),
        NUM_PER_KIND, 5,
    ),
    Kind(
        "mg_pair", MG,
        (
            Turn(
                f"Image 1: {MG_PLACEHOLDER} Image 2: {MG_PLACEHOLDER} Do the two images show the same shape?",
                PAIR_ANSWER,
                ("yes_no",),
            ),
        ),
        NUM_PER_PAIR_KIND, 6, pair_attribute="shape",
    ),
    # LLaVA format
    Kind("llava_colour", LLAVA, (Turn(f"{LLAVA_PLACEHOLDER}\n{COLOUR_QUESTION}", "{colour}", ("colour",)),), NUM_SHORT, 6),
    Kind("llava_shape", LLAVA, (Turn(f"{LLAVA_PLACEHOLDER}\n{SHAPE_QUESTION}", "{shape}", ("shape",)),), NUM_SHORT, 9),
    Kind("llava_size", LLAVA, (Turn(f"{LLAVA_PLACEHOLDER}\nWhat size is the shape?", "{size}", ("size",)),), NUM_SIZE, 1),
    Kind(
        "llava_caption", LLAVA,
        (Turn(f"{LLAVA_PLACEHOLDER}\nGive a short description of this picture.", "It is a {size} {colour} {shape}.", ("size", "colour", "shape")),),
        NUM_PER_KIND, 7,
    ),
    Kind(
        "llava_phrased_shape", LLAVA,
        (Turn(f"{LLAVA_PLACEHOLDER}\nWhich shape can you see in this picture?", "I can see a {shape}.", ("shape",)),),
        NUM_PER_KIND, 8,
    ),
    Kind(
        "llava_phrased_colour", LLAVA,
        (Turn(f"{LLAVA_PLACEHOLDER}\nWhich colour does the object in the picture have?", "The object is {colour}.", ("colour",)),),
        NUM_PER_KIND, 9,
    ),
    Kind(
        "llava_multi_shape_colour", LLAVA,
        (Turn(f"{LLAVA_PLACEHOLDER}\n{SHAPE_QUESTION}", "{shape}", ("shape",)), Turn(COLOUR_QUESTION, "{colour}", ("colour",))),
        NUM_PER_KIND, 10,
    ),
    Kind(
        "llava_multi_size_name", LLAVA,
        (
            Turn(f"{LLAVA_PLACEHOLDER}\nHow big is the shape in this picture?", "The shape is {size}.", ("size",)),
            Turn("Name its colour and shape.", "A {colour} {shape}.", ("colour", "shape")),
        ),
        NUM_PER_KIND, 11,
    ),
    Kind(
        "llava_pair", LLAVA,
        (
            Turn(
                f"{LLAVA_PLACEHOLDER}\n{LLAVA_PLACEHOLDER}\nAre the shapes in these two pictures the same colour?",
                PAIR_ANSWER,
                ("yes_no",),
            ),
        ),
        NUM_PER_PAIR_KIND, 0, pair_attribute="colour",
    ),
)


def fields(meta: ImageMeta) -> dict[str, str]:
    """The template fields of one image."""
    return {"shape": meta.shape, "colour": meta.colour, "size": meta.size, "Colour": meta.colour.capitalize()}


def pair_fields(a: ImageMeta, b: ImageMeta, attribute: str) -> dict[str, str]:
    """The template fields of a pair: both images' attributes, a tally of ``attribute``'s values and whether it agrees."""
    values = SHAPES if attribute == "shape" else COLOUR_NAMES
    tally = ", ".join(f"{v} {(getattr(a, attribute) == v) + (getattr(b, attribute) == v)}" for v in values)
    return {
        "shape1": a.shape, "shape2": b.shape, "colour1": a.colour, "colour2": b.colour, "size1": a.size, "size2": b.size, "tally": tally,
        "yes_no": "yes" if getattr(a, attribute) == getattr(b, attribute) else "no",
    }


def kind_samples(kind: Kind, train: list[ImageMeta]) -> list[tuple[list[ImageMeta], dict[str, str]]]:
    """The images and template fields of every sample of ``kind``."""
    if kind.pair_attribute:
        return [([a, b], pair_fields(a, b, kind.pair_attribute)) for a, b in make_pairs(train, kind.pair_attribute, kind.count, kind.offset)]
    return [([m], fields(m)) for m in pick(train, kind.count, kind.offset)]


def mg_record(rid: str, image: str | list[str], instruction: str | list[str], output: str | list[str]) -> Record:
    return {"id": rid, "image": image, "instruction": instruction, "output": output}


def conversation(*turns: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


def llava_record(rid: str, image: str | list[str], *turns: str) -> Record:
    return {"id": rid, "image": image, "conversations": conversation(*turns)}


def build_records(metas: list[ImageMeta], fmt: str) -> list[Record]:
    """Every training sample of one annotation file (ids ``<kind>_<n>``).

    The kinds take turns (sample 0 of each kind, then sample 1 of each, ...),
    so that any leading slice of a file, such as the tests' 60-record subset,
    holds every kind: single- and multi-turn, one and two images.
    """
    train = metas[:NUM_TRAIN]
    per_kind = [(kind, kind_samples(kind, train)) for kind in KINDS if kind.fmt == fmt]
    turns = [(kind, n, sample) for kind, samples in per_kind for n, sample in enumerate(samples)]
    turns.sort(key=lambda item: item[1])  # stable: within one n, kinds stay in KINDS order
    records: list[Record] = []
    for kind, n, (images, values) in turns:
        rid = f"{kind.name}_{n:04d}"
        image: str | list[str] = [m.file for m in images] if len(images) > 1 else images[0].file
        questions = [t.question for t in kind.turns]
        answers = [t.answer.format(**values) for t in kind.turns]
        if fmt == MG:
            single = len(questions) == 1
            records.append(mg_record(rid, image, questions[0] if single else questions, answers[0] if single else answers))
        else:
            records.append(llava_record(rid, image, *(x for qa in zip(questions, answers) for x in qa)))
    return records


def build_minigpt4(metas: list[ImageMeta]) -> list[Record]:
    return build_records(metas, MG)


def build_llava(metas: list[ImageMeta]) -> list[Record]:
    return build_records(metas, LLAVA)


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
    train = metas[:NUM_TRAIN]
    for kind in KINDS:
        samples = kind_samples(kind, train)
        firsts = Counter((images[0].shape, images[0].colour, images[0].size) for images, _ in samples)
        if set(firsts) != set(COMBOS) or len(set(firsts.values())) != 1:
            raise AssertionError(f"{kind.name}: not every (shape, colour, size) equally often: {dict(firsts)}")
        if kind.pair_attribute:
            verdicts = Counter(values["yes_no"] for _, values in samples)
            if verdicts["yes"] != verdicts["no"]:
                raise AssertionError(f"{kind.name}: {dict(verdicts)}")


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
