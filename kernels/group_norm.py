"""Triton GroupNorm (and InstanceNorm = GroupNorm with G = C): forward, backward, fused SiLU.

A group (n, g) is the Cg x S block of channels [g*Cg, (g+1)*Cg) and all S spatial positions
of sample n.  Kernels walk it in (BLOCK_C, BLOCK_S) tiles addressed in place for both layouts:
    NCHW:          x[n, c, s] at n*C*S + c*S + s
    channels_last: x[n, c, s] at n*C*S + s*C + c
Statistics are fp32, merged tile by tile with Chan's formula (never E[x^2] - E[x]^2).
Large groups with few rows are split along s: per-chunk (count, mean, M2) partials merged by
every program of the row (forward), per-chunk fp32 sums added in a fixed order (backward).
"""
import functools

import torch
import triton
import triton.language as tl

from fusednorm.kernels._util import cdiv as _cdiv, f32_empty

from fusednorm.kernels._reduce import chan_combine, sum_partials
from fusednorm.kernels.group_norm_config import (
    GroupNormConfig, chunk_and_split, group_norm_config, tiles)
from fusednorm.kernels.layer_norm_config import partials_sum_config

# Partials of a row merged per step by the split kernels (fixed: not a tuning knob).
BLOCK_K = 64


# --------------------------------------------------------------------------- helpers
@triton.jit
def _group_origin(row, G, C, S, Cg):
    """Element offset of sample n (int64: N*C*S passes 2^31 on video tensors), first channel."""
    n = row // G
    g = row - n * G
    return n.to(tl.int64) * C * S, g * Cg, n


@triton.jit
def _tile_offsets(base, ch, sp, C, S, CHANNELS_LAST: tl.constexpr):
    """int64 offsets of the (channel ch[:, None], position sp[None, :]) tile."""
    if CHANNELS_LAST:
        return base + sp[None, :].to(tl.int64) * C + ch[:, None]
    else:
        return base + ch[:, None].to(tl.int64) * S + sp[None, :]


@triton.jit
def _pivot(X, base, c_first, C, S, CHANNELS_LAST: tl.constexpr):
    """First element of the group, the shift K of the statistics: sums of x - K stay small
    for offset data (mean 1e4, std 1), so tile sums lose no digits; the mean is K + mean(x-K)
    and the forward normalizes (x - K) - mean(x-K) without ever rounding the mean to fp32."""
    if CHANNELS_LAST:
        off = base + c_first
    else:
        off = base + c_first.to(tl.int64) * S
    return tl.load(X + off).to(tl.float32)


@triton.jit
def _stats_loop(X, base, c_first, Cg, C, S, s_lo, s_hi, shift,
                CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """(count, mean, M2) of x - shift over channels [c_first, c_first+Cg) x positions
    [s_lo, s_hi).  Each tile's mean/M2 is exact two-pass in registers; tiles merge by Chan."""
    n_acc = 0.0
    mean = 0.0
    m2 = 0.0
    for c0 in range(0, Cg, BLOCK_C):
        ch = c0 + tl.arange(0, BLOCK_C)
        c_mask = ch < Cg
        n_c = tl.minimum(Cg - c0, BLOCK_C)
        for s0 in range(s_lo, s_hi, BLOCK_S):
            sp = s0 + tl.arange(0, BLOCK_S)
            # the mask keeps reads inside this group's channels and this program's chunk
            mask = c_mask[:, None] & (sp < s_hi)[None, :]
            offs = _tile_offsets(base, c_first + ch, sp, C, S, CHANNELS_LAST)
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            x = tl.where(mask, x - shift, 0.0)  # padded lanes must stay 0 for the sum
            cnt = (n_c * tl.minimum(s_hi - s0, BLOCK_S)).to(tl.float32)
            t_mean = tl.sum(tl.sum(x, axis=1), axis=0) / cnt
            xc = tl.where(mask, x - t_mean, 0.0)  # padded lanes would add t_mean^2 each
            t_m2 = tl.sum(tl.sum(xc * xc, axis=1), axis=0)
            n_acc, mean, m2 = chan_combine(n_acc, mean, m2, cnt, t_mean, t_m2)
    return n_acc, mean, m2


@triton.jit
def _affine(W, B, idx, mask, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per-channel (w, b) as fp32 in the parameters' own dtype (a kernel specialization, no
    cast before the launch); an absent weight is 1 and an absent bias 0."""
    if HAS_W:
        w = tl.load(W + idx, mask=mask, other=0.0).to(tl.float32)
    else:
        w = tl.full((BLOCK_C,), 1.0, tl.float32)
    if HAS_B:
        b = tl.load(B + idx, mask=mask, other=0.0).to(tl.float32)
    else:
        b = tl.zeros((BLOCK_C,), dtype=tl.float32)
    return w, b


@triton.jit
def _apply_loop(X, Y, W, B, base, c_first, Cg, C, S, s_lo, s_hi, shift, mean_s, rstd, silu,
                CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
                HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """y = act(((x - K) - mean(x - K)) * rstd*w + b).  Centring before scaling: the folded
    form x*scale + (b - mean*scale) cancels catastrophically when |mean| >> std."""
    for c0 in range(0, Cg, BLOCK_C):
        ch = c0 + tl.arange(0, BLOCK_C)
        c_mask = ch < Cg
        w, b = _affine(W, B, c_first + ch, c_mask, HAS_W, HAS_B, BLOCK_C)
        scale = w * rstd
        for s0 in range(s_lo, s_hi, BLOCK_S):
            sp = s0 + tl.arange(0, BLOCK_S)
            mask = c_mask[:, None] & (sp < s_hi)[None, :]
            offs = _tile_offsets(base, c_first + ch, sp, C, S, CHANNELS_LAST)
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            y = ((x - shift) - mean_s) * scale[:, None] + b[:, None]
            if silu:  # uniform runtime branch: one compiled variant serves both activations
                y = y * tl.sigmoid(y)
            tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _grad_pre(x, dy, w, b, mean, rstd, silu):
    """xhat and the gradient at the pre-activation p = xhat*w + b.
    SiLU: out = p*sig(p), d out/dp = sig(p) * (1 + p*(1 - sig(p))); p is recomputed from x."""
    xhat = (x - mean) * rstd
    if silu:
        p = xhat * w[:, None] + b[:, None]
        sig = tl.sigmoid(p)
        dy = dy * sig * (1.0 + p * (1.0 - sig))
    return xhat, dy


@triton.jit
def _bwd_sums_loop(X, DY, W, B, DWp, DBp, part_row, base, c_first, Cg, C, S, s_lo, s_hi,
                   mean, rstd, silu,
                   CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
                HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """Stores per-channel partials sum(dp*xhat), sum(dp) of this chunk at row ``part_row`` of
    DWp/DBp and returns the group sums sum(g), sum(g*xhat) with g = dp*w = dL/dxhat."""
    sum_g = 0.0
    sum_gx = 0.0
    for c0 in range(0, Cg, BLOCK_C):
        ch = c0 + tl.arange(0, BLOCK_C)
        c_mask = ch < Cg
        w, b = _affine(W, B, c_first + ch, c_mask, HAS_W, HAS_B, BLOCK_C)
        acc_dw = tl.zeros((BLOCK_C,), dtype=tl.float32)
        acc_db = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for s0 in range(s_lo, s_hi, BLOCK_S):
            sp = s0 + tl.arange(0, BLOCK_S)
            mask = c_mask[:, None] & (sp < s_hi)[None, :]
            offs = _tile_offsets(base, c_first + ch, sp, C, S, CHANNELS_LAST)
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            # dy = 0 on padded lanes, so they add nothing to either sum
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
            xhat, dp = _grad_pre(x, dy, w, b, mean, rstd, silu)
            acc_dw += tl.sum(dp * xhat, axis=1)
            acc_db += tl.sum(dp, axis=1)
        p_offs = part_row.to(tl.int64) * C + c_first + ch
        tl.store(DWp + p_offs, acc_dw, mask=c_mask)
        tl.store(DBp + p_offs, acc_db, mask=c_mask)
        sum_g += tl.sum(w * acc_db, axis=0)
        sum_gx += tl.sum(w * acc_dw, axis=0)
    return sum_g, sum_gx


@triton.jit
def _bwd_dx_loop(X, DY, DX, W, B, base, c_first, Cg, C, S, s_lo, s_hi, mean, rstd, c1, c2, silu,
                 CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
                HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """dx = rstd * (g - mean(g) - xhat * mean(g*xhat)), g = dp*w; c1, c2 are those means."""
    for c0 in range(0, Cg, BLOCK_C):
        ch = c0 + tl.arange(0, BLOCK_C)
        c_mask = ch < Cg
        w, b = _affine(W, B, c_first + ch, c_mask, HAS_W, HAS_B, BLOCK_C)
        for s0 in range(s_lo, s_hi, BLOCK_S):
            sp = s0 + tl.arange(0, BLOCK_S)
            mask = c_mask[:, None] & (sp < s_hi)[None, :]
            offs = _tile_offsets(base, c_first + ch, sp, C, S, CHANNELS_LAST)
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
            xhat, dp = _grad_pre(x, dy, w, b, mean, rstd, silu)
            dx = rstd * (dp * w[:, None] - c1 - xhat * c2)
            tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- kernels
@triton.jit
def _gn_fwd_fused_kernel(
    X, Y,            # input / output, same layout
    W, B,            # (C,) affine in any float dtype (HAS_W / HAS_B; else never read)
    Mean, Rstd,      # (N*G,) fp32
    C, S, G, Cg, eps, silu,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,
):
    """One program per group: statistics, then normalize (second read mostly hits L2)."""
    row = tl.program_id(0)
    base, c_first, n = _group_origin(row, G, C, S, Cg)
    shift = _pivot(X, base, c_first, C, S, CHANNELS_LAST)
    cnt, mean_s, m2 = _stats_loop(X, base, c_first, Cg, C, S, 0, S, shift,
                                  CHANNELS_LAST, BLOCK_C, BLOCK_S)
    rstd = tl.rsqrt(m2 / cnt + eps)
    tl.store(Mean + row, shift + mean_s)
    tl.store(Rstd + row, rstd)
    _apply_loop(X, Y, W, B, base, c_first, Cg, C, S, 0, S, shift, mean_s, rstd, silu,
                CHANNELS_LAST, BLOCK_C, BLOCK_S, HAS_W, HAS_B)


@triton.jit
def _gn_fwd_stats_kernel(
    X,
    Part,            # (3, N*G*split) fp32: count, mean of x - K, M2 of each (group, chunk)
    C, S, G, Cg, chunk, n_part,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    row = tl.program_id(0)
    k = tl.program_id(1)
    split = tl.num_programs(1)
    base, c_first, n = _group_origin(row, G, C, S, Cg)
    s_lo = k * chunk
    s_hi = tl.minimum(s_lo + chunk, S)
    shift = _pivot(X, base, c_first, C, S, CHANNELS_LAST)  # the same K in every chunk
    cnt, mean, m2 = _stats_loop(X, base, c_first, Cg, C, S, s_lo, s_hi, shift,
                                CHANNELS_LAST, BLOCK_C, BLOCK_S)
    idx = row.to(tl.int64) * split + k
    tl.store(Part + idx, cnt)
    tl.store(Part + n_part + idx, mean)
    tl.store(Part + 2 * n_part + idx, m2)


@triton.jit
def _gn_fwd_apply_kernel(
    X, Y, W, B, Mean, Rstd,
    Part,            # partials written by _gn_fwd_stats_kernel
    C, S, G, Cg, chunk, n_part, eps, silu,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Every program of a row merges the row's partials (same order, same result), chunk 0
    stores mean/rstd, then each normalizes its own chunk."""
    row = tl.program_id(0)
    k = tl.program_id(1)
    split = tl.num_programs(1)
    base, c_first, n = _group_origin(row, G, C, S, Cg)
    n_acc = 0.0
    mean = 0.0
    m2 = 0.0
    for k0 in range(0, split, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        km = kk < split
        idx = row.to(tl.int64) * split + kk
        p_n = tl.load(Part + idx, mask=km, other=0.0)  # count 0: absent partials weigh nothing
        p_mean = tl.load(Part + n_part + idx, mask=km, other=0.0)
        p_m2 = tl.load(Part + 2 * n_part + idx, mask=km, other=0.0)
        # exact merge of a block: n = sum n_k, mean = sum n_k mean_k / n,
        # M2 = sum M2_k + sum n_k (mean_k - mean)^2
        b_n = tl.sum(p_n, axis=0)
        b_mean = tl.sum(p_n * p_mean, axis=0) / b_n
        d = p_mean - b_mean
        b_m2 = tl.sum(p_m2, axis=0) + tl.sum(p_n * d * d, axis=0)
        n_acc, mean, m2 = chan_combine(n_acc, mean, m2, b_n, b_mean, b_m2)
    rstd = tl.rsqrt(m2 / n_acc + eps)
    shift = _pivot(X, base, c_first, C, S, CHANNELS_LAST)
    if k == 0:
        tl.store(Mean + row, shift + mean)
        tl.store(Rstd + row, rstd)
    s_lo = k * chunk
    s_hi = tl.minimum(s_lo + chunk, S)
    _apply_loop(X, Y, W, B, base, c_first, Cg, C, S, s_lo, s_hi, shift, mean, rstd, silu,
                CHANNELS_LAST, BLOCK_C, BLOCK_S, HAS_W, HAS_B)


@triton.jit
def _gn_bwd_fused_kernel(
    X, DY, DX, W, B, Mean, Rstd,
    DWp, DBp,        # (N, C) fp32 per-sample partials of dweight / dbias
    C, S, G, Cg, inv_count, silu,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,
):
    row = tl.program_id(0)
    base, c_first, n = _group_origin(row, G, C, S, Cg)
    mean = tl.load(Mean + row)
    rstd = tl.load(Rstd + row)
    sum_g, sum_gx = _bwd_sums_loop(X, DY, W, B, DWp, DBp, n, base, c_first, Cg, C, S, 0, S,
                                   mean, rstd, silu, CHANNELS_LAST, BLOCK_C, BLOCK_S, HAS_W, HAS_B)
    _bwd_dx_loop(X, DY, DX, W, B, base, c_first, Cg, C, S, 0, S, mean, rstd,
                 sum_g * inv_count, sum_gx * inv_count, silu, CHANNELS_LAST, BLOCK_C, BLOCK_S, HAS_W, HAS_B)


@triton.jit
def _gn_bwd_partial_kernel(
    X, DY, W, B, Mean, Rstd,
    DWp, DBp,        # (N*split, C) fp32 per-(sample, chunk) partials
    Gp,              # (2, N*G*split) fp32: sum(g), sum(g*xhat) per (group, chunk)
    C, S, G, Cg, chunk, n_part, silu,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,
):
    row = tl.program_id(0)
    k = tl.program_id(1)
    split = tl.num_programs(1)
    base, c_first, n = _group_origin(row, G, C, S, Cg)
    mean = tl.load(Mean + row)
    rstd = tl.load(Rstd + row)
    s_lo = k * chunk
    s_hi = tl.minimum(s_lo + chunk, S)
    sum_g, sum_gx = _bwd_sums_loop(X, DY, W, B, DWp, DBp, n * split + k, base, c_first, Cg,
                                   C, S, s_lo, s_hi, mean, rstd, silu,
                                   CHANNELS_LAST, BLOCK_C, BLOCK_S, HAS_W, HAS_B)
    idx = row.to(tl.int64) * split + k
    tl.store(Gp + idx, sum_g)
    tl.store(Gp + n_part + idx, sum_gx)


@triton.jit
def _gn_bwd_dx_kernel(
    X, DY, DX, W, B, Mean, Rstd, Gp,
    C, S, G, Cg, chunk, n_part, inv_count, silu,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0)
    k = tl.program_id(1)
    split = tl.num_programs(1)
    base, c_first, n = _group_origin(row, G, C, S, Cg)
    mean = tl.load(Mean + row)
    rstd = tl.load(Rstd + row)
    sum_g = 0.0
    sum_gx = 0.0
    for k0 in range(0, split, BLOCK_K):  # fixed order: bitwise repeatable
        kk = k0 + tl.arange(0, BLOCK_K)
        idx = row.to(tl.int64) * split + kk
        sum_g += tl.sum(tl.load(Gp + idx, mask=kk < split, other=0.0), axis=0)
        sum_gx += tl.sum(tl.load(Gp + n_part + idx, mask=kk < split, other=0.0), axis=0)
    s_lo = k * chunk
    s_hi = tl.minimum(s_lo + chunk, S)
    _bwd_dx_loop(X, DY, DX, W, B, base, c_first, Cg, C, S, s_lo, s_hi, mean, rstd,
                 sum_g * inv_count, sum_gx * inv_count, silu, CHANNELS_LAST, BLOCK_C, BLOCK_S, HAS_W, HAS_B)


# --------------------------------------------------------------------------- launchers
def _layout(x):
    """True for channels_last(_3d).  A tensor that is both (size-1 dims) counts as NCHW."""
    return not x.is_contiguous()


def _like_layout(t, x, channels_last):
    """``t`` in the memory layout the kernels assume for ``x``: the one copy this module may
    make, only when the caller breaks the contract's "dy has x's memory format"."""
    if not channels_last:
        return t.contiguous()
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return t.contiguous(memory_format=fmt)


def _silu_flag(activation):
    if activation not in ("", "silu"):
        raise ValueError(f"group_norm: activation={activation!r} must be '' or 'silu'")
    return 1 if activation == "silu" else 0


def _plan(x, num_groups, config):
    """(N, C, S, Cg, channels_last, config, chunk, split) for x; cached per shape, layout
    and group count (the heuristic is pure, and this runs on every call)."""
    if config is None:
        return _plan_for(tuple(x.shape), _layout(x), num_groups)
    return _plan_with(tuple(x.shape), _layout(x), num_groups, config)


@functools.lru_cache(maxsize=4096)
def _plan_for(shape, cl, num_groups):
    N, C = shape[0], shape[1]
    S = 1
    for d in shape[2:]:
        S *= d
    return _plan_with(shape, cl, num_groups,
                      group_norm_config(N * num_groups, C // num_groups, S, cl))


def _plan_with(shape, cl, num_groups, cfg):
    N, C = shape[0], shape[1]
    S = 1
    for d in shape[2:]:
        S *= d
    Cg = C // num_groups
    if (cfg.block_c, cfg.block_s) not in tiles(cl):
        raise ValueError(f"group_norm: config tile ({cfg.block_c}, {cfg.block_s}) is not one "
                         f"of {tiles(cl)} for channels_last={cl}")
    chunk, split = chunk_and_split(S, cfg.block_s, cfg.split)
    return N, C, S, Cg, cl, cfg, chunk, split


def _params(weight, bias, x):
    """Kernel arguments for the affine parameters: absent ones are a never-read dummy."""
    return (weight if weight is not None else x, bias if bias is not None else x,
            dict(HAS_W=weight is not None, HAS_B=bias is not None))


def group_norm_fwd(x, weight, bias, num_groups: int, eps: float, activation: str, *,
                   config: GroupNormConfig = None):
    """Backend contract (see fusednorm.backends).  ``config`` overrides the launch heuristic.
    One launch (two when a few huge groups are split along the spatial axis)."""
    silu = _silu_flag(activation)
    N, C, S, Cg, cl, cfg, chunk, split = _plan(x, num_groups, config)
    G = num_groups
    out = torch.empty_like(x)  # preserve_format: x's strides, so x's memory format
    mean = f32_empty(x, (N, G))
    rstd = f32_empty(x, (N, G))
    if x.numel() == 0:
        mean.fill_(float("nan"))
        rstd.fill_(float("nan"))
        return out, mean, rstd
    w, b, flags = _params(weight, bias, x)
    rows = N * G
    meta = dict(CHANNELS_LAST=cl, BLOCK_C=cfg.block_c, BLOCK_S=cfg.block_s,
                num_warps=cfg.num_warps)
    if split == 1:
        _gn_fwd_fused_kernel[(rows,)](x, out, w, b, mean, rstd, C, S, G, Cg, eps, silu,
                                      **flags, **meta)
    else:
        n_part = rows * split
        part = f32_empty(x, 3 * n_part)
        _gn_fwd_stats_kernel[(rows, split)](x, part, C, S, G, Cg, chunk, n_part, **meta)
        _gn_fwd_apply_kernel[(rows, split)](x, out, w, b, mean, rstd, part, C, S, G, Cg, chunk,
                                            n_part, eps, silu, BLOCK_K=BLOCK_K, **flags, **meta)
    return out, mean, rstd


def group_norm_bwd(dy, x, weight, bias, mean, rstd, num_groups: int, activation: str, *,
                   config: GroupNormConfig = None):
    """Backend contract.  dweight/dbias = fixed-order column sums of fp32 per-(sample, chunk)
    partials, in one launch.  Two launches in all (three when groups are split)."""
    silu = _silu_flag(activation)
    N, C, S, Cg, cl, cfg, chunk, split = _plan(x, num_groups, config)
    G = num_groups
    dy = _like_layout(dy, x, cl)
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return (dx, None if weight is None else torch.zeros_like(weight),
                None if bias is None else torch.zeros_like(bias))
    # every (sample [, chunk], channel) partial is written by the program of its group
    dwp = f32_empty(x, (N * split, C))
    dbp = f32_empty(x, (N * split, C))
    w, b, flags = _params(weight, bias, x)
    mean = mean.contiguous()
    rstd = rstd.contiguous()
    rows = N * G
    inv_count = 1.0 / (Cg * S)
    meta = dict(CHANNELS_LAST=cl, BLOCK_C=cfg.block_c, BLOCK_S=cfg.block_s,
                num_warps=cfg.num_warps)
    if split == 1:
        _gn_bwd_fused_kernel[(rows,)](x, dy, dx, w, b, mean, rstd, dwp, dbp,
                                      C, S, G, Cg, inv_count, silu, **flags, **meta)
    else:
        n_part = rows * split
        gp = f32_empty(x, 2 * n_part)
        _gn_bwd_partial_kernel[(rows, split)](x, dy, w, b, mean, rstd, dwp, dbp, gp,
                                              C, S, G, Cg, chunk, n_part, silu, **flags, **meta)
        _gn_bwd_dx_kernel[(rows, split)](x, dy, dx, w, b, mean, rstd, gp, C, S, G, Cg,
                                         chunk, n_part, inv_count, silu,
                                         BLOCK_K=BLOCK_K, **flags, **meta)
    if weight is None and bias is None:
        return dx, None, None
    scfg = partials_sum_config(N * split, C)
    dweight, dbias = sum_partials(dwp if weight is not None else None, weight,
                                  dbp if bias is not None else None, bias,
                                  scfg.block_p, scfg.block_n, scfg.num_warps)
    return dx, dweight, dbias


@triton.jit
def _in_running_kernel(
    Mean, Rstd,      # (N, C) fp32 instance statistics of this batch
    RM, RV,          # (C,) running mean / var, any float dtype, updated in place (HAS_RM/RV)
    N, C, eps, momentum, unbias,
    HAS_RM: tl.constexpr, HAS_RV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """running <- (1 - momentum) * running + momentum * batch average over n of the instance
    mean / unbiased variance; the variance is recovered as 1/rstd^2 - eps, clamped at 0."""
    ch = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = ch < C
    s_mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
    s_var = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = (n < N)[:, None] & c_mask[None, :]
        offs = n[:, None].to(tl.int64) * C + ch[None, :]
        m = tl.load(Mean + offs, mask=mask, other=0.0)
        r = tl.load(Rstd + offs, mask=mask, other=1.0)
        v = tl.where(mask, tl.maximum(1.0 / (r * r) - eps, 0.0), 0.0)
        s_mean += tl.sum(m, axis=0)
        s_var += tl.sum(v, axis=0)
    if HAS_RM:
        old = tl.load(RM + ch, mask=c_mask, other=0.0).to(tl.float32)
        new = old * (1.0 - momentum) + (s_mean / N) * momentum
        tl.store(RM + ch, new.to(RM.dtype.element_ty), mask=c_mask)
    if HAS_RV:
        old = tl.load(RV + ch, mask=c_mask, other=0.0).to(tl.float32)
        new = old * (1.0 - momentum) + (s_var / N * unbias) * momentum
        tl.store(RV + ch, new.to(RV.dtype.element_ty), mask=c_mask)


IN_RUNNING_BLOCK_N, IN_RUNNING_BLOCK_C = 8, 64


def instance_norm_running(mean, rstd, running_mean, running_var, momentum: float, eps: float,
                          spatial: int):
    """Backend contract: InstanceNorm's running statistics from one batch's (N, C) instance
    statistics, updated in place by one launch."""
    N, C = mean.shape
    rm = running_mean if running_mean is not None else mean
    rv = running_var if running_var is not None else mean
    _in_running_kernel[(_cdiv(C, IN_RUNNING_BLOCK_C),)](
        mean, rstd, rm, rv, N, C, eps, momentum, spatial / (spatial - 1),
        HAS_RM=running_mean is not None, HAS_RV=running_var is not None,
        BLOCK_N=IN_RUNNING_BLOCK_N, BLOCK_C=IN_RUNNING_BLOCK_C, num_warps=4)


# --------------------------------------------------------------------------- compile check
_X_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def compile_variants():
    """Every (kernel, signature, constexprs, num_warps) the launchers can produce: x dtype x
    layout x tile x affine (absent; or both present in x's dtype or in fp32 -- the
    functional layer casts any other mix to fp32); the activation is a runtime flag."""
    F = "*fp32"
    sizes = {"C": "i32", "S": "i32", "G": "i32", "Cg": "i32"}
    nw = NUM_WARPS_DEFAULT
    for xt in _X_DTYPES:
        P = f"*{xt}"
        affines = [(P, False)] + [(wt, True) for wt in dict.fromkeys((P, F))]
        for cl in (False, True):
            for bc, bs in tiles(cl):
                ce = {"CHANNELS_LAST": cl, "BLOCK_C": bc, "BLOCK_S": bs}
                cek = dict(ce, BLOCK_K=BLOCK_K)
                yield (_gn_fwd_stats_kernel,
                       {"X": P, "Part": F, **sizes, "chunk": "i32", "n_part": "i32",
                        **_cx(ce)}, ce, nw)
                for wt, has in affines:
                    fl = {"HAS_W": has, "HAS_B": has}
                    ws = {"W": wt, "B": wt}
                    yield (_gn_fwd_fused_kernel,
                           {"X": P, "Y": P, **ws, "Mean": F, "Rstd": F, **sizes,
                            "eps": "fp32", "silu": "i32", **_cx(ce), **_cx(fl)},
                           dict(ce, **fl), nw)
                    yield (_gn_fwd_apply_kernel,
                           {"X": P, "Y": P, **ws, "Mean": F, "Rstd": F, "Part": F,
                            **sizes, "chunk": "i32", "n_part": "i32", "eps": "fp32",
                            "silu": "i32", **_cx(cek), **_cx(fl)}, dict(cek, **fl), nw)
                    yield (_gn_bwd_fused_kernel,
                           {"X": P, "DY": P, "DX": P, **ws, "Mean": F, "Rstd": F,
                            "DWp": F, "DBp": F, **sizes, "inv_count": "fp32", "silu": "i32",
                            **_cx(ce), **_cx(fl)}, dict(ce, **fl), nw)
                    yield (_gn_bwd_partial_kernel,
                           {"X": P, "DY": P, **ws, "Mean": F, "Rstd": F, "DWp": F,
                            "DBp": F, "Gp": F, **sizes, "chunk": "i32", "n_part": "i32",
                            "silu": "i32", **_cx(ce), **_cx(fl)}, dict(ce, **fl), nw)
                    yield (_gn_bwd_dx_kernel,
                           {"X": P, "DY": P, "DX": P, **ws, "Mean": F, "Rstd": F,
                            "Gp": F, **sizes, "chunk": "i32", "n_part": "i32",
                            "inv_count": "fp32", "silu": "i32", **_cx(cek), **_cx(fl)},
                           dict(cek, **fl), nw)
    for rt in ("*fp32", "*fp16", "*bf16"):
        ce = {"HAS_RM": True, "HAS_RV": True, "BLOCK_N": IN_RUNNING_BLOCK_N,
              "BLOCK_C": IN_RUNNING_BLOCK_C}
        yield (_in_running_kernel,
               {"Mean": F, "Rstd": F, "RM": rt, "RV": rt, "N": "i32", "C": "i32",
                "eps": "fp32", "momentum": "fp32", "unbias": "fp32", **_cx(ce)}, ce, 4)


NUM_WARPS_DEFAULT = GroupNormConfig(block_c=1, block_s=1).num_warps


def _cx(constexprs):
    return {k: "constexpr" for k in constexprs}
