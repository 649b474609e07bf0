"""LayerNorm over the channels of (N, C, *spatial): at each (n, position) the C values are
normalized (timm's LayerNorm2d, ConvNeXt's channels_first LayerNorm).

Forward   xhat = (x - mean_c) * rstd,  rstd = 1/sqrt(var_c + eps),  y = xhat * w[c] + b[c]
Backward  g = dy * w[c]
          dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))
          dw[c] = sum over (n, positions) of dy * xhat,  db[c] = sum of dy
(mean_c: the mean over the channel dim at one position.)
"""
import torch

from ._common import acc_dtype, channel as _channel, like, mean_var


def _red(x):
    return [0] + list(range(2, x.dim()))


def layer_norm_2d_fwd(x, weight, bias, eps):
    acc = acc_dtype(x.dtype)
    xa = x.to(acc)
    mean, var = mean_var(xa, 1)                     # (N, 1, *spatial), shifted two-pass
    rstd = torch.rsqrt(var + eps)
    y = (xa - mean) * rstd
    if weight is not None:
        y = y * _channel(weight.to(acc), x)
    if bias is not None:
        y = y + _channel(bias.to(acc), x)
    return like(y, x), mean.squeeze(1), rstd.squeeze(1)


def layer_norm_2d_bwd(dy, x, weight, bias, mean, rstd):
    acc = acc_dtype(x.dtype)
    xa = x.to(acc)
    mean, rstd = mean.to(acc).unsqueeze(1), rstd.to(acc).unsqueeze(1)
    xhat = (xa - mean) * rstd
    dya = dy.to(acc)
    g = dya * _channel(weight.to(acc), x) if weight is not None else dya
    dx = rstd * (g - g.mean(dim=1, keepdim=True) - xhat * (g * xhat).mean(dim=1, keepdim=True))
    dw = (dya * xhat).sum(dim=_red(x)).to(weight.dtype) if weight is not None else None
    db = dya.sum(dim=_red(x)).to(bias.dtype) if bias is not None else None
    return like(dx, x), dw, db
