"""JSON datasets: FreiHAND, InterHand2.6M and MediaPipe world-landmark exports.

Facts from ``formats.md`` (§2, §8, §11); output is canonical right hands ``(n, 21, 3)`` in
the dataset's unit.

- FreiHAND ``*_xyz.json``: a list ``(N, 21, 3)``, metres, camera frame, canonical order,
  right hands only. Streamed item by item.
- InterHand2.6M ``*_joint_3d.json``: ``{capture: {frame: {world_coord (42, 3),
  joint_valid (42, 1), hand_type, hand_type_valid}}}``, millimetres, world frame; rows 0–20
  the right hand, 21–41 the left, each in layout ``interhand`` (tips first, wrist last). A
  hand is read when ``hand_type`` names it (``interacting`` = both); it is dropped as
  ``hand_type_invalid`` when ``hand_type_valid`` is false, as ``invalid_flag`` when any of
  its 21 ``joint_valid`` flags is 0 (this includes the official rule that an invalid wrist
  invalidates the hand). Left hands are mirrored; ``Chunk.group`` = ``Capture<id>``. The
  file is decoded record by record (:func:`bmc_calib.formats._io.iter_json_records`): memory
  holds a few thousand frames, never the document.
- MediaPipe world landmarks exported as JSON: hands of 21 ``{x, y, z}`` landmarks (metres,
  hand-centred) with a handedness label "Left"/"Right". Which hand a label means depends on
  the API generation and on whether the image was mirrored (``formats.md`` §11): format
  ``mediapipe`` reads the label as the hand's geometry (Tasks API; "Left" is mirrored),
  ``mediapipe-swapped`` reads it the other way (legacy Solutions API on non-mirrored
  images; "Right" is mirrored). ``--hand`` replaces the labels altogether.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from bmc_calib import skeleton
from bmc_calib.errors import BadInputError
from bmc_calib.formats import _io
from bmc_calib.formats.base import (
    SCORE_CONTENT,
    SCORE_NAME,
    Chunk,
    Reader,
    ReadOptions,
    Source,
    SourceStats,
    make_chunk,
)
from bmc_calib.formats.generic import pose_array


class _JsonDataset(Reader):
    suffixes = (".json",)
    hand_option = True

    def open(self, path: str, options: ReadOptions) -> Source:
        if os.path.isdir(path):
            raise BadInputError(f"{path}: format {self.name} reads files, not folders")
        return self.file_source(path, options, self.chunks)

    def chunks(
        self, path: str, layout: skeleton.Layout, options: ReadOptions, stats: SourceStats
    ) -> Iterator[Chunk]:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- FreiHAND
class FreiHandReader(_JsonDataset):
    name = "freihand"
    description = "FreiHAND training_xyz.json / evaluation_xyz.json"
    layout = "canonical"
    unit = "m"
    handedness = "right only"
    expected_files = "{training,evaluation}_xyz.json (list of N × 21 × 3), or the dataset root"
    example = "bmc-calib fit FreiHAND_pub_v2/training_xyz.json -o limits.h5"

    def detect(self, path: str) -> int:
        return SCORE_NAME if path.lower().endswith("_xyz.json") and os.path.isfile(path) else 0

    def chunks(
        self, path: str, layout: skeleton.Layout, options: ReadOptions, stats: SourceStats
    ) -> Iterator[Chunk]:
        items = _io.iter_json_array(_io.read_text(path), path)
        total = 0
        while batch := list(itertools.islice(items, options.chunk_frames)):
            arr = pose_array(path, _io.float_array(batch, path, "xyz entries"))
            total += len(batch)
            if chunk := make_chunk(arr, layout, stats, options):
                yield chunk
        if total == 0:
            raise BadInputError(f"{path}: contains no poses (empty list)")


# --------------------------------------------------------------------------- InterHand2.6M
class InterHandReader(_JsonDataset):
    name = "interhand"
    description = "InterHand2.6M *_joint_3d.json (both hands, joint_valid, hand_type)"
    layout = "interhand"
    unit = "mm"
    handedness = "both: rows 0-20 right, 21-41 left (mirrored); --side keeps one"
    expected_files = "annotations/<split>/InterHand2.6M_<split>_joint_3d.json, or that folder"
    groups = "capture (Capture<id>)"
    example = "bmc-calib fit annotations/train/InterHand2.6M_train_joint_3d.json -o limits.h5"
    hand_option = False

    def detect(self, path: str) -> int:
        if not os.path.isfile(path) or not path.lower().endswith(".json"):
            return 0
        if path.lower().endswith("_joint_3d.json"):
            return SCORE_NAME
        text = _io.head(path, 4096)
        top_object = text.lstrip("\ufeff \t\r\n").startswith("{")
        return SCORE_CONTENT if top_object and '"world_coord"' in text else 0

    def chunks(
        self, path: str, layout: skeleton.Layout, options: ReadOptions, stats: SourceStats
    ) -> Iterator[Chunk]:
        n_frames = 0
        size = max(1, min(options.chunk_frames, _io.JSON_RECORDS))

        def convert(records: list[tuple[str, str, Any]]) -> Iterator[Chunk]:
            nonlocal n_frames
            n_frames += len(records)
            return self._hands(path, records, layout, options, stats)

        yield from _io.iter_json_records(path, size, convert)
        if n_frames == 0:
            raise BadInputError(f"{path}: contains no frames")

    @staticmethod
    def _hands(
        path: str,
        records: list[tuple[str, str, Any]],
        layout: skeleton.Layout,
        options: ReadOptions,
        stats: SourceStats,
    ) -> Iterator[Chunk]:
        """Chunks of the hands of ``(capture, frame, entry)`` records."""
        coords, valid, types, type_valid, captures = [], [], [], [], []
        for capture, frame, entry in records:
            if not isinstance(entry, dict) or "world_coord" not in entry:
                raise BadInputError(
                    f"{path}: capture {capture} frame {frame}: no 'world_coord' entry"
                )
            coords.append(entry["world_coord"])
            valid.append(entry.get("joint_valid", 1))
            types.append(str(entry.get("hand_type", "interacting")).lower())
            type_valid.append(entry.get("hand_type_valid", True))
            captures.append(capture)
        entries = records
        capture = captures[0] if len(set(captures)) == 1 else "/".join(sorted(set(captures)))
        world = _io.nested_floats(coords, (42, 3))
        if world is None:
            world = _io.float_array(coords, path, "world_coord", shared=False)
        if world.shape[1:] != (42, 3):
            raise BadInputError(
                f"{path}: capture {capture}: world_coord must be 42 × [x, y, z] "
                f"(both hands), found shape {world.shape[1:]}"
            )
        flags = _io.nested_floats(valid, (42, 1))
        if flags is None:
            flags = _io.float_array(valid, path, "joint_valid", shared=False)
        flags = flags.reshape(len(entries), -1)
        if flags.shape[1] not in (1, 42):
            raise BadInputError(
                f"{path}: capture {capture}: joint_valid must hold 42 flags, found {flags.shape[1]}"
            )
        flags = np.broadcast_to(flags, (len(entries), 42)) != 0
        types_arr = np.asarray(types)
        unknown = ~np.isin(types_arr, ("right", "left", "interacting"))
        if unknown.any():
            bad = types[int(np.flatnonzero(unknown)[0])]
            raise BadInputError(
                f"{path}: capture {capture}: hand_type must be right, left or interacting, "
                f"found {bad!r}"
            )
        trusted = np.asarray([bool(v) for v in type_valid])
        # per frame: right then left (n, 2, 21, 3); a hand exists when hand_type names it
        hands = np.stack([world[:, :21], world[:, 21:]], axis=1)
        hand_valid = np.stack([flags[:, :21].all(1), flags[:, 21:].all(1)], axis=1)
        named = np.stack([types_arr != "left", types_arr != "right"], axis=1)
        is_left = np.broadcast_to(np.array([False, True]), named.shape)
        trusted2 = np.broadcast_to(trusted[:, None], named.shape)
        keep = named.reshape(-1)
        labels = np.char.add("Capture", np.asarray(captures, dtype=str))
        chunk = make_chunk(
            hands.reshape(-1, 21, 3)[keep],
            layout,
            stats,
            options,
            is_left=is_left.reshape(-1)[keep],
            group=np.repeat(labels, 2)[keep],
            checks=(
                ("hand_type_invalid", trusted2.reshape(-1)[keep]),
                ("invalid_flag", hand_valid.reshape(-1)[keep]),
            ),
        )
        if chunk is not None:
            yield chunk


# --------------------------------------------------------------------------- MediaPipe
#: Keys of a hand's landmarks and of its handedness in MediaPipe exports (both APIs).
_LANDMARK_KEYS = (
    "world_landmarks",
    "hand_world_landmarks",
    "multi_hand_world_landmarks",
    "worldLandmarks",
    "landmarks",
)
_HANDEDNESS_KEYS = ("handedness", "multi_handedness", "handednesses", "label")
_CONTAINER_KEYS = ("hands", "frames", "results")


class MediaPipeReader(_JsonDataset):
    name = "mediapipe"
    description = "MediaPipe hand world landmarks exported as JSON, with handedness labels"
    layout = "canonical"
    unit = "m"
    handedness = (
        "both, from the label: 'Left' mirrored (label = the hand's geometry, Tasks API); "
        "see mediapipe-swapped"
    )
    expected_files = (
        "*.json: hands {'handedness': 'Left', 'world_landmarks': [{x, y, z} × 21]}, lists "
        "of them, or Tasks/Solutions API result dumps"
    )
    example = "bmc-calib fit hands_mediapipe.json -o limits.h5"
    #: the label that marks a left hand geometry
    left_label = "left"

    def detect(self, path: str) -> int:
        if not os.path.isfile(path) or not path.lower().endswith(".json"):
            return 0
        text = _io.head(path)
        return SCORE_CONTENT if "orld_landmarks" in text or "orldLandmarks" in text else 0

    def chunks(
        self, path: str, layout: skeleton.Layout, options: ReadOptions, stats: SourceStats
    ) -> Iterator[Chunk]:
        hands = list(_walk_hands(path, _io.load_json(_io.read_text(path), path)))
        if not hands:
            raise BadInputError(
                f"{path}: no MediaPipe hands found (expected world_landmarks with 21 "
                "{x, y, z} entries and a handedness label)"
            )
        for start in range(0, len(hands), options.chunk_frames):
            part = hands[start : start + options.chunk_frames]
            joints = _io.float_array([h[0] for h in part], path, "landmarks")
            labels = [h[1] for h in part]
            if options.hand is None and None in labels:
                raise BadInputError(
                    f"{path}: hand {start + labels.index(None)} has no handedness label "
                    "'Left'/'Right' (give --hand to set it for every hand)"
                )
            is_left = np.asarray([lab == self.left_label for lab in labels])
            if chunk := make_chunk(joints, layout, stats, options, is_left=is_left):
                yield chunk


class MediaPipeSwappedReader(MediaPipeReader):
    name = "mediapipe-swapped"
    description = "MediaPipe JSON whose handedness labels are swapped (legacy API, unmirrored)"
    handedness = (
        "both, from the label: 'Right' mirrored (legacy Solutions API on non-mirrored images)"
    )
    example = "bmc-calib fit hands_mediapipe.json --format mediapipe-swapped -o limits.h5"
    left_label = "right"

    def detect(self, path: str) -> int:
        return 0  # only by --format mediapipe-swapped


def _landmarks(path: str, value: Any) -> list[list[Any]]:
    if isinstance(value, dict) and "landmark" in value:  # protobuf MessageToDict
        value = value["landmark"]
    if not isinstance(value, list) or len(value) != skeleton.NUM_JOINTS:
        n = len(value) if isinstance(value, list) else type(value).__name__
        raise BadInputError(f"{path}: a hand must have 21 landmarks, found {n}")
    out = []
    for lm in value:
        if isinstance(lm, dict):
            try:
                out.append([lm["x"], lm["y"], lm["z"]])
            except KeyError:
                raise BadInputError(f"{path}: a landmark lacks x, y or z") from None
        else:
            out.append(lm)
    return out


def _label(path: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return _label(path, value[0]) if value else None
    if isinstance(value, dict):
        for key in ("classification", "label", "category_name", "categoryName", "display_name"):
            if key in value:
                return _label(path, value[key])
        return None
    text = str(value).strip().lower()
    if text not in ("left", "right"):
        raise BadInputError(f"{path}: handedness must be 'Left' or 'Right', found {value!r}")
    return text


def _is_hand_list(value: Any) -> bool:
    """A list of hands (each a list of 21 landmarks or a {'landmark': …}) vs one hand."""
    if not isinstance(value, list) or not value:
        return False
    first = value[0]
    return (isinstance(first, list) and len(first) == 21) or (
        isinstance(first, dict) and "landmark" in first
    )


def _walk_hands(path: str, obj: Any, depth: int = 0) -> Iterator[tuple[list[Any], str | None]]:
    """``(21 landmarks, label)`` of every hand in a MediaPipe export."""
    if depth > 8:
        raise BadInputError(f"{path}: JSON nested too deeply for a MediaPipe export")
    if isinstance(obj, list):
        for item in obj:
            yield from _walk_hands(path, item, depth + 1)
        return
    if obj is None or obj == {}:  # a frame without hands (the Solutions API returns None)
        return
    if not isinstance(obj, dict):
        raise BadInputError(f"{path}: expected MediaPipe hand objects, found {type(obj).__name__}")
    key = next((k for k in _LANDMARK_KEYS if k in obj), None)
    if key is None:
        inner = next((k for k in _CONTAINER_KEYS if k in obj), None)
        if inner is None:
            raise BadInputError(
                f"{path}: an object has no world_landmarks (keys: "
                f"{', '.join(map(str, list(obj)[:8])) or 'none'})"
            )
        yield from _walk_hands(path, obj[inner], depth + 1)
        return
    value = obj[key]
    label = next((obj[k] for k in _HANDEDNESS_KEYS if k in obj), None)
    if value is None or (isinstance(value, list) and not value):
        return  # a frame without hands
    if _is_hand_list(value):  # several hands of one frame, labels in the same order
        labels = label if isinstance(label, list) else [label] * len(value)
        if len(labels) != len(value):
            raise BadInputError(f"{path}: {len(value)} hands but {len(labels)} handedness labels")
        for hand, lab in zip(value, labels, strict=True):
            yield _landmarks(path, hand), _label(path, lab)
    else:
        yield _landmarks(path, value), _label(path, label)
