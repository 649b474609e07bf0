"""Launch heuristics for the Triton GroupNorm kernels: the tuned table first
(kernels/_tuning.py, measured by bench/tune.py), then an analytic rule.  Pure Python, no device
queries: the launcher passes the arch and the SM count; every answer is cached on its key.

Tiles are one 16-byte vector a thread per CTA-tile, ``unroll`` CTA-tiles per loop step (that
many independent 16-B loads a thread in flight before anything waits on them):

* NCHW: a group (n, g) is the (Cg, S) block of Cg contiguous planes.  CTA-tile (block_c
  channels, block_s positions), block_c * block_s = 32 * warps * vec; unroll along s.
* channels_last: a sample is an (S, C) row-major matrix.  CTA-tile (block_s rows, block_c
  channels), block_c a 128-byte row piece (or one vector for narrow C); unroll along rows.

Only the tiles listed here exist (every constexpr value is a recompile):
``group_norm.compile_variants`` lists them all and the offline tests compile them.

Vectorized or scalar: 16-byte loads need S (NCHW) or C (channels_last) a multiple of 16 --
Triton's launch-time divisibility -- and 16-byte aligned x / dy.  Other inputs take a scalar
tile (unroll 1: per-element addresses cost registers).  Every launch passes ``maxnreg``
(max_registers): without a register budget ptxas spills a few cold values to reach an
occupancy step of its own choosing (seen at 40-128 registers); with one it stays at or under
the budget of the CTAs per SM the design assumes, and never spills (checked offline).
"""
import functools
from dataclasses import dataclass, replace

from fusednorm.kernels._tuning import lookup
from fusednorm.kernels._util import cdiv as _cdiv

NUM_WARPS = 8
# (block_c, unroll) of the NCHW tiles; block_s = 32 * NUM_WARPS * vec // block_c.
# (2, 4) covers 2 planes x 4096 bf16 positions: SD's 64x64 maps with Cg = 10 and no padding;
# (1, 4) wide planes; (8, 4) S = 1024; (8, 1) S = 256; (32, 1) small planes (8x8).
NCHW_TILES = ((1, 4), (2, 4), (8, 4), (8, 1), (32, 1))
# the split (huge groups, few rows) path only runs on wide planes
NCHW_SPLIT_TILES = ((2, 4),)
# scalar loads (S not a multiple of 16: 7x7, 14x14, ... planes): 32 planes x 64 (16-bit) or
# 32 (fp32) positions, one element a thread a step
NCHW_SCALAR_TILE = (32, 1)
# channels_last: a 128-B row piece (8 lanes a row), 4 row tiles a step; scalar (C not a
# multiple of 16): one 16-B piece a row, one step
CL_BLOCK_BYTES = 128
CL_SCALAR_BYTES = 16
CL_UNROLL = 4
# The backward holds x, dy and their fp32 products: at 16-bit, 4 steps of 8 elements a
# thread took 180-187 registers (1 CTA/SM); half the unroll keeps 2 CTAs/SM resident.
BWD_UNROLL_DIV = {2: 2, 4: 1}
# Per-group (or per-channel) partials merged per step by the split kernels (not tunable).
BLOCK_K = 64
# channels_last group statistics from per-channel partials: (groups, channels of a group)
BLOCK_G, BLOCK_J = 64, 16

# Re-read working set: a persistent NCHW program reads a group, then re-reads it (backward: x
# and dy) from L2.  Programs x group bytes should stay well inside the 50 MB L2 of an H100 /
# H200 (two 25 MB partitions; the second pass runs in reverse, so a miss degrades slowly).
L2_BUDGET = 32 << 20
# Resident CTAs per SM the compiled register counts allow at 8 warps (sm_90, triton 3.7:
# 40-80 registers for the persistent NCHW kernels; 47-80 the split ones; channels_last 48-99
# forward, 96-128 backward).  The persistent grid asks for at most MAX_CTAS; split and
# channels_last grids are sized to one wave of SPLIT_CTAS / CL_CTAS[direction, element size].
# tests/test_triton_group_norm.py checks these against the compiled kernels.
MAX_CTAS = {"fwd": 3, "bwd": 3}
SPLIT_CTAS = {("fwd", 2): 3, ("fwd", 4): 3, ("bwd", 2): 3, ("bwd", 4): 2}
CL_CTAS = {("fwd", 2): 2, ("fwd", 4): 4, ("bwd", 2): 2, ("bwd", 4): 2}
# Split the spatial axis when the groups alone fill fewer than this many programs per SM ...
SPLIT_BELOW_ROWS_PER_SM = 1
# ... and a group is at least this many elements (smaller groups: latency, not bandwidth).
SPLIT_MIN_GROUP = 1 << 16


@dataclass(frozen=True)
class GroupNormConfig:
    block_c: int          # channels per CTA-tile
    block_s: int          # spatial positions (NCHW) / rows (channels_last) per CTA-tile
    unroll: int = 4       # CTA-tiles per loop step along s
    num_warps: int = NUM_WARPS
    # NCHW: programs per group along s (1: the persistent kernel, group by group);
    # channels_last: programs per sample (row chunks; 1: one fused kernel per sample)
    split: int = 1
    ctas_per_sm: int = 2  # NCHW persistent grid = SMs x ctas_per_sm (at most the groups)


def vec_of(elem: int) -> int:
    return 16 // elem


def _unroll(unroll: int, elem: int, direction: str) -> int:
    return unroll if direction == "fwd" else max(1, unroll // BWD_UNROLL_DIV.get(elem, 1))


def nchw_tile(block_c: int, unroll: int, elem: int, direction: str = "fwd",
              num_warps: int = NUM_WARPS):
    return GroupNormConfig(block_c, 32 * num_warps * vec_of(elem) // block_c,
                           _unroll(unroll, elem, direction), num_warps)


def cl_tile(block_bytes: int, elem: int, direction: str = "fwd", num_warps: int = NUM_WARPS,
            unroll: int = CL_UNROLL):
    block_c = block_bytes // elem
    return GroupNormConfig(block_c, 32 * num_warps * vec_of(elem) // block_c,
                           _unroll(unroll, elem, direction), num_warps)


def tiles(channels_last: bool, elem: int, split: bool = False, direction: str = "fwd",
          vec: bool = True):
    """The (block_c, block_s, unroll, num_warps) tiles a launch may use."""
    if channels_last:
        if not vec:
            return [cl_tile(CL_SCALAR_BYTES, elem, direction, unroll=1)]
        return [cl_tile(CL_BLOCK_BYTES, elem, direction)]
    if not vec:
        return [nchw_tile(*NCHW_SCALAR_TILE, elem, direction)]
    return [nchw_tile(c, u, elem, direction)
            for c, u in (NCHW_SPLIT_TILES if split else NCHW_TILES)]


def max_registers(direction: str, cl: bool, split: bool, elem: int, vec: bool,
                  num_warps: int = NUM_WARPS) -> int:
    """ptxas register budget (maxnreg) of a launch: the share of the register file of the
    CTAs per SM the grid is sized for; scalar tiles: no budget (255), they never fill an SM."""
    if not vec:
        return 255
    if cl:
        ctas = CL_CTAS.get((direction, elem), 2)
    elif split:
        ctas = SPLIT_CTAS.get((direction, elem), 2)
    else:
        ctas = MAX_CTAS[direction]
    return min(255, 65536 // (32 * num_warps * ctas) // 8 * 8)


def tile_key(cfg: GroupNormConfig):
    return (cfg.block_c, cfg.block_s, cfg.unroll, cfg.num_warps)


def chunk_and_split(s: int, step: int, split: int):
    """Spatial chunk (a multiple of the loop step) per program and the number of chunks."""
    chunk = max(1, _cdiv(_cdiv(s, max(split, 1)), step)) * step
    return chunk, max(1, _cdiv(s, chunk))


def _padded(cg: int, s: int, t: GroupNormConfig) -> int:
    step = t.unroll * t.block_s
    return _cdiv(cg, t.block_c) * t.block_c * _cdiv(s, step) * step


def _best_nchw(cg: int, s: int, elem: int, split: bool, direction: str,
               vec: bool) -> GroupNormConfig:
    # fewest padded lanes; a step of one vector a thread (unroll 1) counts 15% more
    return min(tiles(False, elem, split, direction, vec),
               key=lambda t: _padded(cg, s, t) * (1.0 if t.unroll > 1 else 1.15))


def _analytic(direction: str, n: int, c: int, s: int, g: int, cl: bool, elem: int,
              sms: int, vec: bool = True) -> GroupNormConfig:
    cg = c // g
    rows = n * g
    if cl:
        t = tiles(True, elem, direction=direction, vec=vec)[0]
        step = t.unroll * t.block_s
        # chunks of >= 2 loop steps per program; one wave of resident programs at most
        want = max(1, CL_CTAS.get((direction, elem), 2) * sms // max(n, 1))
        split = max(1, min(want, s // (2 * step)))
        return replace(t, split=chunk_and_split(s, step, split)[1])
    group = cg * s
    if rows < SPLIT_BELOW_ROWS_PER_SM * sms and group >= SPLIT_MIN_GROUP:
        t = _best_nchw(cg, s, elem, True, direction, vec)
        step = t.unroll * t.block_s
        want = max(1, SPLIT_CTAS.get((direction, elem), 2) * sms // max(rows, 1))
        split = max(1, min(want, s // (2 * step)))
        if split > 1:
            return replace(t, split=chunk_and_split(s, step, split)[1], ctas_per_sm=1)
    t = _best_nchw(cg, s, elem, False, direction, vec)
    if not vec:  # up to ~180 registers without a budget: one resident CTA per SM
        return replace(t, ctas_per_sm=1)
    passes = 1 if direction == "fwd" else 2  # bytes a group re-reads: x (fwd), x and dy (bwd)
    ctas = round(L2_BUDGET / max(1, sms * group * elem * passes))
    return replace(t, ctas_per_sm=max(1, min(MAX_CTAS[direction], ctas)))


def family(direction: str, cl: bool) -> str:
    return f"group_norm_{direction}_{'cl' if cl else 'nchw'}"


def _dtype_key(elem: int, bf16: bool) -> str:
    return {4: "fp32", 2: "bf16" if bf16 else "fp16"}.get(elem, f"e{elem}")


def table_key(n: int, c: int, s: int, g: int, elem: int, bf16: bool) -> str:
    return f"{_dtype_key(elem, bf16)}|{n}x{c}x{s}|g{g}"


@functools.lru_cache(maxsize=4096)
def group_norm_config(direction: str, n: int, c: int, s: int, g: int, cl: bool, elem: int,
                      bf16: bool = False, arch: str = "cpu", sms: int = 4,
                      vec: bool = True) -> GroupNormConfig:
    """Tile, split and persistent grid for (n, c, s) with g groups, ``elem``-byte elements,
    channels_last or NCHW; direction "fwd" or "bwd"; vec: 16-byte loads possible."""
    if vec:
        t = lookup(family(direction, cl), arch, table_key(n, c, s, g, elem, bf16))
        if t is not None:
            return GroupNormConfig(**t)
    return _analytic(direction, n, c, s, g, cl, elem, sms, vec)


def candidates(direction: str, n: int, c: int, s: int, g: int, cl: bool, elem: int,
               bf16: bool = False, arch: str = "cpu", sms: int = 132):
    """Tuning sweep (<= 8): the heuristic's choice, the analytic one, then the persistent
    grid (NCHW) or the chunks per sample (channels_last), and the other tiles that fit."""
    h = group_norm_config(direction, n, c, s, g, cl, elem, bf16, arch, sms)
    a = _analytic(direction, n, c, s, g, cl, elem, sms)
    out = [h, a]
    cg = c // g
    if cl:
        step = h.unroll * h.block_s
        for f in (2, 4):
            for sp in (h.split // f, h.split * f):
                if 1 <= sp and (sp - 1) * step < s:
                    out.append(replace(h, split=chunk_and_split(s, step, sp)[1]))
    elif h.split > 1:
        step = h.unroll * h.block_s
        for sp in (h.split // 2, h.split * 2, h.split * 4):
            if sp > 1 and (sp - 1) * step < s:
                out.append(replace(h, split=chunk_and_split(s, step, sp)[1]))
    else:
        for k in range(1, MAX_CTAS[direction] + 1):
            out.append(replace(h, ctas_per_sm=k))
        ranked = sorted(tiles(False, elem, direction=direction),
                        key=lambda t: _padded(cg, s, t))
        for t in ranked[:2]:
            out.append(replace(t, ctas_per_sm=h.ctas_per_sm))
    seen = []
    for cfg in out:
        if cfg not in seen:
            seen.append(cfg)
    return seen[:8]


# ---------------------------------------------------------------- dweight / dbias sums
@dataclass(frozen=True)
class SumConfig:
    block_p: int
    block_n: int
    num_warps: int


# (N * chunks, C) partials, a few hundred rows at most: 64-row steps, 32-column programs
SUM_CONFIG = SumConfig(block_p=64, block_n=32, num_warps=4)
