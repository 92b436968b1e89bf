"""Follows the README's "Add your own dataset" steps literally.

The files and the command are taken from the README itself, written into a
fresh folder, and the command trains two steps.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_env


def _readme_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return text.split("## Add your own dataset", 1)[1].split("\n## ", 1)[0]


def _files_and_command(section: str) -> tuple[dict[str, str], str]:
    files = dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", section, flags=re.S))
    command = re.findall(r"<!-- command -->\n```\w*\n(.*?)```", section, flags=re.S)[0].strip()
    return files, command


def test_readme_builder_registers_by_import_and_trains_two_steps(tmp_path: Path) -> None:
    files, command = _files_and_command(_readme_section())
    assert set(files) == {"my_project/my_builders.py", "my_project/my_captions.yaml", "my_project/train_my_captions.yaml"}
    for rel, body in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(body, encoding="utf-8")
    argv = shlex.split(command)
    assert argv[:2] == ["python", "train.py"]
    cmd = [sys.executable, str(REPO / "train.py"), *argv[2:], "--options", "run.max_steps=2", "run.log_freq=1", "run.job_id=readme"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n_captions = len(json.loads((REPO / "projects" / "demo" / "data" / "eval_caption.json").read_text()))
    assert f"dataset my_captions/train: {n_captions} samples" in proc.stderr
    run_dir = tmp_path / "output" / "my_captions" / "readme"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["loss"] > 0 for r in records)
    assert "my_captions" in (run_dir / "config.yaml").read_text()


def test_builder_is_unknown_without_the_import(tmp_path: Path) -> None:
    files, _ = _files_and_command(_readme_section())
    cfg = tmp_path / "train.yaml"
    cfg.write_text(files["my_project/train_my_captions.yaml"].replace("  imports: [my_project/my_builders.py]\n", ""))
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--cfg-path", str(cfg)], cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "datasets.my_captions: Unknown builder 'my_captions'" in proc.stderr


def test_readme_builder_names_a_bad_record_in_one_line(tmp_path: Path) -> None:
    # The README's builder on its own data with one record lacking its caption:
    # one "error:" line naming the file and the record, exit 2, no traceback.
    files, command = _files_and_command(_readme_section())
    for rel, body in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(body, encoding="utf-8")
    records = json.loads((REPO / "projects" / "demo" / "data" / "eval_caption.json").read_text())
    del records[1]["caption"]
    bad = tmp_path / "captions.json"
    bad.write_text(json.dumps(records))
    argv = shlex.split(command)
    cmd = [sys.executable, str(REPO / "train.py"), *argv[2:], "--options", f"datasets.my_captions.build_info.annotations.train.storage={bad}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert errors == [f"error: {bad}[1]: missing key(s) 'caption' (needs image, caption, image_id)"], proc.stderr[-3000:]
    # The README quotes the same line.
    assert "error: .../captions.json[1]: missing key(s) 'caption' (needs image, caption, image_id)" in _readme_section()
