"""Triton BatchNorm (1d/2d/3d): training and eval forward, backward.

x is viewed as an M x C matrix, M = N * S (S = product of the spatial sizes), read in place:
    channels_last (and 2-D (N, C)): x[m, c] at m*C + c
    NCHW:                           x[m, c] at n*C*S + c*S + s,  m = n*S + s
Training statistics: each program reduces one chunk of M for a block of channels to
(mean, M2) of x - K (K = the channel's first element, so offset data loses no digits), a merge
kernel combines the chunks with Chan's formula.  Backward: per-chunk fp32 sums of dy and
dy*xhat, summed over chunks in a fixed order, then the elementwise dx pass.  No atomics.
"""
import torch
import triton
import triton.language as tl

from fusednorm.kernels._reduce import chan_combine
from fusednorm.kernels.batch_norm_config import (
    MERGE_BLOCK_C, MERGE_BLOCK_K, BatchNormConfig, batch_norm_config, chunk_and_split, tiles)


@triton.jit
def _bn_offsets(m, ch, C, S, CHANNELS_LAST: tl.constexpr):
    """int64 offsets of the tile (m[:, None], ch[None, :]); m is int64 (M can pass 2^31)."""
    if CHANNELS_LAST:
        return m[:, None] * C + ch[None, :]
    else:
        n = m // S
        s = m - n * S
        return (n * C * S + s)[:, None] + ch[None, :].to(tl.int64) * S


@triton.jit
def _bn_stats_kernel(
    X,
    Part,          # (2, split, C) fp32: mean of x - K and M2 per (chunk, channel)
    C, S, M, chunk,
    CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    k = tl.program_id(1)
    split = tl.num_programs(1)
    ch = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = ch < C
    zero = tl.zeros((1,), dtype=tl.int64)
    shift = tl.load(X + _bn_offsets(zero, ch, C, S, CHANNELS_LAST), mask=c_mask[None, :],
                    other=0.0).to(tl.float32)  # (1, BLOCK_C): the pivot K per channel
    m_lo = k.to(tl.int64) * chunk
    m_hi = tl.minimum(m_lo + chunk, M)
    n_acc = 0.0
    mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        # rows past this chunk belong to the next program; columns past C do not exist
        mask = (m < m_hi)[:, None] & c_mask[None, :]
        x = tl.load(X + _bn_offsets(m, ch, C, S, CHANNELS_LAST), mask=mask, other=0.0)
        x = tl.where(mask, x.to(tl.float32) - shift, 0.0)  # padded lanes stay 0 for the sum
        cnt = tl.minimum(m_hi - m0, BLOCK_M).to(tl.float32)
        t_mean = tl.sum(x, axis=0) / cnt
        xc = tl.where(mask, x - t_mean[None, :], 0.0)
        t_m2 = tl.sum(xc * xc, axis=0)
        n_acc, mean, m2 = chan_combine(n_acc, mean, m2, cnt, t_mean, t_m2)
    offs = k.to(tl.int64) * C + ch
    tl.store(Part + offs, mean, mask=c_mask)
    tl.store(Part + split.to(tl.int64) * C + offs, m2, mask=c_mask)


@triton.jit
def _bn_merge_kernel(
    X, Part,
    Mean, Rstd, Var,   # (C,) fp32 outputs
    Ctr,               # (2, C) fp32: pivot K and mean(x - K), for an apply pass without
                       # rounding the mean to fp32 first
    C, S, M, chunk, split, eps,
    CHANNELS_LAST: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    ch = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = ch < C
    n_acc = 0.0
    mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for k0 in range(0, split, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_mask = kk < split
        # count of chunk k: min(chunk, M - k*chunk); absent chunks count 0 and weigh nothing
        cnt = tl.where(k_mask, tl.minimum(chunk, M - kk.to(tl.int64) * chunk), 0).to(tl.float32)
        offs = kk[:, None].to(tl.int64) * C + ch[None, :]
        mask = k_mask[:, None] & c_mask[None, :]
        p_mean = tl.load(Part + offs, mask=mask, other=0.0)
        # tl.cast, not split.to(): on a GPU Triton turns an integer argument equal to 1 into a
        # plain Python int, which has no .to() (tests/test_triton_specialization.py)
        p_m2 = tl.load(Part + tl.cast(split, tl.int64) * C + offs, mask=mask, other=0.0)
        # exact merge of a block: n = sum n_k, mean = sum n_k mean_k / n,
        # M2 = sum M2_k + sum n_k (mean_k - mean)^2
        b_n = tl.sum(cnt, axis=0)
        b_mean = tl.sum(cnt[:, None] * p_mean, axis=0) / b_n
        d = p_mean - b_mean[None, :]
        b_m2 = tl.sum(p_m2, axis=0) + tl.sum(cnt[:, None] * d * d, axis=0)
        n_acc, mean, m2 = chan_combine(n_acc, mean, m2, b_n, b_mean, b_m2)
    zero = tl.zeros((1,), dtype=tl.int64)
    shift = tl.sum(tl.load(X + _bn_offsets(zero, ch, C, S, CHANNELS_LAST), mask=c_mask[None, :],
                           other=0.0).to(tl.float32), axis=0)
    var = m2 / n_acc
    tl.store(Mean + ch, shift + mean, mask=c_mask)
    tl.store(Var + ch, var, mask=c_mask)
    tl.store(Rstd + ch, tl.rsqrt(var + eps), mask=c_mask)
    tl.store(Ctr + ch, shift, mask=c_mask)
    tl.store(Ctr + C + ch, mean, mask=c_mask)


@triton.jit
def _bn_apply_kernel(
    X, Y,
    W, B,          # (C,) fp32 (ones / zeros when absent)
    Ctr, Rstd,     # (2, C) pivot and mean(x - pivot); (C,) rstd
    C, S, M, chunk,
    CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y = ((x - K) - mean(x - K)) * rstd*w + b: centred before scaling, exact for offset data."""
    ch = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    k = tl.program_id(1)
    c_mask = ch < C
    shift = tl.load(Ctr + ch, mask=c_mask, other=0.0)
    mean = tl.load(Ctr + C + ch, mask=c_mask, other=0.0)
    scale = tl.load(Rstd + ch, mask=c_mask, other=0.0) * tl.load(W + ch, mask=c_mask, other=0.0)
    b = tl.load(B + ch, mask=c_mask, other=0.0)
    m_lo = k.to(tl.int64) * chunk
    m_hi = tl.minimum(m_lo + chunk, M)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        mask = (m < m_hi)[:, None] & c_mask[None, :]
        offs = _bn_offsets(m, ch, C, S, CHANNELS_LAST)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        y = ((x - shift[None, :]) - mean[None, :]) * scale[None, :] + b[None, :]
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bn_bwd_sums_kernel(
    X, DY, Mean, Rstd,
    Part,          # (2, split, C) fp32: sum(dy), sum(dy * xhat) per (chunk, channel)
    C, S, M, chunk,
    CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    ch = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    k = tl.program_id(1)
    split = tl.num_programs(1)
    c_mask = ch < C
    mean = tl.load(Mean + ch, mask=c_mask, other=0.0)
    rstd = tl.load(Rstd + ch, mask=c_mask, other=0.0)
    m_lo = k.to(tl.int64) * chunk
    m_hi = tl.minimum(m_lo + chunk, M)
    acc_dy = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    acc_dyx = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        mask = (m < m_hi)[:, None] & c_mask[None, :]
        offs = _bn_offsets(m, ch, C, S, CHANNELS_LAST)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)  # 0 on padded lanes
        acc_dy += dy
        acc_dyx += dy * ((x - mean[None, :]) * rstd[None, :])
    offs = k.to(tl.int64) * C + ch
    tl.store(Part + offs, tl.sum(acc_dy, axis=0), mask=c_mask)
    tl.store(Part + split.to(tl.int64) * C + offs, tl.sum(acc_dyx, axis=0), mask=c_mask)


@triton.jit
def _bn_bwd_dx_kernel(
    X, DY, DX, W, Mean, Rstd,
    Sums,          # (2, C) fp32: sum(dy), sum(dy * xhat) over the whole batch
    C, S, M, chunk, inv_m,
    CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx = rstd*w*(dy - mean(dy) - xhat*mean(dy*xhat)); eval passes inv_m = 0: dx = rstd*w*dy."""
    ch = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    k = tl.program_id(1)
    c_mask = ch < C
    mean = tl.load(Mean + ch, mask=c_mask, other=0.0)
    rstd = tl.load(Rstd + ch, mask=c_mask, other=0.0)
    scale = rstd * tl.load(W + ch, mask=c_mask, other=0.0)
    c1 = tl.load(Sums + ch, mask=c_mask, other=0.0) * inv_m
    c2 = tl.load(Sums + C + ch, mask=c_mask, other=0.0) * inv_m
    m_lo = k.to(tl.int64) * chunk
    m_hi = tl.minimum(m_lo + chunk, M)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        mask = (m < m_hi)[:, None] & c_mask[None, :]
        offs = _bn_offsets(m, ch, C, S, CHANNELS_LAST)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        xhat = (x - mean[None, :]) * rstd[None, :]
        dx = scale[None, :] * (dy - c1[None, :] - xhat * c2[None, :])
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launchers
def _plan(x, config):
    N, C = x.shape[0], x.shape[1]
    S = 1
    for d in x.shape[2:]:
        S *= d
    # (N, C) is its own channels-last; a tensor both contiguous and channels_last (size-1
    # dims) is read as NCHW
    cl = x.dim() == 2 or not x.is_contiguous()
    M = N * S
    cfg = config if config is not None else batch_norm_config(M, C, cl)
    if (cfg.block_m, cfg.block_c) not in tiles(cl):
        raise ValueError(f"batch_norm: config tile ({cfg.block_m}, {cfg.block_c}) is not one "
                         f"of {tiles(cl)} for channels_last={cl}")
    chunk, split = chunk_and_split(M, cfg.block_m, cfg.split)
    return C, S, M, cl, cfg, chunk, split


def _like_layout(t, x, channels_last):
    """``t`` in x's layout: a copy only when the caller breaks "dy has x's memory format"."""
    if not channels_last or x.dim() == 2:
        return t.contiguous()
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return t.contiguous(memory_format=fmt)


def _fp32(t, C, fill, device):
    """(C,) fp32 parameter: a tiny copy keeps one compiled variant per x dtype."""
    if t is None:
        return torch.full((C,), fill, device=device, dtype=torch.float32)
    return t.to(torch.float32).contiguous()


def batch_norm_fwd(x, weight, bias, running_mean, running_var, training: bool, eps: float, *,
                   config: BatchNormConfig = None):
    """Backend contract (see fusednorm.backends).  ``config`` overrides the launch heuristic."""
    C, S, M, cl, cfg, chunk, split = _plan(x, config)
    dev = x.device
    out = torch.empty_like(x)  # preserve_format: x's strides
    w = _fp32(weight, C, 1.0, dev)
    b = _fp32(bias, C, 0.0, dev)
    meta = dict(CHANNELS_LAST=cl, BLOCK_M=cfg.block_m, BLOCK_C=cfg.block_c,
                num_warps=cfg.num_warps)
    grid = (triton.cdiv(C, cfg.block_c), split)
    if training:
        if M < 1:
            raise ValueError(f"batch_norm: training needs N*spatial >= 1, got x.shape="
                             f"{tuple(x.shape)}")
        mean = torch.empty(C, device=dev, dtype=torch.float32)
        rstd = torch.empty(C, device=dev, dtype=torch.float32)
        var = torch.empty(C, device=dev, dtype=torch.float32)
        ctr = torch.empty(2 * C, device=dev, dtype=torch.float32)
        part = torch.empty(2 * split * C, device=dev, dtype=torch.float32)
        _bn_stats_kernel[grid](x, part, C, S, M, chunk, **meta)
        _bn_merge_kernel[(triton.cdiv(C, MERGE_BLOCK_C),)](
            x, part, mean, rstd, var, ctr, C, S, M, chunk, split, eps, CHANNELS_LAST=cl,
            BLOCK_K=MERGE_BLOCK_K, BLOCK_C=MERGE_BLOCK_C, num_warps=cfg.num_warps)
    else:
        mean = running_mean.to(torch.float32, copy=True)
        var = running_var.to(torch.float32, copy=True)
        rstd = torch.rsqrt(var + eps)
        ctr = torch.cat([mean, torch.zeros_like(mean)])  # pivot = running mean, offset 0
    if M > 0:
        _bn_apply_kernel[grid](x, out, w, b, ctr, rstd, C, S, M, chunk, **meta)
    return out, mean, rstd, var


def batch_norm_bwd(dy, x, weight, mean, rstd, training: bool, *,
                   config: BatchNormConfig = None):
    """Backend contract.  dweight = sum(dy*xhat), dbias = sum(dy): fp32 per-chunk partials
    summed over chunks in a fixed order (bitwise repeatable)."""
    C, S, M, cl, cfg, chunk, split = _plan(x, config)
    dev = x.device
    dy = _like_layout(dy, x, cl)
    dx = torch.empty_like(x)
    part = torch.zeros(2 * split * C, device=dev, dtype=torch.float32)
    mean = mean.to(torch.float32).contiguous()
    rstd = rstd.to(torch.float32).contiguous()
    meta = dict(CHANNELS_LAST=cl, BLOCK_M=cfg.block_m, BLOCK_C=cfg.block_c,
                num_warps=cfg.num_warps)
    grid = (triton.cdiv(C, cfg.block_c), split)
    if M > 0:
        _bn_bwd_sums_kernel[grid](x, dy, mean, rstd, part, C, S, M, chunk, **meta)
    sums = part.view(2, split, C).sum(1)  # second step: fixed-order column sums
    if M > 0:
        w = _fp32(weight, C, 1.0, dev)
        inv_m = 1.0 / M if training else 0.0
        _bn_bwd_dx_kernel[grid](x, dy, dx, w, mean, rstd, sums, C, S, M, chunk, inv_m, **meta)
    gdtype = weight.dtype if weight is not None else x.dtype
    # copies: the two rows of one buffer may not come back as aliasing outputs of a custom op
    dweight = None if weight is None else sums[1].to(gdtype, copy=True)
    dbias = sums[0].to(gdtype, copy=True)
    return dx, dweight, dbias


# --------------------------------------------------------------------------- compile check
_X_DTYPES = ("fp32", "fp16", "bf16")


def compile_variants():
    """Every (kernel, signature, constexprs, num_warps) the launchers can produce: x dtype x
    layout x tile (parameters and statistics are always fp32)."""
    nw = BatchNormConfig(block_m=1, block_c=1).num_warps
    F = "*fp32"
    sz = {"C": "i32", "S": "i32", "M": "i32", "chunk": "i32"}
    for xt in _X_DTYPES:
        P = f"*{xt}"
        for cl in (False, True):
            ce = {"CHANNELS_LAST": cl, "BLOCK_K": MERGE_BLOCK_K, "BLOCK_C": MERGE_BLOCK_C}
            yield (_bn_merge_kernel,
                   {"X": P, "Part": F, "Mean": F, "Rstd": F, "Var": F, "Ctr": F, **sz,
                    "split": "i32", "eps": "fp32", **_cx(ce)}, ce, nw)
            for bm, bc in tiles(cl):
                ce = {"CHANNELS_LAST": cl, "BLOCK_M": bm, "BLOCK_C": bc}
                yield _bn_stats_kernel, {"X": P, "Part": F, **sz, **_cx(ce)}, ce, nw
                yield (_bn_apply_kernel, {"X": P, "Y": P, "W": F, "B": F, "Ctr": F, "Rstd": F,
                                          **sz, **_cx(ce)}, ce, nw)
                yield (_bn_bwd_sums_kernel, {"X": P, "DY": P, "Mean": F, "Rstd": F, "Part": F,
                                             **sz, **_cx(ce)}, ce, nw)
                yield (_bn_bwd_dx_kernel, {"X": P, "DY": P, "DX": P, "W": F, "Mean": F,
                                           "Rstd": F, "Sums": F, **sz, "inv_m": "fp32",
                                           **_cx(ce)}, ce, nw)


def _cx(constexprs):
    return {k: "constexpr" for k in constexprs}
