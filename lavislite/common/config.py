"""Run configs: three layers merged, then validated before anything heavy is built.

Precedence (later wins): the model's default config
(``PRETRAINED_MODEL_CONFIG_DICT[model_type]``) and each builder's default config
(``DATASET_CONFIG_DICT[type]``) < the run YAML < ``--options a.b=c``.

Each section is checked against the typed schema of the class it configures
(the model's ``Config``, the builder's ``Config``, each processor's ``Config``,
the runner's and task's ``Config`` for ``run``). Every problem is reported at
once with its full key path, so a typo costs seconds, not a training job.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import lavislite.common.utils  # noqa: F401  (registers the ${lib:...} resolver)
from lavislite.common.registry import RegistryError, close_matches, registry
from lavislite.common.errors import MissingFileError
from lavislite.common.schema import ConfigError, field_paths, validate
from lavislite.common.utils import library_path

TOP_LEVEL_KEYS = ("model", "datasets", "run")
SHIPPED_PREFIX = "lavislite:"
PROCESSOR_KEYS = ("vis_processor", "text_processor")


def load_yaml(path: str) -> DictConfig:
    """Loads a YAML file into a DictConfig; a missing or malformed file raises naming it."""
    if not os.path.exists(path):
        raise MissingFileError(f"Config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError carries the line and column
        raise ConfigError([f"cannot parse YAML: {exc}"], path) from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(["the top level must be a mapping"], path)
    return cfg


def parse_options(options: list[str] | None) -> DictConfig:
    """Turns ``["a.b=c", ...]`` into a DictConfig; a malformed item raises naming it."""
    options = list(options or [])
    for item in options:
        if "=" not in item:
            raise ConfigError([f"--options item '{item}' must look like key.path=value"])
    try:
        return OmegaConf.from_dotlist(options)
    except OmegaConfBaseException as exc:
        raise ConfigError([f"cannot parse --options: {exc}"]) from exc


def import_user_modules(modules: list[str]) -> None:
    """Imports user modules (``run.imports`` / ``--import``) so their classes register.

    Each entry is a module name (``my_pkg.builders``) or a path to a ``.py`` file.
    """
    for mod in modules:
        if mod.endswith(".py") or os.path.sep in mod:
            path = os.path.abspath(mod)
            if not os.path.exists(path):
                raise ConfigError([f"run.imports: file not found: {mod}"])
            sys.path.insert(0, os.path.dirname(path))
            mod = os.path.splitext(os.path.basename(path))[0]
        elif os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        importlib.import_module(mod)


def _to_dict(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]
    return dict(cfg)


def _lookup(kind: str, name: Any, path: str, problems: list[str]) -> Any:
    try:
        return registry.get(kind, str(name))
    except RegistryError as exc:
        problems.append(f"{path}: {exc}")
        return None


def default_config_path(cls: type, table: dict[str, str], key: str) -> str:
    """Resolves a ``PRETRAINED_MODEL_CONFIG_DICT`` / ``DATASET_CONFIG_DICT`` entry.

    Relative paths are looked up in the library root first, then beside the module
    that defines ``cls`` (so a user's builder can ship its YAML next to its code).
    """
    candidate = library_path(table[key])
    if os.path.exists(candidate):
        return candidate
    module_file = getattr(sys.modules.get(cls.__module__), "__file__", None) or "."
    return os.path.join(os.path.dirname(os.path.abspath(module_file)), table[key])


def _default_file(cls: type, table: dict[str, str], key: str, path: str, what: str, problems: list[str]) -> str | None:
    if key not in table:
        hint = close_matches(key, list(table), n=1)
        problems.append(
            f"{path}: unknown {what} '{key}'"
            + (f"; did you mean '{hint[0]}'?" if hint else "")
            + f" Available: {', '.join(sorted(table))}."
        )
        return None
    return default_config_path(cls, table, key)


def model_section(user_model: DictConfig | dict[str, Any], problems: list[str]) -> DictConfig | None:
    """Merges the model's default config under the user's ``model`` section (unvalidated)."""
    user_model = OmegaConf.create(_to_dict(user_model))
    if "arch" not in user_model:
        problems.append("model.arch: required key is missing (a registered model name)")
        return None
    model_cls = _lookup("model", user_model.arch, "model.arch", problems)
    if model_cls is None:
        return None
    model_type = user_model.get("model_type", None) or model_cls.Config.model_type
    path = _default_file(model_cls, model_cls.PRETRAINED_MODEL_CONFIG_DICT, model_type, "model.model_type", "model_type", problems)
    if path is None:
        return None
    default = load_yaml(path).get("model", {})
    return OmegaConf.merge(default, {"model_type": model_type}, user_model)


def dataset_section(name: str, user_ds: Any, problems: list[str]) -> DictConfig | None:
    """Merges a builder's default config under the user's ``datasets.<name>`` section."""
    builder_cls = _lookup("builder", name, f"datasets.{name}", problems)
    if builder_cls is None:
        return None
    user_ds = OmegaConf.create(_to_dict(user_ds))
    ds_type = str(user_ds.get("type", "default"))
    path = _default_file(builder_cls, builder_cls.DATASET_CONFIG_DICT, ds_type, f"datasets.{name}.type", "dataset type", problems)
    if path is None:
        return None
    default = load_yaml(path).get("datasets", {}).get(name, {})
    # The splits a run lists are the splits it gets: a user's build_info.annotations
    # replaces the default's (merging would keep, and require, every default split's file).
    user_annotations = OmegaConf.select(user_ds, "build_info.annotations")
    if user_annotations is not None and OmegaConf.select(default, "build_info.annotations") is not None:
        default = OmegaConf.merge(default, {})
        default.build_info.annotations = {}
    return OmegaConf.merge(default, user_ds)


def validate_processors(section: dict[str, Any], path: str, problems: list[str]) -> None:
    """Validates ``{vis,text}_processor.{split}`` specs against each processor's schema, in place."""
    for key in PROCESSOR_KEYS:
        for split, spec in (section.get(key) or {}).items():
            spec_path = f"{path}.{key}.{split}"
            if not isinstance(spec, dict) or "name" not in spec:
                problems.append(f"{spec_path}: expected a mapping with a 'name' (a registered processor)")
                continue
            proc_cls = _lookup("processor", spec["name"], f"{spec_path}.name", problems)
            if proc_cls is None:
                continue
            body = {k: v for k, v in spec.items() if k != "name"}
            try:
                section[key][split] = {"name": spec["name"], **validate(proc_cls.Config, body, spec_path)}
            except ConfigError as exc:
                problems.extend(exc.problems)


def run_schema(task_cls: type, runner_cls: type) -> type:
    """The ``run`` schema: the runner's fields plus the task's own fields.

    A dataclass inheriting both; ``typing.get_type_hints`` resolves each field's
    annotation in the module that declared it.
    """
    return dataclasses.make_dataclass("RunConfig", [], bases=(task_cls.Config, runner_cls.Config))


# The run keys naming the splits each entry point reads (checked against the datasets' splits).
SPLIT_KEYS = {"train": ("train_splits", "valid_splits", "test_splits"), "evaluate": ("test_splits",)}


class Config:
    """A validated run config with ``model_cfg``, ``datasets_cfg`` and ``run_cfg`` sections.

    Args:
        cfg_path: the run YAML.
        options: ``key.path=value`` overrides (``--options``).
        purpose: ``"train"`` or ``"evaluate"``: the split names that entry point
            reads must be splits of the configured datasets (None: not checked).

    Raises:
        ConfigError: listing every problem with its key path (before any model is built).
        FileNotFoundError: if ``cfg_path`` does not exist.
    """

    def __init__(self, cfg_path: str, options: list[str] | None = None, purpose: str | None = None) -> None:
        self.cfg_path = cfg_path
        yaml_cfg = load_yaml(cfg_path)
        user = OmegaConf.merge(yaml_cfg, parse_options(options))
        try:
            self.config = build_config(user, source=cfg_path, purpose=purpose)
        except ConfigError as exc:
            raise blame_options(exc, list(options or []), yaml_cfg, cfg_path) from None

    @property
    def model_cfg(self) -> DictConfig:
        return self.config.model

    @property
    def datasets_cfg(self) -> DictConfig:
        return self.config.datasets

    @property
    def run_cfg(self) -> DictConfig:
        return self.config.run

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(self.config)

    def save(self, path: str) -> None:
        """Writes the fully merged config, so the run can be repeated from its folder."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_yaml())


def _option_for(path: str, options: list[str], yaml_cfg: DictConfig) -> str | None:
    """The ``--options`` item a problem at ``path`` comes from, or None (it comes from the YAML)."""
    for item in reversed(options):  # a later item overrides an earlier one
        key = item.split("=", 1)[0].strip()
        if path == key or path.startswith((f"{key}.", f"{key}[")):
            return item  # the option set this key (or the mapping holding it)
        if key.startswith(f"{path}.") and OmegaConf.select(yaml_cfg, path, default=None) is None:
            return item  # the option created this section (``rnu.x=1``)
    return None


def blame_options(exc: ConfigError, options: list[str], yaml_cfg: DictConfig, cfg_path: str) -> ConfigError:
    """Rewrites the problems that an ``--options`` item caused so they name the item, not the YAML.

    ``run.max_epoch: expected an int`` from ``--options run.max_epoch=x`` becomes
    ``--options run.max_epoch=x: expected an int``; the message head names the
    YAML only if some problem comes from it.
    """
    problems: list[str] = []
    from_yaml = from_options = False
    for problem in exc.problems:
        path, sep, rest = problem.partition(": ")
        item = _option_for(path, options, yaml_cfg) if sep else None
        if item is None:
            from_yaml = True
            problems.append(problem)
            continue
        from_options = True
        key = item.split("=", 1)[0].strip()
        problems.append(f"--options {item}: {rest}" if path == key else f"--options {item}: {problem}")
    source = ", ".join(name for name, used in ((cfg_path, from_yaml), ("--options", from_options)) if used)
    return ConfigError(problems, source)


def split_problems(run: dict[str, Any], datasets: dict[str, dict[str, Any]], purpose: str) -> list[str]:
    """Names every split the entry point would read that no configured dataset has.

    A misspelt split (``run.test_splits=[tets]``) would otherwise make an
    evaluation that scores nothing and exits 0.
    """
    have = {name: registry.get_builder_class(name).split_names(ds) for name, ds in datasets.items()}
    known = sorted({s for splits in have.values() for s in splits})
    listing = "; ".join(f"{name}: {', '.join(splits) or '(none)'}" for name, splits in have.items()) or "no datasets configured"
    keys = SPLIT_KEYS[purpose]
    if purpose == "evaluate" and not run.get("test_splits"):
        keys = ("valid_splits",)  # evaluate.py reads valid_splits when test_splits is empty
    problems = []
    for key in keys:
        for split in run.get(key) or []:
            if split not in known:
                hint = close_matches(str(split), known, n=1)
                problems.append(
                    f"run.{key}: unknown split '{split}'" + (f"; did you mean '{hint[0]}'?" if hint else "") + f" The datasets have: {listing}."
                )
    return problems


def mixing_problems(run: dict[str, Any], datasets: dict[str, dict[str, Any]]) -> list[str]:
    """The rules of mixing by ``datasets.<name>.sample_ratio``, across sections.

    Every training set (a dataset with a split in ``run.train_splits``) has a
    ratio or none has (a set without one has no share to draw by); a ratio on a
    set that is never trained on is a mistake; ``run.samples_per_epoch`` is
    only read when mixing; mixing and ``run.group_by_length`` / ``run.packing``
    do not combine (those plan an epoch from every sample's length, the
    mixture draws by ratio).
    """
    train_splits = set(run.get("train_splits") or [])
    training = [n for n, ds in datasets.items() if train_splits & set(registry.get_builder_class(n).split_names(ds))]
    with_ratio = [n for n, ds in datasets.items() if ds.get("sample_ratio") is not None]
    problems = [
        f"datasets.{n}.sample_ratio: {n} has no split of run.train_splits ({', '.join(sorted(train_splits)) or 'none'}), so it is never drawn; remove the key"
        for n in with_ratio
        if n not in training
    ]
    mixing = [n for n in training if n in with_ratio]
    without = [n for n in training if n not in with_ratio]
    if mixing and without:
        problems.append(
            f"datasets.<name>.sample_ratio: set on {', '.join(mixing)} but not on {', '.join(without)}; "
            "mixing weighs every training set, so give each one a sample_ratio (or remove it from all to concatenate them)"
        )
    if mixing:
        for key in ("group_by_length", "packing"):
            if run.get(key):
                problems.append(
                    f"run.{key}: does not combine with mixing (datasets.{'/'.join(mixing)}.sample_ratio): "
                    f"set run.{key}=false, or remove sample_ratio to concatenate the sets"
                )
    elif run.get("samples_per_epoch") is not None:
        problems.append("run.samples_per_epoch: only used when mixing (datasets.<name>.sample_ratio on every training set); remove it")
    return problems


def best_metric_problems(run: dict[str, Any], datasets: dict[str, dict[str, Any]]) -> list[str]:
    """``run.best_metric`` (``dataset/split/metric``) names a configured dataset and one of its ``run.valid_splits``.

    The metric itself is known only once the split is scored; a name the scores
    lack fails at the first validation, listing the ones they have.
    """
    name = run.get("best_metric")
    if not name:
        return []
    parts = str(name).split("/")
    if len(parts) < 3 or not all(parts):
        return [f"run.best_metric: '{name}' must be dataset/split/metric (e.g. pope/test/f1)"]
    dataset, split = parts[0], parts[1]
    if dataset not in datasets:
        hint = close_matches(dataset, list(datasets), n=1)
        return [f"run.best_metric: '{name}' names dataset '{dataset}', which the config does not have" + (f"; did you mean '{hint[0]}'?" if hint else f" (it has {', '.join(datasets) or 'none'})")]
    if split not in (run.get("valid_splits") or []):
        return [f"run.best_metric: '{name}' names split '{split}', which is not in run.valid_splits ({', '.join(run.get('valid_splits') or []) or 'empty'}); only validation picks the best weights"]
    return []


def known_key_paths(user: DictConfig, task_cls: type | None, runner_cls: type | None) -> list[str]:
    """Every key path the run config could hold: the arch's model schema, the builders' and the run schema.

    Sections that cannot be looked up (an unknown arch) are left out; their own
    problem is reported separately.
    """
    paths: list[str] = []
    model = user.get("model", None)
    arch = model.get("arch", None) if isinstance(model, DictConfig) else None
    if arch is not None and str(arch) in registry.list("model"):
        paths += field_paths(registry.get_model_class(str(arch)).Config, "model")
    for name in user.get("datasets", None) or {}:
        if str(name) in registry.list("builder"):
            paths += field_paths(registry.get_builder_class(str(name)).Config, f"datasets.{name}")
    if runner_cls is not None:
        paths += field_paths(run_schema(task_cls, runner_cls) if task_cls is not None else runner_cls.Config, "run")
    return paths


def top_level_problem(key: str, known: list[str]) -> str:
    """The message for a top-level key that is not a section, with where the key probably belongs.

    ``freeze_vit:`` at the top level is a model key one level too high: the
    key name is searched among every known key path (``model.freeze_vit``);
    failing that, a misspelt section (``rnu``) or a misspelt key.
    """
    where = [p for p in known if p.rsplit(".", 1)[-1] == key]
    if not where:
        where = close_matches(key, list(TOP_LEVEL_KEYS), n=1)
    if not where:
        leaves = {p.rsplit(".", 1)[-1]: p for p in known}
        where = [leaves[m] for m in close_matches(key, list(leaves), n=1)]
    hint = f"; did you mean {' or '.join(repr(w) for w in where)}?" if where else "."
    return f"{key}: unknown top-level section{hint} Sections: {', '.join(TOP_LEVEL_KEYS)}."


def build_config(user: DictConfig, source: str = "", purpose: str | None = None) -> DictConfig:
    """Merges the default layers under ``user`` and validates every section.

    Args:
        user: the run config (YAML merged with ``--options``).
        source: where it came from, for messages.
        purpose: ``"train"`` / ``"evaluate"`` to check split names (``split_problems``).

    Raises:
        ConfigError: with every problem found, each with its key path.
    """
    problems: list[str] = []
    misplaced = [str(key) for key in user if key not in TOP_LEVEL_KEYS]
    run_user = user.get("run", None) or OmegaConf.create({})
    import_user_modules(list(run_user.get("imports", None) or []))

    merged: dict[str, Any] = {"model": None, "datasets": {}, "run": None}
    model_cfg = model_section(user.get("model", None) or {}, problems)
    datasets_user = user.get("datasets", None) or {}
    dataset_cfgs = {str(name): dataset_section(str(name), ds, problems) for name, ds in datasets_user.items()}

    task_cls = runner_cls = None
    if "task" not in run_user:
        problems.append("run.task: required key is missing (a registered task name)")
    else:
        task_cls = _lookup("task", run_user.task, "run.task", problems)
    runner_cls = _lookup("runner", run_user.get("runner", "runner_base"), "run.runner", problems)
    if misplaced:
        known = known_key_paths(user, task_cls, runner_cls)
        problems[:0] = [top_level_problem(key, known) for key in misplaced]

    # Interpolations (``${model.qformer.num_query_token}``, ``${lib:...}``) resolve
    # against the merged whole, so build it before converting to containers.
    whole = OmegaConf.create(
        {
            "model": model_cfg if model_cfg is not None else {},
            "datasets": {k: v for k, v in dataset_cfgs.items() if v is not None},
            "run": run_user,
        }
    )
    try:
        resolved = OmegaConf.to_container(whole, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(problems + [f"cannot resolve interpolation: {exc}"], source) from exc
    assert isinstance(resolved, dict)

    if model_cfg is not None:
        model_cls = registry.get_model_class(str(model_cfg.arch))
        try:
            merged["model"] = validate(model_cls.Config, resolved["model"], "model")
        except ConfigError as exc:
            problems.extend(exc.problems)
        if merged["model"] is not None:
            validate_processors(merged["model"].get("preprocess", {}) or {}, "model.preprocess", problems)
    for name, ds in resolved["datasets"].items():
        builder_cls = registry.get_builder_class(name)
        try:
            merged["datasets"][name] = validate(builder_cls.Config, ds, f"datasets.{name}")
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        validate_processors(merged["datasets"][name], f"datasets.{name}", problems)
    if task_cls is not None and runner_cls is not None:
        try:
            merged["run"] = validate(run_schema(task_cls, runner_cls), resolved["run"], "run")
        except ConfigError as exc:
            problems.extend(exc.problems)
    if purpose and merged["run"] is not None and not problems:
        problems.extend(split_problems(merged["run"], merged["datasets"], purpose))
    if purpose != "evaluate" and merged["run"] is not None and not problems:
        problems.extend(mixing_problems(merged["run"], merged["datasets"]))
        problems.extend(best_metric_problems(merged["run"], merged["datasets"]))
    if task_cls is not None and merged["run"] is not None and not problems and hasattr(task_cls, "config_problems"):
        # Rules of the task across sections (a benchmark's scorer and generation settings).
        problems.extend(task_cls.config_problems(merged["run"], merged["datasets"]))
    if problems:
        if any(": unknown key" in p for p in problems):
            known = known_key_paths(user, task_cls, runner_cls)
            problems = [elsewhere_hint(p, known) for p in problems]
        raise ConfigError(problems, source)
    return OmegaConf.create(merged)


def elsewhere_hint(problem: str, known: list[str]) -> str:
    """Points an unknown key to the section that has a key of that name (``model.init_lr`` -> ``run.init_lr``).

    The schema's own hint only looks among the keys beside the unknown one,
    where a key written in the wrong section has no match.
    """
    path, sep, rest = problem.partition(": ")
    if not sep or not rest.startswith("unknown key"):
        return problem
    name = path.rsplit(".", 1)[-1]
    where = [p for p in known if p.rsplit(".", 1)[-1] == name and p != path]
    if not where:
        return problem
    return f"{path}: unknown key here; did you mean {' or '.join(repr(w) for w in where)}?"


def load_model_config(arch: str, model_type: str, overrides: dict[str, Any] | None = None) -> DictConfig:
    """Returns a model's validated default config (``model`` section only), with overrides."""
    problems: list[str] = []
    section = model_section({"arch": arch, "model_type": model_type, **(overrides or {})}, problems)
    if section is None:
        raise ConfigError(problems)
    model_cls = registry.get_model_class(arch)
    data = validate(model_cls.Config, OmegaConf.to_container(section, resolve=True), "model")
    validate_processors(data.get("preprocess", {}) or {}, "model.preprocess", problems)
    if problems:
        raise ConfigError(problems)
    return OmegaConf.create(data)


def load_dataset_config(name: str, overrides: dict[str, Any] | None = None) -> DictConfig:
    """Returns a builder's validated default config (``datasets.<name>``), with overrides."""
    problems: list[str] = []
    section = dataset_section(name, overrides or {}, problems)
    if section is None:
        raise ConfigError(problems)
    builder_cls = registry.get_builder_class(name)
    data = validate(builder_cls.Config, OmegaConf.to_container(section, resolve=True), f"datasets.{name}")
    validate_processors(data, f"datasets.{name}", problems)
    if problems:
        raise ConfigError(problems)
    return OmegaConf.create(data)


def resolve_config_path(path: str) -> str:
    """``lavislite:projects/demo/train.yaml`` names a config shipped with the package; other paths stay."""
    if path.startswith(SHIPPED_PREFIX):
        return library_path(path[len(SHIPPED_PREFIX) :])
    return path


def add_config_args(parser: argparse.ArgumentParser, cfg_required: bool = True) -> argparse.ArgumentParser:
    """The arguments every entry point takes: ``--cfg-path``, ``--options``, ``--import``."""
    parser.add_argument(
        "--cfg-path", required=cfg_required, help=f"the run config YAML; '{SHIPPED_PREFIX}projects/demo/train.yaml' names one shipped with lavislite"
    )
    parser.add_argument("--options", nargs="+", action="extend", default=[], help="overrides, key.path=value (OmegaConf dot-list); may be given more than once")
    parser.add_argument("--import", dest="imports", nargs="+", default=[], help="modules or .py files to import first (your builders)")
    return parser


def load_config(args: argparse.Namespace, purpose: str | None = None) -> Config:
    """Imports the user's modules (``--import``) and builds the validated config.

    The caller imports ``lavislite`` first, which registers the built-in names.

    Raises:
        ConfigError, MissingFileError: naming every problem (entry points print them without a traceback).
    """
    import_user_modules(args.imports)
    return Config(resolve_config_path(args.cfg_path), args.options, purpose=purpose)
