"""The "reference" backend: fusednorm's pure-PyTorch forward and explicit backward -- the
oracle of the tests, the float64 implementation, and what CPU calls with a fusednorm extra
(residual, fused SiLU) run.  Not torch's own kernels: those are the "native" backend.

Each module implements the backend contract (``fusednorm/backends/__init__.py``) with the
same math the kernels implement and saving only what they save (fp32 mean/rstd, the input,
the weight).  Arithmetic is float32 for fp16/bf16/fp32 inputs and float64 for float64 inputs
(statistics then come back in float64, so gradcheck sees exact derivatives).
"""
import torch

from .batch_norm import batch_norm_bwd, batch_norm_fwd
from .group_norm import group_norm_bwd, group_norm_fwd, instance_norm_running
from .layer_norm import layer_norm_bwd, layer_norm_fwd
from .layer_norm_2d import layer_norm_2d_bwd, layer_norm_2d_fwd

SUPPORTED = frozenset({"layer_norm", "group_norm", "batch_norm", "layer_norm_2d"})
DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64})

__all__ = ["SUPPORTED", "DTYPES", "layer_norm_fwd", "layer_norm_bwd", "group_norm_fwd",
           "group_norm_bwd", "instance_norm_running", "batch_norm_fwd", "batch_norm_bwd",
           "layer_norm_2d_fwd", "layer_norm_2d_bwd"]
