"""Writing output files safely: never half-written, never overwritten without ``force``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from bmc_calib.errors import BadInputError, UsageError


def check_writable(path: str | os.PathLike, force: bool) -> str:
    """Refuse an existing ``path`` unless ``force``; refuse a missing parent folder."""
    target = os.fspath(path)
    if os.path.exists(target) and not force:
        raise UsageError(f"{target} exists; pass --force to overwrite it")
    if os.path.isdir(target):
        raise UsageError(f"{target} is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(parent):
        raise BadInputError(f"{target}: folder {parent} does not exist")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, force: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success fsync and rename it into place.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    target = check_writable(path, force)
    parent = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
