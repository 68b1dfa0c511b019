"""Differentiable biomechanical-constraint loss (BMC, Spurr et al., ECCV 2020) in PyTorch.

:class:`BMCLoss` reads a limits bundle and penalises implausible 3D hand poses with exactly the
violation magnitudes of :mod:`bmc_calib.violations` (DESIGN §7), computed by a PyTorch mirror
of :mod:`bmc_calib.kinematics` (DESIGN §4). A test proves both give the same numbers.

Conventions (once for the whole module):

- Input joints ``(..., 21, 3)``: canonical joint order (:mod:`bmc_calib.skeleton`), any batch
  shape (a single pose ``(21, 3)``, ``(B, 21, 3)``, ``(B, T, 21, 3)``), any length unit the
  bundle accepts: under the bundle's default ``reference-bone`` normalisation the loss
  normalises each pose itself (joint 9 to the origin, ‖j0 − j9‖ = 1), so millimetres, metres
  or network units all give the same loss; under ``none`` the input must be in the bundle's
  ``length_unit``. Never normalise by hand.
- ``is_left``: a bool tensor of the batch shape (size-1 axes broadcast), or a Python bool;
  ``True`` poses are mirrored (x → −x) into right hands first, as
  :func:`bmc_calib.skeleton.mirror` does.
- Angles are radians; bone-length magnitudes are relative to the violated interval edge
  (0.2 = 20 % too long); palm curvature is in 1 / length unit.
- Floating point: float64 input is computed in float64; every other dtype in float32.
- Degenerate poses (DESIGN §4.7: non-finite or out-of-range coordinate, zero bone, coincident
  MCPs, parallel root bones, folded palm; the same tests and thresholds as
  :mod:`bmc_calib.kinematics`) get
  magnitude 0, contribute 0 to the loss and receive an exactly zero gradient: the feature
  chain (:mod:`bmc_calib.torch_chain`) runs per pose without autograd and its hand-derived
  backward sets every value of a degenerate pose to 0 (NaN and infinities first replaced,
  then a product with the 0/1 mask), so no NaN or infinity can reach another pose or a
  gradient.

Everything in :meth:`BMCLoss.forward` is branch-free tensor code (no ``.item()``, no boolean
indexing, no host synchronisation), vectorised over poses, fingers and all 15 joint-angle
hulls at once, and ``torch.compile``-able.

This module and :mod:`bmc_calib.torch_chain`, which only it imports, import PyTorch; nothing
else in :mod:`bmc_calib` does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

try:
    import torch
    from torch import nn
    from torch.autograd.function import once_differentiable
except ModuleNotFoundError as exc:  # the optional extra is not installed
    if exc.name != "torch":
        raise
    raise ImportError(
        "bmc_calib.torch needs PyTorch, which is not installed: pip install 'bmc-calib[torch]'"
    ) from exc

from bmc_calib import kinematics, personal, skeleton
from bmc_calib.errors import BadInputError, UsageError
from bmc_calib.limits import Limits
from bmc_calib.torch_chain import (
    FEATURE_ROWS,
    FusedSaved,
    Rotation,
    Saved,
    accelerator_path,
    chain_backward,
    chain_forward,
    comparison_mask,
    fused_hull_distance,
    fused_path,
    joined_slots,
    out_slot,
    warm_constants,
)

__all__ = [
    "FAMILIES",
    "REDUCTIONS",
    "TERMS",
    "BMCLoss",
    "TorchFeatures",
    "compute_features",
]

#: Magnitude families, as in :data:`bmc_calib.violations.FAMILIES`.
FAMILIES: tuple[str, ...] = ("bone_length", "palm_curvature", "palm_angle", "joint_angle")
#: Loss terms and the order of ``weights``; ``palm`` = palm curvature + palm angle.
TERMS: tuple[str, ...] = ("bone_length", "palm", "joint_angle")
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")

_TWO_PI = 2.0 * math.pi
try:  # torch >= 2.3
    from torch.compiler import is_compiling as _is_compiling
except ImportError:  # pragma: no cover
    from torch._dynamo import is_compiling as _is_compiling


class TorchFeatures(NamedTuple):
    """Per-pose features, batch shape ``S`` = the input's leading shape.

    ``bone_length`` ``S + (20,)`` (normalised unit), ``palm_curvature`` ``S + (4,)``
    (1 / normalised unit), ``palm_angle`` ``S + (4,)`` radians, ``flexion_abduction``
    ``S + (15, 2)`` radians (flexion in (−π, π], abduction in [−π/2, π/2]), ``degenerate``
    ``S`` bool. Degenerate poses have all features 0, as in :mod:`bmc_calib.kinematics`.
    """

    bone_length: torch.Tensor
    palm_curvature: torch.Tensor
    palm_angle: torch.Tensor
    flexion_abduction: torch.Tensor
    degenerate: torch.Tensor


# --------------------------------------------------------------------------- features
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _flat_joints(joints: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(..., 21, 3)`` → ``(N, 21, 3)`` in the compute dtype, and the batch shape ``S``."""
    if not isinstance(joints, torch.Tensor):
        joints = torch.as_tensor(joints)
    if joints.dim() < 2 or tuple(joints.shape[-2:]) != (skeleton.NUM_JOINTS, 3):
        raise BadInputError(f"joints must have shape (..., 21, 3), got {tuple(joints.shape)}")
    batch = tuple(joints.shape[:-2])
    flat = joints.to(_compute_dtype(joints.dtype)).reshape(-1, skeleton.NUM_JOINTS, 3)
    return flat, batch


def _mirror_sign(
    is_left: torch.Tensor | bool | None,
    batch: tuple[int, ...],
    joints: torch.Tensor,
    always: bool = False,
) -> torch.Tensor | None:
    """``is_left`` in any accepted form → ``(N,)`` ±1 in the joints' dtype (−1 mirrors), or
    None for "no left hands" unless ``always`` (compiled code: one graph for every form)."""
    n = joints.shape[0]
    if is_left is None or is_left is False:
        if not always:
            return None
        return joints.new_ones(n)
    if is_left is True:
        return joints.new_full((n,), -1.0)
    left = torch.as_tensor(is_left, device=joints.device)
    if left.dtype != torch.bool:  # (a 0/1 int or float tensor would scale x, not mirror it)
        raise BadInputError(f"is_left must be bool (a bool, or bool per pose), got {left.dtype}")
    if not _fits_batch(tuple(left.shape), batch):
        raise BadInputError(
            f"is_left has shape {tuple(left.shape)} for poses of batch shape {batch}: give one "
            f"of shape {batch}, or with size-1 axes where one flag serves many, e.g. "
            f"{(*batch[:1], *(1,) * (len(batch) - 1))}"
        )
    left = torch.broadcast_to(left, batch).reshape(n)
    return 1.0 - 2.0 * left.to(joints.dtype)


def _fits_batch(shape: tuple[int, ...], batch: tuple[int, ...]) -> bool:
    """Whether a per-pose tensor of ``shape`` (``()``, or as many axes as ``batch``, each of
    its size or 1) gives each pose of the batch its own value. Broadcasting alone would also
    take ``(B,)`` for a batch ``(B, T)`` with ``B == T`` — along the wrong axis."""
    if shape == ():
        return True
    return len(shape) == len(batch) and all(s in (1, b) for s, b in zip(shape, batch, strict=True))


def _group_labels(group: object, batch: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``group=``: integer labels of the batch shape → ``(N,)`` (one clear error otherwise)."""
    labels = torch.as_tensor(group, device=device)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise BadInputError(f"group must hold integer labels, got {labels.dtype}")
    if tuple(labels.shape) != batch:
        raise BadInputError(
            f"group has shape {tuple(labels.shape)} for poses of batch shape {batch}: give one "
            "label per pose"
        )
    return labels.reshape(-1)


def compute_features(
    joints: torch.Tensor,
    normalization: str = "reference-bone",
    is_left: torch.Tensor | bool | None = None,
) -> TorchFeatures:
    """Differentiable :func:`bmc_calib.kinematics.compute_features` of ``(..., 21, 3)`` joints.

    See :class:`TorchFeatures` for shapes and units; ``is_left`` as in :class:`BMCLoss`.
    """
    kinematics.check_normalization(normalization)
    flat, batch = _flat_joints(joints)
    sign = _mirror_sign(is_left, batch, flat)
    features, keep = _Features.apply(flat, sign, normalization)
    rows = {name: features[a:b].T for name, a, b in FEATURE_ROWS}
    return TorchFeatures(
        rows["bone_length"].reshape(*batch, skeleton.NUM_BONES),
        rows["palm_curvature"].reshape(*batch, 4),
        rows["palm_angle"].reshape(*batch, 4),
        torch.stack((rows["flexion"], rows["abduction"]), dim=-1).reshape(
            *batch, skeleton.NUM_ANGLES, 2
        ),
        (~keep).reshape(batch),
    )


def _save(ctx, saved: Saved | FusedSaved, *first: torch.Tensor | None) -> None:
    """``save_for_backward`` of ``first``, then of the chain's ``saved`` (flattened)."""
    flat: list[torch.Tensor | None] = list(first)
    if isinstance(saved, FusedSaved):
        ctx.fused_reference_bone = saved.reference_bone
        flat.extend(saved[:3])
    else:
        ctx.fused_reference_bone = None
        for item in saved:
            flat.extend(item if isinstance(item, Rotation) else (item,))
    ctx.save_for_backward(*flat)


def _restore(ctx, skip: int = 0) -> Saved | FusedSaved:
    """The chain's saved values of :func:`_save`, after the ``skip`` first tensors."""
    flat = list(ctx.saved_tensors[skip:])
    if ctx.fused_reference_bone is not None:
        return FusedSaved(*flat, ctx.fused_reference_bone)
    items = []
    for field in Saved._fields:
        if field in ("rot0", "rot1"):
            size = len(Rotation._fields)
            items.append(Rotation(*flat[:size]))
            del flat[:size]
        else:
            items.append(flat.pop(0))
    return Saved(*items)


def _refuse_double_backward() -> None:
    """Raise when a backward runs with ``create_graph=True`` (grad mode on). The hand-derived
    backward is not itself differentiated; ``once_differentiable`` alone refuses a second
    derivative only when the incoming gradient requires grad, and otherwise returns a gradient
    that silently misses the chain's second derivatives (e.g. a gradient penalty on
    ``task_loss + bmc_total``, whose gradient into this node is a constant)."""
    if torch.is_grad_enabled() and not _is_compiling():
        raise RuntimeError(
            "BMCLoss has a first-order backward only: a gradient with create_graph=True (a "
            "gradient penalty, a second derivative) through it would miss its second "
            "derivatives; compute it on the other terms, or detach the BMC term first"
        )


class _Features(torch.autograd.Function):
    """Features ``(58, N)`` and ``keep`` ``(N,)`` of joints ``(N, 21, 3)``
    (:mod:`bmc_calib.torch_chain`); the backward is :func:`~bmc_calib.torch_chain.
    chain_backward`."""

    @staticmethod
    def forward(ctx, joints, sign, normalization):
        features, keep, saved = chain_forward(joints, sign, normalization)
        _save(ctx, saved)
        ctx.mark_non_differentiable(keep)
        return features, keep

    @staticmethod
    def backward(ctx, grad_features, grad_keep):
        _refuse_double_backward()
        return _Features._first_order_backward(ctx, grad_features, grad_keep)

    @staticmethod
    @once_differentiable  # the hand-derived backward is not itself differentiated
    def _first_order_backward(ctx, grad_features, grad_keep):
        return chain_backward(_restore(ctx), grad_features), None, None


# --------------------------------------------------------------------------- personal
def _group_ids(group: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Any integer labels ``(N,)`` → dense ids ``0 … G−1`` ``(N,)``, without reading values on
    the host (a stable sort and a cumulative sum; shapes never depend on the data)."""
    labels = torch.as_tensor(group, device=device).reshape(n).to(torch.int64)
    order = torch.argsort(labels, stable=True)
    ordered = labels[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    dense = torch.cumsum(first.to(torch.int64), 0) - 1
    return torch.empty_like(dense).scatter_(0, order, dense)


def _own_group_median(
    values: torch.Tensor, dense: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """Each pose's own-group median ``(K, N)`` of ``values`` ``(K, N)``, as ``numpy.median``
    (the mean of the two middle values for even counts); degenerate poses (``keep`` 0) are
    left out of every median. Vectorised: sort by value, then stably by group."""
    n = values.shape[1]
    dense = torch.where(keep > 0, dense, torch.full_like(dense, n))  # a group of their own
    counts = torch.zeros(n + 1, dtype=torch.int64, device=values.device)
    counts = counts.index_add(0, dense, torch.ones_like(dense))
    start = torch.cumsum(counts, 0) - counts
    by_value = torch.argsort(values, dim=1, stable=True)  # (K, N)
    by_group = torch.argsort(dense[by_value], dim=1, stable=True)
    ordered = torch.gather(values, 1, torch.gather(by_value, 1, by_group))
    own_count, own_start = counts[dense], start[dense]
    lo = own_start + torch.div(own_count - 1, 2, rounding_mode="floor")
    hi = own_start + torch.div(own_count, 2, rounding_mode="floor")
    return 0.5 * (ordered[:, lo] + ordered[:, hi])


def _personal_magnitudes(
    length: torch.Tensor, keep: torch.Tensor, group: torch.Tensor, allowance: torch.Tensor
) -> torch.Tensor:
    """``(20, N)`` ``max(|x / own median − 1| − allowance, 0)``, 0 for degenerate poses
    (:mod:`bmc_calib.personal`)."""
    dense = _group_ids(group, length.shape[1], length.device)
    median = _own_group_median(length, dense, keep)
    safe = torch.where(median > 0, median, torch.ones_like(median))
    dev = torch.relu(torch.abs(length / safe - 1.0) - allowance)
    return _zero_degenerate(dev, keep)


def _zero_degenerate(value: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``value`` ``(K, N)`` with the columns of degenerate poses (``keep`` ``(N,)`` = 0) set to 0.

    Written as ``value − stop_gradient(value · (1 − keep))``: the backward pass is the
    identity, so no mask reaches it (torch 2.13's inductor mis-compiled ``value * keep`` in
    this graph, see the compile test). Degenerate columns hold the chain's zero features,
    and the chain's backward drops their gradient.
    """
    return value - (value * (1.0 - keep)).detach()


# --------------------------------------------------------------------------- hulls
def _hull_tables(hulls: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Padded per-edge tables of the hull polygons (float64, radians), ``H`` hulls.

    For hull ``a`` and edge ``k`` from vertex ``v_k`` to ``v_{k+1}``: unit direction ``u``,
    inward unit normal ``n`` (left of the edge; polygons are counter-clockwise), offsets
    ``v_k·u`` and ``v_k·n`` and the edge length ``L``. A point ``p`` is inside when every slack
    ``q = p·n − v_k·n ≥ −tol`` (:mod:`bmc_calib.hulls`' rule and tolerance); outside, its
    distance is the smallest ``sqrt(q² + e²)`` with ``s = p·u − v_k·u`` and
    ``e = s − clamp(s, 0, L)``. Consecutive duplicate vertices are dropped as
    :mod:`bmc_calib.hulls` does, and so are collinear ones (the polygon is the same; the
    nearest-edge rule of :func:`_nearest_edges_eager` needs every turn strictly convex).
    Padded slots (``mask`` False) repeat edge 0, which changes neither extremum.

    Returns ``vertices`` ``(H, V, 2)`` (padding repeats vertex 0), ``mask`` ``(H, V)``,
    ``direction`` and ``normal`` ``(H, V, 2)``, ``along_offset``, ``normal_offset`` and
    ``length`` ``(H, V)``, ``tolerance`` ``(H,)``.
    """
    rings = []
    for a, hull in enumerate(hulls):
        ring = np.asarray(hull, dtype=np.float64)
        ring = ring[np.any(ring != np.roll(ring, -1, axis=0), axis=1)]
        while len(ring) > 3:  # collinear (or reflex within the bundle's tolerance) vertices
            edge = np.roll(ring, -1, axis=0) - ring
            turn = np.roll(edge[:, 0], 1) * edge[:, 1] - np.roll(edge[:, 1], 1) * edge[:, 0]
            if np.all(turn > 0.0):
                break
            ring = np.delete(ring, int(np.argmin(turn)), axis=0)
        x, y = ring[:, 0], ring[:, 1]
        area = 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
        if len(ring) < 3 or not np.all(np.isfinite(ring)) or not area > 0.0:
            raise BadInputError(
                f"joint-angle hull {a} is not a counter-clockwise polygon with positive area"
            )
        rings.append(ring)
    v_max = max(len(r) for r in rings)
    n_hulls = len(rings)
    out = {
        "vertices": np.zeros((n_hulls, v_max, 2)),
        "mask": np.zeros((n_hulls, v_max), dtype=bool),
        "direction": np.zeros((n_hulls, v_max, 2)),
        "normal": np.zeros((n_hulls, v_max, 2)),
        "along_offset": np.zeros((n_hulls, v_max)),
        "normal_offset": np.zeros((n_hulls, v_max)),
        "length": np.zeros((n_hulls, v_max)),
        "tolerance": np.zeros(n_hulls),
    }
    for a, ring in enumerate(rings):
        v = len(ring)
        rows = np.concatenate((np.arange(v), np.zeros(v_max - v, dtype=int)))
        edge = np.roll(ring, -1, axis=0) - ring
        length = np.hypot(edge[:, 0], edge[:, 1])
        direction = edge / length[:, None]
        # the inward normal exactly as bmc_calib.hulls computes it
        normal = np.stack((-edge[:, 1] / length, edge[:, 0] / length), axis=1)
        out["vertices"][a] = ring[rows]
        out["mask"][a, :v] = True
        out["direction"][a] = direction[rows]
        out["normal"][a] = normal[rows]
        along_offset = direction[:, 0] * ring[:, 0] + direction[:, 1] * ring[:, 1]
        out["along_offset"][a] = along_offset[rows]
        out["normal_offset"][a] = (normal[:, 0] * ring[:, 0] + normal[:, 1] * ring[:, 1])[rows]
        out["length"][a] = length[rows]
        out["tolerance"][a] = 1e-12 * max(1.0, float(np.max(np.abs(ring))))
    return out


#: Rows of the stacked edge table (``BMCLoss.hull_edges``, ``(7, H, V)``); offsets negated.
HULL_EDGE_ROWS: tuple[str, ...] = (
    "normal_x", "normal_y", "-normal_offset",
    "direction_x", "direction_y", "-along_offset",
    "length",
)  # fmt: skip


def _edge_rows(tables: dict[str, np.ndarray]) -> np.ndarray:
    """The ``(7, H, V)`` stacked edge table in :data:`HULL_EDGE_ROWS` order."""
    return np.stack(
        (
            tables["normal"][..., 0],
            tables["normal"][..., 1],
            -tables["normal_offset"],
            tables["direction"][..., 0],
            tables["direction"][..., 1],
            -tables["along_offset"],
            tables["length"],
        )
    )


#: ``(rows, picks, base)`` of :func:`_hull_layout`.
_HullLayout = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _hull_layout(tables: torch.Tensor) -> _HullLayout:
    """The edge table ``(7, H, V)`` in the layouts the nearest-edge search reads.

    ``rows`` ``(H, V, 3)``: ``[−n | n·v]``, one batched product with homogeneous points gives
    every edge's outward slack ``(v − p)·n``. ``picks`` ``(5, H · W)``: ``n_x, n_y, −n·v,
    −u·v, L`` (:data:`HULL_EDGE_ROWS`; ``u = (n_y, −n_x)``) with each hull padded to ``W`` =
    the power of two ≥ ``V`` edges (padding repeats edge 0), read by flat edge index.
    ``base`` ``(H, 1)`` int64: hull ``a``'s first flat index, ``a · W``.
    """
    n_hulls, n_edges = tables.shape[1:]
    width = 1 << max(1, (n_edges - 1).bit_length())
    nx, ny, neg_n_off = tables[:3].unbind(0)
    rows = torch.stack((-nx, -ny, -neg_n_off), -1)
    slots = torch.arange(width, device=tables.device)
    padded = tables[:, :, torch.where(slots < n_edges, slots, 0)]
    picks = padded[[0, 1, 2, 5, 6]].reshape(5, n_hulls * width)
    base = (torch.arange(n_hulls, device=tables.device) * width)[:, None]
    return rows, picks, base


def _segment_distance(
    px: torch.Tensor, py: torch.Tensor, edge: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distance ``(H, N)`` of each point to one edge segment each, the unnormalised
    direction from the segment's nearest point to the point (x and y, ``(H, N)`` each) and
    the slack ``q`` ``(H, N)``.

    ``edge`` ``(5, H, N)``: the point's edge, rows ``n_x, n_y, −n·v, −u·v, L``
    (:func:`_hull_layout`). With the slack ``q = p·n − v·n`` (negative outside) and
    ``e = s − clamp(s, 0, L)`` for ``s = p·u − v·u``, ``u = (n_y, −n_x)``, the distance is
    ``hypot(q, e)`` and the direction ``q n + e u``.
    """
    nx, ny, neg_n_off, neg_u_off, length = edge.unbind(0)
    slack = torch.addcmul(neg_n_off, nx, px).addcmul_(ny, py)
    along = torch.addcmul(neg_u_off, ny, px).addcmul_(nx, py, value=-1.0)
    beyond = along - torch.minimum(along.clamp_min(0.0), length)
    dx = torch.addcmul(slack * nx, beyond, ny)
    dy = torch.addcmul(slack * ny, beyond, nx, value=-1.0)
    return torch.hypot(slack, beyond), dx, dy, slack


def _outward_slacks(px: torch.Tensor, py: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Every edge's outward slack ``(v − p)·n`` ``(H, V, N)`` for points ``(H, N)`` and the
    ``(H, V, 3)`` rows ``[−n | n·v]`` of :func:`_hull_layout`. On accelerators one batched
    product with homogeneous points (three kernels with the points' stack); on the CPU three
    broadcasting passes, the same count of kernels: a batched product with an inner size of 3
    is ~2x slower there (at batch 4096 with 17-edge hulls on 2 threads, 0.23 ms against
    0.11 ms)."""
    if accelerator_path(px):
        return torch.bmm(rows, torch.stack((px, py, torch.ones_like(px)), 1))
    nx, ny, offset = rows[..., None].unbind(2)  # (H, V, 1) each
    return torch.mul(nx, px[:, None]).addcmul_(ny, py[:, None]).add_(offset)


def _nearest_edges_eager(
    px: torch.Tensor,
    py: torch.Tensor,
    tables: torch.Tensor,
    tolerance: torch.Tensor,
    layout: _HullLayout | None = None,
) -> tuple[torch.Tensor, ...]:
    """Eager form of the nearest-edge search: few large kernels.

    Outside a convex polygon, the edge whose line the point lies farthest beyond (the largest
    outward slack) is the nearest edge, or shares the nearest vertex with it: the outward
    unit vector from the nearest boundary point lies in that feature's normal cone, and no
    other edge's normal is closer to it. So one batched product gives every outward slack
    and the largest slack's edge alone is measured (:func:`_segment_distance`); its own slack
    is the inside test. The edge's index rides in the low bits of the slack's bit pattern
    (positive floats order as their integer bits, and negative ones below them), so the index
    is one integer ``amax`` (``torch.max`` with indices is several times slower on CPU); the
    few bits the index replaces only decide between edges whose slacks agree to ~1e-5, which
    share the vertex nearest to the point to within far less. Where every slack is negative
    (deep inside) some edge is picked; its own slack says "inside" all the same.

    Returns the distance ``(H, N)``, the unnormalised direction ``q n + e u`` (x and y) and
    ``outside`` ``(H, N)``: 1.0 beyond the tolerance, else 0.0. ``layout``:
    :func:`_hull_layout` of ``tables`` (precomputed by :class:`BMCLoss`).
    """
    rows, picks, base = _hull_layout(tables) if layout is None else layout
    n_hulls, n_edges = rows.shape[:2]
    bits = picks.shape[1] // n_hulls - 1
    outward = _outward_slacks(px, py, rows)  # (H, V, N)
    key = outward.view(torch.int64 if px.dtype == torch.float64 else torch.int32)
    index = torch.arange(n_edges, dtype=key.dtype, device=key.device)[:, None]
    key.bitwise_and_(~bits).bitwise_or_(index)
    nearest = key.amax(1).bitwise_and_(bits).add_(base)  # (H, N) flat edge index
    edge = picks.index_select(1, nearest.view(-1)).view(5, *px.shape)
    dist, dx, dy, slack = _segment_distance(px, py, edge)
    return dist, dx, dy, (slack + tolerance).lt_(0.0)


def _nearest_edges_compiled(
    px: torch.Tensor,
    py: torch.Tensor,
    tables: torch.Tensor,
    tolerance: torch.Tensor,
    layout: _HullLayout | None = None,
) -> tuple[torch.Tensor, ...]:
    """``torch.compile`` form of :func:`_nearest_edges_eager`, same rule and results.

    A running maximum of the outward slack over the ``V`` edges, unrolled: each step is
    pointwise on ``(H, N)``, so inductor fuses the scan into one loop over the points (no
    ``(H, V, N)`` temporary). Strict ``>`` keeps the first of tied edges, which share the
    nearest boundary point. The running maximum is ``torch.maximum`` (the slacks are finite:
    the same as selecting the larger) and the running index a float (exact for any ``V``
    below 2^24): with an int64 index or a selected maximum, inductor stored every edge's
    slack and the compiled search took 1.3–1.4 ms at batch 4096 on one CPU thread, with
    both changes 0.57 ms.
    """
    rows, picks, base = _hull_layout(tables) if layout is None else layout
    edges = rows[..., None]  # (H, V, 3, 1)
    worst = index = px
    for v in range(rows.shape[1]):
        slack = edges[:, v, 0] * px + edges[:, v, 1] * py + edges[:, v, 2]  # (H, N)
        if v == 0:
            worst, index = slack, torch.zeros_like(px)
            continue
        farther = slack > worst
        worst = torch.maximum(worst, slack)
        index = torch.where(farther, float(v), index)
    nearest = index.to(base.dtype) + base
    edge = picks.index_select(1, nearest.reshape(-1)).view(5, *px.shape)
    dist, dx, dy, slack = _segment_distance(px, py, edge)
    return dist, dx, dy, (slack + tolerance).lt_(0.0)


def _hull_distance(
    flexion: torch.Tensor, abduction: torch.Tensor, tables: torch.Tensor, tolerance: torch.Tensor
) -> torch.Tensor:
    """Distance (radians) of points ``(H, N)`` (unwrapped flexion, abduction) to ``H`` hulls
    (no autograd; :class:`_Magnitudes` differentiates it).

    0 inside (tolerance included), the Euclidean distance to the polygon boundary outside.
    ``tables`` ``(7, H, V)`` is the stacked edge table (:data:`HULL_EDGE_ROWS`) and
    ``tolerance`` ``(H, 1)``. Every edge's line is evaluated for every point, the edge farthest
    outside is measured: in eager mode as one ``(H, V, N)`` batched product, compiled as one
    fused scan over the edges.
    """
    return _hull_distance_and_direction(flexion, abduction, tables, tolerance)[0]


def _hull_distance_and_direction(
    flexion: torch.Tensor,
    abduction: torch.Tensor,
    tables: torch.Tensor,
    tolerance: torch.Tensor,
    layout: _HullLayout | None = None,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_hull_distance` and its gradient with respect to the point, ``(H, N)`` each
    (into ``out`` if given): the unit vector from the nearest boundary point to the point,
    0 inside."""
    search = _nearest_edges_compiled if _is_compiling() else _nearest_edges_eager
    dist, dx, dy, outside = search(flexion, abduction, tables, tolerance, layout)
    scale = dist.clamp_min(1e-30).reciprocal_().mul_(outside)  # (masks as 0/1 products:
    dist_out, dx_out, dy_out = (None, None, None) if out is None else out  # masked_fill is
    return (  # slow on CPU)
        torch.mul(dist, outside, out=dist_out),
        torch.mul(dx, scale, out=dx_out),
        torch.mul(dy, scale, out=dy_out),
    )


def _unwrap_flexion(flexion: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """:func:`bmc_calib.hulls.unwrap_flexion`: into ``(center − π, center + π]``, same formula."""
    turns = torch.floor((math.pi - (flexion - center)) / _TWO_PI)
    return flexion + _TWO_PI * turns


class _Magnitudes(torch.autograd.Function):
    """The whole per-pose computation of :class:`BMCLoss` in one autograd node.

    Inputs: joints ``(N, 21, 3)``, ``sign`` ``(N,)`` or None, the normalisation, ``bounds``
    ``(5, 28, 1)`` (the two hinge sides as ``v·a + b``: both biases, both slopes — 1 / edge
    for bone lengths, 1 otherwise — and the slopes' difference), ``shift`` ``(43, 1)`` (where
    each penalty starts: 0 or the tolerance), ``term_matrix`` ``(T, 43)`` (per-pose terms as
    weighted sums of penalties) with each feature row's term ``feature_rows`` ``(58,)`` and
    weight there ``feature_weight`` ``(58, 1)`` (magnitudes feed the terms in
    :data:`_TERM_SPANS`; joint angles through two feature rows), ``squared_hull`` (bool:
    joint-angle penalty squared), ``flexion_center`` ``(15, 1)``, the hull edge table
    ``(7, 15, V)`` and ``hull_tolerance`` ``(15, 1)``.

    Outputs: features ``(58, N)`` (0 for degenerate poses), magnitudes ``(43, N)`` (interval
    items then joint angles, :mod:`bmc_calib.violations`' units, minus ``shift``, clamped at
    0), per-pose terms ``(T, N)`` and ``keep`` ``(N,)``. The backward multiplies the incoming
    gradients by derivatives saved in the forward and runs the hand-derived chain backward,
    so autograd records one node instead of ~500.
    """

    @staticmethod
    def forward(
        ctx, joints, sign, normalization, bounds, shift, term_matrix, feature_rows,
        feature_weight, squared_hull, flexion_center, hull_edges, hull_tolerance, hull_rows,
        hull_picks, hull_base,
    ):  # fmt: skip
        features, keep, saved = chain_forward(joints, sign, normalization)
        n = joints.shape[0]
        # the two sides of each interval hinge, (lo − v)·w_lo and (v − hi)·w_hi, as v·a + b
        low_bias, high_bias, low_slope, high_slope, slope_step = bounds.unbind(0)
        values = features[:28]
        low_side = torch.addcmul(low_bias, values, low_slope)
        high_side = torch.addcmul(high_bias, values, high_slope)
        # results written into two buffers in eager mode (compiled: concatenated)
        magnitudes = joints.new_empty(43, n)
        # d magnitude / d feature, rows as the features (joint-angle rows twice)
        slopes = joints.new_empty(58, n)
        # the violated side's slope, w_hi + (lower side) (w_lo − w_hi): exact 0/1 products
        # (a broadcasting torch.where is ~5x slower on CPU)
        lower = (low_side - high_side).gt_(0.0)
        slope = torch.addcmul(high_slope, lower, slope_step, out=out_slot(slopes[:28]))
        interval = torch.maximum(low_side, high_side, out=out_slot(magnitudes[:28]))
        if fused_path(joints) and not _is_compiling():  # one C pass (eager CPU)
            dist, grad_x, grad_y = magnitudes[28:], slopes[28:43], slopes[43:]
            fused_hull_distance(
                features, flexion_center, hull_edges, hull_tolerance, dist, grad_x, grad_y
            )
        else:
            flexion = _unwrap_flexion(features[28:43], flexion_center)
            dist, grad_x, grad_y = _hull_distance_and_direction(
                flexion, features[43:], hull_edges, hull_tolerance,
                (hull_rows, hull_picks, hull_base),
                (out_slot(magnitudes[28:]), out_slot(slopes[28:43]), out_slot(slopes[43:])),
            )  # fmt: skip
        magnitudes = joined_slots(magnitudes, (interval, dist))
        slopes = joined_slots(slopes, (slope, grad_x, grad_y))
        if shift is not None:
            magnitudes.sub_(shift)
        magnitudes.clamp_min_(0.0).mul_(saved.keep)
        if squared_hull:
            penalty = torch.cat((magnitudes[:28], magnitudes[28:].square()))
            factor = 2.0 * magnitudes[28:]
        else:
            penalty, factor = magnitudes, None
        terms = torch.mm(term_matrix, penalty)
        active = comparison_mask(torch.gt, magnitudes, 0.0)  # 1: a penalty applies
        slopes[:43].mul_(active)
        slopes[43:].mul_(active[28:])
        ctx.extra = 1 if factor is not None else 0
        extra = [factor] if factor is not None else []
        _save(ctx, saved, slopes, feature_rows, feature_weight, *extra)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(keep)
        return features, magnitudes, terms, keep

    @staticmethod
    def backward(ctx, grad_features, grad_magnitudes, grad_terms, grad_keep):
        _refuse_double_backward()
        return _Magnitudes._first_order_backward(
            ctx, grad_features, grad_magnitudes, grad_terms, grad_keep
        )

    @staticmethod
    @once_differentiable
    def _first_order_backward(ctx, grad_features, grad_magnitudes, grad_terms, grad_keep):
        slopes, feature_rows, feature_weight = ctx.saved_tensors[:3]
        factor = ctx.saved_tensors[3] if ctx.extra else None
        # d loss / d feature: each row's term gradient times its weight (joint-angle rows
        # twice: flexion and abduction), plus the magnitudes' own gradient, times the slopes
        if grad_terms is not None:
            grad_f = grad_terms.index_select(0, feature_rows).mul_(feature_weight)
            if factor is not None:
                grad_f[28:].view(2, 15, -1).mul_(factor)
            if grad_magnitudes is not None:
                grad_f[:43].add_(grad_magnitudes)
                grad_f[43:].add_(grad_magnitudes[28:])
        elif grad_magnitudes is not None:
            grad_f = torch.cat((grad_magnitudes, grad_magnitudes[28:]))
        else:
            grad_f = None
        if grad_f is not None:
            grad_f.mul_(slopes)
        if grad_features is not None:
            grad_f = grad_features if grad_f is None else grad_f + grad_features
        saved = _restore(ctx, skip=3 + ctx.extra)
        grad_joints = None if grad_f is None else chain_backward(saved, grad_f)
        return (grad_joints, *([None] * 14))


# --------------------------------------------------------------------------- the loss
#: Buffers read by ``forward``, derived from the stored limits by ``_derive``; each has a
#: float32 shadow ``_float32_<name>``.
_FORWARD_BUFFERS: tuple[str, ...] = (
    "bounds", "tolerance_shift", "term_matrix", "feature_weight", "flexion_center",
    "hull_edges", "hull_tolerance", "hull_rows", "hull_picks", "personal_allowance",
)  # fmt: skip
_FLOAT32 = "_float32_"
#: How many magnitudes feed each of TERMS, in order (bone lengths, palm, joint angles).
_TERM_SPANS: tuple[int, ...] = (20, 8, 15)
#: Ways to penalise a joint angle outside its hull (see :class:`BMCLoss`).
HULL_PENALTIES: tuple[str, ...] = ("linear", "squared")


def _refresh_derived(module: nn.Module, incompatible_keys: object) -> None:
    """``load_state_dict`` post hook: recompute what forward reads from the loaded limits."""
    module._derive()


class BMCLoss(nn.Module):
    """Biomechanical-constraint loss: hinge penalties outside the limits of a bundle.

    Args:
        limits: the :class:`bmc_calib.limits.Limits` to enforce (see :meth:`from_bundle`).
        weights: ``(bone_length, palm, joint_angle)`` term weights (floats ``>= 0``).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (see :meth:`forward`).
        use_tolerance: when true (the default) each penalty starts at the item's stored
            tolerance (``max(magnitude − tolerance, 0)``), i.e. only what ``validate`` would
            flag is penalised; false starts it at the limit itself.
        personal_weight: weight of the personal bone term, used for batches that pass
            ``group`` (see :meth:`forward`).
        hull_penalty: ``"linear"`` (default): a joint angle outside its hull costs its
            distance ``d`` (radians); ``"squared"``: ``d²``, as the BMC authors' code.

    Per pose and item, magnitudes ``m`` are those of :func:`bmc_calib.violations.
    compute_violations` (see :meth:`magnitudes`). Per pose, term losses are
    ``w_bone · mean_k p_bone``, ``w_palm · (mean_i p_curvature + mean_i p_palm_angle)`` and
    ``w_joint · mean_a p_joint`` with penalties ``p = max(m − t, 0)`` (``t`` the tolerance or
    0; squared for joint angles with ``hull_penalty="squared"``). ``mean`` averages them over
    the batch (so a term is the mean over the batch and the term's items), ``sum`` sums over
    the batch, ``none`` keeps the batch shape. Degenerate poses count in the batch with loss 0.

    All limits are registered buffers (``.to(device)``, ``state_dict`` and ``load_state_dict``
    work), stored in float64 — ``bone_length_min/max/tolerance``, ``palm_curvature_*``,
    ``palm_angle_*``, ``flexion_center``, ``joint_angle_tolerance``, ``hull_vertices``
    ``(15, V, 2)`` with ``hull_mask`` ``(15, V)`` (padded hulls), ``hull_tolerance`` and the
    per-edge table ``hull_edges`` ``(7, 15, V)`` (:data:`HULL_EDGE_ROWS`). What forward reads
    is derived from them (not saved; recomputed by ``load_state_dict``), with float32 copies
    that float32 calls read.

    :meth:`compile` compiles the per-pose computation once for every batch size, batch shape
    and form of ``is_left``.
    """

    def __init__(
        self,
        limits: Limits,
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        reduction: str = "mean",
        use_tolerance: bool = True,
        personal_weight: float = 1.0,
        hull_penalty: str = "linear",
    ) -> None:
        super().__init__()
        weights = tuple(float(w) for w in weights)
        if not (math.isfinite(personal_weight) and personal_weight >= 0):
            raise UsageError(f"personal_weight must be a finite number >= 0, got {personal_weight}")
        self.personal_weight = float(personal_weight)
        if len(weights) != len(TERMS) or not all(math.isfinite(w) and w >= 0 for w in weights):
            raise UsageError(
                f"weights must be {len(TERMS)} finite numbers >= 0 for {', '.join(TERMS)}, "
                f"got {weights}"
            )
        if reduction not in REDUCTIONS:
            raise UsageError(
                f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}"
            )
        if hull_penalty not in HULL_PENALTIES:
            raise UsageError(
                f"unknown hull_penalty {hull_penalty!r}; choose one of {', '.join(HULL_PENALTIES)}"
            )
        from bmc_calib.bundle import check_limits  # the structural check every reader runs

        check_limits(limits, "BMCLoss limits")
        kinematics.check_normalization(limits.normalization)
        self.normalization = limits.normalization
        self.length_unit = limits.length_unit
        self.weights = dict(zip(TERMS, weights, strict=True))
        self.reduction = reduction
        self.use_tolerance = bool(use_tolerance)
        self.hull_penalty = hull_penalty
        self._compiled = None
        self._compile_kwargs: dict[str, object] | None = None

        def buffer(name: str, value: np.ndarray, persistent: bool = True) -> None:
            # a copy: a buffer sharing the limits' arrays would let load_state_dict (an
            # in-place copy) change the caller's Limits
            tensor = torch.tensor(np.ascontiguousarray(value))
            if tensor.is_floating_point():
                tensor = tensor.to(torch.float64)
            self.register_buffer(name, tensor, persistent=persistent)

        for family in ("bone_length", "palm_curvature", "palm_angle"):
            interval = getattr(limits, family)
            if not np.all(interval.min <= interval.max):
                raise BadInputError(f"{family} limits have min > max; the bundle is corrupt")
            buffer(f"{family}_min", interval.min)
            buffer(f"{family}_max", interval.max)
            buffer(f"{family}_tolerance", interval.tolerance)
        joint = limits.joint_angle
        tables = _hull_tables(joint.hulls)
        buffer("flexion_center", joint.flexion_center[:, None])
        buffer("joint_angle_tolerance", joint.tolerance)
        buffer("hull_vertices", tables["vertices"])
        buffer("hull_mask", tables["mask"])
        buffer("hull_tolerance", tables["tolerance"][:, None])
        buffer("hull_edges", _edge_rows(tables))
        buffer("personal_allowance", personal.allowance(limits)[:, None])
        for name in (
            "bounds",
            "tolerance_shift",
            "term_matrix",
            "feature_weight",
            "feature_rows",
            "hull_rows",
            "hull_picks",
            "hull_base",
        ):
            self.register_buffer(name, torch.zeros(0, dtype=torch.float64), persistent=False)
        for name in _FORWARD_BUFFERS:
            self.register_buffer(_FLOAT32 + name, torch.zeros(0), persistent=False)
        self._derive()
        self.register_load_state_dict_post_hook(_refresh_derived)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        """:meth:`torch.nn.Module._apply` (``.to()``, ``.cuda()``, …), then the chain's
        constant matrices on the new device (see :meth:`_derive`).

        Device moves apply; dtype casts do not (``.half()``, ``.float()``, a parent model's
        ``.to(torch.bfloat16)``): the limits keep their float64 values and float32 copies,
        since the loss computes in its input's dtype anyway and a cast limit would break the
        agreement with validate (``.half()`` moved magnitudes by 2e-3)."""

        def device_only(tensor: torch.Tensor) -> torch.Tensor:
            moved = fn(tensor)
            if moved.dtype != tensor.dtype:  # from the original values: nothing rounded
                return tensor.to(device=moved.device)
            return moved

        module = super()._apply(device_only, recurse)
        warm_constants(self.bone_length_min.device)
        return module

    def __getstate__(self) -> dict[str, object]:
        """Pickling and ``copy.deepcopy`` leave out the compiled function (it is bound to
        this module: a copy would compute with the original's limits); a copy of a compiled
        loss compiles its own (:meth:`__setstate__`)."""
        state = super().__getstate__()
        state["_compiled"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)
        kwargs = self.__dict__.get("_compile_kwargs")
        if kwargs is not None:  # (torch.compile is lazy: nothing is compiled until a call)
            self._compiled = torch.compile(self._per_pose, **kwargs)

    def _derive(self) -> None:
        """Compute the tables forward reads from the stored limits, and their float32 copies.

        Also creates the chain's constant matrices for the buffers' device: a cache filled
        while ``torch.compile`` traces (``torch.compile(loss)``, not :meth:`compile`) is a side
        effect dynamo cannot trace through the hand-derived backward.
        """
        warm_constants(self.bone_length_min.device)
        with torch.no_grad():
            families = ("bone_length", "palm_curvature", "palm_angle")
            low = torch.cat([getattr(self, f"{f}_min") for f in families])
            high = torch.cat([getattr(self, f"{f}_max") for f in families])
            # bone lengths are relative to the violated edge; non-positive edges become `tiny`
            tiny = torch.finfo(low.dtype).tiny
            ones = torch.ones_like(low[20:])
            low_weight = torch.cat((1.0 / torch.where(low[:20] > 0, low[:20], tiny), ones))
            high_weight = torch.cat((1.0 / torch.where(high[:20] > 0, high[:20], tiny), ones))
            # (lo − v)·w_lo = v·(−w_lo) + lo·w_lo and (v − hi)·w_hi = v·w_hi − hi·w_hi
            bounds = torch.stack(
                (low * low_weight, -high * high_weight, -low_weight, high_weight,
                 -low_weight - high_weight)
            )[..., None]  # fmt: skip
            tolerance = torch.cat(
                [getattr(self, f"{f}_tolerance") for f in families] + [self.joint_angle_tolerance]
            )[:, None]
            w = self.weights
            term_matrix = torch.zeros(len(TERMS), 43, dtype=low.dtype, device=low.device)
            term_matrix[0, :20] = w["bone_length"] / 20
            term_matrix[1, 20:28] = w["palm"] / 4
            term_matrix[2, 28:] = w["joint_angle"] / 15
            # each magnitude feeds one term: per feature row (joint angles twice), its term and
            # weight there (the backward's row pick)
            term_rows = torch.repeat_interleave(
                torch.arange(len(TERMS), device=low.device),
                torch.tensor(_TERM_SPANS, device=low.device),
            )
            feature_rows = torch.cat((term_rows, term_rows[28:]))
            magnitude_cols = torch.cat((torch.arange(43), torch.arange(28, 43))).to(low.device)
            derived = {
                "bounds": bounds,
                "tolerance_shift": tolerance,
                "term_matrix": term_matrix,
                "feature_weight": term_matrix[feature_rows, magnitude_cols][:, None],
            }
            self.feature_rows = feature_rows
            rows, picks, base = _hull_layout(self.hull_edges)
            derived["hull_rows"], derived["hull_picks"] = rows, picks
            for name, value in derived.items():
                setattr(self, name, value.to(self.bone_length_min.dtype))
            self.hull_base = base
            for name in _FORWARD_BUFFERS:
                setattr(self, _FLOAT32 + name, getattr(self, name).to(torch.float32))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        reduction: str = "mean",
        use_tolerance: bool = True,
        personal_weight: float = 1.0,
        hull_penalty: str = "linear",
    ) -> BMCLoss:
        """A loss with the limits of the bundle at ``path`` (read and digest-checked by
        :func:`bmc_calib.bundle.read_bundle`); other arguments as in the constructor."""
        from bmc_calib.bundle import read_bundle

        return cls(read_bundle(path), weights=weights, reduction=reduction,
                   use_tolerance=use_tolerance, personal_weight=personal_weight,
                   hull_penalty=hull_penalty)  # fmt: skip

    def extra_repr(self) -> str:
        w = ", ".join(f"{k}={v:g}" for k, v in self.weights.items())
        return (
            f"normalization={self.normalization!r}, weights=({w}), "
            f"reduction={self.reduction!r}, use_tolerance={self.use_tolerance}, "
            f"hull_penalty={self.hull_penalty!r}"
        )

    def compile(self, **kwargs: object) -> None:
        """Compile the per-pose computation with ``torch.compile`` (``kwargs`` are passed on),
        in place, as :meth:`torch.nn.Module.compile` does.

        Unlike ``torch.compile(loss)``, the batch shape is flattened and ``is_left`` turned
        into a ``(N,)`` sign tensor *before* the compiled region, so one compilation serves
        every batch size ≥ 2, every leading batch shape and every form of ``is_left``
        (``None``, a bool, a tensor). ``group=`` given or not, float32 or float64, the
        reduction, and a call without gradients (input not requiring grad, or under
        ``torch.no_grad()``) each make their own graph.

        Only the batch axis is dynamic (``forward`` marks it; the default ``dynamic=None``
        keeps the limits' tables static): at batch 4096 the step was 0.36 ms faster on 2 CPU
        threads than with ``dynamic=True``, where every table's shape is symbolic too.
        """
        kwargs.setdefault("dynamic", None)
        warm_constants(self.bone_length_min.device)
        self._compile_kwargs = dict(kwargs)
        self._compiled = torch.compile(self._per_pose, **kwargs)

    # ------------------------------------------------------------------ evaluation
    def _buffer(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """Buffer ``name`` in ``dtype`` (the float32 shadow for float32)."""
        if dtype == torch.float32:
            name = _FLOAT32 + name
        return getattr(self, name).to(dtype)

    def _kernel(
        self, joints: torch.Tensor, sign: torch.Tensor | None, shifted: bool, squared: bool
    ) -> tuple[torch.Tensor, ...]:
        """:class:`_Magnitudes` of flat joints ``(N, 21, 3)`` with this module's tables."""
        dtype = joints.dtype

        def buf(name: str) -> torch.Tensor:
            return self._buffer(name, dtype)

        return _Magnitudes.apply(
            joints, sign, self.normalization, buf("bounds"),
            buf("tolerance_shift") if shifted else None, buf("term_matrix"), self.feature_rows,
            buf("feature_weight"), squared,
            buf("flexion_center"), buf("hull_edges"), buf("hull_tolerance"), buf("hull_rows"),
            buf("hull_picks"), self.hull_base,
        )  # fmt: skip

    def _per_pose(
        self, joints: torch.Tensor, sign: torch.Tensor | None, group: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(total, terms)`` of flat joints ``(N, 21, 3)``: ``terms`` ``(T, N)`` (or ``(T,)``
        reduced), ``T`` = 3, or 4 with the personal term; what :meth:`compile` compiles."""
        features, _, terms, keep = self._kernel(
            joints, sign, self.use_tolerance, self.hull_penalty == "squared"
        )
        if group is not None:
            allowance = self._buffer("personal_allowance", joints.dtype)
            personal_mag = _personal_magnitudes(
                features[:20], keep.to(joints.dtype), group, allowance
            )
            terms = torch.cat((terms, (self.personal_weight * personal_mag.mean(0))[None]))
        if self.reduction == "mean" and terms.shape[1] > 0:
            terms = terms.mean(1)
        elif self.reduction != "none":  # "sum", and the mean of no poses: 0, not NaN
            terms = terms.sum(1)
        return terms.sum(0), terms

    def magnitudes(
        self,
        joints: torch.Tensor,
        is_left: torch.Tensor | bool | None = None,
        group: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Violation magnitudes per family, as :func:`bmc_calib.violations.compute_violations`.

        Args:
            joints: ``(..., 21, 3)`` poses (see the module docstring for units).
            is_left: bool, or a bool tensor of the batch shape ``S`` (size-1 axes
                broadcast); true poses are mirrored.
            group: optional integer labels of shape ``S`` (a person or sequence per pose);
                adds ``"personal"`` ``S + (20,)``: each bone's relative deviation from its
                group's median beyond the bundle's allowance (validate's personal check).

        Returns:
            ``{"bone_length": S + (20,), "palm_curvature": S + (4,), "palm_angle": S + (4,),
            "joint_angle": S + (15,), "degenerate": S (bool)}``; magnitudes ``>= 0`` in the
            units of :mod:`bmc_calib.violations`, 0 for degenerate poses. Differentiable.
        """
        flat, batch = _flat_joints(joints)
        sign = _mirror_sign(is_left, batch, flat)
        features, magnitudes, _, keep = self._kernel(flat, sign, False, False)
        spans = {"bone_length": (0, 20), "palm_curvature": (20, 24), "palm_angle": (24, 28),
                 "joint_angle": (28, 43)}  # fmt: skip
        out = {name: magnitudes[a:b].T.reshape(*batch, b - a) for name, (a, b) in spans.items()}
        if group is not None:
            dense = _group_labels(group, batch, flat.device)
            allowance = self._buffer("personal_allowance", flat.dtype)
            personal_mag = _personal_magnitudes(
                features[:20], keep.to(flat.dtype), dense, allowance
            )
            out["personal"] = personal_mag.T.reshape(*batch, skeleton.NUM_BONES)
        out["degenerate"] = (~keep).reshape(batch)
        return out

    def forward(
        self,
        joints: torch.Tensor,
        is_left: torch.Tensor | bool | None = None,
        group: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of ``(..., 21, 3)`` poses.

        Args:
            joints: ``(..., 21, 3)`` predicted joints, canonical order (any length unit under
                ``reference-bone`` normalisation; the bundle's unit under ``none``).
            is_left: bool tensor of the batch shape ``S``, size-1 axes broadcast (or a bool); true
                poses are left hands and are mirrored (x → −x) first.
            group: optional integer tensor of shape ``S``: which person or sequence each pose
                belongs to. Adds the term ``"personal"`` = ``personal_weight`` × the mean over
                bones of each bone's deviation from its group's median length beyond the
                allowance (vectorised sorts and scatters, no host synchronisation).

        Returns:
            ``(total, terms)``: ``terms`` maps ``"bone_length"``, ``"palm"``,
            ``"joint_angle"`` to the weighted term losses and ``total`` is their sum. With
            ``reduction="none"`` every tensor has shape ``S``, else it is a scalar (batch mean
            or sum). Units: the mixed units of the magnitudes (relative, 1/length, radians).
        """
        flat, batch = _flat_joints(joints)
        compiled = self._compiled
        sign = _mirror_sign(is_left, batch, flat, always=compiled is not None)
        dense = None
        if group is not None:
            dense = _group_labels(group, batch, flat.device)
        mark_dynamic = getattr(torch._dynamo, "maybe_mark_dynamic", None)  # torch >= 2.2
        if compiled is not None and mark_dynamic is not None:  # one graph for every size
            for tensor in (flat, sign, dense):
                if tensor is not None:
                    mark_dynamic(tensor, 0)
        total, stacked = (compiled or self._per_pose)(flat, sign, dense)
        names = TERMS + (("personal",) if group is not None else ())
        if self.reduction == "none":
            total, stacked = total.reshape(batch), stacked.reshape(len(names), *batch)
        return total, dict(zip(names, stacked.unbind(0), strict=True))
