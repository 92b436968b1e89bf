"""Entry points as a newcomer meets them: clean errors, shipped configs, an installed package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from conftest import DEMO, DEMO_DATA, REPO, demo_data_config, launch, run_env


def _missing_image_config(tmp_path: Path) -> Path:
    records = json.loads((DEMO_DATA / "minigpt4_instruction.json").read_text())[:6]
    records[2]["image"] = "no_such_image.jpg"
    records[4]["image"] = "gone/also_missing.jpg"
    (tmp_path / "ann.json").write_text(json.dumps(records))
    return demo_data_config(tmp_path / "run.yaml", "minigpt4_instruction", tmp_path / "ann.json", {"output_dir": str(tmp_path / "out"), "job_id": "missing", "num_workers": 0})


def test_missing_image_fails_before_the_model_is_built_without_a_traceback(tmp_path: Path) -> None:
    """Issue 10: every missing image reported at once, with its sample id, in seconds."""
    cfg = _missing_image_config(tmp_path)
    start = time.time()
    proc = launch("train.py", ["--cfg-path", str(cfg)])
    elapsed = time.time() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr
    ann = tmp_path / "ann.json"
    assert f"error: 2 bad record(s) in {ann} (of 6); datasets.minigpt4_instruction.on_bad_sample=skip leaves them out:" in err
    assert f"{ann}[2] (id={json.loads(ann.read_text())[2]['id']}): image not on disk: {DEMO_DATA / 'images' / 'no_such_image.jpg'}" in err
    assert "gone/also_missing.jpg" in err
    assert "Traceback" not in err
    assert "parameters:" not in err  # the model was never built
    assert elapsed < 30
    # --debug shows the traceback
    proc = launch("train.py", ["--cfg-path", str(cfg), "--debug"])
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "SampleError" in proc.stderr


def test_data_errors_under_torchrun_are_clean_too(tmp_path: Path) -> None:
    cfg = _missing_image_config(tmp_path)
    proc = launch("train.py", ["--cfg-path", str(cfg)], nproc=2)
    assert proc.returncode != 0
    assert "error (rank 0): 2 bad record(s) in" in proc.stderr
    # torchrun prints its own ChildFailedError summary; no frame of lavislite's appears
    assert f'File "{REPO / "lavislite"}' not in proc.stderr and "SampleError" not in proc.stderr


def test_terminal_gets_a_summary_and_the_log_file_the_whole_config(tmp_path: Path) -> None:
    proc = launch("train.py", ["--cfg-path", DEMO, "--options", f"run.output_dir={tmp_path}", "run.job_id=s", "run.max_steps=1", "run.num_workers=0"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"run folder {tmp_path / 's'} (full config in config.yaml and train.log)" in proc.stderr
    assert "config:\n" not in proc.stderr and "image_placeholders" not in proc.stderr
    log = (tmp_path / "s" / "train.log").read_text()
    assert "config:\n" in log and "image_placeholders" in log


def test_shipped_config_by_package_prefix(tmp_path: Path) -> None:
    """``lavislite:projects/...`` resolves inside the installed package, from any folder."""
    from lavislite.common.config import resolve_config_path

    assert resolve_config_path("lavislite:projects/demo/train.yaml") == str(Path(DEMO))
    proc = launch(
        "evaluate.py",
        ["--cfg-path", "lavislite:projects/demo/train.yaml", "--options", "run.test_splits=[tets]"],
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "--options run.test_splits=[tets]: unknown split 'tets'" in proc.stderr


def _fresh_venv_with_wheel(tmp_path: Path) -> Path:
    """A new virtual environment with lavislite installed non-editable (no clone needed to run it).

    Its other packages (torch, transformers, deepspeed, ...) come from the test
    environment through a ``.pth`` line: a plain path entry, so the test
    environment's editable lavislite finder is not loaded there.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # Build from a copy so the build leaves nothing in the checkout.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "output", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    # The new environment's python runs pip (reached through the .pth line), so
    # the console scripts point at that python. --ignore-installed: pip sees the
    # test environment's lavislite through that line and would uninstall it.
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--no-build-isolation", "--no-compile", str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return venv


@pytest.mark.slow  # trains the demo model
def test_installed_package_trains_the_shipped_demo_from_an_empty_folder(tmp_path: Path) -> None:
    """Issue 10: ``pip install .`` (no clone) then ``lavislite-train --cfg-path lavislite:...``."""
    venv = _fresh_venv_with_wheel(tmp_path)
    work = tmp_path / "empty"
    work.mkdir()
    env = run_env()
    env.pop("PYTHONPATH", None)
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import lavislite; print(lavislite.__file__)"], cwd=work, env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert str(venv) in probe.stdout  # the installed copy, not the checkout
    proc = subprocess.run(
        [str(venv / "bin" / "lavislite-train"), "--cfg-path", "lavislite:projects/demo/train.yaml", "--options", "run.max_steps=2", "run.num_workers=0", "run.job_id=inst"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = work / "output" / "demo" / "inst"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.jsonl").is_file()
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
    # python -m works the same way
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "lavislite.evaluate", "--cfg-path", "lavislite:projects/demo/train.yaml", "--options", "run.test_splits=[tets]"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "unknown split 'tets'" in proc.stderr


def test_common_imports_nothing_above_it() -> None:
    """Issue 10: ``lavislite.common`` is the floor; it never imports lavislite's upper layers."""
    offenders = []
    for path in sorted((REPO / "lavislite" / "common").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("import lavislite", "from lavislite")) and not stripped.startswith(("from lavislite.common", "import lavislite.common")):
                offenders.append(f"{path.name}:{n}: {stripped}")
    assert offenders == []


def test_importing_lavislite_makes_idle_openmp_threads_sleep() -> None:
    """OMP_WAIT_POLICY=PASSIVE is set before torch loads (LAVISLITE_THREADS=torch and a user's value are kept)."""
    # One interpreter, the three cases in turn (the package's __init__ re-run on a fresh import).
    code = (
        "import importlib, os, sys\n"
        "for extra in ({}, {'LAVISLITE_THREADS': 'torch'}, {'OMP_WAIT_POLICY': 'ACTIVE'}):\n"
        "    for k in ('OMP_WAIT_POLICY', 'LAVISLITE_THREADS'): os.environ.pop(k, None)\n"
        "    os.environ.update(extra)\n"
        "    sys.modules.pop('lavislite', None)\n"
        "    importlib.import_module('lavislite')\n"
        "    print(os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["PASSIVE", "None", "ACTIVE"], proc.stderr[-2000:]


@pytest.mark.parametrize("threads_env", [None, "3"])
def test_thread_settings(threads_env: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from lavislite.common.dist_utils import configure_threads

    before = torch.get_num_threads()
    try:
        if threads_env is None:
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
            monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
            cores = len(os.sched_getaffinity(0))
            assert configure_threads() == cores == torch.get_num_threads()  # one process: every core
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))
            assert configure_threads() == 1  # a process per core: one each
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores * 2))
            assert configure_threads() == 1  # never none
        else:
            monkeypatch.setenv("OMP_NUM_THREADS", threads_env)
            assert configure_threads() == torch.get_num_threads() == before  # the user's setting wins
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("spelling", ["--checkpoint", "--options"])
def test_evaluate_with_a_missing_checkpoint_fails_first_names_every_place_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    """Issue 15 (newcomer trap): the error used to name only <cache_root>/PATH, after the datasets
    were built, and to leave a run folder holding only evaluate.log."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LAVISLITE_CACHE", str(cache))
    ask = ["--checkpoint", "output/demo/NOPE"] if spelling == "--checkpoint" else []
    out = tmp_path / "out"
    options = [f"run.output_dir={out}"] + ([] if ask else ["model.finetuned=output/demo/NOPE"])
    started = time.time()
    proc = launch("evaluate.py", ["--cfg-path", str(REPO / "projects" / "demo" / "eval_vqa.yaml"), *ask, "--options", *options], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    label = "--checkpoint output/demo/NOPE" if ask else "model.finetuned=output/demo/NOPE"
    assert proc.stderr.strip().splitlines() == [
        f"error: {label}: not found: nothing at {tmp_path / 'output/demo/NOPE'}, nor at {cache / 'output/demo/NOPE'} (under cache_root)"
    ]
    assert proc.stdout == ""
    assert not out.exists() and not cache.exists()  # no run folder, no log, nothing made
    assert time.time() - started < 60  # no model, no datasets (their build took 12 s of a 20 s run)


def test_evaluate_with_a_run_folder_without_release_fails_first(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train.log").write_text("killed before the release\n")
    proc = launch("evaluate.py", ["--cfg-path", str(REPO / "projects" / "demo" / "eval_vqa.yaml"), "--checkpoint", "run",
                                  "--options", f"run.output_dir={tmp_path / 'out'}"], cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: --checkpoint run: no lavislite checkpoint at 'run' ({tmp_path / 'run'}): looked for a run folder (release/")
    assert not (tmp_path / "out").exists()


def test_evaluate_docstring_names_what_a_run_writes() -> None:
    """The root evaluate.py's example named checkpoint_release.pth, a file no run writes."""
    for path in (REPO / "evaluate.py", REPO / "lavislite" / "evaluate.py"):
        assert "checkpoint_release.pth" not in path.read_text(), path
