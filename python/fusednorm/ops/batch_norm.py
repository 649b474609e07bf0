"""fusednorm::batch_norm_fwd / batch_norm_bwd.

The forward op does not touch running statistics: it returns the batch mean, rstd and
biased variance, and the caller (``fusednorm.functional``) updates the running buffers with
device ops -- no host synchronization, and nothing mutable inside the opaque op.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._common import backend_module, empty_marker, laid_out_like, opt, or_empty, stat_dtype


@torch.library.custom_op("fusednorm::batch_norm_fwd", mutates_args=())
def batch_norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   running_mean: Optional[Tensor], running_var: Optional[Tensor],
                   training: bool, eps: float, backend: str
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (out with x's strides, mean (C,), rstd (C,), biased var (C,))."""
    c = x.shape[1]
    sd = stat_dtype(x)
    if x.numel() == 0:
        # Empty batch: nothing to normalize; the statistics are undefined (NaN) and the
        # caller leaves the running buffers alone.
        nan = x.new_full((c,), float("nan"), dtype=sd)
        return torch.empty_like(x), nan, nan.clone(), nan.clone()
    out, mean, rstd, var = backend_module(backend).batch_norm_fwd(
        x, weight, bias, running_mean, running_var, training, eps)
    # A custom op's outputs may not alias its inputs: eval-mode statistics handed back by a
    # backend as the running buffers themselves are copied.
    inputs = {t.data_ptr() for t in (running_mean, running_var) if t is not None}
    mean, var = [t.clone() if t.data_ptr() in inputs else t for t in (mean, var)]
    return out, mean, rstd, var


@batch_norm_fwd.register_fake
def _(x, weight, bias, running_mean, running_var, training, eps, backend):
    stats = x.new_empty((x.shape[1],), dtype=stat_dtype(x))
    return torch.empty_like(x), stats, torch.empty_like(stats), torch.empty_like(stats)


@torch.library.custom_op("fusednorm::batch_norm_bwd", mutates_args=())
def batch_norm_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor,
                   rstd: Tensor, training: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (dx, dweight or empty, dbias)."""
    if x.numel() == 0:
        dw = torch.zeros_like(weight) if weight is not None else empty_marker(x)
        db = x.new_zeros((x.shape[1],), dtype=weight.dtype if weight is not None else x.dtype)
        return torch.empty_like(x), dw, db
    dy = laid_out_like(dy, x)
    dx, dw, db = backend_module(backend).batch_norm_bwd(dy, x, weight, mean, rstd, training)
    return dx, or_empty(dw, x), db


@batch_norm_bwd.register_fake
def _(dy, x, weight, mean, rstd, training, backend):
    dw = torch.empty_like(weight) if weight is not None else x.new_empty((0,))
    db = x.new_empty((x.shape[1],), dtype=weight.dtype if weight is not None else x.dtype)
    return torch.empty_like(x), dw, db


def _setup_context(ctx, inputs, output):
    x, weight, bias, running_mean, running_var, training, eps, backend = inputs
    _, mean, rstd, var = output
    ctx.training, ctx.backend = training, backend
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd, var)


def _backward(ctx, dout, _dmean, _drstd, _dvar):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = batch_norm_bwd(dout, x, weight, mean, rstd, ctx.training, ctx.backend)
    db = db.to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
    return (dx, opt(dw) if weight is not None else None, db, None, None, None, None, None)


batch_norm_fwd.register_autograd(_backward, setup_context=_setup_context)
