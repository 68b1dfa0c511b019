"""The reader interface: files in, canonical right-hand pose chunks plus provenance out.

A *reader* turns one path (a file, or a folder for datasets that ship folders) into a
:class:`Source`. Iterating ``Source.chunks()`` yields :class:`Chunk` objects holding canonical
right-hand joints ``(n, 21, 3)`` in the source's length unit; the source's
:class:`SourceStats` is filled in while iterating (frames read, kept, mirrored, dropped per
reason). Readers stream: a chunk is the only part of a large file in memory at a time.

Adding a dataset format = writing one :class:`Reader` subclass and registering it with
:func:`bmc_calib.formats.register`; nothing else changes.

Bookkeeping rule (one place, :func:`make_chunk`): every frame a reader finds counts in
``frames_read``; a frame that cannot be used is removed by :func:`drop_invalid` and counted
under exactly one reason in ``SourceStats.dropped`` (the first that applies, in the order
reader flags → ``sentinel`` → ``non_finite`` → ``other_side``); the rest reach
:func:`to_right_hands` and count in ``frames_kept``. So ``frames_read = frames_kept +
sum(dropped.values())`` always holds.

Dataset readers drop invalid frames (validity flags, sentinel joints, NaN/inf). Generic array
readers (npy, npz, json, csv, h5) keep every frame, so that frame numbers match the file
(``validate`` reports a non-finite pose as ``degenerate`` instead).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from bmc_calib import skeleton
from bmc_calib.errors import BadInputError, UsageError
from bmc_calib.formats import _io

HANDS: tuple[str, ...] = ("right", "left")
#: Length units a user may declare with ``--unit``.
UNITS: tuple[str, ...] = ("m", "cm", "mm")
DEFAULT_CHUNK_FRAMES = 16384


@dataclass(frozen=True)
class ReadOptions:
    """What the user said about the input.

    - ``layout`` (``--layout``): keypoint order of generic array files.
    - ``hand`` (``--hand``): every frame is this hand (``left`` frames are mirrored); replaces
      what a format says about handedness.
    - ``side`` (``--side``): keep only the hands of this side (as stored, before mirroring);
      the others are dropped and counted as ``other_side``. None keeps both.
    - ``key`` (``--key``): array / dataset / record key holding the joints.
    - ``unit`` (``--unit``): length unit of the stored coordinates, when the format's own
      (or assumed) unit is wrong; the coordinates are not rescaled, only labelled.
    """

    layout: str | None = None
    hand: str | None = None
    key: str | None = None
    chunk_frames: int = DEFAULT_CHUNK_FRAMES
    side: str | None = None
    unit: str | None = None

    def __post_init__(self) -> None:
        if self.hand is not None and self.hand not in HANDS:
            raise UsageError(f"--hand must be one of {', '.join(HANDS)}, got {self.hand!r}")
        if self.side is not None and self.side not in HANDS:
            raise UsageError(f"--side must be one of {', '.join(HANDS)}, got {self.side!r}")
        if self.unit is not None and self.unit not in UNITS:
            raise UsageError(f"--unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if self.layout is not None:
            skeleton.get_layout(self.layout)  # raises UsageError for unknown names
        if self.chunk_frames < 1:
            raise UsageError(f"chunk_frames must be >= 1, got {self.chunk_frames}")


@dataclass
class Chunk:
    """Canonical right hands ``joints (n, 21, 3)``; ``group`` optional per-frame labels (n,).

    ``mirrored`` ``(n,)`` bool marks the frames that were left hands (mirrored to right);
    None means none were. Left and right hands of one person are two hands with their own
    proportions, so person-level statistics keep them apart. ``rows`` ``(n,)`` int64: each
    pose's index among the source's records as read, dropped ones counted (what ``frame``
    means in validate's and features' output); None: the chunk follows the previous one
    without a gap.
    """

    joints: np.ndarray
    group: np.ndarray | None = None
    mirrored: np.ndarray | None = None
    rows: np.ndarray | None = None


@dataclass
class SourceStats:
    """Counts gathered while a source is read."""

    frames_read: int = 0
    frames_kept: int = 0
    frames_mirrored: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    #: readers whose hashing costs real time (``.npy``) hash what they read only when asked
    #: (:attr:`Source.hash_reads`); the others always do
    hash_bytes: bool = False


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
    #: the annotation files a folder source reads (hashed instead of everything below it)
    files: list[str] | None = None
    #: what the reader assumed about the input, one line each (the CLI prints them as notes)
    notes: list[str] = field(default_factory=list)
    #: reading it again costs no more than copying its canonical chunks would (``.npy``:
    #: plain reads, no parsing); fit then reads it twice instead of keeping a scratch copy
    rereadable: bool = False
    #: ask readers to record the SHA-256 of the bytes they read (fit sets it)
    hash_reads: bool = False

    def chunks(self) -> Iterator[Chunk]:
        """Stream the chunks; resets and fills :attr:`stats`.

        Readers that hash what they read record the SHA-256 of the bytes they parsed
        (:func:`bmc_calib.formats._io.read_digest`); fit records that in the provenance.
        """
        self.stats = SourceStats(hash_bytes=self.hash_reads)
        yield from self.read_chunks(self.stats)

    def sha256(self) -> str:
        """SHA-256 of the file's bytes now; for folders, of the annotation files read, in
        order. (What fit records is the digest of the bytes it parsed, see :meth:`chunks`.)"""
        return file_sha256(self.path, self.files)


#: Detection scores (``Reader.detect``): a generic container by its suffix, a dataset by
#: what a file holds, a dataset folder, a dataset by its file name.
SCORE_SUFFIX = 1
SCORE_CONTENT = 3
SCORE_FOLDER = 4
SCORE_NAME = 5


class Reader:
    """Base class of format readers. Subclasses set the class attributes and ``open``.

    The metadata attributes (``expected_files``, ``layout``, ``unit``, ``handedness``,
    ``groups``, ``example``) are what ``bmc-calib formats`` prints.
    """

    name: str = ""
    description: str = ""
    suffixes: tuple[str, ...] = ()
    layout: str = "canonical"
    unit: str = "unknown"
    #: how sure the unit is, when it is not documented by the dataset
    unit_note: str = ""
    handedness: str = "right (use --hand left for left hands)"
    #: what to point the tool at
    expected_files: str = ""
    #: what ``Chunk.group`` holds (``--group-by label``), or "" when the format has no label
    groups: str = ""
    #: an example command
    example: str = ""
    #: whether ``open`` accepts a folder (a dataset root) as one source
    folders: bool = False
    #: whether ``--layout`` / ``--hand`` / ``--key`` apply to this format
    layout_option: bool = False
    hand_option: bool = True
    key_option: bool = False

    def source(
        self,
        path: str,
        options: ReadOptions,
        layout: skeleton.Layout,
        read_chunks: Callable[[SourceStats], Iterator[Chunk]],
        *,
        frames: int | None = None,
        files: list[str] | None = None,
    ) -> Source:
        """The :class:`Source` this reader makes of ``path`` (unit: ``--unit`` or the format's)."""
        return Source(
            path=path,
            format=self.name,
            unit=source_unit(self, options),
            layout=layout.name,
            frames=frames,
            read_chunks=read_chunks,
            files=files,
        )

    def file_source(
        self,
        path: str,
        options: ReadOptions,
        read_file: Callable[[str, skeleton.Layout, ReadOptions, SourceStats], Iterator[Chunk]],
    ) -> Source:
        """The :class:`Source` of one non-empty file, read by
        ``read_file(path, layout, options, stats)`` in ``--layout`` or the format's layout."""
        check_nonempty(path)
        layout = skeleton.get_layout(options.layout or self.layout)
        return self.source(
            path, options, layout, lambda stats: read_file(path, layout, options, stats)
        )

    def detect(self, path: str) -> int:
        """How sure this reader is that it can read ``path``: 0 = no, higher = surer."""
        if os.path.isdir(path):
            return 0
        return SCORE_SUFFIX if path.lower().endswith(self.suffixes) else 0

    def open(self, path: str, options: ReadOptions) -> Source:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_options(self, options: ReadOptions) -> None:
        """Refuse options that do not apply to this format (:class:`UsageError`)."""
        if options.layout is not None and not self.layout_option:
            raise UsageError(
                f"--layout does not apply to format {self.name} (its layout is fixed: "
                f"{self.layout}); read generic array files in a separate run"
            )
        if options.hand is not None and not self.hand_option:
            raise UsageError(
                f"--hand does not apply to format {self.name} ({self.handedness}); "
                "use --side to keep one side"
            )
        if options.key is not None and not self.key_option:
            raise UsageError(f"--key does not apply to format {self.name}")

    def info(self) -> dict[str, object]:
        """The metadata of this format as plain data (``bmc-calib formats --json``)."""
        return {
            "name": self.name,
            "description": self.description,
            "expected_files": self.expected_files,
            "suffixes": list(self.suffixes),
            "folders": self.folders,
            "layout": self.layout,
            "unit": self.unit,
            "unit_note": self.unit_note,
            "handedness": self.handedness,
            "groups": self.groups,
            "example": self.example,
        }


def file_sha256(path: str, files: list[str] | None = None) -> str:
    """Hex SHA-256 of a file (1 MiB blocks), or of ``files`` (default: all files below a
    folder) in sorted order."""
    digest = hashlib.sha256()
    paths = [path]
    if files is not None:
        paths = sorted(files)
    elif os.path.isdir(path):
        paths = sorted(
            os.path.join(root, name) for root, _, names in os.walk(path) for name in names
        )
        paths = [p for p in paths if _io.is_regular_file(p)]  # a FIFO would block forever
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


# --------------------------------------------------------------------------- bookkeeping
def drop_invalid(
    joints: np.ndarray,
    keep: np.ndarray,
    reason: str,
    stats: SourceStats,
    *aligned: np.ndarray | None,
) -> tuple[np.ndarray, ...]:
    """Remove the frames where ``keep`` (n,) is False; count them as read and dropped.

    Dropped frames are added to ``stats.frames_read`` and ``stats.dropped[reason]`` (the
    kept ones are counted by :func:`to_right_hands`). Returns the kept ``joints`` followed by
    the kept rows of each per-frame array in ``aligned`` (None passes through).
    """
    keep = np.asarray(keep, dtype=bool)
    dropped = int(keep.size - np.count_nonzero(keep))
    if dropped == 0:
        return (joints, *aligned)
    stats.frames_read += dropped
    stats.dropped[reason] = stats.dropped.get(reason, 0) + dropped
    return (joints[keep], *(None if a is None else a[keep] for a in aligned))


def sentinel_frames(joints: np.ndarray) -> np.ndarray:
    """``(n,)`` True where some joint is exactly ``(0, 0, 0)`` or ``(-1, -1, -1)``.

    Both are "missing" markers of public datasets (DexYCB writes −1 triples, several
    fingertip loaders zeros); no real joint lands exactly on them.
    """
    zero = np.all(joints == 0, axis=-1)
    minus_one = np.all(joints == -1, axis=-1)
    return np.any(zero | minus_one, axis=-1)


def make_chunk(
    joints: np.ndarray,
    layout: skeleton.Layout,
    stats: SourceStats,
    options: ReadOptions,
    *,
    is_left: np.ndarray | bool = False,
    group: np.ndarray | str | None = None,
    checks: tuple[tuple[str, np.ndarray], ...] = (),
    clean: bool = True,
) -> Chunk | None:
    """Source joints ``(n, 21, 3)`` in ``layout`` → a canonical right-hand :class:`Chunk`.

    In order: ``options.hand`` replaces ``is_left``; each ``(reason, keep)`` of ``checks``
    drops frames; with ``clean`` (dataset readers), frames with a sentinel joint
    (:func:`sentinel_frames`) and non-finite frames are dropped; ``options.side`` drops the
    other side; then :func:`to_right_hands`. ``group`` is one label or ``(n,)`` labels.
    Returns None when no frame is left.
    """
    joints = np.asarray(joints)
    n = joints.shape[0]
    # every record read so far was counted in frames_read, kept or dropped: this block's
    # records are the next n
    rows = stats.frames_read + np.arange(n, dtype=np.int64)
    if options.hand is not None:
        is_left = options.hand == "left"
    left = np.broadcast_to(np.asarray(is_left, dtype=bool), (n,))
    labels = None
    if group is not None:
        labels = np.broadcast_to(np.asarray(group, dtype=str), (n,))
    masks = [np.asarray(keep, dtype=bool) for _, keep in checks]
    for i, (reason, _) in enumerate(checks):
        joints, left, labels, rows, *later = drop_invalid(
            joints, masks[i], reason, stats, left, labels, rows, *masks[i + 1 :]
        )
        masks[i + 1 :] = later
    if clean:
        joints, left, labels, rows = drop_invalid(
            joints, ~sentinel_frames(joints), "sentinel", stats, left, labels, rows
        )
        finite = np.isfinite(joints).all(axis=(1, 2))
        joints, left, labels, rows = drop_invalid(
            joints, finite, "non_finite", stats, left, labels, rows
        )
    if options.side is not None:
        keep = left if options.side == "left" else ~left
        joints, left, labels, rows = drop_invalid(
            joints, keep, "other_side", stats, left, labels, rows
        )
    if joints.shape[0] == 0:
        return None
    canon = to_right_hands(joints, layout, left, stats)
    mirrored = np.array(left) if left.any() else None
    return Chunk(canon, None if labels is None else np.array(labels), mirrored, np.array(rows))


class Pending:
    """Per-frame arrays gathered from many small files until a chunk is full.

    ``add(joints=(k, 21, 3), is_left=(k,), …)``; ``take()`` concatenates and resets.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = 0
        self.parts: dict[str, list[np.ndarray]] = {}

    def add(self, **arrays: np.ndarray) -> None:
        for name, value in arrays.items():
            self.parts.setdefault(name, []).append(np.asarray(value))
        self.count += len(arrays["joints"])

    @property
    def full(self) -> bool:
        return self.count >= self.size

    def take(self) -> dict[str, np.ndarray]:
        out = {name: np.concatenate(parts) for name, parts in self.parts.items()}
        self.parts, self.count = {}, 0
        return out


def incomplete_skeleton(path: str, joints: int) -> BadInputError | None:
    """The refusal for poses with too few joints to define bones and angles (else None).

    5 joints: fingertip-only annotations (Dexter+Object, EgoDexter); 16: skeletons without
    DIP joints (ICVL/NYU-style, 16-joint dicts).
    """
    what = {
        5: "only 5 fingertips per pose (fingertip-only annotations such as Dexter+Object "
        "or EgoDexter)",
        16: "16 joints per pose (a skeleton without DIP joints)",
    }.get(joints)
    if what is None:
        return None
    return BadInputError(
        f"{path}: {what}; bones and joint angles need all 21 joints (wrist + 4 per finger), "
        "so this data cannot be used by fit or features"
    )


def check_nonempty(path: str) -> None:
    """Refuse a path that cannot be read or is an empty file (:class:`BadInputError`)."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if size == 0:
        raise BadInputError(f"{path}: empty file")


def source_unit(reader: Reader, options: ReadOptions) -> str:
    """The unit recorded for a source: ``--unit`` when given, else the format's own."""
    return options.unit or reader.unit
