"""Triton LayerNorm / RMSNorm launchers against a float64 reference, and the offline evidence
for their design (SASS of the compiled kernels).

Tolerance rule (flash-attn's): our max error against float64 is at most 2x torch's own max
error when torch runs the same op in the same dtype, plus a small atol scaled by the
reference's magnitude; off the GPU one bf16 ulp more is allowed per element because the
interpreter's downcast to bf16 truncates instead of rounding.

Every kernel path is reached at interpreter-sized shapes through ``config=`` overrides (one
pass with one or many rows a program, R > 1 register repeats, prefetch on and off, rows split
over two programs, the looped kernels with several chunks and tiles), next to the heuristic's
own choices.
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
from fusednorm.kernels import layer_norm_config as LC
from fusednorm.kernels.layer_norm_config import (BwdConfig, FwdConfig, PartialsSumConfig,
                                                 bwd_config, fwd_config)

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
             w_dtype=None, row_stride=None, sm_count=None, x_mean=0.0, fcfg=None, bcfg=None):
    """Run the launchers once (``fcfg`` / ``bcfg``: config overrides) and check every output
    against float64."""
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

    out, xsum, mean, rstd = K.layer_norm_fwd(x, res, w, b, EPS, rms, config=fcfg)
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

    dx, dw, db = K.layer_norm_bwd(dy, dxs, xs, w, b, mean, rstd, rms, sm_count=sm_count,
                                  config=bcfg)
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
# configs that reach every kernel path at interpreter sizes
# ---------------------------------------------------------------------------------------
def _vec(dtype):
    return 16 // dtype.itemsize


def _looped_bwd(dtype, block_m, num_warps=4):
    """A looped backward config (its tile must span the CTA's lanes x 16 B)."""
    tc = 32 * _vec(dtype) * num_warps
    return BwdConfig(tc, tc, block_m, num_warps, False, 1, False, 1)


def _looped_fwd(dtype, chunk=512):
    return FwdConfig(chunk, min(chunk, 32 * _vec(dtype) * 4) // 2, 1, 4, False)


# name -> (M, N, fwd config or None (heuristic), bwd config maker or None, sm_count, stride)
PATHS = {
    # 4 register repeats a row, one row a program; persistent remainder (7 tiles, 2 teams)
    "rows-r4-prefetch": (7, 1000, lambda d: FwdConfig(1024, 256, 1, 4, True),
                         lambda d: BwdConfig(1024, 256, 1, 4, True, 1, True, 1), 2, None),
    # 4 rows a program with M % 4 != 0; N not a multiple of the 16-byte vector
    "rows-bm4-odd-n": (10, 300, lambda d: FwdConfig(512, 128, 4, 4, True),
                       lambda d: BwdConfig(512, 128, 4, 4, True, 1, True, 2), 1, None),
    # tiny rows, 16 rows a program, no prefetch
    "rows-bm16-tiny": (37, 5, lambda d: FwdConfig(256, 256, 16, 4, True),
                       lambda d: BwdConfig(256, 128, 8, 8, True, 1, False, 3), 1, None),
    # a row split over 2 programs, the second half partly masked
    "split2": (9, 700, None, lambda d: BwdConfig(512, 128, 1, 4, True, 2, False, 1), 2, None),
    "split2-prefetch-bm2": (9, 700, None,
                            lambda d: BwdConfig(512, 256, 2, 4, True, 2, True, 1), 3, None),
    # looped forward (3 chunks) and backward (tiles of 2 rows, several tiles a program)
    "looped-bm2": (5, 1500, lambda d: _looped_fwd(d), lambda d: _looped_bwd(d, 2), 2, None),
    # M = 1; looped backward with 4-row tiles of which 3 are masked
    "looped-m1-bm4": (1, 2000, lambda d: _looped_fwd(d, 1024), lambda d: _looped_bwd(d, 4), 4,
                      None),
    # strided rows through the multi-row tiles
    "rows-bm2-strided": (6, 520, lambda d: FwdConfig(1024, 512, 2, 4, True),
                         lambda d: BwdConfig(1024, 512, 2, 8, True, 1, True, 1), 2, 600),
}


def _cfgs(name, dtype):
    _, _, f, b, _, _ = PATHS[name]
    return (f(dtype) if f else None), (b(dtype) if b else None)


# ---------------------------------------------------------------------------------------
# forward + backward against float64
# ---------------------------------------------------------------------------------------
SMALL_SHAPES = [(1, 1), (1, 7), (37, 1000), (67, 1128), (4, 4096)]


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=str)
def test_small_shapes(shape, dtype, rms, device):
    torch.manual_seed(0)
    run_case(*shape, dtype, device, rms, residual=True, dxsum=True)


@pytest.mark.parametrize("dtype,rms", [(torch.bfloat16, False), (torch.bfloat16, True),
                                       (torch.float32, False)], ids=["bf16-ln", "bf16-rms",
                                                                     "fp32-ln"])
@pytest.mark.parametrize("name", list(PATHS))
def test_kernel_paths(name, dtype, rms, device):
    """Each kernel path on awkward small shapes: LN with weight, bias, residual and prenorm
    gradient; RMS with weight and residual."""
    torch.manual_seed(10)
    M, N, _, _, sm, stride = PATHS[name]
    fcfg, bcfg = _cfgs(name, dtype)
    run_case(M, N, dtype, device, rms, residual=True, dxsum=not rms, row_stride=stride,
             sm_count=sm, fcfg=fcfg, bcfg=bcfg)


# Wide rows go through the looped kernels chosen by the heuristic (N up to 262144); the
# interpreter is slow there, so a few cases: LN and RMS, fp32 and bf16 data, residual with and
# without a prenorm gradient, mixed (fp32) weights (PATHS reach the same kernels more cheaply).
LARGE_CASES = [
    ((2, 65537), torch.float32, False, dict(residual=True, dxsum=True)),
    ((2, 65537), torch.bfloat16, True, dict(residual=True, dxsum=False, w_dtype=torch.float32)),
    ((1, 262144), torch.float32, True, dict(residual=False)),
]


@pytest.mark.parametrize("shape,dtype,rms,kw", LARGE_CASES,
                         ids=[f"{s}-{d}-{'rms' if r else 'ln'}" for s, d, r, _ in LARGE_CASES])
def test_large_shapes(shape, dtype, rms, kw, device):
    torch.manual_seed(1)
    kind = "rms" if rms else "ln"
    assert not fwd_config(shape[1], dtype, kind).one_pass
    assert not bwd_config(shape[1], dtype, kind).one_pass
    run_case(*shape, dtype, device, rms, **kw)


def test_split_heuristic_width(device):
    """16K-wide 16-bit rows: the heuristic's backward splits each row over 2 programs."""
    torch.manual_seed(11)
    cfg = bwd_config(16384, torch.bfloat16, "ln")
    assert cfg.one_pass and cfg.split == 2
    run_case(3, 16384, torch.bfloat16, device, False, residual=True, dxsum=True, sm_count=2)


# Every optional-input combination, on a one-pass width and through the looped kernels
# (the split backward: with the residual and prenorm gradient).
@pytest.mark.parametrize("path,residual,dxsum",
                         [(p, r, d) for p in ("heuristic", "looped-bm2")
                          for r, d in ((False, False), (True, False), (True, True))]
                         + [("split2", True, True)],
                         ids=[f"{p}-{n}" for p in ("heuristic", "looped-bm2")
                              for n in ("nores", "res", "res+dxsum")] + ["split2-res+dxsum"])
@pytest.mark.parametrize("rms,has_w,has_b",  # RMSNorm has no bias (the contract never passes one)
                         [(False, False, False), (False, True, False), (False, False, True),
                          (False, True, True), (True, False, False), (True, True, False)],
                         ids=["ln", "ln-w", "ln-b", "ln-wb", "rms", "rms-w"])
def test_optional_inputs(rms, has_w, has_b, residual, dxsum, path, device):
    torch.manual_seed(2)
    if path == "heuristic":
        M, N, fcfg, bcfg, sm = 3, 1000, None, None, None
    else:
        M, N, _, _, sm, _ = PATHS[path]
        fcfg, bcfg = _cfgs(path, torch.float16)
    run_case(M, N, torch.float16, device, rms, has_w=has_w, has_b=has_b, residual=residual,
             dxsum=dxsum, sm_count=sm, fcfg=fcfg, bcfg=bcfg)


@pytest.mark.parametrize("path", ["heuristic", "looped-bm2", "split2-prefetch-bm2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_mixed_dtype_weights(dtype, path, device):
    torch.manual_seed(3)
    if path == "heuristic":
        M, N, fcfg, bcfg, sm = 5, 1128, None, None, None
    else:
        M, N, _, _, sm, _ = PATHS[path]
        fcfg, bcfg = _cfgs(path, dtype)
    kw = dict(w_dtype=torch.float32, sm_count=sm, fcfg=fcfg, bcfg=bcfg)
    run_case(M, N, dtype, device, False, residual=True, **kw)
    run_case(M, N, dtype, device, True, **kw)


@pytest.mark.parametrize("path", ["heuristic", "looped-bm2", "split2"])
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_strided_rows(rms, path, device):
    torch.manual_seed(4)
    if path == "heuristic":
        M, N, fcfg, bcfg, sm = 6, 1000, None, None, None
    else:
        M, N, _, _, sm, _ = PATHS[path]
        fcfg, bcfg = _cfgs(path, torch.float32)
    run_case(M, N, torch.float32, device, rms, residual=True, dxsum=True, row_stride=N + 37,
             sm_count=sm, fcfg=fcfg, bcfg=bcfg)


@pytest.mark.parametrize("path", ["heuristic", "looped-bm2", "split2"])
def test_multi_row_programs(path, device):
    """sm_count=1: one backward team owns every row, so dw/db accumulate across rows
    (registers for the row kernel, the global partial row for the looped one)."""
    torch.manual_seed(5)
    if path == "heuristic":
        N, fcfg, bcfg = 1128, None, None
    else:
        N = PATHS[path][1]
        fcfg, bcfg = _cfgs(path, torch.float32)
    run_case(7, N, torch.float32, device, False, residual=True, dxsum=True, sm_count=1,
             fcfg=fcfg, bcfg=bcfg)
    fcfg, bcfg = _cfgs(path, torch.bfloat16) if path != "heuristic" else (None, None)
    run_case(7, N, torch.bfloat16, device, True, sm_count=1, fcfg=fcfg, bcfg=bcfg)


@pytest.mark.parametrize("path", ["heuristic", "looped-bm2", "split2"])
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_offset_data(rms, path, device):
    """mean 1e4, std 1 in fp32: E[x^2] - E[x]^2 would lose every digit of the variance
    (the looped forward's shifted sums, K = the row's first element, keep them)."""
    torch.manual_seed(6)
    if path == "heuristic":
        M, N, fcfg, bcfg = 3, 4096, None, None
    else:
        M, N = PATHS[path][:2]
        fcfg, bcfg = _cfgs(path, torch.float32)
    x = _rand((M, N), torch.float32, device, mean=1e4)
    w = _rand((N,), torch.float32, device, mean=1.0, std=0.5)
    b = _rand((N,), torch.float32, device)
    out, _, mean, rstd = K.layer_norm_fwd(x, None, w, None if rms else b, EPS, rms,
                                          config=fcfg)
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
    dx, dw, db = K.layer_norm_bwd(dy, None, x, w, None if rms else b, mean, rstd, rms,
                                  config=bcfg, sm_count=2)
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


def poisoned_f32_empty(like, shape):
    """kernels._util.f32_empty, NaN-filled: scratch a kernel must write before reading."""
    return torch.full(shape if isinstance(shape, tuple) else (shape,), float("nan"),
                      dtype=torch.float32, device=like.device)


@pytest.mark.parametrize("path", ["heuristic", "looped-bm2", "split2", "rows-bm4-odd-n"])
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_guard_regions(rms, path, device, monkeypatch):
    """Inputs and outputs inside NaN-poisoned buffers (margins and gaps between rows), fp32
    scratch (statistics, dw/db partials) NaN-filled: every output element is written, no
    scratch is read before it is written, nothing outside the outputs is written, inputs
    untouched."""
    torch.manual_seed(7)
    monkeypatch.setattr(K, "f32_empty", poisoned_f32_empty)
    dtype, pad = torch.bfloat16, 24
    if path == "heuristic":
        M, N, fcfg, bcfg, sm = 5, 1000, None, None, 1
    else:
        M, N, _, _, sm, _ = PATHS[path]
        fcfg, bcfg = _cfgs(path, dtype)
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

    out2, xsum2, mean, rstd = K.layer_norm_fwd(x, r, w, b, EPS, rms, out=out, xsum_out=xsum,
                                               config=fcfg)
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
                                      sm_count=sm, config=bcfg)
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
    _check("dweight", dw, ref[2], lp[2], dtype)


@pytest.mark.parametrize("path", ["heuristic", "looped-bm2", "split2-prefetch-bm2",
                                  "rows-bm4-odd-n"])
def test_weight_grads_bitwise_repeatable(path, device):
    torch.manual_seed(8)
    if path == "heuristic":
        M, N, bcfg = 13, 1128, None
    else:
        M, N = 13, PATHS[path][1]
        bcfg = _cfgs(path, torch.float32)[1]
    x = _rand((M, N), torch.float32, device)
    w = _rand((N,), torch.float32, device, mean=1.0)
    b = _rand((N,), torch.float32, device)
    dy = _rand((M, N), torch.float32, device)
    _, _, mean, rstd = K.layer_norm_fwd(x, None, w, b, EPS, False)
    runs = [K.layer_norm_bwd(dy, None, x, w, b, mean, rstd, False, sm_count=2, config=bcfg)
            for _ in range(2)]
    for a, c in zip(runs[0], runs[1]):
        assert not torch.isnan(a).any()
        assert torch.equal(_bits(a), _bits(c))


@pytest.mark.parametrize("path", ["heuristic", "looped-bm2", "split2", "rows-bm4-odd-n"])
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_nan_propagates(rms, path, device):
    """A NaN in a row makes that row's output, statistics and dx NaN, and only that row's;
    dweight/dbias (sums over every row) become NaN."""
    torch.manual_seed(9)
    if path == "heuristic":
        M, N, fcfg, bcfg, sm = 6, 700, None, None, 2
    else:
        M, N, _, _, sm, _ = PATHS[path]
        fcfg, bcfg = _cfgs(path, torch.float32)
    x = _rand((M, N), torch.float32, device)
    x[1, N // 2] = float("nan")
    w = _rand((N,), torch.float32, device, mean=1.0)
    b = None if rms else _rand((N,), torch.float32, device)
    out, _, mean, rstd = K.layer_norm_fwd(x, None, w, b, EPS, rms, config=fcfg)
    assert torch.isnan(out[1]).all() and torch.isnan(rstd[1])
    rows = [i for i in range(M) if i != 1]
    assert not torch.isnan(out[rows]).any() and not torch.isnan(rstd[rows]).any()
    dy = _rand((M, N), torch.float32, device)
    dx, dw, db = K.layer_norm_bwd(dy, None, x, w, b, mean, rstd, rms, config=bcfg,
                                  sm_count=sm)
    assert torch.isnan(dx[1]).all() and not torch.isnan(dx[rows]).any()
    assert torch.isnan(dw).all()


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
        e = dtype.itemsize
        for n in (1, 7, 128, 1000, 4096, 4100, 8192, 8193, 16384, 16385, 262144, 10**6):
            f = fwd_config(n, dtype)
            if n % 16 == 0:
                assert f.one_pass == (n <= LC.FWD_MAX_N[e])
                assert fwd_config(n, dtype, aligned=False) == LC._fwd_analytic(n, e, False)
            assert f.block_n >= n or not f.one_pass
            for c in (f.block_n, f.tile_c, f.block_m):
                assert c & (c - 1) == 0
            assert f.block_n % f.tile_c == 0 and 4 <= f.num_warps <= 16
            b = bwd_config(n, dtype)
            if n % 16 == 0:  # 16-byte loads
                assert b.one_pass == (n <= 2 * LC.BWD_MAX_N[e])
                assert b.split == (1 if n <= LC.BWD_MAX_N[e] else 2) or not b.one_pass
                if b.one_pass:
                    assert b.prefetch == (b.split == 1)
            else:  # element-wise loads: fewer elements a thread, no prefetch, no split
                assert f.one_pass == (n <= LC.UNALIGNED_MAX_N)
                assert b.one_pass == (n <= LC.UNALIGNED_MAX_N) and not b.prefetch
                assert b.split == 1
            if b.one_pass:
                assert b.block_n * b.split >= n
            else:  # looped: the tile spans exactly the CTA's lanes x 16 bytes
                assert b.tile_c == 32 * (16 // e) * b.num_warps
            assert b.ctas_per_sm * b.num_warps <= 16
            K.check_config(f, e, n)
            K.check_config(b, e, n)
            i = bwd_config(n, dtype, "in")
            assert i.split == 1
            if n % 16 == 0:
                assert i.one_pass == (n <= LC.BWD_MAX_N_ROW_AFFINE[e])
    for fn in (fwd_config, bwd_config):
        with pytest.raises(ValueError, match="n=0 must be >= 1"):
            fn(0, torch.float32)
    with pytest.raises(ValueError, match="invalid config"):
        K.check_config(FwdConfig(512, 256, 1, 4, True), 2, 1000)  # row wider than the tile
    with pytest.raises(ValueError, match="invalid config"):  # looped: rows not in-thread
        K.check_config(BwdConfig(512, 256, 2, 4, False, 1, False, 1), 2, 1000)
    with pytest.raises(ValueError, match="invalid config"):
        K.layer_norm_fwd(torch.zeros(2, 100), None, None, None, EPS, False,
                         config=FwdConfig(64, 48, 1, 4, True))


@pytest.mark.parametrize("has_a,has_b", [(True, True), (True, False), (False, True)])
def test_column_sums(has_a, has_b, device):
    """sum_partials at every tile the heuristic can choose: fixed-order column sums of one or
    two (P, N) partial buffers into the parameters' dtypes, P and N not multiples of the
    tile."""
    torch.manual_seed(12)
    P, N = 37, 75
    a = torch.randn(P, N, device=device) if has_a else None
    b = torch.randn(P, N, device=device) if has_b else None
    like_a = torch.empty(N, dtype=torch.bfloat16, device=device)
    like_b = torch.empty(N, dtype=torch.bfloat16, device=device)
    for cfg in LC.all_partials_sum_configs():
        sa, sb = K.sum_partials(a, like_a, b, like_b, cfg.block_p, cfg.block_n, cfg.num_warps)
        for part, got in ((a, sa), (b, sb)):
            if part is None:
                assert got is None
                continue
            assert got.dtype == torch.bfloat16 and got.shape == (N,)
            _check("sums", got, part.double().sum(0), part.sum(0).to(torch.bfloat16),
                   torch.bfloat16)
    # >= 132 programs on a GPU for the benchmark widths, one or two buffers
    for n in (1024, 4096, 8192, 16384):
        for n_out in (1, 2):
            cfg = LC.partials_sum_config(264, n, n_out, "sm90")
            assert n_out * -(-n // cfg.block_n) >= LC.MIN_SUM_PROGRAMS


def test_tuned_table_is_read_first(monkeypatch):
    """A table entry for (family, arch, key) replaces the analytic config, for that key only;
    the cache is keyed on the arch, so the interpreter ("cpu") never sees GPU entries."""
    from fusednorm.kernels import _tuning
    fwd = dict(block_n=1024, tile_c=512, block_m=2, num_warps=8, one_pass=True)
    bwd = dict(block_n=1024, tile_c=256, block_m=4, num_warps=4, one_pass=True, split=1,
               prefetch=False, ctas_per_sm=3)
    table = {"layer_norm_fwd": {"sm90|bf16|1024|ln": fwd},
             "layer_norm_bwd": {"sm90|bf16|1024|rms": bwd},
             "instance_norm_fwd": {"sm90|fp32|1024": fwd},
             "layer_norm_colsum": {"sm90|1024|2": dict(block_p=32, block_n=16, num_warps=2)}}
    monkeypatch.setattr(_tuning, "_table", lambda: table)
    for f in (fwd_config, bwd_config, LC.partials_sum_config):
        f.cache_clear()
    try:
        assert fwd_config(1024, torch.bfloat16, "ln", "sm90") == FwdConfig(**fwd)
        assert fwd_config(1024, torch.bfloat16, "rms", "sm90") == LC._fwd_analytic(1024, 2)
        assert fwd_config(1024, torch.bfloat16, "ln", "sm80") == LC._fwd_analytic(1024, 2)
        assert fwd_config(1024, torch.float32, "in", "sm90") == FwdConfig(**fwd)
        assert bwd_config(1024, torch.bfloat16, "rms", "sm90") == BwdConfig(**bwd)
        assert bwd_config(1024, torch.bfloat16, "ln", "sm90") == LC._bwd_analytic(1024, 2, False)
        assert LC.partials_sum_config(264, 1024, 2, "sm90") == PartialsSumConfig(32, 16, 2)
        assert fwd_config(1024, torch.bfloat16, "ln", "cpu") == LC._fwd_analytic(1024, 2)
    finally:
        for f in (fwd_config, bwd_config, LC.partials_sum_config):
            f.cache_clear()


def test_tune_targets(device):
    """tune_targets: forward, backward and column-sum targets, the heuristic's config first,
    at most 8 candidates each, every one a valid config that runs."""
    M, N = 2, 512
    targets = K.tune_targets("layer_norm", (M, N), torch.float32, "rows", device)
    assert [t.family for t in targets] == ["layer_norm_fwd", "layer_norm_bwd",
                                           "layer_norm_colsum"]
    assert targets[0].key == "fp32|512|ln" and targets[2].key == "512|2"
    assert targets[0].candidates[0] == fwd_config(N, torch.float32, "ln")
    assert targets[1].candidates[0] == bwd_config(N, torch.float32, "ln")
    for t in targets:
        assert 1 <= len(t.candidates) <= 8 and t.nbytes > 0
        for cfg in t.candidates:
            t.run(cfg)
    assert K.tune_targets("rms_norm", (M, N), torch.bfloat16, "rows", device)[0].key == \
        "bf16|512|rms"
    assert K.tune_targets("group_norm", (2, 4, 3, 3), torch.float32, "nchw", device) == []


# ---------------------------------------------------------------------------------------
# offline evidence: SASS of the kernels compiled for real GPUs
# ---------------------------------------------------------------------------------------
# The kernels in this process are interpreter objects (TRITON_INTERPRET=1 is set by conftest
# before import), which triton.compile cannot take; workers import them without it.
_WORKER = r"""
import importlib, json, re, sys
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import _sass
from _triton_compile import resource_usage, specialization
from fusednorm.kernels.layer_norm import compile_options
def _regs(text):
    out = set()
    for n, wide in re.findall(r"\bR(\d+)(\.64)?", text):
        out |= {int(n), int(n) + 1} if wide else {int(n)}
    return out
def _prefetched(ins):
    # the widest loop (the row loop) as ptxas scheduled it: up to its first shuffle (the
    # first cross-lane reduction), no instruction reads a register its 16-byte loads wrote,
    # so the reduction works on the tile loaded by the previous iteration (prefetched) and
    # this iteration's loads fly meanwhile; without the prefetch the loaded registers are
    # converted / summed before the first shuffle
    lps = _sass.loops(ins)
    if not lps:
        return None
    lo, hi = max(lps, key=lambda r: r[1] - r[0])
    loaded = set()
    has_loads = any(lo <= x.addr <= hi and x.op.startswith("LDG") and "128" in x.op
                    for x in ins)
    for x in ins:
        if not lo <= x.addr <= hi:
            continue
        if x.op.startswith("SHFL"):
            return has_loads
        ops = [t.strip() for t in x.args.split(",")]
        stores = x.op.split(".")[0] in ("STG", "STS", "STL", "RED", "ATOM")
        reads = _regs(",".join(ops if stores else ops[1:]))
        if reads & loaded:
            return False
        if not stores and ops:
            dest = _regs(ops[0])
            loaded -= dest
            if x.op.startswith("LDG") and "128" in x.op:
                n = min(dest)
                loaded |= {n, n + 1, n + 2, n + 3}
    return False
spec = json.loads(sys.argv[1])
mod = importlib.import_module(spec["module"])
fn = getattr(mod, spec["fn"])
if "cases" in spec:  # evidence: dicts with the runtime ints of the case, sm_90
    dt = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    items = [d for case in spec["cases"]
             for d in fn(*[dt.get(a, a) if isinstance(a, str) else a for a in case])]
    items = [(d["variant"], (90,), d["ints"]) for d in items]
elif "archs" in spec:  # every variant, both alignments' specializations
    items = [(v, tuple(spec["archs"]), al) for v in fn(True) for al in (True, False)]
else:
    items = [(v, archs, al) for v, archs, al in fn()]
for i, (variant, archs, ints) in enumerate(items):
    if i % spec["step"] != spec["start"]:
        continue
    kernel, sig, ce, nw = variant
    if isinstance(ints, dict):  # the case's ints: the multiples of 16 are specialized
        div = [k for k, v in ints.items() if v % 16 == 0]
    elif ints:  # aligned rows: lengths and strides multiples of 16 (M, C: any)
        div = [k for k, t in sig.items() if t == "i32" and k not in ("M", "C")]
    else:
        div = None
    for arch in archs:
        src = ASTSource(fn=kernel, signature=sig, constexprs=ce,
                        attrs=specialization(kernel, sig, div))
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                           options=compile_options(kernel, nw))
        ins = _sass.instructions(_sass.sass_of_cubin(k.asm["cubin"]))
        regs, local, _stack = resource_usage(k.asm["cubin"])
        # the layout of the largest 3-D tile load (the rows' data): where the warps sit
        ttgir = k.asm["ttgir"]
        defs = dict(re.findall(r"^(#blocked\d*) = #ttg.blocked<\{(.*?)\}>", ttgir, re.M))
        tiles = re.findall(r"tt\.load .*tensor<(\d+)x(\d+)x(\d+)x!tt\.ptr<\w+>, (#blocked\d*)>",
                           ttgir)
        layout = (defs.get(max(tiles, key=lambda t: int(t[0]) * int(t[1]) * int(t[2]))[3])
                  if tiles else None)
        res = {"i": i, "arch": arch, "name": kernel.fn.__name__, "num_warps": nw,
               "constexprs": ce, "shared": k.metadata.shared, "regs": regs, "local": local,
               "spills": _sass.spills(ins), "loops": len(_sass.loops(ins)),
               "narrow": [op for _, op in _sass.narrow_loop_loads(ins)],
               "loop_loads": [op for _, lds in _sass.main_loop_loads(ins) for op in lds],
               "loads": _sass.global_loads(ins), "layout": layout,
               "bars": sum(1 for x in ins if x.op.startswith("BAR")),
               "prefetched": _prefetched(ins)}
        print("RESULT " + json.dumps(res), flush=True)
"""


def run_compile_workers(spec, workers=2):
    """Compile the variants ``spec`` names (module + function: covering_variants; with
    "archs": compile_variants(True) for those archs; with "cases": evidence_launches of each
    case, sm_90, launch-time specialization) in worker processes without the interpreter;
    -> the results in order."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [subprocess.Popen(
        [sys.executable, "-c", _WORKER, json.dumps(dict(spec, start=i, step=workers))],
        cwd=here, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(workers)]
    results = []
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, f"compile worker failed:\n{err[-4000:]}"
        results += [json.loads(line[7:]) for line in out.splitlines()
                    if line.startswith("RESULT ")]
    return sorted(results, key=lambda r: (r["i"], r["arch"]))


def assert_no_spills(results, n_expected):
    assert len(results) == n_expected, (len(results), n_expected)
    worst = {}
    for r in results:
        ce = r["constexprs"]
        key = (r["name"], r["arch"], ce.get("BLOCK_M"), ce.get("BLOCK_N"), ce.get("TILE_C"),
               ce.get("SPLIT"), ce.get("BLOCK_P"), r["num_warps"])
        if key not in worst or r["regs"] > worst[key]["regs"]:
            worst[key] = r
    print(f"\ncompiled {len(results)} kernels; max registers per kernel x arch x tile x warps "
          "(STL/LDL = spill instructions):")
    for key in sorted(worst, key=str):
        r = worst[key]
        print(f"  {key[0]:<20} sm_{key[1]} BM={key[2]} BN={key[3]} TC={key[4]} split={key[5]} "
              f"BP={key[6]} warps={key[7]}: regs={r['regs']} STL/LDL={r['spills']}")
    spilled = [r for r in results if r["spills"] or r["local"]]
    assert not spilled, f"{len(spilled)} variants spill: {spilled[:3]}"


def test_compile_covering_variants():
    """The CI subset of the kernel variants (layer_norm.covering_variants: every config at
    bf16 and fp32 with every input, for sm_80 and sm_90) compiles without a local-memory
    spill (no STL/LDL in the SASS), the backward at its maxnreg cap."""
    n = sum(len(archs) for _, archs, _ in K.covering_variants())
    assert_no_spills(run_compile_workers(dict(module="fusednorm.kernels.layer_norm",
                                              fn="covering_variants")), n)


@pytest.mark.skipif(os.environ.get("FUSEDNORM_COMPILE_ALL") != "1",
                    reason="all ~1600 variants x 2 archs x 2 alignments take ~1-2 CPU-hours; "
                           "set FUSEDNORM_COMPILE_ALL=1 to run")
def test_compile_all_variants():
    """Every kernel x dtype x constexpr variant the heuristics can produce compiles for sm_80
    and sm_90 without spills."""
    n = 4 * sum(1 for _ in K.compile_variants(True))
    assert_no_spills(run_compile_workers(dict(module="fusednorm.kernels.layer_norm",
                                              fn="compile_variants", archs=[80, 90])), n)


# the benchmark cases (bench/bench_layer_norm.py): the quick subset (bf16), and LayerNorm's
# fp32 rows of the full set
BENCH = ([(op, (16384, n), "bf16") for op in ("layer_norm", "rms_norm")
          for n in (1024, 4096, 8192, 16384)]
         + [("layer_norm", (16384, n), "fp32") for n in (1024, 4096, 8192, 16384)])
_DT = {"bf16": torch.bfloat16, "fp32": torch.float32}


def check_evidence(launches, results, label, table):
    """Assert what the design says for one case's launches (dicts of evidence_launches,
    results of their sm_90 compiles), and add rows to ``table``."""
    from _sass import ctas_per_sm
    for ln, r in zip(launches, results):
        kind, cfg = ln["kind"], ln["config"]
        assert r["spills"] == 0 and r["local"] == 0, (label, kind, r)
        ctas = ctas_per_sm(r["regs"], r["num_warps"], r["shared"], 90)
        # data loads: 128-bit in every main loop; the only narrower loads in a loop are the
        # per-row fp32 statistics (and InstanceNorm's per-row weight) of a tile's rows
        wide = [op for op in r["loop_loads"] if "128" in op]
        assert len(r["narrow"]) <= ln["row_scalars"], (label, kind, r["narrow"])
        if r["loop_loads"]:
            assert wide, (label, kind, "no 128-bit load in the main loops")
        elif kind == "fwd":  # one pass, no loop: the row's loads are all 128-bit
            data = [op for op in r["loads"] if op.startswith("LDG")]
            narrow = [op for op in data if "128" not in op]
            assert len(narrow) <= ln.get("fwd_row_scalars", 0), (label, narrow)
        if kind != "colsum":
            # the row tile's layout (TTGIR): 16 bytes a thread along the row, the warps on the
            # row first (warps_per_row = TILE_C / (32 lanes x 16 B)), then one row a warp
            # group (warpsPerCTA [1, k, 1] for short rows: a warp owns a row)
            vec = 16 // (2 if "bf16" in label or "fp16" in label else 4)
            wpr = min(cfg.num_warps, cfg.tile_c // (32 * vec))
            lay = r["layout"] or ""
            want = f"warpsPerCTA = [1, {cfg.num_warps // wpr}, {wpr}]"
            assert want in lay and f"sizePerThread = [1, " in lay and \
                lay.split("sizePerThread = [")[1].split("]")[0].endswith(f", {vec}"), \
                (label, kind, want, lay)
        if kind == "bwd" and cfg.one_pass and cfg.prefetch:
            # the next tile's x, dy are loaded while this tile is reduced (see _prefetched)
            assert r["prefetched"], (label, kind, "no prefetch in the row loop's SASS")
        if kind == "bwd":
            # persistent: the grid is the resident programs the registers allow, >= 1 wave
            assert ctas >= ln["ctas_design"], (label, r["regs"], ctas, ln["ctas_design"])
        if kind != "fwd":
            assert ln["grid"] >= 132 or ln.get("small_ok"), (label, kind, ln["grid"])
        inflight = ctas * ln["tile_bytes"] if kind != "colsum" else 0
        if kind == "fwd":
            assert inflight >= 32 * 1024, (label, inflight)
        table.append((label, kind, r["name"], r["regs"], ctas, ln["grid"], inflight // 1024,
                      r["bars"], cfg))


def print_evidence(table):
    print("\nsm_90, launch-time specialization; in flight = loads a SM has issued before its "
          "first reduction (fwd) / the prefetched tile (bwd), KB:")
    print(f"  {'case':<28} {'launch':<7} {'kernel':<20} regs CTAs/SM   grid in-flight/SM  "
          "BAR  config")
    for label, kind, name, regs, ctas, grid, kb, bars, cfg in table:
        print(f"  {label:<28} {kind:<7} {name:<20} {regs:>4} {ctas:>7} {grid:>6} {kb:>8} KB  "
              f"{bars:>3}  {cfg}")


def test_benchmark_shape_evidence():
    """For the configurations the heuristics choose for each benchmark shape, compiled for
    sm_90 with the launch-time specialization: no spills; 128-bit loads in every main loop
    (only per-row scalars narrower); the one-pass forward's loads all 128-bit, >= 32 KB in
    flight per SM; the persistent backward's grid = SMs x the CTAs its registers allow; the
    backward and column sums >= 132 programs.  The table goes to the log."""
    cases = [[op, M, N, dt] for op, (M, N), dt in BENCH]
    results = run_compile_workers(dict(module="fusednorm.kernels.layer_norm",
                                       fn="evidence_launches", cases=cases))
    table = []
    for i, (op, M, N, dt) in enumerate(cases):
        launches = K.evidence_launches(op, M, N, _DT[dt])
        assert len(launches) == 3
        check_evidence(launches, results[3 * i:3 * i + 3], f"{op} {M}x{N} {dt}", table)
    assert len(results) == 3 * len(cases)
    print_evidence(table)


_SPEC1 = r"""
import json
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusednorm.kernels import layer_norm as K
from fusednorm.kernels.layer_norm_config import BwdConfig
bf = torch.bfloat16
# the split row (two programs a row) and a split + prefetch tile of 2 rows; LN with every
# input, RMS with none
for cfg in (BwdConfig(8192, 4096, 1, 16, True, 2, False, 1),
            BwdConfig(1024, 512, 2, 8, True, 2, True, 1)):
    for flags in ((False, True, True, True), (True, False, False, False)):
        fn, sig, ce, nw = K.bwd_variant(cfg, bf, bf, *flags, False)
        ints = [k for k, t in sig.items() if t == "i32"]
        sig1 = {k: ("constexpr" if k in ints else t) for k, t in sig.items()}
        try:
            src = ASTSource(fn=fn, signature=sig1, constexprs=dict(ce, **{k: 1 for k in ints}))
            triton.compile(src, target=GPUTarget("cuda", 90, 32),
                           options=K.compile_options(fn, nw))
            print("RESULT " + json.dumps({"cfg": str(cfg), "ok": True}))
        except Exception as e:
            print("RESULT " + json.dumps({"cfg": str(cfg), "ok": False, "err": str(e)[:300]}))
"""


def test_split_variants_specialized_to_one_compile():
    """The SPLIT = 2 backward (which test_triton_specialization does not reach: it compiles
    the first variant of each kernel) compiles with every integer argument equal to 1, as
    Triton specializes them on a GPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run([sys.executable, "-c", _SPEC1], cwd=here, env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr[-4000:]
    res = [json.loads(line[7:]) for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(res) == 4 and all(r["ok"] for r in res), res
