"""What BMCLoss costs real hands of an unseen person, and what it costs impossible ones.

Leave-one-person-out on a folder of per-person files (default ``../shared/data/dexycb``,
DexYCB, 7 people): fit limits on the other people (default ``fit`` settings), then evaluate
:class:`bmc_calib.torch.BMCLoss` (float64, ``reduction="none"``, default weights) on

- the held-out person's real annotated poses (mirrored to right hands as the files say), and
- the same poses with each of the five impossible edits of :mod:`bmc_calib.edits` (MCP bent
  90° back, PIP 60° sideways, DIP 80° back, a middle phalanx ×1.6, a mirrored finger),
  rebuilt as joints by :func:`bmc_calib.synthetic.forward_kinematics` from the real palm and
  the edited angles and lengths (only poses an edit applies to).

for four loss settings: the hinge at the limit or at the stored tolerance
(``use_tolerance``), and the joint-angle penalty linear or squared (``hull_penalty``).
Prints, per setting and term, the mean per-pose loss over the held-out people (mean of the
seven people's means), the share of real poses with a non-zero loss, and the mean loss of
each edit; the ratio edit / real says how well the loss separates them.

    python benchmarks/bench_loss_generalization.py             # the table (about 15 s)
    python benchmarks/bench_loss_generalization.py --json out.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_generalization import DEFAULT_DATA, load  # noqa: E402

from bmc_calib import edits, kinematics, skeleton, synthetic  # noqa: E402
from bmc_calib.fit import FitOptions, fit_limits  # noqa: E402
from bmc_calib.formats import open_sources  # noqa: E402
from bmc_calib.torch import TERMS, BMCLoss  # noqa: E402

SETTINGS: tuple[tuple[bool, str], ...] = (
    (False, "linear"), (True, "linear"), (False, "squared"), (True, "squared"),
)  # fmt: skip


def rebuild(joints: np.ndarray, feats: kinematics.Features) -> np.ndarray:
    """Joints ``(N, 21, 3)`` with the palm of ``joints`` (normalised) and the finger angles
    and lengths of ``feats`` (forward kinematics; equals the normalised input when ``feats``
    are its own features)."""
    normal = kinematics.normalize(joints)
    roots = normal[:, 1::4] - normal[:, :1]  # (N, 5, 3): wrist → CMC / MCP
    lengths = feats.bone_length[:, skeleton.ANGLE_BONES]
    return synthetic.forward_kinematics(roots, feats.flexion_abduction, lengths)


def per_pose_terms(module: BMCLoss, joints: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        _, terms = module(torch.as_tensor(joints))
    return {name: terms[name].numpy() for name in TERMS}


def evaluate(held: str, train: list[str], seed: int) -> dict[str, object]:
    limits = fit_limits(open_sources(train), FitOptions())
    joints, _ = load(held)
    feats = kinematics.compute_features(joints, limits.normalization)
    keep = ~feats.degenerate
    joints, feats = joints[keep], kinematics.compute_features(joints[keep])
    cases = {"real": joints}
    for i, kind in enumerate(edits.EDIT_KINDS):
        edited = edits.apply_edit(feats, kind, seed=seed + i)
        cases[kind] = rebuild(joints, edited.features)[edited.applies]
    row: dict[str, object] = {"person": os.path.basename(held), "poses": len(joints)}
    for use_tolerance, penalty in SETTINGS:
        module = BMCLoss(limits, reduction="none", use_tolerance=use_tolerance,
                         hull_penalty=penalty)  # fmt: skip
        key = f"{'tolerance' if use_tolerance else 'limit'}/{penalty}"
        for case, case_joints in cases.items():
            terms = per_pose_terms(module, case_joints)
            total = sum(terms.values())
            row[f"{key}/{case}/total"] = float(total.mean())
            row[f"{key}/{case}/nonzero"] = float((total > 0).mean())
            for name, value in terms.items():
                row[f"{key}/{case}/{name}"] = float(value.mean())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=DEFAULT_DATA)
    parser.add_argument("--json", help="also write the per-person figures here")
    args = parser.parse_args(argv)
    files = sorted(glob.glob(os.path.join(args.data, "*.npz")))
    if len(files) < 3:
        print(f"need per-person files in {args.data}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = []
    for k, held in enumerate(files):
        rows.append(evaluate(held, [f for f in files if f != held], seed=100 * k))
        print(f"  {rows[-1]['person']}: {rows[-1]['poses']} poses", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if "/" in k}
    cases = ["real", *edits.EDIT_KINDS]
    print(f"\n{len(rows)} held-out people, {time.perf_counter() - t0:.0f} s. Mean per-pose "
          "loss (mean over people), default weights; 'real > 0' = share of real poses "
          "with any loss.\n")  # fmt: skip
    print("| hinge | hull penalty | term | real | real > 0 | " + " | ".join(cases[1:]) + " |")
    print("|---|---|---|" + "---:|" * (len(cases) + 1))
    for use_tolerance, penalty in SETTINGS:
        key = f"{'tolerance' if use_tolerance else 'limit'}/{penalty}"
        for name in (*TERMS, "total"):
            cells = [f"{mean[f'{key}/{c}/{name}']:.5f}" for c in cases]
            share = f"{100 * mean[f'{key}/real/nonzero']:.1f} %" if name == "total" else ""
            print(f"| {key.split('/')[0]} | {penalty} | {name} | {cells[0]} | {share} | "
                  + " | ".join(cells[1:]) + " |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"people": rows, "mean": mean}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
