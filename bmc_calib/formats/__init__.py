"""Format readers: a registry, auto-detection, and opening many inputs at once.

See :mod:`bmc_calib.formats.base` for the reader interface and ``docs/formats.md`` for what
each format expects.

Inputs may be files, folders or glob patterns. Detection (:func:`detect_format`) asks every
reader for a score (:data:`~bmc_calib.formats.base.SCORE_SUFFIX` … ``SCORE_NAME``) and takes
the highest; a tie is a :class:`UsageError` naming the candidates (pass ``--format``). A
folder is one source when a dataset reader claims it (an HO-3D split, a DexYCB root, …);
otherwise the files below it are read one source each — the dataset files (recognised by
name or content) when there are any, else the generic array files.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from bmc_calib.errors import BadInputError, UsageError
from bmc_calib.formats import _io
from bmc_calib.formats.arrays import NpyReader, NpzReader
from bmc_calib.formats.base import (
    SCORE_SUFFIX,
    Chunk,
    Reader,
    ReadOptions,
    Source,
    SourceStats,
    drop_invalid,
    file_sha256,
    make_chunk,
    palm_center_to_wrist,
    to_right_hands,
)
from bmc_calib.formats.dexycb import DexYcbReader
from bmc_calib.formats.generic import CsvReader, H5Reader, JsonReader
from bmc_calib.formats.json_datasets import (
    FreiHandReader,
    InterHandReader,
    MediaPipeReader,
    MediaPipeSwappedReader,
)
from bmc_calib.formats.pickles import Ho3dReader, RhdReader
from bmc_calib.formats.stb import StbReader
from bmc_calib.formats.text_datasets import FingertipReader, FphaReader, GaneratedReader

__all__ = [
    "Chunk",
    "ReadOptions",
    "Reader",
    "Source",
    "SourceStats",
    "describe_formats",
    "detect_format",
    "drop_invalid",
    "expand_inputs",
    "file_sha256",
    "get_reader",
    "make_chunk",
    "open_sources",
    "palm_center_to_wrist",
    "readers",
    "register",
    "resolve_input",
    "to_right_hands",
]

_READERS: dict[str, Reader] = {}


def register(reader: Reader) -> Reader:
    """Add a reader to the registry under ``reader.name``."""
    if reader.name in _READERS:
        raise ValueError(f"format {reader.name!r} is already registered")
    _READERS[reader.name] = reader
    return reader


def readers() -> list[Reader]:
    """All registered readers, by name."""
    return [_READERS[k] for k in sorted(_READERS)]


def get_reader(name: str) -> Reader:
    """The reader called ``name``; a :class:`UsageError` listing the known ones otherwise."""
    try:
        return _READERS[name.strip().lower()]
    except KeyError:
        raise UsageError(
            f"unknown format {name!r}; known formats: {', '.join(sorted(_READERS))}"
        ) from None


def describe_formats() -> list[dict[str, object]]:
    """Every registered format's metadata (``bmc-calib formats``), by name."""
    return [r.info() for r in readers()]


def _best(path: str, candidates: list[Reader]) -> tuple[int, list[Reader]]:
    scores = [(r.detect(path), r) for r in candidates]
    best = max((s for s, _ in scores), default=0)
    return best, [r for s, r in scores if s == best and best > 0]


def detect_format(path: str) -> Reader:
    """The reader most sure it can read ``path`` (raises when none or several tie)."""
    best, tied = _best(path, readers())
    if best <= 0:
        raise BadInputError(
            f"{path}: unrecognised input format; known formats: {', '.join(sorted(_READERS))} "
            "(name one with --format)"
        )
    if len(tied) > 1:
        raise UsageError(
            f"{path}: ambiguous format, could be {', '.join(r.name for r in tied)}; "
            "pass --format NAME"
        )
    return tied[0]


def _pose_files(folder: str) -> list[str]:
    """The files below ``folder`` that may hold poses: bmc-calib's own outputs kept beside
    the data (a ``limits.h5``, a features ``.npz``) are passed over."""
    return [f for f in _io.walk_files(folder) if not _io.is_own_output(f)]


def resolve_input(path: str, format: str | None = None) -> list[tuple[Reader, str]]:
    """``(reader, path)`` pairs for one input: a file, or a folder (one or many sources)."""
    forced = get_reader(format) if format else None
    _io.require_regular(path)  # a FIFO or device would block detection and reading forever
    if not os.path.isdir(path):
        return [(forced or detect_format(path), path)]
    if forced is not None:
        if forced.folders:
            return [(forced, path)]
        files = [f for f in _pose_files(path) if forced.detect(f) > 0]
        if not files:
            raise BadInputError(f"{path}: no {forced.name} files below this folder")
        return [(forced, f) for f in files]
    _, tied = _best(path, [r for r in readers() if r.folders])
    if len(tied) > 1:
        raise UsageError(
            f"{path}: ambiguous dataset folder, could be {', '.join(r.name for r in tied)}; "
            "pass --format NAME or a narrower folder"
        )
    if tied:
        return [(tied[0], path)]
    found: list[tuple[int, str]] = []
    for f in _pose_files(path):
        score, _ = _best(f, readers())
        if score > 0:
            found.append((score, f))
    if not found:
        raise BadInputError(
            f"{path}: no recognised pose files below this folder (see bmc-calib formats)"
        )
    specific = [f for s, f in found if s > SCORE_SUFFIX]
    return [(detect_format(f), f) for f in specific or [f for _, f in found]]


def expand_inputs(paths: list[str]) -> list[str]:
    """Expand glob patterns (for shells that do not, ``**`` included); missing paths raise."""
    out: list[str] = []
    for p in paths:
        if os.path.exists(p):
            out.append(p)
            continue
        matches = sorted(glob.glob(p, recursive=True), key=_io.natural_key)
        if not matches:
            raise BadInputError(f"{p}: no such file or directory")
        out.extend(matches)
    if not out:
        raise UsageError("no input files given")
    return out


def open_sources(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    options: ReadOptions | None = None,
    format: str | None = None,
) -> list[Source]:
    """Open every input (globs expanded, folders resolved) with the named or detected reader.

    ``paths``: one path or a sequence of them (``str`` or ``os.PathLike``).

    Opening is cheap: most readers check the file and defer parsing to ``Source.chunks()``,
    so malformed content may raise :class:`BadInputError` while iterating.

    An input reached twice (the same file named twice, or through a folder and by name; links
    resolved) is read once, with a note on its source: counting its poses twice would weigh
    that person double.
    """
    if isinstance(paths, (str, os.PathLike)):  # one input (a str is no list of characters)
        paths = [paths]
    opts = options or ReadOptions()
    sources: list[Source] = []
    opened: dict[str, Source] = {}
    for path in expand_inputs([os.fspath(p) for p in paths]):
        for reader, item in resolve_input(path, format):
            key = os.path.realpath(item)
            if key in opened:
                first = opened[key]
                same = "given more than once" if item == first.path else f"the same as {first.path}"
                if (note := f"{item}: {same}; read once") not in first.notes:
                    first.notes.append(note)
                continue
            reader.check_options(opts)
            opened[key] = reader.open(item, opts)
            sources.append(opened[key])
    return _drop_contained(sources)


def _drop_contained(sources: list[Source]) -> list[Source]:
    """``sources`` without those whose files another source reads too (a dataset folder and a
    file or subfolder inside it): each is dropped with a note on the source that reads it, the
    one reading the most files (the first of equals)."""
    reads = [frozenset(os.path.realpath(f) for f in (s.files or [s.path])) for s in sources]
    readers_of: dict[str, list[int]] = {}  # file → the sources reading it (linear, not S²)
    for j, files in enumerate(reads):
        for f in files:
            readers_of.setdefault(f, []).append(j)
    kept = []
    for i, (source, files) in enumerate(zip(sources, reads, strict=True)):
        candidates = readers_of[next(iter(files))]  # a holder reads each of its files
        holders = [j for j in candidates if files <= reads[j]]
        keeper = min(holders, key=lambda j: (-len(reads[j]), j))
        if keeper == i:
            kept.append(source)
        else:
            note = f"{source.path}: read already through {sources[keeper].path}; read once"
            sources[keeper].notes.append(note)
    return kept


for _reader in (
    NpyReader(),
    NpzReader(),
    JsonReader(),
    CsvReader(),
    H5Reader(),
    FreiHandReader(),
    RhdReader(),
    StbReader(),
    GaneratedReader(),
    Ho3dReader(),
    InterHandReader(),
    FphaReader(),
    DexYcbReader(),
    MediaPipeReader(),
    MediaPipeSwappedReader(),
    FingertipReader(),
):
    register(_reader)
