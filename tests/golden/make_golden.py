"""How the golden bundles were made (documentation; do not re-run casually).

``limits-v1.0.h5`` was written by the encoding-1.0 writer from :func:`golden_limits`;
``limits-v1.2.h5`` (this script today) holds the same limits plus the 1.1 dataset
``bone_length/within_person`` and the 1.2 ``/attribute_digest``.

Each golden bundle freezes its encoding as released: ``tests/test_bundle.py`` reads the committed
file and checks literal numbers in it, so a reader change that breaks old bundles fails there.
Regenerating the file would hide exactly that, so this script refuses to overwrite it unless
``--force`` is given; only do that when the golden file itself was wrong, never to make a
failing test pass. A new encoding version gets a new golden file next to this one.

All values are exact binary fractions (or literals the test repeats), so equality is exact.

Run from the repository root: ``python tests/golden/make_golden.py [--force]``.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from bmc_calib import skeleton
from bmc_calib.bundle import write_bundle
from bmc_calib.limits import Interval, JointAngleLimits, Limits, Provenance, SourceRecord

GOLDEN = Path(__file__).with_name("limits-v1.2.h5")


def _polygon(vertex_count: int, center: float, radius: float) -> np.ndarray:
    """A counter-clockwise regular polygon, rounded to multiples of 1/1024."""
    t = np.linspace(0.0, 2.0 * np.pi, vertex_count, endpoint=False)
    points = np.stack([center + radius * np.cos(t), 0.25 * radius * np.sin(t)], axis=1)
    return np.round(points * 1024.0) / 1024.0


def golden_limits() -> Limits:
    """The limits stored in the golden bundle."""
    bone_min = 0.25 + np.arange(20) / 64.0
    angle_centers = (np.arange(15) - 7) / 8.0
    hulls = [_polygon(3 + a % 4, angle_centers[a], 0.5) for a in range(15)]
    hulls[0] = np.array([[-1.5, -0.25], [0.5, -0.25], [0.5, 0.25], [-1.5, 0.25]])
    exact_hulls = [_polygon(8 + a, angle_centers[a], 0.625) for a in range(15)]
    box_min = np.stack([angle_centers - 0.5, np.full(15, -0.125)], axis=1)
    box_max = np.stack([angle_centers + 0.5, np.full(15, 0.125)], axis=1)
    return Limits(
        bone_length=Interval(skeleton.BONE_NAMES, bone_min, bone_min + 0.5, np.full(20, 0.125)),
        palm_curvature=Interval(
            skeleton.PALM_NAMES,
            [-0.5, -0.25, -0.125, -0.0625],
            [0.5, 0.25, 0.125, 0.0625],
            np.full(4, 0.03125),
        ),
        palm_angle=Interval(
            skeleton.PALM_NAMES, [0.1, 0.05, 0.05, 0.1], [0.9, 0.4, 0.3, 0.5], np.full(4, 0.05)
        ),
        joint_angle=JointAngleLimits(
            names=skeleton.ANGLE_NAMES,
            flexion_center=angle_centers,
            hulls=hulls,
            coverage=np.full(15, 0.999),
            area=np.arange(1, 16) / 32.0,
            tolerance=np.full(15, 0.0625),
            box_min=box_min,
            box_max=box_max,
            exact_hulls=exact_hulls,
            rdp_hulls=None,
        ),
        coverage=0.999,
        provenance=Provenance(
            sources=[
                SourceRecord(
                    path="data/subject01.npy",
                    format="numpy",
                    sha256=hashlib.sha256(b"subject01").hexdigest(),
                    frames_read=1000,
                    frames_used=950,
                    frames_mirrored=0,
                    rejected={"degenerate": 2, "bone_length_outlier": 48},
                ),
                SourceRecord(
                    path="data/subject02_left.npy",
                    format="numpy",
                    sha256=hashlib.sha256(b"subject02").hexdigest(),
                    frames_read=800,
                    frames_used=790,
                    frames_mirrored=800,
                    rejected={"degenerate": 0, "bone_length_outlier": 10},
                ),
            ],
            parameters={
                "coverage": 0.999,
                "reject_glitches": True,
                "glitch_fraction": 0.5,
                "min_groups": 3,
                "rdp_epsilon": 0.01,
                "layout": "canonical",
            },
        ),
        statistics={
            "frames_used": 1740,
            "heldout_false_flag_rate": 0.015625,
            "tolerance_estimated": False,
            "grouping": "per-file",
            "group_frames": np.array([950, 790], dtype=np.int64),
            "group_names": np.array(["subject01", "subject02_left"]),
            "bone_length_median": bone_min + 0.25,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite the committed file")
    args = parser.parse_args()
    limits = golden_limits()
    limits.bone_length.within_person = np.full(20, 0.0625)  # encoding 1.1
    digest = write_bundle(limits, GOLDEN, force=args.force)
    print(f"wrote {GOLDEN} ({digest})")


if __name__ == "__main__":
    main()
