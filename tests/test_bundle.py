"""The HDF5 limits bundle: round trip, atomic writes, versioning, digest, golden file.

Every test writes and reads real HDF5 files under ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import bmc_calib
from bmc_calib import bundle, outputs, skeleton
from bmc_calib.bundle import (
    attribute_digest,
    content_digest,
    inspect_bundle,
    read_bundle,
    write_bundle,
)
from bmc_calib.errors import BadInputError, UnsupportedVersionError, UsageError
from bmc_calib.limits import Interval, JointAngleLimits, Limits, Provenance, SourceRecord

GOLDEN = Path(__file__).parent / "golden" / "limits-v1.0.h5"
GOLDEN_1_2 = Path(__file__).parent / "golden" / "limits-v1.2.h5"
STR = h5py.string_dtype()
READER_FILLED = ("tool_name", "tool_version", "created")
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


def _ccw_polygon(vertex_count: int, center: tuple[float, float], radius: float) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, vertex_count, endpoint=False) + 0.1
    return np.stack([center[0] + radius * np.cos(t), center[1] + 0.4 * radius * np.sin(t)], 1)


def _interval(names: tuple[str, ...], low: float, rng: np.random.Generator) -> Interval:
    minimum = low + rng.random(len(names))
    return Interval(names, minimum, minimum + rng.random(len(names)), rng.random(len(names)) / 5)


@pytest.fixture
def limits() -> Limits:
    """Realistic limits with irrational floats, hulls of 15 sizes, every optional part set."""
    rng = np.random.default_rng(7)
    centers = rng.uniform(-np.pi, np.pi, 15)
    hulls = [_ccw_polygon(3 + a, (centers[a], 0.1 * a), 0.3 + 0.01 * a) for a in range(15)]
    box_min = np.stack([centers - 0.5, np.full(15, -0.4)], axis=1) + rng.random((15, 2)) / 10
    return Limits(
        bone_length=_interval(skeleton.BONE_NAMES, 0.2, rng),
        palm_curvature=_interval(skeleton.PALM_NAMES, -0.7, rng),
        palm_angle=_interval(skeleton.PALM_NAMES, 0.05, rng),
        joint_angle=JointAngleLimits(
            names=skeleton.ANGLE_NAMES,
            flexion_center=centers,
            hulls=hulls,
            coverage=rng.uniform(0.99, 1.0, 15),
            area=rng.random(15),
            tolerance=rng.random(15) / 10,
            box_min=box_min,
            box_max=box_min + 1.0 + rng.random((15, 2)),
            exact_hulls=[_ccw_polygon(20 + 3 * a, (centers[a], 0.0), 0.4) for a in range(15)],
            rdp_hulls=[_ccw_polygon(8 + (a % 5), (centers[a], 0.0), 0.35) for a in range(15)],
        ),
        normalization="reference-bone",
        length_unit="relative",
        coverage=0.995,
        provenance=Provenance(
            sources=[
                SourceRecord(
                    path="data/FreiHAND_pub_v2/training_xyz.json",
                    format="freihand",
                    sha256=hashlib.sha256(b"freihand").hexdigest(),
                    frames_read=32560,
                    frames_used=31377,
                    frames_mirrored=0,
                    rejected={"degenerate": 11, "bone_length_outlier": 1172},
                ),
                SourceRecord(
                    path="data/ho3d/évaluation left.npz",  # non-ASCII, space
                    format="ho3d",
                    sha256=hashlib.sha256(b"ho3d").hexdigest(),
                    frames_read=20137,
                    frames_used=19302,
                    frames_mirrored=20137,
                    rejected={"degenerate": 0, "bone_length_outlier": 835},
                ),
            ],
            parameters={
                "coverage": 0.995,
                "reject_glitches": True,
                "mirror_left": False,
                "glitch_fraction": 0.5,
                "min_groups": 3,
                "rdp_epsilon": np.pi / 180,
                "layout": "auto",
                "seed": -1,
            },
        ),
        statistics={
            "frames_used": 50679,
            "heldout_false_flag_rate": 1.0 / 3.0,
            "tolerance_estimated": True,
            "grouping": "per-file",
            "not_computed": float("nan"),
            "group_frames": np.array([31377, 19302], dtype=np.int64),
            "bone_length_median": rng.random(20),
            "group_names": np.array(["training_xyz", "évaluation left"]),
            "group_flagged": np.array([False, True]),
            "empty": np.zeros(0),
        },
    )


def _assert_same(expected: object, actual: object, where: str) -> None:
    """Deep equality that also checks types (bool stays bool, tuple stays tuple…)."""
    if dataclasses.is_dataclass(expected):
        assert type(actual) is type(expected), where
        for f in dataclasses.fields(expected):
            _assert_same(getattr(expected, f.name), getattr(actual, f.name), f"{where}.{f.name}")
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), f"{where}: {type(actual)}"
        assert actual.dtype.kind == expected.dtype.kind, f"{where}: {actual.dtype}"
        assert actual.shape == expected.shape, where
        assert np.array_equal(actual, expected, equal_nan=expected.dtype.kind == "f"), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert list(actual) == list(expected), f"{where}: keys/order {list(actual)}"
        for key in expected:
            _assert_same(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected), f"{where}: {type(actual)}"
        assert len(actual) == len(expected), where
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _assert_same(e, a, f"{where}[{i}]")
    elif isinstance(expected, float) and np.isnan(expected):
        assert isinstance(actual, float) and np.isnan(actual), where
    else:
        assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
        assert actual == expected, where


def _assert_limits_equal(expected: Limits, actual: Limits) -> None:
    for f in dataclasses.fields(Limits):
        if f.name not in READER_FILLED:
            _assert_same(getattr(expected, f.name), getattr(actual, f.name), f.name)


def _files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def _rewrite_digest(path: Path) -> None:
    """Recompute and store both digests, as a writer of a later minor version would."""
    with h5py.File(path, "r+") as f:
        if bundle.ATTRIBUTE_DIGEST in f:
            del f[bundle.ATTRIBUTE_DIGEST]
        f.create_dataset(bundle.ATTRIBUTE_DIGEST, data=attribute_digest(f), dtype=STR)
        f.attrs["content-digest"] = content_digest(f)


@pytest.fixture
def written(tmp_path: Path, limits: Limits) -> Path:
    path = tmp_path / "limits.h5"
    write_bundle(limits, path)
    return path


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_round_trip_reproduces_every_field(written: Path, limits: Limits) -> None:
    _assert_limits_equal(limits, read_bundle(written))


def test_reader_fills_tool_and_creation_time(written: Path) -> None:
    back = read_bundle(written)
    assert back.tool_name == "bmc-calib"
    assert back.tool_version == bmc_calib.__version__
    assert ISO_UTC.fullmatch(back.created)


def test_round_trip_without_optional_parts(tmp_path: Path, limits: Limits) -> None:
    limits.joint_angle.exact_hulls = None
    limits.joint_angle.rdp_hulls = None
    limits.provenance = Provenance()
    limits.statistics = {}
    limits.normalization, limits.length_unit, limits.coverage = "none", "mm", 1.0
    path = tmp_path / "bare.h5"
    write_bundle(limits, path)
    back = read_bundle(path)
    assert back.joint_angle.exact_hulls is None and back.joint_angle.rdp_hulls is None
    _assert_limits_equal(limits, back)


def test_rule_not_applied_to_a_source_stays_absent(tmp_path: Path, limits: Limits) -> None:
    sources = limits.provenance.sources
    sources[0].rejected = {"degenerate": 4}
    sources[1].rejected = {"bone_length_outlier": 0, "degenerate": 2}
    path = tmp_path / "rules.h5"
    write_bundle(limits, path)
    back = read_bundle(path).provenance.sources
    assert back[0].rejected == {"degenerate": 4}
    assert back[1].rejected == {"bone_length_outlier": 0, "degenerate": 2}


def test_file_layout_follows_the_spec(written: Path, limits: Limits) -> None:
    with h5py.File(written, "r") as f:
        assert f.attrs["encoding-type"] == "bmc-limits"
        assert f.attrs["encoding-version"] == "1.2"
        assert f[bundle.ATTRIBUTE_DIGEST].shape == ()
        assert f[bundle.ATTRIBUTE_DIGEST].asstr()[()] == attribute_digest(f)
        assert f.attrs["normalization"] == "reference-bone"
        assert f.attrs["coverage"] == 0.995
        assert f["joint_angle"].attrs["encoding-type"] == "bmc-joint-angle-regions"
        assert f["palm/curvature"].attrs["encoding-version"] == "1.0"
        offsets = f["joint_angle/hull_offsets"][()]
        assert offsets.dtype == np.int64 and offsets.shape == (16,)
        assert list(np.diff(offsets)) == [3 + a for a in range(15)]
        assert f["joint_angle/hull_vertices"].shape == (offsets[-1], 2)
        assert f["bone_length/min"].dtype == np.float64
        assert h5py.check_string_dtype(f["skeleton/joint_names"].dtype).encoding == "utf-8"
        assert f["provenance/rejected"].shape == (2, 2)
        assert f["statistics/frames_used"].shape == ()
        assert f["provenance/parameters"].attrs["reject_glitches"].dtype == np.bool_


# --------------------------------------------------------------------------------------------
# Atomic, non-clobbering writes
# --------------------------------------------------------------------------------------------


def test_second_write_without_force_refused_and_first_file_untouched(
    written: Path, limits: Limits
) -> None:
    before = written.read_bytes()
    limits.coverage = 0.5
    with pytest.raises(UsageError) as exc:
        write_bundle(limits, written)
    assert _one_line(exc) == f"{written} exists; pass --force to overwrite"
    assert exc.value.exit_code == 2
    assert written.read_bytes() == before
    assert _files(written.parent) == ["limits.h5"]


def test_force_overwrites(written: Path, limits: Limits) -> None:
    limits.coverage = 0.5
    limits.bone_length.max[0] = 9.0
    write_bundle(limits, written, force=True)
    back = read_bundle(written)
    assert back.coverage == 0.5 and back.bone_length.max[0] == 9.0
    assert _files(written.parent) == ["limits.h5"]


def test_success_leaves_only_the_bundle(tmp_path: Path, limits: Limits) -> None:
    digest = write_bundle(limits, tmp_path / "a.h5")
    assert _files(tmp_path) == ["a.h5"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)


def test_failure_in_the_middle_of_writing_leaves_nothing(
    tmp_path: Path, limits: Limits, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_create = h5py.Group.create_dataset
    calls = []

    def create_then_fail(self: h5py.Group, *args: object, **kwargs: object) -> h5py.Dataset:
        calls.append(args[0])
        if len(calls) == 10:
            raise OSError(28, "No space left on device")
        return real_create(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_then_fail)
    with pytest.raises(BadInputError) as exc:
        write_bundle(limits, tmp_path / "limits.h5")
    assert len(calls) == 10  # it did fail half-way, with a temporary file present
    assert _one_line(exc) == f"cannot write {tmp_path / 'limits.h5'}: no space left on device"
    assert _files(tmp_path) == []


def test_failure_after_writing_keeps_the_existing_bundle(
    written: Path, limits: Limits, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = written.read_bytes()

    def broken_fsync(path: str) -> None:
        assert os.path.basename(path).startswith(".limits.h5.tmp-")
        raise RuntimeError("power cut")

    monkeypatch.setattr(outputs, "fsync_file", broken_fsync)
    with pytest.raises(RuntimeError, match="power cut"):
        write_bundle(limits, written, force=True)
    assert written.read_bytes() == before
    assert _files(written.parent) == ["limits.h5"]


def test_failed_rename_is_reported_and_cleaned_up(
    tmp_path: Path, limits: Limits, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs.os, "replace", refuse)
    with pytest.raises(BadInputError, match="permission denied"):
        write_bundle(limits, tmp_path / "limits.h5", force=True)
    assert _files(tmp_path) == []


def test_target_appearing_during_the_write_is_not_clobbered(
    tmp_path: Path, limits: Limits, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "limits.h5"
    real_fsync = outputs.fsync_file

    def someone_else_writes_target(path: str) -> None:
        target.write_bytes(b"theirs")
        real_fsync(path)

    monkeypatch.setattr(outputs, "fsync_file", someone_else_writes_target)
    with pytest.raises(UsageError, match="exists; pass --force"):
        write_bundle(limits, target)
    assert target.read_bytes() == b"theirs"
    assert _files(tmp_path) == ["limits.h5"]


def test_file_system_without_hard_links(
    tmp_path: Path, limits: Limits, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: str, dst: str) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(outputs.os, "link", no_links)
    write_bundle(limits, tmp_path / "limits.h5")
    _assert_limits_equal(limits, read_bundle(tmp_path / "limits.h5"))
    assert _files(tmp_path) == ["limits.h5"]


def test_missing_target_directory(tmp_path: Path, limits: Limits) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(BadInputError) as exc:
        write_bundle(limits, missing / "limits.h5")
    assert str(missing) in _one_line(exc) and "does not exist" in str(exc.value)
    assert _files(tmp_path) == []


def test_non_finite_limits_are_not_written(tmp_path: Path, limits: Limits) -> None:
    limits.joint_angle.hulls[4][1, 0] = np.nan
    with pytest.raises(BadInputError, match=r"non-finite values in joint_angle/hull_vertices"):
        write_bundle(limits, tmp_path / "limits.h5")
    assert _files(tmp_path) == []


def test_unsupported_parameter_type_is_not_written(tmp_path: Path, limits: Limits) -> None:
    limits.provenance.parameters["groups"] = None  # type: ignore[assignment]
    with pytest.raises(BadInputError, match=r"parameter 'groups' is a NoneType"):
        write_bundle(limits, tmp_path / "limits.h5")
    assert _files(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Content digest
# --------------------------------------------------------------------------------------------


def test_tampered_float_is_detected(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        f["bone_length/max"][3] = f["bone_length/max"][3] + 1e-12
    with pytest.raises(BadInputError) as exc:
        read_bundle(written)
    message = _one_line(exc)
    assert message.startswith(f"{written}: content digest mismatch (stored sha256:")
    assert message.endswith("the file was modified or corrupted")

    limits, info = inspect_bundle(written)
    assert info.digest_ok is False
    assert info.digest_stored != info.digest_computed
    assert info.digest_stored in message and info.digest_computed in message
    original = read_bundle(written, verify=False).bone_length.max[3]
    assert limits.bone_length.max[3] == original  # inspect still shows the content


def test_tampered_string_is_detected(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        f["provenance/path"][0] = "somewhere/else.json"
    assert inspect_bundle(written)[1].digest_ok is False


def test_attributes_are_outside_the_digest(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        f.attrs["created"] = "2000-01-01T00:00:00Z"
    assert read_bundle(written).created == "2000-01-01T00:00:00Z"  # documented limitation


def test_untampered_bundle_verifies(written: Path) -> None:
    _, info = inspect_bundle(written)
    assert info.digest_ok and info.digest_stored == info.digest_computed
    assert content_digest(written) == info.digest_stored
    with h5py.File(written, "r") as f:
        assert content_digest(f["bone_length"]) == info.digest_stored


def test_missing_digest_fails_verification(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        del f.attrs["content-digest"]
    _, info = inspect_bundle(written)
    assert info.digest_stored is None and info.digest_ok is False
    with pytest.raises(BadInputError, match="no content-digest attribute"):
        read_bundle(written)


def test_digest_is_deterministic_despite_creation_time(
    tmp_path: Path, limits: Limits, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundle, "_utc_now", lambda: "2026-01-01T00:00:00Z")
    first = write_bundle(limits, tmp_path / "a.h5")
    monkeypatch.setattr(bundle, "_utc_now", lambda: "2026-06-30T12:34:56Z")
    second = write_bundle(limits, tmp_path / "b.h5")
    assert first == second
    assert read_bundle(tmp_path / "a.h5").created != read_bundle(tmp_path / "b.h5").created


def test_digest_matches_the_byte_exact_specification(tmp_path: Path) -> None:
    """The worked example of docs/bundle-format.md §5.1, built by hand."""
    path = tmp_path / "example.h5"
    with h5py.File(path, "w") as f:
        f["b/names"] = np.array(["wrist", "thumb_cmc"], dtype=object)
        f.create_dataset("a", data=np.array([[1, 2, 3], [4, 5, 6]], dtype=">i8"))
        f["b/x"] = np.float64(0.5)
    stream = (
        b"/a\x00<i8\x002,3\x00"
        + b"".join(n.to_bytes(8, "little") for n in range(1, 7))
        + b"/b/names\x00str\x002\x00wrist\x00thumb_cmc\x00"
        + b"/b/x\x00<f8\x00\x00"
        + bytes.fromhex("000000000000e03f")
    )
    expected = "sha256:" + hashlib.sha256(stream).hexdigest()
    assert expected == "sha256:76e832aeea1fe7a4237ddce8eb60fd9f0b545004ebb527f476754f9a91c8d276"
    assert content_digest(path) == expected


def test_digest_ignores_storage_byte_order_and_creation_order(tmp_path: Path) -> None:
    values = np.array([0.1, -2.5, np.pi])
    with h5py.File(tmp_path / "le.h5", "w") as f:
        f["x"] = values.astype("<f8")
        f["y"] = np.array([True, False])
    with h5py.File(tmp_path / "be.h5", "w") as f:
        f["y"] = np.array([True, False])
        f["x"] = values.astype(">f8")
    assert content_digest(tmp_path / "le.h5") == content_digest(tmp_path / "be.h5")


def test_soft_link_is_refused(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        f["statistics/alias"] = h5py.SoftLink("/bone_length/min")
    with pytest.raises(BadInputError, match="statistics/alias is a link"):
        inspect_bundle(written)


# --------------------------------------------------------------------------------------------
# Versions and foreign files
# --------------------------------------------------------------------------------------------


def test_newer_major_version_is_refused(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        f.attrs["encoding-version"] = "2.0"
    with pytest.raises(UnsupportedVersionError) as exc:
        read_bundle(written)
    message = _one_line(exc)
    assert str(written) in message and "2.0" in message and "1.x" in message
    assert exc.value.exit_code == 4


def test_newer_major_version_of_an_element_is_refused(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        f["joint_angle"].attrs["encoding-version"] = "2.1"
    with pytest.raises(UnsupportedVersionError, match=r"/joint_angle encoding-version 2\.1"):
        read_bundle(written)


def test_newer_minor_version_reads_and_ignores_additions(written: Path, limits: Limits) -> None:
    with h5py.File(written, "r+") as f:
        f.attrs["encoding-version"] = "1.7"
        f.attrs["hand"] = "right"
        f["future/weights"] = np.arange(4.0)
        f["bone_length/median"] = np.ones(20)
        f["joint_angle"].attrs["encoding-version"] = "1.3"
    _rewrite_digest(written)
    back, info = inspect_bundle(written)
    _assert_limits_equal(limits, back)
    assert info.encoding_version == "1.7" and info.digest_ok
    assert set(info.unknown) == {"/future", "/@hand", "/bone_length/median"}
    read_bundle(written)  # verify=True passes
    # inspect names what it ignored (bundle-format §2.4: a reader SHOULD say so)
    from typer.testing import CliRunner

    from bmc_calib.cli import app

    runner = CliRunner()
    data = json.loads(runner.invoke(app, ["inspect", str(written), "--json"]).stdout)
    assert set(data["ignored"]) == {"/future", "/@hand", "/bone_length/median"}
    human = runner.invoke(app, ["inspect", str(written)]).stderr
    assert "ignored (added by a newer minor version): " in human and "/future" in human


def test_malformed_version_is_bad_input(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        f.attrs["encoding-version"] = "1"
    with pytest.raises(BadInputError, match="malformed"):
        read_bundle(written)


def test_plain_hdf5_file_is_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "poses.h5"
    with h5py.File(path, "w") as f:
        f["joints"] = np.zeros((2, 21, 3))
    with pytest.raises(BadInputError) as exc:
        read_bundle(path)
    assert _one_line(exc).startswith(f"{path}: not a bmc-calib bundle (")
    assert exc.value.exit_code == 3


def test_hdf5_of_another_encoding_is_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "adata.h5ad"
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
    with pytest.raises(BadInputError, match=r"not a bmc-calib bundle .*'anndata'"):
        read_bundle(path)


def test_text_file_is_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "limits.h5"
    path.write_text("this is not HDF5\n")
    with pytest.raises(BadInputError) as exc:
        inspect_bundle(path)
    assert _one_line(exc) == f"{path}: not a bmc-calib bundle (not an HDF5 file)"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no such file"):
        read_bundle(tmp_path / "nothing.h5")


def test_truncated_file_is_bad_input(written: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.h5"
    cut.write_bytes(written.read_bytes()[: written.stat().st_size // 2])
    with pytest.raises(BadInputError) as exc:
        read_bundle(cut)
    assert _one_line(exc).startswith(f"{cut}: ")


@pytest.mark.parametrize(
    "dataset",
    ["joint_angle/box_max", "bone_length/tolerance", "skeleton/parents", "provenance/rejected"],
)
def test_missing_dataset_is_named(written: Path, dataset: str) -> None:
    with h5py.File(written, "r+") as f:
        del f[dataset]
    with pytest.raises(BadInputError) as exc:
        read_bundle(written)
    assert _one_line(exc) == f"{written}: missing dataset /{dataset}"


def test_one_half_of_an_optional_hull_pair_is_refused(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        del f["joint_angle/rdp_hull_vertices"]
    with pytest.raises(BadInputError, match="missing dataset /joint_angle/rdp_hull_vertices"):
        read_bundle(written, verify=False)


def test_missing_root_attribute_is_named(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        del f.attrs["normalization"]
    with pytest.raises(BadInputError, match="missing root attribute normalization"):
        read_bundle(written)


def test_wrong_shape_is_named(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        del f["palm/angle/max"]
        f["palm/angle/max"] = np.zeros(5)
    with pytest.raises(BadInputError, match=r"/palm/angle/max has shape \(5,\), expected \(4\)"):
        read_bundle(written, verify=False)


def test_bad_hull_offsets_are_refused(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        f["joint_angle/hull_offsets"][2] = f["joint_angle/hull_offsets"][1] + 1
    with pytest.raises(BadInputError, match="hull_offsets must start at 0"):
        read_bundle(written, verify=False)


def test_non_finite_values_in_a_file_are_refused(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        f["joint_angle/flexion_center"][0] = np.inf
    _rewrite_digest(written)
    with pytest.raises(BadInputError, match="non-finite values in /joint_angle/flexion_center"):
        read_bundle(written)


def test_non_finite_hull_vertices_are_named_once(written: Path) -> None:
    """Every hull's vertices live in one dataset: three bad hulls are one path in the
    message, not the same path three times."""
    with h5py.File(written, "r+") as f:
        vertices = f["joint_angle/hull_vertices"]
        vertices[0, 0] = vertices[30, 1] = vertices[60, 0] = np.nan
    _rewrite_digest(written)
    with pytest.raises(BadInputError) as exc:
        read_bundle(written)
    assert str(exc.value).count("/joint_angle/hull_vertices") == 1, str(exc.value)


# --------------------------------------------------------------------------------------------
# Golden file of encoding 1.0 (committed; never regenerated by tests)
# --------------------------------------------------------------------------------------------


def test_golden_bundle_reads_with_expected_values() -> None:
    limits, info = inspect_bundle(GOLDEN)
    assert info.digest_ok and info.encoding_version == "1.0" and info.unknown == ()
    assert info.digest_stored == (
        "sha256:09bee3b2b75e0adb07ff9c510593b12b2eb9070da42649525c21eac1e762ba08"
    )
    assert read_bundle(GOLDEN, verify=True).coverage == 0.999
    assert limits.tool_name == "bmc-calib" and limits.tool_version == "0.1.0"
    assert ISO_UTC.fullmatch(limits.created)
    assert limits.normalization == "reference-bone" and limits.length_unit == "relative"
    assert limits.joint_names == skeleton.JOINT_NAMES and limits.parents == skeleton.PARENTS

    assert limits.bone_length.names == skeleton.BONE_NAMES
    assert limits.bone_length.min[0] == 0.25 and limits.bone_length.max[19] == 0.75 + 19 / 64
    assert limits.palm_curvature.min.tolist() == [-0.5, -0.25, -0.125, -0.0625]
    assert limits.palm_angle.max.tolist() == [0.9, 0.4, 0.3, 0.5]

    regions = limits.joint_angle
    assert regions.names == skeleton.ANGLE_NAMES
    assert regions.flexion_center[0] == -0.875
    assert regions.hulls[0].tolist() == [[-1.5, -0.25], [0.5, -0.25], [0.5, 0.25], [-1.5, 0.25]]
    assert [len(h) for h in regions.hulls] == [4] + [3 + a % 4 for a in range(1, 15)]
    assert [len(h) for h in regions.exact_hulls] == [8 + a for a in range(15)]
    assert regions.rdp_hulls is None
    assert regions.area[14] == 15 / 32 and regions.box_max[3].tolist() == [0.0, 0.125]

    first, second = limits.provenance.sources
    assert first.path == "data/subject01.npy" and first.frames_used == 950
    assert first.rejected == {"degenerate": 2, "bone_length_outlier": 48}
    assert second.frames_mirrored == 800 and second.rejected["bone_length_outlier"] == 10
    assert limits.provenance.parameters == {
        "coverage": 0.999,
        "reject_glitches": True,
        "glitch_fraction": 0.5,
        "min_groups": 3,
        "rdp_epsilon": 0.01,
        "layout": "canonical",
    }
    stats = limits.statistics
    assert stats["frames_used"] == 1740 and type(stats["frames_used"]) is int
    assert stats["tolerance_estimated"] is False and stats["grouping"] == "per-file"
    assert stats["group_frames"].tolist() == [950, 790]
    assert stats["group_names"].tolist() == ["subject01", "subject02_left"]


def test_writer_still_produces_the_golden_content(tmp_path: Path) -> None:
    """Re-writing the golden limits gives the golden digest: the writer's output is unchanged.

    If this fails because the format deliberately changed, bump ENCODING_VERSION, document the
    change in docs/bundle-format.md and add a new golden file; never regenerate this one.
    """
    copy = tmp_path / "golden.h5"
    shutil.copyfile(GOLDEN, copy)
    again = tmp_path / "again.h5"
    write_bundle(read_bundle(copy), again)
    with h5py.File(again, "r+") as f:  # 1.2 adds /attribute_digest; the rest is unchanged
        del f[bundle.ATTRIBUTE_DIGEST]
    assert content_digest(again) == inspect_bundle(GOLDEN)[1].digest_stored


GOLDEN_1_2_DIGESTS = (
    "sha256:6ad78abdab6e4c9271b022032b989e677d3f2b84b9f4b3b438418f2d5797db9e",
    "sha256:acf8cafc7a0c648cee97b7c1873010eb126d90a0d295335e3d87488e5aa3f9f9",
)


def test_golden_1_2_bundle_reads_and_verifies_both_digests() -> None:
    limits, info = inspect_bundle(GOLDEN_1_2)
    assert info.encoding_version == "1.2" and info.unknown == ()
    assert info.digest_ok and info.content_digest_ok and info.attribute_digest_ok
    assert (info.digest_stored, info.attribute_digest_stored) == GOLDEN_1_2_DIGESTS
    golden_1_0 = read_bundle(GOLDEN)
    assert limits.bone_length.within_person.tolist() == [0.0625] * 20
    limits.bone_length.within_person = None
    _assert_limits_equal(golden_1_0, limits)


def test_writer_still_produces_the_golden_1_2_content(tmp_path: Path) -> None:
    """Re-writing the 1.2 golden limits gives both of its digests (see the test above)."""
    again = tmp_path / "again.h5"
    write_bundle(read_bundle(GOLDEN_1_2), again)
    _, info = inspect_bundle(again)
    assert (info.digest_stored, info.attribute_digest_stored) == GOLDEN_1_2_DIGESTS
