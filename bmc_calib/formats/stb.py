"""STB (Stereo Hand Pose Tracking Benchmark): ``labels/<seq>_BB.mat`` and ``<seq>_SK.mat``.

Facts from ``formats.md`` §3. Each file holds ``handPara`` ``3 × 21 × N`` (xyz, joint,
frame), millimetres, layout ``stb`` (palm centre, then little … thumb, base → tip), left
hands only. Output: canonical right hands ``(n, 21, 3)`` in millimetres:

- slot 0 holds a palm centre; it is turned into a wrist by the hand3d / Minimal-Hand rule
  ``wrist = ring_mcp + 2 (palm − ring_mcp)`` (:func:`~bmc_calib.formats.palm_center_to_wrist`);
- ``_BB`` labels are in the left Bumblebee camera frame and are used as they are;
- ``_SK`` labels are taken, as the public loaders do (Minimal-Hand ``sk_xyz_depth2color``,
  chainer-hand-pose, the official ``positionCalc.m``), to be in the RealSense depth-camera
  frame and are moved to the colour camera with ``x_colour = Rᵀ (x_depth − t)``, R the
  Rodrigues rotation of :data:`SK_ROTVEC` and t = :data:`SK_TRANSLATION_MM` (STB README).
  The README does not say which frame SK labels are in (this is the loader convention); the
  transform is rigid, so lengths and angles do not depend on it;
- every hand is mirrored (x → −x) to a right hand.

A folder (the dataset root, or ``labels/``) reads every ``*_BB.mat`` and ``*_SK.mat`` in it:
the BB and SK files of a sequence annotate the same frames from two camera rigs, so each
pose is read twice (equal weight for every pose); pass ``labels/*_BB.mat`` to read each pose
once. ``Chunk.group`` = the sequence (``B1Counting`` …). MATLAB v7.3 (HDF5) files work too.
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
    SCORE_CONTENT,
    SCORE_FOLDER,
    SCORE_NAME,
    Chunk,
    Reader,
    ReadOptions,
    Source,
    SourceStats,
    check_nonempty,
    make_chunk,
    sentinel_frames,
)

#: SK depth → colour extrinsics of the STB README: Rodrigues vector and translation (mm).
SK_ROTVEC = np.array([0.00531, -0.01196, 0.00301])
SK_TRANSLATION_MM = np.array([-24.0381, -0.4563, -1.2326])
_NAME = re.compile(r"(.+)_(BB|SK)\.mat$", re.IGNORECASE)
_IN_FOLDER = re.compile(r"^([^/]+/)?[^/]+_(BB|SK)\.mat$", re.IGNORECASE)


def rodrigues(rotvec: np.ndarray) -> np.ndarray:
    """The rotation matrix (3, 3) of a Rodrigues (axis × angle) vector."""
    theta = float(np.linalg.norm(rotvec))
    if theta == 0.0:
        return np.eye(3)
    k = np.asarray(rotvec, dtype=np.float64) / theta
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(theta) * cross + (1.0 - np.cos(theta)) * (cross @ cross)


def sk_depth_to_color(joints: np.ndarray) -> np.ndarray:
    """``(..., 3)`` SK depth-camera points → colour-camera points, ``Rᵀ (x − t)``."""
    return (np.asarray(joints) - SK_TRANSLATION_MM) @ rodrigues(SK_ROTVEC)


def load_hand_para(path: str) -> np.ndarray:
    """``handPara`` of an STB label file as ``(N, 21, 3)`` (source layout, millimetres)."""
    import scipy.io

    _io.require_regular(path)
    check_mat_v5_sizes(path)
    try:
        data = scipy.io.loadmat(path, variable_names=["handPara"])
        if "handPara" not in data:
            found = [n for n, _, _ in scipy.io.whosmat(path)]
            raise BadInputError(
                f"{path}: no variable 'handPara' (found: {', '.join(found) or 'none'})"
            )
        arr = _io.float_array(data["handPara"], path, "handPara")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[:2] != (3, skeleton.NUM_JOINTS):
            raise BadInputError(f"{path}: handPara must be 3 × 21 × N, found {arr.shape}")
        return arr.transpose(2, 1, 0)
    except BadInputError:
        raise
    except MemoryError:
        raise BadInputError(f"{path}: handPara claims more data than can be held") from None
    except NotImplementedError:  # MATLAB v7.3 = HDF5: arrays come transposed
        return _load_v73(path)
    except Exception as exc:  # scipy raises many types on corrupt files
        import h5py

        if h5py.is_hdf5(path):
            return _load_v73(path)
        raise BadInputError(f"{path}: not a readable MATLAB .mat file ({_io.short(exc)})") from None


#: MATLAB v5 data types: matrix, zlib-compressed element
_MI_MATRIX, _MI_COMPRESSED = 14, 15
#: mxCLASS ids of numeric arrays (double … uint64); the element size does not matter, as
#: every stored element takes at least one byte
_NUMERIC_CLASSES = range(6, 16)


def check_mat_v5_sizes(path: str) -> None:
    """Refuse a MATLAB v5 file whose elements claim more data than the file can hold.

    Walks the top-level data elements (tags only; a compressed element is inflated just far
    enough to read its matrix header) before scipy allocates anything: an element may not
    extend past the end of the file, a compressed one may not claim more than
    ``MAX_DEFLATE_RATIO`` times its compressed size, and a numeric matrix may not claim more
    elements than it has bytes of storage. Files that are not v5 are left to scipy.
    """
    import zlib

    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        header = fh.read(128)
        if len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
            return
        order = "<" if header[126:128] == b"IM" else ">"
        if int(np.frombuffer(header[124:126], dtype=f"{order}u2")[0]) != 0x0100:
            return  # v7.3 (0x0200) is HDF5: its reader checks the declared shape
        position = 128
        while position + 8 <= size:
            fh.seek(position)
            kind, nbytes = np.frombuffer(fh.read(8), dtype=f"{order}u4").tolist()
            if kind >> 16:  # small element: data inside the tag
                position += 8
                continue
            if position + 8 + nbytes > size:
                raise BadInputError(
                    f"{path}: a MATLAB element at byte {position} claims {nbytes:,} bytes but "
                    f"the file holds only {size - position - 8:,} after it; the file is "
                    "truncated or corrupt"
                )
            if kind == _MI_COMPRESSED:
                prefix = zlib.decompressobj().decompress(fh.read(min(nbytes, 1 << 16)), 256)
                _check_matrix(path, prefix, order, _io.MAX_DEFLATE_RATIO * nbytes)
                position += 8 + nbytes
            else:
                if kind == _MI_MATRIX:
                    fh.seek(position)
                    _check_matrix(path, fh.read(256), order, nbytes)
                position += 8 + nbytes + (-nbytes % 8)


def _check_matrix(path: str, element: bytes, order: str, available: int) -> None:
    """Check one ``miMATRIX`` element (tag included) against the ``available`` bytes."""
    if len(element) < 8:
        return
    kind, nbytes = np.frombuffer(element[:8], dtype=f"{order}u4").tolist()
    if kind != _MI_MATRIX:
        return
    if nbytes > available:
        raise BadInputError(
            f"{path}: a MATLAB array claims {nbytes:,} bytes where the file holds at most "
            f"{available:,}; the file is corrupt"
        )
    # array flags: tag (8) + 8 bytes, class in the lowest byte of the first word
    if len(element) < 32:
        return
    flags = np.frombuffer(element[16:20], dtype=f"{order}u4")[0]
    dims_tag = np.frombuffer(element[24:32], dtype=f"{order}u4").tolist()
    if int(flags) & 0xFF not in _NUMERIC_CLASSES or dims_tag[0] != 5:  # miINT32 dims
        return
    count = dims_tag[1] // 4
    if len(element) < 32 + 4 * count:
        return
    dims = np.frombuffer(element[32 : 32 + 4 * count], dtype=f"{order}i4").tolist()
    if any(d < 0 for d in dims):
        raise BadInputError(f"{path}: a MATLAB array has negative dimensions {tuple(dims)}")
    _io.check_declared_size(path, "a MATLAB array", tuple(dims), np.dtype(np.uint8), nbytes)


def _load_v73(path: str) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            if "handPara" not in fh:
                raise BadInputError(f"{path}: no variable 'handPara'")
            if not isinstance(fh["handPara"], h5py.Dataset):
                raise BadInputError(f"{path}: 'handPara' is not an array")
            _io.check_h5_dataset(path, fh["handPara"], "handPara")
            arr = _io.float_array(fh["handPara"][()], path, "handPara")
    except _io.ARCHIVE_ERRORS as exc:
        raise BadInputError(f"{path}: not a readable MATLAB .mat file ({_io.short(exc)})") from None
    if arr.ndim != 3 or arr.shape[1:] != (skeleton.NUM_JOINTS, 3):
        raise BadInputError(f"{path}: handPara must be 3 × 21 × N, found {arr.shape[::-1]}")
    return arr


class StbReader(Reader):
    name = "stb"
    description = "STB labels <seq>_BB.mat / <seq>_SK.mat (handPara 3 × 21 × N, palm centre)"
    suffixes = (".mat",)
    layout = "stb"
    unit = "mm"
    handedness = "left only (all mirrored)"
    expected_files = "labels/<seq>_BB.mat and/or <seq>_SK.mat, or the labels / dataset folder"
    groups = "sequence (B1Counting …)"
    example = "bmc-calib fit 'STB/labels/*_BB.mat' --group-by label -o limits.h5"
    folders = True

    def detect(self, path: str) -> int:
        if os.path.isdir(path):
            found = any(_IN_FOLDER.match(n) for n in _io.scan_tree(path))
            return SCORE_FOLDER if found else 0
        if not path.lower().endswith(".mat") or not os.path.isfile(path):
            return 0
        if _NAME.search(os.path.basename(path)):
            return SCORE_NAME
        try:
            import scipy.io

            names = [n for n, _, _ in scipy.io.whosmat(path)]
        except Exception:  # not a v5 .mat file: not ours to judge
            return 0
        return SCORE_CONTENT if "handPara" in names else 0

    def open(self, path: str, options: ReadOptions) -> Source:
        if os.path.isdir(path):
            files = [
                os.path.join(path, n)
                for n in _io.scan_tree(path)
                if _IN_FOLDER.match(n) and os.path.isfile(os.path.join(path, n))
            ]
            files.sort(key=_io.natural_key)
            if not files:
                raise BadInputError(f"{path}: no STB *_BB.mat / *_SK.mat label files here")
        else:
            check_nonempty(path)
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
        for f in files:
            joints = load_hand_para(f)
            match = _NAME.search(os.path.basename(f))
            if match and match.group(2).upper() == "SK":
                # frames marked missing keep their markers, so that make_chunk drops them as
                # sentinel (the transform would move (0, 0, 0) somewhere plausible-looking)
                marked = sentinel_frames(joints)
                joints = np.where(marked[:, None, None], joints, sk_depth_to_color(joints))
            sequence = match.group(1) if match else os.path.splitext(os.path.basename(f))[0]
            for start in range(0, joints.shape[0], options.chunk_frames):
                block = joints[start : start + options.chunk_frames]
                chunk = make_chunk(block, layout, stats, options, is_left=True, group=sequence)
                if chunk is not None:
                    yield chunk
