"""Shared input helpers of the readers: text, streamed JSON, safe pickles, folder scans, YAML.

Every helper turns what can go wrong with a user's file into a one-line
:class:`~bmc_calib.errors.BadInputError` naming the file; none prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import io
import itertools
import json
import math
import os
import pickle
import queue
import re
import stat
import struct
import threading
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any

import ijson  # a core dependency: its C backend (yajl2_c) streams records of a document
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


# --------------------------------------------------------------------------- hashes
#: path → SHA-256 of the bytes the last complete read of that file returned (see
#: :func:`record_digest`); a fit records these, so the provenance names what was parsed.
_READ_DIGESTS: dict[str, str] = {}


def record_digest(path: str, hexdigest: str) -> None:
    """Note that a complete read of ``path`` just returned bytes with this SHA-256."""
    _READ_DIGESTS[path] = hexdigest


def forget_digest(path: str) -> None:
    """Drop what :func:`record_digest` noted for ``path`` (a new read starts)."""
    _READ_DIGESTS.pop(path, None)


def read_digest(path: str) -> str | None:
    """SHA-256 of the bytes the last complete read of ``path`` parsed, or None."""
    return _READ_DIGESTS.get(path)


class HashingReader:
    """A binary file opened for reading that hashes every byte it hands out, in order.

    ``finish()`` reads (and hashes) whatever the consumer left unread, records the digest
    for the path (:func:`record_digest`) and returns the bytes it found there.
    """

    def __init__(self, path: str) -> None:
        require_regular(path)
        try:
            self.fh = open(path, "rb")
        except OSError as exc:
            reason = exc.strerror or short(exc)
            raise BadInputError(f"{path}: cannot read file ({reason})") from None
        self.path = path
        self.digest = hashlib.sha256()
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.digest.update(data)
        self.position += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self.fh.readline(size)
        self.digest.update(data)
        self.position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        count = self.fh.readinto(buffer)
        self.digest.update(memoryview(buffer)[:count])
        self.position += count
        return count

    def finish(self, limit: int = 1 << 16) -> bytes:
        """Hash the rest of the file; return up to ``limit`` bytes of it (what followed)."""
        kept = b""
        while block := self.read(1 << 20):
            if len(kept) < limit:
                kept += block[: limit - len(kept)]
        record_digest(self.path, self.digest.hexdigest())
        return kept

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> HashingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _HashingRaw(io.RawIOBase):
    """A raw binary stream over a :class:`HashingReader` (for :func:`open_text_hashed`)."""

    def __init__(self, reader: HashingReader) -> None:
        self.reader = reader

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self.reader.readinto(buffer)


@contextlib.contextmanager
def open_text_hashed(path: str) -> Iterator[IO[str]]:
    """A UTF-8 text file (BOM skipped, universal newlines, as ``open`` reads it) whose bytes
    are hashed as they are read; when the block ends normally the rest of the file is hashed
    too and the digest recorded (:func:`record_digest`)."""
    with HashingReader(path) as reader:
        text = io.TextIOWrapper(io.BufferedReader(_HashingRaw(reader)), encoding="utf-8-sig")
        yield text
        reader.finish()


def file_signature(path: str) -> tuple[int, int, int, int] | None:
    """``(size, mtime_ns, ctime_ns, inode)`` of a file (None when it cannot be stat'ed)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


# --------------------------------------------------------------------------- text
def read_bytes(path: str) -> bytes:
    """A whole file's bytes; their SHA-256 is recorded (:func:`record_digest`)."""
    require_regular(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read file ({exc.strerror or short(exc)})") from None
    record_digest(path, hashlib.sha256(data).hexdigest())
    return data


def read_text(path: str) -> str:
    """A whole UTF-8 text file (a BOM is skipped); the SHA-256 of the bytes read is recorded
    (:func:`record_digest`)."""
    data = read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not a UTF-8 text file") from None
    if "\r" in text:  # universal newlines, as text mode reads them
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


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


# --------------------------------------------------------------------------- streamed JSON

#: records decoded before they are handed on (bounds the Python objects alive at once)
JSON_RECORDS = 4096


class _Records:
    """Collects the records of ``{group: {key: record}}`` as a streaming parser builds them.

    The parser attaches each new object to its parent when the object starts (then fills
    it), so a record is complete when its next sibling (or the next group) is attached, or
    when the document ends. Groups and records are never stored in their parents: only the
    records of the current batch are alive.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.top: Any = None
        self.group: str | None = None
        self.pending: tuple[str, str, Any] | None = None
        self.ready: list[tuple[str, str, Any]] = []
        self.groups = 0
        self.count = 0
        #: the first problem found; raised by the reader, never inside the parser (ijson's C
        #: builder does not pass on exceptions raised while it stores an item)
        self.error: BadInputError | None = None

    def flush(self) -> None:
        if self.pending is not None:
            self.ready.append(self.pending)
            self.count += 1
            self.pending = None

    def start_group(self, key: str, value: Any, kind: type) -> None:
        self.flush()
        if type(value) is not kind and self.error is None:
            self.error = BadInputError(f"{self.path}: {key!r} must map record ids to objects")
        self.group = key
        self.groups += 1

    def start_record(self, key: str, value: Any) -> None:
        self.flush()
        self.pending = (self.group or "", key, value)


def _record_map(sink: _Records) -> type:
    """The mapping type the parser builds objects with (see :class:`_Records`)."""

    class Map(dict):  # type: ignore[type-arg]
        __slots__ = ("level",)

        def __setitem__(self, key: str, value: Any) -> None:
            level = getattr(self, "level", 0)
            if level >= 2:  # inside a record: an ordinary object
                dict.__setitem__(self, key, value)
                if type(value) is Map:
                    value.level = 2
            elif level == 1:  # a group: the value is a record
                sink.start_record(key, value)
                if type(value) is Map:
                    value.level = 2
            else:
                if sink.top is None:
                    sink.top = self
                if sink.top is self:  # the document: the value is a group
                    sink.start_group(key, value, Map)
                    if type(value) is Map:
                        value.level = 1
                else:  # an object inside a list inside a record
                    self.level = 2
                    dict.__setitem__(self, key, value)
                    if type(value) is Map:
                        value.level = 2

    return Map


def _json_error(path: str, exc: BaseException) -> BadInputError:
    return BadInputError(f"{path}: invalid JSON ({short(exc)})")


Records = list[tuple[str, str, Any]]


def iter_json_records(
    path: str,
    batch: int = JSON_RECORDS,
    convert: Callable[[Records], Iterator[Any]] | None = None,
) -> Iterator[Any]:
    """What ``convert`` makes of each list of ``(group, key, record)`` of a document
    ``{group: {key: record}}`` (InterHand layout; default: the lists themselves), in file
    order. Decoded record by record: memory is a few batches of records, not the document.
    The file is read once; the SHA-256 of every byte read is recorded
    (:func:`record_digest`).

    ijson's C parser runs in a helper thread (its file-driven loop is about three times
    faster than feeding it by hand), ``convert`` too, so the consumer only receives finished
    items, through a queue of two: the parser waits while the consumer is behind, so memory
    stays bounded however large the file is.
    """
    convert = convert or (lambda records: iter([records]))
    handoff: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> None:
        """Hand ``item`` over (waiting while the queue is full); ``_CHECK`` only checks
        whether the consumer went away (then the parse stops at its next read)."""
        while True:
            if stop.is_set():
                raise _Stopped
            if item is _CHECK:
                return
            try:
                handoff.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            with HashingReader(path) as fh, _gc_paused():
                for records in _parse_records(path, fh, batch, put, convert):
                    for item in convert(records):
                        put(item)
            put(done)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the consumer, raised there
            with contextlib.suppress(_Stopped):
                put(_Failure(exc))

    thread = threading.Thread(target=work, name="bmc-calib-json", daemon=True)
    thread.start()
    try:
        handed = 0
        while True:
            item = handoff.get()
            if item is done:
                break
            if isinstance(item, _Failure):
                raise item.exc
            yield item
            handed += 1
            if handed % _GC_EVERY == 0:  # the consumer's own cyclic garbage (see _gc_paused)
                gc.collect()
    finally:
        stop.set()
        thread.join()


_GC_LOCK = threading.Lock()
#: while the collector is paused, the consumer of iter_json_records collects the young
#: generations itself every this many items: cheap (only what is young and alive is
#: scanned), and reference cycles the consumer makes cannot pile up during a long parse
_GC_EVERY = 32
_GC_PAUSES = [0, False]  # parsers running, whether the collector was enabled before


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while JSON records are built.

    Decoded records hold no reference cycles (reference counting frees them), but hundreds
    of thousands of young lists alive at a time make the collector rescan the heap again
    and again: pausing it halves the decoding time. Nested and concurrent parsers share
    one pause; the collector's state is restored when the last one ends.
    """
    with _GC_LOCK:
        if _GC_PAUSES[0] == 0:
            _GC_PAUSES[1] = gc.isenabled()
            gc.disable()
        _GC_PAUSES[0] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_PAUSES[0] -= 1
            if _GC_PAUSES[0] == 0 and _GC_PAUSES[1]:
                gc.enable()


#: see ``put`` in :func:`iter_json_records`
_CHECK = object()


class _Stopped(Exception):
    """The consumer of :func:`iter_json_records` went away: stop parsing."""


@dataclasses.dataclass
class _Failure:
    exc: BaseException


class _Feed:
    """The file as ijson reads it: a BOM skipped, and a hand-over point after each read."""

    def __init__(self, fh: HashingReader, on_read: Callable[[], None]) -> None:
        self.fh = fh
        self.on_read = on_read
        self.first = True

    def read(self, size: int = -1) -> bytes:
        self.on_read()
        data = self.fh.read(size)
        if self.first:
            self.first = False
            if data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
        return data


def _parse_records(
    path: str,
    fh: HashingReader,
    batch: int,
    put: Callable[[Any], None],
    convert: Callable[[Records], Iterator[Any]],
) -> Iterator[Records]:
    sink = _Records(path)

    def hand_over() -> None:
        put(_CHECK)
        if sink.error is not None:
            raise sink.error
        while len(sink.ready) >= batch:
            out, sink.ready = sink.ready[:batch], sink.ready[batch:]
            for item in convert(out):
                put(item)

    feed = _Feed(fh, hand_over)
    if not fh.fh.peek(1 << 16)[: 1 << 16].strip(b" \t\r\n\xef\xbb\xbf"):
        raise BadInputError(f"{path}: empty file, expected JSON")
    try:
        results = list(ijson.items(feed, "", map_type=_record_map(sink), use_float=True))
    except ijson.JSONError as exc:
        raise sink.error or _json_error(path, exc) from None
    except (ValueError, OverflowError, RecursionError, SystemError) as exc:
        raise sink.error or _json_error(path, exc) from None
    if sink.error is not None:
        raise sink.error
    fh.finish()
    sink.flush()
    if sink.top is None and not (results and isinstance(results[0], dict) and not results[0]):
        raise BadInputError(f"{path}: expected a JSON object at the top level")
    while sink.ready:
        out, sink.ready = sink.ready[:batch], sink.ready[batch:]
        yield out


def nested_floats(value: list[Any], inner: tuple[int, ...]) -> np.ndarray | None:
    """``(len(value), *inner)`` float64 from lists nested exactly as ``inner`` says, flattened
    in C (about five times faster than numpy's discovery of nested lists); None when the
    nesting or a size differs, or an item is not a number (the caller falls back to
    :func:`float_array` for its error message)."""
    level: list[Any] = value
    try:
        for size in inner:
            sizes = np.fromiter(map(len, level), np.int64, count=len(level))
            if sizes.size and (sizes != size).any():
                return None
            level = list(itertools.chain.from_iterable(level))
        flat = np.fromiter(level, np.float64, count=len(level))
    except (TypeError, ValueError, OverflowError):
        return None
    return flat.reshape(len(value), *inner)


def float_array(value: Any, path: str, what: str, *, shared: bool = True) -> np.ndarray:
    """``np.asarray(value, float64)`` or a one-line error saying ``what`` was malformed.

    Nested lists are first counted within a budget (:data:`MIN_ITEM_BUDGET`, or 16 items per
    byte of ``path``), so shared sub-lists cannot expand into billions of numbers.
    ``shared=False`` skips the count for values that cannot share sub-lists (decoded JSON:
    every list is its own object, so its size is bounded by the text it came from).
    """
    if shared and isinstance(value, (list, tuple)):
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
        with HashingReader(path) as fh:
            value = _SafeUnpickler(fh, encoding="latin1").load()
            fh.finish()
            return value
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


def is_limits_bundle(h5file: Any) -> bool:
    """Whether an open HDF5 file is a bmc-calib limits bundle (its ``encoding-type``)."""
    return h5file.attrs.get("encoding-type") in ("bmc-limits", b"bmc-limits")


def is_own_output(path: str) -> bool:
    """Whether ``path`` is something bmc-calib wrote that holds no poses: a limits bundle
    (``fit``'s ``limits.h5``) or a features archive (``features``' ``.npz``). Folders given as
    inputs often hold them beside the data; reading one as poses would fail the whole run."""
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix in (".h5", ".hdf5", ".hdf"):
            import h5py

            with h5py.File(path, "r") as fh:
                return is_limits_bundle(fh)
        if suffix == ".npz":
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
            return {"flexion_abduction.npy", "degenerate_reason_names.npy"} <= names
    except Exception:  # unreadable: not ours to judge here; its reader reports it
        return False
    return False


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
