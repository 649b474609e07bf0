"""The benchmark harness on the CPU: bytes models, report formatting, and an end-to-end run.

The numbers of a CPU run mean nothing; what is tested is that the harness measures, derives
and writes what it claims to (bench/README.md).
"""
import csv
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import cases, inputs, providers, report, runner, timing  # noqa: E402
from bench.cases import Case, bytes_model, case_bytes  # noqa: E402

M, N = 16384, 4096
NUMEL = M * N


# ---------------------------------------------------------------- bytes models (exact numbers)
@pytest.mark.parametrize("op,pass_,variant,expected", [
    # bf16 activations and bf16 weight+bias of N elements
    ("layer_norm", "fwd", "", 2 * NUMEL * 2 + 2 * N * 2),                      # 268_451_840
    ("layer_norm", "bwd", "", 3 * NUMEL * 2 + N * 2 + 2 * N * 2),              # 402_677_760
    ("layer_norm", "fwd+bwd", "", 2 * NUMEL * 2 + 2 * N * 2 + 3 * NUMEL * 2 + 3 * N * 2),
    ("layer_norm", "fwd", "prenorm", 4 * NUMEL * 2 + 2 * N * 2),
    ("layer_norm", "bwd", "prenorm", 4 * NUMEL * 2 + 3 * N * 2),
    ("rms_norm", "fwd", "", 2 * NUMEL * 2 + N * 2),                            # weight only
    ("rms_norm", "bwd", "", 3 * NUMEL * 2 + N * 2 + N * 2),
])
def test_bytes_model_layer_norm(op, pass_, variant, expected):
    assert bytes_model(op, pass_, NUMEL, 2, N, 2, variant) == expected
    assert case_bytes(Case(op, (M, N), "bf16", variant=variant), pass_) == expected


def test_bytes_model_known_values():
    assert bytes_model("layer_norm", "fwd", NUMEL, 2, N, 2) == 268_451_840
    assert bytes_model("layer_norm", "bwd", NUMEL, 2, N, 2) == 402_677_760


def test_bytes_model_conv_norms():
    # BN (256, 256, 28, 28) bf16, fp32 params: train fwd 3s, bwd 5s per element
    c = Case("batch_norm", (256, 256, 28, 28), "bf16", "nhwc")
    n = 256 * 256 * 28 * 28
    assert case_bytes(c, "fwd") == 3 * n * 2 + 2 * 256 * 4
    assert case_bytes(c, "bwd") == 5 * n * 2 + 3 * 256 * 4
    assert case_bytes(Case("batch_norm", c.shape, "bf16", variant="eval"), "fwd") == 2 * n * 2 + 2 * 256 * 4
    # GN / IN: fwd 2s, bwd 3s, params in the activation dtype
    g = Case("group_norm", (32, 320, 64, 64), "fp32", groups=32)
    n = 32 * 320 * 64 * 64
    assert case_bytes(g, "fwd") == 2 * n * 4 + 2 * 320 * 4
    assert case_bytes(g, "bwd") == 3 * n * 4 + 3 * 320 * 4
    i = Case("instance_norm", (32, 64, 128, 128), "bf16")
    n = 32 * 64 * 128 * 128
    assert case_bytes(i, "fwd+bwd") == 5 * n * 2 + 5 * 64 * 2
    with pytest.raises(ValueError, match="no model"):
        bytes_model("layer_norm", "sideways", 1, 2)


def test_bytes_model_layer_norm_2d():
    # LayerNorm2d (ConvNeXt-T stage 1, batch 32): fwd 2s (read x, write y), bwd 3s (read x, dy,
    # write dx) per element, as LN; weight and bias of C in the activation dtype
    n = 32 * 96 * 56 * 56
    for lay in ("nchw", "nhwc"):
        c = Case("layer_norm_2d", (32, 96, 56, 56), "bf16", lay)
        assert c.layout == lay and c.n_param == 96 and c.param_dtype == torch.bfloat16
        assert case_bytes(c, "fwd") == 2 * n * 2 + 2 * 96 * 2 == 38_535_552
        assert case_bytes(c, "bwd") == 3 * n * 2 + 3 * 96 * 2 == 57_803_328
        assert case_bytes(c, "fwd+bwd") == 5 * n * 2 + 5 * 96 * 2
    f = Case("layer_norm_2d", (32, 96, 56, 56), "fp32")
    assert f.layout == "nchw" and f.param_dtype == torch.float32
    assert case_bytes(f, "fwd") == 2 * n * 4 + 2 * 96 * 4
    assert case_bytes(f, "bwd") == 3 * n * 4 + 3 * 96 * 4
    assert bytes_model("layer_norm_2d", "fwd", n, 2, 96, 2) == bytes_model("layer_norm", "fwd", n, 2, 96, 2)


# ---------------------------------------------------------------- derived numbers and formats
def _rows():
    meta = {"gpu": "TestGPU", "torch": "t", "triton": "tr", "cuda": "c", "commit": "abc", "date": "d"}
    case = Case("layer_norm", (M, N), "bf16", model="Llama")
    # wall ms, then the kernel-only time and how it was measured
    kt = {"torch": (0.35, "cuda-graph", None),
          "torch.compile": (0.25, "profiler", "graph capture failed: RuntimeError: boom"),
          "fusednorm-triton": (0.16, "cuda-graph", None)}
    rows = [runner.make_row(case, "fwd", p, "ok", meta, ms=ms, max_err=0.0, first_call_s=0.1,
                            kernel_ms=kt[p][0], kernel_method=kt[p][1], kernel_note=kt[p][2])
            for p, ms in (("torch", 0.4), ("torch.compile", 0.3), ("fusednorm-triton", 0.2))]
    rows.append(runner.make_row(case, "fwd", "liger", "skipped: liger not importable", meta))
    return meta, rows


def test_derived_gbps_pct_speedup():
    meta, rows = _rows()
    runner.add_derived(rows, copy_gbps=2000.0)
    tri = rows[2]
    b = 268_451_840
    assert tri["bytes"] == b
    assert tri["gbps"] == pytest.approx(b / 0.2e-3 / 1e9)            # 1342.26 GB/s
    assert tri["pct_copy"] == pytest.approx(100 * b / 0.2e-3 / 1e9 / 2000.0)
    assert tri["speedup_eager"] == pytest.approx(2.0)
    assert tri["speedup_compile"] == pytest.approx(1.5)
    assert rows[0]["speedup_eager"] == pytest.approx(1.0)
    assert rows[3]["gbps"] is None and rows[3]["speedup_eager"] is None
    # kernel-only time: its own GB/s and % of copy; the speed-ups stay on wall time
    assert tri["kernel_gbps"] == pytest.approx(b / 0.16e-3 / 1e9)     # 1677.8 GB/s
    assert tri["kernel_pct_copy"] == pytest.approx(100 * b / 0.16e-3 / 1e9 / 2000.0)
    assert rows[1]["kernel_gbps"] == pytest.approx(b / 0.25e-3 / 1e9)
    assert rows[3]["kernel_gbps"] is None and rows[3]["kernel_pct_copy"] is None


def test_derived_without_kernel_time():
    """A row whose kernel time is missing (CPU, or both methods failed) keeps its wall numbers."""
    case = Case("rms_norm", (4, 32), "fp32")
    r = runner.make_row(case, "fwd", "torch", "ok", {}, ms=0.5, kernel_method="n/a (cpu)")
    runner.add_derived([r], copy_gbps=100.0)
    assert r["gbps"] > 0 and r["pct_copy"] > 0
    assert r["kernel_ms"] is None and r["kernel_gbps"] is None and r["kernel_pct_copy"] is None


def test_markdown_table():
    meta, rows = _rows()
    runner.add_derived(rows, copy_gbps=2000.0)
    md = report.rows_to_markdown(rows, dict(meta, copy_gbps=2000.0, copy_bytes=2**31))
    assert "TestGPU" in md and "2000.0 GB/s" in md
    line = next(ln for ln in md.splitlines() if "fusednorm-triton" in ln)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["fwd", "16384x4096", "bf16", "rows", "—", "fusednorm-triton", "0.2000",
                     "1342.3", "67.1", "0.1600", "1677.8", "83.9", "cuda-graph", "2.00×", "1.50×"]
    header = next(ln for ln in md.splitlines() if ln.startswith("| pass |"))
    assert [c.strip() for c in header.strip("|").split("|")][6:13] == [
        "wall ms", "wall GB/s", "wall % copy", "kernel ms", "kernel GB/s", "kernel % copy", "kernel by"]
    assert "liger layer_norm: skipped: liger not importable (1 rows)" in md
    # a fallback from the CUDA graph is listed with its reason
    assert ("torch.compile layer_norm: kernel time by profiler (graph capture failed: "
            "RuntimeError: boom) (1 rows)") in md


def test_csv_json_round_trip(tmp_path):
    meta, rows = _rows()
    runner.add_derived(rows, copy_gbps=2000.0)
    report.write_csv(tmp_path / "r.csv", rows)
    report.write_json(tmp_path / "r.json", meta, rows)
    back_csv = report.read_csv(tmp_path / "r.csv")
    meta2, back_json = report.read_json(tmp_path / "r.json")
    assert meta2 == meta
    assert back_json == rows
    assert len(back_csv) == len(rows)
    for a, b in zip(back_csv, rows):
        for k in report.ROW_FIELDS:
            if isinstance(b[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-12), k
            else:
                assert a[k] == b[k], k


def test_summary_lines():
    from bench.summary import format_summary
    meta, rows = _rows()
    runner.add_derived(rows, copy_gbps=2000.0)
    text = format_summary(dict(meta, copy_gbps=2000.0), rows)
    last = text.splitlines()
    b = 268_451_840
    assert last[-1].split() == ["layer_norm", "fwd", "torch.compile", f"{b / 0.3e-3 / 1e9:.1f}",
                                f"{100 * b / 0.3e-3 / 1e9 / 2000:.1f}",     # wall
                                f"{b / 0.25e-3 / 1e9:.1f}",
                                f"{100 * b / 0.25e-3 / 1e9 / 2000:.1f}",    # kernel
                                "1.33", "1.00", "1"]
    assert any("copy bandwidth: 2000.0 GB/s" in ln for ln in last)
    assert any(ln.startswith("kernel time by: cuda-graph (2 rows), profiler (1 rows)") for ln in last)


def test_rotating_buffers_span_l2():
    small = Case("layer_norm", (1024, 1024), "bf16")            # 2 MiB x (x, dy)
    assert inputs.n_rotating(small, "cpu") == 1
    if torch.cuda.is_available():
        k = inputs.n_rotating(small, "cuda")
        assert k * small.numel * 2 * 2 >= 2 * inputs.l2_bytes("cuda") or k == 64


def test_cpu_timer_is_a_median():
    calls = []
    ms = timing.time_cpu(lambda: calls.append(1), warmup_ms=0, rep_ms=0, min_iters=5)
    assert len(calls) >= 6 and 0 <= ms < 50


# ---------------------------------------------------------------- kernel-only time: method choice
def test_kernel_time_methods_and_fallbacks():
    def never():
        raise AssertionError("make_fn must not be called")

    def ok(v):
        return lambda make_fn, n_calls, *a: v / n_calls

    def fail(msg):
        def f(*a):
            raise RuntimeError(msg)
        return f

    kt = timing.kernel_time
    assert kt(never, "cpu") == {"kernel_ms": None, "kernel_method": "n/a (cpu)", "kernel_note": None}
    assert kt(never, "cuda", method="off")["kernel_method"] == "off"
    assert kt(None, "cuda", n_calls=4, graph=ok(2.0), profiler=fail("x")) == {
        "kernel_ms": 0.5, "kernel_method": "cuda-graph", "kernel_note": None}
    # capture refused: the profiler's device time, and why
    assert kt(None, "cuda", graph=fail("operation not permitted when stream is capturing"),
              profiler=ok(0.3)) == {
        "kernel_ms": 0.3, "kernel_method": "profiler",
        "kernel_note": "graph capture failed: RuntimeError: operation not permitted when stream is capturing"}
    r = kt(None, "cuda", graph=fail("a"), profiler=fail("b"))
    assert r == {"kernel_ms": None, "kernel_method": "failed",
                 "kernel_note": "graph capture failed: RuntimeError: a; profiler failed: RuntimeError: b"}
    # a forced method does not fall back
    assert kt(None, "cuda", method="graph", graph=fail("a"), profiler=ok(1.0))["kernel_method"] == "failed"
    assert kt(None, "cuda", method="profiler", graph=ok(9.0), profiler=ok(1.0))["kernel_ms"] == 1.0
    with pytest.raises(ValueError, match="method='sideways'"):
        kt(None, "cuda", method="sideways")


def test_device_time_sums_device_activities():
    from torch.autograd import DeviceType

    class Ev:
        def __init__(self, dev, us):
            self.device_type = dev
            self.time_range = type("R", (), {"elapsed_us": lambda self, us=us: us})()
    evs = [Ev(DeviceType.CPU, 100.0), Ev(DeviceType.CUDA, 12.5), Ev(DeviceType.CUDA, 7.5)]
    assert timing.device_time_us(evs) == 20.0      # the CPU-side launch is not device time


# ---------------------------------------------------------------- kernel-only time on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kernel_time_on_gpu():
    """A 512 MB copy: graph replay and profiler agree with each other and with do_bench."""
    x = torch.randn(1 << 26, device="cuda")
    y = torch.empty_like(x)
    make = lambda: (lambda: y.copy_(x))  # noqa: E731
    wall = timing.time_cuda(make(), 2, 10)
    g = timing.graph_time(make, 1, 2, 10)
    p = timing.profiler_time(make, 1)
    assert 0 < g and 0 < p
    assert abs(g - p) / p < 0.25 and abs(g - wall) / wall < 0.25, (g, p, wall)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_run_case_kernel_time_on_gpu():
    """Every pass (the bwd pass replays retained graphs) gets a kernel time; torch eager's is a
    CUDA graph replay and not longer than its wall time."""
    case = Case("layer_norm", (4096, 1024), "bf16")
    meta = {"gpu": "g", "torch": "t", "triton": "tr", "cuda": "c", "commit": "x", "date": "d"}
    names = ["torch"] + [n for n in ("fusednorm-triton", "fusednorm-cuda")
                         if providers.PROVIDERS[n].available("cuda") is True]
    rows = runner.run_case(case, [providers.PROVIDERS[n] for n in names], "cuda", meta,
                           warmup_ms=2, rep_ms=10)
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["status"] == "ok" or r["status"].startswith("skipped:") for r in rows), \
        [r["status"] for r in rows]
    assert sum(r["provider"] == "torch" for r in ok) == 3
    for r in ok:
        assert r["kernel_method"] in ("cuda-graph", "profiler"), r
        assert r["kernel_ms"] > 0
    for r in ok:
        if r["provider"] == "torch":
            assert r["kernel_method"] == "cuda-graph", r["kernel_note"]
            assert r["kernel_ms"] <= 1.1 * r["ms"], r


# ---------------------------------------------------------------- end to end on the CPU
def test_harness_end_to_end_cpu(tmp_path):
    """Reference backend and torch eager, a tiny LayerNorm, CPU timer, all output files."""
    case = Case("layer_norm", (8, 64), "fp32", model="tiny")
    out = tmp_path / "out"
    res = runner.run_cases([case], ["fusednorm-torch", "torch", "liger"], "cpu", out,
                           warmup_ms=1, rep_ms=2, copy_bytes=2**20, progress=False)
    rows = res["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {(r["provider"], r["pass"]) for r in ok} == {
        (p, ps) for p in ("fusednorm-torch", "torch") for ps in ("fwd", "bwd", "fwd+bwd")}
    for r in ok:
        assert r["ms"] > 0 and r["gbps"] > 0 and r["pct_copy"] > 0 and r["speedup_eager"] > 0
        assert r["bytes"] == case_bytes(case, r["pass"])
        assert r["gpu"] and r["torch"] == torch.__version__ and r["commit"]
        # no kernel-only time on a CPU: said so, not faked
        assert r["kernel_method"] == "n/a (cpu)" and r["kernel_ms"] is None and r["kernel_gbps"] is None
    fwd = next(r for r in ok if r["provider"] == "fusednorm-torch" and r["pass"] == "fwd")
    assert fwd["max_err"] < 1e-5                              # agrees with F.layer_norm
    liger = [r for r in rows if r["provider"] == "liger"]
    assert len(liger) == 3 and all(r["status"].startswith("skipped: ") for r in liger)
    for name in ("results.json", "results.csv", "table.md"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["copy_gbps"] > 0 and len(data["rows"]) == len(rows)
    assert data["meta"]["kernel_time"] == "n/a (cpu)" and data["meta"]["tuned_configs"]
    with open(out / "results.csv") as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == len(rows)
    assert {"kernel_ms", "kernel_gbps", "kernel_pct_copy", "kernel_method"} <= set(back[0])
    assert all(r["kernel_method"] == "n/a (cpu)" for r in back if r["status"] == "ok")
    md = (out / "table.md").read_text()
    assert md.count("| fusednorm-torch |") == 3 and md.count("| torch |") == 3
    assert "| kernel GB/s |" in md and "| wall GB/s |" in md and "| n/a (cpu) |" in md
    pytest.importorskip("matplotlib")
    assert (out / "plot_layer_norm_fp32_rows.png").stat().st_size > 0


def test_harness_records_errors(tmp_path):
    """A provider that raises gets error rows, printed, and the others still run."""
    def boom(case, p):
        def f(x, residual=None):
            raise RuntimeError("kaboom")
        return f
    providers.PROVIDERS["_boom"] = providers.Provider("_boom", boom)
    try:
        res = runner.run_cases([Case("rms_norm", (4, 32), "fp32")], ["_boom", "torch"], "cpu", tmp_path,
                               warmup_ms=0, rep_ms=1, copy_bytes=2**20, progress=False, plots=False)
    finally:
        del providers.PROVIDERS["_boom"]
    st = {(r["provider"], r["pass"]): r["status"] for r in res["rows"]}
    assert len(st) == 6
    assert all(st[("_boom", ps)] == "error: RuntimeError: kaboom" for ps in cases.PASSES)
    assert all(st[("torch", ps)] == "ok" for ps in cases.PASSES)


def test_harness_time_budget(tmp_path):
    """Past the budget no case starts; its rows say why."""
    res = runner.run_cases([Case("rms_norm", (4, 32), "fp32"), Case("group_norm", (2, 4, 3, 3), "fp32", groups=2)],
                           ["torch"], "cpu", tmp_path, warmup_ms=0, rep_ms=1, copy_bytes=2**20,
                           budget_s=0.0, progress=False, plots=False)
    assert len(res["rows"]) == 6
    assert all(r["status"] == "skipped: time budget 0s spent" for r in res["rows"])
    assert "skipped: time budget" in (tmp_path / "table.md").read_text()


def test_run_main_cpu_selfcheck(capsys):
    """`python bench/run.py` on a machine without CUDA: self-check table, then the notice."""
    if torch.cuda.is_available():
        pytest.skip("the self-check-only path is the CPU-machine behaviour")
    from bench.run import main
    rc = main(["--norms", "ln,rms"])
    out = capsys.readouterr().out
    assert "layer_norm" in out and "rms_norm" in out and "self-check:" in out
    assert "need a CUDA device" in out
    assert rc == (0 if "self-check: PASS" in out else 1)


def test_parse_norms():
    from bench.run import get_cases, parse_norms
    assert parse_norms("ln,gn,in,bn,rms") == ["layer_norm", "group_norm", "instance_norm",
                                               "batch_norm", "rms_norm"]
    with pytest.raises(SystemExit, match="unknown norm"):
        parse_norms("ln,xx")
    quick = get_cases(list(cases.OPS), quick=True)
    have = {(c.op, c.shape, c.dtype, c.layout) for c in quick}
    for n in (1024, 4096, 8192, 16384):
        assert ("layer_norm", (16384, n), "bf16", "rows") in have
        assert ("rms_norm", (16384, n), "bf16", "rows") in have
    for dt in ("bf16", "fp32"):
        for lay in ("nchw", "nhwc"):
            assert ("group_norm", (32, 320, 64, 64), dt, lay) in have
            assert ("batch_norm", (256, 256, 28, 28), dt, lay) in have
        assert ("instance_norm", (32, 64, 128, 128), dt, "nchw") in have
    for C, hw in ((96, 56), (384, 14)):
        for lay in ("nchw", "nhwc"):
            assert ("layer_norm_2d", (32, C, hw, hw), "bf16", lay) in have
    assert sum(c.compile for c in quick) <= 6   # compile time dominates the quick run
    assert parse_norms("ln2d,ln") == ["layer_norm_2d", "layer_norm"]


# ---------------------------------------------------------------- LayerNorm2d (timm's, ConvNeXt)
def test_layer_norm_2d_cases():
    from bench import bench_layer_norm_2d
    stages = [(32, 96, 56, 56), (32, 192, 28, 28), (32, 384, 14, 14), (32, 768, 7, 7)]
    full = cases.get_cases(["layer_norm_2d"], quick=False)
    assert full == bench_layer_norm_2d.cases(False)
    assert sorted((c.shape, c.dtype, c.layout) for c in full) == sorted(
        [(s, "bf16", lay) for s in stages for lay in ("nchw", "nhwc")]
        + [((32, 96, 56, 56), "fp32", lay) for lay in ("nchw", "nhwc")])
    quick = cases.get_cases(["layer_norm_2d"], quick=True)
    assert [(c.shape, c.dtype, c.layout) for c in quick] == [
        (s, "bf16", lay) for s in (stages[0], stages[2]) for lay in ("nchw", "nhwc")]
    assert sum(c.compile for c in quick) == 1
    assert len({c.key for c in full}) == len(full)
    for c in full + quick:
        assert c.op == "layer_norm_2d" and not c.variant and c.groups == 0 and c.model
        assert c.passes == cases.PASSES
    # every op has its cases file, a self-check shape and a tuner stand-in
    from bench import selfcheck, tune
    for op in cases.OPS:
        assert op in cases.NORM_MODULES and op in selfcheck.SHAPES and op in tune.TINY_SHAPES
        assert op in tune.KERNEL_MODULES


def _ln2d(shape=(2, 12, 5, 7), dtype="fp32", layout="nchw"):
    case = Case("layer_norm_2d", shape, dtype, layout)
    return case, inputs.make_params(case, "cpu"), inputs.make_buffers(case, "cpu", 1)[0]


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_layer_norm_2d_eager_is_timm(layout):
    """The "torch" provider is timm's LayerNorm2d: same values, same (channels_last) strides,
    eps 1e-6; fusednorm's reference provider agrees with it and keeps the input's layout."""
    case, p, b = _ln2d(layout=layout)
    x = b["x"]
    assert x.is_contiguous(memory_format=torch.channels_last) == (layout == "nhwc")
    y = providers.eager(case, p)(x)
    C = case.shape[1]
    want = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (C,), p["weight"], p["bias"],
                                          1e-6).permute(0, 3, 1, 2)
    assert torch.equal(y, want) and y.stride() == want.stride()
    assert y.is_contiguous(memory_format=torch.channels_last)     # what timm returns
    ref = providers.PROVIDERS["fusednorm-torch"].build(case, p)(x)
    assert ref.stride() == x.stride()
    torch.testing.assert_close(ref, y, rtol=1e-5, atol=1e-5)
    # eps is timm's 1e-6 (not the 1e-5 of the other ops) in both: visible where var ~ eps
    xs = 1e-3 * x.detach()
    ys = providers.eager(case, p)(xs)
    torch.testing.assert_close(providers.PROVIDERS["fusednorm-torch"].build(case, p)(xs), ys,
                               rtol=1e-4, atol=1e-4)
    y5 = torch.nn.functional.layer_norm(xs.permute(0, 2, 3, 1), (C,), p["weight"], p["bias"],
                                        1e-5).permute(0, 3, 1, 2)
    assert (ys - y5).abs().max() > 0.1

    from bench.bench_models import library_missing
    if library_missing("timm"):
        pytest.skip(library_missing("timm"))
    from timm.layers import LayerNorm2d
    m = LayerNorm2d(C)
    with torch.no_grad():
        m.weight.copy_(p["weight"])
        m.bias.copy_(p["bias"])
    t = m(x)
    assert m.eps == 1e-6 and torch.equal(y, t) and y.stride() == t.stride()


def test_layer_norm_2d_provider_support():
    case, _, _ = _ln2d()
    for name in ("fusednorm-triton", "fusednorm-cuda", "fusednorm-torch", "torch", "torch.compile"):
        assert providers.PROVIDERS[name].supports(case) is True, name
    for name in ("liger", "apex"):
        assert providers.PROVIDERS[name].supports(case) == f"{name} has no layer_norm_2d"
    assert isinstance(providers.PROVIDERS["torch.compile"].supports(
        Case("layer_norm_2d", (32, 96, 56, 56), "fp32", compile=False)), str)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_harness_layer_norm_2d_cpu(tmp_path, layout):
    """A tiny LayerNorm2d through the harness: reference backend and torch eager measured (bytes
    from the model, forward agreeing with timm's formula), liger and apex skipped with a reason."""
    case = Case("layer_norm_2d", (2, 12, 5, 7), "fp32", layout, model="tiny")
    res = runner.run_cases([case], ["fusednorm-torch", "torch", "liger", "apex"], "cpu", tmp_path,
                           warmup_ms=0, rep_ms=1, copy_bytes=2**20, progress=False, plots=False)
    rows = res["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {(r["provider"], r["pass"]) for r in ok} == {
        (p, ps) for p in ("fusednorm-torch", "torch") for ps in cases.PASSES}
    for r in ok:
        assert (r["op"], r["layout"], r["shape"]) == ("layer_norm_2d", layout, "2x12x5x7")
        assert r["bytes"] == case_bytes(case, r["pass"]) and r["gbps"] > 0
    fwd = next(r for r in ok if r["provider"] == "fusednorm-torch" and r["pass"] == "fwd")
    assert fwd["max_err"] < 1e-5 and fwd["speedup_eager"] > 0
    skipped = [r for r in rows if r["provider"] in ("liger", "apex")]
    assert len(skipped) == 6 and all(r["status"].startswith("skipped: ") for r in skipped)
    md = (tmp_path / "table.md").read_text()
    assert "## layer_norm_2d" in md and md.count("| fusednorm-torch |") == 3


def test_harness_layer_norm_2d_unsupported_backend(tmp_path, monkeypatch):
    """A backend without layer_norm_2d (the CUDA extension before it has the op) gives
    "skipped" rows, as any provider/case pair it cannot run; the run goes on."""
    providers.import_fusednorm()
    from fusednorm import _backend
    name = providers.reference_backend()
    mod = _backend.get(name)
    monkeypatch.setattr(mod, "SUPPORTED", set(mod.SUPPORTED) - {"layer_norm_2d"})
    monkeypatch.setattr(_backend, "_chosen", {})        # the resolution cache: restored after
    case = Case("layer_norm_2d", (2, 12, 5, 7), "fp32")
    res = runner.run_cases([case], ["fusednorm-torch", "torch"], "cpu", tmp_path, warmup_ms=0,
                           rep_ms=1, copy_bytes=2**20, progress=False, plots=False)
    st = {(r["provider"], r["pass"]): r["status"] for r in res["rows"]}
    for ps in cases.PASSES:
        assert st[("fusednorm-torch", ps)] == ("skipped: fusednorm.layer_norm_2d: backend "
                                               f"{name!r} does not implement layer_norm_2d yet")
        assert st[("torch", ps)] == "ok"


def test_selfcheck_covers_layer_norm_2d(capsys):
    """The self-check (what `make bench` runs without a GPU) checks layer_norm_2d on every
    available backend, within tolerance."""
    from bench.selfcheck import selfcheck
    assert selfcheck(device="cpu", norms=("layer_norm_2d",)) is True
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("layer_norm_2d ")]
    assert len(lines) == 2 and "ok   fwd" in lines[0] and "FAIL" not in out and "ERROR" not in out
