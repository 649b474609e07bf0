"""Triton BatchNorm (1d/2d/3d): training and eval forward, backward.

x is read in place, as tiles of one of two layouts (batch_norm_config.py):
    channels_last (and 2-D (N, C)): x[m, c] at m*C + c, m = n*S + s      tile (BM, BC)
    NCHW:                           x[n, c, s] at (n*C + c)*S + s          tile (BM, BC, BS)
Training forward, three launches: statistics (per-thread shifted sums of d = x - K, K = the
channel's first element, so offset data loses no digits; one cross-thread reduction per
program, at the end), merge (fixed-order sums of the partials, the running statistics'
update, three coefficients per channel), normalize (persistent, coefficients in registers).
Eval: one launch.  Backward, two launches: per-chunk sums of dy and dy*(x - mean), then dx
(persistent), whose programs each sum the partials of their channels in the same fixed
order and write dweight / dbias.  No atomics: every result is bitwise repeatable.
"""
import functools

import torch
import triton
import triton.language as tl

from fusednorm.kernels._tuning import arch_of
from fusednorm.kernels._util import cdiv as _cdiv, f32_empty
from fusednorm.kernels.batch_norm_config import (
    CPU_SMS, DX_PART_ELEMS, MERGE_BLOCK_C, MERGE_BLOCK_K, MERGE_WARPS, NUM_WARPS,
    BatchNormConfig, TileConfig, candidates, dx_group, kernel_config, n_tiles, tiles, validate)


# --------------------------------------------------------------------------- tile helpers
@triton.jit
def _tile(t, h, ch, C, S, R, n_sc, CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr,
          SUB_M: tl.constexpr, BLOCK_S: tl.constexpr):
    """int64 offsets and mask of part ``h`` (SUB_M of the BLOCK_M rows / samples) of tile
    ``t`` of the channel block ``ch``.

    channels_last: rows t*BLOCK_M + h*SUB_M.. of R = M rows.  NCHW: samples
    (t // n_sc)*BLOCK_M + h*SUB_M.. of R = N, plane chunk t % n_sc (one scalar division per
    tile, none per element).  Loads are 16-byte vectors when Triton's launch-time
    specialization knows 16 divides C (rows) or S (planes); otherwise the same code runs
    with narrower loads."""
    if CHANNELS_LAST:
        m = tl.cast(t, tl.int64) * BLOCK_M + h * SUB_M + tl.arange(0, SUB_M)
        offs = m[:, None] * C + ch[None, :]
        mask = (m < R)[:, None] & (ch < C)[None, :]
    else:
        nb = t // n_sc
        s = (t - nb * n_sc) * BLOCK_S + tl.arange(0, BLOCK_S)
        n = tl.cast(nb, tl.int64) * BLOCK_M + h * SUB_M + tl.arange(0, SUB_M)
        offs = (n[:, None, None] * C + ch[None, :, None]) * S + s[None, None, :]
        mask = (n < R)[:, None, None] & (ch < C)[None, :, None] & (s < S)[None, None, :]
    return offs, mask


@triton.jit
def _bc(v, CHANNELS_LAST: tl.constexpr):
    """A (BLOCK_C,) per-channel vector broadcast against a tile."""
    if CHANNELS_LAST:
        return v[None, :]
    else:
        return v[None, :, None]


@triton.jit
def _zeros(CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
           BLOCK_S: tl.constexpr):
    if CHANNELS_LAST:
        return tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    else:
        return tl.zeros((BLOCK_M, BLOCK_C, BLOCK_S), dtype=tl.float32)


@triton.jit
def _per_channel(acc, CHANNELS_LAST: tl.constexpr):
    """The one cross-thread reduction of a program: a tile of accumulators -> (BLOCK_C,)."""
    if CHANNELS_LAST:
        return tl.sum(acc, axis=0)
    else:
        return tl.sum(tl.sum(acc, axis=2), axis=0)


@triton.jit
def _first(X, ch, C, S, CHANNELS_LAST: tl.constexpr):
    """x's first element of each channel (m = 0) as fp32: the shift K."""
    if CHANNELS_LAST:
        offs = ch
    else:
        offs = tl.cast(ch, tl.int64) * S
    return tl.load(X + offs, mask=ch < C, other=0.0).to(tl.float32)


@triton.jit
def _param(P, ch, c_mask, fill, HAS: tl.constexpr, BLOCK_C: tl.constexpr):
    """A (C,) parameter in its own dtype as fp32; ``fill`` where it is absent."""
    if HAS:
        return tl.load(P + ch, mask=c_mask, other=0.0).to(tl.float32)
    else:
        return tl.full((BLOCK_C,), fill, tl.float32)


# --------------------------------------------------------------------------- forward
@triton.jit
def _bn_stats_kernel(
    X,
    Part,          # (2, split, C) fp32: sum(x - K), sum((x - K)^2) per (chunk, channel)
    Coef,          # (3, C) fp32: row 0 <- K, the channel's first element (programs k == 0)
    NBT,           # () int64 num_batches_tracked, += 1 by program (0, 0) (HAS_NBT)
    C, S, R, n_sc, n_tiles, tiles_per_prog,
    CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr, HAS_NBT: tl.constexpr,
):
    """Program (cb, k) sums tiles [k*tiles_per_prog, ...) of channel block cb into
    per-thread accumulators, two tiles per iteration (all four loads issued before any
    arithmetic), and reduces across threads once, at the end."""
    cb = tl.program_id(0)
    k = tl.program_id(1)
    split = tl.num_programs(1)
    if HAS_NBT:
        # incremented here, read by the merge kernel (the next launch on the stream), which
        # takes momentum=None's factor 1 / num_batches_tracked from the new value, as torch
        if (cb == 0) & (k == 0):
            tl.store(NBT, tl.load(NBT) + 1)
    ch = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = ch < C
    shift = _first(X, ch, C, S, CHANNELS_LAST)
    if k == 0:
        tl.store(Coef + ch, shift, mask=c_mask)
    shift = _bc(shift, CHANNELS_LAST)
    t_lo = k * tiles_per_prog
    t_hi = tl.minimum(t_lo + tiles_per_prog, n_tiles)
    # accumulators of half a tile: two tiles (four halves, 32 KB) in flight per iteration at
    # ~100 registers, two CTAs per SM
    H: tl.constexpr = BLOCK_M // 2
    acc1 = _zeros(CHANNELS_LAST, H, BLOCK_C, BLOCK_S)
    acc2 = _zeros(CHANNELS_LAST, H, BLOCK_C, BLOCK_S)
    for t in range(t_lo, t_hi, 2):
        second = t + 1 < t_hi  # the second tile may be the next program's
        o0, m0 = _tile(t, 0, ch, C, S, R, n_sc, CHANNELS_LAST, BLOCK_M, H, BLOCK_S)
        o1, m1 = _tile(t, 1, ch, C, S, R, n_sc, CHANNELS_LAST, BLOCK_M, H, BLOCK_S)
        o2, m2 = _tile(t + 1, 0, ch, C, S, R, n_sc, CHANNELS_LAST, BLOCK_M, H, BLOCK_S)
        o3, m3 = _tile(t + 1, 1, ch, C, S, R, n_sc, CHANNELS_LAST, BLOCK_M, H, BLOCK_S)
        m2 = m2 & second
        m3 = m3 & second
        # padded lanes add 0, not -K (a select: loading K there instead made ptxas spill
        # the narrow-load variants)
        d0 = tl.where(m0, tl.load(X + o0, mask=m0, other=0.0).to(tl.float32) - shift, 0.0)
        d1 = tl.where(m1, tl.load(X + o1, mask=m1, other=0.0).to(tl.float32) - shift, 0.0)
        d2 = tl.where(m2, tl.load(X + o2, mask=m2, other=0.0).to(tl.float32) - shift, 0.0)
        d3 = tl.where(m3, tl.load(X + o3, mask=m3, other=0.0).to(tl.float32) - shift, 0.0)
        acc1 += (d0 + d1) + (d2 + d3)
        acc2 += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    offs = tl.cast(k, tl.int64) * C + ch
    tl.store(Part + offs, _per_channel(acc1, CHANNELS_LAST), mask=c_mask)
    tl.store(Part + tl.cast(split, tl.int64) * C + offs, _per_channel(acc2, CHANNELS_LAST),
             mask=c_mask)


@triton.jit
def _bn_merge_kernel(
    Part,
    W, B,              # (C,) affine in x's dtype or fp32 (HAS_W / HAS_B)
    Mean, Rstd, Var,   # (C,) fp32 outputs
    Coef,              # (3, C) fp32 for the normalize pass: K (row 0, from the statistics
                       # kernel), scale = rstd*w, shift = b - mean(x - K)*scale (rows 1, 2)
    RM, RV,            # (C,) running mean / var, any float dtype, updated in place
    NBT,               # () int64 num_batches_tracked (CUMULATIVE: factor 1 / NBT)
    C, split, inv_m, bessel, eps, momentum,
    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    HAS_RM: tl.constexpr, HAS_RV: tl.constexpr, CUMULATIVE: tl.constexpr,
):
    """mean(x - K) = sum1 / M, var = sum2 / M - mean(x - K)^2: K is an element of the
    channel, so both terms stay O(var) for offset data.  Partials summed in a fixed order."""
    ch = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = ch < C
    s1 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    s2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    # tl.cast, not split.to(): on a GPU Triton turns an integer argument equal to 1 into a
    # plain Python int, which has no .to() (tests/test_triton_specialization.py)
    second = tl.cast(split, tl.int64) * C
    for k0 in range(0, split, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        offs = kk[:, None].to(tl.int64) * C + ch[None, :]
        mask = (kk < split)[:, None] & c_mask[None, :]
        s1 += tl.sum(tl.load(Part + offs, mask=mask, other=0.0), axis=0)
        s2 += tl.sum(tl.load(Part + second + offs, mask=mask, other=0.0), axis=0)
    shift = tl.load(Coef + ch, mask=c_mask, other=0.0)
    md = s1 * inv_m
    var = s2 * inv_m - md * md
    var = tl.where(var < 0.0, 0.0, var)  # rounding can go below 0; NaN stays NaN
    rstd = tl.rsqrt(var + eps)
    tl.store(Mean + ch, shift + md, mask=c_mask)
    tl.store(Var + ch, var, mask=c_mask)
    tl.store(Rstd + ch, rstd, mask=c_mask)
    scale = rstd * _param(W, ch, c_mask, 1.0, HAS_W, BLOCK_C)
    tl.store(Coef + C + ch, scale, mask=c_mask)
    tl.store(Coef + 2 * C + ch, _param(B, ch, c_mask, 0.0, HAS_B, BLOCK_C) - md * scale,
             mask=c_mask)
    # running <- (1 - f) * running + f * batch, fp32, rounded once to the buffer's dtype
    if CUMULATIVE:
        f = 1.0 / tl.load(NBT).to(tl.float32)
    else:
        f = momentum
    if HAS_RM:
        old = tl.load(RM + ch, mask=c_mask, other=0.0).to(tl.float32)
        tl.store(RM + ch, (old * (1.0 - f) + (shift + md) * f).to(RM.dtype.element_ty),
                 mask=c_mask)
    if HAS_RV:
        old = tl.load(RV + ch, mask=c_mask, other=0.0).to(tl.float32)
        tl.store(RV + ch, (old * (1.0 - f) + var * bessel * f).to(RV.dtype.element_ty),
                 mask=c_mask)


@triton.jit
def _bn_apply_kernel(
    X, Y,
    Coef,          # training: (3, C) fp32 K, scale, shift (the merge kernel's)
    W, B,          # eval: (C,) affine in x's dtype or fp32 (HAS_W / HAS_B)
    RM, RV,        # eval: (C,) running statistics in any float dtype
    Mean, Rstd,    # eval: (C,) fp32 outputs, written by the programs with p == 0
    C, S, R, n_sc, n_tiles, eps,
    CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr, EVAL: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
):
    """y = (x - K) * scale + shift with scale = rstd*w, shift = b - mean(x - K)*scale: x is
    centred on one of its own channel's elements before scaling, so offset data keeps its
    digits.  In eval K is the running mean and rstd comes from the running variance,
    computed here.  Persistent: program (cb, p) strides over the tiles of channel block cb
    with three coefficients per channel in registers."""
    cb = tl.program_id(0)
    p = tl.program_id(1)
    P = tl.num_programs(1)
    ch = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = ch < C
    if EVAL:
        shift_k = tl.load(RM + ch, mask=c_mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.load(RV + ch, mask=c_mask, other=1.0).to(tl.float32) + eps)
        scale = rstd * _param(W, ch, c_mask, 1.0, HAS_W, BLOCK_C)
        shift = _param(B, ch, c_mask, 0.0, HAS_B, BLOCK_C)
        if p == 0:
            tl.store(Mean + ch, shift_k, mask=c_mask)
            tl.store(Rstd + ch, rstd, mask=c_mask)
    else:
        shift_k = tl.load(Coef + ch, mask=c_mask, other=0.0)
        scale = tl.load(Coef + C + ch, mask=c_mask, other=0.0)
        shift = tl.load(Coef + 2 * C + ch, mask=c_mask, other=0.0)
    shift_k = _bc(shift_k, CHANNELS_LAST)
    scale = _bc(scale, CHANNELS_LAST)
    shift = _bc(shift, CHANNELS_LAST)
    for t in range(p, n_tiles, P):
        offs, mask = _tile(t, 0, ch, C, S, R, n_sc, CHANNELS_LAST, BLOCK_M, BLOCK_M, BLOCK_S)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        y = (x - shift_k) * scale + shift
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- backward
@triton.jit
def _bn_bwd_sums_kernel(
    X, DY, Mean,
    Part,          # (2, split, C) fp32: sum(dy), sum(dy * (x - mean)) per (chunk, channel)
    C, S, R, n_sc, n_tiles, tiles_per_prog,
    CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Per-thread accumulators over the program's tiles, one reduction at the end.  Padded
    lanes load dy = 0 and x = 0, so they add nothing (no select needed)."""
    cb = tl.program_id(0)
    k = tl.program_id(1)
    split = tl.num_programs(1)
    ch = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = ch < C
    mean = _bc(tl.load(Mean + ch, mask=c_mask, other=0.0), CHANNELS_LAST)
    t_lo = k * tiles_per_prog
    t_hi = tl.minimum(t_lo + tiles_per_prog, n_tiles)
    # accumulators of half a tile, x and dy of a whole tile (32 KB) in flight per iteration
    H: tl.constexpr = BLOCK_M // 2
    acc_dy = _zeros(CHANNELS_LAST, H, BLOCK_C, BLOCK_S)
    acc_dyx = _zeros(CHANNELS_LAST, H, BLOCK_C, BLOCK_S)
    for t in range(t_lo, t_hi):
        o0, m0 = _tile(t, 0, ch, C, S, R, n_sc, CHANNELS_LAST, BLOCK_M, H, BLOCK_S)
        o1, m1 = _tile(t, 1, ch, C, S, R, n_sc, CHANNELS_LAST, BLOCK_M, H, BLOCK_S)
        x0 = tl.load(X + o0, mask=m0, other=0.0).to(tl.float32)
        x1 = tl.load(X + o1, mask=m1, other=0.0).to(tl.float32)
        dy0 = tl.load(DY + o0, mask=m0, other=0.0).to(tl.float32)
        dy1 = tl.load(DY + o1, mask=m1, other=0.0).to(tl.float32)
        acc_dy += dy0 + dy1
        acc_dyx += dy0 * (x0 - mean) + dy1 * (x1 - mean)
    offs = tl.cast(k, tl.int64) * C + ch
    tl.store(Part + offs, _per_channel(acc_dy, CHANNELS_LAST), mask=c_mask)
    tl.store(Part + tl.cast(split, tl.int64) * C + offs, _per_channel(acc_dyx, CHANNELS_LAST),
             mask=c_mask)


@triton.jit
def _sum_partials(Part, cb, ch, C, split, BLOCK_C: tl.constexpr, GROUP: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """(sum over chunks of Part[0], of Part[1]) for the channels ``ch`` of block ``cb``, in
    a fixed order.  Read as rows of GROUP >= 4 aligned channels so every load is a 16-byte
    vector (a 1-channel block reads its group of 4 and keeps its own column); the group
    start is computed from the program id so the compiler sees its alignment."""
    cg = (cb * BLOCK_C // GROUP) * GROUP + tl.arange(0, GROUP)
    g_mask = cg < C
    s1 = tl.zeros((GROUP,), dtype=tl.float32)
    s2 = tl.zeros((GROUP,), dtype=tl.float32)
    second = tl.cast(split, tl.int64) * C
    for k0 in range(0, split, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        offs = kk[:, None].to(tl.int64) * C + cg[None, :]
        mask = (kk < split)[:, None] & g_mask[None, :]
        s1 += tl.sum(tl.load(Part + offs, mask=mask, other=0.0), axis=0)
        s2 += tl.sum(tl.load(Part + second + offs, mask=mask, other=0.0), axis=0)
    if GROUP == BLOCK_C:
        return s1, s2
    else:
        pick = cg[None, :] == ch[:, None]
        return (tl.sum(tl.where(pick, s1[None, :], 0.0), axis=1),
                tl.sum(tl.where(pick, s2[None, :], 0.0), axis=1))


@triton.jit
def _bn_bwd_dx_kernel(
    X, DY, DX, W, Mean, Rstd,
    Part,          # (2, split, C) fp32 per-chunk sum(dy), sum(dy * (x - mean))
    DW, DB,        # (C,) dweight (HAS_W) and dbias, in the parameters' dtype
    C, S, R, n_sc, n_tiles, split, inv_m,
    CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr, GROUP: tl.constexpr, BLOCK_K: tl.constexpr, HAS_W: tl.constexpr,
):
    """dx = rstd*w*(dy - mean(dy) - xhat*mean(dy*xhat)), xhat = (x - mean)*rstd, written as
    a*dy + c*(x - mean) + b per channel; eval passes inv_m = 0: dx = rstd*w*dy.  Every
    program sums the partials of its channels in the same fixed order (so all agree
    bitwise); the p == 0 programs store dweight = rstd*sum(dy*(x - mean)), dbias = sum(dy).
    Persistent: program (cb, p) strides over the tiles of channel block cb."""
    cb = tl.program_id(0)
    p = tl.program_id(1)
    P = tl.num_programs(1)
    ch = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = ch < C
    sum_dy, sum_dyx = _sum_partials(Part, cb, ch, C, split, BLOCK_C, GROUP, BLOCK_K)
    mean = tl.load(Mean + ch, mask=c_mask, other=0.0)
    rstd = tl.load(Rstd + ch, mask=c_mask, other=0.0)
    if p == 0:
        if HAS_W:
            tl.store(DW + ch, (sum_dyx * rstd).to(DW.dtype.element_ty), mask=c_mask)
        tl.store(DB + ch, sum_dy.to(DB.dtype.element_ty), mask=c_mask)
    a = rstd * _param(W, ch, c_mask, 1.0, HAS_W, BLOCK_C)
    # eval: inv_m = 0 and the mean terms vanish -- also when a sum is inf/NaN, which must
    # then stay in its own elements of dx, as in torch's eval backward
    train = inv_m != 0.0
    b = tl.where(train, -a * sum_dy * inv_m, 0.0)
    c = tl.where(train, -a * rstd * rstd * sum_dyx * inv_m, 0.0)
    a = _bc(a, CHANNELS_LAST)
    b = _bc(b, CHANNELS_LAST)
    c = _bc(c, CHANNELS_LAST)
    mean = _bc(mean, CHANNELS_LAST)
    for t in range(p, n_tiles, P):
        offs, mask = _tile(t, 0, ch, C, S, R, n_sc, CHANNELS_LAST, BLOCK_M, BLOCK_M, BLOCK_S)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        dx = a * dy + c * (x - mean) + b
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launchers
_DT_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@functools.lru_cache(maxsize=16)
def _sms(device) -> int:
    if device.type != "cuda":
        return CPU_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


class _Launch:
    """What one kernel launch needs beyond the tensors, derived once per shape and config."""

    __slots__ = ("meta", "grid", "n_sc", "n_tiles", "tpp", "split")

    def __init__(self, cfg: TileConfig, N, C, S, cl, reduce: bool):
        self.meta = dict(CHANNELS_LAST=cl, BLOCK_M=cfg.block_m, BLOCK_C=cfg.block_c,
                         BLOCK_S=cfg.block_s, num_warps=cfg.num_warps)
        self.n_sc = 1 if cl else _cdiv(S, cfg.block_s)
        self.n_tiles = n_tiles(N, C, S, cl, (cfg.block_m, cfg.block_c, cfg.block_s))
        programs = max(1, min(cfg.programs, self.n_tiles))
        # reduce kernels: contiguous chunks of tiles, none empty; streaming: a stride
        self.tpp = _cdiv(self.n_tiles, programs)
        self.split = _cdiv(self.n_tiles, self.tpp) if reduce else programs
        self.grid = (_cdiv(C, cfg.block_c), self.split)


class _Plan:
    __slots__ = ("M", "R", "inv_m", "bessel", "reduce", "stream", "dx_meta", "merge_grid")


def _layout(x):
    """(N, C, S, channels_last) of x.  (N, C) and (N, C, 1, ...) are rows of C channels; a
    tensor both contiguous and channels_last (other size-1 dims) is read as NCHW."""
    shape = x.shape
    S = 1
    for d in shape[2:]:
        S *= d
    return shape[0], shape[1], S, x.dim() == 2 or S == 1 or not x.is_contiguous()


@functools.lru_cache(maxsize=4096)
def _plan(N, C, S, cl, dtype, device, bwd, config):
    """Launch parameters per (shape, layout, dtype, device, pass, config): the heuristic
    (tuned table first) when config is None."""
    itemsize = dtype.itemsize
    if config is None:
        sms, arch, name = _sms(device), arch_of(device), _DT_NAMES[dtype]
        red = kernel_config("sums" if bwd else "stats", N, C, S, cl, name, itemsize, sms, arch)
        st = kernel_config("dx" if bwd else "apply", N, C, S, cl, name, itemsize, sms, arch)
    else:
        if not isinstance(config, BatchNormConfig):
            raise TypeError(f"batch_norm: config must be a BatchNormConfig, got "
                            f"{type(config).__name__}")
        red, st = config.reduce, config.stream
        validate(red, cl, itemsize, "reduce")
        validate(st, cl, itemsize, "stream")
    p = _Plan()
    p.M = N * S
    p.R = p.M if cl else N
    p.inv_m = 1.0 / p.M
    p.bessel = p.M / (p.M - 1) if p.M > 1 else float("inf")
    p.reduce = _Launch(red, N, C, S, cl, True)
    p.stream = _Launch(st, N, C, S, cl, False)
    group = dx_group(st.block_c)
    p.dx_meta = dict(p.stream.meta, GROUP=group, BLOCK_K=DX_PART_ELEMS // group)
    p.merge_grid = (_cdiv(C, MERGE_BLOCK_C),)
    return p


def _like_layout(t, x, channels_last):
    """``t`` in x's layout: a copy only when the caller breaks "dy has x's memory format"."""
    if not channels_last or x.is_contiguous():  # NCHW, (N, C), (N, C, 1, 1)
        return t.contiguous()
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return t.contiguous(memory_format=fmt)


def batch_norm_fwd(x, weight, bias, running_mean, running_var, training: bool, eps: float,
                   momentum=0.1, num_batches_tracked=None, *, config: BatchNormConfig = None):
    """Backend contract (see fusednorm.backends).  ``config`` overrides the launch heuristic
    (``reduce``: the statistics kernel, ``stream``: the normalizing kernel).

    Training: three launches -- chunk statistics (+ num_batches_tracked += 1), the merge
    (+ the running statistics' update), the normalizing pass.  Eval: one launch."""
    N, C, S, cl = _layout(x)
    p = _plan(N, C, S, cl, x.dtype, x.device, False, config)
    out = torch.empty_like(x)  # preserve_format: x's strides
    mean = f32_empty(x, C)
    rstd = f32_empty(x, C)
    st = p.stream
    if training:
        if p.M < 2:
            raise ValueError(f"batch_norm: training needs N*spatial >= 2, got x.shape="
                             f"{tuple(x.shape)}")
        var = f32_empty(x, C)
        coef = f32_empty(x, 3 * C)
        rd = p.reduce
        part = f32_empty(x, 2 * rd.split * C)
        cumulative = momentum is None
        nbt = num_batches_tracked
        _bn_stats_kernel[rd.grid](x, part, coef, nbt if nbt is not None else part, C, S, p.R,
                                  rd.n_sc, rd.n_tiles, rd.tpp, HAS_NBT=nbt is not None,
                                  **rd.meta)
        _bn_merge_kernel[p.merge_grid](
            part, weight if weight is not None else mean, bias if bias is not None else mean,
            mean, rstd, var, coef,
            running_mean if running_mean is not None else mean,
            running_var if running_var is not None else mean,
            nbt if cumulative else mean, C, rd.split, p.inv_m, p.bessel, eps,
            0.0 if cumulative else float(momentum), BLOCK_K=MERGE_BLOCK_K,
            BLOCK_C=MERGE_BLOCK_C, HAS_W=weight is not None, HAS_B=bias is not None,
            HAS_RM=running_mean is not None, HAS_RV=running_var is not None,
            CUMULATIVE=cumulative, num_warps=MERGE_WARPS)
        _bn_apply_kernel[st.grid](x, out, coef, coef, coef, coef, coef, mean, rstd,
                                  C, S, p.R, st.n_sc, st.n_tiles, eps, EVAL=False, HAS_W=False,
                                  HAS_B=False, **st.meta)
        return out, mean, rstd, var
    _bn_apply_kernel[st.grid](x, out, mean, weight if weight is not None else mean,
                              bias if bias is not None else mean, running_mean, running_var,
                              mean, rstd, C, S, p.R, st.n_sc, st.n_tiles, eps, EVAL=True,
                              HAS_W=weight is not None, HAS_B=bias is not None, **st.meta)
    return out, mean, rstd, None


def batch_norm_bwd(dy, x, weight, mean, rstd, training: bool, *,
                   config: BatchNormConfig = None):
    """Backend contract.  dweight = sum(dy*xhat), dbias = sum(dy): fp32 per-chunk partials
    summed over chunks in a fixed order (bitwise repeatable).  Two launches: the chunk sums,
    then dx, whose programs also write dweight / dbias.  ``config``: ``reduce`` the sums
    kernel, ``stream`` the dx kernel."""
    N, C, S, cl = _layout(x)
    p = _plan(N, C, S, cl, x.dtype, x.device, True, config)
    dy = _like_layout(dy, x, cl)
    dx = torch.empty_like(x)
    if weight is None:
        dweight, dbias = None, x.new_empty(C)
    else:
        dweight, dbias = torch.empty_like(weight), torch.empty_like(weight)
    if mean.dtype is not torch.float32:
        mean, rstd = mean.float(), rstd.float()
    rd, st = p.reduce, p.stream
    part = f32_empty(x, 2 * rd.split * C)
    _bn_bwd_sums_kernel[rd.grid](x, dy, mean, part, C, S, p.R, rd.n_sc, rd.n_tiles, rd.tpp,
                                 **rd.meta)
    _bn_bwd_dx_kernel[st.grid](x, dy, dx, weight if weight is not None else mean, mean, rstd,
                               part, dweight if dweight is not None else dbias, dbias, C, S,
                               p.R, st.n_sc, st.n_tiles, rd.split,
                               p.inv_m if training else 0.0, HAS_W=weight is not None,
                               **p.dx_meta)
    return dx, dweight, dbias


# --------------------------------------------------------------------------- tuning targets
def tune_targets(op, shape, dtype, layout, device):
    """kernels._tuning.TuneTarget objects for one benchmark case (bench/bench_batch_norm.py):
    the four tunable kernels, each timed alone on inputs allocated here (fp32 affine and
    running statistics, as the benchmark).  The merge kernel is fixed."""
    from fusednorm.kernels._tuning import TuneTarget
    from fusednorm.kernels.batch_norm_config import family, table_key

    if op != "batch_norm":
        return []
    x = torch.randn(shape, device=device).to(dtype)
    if layout == "nhwc" and x.dim() in (4, 5):
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4
                         else torch.channels_last_3d)
    N, C, S, cl = _layout(x)
    dy = torch.randn_like(x)
    w = torch.randn(C, device=device)
    b = torch.randn(C, device=device)
    item, sms, name = x.element_size(), _sms(x.device), _DT_NAMES[dtype]
    R = N * S if cl else N
    inv_m = 1.0 / (N * S)
    # statistics the apply / dx runs read, from the heuristic's own launches
    _, mean, rstd, _ = batch_norm_fwd(x, w, b, None, None, True, 1e-5)
    coef = torch.cat([mean, rstd * w, b])
    coef_k = torch.empty_like(coef)  # the statistics kernel writes its row 0
    out, dx = torch.empty_like(x), torch.empty_like(x)
    dw, db = torch.empty_like(w), torch.empty_like(b)
    cands = {kind: candidates(kind, N, C, S, cl, item, sms)
             for kind in ("stats", "apply", "sums", "dx")}
    most = max(_Launch(c, N, C, S, cl, True).split for k in ("stats", "sums") for c in cands[k])
    part = torch.empty(2 * most * C, device=device)  # partials of any reduce candidate
    heur_b = _plan(N, C, S, cl, x.dtype, x.device, True, None)
    sb = heur_b.reduce
    part_b = torch.empty(2 * sb.split * C, device=device)
    _bn_bwd_sums_kernel[sb.grid](x, dy, mean, part_b, C, S, R, sb.n_sc, sb.n_tiles, sb.tpp,
                                 **sb.meta)

    def stats(cfg):
        lc = _Launch(cfg, N, C, S, cl, True)
        _bn_stats_kernel[lc.grid](x, part, coef_k, part, C, S, R, lc.n_sc, lc.n_tiles,
                                  lc.tpp, HAS_NBT=False, **lc.meta)

    def apply(cfg):
        lc = _Launch(cfg, N, C, S, cl, False)
        _bn_apply_kernel[lc.grid](x, out, coef, coef, coef, coef, coef, mean, rstd, C, S, R,
                                  lc.n_sc, lc.n_tiles, 1e-5, EVAL=False, HAS_W=False,
                                  HAS_B=False, **lc.meta)

    def sums(cfg):
        lc = _Launch(cfg, N, C, S, cl, True)
        _bn_bwd_sums_kernel[lc.grid](x, dy, mean, part, C, S, R, lc.n_sc, lc.n_tiles, lc.tpp,
                                     **lc.meta)

    def dx_run(cfg):  # reads the heuristic sums launch's partials
        lc = _Launch(cfg, N, C, S, cl, False)
        group = dx_group(cfg.block_c)
        _bn_bwd_dx_kernel[lc.grid](x, dy, dx, w, mean, rstd, part_b, dw, db, C, S, R, lc.n_sc,
                                   lc.n_tiles, sb.split, inv_m, GROUP=group,
                                   BLOCK_K=DX_PART_ELEMS // group, HAS_W=True, **lc.meta)

    key, numel = table_key(name, N, C, S), x.numel() * item
    return [TuneTarget(family(kind, cl), key, cands[kind], run, nbytes=passes * numel)
            for kind, run, passes in (("stats", stats, 1), ("apply", apply, 2),
                                      ("sums", sums, 2), ("dx", dx_run, 3))]


# --------------------------------------------------------------------------- compile check
_X_DTYPES = (("fp32", 4), ("fp16", 2), ("bf16", 2))
_SIZES = {"C": "i32", "S": "i32", "R": "i32", "n_sc": "i32", "n_tiles": "i32"}
F32 = "*fp32"


def _cx(constexprs):
    return {k: "constexpr" for k in constexprs}


def _sig_merge(q, cum):
    return {"Part": F32, "W": q, "B": q, "Mean": F32, "Rstd": F32, "Var": F32, "Coef": F32,
            "RM": q, "RV": q, "NBT": "*i64" if cum else F32, "C": "i32", "split": "i32",
            "inv_m": "fp32", "bessel": "fp32", "eps": "fp32", "momentum": "fp32"}


def _sig_stats(P, has_nbt):
    return {"X": P, "Part": F32, "Coef": F32, "NBT": "*i64" if has_nbt else F32, **_SIZES,
            "tiles_per_prog": "i32"}


def _sig_sums(P):
    return {"X": P, "DY": P, "Mean": F32, "Part": F32, **_SIZES, "tiles_per_prog": "i32"}


def _sig_apply(P, ev, pt, has):
    q = pt if has else F32
    return {"X": P, "Y": P, "Coef": F32, "W": q, "B": q, "RM": pt if ev else F32,
            "RV": pt if ev else F32, "Mean": F32, "Rstd": F32, **_SIZES, "eps": "fp32"}


def _sig_dx(P, wt, has_w):
    return {"X": P, "DY": P, "DX": P, "W": wt, "Mean": F32, "Rstd": F32, "Part": F32,
            "DW": wt, "DB": wt if has_w else P, **_SIZES, "split": "i32", "inv_m": "fp32"}


def compile_variants():
    """Every (kernel, signature, constexprs, num_warps) the launchers can produce: x dtype x
    layout x menu tile x flags x parameter dtype (x's or fp32; the functional layer casts
    other mixes of the affine parameters to fp32; running statistics of another dtype are
    one more specialization of the merge / eval kernels, covered for x's dtype and fp32)."""
    for pt in ("*fp32", "*fp16", "*bf16"):  # the merge reads no x: parameter dtypes only
        for cum in (False, True):
            for has in (True, False):
                ce = {"BLOCK_K": MERGE_BLOCK_K, "BLOCK_C": MERGE_BLOCK_C, "HAS_W": has,
                      "HAS_B": has, "HAS_RM": has, "HAS_RV": has, "CUMULATIVE": cum}
                yield (_bn_merge_kernel, {**_sig_merge(pt if has else F32, cum), **_cx(ce)},
                       ce, MERGE_WARPS)
    for xt, item in _X_DTYPES:
        P = f"*{xt}"
        pts = list(dict.fromkeys((P, F32)))
        for cl in (False, True):
            for bm, bc, bs in tiles(cl, item):
                ce = {"CHANNELS_LAST": cl, "BLOCK_M": bm, "BLOCK_C": bc, "BLOCK_S": bs}
                for has_nbt in (False, True):
                    cs = dict(ce, HAS_NBT=has_nbt)
                    yield _bn_stats_kernel, {**_sig_stats(P, has_nbt), **_cx(cs)}, cs, NUM_WARPS
                yield _bn_bwd_sums_kernel, {**_sig_sums(P), **_cx(ce)}, ce, NUM_WARPS
                ca = dict(ce, EVAL=False, HAS_W=False, HAS_B=False)
                yield (_bn_apply_kernel, {**_sig_apply(P, False, F32, False), **_cx(ca)}, ca,
                       NUM_WARPS)
                for pt in pts:
                    for has in (True, False):
                        ca = dict(ce, EVAL=True, HAS_W=has, HAS_B=has)
                        yield (_bn_apply_kernel, {**_sig_apply(P, True, pt, has), **_cx(ca)},
                               ca, NUM_WARPS)
                group = dx_group(bc)
                for wt, has_w in [(pt, True) for pt in pts] + [(F32, False)]:
                    cd = dict(ce, GROUP=group, BLOCK_K=DX_PART_ELEMS // group, HAS_W=has_w)
                    yield _bn_bwd_dx_kernel, {**_sig_dx(P, wt, has_w), **_cx(cd)}, cd, NUM_WARPS


def evidence_launches(shape, dtype_name, channels_last, sms=132, arch="sm90"):
    """The launches the heuristic makes for one case (fp32 affine and running statistics, as
    the benchmark), described for an offline compile with the launch-time specialization:
    integer arguments equal to 1 become constexprs and those divisible by 16 are named in
    ``divisible``.  For tests/test_triton_batch_norm.py's evidence table."""
    item = 4 if dtype_name == "fp32" else 2
    N, C = shape[0], shape[1]
    S = 1
    for d in shape[2:]:
        S *= d
    cl = channels_last or len(shape) == 2 or S == 1
    P = f"*{dtype_name}"
    out = []
    for bwd in (False, True):
        red = kernel_config("sums" if bwd else "stats", N, C, S, cl, dtype_name, item, sms, arch)
        st = kernel_config("dx" if bwd else "apply", N, C, S, cl, dtype_name, item, sms, arch)
        lr, ls = _Launch(red, N, C, S, cl, True), _Launch(st, N, C, S, cl, False)
        R = N * S if cl else N
        red_ints = dict(C=C, S=S, R=R, n_sc=lr.n_sc, n_tiles=lr.n_tiles, tiles_per_prog=lr.tpp)
        st_ints = dict(C=C, S=S, R=R, n_sc=ls.n_sc, n_tiles=ls.n_tiles)
        tile_b = lambda c: c.block_m * c.block_c * c.block_s * item  # noqa: E731
        if not bwd:
            todo = [("stats", "stats", _bn_stats_kernel, _sig_stats(P, True),
                     dict(lr.meta, HAS_NBT=True), red_ints, lr.grid, 2 * tile_b(red)),
                    ("merge", "merge", _bn_merge_kernel, _sig_merge(F32, False),
                     dict(BLOCK_K=MERGE_BLOCK_K, BLOCK_C=MERGE_BLOCK_C, HAS_W=True, HAS_B=True,
                          HAS_RM=True, HAS_RV=True, CUMULATIVE=False, num_warps=MERGE_WARPS),
                     dict(C=C, split=lr.split), (_cdiv(C, MERGE_BLOCK_C), 1),
                     2 * MERGE_BLOCK_K * MERGE_BLOCK_C * 4),
                    ("apply", "apply", _bn_apply_kernel, _sig_apply(P, False, F32, False),
                     dict(ls.meta, EVAL=False, HAS_W=False, HAS_B=False), st_ints, ls.grid,
                     tile_b(st)),
                    ("apply-eval", "apply", _bn_apply_kernel, _sig_apply(P, True, F32, True),
                     dict(ls.meta, EVAL=True, HAS_W=True, HAS_B=True), st_ints, ls.grid,
                     tile_b(st))]
        else:
            group = dx_group(st.block_c)
            todo = [("sums", "sums", _bn_bwd_sums_kernel, _sig_sums(P), dict(lr.meta),
                     red_ints, lr.grid, 2 * tile_b(red)),
                    ("dx", "dx", _bn_bwd_dx_kernel, _sig_dx(P, F32, True),
                     dict(ls.meta, GROUP=group, BLOCK_K=DX_PART_ELEMS // group, HAS_W=True),
                     dict(st_ints, split=lr.split), ls.grid, 2 * tile_b(st))]
        for label, role, fn, sig, meta, ints, grid, bpi in todo:
            meta = dict(meta)
            nw = meta.pop("num_warps")
            sig = dict(sig, **_cx(meta))
            ce = dict(meta)
            for name, v in ints.items():
                if v == 1:  # what Triton does with an integer argument equal to 1
                    sig[name] = "constexpr"
                    ce[name] = 1
            out.append(dict(kind="launch", label=label, role=role, kernel=fn.fn.__name__
                            if hasattr(fn, "fn") else fn.__name__, sig=sig, ce=ce, num_warps=nw,
                            divisible=sorted(n for n, v in ints.items() if v % 16 == 0
                                             and v != 1 and sig[n] != "constexpr"),
                            grid=list(grid), bytes_per_iter=bpi))
    return out
