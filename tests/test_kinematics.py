"""Geometry of bmc_calib.kinematics against DESIGN §4: known angles, invariances, degeneracy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from bmc_calib import kinematics, skeleton, synthetic
from bmc_calib.kinematics import DEGENERATE_REASONS, compute_features


# --------------------------------------------------------------------------- helpers
def flat_hand() -> np.ndarray:
    """A right hand with a flat palm in the z = 0 plane: fingers +y, thumb −x, back of hand +z.

    Every finger is straight along its root bone, so every angle is 0.
    """
    root = np.array([[-30.0, 30, 0], [-22, 92, 0], [0, 95, 0], [19, 88, 0], [36, 78, 0]])
    j = np.zeros((21, 3))
    for f in range(5):
        d = root[f] / np.linalg.norm(root[f])
        j[4 * f + 1] = root[f]
        for level in range(3):
            j[4 * f + 2 + level] = j[4 * f + 1 + level] + d * (40.0 - 8.0 * level)
    return j


def literal_features(pose: np.ndarray) -> dict[str, np.ndarray]:
    """DESIGN §4.2–4.6 transcribed line by line for one pose, no shortcuts, unnormalised."""

    def unit(v):
        return v / np.linalg.norm(v)

    def angle(a, b):
        return np.arctan2(np.linalg.norm(np.cross(a, b)), np.dot(a, b))

    bones = np.array([pose[k + 1] - pose[skeleton.PARENTS[k + 1]] for k in range(20)])
    r = bones[[0, 4, 8, 12, 16]]
    n = [unit(np.cross(r[i + 1], r[i])) for i in range(4)]
    e = [n[0], unit(n[1] + n[0]), unit(n[2] + n[1]), unit(n[3] + n[2]), n[3]]
    curv = [np.dot(e[i + 1] - e[i], r[i + 1] - r[i]) / np.dot(r[i + 1] - r[i], r[i + 1] - r[i])
            for i in range(4)]  # fmt: skip
    phi = [angle(r[i], r[i + 1]) for i in range(4)]
    xs = [-n[0], -n[1], -unit(n[2] + n[1]), -unit(n[3] + n[2]), -n[3]]
    angles = np.zeros((15, 2))
    for f in range(5):
        z, x = unit(r[f]), xs[f]
        y = unit(np.cross(z, x))
        for level in range(3):
            b = bones[4 * f + 1 + level]
            bxz = b - np.dot(b, y) * y
            flex = angle(bxz, z)
            flex = -flex if np.dot(b, x) < 0 else flex
            abd = angle(bxz, b)
            abd = -abd if np.dot(b, y) < 0 else abd
            angles[5 * level + f] = flex, abd
            axis = unit(np.cross(z, b))
            rot = Rotation.from_rotvec(axis * angle(z, b)).as_matrix()
            x, y, z = rot @ x, rot @ y, unit(b)
    return {
        "bone_length": np.linalg.norm(bones, axis=1),
        "palm_curvature": np.array(curv),
        "palm_angle": np.array(phi),
        "flexion_abduction": angles,
    }


@pytest.fixture(scope="module")
def poses() -> synthetic.SyntheticPoses:
    subject = synthetic.make_subjects(2, seed=3)[1]
    return synthetic.generate(subject, 300, seed=11, glitch_fraction=0.0)


# --------------------------------------------------------------------------- known angles
def test_forward_kinematics_round_trip_recovers_angles_and_lengths() -> None:
    rng = np.random.default_rng(0)
    subject = synthetic.make_subjects(3, seed=1)[2]
    n = 500
    angles = np.stack((rng.uniform(-2.5, 2.5, (n, 15)), rng.uniform(-1.2, 1.2, (n, 15))), axis=-1)
    angles[:7] = 0.0  # straight fingers: bone parallel to z at every level
    angles[7, :, 0] = 1e-12  # tiny, positive
    angles[8, :, 0] = -1e-12
    joints = synthetic.forward_kinematics(subject.root_bones, angles, subject.finger_lengths)
    feats = compute_features(joints, "none")
    assert not feats.degenerate.any()
    np.testing.assert_allclose(feats.flexion_abduction, angles, atol=1e-9, rtol=0)
    np.testing.assert_allclose(
        feats.bone_length, np.broadcast_to(subject.bone_lengths(), (n, 20)), atol=1e-9, rtol=0
    )


def test_sign_conventions_on_a_hand_drawn_pose() -> None:
    j = flat_hand()
    feats = compute_features(j[None])
    np.testing.assert_allclose(feats.flexion_abduction, 0.0, atol=1e-12)
    # bend the index middle phalanx (PIP, angle id 6) 90° towards the palm (−z)
    bent = j.copy()
    pip = bent[6]
    bent[7] = pip + np.array([0, 0, -32.0])
    bent[8] = bent[7] + np.array([0, 0, -24.0])
    fa = np.degrees(compute_features(bent[None]).flexion_abduction[0])
    assert fa[6, 0] == pytest.approx(90.0, abs=1e-9)
    assert fa[6, 1] == pytest.approx(0.0, abs=1e-9)
    assert fa[11, 0] == pytest.approx(0.0, abs=1e-9)  # DIP stays straight relative to it
    # move the whole index finger towards the thumb (−x) at the MCP: positive abduction
    side = j.copy()
    rot = Rotation.from_rotvec([0, 0, np.radians(15.0)]).as_matrix()  # +z turns +y towards −x
    side[6:9] = (side[6:9] - side[5]) @ rot.T + side[5]
    fa = np.degrees(compute_features(side[None]).flexion_abduction[0])
    assert fa[1, 1] == pytest.approx(15.0, abs=1e-9)
    assert fa[1, 0] == pytest.approx(0.0, abs=1e-9)


def test_matches_a_literal_transcription_of_the_design(poses: synthetic.SyntheticPoses) -> None:
    joints = poses.joints[:60]
    feats = compute_features(joints, "none")
    for i, pose in enumerate(joints):
        ref = literal_features(pose)
        for name, value in ref.items():
            np.testing.assert_allclose(getattr(feats, name)[i], value, atol=1e-10, rtol=1e-10)


def test_reference_bone_normalisation_scales_lengths_and_curvature(poses) -> None:
    raw = compute_features(poses.joints, "none")
    norm = compute_features(poses.joints)
    ref = np.linalg.norm(poses.joints[:, 0] - poses.joints[:, 9], axis=1)
    np.testing.assert_allclose(norm.bone_length, raw.bone_length / ref[:, None], rtol=1e-12)
    np.testing.assert_allclose(norm.palm_curvature, raw.palm_curvature * ref[:, None],
                               rtol=1e-9, atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(norm.flexion_abduction, raw.flexion_abduction, atol=1e-12)
    np.testing.assert_allclose(norm.bone_length[:, 8], 1.0, rtol=1e-12)  # the reference bone


# --------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariant_to_rotation_translation_and_scale(poses, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rot = Rotation.random(random_state=seed).as_matrix()
    scale = rng.uniform(0.001, 1000.0)
    moved = scale * poses.joints @ rot.T + rng.normal(0, 500, 3)
    a, b = compute_features(poses.joints), compute_features(moved)
    for name in ("bone_length", "palm_curvature", "palm_angle", "flexion_abduction"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), atol=1e-9, rtol=1e-9)


def test_mirrored_left_hand_equals_the_right_hand(poses) -> None:
    left = skeleton.mirror(poses.joints)
    assert not np.allclose(left, poses.joints)
    back = skeleton.mirror(left)
    np.testing.assert_array_equal(back, poses.joints)
    right, unmirrored = compute_features(poses.joints), compute_features(back)
    np.testing.assert_allclose(unmirrored.flexion_abduction, right.flexion_abduction, atol=1e-12)
    # a left hand read as a right hand is not the same hand: its palm folds the other way
    as_right = compute_features(left)
    assert not np.allclose(as_right.palm_curvature, right.palm_curvature, atol=1e-3)
    np.testing.assert_allclose(as_right.bone_length, right.bone_length, rtol=1e-12)


def test_chunking_and_float32_do_not_change_results(poses) -> None:
    whole = compute_features(poses.joints)
    chunked = compute_features(poses.joints, chunk_size=7)
    for name in kinematics.Features.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))
    f32 = compute_features(poses.joints.astype(np.float32), dtype=np.float32)
    np.testing.assert_allclose(f32.flexion_abduction, whole.flexion_abduction, atol=2e-5)
    assert f32.bone_length.dtype == np.float32


def test_accepts_any_batch_shape() -> None:
    j = flat_hand()
    assert len(compute_features(j)) == 1
    assert len(compute_features(np.broadcast_to(j, (2, 3, 21, 3)))) == 6
    with pytest.raises(ValueError, match=r"\(\.\.\., 21, 3\)"):
        compute_features(np.zeros((4, 20, 3)))


# --------------------------------------------------------------------------- degenerate input
def _reason_bits(*names: str) -> int:
    return sum(1 << DEGENERATE_REASONS.index(n) for n in names)


def _degenerate_cases() -> dict[str, tuple[np.ndarray, str]]:
    j = flat_hand()
    cases = {}
    nan = j.copy()
    nan[7, 1] = np.nan
    cases["nan"] = (nan, "non_finite")
    inf = j.copy()
    inf[20, 2] = -np.inf
    cases["inf"] = (inf, "non_finite")
    tip = j.copy()
    tip[12] = tip[11]
    cases["zero tip bone"] = (tip, "zero_bone")
    ref = j.copy()
    ref[0] = ref[9]
    cases["zero reference bone"] = (ref, "zero_bone")
    mcps = j.copy()
    mcps[13] = mcps[9]
    cases["coincident MCPs"] = (mcps, "coincident_mcps")
    par = j.copy()
    par[5] = par[9] * 0.6  # index MCP on the wrist→middle-MCP line
    cases["parallel root bones"] = (par, "parallel_root_bones")
    fold = j.copy()  # r0 and r2 on the same side of r1 in one plane: n_0 = −n_1
    fold[1] = np.array([-40.0, 40, 0])
    fold[5] = np.array([0.0, 90, 0])
    fold[9] = np.array([-30.0, 60, 0])
    cases["folded palm"] = (fold, "folded_palm")
    return cases


@pytest.mark.parametrize("case", list(_degenerate_cases()))
def test_degenerate_poses_are_flagged_with_their_reason_and_never_nan(case: str) -> None:
    pose, reason = _degenerate_cases()[case]
    for norm in kinematics.NORMALIZATIONS:
        feats = compute_features(np.stack([flat_hand(), pose]), norm)
        assert feats.degenerate.tolist() == [False, True]
        assert feats.degenerate_reason[1] & _reason_bits(reason)
        assert reason in kinematics.degenerate_reason_names(int(feats.degenerate_reason[1]))
        for name in ("bone_length", "palm_curvature", "palm_angle", "flexion_abduction"):
            value = getattr(feats, name)
            assert np.isfinite(value).all()
            assert (value[1] == 0).all()


@pytest.mark.parametrize("norm", kinematics.NORMALIZATIONS)
def test_unusable_coordinates_are_the_only_reason_given(norm: str) -> None:
    """Non-finite or out-of-range coordinates are replaced by 0 before the geometric tests;
    the zeros must not be reported as zero bones, coincident MCPs and so on."""
    j = flat_hand()
    one_nan = j.copy()
    one_nan[7, 1] = np.nan
    huge = j * 1e9  # every coordinate beyond COORDINATE_LIMIT
    both = huge.copy()
    both[3, 0] = np.inf
    poses = np.stack([one_nan, np.full_like(j, np.nan), huge, both, j])
    feats = compute_features(poses, norm)
    names = [kinematics.degenerate_reason_names(int(c)) for c in feats.degenerate_reason]
    assert names == [["non_finite"], ["non_finite"], ["out_of_range"], ["non_finite"], []]
    assert feats.degenerate.tolist() == [True, True, True, True, False]


def test_finger_folded_back_onto_itself_is_finite() -> None:
    j = flat_hand()
    back = j.copy()
    # the middle phalanx of the index points exactly back along the proximal one
    d = (j[6] - j[5]) / np.linalg.norm(j[6] - j[5])
    back[7] = back[6] - 20.0 * d
    back[8] = back[7] - 15.0 * d
    feats = compute_features(back[None])
    assert not feats.degenerate[0]
    assert np.isfinite(feats.flexion_abduction).all()
    assert abs(feats.flexion_abduction[0, 6, 0]) == pytest.approx(np.pi)
    # the antiparallel frame rule keeps the next bone straight relative to it
    assert feats.flexion_abduction[0, 11, 0] == pytest.approx(0.0, abs=1e-12)


def test_random_garbage_never_produces_nan() -> None:
    rng = np.random.default_rng(5)
    # scales within kinematics.COORDINATE_LIMIT; beyond it see tests/test_hardening_numbers.py
    junk = rng.normal(size=(2000, 21, 3)) * rng.choice([0.0, 1e-6, 1.0, 1e6], (2000, 21, 1))
    junk[rng.random((2000, 21, 3)) < 0.001] = np.nan
    feats = compute_features(junk)
    for name in ("bone_length", "palm_curvature", "palm_angle", "flexion_abduction"):
        assert np.isfinite(getattr(feats, name)).all()
    assert feats.degenerate.any() and not feats.degenerate.all()


def test_features_are_stored_as_floats_only() -> None:
    with pytest.raises(ValueError, match="dtype must be a floating type, got int32"):
        compute_features(flat_hand()[None], dtype=np.int32)
    assert compute_features(flat_hand()[None], dtype=np.float32).bone_length.dtype == np.float32
