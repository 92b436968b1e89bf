"""Issue 18.2: one optimizer step of 2 processes x 2 accumulated micro-batches (ZeRO-2) gives the gradient of
one process on the whole global batch, the mean over its supervised tokens, however unequal the micro-batches.

Eight demo images with one-word answers, one of them with a reply of ~190
tokens: whichever micro-batch holds it has tens of times the tokens of the
others. A runner registered through ``run.imports`` (no test hook in the
library) turns dropout off, records each micro-batch's ids and token count,
and saves the full gradients (``deepspeed.utils.safe_get_full_grad``) just
before the optimizer step. The one-process reference also computes, for the
two-process run's own micro-batches, each one's mean-loss gradient: their
token-weighted sum reproduces the reference (so the micro-batches are
rebuilt exactly) and their plain mean (the old weighting, DeepSpeed's
average of micro-batch means) misses it by far more than the tolerance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import DEMO_DATA, demo_data_config, launch

pytestmark = pytest.mark.slow

RUNNER = '''
import json
import os

import torch

from lavislite.common import dist_utils
from lavislite.common.registry import registry
from lavislite.datasets.datasets.samplers import SeededSamples, sample_seed
from lavislite.runners.runner_base import RunnerBase


@registry.register_runner("records_grads")
class RecordsGrads(RunnerBase):
    """Step 1's full gradients (before the update) and its micro-batches; dropout off."""

    def setup_engine(self):
        for module in self.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "attention_dropout", None), float):
                module.attention_dropout = 0.0  # attention dropout as a rate (the Q-Former's, transformers' attention interface)
        super().setup_engine()
        step = self.engine.step

        def step_and_record(*args, **kwargs):
            if self.engine.is_gradient_accumulation_boundary() and self.global_step == 0:
                self.record_gradients()
            return step(*args, **kwargs)

        self.engine.step = step_and_record
        self.micro = []

    def save_checkpoint(self, tag, next_epoch, next_batch):
        pass  # not what is tested: a DeepSpeed checkpoint costs seconds here

    def forward_backward(self, samples, n_tokens, scale):
        self.micro.append({"ids": list(samples["ids"]), "tokens": n_tokens})
        return super().forward_backward(samples, n_tokens, scale)

    def record_gradients(self):
        from deepspeed.utils import safe_get_full_grad

        named = [(n, p) for n, p in self.engine.module.named_parameters() if p.requires_grad]
        grads = {n: safe_get_full_grad(p).detach().float().cpu().clone() for n, p in named}  # every rank joins
        rank = dist_utils.get_rank()
        with open(os.path.join(self.output_dir, f"micro_rank{rank}.json"), "w") as fh:
            json.dump(self.micro, fh)
        if rank == 0:
            torch.save(grads, os.path.join(self.output_dir, "grads.pt"))
        groups_file = os.environ.get("TOKEN_MEAN_GROUPS")
        if groups_file:
            self.per_group_gradients(named, json.load(open(groups_file)))

    def per_group_gradients(self, named, groups):
        """Each given micro-batch's own mean-loss gradient, on the weights before the update."""
        seeded = SeededSamples(self.train_set)
        index = {self.train_set[i]["id"]: i for i in range(len(self.train_set))}
        out = []
        for ids in groups:
            items = [seeded[(index[i], sample_seed(self.run.seed, 0, index[i]))] for i in ids]
            loss = self.task.train_step(self.engine.module, self.train_loader.collate_fn(items))["loss"]
            out.append([g.detach().float().cpu() for g in torch.autograd.grad(loss, [p for _, p in named])])
        torch.save({"names": [n for n, _ in named], "grads": out}, os.path.join(self.output_dir, "group_grads.pt"))
'''

SHORT = ["red", "blue", "green", "circle", "square", "small", "two"]


def _annotations(path: Path) -> Path:
    images = sorted(p.name for p in (DEMO_DATA / "images").glob("*.jpg"))[:8]
    long_reply = " ".join(["a red square beside a blue circle"] * 27)
    records = [
        {"id": f"tm_{k}", "image": image, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": long_reply if k == 5 else SHORT[k % len(SHORT)]}]}
        for k, image in enumerate(images)
    ]
    path.write_text(json.dumps(records))
    return path


def _train(tmp_path: Path, name: str, nproc: int, run: dict, env_groups: Path | None = None) -> Path:
    runner = tmp_path / "records_grads.py"
    runner.write_text(RUNNER)
    settings = {
        "runner": "records_grads", "imports": [str(runner)], "output_dir": str(tmp_path), "job_id": name, "seed": 7,
        "max_epoch": 1, "num_workers": 0, "log_freq": 1, "init_lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 0,
        "tensorboard": False, "deepspeed_config": {"zero_optimization": {"stage": 2}}, **run,
    }
    cfg = demo_data_config(tmp_path / f"{name}.yaml", "llava_instruction", _annotations(tmp_path / "tm.json"), settings)
    if env_groups is not None:
        os.environ["TOKEN_MEAN_GROUPS"] = str(env_groups)
    try:
        proc = launch("train.py", ["--cfg-path", str(cfg)], nproc=nproc, timeout=600)
    finally:
        os.environ.pop("TOKEN_MEAN_GROUPS", None)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp_path / name


def test_two_ranks_of_unequal_micro_batches_step_as_one_process_on_the_global_token_mean(tmp_path: Path) -> None:
    dist = _train(tmp_path, "dist", 2, {"batch_size_train": 2, "accum_grad_iters": 2})
    micro = [m for rank in (0, 1) for m in json.loads((dist / f"micro_rank{rank}.json").read_text())]
    tokens = [m["tokens"] for m in micro]
    assert len(micro) == 4 and sorted(i for m in micro for i in m["ids"]) == [f"tm_{k}" for k in range(8)]
    assert max(tokens) >= 20 * min(tokens), tokens  # very different micro-batches
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps([m["ids"] for m in micro]))

    # ZeRO-0: plain .grad on one process, and autograd.grad for the per-micro-batch gradients meets no ZeRO hook.
    ref = _train(tmp_path, "one", 1, {"batch_size_train": 8, "accum_grad_iters": 1, "deepspeed_config": {"zero_optimization": {"stage": 0}}}, env_groups=groups)
    got, want = torch.load(dist / "grads.pt"), torch.load(ref / "grads.pt")
    assert got.keys() == want.keys() and len(want) > 50
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")

    # The same micro-batches, each's own gradient on the same weights: token-weighted they are the reference
    # (rebuilt exactly), averaged as DeepSpeed averaged micro-batch means they are not.
    per_group = torch.load(ref / "group_grads.pt")
    total = sum(tokens)
    worst_old = 0.0
    for k, name in enumerate(per_group["names"]):
        grads = [g[k] for g in per_group["grads"]]
        weighted = sum(n / total * g for n, g in zip(tokens, grads))
        torch.testing.assert_close(weighted, want[name], atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
        worst_old = max(worst_old, float((sum(grads) / len(grads) - want[name]).abs().max()))
    assert worst_old > 100 * 1e-5, worst_old

    # The updated trainable weights agree too, and the logged loss is the step's token mean.
    from safetensors.torch import load_file

    a, b = load_file(dist / "release" / "model.safetensors"), load_file(ref / "release" / "model.safetensors")
    for name in b:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-5)
    dist_loss = [json.loads(line) for line in (dist / "metrics.jsonl").read_text().splitlines()][0]["loss"]
    ref_loss = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()][0]["loss"]
    assert abs(dist_loss - ref_loss) <= 1e-5
