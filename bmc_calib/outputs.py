"""Writing output files safely: never half-written, never overwritten without ``force``.

:func:`atomic_path` yields a temporary file beside the target; when the caller's block
succeeds the file is fsynced and published, otherwise it is removed. Without ``force`` the
file is published with a hard link, so a target that appeared meanwhile is never replaced.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator

from bmc_calib.errors import BadInputError, UsageError


def check_writable(path: str | os.PathLike, force: bool) -> str:
    """Refuse an existing ``path`` unless ``force``, a folder, or a missing parent folder."""
    target = os.fspath(path)
    if target.endswith(("/", os.sep)) and not os.path.isdir(target):
        # abspath() would drop the slash and write a file named like the folder
        raise UsageError(f"cannot write {target}: folder {target} does not exist; give a file name")
    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(parent):
        raise BadInputError(f"cannot write {target}: folder {parent} does not exist")
    if os.path.isdir(target):
        raise UsageError(f"cannot write {target}: it is a folder; give a file name")
    if os.path.lexists(target) and not force:
        raise UsageError(exists_message(target))
    return target


def exists_message(target: str) -> str:
    return f"{target} exists; pass --force to overwrite"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, force: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success fsync and publish it as ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was; an
    ``OSError``, or a ``RuntimeError`` while the caller writes (h5py's "can't write data",
    e.g. a full disk), becomes a one-line :class:`BadInputError` naming ``path``.
    """
    target = check_writable(path, force)
    temporary = _create_temporary(target)
    try:
        try:
            yield temporary
        except RuntimeError as exc:  # h5py reports a failed write (disk full) as RuntimeError
            raise BadInputError(f"cannot write {target}: {write_failure_reason(exc)}") from exc
        fsync_file(temporary)
        _publish(temporary, target, force=force)
    except OSError as exc:
        _remove_quietly(temporary)
        raise BadInputError(f"cannot write {target}: {write_failure_reason(exc)}") from exc
    except BaseException:
        _remove_quietly(temporary)
        raise
    _fsync_directory(os.path.dirname(os.path.abspath(target)))


def fsync_file(path: str) -> None:
    """Flush a finished file to disk."""
    with open(path, "rb+") as handle:
        handle.flush()
        os.fsync(handle.fileno())


def _create_temporary(target: str) -> str:
    """Create an empty, uniquely named ``.<name>.tmp-<random>`` next to ``target``."""
    directory, name = os.path.split(os.path.abspath(target))
    for _ in range(100):
        temporary = os.path.join(directory, f".{name}.tmp-{secrets.token_hex(6)}")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise BadInputError(f"cannot write {target}: {write_failure_reason(exc)}") from exc
        os.close(descriptor)
        return temporary
    raise BadInputError(f"cannot write {target}: no free temporary file name in {directory}")


def _publish(temporary: str, target: str, *, force: bool) -> None:
    """Move the finished file into place; without ``force`` never replace an existing file."""
    if force:
        os.replace(temporary, target)
        return
    try:
        os.link(temporary, target)  # fails if the target appeared meanwhile
    except FileExistsError:
        raise UsageError(exists_message(target)) from None
    except OSError:  # a file system without hard links
        if os.path.lexists(target):
            raise UsageError(exists_message(target)) from None
        os.replace(temporary, target)
        return
    _remove_quietly(temporary)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable where the platform allows it (best effort)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def write_failure_reason(exc: BaseException) -> str:
    """Why a write failed, in a few lower-case words (``no space left on device``)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    code = re.search(r"\berrno = (\d+)", str(exc))  # HDF5's "file write failed: …, errno = 28"
    if code:
        return os.strerror(int(code.group(1))).lower()
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
