"""Generation settings: one typed schema, used by ``run.generate`` and ``model.generate``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class GenerateConfig:
    """How replies are generated (greedy by default; beam search with ``num_beams``, sampling with ``do_sample``).

    ``temperature`` and ``top_p`` apply only when sampling.
    """

    max_new_tokens: int = 30
    min_new_tokens: int = 1
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0

    @staticmethod
    def check_section(data: dict[str, Any]) -> list[str]:
        problems = []
        for key in ("max_new_tokens", "num_beams"):
            if data[key] < 1:
                problems.append(f"{key}: must be at least 1, got {data[key]}")
        if data["min_new_tokens"] < 0 or data["min_new_tokens"] > data["max_new_tokens"]:
            problems.append(f"min_new_tokens: must be between 0 and max_new_tokens ({data['max_new_tokens']}), got {data['min_new_tokens']}")
        if data["temperature"] <= 0:
            problems.append(f"temperature: must be > 0, got {data['temperature']}")
        if not 0 < data["top_p"] <= 1:
            problems.append(f"top_p: must be in (0, 1], got {data['top_p']}")
        return problems


def hf_generate_kwargs(settings: GenerateConfig | dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of transformers' ``generate`` for these settings."""
    data = asdict(settings) if isinstance(settings, GenerateConfig) else dict(settings)
    if not data.get("do_sample", False):
        # Greedy / beam search ignore these; passing them only makes transformers warn.
        data.pop("temperature", None)
        data.pop("top_p", None)
    if data.get("num_beams", 1) == 1:
        data.pop("length_penalty", None)
    return data
