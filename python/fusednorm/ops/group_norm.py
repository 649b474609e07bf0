"""GroupNorm (InstanceNorm is G = C): the eager autograd.Function and the torch.library ops
(``fusednorm::group_norm_fwd`` / ``_bwd``) over one pair of backend calls.

``instance=True`` (InstanceNorm) adds torch's batch-norm rule for eps == 0: an instance of
zero variance gets rstd = 0 (ATen's InvStd), so its output is the bias and its gradients are
0, where GroupNorm's 1/sqrt(0 + 0) gives NaN (as torch's group_norm does).  The backends
compute rstd = inf there; ``fwd`` rewrites those instances (only when eps == 0), and the
backward, which recomputes x̂ = (x - mean) * rstd from the saved rstd, then gives torch's
zeros."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._common import backend_module, fast_apply, laid_out_like, opt, or_empty, stat_dtype


# ------------------------------------------------------------------- the backend calls
def fwd(mod, x, weight, bias, num_groups, eps, activation, instance=False):
    """-> (out with x's strides, mean (N, G), rstd (N, G))."""
    if x.numel() == 0:
        stats = x.new_empty((x.shape[0], num_groups), dtype=stat_dtype(x))
        return torch.empty_like(x), stats, stats.clone()
    out, mean, rstd = mod.group_norm_fwd(x, weight, bias, num_groups, eps, activation)
    if instance and eps == 0.0:
        out, rstd = _zero_variance(x, out, rstd, bias)
    return out, mean, rstd


def _zero_variance(x, out, rstd, bias):
    """InstanceNorm with eps == 0: rstd 0 and output = bias (or 0) where the variance is 0."""
    bad = torch.isinf(rstd)                                      # (N, C)
    view = bad.shape + (1,) * (x.dim() - 2)
    fill = out.new_zeros(()) if bias is None else \
        bias.to(out.dtype).view((1, -1) + (1,) * (x.dim() - 2))
    fixed = laid_out_like(torch.where(bad.view(view), fill, out), x)
    return fixed, rstd.masked_fill(bad, 0.0)


def bwd(mod, dy, x, weight, bias, mean, rstd, num_groups, activation):
    """-> (dx, dweight or None, dbias or None)."""
    if x.numel() == 0:
        return (torch.empty_like(x), None if weight is None else torch.zeros_like(weight),
                None if bias is None else torch.zeros_like(bias))
    return mod.group_norm_bwd(laid_out_like(dy, x), x, weight, bias, mean, rstd, num_groups,
                              activation)


# -------------------------------------------------------------------------- eager path
class GroupNormFn(torch.autograd.Function):
    """-> out; the statistics (mean, rstd) go to ``sink``, a list, instead of being outputs."""

    @staticmethod
    def forward(ctx, x, weight, bias, num_groups, eps, activation, mod, sink, instance):
        out, mean, rstd = fwd(mod, x, weight, bias, num_groups, eps, activation, instance)
        sink += (mean, rstd)
        ctx.mod, ctx.num_groups, ctx.activation = mod, num_groups, activation
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    def backward(ctx, dout):
        if dout is None:
            return (None,) * 9
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dw, db = bwd(ctx.mod, dout, x, weight, bias, mean, rstd, ctx.num_groups,
                         ctx.activation)
        return dx, dw, db, None, None, None, None, None, None


_apply = fast_apply(GroupNormFn)


def eager(x, weight, bias, num_groups, eps, activation, mod, instance=False):
    """-> (out, mean, rstd); no autograd bookkeeping when nothing needs a gradient."""
    if torch.is_grad_enabled() and (x.requires_grad or (
            weight is not None and weight.requires_grad) or (
            bias is not None and bias.requires_grad)):
        stats = []
        out = _apply(x, weight, bias, num_groups, eps, activation, mod, stats, instance)
        return out, stats[0], stats[1]
    return fwd(mod, x, weight, bias, num_groups, eps, activation, instance)


# ----------------------------------------------------------- torch.library ops (compile)
@torch.library.custom_op("fusednorm::group_norm_fwd", mutates_args=())
def group_norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   num_groups: int, eps: float, activation: str, backend: str,
                   instance: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (out with x's strides, mean (N, G), rstd (N, G))."""
    return fwd(backend_module(backend), x, weight, bias, num_groups, eps, activation,
               instance)


@group_norm_fwd.register_fake
def _(x, weight, bias, num_groups, eps, activation, backend, instance=False):
    stats = x.new_empty((x.shape[0], num_groups), dtype=stat_dtype(x))
    return torch.empty_like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("fusednorm::group_norm_bwd", mutates_args=())
def group_norm_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   mean: Tensor, rstd: Tensor, num_groups: int, activation: str, backend: str
                   ) -> Tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = bwd(backend_module(backend), dy, x, weight, bias, mean, rstd, num_groups,
                     activation)
    return dx, or_empty(dw, x), or_empty(db, x)


@group_norm_bwd.register_fake
def _(dy, x, weight, bias, mean, rstd, num_groups, activation, backend):
    dw = torch.empty_like(weight) if weight is not None else x.new_empty((0,))
    db = torch.empty_like(bias) if bias is not None else x.new_empty((0,))
    return torch.empty_like(x), dw, db


def _setup_context(ctx, inputs, output):
    x, weight, bias, num_groups, eps, activation, backend, _instance = inputs
    _, mean, rstd = output
    ctx.num_groups, ctx.activation, ctx.backend = num_groups, activation, backend
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dout, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = group_norm_bwd(dout, x, weight, bias, mean, rstd, ctx.num_groups,
                                ctx.activation, ctx.backend)
    return (dx, opt(dw) if weight is not None else None, opt(db) if bias is not None else None,
            None, None, None, None, None)


group_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def traced(x, weight, bias, num_groups, eps, activation, backend: str, instance=False):
    return group_norm_fwd(x, weight, bias, num_groups, eps, activation, backend, instance)


# InstanceNorm's running statistics, updated by the backend from the instance statistics of
# one batch.  The eager path calls the backend function (in place); the traced path's op is
# functional like fusednorm::batch_norm_fwd: the backend updates copies, which the traced
# code copies back.
@torch.library.custom_op("fusednorm::instance_norm_running", mutates_args=())
def instance_norm_running(mean: Tensor, rstd: Tensor, running_mean: Optional[Tensor],
                          running_var: Optional[Tensor], momentum: float, eps: float,
                          spatial: int, backend: str) -> Tuple[Tensor, Tensor]:
    rm = None if running_mean is None else running_mean.clone()
    rv = None if running_var is None else running_var.clone()
    backend_module(backend).instance_norm_running(mean, rstd, rm, rv, momentum, eps, spatial)
    return or_empty(rm, mean), or_empty(rv, mean)


@instance_norm_running.register_fake
def _(mean, rstd, running_mean, running_var, momentum, eps, spatial, backend):
    return tuple(mean.new_empty((0,)) if t is None else torch.empty_like(t)
                 for t in (running_mean, running_var))


def instance_norm_running_traced(mean, rstd, running_mean, running_var, momentum, eps,
                                 spatial, backend: str):
    new_rm, new_rv = instance_norm_running(mean, rstd, running_mean, running_var, momentum,
                                           eps, spatial, backend)
    with torch.no_grad():
        for buf, new in ((running_mean, new_rm), (running_var, new_rv)):
            if buf is not None:
                buf.copy_(new)
