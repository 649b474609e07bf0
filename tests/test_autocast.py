"""Mixed precision: fp16/bf16 activations with fp32 weights, and torch.autocast.

What the tests document (actual behaviour, not wishes):
- fusednorm's norms return the input's dtype for fp16/bf16 activations with fp32 weights
  (statistics in fp32, weight/bias gradients in the weight's dtype), on every backend, with
  no cast of the activation.
- CPU autocast (bf16): torch's LayerNorm, RMSNorm, GroupNorm, BatchNorm2d also return bf16 for
  a bf16 input, so a converted model has the same dtypes as torch's.
- CUDA autocast: torch runs layer_norm and group_norm in fp32 and returns fp32
  (aten/src/ATen/autocast_mode.cpp, the fp32 list); our ops are not on any autocast list and
  return the input's fp16/bf16.  The GPU test asserts exactly this difference for LayerNorm
  and GroupNorm, and records torch's dtype for RMSNorm and BatchNorm2d.
"""
import copy

import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F

import fusednorm
from _util import HAS_CUDA, assert_accurate, backend_params, randn, require_backend

pytestmark = pytest.mark.timeout(300)
LOW = (torch.float16, torch.bfloat16)


# ------------------------------------------------------ mixed dtypes, no autocast, per backend
def _functional_cases(backend):
    """name -> (ours(x, w, b), torch(x, w, b), x shape, C)."""
    kw = dict(backend=backend)
    return {
        "layer_norm": (lambda x, w, b: fusednorm.layer_norm(x, (8,), w, b, **kw),
                       lambda x, w, b: F.layer_norm(x, (8,), w, b), (5, 8), 8),
        "rms_norm": (lambda x, w, b: fusednorm.rms_norm(x, (8,), w, 1e-5, **kw),
                     lambda x, w, b: F.rms_norm(x, (8,), w, 1e-5), (5, 8), 8),
        "group_norm": (lambda x, w, b: fusednorm.group_norm(x, 2, w, b, **kw),
                       lambda x, w, b: F.group_norm(x, 2, w, b), (2, 4, 3, 5), 4),
        "batch_norm": (lambda x, w, b: fusednorm.batch_norm(x, None, None, w, b, True, **kw),
                       lambda x, w, b: F.batch_norm(x, None, None, w, b, True), (3, 4, 5), 4),
        "instance_norm": (lambda x, w, b: fusednorm.instance_norm(x, weight=w, bias=b, **kw),
                          lambda x, w, b: F.instance_norm(x, weight=w, bias=b), (2, 4, 7), 4),
    }


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("be", backend_params())
def test_low_precision_input_fp32_weight(be, dtype):
    backend, device = be
    require_backend(backend, device)
    for name, (ours, theirs, shape, c) in _functional_cases(backend).items():
        x = randn(*shape, seed=1, device=device, dtype=dtype) * 3 + 2
        w = randn(c, seed=2, device=device)          # fp32, never cast by the caller
        b = randn(c, seed=3, device=device)
        g = randn(*shape, seed=4, device=device, dtype=dtype)
        results = {}
        for who, fn, xt, wt, bt, gt in (
                ("ours", ours, x, w, b, g), ("torch", theirs, x, w, b, g),
                ("ref", theirs, x.double(), w.double(), b.double(), g.double())):
            try:
                results[who] = _forward_backward(fn, xt, wt, bt, gt)
            except RuntimeError as e:
                # torch's CUDA layer_norm (2.11) refuses fp16/bf16 x with fp32 weight
                # ("expected scalar type Half but found Float"); its CPU kernels take the mix,
                # so torch's own error for the same computation comes from the CPU.
                if who != "torch" or device == "cpu" or "expected scalar type" not in str(e):
                    raise
                results[who] = tuple(t.to(device) for t in _forward_backward(
                    fn, *(t.cpu() for t in (xt, wt, bt, gt))))
        (o, dx, dw, db), (t, tdx, tdw, tdb), (r, rdx, rdw, rdb) = (
            results["ours"], results["torch"], results["ref"])
        what = f"{name} {backend} {dtype}"
        assert o.dtype == dtype and dx.dtype == dtype, what
        assert dw.dtype == torch.float32 and db.dtype == torch.float32, what
        assert_accurate(o, r, t, dtype, what + " out")
        assert_accurate(dx, rdx, tdx, dtype, what + " dx")
        # weight grads are fp32 sums over the batch of low-precision products
        torch.testing.assert_close(dw, rdw.float(), **_wtol(dtype, tdw, rdw))
        if name != "rms_norm":
            torch.testing.assert_close(db, rdb.float(), **_wtol(dtype, tdb, rdb))


def _forward_backward(fn, x, w, b, g):
    """(out, dx, dw, db) of fn(x, w, b) backpropagating g (db zeros where b is unused)."""
    xl, wl, bl = (t.clone().requires_grad_() for t in (x, w, b))
    out = fn(xl, wl, bl)
    out.backward(g)
    return (out.detach(), xl.grad, wl.grad,
            bl.grad if bl.grad is not None else torch.zeros_like(bl))


def _wtol(dtype, theirs, ref):
    """Weight-grad tolerance: twice torch's own error (fp32 accumulation of dtype data)."""
    e = (theirs.double() - ref).abs().max().item()
    return dict(atol=2 * e + (1e-2 if dtype == torch.bfloat16 else 2e-3), rtol=0)


# --------------------------------------------------------------------------- CPU autocast
def _models():
    conv = lambda: tnn.Conv2d(3, 8, 3, padding=1)  # noqa: E731
    return [("LayerNorm", tnn.Linear(12, 16), tnn.LayerNorm(16), (6, 12)),
            ("RMSNorm", tnn.Linear(12, 16), tnn.RMSNorm(16), (6, 12)),
            ("GroupNorm", conv(), tnn.GroupNorm(4, 8), (2, 3, 5, 5)),
            ("BatchNorm2d", conv(), tnn.BatchNorm2d(8), (4, 3, 5, 5))]


def _rms_eps_default_is_torchs(device, dtype) -> bool:
    """torch's rms_norm with eps=None uses the eps of its fp32 compute type (ATen's
    opmath_type), not finfo(input.dtype).eps as its docstring says; does ours?"""
    x = randn(3, 16, seed=9, device=device, dtype=dtype) * 0.05
    ours = fusednorm.rms_norm(x, (16,))
    fp32_eps = fusednorm.rms_norm(x, (16,), eps=torch.finfo(torch.float32).eps)
    return torch.equal(ours, fp32_eps)


def _autocast_norm_check(device, dtype, expect_torch_dtype):
    torch.manual_seed(0)
    assert _rms_eps_default_is_torchs(device, dtype)
    for name, pre, norm, shape in _models():
        pre, norm = pre.to(device), norm.to(device)
        with torch.no_grad():
            norm.weight.normal_()
            if getattr(norm, "bias", None) is not None:
                norm.bias.normal_()
        ref = tnn.Sequential(pre, norm)
        ours = fusednorm.convert(copy.deepcopy(ref))
        assert type(ours[1]) is not type(ref[1])
        x = randn(*shape, seed=1, device=device)
        with torch.autocast(device, dtype=dtype):
            h = ref[0](x)
            assert h.dtype == dtype, f"{name}: the layer before the norm should give {dtype}"
            yt, yo = ref(x), ours(x)
            hl, hr = h.detach().clone().requires_grad_(), h.detach().clone().requires_grad_()
            out_o, out_t = ours[1](hl), ref[1](hr)
        what = f"{name} under {device} autocast {dtype}"
        assert yt.dtype == expect_torch_dtype(name, dtype), f"{what}: torch returned {yt.dtype}"
        assert yo.dtype == yt.dtype, f"{what}: ours returned {yo.dtype}, torch {yt.dtype}"
        assert out_o.dtype == out_t.dtype, what
        # accuracy of the norm itself vs float64 on the same low-precision input
        norm64 = copy.deepcopy(ref[1]).double()
        if name == "RMSNorm" and norm64.eps is None:
            norm64.eps = torch.finfo(torch.float32).eps  # torch's default for fp16/bf16/fp32
        h64 = h.detach().double().requires_grad_()
        r = norm64(h64)
        g = randn(*r.shape, seed=2, device=device, dtype=dtype)
        r.backward(g.double())
        out_o.backward(g)
        out_t.backward(g.to(out_t.dtype))
        assert_accurate(out_o.detach(), r.detach(), out_t.detach(), out_t.dtype, what + " out")
        assert_accurate(hl.grad, h64.grad, hr.grad.to(dtype), dtype, what + " dx")
        for (pname, p_ours), p_ref, p64 in zip(ours[1].named_parameters(),
                                               ref[1].parameters(), norm64.parameters()):
            assert p_ours.grad.dtype == torch.float32, f"{what} d{pname}"
            torch.testing.assert_close(p_ours.grad, p64.grad.float(),
                                       **_wtol(dtype, p_ref.grad, p64.grad))
        yo.float().sum().backward()  # the whole model backpropagates under autocast
        assert all(p.grad is not None for p in ours.parameters()), what


def test_cpu_autocast_bf16_matches_torch_modules():
    # On CPU torch keeps bf16 for all four norms; so do we.
    _autocast_norm_check("cpu", torch.bfloat16, lambda name, dtype: dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="CUDA autocast needs a CUDA device")
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_cuda_autocast(dtype):
    # torch's CUDA autocast runs layer_norm/group_norm in fp32 (fp32 output); ours do the same.
    fp32_in_torch = {"LayerNorm", "GroupNorm"}

    def expect(name, dt):
        return torch.float32 if name in fp32_in_torch else _torch_cuda_dtype(name, dt)

    _autocast_norm_check("cuda", dtype, expect)


def _torch_cuda_dtype(name, dtype):
    """torch's output dtype under CUDA autocast for the norms not on the documented fp32 list
    (RMSNorm: depends on the torch version; BatchNorm2d: the input's dtype), measured."""
    pre = tnn.Linear(12, 16) if name == "RMSNorm" else tnn.Conv2d(3, 8, 3, padding=1)
    norm = tnn.RMSNorm(16) if name == "RMSNorm" else tnn.BatchNorm2d(8)
    m = tnn.Sequential(pre, norm).cuda()
    x = torch.randn((6, 12) if name == "RMSNorm" else (4, 3, 5, 5), device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = m(x).dtype
    print(f"torch {name} under CUDA autocast {dtype}: {out}")
    return out
