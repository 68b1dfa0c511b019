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
