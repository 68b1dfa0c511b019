"""Forward kinematics and synthetic hand subjects: poses with known angles and bone lengths.

Shapes: root bones ``(..., 5, 3)`` (wrist → thumb CMC, index … little MCP); joint angles
``(..., 15, 2)`` as ``[flexion, abduction]`` indexed by angle id ``5 * level + finger``;
finger bone lengths ``(..., 15)`` indexed by the same angle id; joints ``(..., 21, 3)`` in the
canonical order of :mod:`bmc_calib.skeleton`. Units: angles in radians everywhere except
:data:`RANGES` (degrees, human-facing); lengths in whatever unit the inputs use — millimetres
for :class:`Subject` and :func:`generate`.

The geometry is the exact inverse of DESIGN §4.4–4.6 (the angle extraction of
:mod:`bmc_calib.kinematics`). A bone ``b`` of length ``L`` placed in the frame
``(x, y, z)`` with flexion ``θf`` and abduction ``θa`` is::

    b = L · (cos θa · (sin θf · x + cos θf · z) + sin θa · y)

Level-0 frames come from the root bones (``z`` along the root bone, ``x`` minus the palm
normal next to it, ``y = z × x``); the frame of the next level is the current one carried by
the smallest rotation that takes ``z`` onto the bone just placed.

Sign convention, checked on a worked example (a flat right hand, fingers along +y, back of
the hand +z, thumb towards −x — :attr:`Subject.root_bones`): every palm normal
``n_i = r_{i+1} × r_i`` points out of the back of the hand (+z), so ``x = −n`` points into
the palm and ``y = z × x`` points towards the thumb (−x). Index MCP flexion +90° puts the
index PIP→tip below the palm (−z), i.e. **positive flexion bends a finger towards the palm**;
index MCP abduction +20° moves the index tip to −x, i.e. **positive abduction moves a finger
towards the thumb side**. The tests check both on such a hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bmc_calib import hand_model, skeleton

__all__ = [
    "RANGES",
    "Subject",
    "SyntheticPoses",
    "forward_kinematics",
    "generate",
    "level0_frames",
    "make_subjects",
    "place_angles",
    "ranges_radians",
    "sample_angles",
]

# ---------------------------------------------------------------------------------------------
# Active ranges of motion, degrees, per angle id: ((flexion lo, hi), (abduction lo, hi)).
# Flexion > 0 bends towards the palm, abduction > 0 moves towards the thumb side (see module
# docstring). The thumb CMC and MCP frames of DESIGN §4 are not the anatomical reference frames
# (their zero is the direction of the parent bone), so for those the *spans* follow the
# sources and the placement is ours.
# Sources: AAOS, "Joint Motion: Method of Measuring and Recording" (1965) and Greene & Heckman,
# "The Clinical Measurement of Joint Motion" (AAOS, 1994) — normal active ROM;
# Hume, Gellman, McKellop & Brumfield, "Functional range of motion of the joints of the hand",
# J Hand Surg Am 15(2):240–243, 1990 — active ROM and functional postures;
# Kapandji, "The Physiology of the Joints", vol. 1 (upper limb) — lateral MCP motion, thumb;
# Rijpkema & Girard, "Computer animation of knowledge-based human grasping", SIGGRAPH 1991 —
# the DIP ≈ ⅔ PIP coupling.
# ---------------------------------------------------------------------------------------------
_FINGER_MCP = ((-30.0, 90.0), (-20.0, 20.0))
_FINGER_PIP = ((0.0, 110.0), (0.0, 0.0))
_FINGER_DIP = ((0.0, 90.0), (0.0, 0.0))

RANGES: dict[int, tuple[tuple[float, float], tuple[float, float]]] = {
    # thumb CMC (trapeziometacarpal). Frame flexion (towards the palm) ≈ palmar abduction,
    # AAOS 0–70°; we use a 60° span −10..50° around the wrist→CMC direction. Frame abduction
    # (in the palm plane, away from the index) ≈ CMC extension/flexion, AAOS 20° + 15° → −15..20°.
    0: ((-10.0, 50.0), (-15.0, 20.0)),
    # index/middle/ring/little MCP: AAOS flexion 0–90°, hyperextension up to 45°; we use a
    # typical active 30° (Kapandji). Lateral motion about ±20° in extension (Kapandji).
    1: _FINGER_MCP,
    2: _FINGER_MCP,
    3: _FINGER_MCP,
    4: _FINGER_MCP,
    # thumb MCP: AAOS flexion 0–50°, Hume et al. 1990 active ≈ 56° → 0..55°. Small lateral play
    # of the thumb MCP (Kapandji) → ±8°.
    5: ((0.0, 55.0), (-8.0, 8.0)),
    # finger PIP: AAOS 0–100°, Hume et al. 1990 active ≈ 105° → 0..110°. Hinge: no abduction.
    6: _FINGER_PIP,
    7: _FINGER_PIP,
    8: _FINGER_PIP,
    9: _FINGER_PIP,
    # thumb IP: AAOS flexion 0–80°, hyperextension up to 20° (we use a moderate 10°). Hinge.
    10: ((-10.0, 80.0), (0.0, 0.0)),
    # finger DIP: AAOS 0–90°; sampled as ⅔·PIP + noise (Rijpkema & Girard 1991), clipped. Hinge.
    11: _FINGER_DIP,
    12: _FINGER_DIP,
    13: _FINGER_DIP,
    14: _FINGER_DIP,
}


def ranges_radians() -> np.ndarray:
    """:data:`RANGES` as an array ``(15, 2, 2)`` in radians: ``[angle id, flex/abd, lo/hi]``."""
    return np.deg2rad(np.asarray([RANGES[a] for a in range(skeleton.NUM_ANGLES)], dtype=float))


# ---------------------------------------------------------------------------------------------
# Forward kinematics
# ---------------------------------------------------------------------------------------------


#: |z × b̂| at or below this (with z·b̂ < 0) means b̂ is antiparallel to z, as in kinematics.
_ALIGNED = 1e-12


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1, keepdims=True)


def level0_frames(root_bones: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The DESIGN §4.4 frames ``(x, y, z)`` of the five level-0 bones, each ``(..., 5, 3)``."""
    r = np.asarray(root_bones, dtype=np.float64)
    n = _unit(np.cross(r[..., 1:, :], r[..., :-1, :]))  # (..., 4, 3), n_i = r_{i+1} × r_i
    x = -np.stack(
        [
            n[..., 0, :],
            n[..., 1, :],
            _unit(n[..., 2, :] + n[..., 1, :]),
            _unit(n[..., 3, :] + n[..., 2, :]),
            n[..., 3, :],
        ],
        axis=-2,
    )
    z = _unit(r)
    y = _unit(np.cross(z, x))
    return x, y, z


def forward_kinematics(
    root_bones: np.ndarray, angles: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """Joints of hands built from root bones, joint angles and finger bone lengths.

    ``root_bones`` ``(..., 5, 3)`` are the wrist → thumb CMC / finger MCP vectors (a right
    hand; the palm must be non-degenerate: no two neighbouring root bones parallel);
    ``angles`` ``(..., 15, 2)`` are ``[flexion, abduction]`` in radians by angle id;
    ``lengths`` ``(..., 15)`` are the finger bone lengths by angle id (> 0). The batch
    dimensions broadcast. Returns ``(..., 21, 3)`` joints, canonical order, wrist at the origin.

    Next-level frames use the closed form ``R v = c v + w × v + (w·v)/(1 + c) w`` with
    ``c = z·b̂``, ``w = z × b̂``; when ``b̂ = −z`` (``|w| <= 1e-12``, ``c < 0``) the
    rotation by π about ``x`` is used (``x' = x, y' = −y, z' = −z``), as in
    :mod:`bmc_calib.kinematics`; a zero-length bone keeps the frame. Never returns NaN for
    finite input with a non-degenerate palm.
    """
    root_bones = np.asarray(root_bones, dtype=np.float64)
    angles = np.asarray(angles, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.float64)
    if root_bones.shape[-2:] != (5, 3):
        raise ValueError(f"root_bones must have shape (..., 5, 3), got {root_bones.shape}")
    if angles.shape[-2:] != (skeleton.NUM_ANGLES, 2):
        raise ValueError(f"angles must have shape (..., 15, 2), got {angles.shape}")
    if lengths.shape[-1:] != (skeleton.NUM_ANGLES,):
        raise ValueError(f"lengths must have shape (..., 15), got {lengths.shape}")
    batch = np.broadcast_shapes(root_bones.shape[:-2], angles.shape[:-2], lengths.shape[:-1])
    root_bones = np.broadcast_to(root_bones, (*batch, 5, 3))
    angles = np.broadcast_to(angles, (*batch, skeleton.NUM_ANGLES, 2))
    lengths = np.broadcast_to(lengths, (*batch, skeleton.NUM_ANGLES))

    joints = np.zeros((*batch, skeleton.NUM_JOINTS, 3))
    fingers = np.arange(5)
    joints[..., 4 * fingers + 1, :] = root_bones
    x, y, z = level0_frames(root_bones)
    for level in range(3):
        ids = 5 * level + fingers
        flex = angles[..., ids, 0][..., None]
        abd = angles[..., ids, 1][..., None]
        length = lengths[..., ids][..., None]
        b = length * (np.cos(abd) * (np.sin(flex) * x + np.cos(flex) * z) + np.sin(abd) * y)
        parent = 4 * fingers + 1 + level
        joints[..., parent + 1, :] = joints[..., parent, :] + b
        if level == 2:
            break
        norm = np.linalg.norm(b, axis=-1, keepdims=True)
        bh = np.where(norm > 0, b / np.where(norm > 0, norm, 1.0), z)
        c = _dot(z, bh)
        w = np.cross(z, bh)
        w_sq = _dot(w, w)
        anti = (w_sq <= _ALIGNED**2) & (c < 0)
        # 1 / (1 + c), evaluated as (1 - c) / |w|² when c <= 0 (accurate near antiparallel)
        k = np.where(c > 0, 1.0 / (1.0 + np.abs(c)), (1.0 - c) / np.where(w_sq > 0, w_sq, 1.0))
        x_new = c * x + np.cross(w, x) + _dot(w, x) * k * w
        y_new = c * y + np.cross(w, y) + _dot(w, y) * k * w
        x = np.where(anti, x, x_new)
        y = np.where(anti, -y, y_new)
        z = bh
    return joints


# ---------------------------------------------------------------------------------------------
# Subjects
# ---------------------------------------------------------------------------------------------

# A typical adult right hand (≈ 190 mm long), millimetres, hand frame: fingers along +y, back
# of the hand +z, thumb towards −x, wrist at the origin. The MCP row is slightly arched
# (ring/little and the thumb base lie a little towards the palm, −z).
_TEMPLATE_ROOT = np.array(
    [
        [-24.0, 30.0, -9.0],  # wrist → thumb CMC (≈ 39.5 mm)
        [-22.0, 88.0, 0.0],  # wrist → index MCP (≈ 90.7 mm)
        [-2.0, 92.0, 0.0],  # wrist → middle MCP (≈ 92.0 mm)
        [17.0, 86.0, -2.0],  # wrist → ring MCP (≈ 87.7 mm)
        [33.0, 76.0, -5.0],  # wrist → little MCP (≈ 83.0 mm)
    ]
)
# Joint-centre to joint-centre bone lengths, millimetres, by angle id (level-major):
# thumb metacarpal / proximal / distal(+tip) and finger proximal / middle / distal(+tip).
_TEMPLATE_FINGERS = np.array(
    [
        [43.0, 40.0, 45.0, 42.0, 33.0],  # level 0: thumb CMC→MCP, finger MCP→PIP
        [32.0, 24.0, 28.0, 27.0, 20.0],  # level 1: thumb MCP→IP, finger PIP→DIP
        [27.0, 21.0, 22.0, 21.0, 19.0],  # level 2: thumb IP→tip, finger DIP→tip
    ]
).ravel()


@dataclass(frozen=True, eq=False)
class Subject:
    """One person's hand proportions (millimetres, right hand).

    ``root_bones`` ``(5, 3)``: wrist → thumb CMC / finger MCP vectors in a hand frame (fingers
    along +y, back of the hand +z, thumb towards −x). ``finger_lengths`` ``(15,)``: finger
    bone lengths by angle id. Arrays are stored read-only as float64.
    """

    name: str
    root_bones: np.ndarray
    finger_lengths: np.ndarray

    def __post_init__(self) -> None:
        root = np.array(self.root_bones, dtype=np.float64)
        fingers = np.array(self.finger_lengths, dtype=np.float64)
        if root.shape != (5, 3):
            raise ValueError(f"root_bones must have shape (5, 3), got {root.shape}")
        if fingers.shape != (skeleton.NUM_ANGLES,) or not np.all(fingers > 0):
            raise ValueError("finger_lengths must be 15 positive lengths")
        root.setflags(write=False)
        fingers.setflags(write=False)
        object.__setattr__(self, "root_bones", root)
        object.__setattr__(self, "finger_lengths", fingers)

    def bone_lengths(self) -> np.ndarray:
        """All 20 bone lengths ``(20,)`` in bone order (``bone k`` ends at joint ``k + 1``)."""
        out = np.empty(skeleton.NUM_BONES)
        out[list(skeleton.ROOT_BONES)] = np.linalg.norm(self.root_bones, axis=-1)
        out[skeleton.ANGLE_BONES] = self.finger_lengths
        return out


def make_subjects(count: int = 5, seed: int = 0) -> list[Subject]:
    """``count`` subjects with different proportions, deterministic in ``seed``.

    Drawn from real hands (:mod:`bmc_calib.hand_model`, 14 measured hands): a subject's 30
    parameters (root bones in the hand frame, finger bone lengths) are the mean real hand
    plus a random combination of the real hands' deviations from it, with weights
    ``N(0, 1 / (H − 1))``, so subjects have the real between-person covariance (size,
    proportions and palm shape together). Subject ``i`` does not depend on ``count``.
    Names are ``subject_01``, ….
    """
    model = hand_model.packaged()
    mean = model.mean
    deviation = model.hands - mean  # (H, 30)
    h = deviation.shape[0]
    subjects = []
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(count)):
        rng = np.random.default_rng(child)
        weights = rng.standard_normal(h) / np.sqrt(max(h - 1, 1))
        params = mean + weights @ deviation
        root = params[:15].reshape(5, 3)
        fingers = np.maximum(params[15:], 0.5 * mean[15:])
        subjects.append(Subject(f"subject_{i + 1:02d}", root, fingers))
    return subjects


def place_angles(angles: np.ndarray) -> np.ndarray:
    """Anatomical angles ``(..., 15, 2)`` (:func:`sample_angles`) placed as real annotations.

    The angles of :func:`sample_angles` are anatomical (published ranges, hinge joints with
    zero abduction). Measured in the DESIGN §4 frames, real annotations place joints
    differently (a real index DIP shows ~13° of frame abduction at rest; real finger PIPs
    flex to about 100°, real thumb IPs to about 60°). Each component with a published range
    is mapped linearly from that range onto the real 0.5–99.5 % range of
    :mod:`bmc_calib.hand_model`; a component with no range (hinge abduction) is shifted to
    the real median.
    """
    model = hand_model.packaged()
    published = ranges_radians()  # (15, 2, 2)
    lo, hi = published[..., 0], published[..., 1]
    real_lo, real_hi = model.angle_range[..., 0], model.angle_range[..., 1]
    width = hi - lo
    scale = np.where(width > 0, (real_hi - real_lo) / np.where(width > 0, width, 1.0), 1.0)
    shift = np.where(width > 0, real_lo - lo * scale, model.angle_median)
    return np.asarray(angles) * scale + shift


# ---------------------------------------------------------------------------------------------
# Angle sampling
# ---------------------------------------------------------------------------------------------

# Relaxed-hand means and spreads (degrees), inspired by the functional postures of Hume et al.
# 1990 (MCP ≈ 61°, PIP ≈ 60°, DIP ≈ 39°, thumb MCP ≈ 21°, IP ≈ 18°) shifted towards rest.
_RELAXED_FLEX = np.array(
    [[15.0, 20.0, 25.0, 30.0, 35.0], [20.0, 35.0, 40.0, 45.0, 50.0], [18.0, 0.0, 0.0, 0.0, 0.0]]
).ravel()
_RELAXED_FLEX_SD = np.array(
    [[12.0, 20.0, 20.0, 20.0, 20.0], [12.0, 22.0, 22.0, 22.0, 22.0], [15.0, 0.0, 0.0, 0.0, 0.0]]
).ravel()
_RELAXED_ABD = np.array([5.0, 6.0, 0.0, -5.0, -10.0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
_RELAXED_ABD_SD = np.array([8.0, 7.0, 6.0, 7.0, 8.0, 4.0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
# Grasp synergy: flexion from an open hand (t = 0) to a fist (t = 1), degrees.
_GRASP_OPEN = np.array([[0.0, 0, 0, 0, 0], [5.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0]]).ravel()
_GRASP_FIST = np.array(
    [[40.0, 85, 88, 88, 88], [45.0, 100, 102, 102, 100], [60.0, 0, 0, 0, 0]]
).ravel()
_DIP_IDS = np.arange(11, 15)
_PIP_IDS = np.arange(6, 10)
_MIX = (0.5, 0.3, 0.2)  # relaxed Gaussian, grasp synergy, uniform in range


def sample_angles(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` right-hand joint-angle sets ``(n, 15, 2)`` in radians, all inside :data:`RANGES`.

    A mixture that looks like recordings rather than a uniform box: 50 % around a relaxed hand
    (Gaussian), 30 % along an open-hand → fist grasp synergy (one closure per pose, small
    per-finger jitter), 20 % uniform in range. Draws outside a range are replaced by uniform
    draws. Finger MCP abduction shrinks as the MCP flexes (up to 60 % at 90°); finger DIP
    flexion is ⅔ of PIP plus N(0, 4°), clipped; PIP/DIP/thumb-IP abduction is exactly 0.
    """
    lim = np.rad2deg(ranges_radians())  # (15, 2, 2) degrees
    lo, hi = lim[..., 0], lim[..., 1]  # (15, 2)
    kind = rng.choice(3, size=n, p=_MIX)

    relaxed_flex = _RELAXED_FLEX + _RELAXED_FLEX_SD * rng.standard_normal((n, 15))
    relaxed_abd = _RELAXED_ABD + _RELAXED_ABD_SD * rng.standard_normal((n, 15))
    closure = rng.uniform(0.0, 1.0, (n, 1)) + 0.08 * rng.standard_normal((n, 15))
    grasp_flex = (
        _GRASP_OPEN + closure * (_GRASP_FIST - _GRASP_OPEN) + 8.0 * rng.standard_normal((n, 15))
    )
    grasp_abd = relaxed_abd
    uniform = rng.uniform(lo, hi, (n, 15, 2))

    deg = np.where(
        (kind == 0)[:, None, None],
        np.stack([relaxed_flex, relaxed_abd], axis=-1),
        np.where((kind == 1)[:, None, None], np.stack([grasp_flex, grasp_abd], axis=-1), uniform),
    )
    outside = (deg < lo) | (deg > hi)
    deg = np.where(outside, rng.uniform(lo, hi, (n, 15, 2)), deg)

    # Lateral MCP motion is largest in extension and shrinks with flexion (Kapandji).
    mcp_flex = np.clip(deg[:, 1:5, 0] / 90.0, 0.0, 1.0)
    deg[:, 1:5, 1] *= 1.0 - 0.6 * mcp_flex
    # DIP ≈ ⅔ PIP (Rijpkema & Girard 1991).
    dip = 2.0 / 3.0 * deg[:, _PIP_IDS, 0] + 4.0 * rng.standard_normal((n, 4))
    deg[:, _DIP_IDS, 0] = np.clip(dip, lo[_DIP_IDS, 0], hi[_DIP_IDS, 0])
    deg = np.clip(deg, lo, hi)  # exact zeros for hinge abduction; a no-op elsewhere
    return np.deg2rad(deg)


# ---------------------------------------------------------------------------------------------
# Poses
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SyntheticPoses:
    """Synthetic poses of one subject (millimetres, camera-like frame).

    ``joints`` ``(n, 21, 3)`` float64, canonical order; ``is_left`` ``(n,)`` marks poses that
    were mirrored (x → −x) into left hands; ``is_glitch`` ``(n,)`` marks annotation-glitch
    frames (one joint displaced); ``angles`` ``(n, 15, 2)`` radians are the joint angles the
    right hand was built from (before glitching and mirroring).
    """

    joints: np.ndarray
    is_left: np.ndarray
    is_glitch: np.ndarray
    angles: np.ndarray


def _rotate_about_axis(v: np.ndarray, axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate ``(n, 3)`` vectors about a unit ``axis`` ``(3,)`` by ``angle`` ``(n,)``."""
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return c * v + s * np.cross(axis, v) + (1.0 - c) * (v @ axis)[:, None] * axis


#: How much the palm moves from pose to pose (1 = the full cupping model below). The real
#: hands the subjects come from are measured with a rigid palm (MANO), so the synthetic palm
#: moves only a little around the measured one.
PALM_MOTION = 0.1


def _cupped_roots(subject: Subject, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per-pose root bones ``(n, 5, 3)``: the palm cups by rotating roots about the wrist.

    A per-pose cupping amount ``u`` in 0..1 turns the ring / little root bones about the hand's
    long axis (+y) by ``4u`` / ``8u`` degrees towards the palm and the thumb root by ``10u``
    degrees towards the palm, plus independent jitter (σ = 1–3°, clipped) on every root,
    all scaled by :data:`PALM_MOTION`; every turn stays under 15°, so no two root bones
    become parallel.
    """
    cup = PALM_MOTION * np.clip(rng.normal(0.4, 0.3, n), 0.0, 1.0)
    jitter = PALM_MOTION * np.clip(rng.normal(0.0, 1.0, (n, 5, 2)), -2.5, 2.5)
    y_axis = np.array([0.0, 1.0, 0.0])
    z_axis = np.array([0.0, 0.0, 1.0])
    about_y = np.deg2rad(np.array([-10.0, 0.0, 0.0, 4.0, 8.0]) * cup[:, None] + jitter[..., 0])
    about_z = np.deg2rad(np.array([3.0, 1.0, 1.0, 1.0, 1.0]) * jitter[..., 1])
    roots = np.empty((n, 5, 3))
    for f in range(5):
        r = np.broadcast_to(subject.root_bones[f], (n, 3))
        r = _rotate_about_axis(r, y_axis, about_y[:, f])
        roots[:, f] = _rotate_about_axis(r, z_axis, about_z[:, f])
    return roots


def _random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rotation matrices ``(n, 3, 3)`` uniform on SO(3) (normalised Gaussian quaternions)."""
    q = rng.standard_normal((n, 4))
    w, x, y, z = (q / np.linalg.norm(q, axis=-1, keepdims=True)).T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


_PARENT_OF = np.asarray(skeleton.PARENTS)
#: The child joint of each joint (-1 for the tips; the wrist is never moved).
_CHILD_OF = np.asarray([j + 1 if j % 4 != 0 else -1 for j in range(skeleton.NUM_JOINTS)])


def _glitched_joint(
    joints: np.ndarray, moved: np.ndarray, direction: np.ndarray, factor: np.ndarray
) -> np.ndarray:
    """New positions ``(m, 3)`` of joint ``moved[i]`` of pose ``joints[i]`` (``(m, 21, 3)``).

    The joint moves along the unit ``direction`` by the distance at which the longest of the
    two bones touching it (to its parent and, unless it is a tip, to its child) reaches
    ``factor`` (> 1) times its true length: found by bisection, which is exact to rounding
    because the ratio is continuous in the distance, 1 at 0 and unbounded.
    """
    rows = np.arange(len(moved))
    child = _CHILD_OF[moved]
    has_child = child >= 0
    start = joints[rows, moved]
    parent = joints[rows, _PARENT_OF[moved]]
    kid = joints[rows, np.where(has_child, child, moved)]
    parent_len = np.linalg.norm(start - parent, axis=-1)
    child_len = np.where(has_child, np.linalg.norm(kid - start, axis=-1), 1.0)

    def worst_ratio(dist: np.ndarray) -> np.ndarray:
        pos = start + dist[:, None] * direction
        ratio = np.linalg.norm(pos - parent, axis=-1) / parent_len
        to_child = np.linalg.norm(kid - pos, axis=-1) / child_len
        return np.maximum(ratio, np.where(has_child, to_child, 0.0))

    lo = np.zeros(len(moved))
    hi = 10.0 * factor * np.maximum(parent_len, np.where(has_child, child_len, 0.0))
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        below = worst_ratio(mid) < factor
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return start + hi[:, None] * direction


def generate(
    subject: Subject,
    n: int,
    seed: int = 0,
    glitch_fraction: float = 0.03,
    left_fraction: float = 0.0,
    noise_mm: float = 0.0,
    placement: bool = True,
) -> SyntheticPoses:
    """``n`` synthetic poses of ``subject``, deterministic in ``seed``.

    Per pose: angles from :func:`sample_angles` (placed by :func:`place_angles` unless
    ``placement`` is False), a cupped palm (root bones turned a few degrees
    about the wrist), forward kinematics, a uniformly random rotation and a camera-like
    translation (x, y in ±150 mm, z in 300..700 mm), then annotation noise (independent
    Gaussian, σ = ``noise_mm`` per coordinate; 0 = exact joints). Then
    ``round(glitch_fraction · n)`` random frames get one random joint (not the wrist) moved in
    a random direction until the longest bone touching it is 1.6–4× (uniform) its true
    length; then
    ``round(left_fraction · n)`` random frames are mirrored (x → −x). Each step draws from its
    own random stream, so changing the fractions does not change the angles or the palms.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not (0.0 <= glitch_fraction <= 1.0 and 0.0 <= left_fraction <= 1.0):
        raise ValueError("glitch_fraction and left_fraction must lie in [0, 1]")
    if noise_mm < 0:
        raise ValueError(f"noise_mm must be >= 0, got {noise_mm}")
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)]
    angle_rng, palm_rng, pose_rng, glitch_rng, left_rng, noise_rng = streams

    angles = sample_angles(n, angle_rng)
    if placement:
        angles = place_angles(angles)
    roots = _cupped_roots(subject, n, palm_rng)
    joints = forward_kinematics(roots, angles, subject.finger_lengths)

    rot = _random_rotations(n, pose_rng)
    shift = pose_rng.uniform([-150.0, -150.0, 300.0], [150.0, 150.0, 700.0], (n, 3))
    joints = joints @ np.swapaxes(rot, -1, -2) + shift[:, None, :]
    if noise_mm > 0:
        joints += noise_rng.normal(0.0, noise_mm, joints.shape)

    is_glitch = np.zeros(n, dtype=bool)
    n_glitch = round(glitch_fraction * n)
    if n_glitch:
        frames = glitch_rng.choice(n, size=n_glitch, replace=False)
        moved = glitch_rng.integers(1, skeleton.NUM_JOINTS, n_glitch)
        direction = _unit(glitch_rng.standard_normal((n_glitch, 3)))
        factor = glitch_rng.uniform(1.6, 4.0, n_glitch)
        joints[frames, moved] = _glitched_joint(joints[frames], moved, direction, factor)
        is_glitch[frames] = True

    is_left = np.zeros(n, dtype=bool)
    n_left = round(left_fraction * n)
    if n_left:
        is_left[left_rng.choice(n, size=n_left, replace=False)] = True
        joints[is_left] = skeleton.mirror(joints[is_left])

    return SyntheticPoses(joints=joints, is_left=is_left, is_glitch=is_glitch, angles=angles)
