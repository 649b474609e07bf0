"""layer_norm and rms_norm on every backend: forward and backward against torch in float64."""
import zlib

import pytest
import torch
import torch.nn.functional as F

import fusednorm
from _util import (ALL_DTYPES, assert_accurate, backend_params, randn, require_backend,
                   supports_dtype)

SHAPES = [((1, 1), (1,)), ((3, 37), (37,)), ((37, 1000), (1000,)), ((2, 1128), (1128,)),
          ((5, 1), (1,)), ((2, 3, 7), (3, 7))]
AFFINE = ["wb", "w", "none"]


def _torch(x, shape, w, b, eps, rms):
    if rms:
        return F.rms_norm(x, shape, w, eps)
    return F.layer_norm(x, shape, w, b, eps)


def _run(fn, x, dy, params):
    out = fn(x, *params)
    leaves = [x] + [p for p in params if isinstance(p, torch.Tensor) and p.requires_grad]
    grads = torch.autograd.grad(out, leaves, dy)
    return out, grads


def _case(backend, device, dtype, shape, nshape, affine, rms, seed, wdtype=None):
    wdtype = wdtype or dtype
    x = randn(*shape, dtype=dtype, seed=seed)
    dy = randn(*shape, dtype=dtype, seed=seed + 1)
    w = randn(*nshape, dtype=wdtype, seed=seed + 2) if "w" in affine else None
    b = randn(*nshape, dtype=wdtype, seed=seed + 3) if ("b" in affine and not rms) else None
    eps = 1e-5

    def leaf(t, dev, dt=None):
        if t is None:
            return None
        return t.detach().to(device=dev, dtype=dt or t.dtype).requires_grad_(True)

    def ours(xx, ww, bb):
        if rms:
            return fusednorm.rms_norm(xx, nshape, ww, eps, backend=backend)
        return fusednorm.layer_norm(xx, nshape, ww, bb, eps, backend=backend)

    o, og = _run(lambda xx, ww, bb: ours(xx, ww, bb), leaf(x, device), dy.to(device),
                 [leaf(w, device), leaf(b, device)])
    r, rg = _run(lambda xx, ww, bb: _torch(xx, nshape, ww, bb, eps, rms),
                 leaf(x, "cpu", torch.float64), dy.double(),
                 [leaf(w, "cpu", torch.float64), leaf(b, "cpu", torch.float64)])
    t, tg = _run(lambda xx, ww, bb: _torch(xx, nshape, ww, bb, eps, rms), leaf(x, "cpu"), dy,
                 [leaf(w, "cpu", dtype), leaf(b, "cpu", dtype)])
    assert o.device.type == device
    assert_accurate(o.cpu(), r, t, dtype, "out")
    names = ["dx"] + (["dweight"] if w is not None else []) + (["dbias"] if b is not None else [])
    for name, a, ref, th in zip(names, og, rg, tg):
        assert a.dtype == (dtype if name == "dx" else wdtype)
        assert_accurate(a.cpu().to(th.dtype), ref, th, dtype, name)


@pytest.mark.parametrize("be", backend_params())
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape,nshape", SHAPES, ids=[str(s[0]) for s in SHAPES])
@pytest.mark.parametrize("affine", AFFINE)
def test_forward_backward(be, rms, dtype, shape, nshape, affine):
    backend, device = be
    require_backend(backend, device)
    if not supports_dtype(backend, dtype):
        x = randn(*shape, dtype=dtype, device=device)
        with pytest.raises(RuntimeError, match=f"backend '{backend}' supports dtypes"):
            fusednorm.layer_norm(x, nshape, backend=backend)
        return
    _case(backend, device, dtype, shape, nshape, affine, rms, seed=zlib.crc32(repr((shape, affine, rms)).encode()) % 9973)


@pytest.mark.parametrize("be", backend_params())
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_mixed_dtypes(be, rms):
    """bf16 activations with fp32 weight (the autocast norm): out bf16, weight grads fp32."""
    backend, device = be
    require_backend(backend, device)
    _case(backend, device, torch.bfloat16, (9, 48), (48,), "wb", rms, seed=5,
          wdtype=torch.float32)


@pytest.mark.parametrize("be", backend_params())
@pytest.mark.parametrize("layout", ["strided_last", "row_slice", "transposed"])
def test_non_contiguous(be, layout):
    backend, device = be
    require_backend(backend, device)
    base = randn(12, 80, seed=7, device=device)
    x = {"strided_last": base[:, ::2], "row_slice": base[::3, 5:45],
         "transposed": base[:40, :12].t()}[layout]
    n = x.shape[-1]
    w, b = randn(n, seed=8, device=device), randn(n, seed=9, device=device)
    out = fusednorm.layer_norm(x, (n,), w, b, backend=backend)
    ref = F.layer_norm(x.double().cpu(), (n,), w.double().cpu(), b.double().cpu())
    torch.testing.assert_close(out.cpu().double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("be", backend_params())
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("prenorm", [False, True])
def test_residual(be, rms, prenorm):
    """norm(x + residual); prenorm also returns the sum, and gradients flow into both."""
    backend, device = be
    require_backend(backend, device)
    shape, n = (6, 33), 33
    x = randn(*shape, seed=11, device=device, requires_grad=True)
    r = randn(*shape, seed=12, device=device, requires_grad=True)
    w = randn(n, seed=13, device=device, requires_grad=True)
    fn = fusednorm.rms_norm if rms else fusednorm.layer_norm
    if backend == "native":  # torch has no kernel with a residual: the extra is fusednorm's
        with pytest.raises(RuntimeError, match="'native' runs torch's own kernels, which have "
                                               "no residual; use backend='reference'"):
            fn(x, (n,), w, residual=r, prenorm=prenorm, backend=backend)
        return
    res = fn(x, (n,), w, residual=r, prenorm=prenorm, backend=backend)
    out, s = res if prenorm else (res, None)
    xd, rd, wd = (t.detach().double().cpu().requires_grad_() for t in (x, r, w))
    ref_s = xd + rd
    ref = F.rms_norm(ref_s, (n,), wd, 1e-5 if not rms else None) if rms else \
        F.layer_norm(ref_s, (n,), wd)
    if rms:
        ref = F.rms_norm(ref_s, (n,), wd, torch.finfo(torch.float32).eps)
    torch.testing.assert_close(out.cpu().double(), ref, atol=2e-5, rtol=1e-5)
    g_out = randn(*shape, seed=14)
    g_s = randn(*shape, seed=15) if prenorm else None
    loss = (out * g_out.to(device)).sum() + ((s * g_s.to(device)).sum() if prenorm else 0)
    ref_loss = (ref * g_out.double()).sum() + ((ref_s * g_s.double()).sum() if prenorm else 0)
    got = torch.autograd.grad(loss, (x, r, w))
    want = torch.autograd.grad(ref_loss, (xd, rd, wd))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu().double(), b, atol=5e-5, rtol=1e-4)
    if prenorm:
        torch.testing.assert_close(s.cpu().double(), ref_s, atol=1e-6, rtol=1e-6)


def test_prenorm_without_residual_returns_input():
    x = randn(3, 8)
    out, s = fusednorm.layer_norm(x, (8,), prenorm=True, backend="reference")
    assert s is x
    torch.testing.assert_close(out, F.layer_norm(x, (8,)))


@pytest.mark.parametrize("be", backend_params())
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_offset_data(be, rms):
    """mean 1e4, std 1 in fp32.  The fp32 mean alone is off by up to half an ulp of 1e4
    (~5e-4), so no fp32 kernel beats ~1e-3 here (torch's own error is 1.1e-3); what the
    test rules out is E[x^2] - E[x]^2, whose error here is O(1)."""
    backend, device = be
    require_backend(backend, device)
    x = (torch.randn(8, 512, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
         + 1e4).float()
    fn, tfn = (fusednorm.rms_norm, F.rms_norm) if rms else (fusednorm.layer_norm, F.layer_norm)
    out = fn(x.to(device), (512,), eps=1e-5, backend=backend).cpu()
    ref = tfn(x.double(), (512,), eps=1e-5)
    assert_accurate(out, ref, tfn(x, (512,), eps=1e-5), torch.float32, "offset")
    assert (out.double() - ref).abs().max() < 3e-3


@pytest.mark.parametrize("be", backend_params())
def test_empty_and_nan(be):
    backend, device = be
    require_backend(backend, device)
    x = torch.empty(0, 16, device=device, requires_grad=True)
    w = torch.ones(16, device=device, requires_grad=True)
    out = fusednorm.layer_norm(x, (16,), w, backend=backend)
    assert out.shape == (0, 16)
    out.sum().backward()
    assert torch.equal(w.grad.cpu(), torch.zeros(16))
    y = randn(2, 16, device=device)
    y[0, 3] = float("nan")
    out = fusednorm.layer_norm(y, (16,), backend=backend).cpu()
    assert torch.isnan(out[0]).all() and not torch.isnan(out[1]).any()


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_gradcheck(rms):
    x = randn(3, 5, dtype=torch.float64, seed=1, requires_grad=True)
    w = randn(5, dtype=torch.float64, seed=2, requires_grad=True)
    b = randn(5, dtype=torch.float64, seed=3, requires_grad=True)
    r = randn(3, 5, dtype=torch.float64, seed=4, requires_grad=True)
    if rms:
        torch.autograd.gradcheck(lambda x, w: fusednorm.rms_norm(x, (5,), w, 1e-5,
                                                                  backend="reference"), (x, w))
        torch.autograd.gradcheck(lambda x, r, w: fusednorm.rms_norm(
            x, (5,), w, 1e-5, residual=r, prenorm=True, backend="reference"), (x, r, w))
    else:
        torch.autograd.gradcheck(lambda x, w, b: fusednorm.layer_norm(x, (5,), w, b,
                                                                       backend="reference"), (x, w, b))
        torch.autograd.gradcheck(lambda x, r, w, b: fusednorm.layer_norm(
            x, (5,), w, b, residual=r, prenorm=True, backend="reference"), (x, r, w, b))


def test_rms_default_eps_is_torchs():
    """eps=None is torch's default: finfo of the compute dtype (float32 for fp16/bf16),
    visible on rows of tiny values, where finfo(fp16).eps would give a very different answer."""
    x = randn(4, 8, dtype=torch.float16, seed=21) * 1e-3
    ours = fusednorm.rms_norm(x, (8,), backend="reference")
    ref = F.rms_norm(x.double(), (8,), eps=torch.finfo(torch.float32).eps)
    assert_accurate(ours, ref, F.rms_norm(x, (8,)), torch.float16, "eps=None")
    wrong = F.rms_norm(x.double(), (8,), eps=torch.finfo(torch.float16).eps)
    assert (ours.double() - wrong).abs().max() > 0.1


@pytest.mark.parametrize("be", backend_params())
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_strided_and_expanded_parameters(be, rms):
    """Weights that are views (w[::2], an expanded scalar) are read as what they are, and
    their gradients reach the viewed tensor (found by review: Triton read them as dense)."""
    backend, device = be
    require_backend(backend, device)
    x = randn(3, 8, seed=31, device=device)
    wa = randn(16, seed=32, device=device, requires_grad=True)
    ba = randn(16, seed=33, device=device, requires_grad=True)
    ws = torch.tensor([2.0], device=device, requires_grad=True)
    fn = fusednorm.rms_norm if rms else fusednorm.layer_norm
    tfn = F.rms_norm if rms else F.layer_norm
    for w, b in ((wa[::2], ba[1::2]), (ws.expand(8), None)):
        kw = {} if rms else {"bias": b}
        out = fn(x, (8,), w, eps=1e-5, backend=backend, **kw)
        ref = tfn(x.cpu().double(), (8,), w.detach().cpu().double(), eps=1e-5,
                  **({} if rms else {"bias": None if b is None else b.detach().cpu().double()}))
        torch.testing.assert_close(out.cpu().double(), ref, atol=2e-5, rtol=1e-5)
    (fn(x, (8,), wa[::2], eps=1e-5, backend=backend) * x).sum().backward()
    wd = wa.detach().cpu().double().requires_grad_()
    (tfn(x.cpu().double(), (8,), wd[::2], eps=1e-5) * x.cpu().double()).sum().backward()
    torch.testing.assert_close(wa.grad.cpu().double(), wd.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("be", backend_params())
def test_zero_sized_normalized_dim_and_mixed_param_dtypes(be):
    backend, device = be
    require_backend(backend, device)
    assert fusednorm.layer_norm(torch.randn(4, 0, device=device), (0,),
                                backend=backend).shape == (4, 0)
    assert fusednorm.rms_norm(torch.randn(2, 3, 0, device=device), (3, 0),
                              backend=backend).shape == (2, 3, 0)
    # fp32 activations with an fp16 weight (torch's rms_norm takes it): fp32 out, fp16 grad
    x = randn(5, 16, seed=41, device=device)
    w = randn(16, seed=42, device=device).half().requires_grad_()
    out = fusednorm.rms_norm(x, (16,), w, eps=1e-6, backend=backend)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert w.grad.dtype == torch.float16
    ref = F.rms_norm(x.cpu().double(), (16,), w.detach().cpu().double(), eps=1e-6)
    torch.testing.assert_close(out.detach().cpu().double(), ref, atol=1e-5, rtol=1e-5)
