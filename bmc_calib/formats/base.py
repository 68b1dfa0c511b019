"""The reader interface: files in, canonical right-hand pose chunks plus provenance out.

A *reader* turns one path (a file, or a folder for datasets that ship folders) into a
:class:`Source`. Iterating ``Source.chunks()`` yields :class:`Chunk` objects holding canonical
right-hand joints ``(n, 21, 3)`` in the source's length unit; the source's
:class:`SourceStats` is filled in while iterating (frames read, kept, mirrored, dropped per
reason). Readers stream: a chunk is the only part of a large file in memory at a time.

Adding a dataset format = writing one :class:`Reader` subclass and registering it with
:func:`bmc_calib.formats.register`; nothing else changes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from bmc_calib import skeleton
from bmc_calib.errors import BadInputError, UsageError

HANDS: tuple[str, ...] = ("right", "left")
DEFAULT_CHUNK_FRAMES = 16384


@dataclass(frozen=True)
class ReadOptions:
    """What the user said about the input (CLI ``--layout``, ``--hand``, ``--key``)."""

    layout: str | None = None
    hand: str | None = None
    key: str | None = None
    chunk_frames: int = DEFAULT_CHUNK_FRAMES

    def __post_init__(self) -> None:
        if self.hand is not None and self.hand not in HANDS:
            raise UsageError(f"--hand must be one of {', '.join(HANDS)}, got {self.hand!r}")
        if self.layout is not None:
            skeleton.get_layout(self.layout)  # raises UsageError for unknown names


@dataclass
class Chunk:
    """Canonical right hands ``joints (n, 21, 3)``; ``group`` optional per-frame labels (n,)."""

    joints: np.ndarray
    group: np.ndarray | None = None


@dataclass
class SourceStats:
    """Counts gathered while a source is read."""

    frames_read: int = 0
    frames_kept: int = 0
    frames_mirrored: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass
class Source:
    """One input as a stream of chunks, with what is known about it before reading."""

    path: str
    format: str
    unit: str
    layout: str
    frames: int | None
    read_chunks: Callable[[SourceStats], Iterator[Chunk]]
    stats: SourceStats = field(default_factory=SourceStats)

    def chunks(self) -> Iterator[Chunk]:
        """Stream the chunks; resets and fills :attr:`stats`."""
        self.stats = SourceStats()
        yield from self.read_chunks(self.stats)

    def sha256(self) -> str:
        """SHA-256 of the file's bytes (of every file below it, in sorted order, for folders)."""
        return file_sha256(self.path)


class Reader:
    """Base class of format readers. Subclasses set the class attributes and ``open``."""

    name: str = ""
    description: str = ""
    suffixes: tuple[str, ...] = ()
    layout: str = "canonical"
    unit: str = "unknown"
    handedness: str = "right (use --hand left for left hands)"

    def detect(self, path: str) -> int:
        """How sure this reader is that it can read ``path``: 0 = no, higher = surer."""
        return 1 if path.lower().endswith(self.suffixes) else 0

    def open(self, path: str, options: ReadOptions) -> Source:  # pragma: no cover - abstract
        raise NotImplementedError


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file (1 MiB blocks), or of all files below a folder in sorted order."""
    digest = hashlib.sha256()
    paths = [path]
    if os.path.isdir(path):
        paths = sorted(
            os.path.join(root, name) for root, _, names in os.walk(path) for name in names
        )
    try:
        for p in paths:
            with open(p, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(block)
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    return digest.hexdigest()


def palm_center_to_wrist(joints: np.ndarray) -> np.ndarray:
    """Replace a palm centre in slot 0 of canonical ``(..., 21, 3)`` joints by a wrist.

    Rule of hand3d and Minimal-Hand (``../shared/formats.md`` §3): reflect the ring MCP
    through the palm centre, ``wrist = ring_mcp + 2 (palm − ring_mcp)``.
    """
    out = np.array(joints, copy=True)
    ring_mcp = out[..., 13, :]
    out[..., 0, :] = ring_mcp + 2.0 * (out[..., 0, :] - ring_mcp)
    return out


def to_right_hands(
    joints: np.ndarray,
    layout: skeleton.Layout,
    is_left: np.ndarray | bool,
    stats: SourceStats,
) -> np.ndarray:
    """Gather ``(n, 21, 3)`` source joints to canonical order and mirror the left hands.

    ``is_left`` is one bool for the whole chunk or a ``(n,)`` mask; mirrored frames are
    counted in ``stats``.
    """
    canon = layout.to_canonical(joints)
    if layout.root_is_palm_center:
        canon = palm_center_to_wrist(canon)
    mask = np.broadcast_to(np.asarray(is_left, dtype=bool), canon.shape[:1])
    mirrored = int(mask.sum())
    if mirrored:
        canon = np.array(canon, copy=True)
        canon[mask, :, 0] = -canon[mask, :, 0]
    stats.frames_read += canon.shape[0]
    stats.frames_kept += canon.shape[0]
    stats.frames_mirrored += mirrored
    return canon
