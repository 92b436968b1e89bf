"""``lavislite-score``: another tool's answer files (LLaVA's ``.jsonl``, the MME tool's lists) and lavislite's results files,
scored by the same functions, against the official code's numbers in tests/fixtures/bench_ref."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, run_env
from lavislite.common.errors import DataError
from lavislite.score import main, score

REF = REPO / "tests" / "fixtures" / "bench_ref"


def native_files(name: str, folder: Path) -> tuple[dict[str, Any], Path]:
    """Writes a reference set's files as the official scripts read them (README: lists of ``*.jsonl`` and POPE labels are lines)."""
    ref = json.loads((REF / f"{name}_ref.json").read_text())["sets"]["generated"]
    folder.mkdir(parents=True, exist_ok=True)
    for file, content in ref["native"].items():
        if isinstance(content, str):
            (folder / file).write_text(content)
        elif file.endswith(".jsonl") or file.startswith("coco_pope_"):
            (folder / file).write_text("".join(json.dumps(line) + "\n" for line in content))
        else:
            (folder / file).write_text(json.dumps(content))
    return ref, folder


def test_llava_answer_files_score_as_the_official_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref, gqa = native_files("gqa", tmp_path / "gqa")
    for predictions in ("llava_answers.jsonl", "testdev_balanced_predictions.json"):  # raw replies, and GQA's converted file
        scores = score("gqa", [str(gqa / "testdev_balanced_questions.json")], str(gqa / predictions))
        assert scores["accuracy"] == pytest.approx(ref["scores"]["accuracy"], abs=1e-9)
    ref, sqa = native_files("scienceqa", tmp_path / "sqa")
    scores = score("scienceqa", [str(sqa / "problems.json"), str(sqa / "pid_splits.json")], str(sqa / "llava_answers.jsonl"))
    assert (scores["acc"], scores["img_acc"]) == pytest.approx((ref["scores"]["llava_eval_science_qa"]["acc"], ref["scores"]["llava_eval_science_qa"]["img_acc"]), abs=1e-9)
    # TextVQA: LLaVA's answers are keyed by image; the question comes back out of each of its four prompt shapes.
    ref, tvqa = native_files("textvqa", tmp_path / "textvqa")
    scores = score("textvqa", [str(tvqa / "TextVQA_0.5.1_val.json")], str(tvqa / "llava_answers.jsonl"))
    assert scores["accuracy"] == pytest.approx(ref["scores"]["accuracy"], abs=1e-9)
    assert {str(k): v for k, v in scores["per_question"].items()} == pytest.approx({str(r["question_id"]): r["score"] for r in ref["per_item"]}, abs=1e-9)
    # POPE: LLaVA's answers split by its question file's category, paired with the label lines in order.
    ref, pope = native_files("pope", tmp_path / "pope")
    labels = [str(pope / f"coco_pope_{c}.json") for c in ("random", "popular", "adversarial")]
    assert main(["pope", "--annotations", *labels, "--predictions", str(pope / "llava_answers.jsonl"), "--questions", str(pope / "llava_pope_test.jsonl"), "--out", str(tmp_path / "pope.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    for category, expected in ref["scores"].items():
        assert printed[category]["f1"] == pytest.approx(expected["f1"], abs=1e-9) and printed[category]["TP"] == expected["TP"]
    assert printed["f1"] == pytest.approx(sum(s["f1"] for s in ref["scores"].values()) / 3, abs=1e-12)
    assert "per_question" in json.loads((tmp_path / "pope.json").read_text()) and "per_question" not in printed
    with pytest.raises(DataError, match="give its question file"):
        score("pope", labels, str(pope / "llava_answers.jsonl"))
    # MME: the eval tool's own input (lines with the prediction as 4th field).
    ref, mme = native_files("mme", tmp_path / "mme")
    scores = score("mme", [str(mme)], str(mme))
    assert scores["Perception"]["total"] == pytest.approx(ref["scores"]["Perception"]["total"], abs=1e-6)
    assert scores["Cognition"]["total"] == pytest.approx(ref["scores"]["Cognition"]["total"], abs=1e-6)


def test_lavislite_results_files_score_by_their_ids(tmp_path: Path) -> None:
    """A results file evaluate.py wrote ({id, prediction, ...}) scores the same: POPE ids are <category>/<question_id>."""
    ref, pope = native_files("pope", tmp_path / "pope")
    results = [{"id": f"{r['split']}/{r['question_id']}", "prediction": r["prediction"], "references": [r["label"]]} for r in ref["per_item"]]
    (tmp_path / "pope_test.json").write_text(json.dumps(results))
    labels = [str(pope / f"coco_pope_{c}.json") for c in ("random", "popular", "adversarial")]
    scores = score("pope", labels, str(tmp_path / "pope_test.json"))
    assert {c: scores[c]["accuracy"] for c in ref["scores"]} == pytest.approx({c: s["accuracy"] for c, s in ref["scores"].items()}, abs=1e-9)
    ref, gqa = native_files("gqa", tmp_path / "gqa")
    (tmp_path / "gqa_testdev.json").write_text(json.dumps([{"id": r["questionId"], "prediction": r["text"]} for r in ref["per_item"][:-1]]))
    with pytest.raises(DataError, match="no prediction for GQA question id"):
        score("gqa", [str(gqa / "testdev_balanced_questions.json")], str(tmp_path / "gqa_testdev.json"))


def test_python_dash_m_module_runs_and_reports_a_user_error_without_a_traceback(tmp_path: Path) -> None:
    ref, sqa = native_files("scienceqa", tmp_path / "sqa")
    base = [sys.executable, "-m", "lavislite.score", "scienceqa", "--annotations", str(sqa / "problems.json"), str(sqa / "pid_splits.json")]
    proc = subprocess.run([*base, "--predictions", str(sqa / "llava_answers.jsonl")], capture_output=True, text=True, env=run_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["img_acc"] == pytest.approx(ref["scores"]["llava_eval_science_qa"]["img_acc"], abs=1e-9)
    proc = subprocess.run([*base, "--predictions", str(tmp_path / "none.jsonl")], capture_output=True, text=True, env=run_env(), timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --predictions") and "Traceback" not in proc.stderr
