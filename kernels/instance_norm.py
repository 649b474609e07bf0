"""Triton InstanceNorm for contiguous (N, C, *spatial) inputs on the LayerNorm row kernels.

Each (n, c) plane of a contiguous tensor is S = prod(spatial) contiguous elements: a row of
the (N * C, S) view, normalized with the scalar affine weight[c], bias[c] (row r has
c = r % C; ROW_AFFINE in kernels/layer_norm.py).  GroupNorm's launcher calls these when
num_groups == C, x is contiguous (not channels_last) and there is no activation; the
channels_last layout stays with GroupNorm's kernels.

  instance_norm_fwd   one launch: out, mean (N, C), rstd (N, C)
  instance_norm_bwd   the persistent row kernel writes dx and each row's sums of dy * xhat
                      and dy into (N, C) partials; one column-sum launch adds them over n in
                      a fixed order into dweight / dbias (in their dtypes): two launches
                      (one without weight and bias)
"""
import torch

from fusednorm.kernels._util import f32_empty

from ._tuning import TuneTarget
from ._util import cdiv as _cdiv
from .layer_norm import (X_DTYPES, _TL_NAME, _bwd_plan, _fwd_plan, _param_dtypes, _teams,
                         bwd_configs, bwd_plan_for, bwd_variant, candidate_configs, check_config,
                         column_sums, device_info, fwd_configs, fwd_plan_for, fwd_variant,
                         sum_variant)
from .layer_norm_config import (BwdConfig, FwdConfig, bwd_candidates, bwd_config, device_arch,
                                fwd_candidates, fwd_config, partials_sum_config)


def _rows(x):
    n, c = x.shape[0], x.shape[1]
    m = n * c
    return n, c, m, (x.numel() // m if m else 0)


def instance_norm_fwd(x, weight, bias, eps: float, *, config: FwdConfig = None, out=None):
    """x: contiguous (N, C, *spatial); weight, bias: None or dense (C,) in x's dtype or fp32.
    -> out (x's shape and dtype), mean (N, C) fp32, rstd (N, C) fp32.  ``config``
    overrides the launch heuristic; ``out``: a preallocated contiguous output."""
    N, C, M, S = _rows(x)
    if out is None:
        out = torch.empty_like(x)
    mean = f32_empty(x, (N, C))
    rstd = f32_empty(x, (N, C))
    if M == 0 or S == 0:  # statistics of an empty plane are 0/0, as in torch
        mean.fill_(float("nan"))
        rstd.fill_(float("nan"))
        return out, mean, rstd
    if config is None:
        kernel, block_m, cexprs, num_warps = _fwd_plan(
            S, x.dtype, "in", not S & 15, x.get_device(), weight is not None,
            bias is not None, False)
    else:
        check_config(config, x.element_size(), S, row_affine=True)
        kernel, block_m, cexprs, num_warps = fwd_plan_for(
            config, False, weight is not None, bias is not None, False, True)
    # the (N * C, S) rows of the contiguous tensors: row stride S (no views made)
    kernel[(-(-M // block_m),)](
        x, x, weight if weight is not None else x, bias if bias is not None else x, out, out,
        mean, rstd, S, 0, S, 0, M, S, C, eps, *cexprs, num_warps=num_warps)
    return out, mean, rstd


def instance_norm_bwd(dy, x, weight, bias, mean, rstd, *, config: BwdConfig = None,
                      sm_count=None, sum_config=None, dx_out=None):
    """dy: contiguous, x's shape; mean, rstd: (N, C) fp32 from instance_norm_fwd.
    -> dx (x's shape), dweight (C,) or None, dbias (C,) or None (parameter dtypes).
    ``config`` / ``sum_config`` override the heuristics, ``sm_count`` the persistent grid;
    ``dx_out``: a preallocated contiguous dx."""
    N, C, M, S = _rows(x)
    dx = torch.empty_like(x) if dx_out is None else dx_out
    has_w, has_b = weight is not None, bias is not None
    if M == 0 or S == 0:
        return (dx, torch.zeros_like(weight) if has_w else None,
                torch.zeros_like(bias) if has_b else None)
    dev = x.get_device()
    if config is None and sm_count is None:
        plan = _bwd_plan(S, x.dtype, "in", not S & 15, dev, has_w, has_b, False)
    else:
        if config is None:
            config = bwd_config(S, x.dtype, "in", device_info(dev)[0], not S & 15)
        else:
            check_config(config, x.element_size(), S, row_affine=True)
            if config.split != 1:
                raise ValueError(f"instance_norm: config {config}: split must be 1")
        plan = bwd_plan_for(config, False, has_w, has_b, False, True,
                            sm_count or device_info(dev)[1])
    kernel, block_m, _split, cap, cexprs, num_warps, maxnreg = plan
    # one entry per plane, every one written by the program owning the plane
    dw_part = f32_empty(x, (N, C)) if has_w else None
    db_part = f32_empty(x, (N, C)) if has_b else None
    kernel[(min(-(-M // block_m), cap),)](
        x, weight if has_w else x, dy, dy, dx, mean, rstd,
        dw_part if has_w else rstd, db_part if has_b else rstd, S, S, S, S, M, S, C, *cexprs,
        num_warps=num_warps, maxnreg=maxnreg)
    if not (has_w or has_b):
        return dx, None, None
    # dweight / dbias: the (N, C) per-plane sums added over n in a fixed order, one launch
    dw, db = column_sums(dw_part, db_part, weight, bias, N, C, dev, sum_config)
    return dx, dw, db


# ----------------------------------------------------------------------------------------
# compile variants and tuning targets
# ----------------------------------------------------------------------------------------
def _variants(xd, wd, cfgs, variant, flags):
    for cfg in cfgs:
        for has_w, has_b in flags:
            if wd != xd and not (has_w or has_b):
                continue
            yield variant(cfg, xd, wd, False, has_w, has_b, False, True)


_PARAMS = ((True, True), (True, False), (False, True), (False, False))


def compile_variants(full: bool = True):
    """(kernel, signature, constexprs, num_warps) of every InstanceNorm launch the heuristics
    can produce: the row kernels with ROW_AFFINE (RMS, residual and prenorm gradient off) x
    configs (16-byte and element-wise rows) x x dtype x parameter dtype x weight/bias
    presence; the first variant of each kernel has both parameters.  The column sums are
    LayerNorm's (kernels/layer_norm.compile_variants).  full=False: covering_variants()."""
    if not full:
        for v, _archs, _aligned in covering_variants():
            yield v
        return
    for flags in _PARAMS:
        for xd in X_DTYPES:
            for wd in _param_dtypes(xd):
                fwd = fwd_configs(xd, True, True) + [c for c in fwd_configs(xd, False, True)
                                                     if c not in fwd_configs(xd, True, True)]
                bwd = bwd_configs(xd, True) + [c for c in bwd_configs(xd, True, False)
                                               if c not in bwd_configs(xd, True)]
                yield from _variants(xd, wd, fwd, fwd_variant, (flags,))
                yield from _variants(xd, wd, bwd, bwd_variant, (flags,))
    # the tuner's other candidates, with both parameters in fp32
    for xd in X_DTYPES:
        fwd, bwd = candidate_configs(xd, True)
        yield from _variants(xd, torch.float32, fwd, fwd_variant, ((True, True),))
        yield from _variants(xd, torch.float32, bwd, bwd_variant, ((True, True),))


def covering_variants():
    """[(variant, archs, aligned)] CI compiles: every backward config (its registers are what
    InstanceNorm changes: no column partials, twice the elements a thread) for bf16 and fp32
    with fp32 parameters, aligned and not, on sm_90, aligned on sm_80 too (as in
    layer_norm.covering_variants); the forward at its widest one-pass and looped configs
    (sm_80 too at 16 warps: the 128-register cap); the other parameter combinations at one
    config (sm_90)."""
    both = (80, 90)
    f32, bf = torch.float32, torch.bfloat16
    out = []
    for xd in (bf, f32):
        for aligned in (True, False):
            for cfg in bwd_configs(xd, True, aligned):
                out.append((bwd_variant(cfg, xd, f32, False, True, True, False, True),
                            both if aligned else (90,), aligned))
            fwd = fwd_configs(xd, aligned, True)
            for cfg in ([c for c in fwd if c.one_pass][-1:] + [c for c in fwd if not c.one_pass]):
                out.append((fwd_variant(cfg, xd, f32, False, True, True, False, True),
                            both if cfg.num_warps >= 16 and aligned else (90,), aligned))
    for has_w, has_b in _PARAMS[1:]:
        out.append((bwd_variant(bwd_configs(bf, True)[0], bf, bf, False, has_w, has_b, False,
                                True), (90,), True))
        out.append((fwd_variant(fwd_configs(bf, True, True)[0], bf, bf, False, has_w, has_b,
                                False, True),
                    (90,), True))
    return out


def evidence_launches(shape, dtype, sm_count=132, arch="sm90"):
    """The launches of one InstanceNorm call on a contiguous ``shape`` (forward, backward,
    column sums) as layer_norm.evidence_launches describes them."""
    N, C = shape[0], shape[1]
    M, S = N * C, 1
    for d in shape[2:]:
        S *= d
    aligned = S % 16 == 0
    fc = fwd_config(S, dtype, "in", arch, aligned)
    bc = bwd_config(S, dtype, "in", arch, aligned)
    esz = dtype.itemsize
    sc = partials_sum_config(N, C, 2, arch)
    return [
        dict(kind="fwd", variant=fwd_variant(fc, dtype, dtype, False, True, True, False, True),
             ints=dict(stride_x=S, stride_res=0, stride_out=S, stride_xsum=0, M=M, N=S, C=C),
             grid=_cdiv(M, fc.block_m) if fc.one_pass else M, config=fc, ctas_design=None,
             tile_bytes=fc.block_m * min(fc.block_n, S) * esz, row_scalars=0,
             fwd_row_scalars=2 * fc.block_m),  # the plane's weight and bias
        dict(kind="bwd", variant=bwd_variant(bc, dtype, dtype, False, True, True, False, True),
             ints=dict(stride_x=S, stride_dy=S, stride_dxsum=S, stride_dx=S, M=M, N=S, C=C),
             grid=_teams(M, bc, sm_count), config=bc, ctas_design=bc.ctas_per_sm,
             tile_bytes=bc.block_m * min(bc.block_n, S) * 2 * esz,
             row_scalars=3 * bc.block_m),  # mean, rstd, the plane's weight
        # (N, C) per-plane partials summed over n: a few KB, programs as the channels allow
        dict(kind="colsum", variant=sum_variant(sc, dtype, True, True), ints=dict(P=N, N=C),
             grid=2 * _cdiv(C, sc.block_n), config=sc, ctas_design=None,
             tile_bytes=sc.block_p * sc.block_n * 4, row_scalars=0, small_ok=True),
    ]


def tune_targets(op, shape, dtype, layout, device):
    """TuneTargets for one InstanceNorm benchmark case (N, C, *spatial); channels_last
    InstanceNorm runs GroupNorm's kernels, so its targets are GroupNorm's."""
    if op != "instance_norm":
        return []
    if layout != "nchw":
        from fusednorm.kernels.group_norm import tune_targets as group_norm_targets
        return group_norm_targets(op, shape, dtype, layout, device)
    N, C = shape[0], shape[1]
    S = 1
    for d in shape[2:]:
        S *= d
    arch = device_arch(torch.device(device))
    x = torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
    w = torch.randn(C, device=device, dtype=torch.float32).to(dtype) + 1
    b = torch.randn(C, device=device, dtype=torch.float32).to(dtype)
    dy = torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
    out, mean, rstd = instance_norm_fwd(x, w, b, 1e-5)
    dx = torch.empty_like(x)
    key = f"{_TL_NAME[dtype]}|{S}"
    n = x.numel() * x.element_size()
    return [
        TuneTarget("instance_norm_fwd", key, fwd_candidates(S, dtype, "in", arch),
                   lambda cfg: instance_norm_fwd(x, w, b, 1e-5, config=cfg, out=out), nbytes=2 * n),
        TuneTarget("instance_norm_bwd", key,
                   [c for c in bwd_candidates(S, dtype, "in", arch) if c.split == 1],
                   lambda cfg: instance_norm_bwd(dy, x, w, b, mean, rstd, config=cfg,
                                                     dx_out=dx),
                   nbytes=3 * n),
    ]
