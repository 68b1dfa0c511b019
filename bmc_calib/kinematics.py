"""Biomechanical features of canonical right-hand poses (DESIGN §4, normative).

Input: joints ``(..., 21, 3)`` in canonical order (see :mod:`bmc_calib.skeleton`), any length
unit. Everything is computed in float64, vectorised over poses, in chunks of
``chunk_size`` poses so temporaries stay bounded.

Outputs (``N`` = number of poses, leading dimensions flattened):

- ``bone_length``        ``(N, 20)``  in the normalised unit (see ``normalization``)
- ``palm_curvature``     ``(N, 4)``   1 / normalised unit
- ``palm_angle``         ``(N, 4)``   radians, angle between root bones i and i+1
- ``flexion_abduction``  ``(N, 15, 2)`` radians, ``[..., 0]`` flexion in (−π, π],
  ``[..., 1]`` abduction in [−π/2, π/2], indexed by angle id ``5 * level + finger``
- ``degenerate``         ``(N,)`` bool and ``degenerate_reason`` ``(N,)`` uint8 bit mask of
  :data:`DEGENERATE_REASONS`

Normalisation ``reference-bone`` (default) translates joint 9 (middle MCP) to the origin and
divides by the wrist→middle-MCP distance; ``none`` keeps the input unit. Angles do not depend
on it. For a right hand, positive flexion bends a bone towards the palm and positive abduction
moves it towards the thumb side.

No NaN or infinity ever leaves this module: a pose where some quantity is undefined, or with
a coordinate beyond :data:`COORDINATE_LIMIT` (where some quantity would overflow), is flagged
degenerate and all its features are set to 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from bmc_calib import skeleton
from bmc_calib.errors import UsageError

NORMALIZATIONS: tuple[str, ...] = ("reference-bone", "none")

#: Bit ``i`` of ``degenerate_reason`` is set when reason ``i`` applies; a pose with
#: non-finite or out-of-range coordinates has only those bits (the geometric tests cannot be
#: made on it).
DEGENERATE_REASONS: tuple[str, ...] = (
    "non_finite",  # a coordinate is NaN or infinite
    "zero_bone",  # some bone (incl. the reference bone) has (near) zero length
    "coincident_mcps",  # two neighbouring root bones end at the same point
    "parallel_root_bones",  # two neighbouring root bones are (anti)parallel: no palm normal
    "folded_palm",  # two neighbouring palm normals are opposite: no edge normal
    "out_of_range",  # a finite coordinate beyond COORDINATE_LIMIT, before or after normalising
)

#: A bone shorter than this fraction of the reference bone counts as zero.
ZERO_LENGTH = 1e-7
#: Neighbouring root bones whose sine of angle is below this count as parallel.
PARALLEL_SINE = 1e-7
#: Sum of two unit normals shorter than this counts as opposite.
OPPOSITE_NORMALS = 1e-7
#: |z × b| below this (for unit z, b) means b is (anti)parallel to z in frame propagation.
ALIGNED = 1e-12
#: A pose with a finite coordinate of magnitude above this, in the input unit or (under
#: ``reference-bone``) in the normalised unit, is degenerate (``out_of_range``): no real hand
#: is 1e8 units (100 km in mm) from its origin or 1e8 reference bones long, and below this
#: bound every feature, and the float32 arithmetic of :mod:`bmc_calib.torch` (whose largest
#: intermediate, a squared cross product, grows as the 4th power of a coordinate), stays
#: finite. The same rule holds in numpy and torch.
COORDINATE_LIMIT = 1e8

_OUT_OF_RANGE = 1 << DEGENERATE_REASONS.index("out_of_range")
#: Reasons about the coordinates themselves: a pose with one of them is reported with it
#: alone (its unusable coordinates are replaced by 0 before the geometric tests, which would
#: otherwise report the zeros as zero bones, coincident MCPs, …).
_UNUSABLE = 1 << DEGENERATE_REASONS.index("non_finite") | _OUT_OF_RANGE

DEFAULT_CHUNK = 3000  # poses per float64 block; powers of two collide in the cache

_ROOT = np.asarray(skeleton.ROOT_BONES)
_LEVELS = [np.asarray(lv) for lv in skeleton.LEVEL_BONES]


@dataclass
class Features:
    """Per-pose features; see the module docstring for shapes and units."""

    bone_length: np.ndarray
    palm_curvature: np.ndarray
    palm_angle: np.ndarray
    flexion_abduction: np.ndarray
    degenerate: np.ndarray
    degenerate_reason: np.ndarray

    def __len__(self) -> int:
        return int(self.degenerate.shape[0])


def degenerate_reason_names(code: int) -> list[str]:
    """Names of the reasons set in one ``degenerate_reason`` bit mask."""
    return [name for i, name in enumerate(DEGENERATE_REASONS) if code & (1 << i)]


# --------------------------------------------------------------------------- small vector ops
# Inside this module vectors are component-first: an array of shape (3, ...) so that each
# component is contiguous (several times faster than strided (..., 3) access).
def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.stack(
        (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])
    )


def _norm(a: np.ndarray) -> np.ndarray:
    return np.sqrt(_dot(a, a))


def _unit(a: np.ndarray, norm: np.ndarray | None = None) -> np.ndarray:
    """``a / |a|`` with a zero vector (not NaN) where ``|a| == 0``."""
    n = _norm(a) if norm is None else norm
    return a / np.where(n > 0, n, 1.0)


# --------------------------------------------------------------------------- public API
def normalize(joints: np.ndarray, normalization: str = "reference-bone") -> np.ndarray:
    """Apply a normalisation to ``(..., 21, 3)`` joints; returns float64 ``(..., 21, 3)``.

    ``reference-bone``: joint 9 to the origin, scaled so ‖j0 − j9‖ = 1 (a zero reference
    bone leaves the pose translated but unscaled). ``none``: a float64 copy.
    """
    check_normalization(normalization)
    j = np.array(joints, dtype=np.float64, copy=True)
    if normalization == "none":
        return j
    a, b = skeleton.REFERENCE_JOINTS
    j -= j[..., b : b + 1, :]
    scale = np.linalg.norm(j[..., a, :], axis=-1)
    j /= np.where(scale > 0, scale, 1.0)[..., None, None]
    return j


def check_normalization(normalization: str) -> None:
    """Raise a :class:`UsageError` for an unknown normalisation name."""
    if normalization not in NORMALIZATIONS:
        raise UsageError(
            f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}"
        )


def compute_features(
    joints: np.ndarray,
    normalization: str = "reference-bone",
    *,
    chunk_size: int = DEFAULT_CHUNK,
    dtype: type[np.floating] = np.float64,
) -> Features:
    """All features of ``(..., 21, 3)`` joints, flattened to ``N`` poses.

    Computed in float64 in chunks of ``chunk_size`` poses; stored as ``dtype`` (float32 halves
    the memory of large fits). ``joints`` may be a memory map: only one chunk at a time is
    converted to float64.
    """
    arr = np.asarray(joints)
    if arr.shape[-2:] != (skeleton.NUM_JOINTS, 3):
        raise ValueError(f"joints must have shape (..., 21, 3), got {arr.shape}")
    if not np.issubdtype(dtype, np.floating):  # (integer storage truncated every feature)
        raise ValueError(f"dtype must be a floating type, got {np.dtype(dtype).name}")
    flat = arr.reshape(-1, skeleton.NUM_JOINTS, 3)
    out = _empty_features(flat.shape[0], dtype)
    features_into(flat, out, 0, normalization, chunk_size=chunk_size)
    return out


def features_into(
    joints: np.ndarray,
    out: Features,
    start: int,
    normalization: str = "reference-bone",
    *,
    chunk_size: int = DEFAULT_CHUNK,
) -> None:
    """Compute the features of ``(n, 21, 3)`` joints into rows ``start:start + n`` of ``out``.

    Lets a caller fill one preallocated store (e.g. float32 for a whole dataset) without a
    per-chunk result array.
    """
    check_normalization(normalization)
    n = joints.shape[0]
    step = max(int(chunk_size), 1)
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        _features_into(joints[lo:hi], normalization, out, slice(start + lo, start + hi))


def iter_features(
    chunks: Iterable[np.ndarray], normalization: str = "reference-bone"
) -> Iterable[Features]:
    """Features of each ``(n, 21, 3)`` chunk of a stream, one :class:`Features` per chunk."""
    for chunk in chunks:
        yield compute_features(chunk, normalization)


def bone_lengths(joints: np.ndarray, normalization: str = "reference-bone") -> np.ndarray:
    """Bone lengths ``(N, 20)`` of ``(..., 21, 3)`` joints (0 for degenerate poses)."""
    return compute_features(joints, normalization).bone_length


def quick_bone_lengths(
    joints: np.ndarray, normalization: str = "reference-bone"
) -> tuple[np.ndarray, np.ndarray]:
    """Bone lengths only, ``(n, 20)`` float64, and ``valid (n,)``: finite, no zero bone,
    every coordinate within :data:`COORDINATE_LIMIT` (input and normalised unit).

    The cheap part of :func:`compute_features` (no palm, no frames) for a first pass over a
    dataset; where ``valid`` holds, the lengths equal ``compute_features(...).bone_length``.
    """
    check_normalization(normalization)
    j = np.asarray(joints, dtype=np.float64).reshape(-1, skeleton.NUM_JOINTS, 3)
    with np.errstate(over="ignore", invalid="ignore"):
        in_range = (np.abs(j) <= COORDINATE_LIMIT).all(axis=(1, 2))  # False for NaN / inf
        if not in_range.all():
            j = np.where(in_range[:, None, None], j, 0.0)
        bones = j[:, skeleton.BONE_CHILD] - j[:, skeleton.BONE_PARENT]
        length = np.sqrt(np.einsum("nbk,nbk->nb", bones, bones))
        a, b = skeleton.REFERENCE_JOINTS
        ref = np.sqrt(np.einsum("nk,nk->n", j[:, a] - j[:, b], j[:, a] - j[:, b]))
        valid = in_range & (ref > 0) & (length > ZERO_LENGTH * ref[:, None]).all(axis=1)
        if normalization == "reference-bone":
            reach = np.abs(j - j[:, b : b + 1]).max(axis=(1, 2))
            valid &= reach / np.where(ref > 0, ref, 1.0) <= COORDINATE_LIMIT
            length = length / np.where(valid, ref, 1.0)[:, None]
    return np.where(valid[:, None], length, 0.0), valid


def flexion_abduction(joints: np.ndarray) -> np.ndarray:
    """Flexion/abduction ``(N, 15, 2)`` radians of ``(..., 21, 3)`` joints (0 if degenerate)."""
    return compute_features(joints, "none").flexion_abduction


def concatenate(parts: list[Features]) -> Features:
    """Join per-chunk features into one :class:`Features`."""
    if not parts:
        return _empty_features(0, np.float64)
    return Features(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in Features.__dataclass_fields__)
    )


# --------------------------------------------------------------------------- implementation
def empty_features(n: int, dtype: type[np.floating] = np.float64) -> Features:
    """Zeroed features for ``n`` poses, float arrays of ``dtype``."""
    return _empty_features(n, dtype)


def _empty_features(n: int, dtype: type[np.floating]) -> Features:
    return Features(
        bone_length=np.zeros((n, skeleton.NUM_BONES), dtype),
        palm_curvature=np.zeros((n, 4), dtype),
        palm_angle=np.zeros((n, 4), dtype),
        flexion_abduction=np.zeros((n, skeleton.NUM_ANGLES, 2), dtype),
        degenerate=np.zeros(n, bool),
        degenerate_reason=np.zeros(n, np.uint8),
    )


def _all_within(j: np.ndarray) -> bool:
    """Whether every coordinate is finite and within :data:`COORDINATE_LIMIT` (two
    reductions, no temporaries: the common case costs almost nothing)."""
    if j.size == 0:
        return True
    high, low = float(j.max()), float(j.min())  # NaN propagates and fails both tests
    return high <= COORDINATE_LIMIT and low >= -COORDINATE_LIMIT


def _features_into(raw: np.ndarray, normalization: str, out: Features, rows: slice) -> None:
    # component-first, pose-last layout: (3, 21, n) — gathers of joints/bones are row copies
    j = np.ascontiguousarray(np.transpose(np.asarray(raw, dtype=np.float64), (2, 1, 0)))
    # DESIGN §4.7: non-finite or out-of-range coordinates are set to 0 (the pose is flagged)
    # so that no later arithmetic overflows; ``<=`` is False for NaN
    reason = np.zeros(j.shape[2], np.uint8)
    if not _all_within(j):
        in_range = np.abs(j) <= COORDINATE_LIMIT
        finite = np.isfinite(j).all(axis=(0, 1))
        bounded = in_range.all(axis=(0, 1))
        reason |= np.where(finite, 0, 1 << 0).astype(np.uint8)
        reason |= np.where(finite & ~bounded, _OUT_OF_RANGE, 0).astype(np.uint8)
        j = np.where(in_range, j, 0.0)
    a, b = skeleton.REFERENCE_JOINTS
    ref_len = _norm(j[:, a] - j[:, b])  # (n,)
    if normalization == "reference-bone":
        with np.errstate(over="ignore"):  # a tiny reference bone: caught just below
            j = (j - j[:, b : b + 1]) / np.where(ref_len > 0, ref_len, 1.0)
        if not _all_within(j):
            in_range = np.abs(j) <= COORDINATE_LIMIT
            bounded = in_range.all(axis=(0, 1))
            reason |= np.where(bounded, 0, _OUT_OF_RANGE).astype(np.uint8)
            j = np.where(in_range, j, 0.0)
        unit_len = np.ones_like(ref_len)
    else:
        unit_len = ref_len
    tiny = ZERO_LENGTH * unit_len

    bones = j[:, skeleton.BONE_CHILD] - j[:, skeleton.BONE_PARENT]  # (3, 20, n)
    length = _norm(bones)  # (20, n)
    zero = (length <= tiny).any(axis=0) | (ref_len <= 0)
    reason |= np.where(zero, 1 << 1, 0).astype(np.uint8)

    root = bones[:, _ROOT]  # (3, 5, n)
    root_len = length[_ROOT]
    step = root[:, 1:] - root[:, :-1]  # (3, 4, n): MCP_{i+1} − MCP_i
    step_sq = _dot(step, step)
    coincident = (step_sq <= tiny**2).any(axis=0)
    reason |= np.where(coincident, 1 << 2, 0).astype(np.uint8)

    normal_raw = _cross(root[:, 1:], root[:, :-1])  # (3, 4, n): r_{i+1} × r_i
    cross_len = _norm(normal_raw)
    sine = cross_len / np.maximum(root_len[1:] * root_len[:-1], 1e-300)
    parallel = (sine <= PARALLEL_SINE).any(axis=0)
    reason |= np.where(parallel, 1 << 3, 0).astype(np.uint8)
    normal = _unit(normal_raw, cross_len)

    pair_sum = normal[:, 1:] + normal[:, :-1]  # (3, 3, n): n_i + n_{i-1}, i = 1..3
    pair_len = _norm(pair_sum)
    folded = (pair_len <= OPPOSITE_NORMALS).any(axis=0)
    reason |= np.where(folded, 1 << 4, 0).astype(np.uint8)
    pair_unit = _unit(pair_sum, pair_len)

    # edge normals e_0 = n_0, e_i = unit(n_i + n_{i-1}), e_4 = n_3
    edge = np.concatenate((normal[:, :1], pair_unit, normal[:, 3:]), axis=1)  # (3, 5, n)
    curvature = _dot(edge[:, 1:] - edge[:, :-1], step) / np.where(step_sq > 0, step_sq, 1.0)
    palm_angle = np.arctan2(cross_len, _dot(root[:, :-1], root[:, 1:]))

    # level-0 frames: z = unit(r_f), x = −(n_0, n_1, unit(n_2+n_1), unit(n_3+n_2), n_3)
    z = _unit(root, root_len)
    x = -np.concatenate((normal[:, :2], pair_unit[:, 1:], normal[:, 3:]), axis=1)
    y = _unit(_cross(z, x))

    angles = np.empty((skeleton.NUM_ANGLES, 2, j.shape[2]))
    for level, bone_ids in enumerate(_LEVELS):
        bone = bones[:, bone_ids]  # (3, 5, n)
        angles[5 * level : 5 * level + 5, 0], angles[5 * level : 5 * level + 5, 1] = (
            _angles_in_frame(bone, x, y, z)
        )
        if level < 2:
            x, y, z = _next_frame(x, y, z, _unit(bone, length[bone_ids]))

    # the geometric tests saw the zeros that replaced unusable coordinates: report only those
    unusable = reason & _UNUSABLE
    reason = np.where(unusable != 0, unusable, reason).astype(np.uint8)
    degenerate = reason != 0
    keep = ~degenerate
    out.bone_length[rows] = np.where(keep, length, 0.0).T
    out.palm_curvature[rows] = np.where(keep, curvature, 0.0).T
    out.palm_angle[rows] = np.where(keep, palm_angle, 0.0).T
    out.flexion_abduction[rows] = np.where(keep, angles, 0.0).transpose(2, 0, 1)
    out.degenerate[rows] = degenerate
    out.degenerate_reason[rows] = reason


def _angles_in_frame(
    bone: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Flexion and abduction (DESIGN §4.5) of bones ``(3, ...)`` in frames ``(3, ...)`` each.

    With components bx, by, bz: b_xz = b − (b·y)y has ‖b_xz × z‖ = |bx| and b_xz·z = bz, so
    flexion = ±atan2(|bx|, bz); ‖b_xz × b‖ = |by|·h and b_xz·b = h² with h = ‖b_xz‖, so
    abduction = ±atan2(|by|, h). Signs by the strict ``< 0`` rule.
    """
    bx, by, bz = _dot(bone, x), _dot(bone, y), _dot(bone, z)
    flex = np.arctan2(np.abs(bx), bz)
    flex = np.where(bx < 0, -flex, flex)
    abd = np.arctan2(np.abs(by), np.sqrt(bx * bx + bz * bz))
    abd = np.where(by < 0, -abd, abd)
    return flex, abd


def _next_frame(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, b_hat: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate frame (x, y, z) by the smallest rotation taking z onto unit bone ``b_hat``.

    With w = z × b̂ (|w| = sin α), c = z·b̂ = cos α (Rodrigues, unnormalised axis):
    R v = c v + w × v + (w·v) w / (1 + c), where 1 / (1 + c) is evaluated as (1 − c) / |w|²
    when c ≤ 0 (accurate near antiparallel). Parallel (|w| ≤ ALIGNED, c > 0): R = I.
    Antiparallel (|w| ≤ ALIGNED, c < 0): the fixed choice R = rotation by π about x, i.e.
    x' = x, y' = −y. The new z is b̂ itself.
    """
    w = _cross(z, b_hat)
    s_sq = _dot(w, w)
    c = _dot(z, b_hat)
    aligned = s_sq <= ALIGNED**2
    factor = np.where(c > 0, 1.0 / (1.0 + np.abs(c)), (1.0 - c) / np.where(aligned, 1.0, s_sq))

    y_new = c * y + _cross(w, y) + (factor * _dot(w, y)) * w
    if aligned.any():
        y_new = np.where(aligned, np.where(c < 0, -y, y), y_new)
    # (x, y, z) is right-handed and orthonormal, so x' = y' × z' equals R x
    return _cross(y_new, b_hat), y_new, b_hat
