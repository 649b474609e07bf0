"""Drop-in modules, convert(), state_dict, opcheck and torch.compile."""
import copy

import pytest
import torch
import torch.nn as tnn

import fusednorm
import fusednorm.nn as fnn
from _util import backend_params, randn, require_backend

PAIRS = [
    (lambda: tnn.LayerNorm(12), fnn.LayerNorm, (3, 5, 12)),
    (lambda: tnn.LayerNorm((4, 6), bias=False), fnn.LayerNorm, (3, 4, 6)),
    (lambda: tnn.RMSNorm(12), fnn.RMSNorm, (7, 12)),
    (lambda: tnn.GroupNorm(2, 6), fnn.GroupNorm, (2, 6, 5, 4)),
    (lambda: tnn.BatchNorm1d(6), fnn.BatchNorm1d, (9, 6)),
    (lambda: tnn.BatchNorm2d(6), fnn.BatchNorm2d, (3, 6, 4, 5)),
    (lambda: tnn.BatchNorm3d(6), fnn.BatchNorm3d, (2, 6, 3, 2, 4)),
    (lambda: tnn.InstanceNorm1d(6, affine=True), fnn.InstanceNorm1d, (2, 6, 9)),
    (lambda: tnn.InstanceNorm2d(6, track_running_stats=True), fnn.InstanceNorm2d, (2, 6, 4, 5)),
    (lambda: tnn.InstanceNorm3d(6), fnn.InstanceNorm3d, (2, 6, 3, 2, 4)),
]


def _randomize(m):
    with torch.no_grad():
        for i, p in enumerate(m.parameters()):
            p.copy_(randn(*p.shape, seed=100 + i))
        for name, b in m.named_buffers():
            if b.is_floating_point():
                b.copy_(randn(*b.shape, seed=200).abs() + 0.5)
    return m


@pytest.mark.parametrize("make,cls,shape", PAIRS, ids=[p[1].__name__ + str(i)
                                                       for i, p in enumerate(PAIRS)])
def test_module_matches_torch_and_state_dict(make, cls, shape):
    ref = _randomize(make())
    ours = cls.__new__(cls)
    ours.__dict__ = copy.deepcopy(ref).__dict__  # same constructor arguments as ref
    # torch's class underneath, and the repr says the module is fusednorm's
    assert isinstance(ours, type(ref)) and repr(ours) == "fusednorm." + repr(ref)
    # state_dict round trip both ways
    fresh = copy.deepcopy(ref)
    fresh = fusednorm.convert(fresh)
    assert type(fresh) is cls
    assert fresh.state_dict().keys() == ref.state_dict().keys()
    back = make()
    back.load_state_dict(fresh.state_dict())
    fresh.load_state_dict(ref.state_dict())
    for mode in ("train", "eval"):
        for m in (ref, fresh, back):
            getattr(m, mode)()
        x = randn(*shape, seed=7)
        xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
        r, f = ref(xr), fresh(xf)
        torch.testing.assert_close(f, r, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back(x), r, atol=1e-5, rtol=1e-5)
        g = randn(*shape, seed=8)
        r.backward(g)
        f.backward(g)
        torch.testing.assert_close(xf.grad, xr.grad, atol=1e-5, rtol=1e-5)
    for (n1, b1), (n2, b2) in zip(ref.named_buffers(), fresh.named_buffers()):
        torch.testing.assert_close(b2, b1, atol=1e-6, rtol=1e-6, msg=n1)


def test_unbatched_instance_norm():
    ref = tnn.InstanceNorm1d(4, affine=True)
    ours = fusednorm.convert(copy.deepcopy(ref))
    x = randn(4, 9, seed=3)
    torch.testing.assert_close(ours(x), ref(x))


class SmallCNN(tnn.Module):
    def __init__(self):
        super().__init__()
        self.body = tnn.Sequential(
            tnn.Conv2d(3, 8, 3, padding=1), tnn.BatchNorm2d(8), tnn.ReLU(),
            tnn.Conv2d(8, 8, 3, padding=1), tnn.GroupNorm(4, 8), tnn.SiLU(),
            tnn.Conv2d(8, 6, 3, padding=1), tnn.InstanceNorm2d(6, affine=True), tnn.ReLU())
        self.head = tnn.Linear(6, 5)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class PreNormBlock(tnn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.ln = tnn.LayerNorm(d)
        self.attn = tnn.MultiheadAttention(d, 2, batch_first=True)
        self.rms = tnn.RMSNorm(d)
        self.mlp = tnn.Sequential(tnn.Linear(d, 32), tnn.GELU(), tnn.Linear(32, d))

    def forward(self, x):
        h = self.ln(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.rms(x))


def _compare_models(ref, ours, x, atol=1e-5):
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    r, o = ref(xr), ours(xo)
    torch.testing.assert_close(o, r, atol=atol, rtol=atol)
    r.square().sum().backward()
    o.square().sum().backward()
    torch.testing.assert_close(xo.grad, xr.grad, atol=atol, rtol=atol)
    for (name, p1), p2 in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, atol=atol, rtol=atol, msg=name)


@pytest.mark.parametrize("be", backend_params())
@pytest.mark.parametrize("model,shape", [(SmallCNN, (4, 3, 8, 8)), (PreNormBlock, (2, 5, 16))])
def test_convert_models(be, model, shape):
    backend, device = be
    require_backend(backend, device)
    torch.manual_seed(0)
    ref = model().to(device)
    ours = fusednorm.convert(copy.deepcopy(ref), backend=backend)
    swapped = [type(m).__name__ for m in ours.modules() if type(m) in set(fnn.SWAPS.values())]
    assert len(swapped) == 3 if model is SmallCNN else len(swapped) == 2
    assert fusednorm.convert(ours, backend=backend) is ours  # converting twice is harmless
    params_before = [id(p) for p in ours.parameters()]
    for mode in ("train", "eval"):
        ref.zero_grad()
        ours.zero_grad()
        getattr(ref, mode)()
        getattr(ours, mode)()
        assert ours.training == ref.training
        _compare_models(ref, ours, randn(*shape, seed=4, device=device), atol=2e-5)
    assert params_before == [id(p) for p in ours.parameters()]
    for (n, b1), b2 in zip(ref.named_buffers(), ours.buffers()):
        torch.testing.assert_close(b2, b1, atol=1e-5, rtol=1e-5, msg=n)


def test_convert_keeps_dtype_and_subclasses():
    class MyLN(tnn.LayerNorm):
        pass

    m = tnn.Sequential(tnn.BatchNorm1d(4).double(), MyLN(4))
    fusednorm.convert(m)
    assert type(m[0]) is fnn.BatchNorm1d and m[0].weight.dtype == torch.float64
    assert type(m[1]) is MyLN
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        fusednorm.convert("not a module")
    with pytest.raises(ValueError, match="backend='tpu'"):
        fusednorm.convert(m, backend="tpu")


# opcheck of every op on every backend: tests/test_compile.py::test_opcheck_every_op


@pytest.mark.parametrize("be", [p for p in backend_params()
                                if p.id not in ("reference-cuda", "native-cuda", "triton-interp")])
def test_compile_fullgraph_converted_models(be):
    """A converted CNN and transformer block compile with fullgraph=True (inductor, no graph
    breaks) and match eager, forward and backward: on CPU with the reference, on a GPU with
    each kernel backend.  (The Triton interpreter under compile is test_compile's aot_eager
    sweep; inductor's CPU codegen around it would add minutes and test nothing new.)"""
    backend, device = be
    require_backend(backend, device)
    torch._dynamo.reset()
    # TF32 convolutions (cuDNN's default) would differ between eager and compiled by ~1e-3
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        _compile_converted_models(backend, device)


def _compile_converted_models(backend, device):
    for model, shape in ((SmallCNN, (4, 3, 8, 8)), (PreNormBlock, (2, 5, 16))):
        torch.manual_seed(0)
        eager = fusednorm.convert(model().to(device), backend=backend)
        compiled_model = copy.deepcopy(eager)
        compiled = torch.compile(compiled_model, fullgraph=True)
        x = randn(*shape, seed=5, device=device)
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        e, c = eager(xe), compiled(xc)
        torch.testing.assert_close(c, e, atol=1e-5, rtol=1e-5)
        e.sum().backward()
        c.sum().backward()
        torch.testing.assert_close(xc.grad, xe.grad, atol=1e-5, rtol=1e-5)
        for p1, p2 in zip(eager.parameters(), compiled_model.parameters()):
            torch.testing.assert_close(p2.grad, p1.grad, atol=1e-5, rtol=1e-5)
        for b1, b2 in zip(eager.buffers(), compiled_model.buffers()):
            torch.testing.assert_close(b2, b1, atol=1e-6, rtol=1e-6)
