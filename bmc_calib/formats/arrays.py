"""Readers for plain arrays: ``.npy`` (streamed in chunks) and ``.npz`` (named array).

Expected content: joints ``(N, 21, 3)`` (or one pose ``(21, 3)``, or ``(N, 63)`` rows
``x0 y0 z0 … z20``, read as ``(N, 21, 3)`` with a note) in the layout named by
``--layout`` (default canonical), any length unit, right hands unless ``--hand left``.
A ``.npz`` file may also hold ``is_left`` ``(N,)`` bool: those frames are mirrored.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from bmc_calib import skeleton
from bmc_calib.errors import BadInputError
from bmc_calib.formats import _io
from bmc_calib.formats._io import ARCHIVE_ERRORS
from bmc_calib.formats.base import (
    Chunk,
    Reader,
    ReadOptions,
    Source,
    SourceStats,
    incomplete_skeleton,
    make_chunk,
)

#: Array names tried, in order, when a ``.npz`` holds several arrays and no ``--key`` is given.
NPZ_KEYS: tuple[str, ...] = ("joints", "joints_3d", "xyz", "keypoints", "poses")


def joint_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape an array of ``shape`` is read as: one pose ``(21, 3)`` → ``(1, 21, 3)``,
    flat rows ``(N, 63)`` (``x0 y0 z0 … z20``) → ``(N, 21, 3)``, anything else unchanged."""
    shape = tuple(int(s) for s in shape)
    if shape == (skeleton.NUM_JOINTS, 3):
        return (1, *shape)
    if len(shape) == 2 and shape[1] == 3 * skeleton.NUM_JOINTS:
        return (shape[0], skeleton.NUM_JOINTS, 3)
    return shape


def flat_rows_notes(path: str, shape: tuple[int, ...]) -> list[str]:
    """The note for an ``(N, 63)`` array read as ``(N, 21, 3)``, or a ``(21, 3)`` one read as
    one pose (else none)."""
    if len(shape) != 2 or joint_shape(shape) == tuple(shape):
        return []
    if tuple(shape) == (skeleton.NUM_JOINTS, 3):
        return [f"{path}: {tuple(shape)} array read as one pose"]
    return [f"{path}: {tuple(shape)} array read as {joint_shape(shape)}: x0 y0 z0 … z20 per row"]


def check_joint_shape(path: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Raise a one-line :class:`BadInputError` unless ``shape`` is ``(N>0, 21, 3)`` numbers."""
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise BadInputError(f"{path}: joints must be numbers, found dtype {dtype}")
    if len(shape) == 3 and shape[2] == 3 and (refusal := incomplete_skeleton(path, shape[1])):
        raise refusal
    if len(shape) != 3 or tuple(shape[1:]) != (skeleton.NUM_JOINTS, 3):
        raise BadInputError(
            f"{path}: expected joints of shape (N, 21, 3) or (N, 63), found {tuple(shape)}"
        )
    if shape[0] == 0:
        raise BadInputError(f"{path}: contains no poses (shape {tuple(shape)})")


def check_joint_array(path: str, arr: np.ndarray) -> np.ndarray:
    """Return ``arr`` as ``(N, 21, 3)`` (:func:`joint_shape`) or raise."""
    arr = arr.reshape(joint_shape(arr.shape))
    check_joint_shape(path, arr.shape, arr.dtype)
    return arr


def _stream(
    path: str,
    arr: np.ndarray | _NpyRows,
    layout: skeleton.Layout,
    is_left: np.ndarray | bool,
    options: ReadOptions,
    stats: SourceStats,
) -> Iterator[Chunk]:
    step = options.chunk_frames
    digest = arr.start_digest() if isinstance(arr, _NpyRows) and stats.hash_bytes else None
    for start in range(0, arr.shape[0], step):
        try:
            if digest is not None:
                block = arr.read(start, start + step, digest)
            else:
                block = np.asarray(arr[start : start + step])
        except (OSError, ValueError) as exc:  # a memory map past a truncated end
            raise BadInputError(f"{path}: cannot read frames from {start} ({exc})") from None
        left = is_left if isinstance(is_left, bool) else is_left[start : start + step]
        chunk = make_chunk(block, layout, stats, options, is_left=left, clean=False)
        if chunk is not None:
            yield chunk
    if digest is not None and isinstance(arr, _NpyRows):
        arr.finish_digest(digest)


class _NpyRows:
    """Row blocks ``(n, 21, 3)`` of a ``.npy`` file read with plain file reads.

    No memory map: the file's pages never count as this process's memory, so streaming a
    multi-gigabyte file costs one chunk. Fortran-ordered files (rare) are memory-mapped.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            self.offset = fh.tell()
            size = os.fstat(fh.fileno()).st_size
        self.dtype = np.dtype(dtype)
        self.notes = flat_rows_notes(path, tuple(shape))
        self.shape = joint_shape(tuple(shape))
        check_joint_shape(path, self.shape, self.dtype)
        _io.check_declared_size(
            path,
            "not a readable .npy array: its header",
            self.shape,
            self.dtype,
            size - self.offset,
        )
        self.row_bytes = skeleton.NUM_JOINTS * 3 * self.dtype.itemsize
        self.mapped = np.load(path, mmap_mode="r").reshape(self.shape) if fortran else None

    def start_digest(self) -> Any:
        """A SHA-256 fed with the header bytes, for :meth:`read` (None: memory-mapped)."""
        if self.mapped is not None:
            return None
        with open(self.path, "rb") as fh:
            header = fh.read(self.offset)
        if len(header) != self.offset:
            raise ValueError("the file is shorter than its header")
        return hashlib.sha256(header)

    def _row_bytes(self, start: int, stop: int) -> tuple[bytes, int]:
        """The raw bytes of rows ``start:stop`` (clipped to the array) and their count."""
        count = max(min(stop, self.shape[0]) - start, 0)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start * self.row_bytes)
            data = fh.read(count * self.row_bytes)
        if len(data) != count * self.row_bytes:
            raise ValueError(f"file ends early: {len(data)} of {count * self.row_bytes} bytes")
        return data, count

    def read(self, start: int, stop: int, digest: Any) -> np.ndarray:
        """Rows ``start:stop`` (read in order, from 0), their bytes added to ``digest``."""
        data, count = self._row_bytes(start, stop)
        digest.update(data)
        return np.frombuffer(data, self.dtype).reshape(count, *self.shape[1:])

    def finish_digest(self, digest: Any) -> None:
        """Add whatever follows the array and record the digest of the whole file as read."""
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + self.shape[0] * self.row_bytes)
            while block := fh.read(1 << 20):
                digest.update(block)
        _io.record_digest(self.path, digest.hexdigest())

    def __getitem__(self, rows: slice) -> np.ndarray:
        if self.mapped is not None:
            return np.asarray(self.mapped[rows])
        start, stop, _ = rows.indices(self.shape[0])
        data, count = self._row_bytes(start, stop)
        return np.frombuffer(data, self.dtype).reshape(count, *self.shape[1:])


class NpyReader(Reader):
    name = "npy"
    description = "NumPy array of joints (N, 21, 3) or flat rows (N, 63); streamed in chunks"
    suffixes = (".npy",)
    handedness = "right; --hand left mirrors all frames"
    expected_files = "*.npy holding (N, 21, 3), (N, 63) or (21, 3) joints"
    example = "bmc-calib fit poses.npy --layout rhd -o limits.h5"
    layout_option = True
    key_option = True

    def open(self, path: str, options: ReadOptions) -> Source:
        _io.require_regular(path)
        try:
            arr = _NpyRows(path)
        except BadInputError:
            raise
        except Exception as exc:  # numpy's header parser raises many types on corrupt files
            raise BadInputError(f"{path}: not a readable .npy array ({_short(exc)})") from None
        layout = skeleton.get_layout(options.layout or self.layout)
        is_left = options.hand == "left"
        source = self.source(
            path,
            options,
            layout,
            lambda stats: _stream(path, arr, layout, is_left, options, stats),
            frames=int(arr.shape[0]),
        )
        source.rereadable = True
        source.notes.extend(arr.notes)
        return source


class NpzReader(Reader):
    name = "npz"
    description = (
        "NumPy .npz archive: joints (N, 21, 3) under --key or one of "
        f"{', '.join(NPZ_KEYS)}; optional is_left (N,) bool"
    )
    suffixes = (".npz",)
    handedness = "right; per-frame is_left array, or --hand left for all"
    expected_files = "*.npz with a joints array (N, 21, 3) or (N, 63) (--key names it)"
    example = "bmc-calib fit poses.npz --key joints -o limits.h5"
    layout_option = True
    key_option = True

    def open(self, path: str, options: ReadOptions) -> Source:
        _io.require_regular(path)
        try:
            archive = np.load(path, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise BadInputError(f"{path}: not an .npz archive (holds a single array)")
            with archive:
                key = self._joint_key(path, list(archive.files), options.key)
                stored = _io.npz_member(path, archive, key)
                if not isinstance(stored, np.ndarray) or stored.ndim == 0:
                    raise BadInputError(f"{path}: {key!r} is not an array of joints")
                arr = check_joint_array(path, stored)
                is_left = None
                if "is_left" in archive.files:
                    is_left = _io.npz_member(path, archive, "is_left")
        except BadInputError:
            raise
        except ARCHIVE_ERRORS as exc:
            raise BadInputError(f"{path}: not a readable .npz archive ({_short(exc)})") from None
        left: np.ndarray | bool = options.hand == "left"
        if is_left is not None and options.hand is None:
            left = _io.parse_is_left(is_left, path)
            if left.shape[0] != arr.shape[0]:
                raise BadInputError(
                    f"{path}: is_left has {left.shape[0]} entries for {arr.shape[0]} poses"
                )
        layout = skeleton.get_layout(options.layout or self.layout)
        source = self.source(
            path,
            options,
            layout,
            lambda stats: _stream(path, arr, layout, left, options, stats),
            frames=int(arr.shape[0]),
        )
        source.notes.extend(flat_rows_notes(path, stored.shape))
        return source

    @staticmethod
    def _joint_key(path: str, keys: list[str], wanted: str | None) -> str:
        if wanted is not None:
            if wanted not in keys:
                raise BadInputError(f"{path}: no array {wanted!r}; arrays: {', '.join(keys)}")
            return wanted
        for key in NPZ_KEYS:
            if key in keys:
                return key
        candidates = [k for k in keys if k != "is_left"]
        if len(candidates) == 1:
            return candidates[0]
        raise BadInputError(
            f"{path}: cannot tell which array holds the joints ({', '.join(keys) or 'none'}); "
            "name it with --key"
        )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
