"""Argument checks shared by every public function; one message style:

    fusednorm.<fn>: <argument>=<value> <what is wrong>; expected <what is expected>

What torch.nn.functional accepts, these accept; what it refuses, these refuse with the
exception type torch raises for the same mistake (code written against torch catches it):

    TypeError            a Python argument of the wrong type (torch's argument parser):
                         input / weight not a tensor, eps or momentum not a number,
                         normalized_shape or num_groups not ints
    NotImplementedError  an input dtype no kernel computes (integer, bool; complex except
                         in rms_norm) -- a subclass of RuntimeError, as in torch
    RuntimeError         shapes, devices and dtypes of tensors (ATen's TORCH_CHECKs):
                         normalized_shape vs input, weight/bias/running statistics vs C,
                         num_groups vs C, missing running statistics in eval
    ValueError           where torch.nn.functional's own Python code raises it: one value
                         per channel (batch_norm, group_norm) or one spatial element
                         (instance_norm) when training, BatchNorm's eps (> 0 in training,
                         >= 0 in eval), running_mean without running_var in training
    ZeroDivisionError    group_norm with num_groups=0 (torch.nn.functional divides by it)

eps may be any real number, as in torch (negative, inf, NaN: the norm computes with it).
fusednorm's own arguments (residual, prenorm, activation, backend) keep this style: shapes,
devices and dtypes of tensors RuntimeError, Python types TypeError, values ValueError.
"""
import math
import numbers
import operator
from typing import Optional, Sequence

import torch

FLOAT_DTYPES = frozenset((torch.float32, torch.float16, torch.bfloat16, torch.float64))
COMPLEX_DTYPES = frozenset((torch.complex64, torch.complex128))


def _is_int(v) -> bool:
    """An int, or an integer scalar such as numpy.int64 (torch.nn accepts those); not bool."""
    return not isinstance(v, bool) and (isinstance(v, int) or isinstance(v, numbers.Integral))


def fail(fn: str, exc, msg: str):
    raise exc(f"fusednorm.{fn}: {msg}")


def _shape(t) -> tuple:
    return tuple(t.shape)


def check_input(fn: str, x, min_dim: int = 0, what: str = "input", complex_ok: bool = False):
    # the common case first: a tensor of a floating dtype with enough dims, three tests
    if isinstance(x, torch.Tensor) and x.dtype in FLOAT_DTYPES and x.dim() >= min_dim:
        return
    if not isinstance(x, torch.Tensor):
        fail(fn, TypeError, f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES and not (complex_ok and x.dtype in COMPLEX_DTYPES):
        kinds = "float32, float16, bfloat16, float64" + (", complex64, complex128"
                                                         if complex_ok else "")
        fail(fn, NotImplementedError, f"{what} has dtype {x.dtype}; expected one of {kinds} "
             "(no kernel normalizes this dtype)")
    if x.dim() < min_dim:
        fail(fn, RuntimeError, f"{what} has {x.dim()} dims (shape {_shape(x)}); expected at "
             f"least {min_dim}")


def check_param(fn: str, name: str, p, shape: Sequence[int], x: torch.Tensor,
                numel_only: bool = False):
    """weight/bias/running stats: None, or a floating tensor of ``shape`` on x's device
    (``numel_only``: any shape with that many elements, as torch's batch_norm takes)."""
    if p is None:
        return
    if isinstance(p, torch.Tensor) and p.dtype in FLOAT_DTYPES and p.shape == shape \
            and p.device == x.device:
        return
    if not isinstance(p, torch.Tensor):
        fail(fn, TypeError, f"{name} must be a torch.Tensor or None, got {type(p).__name__}")
    if p.dtype not in FLOAT_DTYPES and not (x.is_complex() and p.dtype in COMPLEX_DTYPES):
        fail(fn, RuntimeError, f"{name} has dtype {p.dtype}; expected a floating dtype")
    if tuple(p.shape) != tuple(shape) and not (numel_only and p.numel() == math.prod(shape)):
        fail(fn, RuntimeError, f"{name} has shape {_shape(p)}; expected {tuple(shape)}")
    if p.device != x.device:
        fail(fn, RuntimeError, f"{name} is on {p.device} but input is on {x.device}; "
             "expected the same device")


def check_eps(fn: str, eps) -> float:
    """A real number, as torch takes it (numpy scalars too; negative, inf and NaN compute)."""
    if type(eps) is float:
        return eps
    if isinstance(eps, numbers.Real):
        return float(eps)
    fail(fn, TypeError, f"eps={eps!r}; expected a float")


def check_batch_norm_eps(fn: str, eps: float, training: bool):
    """torch.nn.functional.batch_norm's own rule: eps > 0 in training, >= 0 in eval."""
    if training and not (eps > 0.0 or eps != eps):  # NaN passes, as in torch
        fail(fn, ValueError, f"eps={eps!r} in training; expected eps > 0 (as "
             "torch.nn.functional.batch_norm)")
    if eps < 0.0:
        fail(fn, ValueError, f"eps={eps!r}; expected eps >= 0 (as "
             "torch.nn.functional.batch_norm)")


def normalized_shape_tuple(fn: str, normalized_shape, x: torch.Tensor):
    # common cases first: an int, or a tuple / torch.Size of ints matching the last dims
    t = type(normalized_shape)
    if t is int:
        if normalized_shape >= 0 and x.dim() >= 1 and x.shape[-1] == normalized_shape:
            return (normalized_shape,)
    elif t is tuple or t is torch.Size:
        k = len(normalized_shape)
        if 0 < k <= x.dim() and x.shape[x.dim() - k:] == normalized_shape and all(
                type(s) is int for s in normalized_shape):
            return tuple(normalized_shape)
    if _is_int(normalized_shape):
        shape = (operator.index(normalized_shape),)
    elif isinstance(normalized_shape, (tuple, list, torch.Size)) and all(
            _is_int(s) for s in normalized_shape):
        shape = tuple(operator.index(s) for s in normalized_shape)
    else:
        fail(fn, TypeError, f"normalized_shape={normalized_shape!r}; expected an int or a "
             "sequence of ints")
    if len(shape) == 0:
        fail(fn, RuntimeError, "normalized_shape=() is empty; expected at least one dim")
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
        fail(fn, RuntimeError, f"normalized_shape={shape} does not match input of shape "
             f"{_shape(x)}; expected input.shape[-{len(shape)}:] == {shape}")
    return shape


def check_residual(fn: str, residual, x: torch.Tensor):
    if residual is None:
        return
    if not isinstance(residual, torch.Tensor):
        fail(fn, TypeError, f"residual must be a torch.Tensor or None, got "
             f"{type(residual).__name__}")
    if residual.shape != x.shape:
        fail(fn, RuntimeError, f"residual has shape {_shape(residual)}; expected the input's "
             f"shape {_shape(x)}")
    if residual.dtype != x.dtype:
        fail(fn, RuntimeError, f"residual has dtype {residual.dtype}; expected the input's "
             f"dtype {x.dtype}")
    if residual.device != x.device:
        fail(fn, RuntimeError, f"residual is on {residual.device} but input is on "
             f"{x.device}; expected the same device")


def check_momentum(fn: str, momentum) -> float:
    """A real number (numpy scalars and ints included, as torch accepts them)."""
    if not isinstance(momentum, numbers.Real):
        fail(fn, TypeError, f"momentum={momentum!r}; expected a float")
    return float(momentum)


def check_num_groups(fn: str, num_groups, x: torch.Tensor):
    """torch.nn.functional.group_norm's checks in its order: N*C // num_groups first (0: a
    division by zero; one value per group: ValueError), then an int, > 0, dividing C."""
    n, c = x.shape[0], x.shape[1]
    if isinstance(num_groups, numbers.Real) and not isinstance(num_groups, bool):
        if num_groups == 0:
            fail(fn, ZeroDivisionError, "num_groups=0; expected a positive int")
        per_group = n * c // num_groups
        for s in x.shape[2:]:
            per_group *= s
        if per_group == 1:
            fail(fn, ValueError, f"expected more than 1 value per group when training, got "
                 f"input of shape {_shape(x)} and num_groups={num_groups!r}")
    if not _is_int(num_groups):
        fail(fn, TypeError, f"num_groups={num_groups!r}; expected an int")
    if num_groups < 0:
        fail(fn, RuntimeError, f"num_groups={num_groups}; expected a positive int")
    if c % num_groups != 0:
        fail(fn, RuntimeError, f"num_groups={num_groups} must divide channels={c}")


def check_activation(fn: str, activation: Optional[str]) -> str:
    if activation is None:
        return ""
    if activation != "silu":
        fail(fn, ValueError, f"activation={activation!r}; expected None or 'silu'")
    return activation


_CHANNEL_PARAMS = ("weight", "bias", "running_mean", "running_var")


def check_channel_norm(fn: str, x, min_dim: int, *params, numel_only: bool = False) -> int:
    """input of at least ``min_dim`` dims with channels at dim 1, and the per-channel tensors
    weight, bias[, running_mean, running_var] (in that order; each None or (C,)); returns C."""
    check_input(fn, x, min_dim)
    c = x.shape[1]
    shape = (c,)
    for name, p in zip(_CHANNEL_PARAMS, params):
        if p is not None:
            check_param(fn, name, p, shape, x, numel_only and name in ("weight", "bias"))
    return c
