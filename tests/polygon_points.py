"""Test points around convex polygons, for the hull-distance tests of the loss (eager and
compiled ATen searches, and the fused C one)."""

from __future__ import annotations

import numpy as np


def points_around(
    poly: np.ndarray, rng: np.random.Generator, cloud: int, far: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a polygon ``(V, 2)``: ``cloud`` uniform points over its box grown by its span on
    each side (inside and outside), 8 points next to every vertex in all directions at
    distances of 1e-6 to 1 span (the vertex regions, where the nearest edge and the edge the
    point lies farthest beyond differ) and ``far`` points ~100 spans away; ``(·, 2)`` each."""
    lo, hi = poly.min(0), poly.max(0)
    span = max(float(np.max(hi - lo)), 1e-3)
    spread = rng.uniform(lo - span, hi + span, (cloud, 2))
    angles = rng.uniform(0, 2 * np.pi, (len(poly), 8))
    radius = span * 10.0 ** rng.uniform(-6, 0, (len(poly), 8))
    ring = poly[:, None] + radius[..., None] * np.stack((np.cos(angles), np.sin(angles)), -1)
    distant = rng.normal(size=(far, 2)) * 100 * span
    return spread, ring.reshape(-1, 2), distant
