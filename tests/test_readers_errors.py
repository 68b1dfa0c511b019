"""Malformed dataset files through the real CLI: exit code 3, one stderr line naming the file
and the problem, no output file. Plus a fuzz test: random bytes and random JSON fed to every
reader only ever raise :class:`bmc_calib.errors.BMCError` subclasses."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from bmc_calib.cli import app
from bmc_calib.errors import BMCError
from bmc_calib.formats import ReadOptions, open_sources, readers

GOOD = np.random.default_rng(3).normal(0.0, 50.0, (4, 21, 3)) + np.array([0.0, 0.0, 500.0])


def _pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _ih(world: object = None, **entry: object) -> dict[str, object]:
    frame = {
        "world_coord": np.ones((42, 3)).tolist() if world is None else world,
        "joint_valid": np.ones((42, 1)).tolist(),
        "hand_type": "interacting",
        "hand_type_valid": True,
    }
    return {"0": {"1": frame | entry}}


def _dexycb(root: Path, joint_3d: object = None, meta: str = "mano_sides:\n- right\n") -> Path:
    serial = root / "seq" / "000"
    serial.mkdir(parents=True)
    (root / "seq" / "meta.yml").write_text(meta)
    arrays = {"seg": np.zeros(2)}
    if joint_3d is not None:
        arrays["joint_3d"] = joint_3d
    np.savez(serial / "labels_000000.npz", **arrays)
    return serial / "labels_000000.npz"


# Each case writes one malformed file and returns (path to pass, extra CLI args, message).
Case = Callable[[Path], tuple[Path, list[str], str]]


def _json_case(name: str, content: str, message: str, fmt: str | None = None) -> Case:
    def make(tmp: Path) -> tuple[Path, list[str], str]:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        return path, (["--format", fmt] if fmt else []), message

    return make


def _write(name: str, writer: Callable[[Path], None], message: str, *args: str) -> Case:
    def make(tmp: Path) -> tuple[Path, list[str], str]:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(path)
        return path, list(args), message

    return make


def _truncated(name: str, writer: Callable[[Path], None], message: str, *args: str) -> Case:
    def both(path: Path) -> None:
        writer(path)
        _truncate(path)

    return _write(name, both, message, *args)


def _h5(data: np.ndarray) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with h5py.File(path, "w") as fh:
            fh["joints"] = data

    return write


def _mat(**variables: object) -> Callable[[Path], None]:
    return lambda path: scipy.io.savemat(path, variables)


def _pickled(obj: object) -> Callable[[Path], None]:
    return lambda path: _pickle(path, obj)


def _mp(handedness: str, landmark: dict[str, int], count: int = 21) -> str:
    return json.dumps({"handedness": handedness, "world_landmarks": [landmark] * count})


POSES = json.dumps(GOOD.tolist())
XYZ = {"x": 1, "y": 2, "z": 3}
ROW = ",".join(["1"] * 63)
GAN = "0001_joint_pos_global.txt"
IH = "x_joint_3d.json"
RHD = "anno_training.pickle"
STB = "B1Random_BB.mat"
HO3D = "meta/0000.pkl"
CASES: dict[str, Case] = {
    # generic JSON
    "json-truncated": _json_case("p.json", POSES[: len(POSES) // 2], "invalid JSON at line 1"),
    "json-shape": _json_case("p.json", json.dumps(GOOD[:, :20].tolist()), r"shape \(20, 3\)"),
    "json-missing-key": _json_case("p.json", '{"foo": [1]}', "no joints key"),
    "json-type": _json_case("p.json", '[["a", "b"]]', "must be numbers"),
    "json-empty": _json_case("p.json", "", "empty file"),
    # CSV / TXT
    "csv-truncated": _json_case("p.csv", f"{ROW}\n{ROW[:60]}", "line 2 has 30 numbers"),
    "csv-shape": _json_case("p.csv", ",".join(["1"] * 60), "60 numbers, expected 63"),
    "csv-type": _json_case("p.csv", f"{ROW}\n{ROW.replace('1', 'x')}", "line 2: 'x'"),
    "csv-empty": _json_case("p.csv", "", "empty file"),
    "csv-header-only": _json_case("p.csv", "a,b,c\n", "no data rows"),
    # HDF5
    "h5-truncated": _truncated("p.h5", _h5(GOOD), "not a readable HDF5 file"),
    "h5-shape": _write("p.h5", _h5(GOOD[:, :20]), r"found \(4, 20, 3\)"),
    "h5-missing-key": _write("p.h5", _h5(GOOD), "no dataset 'nope'", "--key", "nope"),
    "h5-type": _write("p.h5", _h5(np.full((4, 21, 3), "x", dtype="S1")), "must be numbers"),
    "h5-empty": _json_case("p.h5", "", "empty file"),
    # FreiHAND
    "freihand-truncated": _json_case("training_xyz.json", POSES[:-5], "invalid JSON"),
    "freihand-shape": _json_case("training_xyz.json", json.dumps(GOOD[:, :, :2].tolist()), "shape"),
    "freihand-type": _json_case("training_xyz.json", '{"xyz": []}', "expected a JSON list"),
    "freihand-missing": _json_case("training_xyz.json", "[]", "contains no poses"),
    "freihand-empty": _json_case("training_xyz.json", " \n", "empty file"),
    # RHD
    "rhd-truncated": _truncated(RHD, _pickled({0: {"xyz": np.ones((42, 3))}}), "not a readable"),
    "rhd-shape": _write(RHD, _pickled({0: {"xyz": np.ones((21, 3))}}), r"must be \(42, 3\)"),
    "rhd-missing-key": _write(RHD, _pickled({0: {"uv_vis": np.ones(3)}}), "no 'xyz' entry"),
    "rhd-type": _write(RHD, _pickled([1, 2]), "expected a dict"),
    "rhd-empty": _json_case(RHD, "", "empty file"),
    "rhd-unsafe": _write(RHD, _pickled({0: Path("x")}), "refusing to load pathlib"),
    # STB
    "stb-truncated": _truncated(STB, _mat(handPara=np.ones((3, 21, 50))), "truncated or corrupt"),
    "stb-shape": _write(STB, _mat(handPara=np.ones((3, 20, 5))), r"found \(3, 20, 5\)"),
    "stb-missing-key": _write(STB, _mat(other=np.ones(3)), "no variable 'handPara'.*other"),
    "stb-type": _write(STB, _mat(handPara="abc"), "must be numbers|3 × 21 × N"),
    "stb-empty": _json_case(STB, "", "empty file"),
    # GANerated
    "ganerated-truncated": _json_case(GAN, "1," * 40, "found 40"),
    "ganerated-shape": _json_case(GAN, ",".join(["1"] * 62), "found 62"),
    "ganerated-type": _json_case(GAN, "a,b,c", "not a list of numbers"),
    "ganerated-empty": _json_case(GAN, "", "empty file"),
    # HO-3D
    "ho3d-truncated": _truncated(HO3D, _pickled({"handJoints3D": np.ones((21, 3))}), "pickle"),
    "ho3d-shape": _write(HO3D, _pickled({"handJoints3D": np.ones((20, 3))}), r"\(20, 3\)"),
    "ho3d-type": _write(HO3D, _pickled([1]), "expected a dict"),
    "ho3d-missing-key": _write(HO3D, _pickled({"objRot": None}), "only 0 usable poses"),
    "ho3d-empty": _json_case(HO3D, "", "not a readable pickle"),
    # InterHand2.6M
    "interhand-truncated": _json_case(IH, json.dumps(_ih())[:-3], "invalid JSON"),
    "interhand-shape": _json_case(IH, json.dumps(_ih(np.ones((21, 3)).tolist())), "42 × "),
    "interhand-missing-key": _json_case(IH, '{"0": {"1": {"hand_type": 1}}}', "no 'world_coord'"),
    "interhand-type": _json_case(IH, json.dumps(_ih(hand_type="both")), "hand_type must be"),
    "interhand-empty": _json_case(IH, "", "empty file"),
    # F-PHAB
    "fpha-truncated": _json_case("skeleton.txt", "0 " + "1 " * 63 + "\n1 " + "1 " * 20, "number"),
    "fpha-shape": _json_case("skeleton.txt", "0 " + "1 " * 62, "64 numbers per line"),
    "fpha-type": _json_case("skeleton.txt", "0 " + "x " * 63, "not a table of numbers"),
    "fpha-empty": _json_case("skeleton.txt", "", "empty file"),
    # DexYCB
    "dexycb-truncated": _truncated(
        "d/seq/000/labels_000000.npz",
        lambda p: np.savez(p, joint_3d=np.ones((1, 21, 3))),
        "not a readable .npz|meta.yml",
    ),
    "dexycb-shape": lambda t: (_dexycb(t / "d", np.ones((1, 20, 3))), [], r"\(1, 20, 3\)"),
    "dexycb-missing-key": lambda t: (_dexycb(t / "d"), [], "no 'joint_3d' array"),
    "dexycb-type": lambda t: (
        _dexycb(t / "d", np.ones((1, 21, 3)), "mano_sides: [up]\n"),
        [],
        "meta.yml: mano_sides must list",
    ),
    "dexycb-empty": _json_case("labels_000000.npz", "", "empty file", "dexycb"),
    # MediaPipe
    "mediapipe-truncated": _json_case("m.json", '[{"world_landmarks": [{"x"', "JSON", "mediapipe"),
    "mediapipe-shape": _json_case("m.json", _mp("Left", XYZ, 20), "21 landmarks, found 20"),
    "mediapipe-missing-key": _json_case("m.json", _mp("Left", {"x": 1, "y": 2}), "lacks x, y"),
    "mediapipe-type": _json_case("m.json", _mp("Up", XYZ), "handedness must be"),
    "mediapipe-empty": _json_case("m.json", "", "empty file", "mediapipe"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_file_exits_3_with_one_line(tmp_path: Path, case: str) -> None:
    path, args, message = CASES[case](tmp_path)
    out = tmp_path / "out.h5"
    runner = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})
    result = runner.invoke(app, ["fit", str(path), "-o", str(out), *args])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 3, (case, result.stderr, result.exception)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    if "usable poses" not in message:  # the file at fault is named (meta.yml for DexYCB)
        assert any(n in lines[0] for n in (path.name, str(path.parent), "meta.yml")), lines[0]
    assert re.search(message, lines[0]), (message, lines[0])
    assert not out.exists()
    assert not list(tmp_path.glob("*.tmp*"))


# --------------------------------------------------------------------------- fuzz
#: A file name (relative) each reader recognises; folder readers get a dataset-like path.
FUZZ_NAMES = {
    "npy": "x.npy",
    "npz": "x.npz",
    "json": "x.json",
    "csv": "x.csv",
    "h5": "x.h5",
    "freihand": "training_xyz.json",
    "rhd": "anno_training.pickle",
    "stb": "B1Counting_BB.mat",
    "ganerated": "data/0001/0001_joint_pos_global.txt",
    "ho3d": "SEQ/meta/0000.pkl",
    "interhand": "InterHand2.6M_train_joint_3d.json",
    "fpha": "Subject_1/a/1/skeleton.txt",
    "dexycb": "s/seq/000/labels_000000.npz",
    "mediapipe": "hands.json",
    "mediapipe-swapped": "hands.json",
    "fingertips": "annotation.txt_3D.txt",
}

#: Keys the readers look for, so random JSON reaches past the first checks.
KEYS = "xyz joints world_coord joint_valid hand_type 0 1 handedness world_landmarks x y z landmark"
KEYS = KEYS.split()
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)
    ),
    max_leaves=40,
)
FUZZ = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def test_every_reader_has_a_fuzz_target() -> None:
    assert {r.name for r in readers()} == set(FUZZ_NAMES)


def _feed(root: Path, fmt: str, data: bytes) -> None:
    shutil.rmtree(root, ignore_errors=True)
    path = root / FUZZ_NAMES[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    (path.parent.parent / "meta.yml").write_bytes(data[:40])
    try:
        for src in open_sources([str(path)], ReadOptions(chunk_frames=3), format=fmt):
            for _ in src.chunks():
                pass
            src.sha256()
    except BMCError:
        pass


@FUZZ
@given(data=st.binary(max_size=300))
@pytest.mark.parametrize("fmt", sorted(FUZZ_NAMES))
def test_fuzz_random_bytes(tmp_path: Path, fmt: str, data: bytes) -> None:
    _feed(tmp_path / "fuzz", fmt, data)


@FUZZ
@given(value=JSON_VALUES)
@pytest.mark.parametrize("fmt", sorted(FUZZ_NAMES))
def test_fuzz_random_json(tmp_path: Path, fmt: str, value: object) -> None:
    _feed(tmp_path / "fuzz", fmt, json.dumps(value).encode())


@FUZZ
@given(value=JSON_VALUES)
@pytest.mark.parametrize("fmt", ["rhd", "ho3d"])
def test_fuzz_random_pickled_objects(tmp_path: Path, fmt: str, value: object) -> None:
    wrapped = {0: value, "handJoints3D": value, "xyz": value} if fmt == "ho3d" else {0: value}
    _feed(tmp_path / "fuzz", fmt, pickle.dumps(wrapped, protocol=2))
