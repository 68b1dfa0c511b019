"""Shared input helpers of the readers: text, streamed JSON, safe pickles, folder scans, YAML.

Every helper turns what can go wrong with a user's file into a one-line
:class:`~bmc_calib.errors.BadInputError` naming the file; none prints.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
import re
import stat
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from bmc_calib.errors import BadInputError

#: What reading a corrupt ``.npz`` (zip) or HDF5 file can raise, besides our own errors.
ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    TypeError,
    RuntimeError,
    NotImplementedError,
    SyntaxError,  # numpy parses .npy headers with ast.literal_eval …
    tokenize.TokenError,  # … after tokenizing old-style headers
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
)

#: Sniffing reads at most this many bytes of a file.
HEAD_BYTES = 65536
#: Pickles at most this large are opened while detecting their format.
SNIFF_PICKLE_BYTES = 4 << 20
#: Folder detection looks at most this deep and at this many directory entries.
SCAN_DEPTH = 5
SCAN_ENTRIES = 100_000


#: Deflate cannot expand data by more than about 1032:1; a zip member claiming more is forged.
MAX_DEFLATE_RATIO = 1100
#: ``float_array`` walks nested lists of at most this many items, or 16 per byte of the file
#: (a JSON number takes >= 2 bytes, a pickled float >= 2): memo-shared pickled lists can
#: otherwise expand a few kilobytes into billions of numbers.
MIN_ITEM_BUDGET = 1_000_000


def require_regular(path: str) -> None:
    """Raise a one-line :class:`BadInputError` unless ``path`` is a regular file (or folder).

    A FIFO, socket or device would block or stream forever when read.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing / unreadable: the reader's own open() reports it
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a regular file"
        raise BadInputError(f"{path}: {kind}, not a file that can be read; pass a regular file")


def is_regular_file(path: str) -> bool:
    """True for a regular file (symlinks followed); False for folders, FIFOs, devices."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def check_declared_size(
    path: str, what: str, shape: tuple[int, ...], dtype: np.dtype, available: int
) -> None:
    """Refuse an array whose header claims more bytes than ``available`` (before allocating).

    ``shape`` and ``dtype`` come from the header (``.npy``, zip member, HDF5); ``available``
    is what the file really holds for it, in bytes.
    """
    claimed = math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
    if claimed > available:
        raise BadInputError(
            f"{path}: {what} claims shape {tuple(int(s) for s in shape)} ({claimed:,} bytes) "
            f"but the file holds only {available:,} bytes for it; the file is truncated or corrupt"
        )


def npy_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` stream ``fh`` (left after the header)."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    return np.lib.format._read_array_header(fh, version)


def check_npy_file(path: str, fh: Any) -> None:
    """Refuse a ``.npy`` file (open, at offset 0) whose header claims more data than it has."""
    shape, _, dtype = npy_header(fh)
    if not dtype.hasobject:
        available = os.fstat(fh.fileno()).st_size - fh.tell()
        check_declared_size(path, "the array", shape, dtype, available)
    fh.seek(0)


def npz_member(path: str, archive: Any, key: str) -> np.ndarray:
    """``archive[key]`` of an open :class:`numpy.lib.npyio.NpzFile`, after checking that the
    member's header does not claim more data than the zip member can hold."""
    name = key if key in archive.zip.namelist() else f"{key}.npy"
    if not name.endswith(".npy"):
        raise BadInputError(
            f"{path}: member {key!r} is not a NumPy array (an .npz holds arrays as .npy files)"
        )
    info = archive.zip.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        if info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1):
            raise BadInputError(
                f"{path}: array {key!r} claims {info.file_size:,} bytes from "
                f"{info.compress_size:,} compressed; the archive is corrupt"
            )
    with archive.zip.open(name) as fh:
        shape, _, dtype = npy_header(fh)
        header = fh.tell()
    if not dtype.hasobject:
        check_declared_size(path, f"array {key!r}", shape, dtype, info.file_size - header)
    return archive[key]


def check_h5_dataset(path: str, dataset: Any, what: str) -> None:
    """Refuse an HDF5 dataset whose declared size exceeds what is stored (never-written
    chunks read back as fill values without end); compressed data may be up to
    :data:`MAX_DEFLATE_RATIO` times its stored size."""
    stored = int(dataset.id.get_storage_size())
    if dataset.id.get_create_plist().get_nfilters() > 0:  # compressed (or shuffled) chunks
        stored *= MAX_DEFLATE_RATIO
    check_declared_size(path, what, tuple(dataset.shape or ()), dataset.dtype, stored)


_LEFT_WORDS = {"true": True, "left": True, "1": True, "false": False, "right": False, "0": False}


def parse_is_left(values: Any, path: str) -> np.ndarray:
    """An ``is_left`` array as bool ``(N,)``: bools, 0/1 numbers, or the exact words
    ``true``/``left``/``1`` and ``false``/``right``/``0`` (any case); anything else raises
    (a non-empty string must not silently mean True)."""
    arr = np.asarray(values).reshape(-1)
    if arr.dtype.kind == "O":  # HDF5 variable-length strings come as bytes objects
        items = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in arr]
        if all(isinstance(v, str) for v in items):
            arr = np.asarray(items, dtype=str).reshape(-1)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind in "iuf":
        if not np.isin(arr, (0, 1)).all():
            bad = arr[~np.isin(arr, (0, 1))][0]
            raise BadInputError(f"{path}: is_left must be 0/1 or true/false, found {bad!r}")
        return arr.astype(bool)
    if arr.dtype.kind in "US":
        words = np.char.lower(np.char.strip(arr.astype(str)))
        known = np.isin(words, list(_LEFT_WORDS))
        if not known.all():
            raise BadInputError(
                f"{path}: is_left must be true/false, left/right or 1/0, "
                f"found {str(words[~known][0])!r}"
            )
        return np.isin(words, [w for w, left in _LEFT_WORDS.items() if left])
    raise BadInputError(f"{path}: is_left must be bools or 0/1, found dtype {arr.dtype}")


def text_path(path: str) -> str:
    """``path`` as valid Unicode text (for provenance, JSON and bundles): bytes of a file name
    that were not UTF-8 (held as lone surrogates by ``os.fsdecode``) become U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def short(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# --------------------------------------------------------------------------- text
def read_text(path: str) -> str:
    """A whole UTF-8 text file (a BOM is skipped)."""
    require_regular(path)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return fh.read()
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read file ({exc.strerror or short(exc)})") from None


def head(path: str, size: int = HEAD_BYTES) -> str:
    """The first ``size`` bytes of a file as text ("" when unreadable or not a regular file,
    e.g. a FIFO, which would block); for detection."""
    if not is_regular_file(path):
        return ""
    try:
        with open(path, "rb") as fh:
            return fh.read(size).decode("utf-8", "replace")
    except OSError:
        return ""


def first_line(path: str) -> str:
    """The first non-empty line of a file, stripped ("" when none or unreadable)."""
    for line in head(path, 4096).splitlines():
        if line.strip():
            return line.strip()
    return ""


def parse_numbers(text: str, path: str, where: str = "") -> np.ndarray:
    """Numbers separated by commas and/or whitespace → float64 (1-D)."""
    try:
        return np.array(text.replace(",", " ").split(), dtype=np.float64)
    except ValueError as exc:
        raise BadInputError(f"{path}: {where}not a list of numbers ({short(exc)})") from None


# --------------------------------------------------------------------------- JSON
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, i: int) -> int:
    return _SPACE.match(text, i).end()


def _json_fail(path: str, text: str, pos: int, what: str) -> BadInputError:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return BadInputError(f"{path}: invalid JSON at line {line}, column {col} ({what})")


def _decode(text: str, i: int, path: str) -> tuple[Any, int]:
    try:
        return _DECODER.raw_decode(text, i)
    except json.JSONDecodeError as exc:
        raise _json_fail(path, text, exc.pos, exc.msg) from None
    except RecursionError:
        raise BadInputError(f"{path}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise BadInputError(f"{path}: invalid JSON number ({short(exc)})") from None


def json_start(text: str, path: str) -> tuple[str, int]:
    """The first character of the JSON document and its index; empty files raise."""
    i = _skip(text, 0)
    if i >= len(text):
        raise BadInputError(f"{path}: empty file, expected JSON")
    return text[i], i


def load_json(text: str, path: str) -> Any:
    """A whole JSON document."""
    _, i = json_start(text, path)
    value, end = _decode(text, i, path)
    end = _skip(text, end)
    if end != len(text):
        raise _json_fail(path, text, end, "extra data after the JSON value")
    return value


def _items(text: str, path: str, i: int, close: str, keyed: bool) -> Iterator[Any]:
    i = _skip(text, i + 1)
    if text[i : i + 1] == close:
        end = _skip(text, i + 1)
        if end != len(text):
            raise _json_fail(path, text, end, "extra data after the JSON value")
        return
    while True:
        if keyed:
            key, i = _decode(text, i, path)
            if not isinstance(key, str):
                raise _json_fail(path, text, i, "expected a string key")
            i = _skip(text, i)
            if text[i : i + 1] != ":":
                raise _json_fail(path, text, i, "expected ':'")
            value, i = _decode(text, _skip(text, i + 1), path)
            yield key, value
        else:
            value, i = _decode(text, i, path)
            yield value
        i = _skip(text, i)
        c = text[i : i + 1]
        if c == ",":
            i = _skip(text, i + 1)
            continue
        if c == close:
            end = _skip(text, i + 1)
            if end != len(text):
                raise _json_fail(path, text, end, "extra data after the JSON value")
            return
        raise _json_fail(path, text, i, f"expected ',' or '{close}'")


def iter_json_array(text: str, path: str) -> Iterator[Any]:
    """The items of a top-level JSON array, decoded one at a time (memory: one item)."""
    c, i = json_start(text, path)
    if c != "[":
        raise BadInputError(f"{path}: expected a JSON list at the top level")
    return _items(text, path, i, "]", keyed=False)


def iter_json_object(text: str, path: str) -> Iterator[tuple[str, Any]]:
    """The ``(key, value)`` items of a top-level JSON object, decoded one at a time."""
    c, i = json_start(text, path)
    if c != "{":
        raise BadInputError(f"{path}: expected a JSON object at the top level")
    return _items(text, path, i, "}", keyed=True)


def float_array(value: Any, path: str, what: str) -> np.ndarray:
    """``np.asarray(value, float64)`` or a one-line error saying ``what`` was malformed.

    Nested lists are first counted within a budget (:data:`MIN_ITEM_BUDGET`, or 16 items per
    byte of ``path``), so shared sub-lists cannot expand into billions of numbers.
    """
    if isinstance(value, (list, tuple)):
        _check_item_count(value, path, what)
    try:
        return np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadInputError(
            f"{path}: {what} must be numbers in a regular array ({short(exc)})"
        ) from None


def _check_item_count(value: list[Any] | tuple[Any, ...], path: str, what: str) -> None:
    try:
        budget = max(MIN_ITEM_BUDGET, 16 * os.path.getsize(path))
    except OSError:
        budget = MIN_ITEM_BUDGET
    count = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            count += len(item)
            if count > budget:
                raise BadInputError(
                    f"{path}: {what} holds more than {budget:,} numbers, far more than the "
                    "file's size allows (shared sub-lists?); the file is corrupt or hostile"
                )
            stack.extend(item)
        elif isinstance(item, np.ndarray):
            count += item.size


# --------------------------------------------------------------------------- pickles
#: The only globals a dataset pickle may name: numpy arrays, dtypes, scalars and plain
#: containers. Anything else (code a pickle could run) is refused.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("collections", "OrderedDict"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def load_pickle(path: str) -> Any:
    """A dataset pickle (Python 2 pickles too), rebuilding only numpy arrays and containers.

    Pickles can run code when loaded; this loader refuses any pickle that names something
    other than numpy arrays, dtypes, scalars and plain containers.
    """
    require_regular(path)
    try:
        with open(path, "rb") as fh:
            return _SafeUnpickler(fh, encoding="latin1").load()
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read file ({exc.strerror or short(exc)})") from None
    except pickle.UnpicklingError as exc:
        raise BadInputError(f"{path}: not a readable pickle ({short(exc)})") from None
    except MemoryError:
        raise BadInputError(f"{path}: not a readable pickle (corrupt size field)") from None
    except Exception as exc:  # random bytes make the unpickler fail in many ways
        raise BadInputError(f"{path}: not a readable pickle ({short(exc)})") from None


def sniff_pickle(path: str) -> Any:
    """The content of a small pickle, or None (too big, unreadable); for detection only."""
    try:
        if os.path.getsize(path) > SNIFF_PICKLE_BYTES:
            return None
        return load_pickle(path)
    except (OSError, BadInputError):
        return None


# --------------------------------------------------------------------------- folders
def _visible(name: str) -> bool:
    return not name.startswith((".", "__"))


@functools.lru_cache(maxsize=64)
def scan_tree(root: str) -> tuple[str, ...]:
    """Relative paths (``/``-separated) of files and folders (trailing ``/``) below ``root``.

    Breadth-first, at most :data:`SCAN_DEPTH` levels and :data:`SCAN_ENTRIES` entries: enough
    to recognise a dataset root without listing millions of images.
    """
    out: list[str] = []
    level = [""]
    for _ in range(SCAN_DEPTH):
        below: list[str] = []
        for rel in level:
            try:
                with os.scandir(os.path.join(root, rel)) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if not _visible(entry.name):
                    continue
                name = rel + entry.name
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    continue
                out.append(name + "/" if is_dir else name)
                if is_dir:
                    below.append(name + "/")
                if len(out) >= SCAN_ENTRIES:
                    return tuple(out)
        level = below
    return tuple(out)


def walk_files(root: str) -> list[str]:
    """Every visible file below ``root``, sorted (natural order of the full paths)."""
    out = []
    for top, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        out.extend(os.path.join(top, n) for n in names if _visible(n))
    # FIFOs, sockets and devices are never pose files (reading one could block forever)
    return sorted((f for f in out if is_regular_file(f)), key=natural_key)


def natural_key(path: str) -> list[Any]:
    """Sort key that orders ``frame_2`` before ``frame_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


# --------------------------------------------------------------------------- YAML
def yaml_value(path: str, key: str) -> Any:
    """A top-level ``key`` of a small YAML file: a scalar string or a list of strings.

    Understands ``key: value``, ``key: [a, b]`` and a block list (``key:`` then ``- a``
    lines), which is all ``meta.yml`` of DexYCB needs; no YAML library required. Returns None
    when the key is absent.
    """
    lines = read_text(path).splitlines()
    for i, raw in enumerate(lines):
        line = raw.split("#", 1)[0].rstrip()
        if raw[:1].isspace() or not line.startswith(f"{key}:"):
            continue
        rest = line[len(key) + 1 :].strip()
        if rest.startswith("["):
            if not rest.endswith("]"):
                raise BadInputError(f"{path}: cannot parse the list of {key!r}")
            return [_yaml_scalar(t) for t in rest[1:-1].split(",") if t.strip()]
        if rest:
            return _yaml_scalar(rest)
        items = []
        for nxt in lines[i + 1 :]:
            item = nxt.split("#", 1)[0].strip()
            if not item:
                continue
            if not item.startswith("-"):
                break
            items.append(_yaml_scalar(item[1:]))
        return items
    return None


def _yaml_scalar(text: str) -> str:
    return text.strip().strip("'\"")
