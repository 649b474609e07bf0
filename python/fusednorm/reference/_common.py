import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def mean_var(x: torch.Tensor, dims):
    """Mean and biased variance over ``dims`` by two passes (never E[x^2] - E[x]^2).

    The second pass subtracts the mean before squaring, so data far from zero (mean 1e4,
    std 1) keeps its variance in float32.
    The mean itself is taken of x - K, K = one element of each reduced slice: a float32 sum
    over dims at the data's magnitude loses several ulps of |mean| (3 ulp of 1e4 over 64 x 8 x 8
    values per channel, where torch's batch_norm is within half an ulp); shifted, the sum is of
    O(std) values and K + mean rounds once.
    """
    dims = [d % x.dim() for d in ([dims] if isinstance(dims, int) else dims)]
    shift = x
    if all(x.shape[d] > 0 for d in dims):
        for dim in dims:
            shift = shift.narrow(dim, 0, 1)
        xs = x - shift
    else:
        shift, xs = 0.0, x
    m = xs.mean(dim=dims, keepdim=True)
    var = (xs - m).square().mean(dim=dims, keepdim=True)
    return shift + m, var


def like(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y cast to x's dtype, with exactly the strides torch.empty_like(x) would have."""
    out = torch.empty_like(x)
    out.copy_(y)
    return out


def channel(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (C,) per-channel tensor shaped to broadcast over x = (N, C, *spatial)."""
    return p.reshape(1, -1, *([1] * (x.dim() - 2)))
