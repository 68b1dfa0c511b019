"""Export to / import from the reference implementation's folder (Hand-BMC-pytorch)."""

from __future__ import annotations

import copy
import hashlib
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bmc_calib import bundle, hulls, interop, skeleton
from bmc_calib.cli import app
from bmc_calib.errors import BadInputError, UsageError
from bmc_calib.fit import fit_limits
from bmc_calib.formats import open_sources
from bmc_calib.limits import Limits

DATA = Path(__file__).resolve().parents[1] / "data_samples"
SAMPLES = [str(DATA / f"subject_0{i}.npy") for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def limits() -> Limits:
    return fit_limits(open_sources(SAMPLES))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})


def _decisions(limits: Limits, a: int, raw: np.ndarray) -> np.ndarray:
    points = raw.copy()
    points[:, 0] = hulls.unwrap_flexion(points[:, 0], limits.joint_angle.flexion_center[a])
    return hulls.points_in_polygon(points, limits.joint_angle.hulls[a])


def test_round_trip_keeps_the_limits(limits, tmp_path) -> None:
    folder = tmp_path / "bmc"
    warnings = interop.export_hand_bmc(limits, folder)
    assert sorted(os.listdir(folder)) == sorted(interop.HAND_BMC_FILES)
    assert len(warnings) == 1 and "tolerances" in warnings[0]  # LOGO tolerances are dropped
    back, notes = interop.import_hand_bmc(folder)
    assert notes == []
    for family in ("bone_length", "palm_curvature", "palm_angle"):
        for name in ("min", "max"):
            np.testing.assert_array_equal(
                getattr(getattr(back, family), name), getattr(getattr(limits, family), name)
            )
        np.testing.assert_array_equal(getattr(back, family).tolerance, 0.0)
    rng = np.random.default_rng(0)
    raw = np.column_stack([rng.uniform(-math.pi, math.pi, 4000), rng.uniform(-1.5, 1.5, 4000)])
    for a in range(skeleton.NUM_ANGLES):
        np.testing.assert_array_equal(back.joint_angle.hulls[a], limits.joint_angle.hulls[a])
        # flexion centres differ (0 after import), inside/outside decisions do not
        np.testing.assert_array_equal(_decisions(back, a, raw), _decisions(limits, a, raw))
    assert np.all(back.joint_angle.flexion_center == 0.0)
    assert back.coverage == 1.0 and back.normalization == "reference-bone"
    (source,) = back.provenance.sources
    assert source.format == "hand-bmc" and source.path == str(folder)
    digest = hashlib.sha256()
    for name in sorted(interop.HAND_BMC_FILES):
        digest.update((folder / name).read_bytes())
    assert source.sha256 == digest.hexdigest()
    bundle.write_bundle(back, tmp_path / "back.h5")  # a valid bundle


def _shifted(limits: Limits, a: int, center: float) -> Limits:
    """``limits`` with joint ``a``'s hull moved so that its flexion centre is ``center``."""
    out = copy.deepcopy(limits)
    ja = out.joint_angle
    offset = center - float(np.mean(ja.hulls[a][:, 0]))
    ja.hulls[a] = ja.hulls[a] + [offset, 0.0]
    ja.flexion_center[a] = center
    return out


def test_hull_beyond_pi_is_wrapped_with_a_warning(limits, tmp_path) -> None:
    moved = _shifted(limits, 1, center=3.0)  # index_mcp around 172°, crossing 180°
    arrays, warnings = interop.hand_bmc_arrays(moved)
    (wrapped,) = [w for w in warnings if "unwrap" in w]
    assert "index_mcp" in wrapped and "thumb_cmc" not in wrapped
    hull = arrays["CONVEX_HULLS.npy"][1]
    assert hull[:, 0].min() >= -math.pi and hull[:, 0].max() <= math.pi
    assert hulls.points_in_polygon(hull, hull).all()
    # import re-expresses it around a centre near π: contiguous, not spread over ±π
    folder = tmp_path / "bmc"
    interop.export_hand_bmc(moved, folder)
    back, _ = interop.import_hand_bmc(folder)
    assert abs(back.joint_angle.flexion_center[1]) > math.pi / 2
    np.testing.assert_array_equal(back.joint_angle.hulls[1], hull)


def test_hull_beyond_pi_by_a_full_turn_is_shifted_without_loss(limits) -> None:
    moved = copy.deepcopy(limits)  # index_pip expressed one turn up: same region, no warning
    moved.joint_angle.hulls[6] = moved.joint_angle.hulls[6] + [2 * math.pi, 0.0]
    moved.joint_angle.flexion_center[6] += 2 * math.pi
    arrays, warnings = interop.hand_bmc_arrays(moved)
    assert not [w for w in warnings if "unwrap" in w]
    np.testing.assert_allclose(arrays["CONVEX_HULLS.npy"][6], limits.joint_angle.hulls[6])


def test_hull_on_the_far_side_keeps_its_shape_with_a_new_centre(limits, tmp_path) -> None:
    moved = copy.deepcopy(limits)  # thumb_cmc moved entirely into (90°, 180°]
    ja = moved.joint_angle
    ja.hulls[0] = ja.hulls[0] + [math.pi / 2 + 0.05 - ja.hulls[0][:, 0].min(), 0.0]
    ja.flexion_center[0] = float(np.mean(ja.hulls[0][:, 0]))
    assert moved.joint_angle.hulls[0][:, 0].min() > math.pi / 2
    assert moved.joint_angle.hulls[0][:, 0].max() <= math.pi
    folder = tmp_path / "bmc"
    assert not [w for w in interop.export_hand_bmc(moved, folder) if "unwrap" in w]
    back, notes = interop.import_hand_bmc(folder)
    assert notes == []
    np.testing.assert_array_equal(back.joint_angle.hulls[0], moved.joint_angle.hulls[0])
    assert back.joint_angle.flexion_center[0] > math.pi / 2


def _reference_folder(folder: Path, hull_list: object) -> Path:
    folder.mkdir()
    np.save(folder / "bone_len_min.npy", np.full(20, 0.2, dtype=np.float32))
    np.save(folder / "bone_len_max.npy", np.full(20, 1.1, dtype=np.float32))
    np.save(folder / "curvatures_min.npy", np.array([-1.0, -0.5, -0.5, -1.0]))
    np.save(folder / "curvatures_max.npy", np.array([1.0, 3.0, 2.0, 2.5]))
    np.save(folder / "PHI_min.npy", np.array([0.1, 0.05, 0.05, 0.05]))
    np.save(folder / "PHI_max.npy", np.array([0.8, 0.4, 0.4, 0.4]))
    np.save(folder / "CONVEX_HULLS.npy", hull_list, allow_pickle=True)
    return folder


def _hand_written_hulls() -> np.ndarray:
    """What the reference's calculate_bmc.py saves: a list of (M, 2) arrays, varied here."""
    base = np.array([[-0.5, -0.3], [1.5, -0.3], [1.6, 0.2], [0.2, 0.4], [-0.6, 0.1]])
    out = np.empty(15, dtype=object)
    for a in range(15):
        out[a] = base * (1.0 + 0.01 * a)
    out[2] = np.vstack([out[2], out[2][:1]])  # closing vertex repeated
    out[3] = out[3][::-1].copy()  # clockwise
    out[4] = out[4].astype(np.float32)
    out[5] = out[5].tolist()  # plain lists
    out[6] = np.array([[-3.0, -0.2], [-2.9, -0.2], [3.0, 0.2], [2.9, 0.2]])  # around ±π
    return out


def test_reading_a_hand_written_reference_folder(tmp_path) -> None:
    folder = _reference_folder(tmp_path / "ref", _hand_written_hulls())
    limits, notes = interop.import_hand_bmc(folder)
    ja = limits.joint_angle
    assert len(notes) == 1 and skeleton.ANGLE_NAMES[6] in notes[0]
    np.testing.assert_array_equal(limits.bone_length.min, np.float32(0.2))
    assert len(ja.hulls[2]) == 5  # closing vertex dropped
    for a in range(15):
        assert hulls.points_in_polygon(ja.hulls[a], ja.hulls[a]).all()  # CCW, valid
        np.testing.assert_array_equal(ja.box_min[a], ja.hulls[a].min(axis=0))
    np.testing.assert_array_equal(ja.hulls[3], _hand_written_hulls()[3][::-1])
    # the ±π hull becomes a contiguous region around π, 0.2 rad wide in flexion
    assert abs(ja.flexion_center[6]) == pytest.approx(math.pi)
    assert np.ptp(ja.hulls[6][:, 0]) == pytest.approx(2 * math.pi - 5.8)
    assert np.all(ja.flexion_center[[0, 1, 2, 3, 4, 5, 7]] == 0.0)
    assert np.all(ja.tolerance == 0) and np.all(ja.coverage == 1.0)


def test_hulls_saved_as_one_numeric_array_are_read(tmp_path) -> None:
    square = np.array([[-0.5, -0.2], [1.0, -0.2], [1.0, 0.2], [-0.5, 0.2]])
    folder = _reference_folder(tmp_path / "ref", np.stack([square] * 15))
    limits, _ = interop.import_hand_bmc(folder)
    np.testing.assert_array_equal(limits.joint_angle.hulls[14], square)


class _Payload:
    """Unpickling this would create a folder: the restricted unpickler must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def _break(folder: Path, name: str, value: object) -> None:
    np.save(folder / name, value, allow_pickle=True)


BAD_CONTENT = {
    "wrong shape": ("bone_len_min.npy", np.ones(21)),
    "NaN": ("PHI_max.npy", np.array([0.8, np.nan, 0.4, 0.4])),
    "strings": ("curvatures_min.npy", np.array(["a", "b", "c", "d"])),
    "min above max": ("bone_len_min.npy", np.full(20, 2.0)),
    "degrees": ("PHI_max.npy", np.array([45.0, 20.0, 20.0, 20.0])),
    "14 hulls": ("CONVEX_HULLS.npy", _hand_written_hulls()[:14]),
    "object bones": ("bone_len_max.npy", np.array([None] * 20, dtype=object)),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENT))
def test_bad_reference_content_is_one_line_exit_3(case, runner, tmp_path) -> None:
    folder = _reference_folder(tmp_path / "ref", _hand_written_hulls())
    name, value = BAD_CONTENT[case]
    _break(folder, name, value)
    result = runner.invoke(app, ["import", "hand-bmc", str(folder), "-o", str(tmp_path / "x.h5")])
    assert result.exit_code == 3, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and name in line and "Traceback" not in result.output
    assert not (tmp_path / "x.h5").exists()


def test_bad_hulls_are_refused(tmp_path) -> None:
    folder = _reference_folder(tmp_path / "ref", _hand_written_hulls())
    cases = {
        "not a convex": [[0, 0], [1, 0], [0.1, 0.1], [0, 1]],
        "fewer than 3": [[0, 0], [1, 0], [0, 0]],
        "radians expected": [[0, 0], [90, 0], [0, 45]],
        "shape": [[0, 0, 0], [1, 0, 0], [0, 1, 0]],
    }
    for message, hull in cases.items():
        hulls_ = _hand_written_hulls()
        hulls_[7] = np.array(hull, dtype=np.float64)
        _break(folder, "CONVEX_HULLS.npy", hulls_)
        with pytest.raises(BadInputError, match=message):
            interop.import_hand_bmc(folder)


def test_pickled_code_is_never_run(tmp_path) -> None:
    folder = _reference_folder(tmp_path / "ref", _hand_written_hulls())
    marker = tmp_path / "pwned"
    evil = _hand_written_hulls()
    evil[0] = _Payload(marker)
    _break(folder, "CONVEX_HULLS.npy", evil)
    with pytest.raises(BadInputError, match="only NumPy arrays"):
        interop.import_hand_bmc(folder)
    assert not marker.exists()
    # a plain pickle file (not .npy) is refused too
    (folder / "CONVEX_HULLS.npy").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(BadInputError, match=r"CONVEX_HULLS\.npy"):
        interop.import_hand_bmc(folder)
    assert not marker.exists()


def test_missing_folder_or_files(runner, tmp_path) -> None:
    out = str(tmp_path / "x.h5")
    missing = runner.invoke(app, ["import", "hand-bmc", str(tmp_path / "nope"), "-o", out])
    assert missing.exit_code == 3 and "no such folder" in missing.stderr
    folder = _reference_folder(tmp_path / "ref", _hand_written_hulls())
    (folder / "PHI_min.npy").unlink()
    partial = runner.invoke(app, ["import", "hand-bmc", str(folder), "-o", out])
    assert partial.exit_code == 3 and "missing PHI_min.npy" in partial.stderr
    unknown = runner.invoke(app, ["import", "bmc-tf", str(folder), "-o", out])
    assert unknown.exit_code == 2 and "hand-bmc" in unknown.stderr


def test_cli_export_import_round_trip(limits, runner, tmp_path) -> None:
    path = tmp_path / "limits.h5"
    bundle.write_bundle(limits, path)
    folder = tmp_path / "bmc"
    result = runner.invoke(app, ["export", str(path), "--to", "hand-bmc", str(folder)])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "tolerances" in result.stderr
    again = runner.invoke(app, ["export", str(path), "--to", "hand-bmc", str(folder)])
    assert again.exit_code == 2 and "--force" in again.stderr
    forced = runner.invoke(app, ["export", str(path), "--to", "hand-bmc", str(folder), "--force"])
    assert forced.exit_code == 0
    back = tmp_path / "back.h5"
    imported = runner.invoke(app, ["import", "hand-bmc", str(folder), "-o", str(back)])
    assert imported.exit_code == 0, imported.output
    np.testing.assert_array_equal(bundle.read_bundle(back).bone_length.max, limits.bone_length.max)
    # a folder holding anything else is never replaced, even with --force
    (folder / "notes.txt").write_text("mine")
    refused = runner.invoke(app, ["export", str(path), "--to", "hand-bmc", str(folder), "--force"])
    assert refused.exit_code == 2 and (folder / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.h5", "bmc", "limits.h5"]


def test_export_refuses_lengths_not_relative(limits, tmp_path) -> None:
    absolute = copy.deepcopy(limits)
    absolute.normalization, absolute.length_unit = "none", "mm"
    with pytest.raises(BadInputError, match="normalisation"):
        interop.export_hand_bmc(absolute, tmp_path / "bmc")
    assert not (tmp_path / "bmc").exists()
    with pytest.raises(UsageError):
        interop.check_format("bmc-tf")


def test_export_into_a_folder_that_cannot_be_written(limits, runner, tmp_path, monkeypatch) -> None:
    """The staging folder is the first thing written: its refusal is the one-line exit 3 of
    every other writer, not an unexpected failure (exit 70)."""
    path = tmp_path / "limits.h5"
    bundle.write_bundle(limits, path)

    def refused(*args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(interop.tempfile, "mkdtemp", refused)
    target = tmp_path / "bmc"
    result = runner.invoke(app, ["export", str(path), "--to", "hand-bmc", str(target)])
    assert result.exit_code == 3, result.output
    assert result.stderr.strip() == f"error: cannot write {target}: permission denied"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["limits.h5"]
