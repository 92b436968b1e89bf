"""Training throughput of the demo model (``blip2_qwen``, model_type ``demo``).

Builds everything exactly as ``train.py`` does from ``projects/demo/train.yaml``
(config, the shared process set-up, task, datasets, model) and runs the real
runner's ``train()``: its data loader, its DeepSpeed engine and its loop. A
subclass of ``RunnerBase`` only listens to ``on_step_end`` to time each
optimizer step; ``--warmup`` untimed steps come first, then ``--steps`` timed
ones, and the JSON reports the measured figures.

Run it from the repository root::

    # one process (DeepSpeed's CPU accelerator is picked when there is no GPU)
    python benchmarks/train_throughput.py --steps 20
    python benchmarks/train_throughput.py --precision bf16 --zero 3 --batch-size 4

    # several processes: every rank trains, rank 0 alone prints and writes the JSON
    torchrun --nproc_per_node=2 benchmarks/train_throughput.py --steps 10 --out /tmp/bench2.json

    # anything else in the run config, as in train.py
    python benchmarks/train_throughput.py --options run.accum_grad_iters=2 model.freeze_llm=true

With a world size above one the figures are combined over ranks: ``samples_per_sec``,
``tokens_per_sec`` and ``supervised_tokens_per_sec`` are totals over all ranks
(samples of every rank / the slowest rank's wall time); a step's time is the
slowest rank's time for that step; losses and the real-token fraction are
means over ranks; ``peak_memory_bytes`` is the largest rank's peak (each rank's
value is in ``peak_memory_bytes_per_rank``).

The run folder the runner needs (``run.output_dir``) is a temporary folder that
is removed at the end; TensorBoard, validation and testing are off. The JSON
goes to ``--out`` (default ``benchmarks/results/train_throughput.json``) and to stdout.

``--compare`` (issue 18) measures the batching the runner ships against each
other and against a MiniGPT4Qwen-style baseline, on the demo data and on a
LLaVA-shaped length distribution, in one invocation; see ``compare.py`` beside
this file for the data, the variants and how the runs are interleaved.
``--full-size`` swaps the demo model for a full-size one (EVA-ViT-g, BERT-base
Q-Former, a Qwen2.5-1.5B-sized LLM with random weights) in bf16 under ZeRO-2;
it needs CUDA and says so otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Any

DEMO_CONFIG = "projects/demo/train.yaml"
DEFAULT_OUT = os.path.join("benchmarks", "results", "train_throughput.json")
IGNORE_INDEX = -100
# What each --variant sets over the run config (the minigpt4qwen baseline also
# tokenises in the step and pads to 512: compare.step_tokenising).
VARIANT_OPTIONS: dict[str, list[str]] = {
    "pad": [],
    "group": ["run.group_by_length=true"],
    "pack": ["run.packing=true"],
    "minigpt4qwen": ["model.loss_impl=full_logits"],
}
# --full-size: the full-size blip2_qwen type with a Qwen2.5-1.5B-shaped LLM from random weights (nothing downloads).
FULL_SIZE_OPTIONS = [
    "model.model_type=qwen2.5-1.5b-instruct",
    "model.llm_model=qwen2",
    "model.llm_init=random",
    "model.llm_config={vocab_size: 151936, hidden_size: 1536, intermediate_size: 8960, num_hidden_layers: 28, "
    "num_attention_heads: 12, num_key_value_heads: 2, tie_word_embeddings: true, max_position_embeddings: 4096}",
    "model.tokenizer=builtin:qwen2.5",
    "model.load_pretrained=false",
]
# The instruction builders each --data trains on (their images go to 224 px for ViT-g under --full-size).
DATA_BUILDERS = {"demo": ["minigpt4_instruction", "llava_instruction"], "llava_shaped": ["llava_instruction"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line.

    Args:
        argv: the arguments (``sys.argv[1:]`` when None).

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(description="training throughput of the blip2_qwen demo model")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps before the timed ones")
    parser.add_argument("--batch-size", type=int, default=8, help="micro-batch per process (run.batch_size_train)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--zero", type=int, choices=[0, 1, 2, 3], default=2, help="DeepSpeed ZeRO stage")
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers per process")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where rank 0 writes the JSON")
    parser.add_argument("--options", nargs="+", default=[], help="extra config overrides, key.path=value (they win)")
    parser.add_argument("--compare", action="store_true", help="pad / group / pack / minigpt4qwen on demo and llava_shaped data, interleaved (compare.py)")
    parser.add_argument("--full-size", action="store_true", help="ViT-g + Q-Former + Qwen2.5-1.5B-sized LLM (random), bf16, ZeRO-2; CUDA only")
    parser.add_argument("--data", choices=["demo", "llava_shaped"], default="demo", help="one run's data (--compare: see --datasets)")
    parser.add_argument("--variant", choices=["pad", "group", "pack", "minigpt4qwen"], default="pad", help="one run's batching")
    parser.add_argument("--datasets", nargs="+", choices=["demo", "llava_shaped"], default=["demo", "llava_shaped"], help="--compare: data to run")
    parser.add_argument("--variants", nargs="+", choices=["pad", "group", "pack", "minigpt4qwen"], default=["pad", "group", "pack", "minigpt4qwen"], help="--compare: variants")
    parser.add_argument("--rounds", type=int, default=3, help="--compare: round-robin rounds; each variant trains steps/rounds timed steps per round")
    parser.add_argument("--llava-samples", type=int, default=2000, help="llava_shaped: conversations to generate")
    parser.add_argument("--llava-seed", type=int, default=0, help="llava_shaped: the length model's seed")
    parser.add_argument("--llava-file", default=None, help="llava_shaped: an already generated LLaVA JSON (internal: --compare passes it to its runs)")
    parser.add_argument("--control-fds", default=None, help=argparse.SUPPRESS)  # internal: --compare's pause/go pipe (read fd, write fd)
    parser.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)  # internal: timed steps between pauses
    args = parser.parse_args(argv)
    if args.full_size:
        args.precision, args.zero = "bf16", 2
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def config_options(args: argparse.Namespace, output_dir: str) -> list[str]:
    """The ``--options`` list for ``Config``: the benchmark's settings, then the user's.

    Args:
        args: the parsed command line.
        output_dir: the temporary run folder.

    Returns:
        OmegaConf dot-list items; later items win, so the user's ``--options`` override.
    """
    return [
        f"run.output_dir={output_dir}",
        "run.tensorboard=false",
        "run.job_id=train_throughput",
        f"run.max_steps={max(1, args.warmup) + args.steps}",
        "run.max_epoch=1000",
        "run.save_freq_epochs=1000",
        "run.valid_splits=[]",
        "run.test_splits=[]",
        f"run.batch_size_train={args.batch_size}",
        f"run.precision={args.precision}",
        f"run.deepspeed_config.zero_optimization.stage={args.zero}",
        f"run.num_workers={args.num_workers}",
        *(FULL_SIZE_OPTIONS if args.full_size else []),
        *(f"datasets.{b}.vis_processor.train.image_size=224" for b in (DATA_BUILDERS[args.data] if args.full_size else [])),
        *VARIANT_OPTIONS[args.variant],
        *args.options,
    ]


def device_name() -> str:
    """A readable name of the device the run trains on (GPU name or CPU model)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks.

    Args:
        values: a non-empty list of numbers.
        q: the percentile.

    Returns:
        The interpolated percentile.
    """
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def make_bench_runner(base: type, warmup: int, control: tuple[int, int] | None = None, chunk: int = 0, total: int = 0) -> type:
    """A subclass of the real runner that times each optimizer step (``on_step_end``); nothing else changes.

    With ``control`` (``--compare``'s pipe: read fd, write fd) the hook also
    pauses: after the warm-up, after every ``chunk`` timed steps and after the
    last (``total``) step it writes ``ready`` and blocks until it reads ``go``,
    so that the variants' runs take turns on the machine. A pause is not timed.
    Memory peaks are reset after the first step and read at the last one:
    they cover the steady training steps, not the set-up or the final save.
    """
    import torch

    class BenchRunner(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.warm: dict[str, Any] = _new_record()
            self.timed: dict[str, Any] = _new_record()
            self.last_time: float | None = None
            self.training_memory: dict[str, Any] = {}
            self.pause_reads = os.fdopen(control[0], "r") if control else None
            self.pause_writes = os.fdopen(control[1], "w") if control else None

        def on_step_end(self, info: dict[str, Any]) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # a step ends when its kernels do
            now = time.perf_counter()
            # The first step's time runs from the loop's start, so it is always a warm-up step.
            record = self.warm if info["step"] <= max(1, warmup) else self.timed
            if self.last_time is not None:
                record["step_times"].append(now - self.last_time)
                record["data_wait"].append(info["data_wait"])
                if record is self.timed and "start" not in record:
                    record["start"] = self.last_time
            record["end"] = now
            batch = info["last_batch"]
            # Padded batches mark real tokens in attention_mask; packed rows in token_mask.
            mask = batch["attention_mask"] if batch.get("attention_mask") is not None else batch["token_mask"]
            record["losses"].extend(x for x in info["losses"] if x is not None)
            record["samples"] += info["samples"]
            # The micro-batches of one step share a length distribution; the last one stands for the step.
            per_batch = len(info["losses"])
            record["tokens"] += int(mask.sum()) * per_batch
            record["padded"] += int(mask.numel()) * per_batch
            record["supervised"] += int((batch["labels"] != IGNORE_INDEX).sum()) * per_batch
            record["rows"] += int(mask.shape[0]) * per_batch
            record["real_fractions"].append(int(mask.sum()) / max(int(mask.numel()), 1))
            if info["step"] == 1:
                reset_memory_peaks()
            if total and info["step"] == total:
                self.training_memory = memory_peaks()
            timed_done = info["step"] - max(1, warmup)
            if self.pause_writes is not None and (timed_done == 0 or (timed_done > 0 and (timed_done % max(1, chunk) == 0 or info["step"] == total))):
                self.pause_writes.write(f"ready {info['step']}\n")
                self.pause_writes.flush()
                if self.pause_reads.readline().strip() != "go":
                    raise SystemExit(3)  # the comparison ended (its pipe closed)
            self.last_time = time.perf_counter()  # after a pause: the next step's time starts now

    return BenchRunner


def reset_memory_peaks() -> None:
    """Restarts the peak figures ``memory_peaks`` reads: CUDA's allocator peak, and this process's RSS high-water mark.

    The RSS mark (``VmHWM``) is reset by writing 5 to ``/proc/self/clear_refs``
    (Linux >= 4.0); where that fails, ``memory_peaks`` says so.
    """
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        _HWM_RESET[0] = True
    except OSError:
        _HWM_RESET[0] = False


_HWM_RESET = [False]


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_peaks() -> dict[str, Any]:
    """The peaks since ``reset_memory_peaks``: ``cuda_max_allocated_bytes`` (None without CUDA) and
    ``cpu_hwm_bytes`` (``VmHWM``: the process's peak RSS; since the reset when ``cpu_hwm_reset``)."""
    import torch

    return {
        "cuda_max_allocated_bytes": int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None,
        "cpu_hwm_bytes": _proc_status_bytes("VmHWM"),
        "cpu_hwm_reset": _HWM_RESET[0],
    }


def _new_record() -> dict[str, Any]:
    return {"step_times": [], "data_wait": [], "losses": [], "samples": 0, "tokens": 0, "padded": 0, "supervised": 0, "rows": 0, "real_fractions": []}


def peak_memory() -> dict[str, Any]:
    """This process's peak memory figures.

    Returns:
        ``cuda_max_allocated_bytes`` (None without CUDA) and ``cpu_max_rss_bytes``
        (``getrusage(RUSAGE_SELF).ru_maxrss``; KiB on Linux, bytes on macOS).
    """
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = int(rss) if sys.platform == "darwin" else int(rss) * 1024
    cuda = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    return {"cuda_max_allocated_bytes": cuda, "cpu_max_rss_bytes": rss_bytes}


def combine(local: dict[str, Any], memory: dict[str, Any]) -> list[dict[str, Any]]:
    """Gathers every rank's figures (a list of one without a process group).

    Args:
        local: this rank's ``train_steps`` result for the timed steps.
        memory: this rank's ``peak_memory()``.

    Returns:
        The per-rank records, in rank order.
    """
    from lavislite.common import dist_utils

    return dist_utils.all_gather_object({**local, "memory": memory, "rank": dist_utils.get_rank()})


def summarise(ranks: list[dict[str, Any]], warm: list[dict[str, Any]]) -> dict[str, Any]:
    """Turns the per-rank records into the reported figures.

    Args:
        ranks: the timed steps' records of every rank.
        warm: the warm-up records of every rank (for the first loss).

    Returns:
        The ``timing``, ``throughput``, ``tokens``, ``loss`` and ``memory`` sections.
    """
    n_steps = len(ranks[0]["step_times"])
    # A step lasts as long as its slowest rank (backward all-reduces/reduce-scatters gradients).
    step_times = [max(r["step_times"][i] for r in ranks) for i in range(n_steps)]
    data_wait = [max(r["data_wait"][i] for r in ranks) for i in range(n_steps)]
    wall = max(r["wall"] for r in ranks)
    samples = sum(r["samples"] for r in ranks)
    tokens = sum(r["tokens"] for r in ranks)
    padded = sum(r["padded"] for r in ranks)
    supervised = sum(r["supervised"] for r in ranks)
    rows = sum(r["rows"] for r in ranks)
    fractions = [f for r in ranks for f in r["real_fractions"]]
    n_micro = len(ranks[0]["losses"])

    def mean_loss(records: list[dict[str, Any]], index: int) -> float | None:
        if not records or not records[0]["losses"]:
            return None
        return statistics.fmean(r["losses"][index] for r in records)

    first_source = warm if warm and warm[0]["losses"] else ranks
    mem_cuda = [r["memory"]["cuda_max_allocated_bytes"] for r in ranks]
    mem_rss = [r["memory"]["cpu_max_rss_bytes"] for r in ranks]
    on_cuda = mem_cuda[0] is not None
    per_rank = mem_cuda if on_cuda else mem_rss
    return {
        "timing": {
            "timed_steps": n_steps,
            "micro_batches_per_rank": n_micro,
            "total_wall_time_s": wall,
            "step_time_mean_s": statistics.fmean(step_times),
            "step_time_median_s": statistics.median(step_times),
            "step_time_p90_s": percentile(step_times, 90),
            "step_time_min_s": min(step_times),
            "step_time_max_s": max(step_times),
            "data_wait_mean_s": statistics.fmean(data_wait),
            "step_times_s": step_times,
        },
        "throughput": {
            "samples_per_sec": samples / wall,
            "tokens_per_sec": tokens / wall,
            "supervised_tokens_per_sec": supervised / wall,
            "padded_tokens_per_sec": padded / wall,
            "steps_per_sec": n_steps / wall,
        },
        "tokens": {
            "samples": samples,
            "real_tokens": tokens,
            "padded_positions": padded,
            "supervised_tokens": supervised,
            "rows": rows,  # batch rows (packed rows hold several samples)
            "real_token_fraction": statistics.fmean(fractions),
            "real_token_fraction_pooled": tokens / max(padded, 1),
        },
        "loss": {
            "first": mean_loss(first_source, 0),
            "first_is_from": "warmup" if first_source is warm else "timed",
            "last": mean_loss(ranks, -1),
            "timed_mean": statistics.fmean(x for r in ranks for x in r["losses"]),
        },
        "memory": {
            "peak_memory_bytes": max(per_rank),
            "peak_memory_kind": "cuda_max_allocated" if on_cuda else "cpu_max_rss",
            "peak_memory_bytes_per_rank": per_rank,
            "cuda_max_allocated_bytes": max(mem_cuda) if on_cuda else None,
            "cpu_max_rss_bytes": max(mem_rss),
            "cpu_max_rss_bytes_per_rank": mem_rss,
            "note": "whole-process peaks (set-up, warm-up and timed steps); cpu_max_rss excludes DataLoader worker processes",
            **training_peak([r["memory"].get("training") or {} for r in ranks]),
        },
    }


def training_peak(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """The steady training steps' peak (from after step 1 to the last step; the largest rank's).

    ``training_peak_bytes``: CUDA's max allocated, or on a CPU the process's RSS
    high-water mark (``VmHWM``, reset after step 1 through ``/proc/self/clear_refs``,
    so the set-up's transient peaks and the final checkpoint are not in it;
    DataLoader workers are other processes and not in it either). None when
    the last step was not reached or /proc is missing.
    """
    cuda = [r.get("cuda_max_allocated_bytes") for r in per_rank]
    hwm = [r.get("cpu_hwm_bytes") for r in per_rank]
    if cuda and all(c is not None for c in cuda):
        return {"training_peak_bytes": max(cuda), "training_peak_kind": "cuda_max_allocated"}  # type: ignore[type-var]
    if hwm and all(h is not None for h in hwm):
        reset = all(r.get("cpu_hwm_reset") for r in per_rank)
        return {"training_peak_bytes": max(hwm), "training_peak_kind": "cpu_rss_hwm" + ("" if reset else "_not_reset")}  # type: ignore[type-var]
    return {"training_peak_bytes": None, "training_peak_kind": None}


def run_benchmark(args: argparse.Namespace, tmp_dir: str) -> dict[str, Any]:
    """Builds the demo run as train.py does and times the steps.

    Args:
        args: the parsed command line.
        tmp_dir: the temporary run folder (``run.output_dir``).

    Returns:
        The report (identical on every rank; rank 0 writes it).
    """
    import torch

    from lavislite.common import dist_utils

    import lavislite  # noqa: F401  (registers the built-in names)
    from lavislite.common.config import Config
    from lavislite.common.registry import registry
    from lavislite.common.utils import library_path
    from lavislite.runners.launch import setup_run
    from lavislite.tasks import setup_task

    import compare  # benchmarks/compare.py: the llava_shaped data and the minigpt4qwen baseline's step

    if args.data == "llava_shaped":
        llava_file = args.llava_file or compare.write_llava_shaped(os.path.join(tmp_dir, "llava_shaped.json"), args.llava_samples, args.llava_seed)
        config_path = compare.llava_shaped_config(library_path(DEMO_CONFIG), llava_file, os.path.join(tmp_dir, "llava_shaped.yaml"))
    else:
        config_path = library_path(DEMO_CONFIG)
    cfg = Config(config_path, config_options(args, tmp_dir))
    run = cfg.run_cfg
    if args.full_size and not torch.cuda.is_available():
        raise compare.NeedsCuda(
            "--full-size needs a CUDA GPU (a 2.6B-parameter model in bf16 under ZeRO-2; torch sees none here). "
            f"Its config is valid: {cfg.model_cfg.model_type} with a {cfg.model_cfg.llm_config.num_hidden_layers}-layer, "
            f"{cfg.model_cfg.llm_config.hidden_size}-wide random LLM, precision {run.precision}, "
            f"ZeRO-{run.deepspeed_config.zero_optimization.stage}"
        )
    setup_run(cfg, "bench.log")
    world_size = dist_utils.get_world_size()

    task = setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    if args.variant == "minigpt4qwen":
        task, datasets = compare.step_tokenising(task, datasets, run.train_splits)
    # Counted before DeepSpeed wraps (and under ZeRO-3 partitions) the parameters.
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops_shape = model.llm_flops_shape() if hasattr(model, "llm_flops_shape") else None

    control = tuple(int(x) for x in args.control_fds.split(",")) if args.control_fds else None
    total = max(1, args.warmup) + args.steps
    runner_cls = make_bench_runner(registry.get_runner_class(run.runner), args.warmup, control, args.chunk, total)  # type: ignore[arg-type]
    runner = runner_cls(cfg, task, model, datasets, str(run.job_id))
    runner.train()
    timed = dict(runner.timed)
    # Pauses (--compare) are not in any step's time, so the wall time is the steps' sum.
    timed["wall"] = sum(timed["step_times"])
    ranks = combine(timed, {**peak_memory(), "training": runner.training_memory})
    warm_ranks = dist_utils.all_gather_object({"losses": runner.warm["losses"]})

    import deepspeed  # type: ignore[import-untyped]
    import transformers

    return {
        "benchmark": "train_throughput",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"arch": str(cfg.model_cfg.arch), "model_type": str(cfg.model_cfg.model_type)},
        "config": {
            "config_path": DEMO_CONFIG,
            "steps": args.steps,
            "warmup_steps": args.warmup,
            "batch_size_per_rank": int(run.batch_size_train),
            "accum_grad_iters": int(run.accum_grad_iters),
            "global_batch_size": int(runner.ds_config["train_batch_size"]),
            "precision": str(run.precision),
            "zero_stage": int(runner.ds_config["zero_optimization"]["stage"]),
            "num_workers": int(run.num_workers),
            "train_samples": len(runner.train_set),  # type: ignore[arg-type]
            "batches_per_epoch_per_rank": runner.batches_per_epoch,
            "thread_setting": os.environ.get("LAVISLITE_THREADS", "lavislite"),
            "options": list(args.options),
        },
        "environment": {
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "device_name": device_name(),
            "ds_accelerator": os.environ.get("DS_ACCELERATOR"),
            "dist_backend": torch.distributed.get_backend() if dist_utils.is_dist_avail_and_initialized() else None,
            "world_size": world_size,
            "cpu_count": os.cpu_count(),
            "torch_num_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "deepspeed": deepspeed.__version__,
        },
        "parameters": {"total": n_params, "trainable": n_trainable},
        "data": args.data,
        "variant": args.variant,
        **with_mfu(summarise(ranks, warm_ranks), flops_shape, world_size),
    }


def with_mfu(report: dict[str, Any], flops_shape: dict[str, int] | None, world_size: int) -> dict[str, Any]:
    """Adds ``throughput.mfu`` (CUDA, a device in ``common.flops.PEAK_BF16_TFLOPS``; else None) and
    ``memory.training_peak_bytes``: the peak over the steady steps (CUDA max allocated, or the RSS high-water mark)."""
    import torch

    from lavislite.common.flops import llm_flops_per_token, mfu, peak_bf16_flops

    value = None
    if torch.cuda.is_available() and flops_shape is not None:
        peak = peak_bf16_flops(torch.cuda.get_device_name(torch.cuda.current_device()))
        tokens = report["tokens"]
        if peak is not None:
            per_token = llm_flops_per_token(seq_len=tokens["real_tokens"] / max(tokens["samples"], 1), **flops_shape)
            value = mfu(per_token, report["throughput"]["tokens_per_sec"], peak, world_size)
    report["throughput"]["mfu"] = value
    report["throughput"]["mfu_flops_shape"] = flops_shape
    return report


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; rank 0 writes the JSON to ``--out`` and prints it.

    Args:
        argv: the command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit status: 0, or 2 for an invalid config override (or --full-size without CUDA).
    """
    args = parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/compare.py, also when imported
    import compare

    if args.compare:
        return compare.run_compare(args, os.path.abspath(__file__))
    tmp_dir = tempfile.mkdtemp(prefix="lavislite_bench_")
    try:
        # stdout carries the JSON alone: whatever is printed while building and
        # training (e.g. DeepSpeed's "... op built successfully") goes to stderr.
        from lavislite.common.schema import ConfigError

        try:
            with contextlib.redirect_stdout(sys.stderr):
                report = run_benchmark(args, tmp_dir)
        except (ConfigError, compare.NeedsCuda) as exc:  # as train.py: a bad --options item is a usage error
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from lavislite.common import dist_utils

        if dist_utils.is_main_process():
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w", encoding="utf-8") as fh:
                json.dump(report, fh, indent=2)
                fh.write("\n")
            print(json.dumps(report, indent=2), flush=True)
        dist_utils.barrier()
        if dist_utils.is_dist_avail_and_initialized():
            import torch.distributed

            torch.distributed.destroy_process_group()
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
