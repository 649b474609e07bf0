"""Triton GroupNorm (and InstanceNorm = GroupNorm with G = C): forward, backward, fused SiLU.

A group (n, g) is channels [g*Cg, (g+1)*Cg) at all S spatial positions of sample n.

NCHW (a group is Cg contiguous planes, one block of Cg*S elements): _gn_fwd_nchw/_gn_bwd_nchw
  SPLIT=False  persistent programs, group after group: pass 1 streams the group into
               per-thread shifted sums (no cross-thread reduction in the loop; one per group,
               backward one per channel block for the per-channel sums of dp and dp*xhat);
               pass 2 normalizes (dx) re-reading the group from L2, tiles in reverse order
               (the ones read last first).  Working set = programs x group bytes, bounded by
               the heuristic (group_norm_config.L2_BUDGET); pass-1 loads are marked
               evict_last, pass-2 loads and stores evict_first.
  SPLIT=True   a few huge groups (video VAEs): a (groups, chunks) grid, phase 1 the partial
               sums of each chunk, phase 2 merges a group's partials in a fixed order (every
               program of the group, the same bits) and makes the second pass over its chunk.
channels_last (a group is 20 bytes of every 640-byte row, so programs own whole rows: 16-B
loads along C, per-channel accumulators): _gn_fwd_cl/_gn_bwd_cl over (sample, row chunk)
  phase 1   per-channel shifted sums (bwd: dp, dp*xhat) of the chunk, one reduction per
            channel block;
  phase 2   every program of a sample merges the sample's per-channel sums into group values
            (same order everywhere, same bits) and normalizes (dx) its rows in reverse order;
  phase 0   both with a barrier between, one program a sample (one launch, when the samples
            alone fill the GPU or a sample is a few row tiles).
  Two kernels, not one cooperative launch: a grid-wide spin-wait cannot run in the
  interpreter (programs run one after another), cannot be verified without a GPU, needs a
  counter zeroed per call (a torch kernel, or state shared across streams) and a co-resident
  grid sized from the register count at run time.  The price is a second read of x (fwd)
  or x and dy (bwd), partly from L2 (reverse order).

Statistics: shifted sums of x - K with K = the group's first element (an element of the set,
so |mean - K| is a few standard deviations and Var = E[(x-K)^2] - E[x-K]^2 loses only a few
bits even at mean 1e4, std 1 -- never E[x^2] - E[x]^2 of raw x).  The mean is K + mean(x-K);
the forward computes (x - K) * scale + (b - mean(x - K) * scale), both terms O(1) (folding K
into the shift would cancel catastrophically at mean 1e4).  dweight/dbias: fp32 per-(sample
[, chunk], channel) partials, column sums in a fixed order.  No IEEE divisions in the kernels
(reciprocals from the host, an approximate one in the sigmoid): their slow-path subroutine
calls save registers to local memory on sm_80.
"""
import functools

import torch
import triton
import triton.language as tl

from fusednorm.kernels._reduce import sum_partials
from fusednorm.kernels._tuning import TuneTarget, arch_of
from fusednorm.kernels._util import cdiv as _cdiv, f32_empty
from fusednorm.kernels.group_norm_config import (
    BLOCK_G, BLOCK_J, BLOCK_K, SUM_CONFIG, GroupNormConfig, candidates, chunk_and_split, family,
    group_norm_config, max_registers, table_key, tiles)

# SM count stand-in for CPU tensors (the interpreter): small, so persistent loops run several
# groups per program and leave remainders in the tests.
_CPU_SMS = 3


# ------------------------------------------------------------------------ shared helpers
@triton.jit
def _finish(s1, s2, inv_count, eps):
    """(mean of x - K, rstd) from the shifted sums.  var < 0 (rounding) clamps to 0 while a
    NaN stays NaN (tl.where, not maximum: PTX max drops NaN).  inv_count = 1 / (Cg*S) from the
    host: no IEEE division (a subroutine call whose register saves count as spills on sm_80)."""
    ms = s1 * inv_count
    var = s2 * inv_count - ms * ms
    var = tl.where(var < 0.0, 0.0, var)
    return ms, tl.rsqrt(var + eps)


@triton.jit
def _affine(W, B, idx, mask, has_w, has_b):
    """Per-channel (w, b) in fp32 from the parameters' own dtype (a kernel specialization, no
    cast before the launch); absent: w = 1, b = 0.  has_w / has_b are bits of the runtime
    flags: these loads run once per channel block, so a branch costs nothing and a quarter of
    the variants are compiled."""
    w = tl.full(idx.shape, 1.0, tl.float32)
    b = tl.zeros(idx.shape, tl.float32)
    if has_w:
        w = tl.load(W + idx, mask=mask, other=0.0).to(tl.float32)
    if has_b:
        b = tl.load(B + idx, mask=mask, other=0.0).to(tl.float32)
    return w, b


@triton.jit
def _sigmoid(p):
    """1 / (1 + exp(-p)) with the approximate division (div.full.f32, 2 ulp): tl.sigmoid's
    IEEE division is a subroutine call, and its register saves are local-memory traffic."""
    return tl.fdiv(tl.full(p.shape, 1.0, tl.float32), 1.0 + tl.exp(-p), ieee_rounding=False)


@triton.jit
def _silu_grad(x, dy, mean, rstd, w, b, silu):
    """xhat and dL/dp at the pre-activation p = xhat*w + b (p recomputed from x).
    SiLU: out = p*sig(p), d out/dp = sig(p) * (1 + p*(1 - sig(p)))."""
    xhat = (x - mean) * rstd
    if silu:
        p = xhat * w + b
        sig = _sigmoid(p)
        dy = dy * sig * (1.0 + p * (1.0 - sig))
    return xhat, dy


# ---------------------------------------------------------------------- NCHW helpers
# Tiles are (UNROLL, BLOCK_C, BLOCK_S): BLOCK_C channels x BLOCK_S positions is one CTA-tile
# (a 16-B vector a thread); UNROLL of them follow along s, held in the same thread, so the
# sum over axis 0 is register adds and every loop step has UNROLL independent loads.
@triton.jit
def _nchw_sums(Xg, K, Cg, S, s_lo, s_hi,
               BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, UNROLL: tl.constexpr):
    """sum(x - K), sum((x - K)^2) over channels [0, Cg) x positions [s_lo, s_hi) of the group
    starting at Xg: per-thread accumulators, two reductions at the end."""
    r = tl.arange(0, UNROLL)[:, None, None] * BLOCK_S
    cc = tl.arange(0, BLOCK_C)[None, :, None]
    sp = tl.arange(0, BLOCK_S)[None, None, :]
    acc1 = tl.zeros((1, BLOCK_C, BLOCK_S), tl.float32)
    acc2 = tl.zeros((1, BLOCK_C, BLOCK_S), tl.float32)
    for c0 in range(0, Cg, BLOCK_C):
        cv = c0 + cc
        cm = cv < Cg
        row = cv * S  # int32: inside one group (< 2^31 elements)
        for s0 in range(s_lo, s_hi, UNROLL * BLOCK_S):
            s = s0 + r + sp
            m = cm & (s < s_hi)
            # evict_last: pass 2 re-reads these lines from L2
            x = tl.load(Xg + row + s, mask=m, other=0.0,
                        eviction_policy="evict_last").to(tl.float32)
            d = tl.where(m, x - K, 0.0)  # padded lanes must stay 0 in both sums
            acc1 += tl.sum(d, axis=0, keep_dims=True)
            acc2 += tl.sum(d * d, axis=0, keep_dims=True)
    return tl.sum(tl.sum(tl.sum(acc1, axis=2), axis=1), axis=0), \
        tl.sum(tl.sum(tl.sum(acc2, axis=2), axis=1), axis=0)


@triton.jit
def _nchw_apply(Xg, Yg, W, B, c_first, K, ms, rstd, Cg, S, s_lo, s_hi, silu, has_w, has_b,
                BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, UNROLL: tl.constexpr):
    """y = act(((x - K) - mean(x - K)) * rstd*w + b) over [0, Cg) x [s_lo, s_hi), tiles in
    reverse order of _nchw_sums (the ones read last are the likeliest still in L2).
    Shifted before scaling: x*scale + (b - mean*scale) cancels when |mean| >> std."""
    STEP: tl.constexpr = UNROLL * BLOCK_S
    r = tl.arange(0, UNROLL)[:, None, None] * BLOCK_S
    cc = tl.arange(0, BLOCK_C)[None, :, None]
    sp = tl.arange(0, BLOCK_S)[None, None, :]
    n_c = (Cg + BLOCK_C - 1) // BLOCK_C
    n_s = (s_hi - s_lo + STEP - 1) // STEP
    for i in range(0, n_c):
        cv = (n_c - 1 - i) * BLOCK_C + cc
        cm = cv < Cg
        w, b = _affine(W, B, c_first + cv, cm, has_w, has_b)
        scale = w * rstd
        shift = b - ms * scale  # ms and scale are O(1): no cancellation (K stays out)
        row = cv * S
        for j in range(0, n_s):
            s = s_lo + (n_s - 1 - j) * STEP + r + sp
            m = cm & (s < s_hi)
            x = tl.load(Xg + row + s, mask=m, other=0.0,
                        eviction_policy="evict_first").to(tl.float32)
            y = (x - K) * scale + shift
            if silu:  # uniform runtime branch: one compiled variant serves both activations
                y = y * _sigmoid(y)
            tl.store(Yg + row + s, y.to(Yg.dtype.element_ty), mask=m,
                     eviction_policy="evict_first")


@triton.jit
def _nchw_grad_sums(Xg, DYg, W, B, DWr, DBr, c_first, mean, rstd, Cg, S, s_lo, s_hi, silu,
                    has_w, has_b,
                    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, UNROLL: tl.constexpr):
    """Stores the per-channel sums of dp*xhat and dp over [s_lo, s_hi) at DWr/DBr[c_first + c]
    (dweight / dbias partials) and returns the group sums of g = dp*w and g*xhat."""
    r = tl.arange(0, UNROLL)[:, None, None] * BLOCK_S
    cc = tl.arange(0, BLOCK_C)[None, :, None]
    sp = tl.arange(0, BLOCK_S)[None, None, :]
    sum_g = 0.0
    sum_gx = 0.0
    for c0 in range(0, Cg, BLOCK_C):
        cv = c0 + cc
        cm = cv < Cg
        w, b = _affine(W, B, c_first + cv, cm, has_w, has_b)
        row = cv * S
        acc_dw = tl.zeros((1, BLOCK_C, BLOCK_S), tl.float32)
        acc_db = tl.zeros((1, BLOCK_C, BLOCK_S), tl.float32)
        for s0 in range(s_lo, s_hi, UNROLL * BLOCK_S):
            s = s0 + r + sp
            m = cm & (s < s_hi)
            x = tl.load(Xg + row + s, mask=m, other=0.0,
                        eviction_policy="evict_last").to(tl.float32)
            # dy = 0 on padded lanes, so they add nothing to either sum
            dy = tl.load(DYg + row + s, mask=m, other=0.0,
                         eviction_policy="evict_last").to(tl.float32)
            xhat, dp = _silu_grad(x, dy, mean, rstd, w, b, silu)
            acc_dw += tl.sum(dp * xhat, axis=0, keep_dims=True)
            acc_db += tl.sum(dp, axis=0, keep_dims=True)
        dw = tl.sum(acc_dw, axis=2, keep_dims=True)  # (1, BLOCK_C, 1)
        db = tl.sum(acc_db, axis=2, keep_dims=True)
        tl.store(DWr + c_first + cv, dw, mask=cm)
        tl.store(DBr + c_first + cv, db, mask=cm)
        sum_g += tl.sum(tl.sum(tl.sum(w * db, axis=2), axis=1), axis=0)
        sum_gx += tl.sum(tl.sum(tl.sum(w * dw, axis=2), axis=1), axis=0)
    return sum_g, sum_gx


@triton.jit
def _nchw_dx(Xg, DYg, DXg, W, B, c_first, mean, rstd, c1, c2, Cg, S, s_lo, s_hi, silu,
             has_w, has_b,
             BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, UNROLL: tl.constexpr):
    """dx = rstd * (g - mean(g) - xhat * mean(g*xhat)), g = dp*w; c1, c2 are those means;
    computed as a*dp + bc*(x - mean) + cc with per-channel a = rstd*w, bc = -rstd^2*c2,
    cc = -rstd*c1 (fewer values live through the loop).  Reverse tile order, as _nchw_apply."""
    STEP: tl.constexpr = UNROLL * BLOCK_S
    r = tl.arange(0, UNROLL)[:, None, None] * BLOCK_S
    ch = tl.arange(0, BLOCK_C)[None, :, None]
    sp = tl.arange(0, BLOCK_S)[None, None, :]
    n_c = (Cg + BLOCK_C - 1) // BLOCK_C
    n_s = (s_hi - s_lo + STEP - 1) // STEP
    bc = -rstd * rstd * c2
    cc = -rstd * c1
    for i in range(0, n_c):
        cv = (n_c - 1 - i) * BLOCK_C + ch
        cm = cv < Cg
        w, b = _affine(W, B, c_first + cv, cm, has_w, has_b)
        a = rstd * w
        row = cv * S
        for j in range(0, n_s):
            s = s_lo + (n_s - 1 - j) * STEP + r + sp
            m = cm & (s < s_hi)
            xc = tl.load(Xg + row + s, mask=m, other=0.0,
                         eviction_policy="evict_first").to(tl.float32) - mean
            dp = tl.load(DYg + row + s, mask=m, other=0.0,
                         eviction_policy="evict_first").to(tl.float32)
            if silu:  # p = xhat*w + b, d out/dp = sig(p) * (1 + p*(1 - sig(p)))
                p = xc * a + b
                sig = _sigmoid(p)
                dp = dp * sig * (1.0 + p * (1.0 - sig))
            dx = a * dp + bc * xc + cc
            tl.store(DXg + row + s, dx.to(DXg.dtype.element_ty), mask=m,
                     eviction_policy="evict_first")


@triton.jit
def _sum_chunks(Part, first, split, BLOCK_K: tl.constexpr):
    """sum of Part[first : first + split] in a fixed order (every caller gets the same bits)."""
    acc = tl.zeros((BLOCK_K,), tl.float32)
    for k0 in range(0, split, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        acc += tl.load(Part + first + kk, mask=kk < split, other=0.0)
    return tl.sum(acc, axis=0)


# ----------------------------------------------------------------------- NCHW kernels
# One kernel per direction.  SPLIT = False: persistent, program p takes groups p, p + P, ...
# (P = the grid), both passes.  SPLIT = True, grid (groups, chunks), ``phase`` a runtime
# argument (a uniform branch; one compiled variant for both launches):
#   1  partial sums of one chunk of s;
#   2  merge the group's partials (a fixed order: the same bits in every program), then the
#      second pass over the chunk.
@triton.jit
def _gn_fwd_nchw(
    X, Y,                 # (N, C, S) contiguous, x's dtype
    W, B,                 # (C,) affine in x's dtype or fp32 (read when has_w / has_b)
    Mean, Rstd,           # (N*G,) fp32
    Part,                 # split: (2, n_part) fp32, sum(x - K), sum((x - K)^2) per (group, chunk)
    S, G, Cg, rows, chunk, n_part, inv_count, eps, flags, phase,
    SPLIT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, UNROLL: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    silu, has_w, has_b = flags & 1, flags & 2, flags & 4  # SiLU, weight, bias present
    if not SPLIT:
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        for i in range(0, (rows - pid + nprog - 1) // nprog):
            row = pid + i * nprog  # (a tensor also in the interpreter, where i is an int)
            base = row.to(tl.int64) * Cg * S  # int64: N*C*S passes 2^31 on video tensors
            K = tl.load(X + base).to(tl.float32)  # the shift: the group's first element
            s1, s2 = _nchw_sums(X + base, K, Cg, S, 0, S, BLOCK_C, BLOCK_S, UNROLL)
            ms, rstd = _finish(s1, s2, inv_count, eps)
            tl.store(Mean + row, K + ms)
            tl.store(Rstd + row, rstd)
            _nchw_apply(X + base, Y + base, W, B, (row % G) * Cg, K, ms, rstd, Cg, S, 0, S,
                        silu, has_w, has_b, BLOCK_C, BLOCK_S, UNROLL)
    else:
        row = tl.program_id(0)
        k = tl.program_id(1)
        split = tl.num_programs(1)
        base = row.to(tl.int64) * Cg * S
        K = tl.load(X + base).to(tl.float32)  # the same K in every chunk: sums add directly
        s_lo = k * chunk
        s_hi = tl.minimum(s_lo + chunk, S)
        first = row.to(tl.int64) * split
        if phase == 1:
            s1, s2 = _nchw_sums(X + base, K, Cg, S, s_lo, s_hi, BLOCK_C, BLOCK_S, UNROLL)
            tl.store(Part + first + k, s1)
            tl.store(Part + n_part + first + k, s2)
        else:
            ms, rstd = _finish(_sum_chunks(Part, first, split, BLOCK_K),
                               _sum_chunks(Part + n_part, first, split, BLOCK_K), inv_count,
                               eps)
            if k == 0:
                tl.store(Mean + row, K + ms)
                tl.store(Rstd + row, rstd)
            _nchw_apply(X + base, Y + base, W, B, (row % G) * Cg, K, ms, rstd, Cg, S, s_lo,
                        s_hi, silu, has_w, has_b, BLOCK_C, BLOCK_S, UNROLL)


@triton.jit
def _gn_bwd_nchw(
    X, DY, DX, W, B, Mean, Rstd,
    DWp, DBp,             # (N*chunks, C) fp32 per-(sample[, chunk]) partials of dweight / dbias
    Gp,                   # split: (2, n_part) fp32, sum(g), sum(g*xhat) per (group, chunk)
    C, S, G, Cg, rows, chunk, n_part, inv_count, flags, phase,
    SPLIT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, UNROLL: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """As _gn_fwd_nchw: pass 1 the sums (dweight/dbias partials and the group's sum(g),
    sum(g*xhat)), pass 2 dx re-reading x and dy from L2."""
    silu, has_w, has_b = flags & 1, flags & 2, flags & 4  # SiLU, weight, bias present
    if not SPLIT:
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        for i in range(0, (rows - pid + nprog - 1) // nprog):
            row = pid + i * nprog
            n = row // G
            c_first = (row - n * G) * Cg
            base = row.to(tl.int64) * Cg * S
            mean = tl.load(Mean + row)
            rstd = tl.load(Rstd + row)
            p_row = n.to(tl.int64) * C
            sum_g, sum_gx = _nchw_grad_sums(X + base, DY + base, W, B, DWp + p_row,
                                            DBp + p_row, c_first, mean, rstd, Cg, S, 0, S,
                                            silu, has_w, has_b, BLOCK_C, BLOCK_S, UNROLL)
            _nchw_dx(X + base, DY + base, DX + base, W, B, c_first, mean, rstd,
                     sum_g * inv_count, sum_gx * inv_count, Cg, S, 0, S, silu, has_w, has_b,
                     BLOCK_C, BLOCK_S, UNROLL)
    else:
        row = tl.program_id(0)
        k = tl.program_id(1)
        split = tl.num_programs(1)
        n = row // G
        c_first = (row - n * G) * Cg
        base = row.to(tl.int64) * Cg * S
        mean = tl.load(Mean + row)
        rstd = tl.load(Rstd + row)
        s_lo = k * chunk
        s_hi = tl.minimum(s_lo + chunk, S)
        first = row.to(tl.int64) * split
        if phase == 1:
            p_row = (n.to(tl.int64) * split + k) * C
            sum_g, sum_gx = _nchw_grad_sums(X + base, DY + base, W, B, DWp + p_row,
                                            DBp + p_row, c_first, mean, rstd, Cg, S, s_lo,
                                            s_hi, silu, has_w, has_b, BLOCK_C, BLOCK_S, UNROLL)
            tl.store(Gp + first + k, sum_g)
            tl.store(Gp + n_part + first + k, sum_gx)
        else:
            sum_g = _sum_chunks(Gp, first, split, BLOCK_K)
            sum_gx = _sum_chunks(Gp + n_part, first, split, BLOCK_K)
            _nchw_dx(X + base, DY + base, DX + base, W, B, c_first, mean, rstd,
                     sum_g * inv_count, sum_gx * inv_count, Cg, S, s_lo, s_hi, silu, has_w,
                     has_b, BLOCK_C, BLOCK_S, UNROLL)


# -------------------------------------------------------------- channels_last helpers
# Tiles are (UNROLL, BLOCK_S, BLOCK_C): BLOCK_S rows x BLOCK_C channels is one CTA-tile, each
# row piece BLOCK_C * elem = 128 B read by 8 lanes with 16-B loads; UNROLL row tiles a step.
@triton.jit
def _cl_sums(Xs, Xc, P1, P2, C, Cg, rows,
             BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    """Per-channel sum(x - K_g), sum((x - K_g)^2) over the ``rows`` rows at Xc (a chunk of the
    sample at Xs), stored at P1/P2[c]; K_g = x[n, 0, g*Cg], the first element of the channel's
    group.  Offsets are int32 from the chunk start (the launcher keeps chunk * C < 2^31)."""
    rr = tl.arange(0, UNROLL)[:, None, None] * BLOCK_S + tl.arange(0, BLOCK_S)[None, :, None]
    cc = tl.arange(0, BLOCK_C)[None, None, :]
    for c0 in range(0, C, BLOCK_C):
        cv = c0 + cc
        cm = cv < C
        K = tl.load(Xs + (cv // Cg) * Cg, mask=cm, other=0.0).to(tl.float32)
        acc1 = tl.zeros((1, BLOCK_S, BLOCK_C), tl.float32)
        acc2 = tl.zeros((1, BLOCK_S, BLOCK_C), tl.float32)
        for s0 in range(0, rows, UNROLL * BLOCK_S):
            s = s0 + rr
            m = (s < rows) & cm
            x = tl.load(Xc + s * C + cv, mask=m, other=0.0,
                        eviction_policy="evict_last").to(tl.float32)
            d = tl.where(m, x - K, 0.0)
            acc1 += tl.sum(d, axis=0, keep_dims=True)
            acc2 += tl.sum(d * d, axis=0, keep_dims=True)
        tl.store(P1 + cv, tl.sum(acc1, axis=1, keep_dims=True), mask=cm)
        tl.store(P2 + cv, tl.sum(acc2, axis=1, keep_dims=True), mask=cm)


@triton.jit
def _cl_group_sums(P1, P2, W, row0, chunks, C, G, Cg, g0, has_w,
                   BLOCK_G: tl.constexpr, BLOCK_J: tl.constexpr):
    """For groups [g0, g0 + BLOCK_G): sum over the group's channels of (w *) the per-channel
    partials of rows [row0, row0 + chunks) of P1 and P2, in a fixed order."""
    gv = g0 + tl.arange(0, BLOCK_G)[:, None]
    jj = tl.arange(0, BLOCK_J)[None, :]
    gm = gv < G
    a1 = tl.zeros((BLOCK_G, BLOCK_J), tl.float32)
    a2 = tl.zeros((BLOCK_G, BLOCK_J), tl.float32)
    for j0 in range(0, Cg, BLOCK_J):
        ch = gv * Cg + j0 + jj
        m = gm & (j0 + jj < Cg)
        t1 = tl.zeros((BLOCK_G, BLOCK_J), tl.float32)
        t2 = tl.zeros((BLOCK_G, BLOCK_J), tl.float32)
        for k in range(0, chunks):
            off = (row0 + k) * C + ch
            t1 += tl.load(P1 + off, mask=m, other=0.0)
            t2 += tl.load(P2 + off, mask=m, other=0.0)
        if has_w:
            w = tl.load(W + ch, mask=m, other=0.0).to(tl.float32)
            t1 = t1 * w
            t2 = t2 * w
        a1 += t1
        a2 += t2
    return gv, gm, tl.sum(a1, axis=1, keep_dims=True), tl.sum(a2, axis=1, keep_dims=True)


@triton.jit
def _cl_apply(Xs, Xc, Yc, W, B, MSn, Rstdn, C, Cg, rows, silu, has_w, has_b,
              BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    """Normalize the chunk's rows with the sample's group statistics (MSn: mean of x - K per
    group, Rstdn), tiles in reverse order of _cl_sums."""
    STEP: tl.constexpr = UNROLL * BLOCK_S
    rr = tl.arange(0, UNROLL)[:, None, None] * BLOCK_S + tl.arange(0, BLOCK_S)[None, :, None]
    cc = tl.arange(0, BLOCK_C)[None, None, :]
    n_c = (C + BLOCK_C - 1) // BLOCK_C
    n_s = (rows + STEP - 1) // STEP
    for i in range(0, n_c):
        cv = (n_c - 1 - i) * BLOCK_C + cc
        cm = cv < C
        gi = cv // Cg  # once per channel block, never per element
        K = tl.load(Xs + gi * Cg, mask=cm, other=0.0).to(tl.float32)
        w, b = _affine(W, B, cv, cm, has_w, has_b)
        scale = w * tl.load(Rstdn + gi, mask=cm, other=0.0)
        shift = b - tl.load(MSn + gi, mask=cm, other=0.0) * scale
        for j in range(0, n_s):
            s = (n_s - 1 - j) * STEP + rr
            m = (s < rows) & cm
            offs = s * C + cv
            x = tl.load(Xc + offs, mask=m, other=0.0,
                        eviction_policy="evict_first").to(tl.float32)
            y = (x - K) * scale + shift
            if silu:
                y = y * _sigmoid(y)
            tl.store(Yc + offs, y.to(Yc.dtype.element_ty), mask=m, eviction_policy="evict_first")


@triton.jit
def _cl_grad_sums(Xc, DYc, W, B, Meann, Rstdn, DWr, DBr, C, Cg, rows, silu, has_w, has_b,
                  BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    """Per-channel sums of dp*xhat and dp over the chunk's rows, stored at DWr/DBr[c]."""
    rr = tl.arange(0, UNROLL)[:, None, None] * BLOCK_S + tl.arange(0, BLOCK_S)[None, :, None]
    cc = tl.arange(0, BLOCK_C)[None, None, :]
    for c0 in range(0, C, BLOCK_C):
        cv = c0 + cc
        cm = cv < C
        gi = cv // Cg
        mean = tl.load(Meann + gi, mask=cm, other=0.0)
        rstd = tl.load(Rstdn + gi, mask=cm, other=0.0)
        w, b = _affine(W, B, cv, cm, has_w, has_b)
        acc_dw = tl.zeros((1, BLOCK_S, BLOCK_C), tl.float32)
        acc_db = tl.zeros((1, BLOCK_S, BLOCK_C), tl.float32)
        for s0 in range(0, rows, UNROLL * BLOCK_S):
            s = s0 + rr
            m = (s < rows) & cm
            offs = s * C + cv
            x = tl.load(Xc + offs, mask=m, other=0.0,
                        eviction_policy="evict_last").to(tl.float32)
            dy = tl.load(DYc + offs, mask=m, other=0.0,
                         eviction_policy="evict_last").to(tl.float32)
            xhat, dp = _silu_grad(x, dy, mean, rstd, w, b, silu)
            acc_dw += tl.sum(dp * xhat, axis=0, keep_dims=True)
            acc_db += tl.sum(dp, axis=0, keep_dims=True)
        tl.store(DWr + cv, tl.sum(acc_dw, axis=1, keep_dims=True), mask=cm)
        tl.store(DBr + cv, tl.sum(acc_db, axis=1, keep_dims=True), mask=cm)


@triton.jit
def _cl_dx(Xc, DYc, DXc, W, B, Meann, Rstdn, C1n, C2n, C, Cg, rows, silu, has_w, has_b,
           BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    STEP: tl.constexpr = UNROLL * BLOCK_S
    rr = tl.arange(0, UNROLL)[:, None, None] * BLOCK_S + tl.arange(0, BLOCK_S)[None, :, None]
    ch = tl.arange(0, BLOCK_C)[None, None, :]
    n_c = (C + BLOCK_C - 1) // BLOCK_C
    n_s = (rows + STEP - 1) // STEP
    for i in range(0, n_c):
        cv = (n_c - 1 - i) * BLOCK_C + ch
        cm = cv < C
        gi = cv // Cg
        mean = tl.load(Meann + gi, mask=cm, other=0.0)
        rstd = tl.load(Rstdn + gi, mask=cm, other=0.0)
        w, b = _affine(W, B, cv, cm, has_w, has_b)
        # rstd * (dp*w - c1 - xhat*c2) as a*dp + bc*(x - mean) + cc: four per-channel
        # vectors live through the loop instead of six (16-bit: 8 channels a thread)
        a = rstd * w
        bc = -rstd * rstd * tl.load(C2n + gi, mask=cm, other=0.0)
        cc = -rstd * tl.load(C1n + gi, mask=cm, other=0.0)
        for j in range(0, n_s):
            s = (n_s - 1 - j) * STEP + rr
            m = (s < rows) & cm
            offs = s * C + cv
            xc = tl.load(Xc + offs, mask=m, other=0.0,
                         eviction_policy="evict_first").to(tl.float32) - mean
            dp = tl.load(DYc + offs, mask=m, other=0.0,
                         eviction_policy="evict_first").to(tl.float32)
            if silu:  # p = xhat*w + b, d out/dp = sig(p) * (1 + p*(1 - sig(p)))
                p = xc * a + b
                sig = _sigmoid(p)
                dp = dp * sig * (1.0 + p * (1.0 - sig))
            dx = a * dp + bc * xc + cc
            tl.store(DXc + offs, dx.to(DXc.dtype.element_ty), mask=m,
                     eviction_policy="evict_first")


# -------------------------------------------------------------- channels_last kernels
# Program pid = n * chunks + k owns rows [k*chunk, (k+1)*chunk) of sample n.  SPLIT = True,
# ``phase`` (runtime, uniform): 1 the per-channel sums of the chunk; 2 the sample's group
# statistics from all its chunks' sums, then the second pass over the chunk.  SPLIT = False:
# both with a barrier between them (chunks == 1: one program a sample, one launch).
@triton.jit
def _gn_fwd_cl(
    X, Y, W, B,           # x, y: (N, S, C) in memory; W/B read when has_w / has_b
    Mean, Rstd,           # (N, G) fp32
    Part,                 # fp32 scratch: P1, P2 (N*chunks, C) per-chunk channel sums; MS (N, G)
    C, S, G, Cg, chunk, chunks, n_part, inv_count, eps, flags, phase,
    SPLIT: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_J: tl.constexpr,
):
    silu, has_w, has_b = flags & 1, flags & 2, flags & 4  # SiLU, weight, bias present
    pid = tl.program_id(0)
    n = pid // chunks
    s_lo = (pid - n * chunks) * chunk
    rows = tl.minimum(chunk, S - s_lo)
    base = n.to(tl.int64) * C * S  # int64: N*C*S passes 2^31; within a chunk int32 suffices
    cbase = base + s_lo.to(tl.int64) * C
    P2 = Part + n_part
    if not SPLIT or phase == 1:
        _cl_sums(X + base, X + cbase, Part + pid * C, P2 + pid * C, C, Cg, rows,
                 BLOCK_S, BLOCK_C, UNROLL)
    if not SPLIT or phase == 2:
        if not SPLIT:
            tl.debug_barrier()  # the partials of this program's own threads, read back below
        # every program of sample n computes the same statistics (same partials, same order)
        # and stores them: identical bits, so the duplicate stores are harmless
        MSn = Part + 2 * n_part + n * G
        for g0 in range(0, G, BLOCK_G):
            gv, gm, t1, t2 = _cl_group_sums(Part, P2, W, n * chunks, chunks, C, G, Cg, g0, 0,
                                            BLOCK_G, BLOCK_J)
            ms, rstd = _finish(t1, t2, inv_count, eps)
            K = tl.load(X + base + gv * Cg, mask=gm, other=0.0).to(tl.float32)
            tl.store(MSn + gv, ms, mask=gm)
            tl.store(Mean + n * G + gv, K + ms, mask=gm)
            tl.store(Rstd + n * G + gv, rstd, mask=gm)
        tl.debug_barrier()  # per-group values back as per-channel gathers
        _cl_apply(X + base, X + cbase, Y + cbase, W, B, MSn, Rstd + n * G, C, Cg, rows, silu,
                  has_w, has_b, BLOCK_S, BLOCK_C, UNROLL)


@triton.jit
def _gn_bwd_cl(
    X, DY, DX, W, B, Mean, Rstd,
    DWp, DBp,             # (N*chunks, C) fp32 per-(sample, chunk) partials of dweight / dbias
    Scr,                  # (N, 2G) fp32 scratch: mean(g), mean(g*xhat) per group
    C, S, G, Cg, chunk, chunks, inv_count, flags,
    PHASE: tl.constexpr,  # 0 both, 1 sums, 2 dx: a constexpr here (one kernel for both split
                          # phases made ptxas aim at 128 registers and spill)
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_J: tl.constexpr,
):
    silu, has_w, has_b = flags & 1, flags & 2, flags & 4  # SiLU, weight, bias present
    pid = tl.program_id(0)
    n = pid // chunks
    s_lo = (pid - n * chunks) * chunk
    rows = tl.minimum(chunk, S - s_lo)
    cbase = n.to(tl.int64) * C * S + s_lo.to(tl.int64) * C
    if PHASE != 2:
        _cl_grad_sums(X + cbase, DY + cbase, W, B, Mean + n * G, Rstd + n * G, DWp + pid * C,
                      DBp + pid * C, C, Cg, rows, silu, has_w, has_b,
                      BLOCK_S, BLOCK_C, UNROLL)
    if PHASE != 1:
        if PHASE == 0:
            tl.debug_barrier()
        # group sums of g = dp*w and g*xhat from the per-channel sums (identical in every
        # program of the sample, as in the forward)
        Sn = Scr + n * 2 * G
        for g0 in range(0, G, BLOCK_G):
            gv, gm, t_db, t_dw = _cl_group_sums(DBp, DWp, W, n * chunks, chunks, C, G, Cg, g0,
                                                has_w, BLOCK_G, BLOCK_J)
            tl.store(Sn + gv, t_db * inv_count, mask=gm)
            tl.store(Sn + G + gv, t_dw * inv_count, mask=gm)
        tl.debug_barrier()
        _cl_dx(X + cbase, DY + cbase, DX + cbase, W, B, Mean + n * G, Rstd + n * G, Sn,
               Sn + G, C, Cg, rows, silu, has_w, has_b, BLOCK_S, BLOCK_C, UNROLL)


# ------------------------------------------------------------------------- launchers
def _like_layout(t, x, channels_last):
    """``t`` in the memory layout the kernels assume for ``x``: the one copy this module may
    make, only when the caller breaks the contract's "dy has x's memory format"."""
    if not channels_last:
        return t.contiguous()
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return t.contiguous(memory_format=fmt)


_DEVICES = {}


def _device_info(device):
    """(arch, SM count) of a device, cached (one dict lookup per launch)."""
    info = _DEVICES.get(device)
    if info is None:
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            info = (arch_of(device), props.multi_processor_count)
        else:
            info = ("cpu", _CPU_SMS)
        _DEVICES[device] = info
    return info


_INT32_LIMIT = 1 << 31


def _is_pow2(v):
    return isinstance(v, int) and v >= 1 and v & (v - 1) == 0


@functools.lru_cache(maxsize=4096)
def _plan_for(direction, shape, cl, G, elem, bf16, arch, sms, cfg=None, aligned=True):
    """Everything a launch needs that depends only on the shape class, computed once:
    (N, C, S, Cg, cfg, chunk, split, grid, maxnreg, sizes, launches, scratch) with sizes the
    kernel's size arguments, launches ((phase argument or None, kwargs) per launch) and
    scratch the fp32 elements of the scratch buffer.  ``cfg`` None: the heuristic's (tuned
    table, then analytic).  aligned: x (and dy) 16-byte aligned; with S (NCHW) / C
    (channels_last) a multiple of 16 the launch vectorizes, else it takes the scalar tile."""
    N, C = shape[0], shape[1]
    S = 1
    for d in shape[2:]:
        S *= d
    Cg = C // G
    vec = aligned and (C if cl else S) % 16 == 0
    if cfg is None:
        cfg = group_norm_config(direction, N, C, S, G, cl, elem, bf16, arch, sms, vec)
    elif not all(_is_pow2(v) for v in (cfg.block_c, cfg.block_s, cfg.unroll, cfg.num_warps)) \
            or cfg.split < 1 or cfg.ctas_per_sm < 1:
        raise ValueError(f"group_norm: config {cfg} must have power-of-two block_c, block_s, "
                         "unroll and num_warps, split >= 1 and ctas_per_sm >= 1")
    step = cfg.unroll * cfg.block_s
    chunk, split = chunk_and_split(S, step, cfg.split)
    if cl and chunk * C >= _INT32_LIMIT:  # offsets inside a chunk are int32
        chunk, split = chunk_and_split(S, step, _cdiv(S, (_INT32_LIMIT - 1) // C // step * step))
    if not cl and Cg * S >= _INT32_LIMIT:
        raise ValueError(f"group_norm: a group of {Cg} x {S} = {Cg * S} elements is over the "
                         "Triton kernels' 2^31 limit; use backend='torch' or more groups")
    rows = N * G
    if cl:
        grid = (N * split,)
    elif split > 1:
        grid = (rows, split)
    else:
        programs = max(1, min(rows, sms * cfg.ctas_per_sm))
        # as many groups in every program (no last round with most programs idle), but never
        # fewer programs than SMs when there are enough groups
        grid = (max(_cdiv(rows, max(1, _cdiv(rows, programs))), min(rows, sms), 1),)
    maxnreg = max_registers(direction, cl, split > 1, elem, vec, cfg.num_warps)
    meta = dict(BLOCK_C=cfg.block_c, BLOCK_S=cfg.block_s, UNROLL=cfg.unroll,
                num_warps=cfg.num_warps, maxnreg=maxnreg)
    inv_count = 1.0 / max(1, Cg * S)
    phases = (0,) if split == 1 else (1, 2)
    if cl:
        meta.update(BLOCK_G=BLOCK_G, BLOCK_J=BLOCK_J)
        if direction == "fwd":
            n_part = N * split * C
            sizes = (C, S, G, Cg, chunk, split, n_part, inv_count)
            launches = tuple((p, dict(meta, SPLIT=split > 1)) for p in phases)
            scratch = 2 * n_part + N * G  # P1, P2 (N*chunks, C), MS (N, G)
        else:
            sizes = (C, S, G, Cg, chunk, split, inv_count)
            launches = tuple((None, dict(meta, PHASE=p)) for p in phases)
            scratch = 2 * N * G  # mean(g), mean(g*xhat) per group
    else:
        meta.update(BLOCK_K=BLOCK_K, SPLIT=split > 1)
        n_part = rows * split if split > 1 else 1
        sizes = (S, G, Cg, rows, chunk, n_part, inv_count)
        if direction == "bwd":
            sizes = (C,) + sizes
        launches = tuple((p, meta) for p in phases)
        scratch = 2 * n_part if split > 1 else 0  # per-(group, chunk) sums
    return N, C, S, Cg, cfg, chunk, split, grid, maxnreg, sizes, launches, scratch


def _plan(direction, x, G, config, dy=None):
    # Triton specializes pointers on 16-byte alignment: an offset view loads scalars
    aligned = x.data_ptr() % 16 == 0 and (dy is None or dy.data_ptr() % 16 == 0)
    cl = not x.is_contiguous()  # a tensor that is both (size-1 dims) counts as NCHW
    return cl, _plan_of(direction, x.shape, x.dtype, x.device, cl, G, config, aligned)


@functools.lru_cache(maxsize=4096)
def _plan_of(direction, shape, dtype, device, cl, G, config, aligned):
    """_plan_for keyed on what a tensor gives without conversions (one cache lookup a call)."""
    arch, sms = _device_info(device)
    return _plan_for(direction, tuple(shape), cl, G, dtype.itemsize, dtype is torch.bfloat16,
                     arch, sms, config, aligned)


@functools.lru_cache(maxsize=1)
def _instance_norm_fns():
    """kernels/instance_norm.py's row kernels for contiguous InstanceNorm (G = C), when that
    module provides them (written alongside; until then GroupNorm's kernels serve)."""
    from fusednorm.kernels import instance_norm as mod
    fwd = getattr(mod, "instance_norm_fwd", None)
    bwd = getattr(mod, "instance_norm_bwd", None)
    return (fwd, bwd) if fwd is not None and bwd is not None else None


def _flags(activation, weight, bias):
    """The kernels' flags argument: bit 0 SiLU, bit 1 weight, bit 2 bias (one argument, not
    three: Triton binds every argument on every launch)."""
    if activation and activation != "silu":
        raise ValueError(f"group_norm: activation={activation!r} must be '' or 'silu'")
    return (1 if activation else 0) | (0 if weight is None else 2) | (0 if bias is None else 4)


def _launch_fwd(cl, plan, x, weight, bias, eps, flags, out, mean, rstd):
    grid, sizes, launches, scratch = plan[7], plan[9], plan[10], plan[11]
    # absent parameters: x stands in, never read (flags)
    args = (x, out, weight if weight is not None else x, bias if bias is not None else x,
            mean, rstd, f32_empty(x, scratch) if scratch else mean, *sizes, eps, flags)
    kernel = _gn_fwd_cl if cl else _gn_fwd_nchw
    for phase, meta in launches:
        kernel[grid](*args, phase, **meta)


def group_norm_fwd(x, weight, bias, num_groups: int, eps: float, activation: str, *,
                   config: GroupNormConfig = None):
    """Backend contract (see fusednorm.backends).  ``config`` overrides the launch heuristic.
    One launch; two for channels_last samples split over programs and for huge NCHW groups
    split along s.  Contiguous InstanceNorm (G = C, no activation) takes the row kernels of
    kernels/instance_norm.py."""
    flags = _flags(activation, weight, bias)
    if num_groups == x.shape[1] and not activation and config is None and x.is_contiguous():
        fns = _instance_norm_fns()
        if fns is not None and x.numel():
            return fns[0](x, weight, bias, eps)
    cl, plan = _plan("fwd", x, num_groups, config)
    out = torch.empty_like(x)  # preserve_format: x's strides, so x's memory format
    mean = f32_empty(x, (plan[0], num_groups))
    rstd = f32_empty(x, (plan[0], num_groups))
    if x.numel() == 0:
        mean.fill_(float("nan"))
        rstd.fill_(float("nan"))
        return out, mean, rstd
    _launch_fwd(cl, plan, x, weight, bias, eps, flags, out, mean, rstd)
    return out, mean, rstd


def _launch_bwd(cl, plan, dy, x, weight, bias, mean, rstd, flags, dx):
    """-> (dweight partials, dbias partials): (rows, C) fp32, summed by the caller."""
    N, C, split, grid, sizes, launches, scratch = (plan[0], plan[1], plan[6], plan[7], plan[9],
                                                   plan[10], plan[11])
    # every (sample [, chunk], channel) partial is written by the program of its group/rows
    dwp = f32_empty(x, (N * split, C))
    dbp = f32_empty(x, (N * split, C))
    args = (x, dy, dx, weight if weight is not None else x, bias if bias is not None else x,
            mean, rstd, dwp, dbp, f32_empty(x, scratch) if scratch else mean, *sizes, flags)
    if cl:
        for _, meta in launches:
            _gn_bwd_cl[grid](*args, **meta)
    else:
        for phase, meta in launches:
            _gn_bwd_nchw[grid](*args, phase, **meta)
    return dwp, dbp


def group_norm_bwd(dy, x, weight, bias, mean, rstd, num_groups: int, activation: str, *,
                   config: GroupNormConfig = None):
    """Backend contract.  dweight/dbias = fixed-order column sums of fp32 per-(sample
    [, chunk]) partials in one launch: two launches in all, three when split."""
    flags = _flags(activation, weight, bias)
    if num_groups == x.shape[1] and not activation and config is None and x.is_contiguous():
        fns = _instance_norm_fns()
        if fns is not None and x.numel():
            return fns[1](dy.contiguous(), x, weight, bias, mean, rstd)
    dy = _like_layout(dy, x, not x.is_contiguous())
    cl, plan = _plan("bwd", x, num_groups, config, dy)
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return (dx, None if weight is None else torch.zeros_like(weight),
                None if bias is None else torch.zeros_like(bias))
    dwp, dbp = _launch_bwd(cl, plan, dy, x, weight, bias, mean.contiguous(),
                           rstd.contiguous(), flags, dx)
    if weight is None and bias is None:
        return dx, None, None
    dweight, dbias = sum_partials(dwp if weight is not None else None, weight,
                                  dbp if bias is not None else None, bias,
                                  SUM_CONFIG.block_p, SUM_CONFIG.block_n, SUM_CONFIG.num_warps)
    return dx, dweight, dbias


# ----------------------------------------------------------- InstanceNorm running stats
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


# ------------------------------------------------------------------------ compile check
_X_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_I = "i32"


def _signatures(xt, wt, kernel):
    """Signature of one kernel for x dtype ``xt`` and parameter dtype ``wt`` (Triton types)."""
    P, F = f"*{xt}", "*fp32"
    ws = {"W": wt, "B": wt}
    flags = {"flags": _I, "phase": _I}
    return {
        _gn_fwd_nchw: {"X": P, "Y": P, **ws, "Mean": F, "Rstd": F, "Part": F, "S": _I,
                       "G": _I, "Cg": _I, "rows": _I, "chunk": _I, "n_part": _I,
                       "inv_count": "fp32", "eps": "fp32", **flags},
        _gn_bwd_nchw: {"X": P, "DY": P, "DX": P, **ws, "Mean": F, "Rstd": F, "DWp": F,
                       "DBp": F, "Gp": F, "C": _I, "S": _I, "G": _I, "Cg": _I, "rows": _I,
                       "chunk": _I, "n_part": _I, "inv_count": "fp32", **flags},
        _gn_fwd_cl: {"X": P, "Y": P, **ws, "Mean": F, "Rstd": F, "Part": F, "C": _I, "S": _I,
                     "G": _I, "Cg": _I, "chunk": _I, "chunks": _I, "n_part": _I,
                     "inv_count": "fp32", "eps": "fp32", **flags},
        _gn_bwd_cl: {"X": P, "DY": P, "DX": P, **ws, "Mean": F, "Rstd": F, "DWp": F,
                     "DBp": F, "Scr": F, "C": _I, "S": _I, "G": _I, "Cg": _I, "chunk": _I,
                     "chunks": _I, "inv_count": "fp32",
                     **{k: v for k, v in flags.items() if k != "phase"}},
    }[kernel]


def _param_dtypes(xt):
    return list(dict.fromkeys((xt, "fp32")))


def variant(kernel, xt, wt, cfg, **extra):
    """(kernel, signature, constexprs, num_warps) of one launch, as compile_variants yields."""
    sig = _signatures(xt, f"*{wt}", kernel)
    ce = dict(BLOCK_C=cfg.block_c, BLOCK_S=cfg.block_s, UNROLL=cfg.unroll, **extra)
    return kernel, dict(sig, **{k: "constexpr" for k in ce}), ce, cfg.num_warps


def compile_specs():
    """Every launch variant the launchers can produce from the configurations' tiles, as
    (kernel, signature, constexprs, num_warps, divisible, options): x dtype x parameter dtype
    (x's or fp32) x tile x split/phase, each in the specialization it runs in (vectorized
    tiles only with S / C and the chunk multiples of 16; scalar tiles without) and with its
    launch's maxnreg.  The flags (activation, weight, bias) and the runtime phase are
    arguments (their 1-specializations: tests/test_triton_specialization.py)."""
    gm = dict(BLOCK_G=BLOCK_G, BLOCK_J=BLOCK_J)
    for xt, dt in _X_DTYPES.items():
        elem = dt.itemsize
        for wt in _param_dtypes(xt):
            for vec in (True, False):
                div = {"S", "chunk"} if vec else set()
                for d, fn in (("fwd", _gn_fwd_nchw), ("bwd", _gn_bwd_nchw)):
                    for split in (False, True):
                        opts = dict(maxnreg=max_registers(d, False, split, elem, vec))
                        for cfg in tiles(False, elem, split, d, vec):
                            yield (*variant(fn, xt, wt, cfg, SPLIT=split, BLOCK_K=BLOCK_K),
                                   div, opts)
                div = {"C", "chunk"} if vec else set()
                for cfg in tiles(True, elem, vec=vec):
                    for split in (False, True):
                        opts = dict(maxnreg=max_registers("fwd", True, split, elem, vec))
                        yield (*variant(_gn_fwd_cl, xt, wt, cfg, SPLIT=split, **gm), div, opts)
                for cfg in tiles(True, elem, direction="bwd", vec=vec):
                    opts = dict(maxnreg=max_registers("bwd", True, True, elem, vec))
                    for phase in (0, 1, 2):
                        yield (*variant(_gn_bwd_cl, xt, wt, cfg, PHASE=phase, **gm), div, opts)
    for spec in _aux_variants():
        yield (*spec, set(), {})


def compile_variants():
    """(kernel, signature, constexprs, num_warps) of every launch variant (compile_specs
    without the specialization and options)."""
    for fn, sig, ce, nw, _, _ in compile_specs():
        yield fn, sig, ce, nw


def _aux_variants():
    F = "*fp32"
    for rt in ("*fp32", "*fp16", "*bf16"):
        ce = {"HAS_RM": True, "HAS_RV": True, "BLOCK_N": IN_RUNNING_BLOCK_N,
              "BLOCK_C": IN_RUNNING_BLOCK_C}
        yield (_in_running_kernel,
               {"Mean": F, "Rstd": F, "RM": rt, "RV": rt, "N": _I, "C": _I,
                "eps": "fp32", "momentum": "fp32", "unbias": "fp32",
                **{k: "constexpr" for k in ce}}, ce, 4)
    # dweight / dbias column sums (kernels/_reduce.py) with this module's block sizes
    from fusednorm.kernels._reduce import sum_partials_kernel
    for ot in ("*fp32", "*fp16", "*bf16"):
        for ha, hb in ((True, True), (True, False), (False, True)):
            ce = {"HAS_A": ha, "HAS_B": hb, "BLOCK_P": SUM_CONFIG.block_p,
                  "BLOCK_N": SUM_CONFIG.block_n}
            yield (sum_partials_kernel,
                   {"PART_A": F, "OUT_A": ot if ha else F, "PART_B": F,
                    "OUT_B": ot if hb else F, "P": _I, "N": _I,
                    **{k: "constexpr" for k in ce}}, ce, SUM_CONFIG.num_warps)


# ------------------------------------------------------------------------------ tuning
def launches(direction, x, num_groups, config=None):
    """[(kernel, grid, constexprs, num_warps, int args by name, maxnreg)] of one launch of
    ``direction`` without the InstanceNorm dispatch and the column sums: what the offline
    evidence compiles for a benchmark shape (integer args that are multiples of 16 there are
    compiled as Triton specializes them at launch, and those equal to 1 as constants)."""
    cl, plan = _plan(direction, x, num_groups, config)
    N, C, S, Cg, cfg, chunk, split, grid, maxnreg = plan[:9]
    G = num_groups
    ce = dict(BLOCK_C=cfg.block_c, BLOCK_S=cfg.block_s, UNROLL=cfg.unroll)
    nw = cfg.num_warps
    flags = dict(flags=6)  # weight and bias, no activation
    phases = (0,) if split == 1 else (1, 2)
    if cl and direction == "bwd":  # the phase is a constexpr there
        ce = dict(ce, BLOCK_G=BLOCK_G, BLOCK_J=BLOCK_J)
        ints = dict(C=C, S=S, G=G, Cg=Cg, chunk=chunk, chunks=split, **flags)
        return [(_gn_bwd_cl, grid, dict(ce, PHASE=p), nw, dict(ints), maxnreg) for p in phases]
    ce = dict(ce, SPLIT=split > 1)
    if cl:
        ce = dict(ce, BLOCK_G=BLOCK_G, BLOCK_J=BLOCK_J)
        ints = dict(C=C, S=S, G=G, Cg=Cg, chunk=chunk, chunks=split, n_part=N * split * C,
                    **flags)
        fn = _gn_fwd_cl
    else:
        ce = dict(ce, BLOCK_K=BLOCK_K)
        ints = dict(S=S, G=G, Cg=Cg, rows=N * G, chunk=S if split == 1 else chunk,
                    n_part=1 if split == 1 else N * G * split, **flags)
        fn = _gn_fwd_nchw if direction == "fwd" else _gn_bwd_nchw
        if direction == "bwd":
            ints = dict(ints, C=C)
    return [(fn, grid, ce, nw, dict(ints, phase=p), maxnreg) for p in phases]


def tune_targets(op, shape, dtype, layout, device, num_groups=32, **_):
    """bench/tune.py's targets for one benchmark case: the forward and the backward family
    of this layout, candidates from group_norm_config.candidates (heuristic's first).
    InstanceNorm: only channels_last runs here (contiguous planes take kernels/instance_norm.py)."""
    if op == "instance_norm":
        if layout != "nhwc":
            return []
        num_groups = shape[1]
    elif op != "group_norm":
        return []
    cl = layout == "nhwc"
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
    if cl:
        x = _like_layout(x, x, True)
    C = shape[1]
    w = torch.randn(C, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(C, generator=g).to(device=device, dtype=dtype)
    dy = torch.randn_like(x)
    out, dx = torch.empty_like(x), torch.empty_like(x)
    N = shape[0]
    mean = f32_empty(x, (N, num_groups))
    rstd = f32_empty(x, (N, num_groups))
    S = x.numel() // max(1, N * C)
    arch, sms = _device_info(x.device)
    elem, bf16 = x.element_size(), dtype is torch.bfloat16
    key = table_key(N, C, S, num_groups, elem, bf16)
    nbytes = x.numel() * elem

    def run_fwd(cfg):
        _launch_fwd(cl, _plan_for("fwd", tuple(shape), cl, num_groups, elem, bf16, arch, sms,
                                  cfg), x, w, b, 1e-5, 6, out, mean, rstd)

    def run_bwd(cfg):
        plan = _plan_for("bwd", tuple(shape), cl, num_groups, elem, bf16, arch, sms, cfg)
        dwp, dbp = _launch_bwd(cl, plan, dy, x, w, b, mean, rstd, 6, dx)
        sum_partials(dwp, w, dbp, b, SUM_CONFIG.block_p, SUM_CONFIG.block_n,
                     SUM_CONFIG.num_warps)

    run_fwd(group_norm_config("fwd", N, C, S, num_groups, cl, elem, bf16, arch, sms))
    return [
        TuneTarget(family("fwd", cl), key,
                   candidates("fwd", N, C, S, num_groups, cl, elem, bf16, arch, sms),
                   run_fwd, 2 * nbytes),
        TuneTarget(family("bwd", cl), key,
                   candidates("bwd", N, C, S, num_groups, cl, elem, bf16, arch, sms),
                   run_bwd, 3 * nbytes),
    ]
