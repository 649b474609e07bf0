"""GroupNorm (and InstanceNorm as G = C) over (N, C, *spatial): forward and explicit backward.

Statistics per (n, g) over C/G channels x spatial.  Optional SiLU after the affine:
out = z * sigmoid(z), z = xhat * w + b; its derivative dout/dz = s * (1 + z * (1 - s)).
Backward per group, with g = dz * w:  dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
"""
import torch

from ._common import acc_dtype, channel as _channel, like, mean_var


def _grouped(t, n, groups):
    return t.reshape(n, groups, -1)


def _xhat(xa, mean, rstd, groups):
    n = xa.shape[0]
    xg = _grouped(xa, n, groups)
    return ((xg - mean[:, :, None]) * rstd[:, :, None]).reshape(xa.shape)


def group_norm_fwd(x, weight, bias, num_groups, eps, activation):
    acc = acc_dtype(x.dtype)
    xa = x.to(acc)
    n = x.shape[0]
    mean, var = mean_var(_grouped(xa, n, num_groups), dims=2)
    mean, rstd = mean[:, :, 0], torch.rsqrt(var[:, :, 0] + eps)
    z = _xhat(xa, mean, rstd, num_groups)
    if weight is not None:
        z = z * _channel(weight.to(acc), x)
    if bias is not None:
        z = z + _channel(bias.to(acc), x)
    if activation == "silu":
        z = z * torch.sigmoid(z)
    return like(z, x), mean, rstd


def group_norm_bwd(dy, x, weight, bias, mean, rstd, num_groups, activation):
    acc = acc_dtype(x.dtype)
    xa = x.to(acc)
    n = x.shape[0]
    mean, rstd = mean.to(acc), rstd.to(acc)
    xhat = _xhat(xa, mean, rstd, num_groups)
    dz = dy.to(acc)
    if activation == "silu":
        z = xhat
        if weight is not None:
            z = z * _channel(weight.to(acc), x)
        if bias is not None:
            z = z + _channel(bias.to(acc), x)
        s = torch.sigmoid(z)
        dz = dz * (s * (1 + z * (1 - s)))
    g = dz * _channel(weight.to(acc), x) if weight is not None else dz
    gg = _grouped(g, n, num_groups)
    xg = _grouped(xhat, n, num_groups)
    dx = rstd[:, :, None] * (gg - gg.mean(dim=2, keepdim=True)
                             - xg * (gg * xg).mean(dim=2, keepdim=True))
    dx = like(dx.reshape(x.shape), x)
    red = [0] + list(range(2, x.dim()))
    dw = (dz * xhat).sum(dim=red).to(weight.dtype) if weight is not None else None
    db = dz.sum(dim=red).to(bias.dtype) if bias is not None else None
    return dx, dw, db


def instance_norm_running(mean, rstd, running_mean, running_var, momentum, eps, spatial):
    """InstanceNorm's running statistics from the (N, C) instance statistics of one batch:
    the batch average of the instance means and of the unbiased instance variances, the
    variance recovered as 1/rstd^2 - eps (clamped at 0), all in float64."""
    from .batch_norm import update_running

    with torch.no_grad():
        var = (rstd.double().reciprocal().square() - eps).clamp_min(0)
        var_unbiased = (var * (spatial / (spatial - 1))).mean(0)
        update_running(running_mean, running_var, mean.double().mean(0), var_unbiased,
                       momentum, None)
