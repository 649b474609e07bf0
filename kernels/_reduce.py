"""Shared Triton reduction helpers for the norm kernels.

Everything here is generic over what is being normalized: statistics of a masked fp32 block,
the Chan merge of two (count, mean, M2) summaries, and the second step of a deterministic
weight gradient (column sums of per-program fp32 partials, in a fixed order).
"""
import triton
import triton.language as tl


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
    PART,       # (P, N) fp32 partials, row-major: one row per program of the first step
    OUT,        # (N,) result in the output's dtype (e.g. the weight's)
    P, N,       # runtime sizes
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """OUT[n] = sum_p PART[p, n].  Each program owns BLOCK_N columns and walks the P rows in
    a fixed order, so the result is bitwise the same on every run (no atomics)."""
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    rows = tl.arange(0, BLOCK_P)
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        r = p0 + rows
        # int64: P * N can pass 2^31 for wide rows and many programs
        offs = r[:, None].to(tl.int64) * N + cols[None, :]
        acc += tl.load(PART + offs, mask=(r[:, None] < P) & col_mask[None, :], other=0.0)
    tl.store(OUT + cols, tl.sum(acc, axis=0).to(OUT.dtype.element_ty), mask=col_mask)
