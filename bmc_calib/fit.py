"""Fit biomechanical limits to poses (DESIGN §5).

Pipeline: stream every source's canonical right-hand chunks through
:func:`bmc_calib.kinematics.compute_features` (features kept as float32, ~232 bytes a pose),
drop degenerate frames and annotation glitches, then

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
from bmc_calib.formats import Source
from bmc_calib.kinematics import Features, check_normalization, empty_features, features_into
from bmc_calib.limits import Interval, JointAngleLimits, Limits, Provenance, SourceRecord
from bmc_calib.violations import FAMILIES, VERDICT_EPSILON, compute_violations

#: progress callback: (stage, done, total or None)
ProgressFn = Callable[[str, int, "int | None"], None]

GROUP_BY: tuple[str, ...] = ("file", "none")
REJECTION_RULES: tuple[str, ...] = ("degenerate", "bone_length_outlier")
MIN_POSES = 10
MIN_GROUPS_FOR_TOLERANCE = 3


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
    tolerance_max_poses: int = 200_000
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
    """Features of every frame read, with where each came from."""

    features: Features
    source: np.ndarray  # (N,) int32 index into the source list
    group: np.ndarray  # (N,) int32 index into group_names
    group_names: list[str]
    records: list[SourceRecord] = field(default_factory=list)
    units: list[str] = field(default_factory=list)


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
    used, rejected = reject_frames(data, opts)
    for i, record in enumerate(data.records):
        in_source = data.source == i
        record.rejected = {rule: int((mask & in_source).sum()) for rule, mask in rejected.items()}
        record.frames_used = int((used & in_source).sum())
    if used.sum() < MIN_POSES:
        raise BadInputError(
            f"only {int(used.sum())} usable poses in {len(sources)} input(s) "
            f"({data.features.degenerate.sum()} degenerate, "
            f"{rejected['bone_length_outlier'].sum()} glitches); at least {MIN_POSES} are needed"
        )
    limits = fit_core(data.features, np.flatnonzero(used), opts, report, final=True)
    tol, stats = _leave_one_group_out(data, used, opts, report)
    limits.bone_length.tolerance = tol["bone_length"]
    limits.palm_curvature.tolerance = tol["palm_curvature"]
    limits.palm_angle.tolerance = tol["palm_angle"]
    limits.joint_angle.tolerance = tol["joint_angle"]
    limits.length_unit = _length_unit(opts.normalization, data.units)
    parameters = opts.as_parameters()
    parameters.update(extra_parameters or {})
    limits.provenance = Provenance(sources=data.records, parameters=parameters)
    limits.statistics = _statistics(data, used, rejected) | stats
    return limits


# --------------------------------------------------------------------------- reading
class _FeatureStore:
    """Float32 features of all frames, preallocated when the total is known, else grown."""

    def __init__(self, capacity: int) -> None:
        self.features = empty_features(max(capacity, 1), np.float32)
        self.source = np.empty(max(capacity, 1), np.int32)
        self.group = np.empty(max(capacity, 1), np.int32)
        self.size = 0

    def reserve(self, n: int) -> int:
        """Make room for ``n`` more frames; returns the first new row."""
        need = self.size + n
        cap = self.source.shape[0]
        if need > cap:
            new_cap = max(need, 2 * cap)
            grown = empty_features(new_cap, np.float32)
            for name in Features.__dataclass_fields__:
                getattr(grown, name)[: self.size] = getattr(self.features, name)[: self.size]
            self.features = grown
            self.source = np.resize(self.source, new_cap)
            self.group = np.resize(self.group, new_cap)
        start, self.size = self.size, need
        return start

    def trimmed(self) -> tuple[Features, np.ndarray, np.ndarray]:
        n = self.size
        f = Features(**{k: getattr(self.features, k)[:n] for k in Features.__dataclass_fields__})
        return f, self.source[:n], self.group[:n]


def collect(sources: Sequence[Source], options: FitOptions, report: ProgressFn) -> Collected:
    """Stream all sources into one float32 feature store (no per-chunk copies kept)."""
    known = [s.frames for s in sources]
    total = sum(k for k in known if k is not None) if None not in known else None
    store = _FeatureStore(total if total is not None else 65536)
    group_names: list[str] = []
    group_index: dict[str, int] = {}
    records, units = [], []
    for i, src in enumerate(sources):
        label = "all" if options.group_by == "none" else src.path
        gid = group_index.setdefault(label, len(group_names))
        if gid == len(group_names):
            group_names.append(label)
        for chunk in src.chunks():
            n = chunk.joints.shape[0]
            start = store.reserve(n)
            features_into(chunk.joints, store.features, start, options.normalization)
            store.source[start : start + n] = i
            store.group[start : start + n] = gid
            report("reading", store.size, total)
        stats = src.stats
        records.append(
            SourceRecord(
                path=src.path,
                format=src.format,
                sha256=src.sha256(),
                frames_read=stats.frames_read,
                frames_used=stats.frames_kept,
                frames_mirrored=stats.frames_mirrored,
                rejected=dict(stats.dropped),
            )
        )
        units.append(src.unit)
    features, source_ids, group_ids = store.trimmed()
    return Collected(features, source_ids, group_ids, group_names, records, units)


# --------------------------------------------------------------------------- rejection
def reject_frames(data: Collected, options: FitOptions) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The used-frame mask ``(N,)`` and, per rejection rule, the frames it removed.

    A frame is counted under the first rule that removes it (degenerate before glitch).
    """
    degenerate = np.asarray(data.features.degenerate, dtype=bool)
    glitch = np.zeros_like(degenerate)
    if options.reject_glitches:
        glitch = _bone_length_outliers(data, ~degenerate, options.glitch_max_deviation)
        glitch &= ~degenerate
    used = ~degenerate & ~glitch
    return used, {"degenerate": degenerate, "bone_length_outlier": glitch}


def _bone_length_outliers(data: Collected, valid: np.ndarray, max_deviation: float) -> np.ndarray:
    lengths = data.features.bone_length
    medians = np.ones((len(data.group_names), skeleton.NUM_BONES), np.float64)
    for g in range(len(data.group_names)):
        rows = valid & (data.group == g)
        if rows.any():
            medians[g] = np.median(lengths[rows], axis=0)
    medians = np.where(medians > 0, medians, 1.0)
    out = np.zeros(lengths.shape[0], bool)
    step = 65536
    for start in range(0, lengths.shape[0], step):
        block = slice(start, start + step)
        ratio = lengths[block] / medians[data.group[block]]
        scale = np.median(ratio, axis=1, keepdims=True)
        ratio /= np.where(scale > 0, scale, 1.0)
        out[block] = (np.abs(ratio - 1.0) > max_deviation).any(axis=1)
    return out


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


def fit_core(
    features: Features,
    rows: np.ndarray,
    options: FitOptions,
    report: ProgressFn | None = None,
    *,
    final: bool = False,
) -> Limits:
    """Limits from the frames ``rows`` (indices) of ``features``, with zero tolerances."""
    c = options.coverage

    def interval(values: np.ndarray, names: tuple[str, ...]) -> Interval:
        q = _quantile_columns(values, rows, c)
        return Interval(names, q[0], q[1], np.zeros(len(names)))

    centers = np.empty(skeleton.NUM_ANGLES)
    fits: list[hulls.HullFit] = []
    box = np.empty((2, skeleton.NUM_ANGLES, 2))
    for a in range(skeleton.NUM_ANGLES):
        pts = np.asarray(features.flexion_abduction[rows, a], dtype=np.float64)
        centers[a] = hulls.flexion_center(pts[:, 0])
        pts[:, 0] = hulls.unwrap_flexion(pts[:, 0], centers[a])
        fits.append(hulls.fit_hull(pts, coverage=c, rdp_epsilon=options.rdp_epsilon))
        box[:, a] = _quantile_columns(pts, slice(None), c)
        if report is not None and final:
            report("hulls", a + 1, skeleton.NUM_ANGLES)
    keep = final and options.keep_pipeline_hulls
    joint = JointAngleLimits(
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
    return Limits(
        bone_length=interval(features.bone_length, skeleton.BONE_NAMES),
        palm_curvature=interval(features.palm_curvature, skeleton.PALM_NAMES),
        palm_angle=interval(features.palm_angle, skeleton.PALM_NAMES),
        joint_angle=joint,
        normalization=options.normalization,
        coverage=c,
    )


# --------------------------------------------------------------------------- tolerances
def _subset(features: Features, rows: np.ndarray) -> Features:
    return Features(**{f: getattr(features, f)[rows] for f in Features.__dataclass_fields__})


def _split(stacked: np.ndarray) -> dict[str, np.ndarray]:
    sizes = (skeleton.NUM_BONES, 4, 4, skeleton.NUM_ANGLES)
    edges = np.cumsum((0, *sizes))
    return {f: stacked[..., edges[i] : edges[i + 1]] for i, f in enumerate(FAMILIES)}


def _leave_one_group_out(
    data: Collected, used: np.ndarray, options: FitOptions, report: ProgressFn
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
    rows = np.flatnonzero(used)
    present = [g for g in range(len(names)) if (data.group[rows] == g).any()]
    if len(present) < MIN_GROUPS_FOR_TOLERANCE:
        return zero, {
            "tolerance_method": (
                f"none: {len(present)} group(s), leave-one-group-out needs at least "
                f"{MIN_GROUPS_FOR_TOLERANCE}; tolerances are 0"
            ),
        }
    stride = max(1, int(np.ceil(rows.size / max(options.tolerance_max_poses, 1))))
    sample = rows[::stride]
    sample_group = data.group[sample]
    fold_magnitudes: list[np.ndarray] = []
    fold_quantiles = []
    for k, g in enumerate(present):
        train, test = sample[sample_group != g], sample[sample_group == g]
        if test.size == 0 or train.size < MIN_POSES:
            continue
        fold_limits = fit_core(data.features, train, options)
        mags = compute_violations(_subset(data.features, test), fold_limits).stacked()
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
def _statistics(
    data: Collected, used: np.ndarray, rejected: dict[str, np.ndarray]
) -> dict[str, object]:
    groups = np.asarray(data.group_names, dtype=object)
    per_group = np.bincount(data.group[used], minlength=len(groups))
    stats: dict[str, object] = {
        "frames_read": int(used.size),
        "frames_used": int(used.sum()),
        "frames_mirrored": int(sum(r.frames_mirrored for r in data.records)),
        "groups": groups,
        "group_frames_used": per_group.astype(np.int64),
    }
    for rule, mask in rejected.items():
        stats[f"rejected_{rule}"] = int(mask.sum())
    return stats


def _length_unit(normalization: str, units: list[str]) -> str:
    if normalization == "reference-bone":
        return "relative"
    distinct = sorted(set(units))
    return distinct[0] if len(distinct) == 1 else "mixed: " + ", ".join(distinct)
