"""Dataset builders: a validated dataset config -> ``{split: Dataset}``.

A builder names its default config file(s) in ``DATASET_CONFIG_DICT`` and the
torch Dataset classes it builds. To add a dataset, subclass ``BaseDatasetBuilder``,
register it with ``@registry.register_builder("name")`` and import the module
(README: "Add your own dataset").
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from iopath.common.file_io import g_pathmgr
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from lavislite.common.logger import logger
from lavislite.common.errors import MissingFileError
from lavislite.common.registry import RegistryError, registry
from lavislite.common.utils import as_list, resolve_data_path
from lavislite.datasets.bad_samples import DEFAULT_MAX_BAD_FRACTION, BadSamplePolicy, OnBadSample
from lavislite.processors.blip_processors import build_processor


@dataclass
class AnnotationInfo:
    # ``url`` is where the file comes from (for the record and the error
    # message); ``storage`` is the local copy that is read.
    url: str | list[str] = ""
    storage: str | list[str] = ""


@dataclass
class ImagesInfo:
    storage: str = ""


@dataclass
class BuildInfo:
    annotations: dict[str, AnnotationInfo] = field(default_factory=dict)
    images: ImagesInfo = field(default_factory=ImagesInfo)


@dataclass
class BuilderConfig:
    type: str = "default"
    data_type: Literal["images"] = "images"  # the only kind built so far
    build_info: BuildInfo = field(default_factory=BuildInfo)
    vis_processor: dict[str, dict[str, Any]] = field(default_factory=dict)
    text_processor: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A sample that cannot be used (a malformed record, a missing or undecodable
    # image): error stops naming its file and index; skip leaves it out, lists
    # it in bad_samples.jsonl and counts it (bad_samples in metrics.jsonl).
    # JSON sets default to error; streaming builders override the default to skip.
    on_bad_sample: OnBadSample = "error"
    # With skip: more bad samples than this share of those read stops the run
    # (taken over at least 1 / max_bad_fraction samples; 0 tolerates none).
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION
    # Mixing (LAVIS's key): this dataset's weight among the run's training sets, a
    # positive number (3 and 1: three draws of this set for one of the other).
    # Set on every training set or on none (none: the sets are concatenated).
    # See runner_base.RunnerBase.setup_dataloader and samplers.MixturePlan.
    sample_ratio: float | None = None

    @staticmethod
    def check_section(data: dict[str, Any]) -> list[str]:
        """Cross-key rules of one dataset section (messages relative to ``datasets.<name>``)."""
        problems = []
        value = data.get("max_bad_fraction", DEFAULT_MAX_BAD_FRACTION)
        if not 0.0 <= float(value) <= 1.0:
            problems.append(f"max_bad_fraction: must be between 0 and 1, got {value}")
        ratio = data.get("sample_ratio")
        if ratio is not None and not (ratio > 0 and math.isfinite(ratio)):
            problems.append(f"sample_ratio: must be a positive number, got {ratio}")
        return problems


class BaseDatasetBuilder:
    """Builds the splits named in ``build_info.annotations``.

    Class attributes a subclass sets:
        Config: the schema of its config section (extend ``BuilderConfig``).
        DATASET_CONFIG_DICT: ``{type: yaml path}``; relative paths are looked up in
            the library root, then beside the module that defines the builder.
        train_dataset_cls / eval_dataset_cls: the Dataset classes for ``train`` and other splits.
    """

    Config: type = BuilderConfig
    DATASET_CONFIG_DICT: dict[str, str] = {}
    train_dataset_cls: type | None = None
    eval_dataset_cls: type | None = None

    def __init__(self, cfg: DictConfig | dict[str, Any] | None = None, context: dict[str, Any] | None = None) -> None:
        from lavislite.common.config import load_dataset_config

        name = self.registered_name()
        if cfg is None:
            cfg = load_dataset_config(name)
        elif not isinstance(cfg, DictConfig):
            cfg = OmegaConf.create(cfg)
        self.config = cfg
        self.name = name or type(self).__name__
        self.context = dict(context or {})
        self.vis_processors: dict[str, Any] = {}
        self.text_processors: dict[str, Any] = {}
        self.current_split = ""  # the split make_dataset is building

    def bad_sample_policy(self) -> BadSamplePolicy:
        """The dataset's ``on_bad_sample`` / ``max_bad_fraction``, with its name for records and messages."""
        default = self.Config.__dataclass_fields__.get("on_bad_sample")  # type: ignore[attr-defined]
        on_bad = self.config.get("on_bad_sample", default.default if default is not None else "error")
        return BadSamplePolicy(self.name, str(on_bad), float(self.config.get("max_bad_fraction", DEFAULT_MAX_BAD_FRACTION)))

    @classmethod
    def registered_name(cls) -> str:
        """The builder's registry name ("" for an unregistered subclass used directly)."""
        try:
            return registry.name_of("builder", cls)
        except RegistryError:
            return ""

    def build_processors(self) -> None:
        """Builds ``vis_processor`` / ``text_processor`` for ``train`` and ``eval``."""
        for key, target in (("vis_processor", self.vis_processors), ("text_processor", self.text_processors)):
            for split, spec in (self.config.get(key) or {}).items():
                target[str(split)] = build_processor(spec, context=self.context)

    @classmethod
    def split_names(cls, section: dict[str, Any]) -> list[str]:
        """The splits a (validated) config section builds, known before anything is read.

        Used to reject a misspelt ``run.*_splits`` at start-up; a builder that
        makes its splits another way overrides this.
        """
        return list(((section.get("build_info") or {}).get("annotations") or {}))

    def build_datasets(self, for_evaluation: bool = False) -> dict[str, Dataset]:
        """Builds one Dataset per split of ``build_info.annotations``.

        Args:
            for_evaluation: give every split (``train`` too) the ``eval``
                processors, so scoring a split is deterministic (no random
                crops or flips).
        """
        self.build_processors()
        datasets: dict[str, Dataset] = {}
        info = self.config.build_info
        vis_root = resolve_data_path(info.images.storage) if info.images.storage else ""
        if vis_root and not g_pathmgr.exists(vis_root):
            raise MissingFileError(f"datasets.{self.name}.build_info.images.storage: folder not found: {vis_root}")
        for split, ann in info.annotations.items():
            is_train = split == "train"
            paths = [resolve_data_path(p) for p in as_list(ann.storage)]
            if not paths:
                raise MissingFileError(f"datasets.{self.name}.build_info.annotations.{split}.storage: no annotation file given")
            urls = as_list(ann.url)
            for i, p in enumerate(paths):
                if not g_pathmgr.exists(p):
                    where = f" (download it from {urls[i]})" if i < len(urls) and urls[i] else ""
                    raise MissingFileError(f"datasets.{self.name}.build_info.annotations.{split}: {p} not found{where}")
            key = "train" if is_train and not for_evaluation else "eval"
            dataset_cls = self.train_dataset_cls if is_train else (self.eval_dataset_cls or self.train_dataset_cls)
            if dataset_cls is None:
                raise TypeError(f"builder {type(self).__name__} sets no dataset class for split '{split}'")
            kwargs: dict[str, Any] = {
                "vis_processor": self.vis_processors.get(key),
                "text_processor": self.text_processors.get(key),
                "vis_root": vis_root,
                "ann_paths": paths,
            }
            if _accepts(dataset_cls, "bad_samples"):  # a user's own Dataset class may not take the policy
                kwargs["bad_samples"] = self.bad_sample_policy()
            # Some files hold several splits (ScienceQA's pid_splits, Karpathy's captions): the builder picks by name.
            self.current_split = str(split)
            datasets[split] = self.make_dataset(dataset_cls, **kwargs)
            logger.info("dataset %s/%s: %d samples", self.name, split, len(datasets[split]))  # type: ignore[arg-type]
        return datasets

    def make_dataset(self, dataset_cls: type, **kwargs: Any) -> Dataset:
        """Instantiates one split; override to pass format-specific arguments."""
        return dataset_cls(**kwargs)


def _accepts(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` takes the keyword ``name``."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
