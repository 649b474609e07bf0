"""BatchNorm: the eager autograd.Function and the torch.library ops
(``fusednorm::batch_norm_fwd`` / ``_bwd``) over one pair of backend calls.

In training the backend updates the running statistics (and num_batches_tracked) in place,
inside its own kernels: no host synchronization and no torch kernels around them.  The
compile-path op declares those buffers as mutated, so torch.compile functionalizes it.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._common import backend_module, fast_apply, laid_out_like, or_empty, stat_dtype


# ------------------------------------------------------------------- the backend calls
def fwd(mod, x, weight, bias, running_mean, running_var, training, eps, momentum, nbt):
    """-> (out with x's strides, mean (C,), rstd (C,), biased var (C,) or None in eval).

    An empty batch normalizes nothing: statistics NaN, running buffers and nbt untouched."""
    if x.numel() == 0:
        nan = x.new_full((x.shape[1],), float("nan"), dtype=stat_dtype(x))
        return torch.empty_like(x), nan, nan.clone(), nan.clone() if training else None
    return mod.batch_norm_fwd(x, weight, bias, running_mean, running_var, training, eps,
                              momentum, nbt)


def bwd(mod, dy, x, weight, bias, mean, rstd, training):
    """-> (dx, dweight or None, dbias or None) in the parameters' dtypes."""
    if x.numel() == 0:
        return (torch.empty_like(x), None if weight is None else torch.zeros_like(weight),
                None if bias is None else torch.zeros_like(bias))
    dx, dw, db = mod.batch_norm_bwd(laid_out_like(dy, x), x, weight, mean, rstd, training)
    if bias is None:
        db = None
    elif db.dtype != bias.dtype:  # no weight, and a bias not in x's dtype: a rare mix
        db = db.to(bias.dtype)
    return dx, dw, db


# -------------------------------------------------------------------------- eager path
class BatchNormFn(torch.autograd.Function):
    """-> out; the statistics (mean, rstd, var or None) go to ``sink``, a list."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, eps, momentum, nbt,
                mod, sink):
        out, mean, rstd, var = fwd(mod, x, weight, bias, running_mean, running_var, training,
                                   eps, momentum, nbt)
        sink += (mean, rstd, var)
        ctx.mod, ctx.training, ctx.bias = mod, training, bias  # bias: presence and dtype only
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    def backward(ctx, dout):
        if dout is None:
            return (None,) * 11
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = bwd(ctx.mod, dout, x, weight, ctx.bias, mean, rstd, ctx.training)
        return (dx, dw, db) + (None,) * 8


_apply = fast_apply(BatchNormFn)


def eager(x, weight, bias, running_mean, running_var, training, eps, momentum, nbt, mod):
    """-> (out, mean, rstd, var or None); no autograd bookkeeping without grad."""
    if torch.is_grad_enabled() and (x.requires_grad or (
            weight is not None and weight.requires_grad) or (
            bias is not None and bias.requires_grad)):
        stats = []
        out = _apply(x, weight, bias, running_mean, running_var, training, eps, momentum, nbt,
                     mod, stats)
        return out, stats[0], stats[1], stats[2]
    return fwd(mod, x, weight, bias, running_mean, running_var, training, eps, momentum, nbt)


# ----------------------------------------------------------- torch.library ops (compile)
# A custom op with a registered autograd formula must be functional, so the traced path's op
# does not mutate: it lets the backend update copies of the running buffers and returns
# them, and the traced code copies them back (``traced`` below) -- the same kernels computing
# the same values as the eager path, plus two C-sized copies torch.compile fuses.
@torch.library.custom_op("fusednorm::batch_norm_fwd", mutates_args=())
def batch_norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   running_mean: Optional[Tensor], running_var: Optional[Tensor],
                   num_batches_tracked: Optional[Tensor], training: bool, eps: float,
                   momentum: Optional[float], backend: str
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (out with x's strides, mean (C,), rstd (C,), biased var (C,) or empty in eval,
    and in training the updated running_mean, running_var, num_batches_tracked (each empty
    when not given; always empty in eval))."""
    new = [t.clone() if training and t is not None else None
           for t in (running_mean, running_var, num_batches_tracked)]
    rm, rv, nbt = (new[i] if training else t for i, t in enumerate(
        (running_mean, running_var, num_batches_tracked)))
    out, mean, rstd, var = fwd(backend_module(backend), x, weight, bias, rm, rv, training, eps,
                               momentum, nbt)
    sd = stat_dtype(x)
    return (out, mean, rstd, or_empty(var, x, sd), or_empty(new[0], x, sd),
            or_empty(new[1], x, sd), or_empty(new[2], x, torch.int64))


@batch_norm_fwd.register_fake
def _(x, weight, bias, running_mean, running_var, num_batches_tracked, training, eps, momentum,
      backend):
    sd = stat_dtype(x)
    stats = x.new_empty((x.shape[1],), dtype=sd)
    empty = x.new_empty((0,), dtype=sd)
    var = torch.empty_like(stats) if training else empty
    new = [torch.empty_like(t) if training and t is not None else
           x.new_empty((0,), dtype=torch.int64 if i == 2 else sd)
           for i, t in enumerate((running_mean, running_var, num_batches_tracked))]
    return (torch.empty_like(x), stats, torch.empty_like(stats), var, *new)


@torch.library.custom_op("fusednorm::batch_norm_bwd", mutates_args=())
def batch_norm_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   mean: Tensor, rstd: Tensor, training: bool, backend: str
                   ) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (dx, dweight or empty, dbias or empty)."""
    dx, dw, db = bwd(backend_module(backend), dy, x, weight, bias, mean, rstd, training)
    return dx, or_empty(dw, x), or_empty(db, x)


@batch_norm_bwd.register_fake
def _(dy, x, weight, bias, mean, rstd, training, backend):
    dw = torch.empty_like(weight) if weight is not None else x.new_empty((0,))
    db = torch.empty_like(bias) if bias is not None else x.new_empty((0,))
    return torch.empty_like(x), dw, db


def _setup_context(ctx, inputs, output):
    x, weight, bias, _, _, _, training, _, _, backend = inputs
    _, mean, rstd, var, new_rm, new_rv, new_nbt = output
    ctx.training, ctx.backend = training, backend
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd, var, new_rm, new_rv, new_nbt)


def _backward(ctx, dout, *_):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = batch_norm_bwd(dout, x, weight, bias, mean, rstd, ctx.training, ctx.backend)
    return (dx, dw if weight is not None else None, db if bias is not None else None) \
        + (None,) * 7


batch_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def traced(x, weight, bias, running_mean, running_var, training, eps, momentum, nbt,
           backend: str):
    out, mean, rstd, var, new_rm, new_rv, new_nbt = batch_norm_fwd(
        x, weight, bias, running_mean, running_var, nbt, training, eps, momentum, backend)
    if training:
        with torch.no_grad():
            for buf, new in ((running_mean, new_rm), (running_var, new_rv), (nbt, new_nbt)):
                if buf is not None:
                    buf.copy_(new)
    return out, mean, rstd, (var if training else None)
