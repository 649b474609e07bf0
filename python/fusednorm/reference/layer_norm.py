"""LayerNorm and RMSNorm over the last dim of an (M, N) view: forward and explicit backward.

Forward   LN:  xhat = (x - mean) * rstd,  rstd = 1/sqrt(var + eps),  y = xhat * w + b
          RMS: xhat = x * rstd,           rstd = 1/sqrt(mean(x^2) + eps), y = xhat * w
Backward  g = dy * w
          LN:  dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
          RMS: dx = rstd * (g - xhat * mean(g * xhat))
          dw = sum_rows(dy * xhat), db = sum_rows(dy)
"""
import torch

from ._common import acc_dtype, mean_var


def layer_norm_fwd(x, residual, weight, bias, eps, rms):
    acc = acc_dtype(x.dtype)
    xa = x.to(acc)
    xsum = None
    if residual is not None:
        # the stored (rounded) sum is what gets normalized, as in torch's `h = x + r; norm(h)`,
        # what the kernels do, and what the backward recomputes x-hat from
        xsum = (xa + residual.to(acc)).to(x.dtype)
        xa = xsum.to(acc)
    if rms:
        mean = None
        rstd = torch.rsqrt(xa.square().mean(dim=1) + eps)
        xhat = xa * rstd[:, None]
    else:
        mean, var = (t.squeeze(1) for t in mean_var(xa, 1))
        rstd = torch.rsqrt(var + eps)
        xhat = (xa - mean[:, None]) * rstd[:, None]
    y = xhat
    if weight is not None:
        y = y * weight.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype).contiguous(), xsum, mean, rstd


def layer_norm_bwd(dy, dxsum, x, weight, bias, mean, rstd, rms):
    acc = acc_dtype(x.dtype)
    xa = x.to(acc)
    rstd = rstd.to(acc)[:, None]
    xhat = xa * rstd if rms else (xa - mean.to(acc)[:, None]) * rstd
    dya = dy.to(acc)
    g = dya * weight.to(acc) if weight is not None else dya
    proj = (g * xhat).mean(dim=1, keepdim=True)
    if rms:
        dx = rstd * (g - xhat * proj)
    else:
        dx = rstd * (g - g.mean(dim=1, keepdim=True) - xhat * proj)
    if dxsum is not None:
        dx = dx + dxsum.to(acc)
    dw = (dya * xhat).sum(dim=0).to(weight.dtype) if weight is not None else None
    db = dya.sum(dim=0).to(bias.dtype) if bias is not None else None
    return dx.to(x.dtype).contiguous(), dw, db
