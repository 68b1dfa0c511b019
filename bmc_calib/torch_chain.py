"""The feature chain of :mod:`bmc_calib.kinematics` in PyTorch, with a hand-derived backward.

:func:`chain_forward` computes, without autograd, the 58 features of DESIGN §4 and the
degenerate test of §4.7 for a batch of poses; :func:`chain_backward` maps a gradient with
respect to those features back to the joints. :mod:`bmc_calib.torch` wraps both in one
``torch.autograd.Function``: a forward and backward pass of the loss is then about 310–320
ATen kernels (240–260 of them in this module) instead of the ~1,100 autograd replays of the
same arithmetic (DESIGN §9, issue "BMCLoss ready for real training loops").

Conventions (once for the module):

- Joints ``(N, 21, 3)`` in canonical order, right hands (``sign`` ``(N,)`` = −1 mirrors
  x → −x first), any length unit. ``N`` poses are the last axis of every internal tensor.
- Bones ``(5, 4, 3, N)``: finger, segment (0 = root bone, 1–3 = phalanges), component.
  Flattened ``(20, …)`` is :data:`bmc_calib.skeleton.BONE_CHILD` order.
- Features ``(58, N)``, rows :data:`FEATURE_ROWS`: bone length ``[0:20]`` (normalised unit),
  palm curvature ``[20:24]`` (1 / normalised unit), palm angle ``[24:28]`` (radians), flexion
  ``[28:43]`` and abduction ``[43:58]`` (radians, angle id ``5 · level + finger``).
- Frames are carried in *local* coordinates: the three phalanges of each finger are
  expressed once in the finger's level-0 frame (one batched projection), and each level's
  frame is the previous one rotated by the smallest rotation taking its z axis onto the bone,
  which in local coordinates is ``T(u, w) = w − ((h·w) / k) h + 2 (u·w) e_z`` with ``u`` the
  unit bone, ``h = u + e_z`` and ``k = 1 + u_z`` (kinematics' Rodrigues form, rewritten; ``k``
  is evaluated as ``(u_x² + u_y²) / (1 − u_z)`` for ``u_z < 0``, accurate near π).
  Antiparallel (``u_x² + u_y² ≤ ALIGNED²``, ``u_z < 0``): kinematics' fixed choice, a half
  turn about x, ``T = diag(1, −1, −1)``.

Degenerate poses (non-finite, out of range, zero bone, coincident MCPs, parallel root bones,
folded palm, kinematics' thresholds) have features 0 and gradient exactly 0: every NaN or
infinity their arithmetic produces is replaced (``nan_to_num``) and the result multiplied by
the 0/1 mask before it can reach another pose (every operation is per pose) or the output.
Masks are 0/1 products throughout: on CPU ``masked_fill`` and broadcasting ``torch.where``
cost several times a multiplication.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from bmc_calib import kinematics, skeleton

try:  # torch >= 2.3
    from torch.compiler import is_compiling as _is_compiling
except ImportError:  # pragma: no cover
    from torch._dynamo import is_compiling as _is_compiling

#: Feature rows of :func:`chain_forward`'s output, ``(name, start, stop)``.
FEATURE_ROWS: tuple[tuple[str, int, int], ...] = (
    ("bone_length", 0, 20),
    ("palm_curvature", 20, 24),
    ("palm_angle", 24, 28),
    ("flexion", 28, 43),
    ("abduction", 43, 58),
)
NUM_FEATURES = 58
_TWO_PI = 2.0 * math.pi
_MIDDLE = 2  # the reference bone wrist → middle MCP is the middle finger's root bone
_REF_FLOOR = {torch.float64: 1e-300, torch.float32: float(torch.finfo(torch.float32).tiny)}


# every degenerate test of kinematics compares with the same threshold (one comparison here)
assert kinematics.ZERO_LENGTH == kinematics.PARALLEL_SINE == kinematics.OPPOSITE_NORMALS


def _palm_matrix() -> np.ndarray:
    """``(7, 9)``: ``(q_0..3, g_x0..4)`` → gradients of the 4 normals and 3 pair units.

    The curvature gradient enters the edge normals ``e = (n_0, p_0, p_1, p_2, n_3)`` as
    ``e_i += q_{i-1} − q_i``; the level-0 x axes are ``x = −(n_0, n_1, p_1, p_2, n_3)``.
    """
    edge = np.zeros((5, 4))
    for i in range(4):
        edge[i + 1, i] += 1.0
        edge[i, i] -= 1.0
    to_edge = np.zeros((7, 5))  # edge slot → row of (n_0..3, p_0..2)
    for slot, row in enumerate((0, 4, 5, 6, 3)):
        to_edge[row, slot] = 1.0
    to_x = np.zeros((7, 5))
    for slot, row in enumerate((0, 1, 5, 6, 3)):
        to_x[row, slot] = -1.0
    return np.concatenate((to_edge @ edge, to_x), axis=1)


def _pair_matrix() -> np.ndarray:
    """``(4, 3)``: gradient of the pair sums ``n_i + n_{i+1}`` → gradient of the normals."""
    out = np.zeros((4, 3))
    for i in range(3):
        out[i, i] = out[i + 1, i] = 1.0
    return out


class _Constants(NamedTuple):
    identity: torch.Tensor  # (63, 63)
    palm_matrix: torch.Tensor  # (7, 9)
    pair_matrix: torch.Tensor  # (4, 3)
    e_z: torch.Tensor  # (3, 1)


_ARRAYS = (np.eye(63), _palm_matrix(), _pair_matrix(), np.array([[0.0], [0.0], [1.0]]))
_CONSTANTS: dict[tuple[torch.dtype, torch.device], _Constants] = {}


def _constants(dtype: torch.dtype, device: torch.device) -> _Constants:
    """The constant matrices in ``dtype`` on ``device`` (cached; :func:`warm_constants`
    fills the cache before code is compiled)."""
    key = (dtype, torch.device(device))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = _Constants(
            *(torch.as_tensor(a, dtype=dtype, device=device) for a in _ARRAYS)
        )
    return _CONSTANTS[key]


def warm_constants(device: torch.device | str) -> None:
    """Create the cached constants for float32 and float64 on ``device``."""
    for dtype in (torch.float32, torch.float64):
        _constants(dtype, torch.device(device))


def _bones(wrist: torch.Tensor, fingers: torch.Tensor) -> torch.Tensor:
    """Bones child − parent ``(5, 4, 3, N)`` (as kinematics subtracts) of the wrist ``(3, N)``
    and the finger joints ``(5, 4, 3, N)``: in eager mode two subtractions into one buffer,
    compiled (where ``out=`` into views is best avoided) a concatenation and one."""
    if _is_compiling():
        return fingers - torch.cat((wrist.expand(5, 1, *wrist.shape), fingers[:, :-1]), 1)
    raw = torch.empty_like(fingers)
    torch.sub(fingers[:, 1:], fingers[:, :-1], out=raw[:, 1:])
    torch.sub(fingers[:, 0], wrist, out=raw[:, 0])
    return raw


def _bones_backward(grad: torch.Tensor) -> torch.Tensor:
    """Gradient ``(21, 3, N)`` w.r.t. the joints of :func:`_bones` for the bone gradient
    ``grad`` ``(5, 4, 3, N)``: each joint gets +its bone and −the next bone of its finger; the
    wrist −the sum of the root bones."""
    if _is_compiling():
        next_bone = torch.nn.functional.pad(grad[:, 1:], (0, 0, 0, 0, 0, 1))
        wrist = grad[:, 0].sum(0).neg_()
        return torch.cat((wrist[None], (grad - next_bone).view(20, *grad.shape[2:])))
    out = grad.new_empty((21, *grad.shape[2:]))
    fingers = out[1:].view(grad.shape)
    torch.sub(grad[:, :-1], grad[:, 1:], out=fingers[:, :-1])
    fingers[:, -1].copy_(grad[:, -1])
    torch.sum(grad[:, 0], 0, out=out[0]).neg_()
    return out


def _transpose_poses(a: torch.Tensor) -> torch.Tensor:
    """``(N, C) -> (C, N)``, contiguous, for ``N`` ≫ ``C``. Written as a channels-last →
    contiguous conversion of a ``(1, C, N, 1)`` image, whose copy kernel is blocked and
    threaded (at batch 4096 on 2 CPU threads ~1.8× faster than ``a.t().contiguous()``; the
    other direction is not faster this way); the values are the same.

    In compiled code, a product with the identity (exact): inductor would otherwise fuse the
    transposition into every consumer, which then reads the poses with a stride of ``C``
    (measured: the compiled forward 2× slower).
    """
    rows, cols = a.shape
    if _is_compiling():
        return torch.mm(_constants(a.dtype, a.device).identity, a.t())
    return a.view(1, rows, 1, cols).permute(0, 3, 1, 2).contiguous().view(cols, rows)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(..., 3, N) · (..., 3, N) -> (..., N)`` (shapes broadcast; two kernels: at batch
    4096 the component-wise form saves less time than its three extra dispatches cost)."""
    return (a * b).sum(-2)


def _broadcast(a: torch.Size, b: torch.Size) -> tuple[int, ...]:
    """The broadcast of two shapes of the same rank (``torch.broadcast_shapes`` is Python
    code costing ~60 µs a call, a tenth of a small batch's step)."""
    if len(a) != len(b):
        return tuple(torch.broadcast_shapes(a, b))
    return tuple(x if y == 1 else y for x, y in zip(a, b, strict=True))


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(..., 3, N) × (..., 3, N)`` (shapes broadcast).

    On CPU component by component (six kernels, ~5× faster there than ``linalg.cross`` over
    a non-last axis); elsewhere, and in compiled code, ``linalg.cross``, one kernel launch.
    """
    if a.device.type != "cpu" or _is_compiling():
        return torch.linalg.cross(a, b, dim=-2)
    out = a.new_empty(_broadcast(a.shape, b.shape))
    (a0, a1, a2), (b0, b1, b2) = a.unbind(-2), b.unbind(-2)
    for o, (p, q, r, s) in zip(out.unbind(-2), ((a1, b2, a2, b1), (a2, b0, a0, b2),
                                               (a0, b1, a1, b0)), strict=True):  # fmt: skip
        torch.mul(p, q, out=o).addcmul_(r, s, value=-1.0)
    return out


def _norm(a: torch.Tensor) -> torch.Tensor:
    """``(..., 3, N) -> (..., N)`` (``linalg.vector_norm`` over a non-last axis is ~100×
    slower on CPU)."""
    return (a * a).sum(-2).sqrt()


def _unit_backward(grad: torch.Tensor, unit: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Gradient through ``unit = v / ‖v‖`` (``norm`` = ‖v‖ without the component axis)."""
    return (grad - _dot(grad, unit)[..., None, :] * unit) / norm[..., None, :]


class Rotation(NamedTuple):
    """One level's frame carry ``T(u, ·)`` (module docstring), fingers first, ``N`` last."""

    u: torch.Tensor  # (5, 3, N) unit bone in the frame's coordinates
    h: torch.Tensor  # (5, 3, N) u + e_z (e_y where antiparallel)
    k: torch.Tensor  # (5, N) 1 + u_z (1/2 where antiparallel)
    turning: torch.Tensor  # (5, N) 1.0, or 0.0 where antiparallel


def _rotation(c: torch.Tensor, length: torch.Tensor, const: _Constants) -> Rotation:
    """The carry taking e_z onto the bone ``c`` ``(5, 3, N)`` of length ``length`` ``(5, N)``.

    ``k = 1 + u_z`` is evaluated as ``(u_x² + u_y² + (1 + u_z)²) / 2`` (equal on the unit
    sphere), accurate near π where ``1 + u_z`` alone cancels (kinematics is accurate there
    too). Antiparallel (``k ≤ ALIGNED² / 2``, i.e. kinematics' ``|z × b̂| ≤ ALIGNED``,
    ``z·b̂ < 0``): ``h = e_y``, ``k = 1/2`` turn the same formula into the half turn about x,
    ``T = diag(1, −1, −1)`` (kinematics' fixed choice).
    """
    u = c / length[:, None]
    h = u + const.e_z
    k = torch.addcmul((u[:, :2] * u[:, :2]).sum(1), h[:, 2], h[:, 2]).mul_(0.5)
    # where antiparallel (turning = 0): h = e_y, k = 1/2, by exact arithmetic (products by 1
    # and 0 and sums with 0 are exact; torch.where / masked_fill with these broadcasts are
    # several times slower on CPU)
    turning = (k > 0.5 * kinematics.ALIGNED**2).to(k.dtype)
    fixed = 1.0 - turning
    h.mul_(turning[:, None])[:, 1].add_(fixed)
    return Rotation(u, h, k.mul_(turning).add_(fixed, alpha=0.5), turning)


def _carry(rot: Rotation, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``T(u, w) = w − γ h + 2 (u·w) e_z`` with ``γ = (h·w) / k`` for ``w`` ``(5, M, 3, N)``;
    returns it and ``γ`` ``(5, M, 1, N)``."""
    h = rot.h[:, None]
    gamma = (_dot(h, w) / rot.k[:, None])[:, :, None]  # (5, M, 1, N)
    out = w - gamma * h
    out[..., 2, :].add_(_dot(rot.u[:, None], w), alpha=2.0)
    return out, gamma


def _carry_backward(
    rot: Rotation, w: torch.Tensor, gamma: torch.Tensor, g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``T(u, w)`` ``(5, M, 3, N)`` for the output gradient ``g``: ``(G_w, G_u)``
    with ``G_u`` ``(5, 3, N)`` summed over the ``M`` vectors.

    With ``β = (g·h) / k``: ``G_w = g − β h + 2 g_z u`` and (``h = u + e_z``)
    ``G_u = (2 g_z − β) w − γ g + γ β e_z``; antiparallel, ``T`` is constant: ``G_u = 0``.
    """
    h = rot.h[:, None]
    beta = (_dot(g, h) / rot.k[:, None])[:, :, None]  # (5, M, 1, N)
    g_z = g[..., 2:, :]
    grad_w = (g - beta * h).addcmul_(g_z, rot.u[:, None], value=2.0)
    grad_u = torch.add(-beta, g_z, alpha=2.0) * w - gamma * g
    grad_u[..., 2, :].add_((gamma * beta)[..., 0, :])
    return grad_w, grad_u.sum(1).mul_(rot.turning[:, None])


def angles_in_frame(
    c: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Flexion and abduction (DESIGN §4.5, kinematics' values) of bones ``c`` ``(..., 3, N)``
    given in their frames' coordinates, each ``(..., N)``, and what
    :func:`angles_backward` needs.

    Flexion ``atan2(c_x + 0.0, c_z)``: adding +0.0 turns −0.0 into +0.0, which is
    kinematics' strict ``< 0`` sign rule (+π for ``c_x = −0``, ``c_z < 0``). Abduction
    ``atan2(c_y, ‖(c_x, c_z)‖)``.
    """
    c_sq = c * c
    h_sq = c_sq[..., 0, :] + c_sq[..., 2, :]
    h = h_sq.sqrt()
    flexion = torch.atan2(c[..., 0, :] + 0.0, c[..., 2, :])
    abduction = torch.atan2(c[..., 1, :], h)
    pole = h_sq == 0  # along ±y: both gradients are 0 there, divided by 1 instead of 0
    saved = (c, h + pole, h_sq.add_(pole), c_sq.sum(-2))
    return flexion, abduction, saved


def angles_backward(
    saved: tuple[torch.Tensor, ...], grad_flex: torch.Tensor, grad_abd: torch.Tensor
) -> torch.Tensor:
    """Gradient ``(..., 3, N)`` w.r.t. ``c`` of :func:`angles_in_frame` for the gradients
    ``(..., N)`` of flexion and abduction.

    d flexion / dc = (e_y × c) / h² and d abduction / dc = (e_y − c_y c / ‖c‖²) / h, with
    ``h = ‖(c_x, c_z)‖`` (both 0 along ±y, where the formulas meet 0 / 0).
    """
    c, h, h_sq, c_sq = saved
    per_abd = grad_abd / h
    along_c = (per_abd * c[..., 1, :]).div_(c_sq).neg_()
    per_flex = grad_flex / h_sq
    grad_c = along_c[..., None, :] * c  # e_y × c = (c_z, 0, −c_x)
    grad_c[..., 0, :].addcmul_(per_flex, c[..., 2, :])
    grad_c[..., 1, :].add_(per_abd)
    grad_c[..., 2, :].addcmul_(per_flex, c[..., 0, :], value=-1.0)
    return grad_c


class Saved(NamedTuple):
    """What :func:`chain_backward` needs (all from :func:`chain_forward`)."""

    bones: torch.Tensor  # (5, 4, 3, N) normalised bones
    length: torch.Tensor  # (5, 4, N)
    scale: torch.Tensor | None  # (N,) reference length (None: normalisation "none")
    sign: torch.Tensor | None  # (N,) ±1
    keep: torch.Tensor  # (N,) 1.0, or 0.0 for a degenerate pose
    normal: torch.Tensor  # (4, 3, N) unit palm normals
    cross_len: torch.Tensor  # (4, N)
    root_dot: torch.Tensor  # (4, N)
    root_product: torch.Tensor  # (4, N) ‖r_i‖ ‖r_{i+1}‖
    pair_unit: torch.Tensor  # (3, 3, N)
    pair_len: torch.Tensor  # (3, N)
    step: torch.Tensor  # (4, 3, N)
    step_sq: torch.Tensor  # (4, N)
    edge_diff: torch.Tensor  # (4, 3, N)
    curvature: torch.Tensor  # (4, N)
    frame: torch.Tensor  # (5, 3, 3, N): axes x, y, z of the level-0 frames
    local: torch.Tensor  # (5, 3, 3, N): phalanges in the level-0 frames
    rot0: Rotation
    gamma0: torch.Tensor  # (5, 2, 1, N)
    rot1: Rotation
    gamma1: torch.Tensor  # (5, 1, 1, N)
    carried: torch.Tensor  # (5, 1, 3, N): the distal phalanx in the level-1 frame
    angle_bone: torch.Tensor  # (3, 5, 3, N): each level's phalanx in its own frame
    angle_h: torch.Tensor  # (3, 5, N): ‖(c_x, c_z)‖ (1 where 0)
    angle_h_sq: torch.Tensor  # (3, 5, N): c_x² + c_z² (1 where 0)
    angle_c_sq: torch.Tensor  # (3, 5, N): ‖c‖²


def chain_forward(
    joints: torch.Tensor, sign: torch.Tensor | None, normalization: str
) -> tuple[torch.Tensor, torch.Tensor, Saved]:
    """Features ``(58, N)`` (0 for degenerate poses), ``keep`` ``(N,)`` (True = not degenerate)
    and what :func:`chain_backward` needs, for joints ``(N, 21, 3)`` (no autograd)."""
    n = joints.shape[0]
    const = _constants(joints.dtype, joints.device)
    # the poses transposed once (one copy: cheaper than a matrix product doing the same)
    joint = _transpose_poses(joints.reshape(n, 63)).view(21, 3, n)
    fingers = joint[1:].view(5, 4, 3, n)
    raw = _bones(joint[0], fingers)  # (5, 4, 3, N)
    if sign is not None:
        raw[:, :, 0].mul_(sign)
    raw_len = (raw * raw).sum(-2).sqrt_()  # (5, 4, N)
    ref = raw_len[_MIDDLE, 0]  # (N,) ‖j0 − j9‖
    if normalization == "reference-bone":
        scale: torch.Tensor | None = ref
        bones, length = raw / ref, raw_len / ref
    else:
        scale, bones, length = None, raw, raw_len
    root = bones[:, 0]  # (5, 3, N)
    root_len = length[:, 0]
    before, after = root[:-1], root[1:]
    normal_raw = _cross(after, before)  # n_i ∝ r_{i+1} × r_i
    cross_len = _norm(normal_raw)  # (4, N)
    normal = normal_raw / cross_len[:, None]
    root_dot = _dot(before, after)
    palm_angle = torch.atan2(cross_len, root_dot)
    pair = normal[1:] + normal[:-1]
    pair_len = _norm(pair)
    pair_unit = pair / pair_len[:, None]
    step = after - before
    step_sq = _dot(step, step)
    edge = torch.cat((normal[:1], pair_unit, normal[3:]))
    edge_diff = edge[1:] - edge[:-1]
    curvature = _dot(edge_diff, step) / step_sq

    # DESIGN §4.7: one comparison of every tested quantity, scaled to the common threshold;
    # NaN fails it. Coordinates within COORDINATE_LIMIT, in the input unit and normalised
    # (|joint − joint 9| / reference length), from per-component extremes over the joints:
    # rounding is monotone, so max_k (x_k − x_9) = max_k x_k − x_9, exactly as kinematics.
    root_product = root_len[1:] * root_len[:-1]
    sine = cross_len / root_product.clamp_min(_REF_FLOOR[joints.dtype])
    if scale is None:  # thresholds are relative to the reference bone
        tested = (length.view(20, n) / ref, step_sq * (1e7 / (ref * ref)), sine, pair_len)
    else:
        tested = (length.view(20, n), step_sq * 1e7, sine, pair_len)
    keep = torch.cat(tested).amin(0) > kinematics.ZERO_LENGTH
    top, bottom = joint.amax(0), joint.amin(0)  # (3, N)
    keep &= torch.cat((top, -bottom)).amax(0) <= kinematics.COORDINATE_LIMIT
    if scale is not None:
        middle = joint[skeleton.REFERENCE_JOINTS[1]]
        reach = torch.cat((top - middle, middle - bottom)).amax(0)
        keep &= reach / ref <= kinematics.COORDINATE_LIMIT
    keep_f = keep.to(joints.dtype)

    z = root / root_len[:, None]
    x = -torch.cat((normal[:2], pair_unit[1:], normal[3:]))
    frame = torch.stack((x, _cross(z, x), z), dim=1)  # (5, axis, component, N)
    # local[f, l, a] = Σ_c frame[f, a, c] bone[f, l, c]: (5, phalanx, axis, N)
    axes, phalanges = frame[:, None], bones[:, 1:, None]
    local = axes[..., 0, :] * phalanges[..., 0, :]
    local.addcmul_(axes[..., 1, :], phalanges[..., 1, :])
    local.addcmul_(axes[..., 2, :], phalanges[..., 2, :])
    rot0 = _rotation(local[:, 0], length[:, 1], const)
    level1, gamma0 = _carry(rot0, local[:, 1:])  # the middle and distal phalanges
    rot1 = _rotation(level1[:, 0], length[:, 2], const)
    carried = level1[:, 1:]
    level2, gamma1 = _carry(rot1, carried)
    c = torch.stack((local[:, 0], level1[:, 0], level2[:, 0]))  # (level, finger, 3, N)
    flexion, abduction, angle_saved = angles_in_frame(c)
    # degenerate poses → 0: whatever NaN or infinity they hold first, then a product with
    # the mask (a broadcast masked_fill is ~15x slower on CPU)
    features = torch.cat(
        (length.view(20, n), curvature, palm_angle, flexion.view(15, n), abduction.view(15, n))
    )
    features = features.nan_to_num_(0.0, 0.0, 0.0).mul_(keep_f)
    saved = Saved(
        bones, length, scale, sign, keep_f, normal, cross_len, root_dot, root_product, pair_unit,
        pair_len,
        step, step_sq, edge_diff, curvature, frame, local, rot0, gamma0, rot1, gamma1, carried,
        *angle_saved,
    )  # fmt: skip
    return features, keep, saved


def chain_backward(saved: Saved, grad: torch.Tensor) -> torch.Tensor:
    """Gradient ``(N, 21, 3)`` w.r.t. the joints from the gradient ``(58, N)`` w.r.t. the
    features of :func:`chain_forward` (0 for degenerate poses)."""
    s = saved
    n = grad.shape[-1]
    const = _constants(grad.dtype, grad.device)
    grad_len = grad[:20].view(5, 4, n)
    grad_curv, grad_palm = grad[20:24], grad[24:28]
    grad_flex, grad_abd = grad[28:43].view(3, 5, n), grad[43:].view(3, 5, n)

    grad_c = angles_backward(
        (s.angle_bone, s.angle_h, s.angle_h_sq, s.angle_c_sq), grad_flex, grad_abd
    )

    # the frame carries, last level first
    grad_carried, grad_u1 = _carry_backward(s.rot1, s.carried, s.gamma1, grad_c[2][:, None])
    grad_c1 = grad_c[1] + _unit_backward(grad_u1, s.rot1.u, s.length[:, 2])
    grad_level1 = torch.cat((grad_c1[:, None], grad_carried), dim=1)
    grad_local12, grad_u0 = _carry_backward(s.rot0, s.local[:, 1:], s.gamma0, grad_level1)
    grad_c0 = grad_c[0] + _unit_backward(grad_u0, s.rot0.u, s.length[:, 1])
    grad_local = torch.cat((grad_c0[:, None], grad_local12), dim=1)  # (5, phalanx, axis, N)

    # the projection onto the level-0 frames: local[f, l, a] = Σ_c frame[f, a, c] bone[f, l, c]
    # (sums of three products, as in the forward: no (5, 3, 3, 3, N) temporary)
    g, axes = grad_local[..., None, :], s.frame[:, None]
    grad_phalanges = g[:, :, 0] * axes[:, :, 0]
    grad_phalanges.addcmul_(g[:, :, 1], axes[:, :, 1]).addcmul_(g[:, :, 2], axes[:, :, 2])
    g, phalanges = grad_local[:, :, :, None], s.bones[:, 1:, None]
    grad_frame = g[:, 0] * phalanges[:, 0]
    grad_frame.addcmul_(g[:, 1], phalanges[:, 1]).addcmul_(g[:, 2], phalanges[:, 2])
    grad_x, grad_y, grad_z = grad_frame.unbind(1)
    z = s.frame[:, 2]
    x_z_cross = _cross(s.frame[:, ::2], grad_y[:, None])  # (x × g_y, z × g_y): one call
    grad_root = _unit_backward(grad_z + x_z_cross[:, 0], z, s.length[:, 0])
    grad_x = grad_x - x_z_cross[:, 1]

    # the palm: curvature and x axes → normals and pair units
    per_step = (grad_curv / s.step_sq)[:, None]
    q = per_step * s.step
    grad_step = per_step * torch.add(s.edge_diff, s.curvature[:, None] * s.step, alpha=-2.0)
    mixed = torch.mm(const.palm_matrix, torch.cat((q, grad_x)).view(9, 3 * n)).view(7, 3, n)
    grad_pair = _unit_backward(mixed[4:], s.pair_unit, s.pair_len).view(3, 3 * n)
    grad_normal = torch.addmm(mixed[:4].view(4, 3 * n), const.pair_matrix, grad_pair)
    grad_normal = grad_normal.view(4, 3, n)
    # normal = raw / ‖raw‖, palm angle = atan2(‖raw‖, r_i · r_{i+1})
    # ‖r_i × r_{i+1}‖² + (r_i · r_{i+1})² = (‖r_i‖ ‖r_{i+1}‖)²
    per_palm = grad_palm / s.root_product.square()
    radial = per_palm * s.root_dot * s.cross_len - _dot(grad_normal, s.normal)
    grad_raw = (grad_normal + radial[:, None] * s.normal) / s.cross_len[:, None]
    grad_dot = (per_palm * s.cross_len)[:, None]
    before, after = s.bones[:-1, 0], s.bones[1:, 0]
    # (g × r_{i+1}, g × r_i) in one call; r_i × g = −(g × r_i)
    crossed = _cross(grad_raw[None], torch.stack((after, before)))
    grad_root[:-1].add_(crossed[0] - grad_dot * after - grad_step)
    grad_root[1:].sub_(crossed[1] + grad_dot * before - grad_step)

    # bones: lengths, roots, phalanges
    grad_bones = (grad_len / s.length)[:, :, None] * s.bones
    grad_bones[:, 0].add_(grad_root)
    grad_bones[:, 1:].add_(grad_phalanges)
    if s.scale is not None:  # bones = raw / ‖raw_middle_root‖
        radial_all = (grad_bones * s.bones).sum((0, 1, 2))
        grad_bones[_MIDDLE, 0].sub_(radial_all * s.bones[_MIDDLE, 0])
    # degenerate poses: whatever their arithmetic gave (NaN included) → 0; then one product
    # by the per-pose factor keep / scale, times the mirror sign for x: (3, N)
    factor = s.keep if s.scale is None else (s.keep / s.scale).nan_to_num_(0.0, 0.0, 0.0)
    factor = (
        factor.expand(3, n) if s.sign is None else torch.stack((factor * s.sign, factor, factor))
    )
    grad_bones = grad_bones.nan_to_num_(0.0, 0.0, 0.0).mul_(factor)
    # joints: +bone as its child, −bone as its parent; then back to poses first (one copy)
    grad_joint = _bones_backward(grad_bones).view(63, n).t()
    if _is_compiling():  # as in _transpose_poses: keep inductor from fusing the transposition
        return torch.mm(grad_joint, const.identity).view(n, 21, 3)
    return grad_joint.contiguous().view(n, 21, 3)
