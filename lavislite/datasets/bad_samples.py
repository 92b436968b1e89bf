"""The bad-sample policy: what a dataset does with a sample it cannot use, and how the run keeps count.

Every builder's config has ``on_bad_sample`` (``error`` | ``skip``) and
``max_bad_fraction`` (``BuilderConfig``). A bad sample is one whose record is
malformed (a missing key, a number where text belongs, no conversation, a
placeholder count that does not match its images), whose image is missing or
cannot be decoded, or (``truncation: drop_sample`` on the text processor) whose
reply was cut by ``max_len``.

- ``error`` (the default of the JSON sets): build time raises one error listing
  every problem of the file (``format_problems``); a sample that fails in a
  DataLoader worker raises ``BadSampleError`` naming the annotation file (or
  shard) and the sample. Nothing already written (logs, metrics, checkpoints)
  is touched.
- ``skip`` (the default of streaming sets): the sample is left out and its
  ``BadSampleRecord`` is kept; build-time problems drop the record, more than
  ``max_bad_fraction`` of a file's records is still an error.

The cross-team protocol (map-style and streaming datasets alike): a skipped
sample's record, ``{"dataset", "source", "key", "reason"}`` (``BadSampleRecord.to_dict``),
travels from the DataLoader worker to the main process inside the collated
batch under ``BAD_SAMPLES_KEY`` (``"bad_samples"``: a list, absent when empty).
The runner pops it before the forward, appends the records to
``bad_samples.jsonl`` in the run folder (rank 0, after gathering every rank's
records), counts them (``bad_samples`` in ``metrics.jsonl``) and stops the run
(``BadSampleLimitError``) when more than ``max_bad_fraction`` of the samples
read so far are bad (``BadSampleTracker``).

Images are read by ``lavislite.processors.transforms.load_image`` (paths,
bytes or file objects; EXIF orientation applied), the one loader JSON sets and
shards share.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from lavislite.common.errors import DataError
from lavislite.common.logger import logger
from lavislite.processors.chat_processor import SampleError
from lavislite.processors.collate import BAD_SAMPLES_KEY, TRUNCATED_KEY

__all__ = [
    "BAD_SAMPLES_FILE",
    "BAD_SAMPLES_KEY",
    "DEFAULT_MAX_BAD_FRACTION",
    "MAX_SHOWN",
    "TRUNCATED_KEY",
    "BadSampleError",
    "BadSampleLimitError",
    "BadSamplePolicy",
    "BadSampleRecord",
    "BadSampleTracker",
    "BuildProblems",
    "OnBadSample",
    "format_problems",
    "locate",
]

OnBadSample = Literal["error", "skip"]
BAD_SAMPLES_FILE = "bad_samples.jsonl"
DEFAULT_MAX_BAD_FRACTION = 0.01
# Problems listed in one build-time error; the rest are counted ("... and N more").
MAX_SHOWN = 20


class BadSampleError(SampleError):
    """A sample cannot be used and its dataset's policy is ``error``; the message names the file (or shard) and the sample."""


class BadSampleLimitError(DataError):
    """More than ``max_bad_fraction`` of the samples read were bad (``on_bad_sample: skip``)."""


@dataclass
class BadSampleRecord:
    """One skipped sample: its dataset, where it came from, which one it was and why.

    Attributes:
        dataset: the builder name under ``datasets:`` (``llava_instruction``).
        source: the annotation file or shard the sample came from.
        key: the sample's place in it: the index in a JSON list (``"3"``), the
            line of a JSON-lines file (``"line 4"``), the shard member's key.
        reason: what is wrong, one line.
        id: the sample id, when the record has one (not part of the protocol's required keys).
    """

    dataset: str
    source: str
    key: str
    reason: str
    id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The protocol's dict (``id`` only when known)."""
        out: dict[str, Any] = {"dataset": self.dataset, "source": self.source, "key": self.key, "reason": self.reason}
        if self.id:
            out["id"] = self.id
        return out

    def describe(self) -> str:
        """``source[key] (id=...): reason``, for messages."""
        where = f"{self.source} {self.key}" if self.key.startswith("line") else f"{self.source}[{self.key}]"
        return f"{where}{f' (id={self.id})' if self.id else ''}: {self.reason}"


@dataclass
class BadSamplePolicy:
    """A dataset's policy, as its builder config states it.

    Attributes:
        dataset: the builder name (named in records and messages).
        on_bad_sample: ``error`` or ``skip``.
        max_bad_fraction: the largest share of bad samples a run tolerates.
    """

    dataset: str = ""
    on_bad_sample: OnBadSample = "error"
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION

    @property
    def skip(self) -> bool:
        return self.on_bad_sample == "skip"

    def option(self, key: str) -> str:
        """The config path of one of this dataset's options (for messages)."""
        return f"datasets.{self.dataset}.{key}" if self.dataset else key


def format_problems(header: str, problems: list[str], shown: int = MAX_SHOWN) -> str:
    """One message listing problems: ``header``, then up to ``shown`` lines, then ``... and N more``."""
    lines = "\n".join(f"    {p}" for p in problems[:shown])
    more = f"\n    ... and {len(problems) - shown} more" if len(problems) > shown else ""
    return f"{header}:\n{lines}{more}"


def fraction_exceeded(bad: int, read: int, max_bad_fraction: float) -> bool:
    """Whether ``bad`` of ``read`` samples is past ``max_bad_fraction``.

    The share is taken over at least ``1 / max_bad_fraction`` samples, so the
    first bad sample of a run (1 of 8 read: 12%) does not stop it under the
    default 0.01: one bad sample in the first 100 is tolerated, a second is not.
    ``max_bad_fraction: 0`` tolerates none.
    """
    if bad <= 0:
        return False
    if max_bad_fraction <= 0:
        return True
    return bad > max_bad_fraction * max(read, math.ceil(1.0 / max_bad_fraction))


@dataclass
class BadSampleTracker:
    """The run's counts of bad samples (all ranks together) and the ``max_bad_fraction`` check.

    The runner feeds it every rank's records and sample counts (the same
    numbers on every rank, so every rank stops at the same step with the same
    message). Pure bookkeeping: no files, no collectives.

    Attributes:
        limits: ``max_bad_fraction`` per dataset name; ``default_limit`` for others.
        read: samples read so far in training (trained and skipped), all ranks.
        bad: samples skipped so far in training, all ranks; ``per_dataset`` by dataset.
        truncated: samples whose reply ``max_len`` cut and that were kept, all ranks.
        built_out: records each dataset left out when it was built (``add_build``; not in
            the training fraction, which the build checked on its own).
    """

    limits: dict[str, float] = field(default_factory=dict)
    default_limit: float = DEFAULT_MAX_BAD_FRACTION
    read: int = 0
    bad: int = 0
    truncated: int = 0
    per_dataset: Counter = field(default_factory=Counter)
    built_out: Counter = field(default_factory=Counter)

    def add_build(self, records: list[dict[str, Any]]) -> None:
        """Counts the records the datasets left out when built (shown in ``metrics()``)."""
        for record in records:
            self.built_out[str(record.get("dataset", ""))] += 1

    def update(self, records: list[dict[str, Any]], trained: int, truncated: int = 0) -> None:
        """Adds one batch's counts (all ranks).

        Args:
            records: the skipped samples' records (protocol dicts).
            trained: samples that reached the batch.
            truncated: samples whose reply was cut by ``max_len``.

        Raises:
            BadSampleLimitError: a dataset's bad samples are past its ``max_bad_fraction``
                of the samples read so far, naming the dataset, the counts, the
                option and the last record.
        """
        self.read += trained + len(records)
        self.bad += len(records)
        self.truncated += truncated
        for record in records:
            self.per_dataset[str(record.get("dataset", ""))] += 1
        for name, count in self.per_dataset.items():
            limit = self.limits.get(name, self.default_limit)
            if fraction_exceeded(count, self.read, limit):
                last = next(r for r in reversed(records) if str(r.get("dataset", "")) == name) if records else {}
                raise BadSampleLimitError(
                    f"datasets.{name}: {count} bad sample(s) of {self.read} read so far ({count / max(self.read, 1):.2%}), "
                    f"more than max_bad_fraction={limit} (datasets.{name}.max_bad_fraction); stopping the run. "
                    f"The last: {last.get('source', '?')} key {last.get('key', '?')}: {last.get('reason', '?')}. "
                    f"Every skipped sample is listed in {BAD_SAMPLES_FILE} in the run folder"
                )

    def state(self) -> dict[str, Any]:
        """The counts, for a checkpoint (a resume continues them)."""
        return {"read": self.read, "bad": self.bad, "truncated": self.truncated, "per_dataset": dict(self.per_dataset)}

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Restores ``state()`` (an older checkpoint without one leaves the counts at 0)."""
        state = state or {}
        self.read, self.bad, self.truncated = int(state.get("read", 0)), int(state.get("bad", 0)), int(state.get("truncated", 0))
        self.per_dataset = Counter({str(k): int(v) for k, v in (state.get("per_dataset") or {}).items()})

    def metrics(self) -> dict[str, int]:
        """What ``metrics.jsonl`` records, cumulative over all ranks.

        ``bad_samples``: samples left out so far, at build time and in training
        (the lines of ``bad_samples.jsonl``); ``bad_samples/<dataset>`` the same
        per dataset; ``truncated_replies``: samples trained with a reply cut by ``max_len``.
        """
        total = self.per_dataset + self.built_out
        return {
            "bad_samples": self.bad + sum(self.built_out.values()),
            **{f"bad_samples/{name}": n for name, n in sorted(total.items())},
            "truncated_replies": self.truncated,
        }


_WHERE = re.compile(r"^(?P<source>.*?)(?:\[(?P<index>\d+)\]| (?P<line>line \d+))(?: \(id=(?P<id>.*)\))?$", re.S)


def locate(where: str) -> tuple[str, str, str]:
    """``(source, key, id)`` of a record location as the readers write it.

    ``"a.json[3] (id=s1)"`` -> ``("a.json", "3", "s1")``; ``"a.jsonl line 4"``
    -> ``("a.jsonl", "line 4", "")``; anything else is the source itself.
    """
    found = _WHERE.match(where)
    if not found:
        return where, "", ""
    return found.group("source"), found.group("index") or found.group("line"), found.group("id") or ""


class BuildProblems:
    """Every problem found while one dataset is built, reported together (``settle``).

    Readers and checks ``add`` a problem per record instead of raising at the
    first; the dataset then ``settle`` s them under its policy: ``error``
    raises one ``SampleError`` (one line for one problem, else a list of up to
    ``MAX_SHOWN`` and a count), ``skip`` drops those records, logs the list and
    keeps their ``BadSampleRecord`` s (``records``), unless they are past
    ``max_bad_fraction`` of the records read.
    """

    def __init__(self, policy: BadSamplePolicy | None = None) -> None:
        self.policy = policy or BadSamplePolicy()
        self.messages: list[str] = []
        self.records: list[BadSampleRecord] = []

    def __len__(self) -> int:
        return len(self.messages)

    def add(self, where: str, message: str) -> None:
        """One bad record.

        Args:
            where: its location (``file[index] (id=...)`` or ``file line N``).
            message: the problem; a leading ``where: `` is not repeated in the record's reason.
        """
        source, key, sample_id = locate(where)
        reason = message
        for prefix in (f"{where}: ", f"{source}: "):  # the message names the record (or the file) already
            if reason.startswith(prefix):
                reason = reason[len(prefix) :]
                break
        self.messages.append(message if message.startswith((where, source)) else f"{where}: {message}")
        self.records.append(BadSampleRecord(self.policy.dataset, source, key, reason, sample_id))

    def settle(self, total: int, files: list[str]) -> list[BadSampleRecord]:
        """Applies the policy to the problems found in ``total`` records of ``files``.

        Returns:
            The records of the samples left out (``skip``); empty when there were no problems.

        Raises:
            SampleError: ``on_bad_sample: error`` and at least one problem (all of them listed).
            BadSampleLimitError: ``skip``, but the problems are past ``max_bad_fraction``.
        """
        if not self.messages:
            return []
        names = ", ".join(files)
        n = len(self.messages)
        if not self.policy.skip:
            if n == 1:
                raise SampleError(self.messages[0])
            header = (
                f"{n} bad record(s) in {names} (of {total}); {self.policy.option('on_bad_sample')}=skip leaves them out"
            )
            raise SampleError(format_problems(header, self.messages))
        limit = self.policy.max_bad_fraction
        if fraction_exceeded(n, total, limit):
            header = (
                f"{n} of {total} record(s) of {names} are bad ({n / max(total, 1):.2%}), more than "
                f"{self.policy.option('max_bad_fraction')}={limit}"
            )
            raise BadSampleLimitError(format_problems(header, self.messages))
        logger.warning("%s", format_problems(f"{n} bad record(s) of {total} in {names} left out ({self.policy.option('on_bad_sample')}=skip)", self.messages))
        return list(self.records)
