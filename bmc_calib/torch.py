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
- ``is_left``: a bool tensor (or Python bool) broadcastable to the batch shape; ``True`` poses
  are mirrored (x → −x) into right hands first, as :func:`bmc_calib.skeleton.mirror` does.
- Angles are radians; bone-length magnitudes are relative to the violated interval edge
  (0.2 = 20 % too long); palm curvature is in 1 / length unit.
- Floating point: float64 input is computed in float64; every other dtype in float32.
- Degenerate poses (DESIGN §4.7: non-finite or out-of-range coordinate, zero bone, coincident
  MCPs, parallel root bones, folded palm; the same tests and thresholds as
  :mod:`bmc_calib.kinematics`) get
  magnitude 0, contribute 0 to the loss and receive an exactly zero gradient. Internally they
  are replaced by a fixed plausible hand before any differentiable arithmetic, so no NaN or
  infinity can reach a gradient.

Everything in :meth:`BMCLoss.forward` is branch-free tensor code (no ``.item()``, no boolean
indexing, no host synchronisation), vectorised over poses, fingers and all 15 joint-angle
hulls at once, and ``torch.compile``-able.

This module imports PyTorch; nothing else in :mod:`bmc_calib` imports it.
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
except ModuleNotFoundError as exc:  # the optional extra is not installed
    if exc.name != "torch":
        raise
    raise ImportError(
        "bmc_calib.torch needs PyTorch, which is not installed: pip install 'bmc-calib[torch]'"
    ) from exc

from bmc_calib import kinematics, personal, skeleton, synthetic
from bmc_calib.errors import BadInputError, UsageError
from bmc_calib.limits import Limits

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
_REF_A, _REF_B = skeleton.REFERENCE_JOINTS
#: Smallest positive product used by the parallel-root-bone test (kinematics uses 1e-300).
_SINE_FLOOR = {torch.float64: 1e-300, torch.float32: float(torch.finfo(torch.float32).tiny)}


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


# --------------------------------------------------------------------------- vector helpers
# Inside this module poses are component-first and pose-last, like bmc_calib.kinematics:
# joints (3, 21, N), bones (3, 5, 4, N) (finger, segment from the root bone to the tip),
# scalars (..., N). Every elementwise op then runs over long contiguous rows of poses, which
# both eager PyTorch and torch.compile vectorise well (an innermost axis of size 3 does not).
def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(3, ...) · (3, ...) -> (...)``.

    Eager: a reduction over the leading axis (cheapest backward). Compiled: two slab
    additions, which inductor fuses as pointwise ops and recomputes in the backward instead of
    storing.
    """
    product = a * b
    if _is_compiling():
        return product[0] + product[1] + product[2]
    return product.sum(0)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(3, ...) × (3, ...) -> (3, ...)``, written out per component.

    (``torch.linalg.cross`` over axis 0 is several times slower on CPU, and inductor's
    decomposition of it gathers through index arithmetic.)
    """
    a0, a1, a2 = a.unbind(0)
    b0, b1, b2 = b.unbind(0)
    return torch.stack((a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0))


def _norm(a: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over axis 0; only for values known to be positive (finite gradient)."""
    return torch.sqrt(_dot(a, a))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- the template hand
def _template_hand() -> np.ndarray:
    """A fixed plausible right hand ``(21, 3)``, reference-bone normalised, float64.

    Substituted for degenerate poses before any differentiable arithmetic (their features
    and magnitudes are set to 0 afterwards), so the gradient of a degenerate pose is exactly
    zero.
    """
    subject = synthetic.make_subjects(1, seed=0)[0]
    angles = synthetic.ranges_radians().mean(axis=-1)  # mid-range flexion and abduction
    joints = synthetic.forward_kinematics(subject.root_bones, angles, subject.finger_lengths)
    return kinematics.normalize(joints)


# --------------------------------------------------------------------------- features
#: Poses per block of the layout copies: a block's 64 × 63 values stay in the CPU cache.
_BLOCK = 64
_ROWS = 3 * skeleton.NUM_JOINTS


def _to_pose_last(joints: torch.Tensor) -> torch.Tensor:
    """``(N, 21, 3) -> (3, 21, N)`` contiguous copy.

    Two in-order passes (transpose inside each 64-pose block, then move whole 64-value rows)
    instead of one strided copy: 1.3× faster, and about 2.5× for the inverse
    (:func:`_to_pose_first`). The last ``N mod 64`` poses are copied directly.
    """
    blocks = joints.shape[0] // _BLOCK
    n = blocks * _BLOCK
    per_block = joints[:n].reshape(blocks, _BLOCK, skeleton.NUM_JOINTS, 3)
    per_block = per_block.permute(0, 3, 2, 1).contiguous()  # (blocks, 3, 21, 64)
    rows_last = per_block.view(blocks, _ROWS, _BLOCK).transpose(0, 1).contiguous()
    out = rows_last.view(3, skeleton.NUM_JOINTS, n)
    if n == joints.shape[0]:
        return out
    return torch.cat((out, joints[n:].permute(2, 1, 0)), dim=-1)


def _to_pose_first(grad: torch.Tensor) -> torch.Tensor:
    """``(3, 21, N) -> (N, 21, 3)`` contiguous copy, the inverse of :func:`_to_pose_last`."""
    blocks = grad.shape[-1] // _BLOCK
    n = blocks * _BLOCK
    rows_first = grad[..., :n].reshape(_ROWS, blocks, _BLOCK).transpose(0, 1).contiguous()
    per_block = rows_first.view(blocks, 3, skeleton.NUM_JOINTS, _BLOCK)
    out = per_block.permute(0, 3, 2, 1).reshape(n, skeleton.NUM_JOINTS, 3)
    if n == grad.shape[-1]:
        return out
    return torch.cat((out, grad[..., n:].permute(2, 1, 0)), dim=0)


class _PoseLast(torch.autograd.Function):
    """Eager ``(N, 21, 3) -> (3, 21, N)`` with a contiguous gradient in the input's layout
    (autograd's own permute backward hands a strided view on, which costs a slow copy)."""

    @staticmethod
    def forward(joints: torch.Tensor) -> torch.Tensor:
        return _to_pose_last(joints)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _to_pose_first(grad)


if hasattr(torch.library, "custom_op"):  # torch >= 2.4
    # A custom op so that torch.compile materialises the transposed poses once: inductor
    # otherwise folds the transposition into every later read, and vectorising over poses
    # then needs strided scalar loads everywhere (measured: twice as slow on CPU).
    _pose_last_op = torch.library.custom_op("bmc_calib::pose_last", mutates_args=())(_to_pose_last)

    @_pose_last_op.register_fake
    def _pose_last_fake(joints: torch.Tensor) -> torch.Tensor:
        return joints.new_empty((joints.shape[2], joints.shape[1], joints.shape[0]))

    def _pose_last_backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _to_pose_first(grad)

    _pose_last_op.register_autograd(_pose_last_backward)
else:  # pragma: no cover - older torch: same numbers, slower compiled code
    _pose_last_op = _PoseLast.apply


def _prepare(
    joints: torch.Tensor, is_left: torch.Tensor | bool | None
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(..., 21, 3)`` joints → contiguous ``(3, 21, N)`` in the compute dtype, left hands
    mirrored. Returns the joints and the batch shape ``S`` (``N = prod(S)``).

    ``is_left`` should live on the joints' device (a CPU tensor for CUDA joints costs a copy).
    """
    if not isinstance(joints, torch.Tensor):
        joints = torch.as_tensor(joints)
    if joints.dim() < 2 or tuple(joints.shape[-2:]) != (skeleton.NUM_JOINTS, 3):
        raise BadInputError(f"joints must have shape (..., 21, 3), got {tuple(joints.shape)}")
    batch = tuple(joints.shape[:-2])
    j = joints.to(_compute_dtype(joints.dtype)).reshape(-1, skeleton.NUM_JOINTS, 3)
    j = _pose_last_op(j) if _is_compiling() else _PoseLast.apply(j)
    if is_left is None or is_left is False:
        return j, batch
    if is_left is True:
        x = -j[0]
    else:
        left = torch.broadcast_to(torch.as_tensor(is_left, device=j.device), batch).reshape(-1)
        x = torch.where(left.to(torch.bool), -j[0], j[0])
    return torch.cat((x[None], j[1:])), batch


def _normalize(j: torch.Tensor, normalization: str) -> tuple[torch.Tensor, torch.Tensor]:
    """DESIGN §4.1 on ``(3, 21, N)`` finite joints; returns the joints and ‖j0 − j9‖ ``(N,)``.

    The reference length uses a guarded square root, so its gradient is finite even for a
    zero reference bone.
    """
    ref = j[:, _REF_A] - j[:, _REF_B]
    ref_sq = _dot(ref, ref)
    positive = ref_sq > 0
    ref_len = torch.where(positive, torch.sqrt(torch.where(positive, ref_sq, 1.0)), 0.0)
    if normalization == "reference-bone":
        j = (j - j[:, _REF_B : _REF_B + 1]) / torch.where(positive, ref_len, 1.0)
    return j, ref_len


def _bones(j: torch.Tensor) -> torch.Tensor:
    """Bones ``(3, 5, 4, N)`` of joints ``(3, 21, N)``: ``[:, f, 0]`` is the root bone of finger
    ``f``, ``[:, f, 1 + level]`` its bone of that level; ``reshape(3, 20, N)`` is bone order."""
    fingers = j[:, 1:].reshape(3, 5, 4, -1)
    parents = torch.cat((j[:, :1, None].expand(-1, 5, -1, -1), fingers[:, :, :3]), dim=2)
    return fingers - parents


def _degenerate_mask(j: torch.Tensor, ref_len: torch.Tensor, normalization: str) -> torch.Tensor:
    """DESIGN §4.7 with the formulas and thresholds of :mod:`bmc_calib.kinematics`.

    ``j`` ``(3, 21, N)`` normalised finite joints (no autograd history needed); ``(N,)`` bool.
    """
    unit_len = torch.ones_like(ref_len) if normalization == "reference-bone" else ref_len
    tiny = kinematics.ZERO_LENGTH * unit_len
    bones = _bones(j)
    length = _norm(bones)  # (5, 4, N)
    zero = (length <= tiny).flatten(0, 1).any(0) | (ref_len <= 0)
    root = bones[:, :, 0]
    root_len = length[:, 0]
    step = root[:, 1:] - root[:, :-1]
    coincident = (_dot(step, step) <= tiny * tiny).any(0)
    normal_raw = _cross(root[:, 1:], root[:, :-1])
    cross_len = _norm(normal_raw)
    product = (root_len[1:] * root_len[:-1]).clamp_min(_SINE_FLOOR[j.dtype])
    parallel = (cross_len / product <= kinematics.PARALLEL_SINE).any(0)
    normal = normal_raw / torch.where(cross_len > 0, cross_len, 1.0)
    folded = (_norm(normal[:, 1:] + normal[:, :-1]) <= kinematics.OPPOSITE_NORMALS).any(0)
    return zero | coincident | parallel | folded


def _angles_in_frame(
    bone: torch.Tensor, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flexion and abduction (DESIGN §4.5) of bones ``(3, 5, N)`` in frames ``(3, 5, N)``.

    The values of kinematics' ``±atan2(|bx|, bz)`` and ``±atan2(|by|, ‖(bx, bz)‖)`` (strict
    ``< 0`` sign rule), written as ``atan2(bx, bz)`` and ``atan2(by, h)`` so that the gradient
    is exact at bx = 0 and by = 0 too. The one input where the two forms differ, ``bx = −0.0``
    with ``bz < 0`` (atan2 gives −π, the ``< 0`` rule +π), is mapped to +π; atan2 at (0, 0)
    is fed the safe argument (0, 1), so its gradient stays finite. Selections are written as
    arithmetic blends with 0/1 multipliers (no boolean tensors reach the backward pass).
    """
    bx, by, bz = _dot(bone, x), _dot(bone, y), _dot(bone, z)
    h_sq = bx * bx + bz * bz
    along_y = (h_sq == 0).to(bx.dtype)  # 1 where (bx, bz) = (0, 0): atan2 is fed (0, 1)
    flex = torch.atan2(bx, bz + along_y)
    # bx = −0.0 with bz < 0: kinematics gives +π where atan2 gives −π; the shift is a
    # constant (no mask in the backward pass: inductor 2.13 mis-compiles some such blends)
    flex = flex + (_TWO_PI * ((bx == 0) & (flex < 0)).to(bx.dtype)).detach()
    h = torch.sqrt(h_sq + along_y) - along_y
    return flex, torch.atan2(by, h)


def _next_frame(
    y: torch.Tensor, z: torch.Tensor, b_hat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DESIGN §4.6: carry frame ``(x, y, z)`` by the smallest rotation taking z onto ``b_hat``.

    That rotation is the product of the reflections through the planes normal to z and to
    ``h = z + b̂``; on y (⟂ z) it is ``y' = y − 2 (ĥ·y) ĥ`` — the rotation of kinematics'
    Rodrigues form, with gradients bounded by ~1/‖h‖. Antiparallel (kinematics' test
    ``‖z × b̂‖ ≤ ALIGNED`` and ``z·b̂ < 0``): the same fixed choice x' = x, y' = −y, blended
    with a 0/1 multiplier, and the untaken branch is fed ``h·h + 1 ≈ 1``. Returns
    ``x' = y' × b̂``, ``y'``, ``z' = b̂``.
    """
    w = _cross(z, b_hat)
    anti = ((_dot(w, w) <= kinematics.ALIGNED**2) & (_dot(z, b_hat) < 0)).to(y.dtype)
    h = z + b_hat
    h_hat = h * torch.rsqrt(_dot(h, h) + anti)
    y_new = (y - 2.0 * _dot(h_hat, y) * h_hat) * (1.0 - anti) - y * anti
    return _cross(y_new, b_hat), y_new, b_hat


def _features(j: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Features of ``(3, 21, N)`` normalised, NON-degenerate joints (differentiable).

    Returns bone length ``(20, N)``, palm curvature ``(4, N)``, palm angle ``(4, N)``, flexion
    ``(15, N)`` and abduction ``(15, N)``. Every norm divided by is bounded away from 0 by the
    degenerate tests, so the plain divisions are safe.
    """
    bones = _bones(j)  # (3, 5, 4, N)
    length = _norm(bones)  # (5, 4, N)
    root = bones[:, :, 0]  # (3, 5, N)
    root_len = length[:, 0]
    step = root[:, 1:] - root[:, :-1]  # MCP_{i+1} − MCP_i
    normal_raw = _cross(root[:, 1:], root[:, :-1])  # n_i ∝ r_{i+1} × r_i
    cross_len = _norm(normal_raw)
    normal = normal_raw / cross_len
    pair = normal[:, 1:] + normal[:, :-1]
    pair_unit = pair / _norm(pair)

    edge = torch.cat((normal[:, :1], pair_unit, normal[:, 3:]), dim=1)  # (3, 5, N)
    curvature = _dot(edge[:, 1:] - edge[:, :-1], step) / _dot(step, step)
    palm_angle = torch.atan2(cross_len, _dot(root[:, :-1], root[:, 1:]))

    z = root / root_len
    x = -torch.cat((normal[:, :2], pair_unit[:, 1:], normal[:, 3:]), dim=1)
    y_raw = _cross(z, x)
    y = y_raw / _norm(y_raw)
    flex, abd = [], []
    for level in range(3):
        bone = bones[:, :, 1 + level]
        f, a = _angles_in_frame(bone, x, y, z)
        flex.append(f)
        abd.append(a)
        if level < 2:
            x, y, z = _next_frame(y, z, bone / length[:, 1 + level])
    bone_length = length.reshape(skeleton.NUM_BONES, -1)
    return bone_length, curvature, palm_angle, torch.cat(flex), torch.cat(abd)


def _flat_features(
    j: torch.Tensor, normalization: str, template: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Features (item-first, ``(K, N)``), then the degenerate mask ``(N,)`` (bool) and its
    complement as a float multiplier ``(N,)``, of joints ``(3, 21, N)``.

    Two passes: the degenerate tests on a copy without autograd history (as in kinematics,
    a non-finite coordinate or one beyond :data:`bmc_calib.kinematics.COORDINATE_LIMIT`, in
    the input unit or after normalisation, flags the pose and is set to 0 first); then the
    features of the joints with every degenerate pose replaced by ``template`` ``(3, 21, 1)``
    — so no arithmetic on a degenerate (possibly NaN or overflowing) pose is ever
    differentiated — and set to 0 for degenerate poses.
    """
    with torch.no_grad():
        probe = j.detach()
        in_range = probe.abs() <= kinematics.COORDINATE_LIMIT  # False for NaN and inf
        bounded = in_range.flatten(0, 1).all(0)
        probe, ref_len = _normalize(torch.where(in_range, probe, 0.0), normalization)
        if normalization == "reference-bone":
            in_range = probe.abs() <= kinematics.COORDINATE_LIMIT
            bounded = bounded & in_range.flatten(0, 1).all(0)
            probe = torch.where(in_range, probe, 0.0)
        degenerate = _degenerate_mask(probe, ref_len, normalization) | ~bounded
        keep = (~degenerate).to(j.dtype)
    safe, _ = _normalize(torch.where(degenerate, template, j), normalization)
    return (*(_zero_degenerate(f, keep) for f in _features(safe)), degenerate, keep)


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
    this graph, see the compile test). Degenerate columns come from the template pose, so
    the gradient they pass on never reaches the input.
    """
    return value - (value * (1.0 - keep)).detach()


_TEMPLATE: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _template(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (dtype, device)
    if key not in _TEMPLATE:
        _TEMPLATE[key] = torch.as_tensor(_template_hand().T[:, :, None], dtype=dtype).to(device)
    return _TEMPLATE[key]


def compute_features(
    joints: torch.Tensor,
    normalization: str = "reference-bone",
    is_left: torch.Tensor | bool | None = None,
) -> TorchFeatures:
    """Differentiable :func:`bmc_calib.kinematics.compute_features` of ``(..., 21, 3)`` joints.

    See :class:`TorchFeatures` for shapes and units; ``is_left`` as in :class:`BMCLoss`.
    """
    kinematics.check_normalization(normalization)
    j, batch = _prepare(joints, is_left)
    template = _template(j.dtype, j.device)
    length, curvature, palm_angle, flex, abd, degenerate, _ = _flat_features(
        j, normalization, template
    )
    return TorchFeatures(
        length.T.reshape(*batch, skeleton.NUM_BONES),
        curvature.T.reshape(*batch, 4),
        palm_angle.T.reshape(*batch, 4),
        torch.stack((flex.T, abd.T), dim=-1).reshape(*batch, skeleton.NUM_ANGLES, 2),
        degenerate.reshape(batch),
    )


# --------------------------------------------------------------------------- hulls
def _hull_tables(hulls: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Padded per-edge tables of the hull polygons (float64, radians), ``H`` hulls.

    For hull ``a`` and edge ``k`` from vertex ``v_k`` to ``v_{k+1}``: unit direction ``u``,
    inward unit normal ``n`` (left of the edge; polygons are counter-clockwise), offsets
    ``v_k·u`` and ``v_k·n`` and the edge length ``L``. A point ``p`` is inside when every slack
    ``q = p·n − v_k·n ≥ −tol`` (:mod:`bmc_calib.hulls`' rule and tolerance); outside, its
    distance is the smallest ``sqrt(q² + e²)`` with ``s = p·u − v_k·u`` and
    ``e = s − clamp(s, 0, L)``. Consecutive duplicate vertices are dropped as
    :mod:`bmc_calib.hulls` does. Padded slots (``mask`` False) repeat edge 0, which changes
    neither minimum.

    Returns ``vertices`` ``(H, V, 2)`` (padding repeats vertex 0), ``mask`` ``(H, V)``,
    ``direction`` and ``normal`` ``(H, V, 2)``, ``along_offset``, ``normal_offset`` and
    ``length`` ``(H, V)``, ``tolerance`` ``(H,)``.
    """
    rings = []
    for a, hull in enumerate(hulls):
        ring = np.asarray(hull, dtype=np.float64)
        ring = ring[np.any(ring != np.roll(ring, -1, axis=0), axis=1)]
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


def _nearest_edges_eager(
    px: torch.Tensor, py: torch.Tensor, tables: torch.Tensor, tolerance: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Eager form of :class:`_HullDistance`'s forward: few large kernels.

    One batched matrix product gives both edge coordinates of every point, ``torch.min``
    picks the nearest edge and gathers read its terms. Returns the distance ``(H, N)``, the
    unnormalised direction ``q n + e u`` (x and y, ``(H, N)`` each) and the inside mask.
    """
    nx, ny, neg_n_off, ux, uy, neg_u_off, length = tables[..., None].unbind(0)  # (H, V, 1)
    weights = torch.cat((torch.cat((nx, ny), -1), torch.cat((ux, uy), -1)), 1)  # (H, 2V, 2)
    offsets = torch.cat((neg_n_off, neg_u_off), 1)  # (H, 2V, 1)
    points = torch.stack((px, py), 1)  # (H, 2, N)
    slack, along = torch.baddbmm(offsets, weights, points).split(nx.shape[1], 1)
    beyond = along - torch.minimum(along.clamp_min(0.0), length)
    distances = torch.hypot(slack, beyond)  # (H, V, N), as bmc_calib.hulls computes them
    dist, nearest = torch.min(distances, dim=1)
    inside = slack.amin(1) >= -tolerance
    nearest = nearest[:, None]
    q = slack.gather(1, nearest)[:, 0]
    e = beyond.gather(1, nearest)[:, 0]

    def pick(table: torch.Tensor) -> torch.Tensor:
        return table.expand(distances.shape).gather(1, nearest)[:, 0]

    return dist, q * pick(nx) + e * pick(ux), q * pick(ny) + e * pick(uy), inside


def _nearest_edges_compiled(
    px: torch.Tensor, py: torch.Tensor, tables: torch.Tensor, tolerance: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """``torch.compile`` form of :func:`_nearest_edges_eager`, same results.

    A running minimum over the ``V`` edges, unrolled: each step is pointwise on ``(H, N)``,
    so inductor fuses the whole scan into one loop over the points that keeps the nearest
    edge's squared distance and direction in registers (no ``(H, V, N)`` temporary, no
    reduction that recomputes its operands). Strict ``<`` keeps the first of tied edges;
    outside a convex polygon ties only occur at a shared vertex, where both edges give the
    same boundary point.
    """
    rows = tables[..., None]  # (7, H, V, 1)
    best_sq = best_dx = best_dy = min_slack = px
    for v in range(tables.shape[-1]):
        nx, ny, neg_n_off, ux, uy, neg_u_off, length = rows[:, :, v].unbind(0)  # (H, 1)
        slack = px * nx + py * ny + neg_n_off  # (H, N)
        along = px * ux + py * uy + neg_u_off
        beyond = along - torch.minimum(along.clamp_min(0.0), length)
        squared = slack * slack + beyond * beyond
        dx = slack * nx + beyond * ux
        dy = slack * ny + beyond * uy
        if v == 0:
            best_sq, best_dx, best_dy, min_slack = squared, dx, dy, slack
            continue
        closer = squared < best_sq
        best_sq = torch.where(closer, squared, best_sq)
        best_dx = torch.where(closer, dx, best_dx)
        best_dy = torch.where(closer, dy, best_dy)
        min_slack = torch.minimum(min_slack, slack)
    return torch.sqrt(best_sq), best_dx, best_dy, min_slack >= -tolerance


class _HullDistance(torch.autograd.Function):
    """Distance of points to padded hulls with an analytic gradient (see :func:`_hull_distance`).

    The forward evaluates every edge of every hull for every point without autograd history;
    the gradient of a distance ``d`` with respect to its point is ``(q n + e u) / d`` at the
    nearest edge (the unit vector from the nearest boundary point), 0 inside. The backward is
    then one multiply per coordinate instead of replaying the ``(H, V, N)`` computation.
    """

    @staticmethod
    def forward(
        flexion: torch.Tensor,
        abduction: torch.Tensor,
        tables: torch.Tensor,
        tolerance: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nearest_edges = _nearest_edges_compiled if _is_compiling() else _nearest_edges_eager
        dist, dx, dy, inside = nearest_edges(flexion, abduction, tables, tolerance)
        scale = torch.where(inside, 0.0, 1.0 / dist.clamp_min(1e-30))
        return torch.where(inside, 0.0, dist), dx * scale, dy * scale

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, grad_x, grad_y = output
        ctx.save_for_backward(grad_x, grad_y)
        ctx.mark_non_differentiable(grad_x, grad_y)

    @staticmethod
    def backward(ctx, grad_dist, grad_gx, grad_gy):
        grad_x, grad_y = ctx.saved_tensors
        return grad_dist * grad_x, grad_dist * grad_y, None, None


def _hull_distance(
    flexion: torch.Tensor, abduction: torch.Tensor, tables: torch.Tensor, tolerance: torch.Tensor
) -> torch.Tensor:
    """Distance (radians) of points ``(H, N)`` (unwrapped flexion, abduction) to ``H`` hulls.

    0 inside (tolerance included), the Euclidean distance to the polygon boundary outside.
    ``tables`` ``(7, H, V)`` is the stacked edge table (:data:`HULL_EDGE_ROWS`) and
    ``tolerance`` ``(H, 1)``. Every edge of every hull is evaluated for every point: in eager
    mode as ``(H, V, N)`` batched temporaries, compiled as one fused scan over the edges.
    """
    dist, _, _ = _HullDistance.apply(flexion, abduction, tables, tolerance)
    return dist


def _unwrap_flexion(flexion: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """:func:`bmc_calib.hulls.unwrap_flexion`: into ``(center − π, center + π]``, same formula."""
    turns = torch.floor((math.pi - (flexion - center)) / _TWO_PI)
    return flexion + _TWO_PI * turns


# --------------------------------------------------------------------------- the loss
#: Buffers read by ``forward``; each has a float32 shadow ``_float32_<name>``.
_FORWARD_BUFFERS: tuple[str, ...] = (
    "bone_length_min", "bone_length_max", "bone_length_tolerance",
    "palm_curvature_min", "palm_curvature_max", "palm_curvature_tolerance",
    "palm_angle_min", "palm_angle_max", "palm_angle_tolerance",
    "flexion_center", "joint_angle_tolerance", "hull_tolerance", "hull_edges", "template",
)  # fmt: skip
_FLOAT32 = "_float32_"


def _refresh_float32_shadows(module: nn.Module, incompatible_keys: object) -> None:
    """``load_state_dict`` post hook: recompute the float32 shadows of the loaded buffers."""
    with torch.no_grad():
        for name in _FORWARD_BUFFERS:
            getattr(module, _FLOAT32 + name).copy_(getattr(module, name))


class BMCLoss(nn.Module):
    """Biomechanical-constraint loss: hinge penalties outside the limits of a bundle.

    Args:
        limits: the :class:`bmc_calib.limits.Limits` to enforce (see :meth:`from_bundle`).
        weights: ``(bone_length, palm, joint_angle)`` term weights (floats ``>= 0``).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (see :meth:`forward`).
        use_tolerance: when true the hinge starts at each item's stored tolerance
            (``max(magnitude − tolerance, 0)``) instead of at the limit itself.
        personal_weight: weight of the personal bone term, used for batches that pass
            ``group`` (see :meth:`forward`).

    Per pose and item, magnitudes ``m`` are those of :func:`bmc_calib.violations.
    compute_violations` (see :meth:`magnitudes`). Per pose, term losses are
    ``w_bone · mean_k m_bone``, ``w_palm · (mean_i m_curvature + mean_i m_palm_angle)`` and
    ``w_joint · mean_a m_joint``. ``mean`` averages them over the batch (so a term is the mean
    over the batch and the term's items), ``sum`` sums over the batch, ``none`` keeps the batch
    shape. Degenerate poses count in the batch with loss 0.

    All limits are registered buffers (``.to(device)``, ``state_dict`` and ``load_state_dict``
    work), stored in float64 — ``bone_length_min/max/tolerance``, ``palm_curvature_*``,
    ``palm_angle_*``, ``flexion_center``, ``joint_angle_tolerance``, ``hull_vertices``
    ``(15, V, 2)`` with ``hull_mask`` ``(15, V)`` (padded hulls), ``hull_tolerance`` and the
    per-edge table ``hull_edges`` ``(7, 15, V)`` (:data:`HULL_EDGE_ROWS`) — with float32
    copies (not saved, refreshed by ``load_state_dict``) that float32 calls read.
    """

    def __init__(
        self,
        limits: Limits,
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        reduction: str = "mean",
        use_tolerance: bool = False,
        personal_weight: float = 1.0,
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
        kinematics.check_normalization(limits.normalization)
        self.normalization = limits.normalization
        self.length_unit = limits.length_unit
        self.weights = dict(zip(TERMS, weights, strict=True))
        self.reduction = reduction
        self.use_tolerance = bool(use_tolerance)

        def buffer(name: str, value: np.ndarray, persistent: bool = True) -> None:
            tensor = torch.as_tensor(np.ascontiguousarray(value))
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
        buffer("flexion_center", joint.flexion_center)
        buffer("joint_angle_tolerance", joint.tolerance)
        buffer("hull_vertices", tables["vertices"])
        buffer("hull_mask", tables["mask"])
        buffer("hull_tolerance", tables["tolerance"])
        buffer("hull_edges", _edge_rows(tables))
        buffer("template", _template_hand().T[:, :, None], persistent=False)
        buffer("personal_allowance", personal.allowance(limits)[:, None])
        # float32 shadows of what forward reads: casting float64 buffers inside a compiled
        # graph converts them once per element of every loop that reads them
        for name in _FORWARD_BUFFERS:
            self.register_buffer(
                _FLOAT32 + name, getattr(self, name).to(torch.float32), persistent=False
            )
        self.register_load_state_dict_post_hook(_refresh_float32_shadows)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        reduction: str = "mean",
        use_tolerance: bool = False,
    ) -> BMCLoss:
        """A loss with the limits of the bundle at ``path`` (read and digest-checked by
        :func:`bmc_calib.bundle.read_bundle`); other arguments as in the constructor."""
        from bmc_calib.bundle import read_bundle

        return cls(read_bundle(path), weights=weights, reduction=reduction,
                   use_tolerance=use_tolerance)  # fmt: skip

    def extra_repr(self) -> str:
        w = ", ".join(f"{k}={v:g}" for k, v in self.weights.items())
        return (
            f"normalization={self.normalization!r}, weights=({w}), "
            f"reduction={self.reduction!r}, use_tolerance={self.use_tolerance}"
        )

    # ------------------------------------------------------------------ evaluation
    def _buffer(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """Buffer ``name`` in ``dtype`` (the float32 shadow for float32)."""
        if dtype == torch.float32:
            name = _FLOAT32 + name
        return getattr(self, name).to(dtype)

    def _flat_magnitudes(
        self,
        joints: torch.Tensor,
        is_left: torch.Tensor | bool | None,
        group: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, tuple[int, ...]]:
        """Magnitudes item-first ``{family: (K, N)}``, degenerate ``(N,)`` and the batch shape."""
        j, batch = _prepare(joints, is_left)
        dtype = j.dtype

        def buf(name: str) -> torch.Tensor:
            return self._buffer(name, dtype)

        def column(name: str) -> torch.Tensor:
            return buf(name)[:, None]

        length, curvature, palm_angle, flex, abd, degenerate, keep = _flat_features(
            j, self.normalization, buf("template")
        )
        # The interval hinges of kinematics' max(max(lo − v, v − hi), 0) as a sum of two ReLUs
        # (equal because min <= max, checked at construction; ReLU backward needs no masks).
        # Bone lengths relative to the violated edge; non-positive edges become `tiny`.
        tiny = torch.finfo(dtype).tiny
        low, high = column("bone_length_min"), column("bone_length_max")
        low, high = torch.where(low > 0, low, tiny), torch.where(high > 0, high, tiny)
        bone = torch.relu(1.0 - length / low) + torch.relu(length / high - 1.0)
        curv = torch.relu(column("palm_curvature_min") - curvature) + torch.relu(
            curvature - column("palm_curvature_max")
        )
        palm = torch.relu(column("palm_angle_min") - palm_angle) + torch.relu(
            palm_angle - column("palm_angle_max")
        )
        joint = _hull_distance(
            _unwrap_flexion(flex, column("flexion_center")),
            abd,
            buf("hull_edges"),
            column("hull_tolerance"),
        )
        magnitudes = {
            "bone_length": _zero_degenerate(bone, keep),
            "palm_curvature": _zero_degenerate(curv, keep),
            "palm_angle": _zero_degenerate(palm, keep),
            "joint_angle": _zero_degenerate(joint, keep),
        }
        if group is not None:
            magnitudes["personal"] = _personal_magnitudes(
                length, keep, group, self.personal_allowance.to(dtype)
            )
        return magnitudes, degenerate, batch

    def magnitudes(
        self,
        joints: torch.Tensor,
        is_left: torch.Tensor | bool | None = None,
        group: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Violation magnitudes per family, as :func:`bmc_calib.violations.compute_violations`.

        Args:
            joints: ``(..., 21, 3)`` poses (see the module docstring for units).
            is_left: bool, broadcastable to the batch shape ``S``; true poses are mirrored.
            group: optional integer labels of shape ``S`` (a person or sequence per pose);
                adds ``"personal"`` ``S + (20,)``: each bone's relative deviation from its
                group's median beyond the bundle's allowance (validate's personal check).

        Returns:
            ``{"bone_length": S + (20,), "palm_curvature": S + (4,), "palm_angle": S + (4,),
            "joint_angle": S + (15,), "degenerate": S (bool)}``; magnitudes ``>= 0`` in the
            units of :mod:`bmc_calib.violations`, 0 for degenerate poses. Differentiable.
        """
        flat, degenerate, batch = self._flat_magnitudes(joints, is_left, group)
        out = {name: value.T.reshape(*batch, value.shape[0]) for name, value in flat.items()}
        out["degenerate"] = degenerate.reshape(batch)
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
            is_left: bool tensor broadcastable to the batch shape ``S`` (or a bool); true
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
        flat, _, batch = self._flat_magnitudes(joints, is_left, group)
        if self.use_tolerance:
            dtype = flat["bone_length"].dtype
            flat = {
                name: value
                if name == "personal"
                else torch.relu(value - self._buffer(f"{name}_tolerance", dtype)[:, None])
                for name, value in flat.items()
            }
        per_pose = {
            "bone_length": self.weights["bone_length"] * flat["bone_length"].mean(0),
            "palm": self.weights["palm"]
            * (flat["palm_curvature"].mean(0) + flat["palm_angle"].mean(0)),
            "joint_angle": self.weights["joint_angle"] * flat["joint_angle"].mean(0),
        }
        if "personal" in flat:
            per_pose["personal"] = self.personal_weight * flat["personal"].mean(0)
        if self.reduction == "none":
            terms = {name: value.reshape(batch) for name, value in per_pose.items()}
        elif self.reduction == "sum":
            terms = {name: value.sum() for name, value in per_pose.items()}
        else:
            terms = {name: value.mean() for name, value in per_pose.items()}
        total = terms["bone_length"] + terms["palm"] + terms["joint_angle"]
        if "personal" in terms:
            total = total + terms["personal"]
        return total, terms
