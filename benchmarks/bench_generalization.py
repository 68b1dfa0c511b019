"""Leave-one-person-out on real hands: false flags on an unseen person, impossible edits caught.

For each person of a folder of per-person files (default ``../shared/data/dexycb``, DexYCB,
7 people): fit limits on the other people with default settings (``bmc_calib.fit``), then
validate the held-out person's real poses against them, and the same poses with each
impossible edit of :mod:`bmc_calib.edits` (only poses that were plausible before the edit
count). The personal bone check groups poses by the reader's labels and the hand: on these
``.npz`` files, which give the reader no labels, one group per person and hand.

    python benchmarks/bench_generalization.py                   # the table, defaults
    python benchmarks/bench_generalization.py --sweep           # + trade-off curve PNG
    python benchmarks/bench_generalization.py --json out.json   # figures as JSON

Prints per person and mean / worst; ``--sweep`` refits for several tolerance quantiles and
person confidences and draws false flags against detection to ``docs/img/tradeoff.png``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bmc_calib import edits, personal  # noqa: E402
from bmc_calib.fit import FitOptions, fit_limits  # noqa: E402
from bmc_calib.formats import ReadOptions, open_sources  # noqa: E402
from bmc_calib.kinematics import compute_features, quick_bone_lengths  # noqa: E402
from bmc_calib.violations import FAMILIES, compute_violations, exceeded, tolerances  # noqa: E402

DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "dexycb")


def load(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Canonical right-hand joints ``(N, 21, 3)`` of one file and per-pose group labels."""
    joints, labels = [], []
    for src in open_sources([path], ReadOptions()):
        for chunk in src.chunks():
            joints.append(chunk.joints)
            side = np.zeros(len(chunk.joints), int) if chunk.mirrored is None else chunk.mirrored
            group = chunk.group if chunk.group is not None else np.full(len(chunk.joints), "")
            labels.append(np.char.add(np.asarray(group).astype(str), side.astype(str)))
    return np.concatenate(joints), np.concatenate(labels)


def flagged(feats, limits) -> dict[str, np.ndarray]:
    """Per family and overall, which poses exceed their tolerance."""
    over = exceeded(compute_violations(feats, limits), tolerances(limits))
    out = {f: over[f].any(axis=1) for f in FAMILIES}
    out["any"] = np.column_stack([out[f] for f in FAMILIES]).any(axis=1)
    return out


def evaluate(held: str, train: list[str], options: FitOptions, seed: int) -> dict[str, object]:
    limits = fit_limits(open_sources(train), options)
    joints, labels = load(held)
    feats = compute_features(joints, limits.normalization)
    real = flagged(feats, limits)
    _, ids = np.unique(labels, return_inverse=True)
    ids = ids.reshape(-1)
    lengths, valid = quick_bone_lengths(joints, limits.normalization)
    medians = personal.group_medians(lengths[valid], ids[valid], int(ids.max()) + 1)
    reference = medians[ids]
    allowed = personal.allowance(limits)
    own_real = personal.personal_violation(feats.bone_length, reference, allowed).max(axis=1) > 0
    row: dict[str, object] = {
        "person": os.path.basename(held),
        "poses": len(joints),
        "flagged": float(real["any"].mean()),
        **{f"flagged_{f}": float(real[f].mean()) for f in FAMILIES},
        "flagged_with_personal": float((real["any"] | own_real).mean()),
    }
    plausible = ~real["any"] & ~feats.degenerate
    for i, kind in enumerate(edits.EDIT_KINDS):
        e = edits.apply_edit(feats, kind, seed=seed + i)
        judged = e.applies & plausible
        hit = flagged(e.features, limits)["any"]
        row[f"caught_{kind}"] = float(hit[judged].mean())
        own = personal.personal_violation(e.features.bone_length, reference, allowed).max(axis=1)
        row[f"caught_{kind}_with_personal"] = float((hit | (own > 0))[judged].mean())
    return row


def leave_one_out(files: list[str], options: FitOptions, quiet: bool = False) -> list[dict]:
    rows = []
    for k, held in enumerate(files):
        t0 = time.perf_counter()
        rows.append(evaluate(held, [f for f in files if f != held], options, seed=100 * k))
        if not quiet:
            r = rows[-1]
            print(
                f"  {r['person']:<16} flagged {100 * r['flagged']:5.2f} % "
                f"(+personal {100 * r['flagged_with_personal']:5.2f} %)  "
                + "  ".join(f"{k[:8]} {100 * r[f'caught_{k}']:5.1f}" for k in edits.EDIT_KINDS)
                + f"  [{time.perf_counter() - t0:.1f} s]",
                flush=True,
            )
    return rows


def summarise(rows: list[dict]) -> dict[str, float]:
    keys = [k for k in rows[0] if k not in ("person", "poses")]
    out = {}
    for k in keys:
        v = np.asarray([r[k] for r in rows], dtype=float)
        out[f"{k}_mean"] = float(v.mean())
        out[f"{k}_{'max' if k.startswith('flagged') else 'min'}"] = float(
            v.max() if k.startswith("flagged") else v.min()
        )
    return out


def print_summary(s: dict[str, float]) -> None:
    print("\nheld-out real poses flagged (mean / worst person):")
    print(
        f"  all constraints      {100 * s['flagged_mean']:6.2f} % / {100 * s['flagged_max']:6.2f} %"
    )
    for f in FAMILIES:
        print(
            f"  {f:<20} {100 * s[f'flagged_{f}_mean']:6.2f} % / "
            f"{100 * s[f'flagged_{f}_max']:6.2f} %"
        )
    print(
        f"  with personal check  {100 * s['flagged_with_personal_mean']:6.2f} % / "
        f"{100 * s['flagged_with_personal_max']:6.2f} %"
    )
    print("impossible edits caught (mean / worst person), population limits | + personal check:")
    for k in edits.EDIT_KINDS:
        print(
            f"  {edits.EDIT_LABELS[k]:<34} {100 * s[f'caught_{k}_mean']:6.1f} % / "
            f"{100 * s[f'caught_{k}_min']:6.1f} %  | "
            f"{100 * s[f'caught_{k}_with_personal_mean']:6.1f} %"
            f" / {100 * s[f'caught_{k}_with_personal_min']:6.1f} %"
        )


def sweep(files: list[str], out_png: str) -> dict[str, list[dict]]:
    """Refit for several tolerance quantiles (joint angles) and person confidences (bones and
    palm), and draw false flags against detection for both knobs."""
    points = []
    for q in (0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999):
        s = summarise(leave_one_out(files, FitOptions(tolerance_quantile=q), quiet=True))
        detect = float(np.mean([s[f"caught_{k}_mean"] for k in edits.EDIT_KINDS]))
        points.append({"tolerance_quantile": q, "caught_mean": detect, **s})
        print(f"  tolerance quantile {q}: flagged {100 * s['flagged_mean']:.2f} % (worst "
              f"{100 * s['flagged_max']:.2f} %), edits caught {100 * detect:.1f} %",
              flush=True)  # fmt: skip
    people = []
    for gamma in (0.5, 0.8, 0.9, 0.99, 0.999):
        s = summarise(leave_one_out(files, FitOptions(person_confidence=gamma), quiet=True))
        people.append({"person_confidence": gamma, **s})
        print(f"  person confidence {gamma}: bone/palm flagged "
              f"{100 * (s['flagged_bone_length_mean'] + s['flagged_palm_curvature_mean'] + s['flagged_palm_angle_mean']):.2f} %, "  # noqa: E501
              f"phalanx x 1.6 caught {100 * s['caught_middle_phalanx_1_6_mean']:.1f} %",
              flush=True)  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for kind in edits.EDIT_KINDS:
        ax.plot([100 * p["flagged_mean"] for p in points],
                [100 * p[f"caught_{kind}_mean"] for p in points], marker="o", ms=3,
                label=edits.EDIT_LABELS[kind])  # fmt: skip
    for p in points:
        xy = (100 * p["flagged_mean"], 100 * p["caught_mean"])
        ax.annotate(f"q={p['tolerance_quantile']}", xy, fontsize=6, alpha=0.7)
    ax.plot([100 * p["flagged_mean"] for p in points], [100 * p["caught_mean"] for p in points],
            "k--", lw=1, label="mean of the five")  # fmt: skip
    ax.set_xlabel("real poses of an unseen person flagged (%, mean over people)")
    ax.set_ylabel("impossible edits caught (%)")
    ax.set_title("joint angles: --tolerance-quantile", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    flags = [100 * (p["flagged_bone_length_mean"] + p["flagged_palm_curvature_mean"]
                    + p["flagged_palm_angle_mean"]) for p in people]  # fmt: skip
    caught = [100 * p["caught_middle_phalanx_1_6_mean"] for p in people]
    bx.plot(flags, caught, marker="o", color="tab:red", label="middle phalanx × 1.6")
    for p, x, y in zip(people, flags, caught, strict=True):
        bx.annotate(f"γ={p['person_confidence']}", (x, y), fontsize=6, alpha=0.7)
    bx.set_xlabel("real poses flagged by bone / palm items (%, mean over people)")
    bx.set_ylabel("caught by the population limits (%)")
    bx.set_title("bone lengths and palm: --person-confidence", fontsize=9)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7, loc="lower right")
    fig.suptitle("Leave-one-person-out on DexYCB (7 people), limits refitted each time", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_png), exist_ok=True)
    fig.savefig(out_png)
    print(f"wrote {out_png}")
    return {"tolerance_quantile": points, "person_confidence": people}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=DEFAULT_DATA, help="folder of per-person files")
    parser.add_argument("--sweep", action="store_true", help="also sweep and draw the trade-off")
    parser.add_argument("--png", default=os.path.join(ROOT, "docs", "img", "tradeoff.png"))
    parser.add_argument("--json", help="write all figures to this JSON file")
    args = parser.parse_args(argv)
    files = sorted(
        glob.glob(os.path.join(args.data, "*.npz")) + glob.glob(os.path.join(args.data, "*.npy"))
    )
    if len(files) < 3:
        print(f"{args.data}: need at least 3 per-person files", file=sys.stderr)
        return 2
    print(f"leave-one-person-out over {len(files)} files in {args.data} (default fit options)")
    rows = leave_one_out(files, FitOptions())
    s = summarise(rows)
    print_summary(s)
    result: dict[str, object] = {"per_person": rows, "summary": s}
    if args.sweep:
        print("\nsweep:")
        result["sweep"] = sweep(files, args.png)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
