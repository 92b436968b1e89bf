"""Image-instruction datasets (MiniGPT4Qwen and LLaVA formats) and their collater.

Annotations are parsed into one neutral form at start-up (``Sample``: id, image
files, chat turns), so a malformed record fails before training with its file,
index and id; every record is checked and all problems are reported together
(``BuildProblems``), or, with ``on_bad_sample: skip``, left out and recorded.
``__getitem__`` does all per-sample work (image loading and transforms, ChatML
rendering, tokenization, labels) so it runs in the data-loader workers; a
sample that fails there raises naming its file and index (``error``) or is
replaced by the next good sample (``skip``, see ``InstructionDataset``).
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
from lavislite.datasets.bad_samples import BAD_SAMPLES_KEY, TRUNCATED_KEY, BadSampleError, BadSamplePolicy, BadSampleRecord, BuildProblems, locate
from lavislite.processors.chat_processor import IGNORE_INDEX, SampleError  # noqa: F401  (IGNORE_INDEX: re-exported)
from lavislite.processors.transforms import load_image
# The collation of chat tensors lives in processors/ (models use it too); re-exported here.
from lavislite.processors.collate import collate_chat, text_fields  # noqa: F401


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
    # The record's location (``file[index] (id=...)``), for messages and bad-sample records.
    where: str = ""


def clean_text(value: Any, where: str = "") -> str:
    """Annotation text as it goes into the conversation: surrounding whitespace removed.

    Annotation files often carry stray spaces and newlines around a turn. They
    are cleaned here, once, when the record is parsed: the chat template then
    inserts text exactly as given (as Qwen2.5's template does), so training
    and ``apply_chat_template`` at inference see the same ids.

    Args:
        value: the field's value; it must be a string.
        where: the record and field, for the message (``file[3] (id=x): 'output'``).

    Raises:
        SampleError: ``value`` is not a string: a number or a list where text
            belongs is a broken record, not text to train on as ``"42"``.
    """
    if not isinstance(value, str):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise SampleError(f"{where + ': ' if where else ''}expected text (a string), got {type(value).__name__} {shown}")
    return value.strip()


def parse_minigpt4(record: dict[str, Any], where: str) -> Sample:
    """MiniGPT4Qwen: ``{"image", "instruction", "output"}``; lists of equal length for multi-turn."""
    for key in ("image", "instruction", "output"):
        if key not in record:
            raise SampleError(f"{where}: missing key '{key}' (MiniGPT4Qwen format needs image, instruction, output)")
    instructions, outputs = as_list(record["instruction"]), as_list(record["output"])
    if len(instructions) != len(outputs) or not instructions:
        raise SampleError(f"{where}: 'instruction' has {len(instructions)} turn(s) but 'output' has {len(outputs)}")
    turns: list[dict[str, str]] = []
    for k, (q, a) in enumerate(zip(instructions, outputs)):
        turn = f"[{k}]" if isinstance(record["instruction"], list) else ""
        turns += [
            {"role": "user", "content": clean_text(q, f"{where}: 'instruction'{turn}")},
            {"role": "assistant", "content": clean_text(a, f"{where}: 'output'{turn}")},
        ]
    return Sample(str(record.get("id", where)), [str(x) for x in as_list(record["image"])], turns, where=where)


LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def parse_llava(record: dict[str, Any], where: str) -> Sample:
    """LLaVA: ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``."""
    convs = record.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise SampleError(f"{where}: missing or empty 'conversations' (LLaVA format)")
    turns = []
    for k, turn in enumerate(convs):
        role = LLAVA_ROLES.get(str(turn.get("from", "")).lower()) if isinstance(turn, dict) else None
        if role is None or "value" not in turn:
            raise SampleError(f"{where}: conversations[{k}] needs 'from' (human/gpt) and 'value', got {turn}")
        turns.append({"role": role, "content": clean_text(turn["value"], f"{where}: conversations[{k}].value")})
    return Sample(str(record.get("id", where)), [str(x) for x in as_list(record.get("image"))], turns, where=where)


def read_text(path: str) -> str:
    """An annotation file's text, decoded as UTF-8 (a leading byte-order mark is dropped).

    Raises:
        MissingFileError: the file does not exist.
        SampleError: the file is not UTF-8, naming the file, the byte position
            and its line (a Latin-1 or UTF-16 export would otherwise fail as
            bad JSON, or load with mangled text).
    """
    if not g_pathmgr.exists(path):
        raise MissingFileError(f"annotation file not found: {path}")
    with g_pathmgr.open(path, "rb") as fh:
        data = fh.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SampleError(
            f"{path}: not UTF-8 text: byte {exc.start} (line {line}, column {column}) is 0x{data[exc.start]:02x} ({exc.reason}); "
            "annotation files are read as UTF-8: convert it (e.g. iconv -f latin1 -t utf-8)"
        ) from exc


def read_json_file(path: str) -> Any:
    """Reads a JSON file, or a JSON-lines file (``.jsonl``) as a list; errors name the file and line."""
    text = read_text(path)
    if path.endswith(".jsonl"):
        return [record for _, record in _jsonl_records(path, text)]
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SampleError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc


def _jsonl_records(path: str, text: str, problems: BuildProblems | None = None) -> list[tuple[int, Any]]:
    # (line number, record) for each non-blank line: an error, and a record's
    # location, name the line of the file, not the index among non-blank lines.
    # With a collector, a line that is not JSON is one bad record, not the end.
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            message = f"{path}: invalid JSON at line {lineno}, column {exc.colno}: {exc.msg}"
            if problems is None:
                raise SampleError(message) from exc
            problems.add(f"{path} line {lineno}", message)
    return records


def read_records(path: str, problems: BuildProblems | None = None, json_lines: bool | None = None) -> list[tuple[str, Any]]:
    """The records of an annotation file, each with its location for messages.

    Args:
        path: a JSON list or JSON-lines file.
        problems: collects each JSON-lines line that is not JSON (else the first raises).
        json_lines: read one JSON object a line whatever the name (POPE's ``coco_pope_*.json``
            are); None: by the name (``.jsonl``).

    Returns:
        ``(where, record)`` pairs: ``where`` is ``"file[index]"`` for a JSON
        list and ``"file line N"`` for a JSON-lines file.

    Raises:
        MissingFileError: the file does not exist.
        SampleError: a file that is not UTF-8 (naming the byte), invalid JSON
            (naming the line and column; a JSON list cannot be read past it,
            whatever the policy), or a JSON file that is not a list.
    """
    if json_lines or (json_lines is None and path.endswith(".jsonl")):
        return [(f"{path} line {lineno}", record) for lineno, record in _jsonl_records(path, read_text(path), problems)]
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


def load_annotations(
    paths: list[str], parse: Callable[[dict[str, Any], str], Sample], problems: BuildProblems | None = None
) -> list[Sample]:
    """Reads JSON lists (or JSON-lines files) and parses every record; errors name file and index.

    A parser receives each record with its location (``where``: file, index or
    line, and the id if the record has one) and raises ``SampleError`` starting
    with it. A ``KeyError`` / ``IndexError`` a parser lets escape becomes the
    same one-line ``SampleError``. Every record is parsed: the problems are
    collected in ``problems`` (the caller settles them under its policy), or,
    without one, raised together at the end (one line for one problem, else a
    list). Repeated ids are renamed (``make_ids_unique``).
    """
    own = problems is None
    collector = BuildProblems() if problems is None else problems
    samples: list[Sample] = []
    before = len(collector)
    for path in paths:
        for where, record in read_records(path, collector):
            if isinstance(record, dict) and "id" in record:
                where += f" (id={record.get('id')})"
            if not isinstance(record, dict):
                collector.add(where, f"{where}: expected an object, got {type(record).__name__}")
                continue
            try:
                sample = parse(record, where)
            except SampleError as exc:
                collector.add(where, str(exc))
                continue
            except (KeyError, IndexError) as exc:
                # A parser that indexes the record directly (``record["caption"]``)
                # would otherwise end a run with a traceback that names no record.
                key = exc.args[0] if exc.args else None
                what = f"missing key {key!r}" if isinstance(exc, KeyError) and isinstance(key, str) and key not in record else f"{type(exc).__name__}: {exc}"
                collector.add(where, f"{where}: {what} (raised by {getattr(parse, '__qualname__', parse)})")
                continue
            sample.where = sample.where or where
            samples.append(sample)
    if own:
        collector.settle(len(samples) + len(collector) - before, paths)
    return make_ids_unique(samples, paths)


def load_image_tensor(vis_root: str, path: str, vis_processor: Callable[[Image.Image], torch.Tensor], sample_id: str) -> torch.Tensor:
    """Reads one image (relative to ``vis_root`` unless absolute), upright (``load_image``), and processes it.

    Raises:
        SampleError: naming the sample and the file when it cannot be read
            (missing, truncated, not an image).
    """
    full = path if os.path.isabs(path) else os.path.join(vis_root, path)
    try:
        with g_pathmgr.open(full, "rb") as fh:
            image = load_image(fh)
    except Exception as exc:
        raise SampleError(f"sample {sample_id}: cannot read image {full}: {exc}") from exc
    return vis_processor(image)


def check_images_exist(
    samples: list[Any], vis_root: str, ann_paths: list[str], shown: int = 10, problems: BuildProblems | None = None
) -> set[int]:
    """Finds every local image the samples (``.id``, ``.images``, ``.where``) name that is not on disk.

    Runs when the dataset is built, before the model: a missing image would
    otherwise surface in a DataLoader worker minutes (or epochs) into training.
    Each folder is listed once, so hundreds of thousands of samples take
    seconds, not one ``stat`` call each. Remote paths (``scheme://``) are skipped.

    Args:
        problems: collects one problem per sample with a missing image (the
            caller settles them); without it, this raises.

    Returns:
        The indices (into ``samples``) of the samples with a missing image.

    Raises:
        SampleError: (no ``problems``) naming the annotation file(s), and the
            first missing images with their sample ids and the total count.
    """
    listings: dict[str, set[str] | None] = {}
    missing: list[tuple[str, str]] = []
    bad: set[int] = set()
    for index, sample in enumerate(samples):
        for image in sample.images:
            if index in bad:
                break  # one problem per sample
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
                if problems is not None:
                    where = getattr(sample, "where", "") or f"sample {sample.id}"
                    problems.add(where, f"{where}: image not on disk: {full}")
                bad.add(index)
    if missing and problems is None:
        lines = "\n".join(f"    sample {sid}: {path}" for sid, path in missing[:shown])
        more = f"\n    ... and {len(missing) - shown} more" if len(missing) > shown else ""
        raise SampleError(f"{len(missing)} image(s) named in {', '.join(ann_paths)} are not on disk:\n{lines}{more}")
    return bad


# How many following samples a bad one may be replaced by before the run stops
# (a long run of bad samples is a broken file or folder, not noise).
MAX_SUBSTITUTES = 64


class DroppedSample(SampleError):
    """A sample left out by a text-processor option (``truncation: drop_sample``), whatever ``on_bad_sample`` says."""


class InstructionDataset(Dataset):
    """Conversations with zero or more images each.

    Args:
        vis_processor: PIL image -> (3, H, W) tensor.
        text_processor: a chat processor (``qwen_chat``): turns -> ids and labels.
        vis_root: folder the image paths are relative to.
        ann_paths: annotation files (named in errors).
        parse: record parser for the annotation format, or
        samples: the conversations, already parsed (a builder that reads its files itself).
        bad_samples: the dataset's policy (``on_bad_sample``, ``max_bad_fraction``; default ``error``).
        problems: problems the builder already found while reading (settled here with the rest).

    Build time: every record is checked (format, placeholders vs images, turn
    order, a reply to learn from, images on disk) and the problems are settled
    together under the policy (``BuildProblems``); with ``skip`` the bad
    records are left out and kept in ``bad_records``.

    Run time (in the workers): a sample that cannot be made (an image that does
    not decode, a file gone since the build; with ``truncation: drop_sample``,
    a reply cut by ``max_len``) raises ``BadSampleError`` naming its file,
    index and id (``error``), or (``skip``) is replaced by the next good sample
    of this dataset (index + 1, + 2, ...; processed under the bad sample's own
    seed), whose item carries the bad sample's record under ``"bad_samples"``.
    Replacing, not dropping, keeps every batch at its size, so every rank runs
    the same steps and a resumed run reads the same batches; the replacement is
    read twice in that epoch. A sample whose reply is cut and kept carries
    ``"truncated": True`` (counted by the runner).

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
        bad_samples: BadSamplePolicy | None = None,
        problems: BuildProblems | None = None,
    ) -> None:
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.vis_root = vis_root
        self.ann_paths = list(ann_paths)
        self.policy = bad_samples or (problems.policy if problems is not None else BadSamplePolicy())
        if (parse is None) == (samples is None):
            raise TypeError("InstructionDataset takes either parse (a record parser for ann_paths) or samples (already parsed)")
        problems = problems if problems is not None else BuildProblems(self.policy)
        problems.policy = self.policy
        parsed = load_annotations(ann_paths, parse, problems) if parse is not None else make_ids_unique(list(samples or []), ann_paths)
        total = len(parsed) + len(problems)  # records read: those parsed and those that failed
        # Check every conversation's structure now, not in a worker in epoch 3:
        # placeholders vs images, turn order, at least one reply (rendering is
        # string work only; tokenization stays in __getitem__).
        bad: set[int] = set()
        for k, s in enumerate(parsed):
            try:
                found = sum(text_processor.count_placeholders(t["content"]) for t in s.turns if t["role"] == "user")
                if found != len(s.images):
                    raise SampleError(f"sample {s.id}: {found} image placeholder(s) in the text but {len(s.images)} image(s)")
                if not any(t["role"] == "assistant" for t in s.turns):
                    raise SampleError(f"sample {s.id}: no assistant reply to learn from")
                text_processor.render(s.turns, s.id)
            except SampleError as exc:
                where = s.where or f"sample {s.id}"
                message = str(exc)
                # The parsers' messages start with the record's location; these name the sample id only.
                problems.add(where, f"{where}: {message.removeprefix(f'sample {s.id}: ')}")
                bad.add(k)
        fine = [s for k, s in enumerate(parsed) if k not in bad]
        missing = check_images_exist(fine, vis_root, ann_paths, problems=problems)
        self.bad_records: list[BadSampleRecord] = problems.settle(total, ann_paths)
        self.samples = [s for k, s in enumerate(fine) if k not in missing]
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

    def make_item(self, index: int) -> dict[str, Any]:
        """One sample's tensors; raises ``SampleError`` when it cannot be made."""
        sample = self.samples[index]
        text = self.text_processor(sample.turns, num_images=len(sample.images), sample_id=sample.id)
        cut = bool(text.get("truncated_reply", False))
        if cut and getattr(getattr(self.text_processor, "cfg", None), "truncation", "cut") == "drop_sample":
            max_len = self.text_processor.cfg.max_len
            raise DroppedSample(f"sample {sample.id}: a reply is cut by max_len={max_len} (text_processor truncation: drop_sample)")
        # Truncation may drop trailing images; only load those that kept their tokens.
        images = [self.load_image(sample, p) for p in sample.images[: text["num_images"]]]
        item = {
            "id": sample.id,
            "image": torch.stack(images) if images else None,
            **text_fields(text),
        }
        if cut:
            item[TRUNCATED_KEY] = True
        return item

    def bad_record(self, index: int, exc: Exception) -> BadSampleRecord:
        """The record of sample ``index``, which failed with ``exc``."""
        sample = self.samples[index]
        source, key, _ = locate(sample.where) if sample.where else (", ".join(self.ann_paths), str(index), "")
        reason = str(exc).removeprefix(f"sample {sample.id}: ")
        return BadSampleRecord(self.policy.dataset, source, key, reason, sample.id)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return self.make_item(index)
        except SampleError as exc:
            record = self.bad_record(index, exc)
            if not self.policy.skip and not isinstance(exc, DroppedSample):
                raise BadSampleError(
                    f"{self.policy.option('on_bad_sample') + ' is error' if self.policy.dataset else 'on_bad_sample: error'}: "
                    f"bad sample {record.describe()}; {self.policy.option('on_bad_sample')}=skip leaves such samples out"
                ) from exc
        for step in range(1, min(MAX_SUBSTITUTES, len(self) - 1) + 1):
            try:
                item = self.make_item((index + step) % len(self))
            except SampleError:
                continue  # its own turn records it
            item[BAD_SAMPLES_KEY] = [record.to_dict()]
            return item
        raise BadSampleError(
            f"bad sample {record.describe()}, and the next {min(MAX_SUBSTITUTES, len(self) - 1)} sample(s) of "
            f"{', '.join(self.ann_paths)} cannot be read either: nothing to replace it with"
        )

    def collater(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_chat(batch, pad_token_id=int(self.text_processor.tokenizer.pad_token_id))
