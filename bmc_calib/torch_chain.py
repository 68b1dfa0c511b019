"""The feature chain of :mod:`bmc_calib.kinematics` in PyTorch, with a hand-derived backward.

:func:`chain_forward` computes, without autograd, the 58 features of DESIGN §4 and the
degenerate test of §4.7 for a batch of poses; :func:`chain_backward` maps a gradient with
respect to those features back to the joints. :mod:`bmc_calib.torch` wraps both in one
``torch.autograd.Function``: a forward and backward pass of the loss is then about 250
ATen kernels on an accelerator (about 190 of them in this module) instead of the ~1,100
autograd replays of the same arithmetic (DESIGN §9, issue "BMCLoss ready for real training
loops").

CPU tensors, eager or compiled, take the same chain fused in C instead (:func:`fused_path`):
the extension :mod:`bmc_calib._fused_chain` (``_fused_chain.c``, built at install where a C
compiler is) computes each pose's features, and in the backward recomputes its intermediates
and runs this module's backward, in one pass over the poses, four poses per vector and on
PyTorch's own threads. It is the operator pair ``bmc_calib::fused_chain_forward`` /
``fused_chain_backward``; :func:`fused_hull_distance` does the loss's hull distances the same
way (eager mode): a loss step is then ~25 kernels on the CPU. Without the extension and on
accelerators the ATen formulation below runs; tests run both and check them against each
other.

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
  is evaluated as ``‖h‖² / 2``, accurate near π). Antiparallel (``‖h‖² ≤ ALIGNED²``):
  kinematics' fixed choice, a half turn about x, ``T = diag(1, −1, −1)``.
- In eager mode results are written into shared buffers (``out=``) where that saves a
  concatenation; compiled, they are concatenated instead (:func:`out_slot`: inductor makes
  every write into a slice a pass over the whole buffer). Compiled, the poses are transposed
  by the operator ``bmc_calib::transposed_copy`` (:func:`transposed`), which inductor calls
  as one copy instead of fusing strided reads into every consumer.

Degenerate poses (non-finite, out of range, zero bone, coincident MCPs, parallel root bones,
folded palm, kinematics' thresholds) have features 0 and gradient exactly 0: every NaN or
infinity their arithmetic produces is replaced (``nan_to_num``) and the result multiplied by
the 0/1 mask before it can reach another pose (every operation is per pose) or the output.
Masks are 0/1 products throughout: on CPU ``masked_fill`` and broadcasting ``torch.where``
cost several times a multiplication, and so do bool tensors (:func:`comparison_mask`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from bmc_calib import kinematics, skeleton

try:  # the compiled C extension (built at install where a C compiler is present)
    from bmc_calib import _fused_chain
except ImportError:  # pragma: no cover - a build without it takes the ATen formulation
    _fused_chain = None

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
_TESTED = 11  # rows of chain_forward's buffer before the bone lengths (DESIGN §4.7 tests)
_MIDDLE = 2  # the reference bone wrist → middle MCP is the middle finger's root bone


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


def _edge_matrices() -> tuple[np.ndarray, np.ndarray]:
    """``(4, 7)`` and ``(5, 7)``: the palm's unit vectors ``(n_0..3, p_0..2)`` → the edge
    differences ``e_{i+1} − e_i`` of ``e = (n_0, p_0, p_1, p_2, n_3)`` and the level-0 x axes
    ``−(n_0, n_1, p_1, p_2, n_3)`` (entries 0 and ±1: each row is an exact difference or
    negation)."""
    edge = np.zeros((4, 7))
    slots = (0, 4, 5, 6, 3)
    for i in range(4):
        edge[i, slots[i + 1]] += 1.0
        edge[i, slots[i]] -= 1.0
    x_axes = np.zeros((5, 7))
    for f, slot in enumerate((0, 1, 5, 6, 3)):
        x_axes[f, slot] = -1.0
    return edge, x_axes


def _bone_matrix() -> np.ndarray:
    """``(60, 63)``: bones ``(5, 4, 3)`` (child − parent, component-wise) from joints
    ``(21, 3)``, flattened."""
    out = np.zeros((5, 4, 3, 21, 3))
    for f in range(5):
        for seg in range(4):
            child = 1 + 4 * f + seg
            parent = 0 if seg == 0 else child - 1
            for c in range(3):
                out[f, seg, c, child, c] += 1.0
                out[f, seg, c, parent, c] -= 1.0
    return out.reshape(60, 63)


class _Constants(NamedTuple):
    palm_matrix: torch.Tensor  # (7, 9)
    pair_matrix: torch.Tensor  # (4, 3)
    e_z: torch.Tensor  # (3, 1)
    edge_matrix: torch.Tensor  # (4, 7)
    x_matrix: torch.Tensor  # (5, 7)
    bone_matrix: torch.Tensor  # (60, 63)


_ARRAYS = (
    _palm_matrix(),
    _pair_matrix(),
    np.array([[0.0], [0.0], [1.0]]),
    *_edge_matrices(),
    _bone_matrix(),
)
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


def _bones_backward_to_poses(grad: torch.Tensor, const: _Constants) -> torch.Tensor:
    """:func:`_bones_backward` written straight into poses-first ``(N, 21, 3)``, as one
    product with the 0/±1 matrix of child − parent (the transposition costs no pass of its
    own; a wrist gradient sums its five root bones in the product's order)."""
    n = grad.shape[-1]
    return torch.mm(grad.view(60, n).t(), const.bone_matrix).view(n, 21, 3)


def _transposed_copy(a: torch.Tensor) -> torch.Tensor:
    """``(R, C) -> (C, R)``, contiguous, the fastest eager way. For ``R`` ≫ ``C`` (poses
    first → poses last) as a channels-last → contiguous conversion of a ``(1, C, R, 1)``
    image, whose copy kernel is blocked and threaded (at batch 4096 on 2 CPU threads ~1.8×
    faster than ``a.t().contiguous()``; the other direction is not faster this way); the
    values are the same."""
    rows, cols = a.shape
    if rows > cols:
        return a.view(1, rows, 1, cols).permute(0, 3, 1, 2).contiguous().view(cols, rows)
    return a.t().contiguous()


@torch.library.custom_op("bmc_calib::transposed_copy", mutates_args=())
def _transposed_copy_op(a: torch.Tensor) -> torch.Tensor:
    """:func:`_transposed_copy` as an operator opaque to ``torch.compile``: inductor calls it
    as one kernel and materialises its result, instead of fusing the transposition into
    every consumer, which then reads the poses with a stride of ``C`` (measured: the compiled
    forward 2× slower), or a product with the identity (exact, but at batch 4096 on 2 CPU
    threads 0.3 ms against 0.09 ms for this copy, each way). Always a new tensor (an
    operator's result must not alias its input; for one row or column the transposition is
    a view)."""
    if 1 in a.shape:
        return a.new_empty((a.shape[1], a.shape[0])).copy_(a.t())
    return _transposed_copy(a)


@_transposed_copy_op.register_fake
def _(a: torch.Tensor) -> torch.Tensor:
    return a.new_empty((a.shape[1], a.shape[0]))


def transposed(a: torch.Tensor) -> torch.Tensor:
    """``(R, C) -> (C, R)``, contiguous (:func:`_transposed_copy`; compiled, through the
    opaque :func:`_transposed_copy_op`)."""
    return _transposed_copy_op(a) if _is_compiling() else _transposed_copy(a)


#: Whether CPU tensors take the fused C chain when it is built (:func:`fused_path`). The
#: environment variable ``BMC_CALIB_FUSED=0`` switches it off (to measure or debug the ATen
#: formulation); tests set it to run both.
USE_FUSED = os.environ.get("BMC_CALIB_FUSED", "1") != "0"


def _openmp_runtime() -> str | None:
    """The GNU OpenMP library this process has loaded (PyTorch's), from ``/proc/self/maps``
    (Linux), or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if os.path.basename(path).startswith("libgomp") and ".so" in path:
                    return path
    except OSError:
        pass
    return None


def _openmp_stack_bytes() -> int | None:
    """The OpenMP worker stack size set by ``OMP_STACKSIZE`` / ``GOMP_STACKSIZE`` (a number
    with an optional B, K, M or G suffix; K without one), the smaller if both; None if
    neither is set (the system's default, megabytes) or readable."""
    sizes = []
    for name in ("OMP_STACKSIZE", "GOMP_STACKSIZE"):
        text = os.environ.get(name, "").strip().upper()
        if not text:
            continue
        unit = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1])
        number = text[:-1] if unit else text
        try:
            sizes.append(int(float(number) * (unit or 1 << 10)))
        except ValueError:
            continue
    return min(sizes) if sizes else None


#: The fused loops' stack frames take ~40 KB per thread; OpenMP workers with less stack
#: (an explicit small ``OMP_STACKSIZE``) would crash, so the chain then runs on threads of
#: its own with 1 MiB each.
_SAFE_STACK_BYTES = 256 << 10

if _fused_chain is not None and (_runtime := _openmp_runtime()) is not None:
    _stack = _openmp_stack_bytes()
    if _stack is None or _stack >= _SAFE_STACK_BYTES:
        _fused_chain.use_openmp(_runtime)  # the C chain runs on PyTorch's own threads


def fused_available() -> bool:
    """Whether the fused C chain (:mod:`bmc_calib._fused_chain`) was built and imports."""
    return _fused_chain is not None


def fused_path(tensor: torch.Tensor) -> bool:
    """Whether the chain of ``tensor`` runs in the fused C extension: CPU float32 or float64
    tensors, eager or compiled (inductor calls the operator as one extern kernel and fuses
    the rest), when it is built and :data:`USE_FUSED` is set (and the accelerator
    formulation is not forced, see :func:`accelerator_path`)."""
    return (
        USE_FUSED
        and _fused_chain is not None
        and tensor.device.type == "cpu"
        and tensor.dtype in (torch.float32, torch.float64)
        and not accelerator_path(tensor)
    )


def accelerator_path(tensor: torch.Tensor) -> bool:
    """Whether work on ``tensor``'s device takes the accelerator formulation — one kernel per
    operation: ``linalg.cross``, bool masks, the joint gradient as one product — rather than
    the CPU's (component-wise cross products, float masks, subtraction and transposition).
    Tests force it on the CPU to check that formulation's numbers where no GPU is lent."""
    return tensor.device.type != "cpu"


def out_slot(buffer: torch.Tensor) -> torch.Tensor | None:
    """``buffer`` (a slice of a larger one) as an ``out=`` target in eager mode, where writing
    results into one buffer saves a concatenation; None (a fresh result) in compiled code,
    where inductor turns each write into a slice into a pass over the whole buffer (measured:
    the compiled step 1.4 ms slower at batch 4096). See :func:`joined_slots`."""
    return None if _is_compiling() else buffer


def joined_slots(buffer: torch.Tensor, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The buffer the ``parts`` were written into (:func:`out_slot`, eager), or their
    concatenation along the first axis (compiled)."""
    return torch.cat(parts) if _is_compiling() else buffer


def stacked_slots(
    buffer: torch.Tensor, parts: tuple[torch.Tensor, ...] | list[torch.Tensor]
) -> torch.Tensor:
    """As :func:`joined_slots`, for parts that are slices ``buffer[i]`` (a new first axis)."""
    return torch.stack(tuple(parts)) if _is_compiling() else buffer


def comparison_mask(
    compare: Callable[..., torch.Tensor], a: torch.Tensor, value: float
) -> torch.Tensor:
    """``compare(a, value)`` as a 0/1 mask for arithmetic with ``a``'s dtype. On the CPU
    written as floats by the comparison itself (a bool result, and arithmetic with it, are
    each ~4x slower there than with floats); on accelerators and in compiled code bool (one
    kernel; mixed-dtype arithmetic costs nothing extra there, and inductor fuses it)."""
    if accelerator_path(a) or _is_compiling():  # (inductor fuses bool arithmetic)
        return compare(a, value)
    return compare(a, value, out=torch.empty_like(a))


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


def _cross(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(..., 3, N) × (..., 3, N)`` (shapes broadcast), into ``out`` if given.

    On CPU component by component (six kernels, ~5× faster there than ``linalg.cross`` over
    a non-last axis); elsewhere, and in compiled code, ``linalg.cross``, one kernel launch.
    """
    if accelerator_path(a) or _is_compiling():
        return torch.linalg.cross(a, b, dim=-2, out=out)
    if out is None:
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
    return torch.addcmul(grad, _dot(grad, unit)[..., None, :], unit, value=-1.0).div_(
        norm[..., None, :]
    )


class Rotation(NamedTuple):
    """One level's frame carry ``T(u, ·)`` (module docstring), fingers first, ``N`` last."""

    uh: torch.Tensor  # (2, 5, 3, N): u, the unit bone in the frame's coordinates, and h
    kk: torch.Tensor  # (5, N) ‖h‖² = 2 k
    fixed: torch.Tensor  # (5, N) 1.0 where antiparallel (kinematics' fixed half turn), else 0


def _rotation(c: torch.Tensor, length: torch.Tensor, const: _Constants) -> Rotation:
    """The carry taking e_z onto the bone ``c`` ``(5, 3, N)`` of length ``length`` ``(5, N)``.

    ``u`` and ``h = u + e_z`` are stored together. ``k = 1 + u_z`` is ``‖h‖² / 2`` (equal on
    the unit sphere; accurate near π, where ``1 + u_z`` alone cancels). Antiparallel
    (``‖h‖² ≤ ALIGNED²``, i.e. kinematics' ``|z × b̂| ≤ ALIGNED``, ``z·b̂ < 0``): ``h`` gains
    ``e_y`` and ``‖h‖²`` 1, which turns the same formula into the half turn about x,
    ``T = diag(1, −1, −1)`` (kinematics' fixed choice; exactly so for ``h = 0``, to within
    ``ALIGNED`` otherwise).
    """
    uh = c.new_empty((2, *c.shape))
    u = torch.div(c, length[:, None], out=out_slot(uh[0]))
    h = torch.add(u, const.e_z, out=out_slot(uh[1]))
    kk = _dot(h, h)
    fixed = comparison_mask(torch.le, kk, kinematics.ALIGNED**2)
    h[:, 1].add_(fixed)
    return Rotation(stacked_slots(uh, (u, h)), kk.add_(fixed), fixed)


def _carry(rot: Rotation, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``T(u, w) = w − γ h + 2 (u·w) e_z`` with ``γ = (h·w) / k`` for ``w`` ``(M, 5, 3, N)``;
    returns it and ``γ / 2 = (h·w) / ‖h‖²`` ``(M, 5, 1, N)``."""
    u, h = rot.uh.unbind(0)
    # (two products: one broadcasting over both u, h and the M vectors is several times slower)
    half_gamma = (_dot(h, w) / rot.kk)[..., None, :]
    out = torch.addcmul(w, half_gamma, h, value=-2.0)
    out[..., 2, :].add_(_dot(u, w), alpha=2.0)
    return out, half_gamma


def _carry_backward(
    rot: Rotation,
    w: torch.Tensor,
    half_gamma: torch.Tensor,
    g: torch.Tensor,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``T(u, w)`` ``(M, 5, 3, N)`` for the output gradient ``g``: ``G_w`` (into
    ``out`` if given) and ``G_u / 2`` ``(5, 3, N)``, summed over the ``M`` vectors (the caller
    doubles it).

    With ``β = (g·h) / k``: ``G_w = g − β h + 2 g_z u`` and (``h = u + e_z``)
    ``G_u = (2 g_z − β) w − γ g + γ β e_z``; antiparallel, ``T`` is constant: ``G_u = 0``.
    """
    u, h = rot.uh.unbind(0)
    half_beta = (_dot(g, h) / rot.kk)[..., None, :]  # (M, 5, 1, N)
    g_z = g[..., 2:, :]
    grad_w = torch.addcmul(g, half_beta, h, value=-2.0, out=out).addcmul_(g_z, u, value=2.0)
    half = (g_z - half_beta) * w
    half.addcmul_(half_gamma, g, value=-1.0)
    half[..., 2, :].addcmul_(half_gamma[..., 0, :], half_beta[..., 0, :], value=2.0)
    grad_u = half.sum(0)
    return grad_w, grad_u.addcmul_(grad_u, rot.fixed[:, None], value=-1.0)


def angles_in_frame(
    c: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Flexion and abduction (DESIGN §4.5, kinematics' values) of bones ``c`` ``(..., 3, N)``
    given in their frames' coordinates, each ``(..., N)`` (into ``out`` if given), and what
    :func:`angles_backward` needs.

    Flexion ``atan2(c_x + 0.0, c_z)``: adding +0.0 turns −0.0 into +0.0, which is
    kinematics' strict ``< 0`` sign rule (+π for ``c_x = −0``, ``c_z < 0``). Abduction
    ``atan2(c_y, ‖(c_x, c_z)‖)``.
    """
    c_sq = c * c
    h_sq = c_sq[..., 0, :] + c_sq[..., 2, :]
    h = h_sq.sqrt()
    flex_out, abd_out = (None, None) if out is None else out
    flexion = torch.atan2(c[..., 0, :] + 0.0, c[..., 2, :], out=flex_out)
    abduction = torch.atan2(c[..., 1, :], h, out=abd_out)
    pole = comparison_mask(
        torch.eq, h_sq, 0.0
    )  # along ±y: both gradients are 0, divided by 1 not 0
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
    frame: torch.Tensor  # (3, 5, 3, N): axes x, y, z of the level-0 frames
    local: torch.Tensor  # (3, 5, 3, N): phalanges in the level-0 frames
    rot0: Rotation
    gamma0: torch.Tensor  # (2, 5, 1, N)
    rot1: Rotation
    gamma1: torch.Tensor  # (1, 5, 1, N)
    carried: torch.Tensor  # (1, 5, 3, N): the distal phalanx in the level-1 frame
    angle_bone: torch.Tensor  # (3, 5, 3, N): each level's phalanx in its own frame
    angle_h: torch.Tensor  # (3, 5, N): ‖(c_x, c_z)‖ (1 where 0)
    angle_h_sq: torch.Tensor  # (3, 5, N): c_x² + c_z² (1 where 0)
    angle_c_sq: torch.Tensor  # (3, 5, N): ‖c‖²


class FusedSaved(NamedTuple):
    """What :func:`chain_backward` needs from the fused C chain, which recomputes the rest."""

    joints: torch.Tensor  # (N, 21, 3), contiguous
    sign: torch.Tensor | None  # (N,) ±1, contiguous
    keep: torch.Tensor  # (N,) 1.0, or 0.0 for a degenerate pose
    reference_bone: bool  # normalisation "reference-bone" (else "none")


_FUSED_CONSTANTS = (
    skeleton.REFERENCE_JOINTS[1],
    kinematics.ZERO_LENGTH,
    kinematics.ALIGNED,
    kinematics.COORDINATE_LIMIT,
)


def _check_fused_inputs(joints: torch.Tensor, *others: torch.Tensor | None) -> None:
    """The C chain reads raw memory: refuse what it would misread (one clear error)."""
    if joints.dim() != 3 or tuple(joints.shape[1:]) != (21, 3):
        raise ValueError(f"joints must have shape (N, 21, 3), got {tuple(joints.shape)}")
    for tensor in (joints, *others):
        if tensor is not None and (tensor.dtype != joints.dtype or not tensor.is_contiguous()):
            raise ValueError("the fused chain needs contiguous tensors of the joints' dtype")
    if joints.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the fused chain computes float32 or float64, got {joints.dtype}")


@torch.library.custom_op("bmc_calib::fused_chain_forward", mutates_args=(), device_types="cpu")
def _fused_chain_forward(
    joints: torch.Tensor, sign: torch.Tensor | None, reference_bone: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(58, N)`` and ``keep`` ``(N,)`` bool of contiguous CPU joints ``(N, 21, 3)``
    (float32 or float64; ``sign`` ``(N,)`` of the same dtype, or None) by the fused C chain.
    An operator, so that dispatch modes, fake tensors and tracing see one op with its shapes
    instead of a raw pointer call."""
    _check_fused_inputs(joints, sign)
    if sign is not None and tuple(sign.shape) != (joints.shape[0],):
        raise ValueError(f"sign must have shape (N,), got {tuple(sign.shape)}")
    n = joints.shape[0]
    features = joints.new_empty(NUM_FEATURES, n)
    keep = torch.empty(n, dtype=torch.bool)
    _fused_chain.forward(
        joints.data_ptr(), 0 if sign is None else sign.data_ptr(), features.data_ptr(),
        keep.data_ptr(), n, int(joints.dtype == torch.float64), int(reference_bone),
        torch.get_num_threads(), *_FUSED_CONSTANTS,
    )  # fmt: skip
    return features, keep


@_fused_chain_forward.register_fake
def _(joints, sign, reference_bone):
    n = joints.shape[0]
    return joints.new_empty(NUM_FEATURES, n), joints.new_empty(n, dtype=torch.bool)


@torch.library.custom_op("bmc_calib::fused_chain_backward", mutates_args=(), device_types="cpu")
def _fused_chain_backward(
    joints: torch.Tensor, sign: torch.Tensor | None, grad: torch.Tensor, reference_bone: bool
) -> torch.Tensor:
    """The joints' gradient ``(N, 21, 3)`` for the features' gradient ``grad`` ``(58, N)`` (the
    joints' dtype, contiguous) by the fused C chain, which recomputes the forward's
    intermediates."""
    _check_fused_inputs(joints, sign, grad)
    if tuple(grad.shape) != (NUM_FEATURES, joints.shape[0]):
        raise ValueError(f"grad must have shape (58, N), got {tuple(grad.shape)}")
    out = torch.empty_like(joints)
    _fused_chain.backward(
        joints.data_ptr(), 0 if sign is None else sign.data_ptr(), grad.data_ptr(),
        out.data_ptr(), joints.shape[0], int(joints.dtype == torch.float64),
        int(reference_bone), torch.get_num_threads(), *_FUSED_CONSTANTS,
    )  # fmt: skip
    return out


@_fused_chain_backward.register_fake
def _(joints, sign, grad, reference_bone):
    return torch.empty_like(joints)


@torch.library.custom_op(
    "bmc_calib::fused_hull_distance", mutates_args=("dist", "dx", "dy"), device_types="cpu"
)
def fused_hull_distance(
    features: torch.Tensor,
    center: torch.Tensor,
    edges: torch.Tensor,
    tolerance: torch.Tensor,
    dist: torch.Tensor,
    dx: torch.Tensor,
    dy: torch.Tensor,
) -> None:
    """:func:`bmc_calib.torch._hull_distance_and_direction` of the unwrapped flexion and the
    abduction of ``features`` ``(58, N)`` (:func:`chain_forward`'s) in the fused C extension,
    written into ``dist``, ``dx`` and ``dy`` ``(15, N)``: the distance to each hull (0 inside)
    and its gradient. ``center`` ``(15, 1)`` flexion centres, ``edges`` ``(7, 15, V)``
    (:data:`bmc_calib.torch.HULL_EDGE_ROWS`), ``tolerance`` ``(15, 1)``; all contiguous, in
    the features' dtype (float32 or float64)."""
    n = features.shape[1]
    if (
        tuple(features.shape) != (NUM_FEATURES, n)
        or edges.dim() != 3
        or edges.shape[:2]
        != (
            7,
            15,
        )
    ):
        raise ValueError("fused_hull_distance needs features (58, N) and edges (7, 15, V)")
    if tuple(center.shape) != (15, 1) or tuple(tolerance.shape) != (15, 1):
        raise ValueError("fused_hull_distance needs center and tolerance of shape (15, 1)")
    for out in (dist, dx, dy):
        if tuple(out.shape) != (15, n):
            raise ValueError(f"fused_hull_distance writes (15, N), got {tuple(out.shape)}")
    for tensor in (features, center, edges, tolerance, dist, dx, dy):
        if tensor.dtype != features.dtype or not tensor.is_contiguous():
            raise ValueError("fused_hull_distance needs contiguous tensors of one dtype")
    if features.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"fused_hull_distance computes float32 or float64, got {features.dtype}")
    _fused_chain.hulls(
        features.data_ptr(), center.data_ptr(), edges.data_ptr(), tolerance.data_ptr(),
        dist.data_ptr(), dx.data_ptr(), dy.data_ptr(), n, edges.shape[2],
        int(features.dtype == torch.float64), torch.get_num_threads(),
    )  # fmt: skip


@fused_hull_distance.register_fake
def _(features, center, edges, tolerance, dist, dx, dy):
    return None


def _fused_forward(
    joints: torch.Tensor, sign: torch.Tensor | None, normalization: str
) -> tuple[torch.Tensor, torch.Tensor, FusedSaved]:
    """:func:`chain_forward` in the fused C extension (:func:`fused_path`)."""
    joints = joints.contiguous()
    sign = None if sign is None else sign.contiguous()
    reference_bone = normalization == "reference-bone"
    features, keep = _fused_chain_forward(joints, sign, reference_bone)
    return features, keep, FusedSaved(joints, sign, keep.to(joints.dtype), reference_bone)


def _fused_backward(saved: FusedSaved, grad: torch.Tensor) -> torch.Tensor:
    """:func:`chain_backward` in the fused C extension."""
    grad = grad.to(saved.joints.dtype).contiguous()
    return _fused_chain_backward(saved.joints, saved.sign, grad, saved.reference_bone)


def chain_forward(
    joints: torch.Tensor, sign: torch.Tensor | None, normalization: str
) -> tuple[torch.Tensor, torch.Tensor, Saved | FusedSaved]:
    """Features ``(58, N)`` (0 for degenerate poses), ``keep`` ``(N,)`` (True = not degenerate)
    and what :func:`chain_backward` needs, for joints ``(N, 21, 3)`` (no autograd)."""
    n = joints.shape[0]
    if fused_path(joints):
        return _fused_forward(joints, sign, normalization)
    const = _constants(joints.dtype, joints.device)
    # the poses transposed once (one copy: cheaper than a matrix product doing the same)
    joint = transposed(joints.reshape(n, 63)).view(21, 3, n)
    fingers = joint[1:].view(5, 4, 3, n)
    raw = _bones(joint[0], fingers)  # (5, 4, 3, N)
    if sign is not None:
        raw[:, :, 0].mul_(sign)
    # the tested quantities of DESIGN §4.7 in one buffer of rows (scaled step², sine, pair
    # length) right before the bone lengths, so that under reference-bone every one of them
    # is rows[:31]. (The features are a separate tensor: compiled code must not save views
    # of an output for the backward.)
    rows = joints.new_empty(_TESTED + 20, n)
    raw_sq = (raw * raw).sum(-2)  # (5, 4, N)
    if normalization == "reference-bone":
        raw_len = raw_sq.sqrt_()
        ref = raw_len[_MIDDLE, 0]  # (N,) ‖j0 − j9‖
        scale: torch.Tensor | None = ref
        bones = raw / ref
        length = torch.div(raw_len, ref, out=out_slot(rows[_TESTED:].view(5, 4, n)))
    else:
        scale, bones = None, raw
        length = torch.sqrt(raw_sq, out=out_slot(rows[_TESTED:].view(5, 4, n)))
        ref = length[_MIDDLE, 0]
    root = bones[:, 0]  # (5, 3, N)
    root_len = length[:, 0]
    before, after = root[:-1], root[1:]
    normal_raw = _cross(after, before)  # n_i ∝ r_{i+1} × r_i
    cross_len = _norm(normal_raw)  # (4, N)
    units = joints.new_empty(7, 3, n)  # the palm's unit vectors: normals, pair units
    normal = torch.div(normal_raw, cross_len[:, None], out=out_slot(units[:4]))
    root_dot = _dot(before, after)
    palm_angle = torch.atan2(cross_len, root_dot)
    pair = normal[1:] + normal[:-1]
    pair_len = torch.sqrt(_dot(pair, pair), out=out_slot(rows[8:11]))
    pair_unit = torch.div(pair, pair_len[:, None], out=out_slot(units[4:]))
    step = after - before
    step_sq = _dot(step, step)
    # edge differences and the level-0 x axes: exact differences and negations, in eager mode
    # as products with 0/±1 matrices (two kernels), compiled as pointwise code inductor fuses
    if _is_compiling():
        edge = torch.cat((normal[:1], pair_unit, normal[3:]))
        edge_diff = edge[1:] - edge[:-1]
        x_axes = -torch.cat((normal[:2], pair_unit[1:], normal[3:]))
    else:
        edge_diff = torch.mm(const.edge_matrix, units.view(7, 3 * n)).view(4, 3, n)
    # (axis, 5, component, N): x, y, z; each axis contiguous
    frame = joints.new_empty(3, 5, 3, n)
    if not _is_compiling():
        torch.mm(const.x_matrix, units.view(7, 3 * n), out=frame[0].view(5, 3 * n))
        x_axes = frame[0]
    curvature = _dot(edge_diff, step) / step_sq

    # DESIGN §4.7: one comparison of every tested quantity, scaled to the common threshold;
    # NaN fails it. Coordinates within COORDINATE_LIMIT, in the input unit and normalised
    # (|joint − joint 9| / reference length), from per-component extremes over the joints:
    # rounding is monotone, so max_k (x_k − x_9) = max_k x_k − x_9, exactly as kinematics.
    root_product = root_len[1:] * root_len[:-1]
    sine = torch.div(cross_len, root_product, out=out_slot(rows[4:8]))  # NaN: a root bone is 0
    if scale is None:  # thresholds are relative to the reference bone
        step_test = torch.div(step_sq, ref * ref, out=out_slot(rows[0:4])).mul_(1e7)
        tested = joined_slots(rows[:_TESTED], (step_test, sine, pair_len))
        smallest = torch.minimum(tested.amin(0), (length.view(20, n) / ref).amin(0))
    else:
        step_test = torch.mul(step_sq, 1e7, out=out_slot(rows[0:4]))
        smallest = joined_slots(rows, (step_test, sine, pair_len, length.view(20, n))).amin(0)
    keep = smallest > kinematics.ZERO_LENGTH
    extremes = joints.new_empty(2 if scale is None else 4, 3, n)  # top, −bottom, reaches
    # (aminmax over a leading axis is ~10x slower)
    top = torch.amax(joint, 0, out=out_slot(extremes[0]))
    bottom = torch.amin(joint, 0, out=out_slot(extremes[1]))
    parts = [top, bottom]
    if scale is not None:
        middle = joint[skeleton.REFERENCE_JOINTS[1]]
        parts.append(torch.sub(top, middle, out=out_slot(extremes[2])))
        parts.append(torch.sub(middle, bottom, out=out_slot(extremes[3])))
        if _is_compiling():
            parts[2:] = [part / ref for part in parts[2:]]
        else:
            extremes[2:].div_(ref)
    parts[1] = parts[1].neg() if _is_compiling() else extremes[1].neg_()
    keep &= stacked_slots(extremes, parts).amax((0, 1)) <= kinematics.COORDINATE_LIMIT
    keep_f = keep.to(joints.dtype)

    z = torch.div(root, root_len[:, None], out=out_slot(frame[2]))
    y = _cross(z, x_axes, out=out_slot(frame[1]))
    frame = stacked_slots(frame, (x_axes, y, z))
    # local[l, f, a] = Σ_c frame[a, f, c] bone[f, l, c]: (phalanx, 5, axis, N)
    axes, phalanges = frame.transpose(0, 1)[None], bones[:, 1:].transpose(0, 1)[:, :, None]
    local = axes[..., 0, :] * phalanges[..., 0, :]
    local.addcmul_(axes[..., 1, :], phalanges[..., 1, :])
    local.addcmul_(axes[..., 2, :], phalanges[..., 2, :])
    rot0 = _rotation(local[0], length[:, 1], const)
    level1, gamma0 = _carry(rot0, local[1:])  # the middle and distal phalanges
    rot1 = _rotation(level1[0], length[:, 2], const)
    carried = level1[1:]
    level2, gamma1 = _carry(rot1, carried)
    c = torch.stack((local[0], level1[0], level2[0]))  # (level, finger, 3, N)
    angles = joints.new_empty(30, n)  # flexion, abduction
    angle_rows = (out_slot(angles[:15].view(3, 5, n)), out_slot(angles[15:].view(3, 5, n)))
    flexion, abduction, angle_saved = angles_in_frame(c, angle_rows)
    angles = joined_slots(angles, (flexion.view(15, n), abduction.view(15, n)))
    # degenerate poses → 0: whatever NaN or infinity they hold first, then a product with
    # the mask (a broadcast masked_fill is ~15x slower on CPU)
    features = torch.cat((length.view(20, n), curvature, palm_angle, angles))
    features.nan_to_num_(0.0, 0.0, 0.0).mul_(keep_f)
    saved = Saved(
        bones, length, scale, sign, keep_f, normal, cross_len, root_dot, root_product, pair_unit,
        pair_len,
        step, step_sq, edge_diff, curvature, frame, local, rot0, gamma0, rot1, gamma1, carried,
        *angle_saved,
    )  # fmt: skip
    return features, keep, saved


def chain_backward(saved: Saved | FusedSaved, grad: torch.Tensor) -> torch.Tensor:
    """Gradient ``(N, 21, 3)`` w.r.t. the joints from the gradient ``(58, N)`` w.r.t. the
    features of :func:`chain_forward` (0 for degenerate poses)."""
    if isinstance(saved, FusedSaved):
        return _fused_backward(saved, grad)
    s = saved
    n = grad.shape[-1]
    const = _constants(grad.dtype, grad.device)
    grad_len = grad[:20].view(5, 4, n)
    grad_curv, grad_palm = grad[20:24], grad[24:28]
    grad_flex, grad_abd = grad[28:43].view(3, 5, n), grad[43:].view(3, 5, n)

    grad_c = angles_backward(
        (s.angle_bone, s.angle_h, s.angle_h_sq, s.angle_c_sq), grad_flex, grad_abd
    )

    # the frame carries, last level first, into the gradient buffers of each level's input
    grad_level1 = grad.new_empty((2, 5, 3, n))  # the middle phalanx, the carried distal
    grad_carried, grad_u1 = _carry_backward(
        s.rot1, s.carried, s.gamma1, grad_c[2][None], out_slot(grad_level1[1:])
    )
    grad_u1 = _unit_backward(grad_u1, s.rot1.uh[0], s.length[:, 2])
    grad_c1 = torch.add(grad_c[1], grad_u1, alpha=2.0, out=out_slot(grad_level1[0]))
    grad_level1 = joined_slots(grad_level1, (grad_c1[None], grad_carried))
    grad_local = grad.new_empty((3, 5, 3, n))  # (phalanx, 5, axis, N)
    grad_local12, grad_u0 = _carry_backward(
        s.rot0, s.local[1:], s.gamma0, grad_level1, out_slot(grad_local[1:])
    )
    grad_u0 = _unit_backward(grad_u0, s.rot0.uh[0], s.length[:, 1])
    grad_c0 = torch.add(grad_c[0], grad_u0, alpha=2.0, out=out_slot(grad_local[0]))
    grad_local = joined_slots(grad_local, (grad_c0[None], grad_local12))

    # the projection onto the level-0 frames: local[l, f, a] = Σ_c frame[a, f, c] bone[f, l, c]
    # (sums of three products, as in the forward: no (3, 5, 3, 3, N) temporary)
    g, axes = grad_local[..., None, :], s.frame.transpose(0, 1)
    grad_phalanges = g[:, :, 0] * axes[:, 0]  # (phalanx, 5, component, N)
    grad_phalanges.addcmul_(g[:, :, 1], axes[:, 1]).addcmul_(g[:, :, 2], axes[:, 2])
    g, phalanges = grad_local[:, :, :, None], s.bones[:, 1:].transpose(0, 1)[:, :, None]
    grad_frame = g[0] * phalanges[0]  # (5, axis, component, N)
    grad_frame.addcmul_(g[1], phalanges[1]).addcmul_(g[2], phalanges[2])
    grad_x, grad_y, grad_z = grad_frame.unbind(1)
    z = s.frame[2]
    x_z_cross = _cross(s.frame[::2], grad_y[None])  # (x × g_y, z × g_y): one call
    grad_root = _unit_backward(grad_z + x_z_cross[0], z, s.length[:, 0])
    palm = grad.new_empty((9, 3, n))  # the curvature's q, the x axes' gradients
    grad_x = torch.sub(grad_x, x_z_cross[1], out=out_slot(palm[4:]))

    # the palm: curvature and x axes → normals and pair units
    per_step = (grad_curv / s.step_sq)[:, None]
    q = torch.mul(per_step, s.step, out=out_slot(palm[:4]))
    grad_step = torch.addcmul(s.edge_diff, s.curvature[:, None], s.step, value=-2.0).mul_(per_step)
    palm = joined_slots(palm, (q, grad_x))
    mixed = torch.mm(const.palm_matrix, palm.view(9, 3 * n)).view(7, 3, n)
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
    grad_root[:-1].add_(crossed[0]).addcmul_(grad_dot, after, value=-1.0).sub_(grad_step)
    grad_root[1:].sub_(crossed[1]).addcmul_(grad_dot, before, value=-1.0).add_(grad_step)

    # bones: lengths, roots, phalanges
    grad_bones = (grad_len / s.length)[:, :, None] * s.bones
    grad_bones[:, 0].add_(grad_root)
    grad_bones[:, 1:].add_(grad_phalanges.transpose(0, 1))
    if s.scale is not None:  # bones = raw / ‖raw_middle_root‖
        # Σ (d loss / d bone) · bone over all bones, by Euler's theorem for homogeneous
        # functions: lengths have degree 1, curvatures −1, every angle 0, so it is
        # Σ g_length · length − Σ g_curvature · curvature (two small products instead of a
        # pass over all bone gradients)
        radial_all = _dot(grad[:20], s.length.view(20, n)) - _dot(grad_curv, s.curvature)
        grad_bones[_MIDDLE, 0].sub_(radial_all * s.bones[_MIDDLE, 0])
    # degenerate poses: whatever their arithmetic gave (NaN included) → 0; then a product
    # with the per-pose factor keep / scale, and the mirror sign for x
    factor = s.keep if s.scale is None else (s.keep / s.scale).nan_to_num_(0.0, 0.0, 0.0)
    grad_bones = grad_bones.nan_to_num_(0.0, 0.0, 0.0).mul_(factor)
    if s.sign is not None:
        grad_bones[:, :, 0].mul_(s.sign)
    # joints: +bone as its child, −bone as its parent; then back to poses first (one copy)
    if accelerator_path(grad_bones):  # one kernel (on the CPU the product costs more
        return _bones_backward_to_poses(grad_bones, const)  # time than the passes it saves)
    return transposed(_bones_backward(grad_bones).view(63, n)).view(n, 21, 3)
