"""Training samples/s of the demo under lavislite's thread settings against torch's defaults.

Runs ``benchmarks/train_throughput.py`` (the real runner, one process) four
times in one invocation: {lavislite's settings, torch's defaults} x {a quiet
machine, a machine with a competing CPU load}. lavislite's settings give the
main process its share of the cores minus one per DataLoader worker and each
worker one thread (``dist_utils.configure_threads``, ``samplers.worker_init``);
torch's defaults (``LAVISLITE_THREADS=torch``) give every process one thread
per core. ``OMP_NUM_THREADS`` is unset in every run, since it would override both.

    python benchmarks/thread_settings.py                 # writes benchmarks/results/thread_settings.json
    python benchmarks/thread_settings.py --steps 10 --load-procs 2

The competing load is ``--load-procs`` busy Python processes (default: half the
cores), started before a run and stopped after it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join("benchmarks", "results", "thread_settings.json")
BUSY = "while True: pass"


def run_once(setting: str, load_procs: int, args: argparse.Namespace) -> dict[str, Any]:
    """One train_throughput run; returns its figures (samples/s, step times, threads)."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env.pop("LAVISLITE_THREADS", None)
    if setting == "torch":
        env["LAVISLITE_THREADS"] = "torch"
    load = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(load_procs)]
    try:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, os.path.join(HERE, "train_throughput.py"), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--num-workers", str(args.num_workers), "--out", out.name]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                raise RuntimeError(f"train_throughput.py failed ({setting}, load {load_procs}):\n{proc.stderr[-3000:]}")
            report = json.loads(open(out.name, encoding="utf-8").read())
    finally:
        for p in load:
            p.kill()
            p.wait()
    return {
        "samples_per_sec": report["throughput"]["samples_per_sec"],
        "step_time_median_s": report["timing"]["step_time_median_s"],
        "data_wait_mean_s": report["timing"]["data_wait_mean_s"],
        "torch_num_threads_main": report["environment"]["torch_num_threads"],
        "last_loss": report["loss"]["last"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="demo training samples/s: lavislite thread settings vs torch defaults, quiet and loaded")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--load-procs", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="busy processes for the loaded runs")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    for machine, load in (("quiet", 0), ("loaded", args.load_procs)):
        results[machine] = {}
        for setting in ("lavislite", "torch"):
            start = time.time()
            results[machine][setting] = run_once(setting, load, args)
            print(f"{machine:6s} {setting:9s} {results[machine][setting]['samples_per_sec']:.2f} samples/s ({time.time() - start:.0f} s)", file=sys.stderr)
        results[machine]["speedup"] = results[machine]["lavislite"]["samples_per_sec"] / results[machine]["torch"]["samples_per_sec"]
    report = {
        "benchmark": "thread_settings",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "config": {"steps": args.steps, "warmup": args.warmup, "num_workers": args.num_workers, "load_procs": args.load_procs},
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
