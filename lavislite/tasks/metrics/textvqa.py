"""TextVQA accuracy, as MMF's ``TextVQAAccuracyEvaluator`` with the EvalAI answer processor computes it.

The rule (facebookresearch/mmf ``mmf/utils/m4c_evaluators.py``; LLaVA's
``m4c_evaluator.py`` is the same code):

* the prediction *and each of the ten human answers* go through the EvalAI processor:
  lower case; ``,`` and ``?`` deleted; ``'s`` -> `` 's``; newlines and tabs to spaces;
  stripped; then the VQA punctuation step and the number-word / article / contraction
  step (:func:`process_punctuation`, :func:`process_digit_article`);
* an answer's soft score is the mean, over the ten answers each left out in turn, of
  ``min(1, matches / 3)`` among the other nine; the prediction scores its processed
  text's soft score, 0 when no human gave it.

Unlike VQAv2's rule, the human answers are always normalised like the prediction.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from ._ids import require_predictions
from .vqa import process_digit_article, process_punctuation

__all__ = ["textvqa_answer_scores", "textvqa_normalize", "textvqa_scores"]


def textvqa_normalize(answer: str) -> str:
    """The EvalAI answer processor (MMF's ``EvalAIAnswerProcessor.__call__``)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def textvqa_answer_scores(raw_answers: Sequence[str]) -> dict[str, float]:
    """Soft score of each distinct processed human answer (MMF's ``_compute_answer_scores``).

    Raises:
        ValueError: not ten answers (MMF asserts it).
    """
    answers = [textvqa_normalize(a) for a in raw_answers]
    if len(answers) != 10:
        raise ValueError(f"TextVQA questions have 10 answers, got {len(answers)}")
    scores: dict[str, float] = {}
    for unique in set(answers):
        accs = []
        for left_out in range(len(answers)):
            matching = sum(1 for k, a in enumerate(answers) if k != left_out and a == unique)
            accs.append(min(1, float(matching) / 3))
        scores[unique] = sum(accs) / len(accs)
    return scores


def textvqa_scores(data: Sequence[Mapping[str, Any]], predictions: Mapping[Hashable, str]) -> dict[str, Any]:
    """TextVQA scored by MMF's evaluator.

    Args:
        data: the ``data`` list of ``TextVQA_0.5.1_val.json`` (``question_id``, ``answers``, ...).
        predictions: question id -> the model's reply.

    Returns:
        ``accuracy`` (0-1, as MMF returns it), ``n`` and ``per_question`` (question id -> soft score, 0-1).

    Raises:
        ValueError: no questions, or a question without a prediction.
    """
    if not data:
        raise ValueError("no TextVQA questions to score")
    ids = [entry["question_id"] for entry in data]
    require_predictions(ids, predictions, "TextVQA question")
    per_question: dict[Hashable, float] = {}
    scores = []
    for entry, question_id in zip(data, ids):
        score = textvqa_answer_scores(entry["answers"]).get(textvqa_normalize(predictions[question_id]), 0.0)
        per_question[question_id] = score
        scores.append(score)
    return {"accuracy": sum(scores) / len(scores), "n": len(scores), "per_question": per_question}
