"""bmc_calib.edits: feature-space edits equal the edited joints rebuilt by forward kinematics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bmc_calib import edits, skeleton, synthetic
from bmc_calib.kinematics import compute_features

SUBJECT = synthetic.make_subjects(1, seed=4)[0]


def _poses(n: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Right hands built from known angles (wrist at the origin) and those angles."""
    angles = synthetic.place_angles(synthetic.sample_angles(n, np.random.default_rng(2)))
    angles[:, 6:10, 0] = np.maximum(angles[:, 6:10, 0], math.radians(50))  # mirror applies
    return synthetic.forward_kinematics(SUBJECT.root_bones, angles, SUBJECT.finger_lengths), angles


def _rebuilt(angles: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return synthetic.forward_kinematics(SUBJECT.root_bones, angles, lengths)


def _assert_same(features, joints: np.ndarray) -> None:
    want = compute_features(joints)
    np.testing.assert_allclose(features.bone_length, want.bone_length, atol=1e-9)
    fa, wa = features.flexion_abduction, want.flexion_abduction
    diff = np.angle(np.exp(1j * (fa - wa)))  # flexion lives on a circle
    np.testing.assert_allclose(diff, 0.0, atol=1e-7)


@pytest.mark.parametrize("kind", [k for k in edits.EDIT_KINDS if k != "finger_mirrored"])
def test_angle_and_length_edits_equal_forward_kinematics(kind: str) -> None:
    joints, angles = _poses()
    e = edits.apply_edit(compute_features(joints), kind, seed=5)
    assert e.applies.all()
    a = angles.copy()
    lengths = np.tile(SUBJECT.finger_lengths, (len(a), 1))
    rows, f = np.arange(len(a)), e.finger
    if kind == "mcp_back_90":
        a[rows, f, 0] = -math.pi / 2
    elif kind == "pip_sideways_60":
        a[rows, 5 + f, 1] = e.features.flexion_abduction[rows, 5 + f, 1]
        assert np.allclose(np.abs(a[rows, 5 + f, 1]), math.radians(60))
    elif kind == "dip_back_80":
        a[rows, 10 + f, 0] = -math.radians(80)
    else:
        lengths[rows, 5 + f] *= 1.6
    _assert_same(e.features, _rebuilt(a, lengths))


def test_mirrored_finger_equals_the_reflection_through_its_palm_plane() -> None:
    joints, _ = _poses()
    e = edits.apply_edit(compute_features(joints), "finger_mirrored", seed=6)
    assert e.applies.all()
    mirrored = joints.copy()
    x, _, _ = synthetic.level0_frames(SUBJECT.root_bones)  # (5, 3): -palm normal per finger
    for i, f in enumerate(e.finger):
        n = x[f]
        mcp = joints[i, 4 * f + 1]
        for j in (4 * f + 2, 4 * f + 3, 4 * f + 4):  # PIP, DIP, tip
            mirrored[i, j] -= 2.0 * np.dot(joints[i, j] - mcp, n) * n
    _assert_same(e.features, mirrored)


def test_straight_fingers_are_not_mirrored_and_degenerate_poses_are_kept() -> None:
    joints, _ = _poses(4)
    feats = compute_features(joints)
    feats.flexion_abduction[:, 6:10, 0] = 0.0  # no finger flexed: nothing to mirror
    e = edits.apply_edit(feats, "finger_mirrored")
    assert not e.applies.any()
    np.testing.assert_array_equal(e.features.flexion_abduction, feats.flexion_abduction)
    bad = compute_features(np.full((2, skeleton.NUM_JOINTS, 3), np.nan))
    for kind in edits.EDIT_KINDS:
        out = edits.apply_edit(bad, kind)
        assert not out.applies.any()
        assert np.isfinite(out.features.flexion_abduction).all()
    with pytest.raises(ValueError, match="unknown edit"):
        edits.apply_edit(feats, "thumb_removed")
