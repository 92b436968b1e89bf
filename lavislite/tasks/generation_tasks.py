"""Tasks that score what a model says: ``captioning`` (COCO caption metrics) and ``vqa`` (VQAv2 accuracy).

Both train with the LM loss (``BaseTask.train_step``) on instruction-style
data; their ``valid_step`` generates a reply per sample of a ``GenerationDataset``
with the ``run.generate`` settings, and ``compute_metrics`` scores the replies
the standard way (``tasks.metrics``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torch import nn
from torch.utils.data import Dataset

from lavislite.common.errors import DataError
from lavislite.common.registry import registry
from lavislite.datasets.datasets.generation_dataset import GenerationDataset
from lavislite.models.generation import GenerateConfig
from lavislite.tasks.base_task import BaseTask, TaskConfig
from lavislite.tasks.metrics import caption_agg_metrics, caption_evaluate, vqa_accuracy


class GenerationTask(BaseTask):
    """Shared by the tasks that generate: the ``valid_step`` and the check of what they are given."""

    def generate_settings(self) -> dict[str, Any]:
        return dict(self.run_cfg.generate) if self.run_cfg is not None else asdict(GenerateConfig())

    def valid_step(self, model: nn.Module, samples: dict[str, Any]) -> list[dict[str, Any]]:
        predictions = model.generate(samples, synced_gpus=self.lockstep, **self.generate_settings())  # type: ignore[operator]
        return [
            {"id": i, "prediction": p, "references": refs, **extra}
            for i, p, refs, extra in zip(samples["ids"], predictions, samples["references"], samples["extra"])
        ]

    def evaluation(self, model: nn.Module, dataset: Dataset, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(dataset, GenerationDataset):
            raise DataError(
                f"{name}: the {registry.name_of('task', type(self))} task scores generated text, but this split is a "
                f"{type(dataset).__name__} (training data); evaluate splits of a captioning / VQA builder (coco_caption, vqav2)"
            )
        return super().evaluation(model, dataset, name, *args, **kwargs)


@dataclass
class CaptionTaskConfig(TaskConfig):
    generate: GenerateConfig = field(default_factory=lambda: GenerateConfig(max_new_tokens=30))
    # pycocoevalcap with Java (adds METEOR), lavislite's pure-Python scorer, or java when present.
    caption_backend: Literal["auto", "java", "python"] = "auto"


@registry.register_task("captioning")
class CaptionTask(GenerationTask):
    """Image captioning, scored by BLEU-1..4, METEOR (with Java), ROUGE-L and CIDEr; ``agg_metrics`` = CIDEr + BLEU-4."""

    Config = CaptionTaskConfig

    def compute_metrics(self, results: list[dict[str, Any]], dataset: Dataset) -> dict[str, Any]:
        references = {r["id"]: r["references"] for r in results}
        candidates = {r["id"]: r["prediction"] for r in results}
        scores, backend, _ = caption_evaluate(references, candidates, backend=self.run_cfg.caption_backend if self.run_cfg is not None else "auto")
        return {**scores, "agg_metrics": caption_agg_metrics(scores), "n_samples": len(results), "scorer": backend}


@dataclass
class VQATaskConfig(TaskConfig):
    generate: GenerateConfig = field(default_factory=lambda: GenerateConfig(max_new_tokens=10))


@registry.register_task("vqa")
class VQATask(GenerationTask):
    """Visual question answering, scored by the official VQAv2 accuracy; ``agg_metrics`` = overall accuracy."""

    Config = VQATaskConfig

    def compute_metrics(self, results: list[dict[str, Any]], dataset: Dataset) -> dict[str, Any]:
        # The official rule leaves out each answer *dict* in turn and drops every dict
        # equal to it: without VQAv2's distinct answer_ids, nine equal "red" dicts
        # would all be dropped together (a right answer would score 10%).
        annotations = [
            {
                "question_id": r["id"],
                "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(r["references"])],
                "answer_type": r["answer_type"],
                "question_type": r["question_type"],
            }
            for r in results
        ]
        accuracy = vqa_accuracy(annotations, {r["id"]: r["prediction"] for r in results})
        for r in results:
            r["accuracy"] = accuracy["per_question"][r["id"]]
        return {
            "overall": accuracy["overall"],
            "agg_metrics": accuracy["overall"],
            "n_samples": len(results),
            "perAnswerType": accuracy["perAnswerType"],
            "perQuestionType": accuracy["perQuestionType"],
        }
