"""Write the synthetic sample data next to this script (see README.md in this folder).

Run from anywhere: ``python data_samples/make_samples.py``. Same numpy → bit-identical files.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from bmc_calib.synthetic import generate, make_subjects

HERE = Path(__file__).resolve().parent
SUBJECT_SEED = 0  # make_subjects(6, seed=0): subjects 1..5 equal make_subjects() defaults
POSES = 2000
LEFT_POSES = 1000
GLITCH_FRACTION = 0.03
LEFT_FRACTION = 0.3
NOISE_MM = 0.2  # annotation noise per coordinate: like the fingertip jitter of MANO-fitted data


def build() -> dict[str, dict[str, np.ndarray]]:
    """The arrays of every sample file, by file name (float32 joints in millimetres)."""
    subjects = make_subjects(6, seed=SUBJECT_SEED)
    out: dict[str, dict[str, np.ndarray]] = {}
    for i, subject in enumerate(subjects[:5], start=1):
        poses = generate(subject, POSES, seed=i, glitch_fraction=GLITCH_FRACTION, noise_mm=NOISE_MM)
        out[f"subject_{i:02d}.npy"] = {"joints": poses.joints.astype(np.float32)}
    poses = generate(
        subjects[5],
        LEFT_POSES,
        seed=6,
        glitch_fraction=GLITCH_FRACTION,
        left_fraction=LEFT_FRACTION,
        noise_mm=NOISE_MM,
    )
    out["subject_06_left.npz"] = {
        "joints": poses.joints.astype(np.float32),
        "is_left": poses.is_left.copy(),
    }
    return out


def main(out_dir: Path = HERE) -> None:
    for name, arrays in build().items():
        path = out_dir / name
        if name.endswith(".npy"):
            np.save(path, arrays["joints"])
        else:
            np.savez(path, **arrays)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        sys.stdout.write(f"{digest}  {name}\n")


if __name__ == "__main__":
    main()
