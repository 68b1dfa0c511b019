"""DexYCB: ``<subject>/<sequence>/<serial>/labels_%06d.npz`` with ``meta.yml`` per sequence.

Facts from ``formats.md`` §10. Each ``labels_*.npz`` holds ``joint_3d`` ``(1, 21, 3)``,
metres, colour-camera frame (OpenCV), canonical order (manopth output: no remap). The hand's
side is per sequence: ``mano_sides`` in ``meta.yml`` (in the labels folder or the folder
above it, where DexYCB keeps it); left hands are mirrored. Frames without a hand hold −1 in
every coordinate and are dropped as ``sentinel``. Output: canonical right hands
``(n, 21, 3)`` in metres; ``Chunk.group`` = the subject folder (``20200709-subject-01``).

The 8 cameras of a sequence each store the same hand pose in their own frame: a folder read
reads all of them (rigidly moved copies, equal weight per pose); point at one ``<serial>``
folder or a glob to read fewer. ``meta.yml`` is read by a minimal parser (no YAML library);
when it is missing, give ``--hand``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import numpy as np

from bmc_calib import skeleton
from bmc_calib.errors import BadInputError
from bmc_calib.formats import _io
from bmc_calib.formats.base import (
    SCORE_FOLDER,
    SCORE_NAME,
    Chunk,
    Pending,
    Reader,
    ReadOptions,
    Source,
    SourceStats,
    check_nonempty,
    make_chunk,
)

_LABELS = re.compile(r"^labels_\d+\.npz$")


def _is_labels(name: str) -> bool:
    return bool(_LABELS.match(name.rsplit("/", 1)[-1]))


def find_meta(folder: str) -> str | None:
    """``meta.yml`` beside the labels or one folder up (DexYCB's place), else None."""
    for candidate in (folder, os.path.dirname(folder)):
        path = os.path.join(candidate, "meta.yml")
        if os.path.isfile(path):
            return path
    return None


def mano_side(meta: str) -> str:
    """``mano_sides[0]`` of a DexYCB ``meta.yml``: "left" or "right"."""
    sides = _io.yaml_value(meta, "mano_sides")
    side = sides[0] if isinstance(sides, list) and sides else sides
    if not isinstance(side, str) or side.lower() not in ("left", "right"):
        raise BadInputError(f"{meta}: mano_sides must list 'left' or 'right', found {sides!r}")
    return side.lower()


class DexYcbReader(Reader):
    name = "dexycb"
    description = "DexYCB labels_*.npz (joint_3d) with meta.yml (mano_sides)"
    suffixes = (".npz",)
    layout = "canonical"
    unit = "m"
    handedness = "per sequence from meta.yml mano_sides (left mirrored); --hand overrides"
    expected_files = "<subject>/<sequence>/<serial>/labels_*.npz + <sequence>/meta.yml; any level"
    groups = "subject folder (<date>-subject-<k>)"
    example = "bmc-calib fit DexYCB --group-by label -o limits.h5"
    folders = True

    def detect(self, path: str) -> int:
        if os.path.isdir(path):
            return SCORE_FOLDER if any(_is_labels(n) for n in _io.scan_tree(path)) else 0
        return SCORE_NAME if _is_labels(os.path.basename(path)) and os.path.isfile(path) else 0

    def open(self, path: str, options: ReadOptions) -> Source:
        if os.path.isdir(path):
            files = [f for f in _io.walk_files(path) if _is_labels(os.path.basename(f))]
            if not files:
                raise BadInputError(f"{path}: no DexYCB labels_*.npz files below this folder")
        else:
            check_nonempty(path)
            if not path.lower().endswith(".npz"):  # (--format dexycb on another kind of file)
                raise BadInputError(f"{path}: not a DexYCB labels_*.npz file")
            files = [path]
        layout = skeleton.get_layout(self.layout)
        sides: dict[str, tuple[str | None, str]] = {}  # folder → (meta.yml, subject)
        for folder in dict.fromkeys(os.path.dirname(os.path.abspath(f)) for f in files):
            meta = find_meta(folder)
            if meta is None and options.hand is None:
                raise BadInputError(
                    f"{folder}: no meta.yml beside the labels or one folder up, so the hand "
                    "side is unknown; give --hand left or --hand right"
                )
            seq_dir = os.path.dirname(meta) if meta else folder
            sides[folder] = (meta, os.path.basename(os.path.dirname(seq_dir)))
        meta_files = sorted({m for m, _ in sides.values() if m})
        return self.source(
            path,
            options,
            layout,
            lambda stats: self._chunks(files, sides, layout, options, stats),
            frames=len(files),
            files=[*files, *meta_files] if os.path.isdir(path) else None,
        )

    @staticmethod
    def _chunks(
        files: list[str],
        sides: dict[str, tuple[str | None, str]],
        layout: skeleton.Layout,
        options: ReadOptions,
        stats: SourceStats,
    ) -> Iterator[Chunk]:
        pending = Pending(options.chunk_frames)
        side_of: dict[str, bool] = {}
        for f in files:
            folder = os.path.dirname(os.path.abspath(f))
            meta, subject = sides[folder]
            if options.hand is None and meta is not None and meta not in side_of:
                side_of[meta] = mano_side(meta) == "left"
            left = side_of.get(meta, False) if meta is not None else False
            pending.add(joints=_joint_3d(f), is_left=[left], group=[subject])
            if pending.full:
                yield from _flush(pending, layout, options, stats)
        if pending.count:
            yield from _flush(pending, layout, options, stats)


def _joint_3d(path: str) -> np.ndarray:
    _io.require_regular(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise BadInputError(f"{path}: not an .npz archive (a single array)")
        with archive:
            if "joint_3d" not in archive.files:
                raise BadInputError(
                    f"{path}: no 'joint_3d' array (arrays: {', '.join(archive.files) or 'none'})"
                )
            arr = _io.npz_member(path, archive, "joint_3d")
    except BadInputError:
        raise
    except _io.ARCHIVE_ERRORS as exc:
        raise BadInputError(f"{path}: not a readable .npz archive ({_io.short(exc)})") from None
    arr = _io.float_array(arr, path, "joint_3d")
    if arr.shape not in ((1, skeleton.NUM_JOINTS, 3), (skeleton.NUM_JOINTS, 3)):
        raise BadInputError(f"{path}: joint_3d must be (1, 21, 3), found {arr.shape}")
    return arr.reshape(1, skeleton.NUM_JOINTS, 3)


def _flush(
    pending: Pending, layout: skeleton.Layout, options: ReadOptions, stats: SourceStats
) -> Iterator[Chunk]:
    p = pending.take()
    chunk = make_chunk(p["joints"], layout, stats, options, is_left=p["is_left"], group=p["group"])
    if chunk is not None:
        yield chunk
