"""The "native" backend: torch's own kernels (``torch.native_layer_norm``,
``torch.native_group_norm``, ``torch.native_batch_norm``, ``torch._fused_rms_norm``).

Not a fusednorm implementation: the same ATen kernels ``torch.nn.functional`` runs, called
one level lower so that the statistics they compute anyway (mean/rstd, save_mean/save_invstd)
come back for ``fusednorm.monitor``.  Hence its place in ``backend="auto"``: for CPU tensors
it is what torch itself would run, at torch's speed, and a converted model trains on a CPU as
fast as the original; fusednorm's extras (``residual``, ``prenorm``, ``activation="silu"``)
are not torch kernels and go to the reference.

Unlike the other backends it does not implement the fwd/bwd contract of
``fusednorm/backends/__init__.py``: its functions are differentiable torch ops (torch's
autograd formulas run the backward), and the functional layer calls them on both paths --
eagerly, and while torch.compile traces, where they stay visible to the compiler as the aten
ops they are (no opaque fusednorm op).  ``NATIVE = True`` marks that.

Semantics are torch's, with fusednorm's two module-level additions kept: ``momentum=None``
(the modules' cumulative average) is applied on the device, and an empty batch leaves the
running statistics and ``num_batches_tracked`` untouched.
"""
import math

import torch

from ..reference.batch_norm import update_running

NATIVE = True
SUPPORTED = frozenset({"layer_norm", "group_norm", "batch_norm", "layer_norm_2d"})
# complex: torch's rms_norm takes complex tensors (the validation admits them for rms_norm
# only)
DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64,
                    torch.complex64, torch.complex128})

_is_compiling = torch.compiler.is_compiling
_native_layer_norm = torch.native_layer_norm
_native_group_norm = torch.native_group_norm
_native_batch_norm = torch.native_batch_norm
# torch >= 2.8: RMSNorm that returns its rstd (what F.rms_norm runs); older torch: F.rms_norm
# and the rstd as a separate reduction
_fused_rms_norm = getattr(torch, "_fused_rms_norm", None)
_HALF = (torch.float16, torch.bfloat16)


def _params(x, weight, bias):
    """weight and bias as torch's kernels take them: in x's dtype, or float32 with a
    float16/bfloat16 x.  fusednorm accepts more mixes (float32 x with a float64 weight, ...):
    those are cast here (autograd casts the gradient back)."""
    if (weight is None or weight.dtype is x.dtype) and (bias is None or bias.dtype is x.dtype):
        return weight, bias
    out = []
    for p in (weight, bias):
        if p is not None and p.dtype != x.dtype and not (
                p.dtype == torch.float32 and x.dtype in _HALF) and not x.is_complex():
            p = p.to(x.dtype)
        out.append(p)
    return out


# ----------------------------------------------------------------------- layer / rms norm
def layer_norm(x, normalized_shape, weight, bias, eps: float, rms: bool):
    """-> (out, mean or None, rstd); mean/rstd shaped as torch returns them (the input's
    leading dims, then 1s)."""
    if weight is not None or bias is not None:
        weight, bias = _params(x, weight, bias)
    if rms:
        if _fused_rms_norm is None:
            return _rms_norm_older_torch(x, normalized_shape, weight, eps)
        if _is_compiling():  # Dynamo traces the aten op, not the Python binding
            out, rstd = torch.ops.aten._fused_rms_norm.default(x, list(normalized_shape),
                                                               weight, eps)
        else:
            out, rstd = _fused_rms_norm(x, normalized_shape, weight, eps)
        return out, None, rstd
    return _native_layer_norm(x, normalized_shape, weight, bias, eps)


def _rms_norm_older_torch(x, normalized_shape, weight, eps):
    out = torch.nn.functional.rms_norm(x, normalized_shape, weight, eps)
    with torch.no_grad():
        dims = tuple(range(x.dim() - len(normalized_shape), x.dim()))
        xa = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        rstd = torch.rsqrt(xa.square().mean(dims, keepdim=True) + eps)
    return out, None, rstd


def layer_norm_2d(x, weight, bias, eps: float):
    """LayerNorm over the channels of (N, C, *spatial) as timm computes it: F.layer_norm on
    the channels-last view (read in place for channels_last; torch copies an NCHW tensor to
    rows of C), the result viewed back.  -> (out, mean (N, *spatial, 1), rstd (N, *spatial,
    1))."""
    if weight is not None or bias is not None:
        weight, bias = _params(x, weight, bias)
    d = x.dim()
    if d == 4:  # the common case, without building the permutations
        out, mean, rstd = _native_layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight,
                                             bias, eps)
        return out.permute(0, 3, 1, 2), mean, rstd
    out, mean, rstd = _native_layer_norm(x.permute(0, *range(2, d), 1), (x.shape[1],), weight,
                                         bias, eps)
    return out.permute(0, d - 1, *range(1, d - 1)), mean, rstd


# ----------------------------------------------------------------------------- group norm
def group_norm(x, weight, bias, num_groups: int, eps: float):
    """-> (out, mean (N, G), rstd (N, G))."""
    if weight is not None or bias is not None:
        weight, bias = _params(x, weight, bias)
    n, c = x.shape[0], x.shape[1]
    hxw = math.prod(x.shape[2:])
    return _native_group_norm(x, weight, bias, n, c, hxw, num_groups, eps)


# ----------------------------------------------------------------------------- batch norm
def _param_dtype(x, weight, bias, running_mean, running_var):
    """The one dtype torch's batch-norm kernels take for weight, bias and running statistics
    with input x: x's dtype, or float32 for a float16/bfloat16 x (mixed precision).
    fusednorm also accepts other running-buffer dtypes; those go through a copy."""
    for t in (weight, bias, running_mean, running_var):
        if t is not None:
            if t.dtype == x.dtype or (t.dtype == torch.float32 and x.dtype in _HALF):
                return t.dtype
            break
    return torch.float32 if x.dtype in _HALF else x.dtype


def _as(t, dtype):
    return t if t is None or t.dtype == dtype else t.to(dtype)


def batch_norm(x, weight, bias, running_mean, running_var, training: bool, eps: float,
               momentum, num_batches_tracked=None):
    """-> (out, mean, rstd, None) in training (torch's save_mean/save_invstd; None, None in
    eval, where torch computes none).  Running statistics are updated in place as torch
    does; ``num_batches_tracked`` (a 0-dim tensor or None) += 1 first, and momentum=None
    takes f = 1 / num_batches_tracked on the device."""
    pd = _param_dtype(x, weight, bias, running_mean, running_var)
    w, b = _as(weight, pd), _as(bias, pd)
    update = training and (running_mean is not None or running_var is not None)
    rm, rv = _as(running_mean, pd), _as(running_var, pd)
    if update and momentum is None:
        # the cumulative average: the kernel writes the batch mean and unbiased variance
        # into fresh buffers (momentum 1), and the average is formed on the device
        mb = None if rm is None else torch.zeros_like(rm)
        vb = None if rv is None else torch.zeros_like(rv)
        out, mean, rstd = _native_batch_norm(x, w, b, mb, vb, True, 1.0, eps)
        update_running(running_mean, running_var, mb, vb, None, num_batches_tracked)
        return out, mean, rstd, None
    if update and num_batches_tracked is not None:
        with torch.no_grad():
            num_batches_tracked.add_(1)
    out, mean, rstd = _native_batch_norm(x, w, b, rm, rv, training,
                                         0.0 if momentum is None else momentum, eps)
    if update:  # buffers of another dtype were updated as copies
        with torch.no_grad():
            for buf, new in ((running_mean, rm), (running_var, rv)):
                if buf is not None and new is not buf:
                    buf.copy_(new)
    return out, (mean if training else None), (rstd if training else None), None


def instance_norm(x, weight, bias, running_mean, running_var, momentum: float, eps: float,
                  stats: bool = True):
    """InstanceNorm with input statistics exactly as ``torch.instance_norm`` computes it:
    batch norm of the (1, N*C, *spatial) view with weight, bias and running statistics
    repeated N times, the running statistics then averaged over the batch.
    -> (out, mean (N, C), rstd (N, C)); with ``stats=False`` (nobody reads them) torch's
    instance_norm itself, one call instead of a dozen, and (out, None, None)."""
    n, c = x.shape[0], x.shape[1]
    pd = _param_dtype(x, weight, bias, running_mean, running_var)
    if not stats and all(t is None or t.dtype == pd for t in (weight, bias, running_mean,
                                                              running_var)):
        out = torch.instance_norm(x, weight, bias, running_mean, running_var, True, momentum,
                                  eps, torch.backends.cudnn.enabled)
        return out, None, None
    w = None if weight is None else _as(weight, pd).repeat(n)
    b = None if bias is None else _as(bias, pd).repeat(n)
    rm = None if running_mean is None else _as(running_mean, pd).repeat(n)
    rv = None if running_var is None else _as(running_var, pd).repeat(n)
    xr = x.contiguous().view((1, n * c) + tuple(x.shape[2:]))
    out, mean, rstd = _native_batch_norm(xr, w, b, rm, rv, True, momentum, eps)
    with torch.no_grad():
        for buf, new in ((running_mean, rm), (running_var, rv)):
            if buf is not None:
                buf.copy_(new.view(n, c).mean(0))
    return out.view(x.shape), mean.view(n, c), rstd.view(n, c)
