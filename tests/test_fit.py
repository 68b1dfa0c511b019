"""bmc_calib.fit on synthetic subjects: rejection, intervals, hulls, tolerances, provenance."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import stdtrit

from bmc_calib import hulls, skeleton, synthetic
from bmc_calib.errors import BadInputError, UsageError
from bmc_calib.fit import FitOptions, fit_core, fit_limits
from bmc_calib.formats import ReadOptions, open_sources
from bmc_calib.kinematics import compute_features
from bmc_calib.violations import FAMILIES, compute_violations, exceeded, tolerances

SUBJECTS = synthetic.make_subjects(4, seed=21)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[str, object]:
    """Four subjects' files (3 % glitches, noise), their glitch masks, and one degenerate file."""
    root = tmp_path_factory.mktemp("fit")
    paths, glitches = [], []
    for i, subject in enumerate(SUBJECTS):
        p = synthetic.generate(subject, 1500, seed=100 + i, glitch_fraction=0.03, noise_mm=1.0)
        path = root / f"{subject.name}.npy"
        np.save(path, p.joints)
        paths.append(str(path))
        glitches.append(p.is_glitch)
    return {"root": root, "paths": paths, "glitches": glitches}


@pytest.fixture(scope="module")
def fitted(recordings):
    return fit_limits(open_sources(recordings["paths"]))


def test_glitch_frames_are_rejected_and_counted_per_source(recordings, fitted) -> None:
    records = fitted.provenance.sources
    assert [r.path for r in records] == recordings["paths"]
    for record, glitch in zip(records, recordings["glitches"], strict=True):
        assert record.frames_read == 1500
        assert record.rejected["degenerate"] == 0
        # every synthetic glitch stretches a bone ≥ 1.6×, so all are caught, and nothing else
        assert record.rejected["bone_length_outlier"] == int(glitch.sum())
        assert record.frames_used == 1500 - int(glitch.sum())
        assert len(record.sha256) == 64
    assert fitted.statistics["rejected_bone_length_outlier"] == sum(
        int(g.sum()) for g in recordings["glitches"]
    )


def test_without_glitch_rejection_the_limits_widen(recordings, fitted) -> None:
    raw = fit_limits(open_sources(recordings["paths"]), FitOptions(reject_glitches=False))
    assert all(r.rejected["bone_length_outlier"] == 0 for r in raw.provenance.sources)
    assert (raw.bone_length.max > fitted.bone_length.max * 1.2).any()


def test_intervals_are_prediction_intervals_for_a_new_person(recordings, fitted) -> None:
    feats = [compute_features(np.load(p)) for p in recordings["paths"]]
    used = [~g for g in recordings["glitches"]]
    lengths = np.concatenate([f.bone_length[u] for f, u in zip(feats, used, strict=True)])
    person = np.concatenate([np.full(int(u.sum()), i) for i, u in enumerate(used)])
    lengths = lengths.astype(np.float32).astype(np.float64)
    # per hand (all right hands here) the median; mean and sd of the 4 medians; pooled
    # within-hand deviation quantiles; k from Student t with 3 df, Bonferroni over 27 items
    medians = np.stack([np.median(lengths[person == i], axis=0) for i in range(4)])
    dev = lengths - medians[person]
    w_lo, w_hi = np.quantile(dev, [0.0005, 0.9995], axis=0)
    k = stdtrit(3, 1 - 0.01 / (2 * 27)) * np.sqrt(1 + 1 / 4)
    mu, sd = medians.mean(axis=0), medians.std(axis=0, ddof=1)
    lo, hi = mu - k * sd + w_lo, mu + k * sd + w_hi
    lo = np.maximum(lo, 1e-3 * mu)
    lo[8], hi[8] = min(lo[8], 1.0), max(hi[8], 1.0)  # the reference bone
    np.testing.assert_allclose(fitted.bone_length.min, lo, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fitted.bone_length.max, hi, rtol=1e-9)
    assert fitted.statistics["person_level_factor"] == pytest.approx(k)
    assert fitted.bone_length.names == skeleton.BONE_NAMES
    assert np.all(fitted.palm_angle.min < fitted.palm_angle.max)
    # person-level intervals need no held-out tolerance: they are for a new person already
    assert not fitted.bone_length.tolerance.any() and not fitted.palm_angle.tolerance.any()


def test_regions_cover_most_of_each_joint_and_report_their_coverage(recordings, fitted) -> None:
    feats = [compute_features(np.load(p)) for p in recordings["paths"]]
    used = [~g for g in recordings["glitches"]]
    fa = np.concatenate([f.flexion_abduction[u] for f, u in zip(feats, used, strict=True)])
    ja = fitted.joint_angle
    for a in range(15):
        pts = fa[:, a].astype(np.float32).astype(np.float64)
        pts[:, 0] = hulls.unwrap_flexion(pts[:, 0], ja.flexion_center[a])
        inside = hulls.points_in_polygon(pts, ja.hulls[a]).mean()
        assert inside >= 0.98  # the consensus of four people's trimmed hulls
        assert inside == pytest.approx(ja.coverage[a], abs=1e-12)
        assert len(ja.rdp_hulls[a]) <= len(ja.exact_hulls[a])


def test_coverage_one_is_plain_min_max_and_the_exact_hull(recordings) -> None:
    options = FitOptions(coverage=1.0, group_by="none")
    limits = fit_limits(open_sources(recordings["paths"][:2]), options)
    feats = [compute_features(np.load(p)) for p in recordings["paths"][:2]]
    bl = np.concatenate([f.bone_length for f in feats])
    glitch = np.concatenate(recordings["glitches"][:2])
    used = bl[~glitch].astype(np.float32)
    np.testing.assert_array_equal(limits.bone_length.min, used.min(axis=0))
    np.testing.assert_array_equal(limits.bone_length.max, used.max(axis=0))
    for a in range(15):  # one group: its hull, unsimplified
        np.testing.assert_array_equal(
            limits.joint_angle.hulls[a], limits.joint_angle.exact_hulls[a]
        )
        assert limits.joint_angle.coverage[a] == 1.0


def test_leave_one_group_out_tolerances_and_false_flag_estimate(fitted) -> None:
    stats = fitted.statistics
    assert stats["tolerance_method"] == "leave-one-group-out"
    assert len(stats["heldout_false_flag_rate"]) == 4
    assert 0.0 <= stats["heldout_false_flag_rate_mean"] <= stats["heldout_false_flag_rate_max"] <= 1
    # tolerances help on unseen people, and are non-negative and finite
    assert stats["heldout_false_flag_rate_mean"] < stats["heldout_flag_rate_without_tolerance_mean"]
    for fam in (fitted.bone_length, fitted.palm_curvature, fitted.palm_angle, fitted.joint_angle):
        assert np.all(np.isfinite(fam.tolerance)) and np.all(fam.tolerance >= 0)
    assert fitted.joint_angle.tolerance.max() > 0
    # per family, and the impossible edits of held-out poses, for each of the 4 groups
    assert len(stats["heldout_false_flag_rate_joint_angle"]) == 4
    for kind in ("mcp_back_90", "pip_sideways_60", "dip_back_80", "finger_mirrored"):
        assert 0.5 <= stats[f"heldout_edit_caught_{kind}_mean"] <= 1.0, kind
    # with 4 people the bone intervals are wide (t with 3 df): a long phalanx is left to the
    # personal check of validate
    assert 0.0 <= stats["heldout_edit_caught_middle_phalanx_1_6_mean"] <= 1.0


def test_fewer_than_three_groups_fall_back_to_zero_tolerance(recordings) -> None:
    limits = fit_limits(open_sources(recordings["paths"][:2]))
    assert limits.statistics["tolerance_method"].startswith("none: 2 group(s)")
    assert not limits.bone_length.tolerance.any() and not limits.joint_angle.tolerance.any()
    merged = fit_limits(open_sources(recordings["paths"]), FitOptions(group_by="none"))
    assert merged.statistics["tolerance_method"].startswith("none: 1 group(s)")
    assert merged.provenance.parameters["group_by"] == "none"


def test_every_fit_parameter_is_recorded(fitted) -> None:
    params = fitted.provenance.parameters
    keys = ("coverage", "normalization", "group_by", "reject_glitches", "glitch_max_deviation",
            "rdp_epsilon", "tolerance_quantile", "tool_version")  # fmt: skip
    for key in keys:
        assert key in params
    assert fitted.normalization == "reference-bone" and fitted.length_unit == "relative"


def test_training_poses_are_plausible_against_their_own_limits(recordings, fitted) -> None:
    feats = compute_features(np.load(recordings["paths"][0]))
    keep = ~recordings["glitches"][0]
    over = exceeded(compute_violations(feats, fitted), tolerances(fitted))
    flagged = np.column_stack([over[f] for f in FAMILIES])[keep].any(axis=1)
    assert flagged.mean() < 0.02
    # against the bare limits, about 1 − coverage of each item's values fall outside
    bare = exceeded(compute_violations(feats, fitted), tolerances(fitted, 0.0))
    assert 0.0 < np.column_stack([bare[f] for f in FAMILIES])[keep].mean() < 0.005


def test_degenerate_frames_are_skipped_and_counted(tmp_path, recordings) -> None:
    joints = np.load(recordings["paths"][0])[:200].copy()
    joints[:5, 3] = np.nan
    joints[5:8, 12] = joints[5:8, 11]
    path = tmp_path / "with_bad.npy"
    np.save(path, joints)
    limits = fit_limits(open_sources([str(path)]))
    (record,) = limits.provenance.sources
    assert record.rejected["degenerate"] == 8
    assert np.isfinite(limits.bone_length.max).all()


def test_too_few_usable_poses_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "nan.npy"
    np.save(path, np.full((20, 21, 3), np.nan))
    with pytest.raises(BadInputError, match=r"only 0 usable poses.*20 degenerate"):
        fit_limits(open_sources([str(path)]))


def test_bad_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="coverage"):
        FitOptions(coverage=1.5)
    with pytest.raises(UsageError, match="group-by"):
        FitOptions(group_by="subject")
    with pytest.raises(UsageError, match="normalization"):
        FitOptions(normalization="palm")


def test_flexion_near_pi_is_unwrapped_around_its_centre(recordings) -> None:
    """A joint whose flexion straddles ±π must get a tight region, not the whole circle."""
    feats = compute_features(np.load(recordings["paths"][0]))
    keep = np.flatnonzero(~feats.degenerate & ~recordings["glitches"][0])
    fa = feats.flexion_abduction
    shifted = fa[:, 0, 0] + np.pi  # move thumb CMC flexion around ±π
    fa[:, 0, 0] = np.arctan2(np.sin(shifted), np.cos(shifted))
    assert fa[keep, 0, 0].min() < -2.5 and fa[keep, 0, 0].max() > 2.5
    limits = fit_core(feats, keep, FitOptions())
    center = limits.joint_angle.flexion_center[0]
    assert abs(abs(center) - np.pi) < 0.6
    hull = limits.joint_angle.hulls[0]
    assert np.ptp(hull[:, 0]) < 2.0  # the data spans about 1.3 rad, not 2π


def test_reads_left_hands_through_the_reader(tmp_path) -> None:
    p = synthetic.generate(SUBJECTS[0], 400, seed=3, glitch_fraction=0.0, left_fraction=1.0)
    path = tmp_path / "left.npy"
    np.save(path, p.joints)
    limits = fit_limits(open_sources([str(path)], ReadOptions(hand="left")))
    assert limits.provenance.sources[0].frames_mirrored == 400
    right = fit_limits(open_sources([str(path)]))  # read as right hands: a different palm
    assert not np.allclose(limits.palm_curvature.max, right.palm_curvature.max, rtol=0.05)


def test_group_by_label_uses_per_frame_labels(recordings) -> None:
    """A reader's per-frame labels (subjects in one file) become the tolerance groups."""
    from bmc_calib.formats import Chunk, Source

    joints = np.concatenate([np.load(p)[:400] for p in recordings["paths"]])
    labels = np.repeat([s.name for s in SUBJECTS], 400)
    path = str(recordings["root"] / "all.npy")
    np.save(path, joints)

    def read(stats):
        stats.frames_read = stats.frames_kept = joints.shape[0]
        for start in range(0, joints.shape[0], 256):
            yield Chunk(joints[start : start + 256], labels[start : start + 256])

    def source() -> Source:
        return Source(path, "test", "mm", "canonical", joints.shape[0], read)

    by_label = fit_limits([source()], FitOptions(group_by="label"))
    assert list(by_label.statistics["groups"]) == [f"test:{s.name}" for s in SUBJECTS]
    assert by_label.statistics["tolerance_method"] == "leave-one-group-out"
    assert list(by_label.statistics["group_frames_used"].shape) == [4]
    by_file = fit_limits([source()], FitOptions(group_by="file"))
    assert by_file.statistics["tolerance_method"].startswith("none: 1 group(s)")
