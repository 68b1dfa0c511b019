"""Validate poses against limits (DESIGN §7): verdicts, summaries, worst poses, report rows.

Shapes and units, once for the module. Poses are canonical right-hand joints ``(n, 21, 3)``
in any length unit (the bundle's normalisation is applied here). The 43 *items* are the
constraints of :data:`bmc_calib.violations.FAMILIES` side by side (20 bones, 4 palm
curvatures, 4 palm angles, 15 joint angles; :data:`ITEM_NAMES`). Magnitudes come from
:func:`bmc_calib.violations.compute_violations` (the definition shared with the torch loss)
and stay in library units inside this module: bone length as a fraction of the violated
limit, palm curvature in 1 / the bundle's length unit, palm and joint angles in radians.
Human-facing values (:class:`WorstPose`, report rows) use degrees for both angle families;
:data:`DISPLAY_FACTOR` converts.

Per pose:

- verdict ``degenerate`` when kinematics flags the pose (DESIGN §4.7), else ``implausible``
  when some magnitude exceeds its tolerance (:func:`bmc_calib.violations.exceeded`: the
  bundle's stored tolerance × ``tolerance_scale``, plus ``VERDICT_EPSILON``), else
  ``plausible``;
- *severity* of an exceeded item, to rank the worst poses across families: its magnitude
  in degree-equivalents — 1° of palm or joint angle = 1 % of bone length = 10 % of the
  width of that palm-curvature interval (curvature is the most fragile measure: moving one
  MCP a little changes it a lot); a pose's severity is that of its worst exceeded item
  (0 when none), and that item explains the pose.

Everything is vectorised over poses, block by block (:data:`DEFAULT_BLOCK` poses), so memory
stays bounded: a :class:`Validator` keeps counts, the per-pose verdicts (1 byte a pose) and
the few worst poses; explanations (:attr:`WorstPose.reason`) are built only for those.
Reports are streamed block by block by :class:`ReportWriter`. The library never prints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

import numpy as np

from bmc_calib import diagnose, metrics, personal, skeleton
from bmc_calib.errors import BadInputError, UsageError
from bmc_calib.formats import Chunk, Source
from bmc_calib.kinematics import (
    DEGENERATE_REASONS,
    compute_features,
    degenerate_reason_names,
    quick_bone_lengths,
)
from bmc_calib.limits import Limits
from bmc_calib.outputs import atomic_path
from bmc_calib.scratch import ChunkTape, Scratch
from bmc_calib.violations import (
    FAMILIES,
    VERDICT_EPSILON,
    compute_violations,
    exceeded,
    joint_angle_points,
    nearest_on_polygon,
    tolerances,
)

VERDICTS: tuple[str, ...] = ("plausible", "implausible", "degenerate")
PLAUSIBLE, IMPLAUSIBLE, DEGENERATE = 0, 1, 2
#: ``--fail-on`` choices: ``implausible`` = any pose not plausible (implausible or
#: degenerate), ``degenerate`` = only degenerate poses, ``never`` = always succeed.
FAIL_ON: tuple[str, ...] = ("implausible", "degenerate", "never")
DEFAULT_BLOCK = 20_000
#: poses per kinematics chunk, so its float64 temporaries stay in a CPU cache; not a power of
#: two, whose row strides collide in the cache (measured on 2 cores: 2500 runs ~1.7x faster
#: than 4096 and ~2.5x faster than 8192)
KINEMATICS_CHUNK = 2500
DEFAULT_WORST = 10

FAMILY_SIZES: tuple[int, ...] = (skeleton.NUM_BONES, 4, 4, skeleton.NUM_ANGLES)
#: first item of each family in the 43 stacked items, and the end
FAMILY_OFFSETS = np.cumsum((0, *FAMILY_SIZES))
ITEM_FAMILY = np.repeat(np.arange(len(FAMILIES)), FAMILY_SIZES)
ITEM_NAMES: tuple[str, ...] = (
    *skeleton.BONE_NAMES,
    *skeleton.PALM_NAMES,
    *skeleton.PALM_NAMES,
    *skeleton.ANGLE_NAMES,
)
NUM_ITEMS = len(ITEM_NAMES)
DEG = 180.0 / math.pi
#: library unit → display unit per family (radians → degrees for the angle families)
DISPLAY_FACTOR: dict[str, float] = {
    "bone_length": 1.0,
    "palm_curvature": 1.0,
    "palm_angle": DEG,
    "joint_angle": DEG,
}


def display_unit(family: str, limits: Limits) -> str:
    """Unit of a family's magnitudes in human-facing output."""
    if family == "bone_length":
        return "fraction"
    if family == "palm_curvature":
        return f"1/{limits.length_unit}"
    return "deg"


def check_fail_on(fail_on: str) -> str:
    """Return ``fail_on`` or raise a :class:`UsageError` naming the choices."""
    if fail_on not in FAIL_ON:
        raise UsageError(f"--fail-on must be one of {', '.join(FAIL_ON)}, got {fail_on!r}")
    return fail_on


def check_group_by(group_by: str) -> str:
    """``--group-by`` of validate: a :data:`bmc_calib.personal.GROUP_BY` value or ``off``."""
    if group_by not in (*personal.GROUP_BY, "off"):
        raise UsageError(f"--group-by must be one of {', '.join(personal.GROUP_BY)}, off")
    return group_by


def check_tolerance_scale(scale: float) -> float:
    """Return ``scale`` as a float or raise a :class:`UsageError` (must be finite, ``>= 0``)."""
    value = float(scale)
    if not (math.isfinite(value) and value >= 0.0):
        raise UsageError(f"--tolerance-scale must be a finite number >= 0, got {scale}")
    return value


# --------------------------------------------------------------------------- results
@dataclass
class Block:
    """Per-pose results of ``n`` consecutive poses of one source (library units).

    ``verdict`` ``(n,)`` uint8 index into :data:`VERDICTS`; ``degenerate_reason`` ``(n,)``
    bit mask of :data:`bmc_calib.kinematics.DEGENERATE_REASONS`; ``magnitudes`` and
    ``exceeded`` ``(n, 43)``; ``severity`` ``(n,)``; ``worst_item`` ``(n,)`` the most severe
    exceeded item (−1 when none); ``errors`` ``(n, 2)`` mean per-joint error in mm
    (root-aligned, Procrustes-aligned; NaN for poses that could not be compared) or None.
    """

    source: int
    first_frame: int
    verdict: np.ndarray
    degenerate_reason: np.ndarray
    magnitudes: np.ndarray
    exceeded: np.ndarray
    severity: np.ndarray
    worst_item: np.ndarray
    errors: np.ndarray | None = None
    #: ``(n,)`` frame numbers when the poses are not consecutive frames (frames were dropped
    #: while reading, e.g. by ``--side``); None: ``first_frame …``
    frame_numbers: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.verdict.shape[0])

    @property
    def frames(self) -> np.ndarray:
        """Frame index of each pose within its source, ``(n,)``."""
        if self.frame_numbers is not None:
            return self.frame_numbers
        return self.first_frame + np.arange(len(self), dtype=np.int64)

    def family_max(self) -> tuple[np.ndarray, np.ndarray]:
        """Per family, the largest magnitude ``(n, 4)`` and its item within the family."""
        n = len(self)
        top = np.empty((n, len(FAMILIES)))
        arg = np.empty((n, len(FAMILIES)), np.int64)
        for f in range(len(FAMILIES)):
            part = self.magnitudes[:, FAMILY_OFFSETS[f] : FAMILY_OFFSETS[f + 1]]
            arg[:, f] = np.argmax(part, axis=1) if n else 0
            top[:, f] = np.take_along_axis(part, arg[:, f : f + 1], axis=1)[:, 0] if n else 0
        return top, arg


@dataclass
class WorstPose:
    """One of the worst poses, explained. ``magnitude`` is in ``unit`` (display units)."""

    source: str
    frame: int
    family: str
    item: str
    magnitude: float
    unit: str
    direction: str
    violations: int
    severity: float
    reason: str


@dataclass
class DegenerateExample:
    """A degenerate pose and why kinematics could not measure it."""

    source: str
    frame: int
    reasons: list[str]


@dataclass
class Validation:
    """Everything a validation run found; counts over all ``poses``.

    ``family_poses`` ``(4,)`` / ``item_poses`` ``(43,)``: poses with some item of the family /
    that item above tolerance. ``item_max`` ``(43,)``: largest magnitude seen (library
    units). ``tolerance`` ``(43,)``: the effective tolerances (stored × scale).
    ``verdict`` ``(poses,)``: per-pose verdict codes in input order.
    """

    limits: Limits
    poses: int
    verdict_counts: np.ndarray
    degenerate_reasons: dict[str, int]
    family_poses: np.ndarray
    item_poses: np.ndarray
    item_max: np.ndarray
    tolerance: np.ndarray
    tolerance_scale: float
    sources: list[str]
    source_counts: np.ndarray
    verdict: np.ndarray
    worst: list[WorstPose] = field(default_factory=list)
    degenerate_examples: list[DegenerateExample] = field(default_factory=list)
    accuracy: metrics.Accuracy | None = None
    accuracy_unit: str = "mm"
    #: personal bone check (:mod:`bmc_calib.personal`): how groups were formed (None: off),
    #: how many, poses flagged by it, per bone ``(20,)`` poses flagged and largest magnitude
    personal_group_by: str | None = None
    personal_groups: int = 0
    personal_poses: int = 0
    personal_item_poses: np.ndarray | None = None
    personal_item_max: np.ndarray | None = None
    #: one line when most poses break the same items (:mod:`bmc_calib.diagnose`)
    mismatch: str | None = None

    def count(self, verdict: str) -> int:
        """Number of poses with this verdict."""
        return int(self.verdict_counts[VERDICTS.index(verdict)])

    def failed(self, fail_on: str = "implausible") -> bool:
        """Whether the poses ``fail_on`` names were found (see :data:`FAIL_ON`)."""
        check_fail_on(fail_on)
        if fail_on == "never":
            return False
        bad = self.count("degenerate")
        if fail_on == "implausible":
            bad += self.count("implausible")
        return bad > 0


# --------------------------------------------------------------------------- validator
class Validator:
    """Validate poses block by block and accumulate a :class:`Validation`.

    ``sources`` names the inputs (``source`` indices of :meth:`add` point into it);
    ``accuracy=True`` accumulates :mod:`bmc_calib.metrics` figures from the ``gt`` blocks.
    """

    def __init__(
        self,
        limits: Limits,
        *,
        tolerance_scale: float = 1.0,
        worst: int = DEFAULT_WORST,
        sources: Sequence[str] = ("array",),
        accuracy: bool = False,
    ) -> None:
        self.limits = limits
        self.scale = check_tolerance_scale(tolerance_scale)
        self.tol = tolerances(limits, self.scale)
        self.tolerance = np.concatenate([self.tol[f] for f in FAMILIES])
        self.severity_factor = _severity_factor(limits)
        self.worst = max(int(worst), 0)
        self.sources = list(sources)
        self.poses = 0
        self.verdict_counts = np.zeros(len(VERDICTS), np.int64)
        self.reason_counts = np.zeros(256, np.int64)
        self.family_poses = np.zeros(len(FAMILIES), np.int64)
        self.item_poses = np.zeros(NUM_ITEMS, np.int64)
        self.item_max = np.zeros(NUM_ITEMS)
        self.source_counts = np.zeros((len(self.sources), len(VERDICTS)), np.int64)
        self.verdicts: list[np.ndarray] = []
        self.accuracy = metrics.AccuracyAccumulator(len(VERDICTS)) if accuracy else None
        # running top-k of the worst poses (k = self.worst) and first degenerate poses
        self.top_severity = np.empty(0)
        self.top_source = np.empty(0, np.int64)
        self.top_frame = np.empty(0, np.int64)
        self.top_item = np.empty(0, np.int64)
        self.top_count = np.empty(0, np.int64)
        self.top_magnitude = np.empty(0)
        self.top_joints = np.empty((0, skeleton.NUM_JOINTS, 3))
        self.degenerate_examples: list[tuple[int, int, int]] = []
        self.personal_allowance = personal.allowance(limits)
        self.personal_poses = 0
        self.personal_item_poses = np.zeros(skeleton.NUM_BONES, np.int64)
        self.personal_item_max = np.zeros(skeleton.NUM_BONES)
        self.personal_used = False

    def add(
        self,
        joints: np.ndarray,
        source: int = 0,
        first_frame: int | np.ndarray = 0,
        *,
        gt: np.ndarray | None = None,
        mm_per_unit: float = 1.0,
        reference: np.ndarray | None = None,
    ) -> Block:
        """Validate ``(n, 21, 3)`` poses (frames ``first_frame …`` of source ``source``, or
        the ``(n,)`` frame numbers ``first_frame``).

        ``gt`` ``(n, 21, 3)`` ground truth in mm (only with ``accuracy=True``);
        ``mm_per_unit`` converts ``joints`` to mm for the accuracy figures; ``reference``
        ``(n, 20)`` each pose's own group median bone lengths turns on the personal check.
        """
        features = compute_features(joints, self.limits.normalization, chunk_size=KINEMATICS_CHUNK)
        v = compute_violations(features, self.limits)
        mags = v.stacked()
        over = exceeded(v, self.tol)
        exc = np.concatenate([over[f] for f in FAMILIES], axis=1)
        any_exc = exc.any(axis=1)
        if reference is not None:
            own = personal.personal_violation(
                features.bone_length, reference, self.personal_allowance
            )
            own_exc = (own > VERDICT_EPSILON) & ~v.degenerate[:, None]
            flagged = own_exc.any(axis=1)
            self.personal_used = True
            self.personal_poses += int(flagged.sum())
            self.personal_item_poses += np.count_nonzero(own_exc, axis=0)
            if own.size:
                np.maximum(self.personal_item_max, own.max(axis=0), out=self.personal_item_max)
            any_exc = any_exc | flagged
        verdict = np.where(v.degenerate, DEGENERATE, np.where(any_exc, IMPLAUSIBLE, PLAUSIBLE))
        verdict = verdict.astype(np.uint8)
        n = len(verdict)
        # severities and per-item counts only for the (usually few) implausible poses
        bad = np.flatnonzero(any_exc)
        bad_exc = exc[bad]
        sev_items = np.where(bad_exc, mags[bad] * self.severity_factor, 0.0)
        bad_item = np.argmax(sev_items, axis=1)
        severity = np.zeros(n)
        severity[bad] = np.take_along_axis(sev_items, bad_item[:, None], axis=1)[:, 0]
        worst_item = np.full(n, -1, np.int64)
        worst_item[bad] = np.where(severity[bad] > 0, bad_item, -1)

        counts = np.bincount(verdict, minlength=len(VERDICTS))
        self.poses += n
        self.verdict_counts += counts
        self.source_counts[source] += counts
        self.reason_counts += np.bincount(features.degenerate_reason, minlength=256)
        if bad.size:
            self.item_poses += np.count_nonzero(bad_exc, axis=0)
            hit = np.logical_or.reduceat(bad_exc, FAMILY_OFFSETS[:-1], axis=1)
            self.family_poses += np.count_nonzero(hit, axis=0)
        if n:
            np.maximum(self.item_max, mags.max(axis=0), out=self.item_max)
        self.verdicts.append(verdict)
        numbered = np.ndim(first_frame) > 0
        frames = (
            np.asarray(first_frame, dtype=np.int64)
            if numbered
            else int(first_frame) + np.arange(n, dtype=np.int64)
        )
        self._keep_worst(joints, source, frames, severity, worst_item, exc, mags)
        self._keep_degenerate(source, frames, features.degenerate_reason)

        errors = None
        if self.accuracy is not None:
            if gt is None:
                raise ValueError("this Validator accumulates accuracy: pass gt")
            pred_mm = np.asarray(joints, dtype=np.float64) * mm_per_unit
            errors = self.accuracy.add(pred_mm, gt, verdict)
        return Block(
            source=source,
            first_frame=int(frames[0]) if n else (0 if numbered else int(first_frame)),
            frame_numbers=frames if numbered else None,
            verdict=verdict,
            degenerate_reason=features.degenerate_reason,
            magnitudes=mags,
            exceeded=exc,
            severity=severity,
            worst_item=worst_item,
            errors=errors,
        )

    def _keep_worst(
        self,
        joints: np.ndarray,
        source: int,
        frames: np.ndarray,
        severity: np.ndarray,
        worst_item: np.ndarray,
        exc: np.ndarray,
        mags: np.ndarray,
    ) -> None:
        k = self.worst
        rows = np.flatnonzero(severity > 0)
        if k == 0 or rows.size == 0:
            return
        if rows.size > k:
            rows = rows[np.argpartition(-severity[rows], k - 1)[:k]]
        item = worst_item[rows]
        sev = np.concatenate((self.top_severity, severity[rows]))
        src = np.concatenate((self.top_source, np.full(rows.size, source, np.int64)))
        frame = np.concatenate((self.top_frame, frames[rows]))
        order = np.lexsort((frame, src, -sev))[:k]
        self.top_severity = sev[order]
        self.top_source = src[order]
        self.top_frame = frame[order]
        self.top_item = np.concatenate((self.top_item, item))[order]
        self.top_count = np.concatenate((self.top_count, exc[rows].sum(axis=1)))[order]
        self.top_magnitude = np.concatenate((self.top_magnitude, mags[rows, item]))[order]
        new_joints = np.asarray(joints[rows], dtype=np.float64).reshape(-1, skeleton.NUM_JOINTS, 3)
        self.top_joints = np.concatenate((self.top_joints, new_joints))[order]

    def _keep_degenerate(self, source: int, frames: np.ndarray, reason: np.ndarray) -> None:
        room = self.worst - len(self.degenerate_examples)
        if room <= 0:
            return
        rows = np.flatnonzero(reason)[:room]
        self.degenerate_examples += [
            (source, int(frames[r]), int(reason[r])) for r in rows.tolist()
        ]

    def result(self) -> Validation:
        """The accumulated :class:`Validation` (explanations built for the worst poses)."""
        reasons = {name: 0 for name in DEGENERATE_REASONS}
        for code in np.flatnonzero(self.reason_counts[1:]) + 1:
            for name in degenerate_reason_names(int(code)):
                reasons[name] += int(self.reason_counts[code])
        return Validation(
            limits=self.limits,
            poses=self.poses,
            verdict_counts=self.verdict_counts.copy(),
            degenerate_reasons=reasons,
            family_poses=self.family_poses.copy(),
            item_poses=self.item_poses.copy(),
            item_max=self.item_max.copy(),
            tolerance=self.tolerance.copy(),
            tolerance_scale=self.scale,
            sources=list(self.sources),
            source_counts=self.source_counts.copy(),
            verdict=np.concatenate(self.verdicts) if self.verdicts else np.empty(0, np.uint8),
            worst=self._explain_worst(),
            degenerate_examples=[
                DegenerateExample(self.sources[s], f, degenerate_reason_names(code))
                for s, f, code in self.degenerate_examples
            ],
            accuracy=None if self.accuracy is None else self.accuracy.result(),
            personal_poses=self.personal_poses,
            personal_item_poses=self.personal_item_poses.copy() if self.personal_used else None,
            personal_item_max=self.personal_item_max.copy() if self.personal_used else None,
        )

    def _explain_worst(self) -> list[WorstPose]:
        if self.top_severity.size == 0:
            return []
        features = compute_features(self.top_joints, self.limits.normalization)
        points = joint_angle_points(
            features.flexion_abduction, self.limits.joint_angle.flexion_center
        )
        out = []
        for i in range(self.top_severity.size):  # at most `worst` poses
            item = int(self.top_item[i])
            family = FAMILIES[ITEM_FAMILY[item]]
            k = item - int(FAMILY_OFFSETS[ITEM_FAMILY[item]])
            if family == "joint_angle":
                value = points[i, k]
            else:
                value = getattr(features, family)[i, k]
            magnitude = float(self.top_magnitude[i]) * DISPLAY_FACTOR[family]
            direction, reason = explain(self.limits, family, k, value, magnitude)
            others = int(self.top_count[i]) - 1
            if others > 0:
                reason += f" (and {others} more violation{'s' if others > 1 else ''})"
            out.append(
                WorstPose(
                    source=self.sources[int(self.top_source[i])],
                    frame=int(self.top_frame[i]),
                    family=family,
                    item=ITEM_NAMES[item],
                    magnitude=magnitude,
                    unit=display_unit(family, self.limits),
                    direction=direction,
                    violations=int(self.top_count[i]),
                    severity=float(self.top_severity[i]),
                    reason=reason,
                )
            )
        return out


def _severity_factor(limits: Limits) -> np.ndarray:
    """Per item, degree-equivalents per library unit of magnitude (module docstring)."""
    width = limits.palm_curvature.max - limits.palm_curvature.min
    width = np.where(width > 0, width, 1.0)
    return np.concatenate(
        (
            np.full(skeleton.NUM_BONES, 100.0),
            10.0 / width,
            np.full(4, DEG),
            np.full(skeleton.NUM_ANGLES, DEG),
        )
    )


# --------------------------------------------------------------------------- explanations
_BONE_PARTS = ("metacarpal", "proximal phalanx", "middle phalanx", "distal phalanx")
_THUMB_PARTS = ("wrist-to-CMC bone", "metacarpal", "proximal phalanx", "distal phalanx")


def bone_label(k: int) -> str:
    """Anatomical name of bone ``k`` (``bone 6`` → ``index middle phalanx``)."""
    finger, part = divmod(k, 4)
    parts = _THUMB_PARTS if finger == 0 else _BONE_PARTS
    return f"{skeleton.FINGERS[finger]} {parts[part]}"


def joint_label(a: int) -> str:
    """Readable name of joint-angle id ``a`` (``index_pip`` → ``index PIP``)."""
    finger, joint = skeleton.ANGLE_NAMES[a].split("_")
    return f"{finger} {joint.upper()}"


def palm_label(i: int) -> str:
    """``thumb-index`` → ``thumb and index``."""
    return " and ".join(skeleton.PALM_NAMES[i].split("-"))


def item_label(item: int) -> str:
    """Readable name of one of the 43 items (``index middle phalanx``, ``index PIP``, …)."""
    family = int(ITEM_FAMILY[item])
    k = item - int(FAMILY_OFFSETS[family])
    if FAMILIES[family] == "bone_length":
        return bone_label(k)
    if FAMILIES[family] == "joint_angle":
        return joint_label(k)
    return palm_label(k)


def _amount(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 9.95 else f"{x:.1f}"


def explain(
    limits: Limits, family: str, k: int, value: object, magnitude: float
) -> tuple[str, str]:
    """Direction word and sentence for item ``k`` of ``family`` (``magnitude`` in display units).

    ``value`` is the pose's feature: a bone length, curvature or palm angle (library units),
    or the joint's (unwrapped flexion, abduction) point ``(2,)``. Directions: bone ``long`` /
    ``short``; palm curvature ``above`` (more cupped) / ``below`` (flatter); palm angle
    ``wider`` / ``narrower``; joint angle from the offset of the point to the nearest point of
    its region: mostly along flexion → ``flexion`` (bent further towards the palm) or
    ``extension`` (bent backwards), mostly along abduction → ``sideways``.
    """
    if family == "bone_length":
        long = float(value) > limits.bone_length.max[k]
        pct = _amount(100.0 * magnitude)
        word = "long" if long else "short"
        return word, f"{skeleton.BONE_NAMES[k]} ({bone_label(k)}) {pct} % too {word}"
    if family == "palm_curvature":
        above = float(value) > limits.palm_curvature.max[k]
        if above:
            return "above", (
                f"palm between {palm_label(k)} more cupped than its range "
                f"(curvature +{magnitude:.2f})"
            )
        return "below", (
            f"palm between {palm_label(k)} flatter than its range (curvature −{magnitude:.2f})"
        )
    if family == "palm_angle":
        wider = float(value) > limits.palm_angle.max[k]
        word = "wider" if wider else "narrower"
        return word, (
            f"angle between the {palm_label(k)} root bones {_amount(magnitude)}° {word} "
            "than its range"
        )
    point = np.asarray(value, dtype=np.float64)
    hull = limits.joint_angle.hulls[k]
    d_flex, d_abd = point - nearest_on_polygon(point[None], hull)[0]
    name, amount = joint_label(k), _amount(magnitude)
    if abs(d_flex) >= abs(d_abd):
        if d_flex > 0:
            return "flexion", f"{name} bent {amount}° further than its region allows"
        return "extension", f"{name} bent {amount}° backwards beyond its region"
    if k % 5 == 0:  # thumb: positive abduction moves away from the index finger
        side = "away from the index" if d_abd > 0 else "towards the index"
    else:  # fingers: positive abduction moves towards the thumb side
        side = "towards the thumb" if d_abd > 0 else "towards the little finger"
    return "sideways", f"{name} bent {amount}° sideways ({side}) beyond its region"


# --------------------------------------------------------------------------- reading
def _mm_factor(source: Source, unit: str | None) -> float:
    """Millimetres per unit of ``source`` (its own unit, else ``unit``)."""
    own = metrics.mm_per_unit(source.unit)
    given = None if unit is None else metrics.mm_per_unit(unit)
    if unit is not None and given is None:
        raise UsageError(f"--unit must be one of mm, cm, m, got {unit!r}")
    if own is not None:
        if given is not None and given != own:
            raise UsageError(
                f"{source.path}: the file says its unit is {source.unit!r} but --unit is "
                f"{unit!r}; drop --unit or fix it"
            )
        return own
    if given is None:
        raise UsageError(
            f"{source.path}: length unit unknown ({source.format} files do not say it); "
            "pass --unit mm, cm or m to compare with --gt"
        )
    return given


class _FrameStream:
    """Ground-truth frames of several sources as one stream, taken ``n`` frames at a time (mm)."""

    def __init__(self, sources: Sequence[Source], unit: str | None) -> None:
        self.label = ", ".join(s.path for s in sources)
        self.factors = [_mm_factor(s, unit) for s in sources]
        self.sources = sources
        self.chunks = self._chunks()
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.taken = 0

    def _chunks(self) -> Iterator[np.ndarray]:
        for src, factor in zip(self.sources, self.factors, strict=True):
            for chunk in src.chunks():
                yield np.asarray(chunk.joints, dtype=np.float64) * factor

    def take(self, n: int) -> np.ndarray:
        while self.buffered < n:
            nxt = next(self.chunks, None)
            if nxt is None:
                raise BadInputError(
                    f"{self.label}: the ground truth ends after {self.taken + self.buffered} "
                    f"frames but the inputs have more; {GT_RULE}"
                )
            self.buffer.append(nxt)
            self.buffered += nxt.shape[0]
        data = np.concatenate(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        out, rest = data[:n], data[n:]
        self.buffer = [rest] if rest.shape[0] else []
        self.buffered = rest.shape[0]
        self.taken += n
        return out

    def check_exhausted(self) -> None:
        extra = self.buffered + sum(c.shape[0] for c in self.chunks)
        if extra:
            raise BadInputError(
                f"{self.label}: the ground truth has {self.taken + extra} frames but the inputs "
                f"{self.taken}; {GT_RULE}"
            )


#: the end of every frame-count mismatch between the inputs and ``--gt``: files after one
#: ``--gt`` are inputs (the option takes one value; ``--gt a b`` makes ``b`` an input)
GT_RULE = (
    "--gt needs one frame per input frame, in the same order (several ground-truth files: "
    "one --gt each, --gt a.npy --gt b.npy)"
)


def _check_lengths(sources: Sequence[Source], limits: Limits, unit: str | None) -> None:
    """Refuse inputs whose length unit contradicts a bundle fitted without normalisation."""
    if limits.normalization != "none":
        return
    wanted = metrics.mm_per_unit(limits.length_unit)
    for src in sources:
        own = metrics.mm_per_unit(src.unit) or (metrics.mm_per_unit(unit) if unit else None)
        if wanted is not None and own is not None and own != wanted:
            raise BadInputError(
                f"{src.path}: poses are in {src.unit if src.unit != 'unknown' else unit} but "
                f"the bundle was fitted without normalisation in {limits.length_unit}; "
                "convert the poses or use a reference-bone bundle"
            )


ProgressFn = Callable[[str, int, "int | None"], None]


class _PersonalGroups:
    """Group ids for the personal check: per reader label, per file, or none; sides apart."""

    def __init__(self, group_by: str) -> None:
        if group_by not in personal.GROUP_BY:
            raise UsageError(f"--group-by must be one of {', '.join(personal.GROUP_BY)}")
        self.group_by = group_by
        self.index: dict[str, int] = {}

    def ids(self, source: int, chunk: Chunk) -> np.ndarray:
        n = chunk.joints.shape[0]
        side = np.zeros(n, np.int64) if chunk.mirrored is None else chunk.mirrored.astype(int)
        if self.group_by == "label" and chunk.group is not None:
            labels = np.char.add(np.asarray(chunk.group).astype(str), "|")
        elif self.group_by == "none":
            labels = np.full(n, "all|")
        else:
            labels = np.full(n, f"{source}|")
        keys = np.char.add(labels, side.astype(str))
        uniq, inverse = np.unique(keys, return_inverse=True)
        ids = np.asarray([self.index.setdefault(str(k), len(self.index)) for k in uniq])
        return ids[inverse.reshape(-1)]


def _personal_medians(
    sources: Sequence[Source],
    groups: _PersonalGroups,
    normalization: str,
    scratch: Scratch | None = None,
) -> tuple[np.ndarray, list[ChunkTape | None]]:
    """First pass: ``(G, 20)`` median normalised bone lengths of each personal group, and
    per source its chunks on ``scratch`` (a :class:`bmc_calib.scratch.ChunkTape`, None for
    ``.npy`` files, read again), so that no input is parsed twice."""
    lengths, ids = [], []
    tapes: list[ChunkTape | None] = []
    for i, src in enumerate(sources):
        step = max(1, (src.frames or 0) // personal.MEDIAN_FRAMES)
        start = 0
        tape: ChunkTape | None = None
        if scratch is not None and not src.rereadable:
            tape = ChunkTape(scratch, f"validate_{i:05d}.bin")
        for chunk in src.chunks():
            n = chunk.joints.shape[0]
            chunk_ids = groups.ids(i, chunk)
            if tape is not None:
                tape.append(chunk.joints, chunk_ids, np.zeros(n, np.uint8))
                tape.rows.append(_compact_rows(chunk.rows))
            pick = np.arange((-start) % step, n, step)
            length, valid = quick_bone_lengths(chunk.joints[pick], normalization)
            lengths.append(length[valid])
            ids.append(chunk_ids[pick][valid])
            start += n
        if tape is not None:
            tape.finish()
        tapes.append(tape)
    if not lengths:
        return np.ones((0, skeleton.NUM_BONES)), tapes
    medians = personal.group_medians(
        np.concatenate(lengths), np.concatenate(ids), len(groups.index)
    )
    return medians, tapes


def _compact_rows(rows: np.ndarray | None) -> np.ndarray | int | None:
    """A chunk's frame numbers as kept beside a tape: the first one when they run without
    a gap (the usual case: 8 bytes a chunk instead of 8 a pose)."""
    if rows is None or rows.size == 0 or int(rows[-1]) - int(rows[0]) + 1 != rows.size:
        return rows
    return int(rows[0])


def _second_pass(
    i: int, src: Source, tape: ChunkTape | None, groups: _PersonalGroups | None
) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """``(joints, personal group ids or None, frame numbers or None)`` per chunk: replayed,
    or read again."""
    if tape is not None:
        for (joints, ids, _), rows in zip(tape.replay(), tape.rows, strict=True):
            if isinstance(rows, int):
                rows = rows + np.arange(joints.shape[0], dtype=np.int64)
            yield joints, ids, rows
        tape.remove()
        return
    for chunk in src.chunks():
        yield chunk.joints, None if groups is None else groups.ids(i, chunk), chunk.rows


def validate_sources(
    sources: Sequence[Source],
    limits: Limits,
    *,
    group_by: str | None = None,
    tolerance_scale: float = 1.0,
    worst: int = DEFAULT_WORST,
    gt: Sequence[Source] | None = None,
    unit: str | None = None,
    report: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    block_size: int = DEFAULT_BLOCK,
) -> Validation:
    """Validate every pose of ``sources`` (streamed) against ``limits``.

    ``gt``: ground-truth sources matched frame for frame (in order, across files) with the
    inputs; adds accuracy figures and needs known length units (the files' or ``unit``).
    ``report``: a ``.csv`` or ``.jsonl`` path written atomically, one row per pose
    (:class:`ReportWriter`); an existing file is refused unless ``force``. ``group_by``
    (``label``, ``file`` or ``none``; None = off) turns on the personal bone check
    (:mod:`bmc_calib.personal`), which needs two passes: the first (the only parse) keeps
    the canonical chunks on scratch disk for the second, except for ``.npy`` files, which
    are simply read again.
    """
    scale = check_tolerance_scale(tolerance_scale)
    groups = _PersonalGroups(group_by) if group_by is not None else None
    with contextlib.ExitStack() as scratch_stack:
        scratch = None
        medians = None
        tapes: list[ChunkTape | None] = [None] * len(sources)
        if groups is not None:
            scratch = scratch_stack.enter_context(
                Scratch(prefix="bmc-calib-validate-", label="validate")
            )
            medians, tapes = _personal_medians(sources, groups, limits.normalization, scratch)
        return _validate_pass(
            sources, limits, groups, medians, tapes, scale=scale, worst=worst, gt=gt,
            unit=unit, report=report, force=force, progress=progress, block_size=block_size,
        )  # fmt: skip


def _validate_pass(
    sources: Sequence[Source],
    limits: Limits,
    groups: _PersonalGroups | None,
    medians: np.ndarray | None,
    tapes: list[ChunkTape | None],
    *,
    scale: float,
    worst: int,
    gt: Sequence[Source] | None,
    unit: str | None,
    report: str | os.PathLike[str] | None,
    force: bool,
    progress: ProgressFn | None,
    block_size: int,
) -> Validation:
    kind = report_kind(report) if report is not None else None
    _check_lengths(sources, limits, unit)
    pred_mm = [_mm_factor(s, unit) for s in sources] if gt else [1.0] * len(sources)
    stream = _FrameStream(gt, unit) if gt else None
    if gt:
        _check_frame_totals(sources, gt)
    frames = [s.frames for s in sources]
    total = sum(f for f in frames if f is not None) if None not in frames else None
    report_progress = progress or (lambda stage, done, total: None)
    validator = Validator(
        limits,
        tolerance_scale=scale,
        worst=worst,
        sources=[s.path for s in sources],
        accuracy=stream is not None,
    )
    step = max(int(block_size), 1)
    with contextlib.ExitStack() as stack:
        writer = None
        if report is not None and kind is not None:
            tmp = stack.enter_context(atomic_path(report, force=force))
            handle = stack.enter_context(open(tmp, "w", encoding="utf-8", newline=""))
            writer = ReportWriter(handle, kind, validator.sources, accuracy=stream is not None)
        done = 0
        for i, src in enumerate(sources):
            frame = 0
            for chunk_joints, ids, rows in _second_pass(i, src, tapes[i], groups):
                ref = None
                if ids is not None and medians is not None:
                    ref = medians[ids]
                for start in range(0, chunk_joints.shape[0], step):
                    joints = chunk_joints[start : start + step]
                    n = joints.shape[0]
                    truth = stream.take(n) if stream is not None else None
                    # the records' own numbers: frames dropped while reading keep theirs
                    numbers = frame if rows is None else rows[start : start + step]
                    block = validator.add(
                        joints, i, numbers, gt=truth, mm_per_unit=pred_mm[i],
                        reference=None if ref is None else ref[start : start + step],
                    )  # fmt: skip
                    if writer is not None:
                        writer.write(block)
                    frame = int(block.frames[-1]) + 1 if n else frame
                    done += n
                report_progress("validating", done, total)
        if stream is not None:
            stream.check_exhausted()
    result = validator.result()
    if groups is not None:
        result.personal_group_by = groups.group_by
        result.personal_groups = len(groups.index)
    if result.poses and result.count("plausible") / result.poses <= 1 - diagnose.MISMATCH_SHARE:
        result.mismatch = _mismatch(sources, limits)
    return result


def _mismatch(sources: Sequence[Source], limits: Limits) -> str | None:
    """The diagnosis line for poses that mostly fail (first frames of the inputs)."""
    sample, layout = diagnose.first_frames(list(sources))
    try:
        found = diagnose.validation_mismatch(sample, layout, limits)
    except UsageError:  # a layout name the registry does not know: no alternatives
        return None
    return None if found is None else found.message()


def _check_frame_totals(sources: Sequence[Source], gt: Sequence[Source]) -> None:
    known = [s.frames for s in sources]
    truth = [s.frames for s in gt]
    if None in known or None in truth:
        return
    n_inputs, n_truth = sum(known), sum(truth)
    if n_inputs != n_truth:
        raise BadInputError(
            f"{', '.join(s.path for s in gt)}: the ground truth has {n_truth} frames but the "
            f"inputs {n_inputs}; {GT_RULE}"
        )


def validate_array(
    joints: np.ndarray,
    limits: Limits,
    *,
    tolerance_scale: float = 1.0,
    worst: int = DEFAULT_WORST,
    name: str = "array",
    block_size: int = DEFAULT_BLOCK,
    group: np.ndarray | None = None,
) -> Validation:
    """Validate canonical right-hand poses ``(N, 21, 3)`` already in memory.

    ``group`` ``(N,)`` (any labels) turns on the personal bone check with those groups.
    """
    arr = np.asarray(joints)
    if arr.ndim != 3 or arr.shape[1:] != (skeleton.NUM_JOINTS, 3):
        raise ValueError(f"joints must have shape (N, 21, 3), got {arr.shape}")
    validator = Validator(limits, tolerance_scale=tolerance_scale, worst=worst, sources=[name])
    reference = None
    if group is not None:
        labels = np.asarray(group)
        if labels.shape != (arr.shape[0],):
            raise ValueError(f"group must have shape ({arr.shape[0]},), got {labels.shape}")
        try:
            _, ids = np.unique(labels, return_inverse=True)
        except TypeError:  # e.g. None among the labels: nothing to sort them by
            raise ValueError(
                f"group labels must be numbers or strings of one kind, got {labels.dtype} "
                f"values such as {labels.reshape(-1)[:3].tolist()}"
            ) from None
        ids = ids.reshape(-1)
        lengths, valid = quick_bone_lengths(arr, limits.normalization)
        medians = personal.group_medians(lengths[valid], ids[valid], int(ids.max(initial=-1)) + 1)
        reference = medians[ids]
    step = max(int(block_size), 1)
    for start in range(0, arr.shape[0], step):
        ref = None if reference is None else reference[start : start + step]
        validator.add(arr[start : start + step], 0, start, reference=ref)
    result = validator.result()
    if group is not None:
        result.personal_group_by = "array"
        result.personal_groups = int(np.unique(np.asarray(group)).size)
    return result


# --------------------------------------------------------------------------- report
REPORT_KINDS: dict[str, str] = {".csv": "csv", ".jsonl": "jsonl"}


def report_kind(path: str | os.PathLike[str]) -> str:
    """``csv`` or ``jsonl`` from the report's suffix; a :class:`UsageError` otherwise."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in REPORT_KINDS:
        raise UsageError(f"{os.fspath(path)}: --report must end in .csv or .jsonl")
    return REPORT_KINDS[suffix]


def report_columns(accuracy: bool = False) -> list[str]:
    """Columns of a report row, in order (see :class:`ReportWriter`)."""
    cols = [
        "source",
        "frame",
        "verdict",
        "degenerate_reason",
        "violations",
        "worst_constraint",
        "bone_length_max",
        "bone_length_worst",
        "palm_curvature_max",
        "palm_curvature_worst",
        "palm_angle_max_deg",
        "palm_angle_worst",
        "joint_angle_max_deg",
        "worst_joint",
    ]
    if accuracy:
        cols += ["error_root_aligned_mm", "error_procrustes_mm"]
    return cols


def _csv_field(text: str) -> str:
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


_STRING_COLUMNS = frozenset(
    {
        "source",
        "verdict",
        "degenerate_reason",
        "worst_constraint",
        "bone_length_worst",
        "palm_curvature_worst",
        "palm_angle_worst",
        "worst_joint",
    }
)


class ReportWriter:
    """Write one row per pose to an open text file, CSV (with header) or JSON Lines.

    Columns (:func:`report_columns`): ``source`` path, ``frame`` index within it,
    ``verdict``, ``degenerate_reason`` (reason names joined by ``+``, empty unless
    degenerate), ``violations`` (number of items above tolerance), ``worst_constraint``
    (``family:item`` of the most severe one, empty when none), per family the largest
    magnitude (``bone_length_max`` as a fraction of the limit, ``palm_curvature_max`` in
    1 / bundle unit, ``palm_angle_max_deg`` and ``joint_angle_max_deg`` in degrees) and the item
    where it occurs (empty when the magnitude is 0; ``worst_joint`` for joint angles), and with
    ground truth the pose's mean per-joint error in mm after root and Procrustes alignment.
    Degenerate poses carry zero magnitudes (their verdict says why). Numbers are rounded to
    6 decimals. Rows are built column-wise with numpy string operations, no per-pose loop.
    """

    def __init__(
        self, handle: IO[str], kind: str, sources: Sequence[str], *, accuracy: bool = False
    ) -> None:
        if kind not in REPORT_KINDS.values():
            raise ValueError(f"unknown report kind {kind!r}")
        self.handle = handle
        self.kind = kind
        self.columns = report_columns(accuracy)
        self.accuracy = accuracy
        quote = json.dumps if kind == "jsonl" else _csv_field
        self.sources = [quote(s) for s in sources]
        self.verdicts = _text([quote(v) for v in VERDICTS])
        codes = ["+".join(degenerate_reason_names(c)) for c in range(1 << len(DEGENERATE_REASONS))]
        self.reasons = _text([quote(c) for c in codes])
        self.reason_mask = (1 << len(DEGENERATE_REASONS)) - 1
        labels = ["", *(f"{FAMILIES[ITEM_FAMILY[i]]}:{ITEM_NAMES[i]}" for i in range(NUM_ITEMS))]
        self.labels = _text([quote(s) for s in labels])
        self.family_names = [
            _text([quote(s) for s in ("", *ITEM_NAMES[FAMILY_OFFSETS[f] : FAMILY_OFFSETS[f + 1]])])
            for f in range(len(FAMILIES))
        ]
        self.null = "null" if kind == "jsonl" else ""
        if kind == "csv":
            handle.write(",".join(self.columns) + "\n")

    def write(self, block: Block) -> None:
        """Append the rows of one block."""
        n = len(block)
        if n == 0:
            return
        top, arg = block.family_max()
        shown = np.round(top * np.asarray([DISPLAY_FACTOR[f] for f in FAMILIES]), 6)
        named = np.where(shown > 0, arg + 1, 0)  # 0 → empty name
        values = {
            "source": _text(np.full(n, self.sources[block.source])),
            "frame": _text(block.frames),
            "verdict": self.verdicts[block.verdict],
            "degenerate_reason": self.reasons[block.degenerate_reason & self.reason_mask],
            "violations": _text(block.exceeded.sum(axis=1)),
            "worst_constraint": self.labels[block.worst_item + 1],
        }
        for f, family in enumerate(FAMILIES):
            suffix = "_deg" if DISPLAY_FACTOR[family] != 1.0 else ""
            shown_f = top[:, f] * DISPLAY_FACTOR[family]
            finite = np.isfinite(shown_f)  # never a bare inf / nan: null (jsonl), empty (csv)
            numbers = _numbers(np.where(finite, shown_f, 0.0))
            values[f"{family}_max{suffix}"] = np.where(finite, numbers, _text(self.null))
            key = "worst_joint" if family == "joint_angle" else f"{family}_worst"
            values[key] = self.family_names[f][named[:, f]]
        if self.accuracy:
            errors = block.errors if block.errors is not None else np.full((n, 2), np.nan)
            for c, key in enumerate(("error_root_aligned_mm", "error_procrustes_mm")):
                ok = np.isfinite(errors[:, c])
                numbers = _numbers(np.where(ok, errors[:, c], 0.0))
                values[key] = np.where(ok, numbers, _text(self.null))
        if self.kind == "csv":
            rows = _join([values[c] for c in self.columns], ",")
        else:
            parts = [np.char.add(_text(f'"{c}":'), values[c]) for c in self.columns]
            rows = np.char.add(np.char.add(_text("{"), _join(parts, ",")), _text("}"))
        self.handle.write("\n".join(rows.tolist()) + "\n")


#: variable-width strings (numpy >= 2) join ~15x faster than fixed-width ``str`` arrays
_TEXT = getattr(getattr(np, "dtypes", None), "StringDType", str)
_TEXT = _TEXT() if _TEXT is not str else str


def _text(values: object) -> np.ndarray:
    return np.asarray(values).astype(_TEXT)


def _numbers(x: np.ndarray) -> np.ndarray:
    """Finite floats as short decimal strings (6 decimals), vectorised."""
    return _text(np.round(np.asarray(x, dtype=np.float64), 6))


def _join(columns: list[np.ndarray], sep: str) -> np.ndarray:
    rows = _text(columns[0])
    for col in columns[1:]:  # a loop over columns, vectorised over rows
        rows = np.char.add(np.char.add(rows, sep), _text(col))
    return rows
