"""Builders for captioning (COCO, Karpathy splits) and VQA (VQAv2), as LAVIS lays out their files.

The ``train`` split becomes instruction data (a prompt and the reference as the
assistant's reply, trained with the LM loss); other splits become
``GenerationDataset`` s: a prompt per image or question, with the references
the captioning / VQA metrics score against.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from lavislite.common.registry import registry
from lavislite.common.utils import as_list
from lavislite.datasets.bad_samples import BuildProblems
from lavislite.datasets.builders.base_builder import BaseDatasetBuilder, BuilderConfig
from lavislite.datasets.datasets.generation_dataset import GenerationDataset, PromptSample
from lavislite.datasets.datasets.instruction_dataset import InstructionDataset, Sample, clean_text, read_json_file, read_records, require_keys
from lavislite.processors.chat_processor import SampleError

IMAGE_PLACEHOLDER = "<image>"


def with_image(prompt: str) -> str:
    """The prompt with an image placeholder in front unless it places one itself."""
    return prompt if IMAGE_PLACEHOLDER in prompt else f"{IMAGE_PLACEHOLDER}\n{prompt}"


@dataclass
class GenerationBuilderConfig(BuilderConfig):
    """The keys of a dataset whose evaluation splits are scored from generated replies (a benchmark)."""

    # The registered scorer (tasks.scorers) that turns the replies into this benchmark's
    # metrics; "" takes the task's own (captioning: caption, vqa: vqa).
    scorer: str = ""
    # Generation settings of this benchmark, over run.generate (max_new_tokens, num_beams, ...).
    generate: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaptionBuilderConfig(GenerationBuilderConfig):
    # The user turn of every sample; "<image>" marks where the image goes (in front if absent).
    prompt: str = "Describe the image briefly."
    scorer: str = "caption"


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
            problems = BuildProblems(kwargs.get("bad_samples"))
            return dataset_cls(read=lambda paths: read_caption_eval(paths, prompt, problems), problems=problems, prompt_template=prompt, **kwargs)

        def parse(record: dict[str, Any], where: str) -> Sample:
            require_keys(record, ("image", "caption", "image_id"), where)
            captions = as_list(record["caption"])
            if not captions:
                raise SampleError(f"{where}: no caption")
            return Sample(
                # One record per caption: the image id repeats, its position in the file does not.
                id=f"{record['image_id']}@{_position(where)}",
                images=[str(record["image"])],
                turns=[{"role": "user", "content": prompt}, {"role": "assistant", "content": clean_text(captions[0], f"{where}: 'caption'")}],
            )

        return dataset_cls(parse=parse, **kwargs)


def _position(where: str) -> str:
    """The index (``file[3]``) or line (``file line 4``) of a record's location."""
    found = re.search(r"\[(\d+)\]|line (\d+)", where.rsplit("/", 1)[-1])
    return (found.group(1) or found.group(2)) if found else where


def read_caption_eval(paths: list[str], prompt: str, problems: BuildProblems | None = None) -> list[PromptSample]:
    """Karpathy val/test entries -> one prompt per image, its captions as references.

    Every record is read; problems go to ``problems`` (without it, all are raised together).
    """
    collector = problems if problems is not None else BuildProblems()
    samples: list[PromptSample] = []
    for path in paths:
        for where, record in read_records(path, collector):
            try:
                require_keys(record, ("image", "caption", "image_id"), where)
                refs = [clean_text(c, f"{where}: 'caption'") for c in as_list(record["caption"])]
                if not refs:
                    raise SampleError(f"{where}: no reference caption")
            except SampleError as exc:
                collector.add(where, str(exc))
                continue
            samples.append(PromptSample(id=record["image_id"], images=[str(record["image"])], prompt=prompt, references=refs, where=where))
    if problems is None:
        collector.settle(len(samples) + len(collector), paths)
    return samples


@dataclass
class VQABuilderConfig(GenerationBuilderConfig):
    # "{question}" is replaced by each question; "<image>" goes in front if absent.
    prompt: str = "{question} Answer the question using a single word or phrase."
    scorer: str = "vqa"
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
        problems = BuildProblems(kwargs.get("bad_samples"))
        items = read_vqa(kwargs["ann_paths"], str(self.config.image_pattern), str(self.config.prompt), problems)
        if dataset_cls is GenerationDataset:
            return dataset_cls(read=lambda paths: items, problems=problems, prompt_template=with_image(str(self.config.prompt)), **kwargs)
        samples = [
            Sample(
                id=str(item.id),
                images=item.images,
                turns=[{"role": "user", "content": item.prompt}, {"role": "assistant", "content": _most_common(item.references)}],
                where=item.where,
            )
            for item in items
        ]
        return dataset_cls(samples=samples, problems=problems, **kwargs)


def _most_common(answers: list[str]) -> str:
    """The answer most annotators gave (ties: the first given)."""
    return Counter(a.strip() for a in answers).most_common(1)[0][0]


def read_vqa(paths: list[str], image_pattern: str, prompt: str, problems: BuildProblems | None = None) -> list[PromptSample]:
    """Official questions + annotations files, or LAVIS's flattened list -> prompts with their 10 answers.

    Every question is read; problems go to ``problems`` (without it, all are raised together).
    A file-level problem (the wrong set of files, a file that is not a list) raises at once.
    """
    collector = problems if problems is not None else BuildProblems()
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
            try:
                require_keys(q, ("question_id", "image_id", "question"), where)
                ann = answers.get(q["question_id"])
                if ann is None:
                    raise SampleError(f"{where}: question {q['question_id']} has no entry in {a_path}")
                image = image_pattern.format(data_subtype=subtype, image_id=int(q["image_id"]))
                samples.append(_vqa_sample(q["question_id"], image, q["question"], [a["answer"] for a in ann["answers"]], ann, prompt, where))
            except SampleError as exc:
                collector.add(where, str(exc))
    else:
        for path, data in loaded:
            if not isinstance(data, list):
                raise SampleError(f"{path}: expected a JSON list of questions or the official {{'questions': ...}} / {{'annotations': ...}} files")
            # A JSON-lines file is read again for its line numbers; a JSON list is not re-read.
            located = read_records(path, collector) if path.endswith(".jsonl") else [(f"{path}[{i}]", r) for i, r in enumerate(data)]
            for where, record in located:
                try:
                    require_keys(record, ("question_id", "image", "question", "answer"), where)
                    samples.append(_vqa_sample(record["question_id"], str(record["image"]), record["question"], as_list(record["answer"]), record, prompt, where))
                except SampleError as exc:
                    collector.add(where, str(exc))
    if problems is None:
        collector.settle(len(samples) + len(collector), paths)
    # Unique question ids are required where answers are scored (GenerationDataset);
    # the train split renames repeats instead (InstructionDataset).
    return samples


def _vqa_sample(question_id: Any, image: str, question: str, answers: list[Any], record: dict[str, Any], prompt: str, where: str) -> PromptSample:
    if not answers:
        raise SampleError(f"{where}: question {question_id}: no answers")
    question = clean_text(question, f"{where}: 'question'")
    references = [clean_text(a, f"{where}: answer {k}") for k, a in enumerate(answers)]
    extra = {"answer_type": str(record.get("answer_type", "other")), "question_type": str(record.get("question_type", "")), "question": question}
    return PromptSample(id=question_id, images=[image], prompt=prompt.replace("{question}", question), references=references, extra=extra, where=where)
