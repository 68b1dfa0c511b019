"""Limits meant for a person the fit never saw (docs/method.md has the formulas and reasons).

Two kinds of quantity:

- **Person-level** (bone lengths, palm curvature, palm angles): nearly constant within one
  hand, different between people. Per hand (a group's left or right hands) a robust centre,
  the median; the between-person spread from those centres; the within-hand spread from the
  deviations of each pose from its own hand's centre. Each interval is a prediction interval
  for a *new* person's pose (:func:`person_intervals`).
- **Pose-level** (joint angles): every person moves through much the same region. Per group
  a trimmed hull (coverage ``c`` of that group's own points), then a consensus region that
  no single group can stretch (:func:`consensus_region`).

Shapes: ``values (S, K)`` per pose and item; ``hand``, ``person`` ``(S,)`` int ids. Units
are those of the values (see :mod:`bmc_calib.kinematics`); polygons as :mod:`bmc_calib.hulls`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from scipy.spatial import ConvexHull, QhullError
from scipy.special import stdtrit

from bmc_calib import hulls

#: Fewest groups (people) for which a between-person spread is estimated (two give t with
#: one degree of freedom: an interval so wide it rarely bites, which is what two people can
#: tell about a third).
MIN_PEOPLE = 2


@dataclass(frozen=True)
class PersonIntervals:
    """Prediction intervals of ``K`` person-level items (all arrays ``(K,)`` unless noted).

    ``low``/``high``: the interval; ``center``: mean of the hands' centres; ``between_sd``:
    standard deviation of the hands' centres; ``within_low``/``within_high``: the pooled
    ``(1 − c)/2`` and ``1 − (1 − c)/2`` quantiles of the deviation from one's own hand centre;
    ``factor``: the multiplier ``k`` of ``between_sd`` (scalar); ``people``/``hands``: counts.
    ``method`` says which formula was used.
    """

    low: np.ndarray
    high: np.ndarray
    center: np.ndarray
    between_sd: np.ndarray
    within_low: np.ndarray
    within_high: np.ndarray
    factor: float
    people: int
    hands: int
    method: str


def group_medians(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """``(n_groups, K)`` column medians of ``values`` ``(S, K)`` per group id ``(S,)`` in
    ``0 … n_groups − 1``; NaN for a group without rows. One sort, one median per group."""
    x = np.asarray(values)  # float32 stays float32 until one group's rows are taken
    group = np.asarray(group)
    out = np.full((n_groups, x.shape[1]), np.nan)
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(n_groups + 1))
    for g in range(n_groups):
        rows = order[bounds[g] : bounds[g + 1]]
        if rows.size:
            out[g] = np.median(np.asarray(x[rows], dtype=np.float64), axis=0)
    return out


def hand_ids(group: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """``(S,)`` id of each pose's hand: group × side (left hands were mirrored)."""
    return 2 * np.asarray(group, dtype=np.int64) + np.asarray(mirrored, dtype=np.int64)


def prediction_factor(people: int, confidence: float, items: int) -> float:
    """``k = t_{P−1}(1 − (1 − γ) / (2m)) · sqrt(1 + 1/P)`` for ``P`` people, ``m`` items.

    ``γ`` is the probability that all ``m`` items of a new person's hand fall inside
    (Bonferroni over the items, two-sided, Student t with ``P − 1`` degrees of freedom).
    """
    if people < 2:
        return math.inf
    upper = 1.0 - (1.0 - confidence) / (2.0 * max(items, 1))
    return float(stdtrit(people - 1, upper) * math.sqrt(1.0 + 1.0 / people))


def person_intervals(
    values: np.ndarray,
    hand: np.ndarray,
    person: np.ndarray,
    coverage: float,
    confidence: float,
    items: int,
) -> PersonIntervals:
    """Prediction intervals for a new person (see the module docstring and docs/method.md).

    With ``P >= MIN_PEOPLE`` people: ``[μ − k·s + w_lo, μ + k·s + w_hi]``, where ``μ`` and
    ``s`` are the mean and standard deviation (``ddof=1``) of the hands' medians, ``k`` is
    :func:`prediction_factor` with ``items`` items, and ``w_lo``/``w_hi`` are the coverage
    quantiles of the pooled within-hand deviations. With one person the between-person
    spread cannot be estimated: the interval is the data's own coverage quantile range.
    """
    x = np.asarray(values, dtype=np.float64)
    hand = np.asarray(hand)
    tail = (1.0 - coverage) / 2.0
    uniq, inverse = np.unique(hand, return_inverse=True)
    inverse = inverse.reshape(-1)
    centers = group_medians(x, inverse, uniq.size)
    deviation = x - centers[inverse]
    within = np.quantile(deviation, [tail, 1.0 - tail], axis=0)
    people = int(np.unique(np.asarray(person)).size)
    mu = centers.mean(axis=0)
    if people < MIN_PEOPLE or uniq.size < 2:
        q = np.quantile(x, [tail, 1.0 - tail], axis=0)
        return PersonIntervals(
            q[0], q[1], mu, np.zeros_like(mu), within[0], within[1], 0.0, people, uniq.size,
            f"quantile range: {people} group(s), a between-person spread needs {MIN_PEOPLE}",
        )  # fmt: skip
    sd = centers.std(axis=0, ddof=1)
    k = prediction_factor(people, confidence, items)
    return PersonIntervals(
        low=mu - k * sd + within[0],
        high=mu + k * sd + within[1],
        center=mu,
        between_sd=sd,
        within_low=within[0],
        within_high=within[1],
        factor=k,
        people=people,
        hands=int(uniq.size),
        method="prediction interval for a new person (random effects, t, Bonferroni)",
    )


def relative_within_spread(values: np.ndarray, hand: np.ndarray, coverage: float) -> np.ndarray:
    """``(K,)`` quantile of ``|x / own hand median − 1|``, pooled over hands, at the level
    ``1 − (1 − c) / K``: so that a pose has *some* of its ``K`` items beyond the spread with
    probability at most about ``1 − c`` (Bonferroni), not ``K`` times that."""
    x = np.asarray(values, dtype=np.float64)
    uniq, inverse = np.unique(np.asarray(hand), return_inverse=True)
    inverse = inverse.reshape(-1)
    centers = group_medians(x, inverse, uniq.size)
    safe = np.where(centers > 0, centers, 1.0)
    level = 1.0 - (1.0 - coverage) / max(x.shape[1], 1)
    return np.quantile(np.abs(x / safe[inverse] - 1.0), level, axis=0)


def consensus_region(group_hulls: list[np.ndarray]) -> np.ndarray:
    """The region no single group can stretch: ``∩_g conv(∪_{h≠g} H_h)``.

    ``group_hulls`` are the groups' own convex polygons ``(V, 2)`` (counter-clockwise). With
    one group its hull is returned; with two, their intersection. When the intersection is
    empty or degenerate (groups that do not overlap at all), the hull of all groups is used.
    Returns a counter-clockwise ``(V, 2)`` polygon starting at its lexicographic minimum.
    """
    if not group_hulls:
        raise ValueError("consensus_region needs at least one group hull")
    if len(group_hulls) == 1:
        return _canonical(np.asarray(group_hulls[0], dtype=np.float64))
    if len(group_hulls) == 2:
        region = shapely.Polygon(group_hulls[0]).intersection(shapely.Polygon(group_hulls[1]))
    else:
        # Only a group owning a vertex of the hull of all groups can change conv(others):
        # leaving any other group out leaves that hull as it is. So at most as many hulls
        # as the full hull has vertices are computed, however many groups there are.
        stacked = np.concatenate(group_hulls)
        owner = np.repeat(np.arange(len(group_hulls)), [len(h) for h in group_hulls])
        try:
            corners = ConvexHull(stacked).vertices
        except QhullError:
            corners = np.arange(len(stacked))
        region = None
        for g in np.unique(owner[corners]):
            spanned = shapely.MultiPoint(stacked[owner != g]).convex_hull
            region = spanned if region is None else region.intersection(spanned)
    if region is None or region.geom_type != "Polygon" or region.area <= 0:
        everything = shapely.MultiPoint(np.concatenate(group_hulls)).convex_hull
        region = everything
    if region.geom_type != "Polygon" or region.area <= 0:
        return _canonical(np.asarray(group_hulls[0], dtype=np.float64))
    coords = np.asarray(region.exterior.coords, dtype=np.float64)[:-1]
    return _canonical(_drop_collinear(coords))


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Remove vertices of a ring that lie on the segment between their neighbours."""
    prev, nxt = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    cross = (ring[:, 0] - prev[:, 0]) * (nxt[:, 1] - prev[:, 1]) - (ring[:, 1] - prev[:, 1]) * (
        nxt[:, 0] - prev[:, 0]
    )
    scale = max(1.0, float(np.max(np.abs(ring))))
    keep = np.abs(cross) > 1e-12 * scale * scale
    return ring[keep] if keep.sum() >= 3 else ring


def _canonical(vertices: np.ndarray) -> np.ndarray:
    """Counter-clockwise, starting at the lexicographic minimum (as :mod:`bmc_calib.hulls`)."""
    if hulls._signed_area(vertices) < 0:
        vertices = vertices[::-1]
    return hulls._start_at_lexicographic_min(vertices)


def _pool(pts: np.ndarray, remove: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the points a peel of ``remove`` points can touch, and every point's score.

    The ``50·remove + 64`` points farthest from the mean (score: squared distance in units
    of each axis' spread) plus the hull vertices of all the others: points inside that inner
    hull cannot become vertices while fewer points than the pool holds are removed.
    """
    n = len(pts)
    spread = np.maximum(pts.std(axis=0), 1e-12)
    far = np.sum(((pts - pts.mean(axis=0)) / spread) ** 2, axis=1)
    size = min(n, 50 * remove + 64)
    if size >= n:
        return np.arange(n), far
    split = np.argpartition(far, n - size)
    inner, outer = split[: n - size], split[n - size :]
    try:
        return np.concatenate([outer, inner[ConvexHull(pts[inner]).vertices]]), far
    except QhullError:
        return np.arange(n), far


def _peeled(
    pts: np.ndarray, coverage: float
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(dead (M,) mask, exact hull vertices, hull vertices of what is left)``, polygons
    counter-clockwise; a polygon is None when qhull fails (collinear or < 3 points)."""
    n = len(pts)
    dead = np.zeros(n, dtype=bool)
    keep_count = max(3, math.ceil(coverage * n - 1e-9))
    remove = max(n - keep_count, 0)
    pool, far = _pool(pts, remove) if remove else (np.arange(n), np.zeros(n))
    alive = np.ones(len(pool), dtype=bool)
    removed, exact, last = 0, None, None
    while True:
        idx = np.flatnonzero(alive)
        try:
            ring = ConvexHull(pts[pool[idx]]).vertices  # counter-clockwise
        except QhullError:
            last = None
            break
        last = pts[pool[idx[ring]]]
        if exact is None:
            exact = last
        if removed >= remove:
            break
        left = remove - removed
        if len(ring) > left:  # partial layer: the farthest vertices first
            ring = ring[np.argsort(-far[pool[idx[ring]]], kind="stable")[:left]]
        alive[idx[ring]] = False
        removed += len(ring)
    dead[pool[~alive]] = True
    return dead, exact, last


def peel(points: np.ndarray, coverage: float) -> np.ndarray:
    """The points left after peeling convex-hull layers until a fraction ``coverage`` remains.

    Onion peeling: drop the hull's vertices, recompute the hull, repeat; in the last, partial
    layer the vertices farthest from the mean go first (in units of each axis' spread).
    Points inside the hull become vertices as the layers go, so a thin spike of outliers (a
    short run of bad annotations) is cut, where greedy vertex removal, which only ever keeps
    original extreme points as vertices, cannot cut it. At least 3 points remain;
    ``points`` ``(M, 2)`` finite. The hulls are taken over :func:`_pool`, so each costs a
    few thousand points whatever ``M`` is.
    """
    pts = np.asarray(points, dtype=np.float64)
    return pts[~_peeled(pts, coverage)[0]]


def trimmed_hull(
    points: np.ndarray, coverage: float, rdp_epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    """One group's hull peeled to ``coverage`` (:func:`peel`) and simplified by RDP, and its
    exact hull; both counter-clockwise ``(V, 2)``. At ``coverage = 1`` both are the exact
    hull, unsimplified (DESIGN §5). Degenerate point sets (fewer than 3 distinct or
    collinear points) give the padded bounding box of :func:`bmc_calib.hulls.fit_hull`."""
    pts = np.asarray(points, dtype=np.float64)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) < 3:
        box = hulls.fit_hull(pts if len(pts) else np.zeros((1, 2)), coverage=1.0).vertices
        return box, box
    _, exact, last = _peeled(pts, min(coverage, 1.0))
    if exact is None:
        box = hulls.fit_hull(pts, coverage=1.0).vertices
        return box, box
    exact = _canonical(exact)
    if coverage >= 1.0:
        return exact, exact
    if last is None:  # what is left is collinear: keep its padded box
        return hulls.fit_hull(pts[~_peeled(pts, coverage)[0]], coverage=1.0).vertices, exact
    return rdp_ring(_canonical(last), rdp_epsilon), exact


def group_hull(points: np.ndarray, coverage: float, rdp_epsilon: float) -> np.ndarray:
    """One group's trimmed hull (the first polygon of :func:`trimmed_hull`)."""
    return trimmed_hull(points, coverage, rdp_epsilon)[0]


def rdp_ring(polygon: np.ndarray, epsilon: float) -> np.ndarray:
    """Ramer–Douglas–Peucker of a closed convex ring: a subset of its vertices, still
    counter-clockwise, at least 3."""
    if len(polygon) <= 3 or epsilon <= 0:
        return polygon
    keep = hulls._rdp_ring(polygon, epsilon)
    return polygon[keep] if keep.size >= 3 else polygon
