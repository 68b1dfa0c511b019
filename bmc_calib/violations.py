"""Per-pose violation magnitudes against limits (DESIGN §7; the torch loss mirrors these).

All magnitudes are ``>= 0`` and ``0`` inside the limits, shapes ``(N, K)``:

- ``bone_length``    ``(N, 20)`` relative to the violated edge: ``v / max − 1`` above,
  ``1 − v / min`` below (0.2 = 20 % too long);
- ``palm_curvature`` ``(N, 4)``  distance outside the interval, in the bundle's curvature unit;
- ``palm_angle``     ``(N, 4)``  radians outside the interval;
- ``joint_angle``    ``(N, 15)`` Euclidean distance in radians from the (unwrapped flexion,
  abduction) point to the joint's hull polygon.

Degenerate poses get magnitude 0 everywhere; their verdict is ``degenerate``, not a number.

A magnitude counts as a violation when it exceeds its tolerance by more than
:data:`VERDICT_EPSILON` (1e-6: fitted features are stored as float32, which rounds limits by
up to ~1e-7; 1e-6 rad is 0.00006°, far below anything anatomical). Magnitudes themselves
are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bmc_calib import hulls
from bmc_calib.kinematics import Features
from bmc_calib.limits import Interval, JointAngleLimits, Limits

FAMILIES: tuple[str, ...] = ("bone_length", "palm_curvature", "palm_angle", "joint_angle")
VERDICT_EPSILON = 1e-6


@dataclass
class Violations:
    """Magnitudes per family (see module docstring) and the degenerate mask ``(N,)``."""

    bone_length: np.ndarray
    palm_curvature: np.ndarray
    palm_angle: np.ndarray
    joint_angle: np.ndarray
    degenerate: np.ndarray

    def family(self, name: str) -> np.ndarray:
        """The ``(N, K)`` magnitudes of one family by name."""
        return getattr(self, name)

    def stacked(self) -> np.ndarray:
        """All magnitudes side by side, ``(N, 43)``, families in :data:`FAMILIES` order."""
        return np.concatenate([self.family(f) for f in FAMILIES], axis=1)


def interval_violation(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Distance of ``(N, K)`` values outside ``[low, high]`` ``(K,)``; 0 inside."""
    v = np.asarray(values, dtype=np.float64)
    return np.maximum(np.maximum(low - v, v - high), 0.0)


def relative_interval_violation(
    values: np.ndarray, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """Violation of positive quantities relative to the violated edge; 0 inside."""
    v = np.asarray(values, dtype=np.float64)
    lo = np.where(low > 0, low, np.finfo(np.float64).tiny)
    hi = np.where(high > 0, high, np.finfo(np.float64).tiny)
    return np.maximum(np.maximum(1.0 - v / lo, v / hi - 1.0), 0.0)


def joint_angle_points(flexion_abduction: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """``(N, 15, 2)`` angles with flexion unwrapped around each joint's flexion centre."""
    fa = np.array(flexion_abduction, dtype=np.float64, copy=True)
    fa[..., 0] = hulls.unwrap_flexion(fa[..., 0], centers)
    return fa


def joint_angle_violation(flexion_abduction: np.ndarray, limits: JointAngleLimits) -> np.ndarray:
    """Distance ``(N, 15)`` radians of each joint's angle point to its hull polygon."""
    points = joint_angle_points(flexion_abduction, limits.flexion_center)
    out = np.empty(points.shape[:2])
    for a, hull in enumerate(limits.hulls):
        out[:, a] = hulls.distance_to_polygon(points[:, a], hull)
    return out


def compute_violations(features: Features, limits: Limits) -> Violations:
    """Magnitudes of every pose in ``features`` against ``limits``."""
    keep = ~np.asarray(features.degenerate)[:, None]
    return Violations(
        bone_length=keep * _relative(features.bone_length, limits.bone_length),
        palm_curvature=keep * _absolute(features.palm_curvature, limits.palm_curvature),
        palm_angle=keep * _absolute(features.palm_angle, limits.palm_angle),
        joint_angle=keep * joint_angle_violation(features.flexion_abduction, limits.joint_angle),
        degenerate=np.asarray(features.degenerate, dtype=bool),
    )


def tolerances(limits: Limits, scale: float = 1.0) -> dict[str, np.ndarray]:
    """The stored per-item tolerances of each family, multiplied by ``scale``."""
    return {
        "bone_length": limits.bone_length.tolerance * scale,
        "palm_curvature": limits.palm_curvature.tolerance * scale,
        "palm_angle": limits.palm_angle.tolerance * scale,
        "joint_angle": limits.joint_angle.tolerance * scale,
    }


def exceeded(violations: Violations, tolerance: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per family, the ``(N, K)`` mask of magnitudes above tolerance + VERDICT_EPSILON."""
    return {f: violations.family(f) > tolerance[f] + VERDICT_EPSILON for f in FAMILIES}


def _relative(values: np.ndarray, interval: Interval) -> np.ndarray:
    return relative_interval_violation(values, interval.min, interval.max)


def _absolute(values: np.ndarray, interval: Interval) -> np.ndarray:
    return interval_violation(values, interval.min, interval.max)


def nearest_on_polygon(points: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Nearest boundary point ``(M, 2)`` of a ``(V, 2)`` polygon to each of ``(M, 2)`` points.

    For a point outside the polygon, ``point − nearest`` is the direction in which it left
    the region and its length equals the :func:`joint_angle_violation` magnitude. Vectorised
    over points and edges (``M × V`` temporaries: meant for a few points, e.g. explanations).
    """
    p = np.asarray(points, dtype=np.float64)[:, None, :]  # (M, 1, 2)
    a = np.asarray(vertices, dtype=np.float64)[None]  # (1, V, 2)
    edge = np.roll(a, -1, axis=1) - a
    length_sq = np.maximum(np.sum(edge * edge, axis=-1), np.finfo(np.float64).tiny)
    t = np.clip(np.sum((p - a) * edge, axis=-1) / length_sq, 0.0, 1.0)  # (M, V)
    foot = a + t[..., None] * edge  # (M, V, 2)
    best = np.argmin(np.sum((p - foot) ** 2, axis=-1), axis=1)
    return foot[np.arange(foot.shape[0]), best]
