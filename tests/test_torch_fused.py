"""The fused C feature chain (``bmc_calib._fused_chain``) against the ATen formulation it
replaces on the CPU: the same features, degenerate flags and gradients for every dtype,
normalisation, mirror sign, batch size (tails of the 4-pose lanes included), memory layout
and thread count; and it is built wherever a C compiler is.

The loss-level tests of ``test_torch_loss.py`` run on both formulations too (its
``formulation`` fixture); these check the chain itself, on poses where the two must agree to
rounding.
"""

from __future__ import annotations

import os
import shutil
import sysconfig

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from polygon_points import points_around  # noqa: E402

from bmc_calib import synthetic, torch_chain  # noqa: E402

fused = pytest.mark.skipif(
    not torch_chain.fused_available(), reason="the fused C chain is not built"
)


def _poses(n: int, seed: int = 5) -> np.ndarray:
    """Noisy poses of a synthetic subject (mm), with every sort of degenerate pose mixed in:
    all zero, NaN, infinite, out of range, a zero bone, coincident MCPs."""
    subject = synthetic.make_subjects(1, seed=seed)[0]
    joints = synthetic.generate(subject, n, seed=seed, noise_mm=6.0, glitch_fraction=0.0).joints
    if n >= 12:
        joints[1] = 0.0
        joints[3, 4, 1] = np.nan
        joints[5, 7] = np.inf
        joints[7, 2, 0] = 1e12
        joints[9, 6] = joints[9, 5]  # a zero bone
        joints[11, 9] = joints[11, 5]  # coincident MCPs
    return joints


def _chain(joints: torch.Tensor, sign, normalization: str, use_fused: bool, grad: torch.Tensor):
    torch_chain.USE_FUSED = use_fused
    try:
        features, keep, saved = torch_chain.chain_forward(joints, sign, normalization)
        assert isinstance(saved, torch_chain.FusedSaved) == use_fused
        return features, keep, torch_chain.chain_backward(saved, grad)
    finally:
        torch_chain.USE_FUSED = True


@fused
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("normalization", ["reference-bone", "none"])
@pytest.mark.parametrize("mirrored", [False, True])
@pytest.mark.parametrize("n", [1, 3, 13, 258])
def test_fused_chain_equals_the_aten_chain(dtype, normalization, mirrored, n):
    joints = torch.as_tensor(_poses(n), dtype=dtype)
    sign = None
    if mirrored:
        sign = (1.0 - 2.0 * (torch.arange(n) % 3 == 0)).to(dtype)
    grad = torch.randn(58, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    grad = grad.to(dtype)
    got = _chain(joints, sign, normalization, True, grad)
    want = _chain(joints, sign, normalization, False, grad)
    np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())  # the degenerate flags
    # both formulations round their own way (float32: the ATen chain computes in float32,
    # the C chain in float64); angles near ±π may come out on either side
    rtol = 1e-12 if dtype == torch.float64 else 1e-4
    diff = (got[0] - want[0]).double().abs()
    diff[28:43] = torch.minimum(diff[28:43], (diff[28:43] - 2 * np.pi).abs())
    scale = want[0].double().abs().amax(1, keepdim=True).clamp_min(1.0)
    assert (diff / scale).max() <= rtol
    grad_scale = want[2].double().abs().amax().clamp_min(1.0)
    assert ((got[2] - want[2]).double().abs() / grad_scale).max() <= rtol
    dead = ~want[1]
    assert (got[0][:, dead] == 0).all() and (got[2][dead] == 0).all()  # exactly 0
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[2]).all()


@fused
def test_fused_chain_is_the_same_on_any_number_of_threads_and_layout():
    """Each pose is computed alone, so the split over threads cannot change a bit; a
    non-contiguous input is read as its values."""
    joints = torch.as_tensor(_poses(2053))
    grad = torch.randn(58, len(joints), dtype=torch.float64)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            features, keep, saved = torch_chain.chain_forward(joints, None, "reference-bone")
            results.append((features, keep, torch_chain.chain_backward(saved, grad)))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)
    strided = joints.transpose(0, 2).contiguous().transpose(0, 2)  # same values, strides (1, …)
    assert not strided.is_contiguous()
    features, keep, saved = torch_chain.chain_forward(strided, None, "reference-bone")
    assert torch.equal(features, results[0][0])
    assert torch.equal(torch_chain.chain_backward(saved, grad), results[0][2])


@fused
def test_fused_chain_of_no_poses():
    joints = torch.zeros(0, 21, 3)
    features, keep, saved = torch_chain.chain_forward(joints, None, "reference-bone")
    assert features.shape == (58, 0) and keep.shape == (0,)
    assert torch_chain.chain_backward(saved, torch.zeros(58, 0)).shape == (0, 21, 3)


@fused
def test_fused_operators_pass_opcheck():
    """Schema, fake (meta) implementations and tracing of the two operators."""
    joints = torch.as_tensor(_poses(16))
    sign = (1.0 - 2.0 * (torch.arange(16) % 2)).to(joints.dtype)
    grad = torch.randn(58, 16, dtype=joints.dtype)
    for s in (None, sign):
        torch.library.opcheck(torch.ops.bmc_calib.fused_chain_forward, (joints, s, True))
        torch.library.opcheck(torch.ops.bmc_calib.fused_chain_backward, (joints, s, grad, False))


def test_fused_chain_is_built_where_a_c_compiler_is():
    """The extension is optional, so that a machine without a compiler still installs the
    package; where there is one, a missing build is a packaging bug, not a fallback."""
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) on this machine")
    assert torch_chain.fused_available(), (
        f"bmc_calib._fused_chain is not importable next to {torch_chain.__file__}: a plain "
        "'pip install .' builds it into site-packages, not into this checkout; run the tests "
        "after 'pip install -e .' (as the README does)"
    )


@fused
def test_fused_operators_refuse_what_they_would_misread():
    joints = torch.zeros(4, 21, 3)
    op = torch.ops.bmc_calib.fused_chain_forward
    with pytest.raises(ValueError, match="shape"):
        op(torch.zeros(4, 20, 3), None, True)
    with pytest.raises(ValueError, match="contiguous"):
        op(torch.zeros(21, 4, 3).transpose(0, 1), None, True)
    with pytest.raises(ValueError, match="dtype"):
        op(joints, torch.ones(4, dtype=torch.float64), True)
    with pytest.raises(ValueError, match="float32 or float64"):
        op(joints.half(), None, True)
    with pytest.raises(ValueError, match=r"\(58, N\)"):
        torch.ops.bmc_calib.fused_chain_backward(joints, None, torch.zeros(57, 4), True)


@fused
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_hull_distance_is_the_exact_polygon_distance(dtype):
    """The C hull search against :func:`bmc_calib.hulls.distance_to_polygon` (float64) and
    the ATen search it replaces on the CPU: random convex polygons (slivers, many vertices,
    collinear ones), points inside, outside, next to every vertex in all directions, and
    far away; flexion unwrapped around each hull's centre first."""
    from scipy.spatial import ConvexHull

    from bmc_calib.hulls import distance_to_polygon
    from bmc_calib.torch import (
        _edge_rows,
        _hull_distance_and_direction,
        _hull_tables,
        _unwrap_flexion,
    )

    rng = np.random.default_rng(7)
    polygons = []
    for count, stretch in ((3, 1.0), (5, 0.01), (8, 1.0), (40, 1.0), (60, 0.05)):
        for _ in range(3):
            cloud = rng.normal(size=(count, 2)) * [1.0, stretch] + rng.normal(size=2)
            polygons.append(cloud[ConvexHull(cloud).vertices])
    polygons[-1] = np.array([[0, 0], [1, 0], [2, 0], [2, 1], [2, 2], [1, 2], [0, 2], [0, 1.0]])
    n = 421  # not a multiple of the vector width
    points = []
    for poly in polygons:
        cloud, ring, far = points_around(poly, rng, cloud=300, far=100)
        points.append(np.concatenate((cloud, far, ring))[:n])
    pts = np.stack(points)  # (15, n, 2)
    tables = _hull_tables(polygons)
    edges = torch.as_tensor(_edge_rows(tables), dtype=dtype).contiguous()
    tolerance = torch.as_tensor(tables["tolerance"], dtype=dtype)[:, None].contiguous()
    center = torch.as_tensor([p[:, 0].mean() for p in polygons], dtype=dtype)[:, None]
    features = torch.zeros(58, n, dtype=dtype)
    features[28:43] = torch.as_tensor(pts[..., 0])
    features[43:] = torch.as_tensor(pts[..., 1])
    dist, dx, dy = (torch.empty(15, n, dtype=dtype) for _ in range(3))
    torch_chain.fused_hull_distance(features, center.contiguous(), edges, tolerance, dist, dx, dy)
    # the ATen search in float64 on the same (for float32: rounded) points and tables, as the
    # C search computes (a float32 ATen search picks other edges near sharp vertices)
    flexion = _unwrap_flexion(features[28:43].double(), center.double())
    want_dist, want_dx, want_dy = (
        t.to(dtype)
        for t in _hull_distance_and_direction(
            flexion, features[43:].double(), edges.double(), tolerance.double()
        )
    )
    unwrapped = np.stack((flexion.double().numpy(), pts[..., 1]), -1)
    exact = np.stack([distance_to_polygon(unwrapped[a], p) for a, p in enumerate(polygons)])
    scale = np.maximum(1.0, np.abs(unwrapped).max(-1))
    if dtype == torch.float64:
        assert (np.abs(dist.numpy() - exact) / scale).max() <= 1e-12
    else:  # float32 tables and points: as the ATen search's own float32 error
        error = np.abs(dist.double().numpy() - exact) / (exact + scale)
        assert error.max() <= 2e-5
    assert (exact > 0).mean() > 0.5 and (exact == 0).mean() > 0.02
    close = (
        {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    )
    torch.testing.assert_close(dist, want_dist, **close)
    outside = dist > 0
    # unit directions outside, 0 inside; the same as the ATen search's where the nearest
    # point is unique (everywhere but exact ties, which these random points do not hit)
    torch.testing.assert_close(torch.hypot(dx, dy)[outside], torch.ones_like(dist[outside]))
    assert (dx[~outside] == 0).all() and (dy[~outside] == 0).all()
    torch.testing.assert_close(dx, want_dx, **close)
    torch.testing.assert_close(dy, want_dy, **close)


@fused
@pytest.mark.parametrize("normalization", ["reference-bone", "none"])
def test_fused_float32_outputs_never_overflow(normalization):
    """The C chain computes float32 poses in float64: for a tiny hand (1e-40, subnormal in
    float32) it keeps the pose, as numpy does, and its gradients (~1 / scale) exceed float32;
    they become 0, as every non-finite value of the chain does, never inf."""
    from bmc_calib.torch import compute_features

    joints = torch.as_tensor(_poses(4) * 1e-40, dtype=torch.float32).requires_grad_(True)
    features = compute_features(joints, normalization=normalization)
    total = features.bone_length.sum() + features.palm_curvature.sum()
    total.backward()
    assert torch.isfinite(features.palm_curvature).all()
    assert torch.isfinite(joints.grad).all()


@fused
def test_small_openmp_worker_stacks_do_not_crash_the_chain():
    """With ``OMP_STACKSIZE=16K`` PyTorch's OpenMP workers have less stack than the fused
    loops' frames (~40 KB): the chain then runs on threads of its own (it crashed there)."""
    import subprocess
    import sys

    code = (
        "import torch, numpy as np\n"
        "from bmc_calib import synthetic, torch_chain\n"
        "torch.set_num_threads(2)\n"
        "s = synthetic.make_subjects(1, seed=1)[0]\n"
        "j = torch.as_tensor(synthetic.generate(s, 3000, seed=1).joints)\n"
        "f, k, saved = torch_chain.chain_forward(j, None, 'reference-bone')\n"
        "g = torch_chain.chain_backward(saved, torch.ones(58, 3000, dtype=j.dtype))\n"
        "assert isinstance(saved, torch_chain.FusedSaved) and torch.isfinite(g).all()\n"
        "print('ok')\n"
    )
    env = {**os.environ, "OMP_STACKSIZE": "16K"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_openmp_stack_size_is_read_as_the_runtime_reads_it(monkeypatch):
    for name in ("OMP_STACKSIZE", "GOMP_STACKSIZE"):
        monkeypatch.delenv(name, raising=False)
    assert torch_chain._openmp_stack_bytes() is None
    for text, size in (("16K", 16 << 10), ("16", 16 << 10), ("4M", 4 << 20), ("2g", 2 << 30),
                       ("100B", 100), ("junk", None)):  # fmt: skip
        monkeypatch.setenv("OMP_STACKSIZE", text)
        assert torch_chain._openmp_stack_bytes() == size, text
    monkeypatch.setenv("GOMP_STACKSIZE", "32K")
    monkeypatch.setenv("OMP_STACKSIZE", "8M")
    assert torch_chain._openmp_stack_bytes() == 32 << 10
