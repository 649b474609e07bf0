"""fusednorm::group_norm_fwd / group_norm_bwd (GroupNorm; InstanceNorm is G = C)."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._common import backend_module, empty_marker, laid_out_like, opt, or_empty, stat_dtype


@torch.library.custom_op("fusednorm::group_norm_fwd", mutates_args=())
def group_norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   num_groups: int, eps: float, activation: str, backend: str
                   ) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (out with x's strides, mean (N, G), rstd (N, G))."""
    sd = stat_dtype(x)
    if x.numel() == 0:
        stats = x.new_empty((x.shape[0], num_groups), dtype=sd)
        return torch.empty_like(x), stats, stats.clone()
    return backend_module(backend).group_norm_fwd(x, weight, bias, num_groups, eps, activation)


@group_norm_fwd.register_fake
def _(x, weight, bias, num_groups, eps, activation, backend):
    sd = stat_dtype(x)
    stats = x.new_empty((x.shape[0], num_groups), dtype=sd)
    return torch.empty_like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("fusednorm::group_norm_bwd", mutates_args=())
def group_norm_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   mean: Tensor, rstd: Tensor, num_groups: int, activation: str, backend: str
                   ) -> Tuple[Tensor, Tensor, Tensor]:
    if x.numel() == 0:
        dw = torch.zeros_like(weight) if weight is not None else empty_marker(x)
        db = torch.zeros_like(bias) if bias is not None else empty_marker(x)
        return torch.empty_like(x), dw, db
    dy = laid_out_like(dy, x)
    dx, dw, db = backend_module(backend).group_norm_bwd(dy, x, weight, bias, mean, rstd,
                                                        num_groups, activation)
    return dx, or_empty(dw, x), or_empty(db, x)


@group_norm_bwd.register_fake
def _(dy, x, weight, bias, mean, rstd, num_groups, activation, backend):
    dw = torch.empty_like(weight) if weight is not None else x.new_empty((0,))
    db = torch.empty_like(bias) if bias is not None else x.new_empty((0,))
    return torch.empty_like(x), dw, db


def _setup_context(ctx, inputs, output):
    x, weight, bias, num_groups, eps, activation, backend = inputs
    _, mean, rstd = output
    ctx.num_groups, ctx.activation, ctx.backend = num_groups, activation, backend
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dout, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = group_norm_bwd(dout, x, weight, bias, mean, rstd, ctx.num_groups,
                                ctx.activation, ctx.backend)
    return (dx, opt(dw) if weight is not None else None, opt(db) if bias is not None else None,
            None, None, None, None)


group_norm_fwd.register_autograd(_backward, setup_context=_setup_context)
