"""The one registry of lavislite.

Every name a run config uses (model arch, builder, processor, task, runner,
lr scheduler, scorer) is looked up here. One ``Registry`` class holds one namespace per
kind; ``registry`` is the single instance the whole library shares.

A lookup never returns ``None``: an unknown name raises ``RegistryError`` that
names the kind, the closest registered names and every registered name, so a
typo in a YAML file fails at start-up with a useful message.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, TypeVar

T = TypeVar("T")

KINDS = ("model", "processor", "builder", "task", "runner", "lr_scheduler", "scorer")


class RegistryError(KeyError):
    """Raised for an unknown or duplicate registry name.

    Subclasses ``KeyError`` so callers that catch lookups keep working, but
    ``str()`` gives the plain message (``KeyError`` would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def close_matches(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """Returns the candidates closest to ``name`` (best first), for error messages.

    Only those about as close as the best one: a one-letter typo of one name
    suggests that name, not every name that shares a few letters with it.
    """
    lowered = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    if not hits:
        return []
    score = lambda h: difflib.SequenceMatcher(None, name.lower(), h).ratio()  # noqa: E731
    best = score(hits[0])
    return [lowered[h] for h in hits if score(h) >= best - 0.15]


class Registry:
    """Name -> class tables, one per kind, plus named paths.

    Classes enter with a decorator (``@registry.register_model("blip2_qwen")``)
    and leave by name (``registry.get_model_class("blip2_qwen")``).
    """

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        self._paths: dict[str, str] = {}

    # -- generic -----------------------------------------------------------
    def register(self, kind: str, name: str) -> Callable[[T], T]:
        """Returns a decorator that registers a class under ``kind``/``name``.

        Raises:
            RegistryError: if ``kind`` is unknown or ``name`` is taken by another class.
        """
        table = self._table(kind)

        def wrap(cls: T) -> T:
            existing = table.get(name)
            # Re-importing the same module (e.g. a user script run twice in one
            # interpreter) re-defines the class; only a *different* class is a clash.
            if existing is not None and _qualname(existing) != _qualname(cls):
                raise RegistryError(
                    f"{kind} name '{name}' is already registered by {_qualname(existing)}; "
                    f"{_qualname(cls)} cannot take it. Pick another name."
                )
            table[name] = cls
            return cls

        return wrap

    def get(self, kind: str, name: str) -> Any:
        """Returns the class registered as ``kind``/``name``.

        Raises:
            RegistryError: naming the kind, the closest names and all registered names.
        """
        table = self._table(kind)
        if name in table:
            return table[name]
        names = sorted(table)
        hint = close_matches(str(name), names)
        msg = f"Unknown {kind} '{name}'."
        if hint:
            msg += f" Did you mean: {', '.join(repr(h) for h in hint)}?"
        msg += f" Registered {kind}s: {', '.join(names) if names else '(none)'}."
        raise RegistryError(msg)

    def name_of(self, kind: str, cls: Any) -> str:
        """Returns the name ``cls`` is registered under in ``kind``.

        Raises:
            RegistryError: if ``cls`` is not registered there.
        """
        for name, registered in self._table(kind).items():
            if registered is cls:
                return name
        raise RegistryError(f"{_qualname(cls)} is not a registered {kind}; add @registry.register_{kind}(\"name\")")

    def list(self, kind: str) -> list[str]:
        """Returns the sorted registered names of one kind."""
        return sorted(self._table(kind))

    def _table(self, kind: str) -> dict[str, Any]:
        if kind not in self._tables:
            raise RegistryError(f"Unknown registry kind '{kind}'. Kinds: {', '.join(KINDS)}.")
        return self._tables[kind]

    # -- the LAVIS-style spelled-out API ------------------------------------
    def register_model(self, name: str) -> Callable[[T], T]:
        return self.register("model", name)

    def register_processor(self, name: str) -> Callable[[T], T]:
        return self.register("processor", name)

    def register_builder(self, name: str) -> Callable[[T], T]:
        return self.register("builder", name)

    def register_task(self, name: str) -> Callable[[T], T]:
        return self.register("task", name)

    def register_runner(self, name: str) -> Callable[[T], T]:
        return self.register("runner", name)

    def register_lr_scheduler(self, name: str) -> Callable[[T], T]:
        return self.register("lr_scheduler", name)

    def register_scorer(self, name: str) -> Callable[[T], T]:
        """A benchmark's scorer: generated replies -> the benchmark's official metrics (``tasks.scorers``)."""
        return self.register("scorer", name)

    def get_model_class(self, name: str) -> Any:
        return self.get("model", name)

    def get_processor_class(self, name: str) -> Any:
        return self.get("processor", name)

    def get_builder_class(self, name: str) -> Any:
        return self.get("builder", name)

    def get_task_class(self, name: str) -> Any:
        return self.get("task", name)

    def get_runner_class(self, name: str) -> Any:
        return self.get("runner", name)

    def get_lr_scheduler_class(self, name: str) -> Any:
        return self.get("lr_scheduler", name)

    def get_scorer_class(self, name: str) -> Any:
        return self.get("scorer", name)

    def list_models(self) -> list[str]:
        return self.list("model")

    def list_processors(self) -> list[str]:
        return self.list("processor")

    def list_builders(self) -> list[str]:
        return self.list("builder")

    def list_tasks(self) -> list[str]:
        return self.list("task")

    def list_runners(self) -> list[str]:
        return self.list("runner")

    def list_lr_schedulers(self) -> list[str]:
        return self.list("lr_scheduler")

    def list_scorers(self) -> list[str]:
        return self.list("scorer")

    # -- paths ---------------------------------------------------------------
    def register_path(self, name: str, path: str) -> None:
        """Registers a named path (``library_root``, ``cache_root``); re-registering overwrites."""
        self._paths[name] = str(path)

    def get_path(self, name: str) -> str:
        """Returns a registered path.

        Raises:
            RegistryError: if the path name is unknown.
        """
        if name not in self._paths:
            raise RegistryError(f"Unknown path '{name}'. Registered paths: {', '.join(sorted(self._paths))}.")
        return self._paths[name]


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


registry = Registry()
