"""The shipped demo learns to see: held-out images (never trained on) get their colour and shape right.

Reads the session's demo run (``demo_run``: the README command, one process),
which validates on held-out questions during training, keeps the best weights
and answers the held-out test questions with them at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import DEMO_DATA, all_records
from lavislite.tasks.metrics import normalize_vqa_answer


def _majority(answers: list[str]) -> str:
    return max(set(answers), key=answers.count)


def test_held_out_colour_and_shape_accuracy(demo_run: Path) -> None:
    """Issue 10: colour >= 0.9 and shape >= 0.7 over at least 20 held-out images (chance <= 1/3)."""
    results = json.loads((demo_run / "results" / "vqav2_test.json").read_text())
    meta = json.loads((DEMO_DATA / "metadata.json").read_text())
    trained_on = {m["file"] for m in (meta if isinstance(meta, list) else meta.get("images", meta.values())) if m["split"] == "train"}
    images = {r["image"] for r in json.loads((DEMO_DATA / "eval_vqa.json").read_text())}
    assert len(images) >= 20 and not images & trained_on  # held out: never in a training sample
    right: dict[str, list[bool]] = {"colour": [], "shape": []}
    for r in results:
        kind = "colour" if "colour" in r["question"].lower() or "color" in r["question"].lower() else "shape"
        right[kind].append(normalize_vqa_answer(r["prediction"]) == normalize_vqa_answer(_majority(r["references"])))
    colour, shape = (sum(v) / len(v) for v in (right["colour"], right["shape"]))
    assert len(right["colour"]) >= 20 and len(right["shape"]) >= 20
    assert colour >= 0.9, right
    assert shape >= 0.7, right


def test_the_demo_validates_keeps_the_best_and_tests_with_it(demo_run: Path) -> None:
    """Issue 6.5 (one process): a validation record per validation, the best weights kept, the test at the end."""
    records = all_records(demo_run)
    valid = [r for r in records if "valid" in r]
    assert len(valid) >= 2
    best = max(valid, key=lambda r: r["agg_metrics"])
    info = json.loads((demo_run / "best" / "info.json").read_text())
    assert info["global_step"] == best["step"] and info["agg_metrics"] == best["agg_metrics"]
    (test,) = [r for r in records if "test" in r]
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert metrics == test["test"] and metrics["vqav2/test"]["n_samples"] == len(json.loads((DEMO_DATA / "eval_vqa.json").read_text()))
