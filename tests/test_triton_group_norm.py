"""Triton GroupNorm / InstanceNorm launchers against a float64 torch reference.

Tolerance rule (flash-attn's): our error against float64 is at most 2x torch's own error in
the same dtype (torch's op run on the low-precision tensors), plus a small atol.  Under the
Triton interpreter bf16 downcasts truncate instead of rounding: one bf16 ulp is allowed extra.
The helpers here are shared with test_triton_batch_norm.py.
"""
import contextlib
import json
import os
import subprocess
import sys
import zlib

import pytest
import torch
import torch.nn.functional as F

from fusednorm.kernels import group_norm as gn_mod
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
    y = F.group_norm(x, G, w, b, eps)
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


# (shape, G, channels_last, affine, silu)
CASES = [
    ((2, 64, 9, 7), 1, False, True, False),
    ((2, 64, 9, 7), 8, True, True, True),
    ((2, 64, 9, 7), 64, False, False, False),
    ((2, 64, 9, 7), 8, False, False, True),
    ((1, 32, 1, 1), 8, True, True, False),
    ((3, 6, 5), 3, False, True, True),
    ((2, 4, 3, 5, 6), 2, True, True, True),  # channels_last_3d
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


SPLIT_CFG = GroupNormConfig(block_c=8, block_s=128, split=4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_split_reduction_path(channels_last, device):
    """S = 1600 in chunks of 512: four programs per group, merged partial statistics."""
    assert chunk_and_split(40 * 40, 128, 4) == (512, 4)
    torch.manual_seed(2)
    check_gn((2, 8, 40, 40), 2, torch.float32, device, channels_last=channels_last,
             silu=channels_last, config=SPLIT_CFG)


@pytest.mark.parametrize("config", [None, SPLIT_CFG], ids=["fused", "split"])
def test_offset_data_fp32(config, device):
    """mean 1e4, std 1: E[x^2]-E[x]^2 would lose every digit; ours matches float64 ~1e-4."""
    torch.manual_seed(3)
    x = (torch.randn(2, 8, 40, 40, dtype=torch.float64) + 1e4).float().to(device)
    w = torch.randn(8, device=device)
    b = torch.randn(8, device=device)
    out, mean, rstd = group_norm_fwd(x, w, b, 2, 1e-5, "", config=config)
    ref = F.group_norm(x.double(), 2, w.double(), b.double(), 1e-5)
    assert (out.double() - ref).abs().max().item() < 1e-4
    var = x.double().reshape(2, 2, -1).var(-1, unbiased=False)
    assert ((rstd.double() - torch.rsqrt(var + 1e-5)).abs() / rstd.double()).max() < 1e-4
    check_gn((2, 8, 40, 40), 2, torch.float32, device, offset=1e4, config=config)


def test_empty_batch(device):
    x = torch.randn(0, 8, 4, 4, device=device)
    w = torch.randn(8, device=device)
    out, mean, rstd = group_norm_fwd(x, w, w, 4, 1e-5, "")
    assert out.shape == x.shape and mean.shape == (0, 4) and rstd.shape == (0, 4)
    dx, dw, db = group_norm_bwd(torch.randn_like(x), x, w, w, mean, rstd, 4, "")
    assert dx.shape == x.shape and torch.equal(dw, torch.zeros_like(w)) and torch.equal(db, dw)


@pytest.mark.parametrize("config", [None, SPLIT_CFG], ids=["fused", "split"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_guard_regions_and_full_write(channels_last, config, device, monkeypatch):
    torch.manual_seed(4)
    shape, G = (2, 8, 40, 40), 2
    g = Guard()
    x = g.place(to_layout(torch.randn(shape), channels_last).to(device))
    w = g.place(torch.randn(8, device=device))
    b = g.place(torch.randn(8, device=device))
    dy = g.place(to_layout(torch.randn(shape), channels_last).to(device))
    n_inputs = len(g.items)
    with g.outputs(monkeypatch):
        # fp32 scratch (statistics, partials) poisoned too: the partial buffers are not
        # zero-filled, so a partial row no program writes would turn dweight/dbias NaN
        monkeypatch.setattr(gn_mod, "f32_empty", poisoned_f32_empty)
        out, mean, rstd = group_norm_fwd(x, w, b, G, 1e-5, "silu", config=config)
        dx, dw, db = group_norm_bwd(dy, x, w, b, mean, rstd, G, "silu", config=config)
    views = g.check()
    assert len(views) == n_inputs + 4, "out, dx, dweight and dbias should come from empty_like"
    for t in (out, dx, mean, rstd, dw, db):
        assert not torch.isnan(t).any(), "an output element was not written"


@pytest.mark.parametrize("config", [None, SPLIT_CFG], ids=["fused", "split"])
def test_weight_grads_bitwise_repeatable(config, device):
    torch.manual_seed(5)
    x = torch.randn(2, 8, 40, 40, device=device)
    w = torch.randn(8, device=device)
    b = torch.randn(8, device=device)
    dy = torch.randn_like(x)
    _, mean, rstd = group_norm_fwd(x, w, b, 2, 1e-5, "", config=config)
    r1 = group_norm_bwd(dy, x, w, b, mean, rstd, 2, "", config=config)
    r2 = group_norm_bwd(dy, x, w, b, mean, rstd, 2, "", config=config)
    assert torch.equal(r1[1], r2[1]) and torch.equal(r1[2], r2[2])


def test_errors(device):
    x = torch.randn(2, 8, 4, 4, device=device)
    with pytest.raises(ValueError, match="activation='relu'"):
        group_norm_fwd(x, None, None, 2, 1e-5, "relu")
    with pytest.raises(ValueError, match=r"config tile \(4, 4\)"):
        group_norm_fwd(x, None, None, 2, 1e-5, "", config=GroupNormConfig(4, 4))


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


def test_compile_every_variant():
    """Every kernel variant the launchers can produce compiles for sm_80/sm_90 without spills."""
    n = sum(1 for _ in gn_mod.compile_variants())
    names = compile_all_variants("fusednorm.kernels.group_norm", n)
    assert len(names) == 7  # six GN kernels + the InstanceNorm running-statistics kernel
