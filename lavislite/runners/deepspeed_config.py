"""The DeepSpeed config of a run: a JSON file < inline settings < the run section's own values.

Values the run section states (micro-batch, accumulation, clipping, precision)
fill "auto" or missing DeepSpeed fields, so each is said once; a concrete
DeepSpeed value that contradicts them is a config error, as is a DeepSpeed
``optimizer`` / ``scheduler`` block (the runner builds both).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from omegaconf import OmegaConf

from lavislite.common.schema import ConfigError

# Keys of a DeepSpeed config that the runner owns, with the run keys to use instead.
RUNNER_OWNED_DS_KEYS = {
    "optimizer": "run.init_lr, run.weight_decay, run.beta2 and run.part_lr (the optimizer is AdamW over trainable parameters)",
    "scheduler": "run.lr_sched, run.init_lr, run.min_lr, run.warmup_lr and run.warmup_steps",
}


def build_deepspeed_config(run: Any, world_size: int) -> tuple[dict[str, Any], list[str]]:
    """Builds the DeepSpeed config: file < inline < run values for "auto"/missing fields.

    Args:
        run: the ``run`` section (attribute access: a DictConfig or dataclass).
        world_size: the number of processes (for ``train_batch_size``).

    Returns:
        The config and its problems, each message relative to ``run``: a key the
        runner owns (``optimizer``, ``scheduler``), a concrete value that
        contradicts the run section, an unreadable JSON file.
    """
    ds: dict[str, Any] = {}
    problems: list[str] = []
    if run.deepspeed_config_path:
        try:
            with open(run.deepspeed_config_path, encoding="utf-8") as fh:
                ds = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            return {}, [f"deepspeed_config_path: cannot read {run.deepspeed_config_path}: {exc}"]
    inline = OmegaConf.to_container(run.deepspeed_config, resolve=True) if not isinstance(run.deepspeed_config, dict) else run.deepspeed_config
    ds = _deep_merge(ds, copy.deepcopy(inline))
    # DeepSpeed would accept these and then ignore them (the runner passes its own).
    for key, instead in RUNNER_OWNED_DS_KEYS.items():
        if key in ds:
            where = "deepspeed_config" if key in inline else f"deepspeed_config_path ({run.deepspeed_config_path})"
            problems.append(f"{where}: '{key}' is not used, the runner builds the {key}; set {instead} instead")

    def fill(keys: tuple[str, ...], value: Any, run_key: str, shown: Any = None) -> None:
        node = ds
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        current = node.get(keys[-1], "auto")
        if current == "auto" or current is None:
            node[keys[-1]] = value
        elif current != value:
            problems.append(
                f"deepspeed_config.{'.'.join(keys)} = {current!r} contradicts run.{run_key} = {value if shown is None else shown!r}; "
                f"set one of them (or 'auto')"
            )

    fill(("train_micro_batch_size_per_gpu",), int(run.batch_size_train), "batch_size_train")
    fill(("gradient_accumulation_steps",), int(run.accum_grad_iters), "accum_grad_iters")
    fill(("train_batch_size",), int(run.batch_size_train) * int(run.accum_grad_iters) * world_size, "batch_size_train x accum_grad_iters x world size")
    fill(("gradient_clipping",), float(run.grad_clip), "grad_clip")
    fill(("bf16", "enabled"), run.precision == "bf16", "precision", run.precision)
    fill(("fp16", "enabled"), run.precision == "fp16", "precision", run.precision)
    # The optimizer is ours (only trainable parameters, per-part groups); ZeRO
    # accepts it with this flag.
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("zero_optimization", {}).setdefault("stage", 0)
    return ds, problems


def fill_deepspeed_config(run: Any, world_size: int) -> dict[str, Any]:
    """``build_deepspeed_config`` that raises on any problem.

    Raises:
        ConfigError: naming each problem's ``run.`` key.
    """
    ds, problems = build_deepspeed_config(run, world_size)
    if problems:
        raise ConfigError([f"run.{p}" for p in problems])
    return ds


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _deep_merge(base[k], v)
        else:
            base[k] = v
    return base
