"""Triton LayerNorm / RMSNorm, forward and backward, with fused residual add (prenorm); the same
row kernels serve InstanceNorm planes (kernels/instance_norm.py: ROW_AFFINE, a scalar weight
and bias per row).

Implements ``layer_norm_fwd`` / ``layer_norm_bwd`` of the backend contract in
``fusednorm/backends/__init__.py`` on the flattened (M, N) view.

Tiles are (R, BLOCK_M, TILE_C): BLOCK_M rows of BLOCK_N = R * TILE_C columns, column
r * TILE_C + c.  Every thread holds R 16-byte vectors of a row, issued together before any
reduction; the warps go to the TILE_C axis first and then to the rows, so a row is owned by
one warp group and short rows need no barrier (layer_norm_config.py chooses the shapes).

Kernels
  _fwd_rows     one pass: BLOCK_M whole rows in registers, exact two-pass statistics
  _fwd_looped   rows too wide for registers: per-thread shifted sums over chunks, one
                reduction, then a normalize pass re-reading the row (from L2)
  _bwd_rows     persistent: a program walks tiles pid, pid + P, ...; the next tile's loads are
                issued before this tile's reductions (PREFETCH); w hoisted; dw/db partials in
                registers, one partial row per program.  SPLIT = 2: two programs share a row,
                each owning half its columns and reading the other half only for the row sums
                (the partner reads the same lines at the same time: L2 hits), so 16K-wide rows
                keep their partials in registers with no exchange between programs
  _bwd_looped   wider rows: tiles of BLOCK_M rows (in each thread), a sums pass and a dx pass
                over chunks (the second from L2); the program's partial row is updated once
                per tile, not per row
  sum_partials_kernel (kernels/_reduce.py)  dweight/dbias = fixed-order column sums of the
                partials, one launch for both

Math (xhat = (x - mean) * rstd for LN, x * rstd for RMS; g = w * dy):
  dx = rstd * (g - xhat * mean(g * xhat) - mean(g))     (LN; RMS drops the mean(g) term)
  dw = sum_rows dy * xhat,  db = sum_rows dy
Absent optional pointers are passed a dummy tensor and never dereferenced (HAS_* constexprs),
so the kernel signature is fixed by the dtypes alone.
"""
import functools

import torch
import triton
import triton.language as tl

from fusednorm.kernels._util import cdiv as _cdiv, f32_empty

from ._reduce import sum_partials, sum_partials_kernel
from ._tuning import TuneTarget
from .layer_norm_config import (BwdConfig, FwdConfig, PartialsSumConfig,
                                all_partials_sum_configs, analytic_sizes, bwd_candidates,
                                bwd_config, device_arch, max_registers, fwd_candidates, fwd_config,
                                partials_sum_config, row_aligned, sum_candidates, _bwd_analytic,
                                _fwd_analytic)

# backward programs per SM-equivalent when the tensors are not on a GPU (interpreter)
_CPU_SM_COUNT = 4


# ----------------------------------------------------------------------------------------
# helpers.  Row sums of an (R, BM, C) tile are taken as tl.sum over axis 0 (the R repeats in
# each thread) then axis 2 (across the row's lanes: shuffles, a barrier only when a row spans
# several warps), keep_dims so the (1, BM, 1) result broadcasts back in the tile's layout.
# Two sums at once go through tl.join: the pair is a trailing in-thread axis, one barrier
# round for both (tl.reduce with a tuple combine does the same on the GPU, but the
# interpreter runs its combine function element by element).  Small pieces are written out
# in place rather than as @triton.jit helpers: the interpreter pays milliseconds per nested
# call, per program and per tile.
# ----------------------------------------------------------------------------------------
@triton.jit
def _load_row_sum(X, RES, XSUM, x_off, res_off, xsum_off, cols, mask, HAS_RES: tl.constexpr):
    """x (+ residual) of one tile as fp32.  The sum is rounded to x's dtype before use, so the
    statistics describe exactly the xsum that is stored and later fed to the backward."""
    x = tl.load(X + x_off + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(RES + res_off + cols, mask=mask, other=0.0).to(tl.float32)
        xs = (x + r).to(XSUM.dtype.element_ty)
        tl.store(XSUM + xsum_off + cols, xs, mask=mask)
        x = xs.to(tl.float32)
    return x


@triton.jit
def _row_params(W, B, rows, row_ok, C, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """ROW_AFFINE: the (1, BM, 1) weight and bias of each row's channel rows % C (1 / 0 when
    absent), loaded once per program."""
    w_row = tl.zeros(rows.shape, tl.float32) + 1.0
    b_row = tl.zeros(rows.shape, tl.float32)
    if HAS_W:
        w_row = tl.load(W + rows % C, mask=row_ok, other=0.0).to(tl.float32)
    if HAS_B:
        b_row = tl.load(B + rows % C, mask=row_ok, other=0.0).to(tl.float32)
    return w_row, b_row


@triton.jit
def _store_out(OUT, W, B, out_off, rows, cols, col_ok, mask, xhat, w_row, b_row,
               HAS_W: tl.constexpr, HAS_B: tl.constexpr, ROW_AFFINE: tl.constexpr):
    """y = xhat * w + b, with w/b per column (loaded here, after the reductions: not live
    across them), or per row (ROW_AFFINE: w_row, b_row from _row_params)."""
    if ROW_AFFINE:
        y = xhat * w_row + b_row
    else:
        # tile-shaped pointers (a row-index term times 0): every memory op of the tile then
        # gets the tile's layout, with no conversion through shared memory
        p_idx = cols + rows * 0
        p_mask = col_ok & (rows >= 0)
        y = xhat
        if HAS_W:
            y = y * tl.load(W + p_idx, mask=p_mask, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + p_idx, mask=p_mask, other=0.0).to(tl.float32)
    tl.store(OUT + out_off + cols, y.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _store_stats(MEAN, RSTD, rows, cols, row_ok, mean, rstd, RMS: tl.constexpr):
    """MEAN[row], RSTD[row] from (1, BM, 1) values, stored in the tile's layout by the lane
    holding column 0 (a (BM,)-shaped store would convert layouts through shared memory)."""
    idx = tl.max_contiguous(rows + cols * 0, [1, 1, 1])  # one lane per row: no vector store
    first = row_ok & (cols == 0)
    zero = (cols * 0).to(tl.float32)
    if not RMS:
        tl.store(MEAN + idx, mean + zero, mask=first)
    tl.store(RSTD + idx, rstd + zero, mask=first)


# ----------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------
@triton.jit
def _fwd_rows(
    X,          # (M, N) input, row stride stride_x, unit column stride
    RES,        # (M, N) residual (HAS_RES)
    W, B,       # (N,) affine, or (C,) per-row affine (ROW_AFFINE), any float dtype
    OUT,        # (M, N) output, x's dtype
    XSUM,       # (M, N) x + residual, written when HAS_RES
    MEAN,       # (M,) fp32, written unless RMS
    RSTD,       # (M,) fp32
    stride_x, stride_res, stride_out, stride_xsum,
    M, N, C,    # rows, columns, channels (ROW_AFFINE: row r has parameters [r % C])
    eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILE_C: tl.constexpr,
    RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RES: tl.constexpr,
    ROW_AFFINE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)[None, :, None]
    # column r * TILE_C + c: (R, 1, TILE_C)
    cols = (tl.arange(0, BLOCK_N // TILE_C)[:, None, None] * TILE_C
            + tl.arange(0, TILE_C)[None, None, :])
    row_ok = rows < M
    col_ok = cols < N
    mask = col_ok & row_ok  # BLOCK_N >= N; lanes past N load 0 and are never stored
    r64 = rows.to(tl.int64)  # int64: row * stride can pass 2^31
    x = _load_row_sum(X, RES, XSUM, r64 * stride_x, r64 * stride_res, r64 * stride_xsum,
                      cols, mask, HAS_RES)
    if RMS:
        ms = tl.sum(tl.sum(x * x, axis=0, keep_dims=True), axis=2, keep_dims=True) / N
        rstd = tl.rsqrt(ms + eps)
        mean = rstd
        xhat = x * rstd
    else:
        # exact two-pass statistics of the register-resident row (offset data stays exact)
        mean = tl.sum(tl.sum(x, axis=0, keep_dims=True), axis=2, keep_dims=True) / N
        xc = tl.where(mask, x - mean, 0.0)
        var = tl.sum(tl.sum(xc * xc, axis=0, keep_dims=True), axis=2, keep_dims=True) / N
        rstd = tl.rsqrt(var + eps)
        xhat = xc * rstd
    _store_stats(MEAN, RSTD, rows, cols, row_ok, mean, rstd, RMS)
    w_row = 1.0
    b_row = 0.0
    if ROW_AFFINE:
        w_row, b_row = _row_params(W, B, rows, row_ok, C, HAS_W, HAS_B)
    _store_out(OUT, W, B, r64 * stride_out, rows, cols, col_ok, mask, xhat, w_row, b_row,
               HAS_W, HAS_B, ROW_AFFINE)


@triton.jit
def _fwd_looped(
    X, RES, W, B, OUT, XSUM, MEAN, RSTD,  # as in _fwd_rows; one row per program
    stride_x, stride_res, stride_out, stride_xsum,
    M, N, C, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILE_C: tl.constexpr,
    RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RES: tl.constexpr,
    ROW_AFFINE: tl.constexpr,
):
    row = tl.program_id(0)
    rows = row + tl.arange(0, 1)[None, :, None]
    row_ok = rows < M
    r64 = row.to(tl.int64)
    x_off = r64 * stride_x
    res_off = r64 * stride_res
    xsum_off = r64 * stride_xsum
    local = (tl.arange(0, BLOCK_N // TILE_C)[:, None, None] * TILE_C
             + tl.arange(0, TILE_C)[None, None, :])
    # LN: shifted sums of d = x - K, K = the row's first element (after the residual add):
    # d is O(std) for offset data, so sum(d^2) - sum(d)^2 / N does not cancel at the scale
    # of |mean| (mean 1e4: an fp32 ulp there is 1e-3), and x - K is exact near K.
    shift = 0.0
    if not RMS:
        shift = tl.load(X + x_off).to(tl.float32)
        if HAS_RES:
            shift = (shift + tl.load(RES + res_off).to(tl.float32)).to(
                XSUM.dtype.element_ty).to(tl.float32)
    # pass 1: per-thread sums over the chunks, one reduction at the end
    s1 = tl.sum(tl.zeros((BLOCK_N // TILE_C, 1, TILE_C), tl.float32), axis=0, keep_dims=True)
    s2 = s1
    for start in range(0, N, BLOCK_N):
        cols = start + local
        mask = (cols < N) & row_ok
        x = _load_row_sum(X, RES, XSUM, x_off, res_off, xsum_off, cols, mask, HAS_RES)
        if RMS:
            s2 += tl.sum(x * x, axis=0, keep_dims=True)
        else:
            d = tl.where(mask, x - shift, 0.0)
            s1 += tl.sum(d, axis=0, keep_dims=True)
            s2 += tl.sum(d * d, axis=0, keep_dims=True)
    if RMS:
        t2 = tl.sum(s2, axis=2, keep_dims=True)
        rstd = tl.rsqrt(t2 / N + eps)
        dmean = 0.0
        mean = rstd
    else:
        t1, t2 = tl.split(tl.sum(tl.join(s1, s2), axis=2, keep_dims=True))
        dmean = t1 / N
        rstd = tl.rsqrt(tl.maximum(t2 / N - dmean * dmean, 0.0) + eps)
        mean = shift + dmean
    _store_stats(MEAN, RSTD, rows, local, row_ok, mean, rstd, RMS)
    w_row = 1.0
    b_row = 0.0
    if ROW_AFFINE:
        w_row, b_row = _row_params(W, B, rows, row_ok, C, HAS_W, HAS_B)
    # pass 2: normalize.  x + residual is recomputed from the inputs (same rounding) rather
    # than read back from XSUM, which other threads of this program may not have written yet.
    for start in range(0, N, BLOCK_N):
        cols = start + local
        col_ok = cols < N
        mask = col_ok & row_ok
        x = tl.load(X + x_off + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            r = tl.load(RES + res_off + cols, mask=mask, other=0.0).to(tl.float32)
            x = (x + r).to(XSUM.dtype.element_ty).to(tl.float32)
        if RMS:
            xhat = x * rstd
        else:
            xhat = ((x - shift) - dmean) * rstd
        _store_out(OUT, W, B, r64 * stride_out, rows, cols, col_ok, mask, xhat, w_row,
                   b_row, HAS_W, HAS_B, ROW_AFFINE)


# ----------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------
@triton.jit
def _load_tile(X, DY, MEAN, RSTD, W, rows, cols, mask, row_ok, stride_x, stride_dy, C,
               RMS: tl.constexpr, HAS_W: tl.constexpr, ROW_AFFINE: tl.constexpr):
    """x, dy (raw dtype) of a tile and its rows' mean, rstd, weight ((1, BM, 1) fp32; 0 / 1
    when absent)."""
    r64 = rows.to(tl.int64)
    x = tl.load(X + r64 * stride_x + cols, mask=mask, other=0.0)
    dy = tl.load(DY + r64 * stride_dy + cols, mask=mask, other=0.0)
    rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
    if RMS:
        mean = rstd * 0.0
    else:
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
    if ROW_AFFINE and HAS_W:
        w_row = tl.load(W + rows % C, mask=row_ok, other=0.0).to(tl.float32)
    else:
        w_row = rstd * 0.0 + 1.0
    return x, dy, mean, rstd, w_row


@triton.jit
def _other_sums(xo_raw, dyo_raw, o_mask, mean, rstd, w_o, RMS: tl.constexpr):
    """SPLIT == 2: the row sums of g * xhat and g over the partner's columns."""
    xo = xo_raw.to(tl.float32)
    if RMS:
        xhat = xo * rstd
    else:
        xhat = tl.where(o_mask, (xo - mean) * rstd, 0.0)
    g = dyo_raw.to(tl.float32) * w_o
    return tl.split(tl.sum(tl.sum(tl.join(xhat * g, g), axis=0, keep_dims=True), axis=2,
                           keep_dims=True))


@triton.jit
def _bwd_rows(
    X,          # (M, N) normalized input (x + residual when fused), row stride stride_x
    W,          # (N,) weight, or (C,) per-row weight (ROW_AFFINE) (HAS_W)
    DY,         # (M, N) output gradient
    DXSUM,      # (M, N) prenorm gradient (HAS_DXSUM)
    DX,         # (M, N) input gradient, x's dtype
    MEAN, RSTD, # (M,) fp32 from the forward (MEAN unused when RMS)
    DW_PART,    # (P / SPLIT, N) fp32 partial rows of sum dy * xhat (HAS_W); ROW_AFFINE: (M,)
    DB_PART,    # same for sum dy (HAS_B)
    stride_x, stride_dy, stride_dxsum, stride_dx,
    M, N, C,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILE_C: tl.constexpr,
    SPLIT: tl.constexpr, PREFETCH: tl.constexpr,
    RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_DXSUM: tl.constexpr,
    ROW_AFFINE: tl.constexpr,
):
    pid = tl.program_id(0)
    teams = tl.num_programs(0) // SPLIT
    team = pid // SPLIT
    part = pid - team * SPLIT        # which BLOCK_N columns of the row this program owns
    local = (tl.arange(0, BLOCK_N // TILE_C)[:, None, None] * TILE_C
             + tl.arange(0, TILE_C)[None, None, :])
    cols = part * BLOCK_N + local
    col_ok = cols < N
    o_cols = (1 - part) * BLOCK_N + local   # SPLIT == 2: the partner's columns
    o_ok = o_cols < N
    m = tl.arange(0, BLOCK_M)[None, :, None]
    # column weights, hoisted out of the row loop
    w = 1.0
    w_o = 1.0
    if HAS_W and not ROW_AFFINE:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        if SPLIT == 2:
            w_o = tl.load(W + o_cols, mask=o_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_N // TILE_C, BLOCK_M, TILE_C), tl.float32)
    db_acc = tl.zeros((BLOCK_N // TILE_C, BLOCK_M, TILE_C), tl.float32)
    n_tiles = tl.cdiv(M, BLOCK_M)
    step = teams * BLOCK_M
    if PREFETCH:
        rows = team * BLOCK_M + m
        row_ok = rows < M
        nx, ndy, nmean, nrstd, nw_row = _load_tile(X, DY, MEAN, RSTD, W, rows, cols,
                                                   col_ok & row_ok, row_ok, stride_x,
                                                   stride_dy, C, RMS, HAS_W, ROW_AFFINE)
        if SPLIT == 2:
            r64 = rows.to(tl.int64)
            nxo = tl.load(X + r64 * stride_x + o_cols, mask=o_ok & row_ok, other=0.0)
            ndyo = tl.load(DY + r64 * stride_dy + o_cols, mask=o_ok & row_ok, other=0.0)
    for t in range(team, n_tiles, teams):
        rows = t * BLOCK_M + m
        row_ok = rows < M
        mask = col_ok & row_ok
        o_mask = o_ok & row_ok
        r64 = rows.to(tl.int64)
        if PREFETCH:
            # this tile was loaded during the previous one; issue the next tile's loads now
            # (masked off past the last row), so they fly during this tile's reductions
            x_raw, dy_raw, mean, rstd, w_row = nx, ndy, nmean, nrstd, nw_row
            if SPLIT == 2:
                xo_raw, dyo_raw = nxo, ndyo
            nrows = rows + step
            n_ok = nrows < M
            nx, ndy, nmean, nrstd, nw_row = _load_tile(X, DY, MEAN, RSTD, W, nrows, cols,
                                                       col_ok & n_ok, n_ok, stride_x,
                                                       stride_dy, C, RMS, HAS_W, ROW_AFFINE)
            if SPLIT == 2:
                n64 = nrows.to(tl.int64)
                nxo = tl.load(X + n64 * stride_x + o_cols, mask=o_ok & n_ok, other=0.0)
                ndyo = tl.load(DY + n64 * stride_dy + o_cols, mask=o_ok & n_ok, other=0.0)
        else:
            x_raw, dy_raw, mean, rstd, w_row = _load_tile(X, DY, MEAN, RSTD, W, rows, cols,
                                                          mask, row_ok, stride_x, stride_dy,
                                                          C, RMS, HAS_W, ROW_AFFINE)
            if SPLIT == 2:
                xo_raw = tl.load(X + r64 * stride_x + o_cols, mask=o_mask, other=0.0)
                dyo_raw = tl.load(DY + r64 * stride_dy + o_cols, mask=o_mask, other=0.0)
        if HAS_DXSUM:  # issued before the reductions: its latency hides behind them
            dxs = tl.load(DXSUM + r64 * stride_dxsum + cols, mask=mask, other=0.0)
        x = x_raw.to(tl.float32)
        dy = dy_raw.to(tl.float32)
        if RMS:
            xhat = x * rstd  # x is 0 outside mask
        else:
            xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        if ROW_AFFINE:
            # per-row sums of dy * xhat and dy: the row's dw/db partials; g = w_row * dy
            s1, s2 = tl.split(tl.sum(tl.sum(tl.join(xhat * dy, dy), axis=0, keep_dims=True),
                                     axis=2, keep_dims=True))
            if HAS_W:
                tl.store(DW_PART + rows, s1, mask=row_ok)
            if HAS_B:
                tl.store(DB_PART + rows, s2, mask=row_ok)
            g = dy * w_row
            c1 = s1 * w_row / N
            c2 = s2 * w_row / N
        else:
            g = dy * w
            # the partials first: dy is then dead during the reductions (fewer registers)
            if HAS_W:
                dw_acc += dy * xhat
            if HAS_B:
                db_acc += dy
            if RMS:
                s1 = tl.sum(tl.sum(xhat * g, axis=0, keep_dims=True), axis=2, keep_dims=True)
                if SPLIT == 2:
                    o1, _o2 = _other_sums(xo_raw, dyo_raw, o_mask, mean, rstd, w_o, RMS)
                    s1 = s1 + o1  # a + b == b + a: both partners agree bitwise
                c2 = 0.0
            else:
                s1, s2 = tl.split(tl.sum(tl.sum(tl.join(xhat * g, g), axis=0, keep_dims=True),
                                         axis=2, keep_dims=True))
                if SPLIT == 2:
                    o1, o2 = _other_sums(xo_raw, dyo_raw, o_mask, mean, rstd, w_o, RMS)
                    s1 = s1 + o1
                    s2 = s2 + o2
                c2 = s2 / N
            c1 = s1 / N
        dx = (g - (xhat * c1 + c2)) * rstd
        if HAS_DXSUM:  # gradient arriving at the prenorm output x + residual flows straight in
            dx += dxs.to(tl.float32)
        tl.store(DX + r64 * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
    if not ROW_AFFINE:
        # every team owns >= 1 tile (launcher), so every partial row is fully written
        part_off = team.to(tl.int64) * N
        if HAS_W:
            tl.store(DW_PART + part_off + cols, tl.sum(dw_acc, axis=1, keep_dims=True),
                     mask=col_ok)
        if HAS_B:
            tl.store(DB_PART + part_off + cols, tl.sum(db_acc, axis=1, keep_dims=True),
                     mask=col_ok)


@triton.jit
def _xhat_g_tile(X, DY, W, rows, cols, c_ok, mask, stride_x, stride_dy, mean, rstd,
                 RMS: tl.constexpr, HAS_W: tl.constexpr, ROW_AFFINE: tl.constexpr):
    """Loaded chunk of the looped backward: fp32 xhat, dy and g = w * dy (column weights;
    ROW_AFFINE: g = dy, the caller scales), all 0 outside mask."""
    r64 = rows.to(tl.int64)
    x = tl.load(X + r64 * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + r64 * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    if RMS:
        xhat = x * rstd
    else:
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
    g = dy
    if HAS_W and not ROW_AFFINE:
        g = dy * tl.load(W + cols, mask=c_ok, other=0.0).to(tl.float32)
    return xhat, dy, g


@triton.jit
def _bwd_looped(
    X, W, DY, DXSUM, DX, MEAN, RSTD, DW_PART, DB_PART,  # as in _bwd_rows (SPLIT = 1)
    stride_x, stride_dy, stride_dxsum, stride_dx,
    M, N, C,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILE_C: tl.constexpr,
    SPLIT: tl.constexpr, PREFETCH: tl.constexpr,
    RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_DXSUM: tl.constexpr,
    ROW_AFFINE: tl.constexpr,
):
    """Tiles of BLOCK_M rows, which each thread holds all of (TILE_C = the CTA's lanes x 16 B:
    the launcher checks), so the dw/db column sums over the tile stay in-thread and each
    thread reads back exactly the partial elements it wrote."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    local = (tl.arange(0, BLOCK_N // TILE_C)[:, None, None] * TILE_C
             + tl.arange(0, TILE_C)[None, None, :])
    m = tl.arange(0, BLOCK_M)[None, :, None]
    n_tiles = tl.cdiv(M, BLOCK_M)
    part_off = pid.to(tl.int64) * N
    for t in range(pid, n_tiles, n_prog):
        rows = t * BLOCK_M + m
        row_ok = rows < M
        r64 = rows.to(tl.int64)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        mean = rstd * 0.0
        if not RMS:
            mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
        w_row = rstd * 0.0 + 1.0
        if ROW_AFFINE and HAS_W:
            w_row = tl.load(W + rows % C, mask=row_ok, other=0.0).to(tl.float32)
        # pass 1: the two row sums dx needs, per-thread accumulators, one reduction
        a1 = tl.sum(tl.zeros((BLOCK_N // TILE_C, BLOCK_M, TILE_C), tl.float32), axis=0,
                    keep_dims=True)
        a2 = a1
        for start in range(0, N, BLOCK_N):
            cols = start + local
            c_ok = cols < N
            xhat, dy, g = _xhat_g_tile(X, DY, W, rows, cols, c_ok, c_ok & row_ok, stride_x,
                                       stride_dy, mean, rstd, RMS, HAS_W, ROW_AFFINE)
            # ROW_AFFINE: the row's dw/db partials sum dy * xhat, dy (g = dy here)
            a1 += tl.sum(xhat * g, axis=0, keep_dims=True)
            if not RMS or ROW_AFFINE:
                a2 += tl.sum(g, axis=0, keep_dims=True)
        s1, s2 = tl.split(tl.sum(tl.join(a1, a2), axis=2, keep_dims=True))
        if ROW_AFFINE:
            if HAS_W:
                tl.store(DW_PART + rows, s1, mask=row_ok)
            if HAS_B:
                tl.store(DB_PART + rows, s2, mask=row_ok)
            c1 = s1 * w_row / N
            c2 = s2 * w_row / N
        else:
            c1 = s1 / N
            c2 = s2 / N
        # pass 2: dx, and the tile's dw/db column sums added into the program's partial row
        # (its first tile starts it from 0 by a masked load: no memset)
        not_first = t != pid
        for start in range(0, N, BLOCK_N):
            cols = start + local
            c_ok = cols < N
            mask = c_ok & row_ok
            if HAS_DXSUM:
                dxs = tl.load(DXSUM + r64 * stride_dxsum + cols, mask=mask, other=0.0)
            xhat, dy, g = _xhat_g_tile(X, DY, W, rows, cols, c_ok, mask, stride_x, stride_dy,
                                       mean, rstd, RMS, HAS_W, ROW_AFFINE)
            if ROW_AFFINE:
                g = dy * w_row
            else:
                if HAS_W:
                    acc = tl.load(DW_PART + part_off + cols, mask=c_ok & not_first, other=0.0)
                    tl.store(DW_PART + part_off + cols,
                             acc + tl.sum(dy * xhat, axis=1, keep_dims=True), mask=c_ok)
                if HAS_B:
                    acc = tl.load(DB_PART + part_off + cols, mask=c_ok & not_first, other=0.0)
                    tl.store(DB_PART + part_off + cols,
                             acc + tl.sum(dy, axis=1, keep_dims=True), mask=c_ok)
            if RMS and not ROW_AFFINE:
                dx = (g - xhat * c1) * rstd
            else:
                dx = (g - (xhat * c1 + c2)) * rstd
            if HAS_DXSUM:
                dx += dxs.to(tl.float32)
            tl.store(DX + r64 * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------
# launchers (backend contract)
# ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def default_sm_count(device: torch.device) -> int:
    """SMs of ``device`` when it is a GPU, else a small constant (interpreter runs)."""
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else
                              torch.cuda.current_device())
    return _CPU_SM_COUNT


@functools.lru_cache(maxsize=64)
def device_info(index: int):
    """(arch, SM count) of the device ``x.get_device()`` names (-1: CPU, the interpreter)."""
    if index < 0:
        return "cpu", _CPU_SM_COUNT
    dev = torch.device("cuda", index)
    return device_arch(dev), default_sm_count(dev)


def check_config(cfg, elem: int, n: int, row_affine: bool = False):
    """Raise ValueError for a ``config=`` the kernels cannot run on rows of ``n`` elements
    (tests, the tuner)."""
    vec = 16 // elem
    ok = (cfg.block_n & (cfg.block_n - 1) == 0 and cfg.tile_c & (cfg.tile_c - 1) == 0
          and cfg.block_m & (cfg.block_m - 1) == 0 and cfg.block_n % cfg.tile_c == 0
          and cfg.block_m >= 1 and 1 <= cfg.num_warps <= 32
          and (not cfg.one_pass or cfg.block_n * getattr(cfg, "split", 1) >= n))
    if isinstance(cfg, BwdConfig):
        ok = ok and cfg.split in (1, 2) and cfg.ctas_per_sm >= 1
        if not cfg.one_pass:
            # column partials: rows in-thread, the tile's lanes x 16 B spanning exactly
            # tile_c, so each thread reads back what it wrote (see _bwd_looped)
            ok = ok and cfg.split == 1 and (row_affine or cfg.tile_c == 32 * vec * cfg.num_warps)
    if not ok:
        raise ValueError(f"layer_norm: invalid config {cfg} for {elem}-byte elements")


# A launch plan: everything about a launch that depends on the shape class and flags, not on
# the tensors, built once (the launchers run on every eager call: one cache lookup, then the
# launch with the constexprs passed positionally, which Triton binds faster than keywords).
def fwd_plan_for(cfg, rms, has_w, has_b, has_res, row_affine):
    """(kernel, rows per program (looped: 1), constexprs, num_warps) of a forward."""
    kernel = _fwd_rows if cfg.one_pass else _fwd_looped
    # the constexprs in signature order, passed positionally (cheaper than keywords)
    cexprs = (cfg.block_m, cfg.block_n, cfg.tile_c, rms, has_w, has_b, has_res, row_affine)
    return kernel, cfg.block_m if cfg.one_pass else 1, cexprs, cfg.num_warps


@functools.lru_cache(maxsize=1024)
def _fwd_plan(n, dtype, kind, aligned, dev, has_w, has_b, has_res):
    """kind: False / True (LayerNorm / RMSNorm, as the launcher's rms flag) or "in"."""
    kind = {False: "ln", True: "rms"}.get(kind, kind)
    cfg = fwd_config(n, dtype, kind, device_info(dev)[0], aligned)
    return fwd_plan_for(cfg, kind == "rms", has_w, has_b, has_res, kind == "in")


def bwd_plan_for(cfg, rms, has_w, has_b, has_dxsum, row_affine, sm_count):
    """(kernel, rows per tile, programs per row, teams cap, constexprs, num_warps, maxnreg) of a
    backward: teams = min(tiles, the cap), every team owning at least one tile."""
    kernel = _bwd_rows if cfg.one_pass else _bwd_looped
    cexprs = (cfg.block_m, cfg.block_n, cfg.tile_c, cfg.split, cfg.prefetch, rms, has_w, has_b,
              has_dxsum, row_affine)
    cap = max(1, sm_count * cfg.ctas_per_sm // cfg.split)
    return (kernel, cfg.block_m, cfg.split, cap, cexprs, cfg.num_warps,
            max_registers(cfg.num_warps))


@functools.lru_cache(maxsize=1024)
def _bwd_plan(n, dtype, kind, aligned, dev, has_w, has_b, has_dxsum):
    """kind as in _fwd_plan."""
    kind = {False: "ln", True: "rms"}.get(kind, kind)
    arch, sms = device_info(dev)
    cfg = bwd_config(n, dtype, kind, arch, aligned)
    return bwd_plan_for(cfg, kind == "rms", has_w, has_b, has_dxsum, kind == "in", sms)


def _teams(M: int, cfg: BwdConfig, sm_count: int) -> int:
    """Persistent row teams (cfg.split programs each): one per resident slot, each owning at
    least one tile."""
    return max(1, min(_cdiv(M, cfg.block_m), sm_count * cfg.ctas_per_sm // cfg.split))


@functools.lru_cache(maxsize=1024)
def _sum_plan(n, has_a, has_b, dev):
    """(programs, constexprs, num_warps) of the column sums of dweight / dbias partials."""
    cfg = partials_sum_config(0, n, has_a + has_b, device_info(dev)[0])
    return _sum_launch(cfg, n, has_a, has_b)


def _sum_launch(cfg, n, has_a, has_b):
    return ((has_a + has_b) * _cdiv(n, cfg.block_n), (has_a, has_b, cfg.block_p, cfg.block_n),
            cfg.num_warps)


def column_sums(dw_part, db_part, weight, bias, P, n, dev, sum_config=None):
    """dweight, dbias = fixed-order column sums of the (P, n) fp32 partials (None where the
    parameter is absent), in one launch; ``sum_config`` overrides the heuristic."""
    has_w, has_b = dw_part is not None, db_part is not None
    if sum_config is None:
        programs, cexprs, num_warps = _sum_plan(n, has_w, has_b, dev)
    else:
        programs, cexprs, num_warps = _sum_launch(sum_config, n, has_w, has_b)
    dw = torch.empty_like(weight) if has_w else None
    db = torch.empty_like(bias) if has_b else None
    part = dw_part if has_w else db_part
    sum_partials_kernel[(programs,)](
        part, dw if has_w else part, db_part if has_b else part, db if has_b else part,
        P, n, *cexprs, num_warps=num_warps)
    return dw, db


def layer_norm_fwd(x, residual, weight, bias, eps: float, rms: bool, *, out=None,
                   xsum_out=None, config: FwdConfig = None):
    """Contract forward.  ``out`` / ``xsum_out`` (keyword-only, optional): preallocated (M, N)
    outputs with unit column stride, written in place (tests poison them to check coverage).
    ``config`` overrides the launch heuristic (tests, bench/tune.py)."""
    M, N = x.shape
    if out is None:
        out = x.new_empty((M, N))  # contiguous, whatever x's row stride
    xsum = None
    if residual is not None:
        xsum = x.new_empty((M, N)) if xsum_out is None else xsum_out
    mean = None if rms else f32_empty(x, M)
    rstd = f32_empty(x, M)
    if M == 0:
        return out, xsum, mean, rstd
    if N == 0:  # statistics of an empty row are 0/0, as in torch
        rstd.fill_(float("nan"))
        if mean is not None:
            mean.fill_(float("nan"))
        return out, xsum, mean, rstd
    sx = x.stride(0)
    if config is None:
        # 16-byte loads when the row length and stride are multiples of 16 elements
        kernel, block_m, cexprs, num_warps = _fwd_plan(
            N, x.dtype, rms, not (N | sx) & 15, x.get_device(), weight is not None,
            bias is not None, residual is not None)
    else:
        check_config(config, x.element_size(), N)
        kernel, block_m, cexprs, num_warps = fwd_plan_for(
            config, rms, weight is not None, bias is not None, residual is not None, False)
    res = residual if residual is not None else x
    xs = xsum if xsum is not None else out
    kernel[(-(-M // block_m),)](
        x, res, weight if weight is not None else x, bias if bias is not None else x, out, xs,
        mean if mean is not None else rstd, rstd, sx, res.stride(0), out.stride(0),
        xs.stride(0), M, N, 1, eps, *cexprs, num_warps=num_warps)
    return out, xsum, mean, rstd


def layer_norm_bwd(dy, dxsum, x, weight, bias, mean, rstd, rms: bool, *, dx_out=None,
                   sm_count=None, config: BwdConfig = None,
                   sum_config: PartialsSumConfig = None):
    """Contract backward: the row kernel, then one column-sum launch for dweight and dbias.
    ``sm_count`` (keyword-only) sets the persistent grid (config.ctas_per_sm x sm_count
    programs); default: the GPU's SM count, or a small constant on CPU.  ``dx_out``: optional
    preallocated (M, N) dx with unit column stride.  ``config`` / ``sum_config`` override the
    heuristics of the two launches."""
    M, N = x.shape
    dx = x.new_empty((M, N)) if dx_out is None else dx_out
    has_w, has_b = weight is not None, bias is not None
    if M == 0 or N == 0:
        dw = torch.zeros_like(weight) if has_w else None
        db = torch.zeros_like(bias) if has_b else None
        return dx, dw, db
    dev = x.get_device()
    sx = x.stride(0)
    if config is None and sm_count is None:
        plan = _bwd_plan(N, x.dtype, rms, not (N | sx) & 15, dev, has_w, has_b,
                         dxsum is not None)
    else:
        if config is None:
            config = bwd_config(N, x.dtype, "rms" if rms else "ln", device_info(dev)[0],
                                row_aligned(N, x.stride(0)))
        else:
            check_config(config, x.element_size(), N)
        plan = bwd_plan_for(config, rms, has_w, has_b, dxsum is not None, False,
                            sm_count or device_info(dev)[1])
    kernel, block_m, split, cap, cexprs, num_warps, maxnreg = plan
    teams = min(-(-M // block_m), cap)
    dw_part = f32_empty(x, (teams, N)) if has_w else None
    db_part = f32_empty(x, (teams, N)) if has_b else None
    dxs = dxsum if dxsum is not None else dy
    kernel[(teams * split,)](
        x, weight if has_w else x, dy, dxs, dx, mean if mean is not None else rstd, rstd,
        dw_part if has_w else rstd, db_part if has_b else rstd, sx, dy.stride(0),
        dxs.stride(0), dx.stride(0), M, N, 1, *cexprs, num_warps=num_warps, maxnreg=maxnreg)
    if not (has_w or has_b):
        return dx, None, None
    # second step: dweight and dbias, fixed-order column sums of the partials, one launch
    dw, db = column_sums(dw_part, db_part, weight, bias, teams, N, dev, sum_config)
    return dx, dw, db


# ----------------------------------------------------------------------------------------
# compile variants (for the sm_80 / sm_90 compile checks)
# ----------------------------------------------------------------------------------------
_TL_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
X_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT = "i32"


def _param_dtypes(x_dtype):
    """Weight/bias dtypes exercised with ``x_dtype``: the same dtype, or fp32 (mixed)."""
    return (x_dtype,) if x_dtype == torch.float32 else (x_dtype, torch.float32)


def fwd_signature(x_dtype, w_dtype, has_w, has_b):
    x_t, w_t = "*" + _TL_NAME[x_dtype], "*" + _TL_NAME[w_dtype]
    sig = {"X": x_t, "RES": x_t, "W": w_t if has_w else x_t, "B": w_t if has_b else x_t,
           "OUT": x_t, "XSUM": x_t, "MEAN": "*fp32", "RSTD": "*fp32",
           "stride_x": _INT, "stride_res": _INT, "stride_out": _INT, "stride_xsum": _INT,
           "M": _INT, "N": _INT, "C": _INT, "eps": "fp32"}
    sig.update({k: "constexpr" for k in ("BLOCK_M", "BLOCK_N", "TILE_C", "RMS", "HAS_W",
                                         "HAS_B", "HAS_RES", "ROW_AFFINE")})
    return sig


def bwd_signature(x_dtype, w_dtype, has_w, has_b):
    x_t, w_t = "*" + _TL_NAME[x_dtype], "*" + _TL_NAME[w_dtype]
    sig = {"X": x_t, "W": w_t if has_w else x_t, "DY": x_t, "DXSUM": x_t, "DX": x_t,
           "MEAN": "*fp32", "RSTD": "*fp32", "DW_PART": "*fp32", "DB_PART": "*fp32",
           "stride_x": _INT, "stride_dy": _INT, "stride_dxsum": _INT, "stride_dx": _INT,
           "M": _INT, "N": _INT, "C": _INT}
    sig.update({k: "constexpr" for k in ("BLOCK_M", "BLOCK_N", "TILE_C", "SPLIT", "PREFETCH",
                                         "RMS", "HAS_W", "HAS_B", "HAS_DXSUM", "ROW_AFFINE")})
    return sig


def fwd_variant(cfg: FwdConfig, x_dtype, w_dtype, rms, has_w, has_b, has_res, row_affine):
    """(kernel, signature, constexprs, num_warps) of one forward launch."""
    kernel = _fwd_rows if cfg.one_pass else _fwd_looped
    ce = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, TILE_C=cfg.tile_c, RMS=rms,
              HAS_W=has_w, HAS_B=has_b, HAS_RES=has_res, ROW_AFFINE=row_affine)
    return kernel, fwd_signature(x_dtype, w_dtype, has_w, has_b), ce, cfg.num_warps


def bwd_variant(cfg: BwdConfig, x_dtype, w_dtype, rms, has_w, has_b, has_dxsum, row_affine):
    kernel = _bwd_rows if cfg.one_pass else _bwd_looped
    ce = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, TILE_C=cfg.tile_c, SPLIT=cfg.split,
              PREFETCH=cfg.prefetch, RMS=rms, HAS_W=has_w, HAS_B=has_b, HAS_DXSUM=has_dxsum,
              ROW_AFFINE=row_affine)
    return kernel, bwd_signature(x_dtype, w_dtype, has_w, has_b), ce, cfg.num_warps


def sum_variant(cfg: PartialsSumConfig, out_dtype, has_a, has_b):
    o_t = "*" + _TL_NAME[out_dtype]
    sig = {"PART_A": "*fp32", "OUT_A": o_t if has_a else "*fp32", "PART_B": "*fp32",
           "OUT_B": o_t if has_b else "*fp32", "P": _INT, "N": _INT, "HAS_A": "constexpr",
           "HAS_B": "constexpr", "BLOCK_P": "constexpr", "BLOCK_N": "constexpr"}
    ce = dict(HAS_A=has_a, HAS_B=has_b, BLOCK_P=cfg.block_p, BLOCK_N=cfg.block_n)
    return sum_partials_kernel, sig, ce, cfg.num_warps


def _configs(fn, dtype, *args):
    out = []
    for n in analytic_sizes(dtype.itemsize):
        cfg = fn(n, dtype.itemsize, *args)
        if cfg not in out:
            out.append(cfg)
    return out


def fwd_configs(dtype, aligned=True, row_affine=False):
    """Every forward config the analytic heuristic returns for ``dtype`` and rows that are
    ``aligned`` (16-byte loads) or not (row_affine: InstanceNorm planes)."""
    return _configs(_fwd_analytic, dtype, aligned, row_affine)


def bwd_configs(dtype, row_affine=False, aligned=True):
    return _configs(_bwd_analytic, dtype, row_affine, aligned)


# (RMS, HAS_W, HAS_B, residual / prenorm gradient): the first has every input (the most
# registers), so the first variant of each kernel compiles all of its code
_FLAGS = ((False, True, True, True), (True, True, False, True), (False, True, True, False),
          (False, True, False, True), (False, False, True, False), (False, False, False, False),
          (True, True, False, False), (True, False, False, True), (True, False, False, False),
          (False, False, True, True), (False, True, False, False), (False, False, False, True))


def compile_variants(full: bool = True):
    """Yield (kernel, signature, constexprs, num_warps) for the kernel variants the LN/RMS
    launchers can produce: configs x x dtype x {same, fp32} parameter dtype x the HAS_* / RMS
    flags (absent pointers carry the dummy's dtype, as the launcher passes them), the other
    configs the tuner may choose (candidate_configs) with every input, then the column sums.  Runtime ints are compiled as i32 (Triton picks i64 itself for huge ones).
    The backward launches also pass maxnreg (``compile_options``).

    full=False: the variants of ``covering_variants()``."""
    if not full:
        for v, _archs, _aligned in covering_variants():
            yield v
        return
    for flags in _FLAGS:
        rms, has_w, has_b, extra = flags
        for xd in X_DTYPES:
            for wd in _param_dtypes(xd):
                if wd != xd and not (has_w or has_b):
                    continue  # no parameter: its dtype does not matter
                for cfg in _union(fwd_configs(xd), fwd_configs(xd, False)):
                    yield fwd_variant(cfg, xd, wd, rms, has_w, has_b, extra, False)
                for cfg in _union(bwd_configs(xd), bwd_configs(xd, False, False)):
                    yield bwd_variant(cfg, xd, wd, rms, has_w, has_b, extra, False)
    # the tuner's other candidates, with every input (the most registers)
    for xd in X_DTYPES:
        fwd, bwd = candidate_configs(xd)
        for cfg in fwd:
            yield fwd_variant(cfg, xd, torch.float32, False, True, True, True, False)
        for cfg in bwd:
            yield bwd_variant(cfg, xd, torch.float32, False, True, True, True, False)
    yield from sum_variants(True)


def _union(a, b):
    return a + [c for c in b if c not in a]


def candidate_configs(dtype, row_affine=False):
    """(forward, backward) configs bench/tune.py may time, and so write into the tuned table,
    for rows of ``dtype`` beyond the analytic ones: the candidates at every pow2 width (a
    config depends on n only through it), ctas_per_sm set to 1 (it sizes the grid, not the
    compiled code)."""
    from dataclasses import replace
    kinds = ("in",) if row_affine else ("ln", "rms")
    fwd = _union(fwd_configs(dtype, True, row_affine), fwd_configs(dtype, False, row_affine))
    bwd = _union(bwd_configs(dtype, row_affine), bwd_configs(dtype, row_affine, False))
    bwd = [replace(c, ctas_per_sm=1) for c in bwd]
    f_out, b_out = [], []
    for n in analytic_sizes(dtype.itemsize):
        for kind in kinds:
            for c in fwd_candidates(n, dtype, kind, "sm90"):
                if c not in fwd and c not in f_out:
                    f_out.append(c)
            for c in bwd_candidates(n, dtype, kind, "sm90"):
                c = replace(c, ctas_per_sm=1)
                if c not in bwd and c not in b_out and not (row_affine and c.split != 1):
                    b_out.append(c)
    return f_out, b_out


def covering_variants():
    """[((kernel, signature, constexprs, num_warps), archs, aligned)]: the subset CI compiles
    (aligned: with the row length and strides specialized as multiples of 16, as the
    launches of aligned rows are; else element-wise loads).  Every config for bf16 and fp32
    x with fp32 parameters and every input (the most registers: spills would show here
    first), aligned and not, on sm_90, and on sm_80 where ptxas works at the 128-register
    cap (every aligned backward, 16-warp aligned forwards; below 16 warps a forward may take
    255; element-wise rows hold fewer elements a thread: sm_90 only, and of 210 tuner
    candidates compiled for both archs none spilled on sm_80 alone); fp16 at the widest
    one-pass configs; two other flag combinations at the narrowest config of each kernel;
    the column sums (~40 registers) at every tile."""
    both, h = (80, 90), (90,)
    out = []
    f32, bf, f16 = torch.float32, torch.bfloat16, torch.float16
    for xd in (bf, f32):
        for aligned in (True, False):
            for cfg in fwd_configs(xd, aligned):
                out.append((fwd_variant(cfg, xd, f32, False, True, True, True, False),
                            both if cfg.num_warps >= 16 and aligned else h, aligned))
            for cfg in bwd_configs(xd, False, aligned):
                out.append((bwd_variant(cfg, xd, f32, False, True, True, True, False),
                            both if aligned else h, aligned))
    out.append((fwd_variant([c for c in fwd_configs(f16) if c.one_pass][-1], f16, f16, False,
                            True, True, True, False), h, True))
    out.append((bwd_variant([c for c in bwd_configs(f16) if c.one_pass][-1], f16, f16, False,
                            True, True, True, False), h, True))
    firsts = {}
    for cfg in fwd_configs(bf) + bwd_configs(bf):
        firsts.setdefault((type(cfg), cfg.one_pass, getattr(cfg, "split", 1)), cfg)
    for cfg in firsts.values():
        variant = fwd_variant if isinstance(cfg, FwdConfig) else bwd_variant
        for flags in (_FLAGS[1], _FLAGS[5]):
            out.append((variant(cfg, bf, bf, *flags, False), h, True))
    for v in sum_variants(False):
        out.append((v, h, True))
    # duplicates (an unaligned config equal to an aligned one) compile once, aligned
    seen, uniq = set(), []
    for v, archs, aligned in out:
        key = (v[0].fn.__name__, tuple(sorted(v[1].items())), tuple(sorted(v[2].items())),
               v[3], aligned)
        if key not in seen:
            seen.add(key)
            uniq.append((v, archs, aligned))
    return uniq


def compile_options(kernel, num_warps: int) -> dict:
    """triton.compile options of a launch of ``kernel`` (offline compiles must match)."""
    opts = {"num_warps": num_warps}
    if kernel in (_bwd_rows, _bwd_looped):
        opts["maxnreg"] = max_registers(num_warps)
    return opts


def sum_variants(full: bool = True):
    """The column-sum kernel: output in the parameter's dtype (every float dtype can be
    one).  full=False: every tile for bf16 outputs of both buffers, each dtype x buffer
    combination at the widest tile."""
    cfgs = all_partials_sum_configs()
    for wd in X_DTYPES:
        for has_a, has_b in ((True, True), (True, False), (False, True)):
            for cfg in cfgs:
                if not full and not ((wd == torch.bfloat16 and has_a and has_b) or
                                     (cfg == cfgs[-1] and (wd == torch.bfloat16) != has_a)):
                    continue
                yield sum_variant(cfg, wd, has_a, has_b)


def evidence_launches(op, M, N, dtype, sm_count=132, arch="sm90"):
    """The launches of one call (forward, backward, column sums) the heuristics choose for an
    (M, N) benchmark case of ``op`` ("layer_norm" / "rms_norm"), with bf16/fp32 parameters
    in x's dtype: [dict(kind, variant=(kernel, signature, constexprs, num_warps), ints=runtime
    int args (the multiples of 16 among them are specialized as divisible at launch), grid,
    config, ctas_design (programs per SM the design counts on), tile_bytes (bytes a program
    loads per tile, prefetched: x and dy), row_scalars (per-row scalar loads per tile))]."""
    rms = op == "rms_norm"
    kind = "rms" if rms else "ln"
    fc = fwd_config(N, dtype, kind, arch)
    bc = bwd_config(N, dtype, kind, arch)
    esz = dtype.itemsize
    teams = _teams(M, bc, sm_count)
    n_out = 1 if rms else 2
    sc = partials_sum_config(teams, N, n_out, arch)
    return [
        dict(kind="fwd", variant=fwd_variant(fc, dtype, dtype, rms, True, not rms, False, False),
             ints=dict(stride_x=N, stride_res=0, stride_out=N, stride_xsum=0, M=M, N=N, C=1),
             grid=_cdiv(M, fc.block_m) if fc.one_pass else M, config=fc, ctas_design=None,
             tile_bytes=fc.block_m * min(fc.block_n, N) * esz, row_scalars=0),
        dict(kind="bwd", variant=bwd_variant(bc, dtype, dtype, rms, True, not rms, False, False),
             ints=dict(stride_x=N, stride_dy=N, stride_dxsum=N, stride_dx=N, M=M, N=N, C=1),
             grid=teams * bc.split, config=bc, ctas_design=bc.ctas_per_sm,
             tile_bytes=bc.block_m * min(bc.block_n * bc.split, N) * 2 * esz,
             row_scalars=(1 if rms else 2) * bc.block_m),
        dict(kind="colsum", variant=sum_variant(sc, dtype, True, not rms),
             ints=dict(P=teams, N=N), grid=n_out * _cdiv(N, sc.block_n), config=sc,
             ctas_design=None, tile_bytes=sc.block_p * sc.block_n * 4, row_scalars=0),
    ]


# ----------------------------------------------------------------------------------------
# tuning targets (bench/tune.py)
# ----------------------------------------------------------------------------------------
def _rand(shape, dtype, device, mean=0.0):
    return (torch.randn(shape, device=device, dtype=torch.float32) + mean).to(dtype)


def tune_targets(op, shape, dtype, layout, device):
    """TuneTargets for one benchmark case of layer_norm / rms_norm (shape (M, N)): the
    forward, the backward's row kernel (+ its column sums) and the column sums alone."""
    if op not in ("layer_norm", "rms_norm"):
        return []
    rms = op == "rms_norm"
    kind = "rms" if rms else "ln"
    M, N = shape
    arch = device_arch(torch.device(device))
    x = _rand((M, N), dtype, device)
    w = _rand((N,), dtype, device, 1.0)
    b = None if rms else _rand((N,), dtype, device)
    out = torch.empty_like(x)
    dy = _rand((M, N), dtype, device)
    _, _, mean, rstd = layer_norm_fwd(x, None, w, b, 1e-5, rms)
    dx = torch.empty_like(x)
    esz = x.element_size()
    targets = [
        TuneTarget("layer_norm_fwd", f"{_TL_NAME[dtype]}|{N}|{kind}",
                   fwd_candidates(N, dtype, kind, arch),
                   lambda cfg: layer_norm_fwd(x, None, w, b, 1e-5, rms, out=out, config=cfg),
                   nbytes=2 * M * N * esz),
        TuneTarget("layer_norm_bwd", f"{_TL_NAME[dtype]}|{N}|{kind}",
                   bwd_candidates(N, dtype, kind, arch),
                   lambda cfg: layer_norm_bwd(dy, None, x, w, b, mean, rstd, rms, dx_out=dx,
                                              config=cfg),
                   nbytes=3 * M * N * esz),
    ]
    # the column sums alone, on partials shaped as the heuristic's backward leaves them
    cfg = bwd_config(N, dtype, kind, arch)
    n_out = 1 if rms else 2
    teams = _teams(M, cfg, default_sm_count(torch.device(device)))
    parts = [torch.randn((teams, N), device=device) for _ in range(n_out)]
    targets.append(TuneTarget(
        "layer_norm_colsum", f"{N}|{n_out}", sum_candidates(teams, N, n_out, arch),
        lambda c: sum_partials(parts[0], w, parts[-1] if n_out == 2 else None, b,
                               c.block_p, c.block_n, c.num_warps),
        nbytes=n_out * teams * N * 4))
    return targets
