"""The math of each adapter: one small function per rounding order, built from fusednorm's
public ops and plain torch ops.

fusednorm's fused ops compute statistics, x̂ and x̂·w (+ b) in fp32 and round once to the
input's dtype.  Where a library rounds at another point (Llama rounds x̂ to the input dtype and
then multiplies by the weight in the promoted dtype), the function below says which
composition reproduces that order; a later change can fuse each one in place.

Every function returns what the original returns, in its dtype, also under autocast (where
fusednorm's ops may hand back fp32, the explicit ``.to`` rounds once to the original's dtype).
"""
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..functional import layer_norm, layer_norm_2d as _layer_norm_2d, rms_norm

HALF = (torch.float16, torch.bfloat16)


def rms(x: Tensor, eps: float, weight: Optional[Tensor] = None, backend=None) -> Tensor:
    """RMSNorm over the last dim: mean(x²), x·rstd (·weight) in fp32, one rounding to x.dtype."""
    return rms_norm(x, (x.shape[-1],), weight, eps, backend=backend).to(x.dtype)


def rms_then_scale(x: Tensor, weight: Tensor, eps: float, backend=None) -> Tensor:
    """Llama:  w * (x̂ rounded to x.dtype), the product in the promoted dtype of w and x.
    Composition: rms_norm without weight (one rounding), then the multiply (a second one)."""
    return weight * rms(x, eps, backend=backend)


def rms_scaled_once(x: Tensor, scale32: Tensor, eps: float, backend=None) -> Tensor:
    """(x̂ · scale) in fp32, one rounding to x.dtype (GPT-OSS, Helium, Moshi: scale = w in fp32;
    Gemma: scale = 1 + w in fp32).  A (N,) scale rides in the fused op as its weight; any other
    shape (a per-head weight) is applied to the fp32 x̂ before the one rounding."""
    n = x.shape[-1]
    if tuple(scale32.shape) == (n,):
        return rms(x, eps, scale32, backend)
    return (rms(x.float(), eps, backend=backend) * scale32).to(x.dtype)


def rms_fp32_then_weight(x: Tensor, weight: Tensor, eps: float, backend=None) -> Tensor:
    """T5:  h = x · rstd in fp32; h rounded to the weight's dtype when that is fp16/bf16; then
    w * h.  Composition: rms_norm without weight, rounded once to the weight's half dtype (on x
    itself when x has that dtype, else on x in fp32), then the multiply; for an fp32 (or fp64)
    weight, rms_norm on x in fp32 (fp32 output) times w."""
    if weight.dtype in HALF:
        if x.dtype == weight.dtype:
            return weight * rms(x, eps, backend=backend)
        return weight * rms(x.float(), eps, backend=backend).to(weight.dtype)
    return weight * rms(x.float(), eps, backend=backend)


def layer_norm_scaled_once(x: Tensor, weight32: Tensor, eps: float, backend=None) -> Tensor:
    """Cohere:  LayerNorm over the last dim without bias, (x̂ · w) in fp32, one rounding to
    x.dtype.  A (N,) weight rides in the fused op; a per-head weight multiplies the fp32 x̂."""
    n = x.shape[-1]
    if tuple(weight32.shape) == (n,):
        return layer_norm(x, (n,), weight32, None, eps, backend=backend).to(x.dtype)
    return (layer_norm(x.float(), (n,), None, None, eps, backend=backend)
            * weight32).to(x.dtype)


def layer_norm_fp32(x: Tensor, normalized_shape: Sequence[int], weight: Optional[Tensor],
                    bias: Optional[Tensor], eps: float, backend=None) -> Tensor:
    """LayerNorm of x in fp32 with fp32 parameters, rounded once to x.dtype (timm's
    LayerNormFp32, diffusers' FP32LayerNorm): the fused op with the parameters in fp32 (it
    computes in fp32 whatever x's dtype), then ``.to(x.dtype)`` for autocast's fp32 output."""
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return layer_norm(x, normalized_shape, w, b, eps, backend=backend).to(x.dtype)


def rms_norm_fp32(x: Tensor, normalized_shape: Sequence[int], weight: Optional[Tensor],
                  eps: Optional[float], backend=None) -> Tensor:
    """RMSNorm of x in fp32 with an fp32 weight, rounded once to x.dtype (timm's RmsNormFp32)."""
    w = None if weight is None else weight.float()
    return rms_norm(x, normalized_shape, w, eps, backend=backend).to(x.dtype)


def layer_norm_2d(x: Tensor, normalized_shape: Sequence[int], weight: Optional[Tensor],
                  bias: Optional[Tensor], eps: float, backend=None) -> Tensor:
    """LayerNorm over the channels of an NCHW tensor (timm's LayerNorm2d, the channels_first
    ConvNeXt LayerNorms): ``fusednorm.layer_norm_2d``, which reads NCHW and channels_last in
    place (no permuted copies); on torch's native kernels it is the original's composition
    itself.  ``normalized_shape`` is the module's (C,), x.shape[1]."""
    return _layer_norm_2d(x, weight, bias, eps, backend=backend)
