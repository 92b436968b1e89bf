"""Train a model from a run config.

    python -m lavislite.train --cfg-path projects/demo/train.yaml
    lavislite-train --cfg-path lavislite:projects/demo/train.yaml      # a config shipped with the package
    torchrun --nproc_per_node=8 -m lavislite.train --cfg-path X.yaml --options run.init_lr=1e-4
    python -m lavislite.train --resume output/demo/20260101120000     # after a crash or a kill

The repository's ``train.py`` runs this same ``main``.
"""

from __future__ import annotations

import argparse
import os
import sys

from lavislite.cli import add_common_args, run_entry


def main(argv: list[str] | None = None) -> int:
    """Trains; returns the exit code (a user error raises, ``cli`` turns it into a message)."""
    parser = add_common_args(argparse.ArgumentParser(description="lavislite training"), cfg_required=False)
    parser.add_argument(
        "--resume", metavar="RUN_FOLDER", default=None,
        help="continue a run from its latest complete checkpoint, writing into the same folder (its config.yaml unless --cfg-path is given)",
    )
    args = parser.parse_args(argv)
    if args.resume:
        args.cfg_path = args.cfg_path or os.path.join(args.resume, "config.yaml")
        folder = os.path.normpath(args.resume)
        args.options = [*args.options, "run.resume=auto", f"run.output_dir={os.path.dirname(folder) or '.'}", f"run.job_id={os.path.basename(folder)}"]
    elif not args.cfg_path:
        parser.error("--cfg-path is required (or --resume RUN_FOLDER)")

    # 1. Config: validated before anything heavy is built.
    import lavislite  # noqa: F401  (registers the built-in names)
    from lavislite.common.config import load_config

    cfg = load_config(args, purpose="train")
    if cfg.run_cfg.resume_ckpt_path:  # a named checkpoint that is not there fails now, not after the model is built
        from lavislite.runners.checkpoints import check_resumable

        check_resumable(cfg.run_cfg.resume_ckpt_path)

    # 2. Distributed set-up, job id, logging, seeds, threads.
    from lavislite.runners.launch import setup_run

    ctx = setup_run(cfg, "train.log")

    # 3. Task, datasets (checked, images included, before the model is built), model, runner.
    from lavislite.common.registry import registry
    from lavislite.tasks import setup_task

    task = setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    runner = registry.get_runner_class(cfg.run_cfg.runner)(cfg, task, model, datasets, ctx.job_id)
    runner.train()
    return 0


def cli() -> None:
    """The ``lavislite-train`` console script."""
    sys.exit(run_entry(main))


if __name__ == "__main__":
    cli()
