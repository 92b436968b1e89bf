"""Atomic training checkpoints: what a resume needs, counted only once every rank has written it.

A checkpoint is a folder ``<run>/checkpoints/<tag>/`` holding the DeepSpeed
engine state (optimizer partitions, lr scheduler; frozen weights excluded,
since they come from the model's own sources), each rank's random state
(``rng_state_rank<R>.pt``) and the trainer state (``trainer_state.json``:
epoch, position in the epoch, step, best metric). It counts only once every
rank has finished writing and rank 0 has written the ``COMPLETE`` marker, last;
the run folder's pointer (``checkpoints/latest``) moves only then. DeepSpeed's
own ``latest`` file is not used: it is written before the other ranks finish.
A folder without the marker (a kill or a failure during the write) is never
loaded, and the log says it was skipped.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from typing import Any

import numpy as np
import torch

from lavislite.common.errors import MissingFileError
from lavislite.common.logger import logger

MARKER = "COMPLETE"
LATEST = "latest"
BEST = "best"
TRAINER_STATE = "trainer_state.json"


def rng_state() -> dict[str, Any]:
    """This process's random states (Python, NumPy, torch CPU and CUDA), loadable with ``weights_only=True``."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what ``rng_state`` returned."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(tag_dir: str, rank: int) -> str:
    return os.path.join(tag_dir, f"rng_state_rank{rank}.pt")


def is_complete(tag_dir: str) -> bool:
    return os.path.isfile(os.path.join(tag_dir, MARKER))


def check_resumable(path: str) -> None:
    """Raises unless ``path`` is a complete checkpoint folder (``.../checkpoints/<tag>``).

    Raises:
        MissingFileError: no checkpoint there, or one whose write never finished.
    """
    path = os.path.normpath(path)
    # DeepSpeed asserts (no message) on a missing folder; say what is wrong.
    if not os.path.isdir(path):
        raise MissingFileError(f"run.resume_ckpt_path: no DeepSpeed checkpoint at {path}")
    if not is_complete(path):
        raise MissingFileError(f"run.resume_ckpt_path: {path} is incomplete (no {MARKER} marker: its write did not finish); pick an earlier one")


def write_atomic(path: str, text: str) -> None:
    """Writes a small text file through a temporary name, so a reader sees the old or the new content."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def mark_complete(ckpt_root: str, tag: str, trainer_state: dict[str, Any], pointer: str = LATEST) -> None:
    """Rank 0, after every rank has written: the trainer state, the marker, then the pointer."""
    tag_dir = os.path.join(ckpt_root, tag)
    write_atomic(os.path.join(tag_dir, TRAINER_STATE), json.dumps(trainer_state, indent=1))
    write_atomic(os.path.join(tag_dir, MARKER), "")
    write_atomic(os.path.join(ckpt_root, pointer), tag)


def read_trainer_state(tag_dir: str) -> dict[str, Any]:
    with open(os.path.join(tag_dir, TRAINER_STATE), encoding="utf-8") as fh:
        return json.load(fh)


def _step_of(tag: str) -> int:
    m = re.search(r"(\d+)$", tag)
    return int(m.group(1)) if m else -1


def complete_tags(ckpt_root: str) -> list[str]:
    """Complete checkpoint tags, oldest first (by the step they were written at); logs incomplete ones."""
    if not os.path.isdir(ckpt_root):
        return []
    done: list[tuple[int, float, str]] = []
    for name in os.listdir(ckpt_root):
        tag_dir = os.path.join(ckpt_root, name)
        if not os.path.isdir(tag_dir):
            continue
        if not is_complete(tag_dir):
            logger.warning("skipping incomplete checkpoint %s (no %s marker: the write did not finish)", tag_dir, MARKER)
            continue
        state = read_trainer_state(tag_dir)
        done.append((int(state.get("global_step", _step_of(name))), os.path.getmtime(os.path.join(tag_dir, MARKER)), name))
    return [name for _, _, name in sorted(done)]


def latest_complete(ckpt_root: str) -> str | None:
    """The newest complete resume checkpoint folder of a run (by step), or None.

    Found by scanning for markers rather than trusting the pointer: the
    pointer is written last, so a kill between a marker and the pointer
    leaves the pointer one checkpoint behind.
    """
    tags = [t for t in complete_tags(ckpt_root) if not t.startswith(BEST)]
    return os.path.join(ckpt_root, tags[-1]) if tags else None


def prune(ckpt_root: str, keep_last: int, protect: set[str]) -> list[str]:
    """Removes complete resume checkpoints beyond the newest ``keep_last`` (never a protected one); returns them."""
    if keep_last <= 0:
        return []
    tags = [t for t in complete_tags(ckpt_root) if not t.startswith(BEST)]
    removed = [t for t in tags[: max(0, len(tags) - keep_last)] if t not in protect]
    for tag in removed:
        shutil.rmtree(os.path.join(ckpt_root, tag), ignore_errors=True)
    return removed
