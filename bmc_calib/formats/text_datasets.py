"""Text-file datasets: GANerated Hands, F-PHAB, and the fingertip-only sets (refused).

Facts from ``formats.md`` §4, §5, §6, §9; output is canonical right hands ``(n, 21, 3)``.

- GANerated Hands: one ``NNNN_joint_pos_global.txt`` per frame, 63 comma-separated values
  (21 × x y z), canonical order, camera frame, in
  ``GANeratedHands_Release/data/{noObject,withObject}/<NNNN>/``. Unit UNVERIFIED: assumed
  millimetres (``--unit`` relabels it; with the default reference-bone normalisation the
  unit does not matter). Hands are left per two loaders (SINGLE-SOURCE ×2): all mirrored,
  ``--hand right`` overrides. No group label.
- F-PHAB: ``skeleton.txt`` per sequence, one line per frame ``t x1 y1 z1 … x21 y21 z21``
  (64 numbers), millimetres, layout ``fpha`` (wrist, five MCPs, then PIP/DIP/TIP per
  finger), right hands (per loader). One file, or a tree
  ``Hand_pose_annotation_v1/Subject_<k>/<action>/<seq>/skeleton.txt`` read file by file;
  ``Chunk.group`` = ``Subject_<k>`` (the subject: what held-out tolerances need).
- Dexter+Object / EgoDexter: ``;``-separated files with 5 fingertips per frame. Five points
  define no bone and no joint angle, so these are recognised only to refuse them with that
  explanation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator

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
    check_nonempty,
    incomplete_skeleton,
    make_chunk,
)


def _files_source(
    reader: Reader,
    path: str,
    files: list[str],
    options: ReadOptions,
    read_chunks: object,
) -> Source:
    return reader.source(
        path,
        options,
        skeleton.get_layout(reader.layout),
        read_chunks,  # type: ignore[arg-type]
        files=files if os.path.isdir(path) else None,
    )


def _annotation_files(path: str, keep: Callable[[str], bool], what: str) -> list[str]:
    """``[path]`` for a (non-empty) file; for a folder, every file below it that ``keep``s."""
    if not os.path.isdir(path):
        check_nonempty(path)
        return [path]
    files = [f for f in _io.walk_files(path) if keep(f)]
    if not files:
        raise BadInputError(f"{path}: no {what} below this folder")
    return files


# --------------------------------------------------------------------------- GANerated
_GAN_SUFFIX = "_joint_pos_global.txt"


class GaneratedReader(Reader):
    name = "ganerated"
    description = "GANerated Hands NNNN_joint_pos_global.txt (63 values per frame file)"
    suffixes = (".txt",)
    layout = "canonical"
    unit = "mm"
    unit_note = "UNVERIFIED, assumed; --unit overrides"
    handedness = "left per loaders (all mirrored); --hand right overrides"
    expected_files = "GANeratedHands_Release/data/**/NNNN_joint_pos_global.txt: a file or folder"
    example = "bmc-calib fit GANeratedHands_Release/data -o limits.h5"
    folders = True

    def detect(self, path: str) -> int:
        if os.path.isdir(path):
            found = any(n.endswith(_GAN_SUFFIX) for n in _io.scan_tree(path))
            return SCORE_FOLDER if found else 0
        return SCORE_NAME if path.endswith(_GAN_SUFFIX) and os.path.isfile(path) else 0

    def open(self, path: str, options: ReadOptions) -> Source:
        files = _annotation_files(path, lambda f: f.endswith(_GAN_SUFFIX), f"*{_GAN_SUFFIX} files")
        layout = skeleton.get_layout(self.layout)
        return _files_source(
            self, path, files, options, lambda stats: self._chunks(files, layout, options, stats)
        )

    @staticmethod
    def _chunks(
        files: list[str], layout: skeleton.Layout, options: ReadOptions, stats: SourceStats
    ) -> Iterator[Chunk]:
        pending = Pending(options.chunk_frames)
        for f in files:
            values = _io.parse_numbers(_io.read_text(f), f)
            if values.size != 3 * skeleton.NUM_JOINTS:
                raise BadInputError(
                    f"{f}: expected 63 comma-separated values (21 × x, y, z), found {values.size}"
                )
            pending.add(joints=values.reshape(1, skeleton.NUM_JOINTS, 3))
            if pending.full:
                yield from _flush(pending, layout, options, stats, left=True)
        if pending.count:
            yield from _flush(pending, layout, options, stats, left=True)


def _flush(
    pending: Pending,
    layout: skeleton.Layout,
    options: ReadOptions,
    stats: SourceStats,
    left: bool,
) -> Iterator[Chunk]:
    p = pending.take()
    chunk = make_chunk(p["joints"], layout, stats, options, is_left=left, group=p.get("group"))
    if chunk is not None:
        yield chunk


# --------------------------------------------------------------------------- F-PHAB
_SUBJECT = re.compile(r"^Subject_\d+$", re.IGNORECASE)


def _subject(path: str) -> str | None:
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    return next((p for p in reversed(parts) if _SUBJECT.match(p)), None)


class FphaReader(Reader):
    name = "fpha"
    description = "F-PHAB skeleton.txt (t + 21 × x y z per line), one file or a subject tree"
    suffixes = (".txt",)
    layout = "fpha"
    unit = "mm"
    handedness = "right only (per loader)"
    expected_files = (
        "Hand_pose_annotation_v1/Subject_<k>/<action>/<seq>/skeleton.txt: a file or any folder"
    )
    groups = "subject (Subject_<k>)"
    example = "bmc-calib fit F-PHAB/Hand_pose_annotation_v1 --group-by label -o limits.h5"
    folders = True

    def detect(self, path: str) -> int:
        if os.path.isdir(path):
            found = any(n.split("/")[-1] == "skeleton.txt" for n in _io.scan_tree(path))
            return SCORE_FOLDER if found else 0
        if not os.path.isfile(path):
            return 0
        if os.path.basename(path) == "skeleton.txt":
            return SCORE_NAME
        if path.lower().endswith(".txt"):
            tokens = _io.first_line(path).split()
            if len(tokens) == 64 and all(_number(t) for t in tokens):
                return SCORE_CONTENT
        return 0

    def open(self, path: str, options: ReadOptions) -> Source:
        files = _annotation_files(
            path, lambda f: os.path.basename(f) == "skeleton.txt", "F-PHAB skeleton.txt files"
        )
        layout = skeleton.get_layout(self.layout)
        return _files_source(
            self, path, files, options, lambda stats: self._chunks(files, layout, options, stats)
        )

    @staticmethod
    def _chunks(
        files: list[str], layout: skeleton.Layout, options: ReadOptions, stats: SourceStats
    ) -> Iterator[Chunk]:
        pending = Pending(options.chunk_frames)
        for f in files:
            rows = _skeleton_rows(f)
            if rows.shape[0] == 0:
                if len(files) == 1:
                    raise BadInputError(f"{f}: contains no poses")
                continue
            joints = rows[:, 1:].reshape(-1, skeleton.NUM_JOINTS, 3)
            label = _subject(f) or os.path.basename(os.path.dirname(os.path.abspath(f)))
            pending.add(joints=joints, group=np.full(joints.shape[0], label))
            if pending.full:
                yield from _flush(pending, layout, options, stats, left=False)
        if pending.count:
            yield from _flush(pending, layout, options, stats, left=False)


def _number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _skeleton_rows(path: str) -> np.ndarray:
    """The ``(T, 64)`` numbers of a ``skeleton.txt`` (``(0, 64)`` when it is empty)."""
    text = _io.read_text(path)
    if not text.strip():
        return np.empty((0, 64))
    try:
        rows = np.loadtxt(text.splitlines(), ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise BadInputError(f"{path}: not a table of numbers ({_io.short(exc)})") from None
    if rows.shape[1] != 64:
        raise BadInputError(
            f"{path}: expected 64 numbers per line (t, then 21 × x y z), found {rows.shape[1]}"
        )
    return rows


# --------------------------------------------------------------------------- fingertips
def _fingertip_line(line: str) -> bool:
    fields = [f for f in line.split(";") if f.strip()]
    if len(fields) != 5:
        return False
    parts = fields[0].replace(",", " ").split()
    return len(parts) in (2, 3) and all(_number(p) for p in parts)


class FingertipReader(Reader):
    name = "fingertips"
    description = "Dexter+Object / EgoDexter 5-fingertip annotations (refused: no bones)"
    suffixes = (".txt",)
    layout = "5 fingertips (thumb..little)"
    unit = "mm"
    handedness = "left (per loader)"
    expected_files = "data/<seq>/annotations/<seq>3D.txt, annotation.txt_3D.txt (';'-separated)"
    example = "(not usable: fit and features need all 21 joints)"
    folders = True

    def detect(self, path: str) -> int:
        if os.path.isdir(path):
            for name in _io.scan_tree(path):
                if name.lower().endswith("3d.txt") and _fingertip_line(
                    _io.first_line(os.path.join(path, name))
                ):
                    return SCORE_FOLDER
            return 0
        if not path.lower().endswith(".txt") or not os.path.isfile(path):
            return 0
        return SCORE_CONTENT if _fingertip_line(_io.first_line(path)) else 0

    def open(self, path: str, options: ReadOptions) -> Source:
        refusal = incomplete_skeleton(path, 5)
        assert refusal is not None
        raise refusal
