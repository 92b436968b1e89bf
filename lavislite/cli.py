"""What every entry point shares: its arguments, and how it reports an error.

A ``UserError`` (bad config, bad data, a missing file, a checkpoint that does
not fit) is printed as a short ``error: ...`` and the process exits 2 without
a traceback; ``--debug`` or ``LAVISLITE_DEBUG=1`` shows the traceback. Other
exceptions are bugs and keep theirs.

Under a launcher (torchrun, deepspeed) every rank usually meets the same error
(the same config, the same files), so it is printed once per node: by local
rank 0, and by another rank only when its message is one local rank 0 did not
print (an error of its own shard). A failing worker exits 2 and torchrun stops
the others; it then prints its ``ChildFailedError`` summary (root cause
``exitcode : 2``) and exits 1 itself.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
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
        code = main(argv)
        _close_process_group(together=True)
        return code
    except UserError as exc:
        if debug:
            raise
        rank = os.environ.get("RANK", "0")
        where = "" if os.environ.get("WORLD_SIZE", "1") == "1" else f" (rank {rank})"
        message = user_message(exc)
        if _first_on_this_node(message):
            print(f"error{where}: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        _close_process_group()


# How long a rank other than local rank 0 waits for local rank 0 to report the same error.
_PEER_WAIT_S = 3.0


def _first_on_this_node(message: str) -> bool:
    """Whether this process should print ``message``: not when local rank 0 prints the same one.

    Local rank 0 always prints and leaves a marker (named by the launcher's
    process id, the rendezvous port and the message) in the temp folder;
    another local rank waits briefly for that marker and prints only if it
    does not come: an error that only its own rank met.
    """
    # torchrun says LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE
    if int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1"))) <= 1:
        return True
    digest = hashlib.sha1(message.encode("utf-8")).hexdigest()[:16]
    marker = os.path.join(tempfile.gettempdir(), f"lavislite-error-{os.getppid()}-{os.environ.get('MASTER_PORT', '')}-{digest}")
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        try:
            with open(marker, "w", encoding="utf-8"):
                pass
        except OSError:
            pass  # the others print too: better twice than never
        return True
    deadline = time.monotonic() + _PEER_WAIT_S
    while time.monotonic() < deadline:
        if os.path.exists(marker):
            return False
        time.sleep(0.05)
    return True


def _close_process_group(together: bool = False) -> None:
    """Destroys the default process group, if any (leaving without it makes torch warn about leaked resources).

    Args:
        together: first wait at a barrier for every rank (the path where every
            rank finished its work). A rank that tore its gloo group down while
            a peer was still writing its results was seen to abort the peer at
            exit ("terminate called without an active exception", SIGABRT after
            the metrics were written). On an error path a peer may never come,
            so there is no barrier there.
    """
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            if together:
                try:
                    dist.barrier()
                except Exception:  # noqa: BLE001 - a peer gone at the very end: tear down anyway
                    pass
            dist.destroy_process_group()
