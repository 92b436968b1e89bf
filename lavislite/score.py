"""Score predictions made elsewhere with lavislite's benchmark scorers: ``lavislite-score BENCHMARK --annotations ... --predictions ...``.

    lavislite-score gqa --annotations testdev_balanced_questions.json --predictions answers/merge.jsonl
    lavislite-score pope --annotations coco_pope_random.json coco_pope_popular.json coco_pope_adversarial.json \\
        --predictions answers/merge.jsonl --questions llava_pope_test.jsonl
    lavislite-score scienceqa --annotations problems.json pid_splits.json --predictions answers/merge.jsonl
    python -m lavislite.score mme --annotations MME_Benchmark_release_version --predictions output/x/results/mme_test.json

``--annotations`` are the benchmark's own files, as its builder reads them (the same
list as ``build_info.annotations.<split>.storage``). ``--predictions`` is one of:

* an answers ``.jsonl`` of LLaVA's evaluation scripts (``{question_id, prompt, text}`` a line),
  matched to the annotations as LLaVA's ``eval_*.py`` match them (POPE by category,
  with ``--questions``; TextVQA by image and question; MME by subtask, image and question);
* a lavislite results file (``results/<benchmark>_<split>.json``: ``[{id, prediction, ...}]``);
* a list of ``{question_id, answer}`` (VQA's result format) or ``{questionId, prediction}`` (GQA's).

The metrics (the official names; the same functions and scorers as ``evaluate.py``)
are printed as JSON; ``--out`` also writes them with each question's outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from typing import Any

from lavislite.cli import run_entry
from lavislite.common.errors import DataError, UserError

BENCHMARKS = ("gqa", "okvqa", "vqav2", "textvqa", "vizwiz", "scienceqa", "pope", "mme", "nocaps", "flickr30k", "coco_caption")
# LLaVA appends these to a question; its converters strip them to find the question again.
LLAVA_SUFFIX = "Answer the question using a single word or phrase."


def read_predictions(path: str) -> list[dict[str, Any]]:
    """The prediction records of a file: ``{"id", "text", "prompt"}`` (prompt "" when the format has none)."""
    from lavislite.datasets.datasets.instruction_dataset import read_json_file

    if not os.path.isfile(path):
        raise DataError(f"--predictions {path}: not a file")
    data = read_json_file(path)
    if isinstance(data, dict):
        data = data.get("results", data.get("annotations", data))
    if not isinstance(data, list):
        raise DataError(f"--predictions {path}: expected a JSON list or JSON lines of predictions")
    records = []
    for k, record in enumerate(data):
        id_key = next((key for key in ("id", "question_id", "questionId", "image_id", "image") if key in record), None)
        text_key = next((key for key in ("prediction", "text", "answer", "caption") if key in record), None)
        if id_key is None or text_key is None or not isinstance(record[text_key], str):
            raise DataError(f"--predictions {path}[{k}]: no id (id, question_id, questionId) or no text (prediction, text, answer) in {sorted(record)}")
        records.append({"id": record[id_key], "text": record[text_key], "prompt": str(record.get("prompt", "")), "record": record})
    return records


def by_str(records: list[dict[str, Any]]) -> dict[str, str]:
    """Predictions keyed by ``str(id)`` (JSON files disagree on int vs str ids)."""
    return {str(r["id"]): r["text"] for r in records}


def retype(keys: list[Any], predictions: dict[str, str]) -> dict[Any, str]:
    """``predictions`` keyed by the annotation's own ids (int or str), for the scorers that compare ids as they are."""
    return {key: predictions[str(key)] for key in keys if str(key) in predictions}


def textvqa_question(prompt: str) -> str:
    """The question in one of LLaVA's TextVQA prompts (``eval_textvqa.py``'s ``prompt_processor``), lower-cased."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        found = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if found is None:
            raise DataError(f"a TextVQA prompt without 'Question: ... Short answer:': {prompt!r}")
        return found.group(1).lower()
    if "Reference OCR token: " in prompt and len(lines) == 3:
        return (lines[1] if prompt.startswith("Reference OCR token:") else lines[0]).lower()
    if len(lines) == 2:
        return lines[0].lower()
    raise DataError(f"a TextVQA prompt LLaVA's eval_textvqa.py does not read: {prompt!r}")


def _load(path: str) -> Any:
    from lavislite.datasets.datasets.instruction_dataset import read_json_file

    return read_json_file(path)


def _builder_samples(name: str, paths: list[str], split: str, images: str = "") -> list[Any]:
    """The benchmark's samples as its builder reads the files (ids, references and what its scorer needs)."""
    from lavislite.common.config import load_dataset_config
    from lavislite.common.registry import registry
    from lavislite.datasets.bad_samples import BuildProblems

    builder = registry.get_builder_class(name)(load_dataset_config(name, {"build_info": {"annotations": {split: {"storage": paths}}}}))
    builder.current_split = split
    problems = BuildProblems()
    samples = builder.read(paths, images, problems)
    problems.settle(len(samples) + len(problems), paths)
    return samples


def _with_scorer(name: str, samples: list[Any], predictions: dict[str, str], options: dict[str, Any]) -> dict[str, Any]:
    """Results as ``evaluate.py`` gathers them, scored by the benchmark's registered scorer."""
    from lavislite.common.config import load_dataset_config
    from lavislite.common.registry import registry

    missing = [s.id for s in samples if str(s.id) not in predictions]
    if missing:
        raise DataError(f"no prediction for {len(missing)} of {len(samples)} sample(s): {', '.join(map(repr, missing[:20]))}")
    results = [{"id": s.id, "prediction": predictions[str(s.id)], "references": s.references, **s.extra} for s in samples]
    scorer = registry.get_scorer_class(str(load_dataset_config(name).scorer))(options)
    metrics = scorer(results, None)
    outcome_keys = ("correct", "accuracy", "score", "CIDEr", "parsed")
    metrics["per_question"] = {str(r["id"]): {k: r[k] for k in outcome_keys if k in r} for r in results}
    return metrics


def score(benchmark: str, annotations: list[str], predictions_path: str, questions: str | None = None, split: str = "", caption_backend: str = "auto") -> dict[str, Any]:
    """The metrics of one prediction file on a benchmark, with ``per_question`` outcomes.

    Raises:
        DataError: predictions that do not match the annotations (named), or files not in the layout.
    """
    from lavislite.tasks import metrics as M

    if benchmark == "mme" and os.path.isdir(predictions_path):
        return M.mme_scores(read_mme_tool_results(predictions_path))
    records = read_predictions(predictions_path)
    preds = by_str(records)
    llava = any(r["record"].get("prompt") is not None and "question_id" in r["record"] for r in records)
    try:
        if benchmark == "gqa":
            questions_obj = _load(annotations[0])
            # Raw replies or GQA's converted predictions file alike: the conversion is idempotent.
            return M.gqa_scores(questions_obj, retype(list(questions_obj), preds))
        if benchmark in ("okvqa", "vqav2"):
            loaded = [_load(p) for p in annotations]
            annotated = next((d["annotations"] for d in loaded if isinstance(d, dict) and "annotations" in d), None)
            if annotated is None:
                annotated = next(d for d in loaded if isinstance(d, list))
            return M.vqa_accuracy(annotated, retype([a["question_id"] for a in annotated], preds))
        if benchmark == "vizwiz":
            annotated = _load(annotations[0])
            return M.vizwiz_accuracy(annotated, retype([a["image"] for a in annotated], preds))
        if benchmark == "scienceqa":
            loaded = [_load(p) for p in annotations]
            pid_splits = next(d for d in loaded if all(isinstance(v, list) for v in d.values()))
            problems = next(d for d in loaded if d is not pid_splits)
            return M.scienceqa_scores(problems, pid_splits, preds, split=split or "test")
        if benchmark == "textvqa":
            data = [e for p in annotations for e in (_load(p).get("data") or []) if isinstance(e, dict) and "question" in e]
            if llava and not any(str(e["question_id"]) in preds for e in data):
                # LLaVA's question file keys a TextVQA question by its image; the question is in the prompt.
                key_of = {(str(e["image_id"]), e["question"].lower()): e["question_id"] for e in data}
                preds = {str(key_of.get((str(r["id"]), textvqa_question(r["prompt"])))): r["text"] for r in records}
            return M.textvqa_scores(data, retype([e["question_id"] for e in data], preds))
        if benchmark == "pope":
            return _pope(annotations, records, questions)
        if benchmark == "mme":
            return _mme(annotations, records, preds, llava)
        if benchmark in ("nocaps", "flickr30k", "coco_caption"):
            samples = _builder_samples(benchmark, annotations, split or ("val" if benchmark == "nocaps" else "test"))
            return _with_scorer(benchmark, samples, preds, {"caption_backend": caption_backend})
    except (KeyError, ValueError, StopIteration) as exc:
        if isinstance(exc, UserError):
            raise
        raise DataError(f"{benchmark}: {exc}") from exc
    raise DataError(f"unknown benchmark {benchmark!r}; one of {', '.join(BENCHMARKS)}")


def read_mme_tool_results(folder: str) -> dict[str, list[dict[str, str]]]:
    """The MME eval tool's input: ``<subtask>.txt`` files of ``image<TAB>question<TAB>answer<TAB>prediction`` lines."""
    from lavislite.datasets.datasets.instruction_dataset import read_text

    results: dict[str, list[dict[str, str]]] = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".txt"):
            continue
        rows = []
        for lineno, line in enumerate(read_text(os.path.join(folder, name)).splitlines(), start=1):
            fields = line.split("\t")
            if len(fields) != 4:
                raise DataError(f"{os.path.join(folder, name)} line {lineno}: expected image<TAB>question<TAB>answer<TAB>prediction (the eval tool's input)")
            rows.append({"image": fields[0], "question": fields[1], "gt": fields[2], "prediction": fields[3]})
        results[name[: -len(".txt")]] = rows
    return results


def _pope(annotations: list[str], records: list[dict[str, Any]], questions: str | None) -> dict[str, Any]:
    """POPE per label file (category); LLaVA answers are split by the question file's category, in order, as ``eval_pope.py`` does."""
    from lavislite.datasets.builders.benchmark_builders import pope_category
    from lavislite.datasets.datasets.instruction_dataset import read_records
    from lavislite.tasks import metrics as M

    labels = {pope_category(p): [r for _, r in read_records(p, json_lines=True)] for p in annotations}
    preds = by_str(records)
    per_category: dict[str, dict[str, Any]] = {}
    if all(f"{category}/{line['question_id']}" in preds for category, lines in labels.items() for line in lines):
        for category, lines in labels.items():  # lavislite's ids: <category>/<question_id>
            per_category[category] = M.pope_scores(lines, {line["question_id"]: preds[f"{category}/{line['question_id']}"] for line in lines})
    else:
        if questions is None:
            if len(labels) != 1:
                raise DataError("LLaVA's POPE answers carry no category: give its question file (--questions llava_pope_test.jsonl)")
            by_category = {next(iter(labels)): [r["text"] for r in records]}
        else:
            category_of = {str(q["question_id"]): q.get("category") for _, q in read_records(questions, json_lines=True)}
            by_category = defaultdict(list)
            for r in records:
                by_category[str(category_of.get(str(r["id"])))].append(r["text"])
        for category, lines in labels.items():
            answers = by_category.get(category, [])
            if len(answers) != len(lines):
                raise DataError(f"POPE {category}: {len(answers)} answer(s) for {len(lines)} label line(s); eval_pope.py pairs them in order")
            per_category[category] = M.pope_scores(lines, {line["question_id"]: a for line, a in zip(lines, answers)})
    # One per_question for the file, keyed as lavislite keys POPE samples (<category>/<question_id>).
    per_question = {f"{c}/{q}": right for c, scores in per_category.items() for q, right in scores.pop("per_question").items()}
    return {**M.pope_mean(per_category), **per_category, "per_question": per_question}


def _mme(annotations: list[str], records: list[dict[str, Any]], preds: dict[str, str], llava: bool) -> dict[str, Any]:
    """MME from lavislite results (every field inside), the eval tool's filled lists, or LLaVA answers matched to the folder."""
    from lavislite.tasks import metrics as M

    first = records[0]["record"] if records else {}
    if {"subtask", "line", "references"} <= set(first):
        rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in sorted(records, key=lambda r: (r["record"]["subtask"], r["record"]["line"])):
            rec = r["record"]
            rows[rec["subtask"]].append({"image": rec.get("image_name", ""), "question": rec.get("question", ""), "gt": rec["references"][0], "prediction": r["text"]})
        return M.mme_scores(rows)
    samples = _builder_samples("mme", annotations, "test", annotations[0])
    if llava:
        # LLaVA's question id is "<subtask>/<image file>"; its prompt is the question plus the short-answer line.
        key_of = {(s.extra["subtask"], os.path.splitext(s.extra["image_name"])[0], s.extra["question"]): str(s.id) for s in samples}
        matched: dict[str, str] = {}
        for r in records:
            subtask, _, image = str(r["id"]).partition("/")
            question = r["prompt"].replace(LLAVA_SUFFIX, "").strip()
            key = key_of.get((subtask, os.path.splitext(os.path.basename(image))[0], question))
            if key is not None:
                matched[key] = r["text"]
        preds = matched
    return _with_scorer("mme", samples, preds, {})


def main(argv: list[str] | None = None) -> int:
    """Scores; prints the metrics as JSON. Returns the exit code (a user error raises; ``cli`` reports it)."""
    parser = argparse.ArgumentParser(prog="lavislite-score", description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark", choices=BENCHMARKS)
    parser.add_argument("--annotations", nargs="+", required=True, help="the benchmark's own files (or folder, for MME)")
    parser.add_argument("--predictions", required=True, help="LLaVA answers .jsonl, a lavislite results file, or VQA / GQA result lists")
    parser.add_argument("--questions", default=None, help="POPE with LLaVA answers: LLaVA's question file (its categories)")
    parser.add_argument("--split", default="", help="ScienceQA's pid_splits split (test), Karpathy's split (test), ...")
    parser.add_argument("--caption-backend", default="auto", choices=["auto", "java", "python"])
    parser.add_argument("--out", default=None, help="also write the metrics and each question's outcome to this JSON file")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    for path in args.annotations:
        if not os.path.exists(path):
            raise DataError(f"--annotations {path}: not found")
    metrics = score(args.benchmark, list(args.annotations), args.predictions, args.questions, args.split, args.caption_backend)
    if args.out:
        from lavislite.common.io import atomic_write_json

        atomic_write_json(args.out, metrics)
    shown = {k: v for k, v in metrics.items() if k not in ("per_question", "parsed")}
    print(json.dumps(shown, indent=1, ensure_ascii=False))
    return 0


def cli() -> None:
    """The ``lavislite-score`` console script."""
    sys.exit(run_entry(main))


if __name__ == "__main__":
    cli()
