"""``results.md``: one row per evaluated split with its headline metric, as papers print it, and how it was asked.

Each generation split's metrics carry ``settings`` (the scorer, its headline metric
and value, the prompt template, the generation settings; ``GenerationTask.compute_metrics``);
other tasks show their ``agg_metrics``.
"""

from __future__ import annotations

import datetime
from typing import Any

__all__ = ["describe_generation", "results_markdown"]


def describe_generation(settings: dict[str, Any]) -> str:
    """A short account of generation settings: ``greedy, max_new_tokens 10`` / ``beam 5, ...`` / ``sampling (T 0.7, top_p 0.9), ...``."""
    if settings.get("do_sample"):
        mode = f"sampling (T {settings.get('temperature', 1.0):g}, top_p {settings.get('top_p', 1.0):g})"
    elif int(settings.get("num_beams", 1)) > 1:
        mode = f"beam {settings['num_beams']}"
    else:
        mode = "greedy"
    parts = [mode, f"max_new_tokens {settings.get('max_new_tokens')}"]
    if int(settings.get("min_new_tokens", 1)) != 1:
        parts.append(f"min_new_tokens {settings['min_new_tokens']}")
    if float(settings.get("repetition_penalty", 1.0)) != 1.0:
        parts.append(f"repetition_penalty {settings['repetition_penalty']:g}")
    return ", ".join(parts)


def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line (newlines shown as ``\\n``), pipes escaped."""
    return text.replace("|", "\\|").replace("\n", "\\n")


def results_markdown(metrics: dict[str, dict[str, Any]], skipped: dict[str, str] | None = None, about: dict[str, str] | None = None) -> str:
    """The ``results.md`` of an evaluation.

    Args:
        metrics: ``{"<dataset>/<split>": metrics}`` as ``metrics.json`` holds them.
        skipped: datasets left out (``run.on_missing: skip``) -> why.
        about: lines for the header (``model``, ``checkpoint``, ``precision``, ...).

    Returns:
        Markdown: a header, the table (benchmark, split, metric, score, samples, prompt,
        generation), and the skipped datasets.
    """
    lines = ["# Evaluation results", ""]
    for key, value in (about or {}).items():
        lines.append(f"- {key}: {value}")
    lines.append(f"- written: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    lines += ["", "| benchmark | split | metric | score | samples | prompt | generation |", "| --- | --- | --- | ---: | ---: | --- | --- |"]
    for key, m in metrics.items():
        benchmark, _, split = key.partition("/")
        settings = m.get("settings") or {}
        headline = settings.get("headline") or {"metric": "agg_metrics", "value": m.get("agg_metrics")}
        value = headline.get("value")
        score = f"{value:.2f}" if isinstance(value, (int, float)) else "n/a"
        prompt = f"`{_cell(settings['prompt'])}`" if settings.get("prompt") else ""
        generation = describe_generation(settings["generate"]) if settings.get("generate") else ""
        lines.append(f"| {benchmark} | {split} | {headline.get('metric')} | {score} | {m.get('n_samples', '')} | {prompt} | {generation} |")
    if skipped:
        lines += ["", f"Skipped ({len(skipped)}, run.on_missing=skip):", ""]
        lines += [f"- {name}: {_cell(reason.splitlines()[0])}" for name, reason in skipped.items()]
    lines += ["", "Every metric: `metrics.json`; every sample's prompt, reply and outcome: `results/<benchmark>_<split>.json`.", ""]
    return "\n".join(lines)
