"""BatchNorm over (N, C, *spatial): per-channel statistics over N and spatial.

Training forward uses the batch's mean and biased variance; eval uses the running stats.
Backward (training): dx = rstd * w * (dy - mean(dy) - xhat * mean(dy * xhat)) per channel;
(eval): dx = rstd * w * dy.  dw = sum(dy * xhat), db = sum(dy).
"""
import torch

from ._common import acc_dtype, channel as _channel, like, mean_var


def _reduce_dims(x):
    return [0] + list(range(2, x.dim()))


def update_running(running_mean, running_var, mean, var_unbiased, momentum, nbt):
    """running <- (1 - f) * running + f * batch on the device, computed in fp32 (fp64 for fp64
    buffers) and rounded once to the buffer's dtype, as torch does.  nbt, when given, is
    incremented first, and momentum=None means f = 1 / nbt (the cumulative average)."""
    with torch.no_grad():
        if nbt is not None:
            nbt.add_(1)
        f = momentum if momentum is not None else 1.0 / nbt.to(torch.float64)
        for buf, batch in ((running_mean, mean), (running_var, var_unbiased)):
            if buf is None:
                continue
            acc = torch.promote_types(buf.dtype, torch.float32)
            buf.copy_(buf.to(acc) * (1 - f) + batch.to(acc) * f)


def batch_norm_fwd(x, weight, bias, running_mean, running_var, training, eps, momentum=0.1,
                   num_batches_tracked=None):
    acc = acc_dtype(x.dtype)
    xa = x.to(acc)
    dims = _reduce_dims(x)
    if training:
        mean, var = (t.reshape(-1) for t in mean_var(xa, dims))
        if running_mean is not None or running_var is not None:
            count = x.numel() // x.shape[1]
            update_running(running_mean, running_var, mean, var * (count / (count - 1)),
                           momentum, num_batches_tracked)
    else:
        mean = running_mean.to(acc, copy=True)  # outputs of an op must not alias its inputs
        var = running_var.to(acc, copy=True)
    rstd = torch.rsqrt(var + eps)
    y = (xa - _channel(mean, x)) * _channel(rstd, x)
    if weight is not None:
        y = y * _channel(weight.to(acc), x)
    if bias is not None:
        y = y + _channel(bias.to(acc), x)
    return like(y, x), mean, rstd, (var if training else None)


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
