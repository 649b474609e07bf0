"""Public functions: validate, pick the backend and the path, reshape, call the backend.

Signatures mirror torch.nn.functional; everything fusednorm adds is keyword-only.  The
``_<norm>`` variants return the statistics the backend computed as well (fp32 device
tensors), which the modules hand to a statistics hook (see fusednorm.monitor) without any
extra pass.

The path of a call (see ``fusednorm/ops/__init__.py``): while torch.compile traces
(``torch.compiler.is_compiling()``) the opaque torch.library op; otherwise the norm's
autograd.Function, or, when nothing needs a gradient, the backend's forward alone.  The
checks run in the same order on both paths and raise the same messages; they are ordered
so that a valid call costs a few comparisons.
"""
import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _backend
from . import _validate as V
from . import _layout
from .ops import batch_norm as _bn
from .ops import group_norm as _gn
from .ops import layer_norm as _ln
from .ops._common import stat_dtype

__all__ = ["layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm"]

_is_compiling = torch.compiler.is_compiling


# -------------------------------------------------------------------------------- autocast
# torch's CUDA autocast runs layer_norm and group_norm in fp32 (ATen's autocast fp32 list):
# under it, torch's modules return fp32 from fp16/bf16 inputs.  Drop-in means the same here.
_AUTOCAST_FP32_CUDA = frozenset({"layer_norm", "group_norm"})
_HALF = frozenset({torch.float16, torch.bfloat16})
_rms_autocast_dtype = {}


def _autocast_dtype(op: str, x: Tensor):
    """The dtype torch's own op would compute in for x under the active autocast, or None
    when autocast leaves x alone."""
    if not x.is_cuda or x.dtype not in _HALF or not torch.is_autocast_enabled("cuda"):
        return None
    if op in _AUTOCAST_FP32_CUDA:
        return torch.float32
    if op == "rms_norm" and not _is_compiling():
        # rms_norm is not on the documented list; what torch does depends on its version,
        # so ask it once per dtype (a one-element call) and do the same.
        key = (x.dtype, torch.get_autocast_dtype("cuda"))
        if key not in _rms_autocast_dtype:
            probe = torch.ones(1, 2, device=x.device, dtype=x.dtype)
            _rms_autocast_dtype[key] = torch.nn.functional.rms_norm(probe, (2,)).dtype
        return _rms_autocast_dtype[key] if _rms_autocast_dtype[key] != x.dtype else None
    return None


def _dense_running(t):
    """Running statistics as the dense (C,) vectors the kernels update in place: a strided
    buffer (rare: a view someone passed in) is updated through a dense copy written back by
    ``_write_back``."""
    if t is None or t.shape[0] <= 1 or t.stride(0) == 1:
        return t, None
    return t.contiguous(), t


def _write_back(*pairs):
    with torch.no_grad():
        for dense, orig in pairs:
            if orig is not None:
                orig.copy_(dense)


def _cast(t, dtype):
    return t if t is None or dtype is None else t.to(dtype)


def _param_dtypes(x: Tensor, *params):
    """Affine parameters / running stats as the kernels take them: all in x's dtype, or all
    fp32 (each is a kernel specialization, no cast).  Any other mix (fp32 x with fp16
    weight, bf16 weight with fp16 bias, ...) is cast to fp32 here -- torch.nn accepts some
    of these, and autograd casts the gradient back."""
    dt = None
    for p in params:
        if p is not None:
            if dt is None:
                dt = p.dtype
            elif p.dtype != dt:
                dt = False
                break
    if dt is None or dt == x.dtype or dt == torch.float32:
        return params
    return tuple(None if p is None else p.float() for p in params)


# ------------------------------------------------------------------------ layer / rms norm
def _layer_norm(fn, input, normalized_shape, weight, bias, eps, residual, prenorm, backend,
                rms):
    """-> (result, mean or None, rstd, eps, count); result is out, or (out, x + residual)
    when prenorm."""
    V.check_input(fn, input)
    shape = V.normalized_shape_tuple(fn, normalized_shape, input)
    if weight is not None:
        V.check_param(fn, "weight", weight, shape, input)
    if bias is not None:
        V.check_param(fn, "bias", bias, shape, input)
    if residual is not None:
        V.check_residual(fn, residual, input)
    if prenorm is not False and prenorm is not True:
        V.fail(fn, TypeError, f"prenorm={prenorm!r}; expected a bool")
    if input.is_cuda:
        ac = _autocast_dtype(fn, input)
        if ac is not None:
            input, residual, weight, bias = (_cast(t, ac) for t in (input, residual, weight,
                                                                     bias))
    if rms and eps is None:
        # torch's default: the eps of the dtype the norm computes in (float32 for fp16/bf16
        # inputs, float64 for float64), not of the input dtype
        eps = torch.finfo(stat_dtype(input)).eps
    eps = V.check_eps(fn, eps)
    nd = len(shape)
    if weight is not None or bias is not None:
        weight, bias = _param_dtypes(input, weight, bias)
    if _is_compiling():
        name = _backend.resolve_traced(fn, "layer_norm", backend, input)
        out, xsum, mean, rstd = _ln.traced(input, residual, weight, bias, eps, rms, name, nd)
    else:
        mod = _backend.resolve_module(fn, "layer_norm", backend, input)[1]
        out, xsum, mean, rstd = _ln.eager(input, residual, weight, bias, eps, rms, mod, nd)
    if prenorm:
        out = (out, xsum if residual is not None else input)
    n = 1
    for s in shape:
        n *= s
    return out, mean, rstd, eps, n


def layer_norm(input: Tensor, normalized_shape: Union[int, Sequence[int]],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               eps: float = 1e-5, *, residual: Optional[Tensor] = None, prenorm: bool = False,
               backend: Optional[str] = None):
    """LayerNorm over the trailing ``normalized_shape`` dims (torch.nn.functional.layer_norm).

    With ``residual`` the norm is applied to ``input + residual``; ``prenorm=True`` returns
    ``(out, input + residual)``, the sum a pre-norm transformer carries forward.
    """
    return _layer_norm("layer_norm", input, normalized_shape, weight, bias, eps, residual,
                       prenorm, backend, False)[0]


def rms_norm(input: Tensor, normalized_shape: Union[int, Sequence[int]],
             weight: Optional[Tensor] = None, eps: Optional[float] = None, *,
             residual: Optional[Tensor] = None, prenorm: bool = False,
             backend: Optional[str] = None):
    """RMSNorm (torch.nn.functional.rms_norm); ``eps=None`` is torch's default, the machine
    epsilon of the compute dtype (float32 for fp16/bf16/fp32 inputs, float64 for float64)."""
    return _layer_norm("rms_norm", input, normalized_shape, weight, None, eps, residual,
                       prenorm, backend, True)[0]


# ------------------------------------------------------------------------------ group norm
def _group_norm(fn, input, num_groups, weight, bias, eps, activation, backend):
    """-> (out, mean (N, G), rstd (N, G), eps, count per group)."""
    c = V.check_channel_norm(fn, input, 2, weight, bias)
    if type(num_groups) is not int or num_groups <= 0 or c % num_groups:
        V.check_num_groups(fn, num_groups, c)
        num_groups = int(num_groups)
    eps = V.check_eps(fn, eps)
    act = "" if activation is None else V.check_activation(fn, activation)
    if input.is_cuda:
        ac = _autocast_dtype(fn, input)
        if ac is not None:
            input, weight, bias = (_cast(t, ac) for t in (input, weight, bias))
    x = _layout.spatial(input)
    if weight is not None or bias is not None:
        weight, bias = _param_dtypes(input, _layout.dense(weight), _layout.dense(bias))
    if _is_compiling():
        name = _backend.resolve_traced(fn, "group_norm", backend, input)
        out, mean, rstd = _gn.traced(x, weight, bias, num_groups, eps, act, name)
    else:
        mod = _backend.resolve_module(fn, "group_norm", backend, input)[1]
        out, mean, rstd = _gn.eager(x, weight, bias, num_groups, eps, act, mod)
    n = input.shape[0]
    count = input.numel() // n // num_groups if n else 0
    return out, mean, rstd, eps, count


def group_norm(input: Tensor, num_groups: int, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5, *,
               activation: Optional[str] = None, backend: Optional[str] = None) -> Tensor:
    """GroupNorm (torch.nn.functional.group_norm), optionally fused with SiLU
    (``activation="silu"``).  NCHW and channels_last inputs are read in place and the output
    keeps the input's memory format."""
    return _group_norm("group_norm", input, num_groups, weight, bias, eps, activation,
                       backend)[0]


# ------------------------------------------------------------------------------ batch norm
def _batch_norm(fn, input, running_mean, running_var, weight, bias, training, momentum, eps,
                backend, num_batches_tracked=None):
    """-> (out, mean, rstd, biased var or None, eps, count).

    Training updates running_mean / running_var in place, inside the backend's kernels:
    running = (1 - f) * running + f * batch (unbiased variance), f = momentum, or, with
    ``momentum=None`` (the modules' cumulative average), f = 1 / num_batches_tracked after
    the backend has added 1 to it -- all on the device, no host synchronization.  The
    running buffers keep their dtype (any floating dtype: the kernels load and store it)."""
    c = V.check_channel_norm(fn, input, 2, weight, bias, running_mean, running_var)
    eps = V.check_eps(fn, eps)
    if not training and (running_mean is None or running_var is None):
        V.fail(fn, RuntimeError, "running_mean and running_var are required when "
               "training=False (eval mode normalizes with the running statistics); got "
               f"running_mean={'None' if running_mean is None else 'Tensor'}, "
               f"running_var={'None' if running_var is None else 'Tensor'}")
    count = input.numel() // c if c else 0
    if training:
        if input.numel() > 0 and count <= 1:
            V.fail(fn, ValueError, f"expected more than 1 value per channel when training, "
                   f"got input of shape {tuple(input.shape)}")
        if momentum is not None and type(momentum) is not float:
            momentum = V.check_momentum(fn, momentum)
        if running_mean is None and running_var is None:
            num_batches_tracked = None  # nothing to update
    x = _layout.spatial(input)
    if weight is not None or bias is not None:
        weight, bias = _param_dtypes(input, _layout.dense(weight), _layout.dense(bias))
    rm, rm_orig = _dense_running(running_mean)
    rv, rv_orig = _dense_running(running_var)
    if _is_compiling():
        name = _backend.resolve_traced(fn, "batch_norm", backend, input)
        out, mean, rstd, var = _bn.traced(x, weight, bias, rm, rv, training, eps, momentum,
                                          num_batches_tracked, name)
    else:
        mod = _backend.resolve_module(fn, "batch_norm", backend, input)[1]
        out, mean, rstd, var = _bn.eager(x, weight, bias, rm, rv, training, eps, momentum,
                                         num_batches_tracked, mod)
    if training and (rm_orig is not None or rv_orig is not None):
        _write_back((rm, rm_orig), (rv, rv_orig))
    return out, mean, rstd, var, eps, count


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5, *,
               backend: Optional[str] = None) -> Tensor:
    """BatchNorm (torch.nn.functional.batch_norm) for (N, C), (N, C, L), (N, C, H, W) and
    (N, C, D, H, W).  In training the running statistics are updated in place exactly as
    torch does (unbiased variance), on the device; an empty batch leaves them untouched."""
    if momentum is None:
        V.fail("batch_norm", TypeError, "momentum=None; expected a float (the modules' "
               "momentum=None cumulative average is not part of the functional form)")
    return _batch_norm("batch_norm", input, running_mean, running_var, weight, bias,
                       training, momentum, eps, backend)[0]


# --------------------------------------------------------------------------- instance norm
def _instance_norm(fn, input, running_mean, running_var, weight, bias, use_input_stats,
                   momentum, eps, backend):
    """-> (out, mean (N, C) or None, rstd or None, eps, count per instance)."""
    c = V.check_channel_norm(fn, input, 3, weight, bias, running_mean, running_var)
    eps = V.check_eps(fn, eps)
    spatial = math.prod(input.shape[2:])
    if not use_input_stats:
        if running_mean is None or running_var is None:
            V.fail(fn, RuntimeError, "running_mean and running_var are required when "
                   "use_input_stats=False")
        # Normalizing every instance with the running statistics is BatchNorm's eval path.
        out = _batch_norm(fn, input, running_mean, running_var, weight, bias, False, momentum,
                          eps, backend)[0]
        return out, None, None, eps, spatial
    if input.numel() > 0 and spatial <= 1:
        V.fail(fn, ValueError, f"expected more than 1 spatial element when training, got "
               f"input of shape {tuple(input.shape)}")
    track = running_mean is not None or running_var is not None
    if track and momentum is not None and type(momentum) is not float:
        momentum = V.check_momentum(fn, momentum)
    x = _layout.spatial(input)
    if weight is not None or bias is not None:
        weight, bias = _param_dtypes(input, _layout.dense(weight), _layout.dense(bias))
    update = track and input.numel() > 0
    if update:
        rm, rm_orig = _dense_running(running_mean)
        rv, rv_orig = _dense_running(running_var)
    # InstanceNorm is GroupNorm with one group per channel; the running statistics (the batch
    # average of the instance mean and unbiased variance) are updated by the backend.
    if _is_compiling():
        name = _backend.resolve_traced(fn, "group_norm", backend, input)
        out, mean, rstd = _gn.traced(x, weight, bias, c, eps, "", name)
        if update:
            _gn.instance_norm_running_traced(mean, rstd, rm, rv, momentum, eps, spatial, name)
    else:
        mod = _backend.resolve_module(fn, "group_norm", backend, input)[1]
        out, mean, rstd = _gn.eager(x, weight, bias, c, eps, "", mod)
        if update:
            mod.instance_norm_running(mean, rstd, rm, rv, momentum, eps, spatial)
    if update and (rm_orig is not None or rv_orig is not None):
        _write_back((rm, rm_orig), (rv, rv_orig))
    return out, mean, rstd, eps, spatial


def instance_norm(input: Tensor, running_mean: Optional[Tensor] = None,
                  running_var: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5, *,
                  backend: Optional[str] = None) -> Tensor:
    """InstanceNorm (torch.nn.functional.instance_norm): per (sample, channel) statistics;
    running statistics, when given, are updated with the batch average of the instance mean
    and unbiased variance."""
    return _instance_norm("instance_norm", input, running_mean, running_var, weight, bias,
                          use_input_stats, momentum, eps, backend)[0]
