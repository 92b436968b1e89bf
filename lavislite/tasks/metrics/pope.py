"""POPE (object hallucination): yes/no accuracy, precision, recall, F1 and yes-ratio, as POPE's ``evaluate.py`` counts them.

The official rule (AoiDragon/POPE ``evaluate.py``; LLaVA's ``eval_pope.py`` applies the same):

* a reply is cut at its first ``.`` (the text before it is kept), every ``,`` is deleted
  and the rest is split on single spaces (not on other white space: ``"No\\n"`` is one
  word, ``"No\\n"``, so it is not a "no");
* if one of the words is exactly ``No``, ``not`` or ``no`` the answer is *no*, otherwise *yes*;
* a label is *no* when it is the string ``"no"`` and *yes* otherwise;
* precision, recall and F1 are those of the *yes* class; the yes-ratio is the share of
  *predicted* yes (not of the labels, which is what lmms-eval reports).

Metrics are per split (``random``, ``popular``, ``adversarial``); the figure papers print
(LLaVA-1.5's 85.9) is the mean F1 over the three, which :func:`pope_mean` gives.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from ._ids import require_predictions

__all__ = ["pope_answer", "pope_mean", "pope_scores"]

_NO_WORDS = frozenset(["No", "not", "no"])


def pope_answer(reply: str) -> str:
    """``"yes"`` or ``"no"``: POPE's reading of a free-form reply.

    Args:
        reply: the model's text, as generated.

    Returns:
        ``"no"`` when a word of the first sentence is ``No``, ``not`` or ``no``, else ``"yes"``.
    """
    text = reply.split(".")[0] if "." in reply else reply
    words = text.replace(",", "").split(" ")
    return "no" if _NO_WORDS.intersection(words) else "yes"


def pope_scores(labels: Sequence[Mapping[str, Any]], predictions: Mapping[Hashable, str]) -> dict[str, Any]:
    """One POPE split scored by the official rule.

    Args:
        labels: the split's label lines (``coco_pope_<split>.json``, one object a line):
            ``{"question_id", "image", "text", "label"}``.
        predictions: question id -> the model's reply (raw text).

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1``, ``yes_ratio`` (0-1, unrounded),
        ``TP``, ``FP``, ``TN``, ``FN``, ``n`` and ``per_question`` (question id -> whether
        the parsed answer equals the label).

    Raises:
        ValueError: no labels, a repeated question id, or a question without a prediction.
    """
    if not labels:
        raise ValueError("no POPE label lines to score")
    ids = [line["question_id"] for line in labels]
    if len(set(ids)) != len(ids):
        raise ValueError("a POPE split repeats a question_id; score each split (random / popular / adversarial) on its own")
    require_predictions(ids, predictions, "POPE question")
    tp = fp = tn = fn = 0
    per_question: dict[Hashable, bool] = {}
    for line, question_id in zip(labels, ids):
        predicted_yes = pope_answer(predictions[question_id]) == "yes"
        label_yes = line["label"] != "no"
        per_question[question_id] = predicted_yes == label_yes
        if predicted_yes and label_yes:
            tp += 1
        elif predicted_yes:
            fp += 1
        elif label_yes:
            fn += 1
        else:
            tn += 1
    # The official script divides by TP + FP, which fails when no reply is a yes; that
    # split's precision (and F1) is 0 here instead of an exception.
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(labels)
    return {
        "accuracy": (tp + tn) / (tp + tn + fp + fn),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n,
        "TP": tp,
        "FP": fp,
        "TN": tn,
        "FN": fn,
        "n": n,
        "per_question": per_question,
    }


def pope_mean(per_split: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The means over splits that papers print: ``f1``, ``accuracy``, ``precision``, ``recall``, ``yes_ratio``.

    Args:
        per_split: split name -> :func:`pope_scores` result.
    """
    keys = ("f1", "accuracy", "precision", "recall", "yes_ratio")
    return {key: sum(float(s[key]) for s in per_split.values()) / len(per_split) for key in keys}
