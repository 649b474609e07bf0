"""Launch heuristic for the Triton BatchNorm kernels: pure Python, no device queries.

Kernels walk the (M = N*spatial) x C matrix of one batch in (block_m, block_c) tiles; a
program owns block_c channels and one chunk of M.  A few tile shapes only, so the compiled
variants stay few and ``batch_norm.compile_variants`` lists them all.
"""
import functools
from dataclasses import dataclass

from fusednorm.kernels._util import cdiv as _cdiv

# (block_m, block_c), 1024 elements each.  channels_last reads rows of C contiguous channels;
# NCHW reads along m (contiguous within one (n, c) plane of S positions).
TILES_NCHW = ((512, 2), (128, 8))
TILES_CHANNELS_LAST = ((128, 8), (32, 32))
NUM_WARPS = 4
TARGET_PROGRAMS = 1024     # fill a large GPU a few times over
MIN_TILES_PER_SPLIT = 4    # fewer tiles a program and the partials cost more than they save
MAX_SPLIT = 65535          # grid dimension 1 limit
# Merge kernel: BLOCK_K partials x MERGE_BLOCK_C channels per step (fixed, not tuned).
MERGE_BLOCK_K = 16
MERGE_BLOCK_C = 32


@dataclass(frozen=True)
class BatchNormConfig:
    block_m: int
    block_c: int
    num_warps: int = NUM_WARPS
    # chunks of M per channel block: per-chunk statistics merged with Chan's formula
    split: int = 1



def tiles(channels_last: bool):
    return TILES_CHANNELS_LAST if channels_last else TILES_NCHW


@functools.lru_cache(maxsize=1024)
def batch_norm_config(m: int, c: int, channels_last: bool) -> BatchNormConfig:
    """Tile with the fewest padded lanes (ties to the first); split M until the grid has
    about TARGET_PROGRAMS programs, keeping at least MIN_TILES_PER_SPLIT tiles each."""
    def padded(t):
        return _cdiv(m, t[0]) * t[0] * _cdiv(c, t[1]) * t[1]

    block_m, block_c = min(tiles(channels_last), key=padded)
    c_blocks = _cdiv(c, block_c)
    split = max(1, min(_cdiv(TARGET_PROGRAMS, c_blocks), m // (block_m * MIN_TILES_PER_SPLIT),
                       MAX_SPLIT))
    return BatchNormConfig(block_m=block_m, block_c=block_c, split=split)


def chunk_and_split(m: int, block_m: int, split: int):
    """Chunk of M (a multiple of block_m) per program and the resulting number of chunks."""
    chunk = _cdiv(_cdiv(max(m, 1), max(split, 1)), block_m) * block_m
    return chunk, max(1, _cdiv(m, chunk))
