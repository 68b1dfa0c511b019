"""Issue 12 §2, "no NaN ever leaves": a pose with a coordinate beyond
``kinematics.COORDINATE_LIMIT`` (in the input unit or after normalising) is degenerate
(``out_of_range``) in numpy and torch alike; it has zero loss and an exactly zero, finite
gradient; reports and JSON never carry a bare NaN or infinity.

Poses are built by forward kinematics (bmc_calib.synthetic); every file is written by the test.
"""

from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from bmc_calib import bundle, default_bundle, kinematics, synthetic
from bmc_calib.cli import _finite_json, app
from bmc_calib.kinematics import COORDINATE_LIMIT, DEGENERATE_REASONS, compute_features

torch = pytest.importorskip("torch")
from bmc_calib.torch import BMCLoss  # noqa: E402

OUT_OF_RANGE = 1 << DEGENERATE_REASONS.index("out_of_range")
#: one joint at these values (float32 and float64 each up to their largest finite number)
HUGE = {
    np.float32: [1e9, 1e25, 1e30, 3e38, float(np.finfo(np.float32).max)],
    np.float64: [1e9, 1e25, 1e160, 1e200, 1.7e308],
}


@pytest.fixture(scope="module")
def limits():
    return default_bundle.build_synthetic_limits()


def hand_mm() -> np.ndarray:
    """A plausible right hand ``(21, 3)`` in mm (mid-range angles of the synthetic ranges)."""
    subject = synthetic.make_subjects(1, seed=0)[0]
    angles = synthetic.ranges_radians().mean(axis=-1)
    return synthetic.forward_kinematics(subject.root_bones, angles, subject.finger_lengths)


def huge_poses(dtype: type[np.floating]) -> np.ndarray:
    """``(1 + 2 K, 21, 3)``: a healthy hand, then one joint (a fingertip, then the wrist, which
    enters the reference bone) at each of ``HUGE[dtype]``, with alternating signs."""
    h = hand_mm()
    poses = [h]
    for joint in (12, 0):
        for i, value in enumerate(HUGE[dtype]):
            p = h.copy()
            p[joint, i % 3] = value if i % 2 == 0 else -value
            poses.append(p)
    return np.stack(poses).astype(dtype)


@pytest.mark.filterwarnings("error")  # no overflow RuntimeWarning either
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("normalization", kinematics.NORMALIZATIONS)
def test_numpy_flags_out_of_range_and_keeps_features_finite(dtype, normalization) -> None:
    poses = huge_poses(dtype)
    feats = compute_features(poses, normalization)
    assert not feats.degenerate[0]
    assert feats.degenerate[1:].all()
    assert (feats.degenerate_reason[1:] & OUT_OF_RANGE).all()
    assert "out_of_range" in kinematics.degenerate_reason_names(int(feats.degenerate_reason[1]))
    for name in ("bone_length", "palm_curvature", "palm_angle", "flexion_abduction"):
        values = getattr(feats, name)
        assert np.isfinite(values).all(), name
        assert (values[1:] == 0).all(), name
    lengths, valid = kinematics.quick_bone_lengths(poses, normalization)
    np.testing.assert_array_equal(valid, ~feats.degenerate)
    assert np.isfinite(lengths).all()


@pytest.mark.filterwarnings("error")
def test_the_bound_also_applies_after_normalising() -> None:
    """A tiny reference bone makes normalised coordinates huge although the input is small."""
    h = kinematics.normalize(hand_mm())
    tiny_ref = h.copy()
    tiny_ref[0] = h[9] + (h[0] - h[9]) * 1e-12  # wrist 1e-12 reference bones from joint 9
    beside = h * 1e6  # in range in the input unit and after normalising (scale-free)
    feats = compute_features(np.stack([tiny_ref, beside]), "reference-bone")
    assert feats.degenerate_reason[0] & OUT_OF_RANGE
    assert not feats.degenerate[1]
    # under "none" the input unit is the only unit: 1e-12 is in range there
    assert not compute_features(tiny_ref[None], "none").degenerate_reason[0] & OUT_OF_RANGE
    assert COORDINATE_LIMIT == 1e8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_out_of_range_has_zero_loss_and_zero_finite_gradient(limits, dtype) -> None:
    poses = huge_poses(dtype)
    module = BMCLoss(limits, reduction="none")
    joints = torch.as_tensor(poses).requires_grad_(True)
    total, _ = module(joints)
    assert torch.isfinite(total).all()
    assert (total[1:] == 0).all()
    total.sum().backward()
    assert torch.isfinite(joints.grad).all()
    assert (joints.grad[1:] == 0).all()
    mags = module.magnitudes(joints.detach())
    flags = mags["degenerate"].numpy()
    np.testing.assert_array_equal(flags, compute_features(poses).degenerate)
    for value in mags.values():
        assert torch.isfinite(value.double()).all()


def test_torch_within_the_bound_is_finite_in_float32(limits) -> None:
    """Just inside the bound (normalised unit 0.99e8), float32 arithmetic does not overflow."""
    h = kinematics.normalize(hand_mm())
    poses = np.repeat(h[None], 4, axis=0)
    poses[1, 12] = 0.99 * COORDINATE_LIMIT
    poses[2, 4], poses[2, 8] = 0.99 * COORDINATE_LIMIT, -0.99 * COORDINATE_LIMIT
    poses[3] *= 0.99 * COORDINATE_LIMIT  # a huge but scaled hand: plausible
    joints = torch.as_tensor(poses, dtype=torch.float32).requires_grad_(True)
    total, _ = BMCLoss(limits, reduction="sum")(joints)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(joints.grad).all()
    assert not compute_features(poses).degenerate.any()


# ------------------------------------------------------------------ reports and JSON
@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})


@pytest.fixture
def huge_files(limits, tmp_path) -> dict[str, str]:
    bundle.write_bundle(limits, tmp_path / "limits.h5")  # validate picks ./limits.h5
    pred = huge_poses(np.float64)
    pred[1, 3] = np.nan  # and a NaN pose for good measure
    gt = np.repeat(hand_mm()[None], len(pred), axis=0)
    np.save(tmp_path / "pred.npy", pred)
    np.save(tmp_path / "gt.npy", gt)
    return {"pred": str(tmp_path / "pred.npy"), "gt": str(tmp_path / "gt.npy")}


def _strict_json(text: str) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_reports_carry_no_non_finite_number(runner, huge_files, tmp_path, suffix) -> None:
    out = tmp_path / f"r{suffix}"
    args = ["validate", huge_files["pred"], "--gt", huge_files["gt"], "--unit", "mm"]
    result = runner.invoke(app, [*args, "--report", str(out)])
    assert result.exit_code == 1, result.output  # degenerate poses are not plausible
    assert "RuntimeWarning" not in result.stderr
    if suffix == ".jsonl":
        rows = [_strict_json(line) for line in out.read_text().splitlines()]
    else:
        with open(out, newline="") as fh:
            rows = list(csv.DictReader(fh))
    n = len(huge_poses(np.float64))
    assert len(rows) == n
    assert rows[0]["verdict"] == "plausible"
    assert all(r["verdict"] == "degenerate" for r in rows[1:])
    assert all("out_of_range" in r["degenerate_reason"] for r in rows[2:])
    for row in rows:
        for key, value in row.items():
            if key.endswith(("_max", "_deg", "_mm")) and value not in (None, ""):
                assert math.isfinite(float(value)), (key, value)
    assert rows[5]["error_root_aligned_mm"] in (None, "")  # not compared


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_gt_json_summary_is_strict_json(runner, huge_files) -> None:
    args = ["validate", huge_files["pred"], "--gt", huge_files["gt"], "--unit", "mm", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    summary = _strict_json(result.stdout)
    acc = summary["accuracy"]
    assert acc["poses"] == 1 and acc["skipped"] == len(huge_poses(np.float64)) - 1


def test_json_output_writes_null_for_non_finite_numbers() -> None:
    data = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": np.float64("nan")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _finite_json(data) == {"a": None, "b": [1.0, None, {"c": None}], "d": None}
