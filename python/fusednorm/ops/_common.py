import torch

from .. import _backend

EMPTY_SHAPE = (0,)


def none_if_empty(t):
    return None if t is None or t.numel() == 0 and t.dim() == 1 and t.shape[0] == 0 else t


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
    return mod


def stat_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32
