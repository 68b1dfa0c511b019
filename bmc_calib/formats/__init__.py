"""Format readers: a registry, auto-detection, and opening many inputs at once.

See :mod:`bmc_calib.formats.base` for the reader interface.
"""

from __future__ import annotations

import glob
import os

from bmc_calib.errors import BadInputError, UsageError
from bmc_calib.formats.arrays import NpyReader, NpzReader
from bmc_calib.formats.base import (
    Chunk,
    Reader,
    ReadOptions,
    Source,
    SourceStats,
    file_sha256,
    palm_center_to_wrist,
    to_right_hands,
)

__all__ = [
    "Chunk",
    "ReadOptions",
    "Reader",
    "Source",
    "SourceStats",
    "detect_format",
    "file_sha256",
    "get_reader",
    "open_sources",
    "palm_center_to_wrist",
    "readers",
    "register",
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


def detect_format(path: str) -> Reader:
    """The reader most sure it can read ``path`` (raises when none or several tie)."""
    scores = [(r.detect(path), r) for r in readers()]
    best = max((s for s, _ in scores), default=0)
    if best <= 0:
        raise BadInputError(
            f"{path}: unrecognised input format; known formats: {', '.join(sorted(_READERS))} "
            "(name one with --format)"
        )
    tied = [r.name for s, r in scores if s == best]
    if len(tied) > 1:
        raise UsageError(f"{path}: ambiguous format, could be {', '.join(tied)}; pass --format")
    return next(r for s, r in scores if s == best)


def expand_inputs(paths: list[str]) -> list[str]:
    """Expand glob patterns (for shells that do not); missing paths raise BadInputError."""
    out: list[str] = []
    for p in paths:
        if os.path.exists(p):
            out.append(p)
            continue
        matches = sorted(glob.glob(p))
        if not matches:
            raise BadInputError(f"{p}: no such file or directory")
        out.extend(matches)
    if not out:
        raise UsageError("no input files given")
    return out


def open_sources(
    paths: list[str], options: ReadOptions | None = None, format: str | None = None
) -> list[Source]:
    """Open every input (after glob expansion) with the named or detected reader."""
    opts = options or ReadOptions()
    sources = []
    for path in expand_inputs(paths):
        reader = get_reader(format) if format else detect_format(path)
        sources.append(reader.open(path, opts))
    return sources


register(NpyReader())
register(NpzReader())
