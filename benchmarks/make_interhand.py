"""Write a synthetic file in the InterHand2.6M ``*_joint_3d.json`` layout (for benchmarks).

    python benchmarks/make_interhand.py OUT.json --hands 1000000

Layout as the real annotation (``../shared/formats.md`` §8): ``{capture: {frame: {world_coord
(42 × [x, y, z]) mm, joint_valid (42 × [0/1]), hand_type, hand_type_valid}}}``, rows 0–20
the right hand and 21–41 the left, each in the ``interhand`` layout (tips first, wrist
last). Frames are 60 % ``interacting`` (two hands), 20 % ``right``, 20 % ``left``; about 2 %
of the hands have one invalid joint. Coordinates have 4 decimals (the real files carry
about as many significant digits). Poses come from :mod:`bmc_calib.synthetic`, one subject
per capture. Written capture by capture with ``orjson`` when installed (else ``json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bmc_calib import skeleton, synthetic

FRAMES_PER_CAPTURE = 100_000


def _dumps(obj: object) -> bytes:
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a core dependency
        return json.dumps(obj, separators=(",", ":")).encode()
    return orjson.dumps(obj)


def capture_entries(subject: synthetic.Subject, frames: int, first: int, seed: int) -> dict:
    """``{frame id: entry}`` of one capture (``frames`` frames)."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=frames, p=[0.6, 0.2, 0.2])  # 0 interacting, 1 right, 2 left
    poses = synthetic.generate(subject, 2 * frames, seed=seed, noise_mm=1.0).joints
    right = skeleton.INTERHAND.from_canonical(poses[:frames])
    left = skeleton.INTERHAND.from_canonical(poses[frames:] * np.array([-1.0, 1.0, 1.0]))
    world = np.round(np.concatenate([right, left], axis=1), 4)  # (n, 42, 3) mm
    valid = np.ones((frames, 42, 1), np.int64)
    valid[kind == 2, :21] = 0
    valid[kind == 1, 21:] = 0
    bad = rng.random(frames) < 0.02
    valid[bad, rng.integers(0, 42, size=int(bad.sum()))] = 0
    names = np.array(["interacting", "right", "left"])[kind]
    world_lists, valid_lists = world.tolist(), valid.tolist()
    return {
        str(first + i): {
            "world_coord": world_lists[i],
            "joint_valid": valid_lists[i],
            "hand_type": str(names[i]),
            "hand_type_valid": 1,
        }
        for i in range(frames)
    }


def write(path: str | Path, hands: int, seed: int = 0) -> int:
    """Write about ``hands`` hands (1.6 per frame on average); returns the frames written."""
    frames = max(1, round(hands / 1.6))
    captures = max(1, -(-frames // FRAMES_PER_CAPTURE))
    subjects = synthetic.make_subjects(captures, seed=seed)
    done = 0
    with open(path, "wb") as fh:
        fh.write(b"{")
        for c in range(captures):
            n = min(FRAMES_PER_CAPTURE, frames - done)
            body = _dumps(capture_entries(subjects[c], n, done, seed + c))
            fh.write((b"," if c else b"") + _dumps(str(c)) + b":" + body)
            done += n
        fh.write(b"}")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--hands", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    frames = write(args.output, args.hands, args.seed)
    print(f"wrote {frames} frames to {args.output}")


if __name__ == "__main__":
    main()
