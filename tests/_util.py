"""Shared test helpers: backend/device parametrization and the accuracy rule.

Accuracy rule (flash-attention's): our error against a float64 reference is at most twice
torch's own error in the same dtype, plus a small atol scaled by the reference's magnitude.
bf16 gets one extra ulp of slack where the Triton interpreter truncates instead of rounding.
"""
import os

import pytest
import torch

import fusednorm

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ALL_DTYPES = (torch.float64,) + KERNEL_DTYPES

ATOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
BF16_ULP = 2.0 ** -7


def backend_params():
    """(backend, device) pairs: fusednorm's reference and torch's native kernels on CPU (and
    GPU), Triton on the GPU or through the interpreter, CUDA on the GPU only (skipped with the
    reason where it cannot run).  The pairs on "cuda" carry the ``gpu`` mark
    (bench/gpu_check.sh runs ``-m gpu``)."""
    gpu = pytest.mark.gpu
    params = [pytest.param(("reference", "cpu"), id="reference-cpu"),
              pytest.param(("native", "cpu"), id="native-cpu")]
    if HAS_CUDA:
        params.append(pytest.param(("reference", "cuda"), id="reference-cuda", marks=gpu))
        params.append(pytest.param(("native", "cuda"), id="native-cuda", marks=gpu))
        params.append(pytest.param(("triton", "cuda"), id="triton-cuda", marks=gpu))
    else:
        params.append(pytest.param(("triton", "cpu"), id="triton-interp"))
    params.append(pytest.param(("cuda", "cuda"), id="cuda-cuda", marks=gpu))
    return params


def kernel_backend_params():
    """backend_params() without "native": for tests of fusednorm's own implementations
    (custom ops, extras such as residual and fused SiLU that torch has no kernel for)."""
    return [p for p in backend_params() if p.values[0][0] != "native"]


def require_backend(backend: str, device: str):
    """Skip (with the reason) when backend cannot run here at all."""
    if backend == "cuda":
        if not HAS_CUDA or fusednorm.available_backends()["cuda"] is not True:
            pytest.skip("needs a CUDA device and the built extension: "
                        f"{fusednorm.available_backends()['cuda']}")
    avail = fusednorm.available_backends()[backend]
    if avail is not True:
        pytest.fail(f"backend {backend!r} should run here but is unavailable: {avail}")


def supports_dtype(backend: str, dtype) -> bool:
    return backend in ("reference", "native") or dtype != torch.float64


def err(a, ref):
    return (a.double() - ref.double()).abs().max().item() if a.numel() else 0.0


def assert_accurate(ours, ref64, theirs, dtype, what="", slack_ulps=1):
    """ours, theirs: results in ``dtype``; ref64: the float64 reference."""
    assert ours.shape == ref64.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} != {theirs.dtype}"
    assert not torch.isnan(ours).any(), f"{what}: NaN in result"
    scale = max(1.0, ref64.abs().max().item()) if ref64.numel() else 1.0
    bound = 2 * err(theirs, ref64) + ATOL[dtype] * scale
    if dtype == torch.bfloat16 and INTERPRET:
        bound += slack_ulps * BF16_ULP * scale
    e = err(ours, ref64)
    assert e <= bound, f"{what}: max error {e:.3g} > bound {bound:.3g} (torch's own: " \
                       f"{err(theirs, ref64):.3g})"


def randn(*shape, dtype=torch.float32, device="cpu", seed=None, requires_grad=False):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    t = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    return t.requires_grad_(requires_grad)
