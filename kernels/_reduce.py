"""Shared Triton reduction helpers for the norm kernels.

Everything here is generic over what is being normalized: statistics of a masked fp32 block,
the Chan merge of two (count, mean, M2) summaries, and the second step of a deterministic
weight gradient (column sums of per-program fp32 partials, in a fixed order).
"""
import torch
import triton
import triton.language as tl

from fusednorm.kernels._util import cdiv as _cdiv


@triton.jit
def masked_mean_m2(x, mask, count):
    """Mean and M2 = sum((x - mean)^2) of the ``count`` valid lanes of fp32 block ``x``.

    Two passes over values already in registers: subtracting the mean before squaring keeps
    the variance exact for offset data, where E[x^2] - E[x]^2 cancels catastrophically.
    Lanes outside ``mask`` must hold 0 on entry (the sum ignores them) and are zeroed in the
    centred values (they would otherwise contribute mean^2 each).
    """
    mean = tl.sum(x, axis=0) / count
    xc = tl.where(mask, x - mean, 0.0)
    m2 = tl.sum(xc * xc, axis=0)
    return mean, m2


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
def sum_partials_kernel(
    PART_A, OUT_A,  # (P, N) fp32 partials -> (N,) column sums in OUT_A's dtype (HAS_A)
    PART_B, OUT_B,  # a second pair summed by the same launch (HAS_B), e.g. dweight and dbias
    P, N,           # runtime sizes
    HAS_A: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """OUT[n] = sum_p PART[p, n] for one or two partial buffers.  Each program owns BLOCK_N
    columns and walks the P rows in a fixed order, so the result is bitwise the same on
    every run (no atomics)."""
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    rows = tl.arange(0, BLOCK_P)
    acc_a = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        r = p0 + rows
        # int64: P * N can pass 2^31 for wide rows and many programs
        offs = r[:, None].to(tl.int64) * N + cols[None, :]
        mask = (r[:, None] < P) & col_mask[None, :]
        if HAS_A:
            acc_a += tl.load(PART_A + offs, mask=mask, other=0.0)
        if HAS_B:
            acc_b += tl.load(PART_B + offs, mask=mask, other=0.0)
    if HAS_A:
        tl.store(OUT_A + cols, tl.sum(acc_a, axis=0).to(OUT_A.dtype.element_ty), mask=col_mask)
    if HAS_B:
        tl.store(OUT_B + cols, tl.sum(acc_b, axis=0).to(OUT_B.dtype.element_ty), mask=col_mask)


def sum_partials(part_a, like_a, part_b, like_b, block_p, block_n, num_warps):
    """Column sums of one or two (P, N) fp32 partial buffers (None for an absent one) in one
    launch; -> (sums_a or None, sums_b or None), each shaped and typed like the dense (N,)
    tensor ``like_a`` / ``like_b`` (the parameter whose gradient it is)."""
    part = part_a if part_a is not None else part_b
    P, N = part.shape
    out_a = None if part_a is None else torch.empty_like(like_a)
    out_b = None if part_b is None else torch.empty_like(like_b)
    sum_partials_kernel[(_cdiv(N, block_n),)](
        part, out_a if out_a is not None else part, part_b if part_b is not None else part,
        out_b if out_b is not None else part, P, N, HAS_A=part_a is not None,
        HAS_B=part_b is not None, BLOCK_P=block_p, BLOCK_N=block_n, num_warps=num_warps)
    return out_a, out_b
