"""Writes webdataset shards from the JSON formats lavislite reads, and prints the ``build_info`` to paste.

    python -m lavislite.datasets.make_shards --annotations llava_instruct.json --images coco/train2017 --out shards/llava
    lavislite-make-shards --annotations coco_karpathy_train.json --images coco/images --out shards/coco --samples-per-shard 1000

- LLaVA (``conversations``) and MiniGPT4Qwen (``instruction`` / ``output``)
  records become instruction shards (``webdataset_instruction``): ``KEY.json``
  holds the record as it is, ``KEY.jpg`` its image (``KEY.0.jpg``,
  ``KEY.1.jpg``, ... for several).
- COCO caption records (``image``, ``caption``, ``image_id``) become caption
  shards in img2dataset's layout (``webdataset_caption``): ``KEY.jpg``,
  ``KEY.txt`` and ``KEY.json`` (``caption``, ``image_id``); a record with a
  list of captions gives one sample per caption.

Each shard ``NNNNN.tar`` gets a ``NNNNN_stats.json`` (img2dataset's, with
``successes``), so a run counts its samples without reading the tar.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Literal

from lavislite.common.errors import DataError, MissingFileError, UserError
from lavislite.common.utils import as_list
from lavislite.datasets.datasets.instruction_dataset import read_records

Format = Literal["auto", "llava", "minigpt4", "coco_caption"]


def detect_format(record: Any, where: str) -> str:
    """``llava`` / ``minigpt4`` / ``coco_caption`` from one record's keys.

    Raises:
        DataError: the record fits none of them.
    """
    if isinstance(record, dict):
        if "conversations" in record:
            return "llava"
        if "instruction" in record and "output" in record:
            return "minigpt4"
        if "caption" in record and "image" in record:
            return "coco_caption"
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise DataError(f"{where}: not a LLaVA ('conversations'), MiniGPT4Qwen ('instruction', 'output') or COCO caption ('image', 'caption') record: {keys}")


def _image_ext(path: str) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return "jpg" if ext in ("jpeg", "") else ext


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def plan_samples(annotations: list[str], images: str, fmt: Format = "auto") -> tuple[str, list[dict[str, Any]]]:
    """The shard samples of every record (members by extension), checked before anything is written.

    Returns:
        the format and the samples (``{"__key__", ext: bytes-or-path, ...}``; image bytes are read when written).

    Raises:
        MissingFileError: listing the records whose images are missing (up to 20, then a count).
        DataError: a record of another format, or formats mixed.
    """
    samples: list[dict[str, Any]] = []
    missing: list[str] = []
    kind = fmt
    for path in annotations:
        for where, record in read_records(path):
            this = detect_format(record, where)
            if kind == "auto":
                kind = this
            elif this != kind:
                raise DataError(f"{where}: a {this} record among {kind} records; convert one format per run")
            files = [os.path.join(images, str(p)) for p in as_list(record.get("image"))]
            missing += [f"{where}: {f}" for f in files if not os.path.isfile(f)]
            if kind == "coco_caption":
                for caption in as_list(record["caption"]):
                    meta = {"caption": str(caption), "image_id": record.get("image_id")}
                    samples.append({"txt": str(caption).encode(), "json": meta, "images": files[:1]})
            else:
                samples.append({"json": record, "images": files})
    if missing:
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise MissingFileError(f"{len(missing)} image(s) not found under {images}:\n  " + "\n  ".join(missing[:20]) + more)
    if not samples:
        raise DataError(f"{', '.join(annotations)}: no records")
    return kind, samples


# The member mtime of the shards the converter writes (2000-01-01, an int: see write_shards).
SHARD_MTIME = 946684800


def write_shards(annotations: list[str], images: str, out: str, samples_per_shard: int = 1000, fmt: Format = "auto") -> dict[str, Any]:
    """Writes the shards with ``wds.ShardWriter``; returns the builder name, ``build_info`` and counts.

    Raises:
        MissingFileError / DataError: before anything is written (see ``plan_samples``).
    """
    import webdataset as wds

    if samples_per_shard < 1:
        raise DataError(f"--samples-per-shard must be at least 1, got {samples_per_shard}")
    kind, samples = plan_samples(annotations, images, fmt)
    os.makedirs(out, exist_ok=True)
    pattern = os.path.join(out, "%05d.tar")
    # A whole-second mtime keeps every member's header plain ustar: webdataset's default
    # (time.time(), a float) makes Python's tarfile add a PAX header to each member,
    # which costs the reader a third of its time per sample; a fixed one also makes
    # the shards byte-reproducible.
    with wds.ShardWriter(pattern, maxcount=samples_per_shard, maxsize=float(1 << 62), verbose=0, mtime=SHARD_MTIME) as writer:
        for i, sample in enumerate(samples):
            item: dict[str, Any] = {"__key__": f"{i:09d}", "json": json.dumps(sample["json"], ensure_ascii=False).encode()}
            if "txt" in sample:
                item["txt"] = sample["txt"]
            files = sample["images"]
            for k, path in enumerate(files):
                item[_image_ext(path) if len(files) == 1 else f"{k}.{_image_ext(path)}"] = _read(path)
            writer.write(item)
    counts = [min(samples_per_shard, len(samples) - s) for s in range(0, len(samples), samples_per_shard)]
    for n, count in enumerate(counts):
        with open(os.path.join(out, f"{n:05d}_stats.json"), "w", encoding="utf-8") as fh:
            json.dump({"count": count, "successes": count, "failed_to_download": 0}, fh)
    last = len(counts) - 1
    shards = os.path.join(os.path.abspath(out), f"{{00000..{last:05d}}}.tar" if last else "00000.tar")
    builder = "webdataset_caption" if kind == "coco_caption" else "webdataset_instruction"
    return {"builder": builder, "format": kind, "samples": len(samples), "shards": len(counts), "build_info": {"shards": shards, "resampled": False}}


def build_info_yaml(result: dict[str, Any]) -> str:
    """The run config lines to paste for the written shards."""
    extra = "" if result["builder"] == "webdataset_caption" else f"    format: {result['format']}\n"
    return (
        "datasets:\n"
        f"  {result['builder']}:\n"
        "    build_info:\n"
        f"      shards: \"{result['build_info']['shards']}\"\n"
        "      resampled: false\n"
        f"{extra}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lavislite-make-shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", nargs="+", required=True, help="JSON / JSON-lines files (LLaVA, MiniGPT4Qwen or COCO caption)")
    parser.add_argument("--images", required=True, help="the folder the records' image paths are relative to")
    parser.add_argument("--out", required=True, help="the folder the shards go to (NNNNN.tar + NNNNN_stats.json)")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--format", choices=["auto", "llava", "minigpt4", "coco_caption"], default="auto")
    args = parser.parse_args(argv)
    try:
        result = write_shards(args.annotations, args.images, args.out, args.samples_per_shard, args.format)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {result['samples']} {result['format']} samples in {result['shards']} shard(s) to {args.out}; paste into the run config:\n")
    print(build_info_yaml(result))
    return 0


def cli() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
