"""Logging: a library logger, rank-0 console output, and a JSON-lines metrics file."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from lavislite.common.dist_utils import is_main_process

logger = logging.getLogger("lavislite")

# ``logger.info(..., extra=FILE_ONLY)`` goes to the log file but not to the
# terminal (e.g. the fully merged config: hundreds of lines a terminal does not need).
FILE_ONLY = {"file_only": True}


class _NotFileOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def setup_logger(log_file: str | None = None) -> None:
    """Logs INFO on rank 0 (WARNING elsewhere) to stderr and, if given, to ``log_file``.

    Safe to call again (e.g. a second run in one interpreter): the console
    handler is added once, and a new ``log_file`` replaces the previous one.
    """
    level = logging.INFO if is_main_process() else logging.WARNING
    logger.setLevel(level)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(fmt)
        handler.addFilter(_NotFileOnly())
        logger.addHandler(handler)
    if log_file and is_main_process():
        for old in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(old)
            old.close()
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)


def ensure_console_logging() -> None:
    """Gives the Python API (``load_model`` & co.) the console output the entry points have.

    Reports such as "loaded N tensors from ..." are INFO messages; without a
    handler Python would drop them. Does nothing once any handler is set (an
    entry point's ``setup_logger``, or the user's own logging set-up).
    """
    if not logger.handlers:
        setup_logger()


class JsonlWriter:
    """Appends one JSON object per line and flushes, so a crash loses nothing written."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, sort_keys=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
