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

from bench import common  # noqa: E402
from bench.common import Case, bytes_model, case_bytes  # noqa: E402

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


# ---------------------------------------------------------------- derived numbers and formats
def _rows():
    meta = {"gpu": "TestGPU", "torch": "t", "triton": "tr", "cuda": "c", "commit": "abc", "date": "d"}
    case = Case("layer_norm", (M, N), "bf16", model="Llama")
    rows = [common._row(case, "fwd", p, "ok", meta, ms=ms, max_err=0.0, first_call_s=0.1)
            for p, ms in (("torch", 0.4), ("torch.compile", 0.3), ("fusednorm-triton", 0.2))]
    rows.append(common._row(case, "fwd", "liger", "skipped: liger not importable", meta))
    return meta, rows


def test_derived_gbps_pct_speedup():
    meta, rows = _rows()
    common.add_derived(rows, copy_gbps=2000.0)
    tri = rows[2]
    b = 268_451_840
    assert tri["bytes"] == b
    assert tri["gbps"] == pytest.approx(b / 0.2e-3 / 1e9)            # 1342.26 GB/s
    assert tri["pct_copy"] == pytest.approx(100 * b / 0.2e-3 / 1e9 / 2000.0)
    assert tri["speedup_eager"] == pytest.approx(2.0)
    assert tri["speedup_compile"] == pytest.approx(1.5)
    assert rows[0]["speedup_eager"] == pytest.approx(1.0)
    assert rows[3]["gbps"] is None and rows[3]["speedup_eager"] is None


def test_markdown_table():
    meta, rows = _rows()
    common.add_derived(rows, copy_gbps=2000.0)
    md = common.rows_to_markdown(rows, dict(meta, copy_gbps=2000.0, copy_bytes=2**31))
    assert "TestGPU" in md and "2000.0 GB/s" in md
    line = next(ln for ln in md.splitlines() if "fusednorm-triton" in ln)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["fwd", "16384x4096", "bf16", "rows", "—", "fusednorm-triton", "0.2000",
                     "1342.3", "67.1", "2.00×", "1.50×"]
    assert "liger layer_norm: skipped: liger not importable (1 rows)" in md


def test_csv_json_round_trip(tmp_path):
    meta, rows = _rows()
    common.add_derived(rows, copy_gbps=2000.0)
    common.write_csv(tmp_path / "r.csv", rows)
    common.write_json(tmp_path / "r.json", meta, rows)
    back_csv = common.read_csv(tmp_path / "r.csv")
    meta2, back_json = common.read_json(tmp_path / "r.json")
    assert meta2 == meta
    assert back_json == rows
    assert len(back_csv) == len(rows)
    for a, b in zip(back_csv, rows):
        for k in common.ROW_FIELDS:
            if isinstance(b[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-12), k
            else:
                assert a[k] == b[k], k


def test_summary_lines():
    from bench.summary import format_summary
    meta, rows = _rows()
    common.add_derived(rows, copy_gbps=2000.0)
    text = format_summary(dict(meta, copy_gbps=2000.0), rows)
    last = text.splitlines()
    assert last[-1].split()[:5] == ["layer_norm", "fwd", "torch.compile", f"{268_451_840 / 0.3e-3 / 1e9:.1f}",
                                    f"{100 * 268_451_840 / 0.3e-3 / 1e9 / 2000:.1f}"]
    assert any("copy bandwidth: 2000.0 GB/s" in ln for ln in last)


def test_rotating_buffers_span_l2():
    small = Case("layer_norm", (1024, 1024), "bf16")            # 2 MiB x (x, dy)
    assert common.n_rotating(small, "cpu") == 1
    if torch.cuda.is_available():
        k = common.n_rotating(small, "cuda")
        assert k * small.numel * 2 * 2 >= 2 * common.l2_bytes("cuda") or k == 64


def test_cpu_timer_is_a_median():
    calls = []
    ms = common.time_cpu(lambda: calls.append(1), warmup_ms=0, rep_ms=0, min_iters=5)
    assert len(calls) >= 6 and 0 <= ms < 50


# ---------------------------------------------------------------- end to end on the CPU
def test_harness_end_to_end_cpu(tmp_path):
    """Reference backend and torch eager, a tiny LayerNorm, CPU timer, all output files."""
    case = Case("layer_norm", (8, 64), "fp32", model="tiny")
    out = tmp_path / "out"
    res = common.run_cases([case], ["fusednorm-torch", "torch", "liger"], "cpu", out,
                           warmup_ms=1, rep_ms=2, copy_bytes=2**20, progress=False)
    rows = res["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {(r["provider"], r["pass"]) for r in ok} == {
        (p, ps) for p in ("fusednorm-torch", "torch") for ps in ("fwd", "bwd", "fwd+bwd")}
    for r in ok:
        assert r["ms"] > 0 and r["gbps"] > 0 and r["pct_copy"] > 0 and r["speedup_eager"] > 0
        assert r["bytes"] == case_bytes(case, r["pass"])
        assert r["gpu"] and r["torch"] == torch.__version__ and r["commit"]
    fwd = next(r for r in ok if r["provider"] == "fusednorm-torch" and r["pass"] == "fwd")
    assert fwd["max_err"] < 1e-5                              # agrees with F.layer_norm
    liger = [r for r in rows if r["provider"] == "liger"]
    assert len(liger) == 3 and all(r["status"].startswith("skipped: ") for r in liger)
    for name in ("results.json", "results.csv", "table.md"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["copy_gbps"] > 0 and len(data["rows"]) == len(rows)
    with open(out / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    md = (out / "table.md").read_text()
    assert md.count("| fusednorm-torch |") == 3 and md.count("| torch |") == 3
    pytest.importorskip("matplotlib")
    assert (out / "plot_layer_norm_fp32_rows.png").stat().st_size > 0


def test_harness_records_errors(tmp_path):
    """A provider that raises gets error rows, printed, and the others still run."""
    def boom(case, p):
        def f(x, residual=None):
            raise RuntimeError("kaboom")
        return f
    common.PROVIDERS["_boom"] = common.Provider("_boom", boom)
    try:
        res = common.run_cases([Case("rms_norm", (4, 32), "fp32")], ["_boom", "torch"], "cpu", tmp_path,
                               warmup_ms=0, rep_ms=1, copy_bytes=2**20, progress=False, plots=False)
    finally:
        del common.PROVIDERS["_boom"]
    st = {(r["provider"], r["pass"]): r["status"] for r in res["rows"]}
    assert len(st) == 6
    assert all(st[("_boom", ps)] == "error: RuntimeError: kaboom" for ps in common.PASSES)
    assert all(st[("torch", ps)] == "ok" for ps in common.PASSES)


def test_harness_time_budget(tmp_path):
    """Past the budget no case starts; its rows say why."""
    res = common.run_cases([Case("rms_norm", (4, 32), "fp32"), Case("group_norm", (2, 4, 3, 3), "fp32", groups=2)],
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
    quick = get_cases(list(common.OPS), quick=True)
    have = {(c.op, c.shape, c.dtype, c.layout) for c in quick}
    for n in (1024, 4096, 8192, 16384):
        assert ("layer_norm", (16384, n), "bf16", "rows") in have
        assert ("rms_norm", (16384, n), "bf16", "rows") in have
    for dt in ("bf16", "fp32"):
        for lay in ("nchw", "nhwc"):
            assert ("group_norm", (32, 320, 64, 64), dt, lay) in have
            assert ("batch_norm", (256, 256, 28, 28), dt, lay) in have
        assert ("instance_norm", (32, 64, 128, 128), dt, "nchw") in have
    assert sum(c.compile for c in quick) <= 6   # compile time dominates the quick run
