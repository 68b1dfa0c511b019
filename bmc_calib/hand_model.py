"""Real hands, summarised for the synthetic generator: proportions and joint placement.

:mod:`bmc_calib.synthetic` draws its people from the between-person spread of real hands
and places its joints the way real annotations do, so that synthetic samples and limits
fitted on real data agree the way real data does. The numbers come from the DexYCB joints
of 7 people (Chao et al., "DexYCB: A Benchmark for Capturing Hand Grasping of Objects",
CVPR 2021; MANO fits; CC BY-NC 4.0, non-commercial research use, which also applies to the
packaged ``data/hand_model.npz``) and are rebuilt, reproducibly, by::

    python -m bmc_calib.hand_model                 # from ../shared/data/dexycb
    python -m bmc_calib.hand_model --data DIR -o x.npz

What the file holds (millimetres, radians; ``H`` hands = people × sides):

- ``hands`` ``(H, 30)``: per hand the 5 root bones ``(5, 3)`` in the hand frame of
  :class:`bmc_calib.synthetic.Subject` (fingers along +y, back of the hand +z, thumb
  towards −x; the median over the hand's poses) followed by the 15 finger bone lengths by
  angle id (medians);
- ``angle_median`` ``(15, 2)``: per angle id the median (flexion, abduction) of all poses;
- ``angle_range`` ``(15, 2, 2)``: per angle id and component the 0.5 % and 99.5 %
  quantiles: where the synthetic angles are placed (:func:`bmc_calib.synthetic.place_angles`);
- ``source``: what the numbers were measured on.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from bmc_calib import skeleton
from bmc_calib.kinematics import compute_features

PACKAGED_NAME = "data/hand_model.npz"
SOURCE = (
    "DexYCB (Chao et al., CVPR 2021), 7 people x 2 hands, MANO-fitted joints; "
    "CC BY-NC 4.0 (non-commercial research use)"
)


@dataclass(frozen=True)
class HandModel:
    """See the module docstring; ``hands`` ``(H, 30)``, ``angle_median`` ``(15, 2)``."""

    hands: np.ndarray
    angle_median: np.ndarray
    source: str
    #: ``(15, 2, 2)`` per angle id and component the [0.5 %, 99.5 %] quantiles of all poses
    angle_range: np.ndarray | None = None

    @property
    def mean(self) -> np.ndarray:
        """``(30,)`` mean hand parameters."""
        return self.hands.mean(axis=0)


def hand_frame_roots(joints: np.ndarray) -> np.ndarray:
    """Root bones ``(n, 5, 3)`` of right hands ``(n, 21, 3)`` in the hand frame.

    ``y`` along wrist → middle MCP, ``z`` the back of the hand (``r_little × r_index``,
    made orthogonal to ``y``), ``x = y × z`` (the thumb lies towards −x).
    """
    j = np.asarray(joints, dtype=np.float64)
    roots = j[:, [1, 5, 9, 13, 17]] - j[:, :1]
    y = roots[:, 2] / np.linalg.norm(roots[:, 2], axis=-1, keepdims=True)
    z = np.cross(roots[:, 4], roots[:, 1])
    z -= np.sum(z * y, axis=-1, keepdims=True) * y
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    x = np.cross(y, z)
    frame = np.stack([x, y, z], axis=-2)  # (n, 3, 3) rows = axes
    return np.einsum("nij,nfj->nfi", frame, roots)


def measure(folder: str) -> HandModel:
    """Measure the hand model on a folder of per-person files (any readable format)."""
    from bmc_calib.formats import open_sources

    files = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".npz"))
    if not files:
        raise SystemExit(f"{folder}: no per-person .npz files")
    hands, angles = [], []
    for src in open_sources(files):
        joints, side = [], []
        for chunk in src.chunks():
            joints.append(chunk.joints)
            n = len(chunk.joints)
            side.append(np.zeros(n, bool) if chunk.mirrored is None else chunk.mirrored)
        j, s = np.concatenate(joints), np.concatenate(side)
        feats = compute_features(j)
        ok = ~feats.degenerate
        angles.append(feats.flexion_abduction[ok])
        for left in (False, True):
            rows = ok & (s == left)
            if rows.sum() < 10:
                continue
            roots = np.median(hand_frame_roots(j[rows]), axis=0)
            bones = j[rows][:, skeleton.BONE_CHILD] - j[rows][:, skeleton.BONE_PARENT]
            lengths = np.median(np.linalg.norm(bones, axis=-1), axis=0)[skeleton.ANGLE_BONES]
            hands.append(np.concatenate([roots.ravel(), lengths]))
    every = np.concatenate(angles)
    quantiles = np.moveaxis(np.quantile(every, [0.005, 0.995], axis=0), 0, -1)  # (15, 2, 2)
    return HandModel(np.asarray(hands), np.median(every, axis=0), SOURCE, quantiles)


@lru_cache(maxsize=1)
def packaged() -> HandModel:
    """The hand model shipped with the package."""
    with resources.as_file(resources.files("bmc_calib").joinpath(PACKAGED_NAME)) as path:
        with np.load(path) as data:
            return HandModel(
                np.array(data["hands"]),
                np.array(data["angle_median"]),
                str(data["source"]),
                np.array(data["angle_range"]),
            )


def write(model: HandModel, path: str) -> None:
    np.savez(
        path,
        hands=model.hands,
        angle_median=model.angle_median,
        angle_range=model.angle_range,
        source=model.source,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the packaged synthetic hand model.")
    parser.add_argument("--data", help="folder of per-person files (default ../shared/data/dexycb)")
    parser.add_argument("-o", "--output", help="where to write (default: the packaged file)")
    args = parser.parse_args(argv)
    from bmc_calib.default_bundle import repository_data_folder

    model = measure(args.data or repository_data_folder())
    if args.output is None:
        with resources.as_file(resources.files("bmc_calib").joinpath(PACKAGED_NAME)) as p:
            target = os.fspath(p)
    else:
        target = args.output
    write(model, target)
    sys.stdout.write(f"{len(model.hands)} hands -> {target}\n")


if __name__ == "__main__":  # pragma: no cover
    main()
