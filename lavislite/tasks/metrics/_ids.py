"""Error text for ids present on one side of an evaluation and missing on the other."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence


def describe_missing_ids(missing: Sequence[Hashable], present: Iterable[Hashable], mine: str, theirs: str) -> str:
    """List the missing ids (the first 20) and point out int/str look-alikes.

    Args:
        missing: ids of ``mine`` with nothing on the other side.
        present: the ids the other side does have.
        mine: what the missing ids are (e.g. ``"candidate"``).
        theirs: what the other side is (e.g. ``"reference"``).

    Returns:
        e.g. ``"2, 3 (ids are compared as-is: candidate 2 vs reference '2')"``.
    """
    shown = ", ".join(repr(key) for key in missing[:20])
    if len(missing) > 20:
        shown += f", ... ({len(missing)} in all)"
    # A common slip: ids read from JSON as str on one side and as int on the other.
    by_str = {str(key): key for key in present}
    near = [(key, by_str[str(key)]) for key in missing[:3] if str(key) in by_str]
    if near:
        shown += " (ids are compared as-is: " + ", ".join(f"{mine} {a!r} vs {theirs} {b!r}" for a, b in near) + ")"
    return shown


def require_predictions(ids: Sequence[Hashable], predictions: Iterable[Hashable], what: str) -> None:
    """Raises ``ValueError`` naming every annotated id without a prediction (``what``: ``"POPE question"``)."""
    have = set(predictions)
    missing = [key for key in ids if key not in have]
    if missing:
        raise ValueError(f"no prediction for {what} id(s) {describe_missing_ids(missing, have, 'annotation', 'prediction')}")
