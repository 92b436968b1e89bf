"""Process set-up shared by the entry points (train, evaluate): one order, written once.

``setup_run`` starts the process group, agrees on the job id, opens the log,
seeds every rank and sizes torch's thread pool; ``prepare_deepspeed`` readies
DeepSpeed's CPU ops before the engine is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from lavislite.common import dist_utils
from lavislite.common.config import Config
from lavislite.common.logger import FILE_ONLY, logger, setup_logger
from lavislite.common.registry import registry
from lavislite.common.utils import set_seed

SHM_OP = "deepspeed_shm_comm"


@dataclass
class RunContext:
    """What the set-up decided: the job id and the run folder (``output_dir/job_id``)."""

    job_id: str
    output_dir: str


def setup_run(cfg: Config, log_name: str) -> RunContext:
    """Distributed start, job id, logging, seeds and threads, in that order.

    Args:
        cfg: the validated config.
        log_name: the log file's name inside the run folder (``train.log``).
    """
    run = cfg.run_cfg
    dist_utils.select_deepspeed_accelerator(registry.get_path("cache_root"))
    dist_utils.init_process_group(run.dist_backend, timeout_minutes=run.dist_timeout_minutes)
    # Every rank must agree on the folder: take rank 0's timestamp.
    job_id = dist_utils.all_gather_object(run.job_id or datetime.now().strftime("%Y%m%d%H%M%S"))[0]
    output_dir = os.path.join(run.output_dir, job_id)
    setup_logger(os.path.join(output_dir, log_name))
    set_seed(run.seed + dist_utils.get_rank())
    threads = dist_utils.configure_threads()
    logger.info("config:\n%s", cfg.to_yaml(), extra=FILE_ONLY)
    logger.info(
        "run folder %s (full config in config.yaml and %s); %d process(es), %d torch thread(s) each, %d DataLoader worker(s)",
        output_dir, log_name, dist_utils.get_world_size(), threads, run.num_workers,
    )
    return RunContext(job_id=job_id, output_dir=output_dir)


def prepare_deepspeed(world_size: int) -> None:
    """Readies DeepSpeed's CPU communication op, or skips it where it is not needed.

    On the CPU accelerator DeepSpeed compiles a shared-memory all-reduce op the
    first time a process group starts (1-2 minutes on 2 cores). A single
    process never all-reduces, so it skips the op, as does any run with
    ``LAVISLITE_DS_SHM_OP=0`` (gloo then all-reduces; the test suite does
    this); otherwise several processes build it once per Python environment
    (see ``dist_utils.select_deepspeed_accelerator``), and the log says so
    before the silent compile starts.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu" or not deepspeed.ops.__compatible_ops__.get(SHM_OP, False):
        return
    if world_size == 1 or os.environ.get("LAVISLITE_DS_SHM_OP", "1") == "0":
        deepspeed.ops.__compatible_ops__[SHM_OP] = False
        return
    from torch.utils.cpp_extension import _get_build_directory

    build_dir = _get_build_directory(SHM_OP, verbose=False)
    if not os.path.exists(os.path.join(build_dir, f"{SHM_OP}.so")):
        logger.info("DeepSpeed compiles its CPU communication op once for this environment (1-2 minutes on 2 cores) into %s", build_dir)
