"""fusednorm: fused normalization kernels for PyTorch.

    fusednorm.layer_norm / rms_norm / group_norm / instance_norm / batch_norm
        drop-in functions with torch.nn.functional's signatures (extras keyword-only)
    fusednorm.nn.LayerNorm, RMSNorm, GroupNorm, BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d
        drop-in modules (subclasses of torch.nn's)
    fusednorm.convert(model)   swap a model's torch.nn norms in place
    fusednorm.available_backends()

Importing fusednorm registers the torch.library ops and nothing else: no device queries,
no environment reads, no kernel compilation.
"""
from . import nn, ops  # noqa: F401
from ._backend import available_backends
from .convert import convert
from .functional import batch_norm, group_norm, instance_norm, layer_norm, rms_norm

__version__ = "0.1.0"
__all__ = ["layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm",
           "available_backends", "convert", "nn"]
