"""Data throughput: the demo data read as JSON and as webdataset shards, through the real datasets.

Both paths are what a training run reads: the ``llava_instruction`` builder's
``InstructionDataset`` (JSON + image files, a map-style dataset batched by a
DataLoader with the dataset's own collater) and the ``webdataset_instruction``
builder's ``ShardStream`` over shards written by the project's converter
(``lavislite.datasets.make_shards``), which batches in its workers. The
processors (``blip2_image_train`` at the demo's 64 px, ``qwen_chat``) and the
collater are the demo's, and the JSON path reads as the runner does (its epoch
sampler, each sample under its own seed, as each shard sample is). For each
worker count both paths run ``--batches`` batches after ``--warmup`` untimed
ones (the workers' start-up is not timed), taking turns in ``--rounds`` rounds,
and report samples/s and samples/s per worker. Both read every sample once per
pass (the stream without resampling, pass after pass; the JSON set epoch after
epoch), so over whole passes (multiples of 42 batches of 16) they process the
same samples.

    python benchmarks/data_throughput.py [--workers 1 2] [--batches 30] [--rounds 3] [--batch-size 16] [--out FILE]

Writes JSON: ``{"runs": {"json"|"shards": {"<workers>": {"samples_per_sec", "samples_per_sec_per_worker", ...}}},
"shards_vs_json_per_worker": {"<workers>": ratio}}``.
"""

from __future__ import annotations

import argparse
import itertools
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


def time_loaders(loaders: dict[str, DataLoader], batches: int, warmup: int, rounds: int) -> dict[str, dict[str, float]]:
    """Samples/s of each loader over ``batches`` batches, after ``warmup`` untimed ones (worker start-up included there).

    The loaders take turns: ``rounds`` rounds of ``batches / rounds`` batches each, the order reversed every
    round, so a busy spell of the machine hits every path alike.
    """
    iterators = {name: iter(loader) for name, loader in loaders.items()}
    for iterator in iterators.values():
        for _ in range(warmup):
            next(iterator)
    totals = {name: {"samples": 0, "seconds": 0.0, "seconds_per_round": []} for name in loaders}
    names = list(loaders)
    for r in range(rounds):
        chunk = batches // rounds + (1 if r < batches % rounds else 0)
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            for _ in range(chunk):
                totals[name]["samples"] += int(next(iterators[name])["input_ids"].shape[0])
            elapsed = time.perf_counter() - start
            totals[name]["seconds"] += elapsed
            totals[name]["seconds_per_round"].append(elapsed)
    del iterators  # stops the workers
    return {name: {**t, "samples_per_sec": t["samples"] / t["seconds"]} for name, t in totals.items()}


def json_loader(workers: int, batch_size: int) -> DataLoader:
    from lavislite.datasets.builders import load_dataset
    from lavislite.datasets.datasets.samplers import EpochShardSampler, SeededSamples

    dataset = load_dataset(
        "llava_instruction",
        {
            "build_info": {"annotations": {"train": {"storage": str(DEMO / "llava_instruction.json")}}, "images": {"storage": str(DEMO / "images")}},
            **PROCESSORS,
        },
        context=CONTEXT,
    )["train"]
    # As the runner reads it: its epoch sampler (shuffled, each index with its seed) and every
    # sample processed under that seed (SeededSamples), as each shard sample is.
    epochs = EpochShardSampler(len(dataset), seed=0)

    def endless() -> Any:  # epoch after epoch, for however many batches are timed
        for epoch in itertools.count():
            epochs.set_epoch(epoch)
            yield from epochs

    return DataLoader(SeededSamples(dataset), batch_size=batch_size, sampler=endless(), num_workers=workers, collate_fn=dataset.collater)


def shard_loader(shards: str, workers: int, batch_size: int) -> DataLoader:
    from lavislite.datasets.builders import load_dataset

    stream = load_dataset(
        "webdataset_instruction",
        # One pass after another, each sample once per pass, as the JSON epochs read them: both paths
        # process the same samples (resampling would draw another mix of one- and two-image samples).
        {"build_info": {"shards": shards, "resampled": False, "shuffle_buffer": 200}, **PROCESSORS},
        context=CONTEXT,
    )["train"]
    stream.configure(rank=0, world_size=1, num_workers=workers, batch_size=batch_size, seed=0)
    return DataLoader(stream, batch_size=None, num_workers=workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="the paths take turns in this many rounds (noise hits both alike)")
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
            loaders = {"json": json_loader(workers, args.batch_size), "shards": shard_loader(shards, workers, args.batch_size)}
            for name, figures in time_loaders(loaders, args.batches, args.warmup, args.rounds).items():
                figures["samples_per_sec_per_worker"] = figures["samples_per_sec"] / workers
                runs[name][str(workers)] = figures
                print(f"{name:6s} workers={workers}: {figures['samples_per_sec']:.1f} samples/s ({figures['samples_per_sec_per_worker']:.1f} per worker)", file=sys.stderr)
    result = {
        "runs": runs,
        "shards_vs_json_per_worker": {
            w: runs["shards"][w]["samples_per_sec_per_worker"] / runs["json"][w]["samples_per_sec_per_worker"] for w in runs["json"]
        },
        "settings": {"batch_size": args.batch_size, "batches": args.batches, "warmup": args.warmup, "rounds": args.rounds, "shards": made["shards"], "samples": made["samples"]},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
    }
    text = json.dumps(result, indent=2, default=str)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
