"""Model FLOPs utilisation (MFU): the FLOPs a step needs over what the devices could do.

``mfu = flops_per_token x tokens_per_sec / (peak_flops x devices)``, with the
LLM's FLOPs per token counted as in PaLM (Chowdhery et al. 2022, appendix B)
but following what trains:

    flops_per_token = 4 N + 2 N_trainable + 12 L H S

``N``: parameters of the LLM's transformer blocks (no input embedding, a
lookup; no LM head, which lavislite runs on supervised rows only); ``2 N`` the
forward matmuls, ``2 N`` the backward's input gradients (needed whenever
anything before the LLM trains), ``2 N_trainable`` the weight gradients (so
full fine-tuning is PaLM's ``6 N``); ``12 L H S`` the attention scores and
their backward (``L`` layers, width ``H``, ``S`` tokens a token attends over:
the mean sample length). The vision path, the LM head and recomputation
(gradient checkpointing) are not counted, so the figure is a lower bound.
"""

from __future__ import annotations

# Dense bf16 tensor-core peaks, TFLOP/s (no sparsity), by a substring of the
# device name torch reports ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB").
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0))


def peak_bf16_flops(device_name: str) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None for a device not in ``PEAK_BF16_TFLOPS``.

    Args:
        device_name: e.g. ``torch.cuda.get_device_name()``.
    """
    name = device_name.upper()
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


def llm_flops_per_token(n_params: int, n_trainable: int, n_layers: int, hidden: int, seq_len: float) -> float:
    """Training FLOPs per token of a decoder LLM: ``4 N + 2 N_trainable + 12 L H S`` (see the module docstring).

    Args:
        n_params: parameters of the transformer blocks (``N``).
        n_trainable: how many of them train (``N_trainable``; LoRA adapters count here).
        n_layers: ``L``.
        hidden: ``H``.
        seq_len: ``S``, the mean number of tokens attended over.

    Returns:
        FLOPs per token.
    """
    return 4.0 * n_params + 2.0 * n_trainable + 12.0 * n_layers * hidden * seq_len


def mfu(flops_per_token: float, tokens_per_sec: float, peak_flops: float, n_devices: int = 1) -> float:
    """Model FLOPs utilisation: the achieved model FLOP/s over the devices' peak.

    Args:
        flops_per_token: ``llm_flops_per_token(...)``.
        tokens_per_sec: real (non-pad) tokens per second, all devices together.
        peak_flops: one device's peak FLOP/s (``peak_bf16_flops``).
        n_devices: how many devices produced ``tokens_per_sec``.

    Returns:
        A fraction (0.4 is 40% MFU).
    """
    return flops_per_token * tokens_per_sec / (peak_flops * n_devices)
