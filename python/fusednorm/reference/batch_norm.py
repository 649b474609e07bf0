"""BatchNorm over (N, C, *spatial): per-channel statistics over N and spatial.

Training forward uses the batch's mean and biased variance; eval uses the running stats.
Backward (training): dx = rstd * w * (dy - mean(dy) - xhat * mean(dy * xhat)) per channel;
(eval): dx = rstd * w * dy.  dw = sum(dy * xhat), db = sum(dy).
"""
import torch

from ._common import acc_dtype, channel as _channel, like, mean_var


def _reduce_dims(x):
    return [0] + list(range(2, x.dim()))


def batch_norm_fwd(x, weight, bias, running_mean, running_var, training, eps):
    acc = acc_dtype(x.dtype)
    xa = x.to(acc)
    dims = _reduce_dims(x)
    if training:
        mean, var = (t.reshape(-1) for t in mean_var(xa, dims))
    else:
        mean = running_mean.to(acc, copy=True)  # outputs of an op must not alias its inputs
        var = running_var.to(acc, copy=True)
    rstd = torch.rsqrt(var + eps)
    y = (xa - _channel(mean, x)) * _channel(rstd, x)
    if weight is not None:
        y = y * _channel(weight.to(acc), x)
    if bias is not None:
        y = y + _channel(bias.to(acc), x)
    return like(y, x), mean, rstd, var


def batch_norm_bwd(dy, x, weight, mean, rstd, training):
    acc = acc_dtype(x.dtype)
    xa = x.to(acc)
    dims = _reduce_dims(x)
    mean, rstd = mean.to(acc), rstd.to(acc)
    xhat = (xa - _channel(mean, x)) * _channel(rstd, x)
    dya = dy.to(acc)
    db = dya.sum(dim=dims)
    dw = (dya * xhat).sum(dim=dims)
    scale = _channel(rstd * weight.to(acc), x) if weight is not None else _channel(rstd, x)
    if training:
        count = x.numel() // x.shape[1]
        dx = scale * (dya - _channel(db / count, x) - xhat * _channel(dw / count, x))
    else:
        dx = scale * dya
    wdtype = weight.dtype if weight is not None else x.dtype
    return like(dx, x), (dw.to(wdtype) if weight is not None else None), db.to(wdtype)
