"""Triton GroupNorm / InstanceNorm launchers against a float64 torch reference, and the offline
evidence for their design (SASS of the kernels compiled for sm_80 / sm_90).

Tolerance rule (flash-attn's): our error against float64 is at most 2x torch's own error in
the same dtype (torch's op run on the low-precision tensors), plus a small atol.  Under the
Triton interpreter bf16 downcasts truncate instead of rounding: one bf16 ulp is allowed extra.

Every kernel path is reached at interpreter-sized shapes through ``config=`` overrides: the
persistent NCHW kernels with several groups a program and a remainder, channel blocks that
straddle groups and pad, the NCHW split path (huge groups), channels_last fused (one program
a sample) and split over row chunks, many group blocks and long groups in the channels_last
statistics; next to the heuristic's own choices.
The helpers DTYPES, Guard, assert_close, compile_all_variants, poisoned_f32_empty and
to_layout are shared with test_triton_batch_norm.py.
"""
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import zlib

import pytest
import torch
import torch.nn.functional as F

from fusednorm.kernels import group_norm as gn_mod
from fusednorm.kernels import group_norm_config as GC
from fusednorm.kernels.group_norm import group_norm_bwd, group_norm_fwd
from fusednorm.kernels.group_norm_config import GroupNormConfig, chunk_and_split

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def assert_close(ours, ref64, torch_lp, name):
    """ours, torch_lp: results in the tested dtype; ref64: the float64 reference."""
    assert ours.shape == ref64.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    ours64 = ours.double()
    assert not torch.isnan(ours64).any(), f"{name}: NaN in result"
    torch_err = (torch_lp.double() - ref64).abs().max().item() if ref64.numel() else 0.0
    # + fp32 accumulation noise relative to the magnitude (weight grads sum N*S terms)
    scale = ref64.abs().max().item() if ref64.numel() else 0.0
    bound = 2 * torch_err + ATOL[ours.dtype] + 1e-6 * scale
    err = (ours64 - ref64).abs()
    if ours.dtype == torch.bfloat16 and INTERPRETED:
        err = err - ref64.abs() * 2.0 ** -7  # one bf16 ulp of truncation
    worst = err.max().item() if err.numel() else 0.0
    assert worst <= bound, f"{name}: max error {worst:.3g} > bound {bound:.3g} (torch {torch_err:.3g})"


class Guard:
    """Tensors inside larger NaN-filled buffers.  ``check`` asserts the margins are still NaN
    (nothing written out of bounds) and returns the views for full-write checks."""

    PAD = 67

    def __init__(self):
        self.items = []

    def empty_like(self, t, dtype=None):
        shape, stride = tuple(t.shape), tuple(t.stride())
        span = 1 + sum((s - 1) * st for s, st in zip(shape, stride)) if all(shape) else 0
        buf = torch.full((span + 2 * self.PAD,), float("nan"), dtype=dtype or t.dtype,
                         device=t.device)
        view = buf.as_strided(shape, stride, self.PAD)
        self.items.append((buf, span, view))
        return view

    def place(self, t):
        """A copy of ``t`` (same strides) inside a NaN-poisoned buffer: reads past it give NaN."""
        g = self.empty_like(t)
        g.copy_(t)
        return g

    def check(self):
        for buf, span, _ in self.items:
            assert torch.isnan(buf[:self.PAD].float()).all(), "write before the buffer"
            assert torch.isnan(buf[self.PAD + span:].float()).all(), "write after the buffer"
        return [view for _, _, view in self.items]

    @contextlib.contextmanager
    def outputs(self, monkeypatch):
        """Route torch.empty_like (the launchers' output allocation) through the guard."""
        with monkeypatch.context() as m:
            m.setattr(torch, "empty_like", lambda t, *a, **k: self.empty_like(t, k.get("dtype")))
            yield


def poisoned_f32_empty(like, shape):
    """kernels._util.f32_empty, NaN-filled: scratch a kernel must write before reading."""
    return torch.full(shape if isinstance(shape, tuple) else (shape,), float("nan"),
                      dtype=torch.float32, device=like.device)


def to_layout(x, channels_last):
    if not channels_last:
        return x.contiguous()
    return x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)


def gn_reference(x, w, b, G, eps, silu, dy):
    """(out, dx, dw, db) of torch's group_norm (+silu) by autograd in x's dtype."""
    x = x.detach().requires_grad_()
    w = None if w is None else w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    # torch's CPU backward fails on a bias without a weight ("tensor does not have a device"):
    # a constant unit weight there
    wr = w if w is not None or b is None else torch.ones_like(b)
    y = F.group_norm(x, G, wr, b, eps)
    if silu:
        y = F.silu(y)
    y.backward(dy)
    return (y.detach(), x.grad, None if w is None else w.grad, None if b is None else b.grad)


def check_gn(shape, G, dtype, device, channels_last=False, affine=True, silu=False,
             offset=0.0, config=None, wdtype=torch.float32, eps=1e-5):
    C = shape[1]
    x = to_layout((torch.randn(shape, dtype=torch.float64) + offset).to(dtype), channels_last)
    x = x.to(device)
    w = (torch.randn(C, dtype=torch.float64) + 1).to(wdtype).to(device) if affine else None
    b = torch.randn(C, dtype=torch.float64).to(wdtype).to(device) if affine else None
    dy = to_layout(torch.randn(shape, dtype=torch.float64).to(dtype), channels_last).to(device)
    act = "silu" if silu else ""
    out, mean, rstd = group_norm_fwd(x, w, b, G, eps, act, config=config)
    dx, dw, db = group_norm_bwd(dy, x, w, b, mean, rstd, G, act, config=config)

    d64 = lambda t: None if t is None else t.double()  # noqa: E731
    ref = gn_reference(d64(x), d64(w), d64(b), G, eps, silu, dy.double())
    # torch's own error: its op on the same low-precision tensors.  torch's CPU kernel takes
    # fp32 affine parameters with fp16/bf16 x; its CUDA kernel wants them in x's dtype
    # ("expected scalar type Half but found Float", seen on an H200).
    pdt = x.dtype if x.is_cuda else torch.float32
    cast = lambda t: None if t is None else t.to(pdt)  # noqa: E731
    lp = gn_reference(x, cast(w), cast(b), G, eps, silu, dy)
    assert out.dtype == dtype and out.stride() == x.stride(), "out must keep x's layout/dtype"
    assert dx.stride() == x.stride()
    assert_close(out, ref[0], lp[0], "out")
    assert_close(dx, ref[1], lp[1], "dx")
    N = shape[0]
    xr = x.double().reshape(N, G, -1)
    assert_close(mean, xr.mean(-1), mean, "mean")
    assert_close(rstd, torch.rsqrt(xr.var(-1, unbiased=False) + eps), rstd, "rstd")
    if affine:
        assert dw.dtype == wdtype and db.dtype == wdtype
        # weight grads sum over N*S terms: scale torch's error bound by the same rule
        assert_close(dw, ref[2], lp[2].to(wdtype), "dweight")
        assert_close(db, ref[3], lp[3].to(wdtype), "dbias")
    else:
        assert dw is None and db is None
    return x, w, b, dy, mean, rstd


# ------------------------------------------------------------------- the heuristic's paths
# (shape, G, channels_last, affine, silu)
CASES = [
    ((2, 64, 9, 7), 1, False, True, False),
    ((2, 64, 9, 7), 8, True, True, True),
    ((2, 64, 9, 7), 64, False, False, False),
    ((2, 64, 9, 7), 8, False, False, True),
    ((1, 32, 1, 1), 8, True, True, False),     # M = 1, S = 1
    ((3, 6, 5), 3, False, True, True),
    ((2, 4, 3, 5, 6), 2, True, True, True),    # channels_last_3d
    ((2, 4, 3, 5, 6), 2, False, True, False),  # NCDHW
    # InstanceNorm = GroupNorm with G = C
    ((2, 3, 7, 5), 3, False, True, False),
    ((2, 3, 7, 5), 3, True, False, True),
    ((4, 16, 33), 16, False, True, False),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_group_norm_matches_float64(case, dtype, device):
    torch.manual_seed(zlib.crc32(repr((case, str(dtype))).encode()))
    shape, G, cl, affine, silu = case
    check_gn(shape, G, dtype, device, channels_last=cl, affine=affine, silu=silu)


def test_bf16_input_fp32_weight_bf16_weight(device):
    torch.manual_seed(1)
    check_gn((2, 16, 5, 6), 4, torch.bfloat16, device, wdtype=torch.bfloat16)
    check_gn((2, 16, 5, 6), 4, torch.bfloat16, device, channels_last=True,
             wdtype=torch.bfloat16)


# ------------------------------------------------------------------- every kernel path
# Small tiles reach every loop and branch at interpreter sizes (each config is validated
# like any override: powers of two; the kernels take any tile).
NCHW_SMALL = GroupNormConfig(block_c=2, block_s=16, unroll=2, ctas_per_sm=1)
NCHW_SPLIT = GroupNormConfig(block_c=2, block_s=16, unroll=2, split=3)
CL_SMALL = GroupNormConfig(block_c=8, block_s=4, unroll=2)
CL_SPLIT = GroupNormConfig(block_c=8, block_s=4, unroll=2, split=3)
# name -> (shape, G, channels_last, config)
PATHS = {
    # 7 groups over 3 programs (_CPU_SMS x 1): 3, 2, 2 groups a program; Cg = 5 in channel
    # blocks of 2 (one padded); S = 63 in steps of 32 (a masked tail)
    "nchw_persistent": ((7, 5, 9, 7), 1, False, NCHW_SMALL),
    # S = 400 in 3 chunks of 160, 160, 80 (steps of 32); Cg = 3
    "nchw_split": ((1, 6, 20, 20), 2, False, NCHW_SPLIT),
    # C = 20 in channel blocks 8, 8, 4 (padded), groups of 5 straddling them; S = 63
    "cl_fused": ((2, 20, 7, 9), 4, True, CL_SMALL),
    "cl_split": ((2, 20, 7, 9), 4, True, CL_SPLIT),     # row chunks 24, 24, 15
    "cl_3d_split": ((2, 8, 3, 5, 7), 2, True, CL_SPLIT),
    "nchw_3d_split": ((2, 4, 3, 8, 9), 2, False, NCHW_SPLIT),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("silu", [False, True], ids=["plain", "silu"])
@pytest.mark.parametrize("path", list(PATHS))
def test_kernel_paths(path, silu, dtype, device):
    shape, G, cl, cfg = PATHS[path]
    if cl and cfg.split > 1:
        C, S = shape[1], 1
        for d in shape[2:]:
            S *= d
        assert chunk_and_split(S, cfg.unroll * cfg.block_s, cfg.split)[1] > 1
    torch.manual_seed(zlib.crc32(repr((path, silu, str(dtype))).encode()))
    check_gn(shape, G, dtype, device, channels_last=cl, silu=silu, config=cfg)


@pytest.mark.parametrize("channels_last", [False, True])
def test_heuristic_splits_huge_groups(channels_last, device):
    """A few huge groups (the video-VAE case, scaled to the interpreter's 3 SMs): the
    heuristic alone splits them over programs, and the result is right."""
    shape, G = (1, 4, 128, 128), 1  # one group of 65536 elements
    elem = 4
    plan = gn_mod._plan_for("fwd", shape, channels_last, G, elem, False, "cpu", gn_mod._CPU_SMS)
    assert plan[6] > 1, plan[4]  # split
    torch.manual_seed(11)
    check_gn(shape, G, torch.float32, device, channels_last=channels_last, silu=True)


def test_affine_combinations(device):
    """weight without bias and bias without weight (runtime flags), both layouts and paths."""
    torch.manual_seed(6)
    for name in ("nchw_persistent", "nchw_split", "cl_fused", "cl_split"):
        shape, G, cl, cfg = PATHS[name]
        x = to_layout(torch.randn(shape), cl).to(device)
        dy = to_layout(torch.randn(shape), cl).to(device)
        C = shape[1]
        for w, b in ((torch.randn(C, device=device), None), (None, torch.randn(C, device=device))):
            out, mean, rstd = group_norm_fwd(x, w, b, G, 1e-5, "silu", config=cfg)
            dx, dw, db = group_norm_bwd(dy, x, w, b, mean, rstd, G, "silu", config=cfg)
            ref = gn_reference(x.double(), None if w is None else w.double(),
                               None if b is None else b.double(), G, 1e-5, True, dy.double())
            lp = gn_reference(x, w, b, G, 1e-5, True, dy)
            assert_close(out, ref[0], lp[0], f"{name} out")
            assert_close(dx, ref[1], lp[1], f"{name} dx")
            if w is not None:
                assert db is None
                assert_close(dw, ref[2], lp[2], f"{name} dweight")
            else:
                assert dw is None
                assert_close(db, ref[3], lp[3], f"{name} dbias")


def test_many_and_long_groups_channels_last(device):
    """The channels_last statistics walk groups in blocks of BLOCK_G and a group's channels in
    blocks of BLOCK_J: G = 80 > 64 groups (InstanceNorm), Cg = 20 > 16 channels a group."""
    torch.manual_seed(7)
    assert GC.BLOCK_G < 80 and GC.BLOCK_J < 20
    check_gn((2, 80, 3, 3), 80, torch.float32, device, channels_last=True)
    check_gn((2, 40, 5, 5), 2, torch.float32, device, channels_last=True, silu=True,
             config=CL_SPLIT)


def test_dy_in_the_other_layout(device):
    """dy in the other memory format is laid out like x (the module's one permitted copy)."""
    torch.manual_seed(8)
    x = to_layout(torch.randn(2, 8, 5, 6), True).to(device)
    w, b = torch.randn(8, device=device), torch.randn(8, device=device)
    dy = torch.randn(2, 8, 5, 6, device=device)  # NCHW while x is channels_last
    out, mean, rstd = group_norm_fwd(x, w, b, 4, 1e-5, "")
    dx, dw, db = group_norm_bwd(dy, x, w, b, mean, rstd, 4, "")
    ref = gn_reference(x, w, b, 4, 1e-5, False, dy)
    assert dx.stride() == x.stride()
    assert torch.allclose(dx, ref[1], atol=1e-5) and torch.allclose(dw, ref[2], atol=1e-4)


# ----------------------------------------------------------------- numerics and safety
@pytest.mark.parametrize("path", [None, "nchw_persistent", "nchw_split", "cl_fused",
                                  "cl_split"])
def test_offset_data_fp32(path, device):
    """mean 1e4, std 1: E[x^2]-E[x]^2 would lose every digit; shifted sums match float64."""
    torch.manual_seed(3)
    shape, G, cl, cfg = PATHS[path] if path else ((2, 8, 40, 40), 2, False, None)
    x = to_layout(torch.randn(shape, dtype=torch.float64) + 1e4, cl).float().to(device)
    C = shape[1]
    w = torch.randn(C, device=device)
    b = torch.randn(C, device=device)
    out, mean, rstd = group_norm_fwd(x, w, b, G, 1e-5, "", config=cfg)
    ref = F.group_norm(x.double(), G, w.double(), b.double(), 1e-5)
    assert (out.double() - ref).abs().max().item() < 1e-4
    var = x.double().reshape(shape[0], G, -1).var(-1, unbiased=False)
    assert ((rstd.double() - torch.rsqrt(var + 1e-5)).abs() / rstd.double()).max() < 1e-4
    check_gn(shape, G, torch.float32, device, channels_last=cl, offset=1e4, config=cfg)


@pytest.mark.parametrize("path", list(PATHS)[:4])
def test_nan_in_nan_out(path, device):
    """A NaN in one group turns that group's outputs and statistics NaN, and only those."""
    shape, G, cl, cfg = PATHS[path]
    torch.manual_seed(9)
    x = torch.randn(shape)
    x[0, 0, 1, 1] = float("nan")  # group (0, 0)
    x = to_layout(x, cl).to(device)
    C = shape[1]
    w, b = torch.randn(C, device=device), torch.randn(C, device=device)
    out, mean, rstd = group_norm_fwd(x, w, b, G, 1e-5, "", config=cfg)
    Cg = C // G
    assert torch.isnan(out[0, :Cg]).all() and torch.isnan(mean[0, 0]) and torch.isnan(rstd[0, 0])
    assert not torch.isnan(out[0, Cg:]).any() and not torch.isnan(out[1:]).any()
    assert not torch.isnan(mean[0, 1:]).any() and not torch.isnan(mean[1:]).any()
    dy = to_layout(torch.randn(shape), cl).to(device)
    dx, dw, db = group_norm_bwd(dy, x, w, b, mean, rstd, G, "", config=cfg)
    assert torch.isnan(dx[0, :Cg]).all() and not torch.isnan(dx[1:]).any()
    assert torch.isnan(dw[:Cg]).all() and not torch.isnan(dw[Cg:]).any()


def test_constant_group_eps_zero(device):
    """A constant group: x - K is exactly 0, var exactly 0, so eps = 0 gives rstd = inf (what
    the InstanceNorm op layer rewrites) and never a negative or NaN variance."""
    for cl, cfg in ((False, None), (True, CL_SPLIT)):
        x = to_layout(torch.randn(2, 8, 6, 6), cl).to(device)
        x[0, :4] = 3.25
        x = to_layout(x, cl)
        _, mean, rstd = group_norm_fwd(x, None, None, 2, 0.0, "", config=cfg)
        assert mean[0, 0].item() == 3.25 and rstd[0, 0].item() == float("inf")
        assert torch.isfinite(rstd[0, 1]) and torch.isfinite(rstd[1]).all()


def test_empty_batch(device):
    x = torch.randn(0, 8, 4, 4, device=device)
    w = torch.randn(8, device=device)
    out, mean, rstd = group_norm_fwd(x, w, w, 4, 1e-5, "")
    assert out.shape == x.shape and mean.shape == (0, 4) and rstd.shape == (0, 4)
    dx, dw, db = group_norm_bwd(torch.randn_like(x), x, w, w, mean, rstd, 4, "")
    assert dx.shape == x.shape and torch.equal(dw, torch.zeros_like(w)) and torch.equal(db, dw)


GUARD_PATHS = [None, "nchw_persistent", "nchw_split", "cl_fused", "cl_split"]


@pytest.mark.parametrize("path", GUARD_PATHS, ids=str)
def test_guard_regions_and_full_write(path, device, monkeypatch):
    torch.manual_seed(4)
    shape, G, cl, cfg = PATHS[path] if path else ((2, 8, 40, 40), 2, True, None)
    C = shape[1]
    g = Guard()
    x = g.place(to_layout(torch.randn(shape), cl).to(device))
    w = g.place(torch.randn(C, device=device))
    b = g.place(torch.randn(C, device=device))
    dy = g.place(to_layout(torch.randn(shape), cl).to(device))
    n_inputs = len(g.items)
    with g.outputs(monkeypatch):
        # fp32 scratch (statistics, partials, group values) poisoned too: nothing is
        # zero-filled, so a partial no program writes would turn a result NaN
        monkeypatch.setattr(gn_mod, "f32_empty", poisoned_f32_empty)
        out, mean, rstd = group_norm_fwd(x, w, b, G, 1e-5, "silu", config=cfg)
        dx, dw, db = group_norm_bwd(dy, x, w, b, mean, rstd, G, "silu", config=cfg)
    views = g.check()
    assert len(views) == n_inputs + 4, "out, dx, dweight and dbias should come from empty_like"
    for t in (out, dx, mean, rstd, dw, db):
        assert not torch.isnan(t).any(), "an output element was not written"


@pytest.mark.parametrize("path", GUARD_PATHS, ids=str)
def test_bitwise_repeatable(path, device):
    """Forward and backward twice: identical bits (fixed-order sums, no atomics; the
    channels_last split path computes a sample's statistics in every program of it)."""
    torch.manual_seed(5)
    shape, G, cl, cfg = PATHS[path] if path else ((2, 8, 40, 40), 2, False, None)
    C = shape[1]
    x = to_layout(torch.randn(shape), cl).to(device)
    w, b = torch.randn(C, device=device), torch.randn(C, device=device)
    dy = to_layout(torch.randn(shape), cl).to(device)
    f1 = group_norm_fwd(x, w, b, G, 1e-5, "silu", config=cfg)
    f2 = group_norm_fwd(x, w, b, G, 1e-5, "silu", config=cfg)
    r1 = group_norm_bwd(dy, x, w, b, f1[1], f1[2], G, "silu", config=cfg)
    r2 = group_norm_bwd(dy, x, w, b, f1[1], f1[2], G, "silu", config=cfg)
    for a, c in zip(f1 + r1, f2 + r2):
        assert torch.equal(a, c)


def test_errors(device):
    x = torch.randn(2, 8, 4, 4, device=device)
    with pytest.raises(ValueError, match="activation='relu'"):
        group_norm_fwd(x, None, None, 2, 1e-5, "relu")
    with pytest.raises(ValueError, match="power-of-two block_c"):
        group_norm_fwd(x, None, None, 2, 1e-5, "", config=GroupNormConfig(3, 4))
    with pytest.raises(ValueError, match="split >= 1"):
        group_norm_fwd(x, None, None, 2, 1e-5, "", config=GroupNormConfig(2, 16, split=0))


def test_int32_limits():
    """Offsets inside a group (NCHW) or a row chunk (channels_last) are int32: the plan splits
    channels_last samples so that chunk * C < 2^31, and refuses NCHW groups of >= 2^31."""
    cfg = dataclasses.replace(GC.cl_tile(128, 2), split=1)
    N, C, S, Cg, _, chunk, split, grid, _ = gn_mod._plan_for(
        "fwd", (1, 2048, 1 << 21), True, 32, 2, True, "sm90", 132, cfg)[:9]
    assert split > 1 and chunk * C < 1 << 31 and grid == (split,)
    with pytest.raises(ValueError, match="2\\^31"):
        gn_mod._plan_for("fwd", (1, 2048, 1 << 21), False, 1, 2, True, "sm90", 132)


def test_vectorized_or_scalar_tiles(device):
    """16-byte loads need S (NCHW) / C (channels_last) a multiple of 16 and aligned x and dy:
    otherwise the scalar tile (unroll 1, no register budget); results agree either way."""
    plan = lambda d, shape, cl, aligned=True: gn_mod._plan_for(  # noqa: E731
        d, shape, cl, 2, 2, True, "sm90", 132, None, aligned)
    assert plan("fwd", (2, 8, 64, 64), False)[4].unroll == 4 and \
        plan("fwd", (2, 8, 64, 64), False)[8] == 80                  # S = 4096: 3 CTAs/SM
    assert plan("fwd", (2, 8, 4, 4), False)[8] == 80                 # S = 16
    scalar = plan("fwd", (2, 8, 7, 7), False)                       # S = 49
    assert (scalar[4].block_c, scalar[4].unroll, scalar[8]) == (32, 1, 255)
    assert plan("fwd", (2, 8, 64, 64), False, aligned=False)[4:9:4] == (scalar[4], 255)
    assert plan("bwd", (2, 32, 3, 3), True)[4].block_c == 64         # C = 32
    assert plan("bwd", (2, 24, 3, 3), True)[4].block_c == 8          # C = 24: scalar
    assert plan("bwd", (2, 24, 3, 3), True)[8] == 255
    torch.manual_seed(10)
    buf = torch.randn(1 + 2 * 8 * 4 * 4, device=device)
    x = buf[1:].view(2, 8, 4, 4)  # 4 bytes past an aligned allocation
    assert x.data_ptr() % 16 != 0
    w, b = torch.randn(8, device=device), torch.randn(8, device=device)
    out, mean, rstd = group_norm_fwd(x, w, b, 2, 1e-5, "")
    ref = F.group_norm(x.double(), 2, w.double(), b.double(), 1e-5)
    assert (out.double() - ref).abs().max().item() < 1e-5
    dy = torch.randn_like(x)
    dx, dw, db = group_norm_bwd(dy, x, w, b, mean, rstd, 2, "")
    lp = gn_reference(x, w, b, 2, 1e-5, False, dy)
    assert torch.allclose(dx, lp[1], atol=1e-5) and torch.allclose(dw, lp[2], atol=1e-4)


def test_instance_norm_dispatch(device, monkeypatch):
    """Contiguous x with G = C and no activation goes to kernels/instance_norm.py's row
    kernels (when that module has them); SiLU, channels_last and config overrides stay here."""
    calls = []

    def fake_fwd(x, w, b, eps):
        calls.append("fwd")
        return "fwd-result"

    def fake_bwd(dy, x, w, b, mean, rstd):
        calls.append("bwd")
        return "bwd-result"

    monkeypatch.setattr(gn_mod, "_instance_norm_fns", lambda: (fake_fwd, fake_bwd))
    x = torch.randn(2, 6, 4, 5, device=device)
    assert group_norm_fwd(x, None, None, 6, 1e-5, "") == "fwd-result"
    assert group_norm_bwd(x, x, None, None, x, x, 6, "") == "bwd-result"
    assert calls == ["fwd", "bwd"]
    out, mean, rstd = group_norm_fwd(x, None, None, 6, 1e-5, "silu")   # GN + SiLU: here
    group_norm_fwd(to_layout(x, True), None, None, 6, 1e-5, "")        # channels_last: here
    group_norm_fwd(x, None, None, 6, 1e-5, "", config=NCHW_SMALL)      # override: here
    group_norm_fwd(x, None, None, 3, 1e-5, "")                         # G != C: here
    assert calls == ["fwd", "bwd"] and mean.shape == (2, 6)


# ------------------------------------------------------------------------ heuristics
H200 = ("sm90", 132)
# (shape, G, dtype, channels_last): the quick benchmark (GN, IN channels_last) and the video
# VAE case of the full set (huge groups, few rows: the split path)
BENCH = [
    ((32, 320, 64, 64), 32, torch.bfloat16, False), ((32, 320, 64, 64), 32, torch.float32, False),
    ((32, 320, 64, 64), 32, torch.bfloat16, True), ((32, 320, 64, 64), 32, torch.float32, True),
    ((32, 64, 128, 128), 64, torch.bfloat16, True), ((32, 64, 128, 128), 64, torch.float32, True),
    ((1, 128, 8, 256, 256), 32, torch.bfloat16, False),
    ((1, 128, 8, 256, 256), 32, torch.bfloat16, True),
    ((1, 128, 8, 256, 256), 32, torch.float32, False),
]


def _bench_plan(direction, shape, G, dtype, cl):
    return gn_mod._plan_for(direction, shape, cl, G, dtype.itemsize, dtype is torch.bfloat16,
                            *H200)


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_heuristic_on_benchmark_shapes(direction):
    """The design, in numbers: NCHW persistent with >= 132 programs, at most the CTAs/SM the
    registers allow (MAX_CTAS) and a re-read working set near the L2 budget; huge groups
    split to >= 132 programs; channels_last chunks giving >= 132 programs; tiles that cover
    the benchmark planes without padding."""
    for shape, G, dt, cl in BENCH:
        N, C, S, Cg, cfg, chunk, split, grid, maxnreg = _bench_plan(direction, shape, G, dt,
                                                                    cl)[:9]
        programs = grid[0] * (grid[1] if len(grid) > 1 else 1)
        assert programs >= 132, (shape, cl, cfg, grid)
        assert GC.tile_key(cfg) in {
            GC.tile_key(t) for t in GC.tiles(cl, dt.itemsize, split > 1 and not cl, direction)}
        if cl:
            assert C % cfg.block_c == 0
            assert programs <= 132 * GC.CL_CTAS[direction, dt.itemsize]
        elif split == 1:
            assert 1 <= cfg.ctas_per_sm <= GC.MAX_CTAS[direction]
            assert programs <= 132 * cfg.ctas_per_sm
            group = Cg * S * dt.itemsize * (1 if direction == "fwd" else 2)
            assert programs * group <= 1.6 * GC.L2_BUDGET
            assert GC._padded(Cg, S, cfg) == Cg * S  # SD's 10 x 4096 groups: no padding
        else:
            assert grid[0] == N * G and split == grid[1]
            assert programs <= 132 * GC.SPLIT_CTAS[direction, dt.itemsize]


def test_candidates():
    """<= 8 candidates per case, the heuristic's first, all of them valid launch configs
    whose tiles are among the compiled variants."""
    for shape, G, dt, cl in BENCH:
        N, C = shape[:2]
        S = 1
        for d in shape[2:]:
            S *= d
        for direction in ("fwd", "bwd"):
            cands = GC.candidates(direction, N, C, S, G, cl, dt.itemsize,
                                  dt is torch.bfloat16, *H200)
            h = _bench_plan(direction, shape, G, dt, cl)[4]
            assert cands[0] == h and 2 <= len(cands) <= 8 and len(set(cands)) == len(cands)
            keys = {GC.tile_key(t) for t in GC.tiles(cl, dt.itemsize, False, direction)} | \
                {GC.tile_key(t) for t in GC.tiles(cl, dt.itemsize, True, direction)}
            for c in cands:
                assert GC.tile_key(c) in keys
                gn_mod._plan_for(direction, shape, cl, G, dt.itemsize, dt is torch.bfloat16,
                                 *H200, c)


def test_tuned_table_is_read_first(monkeypatch):
    """A table entry for (family, arch, key) replaces the analytic config, for that key and
    arch only."""
    from fusednorm.kernels import _tuning
    entry = dict(block_c=1, block_s=2048, unroll=4, num_warps=8, split=1, ctas_per_sm=1)
    table = {"group_norm_fwd_nchw": {"sm90|bf16|32x320x4096|g32": entry}}
    monkeypatch.setattr(_tuning, "_table", lambda: table)
    GC.group_norm_config.cache_clear()
    gn_mod._plan_for.cache_clear()
    try:
        args = (32, 320, 4096, 32, False, 2, True)
        assert GC.group_norm_config("fwd", *args, "sm90", 132) == GroupNormConfig(**entry)
        assert GC.group_norm_config("fwd", *args, "sm80", 108) != GroupNormConfig(**entry)
        assert GC.group_norm_config("bwd", *args, "sm90", 132) != GroupNormConfig(**entry)
        assert GC.family("fwd", True) == "group_norm_fwd_cl"
    finally:
        GC.group_norm_config.cache_clear()
        gn_mod._plan_for.cache_clear()


def test_tune_targets(device):
    """tune_targets: a forward and a backward target per case whose candidates all run."""
    shape = (2, 8, 8, 8)
    for layout in ("nchw", "nhwc"):
        targets = gn_mod.tune_targets("group_norm", shape, torch.float32, layout, device,
                                      num_groups=2)
        cl = "cl" if layout == "nhwc" else "nchw"
        assert [t.family for t in targets] == [f"group_norm_fwd_{cl}", f"group_norm_bwd_{cl}"]
        assert targets[0].key == "fp32|2x8x64|g2"
        for t in targets:
            assert 1 <= len(t.candidates) <= 8 and t.nbytes > 0
            for cfg in t.candidates[:3]:
                t.run(cfg)
    assert gn_mod.tune_targets("instance_norm", shape, torch.float32, "nchw", device) == []
    assert len(gn_mod.tune_targets("instance_norm", shape, torch.float32, "nhwc", device)) == 2
    assert gn_mod.tune_targets("layer_norm", (4, 8), torch.float32, "rows", device) == []


# --------------------------------------------------------------------- offline evidence
# The kernels in this process are interpreter objects when TRITON_INTERPRET=1 (set by conftest
# before import), which triton.compile cannot take: worker processes import them without it.
_COMPILE_WORKER = r"""
import json, sys, importlib
from _triton_compile import compile_kernel
mod = importlib.import_module(sys.argv[1])
start, step = int(sys.argv[2]), int(sys.argv[3])
for i, (fn, sig, ce, nw) in enumerate(mod.compile_variants()):
    if i % step == start:
        for arch in (80, 90):
            info = compile_kernel(fn, sig, ce, arch, nw)
            print("RESULT " + json.dumps(dict(info, constexprs=ce)), flush=True)
"""


def compile_all_variants(module_name, n_variants, workers=2):
    """Compile every variant of ``module_name.compile_variants()`` for sm_80 and sm_90 in
    worker processes; print registers / stack bytes; fail on spills."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [subprocess.Popen([sys.executable, "-c", _COMPILE_WORKER, module_name, str(i),
                               str(workers)], cwd=here, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(workers)]
    results = []
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, f"compile worker failed:\n{err[-4000:]}"
        results += [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 2 * n_variants, (len(results), n_variants)
    worst = {}
    for info in results:
        key = (info["name"], info["arch"])
        if key not in worst or (info["regs"], info["local_bytes"]) > (worst[key]["regs"],
                                                                       worst[key]["local_bytes"]):
            worst[key] = info
    print(f"\n{module_name}: compiled {len(results)} kernels; worst registers/stack per kernel:")
    for key in sorted(worst):
        i = worst[key]
        print(f"  {key[0]:<24} sm_{key[1]}: regs={i['regs']} local={i['local_bytes']} "
              f"stack={i['stack_bytes']} ({i['constexprs']})")
    # local memory = spilled registers.  A few stack bytes without local memory are the call
    # frame of a subroutine (BatchNorm's NCHW int64 division on sm_80), not spills: printed only.
    spilled = [i for i in results if i["local_bytes"] or i["stack_bytes"] > 16]
    assert not spilled, f"register spills: {spilled}"
    return {key[0] for key in worst}


_SPEC_WORKER = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import re, subprocess, tempfile
import _sass
from _triton_compile import specialization
from fusednorm.kernels import group_norm as m
start, step = int(sys.argv[1]), int(sys.argv[2])

def cuobjdump(cubin, *flags):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([_sass._tool("cuobjdump"), *flags, f.name],
                              capture_output=True, text=True, check=True).stdout


def usage_and_spills(cubin):
    # Registers and local memory from -res-usage (milliseconds).  STL/LDL address the
    # thread's local frame (LOCAL + STACK bytes): with both 0 there is none to spill to, so the
    # SASS (0.4 s of cuobjdump -sass, as long as the compile) is read only when either is not,
    # to count the STL/LDL.  The control below shows the detector on a forced spill.
    out = cuobjdump(cubin, "-res-usage")
    regs, local, stack = (int(re.search(k + r":(\d+)", out).group(1))
                          for k in ("REG", "LOCAL", "STACK"))
    spills = _sass.spills(_sass.instructions(cuobjdump(cubin, "-sass"))) if local or stack else 0
    return regs, local, stack, spills


def compile_one(fn, sig, ce, nw, div, opts, arch):
    src = ASTSource(fn=fn, signature=sig, constexprs=ce, attrs=specialization(fn, sig, div))
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=nw, **opts))


specs = list(m.compile_specs())
if start == 0:  # control: a 128-register backward squeezed into 64 registers must spill
    fn, sig, ce, nw, div, opts = next(s for s in specs if s[0].fn.__name__ == "_gn_bwd_cl"
                                      and s[4] and s[1]["X"] == "*bf16")
    k = compile_one(fn, sig, ce, nw, div, dict(opts, maxnreg=64), 90)
    regs, local, stack, spills = usage_and_spills(k.asm["cubin"])
    sass = _sass.spills(_sass.instructions(cuobjdump(k.asm["cubin"], "-sass")))
    print("CONTROL " + json.dumps(dict(regs=regs, local=local, stack=stack, spills=spills,
                                       sass_spills=sass)), flush=True)
for i, (fn, sig, ce, nw, div, opts) in enumerate(specs):
    if i % step != start:
        continue
    for arch in (80, 90):
        k = compile_one(fn, sig, ce, nw, div, opts, arch)
        regs, local, stack, spills = usage_and_spills(k.asm["cubin"])
        print("RESULT " + json.dumps(dict(
            name=fn.fn.__name__, arch=arch, regs=regs, local=local, stack=stack,
            spills=spills, x=sig.get("X", sig.get("Mean")), w=sig.get("W"),
            constexprs=ce, vec=bool(div), maxnreg=opts.get("maxnreg"))), flush=True)
"""


def test_compile_every_variant():
    """Every launch variant (compile_specs: each in the specialization it runs in, with its
    maxnreg) compiles for sm_80 and sm_90 with no local-memory traffic: no local memory or
    stack frame (so no STL/LDL; the SASS is counted wherever there is either), within its
    register budget.  A control variant forced into 64 registers shows the check catching a
    spill.  Registers per kernel to the log."""
    n = sum(1 for _ in gn_mod.compile_specs())
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [subprocess.Popen([sys.executable, "-c", _SPEC_WORKER, str(i), "2"], cwd=here,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    results, control = [], []
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, f"compile worker failed:\n{err[-4000:]}"
        results += [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
        control += [json.loads(line[8:]) for line in out.splitlines()
                    if line.startswith("CONTROL ")]
    assert len(results) == 2 * n, (len(results), n)
    assert len(control) == 1 and control[0]["local"] + control[0]["stack"] > 0 and \
        control[0]["spills"] == control[0]["sass_spills"] > 0, control
    worst = {}
    for r in results:
        key = (r["name"], r["arch"], r["vec"])
        if key not in worst or r["regs"] > worst[key]["regs"]:
            worst[key] = r
    print(f"\ngroup_norm: compiled {len(results)} kernels; most registers per kernel:")
    for key in sorted(worst):
        r = worst[key]
        print(f"  {key[0]:<20} sm_{key[1]} {'vec' if key[2] else 'scalar':<6} regs={r['regs']:>3} "
              f"(maxnreg {r['maxnreg']}) local/stack={r['local']}/{r['stack']} "
              f"STL/LDL={r['spills']} ({r['x']}, {r['constexprs']})")
    print(f"  control, _gn_bwd_cl bf16 forced to maxnreg 64 (sm_90): {control[0]}")
    bad = [r for r in results if r["spills"] or r["local"] or r["stack"]
           or (r["maxnreg"] and r["regs"] > r["maxnreg"])]
    assert not bad, f"local-memory traffic or over budget: {bad}"
    names = {r["name"] for r in results}
    # four GN kernels, the InstanceNorm running statistics, the dweight/dbias column sums
    assert len(names) == 6, names


_SPLIT_ONES_WORKER = r"""
import json
from _triton_compile import compile_kernel
from fusednorm.kernels import group_norm as m
seen = set()
for fn, sig, ce, nw in m.compile_variants():
    key = (fn.fn.__name__, ce.get("PHASE"))
    if not (ce.get("SPLIT") or ce.get("PHASE")) or key in seen:
        continue
    seen.add(key)
    ints = [a for a, t in sig.items() if t in ("i32", "i64")]
    compile_kernel(fn, dict(sig, **{a: "constexpr" for a in ints}),
                   dict(ce, **{a: 1 for a in ints}), 90, nw)
    print("RESULT " + json.dumps(fn.fn.__name__), flush=True)
"""


def test_split_variants_compile_with_integer_args_one():
    """tests/test_triton_specialization.py compiles the first variant of each kernel (the
    persistent / fused ones) with each integer argument specialized to 1 as Triton does at
    launch; the split variants here (SPLIT=True, PHASE 1 and 2), all integers 1 at once."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run([sys.executable, "-c", _SPLIT_ONES_WORKER], cwd=here, env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-4000:]
    names = [json.loads(line[7:]) for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert sorted(names) == ["_gn_bwd_cl", "_gn_bwd_cl", "_gn_bwd_nchw", "_gn_fwd_cl",
                             "_gn_fwd_nchw"]


# Evidence worker: the launches the heuristic makes for each benchmark shape on an H200 (SM
# count 132, arch sm90: the tuned table's entries, else the analytic rule), compiled for sm_90
# as Triton specializes them at launch (ints divisible by 16 marked so, ints equal to 1
# constants), then read from SASS.
_EVIDENCE_WORKER = r"""
import json, re, sys
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import _sass
from _triton_compile import resource_usage, specialization
from fusednorm.kernels import group_norm as m
m._DEVICES[torch.device("meta")] = ("sm90", 132)
DT = {"bf16": torch.bfloat16, "fp32": torch.float32}
HINT = re.compile(r"\.(EL|EF)(\.|$)")
for shape, G, dt, cl, direction in json.loads(sys.argv[1]):
    x = torch.empty(shape, dtype=DT[dt], device="meta")
    if cl:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    for fn, grid, ce, nw, ints, maxnreg in m.launches(direction, x, G):
        kw = {k: v for k, v in ce.items() if k not in ("BLOCK_C", "BLOCK_S", "UNROLL")}
        cfg = m.GroupNormConfig(ce["BLOCK_C"], ce["BLOCK_S"], ce["UNROLL"], nw)
        _, sig, ce1, _ = m.variant(fn, dt, dt, cfg, **kw)
        for k, v in ints.items():
            if v == 1:
                sig[k] = "constexpr"
                ce1[k] = 1
        src = ASTSource(fn=fn, signature=sig, constexprs=ce1, attrs=specialization(
            fn, sig, {a for a, v in ints.items() if v % 16 == 0}))
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=nw, maxnreg=maxnreg))
        ins = _sass.instructions(_sass.sass_of_cubin(k.asm["cubin"]))
        regs, local, _ = resource_usage(k.asm["cubin"])
        loops = _sass.loops(ins)
        inner = [l for l in loops
                 if not any(o != l and l[0] <= o[0] and o[1] <= l[1] for o in loops)]
        # the streaming loops: innermost loops loading x / dy, the only loads the kernels mark
        # with an eviction hint (EL: pass 1, re-read later; EF: pass 2)
        stream = [(lo, hi, _sass.global_loads(ins, lo, hi)) for lo, hi in inner
                  if any(HINT.search(op) for op in _sass.global_loads(ins, lo, hi))]
        hinted = [op for op in _sass.global_loads(ins) if HINT.search(op)]
        # sub-128-bit loads in the other loops (tests/_sass.narrow_loop_loads, by instruction):
        # per-channel-block parameters and shifts K in the loops around the streaming ones,
        # fp32 partials in the split merges -- bytes per group, not per element
        narrow = sorted({(i.addr, i.op) for i in ins if i.op.startswith("LDG")
                         and _sass.load_bits(i.op) < 128
                         and any(lo <= i.addr <= hi for lo, hi in loops)})
        print("RESULT " + json.dumps(dict(
            case=[shape, G, dt, cl, direction], kernel=fn.fn.__name__,
            phase=ints.get("phase", ce.get("PHASE")),
            grid=list(grid), num_warps=nw, unroll=ce["UNROLL"], regs=regs, local=local,
            maxnreg=maxnreg,
            stl=_sass.spills(ins), shared=k.metadata.shared,
            ctas=_sass.ctas_per_sm(regs, nw, k.metadata.shared, 90),
            stream_loads=[lds for _, _, lds in stream],
            narrow_hinted=[op for op in hinted if _sass.load_bits(op) < 128],
            narrow_in_stream=[op for a, op in narrow if any(lo <= a <= hi for lo, hi, _ in stream)],
            narrow_other=len(narrow))), flush=True)
"""


def test_benchmark_shape_evidence():
    """For the configurations the heuristic chooses for each benchmark shape, compiled for
    sm_90 with the launch-time specialization: no spills; every streaming loop (innermost
    loops over x / dy) loads 128 bits only (channels_last included: no 2-byte loads); the
    persistent NCHW grid fits the SMs x the CTAs its registers allow (all programs resident)
    with >= 132 programs; split / channels_last grids >= 132 programs in one wave.
    The table (kernel, case, regs, CTAs/SM, grid, bytes in flight per SM) goes to the log."""
    cases = [[list(s), G, "bf16" if dt is torch.bfloat16 else "fp32", cl, d]
             for s, G, dt, cl in BENCH for d in ("fwd", "bwd")]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [subprocess.Popen([sys.executable, "-c", _EVIDENCE_WORKER, json.dumps(cases[i::2])],
                              cwd=here, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, f"evidence worker failed:\n{err[-4000:]}"
        results += [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    assert {tuple(map(str, r["case"])) for r in results} == \
        {tuple(map(str, c)) for c in cases}
    table = []
    for r in results:
        shape, G, dt, cl, direction = r["case"]
        label = f"{'x'.join(map(str, shape))} G{G} {dt} {'cl' if cl else 'nchw'} {direction}"
        assert r["local"] == 0 and r["stl"] == 0 and r["regs"] <= r["maxnreg"], (label, r)
        assert r["stream_loads"], (label, r["kernel"], "no streaming loop found")
        for lds in r["stream_loads"]:
            assert all(op.endswith(".128") or ".128." in op for op in lds), (label, lds)
        assert r["narrow_hinted"] == [] and r["narrow_in_stream"] == [], (label, r)
        grid = r["grid"]
        programs = grid[0] * (grid[1] if len(grid) > 1 else 1)
        assert programs >= 132, (label, grid)
        # persistent: every program resident (none waits for a slot); split and
        # channels_last: one wave.  And the heuristic's CTA tables within what compiled.
        assert programs <= 132 * r["ctas"], (label, grid, r["ctas"])
        elem = 2 if dt == "bf16" else 4
        table_ctas = (GC.CL_CTAS[direction, elem] if cl else GC.MAX_CTAS[direction]
                      if len(grid) == 1 else GC.SPLIT_CTAS[direction, elem])
        assert table_ctas <= r["ctas"], (label, r["kernel"], table_ctas, r["ctas"])
        resident = min(r["ctas"], -(-programs // 132))
        tensors = 1 if direction == "fwd" else 2
        kb = resident * 32 * r["num_warps"] * r["unroll"] * 16 * tensors // 1024
        table.append((label, r["kernel"], r["phase"], r["regs"], r["ctas"], programs, kb,
                      r["narrow_other"]))
    print("\nGroupNorm benchmark shapes, sm_90 (H200: 132 SMs); in flight = resident CTAs x "
          "threads x unroll x 16 B x (x[, dy]):")
    print("  (narrow: sub-128-bit loads in loops around / beside the streaming loops -- "
          "parameters, K, split partials; none inside a streaming loop)")
    print(f"  {'case':<34} {'kernel':<13} ph regs CTAs/SM grid in-flight/SM narrow")
    for label, kern, ph, regs, ctas, programs, kb, narrow in sorted(table):
        print(f"  {label:<34} {kern:<13} {ph:>2} {regs:>4} {ctas:>7} {programs:>4} {kb:>6} KB"
              f" {narrow:>6}")
