"""The bmc-calib command line: exit codes, JSON on stdout, one-line errors, no partial output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from bmc_calib import __version__, bundle, skeleton
from bmc_calib.cli import app

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(str(p) for p in (ROOT / "data_samples").glob("subject_*"))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "limits.h5"
    result = CliRunner().invoke(app, ["fit", *SAMPLES, "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out


def test_version_and_help(runner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    for args in (["-h"], ["fit", "--help"], ["inspect", "-h"], ["features", "--help"]):
        assert runner.invoke(app, args).exit_code == 0


def test_fit_json_summary(runner, tmp_path) -> None:
    out = tmp_path / "l.h5"
    result = runner.invoke(app, ["fit", *SAMPLES, "-o", str(out), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["frames_read"] == 11000
    assert data["frames_mirrored"] == 300
    glitches = data["frames_rejected"]["bone_length_outlier"]
    assert 320 <= glitches <= 330  # 330 synthetic glitches; noise hides a few mild ones
    assert data["frames_used"] == 11000 - glitches
    assert data["tolerance_method"] == "leave-one-group-out"
    assert 0 <= data["heldout_false_flag_rate_mean"] <= 1
    assert len(data["limits"]["joint_angle"]) == 15
    assert bundle.inspect_bundle(out)[1].digest_stored == data["content_digest"]


def test_fit_human_summary_goes_to_stderr(runner, tmp_path) -> None:
    out = tmp_path / "l.h5"
    result = runner.invoke(app, ["fit", *SAMPLES[:3], "-o", str(out)])
    assert result.exit_code == 0
    assert result.stdout == ""
    for text in ("Inputs", "Bone lengths", "Joint-angle regions", "index_pip", "Wrote"):
        assert text in result.stderr


def test_inspect_json_and_verify(runner, bundle_path, tmp_path) -> None:
    result = runner.invoke(app, ["inspect", str(bundle_path), "--json", "--verify"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["encoding_version"] == bundle.ENCODING_VERSION and data["digest_ok"] is True
    assert [r["name"] for r in data["bone_length"]] == list(skeleton.BONE_NAMES)
    assert len(data["sources"]) == 6 and data["sources"][5]["frames_mirrored"] == 300
    assert data["parameters"]["coverage"] == 0.999
    human = runner.invoke(app, ["inspect", str(bundle_path)])
    assert human.exit_code == 0 and "content digest" in human.stderr and "ok" in human.stderr

    tampered = tmp_path / "tampered.h5"
    shutil.copy(bundle_path, tampered)
    with h5py.File(tampered, "r+") as f:
        f["bone_length/max"][3] *= 1.5
    result = runner.invoke(app, ["inspect", str(tampered), "--verify"])
    assert result.exit_code == 3
    assert "digest mismatch" in result.stderr
    assert runner.invoke(app, ["inspect", str(tampered)]).exit_code == 0  # reports, no check


def test_inspect_names_the_digest_that_does_not_match(runner, bundle_path, tmp_path) -> None:
    """An edited attribute leaves the content digest intact: the human view says which of the
    two digests failed (it used to mark the content digest for either)."""
    tampered = tmp_path / "attribute.h5"
    shutil.copy(bundle_path, tampered)
    with h5py.File(tampered, "r+") as f:
        f.attrs["coverage"] = 0.5
    human = runner.invoke(app, ["inspect", str(tampered)])
    assert human.exit_code == 0
    lines = {line.split(" digest ")[0]: line for line in human.stderr.splitlines()
             if " digest " in line}  # fmt: skip
    assert lines["content"].endswith(": ok")
    assert ": MISMATCH (computed sha256:" in lines["attribute"]
    data = json.loads(runner.invoke(app, ["inspect", str(tampered), "--json"]).stdout)
    assert data["content_digest_ok"] is True and data["attribute_digest_ok"] is False
    assert data["digest_ok"] is False


def test_existing_output_needs_force(runner, bundle_path, tmp_path) -> None:
    out = tmp_path / "l.h5"
    out.write_bytes(b"precious")
    result = runner.invoke(app, ["fit", SAMPLES[0], "-o", str(out)])
    assert result.exit_code == 2
    assert "--force" in result.stderr
    assert out.read_bytes() == b"precious"
    result = runner.invoke(app, ["fit", SAMPLES[0], "-o", str(out), "--force"])
    assert result.exit_code == 0
    bundle.read_bundle(out)


def test_bad_input_is_one_line_exit_3_and_writes_nothing(runner, tmp_path) -> None:
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((5, 20, 3)))
    out = tmp_path / "l.h5"
    result = runner.invoke(app, ["fit", SAMPLES[0], str(bad), "-o", str(out)])
    assert result.exit_code == 3
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(bad) in lines[0] and "(N, 21, 3)" in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()
    assert os.listdir(tmp_path) == ["bad.npy"]


def test_unsupported_bundle_version_is_exit_4(runner, bundle_path, tmp_path) -> None:
    newer = tmp_path / "newer.h5"
    shutil.copy(bundle_path, newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["encoding-version"] = "2.0"
    result = runner.invoke(app, ["inspect", str(newer)])
    assert result.exit_code == 4
    assert "2.0" in result.stderr and str(newer) in result.stderr.replace("\n", "")


def test_not_a_bundle_is_exit_3(runner, tmp_path) -> None:
    path = tmp_path / "x.h5"
    path.write_text("hello")
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 3 and "not a bmc-calib bundle" in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["fit", SAMPLES[0], "--coverage", "2"], "coverage"),
        (["fit", SAMPLES[0], "--layout", "nope"], "unknown layout"),
        (["fit", SAMPLES[0], "--hand", "both"], "--hand"),
        (["fit", SAMPLES[0], "--format", "nope"], "unknown format"),
        (["fit", SAMPLES[0], "--group-by", "x"], "--group-by"),
        (["fit"], "Missing argument"),
        (["frobnicate"], "No such command"),
    ],
)
def test_usage_errors_are_exit_2(runner, tmp_path, args, needle) -> None:
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "o.h5")] if args[0] == "fit"
                           and len(args) > 1 else args)  # fmt: skip
    assert result.exit_code == 2
    assert needle in result.output
    assert not (tmp_path / "o.h5").exists()


def test_features_npz_and_csv(runner, tmp_path) -> None:
    npz = tmp_path / "f.npz"
    result = runner.invoke(app, ["features", SAMPLES[0], SAMPLES[-1], "-o", str(npz)])
    assert result.exit_code == 0
    with np.load(npz) as f:
        assert f["bone_length"].shape == (3000, 20)
        assert f["flexion_abduction"].shape == (3000, 15, 2)
        assert f["palm_curvature"].shape == (3000, 4) and f["palm_angle"].shape == (3000, 4)
        assert f["degenerate"].shape == (3000,) and f["source"][0] == SAMPLES[0]
        assert f["source"][-1] == SAMPLES[-1] and f["frame"][-1] == 999
        assert list(f["angle_names"]) == list(skeleton.ANGLE_NAMES)
        assert f["flexion_abduction"].dtype == np.float64
        fa = f["flexion_abduction"]
    assert np.all(fa[..., 0] > -np.pi) and np.all(fa[..., 0] <= np.pi)

    csv_path = tmp_path / "f.csv"
    result = runner.invoke(app, ["features", SAMPLES[0], "-o", str(csv_path), "--csv"])
    assert result.exit_code == 0
    header = csv_path.read_text().splitlines()[0].split(",")
    assert header[:4] == ["source", "frame", "degenerate", "degenerate_reason"]
    assert "flexion_index_pip_rad" in header and "bone_length_middle_tip_rel" in header
    assert "palm_curvature_thumb-index_per_rel" in header
    table = np.genfromtxt(csv_path, delimiter=",", skip_header=1, usecols=range(1, len(header)))
    assert table.shape == (2000, len(header) - 1)
    col = header.index("flexion_index_pip_rad") - 1
    np.testing.assert_allclose(table[:, col], fa[:2000, 6, 0], rtol=0, atol=1e-15)


def test_real_entry_point_in_a_subprocess(tmp_path) -> None:
    exe = shutil.which("bmc-calib")
    cmd = [exe] if exe else [sys.executable, "-m", "bmc_calib.cli"]
    out = tmp_path / "limits.h5"
    fit = subprocess.run([*cmd, "fit", *SAMPLES, "-o", str(out), "--json"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    assert json.loads(fit.stdout)["frames_read"] == 11000
    inspect = subprocess.run([*cmd, "inspect", str(out), "--verify"],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert inspect.returncode == 0, inspect.stderr
    other = tmp_path / "other.h5"
    missing = subprocess.run([*cmd, "fit", str(tmp_path / "nope.npy"), "-o", str(other)],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert missing.returncode == 3
    assert "nope.npy" in missing.stderr and "Traceback" not in missing.stderr
    assert not other.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="a file-size limit through setrlimit")
def test_a_write_the_system_refuses_is_one_line_and_leaves_nothing(tmp_path) -> None:
    """A bundle's real write path (``merge``, which writes as ``fit`` and ``import`` do, with
    no scratch files of its own), refused by the operating system: a file-size limit (EFBIG,
    the way a full disk refuses with ENOSPC) gives exit 3, one line, no temporary file and
    no crash. (HDF5 writing to disk itself reported a full disk as a cascade of errors and
    crashed the interpreter, exit 139, leaving its temporary file behind.)"""
    import resource
    import signal

    exe = shutil.which("bmc-calib")
    cmd = [exe] if exe else [sys.executable, "-m", "bmc_calib.cli"]
    source = tmp_path / "a.h5"
    made = subprocess.run([*cmd, "fit", *SAMPLES, "-o", str(source)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert made.returncode == 0, made.stderr
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    target = out_dir / "limits.h5"
    result = subprocess.run([*cmd, "merge", str(source), str(source), "-o", str(target)],
                            capture_output=True, text=True, timeout=300,
                            preexec_fn=small_files)  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip() == f"error: cannot write {target}: file too large"
    assert list(out_dir.iterdir()) == []


def test_inspect_default_shows_the_packaged_bundle(runner, tmp_path, monkeypatch) -> None:
    """``inspect default`` as ``validate --limits default`` (a file named default wins)."""
    monkeypatch.chdir(tmp_path)
    data = json.loads(runner.invoke(app, ["inspect", "default", "--json", "--verify"]).stdout)
    assert data["path"].endswith("default_limits.h5") and data["digest_ok"] is True
    (tmp_path / "default").write_bytes(b"not a bundle")
    result = runner.invoke(app, ["inspect", "default"])
    assert result.exit_code == 3 and "default" in result.stderr
    (tmp_path / "default").unlink()  # export (and plot) take the name too
    exported = runner.invoke(app, ["export", "default", "--to", "hand-bmc", "hb"])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "hb" / "CONVEX_HULLS.npy").exists()
