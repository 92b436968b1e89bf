"""Evaluate a model from a run config on ``run.test_splits`` (or ``run.valid_splits``).

    python -m lavislite.evaluate --cfg-path X.yaml --checkpoint output/demo/JOB
    lavislite-evaluate --cfg-path X.yaml --options run.test_splits=[val] model.finetuned=/path/release
    torchrun --nproc_per_node=8 -m lavislite.evaluate --cfg-path X.yaml

Each rank scores a strided shard (every sample exactly once, whatever the
split size); rank 0 writes ``results/<dataset>_<split>.json``,
``metrics.json`` and ``results.md`` (the headline metric of each benchmark,
with its prompt and generation settings) into ``output_dir/<job_id>/`` and
prints a table. A suite (``run.task: benchmark``, several datasets) runs in
one process group; every dataset's files and images are checked before the
model is built, and those that are missing are all named at once
(``run.on_missing: error``) or left out and listed in ``results.md``
(``run.on_missing: skip``). Every split
is read with the dataset's eval processors (no random crop or flip), so the
same checkpoint gives the same numbers every time. The metrics table goes to
stdout (the log to stderr); a checkpoint that is not there fails before
anything is built or written. The repository's ``evaluate.py`` runs this same
``main``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from lavislite.cli import add_common_args, run_entry


def main(argv: list[str] | None = None) -> int:
    """Evaluates; returns the exit code (a user error raises, ``cli`` turns it into a message)."""
    parser = add_common_args(argparse.ArgumentParser(description="lavislite evaluation"))
    parser.add_argument("--checkpoint", default=None, help="a trained model to load: a release file or folder (same as --options model.finetuned=PATH)")
    parser.add_argument(
        "--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="the model's precision (default: the config's run.precision, as in training)"
    )
    args = parser.parse_args(argv)
    if args.checkpoint:
        # One loading path for both spellings: the model loads it and reports.
        args.options = [*args.options, f"model.finetuned={args.checkpoint}", "model.load_finetuned=true"]

    # 1. Config: validated (split names included) before anything heavy is built.
    import lavislite  # noqa: F401  (registers the built-in names)
    from lavislite.common.config import load_config

    cfg = load_config(args, purpose="evaluate")
    check_finetuned_exists(cfg.model_cfg, args.checkpoint)

    # 2. The same set-up as training: process group, job id, logging, seeds, threads.
    from lavislite.runners.launch import setup_run

    ctx = setup_run(cfg, "evaluate.log")

    # 3. Task, datasets (eval processors for every split), model.
    import torch

    from lavislite.common import dist_utils
    from lavislite.common.io import atomic_write
    from lavislite.common.logger import FILE_ONLY, logger
    from lavislite.tasks.report import results_markdown
    from lavislite.tasks import setup_task
    from lavislite.models.release import precision_dtype
    from lavislite.tasks.base_task import write_json

    run = cfg.run_cfg
    task = setup_task(cfg)
    datasets, skipped = task.build_eval_datasets(cfg)
    model = task.build_model(cfg, for_evaluation=True)
    device = torch.device("cuda", dist_utils.local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    # The run's own precision, so a standalone evaluation reproduces the run's metrics (and a bf16 7B fits).
    precision, source = evaluation_precision(cfg, args)
    model = model.to(device=device, dtype=precision_dtype(precision))
    if hasattr(model, "configure_attention"):
        model.configure_attention(precision)  # --dtype may differ from run.precision
    logger.info("evaluating in %s (%s): weights %s", precision, source, next(model.parameters()).dtype)

    # 4. Score each split; rank 0 writes the metrics.
    splits = list(run.test_splits) or list(run.valid_splits)
    metrics: dict[str, dict[str, float]] = {}
    for name, by_split in datasets.items():
        for split in splits:
            if split in by_split:
                key = f"{name}/{split}"
                metrics[key] = task.evaluation(model, by_split[split], key, run.batch_size_eval, run.num_workers, ctx.output_dir)
    if dist_utils.is_main_process():
        write_json(f"{ctx.output_dir}/metrics.json", metrics)
        about = {
            "model": f"{cfg.model_cfg.arch} ({cfg.model_cfg.get('model_type')})",
            "checkpoint": str(cfg.model_cfg.get("finetuned") or "none (the model's pretrained weights)") if cfg.model_cfg.get("load_finetuned") is not False else "none",
            "precision": precision,
            "processes": str(dist_utils.get_world_size()),
            "config": os.path.abspath(cfg.cfg_path),
        }
        atomic_write(os.path.join(ctx.output_dir, "results.md"), results_markdown(metrics, skipped, about))
        table = metrics_table(metrics)
        # The result is the program's output (stdout, for a pipe or a file); the log keeps a copy.
        logger.info("evaluation:\n%s", table, extra=FILE_ONLY)
        logger.info("metrics written to %s", os.path.join(ctx.output_dir, "metrics.json"))
        print(table, flush=True)
    return 0


def check_finetuned_exists(model_cfg: Any, checkpoint_arg: str | None) -> None:
    """Fails now, before the process group, the run folder, the datasets or the model exist, on a missing checkpoint.

    Args:
        model_cfg: the merged ``model`` section (``finetuned``, ``load_finetuned``).
        checkpoint_arg: ``--checkpoint`` as typed (named in the message), or None.

    Raises:
        MissingFileError: naming the path as given and every place looked at.
    """
    from lavislite.models.release import check_checkpoint

    finetuned = model_cfg.get("finetuned")
    if not finetuned or model_cfg.get("load_finetuned") is False:
        return
    check_checkpoint(str(finetuned), f"--checkpoint {checkpoint_arg}" if checkpoint_arg else f"model.finetuned={finetuned}")


def evaluation_precision(cfg: Any, args: argparse.Namespace) -> tuple[str, str]:
    """The precision to evaluate in, and where it comes from.

    ``--dtype`` first; then ``run.precision`` where the config or ``--options``
    state it; then the ``run.precision`` a checkpoint's run trained in (stored
    with ``model.finetuned``), so a run's own release is scored as its run
    scored it; else the schema's default ``run.precision``.
    """
    from omegaconf import OmegaConf

    from lavislite.common.config import load_yaml, parse_options
    from lavislite.models.release import checkpoint_precision

    if args.dtype:
        return args.dtype, "--dtype"
    stated = OmegaConf.select(OmegaConf.merge(load_yaml(cfg.cfg_path), parse_options(args.options)), "run.precision")
    if stated is not None:
        return str(stated), "run.precision"
    finetuned = cfg.model_cfg.get("finetuned") if cfg.model_cfg.get("load_finetuned") is not False else ""
    if finetuned:
        try:
            return checkpoint_precision(str(finetuned)), f"run.precision of {finetuned}"
        except (FileNotFoundError, ValueError):
            pass  # a bare weights file has no stored run config
    return str(cfg.run_cfg.precision), "run.precision default"


def metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one row per split; one column per metric, or for a suite of benchmarks its headline metric."""
    if len({key.split("/", 1)[0] for key in metrics}) > 1:
        # Benchmarks share few metric names: their headline, as results.md shows it.
        rows = [["split", "metric", "score", "n_samples", "agg_metrics"]]
        for key, m in metrics.items():
            headline = (m.get("settings") or {}).get("headline") or {"metric": "agg_metrics", "value": m.get("agg_metrics")}
            value = headline.get("value")
            rows.append([key, str(headline.get("metric")), f"{value:.4f}" if isinstance(value, (int, float)) else "", str(m.get("n_samples", "")), f"{float(m['agg_metrics']):.4f}"])
    else:
        # Scalars only; per-type breakdowns (VQA) stay in metrics.json.
        columns = sorted({k for m in metrics.values() for k, v in m.items() if k != "agg_metrics" and not isinstance(v, dict)}) + ["agg_metrics"]
        rows = [["split", *columns]]
        for key, m in metrics.items():
            rows.append([key, *(f"{m[c]:.4f}" if isinstance(m.get(c), float) else str(m.get(c, "")) for c in columns)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows)


def cli() -> None:
    """The ``lavislite-evaluate`` console script."""
    sys.exit(run_entry(main))


if __name__ == "__main__":
    cli()
