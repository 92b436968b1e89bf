"""Data throughput: the demo data read as JSON and as webdataset shards, through the real datasets.

Both paths are what a training run reads: the ``llava_instruction`` builder's
``InstructionDataset`` (JSON + image files, a map-style dataset batched by a
DataLoader with the dataset's own collater) and the ``webdataset_instruction``
builder's ``ShardStream`` over shards written by the project's converter
(``lavislite.datasets.make_shards``), which batches in its workers. The
processors (``blip2_image_train`` at the demo's 64 px, ``qwen_chat``) and the
collater are the demo's. Each (path, workers) runs ``--batches`` batches after
``--warmup`` untimed ones (the workers' start-up is not timed) and reports
samples/s and samples/s per worker.

    python benchmarks/data_throughput.py [--workers 1 2] [--batches 30] [--batch-size 16] [--out FILE]

Writes JSON: ``{"runs": {"json"|"shards": {"<workers>": {"samples_per_sec", "samples_per_sec_per_worker", ...}}},
"shards_vs_json_per_worker": {"<workers>": ratio}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEMO = REPO / "projects" / "demo" / "data"
CONTEXT = {"tokenizer": "builtin:qwen2.5", "num_image_tokens": 32}
PROCESSORS = {
    "vis_processor": {"train": {"name": "blip2_image_train", "image_size": 64, "min_scale": 1.0}},
    "text_processor": {"train": {"name": "qwen_chat", "max_len": 256}},
}


def time_loader(loader: DataLoader, batches: int, warmup: int) -> dict[str, float]:
    """Samples/s over ``batches`` batches, after ``warmup`` untimed ones (worker start-up included there)."""
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    samples = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        samples += int(batch["input_ids"].shape[0])
    elapsed = time.perf_counter() - start
    del iterator  # stops the workers
    return {"samples": samples, "seconds": elapsed, "samples_per_sec": samples / elapsed}


def json_loader(workers: int, batch_size: int) -> DataLoader:
    from lavislite.datasets.builders import load_dataset

    dataset = load_dataset(
        "llava_instruction",
        {
            "build_info": {"annotations": {"train": {"storage": str(DEMO / "llava_instruction.json")}}, "images": {"storage": str(DEMO / "images")}},
            **PROCESSORS,
        },
        context=CONTEXT,
    )["train"]
    # Shuffled as training reads it (random access into the image folder); endless for the timing.
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10**9, generator=torch.Generator().manual_seed(0))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=dataset.collater)


def shard_loader(shards: str, workers: int, batch_size: int) -> DataLoader:
    from lavislite.datasets.builders import load_dataset

    stream = load_dataset(
        "webdataset_instruction",
        {"build_info": {"shards": shards, "resampled": True, "samples_per_epoch": 10**6, "shuffle_buffer": 200}, **PROCESSORS},
        context=CONTEXT,
    )["train"]
    stream.configure(rank=0, world_size=1, num_workers=workers, batch_size=batch_size, seed=0)
    return DataLoader(stream, batch_size=None, num_workers=workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data_throughput.json"))
    args = parser.parse_args(argv)
    if min(args.workers) < 1:
        parser.error("--workers: each count must be 1 or more (the paths are compared per DataLoader worker)")

    from lavislite.datasets.make_shards import write_shards

    torch.set_num_threads(1)
    runs: dict[str, dict[str, Any]] = {"json": {}, "shards": {}}
    with tempfile.TemporaryDirectory() as tmp:
        made = write_shards([str(DEMO / "llava_instruction.json")], str(DEMO / "images"), tmp, samples_per_shard=100)
        shards = os.path.join(tmp, "*.tar")
        for workers in args.workers:
            # The two paths alternate per worker count, so machine noise hits both alike.
            for name, make in (("json", lambda w: json_loader(w, args.batch_size)), ("shards", lambda w: shard_loader(shards, w, args.batch_size))):
                figures = time_loader(make(workers), args.batches, args.warmup)
                figures["samples_per_sec_per_worker"] = figures["samples_per_sec"] / workers
                runs[name][str(workers)] = figures
                print(f"{name:6s} workers={workers}: {figures['samples_per_sec']:.1f} samples/s ({figures['samples_per_sec_per_worker']:.1f} per worker)", file=sys.stderr)
    result = {
        "runs": runs,
        "shards_vs_json_per_worker": {
            w: runs["shards"][w]["samples_per_sec_per_worker"] / runs["json"][w]["samples_per_sec_per_worker"] for w in runs["json"]
        },
        "settings": {"batch_size": args.batch_size, "batches": args.batches, "warmup": args.warmup, "shards": made["shards"], "samples": made["samples"]},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
    }
    text = json.dumps(result, indent=2, default=str)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
