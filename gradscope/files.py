"""Every file gradscope writes (a report, a figure, a sweep's logs and tables) is written
whole or not at all: to a temporary file in the target folder, flushed to disk, then
renamed onto the target. A failure at any point leaves the target as it was."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_file", "write_atomic"]


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb"):
    """Open a temporary file beside ``path`` for writing; when the block ends without an
    error it replaces ``path`` (with the permissions a new file gets), else it is removed.
    ``OSError`` from creating the temporary file (a folder that is missing or not
    writable) is raised before the block runs."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # a rename can reach the disk before the data
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
