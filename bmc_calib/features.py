"""Per-pose features for analysis: ``bmc-calib features`` (npz or flat CSV).

Per pose, in input order: ``bone_length (N, 20)`` (normalised unit), ``palm_curvature (N, 4)``,
``palm_angle (N, 4)`` radians, ``flexion_abduction (N, 15, 2)`` radians (flexion first, raw in
(−π, π], before any unwrapping), ``degenerate (N,)`` bool, ``degenerate_reason (N,)`` bit mask,
``source (N,)`` input path and ``frame (N,)`` index within it, plus the joint, bone, palm and
angle names. Degenerate poses carry zeros.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bmc_calib import skeleton
from bmc_calib.errors import UsageError
from bmc_calib.formats import Source
from bmc_calib.kinematics import DEGENERATE_REASONS, Features, compute_features, concatenate
from bmc_calib.outputs import atomic_path


@dataclass
class PoseFeatures:
    """Features of every pose read, with ``source (N,)`` and ``frame (N,)``."""

    features: Features
    source: np.ndarray
    frame: np.ndarray
    normalization: str = "reference-bone"


def pose_features(sources: Sequence[Source], normalization: str = "reference-bone") -> PoseFeatures:
    """Features (float64) of every pose of every source, in input order."""
    parts, source, frame = [], [], []
    for src in sources:
        start = 0
        for chunk in src.chunks():
            n = chunk.joints.shape[0]
            parts.append(compute_features(chunk.joints, normalization))
            source.append(np.full(n, src.path, dtype=object))
            frame.append(np.arange(start, start + n, dtype=np.int64))
            start += n
    return PoseFeatures(
        concatenate(parts),
        np.concatenate(source) if source else np.empty(0, object),
        np.concatenate(frame) if frame else np.empty(0, np.int64),
        normalization,
    )


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


def write_npz(data: PoseFeatures, path: str | os.PathLike, *, force: bool = False) -> None:
    """Write the features to a ``.npz`` archive atomically."""
    f = data.features
    with atomic_path(path, force=force) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                bone_length=f.bone_length,
                palm_curvature=f.palm_curvature,
                palm_angle=f.palm_angle,
                flexion_abduction=f.flexion_abduction,
                degenerate=f.degenerate,
                degenerate_reason=f.degenerate_reason,
                degenerate_reason_names=np.asarray(DEGENERATE_REASONS),
                source=data.source.astype(str),
                frame=data.frame,
                joint_names=np.asarray(skeleton.JOINT_NAMES),
                bone_names=np.asarray(skeleton.BONE_NAMES),
                palm_names=np.asarray(skeleton.PALM_NAMES),
                angle_names=np.asarray(skeleton.ANGLE_NAMES),
            )


def write_csv(data: PoseFeatures, path: str | os.PathLike, *, force: bool = False) -> None:
    """Write the features as a flat CSV table (one row a pose, :func:`column_names`)."""
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
    with atomic_path(path, force=force) as tmp, open(tmp, "w", newline="") as fh:
        fh.write(",".join(column_names(data.normalization)) + "\n")
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
