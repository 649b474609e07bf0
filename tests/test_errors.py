"""Every validation message, with torch's exception type, and the backend-selection errors.

Each case names the torch.nn.functional call that makes the same mistake (where torch has
one); torch must raise the exception type we raise, so code written against torch catches
ours (NotImplementedError is a RuntimeError, as in Python)."""
import math

import pytest
import torch
import torch.nn.functional as F

import fusednorm
from _util import backend_params, randn, require_backend

X = randn(2, 6, 4, seed=1)


def _w(*shape, **kw):
    return torch.ones(*shape, **kw)


# (call, exception, message pattern, the same mistake made with torch or None);
# tests/test_paths.py also runs each call under torch.compile
CASES = [
    (lambda: fusednorm.layer_norm(X, (5,)), RuntimeError,
     r"layer_norm: normalized_shape=\(5,\) does not match input of shape \(2, 6, 4\)",
     lambda: F.layer_norm(X, (5,))),
    (lambda: fusednorm.layer_norm(X, (2, 6, 4, 1)), RuntimeError,
     r"normalized_shape=.*expected", lambda: F.layer_norm(X, (2, 6, 4, 1))),
    (lambda: fusednorm.layer_norm(X, ()), RuntimeError,
     r"normalized_shape=\(\) is empty; expected at least one dim", lambda: F.layer_norm(X, ())),
    (lambda: fusednorm.layer_norm(X, "4"), TypeError, "normalized_shape='4'; expected an int",
     lambda: F.layer_norm(X, "4")),
    (lambda: fusednorm.layer_norm(X, 4, torch.ones(5)), RuntimeError,
     r"weight has shape \(5,\); expected \(4,\)", lambda: F.layer_norm(X, (4,), _w(5))),
    (lambda: fusednorm.layer_norm(X, 4, None, torch.ones(4, 1)), RuntimeError,
     r"bias has shape \(4, 1\); expected \(4,\)", lambda: F.layer_norm(X, (4,), None, _w(4, 1))),
    (lambda: fusednorm.layer_norm(X, 4, torch.ones(4, device="meta")), RuntimeError,
     "weight is on meta but input is on cpu", lambda: F.layer_norm(X, (4,), _w(4, device="meta"))),
    (lambda: fusednorm.layer_norm(X, 4, torch.ones(4, dtype=torch.int32)), RuntimeError,
     "weight has dtype torch.int32; expected a floating dtype",
     lambda: F.layer_norm(X, (4,), _w(4, dtype=torch.int32))),
    (lambda: fusednorm.layer_norm(X, 4, [1.0] * 4), TypeError,
     "weight must be a torch.Tensor or None, got list", lambda: F.layer_norm(X, (4,), [1.0] * 4)),
    (lambda: fusednorm.layer_norm(X.long(), 4), NotImplementedError,
     "input has dtype torch.int64; expected one of float32", lambda: F.layer_norm(X.long(), (4,))),
    (lambda: fusednorm.layer_norm(X.to(torch.complex64), 4), NotImplementedError,
     "input has dtype torch.complex64", lambda: F.layer_norm(X.to(torch.complex64), (4,))),
    (lambda: fusednorm.layer_norm([1.0, 2.0], 2), TypeError,
     "input must be a torch.Tensor, got list", lambda: F.layer_norm([1.0, 2.0], (2,))),
    (lambda: fusednorm.layer_norm(X, 4, eps="1e-5"), TypeError, "eps='1e-5'; expected a float",
     lambda: F.layer_norm(X, (4,), eps="1e-5")),
    (lambda: fusednorm.layer_norm(X, 4, eps=None), TypeError, "eps=None; expected a float",
     lambda: F.layer_norm(X, (4,), eps=None)),
    (lambda: fusednorm.layer_norm(X, 4, residual=randn(2, 6, 3)), RuntimeError,
     r"residual has shape \(2, 6, 3\); expected the input's shape \(2, 6, 4\)", None),
    (lambda: fusednorm.layer_norm(X, 4, residual=X.half()), RuntimeError,
     "residual has dtype torch.float16; expected the input's dtype torch.float32", None),
    (lambda: fusednorm.layer_norm(X, 4, prenorm=1), TypeError, "prenorm=1; expected a bool",
     None),
    (lambda: fusednorm.layer_norm(X, 4, residual=X, backend="native"), RuntimeError,
     "backend 'native' runs torch's own kernels, which have no residual; use "
     "backend='reference'", None),
    (lambda: fusednorm.rms_norm(X, (6,)), RuntimeError, r"rms_norm: normalized_shape=\(6,\)",
     lambda: F.rms_norm(X, (6,))),
    (lambda: fusednorm.rms_norm(X.long(), (4,)), NotImplementedError,
     "input has dtype torch.int64; expected one of float32, float16, bfloat16, float64, "
     "complex64, complex128", lambda: F.rms_norm(X.long(), (4,))),
    (lambda: fusednorm.group_norm(X, 4), RuntimeError, "num_groups=4 must divide channels=6",
     lambda: F.group_norm(X, 4)),
    (lambda: fusednorm.group_norm(X, 0), ZeroDivisionError,
     "num_groups=0; expected a positive int", lambda: F.group_norm(X, 0)),
    (lambda: fusednorm.group_norm(X, -2), RuntimeError, "num_groups=-2; expected a positive int",
     lambda: F.group_norm(X, -2)),
    (lambda: fusednorm.group_norm(X, 2.0), TypeError, "num_groups=2.0; expected an int",
     lambda: F.group_norm(X, 2.0)),
    (lambda: fusednorm.group_norm(randn(6), 2), RuntimeError,
     r"input has 1 dims \(shape \(6,\)\); expected at least 2", lambda: F.group_norm(randn(6), 2)),
    (lambda: fusednorm.group_norm(randn(1, 3), 3), ValueError,
     "expected more than 1 value per group when training", lambda: F.group_norm(randn(1, 3), 3)),
    (lambda: fusednorm.group_norm(X, 3, torch.ones(3)), RuntimeError,
     r"weight has shape \(3,\); expected \(6,\)", lambda: F.group_norm(X, 3, _w(3))),
    (lambda: fusednorm.group_norm(X.long(), 3), NotImplementedError,
     "input has dtype torch.int64", lambda: F.group_norm(X.long(), 3)),
    (lambda: fusednorm.group_norm(X, 3, activation="relu"), ValueError,
     "activation='relu'; expected None or 'silu'", None),
    (lambda: fusednorm.group_norm(X, 3, activation="silu", backend="native"), RuntimeError,
     "backend 'native' runs torch's own kernels, which have no activation='silu'", None),
    (lambda: fusednorm.batch_norm(X, None, None), RuntimeError,
     "running_mean must be defined in evaluation mode", lambda: F.batch_norm(X, None, None)),
    (lambda: fusednorm.batch_norm(X, torch.zeros(6), None), RuntimeError,
     "running_var must be defined in evaluation mode",
     lambda: F.batch_norm(X, torch.zeros(6), None)),
    (lambda: fusednorm.batch_norm(X, torch.zeros(6), None, training=True), ValueError,
     "running_mean and running_var must either both be None or neither be None",
     lambda: F.batch_norm(X, torch.zeros(6), None, training=True)),
    (lambda: fusednorm.batch_norm(X, torch.zeros(5), torch.ones(6)), RuntimeError,
     r"running_mean has shape \(5,\); expected \(6,\)",
     lambda: F.batch_norm(X, torch.zeros(5), torch.ones(6))),
    (lambda: fusednorm.batch_norm(X, None, None, torch.ones(5), training=True), RuntimeError,
     r"weight has shape \(5,\); expected \(6,\)",
     lambda: F.batch_norm(X, None, None, _w(5), training=True)),
    (lambda: fusednorm.batch_norm(randn(1, 6), None, None, training=True), ValueError,
     "expected more than 1 value per channel when training",
     lambda: F.batch_norm(randn(1, 6), None, None, training=True)),
    (lambda: fusednorm.batch_norm(randn(4), None, None, training=True), IndexError,
     r"input has 1 dims \(shape \(4,\)\): no channel dim",
     lambda: F.batch_norm(randn(4), None, None, training=True)),
    (lambda: fusednorm.batch_norm(randn(4), torch.zeros(4), torch.ones(4)), RuntimeError,
     "no channel dim", lambda: F.batch_norm(randn(4), torch.zeros(4), torch.ones(4))),
    (lambda: fusednorm.batch_norm(torch.tensor(1.0), None, None, training=True), IndexError,
     "input is 0-dimensional", lambda: F.batch_norm(torch.tensor(1.0), None, None, training=True)),
    (lambda: fusednorm.batch_norm(X, None, None, training=True, eps=0.0), ValueError,
     r"eps=0.0 in training; expected eps > 0",
     lambda: F.batch_norm(X, None, None, training=True, eps=0.0)),
    (lambda: fusednorm.batch_norm(X, torch.zeros(6), torch.ones(6), eps=-1e-5), ValueError,
     r"eps=-1e-05; expected eps >= 0",
     lambda: F.batch_norm(X, torch.zeros(6), torch.ones(6), eps=-1e-5)),
    (lambda: fusednorm.batch_norm(X, None, None, training="yes"), TypeError,
     "training='yes'; expected a bool", lambda: F.batch_norm(X, None, None, training="yes")),
    (lambda: fusednorm.batch_norm(X.long(), None, None, training=True), NotImplementedError,
     "input has dtype torch.int64", lambda: F.batch_norm(X.long(), None, None, training=True)),
    (lambda: fusednorm.instance_norm(randn(2, 6)), ValueError,
     "expected more than 1 spatial element", lambda: F.instance_norm(randn(2, 6))),
    (lambda: fusednorm.instance_norm(randn(2, 6, 1)), ValueError,
     "expected more than 1 spatial element", lambda: F.instance_norm(randn(2, 6, 1))),
    (lambda: fusednorm.instance_norm(X, use_input_stats=False), RuntimeError,
     "running_mean and running_var are required when use_input_stats=False",
     lambda: F.instance_norm(X, use_input_stats=False)),
    (lambda: fusednorm.instance_norm(X, weight=torch.ones(5)), RuntimeError,
     r"weight has shape \(5,\); expected \(6,\)", lambda: F.instance_norm(X, weight=_w(5))),
    (lambda: fusednorm.instance_norm(X, torch.zeros(6), None), ValueError,
     "running_mean and running_var must either both be None or neither be None",
     lambda: F.instance_norm(X, torch.zeros(6), None)),
    (lambda: fusednorm.instance_norm(X, use_input_stats=1), TypeError,
     "use_input_stats=1; expected a bool", lambda: F.instance_norm(X, use_input_stats=1)),
    (lambda: fusednorm.instance_norm(X.long()), NotImplementedError, "input has dtype torch.int64",
     lambda: F.instance_norm(X.long())),
    (lambda: fusednorm.layer_norm(X, 4, backend="tpu"), ValueError,
     r"backend='tpu'; expected None, 'auto' or one of", None),
    (lambda: fusednorm.layer_norm(X, 4, backend="torch"), ValueError,
     r"backend='torch' was split in two: 'native' \(torch's own kernels.*'reference'", None),
    (lambda: fusednorm.batch_norm(X, None, None, training=True, momentum=None), TypeError,
     "momentum=None; expected a float",
     lambda: F.batch_norm(X, None, None, training=True, momentum=None)),
    (lambda: fusednorm.batch_norm(X, None, None, training=True, momentum="0.1"), TypeError,
     "momentum='0.1'; expected a float",
     lambda: F.batch_norm(X, None, None, training=True, momentum="0.1")),
]


@pytest.mark.parametrize("call,exc,match,theirs", CASES)
def test_messages(call, exc, match, theirs):
    with pytest.raises(exc, match=match) as info:
        call()
    assert str(info.value).startswith("fusednorm."), info.value
    if theirs is not None:  # torch refuses the same mistake with an exception of our type
        with pytest.raises(Exception) as t:
            theirs()
        assert isinstance(info.value, type(t.value)), \
            f"we raise {type(info.value).__name__}, torch raises {type(t.value).__name__}"


# -------------------------------------------------------- what torch accepts, we compute
def _backends():
    return [p for p in backend_params()]


@pytest.mark.parametrize("be", _backends())
@pytest.mark.parametrize("eps", [-0.5, -1e-5, 0.0, math.inf, math.nan], ids=str)
def test_any_eps_computes_as_torch(be, eps):
    """Negative, zero, infinite and NaN eps: torch computes with them (rsqrt(var + eps) may
    be NaN), so every backend does, and gives what torch gives -- NaN where torch's is NaN."""
    backend, device = be
    require_backend(backend, device)
    x = randn(3, 4, 6, seed=2)
    x[1] = 0.25  # one constant row/plane: var 0, so var + eps <= 0 for eps <= 0
    w, b = randn(6, seed=3), randn(6, seed=4)
    cw, cb = randn(4, seed=5), randn(4, seed=6)
    calls = {
        "layer_norm": (lambda x, **k: fusednorm.layer_norm(x, (6,), w, b, eps, **k),
                       lambda x: F.layer_norm(x, (6,), w, b, eps)),
        "rms_norm": (lambda x, **k: fusednorm.rms_norm(x, (6,), w, eps, **k),
                     lambda x: F.rms_norm(x, (6,), w, eps)),
        "group_norm": (lambda x, **k: fusednorm.group_norm(x, 2, cw, cb, eps, **k),
                       lambda x: F.group_norm(x, 2, cw, cb, eps)),
        "instance_norm": (lambda x, **k: fusednorm.instance_norm(x, None, None, cw, cb, True,
                                                                 0.1, eps, **k),
                          lambda x: F.instance_norm(x, None, None, cw, cb, True, 0.1, eps)),
    }
    for name, (ours, theirs) in calls.items():
        xd = x.to(device).requires_grad_()
        xt = x.clone().requires_grad_()
        o, t = ours(xd, backend=backend), theirs(xt)
        dy = randn(*o.shape, seed=7)
        (gx,) = torch.autograd.grad(o, xd, dy.to(device))
        (gt,) = torch.autograd.grad(t, xt, dy)
        for what, a, r in (("out", o, t), ("dx", gx, gt)):
            a = a.detach().cpu()
            assert torch.equal(torch.isnan(a), torch.isnan(r)), (name, what, "NaN pattern")
            fin = ~torch.isnan(r)
            torch.testing.assert_close(a[fin], r[fin].detach(), atol=1e-4, rtol=1e-4,
                                       msg=f"{name} {what} eps={eps}")


@pytest.mark.parametrize("be", _backends())
def test_instance_norm_eps0_constant_plane(be):
    """InstanceNorm with eps=0 on a constant plane: torch's batch-norm kernels give rstd 0
    there (not inf), so the output is the bias and the input gradient 0; the running
    variance gets the plane's variance, 0.  GroupNorm gives NaN there, as torch's does."""
    backend, device = be
    require_backend(backend, device)
    for cl in (False, True):
        x = randn(2, 3, 5, 4, seed=8) * 3
        x[0, 1] = 0.1      # 0.1 is not exact in binary: a sum-then-divide mean misses it
        x[1, 2] = 1e4 + 0.3
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        w, b = randn(3, seed=9), randn(3, seed=10)
        rm, rv = torch.zeros(3), torch.ones(3)
        rm_o, rv_o = rm.clone().to(device), rv.clone().to(device)
        xo, wo, bo = (t.to(device).requires_grad_() for t in (x, w, b))
        xt, wt, bt = (t.clone().requires_grad_() for t in (x, w, b))
        o = fusednorm.instance_norm(xo, rm_o, rv_o, wo, bo, eps=0.0, backend=backend)
        t = F.instance_norm(xt, rm, rv, wt, bt, eps=0.0)
        assert not torch.isnan(o).any()
        torch.testing.assert_close(o.detach().cpu(), t.detach(), atol=1e-4, rtol=1e-4)
        assert torch.equal(o[0, 1].detach().cpu(), torch.full((5, 4), b[1].item()))
        dy = randn(2, 3, 5, 4, seed=11)
        go = torch.autograd.grad(o, (xo, wo, bo), dy.to(device))
        gt = torch.autograd.grad(t, (xt, wt, bt), dy)
        assert torch.equal(go[0][0, 1].cpu(), torch.zeros(5, 4))
        for a, r in zip(go, gt):
            torch.testing.assert_close(a.cpu(), r, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(rm_o.cpu(), rm, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rv_o.cpu(), rv, atol=1e-5, rtol=1e-5)
    if backend == "native" or backend == "reference":
        gn = fusednorm.group_norm(torch.ones(2, 4, 3), 2, eps=0.0, backend=backend)
        assert torch.isnan(gn).all() and torch.isnan(F.group_norm(torch.ones(2, 4, 3), 2,
                                                                   eps=0.0)).all()


@pytest.mark.parametrize("be", _backends())
def test_empty_one_dim_batch_norm(be):
    """An empty 1-D input comes back empty from batch_norm, as from torch (training and
    eval, with or without running statistics of size 0)."""
    backend, device = be
    require_backend(backend, device)
    for training in (True, False):
        for rs in ((torch.zeros(0), torch.ones(0)), (None, None)):
            if rs[0] is None and not training:
                continue
            x = torch.empty(0, device=device, requires_grad=True)
            rm, rv = (None if t is None else t.to(device) for t in rs)
            out = fusednorm.batch_norm(x, rm, rv, training=training, backend=backend)
            ref = F.batch_norm(torch.empty(0), *rs, training=training)
            assert out.shape == ref.shape == (0,) and out.dtype == ref.dtype
            out.sum().backward()
            assert x.grad.shape == (0,)


@pytest.mark.gpu  # also on CPU: says why cuda is unavailable
def test_unavailable_backend_says_why(monkeypatch):
    avail = fusednorm.available_backends()
    assert avail["reference"] is True and avail["native"] is True
    for name, why in avail.items():
        assert why is True or (isinstance(why, str) and why)
    if avail["cuda"] is not True:
        with pytest.raises(RuntimeError, match="backend 'cuda' is not available: "):
            fusednorm.layer_norm(X, 4, backend="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend 'cuda'") as info:
            fusednorm.layer_norm(X, 4, backend="cuda")
        assert "CUDA" in str(info.value) or "cuda" in str(info.value)


def test_env_default_is_read_per_call(monkeypatch):
    monkeypatch.setenv("FUSEDNORM_BACKEND", "nope")
    with pytest.raises(ValueError, match="backend='nope'"):
        fusednorm.layer_norm(X, 4)
    monkeypatch.setenv("FUSEDNORM_BACKEND", "torch")  # the retired name says what replaced it
    with pytest.raises(ValueError, match="backend='torch' was split in two"):
        fusednorm.layer_norm(X, 4)
    for name in ("reference", "native"):
        monkeypatch.setenv("FUSEDNORM_BACKEND", name)
        fusednorm.layer_norm(X, 4)
    monkeypatch.delenv("FUSEDNORM_BACKEND")
    fusednorm.layer_norm(X, 4)


def test_module_wrong_channels():
    m = fusednorm.convert(torch.nn.InstanceNorm1d(5, affine=True))
    with pytest.raises(ValueError, match="match num_features"):
        m(randn(2, 4, 7))


@pytest.mark.gpu  # also on CPU: the CPU part
def test_auto_backend_selection(monkeypatch):
    """auto: CPU tensors get torch's native kernels unless a fusednorm extra is asked for
    (then the reference); CUDA tensors the kernel backends, native for what they do not
    compute (float64)."""
    from fusednorm import _backend

    monkeypatch.delenv("FUSEDNORM_BACKEND", raising=False)
    for op in ("layer_norm", "group_norm", "batch_norm"):
        assert _backend.resolve("f", op, None, X) == "native"
        assert _backend.resolve("f", op, "auto", X) == "native"
        assert _backend.resolve("f", op, None, X.double()) == "native"
    assert _backend.resolve("f", "layer_norm", None, X, "residual") == "reference"
    assert _backend.resolve("f", "group_norm", None, X, "activation='silu'") == "reference"
    assert _backend.resolve("f", "batch_norm", None, X, "SyncBatchNorm statistics") == \
        "reference"
    assert _backend.resolve("f", "layer_norm", None, X.to(torch.complex64)) == "native"
    if torch.cuda.is_available():
        xg = X.cuda()
        want = "cuda" if (_backend._prebuilt_extension()
                          and fusednorm.available_backends()["cuda"] is True) else "triton"
        for op in ("layer_norm", "group_norm", "batch_norm"):
            assert _backend.resolve("f", op, None, xg) == want
            assert _backend.resolve("f", op, None, xg, "residual") == want
        # float64 is torch's kernels' (or the reference's, with an extra)
        assert _backend.resolve("f", "layer_norm", None, xg.double()) == "native"
        assert _backend.resolve("f", "layer_norm", None, xg.double(), "residual") == \
            "reference"


def test_auto_runs_native_on_cpu():
    """What auto runs on a CPU, seen from outside: torch's own aten ops (their autograd
    nodes), not fusednorm's Functions; with a residual, the reference's Function."""
    x = randn(3, 8, seed=1).requires_grad_()
    w = randn(8, seed=2).requires_grad_()
    assert type(fusednorm.layer_norm(x, (8,), w).grad_fn).__name__ == \
        "NativeLayerNormBackward0"
    assert type(fusednorm.layer_norm(x, (8,), w, residual=x).grad_fn).__name__ == \
        "LayerNormFnBackward"
    g = randn(2, 4, 3, seed=3).requires_grad_()
    assert type(fusednorm.group_norm(g, 2).grad_fn).__name__ == "NativeGroupNormBackward0"
    assert type(fusednorm.batch_norm(g, None, None, training=True).grad_fn).__name__ == \
        "NativeBatchNormBackward0"
    assert type(fusednorm.group_norm(g, 2, activation="silu").grad_fn).__name__ == \
        "GroupNormFnBackward"


def test_numpy_scalars_are_accepted_like_torch():
    """torch.nn modules built from a numpy-parsed config keep working after convert()."""
    import numpy as np

    x = randn(2, 4, 3, seed=5)
    for make in (lambda: torch.nn.LayerNorm(np.int64(3)), lambda: torch.nn.RMSNorm(np.int64(3)),
                 lambda: torch.nn.GroupNorm(np.int64(2), 4),
                 lambda: torch.nn.BatchNorm1d(4, eps=np.float32(1e-5)),
                 lambda: torch.nn.InstanceNorm1d(4, eps=np.float32(1e-5))):
        ref = make()
        ours = fusednorm.convert(make())
        torch.testing.assert_close(ours(x), ref(x))
    with pytest.raises(TypeError, match="normalized_shape=True"):
        fusednorm.layer_norm(x, True)
