"""ScienceQA: LLaVA's answer extraction and accuracy (overall and IMG), and ScienceQA's accuracy per group.

Extraction (LLaVA ``eval_science_qa.py``, options ``A``-``E``): a reply that is exactly
one option letter is that answer; else a reply of three or more characters that starts
with a letter followed by ``". "``; else the single match of ``The answer is ([A-Z]).``;
else ``FAILED``. The letter counts only if it is among the first ``len(choices)`` letters.
A problem without a prediction is ``FAILED`` and, as in LLaVA (whose prompt is then
"Unknown"), not part of the IMG subset.

``acc`` and ``img_acc`` are LLaVA's (percent over the split's problems; over those with
an image and a prediction). The group accuracies are ScienceQA's ``get_scores``
(``tools/evaluate_acc.py``), over the scored split's problems (the tool takes the
problems whose ``split`` field is ``test``: the same ones for the test split);
the official code rounds them to strings with two decimals and gives ``-1`` for an empty
group: here they are unrounded percents and an empty group is left out.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

__all__ = ["SCIENCEQA_OPTIONS", "SCIENCEQA_TOPICS", "scienceqa_answer", "scienceqa_scores"]

SCIENCEQA_OPTIONS = ("A", "B", "C", "D", "E")
# ScienceQA's topics, in get_scores' order.
SCIENCEQA_TOPICS = (
    "punctuation", "literacy-in-science", "verbs", "pronouns", "civics", "culture", "word-study", "economics",
    "physics", "units-and-measurement", "science-and-engineering-practices", "reading-comprehension",
    "global-studies", "grammar", "figurative-language", "us-history", "writing-strategies", "world-history",
    "reference-skills", "biology", "earth-science", "phonological-awareness", "capitalization", "chemistry",
    "vocabulary", "geography",
)  # fmt: skip
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
_GRADES_1_6 = {f"grade{g}" for g in range(1, 7)}
_GRADES_7_12 = {f"grade{g}" for g in range(7, 13)}


def scienceqa_answer(reply: str | None) -> str:
    """The option letter LLaVA reads from a reply, or ``"FAILED"`` (also for no reply)."""
    if reply is None:
        return "FAILED"
    if reply in SCIENCEQA_OPTIONS:
        return reply
    if len(reply) >= 3 and reply[0] in SCIENCEQA_OPTIONS and reply[1:3] == ". ":
        return reply[0]
    found = _ANSWER_IS.findall(reply)
    return found[0] if len(found) == 1 else "FAILED"


def _predicted_index(letter: str, n_choices: int) -> int:
    return SCIENCEQA_OPTIONS.index(letter) if letter in SCIENCEQA_OPTIONS[:n_choices] else -1


def scienceqa_scores(
    problems: Mapping[str, Mapping[str, Any]],
    pid_splits: Mapping[str, Sequence[str]],
    predictions: Mapping[Hashable, str],
    split: str = "test",
) -> dict[str, Any]:
    """ScienceQA scored as LLaVA and ScienceQA's own tool score it.

    Args:
        problems: ``problems.json`` (pid -> ``{question, choices, answer, hint, image,
            subject, topic, grade, split, ...}``).
        pid_splits: ``pid_splits.json`` (split -> pids).
        predictions: pid -> the model's reply; a problem of the split without one counts as FAILED.
        split: the split of ``pid_splits`` to score.

    Returns:
        ``acc`` and ``img_acc`` (LLaVA's, percent), ``correct``, ``count``,
        ``img_correct``, ``img_count``; ScienceQA's groups ``acc_average``,
        ``acc_natural`` / ``acc_social`` / ``acc_language``, ``acc_has_text``,
        ``acc_has_image``, ``acc_no_context``, ``acc_grade_1_6``, ``acc_grade_7_12`` and
        ``acc_<topic>`` (unrounded percents; empty groups left out); ``per_question``
        (pid -> right or not) and ``parsed`` (pid -> the letter read, or FAILED).

    Raises:
        KeyError: a pid of the split that ``problems`` does not have, or a split ``pid_splits`` lacks.
    """
    if split not in pid_splits:
        raise KeyError(f"pid_splits has no split {split!r} (it has {', '.join(pid_splits)})")
    pids = [str(p) for p in pid_splits[split]]
    if not pids:
        raise ValueError(f"ScienceQA split {split!r} is empty")
    unknown = [p for p in pids if p not in problems]
    if unknown:
        raise KeyError(f"pid(s) of split {split!r} not in problems.json: {', '.join(unknown[:20])}")
    by_str = {str(k): v for k, v in predictions.items()}
    per_question: dict[str, bool] = {}
    parsed: dict[str, str] = {}
    predicted: dict[str, int] = {}
    img_right = img_count = 0
    for pid in pids:
        problem = problems[pid]
        letter = scienceqa_answer(by_str.get(pid))
        index = _predicted_index(letter, len(problem["choices"]))
        parsed[pid], predicted[pid] = letter, index
        per_question[pid] = index == problem["answer"]
        # LLaVA's IMG subset: its prompt carries <image>, which a problem without a prediction's does not.
        if problem.get("image") and pid in by_str:
            img_count += 1
            img_right += per_question[pid]
    correct = sum(per_question.values())
    out: dict[str, Any] = {
        "acc": correct / len(pids) * 100,
        "img_acc": img_right / img_count * 100 if img_count else 0.0,
        "correct": correct,
        "count": len(pids),
        "img_correct": img_right,
        "img_count": img_count,
    }
    out.update(_groups(problems, predicted, len(pids)))
    out["per_question"] = per_question
    out["parsed"] = parsed
    return out


def _groups(problems: Mapping[str, Mapping[str, Any]], predicted: Mapping[str, int], num: int) -> dict[str, float]:
    """ScienceQA's ``get_scores``, over the scored split's problems (the tool reads those whose ``split`` is test)."""
    rows = [(problems[pid], index == problems[pid]["answer"]) for pid, index in predicted.items()]

    def acc(test: Any) -> float | None:
        picked = [right for problem, right in rows if test(problem)]
        return sum(picked) / len(picked) * 100 if picked else None

    groups: dict[str, float | None] = {
        "acc_natural": acc(lambda p: p.get("subject") == "natural science"),
        "acc_social": acc(lambda p: p.get("subject") == "social science"),
        "acc_language": acc(lambda p: p.get("subject") == "language science"),
        "acc_has_text": acc(lambda p: bool(p.get("hint"))),
        "acc_has_image": acc(lambda p: bool(p.get("image"))),
        "acc_no_context": acc(lambda p: not p.get("hint") and not p.get("image")),
        "acc_grade_1_6": acc(lambda p: p.get("grade") in _GRADES_1_6),
        "acc_grade_7_12": acc(lambda p: p.get("grade") in _GRADES_7_12),
        # Divided by the split's size, as the tool does (not by the test rows found).
        "acc_average": sum(right for _, right in rows) / num * 100,
    }
    for topic in SCIENCEQA_TOPICS:
        groups[f"acc_{topic}"] = acc(lambda p, t=topic: p.get("topic") == t)
    return {name: value for name, value in groups.items() if value is not None}
