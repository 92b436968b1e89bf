"""Image-instruction datasets (MiniGPT4Qwen and LLaVA formats) and their collater.

Annotations are parsed into one neutral form at start-up (``Sample``: id, image
files, chat turns), so a malformed record fails before training with its file,
index and id. ``__getitem__`` does all per-sample work (image loading and
transforms, ChatML rendering, tokenization, labels) so it runs in the
data-loader workers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
from iopath.common.file_io import g_pathmgr
from PIL import Image
from torch.utils.data import Dataset

from lavislite.common.utils import as_list
from lavislite.common.errors import MissingFileError
from lavislite.processors.chat_processor import IGNORE_INDEX, SampleError  # noqa: F401  (IGNORE_INDEX: re-exported)
# The collation of chat tensors lives in processors/ (models use it too); re-exported here.
from lavislite.processors.collate import collate_chat  # noqa: F401


@dataclass
class Sample:
    """One training conversation: its id, image files (in placeholder order) and turns."""

    id: str
    images: list[str]
    turns: list[dict[str, str]]


def clean_text(value: Any) -> str:
    """Annotation text as it goes into the conversation: surrounding whitespace removed.

    Annotation files often carry stray spaces and newlines around a turn. They
    are cleaned here, once, when the record is parsed: the chat template then
    inserts text exactly as given (as Qwen2.5's template does), so training
    and ``apply_chat_template`` at inference see the same ids.
    """
    return str(value).strip()


def parse_minigpt4(record: dict[str, Any], where: str) -> Sample:
    """MiniGPT4Qwen: ``{"image", "instruction", "output"}``; lists of equal length for multi-turn."""
    for key in ("image", "instruction", "output"):
        if key not in record:
            raise SampleError(f"{where}: missing key '{key}' (MiniGPT4Qwen format needs image, instruction, output)")
    instructions, outputs = as_list(record["instruction"]), as_list(record["output"])
    if len(instructions) != len(outputs) or not instructions:
        raise SampleError(f"{where}: 'instruction' has {len(instructions)} turn(s) but 'output' has {len(outputs)}")
    turns: list[dict[str, str]] = []
    for q, a in zip(instructions, outputs):
        turns += [{"role": "user", "content": clean_text(q)}, {"role": "assistant", "content": clean_text(a)}]
    return Sample(str(record.get("id", where)), [str(x) for x in as_list(record["image"])], turns)


LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def parse_llava(record: dict[str, Any], where: str) -> Sample:
    """LLaVA: ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``."""
    convs = record.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise SampleError(f"{where}: missing or empty 'conversations' (LLaVA format)")
    turns = []
    for k, turn in enumerate(convs):
        role = LLAVA_ROLES.get(str(turn.get("from", "")).lower())
        if role is None or "value" not in turn:
            raise SampleError(f"{where}: conversations[{k}] needs 'from' (human/gpt) and 'value', got {turn}")
        turns.append({"role": role, "content": clean_text(turn["value"])})
    return Sample(str(record.get("id", where)), [str(x) for x in as_list(record.get("image"))], turns)


def read_json_file(path: str) -> Any:
    """Reads a JSON file, or a JSON-lines file (``.jsonl``) as a list; errors name the file and line."""
    if not g_pathmgr.exists(path):
        raise MissingFileError(f"annotation file not found: {path}")
    with g_pathmgr.open(path, "r", encoding="utf-8") as fh:
        text = fh.read()
    try:
        return json.loads(text) if not path.endswith(".jsonl") else [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise SampleError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc


def load_annotations(paths: list[str], parse: Callable[[dict[str, Any], str], Sample]) -> list[Sample]:
    """Reads JSON lists (or JSON-lines files) and parses every record; errors name file and index."""
    samples: list[Sample] = []
    for path in paths:
        records = read_json_file(path)
        if not isinstance(records, list):
            raise SampleError(f"{path}: expected a JSON list of samples, got {type(records).__name__}")
        for i, record in enumerate(records):
            where = f"{path}[{i}]" + (f" (id={record.get('id')})" if isinstance(record, dict) and "id" in record else "")
            if not isinstance(record, dict):
                raise SampleError(f"{where}: expected an object, got {type(record).__name__}")
            samples.append(parse(record, where))
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise SampleError(f"duplicate sample id '{s.id}' in {', '.join(paths)}")
        seen.add(s.id)
    return samples


def load_image_tensor(vis_root: str, path: str, vis_processor: Callable[[Image.Image], torch.Tensor], sample_id: str) -> torch.Tensor:
    """Reads one image (relative to ``vis_root`` unless absolute) and processes it.

    Raises:
        SampleError: naming the sample and the file when it cannot be read.
    """
    full = path if os.path.isabs(path) else os.path.join(vis_root, path)
    try:
        with g_pathmgr.open(full, "rb") as fh:
            image = Image.open(fh).convert("RGB")
    except Exception as exc:
        raise SampleError(f"sample {sample_id}: cannot read image {full}: {exc}") from exc
    return vis_processor(image)


def check_images_exist(samples: list[Any], vis_root: str, ann_paths: list[str], shown: int = 10) -> None:
    """Raises ``SampleError`` listing every local image the samples (``.id``, ``.images``) name that is not on disk.

    Runs when the dataset is built, before the model: a missing image would
    otherwise surface in a DataLoader worker minutes (or epochs) into training.
    Each folder is listed once, so hundreds of thousands of samples take
    seconds, not one ``stat`` call each. Remote paths (``scheme://``) are skipped.

    Raises:
        SampleError: naming the annotation file(s), and the first missing
            images with their sample ids and the total count.
    """
    listings: dict[str, set[str] | None] = {}
    missing: list[tuple[str, str]] = []
    for sample in samples:
        for image in sample.images:
            if "://" in image:
                continue
            full = image if os.path.isabs(image) else os.path.join(vis_root, image)
            folder, name = os.path.split(full)
            if folder not in listings:
                try:
                    listings[folder] = set(os.listdir(folder or "."))
                except OSError:
                    listings[folder] = None  # the folder itself is missing
            names = listings[folder]
            if names is None or name not in names:
                missing.append((sample.id, full))
    if missing:
        lines = "\n".join(f"    sample {sid}: {path}" for sid, path in missing[:shown])
        more = f"\n    ... and {len(missing) - shown} more" if len(missing) > shown else ""
        raise SampleError(f"{len(missing)} image(s) named in {', '.join(ann_paths)} are not on disk:\n{lines}{more}")


class InstructionDataset(Dataset):
    """Conversations with zero or more images each.

    Args:
        vis_processor: PIL image -> (3, H, W) tensor.
        text_processor: a chat processor (``qwen_chat``): turns -> ids and labels.
        vis_root: folder the image paths are relative to.
        ann_paths: annotation files (named in errors).
        parse: record parser for the annotation format, or
        samples: the conversations, already parsed (a builder that reads its files itself).
    """

    def __init__(
        self,
        vis_processor: Callable[[Image.Image], torch.Tensor],
        text_processor: Any,
        vis_root: str,
        ann_paths: list[str],
        parse: Callable[[dict[str, Any], str], Sample] | None = None,
        samples: list[Sample] | None = None,
    ) -> None:
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.vis_root = vis_root
        if (parse is None) == (samples is None):
            raise TypeError("InstructionDataset takes either parse (a record parser for ann_paths) or samples (already parsed)")
        self.samples = load_annotations(ann_paths, parse) if parse is not None else list(samples or [])
        # Check every conversation's structure now, not in a worker in epoch 3:
        # placeholders vs images, turn order, at least one reply (rendering is
        # string work only; tokenization stays in __getitem__).
        for s in self.samples:
            try:
                found = sum(text_processor.count_placeholders(t["content"]) for t in s.turns if t["role"] == "user")
                if found != len(s.images):
                    raise SampleError(f"sample {s.id}: {found} image placeholder(s) in the text but {len(s.images)} image(s)")
                if not any(t["role"] == "assistant" for t in s.turns):
                    raise SampleError(f"sample {s.id}: no assistant reply to learn from")
                text_processor.render(s.turns, s.id)
            except SampleError as exc:
                raise SampleError(f"{exc} (in {', '.join(ann_paths)})") from exc
        check_images_exist(self.samples, vis_root, ann_paths)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, sample: Sample, path: str) -> torch.Tensor:
        return load_image_tensor(self.vis_root, path, self.vis_processor, sample.id)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        text = self.text_processor(sample.turns, num_images=len(sample.images), sample_id=sample.id)
        # Truncation may drop trailing images; only load those that kept their tokens.
        images = [self.load_image(sample, p) for p in sample.images[: text["num_images"]]]
        return {
            "id": sample.id,
            "image": torch.stack(images) if images else None,
            "input_ids": torch.tensor(text["input_ids"], dtype=torch.long),
            "labels": torch.tensor(text["labels"], dtype=torch.long),
        }

    def collater(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_chat(batch, pad_token_id=int(self.text_processor.tokenizer.pad_token_id))
