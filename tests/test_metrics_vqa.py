"""VQAv2 accuracy against the official evaluation (LAVIS's vqa_eval.py).

tests/fixtures/vqa_ref/vqa_a.json was produced by running that code; the hand-made cases
below pin each normalisation rule with numbers worked out from the official formula.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lavislite.tasks.metrics import normalize_vqa_answer, process_punctuation, vqa_accuracy

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "vqa_ref" / "vqa_a.json"


def official(
    question_id: int, answers: list[str], answer_type: str = "other", question_type: str = "what is"
) -> dict[str, Any]:
    """One annotation in the official VQAv2 layout (answer ids make every answer dict distinct)."""
    return {
        "question_id": question_id,
        "question_type": question_type,
        "answer_type": answer_type,
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }


def accuracy_of(prediction: str, answers: list[str]) -> float:
    return vqa_accuracy([official(1, answers)], {1: prediction})["per_question"][1]


def leave_one_out(n_matching: int, n_answers: int = 10) -> float:
    """The official formula by hand: each answer left out in turn, min(#matches / 3, 1), averaged."""
    # Leaving out a matching answer leaves n_matching - 1 matches, any other leaves n_matching.
    total = n_matching * min(1.0, (n_matching - 1) / 3) + (n_answers - n_matching) * min(1.0, n_matching / 3)
    return 100 * total / n_answers


@pytest.fixture(scope="module")
def ref() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def test_reproduces_official_fixture(ref: dict[str, Any]) -> None:
    predictions = {r["question_id"]: r["answer"] for r in ref["results"]}
    out = vqa_accuracy(ref["annotations"], predictions)
    assert out["overall"] == ref["accuracy"]["overall"]
    assert out["perAnswerType"] == ref["accuracy"]["perAnswerType"]
    assert out["perQuestionType"] == ref["accuracy"]["perQuestionType"]
    assert set(out["per_question"]) == {int(q) for q in ref["per_question"]}
    for question_id, expected in ref["per_question"].items():
        assert abs(out["per_question"][int(question_id)] - expected) <= 1e-9, question_id
    # The fixture is not trivial: it has every outcome of the formula.
    assert {0.0, 30.0, 60.0, 90.0, 100.0} <= set(ref["per_question"].values())
    # The LAVIS result-file form (a list of {"question_id", "answer"}) gives the same.
    assert vqa_accuracy(ref["annotations"], ref["results"]) == out


def test_normalisation_rules() -> None:
    assert accuracy_of("Two", ["2"] * 10) == 100.0  # number words, case
    assert accuracy_of("a dog", ["dog"] * 10) == 100.0  # articles
    assert accuracy_of("dont", ["don't"] * 10) == 100.0  # contractions map
    assert accuracy_of("1,000", ["1000"] * 10) == 100.0  # comma between digits
    assert accuracy_of("yes.", ["yes"] * 10) == 100.0  # trailing period
    assert accuracy_of("yes\n", ["yes"] * 10) == 100.0  # newline / white space
    assert accuracy_of(" Yes!\t", ["yes"] * 10) == 100.0
    assert accuracy_of("2.5", ["2.5"] * 10) == 100.0  # a period before a digit stays
    assert accuracy_of("red-and-white", ["red and white"] * 10) == 100.0
    assert normalize_vqa_answer("The Two DOGS, dont.") == "2 dogs don't"
    assert process_punctuation("red-and-white") == "red and white"
    assert process_punctuation("1,000-ish") == "1000ish"  # a digit comma makes every mark vanish
    assert process_punctuation("a.m.") == "am"


def test_leave_one_out_averaging() -> None:
    three_yes = ["yes"] * 3 + ["no"] * 7
    assert leave_one_out(3) == pytest.approx(90.0)  # (3 * 2/3 + 7 * 1) / 10
    assert accuracy_of("yes", three_yes) == pytest.approx(leave_one_out(3))
    assert accuracy_of("no", three_yes) == pytest.approx(100.0)
    assert accuracy_of("yes", ["yes"] + ["no"] * 9) == pytest.approx(leave_one_out(1)) == pytest.approx(30.0)
    assert accuracy_of("yes", ["yes"] * 2 + ["no"] * 8) == pytest.approx(leave_one_out(2)) == pytest.approx(60.0)
    assert accuracy_of("maybe", three_yes) == 0.0


def test_official_ground_truth_quirks() -> None:
    # Ground truths are only punctuation-processed, and only when the ten disagree:
    assert accuracy_of("yes", ["yes."] * 5 + ["no"] * 5) == 100.0  # disagreeing: "yes." -> "yes"
    assert accuracy_of("yes", ["yes."] * 10) == 0.0  # unanimous: left as "yes."
    assert accuracy_of("Two", ["Two"] * 10) == 0.0  # never lower-cased / digit-mapped
    assert accuracy_of("1,000", ["1,000"] * 10) == 0.0


def test_lavis_flattened_annotations() -> None:
    annotations = [
        {"question_id": "q1", "answer": ["yes"] * 3 + ["no"] * 7},
        {"question_id": "q2", "answer": ["2"] * 10, "answer_type": "number", "question_type": "how many"},
    ]
    out = vqa_accuracy(annotations, {"q1": "Yes", "q2": "two", "unused": "x"})
    assert out["per_question"] == {"q1": pytest.approx(90.0), "q2": 100.0}
    assert out["overall"] == 95.0
    assert out["perAnswerType"] == {"other": 90.0, "number": 100.0}
    assert out["perQuestionType"] == {"": 90.0, "how many": 100.0}


def test_rounding_is_the_official_two_places() -> None:
    annotations = [official(i, ["yes"] + ["no"] * 9) for i in range(3)]
    out = vqa_accuracy(annotations, {0: "yes", 1: "no", 2: "no"})
    assert out["overall"] == round(100 * (0.3 + 1.0 + 1.0) / 3, 2) == 76.67
    assert out["per_question"][0] == pytest.approx(30.0)


def test_missing_predictions_are_named() -> None:
    annotations = [official(1, ["yes"] * 10), official(2, ["no"] * 10), official(3, ["no"] * 10)]
    with pytest.raises(ValueError, match=r"no prediction for annotated question id\(s\) 2, 3") as info:
        vqa_accuracy(annotations, {1: "yes", "2": "no"})
    assert "annotation 2 vs prediction '2'" in str(info.value)
    with pytest.raises(TypeError, match="must be a str"):
        vqa_accuracy(annotations[:1], {1: None})
