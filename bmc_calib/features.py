"""Per-pose features for analysis: ``bmc-calib features`` (npz or flat CSV).

Per pose, in input order: ``bone_length (N, 20)`` (normalised unit), ``palm_curvature (N, 4)``,
``palm_angle (N, 4)`` radians, ``flexion_abduction (N, 15, 2)`` radians (flexion first, raw in
(−π, π], before any unwrapping), ``degenerate (N,)`` bool, ``degenerate_reason (N,)`` bit mask,
``source (N,)`` input path and ``frame (N,)`` index within it, plus the joint, bone, palm and
angle names. Degenerate poses carry zeros.

:func:`write_features` streams: memory holds one chunk of poses whatever the input size.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np

from bmc_calib import skeleton
from bmc_calib.errors import UsageError
from bmc_calib.formats import Source
from bmc_calib.formats.base import Chunk
from bmc_calib.kinematics import DEGENERATE_REASONS, Features, compute_features, concatenate
from bmc_calib.outputs import atomic_path


@dataclass
class PoseFeatures:
    """Features of every pose read, with ``source (N,)`` and ``frame (N,)``."""

    features: Features
    source: np.ndarray
    frame: np.ndarray
    normalization: str = "reference-bone"


def chunk_frames(chunk: Chunk, start: int) -> np.ndarray:
    """``(n,)`` frame numbers of a chunk's poses: their records' indices within the source
    (frames dropped while reading, e.g. by ``--side``, keep their numbers), or ``start …``
    when the reader gave none."""
    if chunk.rows is not None:
        return np.asarray(chunk.rows, dtype=np.int64)
    return np.arange(start, start + chunk.joints.shape[0], dtype=np.int64)


def iter_pose_features(
    sources: Sequence[Source], normalization: str = "reference-bone"
) -> Iterator[PoseFeatures]:
    """Features (float64) of every pose, one :class:`PoseFeatures` per chunk read, in input
    order (memory: one chunk)."""
    for src in sources:
        start = 0
        for chunk in src.chunks():
            n = chunk.joints.shape[0]
            frames = chunk_frames(chunk, start)
            yield PoseFeatures(
                compute_features(chunk.joints, normalization),
                np.full(n, src.path, dtype=object),
                frames,
                normalization,
            )
            start = int(frames[-1]) + 1 if n else start


def pose_features(sources: Sequence[Source], normalization: str = "reference-bone") -> PoseFeatures:
    """Features (float64) of every pose of every source, in input order, in memory."""
    parts = list(iter_pose_features(sources, normalization))
    return PoseFeatures(
        concatenate([p.features for p in parts]),
        np.concatenate([p.source for p in parts]) if parts else np.empty(0, object),
        np.concatenate([p.frame for p in parts]) if parts else np.empty(0, np.int64),
        normalization,
    )


def write_features(
    sources: Sequence[Source],
    path: str | os.PathLike,
    kind: str,
    normalization: str = "reference-bone",
    *,
    force: bool = False,
) -> int:
    """Stream the features of every pose of ``sources`` to ``path`` (``kind`` ``"npz"`` or
    ``"csv"``) chunk by chunk; returns the number of poses. Memory is one chunk whatever
    the size: CSV rows are written as they are computed; the ``.npz`` members are first
    appended to raw files beside the target and packed into the archive at the end (so the
    disk briefly holds the output twice)."""
    chunks = iter_pose_features(sources, normalization)
    if kind == "csv":
        return write_csv(chunks, path, force=force, normalization=normalization)
    return write_npz(chunks, path, force=force)


_NPZ_NUMBERS = (
    "bone_length",
    "palm_curvature",
    "palm_angle",
    "flexion_abduction",
    "degenerate",
    "degenerate_reason",
)


def _parts(data: PoseFeatures | Iterable[PoseFeatures]) -> Iterable[PoseFeatures]:
    return [data] if isinstance(data, PoseFeatures) else data


def write_npz(
    data: PoseFeatures | Iterable[PoseFeatures], path: str | os.PathLike, *, force: bool = False
) -> int:
    """Write the features (all at once, or chunk by chunk) to a ``.npz`` archive atomically;
    returns the number of poses. The archive equals what ``np.savez`` writes of the
    concatenated arrays (uncompressed ``.npy`` members)."""
    with (
        atomic_path(path, force=force) as tmp,
        tempfile.TemporaryDirectory(
            prefix=".features-", dir=os.path.dirname(os.path.abspath(tmp))
        ) as parts_dir,
    ):
        raw = {name: open(os.path.join(parts_dir, name), "wb") for name in _NPZ_NUMBERS}
        raw["frame"] = open(os.path.join(parts_dir, "frame"), "wb")
        raw["source"] = open(os.path.join(parts_dir, "source"), "wb")
        names: dict[str, int] = {}
        shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        total = 0
        try:
            for part in _parts(data):
                f = part.features
                for name in _NPZ_NUMBERS:
                    arr = np.ascontiguousarray(getattr(f, name))
                    shapes[name] = (arr.shape[1:], arr.dtype)
                    raw[name].write(arr.tobytes())
                frame = np.ascontiguousarray(part.frame, dtype=np.int64)
                raw["frame"].write(frame.tobytes())
                labels, inverse = np.unique(part.source.astype(str), return_inverse=True)
                ids = np.asarray([names.setdefault(str(lab), len(names)) for lab in labels])
                raw["source"].write(ids[inverse.reshape(-1)].astype(np.int64).tobytes())
                total += len(f)
        finally:
            for fh in raw.values():
                fh.close()
        if not shapes:  # no pose at all: the shapes of an empty feature set
            empty = concatenate([])
            shapes = {n: (getattr(empty, n).shape[1:], getattr(empty, n).dtype)
                      for n in _NPZ_NUMBERS}  # fmt: skip
        source_names = np.asarray(list(names), dtype=str)
        if source_names.size == 0:
            source_names = np.empty(0, dtype=str)
        with (
            open(tmp, "wb") as out,
            zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive,
        ):
            for name in _NPZ_NUMBERS:
                tail, dtype = shapes[name]
                _member_from_file(archive, name, (total, *tail), dtype,
                                  os.path.join(parts_dir, name))  # fmt: skip
            _member_from_file(archive, "frame", (total,), np.dtype(np.int64),
                              os.path.join(parts_dir, "frame"))  # fmt: skip
            _member_from_ids(archive, "source", source_names, os.path.join(parts_dir, "source"))
            for name, value in (
                ("degenerate_reason_names", np.asarray(DEGENERATE_REASONS)),
                ("joint_names", np.asarray(skeleton.JOINT_NAMES)),
                ("bone_names", np.asarray(skeleton.BONE_NAMES)),
                ("palm_names", np.asarray(skeleton.PALM_NAMES)),
                ("angle_names", np.asarray(skeleton.ANGLE_NAMES)),
            ):
                with archive.open(f"{name}.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, value, allow_pickle=False)
    return total


_COPY_BYTES = 1 << 22
#: rows of the ``source`` member converted to fixed-width text at a time
_SOURCE_ROWS = 8192


def _header(shape: tuple[int, ...], dtype: np.dtype) -> dict[str, object]:
    return {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(int(s) for s in shape),
    }


def _member_from_file(
    archive: zipfile.ZipFile, name: str, shape: tuple[int, ...], dtype: np.dtype, raw: str
) -> None:
    """An ``.npy`` member of ``shape``/``dtype`` whose data are the bytes of file ``raw``."""
    with archive.open(f"{name}.npy", "w", force_zip64=True) as fh, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(fh, _header(shape, dtype))
        while block := src.read(_COPY_BYTES):
            fh.write(block)


def _member_from_ids(archive: zipfile.ZipFile, name: str, names: np.ndarray, raw: str) -> None:
    """The ``source`` member: the paths of the int64 source ids in file ``raw``."""
    count = os.path.getsize(raw) // 8
    dtype = names.dtype if names.size else np.dtype("<U1")
    with archive.open(f"{name}.npy", "w", force_zip64=True) as fh, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(fh, _header((count,), dtype))
        # a few thousand rows at a time: each row becomes 4 bytes per character of a path
        while block := src.read(8 * _SOURCE_ROWS):
            fh.write(names[np.frombuffer(block, np.int64)].astype(dtype).tobytes())


def column_names(normalization: str = "reference-bone") -> list[str]:
    """Header of the flat CSV table; every number column names its unit: ``_rel`` (relative
    to the wrist→middle-MCP bone), ``_per_rel`` (palm curvature), ``_rad``; without
    normalisation lengths are in the input's unit (``_len``, ``_per_len``)."""
    length = "rel" if normalization == "reference-bone" else "len"
    cols = ["source", "frame", "degenerate", "degenerate_reason"]
    cols += [f"bone_length_{n}_{length}" for n in skeleton.BONE_NAMES]
    cols += [f"palm_curvature_{n}_per_{length}" for n in skeleton.PALM_NAMES]
    cols += [f"palm_angle_{n}_rad" for n in skeleton.PALM_NAMES]
    for n in skeleton.ANGLE_NAMES:
        cols += [f"flexion_{n}_rad", f"abduction_{n}_rad"]
    return cols


def output_kind(path: str | os.PathLike, csv: bool = False) -> str:
    """``"csv"`` or ``"npz"``: by the suffix of ``path`` (``.csv`` / ``.npz``), else ``csv``
    when ``csv`` (``--csv``) and ``npz`` otherwise. ``--csv`` with an ``.npz`` path is a
    :class:`UsageError`."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix == ".npz" and csv:
        raise UsageError(
            f"{os.fspath(path)}: --csv writes a CSV table, not .npz: name the output .csv, "
            "or drop --csv"
        )
    return "csv" if suffix == ".csv" or csv else "npz"


def write_csv(
    data: PoseFeatures | Iterable[PoseFeatures],
    path: str | os.PathLike,
    *,
    force: bool = False,
    normalization: str | None = None,
) -> int:
    """Write the features (all at once, or chunk by chunk) as a flat CSV table (one row a
    pose, :func:`column_names`); returns the number of poses."""
    total = 0
    with atomic_path(path, force=force) as tmp, open(tmp, "w", newline="") as fh:
        header = None if normalization is None else column_names(normalization)
        if header is not None:
            fh.write(",".join(header) + "\n")
        for part in _parts(data):
            if header is None:
                header = column_names(part.normalization)
                fh.write(",".join(header) + "\n")
            _csv_rows(part, fh)
            total += len(part.features)
        if header is None:
            fh.write(",".join(column_names()) + "\n")
    return total


def _csv_rows(data: PoseFeatures, fh: IO[str]) -> None:
    f = data.features
    numbers = np.concatenate(
        (
            f.bone_length,
            f.palm_curvature,
            f.palm_angle,
            f.flexion_abduction.reshape(len(f), -1),
        ),
        axis=1,
    )
    step = 65536
    for start in range(0, len(f), step):
        block = slice(start, start + step)
        names, inverse = np.unique(data.source[block].astype(str), return_inverse=True)
        columns = [
            np.asarray([_csv_field(s) for s in names])[inverse],
            data.frame[block].astype(str),
            f.degenerate[block].astype(np.uint8).astype(str),
            f.degenerate_reason[block].astype(str),
            *np.char.mod("%.17g", numbers[block]).T,
        ]
        rows = columns[0]
        for col in columns[1:]:  # a loop over columns, vectorised over rows
            rows = np.char.add(np.char.add(rows, ","), col)
        if rows.size:
            fh.write("\n".join(rows.tolist()) + "\n")


def _csv_field(text: str) -> str:
    """Quote a CSV field when it needs it (RFC 4180)."""
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text
