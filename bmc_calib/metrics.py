"""Pose accuracy against ground truth: per-joint position errors and 3D PCK AUC.

Shapes and units, once for the module: predictions and ground truth are joints
``(N, J, 3)`` (``J = 21`` in canonical order for the CLI) in one length unit, millimetres
for every number the CLI reports; errors come out in that unit, ``(N, J)`` per joint.

Alignments (what is removed before the error is measured):

- ``none``: raw positions;
- ``root``: both poses translated so their wrist (joint 0) is at the origin;
- ``procrustes``: the prediction mapped onto the ground truth by the similarity transform
  (uniform scale, rotation, translation; no reflection) that minimises the squared error,
  solved per pose in closed form (Umeyama 1991) with one batched SVD of the ``(N, 3, 3)``
  cross-covariances.

PCK AUC: ``PCK(t)`` is the fraction of joints whose error is at most ``t``; the AUC over
``[lo, hi]`` is ``1 / (hi − lo) · ∫_lo^hi PCK(t) dt``, computed exactly as the mean over
joints of ``clip((hi − max(e, lo)) / (hi − lo), 0, 1)`` (the limit of the usual trapezoid
over many thresholds; no threshold grid to choose). Common ranges are 0–50 mm and 20–50 mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bmc_calib.kinematics import COORDINATE_LIMIT

ALIGNMENTS: tuple[str, ...] = ("none", "root", "procrustes")
#: ``(lo, hi)`` millimetre ranges of the PCK AUCs the CLI reports.
AUC_RANGES: tuple[tuple[float, float], ...] = ((0.0, 50.0), (20.0, 50.0))
#: Millimetres per unit for the length units the CLI accepts.
MM_PER_UNIT: dict[str, float] = {
    "mm": 1.0,
    "millimetre": 1.0,
    "millimeter": 1.0,
    "cm": 10.0,
    "centimetre": 10.0,
    "centimeter": 10.0,
    "m": 1000.0,
    "metre": 1000.0,
    "meter": 1000.0,
}


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.shape != g.shape or p.ndim != 3 or p.shape[-1] != 3:
        raise ValueError(f"pred and gt must both have shape (N, J, 3), got {p.shape}, {g.shape}")
    return p, g


def root_align(joints: np.ndarray, root: int = 0) -> np.ndarray:
    """``(N, J, 3)`` joints translated so joint ``root`` is at the origin."""
    j = np.asarray(joints, dtype=np.float64)
    return j - j[:, root : root + 1]


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``pred`` ``(N, J, 3)`` mapped onto ``gt`` by the best similarity transform per pose.

    Minimises ``Σ_j ‖s R p_j + t − g_j‖²`` over scale ``s >= 0``, rotation ``R`` (det +1) and
    translation ``t``. A prediction with all joints at one point gets ``s = 0`` (every joint
    lands on the centroid of ``gt``); no NaN for finite input. A pose with a non-finite
    coordinate (in ``pred`` or ``gt``) comes out all NaN, as the root alignment leaves it,
    instead of failing the SVD of the whole batch.
    """
    p, g = _pair(pred, gt)
    with np.errstate(invalid="ignore"):  # (inf − inf in a non-finite pose: NaN, set below)
        mu_p = p.mean(axis=1, keepdims=True)
        mu_g = g.mean(axis=1, keepdims=True)
        pc, gc = p - mu_p, g - mu_g
        var_p = np.einsum("nij,nij->n", pc, pc)  # Σ ‖p_j − μ_p‖²
        cov = np.einsum("nji,njk->nik", gc, pc)  # Σ g_j p_jᵀ, (N, 3, 3)
    finite = np.isfinite(cov).all(axis=(1, 2)) & np.isfinite(var_p)
    cov = np.where(finite[:, None, None], cov, np.eye(3))
    u, sig, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    d = np.where(d == 0, 1.0, d)
    sig[:, 2] *= d
    u[:, :, 2] *= d[:, None]
    rot = u @ vt  # (N, 3, 3), det +1
    scale = sig.sum(axis=1) / np.where(var_p > 0, var_p, 1.0)
    scale = np.where(var_p > 0, scale, 0.0)
    aligned = scale[:, None, None] * np.einsum("nik,njk->nji", rot, pc) + mu_g
    return np.where(finite[:, None, None], aligned, np.nan)


def joint_errors(pred: np.ndarray, gt: np.ndarray, alignment: str = "root") -> np.ndarray:
    """Euclidean error ``(N, J)`` of each joint after ``alignment`` (see module docstring)."""
    p, g = _pair(pred, gt)
    if alignment == "root":
        p, g = root_align(p), root_align(g)
    elif alignment == "procrustes":
        p = procrustes_align(p, g)
    elif alignment != "none":
        raise ValueError(f"unknown alignment {alignment!r}; choose one of {ALIGNMENTS}")
    return np.linalg.norm(p - g, axis=-1)


def mpjpe(pred: np.ndarray, gt: np.ndarray, alignment: str = "root") -> float:
    """Mean per-joint position error over all poses and joints, in the input unit."""
    return float(joint_errors(pred, gt, alignment).mean())


def pck(errors: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Fraction of ``errors`` (any shape) at most each threshold; ``(T,)``."""
    e = np.sort(np.asarray(errors, dtype=np.float64).ravel())
    return np.searchsorted(e, np.asarray(thresholds, dtype=np.float64), side="right") / e.size


def auc_terms(errors: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Per-error contribution to the exact PCK AUC over ``[lo, hi]``; same shape as ``errors``.

    The AUC is the mean of these terms; summing them lets a caller accumulate over blocks.
    """
    if not hi > lo:
        raise ValueError(f"the AUC range must have hi > lo, got [{lo}, {hi}]")
    e = np.asarray(errors, dtype=np.float64)
    return np.clip((hi - np.maximum(e, lo)) / (hi - lo), 0.0, 1.0)


def pck_auc(errors: np.ndarray, lo: float = 0.0, hi: float = 50.0) -> float:
    """Exact area under the PCK curve over ``[lo, hi]``, normalised to ``[0, 1]``."""
    return float(auc_terms(errors, lo, hi).mean())


def mm_per_unit(unit: str) -> float | None:
    """Millimetres per ``unit`` (``mm``, ``cm``, ``m`` and their spelled-out names), or None."""
    return MM_PER_UNIT.get(unit.strip().lower())


# --------------------------------------------------------------------------- accumulation
@dataclass
class Accuracy:
    """Accuracy over all compared poses (millimetres; AUCs in ``[0, 1]``).

    ``auc_root`` / ``auc_procrustes`` map each ``(lo, hi)`` of :data:`AUC_RANGES` to the PCK
    AUC of root-aligned / Procrustes-aligned joint errors. ``by_group`` holds ``poses`` and
    both MPJPEs per group label (e.g. per verdict). ``skipped`` counts poses left out because
    a prediction or ground-truth coordinate was not finite or out of range (see
    :meth:`AccuracyAccumulator.add`).
    """

    poses: int
    skipped: int
    mpjpe_root: float | None
    mpjpe_procrustes: float | None
    auc_root: dict[tuple[float, float], float | None]
    auc_procrustes: dict[tuple[float, float], float | None]
    by_group: dict[int, dict[str, float | int | None]] = field(default_factory=dict)


class AccuracyAccumulator:
    """Accumulates errors block by block (bounded memory); see :class:`Accuracy`."""

    def __init__(self, groups: int = 1) -> None:
        self.groups = groups
        self.poses = 0
        self.skipped = 0
        self.sum_root = 0.0
        self.sum_pa = 0.0
        self.joints = 0
        self.auc_root = np.zeros(len(AUC_RANGES))
        self.auc_pa = np.zeros(len(AUC_RANGES))
        self.group_poses = np.zeros(groups, np.int64)
        self.group_root = np.zeros(groups)
        self.group_pa = np.zeros(groups)

    def add(
        self, pred_mm: np.ndarray, gt_mm: np.ndarray, group: np.ndarray | None = None
    ) -> np.ndarray:
        """Add ``(n, J, 3)`` poses in mm; returns per-pose mean errors ``(n, 2)`` (root, PA).

        Poses with a coordinate that is not finite or beyond
        :data:`bmc_calib.kinematics.COORDINATE_LIMIT` mm (where the squares of the alignment
        would overflow) get NaN there and are counted as skipped.
        ``group`` ``(n,)`` ints in ``[0, groups)`` label each pose for :attr:`Accuracy.by_group`.
        """
        p, g = _pair(pred_mm, gt_mm)
        n = p.shape[0]
        out = np.full((n, 2), np.nan)
        with np.errstate(invalid="ignore"):  # ``<=`` is False for NaN: not compared
            ok = (np.abs(p) <= COORDINATE_LIMIT).all(axis=(1, 2))
            ok &= (np.abs(g) <= COORDINATE_LIMIT).all(axis=(1, 2))
        self.skipped += int(n - ok.sum())
        if not ok.any():
            return out
        p, g = p[ok], g[ok]
        root = joint_errors(p, g, "root")
        pa = joint_errors(p, g, "procrustes")
        out[ok, 0] = root.mean(axis=1)
        out[ok, 1] = pa.mean(axis=1)
        self.poses += int(ok.sum())
        self.joints += root.size
        self.sum_root += float(root.sum())
        self.sum_pa += float(pa.sum())
        for r, (lo, hi) in enumerate(AUC_RANGES):
            self.auc_root[r] += float(auc_terms(root, lo, hi).sum())
            self.auc_pa[r] += float(auc_terms(pa, lo, hi).sum())
        labels = np.zeros(int(ok.sum()), np.int64) if group is None else np.asarray(group)[ok]
        self.group_poses += np.bincount(labels, minlength=self.groups)
        self.group_root += np.bincount(labels, out[ok, 0], minlength=self.groups)
        self.group_pa += np.bincount(labels, out[ok, 1], minlength=self.groups)
        return out

    def result(self) -> Accuracy:
        """The accumulated :class:`Accuracy` (``None`` where no pose was compared)."""

        def mean(total: float, count: int) -> float | None:
            return total / count if count else None

        by_group: dict[int, dict[str, float | int | None]] = {
            k: {
                "poses": int(self.group_poses[k]),
                "mpjpe_root": mean(self.group_root[k], int(self.group_poses[k])),
                "mpjpe_procrustes": mean(self.group_pa[k], int(self.group_poses[k])),
            }
            for k in range(self.groups)
        }
        return Accuracy(
            poses=self.poses,
            skipped=self.skipped,
            mpjpe_root=mean(self.sum_root, self.joints),
            mpjpe_procrustes=mean(self.sum_pa, self.joints),
            auc_root={rng: mean(self.auc_root[r], self.joints) for r, rng in enumerate(AUC_RANGES)},
            auc_procrustes={
                rng: mean(self.auc_pa[r], self.joints) for r, rng in enumerate(AUC_RANGES)
            },
            by_group=by_group,
        )
