"""Logging: a library logger, rank-0 console output, and a JSON-lines metrics file."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from lavislite.common.dist_utils import is_main_process

logger = logging.getLogger("lavislite")


def setup_logger(log_file: str | None = None) -> None:
    """Logs INFO on rank 0 (WARNING elsewhere) to stderr and, if given, to ``log_file``."""
    level = logging.INFO if is_main_process() else logging.WARNING
    logger.setLevel(level)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    if log_file and is_main_process():
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)


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
