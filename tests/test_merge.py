"""bmc-calib merge: union semantics, idempotence, reconciled flexion centres, refusals."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bmc_calib import bundle, hulls
from bmc_calib.cli import app
from bmc_calib.errors import BadInputError
from bmc_calib.fit import FitOptions, fit_limits
from bmc_calib.formats import open_sources
from bmc_calib.limits import Limits
from bmc_calib.merge import _widest_uncovered_arc, merge_limits, rewrap_polygon

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"


@pytest.fixture(scope="module")
def pair() -> tuple[Limits, Limits]:
    a = fit_limits(open_sources([str(SAMPLES / "subject_01.npy")]))
    b = fit_limits(open_sources([str(SAMPLES / "subject_02.npy")]))
    a.bone_length.tolerance[:] = 0.05
    b.bone_length.tolerance[:] = 0.02
    b.bone_length.tolerance[3] = 0.3
    b.joint_angle.tolerance[:] = 0.01
    return a, b


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})


def _unwrapped(points: np.ndarray, center: float) -> np.ndarray:
    out = points.copy()
    out[:, 0] = hulls.unwrap_flexion(out[:, 0], center)
    return out


def test_union_semantics(pair) -> None:
    a, b = pair
    result = merge_limits([a, b], ["a.h5", "b.h5"], ["sha256:aa", "sha256:bb"])
    merged = result.limits
    assert result.warnings == []
    for family in ("bone_length", "palm_curvature", "palm_angle"):
        got, x, y = getattr(merged, family), getattr(a, family), getattr(b, family)
        np.testing.assert_array_equal(got.min, np.minimum(x.min, y.min))
        np.testing.assert_array_equal(got.max, np.maximum(x.max, y.max))
        np.testing.assert_array_equal(got.tolerance, np.maximum(x.tolerance, y.tolerance))
    assert merged.bone_length.tolerance[3] == 0.3 and merged.bone_length.tolerance[0] == 0.05
    # the personal check's allowance widens too (it was dropped: validate fell back to 15 %)
    spread_a, spread_b = a.bone_length.within_person, b.bone_length.within_person
    assert spread_a is not None and spread_b is not None
    np.testing.assert_array_equal(merged.bone_length.within_person, np.maximum(spread_a, spread_b))
    ja = merged.joint_angle
    np.testing.assert_array_equal(ja.tolerance, np.maximum(a.joint_angle.tolerance, 0.01))
    np.testing.assert_array_equal(
        ja.coverage, np.minimum(a.joint_angle.coverage, b.joint_angle.coverage)
    )
    assert merged.coverage == min(a.coverage, b.coverage)
    eps = merged.provenance.parameters["merge_rdp_epsilon"]
    assert eps == FitOptions().rdp_epsilon
    for k in range(15):
        hull = ja.hulls[k]
        assert hulls.points_in_polygon(hull, hull).all()  # a valid CCW polygon
        assert np.isclose(ja.area[k], _area(hull))
        for src in (a.joint_angle, b.joint_angle):
            # every vertex of every input hull, in the merged unwrapping, is inside the merged
            # hull up to the RDP epsilon; input boxes and exact hulls are inside the merged ones
            vertices = _unwrapped(src.hulls[k], ja.flexion_center[k])
            assert hulls.distance_to_polygon(vertices, hull).max() <= eps + 1e-12
            corners = _unwrapped(np.stack([src.box_min[k], src.box_max[k]]), ja.flexion_center[k])
            assert np.all(corners >= ja.box_min[k]) and np.all(corners <= ja.box_max[k])
            exact = _unwrapped(src.exact_hulls[k], ja.flexion_center[k])
            assert hulls.points_in_polygon(exact, ja.exact_hulls[k]).all()
        # the stored pipeline polygons come as a pair
        np.testing.assert_array_equal(ja.rdp_hulls[k], hull)
    assert [s.path for s in merged.provenance.sources] == [
        *(s.path for s in a.provenance.sources),
        *(s.path for s in b.provenance.sources),
    ]
    merged_from = json.loads(merged.provenance.parameters["merged_from"])
    assert merged_from == [
        {"path": "a.h5", "content_digest": "sha256:aa"},
        {"path": "b.h5", "content_digest": "sha256:bb"},
    ]
    assert merged.statistics["frames_used"] == (
        a.statistics["frames_used"] + b.statistics["frames_used"]
    )


def _area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def test_merging_a_bundle_with_itself_changes_no_limit(pair) -> None:
    a, _ = pair
    merged = merge_limits([a, copy.deepcopy(a)], ["a.h5", "a.h5"]).limits
    for family in ("bone_length", "palm_curvature", "palm_angle"):
        for name in ("min", "max", "tolerance"):
            got, want = getattr(getattr(merged, family), name), getattr(getattr(a, family), name)
            np.testing.assert_array_equal(got, want)
    for name in ("flexion_center", "coverage", "area", "tolerance", "box_min", "box_max"):
        np.testing.assert_array_equal(
            getattr(merged.joint_angle, name), getattr(a.joint_angle, name)
        )
    for k in range(15):
        np.testing.assert_array_equal(merged.joint_angle.hulls[k], a.joint_angle.hulls[k])
        np.testing.assert_array_equal(
            merged.joint_angle.exact_hulls[k], a.joint_angle.exact_hulls[k]
        )


def _with_joint(base: Limits, hull: np.ndarray, center: float, joint: int = 0) -> Limits:
    limits = copy.deepcopy(base)
    ja = limits.joint_angle
    ja.hulls[joint] = hull
    ja.exact_hulls[joint] = hull.copy()
    ja.rdp_hulls[joint] = hull.copy()
    ja.flexion_center[joint] = center
    ja.box_min[joint] = hull.min(axis=0)
    ja.box_max[joint] = hull.max(axis=0)
    return limits


def _square(f0: float, f1: float, a0: float = -0.2, a1: float = 0.2) -> np.ndarray:
    return np.array([[f0, a0], [f1, a0], [f1, a1], [f0, a1]])


def test_flexion_centres_are_reconciled_around_pi(pair) -> None:
    base, _ = pair
    # the same region near ±π expressed in two different unwrappings
    a = _with_joint(base, _square(2.6, 3.5), center=3.0)
    b = _with_joint(base, _square(2.8 - 2 * math.pi, 3.6 - 2 * math.pi), center=3.2 - 2 * math.pi)
    merged = merge_limits([a, b], ["a.h5", "b.h5"]).limits.joint_angle
    hull, centre = merged.hulls[0], merged.flexion_center[0]
    assert -math.pi < centre <= math.pi
    assert np.ptp(hull[:, 0]) == pytest.approx(1.0)  # contiguous: 2.6 .. 3.6, not 2π wide
    # raw (wrapped) flexion of poses inside either input is inside the merged region
    raw = np.array([[3.1, 0.0], [-2.8, 0.1], [2.65, -0.1], [3.55 - 2 * math.pi, 0.0]])
    assert hulls.points_in_polygon(_unwrapped(raw, centre), hull).all()
    assert not hulls.points_in_polygon(_unwrapped(np.array([[0.0, 0.0]]), centre), hull).any()


def test_regions_covering_the_circle_are_clipped_with_a_warning(pair) -> None:
    base, _ = pair
    a = _with_joint(base, _square(-3.0, 3.0), center=0.0)
    b = _with_joint(base, _square(2.0, 5.0), center=3.5 - 2 * math.pi)
    result = merge_limits([a, b], ["a.h5", "b.h5"])
    assert len(result.warnings) == 1 and "thumb_cmc" in result.warnings[0]
    ja = result.limits.joint_angle
    assert np.ptp(ja.hulls[0][:, 0]) <= 2 * math.pi + 1e-9
    assert np.all(np.abs(ja.hulls[0][:, 0] - ja.flexion_center[0]) <= math.pi + 1e-9)


def test_widest_uncovered_arc() -> None:
    assert _widest_uncovered_arc([(0.5, 1.0), (5.0, 8.0)]) == pytest.approx(
        (8 - 2 * math.pi + 5) / 2
    )
    assert _widest_uncovered_arc([(-3.0, 3.0)]) == pytest.approx(math.pi)
    assert _widest_uncovered_arc([(-3.0, 1.0), (0.5, 3.3)]) is None


def test_rewrap_polygon_keeps_the_larger_part() -> None:
    polygon = _square(2.5, 3.6)
    wrapped, lost = rewrap_polygon(polygon)
    assert wrapped[:, 0].max() == pytest.approx(math.pi)
    assert lost == pytest.approx((3.6 - math.pi) / 1.1)
    same, none_lost = rewrap_polygon(_square(-1.0, 1.0))
    np.testing.assert_array_equal(same, _square(-1.0, 1.0))
    assert none_lost == 0.0


def test_mismatched_normalisation_is_refused(pair) -> None:
    a, _ = pair
    other = copy.deepcopy(a)
    other.normalization, other.length_unit = "none", "mm"
    with pytest.raises(BadInputError, match=r"cannot merge a\.h5 and b\.h5: different normal"):
        merge_limits([a, other], ["a.h5", "b.h5"])
    other = copy.deepcopy(a)
    other.length_unit = "mm"
    with pytest.raises(BadInputError, match="length unit"):
        merge_limits([a, other], ["a.h5", "b.h5"])


def test_cli_merge(pair, runner, tmp_path) -> None:
    a, b = pair
    paths = [tmp_path / "a.h5", tmp_path / "b.h5"]
    digests = [bundle.write_bundle(x, p) for x, p in zip((a, b), paths, strict=True)]
    out = tmp_path / "c.h5"
    result = runner.invoke(app, ["merge", *map(str, paths), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["output"] == str(out) and data["warnings"] == []
    merged = bundle.read_bundle(out)
    recorded = json.loads(merged.provenance.parameters["merged_from"])
    assert [r["content_digest"] for r in recorded] == digests
    assert [r["path"] for r in recorded] == [str(p) for p in paths]

    again = runner.invoke(app, ["merge", *map(str, paths), "-o", str(out)])
    assert again.exit_code == 2 and "--force" in again.stderr
    single = runner.invoke(app, ["merge", str(paths[0]), "-o", str(tmp_path / "d.h5")])
    assert single.exit_code == 2

    c = copy.deepcopy(a)
    c.normalization, c.length_unit = "none", "mm"
    bundle.write_bundle(c, tmp_path / "none.h5")
    refused = runner.invoke(
        app, ["merge", str(paths[0]), str(tmp_path / "none.h5"), "-o", str(tmp_path / "e.h5")]
    )
    assert refused.exit_code == 3
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1 and "a.h5" in line and "none.h5" in line
    assert not (tmp_path / "e.h5").exists()
