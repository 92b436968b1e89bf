"""GQA: exact-match accuracy over the balanced questions, as LLaVA's converter and GQA's ``eval.py`` compute it.

The pipeline LLaVA-1.5 reports (``scripts/convert_gqa_for_eval.py`` then GQA ``eval.py
--tier testdev_balanced``): the reply loses its trailing periods and is lower-cased
(``text.rstrip('.').lower()``, nothing else: no strip of spaces or newlines), then
compared with the question's ``answer`` for equality. Only ``isBalanced`` questions count;
``open`` are those whose structural type is ``query``, the others ``binary``. Scores are
percents. Validity, plausibility, consistency and grounding need the scene graphs and
choices files, which testdev does not have, so they are not computed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping
from typing import Any

from ._ids import require_predictions

__all__ = ["gqa_answer", "gqa_scores"]

# Operations that do not add a reasoning step (GQA eval.py's getStepsNum).
_NOT_A_STEP = ("exist", "query: name", "choose name")


def gqa_answer(reply: str) -> str:
    """LLaVA's conversion of a reply into a GQA prediction: trailing periods off, lower case."""
    return reply.rstrip(".").lower()


def _steps(question: Mapping[str, Any]) -> int:
    return len([c for c in question["semantic"] if not any(o in f"{c['operation']}: {c['argument']}" for o in _NOT_A_STEP)])


def _mean(values: list[float]) -> float:
    return float(sum(values)) / len(values) if values else 0.0


def _chi_square(gold: Mapping[str, Mapping[str, int]], predicted: Mapping[str, Mapping[str, int]]) -> float:
    """GQA's answer-distribution score: chi-square of predicted vs gold answers per question group, weighted by group size."""
    total_score = total = 0.0
    for group, answers in gold.items():
        score = overall = 0.0
        for answer, expected in answers.items():
            observed = predicted.get(group, {}).get(answer, 0)
            score += (float(observed - expected) ** 2) / expected
            overall += expected
        total_score += score * overall
        total += overall
    return total_score / total if total else 0.0


def gqa_scores(questions: Mapping[Hashable, Mapping[str, Any]], predictions: Mapping[Hashable, str]) -> dict[str, Any]:
    """GQA scored by the official pipeline.

    Args:
        questions: ``testdev_balanced_questions.json`` (question id -> ``{imageId,
            question, answer, isBalanced, types: {structural, semantic}, semantic, groups}``).
        predictions: question id -> the model's raw reply (normalised here as LLaVA's converter does).

    Returns:
        ``accuracy``, ``binary``, ``open`` (percent), ``accuracyPerStructuralType``,
        ``accuracyPerSemanticType``, ``accuracyPerSteps``, ``accuracyPerLength``
        (key -> ``[percent, n]``), ``distribution`` (chi-square / 100, lower is better),
        ``n`` (balanced questions scored) and ``per_question`` (question id -> exact match,
        for every question with a prediction, balanced or not).

    Raises:
        ValueError: a balanced question without a prediction (as ``eval.py``).
    """
    require_predictions([q for q, question in questions.items() if question.get("isBalanced")], predictions, "GQA question")
    scores: dict[str, list[float]] = {"accuracy": [], "binary": [], "open": []}
    detailed: dict[str, dict[str, list[float]]] = {
        name: defaultdict(list) for name in ("accuracyPerStructuralType", "accuracyPerSemanticType", "accuracyPerSteps", "accuracyPerLength")
    }
    gold_dist: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    predicted_dist: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    per_question: dict[Hashable, bool] = {}
    for qid, question in questions.items():
        if qid not in predictions:
            continue  # an unbalanced question may go unanswered
        predicted = gqa_answer(predictions[qid])
        gold = question["answer"]
        per_question[qid] = predicted == gold
        if not question.get("isBalanced"):
            continue
        score = float(per_question[qid])
        scores["accuracy"].append(score)
        structural = question["types"]["structural"]
        scores["open" if structural == "query" else "binary"].append(score)
        detailed["accuracyPerStructuralType"][structural].append(score)
        detailed["accuracyPerSemanticType"][question["types"]["semantic"]].append(score)
        detailed["accuracyPerSteps"][str(_steps(question))].append(score)
        detailed["accuracyPerLength"][str(len(question["question"].split()))].append(score)
        group = (question.get("groups") or {}).get("global")
        if group is not None:
            gold_dist[group][gold] += 1
            predicted_dist[group][predicted] += 1
    out: dict[str, Any] = {name: _mean(values) * 100 for name, values in scores.items()}
    for name, by_key in detailed.items():
        out[name] = {key: [_mean(values) * 100, len(values)] for key, values in by_key.items()}
    out["distribution"] = _chi_square(gold_dist, predicted_dist) / 100
    out["n"] = len(scores["accuracy"])
    out["per_question"] = per_question
    return out
