import torch

from .. import _backend
from ..reference._common import acc_dtype

EMPTY_SHAPE = (0,)


def opt(t):
    """None -> None; absent-as-empty (a 1-D tensor with 0 elements) -> None."""
    return None if t is None or (t.dim() == 1 and t.shape[0] == 0) else t


def empty_marker(like: torch.Tensor, dtype=None):
    return like.new_empty(EMPTY_SHAPE, dtype=dtype or like.dtype)


def or_empty(t, like, dtype=None):
    return empty_marker(like, dtype) if t is None else t


def backend_module(name: str):
    mod = _backend.get(name)
    if mod is None:  # resolve() already raised for explicit requests; this is a safety net
        raise RuntimeError(f"fusednorm: backend {name!r} is not available: "
                           f"{_backend.available_backends()[name]}")
    if getattr(mod, "NATIVE", False):  # torch's own ops are called directly, never from here
        raise RuntimeError(f"fusednorm: backend {name!r} runs torch's own ops, not through "
                           "fusednorm's custom ops")
    return mod


def stat_dtype(x: torch.Tensor) -> torch.dtype:
    """dtype of the statistics every backend returns: float64 for float64 x, else float32."""
    return acc_dtype(x.dtype)


def laid_out_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t itself when it has x's strides, else copied into x's memory layout (the contract
    hands kernels dy laid out like x)."""
    if t.stride() == x.stride():
        return t
    out = torch.empty_like(x, dtype=t.dtype)
    out.copy_(t)
    return out


_C_APPLY = torch._C._FunctionBase.__dict__.get("apply")


def fast_apply(fn_cls):
    """``fn_cls.apply`` without the Python wrapper's per-call work (binding default arguments
    for setup_context-style Functions, unwrapping functorch's dead wrappers): about 3 us of
    an eager call.  That work matters only under functorch transforms (vmap, grad, ...),
    which take the full ``apply``.  The eager Functions here define forward(ctx, ...) with
    every argument passed, so nothing else changes."""
    if _C_APPLY is None:  # a torch without the C entry point: the public one
        return fn_cls.apply
    bound = _C_APPLY.__get__(None, fn_cls)
    transforms_active = torch._C._are_functorch_transforms_active

    def apply(*args):
        if transforms_active():
            return fn_cls.apply(*args)
        return bound(*args)

    return apply
