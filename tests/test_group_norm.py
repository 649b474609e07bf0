"""group_norm and instance_norm on every backend against torch in float64."""
import zlib

import pytest
import torch
import torch.nn.functional as F

import fusednorm
from _util import (ALL_DTYPES, assert_accurate, backend_params, randn, require_backend,
                   supports_dtype)

GN_CASES = [((2, 6, 5, 3), 3), ((1, 4, 1, 1), 2), ((3, 6, 5), 3), ((2, 8, 37), 1),
            ((2, 4, 3, 2, 5), 4), ((1, 1, 7), 1)]


def _seed(*key):
    return zlib.crc32(repr(key).encode()) % 9973


def _leaf(t, device=None, dtype=None, fmt=None):
    if t is None:
        return None
    t = t.detach().to(device=device or t.device, dtype=dtype or t.dtype)
    if fmt is not None:
        t = t.contiguous(memory_format=fmt)
    return t.requires_grad_(True)


def _grads(out, leaves, dy):
    leaves = [l for l in leaves if l is not None]
    return torch.autograd.grad(out, leaves, dy)


def _cl(dim):
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(dim)


def _check_norm(ours_fn, torch_fn, backend, device, dtype, shape, affine, channels_last, seed,
                wdtype=None, keeps_layout=True):
    """ours vs torch against float64, forward and backward.  ``keeps_layout``: the output
    has the input's memory format (False where torch's own op returns a contiguous tensor
    and the backend is torch's: InstanceNorm on "native")."""
    wdtype = wdtype or dtype
    c = shape[1]
    x = randn(*shape, dtype=dtype, seed=seed)
    dy = randn(*shape, dtype=dtype, seed=seed + 1)
    w = randn(c, dtype=wdtype, seed=seed + 2) if affine else None
    b = randn(c, dtype=wdtype, seed=seed + 3) if affine else None
    fmt = _cl(len(shape)) if channels_last else None
    xo, wo, bo = _leaf(x, device, fmt=fmt), _leaf(w, device), _leaf(b, device)
    o = ours_fn(xo, wo, bo)
    if fmt is not None:
        assert o.is_contiguous(memory_format=fmt) == keeps_layout, \
            "output lost the channels_last layout" if keeps_layout else "not torch's layout"
    og = _grads(o, [xo, wo, bo], dy.to(device).contiguous(memory_format=fmt or
                                                          torch.contiguous_format))
    xr, wr, br = _leaf(x, "cpu", torch.float64), _leaf(w, "cpu", torch.float64), \
        _leaf(b, "cpu", torch.float64)
    r = torch_fn(xr, wr, br)
    rg = _grads(r, [xr, wr, br], dy.double())
    xt, wt, bt = _leaf(x, "cpu"), _leaf(w, "cpu", dtype), _leaf(b, "cpu", dtype)
    t = torch_fn(xt, wt, bt)
    tg = _grads(t, [xt, wt, bt], dy)
    assert_accurate(o.detach().cpu(), r, t, dtype, "out")
    for name, a, ref, th in zip(["dx", "dweight", "dbias"], og, rg, tg):
        assert a.dtype == (dtype if name == "dx" else wdtype), name
        assert_accurate(a.cpu().to(th.dtype), ref, th, dtype, name)


def _native_silu(backend, act, shape, groups, dtype, device):
    """The fused SiLU is fusednorm's extra: "native" (torch's kernels) says so and refuses."""
    if backend != "native" or act is None:
        return False
    with pytest.raises(RuntimeError, match="'native' runs torch's own kernels, which have no "
                                           "activation='silu'; use backend='reference'"):
        fusednorm.group_norm(randn(*shape, dtype=dtype, device=device), groups,
                             activation=act, backend=backend)
    return True


@pytest.mark.parametrize("be", backend_params())
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape,groups", GN_CASES, ids=[str(c[0]) for c in GN_CASES])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("act", [None, "silu"])
def test_group_norm(be, dtype, shape, groups, affine, act):
    backend, device = be
    require_backend(backend, device)
    if not supports_dtype(backend, dtype):
        with pytest.raises(RuntimeError, match=f"backend '{backend}' supports dtypes"):
            fusednorm.group_norm(randn(*shape, dtype=dtype, device=device), groups,
                                 backend=backend)
        return

    def torch_fn(x, w, b):
        y = F.group_norm(x, groups, w, b, 1e-5)
        return F.silu(y) if act else y

    if _native_silu(backend, act, shape, groups, dtype, device):
        return
    _check_norm(lambda x, w, b: fusednorm.group_norm(x, groups, w, b, 1e-5, activation=act,
                                                     backend=backend),
                torch_fn, backend, device, dtype, shape, affine, False,
                _seed(shape, affine, act))


@pytest.mark.parametrize("be", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,groups", [((2, 6, 5, 3), 3), ((2, 4, 3, 2, 5), 2),
                                          ((1, 8, 1, 1), 4)])
@pytest.mark.parametrize("act", [None, "silu"])
def test_group_norm_channels_last(be, dtype, shape, groups, act):
    backend, device = be
    require_backend(backend, device)

    def torch_fn(x, w, b):
        y = F.group_norm(x, groups, w, b, 1e-5)
        return F.silu(y) if act else y

    if _native_silu(backend, act, shape, groups, dtype, device):
        return
    _check_norm(lambda x, w, b: fusednorm.group_norm(x, groups, w, b, activation=act,
                                                     backend=backend),
                torch_fn, backend, device, dtype, shape, True, True, _seed(shape, act, "cl"))


@pytest.mark.parametrize("be", backend_params())
def test_group_norm_mixed_and_strided(be):
    backend, device = be
    require_backend(backend, device)
    # bf16 activations with fp32 affine parameters
    _check_norm(lambda x, w, b: fusednorm.group_norm(x, 2, w, b, backend=backend),
                lambda x, w, b: F.group_norm(x, 2, w, b), backend, device, torch.bfloat16,
                (2, 4, 6, 5), True, False, 17, wdtype=torch.float32)
    # a non-contiguous view that is neither NCHW nor channels_last is copied once
    base = randn(2, 8, 6, 10, device=device, seed=18)
    x = base[:, ::2, :, 1:8]
    out = fusednorm.group_norm(x, 2, backend=backend)
    torch.testing.assert_close(out.cpu().double(), F.group_norm(x.cpu().double(), 2),
                               atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("be", backend_params())
def test_group_norm_empty_offset_nan(be):
    backend, device = be
    require_backend(backend, device)
    x = torch.empty(0, 6, 4, device=device, requires_grad=True)
    w = torch.ones(6, device=device, requires_grad=True)
    out = fusednorm.group_norm(x, 3, w, backend=backend)
    assert out.shape == (0, 6, 4)
    out.sum().backward()
    assert torch.equal(w.grad.cpu(), torch.zeros(6))
    # mean 1e4, std 1 in fp32; 16 channels per group of 32 x 32 (many partials merged)
    xo = (torch.randn(2, 32, 32, 32, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(2)) + 1e4).float()
    ref = F.group_norm(xo.double(), 2)
    for fmt in (torch.contiguous_format, torch.channels_last):
        out = fusednorm.group_norm(xo.to(device).contiguous(memory_format=fmt), 2,
                                   backend=backend).cpu()
        # torch's own error in the same layout: its channels_last CPU kernel is the one
        # "native" runs (and is 16x less accurate here than its NCHW kernel)
        theirs = F.group_norm(xo.contiguous(memory_format=fmt) if backend == "native" else xo,
                              2)
        assert_accurate(out, ref, theirs, torch.float32, f"offset {fmt}")
    xn = randn(2, 4, 5, device=device, seed=3)
    xn[1, 0, 2] = float("nan")
    out = fusednorm.group_norm(xn, 2, backend=backend).cpu()
    assert torch.isnan(out[1, :2]).all() and not torch.isnan(out[0]).any() \
        and not torch.isnan(out[1, 2:]).any()


# ---------------------------------------------------------------------------- instance norm
@pytest.mark.parametrize("be", backend_params())
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (4, 16, 33), (1, 2, 3, 4, 2)], ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_instance_norm(be, dtype, shape, affine):
    backend, device = be
    require_backend(backend, device)
    if not supports_dtype(backend, dtype):
        with pytest.raises(RuntimeError, match=f"backend '{backend}' supports dtypes"):
            fusednorm.instance_norm(randn(*shape, dtype=dtype, device=device), backend=backend)
        return
    _check_norm(lambda x, w, b: fusednorm.instance_norm(x, weight=w, bias=b, backend=backend),
                lambda x, w, b: F.instance_norm(x, weight=w, bias=b), backend, device, dtype,
                shape, affine, False, _seed(shape, affine))


@pytest.mark.parametrize("be", backend_params())
def test_instance_norm_channels_last_and_running(be):
    backend, device = be
    require_backend(backend, device)
    _check_norm(lambda x, w, b: fusednorm.instance_norm(x, weight=w, bias=b, backend=backend),
                lambda x, w, b: F.instance_norm(x, weight=w, bias=b), backend, device,
                torch.float32, (2, 3, 7, 5), True, True, 23, keeps_layout=backend != "native")
    # running statistics: batch-averaged instance mean and unbiased variance
    rm, rv = randn(3, seed=1).abs(), randn(3, seed=2).abs() + 0.5
    rm_t, rv_t = rm.clone(), rv.clone()
    rm_o, rv_o = rm.clone().to(device), rv.clone().to(device)
    for step in range(3):
        x = randn(4, 3, 6, 5, seed=30 + step) * 2 + 1
        fusednorm.instance_norm(x.to(device), rm_o, rv_o, momentum=0.3, backend=backend)
        F.instance_norm(x, rm_t, rv_t, momentum=0.3)
    torch.testing.assert_close(rm_o.cpu(), rm_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rv_o.cpu(), rv_t, atol=1e-5, rtol=1e-5)
    # use_input_stats=False normalizes with the running statistics
    x = randn(2, 3, 4, 4, seed=40)
    out = fusednorm.instance_norm(x.to(device), rm_o, rv_o, use_input_stats=False,
                                  backend=backend)
    torch.testing.assert_close(out.cpu(), F.instance_norm(x, rm_t, rv_t, use_input_stats=False),
                               atol=1e-5, rtol=1e-5)


def test_gradcheck_group_and_instance():
    x = randn(2, 4, 3, dtype=torch.float64, seed=1, requires_grad=True)
    w = randn(4, dtype=torch.float64, seed=2, requires_grad=True)
    b = randn(4, dtype=torch.float64, seed=3, requires_grad=True)
    for act in (None, "silu"):
        torch.autograd.gradcheck(lambda x, w, b: fusednorm.group_norm(
            x, 2, w, b, activation=act, backend="reference"), (x, w, b))
    torch.autograd.gradcheck(lambda x, w, b: fusednorm.instance_norm(
        x, weight=w, bias=b, backend="reference"), (x, w, b))
