"""Which attention kernel the LLM runs (``model.attn_implementation``).

``auto`` picks the fastest kernel that is exact for the run: FlashAttention-2
on CUDA in bf16/fp16 when the ``flash-attn`` package imports (packed rows then
take its varlen path), else PyTorch's ``sdpa`` (which on CUDA dispatches to its
own flash / memory-efficient kernels, and on a CPU to a fused kernel). ``eager``
(the plain matmul-softmax) is for debugging and for attention that must be
inspected. A choice that cannot run here fails at start-up, naming the key.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from lavislite.common.schema import ConfigError

AttnImplementation = Literal["auto", "eager", "sdpa", "flash_attention_2"]
ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "flash_attention_2")
# FlashAttention-2 has kernels for these activation dtypes only.
FLASH_PRECISIONS = ("bf16", "fp16")


def flash_attn_available() -> bool:
    """Whether the ``flash-attn`` package can be imported (without importing it)."""
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attn_implementation(requested: str, *, device_type: str, precision: str | None, flash_available: bool) -> str:
    """The attention implementation a model gets for ``requested`` on this device and precision.

    Args:
        requested: ``model.attn_implementation``: ``auto``, ``eager``, ``sdpa`` or ``flash_attention_2``.
        device_type: where the model runs (``"cuda"``, ``"cpu"``, ...).
        precision: the run's precision (``fp32``, ``bf16``, ``fp16``), or None when
            not known yet (then ``auto`` never picks FlashAttention-2, which needs bf16/fp16).
        flash_available: whether ``flash-attn`` imports (``flash_attn_available()``).

    Returns:
        The transformers ``attn_implementation`` name: ``auto`` is
        ``flash_attention_2`` on CUDA in bf16/fp16 with ``flash-attn`` installed, else ``sdpa``.

    Raises:
        ConfigError: an unknown name, or ``flash_attention_2`` where it cannot
            run (no ``flash-attn``, not CUDA, or a precision it has no kernel for).
    """
    key = "model.attn_implementation"
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ConfigError([f"{key}: {requested!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}"])
    if requested == "auto":
        fast = device_type == "cuda" and precision in FLASH_PRECISIONS and flash_available
        return "flash_attention_2" if fast else "sdpa"
    if requested == "flash_attention_2":
        problems = []
        if not flash_available:
            problems.append("the flash-attn package is not installed (pip install flash-attn --no-build-isolation)")
        if device_type != "cuda":
            problems.append(f"it runs on CUDA only, this run is on {device_type}")
        if precision is not None and precision not in FLASH_PRECISIONS:
            problems.append(f"it has no {precision} kernel (run.precision must be bf16 or fp16)")
        if problems:
            raise ConfigError([f"{key}: flash_attention_2 cannot run here: {'; '.join(problems)}; use auto or sdpa"])
    return requested
