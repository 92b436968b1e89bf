"""Builders of the benchmarks papers report, each reading its official release as it unpacks.

Every builder turns a benchmark's own files into ``GenerationDataset`` prompts (the
image placeholder, the question worded as LLaVA-1.5 words it, the benchmark's
``prompt_suffix`` on a line of its own) and carries what the benchmark's scorer needs
in each sample's ``references`` and ``extra`` (the scorer, ``tasks.scorers``, is named
by ``scorer`` in the dataset's config). Registered names and their files:

=============  ==========================================================================
``gqa``        ``testdev_balanced_questions.json`` (question id -> question); ``images/<imageId>.jpg``
``okvqa``      ``OpenEnded_mscoco_val2014_questions.json`` + ``mscoco_val2014_annotations.json``; COCO val2014
``textvqa``    ``TextVQA_0.5.1_val.json`` (``data`` list; OCR tokens in it or in ``TextVQA_Rosetta_OCR_v0.2_val.json``); ``train_images/<image_id>.jpg``
``vizwiz``     ``val.json`` (list of ``{image, question, answers, answerable, answer_type}``); ``val/<image>``
``scienceqa``  ``problems.json`` + ``pid_splits.json``, the problems with an image (ScienceQA-IMG); ``<split>/<pid>/image.png``
``pope``       ``coco_pope_{random,popular,adversarial}.json`` (one object a line); COCO val2014
``mme``        the ``MME_Benchmark_release_version`` folder (one folder per subtask), or the eval tool's ``<subtask>.txt`` lists
``nocaps``     ``nocaps_val_4500_captions.json`` (COCO format, ``domain`` per image); the val images
``flickr30k``  Karpathy's ``dataset_flickr30k.json`` (the split by name) or LAVIS's list; ``flickr30k-images/``
=============  ==========================================================================
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from lavislite.common.logger import logger
from lavislite.common.registry import registry
from lavislite.datasets.bad_samples import BuildProblems
from lavislite.datasets.builders.base_builder import BaseDatasetBuilder
from lavislite.datasets.builders.task_builders import CaptionBuilderConfig, GenerationBuilderConfig, read_caption_eval, read_vqa, with_image
from lavislite.datasets.datasets.generation_dataset import GenerationDataset, PromptSample
from lavislite.datasets.datasets.instruction_dataset import clean_text, read_json_file, read_records, read_text, require_keys
from lavislite.processors.chat_processor import SampleError

#: LLaVA-1.5's instruction for short answers (GQA, VQAv2, TextVQA, POPE, MME).
SHORT_ANSWER = "Answer the question using a single word or phrase."
IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


@dataclass
class BenchmarkConfig(GenerationBuilderConfig):
    # Appended to every question on a line of its own, as LLaVA-1.5 asks; "" for none.
    prompt_suffix: str = SHORT_ANSWER


class BenchmarkBuilder(BaseDatasetBuilder):
    """A benchmark's files -> ``GenerationDataset`` s; a subclass reads its own layout in ``read``."""

    Config: type = BenchmarkConfig
    eval_dataset_cls = GenerationDataset
    #: The question part of the prompt, as reports show it (the suffix and image placeholder are added).
    body_template = "{question}"

    def prompt(self, body: str) -> str:
        """The prompt of one sample: the image placeholder, the body, the suffix on its own line."""
        suffix = str(self.config.get("prompt_suffix", "") or "")
        return with_image(f"{body}\n{suffix}" if suffix else body)

    def make_dataset(self, dataset_cls: type, **kwargs: Any) -> Dataset:
        problems = BuildProblems(kwargs.get("bad_samples"))
        samples = self.read(kwargs["ann_paths"], kwargs["vis_root"], problems)
        return dataset_cls(read=lambda paths: samples, problems=problems, prompt_template=self.prompt(self.body_template), **kwargs)

    def read(self, paths: list[str], vis_root: str, problems: BuildProblems) -> list[PromptSample]:
        """The split's samples; a bad record goes to ``problems``, a file that is not the layout raises ``SampleError``."""
        raise NotImplementedError


def _object(path: str, what: str) -> dict[str, Any]:
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise SampleError(f"{path}: expected {what} (a JSON object), got a {type(data).__name__}")
    return data


# -- GQA ------------------------------------------------------------------------------------


@dataclass
class GQAConfig(BenchmarkConfig):
    scorer: str = "gqa"


@registry.register_builder("gqa")
class GQABuilder(BenchmarkBuilder):
    """GQA: ``testdev_balanced_questions.json`` (question id -> ``{imageId, question, answer, isBalanced, types, semantic, ...}``)."""

    Config = GQAConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/gqa/defaults.yaml"}

    def read(self, paths: list[str], vis_root: str, problems: BuildProblems) -> list[PromptSample]:
        samples = []
        for path in paths:
            for qid, q in _object(path, "GQA's questions (question id -> question)").items():
                where = f"{path}[{qid}]"
                try:
                    require_keys(q, ("imageId", "question", "answer"), where)
                    question = clean_text(q["question"], f"{where}: 'question'")
                    # What GQA's eval.py reads of a question, beside the answer (the scorer rebuilds it).
                    gqa = {
                        "question": q["question"],
                        "isBalanced": bool(q.get("isBalanced", True)),
                        "types": q.get("types") or {"structural": "", "semantic": ""},
                        "semantic": q.get("semantic") or [],
                        "groups": q.get("groups") or {},
                    }
                    samples.append(
                        PromptSample(id=str(qid), images=[f"{q['imageId']}.jpg"], prompt=self.prompt(question), references=[str(q["answer"])], extra={"gqa": gqa}, where=where)
                    )
                except SampleError as exc:
                    problems.add(where, str(exc))
        return samples


# -- OK-VQA ----------------------------------------------------------------------------------


@dataclass
class OKVQAConfig(BenchmarkConfig):
    scorer: str = "vqa"
    # Image file of a question, from its fields (image_id, data_subtype), under images.storage.
    image_pattern: str = "{data_subtype}/COCO_{data_subtype}_{image_id:012d}.jpg"


@registry.register_builder("okvqa")
class OKVQABuilder(BenchmarkBuilder):
    """OK-VQA in the VQA format: a questions file and an annotations file (``storage: [questions, annotations]``), scored by the VQA accuracy."""

    Config = OKVQAConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/okvqa/defaults.yaml"}

    def read(self, paths: list[str], vis_root: str, problems: BuildProblems) -> list[PromptSample]:
        return read_vqa(paths, str(self.config.image_pattern), self.prompt(self.body_template), problems)


# -- TextVQA ---------------------------------------------------------------------------------


@dataclass
class TextVQAConfig(BenchmarkConfig):
    scorer: str = "textvqa"
    # LLaVA-1.5 puts the image's OCR tokens after the question ("Reference OCR token: a, b");
    # lmms-eval and InstructBLIP's numbers do not (45.5 vs 58.2 for the same model).
    ocr_tokens_in_prompt: bool = True


@registry.register_builder("textvqa")
class TextVQABuilder(BenchmarkBuilder):
    """TextVQA: ``TextVQA_0.5.1_val.json`` (``data``: question_id, image_id, question, answers, ocr_tokens).

    OCR tokens come from each entry's ``ocr_tokens`` or from a Rosetta OCR file given as a
    second annotation file (``data``: image_id, ocr_tokens).
    """

    Config = TextVQAConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/textvqa/defaults.yaml"}

    @property
    def body_template(self) -> str:  # type: ignore[override]
        return "{question}\nReference OCR token: {ocr_tokens}" if self.config.get("ocr_tokens_in_prompt") else "{question}"

    def read(self, paths: list[str], vis_root: str, problems: BuildProblems) -> list[PromptSample]:
        question_files: list[tuple[str, list[Any]]] = []
        ocr: dict[str, list[str]] = {}
        for path in paths:
            data = _object(path, "TextVQA's file ({'data': [...]})").get("data")
            if not isinstance(data, list):
                raise SampleError(f"{path}: expected TextVQA's layout, {{'data': [...]}}")
            if data and isinstance(data[0], dict) and "question" not in data[0] and "ocr_tokens" in data[0]:
                ocr.update({str(e["image_id"]): list(e["ocr_tokens"]) for e in data if isinstance(e, dict) and "image_id" in e})
            else:
                question_files.append((path, data))
        use_ocr = bool(self.config.get("ocr_tokens_in_prompt"))
        if use_ocr and not ocr and not any(isinstance(e, dict) and "ocr_tokens" in e for _, data in question_files for e in data):
            raise SampleError(
                f"{', '.join(paths)}: datasets.{self.name}.ocr_tokens_in_prompt is true but no entry has ocr_tokens; add the OCR file "
                f"(TextVQA_Rosetta_OCR_v0.2_val.json) to build_info.annotations.<split>.storage or set ocr_tokens_in_prompt: false"
            )
        samples = []
        for path, data in question_files:
            for i, entry in enumerate(data):
                where = f"{path}[data][{i}]"
                try:
                    require_keys(entry, ("question_id", "image_id", "question", "answers"), where)
                    question = clean_text(entry["question"], f"{where}: 'question'")
                    body = question
                    tokens = entry.get("ocr_tokens", ocr.get(str(entry["image_id"]), []))
                    if use_ocr and tokens:  # LLaVA leaves the line out for an image without text
                        body += "\nReference OCR token: " + ", ".join(str(t) for t in tokens)
                    answers = [clean_text(a, f"{where}: answer {k}") for k, a in enumerate(entry["answers"])]
                    samples.append(
                        PromptSample(id=entry["question_id"], images=[f"{entry['image_id']}.jpg"], prompt=self.prompt(body), references=answers,
                                     extra={"question": question, "image_id": entry["image_id"]}, where=where)
                    )
                except SampleError as exc:
                    problems.add(where, str(exc))
        return samples


# -- VizWiz ----------------------------------------------------------------------------------


@dataclass
class VizWizConfig(BenchmarkConfig):
    scorer: str = "vizwiz"
    prompt_suffix: str = f"When the provided information is insufficient, respond with 'Unanswerable'.\n{SHORT_ANSWER}"


@registry.register_builder("vizwiz")
class VizWizBuilder(BenchmarkBuilder):
    """VizWiz-VQA: ``val.json``, a list of ``{image, question, answers: [{answer, answer_confidence}], answerable, answer_type}``; the image names the question."""

    Config = VizWizConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/vizwiz/defaults.yaml"}

    def read(self, paths: list[str], vis_root: str, problems: BuildProblems) -> list[PromptSample]:
        samples = []
        for path in paths:
            for where, record in read_records(path, problems):
                try:
                    require_keys(record, ("image", "question", "answers"), where)
                    question = clean_text(record["question"], f"{where}: 'question'")
                    answers = [a["answer"] if isinstance(a, dict) else a for a in record["answers"]]
                    if not answers:
                        raise SampleError(f"{where}: no answers (VizWiz's test split has none; score val)")
                    extra = {"question": question, "answer_type": str(record.get("answer_type", "other")), "answerable": record.get("answerable")}
                    samples.append(PromptSample(id=str(record["image"]), images=[str(record["image"])], prompt=self.prompt(question),
                                                references=[str(a) for a in answers], extra=extra, where=where))
                except (SampleError, KeyError, TypeError) as exc:
                    problems.add(where, str(exc))
        return samples


# -- ScienceQA -------------------------------------------------------------------------------


@dataclass
class ScienceQAConfig(BenchmarkConfig):
    scorer: str = "scienceqa"
    prompt_suffix: str = "Answer with the option's letter from the given choices directly."
    # The pid_splits.json split to read; "" is the split's own name (test, val, minival).
    pid_split: str = ""


SCIENCEQA_LETTERS = "ABCDE"
# The fields of a problem its scorer reads (ScienceQA's groups and LLaVA's extraction).
SCIENCEQA_FIELDS = ("question", "choices", "answer", "hint", "image", "subject", "topic", "grade", "split")


@registry.register_builder("scienceqa")
class ScienceQABuilder(BenchmarkBuilder):
    """ScienceQA-IMG: the problems of a ``pid_splits.json`` split that have an image (``storage: [problems.json, pid_splits.json]``).

    The prompt is LLaVA-1.5's: ``Context: <hint>`` (when there is one), the question,
    and the choices as ``A. ...`` lines; the image is ``<split>/<pid>/image.png``.
    """

    Config = ScienceQAConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/scienceqa/defaults.yaml"}
    body_template = "Context: {hint}\n{question}\nA. {choice_a}\nB. {choice_b}\n..."

    def read(self, paths: list[str], vis_root: str, problems: BuildProblems) -> list[PromptSample]:
        loaded = [(p, _object(p, "problems.json or pid_splits.json")) for p in paths]
        splits = [(p, d) for p, d in loaded if d and all(isinstance(v, list) for v in d.values())]
        tables = [(p, d) for p, d in loaded if (p, d) not in splits]
        if len(splits) != 1 or len(tables) != 1:
            raise SampleError(f"{', '.join(paths)}: ScienceQA needs two files, problems.json (pid -> problem) and pid_splits.json (split -> pids)")
        (splits_path, pid_splits), (problems_path, table) = splits[0], tables[0]
        split = str(self.config.get("pid_split") or self.current_split)
        if split not in pid_splits:
            raise SampleError(f"{splits_path}: no split '{split}' (it has {', '.join(pid_splits)}); set datasets.{self.name}.pid_split")
        samples, text_only = [], 0
        for pid in pid_splits[split]:
            where = f"{problems_path}[{pid}]"
            try:
                problem = table.get(str(pid))
                if problem is None:
                    raise SampleError(f"{where}: pid {pid} of {splits_path}[{split}] is not in {problems_path}")
                require_keys(problem, ("question", "choices", "answer"), where)
                if not problem.get("image"):
                    text_only += 1  # ScienceQA-IMG: the problems with an image
                    continue
                choices = [clean_text(c, f"{where}: choice {k}") for k, c in enumerate(problem["choices"])]
                if not 2 <= len(choices) <= len(SCIENCEQA_LETTERS) or not 0 <= int(problem["answer"]) < len(choices):
                    raise SampleError(f"{where}: {len(choices)} choices and answer {problem['answer']}; ScienceQA has 2-5 choices and the answer indexes one")
                hint = str(problem.get("hint") or "").strip()
                body = (f"Context: {hint}\n" if hint else "") + clean_text(problem["question"], f"{where}: 'question'") + "\n"
                body += "\n".join(f"{SCIENCEQA_LETTERS[k]}. {c}" for k, c in enumerate(choices))
                image = f"{problem.get('split') or split}/{pid}/{problem['image']}"
                kept = {key: problem.get(key) for key in SCIENCEQA_FIELDS}
                samples.append(PromptSample(id=str(pid), images=[image], prompt=self.prompt(body), references=[SCIENCEQA_LETTERS[int(problem["answer"])]],
                                            extra={"problem": kept}, where=where))
            except (SampleError, TypeError, ValueError) as exc:
                problems.add(where, str(exc))
        logger.info("scienceqa/%s: %d problems with an image (ScienceQA-IMG), %d text-only left out", split, len(samples), text_only)
        return samples


# -- POPE ------------------------------------------------------------------------------------


@dataclass
class POPEConfig(BenchmarkConfig):
    scorer: str = "pope"


_POPE_CATEGORY = re.compile(r"_pope_([^_./\\]+)\.jsonl?$")


def pope_category(path: str) -> str:
    """The POPE split a label file holds, from its name (``coco_pope_random.json`` -> ``random``)."""
    found = _POPE_CATEGORY.search(os.path.basename(path))
    return found.group(1) if found else os.path.splitext(os.path.basename(path))[0]


@registry.register_builder("pope")
class POPEBuilder(BenchmarkBuilder):
    """POPE: ``coco_pope_{random,popular,adversarial}.json`` (one ``{question_id, image, text, label}`` a line), one category per file.

    Question ids restart in each file, so a sample's id is ``<category>/<question_id>``.
    """

    Config = POPEConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/pope/defaults.yaml"}

    def read(self, paths: list[str], vis_root: str, problems: BuildProblems) -> list[PromptSample]:
        samples, seen = [], {}
        for path in paths:
            category = pope_category(path)
            if category in seen:
                raise SampleError(f"{path} and {seen[category]} are both POPE's '{category}' split; give each category's file once")
            seen[category] = path
            for where, record in read_records(path, problems, json_lines=True):
                try:
                    require_keys(record, ("question_id", "image", "text", "label"), where)
                    question = clean_text(record["text"], f"{where}: 'text'")
                    extra = {"category": category, "question_id": record["question_id"], "question": question}
                    samples.append(PromptSample(id=f"{category}/{record['question_id']}", images=[str(record["image"])], prompt=self.prompt(question),
                                                references=[str(record["label"])], extra=extra, where=where))
                except SampleError as exc:
                    problems.add(where, str(exc))
        return samples


# -- MME -------------------------------------------------------------------------------------


@dataclass
class MMEConfig(BenchmarkConfig):
    scorer: str = "mme"


@registry.register_builder("mme")
class MMEBuilder(BenchmarkBuilder):
    """MME: the release folder, or the eval tool's lists; every line keeps its subtask and position (acc+ pairs consecutive lines).

    * the release (``MME_Benchmark_release_version``): one folder per subtask, holding
      ``images/`` + ``questions_answers_YN/<name>.txt``, or ``<name>.jpg|png`` beside
      ``<name>.txt``; each ``.txt`` has the image's two ``question<TAB>answer`` lines;
    * the eval tool's ``<subtask>.txt`` lists (``eval_tool/Your_Results``): lines of
      ``image<TAB>question<TAB>answer``, in the tool's order.

    Images are found under ``build_info.images.storage`` (the release folder) as the release places them.
    """

    Config = MMEConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/mme/defaults.yaml"}

    def read(self, paths: list[str], vis_root: str, problems: BuildProblems) -> list[PromptSample]:
        if len(paths) != 1 or not os.path.isdir(paths[0]):
            raise SampleError(f"{', '.join(paths)}: MME's annotations are one folder (the release folder, or the eval tool's <subtask>.txt lists)")
        root = paths[0]
        images_root = vis_root or root
        lists = sorted(name for name in os.listdir(root) if name.endswith(".txt") and os.path.isfile(os.path.join(root, name)))
        rows: list[tuple[str, str, str, str, str]] = []  # (subtask, image path, question, answer, where)
        if lists:
            for name in lists:
                subtask = name[: -len(".txt")]
                image_dir = f"{subtask}/images" if os.path.isdir(os.path.join(images_root, subtask, "images")) else subtask
                for lineno, line in enumerate(read_text(os.path.join(root, name)).splitlines(), start=1):
                    if not line.strip():
                        continue
                    fields = line.rstrip("\n").split("\t")
                    where = f"{os.path.join(root, name)} line {lineno}"
                    if len(fields) < 3:
                        problems.add(where, f"{where}: expected image<TAB>question<TAB>answer")
                        continue
                    rows.append((subtask, f"{image_dir}/{fields[0]}", fields[1], fields[2], where))
        else:
            for subtask in sorted(os.listdir(root)):
                folder = os.path.join(root, subtask)
                if not os.path.isdir(folder):
                    continue
                nested = os.path.isdir(os.path.join(folder, "questions_answers_YN"))
                qa_dir = os.path.join(folder, "questions_answers_YN") if nested else folder
                image_rel = f"{subtask}/images" if nested else subtask
                image_names = _listing(os.path.join(images_root, image_rel))
                for name in sorted(n for n in os.listdir(qa_dir) if n.endswith(".txt")):
                    path = os.path.join(qa_dir, name)
                    stem = name[: -len(".txt")]
                    image = next((stem + ext for ext in IMAGE_EXTENSIONS if stem + ext in image_names), stem + ".jpg")
                    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
                        if not line.strip():
                            continue
                        fields = line.strip().split("\t")
                        where = f"{path} line {lineno}"
                        if len(fields) != 2:
                            problems.add(where, f"{where}: expected question<TAB>answer")
                            continue
                        rows.append((subtask, f"{image_rel}/{image}", fields[0], fields[1], where))
        samples, line_of = [], defaultdict(int)
        for subtask, image, question, answer, where in rows:
            if answer.strip().lower() not in ("yes", "no"):
                problems.add(where, f"{where}: the answer must be Yes or No, got {answer!r}")
                continue
            k = line_of[subtask]
            line_of[subtask] += 1
            extra = {"subtask": subtask, "line": k, "question": question.strip(), "image_name": os.path.basename(image)}
            samples.append(PromptSample(id=f"{subtask}/{k}", images=[image], prompt=self.prompt(question.strip()), references=[answer.strip()], extra=extra, where=where))
        if not samples and not len(problems):
            raise SampleError(f"{root}: no MME questions found (expected one folder per subtask, or <subtask>.txt lists)")
        return samples


def _listing(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()  # the missing images are reported when the set is checked


# -- captions: NoCaps, Flickr30k -------------------------------------------------------------


class CaptionBenchmarkBuilder(BenchmarkBuilder):
    """A captioning benchmark: every image gets the same prompt, ``datasets.<name>.prompt``."""

    Config: type = CaptionBuilderConfig

    def prompt(self, body: str) -> str:
        return with_image(str(self.config.prompt))


@dataclass
class NocapsConfig(CaptionBuilderConfig):
    scorer: str = "nocaps"


@registry.register_builder("nocaps")
class NocapsBuilder(CaptionBenchmarkBuilder):
    """NoCaps val: ``nocaps_val_4500_captions.json`` (COCO format: ``images`` with ``domain``, ``annotations``); CIDEr overall and per domain."""

    Config = NocapsConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/nocaps/defaults.yaml"}

    def read(self, paths: list[str], vis_root: str, problems: BuildProblems) -> list[PromptSample]:
        samples = []
        for path in paths:
            data = _object(path, "NoCaps' COCO-format captions ({'images', 'annotations'})")
            captions: dict[Any, list[str]] = defaultdict(list)
            for annotation in data.get("annotations") or []:
                captions[annotation.get("image_id")].append(annotation.get("caption"))
            for i, image in enumerate(data.get("images") or []):
                where = f"{path}[images][{i}]"
                try:
                    require_keys(image, ("id", "file_name"), where)
                    refs = [clean_text(c, f"{where}: caption") for c in captions.get(image["id"], [])]
                    if not refs:
                        raise SampleError(f"{where}: image {image['id']} has no caption in 'annotations'")
                    samples.append(PromptSample(id=image["id"], images=[str(image["file_name"])], prompt=self.prompt(""), references=refs,
                                                extra={"domain": str(image.get("domain", "all"))}, where=where))
                except SampleError as exc:
                    problems.add(where, str(exc))
        return samples


@dataclass
class Flickr30kConfig(CaptionBuilderConfig):
    # The split of Karpathy's file to read; "" is the split's own name (test, val).
    karpathy_split: str = ""


@registry.register_builder("flickr30k")
class Flickr30kBuilder(CaptionBenchmarkBuilder):
    """Flickr30k captions: Karpathy's ``dataset_flickr30k.json`` (``images`` with ``split``, ``sentences``), or LAVIS's ``[{image, caption: [...], image_id}]``."""

    Config = Flickr30kConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/flickr30k/defaults.yaml"}

    def read(self, paths: list[str], vis_root: str, problems: BuildProblems) -> list[PromptSample]:
        samples = []
        split = str(self.config.get("karpathy_split") or self.current_split)
        for path in paths:
            data = read_json_file(path)
            if isinstance(data, list):  # LAVIS's layout, as coco_caption reads it
                samples += read_caption_eval([path], self.prompt(""), problems)
                continue
            if not isinstance(data, dict) or not isinstance(data.get("images"), list):
                raise SampleError(f"{path}: expected Karpathy's file ({{'images': [...]}}) or a list of {{image, caption, image_id}}")
            for i, image in enumerate(data["images"]):
                where = f"{path}[images][{i}]"
                if image.get("split") != split:
                    continue
                try:
                    require_keys(image, ("filename", "sentences"), where)
                    refs = [clean_text(s["raw"], f"{where}: sentence {k}") for k, s in enumerate(image["sentences"])]
                    samples.append(PromptSample(id=image.get("imgid", image["filename"]), images=[str(image["filename"])], prompt=self.prompt(""), references=refs, where=where))
                except (SampleError, KeyError, TypeError) as exc:
                    problems.add(where, str(exc))
        return samples
