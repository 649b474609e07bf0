"""LayerNorm over the channels of (N, C, *spatial) (timm's LayerNorm2d): the eager
autograd.Function and the torch.library ops (``fusednorm::layer_norm_2d_fwd`` / ``_bwd``)
over one pair of backend calls.  NCHW and channels_last are read in place; the output and
dx keep x's memory format; the statistics are (N, *spatial) fp32."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._common import backend_module, fast_apply, laid_out_like, opt, or_empty, stat_dtype


# ------------------------------------------------------------------- the backend calls
def _stats_shape(x):
    return (x.shape[0],) + tuple(x.shape[2:])


def fwd(mod, x, weight, bias, eps):
    """-> (out with x's strides, mean (N, *spatial), rstd (N, *spatial))."""
    if x.numel() == 0:
        stats = x.new_empty(_stats_shape(x), dtype=stat_dtype(x))
        if x.shape[1] == 0:  # no channel to normalize over: 0/0, as torch's layer_norm
            stats.fill_(float("nan"))
        return torch.empty_like(x), stats, stats.clone()
    return mod.layer_norm_2d_fwd(x, weight, bias, eps)


def bwd(mod, dy, x, weight, bias, mean, rstd):
    """-> (dx, dweight or None, dbias or None)."""
    if x.numel() == 0:
        return (torch.empty_like(x), None if weight is None else torch.zeros_like(weight),
                None if bias is None else torch.zeros_like(bias))
    return mod.layer_norm_2d_bwd(laid_out_like(dy, x), x, weight, bias, mean, rstd)


# -------------------------------------------------------------------------- eager path
class LayerNorm2dFn(torch.autograd.Function):
    """-> out; the statistics (mean, rstd) go to ``sink``, a list, instead of being outputs."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, mod, sink):
        out, mean, rstd = fwd(mod, x, weight, bias, eps)
        sink += (mean, rstd)
        ctx.mod, ctx.bias = mod, bias  # bias: its presence and dtype only (dbias)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    def backward(ctx, dout):
        if dout is None:
            return (None,) * 6
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = bwd(ctx.mod, dout, x, weight, ctx.bias, mean, rstd)
        return dx, dw, db, None, None, None


_apply = fast_apply(LayerNorm2dFn)


def eager(x, weight, bias, eps, mod):
    """-> (out, mean, rstd); no autograd bookkeeping when nothing needs a gradient."""
    if torch.is_grad_enabled() and (x.requires_grad or (
            weight is not None and weight.requires_grad) or (
            bias is not None and bias.requires_grad)):
        stats = []
        out = _apply(x, weight, bias, eps, mod, stats)
        return out, stats[0], stats[1]
    return fwd(mod, x, weight, bias, eps)


# ----------------------------------------------------------- torch.library ops (compile)
@torch.library.custom_op("fusednorm::layer_norm_2d_fwd", mutates_args=())
def layer_norm_2d_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                      backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (out with x's strides, mean (N, *spatial), rstd (N, *spatial))."""
    return fwd(backend_module(backend), x, weight, bias, eps)


@layer_norm_2d_fwd.register_fake
def _(x, weight, bias, eps, backend):
    stats = x.new_empty(_stats_shape(x), dtype=stat_dtype(x))
    return torch.empty_like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("fusednorm::layer_norm_2d_bwd", mutates_args=())
def layer_norm_2d_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                      mean: Tensor, rstd: Tensor, backend: str
                      ) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (dx, dweight or empty, dbias or empty)."""
    dx, dw, db = bwd(backend_module(backend), dy, x, weight, bias, mean, rstd)
    return dx, or_empty(dw, x), or_empty(db, x)


@layer_norm_2d_bwd.register_fake
def _(dy, x, weight, bias, mean, rstd, backend):
    dw = torch.empty_like(weight) if weight is not None else x.new_empty((0,))
    db = torch.empty_like(bias) if bias is not None else x.new_empty((0,))
    return torch.empty_like(x), dw, db


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps, backend = inputs
    _, mean, rstd = output
    ctx.backend = backend
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dout, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = layer_norm_2d_bwd(dout, x, weight, bias, mean, rstd, ctx.backend)
    return (dx, opt(dw) if weight is not None else None, opt(db) if bias is not None else None,
            None, None)


layer_norm_2d_fwd.register_autograd(_backward, setup_context=_setup_context)


def traced(x, weight, bias, eps, backend: str):
    return layer_norm_2d_fwd(x, weight, bias, eps, backend)
