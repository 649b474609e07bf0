"""Launch heuristic for the Triton BatchNorm kernels: pure Python, no device queries.

x is read in tiles of 16 KB (8 warps x 32 threads x four 16-byte loads):
    channels_last and (N, C): (block_m rows, block_c channels) of the M x C matrix, rows of C
                              contiguous channels (block_s = 1)
    NCHW:                     (block_m samples, block_c channels, block_s positions), planes of
                              S contiguous positions
A program owns one block of channels.  Reduce kernels (training statistics, backward sums)
cut the tiles of a channel block into ``programs`` contiguous chunks, each writing one fp32
partial per channel; streaming kernels (normalize, dx) are persistent: ``programs`` per channel
block stride over its tiles with the per-channel coefficients in registers.  Both grids are
sized to one wave of resident CTAs (RESIDENT per SM, checked against the compiled register
counts by tests/test_triton_batch_norm.py), so no tail wave runs with a fraction of the bytes
in flight.

The tile menu is small and fixed, so ``batch_norm.compile_variants`` lists every variant a
configuration can choose; a tuned table (kernels/_tuning.py) may pick another tile of the menu
or another program count for the exact benchmark shapes.
"""
import functools
from dataclasses import dataclass

from fusednorm.kernels._tuning import lookup
from fusednorm.kernels._util import cdiv as _cdiv

TILE_BYTES = 16384
NUM_WARPS = 8
# channels_last: whole rows up to 256 channels (a warp reads 512 contiguous bytes of a
# 16-bit row), or 64 channels (128-256 contiguous bytes: full cache lines) for C <= 64 and
# for the backward (see BWD_BLOCK_C).
CL_BLOCK_C = (64, 256)
# NCHW (block_c, block_s): 1 channel x 1024-position plane chunks, or 16 channels x 64
# (128-256 contiguous bytes per plane row).  The heuristic takes the one that pads less:
# 16 x 64 for S = 784 (94% of the lanes busy, 77% with 1024-wide chunks), 3136, 196, 49;
# 1 x 1024 for C < 16 or S a multiple of 1024.
NCHW_SHAPES = ((1, 1024), (16, 64))
# Resident CTAs per SM each kernel is built for, at NUM_WARPS warps (register budget:
# 65536 / (RESIDENT * 256 threads)), and the loads in flight per SM that gives:
#   stats: two tiles of x per iteration (half-tile accumulators)  2 x 32 KB  (<= 128 regs)
#   sums:  one tile of x and one of dy (half-tile accumulators)   2 x 32 KB  (<= 128 regs)
#   apply: one tile of x                                          3 x 16 KB  (<= 85 regs;
#          4 fit at 64 registers, the sm_90 count for whole 16-bit rows -- on the edge,
#          so the default does not count on it; the tuner may)
#   dx:    one tile of x and one of dy                            2 x 32 KB  (<= 128 regs)
# Where 16 does not divide the contiguous run (C in rows, S in planes) the loads are narrow,
# one address per element, and every kernel needs > 128 registers: one CTA per SM.
RESIDENT = {"stats": 2, "sums": 2, "apply": 3, "dx": 2}
RESIDENT_NARROW = 1
MAX_GRID_Y = 65535
# The merge kernel (fixed, not tuned): MERGE_BLOCK_K partials x MERGE_BLOCK_C channels per
# step, so up to 512 partials are summed in one step of loads.
MERGE_BLOCK_K = 512
MERGE_BLOCK_C = 8
MERGE_WARPS = 8
# dx programs sum the backward partials of their channels before their tiles, as rows of
# >= 4 channels (16-byte loads; a 1-channel NCHW block reads its aligned group of 4) in steps
# of DX_PART_ELEMS partials.  The backward's narrow channel blocks keep that read small.
DX_PART_ELEMS = 4096
# SMs assumed where there is no GPU (interpreter runs): few programs, short interpreted runs.
CPU_SMS = 4


def dx_group(block_c: int) -> int:
    """Channels per row of the dx kernel's partial loads: the block, at least 4."""
    return max(block_c, 4)


@dataclass(frozen=True)
class TileConfig:
    """One kernel's launch: its tile, warps and programs per channel block (reduce kernels:
    chunks of the block's tiles, one partial each; streaming kernels: persistent programs)."""
    block_m: int
    block_c: int
    block_s: int = 1
    num_warps: int = NUM_WARPS
    programs: int = 1


@dataclass(frozen=True)
class BatchNormConfig:
    """A launcher's configuration: ``reduce`` for the statistics (forward) or sums (backward)
    kernel, ``stream`` for the normalize (forward) or dx (backward) kernel."""
    reduce: TileConfig
    stream: TileConfig


def tile_elems(itemsize: int) -> int:
    return TILE_BYTES // itemsize


def tiles(channels_last: bool, itemsize: int):
    """The menu: every (block_m, block_c, block_s) a configuration may use."""
    e = tile_elems(itemsize)
    if channels_last:
        return tuple((e // bc, bc, 1) for bc in CL_BLOCK_C)
    return tuple((e // (bc * bs), bc, bs) for bc, bs in NCHW_SHAPES)


def _pick_tile(C: int, S: int, channels_last: bool, itemsize: int):
    """The menu tile with the fewest padded lanes (ties: the wider channel block in rows, the
    first menu entry in planes)."""
    menu = tiles(channels_last, itemsize)
    if channels_last:
        return min(menu, key=lambda t: (_cdiv(C, t[1]) * t[1], -t[1]))
    return min(menu, key=lambda t: (_cdiv(C, t[1]) * t[1] * _cdiv(S, t[2]) * t[2]))


# channels_last backward channel block: 64 (128-256 contiguous bytes per row, full cache
# lines).  Each dx program first reads (sums programs / channel blocks) x block_c partials of
# its channels: with whole 256-channel rows that is 540 KB per program for C = 256 on 132
# SMs (264 sums programs), with 64 channels 34 KB.  (Whole rows would need a separate
# finalize launch; the backward is two launches, tests/test_paths.py.)
BWD_BLOCK_C = 64


def n_tiles(N: int, C: int, S: int, channels_last: bool, tile) -> int:
    """Tiles of one channel block."""
    bm, _, bs = tile
    if channels_last:
        return _cdiv(N * S, bm)
    return _cdiv(N, bm) * _cdiv(S, bs)


def resident(kind, C, S, channels_last) -> int:
    """CTAs per SM the kernel is sized for (see RESIDENT)."""
    return RESIDENT[kind] if (C if channels_last else S) % 16 == 0 else RESIDENT_NARROW


def _programs(kind, tile, N, C, S, channels_last, sms):
    """Programs per channel block for one wave of resident CTAs (at least one per channel
    block, at most one per tile)."""
    c_blocks = _cdiv(C, tile[1])
    target = sms * resident(kind, C, S, channels_last)
    tiles_ = n_tiles(N, C, S, channels_last, tile)
    return max(1, min(target // c_blocks, tiles_, MAX_GRID_Y))


def family(kind: str, channels_last: bool) -> str:
    """Tuned-table family names: batch_norm_{stats,apply,bwd_sums,bwd_dx}_{cl,nchw}."""
    name = {"stats": "stats", "apply": "apply", "sums": "bwd_sums", "dx": "bwd_dx"}[kind]
    return f"batch_norm_{name}_{'cl' if channels_last else 'nchw'}"


def table_key(dtype_name: str, N: int, C: int, S: int) -> str:
    return f"{dtype_name}|{N}x{C}x{S}"


def analytic(kind, N, C, S, channels_last, itemsize, sms) -> TileConfig:
    """The heuristic's own choice for one kernel."""
    if channels_last and kind in ("sums", "dx"):
        tile = next(t for t in tiles(True, itemsize) if t[1] == BWD_BLOCK_C)
    else:
        tile = _pick_tile(C, S, channels_last, itemsize)
    return TileConfig(tile[0], tile[1], tile[2], NUM_WARPS,
                      _programs(kind, tile, N, C, S, channels_last, sms))


@functools.lru_cache(maxsize=4096)
def kernel_config(kind, N, C, S, channels_last, dtype_name, itemsize, sms, arch) -> TileConfig:
    """The tuned table's entry for this exact shape when there is a valid one, else the
    analytic choice.  Cached: pure in its (hashable) arguments."""
    hit = lookup(family(kind, channels_last), arch, table_key(dtype_name, N, C, S))
    if hit is not None:
        try:
            cfg = TileConfig(**hit)
            validate(cfg, channels_last, itemsize, kind)
            return cfg
        except (TypeError, ValueError):  # a table from another menu: not a compiled variant
            pass
    return analytic(kind, N, C, S, channels_last, itemsize, sms)


def candidates(kind, N, C, S, channels_last, itemsize, sms):
    """What bench/tune.py times for one kernel (the analytic choice first, <= 8 in all):
    program counts for 1, 2, 3, 4, 6 CTAs per SM on the chosen tile, and the other menu
    tile at the default count."""
    first = analytic(kind, N, C, S, channels_last, itemsize, sms)
    tile = (first.block_m, first.block_c, first.block_s)
    c_blocks = _cdiv(C, first.block_c)
    tiles_ = n_tiles(N, C, S, channels_last, tile)
    out = [first]
    for per_sm in (1, 2, 3, 4, 6):
        p = max(1, min(sms * per_sm // c_blocks, tiles_, MAX_GRID_Y))
        out.append(TileConfig(*tile, NUM_WARPS, p))
    for t in tiles(channels_last, itemsize):
        if t != tile:
            out.append(TileConfig(*t, NUM_WARPS, _programs(kind, t, N, C, S, channels_last,
                                                           sms)))
    seen, uniq = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    return uniq[:8]


def validate(cfg: TileConfig, channels_last: bool, itemsize: int, kind: str):
    """A config= override must be a tile of the menu (the compiled variants) with programs >= 1."""
    if not isinstance(cfg, TileConfig):
        raise TypeError(f"batch_norm: config.{kind} must be a TileConfig, got {type(cfg).__name__}")
    menu = tiles(channels_last, itemsize)
    if (cfg.block_m, cfg.block_c, cfg.block_s) not in menu:
        raise ValueError(f"batch_norm: config tile ({cfg.block_m}, {cfg.block_c}, "
                         f"{cfg.block_s}) is not one of {menu} for channels_last="
                         f"{channels_last}, itemsize={itemsize}")
    if cfg.num_warps != NUM_WARPS:
        raise ValueError(f"batch_norm: config num_warps={cfg.num_warps}: the tiles are laid "
                         f"out for {NUM_WARPS} warps")
    if not 1 <= cfg.programs <= MAX_GRID_Y:
        raise ValueError(f"batch_norm: config programs={cfg.programs} must be in "
                         f"[1, {MAX_GRID_Y}]")
