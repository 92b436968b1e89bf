"""Tasks that score what a model says: one generation task for every benchmark, scored by the scorer each names.

``benchmark`` evaluates any mix of benchmarks in one run (a suite): for each split it
generates a reply per sample of a ``GenerationDataset`` with that benchmark's settings
(``run.generate`` overridden by ``datasets.<name>.generate``), then the scorer named by
``datasets.<name>.scorer`` (``tasks.scorers``) turns the replies into the benchmark's
official metrics. ``captioning`` and ``vqa`` are the same task with the scorer of COCO
captions and VQAv2 as their default (and their own default ``run.generate``); all
three train with the LM loss (``BaseTask.train_step``) on instruction-style data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torch import nn
from torch.utils.data import Dataset

from lavislite.common.config import Config
from lavislite.common.errors import DataError
from lavislite.common.registry import RegistryError, registry
from lavislite.common.schema import ConfigError, validate
from lavislite.datasets.datasets.generation_dataset import GenerationDataset
from lavislite.models.generation import GenerateConfig
from lavislite.tasks.base_task import BaseTask, TaskConfig
from lavislite.tasks.scorers import Scorer


@dataclass
class BenchmarkTaskConfig(TaskConfig):
    # pycocoevalcap with Java (adds METEOR), lavislite's pure-Python scorer, or java when present.
    caption_backend: Literal["auto", "java", "python"] = "auto"


@registry.register_task("benchmark")
class GenerationTask(BaseTask):
    """Generates a reply per sample and scores each benchmark with its own scorer (``datasets.<name>.scorer``)."""

    Config = BenchmarkTaskConfig
    #: The scorer of a dataset whose config names none (captioning: caption, vqa: vqa).
    default_scorer: str = ""

    def __init__(self, run_cfg: Any = None, datasets_cfg: Any = None) -> None:
        super().__init__(run_cfg)
        self.datasets_cfg = datasets_cfg if datasets_cfg is not None else {}
        self.active = ""  # the dataset evaluation() is scoring

    @classmethod
    def setup_task(cls, cfg: Config) -> "GenerationTask":
        return cls(cfg.run_cfg, cfg.datasets_cfg)

    @classmethod
    def config_problems(cls, run: dict[str, Any], datasets: dict[str, dict[str, Any]]) -> list[str]:
        """Each generating dataset's scorer is registered and its ``generate`` settings are valid over ``run.generate``."""
        problems: list[str] = []
        for name, ds in datasets.items():
            if "scorer" not in ds:
                continue  # not a generation builder (training data)
            scorer = ds["scorer"] or cls.default_scorer
            if not scorer:
                problems.append(f"datasets.{name}.scorer: names no scorer; registered scorers: {', '.join(registry.list_scorers())}")
            else:
                try:
                    registry.get_scorer_class(scorer)
                except RegistryError as exc:
                    problems.append(f"datasets.{name}.scorer: {exc}")
            try:
                validate(GenerateConfig, {**run.get("generate", {}), **(ds.get("generate") or {})}, f"datasets.{name}.generate")
            except ConfigError as exc:
                problems.extend(exc.problems)
        return problems

    # -- per benchmark -------------------------------------------------------------
    def _dataset_cfg(self, name: str) -> dict[str, Any]:
        cfg = self.datasets_cfg.get(name) if name else None
        return dict(cfg) if cfg is not None else {}

    def generate_settings(self, name: str | None = None) -> dict[str, Any]:
        """``run.generate`` with the dataset's ``generate`` over it (default: the dataset being evaluated)."""
        base = dict(self.run_cfg.generate) if self.run_cfg is not None else asdict(type(self).Config().generate)
        own = self._dataset_cfg(self.active if name is None else name).get("generate") or {}
        return {**base, **dict(own)}

    def scorer_name(self, name: str | None = None) -> str:
        return str(self._dataset_cfg(self.active if name is None else name).get("scorer") or self.default_scorer)

    def scorer(self, name: str | None = None) -> Scorer:
        """The scorer instance of a dataset (default: the one being evaluated)."""
        scorer = self.scorer_name(name)
        if not scorer:
            raise DataError(f"datasets.{name or self.active}: no scorer; set datasets.{name or self.active}.scorer to one of {', '.join(registry.list_scorers())}")
        return registry.get_scorer_class(scorer)(self.run_cfg)

    # -- the loop ------------------------------------------------------------------
    def valid_step(self, model: nn.Module, samples: dict[str, Any]) -> list[dict[str, Any]]:
        predictions = model.generate(samples, synced_gpus=self.lockstep, **self.generate_settings())  # type: ignore[operator]
        prompts = samples.get("prompts") or [None] * len(predictions)
        return [
            {"id": i, "prompt": q, "prediction": p, "references": refs, **extra}
            for i, q, p, refs, extra in zip(samples["ids"], prompts, predictions, samples["references"], samples["extra"])
        ]

    def evaluation(self, model: nn.Module, dataset: Dataset, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(dataset, GenerationDataset):
            raise DataError(
                f"{name}: the {registry.name_of('task', type(self))} task scores generated text, but this split is a "
                f"{type(dataset).__name__} (training data); evaluate splits of a benchmark builder (coco_caption, vqav2, gqa, pope, ...)"
            )
        self.active = name.split("/", 1)[0]
        try:
            metrics = super().evaluation(model, dataset, name, *args, **kwargs)
        finally:
            self.active = ""
        return metrics

    def compute_metrics(self, results: list[dict[str, Any]], dataset: Dataset) -> dict[str, Any]:
        scorer = self.scorer()
        metrics = scorer(results, dataset)
        headline = scorer.headline_value(metrics)
        # What produced these numbers, beside them: results.md prints it, a rerun can repeat it.
        metrics["settings"] = {
            "scorer": self.scorer_name(),
            "headline": {"metric": headline[0], "value": headline[1]} if headline else None,
            "prompt": getattr(dataset, "prompt_template", ""),
            "generate": self.generate_settings(),
        }
        return metrics


@dataclass
class CaptionTaskConfig(BenchmarkTaskConfig):
    generate: GenerateConfig = field(default_factory=lambda: GenerateConfig(max_new_tokens=30))


@registry.register_task("captioning")
class CaptionTask(GenerationTask):
    """Image captioning, scored by BLEU-1..4, METEOR (with Java), ROUGE-L and CIDEr; ``agg_metrics`` = CIDEr + BLEU-4."""

    Config = CaptionTaskConfig
    default_scorer = "caption"


@dataclass
class VQATaskConfig(BenchmarkTaskConfig):
    generate: GenerateConfig = field(default_factory=lambda: GenerateConfig(max_new_tokens=10))


@registry.register_task("vqa")
class VQATask(GenerationTask):
    """Visual question answering, scored by the official VQAv2 accuracy; ``agg_metrics`` = overall accuracy."""

    Config = VQATaskConfig
    default_scorer = "vqa"
