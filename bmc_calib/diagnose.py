"""Say when data and limits do not match, and what would match better.

When most poses break the same items the same way, the poses are usually fine and were read
wrongly: another joint order (``--layout``), left hands read as right (``--hand left``), or
another length unit under ``--normalization none``. :func:`validation_mismatch` names the
items and tries the alternatives on a sample of the poses; :func:`glitch_mismatch` does the
same for ``fit`` when many frames are rejected as glitches.

Shapes: ``sample`` ``(n, 21, 3)`` canonical right hands as the reader produced them (the
reader's layout applied, known left hands mirrored).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bmc_calib import skeleton
from bmc_calib.kinematics import compute_features
from bmc_calib.limits import Limits
from bmc_calib.violations import FAMILIES, compute_violations, exceeded, tolerances

#: validate diagnoses when at least this share of the sample is not plausible
MISMATCH_SHARE = 0.5
#: an item counts as systematic when at least this share of the poses break it
ITEM_SHARE = 0.5
#: fit diagnoses when at least this share of frames is rejected as glitches
GLITCH_SHARE = 0.1
#: an alternative is named when it flags at most this fraction of what the input flags
BETTER_BY = 0.25
#: inputs whose median reference bones differ by this factor are not in one unit (people
#: differ by well under 1.5x; units by 10x or 1000x)
SCALE_RATIO = 5.0
SAMPLE_POSES = 2000
#: ``(factor, guess, scale)`` tried on poses against a bundle fitted without normalisation
UNIT_FACTORS: tuple[tuple[str, str, float], ...] = (
    ("× 1000", "m → mm? ", 1000.0),
    ("× 10", "", 10.0),
    ("÷ 10", "", 0.1),
    ("÷ 1000", "mm → m? ", 0.001),
)


@dataclass
class Mismatch:
    """What a sample shows: its bad share, the systematic items, better readings."""

    share: float
    items: list[str] = field(default_factory=list)
    better: list[tuple[str, float]] = field(default_factory=list)
    #: the share of the sample that is degenerate (no measurable hand), part of ``share``
    degenerate: float = 0.0

    def message(self) -> str:
        """One line for people (the caller prefixes the file names)."""
        mostly_degenerate = self.degenerate >= self.share / 2
        if not mostly_degenerate:
            what = "implausible"
        elif self.degenerate >= self.share:
            what = "degenerate (no measurable hand)"
        else:
            what = f"implausible or degenerate ({100 * self.degenerate:.0f} % degenerate)"
        text = f"{100 * self.share:.0f} % of the poses are {what}"
        if self.items:
            text += f", most breaking the same items ({', '.join(self.items[:4])})"
        if self.better:
            name, share = self.better[0]
            text += f"; {name}, only {100 * share:.1f} % are"
        elif mostly_degenerate:
            text += (
                "; check that the files hold 3D joint positions (missing joints written as "
                "NaN or 0, another --layout)"
            )
        else:
            text += (
                "; the data and the limits do not match: check --layout, --hand left for "
                "left hands, the joint convention of the data the limits were fitted on"
            )
        return text


def _bad(sample: np.ndarray, limits: Limits) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    feats = compute_features(sample, limits.normalization)
    v = compute_violations(feats, limits)
    over = exceeded(v, tolerances(limits))
    bad = np.column_stack([over[f] for f in FAMILIES]).any(axis=1) | v.degenerate
    side = {
        "bone_length": feats.bone_length > limits.bone_length.max,
        "palm_curvature": feats.palm_curvature > limits.palm_curvature.max,
        "palm_angle": feats.palm_angle > limits.palm_angle.max,
    }
    return bad, {"over": over, "high": side, "degenerate": v.degenerate}


def _alternatives(sample: np.ndarray, layout: str) -> list[tuple[str, np.ndarray]]:
    """Other readings of the same frames: every other layout, and mirrored."""
    current = skeleton.get_layout(layout)
    raw = current.from_canonical(sample)
    out = [("read mirrored (left hands read as right? try --hand left)", skeleton.mirror(sample))]
    for name in skeleton.layout_names():
        other = skeleton.get_layout(name)
        if name == current.name or np.array_equal(other.perm, current.perm):
            continue
        out.append((f"read with --layout {name}", other.to_canonical(raw)))
    return out


def validation_mismatch(sample: np.ndarray, layout: str, limits: Limits) -> Mismatch | None:
    """A :class:`Mismatch` when most of ``sample`` is implausible against ``limits``."""
    if len(sample) == 0:
        return None
    bad, detail = _bad(sample, limits)
    share = float(bad.mean())
    if share < MISMATCH_SHARE:
        return None
    names = {
        "bone_length": skeleton.BONE_NAMES,
        "palm_curvature": tuple(f"curvature {n}" for n in skeleton.PALM_NAMES),
        "palm_angle": tuple(f"palm angle {n}" for n in skeleton.PALM_NAMES),
        "joint_angle": skeleton.ANGLE_NAMES,
    }
    found: list[tuple[float, str]] = []
    for family in FAMILIES:
        over = detail["over"][family]
        for k in range(over.shape[1]):
            rate = float(over[:, k].mean())
            if rate < ITEM_SHARE:
                continue
            label = names[family][k]
            if family in detail["high"]:
                high = float(detail["high"][family][over[:, k], k].mean())
                word = {"bone_length": ("too long", "too short")}.get(family, ("high", "low"))
                label += f" {word[0] if high >= 0.5 else word[1]}"
            found.append((rate, f"{label} {100 * rate:.0f} %"))
    found.sort(key=lambda x: -x[0])
    better = []
    candidates = _alternatives(sample, layout)
    if limits.normalization == "none":
        unit = "unit" if limits.length_unit == "unknown" else limits.length_unit
        candidates += [  # (validate reads poses as they are: the user converts them)
            (f"scaled {factor} ({guess}convert the poses to the bundle's {unit})", sample * f)
            for factor, guess, f in UNIT_FACTORS
        ]
    for name, alt in candidates:
        alt_share = float(_bad(alt, limits)[0].mean())
        if alt_share <= BETTER_BY * share:
            better.append((name, alt_share))
    better.sort(key=lambda x: x[1])
    degenerate = float(detail["degenerate"].mean())
    return Mismatch(share, [text for _, text in found], better, degenerate)


def _glitch_share(sample: np.ndarray, max_deviation: float) -> float:
    from bmc_calib.kinematics import quick_bone_lengths

    lengths, valid = quick_bone_lengths(sample)
    if not valid.any():
        return 1.0
    lengths = lengths[valid]
    ratio = lengths / np.maximum(np.median(lengths, axis=0), 1e-12)
    scale = np.median(ratio, axis=1, keepdims=True)
    ratio /= np.where(scale > 0, scale, 1.0)
    return float((np.abs(ratio - 1.0) > max_deviation).any(axis=1).mean())


def glitch_mismatch(sample: np.ndarray, layout: str, max_deviation: float) -> Mismatch | None:
    """A :class:`Mismatch` when fit's glitch rule would reject much of ``sample``."""
    if len(sample) == 0:
        return None
    share = _glitch_share(sample, max_deviation)
    if share < GLITCH_SHARE:
        return None
    better = []
    for name, alt in _alternatives(sample, layout)[1:]:  # mirroring keeps bone lengths
        alt_share = _glitch_share(alt, max_deviation)
        if alt_share <= BETTER_BY * share:
            better.append((name, alt_share))
    better.sort(key=lambda x: x[1])
    return Mismatch(share, [], better)


def scale_mismatch(sources: list, n: int = 200) -> str | None:
    """A line when the inputs' scales differ as units do (the median wrist → middle-MCP
    length of each input's first ``n`` frames), else None: under ``--normalization none``
    the inputs must share one unit, and nothing else catches a file in metres beside files
    in millimetres."""
    a, b = skeleton.REFERENCE_JOINTS
    scales = []
    for src in sources:
        sample, _ = first_frames([src], n)
        with np.errstate(invalid="ignore"):
            length = np.linalg.norm(sample[:, a] - sample[:, b], axis=1)
        length = length[np.isfinite(length) & (length > 0)]
        if len(length):
            scales.append((float(np.median(length)), src.path))
    if len(scales) < 2:
        return None
    (low, low_path), (high, high_path) = min(scales), max(scales)
    if high < SCALE_RATIO * low:
        return None
    return (
        f"the inputs' scales differ {high / low:.0f}x (median wrist–middle-MCP length "
        f"{high:.4g} in {high_path}, {low:.4g} in {low_path}): mixed units? Under "
        "--normalization none every input must be in the same unit"
    )


def first_frames(sources: list, n: int = SAMPLE_POSES) -> tuple[np.ndarray, str]:
    """Up to ``n`` canonical frames from the start of the sources, and the first's layout."""
    parts, taken = [], 0
    for src in sources:
        for chunk in src.chunks():
            parts.append(chunk.joints[: n - taken])
            taken += len(parts[-1])
            if taken >= n:
                break
        if taken >= n:
            break
    layout = sources[0].layout if sources else "canonical"
    empty = np.empty((0, skeleton.NUM_JOINTS, 3))
    return (np.concatenate(parts) if parts else empty), layout
