"""Pickled datasets: RHD (``anno_*.pickle``) and HO-3D / H2O-3D (``meta/*.pkl``).

Facts from ``formats.md`` §1 and §7; output is canonical right hands ``(n, 21, 3)`` in
metres. Pickles are loaded with a restricted unpickler (numpy arrays and plain containers
only, see :func:`bmc_calib.formats._io.load_pickle`), so a pickle cannot run code.

- RHD: one dict ``{sample_id: {"xyz": (42, 3), "uv_vis": …, "K": …}}`` per split, metres,
  camera frame (OpenCV). BOTH hands of every sample are read: rows 0–20 the left hand
  (mirrored), rows 21–41 the right, each in layout ``rhd`` (wrist, then tip → base per
  finger). Output order: sample by sample, left then right. ``--side`` keeps one side.
- HO-3D v2/v3: one dict per frame in ``<split>/<SEQ>/meta/<id>.pkl``; ``handJoints3D``
  ``(21, 3)`` metres in the OpenGL camera frame (y and z are flipped here to get OpenCV
  axes), layout ``ho3d`` (MANO order, tips appended), right hands. Frames whose
  ``handJoints3D`` is missing or None are dropped as ``no_annotation``; evaluation frames
  that hold only the root ``(3,)`` as ``root_only``. H2O-3D files (``rightHandJoints3D`` /
  ``leftHandJoints3D``) give both hands, left mirrored. ``Chunk.group`` = sequence.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from bmc_calib import skeleton
from bmc_calib.errors import BadInputError
from bmc_calib.formats import _io
from bmc_calib.formats.base import (
    SCORE_CONTENT,
    SCORE_FOLDER,
    SCORE_NAME,
    Chunk,
    Pending,
    Reader,
    ReadOptions,
    Source,
    SourceStats,
    make_chunk,
)

_PICKLE_SUFFIXES = (".pickle", ".pkl")


# --------------------------------------------------------------------------- RHD
def _looks_like_rhd(obj: Any) -> bool:
    if not isinstance(obj, dict) or not obj:
        return False
    first = next(iter(obj.values()))
    return isinstance(first, dict) and "xyz" in first


class RhdReader(Reader):
    name = "rhd"
    description = "RHD anno_training.pickle / anno_evaluation.pickle (both hands per sample)"
    suffixes = _PICKLE_SUFFIXES
    layout = "rhd"
    unit = "m"
    handedness = "both: rows 0-20 left (mirrored), 21-41 right; --side keeps one"
    expected_files = "RHD_published_v2/{training,evaluation}/anno_*.pickle, or the dataset root"
    example = "bmc-calib fit RHD_published_v2/training/anno_training.pickle --side right"
    hand_option = False

    def detect(self, path: str) -> int:
        if not os.path.isfile(path) or not path.lower().endswith(_PICKLE_SUFFIXES):
            return 0
        if re.fullmatch(r"anno_.*\.pickle", os.path.basename(path).lower()):
            return SCORE_NAME
        return SCORE_CONTENT if _looks_like_rhd(_io.sniff_pickle(path)) else 0

    def open(self, path: str, options: ReadOptions) -> Source:
        if os.path.isdir(path):
            raise BadInputError(f"{path}: format rhd reads anno_*.pickle files, not folders")
        return self.file_source(path, options, self._chunks)

    @staticmethod
    def _chunks(
        path: str, layout: skeleton.Layout, options: ReadOptions, stats: SourceStats
    ) -> Iterator[Chunk]:
        anno = _io.load_pickle(path)
        if not isinstance(anno, dict):
            raise BadInputError(
                f"{path}: expected a dict of samples {{id: {{'xyz': (42, 3), …}}}}, "
                f"found {type(anno).__name__}"
            )
        if not anno:
            raise BadInputError(f"{path}: contains no samples")
        try:
            ids = sorted(anno)
        except TypeError:
            ids = list(anno)
        step = max(1, options.chunk_frames // 2)
        for start in range(0, len(ids), step):
            part = ids[start : start + step]
            xyz = []
            for sid in part:
                sample = anno[sid]
                if not isinstance(sample, dict) or "xyz" not in sample:
                    raise BadInputError(f"{path}: sample {sid!r} has no 'xyz' entry")
                xyz.append(sample["xyz"])
            arr = _io.float_array(xyz, path, "xyz")
            if arr.shape[1:] != (42, 3):
                raise BadInputError(
                    f"{path}: xyz must be (42, 3) (left hand rows 0-20, right 21-41), "
                    f"found {arr.shape[1:]}"
                )
            hands = arr.reshape(-1, skeleton.NUM_JOINTS, 3)  # left, right, left, right, …
            is_left = np.tile([True, False], len(part))
            if chunk := make_chunk(hands, layout, stats, options, is_left=is_left):
                yield chunk


# --------------------------------------------------------------------------- HO-3D
#: OpenGL → OpenCV camera axes: flip y and z.
OPENGL_TO_OPENCV = np.array([1.0, -1.0, -1.0])
_META = re.compile(r"(^|/)meta/[^/]+\.pkl$")


def _looks_like_ho3d(obj: Any) -> bool:
    return isinstance(obj, dict) and any(
        k in obj for k in ("handJoints3D", "rightHandJoints3D", "leftHandJoints3D", "handPose")
    )


class Ho3dReader(Reader):
    name = "ho3d"
    description = "HO-3D v2/v3 (and H2O-3D) meta/*.pkl per frame; OpenGL axes converted"
    suffixes = (".pkl",)
    layout = "ho3d"
    unit = "m"
    handedness = "right only (H2O-3D: both, left mirrored)"
    expected_files = "HO3D_v3/{train,evaluation}/<SEQ>/meta/*.pkl: the root, a split, a SEQ"
    groups = "sequence (<SEQ>)"
    example = "bmc-calib fit HO3D_v3/train --group-by label -o limits.h5"
    folders = True

    def detect(self, path: str) -> int:
        if os.path.isdir(path):
            if os.path.basename(os.path.normpath(path)) == "meta":
                names = _io.scan_tree(path)
                return SCORE_FOLDER if any(n.endswith(".pkl") for n in names) else 0
            return SCORE_FOLDER if any(_META.search(n) for n in _io.scan_tree(path)) else 0
        if not path.lower().endswith(".pkl") or not os.path.isfile(path):
            return 0
        if os.path.basename(os.path.dirname(os.path.abspath(path))) == "meta":
            return SCORE_NAME
        return SCORE_CONTENT if _looks_like_ho3d(_io.sniff_pickle(path)) else 0

    def open(self, path: str, options: ReadOptions) -> Source:
        if os.path.isdir(path):
            files = [f for f in _io.walk_files(path) if f.endswith(".pkl")]
            if os.path.basename(os.path.normpath(path)) != "meta":
                files = [f for f in files if os.path.basename(os.path.dirname(f)) == "meta"]
            if not files:
                raise BadInputError(f"{path}: no HO-3D meta/*.pkl files below this folder")
        else:
            files = [path]
        layout = skeleton.get_layout(self.layout)
        return self.source(
            path,
            options,
            layout,
            lambda stats: self._chunks(files, layout, options, stats),
            files=files if os.path.isdir(path) else None,
        )

    @staticmethod
    def _chunks(
        files: list[str], layout: skeleton.Layout, options: ReadOptions, stats: SourceStats
    ) -> Iterator[Chunk]:
        pending = Pending(options.chunk_frames)
        for f in files:
            meta = _io.load_pickle(f)
            if not isinstance(meta, dict):
                raise BadInputError(
                    f"{f}: expected a dict of annotations, found {type(meta).__name__}"
                )
            sequence = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(f))))
            if "rightHandJoints3D" in meta or "leftHandJoints3D" in meta:  # H2O-3D
                hands = [
                    (meta.get("rightHandJoints3D"), False),
                    (meta.get("leftHandJoints3D"), True),
                ]
            else:
                hands = [(meta.get("handJoints3D"), False)]
            for value, left in hands:
                joints, annotated, full = _hand(f, value)
                pending.add(
                    joints=joints[None],
                    is_left=[left],
                    group=[sequence],
                    annotated=[annotated],
                    full=[full],
                )
            if pending.full:
                yield from _flush(pending, layout, options, stats)
        if pending.count:
            yield from _flush(pending, layout, options, stats)


def _hand(path: str, value: Any) -> tuple[np.ndarray, bool, bool]:
    """``(joints (21, 3) OpenCV, annotated, has all 21 joints)`` of one HO-3D hand entry."""
    empty = np.full((skeleton.NUM_JOINTS, 3), np.nan)
    if value is None:
        return empty, False, False
    arr = _io.float_array(value, path, "handJoints3D")
    if arr.size == 3:
        return empty, True, False
    if arr.shape != (skeleton.NUM_JOINTS, 3):
        raise BadInputError(
            f"{path}: handJoints3D must be (21, 3) or the root (3,), found {arr.shape}"
        )
    return arr * OPENGL_TO_OPENCV, True, True


def _flush(
    pending: Pending, layout: skeleton.Layout, options: ReadOptions, stats: SourceStats
) -> Iterator[Chunk]:
    p = pending.take()
    chunk = make_chunk(
        p["joints"],
        layout,
        stats,
        options,
        is_left=p["is_left"],
        group=p["group"],
        checks=(("no_annotation", p["annotated"]), ("root_only", p["full"])),
    )
    if chunk is not None:
        yield chunk
