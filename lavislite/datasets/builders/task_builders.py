"""Builders for captioning (COCO, Karpathy splits) and VQA (VQAv2), as LAVIS lays out their files.

The ``train`` split becomes instruction data (a prompt and the reference as the
assistant's reply, trained with the LM loss); other splits become
``GenerationDataset`` s: a prompt per image or question, with the references
the captioning / VQA metrics score against.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from lavislite.common.registry import registry
from lavislite.common.utils import as_list
from lavislite.datasets.builders.base_builder import BaseDatasetBuilder, BuilderConfig
from lavislite.datasets.datasets.generation_dataset import GenerationDataset, PromptSample
from lavislite.datasets.datasets.instruction_dataset import InstructionDataset, Sample, read_json_file
from lavislite.processors.chat_processor import SampleError

IMAGE_PLACEHOLDER = "<image>"


def with_image(prompt: str) -> str:
    """The prompt with an image placeholder in front unless it places one itself."""
    return prompt if IMAGE_PLACEHOLDER in prompt else f"{IMAGE_PLACEHOLDER}\n{prompt}"


@dataclass
class CaptionBuilderConfig(BuilderConfig):
    # The user turn of every sample; "<image>" marks where the image goes (in front if absent).
    prompt: str = "Describe the image briefly."


@registry.register_builder("coco_caption")
class CocoCaptionBuilder(BaseDatasetBuilder):
    """COCO captions in LAVIS's Karpathy-split JSON.

    ``train``: ``[{"image", "caption": str, "image_id"}]`` (one entry per caption);
    ``val`` / ``test``: ``[{"image", "caption": [str, ...], "image_id"}]`` (one
    entry per image, every reference caption), scored by the COCO caption metrics.
    """

    Config = CaptionBuilderConfig
    train_dataset_cls = InstructionDataset
    eval_dataset_cls = GenerationDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/coco_caption/defaults.yaml"}

    def make_dataset(self, dataset_cls: type, **kwargs: Any) -> Dataset:
        prompt = with_image(str(self.config.prompt))
        if dataset_cls is GenerationDataset:
            return dataset_cls(read=lambda paths: read_caption_eval(paths, prompt), **kwargs)

        def parse(record: dict[str, Any], where: str) -> Sample:
            _require(record, ("image", "caption", "image_id"), where)
            captions = as_list(record["caption"])
            return Sample(
                id=f"{record['image_id']}@{where.rsplit('[', 1)[-1].split(']')[0]}",
                images=[str(record["image"])],
                turns=[{"role": "user", "content": prompt}, {"role": "assistant", "content": str(captions[0]).strip()}],
            )

        return dataset_cls(parse=parse, **kwargs)


def read_caption_eval(paths: list[str], prompt: str) -> list[PromptSample]:
    """Karpathy val/test entries -> one prompt per image, its captions as references."""
    samples: list[PromptSample] = []
    for path in paths:
        for i, record in enumerate(_json_list(path)):
            where = f"{path}[{i}]"
            _require(record, ("image", "caption", "image_id"), where)
            refs = [str(c) for c in as_list(record["caption"])]
            if not refs:
                raise SampleError(f"{where}: no reference caption")
            samples.append(PromptSample(id=record["image_id"], images=[str(record["image"])], prompt=prompt, references=refs))
    _unique(samples, paths)
    return samples


@dataclass
class VQABuilderConfig(BuilderConfig):
    # "{question}" is replaced by each question; "<image>" goes in front if absent.
    prompt: str = "{question} Answer the question using a single word or phrase."
    # Image file of an official-format question, from its fields (image_id, data_subtype).
    image_pattern: str = "{data_subtype}/COCO_{data_subtype}_{image_id:012d}.jpg"


@registry.register_builder("vqav2")
class VQAv2Builder(BaseDatasetBuilder):
    """VQAv2 questions with their 10 human answers.

    Either the official files (``storage: [questions.json, annotations.json]``:
    ``{"questions": [...]}`` and ``{"annotations": [...]}``, joined by
    ``question_id``; images named by ``image_pattern``) or LAVIS's flattened
    list ``[{"question_id", "image", "question", "answer": [str, ...]}]``
    (``answer_type`` / ``question_type`` optional). ``train`` trains on the most
    frequent answer; other splits are scored by the VQAv2 accuracy.
    """

    Config = VQABuilderConfig
    train_dataset_cls = InstructionDataset
    eval_dataset_cls = GenerationDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/vqav2/defaults.yaml"}

    def make_dataset(self, dataset_cls: type, **kwargs: Any) -> Dataset:
        items = read_vqa(kwargs["ann_paths"], str(self.config.image_pattern), str(self.config.prompt))
        if dataset_cls is GenerationDataset:
            return dataset_cls(read=lambda paths: items, **kwargs)
        samples = [
            Sample(
                id=str(item.id),
                images=item.images,
                turns=[{"role": "user", "content": item.prompt}, {"role": "assistant", "content": _most_common(item.references)}],
            )
            for item in items
        ]
        return dataset_cls(samples=samples, **kwargs)


def _most_common(answers: list[str]) -> str:
    """The answer most annotators gave (ties: the first given)."""
    return Counter(a.strip() for a in answers).most_common(1)[0][0]


def read_vqa(paths: list[str], image_pattern: str, prompt: str) -> list[PromptSample]:
    """Official questions + annotations files, or LAVIS's flattened list -> prompts with their 10 answers."""
    prompt = with_image(prompt)
    loaded = [(p, read_json_file(p)) for p in paths]
    questions = {p: d for p, d in loaded if isinstance(d, dict) and "questions" in d}
    annotations = {p: d for p, d in loaded if isinstance(d, dict) and "annotations" in d}
    samples: list[PromptSample] = []
    if questions or annotations:
        if len(questions) != 1 or len(annotations) != 1 or len(loaded) != 2:
            raise SampleError(f"{', '.join(paths)}: the official VQAv2 layout needs exactly one questions file and one annotations file")
        (q_path, q_data), (a_path, a_data) = next(iter(questions.items())), next(iter(annotations.items()))
        answers = {a["question_id"]: a for a in a_data["annotations"]}
        subtype = str(q_data.get("data_subtype", ""))
        for i, q in enumerate(q_data["questions"]):
            where = f"{q_path}[questions][{i}]"
            ann = answers.get(q["question_id"])
            if ann is None:
                raise SampleError(f"{where}: question {q['question_id']} has no entry in {a_path}")
            image = image_pattern.format(data_subtype=subtype, image_id=int(q["image_id"]))
            samples.append(_vqa_sample(q["question_id"], image, q["question"], [a["answer"] for a in ann["answers"]], ann, prompt))
    else:
        for path, data in loaded:
            if not isinstance(data, list):
                raise SampleError(f"{path}: expected a JSON list of questions or the official {{'questions': ...}} / {{'annotations': ...}} files")
            for i, record in enumerate(data):
                where = f"{path}[{i}]"
                _require(record, ("question_id", "image", "question", "answer"), where)
                samples.append(_vqa_sample(record["question_id"], str(record["image"]), record["question"], as_list(record["answer"]), record, prompt))
    _unique(samples, paths)
    return samples


def _vqa_sample(question_id: Any, image: str, question: str, answers: list[Any], record: dict[str, Any], prompt: str) -> PromptSample:
    if not answers:
        raise SampleError(f"question {question_id}: no answers")
    extra = {"answer_type": str(record.get("answer_type", "other")), "question_type": str(record.get("question_type", "")), "question": str(question)}
    return PromptSample(id=question_id, images=[image], prompt=prompt.replace("{question}", str(question).strip()), references=[str(a) for a in answers], extra=extra)


def _json_list(path: str) -> list[dict[str, Any]]:
    data = read_json_file(path)
    if not isinstance(data, list):
        raise SampleError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


def _require(record: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(record, dict):
        raise SampleError(f"{where}: expected an object, got {type(record).__name__}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise SampleError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)} (needs {', '.join(keys)})")


def _unique(samples: list[PromptSample], paths: list[str]) -> None:
    seen: set[str] = set()
    for s in samples:
        if str(s.id) in seen:
            raise SampleError(f"duplicate id {s.id!r} in {', '.join(paths)}")
        seen.add(str(s.id))
