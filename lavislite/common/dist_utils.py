"""Distributed helpers that work the same under torchrun, the deepspeed launcher
and a plain ``python`` process (a world of one)."""

from __future__ import annotations

import datetime
import functools
import os
import socket
from typing import Any, Callable

import torch
import torch.distributed as dist


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


def main_process(func: Callable[..., Any]) -> Callable[..., Any]:
    """Runs the decorated function on rank 0 only (returns None elsewhere)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if is_main_process():
            return func(*args, **kwargs)
        return None

    return wrapper


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_launcher_env() -> None:
    """Fills the torchrun variables for a plain single-process run.

    DeepSpeed always wants a process group; without a launcher we make a world of one.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def select_deepspeed_accelerator() -> None:
    """Points DeepSpeed at its CPU accelerator when there is no GPU.

    Must run before deepspeed is imported; an explicit ``DS_ACCELERATOR`` wins.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(backend: str | None = None, timeout_minutes: int = 30) -> None:
    """Starts the default process group from the launcher's environment (idempotent)."""
    if is_dist_avail_and_initialized():
        return
    ensure_launcher_env()
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))


def all_gather_object(obj: Any) -> list[Any]:
    """Gathers a picklable object from every rank (a list of one without a process group)."""
    if not is_dist_avail_and_initialized():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
