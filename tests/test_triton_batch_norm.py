"""Triton BatchNorm launchers against a float64 torch reference (training and eval), and the
offline evidence for the kernels' design (SASS of sm_80 / sm_90 compiles, no GPU needed).

Same tolerance rule and guard helpers as test_triton_group_norm.py (imported from there).
Interpreter shapes are small; the configs below reach every branch: several chunks per
channel block (the statistics kernel's two-tile step with an odd tile count), persistent
programs that do not divide the tiles, partial channel blocks, plane chunks (S > 1024),
small planes (S = 49, 196), the dx kernel's grouped partial read over several steps.
"""

import pytest
import torch
import torch.nn.functional as F

from _triton_compile import compile_in_workers
from fusednorm.kernels import batch_norm as bn_mod
from fusednorm.kernels import batch_norm_config as bn_cfg
from fusednorm.kernels.batch_norm import batch_norm_bwd, batch_norm_fwd
from fusednorm.kernels.batch_norm_config import BatchNormConfig, TileConfig, tiles
from test_triton_group_norm import DTYPES, Guard, assert_close, poisoned_f32_empty, to_layout

EPS = 1e-5


def bn_reference(x, w, b, rm, rv, training, dy, momentum=0.1):
    x = x.detach().requires_grad_()
    w = None if w is None else w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    y = F.batch_norm(x, rm, rv, w, b, training, momentum, EPS)
    y.backward(dy)
    return (y.detach(), x.grad, None if w is None else w.grad, None if b is None else b.grad,
            rm, rv)


def check_bn(shape, dtype, device, channels_last=False, training=True, affine=True,
             offset=0.0, config=None, bwd_config=None, pdtype=torch.float32):
    C = shape[1]
    x = to_layout((torch.randn(shape, dtype=torch.float64) + offset).to(dtype),
                  channels_last).to(device)
    w = (torch.randn(C, dtype=torch.float64) + 1).to(pdtype).to(device) if affine else None
    b = torch.randn(C, dtype=torch.float64).to(pdtype).to(device) if affine else None
    # running statistics in the parameters' dtype (torch's CPU kernel wants them alike)
    rm = (torch.randn(C, dtype=torch.float64) + offset).to(pdtype).to(device)
    rv = (torch.rand(C, dtype=torch.float64) + 0.5).to(pdtype).to(device)
    dy = to_layout(torch.randn(shape, dtype=torch.float64).to(dtype), channels_last).to(device)
    d64 = lambda t: None if t is None else t.double()  # noqa: E731
    ref = bn_reference(x.double(), d64(w), d64(b), d64(rm).clone(), d64(rv).clone(), training,
                       dy.double())
    rm0, rv0 = rm.clone(), rv.clone()
    # training updates the running statistics in place (momentum 0.1, as the references)
    out, mean, rstd, var = batch_norm_fwd(x, w, b, rm, rv, training, EPS, config=config)
    dx, dw, db = batch_norm_bwd(dy, x, w, mean, rstd, training, config=bwd_config)

    # torch in x's dtype (its CUDA kernel wants the parameters in x's dtype or fp32 alike)
    lp = bn_reference(x, w, b, rm0.clone(), rv0.clone(), training, dy)
    assert out.dtype == dtype and out.stride() == x.stride(), "out must keep x's layout/dtype"
    assert dx.stride() == x.stride()
    assert_close(out, ref[0], lp[0], "out")
    assert_close(dx, ref[1], lp[1], "dx")
    dims = [0] + list(range(2, x.dim()))
    if training:
        v64 = x.double().var(dims, unbiased=False)
        assert_close(mean, x.double().mean(dims), mean, "mean")
        assert_close(var, v64, var, "var")
        assert_close(rstd, torch.rsqrt(v64 + EPS), rstd, "rstd")
        # torch's own update of the same buffers is the low-precision baseline
        assert_close(rm, ref[4], lp[4], "running_mean")
        assert_close(rv, ref[5], lp[5], "running_var")
    else:
        assert var is None and torch.equal(mean, rm) and torch.equal(rm, rm0)
        assert torch.equal(rv, rv0)
        assert_close(rstd, torch.rsqrt(rv.double() + EPS), rstd, "rstd")
    # dbias is returned whether or not there is an affine; compare with sum(dy) in float64
    assert_close(db, dy.double().sum(dims), lp[3] if affine else db, "dbias")
    if affine:
        assert dw.dtype == pdtype and db.dtype == pdtype
        assert_close(dw, ref[2], lp[2], "dweight")
    else:
        assert dw is None and db.dtype == dtype
    return x, w, dy, mean, rstd


def cfg(reduce, stream):
    return BatchNormConfig(TileConfig(*reduce), TileConfig(*stream))


SHAPES = [(37, 10), (4, 6, 11), (3, 5, 7, 9), (2, 4, 3, 5, 6)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_norm_train_matches_float64(shape, dtype, device):
    torch.manual_seed(len(shape) * 7 + DTYPES.index(dtype))
    check_bn(shape, dtype, device, channels_last=False)
    if len(shape) >= 4:
        check_bn(shape, dtype, device, channels_last=True, affine=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(37, 10), (3, 5, 7, 9)], ids=str)
def test_batch_norm_eval_matches_float64(shape, dtype, device):
    torch.manual_seed(11)
    check_bn(shape, dtype, device, training=False, channels_last=len(shape) == 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("hw", [(7, 7), (14, 14), (28, 28), (1, 1), (3, 5)], ids=str)
def test_plane_sizes(hw, dtype, device):
    """NCHW planes of S = 49, 196 (not multiples of 16: narrower loads, same results),
    784 (the benchmark's, 16-byte loads on a GPU), 1 (read as (N, C) rows) and 15."""
    torch.manual_seed(hw[0] * 31 + hw[1])
    shape = (3, 5) + hw
    check_bn(shape, dtype, device)
    check_bn(shape, dtype, device, training=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_edge_sizes(dtype, device):
    """M = 2 (the training minimum), M = 1 in eval, (N, C, 1, 1), odd wide rows (C = 600:
    two full 256-channel blocks and one of 88)."""
    torch.manual_seed(25)
    check_bn((2, 5), dtype, device)
    check_bn((1, 7), dtype, device, training=False)
    check_bn((1, 3, 1, 1), dtype, device, training=False)
    check_bn((6, 600), dtype, device)


def _menu(cl, dtype, block_c):
    return next(t for t in tiles(cl, dtype.itemsize) if t[1] == block_c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_multi_program_paths_nchw(dtype, device):
    """S = 1200 > 1024: two plane chunks per sample; six channels read by 1-channel blocks
    (the dx kernel's aligned groups of 4: groups 0 and 1, the second half empty); several
    statistics programs per channel with an odd tile count in the last chunk; persistent
    programs that do not divide the tiles."""
    torch.manual_seed(21)
    t = _menu(False, dtype, 1)
    n_tiles = bn_cfg.n_tiles(17, 6, 1200, False, t)
    # reduce: chunks of 3 tiles (the two-tile step ends on a half-masked pair); stream:
    # 4 programs over 6 or 10 tiles
    c = cfg(t + (8, bn_cfg._cdiv(n_tiles, 3)), t + (8, 4))
    assert n_tiles in (6, 10) and bn_mod._Launch(c.reduce, 17, 6, 1200, False, True).tpp == 3
    check_bn((17, 6, 30, 40), dtype, device, config=c, bwd_config=c)
    check_bn((17, 6, 30, 40), dtype, device, config=c, bwd_config=c, training=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_multi_program_paths_channels_last(dtype, device, monkeypatch):
    """C = 300: a full and a partial 256-channel block; 17 chunks of one tile, so the dx
    kernel sums its 256-channel groups in two steps (BLOCK_K = 16) and the merge, with
    MERGE_BLOCK_K lowered to 16, in two steps too; persistent programs striding by 3."""
    torch.manual_seed(22)
    t = _menu(True, dtype, 256)
    M = 17 * t[0]
    c = cfg(t + (8, 17), t + (8, 3))
    monkeypatch.setattr(bn_mod, "MERGE_BLOCK_K", 16)
    check_bn((M, 300), dtype, device, config=c, bwd_config=c)
    t64 = _menu(True, dtype, 64)
    c64 = cfg(t64 + (8, 5), t64 + (8, 2))  # the backward's 64-channel blocks, 5 of them
    check_bn((M // 4 + 3, 300), dtype, device, config=c64, bwd_config=c64)


def test_parameter_dtypes_and_flags(device):
    """Affine parameters in x's dtype; weight without bias and bias without weight; fp16
    running statistics updated in fp32 and rounded once."""
    torch.manual_seed(23)
    check_bn((4, 6, 5, 3), torch.bfloat16, device, pdtype=torch.bfloat16)
    check_bn((4, 6, 5, 3), torch.float16, device, channels_last=True, pdtype=torch.float16)
    x = torch.randn(4, 6, 5, 3, device=device)
    w = torch.randn(6, device=device)
    for wt, bs in ((w, None), (None, w)):
        out = batch_norm_fwd(x, wt, bs, None, None, True, EPS)[0]
        ref = F.batch_norm(x.double(), None, None, None if wt is None else wt.double(),
                           None if bs is None else bs.double(), True, 0.1, EPS)
        assert_close(out, ref, ref.float(), "out")
    rm = torch.randn(6, device=device).half()
    rv = (torch.rand(6, device=device) + 0.5).half()
    rm_t, rv_t = rm.float(), rv.float()
    batch_norm_fwd(x, None, None, rm, rv, True, EPS, 0.3)
    F.batch_norm(x, rm_t, rv_t, None, None, True, 0.3, EPS)
    assert torch.equal(rm, rm_t.half()) or (rm.float() - rm_t).abs().max() <= 1e-3
    assert (rv.float() - rv_t).abs().max() <= 1e-3


@pytest.mark.parametrize("channels_last", [False, True])
def test_cumulative_momentum(channels_last, device):
    """momentum=None: num_batches_tracked += 1 on the device, factor 1 / num_batches_tracked."""
    torch.manual_seed(24)
    x = to_layout(torch.randn(4, 3, 5, 6), channels_last).to(device)
    rm, rv = torch.randn(3, device=device), torch.rand(3, device=device) + 0.5
    nbt = torch.tensor(4, device=device)
    rm_t, rv_t = rm.clone(), rv.clone()
    batch_norm_fwd(x, None, None, rm, rv, True, EPS, None, nbt)
    assert int(nbt) == 5
    F.batch_norm(x, rm_t, rv_t, None, None, True, 1 / 5, EPS)
    torch.testing.assert_close(rm, rm_t, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rv, rv_t, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_offset_data_fp32(channels_last, device):
    """mean 1e4, std 1: statistics and output match float64 to ~1e-4."""
    torch.manual_seed(13)
    x = to_layout((torch.randn(8, 6, 9, 11, dtype=torch.float64) + 1e4).float(),
                  channels_last).to(device)
    out, mean, rstd, var = batch_norm_fwd(x, None, None, None, None, True, EPS)
    ref = F.batch_norm(x.double(), None, None, None, None, True, 0.1, EPS)
    assert (out.double() - ref).abs().max().item() < 1e-4
    v64 = x.double().var([0, 2, 3], unbiased=False)
    assert ((var.double() - v64).abs() / v64).max().item() < 1e-4
    check_bn((8, 6, 9, 11), torch.float32, device, channels_last=channels_last, offset=1e4)


def test_nan_stays_in_its_channel(device):
    """NaN in -> NaN out for its channel (statistics, output, dx), the others untouched."""
    x = torch.randn(4, 3, 5, 6, device=device)
    x[2, 1, 3, 4] = float("nan")
    w = torch.randn(3, device=device)
    out, mean, rstd, _ = batch_norm_fwd(x, w, w, None, None, True, EPS)
    assert torch.isnan(out[:, 1]).all() and torch.isnan(mean[1]) and torch.isnan(rstd[1])
    assert not torch.isnan(out[:, [0, 2]]).any() and not torch.isnan(mean[[0, 2]]).any()
    dx, dw, db = batch_norm_bwd(torch.randn_like(x), x, w, mean, rstd, True)
    assert torch.isnan(dx[:, 1]).all() and not torch.isnan(dx[:, [0, 2]]).any()
    assert torch.isnan(dw[1]) and not torch.isnan(dw[[0, 2]]).any()
    # eval backward: dx = rstd*w*dy elementwise, a NaN in dy stays where it is
    rstd_e = torch.rand(3, device=device) + 0.5
    dy = torch.randn_like(x)
    dy[0, 0, 0, 0] = float("nan")
    dx = batch_norm_bwd(dy, x.nan_to_num(), w, torch.zeros(3, device=device), rstd_e, False)[0]
    assert torch.isnan(dx).sum() == 1


@pytest.mark.parametrize("tile", [0, 1])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_guard_regions_and_full_write(training, channels_last, tile, device, monkeypatch):
    """Nothing written outside any output or scratch buffer, every element of each written
    (fp32 scratch poisoned with NaN): both menu tiles (C = 5 leaves most of a 16- or
    64-channel block masked), several programs both ways."""
    torch.manual_seed(14)
    shape, C = (9, 5, 7, 9), 5
    g = Guard()
    x = g.place(to_layout(torch.randn(shape), channels_last).to(device))
    w = g.place(torch.randn(C, device=device))
    b = g.place(torch.randn(C, device=device))
    rm = g.place(torch.randn(C, device=device))
    rv = g.place(torch.rand(C, device=device) + 0.5)
    dy = g.place(to_layout(torch.randn(shape), channels_last).to(device))
    n_inputs = len(g.items)
    t = tiles(channels_last, 4)[tile]
    n = bn_cfg.n_tiles(9, C, 63, channels_last, t)
    c = cfg(t + (8, max(1, n - 1)), t + (8, 2))
    with g.outputs(monkeypatch):
        monkeypatch.setattr(bn_mod, "f32_empty", poisoned_f32_empty)  # partials too
        out, mean, rstd, var = batch_norm_fwd(x, w, b, rm, rv, training, EPS, config=c)
        dx, dw, db = batch_norm_bwd(dy, x, w, mean, rstd, training, config=c)
    views = g.check()
    assert len(views) == n_inputs + 4, "out, dx, dweight and dbias should come from empty_like"
    for t_ in (out, dx, mean, rstd, dw, db) + ((var,) if training else ()):
        assert not torch.isnan(t_).any(), "an output element was not written"


@pytest.mark.parametrize("channels_last", [False, True])
def test_bitwise_repeatable(channels_last, device):
    """Forward statistics and weight gradients are bitwise the same run after run (fixed
    reduction orders, no atomics), also with several programs per channel block."""
    torch.manual_seed(15)
    x = to_layout(torch.randn(9, 5, 7, 9), channels_last).to(device)
    w = torch.randn(5, device=device)
    dy = torch.randn_like(x)
    t = tiles(channels_last, 4)[0]
    for c in (None, cfg(t + (8, 3), t + (8, 2))):
        f1 = batch_norm_fwd(x, w, w, None, None, True, EPS, config=c)
        f2 = batch_norm_fwd(x, w, w, None, None, True, EPS, config=c)
        assert all(torch.equal(a, b) for a, b in zip(f1, f2))
        r1 = batch_norm_bwd(dy, x, w, f1[1], f1[2], True, config=c)
        r2 = batch_norm_bwd(dy, x, w, f1[1], f1[2], True, config=c)
        assert all(torch.equal(a, b) for a, b in zip(r1, r2))


def test_errors(device):
    x = torch.randn(4, 6, 11, device=device)
    bad = BatchNormConfig(TileConfig(32, 32), TileConfig(32, 32))
    with pytest.raises(ValueError, match=r"config tile \(32, 32, 1\) is not one of"):
        batch_norm_fwd(x, None, None, None, None, True, EPS, config=bad)
    t = tiles(False, 4)[0]
    with pytest.raises(ValueError, match="num_warps=4"):
        batch_norm_fwd(x, None, None, None, None, True, EPS,
                       config=cfg(t + (4, 1), t + (8, 1)))
    with pytest.raises(ValueError, match=r"programs=0"):
        batch_norm_fwd(x, None, None, None, None, True, EPS,
                       config=cfg(t + (8, 0), t + (8, 1)))
    with pytest.raises(TypeError, match="BatchNormConfig"):
        batch_norm_fwd(x, None, None, None, None, True, EPS, config=TileConfig(*t))
    with pytest.raises(ValueError, match=r"N\*spatial >= 2"):
        batch_norm_fwd(x[:1, :, :1], None, None, None, None, True, EPS)


# ------------------------------------------------------------------ heuristic and tuning
def test_heuristic_grids_for_the_benchmark_shapes():
    """On 132 SMs every tunable kernel of the quick benchmark cases runs >= 132 programs in
    one wave of the CTAs it is built for (RESIDENT per SM); the tuned table wins over the
    analytic choice."""
    for cl in (False, True):
        for item, name in ((2, "bf16"), (4, "fp32")):
            for kind in ("stats", "sums", "apply", "dx"):
                c = bn_cfg.analytic(kind, 256, 256, 784, cl, item, 132)
                grid = bn_cfg._cdiv(256, c.block_c) * c.programs
                assert 132 <= grid <= 132 * bn_cfg.resident(kind, 256, 784, cl), \
                    (cl, name, kind, c, grid)
                assert c == bn_cfg.candidates(kind, 256, 256, 784, cl, item, 132)[0]
                assert len(bn_cfg.candidates(kind, 256, 256, 784, cl, item, 132)) <= 8


def test_tuned_table_is_read_first(monkeypatch):
    t = tiles(True, 2)[0]
    hit = dict(block_m=t[0], block_c=t[1], block_s=t[2], num_warps=8, programs=7)
    monkeypatch.setattr(bn_cfg, "lookup", lambda fam, arch, key: hit
                        if (fam, arch, key) == ("batch_norm_stats_cl", "sm90",
                                                "bf16|256x256x784") else None)
    bn_cfg.kernel_config.cache_clear()
    try:
        got = bn_cfg.kernel_config("stats", 256, 256, 784, True, "bf16", 2, 132, "sm90")
        assert got == TileConfig(**hit)
        other = bn_cfg.kernel_config("stats", 256, 256, 784, True, "bf16", 2, 132, "sm80")
        assert other == bn_cfg.analytic("stats", 256, 256, 784, True, 2, 132)
        # an entry that is not a tile of the menu (not a compiled variant) is ignored
        hit.update(block_m=3)
        bn_cfg.kernel_config.cache_clear()
        got = bn_cfg.kernel_config("stats", 256, 256, 784, True, "bf16", 2, 132, "sm90")
        assert got == bn_cfg.analytic("stats", 256, 256, 784, True, 2, 132)
    finally:
        bn_cfg.kernel_config.cache_clear()


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_tune_targets_run_every_candidate(layout, device):
    """The tuner's targets: four families, the heuristic's choice first, every candidate a
    valid config= tile that runs (on a small case here)."""
    targets = bn_mod.tune_targets("batch_norm", (2, 8, 6, 5), torch.float32, layout,
                                  torch.device(device))
    cl = layout == "nhwc"
    assert [t.family for t in targets] == [bn_cfg.family(k, cl)
                                           for k in ("stats", "apply", "sums", "dx")]
    for t in targets:
        assert t.key == "fp32|2x8x30" and 1 <= len(t.candidates) <= 8 and t.nbytes > 0
        for c in t.candidates:
            bn_cfg.validate(c, cl, 4, t.family)
            t.run(c)
    assert bn_mod.tune_targets("layer_norm", (2, 8), torch.float32, "rows", device) == []


# ------------------------------------------------------------------ offline evidence
# The kernels here are interpreter objects when TRITON_INTERPRET=1 (conftest), which
# triton.compile cannot take: worker processes import them without it.
_WORKER = r"""
import importlib, json, sys
import _sass
from _triton_compile import compile_cubin, resource_usage
mod = importlib.import_module("fusednorm.kernels.batch_norm")
jobs = json.loads(sys.stdin.read())
variants = list(mod.compile_variants()) if any(j["kind"] == "variant" for j in jobs) else []
for job in jobs:
    if job["kind"] == "variant":
        fn, sig, ce, nw = variants[job["index"]]
        div = None
    else:
        fn, sig, ce, nw = getattr(mod, job["kernel"]), job["sig"], job["ce"], job["num_warps"]
        div = set(job["divisible"])
    k = compile_cubin(fn, sig, ce, job["arch"], nw, divisible=div)
    cubin = k.asm["cubin"]
    regs, local, stack = resource_usage(cubin)
    out = dict(job, name=fn.fn.__name__ if hasattr(fn, "fn") else fn.__name__, regs=regs,
               local=local, stack=stack, shared=k.metadata.shared, constexprs=ce, spills=0)
    out.pop("sig", None)
    # STL/LDL address the stack frame or local arrays: with neither there is nothing to
    # count, and disassembling (~1 s for a scalar-load variant) is only needed otherwise
    if job.get("sass", job["kind"] != "variant") or local or stack:
        ins = _sass.instructions(_sass.sass_of_cubin(cubin))
        out.update(spills=_sass.spills(ins),
                   narrow=[op for _, op in _sass.narrow_loop_loads(ins)],
                   loop_loads=[lds for _, lds in _sass.main_loop_loads(ins)],
                   # barriers / shuffles (cross-thread reductions) in each loop with loads
                   loop_syncs=[sum(1 for i in ins if lo <= i.addr <= hi
                                   and i.op.startswith(("BAR", "SHFL")))
                               for (lo, hi), _ in _sass.main_loop_loads(ins)])
    print("RESULT " + json.dumps(out), flush=True)
"""


def _compile_jobs(jobs):
    return compile_in_workers(_WORKER, jobs)


QUICK_CASES = [((256, 256, 28, 28), dt, cl) for dt in ("bf16", "fp32") for cl in (False, True)]
# the full set's small NCHW planes: 16 does not divide S, the narrow-load fallback
FALLBACK_CASES = [((256, 1024, 14, 14), "bf16", False), ((256, 2048, 7, 7), "fp32", False)]


def _variant_jobs():
    n = sum(1 for _ in bn_mod.compile_variants())
    return [dict(kind="variant", test="variants", index=i, arch=a)
            for i in range(n) for a in (80, 90)]


def _evidence_jobs():
    return [dict(launch, test="evidence", arch=90, case=[list(shape), dt, cl])
            for shape, dt, cl in QUICK_CASES + FALLBACK_CASES
            for launch in bn_mod.evidence_launches(shape, dt, cl, sms=132, arch="sm90")]


def _one_jobs():
    jobs, seen = [], set()
    for fn, sig, ce, nw in bn_mod.compile_variants():
        name = fn.fn.__name__ if hasattr(fn, "fn") else fn.__name__
        if not ce.get("CHANNELS_LAST") or name in seen:
            continue
        seen.add(name)
        ints = [a for a, ty in sig.items() if ty == "i32"]
        for arg in ints:
            jobs.append(dict(kind="launch", test="one", kernel=name,
                             sig=dict(sig, **{arg: "constexpr"}), ce=dict(ce, **{arg: 1}),
                             num_warps=nw, arch=90, sass=False,
                             divisible=[a for a in ints if a != arg]))
    return jobs


@pytest.fixture(scope="module")
def compiled():
    """Every offline compile of this file in one pool of two worker processes (each start
    imports torch and Triton): test name -> results."""
    results = _compile_jobs(_variant_jobs() + _evidence_jobs() + _one_jobs())
    out = {}
    for r in results:
        out.setdefault(r["test"], []).append(r)
    return out


@pytest.mark.timeout(900)
def test_compile_every_variant(compiled):
    """Every kernel variant the launchers can produce compiles for sm_80 and sm_90 with no
    local-memory spill (no stack frame or local memory, else STL/LDL counted in the SASS),
    at its most register-hungry: without the launch-time divisibility (narrow loads, one
    address per element)."""
    results = compiled["variants"]
    assert len(results) == 2 * sum(1 for _ in bn_mod.compile_variants())
    worst = {}
    for r in results:
        key = (r["name"], r["arch"])
        if key not in worst or r["regs"] > worst[key]["regs"]:
            worst[key] = r
    print(f"\nbatch_norm: compiled {len(results)} kernels; most registers per kernel:")
    for key in sorted(worst):
        r = worst[key]
        print(f"  {key[0]:<22} sm_{key[1]}: regs={r['regs']} spills={r['spills']} "
              f"({r['constexprs']})")
    assert {k[0] for k in worst} == {"_bn_stats_kernel", "_bn_merge_kernel", "_bn_apply_kernel",
                                     "_bn_bwd_sums_kernel", "_bn_bwd_dx_kernel"}
    spilled = [r for r in results if r["spills"] or r["local"] or r["stack"]]
    assert not spilled, f"register spills: {spilled}"


@pytest.mark.timeout(900)
def test_benchmark_shape_evidence(compiled):
    """For the quick benchmark cases (and NCHW S = 196 / 49, the full set's small planes),
    the launches the heuristic makes on 132 SMs, compiled for sm_90 with the launch-time
    specialization: no spill; no barrier or shuffle (cross-thread reduction) in the
    streaming loop; 16-byte loads in every loop where 16 divides the contiguous
    run (C or S), narrower loads (the fallback, not a failure) where it does not; the grid
    is >= 132 programs in one wave of the CTAs the compiled register count allows, and at
    least the CTAs per SM the heuristic sized it for.  Prints the evidence table."""
    from _sass import ctas_per_sm
    rows, bad = [], []
    for r in compiled["evidence"]:
        shape, dt, cl = r["case"]
        resident = ctas_per_sm(r["regs"], r["num_warps"], r["shared"], 90)
        programs = r["grid"][0] * r["grid"][1]
        waves = -(-programs // (132 * resident))
        inflight = min(resident, -(-programs // 132)) * r["bytes_per_iter"]
        rows.append((r["label"], "x".join(map(str, shape)), dt, "cl" if cl else "nchw",
                     r["regs"], resident, f"{r['grid'][0]}x{r['grid'][1]}", waves,
                     inflight // 1024, len(r["narrow"])))
        what = (r["label"], tuple(shape), dt, "cl" if cl else "nchw")
        if r["spills"] or r["local"] or r["stack"]:
            bad.append((what, "spills", r["spills"], r["stack"]))
        if r["label"] == "merge":
            continue
        # 16 divides the contiguous run (C or S): Triton's launch specialization knows it
        vector = (shape[1] if cl else shape[2] * shape[3]) % 16 == 0
        want = bn_cfg.resident(r["role"], shape[1], shape[2] * shape[3], cl)
        # one wave, >= 95% of the slots it is sized for (channel blocks quantize the grid)
        if waves != 1 or programs < 0.95 * 132 * want or (vector and programs < 132):
            bad.append((what, "grid", programs, waves))
        if resident < want:
            bad.append((what, "CTAs/SM", resident, want, r["regs"]))
        if vector and (r["narrow"] or not all(any(".128" in op for op in lds)
                                              for lds in r["loop_loads"])):
            bad.append((what, "loads", r["narrow"], r["loop_loads"]))
        # the streaming loop (the last loop with loads; dx sums its partials in one before)
        # reduces nothing across threads
        if r["loop_syncs"][-1]:
            bad.append((what, "cross-thread reduction in the streaming loop", r["loop_syncs"]))
    print("\nkernel      shape            dtype layout regs CTAs/SM grid      waves "
          "KB-in-flight/SM narrow-loop-loads")
    for row in rows:
        print(f"{row[0]:<11} {row[1]:<16} {row[2]:<5} {row[3]:<6} {row[4]:>4} {row[5]:>7} "
              f"{row[6]:<9} {row[7]:>5} {row[8]:>15} {row[9]:>5}")
    assert not bad, "\n".join(map(str, bad))


def test_channels_last_branch_with_integer_arguments_equal_to_one(compiled):
    """tests/test_triton_specialization.py compiles the first (NCHW) variant of each kernel
    with every integer argument specialized to 1, as Triton does on a GPU; this does the same
    for the channels_last branch of the four layout kernels (sm_90)."""
    results = compiled["one"]
    assert len({r["name"] for r in results}) == 4 and len(results) == 6 + 6 + 5 + 6
    assert all(r["spills"] == 0 and not r["stack"] for r in results)
