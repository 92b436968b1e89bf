"""Streaming datasets over webdataset tar shards, with equal steps on every rank and exact resume.

A shard set is read as a sequence of *passes*. Each pass is cut into one
*stream* per (rank, DataLoader worker), ``S = world_size x num_workers``
streams in all, and every stream yields exactly the same number of samples
``q`` per pass, so every rank runs the same number of steps and no rank waits
forever in a collective, whatever the shards hold:

- ``resampled: false`` (one pass = each sample once): the shards are put in a
  seeded order per pass, their samples concatenated (counted at start-up, from
  img2dataset's ``<shard>_stats.json`` when present, else from the tar headers)
  and cut into ``S`` contiguous ranges of ``q = N // S`` samples (the last
  ``N % S`` samples of the pass are left out, as ``drop_last`` does). A
  range starts and ends anywhere inside a shard, so uneven shards never give
  one rank more samples than another, and no sample is read by two streams.
- ``resampled: true``: each stream draws shards with replacement (a generator
  seeded by (seed, pass, stream)) and reads them until it has
  ``q = samples_per_epoch // S`` samples (webdataset's ``with_epoch``).

Each stream's raw samples go through a seeded shuffle buffer
(``wds.shuffle``), are cut into micro-batches of ``batch_size`` (a pass's last
``q % batch_size`` samples left out), and each sample is decoded and processed
under its own seed ``sample_seed(seed, pass, stream, position)``. So what a
stream yields depends only on (seed, pass, stream, position): a resumed run
skips the raw samples already trained (read again from the tar, not decoded)
and continues with the same samples in the same order with the same
augmentations.

DataLoader workers return batches round-robin, worker 0 first. After ``K``
batches a fresh loader would start at worker 0 again, so on resume the
physical worker ``i`` plays the logical stream ``(i + K) % num_workers``
(``ShardStream.configure``), which keeps the uninterrupted run's order.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from iopath.common.file_io import g_pathmgr
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from lavislite.common.errors import DataError, MissingFileError
from lavislite.common.logger import logger
from lavislite.common.utils import as_list, resolve_data_path
from lavislite.datasets.datasets.instruction_dataset import Sample, parse_llava, parse_minigpt4
from lavislite.datasets.datasets.samplers import sample_seed, seeded
from lavislite.processors.chat_processor import SampleError
from lavislite.processors.collate import BAD_SAMPLES_KEY, collate_chat, text_fields
from lavislite.processors.transforms import load_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "RawSample",
    "ShardError",
    "ShardStream",
    "caption_sample",
    "count_samples",
    "expand_shards",
    "instruction_sample",
    "read_shard",
    "stream_ranges",
    "tar_members",
]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# webdataset's own rules: a member's key is its name up to the first dot of the
# basename (``KEY.0.jpg`` -> key ``KEY``, extension ``0.jpg``); ``__x__`` names are metadata.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")


class ShardError(DataError):
    """A shard (or shard pattern) that cannot be read: named with the pattern or file."""


# -- finding and counting shards ------------------------------------------------------
def _expand_braces(pattern: str) -> list[str]:
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


def expand_shards(shards: str | list[str], where: str = "build_info.shards") -> list[str]:
    """The shard files ``shards`` names, in order: brace patterns, globs, local or iopath paths.

    Args:
        shards: one pattern or a list (``/data/cc3m/{00000..00331}.tar``,
            ``/data/*.tar``, ``s3://bucket/x.tar`` through iopath).
        where: the config key, for messages.

    Raises:
        MissingFileError: naming the pattern that matched nothing, or the
            pattern and the first shards of it that are missing.
    """
    patterns = [str(p) for p in as_list(shards)]
    if not patterns:
        raise MissingFileError(f"{where}: no shards given (a brace pattern like /data/cc3m/{{00000..00331}}.tar, or a list)")
    found: list[str] = []
    for pattern in patterns:
        files: list[str] = []
        for item in _expand_braces(pattern):
            remote = "://" in item
            path = item if remote else resolve_data_path(item)
            if not remote and any(c in item for c in "*?["):
                files.extend(sorted(glob.glob(path)))
            else:
                files.append(path)
        if not files:
            raise MissingFileError(f"{where}: the pattern {pattern!r} matches no shard")
        missing = [f for f in files if not (os.path.isfile(f) if "://" not in f else g_pathmgr.exists(f))]
        if missing:
            shown = ", ".join(missing[:5]) + (f" ... and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise MissingFileError(f"{where}: {len(missing)} of the {len(files)} shard(s) of {pattern!r} not found: {shown}")
        found.extend(files)
    return found


def _split_name(name: str) -> tuple[str, str] | None:
    if _META.match(name):
        return None
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def _stats_file(shard: str) -> str:
    # img2dataset writes 00000_stats.json beside 00000.tar ("successes": samples written).
    return re.sub(r"\.tar$", "", shard) + "_stats.json"


def count_samples(shard: str) -> int:
    """The samples (distinct consecutive keys, as webdataset groups them) in one shard.

    Read from img2dataset's ``<shard>_stats.json`` (``successes``) when it is
    there (the converter writes one too), else by walking the tar headers
    (a local file is seeked through, not read).

    Raises:
        ShardError: the shard is not a readable tar file.
    """
    stats = _stats_file(shard)
    try:
        if g_pathmgr.exists(stats):
            with g_pathmgr.open(stats, "r") as fh:
                return int(json.load(fh)["successes"])
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("%s: unreadable (%s); counting %s from its tar headers", stats, exc, shard)
    count, last = 0, None
    try:
        with g_pathmgr.open(shard, "rb") as fh:
            for name, _ in tar_members(fh, want=lambda name: False):
                parts = _split_name(name)
                if parts and parts[0] != last:
                    count, last = count + 1, parts[0]
    except (TarFormatError, OSError) as exc:
        raise ShardError(f"{shard}: not a readable tar shard: {exc}") from exc
    return count


# -- reading ------------------------------------------------------------------------
@dataclass
class RawSample:
    """One sample as stored: its key, shard and member bytes by extension (``jpg``, ``0.jpg``, ``json``, ``txt``)."""

    key: str
    shard: str
    members: dict[str, bytes] = field(default_factory=dict)


class TarFormatError(ValueError):
    """Bytes that are not a tar archive (a bad header checksum, a truncated member)."""


_TAR_BLOCK = 512


def _octal(field: bytes) -> int:
    """A tar header number: octal digits (NUL/space padded), or GNU's base-256 for large values."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    digits = field.strip(b"\0 ")
    return int(digits, 8) if digits else 0


def _pax_records(data: bytes) -> dict[str, str]:
    """A PAX extended header's ``"<length> key=value\\n"`` records."""
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out


def tar_members(fh: Any, want: Callable[[str], bool] = lambda name: True) -> Iterator[tuple[str, bytes | None]]:
    """The regular files of a tar stream in stored order: ``(name, data)``, data None where ``want(name)`` is false.

    A small reader of the tar format (ustar, GNU long names, PAX headers) over
    any binary file object, local or iopath's: Python's ``tarfile`` builds a
    ``TarInfo`` per member and costs about a quarter of a small sample's
    processing, this reads a 512-byte header and the data. Members that are
    not wanted are skipped without being read (a seek where the file allows
    one); gzip-compressed shards (``.tar.gz``) are read through ``gzip``.

    Raises:
        TarFormatError: a header whose checksum does not match, or a member cut short.
    """
    import gzip
    import io

    if not hasattr(fh, "peek"):
        fh = io.BufferedReader(fh, 1 << 20) if hasattr(fh, "readinto") else fh
    head = fh.peek(2)[:2] if hasattr(fh, "peek") else b""
    if head == b"\x1f\x8b":
        fh = gzip.GzipFile(fileobj=fh)
    seekable = fh.seekable() if hasattr(fh, "seekable") else False
    long_name: str | None = None
    pax: dict[str, str] = {}
    last = "the start"  # the member before a bad header, for the message
    while True:
        header = fh.read(_TAR_BLOCK)
        if len(header) < _TAR_BLOCK or header == b"\0" * _TAR_BLOCK:
            return  # end of archive (two zero blocks, or a missing end)
        stored = _octal(header[148:156])
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise TarFormatError(f"bad tar header checksum in the member after {last}")
        size = int(pax.get("size", _octal(header[124:136])))
        kind = header[156:157]
        padded = -(-size // _TAR_BLOCK) * _TAR_BLOCK
        if kind in (b"x", b"g", b"L"):
            data = fh.read(padded)[:size]
            if len(data) < size:
                raise TarFormatError("a tar header's data is cut short")
            if kind == b"x":
                pax = _pax_records(data)
            elif kind == b"L":
                long_name = data.rstrip(b"\0").decode("utf-8", "replace")
            continue
        name = pax.get("path") or long_name
        if name is None:
            name = header[0:100].rstrip(b"\0").decode("utf-8", "replace")
            prefix = header[345:500].rstrip(b"\0") if header[257:262] == b"ustar" else b""
            if prefix:
                name = prefix.decode("utf-8", "replace") + "/" + name
        long_name, pax, last = None, {}, name
        regular = kind in (b"0", b"\0", b"7")
        if regular and want(name):
            data = fh.read(padded)
            if len(data) < padded and len(data) < size:
                raise TarFormatError(f"{name}: member cut short ({len(data)} of {size} bytes)")
            yield name, data[:size]
            continue
        if seekable:
            fh.seek(padded, 1)
        else:
            fh.read(padded)
        if regular:
            yield name, None


def read_shard(shard: str, start: int = 0, stop: int | None = None) -> Iterator[RawSample]:
    """Samples ``start`` to ``stop`` (exclusive) of one shard, in stored order.

    Members of the samples before ``start`` are skipped without reading them
    (``tar_members``); reading stops after ``stop``.

    Raises:
        ShardError: naming the shard when the tar cannot be read.
    """
    # Sample numbers follow the key changes in stored order (webdataset's grouping).
    # wanted() numbers each member's sample as its header is read, so only the
    # members of samples start..stop-1 are read; the loop reads that number back.
    seen: dict[str, Any] = {"key": None, "index": -1, "member": None}

    def wanted(name: str) -> bool:
        parts = _split_name(name)
        if parts is None:
            return False
        seen["member"] = parts[1]  # the loop reads it back: the name is split once
        if parts[0] != seen["key"]:
            seen["key"], seen["index"] = parts[0], seen["index"] + 1
        return bool(start <= seen["index"] and (stop is None or seen["index"] < stop))

    current, current_key = None, None
    try:
        with g_pathmgr.open(shard, "rb") as fh:
            for _, data in tar_members(fh, wanted):
                if stop is not None and seen["index"] >= stop:
                    break
                if data is None:  # before start, or not a sample's member
                    continue
                if seen["key"] != current_key:
                    if current is not None:
                        yield current
                    current, current_key = RawSample(os.path.basename(seen["key"]), shard), seen["key"]
                current.members[seen["member"]] = data
            if current is not None:
                yield current
    except (TarFormatError, OSError, EOFError) as exc:
        raise ShardError(f"{shard}: cannot read the tar shard near sample {seen['index']}: {exc}") from exc


def stream_ranges(counts: list[int], order: list[int], streams: int, per_stream: int) -> list[list[tuple[int, int, int]]]:
    """Cuts the concatenation of ``order``'s shards into ``streams`` ranges of ``per_stream`` samples.

    Returns:
        per stream, its ``(shard index, start, stop)`` pieces in reading order.
    """
    bounds = []
    offset = 0
    for shard in order:
        bounds.append((shard, offset, offset + counts[shard]))
        offset += counts[shard]
    ranges: list[list[tuple[int, int, int]]] = []
    for s in range(streams):
        lo, hi = s * per_stream, (s + 1) * per_stream
        pieces = [(shard, max(lo, a) - a, min(hi, b) - a) for shard, a, b in bounds if a < hi and b > lo]
        ranges.append(pieces)
    return ranges


def _mix(*parts: Any) -> int:
    """A 63-bit seed from several parts (stable across processes and Python versions)."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# -- decoding and processing ----------------------------------------------------------
def _decode_image(data: bytes) -> Image.Image:
    """An image member as RGB, upright (the project's one loader: EXIF orientation applied)."""
    return load_image(data)


def _sample_images(raw: RawSample) -> list[tuple[str, bytes]]:
    """The sample's images in order: ``jpg`` (one), or ``0.jpg``, ``1.jpg``, ... (several)."""
    single = [(ext, raw.members[ext]) for ext in IMAGE_EXTENSIONS if ext in raw.members]
    numbered = []
    for ext, data in raw.members.items():
        head, _, tail = ext.partition(".")
        if head.isdigit() and tail in IMAGE_EXTENSIONS:
            numbered.append((int(head), ext, data))
    return single[:1] + [(ext, data) for _, ext, data in sorted(numbered)]


def _json_member(raw: RawSample) -> dict[str, Any] | None:
    if "json" not in raw.members:
        return None
    try:
        value = json.loads(raw.members["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SampleError(f"{raw.shard}: sample {raw.key}: {raw.key}.json does not parse: {exc}") from exc
    if not isinstance(value, dict):
        raise SampleError(f"{raw.shard}: sample {raw.key}: {raw.key}.json holds {type(value).__name__}, not an object")
    return value


def instruction_sample(raw: RawSample, fmt: Literal["auto", "llava", "minigpt4"] = "auto") -> tuple[Sample, list[tuple[str, bytes]]]:
    """An instruction shard's sample: ``KEY.json`` (LLaVA or MiniGPT4Qwen record) + its images.

    The record goes through the JSON builders' own parsers (``parse_llava`` /
    ``parse_minigpt4``); the images come from the tar (``KEY.jpg`` or
    ``KEY.0.jpg``, ``KEY.1.jpg``, ...), in placeholder order.

    Raises:
        SampleError: naming the shard and the key.
    """
    where = f"{raw.shard}: sample {raw.key}"
    record = _json_member(raw)
    if record is None:
        raise SampleError(f"{where}: no {raw.key}.json (the conversation) in the shard")
    kind = fmt if fmt != "auto" else ("llava" if "conversations" in record else "minigpt4")
    if kind == "minigpt4" and "image" not in record:
        record = {**record, "image": []}  # the images are the tar's members here
    parse = parse_llava if kind == "llava" else parse_minigpt4
    sample = parse(record, where)
    sample.id = str(record.get("id", raw.key))
    return sample, _sample_images(raw)


def caption_sample(raw: RawSample, prompt: str, caption_field: str = "caption") -> tuple[Sample, list[tuple[str, bytes]]]:
    """An img2dataset sample: ``KEY.jpg|png|webp`` + ``KEY.json`` (``caption_field``) and/or ``KEY.txt``.

    The caption is the JSON's ``caption_field`` when present, else ``KEY.txt``.

    Raises:
        SampleError: naming the shard and the key.
    """
    where = f"{raw.shard}: sample {raw.key}"
    record = _json_member(raw) or {}
    caption = record.get(caption_field)
    if caption is None and "txt" in raw.members:
        caption = raw.members["txt"].decode("utf-8", errors="replace")
    if caption is None:
        raise SampleError(f"{where}: no caption (neither {raw.key}.json's {caption_field!r} nor {raw.key}.txt)")
    if not isinstance(caption, str):
        raise SampleError(f"{where}: the caption is {type(caption).__name__}, not text")
    images = _sample_images(raw)[:1]
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": caption.strip()}]
    return Sample(str(record.get("key", raw.key)), [name for name, _ in images], turns), images


# -- the stream ----------------------------------------------------------------------
def logical_worker(owner: str, num_workers: int, start_batches: int) -> int:
    """The logical worker this DataLoader worker plays, for a stream restarted after ``start_batches`` batches.

    Batches come back round-robin from physical worker 0: after ``start_batches``,
    the next one is logical worker ``start_batches % W``'s, so physical worker i
    plays ``i + start_batches`` (mod W), and the resumed order equals the uninterrupted one.

    Raises:
        RuntimeError: the DataLoader has another number of workers than ``owner`` was configured for.
    """
    info = get_worker_info()
    physical = info.id if info is not None else 0
    if info is not None and info.num_workers != num_workers:
        raise RuntimeError(f"{owner} configured for {num_workers} worker(s), iterated by {info.num_workers}")
    return (physical + start_batches) % num_workers


class ShardStream(IterableDataset):
    """An endless, exactly resumable stream of micro-batches from webdataset shards.

    Yields collated batches (``collate_chat``: the JSON instruction dataset's
    collater, after the same processors), pass after pass. ``configure`` must
    be called (the runner does) before iterating: the rank, world size,
    worker count, batch size, and how many batches this rank already trained.

    Args:
        name: the dataset's name (its builder), for messages and bad-sample records.
        shards: the shard files (``expand_shards``).
        to_sample: raw sample -> (``Sample``, images as (name, bytes)); raises ``SampleError``.
        vis_processor / text_processor: as for ``InstructionDataset``.
        resampled: draw shards with replacement (else one pass = each sample once).
        samples_per_epoch: samples in one pass, all ranks together (default:
            every sample of the shards; required to skip counting with ``resampled``).
        shuffle_buffer: samples in each stream's shuffle buffer (0: stored order).
        seed: the run seed (the runner sets ``run.seed`` through ``configure``).
        on_bad_sample: ``skip`` (the sample leaves its batch; its record travels
            in the batch under ``"bad_samples"``) or ``error`` (naming shard and key).
    """

    def __init__(
        self,
        name: str,
        shards: list[str],
        to_sample: Callable[[RawSample], tuple[Sample, list[tuple[str, bytes]]]],
        vis_processor: Callable[[Image.Image], torch.Tensor],
        text_processor: Any,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 42,
        on_bad_sample: Literal["skip", "error"] = "skip",
    ) -> None:
        if not shards:
            raise MissingFileError(f"datasets.{name}.build_info.shards: no shards")
        self.name = name
        self.shards = list(shards)
        self.to_sample = to_sample
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.resampled = resampled
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.on_bad_sample = on_bad_sample
        # Counted once, in the main process (every rank needs every shard's count
        # to cut the same ranges); resampling with samples_per_epoch needs none.
        self.counts: list[int] | None = None
        if not resampled or samples_per_epoch is None:
            self.counts = [count_samples(s) for s in self.shards]
            empty = [s for s, n in zip(self.shards, self.counts) if n == 0]
            if len(empty) == len(self.shards):
                raise ShardError(f"datasets.{name}.build_info.shards: every shard is empty ({', '.join(self.shards[:3])} ...)")
        total = sum(self.counts) if self.counts is not None else None
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise DataError(f"datasets.{name}.build_info.samples_per_epoch: must be positive, got {samples_per_epoch}")
        if not resampled and samples_per_epoch is not None and total is not None and samples_per_epoch > total:
            raise DataError(
                f"datasets.{name}.build_info.samples_per_epoch={samples_per_epoch}: more than the {total} samples of the shards "
                "(without resampling a pass reads each sample at most once; set resampled: true to draw more)"
            )
        self.samples_per_epoch = int(samples_per_epoch if samples_per_epoch is not None else total)  # type: ignore[arg-type]
        self.configure()

    # -- layout ----------------------------------------------------------------
    def configure(
        self, rank: int = 0, world_size: int = 1, num_workers: int = 0, batch_size: int = 1, start_batches: int = 0, seed: int | None = None
    ) -> None:
        """Sets where this rank's streams come from and how far they are already trained.

        Args:
            rank / world_size: this process in the run.
            num_workers: the DataLoader's workers (0: the main process is the one stream).
            batch_size: samples per micro-batch.
            start_batches: batches this rank already trained (0 at the start; a resume sets it).
            seed: the run seed (``run.seed``; default: the one given when built).

        Raises:
            DataError: a pass would give a stream fewer samples than one batch.
        """
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_workers, self.batch_size = max(1, int(num_workers)), int(batch_size)
        self.start_batches = int(start_batches)
        if seed is not None:
            self.seed = int(seed)
        streams = self.world_size * self.num_workers
        self.per_stream = self.samples_per_epoch // streams
        self.batches_per_stream = self.per_stream // self.batch_size
        if self.batches_per_stream < 1:
            raise DataError(
                f"datasets.{self.name}: a pass of {self.samples_per_epoch} samples over {self.world_size} process(es) x "
                f"{self.num_workers} worker(s) gives each stream {self.per_stream} sample(s), fewer than a batch of {self.batch_size}; "
                "use fewer workers, a smaller batch, more samples (or samples_per_epoch with resampled: true)"
            )

    @property
    def batches_per_pass(self) -> int:
        """Micro-batches each rank trains in one pass (every rank the same)."""
        return self.batches_per_stream * self.num_workers

    def __len__(self) -> int:
        """Samples trained in one pass, all ranks together."""
        return self.batches_per_pass * self.batch_size * self.world_size

    def state(self) -> dict[str, Any]:
        """What a resume must find unchanged for the stream to continue exactly (saved in the checkpoint)."""
        digest = hashlib.blake2b("\n".join(self.shards).encode(), digest_size=8).hexdigest()
        return {
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "resampled": self.resampled,
            "samples_per_epoch": self.samples_per_epoch,
            "shuffle_buffer": self.shuffle_buffer,
            "shards": len(self.shards),
            "shards_digest": digest,
        }

    # -- the stream of one (rank, worker) -----------------------------------------
    def raw_pass(self, epoch: int, stream: int) -> Iterator[RawSample]:
        """One stream's ``per_stream`` raw samples of pass ``epoch``, in stored order (before the shuffle)."""
        streams = self.world_size * self.num_workers
        if self.resampled:
            rng = random.Random(_mix(self.seed, "resample", epoch, stream))
            left, empty_draws = self.per_stream, 0
            while left > 0:
                shard = rng.choice(self.shards)
                before = left
                for raw in read_shard(shard):
                    yield raw
                    left -= 1
                    if left == 0:
                        return
                empty_draws = empty_draws + 1 if left == before else 0
                if empty_draws > 10 * len(self.shards):
                    raise ShardError(f"datasets.{self.name}: {empty_draws} shard draws in a row gave no sample (empty shards?), the last {shard}")
            return
        assert self.counts is not None
        order = list(range(len(self.shards)))
        random.Random(_mix(self.seed, "shards", epoch)).shuffle(order)
        for shard, start, stop in stream_ranges(self.counts, order, streams, self.per_stream)[stream]:
            yield from read_shard(self.shards[shard], start, stop)

    def shuffled_pass(self, epoch: int, stream: int) -> Iterator[RawSample]:
        """The pass's raw samples through the stream's seeded shuffle buffer (``wds.shuffle``)."""
        import webdataset as wds

        raw = self.raw_pass(epoch, stream)
        if self.shuffle_buffer <= 1:
            return raw
        rng = random.Random(_mix(self.seed, "shuffle", epoch, stream))
        stage = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
        return iter(wds.DataPipeline(lambda: raw, stage))

    def process(self, raw: RawSample, seed: int) -> dict[str, Any]:
        """Decodes and processes one sample under its seed, as ``InstructionDataset.__getitem__`` does.

        Raises:
            SampleError: naming the shard and key (a bad image, record or conversation).
        """
        where = f"{raw.shard}: sample {raw.key}"
        try:
            sample, images = self.to_sample(raw)
            found = sum(self.text_processor.count_placeholders(t["content"]) for t in sample.turns if t["role"] == "user")
            if found != len(images):
                raise SampleError(f"{where}: {found} image placeholder(s) in the text but {len(images)} image(s) in the shard")
            if not any(t["role"] == "assistant" for t in sample.turns):
                raise SampleError(f"{where}: no assistant reply to learn from")
            with seeded(seed):
                text = self.text_processor(sample.turns, num_images=len(images), sample_id=sample.id)
                tensors = []
                for ext, data in images[: text["num_images"]]:
                    try:
                        tensors.append(self.vis_processor(_decode_image(data)))
                    except Exception as exc:
                        raise SampleError(f"{where}: cannot decode {raw.key}.{ext}: {exc}") from exc
        except SampleError as exc:
            raise SampleError(str(exc) if str(exc).startswith(raw.shard) else f"{where}: {exc}") from exc
        return {
            "id": sample.id,
            "image": torch.stack(tensors) if tensors else None,
            **text_fields(text),
        }

    def stream_batches(self, stream: int, start_batches: int = 0) -> Iterator[dict[str, Any]]:
        """One stream's batches, endless (pass after pass), from its ``start_batches``-th on.

        The samples before the start are read from the tar again but neither
        decoded nor processed. A position is ``(stream, batches)``: a mixture
        can draw from this iterator and resume it the same way.
        """
        epoch, skip = divmod(int(start_batches), self.batches_per_stream)
        while True:
            raw = self.shuffled_pass(epoch, stream)
            for b in range(self.batches_per_stream):
                chunk = list(itertools.islice(raw, self.batch_size))
                if len(chunk) < self.batch_size:
                    raise ShardError(
                        f"datasets.{self.name}: pass {epoch}, stream {stream} ended after {b * self.batch_size + len(chunk)} of its "
                        f"{self.per_stream} samples: the shards hold fewer samples than counted (a stale _stats.json?)"
                    )
                if b < skip:
                    continue
                yield self.make_batch(chunk, epoch, stream, b)
            epoch, skip = epoch + 1, 0

    def make_batch(self, chunk: list[RawSample], epoch: int, stream: int, batch: int) -> dict[str, Any]:
        """Processes one micro-batch's raw samples and collates the good ones; bad ones go under ``"bad_samples"``."""
        items, bad = [], []
        for k, raw in enumerate(chunk):
            position = batch * self.batch_size + k
            try:
                items.append(self.process(raw, sample_seed(self.seed, epoch, (stream << 32) + position)))
            except SampleError as exc:
                if self.on_bad_sample == "error":
                    raise
                bad.append({"dataset": self.name, "source": raw.shard, "key": raw.key, "reason": str(exc)})
        if not items:
            keys = ", ".join(f"{r['source']}:{r['key']}" for r in bad)
            raise SampleError(f"datasets.{self.name}: every sample of a micro-batch is bad ({keys}); the first: {bad[0]['reason']}")
        out = self.collater(items)
        if bad:
            out[BAD_SAMPLES_KEY] = bad
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        logical = logical_worker(type(self).__name__, self.num_workers, self.start_batches)
        done = (self.start_batches - logical + self.num_workers - 1) // self.num_workers if self.start_batches > logical else 0
        yield from self.stream_batches(self.rank * self.num_workers + logical, done)

    def collater(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_chat(batch, pad_token_id=int(self.text_processor.tokenizer.pad_token_id))
