"""Public functions: validate, pick the backend and the path, reshape, call the backend.

Signatures mirror torch.nn.functional; everything fusednorm adds is keyword-only.  The
``_<norm>`` variants return the statistics the backend computed as well (fp32 device
tensors), which the modules hand to a statistics hook (see fusednorm.monitor) without any
extra pass.

The path of a call (see ``fusednorm/ops/__init__.py``): while torch.compile traces
(``torch.compiler.is_compiling()``) the opaque torch.library op; otherwise the norm's
autograd.Function, or, when nothing needs a gradient, the backend's forward alone.  The
"native" backend (torch's own kernels) is called directly on both paths: its functions are
differentiable torch ops, which torch.compile sees as what they are.  The checks run in the
same order on both paths and raise the same messages; they are ordered so that a valid call
costs a few comparisons, and a bad one raises what torch.nn.functional raises (``_validate``).
"""
import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _backend
from . import _validate as V
from . import _layout
from .backends import native as _native
from .ops import batch_norm as _bn
from .ops import group_norm as _gn
from .ops import layer_norm as _ln
from .ops import layer_norm_2d as _ln2d
from .ops._common import stat_dtype

__all__ = ["layer_norm", "rms_norm", "layer_norm_2d", "group_norm", "instance_norm",
           "batch_norm"]

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


def _detached(t):
    """The statistics torch's native ops return are differentiable outputs; traced, as graph
    outputs that would make AOTAutograd replace their backward kernel by its decomposition
    (bitwise different).  They are only ever read (the monitor), so the traced path detaches
    them; the eager path leaves them (a detach per call is host time, and nothing differs)."""
    return None if t is None else t.detach()


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
    when prenorm.  The statistics have the backend's shapes ((M,), or torch's (M..., 1...)
    on "native")."""
    V.check_input(fn, input, complex_ok=rms)
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
        # inputs, float64 for float64 and complex128), not of the input dtype
        eps = torch.finfo(stat_dtype(input) if not input.is_complex() else
                          input.real.dtype).eps
    eps = V.check_eps(fn, eps)
    nd = len(shape)
    if weight is not None or bias is not None:
        weight, bias = _param_dtypes(input, weight, bias)
    # x + residual is fusednorm's; a prenorm output without a residual is the input itself
    extra = "" if residual is None else "residual"
    if _is_compiling():
        name = _backend.resolve_traced(fn, "layer_norm", backend, input, extra)
        if name == "native":
            out, mean, rstd = _native.layer_norm(input, shape, weight, bias, eps, rms)
            mean, rstd, xsum = _detached(mean), _detached(rstd), None
        else:
            out, xsum, mean, rstd = _ln.traced(input, residual, weight, bias, eps, rms, name,
                                               nd)
    else:
        name, mod = _backend.resolve_module(fn, "layer_norm", backend, input, extra)
        if name == "native":
            out, mean, rstd = mod.layer_norm(input, shape, weight, bias, eps, rms)
            xsum = None
        else:
            out, xsum, mean, rstd = _ln.eager(input, residual, weight, bias, eps, rms, mod,
                                              nd)
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


# ------------------------------------------------------------------ layer norm over channels
def _layer_norm_2d(fn, input, weight, bias, eps, backend):
    """-> (out, mean (N, *spatial), rstd (N, *spatial), eps, C).  On "native" the statistics
    have torch's shape for the NHWC view, (N, *spatial, 1)."""
    V.check_input(fn, input, 2)
    c = input.shape[1]
    if weight is not None:
        V.check_param(fn, "weight", weight, (c,), input)
    if bias is not None:
        V.check_param(fn, "bias", bias, (c,), input)
    eps = V.check_eps(fn, eps)
    if input.is_cuda:
        # timm's LayerNorm2d is F.layer_norm on a permuted view: under CUDA autocast it
        # computes in fp32 and returns fp32, as layer_norm does
        ac = _autocast_dtype("layer_norm", input)
        if ac is not None:
            input, weight, bias = (_cast(t, ac) for t in (input, weight, bias))
    if weight is not None or bias is not None:
        weight, bias = _param_dtypes(input, _layout.dense(weight), _layout.dense(bias))
    if _is_compiling():
        name = _backend.resolve_traced(fn, "layer_norm_2d", backend, input)
        if name == "native":
            out, mean, rstd = _native.layer_norm_2d(input, weight, bias, eps)
            mean, rstd = _detached(mean), _detached(rstd)
        else:
            out, mean, rstd = _ln2d.traced(_layout.spatial(input), weight, bias, eps, name)
    else:
        name, mod = _backend.resolve_module(fn, "layer_norm_2d", backend, input)
        if name == "native":
            out, mean, rstd = mod.layer_norm_2d(input, weight, bias, eps)
        else:
            out, mean, rstd = _ln2d.eager(_layout.spatial(input), weight, bias, eps, mod)
    return out, mean, rstd, eps, c


def layer_norm_2d(input: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                  eps: float = 1e-6, *, backend: Optional[str] = None) -> Tensor:
    """LayerNorm over the channels of an (N, C, *spatial) tensor: at each (n, position) the C
    values are normalized, then scaled by ``weight[c]`` and shifted by ``bias[c]`` -- timm's
    ``LayerNorm2d`` (``F.layer_norm`` on the NHWC view, permuted back), ConvNeXt's
    channels_first LayerNorm.  ``eps`` defaults to timm's 1e-6.  NCHW and channels_last
    inputs are read in place and the output keeps the input's memory format (on "native",
    torch's own kernels, it is what timm's composition returns: channels_last strides)."""
    return _layer_norm_2d("layer_norm_2d", input, weight, bias, eps, backend)[0]


# ------------------------------------------------------------------------------ group norm
def _group_norm(fn, input, num_groups, weight, bias, eps, activation, backend):
    """-> (out, mean (N, G), rstd (N, G), eps, count per group)."""
    V.check_input(fn, input, 2)
    c = input.shape[1]
    # the checks torch.nn.functional.group_norm makes, in its order: num_groups (0: a
    # division by zero; one value per group when training: ValueError; then int, > 0, divides
    # C), then weight and bias
    if type(num_groups) is not int or num_groups <= 0 or c % num_groups \
            or input.numel() == num_groups:
        V.check_num_groups(fn, num_groups, input)
        num_groups = int(num_groups)
    if weight is not None:
        V.check_param(fn, "weight", weight, (c,), input)
    if bias is not None:
        V.check_param(fn, "bias", bias, (c,), input)
    eps = V.check_eps(fn, eps)
    act = "" if activation is None else V.check_activation(fn, activation)
    if input.is_cuda:
        ac = _autocast_dtype(fn, input)
        if ac is not None:
            input, weight, bias = (_cast(t, ac) for t in (input, weight, bias))
    x = _layout.spatial(input)
    if weight is not None or bias is not None:
        weight, bias = _param_dtypes(input, _layout.dense(weight), _layout.dense(bias))
    extra = "" if not act else "activation='silu'"
    if _is_compiling():
        name = _backend.resolve_traced(fn, "group_norm", backend, input, extra)
        if name == "native":
            out, mean, rstd = _native.group_norm(x, weight, bias, num_groups, eps)
            mean, rstd = _detached(mean), _detached(rstd)
        else:
            out, mean, rstd = _gn.traced(x, weight, bias, num_groups, eps, act, name)
    else:
        name, mod = _backend.resolve_module(fn, "group_norm", backend, input, extra)
        if name == "native":
            out, mean, rstd = mod.group_norm(x, weight, bias, num_groups, eps)
        else:
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
def _check_bool(fn, name, v):
    if v is not True and v is not False:
        V.fail(fn, TypeError, f"{name}={v!r}; expected a bool")


def _check_running_pair(fn, running_mean, running_var):
    """torch's rule (in training) for one running buffer without the other."""
    if (running_mean is None) != (running_var is None):
        V.fail(fn, ValueError, "running_mean and running_var must either both be None or "
               "neither be None; got "
               f"running_mean={'None' if running_mean is None else 'Tensor'}, "
               f"running_var={'None' if running_var is None else 'Tensor'}")


def _batch_norm_low_dim(fn, input, running_mean, running_var, weight, bias, training, eps):
    """0-D and 1-D inputs, as torch.nn.functional.batch_norm treats them: an empty 1-D input
    comes back as an empty copy (through weight[0] and bias[0], as torch does, so autograd
    reaches them); anything else has no channel dim and is refused with torch's exception."""
    shape = tuple(input.shape)
    if training and input.dim() == 0:
        V.fail(fn, IndexError, "input is 0-dimensional; expected (N, C) or (N, C, *spatial)")
    if training and input.numel() == 1:
        V.fail(fn, ValueError, f"expected more than 1 value per channel when training, got "
               f"input of shape {shape}")
    V.check_batch_norm_eps(fn, eps, training)
    if input.numel() == 0 and input.dim() == 1:
        out = input.clone()
        if weight is not None:
            out = out * weight[0]
        if bias is not None:
            out = out + bias[0]
        return out, None, None, None, eps, 0
    if running_mean is None and not training:
        V.fail(fn, RuntimeError, "running_mean must be defined in evaluation mode (and input "
               f"of shape {shape} has no channel dim; expected (N, C) or (N, C, *spatial))")
    exc = IndexError if running_mean is None else RuntimeError
    V.fail(fn, exc, f"input has {input.dim()} dims (shape {shape}): no channel dim; expected "
           "(N, C) or (N, C, *spatial)")


def _batch_norm(fn, input, running_mean, running_var, weight, bias, training, momentum, eps,
                backend, num_batches_tracked=None, eps_rule=True):
    """-> (out, mean, rstd, biased var or None, eps, count).

    Training updates running_mean / running_var in place, inside the backend's kernels:
    running = (1 - f) * running + f * batch (unbiased variance), f = momentum, or, with
    ``momentum=None`` (the modules' cumulative average), f = 1 / num_batches_tracked after
    the backend has added 1 to it -- all on the device, no host synchronization.  The
    running buffers keep their dtype (any floating dtype: the kernels load and store it).
    The statistics are None where the backend computes none ("native" in eval).
    ``eps_rule=False``: without torch.nn.functional.batch_norm's eps check (InstanceNorm's
    eval path, which torch computes with any eps)."""
    V.check_input(fn, input)
    if training is not True and training is not False:
        _check_bool(fn, "training", training)
    eps = V.check_eps(fn, eps)
    if input.dim() < 2:
        return _batch_norm_low_dim(fn, input, running_mean, running_var, weight, bias,
                                   training, eps)
    count = input.shape[0]
    for s in input.shape[2:]:
        count *= s
    if training:
        if count == 1:  # torch.nn.functional.batch_norm's check (before eps's)
            V.fail(fn, ValueError, f"expected more than 1 value per channel when training, "
                   f"got input of shape {tuple(input.shape)}")
        if not eps > 0.0 and eps_rule:
            V.check_batch_norm_eps(fn, eps, True)
        if momentum is not None and type(momentum) is not float:
            momentum = V.check_momentum(fn, momentum)
        if (running_mean is None) != (running_var is None):
            _check_running_pair(fn, running_mean, running_var)
        if running_mean is None:
            num_batches_tracked = None  # nothing to update
    else:
        if eps < 0.0 and eps_rule:
            V.check_batch_norm_eps(fn, eps, False)
        if running_mean is None or running_var is None:
            missing = "running_mean" if running_mean is None else "running_var"
            V.fail(fn, RuntimeError, f"{missing} must be defined in evaluation mode (eval "
                   "normalizes with the running statistics); got "
                   f"running_mean={'None' if running_mean is None else 'Tensor'}, "
                   f"running_var={'None' if running_var is None else 'Tensor'}")
    c = V.check_channel_norm(fn, input, 2, weight, bias, running_mean, running_var,
                             numel_only=True)
    x = _layout.spatial(input)
    if weight is not None or bias is not None:
        weight, bias = _param_dtypes(input, _layout.dense(weight), _layout.dense(bias))
    rm, rm_orig = _dense_running(running_mean)
    rv, rv_orig = _dense_running(running_var)
    if _is_compiling():
        name = _backend.resolve_traced(fn, "batch_norm", backend, input)
        if name == "native":
            out, mean, rstd, var = _native_batch_norm(x, weight, bias, rm, rv, training, eps,
                                                      momentum, num_batches_tracked)
            mean, rstd = _detached(mean), _detached(rstd)
        else:
            out, mean, rstd, var = _bn.traced(x, weight, bias, rm, rv, training, eps,
                                              momentum, num_batches_tracked, name)
    else:
        name, mod = _backend.resolve_module(fn, "batch_norm", backend, input)
        if name == "native":
            out, mean, rstd, var = _native_batch_norm(x, weight, bias, rm, rv, training, eps,
                                                      momentum, num_batches_tracked)
        else:
            out, mean, rstd, var = _bn.eager(x, weight, bias, rm, rv, training, eps, momentum,
                                             num_batches_tracked, mod)
    if training and (rm_orig is not None or rv_orig is not None):
        _write_back((rm, rm_orig), (rv, rv_orig))
    return out, mean, rstd, var, eps, count if c else 0


def _native_batch_norm(x, weight, bias, rm, rv, training, eps, momentum, nbt):
    """torch's kernels, with fusednorm's rule for an empty batch: nothing normalized, the
    running statistics and num_batches_tracked untouched (torch's module counts it)."""
    if x.numel() == 0:
        nan = x.new_full((x.shape[1],), float("nan"), dtype=stat_dtype(x))
        out = x.clone()
        if weight is not None and weight.numel():
            out = out * weight[0]
        if bias is not None and bias.numel():
            out = out + bias[0]
        return out, nan, nan.clone(), None
    return _native.batch_norm(x, weight, bias, rm, rv, training, eps, momentum, nbt)


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
                   momentum, eps, backend, stats=True):
    """-> (out, mean (N, C) or None, rstd or None, eps, count per instance).  ``stats=False``:
    the caller does not read the statistics (the "native" backend may then skip them)."""
    V.check_input(fn, input)
    if use_input_stats is not True and use_input_stats is not False:
        _check_bool(fn, "use_input_stats", use_input_stats)
    spatial = math.prod(input.shape[2:])
    if use_input_stats and spatial == 1:  # also every input of fewer than 3 dims
        V.fail(fn, ValueError, f"expected more than 1 spatial element when training, got "
               f"input of shape {tuple(input.shape)}")
    if input.dim() < 2:
        V.fail(fn, IndexError, f"input has {input.dim()} dims (shape {tuple(input.shape)}): "
               "no channel dim; expected (N, C, *spatial)")
    eps = V.check_eps(fn, eps)
    c = V.check_channel_norm(fn, input, 2, weight, bias, running_mean, running_var)
    if (running_mean is None) != (running_var is None):
        _check_running_pair(fn, running_mean, running_var)
    if type(momentum) is not float:
        momentum = V.check_momentum(fn, momentum)
    if not use_input_stats:
        if running_mean is None or running_var is None:
            V.fail(fn, RuntimeError, "running_mean and running_var are required when "
                   "use_input_stats=False")
        # Normalizing every instance with the running statistics is BatchNorm's eval path
        # (without BatchNorm's eps rule: torch's instance_norm computes with any eps).
        out = _batch_norm(fn, input, running_mean, running_var, weight, bias, False, momentum,
                          eps, backend, eps_rule=False)[0]
        return out, None, None, eps, spatial
    track = running_mean is not None
    x = _layout.spatial(input)
    if weight is not None or bias is not None:
        weight, bias = _param_dtypes(input, _layout.dense(weight), _layout.dense(bias))
    update = track and input.numel() > 0
    if update:
        rm, rm_orig = _dense_running(running_mean)
        rv, rv_orig = _dense_running(running_var)
    # InstanceNorm is GroupNorm with one group per channel (statistics with torch's batch-norm
    # rule for eps == 0: a zero-variance instance gets rstd 0, not inf); the running
    # statistics (the batch average of the instance mean and unbiased variance) are updated
    # by the backend.
    if _is_compiling():
        name = _backend.resolve_traced(fn, "group_norm", backend, input)
        if name == "native":
            out, mean, rstd = _native.instance_norm(x, weight, bias, rm if update else None,
                                                    rv if update else None, momentum, eps)
            mean, rstd = _detached(mean), _detached(rstd)
        else:
            out, mean, rstd = _gn.traced(x, weight, bias, c, eps, "", name, True)
            if update:
                _gn.instance_norm_running_traced(mean, _running_rstd(rstd, eps), rm, rv,
                                                 momentum, eps, spatial, name)
    else:
        name, mod = _backend.resolve_module(fn, "group_norm", backend, input)
        if name == "native":
            out, mean, rstd = mod.instance_norm(x, weight, bias, rm if update else None,
                                                rv if update else None, momentum, eps, stats)
        else:
            out, mean, rstd = _gn.eager(x, weight, bias, c, eps, "", mod, True)
            if update:
                mod.instance_norm_running(mean, _running_rstd(rstd, eps), rm, rv, momentum,
                                          eps, spatial)
    if update and (rm_orig is not None or rv_orig is not None):
        _write_back((rm, rm_orig), (rv, rv_orig))
    return out, mean, rstd, eps, spatial


def _running_rstd(rstd, eps):
    """The rstd the running-variance update recovers var from: with eps == 0 a zero-variance
    instance carries rstd 0 (torch's rule), whose variance is 0, i.e. rstd inf."""
    if eps != 0.0:
        return rstd
    return rstd.masked_fill(rstd == 0, math.inf)


def instance_norm(input: Tensor, running_mean: Optional[Tensor] = None,
                  running_var: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5, *,
                  backend: Optional[str] = None) -> Tensor:
    """InstanceNorm (torch.nn.functional.instance_norm): per (sample, channel) statistics;
    running statistics, when given, are updated with the batch average of the instance mean
    and unbiased variance."""
    return _instance_norm("instance_norm", input, running_mean, running_var, weight, bias,
                          use_input_stats, momentum, eps, backend, stats=False)[0]
