"""fusednorm.convert: swap torch.nn norm modules for fusednorm's, in place."""
from typing import Optional

import torch

from . import _backend
from .nn import SWAPS

_FUSED = frozenset(SWAPS.values())


def convert(module: torch.nn.Module, *, backend: Optional[str] = None) -> torch.nn.Module:
    """Swap every torch.nn norm module inside ``module`` (and ``module`` itself) for its
    fusednorm counterpart, in place, and return ``module``.

    The swap changes the object's class only, so parameters, buffers, device, dtype,
    train/eval mode, hooks and any optimizer state that refers to the parameters are kept.
    Only exact torch classes are swapped (a user subclass may override forward).  Converting
    twice is harmless; ``backend`` (None for the per-call default) is recorded on each
    converted module, also on modules converted before.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"fusednorm.convert: module must be a torch.nn.Module, got "
                        f"{type(module).__name__}")
    if backend not in (None, "auto") and backend not in _backend._MODULES:
        raise ValueError(f"fusednorm.convert: backend={backend!r}; expected None, 'auto' or "
                         f"one of {sorted(_backend._MODULES)}")
    for m in module.modules():
        cls = SWAPS.get(type(m))
        if cls is not None:
            m.__class__ = cls
        if type(m) in _FUSED:
            if backend is None:
                m.__dict__.pop("_fusednorm_backend", None)
            else:
                m._fusednorm_backend = backend
    return module
