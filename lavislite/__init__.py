"""lavislite: a small registry-driven framework for BLIP-2 + Qwen instruction tuning.

Importing the package registers every built-in model, processor, builder, task,
runner and lr scheduler. Heavy libraries (deepspeed, timm, transformers model
code) load only when used.
"""

from lavislite.common.registry import registry
from lavislite.common.utils import default_cache_root, library_root

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
