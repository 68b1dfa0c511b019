"""Dataset readers: each fixture is written in the dataset's own layout, unit, container and
handedness from known canonical poses, and must read back to those poses (to 1e-9, in the
dataset's unit) with the documented drop counts, labels and mirroring.

Canonical poses come from :func:`bmc_calib.synthetic.generate` (millimetres, right hands).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from bmc_calib import skeleton, synthetic
from bmc_calib.errors import BadInputError, UsageError
from bmc_calib.formats import ReadOptions, detect_format, open_sources
from bmc_calib.formats.stb import SK_TRANSLATION_MM, rodrigues

N = 12
ATOL = 1e-9


@pytest.fixture(scope="module")
def poses() -> np.ndarray:
    """``(N, 21, 3)`` canonical right hands in millimetres."""
    subject = synthetic.make_subjects(1, seed=11)[0]
    return synthetic.generate(subject, N, seed=5, glitch_fraction=0.0).joints


def read(paths, **options):
    fmt = options.pop("format", None)
    paths = [str(p) for p in (paths if isinstance(paths, list) else [paths])]
    sources = open_sources(paths, ReadOptions(**options), format=fmt)
    joints, groups = [], []
    for src in sources:
        for chunk in src.chunks():
            joints.append(chunk.joints)
            n = len(chunk.joints)
            groups.append(chunk.group if chunk.group is not None else np.full(n, ""))
    if not joints:
        return np.empty((0, 21, 3)), np.empty(0, str), sources
    return np.concatenate(joints), np.concatenate(groups), sources


def num(v: float) -> str:
    """Shortest text that reads back to the same float64."""
    return repr(float(v))


def mirror(x: np.ndarray) -> np.ndarray:
    return skeleton.mirror(x)


def palm_centre(canonical: np.ndarray) -> np.ndarray:
    """Canonical joints with slot 0 replaced by the palm centre the STB rule inverts."""
    out = canonical.copy()
    ring = canonical[..., 13, :]
    out[..., 0, :] = ring + 0.5 * (canonical[..., 0, :] - ring)
    return out


# --------------------------------------------------------------------------- writers
def write_freihand(root: Path, poses: np.ndarray) -> Path:
    path = root / "training_xyz.json"
    path.write_text(json.dumps((poses / 1000.0).tolist()))
    (root / "training_K.json").write_text(json.dumps([np.eye(3).tolist()] * len(poses)))
    return path


def write_rhd(root: Path, poses: np.ndarray) -> Path:
    """Sample i: left hand = mirror of poses[2i], right hand = poses[2i+1]; metres."""
    anno = {}
    for i in range(len(poses) // 2):
        left = skeleton.RHD.from_canonical(mirror(poses[2 * i])) / 1000.0
        right = skeleton.RHD.from_canonical(poses[2 * i + 1]) / 1000.0
        anno[i] = {
            "xyz": np.concatenate([left, right]),
            "uv_vis": np.ones((42, 3), np.float32),
            "K": np.eye(3, dtype=np.float32),
        }
    path = root / "training" / "anno_training.pickle"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as fh:
        pickle.dump(anno, fh, protocol=2)
    return path


def stb_hand_para(poses: np.ndarray) -> np.ndarray:
    """3 × 21 × N, STB layout, palm centre in slot 0, left hands, millimetres."""
    src = skeleton.STB.from_canonical(palm_centre(mirror(poses)))
    return src.transpose(2, 1, 0)


def write_stb(root: Path, poses: np.ndarray) -> tuple[Path, Path]:
    labels = root / "labels"
    labels.mkdir()
    half = len(poses) // 2
    bb = labels / "B1Counting_BB.mat"
    scipy.io.savemat(bb, {"handPara": stb_hand_para(poses[:half])})
    # SK: the labels are in the depth camera: x_depth = R x_colour + t
    para = stb_hand_para(poses[half:]).transpose(2, 1, 0)
    depth = para @ rodrigues(np.array([0.00531, -0.01196, 0.00301])).T + SK_TRANSLATION_MM
    sk = labels / "B2Random_SK.mat"
    scipy.io.savemat(sk, {"handPara": depth.transpose(2, 1, 0)})
    return bb, sk


def write_ganerated(root: Path, poses: np.ndarray) -> Path:
    data = root / "GANeratedHands_Release" / "data"
    for i, pose in enumerate(mirror(poses)):
        folder = data / ("noObject" if i % 2 else "withObject") / "0001"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{i + 1:04d}"
        (folder / f"{stem}_joint_pos_global.txt").write_text(",".join(num(v) for v in pose.ravel()))
        (folder / f"{stem}_joint_pos.txt").write_text(",".join(["0.5"] * 63))
        (folder / f"{stem}_joint2D.txt").write_text(",".join(["1"] * 42))
        (folder / f"{stem}_crop_params.txt").write_text("1,2,3")
    return data


def write_ho3d(root: Path, poses: np.ndarray) -> Path:
    """Two sequences; OpenGL axes; metres; plus 3 unannotated / root-only frames."""
    train = root / "HO3D_v3" / "train"
    for i, pose in enumerate(poses):
        meta = train / ("ABF10" if i < len(poses) // 2 else "MC1") / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        opengl = skeleton.HO3D.from_canonical(pose) / 1000.0 * np.array([1.0, -1.0, -1.0])
        with open(meta / f"{i:04d}.pkl", "wb") as fh:
            pickle.dump({"handJoints3D": opengl, "objRot": np.zeros(3), "camMat": np.eye(3)}, fh)
    extra = train / "MC1" / "meta"
    for name, anno in (
        ("9000.pkl", {"handJoints3D": None, "objRot": None}),
        ("9001.pkl", {"objRot": None}),
        ("9002.pkl", {"handJoints3D": np.array([0.1, 0.2, -0.5])}),
    ):
        with open(extra / name, "wb") as fh:
            pickle.dump(anno, fh)
    (train / "MC1" / "rgb").mkdir()
    (train / "MC1" / "rgb" / "0000.jpg").write_bytes(b"\xff\xd8 not a real image")
    return train


def write_interhand(root: Path, poses: np.ndarray) -> tuple[Path, np.ndarray, list[str]]:
    """Frames: 'right', 'left', 'interacting' (both), one with an invalid joint, one with
    hand_type_valid false. Returns the path, the expected canonical hands, their labels."""
    ih = skeleton.INTERHAND

    def entry(right, left, hand_type, valid=None, type_valid=True):
        coord = np.ones((42, 3))
        flags = np.zeros((42, 1))
        if right is not None:
            coord[:21] = ih.from_canonical(right)
            flags[:21] = 1
        if left is not None:
            coord[21:] = ih.from_canonical(mirror(left))
            flags[21:] = 1
        if valid is not None:
            flags[valid] = 0
        return {
            "world_coord": coord.tolist(),
            "joint_valid": flags.astype(bool).tolist(),
            "hand_type": hand_type,
            "hand_type_valid": type_valid,
        }

    data = {
        "0": {
            "100": entry(poses[0], None, "right"),
            "101": entry(None, poses[1], "left"),
            "102": entry(poses[2], poses[3], "interacting"),
            "103": entry(poses[4], poses[5], "interacting", valid=30),  # left joint invalid
        },
        "7": {
            "5": entry(poses[6], None, "right", type_valid=False),
            "6": entry(poses[7], poses[8], "interacting"),
        },
    }
    path = root / "annotations" / "train" / "InterHand2.6M_train_joint_3d.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    expected = poses[[0, 1, 2, 3, 4, 7, 8]]
    labels = ["Capture0"] * 5 + ["Capture7"] * 2
    return path, expected, labels


def write_fpha(root: Path, poses: np.ndarray) -> Path:
    base = root / "Hand_pose_annotation_v1"
    for s, rows in ((1, poses[:5]), (2, poses[5:9]), (3, poses[9:])):
        seq = base / f"Subject_{s}" / "open_juice_bottle" / "1"
        seq.mkdir(parents=True)
        lines = []
        for t, pose in enumerate(skeleton.FPHA.from_canonical(rows)):
            lines.append(" ".join([str(t), *(num(v) for v in pose.ravel())]))
        (seq / "skeleton.txt").write_text("\n".join(lines) + "\n")
    return base


def write_dexycb(root: Path, poses: np.ndarray) -> Path:
    """Two sequences: one right (poses[:6]), one left (poses[6:], mirrored); metres; plus an
    all −1 frame (no hand)."""
    sequences = (("20200709_141754", "right", poses[:6]), ("20200709_142123", "left", poses[6:]))
    for seq, side, rows in sequences:
        seq_dir = root / "20200709-subject-01" / seq
        serial = seq_dir / "836212060125"
        serial.mkdir(parents=True)
        (seq_dir / "meta.yml").write_text(
            f"num_frames: {len(rows)}\nycb_ids:\n- 2\n- 9\nycb_grasp_ind: 0\n"
            f"mano_sides:\n- {side}\nmano_calib:\n- 20200709-subject-01_right\n"
        )
        for i, pose in enumerate(rows):
            hand = mirror(pose) if side == "left" else pose
            np.savez(
                serial / f"labels_{i:06d}.npz",
                seg=np.zeros((4, 4), np.uint8),
                joint_3d=(hand / 1000.0)[None],
                joint_2d=np.zeros((1, 21, 2)),
                pose_m=np.zeros((1, 51)),
            )
        if side == "right":
            np.savez(serial / "labels_000099.npz", joint_3d=-np.ones((1, 21, 3)))
    return root


def write_mediapipe(root: Path, poses: np.ndarray) -> Path:
    """Mixed dump: a Tasks-API frame with two hands, legacy-API frames, single hands."""

    def lms(pose):
        return [{"x": x, "y": y, "z": z} for x, y, z in (pose / 1000.0).tolist()]

    frames = [
        {
            "hand_world_landmarks": [lms(poses[0]), lms(mirror(poses[1]))],
            "handedness": [
                [{"category_name": "Right", "score": 0.9}],
                [{"category_name": "Left", "score": 0.8}],
            ],
        },
        {"hand_world_landmarks": [], "handedness": []},  # no hand in this frame
        # frames without hands as the legacy Solutions API writes them: None
        {"multi_hand_world_landmarks": None, "multi_handedness": None},
        None,
        {},
        {
            "multi_hand_world_landmarks": [{"landmark": lms(mirror(poses[2]))}],
            "multi_handedness": [{"classification": [{"label": "Left", "score": 0.97}]}],
        },
        {"handedness": "Right", "world_landmarks": lms(poses[3])},
        {"hands": [{"handedness": "left", "world_landmarks": lms(mirror(poses[4]))}]},
    ]
    path = root / "hands.json"
    path.write_text(json.dumps(frames))
    return path


# --------------------------------------------------------------------------- round trips
def test_freihand(tmp_path, poses) -> None:
    path = write_freihand(tmp_path, poses)
    assert detect_format(str(path)).name == "freihand"
    joints, _, (src,) = read(path, chunk_frames=5)
    np.testing.assert_allclose(joints, poses / 1000.0, rtol=0, atol=ATOL)
    assert (src.unit, src.format, src.stats.frames_read) == ("m", "freihand", N)
    assert src.stats.frames_mirrored == 0
    # the dataset root: only the *_xyz.json file is read (K / mano files are not poses)
    joints, _, sources = read(tmp_path)
    assert [s.format for s in sources] == ["freihand"] and len(joints) == N


def test_rhd_both_hands_and_side(tmp_path, poses) -> None:
    path = write_rhd(tmp_path, poses)
    assert detect_format(str(path)).name == "rhd"
    joints, _, (src,) = read(path, chunk_frames=4)
    np.testing.assert_allclose(joints, poses / 1000.0, rtol=0, atol=ATOL)
    assert src.stats.frames_read == N and src.stats.frames_mirrored == N // 2
    left, _, (src,) = read(path, side="left")
    np.testing.assert_allclose(left, poses[0::2] / 1000.0, rtol=0, atol=ATOL)
    assert src.stats.dropped == {"other_side": N // 2} and src.stats.frames_read == N
    right, _, _ = read(tmp_path, side="right")  # the dataset root works too
    np.testing.assert_allclose(right, poses[1::2] / 1000.0, rtol=0, atol=ATOL)
    with pytest.raises(UsageError, match="--hand does not apply to format rhd"):
        read(path, hand="left")


def test_stb_bb_and_sk(tmp_path, poses) -> None:
    bb, sk = write_stb(tmp_path, poses)
    assert detect_format(str(bb)).name == "stb" and detect_format(str(sk)).name == "stb"
    joints, groups, (src,) = read(tmp_path / "labels", chunk_frames=4)
    np.testing.assert_allclose(joints, poses, rtol=0, atol=1e-9)
    assert src.unit == "mm" and src.stats.frames_mirrored == N
    assert groups.tolist() == ["B1Counting"] * (N // 2) + ["B2Random"] * (N // 2)
    assert sorted(src.files) == sorted([str(bb), str(sk)])
    joints, _, _ = read(tmp_path)  # dataset root with labels/ inside
    assert len(joints) == N


@pytest.mark.parametrize("kind", ["BB", "SK"])
def test_stb_missing_markers_are_dropped_in_both_cameras(tmp_path, poses, kind) -> None:
    """A joint stored as (0, 0, 0) or (−1, −1, −1) is a missing marker in either file; in the
    depth camera's SK files the colour transform used to move it off the marker first."""
    para = stb_hand_para(poses[:6]).transpose(2, 1, 0)  # (N, 21, 3), the file's own layout
    para[1, 4] = 0.0
    para[3, 11] = -1.0
    para[5] = 0.0
    folder = tmp_path / "labels"
    folder.mkdir()
    scipy.io.savemat(folder / f"B1Counting_{kind}.mat", {"handPara": para.transpose(2, 1, 0)})
    _, _, (src,) = read(folder)
    assert src.stats.dropped == {"sentinel": 3} and src.stats.frames_kept == 3


def test_stb_v73_mat(tmp_path, poses) -> None:
    path = tmp_path / "B3Counting_BB.mat"
    # MATLAB v7.3: HDF5 after a 512-byte MATLAB header; arrays stored transposed
    with h5py.File(path, "w", userblock_size=512) as fh:
        fh["handPara"] = stb_hand_para(poses).transpose(2, 1, 0)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116)
    with open(path, "r+b") as fh:
        fh.write(header + b"\0" * 8 + b"\x00\x02IM")
    joints, _, _ = read(path, format="stb")
    np.testing.assert_allclose(joints, poses, rtol=0, atol=1e-9)


def test_ganerated_folder_and_file(tmp_path, poses) -> None:
    data = write_ganerated(tmp_path, poses)
    joints, _, (src,) = read(tmp_path / "GANeratedHands_Release", chunk_frames=5)
    assert src.format == "ganerated" and src.unit == "mm"
    assert src.stats.frames_mirrored == N and len(src.files) == N
    order = np.argsort([f"{'noObject' if i % 2 else 'withObject'}/{i:04d}" for i in range(N)])
    np.testing.assert_allclose(joints, poses[order], rtol=0, atol=ATOL)
    one = data / "withObject" / "0001" / "0001_joint_pos_global.txt"
    joints, _, (src,) = read(one, unit="m", hand="right")
    np.testing.assert_allclose(joints[0], mirror(poses[0]), rtol=0, atol=ATOL)
    assert src.unit == "m" and src.stats.frames_mirrored == 0


def test_ho3d_opengl_and_unannotated_frames(tmp_path, poses) -> None:
    train = write_ho3d(tmp_path, poses)
    joints, groups, (src,) = read(train, chunk_frames=5)
    np.testing.assert_allclose(joints, poses / 1000.0, rtol=0, atol=ATOL)
    assert src.stats.dropped == {"no_annotation": 2, "root_only": 1}
    assert src.stats.frames_read == N + 3 and src.stats.frames_kept == N
    assert groups.tolist() == ["ABF10"] * (N // 2) + ["MC1"] * (N // 2)
    assert not any(f.endswith(".jpg") for f in src.files)
    one = train / "ABF10" / "meta" / "0000.pkl"
    assert detect_format(str(one)).name == "ho3d"
    joints, _, _ = read(one)
    np.testing.assert_allclose(joints[0], poses[0] / 1000.0, rtol=0, atol=ATOL)
    joints, _, _ = read(train / "MC1" / "meta")  # a meta folder
    assert len(joints) == N // 2


def test_h2o3d_both_hands(tmp_path, poses) -> None:
    meta = tmp_path / "h2o" / "subject1" / "meta"
    meta.mkdir(parents=True)
    flip = np.array([1.0, -1.0, -1.0])
    anno = {
        "rightHandJoints3D": skeleton.HO3D.from_canonical(poses[0]) * flip,
        "leftHandJoints3D": skeleton.HO3D.from_canonical(mirror(poses[1])) * flip,
    }
    with open(meta / "000000.pkl", "wb") as fh:
        pickle.dump(anno, fh)
    joints, _, (src,) = read(meta / "000000.pkl")
    np.testing.assert_allclose(joints, poses[:2], rtol=0, atol=ATOL)
    assert src.stats.frames_mirrored == 1


def test_interhand_flags_and_captures(tmp_path, poses) -> None:
    path, expected, labels = write_interhand(tmp_path, poses)
    assert detect_format(str(path)).name == "interhand"
    joints, groups, (src,) = read(path, chunk_frames=3)
    np.testing.assert_allclose(joints, expected, rtol=0, atol=ATOL)
    assert groups.tolist() == labels
    assert src.unit == "mm"
    assert src.stats.dropped == {"invalid_flag": 1, "hand_type_invalid": 1}
    assert src.stats.frames_read == 9 and src.stats.frames_mirrored == 3
    right, _, (src,) = read(tmp_path / "annotations", side="right")
    np.testing.assert_allclose(right, poses[[0, 2, 4, 7]], rtol=0, atol=ATOL)
    assert src.stats.dropped["other_side"] == 3


def test_fpha_tree_subjects(tmp_path, poses) -> None:
    base = write_fpha(tmp_path, poses)
    joints, groups, (src,) = read(tmp_path, chunk_frames=4)
    np.testing.assert_allclose(joints, poses, rtol=0, atol=ATOL)
    assert src.format == "fpha" and src.layout == "fpha" and src.unit == "mm"
    assert groups.tolist() == ["Subject_1"] * 5 + ["Subject_2"] * 4 + ["Subject_3"] * 3
    one = base / "Subject_2" / "open_juice_bottle" / "1" / "skeleton.txt"
    joints, groups, _ = read(one)
    np.testing.assert_allclose(joints, poses[5:9], rtol=0, atol=ATOL)
    assert set(groups) == {"Subject_2"}


def test_dexycb_sides_from_meta(tmp_path, poses) -> None:
    write_dexycb(tmp_path / "DexYCB", poses)
    joints, groups, (src,) = read(tmp_path / "DexYCB", chunk_frames=4)
    np.testing.assert_allclose(joints, poses / 1000.0, rtol=0, atol=ATOL)
    assert src.stats.dropped == {"sentinel": 1} and src.stats.frames_read == N + 1
    assert src.stats.frames_mirrored == N - 6
    assert set(groups) == {"20200709-subject-01"}
    assert sum(f.endswith("meta.yml") for f in src.files) == 2
    serial = next((tmp_path / "DexYCB").glob("*/20200709_142123/*/"))
    left, _, _ = read(serial, side="left")
    assert len(left) == N - 6
    right, _, (src,) = read(serial, side="right")  # a left-hand sequence has no right hand
    assert len(right) == 0 and src.stats.dropped == {"other_side": N - 6}


def test_dexycb_without_meta_needs_hand(tmp_path, poses) -> None:
    path = tmp_path / "labels_000000.npz"
    np.savez(path, joint_3d=(poses[:1] / 1000.0))
    with pytest.raises(BadInputError, match=r"no meta\.yml.*--hand"):
        read(path)
    joints, _, _ = read(path, hand="right")
    np.testing.assert_allclose(joints, poses[:1] / 1000.0, rtol=0, atol=ATOL)


def test_mediapipe_labels_and_swapped(tmp_path, poses) -> None:
    path = write_mediapipe(tmp_path, poses)
    assert detect_format(str(path)).name == "mediapipe"
    joints, _, (src,) = read(path)
    np.testing.assert_allclose(joints, poses[:5] / 1000.0, rtol=0, atol=ATOL)
    assert src.stats.frames_mirrored == 3 and src.unit == "m"
    swapped, _, (src,) = read(path, format="mediapipe-swapped")
    assert src.stats.frames_mirrored == 2
    np.testing.assert_allclose(swapped[0], mirror(poses[0]) / 1000.0, rtol=0, atol=ATOL)
    _, _, (src,) = read(path, hand="right")
    assert src.stats.frames_mirrored == 0


# --------------------------------------------------------------------------- generic
def test_json_nested_lists_one_pose_and_object(tmp_path, poses) -> None:
    lay = skeleton.RHD
    (tmp_path / "a.json").write_text(json.dumps(lay.from_canonical(poses).tolist()))
    joints, _, (src,) = read(tmp_path / "a.json", layout="rhd", chunk_frames=5)
    np.testing.assert_allclose(joints, poses, rtol=0, atol=ATOL)
    assert src.format == "json"
    (tmp_path / "one.json").write_text(json.dumps(poses[0].tolist()))
    joints, _, _ = read(tmp_path / "one.json")
    np.testing.assert_allclose(joints, poses[:1], rtol=0, atol=ATOL)
    flat = {"meta": "x", "poses": poses.reshape(N, 63).tolist()}
    (tmp_path / "obj.json").write_text(json.dumps(flat))
    joints, _, _ = read(tmp_path / "obj.json")
    np.testing.assert_allclose(joints, poses, rtol=0, atol=ATOL)


def test_json_records_with_side_and_group(tmp_path, poses) -> None:
    records = []
    for i, pose in enumerate(poses):
        left = i % 3 == 0
        joints = (mirror(pose) if left else pose).tolist()
        hand = "Left" if left else "right"
        records.append({"id": i, "joints_3d": joints, "hand": hand, "subject": f"s{i % 2}"})
    (tmp_path / "rec.json").write_text(json.dumps(records))
    joints, groups, (src,) = read(tmp_path / "rec.json", chunk_frames=5)
    np.testing.assert_allclose(joints, poses, rtol=0, atol=ATOL)
    assert src.stats.frames_mirrored == 4
    assert groups.tolist() == [f"s{i % 2}" for i in range(N)]
    left, _, _ = read(tmp_path / "rec.json", side="left")
    assert len(left) == 4


def test_json_named_joints(tmp_path, poses) -> None:
    names = [n.upper() if i % 2 else n for i, n in enumerate(skeleton.JOINT_NAMES)]
    named = [dict(zip(names, pose.tolist(), strict=True)) for pose in poses]
    (tmp_path / "named.json").write_text(json.dumps(named))
    joints, _, _ = read(tmp_path / "named.json")
    np.testing.assert_allclose(joints, poses, rtol=0, atol=ATOL)


def test_csv_and_txt(tmp_path, poses) -> None:
    header = ",".join(f"{n}_{a}" for n in skeleton.JOINT_NAMES for a in "xyz")
    rows = [",".join(num(v) for v in p.ravel()) for p in poses]
    (tmp_path / "p.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    joints, _, (src,) = read(tmp_path / "p.csv", chunk_frames=5)
    np.testing.assert_allclose(joints, poses, rtol=0, atol=ATOL)
    assert src.format == "csv"
    lay = skeleton.INTERHAND
    text = "\n".join(" ".join(num(v) for v in p.ravel()) for p in lay.from_canonical(poses))
    (tmp_path / "p.txt").write_text("# exported\n" + text)
    joints, _, _ = read(tmp_path / "p.txt", layout="interhand", hand="left")
    np.testing.assert_allclose(joints, mirror(poses), rtol=0, atol=ATOL)


def test_h5_dataset_with_is_left(tmp_path, poses) -> None:
    is_left = np.arange(N) % 4 == 0
    stored = np.where(is_left[:, None, None], mirror(poses), poses)
    path = tmp_path / "p.h5"
    with h5py.File(path, "w") as fh:
        fh["train/joints_3d"] = stored
        fh["train/is_left"] = is_left
        fh["train/other"] = np.zeros(3)
    joints, _, (src,) = read(path, key="train/joints_3d", chunk_frames=5)
    np.testing.assert_allclose(joints, poses, rtol=0, atol=ATOL)
    assert src.stats.frames_mirrored == 3 and src.frames == N
    joints, _, _ = read(path)  # the only (N, 21, 3) dataset
    assert len(joints) == N


def test_generic_readers_keep_non_finite_frames(tmp_path, poses) -> None:
    bad = poses.copy()
    bad[3, 5, 1] = np.nan
    (tmp_path / "nan.json").write_text(json.dumps(bad.tolist()))  # Python writes NaN
    joints, _, (src,) = read(tmp_path / "nan.json")
    assert len(joints) == N and src.stats.dropped == {}


def test_dataset_readers_drop_and_count_invalid_frames(tmp_path, poses) -> None:
    bad = poses / 1000.0
    bad = bad.copy()
    bad[1, 3] = np.inf
    bad[2, 7] = 0.0
    bad[4] = -1.0
    path = tmp_path / "evaluation_xyz.json"
    path.write_text(json.dumps(bad.tolist()))
    joints, _, (src,) = read(path)
    assert src.stats.dropped == {"sentinel": 2, "non_finite": 1}
    assert src.stats.frames_read == N and src.stats.frames_kept == N - 3
    np.testing.assert_allclose(joints, np.delete(poses / 1000.0, [1, 2, 4], 0), atol=ATOL)


def test_fit_provenance_counts_reader_drops(tmp_path, poses) -> None:
    from bmc_calib.fit import FitOptions, fit_limits

    subject = synthetic.make_subjects(3, seed=1)
    paths = []
    for k, s in enumerate(subject):
        hands = synthetic.generate(s, 40, seed=k, glitch_fraction=0.0).joints
        path = write_ho3d(tmp_path / f"h{k}", hands)
        paths.append(str(path))
    limits = fit_limits(open_sources(paths), FitOptions(group_by="label"))
    record = limits.provenance.sources[0]
    assert record.frames_read == 43 and record.rejected["no_annotation"] == 2
    assert record.rejected["root_only"] == 1 and record.frames_used <= 40
    stats = limits.statistics
    assert stats["frames_read"] == 129 and stats["rejected_no_annotation"] == 6
    # each input holds sequences ABF10 and MC1; a label names the same sequence in every file
    assert list(stats["groups"]) == ["ho3d:ABF10", "ho3d:MC1"]


# --------------------------------------------------------------------------- refusals
def test_fingertip_files_are_refused_with_the_reason(tmp_path) -> None:
    line = ";".join(["10.5, -3.2, 400.1"] * 5) + ";\n"
    path = tmp_path / "data" / "Desk" / "annotation.txt_3D.txt"
    path.parent.mkdir(parents=True)
    path.write_text(line * 3)
    for target in (path, tmp_path / "data"):
        with pytest.raises(BadInputError, match=r"only 5 fingertips.*cannot be used"):
            read(target)


@pytest.mark.parametrize("joints", [5, 16])
def test_too_few_joints_are_refused(tmp_path, joints) -> None:
    np.save(tmp_path / "few.npy", np.ones((4, joints, 3)))
    (tmp_path / "few.json").write_text(json.dumps(np.ones((4, joints, 3)).tolist()))
    (tmp_path / "few.csv").write_text("\n".join([",".join(["1"] * 3 * joints)] * 4))
    for name in ("few.npy", "few.json", "few.csv"):
        with pytest.raises(BadInputError, match="cannot be used by fit or features"):
            read(tmp_path / name)


def test_sixteen_named_joints_without_dip_are_refused(tmp_path) -> None:
    names = [n for n in skeleton.JOINT_NAMES if not n.endswith(("dip", "thumb_ip"))]
    assert len(names) == 16
    (tmp_path / "icvl.json").write_text(json.dumps([{n: [1.0, 2.0, 3.0] for n in names}]))
    with pytest.raises(BadInputError, match=r"16 joints per pose.*without DIP"):
        read(tmp_path / "icvl.json")


# --------------------------------------------------------------------------- detection
def test_ambiguous_and_forced_formats(tmp_path, poses) -> None:
    path = tmp_path / "poses.json"
    path.write_text(json.dumps((poses / 1000.0).tolist()))
    assert detect_format(str(path)).name == "json"
    _, _, (src,) = read(path, format="freihand")
    assert src.format == "freihand" and src.unit == "m"
    # a folder holding two dataset layouts at once is ambiguous
    write_fpha(tmp_path / "mixed", poses)
    write_ganerated(tmp_path / "mixed", poses)
    with pytest.raises(UsageError, match=r"ambiguous dataset folder.*fpha.*ganerated.*--format"):
        read(tmp_path / "mixed")
    joints, _, _ = read(tmp_path / "mixed", format="fpha")
    assert len(joints) == N


def test_folder_of_generic_files_and_glob(tmp_path, poses) -> None:
    for i in range(3):
        np.save(tmp_path / f"s{i}.npy", poses)
    (tmp_path / "README.md").write_text("notes")
    _, _, sources = read(tmp_path)
    assert [Path(s.path).name for s in sources] == ["s0.npy", "s1.npy", "s2.npy"]
    _, _, sources = read(str(tmp_path / "**" / "s*.npy"))
    assert len(sources) == 3


def test_options_that_do_not_apply_are_refused(tmp_path, poses) -> None:
    path = write_freihand(tmp_path, poses)
    with pytest.raises(UsageError, match="--layout does not apply to format freihand"):
        read(path, layout="rhd")
    with pytest.raises(UsageError, match="--side must be one of"):
        ReadOptions(side="both")
    with pytest.raises(UsageError, match="--unit must be one of"):
        ReadOptions(unit="inch")


# --------------------------------------------------------------------------- CLI
@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})


def test_cli_formats_lists_every_reader(runner) -> None:
    from bmc_calib.cli import app
    from bmc_calib.formats import readers

    result = runner.invoke(app, ["formats", "--json"])
    assert result.exit_code == 0
    listed = json.loads(result.stdout)["formats"]
    assert [f["name"] for f in listed] == sorted(r.name for r in readers())
    for f in listed:
        assert {"expected_files", "layout", "unit", "handedness", "groups", "example"} <= set(f)
        assert f["expected_files"] and f["layout"] and f["unit"] and f["handedness"]
    human = runner.invoke(app, ["formats"])
    assert human.exit_code == 0 and "interhand" in human.stdout and "UNVERIFIED" in human.stdout


def test_cli_fit_dataset_tree_by_subject_labels(runner, tmp_path) -> None:
    from bmc_calib.cli import app

    subjects = synthetic.make_subjects(3, seed=2)
    hands = np.concatenate(
        [
            synthetic.generate(s, 60, seed=k, glitch_fraction=0.0).joints
            for k, s in enumerate(subjects)
        ]
    )
    base = tmp_path / "Hand_pose_annotation_v1"
    for k in range(3):
        seq = base / f"Subject_{k + 1}" / "pour_milk" / "2"
        seq.mkdir(parents=True)
        rows = skeleton.FPHA.from_canonical(hands[60 * k : 60 * (k + 1)]).reshape(60, 63)
        np.savetxt(seq / "skeleton.txt", np.column_stack([np.arange(60), rows]), fmt="%.10g")
    out = tmp_path / "limits.h5"
    result = runner.invoke(app, ["fit", str(base), "--group-by", "label", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["frames_read"] == 180
    assert summary["tolerance_method"] == "leave-one-group-out"
    from bmc_calib import bundle

    limits, _ = bundle.inspect_bundle(out)
    (record,) = limits.provenance.sources
    assert record.format == "fpha" and record.frames_read == 180


def test_cli_side_option_and_reader_drops_in_summary(runner, tmp_path) -> None:
    from bmc_calib.cli import app

    subject = synthetic.make_subjects(1, seed=3)[0]
    hands = synthetic.generate(subject, 40, seed=1, glitch_fraction=0.0).joints
    path = write_rhd(tmp_path, hands)
    out = tmp_path / "f.npz"
    result = runner.invoke(app, ["features", str(path), "--side", "left", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "20 poses" in result.stderr
    with np.load(out) as data:
        assert data["bone_length"].shape == (20, 20)
    args = ["fit", str(path), "--side", "right", "-o", str(tmp_path / "l.h5"), "--json"]
    fit = runner.invoke(app, args)
    assert fit.exit_code == 0, fit.stderr
    summary = json.loads(fit.stdout)
    assert summary["frames_read"] == 40 and summary["frames_rejected"]["other_side"] == 20
    bad = runner.invoke(app, ["fit", str(path), "--side", "up", "-o", str(tmp_path / "x.h5")])
    assert bad.exit_code == 2 and "--side must be one of" in bad.stderr


def test_an_input_reached_twice_is_read_once(tmp_path, poses, monkeypatch) -> None:
    """The same file by two names, or through its folder and by name, is one input: its
    poses counted twice would weigh that person double (a note says so)."""
    folder = tmp_path / "data"
    folder.mkdir()
    np.save(folder / "a.npy", poses[:4])
    np.save(folder / "b.npy", poses[4:7])
    monkeypatch.chdir(tmp_path)
    sources = open_sources(["data/a.npy", "./data/../data/a.npy", "data"])
    assert [s.path for s in sources] == ["data/a.npy", "data/b.npy"]
    assert sources[0].notes == [
        "./data/../data/a.npy: the same as data/a.npy; read once",
        "data/a.npy: given more than once; read once",  # (the folder's own a.npy)
    ]
    assert sum(c.joints.shape[0] for s in sources for c in s.chunks()) == 7
    copy = tmp_path / "copy.npy"  # another file with the same bytes is another input
    copy.write_bytes((folder / "a.npy").read_bytes())
    assert len(open_sources(["data/a.npy", str(copy)])) == 2


def test_a_folder_input_passes_over_bmc_calibs_own_outputs(tmp_path, poses) -> None:
    """A data folder that also holds the bundle fitted on it and a features archive: both
    are passed over (each made the whole run fail), and naming one as input still refuses."""
    from bmc_calib import features
    from bmc_calib.bundle import write_bundle
    from bmc_calib.fit import FitOptions, fit_limits

    folder = tmp_path / "data"
    folder.mkdir()
    np.save(folder / "hands.npy", poses)
    limits = fit_limits(open_sources([str(folder / "hands.npy")]), FitOptions())
    write_bundle(limits, folder / "limits.h5")
    features.write_features(open_sources([str(folder / "hands.npy")]), folder / "f.npz", "npz")
    h5 = folder / "more.h5"  # a pose file of the same container stays an input
    with h5py.File(h5, "w") as fh:
        fh["joints"] = poses[:3]
    sources = open_sources([str(folder)])
    assert [os.path.basename(s.path) for s in sources] == ["hands.npy", "more.h5"]
    with pytest.raises(BadInputError, match="limits bundle, not pose data"):
        open_sources([str(folder / "limits.h5")])


def test_format_dexycb_on_another_kind_of_file_names_the_file(tmp_path, poses) -> None:
    path = tmp_path / "hands.npy"
    np.save(path, poses)
    with pytest.raises(BadInputError) as exc:
        open_sources([str(path)], format="dexycb")
    assert str(exc.value) == f"{path}: not a DexYCB labels_*.npz file"


def test_open_sources_takes_one_path_or_several_of_str_or_path(tmp_path, poses) -> None:
    """A bare ``str`` was iterated character by character (``"/…"`` walked the whole file
    system from ``/``), a ``Path`` failed inside a reader's detection."""
    path = tmp_path / "hands.npy"
    np.save(path, poses)
    for given in (str(path), path, [path], (str(path),)):
        assert [s.path for s in open_sources(given)] == [str(path)]


def test_a_dataset_folder_and_a_file_or_folder_inside_it_are_read_once(tmp_path, poses) -> None:
    """A dataset folder is one source reading many files: a file or subfolder inside it,
    given as well (in either order), is read through the folder once, with a note (the
    path-only check missed this: F-PHAB Subject_1 plus one of its files read 30 poses of 24)."""
    base = write_fpha(tmp_path, poses)
    one = base / "Subject_2" / "open_juice_bottle" / "1" / "skeleton.txt"
    subject = base / "Subject_3"
    for order in ([str(one), str(base), str(subject)], [str(base), str(subject), str(one)]):
        sources = open_sources(order)
        assert [s.path for s in sources] == [str(base)]
        assert sum(c.joints.shape[0] for c in sources[0].chunks()) == len(poses)
        assert sorted(sources[0].notes) == sorted(
            f"{p}: read already through {base}; read once" for p in (one, subject)
        )
    # two folders that share no pose file are two sources
    assert len(open_sources([str(base / "Subject_1"), str(subject)])) == 2
