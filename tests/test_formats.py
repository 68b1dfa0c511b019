"""Array readers: layouts, handedness, streaming, and one-line errors on malformed files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bmc_calib import skeleton, synthetic
from bmc_calib.errors import BadInputError, UsageError
from bmc_calib.formats import ReadOptions, open_sources, palm_center_to_wrist

DATA = Path(__file__).resolve().parents[1] / "data_samples"


@pytest.fixture(scope="module")
def canonical() -> np.ndarray:
    subject = synthetic.make_subjects(1, seed=4)[0]
    return synthetic.generate(subject, 50, seed=2, glitch_fraction=0.0).joints


def read_all(path, **options) -> tuple[np.ndarray, object]:
    fmt = options.pop("format", None)
    (src,) = open_sources([str(path)], ReadOptions(**options), format=fmt)
    joints = np.concatenate([c.joints for c in src.chunks()])
    return joints, src


# --------------------------------------------------------------------------- layouts
WRIST_LAYOUTS = [
    n for n in skeleton.layout_names() if not skeleton.get_layout(n).root_is_palm_center
]


@pytest.mark.parametrize("layout", WRIST_LAYOUTS)
def test_npy_in_any_layout_reads_back_canonical(tmp_path, canonical, layout: str) -> None:
    lay = skeleton.get_layout(layout)
    path = tmp_path / f"{layout}.npy"
    np.save(path, lay.from_canonical(canonical))
    joints, src = read_all(path, layout=layout, chunk_frames=7)
    np.testing.assert_array_equal(joints, canonical)
    assert src.stats.frames_read == 50 and src.stats.frames_mirrored == 0
    assert src.frames == 50 and src.layout == lay.name


def test_layout_permutations_equal_the_documented_ones() -> None:
    documented = {  # ../shared/formats.md, gather arrays
        "rhd": [0, 4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9, 16, 15, 14, 13, 20, 19, 18, 17],
        "stb": [0, 17, 18, 19, 20, 13, 14, 15, 16, 9, 10, 11, 12, 5, 6, 7, 8, 1, 2, 3, 4],
        "fpha": [0, 1, 6, 7, 8, 2, 9, 10, 11, 3, 12, 13, 14, 4, 15, 16, 17, 5, 18, 19, 20],
        "ho3d": [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20],
        "interhand": [20, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12, 19, 18, 17, 16],
        "canonical": list(range(21)),
        "freihand": list(range(21)),
        "mediapipe": list(range(21)),
    }
    for name, perm in documented.items():
        assert skeleton.get_layout(name).perm.tolist() == perm, name
    # canonical → HO-3D (submission order) is the inverse, not the same array
    assert np.argsort(skeleton.HO3D.perm).tolist() == [
        0, 5, 6, 7, 9, 10, 11, 17, 18, 19, 13, 14, 15, 1, 2, 3, 4, 8, 12, 16, 20
    ]  # fmt: skip


def test_stb_palm_centre_is_converted_to_a_wrist(tmp_path, canonical) -> None:
    palm = canonical.copy()
    ring = canonical[:, 13]
    palm[:, 0] = ring + 0.5 * (canonical[:, 0] - ring)  # the inverse of the documented rule
    path = tmp_path / "stb.npy"
    np.save(path, skeleton.STB.from_canonical(palm))
    joints, _ = read_all(path, layout="stb")
    np.testing.assert_allclose(joints, canonical, atol=1e-9)
    np.testing.assert_allclose(palm_center_to_wrist(palm), canonical, atol=1e-9)


def test_unknown_layout_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"unknown layout 'nope'.*canonical"):
        ReadOptions(layout="nope")


# --------------------------------------------------------------------------- handedness
def test_hand_left_mirrors_every_frame(tmp_path, canonical) -> None:
    path = tmp_path / "left.npy"
    np.save(path, skeleton.mirror(canonical))
    joints, src = read_all(path, hand="left")
    np.testing.assert_array_equal(joints, canonical)
    assert src.stats.frames_mirrored == 50


def test_npz_is_left_mirrors_only_those_frames(tmp_path, canonical) -> None:
    is_left = np.arange(50) % 3 == 0
    stored = canonical.copy()
    stored[is_left] = skeleton.mirror(stored[is_left])
    path = tmp_path / "mixed.npz"
    np.savez(path, joints=stored, is_left=is_left)
    joints, src = read_all(path, chunk_frames=8)
    np.testing.assert_array_equal(joints, canonical)
    assert src.stats.frames_mirrored == int(is_left.sum())


def test_npz_single_array_and_key_option(tmp_path, canonical) -> None:
    np.savez(tmp_path / "one.npz", whatever=canonical)
    joints, _ = read_all(tmp_path / "one.npz")
    np.testing.assert_array_equal(joints, canonical)
    np.savez(tmp_path / "two.npz", a=canonical, b=canonical[:3])
    with pytest.raises(BadInputError, match=r"two\.npz: cannot tell which array.*--key"):
        read_all(tmp_path / "two.npz")
    joints, _ = read_all(tmp_path / "two.npz", key="b")
    assert joints.shape == (3, 21, 3)
    with pytest.raises(BadInputError, match="no array 'c'"):
        read_all(tmp_path / "two.npz", key="c")


def test_sample_data_reads(canonical) -> None:
    (src,) = open_sources([str(DATA / "subject_06_left.npz")])
    joints = np.concatenate([c.joints for c in src.chunks()])
    assert joints.shape == (1000, 21, 3) and src.stats.frames_mirrored == 300


# --------------------------------------------------------------------------- bad input
def _malformed(tmp_path, canonical) -> dict[str, tuple[object, str]]:
    good = tmp_path / "good.npy"
    np.save(good, canonical)
    data = good.read_bytes()
    (tmp_path / "truncated.npy").write_bytes(data[: len(data) // 2])
    np.save(tmp_path / "shape.npy", canonical[:, :20])
    np.save(tmp_path / "empty.npy", np.zeros((0, 21, 3)))
    np.save(tmp_path / "strings.npy", np.full((2, 21, 3), "x"))
    (tmp_path / "text.npy").write_text("not numpy at all\n")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 broken zip")
    np.savez(tmp_path / "wrong_is_left.npz", joints=canonical, is_left=np.zeros(3, bool))
    return {
        "truncated.npy": ("truncated.npy", "not a readable .npy|cannot read frames"),
        "shape.npy": ("shape.npy", r"shape \(N, 21, 3\) or \(N, 63\), found \(50, 20, 3\)"),
        "empty.npy": ("empty.npy", "contains no poses"),
        "strings.npy": ("strings.npy", "joints must be numbers"),
        "text.npy": ("text.npy", "not a readable .npy array"),
        "bad.npz": ("bad.npz", "not a readable .npz archive"),
        "wrong_is_left.npz": ("wrong_is_left.npz", "is_left has 3 entries for 50 poses"),
    }


@pytest.mark.parametrize(
    "name",
    ["truncated.npy", "shape.npy", "empty.npy", "strings.npy", "text.npy", "bad.npz",
     "wrong_is_left.npz"],
)  # fmt: skip
def test_malformed_files_give_one_line_naming_the_file(tmp_path, canonical, name: str) -> None:
    file, pattern = _malformed(tmp_path, canonical)[name]
    with pytest.raises(BadInputError, match=pattern) as info:
        read_all(tmp_path / file)
    message = str(info.value)
    assert str(tmp_path / file) in message
    assert "\n" not in message
    assert info.value.exit_code == 3


def test_missing_and_unrecognised_inputs(tmp_path) -> None:
    with pytest.raises(BadInputError, match="no such file"):
        open_sources([str(tmp_path / "missing.npy")])
    (tmp_path / "poses.xyz").write_text("1 2 3")
    with pytest.raises(BadInputError, match="unrecognised input format"):
        open_sources([str(tmp_path / "poses.xyz")])
    with pytest.raises(UsageError, match="unknown format"):
        open_sources([str(tmp_path / "poses.xyz")], format="nope")


def test_npy_is_streamed_in_chunks(tmp_path, canonical) -> None:
    path = tmp_path / "big.npy"
    np.save(path, np.repeat(canonical, 20, axis=0))
    (src,) = open_sources([str(path)], ReadOptions(chunk_frames=64))
    sizes = [c.joints.shape[0] for c in src.chunks()]
    assert max(sizes) == 64 and sum(sizes) == 1000
