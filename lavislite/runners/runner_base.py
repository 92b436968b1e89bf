"""runner_base: the epoch-based DeepSpeed training loop.

``train()`` reads top to bottom: ``setup()`` (output folder, data loaders,
engine, writers, resume) and then a written-out loop over epochs and batches.
The runner owns the DeepSpeed engine; the same code runs on CUDA (nccl) and on
a CPU (``DS_ACCELERATOR=cpu``, gloo).
"""

from __future__ import annotations

import copy
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from lavislite.common import dist_utils
from lavislite.common.config import Config
from lavislite.common.logger import JsonlWriter, logger
from lavislite.common.optims import SchedulerArgs
from lavislite.common.registry import registry
from lavislite.common.schema import ConfigError
from lavislite.datasets.datasets.samplers import EpochShardSampler, SeededSamples, worker_init

# Keys of a DeepSpeed config that the runner owns, with the run keys to use instead.
RUNNER_OWNED_DS_KEYS = {
    "optimizer": "run.init_lr, run.weight_decay, run.beta2 and run.part_lr (the optimizer is AdamW over trainable parameters)",
    "scheduler": "run.lr_sched, run.init_lr, run.min_lr, run.warmup_lr and run.warmup_steps",
}


@dataclass
class RunnerConfig:
    """The runner's keys of the ``run`` section, with their defaults."""

    task: str = "image_text_pretrain"
    runner: str = "runner_base"
    imports: list[str] = field(default_factory=list)
    seed: int = 42
    output_dir: str = "output"
    job_id: str | None = None  # default: a timestamp
    # optimisation
    max_epoch: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs)
    batch_size_train: int = 2  # per process (DeepSpeed micro-batch)
    batch_size_eval: int = 2
    accum_grad_iters: int = 1
    init_lr: float = 1e-4
    min_lr: float = 0.0
    warmup_lr: float = 0.0
    warmup_steps: int = 0
    lr_sched: str = "linear_warmup_cosine_lr"
    weight_decay: float = 0.05
    # A learning rate per model part (vit, ln_vision, qformer, queries, proj, llm);
    # parts not named use init_lr. Schedules scale every part alike.
    part_lr: dict[str, float] = field(default_factory=dict)
    beta2: float = 0.999
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    # DeepSpeed: inline settings and/or a JSON file; "auto" fields are filled
    # from the keys above so each value is stated once.
    deepspeed_config: dict[str, Any] = field(default_factory=dict)
    deepspeed_config_path: str | None = None
    # data
    num_workers: int = 2
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    valid_splits: list[str] = field(default_factory=list)
    test_splits: list[str] = field(default_factory=list)
    # logging / checkpoints
    log_freq: int = 10
    save_freq_epochs: int = 1
    tensorboard: bool = True
    resume_ckpt_path: str | None = None
    dist_backend: str | None = None  # default: nccl on CUDA, gloo on CPU

    @staticmethod
    def check_section(data: dict[str, Any]) -> list[str]:
        """Cross-key rules of the run section (messages relative to ``run``)."""
        problems = []
        if data["accum_grad_iters"] < 1:
            problems.append(f"accum_grad_iters: must be at least 1, got {data['accum_grad_iters']}")
            return problems
        # The DeepSpeed config is checked now, not after the model is built;
        # the world size comes from the launcher's environment.
        _, ds_problems = build_deepspeed_config(OmegaConf.create(data), int(os.environ.get("WORLD_SIZE", 1)))
        return problems + ds_problems


# DeepSpeed keys the run section already states, with the run key they come from.
def build_deepspeed_config(run: Any, world_size: int) -> tuple[dict[str, Any], list[str]]:
    """Builds the DeepSpeed config: file < inline < run values for "auto"/missing fields.

    Args:
        run: the ``run`` section (attribute access: a DictConfig or dataclass).
        world_size: the number of processes (for ``train_batch_size``).

    Returns:
        The config and its problems, each message relative to ``run``: a key the
        runner owns (``optimizer``, ``scheduler``), a concrete value that
        contradicts the run section, an unreadable JSON file.
    """
    ds: dict[str, Any] = {}
    problems: list[str] = []
    if run.deepspeed_config_path:
        try:
            with open(run.deepspeed_config_path, encoding="utf-8") as fh:
                ds = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            return {}, [f"deepspeed_config_path: cannot read {run.deepspeed_config_path}: {exc}"]
    inline = OmegaConf.to_container(run.deepspeed_config, resolve=True) if not isinstance(run.deepspeed_config, dict) else run.deepspeed_config
    ds = _deep_merge(ds, copy.deepcopy(inline))
    # DeepSpeed would accept these and then ignore them (the runner passes its own).
    for key, instead in RUNNER_OWNED_DS_KEYS.items():
        if key in ds:
            where = "deepspeed_config" if key in inline else f"deepspeed_config_path ({run.deepspeed_config_path})"
            problems.append(f"{where}: '{key}' is not used, the runner builds the {key}; set {instead} instead")

    def fill(keys: tuple[str, ...], value: Any, run_key: str, shown: Any = None) -> None:
        node = ds
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        current = node.get(keys[-1], "auto")
        if current == "auto" or current is None:
            node[keys[-1]] = value
        elif current != value:
            problems.append(
                f"deepspeed_config.{'.'.join(keys)} = {current!r} contradicts run.{run_key} = {value if shown is None else shown!r}; "
                f"set one of them (or 'auto')"
            )

    fill(("train_micro_batch_size_per_gpu",), int(run.batch_size_train), "batch_size_train")
    fill(("gradient_accumulation_steps",), int(run.accum_grad_iters), "accum_grad_iters")
    fill(("train_batch_size",), int(run.batch_size_train) * int(run.accum_grad_iters) * world_size, "batch_size_train x accum_grad_iters x world size")
    fill(("gradient_clipping",), float(run.grad_clip), "grad_clip")
    fill(("bf16", "enabled"), run.precision == "bf16", "precision", run.precision)
    fill(("fp16", "enabled"), run.precision == "fp16", "precision", run.precision)
    # The optimizer is ours (only trainable parameters, per-part groups); ZeRO
    # accepts it with this flag.
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("zero_optimization", {}).setdefault("stage", 0)
    return ds, problems


def fill_deepspeed_config(run: Any, world_size: int) -> dict[str, Any]:
    """``build_deepspeed_config`` that raises on any problem.

    Raises:
        ConfigError: naming each problem's ``run.`` key.
    """
    ds, problems = build_deepspeed_config(run, world_size)
    if problems:
        raise ConfigError([f"run.{p}" for p in problems])
    return ds


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _deep_merge(base[k], v)
        else:
            base[k] = v
    return base


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's random states (Python, NumPy, torch CPU and CUDA), loadable with ``weights_only=True``."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what ``rng_state`` returned."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def param_groups(model: torch.nn.Module, weight_decay: float, init_lr: float, part_lr: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Optimizer groups of trainable parameters only, one pair per model part.

    Each part (``model.parts()``: vit, ln_vision, qformer, queries, proj, llm)
    gets its learning rate from ``part_lr`` (default ``init_lr``), split into a
    decayed group and a non-decayed one (biases, norms, 1-d tensors).

    Raises:
        ConfigError: if ``part_lr`` names a part the model does not have.
    """
    part_lr = dict(part_lr or {})
    parts: dict[str, list[torch.nn.Parameter]] = model.parts() if hasattr(model, "parts") else {"model": list(model.parameters())}
    unknown = sorted(set(part_lr) - set(parts))
    if unknown:
        raise ConfigError([f"run.part_lr.{u}: unknown part; the model's parts are {', '.join(parts)}" for u in unknown])
    names = {id(p): n for n, p in model.named_parameters()}
    groups: list[dict[str, Any]] = []
    for part, params in parts.items():
        lr = float(part_lr.get(part, init_lr))
        trainable = [p for p in params if p.requires_grad]
        no_decay = [p for p in trainable if p.ndim < 2 or "bias" in names[id(p)] or "norm" in names[id(p)].lower()]
        decay = [p for p in trainable if all(p is not q for q in no_decay)]
        for ps, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "weight_decay": wd, "lr": lr, "part": part})
    return groups


@registry.register_runner("runner_base")
class RunnerBase:
    """Epoch-based training with DeepSpeed.

    Args:
        cfg: the validated run config.
        task: the task (its ``train_step`` is called per batch).
        model: the model (not yet wrapped).
        datasets: ``{name: {split: Dataset}}``.
        job_id: the output sub-folder name.
    """

    Config = RunnerConfig

    def __init__(self, cfg: Config, task: Any, model: torch.nn.Module, datasets: dict[str, dict[str, Dataset]], job_id: str) -> None:
        self.cfg = cfg
        self.run = cfg.run_cfg
        self.task = task
        self.model = model
        self.datasets = datasets
        self.job_id = job_id
        self.output_dir = os.path.join(self.run.output_dir, job_id)
        self.engine: Any = None
        self.global_step = 0
        self.start_epoch = 0

    # -- set-up, in order -------------------------------------------------------
    def setup(self) -> None:
        self.setup_output_dir()
        self.setup_dataloader()
        self.setup_engine()
        self.setup_writers()
        if self.run.resume_ckpt_path:
            self.resume(self.run.resume_ckpt_path)

    def setup_output_dir(self) -> None:
        if dist_utils.is_main_process():
            os.makedirs(self.output_dir, exist_ok=True)
            self.cfg.save(os.path.join(self.output_dir, "config.yaml"))
        dist_utils.barrier()

    def setup_dataloader(self) -> None:
        """The training loader: a seeded shard per rank, whole accumulation windows per epoch."""
        splits = [ds[s] for ds in self.datasets.values() for s in self.run.train_splits if s in ds]
        if not splits:
            have = "; ".join(f"{name}: {', '.join(by_split) or '(none)'}" for name, by_split in self.datasets.items())
            raise ConfigError([f"run.train_splits: none of {list(self.run.train_splits)} is a split of the datasets ({have})"])
        collate = splits[0].collater  # every instruction dataset shares the chat collater
        self.train_set = splits[0] if len(splits) == 1 else ConcatDataset(splits)
        world, rank = dist_utils.get_world_size(), dist_utils.get_rank()
        self.sampler = EpochShardSampler(len(self.train_set), num_replicas=world, rank=rank, seed=self.run.seed)
        self.train_loader = DataLoader(
            SeededSamples(self.train_set),
            batch_size=self.run.batch_size_train,
            sampler=self.sampler,
            num_workers=self.run.num_workers,
            collate_fn=collate,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.run.num_workers > 0,
            worker_init_fn=worker_init,
            # Its own generator, so starting the loader never draws from the
            # global torch RNG that dropout uses (a resumed run would drift).
            generator=torch.Generator().manual_seed(self.run.seed),
        )
        accum = self.run.accum_grad_iters
        batches = len(self.train_loader)
        if batches < accum:
            raise ConfigError(
                [
                    f"run.accum_grad_iters = {accum} but an epoch has only {batches} batch(es) per process "
                    f"({len(self.train_set)} samples / ({self.run.batch_size_train} per batch x {world} process(es))): "
                    "no optimizer step would run; lower accum_grad_iters or batch_size_train"
                ]
            )
        # Only whole accumulation windows: the last (batches % accum) batches of
        # an epoch are dropped, so every optimizer step averages exactly
        # accum_grad_iters batches and no window spans two epochs.
        self.steps_per_epoch = batches // accum
        self.batches_per_epoch = self.steps_per_epoch * accum
        if self.batches_per_epoch < batches:
            logger.info("the last %d batch(es) of each epoch are dropped (a partial accumulation window)", batches - self.batches_per_epoch)

    def setup_engine(self) -> None:
        import deepspeed

        ds_config = fill_deepspeed_config(self.run, dist_utils.get_world_size())
        self.ds_config = ds_config
        steps_per_epoch = self.steps_per_epoch
        self.max_steps = steps_per_epoch * self.run.max_epoch
        if self.run.max_steps is not None:
            self.max_steps = min(self.max_steps, self.run.max_steps)
        groups = param_groups(self.model, self.run.weight_decay, self.run.init_lr, self.run.part_lr)
        if not groups:
            raise ValueError("no trainable parameters: every part is frozen (see the model.freeze_* switches)")
        optimizer = torch.optim.AdamW(groups, lr=self.run.init_lr, betas=(0.9, self.run.beta2))
        sched_cls = registry.get_lr_scheduler_class(self.run.lr_sched)
        sched_args = SchedulerArgs(
            max_steps=max(1, self.max_steps),
            init_lr=self.run.init_lr,
            min_lr=self.run.min_lr,
            warmup_lr=self.run.warmup_lr,
            warmup_steps=self.run.warmup_steps,
        )
        self.engine, self.optimizer, _, self.lr_scheduler = deepspeed.initialize(
            model=self.model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: sched_cls(opt, sched_args),
            config=ds_config,
            dist_init_required=False,
        )
        logger.info(
            "DeepSpeed ZeRO-%s, %s, world size %d, %d optimizer steps (%d per epoch)",
            ds_config["zero_optimization"]["stage"],
            self.run.precision,
            dist_utils.get_world_size(),
            self.max_steps,
            steps_per_epoch,
        )

    def setup_writers(self) -> None:
        self.metrics: JsonlWriter | None = None
        self.tb: Any = None
        if dist_utils.is_main_process():
            self.metrics = JsonlWriter(os.path.join(self.output_dir, "metrics.jsonl"))
            if self.run.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(self.output_dir, "tensorboard"))

    # -- the loop -----------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Runs every epoch; returns a summary (last logged loss, steps, output folder)."""
        self.setup()
        start = time.time()
        last: dict[str, Any] = {}
        for epoch in range(self.start_epoch, self.run.max_epoch):
            last = self.train_epoch(epoch) or last
            if (epoch + 1) % self.run.save_freq_epochs == 0 or epoch + 1 == self.run.max_epoch or self.done:
                self.save_checkpoint(epoch)
            if self.done:
                break
        self.save_release()
        self.close()
        logger.info("training finished in %.1fs; outputs in %s", time.time() - start, self.output_dir)
        return {"output_dir": self.output_dir, "global_step": self.global_step, **last}

    @property
    def done(self) -> bool:
        return self.global_step >= self.max_steps

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        self.sampler.set_epoch(epoch)
        self.engine.train()
        accum = self.run.accum_grad_iters
        window = self._new_window()
        t0 = time.time()
        last: dict[str, Any] = {}
        bar = self._progress(self.batches_per_epoch, epoch)
        for i, samples in enumerate(self.train_loader):
            if i >= self.batches_per_epoch:
                break  # a partial accumulation window (see setup_dataloader)
            boundary = (i + 1) % accum == 0
            if boundary != self.engine.is_gradient_accumulation_boundary():
                raise RuntimeError(f"accumulation out of step with DeepSpeed at epoch {epoch}, batch {i}")
            out = self.task.train_step(self.engine, samples)
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.global_step}, batch {samples.get('ids')}")
            self.engine.backward(loss)
            self.engine.step()
            window["loss"] += float(loss.detach())
            window["batches"] += 1
            window["samples"] += len(samples["input_ids"])
            window["real"] += int(samples["attention_mask"].sum())
            window["padded"] += int(samples["attention_mask"].numel())
            if bar is not None:
                bar.update(1)
            if not boundary:
                continue
            self.global_step += 1
            if self.global_step % self.run.log_freq == 0 or self.done:
                last = self.log_window(epoch, window, time.time() - t0)
                if bar is not None:
                    bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
                window = self._new_window()
                t0 = time.time()
            if self.done:
                break
        if bar is not None:
            bar.close()
        return last

    @staticmethod
    def _new_window() -> dict[str, float]:
        """Sums over one log interval: loss, batches, samples, real and padded tokens."""
        return {"loss": 0.0, "batches": 0, "samples": 0, "real": 0, "padded": 0}

    def log_window(self, epoch: int, window: dict[str, Any], elapsed: float) -> dict[str, Any]:
        """Averages the window over all ranks and writes one metrics record (rank 0)."""
        stats = torch.tensor([window["loss"], window["batches"], window["samples"], window["real"], window["padded"]], dtype=torch.float64)
        if dist_utils.is_dist_avail_and_initialized():
            import torch.distributed as dist

            dist.all_reduce(stats)
        loss_sum, batches, n_samples, real, padded = stats.tolist()
        record = {
            "step": self.global_step,
            "epoch": epoch,
            "loss": loss_sum / max(batches, 1),
            "lr": float(self.lr_scheduler.get_last_lr()[0]),
            "samples": int(n_samples),  # in this interval, all ranks
            # With per-part rates, each part's current rate too (lr/proj, lr/llm, ...).
            **({f"lr/{g['part']}": float(g["lr"]) for g in self.optimizer.param_groups if "part" in g} if self.run.part_lr else {}),
            "samples_per_sec": n_samples / max(elapsed, 1e-9),
            "tokens_per_sec": real / max(elapsed, 1e-9),
            "real_token_fraction": real / max(padded, 1),
        }
        if dist_utils.is_main_process():
            logger.info(
                "epoch %d step %d/%d  loss %.4f  lr %.3e  %.1f samples/s  %.0f tokens/s",
                epoch, self.global_step, self.max_steps, record["loss"], record["lr"], record["samples_per_sec"], record["tokens_per_sec"],
            )
            assert self.metrics is not None
            self.metrics.write(record)
            if self.tb is not None:
                for key in ("loss", "lr", "samples_per_sec", "tokens_per_sec"):
                    self.tb.add_scalar(f"train/{key}", record[key], self.global_step)
                self.tb.flush()
        return record

    def _progress(self, total: int, epoch: int) -> Any:
        # A live bar on an interactive terminal; logs and CI get the interval lines only.
        if not dist_utils.is_main_process() or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=f"epoch {epoch}", dynamic_ncols=True)

    # -- checkpoints -----------------------------------------------------------------
    def save_checkpoint(self, epoch: int) -> None:
        """A DeepSpeed checkpoint (every rank) plus each rank's own random state, for exact resume."""
        state = {"epoch": epoch, "global_step": self.global_step}
        tag_dir = os.path.join(self.output_dir, "checkpoints", f"epoch_{epoch}")
        self.engine.save_checkpoint(os.path.join(self.output_dir, "checkpoints"), tag=f"epoch_{epoch}", client_state=state)
        # DeepSpeed writes client_state into rank 0's file only (ZeRO 0-2), so
        # every rank keeps its random streams (seeded seed + rank) in its own file.
        torch.save(rng_state(), os.path.join(tag_dir, f"rng_state_rank{dist_utils.get_rank()}.pt"))
        dist_utils.barrier()
        logger.info("saved checkpoint epoch_%d", epoch)

    def resume(self, path: str) -> None:
        """Continues from a DeepSpeed checkpoint folder (``.../checkpoints/epoch_N``)."""
        load_dir, tag = os.path.split(os.path.normpath(path))
        # DeepSpeed asserts (no message) on a missing folder; say what is wrong.
        if not os.path.isdir(path):
            raise FileNotFoundError(f"run.resume_ckpt_path: no DeepSpeed checkpoint at {path}")
        _, client = self.engine.load_checkpoint(load_dir, tag=tag)
        if client is None:
            raise FileNotFoundError(f"run.resume_ckpt_path: no DeepSpeed checkpoint at {path}")
        self.start_epoch = int(client["epoch"]) + 1
        self.global_step = int(client["global_step"])
        rng_file = os.path.join(path, f"rng_state_rank{dist_utils.get_rank()}.pt")
        if os.path.exists(rng_file):
            set_rng_state(torch.load(rng_file, weights_only=True))
        else:
            logger.warning("%s has no random state for rank %d: random streams restart from the seed", path, dist_utils.get_rank())
        logger.info("resumed from %s at epoch %d, step %d", path, self.start_epoch, self.global_step)

    def save_release(self) -> None:
        """A small file with only the trainable weights (gathered under ZeRO-3) and the config."""
        import deepspeed

        module = self.engine.module
        trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        state: dict[str, torch.Tensor] = {}
        with deepspeed.zero.GatheredParameters([p for _, p in trainable], modifier_rank=None, enabled=self.ds_config["zero_optimization"]["stage"] == 3):
            if dist_utils.is_main_process():
                state = {n: p.detach().float().cpu().clone() for n, p in trainable}
        if dist_utils.is_main_process():
            path = os.path.join(self.output_dir, "checkpoint_release.pth")
            torch.save({"model": state, "config": OmegaConf.to_container(self.cfg.config), "global_step": self.global_step}, path)
            logger.info("saved %d trainable tensors to %s", len(state), path)
        dist_utils.barrier()

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.tb is not None:
            self.tb.close()

