"""Triton BatchNorm (1d/2d/3d): training and eval forward, backward.

x is viewed as an M x C matrix, M = N * S (S = product of the spatial sizes), read in place:
    channels_last (and 2-D (N, C)): x[m, c] at m*C + c
    NCHW:                           x[m, c] at n*C*S + c*S + s,  m = n*S + s
Training statistics: each program reduces one chunk of M for a block of channels to
(mean, M2) of x - K (K = the channel's first element, so offset data loses no digits), a merge
kernel combines the chunks with Chan's formula.  Backward: per-chunk fp32 sums of dy and
dy*xhat, summed over chunks in a fixed order, then the elementwise dx pass.  No atomics.
"""
import functools

import torch
import triton
import triton.language as tl

from fusednorm.kernels._util import cdiv as _cdiv, f32_empty

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
    NBT,           # () int64 num_batches_tracked, += 1 by program (0, 0) (HAS_NBT)
    C, S, M, chunk,
    CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_NBT: tl.constexpr,
):
    pid_c = tl.program_id(0)
    k = tl.program_id(1)
    split = tl.num_programs(1)
    if HAS_NBT:
        # incremented here, read by the merge kernel (the next launch on the stream), which
        # takes momentum=None's factor 1 / num_batches_tracked from the new value, as torch
        if (pid_c == 0) & (k == 0):
            tl.store(NBT, tl.load(NBT) + 1)
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
    RM, RV,            # (C,) running mean / var, any float dtype, updated in place
    NBT,               # () int64 num_batches_tracked (CUMULATIVE: factor 1 / NBT)
    C, S, M, chunk, split, eps, momentum,
    CHANNELS_LAST: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_RM: tl.constexpr, HAS_RV: tl.constexpr, CUMULATIVE: tl.constexpr,
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
    # running <- (1 - f) * running + f * batch, fp32, rounded once to the buffer's dtype
    if CUMULATIVE:
        f = 1.0 / tl.load(NBT).to(tl.float32)
    else:
        f = momentum
    if HAS_RM:
        old = tl.load(RM + ch, mask=c_mask, other=0.0).to(tl.float32)
        tl.store(RM + ch, (old * (1.0 - f) + (shift + mean) * f).to(RM.dtype.element_ty),
                 mask=c_mask)
    if HAS_RV:
        old = tl.load(RV + ch, mask=c_mask, other=0.0).to(tl.float32)
        unbiased = m2 / (n_acc - 1.0)
        tl.store(RV + ch, (old * (1.0 - f) + unbiased * f).to(RV.dtype.element_ty),
                 mask=c_mask)


@triton.jit
def _bn_param(P, ch, c_mask, fill, HAS: tl.constexpr, BLOCK_C: tl.constexpr):
    """A (C,) parameter in its own dtype as fp32; ``fill`` where it is absent."""
    if HAS:
        return tl.load(P + ch, mask=c_mask, other=0.0).to(tl.float32)
    else:
        return tl.full((BLOCK_C,), fill, tl.float32)


@triton.jit
def _bn_apply_kernel(
    X, Y,
    W, B,          # (C,) affine in any float dtype (HAS_W / HAS_B)
    Ctr, Rstd,     # training: (2, C) pivot and mean(x - pivot); (C,) rstd
    RM, RV,        # eval: (C,) running statistics in any float dtype
    Mean,          # eval: (C,) fp32 copy of RM written by the k == 0 programs (and Rstd)
    C, S, M, chunk, eps,
    CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, EVAL: tl.constexpr,
):
    """y = ((x - K) - mean(x - K)) * rstd*w + b: centred before scaling, exact for offset
    data.  In eval K is the running mean, mean(x - K) is 0 and rstd comes from the running
    variance, computed here (the statistics the backward needs are stored by k == 0)."""
    ch = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    k = tl.program_id(1)
    c_mask = ch < C
    if EVAL:
        shift = tl.load(RM + ch, mask=c_mask, other=0.0).to(tl.float32)
        mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
        rstd = tl.rsqrt(tl.load(RV + ch, mask=c_mask, other=1.0).to(tl.float32) + eps)
        if k == 0:
            tl.store(Mean + ch, shift, mask=c_mask)
            tl.store(Rstd + ch, rstd, mask=c_mask)
    else:
        shift = tl.load(Ctr + ch, mask=c_mask, other=0.0)
        mean = tl.load(Ctr + C + ch, mask=c_mask, other=0.0)
        rstd = tl.load(Rstd + ch, mask=c_mask, other=0.0)
    scale = rstd * _bn_param(W, ch, c_mask, 1.0, HAS_W, BLOCK_C)
    b = _bn_param(B, ch, c_mask, 0.0, HAS_B, BLOCK_C)
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
    Part,          # (2, split, C) fp32 per-chunk sum(dy), sum(dy * xhat) (_bn_bwd_sums_kernel)
    DW, DB,        # (C,) dweight (HAS_W) and dbias, in the parameters' dtype
    C, S, M, chunk, split, inv_m,
    CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr, HAS_W: tl.constexpr,
):
    """dx = rstd*w*(dy - mean(dy) - xhat*mean(dy*xhat)); eval passes inv_m = 0: dx = rstd*w*dy.
    Every program sums the chunk partials of its channels in the same fixed order (so all
    agree bitwise); the k == 0 programs store dweight = sum(dy*xhat), dbias = sum(dy)."""
    ch = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    k = tl.program_id(1)
    c_mask = ch < C
    sum_dy = tl.zeros((BLOCK_C,), dtype=tl.float32)
    sum_dyx = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for k0 in range(0, split, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        offs = kk[:, None].to(tl.int64) * C + ch[None, :]
        mask = (kk < split)[:, None] & c_mask[None, :]
        sum_dy += tl.sum(tl.load(Part + offs, mask=mask, other=0.0), axis=0)
        sum_dyx += tl.sum(tl.load(Part + tl.cast(split, tl.int64) * C + offs, mask=mask,
                                  other=0.0), axis=0)
    if k == 0:
        if HAS_W:
            tl.store(DW + ch, sum_dyx.to(DW.dtype.element_ty), mask=c_mask)
        tl.store(DB + ch, sum_dy.to(DB.dtype.element_ty), mask=c_mask)
    mean = tl.load(Mean + ch, mask=c_mask, other=0.0)
    rstd = tl.load(Rstd + ch, mask=c_mask, other=0.0)
    scale = rstd * _bn_param(W, ch, c_mask, 1.0, HAS_W, BLOCK_C)
    c1 = sum_dy * inv_m
    c2 = sum_dyx * inv_m
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
    """(C, S, M, channels_last, config, chunk, split) for x; cached per shape and layout
    (the heuristic is pure, and this runs on every call)."""
    # (N, C) is its own channels-last; a tensor both contiguous and channels_last (size-1
    # dims) is read as NCHW
    cl = x.dim() == 2 or not x.is_contiguous()
    if config is None:
        return _plan_for(tuple(x.shape), cl)
    return _plan_with(tuple(x.shape), cl, config)


@functools.lru_cache(maxsize=4096)
def _plan_for(shape, cl):
    S = 1
    for d in shape[2:]:
        S *= d
    return _plan_with(shape, cl, batch_norm_config(shape[0] * S, shape[1], cl))


def _plan_with(shape, cl, cfg):
    N, C = shape[0], shape[1]
    S = 1
    for d in shape[2:]:
        S *= d
    M = N * S
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


def _params(weight, bias, x):
    """Kernel arguments for the affine parameters: absent ones are a never-read dummy."""
    return (weight if weight is not None else x, bias if bias is not None else x,
            dict(HAS_W=weight is not None, HAS_B=bias is not None))


def batch_norm_fwd(x, weight, bias, running_mean, running_var, training: bool, eps: float,
                   momentum=0.1, num_batches_tracked=None, *, config: BatchNormConfig = None):
    """Backend contract (see fusednorm.backends).  ``config`` overrides the launch heuristic.

    Training: three launches -- chunk statistics (+ num_batches_tracked += 1), the merge
    (+ the running statistics' update), the normalizing pass.  Eval: one launch."""
    C, S, M, cl, cfg, chunk, split = _plan(x, config)
    dev = x.device
    out = torch.empty_like(x)  # preserve_format: x's strides
    w, b, flags = _params(weight, bias, x)
    meta = dict(CHANNELS_LAST=cl, BLOCK_M=cfg.block_m, BLOCK_C=cfg.block_c,
                num_warps=cfg.num_warps)
    grid = (_cdiv(C, cfg.block_c), split)
    mean = f32_empty(x, C)
    rstd = f32_empty(x, C)
    if training:
        if M < 1:
            raise ValueError(f"batch_norm: training needs N*spatial >= 1, got x.shape="
                             f"{tuple(x.shape)}")
        var = f32_empty(x, C)
        ctr = f32_empty(x, 2 * C)
        part = f32_empty(x, 2 * split * C)
        cumulative = momentum is None
        nbt = num_batches_tracked
        _bn_stats_kernel[grid](x, part, nbt if nbt is not None else part, C, S, M, chunk,
                               HAS_NBT=nbt is not None, **meta)
        _bn_merge_kernel[(_cdiv(C, MERGE_BLOCK_C),)](
            x, part, mean, rstd, var, ctr,
            running_mean if running_mean is not None else mean,
            running_var if running_var is not None else mean,
            nbt if cumulative else mean, C, S, M, chunk, split, eps,
            0.0 if cumulative else float(momentum), CHANNELS_LAST=cl,
            BLOCK_K=MERGE_BLOCK_K, BLOCK_C=MERGE_BLOCK_C, HAS_RM=running_mean is not None,
            HAS_RV=running_var is not None, CUMULATIVE=cumulative, num_warps=cfg.num_warps)
        _bn_apply_kernel[grid](x, out, w, b, ctr, rstd, x, x, mean, C, S, M, chunk, eps,
                               EVAL=False, **flags, **meta)
        return out, mean, rstd, var
    _bn_apply_kernel[grid](x, out, w, b, mean, rstd, running_mean, running_var, mean,
                           C, S, M, chunk, eps, EVAL=True, **flags, **meta)
    return out, mean, rstd, None


def batch_norm_bwd(dy, x, weight, mean, rstd, training: bool, *,
                   config: BatchNormConfig = None):
    """Backend contract.  dweight = sum(dy*xhat), dbias = sum(dy): fp32 per-chunk partials
    summed over chunks in a fixed order (bitwise repeatable).  Two launches: the chunk sums,
    then dx, whose programs also write dweight / dbias."""
    C, S, M, cl, cfg, chunk, split = _plan(x, config)
    dev = x.device
    dy = _like_layout(dy, x, cl)
    dx = torch.empty_like(x)
    gdtype = weight.dtype if weight is not None else x.dtype
    dweight = None if weight is None else torch.empty_like(weight)
    dbias = x.new_empty(C, dtype=gdtype)
    if M == 0:
        if dweight is not None:
            dweight.zero_()
        return dx, dweight, dbias.zero_()
    part = f32_empty(x, 2 * split * C)
    mean = mean if mean.dtype == torch.float32 else mean.float()
    rstd = rstd if rstd.dtype == torch.float32 else rstd.float()
    meta = dict(CHANNELS_LAST=cl, BLOCK_M=cfg.block_m, BLOCK_C=cfg.block_c,
                num_warps=cfg.num_warps)
    grid = (_cdiv(C, cfg.block_c), split)
    _bn_bwd_sums_kernel[grid](x, dy, mean, rstd, part, C, S, M, chunk, **meta)
    _bn_bwd_dx_kernel[grid](x, dy, dx, weight if weight is not None else x, mean, rstd, part,
                            dweight if dweight is not None else dbias, dbias, C, S, M, chunk,
                            split, 1.0 / M if training else 0.0, BLOCK_K=MERGE_BLOCK_K,
                            HAS_W=weight is not None, **meta)
    return dx, dweight, dbias


# --------------------------------------------------------------------------- compile check
_X_DTYPES = ("fp32", "fp16", "bf16")


def compile_variants():
    """Every (kernel, signature, constexprs, num_warps) the launchers can produce: x dtype x
    layout x tile x parameter dtype (x's or fp32; the functional layer casts other mixes of
    the affine parameters to fp32; running statistics of another dtype are one more
    specialization of the merge / eval kernels, covered here for x's dtype and fp32)."""
    nw = BatchNormConfig(block_m=1, block_c=1).num_warps
    F = "*fp32"
    sz = {"C": "i32", "S": "i32", "M": "i32", "chunk": "i32"}
    for xt in _X_DTYPES:
        P = f"*{xt}"
        pts = list(dict.fromkeys((P, F)))
        for cl in (False, True):
            for pt in pts:
                for cum in (False, True):
                    ce = {"CHANNELS_LAST": cl, "BLOCK_K": MERGE_BLOCK_K,
                          "BLOCK_C": MERGE_BLOCK_C, "HAS_RM": True, "HAS_RV": True,
                          "CUMULATIVE": cum}
                    yield (_bn_merge_kernel,
                           {"X": P, "Part": F, "Mean": F, "Rstd": F, "Var": F, "Ctr": F,
                            "RM": pt, "RV": pt, "NBT": "*i64" if cum else F, **sz,
                            "split": "i32", "eps": "fp32", "momentum": "fp32", **_cx(ce)},
                           ce, nw)
            for bm, bc in tiles(cl):
                ce = {"CHANNELS_LAST": cl, "BLOCK_M": bm, "BLOCK_C": bc}
                for has_nbt in (False, True):
                    cs = dict(ce, HAS_NBT=has_nbt)
                    yield (_bn_stats_kernel, {"X": P, "Part": F, "NBT": "*i64" if has_nbt
                                              else F, **sz, **_cx(cs)}, cs, nw)
                yield (_bn_bwd_sums_kernel, {"X": P, "DY": P, "Mean": F, "Rstd": F, "Part": F,
                                             **sz, **_cx(ce)}, ce, nw)
                for pt in pts:
                    for ev in (False, True):
                        ca = dict(ce, HAS_W=True, HAS_B=True, EVAL=ev)
                        yield (_bn_apply_kernel,
                               {"X": P, "Y": P, "W": pt, "B": pt, "Ctr": F, "Rstd": F,
                                "RM": pt if ev else P, "RV": pt if ev else P, "Mean": F,
                                **sz, "eps": "fp32", **_cx(ca)}, ca, nw)
                    cd = dict(ce, BLOCK_K=MERGE_BLOCK_K, HAS_W=True)
                    yield (_bn_bwd_dx_kernel,
                           {"X": P, "DY": P, "DX": P, "W": pt, "Mean": F, "Rstd": F,
                            "Part": F, "DW": pt, "DB": pt, **sz, "split": "i32",
                            "inv_m": "fp32", **_cx(cd)}, cd, nw)
                ca = dict(ce, HAS_W=False, HAS_B=False, EVAL=False)
                yield (_bn_apply_kernel,
                       {"X": P, "Y": P, "W": P, "B": P, "Ctr": F, "Rstd": F, "RM": P,
                        "RV": P, "Mean": F, **sz, "eps": "fp32", **_cx(ca)}, ca, nw)


def _cx(constexprs):
    return {k: "constexpr" for k in constexprs}
