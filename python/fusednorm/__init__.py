"""fusednorm: fused normalization kernels for PyTorch.

    fusednorm.layer_norm / rms_norm / group_norm / instance_norm / batch_norm
        drop-in functions with torch.nn.functional's signatures (extras keyword-only)
    fusednorm.layer_norm_2d    LayerNorm over the channels of (N, C, H, W) (timm's LayerNorm2d)
    fusednorm.nn.LayerNorm, LayerNorm2d, RMSNorm, GroupNorm, BatchNorm1d/2d/3d,
        InstanceNorm1d/2d/3d: drop-in modules (subclasses of torch.nn's)
    fusednorm.convert(model)   swap a model's torch.nn norms in place
    fusednorm.available_backends()

    fusednorm.monitor          internal-covariate-shift monitor (loaded on first access)

Importing fusednorm registers the torch.library ops and nothing else: no device queries,
no environment reads, no kernel compilation, and none of the optional pieces (``monitor``
and what it plots with are imported when ``fusednorm.monitor`` is first touched).
"""
import importlib as _importlib

from . import nn, ops  # noqa: F401
from ._backend import available_backends
from .convert import convert
from .functional import (batch_norm, group_norm, instance_norm, layer_norm, layer_norm_2d,
                         rms_norm)

__version__ = "0.1.0"
_LAZY = ("monitor",)


def __getattr__(name):
    """PEP 562: ``fusednorm.monitor`` works after a plain ``import fusednorm``, and costs
    nothing until it is used."""
    if name in _LAZY:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["layer_norm", "rms_norm", "layer_norm_2d", "group_norm", "instance_norm",
           "batch_norm",
           "available_backends", "convert", "nn"]
