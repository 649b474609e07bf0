"""Public functions: validate, pick the backend, reshape, call the op, update running stats.

Signatures mirror torch.nn.functional; everything fusednorm adds is keyword-only.  The
``_*_stats`` variants also return the statistics the op computed (fp32 device tensors), which
the modules hand to a statistics hook (see fusednorm.monitor) without any extra pass.
"""
import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _backend
from . import _validate as V
from .ops import batch_norm as _bn_ops
from .ops import group_norm as _gn_ops
from .ops import layer_norm as _ln_ops
from .ops._common import opt, stat_dtype

__all__ = ["layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm"]


# --------------------------------------------------------------------------- layout helpers
def _as_rows(t: Tensor, nd: int) -> Tensor:
    """(M, N) view of t, N = the product of its last ``nd`` dims, with unit stride along N and
    rows at least N apart (M and N are computed, so a 0-sized dim on either side works).

    The one deliberate copy of the row path: a tensor whose last dims cannot be viewed so
    (a strided last dim, overlapping rows) is made contiguous here and nowhere else.
    """
    m, n = math.prod(t.shape[:t.dim() - nd]), math.prod(t.shape[t.dim() - nd:])
    rows = t.reshape(m, n)
    if rows.shape[0] > 1 and rows.stride(0) < n or (n > 1 and rows.stride(1) != 1):
        rows = rows.contiguous()
    return rows


def _spatial_layout(x: Tensor) -> Tensor:
    """x itself when contiguous or channels_last(_3d); otherwise one deliberate copy.

    Kernels read NCHW and channels_last in place; any other layout (a transposed or sliced
    view) is copied to contiguous NCHW here, and only here.
    """
    if x.is_contiguous():
        return x
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return x
    return x.contiguous()


# -------------------------------------------------------------------------------- autocast
# torch's CUDA autocast runs layer_norm and group_norm in fp32 (ATen's autocast fp32 list):
# under it, torch's modules return fp32 from fp16/bf16 inputs.  Drop-in means the same here.
_AUTOCAST_FP32_CUDA = frozenset({"layer_norm", "group_norm"})
_rms_autocast_dtype = {}


def _autocast_dtype(op: str, x: Tensor):
    """The dtype torch's own op would compute in for x under the active autocast, or None
    when autocast leaves x alone."""
    if x.device.type != "cuda" or x.dtype not in (torch.float16, torch.bfloat16) \
            or not torch.is_autocast_enabled("cuda"):
        return None
    if op in _AUTOCAST_FP32_CUDA:
        return torch.float32
    if op == "rms_norm" and not torch.compiler.is_compiling():
        # rms_norm is not on the documented list; what torch does depends on its version,
        # so ask it once per dtype (a one-element call) and do the same.
        key = (x.dtype, torch.get_autocast_dtype("cuda"))
        if key not in _rms_autocast_dtype:
            probe = torch.ones(1, 2, device=x.device, dtype=x.dtype)
            _rms_autocast_dtype[key] = torch.nn.functional.rms_norm(probe, (2,)).dtype
        return _rms_autocast_dtype[key] if _rms_autocast_dtype[key] != x.dtype else None
    return None


def _cast(t, dtype):
    return t if t is None or dtype is None else t.to(dtype)


def _param_dtypes(x: Tensor, *params):
    """Affine parameters / running stats as the kernels take them: all in x's dtype, or all
    fp32.  Any other mix (fp32 x with fp16 weight, bf16 weight with fp16 bias, ...) is cast
    to fp32 here -- torch.nn accepts some of these, and autograd casts the gradient back."""
    present = [p for p in params if p is not None]
    if all(p.dtype == x.dtype for p in present) or all(p.dtype == torch.float32 for p in present):
        return params
    return tuple(None if p is None else p.float() for p in params)


# ------------------------------------------------------------------------ layer / rms norm
def _layer_norm_stats(fn, input, normalized_shape, weight, bias, eps, residual, prenorm,
                      backend, rms):
    V.check_input(fn, input)
    shape = V.normalized_shape_tuple(fn, normalized_shape, input)
    V.check_param(fn, "weight", weight, shape, input)
    V.check_param(fn, "bias", bias, shape, input)
    V.check_residual(fn, residual, input)
    if not isinstance(prenorm, bool):
        V.fail(fn, TypeError, f"prenorm={prenorm!r}; expected a bool")
    ac = _autocast_dtype(fn, input)
    if ac is not None:
        input, residual, weight, bias = (_cast(t, ac) for t in (input, residual, weight, bias))
    if rms and eps is None:
        # torch's default: the eps of the dtype the norm computes in (float32 for fp16/bf16
        # inputs, float64 for float64), not of the input dtype
        eps = torch.finfo(stat_dtype(input)).eps
    eps = V.check_eps(fn, eps)
    name = _backend.resolve(fn, "layer_norm", backend, input)
    n = math.prod(shape)
    x2 = _as_rows(input, len(shape))
    r2 = _as_rows(residual, len(shape)) if residual is not None else None
    # kernels index the affine parameters as dense (N,) vectors: a strided or expanded view
    # (weight[::2], w.expand(n)) is copied here; autograd routes the gradient back to it
    w, b = (None if p is None else p.reshape(-1).contiguous() for p in (weight, bias))
    w, b = _param_dtypes(input, w, b)
    out, xsum, mean, rstd = _ln_ops.layer_norm_fwd(x2, r2, w, b, eps, rms, name)
    out = out.view(input.shape)
    stats = {"mean": opt(mean), "rstd": rstd, "var": None, "eps": eps, "count": n}
    if prenorm:
        return (out, xsum.view(input.shape) if residual is not None else input), stats
    return out, stats


def layer_norm(input: Tensor, normalized_shape: Union[int, Sequence[int]],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               eps: float = 1e-5, *, residual: Optional[Tensor] = None, prenorm: bool = False,
               backend: Optional[str] = None):
    """LayerNorm over the trailing ``normalized_shape`` dims (torch.nn.functional.layer_norm).

    With ``residual`` the norm is applied to ``input + residual``; ``prenorm=True`` returns
    ``(out, input + residual)``, the sum a pre-norm transformer carries forward.
    """
    return _layer_norm_stats("layer_norm", input, normalized_shape, weight, bias, eps,
                             residual, prenorm, backend, rms=False)[0]


def rms_norm(input: Tensor, normalized_shape: Union[int, Sequence[int]],
             weight: Optional[Tensor] = None, eps: Optional[float] = None, *,
             residual: Optional[Tensor] = None, prenorm: bool = False,
             backend: Optional[str] = None):
    """RMSNorm (torch.nn.functional.rms_norm); ``eps=None`` is torch's default, the machine
    epsilon of the compute dtype (float32 for fp16/bf16/fp32 inputs, float64 for float64)."""
    return _layer_norm_stats("rms_norm", input, normalized_shape, weight, None, eps,
                             residual, prenorm, backend, rms=True)[0]


# ------------------------------------------------------------------------------ group norm
def _group_norm_stats(fn, input, num_groups, weight, bias, eps, activation, backend):
    c = V.check_channel_norm(fn, input, 2, weight=weight, bias=bias)
    V.check_num_groups(fn, num_groups, c)
    num_groups = int(num_groups)
    eps = V.check_eps(fn, eps)
    act = V.check_activation(fn, activation)
    ac = _autocast_dtype(fn, input)
    if ac is not None:
        input, weight, bias = (_cast(t, ac) for t in (input, weight, bias))
    name = _backend.resolve(fn, "group_norm", backend, input)
    x = _spatial_layout(input)
    weight, bias = _param_dtypes(input, weight, bias)
    out, mean, rstd = _gn_ops.group_norm_fwd(x, weight, bias, num_groups, eps, act, name)
    count = (input.numel() // max(input.shape[0], 1)) // num_groups if input.shape[0] else 0
    return out, {"mean": mean, "rstd": rstd, "var": None, "eps": eps, "count": count}


def group_norm(input: Tensor, num_groups: int, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5, *,
               activation: Optional[str] = None, backend: Optional[str] = None) -> Tensor:
    """GroupNorm (torch.nn.functional.group_norm), optionally fused with SiLU
    (``activation="silu"``).  NCHW and channels_last inputs are read in place and the output
    keeps the input's memory format."""
    return _group_norm_stats("group_norm", input, num_groups, weight, bias, eps, activation,
                             backend)[0]


# ------------------------------------------------------------------------------ batch norm
def _update_running(running_mean, running_var, mean, var_unbiased, momentum):
    """running <- (1 - momentum) * running + momentum * batch, on the device (momentum may
    be a 0-dim tensor, e.g. 1 / num_batches_tracked, so no host synchronization)."""
    with torch.no_grad():
        for buf, batch in ((running_mean, mean), (running_var, var_unbiased)):
            if buf is None:
                continue
            # computed in fp32 (fp64 for fp64 buffers) and rounded once, as torch does
            acc = torch.promote_types(buf.dtype, torch.float32)
            buf.copy_(buf.to(acc) * (1 - momentum) + batch.to(acc) * momentum)


def _batch_norm_stats(fn, input, running_mean, running_var, weight, bias, training, momentum,
                      eps, backend):
    c = V.check_channel_norm(fn, input, 2, weight=weight, bias=bias,
                             running_mean=running_mean, running_var=running_var)
    eps = V.check_eps(fn, eps)
    if not training and (running_mean is None or running_var is None):
        V.fail(fn, RuntimeError, "running_mean and running_var are required when "
               "training=False (eval mode normalizes with the running statistics); got "
               f"running_mean={'None' if running_mean is None else 'Tensor'}, "
               f"running_var={'None' if running_var is None else 'Tensor'}")
    count = input.numel() // c if c else 0
    if training and input.numel() > 0 and count <= 1:
        V.fail(fn, ValueError, f"expected more than 1 value per channel when training, got "
               f"input of shape {tuple(input.shape)}")
    name = _backend.resolve(fn, "batch_norm", backend, input)
    x = _spatial_layout(input)
    w, b = _param_dtypes(input, weight, bias)
    rm, rv = _param_dtypes(input, running_mean, running_var)
    out, mean, rstd, var = _bn_ops.batch_norm_fwd(x, w, b, rm, rv, training, eps, name)
    if training and input.numel() > 0:
        _update_running(running_mean, running_var, mean, var * (count / (count - 1)),
                        momentum)
    stats = {"mean": mean, "rstd": rstd, "var": var, "eps": eps, "count": count}
    return out, (stats if training else None)


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5, *,
               backend: Optional[str] = None) -> Tensor:
    """BatchNorm (torch.nn.functional.batch_norm) for (N, C), (N, C, L), (N, C, H, W) and
    (N, C, D, H, W).  In training the running statistics are updated in place exactly as
    torch does (unbiased variance), on the device; an empty batch leaves them untouched."""
    return _batch_norm_stats("batch_norm", input, running_mean, running_var, weight, bias,
                             training, momentum, eps, backend)[0]


# --------------------------------------------------------------------------- instance norm
def _instance_norm_stats(fn, input, running_mean, running_var, weight, bias, use_input_stats,
                         momentum, eps, backend):
    c = V.check_channel_norm(fn, input, 3, weight=weight, bias=bias,
                             running_mean=running_mean, running_var=running_var)
    eps = V.check_eps(fn, eps)
    spatial = math.prod(input.shape[2:])
    if not use_input_stats:
        if running_mean is None or running_var is None:
            V.fail(fn, RuntimeError, "running_mean and running_var are required when "
                   "use_input_stats=False")
        # Normalizing every instance with the running statistics is BatchNorm's eval path.
        return _batch_norm_stats(fn, input, running_mean, running_var, weight, bias, False,
                                 momentum, eps, backend)[0], None
    if input.numel() > 0 and spatial <= 1:
        V.fail(fn, ValueError, f"expected more than 1 spatial element when training, got "
               f"input of shape {tuple(input.shape)}")
    name = _backend.resolve(fn, "group_norm", backend, input)
    x = _spatial_layout(input)
    # InstanceNorm is GroupNorm with one group per channel.
    w, b = _param_dtypes(input, weight, bias)
    out, mean, rstd = _gn_ops.group_norm_fwd(x, w, b, c, eps, "", name)
    if input.numel() > 0 and (running_mean is not None or running_var is not None):
        with torch.no_grad():
            # The op returns rstd, not var: var = 1/rstd^2 - eps (relative error about
            # 2^-23 * (1 + eps/var) in fp32), clamped at 0, then made unbiased.
            var = (rstd.double().reciprocal().square() - eps).clamp_min(0)
            var_unbiased = (var * (spatial / (spatial - 1))).mean(0)
            _update_running(running_mean, running_var, mean.double().mean(0), var_unbiased,
                            momentum)
    return out, {"mean": mean, "rstd": rstd, "var": None, "eps": eps, "count": spatial}


def instance_norm(input: Tensor, running_mean: Optional[Tensor] = None,
                  running_var: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5, *,
                  backend: Optional[str] = None) -> Tensor:
    """InstanceNorm (torch.nn.functional.instance_norm): per (sample, channel) statistics;
    running statistics, when given, are updated with the batch average of the instance mean
    and unbiased variance."""
    return _instance_norm_stats("instance_norm", input, running_mean, running_var, weight,
                                bias, use_input_stats, momentum, eps, backend)[0]
