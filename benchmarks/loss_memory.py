"""Peak memory of one LM-head loss step: the shipped chunked loss vs full logits.

Compares three losses of ``lavislite/models/losses.py`` for a Qwen-sized LM
head (vocabulary 151,936):

* ``chunked``: ``supervised_cross_entropy`` as the model calls it (its default
  ``impl="auto"``): the supervised hidden states only, head and cross-entropy
  a chunk of rows at a time, each chunk's logits computed again in the
  backward pass (``--chunk-bytes`` of fp32 logits per chunk; default: the
  function's own, 8 MiB);
* ``lean``: ``supervised_cross_entropy(..., impl="full")``: the supervised rows
  only, but in one head call (``rows x vocab`` logits, the previous default);
* ``full``: ``full_logits_cross_entropy``, the textbook reference that computes
  logits for every position.

The headline figure is ``ratio_over_full.chunked``: the chunked step's peak
over the full-logits step's peak (``full_logits_fp32_bytes``, the size of one
fp32 ``batch x seq x vocab`` tensor, is reported beside it).

One *step* is the forward of the head, the loss (logits upcast to fp32 inside
the losses, as in the real code) and the backward into both the hidden states
and the head weight. Inputs: ``torch.manual_seed(seed)``, hidden states
``randn(batch, seq, hidden)`` (scale 1.0), an ``nn.Linear(hidden, vocab,
bias=False)`` whose weight is ``randn * 0.02``, both in ``--dtype`` and with
``requires_grad``; labels are ``-100`` except the last ``--supervised-fraction``
of every sequence (the assistant reply), which holds random token ids.

Each variant runs in its own fresh subprocess (the script re-invokes itself
with ``--variant chunked|lean|full --worker``) so that one peak cannot hide the other.
Before the measurement the worker runs the same loss once on tiny tensors
(lazy library/kernel initialisation is not part of the step), then
``--warmup`` untimed full-size steps (default 1 on CUDA, 0 on CPU, where a
full-size step of the full variant takes minutes); the gradients are cleared
before the measured step, so the step's figures include allocating them.

* CUDA (``measurement: cuda_max_allocated``): ``reset_peak_memory_stats()``
  right before the step; the increase is ``max_memory_allocated()`` after the
  step minus ``memory_allocated()`` before it (the absolute peak is reported
  too).
* CPU (``measurement: cpu_max_rss``): the increase is the process max RSS
  (``getrusage(RUSAGE_SELF).ru_maxrss``) after the step minus ``VmRSS`` (from
  ``/proc/self/status``) just before it. The kernel's RSS high-water mark is
  reset right before the step (``echo 5 > /proc/self/clear_refs``) so that a
  setup peak cannot stand in for the step's peak; ``hwm_reset`` says whether
  the reset worked, and ``peak_may_predate_step`` is true when it did not and
  the max RSS did not grow during the step (the figure is then only an upper
  bound).

The chunked and lean losses must agree with the full one to ``--rtol``
(relative, default 1e-3); the script exits with status 1 after
printing/writing the JSON when they do not.

Run it from the repository root::

    # defaults: hidden 1536 (Qwen2.5-1.5B), batch 8, seq 1024, 25% supervised, bf16
    python benchmarks/loss_memory.py
    # 7B head on a GPU
    python benchmarks/loss_memory.py --device cuda --hidden 3584
    # the second setting of issue 18
    python benchmarks/loss_memory.py --hidden 512 --seq 512 --batch 4
    # quick smoke test
    python benchmarks/loss_memory.py --hidden 256 --seq 128 --out /tmp/loss_memory_small.json

The full variant at the default size needs ~15 GB of RAM on CPU (fp32 logits
for 8*1024 positions are 5 GB, and the loss holds several such tensors); keep
CPU runs to the default hidden size or smaller. The JSON goes to ``--out``
(default ``benchmarks/results/loss_memory.json``) and to stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

DEFAULT_OUT = os.path.join("benchmarks", "results", "loss_memory.json")
QWEN_VOCAB = 151_936
IGNORE_INDEX = -100
VARIANTS = ("chunked", "lean", "full")
RESULT_MARKER = "LOSS_MEMORY_RESULT "
DTYPES = ("bf16", "fp16", "fp32")
GIB = float(1 << 30)
# worker keys that are reported elsewhere in the JSON, not under a variant's "details"
_NOT_DETAILS = frozenset(
    {"peak_increase_bytes", "peak_increase_gib", "step_seconds", "loss", "device", "device_name", "torch_version",
     "measurement", "variant"}
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line.

    Args:
        argv: the arguments (``sys.argv[1:]`` when None).

    Returns:
        The parsed namespace.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available, else cpu")
    p.add_argument("--vocab", type=int, default=QWEN_VOCAB, help="vocabulary size (default: Qwen's 151936)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024, help="sequence length")
    p.add_argument("--hidden", type=int, default=1536, help="hidden size: 1536 = Qwen2.5-1.5B, 3584 = Qwen2.5-7B")
    p.add_argument(
        "--supervised-fraction", type=float, default=0.25, help="fraction of each sequence (its end) that carries labels"
    )
    p.add_argument("--dtype", choices=DTYPES, default="bf16", help="dtype of the hidden states and the head weight")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed steps before the measured one (default: 1 on cuda, 0 on cpu)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--chunk-bytes", type=int, default=None, help="fp32 logits per chunk of the chunked loss (default: the function's own)"
    )
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of each loss against the full one")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"JSON output path (default {DEFAULT_OUT})")
    p.add_argument("--variant", choices=VARIANTS, default=None, help="worker only: the loss to measure")
    p.add_argument("--worker", action="store_true", help="internal: measure one variant and print its result line")
    args = p.parse_args(argv)
    if not 0.0 < args.supervised_fraction <= 1.0:
        p.error("--supervised-fraction must be in (0, 1]")
    if min(args.vocab, args.batch, args.seq, args.hidden) < 1 or args.seq < 2:
        p.error("--vocab, --batch, --hidden must be >= 1 and --seq >= 2")
    if args.chunk_bytes is not None and args.chunk_bytes < 4:
        p.error("--chunk-bytes must be >= 4")
    if args.worker and args.variant is None:
        p.error("--worker needs --variant")
    return args


# ----------------------------------------------------------------------------- worker


def _read_vmrss_bytes() -> int:
    """Returns the current resident set size of this process in bytes (``VmRSS``)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def _max_rss_bytes() -> int:
    """Returns the process max RSS (``ru_maxrss`` is in KiB on Linux) in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_rss_high_water_mark() -> bool:
    """Resets the kernel's RSS high-water mark (also what ``ru_maxrss`` reads).

    Returns:
        True when ``/proc/self/clear_refs`` accepted the reset (Linux >= 4.0).
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_name() -> str:
    """Returns the CPU model name (``/proc/cpuinfo``), or ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _import_losses() -> Any:
    """Imports ``lavislite.models.losses`` (adding the repository root to the path if needed)."""
    try:
        from lavislite.models import losses
    except ImportError:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from lavislite.models import losses
    return losses


def _loss(losses: Any, variant: str, hidden: Any, labels: Any, lm_head: Any, chunk_bytes: int | None) -> Any:
    """Returns the loss of ``variant`` (what ``step`` differentiates).

    Args:
        losses: the ``lavislite.models.losses`` module.
        variant: ``chunked``, ``lean`` or ``full``.
        hidden: (B, L, H) hidden states.
        labels: (B, L) labels.
        lm_head: the head module.
        chunk_bytes: fp32 logits per chunk of the chunked loss (None: its default).
    """
    if variant == "chunked":
        kwargs = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
        return losses.supervised_cross_entropy(hidden, labels, lm_head, **kwargs)[0]
    if variant == "lean":
        return losses.supervised_cross_entropy(hidden, labels, lm_head, impl="full")[0]
    return losses.full_logits_cross_entropy(hidden, labels, lm_head)


def _prime(losses: Any, variant: str, device: Any, dtype: Any) -> None:
    """Runs the variant once on tiny tensors so that lazy initialisation is not measured.

    The first call of each kernel loads library code and kernel caches (oneDNN
    primitives on CPU, cuBLAS handles on CUDA); a tiny step of the same dtypes
    and ops pays for that outside the measurement, at no memory cost of note.

    Args:
        losses: the ``lavislite.models.losses`` module.
        variant: ``chunked``, ``lean`` or ``full``.
        device: where the measured step runs.
        dtype: dtype of the hidden states and the head weight.
    """
    import torch

    hidden = torch.randn(2, 16, 32, device=device, dtype=dtype, requires_grad=True)
    head = torch.nn.Linear(32, 64, bias=False, device=device, dtype=dtype)
    labels = torch.full((2, 16), IGNORE_INDEX, dtype=torch.long, device=device)
    labels[:, 8:] = torch.randint(0, 64, (2, 8), device=device)
    _loss(losses, variant, hidden, labels, head, 4 * 8 * 16).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Builds the inputs and measures one loss step of ``args.variant``.

    Args:
        args: the parsed command line (``variant`` set).

    Returns:
        The variant's figures and the environment it ran in.
    """
    import torch

    losses = _import_losses()

    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    device = torch.device("cuda" if use_cuda else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    warmup = args.warmup if args.warmup is not None else (1 if use_cuda else 0)

    torch.manual_seed(args.seed)
    batch, seq, hidden_size, vocab = args.batch, args.seq, args.hidden, args.vocab
    hidden = (torch.randn(batch, seq, hidden_size, device=device, dtype=dtype) * 1.0).requires_grad_(True)
    lm_head = torch.nn.Linear(hidden_size, vocab, bias=False, device=device, dtype=dtype)
    with torch.no_grad():  # randn * 0.02, in place (no fp32 temporary of the 151936 x H matrix)
        lm_head.weight.normal_().mul_(0.02)
    lm_head.weight.requires_grad_(True)

    n_supervised_per_seq = max(1, round(seq * args.supervised_fraction))
    start = seq - n_supervised_per_seq
    labels = torch.full((batch, seq), IGNORE_INDEX, dtype=torch.long, device=device)
    labels[:, start:] = torch.randint(0, vocab, (batch, n_supervised_per_seq), device=device)
    n_targets = int((labels[:, 1:] != IGNORE_INDEX).sum())

    def step() -> torch.Tensor:
        loss = _loss(losses, args.variant, hidden, labels, lm_head, args.chunk_bytes)
        loss.backward()
        return loss.detach()

    def clear_grads() -> None:
        hidden.grad = None
        lm_head.weight.grad = None
        gc.collect()

    _prime(losses, args.variant, device, dtype)
    for _ in range(warmup):
        step()
        clear_grads()
    clear_grads()

    figures: dict[str, Any] = {
        "variant": args.variant,
        "warmup_steps": warmup,
        "primed_with_tiny_step": True,
        "supervised_targets": n_targets,
        "chunk_bytes": (args.chunk_bytes or losses.DEFAULT_CHUNK_BYTES) if args.variant == "chunked" else None,
        # (rows, vocabulary entries) of one tile of the fused path
        "chunk_tile": list(losses.tile_shape(n_targets, vocab, args.chunk_bytes or losses.DEFAULT_CHUNK_BYTES))
        if args.variant == "chunked" else None,
    }
    if use_cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated()
        after = torch.cuda.memory_allocated()
        figures.update(
            measurement="cuda_max_allocated",
            allocated_before_bytes=before,
            peak_absolute_bytes=peak,
            peak_increase_bytes=peak - before,
            retained_after_step_bytes=after - before,
        )
        device_name = torch.cuda.get_device_name(device)
    else:
        gc.collect()
        hwm_reset = _reset_rss_high_water_mark()
        rss_before = _read_vmrss_bytes()
        max_rss_before = _max_rss_bytes()
        t0 = time.perf_counter()
        loss = step()
        seconds = time.perf_counter() - t0
        max_rss_after = _max_rss_bytes()
        rss_after = _read_vmrss_bytes()
        figures.update(
            measurement="cpu_max_rss",
            rss_before_bytes=rss_before,
            max_rss_after_bytes=max_rss_after,
            peak_increase_bytes=max_rss_after - rss_before,
            retained_after_step_bytes=rss_after - rss_before,
            hwm_reset=hwm_reset,
            peak_may_predate_step=(not hwm_reset) and max_rss_after <= max_rss_before,
            torch_num_threads=torch.get_num_threads(),
        )
        device_name = _cpu_name()

    assert hidden.grad is not None and lm_head.weight.grad is not None, "backward did not reach both inputs"
    figures.update(
        peak_increase_gib=round(figures["peak_increase_bytes"] / GIB, 4),
        step_seconds=round(seconds, 4),
        loss=float(loss.item()),
        device=device.type,
        device_name=device_name,
        torch_version=torch.__version__,
    )
    return figures


# ----------------------------------------------------------------------------- parent


def _worker_command(args: argparse.Namespace, variant: str) -> list[str]:
    """Returns the command line that measures ``variant`` in a fresh interpreter.

    Args:
        args: the parent's parsed command line.
        variant: ``chunked``, ``lean`` or ``full``.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--variant", variant]
    cmd += ["--device", args.device, "--vocab", str(args.vocab), "--batch", str(args.batch), "--seq", str(args.seq)]
    cmd += ["--hidden", str(args.hidden), "--supervised-fraction", repr(args.supervised_fraction), "--dtype", args.dtype]
    cmd += ["--seed", str(args.seed)]
    if args.warmup is not None:
        cmd += ["--warmup", str(args.warmup)]
    if args.chunk_bytes is not None:
        cmd += ["--chunk-bytes", str(args.chunk_bytes)]
    return cmd


def run_variant(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """Runs one worker subprocess and parses its result line.

    Args:
        args: the parent's parsed command line.
        variant: ``chunked``, ``lean`` or ``full``.

    Returns:
        The worker's figures.

    Raises:
        RuntimeError: if the worker fails or prints no result.
    """
    print(f"[loss_memory] measuring {variant} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(_worker_command(args, variant), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        hint = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
        raise RuntimeError(f"worker for {variant!r} exited with status {proc.returncode}{hint}")
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    sys.stderr.write(proc.stdout + proc.stderr)
    raise RuntimeError(f"worker for {variant!r} printed no result line")


def build_report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Assembles the JSON report from the workers' figures.

    Args:
        args: the parent's parsed command line.
        results: figures per variant (``chunked``, ``lean`` and ``full``).

    Returns:
        The report (config, per-variant figures, ratios, loss agreement, versions).
    """
    chunked, lean, full = results["chunked"], results["lean"], results["full"]
    full_peak = max(full["peak_increase_bytes"], 1)
    full_logits_fp32_bytes = args.batch * args.seq * args.vocab * 4
    per_variant = {}
    for name, r in results.items():
        per_variant[name] = {
            "peak_increase_bytes": r["peak_increase_bytes"],
            "peak_increase_gib": r["peak_increase_gib"],
            "step_seconds": r["step_seconds"],
            "loss": r["loss"],
            "details": {k: v for k, v in r.items() if k not in _NOT_DETAILS},
        }
    checks = {}
    for name in ("chunked", "lean"):
        diff = abs(results[name]["loss"] - full["loss"])
        checks[name] = {"abs_diff": diff, "rel_diff": diff / max(abs(full["loss"]), 1e-12)}
    return {
        "benchmark": "loss_memory",
        "config": {
            "vocab": args.vocab,
            "batch": args.batch,
            "seq": args.seq,
            "hidden": args.hidden,
            "supervised_fraction": args.supervised_fraction,
            "supervised_targets": lean["supervised_targets"],
            "chunk_bytes": chunked["chunk_bytes"],
            "chunk_tile": chunked["chunk_tile"],
            "dtype": args.dtype,
            "logits_dtype_in_loss": "fp32",
            "seed": args.seed,
            "device": lean["device"],
            "device_name": lean["device_name"],
        },
        "measurement": lean["measurement"],
        "variants": per_variant,
        # each variant's peak over the full-logits step's peak: the figure issue 18 bounds (chunked <= 0.05)
        "ratio_over_full": {name: round(r["peak_increase_bytes"] / full_peak, 4) for name, r in results.items()},
        "full_logits_fp32_bytes": full_logits_fp32_bytes,
        "chunked_peak_over_full_logits_fp32": round(chunked["peak_increase_bytes"] / full_logits_fp32_bytes, 4),
        "ratio_full_over_lean": {
            "peak_increase": round(full["peak_increase_bytes"] / max(lean["peak_increase_bytes"], 1), 3),
            "step_seconds": round(full["step_seconds"] / max(lean["step_seconds"], 1e-9), 3),
        },
        "ratio_chunked_over_lean": {
            "peak_increase": round(chunked["peak_increase_bytes"] / max(lean["peak_increase_bytes"], 1), 4),
            "step_seconds": round(chunked["step_seconds"] / max(lean["step_seconds"], 1e-9), 3),
        },
        "loss_check": {
            **checks,
            "rel_diff": max(c["rel_diff"] for c in checks.values()),
            "rtol": args.rtol,
            "agree": all(c["rel_diff"] <= args.rtol for c in checks.values()),
        },
        "versions": {
            "torch": lean["torch_version"],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point: a worker measures one variant; the parent runs all three and reports.

    Args:
        argv: the arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit status (1 when a loss disagrees with the full one, 2 when a worker failed).
    """
    args = parse_args(argv)
    if args.worker:
        print(RESULT_MARKER + json.dumps(run_worker(args)), flush=True)
        return 0

    try:
        results = {variant: run_variant(args, variant) for variant in VARIANTS}
    except RuntimeError as exc:
        print(f"[loss_memory] {exc}", file=sys.stderr)
        return 2
    report = build_report(args, results)
    text = json.dumps(report, indent=2)
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)
    losses = " ".join(f"{name}={results[name]['loss']:.6f}" for name in VARIANTS)
    print(f"[loss_memory] loss {losses} max rel_diff={report['loss_check']['rel_diff']:.2e}", file=sys.stderr)
    print(f"[loss_memory] peak chunked/full = {report['ratio_over_full']['chunked']:.4f}, "
          f"chunked/(fp32 full logits) = {report['chunked_peak_over_full_logits_fp32']:.4f}", file=sys.stderr)
    if not report["loss_check"]["agree"]:
        print(f"[loss_memory] FAIL: losses differ by more than rtol={args.rtol}", file=sys.stderr)
        return 1
    print(f"[loss_memory] wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
