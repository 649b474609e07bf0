"""Triton LayerNorm over the channels of (N, C, *spatial) (timm's LayerNorm2d): forward and
backward, NCHW and channels_last read in place.

Implements ``layer_norm_2d_fwd`` / ``layer_norm_2d_bwd`` of the backend contract in
``fusednorm/backends/__init__.py``.  With S = the number of positions, element (n, c, s) is at
    NCHW:          n*C*S + c*S + s      (a position's C values are S apart)
    channels_last: n*C*S + s*C + c      (a position's C values are one contiguous row)
Every program owns one sample n and BLOCK_S positions and walks them in (BLOCK_C, BLOCK_S)
tiles; the statistics of each position are reductions over axis 0 (channels).  The tile's
contiguous axis is S for NCHW (BLOCK_S * itemsize >= 32 bytes: whole sectors, 16-byte vector
loads when 16 divides S) and C for channels_last (16-byte vectors when 16 divides C); one
kernel serves both, CHANNELS_LAST a constexpr.

Kernels
  _ln2d_fwd   one launch.  ONE_PASS: the whole (C, BLOCK_S) column block in registers,
              two-pass statistics there, normalize, store.  Otherwise: chunks of BLOCK_C
              channels merged by Chan's formula per position, then a normalize pass that
              re-reads x (from L2).
  _ln2d_bwd   dx for BLOCK_S positions at a time over a run of position blocks of one sample,
              and that run's per-channel fp32 partial sums of dy*xhat and dy (one partial
              row per program: registers for ONE_PASS, the program's own row in global memory
              otherwise).
  sum_partials_kernel (kernels/_reduce.py)  second launch: dweight, dbias = fixed-order
              column sums of the partials (deterministic, no atomics).

Statistics are fp32 of x - K, K = the position's first channel (offset data, mean 1e4,
std 1, keeps its digits); mean = K + mean(x - K).  Offsets are int64 (n*C*S passes 2^31).
Math (per position, xhat = (x - mean) * rstd, g = w * dy):
    dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat));  dw = sum dy*xhat;  db = sum dy
"""
import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fusednorm.kernels._reduce import chan_combine, sum_partials, sum_partials_kernel
from fusednorm.kernels._tuning import TuneTarget, arch_of, lookup
from fusednorm.kernels._util import cdiv as _cdiv, f32_empty


# ----------------------------------------------------------------------------------------
# launch heuristic (pure Python, no device queries; the tuned table first)
# ----------------------------------------------------------------------------------------
# x elements a program keeps in registers: 32 fp32 values a thread at 8 warps (forward);
# the backward holds x and dy, so half the tile at 4 warps.
FWD_TILE = 8192
BWD_TILE = 4096
SECTOR = 32            # bytes: an NCHW channel row of a tile spans at least one sector
NCHW_ROW_BYTES = 128   # ... and at most one 128-byte line (longer rows: more programs)
CL_MAX_BLOCK_S = 256   # positions a channels_last program takes at most (tiny C)
# backward programs per SM-equivalent when the tensors are not on a GPU (interpreter)
_CPU_SM_COUNT = 4
BWD_CTAS_PER_SM = 4


@dataclass(frozen=True)
class LayerNorm2dConfig:
    block_c: int      # channels per tile: next_pow2(C) (one_pass) or one chunk (looped)
    block_s: int      # positions per tile
    num_warps: int
    one_pass: bool    # the whole channel column of a position block in registers


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _dtype_name(dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def aligned(c: int, s: int, channels_last: bool) -> bool:
    """Whether the launch vectorizes: Triton specializes an int argument as divisible by 16
    or not, so the tile's contiguous run (C for channels_last, S for NCHW) takes 16-byte
    loads when it is a multiple of 16 elements."""
    return (c if channels_last else s) % 16 == 0


def _analytic(c: int, elem: int, channels_last: bool, direction: str,
              is_aligned: bool = True) -> LayerNorm2dConfig:
    tile = FWD_TILE if direction == "fwd" else BWD_TILE
    if not is_aligned:
        # element-wise loads, each with its own 64-bit address: half the tile keeps them in
        # registers (NCHW 14x14 / 7x7 planes at full tile: 243 registers in the backward)
        tile //= 2
    c2 = max(2, _next_pow2(c))
    if channels_last:
        min_s, max_s = 1, CL_MAX_BLOCK_S
    else:
        min_s, max_s = SECTOR // elem, NCHW_ROW_BYTES // elem
    if c2 * min_s <= tile:
        block_c, one_pass = c2, True
        block_s = max(min_s, min(max_s, tile // c2))
    else:
        block_s, one_pass = min_s, False
        block_c = tile // min_s
    warps = 8 if block_c * block_s >= 8192 else 4
    return LayerNorm2dConfig(block_c, block_s, warps, one_pass)


def family(direction: str) -> str:
    return f"layer_norm_2d_{direction}"


def table_key(c: int, dtype, channels_last: bool, is_aligned: bool = True) -> str:
    return f"{_dtype_name(dtype)}|{'nhwc' if channels_last else 'nchw'}|{c}|" + \
        ("a" if is_aligned else "u")


@functools.lru_cache(maxsize=1024)
def layer_norm_2d_config(direction: str, c: int, dtype, channels_last: bool,
                         arch: str = "cpu", is_aligned: bool = True) -> LayerNorm2dConfig:
    """The tile of ``direction`` ("fwd"/"bwd") for C channels of ``dtype`` in one layout: the
    tuned table's entry for (arch, dtype|layout|C|alignment) when there is one, else the
    analytic rule (one pass when the channel column of >= 1 sector of positions fits the
    tile).  ``is_aligned``: ``aligned(C, S, channels_last)`` of the launch."""
    if c < 1:
        raise ValueError(f"layer_norm_2d_config: C={c} must be >= 1")
    t = lookup(family(direction), arch, table_key(c, dtype, channels_last, is_aligned))
    if t is not None:
        return LayerNorm2dConfig(**t)
    return _analytic(c, dtype.itemsize, channels_last, direction, is_aligned)


def candidates(direction: str, c: int, dtype, channels_last: bool, arch: str = "cpu",
               is_aligned: bool = True):
    """bench/tune.py's sweep: the heuristic's tile first, then block_s halved/doubled and
    warps 4/8 around it (each a valid config for the launcher's ``config=``)."""
    h = layer_norm_2d_config(direction, c, dtype, channels_last, arch, is_aligned)
    out = [h]
    elem = dtype.itemsize
    min_s = 1 if channels_last else SECTOR // elem
    for bs in (h.block_s // 2, h.block_s, h.block_s * 2):
        if bs < min_s:
            continue
        for w in (4, 8):
            cfg = LayerNorm2dConfig(h.block_c, bs, w, h.one_pass)
            if cfg not in out and h.block_c * bs <= 4 * FWD_TILE:
                out.append(cfg)
    return out


@dataclass(frozen=True)
class SumConfig:
    block_p: int
    block_n: int
    num_warps: int


# column sums of (P, C) partials: 32 columns (128 bytes of fp32) a program, 64 partial rows
# a step; C/32 programs (C is small: the partial rows are few and short)
SUM_CONFIG = SumConfig(block_p=64, block_n=32, num_warps=4)


# ----------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------
@triton.jit
def _tile_offsets(base, ch, sp, C, S, CHANNELS_LAST: tl.constexpr):
    """int64 offsets of the (channel ch[:, None], position sp[None, :]) tile of sample
    ``base`` (= n*C*S, int64)."""
    if CHANNELS_LAST:
        return base + sp[None, :].to(tl.int64) * C + ch[:, None]
    else:
        return base + ch[:, None].to(tl.int64) * S + sp[None, :]


@triton.jit
def _ln2d_fwd(
    X,          # (N, C, *spatial) input, NCHW-contiguous or channels_last
    W, B,       # (C,) affine (HAS_W / HAS_B), x's dtype or fp32
    OUT,        # like X (same strides)
    MEAN, RSTD, # (N*S,) fp32
    C, S,       # channels, positions per sample
    n_s_blocks, # position blocks per sample: program p is sample p // n_s_blocks
    eps,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, ONE_PASS: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid // n_s_blocks
    sp = (pid - n * n_s_blocks) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_mask = sp < S
    base = n.to(tl.int64) * C * S
    # K = each position's first channel: x - K is exact near K and its sums stay O(std)
    if CHANNELS_LAST:
        k_offs = base + sp.to(tl.int64) * C
    else:
        k_offs = base + sp
    k = tl.load(X + k_offs, mask=s_mask, other=0.0).to(tl.float32)
    if ONE_PASS:
        ch = tl.arange(0, BLOCK_C)
        c_mask = ch < C
        mask = c_mask[:, None] & s_mask[None, :]
        offs = _tile_offsets(base, ch, sp, C, S, CHANNELS_LAST)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        xs = tl.where(mask, x - k[None, :], 0.0)   # padded lanes stay 0 in both sums
        ms = tl.sum(xs, axis=0) / C
        xc = tl.where(mask, xs - ms[None, :], 0.0)
        rstd = tl.rsqrt(tl.sum(xc * xc, axis=0) / C + eps)
        y = xc * rstd[None, :]
        if HAS_W:
            y = y * tl.load(W + ch, mask=c_mask, other=0.0).to(tl.float32)[:, None]
        if HAS_B:
            y = y + tl.load(B + ch, mask=c_mask, other=0.0).to(tl.float32)[:, None]
        tl.store(OUT + offs, y.to(OUT.dtype.element_ty), mask=mask)
    else:
        # pass 1: per position, chunk (count, mean, M2) of x - K merged by Chan
        n_acc = tl.zeros((BLOCK_S,), dtype=tl.float32)
        ms = tl.zeros((BLOCK_S,), dtype=tl.float32)
        m2 = tl.zeros((BLOCK_S,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            ch = c0 + tl.arange(0, BLOCK_C)
            mask = (ch < C)[:, None] & s_mask[None, :]
            x = tl.load(X + _tile_offsets(base, ch, sp, C, S, CHANNELS_LAST), mask=mask,
                        other=0.0, eviction_policy="evict_last").to(tl.float32)
            xs = tl.where(mask, x - k[None, :], 0.0)
            cnt = tl.minimum(C - c0, BLOCK_C).to(tl.float32)
            c_mean = tl.sum(xs, axis=0) / cnt
            xc = tl.where(mask, xs - c_mean[None, :], 0.0)
            n_acc, ms, m2 = chan_combine(n_acc, ms, m2, cnt, c_mean, tl.sum(xc * xc, axis=0))
        rstd = tl.rsqrt(m2 / C + eps)
        # pass 2: normalize, re-reading x
        for c0 in range(0, C, BLOCK_C):
            ch = c0 + tl.arange(0, BLOCK_C)
            c_mask = ch < C
            mask = c_mask[:, None] & s_mask[None, :]
            offs = _tile_offsets(base, ch, sp, C, S, CHANNELS_LAST)
            x = tl.load(X + offs, mask=mask, other=0.0,
                        eviction_policy="evict_first").to(tl.float32)
            y = ((x - k[None, :]) - ms[None, :]) * rstd[None, :]
            if HAS_W:
                y = y * tl.load(W + ch, mask=c_mask, other=0.0).to(tl.float32)[:, None]
            if HAS_B:
                y = y + tl.load(B + ch, mask=c_mask, other=0.0).to(tl.float32)[:, None]
            tl.store(OUT + offs, y.to(OUT.dtype.element_ty), mask=mask)
    stat = n.to(tl.int64) * S + sp
    tl.store(MEAN + stat, k + ms, mask=s_mask)
    tl.store(RSTD + stat, rstd, mask=s_mask)


@triton.jit
def _bwd_tile(X, DY, W, offs, ch, mask, c_mask, mean, rstd, HAS_W: tl.constexpr):
    """xhat, dy and g = w * dy of one tile, fp32, all 0 outside ``mask``."""
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    xhat = tl.where(mask, (x - mean[None, :]) * rstd[None, :], 0.0)
    if HAS_W:
        g = dy * tl.load(W + ch, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    else:
        g = dy
    return xhat, dy, g


@triton.jit
def _ln2d_bwd(
    X,          # (N, C, *spatial) the forward's input, layout as in the forward
    W,          # (C,) weight (HAS_W)
    DY,         # like X
    DX,         # like X
    MEAN, RSTD, # (N*S,) fp32 from the forward
    DW_PART,    # (P, C) fp32: row p = program p's sum of dy * xhat (HAS_W)
    DB_PART,    # (P, C) fp32: row p = program p's sum of dy (HAS_B)
    C, S,
    progs_per_n,      # programs per sample; program p is sample p // progs_per_n ...
    blocks_per_prog,  # ... and owns this many consecutive position blocks of it
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, ONE_PASS: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid // progs_per_n
    first = (pid - n * progs_per_n) * blocks_per_prog
    base = n.to(tl.int64) * C * S
    part = pid.to(tl.int64) * C
    if ONE_PASS:
        ch = tl.arange(0, BLOCK_C)
        c_mask = ch < C
        dw_acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
        db_acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for i in range(0, blocks_per_prog):
            # positions past S (a short last block, a run past the last block) are masked:
            # they load 0 and add nothing to the partial sums
            sp = (first + i) * BLOCK_S + tl.arange(0, BLOCK_S)
            s_mask = sp < S
            mask = c_mask[:, None] & s_mask[None, :]
            stat = n.to(tl.int64) * S + sp
            mean = tl.load(MEAN + stat, mask=s_mask, other=0.0)
            rstd = tl.load(RSTD + stat, mask=s_mask, other=0.0)
            offs = _tile_offsets(base, ch, sp, C, S, CHANNELS_LAST)
            xhat, dy, g = _bwd_tile(X, DY, W, offs, ch, mask, c_mask, mean, rstd, HAS_W)
            c1 = tl.sum(g * xhat, axis=0) / C
            c2 = tl.sum(g, axis=0) / C
            dx = (g - (xhat * c1[None, :] + c2[None, :])) * rstd[None, :]
            tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
            if HAS_W:
                dw_acc += tl.sum(dy * xhat, axis=1)
            if HAS_B:
                db_acc += tl.sum(dy, axis=1)
        if HAS_W:
            tl.store(DW_PART + part + ch, dw_acc, mask=c_mask)
        if HAS_B:
            tl.store(DB_PART + part + ch, db_acc, mask=c_mask)
    else:
        for i in range(0, blocks_per_prog):
            sp = (first + i) * BLOCK_S + tl.arange(0, BLOCK_S)
            s_mask = sp < S
            stat = n.to(tl.int64) * S + sp
            mean = tl.load(MEAN + stat, mask=s_mask, other=0.0)
            rstd = tl.load(RSTD + stat, mask=s_mask, other=0.0)
            # pass 1: the two channel sums dx needs
            s1 = tl.zeros((BLOCK_S,), dtype=tl.float32)
            s2 = tl.zeros((BLOCK_S,), dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                ch = c0 + tl.arange(0, BLOCK_C)
                c_mask = ch < C
                mask = c_mask[:, None] & s_mask[None, :]
                offs = _tile_offsets(base, ch, sp, C, S, CHANNELS_LAST)
                xhat, dy, g = _bwd_tile(X, DY, W, offs, ch, mask, c_mask, mean, rstd, HAS_W)
                s1 += tl.sum(g * xhat, axis=0)
                s2 += tl.sum(g, axis=0)
            c1 = s1 / C
            c2 = s2 / C
            # pass 2: dx, and this block's dw/db added into the program's own partial row;
            # the first block starts it from 0 (masked load): no memset.  Each element is
            # read and written by the same thread: no race.
            # (i > 0 itself: ptxas parks that predicate in local memory on sm_90 -- one
            # STL/LDL pair, tests/test_layer_norm_2d.py counts it; the block index does not)
            not_first = first + i > first
            for c0 in range(0, C, BLOCK_C):
                ch = c0 + tl.arange(0, BLOCK_C)
                c_mask = ch < C
                mask = c_mask[:, None] & s_mask[None, :]
                offs = _tile_offsets(base, ch, sp, C, S, CHANNELS_LAST)
                xhat, dy, g = _bwd_tile(X, DY, W, offs, ch, mask, c_mask, mean, rstd, HAS_W)
                dx = (g - (xhat * c1[None, :] + c2[None, :])) * rstd[None, :]
                tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
                if HAS_W:
                    acc = tl.load(DW_PART + part + ch, mask=c_mask & not_first, other=0.0)
                    tl.store(DW_PART + part + ch, acc + tl.sum(dy * xhat, axis=1),
                             mask=c_mask)
                if HAS_B:
                    acc = tl.load(DB_PART + part + ch, mask=c_mask & not_first, other=0.0)
                    tl.store(DB_PART + part + ch, acc + tl.sum(dy, axis=1), mask=c_mask)


# ----------------------------------------------------------------------------------------
# launchers (backend contract)
# ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _device_info(device):
    """(arch, SM count): the GPU's, or ("cpu", a small constant) for interpreter runs."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return arch_of(device), _cuda_sm_count(index)
    return "cpu", _CPU_SM_COUNT


def _is_channels_last(x) -> bool:
    """channels_last(_3d) and not (also) contiguous: the launcher's layout choice."""
    if x.is_contiguous():
        return False
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    if x.dim() in (4, 5) and x.is_contiguous(memory_format=fmt):
        return True
    raise ValueError("layer_norm_2d: x must be NCHW-contiguous or channels_last "
                     f"(strides {x.stride()} for shape {tuple(x.shape)})")


def _sizes(x):
    n, c = x.shape[0], x.shape[1]
    s = 1
    for d in x.shape[2:]:
        s *= d
    return n, c, s


def _stats_shape(x):
    return (x.shape[0],) + tuple(x.shape[2:])


def layer_norm_2d_fwd(x, weight, bias, eps: float, *, out=None, config=None):
    """Contract forward: -> (out with x's strides, mean (N, *spatial), rstd (N, *spatial)).
    ``out`` (keyword-only): a preallocated output with x's strides, written in place (tests
    poison it); ``config``: a LayerNorm2dConfig instead of the heuristic's (tuning)."""
    cl = _is_channels_last(x)
    N, C, S = _sizes(x)
    if out is None:
        out = torch.empty_like(x)
    mean = f32_empty(x, _stats_shape(x))
    rstd = f32_empty(x, _stats_shape(x))
    if N == 0 or S == 0:
        return out, mean, rstd
    if C == 0:
        mean.fill_(float("nan"))
        rstd.fill_(float("nan"))
        return out, mean, rstd
    cfg = config or layer_norm_2d_config("fwd", C, x.dtype, cl, _device_info(x.device)[0],
                                         aligned(C, S, cl))
    n_s_blocks = _cdiv(S, cfg.block_s)
    _ln2d_fwd[(N * n_s_blocks,)](
        x, weight if weight is not None else x, bias if bias is not None else x, out, mean,
        rstd, C, S, n_s_blocks, eps,
        BLOCK_C=cfg.block_c, BLOCK_S=cfg.block_s, ONE_PASS=cfg.one_pass, CHANNELS_LAST=cl,
        HAS_W=weight is not None, HAS_B=bias is not None, num_warps=cfg.num_warps)
    return out, mean, rstd


def _bwd_grid(N: int, n_s_blocks: int, sm_count: int):
    """(programs per sample, position blocks per program): about BWD_CTAS_PER_SM programs
    per SM in all, every program owning >= 1 block (so every partial row is written)."""
    target = max(1, sm_count * BWD_CTAS_PER_SM)
    per_n = max(1, min(n_s_blocks, _cdiv(target, N)))
    blocks = _cdiv(n_s_blocks, per_n)
    return _cdiv(n_s_blocks, blocks), blocks


def layer_norm_2d_bwd(dy, x, weight, bias, mean, rstd, *, dx_out=None, sm_count=None,
                      config=None):
    """Contract backward: -> (dx with x's strides, dweight (C,) or None, dbias (C,) or None).
    ``dy`` is laid out like x.  ``sm_count`` sets the number of programs (~4 per SM; default
    the GPU's SM count, a small constant on CPU); ``dx_out``: a preallocated dx; ``config``:
    a LayerNorm2dConfig instead of the heuristic's."""
    cl = _is_channels_last(x)
    N, C, S = _sizes(x)
    dx = torch.empty_like(x) if dx_out is None else dx_out
    has_w, has_b = weight is not None, bias is not None
    if N == 0 or S == 0 or C == 0:
        return (dx, torch.zeros_like(weight) if has_w else None,
                torch.zeros_like(bias) if has_b else None)
    arch, sms = _device_info(x.device)
    cfg = config or layer_norm_2d_config("bwd", C, x.dtype, cl, arch, aligned(C, S, cl))
    n_s_blocks = _cdiv(S, cfg.block_s)
    per_n, blocks = _bwd_grid(N, n_s_blocks, sm_count or sms)
    programs = N * per_n
    dw_part = f32_empty(x, (programs, C)) if has_w else None
    db_part = f32_empty(x, (programs, C)) if has_b else None
    _ln2d_bwd[(programs,)](
        x, weight if has_w else x, dy, dx, mean, rstd,
        dw_part if has_w else mean, db_part if has_b else mean,
        C, S, per_n, blocks,
        BLOCK_C=cfg.block_c, BLOCK_S=cfg.block_s, ONE_PASS=cfg.one_pass, CHANNELS_LAST=cl,
        HAS_W=has_w, HAS_B=has_b, num_warps=cfg.num_warps)
    if not (has_w or has_b):
        return dx, None, None
    dw, db = sum_partials(dw_part, weight, db_part, bias, SUM_CONFIG.block_p,
                          SUM_CONFIG.block_n, SUM_CONFIG.num_warps)
    return dx, dw, db


# ----------------------------------------------------------------------------------------
# offline evidence and tuning
# ----------------------------------------------------------------------------------------
_TL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
X_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_I = "i32"


def _param_dtypes(x_dtype):
    """Weight/bias dtypes with ``x_dtype``: the same dtype, or fp32 (mixed precision)."""
    return (x_dtype,) if x_dtype == torch.float32 else (x_dtype, torch.float32)


def _signature(direction, xt, wt):
    if direction == "fwd":
        sig = {"X": xt, "W": wt, "B": wt, "OUT": xt, "MEAN": "*fp32", "RSTD": "*fp32",
               "C": _I, "S": _I, "n_s_blocks": _I, "eps": "fp32"}
    else:
        sig = {"X": xt, "W": wt, "DY": xt, "DX": xt, "MEAN": "*fp32", "RSTD": "*fp32",
               "DW_PART": "*fp32", "DB_PART": "*fp32", "C": _I, "S": _I,
               "progs_per_n": _I, "blocks_per_prog": _I}
    for k in ("BLOCK_C", "BLOCK_S", "ONE_PASS", "CHANNELS_LAST", "HAS_W", "HAS_B"):
        sig[k] = "constexpr"
    return sig


# C values whose tiles cover every config the heuristic makes (powers of two from 2, and one
# past the one-pass limit of each layout/dtype)
_COVER_C = (3, 16, 96, 192, 384, 768, 1536, 3072, 8200)


def configs(dtype, channels_last: bool, direction: str):
    """Every distinct analytic tile for ``dtype`` in one layout and direction."""
    seen = []
    for c in _COVER_C:
        for is_aligned in (True, False):
            cfg = _analytic(c, dtype.itemsize, channels_last, direction, is_aligned)
            if cfg not in seen:
                seen.append(cfg)
    return seen


def compile_variants(full: bool = True, divisibility: bool = False):
    """(kernel, signature, constexprs, num_warps) for every variant the launchers make with
    the analytic tiles: x dtype x parameter dtype (x's or fp32) x layout x tile x HAS_W/HAS_B;
    then the column-sum step with this module's block sizes for each output dtype.

    full=False: a covering subset (~1/8, for CI time on two shared cores): every tile of
    every kernel and layout with bf16 x and fp32 parameters, both present (the most
    registers: 16-bit loads widened, fp32 parameters); for fp32 and fp16 x the largest
    one-pass and the looped tile; affine off once per kernel and layout; one column-sum
    output dtype.

    divisibility=True: 5-tuples, the last the integer arguments a launch of that variant has
    as multiples of 16 (Triton's launch-time specialization): a tile made for an aligned
    launch (``aligned``: C for channels_last, S for NCHW) only ever runs with that argument
    divisible, so that is how it compiles; the unaligned tiles and the column sums with
    none."""
    for xd in X_DTYPES:
        xt = "*" + _TL[xd]
        for wd in _param_dtypes(xd):
            wt = "*" + _TL[wd]
            main = xd == torch.bfloat16 and wd == torch.float32
            for cl in (False, True):
                for direction, fn in (("fwd", _ln2d_fwd), ("bwd", _ln2d_bwd)):
                    tiles = configs(xd, cl, direction)
                    unaligned = {_analytic(c, xd.itemsize, cl, direction, False)
                                 for c in _COVER_C} - {_analytic(
                                     c, xd.itemsize, cl, direction, True) for c in _COVER_C}
                    if not (full or main):
                        if wd != xd:
                            continue
                        one = [t for t in tiles if t.one_pass]
                        tiles = [max(one, key=lambda t: t.block_c * t.block_s)] + \
                            [t for t in tiles if not t.one_pass][:1]
                    for i, cfg in enumerate(tiles):
                        for has_w, has_b in ((True, True), (True, False), (False, False)):
                            if wd != xd and not has_w:
                                continue  # no parameter: its dtype does not matter
                            if not full and (has_w, has_b) != (True, True) and not (
                                    xd == torch.bfloat16 and wd == xd and i == 0
                                    and not has_w):
                                continue
                            sig = _signature(direction, xt, wt if has_w else xt)
                            v = (fn, sig, dict(BLOCK_C=cfg.block_c, BLOCK_S=cfg.block_s,
                                               ONE_PASS=cfg.one_pass, CHANNELS_LAST=cl,
                                               HAS_W=has_w, HAS_B=has_b), cfg.num_warps)
                            if divisibility:
                                v += (() if cfg in unaligned else ("C",) if cl else ("S",),)
                            yield v
    F = "*fp32"
    for ot in (("*fp32", "*fp16", "*bf16") if full else ("*bf16",)):
        for ha, hb in ((True, True), (True, False), (False, True)):
            if not full and not (ha and hb):
                continue
            ce = {"HAS_A": ha, "HAS_B": hb, "BLOCK_P": SUM_CONFIG.block_p,
                  "BLOCK_N": SUM_CONFIG.block_n}
            v = (sum_partials_kernel,
                 {"PART_A": F, "OUT_A": ot if ha else F, "PART_B": F, "OUT_B": ot if hb else F,
                  "P": _I, "N": _I, **{k: "constexpr" for k in ce}}, ce, SUM_CONFIG.num_warps)
            yield v + ((),) if divisibility else v


def launches(direction, shape, dtype, channels_last, sm_count=132, arch="sm90", config=None):
    """[(kernel, grid, signature, constexprs, num_warps, int args by name)] of the main launch
    of ``direction`` for a tensor of ``shape``: what the offline evidence compiles (integer
    arguments that are multiples of 16 there are compiled as Triton specializes them at
    launch, those equal to 1 as constants) and what a benchmark row launches."""
    N, C = shape[0], shape[1]
    S = 1
    for d in shape[2:]:
        S *= d
    cfg = config or layer_norm_2d_config(direction, C, dtype, channels_last, arch,
                                         aligned(C, S, channels_last))
    n_s_blocks = _cdiv(S, cfg.block_s)
    xt = "*" + _TL[dtype]
    ce = dict(BLOCK_C=cfg.block_c, BLOCK_S=cfg.block_s, ONE_PASS=cfg.one_pass,
              CHANNELS_LAST=channels_last, HAS_W=True, HAS_B=True)
    if direction == "fwd":
        ints = dict(C=C, S=S, n_s_blocks=n_s_blocks)
        return [(_ln2d_fwd, (N * n_s_blocks,), _signature("fwd", xt, xt), ce, cfg.num_warps,
                 ints)]
    per_n, blocks = _bwd_grid(N, n_s_blocks, sm_count)
    ints = dict(C=C, S=S, progs_per_n=per_n, blocks_per_prog=blocks)
    return [(_ln2d_bwd, (N * per_n,), _signature("bwd", xt, xt), ce, cfg.num_warps, ints)]


def nbytes(direction, shape, dtype) -> int:
    """Bytes model: forward reads x, writes y (2 x numel x itemsize); backward reads x, dy,
    writes dx (3 x).  Statistics, parameters and partials are O(N*S + C): not counted."""
    numel = 1
    for d in shape:
        numel *= d
    return (2 if direction == "fwd" else 3) * numel * dtype.itemsize


def tune_targets(op, shape, dtype, layout, device, **_):
    """bench/tune.py's targets for one benchmark case of ``layer_norm_2d``: the forward and
    the backward (+ its column sums) of this layout, candidates from ``candidates`` (the
    heuristic's first).  ``layout``: "nchw" or "nhwc" (channels_last)."""
    if op != "layer_norm_2d":
        return []
    cl = layout == "nhwc"
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4
                         else torch.channels_last_3d)
    C = shape[1]
    w = torch.randn(C, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(C, generator=g).to(device=device, dtype=dtype)
    dy = torch.randn_like(x)
    out, dx = torch.empty_like(x), torch.empty_like(x)
    _, mean, rstd = layer_norm_2d_fwd(x, w, b, 1e-6)
    arch = _device_info(x.device)[0]
    al = aligned(C, x.numel() // max(1, shape[0] * C), cl)
    key = table_key(C, dtype, cl, al)

    def run_fwd(cfg):
        layer_norm_2d_fwd(x, w, b, 1e-6, out=out, config=cfg)

    def run_bwd(cfg):
        layer_norm_2d_bwd(dy, x, w, b, mean, rstd, dx_out=dx, config=cfg)

    return [TuneTarget(family("fwd"), key, candidates("fwd", C, dtype, cl, arch, al), run_fwd,
                       nbytes("fwd", shape, dtype)),
            TuneTarget(family("bwd"), key, candidates("bwd", C, dtype, cl, arch, al), run_bwd,
                       nbytes("bwd", shape, dtype))]
