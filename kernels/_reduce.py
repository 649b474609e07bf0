"""Shared Triton reduction helpers for the norm kernels.

Everything here is generic over what is being normalized: the Chan merge of two (count, mean,
M2) summaries, and the second step of a deterministic weight gradient (column sums of
per-program fp32 partials, in a fixed order).
"""
import torch
import triton
import triton.language as tl

from fusednorm.kernels._util import cdiv as _cdiv


@triton.jit
def chan_combine(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge two (count, mean, M2) summaries (Chan et al.): exact in exact arithmetic and,
    unlike summing x and x^2, stable when |mean| >> std.  n_a may be 0 (empty summary)."""
    n = n_a + n_b
    delta = mean_b - mean_a
    frac_b = n_b / n
    mean = mean_a + delta * frac_b
    m2 = m2_a + m2_b + delta * delta * n_a * frac_b
    return n, mean, m2


@triton.jit
def _column_sums(PART, OUT, P, N, block, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """OUT[cols] = sum_p PART[p, cols] for the BLOCK_N columns of ``block``: per-thread
    (BLOCK_P, BLOCK_N) accumulators over the rows in a fixed order, one reduction at the end,
    so the result is bitwise the same on every run (no atomics)."""
    cols = block * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    col_mask = cols < N
    rows = tl.arange(0, BLOCK_P)[:, None]
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        r = p0 + rows
        # int64: P * N can pass 2^31 for wide rows and many programs
        acc += tl.load(PART + r.to(tl.int64) * N + cols, mask=(r < P) & col_mask, other=0.0)
    tl.store(OUT + cols, tl.sum(acc, axis=0, keep_dims=True).to(OUT.dtype.element_ty),
             mask=col_mask)


@triton.jit
def sum_partials_kernel(
    PART_A, OUT_A,  # (P, N) fp32 partials -> (N,) column sums in OUT_A's dtype (HAS_A)
    PART_B, OUT_B,  # a second pair summed by the same launch (HAS_B), e.g. dweight and dbias
    P, N,           # runtime sizes
    HAS_A: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Column sums of one or two partial buffers: programs [0, nb) sum A's column blocks,
    [nb, 2 nb) B's (nb = cdiv(N, BLOCK_N)), so narrow blocks give enough programs to fill the
    GPU even for one short buffer."""
    pid = tl.program_id(0)
    if HAS_A and HAS_B:
        nb = tl.cdiv(N, BLOCK_N)
        if pid < nb:
            _column_sums(PART_A, OUT_A, P, N, pid, BLOCK_P, BLOCK_N)
        else:
            _column_sums(PART_B, OUT_B, P, N, pid - nb, BLOCK_P, BLOCK_N)
    elif HAS_A:
        _column_sums(PART_A, OUT_A, P, N, pid, BLOCK_P, BLOCK_N)
    else:
        _column_sums(PART_B, OUT_B, P, N, pid, BLOCK_P, BLOCK_N)


def sum_partials(part_a, like_a, part_b, like_b, block_p, block_n, num_warps):
    """Column sums of one or two (P, N) fp32 partial buffers (None for an absent one) in one
    launch of (number of buffers) x cdiv(N, block_n) programs; -> (sums_a or None, sums_b or
    None), each shaped and typed like the dense (N,) tensor ``like_a`` / ``like_b`` (the
    parameter whose gradient it is)."""
    part = part_a if part_a is not None else part_b
    P, N = part.shape
    out_a = None if part_a is None else torch.empty_like(like_a)
    out_b = None if part_b is None else torch.empty_like(like_b)
    n_out = (part_a is not None) + (part_b is not None)
    # constexprs passed positionally: cheaper per launch than keywords
    sum_partials_kernel[(n_out * _cdiv(N, block_n),)](
        part, out_a if out_a is not None else part, part_b if part_b is not None else part,
        out_b if out_b is not None else part, P, N, part_a is not None, part_b is not None,
        block_p, block_n, num_warps=num_warps)
    return out_a, out_b
