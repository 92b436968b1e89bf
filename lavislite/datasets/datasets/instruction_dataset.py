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
from lavislite.common.logger import logger
from lavislite.processors.chat_processor import IGNORE_INDEX, SampleError  # noqa: F401  (IGNORE_INDEX: re-exported)
# The collation of chat tensors lives in processors/ (models use it too); re-exported here.
from lavislite.processors.collate import collate_chat  # noqa: F401


__all__ = [
    "InstructionDataset",
    "Sample",
    "SampleError",
    "clean_text",
    "load_annotations",
    "make_ids_unique",
    "parse_llava",
    "parse_minigpt4",
    "read_json_file",
    "read_records",
    "require_keys",
]


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
    if path.endswith(".jsonl"):
        return [record for _, record in _jsonl_records(path, text)]
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SampleError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc


def _jsonl_records(path: str, text: str) -> list[tuple[int, Any]]:
    # (line number, record) for each non-blank line: an error, and a record's
    # location, name the line of the file, not the index among non-blank lines.
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise SampleError(f"{path}: invalid JSON at line {lineno}, column {exc.colno}: {exc.msg}") from exc
    return records


def read_records(path: str) -> list[tuple[str, Any]]:
    """The records of an annotation file, each with its location for messages.

    Returns:
        ``(where, record)`` pairs: ``where`` is ``"file[index]"`` for a JSON
        list and ``"file line N"`` for a JSON-lines file.

    Raises:
        MissingFileError: the file does not exist.
        SampleError: invalid JSON (naming the line), or a JSON file that is not a list.
    """
    if path.endswith(".jsonl"):
        if not g_pathmgr.exists(path):
            raise MissingFileError(f"annotation file not found: {path}")
        with g_pathmgr.open(path, "r", encoding="utf-8") as fh:
            return [(f"{path} line {lineno}", record) for lineno, record in _jsonl_records(path, fh.read())]
    records = read_json_file(path)
    if not isinstance(records, list):
        raise SampleError(f"{path}: expected a JSON list of samples, got {type(records).__name__}")
    return [(f"{path}[{i}]", record) for i, record in enumerate(records)]


def require_keys(record: Any, keys: tuple[str, ...] | list[str], where: str) -> None:
    """Checks that a record is an object holding every key a parser reads.

    Args:
        record: one annotation record.
        keys: the keys the parser needs.
        where: the record's location (file, index, id), as a parser receives it.

    Raises:
        SampleError: naming ``where`` and every missing key, in one line.
    """
    if not isinstance(record, dict):
        raise SampleError(f"{where}: expected an object, got {type(record).__name__}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise SampleError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)} (needs {', '.join(keys)})")


def make_ids_unique(samples: list[Any], paths: list[str]) -> list[Any]:
    """Gives every repeated sample id a deterministic suffix: the 2nd ``a`` becomes ``a#2``, the 3rd ``a#3``.

    Public LLaVA instruction files reuse ids (the COCO image id of each
    conversation type), and training needs no unique id, only a name for each
    sample in messages. Evaluation, whose results are keyed by id, refuses
    repeats instead (``generation_dataset.require_unique_ids``). The first
    record keeps its id; a suffix already taken by another record is skipped.
    One warning gives the count.

    Args:
        samples: objects with a ``str`` ``id`` attribute, renamed in place.
        paths: the annotation files (named in the warning).

    Returns:
        ``samples``.
    """
    taken = {s.id for s in samples}
    if len(taken) == len(samples):
        return samples
    seen: set[str] = set()
    next_suffix: dict[str, int] = {}
    renamed: list[tuple[str, str]] = []
    for s in samples:
        if s.id not in seen:
            seen.add(s.id)
            continue
        k = next_suffix.get(s.id, 2)
        while f"{s.id}#{k}" in taken:
            k += 1
        next_suffix[s.id] = k + 1
        new_id = f"{s.id}#{k}"
        taken.add(new_id)
        seen.add(new_id)
        renamed.append((s.id, new_id))
        s.id = new_id
    first_old, first_new = renamed[0]
    logger.warning(
        "%d sample(s) in %s reuse an id of an earlier sample (as public LLaVA files do); "
        "each repeat gets a suffix so every sample keeps its own name: '%s' -> '%s', ...",
        len(renamed), ", ".join(paths), first_old, first_new,
    )
    return samples


def load_annotations(paths: list[str], parse: Callable[[dict[str, Any], str], Sample]) -> list[Sample]:
    """Reads JSON lists (or JSON-lines files) and parses every record; errors name file and index.

    A parser receives each record with its location (``where``: file, index or
    line, and the id if the record has one) and raises ``SampleError`` starting
    with it. A ``KeyError`` / ``IndexError`` a parser lets escape becomes the
    same one-line ``SampleError``. Repeated ids are renamed (``make_ids_unique``).
    """
    samples: list[Sample] = []
    for path in paths:
        for where, record in read_records(path):
            if isinstance(record, dict) and "id" in record:
                where += f" (id={record.get('id')})"
            if not isinstance(record, dict):
                raise SampleError(f"{where}: expected an object, got {type(record).__name__}")
            try:
                samples.append(parse(record, where))
            except (KeyError, IndexError) as exc:
                # A parser that indexes the record directly (``record["caption"]``)
                # would otherwise end a run with a traceback that names no record.
                key = exc.args[0] if exc.args else None
                what = f"missing key {key!r}" if isinstance(exc, KeyError) and isinstance(key, str) and key not in record else f"{type(exc).__name__}: {exc}"
                raise SampleError(f"{where}: {what} (raised by {getattr(parse, '__qualname__', parse)})") from exc
    return make_ids_unique(samples, paths)


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

    Repeated sample ids are renamed with a suffix and one warning (``make_ids_unique``).
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
        self.samples = load_annotations(ann_paths, parse) if parse is not None else make_ids_unique(list(samples or []), ann_paths)
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
        self._token_lengths: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def token_lengths(self) -> list[tuple[int, int]]:
        """``(tokens, images)`` of every sample as ``__getitem__`` makes it (after truncation).

        Tokens include each image's placeholder tokens, so they are the
        sequence length the LLM sees. Exact (the text processor tokenizes every
        conversation once, here in the main process) and cached; length
        grouping and packing plan their batches from it.
        """
        if self._token_lengths is None:
            lengths = []
            for sample in self.samples:
                text = self.text_processor(sample.turns, num_images=len(sample.images), sample_id=sample.id)
                lengths.append((len(text["input_ids"]), int(text["num_images"])))
            self._token_lengths = lengths
        return self._token_lengths

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
