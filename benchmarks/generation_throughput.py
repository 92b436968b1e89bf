"""Generation and evaluation throughput of blip2_qwen (the demo model by default).

Two measurements, both through the shipped code:

* ``model.generate`` on left-padded batches of the held-out demo images and
  questions (the ``vqav2`` builder and its ``GenerationDataset`` collater), at
  batch 1 and batch 8: samples/s and new tokens/s. Every reply is forced to
  ``--new-tokens`` tokens (``min_new_tokens = max_new_tokens``), so tokens/s
  compares like with like.
* ``evaluate.py`` on ``projects/demo/eval_caption.yaml`` with 1 and 2
  processes: the evaluation's own samples/s (``eval_samples_per_sec`` in its
  ``metrics.json``: generation and the gather, not the metric).

    python benchmarks/generation_throughput.py                         # random demo weights
    python benchmarks/generation_throughput.py --checkpoint output/demo/JOB
    python benchmarks/generation_throughput.py --device cuda --options model.model_type=qwen2.5-7b-instruct ...

Writes JSON to ``--out`` (default ``benchmarks/results/generation_throughput.json``) and stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join("benchmarks", "results", "generation_throughput.json")


def generation_figures(args: argparse.Namespace) -> dict[str, Any]:
    """Times ``model.generate`` at each batch size over the held-out demo questions."""
    import torch

    from lavislite.datasets import load_dataset
    from lavislite.models import load_model_and_preprocess
    from lavislite.models.release import load_from_checkpoint

    if args.checkpoint:
        model, _, _ = load_from_checkpoint(args.checkpoint)
    else:
        model, _, _ = load_model_and_preprocess("blip2_qwen", "demo", is_eval=True)
    device = torch.device(args.device)
    model = model.to(device).eval()
    context = {"tokenizer": model.cfg.tokenizer or model.cfg.llm_model, "num_image_tokens": model.cfg.qformer.num_query_token}
    data = os.path.join(ROOT, "projects", "demo", "data")
    dataset = load_dataset(
        "vqav2",
        {
            "build_info": {"annotations": {"test": {"storage": os.path.join(data, "eval_vqa.json")}}, "images": {"storage": os.path.join(data, "images")}},
            "prompt": "{question}",
            "vis_processor": {"eval": {"name": "blip_image_eval", "image_size": model.cfg.vision.image_size}},
            "text_processor": {"eval": {"name": "qwen_chat", "max_len": 256}},
        },
        context,
    )["test"]
    settings = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    out: dict[str, Any] = {}
    for batch_size in args.batch_sizes:
        batches = [dataset.collater([dataset[(k * batch_size + j) % len(dataset)] for j in range(batch_size)]) for k in range(args.batches)]
        model.generate(batches[0], **settings)  # warm-up (allocations, kernels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        new_tokens = 0
        for batch in batches:
            _, ids = model.generate(batch, return_ids=True, **settings)
            new_tokens += sum(len(row) for row in ids)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        samples = batch_size * len(batches)
        out[f"batch_{batch_size}"] = {
            "samples": samples,
            "new_tokens": new_tokens,
            "seconds": elapsed,
            "samples_per_sec": samples / elapsed,
            "new_tokens_per_sec": new_tokens / elapsed,
        }
    return out


def evaluation_figures(args: argparse.Namespace) -> dict[str, Any]:
    """Runs evaluate.py on the demo caption set with 1 and 2 processes; reads its samples/s."""
    out: dict[str, Any] = {}
    for nproc in args.eval_procs:
        with tempfile.TemporaryDirectory() as tmp:
            script = os.path.join(ROOT, "evaluate.py")
            options = [f"run.output_dir={tmp}", "run.job_id=bench", "run.caption_backend=python"]
            cmd = [sys.executable, script] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", script]
            cmd += ["--cfg-path", os.path.join(ROOT, "projects", "demo", "eval_caption.yaml")]
            if args.checkpoint:
                cmd += ["--checkpoint", args.checkpoint]
            cmd += ["--options", *options]
            start = time.time()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"evaluate.py with {nproc} process(es) failed:\n{proc.stderr[-3000:]}")
            (metrics,) = json.load(open(os.path.join(tmp, "bench", "metrics.json"), encoding="utf-8")).values()
            out[f"procs_{nproc}"] = {
                "samples": metrics["n_samples"],
                "eval_seconds": metrics["eval_seconds"],
                "eval_samples_per_sec": metrics["eval_samples_per_sec"],
                "process_wall_seconds": time.time() - start,
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="blip2_qwen generation / evaluation throughput")
    parser.add_argument("--checkpoint", default=None, help="a run or release folder (default: the demo model with random weights)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batches", type=int, default=4, help="timed batches per batch size")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--eval-procs", type=int, nargs="*", default=[1, 2], help="process counts for the evaluate.py runs (none: skip)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    import torch

    report = {
        "benchmark": "generation_throughput",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": args.checkpoint,
        "device": args.device,
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "settings": {"new_tokens": args.new_tokens, "batches": args.batches},
        "generate": generation_figures(args),
        "evaluate_demo_caption": evaluation_figures(args),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    print(json.dumps(report, indent=2))
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
