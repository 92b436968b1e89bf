"""Path helpers: where the shipped configs / demo live, and where caches go.

Everything that reads a shipped file goes through ``library_path`` so it works
from a clone, an editable install and a wheel (where setup.py copied
``configs/`` and ``projects/`` into ``lavislite/_data``), never through the
current directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def library_root() -> Path:
    """Returns the folder that holds ``configs/`` and ``projects/``."""
    shipped = PACKAGE_DIR / "_data"
    if (shipped / "configs").is_dir():
        return shipped
    return PACKAGE_DIR.parent


def library_path(relative: str | os.PathLike[str]) -> str:
    """Resolves a path relative to the library root (``configs/...``, ``projects/...``).

    Absolute paths are returned unchanged.
    """
    p = Path(relative)
    if p.is_absolute():
        return str(p)
    return str(library_root() / p)


def default_cache_root() -> str:
    """The cache folder: ``$LAVISLITE_CACHE`` or ``configs/default.yaml``'s ``cache_root``."""
    env = os.environ.get("LAVISLITE_CACHE")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    default_yaml = library_path("configs/default.yaml")
    root = "~/.cache/lavislite"
    if os.path.exists(default_yaml):
        root = str(OmegaConf.load(default_yaml).get("cache_root", root))
    return os.path.abspath(os.path.expanduser(root))


def resolve_data_path(path: str, cache_root: str | None = None) -> str:
    """Resolves a ``build_info`` path the way LAVIS users expect.

    Absolute paths stay; a relative path that exists from the current folder is
    used as is; otherwise it is taken relative to the cache root.
    """
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded) or os.path.exists(expanded):
        return os.path.abspath(expanded)
    return os.path.join(cache_root or default_cache_root(), expanded)


def as_list(value: Any) -> list[Any]:
    """``None``/``""`` -> ``[]``, a sequence (list, tuple, ListConfig) -> a list, anything else -> ``[value]``.

    Config and annotation fields accept one item or a list of them.
    """
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]


def set_seed(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's (CPU and CUDA) generators of this process.

    The imports are local: ``common`` is imported with ``lavislite`` and must stay light.
    """
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _register_resolvers() -> None:
    # ``${lib:projects/demo/data}`` in a YAML file points into the shipped files.
    if not OmegaConf.has_resolver("lib"):
        # omegaconf 2.4 renamed register_new_resolver; support both.
        register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
        register("lib", library_path)


_register_resolvers()
