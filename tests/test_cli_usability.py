"""A new user's first hour (issue 13) and the entry point's promises (issue 12 §1, §5).

Each test names the item it covers. Every test runs in its own temporary folder
(``conftest.py``); repository files are found relative to this file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from bmc_calib import cli, default_bundle, features, skeleton, synthetic
from bmc_calib.cli import app

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data_samples"
GOLDEN = ROOT / "tests" / "golden" / "limits-v1.0.h5"
EXE = shutil.which("bmc-calib")
COMMAND = [EXE] if EXE else [sys.executable, "-c", "from bmc_calib.cli import main; main()"]
COMMANDS = list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
POSE_COMMANDS = ("fit", "features", "validate", "plot")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})


@pytest.fixture(scope="module")
def hands() -> np.ndarray:
    """200 canonical right hands of one sample subject."""
    return np.load(DATA / "subject_01.npy")[:200]


@pytest.fixture
def poses(tmp_path, hands) -> Path:
    path = tmp_path / "poses.npy"
    np.save(path, hands)
    return path


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# --------------------------------------------------------------------------- item 1
def test_1_tests_run_in_an_empty_temporary_folder(tmp_path) -> None:
    assert Path.cwd() == tmp_path and Path.cwd() != ROOT
    assert not Path("limits.h5").exists()


def test_1_ci_runs_the_quick_start_as_written_and_in_order() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Quick start", 1)[1].split("```console\n", 1)[1].split("```", 1)[0]
    quick_start = [line for line in block.splitlines() if line.strip()]
    assert len(quick_start) == 2 and "fit" in quick_start[0] and "pytest" in quick_start[1]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "set -euo pipefail" in ci
    torch, first, second = (ci.index(line) for line in
                            ("python3 -m pip install torch==2.13.0", *quick_start))  # fmt: skip
    assert torch < first < second
    between = ci[first + 1 : second]
    assert not any("limits.h5" in line for line in between if not line.startswith("#"))


def test_1_validate_in_the_quick_start_folder_picks_its_limits(runner, poses) -> None:
    shutil.copy(GOLDEN, "limits.h5")  # what the README's first command leaves behind
    result = runner.invoke(app, ["validate", str(poses), "--json", "--fail-on", "never"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["bundle"]["origin"] == default_bundle.ORIGIN_LOCAL


# --------------------------------------------------------------------------- item 3
def test_3_console_is_wide_when_not_a_terminal(monkeypatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert cli._console().width == cli.WIDE
    monkeypatch.setenv("COLUMNS", "100")
    assert cli._console().width == 100


def test_3_and_8_paths_and_digests_are_never_split_in_a_log(tmp_path) -> None:
    folder = tmp_path / ("a-rather-long-folder-name-" * 3)
    folder.mkdir()
    bundle_path = folder / "limits-with-a-long-name.h5"
    shutil.copy(GOLDEN, bundle_path)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    result = subprocess.run([*COMMAND, "inspect", str(bundle_path)], capture_output=True,
                            text=True, timeout=120, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert str(bundle_path) in lines  # the header line: the whole path on one line
    from bmc_calib import bundle

    limits, _ = bundle.inspect_bundle(bundle_path)
    for source in limits.provenance.sources:  # item 8: every input's SHA-256, unbroken
        assert f"  {source.sha256}  {source.path}" in lines


# --------------------------------------------------------------------------- item 4
def test_4_features_output_type_follows_the_suffix(runner, poses) -> None:
    result = runner.invoke(app, ["features", str(poses), "-o", "out.csv"])
    assert result.exit_code == 0, result.output
    assert Path("out.csv").read_text().startswith("source,frame,")

    result = runner.invoke(app, ["features", str(poses), "--csv", "-o", "out.npz"])
    assert result.exit_code == 2
    assert "--csv" in _one_line(result.stderr) and not Path("out.npz").exists()

    result = runner.invoke(app, ["features", str(poses), "--csv"])
    assert result.exit_code == 0 and "features.csv" in result.stderr
    assert Path("features.csv").read_text().startswith("source,frame,")
    assert not Path("features.npz").exists()

    result = runner.invoke(app, ["features", str(poses)])
    assert result.exit_code == 0
    with np.load("features.npz") as data:
        assert data["bone_length"].shape == (200, 20)


def test_4_output_kind() -> None:
    assert features.output_kind("a.CSV") == "csv" and features.output_kind("a.npz") == "npz"
    assert features.output_kind("a.txt", csv=True) == "csv"
    assert features.output_kind("a", csv=False) == "npz"


# --------------------------------------------------------------------------- item 5
def _options(command: str) -> dict[str, str]:
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {opt: p.help for p in click_command.params for opt in p.opts if opt.startswith("--")}


def test_5_every_pose_command_takes_the_same_input_options() -> None:
    shared = ("--layout", "--hand", "--format", "--key", "--side")
    reference = _options("fit")
    for command in POSE_COMMANDS:
        options = _options(command)
        for name in shared:
            assert options.get(name) == reference[name], (command, name)


def test_5_validate_keeps_one_side(runner) -> None:
    args = ["validate", str(DATA / "subject_06_left.npz"), "--limits", str(GOLDEN), "--json"]
    both = json.loads(runner.invoke(app, [*args, "--fail-on", "never"]).stdout)
    left = json.loads(runner.invoke(app, [*args, "--fail-on", "never", "--side", "left"]).stdout)
    assert both["poses"] == 1000 and left["poses"] == 300


# --------------------------------------------------------------------------- item 6
def test_6_limits_default_names_the_packaged_bundle(runner, poses) -> None:
    shutil.copy(GOLDEN, "limits.h5")
    args = ["validate", str(poses), "--json", "--fail-on", "never", "--limits", "default"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    chosen = json.loads(result.stdout)["bundle"]
    assert chosen["origin"].startswith(default_bundle.ORIGIN_PACKAGED)
    assert chosen["path"].endswith("default_limits.h5")
    assert "default_limits.h5" in result.stderr and "--limits default" in result.stderr


# --------------------------------------------------------------------------- item 7
def test_7_plot_takes_several_files_after_one_poses(runner, monkeypatch, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from bmc_calib import plot

    drawn = {}

    def fake_plot(limits, output, *, features=None, title="", force=False):
        drawn.update(poses=len(features), title=title)
        return plot.PlotResult(paths=[str(output)])

    monkeypatch.setattr(plot, "plot_limits", fake_plot)
    a, b = str(DATA / "subject_01.npy"), str(DATA / "subject_02.npy")
    result = runner.invoke(app, ["plot", str(GOLDEN), "--poses", a, b])
    assert result.exit_code == 0, result.output
    assert drawn == {"poses": 4000, "title": f"{GOLDEN.name} with subject_01.npy, subject_02.npy"}
    result = runner.invoke(app, ["plot", str(GOLDEN), "--poses", a, "--poses", b, "--force"])
    assert result.exit_code == 0 and drawn["poses"] == 4000
    npz = str(DATA / "subject_06_left.npz")
    result = runner.invoke(app, ["plot", str(GOLDEN), "--poses", npz, "--side", "left", "--force"])
    assert result.exit_code == 0 and drawn["poses"] == 300


# --------------------------------------------------------------------------- item 8
def test_8_inspect_shows_every_input_sha256(runner) -> None:
    from bmc_calib import bundle

    limits, _ = bundle.inspect_bundle(GOLDEN)
    result = runner.invoke(app, ["inspect", str(GOLDEN)])
    assert result.exit_code == 0
    assert "SHA-256" in result.stderr
    for source in limits.provenance.sources:
        assert source.sha256 in result.stderr.replace("\n", "")


# --------------------------------------------------------------------------- item 9
def test_9_formats_listing_goes_to_stdout(runner) -> None:
    result = runner.invoke(app, ["formats"])
    assert result.exit_code == 0
    assert "fpha" in result.stdout and "Input formats" in result.stdout
    assert result.stderr == ""


# --------------------------------------------------------------------------- item 11
def _features_of(runner: CliRunner, path: Path) -> tuple[np.ndarray, str]:
    out = Path(path.name + ".npz")
    result = runner.invoke(app, ["features", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as data:
        return data["flexion_abduction"], result.stderr


def test_11_flat_rows_npy_is_read_with_a_note(runner, poses, hands, tmp_path) -> None:
    flat = tmp_path / "flat.npy"
    np.save(flat, hands.reshape(-1, 63))
    expected, _ = _features_of(runner, poses)
    got, stderr = _features_of(runner, flat)
    np.testing.assert_array_equal(got, expected)
    assert re.search(r"note: .*flat\.npy: \(200, 63\) array read as \(200, 21, 3\)", stderr)
    npz = tmp_path / "flat.npz"
    np.savez(npz, joints=hands.reshape(-1, 63))
    got, stderr = _features_of(runner, npz)
    np.testing.assert_array_equal(got, expected)
    assert "(200, 63) array read as (200, 21, 3)" in stderr
    single = tmp_path / "single.npy"  # one pose: its note is not about flat rows
    np.save(single, hands[0])
    got, stderr = _features_of(runner, single)
    np.testing.assert_array_equal(got, expected[:1])
    assert re.search(r"note: .*single\.npy: \(21, 3\) array read as one pose\n", stderr)


@pytest.mark.parametrize("names", ["named", "numbered"])
def test_11_pandas_index_column_is_detected(runner, poses, hands, tmp_path, names) -> None:
    header = [f"{axis}{j}" for j in range(21) for axis in "xyz"]
    if names == "numbered":  # pd.DataFrame(array).to_csv(): the header is 0..62
        header = [str(k) for k in range(63)]
    rows = [",".join([str(i), *(repr(float(v)) for v in row)])
            for i, row in enumerate(hands.reshape(-1, 63))]  # fmt: skip
    table = tmp_path / "pandas.csv"
    table.write_text("\n".join(["," + ",".join(header), *rows]) + "\n")
    expected, _ = _features_of(runner, poses)
    got, stderr = _features_of(runner, table)
    np.testing.assert_array_equal(got, expected)
    assert "first column is a row index" in stderr


def test_11_a_leading_time_column_without_index_header_still_hints_fpha(runner, tmp_path):
    table = tmp_path / "timed.csv"
    table.write_text("\n".join(" ".join(["0", *["1.0"] * 63]) for _ in range(3)) + "\n")
    result = runner.invoke(app, ["features", str(table), "-o", "x.npz"])
    assert result.exit_code == 3 and "--format fpha" in result.stderr


# --------------------------------------------------------------------------- item 12
def _fpha_tree(root: Path, subjects: int) -> Path:
    base = root / "Hand_pose_annotation_v1"
    people = synthetic.make_subjects(subjects, seed=2)
    for k, person in enumerate(people):
        hands = synthetic.generate(person, 40, seed=k, glitch_fraction=0.0).joints
        seq = base / f"Subject_{k + 1}" / "pour_milk" / "1"
        seq.mkdir(parents=True)
        rows = skeleton.FPHA.from_canonical(hands).reshape(40, 63)
        np.savetxt(seq / "skeleton.txt", np.column_stack([np.arange(40), rows]), fmt="%.10g")
    return base


def test_12_fit_suggests_group_by_label_for_labelled_data(runner, tmp_path) -> None:
    base = _fpha_tree(tmp_path, 3)
    result = runner.invoke(app, ["fit", str(base), "-o", "a.h5"])
    assert result.exit_code == 0, result.output
    hint = [line for line in result.stderr.splitlines() if line.startswith("hint:")]
    assert len(hint) == 1 and "--group-by label" in hint[0] and "fpha" in hint[0]
    result = runner.invoke(app, ["fit", str(base), "-o", "b.h5", "--json"])
    assert "--group-by label" in json.loads(result.stdout)["hints"][0]
    result = runner.invoke(app, ["fit", str(base), "-o", "c.h5", "--group-by", "label"])
    assert result.exit_code == 0 and "hint:" not in result.stderr


def test_12_no_hint_without_labels(runner, poses) -> None:
    result = runner.invoke(app, ["fit", str(poses), "-o", "a.h5", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["hints"] == []


# --------------------------------------------------------------------------- item 14
@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["fit", "missing.npy", "--json"], 3),
        (["validate", "missing.npy", "--json"], 3),
        (["fit", "--coverage", "2", str(DATA / "subject_01.npy"), "--json"], 2),
        (["fit", "--no-such-option", "--json"], 2),
        (["inspect", "missing.h5", "--json"], 3),
    ],
)
def test_14_json_error_object_on_stdout(runner, args, code) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == code
    data = json.loads(result.stdout)
    assert data["exit_code"] == code and data["error"]
    assert result.stderr.splitlines()[-1] == f"error: {data['error']}"


# --------------------------------------------------------------------------- item 15
@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_15_help_has_one_style(runner, command) -> None:
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0
    assert "<bool>" not in result.stdout  # a flag takes no value
    usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
    assert not re.search(r"[{\[][a-z_]+[}\]]", usage), usage  # FILES, BUNDLE, not {files}


def test_15_errors_are_one_line_starting_with_error(runner, tmp_path) -> None:
    for args in (["fit"], ["frobnicate"], ["fit", "--bogus", "x.npy"], ["inspect", "none.h5"]):
        result = runner.invoke(app, args)
        assert result.exit_code in (2, 3)
        assert _one_line(result.stderr).startswith("error: "), args


def test_15_table_titles_keep_their_brackets(runner) -> None:
    result = runner.invoke(app, ["inspect", str(GOLDEN)])
    for title in ("Bone lengths [relative]", "Palm angles [deg]",
                  "Joint-angle regions [deg]: flexion and abduction"):  # fmt: skip
        assert title in result.stderr


# --------------------------------------------------------------------------- item 16
def test_16_torch_module_without_torch_names_the_extra() -> None:
    code = "import sys; sys.modules['torch'] = None; from bmc_calib.torch import BMCLoss"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 1
    assert "ImportError" in result.stderr and "pip install 'bmc-calib[torch]'" in result.stderr


# --------------------------------------------------------------------------- item 17
def test_17_interrupt_is_one_line_exit_130_nothing_written(runner, poses, monkeypatch) -> None:
    from bmc_calib import fit

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit, "fit_limits", interrupted)
    result = runner.invoke(app, ["fit", str(poses), "-o", "l.h5"])
    assert result.exit_code == 130
    assert _one_line(result.stderr) == "error: interrupted; nothing was written"
    assert sorted(os.listdir()) == ["poses.npy"]


#: the real entry point, its bundle writer stalled once the temporary file is written
STALLED_WRITE = """
import sys, time
from bmc_calib import outputs
def stalled(path):
    sys.stderr.write("writing " + path + "\\n")
    sys.stderr.flush()
    time.sleep(60)
outputs.fsync_file = stalled
from bmc_calib.cli import main
main()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_17_signal_while_writing_cleans_up(tmp_path, poses, sig, code) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", STALLED_WRITE, "fit", str(poses), "-o", "l.h5"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # even if CI ignores it
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert line.startswith("writing ") and ".l.h5.tmp-" in line, line
        assert len(os.listdir(tmp_path)) == 2  # the poses and the temporary bundle
        process.send_signal(sig)
        rest = process.stderr.read()
        assert process.wait(timeout=60) == code
    finally:
        process.kill()
    assert _one_line(rest) == "error: interrupted; nothing was written"
    assert sorted(os.listdir(tmp_path)) == ["poses.npy"]  # no bundle, no temporary file


# --------------------------------------------------------------------------- issue 12 §1
def test_unexpected_failure_is_one_line_exit_70(runner, poses, monkeypatch) -> None:
    from bmc_calib import fit

    def broken(*args, **kwargs):
        raise ValueError("something the library did not expect\nsecond line")

    monkeypatch.setattr(fit, "fit_limits", broken)
    result = runner.invoke(app, ["fit", str(poses), "-o", "l.h5", "--json"])
    assert result.exit_code == 70
    line = _one_line(result.stderr)
    assert "bmc-calib fit" in line and "ValueError: something the library" in line
    assert "rerun with --debug for the traceback" in line
    assert json.loads(result.stdout)["exit_code"] == 70
    debug = runner.invoke(app, ["--debug", "fit", str(poses), "-o", "l.h5"])
    assert isinstance(debug.exception, ValueError)  # --debug: the traceback, unchanged


def test_markup_in_file_names_is_printed_as_is(runner, hands, tmp_path) -> None:
    (tmp_path / "odd[").mkdir()
    odd = tmp_path / "odd[" / "]name[bold].npy"  # a path holding [/] and [bold]
    np.save(odd, hands)
    result = runner.invoke(app, ["fit", str(odd), "-o", "o[s1].h5"])
    assert result.exit_code == 0, result.output
    assert "Wrote o[s1].h5" in result.stderr and Path("o[s1].h5").exists()
    assert "]name[bold].npy" in result.stderr
    result = runner.invoke(app, ["inspect", "o[s1].h5"])
    assert result.exit_code == 0 and "o[s1].h5" in result.stderr and str(odd) in result.stderr
    result = runner.invoke(app, ["features", str(odd), "-o", "f[x].csv"])
    assert result.exit_code == 0 and "f[x].csv" in result.stderr
    result = runner.invoke(app, ["validate", str(odd), "--limits", "o[s1].h5", "--worst", "1",
                                 "--report", "r[1].csv", "--fail-on", "never"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Limits: o[s1].h5" in result.stderr and "Wrote r[1].csv" in result.stderr
    missing = runner.invoke(app, ["fit", "no[/]such.npy"])
    assert missing.exit_code == 3 and "no[/]such.npy" in missing.stderr


# --------------------------------------------------------------------------- item 10
def test_10_people_read_the_item_name_and_the_anatomy(runner, tmp_path) -> None:
    subject = synthetic.make_subjects(1, seed=3)[0]
    good = synthetic.generate(subject, 30, seed=1, glitch_fraction=0.0).joints
    long = good.copy()
    long[0, 7:9] += 1.0 * (long[0, 7] - long[0, 6])  # the index middle phalanx doubled
    np.save(tmp_path / "long.npy", long)
    result = runner.invoke(app, ["validate", str(tmp_path / "long.npy"), "--json"])
    worst = json.loads(result.stdout)["worst_poses"][0]
    assert worst["item"] == "index_dip"
    assert "index_dip (index middle phalanx)" in worst["reason"]
    csv = tmp_path / "f.csv"
    assert (
        runner.invoke(app, ["features", str(tmp_path / "long.npy"), "-o", str(csv)]).exit_code == 0
    )
    header = csv.read_text().splitlines()[0].split(",")
    assert {"bone_length_index_dip_rel", "palm_angle_thumb-index_rad", "flexion_index_pip_rad",
            "palm_curvature_ring-little_per_rel"} <= set(header)  # fmt: skip
    raw = tmp_path / "g.csv"
    args = ["features", str(tmp_path / "long.npy"), "-o", str(raw), "--normalization", "none"]
    assert runner.invoke(app, args).exit_code == 0
    assert "bone_length_index_dip_len" in raw.read_text().splitlines()[0]


# --------------------------------------------------------------------------- item 13
def test_13_a_merged_bundle_says_what_its_tolerances_are(runner, tmp_path) -> None:
    paths = []
    for i, subject in enumerate(synthetic.make_subjects(3, seed=8)):
        paths.append(tmp_path / f"p{i}.npy")
        np.save(paths[-1], synthetic.generate(subject, 300, seed=i, glitch_fraction=0.0).joints)
    for name in ("a", "b"):
        args = ["fit", *map(str, paths), "-o", str(tmp_path / f"{name}.h5")]
        assert runner.invoke(app, args).exit_code == 0
    merged = tmp_path / "m.h5"
    args = ["merge", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "-o", str(merged)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["validate", str(paths[0]), "--limits", str(merged)])
    line = next(x for x in result.stderr.splitlines() if x.startswith("Tolerances:"))
    assert "(leave-one-group-out)" in line and "leave-one-group-out; leave" not in line
    assert "expect many poses" not in line and "here:" in line
