"""Train a model from a run config.

    python train.py --cfg-path projects/demo/train.yaml
    torchrun --nproc_per_node=8 train.py --cfg-path X.yaml --options run.init_lr=1e-4
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime

from lavislite.common.config import add_config_args, config_from_args


def main(argv: list[str] | None = None) -> int:
    args = add_config_args(argparse.ArgumentParser(description="lavislite training")).parse_args(argv)

    # 1. Config: validated before anything heavy is built.
    cfg = config_from_args(args, purpose="train")
    if cfg is None:
        return 2

    # 2. Distributed set-up, seeds, logging.
    from lavislite.common import dist_utils
    from lavislite.common.logger import logger, setup_logger
    from lavislite.runners.runner_base import set_seed

    run = cfg.run_cfg
    dist_utils.select_deepspeed_accelerator()
    dist_utils.init_process_group(run.dist_backend)
    job_id = run.job_id or datetime.now().strftime("%Y%m%d%H%M%S")
    # Every rank must agree on the folder: take rank 0's timestamp.
    job_id = dist_utils.all_gather_object(job_id)[0]
    setup_logger(os.path.join(run.output_dir, job_id, "train.log"))
    set_seed(run.seed + dist_utils.get_rank())
    logger.info("config:\n%s", cfg.to_yaml())

    # 3. Task, datasets, model, runner.
    from lavislite.common.registry import registry
    from lavislite.tasks import setup_task

    task = setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    runner = registry.get_runner_class(run.runner)(cfg, task, model, datasets, job_id)
    runner.train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
