"""The layouts the backends take, and the one place where a copy into them is made.

Row norms (LayerNorm, RMSNorm) see an (M, N) view with unit column stride; channel norms
(GroupNorm, InstanceNorm, BatchNorm) see NCHW-contiguous or channels_last(_3d) tensors, read
in place.  Anything else is copied here, deliberately, and nowhere else.
"""
from typing import Optional

import torch
from torch import Tensor


def as_rows(t: Tensor, nd: int) -> Tensor:
    """(M, N) view of t, N = the product of its last ``nd`` dims, with unit stride along N and
    rows at least N apart (M and N are computed, so a 0-sized dim on either side works).

    A tensor whose last dims cannot be viewed so (a strided last dim, overlapping rows) is
    made contiguous.  A 2-D t with nd = 1 is returned as it is when it already qualifies
    (no view: under autograd a view is one more node to run backward)."""
    shape = t.shape
    if nd == 1 and len(shape) == 2:
        rows = t
        m, n = shape
    else:
        k = len(shape) - nd
        m = n = 1
        for s in shape[:k]:
            m *= s
        for s in shape[k:]:
            n *= s
        rows = t.reshape(m, n)
    if (m > 1 and rows.stride(0) < n) or (n > 1 and rows.stride(1) != 1):
        rows = rows.contiguous()
    return rows


def dense(p: Optional[Tensor]) -> Optional[Tensor]:
    """Affine parameters as dense (N,) vectors, which the row kernels index: a multi-dim,
    strided or expanded view (weight[::2], w.expand(n)) is reshaped or copied here."""
    if p is None or (p.dim() == 1 and (p.shape[0] <= 1 or p.stride(0) == 1)):
        return p
    return p.reshape(-1).contiguous()


def spatial(x: Tensor) -> Tensor:
    """x itself when contiguous or channels_last(_3d); otherwise a copy to contiguous NCHW.

    Kernels read NCHW and channels_last in place; any other layout (a transposed or sliced
    view) is copied here, and only here.
    """
    if x.is_contiguous():
        return x
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return x
    return x.contiguous()
