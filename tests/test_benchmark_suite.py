"""The benchmark suite without a model: builders reading each official layout, scorers by name, run.best_metric,
the missing-files report before the model is built, and results.md.

The layouts are the demo's held-out images written by ``projects/demo/make_eval_suite_data.py``
in each benchmark's release format (real files in real formats, in a temp folder).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from omegaconf import OmegaConf

import lavislite  # noqa: F401
from conftest import REPO, bench_suite_config, launch, make_eval_suite_data
from lavislite.common.config import Config
from lavislite.common.errors import DataError, MissingFileError
from lavislite.common.registry import registry
from lavislite.common.schema import ConfigError
from lavislite.runners.runner_base import RunnerBase
from lavislite.tasks import setup_task
from lavislite.tasks.generation_tasks import GenerationTask
from lavislite.tasks.report import results_markdown
from lavislite.tasks.scorers import Scorer

ALL = ("pope", "gqa", "scienceqa", "okvqa", "flickr30k", "textvqa", "vizwiz", "mme", "nocaps")
SUFFIX = "Answer the question using a single word or phrase."


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    out = tmp_path_factory.mktemp("layouts")
    return out, make_eval_suite_data().write_layouts(out, ALL, sizes={name: 5 for name in ALL})


def built(cfg_path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    cfg = Config(str(cfg_path), purpose="evaluate")
    return setup_task(cfg).build_eval_datasets(cfg)


def test_every_builder_reads_its_official_layout_into_llava_style_prompts(tmp_path: Path, layouts: tuple[Path, dict[str, Any]]) -> None:
    _, infos = layouts
    datasets, skipped = built(bench_suite_config(tmp_path / "suite.yaml", infos))
    assert skipped == {} and set(datasets) == set(ALL)
    splits = {name: next(iter(by_split.values())) for name, by_split in datasets.items()}
    sizes = {name: len(ds) for name, ds in splits.items()}
    # 5 images each: POPE asks 3 categories, GQA 3 questions, MME 2 lines an image; ScienceQA leaves its 3 text-only problems out.
    assert sizes == {"pope": 15, "gqa": 15, "scienceqa": 5, "okvqa": 10, "flickr30k": 5, "textvqa": 5, "vizwiz": 5, "mme": 10, "nocaps": 5}
    prompts = {name: ds.samples[0].prompt for name, ds in splits.items()}
    assert prompts["gqa"] == f"<image>\nWhat colour is the shape?\n{SUFFIX}"
    assert prompts["pope"] == f"<image>\nIs there a red circle in the image?\n{SUFFIX}"
    assert prompts["scienceqa"] == "<image>\nWhich shape is in the image?\nA. circle\nB. square\nC. triangle\nAnswer with the option's letter from the given choices directly."
    assert splits["scienceqa"].samples[1].prompt.startswith("<image>\nContext: The picture shows one shape.\nWhich shape")
    assert prompts["vizwiz"] == f"<image>\nWhat colour is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n{SUFFIX}"
    assert prompts["textvqa"] == f"<image>\nwhat colour is the shape?\n{SUFFIX}"  # shape_288 has no OCR tokens: no line
    assert splits["textvqa"].samples[1].prompt == f"<image>\nwhat colour is the shape?\nReference OCR token: square\n{SUFFIX}"
    assert prompts["nocaps"] == prompts["flickr30k"] == "<image>\nDescribe the image briefly."
    # ids: POPE's restart per category file; MME's are <subtask>/<line>, lines in file order (pairs per image).
    assert [s.id for s in splits["pope"].samples[:2]] == ["random/1", "random/2"] and len({s.id for s in splits["pope"].samples}) == 15
    mme = [(s.id, s.images[0], s.references[0]) for s in splits["mme"].samples]
    assert mme[:4] == [("color/0", "color/shape_288.jpg", "Yes"), ("color/1", "color/shape_288.jpg", "No"),
                       ("color/2", "color/shape_290.jpg", "Yes"), ("color/3", "color/shape_290.jpg", "No")]  # fmt: skip
    assert ("existence/0", "existence/images/shape_289.jpg", "No") in mme
    assert splits["scienceqa"].samples[0].images == ["test/5288/image.png"] and splits["scienceqa"].samples[0].references == ["A"]
    assert splits["okvqa"].samples[0].images == ["shape_288.jpg"] and len(splits["okvqa"].samples[0].references) == 10
    assert {s.extra["domain"] for s in splits["nocaps"].samples} == {"in-domain", "near-domain", "out-domain"}
    assert splits["gqa"].prompt_template == f"<image>\n{{question}}\n{SUFFIX}"


def test_textvqa_without_ocr_tokens_asks_for_the_ocr_file_or_the_switch(tmp_path: Path, layouts: tuple[Path, dict[str, Any]]) -> None:
    _, infos = layouts
    data = json.loads(Path(infos["textvqa"]["annotations"]["val"]["storage"]).read_text())
    for entry in data["data"]:
        del entry["ocr_tokens"]
    (tmp_path / "TextVQA_0.5.1_val.json").write_text(json.dumps(data))
    info = {**infos["textvqa"], "annotations": {"val": {"storage": str(tmp_path / "TextVQA_0.5.1_val.json")}}}
    with pytest.raises(DataError, match="ocr_tokens_in_prompt is true but no entry has ocr_tokens; add the OCR file"):
        built(bench_suite_config(tmp_path / "a.yaml", {"textvqa": info}))
    # The Rosetta OCR file as a second annotation file gives the tokens back.
    (tmp_path / "TextVQA_Rosetta_OCR_v0.2_val.json").write_text(json.dumps({"data": [{"image_id": "shape_289", "ocr_tokens": ["ab", "c"]}]}))
    info = {**infos["textvqa"], "annotations": {"val": {"storage": [str(tmp_path / "TextVQA_0.5.1_val.json"), str(tmp_path / "TextVQA_Rosetta_OCR_v0.2_val.json")]}}}
    datasets, _ = built(bench_suite_config(tmp_path / "b.yaml", {"textvqa": info}))
    assert "Reference OCR token: ab, c\n" in datasets["textvqa"]["val"].samples[1].prompt
    datasets, _ = built(bench_suite_config(tmp_path / "c.yaml", {"textvqa": info}, datasets={"textvqa": {"ocr_tokens_in_prompt": False}}))
    assert "OCR" not in datasets["textvqa"]["val"].samples[1].prompt


def test_mme_reads_the_eval_tools_lists_in_their_order(tmp_path: Path, layouts: tuple[Path, dict[str, Any]]) -> None:
    """``eval_tool/Your_Results/<subtask>.txt``: image<TAB>question<TAB>answer lines, images found in the release folder."""
    _, infos = layouts
    release = infos["mme"]["annotations"]["test"]["storage"]
    lists = tmp_path / "Your_Results"
    lists.mkdir()
    folder_layout, _ = built(bench_suite_config(tmp_path / "a.yaml", {"mme": infos["mme"]}))
    by_task: dict[str, list[str]] = {}
    for s in folder_layout["mme"]["test"].samples:
        by_task.setdefault(s.extra["subtask"], []).append(f"{s.extra['image_name']}\t{s.extra['question']}\t{s.references[0]}")
    for task, lines in by_task.items():
        (lists / f"{task}.txt").write_text("\n".join(lines) + "\n")
    info = {"annotations": {"test": {"storage": str(lists)}}, "images": {"storage": release}}
    list_layout, _ = built(bench_suite_config(tmp_path / "b.yaml", {"mme": info}))
    a, b = folder_layout["mme"]["test"].samples, list_layout["mme"]["test"].samples
    assert [(s.id, s.images, s.prompt, s.references) for s in a] == [(s.id, s.images, s.prompt, s.references) for s in b]


def test_missing_files_of_several_benchmarks_are_reported_together(tmp_path: Path, layouts: tuple[Path, dict[str, Any]]) -> None:
    _, infos = layouts
    broken = {
        "gqa": {**infos["gqa"], "images": {"storage": str(tmp_path / "no_gqa_images")}},
        "pope": {**infos["pope"], "annotations": {"test": {"storage": [str(tmp_path / "coco_pope_random.json")]}}},
        "vizwiz": {**infos["vizwiz"], "images": {"storage": str(tmp_path)}},  # the folder is there, its images are not
        "okvqa": infos["okvqa"],
    }
    with pytest.raises(DataError) as info:
        built(bench_suite_config(tmp_path / "a.yaml", broken))
    message = str(info.value)
    assert message.startswith("3 of 4 dataset(s) cannot be evaluated (nothing was run; run.on_missing=skip evaluates the others):")
    assert f"  - gqa: datasets.gqa.build_info.images.storage: folder not found: {tmp_path / 'no_gqa_images'}" in message
    assert f"  - pope: datasets.pope.build_info.annotations.test: {tmp_path / 'coco_pope_random.json'} not found" in message
    assert "  - vizwiz: " in message and "image not on disk" in message and "okvqa" not in message
    datasets, skipped = built(bench_suite_config(tmp_path / "b.yaml", broken, run={"on_missing": "skip"}))
    assert list(datasets) == ["okvqa"] and sorted(skipped) == ["gqa", "pope", "vizwiz"]
    only_missing = {"gqa": broken["gqa"]}
    with pytest.raises(MissingFileError, match="1 of 1 dataset"):
        built(bench_suite_config(tmp_path / "c.yaml", only_missing))


def test_evaluate_fails_before_the_model_is_built_naming_the_benchmark_whose_images_are_missing(tmp_path: Path, layouts: tuple[Path, dict[str, Any]]) -> None:
    _, infos = layouts
    infos = {"pope": infos["pope"], "gqa": {**infos["gqa"], "images": {"storage": str(tmp_path / "gqa_images")}}}
    cfg = bench_suite_config(tmp_path / "suite.yaml", infos, run={"output_dir": str(tmp_path / "out"), "job_id": "e"})
    proc = launch("evaluate.py", ["--cfg-path", str(cfg)], timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: 1 of 2 dataset(s) cannot be evaluated (nothing was run; run.on_missing=skip evaluates the others):\n  - gqa: datasets.gqa.build_info.images.storage: folder not found: {tmp_path / 'gqa_images'}" in proc.stderr
    assert "parameters:" not in proc.stderr and "LLM attention" not in proc.stderr  # no model was built
    assert not (tmp_path / "out" / "e" / "results.md").exists() and "Traceback" not in proc.stderr


@dataclass
class _Dataset:
    prompt_template: str = "<image>\n{question}"


def test_a_users_benchmark_is_a_builder_and_a_scorer_chosen_by_name() -> None:
    """A scorer registered by the user is looked up by datasets.<name>.scorer; its headline goes into settings."""

    @registry.register_scorer("first_word_test")
    class FirstWord(Scorer):
        headline = "accuracy"
        headline_scale = 100.0

        def __call__(self, results: list[dict[str, Any]], dataset: Any) -> dict[str, Any]:
            right = [r["prediction"].split()[0].lower() == r["references"][0] for r in results]
            for r, ok in zip(results, right):
                r["correct"] = ok
            return {"accuracy": sum(right) / len(right), "agg_metrics": sum(right) / len(right)}

    run = OmegaConf.create({"generate": {"max_new_tokens": 10, "min_new_tokens": 1, "num_beams": 1, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0}})
    task = GenerationTask(run, OmegaConf.create({"mine": {"scorer": "first_word_test", "generate": {"max_new_tokens": 3}}}))
    task.active = "mine"
    results = [{"id": 1, "prediction": "Red circle", "references": ["red"]}, {"id": 2, "prediction": "blue", "references": ["red"]}]
    metrics = task.compute_metrics(results, _Dataset())  # type: ignore[arg-type]
    assert metrics["accuracy"] == 0.5 and [r["correct"] for r in results] == [True, False]
    assert metrics["settings"]["scorer"] == "first_word_test" and metrics["settings"]["headline"] == {"metric": "accuracy", "value": 50.0}
    assert metrics["settings"]["generate"]["max_new_tokens"] == 3 and metrics["settings"]["generate"]["num_beams"] == 1
    assert metrics["settings"]["prompt"] == "<image>\n{question}"
    problems = GenerationTask.config_problems(
        {"generate": dict(run.generate)},
        {"mine": {"scorer": "first_word_tst", "generate": {"max_new_token": 3}}, "pope": {"scorer": "pope", "generate": {"num_beams": 0}}, "train": {"sample_ratio": None}},
    )
    assert problems[0].startswith("datasets.mine.scorer: Unknown scorer 'first_word_tst'. Did you mean: 'first_word_test'?")
    assert "datasets.mine.generate.max_new_token: unknown key; did you mean 'datasets.mine.generate.max_new_tokens'?" in problems
    assert "datasets.pope.generate.num_beams: must be at least 1, got 0" in problems and len(problems) == 3


def test_a_misspelt_scorer_in_a_run_config_fails_at_start_up(tmp_path: Path, layouts: tuple[Path, dict[str, Any]]) -> None:
    _, infos = layouts
    cfg = bench_suite_config(tmp_path / "a.yaml", {"pope": infos["pope"]}, datasets={"pope": {"scorer": "popee"}})
    with pytest.raises(ConfigError, match="datasets.pope.scorer: Unknown scorer 'popee'. Did you mean: 'pope'?"):
        Config(str(cfg), purpose="evaluate")


def test_best_metric_names_a_dataset_and_a_validation_split_and_picks_by_that_number(tmp_path: Path) -> None:
    splits = {"train": {"storage": "t.json"}, "val": {"storage": "v.json"}}
    base = {"model": {"arch": "blip2_qwen", "model_type": "demo"}, "datasets": {"vqav2": {"build_info": {"annotations": splits}}}}

    def problems(best: str, valid: list[str]) -> str:
        path = tmp_path / "best_metric.yaml"
        path.write_text(OmegaConf.to_yaml(OmegaConf.create({**base, "run": {"task": "vqa", "valid_splits": valid, "best_metric": best}})))
        try:
            Config(str(path), purpose="train")
        except ConfigError as exc:
            return str(exc)
        return ""

    assert "run.best_metric: 'pope/f1' must be dataset/split/metric (e.g. pope/test/f1)" in problems("pope/f1", ["val"])
    assert "names dataset 'vqav3', which the config does not have; did you mean 'vqav2'?" in problems("vqav3/val/overall", ["val"])
    assert "names split 'test', which is not in run.valid_splits (val)" in problems("vqav2/test/overall", ["val"])
    assert problems("vqav2/val/overall", ["val"]) == ""
    results = {"vqav2/val": {"agg_metrics": 1.0, "overall": 20.0, "random": {"f1": 0.5}}, "gqa/val": {"agg_metrics": 3.0}}
    pick = lambda best: RunnerBase.selection_value(SimpleNamespace(run=OmegaConf.create({"best_metric": best})), results)  # type: ignore[arg-type]  # noqa: E731
    assert pick(None) == 2.0 and pick("vqav2/val/overall") == 20.0 and pick("vqav2/val/random/f1") == 0.5  # default: the mean agg_metrics
    with pytest.raises(ConfigError, match="run.best_metric: validation scored no 'vqav2/val/f1'; it has vqav2/val/agg_metrics, vqav2/val/overall, vqav2/val/random/f1"):
        pick("vqav2/val/f1")


def test_results_md_has_a_row_per_benchmark_the_prompt_on_one_line_and_the_skipped_ones() -> None:
    metrics = {
        "pope/test": {"agg_metrics": 0.85, "n_samples": 15, "settings": {"headline": {"metric": "f1", "value": 85.0}, "prompt": "<image>\n{question}\nA | B",
                                                                         "generate": {"max_new_tokens": 3, "num_beams": 1, "do_sample": False}}},
        "loss/val": {"agg_metrics": -1.25, "n_samples": 7},
    }  # fmt: skip
    text = results_markdown(metrics, {"mme": "datasets.mme.build_info.annotations.test: /x/MME not found\nmore"}, {"model": "blip2_qwen (demo)"})
    assert "| pope | test | f1 | 85.00 | 15 | `<image>\\n{question}\\nA \\| B` | greedy, max_new_tokens 3 |" in text
    assert "| loss | val | agg_metrics | -1.25 | 7 |  |  |" in text
    assert "Skipped (1, run.on_missing=skip):\n\n- mme: datasets.mme.build_info.annotations.test: /x/MME not found\n" in text
    assert "- model: blip2_qwen (demo)" in text


def test_the_demo_suite_config_and_the_full_size_suite_validate_and_the_demo_files_are_what_the_script_writes(tmp_path: Path) -> None:
    """projects/demo/data/suite is make_eval_suite_data.py's output (the JSON byte for byte)."""
    for cfg in ("projects/demo/eval_suite.yaml", "projects/blip2_qwen/eval/suite.yaml"):
        config = Config(str(REPO / cfg), purpose="evaluate")
        assert config.run_cfg.task == "benchmark"
    module = make_eval_suite_data()
    module.write_layouts(tmp_path, module.DEMO_LAYOUTS)
    shipped = REPO / "projects" / "demo" / "data" / "suite"
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file())
    for rel in written:
        if rel.suffix == ".json":
            assert (tmp_path / rel).read_bytes() == (shipped / rel).read_bytes(), rel
    shutil.rmtree(tmp_path)
