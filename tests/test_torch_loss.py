"""bmc_calib.torch: same numbers as bmc_calib.violations, safe gradients, any batch shape."""

from __future__ import annotations

import glob
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from polygon_points import points_around  # noqa: E402

from bmc_calib import kinematics, skeleton, synthetic, violations  # noqa: E402
from bmc_calib.bundle import write_bundle  # noqa: E402
from bmc_calib.errors import BadInputError, UsageError  # noqa: E402
from bmc_calib.fit import FitOptions, fit_limits  # noqa: E402
from bmc_calib.formats import open_sources  # noqa: E402
from bmc_calib.hulls import distance_to_polygon  # noqa: E402
from bmc_calib.torch import BMCLoss, compute_features  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = sorted(glob.glob(os.path.join(ROOT, "data_samples", "subject_0[1-5].npy")))
SUBJECT = synthetic.make_subjects(6, seed=0)[5]  # not among the fitted subjects
RNG_SEED = 20260521


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def limits():
    # a low person-level confidence keeps the intervals narrow, so every family is exercised
    return fit_limits(open_sources(SAMPLES), FitOptions(person_confidence=0.3))


@pytest.fixture(params=["fused", "aten"])
def formulation(request, monkeypatch):
    """Run a test on both CPU formulations of the feature chain: the fused C extension (the
    default where it is built) and the ATen one (where it is not, and the code compiled and
    accelerator paths share)."""
    from bmc_calib import torch_chain

    if request.param == "fused" and not torch_chain.fused_available():
        pytest.skip("the fused C chain (bmc_calib._fused_chain) is not built")
    monkeypatch.setattr(torch_chain, "USE_FUSED", request.param == "fused")
    return request.param


@pytest.fixture(scope="module")
def bundle_path(limits, tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "limits.h5"
    write_bundle(limits, path)
    return path


@pytest.fixture(scope="module")
def loss(bundle_path):
    return BMCLoss.from_bundle(bundle_path)


def reference(joints: np.ndarray, limits, is_left: np.ndarray | None = None):
    """The numpy path of ``bmc-calib validate``: mirror, features, violations."""
    j = np.asarray(joints, dtype=np.float64)
    if is_left is not None:
        j = np.where(np.asarray(is_left)[..., None, None], skeleton.mirror(j), j)
    return violations.compute_violations(kinematics.compute_features(j), limits)


# --------------------------------------------------------------------------- pose builders
def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _place(joints: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random rotation, translation (mm) per pose: the loss must not care."""
    out = np.empty_like(joints)
    for i, pose in enumerate(joints):
        out[i] = pose @ _rotation(rng).T + rng.uniform(-200, 200, 3)
    return out


def _build(angles: np.ndarray, lengths: np.ndarray | None = None, roots=None) -> np.ndarray:
    lengths = SUBJECT.finger_lengths if lengths is None else lengths
    roots = SUBJECT.root_bones if roots is None else roots
    return synthetic.forward_kinematics(roots, angles, lengths)


def plausible_poses(n: int = 200, seed: int = 11) -> np.ndarray:
    return synthetic.generate(SUBJECT, n, seed=seed, glitch_fraction=0.0).joints


def implausible_poses(rng: np.random.Generator) -> np.ndarray:
    """Angles edited far outside the active ranges, and phalanges 60 % too long."""
    n = 60
    angles = synthetic.sample_angles(n, rng)
    ids = rng.integers(0, 15, n)
    angles[np.arange(n), ids, 0] += np.deg2rad(rng.choice([-1, 1], n) * rng.uniform(60, 120, n))
    angles[np.arange(n), ids, 1] += np.deg2rad(rng.choice([-1, 1], n) * rng.uniform(30, 60, n))
    edited = _build(angles)
    lengths = np.tile(SUBJECT.finger_lengths, (n, 1))
    lengths[np.arange(n), rng.integers(0, 15, n)] *= 1.6
    long_bones = _build(synthetic.sample_angles(n, rng), lengths)
    # a palm squeezed and spread: root bones turned well outside the fitted palm angles
    roots = np.tile(SUBJECT.root_bones, (n, 1, 1))
    roots[:, 4, 0] += rng.uniform(20, 40, n)
    roots[:, 0, 2] -= rng.uniform(10, 30, n)
    wide_palm = _build(synthetic.sample_angles(n, rng), roots=roots)
    return np.concatenate([edited, long_bones, wide_palm])


def near_degenerate_poses() -> tuple[np.ndarray, np.ndarray]:
    """Poses at the edge of the degenerate tests, and whether kinematics calls them degenerate.

    Almost and exactly straight fingers (angles 0), flexion exactly and almost π (a bone
    antiparallel to its parent), nearly parallel root bones, tiny bones; plus the exactly
    degenerate cases (zero bone, coincident MCPs, all zero, NaN, parallel root bones).
    """
    poses, expected = [], []

    def add(pose: np.ndarray, degenerate: bool) -> None:
        poses.append(pose)
        expected.append(degenerate)

    zero = np.zeros((15, 2))
    add(_build(zero), False)  # exactly straight: every next frame is the parallel case
    add(folded_exact_pose(), False)  # flexion exactly π with bx = ±0.0
    add(_build(np.full((15, 2), 1e-10)), False)  # almost straight
    # below ~1e-7 from π the frame rotation is ill-conditioned (rounding error ~1e-16 / sin):
    # kinematics' Rodrigues form and the torch reflection form then differ by more than 1e-8
    for pi_flex in (math.pi, math.pi - 1e-6, math.pi - 1e-3):
        angles = zero.copy()
        angles[6, 0] = pi_flex  # index PIP folded back onto its parent bone
        angles[1, 0] = 0.3
        angles[11, 0] = 0.5
        add(_build(angles), False)
    for sine, degenerate in ((1e-5, False), (1e-6, False), (1e-9, True)):
        roots = SUBJECT.root_bones.copy()
        r2 = roots[2]
        axis = np.array([0.0, 0.0, 1.0])
        theta = math.asin(sine)
        # r2 turned by −θ about z (towards the little finger, keeping the palm unfolded)
        rotated = math.cos(theta) * r2 - math.sin(theta) * np.cross(axis, r2)
        roots[3] = 0.9 * rotated  # ring root nearly parallel to the middle root
        add(_build(synthetic.sample_angles(1, np.random.default_rng(3))[0], roots=roots),
            degenerate)  # fmt: skip
    for scale, degenerate in ((1e-5, False), (1e-9, True)):
        lengths = SUBJECT.finger_lengths.copy()
        lengths[7] *= scale  # the middle finger's middle phalanx almost vanishes
        add(_build(synthetic.sample_angles(1, np.random.default_rng(4))[0], lengths),
            degenerate)  # fmt: skip
    base = _build(synthetic.sample_angles(1, np.random.default_rng(5))[0])
    zero_bone = base.copy()
    zero_bone[7] = zero_bone[6]
    add(zero_bone, True)
    coincident = base.copy()
    coincident[13] = coincident[9]
    add(coincident, True)
    add(np.zeros((21, 3)), True)
    nan = base.copy()
    nan[4, 1] = np.nan
    add(nan, True)
    parallel = base.copy()
    parallel[13] = 0.8 * parallel[9]  # ring root exactly along the middle root
    add(parallel, True)
    return np.stack(poses), np.asarray(expected)


# --------------------------------------------------------------------------- same numbers
def _compare(joints: np.ndarray, limits, loss: BMCLoss, is_left=None, atol: float = 1e-8):
    ref = reference(joints, limits, is_left)
    left = None if is_left is None else torch.as_tensor(is_left)
    got = loss.magnitudes(torch.as_tensor(joints, dtype=torch.float64), left)
    np.testing.assert_array_equal(got["degenerate"].numpy(), ref.degenerate)
    for family in violations.FAMILIES:
        assert got[family].dtype == torch.float64
        np.testing.assert_allclose(got[family].numpy(), ref.family(family), rtol=0, atol=atol)
    return ref


def test_plausible_poses_match_numpy(limits, loss, formulation):
    rng = np.random.default_rng(RNG_SEED)
    ref = _compare(_place(plausible_poses(), rng), limits, loss)
    assert not ref.degenerate.any()


def test_implausible_poses_match_numpy(limits, loss, formulation):
    rng = np.random.default_rng(RNG_SEED)
    ref = _compare(_place(implausible_poses(rng), rng), limits, loss)
    for family in violations.FAMILIES:  # every family is really exercised
        assert ref.family(family).max() > 0.05, family
    assert ref.bone_length.max() > 0.15  # 60 % too long: well past the fitted maximum


def test_near_degenerate_poses_match_numpy_and_flag_the_same(limits, loss, formulation):
    poses, expected = near_degenerate_poses()
    rng = np.random.default_rng(RNG_SEED)
    placed = _place(np.where(np.isfinite(poses), poses, 0.0), rng)
    placed = np.where(np.isfinite(poses), placed, np.nan)
    ref = _compare(placed, limits, loss)
    np.testing.assert_array_equal(ref.degenerate, expected)


def test_left_hands_are_mirrored(limits, loss, formulation):
    rng = np.random.default_rng(RNG_SEED)
    right = _place(plausible_poses(40, seed=2), rng)
    is_left = rng.random(40) < 0.5
    stored = np.where(is_left[:, None, None], skeleton.mirror(right), right)
    _compare(stored, limits, loss, is_left=is_left)
    as_right = loss.magnitudes(torch.as_tensor(right))
    as_left = loss.magnitudes(torch.as_tensor(skeleton.mirror(right)), True)
    for family in violations.FAMILIES:
        torch.testing.assert_close(as_left[family], as_right[family], rtol=0, atol=1e-12)


def test_features_match_kinematics(formulation):
    poses, _ = near_degenerate_poses()
    poses = np.concatenate([poses, plausible_poses(50, seed=4)])
    ref = kinematics.compute_features(poses)
    got = compute_features(torch.as_tensor(poses))
    np.testing.assert_array_equal(got.degenerate.numpy(), ref.degenerate)
    for name in ("bone_length", "palm_curvature", "palm_angle", "flexion_abduction"):
        np.testing.assert_allclose(
            getattr(got, name).numpy(), getattr(ref, name), rtol=0, atol=1e-8, err_msg=name
        )


def test_signed_zero_angles_follow_the_strict_rule():
    """Flexion/abduction at exactly ±0 components: kinematics' strict ``< 0`` sign rules.

    bx = −0.0 with bz < 0 is +π there (atan2 alone would give −π); (bx, bz) = (0, 0) gives
    abduction ±π/2. The torch chain reads the local coordinates kinematics would project.
    """
    from bmc_calib.torch_chain import angles_backward, angles_in_frame

    zero, neg = 0.0, -0.0
    bones = [
        (neg, 0.5, -1.0), (zero, 0.5, -1.0), (neg, neg, -1.0), (neg, neg, 1.0), (zero, 1.0, 0.0),
        (zero, -1.0, neg), (neg, 0.3, neg), (-1e-300, 0.2, -1.0), (1e-300, neg, -1.0),
    ]  # fmt: skip
    frame_x = (1.0, neg, neg)  # every product with a ±0 bone component is then ±0 as chosen
    bone = np.array(bones).T[:, :, None]  # (3, K, 1)
    x = np.broadcast_to(np.array(frame_x)[:, None, None], bone.shape)
    y = np.broadcast_to(np.array([neg, 1.0, neg])[:, None, None], bone.shape)
    z = np.broadcast_to(np.array([neg, neg, 1.0])[:, None, None], bone.shape)
    want_flex, want_abd = kinematics._angles_in_frame(bone, x, y, z)
    local = np.stack([kinematics._dot(bone, axis) for axis in (x, y, z)])  # (3, K, 1)
    c = torch.as_tensor(np.moveaxis(local, 0, 1))  # (K, 3, 1)
    got_flex, got_abd, saved = angles_in_frame(c)
    np.testing.assert_array_equal(got_flex.numpy(), want_flex)
    np.testing.assert_allclose(got_abd.numpy(), want_abd, rtol=0, atol=1e-15)
    assert want_flex[0, 0] == math.pi  # the case +0.0 corrects
    grad = angles_backward(saved, torch.ones_like(got_flex), torch.ones_like(got_abd))
    assert torch.isfinite(grad).all()  # (bx, bz) = (0, 0) included


def _hull_test_points(hulls: list[np.ndarray]) -> np.ndarray:
    """``(15, M, 2)`` points around each hull: inside, edge and vertex regions, vertices and
    edge midpoints."""
    rng = np.random.default_rng(RNG_SEED)
    points = []
    for hull in hulls:
        lo, hi = hull.min(axis=0) - 0.5, hull.max(axis=0) + 0.5
        cloud = rng.uniform(lo, hi, (400, 2))
        points.append(np.concatenate([cloud, hull, 0.5 * (hull + np.roll(hull, -1, axis=0))]))
    size = min(len(p) for p in points)
    return np.stack([p[:size] for p in points])


def test_hull_distance_matches_hulls_module(limits):
    from bmc_calib.torch import _edge_rows, _hull_distance, _hull_tables

    hulls = limits.joint_angle.hulls
    tables = _hull_tables(hulls)
    pts = _hull_test_points(hulls)
    got = _hull_distance(
        torch.as_tensor(pts[..., 0]),
        torch.as_tensor(pts[..., 1]),
        torch.as_tensor(_edge_rows(tables)),
        torch.as_tensor(tables["tolerance"])[:, None],
    ).numpy()
    want = np.stack([distance_to_polygon(pts[a], hulls[a]) for a in range(len(hulls))])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert (want > 0).mean() > 0.3 and (want == 0).mean() > 0.1


def test_compiled_nearest_edge_scan_equals_eager_form(limits):
    """The unrolled running maximum that compiled code uses (run eagerly here) gives the
    eager form's distance, inside flag and nearest-boundary direction, which points from the
    nearest boundary point to the point (checked against the distance by a finite step)."""
    from bmc_calib.torch import (
        _edge_rows,
        _hull_tables,
        _nearest_edges_compiled,
        _nearest_edges_eager,
    )

    hulls = limits.joint_angle.hulls
    tables = _hull_tables(hulls)
    pts = torch.as_tensor(_hull_test_points(hulls))
    args = (
        pts[..., 0],
        pts[..., 1],
        torch.as_tensor(_edge_rows(tables)),
        torch.as_tensor(tables["tolerance"])[:, None],
    )
    dist, dx, dy, outside = _nearest_edges_eager(*args)
    scan_dist, scan_dx, scan_dy, scan_outside = _nearest_edges_compiled(*args)
    assert torch.equal(scan_outside, outside)
    inside = outside == 0
    outside = ~inside  # inside, the searched edge is arbitrary (the distance is masked to 0)
    torch.testing.assert_close(scan_dist[outside], dist[outside], rtol=0, atol=1e-12)
    torch.testing.assert_close(scan_dx[outside], dx[outside], rtol=0, atol=1e-12)
    torch.testing.assert_close(scan_dy[outside], dy[outside], rtol=0, atol=1e-12)
    # (dx, dy) = point − nearest boundary point, so its length is the distance
    torch.testing.assert_close(torch.hypot(scan_dx, scan_dy)[outside], dist[outside])
    assert outside.float().mean() > 0.3


def _random_convex_polygons(rng: np.random.Generator) -> list[np.ndarray]:
    """Counter-clockwise convex polygons that stress the nearest-edge rule: triangles, thin
    slivers, sharp vertices, many vertices (index bits beyond 5) and collinear vertices."""
    from scipy.spatial import ConvexHull

    polygons = []
    for count, stretch in ((3, 1.0), (5, 0.01), (8, 1.0), (40, 1.0), (60, 0.05), (4, 30.0)):
        for _ in range(6):
            cloud = rng.normal(size=(count, 2)) * [1.0, stretch] + rng.normal(size=2)
            polygons.append(cloud[ConvexHull(cloud).vertices])  # counter-clockwise
    square = np.array([[0, 0], [1, 0], [2, 0], [2, 1], [2, 2], [1, 2], [0, 2], [0, 1.0]])
    polygons.append(square)  # every other vertex collinear
    return polygons


@pytest.mark.parametrize("form", ["eager", "compiled scan"])
def test_nearest_edge_rule_is_the_exact_polygon_distance(form):
    """The largest-outward-slack edge gives the exact distance to a convex polygon (checked
    against :func:`bmc_calib.hulls.distance_to_polygon` in float64), for random points and
    for points next to every vertex in all directions (the vertex regions, where the nearest
    edge and the farthest-beyond edge differ), and float32 agrees to float32 precision."""
    from bmc_calib.torch import (
        _edge_rows,
        _hull_distance_and_direction,
        _hull_tables,
        _nearest_edges_compiled,
        _nearest_edges_eager,
    )

    rng = np.random.default_rng(RNG_SEED)
    polygons = _random_convex_polygons(rng)
    points = []
    for poly in polygons:
        cloud, ring, far = points_around(poly, rng, cloud=600, far=50)
        points.append(np.concatenate((cloud, ring, far))[:650])
    pts = np.stack(points)  # (H, 650, 2)
    tables = _hull_tables(polygons)
    edges = torch.as_tensor(_edge_rows(tables))
    tolerance = torch.as_tensor(tables["tolerance"])[:, None]
    search = _nearest_edges_eager if form == "eager" else _nearest_edges_compiled
    px, py = torch.as_tensor(pts[..., 0]), torch.as_tensor(pts[..., 1])
    dist, dx, dy, outside = search(px, py, edges, tolerance)
    want = np.stack([distance_to_polygon(pts[a], poly) for a, poly in enumerate(polygons)])
    got = (dist * outside).numpy()
    scale = np.maximum(1.0, np.abs(pts).max(-1))
    error = np.abs(got - want) / scale
    assert error.max() <= 1e-12, (error.max(), np.unravel_index(error.argmax(), error.shape))
    assert (want > 0).mean() > 0.5 and (want == 0).mean() > 0.02
    # (dx, dy) points from the nearest boundary point to the point
    torch.testing.assert_close(torch.hypot(dx, dy)[outside > 0], dist[outside > 0])
    # float32 (the training dtype), bit tricks included, to float32 precision of the tables:
    # the slivers' sharp vertices, where two nearly parallel edge lines meet, move by the
    # rounding of an offset over the sine of their angle (up to ~50 float32 ulps)
    f32 = [t.to(torch.float32) for t in (px, py, edges, tolerance)]
    if form == "eager":
        dist32, *_ = _hull_distance_and_direction(*f32)
    else:
        dist32 = search(*f32)[0] * search(*f32)[3]
    error32 = np.abs(dist32.double().numpy() - want) / (want + scale)
    worst = np.unravel_index(error32.argmax(), error32.shape)
    assert error32.max() <= 2e-5, (error32.max(), worst, want[worst], pts[worst])


# --------------------------------------------------------------------------- loss semantics
def test_loss_terms_weights_and_reductions(limits, bundle_path, formulation):
    rng = np.random.default_rng(RNG_SEED)
    poses = np.concatenate([plausible_poses(30), implausible_poses(rng)[:30]])
    ref = reference(poses, limits)
    weights = (0.5, 2.0, 3.0)
    want = (
        weights[0] * ref.bone_length.mean(1)
        + weights[1] * (ref.palm_curvature.mean(1) + ref.palm_angle.mean(1))
        + weights[2] * ref.joint_angle.mean(1)
    )
    j = torch.as_tensor(poses)
    totals = {}
    for reduction in ("none", "mean", "sum"):
        module = BMCLoss.from_bundle(
            bundle_path, weights=weights, reduction=reduction, use_tolerance=False
        )
        total, terms = module(j)
        assert set(terms) == {"bone_length", "palm", "joint_angle"}
        torch.testing.assert_close(
            total, terms["bone_length"] + terms["palm"] + terms["joint_angle"]
        )
        totals[reduction] = total.numpy()
    assert totals["none"].shape == (60,)
    np.testing.assert_allclose(totals["none"], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(totals["mean"], want.mean(), rtol=1e-12)
    np.testing.assert_allclose(totals["sum"], want.sum(), rtol=1e-12)
    assert want.min() == 0 and want.max() > 0.01  # both sides of the hinge are in the batch


def test_use_tolerance_shifts_the_hinge(limits, formulation):
    rng = np.random.default_rng(RNG_SEED)
    poses = implausible_poses(rng)
    ref = reference(poses, limits)
    tol = violations.tolerances(limits)
    shifted = {f: np.maximum(ref.family(f) - tol[f], 0.0) for f in violations.FAMILIES}
    want = (
        shifted["bone_length"].mean(1)
        + shifted["palm_curvature"].mean(1)
        + shifted["palm_angle"].mean(1)
        + shifted["joint_angle"].mean(1)
    )
    module = BMCLoss(limits, reduction="none", use_tolerance=True)
    total, _ = module(torch.as_tensor(poses))
    np.testing.assert_allclose(total.numpy(), want, rtol=1e-12, atol=1e-12)
    plain, _ = BMCLoss(limits, reduction="none", use_tolerance=False)(torch.as_tensor(poses))
    assert (total <= plain).all() and (total < plain).any()


def test_degenerate_poses_count_with_zero_loss(limits, formulation):
    good = plausible_poses(1, seed=8)[0] * [1.0, 1.0, 2.0]  # stretched: nonzero loss
    batch = torch.as_tensor(np.stack([good, np.zeros((21, 3))]))
    total, _ = BMCLoss(limits, reduction="none", use_tolerance=False)(batch)
    assert total[0] > 0 and total[1] == 0
    mean, _ = BMCLoss(limits, use_tolerance=False)(batch)
    torch.testing.assert_close(mean, total[0] / 2)


@pytest.mark.parametrize("shape", [(), (7,), (3, 4), (2, 1, 3)])
def test_any_batch_shape(limits, loss, shape, formulation):
    n = int(np.prod(shape))
    flat = plausible_poses(n, seed=6) * [1.0, 1.0, 1.2]
    joints = torch.as_tensor(flat.reshape(*shape, 21, 3))
    mags = loss.magnitudes(joints)
    flat_mags = loss.magnitudes(torch.as_tensor(flat))
    for family, size in (("bone_length", 20), ("palm_curvature", 4), ("joint_angle", 15)):
        assert mags[family].shape == (*shape, size)
        torch.testing.assert_close(mags[family].reshape(n, size), flat_mags[family])
    assert mags["degenerate"].shape == shape
    total, terms = BMCLoss(limits, reduction="none")(joints)
    assert total.shape == shape and terms["palm"].shape == shape
    scalar, _ = loss(joints)
    assert scalar.shape == ()


def test_is_left_broadcasts(loss, formulation):
    right = plausible_poses(6, seed=9).reshape(2, 3, 21, 3)
    is_left = np.array([[True], [False]])  # (2, 1) against the batch shape (2, 3)
    stored = np.where(is_left[..., None, None], skeleton.mirror(right), right)
    got = loss.magnitudes(torch.as_tensor(stored), torch.as_tensor(is_left))
    want = loss.magnitudes(torch.as_tensor(right))
    torch.testing.assert_close(got["joint_angle"], want["joint_angle"], rtol=0, atol=1e-12)
    without = loss.magnitudes(torch.as_tensor(stored))  # not mirrored: other numbers
    assert not torch.allclose(without["joint_angle"][0], want["joint_angle"][0])


def test_float32_matches_float64(loss, formulation):
    rng = np.random.default_rng(RNG_SEED)
    poses = _place(implausible_poses(rng), rng)
    m64 = loss.magnitudes(torch.as_tensor(poses))
    j32 = torch.as_tensor(poses, dtype=torch.float32).requires_grad_(True)
    m32 = loss.magnitudes(j32)
    for family in violations.FAMILIES:
        assert m32[family].dtype == torch.float32
        torch.testing.assert_close(m32[family].double(), m64[family], rtol=0, atol=2e-3)
    total, _ = loss(j32)
    total.backward()
    assert j32.grad.dtype == torch.float32 and torch.isfinite(j32.grad).all()


def test_buffers_state_dict_and_dtype(limits, bundle_path):
    module = BMCLoss.from_bundle(bundle_path)
    state = module.state_dict()
    for name in (
        "bone_length_min",
        "palm_curvature_max",
        "palm_angle_tolerance",
        "flexion_center",
        "hull_vertices",
        "hull_mask",
        "hull_edges",
        "joint_angle_tolerance",
    ):
        assert name in state
    assert state["hull_vertices"].shape[:2] == state["hull_mask"].shape
    assert state["hull_mask"].sum(1).tolist() == [len(h) for h in limits.joint_angle.hulls]
    fresh = BMCLoss(limits)
    fresh.load_state_dict(state)
    poses = torch.as_tensor(implausible_poses(np.random.default_rng(1)))
    torch.testing.assert_close(fresh(poses)[0], module(poses)[0])
    torch.testing.assert_close(module(poses.float())[0], fresh(poses)[0].float(), atol=1e-4,
                               rtol=1e-4)  # fmt: skip


@pytest.mark.parametrize("cast", ["float", "half", "bfloat16", "to float32"])
def test_dtype_casts_of_the_module_keep_the_limits(limits, cast):
    """A parent model's ``.half()`` (or ``.float()``, ``.to(torch.bfloat16)``) must not round
    the limits: the loss computes in its input's dtype, and float64 input keeps agreeing with
    validate exactly (a cast moved magnitudes by up to 2e-3)."""
    reference = BMCLoss(limits)
    module = BMCLoss(limits)
    before = {name: b.clone() for name, b in module.named_buffers()}
    if cast == "to float32":
        module = module.to(torch.float32)
    else:
        module = getattr(module, cast)()
    for name, buffer in module.named_buffers():
        assert buffer.dtype == before[name].dtype and torch.equal(buffer, before[name]), name
    poses = torch.as_tensor(implausible_poses(np.random.default_rng(1)))
    got, want = module.magnitudes(poses), reference.magnitudes(poses)
    for family, values in want.items():
        assert torch.equal(got[family], values), family
    torch.testing.assert_close(module(poses.float())[0], reference(poses.float())[0], rtol=0,
                               atol=0)  # fmt: skip


def test_copies_of_a_compiled_loss_compute_with_their_own_limits(limits):
    """``copy.deepcopy`` and pickling of a compiled loss: the copy compiles its own function
    (the compiled function is bound to the module it was made for: a copy used to compute
    with the original's limits, and pickling failed)."""
    import copy
    import pickle

    original = BMCLoss(limits)
    original.compile(backend="eager")  # (dynamo's eager backend: no C++ compiler needed)
    copied, pickled = copy.deepcopy(original), pickle.loads(pickle.dumps(original))
    poses = torch.as_tensor(implausible_poses(np.random.default_rng(2)))
    expected = BMCLoss(limits)(poses)[0]
    state = original.state_dict()
    state["bone_length_max"] = state["bone_length_max"] / 2
    original.load_state_dict(state)
    assert not torch.allclose(original(poses)[0], expected)
    for copy_ in (copied, pickled):
        assert copy_._compiled is not None and copy_._compiled is not original._compiled
        torch.testing.assert_close(copy_(poses)[0], expected)
    # the buffers are the module's own: loading a state did not change the caller's limits
    torch.testing.assert_close(BMCLoss(limits)(poses)[0], expected)


def test_bad_arguments(limits, loss):
    with pytest.raises(UsageError):
        BMCLoss(limits, reduction="avg")
    with pytest.raises(UsageError):
        BMCLoss(limits, weights=(1.0, 1.0))
    with pytest.raises(UsageError):
        BMCLoss(limits, weights=(1.0, -1.0, 1.0))
    with pytest.raises(BadInputError):
        loss(torch.zeros(4, 20, 3))


# --------------------------------------------------------------------------- gradients
def test_gradcheck_float64(limits, formulation):
    module = BMCLoss(limits, weights=(1.0, 2.0, 3.0), reduction="sum", use_tolerance=False)
    poses = synthetic.generate(SUBJECT, 3, seed=21, noise_mm=5.0, glitch_fraction=0.0).joints
    joints = torch.as_tensor(poses).requires_grad_(True)
    mags = module.magnitudes(joints)
    for family in violations.FAMILIES:  # every term has a non-zero gradient here
        assert mags[family].max() > 0, family
    assert torch.autograd.gradcheck(lambda j: module(j)[0], (joints,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("use_tolerance", "hull_penalty"), [(True, "linear"), (True, "squared"), (False, "squared")]
)
def test_gradcheck_float64_every_setting_with_left_hands(
    limits, use_tolerance, hull_penalty, formulation
):
    """The hand-derived backward under each hinge setting, mirrored hands in the batch."""
    module = BMCLoss(limits, weights=(1.0, 2.0, 3.0), reduction="sum",
                     use_tolerance=use_tolerance, hull_penalty=hull_penalty)  # fmt: skip
    poses = synthetic.generate(SUBJECT, 4, seed=23, noise_mm=8.0, glitch_fraction=0.0).joints
    poses[1::2] = skeleton.mirror(poses[1::2])
    is_left = torch.tensor([False, True, False, True])
    joints = torch.as_tensor(poses).requires_grad_(True)
    total, _ = module(joints, is_left=is_left)
    assert total > 0
    assert torch.autograd.gradcheck(
        lambda j: module(j, is_left=is_left)[0], (joints,), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("case", ["near_zero", "near_pi"])
def test_gradcheck_features_near_zero_and_pi(case, formulation):
    """Forward kinematics at the edges of the angle chain: every phalanx almost straight
    (flexion and abduction ~1e-4 rad, where atan2 meets its axes) or a PIP and a DIP folded
    back to within 2e-3 rad of π (the frame carry's ill-conditioned side)."""
    angles = np.full((2, 15, 2), 1e-4)
    angles[1] *= -1.0
    if case == "near_pi":
        angles = synthetic.ranges_radians().mean(axis=-1)[None].repeat(2, 0)
        angles[:, 7, 0] = math.pi - 2e-3  # middle PIP
        angles[:, 13, 0] = [math.pi - 2e-3, -(math.pi - 2e-3)]  # ring DIP, both sides
    joints = torch.as_tensor(_build(angles)).requires_grad_(True)
    want = kinematics.compute_features(joints.detach().numpy())
    got = compute_features(joints)
    fa = got.flexion_abduction.detach().numpy() - want.flexion_abduction
    np.testing.assert_allclose(np.angle(np.exp(1j * fa)), 0.0, atol=1e-9)

    def features(j):
        f = compute_features(j)
        return f.flexion_abduction, f.palm_curvature, f.bone_length

    assert torch.autograd.gradcheck(features, (joints,), eps=1e-7, atol=1e-5)


def test_gradcheck_features(formulation):
    poses = synthetic.generate(SUBJECT, 2, seed=22, glitch_fraction=0.0).joints
    joints = torch.as_tensor(poses).requires_grad_(True)

    def features(j):
        f = compute_features(j)
        return f.bone_length, f.palm_curvature, f.palm_angle, f.flexion_abduction

    assert torch.autograd.gradcheck(features, (joints,), eps=1e-6, atol=1e-6)


def folded_exact_pose() -> np.ndarray:
    """A flat hand whose middle finger folds back EXACTLY onto itself, in float32 too.

    Integer coordinates: the middle finger runs along +y, its PIP→DIP bone along −y (flexion
    exactly ±π: the antiparallel frame rule, and ``bx`` = ±0.0) and its DIP→tip bone along
    −y again (the parallel case).
    """
    pose = np.zeros((21, 3))
    roots = np.array([[-30.0, 30, 0], [-22, 92, 0], [0, 92, 0], [19, 88, 0], [36, 78, 0]])
    for f in range(5):
        pose[4 * f + 1] = roots[f]
        for level in range(3):
            pose[4 * f + 2 + level] = pose[4 * f + 1 + level] + roots[f] * (0.4 - 0.1 * level)
    pose[10], pose[11], pose[12] = [0, 132, 0], [0, 108, 0], [0, 86, 0]
    return pose


def _special_poses() -> dict[str, tuple[np.ndarray, bool]]:
    base = _build(synthetic.sample_angles(1, np.random.default_rng(5))[0])
    cases: dict[str, tuple[np.ndarray, bool]] = {}
    zero_bone = base.copy()
    zero_bone[7] = zero_bone[6]
    cases["zero_bone"] = (zero_bone, True)
    coincident = base.copy()
    coincident[13] = coincident[9]
    cases["coincident_mcps"] = (coincident, True)
    collapsed = base.copy()
    collapsed[9] = collapsed[0]  # zero reference bone: nothing to normalise by
    cases["zero_reference_bone"] = (collapsed, True)
    cases["all_zero"] = (np.zeros((21, 3)), True)
    nan = base.copy()
    nan[4, 1] = np.nan
    cases["nan"] = (nan, True)
    inf = base.copy()
    inf[2, 0] = np.inf
    cases["inf"] = (inf, True)
    cases["straight_fingers"] = (_build(np.zeros((15, 2))), False)
    folded = np.zeros((15, 2))
    folded[6:10, 0] = math.pi  # every PIP exactly folded back: antiparallel frames
    folded[10, 0] = math.pi
    cases["flexion_pi"] = (_build(folded), False)
    cases["folded_exact"] = (folded_exact_pose(), False)
    sideways = np.zeros((15, 2))
    sideways[1:5, 1] = math.pi / 2  # abduction ±π/2: the bone lies along y
    sideways[6, 1] = -math.pi / 2
    cases["abduction_half_pi"] = (_build(sideways), False)
    return cases


@pytest.mark.parametrize("case", ["gradient penalty", "scaled gradient"])
@pytest.mark.parametrize("function", ["loss", "features"])
def test_second_derivatives_are_refused_not_silently_wrong(limits, case, function, formulation):
    """The hand-derived backward is not itself differentiated: asking for a gradient that can
    be differentiated again raises, instead of returning one that misses the chain's second
    derivatives. A gradient penalty on ``task + bmc`` feeds the BMC node a constant gradient
    (``once_differentiable`` alone let that through: the penalty's gradient came out 0.0067
    where finite differences give −0.045)."""
    joints = torch.as_tensor(plausible_poses(3), dtype=torch.float64).requires_grad_(True)
    x = joints * 1.2
    module = BMCLoss(limits)
    bmc = module(x)[0] if function == "loss" else compute_features(x).flexion_abduction.sum()
    if case == "gradient penalty":
        loss, outputs = (x - joints.detach()).square().sum() + bmc, None
    else:
        loss, outputs = bmc, torch.ones((), dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="first-order backward only"):
        torch.autograd.grad(loss, joints, grad_outputs=outputs, create_graph=True)
    (first,) = torch.autograd.grad(bmc, joints)  # an ordinary gradient is unaffected
    assert torch.isfinite(first).all()


@pytest.mark.parametrize("name", list(_special_poses()))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_finite_on_special_poses(limits, name, dtype, formulation):
    pose, degenerate = _special_poses()[name]
    module = BMCLoss(limits, reduction="sum")
    stretched = plausible_poses(1, seed=8)[0] * [1.0, 1.0, 1.3]
    joints = torch.as_tensor(np.stack([pose, stretched]), dtype=dtype).requires_grad_(True)
    total, _ = module(joints)
    total.backward()
    grad = joints.grad
    assert torch.isfinite(grad).all()
    mags = module.magnitudes(joints.detach())
    assert bool(mags["degenerate"][0]) == degenerate
    if degenerate:
        assert (grad[0] == 0).all()
        for family in violations.FAMILIES:
            assert (mags[family][0] == 0).all()
    else:  # the features themselves have finite, non-zero gradients there
        j = joints.detach()[:1].clone().requires_grad_(True)
        f = compute_features(j)
        (f.flexion_abduction.sum() + f.palm_curvature.sum()).backward()
        assert torch.isfinite(j.grad).all() and (j.grad != 0).any()
    # the healthy pose in the same batch gets the gradient it gets alone
    alone = joints.detach()[1:].clone().requires_grad_(True)
    module(alone)[0].backward()
    torch.testing.assert_close(grad[1:], alone.grad)


def test_degenerate_pose_value_and_gradient_match_numpy_flags(limits, formulation):
    cases = _special_poses()
    poses = np.stack([p for p, _ in cases.values()])
    expected = np.array([d for _, d in cases.values()])
    np.testing.assert_array_equal(reference(poses, limits).degenerate, expected)


# ------------------------------------------------------------------ devices, synchronisation
#: ATen ops that read a tensor's value on the host (a device synchronisation on CUDA) or give
#: data-dependent shapes: `.item()`, `bool(tensor)`, `nonzero`, boolean masks.
_SYNCING_OPS = {
    "aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal",
    "aten.nonzero", "aten.nonzero_static", "aten.masked_select", "aten.unique",
    "aten._unique2", "aten.allclose",
}  # fmt: skip


class _RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every ATen op that runs (forward and backward) and the dtype of index tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()
        self.bool_indexing = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.ops.add(name)
        if name in ("aten.index", "aten.index_put", "aten.index_put_"):
            indices = args[1] if len(args) > 1 else ()
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                self.bool_indexing = True
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_forward_and_backward_never_read_values_on_the_host(limits, reduction, formulation):
    """DESIGN §9 "no host synchronisation": no op that makes CUDA wait for a value (this
    runs on CPU, where the same ops are recorded), on noisy, degenerate and left poses."""
    module = BMCLoss(limits, reduction=reduction, use_tolerance=True)
    poses = torch.as_tensor(_compile_batch()).requires_grad_(True)
    is_left = torch.arange(len(poses)) % 2 == 0
    recorder = _RecordOps()
    with recorder:
        total, _ = module(poses, is_left=is_left)
        total.sum().backward()
    assert not recorder.ops & _SYNCING_OPS, recorder.ops & _SYNCING_OPS
    assert not recorder.bool_indexing
    # the recorder saw the forward (the fused chain is one operator on the CPU)
    assert ("aten.atan2" if formulation == "aten" else "bmc_calib.fused_chain_forward") in (
        recorder.ops
    ), recorder.ops
    assert poses.grad is not None and torch.isfinite(poses.grad).all()


def test_runs_on_any_device_meta_stand_in(limits):
    """Forward and backward on the ``meta`` device, a stand-in for CUDA on a CPU-only machine:
    every tensor ``forward`` creates must follow the input's device (a CPU tensor mixed in
    would raise here). The module's buffers follow ``.to(device)``."""
    module = BMCLoss(limits).to("meta")
    assert all(b.device.type == "meta" for b in module.buffers())
    poses = torch.empty(5, 21, 3, device="meta", requires_grad=True)
    is_left = torch.zeros(5, dtype=torch.bool, device="meta")
    total, terms = module(poses, is_left=is_left)
    total.backward()
    assert total.device.type == "meta" and poses.grad.device.type == "meta"
    assert all(t.device.type == "meta" for t in terms.values())
    assert compute_features(poses.detach()).flexion_abduction.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(limits, dtype):
    """On a GPU (benchmarks/device_check.sh runs this file there): the same values and
    gradients as on the CPU, degenerate and left poses included."""
    poses = torch.as_tensor(_compile_batch(), dtype=dtype)
    is_left = torch.arange(len(poses)) % 3 == 0
    results = []
    for device in ("cpu", "cuda"):
        module = BMCLoss(limits, reduction="sum").to(device)
        leaf = poses.to(device).requires_grad_(True)
        total, _ = module(leaf, is_left=is_left.to(device))
        total.backward()
        results.append((total.detach().cpu(), leaf.grad.cpu()))
    tol = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(results[1][0], results[0][0], **tol)
    torch.testing.assert_close(results[1][1], results[0][1], **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_accelerator_formulation_matches_the_cpu_one(limits, dtype, monkeypatch):
    """The formulation accelerators take (``linalg.cross``, bool masks, the joint gradient
    as one product), forced on the CPU: the same values and gradients as the CPU's own,
    degenerate and left poses included; float64 gradients pass gradcheck."""
    from bmc_calib import torch_chain

    poses = torch.as_tensor(_compile_batch(), dtype=dtype)
    is_left = torch.arange(len(poses)) % 3 == 0
    module = BMCLoss(limits, reduction="sum")
    results = []
    for forced in (False, True):
        if forced:
            monkeypatch.setattr(torch_chain, "accelerator_path", lambda tensor: True)
        leaf = poses.clone().requires_grad_(True)
        total, _ = module(leaf, is_left=is_left)
        total.backward()
        results.append((total.detach(), leaf.grad))
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(results[1][0], results[0][0], **tol)
    torch.testing.assert_close(results[1][1], results[0][1], **tol)
    assert (results[1][1][8:10] == 0).all()  # the degenerate poses
    if dtype == torch.float64:
        few = poses[:4].clone().requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda j: module(j, is_left=is_left[:4])[0], (few,), eps=1e-6, atol=1e-5
        )


# --------------------------------------------------------------------------- compile, imports
def _compile_batch() -> np.ndarray:
    """Noisy poses (every term active) plus special ones: degenerate, straight, folded back."""
    noisy = synthetic.generate(SUBJECT, 8, seed=31, noise_mm=5.0, glitch_fraction=0.0).joints
    special = _special_poses()
    names = ("all_zero", "nan", "straight_fingers", "folded_exact")
    return np.concatenate([noisy, np.stack([special[name][0] for name in names])])


@pytest.mark.parametrize("shape", [(7, 63), (63, 7), (1, 63), (63, 1)])
def test_compiled_code_transposes_through_a_checked_opaque_operator(shape):
    """Compiled code transposes the poses with ``bmc_calib::transposed_copy`` (inductor
    materialises it instead of fusing strided reads into every consumer): its values are the
    transposition, contiguous, in both directions, and ``torch.library.opcheck`` passes (the
    fake implementation's shapes and strides, the schema, dynamo and AOT tracing)."""
    from bmc_calib import torch_chain

    a = torch.randn(shape, dtype=torch.float64)
    for out in (torch_chain._transposed_copy_op(a), torch_chain.transposed(a)):
        assert out.is_contiguous() and torch.equal(out, a.t())
    torch.library.opcheck(torch_chain._transposed_copy_op, (a,))


# torch's own modules (torch.jit) warn while dynamo loads; nothing to act on here
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_matches_eager(limits, formulation):
    """fullgraph=True: no graph break (so no .item(), no data-dependent Python branching).

    Compares values and input gradients with eager mode in float32, the training dtype (one
    compilation keeps the test quick): torch 2.13's inductor once mis-compiled a masked blend
    here in float32 only (see ``_zero_degenerate``); float64 matched to 1e-16.
    """
    dtype = torch.float32
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile's inductor backend needs a C++ compiler on CPU")
    module = BMCLoss(limits, weights=(1.0, 2.0, 3.0))
    poses = torch.as_tensor(_compile_batch(), dtype=dtype)
    eager_in = poses.clone().requires_grad_(True)
    compiled_in = poses.clone().requires_grad_(True)
    compiled = torch.compile(module, fullgraph=True)
    try:
        total, terms = compiled(compiled_in)
    except torch._dynamo.exc.BackendCompilerFailed as exc:  # toolchain, not our graph
        if "CppCompileError" in repr(exc) or "InvalidCxxCompiler" in repr(exc):
            pytest.skip(f"inductor cannot build on this machine: {exc!r:.200}")
        raise
    total.backward()
    want, want_terms = module(eager_in)
    want.backward()
    torch.testing.assert_close(total, want, rtol=1e-5, atol=1e-7)
    for name in want_terms:
        torch.testing.assert_close(terms[name], want_terms[name], rtol=1e-5, atol=1e-7)
    scale = eager_in.grad.abs().max()
    assert scale > 0
    torch.testing.assert_close(compiled_in.grad, eager_in.grad, rtol=0, atol=1e-4 * scale)
    assert torch.isfinite(compiled_in.grad).all()
    assert (compiled_in.grad[8:10] == 0).all()  # the degenerate poses


#: Ops that only create views or aliases, or only allocate (no kernel runs on a device: an
#: uninitialised buffer comes from the caching allocator).
def _is_kernel(func) -> bool:
    if func.is_view:
        return False
    return func.overloadpacket not in (
        torch.ops.aten.unbind, torch.ops.aten.split, torch.ops.aten.lift_fresh,
        torch.ops.aten.detach, torch.ops.aten.split_with_sizes, torch.ops.aten.empty,
        torch.ops.aten.empty_like, torch.ops.aten.new_empty, torch.ops.aten.empty_strided,
    )  # fmt: skip


class _CountKernels(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.kernels = 0
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _is_kernel(func):
            self.kernels += 1
        else:
            self.views += 1
        return func(*args, **(kwargs or {}))


#: Kernels of one eager forward+backward, 2026-12-01 (1,123 ATen ops before the hand-derived
#: backward; 304 on ``meta`` and 324 on the CPU before the lean chain; see
#: docs/performance.md), as (fewest, most): 248 on an accelerator (counted on the ``meta``
#: device, which takes the same code path); 27 on the CPU, where the feature chain is one
#: operator each way and the hull distances one more (the fused C extension,
#: ``bmc_calib._fused_chain``); 272 on the CPU
#: without it, whose cross products are taken component by component and whose joint
#: gradient is a subtraction and a transposition rather than one product. The bounds catch a
#: regression, and a fused chain silently not taken.
KERNELS = {"meta": (200, 255), "cpu": (15, 35), "cpu-aten": (200, 280)}


@pytest.mark.parametrize("device", ["meta", "cpu", "cpu-aten"])
@pytest.mark.parametrize("use_tolerance", [True, False])
def test_eager_forward_backward_kernel_count(limits, use_tolerance, device, monkeypatch):
    """Op counts are deterministic: count every ATen op that runs a kernel (views excluded)
    in one training step's forward and backward, with left hands in the batch."""
    from bmc_calib import torch_chain

    if device == "cpu" and not torch_chain.fused_available():
        pytest.skip("the fused C chain (bmc_calib._fused_chain) is not built")
    monkeypatch.setattr(torch_chain, "USE_FUSED", device == "cpu")
    fewest, most = KERNELS[device]
    device = device.removesuffix("-aten")
    module = BMCLoss(limits, use_tolerance=use_tolerance).to(device)
    poses = torch.as_tensor(_compile_batch(), dtype=torch.float32, device=device)
    is_left = torch.arange(len(poses), device=device) % 2 == 0
    module(poses, is_left=is_left)  # the first call caches constant matrices
    poses.requires_grad_(True)
    counter = _CountKernels()
    with counter:
        total, _ = module(poses, is_left=is_left)
        total.backward()
    assert fewest <= counter.kernels <= most, counter.kernels
    assert poses.grad is not None and poses.grad.shape == poses.shape


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_once_for_every_batch_size_shape_and_is_left_form(limits, formulation):
    """``BMCLoss.compile()`` traces one graph for batch sizes 2…257, leading batch shapes of
    1–3 axes and ``is_left`` as None, a bool or a tensor (dynamo's counting backend: no C++
    compiler needed, the same guards as inductor)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    module = BMCLoss(limits)
    counter = CompileCounter()
    module.compile(backend=counter, fullgraph=True)
    eager = BMCLoss(limits)
    rng = np.random.default_rng(3)
    cases = [((3,), None), ((7,), True), ((64,), "tensor"), ((5, 4), "tensor"),
             ((257,), False), ((2, 3, 5), None), ((2, 3), "tensor")]  # fmt: skip
    for shape, left in cases:
        n = int(np.prod(shape))
        joints = torch.as_tensor(
            plausible_poses(n, seed=int(rng.integers(1000))).reshape(*shape, 21, 3) * 1.1,
            dtype=torch.float32,
        )
        is_left = torch.as_tensor(rng.random(shape) > 0.5) if left == "tensor" else left
        leaf = joints.clone().requires_grad_(True)
        total, _ = module(leaf, is_left=is_left)
        total.backward()
        want_leaf = joints.clone().requires_grad_(True)
        want, _ = eager(want_leaf, is_left=is_left)
        want.backward()
        torch.testing.assert_close(total, want)
        torch.testing.assert_close(leaf.grad, want_leaf.grad)
    assert counter.frame_count == 1, counter.frame_count


def test_bmc_calib_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import bmc_calib, bmc_calib.cli, bmc_calib.fit, bmc_calib.violations, "
        "bmc_calib.bundle, bmc_calib.synthetic, bmc_calib.kinematics\n"
        "try:\n    import bmc_calib.torch\nexcept ImportError:\n    print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _run_script(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                            env=env, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_example_and_benchmark_run():
    """Smoke runs (tiny sizes) so the example and the benchmark cannot rot."""
    table = _run_script("examples/weak_supervision.py", "--quick")
    assert "| 2D all + 10% 3D + BMC" in table and "implausible" in table
    bench = _run_script("benchmarks/bench_loss.py", "--batches", "8", "--modes", "eager",
                        "--devices", "cpu", "--warmup", "1", "--repeat", "2")  # fmt: skip
    assert "fwd+bwd" in bench


def test_interleaved_ab_benchmark_runs_against_a_revision():
    """Smoke run of the A/B script against this checkout's own HEAD: the revision's loss is
    loaded beside this one (the same numbers when the loss is unchanged), pairs are timed,
    and an unknown revision is one line and exit code 2."""
    if shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("needs git and a git checkout")
    out = _run_script("benchmarks/bench_loss_ab.py", "--against", "HEAD", "--batch", "8",
                      "--pairs", "2")  # fmt: skip
    assert "paired difference" in out and "(2 pairs)" in out
    bad = subprocess.run(
        [sys.executable, "benchmarks/bench_loss_ab.py", "--against", "no-such-revision"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "no-such-revision" in bad.stderr
    assert "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- personal term
def test_personal_term_matches_validates_personal_check(limits, formulation):
    """With ``group``, the personal magnitudes equal numpy's: own-group median bone lengths
    (numpy.median, even and odd counts), the same allowance, degenerate poses left out."""
    from bmc_calib import personal

    rng = np.random.default_rng(5)
    poses = plausible_poses(40, seed=12)
    poses[rng.integers(0, 40, 6), 7] += 6.0  # some DIPs moved: longer/shorter phalanges
    group = rng.integers(0, 5, 40) * 7 - 3  # any integer labels
    module = BMCLoss(limits)
    got = module.magnitudes(torch.as_tensor(poses), group=torch.as_tensor(group))["personal"]
    lengths = kinematics.compute_features(poses).bone_length
    _, ids = np.unique(group, return_inverse=True)
    medians = personal.group_medians(lengths, ids, ids.max() + 1)
    want = personal.personal_violation(lengths, medians[ids], personal.allowance(limits))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    assert (want > 0).any()


def test_personal_term_is_added_only_with_group_and_never_syncs(limits):
    module = BMCLoss(limits, personal_weight=2.0)
    poses = torch.as_tensor(_compile_batch()).requires_grad_(True)
    _, terms = module(poses)
    assert "personal" not in terms
    group = torch.arange(len(poses)) % 3
    recorder = _RecordOps()
    with recorder:
        total, terms = module(poses, group=group)
        total.backward()
    assert not recorder.ops & _SYNCING_OPS, recorder.ops & _SYNCING_OPS
    assert not recorder.bool_indexing
    torch.testing.assert_close(
        total, terms["bone_length"] + terms["palm"] + terms["joint_angle"] + terms["personal"]
    )
    assert torch.isfinite(poses.grad).all()
    per_pose = module.magnitudes(poses.detach(), group=group)["personal"].mean(-1)
    torch.testing.assert_close(terms["personal"], 2.0 * per_pose.mean())


def test_personal_term_gradcheck_float64(limits, formulation):
    module = BMCLoss(limits, reduction="none")
    # noisy, so no two lengths tie (a median is not differentiable at a tie)
    poses = synthetic.generate(SUBJECT, 6, seed=14, noise_mm=0.5, glitch_fraction=0.0).joints
    poses[0, 7] += 8.0  # one long phalanx: the term is active
    x = torch.as_tensor(poses).requires_grad_(True)
    group = torch.tensor([0, 0, 0, 1, 1, 1])

    def personal_term(j):
        return module(j, group=group)[1]["personal"]

    assert personal_term(x)[0] > 0
    assert torch.autograd.gradcheck(personal_term, (x,), eps=1e-6, atol=1e-5)


def test_torch_compile_of_the_module_in_a_fresh_process_state(limits):
    """``torch.compile(loss)`` (not ``loss.compile()``) when the chain's constant matrices
    were never created before: building the module creates them, so tracing does not fill
    the cache (a side effect dynamo cannot carry into the hand-derived backward)."""
    from bmc_calib import torch_chain

    torch._dynamo.reset()
    torch_chain._CONSTANTS.clear()
    compiled = torch.compile(BMCLoss(limits), fullgraph=True, backend="eager")
    poses = torch.as_tensor(_compile_batch(), dtype=torch.float32).requires_grad_(True)
    total, _ = compiled(poses)
    total.backward()
    assert torch.isfinite(poses.grad).all() and poses.grad.abs().max() > 0


def test_is_left_and_group_must_fit_the_batch(limits):
    """Per-pose arguments give each pose its own value or fail with one clear line: a
    ``(B,)`` flag for a ``(B, T)`` batch broadcast along T (with B == T, silently mirroring
    the wrong poses), and a 0/1 integer flag scaled x by −3 instead of mirroring."""
    module = BMCLoss(limits)
    poses = torch.as_tensor(implausible_poses(np.random.default_rng(3))[:16]).reshape(4, 4, 21, 3)
    flags = torch.tensor([True, False, True, False])
    per_sequence = module(poses, is_left=flags[:, None])[0]
    torch.testing.assert_close(per_sequence, module(poses, is_left=flags[:, None].expand(4, 4))[0])
    for bad, message in (
        (flags, r"is_left has shape \(4,\) for poses of batch shape \(4, 4\).*\(4, 1\)"),
        (torch.ones(3, 4, dtype=torch.bool), r"is_left has shape \(3, 4\)"),
        (flags.long()[:, None], "is_left must be bool"),
    ):
        with pytest.raises(BadInputError, match=message):
            module(poses, is_left=bad)
    assert module(poses, is_left=True)[0].isfinite()  # a bool, and bool numpy arrays, still do
    module(poses, is_left=np.zeros((4, 4), dtype=bool))
    labels = torch.arange(4)[:, None].expand(4, 4)
    module(poses, group=labels)
    for bad, message in (
        (torch.arange(4), r"group has shape \(4,\) for poses of batch shape \(4, 4\)"),
        (labels.float(), "group must hold integer labels"),
    ):
        with pytest.raises(BadInputError, match=message):
            module(poses, group=bad)
        with pytest.raises(BadInputError, match=message):
            module.magnitudes(poses, group=bad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_an_empty_batch_costs_nothing(limits, reduction, formulation):
    """A batch filtered down to no poses: a zero loss (the mean of nothing was NaN and turned
    a whole training loss into NaN), gradients of the right shape."""
    module = BMCLoss(limits, reduction=reduction)
    empty = torch.zeros(0, 21, 3, dtype=torch.float64, requires_grad=True)
    total, terms = module(empty, group=torch.zeros(0, dtype=torch.int64))
    if reduction == "none":
        assert total.shape == (0,)
    else:
        assert total.item() == 0.0 and all(t.item() == 0.0 for t in terms.values())
        total.backward()
        assert empty.grad is not None and empty.grad.shape == (0, 21, 3)
