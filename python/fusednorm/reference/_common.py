import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def mean_var(x: torch.Tensor, dims):
    """Mean and biased variance over ``dims`` by two passes (never E[x^2] - E[x]^2).

    The second pass subtracts the mean before squaring, so data far from zero (mean 1e4,
    std 1) keeps its variance in float32.
    """
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).square().mean(dim=dims, keepdim=True)
    return mean, var


def like(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y cast to x's dtype, with exactly the strides torch.empty_like(x) would have."""
    out = torch.empty_like(x)
    out.copy_(y)
    return out


def channel(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (C,) per-channel tensor shaped to broadcast over x = (N, C, *spatial)."""
    return p.reshape(1, -1, *([1] * (x.dim() - 2)))
