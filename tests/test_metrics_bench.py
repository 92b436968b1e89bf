"""The benchmark scorers against the outcomes of each benchmark's official code (tests/fixtures/bench_ref).

The fixture files (copied from ``shared/fixtures/bench_ref``, whose README names the
official source, commit and run of each) hold made-up sets in the benchmarks' own
layouts, the model replies, and what the official code made of every item and of the
whole set. Each test rebuilds the native files as Python objects, scores them with
``lavislite.tasks.metrics`` and compares every item and every aggregate: within 1e-9,
MME's points within 1e-6 (the README's tolerances).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lavislite.tasks.metrics import (
    gqa_scores,
    mme_answer,
    mme_scores,
    pope_answer,
    pope_mean,
    pope_scores,
    scienceqa_answer,
    scienceqa_scores,
    textvqa_normalize,
    textvqa_scores,
    vizwiz_accuracy,
)

REF = Path(__file__).resolve().parent / "fixtures" / "bench_ref"


def reference(name: str) -> dict[str, Any]:
    return json.loads((REF / f"{name}_ref.json").read_text())["sets"]["generated"]


def test_pope_every_item_and_every_split_as_popes_evaluate_py() -> None:
    ref = reference("pope")
    items = {(row["split"], row["question_id"]): row for row in ref["per_item"]}
    for split in ("random", "popular", "adversarial"):
        labels = ref["native"][f"coco_pope_{split}.json"]
        answers = ref["native"][f"pope_answers_{split}.jsonl"]  # POPE's answer file: line k answers label line k
        predictions = {line["question_id"]: answer["answer"] for line, answer in zip(labels, answers)}
        scores = pope_scores(labels, predictions)
        expected = ref["scores"][split]
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            assert scores[key] == pytest.approx(expected[key], abs=1e-9), (split, key)
        assert {k: scores[k] for k in ("TP", "FP", "TN", "FN", "n")} == {k: expected[k] for k in ("TP", "FP", "TN", "FN", "n")}
        for qid, right in scores["per_question"].items():
            row = items[(split, qid)]
            assert right is row["correct"] and pope_answer(row["prediction"]) == row["parsed"], row
    assert len(items) == 150


def test_pope_reads_the_first_sentence_and_splits_on_spaces_only() -> None:
    """The official quirks, pinned: a newline glues "No" to its word, a comma does not."""
    assert pope_answer("No.") == "no" and pope_answer("no, no pizza.") == "no"
    assert pope_answer("No\n") == "yes"  # split(' ') keeps "No\n" whole
    assert pope_answer("Yes. There is no dog.") == "yes"  # only the first sentence counts
    assert pope_answer("I'm not sure.") == "no"
    means = pope_mean({"a": {"f1": 0.5, "accuracy": 1, "precision": 1, "recall": 0, "yes_ratio": 0.2}, "b": {"f1": 1.0, "accuracy": 0, "precision": 0, "recall": 1, "yes_ratio": 0.4}})
    assert means["f1"] == 0.75 and means["yes_ratio"] == pytest.approx(0.3)


def test_pope_split_without_a_yes_scores_zero_precision_instead_of_dividing_by_zero() -> None:
    labels = [{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "yes"}, {"question_id": 2, "image": "a.jpg", "text": "Is there a dog?", "label": "no"}]
    scores = pope_scores(labels, {1: "No.", 2: "No."})
    assert (scores["precision"], scores["recall"], scores["f1"], scores["accuracy"], scores["yes_ratio"]) == (0.0, 0.0, 0.0, 0.5, 0.0)
    with pytest.raises(ValueError, match="no prediction for POPE question id"):
        pope_scores(labels, {1: "yes"})


def mme_results(native: dict[str, str], keep_newline: bool) -> dict[str, list[dict[str, str]]]:
    """The tool's ``<task>.txt`` files (image, question, gt, prediction per line) as ``mme_scores`` input."""
    results = {}
    for name, text in native.items():
        rows = []
        for line in text.splitlines(keepends=True):
            image, question, gt, prediction = line.split("\t")
            rows.append({"image": image, "question": question, "gt": gt, "prediction": prediction if keep_newline else prediction.rstrip("\n")})
        results[name.removesuffix(".txt")] = rows
    return results


@pytest.mark.parametrize("keep_newline", [True, False])
def test_mme_every_line_and_score_as_calculation_py(keep_newline: bool) -> None:
    ref = reference("mme")
    scores = mme_scores(mme_results(ref["native"], keep_newline))
    for group in ("Perception", "Cognition"):
        assert scores[group]["total"] == pytest.approx(ref["scores"][group]["total"], abs=1e-6)
        assert set(scores[group]["tasks"]) == set(ref["scores"][group]["tasks"])
        for task, value in ref["scores"][group]["tasks"].items():
            assert scores[group]["tasks"][task] == pytest.approx(value, abs=1e-6), task
    for row in ref["per_item"]:
        assert scores["per_question"][f"{row['task']}/{row['line']}"] is row["correct"], row
        assert mme_answer(row["prediction"]) == row["parsed"], row
    assert len(scores["per_question"]) == len(ref["per_item"])


def test_mme_refuses_an_unknown_subtask_and_an_unpaired_line() -> None:
    line = {"image": "a.jpg", "question": "Is it red?", "gt": "Yes", "prediction": "yes"}
    with pytest.raises(ValueError, match="unknown MME subtask"):
        mme_scores({"colour": [line, line]})
    with pytest.raises(ValueError, match="two questions on consecutive lines"):
        mme_scores({"color": [line]})
    only = mme_scores({"color": [line, {**line, "gt": "No", "prediction": "Nope"}]})
    assert only["Perception"] == {"total": 200.0, "tasks": {"color": 200.0}} and "Cognition" not in only


def test_scienceqa_extraction_llava_accuracy_and_scienceqa_groups() -> None:
    ref = reference("scienceqa")
    native = ref["native"]
    predictions = {line["question_id"]: line["text"] for line in native["llava_answers.jsonl"]}
    scores = scienceqa_scores(native["problems.json"], native["pid_splits.json"], predictions)
    llava = ref["scores"]["llava_eval_science_qa"]
    for key in ("acc", "img_acc"):
        assert scores[key] == pytest.approx(llava[key], abs=1e-9), key
    assert (scores["correct"], scores["count"], scores["img_correct"], scores["img_count"]) == (llava["correct"], llava["count"], llava["img_correct"], llava["img_count"])
    official = ref["scores"]["scienceqa_evaluate_acc"]
    for key, value in official.items():
        if value == -1:
            assert key not in scores, key  # an empty group is left out
        else:
            assert f"{scores[key]:.2f}" == value, key  # the tool prints two decimals
    for row in ref["per_item"]:
        assert scores["per_question"][row["pid"]] is row["correct"], row
        assert scores["parsed"][row["pid"]] == row["parsed_ans"] == scienceqa_answer(row["prediction"]), row


def test_gqa_every_question_and_the_balanced_aggregates() -> None:
    ref = reference("gqa")
    native = ref["native"]
    predictions = {line["question_id"]: line["text"] for line in native["llava_answers.jsonl"]}
    scores = gqa_scores(native["testdev_balanced_questions.json"], predictions)
    for key in ("accuracy", "binary", "open", "distribution"):
        assert scores[key] == pytest.approx(ref["scores"][key], abs=1e-9), key
    for key in ("accuracyPerStructuralType", "accuracyPerSemanticType", "accuracyPerSteps", "accuracyPerLength"):
        assert set(scores[key]) == set(ref["scores"][key]), key
        for sub, (value, n) in ref["scores"][key].items():
            assert scores[key][sub][0] == pytest.approx(value, abs=1e-9) and scores[key][sub][1] == n, (key, sub)
    assert scores["n"] == sum(row["scored"] for row in ref["per_item"])
    for row in ref["per_item"]:
        assert scores["per_question"][row["questionId"]] is row["correct"], row


def test_textvqa_every_question_as_mmfs_evaluator() -> None:
    ref = reference("textvqa")
    data = ref["native"]["TextVQA_0.5.1_val.json"]["data"]
    predictions = {row["question_id"]: row["prediction"] for row in ref["per_item"]}
    scores = textvqa_scores(data, predictions)
    assert scores["accuracy"] == pytest.approx(ref["scores"]["accuracy"], abs=1e-9)
    assert scores["n"] == ref["scores"]["n"]
    for row in ref["per_item"]:
        assert scores["per_question"][row["question_id"]] == pytest.approx(row["score"], abs=1e-9), row
        assert textvqa_normalize(row["prediction"]) == row["processed_prediction"], row


def test_vizwiz_leaves_out_one_position_keeps_answers_as_given_and_scores_unanswerable() -> None:
    """VizWiz's API, by hand: no punctuation step on the answers, one answer left out at a time."""
    answers = ["unanswerable"] * 4 + ["red"] * 3 + ["dark-red"] * 3
    question = {"image": "VizWiz_val_00000001.jpg", "question": "What colour?", "answer_type": "unanswerable", "answerable": 0,
                "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]}
    scores = vizwiz_accuracy([question], {"VizWiz_val_00000001.jpg": "Unanswerable."})
    assert scores["per_question"]["VizWiz_val_00000001.jpg"] == pytest.approx(100.0)  # 4 people: min(1, 3/3) whichever is left out
    red = vizwiz_accuracy([question], {"VizWiz_val_00000001.jpg": "red"})["per_question"]["VizWiz_val_00000001.jpg"]
    assert red == pytest.approx(100 * (3 * (2 / 3) + 7 * 1.0) / 10)  # 3 equal dicts, left out one at a time
    # The prediction "dark-red" becomes "dark red"; the answers keep their hyphen, so nothing matches.
    assert vizwiz_accuracy([question], {"VizWiz_val_00000001.jpg": "dark-red"})["overall"] == 0.0
    assert scores["perAnswerType"] == {"unanswerable": 100.0}
