"""``evaluate.py`` on the demo eval configs under torchrun: every sample scored once, standard metrics, no hang."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DEMO_DATA, REPO, launch, tiny_release
from lavislite.common.registry import registry
from lavislite.tasks.metrics import vqa_accuracy

EVAL_CAPTION = str(REPO / "projects" / "demo" / "eval_caption.yaml")
EVAL_VQA = str(REPO / "projects" / "demo" / "eval_vqa.yaml")


def _ids(path: Path, key: str) -> list:
    return [r[key] for r in json.loads(path.read_text())]


@pytest.mark.parametrize("cfg,name,key,ann", [(EVAL_CAPTION, "coco_caption_test", "image_id", "eval_caption.json"), (EVAL_VQA, "vqav2_test", "question_id", "eval_vqa.json")])
def test_torchrun_two_processes_score_every_sample_exactly_once(tmp_path: Path, demo_run: Path, cfg: str, name: str, key: str, ann: str) -> None:
    """Issue 6.1: the bundled eval files have odd sizes, so the two shards differ in length."""
    expected = _ids(DEMO_DATA / ann, key)
    assert len(expected) % 2 == 1
    proc = launch("evaluate.py", ["--cfg-path", cfg, "--checkpoint", str(demo_run), "--options", f"run.output_dir={tmp_path}", "run.job_id=e"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "e" / "results" / f"{name}.json").read_text())
    assert sorted(r["id"] for r in results) == sorted(expected)  # each once, none lost
    assert all({"id", "prediction", "references"} <= set(r) for r in results)
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    (split,) = metrics.values()
    assert split["n_samples"] == len(expected)
    if key == "image_id":
        assert {"Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr", "agg_metrics"} <= set(split)
        assert split["agg_metrics"] == pytest.approx(split["CIDEr"] + split["Bleu_4"])
        assert split["scorer"] in ("java", "python") and ("METEOR" in split) == (split["scorer"] == "java")
    else:
        assert split["agg_metrics"] == split["overall"] and set(split["perAnswerType"]) == {"other"}
        # each sample scored by the official rule over its ten answers (leave-one-out by position)
        flat = [{"question_id": r["id"], "answer": r["references"]} for r in results]
        official = vqa_accuracy(flat, {r["id"]: r["prediction"] for r in results})
        assert [r["accuracy"] for r in results] == pytest.approx([official["per_question"][r["id"]] for r in results])
        assert split["overall"] == official["overall"]
    assert proc.stdout.startswith("split")  # the metrics table


def test_three_processes_on_two_samples_finish(tmp_path: Path) -> None:
    """Issue 6.1: one rank gets no sample and still joins every collective (random weights suffice)."""
    two = json.loads((DEMO_DATA / "eval_vqa.json").read_text())[:2]
    (tmp_path / "two.json").write_text(json.dumps(two))
    proc = launch(
        "evaluate.py",
        ["--cfg-path", EVAL_VQA, "--options", f"datasets.vqav2.build_info.annotations.test.storage={tmp_path / 'two.json'}",
         f"run.output_dir={tmp_path}", "run.job_id=three", "run.generate.max_new_tokens=2"],
        nproc=3, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "three" / "results" / "vqav2_test.json").read_text())
    assert sorted(r["id"] for r in results) == sorted(q["question_id"] for q in two)


def test_vqa_task_scores_a_right_answer_100_when_the_humans_agree() -> None:
    """Nine equal answers and one other: the majority answer scores 100, the tenth 30, anything else 0.

    The official code leaves out each answer *dict* and drops every dict equal to
    it, so the task numbers its answer dicts (as VQAv2's answer_id does); with
    nine equal dicts dropped together, "red" used to score 10.
    """
    task = registry.get_task_class("vqa")()
    refs = ["red"] * 9 + ["dark red"]
    results = [
        {"id": i, "prediction": p, "references": refs, "answer_type": "other", "question_type": "what color is the"}
        for i, p in enumerate(["red", "dark red", "blue"])
    ]
    metrics = task.compute_metrics(results, dataset=None)
    assert [r["accuracy"] for r in results] == pytest.approx([100.0, 30.0, 0.0])
    assert metrics["overall"] == pytest.approx(round(100 * (1 + 0.3 + 0) / 3, 2))


def test_evaluate_prints_the_table_on_stdout_reports_nothing_trainable_and_sorts_results_by_id(tmp_path: Path) -> None:
    """Issue 15 (newcomer traps): the table went to stderr (stdout empty); the parameter table called the
    ViT (and every part the eval config does not freeze) "trainable"; results came in the order the
    processes (and the file) gave them. Five captions whose file lists the ids in descending order."""
    records = json.loads((DEMO_DATA / "eval_caption.json").read_text())[:5][::-1]
    (tmp_path / "captions.json").write_text(json.dumps(records))
    release = tiny_release(tmp_path / "release")
    proc = launch(
        "evaluate.py",
        ["--cfg-path", EVAL_CAPTION, "--checkpoint", str(release), "--options", f"datasets.coco_caption.build_info.annotations.test.storage={tmp_path / 'captions.json'}",
         f"run.output_dir={tmp_path}", "run.job_id=e", "run.generate.max_new_tokens=3", "run.batch_size_eval=2",
         "run.caption_backend=python"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, row = proc.stdout.strip().splitlines()
    assert header.split()[0] == "split" and header.split()[-1] == "agg_metrics" and "CIDEr" in header.split()
    assert row.split()[0] == "coco_caption/test"
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())["coco_caption/test"]
    assert float(row.split()[header.split().index("CIDEr")]) == pytest.approx(metrics["CIDEr"], abs=1e-4)
    assert header not in proc.stderr  # the table is not logged to the terminal twice
    assert "split" in (tmp_path / "e" / "evaluate.log").read_text()  # the log file keeps it
    table = proc.stderr.split("parameters:\n", 1)[1].splitlines()
    assert table[0].split() == ["part", "total", "trainable", "dtype"]
    parts = {line.split()[0]: line.split() for line in table[1:6]}
    assert "vit" in parts and all(cells[2] == "0" for cells in parts.values()), parts
    assert "every parameter is frozen" in proc.stderr
    ids = [r["id"] for r in json.loads((tmp_path / "e" / "results" / "coco_caption_test.json").read_text())]
    assert ids == sorted(r["image_id"] for r in records) and ids != [r["image_id"] for r in records]
