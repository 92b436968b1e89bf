"""One ``torchrun --nproc_per_node=2 evaluate.py`` over the whole suite: nine benchmarks in their official layouts, odd sizes.

Every sample is scored exactly once across the two ranks, each benchmark's outcomes are
those of its official rule recomputed from the results file, metrics.json / results.md hold
every benchmark, and a tenth dataset whose images are missing is skipped
(``run.on_missing: skip``) and named in results.md. The model is the demo's with random
weights (the scoring, not the answers, is under test): one launch, about a minute.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from conftest import DEMO_DATA, bench_suite_config, launch, make_eval_suite_data, tiny_release
from lavislite.tasks.metrics import gqa_scores, mme_scores, pope_scores, scienceqa_scores, textvqa_scores, vizwiz_accuracy, vqa_accuracy

# Held-out images per benchmark: odd sample counts everywhere (MME has two lines an image, so it is even by its own rule).
SIZES = {"pope": 3, "gqa": 3, "scienceqa": 5, "okvqa": 25, "flickr30k": 5, "textvqa": 5, "vizwiz": 5, "mme": 3, "nocaps": 5}
EXPECTED_SIZES = {"pope": 9, "gqa": 9, "scienceqa": 5, "okvqa": 49, "flickr30k": 5, "textvqa": 5, "vizwiz": 5, "mme": 6, "nocaps": 5}
SPLIT = {"pope": "test", "gqa": "testdev", "scienceqa": "test", "okvqa": "val", "flickr30k": "test", "textvqa": "val", "vizwiz": "val", "mme": "test", "nocaps": "val"}
HEADLINE = {"pope": "f1", "gqa": "accuracy", "scienceqa": "img_acc", "okvqa": "overall", "flickr30k": "CIDEr", "textvqa": "accuracy",
            "vizwiz": "overall", "mme": "Perception/total", "nocaps": "CIDEr"}  # fmt: skip


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    root = tmp_path_factory.mktemp("suite")
    infos = make_eval_suite_data().write_layouts(root / "data", tuple(SIZES), sizes=SIZES)
    # A tenth dataset whose images were never downloaded.
    infos["coco_caption"] = {"annotations": {"test": {"storage": str(DEMO_DATA / "eval_caption.json")}}, "images": {"storage": str(root / "coco_images")}}
    cfg = bench_suite_config(
        root / "suite.yaml", infos,
        run={"output_dir": str(root / "out"), "job_id": "suite", "on_missing": "skip", "batch_size_eval": 2, "generate": {"max_new_tokens": 2},
             "caption_backend": "python"},
        datasets={"flickr30k": {"generate": {"max_new_tokens": 4}}},
    )  # fmt: skip
    release = tiny_release(root / "release")
    proc = launch("evaluate.py", ["--cfg-path", str(cfg), "--checkpoint", str(release)], nproc=2, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root / "out" / "suite", proc


def results_of(run_dir: Path, name: str) -> list[dict[str, Any]]:
    return json.loads((run_dir / "results" / f"{name}_{SPLIT[name]}.json").read_text())


def test_every_sample_of_every_benchmark_is_scored_exactly_once(suite_run: tuple[Path, Any]) -> None:
    run_dir, _ = suite_run
    for name, size in EXPECTED_SIZES.items():
        results = results_of(run_dir, name)
        ids = [r["id"] for r in results]
        assert len(ids) == len(set(ids)) == size, name  # none lost, none twice, with shards of unequal length
        assert size % 2 == 1 or name == "mme"
        assert all(r["prompt"].startswith("<image>\n") and isinstance(r["prediction"], str) for r in results), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {f"{name}/{split}" for name, split in SPLIT.items()}
    for name, split in SPLIT.items():
        m = metrics[f"{name}/{split}"]
        assert m["n_samples"] == EXPECTED_SIZES[name] and m["settings"]["headline"]["metric"] == HEADLINE[name], name
    assert metrics["flickr30k/test"]["settings"]["generate"]["max_new_tokens"] == 4 and metrics["gqa/testdev"]["settings"]["generate"]["max_new_tokens"] == 2


def test_each_benchmarks_outcomes_are_its_official_rule_on_the_results_file(suite_run: tuple[Path, Any]) -> None:
    run_dir, _ = suite_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    pope = results_of(run_dir, "pope")
    for category in ("random", "popular", "adversarial"):
        rows = [r for r in pope if r["category"] == category]
        labels = [{"question_id": r["question_id"], "image": "", "text": r["question"], "label": r["references"][0]} for r in rows]
        expected = pope_scores(labels, {r["question_id"]: r["prediction"] for r in rows})
        assert metrics["pope/test"][category]["f1"] == expected["f1"] and [r["correct"] for r in rows] == [expected["per_question"][r["question_id"]] for r in rows]
    gqa = results_of(run_dir, "gqa")
    expected = gqa_scores({r["id"]: {"answer": r["references"][0], **r["gqa"]} for r in gqa}, {r["id"]: r["prediction"] for r in gqa})
    assert metrics["gqa/testdev"]["accuracy"] == expected["accuracy"] and [r["correct"] for r in gqa] == [expected["per_question"][r["id"]] for r in gqa]
    sqa = results_of(run_dir, "scienceqa")
    expected = scienceqa_scores({r["id"]: r["problem"] for r in sqa}, {"test": [r["id"] for r in sqa]}, {r["id"]: r["prediction"] for r in sqa})
    assert metrics["scienceqa/test"]["img_acc"] == expected["img_acc"] and [r["parsed"] for r in sqa] == [expected["parsed"][r["id"]] for r in sqa]
    okvqa = results_of(run_dir, "okvqa")
    flat = [{"question_id": r["id"], "answer": r["references"]} for r in okvqa]
    assert metrics["okvqa/val"]["overall"] == vqa_accuracy(flat, {r["id"]: r["prediction"] for r in okvqa})["overall"]
    tvqa = results_of(run_dir, "textvqa")
    expected = textvqa_scores([{"question_id": r["id"], "answers": r["references"]} for r in tvqa], {r["id"]: r["prediction"] for r in tvqa})
    assert metrics["textvqa/val"]["accuracy"] == expected["accuracy"] and [r["score"] for r in tvqa] == [expected["per_question"][r["id"]] for r in tvqa]
    viz = results_of(run_dir, "vizwiz")
    expected = vizwiz_accuracy([{"image": r["id"], "answers": [{"answer": a} for a in r["references"]]} for r in viz], {r["id"]: r["prediction"] for r in viz})
    assert metrics["vizwiz/val"]["overall"] == expected["overall"]
    mme = results_of(run_dir, "mme")
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(mme, key=lambda r: (r["subtask"], r["line"])):
        by_task[r["subtask"]].append({"image": r["image_name"], "question": r["question"], "gt": r["references"][0], "prediction": r["prediction"]})
    expected = mme_scores(by_task)
    assert metrics["mme/test"]["Perception"] == expected["Perception"] and set(expected["Perception"]["tasks"]) == {"color", "existence"}
    nocaps = metrics["nocaps/val"]
    assert {"in-domain", "near-domain", "out-domain"} <= set(nocaps) and "CIDEr" in nocaps["out-domain"] and nocaps["agg_metrics"] == nocaps["CIDEr"]


def test_results_md_has_a_row_per_benchmark_with_its_prompt_and_names_the_skipped_one(suite_run: tuple[Path, Any]) -> None:
    run_dir, proc = suite_run
    text = (run_dir / "results.md").read_text()
    for name, split in SPLIT.items():
        assert f"| {name} | {split} | {HEADLINE[name]} | " in text, name
    assert "`<image>\\n{question}\\nAnswer the question using a single word or phrase.`" in text
    assert "Skipped (1, run.on_missing=skip):" in text and f"- coco_caption: datasets.coco_caption.build_info.images.storage: folder not found: {run_dir.parent.parent / 'coco_images'}" in text
    assert "- processes: 2" in text
    # stdout: the suite's table, one row per benchmark with its headline metric.
    rows = proc.stdout.strip().splitlines()
    assert rows[0].split() == ["split", "metric", "score", "n_samples", "agg_metrics"] and len(rows) == 1 + len(SPLIT)
