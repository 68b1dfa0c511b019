"""Merge several limits bundles into one without refitting: the union of their limits.

Units and shapes as :mod:`bmc_calib.limits`: angles in radians, polygons ``(V, 2)``
counter-clockwise in the (unwrapped flexion, abduction) plane, bone lengths in the bundles'
common length unit.

Rules (also in ``docs/user-guide.md``):

- Inputs must agree on skeleton (name, joint names, parents), normalisation, length unit,
  angle unit and item names; otherwise :class:`BadInputError` naming both files.
- Intervals: ``[min of the mins, max of the maxes]``; tolerances and the bone lengths'
  within-person spread (the personal check's allowance): the larger, item by item.
- Flexion centres: per joint, when every input has the same centre it is kept. Otherwise the
  merged centre lies opposite the widest arc of the flexion circle that no input's hull, exact
  hull or box touches, so every input's regions unwrap contiguously around it (each input's
  polygons are shifted by the multiple of 2π that puts them in the merged window). When the
  inputs' regions cover the whole circle, no such centre exists: each input's polygons are
  shifted to keep most of their area in the window and clipped to it, and a warning says so.
- Hulls: the convex hull of the union of the inputs' (re-expressed) hull vertices. When one
  input's hull already contains every other input's hull, it is the merged hull unchanged (so
  merging a bundle with itself, or with a subset of its data, changes nothing). Otherwise the
  union hull goes through the Ramer–Douglas–Peucker step only, at the largest of the inputs'
  ``rdp_epsilon`` parameters (0.005 rad when none records one); no greedy step, as no data
  points are left to count coverage on. Every point of every input hull is then within that
  epsilon of the merged hull.
- Coverage (per joint and the root value) is reported as the minimum of the inputs': each
  input's points remain covered at least as well as in that input, up to the RDP epsilon.
- Exact hulls (kept when every input has them): the hull of the union of the inputs' exact
  hulls, which is the exact hull of all their data. The stored "RDP" hull of a merged bundle
  is the merged hull itself (it is the RDP step's output; nothing follows it).
- Boxes: the union (smallest box holding every input's re-expressed box).
- Provenance: the inputs' sources concatenated; parameters ``merged_from`` (a JSON list of
  ``{"path": …, "content_digest": "sha256:…"}``, one per input, in order; the inputs' own fit
  parameters stay in the input bundles) and ``merge_rdp_epsilon``.
- Statistics: summed frame counts and ``tolerance_method``; held-out figures of the inputs do
  not combine and are dropped (they remain in the input bundles).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely

from bmc_calib import __version__, hulls
from bmc_calib.bundle import inspect_bundle
from bmc_calib.errors import BadInputError, UsageError
from bmc_calib.limits import Interval, JointAngleLimits, Limits, Provenance

__all__ = [
    "DEFAULT_RDP_EPSILON",
    "MergeResult",
    "merge_bundles",
    "merge_limits",
    "polygon_area",
    "rewrap_polygon",
]

TWO_PI = 2.0 * math.pi
#: RDP epsilon (radians) when no input records one (the fit default).
DEFAULT_RDP_EPSILON = 0.005
#: Slack (radians) when testing that a polygon lies inside a flexion window.
_WINDOW_SLACK = 1e-9


@dataclass
class MergeResult:
    """The merged limits and human-readable warnings (the library never prints)."""

    limits: Limits
    warnings: list[str] = field(default_factory=list)


def merge_bundles(paths: Sequence[str | os.PathLike[str]]) -> MergeResult:
    """Read (and verify) the bundles at ``paths`` and merge them; see the module docstring."""
    labels = [os.fspath(p) for p in paths]
    if len(labels) < 2:
        raise UsageError("merge needs at least two bundles")
    inputs, digests = [], []
    for label in labels:
        limits, info = inspect_bundle(label)
        problem = info.problem()
        if problem is not None:
            raise BadInputError(f"{problem}; refusing to merge a modified bundle")
        inputs.append(limits)
        digests.append(info.digest_computed)
    return merge_limits(inputs, labels, digests)


def merge_limits(
    inputs: Sequence[Limits],
    labels: Sequence[str],
    digests: Sequence[str] | None = None,
    rdp_epsilon: float | None = None,
) -> MergeResult:
    """Union of ``inputs`` (labelled by ``labels`` in messages and provenance).

    ``digests`` are the inputs' content digests, recorded in ``merged_from``; ``rdp_epsilon``
    (radians) overrides the rule of the module docstring.
    """
    if len(inputs) != len(labels) or not inputs:
        raise ValueError("one label per input, at least one input")
    _check_compatible(inputs, labels)
    eps = _rdp_epsilon(inputs) if rdp_epsilon is None else float(rdp_epsilon)
    warnings: list[str] = []
    first = inputs[0]
    merged = Limits(
        bone_length=_union_interval([x.bone_length for x in inputs]),
        palm_curvature=_union_interval([x.palm_curvature for x in inputs]),
        palm_angle=_union_interval([x.palm_angle for x in inputs]),
        joint_angle=_union_regions([x.joint_angle for x in inputs], eps, warnings),
        normalization=first.normalization,
        length_unit=first.length_unit,
        angle_unit=first.angle_unit,
        coverage=min(x.coverage for x in inputs),
        skeleton_name=first.skeleton_name,
        joint_names=tuple(first.joint_names),
        parents=tuple(first.parents),
        provenance=_provenance(inputs, labels, digests, eps),
        statistics=_statistics(inputs),
    )
    return MergeResult(merged, warnings)


# --------------------------------------------------------------------------- compatibility
def _check_compatible(inputs: Sequence[Limits], labels: Sequence[str]) -> None:
    checks = (
        ("skeleton", lambda x: x.skeleton_name),
        ("skeleton joints", lambda x: (tuple(x.joint_names), tuple(x.parents))),
        ("normalisation", lambda x: x.normalization),
        ("length unit", lambda x: x.length_unit),
        ("angle unit", lambda x: x.angle_unit),
        ("bone names", lambda x: tuple(x.bone_length.names)),
        ("palm curvature names", lambda x: tuple(x.palm_curvature.names)),
        ("palm angle names", lambda x: tuple(x.palm_angle.names)),
        ("joint-angle names", lambda x: tuple(x.joint_angle.names)),
    )
    for what, key in checks:
        reference = key(inputs[0])
        for limits, label in zip(inputs[1:], labels[1:], strict=True):
            value = key(limits)
            if value != reference:
                shown = f" ({reference!r} vs {value!r})" if isinstance(reference, str) else ""
                raise BadInputError(
                    f"cannot merge {labels[0]} and {label}: different {what}{shown}; "
                    "merge only bundles fitted the same way"
                )


def _rdp_epsilon(inputs: Sequence[Limits]) -> float:
    values = [
        float(v)
        for x in inputs
        if isinstance(v := x.provenance.parameters.get("rdp_epsilon"), (int, float))
        and not isinstance(v, bool)
        and math.isfinite(float(v))
        and float(v) >= 0
    ]
    return max(values) if values else DEFAULT_RDP_EPSILON


# --------------------------------------------------------------------------- intervals
def _union_interval(intervals: Sequence[Interval]) -> Interval:
    spreads = [i.within_person for i in intervals if i.within_person is not None]
    return Interval(
        names=tuple(intervals[0].names),
        min=np.min([i.min for i in intervals], axis=0),
        max=np.max([i.max for i in intervals], axis=0),
        tolerance=np.max([i.tolerance for i in intervals], axis=0),
        # the personal check's allowance widens like a tolerance (dropping it fell back to
        # the 15 % floor and flagged many more poses than either input)
        within_person=np.max(spreads, axis=0) if spreads else None,
    )


# --------------------------------------------------------------------------- regions
def _union_regions(
    regions: Sequence[JointAngleLimits], eps: float, warnings: list[str]
) -> JointAngleLimits:
    count = len(regions[0].names)
    keep_exact = all(r.exact_hulls is not None for r in regions)
    centers = np.empty(count)
    final, exact = [], []
    box_min, box_max = np.empty((count, 2)), np.empty((count, 2))
    clipped = []
    for a in range(count):
        parts = [_JointParts.of(r, a, keep_exact) for r in regions]
        centre, shifts, whole = _common_center(parts)
        centers[a] = centre
        if not whole:
            clipped.append(f"{regions[0].names[a]} ({math.degrees(centre):.1f}°)")
        placed = [p.placed(centre, k, clip=not whole) for p, k in zip(parts, shifts, strict=True)]
        final.append(_union_hull([p.hull for p in placed], eps))
        if keep_exact:
            exact.append(_union_hull([p.exact for p in placed], 0.0))
        box_min[a] = np.min([p.box[0] for p in placed], axis=0)
        box_max[a] = np.max([p.box[1] for p in placed], axis=0)
    if clipped:
        warnings.append(
            "the inputs' joint-angle regions cover the whole flexion circle for "
            f"{', '.join(clipped)} (merged flexion centre in brackets): no common unwrapping "
            "keeps every region whole, so the parts beyond ±180° of the centre were clipped"
        )
    return JointAngleLimits(
        names=tuple(regions[0].names),
        flexion_center=centers,
        hulls=final,
        coverage=np.min([r.coverage for r in regions], axis=0),
        area=np.array([polygon_area(h) for h in final]),
        tolerance=np.max([r.tolerance for r in regions], axis=0),
        box_min=box_min,
        box_max=box_max,
        exact_hulls=exact if keep_exact else None,
        rdp_hulls=[h.copy() for h in final] if keep_exact else None,
    )


@dataclass
class _JointParts:
    """One input's polygons of one joint, in that input's own unwrapping."""

    center: float
    hull: np.ndarray
    exact: np.ndarray | None
    box: np.ndarray  # (2, 2): [min, max] x [flexion, abduction]

    @classmethod
    def of(cls, regions: JointAngleLimits, a: int, keep_exact: bool) -> _JointParts:
        exact = regions.exact_hulls[a] if keep_exact and regions.exact_hulls else None
        box = np.stack([regions.box_min[a], regions.box_max[a]])
        return cls(float(regions.flexion_center[a]), regions.hulls[a], exact, box)

    def flexion_range(self) -> tuple[float, float]:
        columns = [self.hull[:, 0], self.box[:, 0]]
        if self.exact is not None:
            columns.append(self.exact[:, 0])
        values = np.concatenate(columns)
        return float(values.min()), float(values.max())

    def placed(self, center: float, shift: int, clip: bool) -> _JointParts:
        """These polygons shifted by ``shift`` turns (and clipped to ``center``'s window)."""
        offset = np.array([TWO_PI * shift, 0.0])

        def move(polygon: np.ndarray) -> np.ndarray:
            moved = polygon + offset
            if not clip:
                return moved
            clipped = _clip_to_window(moved, center)
            if clipped is None:  # no area inside the window: squeeze the flexion into it
                clipped = moved.copy()
                clipped[:, 0] = np.clip(clipped[:, 0], center - math.pi, center + math.pi)
            return clipped

        box = self.box + offset
        if clip:
            box[:, 0] = np.clip(box[:, 0], center - math.pi, center + math.pi)
        exact = None if self.exact is None else move(self.exact)
        return _JointParts(center, move(self.hull), exact, box)


def _common_center(parts: Sequence[_JointParts]) -> tuple[float, list[int], bool]:
    """Merged flexion centre, per-input shifts (turns of 2π), and whether nothing is clipped."""
    ranges = [p.flexion_range() for p in parts]
    centres = {p.center for p in parts}
    if len(centres) == 1:
        centre = centres.pop()
        if all(_inside_window(lo, hi, centre) for lo, hi in ranges):
            return centre, [0] * len(parts), True
    gap = _widest_uncovered_arc(ranges)
    if gap is not None:
        centre = float(_wrap(gap + math.pi))
        shifts = [_turns_into_window(lo, centre) for lo, _ in ranges]
        if all(
            _inside_window(lo + TWO_PI * k, hi + TWO_PI * k, centre)
            for (lo, hi), k in zip(ranges, shifts, strict=True)
        ):
            return centre, shifts, True
    # The regions cover the whole circle: centre on the circular mean of their midpoints and
    # shift each input to keep most of its flexion range inside the window.
    mids = np.array([0.5 * (lo + hi) for lo, hi in ranges])
    centre = float(_wrap(math.atan2(np.sin(mids).mean(), np.cos(mids).mean())))
    shifts = [_turns_into_window(0.5 * (lo + hi), centre) for lo, hi in ranges]
    return centre, shifts, False


def _inside_window(lo: float, hi: float, centre: float) -> bool:
    return lo >= centre - math.pi - _WINDOW_SLACK and hi <= centre + math.pi + _WINDOW_SLACK


def _turns_into_window(value: float, centre: float) -> int:
    """The integer k with ``value + 2πk`` in ``(centre − π, centre + π]``."""
    return math.floor((math.pi - (value - centre)) / TWO_PI)


def _wrap(angle: float) -> float:
    """``angle`` mapped into (−π, π]."""
    return angle + TWO_PI * math.floor((math.pi - angle) / TWO_PI)


def _widest_uncovered_arc(ranges: Sequence[tuple[float, float]]) -> float | None:
    """Midpoint (radians) of the widest arc of the circle outside every ``[lo, hi]``.

    ``None`` when the ranges cover the whole circle.
    """
    pieces = []
    for lo, hi in ranges:
        if hi - lo >= TWO_PI:
            return None
        start = lo % TWO_PI
        end = start + (hi - lo)
        if end > TWO_PI:  # split an arc that passes 2π into two pieces of [0, 2π]
            pieces += [(start, TWO_PI), (0.0, end - TWO_PI)]
        else:
            pieces.append((start, end))
    pieces.sort()
    merged: list[list[float]] = []
    for start, end in pieces:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    # gaps between neighbours, then the gap that wraps from the last piece to the first
    gaps = [(a[1], b[0] - a[1]) for a, b in itertools.pairwise(merged)]
    gaps.append((merged[-1][1], merged[0][0] + TWO_PI - merged[-1][1]))
    start, width = max(gaps, key=lambda gap: gap[1])
    return start + 0.5 * width if width > 0.0 else None


def _union_hull(polygons: Sequence[np.ndarray], eps: float) -> np.ndarray:
    """Hull of the union of ``polygons``; an input that contains all others is returned as is."""
    for i, candidate in enumerate(polygons):
        others = [p for j, p in enumerate(polygons) if j != i]
        if not others or np.all(hulls.points_in_polygon(np.concatenate(others), candidate)):
            return candidate.copy()
    union = hulls.fit_hull(np.concatenate(polygons), coverage=1.0).vertices
    if eps <= 0.0 or len(union) <= 3:
        return union
    keep = hulls._rdp_ring(union, eps)  # the fit's own RDP step on a closed ring
    return union[keep] if keep.size >= 3 and polygon_area(union[keep]) > 0 else union


# --------------------------------------------------------------------------- polygons
def polygon_area(vertices: np.ndarray) -> float:
    """Signed shoelace area of a ``(V, 2)`` ring, rad² (positive when counter-clockwise)."""
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def rewrap_polygon(
    polygon: np.ndarray, low: float = -math.pi, high: float = math.pi
) -> tuple[np.ndarray, float]:
    """Express a polygon inside the flexion strip ``[low, high]`` (``high − low = 2π``).

    The polygon is shifted by the multiple of 2π that keeps the largest part of its area in the
    strip, then clipped to it. Returns the ``(V, 2)`` counter-clockwise result (starting at its
    lexicographically smallest vertex) and the fraction of the area that was cut off
    (``0.0`` when the polygon already lies in the strip, which is then returned unchanged).
    """
    ring = np.asarray(polygon, dtype=np.float64)
    if ring[:, 0].min() >= low and ring[:, 0].max() <= high:
        return ring.copy(), 0.0
    centre = 0.5 * (low + high)
    area = polygon_area(ring)
    best = None
    for turns in range(-2, 3):
        moved = ring + np.array([TWO_PI * turns, 0.0])
        clipped = _clip_to_window(moved, centre, low, high)
        kept = polygon_area(clipped) if clipped is not None else 0.0
        if best is None or kept > best[1]:
            best = (clipped, kept)
    clipped, kept = best
    if clipped is None:  # a zero-area polygon: squeeze its flexion into the strip instead
        squeezed = ring.copy()
        squeezed[:, 0] = np.clip(squeezed[:, 0], low, high)
        return squeezed, 1.0
    lost = 0.0 if area <= 0 else max(0.0, 1.0 - kept / area)
    return clipped, lost


def _clip_to_window(
    polygon: np.ndarray, centre: float, low: float | None = None, high: float | None = None
) -> np.ndarray | None:
    """Intersection of a convex polygon with the strip ``low <= flexion <= high``.

    The strip defaults to the window ``[centre − π, centre + π]``. Returns ``None`` when the
    intersection has no area; the polygon unchanged when it lies in the strip.
    """
    lo = centre - math.pi if low is None else low
    hi = centre + math.pi if high is None else high
    if polygon[:, 0].min() >= lo and polygon[:, 0].max() <= hi:
        return polygon.copy()
    y_lo, y_hi = float(polygon[:, 1].min()) - 1.0, float(polygon[:, 1].max()) + 1.0
    piece = shapely.Polygon(polygon).intersection(shapely.box(lo, y_lo, hi, y_hi))
    if not isinstance(piece, shapely.Polygon) or piece.is_empty or piece.area <= 0.0:
        return None
    ring = np.asarray(shapely.geometry.polygon.orient(piece, 1.0).exterior.coords)[:-1]
    ring = ring[np.any(ring != np.roll(ring, -1, axis=0), axis=1)]
    if len(ring) < 3:
        return None
    first = int(np.lexsort((ring[:, 1], ring[:, 0]))[0])
    return np.ascontiguousarray(np.roll(ring, -first, axis=0), dtype=np.float64)


# --------------------------------------------------------------------------- provenance
def _provenance(
    inputs: Sequence[Limits], labels: Sequence[str], digests: Sequence[str] | None, eps: float
) -> Provenance:
    merged_from = [
        {"path": label, "content_digest": digests[i] if digests is not None else ""}
        for i, label in enumerate(labels)
    ]
    return Provenance(
        sources=[copy.deepcopy(s) for x in inputs for s in x.provenance.sources],
        parameters={
            "merged_from": json.dumps(merged_from, ensure_ascii=False),
            "merge_rdp_epsilon": eps,
            "tool_version": __version__,
        },
    )


def _statistics(inputs: Sequence[Limits]) -> dict[str, object]:
    stats: dict[str, object] = {"merged_inputs": len(inputs)}
    for name in ("frames_read", "frames_used", "frames_mirrored"):
        values = [x.statistics.get(name) for x in inputs]
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            stats[name] = int(sum(int(v) for v in values))
    methods = [str(x.statistics.get("tolerance_method", "unknown")) for x in inputs]
    unique = list(dict.fromkeys(methods))
    stats["tolerance_method"] = (
        "merged: the larger of the inputs' tolerances (" + "; ".join(unique) + ")"
    )
    return stats
