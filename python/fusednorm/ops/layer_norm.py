"""fusednorm::layer_norm_fwd / layer_norm_bwd (LayerNorm and RMSNorm on an (M, N) view)."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._common import backend_module, empty_marker, opt, or_empty, stat_dtype


@torch.library.custom_op("fusednorm::layer_norm_fwd", mutates_args=())
def layer_norm_fwd(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor],
                   bias: Optional[Tensor], eps: float, rms: bool, backend: str
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (out, xsum or empty, mean or empty, rstd)."""
    m = x.shape[0]
    sd = stat_dtype(x)
    if x.numel() == 0:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        xsum = out.clone() if residual is not None else empty_marker(x)
        mean = empty_marker(x, sd) if rms else x.new_empty((m,), dtype=sd)
        return out, xsum, mean, x.new_empty((m,), dtype=sd)
    out, xsum, mean, rstd = backend_module(backend).layer_norm_fwd(
        x, residual, weight, bias, eps, rms)
    return out, or_empty(xsum, x), or_empty(mean, x, sd), rstd


@layer_norm_fwd.register_fake
def _(x, residual, weight, bias, eps, rms, backend):
    m, n = x.shape
    sd = stat_dtype(x)
    out = x.new_empty((m, n))
    xsum = x.new_empty((m, n)) if residual is not None else x.new_empty((0,))
    mean = x.new_empty((0,), dtype=sd) if rms else x.new_empty((m,), dtype=sd)
    return out, xsum, mean, x.new_empty((m,), dtype=sd)


@torch.library.custom_op("fusednorm::layer_norm_bwd", mutates_args=())
def layer_norm_bwd(dy: Tensor, dxsum: Optional[Tensor], x: Tensor, weight: Optional[Tensor],
                   bias: Optional[Tensor], mean: Optional[Tensor], rstd: Tensor, rms: bool,
                   backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (dx, dweight or empty, dbias or empty)."""
    if x.numel() == 0:
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        dw = torch.zeros_like(weight) if weight is not None else empty_marker(x)
        db = torch.zeros_like(bias) if bias is not None else empty_marker(x)
        return dx, dw, db
    dx, dw, db = backend_module(backend).layer_norm_bwd(
        dy.contiguous(), None if dxsum is None else dxsum.contiguous(), x, weight, bias,
        opt(mean), rstd, rms)
    return dx, or_empty(dw, x), or_empty(db, x)


@layer_norm_bwd.register_fake
def _(dy, dxsum, x, weight, bias, mean, rstd, rms, backend):
    dw = torch.empty_like(weight) if weight is not None else x.new_empty((0,))
    db = torch.empty_like(bias) if bias is not None else x.new_empty((0,))
    return x.new_empty(x.shape), dw, db


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps, rms, backend = inputs
    out, xsum, mean, rstd = output
    ctx.has_residual = residual is not None
    ctx.rms, ctx.backend = rms, backend
    ctx.save_for_backward(xsum if residual is not None else x, weight, bias, mean, rstd)
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dout, dxsum, _dmean, _drstd):
    xs, weight, bias, mean, rstd = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(xs)
    if not ctx.has_residual:
        dxsum = None
    dx, dw, db = layer_norm_bwd(dout, dxsum, xs, weight, bias, None if ctx.rms else mean,
                                rstd, ctx.rms, ctx.backend)
    return (dx, dx if ctx.has_residual else None, opt(dw) if weight is not None else None,
            opt(db) if bias is not None else None, None, None, None)


layer_norm_fwd.register_autograd(_backward, setup_context=_setup_context)
