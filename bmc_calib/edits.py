"""Impossible edits of real poses: what a limits bundle must catch (fit's detection figures).

Five kinds, each applied to one finger (index … little, drawn per pose) of a canonical right
hand, as operations on its features (:class:`bmc_calib.kinematics.Features`):

- ``mcp_back_90``        the MCP bent 90° backwards: level-0 flexion set to −90°;
- ``pip_sideways_60``    the PIP bent 60° sideways: level-1 abduction set to ±60° (side drawn);
- ``dip_back_80``        the DIP bent 80° backwards: level-2 flexion set to −80°;
- ``middle_phalanx_1_6`` the middle phalanx (PIP→DIP bone) 1.6 × as long;
- ``finger_mirrored``    the finger (PIP, DIP, tip) reflected through the plane through its
  MCP whose normal is the finger's level-0 frame ``x`` (the palm normal there): flexion
  negated at all three levels, abduction kept. Only fingers whose PIP is flexed by at least
  :data:`MIRROR_MIN_PIP_FLEXION` qualify (the mirror image of a straight finger is a
  plausible straight finger); a pose with no such finger is not edited (``applies`` False).

Why features, not joints: in the DESIGN §4 frame chain a bone's angles are measured in a
frame carried from its parent bone, so forward kinematics with one angle (or one length)
changed gives exactly these features; a reflection through a plane containing ``y`` and ``z``
negates every flexion below it and keeps every abduction. ``tests/test_edits.py`` checks each
kind against the edited joints rebuilt by :func:`bmc_calib.synthetic.forward_kinematics`.

Angles in radians; lengths in the features' unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from bmc_calib import skeleton
from bmc_calib.kinematics import Features

EDIT_KINDS: tuple[str, ...] = (
    "mcp_back_90",
    "pip_sideways_60",
    "dip_back_80",
    "middle_phalanx_1_6",
    "finger_mirrored",
)
EDIT_LABELS: dict[str, str] = {
    "mcp_back_90": "MCP bent 90° back",
    "pip_sideways_60": "PIP bent 60° sideways",
    "dip_back_80": "DIP bent 80° back",
    "middle_phalanx_1_6": "middle phalanx × 1.6",
    "finger_mirrored": "finger mirrored through the palm",
}
#: A finger qualifies for ``finger_mirrored`` when its PIP flexion is at least this (rad).
MIRROR_MIN_PIP_FLEXION = math.radians(45.0)
_FINGERS = np.arange(1, 5)  # index … little


@dataclass(frozen=True)
class EditedPoses:
    """Edited copies of poses: ``features`` of the edited poses, ``finger`` ``(n,)`` edited
    (1 = index … 4 = little), ``applies`` ``(n,)`` False where the edit had no target."""

    features: Features
    finger: np.ndarray
    applies: np.ndarray


def apply_edit(features: Features, kind: str, seed: int = 0) -> EditedPoses:
    """Apply edit ``kind`` (one of :data:`EDIT_KINDS`) to every pose of ``features``.

    Deterministic in ``seed``. Poses without a target (degenerate ones; for
    ``finger_mirrored`` those with no flexed finger) are copied unchanged, ``applies`` False.
    """
    if kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit {kind!r}; known: {', '.join(EDIT_KINDS)}")
    rng = np.random.default_rng(seed)
    n = len(features)
    rows = np.arange(n)
    fa = np.array(features.flexion_abduction, dtype=np.float64, copy=True)
    lengths = np.array(features.bone_length, dtype=np.float64, copy=True)
    finger = rng.choice(_FINGERS, size=n)
    applies = ~np.asarray(features.degenerate, dtype=bool)
    if kind == "mcp_back_90":
        fa[rows, finger, 0] = -math.pi / 2
    elif kind == "pip_sideways_60":
        side = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        fa[rows, 5 + finger, 1] = side * math.radians(60.0)
    elif kind == "dip_back_80":
        fa[rows, 10 + finger, 0] = -math.radians(80.0)
    elif kind == "middle_phalanx_1_6":
        bones = np.asarray(skeleton.ANGLE_BONES)[5 + finger]
        lengths[rows, bones] *= 1.6
    else:  # finger_mirrored: a random qualifying finger
        flexed = fa[:, 6:10, 0] >= MIRROR_MIN_PIP_FLEXION  # (n, 4) index … little
        score = np.where(flexed, rng.random((n, 4)), -1.0)
        finger = 1 + np.argmax(score, axis=1)
        applies &= flexed.any(axis=1)
        for level in range(3):
            ids = 5 * level + finger
            fa[rows, ids, 0] = np.where(applies, -fa[rows, ids, 0], fa[rows, ids, 0])
    fa[..., 0] = _wrap(fa[..., 0])
    fa = np.where(applies[:, None, None], fa, features.flexion_abduction)  # untouched copies
    lengths = np.where(applies[:, None], lengths, features.bone_length)
    edited = replace(
        features,
        flexion_abduction=fa.astype(features.flexion_abduction.dtype, copy=False),
        bone_length=lengths.astype(features.bone_length.dtype, copy=False),
    )
    return EditedPoses(features=edited, finger=finger, applies=applies)


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles into (−π, π]."""
    return math.pi - np.mod(math.pi - angle, 2.0 * math.pi)
