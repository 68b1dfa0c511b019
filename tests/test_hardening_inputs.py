"""Issue 12 §1, §4 and §5 on inputs: memory bombs are refused before allocating, nothing hangs
(FIFOs, never-written HDF5 datasets), malformed details give one clear line (exit 3).

Every fixture is written by the test. The bombs claim terabytes; each test must finish in
well under a second, so none of them may allocate (or stream) what the header claims.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from deadline import deadline
from typer.testing import CliRunner

from bmc_calib import interop, skeleton
from bmc_calib.cli import app
from bmc_calib.errors import BadInputError
from bmc_calib.formats import ReadOptions, open_sources

GOOD = np.random.default_rng(3).normal(0.0, 50.0, (6, 21, 3)) + np.array([0.0, 0.0, 500.0])
#: what the bombs claim: 1e10 poses of 21 × 3 float64 = 5 TB
HUGE = (10**10, skeleton.NUM_JOINTS, 3)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})


def read_all(path: Path | str, **options: object) -> list[np.ndarray]:
    fmt = options.pop("format", None)
    sources = open_sources([str(path)], ReadOptions(**options), format=fmt)  # type: ignore[arg-type]
    return [chunk.joints for src in sources for chunk in src.chunks()]


def fit_fails(runner: CliRunner, path: Path, *args: str) -> str:
    """Run ``fit`` on ``path``: exit 3, one ``error:`` line (returned), no output file."""
    out = path.parent / "out.h5"
    with deadline(5.0):
        result = runner.invoke(app, ["fit", str(path), "-o", str(out), *args])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 3, (result.exit_code, result.stderr, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in result.output
    assert not out.exists()
    return lines[0]


def npy_header_bytes(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    """A ``.npy`` header claiming ``shape`` (followed by no data)."""
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# --------------------------------------------------------------------------- §1 memory bombs
def test_npz_member_claiming_a_huge_shape(runner, tmp_path) -> None:
    path = tmp_path / "bomb.npz"
    write_zip(path, {"joints.npy": npy_header_bytes(HUGE) + b"\0" * 512})
    line = fit_fails(runner, path)
    assert "bomb.npz" in line and "claims shape (10000000000, 21, 3)" in line


def test_npz_member_forging_its_uncompressed_size(tmp_path) -> None:
    """A deflated member whose zip entry claims more than deflate can expand to."""
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("joints.npy", npy_bytes(GOOD))
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("joints.npy")
    data = bytearray(path.read_bytes())
    # patch the uncompressed size (offset 22 of the local header, 24 of the central entry)
    huge = (2**32 - 1).to_bytes(4, "little")
    data[info.header_offset + 22 : info.header_offset + 26] = huge
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = huge
    path.write_bytes(bytes(data))
    with deadline(2.0), pytest.raises(BadInputError, match=r"forged\.npz"):
        read_all(path)


def test_dexycb_labels_claiming_a_huge_shape(runner, tmp_path) -> None:
    path = tmp_path / "labels_000000.npz"
    write_zip(path, {"joint_3d.npy": npy_header_bytes(HUGE), "seg.npy": npy_bytes(np.zeros(2))})
    line = fit_fails(runner, path, "--hand", "right")
    assert "labels_000000.npz" in line and "claims shape" in line


def test_stb_v73_mat_claiming_a_huge_shape(runner, tmp_path) -> None:
    path = tmp_path / "B1Counting_BB.mat"
    with h5py.File(path, "w", userblock_size=512) as fh:  # MATLAB v7.3 = HDF5 + header
        fh.create_dataset("handPara", shape=HUGE, dtype="f8", chunks=(1000, 21, 3))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116)
    with open(path, "r+b") as fh:
        fh.write(header + b"\0" * 8 + b"\x00\x02IM")
    line = fit_fails(runner, path)
    assert "B1Counting_BB.mat" in line and "handPara claims shape" in line


def test_hand_bmc_array_claiming_a_huge_shape(tmp_path) -> None:
    folder = tmp_path / "hand_bmc"
    folder.mkdir()
    for name, shape in interop.HAND_BMC_FILES.items():
        np.save(folder / name, np.ones(shape))
    (folder / "bone_len_min.npy").write_bytes(npy_header_bytes((10**12,)))
    with deadline(1.0), pytest.raises(BadInputError, match=r"bone_len_min\.npy: .*claims shape"):
        interop.read_hand_bmc(str(folder))


def test_pickle_of_shared_lists_expanding_to_1e10_numbers(runner, tmp_path) -> None:
    row = [1.0] * 1000
    block = [row] * 1000  # memo-shared: each list is pickled once
    anno = {0: {"xyz": [block] * 10_000}}  # 1e10 floats once expanded
    path = tmp_path / "anno_training.pickle"
    with open(path, "wb") as fh:
        pickle.dump(anno, fh, protocol=2)
    assert path.stat().st_size < 100_000
    line = fit_fails(runner, path)
    assert "anno_training.pickle" in line and "more than" in line


def test_npz_with_only_a_text_member(runner, tmp_path) -> None:
    path = tmp_path / "notes.npz"
    write_zip(path, {"readme.txt": b"hello"})
    line = fit_fails(runner, path)
    assert "notes.npz" in line and "not a NumPy array" in line


def test_json_with_a_5000_digit_integer(runner, tmp_path) -> None:
    path = tmp_path / "poses.json"
    poses = GOOD.tolist()
    text = json.dumps(poses).replace("[[[", "[[[" + "1" * 5000 + ", ", 1)
    path.write_text(text)
    line = fit_fails(runner, path)
    assert "poses.json" in line and "invalid JSON number" in line


# --------------------------------------------------------------------------- §4 nothing hangs
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
@pytest.mark.parametrize("name", ["poses.npy", "poses.npz", "poses.json", "poses.h5"])
def test_a_fifo_is_refused_quickly(runner, tmp_path, name) -> None:
    path = tmp_path / name
    os.mkfifo(path)
    line = fit_fails(runner, path)
    assert name in line and "FIFO" in line
    fmt = name.rsplit(".", 1)[1]
    with deadline(2.0), pytest.raises(BadInputError, match="FIFO"):
        read_all(path, format=fmt)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_a_fifo_inside_a_folder_is_skipped(tmp_path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    np.save(folder / "a.npy", GOOD)
    os.mkfifo(folder / "b.npy")
    with deadline(2.0):
        (joints,) = read_all(folder)
    assert joints.shape == GOOD.shape


def test_never_written_hdf5_dataset_is_refused(runner, tmp_path) -> None:
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("joints", shape=(10**12, 21, 3), dtype="f4", chunks=(4096, 21, 3))
    assert path.stat().st_size < 100_000
    line = fit_fails(runner, path)
    assert "empty.h5" in line and "claims shape (1000000000000, 21, 3)" in line


def test_compressed_hdf5_still_reads(tmp_path) -> None:
    path = tmp_path / "zipped.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("joints", data=GOOD, compression="gzip", chunks=(2, 21, 3))
    (joints,) = read_all(path)
    np.testing.assert_allclose(joints, GOOD)


# --------------------------------------------------------------------------- §5 is_left
@pytest.mark.parametrize(
    ("is_left", "mirrored"),
    [
        (np.array(["right", "Left", "right", "LEFT", "right", "left"]), 3),
        (np.array(["False", "True", "false", "true", "False", "false"]), 2),
        (np.array(["0", "1", "0", "0", "0", "0"]), 1),
        (np.array([0, 1, 0, 1, 0, 1], np.int8), 3),
        (np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), 1),
        (np.array([False, True, False, False, False, False]), 1),
    ],
)
def test_npz_is_left_is_parsed_exactly(tmp_path, is_left, mirrored) -> None:
    path = tmp_path / "two_hands.npz"
    np.savez(path, joints=GOOD, is_left=is_left)
    sources = open_sources([str(path)], ReadOptions())
    joints = np.concatenate([c.joints for c in sources[0].chunks()])
    assert sources[0].stats.frames_mirrored == mirrored
    flip = np.asarray([v in (True, 1, "1") or str(v).lower() in ("left", "true") for v in is_left])
    np.testing.assert_allclose(joints[~flip], GOOD[~flip])


@pytest.mark.parametrize(
    "is_left", [np.array(["right", "maybe"] * 3), np.array([0, 2] * 3), np.array([0.5] * 6)]
)
def test_npz_is_left_other_values_exit_3(runner, tmp_path, is_left) -> None:
    path = tmp_path / "two_hands.npz"
    np.savez(path, joints=GOOD, is_left=is_left)
    line = fit_fails(runner, path)
    assert "two_hands.npz" in line and "is_left must be" in line


def test_hdf5_is_left_strings_are_parsed(tmp_path) -> None:
    path = tmp_path / "two_hands.h5"
    with h5py.File(path, "w") as fh:
        fh["joints"] = GOOD
        fh["is_left"] = np.array([b"right", b"left"] * 3)
    sources = open_sources([str(path)], ReadOptions())
    list(sources[0].chunks())
    assert sources[0].stats.frames_mirrored == 3


# --------------------------------------------------------------------------- §1 fit's writes
def _fit_inputs() -> list[str]:
    root = Path(__file__).resolve().parents[1] / "data_samples"
    return [str(p) for p in sorted(root.glob("subject_*"))[:3]]


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "no space left on device"),
        (
            RuntimeError(
                "Can't write data (file write failed: time = Thu Jan  1 00:00:00 2026\n"
                ", filename = 'x', file descriptor = 5, errno = 28, error message = "
                "'No space left on device', buf = 0x1, total write size = 8, offset = 0)"
            ),
            "no space left on device",
        ),
    ],
)
def test_disk_full_while_fit_writes_is_one_line(
    runner, tmp_path, monkeypatch, failure, reason
) -> None:
    from bmc_calib import bundle

    def full_disk(plan: object, attributes: object, temporary: str) -> str:
        with open(temporary, "wb") as fh:
            fh.write(b"\x89HDF partial")
        raise failure

    monkeypatch.setattr(bundle, "_write_plan", full_disk)
    out = tmp_path / "limits.h5"
    result = runner.invoke(app, ["fit", *_fit_inputs(), "-o", str(out)])
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error")]
    assert result.exit_code == 3, (result.exit_code, result.stderr, result.exception)
    assert len(lines) == 1 and "limits.h5" in lines[0] and reason in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".limits.h5")]


def test_non_utf8_file_name_does_not_crash_fit(runner, tmp_path) -> None:
    name = os.fsdecode(b"poses_\xff\xfe.npy")
    try:
        path = tmp_path / name
        np.save(path, GOOD)
    except (OSError, UnicodeEncodeError):
        pytest.skip("the file system refuses non-UTF-8 names")
    src = Path(_fit_inputs()[0])
    out = tmp_path / "limits.h5"
    result = runner.invoke(app, ["fit", str(src), str(path), "-o", str(out), "--json"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    summary = json.loads(result.stdout)
    assert out.exists() and summary


# --------------------------------------------------------------------------- §5 smaller promises
def test_tiny_coverage_is_a_usage_error_up_front(runner, tmp_path) -> None:
    out = tmp_path / "limits.h5"
    with deadline(5.0):
        result = runner.invoke(app, ["fit", *_fit_inputs(), "--coverage", "1e-300", "-o", str(out)])
    assert result.exit_code == 2, result.stderr
    assert "--coverage" in result.stderr and "Traceback" not in result.output
    assert not out.exists()


def test_output_naming_a_missing_folder_is_a_usage_error(runner, tmp_path) -> None:
    result = runner.invoke(app, ["fit", *_fit_inputs(), "-o", "newname/"])
    assert result.exit_code == 2, result.stderr
    assert "newname/" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "newname").exists()


def test_too_few_usable_poses_names_the_files(runner, tmp_path) -> None:
    path = tmp_path / "broken.npy"
    np.save(path, np.full((30, 21, 3), np.nan))
    line = fit_fails(runner, path)
    assert "only 0 usable poses in 1 input(s)" in line and "broken.npy" in line


def test_csv_with_a_bad_cell_in_the_first_row_is_refused(runner, tmp_path) -> None:
    rows = [[f"{v:.3f}" for v in pose.ravel()] for pose in GOOD]
    rows[0][5] = "oops"
    path = tmp_path / "poses.csv"
    path.write_text("\n".join(",".join(r) for r in rows) + "\n")
    line = fit_fails(runner, path)
    assert "poses.csv" in line and "line 1" in line and "'oops'" in line
    # a real header (words) is still skipped
    header = ",".join(f"{axis}{j}" for j in range(21) for axis in "xyz")
    path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows[1:]) + "\n")
    (joints,) = read_all(path)
    assert joints.shape == (len(GOOD) - 1, 21, 3)
