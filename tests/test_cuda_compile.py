"""CPU-side checks of the CUDA backend: the kernels and the binding compile (csrc/check_compile.sh
with nvcc), the backend reports why it is unavailable instead of failing at import, and the fake
kernels give the shapes/dtypes the binding allocates."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "csrc" / "check_compile.sh"


@pytest.mark.timeout(900)
def test_cuda_sources_compile():
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found")
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    print(proc.stdout)
    print(proc.stderr, file=sys.stderr)
    assert proc.returncode == 0, f"check_compile.sh exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "check_compile: OK" in proc.stdout
    # every launcher was compiled for both architectures and reported its kernels
    for arch in ("sm_80", "sm_90"):
        assert f"{arch} regs=" in proc.stdout


def test_unavailable_reason_without_cuda():
    from fusednorm.backends import cuda

    assert cuda.SUPPORTED == {"layer_norm", "group_norm", "batch_norm"}
    if torch.version.cuda is None:
        assert cuda.unavailable_reason() == "torch has no CUDA (torch.version.cuda is None)"
        with pytest.raises(RuntimeError, match="torch has no CUDA"):
            cuda.layer_norm_fwd(torch.randn(2, 8), None, None, None, 1e-5, False)
    elif not torch.cuda.is_available():
        assert cuda.unavailable_reason() == "no CUDA device"
    else:
        reason = cuda.unavailable_reason()
        assert reason is None or "extension not built" in reason, reason


def test_fake_kernels_shapes():
    from fusednorm.backends import cuda

    x = torch.empty(6, 40, device="meta", dtype=torch.bfloat16)
    w = torch.empty(40, device="meta", dtype=torch.float32)
    out, xsum, mean, rstd = cuda.FAKES["layer_norm_fwd"](x, x, w, None, 1e-5, True)
    assert out.shape == (6, 40) and out.dtype == torch.bfloat16 and xsum.shape == (6, 40)
    assert mean.numel() == 0 and rstd.shape == (6,) and rstd.dtype == torch.float32
    dx, dw, db = cuda.FAKES["layer_norm_bwd"](x, None, x, w, None, None, rstd, True)
    assert dx.shape == (6, 40) and dw.dtype == torch.float32 and db.numel() == 0

    x4 = torch.empty(2, 8, 3, 5, device="meta").to(memory_format=torch.channels_last)
    out, mean, rstd = cuda.FAKES["group_norm_fwd"](x4, None, None, 4, 1e-5, "silu")
    assert out.stride() == x4.stride() and mean.shape == (2, 4)
    out, mean, rstd, var = cuda.FAKES["batch_norm_fwd"](x4, None, None, None, None, True, 1e-5)
    assert out.stride() == x4.stride() and var.shape == (8,)
    dx, dw, db = cuda.FAKES["batch_norm_bwd"](x4, x4, None, mean, rstd, True)
    assert dw.numel() == 0 and db.shape == (8,) and db.dtype == x4.dtype
