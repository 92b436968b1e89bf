"""MME: acc + acc+ per subtask, perception and cognition totals, as the eval tool's ``calculation.py`` computes them.

The official rule (BradyFU/Awesome-Multimodal-Large-Language-Models, branch ``Evaluation``,
``eval_tool/calculation.py``):

* the prediction is lower-cased; exactly ``yes`` or ``no`` is that answer; otherwise
  ``yes`` anywhere in its first four characters gives yes, failing that ``no`` there gives
  no, and anything else is ``other`` (always wrong);
* each image has two questions on consecutive lines of its subtask's file: acc is the
  share of right lines, acc+ the share of images with both lines right;
* a subtask scores ``acc * 100 + acc+ * 100`` (at most 200); Perception sums ten
  subtasks, Cognition four.

The tool keeps each line's trailing newline on the prediction; that never changes the
answer (a newline neither makes nor breaks ``yes`` / ``no`` within the first four
characters), so the reply is read as given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MME_SUBTASKS", "mme_answer", "mme_scores"]

#: The subtasks of each group, in the tool's order.
MME_SUBTASKS: dict[str, tuple[str, ...]] = {
    "Perception": ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR"),
    "Cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}


def mme_answer(prediction: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"``: the tool's reading of a reply."""
    text = prediction.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_scores(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """MME scored by the official rule.

    Args:
        results: subtask -> its lines in the official file's order (two consecutive lines
            per image), each ``{"image", "question", "gt", "prediction"}`` with ``gt``
            ``Yes`` / ``No`` (any case). Subtasks not given are left out of the totals.

    Returns:
        ``{"Perception": {"total", "tasks": {subtask: score}}, "Cognition": {...},
        "per_question": {"<subtask>/<line>": bool}}`` (a group with no subtask given is
        left out); scores are in points (acc and acc+ x 100 each, unrounded).

    Raises:
        ValueError: an unknown subtask, an odd number of lines, or a ground truth that is not yes / no.
    """
    known = {task: group for group, tasks in MME_SUBTASKS.items() for task in tasks}
    unknown = [task for task in results if task not in known]
    if unknown:
        raise ValueError(f"unknown MME subtask(s) {', '.join(map(repr, unknown))}; MME has {', '.join(known)}")
    out: dict[str, Any] = {}
    per_question: dict[str, bool] = {}
    for group, tasks in MME_SUBTASKS.items():
        scores: dict[str, float] = {}
        for task in tasks:
            if task not in results:
                continue
            lines = list(results[task])
            if not lines or len(lines) % 2:
                raise ValueError(f"MME {task}: {len(lines)} line(s); every image has two questions on consecutive lines")
            right = []
            for k, line in enumerate(lines):
                gt = str(line["gt"]).lower()
                if gt not in ("yes", "no"):
                    raise ValueError(f"MME {task} line {k}: the answer must be Yes or No, got {line['gt']!r}")
                right.append(mme_answer(str(line["prediction"])) == gt)
                per_question[f"{task}/{k}"] = right[-1]
            acc = sum(right) / len(right)
            acc_plus = sum(right[i] and right[i + 1] for i in range(0, len(right), 2)) / (len(right) // 2)
            # Summed in the tool's order (0 + acc*100 + acc+*100), so the floats match its printout.
            scores[task] = 0 + acc * 100 + acc_plus * 100
        if scores:
            total = 0
            for value in scores.values():
                total += value
            out[group] = {"total": total, "tasks": scores}
    out["per_question"] = per_question
    return out
