"""bench/tune.py on the CPU: a fake kernel module provides TuneTargets with made-up times, so
what is tested is the plumbing -- which candidate wins, the table's format and merge, the time
budget, that kernels/_tuning.lookup reads back what was written, and the --dry-run path (with
the fake module and with the real kernel modules on Triton's interpreter)."""
import dataclasses
import json
import os
import re
import sys
import types

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import tune  # noqa: E402
from bench.cases import Case  # noqa: E402
from bench.providers import import_fusednorm  # noqa: E402

import_fusednorm()
from fusednorm.kernels import _tuning  # noqa: E402
from fusednorm.kernels._tuning import TuneTarget  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Cfg:
    block_n: int
    num_warps: int


H, A, B = Cfg(1024, 4), Cfg(1024, 8), Cfg(2048, 8)   # H: the "heuristic's" (first) candidate


def fake_module(times, ran=None, calls=None, groups_param=False):
    """A kernel module whose tune_targets returns one target per case: family "<op>_fwd",
    key "<dtype>|<last dim>", candidates (H, A, B). ``times[cfg]``: the ms the fake timer
    reports (an Exception instance: that candidate raises)."""
    def tune_targets(op, shape, dtype, layout, device, **kw):
        if calls is not None:
            calls.append((op, tuple(shape), dtype, layout, device, kw))

        def run(cfg):
            if ran is not None:
                ran.append(cfg)
            if isinstance(times.get(cfg), Exception):
                raise times[cfg]
        key = f"{str(dtype).split('.')[-1]}|{shape[-1]}"
        return [TuneTarget(f"{op}_fwd", key, [H, A, B], run, nbytes=4 * shape[-1])]
    if groups_param:
        def with_groups(op, shape, dtype, layout, device, num_groups=None):
            return tune_targets(op, shape, dtype, layout, device, num_groups=num_groups)
        return types.SimpleNamespace(__name__="fake.kernels", tune_targets=with_groups)
    return types.SimpleNamespace(__name__="fake.kernels", tune_targets=tune_targets)


def fake_timer(times, clock=None):
    def time_fn(target, cfg):
        if clock is not None:
            clock[0] += 1.0                    # every candidate costs one fake second
        target.run(cfg)
        return times[cfg], "fake"
    return time_fn


LN = Case("layer_norm", (16384, 4096), "bf16")
LN2 = Case("layer_norm", (16384, 1024), "bf16")


def _tune(cases, times, clock=None, **kw):
    """tune.tune with the fake module and timer; ``clock``: a one-element list of fake
    seconds that each timed candidate advances by one."""
    mod = fake_module(times)
    kw.setdefault("min_gain", 0.03)
    if clock is not None:
        kw["clock"] = lambda: clock[0]
    return tune.tune(cases, "cpu", time_fn=fake_timer(times, clock), get_module=lambda op: mod,
                     log=lambda *a: None, **kw)


# ---------------------------------------------------------------- choosing the winner
def test_best_is_fastest_candidate():
    res = _tune([LN], {H: 1.0, A: 0.7, B: 0.8})
    (r,) = res["results"]
    assert (r["family"], r["key"], r["status"]) == ("layer_norm_fwd", "bfloat16|4096", "tuned")
    assert r["heuristic"] == H and r["heuristic_ms"] == 1.0
    assert r["best"] == A and r["best_ms"] == 0.7
    assert res["complete"] and tune.entries_of(res["results"]) == {
        "layer_norm_fwd": {"bfloat16|4096": {"block_n": 1024, "num_warps": 8}}}


def test_heuristic_kept_within_min_gain():
    # 2% faster is noise at min_gain 3%: the heuristic's config is the entry
    (r,) = _tune([LN], {H: 1.0, A: 0.98, B: 1.2})["results"]
    assert r["best"] == H and r["best_ms"] == 1.0
    (r,) = _tune([LN], {H: 1.0, A: 0.98, B: 1.2}, min_gain=0.0)["results"]
    assert r["best"] == A


def test_failing_candidates():
    # a candidate the kernel refuses is recorded with its error and never wins
    (r,) = _tune([LN], {H: 1.0, A: RuntimeError("out of resources"), B: 0.9})["results"]
    assert r["best"] == B
    assert r["candidates"][1] == (A, None, "RuntimeError: out of resources")
    # the heuristic itself failing: the fastest of the others, no speed-up to quote
    (r,) = _tune([LN], {H: RuntimeError("no"), A: 0.8, B: 0.9})["results"]
    assert r["best"] == A and r["heuristic_ms"] is None
    # nothing ran: no entry
    res = _tune([LN], {H: RuntimeError("a"), A: RuntimeError("b"), B: RuntimeError("c")})
    assert res["results"][0]["status"] == "failed: RuntimeError: a"
    assert tune.entries_of(res["results"]) == {}


def test_same_family_key_timed_once():
    """Two cases mapping to one shape class (same family and key) are timed once."""
    ran = []
    mod = fake_module({H: 1.0, A: 0.5, B: 2.0}, ran=ran)
    res = tune.tune([LN, Case("layer_norm", (4096, 4096), "bf16")], "cpu",
                    time_fn=fake_timer({H: 1.0, A: 0.5, B: 2.0}), get_module=lambda op: mod,
                    log=lambda *a: None)
    assert len(res["results"]) == 1 and len(ran) == 3


def test_module_without_tune_targets_is_skipped():
    logged = []
    res = tune.tune([LN, LN2], "cpu", time_fn=fake_timer({}),
                    get_module=lambda op: types.SimpleNamespace(__name__="fusednorm.kernels.layer_norm"),
                    log=logged.append)
    assert res["results"] == []
    assert logged == ["skip: fusednorm.kernels.layer_norm has no tune_targets (yet): "
                      "layer_norm cases not tuned"]                     # said once, not per case


# ---------------------------------------------------------------- budget
def test_budget_stops_between_targets():
    clock = [0.0]
    times = {H: 1.0, A: 0.5, B: 0.9}
    res = _tune([LN, LN2], times, budget_s=2.5, clock=clock)
    # LN: 3 candidates (clock 0 -> 3); LN2 starts past the budget: not reached
    assert [r["key"] for r in res["results"]] == ["bfloat16|4096"]
    assert res["results"][0]["status"] == "tuned" and not res["complete"]
    assert any("not reached" in n and "16384x1024" in n for n in res["notes"])


def test_budget_stops_inside_a_target_and_keeps_what_it_timed():
    clock = [0.0]
    res = _tune([LN, LN2], {H: 1.0, A: 0.5, B: 0.1}, budget_s=1.5, clock=clock)
    (r,) = res["results"]
    assert r["status"] == "partial (budget)" and len(r["candidates"]) == 2
    assert r["best"] == A                        # B (faster) was never timed
    assert not res["complete"]


def test_budget_large_enough():
    res = _tune([LN, LN2], {H: 1.0, A: 0.5, B: 0.9}, budget_s=100.0, clock=[0.0])
    assert len(res["results"]) == 2 and res["complete"] and res["notes"] == []


# ---------------------------------------------------------------- the table
def test_merge_keeps_other_archs_and_untouched_keys():
    existing = {"version": 1,
                "runs": {"sm80": {"device": "A100"}, "sm90": {"device": "old"}},
                "entries": {"layer_norm_fwd": {"sm80|bfloat16|4096": {"block_n": 1, "num_warps": 1},
                                               "sm90|bfloat16|1024": {"block_n": 2, "num_warps": 2},
                                               "sm90|bfloat16|4096": {"block_n": 3, "num_warps": 3}},
                            "other_family": {"sm90|x": {"a": 1}}}}
    entries = {"layer_norm_fwd": {"bfloat16|4096": {"block_n": 1024, "num_warps": 8}},
               "layer_norm_bwd": {"bfloat16|4096": {"block_n": 4096, "num_warps": 16}}}
    run = {"device": "NVIDIA H100", "date": "d", "commit": "c"}
    m = tune.merge_table(existing, "sm90", run, entries)
    assert m["version"] == 1
    assert m["runs"] == {"sm80": {"device": "A100"}, "sm90": run}
    assert m["entries"]["layer_norm_fwd"] == {
        "sm80|bfloat16|4096": {"block_n": 1, "num_warps": 1},     # other arch: kept
        "sm90|bfloat16|1024": {"block_n": 2, "num_warps": 2},     # not tuned now: kept
        "sm90|bfloat16|4096": {"block_n": 1024, "num_warps": 8}}  # replaced
    assert m["entries"]["layer_norm_bwd"] == {"sm90|bfloat16|4096": {"block_n": 4096, "num_warps": 16}}
    assert m["entries"]["other_family"] == {"sm90|x": {"a": 1}}
    assert existing["entries"]["layer_norm_fwd"]["sm90|bfloat16|4096"]["block_n"] == 3  # not mutated


def test_read_table(tmp_path):
    assert tune.read_table(tmp_path / "missing.json") == {"version": 1, "runs": {}, "entries": {}}
    (tmp_path / "v2.json").write_text('{"version": 2}')
    with pytest.raises(ValueError, match="version 2"):
        tune.read_table(tmp_path / "v2.json")


@pytest.fixture
def fresh_tuning(monkeypatch):
    """kernels/_tuning with the caller's table settings, and its cache forgotten afterwards."""
    monkeypatch.delenv(_tuning.TABLE_ENV, raising=False)
    _tuning.reload()
    yield monkeypatch
    monkeypatch.undo()
    _tuning.reload()


def test_written_table_is_what_lookup_reads(tmp_path, fresh_tuning):
    table = tmp_path / "tuned_configs.json"
    tune.write_table(table, {"version": 1, "runs": {"sm80": {"device": "A100"}},
                             "entries": {"layer_norm_fwd": {"sm80|bfloat16|4096": {"block_n": 7, "num_warps": 7}}}})
    res = _tune([LN, LN2], {H: 1.0, A: 0.7, B: 0.8})
    out = tmp_path / "out"
    done = tune.finish(res, device="cpu", arch="sm90", table_path=table, out=out, dry_run=False,
                       min_gain=0.03, budget_s=10, log=lambda *a: None)
    assert done["written"] and done["entries"] == 2
    data = json.loads(table.read_text())
    assert data["version"] == 1 and set(data["runs"]) == {"sm80", "sm90"}
    assert {"device", "date", "commit", "torch", "triton"} <= set(data["runs"]["sm90"])
    assert data["runs"]["sm90"]["complete"] is True
    assert data["entries"]["layer_norm_fwd"] == {
        "sm80|bfloat16|4096": {"block_n": 7, "num_warps": 7},
        "sm90|bfloat16|1024": dataclasses.asdict(A),
        "sm90|bfloat16|4096": dataclasses.asdict(A)}
    # the report and a copy of the table in the output folder
    assert json.loads((out / "tuned_configs.json").read_text()) == data
    md = (out / "tune.md").read_text()
    row = next(ln for ln in md.splitlines() if "| bfloat16\\|4096 |" in ln)
    cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip("|"))]
    assert cells[:8] == ["layer_norm_fwd", "bfloat16|4096", "layer_norm 16384x4096 bf16 rows",
                         "block_n=1024 num_warps=4", "1.0000", "block_n=1024 num_warps=8",
                         "0.7000", "1.43×"]
    rep = json.loads((out / "tune.json").read_text())
    assert rep["results"][0]["candidates"][1] == {"config": {"block_n": 1024, "num_warps": 8},
                                                  "ms": 0.7, "error": None}

    # lookup through the environment variable ...
    fresh_tuning.setenv(_tuning.TABLE_ENV, str(table))
    _tuning.reload()
    assert _tuning.table_path() == str(table)
    assert _tuning.lookup("layer_norm_fwd", "sm90", "bfloat16|4096") == dataclasses.asdict(A)
    assert Cfg(**_tuning.lookup("layer_norm_fwd", "sm90", "bfloat16|1024")) == A
    assert _tuning.lookup("layer_norm_fwd", "sm80", "bfloat16|4096") == {"block_n": 7, "num_warps": 7}
    assert _tuning.lookup("layer_norm_fwd", "sm90", "bfloat16|8192") is None
    # ... "off" switches the table off; and TABLE itself can be pointed elsewhere
    fresh_tuning.setenv(_tuning.TABLE_ENV, "off")
    assert _tuning.table_path() is None and _tuning.lookup("layer_norm_fwd", "sm90", "bfloat16|4096") is None
    fresh_tuning.delenv(_tuning.TABLE_ENV)
    fresh_tuning.setattr(_tuning, "TABLE", str(table))
    _tuning.reload()
    assert _tuning.lookup("layer_norm_fwd", "sm90", "bfloat16|4096") == dataclasses.asdict(A)


def test_nothing_tuned_leaves_the_table_alone(tmp_path):
    table = tmp_path / "t.json"
    table.write_text("untouched")
    res = tune.tune([LN], "cpu", time_fn=fake_timer({}), get_module=lambda op: None,
                    log=lambda *a: None)
    done = tune.finish(res, device="cpu", arch="sm90", table_path=table, out=None, dry_run=False,
                       min_gain=0.03, budget_s=10, log=lambda *a: None)
    assert not done["written"] and table.read_text() == "untouched"


# ---------------------------------------------------------------- command line, --dry-run
def _kernels_table_bytes():
    return tune.TABLE.read_bytes() if tune.TABLE.exists() else None


def test_dry_run_with_fake_module(tmp_path):
    ran, calls = [], []
    times = {H: 1.0, A: 0.5, B: 0.9}
    mod = fake_module(times, ran=ran, calls=calls, groups_param=True)
    before = _kernels_table_bytes()
    existing = tmp_path / "existing.json"
    existing.write_text(json.dumps({"version": 1, "runs": {}, "entries": {}}))
    out = tmp_path / "out"
    rc = tune.main(["--dry-run", "--norms", "ln,gn", "--out", str(out), "--table", str(existing)],
                   get_module=lambda op: mod, log=lambda *a: None)
    assert rc == 0
    # tiny shapes of the quick cases, deduplicated: LN bf16 rows; GN {bf16, fp32} x {nchw, nhwc}
    assert [(c[0], c[1], c[2], c[3]) for c in calls] == [
        ("layer_norm", (4, 256), torch.bfloat16, "rows"),
        ("group_norm", (2, 64, 4, 4), torch.bfloat16, "nchw"),
        ("group_norm", (2, 64, 4, 4), torch.bfloat16, "nhwc"),
        ("group_norm", (2, 64, 4, 4), torch.float32, "nchw"),
        ("group_norm", (2, 64, 4, 4), torch.float32, "nhwc")]
    assert all(c[4] == torch.device("cpu") for c in calls)
    assert calls[1][5] == {"num_groups": 32} and calls[0][5] == {"num_groups": None}
    # the first candidate of each distinct target, once
    assert ran == [H, H, H]      # keys: bf16|256 (LN), bf16|4 and fp32|4 (GN)
    assert _kernels_table_bytes() == before                   # kernels/ never written
    assert json.loads(existing.read_text()) == {"version": 1, "runs": {}, "entries": {}}
    data = json.loads((out / "tuned_configs.json").read_text())
    assert data["entries"]["layer_norm_fwd"] == {"cpu|bfloat16|256": dataclasses.asdict(H)}
    assert "Dry run" in (out / "tune.md").read_text()


def test_dry_run_writes_nothing_without_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FUSEDNORM_OUT", raising=False)
    before = _kernels_table_bytes()
    mod = fake_module({H: 1.0, A: 0.5, B: 0.9})
    assert tune.main(["--dry-run", "--norms", "rms"], get_module=lambda op: mod,
                     log=lambda *a: None) == 0
    assert list(tmp_path.iterdir()) == [] and _kernels_table_bytes() == before


def test_dry_run_real_kernel_modules():
    """The real kernel modules: those with tune_targets run each target's first candidate on
    tiny shapes (Triton interpreter on the CPU); those without are named as skipped."""
    if torch.cuda.is_available():
        pytest.skip("the CPU dry run is the CI check; a GPU runs bench/tune.py itself")
    lines = []
    before = _kernels_table_bytes()
    assert tune.main(["--dry-run"], log=lines.append) == 0
    assert _kernels_table_bytes() == before
    lines = [str(ln) for ln in lines]
    text = "\n".join(lines)
    summary = next(ln for ln in lines if ln.startswith("tune summary:"))
    for op, name in (("layer_norm", "layer_norm"), ("group_norm", "group_norm"),
                     ("instance_norm", "instance_norm"), ("batch_norm", "batch_norm"),
                     ("layer_norm_2d", "layer_norm_2d")):
        try:
            mod = tune.kernel_module(op)
        except Exception:  # noqa: BLE001 -- a module broken mid-edit: the run said so
            assert f"{op} " in text and "kernel module not importable" in text
            continue
        if not hasattr(mod, "tune_targets"):
            assert f"fusednorm.kernels.{name} has no tune_targets" in text
    # every target a module offers runs on the interpreter: none failed
    assert not [ln for ln in lines if "failed:" in ln or "tune_targets raised" in ln], text
    assert "INCOMPLETE" not in summary


def test_needs_cuda_without_dry_run():
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    lines = []
    assert tune.main([], log=lines.append) == 2
    assert "needs a CUDA device" in lines[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_time_candidate_on_gpu():
    """A capturable launch is timed by graph replay; one that synchronizes with the host falls
    back to do_bench of the call; a bigger 'config' takes longer."""
    x = torch.randn(1 << 26, device="cuda")
    y = torch.empty_like(x)

    def run(cfg):
        n = cfg.block_n << 14
        y[:n].copy_(x[:n])
    t = TuneTarget("copy", "k", [Cfg(1024, 4), Cfg(4096, 4)], run, nbytes=0)
    small, m1 = tune.time_candidate_cuda(t, Cfg(1024, 4), 2, 10)
    big, m2 = tune.time_candidate_cuda(t, Cfg(4096, 4), 2, 10)
    assert m1 == m2 == "cuda-graph" and 0 < small < big

    def run_sync(cfg):
        run(cfg)
        torch.cuda.synchronize()           # not allowed while capturing
    ms, method = tune.time_candidate_cuda(TuneTarget("copy", "k", [H], run_sync), Cfg(1024, 4), 2, 10)
    assert method == "do_bench (wall)" and ms > 0
