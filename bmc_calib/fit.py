"""Fit biomechanical limits to poses (DESIGN §5).

Pipeline, two streaming passes, ONE parse per source (readers yield canonical right-hand
chunks):

1. the parse: bone lengths only (:func:`bmc_calib.kinematics.quick_bone_lengths`): exact
   frame counts and each group's median bone lengths, for the glitch rule. The canonical
   chunks go to a scratch file (:class:`bmc_calib.scratch.ChunkTape`) unless the source is
   a ``.npy`` file, whose plain reads cost less than the copy; the SHA-256 recorded in the
   provenance is that of the bytes parsed (:func:`_parsed_digest`);
2. the chunks replayed: all features per chunk (:func:`bmc_calib.kinematics.features_into`);
   degenerate frames and glitches are dropped on the spot. Kept: the used frames' joint
   angles (float32, 120 bytes a pose: every hull needs every point) on scratch disk, one
   file per angle id that the hulls read back one at a time, the extreme values of each
   interval column (:class:`bmc_calib.quantiles.QuantileTails`, exact quantiles), and all
   features of an even stride of at most ``tolerance_max_poses`` used frames for the
   tolerances. The results are those of an in-memory fit, bit for bit.

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

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from bmc_calib import __version__, edits, hulls, population, skeleton
from bmc_calib.errors import BadInputError, UsageError
from bmc_calib.formats import Chunk, Source, _io
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
from bmc_calib.scratch import AngleStore, ChunkTape, Scratch
from bmc_calib.violations import FAMILIES, VERDICT_EPSILON, compute_violations

#: progress callback: (stage, done, total or None)
ProgressFn = Callable[[str, int, "int | None"], None]

GROUP_BY: tuple[str, ...] = ("file", "none", "label")
REJECTION_RULES: tuple[str, ...] = ("degenerate", "bone_length_outlier")
MIN_POSES = 10
MIN_GROUPS_FOR_TOLERANCE = 3
DEFAULT_PERSON_CONFIDENCE = 0.99
#: lower bone-length limits never go below this fraction of the typical length
MIN_BONE_LENGTH = 1e-3
#: held-out poses (an even stride) each impossible edit is tried on, per fold
EDIT_POSES = 5_000
#: poses (an even stride of the training rows) a fold's person-level intervals use
FOLD_INTERVAL_POSES = 20_000
#: held-out folds at most; more groups are dealt into this many folds (round robin)
MAX_FOLDS = 20
#: person-level families: one value per hand, prediction intervals for a new person
PERSON_FAMILIES: tuple[str, ...] = ("bone_length", "palm_curvature", "palm_angle")
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
    #: probability that all person-level items of a new person's hand fall inside
    person_confidence: float = DEFAULT_PERSON_CONFIDENCE
    #: the held-out edits checked per fold (see :mod:`bmc_calib.edits`)
    check_edits: bool = True

    def __post_init__(self) -> None:
        # (1 − c) / 2 must stay below 0.5 in floating point (1e-300 rounds to 0.5)
        if not (0.0 < self.coverage <= 1.0 and (1.0 - self.coverage) / 2.0 < 0.5):
            raise UsageError(f"--coverage must be in (0, 1] (and above 1e-16), got {self.coverage}")
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
        if not 0.0 < self.person_confidence < 1.0:
            raise UsageError(f"--person-confidence must be in (0, 1), got {self.person_confidence}")

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
            "person_confidence": self.person_confidence,
            "tool_version": __version__,
        }


@dataclass
class Collected:
    """What the two passes keep of all frames read (see the module docstring)."""

    #: (U, 15, 2) float32 angles of the used frames, in memory or on scratch disk
    angles: np.ndarray | AngleStore
    angle_group: np.ndarray  # (U,) int32 group of each used frame
    intervals: dict[str, np.ndarray]  # family → (2, K) lower/upper quantiles over used frames
    sample: Features  # float32 features of the tolerance subsample (used frames only)
    sample_group: np.ndarray  # (S,) int32
    sample_hand: np.ndarray  # (S,) int64 hand id (group × side), see population.hand_ids
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
    scratch_dir: str | None = None,
) -> Limits:
    """Read ``sources`` and fit limits; see the module docstring.

    Each source is parsed once; scratch data (see :class:`bmc_calib.scratch.Scratch`) goes
    to a private folder in ``scratch_dir`` (default: the system's temporary folder,
    ``TMPDIR``), removed when the fit ends, even when it fails; ``Limits.scratch_bytes`` says
    how much it held.
    """
    opts = options or FitOptions()
    report = progress or (lambda stage, done, total: None)
    with Scratch(scratch_dir) as scratch:
        data = collect(sources, opts, report, scratch)
        limits = _fit_collected(data, sources, opts, report, extra_parameters)
        limits.scratch_bytes = scratch.peak_bytes
    return limits


def _fit_collected(
    data: Collected,
    sources: Sequence[Source],
    opts: FitOptions,
    report: ProgressFn,
    extra_parameters: dict[str, str | int | float | bool] | None,
) -> Limits:
    used = data.angles.shape[0]
    if used < MIN_POSES:
        named = ", ".join(src.path for src in sources[:3]) + (", …" if len(sources) > 3 else "")
        raise BadInputError(
            f"only {used} usable poses in {len(sources)} input(s) {named} "
            f"({data.rejected['degenerate']} degenerate, "
            f"{data.rejected['bone_length_outlier']} glitches); at least {MIN_POSES} are needed"
        )
    regions = group_hulls(data.angles, data.angle_group, len(data.group_names), opts, report)
    joint = consensus_joint_limits(data.angles, data.angle_group, regions, opts)
    everyone = np.arange(len(data.sample))
    intervals, detail = person_level_intervals(
        data.sample, everyone, data.sample_hand, data.sample_group, opts, data.intervals
    )
    limits = _assemble(intervals, joint, opts)
    limits.bone_length.within_person = population.relative_within_spread(
        data.sample.bone_length, data.sample_hand, opts.coverage
    )
    tol, stats = _leave_one_group_out(data, regions, opts, report)
    limits.bone_length.tolerance = tol["bone_length"]
    limits.palm_curvature.tolerance = tol["palm_curvature"]
    limits.palm_angle.tolerance = tol["palm_angle"]
    limits.joint_angle.tolerance = tol["joint_angle"]
    stats.update(_person_statistics(detail))
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
            names = [_io.text_path(f"{source.format}:{lab}") for lab in labels]
            ids = np.asarray([self._id(name) for name in names], np.int32)
            return ids[inverse.reshape(-1)]
        return np.full(n, self._id(_io.text_path(source.path)), np.int32)


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


def _mirrored(chunk: Chunk) -> np.ndarray:
    """``(n,)`` int 1 where the frame was a left hand (mirrored), else 0."""
    n = chunk.joints.shape[0]
    return np.zeros(n, np.int32) if chunk.mirrored is None else chunk.mirrored.astype(np.int32)


def _angle_column(angles: np.ndarray | AngleStore, a: int) -> np.ndarray:
    """``(U, 2)`` points of angle id ``a`` of an in-memory ``(U, 15, 2)`` array or a
    :class:`bmc_calib.scratch.AngleStore`."""
    if isinstance(angles, AngleStore):
        return angles.column(a)
    return angles[:, a]


def _signatures(src: Source) -> list[tuple[int, int, int, int] | None]:
    return [_io.file_signature(p) for p in (src.files or [src.path])]


def _parsed_digest(src: Source, before: list[tuple[int, int, int, int] | None]) -> str:
    """SHA-256 of the bytes the parse just read (issue: hash what you read, as you read it).

    Readers that hash as they read (``.npy``, JSON, text, pickles) have recorded the digest
    of exactly the bytes they parsed. For the others (HDF5, ``.npz``, ``.mat``, folders)
    the file is hashed after the parse and its size, times and inode must not have changed
    since the parse began; otherwise the fit stops rather than record another file's hash.
    """
    if src.files is None:
        digest = _io.read_digest(src.path)
        if digest is not None:
            return digest
    digest = src.sha256()
    if _signatures(src) != before:
        raise BadInputError(
            f"{_io.text_path(src.path)}: the file changed while fit was reading it; "
            "rerun when it no longer changes"
        )
    return digest


def _first_pass(
    sources: Sequence[Source],
    options: FitOptions,
    groups: _Groups,
    scratch: Scratch,
    report: ProgressFn,
) -> tuple[np.ndarray, int, list[ChunkTape | None], list[str]]:
    """The only parse of each source: ``(2G, 20)`` median normalised bone lengths per hand,
    the frame count, each source's chunk tape (None: ``.npy``, read again) and the SHA-256
    of the bytes parsed.

    A hand is a group's right hands (row ``2g``) or its left hands (row ``2g + 1``): the two
    hands of one person are measured apart. Medians are taken over at most about
    :data:`MEDIAN_FRAMES` evenly spaced frames of each input (all frames of inputs whose size
    is not known in advance): plenty for a rule with a 50 % threshold, and it keeps this
    pass's memory small.
    """
    lengths: list[np.ndarray] = []
    hand_ids: list[np.ndarray] = []
    tapes: list[ChunkTape | None] = []
    digests: list[str] = []
    total = 0
    for i, src in enumerate(sources):
        step = max(1, (src.frames or 0) // MEDIAN_FRAMES)
        start = 0
        tape = None if src.rereadable else ChunkTape(scratch, f"source_{i:05d}.bin")
        before = _signatures(src)
        if src.files is None:
            _io.forget_digest(src.path)
        src.hash_reads = True
        for chunk in src.chunks():
            n = chunk.joints.shape[0]
            ids = groups.ids(src, chunk)
            mirrored = _mirrored(chunk)
            if tape is not None:
                tape.append(chunk.joints, ids, mirrored)
            pick = np.arange((-start) % step, n, step)
            length, valid = quick_bone_lengths(chunk.joints[pick], options.normalization)
            hands = population.hand_ids(ids, mirrored)[pick]
            lengths.append(length[valid].astype(np.float32))
            hand_ids.append(hands[valid])
            start += n
            total += n
            report("scanning", total, None)
        if tape is not None:
            tape.finish()
        tapes.append(tape)
        digests.append(_parsed_digest(src, before))
    hands = 2 * max(len(groups.names), 1)
    medians = np.ones((hands, skeleton.NUM_BONES))
    if lengths:
        all_lengths, all_ids = np.concatenate(lengths), np.concatenate(hand_ids)
        del lengths
        medians = population.group_medians(all_lengths, all_ids, hands)
    return np.where(medians > 0, medians, 1.0), total, tapes, digests  # empty hands get 1


def _replay(
    src: Source, tape: ChunkTape | None, groups: _Groups, digest: str
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The second pass over one source: its chunks as the first pass saw them."""
    if tape is not None:
        yield from tape.replay()
        tape.remove()
        return
    before = _signatures(src)
    _io.forget_digest(src.path)
    for chunk in src.chunks():  # a .npy file: plain reads, hashed as they go
        yield chunk.joints, groups.ids(src, chunk), _mirrored(chunk)
    again = _io.read_digest(src.path)
    if (again is not None and again != digest) or (again is None and _signatures(src) != before):
        raise BadInputError(
            f"{_io.text_path(src.path)}: the file changed while fit was reading it; "
            "rerun when it no longer changes"
        )


def _glitches(lengths: np.ndarray, medians: np.ndarray, max_deviation: float) -> np.ndarray:
    """``(n,)`` frames with a bone off its group median beyond the frame's own scale."""
    ratio = np.asarray(lengths, dtype=np.float64) / medians
    scale = np.median(ratio, axis=1, keepdims=True)
    ratio /= np.where(scale > 0, scale, 1.0)
    return (np.abs(ratio - 1.0) > max_deviation).any(axis=1)


def collect(
    sources: Sequence[Source],
    options: FitOptions,
    report: ProgressFn,
    scratch: Scratch | None = None,
) -> Collected:
    """Both streaming passes; see the module docstring. Each source is parsed once (the
    second pass replays it from ``scratch``, see :class:`bmc_calib.scratch.Scratch`); without
    ``scratch`` the angles are kept in memory and a private scratch folder holds the
    chunks."""
    own = scratch is None
    scratch = scratch or Scratch()
    try:
        return _collect(sources, options, report, scratch, in_memory=own)
    finally:
        if own:
            scratch.close()


def _collect(
    sources: Sequence[Source],
    options: FitOptions,
    report: ProgressFn,
    scratch: Scratch,
    *,
    in_memory: bool,
) -> Collected:
    groups = _Groups(options.group_by)
    medians, total, tapes, digests = _first_pass(sources, options, groups, scratch, report)
    tail = (1.0 - options.coverage) / 2.0
    tails = {
        "bone_length": QuantileTails(skeleton.NUM_BONES, total, tail),
        "palm_curvature": QuantileTails(4, total, tail),
        "palm_angle": QuantileTails(4, total, tail),
    }
    angles: _Angles | AngleStore = _Angles(total) if in_memory else AngleStore(scratch)
    angle_groups: list[np.ndarray] = []
    stride = max(1, int(np.ceil(total / max(options.tolerance_max_poses, 1))))
    sample_parts: list[Features] = []
    sample_groups: list[np.ndarray] = []
    sample_hands: list[np.ndarray] = []
    group_used = np.zeros(len(groups.names), np.int64)
    rejected_total = dict.fromkeys(REJECTION_RULES, 0)
    records, units = [], []
    done = 0
    for src, tape, digest in zip(sources, tapes, digests, strict=True):
        counts = dict.fromkeys(REJECTION_RULES, 0)
        used_here = 0
        for joints, ids, mirrored in _replay(src, tape, groups, digest):
            n = joints.shape[0]
            feats = empty_features(n, np.float32)
            features_into(joints, feats, 0, options.normalization)
            hand = population.hand_ids(ids, mirrored)
            if hand.size and hand.max() >= medians.shape[0]:  # a group first seen in pass 2
                grown = np.ones((2 * (int(hand.max()) // 2 + 1), medians.shape[1]))
                grown[: medians.shape[0]] = medians
                medians = grown
            degenerate = feats.degenerate
            glitch = np.zeros(n, bool)
            if options.reject_glitches:
                glitch = _glitches(feats.bone_length, medians[hand], options.glitch_max_deviation)
                glitch &= ~degenerate
            used = ~degenerate & ~glitch
            counts["degenerate"] += int(degenerate.sum())
            counts["bone_length_outlier"] += int(glitch.sum())
            used_here += int(used.sum())
            angles.append(feats.flexion_abduction[used])
            angle_groups.append(ids[used])
            for name, keeper in tails.items():
                keeper.add(getattr(feats, name)[used])
            group_used += np.bincount(ids[used], minlength=len(group_used))
            pick = used & ((done + np.arange(n)) % stride == 0)
            sample_parts.append(
                Features(**{f: getattr(feats, f)[pick] for f in Features.__dataclass_fields__})
            )
            sample_groups.append(ids[pick])
            sample_hands.append(hand[pick])
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
                path=_io.text_path(src.path),
                format=src.format,
                sha256=digest,
                frames_read=stats.frames_read,
                frames_used=used_here,
                frames_mirrored=stats.frames_mirrored,
                rejected=rejected,
            )
        )
        units.append(src.unit)
    if isinstance(angles, AngleStore):
        angles.finish()
        used_angles: np.ndarray | AngleStore = angles
    else:
        used_angles = angles.data[: angles.size]
    intervals = (
        {name: keeper.quantiles() for name, keeper in tails.items()} if len(used_angles) else {}
    )
    return Collected(
        angles=used_angles,
        angle_group=_joined(angle_groups, np.int32),
        intervals=intervals,
        sample=concatenate(sample_parts),
        sample_group=_joined(sample_groups, np.int32),
        sample_hand=_joined(sample_hands, np.int64),
        group_names=groups.names,
        group_used=group_used,
        records=records,
        units=units,
        frames_read=sum(r.frames_read for r in records),
        rejected=rejected_total,
    )


def _joined(parts: list[np.ndarray], dtype: type[np.integer]) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)


# --------------------------------------------------------------------------- limits
def _quantile_columns(values: np.ndarray, rows: np.ndarray | slice, coverage: float) -> np.ndarray:
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

    ``angles`` ``(N, 15, 2)`` radians (float32 or float64). One pool of points, no groups:
    :func:`consensus_joint_limits` builds the regions a fit stores.
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


@dataclass
class GroupHulls:
    """Each group's own trimmed hull per angle id, and what the consensus needs.

    ``hulls[a][g]`` is group ``g``'s ``(V, 2)`` polygon of angle id ``a`` (None for a group
    without points); ``centers`` ``(15,)`` the shared flexion centres.
    """

    centers: np.ndarray
    hulls: list[list[np.ndarray | None]]
    #: each group's exact (unpeeled) hull, same layout as ``hulls``
    exact: list[list[np.ndarray | None]]

    def region(self, a: int, groups: np.ndarray) -> np.ndarray:
        """The consensus region of angle id ``a`` over the groups listed in ``groups``."""
        members = [self.hulls[a][g] for g in groups if self.hulls[a][g] is not None]
        return population.consensus_region(members)


def group_hulls(
    angles: np.ndarray | AngleStore, group: np.ndarray, n_groups: int, options: FitOptions,
    report: ProgressFn | None = None,
) -> GroupHulls:  # fmt: skip
    """Per angle id a shared flexion centre, then each group's hull at coverage ``c``."""
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(n_groups + 1))
    centers = np.empty(skeleton.NUM_ANGLES)
    out: list[list[np.ndarray | None]] = []
    exact: list[list[np.ndarray | None]] = []
    for a in range(skeleton.NUM_ANGLES):
        column = _angle_column(angles, a)
        flexion = np.asarray(column[:, 0], dtype=np.float64)
        centers[a] = hulls.flexion_center(flexion)
        del flexion
        per_group: list[np.ndarray | None] = []
        per_group_exact: list[np.ndarray | None] = []
        for g in range(n_groups):
            rows = order[bounds[g] : bounds[g + 1]]
            if rows.size == 0:
                per_group.append(None)
                per_group_exact.append(None)
                continue
            pts = np.asarray(column[rows], dtype=np.float64)
            pts[:, 0] = hulls.unwrap_flexion(pts[:, 0], centers[a])
            trimmed, whole = population.trimmed_hull(pts, options.coverage, options.rdp_epsilon)
            per_group.append(trimmed)
            per_group_exact.append(whole)
        out.append(per_group)
        exact.append(per_group_exact)
        if report is not None:
            report("hulls", a + 1, skeleton.NUM_ANGLES)
    return GroupHulls(centers, out, exact)


#: points tested against a polygon at a time (bounds the temporaries of the test)
_INSIDE_BLOCK = 1 << 18


def consensus_joint_limits(
    angles: np.ndarray | AngleStore,
    group: np.ndarray,
    per_group: GroupHulls,
    options: FitOptions,
) -> JointAngleLimits:
    """The stored joint-angle regions: the consensus of all groups' hulls (docs/method.md).

    The exact and RDP hulls kept for plotting are those of all points pooled; ``coverage``
    is the fraction of all used points inside the consensus region, ``box`` the pooled
    coverage quantile box.
    """
    present = np.unique(group)
    c = options.coverage
    regions, coverage, area = [], np.empty(skeleton.NUM_ANGLES), np.empty(skeleton.NUM_ANGLES)
    box = np.empty((2, skeleton.NUM_ANGLES, 2))
    exact, rdp = [], []
    for a in range(skeleton.NUM_ANGLES):
        pts = np.asarray(_angle_column(angles, a), dtype=np.float64)
        pts[:, 0] = hulls.unwrap_flexion(pts[:, 0], per_group.centers[a])
        region = per_group.region(a, present)
        regions.append(region)
        inside = sum(
            int(np.count_nonzero(hulls.points_in_polygon(pts[i : i + _INSIDE_BLOCK], region)))
            for i in range(0, len(pts), _INSIDE_BLOCK)
        )
        coverage[a] = inside / len(pts)
        area[a] = hulls._signed_area(region)
        box[:, a] = _quantile_columns(pts, slice(None), c)
        if options.keep_pipeline_hulls:  # the hull of all groups' exact hulls
            corners = np.concatenate([h for h in per_group.exact[a] if h is not None])
            pooled = population.trimmed_hull(corners, 1.0, 0.0)[1]
            exact.append(pooled)
            rdp.append(population.rdp_ring(pooled, options.rdp_epsilon))
    return JointAngleLimits(
        names=skeleton.ANGLE_NAMES,
        flexion_center=per_group.centers,
        hulls=regions,
        coverage=coverage,
        area=area,
        tolerance=np.zeros(skeleton.NUM_ANGLES),
        box_min=box[0],
        box_max=box[1],
        exact_hulls=exact if options.keep_pipeline_hulls else None,
        rdp_hulls=rdp if options.keep_pipeline_hulls else None,
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
    """Limits (zero tolerances) from the frames ``rows`` of in-memory ``features``, pooled.

    No groups: plain coverage quantiles and one hull pipeline per joint (what a fit of a
    single group stores).
    """
    intervals = {
        name: _quantile_columns(getattr(features, name), rows, options.coverage)
        for name in PERSON_FAMILIES
    }
    return _assemble(intervals, joint_angle_limits(features.flexion_abduction, rows, options),
                     options)  # fmt: skip


def _person_items() -> int:
    """Person-level items the person confidence is shared over (the reference bone is 1)."""
    return skeleton.NUM_BONES - 1 + 4 + 4


def person_level_intervals(
    sample: Features,
    rows: np.ndarray,
    hand: np.ndarray,
    person: np.ndarray,
    options: FitOptions,
    fallback: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, population.PersonIntervals]]:
    """``(2, K)`` prediction intervals of each person-level family over ``rows`` of ``sample``.

    ``fallback`` (exact streamed quantiles of all used frames) replaces the sample's own
    quantile range when there are too few people for a between-person spread.
    """
    out, detail = {}, {}
    for name in PERSON_FAMILIES:
        values = np.asarray(getattr(sample, name)[rows], dtype=np.float64)
        pi = population.person_intervals(
            values, hand[rows], person[rows], options.coverage, options.person_confidence,
            _person_items(),
        )  # fmt: skip
        low, high = pi.low, pi.high
        if pi.factor == 0.0 and fallback is not None:
            low, high = fallback[name][0], fallback[name][1]
        if name == "bone_length":  # lengths are positive; the reference bone is 1
            low = np.maximum(low, MIN_BONE_LENGTH * np.maximum(pi.center, 1e-12))
            ref = skeleton.REFERENCE_JOINTS[1] - 1
            if options.normalization == "reference-bone":
                low[ref] = min(low[ref], 1.0)
                high[ref] = max(high[ref], 1.0)
        if name == "palm_angle":  # an angle between two bones lies in [0, π]
            low, high = np.maximum(low, 0.0), np.minimum(high, math.pi)
        out[name] = np.vstack([low, high])
        detail[name] = pi
    return out, detail


# --------------------------------------------------------------------------- held out
def _subset(features: Features, rows: np.ndarray) -> Features:
    return Features(**{f: getattr(features, f)[rows] for f in Features.__dataclass_fields__})


def _split(stacked: np.ndarray) -> dict[str, np.ndarray]:
    sizes = (skeleton.NUM_BONES, 4, 4, skeleton.NUM_ANGLES)
    edges = np.cumsum((0, *sizes))
    return {f: stacked[..., edges[i] : edges[i + 1]] for i, f in enumerate(FAMILIES)}


#: the person-level items come first in the 43 stacked items (20 bones, 4 + 4 palm)
_PERSON_ITEMS = skeleton.NUM_BONES + 8


def _folds(present: list[int]) -> list[np.ndarray]:
    """Held-out folds: one group each, or groups dealt round robin into MAX_FOLDS folds."""
    if len(present) <= MAX_FOLDS:
        return [np.asarray([g]) for g in present]
    return [np.asarray(present[i::MAX_FOLDS]) for i in range(MAX_FOLDS)]


@dataclass
class _Fold:
    groups: np.ndarray  # held-out group ids
    magnitudes: np.ndarray  # (n, 43) float32 of the held-out sample frames
    #: kind → (magnitudes (n, 3) of the edited joints, their angle ids (n, 3) (−1: none),
    #: a person-level item over (n,), applies (n,)); person-level tolerances are 0
    edited: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def _fold_limits(
    data: Collected, train: np.ndarray, regions: GroupHulls, options: FitOptions
) -> Limits:
    """Limits fitted without the held-out groups: intervals from ``train`` sample rows,
    regions from the training groups' hulls (the same rule as the final fit)."""
    step = max(1, len(train) // FOLD_INTERVAL_POSES)
    intervals, _ = person_level_intervals(
        data.sample, train[::step], data.sample_hand, data.sample_group, options
    )
    groups = np.unique(data.sample_group[train])
    joint = JointAngleLimits(
        names=skeleton.ANGLE_NAMES,
        flexion_center=regions.centers,
        hulls=[regions.region(a, groups) for a in range(skeleton.NUM_ANGLES)],
        coverage=np.zeros(skeleton.NUM_ANGLES),
        area=np.zeros(skeleton.NUM_ANGLES),
        tolerance=np.zeros(skeleton.NUM_ANGLES),
        box_min=np.zeros((skeleton.NUM_ANGLES, 2)),
        box_max=np.zeros((skeleton.NUM_ANGLES, 2)),
    )
    return _assemble(intervals, joint, options)


def _edited_magnitudes(
    e: edits.EditedPoses, kind: str, limits: Limits
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Only what an edit changed, for poses that were plausible before it: the distances of
    the edited joints ``(n, 3)`` and their angle ids ``(n, 3)`` (−1 = unused), and whether
    the edited bone left its interval ``(n,)``. Every other item is as it was (inside)."""
    n = len(e.finger)
    ids = np.full((n, 3), -1, np.int64)
    mags = np.zeros((n, 3), np.float32)
    person_over = np.zeros(n, bool)
    if kind == "middle_phalanx_1_6":
        bone = np.asarray(skeleton.ANGLE_BONES)[5 + e.finger]
        rows = np.arange(n)
        length = e.features.bone_length[rows, bone]
        low, high = limits.bone_length.min[bone], limits.bone_length.max[bone]
        person_over = np.maximum(1 - length / low, length / high - 1) > VERDICT_EPSILON
        return mags, ids, person_over
    levels = {"mcp_back_90": (0,), "pip_sideways_60": (1,), "dip_back_80": (2,),
              "finger_mirrored": (0, 1, 2)}[kind]  # fmt: skip
    ja = limits.joint_angle
    for col, level in enumerate(levels):
        ids[:, col] = 5 * level + e.finger
    for a in np.unique(ids[ids >= 0]):
        rows, cols = np.nonzero(ids == a)
        pts = np.array(e.features.flexion_abduction[rows, a], dtype=np.float64)
        pts[:, 0] = hulls.unwrap_flexion(pts[:, 0], ja.flexion_center[a])
        mags[rows, cols] = hulls.distance_to_polygon(pts, ja.hulls[a])
    return mags, ids, person_over


def _tolerance_from(magnitudes: list[np.ndarray], quantile: float) -> np.ndarray:
    """``(43,)`` tolerances from held-out magnitudes (one ``(n_f, 43)`` array per fold).

    Person-level families get 0: their intervals already are for a new person. A joint's
    tolerance is the ``quantile``-quantile of the held-out magnitudes of all folds pooled,
    each fold weighted equally: how far an unseen person's poses fall outside, at the
    coverage. One person's short run of bad annotations (fewer than ``(1 − q)·F`` of its
    frames) cannot stretch it; a systematic excursion of a new person can.
    """
    tol = np.zeros(magnitudes[0].shape[1])
    ja = _split(np.arange(tol.size))["joint_angle"]
    values = np.concatenate([m[:, ja] for m in magnitudes])
    weights = np.concatenate([np.full(len(m), 1.0 / max(len(m), 1)) for m in magnitudes])
    tol[ja] = _weighted_quantile(values, weights, quantile)
    return tol


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Per column of ``(n, K)`` values the smallest value whose weighted CDF reaches ``q``."""
    out = np.empty(values.shape[1])
    total = float(weights.sum())
    for k in range(values.shape[1]):
        order = np.argsort(values[:, k], kind="stable")
        cdf = np.cumsum(weights[order]) / total
        pos = min(int(np.searchsorted(cdf, q - 1e-12)), len(order) - 1)
        out[k] = values[order[pos], k]
    return out


def _leave_one_group_out(
    data: Collected, regions: GroupHulls, options: FitOptions, report: ProgressFn
) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Joint-angle tolerances and the held-out statistics (docs/method.md).

    On an even stride of at most ``tolerance_max_poses`` used frames, for each fold (one
    group, or several when there are more than :data:`MAX_FOLDS`): limits fitted without it
    (:func:`_fold_limits`), the magnitudes of its frames against them, and the same for its
    frames with each impossible edit of :mod:`bmc_calib.edits`. Tolerances: see
    :func:`_tolerance_from`. The flag rates are estimated without peeking: a fold's frames are
    judged with tolerances computed from the other folds only (nested).
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
    folds: list[_Fold] = []
    fold_groups = _folds(present)
    for k, held in enumerate(fold_groups):
        test_mask = np.isin(sample_group, held)
        train, test = np.flatnonzero(~test_mask), np.flatnonzero(test_mask)
        if test.size == 0 or train.size < MIN_POSES:
            continue
        limits = _fold_limits(data, train, regions, options)
        feats = _subset(data.sample, test)
        mags = compute_violations(feats, limits).stacked()
        edited = {}
        if options.check_edits:
            stride = max(1, len(test) // EDIT_POSES)
            some = _subset(feats, np.arange(0, len(test), stride))
            for i, kind in enumerate(edits.EDIT_KINDS):
                e = edits.apply_edit(some, kind, seed=1000 * k + i)
                edited[kind] = (*_edited_magnitudes(e, kind, limits), e.applies)
        folds.append(_Fold(held, mags.astype(np.float32), edited))
        report("tolerances", k + 1, len(fold_groups))
    tolerance = _tolerance_from([f.magnitudes for f in folds], options.quantile)
    stats = _heldout_statistics(folds, options.quantile, names)
    stats["tolerance_method"] = "leave-one-group-out"
    return _split(tolerance), stats


def _flags(magnitudes: np.ndarray, tolerance: np.ndarray) -> dict[str, np.ndarray]:
    """Per family ``(n,)`` whether some item exceeds its tolerance, plus ``any``."""
    over = magnitudes > tolerance + VERDICT_EPSILON
    parts = {f: m.any(axis=1) for f, m in _split(over).items()}
    parts["any"] = over.any(axis=1)
    return parts


def _heldout_statistics(folds: list[_Fold], quantile: float, names: list[str]) -> dict[str, object]:
    """Nested held-out false-flag rates per family and edit detection rates per kind."""
    rates: dict[str, list[float]] = {f: [] for f in (*FAMILIES, "any")}
    rate_zero: list[float] = []
    caught: dict[str, list[float]] = {kind: [] for kind in edits.EDIT_KINDS}
    for i, fold in enumerate(folds):
        rest = [f.magnitudes for j, f in enumerate(folds) if j != i] or [fold.magnitudes]
        others = _tolerance_from(rest, quantile)
        flags = _flags(fold.magnitudes, others)
        for f, v in flags.items():
            rates[f].append(float(v.mean()))
        rate_zero.append(float((fold.magnitudes > VERDICT_EPSILON).any(axis=1).mean()))
        plausible = ~flags["any"]
        stride = max(1, len(plausible) // EDIT_POSES)
        for kind, (joint, ids, person_over, applies) in fold.edited.items():
            judged = applies & plausible[::stride][: len(applies)]
            limit = np.where(ids >= 0, others[_PERSON_ITEMS + np.maximum(ids, 0)], np.inf)
            over = (joint > limit + VERDICT_EPSILON).any(axis=1) | person_over
            hit = over[judged]
            caught[kind].append(float(hit.mean()) if hit.size else float("nan"))
    label = [", ".join(names[g] for g in fold.groups) for fold in folds]
    stats: dict[str, object] = {
        "heldout_groups": np.asarray(label, dtype=object),
        "heldout_poses": int(sum(f.magnitudes.shape[0] for f in folds)),
        "heldout_false_flag_rate": np.asarray(rates["any"]),
        "heldout_false_flag_rate_mean": float(np.mean(rates["any"])),
        "heldout_false_flag_rate_max": float(np.max(rates["any"])),
        "heldout_flag_rate_without_tolerance": np.asarray(rate_zero),
        "heldout_flag_rate_without_tolerance_mean": float(np.mean(rate_zero)),
    }
    for f in FAMILIES:
        stats[f"heldout_false_flag_rate_{f}"] = np.asarray(rates[f])
        stats[f"heldout_false_flag_rate_{f}_mean"] = float(np.mean(rates[f]))
    for kind, values in caught.items():
        if not values:
            continue
        arr = np.asarray(values)
        stats[f"heldout_edit_caught_{kind}"] = arr
        finite = arr[np.isfinite(arr)]
        stats[f"heldout_edit_caught_{kind}_mean"] = float(finite.mean()) if finite.size else 0.0
        stats[f"heldout_edit_caught_{kind}_min"] = float(finite.min()) if finite.size else 0.0
    return stats


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


def _person_statistics(detail: dict[str, population.PersonIntervals]) -> dict[str, object]:
    """How the person-level intervals were set: method, k, people, hands, spreads."""
    first = next(iter(detail.values()))
    stats: dict[str, object] = {
        "person_level_method": first.method,
        "person_level_factor": float(first.factor),
        "person_level_people": int(first.people),
        "person_level_hands": int(first.hands),
    }
    for name, pi in detail.items():
        stats[f"person_level_between_sd_{name}"] = pi.between_sd
        stats[f"person_level_center_{name}"] = pi.center
    return stats


def _length_unit(normalization: str, units: list[str]) -> str:
    if normalization == "reference-bone":
        return "relative"
    distinct = sorted(set(units))
    return distinct[0] if len(distinct) == 1 else "mixed: " + ", ".join(distinct)
