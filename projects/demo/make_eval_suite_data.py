"""Write the demo's held-out images as benchmarks, each in its official release layout.

The 25 held-out test images of the demo (``data/metadata.json``, split ``eval``) are asked
about as each benchmark asks about its own images, in the files each benchmark ships:

* ``pope``: ``coco_pope_{random,popular,adversarial}.json``, "Is there a <colour> <shape>
  in the image?" (yes for the image's own object; no for another: any other in
  ``random``, the same shape in another colour in ``popular``, the same colour as
  another shape in ``adversarial``);
* ``gqa``: ``testdev_balanced_questions.json``, the demo's two short-answer questions
  (colour, shape) and a yes/no one ("Is the shape <colour>?") per image;
* ``scienceqa``: ``problems.json`` + ``pid_splits.json``, "Which shape is in the
  image?" with three choices, images as ``test/<pid>/image.png``, and a few text-only
  problems (left out of ScienceQA-IMG);
* ``okvqa``: the demo's VQA questions (``eval_vqa.json``) in the VQA format pair of files;
* ``flickr30k``: the demo's captions (``eval_caption.json``) in Karpathy's ``dataset_flickr30k.json``;
* and, for the tests, ``textvqa``, ``vizwiz``, ``mme`` and ``nocaps`` (:func:`write_layouts`).

Each ``write_<benchmark>`` returns the ``build_info`` that reads what it wrote. Usage::

    python projects/demo/make_eval_suite_data.py            # data/suite/{pope,gqa,scienceqa,okvqa,flickr30k}

Pillow (for ScienceQA's PNG images) and the standard library; the JSON is
deterministic (no randomness: every choice follows the image's index).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
COLOUR_QUESTION = "What colour is the shape?"
SHAPE_QUESTION = "What shape is in the image?"
DEMO_LAYOUTS = ("pope", "gqa", "scienceqa", "okvqa", "flickr30k")
# Keys a config needs beside build_info to read what this script writes (the demo's images keep their names).
DATASET_KEYS: dict[str, dict[str, Any]] = {"okvqa": {"image_pattern": "shape_{image_id:03d}.jpg"}}

Meta = dict[str, Any]


def held_out(data: Path = DATA) -> list[Meta]:
    """The demo's held-out test images: ``{file, shape, colour, size, index}``."""
    metas = json.loads((data / "metadata.json").read_text())
    return [{**m, "index": int(m["file"][len("shape_") : -len(".jpg")])} for m in metas if m["split"] == "eval"]


def _write(path: Path, data: Any, lines: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Compact, as the official files are (and the committed demo files stay small).
    text = "".join(json.dumps(r) + "\n" for r in data) if lines else json.dumps(data, separators=(",", ":"))
    path.write_text(text, encoding="utf-8")


def _stem(meta: Meta) -> str:
    return meta["file"][: -len(".jpg")]


def write_pope(out: Path, metas: list[Meta], images: Path) -> dict[str, Any]:
    """POPE's three label files, one question per image and category, yes and no in turn."""
    files = []
    for category in ("random", "popular", "adversarial"):
        lines = []
        for k, m in enumerate(metas):
            colour, shape = m["colour"], m["shape"]
            if k % 2 == 0:
                label = "yes"
            else:
                label = "no"
                if category == "random":
                    colour, shape = COLOURS[(COLOURS.index(colour) + 1 + k % 3) % 4], SHAPES[(SHAPES.index(shape) + 1 + k % 2) % 3]
                elif category == "popular":
                    colour = COLOURS[(COLOURS.index(colour) + 1 + k % 3) % 4]
                else:
                    shape = SHAPES[(SHAPES.index(shape) + 1 + k % 2) % 3]
            lines.append({"question_id": k + 1, "image": m["file"], "text": f"Is there a {colour} {shape} in the image?", "label": label})
        path = out / f"coco_pope_{category}.json"
        _write(path, lines, lines=True)
        files.append(str(path))
    return {"annotations": {"test": {"storage": files}}, "images": {"storage": str(images)}}


def _gqa_question(qid: str, m: Meta, question: str, answer: str, structural: str, semantic_type: str, ops: list[tuple[str, str]], group: str | None) -> tuple[str, Meta]:
    semantic = [{"operation": op, "argument": arg, "dependencies": [i - 1] if i else []} for i, (op, arg) in enumerate(ops)]
    return qid, {
        "semantic": semantic, "entailed": [], "equivalent": [qid], "question": question, "imageId": _stem(m), "isBalanced": True,
        "groups": {"global": group, "local": None}, "answer": answer, "semanticStr": "->".join(f"{op}: {arg}" for op, arg in ops),
        "annotations": {"answer": {}, "fullAnswer": {}, "question": {}},
        "types": {"detailed": f"{semantic_type}{structural.capitalize()}", "semantic": semantic_type, "structural": structural},
        "fullAnswer": f"The answer is {answer}.",
    }  # fmt: skip


def write_gqa(out: Path, metas: list[Meta], images: Path, per_image: int = 3) -> dict[str, Any]:
    """GQA's ``testdev_balanced_questions.json``: colour and shape (open), "Is the shape <colour>?" (binary)."""
    questions = {}
    for m in metas:
        n = m["index"]
        made = [
            _gqa_question(f"{n}0", m, COLOUR_QUESTION, m["colour"], "query", "attr", [("select", "shape (0)"), ("query", "color")], "color"),
            _gqa_question(f"{n}1", m, SHAPE_QUESTION, m["shape"], "query", "cat", [("select", "shape (0)"), ("query", "name")], "shape"),
        ]
        asked = m["colour"] if n % 2 else COLOURS[(COLOURS.index(m["colour"]) + 1) % 4]
        made.append(_gqa_question(f"{n}2", m, f"Is the shape {asked}?", "yes" if asked == m["colour"] else "no", "verify", "attr",
                                  [("select", "shape (0)"), ("verify color", asked)], None))
        questions.update(made[:per_image])
    path = out / "testdev_balanced_questions.json"
    _write(path, questions)
    return {"annotations": {"testdev": {"storage": str(path)}}, "images": {"storage": str(images)}}


def write_scienceqa(out: Path, metas: list[Meta], text_only: int = 3) -> dict[str, Any]:
    """ScienceQA's ``problems.json`` + ``pid_splits.json``; each image problem's picture as ``images/test/<pid>/image.png``."""
    from PIL import Image

    problems, test = {}, []
    for k, m in enumerate(metas):
        pid = str(5000 + m["index"])
        choices = [SHAPES[(SHAPES.index(m["shape"]) + j + k) % 3] for j in range(3)]
        target = out / "images" / "test" / pid / "image.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(DATA / "images" / m["file"]) as image:
            # A 64-colour palette keeps each PNG near 2 KB (one flat shape on a flat background).
            image.convert("RGB").quantize(colors=64).save(target, format="PNG", optimize=True)
        problems[pid] = {
            "question": "Which shape is in the image?", "choices": choices, "answer": choices.index(m["shape"]),
            "hint": "The picture shows one shape." if k % 2 else "", "image": "image.png", "task": "closed choice",
            "grade": "grade2" if k % 2 else "grade7", "subject": "natural science", "topic": "physics", "category": "Shapes",
            "skill": "Identify shapes", "lecture": "", "solution": f"The shape is a {m['shape']}.", "split": "test",
        }  # fmt: skip
        test.append(pid)
    for j in range(text_only):  # not in ScienceQA-IMG: the builder leaves them out
        pid = str(4000 + j)
        problems[pid] = {
            "question": "Which of these has three sides?", "choices": ["circle", "triangle"], "answer": 1, "hint": "", "image": None,
            "task": "closed choice", "grade": "grade1", "subject": "natural science", "topic": "physics", "category": "Shapes",
            "skill": "Identify shapes", "lecture": "", "solution": "", "split": "test",
        }  # fmt: skip
        test.append(pid)
    _write(out / "problems.json", problems)
    _write(out / "pid_splits.json", {"train": [], "val": [], "test": test, "minival": []})
    return {
        "annotations": {"test": {"storage": [str(out / "problems.json"), str(out / "pid_splits.json")]}},
        "images": {"storage": str(out / "images")},
    }


def write_okvqa(out: Path, metas: list[Meta], images: Path, data: Path = DATA) -> dict[str, Any]:
    """The demo's VQA questions about these images as OK-VQA's questions + annotations files (COCO-style ids)."""
    files = {m["file"] for m in metas}
    records = [r for r in json.loads((data / "eval_vqa.json").read_text()) if r["image"] in files]
    questions = [{"image_id": int(r["image"][len("shape_") : -len(".jpg")]), "question": r["question"], "question_id": r["question_id"]} for r in records]
    annotations = [
        {
            "image_id": q["image_id"], "question_id": q["question_id"], "question_type": r["question_type"], "answer_type": r["answer_type"],
            "answers": [{"answer_id": i + 1, "raw_answer": a, "answer_confidence": "yes", "answer": a} for i, a in enumerate(r["answer"])],
            "confidence": 3,
        }  # fmt: skip
        for q, r in zip(questions, records)
    ]
    base = {"license": {"name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}, "data_subtype": "val2014", "info": {"description": "lavislite demo"}}
    _write(out / "OpenEnded_mscoco_val2014_questions.json", {**base, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions})
    _write(out / "mscoco_val2014_annotations.json", {**base, "data_type": "mscoco", "annotations": annotations})
    return {
        "annotations": {"val": {"storage": [str(out / "OpenEnded_mscoco_val2014_questions.json"), str(out / "mscoco_val2014_annotations.json")]}},
        "images": {"storage": str(images)},
    }


def write_flickr30k(out: Path, metas: list[Meta], images: Path, data: Path = DATA) -> dict[str, Any]:
    """The demo's captions about these images in Karpathy's ``dataset_flickr30k.json`` (split ``test``)."""
    captions = {r["image"]: r["caption"] for r in json.loads((data / "eval_caption.json").read_text())}
    entries, sentid = [], 0
    for m in metas:
        sentences = []
        for raw in captions[m["file"]]:
            sentences.append({"tokens": raw.rstrip(".").split(), "raw": raw, "imgid": m["index"], "sentid": sentid})
            sentid += 1
        entries.append({"sentids": [s["sentid"] for s in sentences], "imgid": m["index"], "sentences": sentences, "split": "test", "filename": m["file"]})
    path = out / "dataset_flickr30k.json"
    _write(path, {"images": entries, "dataset": "flickr30k"})
    return {"annotations": {"test": {"storage": str(path)}}, "images": {"storage": str(images)}}


def write_textvqa(out: Path, metas: list[Meta], images: Path) -> dict[str, Any]:
    """TextVQA's ``TextVQA_0.5.1_val.json`` (ten answers, OCR tokens per entry) asking the colour."""
    data = []
    for m in metas:
        answers = [m["colour"]] * 7 + [m["colour"].capitalize()] * 2 + ["unanswerable"]
        data.append({
            "question": COLOUR_QUESTION.lower(), "image_id": _stem(m), "image_classes": ["Shape"], "flickr_original_url": "", "flickr_300k_url": "",
            "image_width": 64, "image_height": 64, "answers": answers, "question_tokens": COLOUR_QUESTION.lower().rstrip("?").split(),
            "question_id": 30000 + m["index"], "set_name": "val", "ocr_tokens": [m["shape"]] if m["index"] % 2 else [],
        })  # fmt: skip
    path = out / "TextVQA_0.5.1_val.json"
    _write(path, {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data})
    return {"annotations": {"val": {"storage": str(path)}}, "images": {"storage": str(images)}}


def write_vizwiz(out: Path, metas: list[Meta], images: Path) -> dict[str, Any]:
    """VizWiz's ``val.json``: the colour, some questions mostly "unanswerable" (as blurry photos are)."""
    records = []
    for m in metas:
        unanswerable = m["index"] % 3 == 0
        answers = ["unanswerable"] * 6 + [m["colour"]] * 4 if unanswerable else [m["colour"]] * 8 + ["unanswerable"] * 2
        records.append({
            "image": m["file"], "question": "What colour is this?", "answerable": 0 if unanswerable else 1,
            "answer_type": "unanswerable" if unanswerable else "other",
            "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers],
        })  # fmt: skip
    path = out / "val.json"
    _write(path, records)
    return {"annotations": {"val": {"storage": str(path)}}, "images": {"storage": str(images)}}


def write_mme(out: Path, metas: list[Meta]) -> dict[str, Any]:
    """MME's release folder: ``color/`` with images beside their ``.txt``, ``existence/`` with ``images/`` + ``questions_answers_YN/``.

    Every image has a yes and a no question, on consecutive lines of its file.
    """
    root = out / "MME_Benchmark_release_version"
    for k, m in enumerate(metas):
        if k % 2 == 0:
            image_dir, qa_dir = root / "color", root / "color"
            other = COLOURS[(COLOURS.index(m["colour"]) + 1) % 4]
            lines = [f"Is the shape {m['colour']}? Please answer yes or no.\tYes", f"Is the shape {other}? Please answer yes or no.\tNo"]
        else:
            image_dir, qa_dir = root / "existence" / "images", root / "existence" / "questions_answers_YN"
            other = SHAPES[(SHAPES.index(m["shape"]) + 1) % 3]
            lines = [f"Is there a {other} in this image? Please answer yes or no.\tNo", f"Is there a {m['shape']} in this image? Please answer yes or no.\tYes"]
        image_dir.mkdir(parents=True, exist_ok=True)
        qa_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DATA / "images" / m["file"], image_dir / m["file"])
        (qa_dir / f"{_stem(m)}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"annotations": {"test": {"storage": str(root)}}, "images": {"storage": str(root)}}


def write_nocaps(out: Path, metas: list[Meta], images: Path, data: Path = DATA) -> dict[str, Any]:
    """NoCaps' ``nocaps_val_4500_captions.json`` (COCO format): circles in-domain, squares near-domain, triangles out-domain."""
    captions = {r["image"]: r["caption"] for r in json.loads((data / "eval_caption.json").read_text())}
    domain = {"circle": "in-domain", "square": "near-domain", "triangle": "out-domain"}
    image_rows, annotations = [], []
    for m in metas:
        image_rows.append({"id": m["index"], "file_name": m["file"], "height": 64, "width": 64, "domain": domain[m["shape"]], "open_images_id": _stem(m)})
        annotations += [{"image_id": m["index"], "id": len(annotations) + k, "caption": c} for k, c in enumerate(captions[m["file"]])]
    path = out / "nocaps_val_4500_captions.json"
    _write(path, {"licenses": [], "info": {"description": "lavislite demo"}, "images": image_rows, "annotations": annotations})
    return {"annotations": {"val": {"storage": str(path)}}, "images": {"storage": str(images)}}


def write_layouts(out: Path, names: tuple[str, ...], sizes: dict[str, int] | None = None, data: Path = DATA) -> dict[str, dict[str, Any]]:
    """Writes the named benchmarks under ``out/<name>/``; returns ``{name: build_info}``.

    Args:
        out: the folder to write into.
        names: benchmarks among pope, gqa, scienceqa, okvqa, flickr30k, textvqa, vizwiz, mme, nocaps.
        sizes: how many held-out images each benchmark asks about (default: all 25).
        data: the demo data folder (``metadata.json``, ``images/``, ``eval_*.json``).
    """
    metas = held_out(data)
    images = data / "images"
    infos = {}
    for name in names:
        chosen = metas[: (sizes or {}).get(name, len(metas))]
        folder = out / name
        if name == "scienceqa":
            infos[name] = write_scienceqa(folder, chosen)
        elif name == "mme":
            infos[name] = write_mme(folder, chosen)
        elif name in ("okvqa", "flickr30k", "nocaps"):
            infos[name] = globals()[f"write_{name}"](folder, chosen, images, data)
        else:
            infos[name] = globals()[f"write_{name}"](folder, chosen, images)
    return infos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=DATA / "suite")
    args = parser.parse_args()
    shutil.rmtree(args.out_dir, ignore_errors=True)
    write_layouts(args.out_dir, DEMO_LAYOUTS)
    print(f"wrote {', '.join(DEMO_LAYOUTS)} under {args.out_dir}")


if __name__ == "__main__":
    main()
