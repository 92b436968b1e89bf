"""Scorers: one split's generated replies -> the benchmark's official metrics (registry kind ``scorer``).

A benchmark is a builder and a scorer: the builder reads the benchmark's files into
prompts whose samples carry what the rule needs (``references`` and the builder's
``extra`` fields), the generation task asks the model, and the scorer named by
``datasets.<name>.scorer`` rebuilds the benchmark's own objects from the per-sample
results and calls the official rule in ``tasks.metrics``. Each scorer:

* returns the metrics (the official names) with ``agg_metrics`` (= its headline);
* writes each sample's outcome into its result (``correct``, ``accuracy`` or ``score``),
  so ``results/<benchmark>_<split>.json`` shows how every sample was scored;
* names its ``headline`` (the number papers print) and the factor papers print it with.

A user's benchmark registers its own::

    @registry.register_scorer("my_bench")
    class MyScorer(Scorer):
        headline = "accuracy"

        def __call__(self, results, dataset):
            right = [r["prediction"].strip() == r["references"][0] for r in results]
            for r, ok in zip(results, right):
                r["correct"] = ok
            return {"accuracy": 100 * sum(right) / len(right), "agg_metrics": 100 * sum(right) / len(right)}
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from torch.utils.data import Dataset

from lavislite.common.registry import registry
from lavislite.tasks.metrics import (
    caption_agg_metrics,
    caption_evaluate,
    gqa_scores,
    mme_scores,
    pope_answer,
    pope_mean,
    pope_scores,
    scienceqa_scores,
    textvqa_scores,
    vizwiz_accuracy,
    vqa_accuracy,
)

Results = list[dict[str, Any]]


class Scorer:
    """Scores one split from its per-sample results (``{"id", "prediction", "references", **extra}``).

    Args:
        options: the run section (``run.*``), for scorers with options of their own
            (the caption scorers read ``run.caption_backend``); may be None.
    """

    #: The metric papers print, a ``/`` path into the metrics (``f1``, ``Perception/total``).
    headline: str = "agg_metrics"
    #: Papers print the headline times this (0-1 fractions as percents).
    headline_scale: float = 1.0

    def __init__(self, options: Any = None) -> None:
        self.options = options

    def __call__(self, results: Results, dataset: Dataset | None) -> dict[str, Any]:
        """The split's metrics, ``agg_metrics`` included; writes each sample's outcome into its result."""
        raise NotImplementedError

    def headline_value(self, metrics: dict[str, Any]) -> tuple[str, float] | None:
        """``(name, value as papers print it)`` of the headline metric, or None if the metrics lack it."""
        value = lookup_metric(metrics, self.headline)
        return None if value is None else (self.headline, float(value) * self.headline_scale)


def lookup_metric(metrics: dict[str, Any], path: str) -> float | None:
    """The number at a ``/`` path of nested metrics (``random/f1``), or None."""
    node: Any = metrics
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def numeric_paths(metrics: dict[str, Any], prefix: str = "") -> list[str]:
    """Every ``/`` path of a number in nested metrics (for messages that list what a name could be)."""
    paths: list[str] = []
    for key, value in metrics.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            paths += numeric_paths(value, path)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            paths.append(path)
    return paths


def _option(options: Any, key: str, default: Any) -> Any:
    return options.get(key, default) if options is not None and hasattr(options, "get") else default


@registry.register_scorer("caption")
class CaptionScorer(Scorer):
    """COCO caption metrics (BLEU-1..4, METEOR with Java, ROUGE-L, CIDEr); ``agg_metrics`` = CIDEr + BLEU-4, as LAVIS."""

    headline = "CIDEr"
    headline_scale = 100.0

    def __call__(self, results: Results, dataset: Dataset | None) -> dict[str, Any]:
        scores, backend, per_image = caption_evaluate(
            {r["id"]: r["references"] for r in results},
            {r["id"]: r["prediction"] for r in results},
            backend=_option(self.options, "caption_backend", "auto"),
        )
        for r in results:
            r["CIDEr"] = per_image[r["id"]]["CIDEr"]
        return {**scores, "agg_metrics": caption_agg_metrics(scores), "n_samples": len(results), "scorer": backend}


@registry.register_scorer("nocaps")
class NocapsScorer(CaptionScorer):
    """The caption metrics over all images and per domain (``in-domain``, ``near-domain``, ``out-domain``).

    Each domain is scored on its own images (CIDEr's IDF from that domain's references),
    as the nocaps evaluation server scores them; ``agg_metrics`` is the overall CIDEr.
    """

    def __call__(self, results: Results, dataset: Dataset | None) -> dict[str, Any]:
        overall = super().__call__(results, dataset)
        by_domain: dict[str, Results] = defaultdict(list)
        for r in results:
            by_domain[str(r["domain"])].append(r)
        for domain in sorted(by_domain):
            part = [dict(r) for r in by_domain[domain]]  # the per-image CIDEr stays the overall one
            scores = CaptionScorer(self.options)(part, dataset)
            overall[domain] = {k: v for k, v in scores.items() if k not in ("agg_metrics", "scorer")}
        overall["agg_metrics"] = overall["CIDEr"]
        return overall


@registry.register_scorer("vqa")
class VQAScorer(Scorer):
    """The VQAv2 accuracy (LAVIS's copy of the official evaluation); VQAv2 and OK-VQA. ``agg_metrics`` = overall."""

    headline = "overall"

    def __call__(self, results: Results, dataset: Dataset | None) -> dict[str, Any]:
        # The official rule leaves out each answer *dict* in turn and drops every dict
        # equal to it: without VQAv2's distinct answer_ids, nine equal "red" dicts
        # would all be dropped together (a right answer would score 10%).
        annotations = [
            {
                "question_id": r["id"],
                "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(r["references"])],
                "answer_type": r.get("answer_type", "other"),
                "question_type": r.get("question_type", ""),
            }
            for r in results
        ]
        accuracy = vqa_accuracy(annotations, {r["id"]: r["prediction"] for r in results})
        for r in results:
            r["accuracy"] = accuracy["per_question"][r["id"]]
        return {
            "overall": accuracy["overall"],
            "agg_metrics": accuracy["overall"],
            "n_samples": len(results),
            "perAnswerType": accuracy["perAnswerType"],
            "perQuestionType": accuracy["perQuestionType"],
        }


@registry.register_scorer("vizwiz")
class VizWizScorer(Scorer):
    """VizWiz-VQA accuracy by its own API ("unanswerable" an answer like any other); ``agg_metrics`` = overall."""

    headline = "overall"

    def __call__(self, results: Results, dataset: Dataset | None) -> dict[str, Any]:
        annotations = [
            {"image": r["id"], "answers": [{"answer": a} for a in r["references"]], "answer_type": r.get("answer_type", "other")}
            for r in results
        ]
        accuracy = vizwiz_accuracy(annotations, {r["id"]: r["prediction"] for r in results})
        for r in results:
            r["accuracy"] = accuracy["per_question"][r["id"]]
        return {"overall": accuracy["overall"], "agg_metrics": accuracy["overall"], "n_samples": len(results), "perAnswerType": accuracy["perAnswerType"]}


@registry.register_scorer("gqa")
class GQAScorer(Scorer):
    """GQA exact match after LLaVA's conversion, over the balanced questions; ``agg_metrics`` = accuracy (percent)."""

    headline = "accuracy"

    def __call__(self, results: Results, dataset: Dataset | None) -> dict[str, Any]:
        questions = {r["id"]: {"answer": r["references"][0], **r["gqa"]} for r in results}
        scores = gqa_scores(questions, {r["id"]: r["prediction"] for r in results})
        per_question = scores.pop("per_question")
        for r in results:
            r["correct"] = per_question[r["id"]]
        return {**scores, "agg_metrics": scores["accuracy"], "n_samples": len(results)}


@registry.register_scorer("textvqa")
class TextVQAScorer(Scorer):
    """TextVQA accuracy by MMF's evaluator (0-1, printed as a percent); ``agg_metrics`` = accuracy."""

    headline = "accuracy"
    headline_scale = 100.0

    def __call__(self, results: Results, dataset: Dataset | None) -> dict[str, Any]:
        scores = textvqa_scores([{"question_id": r["id"], "answers": r["references"]} for r in results], {r["id"]: r["prediction"] for r in results})
        for r in results:
            r["score"] = scores["per_question"][r["id"]]
        return {"accuracy": scores["accuracy"], "agg_metrics": scores["accuracy"], "n_samples": len(results)}


@registry.register_scorer("scienceqa")
class ScienceQAScorer(Scorer):
    """ScienceQA: LLaVA's letter extraction and (IMG) accuracy, ScienceQA's groups; ``agg_metrics`` = img_acc."""

    headline = "img_acc"

    def __call__(self, results: Results, dataset: Dataset | None) -> dict[str, Any]:
        problems = {str(r["id"]): r["problem"] for r in results}
        scores = scienceqa_scores(problems, {"test": list(problems)}, {str(r["id"]): r["prediction"] for r in results}, split="test")
        per_question, parsed = scores.pop("per_question"), scores.pop("parsed")
        for r in results:
            r["parsed"] = parsed[str(r["id"])]
            r["correct"] = per_question[str(r["id"])]
        return {**scores, "agg_metrics": scores["img_acc"], "n_samples": len(results)}


@registry.register_scorer("pope")
class POPEScorer(Scorer):
    """POPE per category (random / popular / adversarial) and their means; ``agg_metrics`` = the mean F1 (0-1)."""

    headline = "f1"
    headline_scale = 100.0

    def __call__(self, results: Results, dataset: Dataset | None) -> dict[str, Any]:
        by_category: dict[str, Results] = defaultdict(list)
        for r in results:
            by_category[str(r["category"])].append(r)
        per_category: dict[str, dict[str, Any]] = {}
        for category, rows in sorted(by_category.items()):
            labels = [{"question_id": r["question_id"], "image": "", "text": r.get("question", ""), "label": r["references"][0]} for r in rows]
            scores = pope_scores(labels, {r["question_id"]: r["prediction"] for r in rows})
            per_question = scores.pop("per_question")
            for r in rows:
                r["parsed"] = pope_answer(r["prediction"])
                r["correct"] = per_question[r["question_id"]]
            per_category[category] = scores
        means = pope_mean(per_category)
        return {**means, **per_category, "agg_metrics": means["f1"], "n_samples": len(results)}


@registry.register_scorer("mme")
class MMEScorer(Scorer):
    """MME by its eval tool: acc + acc+ per subtask, Perception and Cognition totals; ``agg_metrics`` = Perception (else Cognition)."""

    headline = "Perception/total"

    def __call__(self, results: Results, dataset: Dataset | None) -> dict[str, Any]:
        by_task: dict[str, Results] = defaultdict(list)
        for r in results:
            by_task[str(r["subtask"])].append(r)
        lines = {
            task: [{"image": r["image_name"], "question": r.get("question", ""), "gt": r["references"][0], "prediction": r["prediction"]} for r in sorted(rows, key=lambda r: r["line"])]
            for task, rows in by_task.items()
        }
        scores = mme_scores(lines)
        per_question = scores.pop("per_question")
        for r in results:
            r["correct"] = per_question[f"{r['subtask']}/{r['line']}"]
        main = scores.get("Perception", scores.get("Cognition"))
        return {**scores, "agg_metrics": main["total"] if main else 0.0, "n_samples": len(results)}

    def headline_value(self, metrics: dict[str, Any]) -> tuple[str, float] | None:
        for path in ("Perception/total", "Cognition/total"):
            value = lookup_metric(metrics, path)
            if value is not None:
                return path, value
        return None
