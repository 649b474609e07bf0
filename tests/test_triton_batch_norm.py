"""Triton BatchNorm launchers against a float64 torch reference (training and eval).

Same tolerance rule and guard helpers as test_triton_group_norm.py (imported from there).
"""
import pytest
import torch
import torch.nn.functional as F

from fusednorm.kernels.batch_norm import batch_norm_bwd, batch_norm_fwd
from fusednorm.kernels.batch_norm_config import BatchNormConfig, chunk_and_split
from fusednorm.kernels import batch_norm as bn_mod
from test_triton_group_norm import (DTYPES, Guard, assert_close, compile_all_variants,
                                    poisoned_f32_empty, to_layout)

EPS = 1e-5


def bn_reference(x, w, b, rm, rv, training, dy):
    x = x.detach().requires_grad_()
    w = None if w is None else w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    y = F.batch_norm(x, rm, rv, w, b, training, 0.1, EPS)
    y.backward(dy)
    return (y.detach(), x.grad, None if w is None else w.grad, None if b is None else b.grad,
            rm, rv)


def check_bn(shape, dtype, device, channels_last=False, training=True, affine=True,
             offset=0.0, config=None):
    C = shape[1]
    x = to_layout((torch.randn(shape, dtype=torch.float64) + offset).to(dtype),
                  channels_last).to(device)
    w = (torch.randn(C, dtype=torch.float64) + 1).float().to(device) if affine else None
    b = torch.randn(C, dtype=torch.float64).float().to(device) if affine else None
    rm = (torch.randn(C, dtype=torch.float64) + offset).float().to(device)
    rv = (torch.rand(C, dtype=torch.float64) + 0.5).float().to(device)
    dy = to_layout(torch.randn(shape, dtype=torch.float64).to(dtype), channels_last).to(device)
    d64 = lambda t: None if t is None else t.double()  # noqa: E731
    ref = bn_reference(x.double(), d64(w), d64(b), d64(rm).clone(), d64(rv).clone(), training,
                       dy.double())
    rm0, rv0 = rm.clone(), rv.clone()
    # training updates the running statistics in place (momentum 0.1, as the references)
    out, mean, rstd, var = batch_norm_fwd(x, w, b, rm, rv, training, EPS, config=config)
    dx, dw, db = batch_norm_bwd(dy, x, w, mean, rstd, training, config=config)

    lp = bn_reference(x, w, b, rm0.clone(), rv0.clone(), training, dy)  # torch in x's dtype
    assert out.dtype == dtype and out.stride() == x.stride(), "out must keep x's layout/dtype"
    assert dx.stride() == x.stride()
    assert_close(out, ref[0], lp[0], "out")
    assert_close(dx, ref[1], lp[1], "dx")
    dims = [0] + list(range(2, x.dim()))
    if training:
        v64 = x.double().var(dims, unbiased=False)
        assert_close(mean, x.double().mean(dims), mean, "mean")
        assert_close(var, v64, var, "var")
        assert_close(rstd, torch.rsqrt(v64 + EPS), rstd, "rstd")
        # fp32 buffers: torch's own fp32 update is the low-precision baseline
        assert_close(rm, ref[4], lp[4], "running_mean")
        assert_close(rv, ref[5], lp[5], "running_var")
    else:
        assert var is None and torch.equal(mean, rm) and torch.equal(rm, rm0)
        assert torch.equal(rv, rv0)
        assert_close(rstd, torch.rsqrt(rv.double() + EPS), rstd, "rstd")
    # dbias is returned whether or not there is an affine; compare with sum(dy) in float64
    assert_close(db, dy.double().sum(dims), lp[3] if affine else db, "dbias")
    if affine:
        assert dw.dtype == torch.float32
        assert_close(dw, ref[2], lp[2], "dweight")
    else:
        assert dw is None


SHAPES = [(37, 10), (4, 6, 11), (3, 5, 7, 9), (2, 4, 3, 5, 6)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_norm_train_matches_float64(shape, dtype, device):
    torch.manual_seed(len(shape) * 7 + DTYPES.index(dtype))
    check_bn(shape, dtype, device, channels_last=False)
    if len(shape) >= 4:
        check_bn(shape, dtype, device, channels_last=True, affine=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(37, 10), (3, 5, 7, 9)], ids=str)
def test_batch_norm_eval_matches_float64(shape, dtype, device):
    torch.manual_seed(11)
    check_bn(shape, dtype, device, training=False, channels_last=len(shape) == 4)


SPLIT_CFG = BatchNormConfig(block_m=512, block_c=2, split=4)


def test_split_reduction_path(device):
    """M = 64*40 = 2560 in chunks of 1024: three chunks per channel merged by Chan's formula."""
    assert chunk_and_split(64 * 40, 512, 4) == (1024, 3)
    torch.manual_seed(12)
    check_bn((64, 5, 40), torch.float32, device, config=SPLIT_CFG)
    check_bn((64, 5, 40), torch.bfloat16, device, config=SPLIT_CFG)


@pytest.mark.parametrize("channels_last", [False, True])
def test_offset_data_fp32(channels_last, device):
    """mean 1e4, std 1: statistics and output match float64 to ~1e-4."""
    torch.manual_seed(13)
    x = to_layout((torch.randn(8, 6, 9, 11, dtype=torch.float64) + 1e4).float(),
                  channels_last).to(device)
    out, mean, rstd, var = batch_norm_fwd(x, None, None, None, None, True, EPS)
    ref = F.batch_norm(x.double(), None, None, None, None, True, 0.1, EPS)
    assert (out.double() - ref).abs().max().item() < 1e-4
    v64 = x.double().var([0, 2, 3], unbiased=False)
    assert ((var.double() - v64).abs() / v64).max().item() < 1e-4
    check_bn((8, 6, 9, 11), torch.float32, device, channels_last=channels_last, offset=1e4)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_guard_regions_and_full_write(training, channels_last, device, monkeypatch):
    torch.manual_seed(14)
    shape, C = (6, 5, 7, 9), 5
    g = Guard()
    x = g.place(to_layout(torch.randn(shape), channels_last).to(device))
    w = g.place(torch.randn(C, device=device))
    b = g.place(torch.randn(C, device=device))
    rm = g.place(torch.randn(C, device=device))
    rv = g.place(torch.rand(C, device=device) + 0.5)
    dy = g.place(to_layout(torch.randn(shape), channels_last).to(device))
    n_inputs = len(g.items)
    cfg = BatchNormConfig(block_m=128, block_c=8, split=2)
    with g.outputs(monkeypatch):
        monkeypatch.setattr(bn_mod, "f32_empty", poisoned_f32_empty)  # partials too
        out, mean, rstd, var = batch_norm_fwd(x, w, b, rm, rv, training, EPS, config=cfg)
        dx, dw, db = batch_norm_bwd(dy, x, w, mean, rstd, training, config=cfg)
    views = g.check()
    assert len(views) == n_inputs + 3, "out, dx and dweight should come from empty_like"
    for t in (out, dx, mean, rstd, dw, db) + ((var,) if training else ()):
        assert not torch.isnan(t).any(), "an output element was not written"


def test_weight_grads_bitwise_repeatable(device):
    torch.manual_seed(15)
    x = torch.randn(64, 5, 40, device=device)
    w = torch.randn(5, device=device)
    dy = torch.randn_like(x)
    _, mean, rstd, _ = batch_norm_fwd(x, w, w, None, None, True, EPS, config=SPLIT_CFG)
    r1 = batch_norm_bwd(dy, x, w, mean, rstd, True, config=SPLIT_CFG)
    r2 = batch_norm_bwd(dy, x, w, mean, rstd, True, config=SPLIT_CFG)
    assert torch.equal(r1[1], r2[1]) and torch.equal(r1[2], r2[2])


def test_errors(device):
    x = torch.randn(4, 6, 11, device=device)
    with pytest.raises(ValueError, match=r"config tile \(32, 32\)"):
        batch_norm_fwd(x, None, None, None, None, True, EPS, config=BatchNormConfig(32, 32))
    with pytest.raises(ValueError, match="N\\*spatial >= 1"):
        batch_norm_fwd(x[:0], None, None, None, None, True, EPS)


def test_compile_every_variant():
    """Every kernel variant the launchers can produce compiles for sm_80/sm_90 without spills."""
    from fusednorm.kernels import batch_norm
    n = sum(1 for _ in batch_norm.compile_variants())
    assert len(compile_all_variants("fusednorm.kernels.batch_norm", n)) == 5
