"""bmc-calib plot: the inside/outside decision, the files written, the missing-extra message."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bmc_calib import bundle, hulls, plot
from bmc_calib.cli import app
from bmc_calib.errors import BMCError
from bmc_calib.features import pose_features
from bmc_calib.fit import fit_limits
from bmc_calib.formats import open_sources
from bmc_calib.limits import Limits
from bmc_calib.violations import joint_angle_points

DATA = Path(__file__).resolve().parents[1] / "data_samples"
FIT = [str(DATA / f"subject_0{i}.npy") for i in (1, 2, 3)]
POSES = str(DATA / "subject_06_left.npz")


@pytest.fixture(scope="module")
def limits() -> Limits:
    return fit_limits(open_sources(FIT))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


def test_status_is_the_hull_test_on_unwrapped_angles(limits) -> None:
    features = pose_features(open_sources([POSES]), limits.normalization).features
    raw = features.flexion_abduction
    # push some points across ±π so that unwrapping matters
    raw = raw.copy()
    raw[:50, 0, 0] = np.pi - 0.01
    raw[50:100, 0, 0] = -np.pi + 0.01
    points, status = plot.joint_angle_status(raw, limits)
    np.testing.assert_array_equal(
        points, joint_angle_points(raw, limits.joint_angle.flexion_center)
    )
    assert np.any(status == plot.OUTSIDE) and np.any(status == plot.INSIDE)
    ja = limits.joint_angle
    for a in range(15):
        inside = hulls.points_in_polygon(points[:, a], ja.hulls[a])
        np.testing.assert_array_equal(status[:, a] == plot.INSIDE, inside)
        distance = hulls.distance_to_polygon(points[:, a], ja.hulls[a])
        near = ~inside & (distance <= ja.tolerance[a] + 1e-6)
        np.testing.assert_array_equal(status[:, a] == plot.WITHIN_TOLERANCE, near)


def test_figures_are_written_at_their_size(limits, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    features = pose_features(open_sources([POSES]), limits.normalization).features
    out = tmp_path / "fig.png"
    result = plot.plot_limits(limits, out, features=features, title="test")
    second = tmp_path / "fig_intervals.png"
    assert result.paths == [str(out), str(second)]
    assert plot.intervals_path(out) == str(second)
    for path, figsize in ((out, plot.JOINTS_FIGSIZE), (second, plot.INTERVALS_FIGSIZE)):
        assert path.stat().st_size > 20_000
        assert _png_size(path) == (round(figsize[0] * plot.DPI), round(figsize[1] * plot.DPI))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "fig_intervals.png"]


def test_cli_plot(limits, runner, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "limits.h5"
    bundle.write_bundle(limits, path)
    out = tmp_path / "l.png"
    result = runner.invoke(app, ["plot", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and (tmp_path / "l_intervals.png").exists()
    again = runner.invoke(app, ["plot", str(path), "-o", str(out)])
    assert again.exit_code == 2 and "--force" in again.stderr
    wrong = runner.invoke(app, ["plot", str(path), "-o", str(tmp_path / "l.jpg")])
    assert wrong.exit_code == 2 and ".png" in wrong.stderr


def test_missing_matplotlib_names_the_extra(limits, runner, tmp_path, monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    with pytest.raises(BMCError, match=r"pip install 'bmc-calib\[plot\]'") as error:
        plot.plot_limits(limits, tmp_path / "x.png")
    assert error.value.exit_code == 2
    path = tmp_path / "limits.h5"
    bundle.write_bundle(limits, path)
    result = runner.invoke(app, ["plot", str(path), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "bmc-calib[plot]" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["limits.h5"]
