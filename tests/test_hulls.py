"""Tests of the hull pipeline and the polygon queries (DESIGN §5, §7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import ConvexHull

from bmc_calib import hulls
from bmc_calib.hulls import (
    HullFit,
    distance_to_polygon,
    fit_hull,
    flexion_center,
    greedy_first_failure,
    points_in_polygon,
    unwrap_flexion,
)

# --------------------------------------------------------------------------------------------
# Point clouds and helpers
# --------------------------------------------------------------------------------------------


def gaussian_cloud(seed: int, size: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(size, 2)) * [0.4, 0.15] + [0.6, -0.1]


def disk_cloud(seed: int, size: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    radius = np.sqrt(rng.uniform(size=size))
    angle = rng.uniform(0.0, 2.0 * np.pi, size=size)
    return np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])


def outlier_cloud(seed: int, size: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(size, 2)) * 0.2
    points[:6] = rng.normal(size=(6, 2)) * 1.2
    return points


def crescent_cloud(seed: int, size: int = 3000) -> np.ndarray:
    """A C-shaped band: its mean lies outside small-coverage polygons."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0.3 * np.pi, 1.9 * np.pi, size=size)
    radius = 1.0 + 0.02 * rng.normal(size=size)
    return np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])


CLOUDS = {"gaussian": gaussian_cloud, "disk": disk_cloud, "outliers": outlier_cloud}


def shapely_count(points: np.ndarray, vertices: np.ndarray) -> int:
    """Brute-force number of points inside or on the polygon, by shapely."""
    polygon = shapely.Polygon(vertices)
    return int(np.count_nonzero(shapely.covers(polygon, shapely.points(points))))


def assert_convex_ccw(vertices: np.ndarray) -> None:
    assert vertices.ndim == 2 and vertices.shape[1] == 2 and len(vertices) >= 3
    assert vertices.dtype == np.float64
    assert np.all(np.isfinite(vertices))
    edges = np.roll(vertices, -1, axis=0) - vertices
    turn = edges[:, 0] * np.roll(edges[:, 1], -1) - edges[:, 1] * np.roll(edges[:, 0], -1)
    assert np.all(turn >= -1e-12), "polygon is not convex counter-clockwise"
    assert hulls._signed_area(vertices) > 0.0


def rows(vertices: np.ndarray) -> set[tuple[float, float]]:
    return {(float(x), float(y)) for x, y in vertices}


def assert_same_fit(a: HullFit, b: HullFit) -> None:
    for name in ("vertices", "exact", "rdp"):
        first, second = getattr(a, name), getattr(b, name)
        assert first.shape == second.shape and first.tobytes() == second.tobytes(), name
    assert (a.coverage, a.area, a.rdp_epsilon) == (b.coverage, b.area, b.rdp_epsilon)


# --------------------------------------------------------------------------------------------
# fit_hull: invariants
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coverage", [0.999, 0.95])
@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_fit_hull_invariants(cloud: str, coverage: float) -> None:
    points = CLOUDS[cloud](seed=1)
    fit = fit_hull(points, coverage=coverage)

    for polygon in (fit.exact, fit.rdp, fit.vertices):
        assert_convex_ccw(polygon)
    assert shapely_count(points, fit.exact) == len(points)
    assert len(fit.vertices) <= len(fit.rdp) <= len(fit.exact)
    assert rows(fit.vertices) <= rows(fit.rdp) <= rows(fit.exact)

    brute = shapely_count(points, fit.vertices)
    assert fit.coverage == brute / len(points)
    assert fit.coverage >= coverage
    assert np.count_nonzero(points_in_polygon(points, fit.vertices)) == brute
    assert math.isclose(fit.area, shapely.Polygon(fit.vertices).area, rel_tol=1e-12)
    assert shapely_count(points, fit.rdp) >= coverage * len(points)


@pytest.mark.parametrize("on_circle", [0, 20_000])
def test_exact_hull_matches_qhull_on_large_cloud(on_circle: int) -> None:
    """The qhull pre-filter (sample hull + angular sectors) must not change the hull.

    Points on a circle are hull vertices lying barely outside the sample's hull.
    """
    rng = np.random.default_rng(3)
    angle = rng.uniform(0.0, 2.0 * np.pi, size=on_circle)
    circle = np.column_stack([np.cos(angle), np.sin(angle)])
    points = np.vstack([disk_cloud(seed=3, size=40_000), circle])
    index = hulls._AngularIndex(np.ascontiguousarray(points[:, 0]), points[:, 1].copy())
    exact = hulls._exact_hull(index)
    reference = points[ConvexHull(points).vertices]
    assert rows(exact) == rows(reference)
    if not on_circle:
        assert rows(fit_hull(points).exact) == rows(reference)


def test_float32_input_is_accepted() -> None:
    points = gaussian_cloud(seed=4).astype(np.float32)
    fit = fit_hull(points)
    assert fit.vertices.dtype == np.float64
    assert fit.coverage == shapely_count(points.astype(np.float64), fit.vertices) / len(points)


def test_non_finite_rows_count_as_uncovered() -> None:
    points = gaussian_cloud(seed=5, size=1000)
    points[[3, 10]] = [[np.nan, 0.0], [np.inf, 1.0]]
    exact_only = fit_hull(points, coverage=1.0)
    assert exact_only.coverage == 998 / 1000
    fit = fit_hull(points, coverage=0.99)
    assert fit.coverage >= 0.99
    assert (
        fit.coverage == shapely_count(points[np.isfinite(points).all(axis=1)], fit.vertices) / 1000
    )


def test_coverage_one_returns_exact_hull_unchanged() -> None:
    points = outlier_cloud(seed=6)
    fit = fit_hull(points, coverage=1.0, rdp_epsilon=0.5)
    assert np.array_equal(fit.vertices, fit.exact)
    assert np.array_equal(fit.rdp, fit.exact)
    assert rows(fit.exact) == rows(points[ConvexHull(points).vertices])
    assert fit.coverage == 1.0
    assert fit.rdp_epsilon == 0.0


def test_rdp_epsilon_is_halved_until_coverage_holds() -> None:
    points = gaussian_cloud(seed=7, size=5000)
    fit = fit_hull(points, coverage=0.999, rdp_epsilon=0.2)
    assert 0.0 < fit.rdp_epsilon < 0.2
    halvings = math.log2(0.2 / fit.rdp_epsilon)
    assert halvings == round(halvings)
    assert shapely_count(points, fit.rdp) >= 0.999 * len(points)
    assert len(fit.rdp) < len(fit.exact)


def test_rdp_falls_back_to_exact_hull() -> None:
    points = disk_cloud(seed=8, size=5000)
    fit = fit_hull(points, coverage=0.999, rdp_epsilon=20.0)
    assert fit.rdp_epsilon == 0.0
    assert np.array_equal(fit.rdp, fit.exact)


def test_deterministic_and_order_independent() -> None:
    points = disk_cloud(seed=9, size=20_000)
    first = fit_hull(points)
    assert_same_fit(first, fit_hull(points.copy()))
    shuffled = points[np.random.default_rng(0).permutation(len(points))]
    assert_same_fit(first, fit_hull(shuffled))


# --------------------------------------------------------------------------------------------
# Greedy removal
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_best_first_never_keeps_more_than_first_failure(cloud: str, seed: int) -> None:
    points = CLOUDS[cloud](seed=seed)
    for coverage in (0.999, 0.99):
        fit = fit_hull(points, coverage=coverage)
        reference = greedy_first_failure(points, fit.rdp, coverage)
        assert shapely_count(points, reference) >= coverage * len(points)
        assert len(fit.vertices) <= len(reference)


def test_best_first_beats_first_failure_on_constructed_case() -> None:
    """A crowded first vertex stops the reference greedy at once; best-first goes on."""
    angles = np.pi + 2.0 * np.pi * np.arange(8) / 8.0
    octagon = np.column_stack([np.cos(angles), np.sin(angles)])
    octagon[0] = [-1.0, 0.0]
    rng = np.random.default_rng(10)
    crowd = np.array([-0.95, 0.0]) + rng.uniform(-0.01, 0.01, size=(200, 2))
    bulk = rng.normal(size=(10_000, 2)) * 0.1
    points = np.vstack([octagon, crowd, bulk])

    fit = fit_hull(points, coverage=0.99)
    assert len(fit.rdp) == 8
    assert np.array_equal(fit.rdp[0], [-1.0, 0.0])
    reference = greedy_first_failure(points, fit.rdp, 0.99)
    assert len(reference) == 8
    assert len(fit.vertices) < len(reference)
    assert fit.coverage >= 0.99


def test_first_failure_stops_at_first_failing_vertex() -> None:
    polygon = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.01], [0.0, 1.0], [-0.5, 0.5]])
    inside = np.random.default_rng(11).uniform(0.4, 0.9, size=(96, 2))
    points = np.vstack([polygon, [[0.9, 0.05]], inside])  # 103 points, budget 2
    # Removing (0, 0) loses 1 point (itself); removing (1, 0) next loses more than the one
    # left, so the walk stops there although (0.5, 1.01) could still go (it loses 1).
    result = greedy_first_failure(points, polygon, coverage=0.98)
    assert np.array_equal(result, polygon[1:])


@pytest.mark.parametrize(
    ("points", "coverage"),
    [
        (gaussian_cloud(seed=12), 0.99),
        (disk_cloud(seed=13), 0.95),
        (outlier_cloud(seed=1), 0.99),
        (crescent_cloud(seed=16), 0.3),
        (crescent_cloud(seed=15), 0.0),
    ],
)
def test_removal_bookkeeping_matches_brute_force(points: np.ndarray, coverage: float) -> None:
    history: list[tuple[np.ndarray, int]] = []
    fit = hulls._fit_hull(points, coverage, 0.005, history)
    assert history, "the greedy removed nothing; the test would prove nothing"
    required = hulls._required_count(len(points), coverage)
    for polygon, covered in history:
        assert covered == shapely_count(points, polygon)
        assert covered >= required
    assert rows(history[-1][0]) == rows(fit.vertices)
    assert fit.coverage == history[-1][1] / len(points)


def test_crescent_case_leaves_the_sorting_centre_outside() -> None:
    """The crescent cases above exercise the full-scan fallback of the sector pruning."""
    points = crescent_cloud(seed=16)
    fit = fit_hull(points, coverage=0.3)
    assert not points_in_polygon(points.mean(axis=0), fit.vertices)


@pytest.mark.parametrize("cloud", [gaussian_cloud(seed=17), crescent_cloud(seed=18)])
def test_cached_triangle_losses_match_brute_force(cloud: np.ndarray) -> None:
    x, y = np.ascontiguousarray(cloud[:, 0]), np.ascontiguousarray(cloud[:, 1])
    index = hulls._AngularIndex(x, y)
    polygon = hulls._exact_hull(index)
    tol = hulls._tolerance(polygon)
    covered = hulls._covered_mask(polygon, index, tol)
    greedy = hulls._BestFirstGreedy(polygon, index, covered, required=0, tol=tol)
    before = shapely_count(cloud, polygon)
    for vertex in range(len(polygon)):
        after = shapely_count(cloud, np.delete(polygon, vertex, axis=0))
        assert greedy.loss[vertex] == before - after


# --------------------------------------------------------------------------------------------
# Degenerate input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "points",
    [
        [[0.3, -0.2]],
        [[0.0, 0.0], [1.0, 0.5]],
        [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]],
        [[0.5, 0.5]] * 7,
        [[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]],
        [[np.nan, 0.0], [0.0, 0.0], [np.inf, 1.0], [1.0, 0.0]],
        [[np.nan, np.nan]],
    ],
)
def test_degenerate_inputs_give_small_valid_polygon(points: list[list[float]]) -> None:
    cloud = np.asarray(points, dtype=np.float64)
    fit = fit_hull(cloud)
    for polygon in (fit.vertices, fit.exact, fit.rdp):
        assert_convex_ccw(polygon)
    assert len(fit.vertices) == 4
    assert np.isfinite([fit.coverage, fit.area]).all()
    finite = cloud[np.isfinite(cloud).all(axis=1)]
    assert fit.coverage == shapely_count(finite, fit.vertices) / len(cloud)
    if len(finite):
        assert shapely_count(finite, fit.vertices) == len(finite)
        assert fit.vertices[:, 0].min() == pytest.approx(finite[:, 0].min() - 1e-6)
    assert_same_fit(fit, fit_hull(cloud))


def test_large_collinear_input_gives_box() -> None:
    t = np.linspace(-1.0, 1.0, 50_000)
    fit = fit_hull(np.column_stack([t, 0.5 * t]))
    assert len(fit.vertices) == 4 and fit.coverage == 1.0


@pytest.mark.parametrize(
    ("points", "kwargs"),
    [
        (np.zeros((0, 2)), {}),
        (np.zeros((5, 3)), {}),
        (np.zeros(4), {}),
        (np.zeros((5, 2)), {"coverage": 1.5}),
        (np.zeros((5, 2)), {"rdp_epsilon": -0.1}),
    ],
)
def test_bad_arguments_raise_value_error(points: np.ndarray, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        fit_hull(points, **kwargs)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-6, 6), st.integers(-6, 6)), min_size=1, max_size=40),
    st.sampled_from([1.0, 0.95, 0.8]),
)
def test_fit_hull_properties_on_small_integer_clouds(
    raw: list[tuple[int, int]], coverage: float
) -> None:
    points = np.asarray(raw, dtype=np.float64) * 0.25
    fit = fit_hull(points, coverage=coverage)
    for polygon in (fit.vertices, fit.exact, fit.rdp):
        assert_convex_ccw(polygon)
    assert len(fit.vertices) <= len(fit.rdp) <= len(fit.exact)
    assert fit.coverage >= coverage
    assert fit.coverage == shapely_count(points, fit.vertices) / len(points)


# --------------------------------------------------------------------------------------------
# Flexion on the circle
# --------------------------------------------------------------------------------------------


def test_flexion_center_near_pi_unwraps_to_contiguous_range() -> None:
    rng = np.random.default_rng(20)
    values = np.concatenate(
        [rng.uniform(2.8, np.pi, 500), rng.uniform(-np.pi, -2.9, 500), [np.pi, -np.pi + 1e-9]]
    )
    centre = flexion_center(values)
    assert abs(abs(centre) - np.pi) < 0.2
    unwrapped = unwrap_flexion(values, centre)
    assert np.ptp(unwrapped) < 1.0
    assert np.all(unwrapped > centre - np.pi) and np.all(unwrapped <= centre + np.pi)
    assert np.allclose(np.cos(unwrapped), np.cos(values)) and np.allclose(
        np.sin(unwrapped), np.sin(values)
    )


def test_flexion_around_zero_is_left_unchanged() -> None:
    values = np.random.default_rng(21).uniform(-1.2, 1.5, 1000)
    centre = flexion_center(values)
    assert abs(centre) < 0.5
    assert np.array_equal(unwrap_flexion(values, centre), values)


def test_flexion_center_known_values() -> None:
    assert flexion_center(np.array([])) == 0.0
    assert flexion_center(np.array([np.nan])) == 0.0
    assert flexion_center(np.array([0.7])) == pytest.approx(0.7)
    # Widest empty arc is (1, 3.1), midpoint 2.05: the centre is opposite, 2.05 - π.
    assert flexion_center(np.array([-3.0, -1.0, 0.0, 1.0, 3.1])) == pytest.approx(2.05 - np.pi)
    # Equally wide arcs (-3, -1) and (1, 3): the first in sorted order wins.
    assert flexion_center(np.array([-3.0, -1.0, 0.0, 1.0, 3.0])) == pytest.approx(np.pi - 2.0)
    assert flexion_center(np.array([0.5 + 2.0 * np.pi])) == pytest.approx(0.5)


def test_unwrap_flexion_range_and_broadcasting() -> None:
    rng = np.random.default_rng(22)
    flexion = rng.uniform(-np.pi, np.pi, size=(200, 15))
    centres = rng.uniform(-np.pi, np.pi, size=15)
    out = unwrap_flexion(flexion, centres)
    assert out.shape == (200, 15) and out.dtype == np.float64
    assert np.all(out > centres - np.pi) and np.all(out <= centres + np.pi)
    turns = (out - flexion) / (2.0 * np.pi)
    assert np.allclose(turns, np.round(turns), atol=1e-12)
    assert unwrap_flexion(np.float64(np.pi), 0.0) == np.pi
    assert unwrap_flexion(np.float64(-np.pi), 0.0) == np.pi
    assert unwrap_flexion(np.float64(3.5), 0.0) == pytest.approx(3.5 - 2.0 * np.pi)


# --------------------------------------------------------------------------------------------
# Polygon queries
# --------------------------------------------------------------------------------------------

PENTAGON = np.array([[0.0, -1.0], [1.2, -0.4], [0.9, 0.8], [-0.3, 1.1], [-1.0, 0.0]])


def test_points_in_polygon_agrees_with_shapely() -> None:
    points = np.random.default_rng(30).uniform(-1.5, 1.5, size=(20_000, 2))
    inside = points_in_polygon(points, PENTAGON)
    expected = shapely.covers(shapely.Polygon(PENTAGON), shapely.points(points))
    assert np.array_equal(inside, expected)
    assert inside.any() and not inside.all()


def test_boundary_counts_as_inside_with_zero_distance() -> None:
    following = np.roll(PENTAGON, -1, axis=0)
    weights = np.linspace(0.0, 1.0, 7)[:, None, None]
    boundary = (1.0 - weights) * PENTAGON + weights * following  # (7, 5, 2)
    assert points_in_polygon(boundary, PENTAGON).all()
    distance = distance_to_polygon(boundary, PENTAGON)
    assert distance.shape == (7, 5) and np.all(distance == 0.0)


def test_distance_to_polygon_matches_shapely() -> None:
    points = np.random.default_rng(31).uniform(-3.0, 3.0, size=(5000, 2))
    distance = distance_to_polygon(points, PENTAGON)
    expected = shapely.distance(shapely.Polygon(PENTAGON), shapely.points(points))
    assert np.all(distance >= 0.0)
    assert np.all(distance[points_in_polygon(points, PENTAGON)] == 0.0)
    assert np.allclose(distance, expected, rtol=0.0, atol=1e-12)
    assert (distance > 0.0).sum() > 1000


def test_queries_keep_leading_shape_and_handle_non_finite() -> None:
    points = np.zeros((3, 4, 2))
    points[0, 0] = [np.nan, 0.0]
    points[1, 1] = [5.0, 0.0]
    assert points_in_polygon(points, PENTAGON).shape == (3, 4)
    distance = distance_to_polygon(points, PENTAGON)
    assert np.isinf(distance[0, 0]) and distance[1, 1] > 3.0 and distance[2, 2] == 0.0
    assert points_in_polygon(np.zeros((0, 2)), PENTAGON).shape == (0,)


def test_clockwise_polygon_is_rejected() -> None:
    with pytest.raises(ValueError, match="counter-clockwise"):
        points_in_polygon(np.zeros((2, 2)), PENTAGON[::-1])
