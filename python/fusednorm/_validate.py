"""Argument checks shared by every public function; one message style:

    fusednorm.<fn>: <argument>=<value> <what is wrong>; expected <what is expected>

Checks raise TypeError for a wrong type or dtype, ValueError for a wrong value or shape,
RuntimeError for a state problem (e.g. eval BatchNorm without running statistics).
"""
import math
import numbers
import operator
from typing import Optional, Sequence

import torch

FLOAT_DTYPES = frozenset((torch.float32, torch.float16, torch.bfloat16, torch.float64))
_INF = math.inf


def _is_int(v) -> bool:
    """An int, or an integer scalar such as numpy.int64 (torch.nn accepts those); not bool."""
    return not isinstance(v, bool) and (isinstance(v, int) or isinstance(v, numbers.Integral))


def fail(fn: str, exc, msg: str):
    raise exc(f"fusednorm.{fn}: {msg}")


def check_input(fn: str, x, min_dim: int = 1, what: str = "input"):
    # the common case first: a tensor of a floating dtype with enough dims, three tests
    if isinstance(x, torch.Tensor) and x.dtype in FLOAT_DTYPES and x.dim() >= min_dim:
        return
    if not isinstance(x, torch.Tensor):
        fail(fn, TypeError, f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        fail(fn, TypeError, f"{what} has dtype {x.dtype}; expected one of float32, float16, "
             "bfloat16, float64 (integer and complex tensors cannot be normalized)")
    if x.dim() < min_dim:
        fail(fn, ValueError, f"{what} has {x.dim()} dims (shape {tuple(x.shape)}); expected "
             f"at least {min_dim}")


def check_param(fn: str, name: str, p, shape: Sequence[int], x: torch.Tensor):
    """weight/bias/running stats: None, or a floating tensor of ``shape`` on x's device."""
    if p is None:
        return
    if isinstance(p, torch.Tensor) and p.dtype in FLOAT_DTYPES and p.shape == shape \
            and p.device == x.device:
        return
    if not isinstance(p, torch.Tensor):
        fail(fn, TypeError, f"{name} must be a torch.Tensor or None, got {type(p).__name__}")
    if p.dtype not in FLOAT_DTYPES:
        fail(fn, TypeError, f"{name} has dtype {p.dtype}; expected a floating dtype")
    if tuple(p.shape) != tuple(shape):
        fail(fn, ValueError, f"{name} has shape {tuple(p.shape)}; expected {tuple(shape)}")
    if p.device != x.device:
        fail(fn, ValueError, f"{name} is on {p.device} but input is on {x.device}; expected "
             "the same device")


def check_eps(fn: str, eps):
    if type(eps) is float and 0.0 <= eps < _INF:
        return eps
    # a chained comparison, not math.isfinite: under torch.compile(dynamic=True) eps may be a
    # symbolic float, which math.isfinite would turn into a graph break
    if not isinstance(eps, (int, float)) and isinstance(eps, numbers.Real):
        eps = float(eps)  # numpy scalars from a parsed config, as torch.nn accepts them
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 <= eps < math.inf):
        fail(fn, ValueError, f"eps={eps!r}; expected a finite number >= 0")
    return float(eps)


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
        fail(fn, ValueError, "normalized_shape=() is empty; expected at least one dim")
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
        fail(fn, ValueError, f"normalized_shape={shape} does not match input of shape "
             f"{tuple(x.shape)}; expected input.shape[-{len(shape)}:] == {shape}")
    return shape


def check_residual(fn: str, residual, x: torch.Tensor):
    if residual is None:
        return
    if not isinstance(residual, torch.Tensor):
        fail(fn, TypeError, f"residual must be a torch.Tensor or None, got "
             f"{type(residual).__name__}")
    if residual.shape != x.shape:
        fail(fn, ValueError, f"residual has shape {tuple(residual.shape)}; expected the "
             f"input's shape {tuple(x.shape)}")
    if residual.dtype != x.dtype:
        fail(fn, TypeError, f"residual has dtype {residual.dtype}; expected the input's "
             f"dtype {x.dtype}")
    if residual.device != x.device:
        fail(fn, ValueError, f"residual is on {residual.device} but input is on {x.device}")


def check_momentum(fn: str, momentum) -> float:
    """A real number (numpy scalars included, as torch accepts them); not a bool."""
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        fail(fn, TypeError, f"momentum={momentum!r}; expected a float")
    return float(momentum)


def check_num_groups(fn: str, num_groups, channels: int):
    if not _is_int(num_groups) or num_groups <= 0:
        fail(fn, ValueError, f"num_groups={num_groups!r}; expected a positive int")
    if channels % num_groups != 0:
        fail(fn, ValueError, f"num_groups={num_groups} must divide channels={channels}")


def check_activation(fn: str, activation: Optional[str]) -> str:
    if activation is None:
        return ""
    if activation != "silu":
        fail(fn, ValueError, f"activation={activation!r}; expected None or 'silu'")
    return activation


_CHANNEL_PARAMS = ("weight", "bias", "running_mean", "running_var")


def check_channel_norm(fn: str, x, min_dim: int, *params) -> int:
    """input of at least ``min_dim`` dims with channels at dim 1, and the per-channel tensors
    weight, bias[, running_mean, running_var] (in that order; each None or (C,)); returns C."""
    check_input(fn, x, min_dim)
    c = x.shape[1]
    shape = (c,)
    for name, p in zip(_CHANNEL_PARAMS, params):
        if p is not None:
            check_param(fn, name, p, shape, x)
    return c
