"""Shared test set-up: CPU DeepSpeed, repository paths, the tiny model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (run_scripts/test.sh runs two workers on the 2 cores) each
# worker and each process it launches computes on one thread (the shipped demos
# excepted: train_shipped): the tiny model gains at most 1.3x from a second thread.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
USER_THREADS = os.environ.get("OMP_NUM_THREADS")
if XDIST_WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "projects" / "demo" / "data"
DEMO = str(REPO / "projects" / "demo" / "train.yaml")


def demo_model_overrides() -> dict[str, Any]:
    """What the demo run config sets over the ``demo`` model type's shapes (its query count), as ``load_model`` overrides.

    A release of the demo run loads into a model of the same shapes only.
    """
    from omegaconf import OmegaConf

    return {"qformer": OmegaConf.to_container(OmegaConf.load(DEMO).model.qformer)}


def _small_demo_options(n: int = 60) -> list[str]:
    """``--options`` that train the demo recipe on the first ``n`` records of each demo file, without validation.

    The mechanics tests (resume, ZeRO stages, accumulation, kills) need a few
    steps with fixed counts, not the demo's minutes of training; the data are
    the shipped files' own records, written once per session to a temp folder.
    """
    folder = Path(tempfile.mkdtemp(prefix="lavislite-small-demo-"))
    options = []
    for builder in ("minigpt4_instruction", "llava_instruction"):
        records = json.loads((DEMO_DATA / f"{builder}.json").read_text())[:n]
        (folder / f"{builder}.json").write_text(json.dumps(records))
        options.append(f"datasets.{builder}.build_info.annotations.train.storage={folder / f'{builder}.json'}")
    # ZeRO-2 as the mechanics tests were written for (the shipped demo runs stage 0 on one process)
    return [*options, "run.batch_size_train=8", "run.valid_splits=[]", "run.test_splits=[]", "run.deepspeed_config.zero_optimization.stage=2"]


# The demo recipe on 60 + 60 records, batch 8, no validation: 15 batches per epoch on one process.
SMALL = _small_demo_options()


def run_env() -> dict[str, str]:
    """The environment for subprocess runs of train.py / torchrun (CPU DeepSpeed, quiet)."""
    env = dict(os.environ)
    env["DS_ACCELERATOR"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    # gloo all-reduces; no 1-2 minute compile of DeepSpeed's CPU shared-memory op per fresh environment
    env.setdefault("LAVISLITE_DS_SHM_OP", "0")
    return env


@pytest.fixture(autouse=True)
def fresh_lavislite_logger() -> Iterator[None]:
    """Gives each test the ``lavislite`` logger as a fresh interpreter has it: no handler, propagating.

    Building a model in-process (``load_model``, the chat, an entry point's
    ``main``) sets the logger up as a program wants it: its own stderr handler,
    ``propagate = False``. Left so by an earlier test or a module-scoped
    fixture, a test gets no records through ``caplog``, which listens on the
    root logger (the order of tests depends on the files run and, under
    xdist, on the worker).
    """
    import logging

    def reset() -> None:
        logger = logging.getLogger("lavislite")
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)

    reset()
    yield
    reset()


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def tiny_model():  # type: ignore[no-untyped-def]
    """The demo blip2_qwen (random weights, real Qwen tokenizer), built once per session."""
    import torch

    from lavislite.models import load_model

    torch.manual_seed(0)
    return load_model("blip2_qwen", "demo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_cmd(script: str, args: list[str], nproc: int = 1, torchrun_args: list[str] | None = None) -> list[str]:
    """The command line of a root entry point (``train.py``, ``evaluate.py``), plain or under torchrun."""
    path = str(REPO / script)
    if nproc == 1 and torchrun_args is None:
        return [sys.executable, path, *args]
    rdzv = torchrun_args if torchrun_args is not None else ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *rdzv, path, *args]


def launch(
    script: str, args: list[str], nproc: int = 1, cwd: Path | str = REPO, timeout: int = 420, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs a root entry point in one process or under torchrun and waits for it (``env``: default ``run_env()``)."""
    return subprocess.run(launch_cmd(script, args, nproc), cwd=cwd, env=env or run_env(), capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The training records of a run's metrics.jsonl (validation and test records left out)."""
    return [r for r in all_records(run_dir) if "loss" in r]


def all_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of a run's metrics.jsonl."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_shipped(config: str, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """Trains a shipped run config as it is (one process) into a fresh folder; the run folder."""
    out = tmp_path_factory.mktemp(f"{name}_run")
    env = run_env()
    if USER_THREADS is None:
        # As the README runs it: every core's thread (the xdist workers' one thread
        # per process would change the numerics, and what the demo learns with them).
        env.pop("OMP_NUM_THREADS", None)
    # 900 s: a demo trains in 1.5-5 minutes on 2 quiet cores; a busy machine must not turn that into a timeout.
    proc = launch("train.py", ["--cfg-path", config, "--options", f"run.output_dir={out}", f"run.job_id={name}"], timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / name


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README demo as shipped (one process), trained once per test session; its run folder.

    End-to-end tests that need a trained model (evaluation, loading a release)
    read this run instead of training their own.
    """
    return train_shipped(DEMO, tmp_path_factory, "demo")


LLAVA_DEMO = str(REPO / "projects" / "llava" / "demo.yaml")


@pytest.fixture(scope="session")
def llava_demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The llava demo as shipped (``projects/llava/demo.yaml``, one process), trained once per test session; its run folder."""
    return train_shipped(LLAVA_DEMO, tmp_path_factory, "llava")


INSTRUCTBLIP_DEMO = str(REPO / "projects" / "instructblip" / "demo.yaml")


@pytest.fixture(scope="session")
def instructblip_demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The InstructBLIP demo as shipped (``projects/instructblip/demo.yaml``, one process), trained once per test session."""
    return train_shipped(INSTRUCTBLIP_DEMO, tmp_path_factory, "instructblip")


def train_zero3_with_text_only(config: str, tmp_path: Path) -> list[float]:
    """Trains a demo run config on 14 samples under torchrun (2 processes, ZeRO-3, batch 1), 11 of them text-only.

    8 LLaVA records of which 3 keep their image and 6 MiniGPT4Qwen ones: an odd
    number of image samples, so some step has an image on one rank only, whose
    partner must still run the vision path for ZeRO-3's collectives to match.

    Returns:
        The loss of every step (7).
    """
    llava = [r for r in json.loads((DEMO_DATA / "llava_instruction.json").read_text()) if isinstance(r.get("image"), str)][:8]
    for rec in llava[1::2] + llava[2:3]:  # 3 of 8 keep their image
        rec.pop("image")
        rec["conversations"][0]["value"] = rec["conversations"][0]["value"].replace("<image>", "").strip()
    minigpt4 = json.loads((DEMO_DATA / "minigpt4_instruction.json").read_text())[:6]
    for name, records in (("llava_instruction", llava), ("minigpt4_instruction", minigpt4)):
        (tmp_path / f"{name}.json").write_text(json.dumps(records))
    options = [
        *(f"datasets.{name}.build_info.annotations.train.storage={tmp_path / f'{name}.json'}" for name in ("llava_instruction", "minigpt4_instruction")),
        "run.batch_size_train=1",
        "run.max_epoch=1",
        "run.log_freq=1",
        "run.num_workers=0",
        "run.valid_splits=[]",
        "run.test_splits=[]",
        "run.dist_timeout_minutes=1",
        "run.deepspeed_config.zero_optimization.stage=3",
        f"run.output_dir={tmp_path}",
        "run.job_id=z3",
    ]
    proc = launch("train.py", ["--cfg-path", config, "--options", *options], nproc=2, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DeepSpeed ZeRO-3, fp32, world size 2, 7 optimizer steps (7 per epoch)" in proc.stderr
    assert (tmp_path / "z3" / "release" / "model.safetensors").is_file()
    return [r["loss"] for r in all_records(tmp_path / "z3") if "loss" in r]


def held_out_questions() -> list[tuple[str, str]]:
    """(image path, question): one held-out test image per shape, asked for its colour and its shape."""
    meta = json.loads((DEMO_DATA / "metadata.json").read_text())
    per_shape: dict[str, str] = {}
    for m in meta:
        if m["split"] == "eval":
            per_shape.setdefault(m["shape"], m["file"])
    return [(str(DEMO_DATA / "images" / f), q) for f in per_shape.values() for q in ("What colour is the shape?", "What shape is in the image?")]


def export_and_ask_without_lavislite(run_dir: Path, tmp_path: Path, script: str, new_tokens: int) -> list[dict[str, Any]]:
    """Exports a run with ``python -m lavislite.export`` to ``tmp_path/export``, then runs ``script`` there where
    ``import lavislite`` fails (``run_without_lavislite``) on ``held_out_questions()``; its ``out.json``.

    The script reads ``spec.json`` (``questions``: [image, question] pairs; ``new_tokens``) and writes one
    result per question to ``out.json``.
    """
    export = subprocess.run(
        [sys.executable, "-m", "lavislite.export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "export")],
        cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=300,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    (tmp_path / "spec.json").write_text(json.dumps({"questions": held_out_questions(), "new_tokens": new_tokens}))
    proc = run_without_lavislite(script, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "out.json").read_text())  # type: ignore[no-any-return]


def run_without_lavislite(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a fresh ``python -I -S`` that has the venv's packages but cannot import lavislite.

    ``-I`` drops PYTHONPATH, the current folder and the user site; ``-S`` skips
    ``site``, so the venv's ``.pth`` files (the editable install's finder among
    them) never run. Only the site-packages folders go on ``sys.path`` (plain
    folders), and the script first asserts that ``lavislite`` cannot be found.
    """
    import sysconfig

    paths = sysconfig.get_paths()
    site = sorted({paths["purelib"], paths["platlib"]})
    head = (
        "import importlib.util, sys\n"
        f"sys.path[:0] = {site!r}\n"
        "assert sys.flags.isolated and sys.flags.no_site\n"
        "assert importlib.util.find_spec('lavislite') is None, 'lavislite is importable'\n"
    )
    (cwd / "without_lavislite.py").write_text(head + code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return subprocess.run([sys.executable, "-I", "-S", str(cwd / "without_lavislite.py")], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# The two-process demo run that several tests compare against: 2 epochs, a log record per step.
TWO_PROC = [*SMALL, "run.max_epoch=2", "run.log_freq=1", "run.num_workers=1", "run.save_freq_epochs=1"]


@pytest.fixture(scope="session")
def zero2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo for 2 epochs on 2 processes (ZeRO-2, one DataLoader worker each), logging every step; trained once."""
    out = tmp_path_factory.mktemp("zero2")
    proc = launch("train.py", ["--cfg-path", DEMO, "--options", f"run.output_dir={out}", "run.job_id=full", *TWO_PROC], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DeepSpeed ZeRO-2, fp32, world size 2, 14 optimizer steps (7 per epoch)" in proc.stderr
    return out / "full"


def demo_data_config(path: Path, builder: str, annotations: Path, run: dict[str, Any], image_size: int = 64) -> Path:
    """Writes a run config: the demo model trained on one annotation file (demo images), with ``run`` settings."""
    from omegaconf import OmegaConf

    config = {
        "model": {"arch": "blip2_qwen", "model_type": "demo"},
        "datasets": {
            builder: {
                "build_info": {"annotations": {"train": {"storage": str(annotations)}}, "images": {"storage": str(DEMO_DATA / "images")}},
                "vis_processor": {"train": {"name": "blip2_image_train", "image_size": image_size}},
                "text_processor": {"train": {"name": "qwen_chat", "max_len": 256}},
            }
        },
        "run": {"task": "image_text_pretrain", "precision": "fp32", **run},
    }
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    return path


def tiny_release(folder: Path) -> Path:
    """The demo model with random weights as a release folder (what a run writes in release/), in seconds."""
    import torch

    from lavislite.models import load_model, write_release

    torch.manual_seed(0)
    model = load_model("blip2_qwen", "demo", **demo_model_overrides())  # the shapes the demo eval configs build
    config = {"model": {"arch": "blip2_qwen", "model_type": "demo", **demo_model_overrides()}, "datasets": {}, "run": {}}
    write_release(str(folder), model.trainable_state_dict(), config)
    return folder


def make_eval_suite_data() -> Any:
    """``projects/demo/make_eval_suite_data.py`` as a module: writes the demo's held-out images in each benchmark's layout."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_eval_suite_data", REPO / "projects" / "demo" / "make_eval_suite_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_suite_config(path: Path, infos: dict[str, dict[str, Any]], run: dict[str, Any] | None = None, datasets: dict[str, dict[str, Any]] | None = None) -> Path:
    """Writes a suite run config: the demo model, each benchmark's ``build_info`` (``infos``), the demo's processors.

    Args:
        infos: ``{benchmark: build_info}`` (``make_eval_suite_data.write_layouts``).
        run: ``run`` keys over ``task: benchmark`` and ``test_splits``: every split name of ``infos``.
        datasets: more keys per benchmark (``prompt_suffix``, ``generate``, ...), over the
            script's ``DATASET_KEYS`` (OK-VQA's image names).
    """
    from omegaconf import OmegaConf

    keys = make_eval_suite_data().DATASET_KEYS
    splits = sorted({split for info in infos.values() for split in info["annotations"]})

    sections = {
        name: {
            "build_info": info,
            "vis_processor": {"eval": {"name": "blip_image_eval", "image_size": 64}},
            "text_processor": {"eval": {"name": "qwen_chat", "max_len": 256}},
            **keys.get(name, {}),
            **(datasets or {}).get(name, {}),
        }
        for name, info in infos.items()
    }
    config = {
        "model": {"arch": "blip2_qwen", "model_type": "demo", **demo_model_overrides()},
        "datasets": sections,
        "run": {"task": "benchmark", "test_splits": splits, "batch_size_eval": 4, "num_workers": 0, "precision": "fp32", **(run or {})},
    }
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    return path


# Test files whose tests train or launch processes (minutes each on 2 cores).
SLOW_FILES = {"test_instructblip_demo.py", "test_llava_demo.py", "test_resilience.py", "test_streaming_dist.py", "test_train_e2e.py", "test_benchmarks.py", "test_runner_launch.py", "test_runner_positions.py", "test_zero3_text_only.py", "test_evaluation_e2e.py", "test_webui.py", "test_benchmark_suite_e2e.py"}
# Fixtures that train a run once per session, the longest training (with its tests) first.
RUN_ORDER = ("demo_run", "llava_demo_run", "instructblip_demo_run", "zero2_run")
SLOW_FIXTURES = set(RUN_ORDER)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains a model or launches processes (minutes); quick feedback with -m 'not slow'")


def pytest_itemcollected(item: pytest.Item) -> None:
    """Marks the tests of ``SLOW_FILES`` and every test that needs a trained run as ``slow``.

    Under pytest-xdist (``--dist loadgroup``) the tests that read one session
    run go to one worker together (``xdist_group``), so each run is trained
    once; the other tests go by file, so a module-scoped fixture (a model, a
    browser) is built once too. (Marked here, as each test is collected:
    xdist reads the groups in its own ``pytest_collection_modifyitems``.)
    """
    fixtures = set(getattr(item, "fixturenames", ()))
    if item.path.name in SLOW_FILES or SLOW_FIXTURES & fixtures:
        item.add_marker(pytest.mark.slow)
    runs = sorted(SLOW_FIXTURES & fixtures)
    item.add_marker(pytest.mark.xdist_group("+".join(runs) if runs else item.path.name))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, puts the trained runs' tests first, then the other slow tests.

    The workers hand out groups in collection order (run_scripts/test.sh passes
    --no-loadscope-reorder), so no minutes-long group starts last while the
    other worker idles. A plain run keeps the files' order.
    """
    if not XDIST_WORKER:
        return

    def cost(item: pytest.Item) -> int:
        fixtures = set(getattr(item, "fixturenames", ()))
        for rank, run in enumerate(RUN_ORDER):
            if run in fixtures:
                return rank
        return len(RUN_ORDER) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=cost)
