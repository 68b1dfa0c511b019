"""Generic containers of 3D joints: JSON, CSV/TXT tables and HDF5 datasets.

Every reader yields canonical right hands ``(n, 21, 3)`` in the unit stored (``--unit``
labels it; default "unknown"), honours ``--layout`` (keypoint order, default canonical) and
``--hand`` (left = mirror every frame), and keeps every frame so that frame numbers match the
file (a non-finite pose is reported as degenerate downstream, not dropped here).

- JSON (``.json``): a list of poses, each ``21 × [x, y, z]`` or 63 numbers; one pose; an
  object holding such a list under ``--key`` or one of :data:`JSON_KEYS`; or a list of
  records (objects) with the joints under such a key, optionally with ``is_left`` (bool) or
  ``hand``/``side``/``hand_type``/``handedness`` ("left"/"right") and a label under
  ``group``/``subject``/``sequence``/``capture`` (``--group-by label``). Joints may also be
  an object keyed by canonical joint names (``{"wrist": [x, y, z], …}``). Top-level lists
  are decoded one item at a time (memory: the text plus one chunk).
- CSV/TXT (``.csv``, ``.tsv``, ``.txt``): one pose per row, 63 numbers ``x0 y0 z0 … z20``
  separated by commas, semicolons, tabs or spaces; an optional header line; ``#`` comments.
  Streamed in chunks.
- HDF5 (``.h5``, ``.hdf5``): a dataset ``(N, 21, 3)`` named by ``--key`` (a path inside the
  file), else one of :data:`~bmc_calib.formats.arrays.NPZ_KEYS`, else the only dataset of
  that shape; an optional ``is_left`` ``(N,)`` dataset beside it. Streamed in chunks.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from bmc_calib import skeleton
from bmc_calib.errors import BadInputError
from bmc_calib.formats import _io
from bmc_calib.formats.arrays import NPZ_KEYS, check_joint_shape
from bmc_calib.formats.base import (
    SCORE_SUFFIX,
    Chunk,
    Reader,
    ReadOptions,
    Source,
    SourceStats,
    check_nonempty,
    incomplete_skeleton,
    make_chunk,
)

#: Keys tried, in order, for the joints of a JSON object or record.
JSON_KEYS: tuple[str, ...] = (
    "joints_3d",
    "joints3d",
    "joint_3d",
    "joints",
    "xyz",
    "keypoints_3d",
    "keypoints3d",
    "world_coord",
    "keypoints",
    "poses",
    "pose",
)
#: Record keys holding a side ("left"/"right"), and a group label.
SIDE_KEYS: tuple[str, ...] = ("hand", "side", "hand_side", "hand_type", "handedness")
GROUP_KEYS: tuple[str, ...] = ("group", "subject", "sequence", "capture")

_NAME_ALIASES = (
    ("index_finger", "index"),
    ("middle_finger", "middle"),
    ("ring_finger", "ring"),
    ("pinky", "little"),
)


def pose_array(path: str, arr: np.ndarray, where: str = "") -> np.ndarray:
    """``(k, 21, 3)`` from ``(k, 21, 3)`` or ``(k, 63)`` numbers; refusals for 5/16 joints."""
    if arr.ndim == 2 and arr.shape[1] % 3 == 0:
        arr = arr.reshape(arr.shape[0], arr.shape[1] // 3, 3)
    if arr.ndim == 3 and arr.shape[2] == 3 and (refusal := incomplete_skeleton(path, arr.shape[1])):
        raise refusal
    if arr.ndim != 3 or arr.shape[1:] != (skeleton.NUM_JOINTS, 3):
        raise BadInputError(
            f"{path}: {where}expected each pose as 21 [x, y, z] triples or 63 numbers, found "
            f"poses of shape {arr.shape[1:]}"
        )
    return arr


def _canonical_name(name: str) -> str:
    key = name.strip().lower().replace(" ", "_")
    for old, new in _NAME_ALIASES:
        key = key.replace(old, new)
    return key


def is_named_joints(value: Any) -> bool:
    """Whether ``value`` looks like ``{"joint name": [x, y, z], …}`` (at least 5 joints)."""
    if not isinstance(value, dict) or len(value) < 5:
        return False
    return all(isinstance(v, list) and len(v) == 3 for v in value.values())


def named_pose(path: str, value: dict[str, Any]) -> list[Any]:
    """The 21 canonical joints of a ``{"name": [x, y, z]}`` object, in canonical order."""
    joints = {_canonical_name(k): v for k, v in value.items()}
    missing = [n for n in skeleton.JOINT_NAMES if n not in joints]
    if missing:
        if refusal := incomplete_skeleton(path, len(joints)):
            raise refusal
        raise BadInputError(
            f"{path}: named joints must be the 21 canonical names (bmc-calib formats); "
            f"missing {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}"
        )
    return [joints[n] for n in skeleton.JOINT_NAMES]


def _side(path: str, record: dict[str, Any]) -> bool | None:
    if "is_left" in record:
        value = record["is_left"]
        if not isinstance(value, bool | int):
            raise BadInputError(f"{path}: is_left must be true or false, found {value!r}")
        return bool(value)
    for key in SIDE_KEYS:
        if key in record:
            value = str(record[key]).strip().lower()
            if value not in ("left", "right"):
                raise BadInputError(
                    f"{path}: {key} must be 'left' or 'right', found {record[key]!r} "
                    "(use --hand to set it for every pose)"
                )
            return value == "left"
    return None


def _label(record: dict[str, Any]) -> str | None:
    for key in GROUP_KEYS:
        if key in record:
            return str(record[key])
    return None


class JsonReader(Reader):
    name = "json"
    description = "JSON poses: nested lists (N, 21, 3), one pose, or records with a joints key"
    suffixes = (".json",)
    handedness = "right; per-record is_left / hand field, or --hand left for all"
    expected_files = (
        "*.json: [[[x, y, z] × 21], …], or [{'joints_3d': …, 'hand': 'left'}, …], or {'joints': …}"
    )
    groups = "record field group/subject/sequence/capture, when present"
    example = "bmc-calib fit poses.json --key joints_3d -o limits.h5"
    layout_option = True
    key_option = True

    def open(self, path: str, options: ReadOptions) -> Source:
        return self.file_source(path, options, self._chunks)

    def _chunks(
        self, path: str, layout: skeleton.Layout, options: ReadOptions, stats: SourceStats
    ) -> Iterator[Chunk]:
        text = _io.read_text(path)
        first, _ = _io.json_start(text, path)
        if first == "[":
            items: Iterator[Any] = _io.iter_json_array(text, path)
            head = next(items, None)
            if head is None:
                raise BadInputError(f"{path}: contains no poses (empty list)")
            if _is_triple(head) or isinstance(head, int | float):
                # the whole document is one pose: 21 triples or 63 numbers
                pose = _io.float_array(_io.load_json(text, path), path, "the pose")
                yield from _emit([pose_array(path, pose.reshape(1, -1))], layout, options, stats)
                return
            items = itertools.chain([head], items)
        else:
            items = iter(self._object_items(path, _io.load_json(text, path), options))
        del text
        yield from _records_or_poses(path, items, layout, options, stats)

    @staticmethod
    def _object_items(path: str, obj: Any, options: ReadOptions) -> list[Any]:
        if not isinstance(obj, dict):
            raise BadInputError(f"{path}: expected a JSON list or object at the top level")
        if options.key is not None:
            if options.key not in obj:
                raise BadInputError(
                    f"{path}: no key {options.key!r}; keys: {', '.join(list(obj)[:10])}"
                )
            value = obj[options.key]
        elif is_named_joints(obj):
            return [obj]
        else:
            key = next((k for k in JSON_KEYS if k in obj), None)
            if key is None:
                raise BadInputError(
                    f"{path}: no joints key ({', '.join(JSON_KEYS[:4])}, …); keys: "
                    f"{', '.join(map(str, list(obj)[:10])) or 'none'} (name it with --key)"
                )
            value = obj[key]
        if is_named_joints(value):
            return [value]
        if not isinstance(value, list) or not value:
            raise BadInputError(f"{path}: the joints must be a non-empty list")
        if _is_triple(value[0]) or isinstance(value[0], int | float):
            return [value]  # one pose
        return value


def _is_triple(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    )


def _records_or_poses(
    path: str,
    items: Iterator[Any],
    layout: skeleton.Layout,
    options: ReadOptions,
    stats: SourceStats,
) -> Iterator[Chunk]:
    """Chunks from an iterator of poses (lists / named dicts) or of records (dicts)."""
    index = 0
    key: str | None = None
    while batch := list(itertools.islice(items, options.chunk_frames)):
        if key is None and isinstance(batch[0], dict) and not is_named_joints(batch[0]):
            key = _record_key(path, batch[0], options)
        if key is None:
            poses = [named_pose(path, p) if isinstance(p, dict) else p for p in batch]
            arr = pose_array(path, _io.float_array(poses, path, "poses"), "")
            yield from _emit([arr], layout, options, stats)
        else:
            yield from _emit(_records(path, batch, key, index), layout, options, stats)
        index += len(batch)
    if index == 0:
        raise BadInputError(f"{path}: contains no poses")


def _record_key(path: str, record: dict[str, Any], options: ReadOptions) -> str:
    if options.key is not None:
        if options.key not in record:
            raise BadInputError(f"{path}: record 0 has no key {options.key!r}")
        return options.key
    key = next((k for k in JSON_KEYS if k in record), None)
    if key is None:
        raise BadInputError(
            f"{path}: record 0 has no joints key ({', '.join(JSON_KEYS[:4])}, …); keys: "
            f"{', '.join(map(str, list(record)[:10])) or 'none'} (name it with --key)"
        )
    return key


def _records(path: str, batch: list[Any], key: str, start: int) -> list[Any]:
    joints, left, labels = [], [], []
    for i, record in enumerate(batch, start):
        if not isinstance(record, dict) or key not in record:
            raise BadInputError(f"{path}: record {i} is not an object with key {key!r}")
        value = record[key]
        joints.append(named_pose(path, value) if isinstance(value, dict) else value)
        left.append(_side(path, record))
        labels.append(_label(record))
    arr = pose_array(path, _io.float_array(joints, path, f"{key!r} of the records"))
    return [arr, left, labels]


def _emit(
    parts: list[Any], layout: skeleton.Layout, options: ReadOptions, stats: SourceStats
) -> Iterable[Chunk]:
    arr = parts[0]
    is_left: np.ndarray | bool = False
    group = None
    if len(parts) > 1:
        sides, labels = parts[1], parts[2]
        if any(s is not None for s in sides):
            is_left = np.array([bool(s) for s in sides])
        if any(g is not None for g in labels):
            group = np.array(["" if g is None else g for g in labels])
    chunk = make_chunk(arr, layout, stats, options, is_left=is_left, group=group, clean=False)
    return [] if chunk is None else [chunk]


# --------------------------------------------------------------------------- CSV / TXT
_SPLIT = re.compile(r"[,;\s]+")


def _tokens(line: str) -> list[str]:
    return [t for t in _SPLIT.split(line.strip()) if t]


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


class CsvReader(Reader):
    name = "csv"
    description = "Text table: one pose per row, 63 numbers x0 y0 z0 … z20; optional header"
    suffixes = (".csv", ".tsv", ".txt")
    handedness = "right; --hand left mirrors all frames"
    expected_files = "*.csv / *.txt, 63 numbers per row (comma, semicolon, tab or space)"
    example = "bmc-calib fit poses.csv --layout freihand -o limits.h5"
    layout_option = True
    key_option = False

    def detect(self, path: str) -> int:
        """``.csv`` by name; ``.txt`` / ``.tsv`` only when a leading line is all numbers."""
        if os.path.isdir(path) or not path.lower().endswith(self.suffixes):
            return 0
        if path.lower().endswith(".csv"):
            return SCORE_SUFFIX
        lines = [ln for ln in _io.head(path, 8192).splitlines() if ln.strip()][:2]
        numeric = any(all(_is_number(t) for t in _tokens(ln)) for ln in lines)
        return SCORE_SUFFIX if numeric else 0

    def open(self, path: str, options: ReadOptions) -> Source:
        source = self.file_source(path, options, self._chunks)
        if _has_index_column(path):
            source.notes.append(
                f"{path}: the first column is a row index (empty header cell, as pandas "
                "writes it): ignored"
            )
        return source

    def _chunks(
        self, path: str, layout: skeleton.Layout, options: ReadOptions, stats: SourceStats
    ) -> Iterator[Chunk]:
        index = _has_index_column(path)
        with _io.open_text_hashed(path) as fh:  # hashed as read: fit records what it parsed
            rows = _data_rows(path, fh, header=index)
            columns = None
            while batch := list(itertools.islice(rows, options.chunk_frames)):
                if columns is None:
                    columns = _check_columns(path, batch[0], index)
                values = _parse_rows(path, batch, columns)[:, columns - _COLUMNS :]
                arr = values.reshape(len(batch), skeleton.NUM_JOINTS, 3)
                chunk = make_chunk(arr, layout, stats, options, clean=False)
                if chunk is not None:
                    yield chunk
            if columns is None:
                raise BadInputError(f"{path}: contains no poses (no data rows)")


def _data_rows(path: str, fh: Any, header: bool = False) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the data rows: no blanks, comments, or a header line (the
    first line when ``header``, else a first line mostly of non-numbers: a first data row
    with a bad cell is data, and fails to parse, rather than silently a header)."""
    first = True
    try:
        for lineno, raw in enumerate(fh, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if first:
                first = False
                tokens = _tokens(line)
                words = sum(not _is_number(t) for t in tokens)
                if header or 2 * words > len(tokens):
                    continue  # a header line
            yield lineno, line
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not a UTF-8 text file") from None


def _parse_rows(path: str, batch: list[tuple[int, str]], columns: int) -> np.ndarray:
    """``(len(batch), columns)`` numbers; a bad row raises naming its line number."""
    text = "\n".join(line for _, line in batch).replace(",", " ").replace(";", " ")
    try:
        values = np.loadtxt(text.splitlines(), ndmin=2, dtype=np.float64, comments=None)
    except ValueError as exc:
        for lineno, line in batch:  # only on failure: find the line to name
            tokens = _tokens(line)
            if len(tokens) != columns:
                raise BadInputError(
                    f"{path}: line {lineno} has {len(tokens)} numbers, expected {columns}"
                ) from None
            bad = next((t for t in tokens if not _is_number(t)), None)
            if bad is not None:
                raise BadInputError(
                    f"{path}: line {lineno}: {bad[:20]!r} is not a number"
                ) from None
        raise BadInputError(f"{path}: not a table of numbers ({_io.short(exc)})") from None
    if values.shape[1] != columns:
        raise BadInputError(f"{path}: rows have {values.shape[1]} numbers, expected {columns}")
    return values


def _has_index_column(path: str) -> bool:
    """Whether the table starts with a header whose first cell is empty (``,x0,y0,…``) over
    rows of 64 numbers: the row index pandas' ``to_csv`` writes."""
    lines = [ln.split("#", 1)[0].rstrip("\r\n ") for ln in _io.head(path, 1 << 16).splitlines()]
    lines = [ln.removeprefix("\ufeff") for ln in lines if ln.strip()][:2]
    if len(lines) < 2 or lines[0][:1] not in {",", ";", "\t"}:
        return False
    data = _tokens(lines[1])
    return len(data) == _COLUMNS + 1 and all(_is_number(t) for t in data)


#: numbers per row: 21 joints × x y z
_COLUMNS = 3 * skeleton.NUM_JOINTS


def _check_columns(path: str, row: tuple[int, str], index: bool = False) -> int:
    """Numbers per row (63, or 64 with a pandas index column), from the first data row."""
    n = len(_tokens(row[1]))
    if index and n == _COLUMNS + 1:
        return n
    if n == 64:
        raise BadInputError(
            f"{path}: 64 numbers per row (a leading time/frame column?); F-PHAB skeleton.txt "
            "files have one: use --format fpha"
        )
    if n % 3 == 0 and (refusal := incomplete_skeleton(path, n // 3)):
        raise refusal
    if n != 3 * skeleton.NUM_JOINTS:
        raise BadInputError(f"{path}: line {row[0]} has {n} numbers, expected 63 (21 × x y z)")
    return n


# --------------------------------------------------------------------------- HDF5
class H5Reader(Reader):
    name = "h5"
    description = "HDF5 dataset of joints (N, 21, 3) (--key names it); optional is_left (N,)"
    suffixes = (".h5", ".hdf5", ".hdf")
    handedness = "right; is_left dataset beside the joints, or --hand left for all"
    expected_files = "*.h5 / *.hdf5 with a dataset (N, 21, 3)"
    example = "bmc-calib fit poses.h5 --key /train/joints_3d -o limits.h5"
    layout_option = True
    key_option = True

    def open(self, path: str, options: ReadOptions) -> Source:
        import h5py

        check_nonempty(path)
        try:
            with h5py.File(path, "r") as fh:
                if _io.is_limits_bundle(fh):
                    raise BadInputError(
                        f"{path}: this is a bmc-calib limits bundle, not pose data "
                        "(inspect it with bmc-calib inspect)"
                    )
                name = self._dataset(path, fh, options.key)
                ds = fh[name]
                shape = (1, *ds.shape) if ds.shape == (skeleton.NUM_JOINTS, 3) else ds.shape
                check_joint_shape(path, tuple(shape), ds.dtype)
                _io.check_h5_dataset(path, ds, f"dataset {name!r}")
                parent = name.rsplit("/", 1)[0] if "/" in name.strip("/") else "/"
                left_name = f"{parent.rstrip('/')}/is_left"
                has_left = left_name in fh and isinstance(fh[left_name], h5py.Dataset)
                if has_left and fh[left_name].shape != (shape[0],):
                    raise BadInputError(
                        f"{path}: is_left has shape {fh[left_name].shape} for {shape[0]} poses"
                    )
        except BadInputError:
            raise
        except _io.ARCHIVE_ERRORS as exc:
            raise BadInputError(f"{path}: not a readable HDF5 file ({_io.short(exc)})") from None
        layout = skeleton.get_layout(options.layout or self.layout)
        return self.source(
            path,
            options,
            layout,
            lambda stats: self._chunks(
                path, name, left_name if has_left else None, layout, options, stats
            ),
            frames=int(shape[0]),
        )

    @staticmethod
    def _dataset(path: str, fh: Any, key: str | None) -> str:
        import h5py

        datasets: list[tuple[str, tuple[int, ...]]] = []

        def visit(n: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                datasets.append((n, obj.shape))

        fh.visititems(visit)
        listing = ", ".join(f"{n} {s}" for n, s in datasets[:8]) or "none"
        if key is not None:
            if key not in fh or not isinstance(fh[key], h5py.Dataset):
                raise BadInputError(f"{path}: no dataset {key!r}; datasets: {listing}")
            return key
        for k in NPZ_KEYS:
            if k in fh and isinstance(fh[k], h5py.Dataset):
                return k
        fits = [n for n, s in datasets if len(s) in (2, 3) and s[-2:] == (skeleton.NUM_JOINTS, 3)]
        if len(fits) == 1:
            return fits[0]
        raise BadInputError(
            f"{path}: cannot tell which dataset holds the joints ({listing}); name it with --key"
        )

    @staticmethod
    def _chunks(
        path: str,
        name: str,
        left_name: str | None,
        layout: skeleton.Layout,
        options: ReadOptions,
        stats: SourceStats,
    ) -> Iterator[Chunk]:
        import h5py

        try:
            with h5py.File(path, "r") as fh:
                ds = fh[name]
                shape = (1, *ds.shape) if ds.ndim == 2 else ds.shape
                for start in range(0, shape[0], options.chunk_frames):
                    stop = min(start + options.chunk_frames, shape[0])
                    block = ds[()].reshape(shape) if ds.ndim == 2 else ds[start:stop]
                    left: np.ndarray | bool = False
                    if left_name is not None:
                        left = _io.parse_is_left(fh[left_name][start:stop], path)
                    chunk = make_chunk(block, layout, stats, options, is_left=left, clean=False)
                    if chunk is not None:
                        yield chunk
        except _io.ARCHIVE_ERRORS as exc:
            raise BadInputError(f"{path}: cannot read the joints ({_io.short(exc)})") from None
