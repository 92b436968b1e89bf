"""Tasks: what to build from a config, what one train / valid step does, and how a split is scored.

``BaseTask.evaluation`` is the one evaluation loop (``evaluate.py`` and the
runner's validation both call it): each rank runs ``valid_step`` on a strided
shard of the split, per-sample results are gathered from every rank (a rank
with an empty shard still joins the gather, so nothing hangs), and rank 0
turns them into metrics (``compute_metrics``) and writes them to the run folder.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lavislite.common import dist_utils
from lavislite.common.config import Config
from lavislite.common.errors import DataError, MissingFileError
from lavislite.common.io import atomic_write_json
from lavislite.common.logger import logger
from lavislite.common.registry import registry
from lavislite.models.generation import GenerateConfig
from lavislite.models.losses import count_supervised_tokens


@dataclass
class TaskConfig:
    """Task-owned keys of the ``run`` section (merged with the runner's schema)."""

    # Generation settings, used by the tasks that generate (benchmark, captioning, vqa).
    # Every task accepts them, so one run config can switch ``run.task`` (e.g.
    # to score the loss of training data) without deleting keys.
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    # evaluate.py, a dataset (benchmark) whose files or images are missing or unreadable:
    # error stops before the model is built, listing every such dataset; skip evaluates
    # the others and results.md names the ones left out and why.
    on_missing: Literal["error", "skip"] = "error"


def strided_shard(size: int, rank: int, world_size: int) -> list[int]:
    """This rank's indices: ``rank, rank + world, ...``.

    Not ``DistributedSampler``: it pads the split with repeats so that every
    rank gets as many samples, which counts samples twice when the split size
    does not divide by the world size.
    """
    return list(range(rank, size, world_size))


class BaseTask:
    """Builds the model and datasets named in the config; defines the steps and the scoring."""

    Config: type = TaskConfig

    def __init__(self, run_cfg: Any = None) -> None:
        self.run_cfg = run_cfg
        self.lockstep = False  # set by evaluation(): ranks must step together (ZeRO-3)

    @classmethod
    def setup_task(cls, cfg: Config) -> "BaseTask":
        return cls(cfg.run_cfg)

    def build_model(self, cfg: Config, for_evaluation: bool = False) -> nn.Module:
        """Builds ``cfg.model_cfg``'s model (its weights loaded) and logs its parameter table.

        Args:
            cfg: the run config.
            for_evaluation: nothing trains: every parameter is frozen, so the
                table says so whatever the config's freeze switches (which
                describe training) and no gradient is ever kept.
        """
        model_cls = registry.get_model_class(cfg.model_cfg.arch)
        model = model_cls.from_config(cfg.model_cfg)
        if hasattr(model, "configure_attention"):
            # The attention kernel follows the run's precision (FlashAttention-2 needs bf16/fp16).
            model.configure_attention(precision=cfg.run_cfg.get("precision"))
        if for_evaluation:
            model.requires_grad_(False)
            logger.info("evaluation: every parameter is frozen (the freeze switches apply to training)")
        if hasattr(model, "log_parameter_table"):
            model.log_parameter_table()
        return model

    def build_datasets(self, cfg: Config, for_evaluation: bool = False) -> dict[str, dict[str, Dataset]]:
        """Builds every dataset of ``cfg.datasets_cfg``; returns ``{name: {split: Dataset}}``.

        Processors get the model's facts (tokenizer, image token count) as context,
        so dataset configs never repeat them. ``for_evaluation`` gives every
        split the eval processors (see ``BaseDatasetBuilder.build_datasets``).
        """
        context = registry.get_model_class(cfg.model_cfg.arch).processor_context(cfg.model_cfg)
        datasets = {str(name): self.build_dataset(str(name), ds_cfg, context, for_evaluation) for name, ds_cfg in cfg.datasets_cfg.items()}
        if not datasets:
            logger.warning("the config names no datasets")
        return datasets

    @staticmethod
    def build_dataset(name: str, ds_cfg: Any, context: dict[str, Any], for_evaluation: bool) -> dict[str, Dataset]:
        """One dataset's splits, by its registered builder."""
        return registry.get_builder_class(name)(ds_cfg, context=context).build_datasets(for_evaluation=for_evaluation)

    def build_eval_datasets(self, cfg: Config) -> tuple[dict[str, dict[str, Dataset]], dict[str, str]]:
        """Every dataset with eval processors, for ``evaluate.py``: a suite whose broken benchmarks are reported together.

        Each dataset is built (its files read, its images looked up) before the model;
        the problems of every dataset that cannot be built are collected, so one run
        names every missing download at once.

        Returns:
            ``({name: {split: Dataset}}, {name: why it was skipped})``; the second is
            empty unless ``run.on_missing`` is ``skip``.

        Raises:
            MissingFileError / DataError: (``run.on_missing: error``) naming every dataset
                that cannot be built and why.
        """
        context = registry.get_model_class(cfg.model_cfg.arch).processor_context(cfg.model_cfg)
        datasets: dict[str, dict[str, Dataset]] = {}
        failed: dict[str, tuple[str, bool]] = {}
        for name, ds_cfg in cfg.datasets_cfg.items():
            try:
                datasets[str(name)] = self.build_dataset(str(name), ds_cfg, context, for_evaluation=True)
            except (MissingFileError, DataError) as exc:
                failed[str(name)] = (str(exc), isinstance(exc, MissingFileError))
        if not failed:
            return datasets, {}
        listing = "\n".join(f"  - {name}: " + message.replace("\n", "\n    ") for name, (message, _) in failed.items())
        policy = self.run_cfg.get("on_missing", "error") if self.run_cfg is not None else "error"
        if policy != "skip":
            error = MissingFileError if all(missing for _, missing in failed.values()) else DataError
            raise error(
                f"{len(failed)} of {len(cfg.datasets_cfg)} dataset(s) cannot be evaluated (nothing was run; "
                f"run.on_missing=skip evaluates the others):\n{listing}"
            )
        logger.warning("run.on_missing=skip: %d dataset(s) left out of this evaluation:\n%s", len(failed), listing)
        return datasets, {name: message for name, (message, _) in failed.items()}

    def train_step(self, model: nn.Module, samples: dict[str, Any]) -> dict[str, Any]:
        """One forward pass; returns the model's output dict with ``loss``."""
        return model(samples)

    def supervised_tokens(self, samples: dict[str, Any]) -> int:
        """A training batch's supervised targets, counted before its forward pass.

        The runner reads a step's micro-batches ahead and weighs each by this
        count (the loss is the token mean over the whole step). A task whose
        batches carry no ``labels`` until its ``train_step`` (one that
        tokenises inside the step) overrides this.
        """
        return count_supervised_tokens(samples["labels"])

    # -- evaluation ----------------------------------------------------------------
    def valid_step(self, model: nn.Module, samples: dict[str, Any]) -> list[dict[str, Any]]:
        """Per-sample results of one batch (each with the sample's ``id``)."""
        raise NotImplementedError(f"{type(self).__name__} has no evaluation step")

    def compute_metrics(self, results: list[dict[str, Any]], dataset: Dataset) -> dict[str, Any]:
        """Rank 0: the metrics of a split from every sample's result (``agg_metrics`` ranks checkpoints)."""
        raise NotImplementedError(f"{type(self).__name__} has no metrics")

    @torch.no_grad()
    def evaluation(
        self,
        model: nn.Module,
        dataset: Dataset,
        name: str,
        batch_size: int,
        num_workers: int = 0,
        output_dir: str | None = None,
        lockstep: bool = False,
    ) -> dict[str, Any]:
        """Scores one split on every rank; returns its metrics on every rank.

        Args:
            model: the model (its ``eval()`` mode is set here and restored after).
            dataset: the split; its ``collater`` batches it.
            name: ``dataset/split``, for the log and the result file names.
            batch_size: per rank.
            num_workers: DataLoader workers.
            output_dir: the run folder; rank 0 writes ``results/<name>.json``
                (every sample once) there. None: nothing is written.
            lockstep: every rank runs as many forward passes (ZeRO-3 gathers
                parameters collectively in each one): a rank with a shorter
                shard repeats a dummy batch whose results are dropped, and
                generation keeps stepping until every rank is done.
        """
        rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
        shard = strided_shard(len(dataset), rank, world)  # type: ignore[arg-type]
        loader = DataLoader(
            dataset, batch_size=batch_size, sampler=shard, collate_fn=dataset.collater, num_workers=num_workers,  # type: ignore[attr-defined]
            generator=torch.Generator(),  # starting the loader draws nothing from the training RNG
        )
        self.lockstep = lockstep and world > 1
        start = time.time()
        was_training = model.training
        model.eval()
        bar = _progress(len(loader), f"eval {name}")
        results: list[dict[str, Any]] = []
        for samples in loader:
            results.extend(self.valid_step(model, samples))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if self.lockstep and len(dataset):  # type: ignore[arg-type]
            rounds = math.ceil(math.ceil(len(dataset) / world) / batch_size)  # type: ignore[arg-type]  # rank 0's count, the most
            for _ in range(rounds - len(loader)):
                self.valid_step(model, dataset.collater([dataset[0]]))  # type: ignore[attr-defined]
        self.lockstep = False
        model.train(was_training)
        # Every rank joins the gather, also one whose shard is empty.
        merged = [r for part in dist_utils.all_gather_object(results) for r in part]
        # Strided shards arrive rank by rank; sorted by id, the result file (and
        # the order the metrics see) does not depend on the number of processes.
        merged.sort(key=_id_order)
        metrics: dict[str, Any] = {}
        if dist_utils.is_main_process():
            ids = [r["id"] for r in merged]
            if len(set(ids)) != len(ids) or len(ids) != len(dataset):  # type: ignore[arg-type]
                raise RuntimeError(f"{name}: gathered {len(ids)} results ({len(set(ids))} distinct ids) for {len(dataset)} samples")  # type: ignore[arg-type]
            elapsed = time.time() - start  # generation / forward passes and the gather, not the metric
            metrics = self.compute_metrics(merged, dataset)
            metrics["eval_seconds"] = elapsed
            metrics["eval_samples_per_sec"] = len(merged) / max(elapsed, 1e-9)
            if output_dir:
                write_json(os.path.join(output_dir, "results", f"{name.replace('/', '_')}.json"), merged)
            logger.info("%s: %s", name, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        return dist_utils.broadcast_object(metrics)


@registry.register_task("image_text_pretrain")
class ImageTextPretrainTask(BaseTask):
    """Instruction tuning / image-text pretraining: minimise the model's LM loss; validation reports it."""

    def valid_step(self, model: nn.Module, samples: dict[str, Any]) -> list[dict[str, Any]]:
        out = model(samples)
        n_tokens = int(out["n_tokens"])
        # The batch's token-weighted loss, carried by its first sample (the others carry zeros).
        loss_sum = float(out["loss"]) * n_tokens
        return [{"id": i, "loss_sum": loss_sum if k == 0 else 0.0, "n_tokens": n_tokens if k == 0 else 0} for k, i in enumerate(samples["ids"])]

    def compute_metrics(self, results: list[dict[str, Any]], dataset: Dataset) -> dict[str, Any]:
        n_tokens = sum(r["n_tokens"] for r in results)
        loss = sum(r["loss_sum"] for r in results) / max(n_tokens, 1)
        # Lower loss is better; agg_metrics is "higher is better" for every task.
        return {"loss": loss, "n_samples": len(results), "agg_metrics": -loss}


def _id_order(result: dict[str, Any]) -> tuple[bool, Any]:
    # Ints before strings, so a split never compares an int with a str.
    return isinstance(result["id"], str), result["id"]


def write_json(path: str, data: Any) -> None:
    """Writes JSON through a temporary file, so a reader never sees half a file (``common.io``)."""
    atomic_write_json(path, data)


def _progress(total: int, desc: str) -> Any:
    # A live bar on an interactive terminal (rank 0); logs and CI get none.
    if not dist_utils.is_main_process() or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True)
