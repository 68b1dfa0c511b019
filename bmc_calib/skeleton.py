"""The canonical 21-joint right-hand skeleton, its bones and angle ids, and keypoint layouts.

Shapes: a pose is ``(21, 3)``; a set of poses ``(..., 21, 3)``. Coordinates are in whatever
unit the source uses; this module never rescales.

Canonical order (FreiHAND / MediaPipe / OpenPose): wrist, then thumb, index, middle, ring,
little, four joints each from base to tip (DESIGN §3).

- Bone ``k`` (0..19) is ``joint[k + 1] - joint[PARENTS[k + 1]]`` and is named after its child.
- Root (palm) bones: ``ROOT_BONES = (0, 4, 8, 12, 16)``, thumb … little.
- Finger bones of level ``l``: ``LEVEL_BONES[l] = (1 + l, 5 + l, 9 + l, 13 + l, 17 + l)``.
- Joint-angle id ``a = 5 * level + finger`` (finger 0 = thumb … 4 = little), 15 in all; the
  angle sits at the bone's parent joint and is named after it (``index_pip`` …).

Layouts convert by a gather, ``canonical = source[..., layout.perm, :]``, where ``perm`` is
derived from joint *names* (never typed by hand).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bmc_calib.errors import UsageError

FINGERS: tuple[str, ...] = ("thumb", "index", "middle", "ring", "little")

JOINT_NAMES: tuple[str, ...] = (
    "wrist",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "little_mcp", "little_pip", "little_dip", "little_tip",
)  # fmt: skip
NUM_JOINTS = 21
NUM_BONES = 20
NUM_ANGLES = 15

#: Parent joint of each joint; the wrist has none (-1).
PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19)

#: Child and parent joint of each bone, shape (20,).
BONE_CHILD = np.arange(1, NUM_JOINTS)
BONE_PARENT = np.asarray(PARENTS[1:])
#: A bone is named after its child joint.
BONE_NAMES: tuple[str, ...] = JOINT_NAMES[1:]

ROOT_BONES: tuple[int, ...] = (0, 4, 8, 12, 16)
LEVEL_BONES: tuple[tuple[int, ...], ...] = tuple(
    tuple(4 * f + 1 + level for f in range(5)) for level in range(3)
)
#: Bone measured by each joint-angle id ``5 * level + finger``, shape (15,).
ANGLE_BONES = np.asarray([b for level in LEVEL_BONES for b in level])
#: The joint at which each angle sits (the parent joint of its bone).
ANGLE_NAMES: tuple[str, ...] = tuple(JOINT_NAMES[BONE_PARENT[b]] for b in ANGLE_BONES)

#: Palm items i = 0..3 sit between root bones i and i+1.
PALM_NAMES: tuple[str, ...] = tuple(f"{FINGERS[i]}-{FINGERS[i + 1]}" for i in range(4))

#: Reference bone of the default normalisation: wrist (0) to middle MCP (9).
REFERENCE_JOINTS: tuple[int, int] = (0, 9)


@dataclass(frozen=True)
class Layout:
    """A named keypoint order: ``joints[i]`` is the canonical name of source slot ``i``.

    ``root_is_palm_center`` marks layouts whose slot named ``wrist`` actually holds a palm
    centre (STB); readers convert it before the pose is used.
    """

    name: str
    joints: tuple[str, ...]
    description: str = ""
    root_is_palm_center: bool = False
    perm: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.joints) != NUM_JOINTS or sorted(self.joints) != sorted(JOINT_NAMES):
            raise ValueError(f"layout {self.name!r} must name each canonical joint exactly once")
        perm = np.asarray([self.joints.index(n) for n in JOINT_NAMES], dtype=np.intp)
        perm.setflags(write=False)
        object.__setattr__(self, "perm", perm)

    def to_canonical(self, joints: np.ndarray) -> np.ndarray:
        """Gather ``(..., 21, 3)`` joints in this layout into canonical order."""
        return np.asarray(joints)[..., self.perm, :]

    def from_canonical(self, joints: np.ndarray) -> np.ndarray:
        """Scatter ``(..., 21, 3)`` canonical joints back into this layout's order."""
        return np.asarray(joints)[..., np.argsort(self.perm), :]


def _finger(f: str, parts: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{f}_{p}" for p in parts)


_BASE_TO_TIP = {f: _finger(f, ("mcp", "pip", "dip", "tip")) for f in FINGERS[1:]}
_BASE_TO_TIP["thumb"] = _finger("thumb", ("cmc", "mcp", "ip", "tip"))


def _tip_to_base(f: str) -> tuple[str, ...]:
    return tuple(reversed(_BASE_TO_TIP[f]))


_LAYOUTS: dict[str, Layout] = {}
_ALIASES: dict[str, str] = {}


def register_layout(layout: Layout, *aliases: str) -> Layout:
    """Add a layout (and alternative names for it) to the registry."""
    for key in (layout.name, *aliases):
        if key in _LAYOUTS or key in _ALIASES:
            raise ValueError(f"layout name {key!r} is already registered")
    _LAYOUTS[layout.name] = layout
    for alias in aliases:
        _ALIASES[alias] = layout.name
    return layout


def get_layout(name: str) -> Layout:
    """Look a layout up by name or alias; unknown names raise a :class:`UsageError`."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return _LAYOUTS[key]
    except KeyError:
        known = ", ".join(layout_names())
        raise UsageError(f"unknown layout {name!r}; known layouts: {known}") from None


def layout_names() -> list[str]:
    """Names of the registered layouts (aliases not included)."""
    return sorted(_LAYOUTS)


CANONICAL = register_layout(
    Layout("canonical", JOINT_NAMES, "wrist, then thumb..little, base to tip"),
    "freihand",
    "mediapipe",
    "openpose",
    "dexycb",
    "ganerated",
    "snap",
)
RHD = register_layout(
    Layout(
        "rhd",
        ("wrist", *(j for f in FINGERS for j in _tip_to_base(f))),
        "RHD, one hand: wrist, then thumb..little, tip to base",
    )
)
STB = register_layout(
    Layout(
        "stb",
        ("wrist", *(j for f in reversed(FINGERS) for j in _BASE_TO_TIP[f])),
        "STB: palm centre, then little..thumb, base to tip",
        root_is_palm_center=True,
    )
)
FPHA = register_layout(
    Layout(
        "fpha",
        (
            "wrist",
            *(_BASE_TO_TIP[f][0] for f in FINGERS),
            *(j for f in FINGERS for j in _BASE_TO_TIP[f][1:]),
        ),
        "F-PHAB: wrist, five MCPs, then PIP, DIP, TIP per finger",
    ),
    "fphab",
)
_MANO_FINGERS = ("index", "middle", "little", "ring", "thumb")
HO3D = register_layout(
    Layout(
        "ho3d",
        (
            "wrist",
            *(j for f in _MANO_FINGERS for j in _BASE_TO_TIP[f][:3]),
            *(_BASE_TO_TIP[f][3] for f in FINGERS),
        ),
        "HO-3D: MANO order (index, middle, little, ring, thumb) with tips appended",
    ),
    "mano",
)
INTERHAND = register_layout(
    Layout(
        "interhand",
        (*(j for f in FINGERS for j in _tip_to_base(f)), "wrist"),
        "InterHand2.6M, one hand: thumb..little tip to base, wrist last",
    ),
    "interhand2.6m",
)


def mirror(joints: np.ndarray) -> np.ndarray:
    """Mirror ``(..., 21, 3)`` joints through the x = 0 plane (left hand ↔ right hand).

    The joint order is unchanged; a new array is returned.
    """
    out = np.array(joints, copy=True)
    out[..., 0] = -out[..., 0]
    return out
