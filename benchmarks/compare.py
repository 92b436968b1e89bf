"""``train_throughput.py --compare``: the runner's batchings against each other and a MiniGPT4Qwen-style baseline.

Every variant trains the demo model (or ``--full-size``'s) through the real
runner (``train_throughput.py``'s run: the config, task, datasets, model and
``RunnerBase.train()`` exactly as ``train.py`` builds them) on:

- ``demo``: the bundled demo data (1,248 short conversations, ``max_len`` 256);
- ``llava_shaped``: conversations generated here from the seeded length model
  below, in LLaVA's JSON format, on the demo's training images (``max_len`` 512).

Variants (``train_throughput.VARIANT_OPTIONS``): ``pad`` (each batch padded to
its longest sample, the default), ``group`` (``run.group_by_length: true``),
``pack`` (``run.packing: true``: rows of up to ``max_len`` tokens, so a
``batch_size_train`` of 8 is 8 rows holding several samples each) and
``minigpt4qwen``: as MiniGPT4Qwen trains, every sample padded to 512 tokens,
tokenised inside the training step (in the main process, between the steps'
compute; ``step_tokenising``) and the loss over full-vocabulary logits at every
position (``model.loss_impl: full_logits``). The training loop is the shipped one
in all four.

Interleaving: one process per variant and data set (its own memory figure);
all start together, train their warm-up steps, then take turns: in each of
``--rounds`` rounds every variant trains ``steps / rounds`` timed steps while
the others wait (paused in the runner's ``on_step_end`` hook, untimed), in an
order that rotates each round, so that the machine's noise falls on all alike.

The LLaVA-shaped length model (``write_llava_shaped``; seed ``--llava-seed``):
after LLaVA-1.5's 665K mix (VQAv2/GQA/OCR multi-turn short answers; LLaVA
conversations; detailed descriptions and complex reasoning; ShareGPT text-only),
with a word ~ 1.2 Qwen tokens:

- 10% text-only: 1-3 turns (P = 0.5/0.3/0.2), questions lognormal(median 20
  words, sigma 0.6), replies lognormal(median 110 words, sigma 0.8);
- 90% with one image (32 image tokens after the Q-Former):
  - 35% short-answer VQA: 1-10 turns (geometric, p = 0.3), questions
    lognormal(9, 0.35), replies 1-3 words;
  - 35% conversation: 1-6 turns (geometric, p = 0.5), questions
    lognormal(11, 0.4), replies lognormal(40, 0.8);
  - 30% description / reasoning: one turn, question lognormal(12, 0.4),
    reply lognormal(100, 0.6).

Reply and question lengths are clipped to 1-450 words; the text processor cuts
a conversation at ``max_len`` (512) tokens, as LLaVA cuts at 2,048.
"""

from __future__ import annotations

import json
import math
import os
import random
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
from torch.utils.data import Dataset

# MiniGPT4Qwen pads every sample to its max_txt_len.
BASELINE_PAD_TO = 512
LLAVA_MAX_LEN = 512
DEMO_IMAGES = [f"shape_{i:03d}.jpg" for i in range(288)]  # the demo's training split
WORDS = (
    "the a of to and in is it that for on with as this are be at by from or an was which one image shows there has "
    "colour shape small large red green blue yellow circle square triangle light background centre near left right top "
    "bottom object picture scene person people two three many some each other what where when how why can could would "
    "should may might will more most very also only just then than because while after before over under between into "
    "through during about above below around again once here those these such same different first second last next "
    "part side edge line point area space form size number kind type way thing place time day year water tree sky road"
).split()


class NeedsCuda(RuntimeError):
    """``--full-size`` asked for on a machine without CUDA."""


# -- the LLaVA-shaped data ----------------------------------------------------------------
def _words(rng: random.Random, median: float, sigma: float) -> str:
    n = int(round(rng.lognormvariate(math.log(median), sigma)))
    return " ".join(rng.choice(WORDS) for _ in range(min(450, max(1, n))))


def _turns(rng: random.Random, p: float, cap: int) -> int:
    n = 1
    while n < cap and rng.random() > p:
        n += 1
    return n


def llava_shaped_records(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` LLaVA-format conversations drawn from the module's length model (deterministic in ``seed``).

    Args:
        n: conversations.
        seed: the length model's seed.

    Returns:
        Records ``{"id", "image"?, "conversations": [{"from", "value"}]}``; text-only ones have no ``image``.
    """
    rng = random.Random(seed)
    records = []
    for i in range(n):
        kind = "text" if rng.random() < 0.10 else rng.choices(["vqa", "conv", "detail"], weights=[35, 35, 30])[0]
        if kind == "text":
            n_turns = rng.choices([1, 2, 3], weights=[5, 3, 2])[0]
            qa = [(_words(rng, 20, 0.6), _words(rng, 110, 0.8)) for _ in range(n_turns)]
        elif kind == "vqa":
            qa = [(_words(rng, 9, 0.35), " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))) for _ in range(_turns(rng, 0.3, 10))]
        elif kind == "conv":
            qa = [(_words(rng, 11, 0.4), _words(rng, 40, 0.8)) for _ in range(_turns(rng, 0.5, 6))]
        else:
            qa = [(_words(rng, 12, 0.4), _words(rng, 100, 0.6))]
        conversations = []
        for t, (question, answer) in enumerate(qa):
            if t == 0 and kind != "text":
                question = "<image>\n" + question
            conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        record: dict[str, Any] = {"id": f"llava_shaped_{kind}_{i:05d}", "conversations": conversations}
        if kind != "text":
            record["image"] = rng.choice(DEMO_IMAGES)
        records.append(record)
    return records


def write_llava_shaped(path: str, n: int, seed: int) -> str:
    """Writes ``llava_shaped_records(n, seed)`` as a LLaVA JSON list; returns ``path``."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(llava_shaped_records(n, seed), fh)
    return path


def llava_shaped_config(demo_yaml: str, llava_file: str, out_yaml: str) -> str:
    """The demo run config with one training set, ``llava_file`` (LLaVA format, the demo's images, max_len 512).

    Returns:
        ``out_yaml``, written.
    """
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(demo_yaml)
    llava = cfg.datasets.llava_instruction
    llava.build_info.annotations.train.storage = llava_file
    for split in ("train", "eval"):
        llava.text_processor[split].max_len = LLAVA_MAX_LEN
    cfg.datasets = {"llava_instruction": llava}  # no minigpt4 set, no validation set
    OmegaConf.save(cfg, out_yaml)
    return out_yaml


# -- the MiniGPT4Qwen-style baseline's step ---------------------------------------------
class StepTokenisedDataset(Dataset):
    """An instruction dataset whose items are untokenised (images loaded, turns as text), as MiniGPT4Qwen's.

    Args:
        inner: the built ``InstructionDataset`` (its samples, images and text processor).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.text_processor = inner.text_processor

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.inner.samples[index]
        images = [self.inner.load_image(sample, p) for p in sample.images]
        return {"id": sample.id, "image": torch.stack(images) if images else None, "turns": sample.turns}

    def collater(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        """Only ids and the items: tokenising and padding happen in the training step."""
        return {"ids": [b["id"] for b in batch], "items": batch}


class StepTokenisingTask:
    """The run's task, but each training step first tokenises its batch and pads every sample to 512.

    Everything else is the wrapped task's (``train_step`` then calls its own);
    the tensors go into the batch dict the runner holds, so its token counts
    (``attention_mask``) see the baseline's padding.
    """

    def __init__(self, task: Any, text_processor: Any, pad_to: int = BASELINE_PAD_TO) -> None:
        self.task = task
        self.text_processor = text_processor
        self.pad_to = pad_to

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def supervised_tokens(self, samples: dict[str, Any]) -> int:
        """Tokenises the batch (the runner asks for its count first, inside the timed step) and counts its targets."""
        self.tokenise(samples)
        return self.task.supervised_tokens(samples)

    def train_step(self, model: Any, samples: dict[str, Any]) -> dict[str, Any]:
        self.tokenise(samples)
        return self.task.train_step(model, samples)

    def tokenise(self, samples: dict[str, Any]) -> None:
        """Tokenises and pads the batch's items into ``samples`` (once: the runner reads the count before the step)."""
        if "input_ids" in samples:
            return
        tp = self.text_processor
        pad_id = int(tp.tokenizer.pad_token_id)
        items = samples["items"]
        n = len(items)
        input_ids = torch.full((n, self.pad_to), pad_id, dtype=torch.long)
        labels = torch.full((n, self.pad_to), -100, dtype=torch.long)
        attention = torch.zeros((n, self.pad_to), dtype=torch.long)
        images, counts = [], []
        for i, item in enumerate(items):
            n_images = 0 if item["image"] is None else len(item["image"])
            text = tp(item["turns"], num_images=n_images, sample_id=item["id"])
            ids = text["input_ids"][: self.pad_to]
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(ids)] = torch.tensor(text["labels"][: self.pad_to])
            attention[i, : len(ids)] = 1
            counts.append(int(text["num_images"]))
            if text["num_images"]:
                images.append(item["image"][: text["num_images"]])
        samples.update(
            input_ids=input_ids, labels=labels, attention_mask=attention, image=torch.cat(images) if images else None, num_images=counts
        )


def step_tokenising(task: Any, datasets: dict[str, dict[str, Dataset]], train_splits: Any) -> tuple[Any, dict[str, dict[str, Dataset]]]:
    """The baseline's task and datasets: the training splits untokenised, the task tokenising in the step."""
    wrapped = {name: {split: (StepTokenisedDataset(ds) if split in train_splits else ds) for split, ds in by.items()} for name, by in datasets.items()}
    first = next(ds for by in wrapped.values() for split, ds in by.items() if split in train_splits)
    return StepTokenisingTask(task, first.text_processor), wrapped


# -- the interleaved comparison -----------------------------------------------------------
class Worker:
    """One variant's run of ``train_throughput.py``, paused and resumed through a pipe."""

    def __init__(self, script: str, argv: list[str], log_path: str) -> None:
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        self.log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in finish)
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, script, *argv, "--control-fds", f"{to_child_r},{from_child_w}"],
            pass_fds=(to_child_r, from_child_w), stdout=subprocess.DEVNULL, stderr=self.log,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.reader = os.fdopen(self.from_child, "r")
        self.writer = os.fdopen(self.to_child, "w")

    def wait_ready(self, timeout: float) -> str:
        """Blocks until the run pauses (``ready <step>``); raises with its log's tail if it exits instead."""
        sel = selectors.DefaultSelector()
        sel.register(self.reader, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(timeout=1.0):
                line = self.reader.readline()
                if line:
                    return line.strip()
                break
            if self.proc.poll() is not None:
                break
        self.proc.kill()
        self.log.flush()
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            tail = fh.read()[-3000:]
        raise RuntimeError(f"benchmark run {self.proc.args[2:]} stopped (exit {self.proc.poll()}):\n{tail}")

    def go(self) -> None:
        self.writer.write("go\n")
        self.writer.flush()

    def finish(self, timeout: float) -> int:
        self.go()
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            self.log.close()
        return rc


def run_compare(args: Any, script: str) -> int:
    """Runs every (data, variant) interleaved and writes the comparison JSON (the contract in benchmarks/README.md).

    Returns:
        0; 2 when ``--full-size`` has no CUDA.
    """
    if args.full_size and not torch.cuda.is_available():
        print("error: --full-size needs a CUDA GPU (torch sees none here); run --compare without it on a CPU", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="lavislite_compare_")
    steps_per_round = max(1, math.ceil(args.steps / args.rounds))
    llava_file = write_llava_shaped(os.path.join(tmp, "llava_shaped.json"), args.llava_samples, args.llava_seed)
    common = [
        "--steps", str(steps_per_round * args.rounds), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
        "--precision", args.precision, "--zero", str(args.zero), "--num-workers", str(args.num_workers),
        "--chunk", str(steps_per_round), "--llava-file", llava_file,
        *(["--full-size"] if args.full_size else []), *(["--options", *args.options] if args.options else []),
    ]
    started = time.time()
    data: dict[str, Any] = {}
    for name in args.datasets:
        print(f"[compare] {name}: starting {', '.join(args.variants)}", file=sys.stderr, flush=True)
        workers = {
            v: Worker(script, ["--data", name, "--variant", v, "--out", os.path.join(tmp, f"{name}_{v}.json"), *common], os.path.join(tmp, f"{name}_{v}.log"))
            for v in args.variants
        }
        try:
            for w in workers.values():
                w.wait_ready(timeout=1800)  # set-up and warm-up, all together
            order = list(args.variants)
            for r in range(args.rounds):
                turn = order[r % len(order):] + order[: r % len(order)]
                for v in turn:
                    workers[v].go()
                    workers[v].wait_ready(timeout=3600)
                print(f"[compare] {name}: round {r + 1}/{args.rounds} done ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
            for v, w in workers.items():
                if w.finish(timeout=600) != 0:
                    raise RuntimeError(f"{name}/{v} failed; see {w.log_path}")
        except BaseException:
            for w in workers.values():
                if w.proc.poll() is None:
                    w.proc.kill()
            raise
        reports = {v: json.load(open(os.path.join(tmp, f"{name}_{v}.json"), encoding="utf-8")) for v in args.variants}
        data[name] = summarise_data(reports, steps_per_round)
    report = {
        "benchmark": "train_throughput --compare",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {
            "datasets": list(args.datasets), "variants": list(args.variants), "rounds": args.rounds, "steps_per_round": steps_per_round,
            "timed_steps": steps_per_round * args.rounds, "warmup_steps": args.warmup, "batch_size": args.batch_size,
            "precision": args.precision, "zero_stage": args.zero, "num_workers": args.num_workers, "full_size": bool(args.full_size),
            "llava_samples": args.llava_samples, "llava_seed": args.llava_seed, "baseline_pad_to": BASELINE_PAD_TO, "options": list(args.options),
        },
        "environment": next(iter(reports.values()))["environment"] if data else {},
        "model": next(iter(reports.values()))["model"] if data else {},
        "data": data,
        "checks": checks(data),
        "total_time_s": time.time() - started,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
        fh.write("\n")
    print(json.dumps(report, indent=2), flush=True)
    return 0


def variant_figures(rep: dict[str, Any], steps_per_round: int) -> dict[str, Any]:
    """One variant's contract figures (and more) from its run's report."""
    tp, tokens, memory, timing = rep["throughput"], rep["tokens"], rep["memory"], rep["timing"]
    times = timing["step_times_s"]
    rounds = [times[i : i + steps_per_round] for i in range(0, len(times), steps_per_round)]
    return {
        "samples_per_sec": tp["samples_per_sec"],
        "real_tokens_per_sec": tp["tokens_per_sec"],
        "real_token_fraction": tokens["real_token_fraction_pooled"],
        "peak_memory_bytes": memory["training_peak_bytes"] if memory.get("training_peak_bytes") is not None else memory["peak_memory_bytes"],
        "peak_memory_kind": memory.get("training_peak_kind") or memory["peak_memory_kind"],
        "process_peak_memory_bytes": memory["peak_memory_bytes"],
        "supervised_tokens_per_sec": tp["supervised_tokens_per_sec"],
        "padded_tokens_per_sec": tp["padded_tokens_per_sec"],
        "mfu": tp.get("mfu"),
        "step_time_mean_s": timing["step_time_mean_s"],
        "step_time_median_s": timing["step_time_median_s"],
        "data_wait_mean_s": timing["data_wait_mean_s"],
        "step_time_per_round_s": [statistics.fmean(r) for r in rounds],
        "samples": tokens["samples"],
        "real_tokens": tokens["real_tokens"],
        "padded_positions": tokens["padded_positions"],
        "supervised_tokens": tokens["supervised_tokens"],
        "samples_per_row": tokens["samples"] / max(1, tokens.get("rows", tokens["samples"])),
        "loss_first": rep["loss"]["first"],
        "loss_last": rep["loss"]["last"],
        "train_samples": rep["config"]["train_samples"],
        "batch_size": rep["config"]["batch_size_per_rank"],
    }


def summarise_data(reports: dict[str, dict[str, Any]], steps_per_round: int) -> dict[str, Any]:
    """``{"variants": {v: figures}, "ratios": ...}`` for one data set."""
    variants = {v: variant_figures(rep, steps_per_round) for v, rep in reports.items()}
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for ref in ("minigpt4qwen", "pad"):
        if ref not in variants:
            continue
        ratios[f"to_{ref}"] = {
            v: {k: f[k] / variants[ref][k] for k in ("samples_per_sec", "real_tokens_per_sec", "peak_memory_bytes") if variants[ref][k]}
            for v, f in variants.items()
        }
    return {"variants": variants, "ratios": ratios}


def checks(data: dict[str, Any]) -> dict[str, Any]:
    """Issue 18's thresholds on the LLaVA-shaped data (None where a needed variant did not run)."""
    llava = data.get("llava_shaped", {}).get("variants", {})

    def ratio(a: str, b: str) -> float | None:
        return llava[a]["real_tokens_per_sec"] / llava[b]["real_tokens_per_sec"] if a in llava and b in llava else None

    pack_pad, pack_base = ratio("pack", "pad"), ratio("pack", "minigpt4qwen")
    frac = llava["pack"]["real_token_fraction"] if "pack" in llava else None
    return {
        "pack_real_token_fraction": frac,
        "pack_real_token_fraction_ge_0.95": None if frac is None else frac >= 0.95,
        "pack_over_pad_real_tokens_per_sec": pack_pad,
        "pack_over_pad_ge_1.6": None if pack_pad is None else pack_pad >= 1.6,
        "pack_over_minigpt4qwen_real_tokens_per_sec": pack_base,
        "pack_over_minigpt4qwen_ge_2": None if pack_base is None else pack_base >= 2.0,
    }
