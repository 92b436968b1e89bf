"""Atomic writes: a reader (or a run killed at any instant) sees the old content or the new one, never a mix.

One primitive serves files and folders: the new content is written (and
fsynced) under a temporary name beside its destination, then takes the
destination's place in one rename. A folder that already exists is swapped
with the new one in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so there
is no instant at which the destination is missing; the old content is then
deleted from the temporary name. Where the exchange is not available (another
OS, a filesystem that refuses it) the old folder is moved aside first, and the
next write, or ``recover_folder``, puts it back if a kill came in between.

Used by the run folder's ``best/``, the release and export folders, checkpoint
markers and pointers, and result JSON files.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, Callable

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """Swaps two existing paths in one step; False where the system cannot (then nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without renameat2 (glibc < 2.28, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"exchanging {a} and {b}: {os.strerror(err)}")


def fsync_dir(folder: str) -> None:
    """Flushes a folder's entries (the names a rename changed) to disk, where the platform allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: str) -> None:
    # The rename must not reach the disk before the data it points to.
    for root, _dirs, files in os.walk(folder):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def _aside_prefix(out_dir: str) -> str:
    return os.path.join(os.path.dirname(out_dir), f".{os.path.basename(out_dir)}.old-")


def recover_folder(out_dir: str) -> bool:
    """Puts back a folder that a killed non-atomic replacement (the fallback path) left moved aside.

    Returns:
        True when ``out_dir`` was missing and was restored.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        return False
    leftovers = sorted(glob.glob(glob.escape(_aside_prefix(out_dir)) + "*"), key=os.path.getmtime)
    if not leftovers:
        return False
    os.replace(leftovers[-1], out_dir)
    return True


@contextlib.contextmanager
def atomic_folder(out_dir: str, replaceable: Callable[[str], bool] | None = None) -> Iterator[str]:
    """Yields a temporary folder beside ``out_dir`` that becomes ``out_dir`` on success.

    Everything is written (and fsynced) in the temporary folder, which then
    takes ``out_dir``'s place in one step: an exception or a kill at any
    moment leaves either the previous folder or the complete new one.

    Args:
        out_dir: the folder to create or replace.
        replaceable: says whether an existing, non-empty ``out_dir`` may be
            replaced (it looks like what this writer writes); otherwise the
            write is refused rather than deleting a user's unrelated files.
            None: any folder may be replaced (the caller owns it).

    Raises:
        FileExistsError: ``out_dir`` is a file, or a non-empty folder ``replaceable`` refuses.
    """
    out_dir = os.path.abspath(out_dir)
    parent, name = os.path.dirname(out_dir), os.path.basename(out_dir)
    recover_folder(out_dir)
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise FileExistsError(f"{out_dir} exists and is not a folder")
        if replaceable is not None and os.listdir(out_dir) and not replaceable(out_dir):
            raise FileExistsError(f"{out_dir} exists and holds other files; refusing to replace it (choose an empty or new folder)")
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-")
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not os.path.exists(out_dir):
        os.replace(tmp, out_dir)
    elif _exchange(tmp, out_dir):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old content
    else:
        # Fallback: two renames; a kill between them leaves the old folder
        # aside, where recover_folder (run by the next write) finds it.
        old = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(_aside_prefix(out_dir)))
        os.replace(out_dir, old)  # onto an empty folder: allowed for directories on POSIX
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            os.replace(old, out_dir)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(parent)


def atomic_write(path: str, data: str | bytes) -> None:
    """Writes a file through a temporary name beside it, so a reader sees the old or the new content."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # A per-process name: two ranks writing the same file never share a temporary.
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_json(path: str, data: Any, indent: int = 1) -> None:
    """``atomic_write`` of ``data`` as UTF-8 JSON."""
    atomic_write(path, json.dumps(data, indent=indent, ensure_ascii=False))
