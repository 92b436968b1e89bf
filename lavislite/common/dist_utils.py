"""Distributed helpers that work the same under torchrun, the deepspeed launcher
and a plain ``python`` process (a world of one)."""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
import socket
import sys
from typing import Any, Callable

import torch
import torch.distributed as dist


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK``; 0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", 0))


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


def select_deepspeed_accelerator(cache_root: str | None = None) -> None:
    """Points DeepSpeed at its CPU accelerator when there is no GPU.

    Must run before deepspeed is imported; an explicit ``DS_ACCELERATOR`` wins.
    On the CPU it also gives the ops DeepSpeed compiles one build folder per
    Python environment (``TORCH_EXTENSIONS_DIR``, unless set): torch's default
    folder is shared by every environment, so two checkouts (say, the demo's
    and a test run's) would rebuild the same op over each other's build.
    """
    if torch.cuda.is_available():
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "TORCH_EXTENSIONS_DIR" not in os.environ and cache_root:
        env_id = hashlib.sha1(os.path.realpath(sys.prefix).encode()).hexdigest()[:10]
        os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(cache_root, "torch_extensions", f"{os.path.basename(sys.prefix)}-{env_id}")


def configure_threads() -> int:
    """Sets torch's intra-op threads of this process to its share of the cores.

    Each process gets ``cores / processes on this node`` (at least one);
    DataLoader workers run one thread each (``datasets.samplers.worker_init``).
    With torch's default (one thread per core in every process) two processes
    on one node oversubscribe the cores. Threads that would wait on a busy core
    sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``, set when ``lavislite``
    is imported), so the main process keeps every core of its share on a quiet
    machine and loses little when its workers or another job share them:
    ``benchmarks/thread_settings.py`` measures both. The workers are not
    subtracted: they mostly wait, and one thread less cost the demo 30% on a
    quiet 2-core machine. An explicit ``OMP_NUM_THREADS`` wins;
    ``LAVISLITE_THREADS=torch`` keeps torch's own defaults everywhere (the
    benchmark's "old" setting).

    Returns:
        The thread count in effect.
    """
    if "OMP_NUM_THREADS" in os.environ or os.environ.get("LAVISLITE_THREADS") == "torch":
        return torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    threads = max(1, per_process)
    torch.set_num_threads(threads)
    return threads


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(backend: str | None = None, timeout_minutes: float = 30) -> None:
    """Starts the default process group from the launcher's environment (idempotent).

    ``timeout_minutes`` bounds every collective: a rank that waits longer for
    the others fails instead of hanging.
    """
    if is_dist_avail_and_initialized():
        return
    ensure_launcher_env()
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))


def all_gather_object(obj: Any) -> list[Any]:
    """Gathers a picklable object from every rank (a list of one without a process group)."""
    if not is_dist_avail_and_initialized():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself without a process group)."""
    if not is_dist_avail_and_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _comm_device() -> torch.device:
    # nccl reduces CUDA tensors only; gloo CPU ones.
    if is_dist_avail_and_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks (the tensor itself without a process group)."""
    if not is_dist_avail_and_initialized():
        return tensor
    out = tensor.to(_comm_device())
    dist.all_reduce(out)
    return out.to(tensor.device)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not is_dist_avail_and_initialized():
        return flag
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)
