"""Launch heuristic for the Triton LayerNorm/RMSNorm kernels: one analytical function, no
autotuning (which needs a GPU driver to import or test).  Pure Python, no device queries."""
import functools
from dataclasses import dataclass

import torch

# Widest row kept whole in registers.  The one-pass backward holds about six fp32 row-sized
# values per thread (x, dy, w, xhat, dw/db accumulators) plus their 64-bit addresses; at
# 8192 columns and 16 warps it reached the 128-register cap of a 512-thread program and
# spilled (sm_90), at 4096 it stays near 80.
MAX_ONE_PASS_N = 4096
# Chunk width of the looped kernels (rows wider than MAX_ONE_PASS_N).
LOOPED_BLOCK_N = 4096
# Smallest tile: narrower rows are masked.  Keeps the set of compiled variants small (every
# block size is a recompile) at the cost of idle lanes for tiny hidden sizes.
MIN_BLOCK_N = 256


@dataclass(frozen=True)
class LayerNormConfig:
    block_n: int      # columns per tile: the whole row (one_pass) or one chunk (looped)
    num_warps: int
    one_pass: bool    # True: row in registers; False: loop over chunks of block_n
    ctas_per_sm: int  # backward: programs per SM, each owning a block of rows


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=1024)
def layer_norm_config(n: int, dtype: torch.dtype) -> LayerNormConfig:
    """Block size, warps and kernel choice for rows of ``n`` elements of ``dtype``.

    One-pass: warps grow with the bytes of a tile, ~512 B per warp (16 B per thread: one
    vector load for every dtype), between 4 (latency hiding for short rows) and 16.  At
    1 KiB per warp the 16-bit backward needed 150-200 registers (low occupancy).
    Looped: always 16 warps; the looped backward keeps ~7 chunk-sized values and their 64-bit
    addresses live, which at 8 warps hit the register cap for 16-bit dtypes.
    """
    if n < 1:
        raise ValueError(f"layer_norm_config: n={n} must be >= 1")
    elem = dtype.itemsize
    one_pass = n <= MAX_ONE_PASS_N
    block_n = max(MIN_BLOCK_N, _next_pow2(n)) if one_pass else LOOPED_BLOCK_N
    num_warps = min(16, max(4, _next_pow2(block_n * elem // 512))) if one_pass else 16
    ctas_per_sm = max(1, 16 // num_warps)
    return LayerNormConfig(block_n=block_n, num_warps=num_warps, one_pass=one_pass,
                           ctas_per_sm=ctas_per_sm)


def all_configs(dtype: torch.dtype):
    """Every distinct config layer_norm_config can return for ``dtype`` (for compile checks)."""
    sizes, n = [], MIN_BLOCK_N
    while n <= MAX_ONE_PASS_N:
        sizes.append(n)
        n *= 2
    sizes.append(MAX_ONE_PASS_N + 1)
    seen = []
    for n in sizes:
        cfg = layer_norm_config(n, dtype)
        if cfg not in seen:
            seen.append(cfg)
    return seen


@dataclass(frozen=True)
class PartialsSumConfig:
    block_p: int      # partial rows per loop step
    block_n: int      # columns per program
    num_warps: int


# (P > 16): tall partials, narrow column tiles for more programs; (P <= 16): a few partial
# rows, wide tiles so that huge N does not mean thousands of tiny programs.
_SUM_TALL = PartialsSumConfig(block_p=16, block_n=256, num_warps=4)
_SUM_SHORT = PartialsSumConfig(block_p=2, block_n=2048, num_warps=4)


@functools.lru_cache(maxsize=1024)
def partials_sum_config(p: int, n: int) -> PartialsSumConfig:
    """Tile of the second reduction step (column sums of a (p, n) fp32 partial buffer)."""
    return _SUM_TALL if p > 16 else _SUM_SHORT


def all_partials_sum_configs():
    return [_SUM_TALL, _SUM_SHORT]
