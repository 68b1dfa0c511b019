"""Fit biomechanical limits to poses (DESIGN §5).

Pipeline, two streaming passes over the sources (readers yield canonical right-hand chunks):

1. bone lengths only (:func:`bmc_calib.kinematics.quick_bone_lengths`): exact frame counts
   and each group's median bone lengths, for the glitch rule;
2. all features per chunk (:func:`bmc_calib.kinematics.features_into`); degenerate frames
   and glitches are dropped on the spot. Kept: the used frames' joint angles (float32, 120
   bytes a pose: every hull needs every point), the extreme values of each interval column
   (:class:`bmc_calib.quantiles.QuantileTails`, exact quantiles), and all features of an even
   stride of at most ``tolerance_max_poses`` used frames for the tolerances.

Then

- intervals (bone length, palm curvature, palm angle): the ``[(1−c)/2, 1−(1−c)/2]`` quantile
  range (plain min/max at ``c = 1``);
- joint-angle regions: per angle id a flexion centre (opposite the widest empty arc),
  flexion unwrapped around it, then :func:`bmc_calib.hulls.fit_hull` (exact hull → RDP →
  best-first greedy to coverage ``c``); plus the axis-aligned quantile box;
- tolerances by leave-one-group-out when there are at least 3 groups (see
  :func:`_leave_one_group_out`), else zero tolerances (validate then uses the fitted limits
  as they are; the statistics say so).

Glitch rule ``bone_length_outlier``: for each frame, each bone's length is divided by the
median of that bone over the frame's group (ratio ``r_k``); the frame's own scale is the
median of its 20 ratios. A frame is rejected when any ``r_k / scale`` differs from 1 by more
than ``glitch_max_deviation`` (default 0.5, i.e. a bone outside [0.5, 1.5] × its expected
length). Dividing by the frame's scale makes the rule independent of the normalisation, so a
glitch in the reference bone itself (which rescales every other bone) is caught too.

Units: as :mod:`bmc_calib.kinematics` (radians; lengths relative to the reference bone under
the default normalisation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bmc_calib import __version__, hulls, skeleton
from bmc_calib.errors import BadInputError, UsageError
from bmc_calib.formats import Chunk, Source
from bmc_calib.kinematics import (
    Features,
    check_normalization,
    concatenate,
    empty_features,
    features_into,
    quick_bone_lengths,
)
from bmc_calib.limits import Interval, JointAngleLimits, Limits, Provenance, SourceRecord
from bmc_calib.quantiles import QuantileTails
from bmc_calib.violations import FAMILIES, VERDICT_EPSILON, compute_violations

#: progress callback: (stage, done, total or None)
ProgressFn = Callable[[str, int, "int | None"], None]

GROUP_BY: tuple[str, ...] = ("file", "none", "label")
REJECTION_RULES: tuple[str, ...] = ("degenerate", "bone_length_outlier")
MIN_POSES = 10
MIN_GROUPS_FOR_TOLERANCE = 3
#: frames per input used for the glitch rule's group medians (evenly spaced)
MEDIAN_FRAMES = 20_000


@dataclass(frozen=True)
class FitOptions:
    """Every fit parameter; all of them are recorded in the bundle's provenance."""

    coverage: float = 0.999
    normalization: str = "reference-bone"
    group_by: str = "file"
    reject_glitches: bool = True
    glitch_max_deviation: float = 0.5
    rdp_epsilon: float = 0.005
    #: poses (evenly strided over all used frames) used by leave-one-group-out
    tolerance_max_poses: int = 100_000
    #: per-item quantile of held-out magnitudes taken as tolerance (None → coverage)
    tolerance_quantile: float | None = None
    keep_pipeline_hulls: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.coverage <= 1.0:
            raise UsageError(f"--coverage must be in (0, 1], got {self.coverage}")
        check_normalization(self.normalization)
        if self.group_by not in GROUP_BY:
            raise UsageError(f"--group-by must be one of {', '.join(GROUP_BY)}")
        if self.glitch_max_deviation <= 0:
            raise UsageError("the glitch deviation must be positive")
        if self.rdp_epsilon < 0:
            raise UsageError("the RDP epsilon must be >= 0")
        q = self.tolerance_quantile
        if q is not None and not 0.0 < q <= 1.0:
            raise UsageError("the tolerance quantile must be in (0, 1]")

    @property
    def quantile(self) -> float:
        return self.coverage if self.tolerance_quantile is None else self.tolerance_quantile

    def as_parameters(self) -> dict[str, str | int | float | bool]:
        return {
            "coverage": self.coverage,
            "normalization": self.normalization,
            "group_by": self.group_by,
            "reject_glitches": self.reject_glitches,
            "glitch_max_deviation": self.glitch_max_deviation,
            "rdp_epsilon": self.rdp_epsilon,
            "tolerance_max_poses": self.tolerance_max_poses,
            "tolerance_quantile": self.quantile,
            "tool_version": __version__,
        }


@dataclass
class Collected:
    """What the two passes keep of all frames read (see the module docstring)."""

    angles: np.ndarray  # (U, 15, 2) float32, used frames
    intervals: dict[str, np.ndarray]  # family → (2, K) lower/upper quantiles over used frames
    sample: Features  # float32 features of the tolerance subsample (used frames only)
    sample_group: np.ndarray  # (S,) int32
    group_names: list[str]
    group_used: np.ndarray  # (G,) used frames per group
    records: list[SourceRecord] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    frames_read: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


def fit_limits(
    sources: Sequence[Source],
    options: FitOptions | None = None,
    progress: ProgressFn | None = None,
    extra_parameters: dict[str, str | int | float | bool] | None = None,
) -> Limits:
    """Read ``sources`` and fit limits; see the module docstring."""
    opts = options or FitOptions()
    report = progress or (lambda stage, done, total: None)
    data = collect(sources, opts, report)
    used = data.angles.shape[0]
    if used < MIN_POSES:
        raise BadInputError(
            f"only {used} usable poses in {len(sources)} input(s) "
            f"({data.rejected['degenerate']} degenerate, "
            f"{data.rejected['bone_length_outlier']} glitches); at least {MIN_POSES} are needed"
        )
    joint = joint_angle_limits(data.angles, slice(None), opts, report, final=True)
    limits = _assemble(data.intervals, joint, opts)
    tol, stats = _leave_one_group_out(data, opts, report)
    limits.bone_length.tolerance = tol["bone_length"]
    limits.palm_curvature.tolerance = tol["palm_curvature"]
    limits.palm_angle.tolerance = tol["palm_angle"]
    limits.joint_angle.tolerance = tol["joint_angle"]
    limits.length_unit = _length_unit(opts.normalization, data.units)
    parameters = opts.as_parameters()
    parameters.update(extra_parameters or {})
    limits.provenance = Provenance(sources=data.records, parameters=parameters)
    limits.statistics = _statistics(data) | stats
    return limits


# --------------------------------------------------------------------------- reading
class _Groups:
    """Group ids of frames: per file, one for all, or per reader label (falling back to file).

    Labels are named ``<format>:<label>``, so the same subject or sequence in several files
    of one dataset is one group.
    """

    def __init__(self, group_by: str) -> None:
        self.group_by = group_by
        self.names: list[str] = []
        self._index: dict[str, int] = {}

    def _id(self, label: str) -> int:
        if label not in self._index:
            self._index[label] = len(self.names)
            self.names.append(label)
        return self._index[label]

    def ids(self, source: Source, chunk: Chunk) -> np.ndarray:
        n = chunk.joints.shape[0]
        if self.group_by == "none":
            return np.full(n, self._id("all"), np.int32)
        if self.group_by == "label" and chunk.group is not None:
            labels, inverse = np.unique(np.asarray(chunk.group).astype(str), return_inverse=True)
            ids = np.asarray([self._id(f"{source.format}:{lab}") for lab in labels], np.int32)
            return ids[inverse.reshape(-1)]
        return np.full(n, self._id(source.path), np.int32)


class _Angles:
    """A float32 ``(capacity, 15, 2)`` buffer that grows only if a reader under-counted."""

    def __init__(self, capacity: int) -> None:
        self.data = np.empty((max(capacity, 1), skeleton.NUM_ANGLES, 2), np.float32)
        self.size = 0

    def append(self, block: np.ndarray) -> None:
        need = self.size + block.shape[0]
        if need > self.data.shape[0]:
            grown = np.empty((max(need, 2 * self.data.shape[0]), *self.data.shape[1:]),
                             np.float32)  # fmt: skip
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = block
        self.size = need


def _group_medians(
    sources: Sequence[Source], options: FitOptions, groups: _Groups, report: ProgressFn
) -> tuple[np.ndarray, int]:
    """Pass 1: ``(G, 20)`` median normalised bone lengths per group, and the frame count.

    Medians are taken over at most about :data:`MEDIAN_FRAMES` evenly spaced frames of each
    input (all frames of inputs whose size is not known in advance): plenty for a rule with a
    50 % threshold, and it keeps this pass's memory small.
    """
    lengths: list[np.ndarray] = []
    group_ids: list[np.ndarray] = []
    total = 0
    for src in sources:
        step = max(1, (src.frames or 0) // MEDIAN_FRAMES)
        start = 0
        for chunk in src.chunks():
            n = chunk.joints.shape[0]
            pick = np.arange((-start) % step, n, step)
            length, valid = quick_bone_lengths(chunk.joints[pick], options.normalization)
            ids = groups.ids(src, chunk)[pick]
            lengths.append(length[valid].astype(np.float32))
            group_ids.append(ids[valid])
            start += n
            total += n
            report("scanning", total, None)
    medians = np.ones((max(len(groups.names), 1), skeleton.NUM_BONES))
    if lengths:
        all_lengths, all_ids = np.concatenate(lengths), np.concatenate(group_ids)
        del lengths
        order = np.argsort(all_ids, kind="stable")
        bounds = np.searchsorted(all_ids[order], np.arange(len(groups.names) + 1))
        for g in range(len(groups.names)):
            rows = order[bounds[g] : bounds[g + 1]]
            if rows.size:
                medians[g] = np.median(all_lengths[rows], axis=0)
    return np.where(medians > 0, medians, 1.0), total


def _glitches(lengths: np.ndarray, medians: np.ndarray, max_deviation: float) -> np.ndarray:
    """``(n,)`` frames with a bone off its group median beyond the frame's own scale."""
    ratio = np.asarray(lengths, dtype=np.float64) / medians
    scale = np.median(ratio, axis=1, keepdims=True)
    ratio /= np.where(scale > 0, scale, 1.0)
    return (np.abs(ratio - 1.0) > max_deviation).any(axis=1)


def collect(sources: Sequence[Source], options: FitOptions, report: ProgressFn) -> Collected:
    """Both streaming passes; see the module docstring."""
    groups = _Groups(options.group_by)
    medians, total = _group_medians(sources, options, groups, report)
    tail = (1.0 - options.coverage) / 2.0
    tails = {
        "bone_length": QuantileTails(skeleton.NUM_BONES, total, tail),
        "palm_curvature": QuantileTails(4, total, tail),
        "palm_angle": QuantileTails(4, total, tail),
    }
    angles = _Angles(total)
    stride = max(1, int(np.ceil(total / max(options.tolerance_max_poses, 1))))
    sample_parts: list[Features] = []
    sample_groups: list[np.ndarray] = []
    group_used = np.zeros(len(groups.names), np.int64)
    rejected_total = dict.fromkeys(REJECTION_RULES, 0)
    records, units = [], []
    done = 0
    for src in sources:
        counts = dict.fromkeys(REJECTION_RULES, 0)
        used_here = 0
        for chunk in src.chunks():
            n = chunk.joints.shape[0]
            feats = empty_features(n, np.float32)
            features_into(chunk.joints, feats, 0, options.normalization)
            ids = groups.ids(src, chunk)
            degenerate = feats.degenerate
            glitch = np.zeros(n, bool)
            if options.reject_glitches:
                glitch = _glitches(feats.bone_length, medians[ids], options.glitch_max_deviation)
                glitch &= ~degenerate
            used = ~degenerate & ~glitch
            counts["degenerate"] += int(degenerate.sum())
            counts["bone_length_outlier"] += int(glitch.sum())
            used_here += int(used.sum())
            angles.append(feats.flexion_abduction[used])
            for name, keeper in tails.items():
                keeper.add(getattr(feats, name)[used])
            group_used += np.bincount(ids[used], minlength=len(group_used))
            pick = used & ((done + np.arange(n)) % stride == 0)
            sample_parts.append(
                Features(**{f: getattr(feats, f)[pick] for f in Features.__dataclass_fields__})
            )
            sample_groups.append(ids[pick])
            done += n
            report("reading", done, total)
        stats = src.stats
        rejected = dict(stats.dropped) | counts
        for rule in REJECTION_RULES:
            rejected_total[rule] += counts[rule]
        for reason, count in stats.dropped.items():  # frames the reader dropped (invalid)
            rejected_total[reason] = rejected_total.get(reason, 0) + count
        records.append(
            SourceRecord(
                path=src.path,
                format=src.format,
                sha256=src.sha256(),
                frames_read=stats.frames_read,
                frames_used=used_here,
                frames_mirrored=stats.frames_mirrored,
                rejected=rejected,
            )
        )
        units.append(src.unit)
    used_angles = angles.data[: angles.size]
    intervals = (
        {name: keeper.quantiles() for name, keeper in tails.items()} if used_angles.size else {}
    )
    return Collected(
        angles=used_angles,
        intervals=intervals,
        sample=concatenate(sample_parts),
        sample_group=np.concatenate(sample_groups) if sample_groups else np.empty(0, np.int32),
        group_names=groups.names,
        group_used=group_used,
        records=records,
        units=units,
        frames_read=sum(r.frames_read for r in records),
        rejected=rejected_total,
    )


# --------------------------------------------------------------------------- limits
def _quantile_columns(values: np.ndarray, rows: np.ndarray, coverage: float) -> np.ndarray:
    """``(2, K)`` lower/upper quantile (min/max at coverage 1) of each column over ``rows``."""
    tail = (1.0 - coverage) / 2.0
    out = np.empty((2, values.shape[1]))
    for k in range(values.shape[1]):
        col = np.asarray(values[rows, k], dtype=np.float64)
        if coverage >= 1.0:
            out[:, k] = col.min(), col.max()
        else:
            out[:, k] = np.quantile(col, [tail, 1.0 - tail])
    return out


def joint_angle_limits(
    angles: np.ndarray,
    rows: np.ndarray | slice,
    options: FitOptions,
    report: ProgressFn | None = None,
    *,
    final: bool = False,
) -> JointAngleLimits:
    """Per angle id: flexion centre, unwrapped hull pipeline and quantile box over ``rows``.

    ``angles`` ``(N, 15, 2)`` radians (float32 or float64). ``final`` keeps the exact and RDP
    hulls (when ``options.keep_pipeline_hulls``) and reports progress.
    """
    c = options.coverage
    centers = np.empty(skeleton.NUM_ANGLES)
    fits: list[hulls.HullFit] = []
    box = np.empty((2, skeleton.NUM_ANGLES, 2))
    for a in range(skeleton.NUM_ANGLES):
        pts = np.asarray(angles[rows, a], dtype=np.float64)
        centers[a] = hulls.flexion_center(pts[:, 0])
        pts[:, 0] = hulls.unwrap_flexion(pts[:, 0], centers[a])
        fits.append(hulls.fit_hull(pts, coverage=c, rdp_epsilon=options.rdp_epsilon))
        box[:, a] = _quantile_columns(pts, slice(None), c)
        del pts
        if report is not None and final:
            report("hulls", a + 1, skeleton.NUM_ANGLES)
    keep = final and options.keep_pipeline_hulls
    return JointAngleLimits(
        names=skeleton.ANGLE_NAMES,
        flexion_center=centers,
        hulls=[f.vertices for f in fits],
        coverage=np.array([f.coverage for f in fits]),
        area=np.array([f.area for f in fits]),
        tolerance=np.zeros(skeleton.NUM_ANGLES),
        box_min=box[0],
        box_max=box[1],
        exact_hulls=[f.exact for f in fits] if keep else None,
        rdp_hulls=[f.rdp for f in fits] if keep else None,
    )


def _assemble(
    intervals: dict[str, np.ndarray], joint: JointAngleLimits, options: FitOptions
) -> Limits:
    """Limits (zero tolerances) from ``(2, K)`` quantile pairs per family and joint regions."""

    def interval(name: str, names: tuple[str, ...]) -> Interval:
        q = intervals[name]
        return Interval(names, q[0], q[1], np.zeros(len(names)))

    return Limits(
        bone_length=interval("bone_length", skeleton.BONE_NAMES),
        palm_curvature=interval("palm_curvature", skeleton.PALM_NAMES),
        palm_angle=interval("palm_angle", skeleton.PALM_NAMES),
        joint_angle=joint,
        normalization=options.normalization,
        coverage=options.coverage,
    )


def fit_core(features: Features, rows: np.ndarray, options: FitOptions) -> Limits:
    """Limits (zero tolerances) from the frames ``rows`` (indices) of in-memory ``features``."""
    intervals = {
        name: _quantile_columns(getattr(features, name), rows, options.coverage)
        for name in ("bone_length", "palm_curvature", "palm_angle")
    }
    return _assemble(intervals, joint_angle_limits(features.flexion_abduction, rows, options),
                     options)  # fmt: skip


# --------------------------------------------------------------------------- tolerances
def _subset(features: Features, rows: np.ndarray) -> Features:
    return Features(**{f: getattr(features, f)[rows] for f in Features.__dataclass_fields__})


def _split(stacked: np.ndarray) -> dict[str, np.ndarray]:
    sizes = (skeleton.NUM_BONES, 4, 4, skeleton.NUM_ANGLES)
    edges = np.cumsum((0, *sizes))
    return {f: stacked[..., edges[i] : edges[i + 1]] for i, f in enumerate(FAMILIES)}


def _leave_one_group_out(
    data: Collected, options: FitOptions, report: ProgressFn
) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Tolerances and held-out statistics.

    On an even stride of at most ``tolerance_max_poses`` used frames: for each group g, fit
    limits on the other groups and compute the magnitudes of g's frames against them. The
    tolerance of each item is the largest, over groups, of the ``quantile``-quantile of that
    group's magnitudes. The expected false-flag rate on an unseen group is estimated without
    peeking: group g's frames are flagged against tolerances computed from the other groups
    only (nested leave-one-out); its mean and maximum over groups are reported.
    """
    names = data.group_names
    zero = {f: np.zeros(v) for f, v in zip(FAMILIES, (20, 4, 4, 15), strict=True)}
    sample_group = data.sample_group
    present = [g for g in range(len(names)) if (sample_group == g).any()]
    if len(present) < MIN_GROUPS_FOR_TOLERANCE:
        return zero, {
            "tolerance_method": (
                f"none: {len(present)} group(s), leave-one-group-out needs at least "
                f"{MIN_GROUPS_FOR_TOLERANCE}; tolerances are 0"
            ),
        }
    fold_magnitudes: list[np.ndarray] = []
    fold_quantiles = []
    for k, g in enumerate(present):
        train = np.flatnonzero(sample_group != g)
        test = np.flatnonzero(sample_group == g)
        if test.size == 0 or train.size < MIN_POSES:
            continue
        fold_limits = fit_core(data.sample, train, options)
        mags = compute_violations(_subset(data.sample, test), fold_limits).stacked()
        fold_magnitudes.append(mags.astype(np.float32))
        fold_quantiles.append(np.quantile(mags, options.quantile, axis=0))
        report("tolerances", k + 1, len(present))
    q = np.asarray(fold_quantiles)  # (G, 43)
    tolerance = q.max(axis=0)
    rate, rate_zero = [], []
    for i, mags in enumerate(fold_magnitudes):
        others = np.delete(q, i, axis=0).max(axis=0) if len(q) > 1 else tolerance
        rate.append(float((mags > others + VERDICT_EPSILON).any(axis=1).mean()))
        rate_zero.append(float((mags > VERDICT_EPSILON).any(axis=1).mean()))
    stats: dict[str, object] = {
        "tolerance_method": "leave-one-group-out",
        "heldout_groups": np.asarray([names[g] for g in present], dtype=object),
        "heldout_poses": int(sum(m.shape[0] for m in fold_magnitudes)),
        "heldout_false_flag_rate": np.asarray(rate),
        "heldout_false_flag_rate_mean": float(np.mean(rate)),
        "heldout_false_flag_rate_max": float(np.max(rate)),
        "heldout_flag_rate_without_tolerance": np.asarray(rate_zero),
        "heldout_flag_rate_without_tolerance_mean": float(np.mean(rate_zero)),
    }
    return _split(tolerance), stats


# --------------------------------------------------------------------------- bookkeeping
def _statistics(data: Collected) -> dict[str, object]:
    stats: dict[str, object] = {
        "frames_read": int(data.frames_read),
        "frames_used": int(data.angles.shape[0]),
        "frames_mirrored": int(sum(r.frames_mirrored for r in data.records)),
        "groups": np.asarray(data.group_names, dtype=object),
        "group_frames_used": data.group_used.astype(np.int64),
        "tolerance_poses": len(data.sample),
    }
    for rule, count in data.rejected.items():
        stats[f"rejected_{rule}"] = int(count)
    return stats


def _length_unit(normalization: str, units: list[str]) -> str:
    if normalization == "reference-bone":
        return "relative"
    distinct = sorted(set(units))
    return distinct[0] if len(distinct) == 1 else "mixed: " + ", ".join(distinct)
