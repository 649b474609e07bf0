"""Launch heuristics for the Triton row kernels (LayerNorm, RMSNorm, InstanceNorm planes) and
the column-sum step: the tuned table first (kernels/_tuning.py, measured by bench/tune.py),
then an analytic rule.  Pure Python, no device queries; every answer is cached on its shape key.

Tiles are (R, BLOCK_M, TILE_C) (see kernels/layer_norm.py): a row of BLOCK_N = R * TILE_C
columns, TILE_C spanned by the threads of a warp group (16 bytes each), R register repeats.
Triton puts the warps on the TILE_C axis first, then on the rows, so with TILE_C = 32 lanes *
16 B * warps_per_row every row lives in its own warp group: row reductions need no barrier
when a warp owns a row, and rows in one thread (BLOCK_M > warps / warps_per_row) cost nothing.
"""
import functools
from dataclasses import dataclass

import torch

from ._tuning import arch_of, lookup

# Widest rows a forward program keeps whole in registers (~32 elements a thread at 16 warps);
# wider rows take the looped kernel (statistics pass, then a normalize pass re-reading L2).
FWD_MAX_N = {2: 16384, 4: 8192}
# InstanceNorm planes (no residual, scalar affine): fp32 rows of 16384 fit too (63 registers
# at 16 warps on sm_90, 2 CTAs per SM, 128 KB in flight), so the IN benchmark plane (S =
# 16384) is read once in fp32 as well; LayerNorm's fp32 16384 with a residual takes 80
# registers (1 CTA per SM: nothing in flight during the reductions) and stays looped.
FWD_MAX_N_ROW_AFFINE = {2: 16384, 4: 16384}
# Backward: widest row one program keeps in registers with the next row prefetched (x, dy,
# w, the dw/db partials and the prefetched x, dy: ~5 registers an element on top of ~50, at
# most 128 a thread: see max_registers); up to twice that a row is split over 2 programs;
# wider rows take the looped backward.
BWD_MAX_N = {2: 8192, 4: 4096}
# InstanceNorm planes carry no per-column parameters or partials: half the registers.
BWD_MAX_N_ROW_AFFINE = {2: 16384, 4: 8192}
MIN_BLOCK_N = 256  # narrower rows are masked: fewer compiled variants
# Rows that cannot take 16-byte loads (row_aligned): widest row kept in registers.
UNALIGNED_MAX_N = 4096
MAX_WARPS = 16


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _dtype_name(dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(
        dtype, str(dtype).split(".")[-1])


@functools.lru_cache(maxsize=64)
def device_arch(device) -> str:
    """"sm90"-style arch of a device (cached: one dict lookup per launch)."""
    return arch_of(device)


# ------------------------------------------------------------------------------ forward
@dataclass(frozen=True)
class FwdConfig:
    block_n: int      # one_pass: pow2 >= N; looped: columns per chunk
    tile_c: int       # columns one warp group spans (block_n // tile_c repeats a thread)
    block_m: int      # rows per program (one_pass; the looped kernel does 1)
    num_warps: int
    one_pass: bool


def _tile_c(block_n: int, elem: int, warps_per_row: int) -> int:
    return min(block_n, 32 * (16 // elem) * warps_per_row)


def _fwd_analytic(n: int, elem: int, aligned: bool = True,
                  row_affine: bool = False) -> FwdConfig:
    vec = 16 // elem
    block_n = max(MIN_BLOCK_N, _next_pow2(n))
    limit = (FWD_MAX_N_ROW_AFFINE if row_affine else FWD_MAX_N).get(elem, 8192)
    if aligned and n <= limit:
        # a warp per 1024 columns: ~32 elements (2-8 x 16-B loads) a thread, all in flight
        # before the first reduction; short rows share a program, one warp each
        wpr = min(MAX_WARPS, max(1, block_n // 1024))
        num_warps = max(4, wpr)
        block_m = (num_warps // wpr) * max(1, 1024 // block_n)
        return FwdConfig(block_n, _tile_c(block_n, elem, wpr), block_m, num_warps, True)
    if not aligned and block_n <= UNALIGNED_MAX_N:
        # rows whose start or length is not a multiple of 16 elements load element by
        # element, each load with its own address: 16 a thread keep them in registers
        wpr = min(8, max(1, block_n // 512))
        num_warps = max(4, wpr)
        block_m = (num_warps // wpr) * max(1, 512 // block_n)
        return FwdConfig(block_n, _tile_c(block_n, elem, wpr), block_m, num_warps, True)
    # looped: 16 warps, 4 x 16 B a thread per chunk (unaligned: 16 elements)
    tile_c = 32 * vec * 16
    return FwdConfig(4 * tile_c if aligned else 8192, tile_c, 1, 16, False)


def row_aligned(n: int, row_stride: int) -> bool:
    """Whether the launch vectorizes: Triton specializes an int argument as divisible by 16
    or not, so rows get 16-byte loads when both the length and the row stride are
    multiples of 16 elements."""
    return n % 16 == 0 and row_stride % 16 == 0


@functools.lru_cache(maxsize=1024)
def fwd_config(n: int, dtype: torch.dtype, kind: str = "ln", arch: str = "cpu",
               aligned: bool = True) -> FwdConfig:
    """Forward tile for rows of ``n`` elements.  kind: "ln" / "rms" (family layer_norm_fwd,
    key "<dtype>|<n>|<kind>") or "in" (instance_norm_fwd, key "<dtype>|<n>").  aligned:
    ``row_aligned`` of the launch (the table holds aligned shapes only)."""
    if n < 1:
        raise ValueError(f"fwd_config: n={n} must be >= 1")
    if aligned and n % 16 == 0:
        fam, key = _family("fwd", n, dtype, kind)
        t = lookup(fam, arch, key)
        if t is not None:
            return FwdConfig(**t)
    return _fwd_analytic(n, dtype.itemsize, aligned and n % 16 == 0, kind == "in")


def fwd_candidates(n: int, dtype: torch.dtype, kind: str = "ln", arch: str = "cpu"):
    """Tuning sweep: the heuristic's choice, then warps / rows per program around it."""
    h = fwd_config(n, dtype, kind, arch)
    a = _fwd_analytic(n, dtype.itemsize, True, kind == "in")
    out = [h, a]
    elem = dtype.itemsize
    if h.one_pass and n > FWD_MAX_N.get(elem, 8192):
        # an InstanceNorm plane past LayerNorm's limit: one read vs the looped re-read (L2)
        out.append(_fwd_analytic(n, elem, True, False))
    if h.one_pass:
        wpr0 = max(1, h.tile_c // (32 * (16 // elem)))
        for wpr in (wpr0 // 2, wpr0 * 2):
            if wpr < 1 or wpr > MAX_WARPS or 32 * (16 // elem) * wpr > h.block_n * 2:
                continue
            tile_c = _tile_c(h.block_n, elem, wpr)
            for rows in (1, 2, 4):
                nw = wpr * rows
                if 4 <= nw <= MAX_WARPS:
                    out.append(FwdConfig(h.block_n, tile_c, rows, nw, True))
        out.append(FwdConfig(h.block_n, h.tile_c, h.block_m * 2, h.num_warps, True))
        # 16 warps get 128 registers a thread: more than 32 elements spill (compiled: 64
        # bf16 at BLOCK_N 16384 x 2 rows, 64 fp32 at 8192 x 4 rows)
        out = [c for c in out if c.num_warps < 16 or c.block_n * c.block_m <= 32 * 32 * 16]
    else:
        out.append(FwdConfig(h.block_n // 2, h.tile_c, 1, 16, False))
        out.append(FwdConfig(h.block_n // 2, h.tile_c // 2, 1, 8, False))
    return _dedup(out)[:8]


# ----------------------------------------------------------------------------- backward
@dataclass(frozen=True)
class BwdConfig:
    block_n: int      # one_pass: columns a program owns (pow2; split * block_n >= N);
                      # looped: columns per chunk
    tile_c: int
    block_m: int      # rows per tile
    num_warps: int
    one_pass: bool
    split: int        # programs sharing a row (one_pass; each owns block_n columns of it)
    prefetch: bool    # the next tile's loads issued before this tile's reductions
    ctas_per_sm: int  # persistent grid = SMs x ctas_per_sm programs (at most the tiles)


def _bwd_analytic(n: int, elem: int, row_affine: bool, aligned: bool = True) -> BwdConfig:
    vec = 16 // elem
    limit = (BWD_MAX_N_ROW_AFFINE if row_affine else BWD_MAX_N).get(elem, 4096)
    # elements a thread per tensor: x, dy, w, the dw/db partials and the prefetched x, dy
    # take ~5 registers each on top of ~50 of addresses and row state, so 16 (16-bit) / 8
    # (fp32) fill the 128 registers of 2 x 8 or 1 x 16 warps per SM; InstanceNorm planes
    # have no column parameters or partials: twice as many
    per_thread = (32 if elem <= 2 else 16) if row_affine else (16 if elem <= 2 else 8)
    block_n = max(MIN_BLOCK_N, _next_pow2(n))
    split, prefetch = 1, True
    if not aligned:
        # element-wise loads, an address each: 8 a thread, no prefetch
        per_thread, prefetch, limit = 8, False, UNALIGNED_MAX_N
    elif block_n > limit and not row_affine and block_n <= 2 * limit:
        # two programs per row, each keeping half of it; their loads of the other half are
        # issued with their own (no registers left to prefetch the next row)
        split, prefetch, block_n = 2, False, block_n // 2
    if block_n <= limit:
        wpr = min(MAX_WARPS, max(1, block_n // (32 * per_thread)))
        num_warps = max(8, wpr)
        # short rows: one per warp group, and a second one in each thread (LN; InstanceNorm
        # planes carry three per-row scalars a row, prefetched: one row a thread)
        block_m = (num_warps // wpr) * min(1 if row_affine else 2,
                                           max(1, (32 * per_thread) // block_n))
        return BwdConfig(block_n, _tile_c(block_n, elem, wpr), block_m, num_warps, True, split,
                         prefetch, 16 // num_warps)
    return _looped_bwd(n, elem, row_affine, aligned)


def _looped_bwd(n: int, elem: int, row_affine: bool, aligned: bool = True) -> BwdConfig:
    """Tiles of block_m rows held by each thread (tile_c = the CTA's lanes x 16 B) x chunks:
    a sums pass, then a dx pass re-reading the tile, which must still be in L2: the programs'
    tiles together (programs x block_m x 2 tensors x row bytes) stay near 34 MB of the 50 MB
    for rows up to 64 KB.  LayerNorm: 2 rows a tile (dw/db partial rows updated once per 2
    rows, not per row), one 16-warp program per SM; InstanceNorm planes have no partial rows:
    one a tile, two vectors a chunk, two programs per SM."""
    tile_c = 32 * (16 // elem) * 16
    if row_affine:
        return BwdConfig(2 * tile_c, tile_c, 1, 16, False, 1, False, 2)
    block_m = 2 if aligned and n * elem <= 65536 else 1
    return BwdConfig(tile_c, tile_c, block_m, 16, False, 1, False, 1)


def max_registers(num_warps: int) -> int:
    """Register cap of a backward launch (ptxas maxnreg): 16 warps' worth of the register
    file (128 a thread), so that 2 x 8 or 1 x 16 warps stay resident per SM whatever the
    parameter dtype and flags (ptxas would otherwise take up to 255 and halve them).  Every
    variant compiles without spills at this cap (tests/test_triton_layer_norm.py)."""
    return 65536 // (32 * max(16, num_warps))


@functools.lru_cache(maxsize=1024)
def bwd_config(n: int, dtype: torch.dtype, kind: str = "ln", arch: str = "cpu",
               aligned: bool = True) -> BwdConfig:
    """Backward tile and persistent grid for rows of ``n`` elements (kind and aligned as in
    fwd_config)."""
    if n < 1:
        raise ValueError(f"bwd_config: n={n} must be >= 1")
    if aligned and n % 16 == 0:
        fam, key = _family("bwd", n, dtype, kind)
        t = lookup(fam, arch, key)
        if t is not None:
            return BwdConfig(**t)
    return _bwd_analytic(n, dtype.itemsize, kind == "in", aligned and n % 16 == 0)


def bwd_candidates(n: int, dtype: torch.dtype, kind: str = "ln", arch: str = "cpu"):
    """Tuning sweep: the heuristic's choice; programs per SM; prefetch on/off; warps."""
    from dataclasses import replace
    h = bwd_config(n, dtype, kind, arch)
    a = _bwd_analytic(n, dtype.itemsize, kind == "in")
    out = [h, a]
    if kind == "in" and not h.one_pass and _next_pow2(n) <= 32 * 32 * MAX_WARPS:
        # an fp32 plane of up to 16384: one read with 32 elements a thread and no prefetch
        # (128 registers, no spill) against the looped kernel's re-read from L2
        block_n = max(MIN_BLOCK_N, _next_pow2(n))
        wpr = min(MAX_WARPS, max(1, block_n // 1024))
        out.append(BwdConfig(block_n, _tile_c(block_n, dtype.itemsize, wpr), 1, max(8, wpr),
                             True, 1, False, 1))
    for c in (1, 2, 3, 4):
        if c != h.ctas_per_sm:
            out.append(replace(h, ctas_per_sm=c))
    if h.one_pass:
        if h.split == 1:  # (a split row's program has no registers left to prefetch)
            out.append(replace(h, prefetch=not h.prefetch))
        if h.split == 2:  # the looped kernel is the alternative for split rows
            out.append(_looped_bwd(n, dtype.itemsize, False))
        if h.block_m > 1 and h.num_warps >= 16:
            # (fewer than 8 warps at the 128-register cap spill: 1024 bf16, 2 rows, 4 warps)
            out.append(replace(h, block_m=h.block_m // 2, num_warps=h.num_warps // 2))
    else:
        out.append(replace(h, block_m=max(1, h.block_m // 2)))
        # taller tiles while a thread holds <= 16 elements a tensor per chunk (4 bf16 rows
        # of 8 spill; 4 fp32 rows of 4, the 4-row tiles of 16K-wide rows, fit)
        if 2 * h.block_m * (h.block_n // h.tile_c) * (16 // dtype.itemsize) <= 16:
            out.append(replace(h, block_m=h.block_m * 2))
    return _dedup(out)[:8]


# --------------------------------------------------------------------------- column sums
@dataclass(frozen=True)
class PartialsSumConfig:
    block_p: int      # partial rows per loop step
    block_n: int      # columns per program
    num_warps: int


# >= 132 programs (one wave on an H100/H200 has 132 SMs) even for one short partial buffer
MIN_SUM_PROGRAMS = 132
SUM_TILE = 2048  # elements a step (4 warps: 16 a thread, 4 x 16-B loads in flight)


def _sum_config(block_n: int) -> PartialsSumConfig:
    return PartialsSumConfig(block_p=min(256, SUM_TILE // block_n), block_n=block_n,
                             num_warps=4)


@functools.lru_cache(maxsize=1024)
def partials_sum_config(p: int, n: int, n_out: int = 1, arch: str = "cpu") -> PartialsSumConfig:
    """Tile of the column sums of ``n_out`` (p, n) fp32 partial buffers in one launch:
    columns per program as wide as allows >= MIN_SUM_PROGRAMS programs in all (4..256).
    ``p`` does not change the answer (each program walks every partial row)."""
    t = lookup("layer_norm_colsum", arch, f"{n}|{n_out}")
    if t is not None:
        return PartialsSumConfig(**t)
    block_n = 256
    if arch == "cpu":  # the interpreter runs programs one after another: the fewest
        return _sum_config(block_n)
    while block_n > 4 and n_out * -(-n // block_n) < MIN_SUM_PROGRAMS:
        block_n //= 2
    return _sum_config(block_n)


def sum_candidates(p: int, n: int, n_out: int = 1, arch: str = "cpu"):
    h = partials_sum_config(p, n, n_out, arch)
    out = [h] + [_sum_config(b) for b in (h.block_n // 2, h.block_n * 2, h.block_n * 4)
                 if 4 <= b <= 256]
    return _dedup(out)


def all_partials_sum_configs():
    """Every config partials_sum_config can return (compile checks)."""
    return [_sum_config(1 << k) for k in range(2, 9)]


# ---------------------------------------------------------------------------------- util
def _family(pass_: str, n: int, dtype, kind: str):
    if kind == "in":
        return f"instance_norm_{pass_}", f"{_dtype_name(dtype)}|{n}"
    return f"layer_norm_{pass_}", f"{_dtype_name(dtype)}|{n}|{kind}"


def _dedup(configs):
    out = []
    for c in configs:
        if c not in out:
            out.append(c)
    return out


def analytic_sizes(elem: int):
    """Row widths whose analytic configs cover every one the heuristics return for element
    size ``elem`` (each pow2 width from MIN_BLOCK_N to past the looped limits; all are
    multiples of 16, so aligned and unaligned configs come from the same widths)."""
    top = 4 * max(FWD_MAX_N_ROW_AFFINE.get(elem, 8192), BWD_MAX_N_ROW_AFFINE.get(elem, 8192))
    sizes, n = [], MIN_BLOCK_N
    while n <= top:
        sizes.append(n)
        n *= 2
    return sizes
