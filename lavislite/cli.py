"""What every entry point shares: its arguments, and how it reports an error.

A ``UserError`` (bad config, bad data, a missing file, a checkpoint that does
not fit) is printed as a short ``error: ...`` and the process exits 2 without
a traceback; ``--debug`` or ``LAVISLITE_DEBUG=1`` shows the traceback. Other
exceptions are bugs and keep theirs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from lavislite.common.errors import UserError

EXIT_USER_ERROR = 2


def add_common_args(parser: argparse.ArgumentParser, cfg_required: bool = True) -> argparse.ArgumentParser:
    """``--cfg-path``, ``--options``, ``--import`` (see ``common.config``) and ``--debug``."""
    from lavislite.common.config import add_config_args

    add_config_args(parser, cfg_required)
    parser.add_argument("--debug", action="store_true", help="show the traceback of a config or data error (also LAVISLITE_DEBUG=1)")
    return parser


def user_message(exc: BaseException) -> str:
    """The message of a user error, without a DataLoader worker's traceback text."""
    text = str(exc)
    # DataLoader re-raises a worker's exception with the worker traceback in
    # its message; the user needs the last line, which names the sample.
    if "\nOriginal Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


def run_entry(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Runs an entry point's ``main``; turns a ``UserError`` into a message and exit code 2."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("LAVISLITE_DEBUG", "") not in ("", "0")
    try:
        return main(argv)
    except UserError as exc:
        if debug:
            raise
        rank = os.environ.get("RANK", "0")
        where = "" if os.environ.get("WORLD_SIZE", "1") == "1" else f" (rank {rank})"
        print(f"error{where}: {user_message(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        _close_process_group()


def _close_process_group() -> None:
    # Leaving without destroy_process_group makes torch warn about leaked resources.
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
