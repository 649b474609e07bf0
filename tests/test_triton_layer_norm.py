"""Triton LayerNorm / RMSNorm launchers against a float64 reference.

Tolerance rule (flash-attn's): our max error against float64 is at most 2x torch's own max
error when torch runs the same op in the same dtype, plus a small atol scaled by the
reference's magnitude; off the GPU one bf16 ulp more is allowed per element because the
interpreter's downcast to bf16 truncates instead of rounding.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import HAS_CUDA
from fusednorm.kernels import layer_norm as K
from fusednorm.kernels.layer_norm_config import MAX_ONE_PASS_N, layer_norm_config

EPS = 1e-5
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------
# reference and comparison
# ---------------------------------------------------------------------------------------
def _norm(x, w, b, rms):
    n = x.shape[-1]
    if rms:
        return F.rms_norm(x, (n,), w, EPS)
    return F.layer_norm(x, (n,), w, b, EPS)


def _fwd_bwd(xs, w, b, dy, dxsum, rms, dtype=None):
    """Output, dx (+ dxsum), dw, db of torch's own op on xs; dtype=None: in xs's dtype."""
    def prep(t):
        if t is None:
            return None
        t = t.detach().to(dtype or t.dtype)
        return t.requires_grad_()
    xs_, w_, b_ = prep(xs), prep(w), prep(b)
    y = _norm(xs_, w_, b_, rms)
    leaves = [t for t in (xs_, w_, b_) if t is not None]
    grads = list(torch.autograd.grad(y, leaves, dy.to(y.dtype)))
    dx = grads.pop(0)
    if dxsum is not None:
        dx = dx + dxsum.to(dx.dtype)
    dw = grads.pop(0) if w is not None else None
    db = grads.pop(0) if b is not None else None
    return y.detach(), dx, dw, db


def _ref_stats(xs64, rms):
    if rms:
        return None, torch.rsqrt(xs64.pow(2).mean(-1) + EPS)
    return xs64.mean(-1), torch.rsqrt(xs64.var(-1, unbiased=False) + EPS)


def _ulp_bf16(t):
    """One bf16 ulp of each element of t (float64)."""
    e = torch.floor(torch.log2(t.abs().clamp_min(2.0 ** -126)))
    return torch.pow(2.0, e - 7)


def _check(name, ours, ref64, torch_lp, dtype):
    """max|ours - ref| <= 2 max|torch_lp - ref| + atol * max(1, max|ref|)."""
    assert ours is not None and ours.shape == ref64.shape, name
    o = ours.double()
    assert not torch.isnan(o).any(), f"{name}: NaN in output"
    err = (o - ref64).abs()
    if dtype == torch.bfloat16 and not HAS_CUDA:
        err = (err - _ulp_bf16(ref64)).clamp_min(0)
    torch_err = (torch_lp.double() - ref64).abs().max().item() if ref64.numel() else 0.0
    scale = max(1.0, ref64.abs().max().item()) if ref64.numel() else 1.0
    tol = 2 * torch_err + ATOL[dtype] * scale
    worst = err.max().item() if err.numel() else 0.0
    assert worst <= tol, f"{name}: max err {worst:.3e} > tol {tol:.3e} (torch err {torch_err:.3e})"


def _rand(shape, dtype, device, mean=0.0, std=1.0):
    return (torch.randn(shape, dtype=torch.float32, device=device) * std + mean).to(dtype)


def run_case(M, N, dtype, device, rms, has_w=True, has_b=True, residual=False, dxsum=False,
             w_dtype=None, row_stride=None, sm_count=None, x_mean=0.0):
    """Run the launchers once and check every output against float64."""
    has_b = has_b and not rms
    w_dtype = w_dtype or dtype
    stride = row_stride or N
    # strided rows: x (and residual) are column slices of wider buffers
    x = _rand((M, stride), dtype, device, mean=x_mean)[:, :N]
    res = _rand((M, stride), dtype, device)[:, :N] if residual else None
    w = _rand((N,), w_dtype, device, mean=1.0, std=0.5) if has_w else None
    b = _rand((N,), w_dtype, device, std=0.5) if has_b else None
    dy = _rand((M, N), dtype, device)
    dxs = _rand((M, N), dtype, device) if (residual and dxsum) else None

    out, xsum, mean, rstd = K.layer_norm_fwd(x, res, w, b, EPS, rms)
    assert out.dtype == dtype and out.shape == (M, N)
    assert rstd.dtype == torch.float32 and (mean is None) == rms
    if residual:
        expect = x + res  # torch rounds the sum to dtype exactly like the kernel must
        assert xsum.dtype == dtype and not torch.isnan(xsum).any()
        diff = (xsum.double() - expect.double()).abs()
        allow = _ulp_bf16(expect.double()) if (dtype == torch.bfloat16 and not HAS_CUDA) else 0
        assert (diff <= allow).all(), f"xsum: max diff {diff.max().item():.3e}"
        xs = xsum  # the backward normalizes what the forward stored
    else:
        assert xsum is None
        xs = x

    dx, dw, db = K.layer_norm_bwd(dy, dxs, xs, w, b, mean, rstd, rms, sm_count=sm_count)
    assert dx.dtype == dtype
    assert (dw is None) == (not has_w) and (db is None) == (not has_b)

    d = lambda t: None if t is None else t.double()  # noqa: E731
    ref = _fwd_bwd(d(xs), d(w), d(b), d(dy), d(dxs), rms)
    lp = _fwd_bwd(xs, w, b, dy, dxs, rms, dtype=dtype)  # torch's own op in the low dtype
    mean64, rstd64 = _ref_stats(d(xs), rms)
    _check("out", out, ref[0], lp[0], dtype)
    _check("dx", dx, ref[1], lp[1], dtype)
    if has_w:
        assert dw.dtype == w_dtype
        _check("dweight", dw, ref[2], lp[2], dtype)
    if has_b:
        assert db.dtype == w_dtype
        _check("dbias", db, ref[3], lp[3], dtype)
    # fp32 statistics: as accurate as fp32 allows, whatever the input dtype
    torch.testing.assert_close(rstd.double(), rstd64, rtol=1e-4, atol=0)
    if not rms:
        torch.testing.assert_close(mean.double(), mean64, rtol=1e-5, atol=1e-5)
    return out, dx, dw, db


# ---------------------------------------------------------------------------------------
# forward + backward against float64
# ---------------------------------------------------------------------------------------
SMALL_SHAPES = [(1, 1), (1, 7), (37, 1000), (199, 1128), (4, 4096)]


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=str)
def test_small_shapes(shape, dtype, rms, device):
    torch.manual_seed(0)
    run_case(*shape, dtype, device, rms, residual=True, dxsum=True)


# Wide rows go through the looped kernels; the interpreter is slow there, so a covering
# subset: every dtype once, LN and RMS each with fp32 and low-precision data, residual with
# and without a prenorm gradient, mixed (fp32) weights.
LARGE_CASES = [
    ((2, 65537), torch.float32, False, dict(residual=True, dxsum=True)),
    ((2, 65537), torch.bfloat16, True, dict(residual=True, dxsum=False, w_dtype=torch.float32)),
    ((2, 65537), torch.float16, False, dict(residual=False)),
    ((1, 262144), torch.float32, True, dict(residual=False)),
    ((1, 262144), torch.bfloat16, False, dict(residual=True, dxsum=True)),
]


@pytest.mark.parametrize("shape,dtype,rms,kw", LARGE_CASES,
                         ids=[f"{s}-{d}-{'rms' if r else 'ln'}" for s, d, r, _ in LARGE_CASES])
def test_large_shapes(shape, dtype, rms, kw, device):
    torch.manual_seed(1)
    assert not layer_norm_config(shape[1], dtype).one_pass
    run_case(*shape, dtype, device, rms, **kw)


# Every optional-input combination, on a one-pass and a looped width.
@pytest.mark.parametrize("N", [1000, MAX_ONE_PASS_N + 808])
@pytest.mark.parametrize("residual,dxsum", [(False, False), (True, False), (True, True)],
                         ids=["nores", "res", "res+dxsum"])
@pytest.mark.parametrize("rms,has_w,has_b",  # RMSNorm has no bias (the contract never passes one)
                         [(False, False, False), (False, True, False), (False, False, True),
                          (False, True, True), (True, False, False), (True, True, False)],
                         ids=["ln", "ln-w", "ln-b", "ln-wb", "rms", "rms-w"])
def test_optional_inputs(rms, has_w, has_b, residual, dxsum, N, device):
    torch.manual_seed(2)
    run_case(3, N, torch.float16, device, rms, has_w=has_w, has_b=has_b, residual=residual,
             dxsum=dxsum)


@pytest.mark.parametrize("N", [1128, MAX_ONE_PASS_N + 5])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_mixed_dtype_weights(dtype, N, device):
    torch.manual_seed(3)
    run_case(5, N, dtype, device, False, w_dtype=torch.float32, residual=True)
    run_case(5, N, dtype, device, True, w_dtype=torch.float32)


@pytest.mark.parametrize("N", [1000, MAX_ONE_PASS_N + 3])
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_strided_rows(rms, N, device):
    torch.manual_seed(4)
    run_case(6, N, torch.float32, device, rms, residual=True, dxsum=True, row_stride=N + 37)


@pytest.mark.parametrize("N", [1128, MAX_ONE_PASS_N + 100])
def test_multi_row_programs(N, device):
    """sm_count=1: one backward program owns every row, so dw/db accumulate across rows
    (registers for one-pass, the global partial row for looped)."""
    torch.manual_seed(5)
    run_case(7, N, torch.float32, device, False, residual=True, dxsum=True, sm_count=1)
    run_case(7, N, torch.bfloat16, device, True, sm_count=1)


@pytest.mark.parametrize("N", [4096, MAX_ONE_PASS_N + 808])
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_offset_data(rms, N, device):
    """mean 1e4, std 1 in fp32: E[x^2] - E[x]^2 would lose every digit of the variance."""
    torch.manual_seed(6)
    M = 3
    x = _rand((M, N), torch.float32, device, mean=1e4)
    w = _rand((N,), torch.float32, device, mean=1.0, std=0.5)
    b = _rand((N,), torch.float32, device)
    out, _, mean, rstd = K.layer_norm_fwd(x, None, w, None if rms else b, EPS, rms)
    x64 = x.double()
    mean64, rstd64 = _ref_stats(x64, rms)
    torch.testing.assert_close(rstd.double(), rstd64, rtol=1e-4, atol=0)
    if not rms:
        # 2 fp32 ulps of 1e4 (~2e-3): the mean itself cannot be stored any closer
        torch.testing.assert_close(mean.double(), mean64, rtol=0, atol=2e-3)
    ref = _norm(x64, w.double(), None if rms else b.double(), rms)
    lp = _norm(x, w, None if rms else b, rms)
    _check("out", out, ref, lp, torch.float32)
    # backward too: xhat is formed from x - mean in fp32
    dy = _rand((M, N), torch.float32, device)
    dx, dw, db = K.layer_norm_bwd(dy, None, x, w, None if rms else b, mean, rstd, rms)
    r = _fwd_bwd(x64, w.double(), None if rms else b.double(), dy.double(), None, rms)
    p = _fwd_bwd(x, w, None if rms else b, dy, None, rms)
    _check("dx", dx, r[1], p[1], torch.float32)
    _check("dweight", dw, r[2], p[2], torch.float32)


# ---------------------------------------------------------------------------------------
# memory safety, determinism, edge cases
# ---------------------------------------------------------------------------------------
MARGIN = 64


def _guarded(M, N, row_stride, dtype, device, fill=None):
    """(M, N) view with row stride row_stride inside a NaN buffer with MARGIN on each side.
    fill: None leaves NaN everywhere (poisoned output), else random data in the view."""
    buf = torch.full((MARGIN + M * row_stride + MARGIN,), float("nan"), dtype=dtype,
                     device=device)
    view = buf[MARGIN:MARGIN + M * row_stride].view(M, row_stride)[:, :N]
    if fill is not None:
        view.copy_(_rand((M, N), dtype, device, mean=fill))
    return buf, view


def _bits(t):
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32).clone()


@pytest.mark.parametrize("N", [1000, MAX_ONE_PASS_N + 808])
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_guard_regions(rms, N, device):
    """Inputs and outputs inside NaN-poisoned buffers (margins and gaps between rows): every
    output element is written, nothing outside the outputs is written, inputs untouched."""
    torch.manual_seed(7)
    M, dtype, pad = 5, torch.bfloat16, 24
    S = N + pad
    xb, x = _guarded(M, N, S, dtype, device, fill=0.0)
    rb, r = _guarded(M, N, S, dtype, device, fill=0.0)
    wb, w = _guarded(1, N, N, torch.float32, device, fill=1.0)
    bb, b = _guarded(1, N, N, torch.float32, device, fill=0.0)
    w, b = w[0], (None if rms else b[0])
    ob, out = _guarded(M, N, S, dtype, device)
    sb, xsum = _guarded(M, N, S, dtype, device)
    inputs = [xb, rb, wb, bb]
    before = [_bits(t) for t in inputs]

    out2, xsum2, mean, rstd = K.layer_norm_fwd(x, r, w, b, EPS, rms, out=out, xsum_out=xsum)
    assert out2.data_ptr() == out.data_ptr() and xsum2.data_ptr() == xsum.data_ptr()
    for name, buf, view in (("out", ob, out), ("xsum", sb, xsum)):
        assert not torch.isnan(view).any(), f"{name}: element not written"
        outside = torch.ones_like(buf, dtype=torch.bool)
        outside[MARGIN:MARGIN + M * S].view(M, S)[:, :N] = False
        assert torch.isnan(buf[outside]).all(), f"{name}: written outside the tensor"
    assert not torch.isnan(rstd).any() and (rms or not torch.isnan(mean).any())

    dyb, dy = _guarded(M, N, N, dtype, device, fill=0.0)
    db_, dxs = _guarded(M, N, N, dtype, device, fill=0.0)
    xsb, xs_in = _guarded(M, N, S, dtype, device)
    xs_in.copy_(xsum)
    inputs += [dyb, db_, xsb]
    before += [_bits(t) for t in (dyb, db_, xsb)]
    dxb, dx = _guarded(M, N, S, dtype, device)
    dx2, dw, dbias = K.layer_norm_bwd(dy, dxs, xs_in, w, b, mean, rstd, rms, dx_out=dx,
                                      sm_count=1)
    assert dx2.data_ptr() == dx.data_ptr()
    assert not torch.isnan(dx).any(), "dx: element not written"
    outside = torch.ones_like(dxb, dtype=torch.bool)
    outside[MARGIN:MARGIN + M * S].view(M, S)[:, :N] = False
    assert torch.isnan(dxb[outside]).all(), "dx: written outside the tensor"
    assert not torch.isnan(dw).any() and (rms or not torch.isnan(dbias).any())
    for i, (t, bits) in enumerate(zip(inputs, before)):
        assert torch.equal(_bits(t), bits), f"input buffer {i} modified"
    # the numbers, too (the guards only prove coverage)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    ref = _fwd_bwd(d(xsum), d(w), d(b), d(dy), d(dxs), rms)
    lp = _fwd_bwd(xsum, w, b, dy, dxs, rms, dtype=dtype)
    _check("out", out, ref[0], lp[0], dtype)
    _check("dx", dx, ref[1], lp[1], dtype)


@pytest.mark.parametrize("N", [1128, MAX_ONE_PASS_N + 100])
def test_weight_grads_bitwise_repeatable(N, device):
    torch.manual_seed(8)
    M = 23
    x = _rand((M, N), torch.float32, device)
    w = _rand((N,), torch.float32, device, mean=1.0)
    b = _rand((N,), torch.float32, device)
    dy = _rand((M, N), torch.float32, device)
    _, _, mean, rstd = K.layer_norm_fwd(x, None, w, b, EPS, False)
    runs = [K.layer_norm_bwd(dy, None, x, w, b, mean, rstd, False, sm_count=2)
            for _ in range(2)]
    for a, c in zip(runs[0], runs[1]):
        assert not torch.isnan(a).any()
        assert torch.equal(_bits(a), _bits(c))


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_empty_rows(rms, device):
    N = 33
    x = torch.empty((0, N), device=device)
    w = _rand((N,), torch.float32, device)
    b = None if rms else _rand((N,), torch.float32, device)
    out, xsum, mean, rstd = K.layer_norm_fwd(x, x, w, b, EPS, rms)
    assert out.shape == (0, N) and xsum.shape == (0, N) and rstd.shape == (0,)
    assert (mean is None) if rms else mean.shape == (0,)
    dx, dw, db = K.layer_norm_bwd(x, None, x, w, b, mean, rstd, rms)
    assert dx.shape == (0, N)
    assert dw.shape == (N,) and torch.equal(dw, torch.zeros_like(w))
    assert db is None if rms else torch.equal(db, torch.zeros_like(b))


def test_config():
    for dtype in DTYPES:
        prev = None
        for n in (1, 7, 128, 1000, 4096, MAX_ONE_PASS_N, MAX_ONE_PASS_N + 1, 262144, 10**6):
            cfg = layer_norm_config(n, dtype)
            assert cfg.one_pass == (n <= MAX_ONE_PASS_N)
            assert cfg.block_n >= n if cfg.one_pass else cfg.block_n < n
            assert cfg.block_n & (cfg.block_n - 1) == 0 and 1 <= cfg.num_warps <= 16
            if prev is not None and prev.one_pass and cfg.one_pass:
                assert cfg.num_warps >= prev.num_warps
            prev = cfg
    with pytest.raises(ValueError, match="n=0 must be >= 1"):
        layer_norm_config(0, torch.float32)


# ---------------------------------------------------------------------------------------
# compile check for real GPUs
# ---------------------------------------------------------------------------------------
# The kernels in this process are interpreter objects (TRITON_INTERPRET=1 is set by conftest
# before import), which triton.compile cannot take; workers import them without it.
_WORKER = r"""
import json, sys
from _triton_compile import compile_kernel
from fusednorm.kernels.layer_norm import compile_variants
start, step, full = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
for i, (fn, sig, ce, nw) in enumerate(compile_variants(full)):
    if i % step != start:
        continue
    for arch in (80, 90):
        info = compile_kernel(fn, sig, ce, arch, nw)
        print("RESULT " + json.dumps(dict(info, constexprs=ce)), flush=True)
"""


def _compile_variants(full):
    n_variants = sum(1 for _ in K.compile_variants(full))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = os.path.dirname(os.path.abspath(__file__))
    workers = 2
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(i), str(workers),
                               "1" if full else "0"], cwd=here, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(workers)]
    results = []
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, f"compile worker failed:\n{err[-4000:]}"
        results += [json.loads(line[7:]) for line in out.splitlines()
                    if line.startswith("RESULT ")]
    assert len(results) == 2 * n_variants, (len(results), n_variants)
    worst = {}
    for info in results:
        key = (info["name"], info["arch"], info["constexprs"].get("BLOCK_N"), info["num_warps"])
        cur = worst.get(key)
        if cur is None or (info["regs"], info["local_bytes"]) > (cur["regs"], cur["local_bytes"]):
            worst[key] = info
    print(f"\ncompiled {len(results)} kernels ({n_variants} variants x sm_80/sm_90); max "
          "registers and local (spill) bytes per kernel x arch x BLOCK_N x warps:")
    for key in sorted(worst):
        i = worst[key]
        print(f"  {key[0]:<20} sm_{key[1]} BLOCK_N={key[2]} warps={key[3]}: "
              f"regs={i['regs']} local={i['local_bytes']} stack={i['stack_bytes']}")
    # a stack frame below the register cap is not a spill (ptxas keeps small frames for
    # other reasons); at the cap (65536 registers / threads, at most 255) it is
    spilled = [i for i in results if i["local_bytes"] or
               (i["stack_bytes"] and i["regs"] >= min(255, 65536 // (32 * i["num_warps"])))]
    assert not spilled, f"{len(spilled)} variants use local memory (spills): {spilled[:5]}"


def test_compile_covering_variants():
    """A covering subset of the launchers' kernel variants (see compile_variants(full=False))
    compiles for sm_80 and sm_90 without spills; registers and spills go to the log (-s)."""
    _compile_variants(full=False)


@pytest.mark.skipif(os.environ.get("FUSEDNORM_COMPILE_ALL") != "1",
                    reason="all ~730 variants x 2 archs take ~2-4 CPU-minutes; "
                           "set FUSEDNORM_COMPILE_ALL=1 to run")
def test_compile_all_variants():
    """Every kernel x dtype x constexpr variant the launchers can produce compiles for sm_80
    and sm_90 without spills."""
    _compile_variants(full=True)
