"""Benchmark of the hull pipeline: ``python benchmarks/bench_hulls.py``.

Times :func:`bmc_calib.hulls.fit_hull` at coverage 0.999 on a realistic joint-angle cloud
(correlated, skewed flexion/abduction plus 0.05 % annotation glitches spread over a wide box)
of 100k and 1M points, and the two polygon queries used by validation on 1M points.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from bmc_calib.hulls import distance_to_polygon, fit_hull, points_in_polygon

SIZES = (100_000, 1_000_000)
COVERAGE = 0.999
REPEATS = 5


def joint_angle_cloud(size: int, seed: int = 0) -> np.ndarray:
    """(size, 2) float32 (flexion, abduction) in radians, like one joint of a real dataset."""
    rng = np.random.default_rng(seed)
    flexion = 0.2 + rng.gamma(shape=3.0, scale=0.15, size=size)
    abduction = 0.25 * (flexion - 0.65) + rng.normal(scale=0.08, size=size)
    cloud = np.column_stack([flexion, abduction])
    glitches = rng.random(size) < 0.0005
    cloud[glitches] = rng.uniform([-1.5, -1.2], [3.0, 1.2], size=(int(glitches.sum()), 2))
    return cloud.astype(np.float32)


def best_and_mean(function: Callable[[], object], repeats: int = REPEATS) -> tuple[float, float]:
    """Best and mean wall time in seconds over ``repeats`` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times), sum(times) / len(times)


def main() -> None:
    print(f"fit_hull, coverage {COVERAGE}, best/mean of {REPEATS} calls")
    for size in SIZES:
        cloud = joint_angle_cloud(size)
        best, mean = best_and_mean(lambda cloud=cloud: fit_hull(cloud, coverage=COVERAGE))
        fit = fit_hull(cloud, coverage=COVERAGE)
        print(
            f"  {size:>9,d} points: {best:.3f} s best, {mean:.3f} s mean | vertices "
            f"exact {len(fit.exact)}, rdp {len(fit.rdp)} (eps {fit.rdp_epsilon:g}), "
            f"final {len(fit.vertices)} | coverage {fit.coverage:.6f}"
        )

    polygon = fit_hull(joint_angle_cloud(SIZES[-1]), coverage=COVERAGE).vertices
    queries = joint_angle_cloud(SIZES[-1], seed=1).astype(np.float64)
    print(f"queries on {len(queries):,d} points, {len(polygon)}-vertex polygon")
    for function in (points_in_polygon, distance_to_polygon):
        best, mean = best_and_mean(lambda function=function: function(queries, polygon))
        print(f"  {function.__name__}: {best:.3f} s best, {mean:.3f} s mean")


if __name__ == "__main__":
    main()
