"""batch_norm on every backend: training and eval, both layouts, running statistics."""
import zlib

import pytest
import torch
import torch.nn.functional as F

import fusednorm
from _util import (ALL_DTYPES, assert_accurate, backend_params, randn, require_backend,
                   supports_dtype)
from test_group_norm import _check_norm

BN_SHAPES = [(37, 10), (4, 6, 11), (3, 5, 7, 9), (2, 4, 3, 5, 6), (2, 1, 1, 3)]


def _seed(*key):
    return zlib.crc32(repr(key).encode()) % 9973


@pytest.mark.parametrize("be", backend_params())
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_batch_norm(be, dtype, shape, training, affine):
    backend, device = be
    require_backend(backend, device)
    c = shape[1]
    if not supports_dtype(backend, dtype):
        with pytest.raises(RuntimeError, match=f"backend '{backend}' supports dtypes"):
            fusednorm.batch_norm(randn(*shape, dtype=dtype, device=device), None, None,
                                 training=True, backend=backend)
        return
    rm = randn(c, seed=1) * 0.5
    rv = randn(c, seed=2).abs() + 0.5

    def ours(x, w, b):
        return fusednorm.batch_norm(x, rm.to(device) if not training else None,
                                    rv.to(device) if not training else None, w, b, training,
                                    backend=backend)

    def theirs(x, w, b):
        return F.batch_norm(x, rm.to(x.dtype) if not training else None,
                            rv.to(x.dtype) if not training else None, w, b, training)

    _check_norm(ours, theirs, backend, device, dtype, shape, affine, False,
                _seed(shape, training, affine))


@pytest.mark.parametrize("be", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 4, 3, 5, 6), (4, 3, 1, 1)], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_channels_last(be, dtype, shape, training):
    backend, device = be
    require_backend(backend, device)
    c = shape[1]
    rm, rv = randn(c, seed=3), randn(c, seed=4).abs() + 0.5
    _check_norm(lambda x, w, b: fusednorm.batch_norm(
                    x, None if training else rm.to(device), None if training else rv.to(device),
                    w, b, training, backend=backend),
                lambda x, w, b: F.batch_norm(x, None if training else rm.to(x.dtype),
                                             None if training else rv.to(x.dtype), w, b,
                                             training),
                backend, device, dtype, shape, True, True, _seed(shape, training, "cl"))


@pytest.mark.parametrize("be", backend_params())
def test_batch_norm_mixed_offset_empty(be):
    backend, device = be
    require_backend(backend, device)
    _check_norm(lambda x, w, b: fusednorm.batch_norm(x, None, None, w, b, True, backend=backend),
                lambda x, w, b: F.batch_norm(x, None, None, w, b, True), backend, device,
                torch.bfloat16, (6, 4, 5, 3), True, False, 5, wdtype=torch.float32)
    # mean 1e4, std 1 in fp32: the mean must stay within torch's error after many merges
    # (64 samples of partials per channel; channels_last merges chunks of rows instead)
    xo = (torch.randn(64, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
          + 1e4).float()
    for fmt in (torch.contiguous_format, torch.channels_last):
        out = fusednorm.batch_norm(xo.to(device).contiguous(memory_format=fmt), None, None,
                                   training=True, backend=backend).cpu()
        # torch's own error in the same layout for "native" (torch's channels_last CPU
        # kernel, which is what it runs, is 16x less accurate here than its NCHW one)
        theirs = F.batch_norm(xo.contiguous(memory_format=fmt) if backend == "native" else xo,
                              None, None, training=True)
        assert_accurate(out, F.batch_norm(xo.double(), None, None, training=True), theirs,
                        torch.float32, f"offset {fmt}")
    # an empty batch returns an empty output and leaves running statistics untouched
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    x = torch.empty(0, 3, 4, 4, device=device, requires_grad=True)
    out = fusednorm.batch_norm(x, rm, rv, training=True, backend=backend)
    assert out.shape == (0, 3, 4, 4)
    out.sum().backward()
    assert torch.equal(rm.cpu(), torch.zeros(3)) and torch.equal(rv.cpu(), torch.ones(3))


@pytest.mark.parametrize("be", backend_params())
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_running_stats_modules(be, momentum, channels_last):
    """Several training steps then eval: buffers and outputs equal torch's module."""
    backend, device = be
    require_backend(backend, device)
    ref = torch.nn.BatchNorm2d(5, momentum=momentum)
    ours = fusednorm.convert(torch.nn.BatchNorm2d(5, momentum=momentum), backend=backend)
    ours.load_state_dict(ref.state_dict())
    ours.to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for step in range(3):
        x = randn(4, 5, 3, 6, seed=50 + step) * (1 + step) + step
        o = ours(x.to(device).contiguous(memory_format=fmt))
        r = ref(x)
        torch.testing.assert_close(o.cpu(), r, atol=1e-5, rtol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name).cpu(), getattr(ref, name),
                                   atol=1e-6, rtol=1e-6)
    ours.eval()
    ref.eval()
    x = randn(2, 5, 3, 6, seed=60)
    torch.testing.assert_close(ours(x.to(device)).cpu(), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("be", backend_params())
def test_no_running_stats_module(be):
    backend, device = be
    require_backend(backend, device)
    ref = torch.nn.BatchNorm1d(4, track_running_stats=False)
    ours = fusednorm.convert(torch.nn.BatchNorm1d(4, track_running_stats=False),
                             backend=backend).to(device)
    for mode in ("train", "eval"):
        getattr(ref, mode)()
        getattr(ours, mode)()
        x = randn(7, 4, 3, seed=70)
        torch.testing.assert_close(ours(x.to(device)).cpu(), ref(x), atol=1e-5, rtol=1e-5)


def test_gradcheck_batch_norm():
    x = randn(4, 3, 2, dtype=torch.float64, seed=1, requires_grad=True)
    w = randn(3, dtype=torch.float64, seed=2, requires_grad=True)
    b = randn(3, dtype=torch.float64, seed=3, requires_grad=True)
    rm, rv = randn(3, dtype=torch.float64, seed=4), randn(3, dtype=torch.float64, seed=5).abs()
    torch.autograd.gradcheck(lambda x, w, b: fusednorm.batch_norm(
        x, None, None, w, b, True, backend="reference"), (x, w, b))
    torch.autograd.gradcheck(lambda x, w, b: fusednorm.batch_norm(
        x, rm, rv, w, b, False, backend="reference"), (x, w, b))


def test_half_running_stats_round_once_like_torch():
    """model.half(): fp16 buffers are updated in fp32 and rounded once, as torch does."""
    ref = torch.nn.BatchNorm2d(3).half()
    ours = fusednorm.convert(torch.nn.BatchNorm2d(3).half())
    for step in range(4):
        x = (randn(4, 3, 5, 5, seed=80 + step) * 3 + 1).half()
        torch.testing.assert_close(ours(x), ref(x), atol=2e-3, rtol=2e-3)  # 1-2 fp16 ulps
    assert torch.equal(ours.running_mean, ref.running_mean)
    assert torch.equal(ours.running_var, ref.running_var)
