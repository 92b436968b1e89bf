"""Atomic training checkpoints: what a resume needs, counted only once every rank has written it.

A checkpoint is a folder ``<run>/checkpoints/<tag>/`` holding the DeepSpeed
engine state (optimizer partitions, lr scheduler; frozen weights excluded,
since they come from the model's own sources), each rank's random state
(``rng_state_rank<R>.pt``) and the trainer state (``trainer_state.json``:
epoch, position in the epoch in batches and in samples, the world size, batch
size and accumulation it was counted in, step, best metric; see
``resume_batch``). It counts only once every
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

from lavislite.common.errors import CheckpointError, MissingFileError
from lavislite.common.io import atomic_folder, atomic_write, recover_folder
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


def mark_complete(ckpt_root: str, tag: str, trainer_state: dict[str, Any], pointer: str = LATEST) -> None:
    """Rank 0, after every rank has written: the trainer state, the marker, then the pointer."""
    tag_dir = os.path.join(ckpt_root, tag)
    atomic_write(os.path.join(tag_dir, TRAINER_STATE), json.dumps(trainer_state, indent=1))
    atomic_write(os.path.join(tag_dir, MARKER), "")
    atomic_write(os.path.join(ckpt_root, pointer), tag)


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


BEST_WEIGHTS = "model.safetensors"
BEST_INFO = "info.json"


def write_best(best_dir: str, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Replaces ``<run>/best/`` in one step (``common.io.atomic_folder``): a kill leaves the old best or the new one.

    Args:
        best_dir: the run's ``best/`` folder.
        state: the trainable weights (full fp32 CPU tensors).
        info: what ``info.json`` records (``global_step``, ``agg_metrics``).
    """
    from safetensors.torch import save_file

    with atomic_folder(best_dir) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(tmp, BEST_WEIGHTS))
        with open(os.path.join(tmp, BEST_INFO), "w", encoding="utf-8") as fh:
            json.dump(info, fh)


def read_best_info(best_dir: str) -> dict[str, Any] | None:
    """``best/info.json`` of a complete ``best/`` folder, or None when there is none."""
    recover_folder(best_dir)  # a replacement killed half-way on a platform without an atomic exchange
    if not os.path.isfile(os.path.join(best_dir, BEST_WEIGHTS)):
        return None
    with open(os.path.join(best_dir, BEST_INFO), encoding="utf-8") as fh:
        return json.load(fh)


# What a position in an epoch is counted in: a checkpoint records them, a resume compares them.
LAYOUT_KEYS = ("world_size", "batch_size_train", "accum_grad_iters")


def resume_batch(tag_dir: str, state: dict[str, Any], now: dict[str, int], whole_windows: bool) -> int:
    """The batch (of the current size) at which a checkpoint's epoch continues.

    A checkpoint records how many samples of its epoch every rank together had
    consumed (``samples``). The epoch's order is one permutation of the
    dataset, split rank by rank, so after ``b`` batches of ``B`` per rank on
    ``W`` ranks exactly its first ``b * B * W`` samples are consumed, whatever
    ``B`` and ``W`` are: the position converts exactly when the new
    ``batch_size_train * world_size`` divides that count (and, when
    ``whole_windows``, the batch lands on an accumulation window's start).

    Args:
        tag_dir: the checkpoint folder (for the message).
        state: its ``trainer_state.json``.
        now: this run's ``world_size``, ``batch_size_train`` and ``accum_grad_iters``.
        whole_windows: accumulation windows restart with every epoch (``runner_base``).

    Raises:
        CheckpointError: the position does not convert exactly; names the changed keys (old -> new).
    """
    batch = int(state["batch"])
    # Checkpoints written before these keys existed: assume the current values.
    old = {k: int(state.get(k, now[k])) for k in LAYOUT_KEYS}
    changed = {k: (old[k], now[k]) for k in LAYOUT_KEYS if old[k] != now[k]}
    if not changed:
        return batch
    samples = int(state.get("samples", batch * old["batch_size_train"] * old["world_size"]))
    per_batch = now["batch_size_train"] * now["world_size"]
    new_batch, rest = divmod(samples, per_batch)
    problem = None
    if rest:
        problem = f"{samples} is not a whole number of batches of {now['batch_size_train']} x {now['world_size']} process(es)"
    elif whole_windows and new_batch % now["accum_grad_iters"]:
        problem = f"batch {new_batch} (of {now['batch_size_train']} x {now['world_size']}) does not start an accumulation window of {now['accum_grad_iters']}"
    if problem:
        names = ", ".join(f"{'' if k == 'world_size' else 'run.'}{k} {a} -> {b}" for k, (a, b) in changed.items())
        raise CheckpointError(
            f"cannot resume {tag_dir} at its exact sample with {names}: it stopped after {samples} sample(s) of epoch {state['epoch']} "
            f"({batch} batch(es) of {old['batch_size_train']} x {old['world_size']} process(es)), and {problem}. "
            "Resume with the old values, or from a checkpoint at an epoch's end (batch 0), where any change continues exactly"
        )
    return new_batch
