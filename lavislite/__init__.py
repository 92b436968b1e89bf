"""lavislite: a small registry-driven framework for BLIP-2 + Qwen instruction tuning.

Importing the package registers every built-in model, processor, builder, task,
runner and lr scheduler. Heavy libraries (deepspeed, timm, transformers model
code) load only when used.
"""

import os

# Idle OpenMP threads sleep instead of spinning. Set before torch is imported
# (the OpenMP runtime reads it when it loads; DataLoader workers inherit it):
# with torch's spinning default, a process that shares its cores with anything
# (its own DataLoader workers, another job) ran 1.6x slower on the 2-core demo
# machine, while on a quiet machine both are equally fast (benchmarks/thread_settings.py).
# LAVISLITE_THREADS=torch keeps torch's defaults; an OMP_WAIT_POLICY already set wins.
if os.environ.get("LAVISLITE_THREADS") != "torch":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lavislite.common.registry import registry  # noqa: E402
from lavislite.common.utils import default_cache_root, library_root  # noqa: E402

registry.register_path("library_root", str(library_root()))
registry.register_path("cache_root", default_cache_root())

# Order follows the dependency direction; each import registers its names.
from lavislite.common import optims  # noqa: E402,F401
from lavislite import processors  # noqa: E402,F401
from lavislite import datasets  # noqa: E402,F401
from lavislite import models  # noqa: E402,F401
from lavislite import tasks  # noqa: E402,F401
from lavislite import runners  # noqa: E402,F401

__version__ = "0.1.0"
__all__ = ["registry", "__version__"]
