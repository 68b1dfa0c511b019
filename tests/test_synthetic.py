"""Tests of bmc_calib.synthetic: forward kinematics against an independent inverse, subjects,
angle sampling, generated poses, and the sample data files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from bmc_calib import hand_model, skeleton
from bmc_calib.synthetic import (
    RANGES,
    Subject,
    forward_kinematics,
    generate,
    make_subjects,
    place_angles,
    ranges_radians,
    sample_angles,
)

SUBJECT = make_subjects(1, seed=0)[0]
DATA = Path(__file__).resolve().parent.parent / "data_samples"


# ------------------------------------------------------------------ independent reference inverse
# A deliberately plain, per-pose transcription of DESIGN §4.4–4.6 (angles via atan2 of cross and
# dot, next-level rotation via scipy's rotation vector), sharing no code with the library.
def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.arctan2(np.linalg.norm(np.cross(a, b)), np.dot(a, b)))


def reference_angles(joints: np.ndarray) -> np.ndarray:
    """(15, 2) flexion/abduction of one (21, 3) right-hand pose, DESIGN §4.4–4.6."""
    parents = np.asarray(skeleton.PARENTS)
    bones = joints[1:] - joints[parents[1:]]
    r = [bones[k] for k in (0, 4, 8, 12, 16)]
    n = [_unit(np.cross(r[i + 1], r[i])) for i in range(4)]
    xs = [-n[0], -n[1], -_unit(n[2] + n[1]), -_unit(n[3] + n[2]), -n[3]]
    out = np.zeros((15, 2))
    for f in range(5):
        z = _unit(r[f])
        x = xs[f]
        y = _unit(np.cross(z, x))
        for level in range(3):
            b = bones[4 * f + 1 + level]
            b_xz = b - np.dot(b, y) * y
            flex = _angle(b_xz, z)
            if np.dot(b, x) < 0:
                flex = -flex
            abd = _angle(b_xz, b)
            if np.dot(b, y) < 0:
                abd = -abd
            out[5 * level + f] = flex, abd
            axis = np.cross(z, b)
            if np.linalg.norm(axis) > 1e-12 * np.linalg.norm(b):
                rot = Rotation.from_rotvec(_unit(axis) * _angle(z, b)).as_matrix()
            elif np.dot(z, b) > 0:
                rot = np.eye(3)
            else:  # antiparallel: rotation by π about x
                rot = Rotation.from_rotvec(np.pi * x).as_matrix()
            x, y, z = rot @ x, rot @ y, _unit(b)
    return out


def reference_lengths(joints: np.ndarray) -> np.ndarray:
    parents = np.asarray(skeleton.PARENTS)
    return np.linalg.norm(joints[..., 1:, :] - joints[..., parents[1:], :], axis=-1)


def _random_roots(rng: np.random.Generator) -> np.ndarray:
    """The template subject's palm, randomly rotated (the geometry must not care)."""
    rot = Rotation.from_quat(rng.standard_normal(4)).as_matrix()
    return SUBJECT.root_bones @ rot.T


# ------------------------------------------------------------------ forward kinematics round trip
def _chosen_angles() -> list[np.ndarray]:
    deg = np.deg2rad
    cases = []
    a = np.zeros((15, 2))
    cases.append(a.copy())  # flat hand: every value exactly 0
    a[:, 0] = deg(np.linspace(-40, 120, 15))  # negative and positive flexion, all levels
    cases.append(a.copy())
    a[:5, 1] = deg([15.0, -20.0, 7.0, -3.0, 19.0])  # non-zero abduction at level 0
    a[5, 1] = deg(-6.0)  # and at the thumb MCP
    cases.append(a.copy())
    b = np.full((15, 2), 1e-7)  # values near 0, both signs
    b[::2] *= -1
    cases.append(b)
    c = np.zeros((15, 2))
    c[:, 0] = deg(170.0) * np.resize([1, -1], 15)  # near ±π flexion
    c[:5, 1] = deg(80.0) * np.resize([1, -1], 5)  # near ±π/2 abduction
    cases.append(c)
    return cases


@pytest.mark.parametrize("angles", _chosen_angles())
def test_fk_round_trips_chosen_angles(angles: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    roots = _random_roots(rng)
    lengths = SUBJECT.finger_lengths
    joints = forward_kinematics(roots, angles, lengths)
    assert joints.shape == (21, 3)
    np.testing.assert_array_equal(joints[0], 0.0)
    np.testing.assert_allclose(joints[[1, 5, 9, 13, 17]], roots, atol=1e-12)
    np.testing.assert_allclose(reference_angles(joints), angles, rtol=0, atol=1e-9)
    bones = reference_lengths(joints)
    np.testing.assert_allclose(bones[skeleton.ANGLE_BONES], lengths, rtol=0, atol=1e-9)


_finite = {"allow_nan": False, "allow_infinity": False}


@settings(max_examples=40, deadline=None)
@given(
    flex=st.lists(st.floats(-np.pi + 0.2, np.pi - 0.2, **_finite), min_size=15, max_size=15),
    abd=st.lists(st.floats(-1.3, 1.3, **_finite), min_size=15, max_size=15),
    lengths=st.lists(st.floats(1.0, 80.0, **_finite), min_size=15, max_size=15),
    seed=st.integers(0, 2**32 - 1),
)
def test_fk_round_trips_any_angles(
    flex: list[float], abd: list[float], lengths: list[float], seed: int
) -> None:
    angles = np.stack([flex, abd], axis=-1)
    joints = forward_kinematics(_random_roots(np.random.default_rng(seed)), angles, lengths)
    np.testing.assert_allclose(reference_angles(joints), angles, rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        reference_lengths(joints)[skeleton.ANGLE_BONES], lengths, rtol=0, atol=1e-9
    )


def test_fk_is_vectorised_and_broadcasts() -> None:
    rng = np.random.default_rng(2)
    angles = sample_angles(12, rng).reshape(3, 4, 15, 2)
    roots = np.stack([_random_roots(rng) for _ in range(4)])  # (4, 5, 3) broadcasts over 3
    batch = forward_kinematics(roots, angles, SUBJECT.finger_lengths)
    assert batch.shape == (3, 4, 21, 3)
    for i in range(3):
        for k in range(4):
            single = forward_kinematics(roots[k], angles[i, k], SUBJECT.finger_lengths)
            np.testing.assert_allclose(batch[i, k], single, rtol=0, atol=1e-12)


def test_fk_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., 15, 2\)"):
        forward_kinematics(SUBJECT.root_bones, np.zeros((14, 2)), SUBJECT.finger_lengths)
    with pytest.raises(ValueError, match=r"\(\.\.\., 5, 3\)"):
        forward_kinematics(np.zeros((4, 3)), np.zeros((15, 2)), SUBJECT.finger_lengths)


def test_fk_antiparallel_bone_uses_rotation_by_pi_about_x() -> None:
    angles = np.zeros((15, 2))
    angles[:5, 0] = np.pi  # level-0 bones point straight back along -z
    angles[5:10, 0] = 0.3  # level-1 flexion, measured in (x, -y, -z)
    joints = forward_kinematics(SUBJECT.root_bones, angles, SUBJECT.finger_lengths)
    assert np.isfinite(joints).all()
    np.testing.assert_allclose(reference_angles(joints), angles, atol=1e-9)
    # explicitly: level-1 bone = L (sin θ x − cos θ z) in the level-0 frame of finger 1
    r = SUBJECT.root_bones
    x = -_unit(np.cross(r[2], r[1]))
    z = _unit(r[1])
    expected = SUBJECT.finger_lengths[6] * (np.sin(0.3) * x - np.cos(0.3) * z)
    np.testing.assert_allclose(joints[7] - joints[6], expected, atol=1e-9)


def test_fk_zero_length_bone_gives_no_nan() -> None:
    lengths = SUBJECT.finger_lengths.copy()
    lengths[[1, 6]] = 0.0
    joints = forward_kinematics(SUBJECT.root_bones, np.full((15, 2), 0.2), lengths)
    assert np.isfinite(joints).all()


def test_sign_convention_on_a_flat_right_hand() -> None:
    """Positive flexion bends towards the palm (−z in the hand frame), positive abduction
    moves towards the thumb (−x), for every long finger of a flat right hand."""
    flat = forward_kinematics(SUBJECT.root_bones, np.zeros((15, 2)), SUBJECT.finger_lengths)
    for f in range(1, 5):
        tip = 4 * f + 4
        flexed = np.zeros((15, 2))
        flexed[f, 0] = np.deg2rad(45.0)
        joints = forward_kinematics(SUBJECT.root_bones, flexed, SUBJECT.finger_lengths)
        assert joints[tip, 2] < flat[tip, 2] - 10.0  # towards the palm side
        spread = np.zeros((15, 2))
        spread[f, 1] = np.deg2rad(15.0)
        joints = forward_kinematics(SUBJECT.root_bones, spread, SUBJECT.finger_lengths)
        assert joints[tip, 0] < flat[tip, 0] - 5.0  # towards the thumb side
    # the palm normals of the hand frame point out of the back of the hand (+z)
    r = SUBJECT.root_bones
    for i in range(4):
        assert np.cross(r[i + 1], r[i])[2] > 0


def test_fk_round_trip_against_library_kinematics() -> None:
    """bmc_calib.kinematics (the library's DESIGN §4 extraction) inverts forward_kinematics."""
    kinematics = pytest.importorskip("bmc_calib.kinematics")
    rng = np.random.default_rng(3)
    roots = np.stack([_random_roots(rng) for _ in range(50)])
    angles = sample_angles(50, rng)
    angles[:5] = np.stack(_chosen_angles())  # include the hand-picked edge cases
    joints = forward_kinematics(roots, angles, SUBJECT.finger_lengths)
    np.testing.assert_allclose(kinematics.flexion_abduction(joints), angles, atol=1e-9)
    expected = np.empty((50, 20))
    expected[:, skeleton.ANGLE_BONES] = SUBJECT.finger_lengths
    expected[:, list(skeleton.ROOT_BONES)] = np.linalg.norm(roots, axis=-1)
    np.testing.assert_allclose(kinematics.bone_lengths(joints, "none"), expected, atol=1e-9)


# ------------------------------------------------------------------ subjects
def test_subjects_differ_in_proportions_and_are_stable() -> None:
    subjects = make_subjects(5, seed=0)
    assert [s.name for s in subjects] == [f"subject_{i:02d}" for i in range(1, 6)]
    lengths = np.stack([s.bone_lengths() for s in subjects])  # (5, 20)
    size = lengths[:, 8]  # wrist → middle MCP
    # template 92 mm, hand size ±15 %, palm length ±10 %
    assert 0.85 * 0.9 * 92.0 <= size.min() and size.max() <= 1.15 * 1.1 * 92.0
    assert size.max() / size.min() > 1.05  # sizes differ
    ratios = lengths / size[:, None]
    for i in range(5):
        for k in range(i + 1, 5):
            assert np.abs(ratios[i] - ratios[k]).max() > 0.01  # proportions differ, not just size
    assert (np.abs(ratios / ratios.mean(axis=0) - 1.0) < 0.25).all()  # but only by a few %
    # subject i does not depend on count; a different seed gives different people
    again = make_subjects(7, seed=0)
    for a, b in zip(subjects, again[:5], strict=True):
        np.testing.assert_array_equal(a.root_bones, b.root_bones)
        np.testing.assert_array_equal(a.finger_lengths, b.finger_lengths)
    assert not np.allclose(make_subjects(1, seed=1)[0].root_bones, subjects[0].root_bones)
    # read-only and validated
    with pytest.raises(ValueError):
        subjects[0].root_bones[0, 0] = 1.0
    with pytest.raises(ValueError):
        Subject("bad", np.zeros((4, 3)), np.ones(15))


def test_subject_bone_lengths_order() -> None:
    joints = forward_kinematics(SUBJECT.root_bones, np.zeros((15, 2)), SUBJECT.finger_lengths)
    np.testing.assert_allclose(SUBJECT.bone_lengths(), reference_lengths(joints), atol=1e-12)


# ------------------------------------------------------------------ angle sampling
def test_ranges_table() -> None:
    assert sorted(RANGES) == list(range(15))
    lim = ranges_radians()
    assert lim.shape == (15, 2, 2)
    assert (lim[..., 0] <= lim[..., 1]).all()
    assert (np.abs(lim[:, 0]) < np.pi - 0.2).all()
    for a in range(6, 15):  # PIP/DIP/IP hinges: no abduction
        assert RANGES[a][1] == (0.0, 0.0)
    assert RANGES[1] == ((-30.0, 90.0), (-20.0, 20.0))


def test_sample_angles_inside_ranges_and_look_like_recordings() -> None:
    n = 20000
    a = sample_angles(n, np.random.default_rng(4))
    assert a.shape == (n, 15, 2)
    lim = ranges_radians()
    assert (a >= lim[:, :, 0]).all() and (a <= lim[:, :, 1]).all()
    assert (a[:, 6:, 1] == 0.0).all()
    # every active range is explored to near both ends (DIP: up to ⅔ of the PIP maximum) ...
    width = lim[..., 1] - lim[..., 0]
    active = width > 0
    active[11:15, 0] = False
    assert (np.rad2deg(a[:, 11:15, 0].max(axis=0)) > 70.0).all()
    lo_gap = (a.min(axis=0) - lim[..., 0])[active] / width[active]
    hi_gap = (lim[..., 1] - a.max(axis=0))[active] / width[active]
    assert lo_gap.max() < 0.03 and hi_gap.max() < 0.03
    # ... but not uniformly: relaxed poses dominate (MCP flexion histogram is peaked)
    hist, _ = np.histogram(a[:, 2, 0], bins=12, range=tuple(lim[2, 0]))
    assert hist.max() > 2.0 * hist.min()
    # DIP ≈ ⅔ PIP
    resid = np.rad2deg(a[:, 11:15, 0] - 2.0 / 3.0 * a[:, 6:10, 0])
    assert np.median(np.abs(resid)) < 5.0
    # deterministic in the generator
    np.testing.assert_array_equal(
        sample_angles(50, np.random.default_rng(9)), sample_angles(50, np.random.default_rng(9))
    )


# ------------------------------------------------------------------ generate
def _unmirrored(poses) -> np.ndarray:
    return np.where(poses.is_left[:, None, None], skeleton.mirror(poses.joints), poses.joints)


def test_generate_shapes_and_determinism() -> None:
    p = generate(SUBJECT, 300, seed=5, left_fraction=0.2)
    assert p.joints.shape == (300, 21, 3) and p.joints.dtype == np.float64
    assert p.angles.shape == (300, 15, 2)
    assert p.is_left.shape == p.is_glitch.shape == (300,)
    assert p.is_left.dtype == p.is_glitch.dtype == np.bool_
    assert p.is_left.sum() == 60 and p.is_glitch.sum() == 9
    q = generate(SUBJECT, 300, seed=5, left_fraction=0.2)
    for field in ("joints", "angles", "is_left", "is_glitch"):
        np.testing.assert_array_equal(getattr(p, field), getattr(q, field))
    r = generate(SUBJECT, 300, seed=6, left_fraction=0.2)
    assert not np.allclose(p.joints, r.joints)
    # the fractions do not change the underlying poses
    s = generate(SUBJECT, 300, seed=5, glitch_fraction=0.0)
    np.testing.assert_array_equal(p.angles, s.angles)
    clean = ~p.is_glitch
    np.testing.assert_array_equal(_unmirrored(p)[clean], s.joints[clean])


def test_generate_angles_inside_ranges_and_recovered() -> None:
    p = generate(SUBJECT, 400, seed=7, glitch_fraction=0.0, placement=False)
    lim = ranges_radians()
    assert (p.angles >= lim[:, :, 0]).all() and (p.angles <= lim[:, :, 1]).all()
    for i in range(0, 400, 20):  # the poses really have those angles (any rotation, any palm)
        np.testing.assert_allclose(reference_angles(p.joints[i]), p.angles[i], atol=1e-9)
    # placed as real annotations: inside the real 0.5–99.5 % ranges, still recovered exactly
    placed = generate(SUBJECT, 400, seed=7, glitch_fraction=0.0)
    np.testing.assert_allclose(placed.angles, place_angles(p.angles), atol=1e-12)
    real = hand_model.packaged().angle_range
    assert (placed.angles >= real[..., 0] - 1e-12).all()
    assert (placed.angles <= real[..., 1] + 1e-12).all()
    for i in range(0, 400, 20):
        np.testing.assert_allclose(reference_angles(placed.joints[i]), placed.angles[i], atol=1e-9)


def test_subjects_have_the_real_between_person_spread() -> None:
    """Subjects are drawn from the measured real hands: same mean, same spread (±30 %)."""
    model = hand_model.packaged()
    subjects = make_subjects(400, seed=3)
    lengths = np.stack([s.finger_lengths for s in subjects])
    np.testing.assert_allclose(lengths.mean(axis=0), model.mean[15:], rtol=0.02)
    ratio = lengths.std(axis=0) / model.hands[:, 15:].std(axis=0, ddof=1)
    assert (ratio > 0.7).all() and (ratio < 1.3).all()


def test_generate_glitches_stretch_a_bone_and_only_glitches_do() -> None:
    p = generate(SUBJECT, 1000, seed=8, glitch_fraction=0.05)
    assert p.is_glitch.sum() == 50
    ratio = reference_lengths(p.joints) / SUBJECT.bone_lengths()
    worst = ratio.max(axis=1)
    assert (worst[p.is_glitch] > 1.5).all()
    assert (worst[p.is_glitch] >= 1.6 - 1e-9).all()
    assert (worst[p.is_glitch] <= 4.0 + 1e-9).all()
    np.testing.assert_allclose(ratio[~p.is_glitch], 1.0, atol=1e-9)


def test_generate_left_hands_unmirror_to_the_right_hand() -> None:
    p = generate(SUBJECT, 500, seed=9, glitch_fraction=0.0, left_fraction=0.3)
    assert p.is_left.sum() == 150
    left = np.flatnonzero(p.is_left)
    right_again = skeleton.mirror(p.joints[left])
    expected = np.broadcast_to(SUBJECT.bone_lengths(), (150, 20))
    np.testing.assert_allclose(reference_lengths(right_again), expected, atol=1e-9)
    for k in range(0, 150, 15):
        np.testing.assert_allclose(reference_angles(right_again[k]), p.angles[left[k]], atol=1e-9)
    # as stored, a left hand really is mirrored: read as a right hand its angles are wrong
    assert not np.allclose(reference_angles(p.joints[left[0]]), p.angles[left[0]], atol=1e-3)


def test_generate_palm_varies_but_stays_non_degenerate() -> None:
    p = generate(SUBJECT, 2000, seed=10, glitch_fraction=0.0)
    roots = p.joints[:, [1, 5, 9, 13, 17]] - p.joints[:, :1]
    cosines = np.sum(_unit_rows(roots[:, 1:]) * _unit_rows(roots[:, :-1]), axis=-1)
    palm_angle = np.degrees(np.arccos(np.clip(cosines, -1, 1)))  # (n, 4)
    assert palm_angle.min() > 5.0  # never parallel
    assert (palm_angle.std(axis=0) > 0.03).all()  # palm angles have (a little) spread
    # palm curvature (DESIGN §4.3) has spread too
    n = _unit_rows(np.cross(roots[:, 1:], roots[:, :-1]))
    # edge normals e_0 = n_0, e_i = unit(n_i + n_{i-1}), e_4 = n_3: (n, 5, 3)
    e = np.concatenate([n[:, :1], _unit_rows(n[:, 1:] + n[:, :-1]), n[:, 3:]], axis=1)
    step = roots[:, 1:] - roots[:, :-1]
    curv = np.sum((e[:, 1:] - e[:, :-1]) * step, axis=-1) / np.sum(step * step, axis=-1)
    assert (curv.std(axis=0) > 1e-5).all()


def _unit_rows(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_generate_rotation_and_translation_are_camera_like() -> None:
    p = generate(SUBJECT, 3000, seed=11, glitch_fraction=0.0)
    wrist = p.joints[:, 0]
    assert (wrist[:, 2] >= 300.0).all() and (wrist[:, 2] <= 700.0).all()
    assert (np.abs(wrist[:, :2]) <= 150.0).all()
    direction = _unit_rows(p.joints[:, 9] - wrist)  # wrist → middle MCP points anywhere
    assert np.linalg.norm(direction.mean(axis=0)) < 0.06
    assert (np.abs(direction).max(axis=0) > 0.99).all()


def test_generate_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate(SUBJECT, 10, glitch_fraction=1.5)
    with pytest.raises(ValueError):
        generate(SUBJECT, -1)
    assert generate(SUBJECT, 0).joints.shape == (0, 21, 3)


# ------------------------------------------------------------------ sample data files
def _load_make_samples():
    spec = importlib.util.spec_from_file_location("make_samples", DATA / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (DATA / "subject_01.npy").exists(), reason="sample data not generated")
def test_sample_files_match_their_generator() -> None:
    """The committed files are what `python data_samples/make_samples.py` writes."""
    expected = _load_make_samples().build()
    for i in range(1, 6):
        stored = np.load(DATA / f"subject_{i:02d}.npy")
        assert stored.shape == (2000, 21, 3) and stored.dtype == np.float32
        np.testing.assert_array_equal(stored, expected[f"subject_{i:02d}.npy"]["joints"])
    with np.load(DATA / "subject_06_left.npz") as z:
        assert sorted(z.files) == ["is_left", "joints"]
        assert z["joints"].shape == (1000, 21, 3) and z["joints"].dtype == np.float32
        assert z["is_left"].shape == (1000,) and z["is_left"].dtype == np.bool_
        assert 0.25 < z["is_left"].mean() < 0.35
        np.testing.assert_array_equal(z["joints"], expected["subject_06_left.npz"]["joints"])
        np.testing.assert_array_equal(z["is_left"], expected["subject_06_left.npz"]["is_left"])


@pytest.mark.skipif(not (DATA / "subject_01.npy").exists(), reason="sample data not generated")
def test_sample_files_have_about_three_percent_glitches() -> None:
    joints = np.load(DATA / "subject_03.npy").astype(np.float64)
    lengths = reference_lengths(joints)
    ratio = lengths / np.median(lengths, axis=0)
    glitched = (ratio > 1.5).any(axis=1)
    assert glitched.sum() == 60  # 3 % of 2000, one per glitch frame
