"""Launch heuristic for the Triton GroupNorm kernels: pure Python, no device queries.

A group (n, g) is a (Cg channels) x (S spatial positions) tile set; kernels walk it in tiles of
(block_c, block_s).  Only a few tile shapes exist, so the set of compiled variants stays small
(every constexpr value is a recompile) and ``group_norm.compile_variants`` can list them all.
"""
import functools
from dataclasses import dataclass

from fusednorm.kernels._util import cdiv as _cdiv

# Tile shapes (block_c, block_s), 1024 elements each (4 warps: 8 elements a thread).
# NCHW reads along s (contiguous), so a single-channel tile is allowed there (InstanceNorm);
# channels_last reads along c, so its tiles are at least 8 channels wide (32 B fp32 runs).
TILES_NCHW = ((1, 1024), (8, 128), (64, 16))
TILES_CHANNELS_LAST = ((8, 128), (64, 16))
NUM_WARPS = 4
# Enough programs to fill a large GPU a few times over (132 SMs x ~8 resident programs).
TARGET_PROGRAMS = 1024
# A split program walks at least this many s-tiles: below that the merge overhead dominates.
MIN_TILES_PER_SPLIT = 4
MAX_SPLIT = 65535  # grid dimension 1 limit


@dataclass(frozen=True)
class GroupNormConfig:
    block_c: int
    block_s: int
    num_warps: int = NUM_WARPS
    # Programs per group along the spatial axis.  1: one fused kernel per group; > 1: partial
    # statistics per chunk merged with Chan's formula (forward) or summed (backward).
    split: int = 1



def tiles(channels_last: bool):
    return TILES_CHANNELS_LAST if channels_last else TILES_NCHW


@functools.lru_cache(maxsize=1024)
def group_norm_config(rows: int, cg: int, s: int, channels_last: bool) -> GroupNormConfig:
    """Tile and split for ``rows`` = N*G groups of ``cg`` channels x ``s`` positions.

    Tile: the one with the fewest padded (masked) lanes, ties to the first listed.  Split: when
    the groups alone give fewer than TARGET_PROGRAMS programs and a group spans many tiles
    (video VAEs: a few groups of millions of elements), cut the spatial axis into chunks.
    """
    def padded(t):
        return _cdiv(cg, t[0]) * t[0] * _cdiv(s, t[1]) * t[1]

    block_c, block_s = min(tiles(channels_last), key=padded)
    split = 1
    if rows < TARGET_PROGRAMS:
        split = max(1, min(_cdiv(TARGET_PROGRAMS, max(rows, 1)),
                           s // (block_s * MIN_TILES_PER_SPLIT), MAX_SPLIT))
    return GroupNormConfig(block_c=block_c, block_s=block_s, split=split)


def chunk_and_split(s: int, block_s: int, split: int):
    """Spatial chunk (a multiple of block_s) per program and the resulting number of chunks."""
    chunk = _cdiv(_cdiv(s, max(split, 1)), block_s) * block_s
    return chunk, max(1, _cdiv(s, chunk))
