"""runner_base: the epoch-based DeepSpeed training loop.

``train()`` reads top to bottom: ``setup()`` (run folder, data loader, engine,
writers, resume), then a written-out loop over epochs, each followed by
validation and a checkpoint, then the test splits and the release. The runner
owns the DeepSpeed engine; the same code runs on CUDA (nccl) and on a CPU
(``DS_ACCELERATOR=cpu``, gloo).

What a run survives: a kill at any moment (atomic step and epoch checkpoints,
``run.resume: auto``), ranks that see different data (every rank joins the
same collectives), a non-finite loss (``run.on_nonfinite_loss``).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from omegaconf import OmegaConf
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from lavislite.common import dist_utils
from lavislite.common.config import Config
from lavislite.common.errors import CheckpointError, MissingFileError
from lavislite.common.logger import JsonlWriter, logger
from lavislite.common.optims import SchedulerArgs
from lavislite.common.registry import registry
from lavislite.common.schema import ConfigError
from lavislite.datasets.bad_samples import BAD_SAMPLES_FILE, BAD_SAMPLES_KEY, DEFAULT_MAX_BAD_FRACTION, TRUNCATED_KEY, BadSampleTracker
from lavislite.datasets.datasets.samplers import (
    EpochShardSampler,
    LengthGroupedBatchSampler,
    MixtureSampler,
    PackingBatchSampler,
    SeededSamples,
    worker_init,
)
from lavislite.runners import checkpoints as ckpt
from lavislite.runners.deepspeed_config import build_deepspeed_config, fill_deepspeed_config
from lavislite.tasks.scorers import lookup_metric, numeric_paths


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
    # The run's length in optimizer steps; when set it wins over max_epoch (as in
    # transformers' Trainer): epochs continue until this many steps are taken.
    max_steps: int | None = None
    batch_size_train: int = 2  # per process (DeepSpeed micro-batch)
    batch_size_eval: int = 2
    accum_grad_iters: int = 1
    init_lr: float = 1e-4
    min_lr: float = 0.0
    warmup_lr: float = 0.0
    warmup_steps: int = 0
    lr_sched: str = "linear_warmup_cosine_lr"
    lr_decay_rate: float = 0.9  # linear_warmup_step_lr: lr x this per epoch
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
    # Batches of similar token counts (image placeholder tokens included), text-only
    # and image samples in separate batches (LLaVA's group_by_modality_length):
    # far less padding when lengths vary. Seeded by (seed, epoch), resumable mid-epoch,
    # but a mid-epoch resume must keep batch_size_train and the world size.
    group_by_length: bool = False
    # Packing: several samples per row (first-fit-decreasing over a look-ahead window
    # of packing_window samples), each with its own position ids and attention;
    # batch_size_train then counts rows. packing_max_len: a row's tokens (default:
    # the text processor's max_len).
    packing: bool = False
    packing_max_len: int | None = None
    packing_window: int = 1000
    # Mixing (datasets.<name>.sample_ratio on every training set): draws per epoch,
    # all ranks together (default: the training sets' total sample count). Only
    # with sample_ratio; runner_iter's data passes are this long too.
    samples_per_epoch: int | None = None
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    # validation every val_freq epochs (best weights by best_metric); test splits at the end, with the best weights
    valid_splits: list[str] = field(default_factory=list)
    # The metric that picks best/, dataset/split/metric (a / path into nested metrics:
    # pope/test/f1, mme/test/Perception/total); higher is better. Default: the mean of
    # every validation split's agg_metrics (whatever their scales).
    best_metric: str | None = None
    test_splits: list[str] = field(default_factory=list)
    val_freq: int = 1
    # logging / checkpoints
    log_freq: int = 10
    save_freq_epochs: int = 1
    save_freq_steps: int = 0  # also a checkpoint every N optimizer steps (0: epoch ends only)
    keep_last: int = 0  # keep the newest N complete checkpoints (0: all)
    tensorboard: bool = True
    resume: Literal["", "auto"] = ""  # auto: continue from the run folder's latest complete checkpoint
    resume_ckpt_path: str | None = None  # or from this checkpoint folder
    dist_backend: str | None = None  # default: nccl on CUDA, gloo on CPU
    # A collective that waits longer than this fails (every rank exits) instead of hanging.
    dist_timeout_minutes: float = 30.0
    # A non-finite loss: stop (naming the step and samples), or skip the batch (zero gradient) up to max_nonfinite_steps times.
    on_nonfinite_loss: Literal["stop", "skip"] = "stop"
    max_nonfinite_steps: int = 10

    @staticmethod
    def check_section(data: dict[str, Any]) -> list[str]:
        """Cross-key rules of the run section (messages relative to ``run``)."""
        problems = []
        for key in ("accum_grad_iters", "log_freq", "val_freq", "save_freq_epochs", "batch_size_train", "batch_size_eval"):
            if data[key] < 1:
                problems.append(f"{key}: must be at least 1, got {data[key]}")
        if data["packing_max_len"] is not None and data["packing_max_len"] < 1:
            problems.append(f"packing_max_len: must be at least 1, got {data['packing_max_len']}")
        if data["samples_per_epoch"] is not None and data["samples_per_epoch"] < 1:
            problems.append(f"samples_per_epoch: must be at least 1, got {data['samples_per_epoch']}")
        if data["packing_window"] < 1:
            problems.append(f"packing_window: must be at least 1, got {data['packing_window']}")
        if problems:
            return problems
        if data["resume"] and data["resume_ckpt_path"]:
            problems.append("resume: 'auto' and resume_ckpt_path both set; pick one")
        # The DeepSpeed config is checked now, not after the model is built;
        # the world size comes from the launcher's environment.
        _, ds_problems = build_deepspeed_config(OmegaConf.create(data), int(os.environ.get("WORLD_SIZE", 1)))
        return problems + ds_problems


class NonFiniteLossError(FloatingPointError):
    """The loss was NaN or infinite (``run.on_nonfinite_loss: stop``, or too many skips)."""


def token_mean_loss_scale(global_tokens: int, dp_world_size: int, accum_steps: int) -> float:
    """What a micro-batch's summed token losses are multiplied by before ``engine.backward``.

    DeepSpeed divides each backward's loss by ``gradient_accumulation_steps``
    and averages the gradients over the data-parallel ranks, so the step's
    gradient is ``1 / (accum_steps * dp_world_size)`` times the sum of every
    backward's gradient. Scaled by ``accum_steps * dp_world_size /
    global_tokens``, the summed token losses of all micro-batches on all ranks
    then give the gradient of their mean over the window's ``global_tokens``
    supervised tokens (what transformers' Trainer since 4.46 and torchtune
    optimise), however the tokens are spread over micro-batches and ranks.

    Args:
        global_tokens: the window's supervised tokens, all micro-batches on all ranks.
        dp_world_size: the ranks DeepSpeed averages over.
        accum_steps: DeepSpeed's ``gradient_accumulation_steps``.
    """
    return accum_steps * dp_world_size / max(int(global_tokens), 1)


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
        task: the task (``train_step`` per batch, ``evaluation`` per split).
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
        self.ckpt_root = os.path.join(self.output_dir, "checkpoints")
        self.engine: Any = None
        # where training stands (what a checkpoint records)
        self.global_step = 0
        self.start_epoch = 0
        self.start_batch = 0  # batches of start_epoch already trained (mid-epoch resume)
        self.next_batch = 0  # in the current epoch: the batch after the last optimizer step
        self.best_metric: float | None = None
        self.nonfinite_steps = 0
        self.reference_batch: dict[str, Any] | None = None
        # Bad samples (all ranks): counts and the max_bad_fraction check; a checkpoint keeps the counts.
        limits = {str(name): float(ds.get("max_bad_fraction", DEFAULT_MAX_BAD_FRACTION)) for name, ds in (cfg.datasets_cfg or {}).items()}
        self.bad_tracker = BadSampleTracker(limits=limits)
        self.bad_writer: JsonlWriter | None = None
        self.mixture: list[tuple[str, int, float]] = []  # mixing: (dataset, size, sample_ratio) per training set
        self.seen_at_resume: tuple[int, int, dict[str, int]] | None = None  # (epoch, batch, samples_seen) of the checkpoint

    # -- set-up, in order -------------------------------------------------------
    def setup(self) -> None:
        self.setup_output_dir()
        self.setup_dataloader()
        self.setup_engine()
        self.setup_writers()
        self.setup_resume()
        self.setup_bad_samples()
        self.n_epochs = self.plan_epochs()  # after the resume: counted from where training stands

    def setup_output_dir(self) -> None:
        if dist_utils.is_main_process():
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, "config.yaml")
            if os.path.exists(path) and self.run.resume:
                logger.info("resuming into %s: its config.yaml is kept", self.output_dir)
            else:
                self.cfg.save(path)
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
        self.sampler: EpochShardSampler | LengthGroupedBatchSampler | PackingBatchSampler | MixtureSampler
        batching: dict[str, Any]
        if self.run.packing and self.run.group_by_length:
            raise ConfigError(
                ["run.packing and run.group_by_length are both true: packing already puts rows of similar length together; choose one"]
            )
        self.mixture = self.mixture_sources()
        if self.mixture:
            self.sampler = self.mixture_sampler(world, rank)
            batching = {"batch_size": self.run.batch_size_train, "sampler": self.sampler, "drop_last": True}
        elif self.run.packing:
            self.sampler, collate = self.packing_sampler(splits, world, rank)
            batching = {"batch_sampler": self.sampler}
        elif self.run.group_by_length:
            lengths = self.train_token_lengths()
            self.sampler = LengthGroupedBatchSampler(lengths, self.run.batch_size_train, num_replicas=world, rank=rank, seed=self.run.seed)
            batching = {"batch_sampler": self.sampler}
        else:
            self.sampler = EpochShardSampler(len(self.train_set), num_replicas=world, rank=rank, seed=self.run.seed)
            batching = {"batch_size": self.run.batch_size_train, "sampler": self.sampler, "drop_last": True}
        self.train_loader = DataLoader(
            SeededSamples(self.train_set),
            **batching,
            num_workers=self.run.num_workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.run.num_workers > 0,
            worker_init_fn=worker_init,
            # Its own generator, so starting the loader never draws from the
            # global torch RNG that dropout uses (a resumed run would drift).
            generator=torch.Generator().manual_seed(self.run.seed),
        )
        accum = self.run.accum_grad_iters
        batches = self.sampler.per_rank() // self.run.batch_size_train
        if batches < accum:
            raise ConfigError(
                [
                    f"run.accum_grad_iters = {accum} but an epoch has only {batches} batch(es) per process "
                    f"({self.sampler.per_rank() * world} samples / ({self.run.batch_size_train} per batch x {world} process(es))): "
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

    def mixture_sources(self) -> list[tuple[str, int, float]]:
        """``(dataset name, training samples, sample_ratio)`` per training set when mixing, else ``[]``.

        A source is one dataset, its ``run.train_splits`` together, in the
        training concatenation's order. The config check (``mixing_problems``)
        already ensured every training set has a ratio or none has.
        """
        sources = []
        for name, by_split in self.datasets.items():
            size = sum(len(by_split[s]) for s in self.run.train_splits if s in by_split)  # type: ignore[arg-type]
            ratio = (self.cfg.datasets_cfg.get(name) or {}).get("sample_ratio")
            if any(s in by_split for s in self.run.train_splits) and ratio is not None:
                sources.append((name, size, float(ratio)))
        return sources

    def mixture_sampler(self, world: int, rank: int) -> MixtureSampler:
        """Mixing by ``sample_ratio``: an epoch is ``run.samples_per_epoch`` draws (default: every training set's size summed)."""
        if self.run.packing or self.run.group_by_length:  # the config check refuses this first; a runner built by hand too
            raise ConfigError(["run.packing / run.group_by_length: do not combine with mixing (datasets.<name>.sample_ratio)"])
        sizes = [n for _, n, _ in self.mixture]
        per_epoch = self.run.samples_per_epoch or sum(sizes)
        sampler = MixtureSampler(sizes, [r for _, _, r in self.mixture], per_epoch, num_replicas=world, rank=rank, seed=self.run.seed)
        logger.info(
            "mixing %s: %d draws per epoch (%s)",
            ", ".join(f"{name} {ratio:g}" for name, _, ratio in self.mixture),
            per_epoch,
            ", ".join(
                f"{name} {q} of {n}{' with replacement' if q > n else ''}" for (name, n, _), q in zip(self.mixture, sampler.plan.quota)
            ),
        )
        return sampler

    def samples_seen(self, epoch: int, batch: int) -> dict[str, int]:
        """Samples drawn per dataset from the start of training up to batch ``batch`` of ``epoch``, all ranks together.

        Counted from the mixture's plan (the draws of the trained batches; a
        completed epoch contributes its ``batches_per_epoch`` batches), so it
        needs no gathering and continues across a resume.
        """
        per_batch = self.run.batch_size_train * dist_utils.get_world_size()
        plan = self.sampler.plan  # type: ignore[union-attr]

        def consumed(e: int, b: int) -> list[int]:
            return plan.consumed(e, b * per_batch, per_epoch=self.batches_per_epoch * per_batch)

        counts = consumed(epoch, batch)
        if self.seen_at_resume is not None:
            # The checkpoint's counts, plus the draws since (in this run's layout).
            base_epoch, base_batch, base = self.seen_at_resume
            counts = [base.get(name, 0) + c - c0 for (name, _, _), c, c0 in zip(self.mixture, counts, consumed(base_epoch, base_batch))]
        return {name: int(c) for (name, _, _), c in zip(self.mixture, counts)}

    def mixing_key(self) -> dict[str, Any] | None:
        """What the mixture's sequence depends on besides the seed (``sample_ratio`` per set, draws per epoch), or None."""
        if not self.mixture:
            return None
        return {"sample_ratio": {name: ratio for name, _, ratio in self.mixture}, "samples_per_epoch": self.sampler.plan.samples_per_epoch}  # type: ignore[union-attr]

    def train_token_lengths(self) -> list[tuple[int, int]]:
        """``(tokens, images)`` of every training sample, in the training set's order (``run.group_by_length``).

        Raises:
            ConfigError: a training dataset cannot say its samples' lengths (no ``token_lengths()``).
        """
        lengths: list[tuple[int, int]] = []
        for name, by_split in self.datasets.items():
            for split in self.run.train_splits:
                if split not in by_split:
                    continue
                dataset = by_split[split]
                if not callable(getattr(dataset, "token_lengths", None)):
                    raise ConfigError(
                        [
                            f"run.group_by_length: datasets.{name} (split {split}, {type(dataset).__name__}) has no token_lengths(), "
                            "so its batches cannot be grouped by length; set run.group_by_length=false or give the dataset a token_lengths()"
                        ]
                    )
                lengths.extend(dataset.token_lengths())
        return lengths

    def packing_sampler(self, splits: list[Dataset], world: int, rank: int) -> tuple[PackingBatchSampler, Any]:
        """``run.packing``: the packed-row batch sampler over every split's token lengths, and its collater."""
        from functools import partial

        from lavislite.processors.collate import collate_packed

        lacking = [type(ds).__name__ for ds in splits if not hasattr(ds, "token_lengths")]
        if lacking:
            raise ConfigError([f"run.packing: the training set(s) {', '.join(lacking)} have no token_lengths() to pack by"])
        text_processor = splits[0].text_processor  # type: ignore[attr-defined]
        max_len = self.run.packing_max_len or int(text_processor.cfg.max_len)
        lengths = [n for ds in splits for n, _ in ds.token_lengths()]  # type: ignore[attr-defined]
        try:
            sampler = PackingBatchSampler(
                lengths, max_len, self.run.batch_size_train, num_replicas=world, rank=rank, seed=self.run.seed, window=self.run.packing_window
            )
        except ValueError as exc:
            raise ConfigError([f"run.packing_max_len: {exc}"]) from exc
        if sampler.batches_per_rank == 0:
            raise ConfigError(
                [f"run.packing: {len(lengths)} samples pack into fewer rows than one batch of {self.run.batch_size_train} row(s) x {world} process(es)"]
            )
        logger.info("packing %d samples into %d rows of <= %d tokens per process and epoch", len(lengths), sampler.per_rank(), max_len)
        return sampler, partial(collate_packed, pad_token_id=int(text_processor.tokenizer.pad_token_id))

    def plan_steps(self) -> int:
        """How many optimizer steps the run takes (the lr schedule's length).

        ``run.max_steps`` wins over ``run.max_epoch`` (as in transformers'
        Trainer); without it, ``max_epoch`` whole epochs.
        """
        if self.run.max_steps is not None:
            return int(self.run.max_steps)
        return self.steps_per_epoch * self.run.max_epoch

    def plan_epochs(self) -> int:
        """The epoch count the loop runs to: enough for ``plan_steps()`` (``max_epoch`` without ``max_steps``).

        Counted from where training stands (after a resume, whose batch size
        may differ from the run it continues): the rest of the start epoch,
        then whole epochs.
        """
        if self.run.max_steps is None:
            return self.run.max_epoch
        left_in_start = max(0, self.batches_per_epoch - self.start_batch) // self.run.accum_grad_iters
        remaining = self.max_steps - self.global_step
        epochs = self.start_epoch + 1 + max(0, math.ceil((remaining - left_in_start) / self.steps_per_epoch))
        if epochs != self.run.max_epoch:
            logger.info(
                "run.max_steps=%d sets the run's length: %d epoch(s) of %d step(s) (run.max_epoch=%d is not used)",
                self.max_steps, epochs, self.steps_per_epoch, self.run.max_epoch,
            )
        return epochs

    def setup_engine(self) -> None:
        import deepspeed

        from lavislite.runners.launch import prepare_deepspeed

        prepare_deepspeed(dist_utils.get_world_size())
        ds_config = fill_deepspeed_config(self.run, dist_utils.get_world_size())
        self.ds_config = ds_config
        self.zero_stage = int(ds_config["zero_optimization"]["stage"])
        self.max_steps = self.plan_steps()
        groups = param_groups(self.model, self.run.weight_decay, self.run.init_lr, self.run.part_lr)
        if not groups:
            raise ConfigError(["model: no trainable parameters: every part is frozen (see the model.freeze_* switches)"])
        # The fused kernel (CPU and CUDA) updates every tensor in one pass: on the
        # demo's 9.7M-entry embedding it is 7.5 ms a step against 73 ms for the
        # per-tensor loop torch picks on a CPU by default; the same update to the
        # last bit or two of fp32.
        fused = all(p.device.type in ("cpu", "cuda") for group in groups for p in group["params"])
        optimizer = torch.optim.AdamW(groups, lr=self.run.init_lr, betas=(0.9, self.run.beta2), fused=fused)
        sched_cls = registry.get_lr_scheduler_class(self.run.lr_sched)
        sched_args = SchedulerArgs(
            max_steps=max(1, self.max_steps),
            init_lr=self.run.init_lr,
            min_lr=self.run.min_lr,
            warmup_lr=self.run.warmup_lr,
            warmup_steps=self.run.warmup_steps,
            steps_per_epoch=self.steps_per_epoch,
            decay_rate=self.run.lr_decay_rate,
        )
        self.engine, self.optimizer, _, self.lr_scheduler = deepspeed.initialize(
            model=self.model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: sched_cls(opt, sched_args),
            config=ds_config,
            dist_init_required=False,
        )
        if self.zero_stage == 0 and dist_utils.get_world_size() == 1:
            # One process has nothing to average: DeepSpeed would still flatten
            # every gradient into buckets and all-reduce them with itself after
            # each backward (6% of a demo step, copying the 9.7M-entry embedding).
            self.engine.enable_backward_allreduce = False
        logger.info(
            "DeepSpeed ZeRO-%s, %s, world size %d, %d optimizer steps (%d per epoch)",
            self.zero_stage,
            self.run.precision,
            dist_utils.get_world_size(),
            self.max_steps,
            self.steps_per_epoch,
        )

    def setup_writers(self) -> None:
        self.metrics: JsonlWriter | None = None
        self.tb: Any = None
        if dist_utils.is_main_process():
            # Appends: a resumed run continues the same file.
            self.metrics = JsonlWriter(os.path.join(self.output_dir, "metrics.jsonl"))
            if self.run.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(self.output_dir, "tensorboard"))

    def setup_resume(self) -> None:
        """Loads ``run.resume_ckpt_path``, or with ``run.resume: auto`` the run folder's latest complete checkpoint."""
        if self.run.resume_ckpt_path:
            self.resume(self.run.resume_ckpt_path)
        elif self.run.resume == "auto":
            found = ckpt.latest_complete(self.ckpt_root)
            if found is None:
                logger.info("run.resume=auto: no complete checkpoint in %s; starting from the beginning", self.ckpt_root)
            else:
                self.resume(found)

    # -- the loop -----------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Runs every epoch; returns a summary (last logged loss, steps, output folder)."""
        self.setup()
        start = time.time()
        last: dict[str, Any] = {}
        for epoch in range(self.start_epoch, self.n_epochs):
            if self.done:
                break
            self.next_batch = self.start_batch if epoch == self.start_epoch else 0
            last = self.train_steps(self.epoch_batches(epoch, self.next_batch), self.max_steps) or last
            if self.run.valid_splits and ((epoch + 1) % self.run.val_freq == 0 or self.is_last_epoch(epoch)):
                self.validate(epoch)
            if self.next_batch < self.batches_per_epoch:
                # Stopped by max_steps inside the epoch: the checkpoint records
                # where, so a resume that extends the run trains the epoch's rest.
                self.save_checkpoint(f"step_{self.global_step}", next_epoch=epoch, next_batch=self.next_batch)
            elif self.saves_epoch_checkpoint(epoch):
                self.save_checkpoint(f"epoch_{epoch}", next_epoch=epoch + 1, next_batch=0)
        self.finish()
        logger.info("training finished in %.1fs; outputs in %s", time.time() - start, self.output_dir)
        return {"output_dir": self.output_dir, "global_step": self.global_step, **last}

    @property
    def done(self) -> bool:
        return self.global_step >= self.max_steps

    def is_last_epoch(self, epoch: int) -> bool:
        return epoch + 1 >= self.n_epochs or self.done

    def saves_epoch_checkpoint(self, epoch: int) -> bool:
        """Whether ``epoch``'s end gets an epoch checkpoint (every ``save_freq_epochs``-th, and the last)."""
        return (epoch + 1) % self.run.save_freq_epochs == 0 or self.is_last_epoch(epoch)

    def epoch_batches(self, epoch: int, first_batch: int = 0) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """``(epoch, batch index, batch)`` for the whole accumulation windows of one epoch, from ``first_batch`` on."""
        self.sampler.set_epoch(epoch, start=first_batch * self.run.batch_size_train)
        for i, samples in enumerate(self.train_loader, start=first_batch):
            if i >= self.batches_per_epoch:
                break  # a partial accumulation window (see setup_dataloader)
            yield epoch, i, samples

    def train_steps(self, batches: Iterator[tuple[int, int, dict[str, Any]]], until_step: int) -> dict[str, Any]:
        """Trains on ``batches`` until ``global_step`` reaches ``until_step`` or they run out.

        An optimizer step is one accumulation window of ``accum_grad_iters``
        micro-batches, read from ``batches`` before its first forward pass, so
        its supervised-token count is known: every micro-batch backpropagates
        its summed token losses scaled by ``token_mean_loss_scale``, and the
        step's gradient is that of the mean over every supervised token of the
        window on every rank (not a mean of micro-batch means, which would weigh
        a 5-token batch as much as a 500-token one). The ranks agree on the
        count in one all-reduce per step, which also carries the non-finite
        check of the window just trained (``stop_if_nonfinite``): at a step's
        end, before the optimizer step, the next window is read and
        ``[its tokens, any non-finite loss here]`` all-reduced. Steps are logged
        every ``log_freq`` steps and checkpointed every ``save_freq_steps``.
        """
        self.engine.train()
        accum = self.run.accum_grad_iters
        window = self._new_window()
        t0 = time.time()
        last: dict[str, Any] = {}
        bar = self._progress(self.batches_per_epoch)
        iterator = iter(batches)
        micro, wait, position = self._read_window(iterator, accum)
        tokens = [self.task.supervised_tokens(samples) for _, _, samples in micro]
        # The first window's count needs a collective of its own; the next ones ride on each step's check.
        global_tokens = int(dist_utils.all_reduce_sum(torch.tensor([float(sum(tokens))], dtype=torch.float64))[0]) if micro else 0
        while micro:
            epoch, index, samples = micro[-1]
            if len(micro) < accum:
                raise RuntimeError(
                    f"the batches ran out after {len(micro)} of the {accum} micro-batches of optimizer step {self.global_step + 1} "
                    f"(epoch {epoch}, batch {index}): every step needs a whole accumulation window"
                )
            scale = token_mean_loss_scale(global_tokens, self.dp_world_size(), accum)
            sums: list[torch.Tensor | None] = []
            flags: list[torch.Tensor] = []
            n_models: list[Any] = []
            for j, (epoch, index, samples) in enumerate(micro):
                if (j == accum - 1) != self.engine.is_gradient_accumulation_boundary():
                    raise RuntimeError(f"accumulation out of step with DeepSpeed at epoch {epoch}, batch {index}")
                self.take_bad_samples(samples, epoch)  # pops the records before the forward
                loss_sum, bad_here, n_model = self.forward_backward(samples, tokens[j], scale)
                sums.append(loss_sum)
                flags.append(bad_here)
                n_models.append(n_model)
                n_samples = len(samples["ids"]) if "ids" in samples else len(samples["input_ids"])  # samples, not rows (packed rows hold several)
                window["samples"] += n_samples
                if loss_sum is not None:
                    window["loss_sum"] = window["loss_sum"] + loss_sum.double()
                    window["tokens"] += tokens[j]
                real = samples["attention_mask"] if samples.get("attention_mask") is not None else samples["token_mask"]
                window["real"] += int(real.sum())
                window["padded"] += int(real.numel())
                if bar is not None:
                    bar.update(1)
                if j < accum - 1:
                    self.engine.step()  # inside the window: DeepSpeed only counts the micro-step
            # The window ends: read the next one (unless this step is the last of the call), then
            # agree on its token count and on this window's losses in one all-reduce, before the update.
            next_micro: list[tuple[int, int, dict[str, Any]]] = []
            next_wait, next_position = 0.0, position
            if self.global_step + 1 < until_step:
                next_micro, next_wait, next_position = self._read_window(iterator, accum)
            next_tokens = [self.task.supervised_tokens(s) for _, _, s in next_micro]
            # Built on the device, synced once: no host sync per micro-batch.
            device = flags[0].device
            bad_local = torch.stack([f.reshape(()) for f in flags]).any().double()
            miscount = sum(torch.as_tensor(n, device=device).double().reshape(()) - t for n, t in zip(n_models, tokens))
            check = torch.stack([torch.tensor(float(sum(next_tokens)), dtype=torch.float64, device=device), bad_local, miscount])
            next_global, any_bad, miscounted = dist_utils.all_reduce_sum(check).tolist()
            if any_bad > 0:
                self.stop_if_nonfinite(micro, flags)
            if miscounted != 0:
                raise RuntimeError(
                    f"optimizer step {self.global_step + 1}: the model's n_tokens differ from the supervised labels (labels[:, 1:] != -100) "
                    f"by {miscounted:+.0f} token(s) over the window; the token-mean weighting needs the model to average over exactly those"
                )
            self.engine.step()  # the optimizer step
            self.global_step += 1
            self.next_batch = index + 1
            if position is not None:
                self.position = position  # this window's end (runner_iter), not the next window's
            kept = [s for s in sums if s is not None]
            values = iter(torch.stack([s.double() for s in kept]).tolist() if kept else [])
            step_losses = [None if s is None else next(values) / n for s, n in zip(sums, tokens)]  # each micro-batch's token mean
            step_samples = sum(len(s["ids"]) if "ids" in s else len(s["input_ids"]) for _, _, s in micro)
            self.on_step_end({"step": self.global_step, "epoch": epoch, "data_wait": wait, "samples": step_samples, "losses": step_losses, "last_batch": samples})
            if self.global_step % self.run.log_freq == 0 or self.global_step >= until_step:
                last = self.log_window(epoch, window, time.time() - t0)
                if bar is not None and last["loss"] is not None:
                    bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
                window = self._new_window()
                t0 = time.time()
            if self.global_step >= until_step:
                break
            if self.run.save_freq_steps and self.global_step % self.run.save_freq_steps == 0:
                self.save_step_checkpoint(epoch, index + 1)
            micro, tokens, global_tokens, wait, position = next_micro, next_tokens, int(next_global), next_wait, next_position
            if position is not None:
                self.position = position
        if bar is not None:
            bar.close()
        return last

    def _read_window(self, iterator: Iterator[tuple[int, int, dict[str, Any]]], accum: int) -> tuple[list[tuple[int, int, dict[str, Any]]], float, Any]:
        """Up to ``accum`` micro-batches from ``iterator``; the seconds waited; ``self.position`` after them (runner_iter's, else None)."""
        start = time.perf_counter()
        micro = []
        for _ in range(accum):
            try:
                micro.append(next(iterator))
            except StopIteration:
                break
        return micro, time.perf_counter() - start, getattr(self, "position", None)

    def dp_world_size(self) -> int:
        """The data-parallel ranks DeepSpeed averages gradients over."""
        return int(getattr(self.engine, "dp_world_size", dist_utils.get_world_size()))

    def on_step_end(self, info: dict[str, Any]) -> None:
        """Called on every rank after each optimizer step (a hook for benchmarks and integrations).

        Args:
            info: ``step``, ``epoch``, ``samples`` (this rank's, this step),
                ``losses`` (per micro-batch, each its own token mean; None where
                skipped), ``data_wait`` (seconds this rank waited for batches)
                and ``last_batch``.
        """

    def save_step_checkpoint(self, epoch: int, next_batch: int) -> None:
        """A checkpoint every ``save_freq_steps`` steps.

        One at the epoch's very end is skipped only when that epoch gets its
        epoch checkpoint (the same position); otherwise (``save_freq_epochs``
        > 1) it is written, recording the epoch's end as its position.
        """
        if next_batch >= self.batches_per_epoch and self.saves_epoch_checkpoint(epoch):
            return
        self.save_checkpoint(f"step_{self.global_step}", next_epoch=epoch, next_batch=next_batch)

    # -- bad samples -----------------------------------------------------------------------
    def setup_bad_samples(self) -> None:
        """Opens ``bad_samples.jsonl`` (rank 0) and writes the records the datasets left out when built.

        A resumed run rewrites the file first: it keeps the training records up
        to the checkpoint's step (those after it are read again and written
        again) and replaces the build records by this build's, so the file
        lists each skip once, as the uninterrupted run's does.
        """
        import json

        build = [
            {**record.to_dict(), "split": split, "phase": "build"}
            for by_split in self.datasets.values()
            for split, dataset in by_split.items()
            for record in getattr(dataset, "bad_records", None) or []
        ]
        self.bad_tracker.add_build(build)
        if not dist_utils.is_main_process():
            return
        path = os.path.join(self.output_dir, BAD_SAMPLES_FILE)
        kept: list[str] = []
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        record = json.loads(line) if line.strip() else {}
                    except json.JSONDecodeError:
                        continue  # a line a kill cut short
                    if record.get("phase") == "train" and int(record.get("step", 0)) <= self.global_step:
                        kept.append(line if line.endswith("\n") else line + "\n")
        if not build and not kept and not os.path.exists(path):
            # No file until something is skipped (the writer opens on the first record).
            return
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in build)
            fh.writelines(kept)
        os.replace(tmp, path)
        self.bad_writer = JsonlWriter(path)
        if build:
            logger.info("%d record(s) left out when the datasets were built are listed in %s", len(build), path)

    def take_bad_samples(self, samples: dict[str, Any], epoch: int) -> None:
        """Pops a batch's bad-sample records and cut-reply count before the forward; counts and checks them.

        Every rank sums the counts (one small all-reduce per micro-batch) and,
        when any rank skipped a sample, gathers every rank's records; rank 0
        appends them to ``bad_samples.jsonl`` (with ``step``, ``epoch``,
        ``rank``) and logs the first ones. Each rank then checks
        ``max_bad_fraction`` on the same numbers, so all stop together.

        Raises:
            BadSampleLimitError: past a dataset's ``max_bad_fraction`` (after the records are written).
        """
        records = list(samples.pop(BAD_SAMPLES_KEY, None) or [])
        truncated = int(samples.pop(TRUNCATED_KEY, 0) or 0)
        trained = len(samples["ids"]) if "ids" in samples else len(samples["input_ids"])
        rank = dist_utils.get_rank()
        records = [{**r, "phase": "train", "step": self.global_step + 1, "epoch": epoch, "rank": rank} for r in records]
        if dist_utils.get_world_size() > 1:
            counts = dist_utils.all_reduce_sum(torch.tensor([len(records), trained, truncated], dtype=torch.float64))
            n_bad, trained, truncated = (int(x) for x in counts.tolist())
            if n_bad:
                records = [r for per_rank in dist_utils.all_gather_object(records) for r in per_rank]
        if records and dist_utils.is_main_process():
            if self.bad_writer is None:
                self.bad_writer = JsonlWriter(os.path.join(self.output_dir, BAD_SAMPLES_FILE))
            for r in records:
                self.bad_writer.write(r)
                if self.bad_tracker.bad < 20:
                    logger.warning("skipped bad sample (%s) %s key %s: %s", r.get("dataset"), r.get("source"), r.get("key"), r.get("reason"))
        if truncated and self.bad_tracker.truncated == 0 and dist_utils.is_main_process():
            logger.warning(
                "a training reply was cut by the text processor's max_len (its <|im_end|> lost): counted as truncated_replies in %s; "
                "raise max_len, or set truncation: drop_sample on the text processor to leave such samples out",
                "metrics.jsonl",
            )
        self.bad_tracker.update(records, trained, truncated)

    def forward_backward(self, samples: dict[str, Any], n_tokens: int, scale: float) -> tuple[torch.Tensor | None, torch.Tensor, Any]:
        """One micro-batch: the forward pass and the backward of its summed token losses times ``scale``.

        Args:
            samples: the micro-batch.
            n_tokens: its supervised tokens (``count_supervised_tokens`` of its labels).
            scale: ``token_mean_loss_scale`` of the window.

        Returns:
            ``(token loss sum, non-finite, model's token count)``: the sum
            (detached; None when a non-finite loss was skipped), a 0-d bool
            tensor (not synced: ``stop`` checks it once per step, in the
            window's all-reduce) and the model's ``n_tokens`` (``n_tokens``
            when it reports none).

        With ``run.on_nonfinite_loss: skip`` a skipped batch must be replaced
        before its backward pass, so every micro-batch's loss is checked here
        (a host sync and an all-reduce each): every rank learns whether any
        rank's loss is non-finite and all take the same path, backpropagating a
        zero-weighted loss of a known-good batch instead, so the batch adds a
        zero gradient and every collective still runs.
        """
        out = self.task.train_step(self.engine, samples)
        loss = out["loss"]
        n_model = out.get("n_tokens", n_tokens)
        bad_here = ~torch.isfinite(loss.detach())
        if self.run.on_nonfinite_loss == "skip":
            local = bool(bad_here)
            if self.reference_batch is None and not local:
                self.reference_batch = samples
            if dist_utils.any_rank(local):
                ids = [i for rank_ids in dist_utils.all_gather_object(list(samples.get("ids") or []) if local else []) for i in rank_ids]
                step = self.global_step + 1
                self.nonfinite_steps += 1
                logger.warning("non-finite loss at optimizer step %d (samples %s): batch skipped (%d so far)", step, ids, self.nonfinite_steps)
                if self.nonfinite_steps > self.run.max_nonfinite_steps:
                    raise NonFiniteLossError(f"{self.nonfinite_steps} non-finite losses, more than run.max_nonfinite_steps={self.run.max_nonfinite_steps}; last at step {step}, samples {ids}")
                if self.reference_batch is None:
                    raise NonFiniteLossError(f"non-finite loss at step {step} before any finite batch; nothing to skip with (samples {ids})")
                self.engine.backward(0.0 * self.task.train_step(self.engine, self.reference_batch)["loss"])
                return None, torch.zeros((), dtype=torch.bool, device=loss.device), n_model
        # The summed token losses: the model's mean times the tokens it averaged over.
        loss_sum = loss * n_model
        self.engine.backward(loss_sum * scale)
        return loss_sum.detach(), bad_here, n_model

    def stop_if_nonfinite(self, micro: list[tuple[int, int, dict[str, Any]]], flags: list[torch.Tensor]) -> None:
        """Some rank's window had a non-finite loss (``stop``): every rank raises, naming the step and the samples.

        Called on every rank before the optimizer step, so no weight ever sees
        the non-finite gradient (the run's checkpoints stay clean).

        Raises:
            NonFiniteLossError: always.
        """
        bad_ids = [i for (_, _, samples), flag in zip(micro, flags) if bool(flag) for i in (samples.get("ids") or [])]
        ids = [i for rank_ids in dist_utils.all_gather_object(bad_ids) for i in rank_ids]
        raise NonFiniteLossError(f"non-finite loss at optimizer step {self.global_step + 1}, in the batch of sample(s) {ids} (run.on_nonfinite_loss=stop)")

    @staticmethod
    def _new_window() -> dict[str, Any]:
        """Sums over one log interval: token losses and supervised tokens (of batches not skipped), samples, real and padded tokens."""
        return {"loss_sum": torch.zeros((), dtype=torch.float64), "tokens": 0, "samples": 0, "real": 0, "padded": 0}

    def log_window(self, epoch: int, window: dict[str, Any], elapsed: float) -> dict[str, Any]:
        """Sums the window over all ranks and writes one metrics record (rank 0).

        The loss is the mean over the interval's supervised tokens on every rank
        (with ``log_freq: 1``, exactly the optimizer step's objective).
        """
        loss_sum = window["loss_sum"].detach().double().cpu().reshape(1)
        stats = torch.cat([loss_sum, torch.tensor([window["tokens"], window["samples"], window["real"], window["padded"]], dtype=torch.float64)])
        stats = dist_utils.all_reduce_sum(stats)
        loss_sum, tokens, n_samples, real, padded = stats.tolist()
        record = {
            "step": self.global_step,
            "epoch": epoch,
            "loss": loss_sum / tokens if tokens else None,  # None: every batch of the interval was skipped
            "lr": float(self.lr_scheduler.get_last_lr()[0]),
            "samples": int(n_samples),  # in this interval, all ranks
            # With per-part rates, each part's current rate too (lr/proj, lr/llm, ...).
            **({f"lr/{g['part']}": float(g["lr"]) for g in self.optimizer.param_groups if "part" in g} if self.run.part_lr else {}),
            "samples_per_sec": n_samples / max(elapsed, 1e-9),
            "tokens_per_sec": real / max(elapsed, 1e-9),
            "real_token_fraction": real / max(padded, 1),
            "nonfinite_skipped": self.nonfinite_steps,
            **self.bad_tracker.metrics(),  # cumulative, all ranks
        }
        if self.mixture:
            # Samples drawn per dataset since the run began (all ranks; cumulative over resumes).
            record["samples_seen"] = self.samples_seen(epoch, self.next_batch)
        if torch.cuda.is_available():
            record["mfu"] = self.mfu(record["tokens_per_sec"], real / max(n_samples, 1))
        if dist_utils.is_main_process():
            loss_text = "n/a (skipped)" if record["loss"] is None else f"{record['loss']:.4f}"
            logger.info(
                "epoch %d step %d/%d  loss %s  lr %.3e  %.1f samples/s  %.0f tokens/s",
                epoch, self.global_step, self.max_steps, loss_text, record["lr"], record["samples_per_sec"], record["tokens_per_sec"],
            )
            scalars = {k: record[k] for k in ("loss", "lr", "samples_per_sec", "tokens_per_sec") if record[k] is not None}
            scalars.update({f"samples_seen/{name}": float(n) for name, n in record.get("samples_seen", {}).items()})
            self._write_record(record, "train", scalars)
        return record

    def mfu(self, tokens_per_sec: float, mean_sample_tokens: float) -> float | None:
        """Model FLOPs utilisation of a log interval (``common.flops``; CUDA only), or None.

        None when the device is not in ``common.flops.PEAK_BF16_TFLOPS`` or the
        model cannot say its LLM's shape (no ``llm_flops_shape()``).

        Args:
            tokens_per_sec: real tokens per second, all ranks.
            mean_sample_tokens: the mean sample length (the attention span ``S``).
        """
        from lavislite.common.flops import llm_flops_per_token, mfu, peak_bf16_flops

        peak = peak_bf16_flops(torch.cuda.get_device_name(torch.cuda.current_device()))
        shape_of = getattr(self.engine.module, "llm_flops_shape", None)
        if peak is None or shape_of is None:
            return None
        if getattr(self, "_flops_shape", None) is None:
            self._flops_shape = shape_of()
        per_token = llm_flops_per_token(seq_len=mean_sample_tokens, **self._flops_shape)
        return mfu(per_token, tokens_per_sec, peak, dist_utils.get_world_size())

    def _write_record(self, record: dict[str, Any], prefix: str, scalars: tuple[str, ...] | dict[str, float]) -> None:
        assert self.metrics is not None
        self.metrics.write(record)
        if self.tb is not None:
            items = scalars.items() if isinstance(scalars, dict) else ((k, record[k]) for k in scalars)
            for key, value in items:
                self.tb.add_scalar(f"{prefix}/{key}", value, self.global_step)
            self.tb.flush()

    def _progress(self, total: int) -> Any:
        # A live bar on an interactive terminal; logs and CI get the interval lines only.
        if not dist_utils.is_main_process() or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=f"step {self.global_step}", dynamic_ncols=True, leave=False)

    # -- validation and test ------------------------------------------------------------
    def split_list(self, splits: list[str]) -> list[tuple[str, Dataset]]:
        """``("dataset/split", Dataset)`` for each named split that a dataset has."""
        return [(f"{name}/{split}", by_split[split]) for name, by_split in self.datasets.items() for split in splits if split in by_split]

    def evaluate_splits(self, splits: list[str], output_dir: str | None) -> dict[str, dict[str, Any]]:
        """Scores each split with the task; every rank joins (ZeRO-3 ranks step in lockstep)."""
        return {
            key: self.task.evaluation(
                self.engine.module, ds, key, self.run.batch_size_eval, self.run.num_workers, output_dir, lockstep=self.zero_stage == 3
            )
            for key, ds in self.split_list(splits)
        }

    @property
    def selection_name(self) -> str:
        """What picks ``best/``: ``run.best_metric``, else ``agg_metrics`` (the mean over validation splits)."""
        return str(self.run.get("best_metric") or "agg_metrics")

    def selection_value(self, results: dict[str, dict[str, Any]]) -> float:
        """The number ``best/`` is kept by, from one validation's metrics.

        Raises:
            ConfigError: ``run.best_metric`` names a metric the split's scores do not have (the ones they have are listed).
        """
        name = self.run.get("best_metric")
        if not name:
            return sum(float(m["agg_metrics"]) for m in results.values()) / len(results)
        dataset, split, path = name.split("/", 2)
        scores = results.get(f"{dataset}/{split}", {})
        value = lookup_metric(scores, path)
        if value is None:
            have = ", ".join(numeric_paths(scores, f"{dataset}/{split}")) or "no scores"
            raise ConfigError([f"run.best_metric: validation scored no '{name}'; it has {have}"])
        return value

    def validate(self, epoch: int) -> None:
        """Scores ``run.valid_splits``, logs the metrics, keeps the best weights by ``run.best_metric`` (default: the mean ``agg_metrics``)."""
        results = self.evaluate_splits(list(self.run.valid_splits), output_dir=None)
        if not results:
            return
        agg = sum(float(m["agg_metrics"]) for m in results.values()) / len(results)
        value, label = self.selection_value(results), self.selection_name
        # A NaN compares false with everything: kept as the best, it would never
        # be beaten. A non-finite metric never improves and is never stored.
        finite = math.isfinite(value)
        # A tie replaces the best: on a plateau (a small validation set that saturates,
        # as the demo's does half-way) the longer-trained weights are the ones to keep;
        # keeping the first would release a model trained for half the schedule.
        improved = finite and (self.best_metric is None or value >= self.best_metric)
        tie = improved and self.best_metric is not None and value == self.best_metric
        if not finite and dist_utils.is_main_process():
            logger.warning(
                "validation at step %d: %s is %s, not a number the best weights can be kept by; the best stays %s",
                self.global_step, label, value, "none yet" if self.best_metric is None else f"{self.best_metric:.4f}",
            )
        if dist_utils.is_main_process():
            scalars = {f"{key}/{k}": float(v) for key, m in results.items() for k, v in m.items() if isinstance(v, (int, float))}
            chosen = {"best_metric": label, "best_value": value} if label != "agg_metrics" else {}
            self._write_record({"step": self.global_step, "epoch": epoch, "valid": results, "agg_metrics": agg, **chosen, "best": improved}, "valid", scalars)
            note = " (equals the best; these longer-trained weights replace it)" if tie else " (best so far)" if improved else ""
            logger.info("validation at step %d: %s %.4f%s", self.global_step, label, value, note)
        if improved:
            self.best_metric = value
            self.save_best()

    def save_best(self) -> None:
        """The trainable weights of the best validation so far, in ``<run>/best/`` (replaced in one step)."""
        state = self.gather_trainable()
        if dist_utils.is_main_process():
            ckpt.write_best(os.path.join(self.output_dir, ckpt.BEST), state, {"global_step": self.global_step, self.selection_name: self.best_metric})
        dist_utils.barrier()

    def load_best(self) -> None:
        """Puts the best validation's weights back before the test and the release.

        Raises:
            CheckpointError: validation kept a best (``best_metric``) but ``best/`` is missing:
                testing and releasing the last weights in its place would be a silent swap.
        """
        best_dir = os.path.join(self.output_dir, ckpt.BEST)
        info = dist_utils.broadcast_object(ckpt.read_best_info(best_dir) if dist_utils.is_main_process() else None)
        if info is None:
            if self.best_metric is not None:
                raise CheckpointError(
                    f"{best_dir} is missing (or has no {ckpt.BEST_WEIGHTS}), but validation kept the best weights there "
                    f"({self.selection_name} {self.best_metric:.4f}); the last weights are not tested or released in their place. "
                    "To test and release the last weights instead, resume with --options run.valid_splits=[]"
                )
            logger.warning("no validation gave a finite %s: the test and the release use the last weights (step %d)", self.selection_name, self.global_step)
            return
        from safetensors.torch import load_file

        self.load_trainable(load_file(os.path.join(best_dir, ckpt.BEST_WEIGHTS)))
        kept = info.get(self.selection_name, info.get("agg_metrics", float("nan")))
        logger.info("using the best weights (step %d, %s %.4f) for testing and the release", info["global_step"], self.selection_name, kept)

    def finish(self) -> None:
        """After the last step: the best weights back in place, the test splits, the release."""
        if self.run.valid_splits:
            self.load_best()
        if self.run.test_splits:
            results = self.evaluate_splits(list(self.run.test_splits), output_dir=self.output_dir)
            if dist_utils.is_main_process() and results:
                from lavislite.tasks.base_task import write_json

                write_json(os.path.join(self.output_dir, "metrics.json"), results)
                scalars = {f"{key}/{k}": float(v) for key, m in results.items() for k, v in m.items() if isinstance(v, (int, float))}
                self._write_record({"step": self.global_step, "test": results}, "test", scalars)
        self.save_release()
        self.close()

    # -- weights ---------------------------------------------------------------------------
    def gather_trainable(self) -> dict[str, torch.Tensor]:
        """The trainable weights as full fp32 CPU tensors on rank 0 (gathered under ZeRO-3); empty elsewhere."""
        import deepspeed

        trainable = [(n, p) for n, p in self.engine.module.named_parameters() if p.requires_grad]
        state: dict[str, torch.Tensor] = {}
        with deepspeed.zero.GatheredParameters([p for _, p in trainable], modifier_rank=None, enabled=self.zero_stage == 3):
            if dist_utils.is_main_process():
                state = {n: p.detach().float().cpu().clone() for n, p in trainable}
        return state

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        """Copies trainable weights into the engine's module (and its ZeRO-3 partitions) on every rank."""
        import deepspeed

        params = dict(self.engine.module.named_parameters())
        with deepspeed.zero.GatheredParameters([params[k] for k in state], modifier_rank=0, enabled=self.zero_stage == 3):
            if dist_utils.is_main_process() or self.zero_stage != 3:
                with torch.no_grad():
                    for key, value in state.items():
                        params[key].copy_(value.to(params[key].dtype))

    def save_release(self) -> None:
        """``<run>/release/``: only the trainable weights (gathered under ZeRO-3) as safetensors, the
        merged run config, and with LoRA the adapter in PEFT's own format (``models.release``)."""
        from lavislite.models.release import write_release

        state = self.gather_trainable()
        if dist_utils.is_main_process():
            path = os.path.join(self.output_dir, "release")
            write_release(path, state, OmegaConf.to_container(self.cfg.config), metadata={"global_step": str(self.global_step)})
            logger.info("saved %d trainable tensors to %s", len(state), path)
        dist_utils.barrier()

    # -- checkpoints -----------------------------------------------------------------
    # Accumulation windows restart with every epoch here (runner_iter: they run on across passes).
    windows_restart_each_epoch = True

    def layout(self) -> dict[str, int]:
        """What a batch position is counted in (``ckpt.LAYOUT_KEYS``)."""
        return {"world_size": dist_utils.get_world_size(), "batch_size_train": self.run.batch_size_train, "accum_grad_iters": self.run.accum_grad_iters}

    def trainer_state(self, next_epoch: int, next_batch: int) -> dict[str, Any]:
        """Where training stands: the epoch and batch to continue from, the step, the best metric.

        ``samples`` (of ``next_epoch``, all ranks together) with the world size,
        batch size and accumulation let a resume with other values find the
        same sample (``ckpt.resume_batch``).
        """
        layout = self.layout()
        return {
            "epoch": next_epoch,
            "batch": next_batch,
            "samples": next_batch * layout["batch_size_train"] * layout["world_size"],
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "best_metric_name": self.selection_name,
            "nonfinite_steps": self.nonfinite_steps,
            "bad_samples": self.bad_tracker.state(),
            **layout,
            "batches_per_epoch": self.batches_per_epoch,
            "train_samples": len(self.train_set),
            "group_by_length": bool(self.run.group_by_length),  # grouped positions convert only within one layout
            # What the packed plan depends on besides the layout (None: not packed).
            "packing": self.packing_key(),
            # Mixing: what the sequence depends on, and the samples drawn per dataset so far.
            **({"mixing": self.mixing_key(), "samples_seen": self.samples_seen(next_epoch, next_batch)} if self.mixture else {}),
        }

    def packing_key(self) -> dict[str, int] | None:
        """The packed plan's settings beside the layout (``run.packing``), or None."""
        if not self.run.packing:
            return None
        return {"packing_max_len": self.sampler.max_len, "packing_window": self.sampler.window}

    def save_checkpoint(self, tag: str, next_epoch: int, next_batch: int) -> None:
        """An atomic checkpoint (every rank writes; rank 0 marks it complete last).

        Args:
            tag: the folder name under ``checkpoints/``.
            next_epoch / next_batch: where a resume continues (batches of
                ``next_epoch`` already trained).
        """
        tag_dir = os.path.join(self.ckpt_root, tag)
        if dist_utils.is_main_process() and os.path.isdir(tag_dir):
            shutil.rmtree(tag_dir)  # an earlier, unfinished attempt at the same step
        dist_utils.barrier()
        # Frozen weights are not saved: they come from the model's own sources
        # (a 7B frozen LLM would otherwise be written at every checkpoint).
        self.engine.save_checkpoint(self.ckpt_root, tag=tag, client_state={}, save_latest=False, exclude_frozen_parameters=True)
        # DeepSpeed keeps client state in rank 0's file only (ZeRO 0-2), so every
        # rank keeps its random streams (seeded seed + rank) in its own file.
        torch.save(ckpt.rng_state(), ckpt.rng_file(tag_dir, dist_utils.get_rank()))
        self.checkpoint_written(tag_dir)
        dist_utils.barrier()
        if dist_utils.is_main_process():
            ckpt.mark_complete(self.ckpt_root, tag, self.trainer_state(next_epoch, next_batch))
            removed = ckpt.prune(self.ckpt_root, self.run.keep_last, protect={tag})
            logger.info("saved checkpoint %s%s", tag, f" (removed {', '.join(removed)})" if removed else "")
        dist_utils.barrier()

    def checkpoint_written(self, tag_dir: str) -> None:
        """Called on every rank after its files are written, before the checkpoint is marked complete."""

    def resume(self, path: str) -> None:
        """Continues from a complete checkpoint folder (``.../checkpoints/<tag>``).

        Raises:
            MissingFileError: no checkpoint there, or one whose write never finished.
        """
        path = os.path.normpath(path)
        load_dir, tag = os.path.split(path)
        ckpt.check_resumable(path)
        state = ckpt.read_trainer_state(path)
        # Checked before DeepSpeed loads anything: its own refusal is a bare traceback.
        now = self.layout()
        old_world = int(state.get("world_size", now["world_size"]))
        if old_world != now["world_size"] and self.zero_stage > 0:
            raise CheckpointError(
                f"cannot resume {path} with world_size {old_world} -> {now['world_size']}: its ZeRO-{self.zero_stage} optimizer state is "
                f"partitioned over {old_world} process(es), and DeepSpeed loads it only at that world size; resume with {old_world} process(es)"
            )
        if int(state["batch"]) >= int(state.get("batches_per_epoch", 1 << 62)):
            # A step checkpoint at its epoch's very end: the end of the epoch in any layout.
            start_batch = self.batches_per_epoch
        elif int(state["batch"]) > 0 and (self.run.group_by_length or state.get("group_by_length", False)):
            start_batch = self.grouped_resume_batch(path, state, now)
        else:
            self.check_packed_resume(path, state, now)
            start_batch = ckpt.resume_batch(path, state, now, whole_windows=self.windows_restart_each_epoch)
        if "train_samples" in state and int(state["train_samples"]) != len(self.train_set):
            logger.warning(
                "%s was written with %d training samples, this run has %d: the epoch's order changes, so the resumed epoch's samples are not the same",
                path, int(state["train_samples"]), len(self.train_set),
            )
        loaded, _ = self.engine.load_checkpoint(load_dir, tag=tag, load_module_strict=False)
        if loaded is None:
            raise MissingFileError(f"run.resume_ckpt_path: no DeepSpeed checkpoint at {path}")
        self.start_epoch, self.start_batch = int(state["epoch"]), start_batch
        if self.mixture:
            if state.get("mixing") != self.mixing_key() and int(state["batch"]) > 0:
                logger.warning(
                    "%s was written with mixing %s, this run mixes %s: the resumed epoch's draws are not the same",
                    path, state.get("mixing"), self.mixing_key(),
                )
            self.seen_at_resume = (self.start_epoch, start_batch, dict(state.get("samples_seen") or {}))
        if any(int(state.get(k, now[k])) != now[k] for k in ckpt.LAYOUT_KEYS):
            logger.info(
                "%s: batch %d of epoch %d in the checkpoint's batches is batch %d of %d x %d process(es) (the same sample)",
                path, int(state["batch"]), self.start_epoch, start_batch, now["batch_size_train"], now["world_size"],
            )
        self.global_step = int(state["global_step"])
        best = state.get("best_metric")
        # An older run may have stored a NaN best, which nothing could ever beat.
        self.best_metric = float(best) if best is not None and math.isfinite(float(best)) else None
        kept_by = state.get("best_metric_name", "agg_metrics")
        if self.best_metric is not None and kept_by != self.selection_name:
            # A best kept by another number cannot be compared with this run's.
            logger.warning("%s kept best/ by %s; this run keeps it by %s, so the next validation starts a new best", path, kept_by, self.selection_name)
            self.best_metric = None
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.bad_tracker.load_state(state.get("bad_samples"))
        rng_path = ckpt.rng_file(path, dist_utils.get_rank())
        if os.path.exists(rng_path):
            ckpt.set_rng_state(torch.load(rng_path, weights_only=True))
        else:
            logger.warning("%s has no random state for rank %d (another world size?): random streams restart from the seed", path, dist_utils.get_rank())
        logger.info("resumed from %s at epoch %d, batch %d, step %d", path, self.start_epoch, self.start_batch, self.global_step)

    def grouped_resume_batch(self, path: str, state: dict[str, Any], now: dict[str, int]) -> int:
        """The batch a mid-epoch checkpoint continues at when its batches were (or are now) grouped by length.

        Grouped batches are not the permutation's consecutive samples: which
        samples the first ``b`` batches held depends on the batch size and the
        world size, so a position converts only when both are unchanged (and
        grouping is on in both runs). The accumulation may change: the batches
        stay the same.

        Raises:
            CheckpointError: names what changed (old -> new).
        """
        changed = [
            f"{'' if k == 'world_size' else 'run.'}{k} {int(state.get(k, now[k]))} -> {now[k]}"
            for k in ("world_size", "batch_size_train")
            if int(state.get(k, now[k])) != now[k]
        ]
        was, grouped = bool(state.get("group_by_length", False)), bool(self.run.group_by_length)
        if was != grouped:
            changed.append(f"run.group_by_length {str(was).lower()} -> {str(grouped).lower()}")
        if changed:
            raise CheckpointError(
                f"cannot resume {path} mid-epoch with {', '.join(changed)}: it stopped after batch {state['batch']} of epoch {state['epoch']}, "
                "and which samples an epoch's first batches held depends on run.group_by_length and, when grouped, on the batch size and the world size. "
                "Resume with the old values, or from a checkpoint at an epoch's end (batch 0), where any change continues exactly"
            )
        return ckpt.resume_batch(path, state, now, whole_windows=self.windows_restart_each_epoch)

    def check_packed_resume(self, path: str, state: dict[str, Any], now: dict[str, int]) -> None:
        """Refuses a mid-epoch resume whose packed plan would differ (``run.packing`` now or then).

        Raises:
            CheckpointError: naming each changed key (old -> new): the layout
                (world size, batch size, accumulation), the packing settings, or
                packing itself switched on or off.
        """
        changed = {k: (state.get(k, now[k]), now[k]) for k in ckpt.LAYOUT_KEYS if int(state.get(k, now[k])) != now[k]}
        old_packing, new_packing = state.get("packing") or {}, self.packing_key() or {}
        changed.update({k: (old_packing.get(k), v) for k, v in new_packing.items() if old_packing and old_packing.get(k) != v})
        if old_packing and not new_packing:
            changed["packing"] = (True, False)
        elif new_packing and "packing" in state and not old_packing:
            changed["packing"] = (False, True)
        if (self.run.packing or old_packing) and changed and int(state["batch"]) > 0:
            # The packed plan's rows depend on these: no sample position converts.
            names = ", ".join(f"{'' if k == 'world_size' else 'run.'}{k} {a} -> {b}" for k, (a, b) in changed.items())
            raise CheckpointError(
                f"cannot resume {path} mid-epoch (batch {state['batch']} of epoch {state['epoch']}) with {names}: "
                "its packed micro-batches were planned for the old values, so no sample position converts. "
                "Resume with the old values, or from a checkpoint at an epoch's end (batch 0)"
            )

    def close(self) -> None:
        if self.bad_writer is not None:
            self.bad_writer.close()
            self.bad_writer = None
        if self.metrics is not None:
            self.metrics.close()
        if self.tb is not None:
            self.tb.close()
