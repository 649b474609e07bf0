"""LayerNorm and RMSNorm on an (M, N) view: the eager autograd.Function and the torch.library
ops (``fusednorm::layer_norm_fwd`` / ``_bwd``) over one pair of backend calls."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._layout import as_rows, dense
from ._common import backend_module, fast_apply, opt, or_empty, stat_dtype


# ------------------------------------------------------------------- the backend calls
def fwd(mod, x, residual, weight, bias, eps, rms):
    """-> (out, xsum or None, mean or None, rstd); empty inputs never reach the backend."""
    if x.numel() == 0:
        m = x.shape[0]
        sd = stat_dtype(x)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        xsum = torch.empty_like(out) if residual is not None else None
        mean = None if rms else x.new_empty((m,), dtype=sd)
        return out, xsum, mean, x.new_empty((m,), dtype=sd)
    return mod.layer_norm_fwd(x, residual, weight, bias, eps, rms)


def bwd(mod, dy, dxsum, x, weight, bias, mean, rstd, rms):
    """-> (dx, dweight or None, dbias or None)."""
    if x.numel() == 0:
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        return (dx, None if weight is None else torch.zeros_like(weight),
                None if bias is None else torch.zeros_like(bias))
    if dy is None:  # only the prenorm sum was used downstream
        dy = torch.zeros_like(x)
    return mod.layer_norm_bwd(dy.contiguous(), None if dxsum is None else dxsum.contiguous(),
                              x, weight, bias, mean, rstd, rms)


# -------------------------------------------------------------------------- eager path
def _fwd_shaped(mod, input, residual, weight, bias, eps, rms, nd):
    """fwd on the (M, N) views of N-D tensors, outputs back in the input's shape.  Inside the
    Function the views cost no autograd nodes."""
    x2 = as_rows(input, nd)
    r2 = as_rows(residual, nd) if residual is not None else None
    w, b = dense(weight), dense(bias)
    out, xsum, mean, rstd = fwd(mod, x2, r2, w, b, eps, rms)
    shape = input.shape
    if out.shape != shape:
        out = out.view(shape)
        xsum = xsum.view(shape) if xsum is not None else None
    return (out, xsum, mean, rstd), (x2 if xsum is None else xsum.view(x2.shape), w, b)


class LayerNormFn(torch.autograd.Function):
    """Eager autograd for LN/RMS: forward and backward call the backend directly, on the N-D
    tensors themselves (the (M, N) views are taken inside, where they cost no autograd
    node).  -> out, or (out, xsum) with a residual; the statistics (mean or None, rstd) go
    to ``sink``, a list, instead of being outputs (fewer outputs, less autograd work)."""

    @staticmethod
    def forward(ctx, input, residual, weight, bias, eps, rms, mod, nd, sink):
        outs, (xs, w, b) = _fwd_shaped(mod, input, residual, weight, bias, eps, rms, nd)
        sink += outs[2:]
        ctx.mod, ctx.rms, ctx.has_residual = mod, rms, residual is not None
        # bias is only needed for its presence and dtype (dbias), not saved as a tensor
        ctx.bias, ctx.shapes = b, (input.shape, None if weight is None else weight.shape,
                                   None if bias is None else bias.shape)
        ctx.save_for_backward(xs, w, outs[2], outs[3])
        ctx.set_materialize_grads(False)
        return outs[:2] if residual is not None else outs[0]

    @staticmethod
    def backward(ctx, dout, dxsum=None):
        if dout is None and dxsum is None:
            return (None,) * 9
        xs, w, mean, rstd = ctx.saved_tensors
        shape, wshape, bshape = ctx.shapes
        m_n = xs.shape
        if dout is not None and dout.shape != m_n:
            dout = dout.reshape(m_n)
        if dxsum is not None and dxsum.shape != m_n:
            dxsum = dxsum.reshape(m_n)
        dx, dw, db = bwd(ctx.mod, dout, dxsum, xs, w, ctx.bias, mean, rstd, ctx.rms)
        if dx.shape != shape:
            dx = dx.view(shape)
        if dw is not None and dw.shape != wshape:
            dw = dw.view(wshape)
        if db is not None and db.shape != bshape:
            db = db.view(bshape)
        return (dx, dx if ctx.has_residual else None, dw, db, None, None, None, None, None)


_apply = fast_apply(LayerNormFn)


def eager(input, residual, weight, bias, eps, rms, mod, nd):
    """The eager path on N-D tensors: no autograd bookkeeping when nothing needs a gradient.
    -> (out, xsum or None, mean or None, rstd), out and xsum in the input's shape."""
    if torch.is_grad_enabled() and (input.requires_grad or (
            residual is not None and residual.requires_grad) or (
            weight is not None and weight.requires_grad) or (
            bias is not None and bias.requires_grad)):
        stats = []
        out = _apply(input, residual, weight, bias, eps, rms, mod, nd, stats)
        if residual is not None:
            return out[0], out[1], stats[0], stats[1]
        return out, None, stats[0], stats[1]
    return _fwd_shaped(mod, input, residual, weight, bias, eps, rms, nd)[0]


# ----------------------------------------------------------- torch.library ops (compile)
@torch.library.custom_op("fusednorm::layer_norm_fwd", mutates_args=())
def layer_norm_fwd(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor],
                   bias: Optional[Tensor], eps: float, rms: bool, backend: str
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (out, xsum or empty, mean or empty, rstd)."""
    out, xsum, mean, rstd = fwd(backend_module(backend), x, residual, weight, bias, eps, rms)
    return out, or_empty(xsum, x), or_empty(mean, x, stat_dtype(x)), rstd


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
    dx, dw, db = bwd(backend_module(backend), dy, dxsum, x, weight, bias, opt(mean), rstd, rms)
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


def traced(input, residual, weight, bias, eps, rms, backend: str, nd):
    """The compile path: the opaque op on the (M, N) views, Nones restored.  Same 4-tuple
    as ``eager``."""
    x2 = as_rows(input, nd)
    r2 = as_rows(residual, nd) if residual is not None else None
    out, xsum, mean, rstd = layer_norm_fwd(x2, r2, dense(weight), dense(bias), eps, rms,
                                           backend)
    out = out.view(input.shape)
    xsum = xsum.view(input.shape) if residual is not None else None
    return out, xsum, (None if rms else mean), rstd
