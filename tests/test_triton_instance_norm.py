"""Triton InstanceNorm on the row kernels (kernels/instance_norm.py) against float64, and the
offline evidence for its launches.

Each (n, c) plane of a contiguous (N, C, *spatial) tensor is a row of S elements with the
scalar affine weight[c], bias[c]; dweight/dbias are fixed-order sums over n of per-plane
sums.  Accuracy rule as in test_triton_layer_norm.py (2x torch's own error + atol, one bf16
ulp of slack for the interpreter's truncating downcast).
"""
import contextlib
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import HAS_CUDA
from fusednorm.kernels import instance_norm as I
from fusednorm.kernels import layer_norm as K
from fusednorm.kernels import layer_norm_config as LC
from fusednorm.kernels.layer_norm_config import BwdConfig, FwdConfig, bwd_config, fwd_config
from test_triton_layer_norm import (_bits, _check, _rand, assert_no_spills, check_evidence,
                                    poisoned_f32_empty, print_evidence, run_compile_workers)

EPS = 1e-5


def _reference(x, w, b, dy, dtype=None):
    """out, dx, dw, db of torch's instance_norm (batch statistics) by autograd; dtype=None:
    in x's dtype (torch's own low-precision result), else cast first."""
    def leaf(t):
        return None if t is None else t.detach().to(dtype or t.dtype).requires_grad_()
    x_, w_, b_ = leaf(x), leaf(w), leaf(b)
    y = F.instance_norm(x_, weight=w_, bias=b_, eps=EPS)
    leaves = [t for t in (x_, w_, b_) if t is not None]
    g = list(torch.autograd.grad(y, leaves, dy.to(y.dtype)))
    dx = g.pop(0)
    dw = g.pop(0) if w is not None else None
    db = g.pop(0) if b is not None else None
    return y.detach(), dx, dw, db


def run_in(shape, dtype, device, has_w=True, has_b=True, w_dtype=None, fcfg=None, bcfg=None,
           sm_count=None, mean=0.0):
    x = _rand(shape, dtype, device, mean=mean)
    C = shape[1]
    w_dtype = w_dtype or dtype
    w = _rand((C,), w_dtype, device, mean=1.0, std=0.5) if has_w else None
    b = _rand((C,), w_dtype, device, std=0.5) if has_b else None
    dy = _rand(shape, dtype, device)
    out, m, rstd = I.instance_norm_fwd(x, w, b, EPS, config=fcfg)
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    assert m.shape == (shape[0], C) and rstd.shape == (shape[0], C)
    assert m.dtype == rstd.dtype == torch.float32
    dx, dw, db = I.instance_norm_bwd(dy, x, w, b, m, rstd, config=bcfg, sm_count=sm_count)
    assert (dw is None) == (w is None) and (db is None) == (b is None)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    ref = _reference(d(x), d(w), d(b), d(dy))
    lp = _reference(x.float(), None if w is None else w.float(),
                    None if b is None else b.float(), dy.float(), dtype=dtype) \
        if dtype != torch.float32 else _reference(x, w, b, dy)
    lp = [None if t is None else t.to(dtype if i < 2 else w_dtype) for i, t in enumerate(lp)]
    _check("out", out, ref[0], lp[0], dtype)
    _check("dx", dx, ref[1], lp[1], dtype)
    if w is not None:
        assert dw.dtype == w_dtype
        _check("dweight", dw, ref[2], lp[2], dtype)
    if b is not None:
        assert db.dtype == w_dtype
        _check("dbias", db, ref[3], lp[3], dtype)
    red = tuple(range(2, x.dim()))
    x64 = x.double()
    torch.testing.assert_close(m.double(), x64.mean(red), rtol=1e-5, atol=1e-5 * (1 + abs(mean)))
    torch.testing.assert_close(rstd.double(), torch.rsqrt(x64.var(red, unbiased=False) + EPS),
                               rtol=1e-4, atol=0)
    return out, dx, dw, db


DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SHAPES = [(2, 3, 5, 7), (3, 4, 16), (2, 5, 3, 4, 6), (1, 1, 1000), (4, 6, 32, 32)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_shapes(shape, dtype, device):
    """The heuristic's configs: planes that are not a multiple of 16 elements (element-wise
    loads), 1-D / 3-D spatial, one plane, many planes a program."""
    torch.manual_seed(0)
    run_in(shape, dtype, device)


def _vec(dtype):
    return 16 // dtype.itemsize


# name -> (shape, fwd config, bwd config, sm_count): every kernel path at small planes
PATHS = {
    # one plane a program, 4 register repeats; prefetch, persistent remainder (7 planes)
    "rows-r4-prefetch": ((7, 1, 1000), FwdConfig(1024, 256, 1, 4, True),
                         BwdConfig(1024, 256, 1, 4, True, 1, True, 1), 2),
    # 4 planes a program with planes % 4 != 0, channel = plane % C across tiles
    "rows-bm4": ((3, 5, 10, 30), FwdConfig(512, 128, 4, 4, True),
                 BwdConfig(512, 256, 4, 8, True, 1, True, 1), 1),
    "rows-bm8-noprefetch": ((3, 7, 40), FwdConfig(256, 256, 8, 4, True),
                            BwdConfig(256, 128, 8, 8, True, 1, False, 3), 1),
    # looped: 3 chunks a plane, tiles of 1 and 2 planes
    "looped": ((2, 3, 1500), FwdConfig(512, 256, 1, 4, False),
               BwdConfig(512, 256, 1, 4, False, 1, False, 1), 2),
    "looped-bm2": ((3, 3, 700), FwdConfig(256, 128, 1, 4, False),
                   BwdConfig(256, 128, 2, 4, False, 1, False, 1), 2),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(PATHS))
def test_kernel_paths(name, dtype, device):
    torch.manual_seed(1)
    shape, fcfg, bcfg, sm = PATHS[name]
    run_in(shape, dtype, device, fcfg=fcfg, bcfg=bcfg, sm_count=sm)


def test_benchmark_plane_width(device):
    """The heuristic at the IN benchmark's plane (S = 16384): one pass in fp32 too (the
    16-warp row kernel with 8 x 16-byte loads a thread), a looped backward."""
    torch.manual_seed(5)
    f = fwd_config(16384, torch.float32, "in")
    assert f.one_pass and f.block_n == 16384 and f.num_warps == 16
    run_in((2, 3, 128, 128), torch.float32, device)


@pytest.mark.parametrize("path", ["heuristic", "looped"])
@pytest.mark.parametrize("has_w,has_b", [(True, False), (False, True), (False, False)],
                         ids=["w", "b", "none"])
def test_optional_params(has_w, has_b, path, device):
    torch.manual_seed(2)
    shape, fcfg, bcfg, sm = ((3, 4, 9, 9), None, None, None) if path == "heuristic" \
        else PATHS[path]
    run_in(shape, torch.float16, device, has_w=has_w, has_b=has_b, fcfg=fcfg, bcfg=bcfg,
           sm_count=sm)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fp32_params(dtype, device):
    torch.manual_seed(3)
    run_in((2, 6, 12, 12), dtype, device, w_dtype=torch.float32)


@pytest.mark.parametrize("path", ["heuristic", "looped"])
def test_offset_data(path, device):
    """mean 1e4, std 1 (fp32): statistics of x - K stay exact, K a plane element."""
    torch.manual_seed(4)
    shape, fcfg, bcfg, sm = ((2, 3, 32, 32), None, None, None) if path == "heuristic" \
        else PATHS[path]
    run_in(shape, torch.float32, device, fcfg=fcfg, bcfg=bcfg, sm_count=sm, mean=1e4)


MARGIN = 64


@pytest.mark.parametrize("path", ["heuristic", "looped-bm2", "rows-bm4"])
def test_guard_regions_and_scratch(path, device, monkeypatch):
    """Outputs inside NaN buffers with margins, fp32 scratch (statistics, per-plane partials)
    NaN-filled: every output element written, nothing outside, no scratch read unwritten."""
    torch.manual_seed(5)
    monkeypatch.setattr(I, "f32_empty", poisoned_f32_empty)
    monkeypatch.setattr(K, "f32_empty", poisoned_f32_empty)
    shape, fcfg, bcfg, sm = ((3, 5, 10, 10), None, None, 2) if path == "heuristic" \
        else PATHS[path]
    dtype = torch.bfloat16
    n = 1
    for d in shape:
        n *= d

    def guarded():
        buf = torch.full((MARGIN + n + MARGIN,), float("nan"), dtype=dtype, device=device)
        return buf, buf[MARGIN:MARGIN + n].view(shape)

    x = _rand(shape, dtype, device)
    w = _rand((shape[1],), torch.float32, device, mean=1.0)
    b = _rand((shape[1],), torch.float32, device)
    dy = _rand(shape, dtype, device)
    ob, out = guarded()
    out2, m, rstd = I.instance_norm_fwd(x, w, b, EPS, config=fcfg, out=out)
    assert out2.data_ptr() == out.data_ptr()
    dxb, dx = guarded()
    dx2, dw, db = I.instance_norm_bwd(dy, x, w, b, m, rstd, config=bcfg, sm_count=sm,
                                      dx_out=dx)
    assert dx2.data_ptr() == dx.data_ptr()
    for name, buf, view in (("out", ob, out), ("dx", dxb, dx)):
        assert not torch.isnan(view).any(), f"{name}: element not written"
        assert torch.isnan(buf[:MARGIN]).all() and torch.isnan(buf[MARGIN + n:]).all(), \
            f"{name}: written outside the tensor"
    for t in (m, rstd, dw, db):
        assert not torch.isnan(t).any()
    ref = _reference(x.double(), w.double(), b.double(), dy.double())
    lp = _reference(x.float(), w, b, dy.float())
    _check("dweight", dw, ref[2], lp[2], dtype)
    _check("dbias", db, ref[3], lp[3], dtype)


@pytest.mark.parametrize("path", ["heuristic", "looped-bm2"])
def test_weight_grads_bitwise_repeatable(path, device):
    torch.manual_seed(6)
    shape, fcfg, bcfg, sm = ((5, 3, 9, 9), None, None, 2) if path == "heuristic" \
        else PATHS[path]
    x = _rand(shape, torch.float32, device)
    w = _rand((shape[1],), torch.float32, device, mean=1.0)
    b = _rand((shape[1],), torch.float32, device)
    dy = _rand(shape, torch.float32, device)
    _, m, rstd = I.instance_norm_fwd(x, w, b, EPS, config=fcfg)
    runs = [I.instance_norm_bwd(dy, x, w, b, m, rstd, config=bcfg, sm_count=sm)
            for _ in range(2)]
    for a, c in zip(*runs):
        assert torch.equal(_bits(a), _bits(c))


def test_nan_propagates(device):
    x = _rand((2, 3, 40), torch.float32, device)
    x[1, 2, 7] = float("nan")
    w = _rand((3,), torch.float32, device, mean=1.0)
    out, m, rstd = I.instance_norm_fwd(x, w, None, EPS)
    assert torch.isnan(out[1, 2]).all() and torch.isnan(rstd[1, 2])
    others = torch.ones(2, 3, dtype=torch.bool)
    others[1, 2] = False
    assert not torch.isnan(out[others]).any() and not torch.isnan(rstd[others]).any()
    dx, dw, db = I.instance_norm_bwd(torch.ones_like(x), x, w, None, m, rstd)
    assert torch.isnan(dx[1, 2]).all() and not torch.isnan(dx[others]).any()
    assert torch.isnan(dw[2]) and not torch.isnan(dw[:2]).any() and db is None


def test_empty(device):
    x = torch.empty((0, 3, 4, 4), device=device)
    w = torch.ones(3, device=device)
    out, m, rstd = I.instance_norm_fwd(x, w, w, EPS)
    assert out.shape == x.shape and m.shape == (0, 3)
    dx, dw, db = I.instance_norm_bwd(x, x, w, w, m, rstd)
    assert dx.shape == x.shape and torch.equal(dw, torch.zeros_like(w))


@contextlib.contextmanager
def _recorded_launches(monkeypatch):
    from triton.runtime.interpreter import InterpretedFunction
    names = []
    orig = InterpretedFunction.run

    def run(fn_self, *args, **kwargs):
        names.append(fn_self.fn.__name__)
        return orig(fn_self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(InterpretedFunction, "run", run)
        yield names


@pytest.mark.skipif(HAS_CUDA, reason="counts interpreter launches; CPU tensors only")
def test_launches(monkeypatch):
    """One launch forward; backward: the row kernel and one column-sum launch for dweight and
    dbias together (only the row kernel without parameters)."""
    x = _rand((2, 3, 8, 8), torch.float32, "cpu")
    w = _rand((3,), torch.float32, "cpu")
    with _recorded_launches(monkeypatch) as names:
        _, m, rstd = I.instance_norm_fwd(x, w, w, EPS)
        assert names == ["_fwd_rows"]
        names.clear()
        I.instance_norm_bwd(x, x, w, w, m, rstd)
        assert names == ["_bwd_rows", "sum_partials_kernel"]
        names.clear()
        I.instance_norm_bwd(x, x, None, None, m, rstd)
        assert names == ["_bwd_rows"]


def test_group_norm_dispatch(device):
    """GroupNorm with num_groups == C on a contiguous input runs these kernels (bitwise the
    same results as calling them directly)."""
    from fusednorm.kernels import group_norm as G
    torch.manual_seed(7)
    x = _rand((2, 4, 6, 6), torch.float32, device)
    w = _rand((4,), torch.float32, device, mean=1.0)
    b = _rand((4,), torch.float32, device)
    dy = _rand((2, 4, 6, 6), torch.float32, device)
    a = G.group_norm_fwd(x, w, b, 4, EPS, "")
    r = I.instance_norm_fwd(x, w, b, EPS)
    for u, v in zip(a, r):
        assert torch.equal(u, v)
    a = G.group_norm_bwd(dy, x, w, b, r[1], r[2], 4, "")
    r = I.instance_norm_bwd(dy, x, w, b, r[1], r[2])
    for u, v in zip(a, r):
        assert torch.equal(u, v)


def test_config_and_errors():
    for dtype in DTYPES:
        e = dtype.itemsize
        for s in (1, 49, 196, 784, 4096, 16384, 65536):
            f = fwd_config(s, dtype, "in", "cpu", s % 16 == 0)
            b = bwd_config(s, dtype, "in", "cpu", s % 16 == 0)
            assert b.split == 1
            if s % 16 == 0:  # aligned planes: one read up to the row-affine limit, fp32 too
                assert f.one_pass == (s <= LC.FWD_MAX_N_ROW_AFFINE[e]), (s, dtype, f)
            K.check_config(f, e, s, row_affine=True)
            K.check_config(b, e, s, row_affine=True)
    x = torch.zeros(2, 3, 100)
    with pytest.raises(ValueError, match="invalid config"):
        I.instance_norm_fwd(x, None, None, EPS, config=FwdConfig(64, 64, 1, 4, True))
    with pytest.raises(ValueError, match="split must be 1"):
        I.instance_norm_bwd(x, x, None, None, torch.zeros(2, 3), torch.ones(2, 3),
                            config=BwdConfig(64, 64, 1, 4, True, 2, False, 1))


def test_tune_targets(device):
    targets = I.tune_targets("instance_norm", (2, 3, 16, 16), torch.float32, "nchw", device)
    assert [t.family for t in targets] == ["instance_norm_fwd", "instance_norm_bwd"]
    assert targets[0].key == "fp32|256"
    assert targets[0].candidates[0] == fwd_config(256, torch.float32, "in")
    assert targets[1].candidates[0] == bwd_config(256, torch.float32, "in")
    for t in targets:
        assert 1 <= len(t.candidates) <= 8
        for cfg in t.candidates:
            t.run(cfg)
    # channels_last InstanceNorm runs GroupNorm's kernels (G = C): GroupNorm's targets
    cl = I.tune_targets("instance_norm", (2, 3, 4, 4), torch.float32, "nhwc", device)
    assert cl and all(t.family.startswith("group_norm_") for t in cl), [t.family for t in cl]
    assert I.tune_targets("group_norm", (2, 3, 16, 16), torch.float32, "nchw", device) == []


# ---------------------------------------------------------------------------------------
# offline evidence
# ---------------------------------------------------------------------------------------
def test_compile_covering_variants():
    """instance_norm.covering_variants (every backward config, bf16/fp32, aligned and
    element-wise rows; the widest forwards) compile for sm_80/sm_90 without spills."""
    n = sum(len(archs) for _, archs, _ in I.covering_variants())
    assert_no_spills(run_compile_workers(dict(module="fusednorm.kernels.instance_norm",
                                              fn="covering_variants")), n)


@pytest.mark.skipif(os.environ.get("FUSEDNORM_COMPILE_ALL") != "1",
                    reason="all ~600 variants x 2 archs x 2 alignments take ~30-60 CPU-minutes; "
                           "set FUSEDNORM_COMPILE_ALL=1 to run")
def test_compile_all_variants():
    """Every InstanceNorm variant (instance_norm.compile_variants, tuner candidates included)
    compiles for sm_80 and sm_90 without spills."""
    n = 4 * sum(1 for _ in I.compile_variants(True))
    assert_no_spills(run_compile_workers(dict(module="fusednorm.kernels.instance_norm",
                                              fn="compile_variants", archs=[80, 90])), n)


def test_benchmark_shape_evidence():
    """bench/bench_instance_norm.py's quick cases (32x64x128x128, bf16 and fp32): the
    heuristic's launches compiled for sm_90 with the launch-time specialization (the checks
    of test_triton_layer_norm.check_evidence; the (N, C) column sums are a few KB, fewer
    programs are fine there)."""
    cases = [[(32, 64, 128, 128), dt] for dt in ("bf16", "fp32")]
    results = run_compile_workers(dict(module="fusednorm.kernels.instance_norm",
                                       fn="evidence_launches", cases=cases))
    assert len(results) == 3 * len(cases)
    table = []
    dts = {"bf16": torch.bfloat16, "fp32": torch.float32}
    for i, (shape, dt) in enumerate(cases):
        launches = I.evidence_launches(shape, dts[dt])
        check_evidence(launches, results[3 * i:3 * i + 3],
                       f"IN {'x'.join(map(str, shape))} {dt}", table)
    print_evidence(table)


_SPEC1 = r"""
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusednorm.kernels.instance_norm import compile_variants
from fusednorm.kernels.layer_norm import compile_options
seen = set()
for fn, sig, ce, nw in compile_variants():
    name = fn.fn.__name__
    if name in seen:
        continue
    seen.add(name)
    ints = [k for k, t in sig.items() if t in ("i32", "i64")]
    for subset in (ints, ["C"]):
        sig1 = {k: ("constexpr" if k in subset else t) for k, t in sig.items()}
        ce1 = dict(ce, **{k: 1 for k in subset})
        try:
            triton.compile(ASTSource(fn=fn, signature=sig1, constexprs=ce1),
                           target=GPUTarget("cuda", 90, 32), options=compile_options(fn, nw))
            print("RESULT " + json.dumps({"kernel": name, "args": subset, "ok": True}))
        except Exception as e:
            print("RESULT " + json.dumps({"kernel": name, "args": subset, "ok": False,
                                          "err": f"{type(e).__name__}: {e}"[:300]}))
"""


def test_integer_arguments_specialized_to_one_compile():
    """The ROW_AFFINE variants (which test_triton_specialization does not reach: it takes the
    first LayerNorm variant of each kernel) compile with every integer argument equal to 1,
    as Triton specializes them on a GPU, and with C = 1 alone."""
    import json
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run([sys.executable, "-c", _SPEC1], cwd=here, env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr[-4000:]
    res = [json.loads(line[7:]) for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert {r["kernel"] for r in res} == {"_fwd_rows", "_fwd_looped", "_bwd_rows",
                                          "_bwd_looped"}
    failed = [r for r in res if not r["ok"]]
    assert not failed, failed
