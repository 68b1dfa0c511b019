"""Convex-hull pipeline for joint-angle regions (DESIGN §5) and the polygon queries of §7.

Units and shapes, once for the whole module:

- A *point* is a pair (unwrapped flexion, abduction) in radians; point clouds have shape
  ``(M, 2)`` (``(..., 2)`` for the queries), float32 or float64, converted to float64.
- A *polygon* is a ``(V, 2)`` float64 array of vertices in radians, convex, counter-clockwise
  (positive signed area), ``V >= 3``, each vertex listed once (the ring is closed implicitly).
- *Coverage* is the fraction of the input points inside or on a polygon, in ``[0, 1]``.

Inside means: for every edge ``a -> b`` with inward unit normal ``n`` the signed distance
``x * n_x + y * n_y - n . a`` is ``>= -tol``, with ``tol = 1e-12 * max(1, max |vertex|)``
radians, so points on an edge count as inside. :func:`points_in_polygon` and the coverage
reported by :func:`fit_hull` use exactly this rule. Non-finite points are never inside.

The fit pipeline is: exact convex hull (qhull) -> Ramer–Douglas–Peucker (``rdp`` package) ->
best-first greedy vertex removal keeping coverage ``>= c``. Removing vertex ``v`` of a convex
polygon loses exactly the covered points beyond the chord ``prev(v) -> next(v)`` (the triangle
``prev, v, next``); losses are cached per vertex and only the two neighbours are recounted
after a removal. Points are sorted once by polar angle around an interior centre so that each
triangle only tests the points of its angular sector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rdp import rdp
from scipy.spatial import ConvexHull, QhullError

__all__ = [
    "HullFit",
    "distance_to_polygon",
    "fit_hull",
    "flexion_center",
    "greedy_first_failure",
    "points_in_polygon",
    "unwrap_flexion",
]

TWO_PI = 2.0 * math.pi

#: Relative tolerance of the inside test (times ``max(1, max |vertex|)``), radians.
_REL_TOL = 1e-12
#: Half-width added on each side of the bounding box of a degenerate point set, radians.
_DEGENERATE_PAD = 1e-6
#: RDP attempts: the given epsilon, then halved this many times minus one.
_RDP_ATTEMPTS = 6
#: Points per chunk in the vectorised queries (bounds every temporary).
_CHUNK_POINTS = 1 << 20
#: Polar-angle margin (radians) added on both sides of an angular sector.
_RAY_MARGIN = 1e-9
#: How far (in units of ``tol``) the sorting centre must lie inside an edge for sector pruning.
_CENTER_MARGIN = 64.0
#: Below this many points the qhull pre-filter is not worth a pass.
_PREFILTER_MIN_POINTS = 16384
#: About this many points form the sample whose hull pre-filters qhull's input.
_PREFILTER_SAMPLE = 4096


@dataclass(frozen=True)
class HullFit:
    """Result of :func:`fit_hull`.

    Every polygon is a float64 ``(K, 2)`` array in radians, counter-clockwise, starting at its
    lexicographically smallest vertex (smallest flexion, then smallest abduction).

    Attributes:
        vertices: ``(V, 2)`` final polygon, ``V >= 3``; a subset of ``rdp``'s vertices.
        exact: ``(E, 2)`` exact convex hull of the finite input points.
        rdp: ``(R, 2)`` polygon after Ramer–Douglas–Peucker; a subset of ``exact``'s vertices.
        coverage: fraction of ALL input points (non-finite ones count as outside) inside or on
            ``vertices``, exactly as :func:`points_in_polygon` counts them.
        area: area of ``vertices`` in rad².
        rdp_epsilon: RDP epsilon actually used, radians; ``0.0`` when RDP was not applied
            (``coverage == 1``, degenerate input, or fallback to the exact hull).
    """

    vertices: np.ndarray
    exact: np.ndarray
    rdp: np.ndarray
    coverage: float
    area: float
    rdp_epsilon: float


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def fit_hull(points: np.ndarray, coverage: float = 0.999, rdp_epsilon: float = 0.005) -> HullFit:
    """Smallest simplified convex polygon still covering a fraction ``coverage`` of ``points``.

    Args:
        points: ``(M, 2)`` points (flexion, abduction) in radians, ``M >= 1``; non-finite rows
            are ignored for the geometry and count as not covered.
        coverage: target fraction ``c`` in ``[0, 1]``. ``1.0`` returns the exact hull unchanged.
        rdp_epsilon: RDP tolerance in radians (``>= 0``); halved up to five times when the RDP
            polygon would cover fewer than ``c`` of the points, then the exact hull is used.

    Returns:
        A :class:`HullFit`. Degenerate point sets (fewer than three distinct or all collinear
        finite points, or none finite) give their bounding box padded by 1e-6 rad on each side.

    Raises:
        ValueError: empty input, wrong shape, or parameters out of range.
    """
    return _fit_hull(points, coverage, rdp_epsilon, history=None)


def flexion_center(flexion: np.ndarray) -> float:
    """Centre of circular flexion data: the point opposite the widest empty arc, in (−π, π].

    Args:
        flexion: flexion angles in radians, any shape; non-finite values are ignored.

    Returns:
        The centre in radians; ``0.0`` when there is no finite value. Ties between equally
        wide arcs go to the first one in sorted order.
    """
    values = np.asarray(flexion, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0
    ordered = np.sort(_wrap_to_pi(values))
    gaps = np.empty_like(ordered)
    gaps[:-1] = np.diff(ordered)
    gaps[-1] = ordered[0] + TWO_PI - ordered[-1]
    widest = int(np.argmax(gaps))
    midpoint = ordered[widest] + 0.5 * gaps[widest]
    return float(_wrap_to_pi(np.float64(midpoint + math.pi)))


def unwrap_flexion(flexion: np.ndarray, center: np.ndarray | float) -> np.ndarray:
    """Map flexion into ``(center − π, center + π]`` by adding a multiple of 2π.

    The result is ``center + w(flexion − center)`` with ``w(d) = d + 2π·floor((π − d) / 2π)``,
    evaluated as ``flexion + 2π·k`` so that values needing no shift are returned bit for bit.

    Args:
        flexion: radians, any shape.
        center: radians, broadcastable against ``flexion`` (e.g. ``(15,)`` against ``(N, 15)``).

    Returns:
        float64 array of the broadcast shape, radians. Non-finite input stays non-finite.
    """
    values = np.asarray(flexion, dtype=np.float64)
    centre = np.asarray(center, dtype=np.float64)
    turns = np.floor((math.pi - (values - centre)) / TWO_PI)
    return values + TWO_PI * turns


def points_in_polygon(points: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Which points lie inside or on a convex counter-clockwise polygon.

    Args:
        points: ``(..., 2)`` points in radians.
        vertices: ``(V, 2)`` convex polygon, counter-clockwise, ``V >= 3``, radians.

    Returns:
        ``(...)`` bool; points within ``1e-12 * max(1, max |vertex|)`` of an edge count as
        inside, non-finite points as outside.

    Raises:
        ValueError: wrong shapes, non-finite vertices, or a polygon that is not
            counter-clockwise with positive area.
    """
    polygon = _ConvexPolygon(vertices)
    flat, lead_shape = _flatten_points(points)
    inside = np.empty(len(flat), dtype=bool)
    for start in range(0, len(flat), _CHUNK_POINTS):
        chunk = flat[start : start + _CHUNK_POINTS]
        inside[start : start + len(chunk)] = polygon.contains(chunk[:, 0], chunk[:, 1])
    return inside.reshape(lead_shape)


def distance_to_polygon(points: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Euclidean distance (radians) from each point to a convex counter-clockwise polygon.

    Args:
        points: ``(..., 2)`` points in radians.
        vertices: ``(V, 2)`` convex polygon, counter-clockwise, ``V >= 3``, radians.

    Returns:
        ``(...)`` float64 ``>= 0``: exactly ``0.0`` where :func:`points_in_polygon` is true,
        the distance to the polygon boundary otherwise, ``inf`` for non-finite points.
    """
    polygon = _ConvexPolygon(vertices)
    flat, lead_shape = _flatten_points(points)
    distance = np.zeros(len(flat), dtype=np.float64)
    for start in range(0, len(flat), _CHUNK_POINTS):
        chunk = flat[start : start + _CHUNK_POINTS]
        x, y = chunk[:, 0], chunk[:, 1]
        outside = np.flatnonzero(~polygon.contains(x, y))
        if outside.size:
            distance[start + outside] = polygon.boundary_distance(x[outside], y[outside])
    return distance.reshape(lead_shape)


def greedy_first_failure(points: np.ndarray, vertices: np.ndarray, coverage: float) -> np.ndarray:
    """The public reference implementation's greedy, for comparison with :func:`fit_hull`.

    Walks the vertices in the given order and removes each one while the polygon without it
    still covers at least ``coverage`` of the points and more than three vertices remain; stops
    at the FIRST vertex whose removal would drop coverage below ``coverage``.

    Args:
        points: ``(M, 2)`` points in radians.
        vertices: ``(V, 2)`` convex counter-clockwise starting polygon (e.g. ``HullFit.rdp``).
        coverage: target fraction in ``[0, 1]``.

    Returns:
        ``(W, 2)`` float64 remaining vertices in their original (counter-clockwise) order.
    """
    _check_coverage(coverage)
    cloud = _as_point_cloud(points)
    required = _required_count(len(cloud), coverage)
    polygon = np.array(vertices, dtype=np.float64)
    position = 0
    while len(polygon) > 3 and position < len(polygon):
        candidate = np.delete(polygon, position, axis=0)
        if np.count_nonzero(points_in_polygon(cloud, candidate)) < required:
            break
        polygon = candidate
    return polygon


# --------------------------------------------------------------------------------------------
# Fit pipeline
# --------------------------------------------------------------------------------------------


def _fit_hull(
    points: np.ndarray,
    coverage: float,
    rdp_epsilon: float,
    history: list[tuple[np.ndarray, int]] | None,
) -> HullFit:
    """:func:`fit_hull`; appends ``(polygon, bookkept covered count)`` per removal to history."""
    _check_coverage(coverage)
    if not (math.isfinite(rdp_epsilon) and rdp_epsilon >= 0.0):
        raise ValueError(f"rdp_epsilon must be a finite number >= 0 (radians), got {rdp_epsilon}")
    cloud = _as_point_cloud(points)
    total = len(cloud)
    x, y = _finite_columns(cloud)
    required = _required_count(total, coverage)

    if x.size < 3:
        return _degenerate_fit(x, y, total)
    index = _AngularIndex(x, y)
    exact = _exact_hull(index)
    if exact is None:
        return _degenerate_fit(x, y, total)
    if coverage >= 1.0:
        return _make_fit(exact, exact, exact, _count_inside(x, y, exact), total, 0.0)

    tol = _tolerance(exact)
    rdp_keep, epsilon_used, covered = _simplify_rdp(exact, rdp_epsilon, index, tol, required)
    simplified = exact[rdp_keep]
    greedy = _BestFirstGreedy(simplified, index, covered, required, tol)
    greedy.run(history)
    final = greedy.polygon()
    covered_count = _count_inside(index.x, index.y, final)
    while covered_count < required and greedy.undo_last_removal():
        final = greedy.polygon()
        covered_count = _count_inside(index.x, index.y, final)
    return _make_fit(final, simplified, exact, covered_count, total, epsilon_used)


def _degenerate_fit(x: np.ndarray, y: np.ndarray, total: int) -> HullFit:
    """Padded bounding box as all three polygons (fewer than 3 distinct or collinear points)."""
    box = _padded_box(x, y)
    return _make_fit(box, box, box, _count_inside(x, y, box), total, 0.0)


def _make_fit(
    final: np.ndarray,
    simplified: np.ndarray,
    exact: np.ndarray,
    covered: int,
    total: int,
    eps: float,
) -> HullFit:
    """Package the three polygons (canonically rotated, independent copies) into a HullFit."""
    vertices = _start_at_lexicographic_min(final)
    return HullFit(
        vertices=vertices,
        exact=_start_at_lexicographic_min(exact),
        rdp=_start_at_lexicographic_min(simplified),
        coverage=covered / total,
        area=float(_signed_area(vertices)),
        rdp_epsilon=float(eps),
    )


def _simplify_rdp(
    exact: np.ndarray, epsilon: float, index: _AngularIndex, tol: float, required: int
) -> tuple[np.ndarray, float, np.ndarray]:
    """RDP with epsilon halving until coverage holds, else the exact hull.

    Returns the kept exact-hull vertex indices ``(R,)``, the epsilon used (0.0 for the exact
    hull) and the covered mask ``(index.size,)`` of the chosen polygon in ``index`` order.
    """
    for _ in range(_RDP_ATTEMPTS):
        if epsilon <= 0.0:
            break
        keep = _rdp_ring(exact, epsilon)
        if keep.size >= 3:
            covered = _covered_mask(exact[keep], index, tol)
            if np.count_nonzero(covered) >= required:
                return keep, epsilon, covered
        epsilon *= 0.5
    keep = np.arange(len(exact))
    return keep, 0.0, _covered_mask(exact, index, tol)


def _rdp_ring(ring: np.ndarray, epsilon: float) -> np.ndarray:
    """Indices of the vertices of a closed ring ``(E, 2)`` kept by RDP at ``epsilon``."""
    closed = np.vstack([ring, ring[:1]])
    mask = rdp(closed, epsilon=epsilon, dist=_rdp_distance, algo="iter", return_mask=True)
    return np.flatnonzero(mask[:-1])


def _rdp_distance(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    """``rdp.pldist`` without numpy's deprecated 2-D ``cross``: distance to the line start–end."""
    px, py = float(point[0]), float(point[1])
    sx, sy = float(start[0]), float(start[1])
    dx, dy = float(end[0]) - sx, float(end[1]) - sy
    if dx == 0.0 and dy == 0.0:
        return math.hypot(px - sx, py - sy)
    return abs(dx * (sy - py) - dy * (sx - px)) / math.hypot(dx, dy)


def _covered_mask(polygon: np.ndarray, index: _AngularIndex, tol: float) -> np.ndarray:
    """Inside mask of ``index``'s points for ``polygon``; each edge tests its sector only."""
    covered = np.ones(index.size, dtype=bool)
    nx, ny, d = _edge_lines(polygon, np.roll(polygon, -1, axis=0))
    use_sectors = bool(np.all(index.center_slack(nx, ny, d) > _CENTER_MARGIN * tol))
    phi = index.angles_of(polygon)
    for k in range(len(polygon)):
        if use_sectors:
            scopes = index.sector_slices(phi[k], phi[(k + 1) % len(polygon)])
        else:
            scopes = (slice(None),)
        for scope in scopes:
            slack = _slack(index.x[scope], index.y[scope], nx[k], ny[k], d[k])
            covered[scope] &= slack >= -tol
    return covered


class _AngularIndex:
    """Finite points sorted by polar angle around their mean (an interior point of the hull).

    ``x``, ``y``, ``theta`` are ``(size,)`` float64 in that order; ``theta`` in (−π, π].
    """

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.cx = float(x.mean())
        self.cy = float(y.mean())
        theta = np.arctan2(y - self.cy, x - self.cx)
        theta[theta == -math.pi] = math.pi
        order = np.argsort(theta)
        self.theta = theta[order]
        self.x = x[order]
        self.y = y[order]
        self.size = len(order)

    def angles_of(self, vertices: np.ndarray) -> np.ndarray:
        """Polar angles ``(K,)`` of ``(K, 2)`` vertices around the centre, radians."""
        return np.arctan2(vertices[:, 1] - self.cy, vertices[:, 0] - self.cx)

    def center_slack(self, nx: np.ndarray, ny: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Signed distance of the centre to each line (positive = inner side)."""
        return self.cx * nx + self.cy * ny - d

    def sector_slices(
        self, phi_from: float, phi_to: float, margin: float = _RAY_MARGIN
    ) -> tuple[slice, ...]:
        """Index ranges of the points in the CCW sector ``phi_from -> phi_to`` (< π wide).

        The sector is widened by ``margin`` radians on both sides (narrowed when negative);
        zero, one or two slices (wrap-around).
        """
        span = (phi_to - phi_from) % TWO_PI + 2.0 * margin
        if span <= 0.0:
            return ()
        start = (phi_from - margin + math.pi) % TWO_PI - math.pi
        stop = start + span
        low = int(np.searchsorted(self.theta, start, side="left"))
        if stop <= math.pi:
            return (slice(low, int(np.searchsorted(self.theta, stop, side="right"))),)
        high = int(np.searchsorted(self.theta, stop - TWO_PI, side="right"))
        return (slice(low, self.size), slice(0, high))


class _BestFirstGreedy:
    """Best-first vertex removal on a convex CCW polygon with cached triangle losses.

    ``loss[v]`` is the number of currently covered points beyond the chord
    ``prev(v) -> next(v)``; the vertex with the smallest loss (then smallest position) is
    removed while the covered count stays ``>= required`` and more than three vertices remain.
    """

    def __init__(
        self,
        polygon: np.ndarray,
        index: _AngularIndex,
        covered: np.ndarray,
        required: int,
        tol: float,
    ) -> None:
        count = len(polygon)
        self.polygon_vertices = polygon
        self.index = index
        self.covered = covered
        self.tol = tol
        self.covered_count = int(np.count_nonzero(covered))
        self.required = required
        self.phi = index.angles_of(polygon)
        self.prev = (np.arange(count) - 1) % count
        self.next = (np.arange(count) + 1) % count
        self.alive = np.ones(count, dtype=bool)
        self.alive_count = count
        self.removed: list[int] = []
        nx, ny, d = _edge_lines(polygon, np.roll(polygon, -1, axis=0))
        self.use_sectors = bool(np.all(index.center_slack(nx, ny, d) > _CENTER_MARGIN * tol))
        self.loss = np.array([self._loss(v) for v in range(count)], dtype=np.int64)

    def run(self, history: list[tuple[np.ndarray, int]] | None = None) -> None:
        """Remove vertices best-first until none can go; optionally record each step."""
        unavailable = np.iinfo(np.int64).max
        while self.alive_count > 3:
            candidates = np.where(self.alive, self.loss, unavailable)
            vertex = int(np.argmin(candidates))
            if candidates[vertex] > self.covered_count - self.required:
                break
            self._remove(vertex)
            if history is not None:
                history.append((self.polygon(), self.covered_count))

    def polygon(self) -> np.ndarray:
        """Current polygon ``(V, 2)``, CCW, in the original vertex order."""
        return self.polygon_vertices[self.alive]

    def undo_last_removal(self) -> bool:
        """Put the last removed vertex back (safety net); False when nothing was removed."""
        if not self.removed:
            return False
        self.alive[self.removed.pop()] = True
        self.alive_count += 1
        return True

    def _chord_scope(
        self, vertex: int
    ) -> tuple[tuple[float, float, float], tuple[slice, ...], bool]:
        """Line of the chord replacing ``vertex``, the point ranges to test, centre inside?"""
        a, b = int(self.prev[vertex]), int(self.next[vertex])
        vertices = self.polygon_vertices
        nx, ny, d = (float(c[0]) for c in _edge_lines(vertices[a : a + 1], vertices[b : b + 1]))
        centre_inside = self.index.cx * nx + self.index.cy * ny - d > _CENTER_MARGIN * self.tol
        if self.use_sectors and centre_inside:
            scopes = self.index.sector_slices(float(self.phi[a]), float(self.phi[b]))
        else:
            scopes = (slice(None),)
        return (nx, ny, d), scopes, centre_inside

    def _lost(self, line: tuple[float, float, float], scope: slice) -> np.ndarray:
        """Mask over ``scope`` of covered points strictly beyond ``line``."""
        slack = _slack(self.index.x[scope], self.index.y[scope], *line)
        return (slack < -self.tol) & self.covered[scope]

    def _loss(self, vertex: int) -> int:
        line, scopes, _ = self._chord_scope(vertex)
        return sum(int(np.count_nonzero(self._lost(line, scope))) for scope in scopes)

    def _remove(self, vertex: int) -> None:
        line, scopes, centre_inside = self._chord_scope(vertex)
        for scope in scopes:
            lost = self._lost(line, scope)
            self.covered_count -= int(np.count_nonzero(lost))
            self.covered[scope] &= ~lost
        self.use_sectors = self.use_sectors and centre_inside
        a, b = int(self.prev[vertex]), int(self.next[vertex])
        self.next[a], self.prev[b] = b, a
        self.alive[vertex] = False
        self.alive_count -= 1
        self.removed.append(vertex)
        if self.alive_count > 3:
            self.loss[a] = self._loss(a)
            self.loss[b] = self._loss(b)


# --------------------------------------------------------------------------------------------
# Exact hull and degenerate fallback
# --------------------------------------------------------------------------------------------


def _exact_hull(index: _AngularIndex) -> np.ndarray | None:
    """Exact convex hull ``(E, 2)`` CCW from the lexicographic minimum; None if degenerate."""
    if index.size < 3:
        return None
    cand_x, cand_y = _hull_candidates(index)
    vertices = _qhull_ccw(cand_x, cand_y)
    return None if vertices is None else _start_at_lexicographic_min(vertices)


def _qhull_ccw(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """qhull's hull vertices ``(E, 2)`` counter-clockwise; None when qhull finds it flat."""
    if x.size < 3:
        return None
    try:
        hull = ConvexHull(np.column_stack([x, y]))
    except (QhullError, ValueError):
        return None
    vertices = hull.points[hull.vertices]
    area = _signed_area(vertices)
    if len(vertices) < 3 or area == 0.0 or not math.isfinite(area):
        return None
    return vertices[::-1] if area < 0.0 else vertices


def _hull_candidates(index: _AngularIndex) -> tuple[np.ndarray, np.ndarray]:
    """Points that may be exact-hull vertices: all but those strictly inside a sample's hull.

    The hull of every ``step``-th point (in angular order) lies inside the exact hull; a point
    strictly inside it, away from the sector rays, cannot be a vertex. Each edge of the sample
    hull only tests the points of its own angular sector.
    """
    if index.size < _PREFILTER_MIN_POINTS:
        return index.x, index.y
    step = index.size // _PREFILTER_SAMPLE
    sample = _qhull_ccw(index.x[::step], index.y[::step])
    if sample is None:
        return index.x, index.y
    nx, ny, d = _edge_lines(sample, np.roll(sample, -1, axis=0))
    margin = _CENTER_MARGIN * _tolerance(sample)
    if not np.all(index.center_slack(nx, ny, d) > margin):
        return index.x, index.y
    phi = index.angles_of(sample)
    keep = np.ones(index.size, dtype=bool)
    for k in range(len(sample)):
        next_phi = phi[(k + 1) % len(sample)]
        for scope in index.sector_slices(phi[k], next_phi, margin=-_RAY_MARGIN):
            keep[scope] = _slack(index.x[scope], index.y[scope], nx[k], ny[k], d[k]) <= margin
    return index.x[keep], index.y[keep]


def _padded_box(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bounding box of the points padded by ``_DEGENERATE_PAD``; ``(4, 2)`` CCW."""
    if x.size == 0:
        x0 = x1 = y0 = y1 = 0.0
    else:
        x0, x1, y0, y1 = float(x.min()), float(x.max()), float(y.min()), float(y.max())
    x0, y0 = x0 - _DEGENERATE_PAD, y0 - _DEGENERATE_PAD
    x1, y1 = x1 + _DEGENERATE_PAD, y1 + _DEGENERATE_PAD
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Polygon geometry shared by the queries and the fit
# --------------------------------------------------------------------------------------------


class _ConvexPolygon:
    """Validated convex CCW polygon with edge lines, tolerance and an inscribed box.

    The box (centre ``cx, cy``, half sizes ``hx, hy``) lies inside the polygon, so points
    strictly inside it skip the per-edge tests; everything else is tested edge by edge.
    """

    def __init__(self, vertices: np.ndarray) -> None:
        ring = np.asarray(vertices, dtype=np.float64)
        if ring.ndim != 2 or ring.shape[1] != 2:
            raise ValueError(f"polygon vertices must have shape (V, 2), got {ring.shape}")
        if not np.all(np.isfinite(ring)):
            raise ValueError("polygon vertices must be finite")
        ring = ring[np.any(ring != np.roll(ring, -1, axis=0), axis=1)]
        if len(ring) < 3 or not _signed_area(ring) > 0.0:
            raise ValueError(
                "polygon vertices must form a counter-clockwise convex polygon with at least "
                "3 distinct vertices and positive area"
            )
        self.vertices = ring
        self.tol = _tolerance(ring)
        self.nx, self.ny, self.d = _edge_lines(ring, np.roll(ring, -1, axis=0))
        self._fit_inscribed_box()

    def _fit_inscribed_box(self) -> None:
        self.cx, self.cy = _area_centroid(self.vertices)
        half_x = 0.5 * float(np.ptp(self.vertices[:, 0]))
        half_y = 0.5 * float(np.ptp(self.vertices[:, 1]))
        centre_slack = self.cx * self.nx + self.cy * self.ny - self.d - self.tol
        reach = np.abs(self.nx) * half_x + np.abs(self.ny) * half_y
        scale = max(0.0, float(np.min(centre_slack / reach)))
        self.hx, self.hy = scale * half_x, scale * half_y

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Inside-or-on mask for 1-D coordinate arrays."""
        inside = np.abs(x - self.cx) < self.hx
        inside &= np.abs(y - self.cy) < self.hy
        rest = np.flatnonzero(~inside)
        if rest.size:
            inside[rest] = self._satisfies_all_edges(x[rest], y[rest])
        return inside

    def _satisfies_all_edges(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ok = np.ones(x.shape, dtype=bool)
        for k in range(len(self.nx)):
            ok &= _slack(x, y, self.nx[k], self.ny[k], self.d[k]) >= -self.tol
        return ok

    def boundary_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Distance to the nearest edge segment; ``inf`` for non-finite points."""
        start = self.vertices
        edge = np.roll(start, -1, axis=0) - start
        best = np.full(x.shape, np.inf)
        for k in range(len(start)):
            dx, dy = x - start[k, 0], y - start[k, 1]
            t = (dx * edge[k, 0] + dy * edge[k, 1]) / (edge[k, 0] ** 2 + edge[k, 1] ** 2)
            np.clip(t, 0.0, 1.0, out=t)
            np.fmin(best, np.hypot(dx - t * edge[k, 0], dy - t * edge[k, 1]), out=best)
        return best


def _edge_lines(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inward (left) unit normals and offsets of the lines ``a[k] -> b[k]``; ``(K,)`` each.

    A point ``p`` is on the inner side of line ``k`` when ``_slack(p, k) >= 0``.
    """
    ex = b[:, 0] - a[:, 0]
    ey = b[:, 1] - a[:, 1]
    length = np.hypot(ex, ey)
    nx = -ey / length
    ny = ex / length
    return nx, ny, nx * a[:, 0] + ny * a[:, 1]


def _slack(x: np.ndarray, y: np.ndarray, nx: float, ny: float, d: float) -> np.ndarray:
    """Signed distance of points to a line (positive on the inner side). One formula for all."""
    return x * nx + y * ny - d


def _tolerance(vertices: np.ndarray) -> float:
    """Inside tolerance for a polygon: ``1e-12 * max(1, max |vertex|)`` radians."""
    return _REL_TOL * max(1.0, float(np.max(np.abs(vertices))))


def _count_inside(x: np.ndarray, y: np.ndarray, polygon: np.ndarray) -> int:
    """Number of points (given as columns) inside or on ``polygon``."""
    shape = _ConvexPolygon(polygon)
    count = 0
    for start in range(0, x.size, _CHUNK_POINTS):
        window = slice(start, start + _CHUNK_POINTS)
        count += int(np.count_nonzero(shape.contains(x[window], y[window])))
    return count


def _signed_area(vertices: np.ndarray) -> float:
    """Shoelace signed area of a ``(V, 2)`` ring (positive when counter-clockwise)."""
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _area_centroid(vertices: np.ndarray) -> tuple[float, float]:
    """Area centroid of a ``(V, 2)`` ring with positive area."""
    x, y = vertices[:, 0], vertices[:, 1]
    x_next, y_next = np.roll(x, -1), np.roll(y, -1)
    cross = x * y_next - x_next * y
    area6 = 3.0 * float(cross.sum())
    return float(((x + x_next) * cross).sum() / area6), float(((y + y_next) * cross).sum() / area6)


def _start_at_lexicographic_min(vertices: np.ndarray) -> np.ndarray:
    """Copy of a ring rotated to start at its smallest vertex (by x, then y)."""
    first = int(np.lexsort((vertices[:, 1], vertices[:, 0]))[0])
    return np.ascontiguousarray(np.roll(vertices, -first, axis=0), dtype=np.float64)


def _wrap_to_pi(angles: np.ndarray) -> np.ndarray:
    """Angles mapped into (−π, π]: ``a + 2π·floor((π − a) / 2π)``."""
    return angles + TWO_PI * np.floor((math.pi - angles) / TWO_PI)


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _check_coverage(coverage: float) -> None:
    if not 0.0 <= coverage <= 1.0:
        raise ValueError(f"coverage must be in [0, 1], got {coverage}")


def _as_point_cloud(points: np.ndarray) -> np.ndarray:
    """``(M, 2)`` float64 view/copy of the input; rejects other shapes and ``M == 0``."""
    cloud = np.asarray(points, dtype=np.float64)
    if cloud.ndim != 2 or cloud.shape[1] != 2:
        raise ValueError(f"points must have shape (M, 2), got {cloud.shape}")
    if len(cloud) == 0:
        raise ValueError("points is empty: a hull needs at least one point")
    return cloud


def _flatten_points(points: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(N, 2)`` float64 rows of a ``(..., 2)`` input and its leading shape."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 0 or array.shape[-1] != 2:
        raise ValueError(f"points must have shape (..., 2), got {array.shape}")
    return array.reshape(-1, 2), array.shape[:-1]


def _finite_columns(cloud: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous x and y columns of the rows whose both coordinates are finite."""
    x = np.ascontiguousarray(cloud[:, 0])
    y = np.ascontiguousarray(cloud[:, 1])
    if math.isfinite(float(x.sum()) + float(y.sum())):
        return x, y
    finite = np.isfinite(x) & np.isfinite(y)
    return x[finite], y[finite]


def _required_count(total: int, coverage: float) -> int:
    """Smallest number of covered points ``k`` with ``k / total >= coverage`` (as floats)."""
    k = min(total, max(0, math.ceil(coverage * total)))
    while k > 0 and (k - 1) / total >= coverage:
        k -= 1
    while k < total and k / total < coverage:
        k += 1
    return k
