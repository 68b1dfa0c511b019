"""bmc_calib.metrics against hand-computed values: MPJPE, Procrustes, PCK AUC, accumulation."""

from __future__ import annotations

import numpy as np
import pytest

from bmc_calib import metrics


def _poses(n: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 40.0, (n, 21, 3))


def _rotations(n: int, seed: int = 1) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 3, 3))
    u, _, vt = np.linalg.svd(q)
    r = u @ vt
    r[np.linalg.det(r) < 0] *= -1.0  # proper rotations (3x3: negating flips det)
    return r


def test_mpjpe_of_a_known_offset() -> None:
    gt = _poses()
    pred = gt + np.array([3.0, 4.0, 0.0])  # every joint 5 mm away
    assert metrics.mpjpe(pred, gt, "none") == pytest.approx(5.0, abs=1e-12)
    assert metrics.mpjpe(pred, gt, "root") == pytest.approx(0.0, abs=1e-12)
    moved = gt.copy()
    moved[:, 5] += np.array([0.0, 0.0, 21.0])  # one joint of 21 off by 21 mm
    assert metrics.mpjpe(moved, gt, "root") == pytest.approx(1.0, abs=1e-12)
    errors = metrics.joint_errors(moved, gt, "none")
    assert errors.shape == (8, 21)
    np.testing.assert_allclose(errors[:, 5], 21.0)
    np.testing.assert_allclose(np.delete(errors, 5, axis=1), 0.0, atol=1e-12)


def test_root_alignment_uses_the_wrist() -> None:
    gt = _poses()
    pred = gt.copy()
    pred[:, 0] += np.array([0.0, 6.0, 8.0])  # only the wrist is off by 10 mm
    # after aligning the wrists, the 20 other joints are 10 mm off, the wrist 0
    assert metrics.mpjpe(pred, gt, "root") == pytest.approx(200.0 / 21.0, abs=1e-12)
    np.testing.assert_allclose(metrics.root_align(gt)[:, 0], 0.0)


def test_procrustes_removes_a_similarity_transform_exactly() -> None:
    gt = _poses(16)
    rot = _rotations(16)
    scale = np.linspace(0.5, 2.0, 16)[:, None, None]
    shift = np.random.default_rng(2).normal(0.0, 100.0, (16, 1, 3))
    pred = scale * np.einsum("nik,njk->nji", rot, gt) + shift
    assert metrics.mpjpe(pred, gt, "root") > 10.0
    aligned = metrics.procrustes_align(pred, gt)
    np.testing.assert_allclose(aligned, gt, atol=1e-9)
    assert metrics.mpjpe(pred, gt, "procrustes") < 1e-9


def test_procrustes_does_not_remove_a_reflection() -> None:
    gt = _poses()
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert metrics.mpjpe(mirrored, gt, "procrustes") > 5.0
    aligned = metrics.procrustes_align(mirrored, gt)
    centred = aligned - aligned.mean(axis=1, keepdims=True)
    source = mirrored - mirrored.mean(axis=1, keepdims=True)
    # the transform found is a proper rotation times a scale: det > 0
    for a, s in zip(centred, source, strict=True):
        m, *_ = np.linalg.lstsq(s, a, rcond=None)
        assert np.linalg.det(m) > 0


def test_procrustes_is_optimal_against_perturbed_transforms() -> None:
    rng = np.random.default_rng(3)
    gt = _poses(4)
    pred = gt + rng.normal(0.0, 5.0, gt.shape)  # noisy: no exact transform exists
    aligned = metrics.procrustes_align(pred, gt)
    best = np.sum((aligned - gt) ** 2, axis=(1, 2))
    for _ in range(20):
        small = _rotations(4, seed=int(rng.integers(1 << 30)))
        small = np.array([np.eye(3) + 0.02 * (r - r.T) for r in small])  # near identity
        u, _, vt = np.linalg.svd(small)
        rot = u @ vt
        centre = aligned.mean(axis=1, keepdims=True)
        s = 1.0 + rng.normal(0.0, 0.01, (4, 1, 1))
        other = s * np.einsum("nik,njk->nji", rot, aligned - centre) + centre
        other += rng.normal(0.0, 0.5, (4, 1, 3))
        assert np.all(np.sum((other - gt) ** 2, axis=(1, 2)) >= best - 1e-9)


def test_procrustes_of_a_collapsed_prediction_has_no_nan() -> None:
    gt = _poses(2)
    aligned = metrics.procrustes_align(np.zeros_like(gt), gt)
    np.testing.assert_allclose(aligned, np.broadcast_to(gt.mean(axis=1, keepdims=True), gt.shape))


def test_procrustes_of_a_pose_with_nan_is_nan_and_leaves_the_others() -> None:
    """One non-finite pose made the batch's SVD fail (LinAlgError); now it alone is NaN."""
    gt = _poses(4)
    pred = gt * 1.1 + 3.0
    pred[1, 5, 2] = np.nan
    gt[3, 0, 0] = np.inf
    errors = metrics.joint_errors(pred, gt, alignment="procrustes")
    assert np.isnan(errors[[1, 3]]).all()
    np.testing.assert_allclose(errors[[0, 2]], 0.0, atol=1e-9)
    assert np.isnan(metrics.mpjpe(pred, gt, alignment="procrustes"))


def test_pck_auc_of_known_errors() -> None:
    errors = np.array([0.0, 25.0, 50.0, 100.0])
    # PCK(t) over 0..50: error 0 counts on the whole range, 25 on half of it, 50 and 100 never
    # (50 only at the single point t = 50)
    assert metrics.pck_auc(errors, 0.0, 50.0) == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    # over 20..50: error 0 → 1, error 25 → (50 − 25) / 30, the others 0
    assert metrics.pck_auc(errors, 20.0, 50.0) == pytest.approx((1 + 25 / 30) / 4)
    np.testing.assert_allclose(
        metrics.pck(errors, [0.0, 24.9, 25.0, 50.0]), [0.25, 0.25, 0.5, 0.75]
    )


def test_exact_auc_equals_the_dense_trapezoid() -> None:
    errors = np.random.default_rng(4).gamma(2.0, 12.0, 5000)
    for lo, hi in metrics.AUC_RANGES:
        t = np.linspace(lo, hi, 20001)
        curve = metrics.pck(errors, t)
        trapezoid = float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(t)) / (hi - lo))
        assert metrics.pck_auc(errors, lo, hi) == pytest.approx(trapezoid, abs=1e-4)
    with pytest.raises(ValueError, match="hi > lo"):
        metrics.pck_auc(errors, 50.0, 20.0)


def test_accumulator_equals_one_shot_and_skips_non_finite() -> None:
    rng = np.random.default_rng(5)
    gt = _poses(30)
    pred = gt + rng.normal(0.0, 10.0, gt.shape)
    pred[7, 3, 1] = np.nan  # one unusable prediction
    groups = np.arange(30) % 3
    acc = metrics.AccuracyAccumulator(groups=3)
    per_pose = np.concatenate(
        [acc.add(pred[s : s + 11], gt[s : s + 11], groups[s : s + 11]) for s in (0, 11, 22)]
    )
    result = acc.result()
    ok = np.arange(30) != 7
    assert result.poses == 29 and result.skipped == 1
    assert np.isnan(per_pose[7]).all() and np.isfinite(per_pose[ok]).all()
    assert result.mpjpe_root == pytest.approx(metrics.mpjpe(pred[ok], gt[ok], "root"))
    assert result.mpjpe_procrustes == pytest.approx(metrics.mpjpe(pred[ok], gt[ok], "procrustes"))
    root = metrics.joint_errors(pred[ok], gt[ok], "root")
    for lo, hi in metrics.AUC_RANGES:
        assert result.auc_root[(lo, hi)] == pytest.approx(metrics.pck_auc(root, lo, hi))
    assert result.mpjpe_procrustes <= result.mpjpe_root
    for g in range(3):
        rows = ok & (groups == g)
        assert result.by_group[g]["poses"] == int(rows.sum())
        expected = metrics.mpjpe(pred[rows], gt[rows], "root")
        assert result.by_group[g]["mpjpe_root"] == pytest.approx(expected)


def test_empty_accumulator_and_units() -> None:
    result = metrics.AccuracyAccumulator().result()
    assert result.poses == 0 and result.mpjpe_root is None
    assert all(v is None for v in result.auc_procrustes.values())
    assert metrics.mm_per_unit("m") == 1000.0 and metrics.mm_per_unit(" CM ") == 10.0
    assert metrics.mm_per_unit("unknown") is None
    with pytest.raises(ValueError, match="shape"):
        metrics.mpjpe(np.zeros((2, 21, 3)), np.zeros((3, 21, 3)))
