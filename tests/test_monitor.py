"""fusednorm.monitor: recorded statistics, drift measures, overhead (op counts), artefacts.

Two kinds of norm modules are used: the real fusednorm.nn modules (tests skip while they are
not importable) and small "contract" modules below that subclass torch.nn norms and call the
stats hook exactly as the contract says (fp32 detached stats after the norm), so the monitor's
aggregation is tested on its own.
"""
import csv
import math
import sys

import pytest
import torch
from torch import nn

import fusednorm
from fusednorm import monitor
from fusednorm.monitor import HOOK_ATTR, stats_from_norm, stats_from_tensor, track


def _emit(module, kind, **stats):
    hook = getattr(module, HOOK_ATTR, None)
    if hook is not None:
        hook(module, kind, {k: (v.detach().float() if isinstance(v, torch.Tensor) else v)
                            for k, v in stats.items()})


class ContractBN(nn.BatchNorm1d):
    def forward(self, x):
        out = super().forward(x)
        if self.training or not self.track_running_stats:
            dims = [0] + list(range(2, x.dim()))
            var, mean = torch.var_mean(x.float(), dim=dims, correction=0)
            _emit(self, "batch_norm", mean=mean, var=var, rstd=(var + self.eps).rsqrt(),
                  eps=self.eps, count=x.numel() // x.shape[1])
        return out


class ContractBN2d(nn.BatchNorm2d):
    forward = ContractBN.forward


class ContractGN(nn.GroupNorm):
    def forward(self, x):
        out = super().forward(x)
        g = x.float().reshape(x.shape[0], self.num_groups, -1)
        var, mean = torch.var_mean(g, dim=2, correction=0)
        _emit(self, "group_norm", mean=mean, var=None, rstd=(var + self.eps).rsqrt(),
              eps=self.eps, count=g.shape[2])
        return out


class ContractIN(nn.InstanceNorm2d):
    def forward(self, x):
        out = super().forward(x)
        g = x.float().flatten(2)
        var, mean = torch.var_mean(g, dim=2, correction=0)
        _emit(self, "instance_norm", mean=mean, var=None, rstd=(var + self.eps).rsqrt(),
              eps=self.eps, count=g.shape[2])
        return out


class ContractLN(nn.LayerNorm):
    def forward(self, x):
        out = super().forward(x)
        rows = x.float().reshape(-1, math.prod(self.normalized_shape))
        var, mean = torch.var_mean(rows, dim=1, correction=0)
        _emit(self, "layer_norm", mean=mean, var=None, rstd=(var + self.eps).rsqrt(),
              eps=self.eps, count=rows.shape[1])
        return out


class ContractRMS(nn.RMSNorm):
    def forward(self, x):
        out = super().forward(x)
        rows = x.float().reshape(-1, math.prod(self.normalized_shape))
        eps = 1e-6
        _emit(self, "rms_norm", mean=None, var=None,
              rstd=(rows.square().mean(1) + eps).rsqrt(), eps=eps, count=rows.shape[1])
        return out


def _offset(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    # channel-dependent offsets and scales so per-channel statistics differ
    x = torch.randn(*shape, generator=g)
    c = shape[1]
    scale = torch.linspace(0.5, 3.0, c).reshape(1, c, *([1] * (len(shape) - 2)))
    shift = torch.linspace(-4.0, 7.0, c).reshape(1, c, *([1] * (len(shape) - 2)))
    return x * scale + shift


def _close(a, b, rtol=1e-4, atol=1e-5):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- recorded statistics

@pytest.mark.parametrize("shape", [(37, 11), (5, 7, 13)])
def test_batch_norm_record_equals_input_stats(shape):
    bn = ContractBN(shape[1])
    x = _offset(*shape)
    with track(bn) as mon:
        bn(x)
    s = mon.stats("<model>")
    dims = [0] + list(range(2, x.dim()))
    var, mean = torch.var_mean(x.double(), dim=dims, correction=0)
    assert mon.source("<model>") == "norm" and mon.kind("<model>") == "batch_norm"
    _close(s["mean"][0].double(), mean)
    _close(s["var"][0].double(), var)


def test_group_instance_layer_rms_aggregation():
    x = _offset(6, 12, 5, 7, seed=1)
    cases = [
        (ContractGN(4, 12), "group_norm",
         lambda t: torch.var_mean(t.reshape(6, 4, -1).transpose(0, 1).reshape(4, -1), dim=1,
                                  correction=0)),
        (ContractIN(12), "instance_norm",
         lambda t: torch.var_mean(t.transpose(0, 1).reshape(12, -1), dim=1, correction=0)),
        (ContractLN([5, 7]), "layer_norm",
         lambda t: tuple(v.reshape(1) for v in torch.var_mean(t, correction=0))),
        (ContractRMS([7]), "rms_norm",
         lambda t: (t.square().mean().reshape(1), torch.zeros(1, dtype=t.dtype))),
    ]
    for mod, kind, oracle in cases:
        with track(mod) as mon:
            mod(x)
        s = mon.stats("<model>")
        var, mean = oracle(x.double())
        assert mon.kind("<model>") == kind and mon.source("<model>") == "norm", kind
        # rstd -> var loses ~1e-7 relative of (var + eps): fp32 rounding, nothing more
        _close(s["mean"][0].double(), mean, rtol=1e-5, atol=1e-5)
        _close(s["var"][0].double(), var, rtol=1e-5, atol=1e-5)
        # the hook path computes the same quantities
        _close(stats_from_tensor(kind, mod, x).double()[1], var, rtol=1e-5, atol=1e-5)


def test_hook_path_linear_input_and_output():
    lin = nn.Linear(9, 4)
    x = _offset(50, 9, seed=2)
    with track(lin, layers=[lin]) as mon_in:
        y = lin(x)
    with track(lin, layers=[lin], capture="output") as mon_out:
        lin(x)
    var, mean = torch.var_mean(x.double(), dim=0, correction=0)
    s = mon_in.stats("layer0")
    assert mon_in.source("layer0") == "hook" and s["mean"].shape == (1, 9)
    _close(s["mean"][0].double(), mean)
    _close(s["var"][0].double(), var)
    var, mean = torch.var_mean(y.detach().double(), dim=0, correction=0)
    _close(mon_out.stats("layer0")["var"][0].double(), var)


def test_hook_path_by_name_and_feature_dim():
    model = nn.Sequential(nn.Conv1d(3, 6, 3), nn.Sigmoid())
    x = torch.randn(8, 3, 20)
    with track(model, layers=["1"]) as mon:          # sigmoid input: (N, C, L), features dim 1
        h = model[0](x)
        model(x)
    var, mean = torch.var_mean(h.detach().double(), dim=(0, 2), correction=0)
    _close(mon.stats("1")["mean"][0].double(), mean)
    with track(model, layers=["1"], feature_dim=-1) as mon:
        model(x)
    assert mon.stats("1")["mean"].shape == (1, 18)


def test_eval_batch_norm_falls_back_to_hook():
    bn = ContractBN(5).eval()          # eval + running stats: the norm computes no statistics
    x = _offset(40, 5, seed=3)
    with track(bn) as mon:
        bn(x)
        bn.train()
        bn(x)
    assert mon.source("<model>") == "mixed"
    s = mon.stats("<model>")
    _close(s["mean"][0], s["mean"][1])
    _close(s["var"][0], s["var"][1])


def test_bf16_input_hook_path_upcasts():
    lin = nn.Linear(16, 2)
    x = (torch.randn(256, 16) + 100).bfloat16()
    with track(lin, layers=[lin]) as mon:
        lin.to(torch.bfloat16)(x)
    var, mean = torch.var_mean(x.double(), dim=0, correction=0)
    _close(mon.stats("layer0")["var"][0].double(), var, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- drift

def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), ContractBN(32), nn.Sigmoid(),
                         nn.Linear(32, 32), ContractBN(32), nn.Sigmoid(), nn.Linear(32, 3))


def test_drift_zero_for_frozen_model_same_data():
    model = _mlp()
    x = torch.randn(64, 10)
    with torch.no_grad(), track(model, layers=["1", "4", "5"], reference=3) as mon:
        for _ in range(12):
            model(x)
    for name in mon.layers:
        d = mon.drift(name)
        assert len(d["step"]) == 12
        for m in monitor.MEASURES:
            assert float(d[m].abs().max()) == 0.0, (name, m)


def test_drift_grows_with_perturbation_of_earlier_layer():
    model = _mlp()
    x = torch.randn(128, 10)
    w0 = model[0].weight.detach().clone()
    direction = torch.randn_like(w0)
    # "4": the second BN's input (norm path); "3": the second Linear's input (hook path).
    # (Not a sigmoid input: after BN its batch mean is beta whatever the earlier layer does.)
    with torch.no_grad(), track(model, layers=["4", "3"], reference=2) as mon:
        for scale in (0.0, 0.0, 0.02, 0.1, 0.5):
            model[0].weight.copy_(w0 + scale * direction)
            model(x)
    for name in ("4", "3"):
        kl = mon.drift(name)["sym_kl"]
        assert float(kl[:2].abs().max()) < 1e-10
        assert bool((kl[2:].diff() > 0).all()) and float(kl[2]) > 0, (name, kl)
        assert float(mon.drift(name)["mean_shift"][-1]) > float(mon.drift(name)["mean_shift"][2])


def test_sym_kl_matches_closed_form():
    lin = nn.Identity()
    with track(lin, layers=[lin], reference=1) as mon:
        lin(torch.tensor([[-1.0], [1.0]]))          # N(0, 1)
        lin(torch.tensor([[0.0], [4.0]]))           # N(2, 4)
    kl = float(mon.drift("layer0")["sym_kl"][1])
    kl_pq = 0.5 * (math.log(4 / 1) + (1 + 4) / 4 - 1)
    kl_qp = 0.5 * (math.log(1 / 4) + (4 + 4) / 1 - 1)
    assert kl == pytest.approx((kl_pq + kl_qp) / 2, rel=1e-9)
    assert float(mon.drift("layer0")["mean_shift"][1]) == pytest.approx(2.0)
    assert float(mon.drift("layer0")["log_var_ratio"][1]) == pytest.approx(math.log(4))


# ---------------------------------------------------------------- hook lifecycle

def test_attribute_restored_and_previous_hook_chained():
    bn = ContractBN(4)
    seen = []
    prev = lambda m, kind, stats: seen.append(kind)  # noqa: E731
    setattr(bn, HOOK_ATTR, prev)
    with track(bn) as mon:
        bn(torch.randn(8, 4))
        assert getattr(bn, HOOK_ATTR) is not prev
    assert getattr(bn, HOOK_ATTR) is prev and seen == ["batch_norm"]
    assert len(mon.stats("<model>")["step"]) == 1
    bn2 = ContractBN(4)
    with track(bn2):
        pass
    assert not hasattr(bn2, HOOK_ATTR) and not bn2._forward_hooks


def test_paused_and_every():
    lin = nn.Linear(3, 3)
    with track(lin, layers=[lin], every=3) as mon:
        for i in range(7):
            lin(torch.randn(4, 3))
        with mon.paused():
            lin(torch.randn(4, 3))
        lin(torch.randn(4, 3))
    assert mon.stats("layer0")["step"].tolist() == [0, 3, 6]


def test_validation_messages():
    with pytest.raises(ValueError, match="no norm layers"):
        track(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="capture='out'"):
        track(nn.Linear(2, 2), layers=["weight"], capture="out")
    with pytest.raises(ValueError, match="layer name 'nope'"):
        track(nn.Sequential(nn.Linear(2, 2)), layers=["nope"])
    with pytest.raises(TypeError, match=r"layers\[0\] is int"):
        track(nn.Sequential(nn.Linear(2, 2)), layers=[3])
    with pytest.raises(ValueError, match="every=0"):
        track(ContractBN(2), every=0)
    with pytest.raises(KeyError, match="no tracked layer 'x'"):
        track(ContractBN(2)).stats("x")


# ---------------------------------------------------------------- artefacts

def test_summary_csv_plot_pandas(tmp_path, monkeypatch):
    model = _mlp()
    with track(model, reference=2) as mon:
        for _ in range(6):
            model(torch.randn(32, 10))
    text = mon.summary()
    assert "sym_kl" in text and text.count("batch_norm") == 2
    path = mon.to_csv(tmp_path / "d.csv")
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 12 and {r["layer"] for r in rows} == {"1", "4"}
    assert all(math.isfinite(float(r["sym_kl"])) for r in rows)
    png = mon.plot(tmp_path / "d.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="needs pandas"):
        mon.to_pandas()


# ---------------------------------------------------------------- overhead: no extra pass

def _fused_nn():
    try:
        import fusednorm.nn as fnn
        fnn.BatchNorm1d
    except (ImportError, AttributeError) as e:
        pytest.skip(f"fusednorm.nn not available yet: {e}")
    return fnn


def _ops_over(model, x, numel, mon=None):
    """Number of aten ops that take a tensor with `numel` elements (an activation)."""
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model(x)
    n = 0
    for ev in prof.events():
        if not ev.name.startswith("aten::"):
            continue
        if any(isinstance(s, list) and s and math.prod(s) == numel for s in ev.input_shapes):
            n += 1
    return n


def _count_with_and_without(model, x, numel, **kw):
    model(x)  # warm-up (lazy init, first-call paths)
    base = _ops_over(model, x, numel)
    with track(model, **kw) as mon:
        tracked = _ops_over(model, x, numel)
    return base, tracked, mon


@pytest.mark.parametrize("make", ["batch_norm", "group_norm", "layer_norm"])
def test_no_extra_activation_ops_for_fusednorm_modules(make):
    fnn = _fused_nn()
    x = torch.randn(16, 24, 9)
    mod = {"batch_norm": lambda: fnn.BatchNorm1d(24),
           "group_norm": lambda: fnn.GroupNorm(6, 24),
           "layer_norm": lambda: fnn.LayerNorm(9)}[make]()
    base, tracked, mon = _count_with_and_without(mod, x, x.numel())
    assert mon.source("<model>") == "norm"
    assert base > 0 and tracked == base, (base, tracked)


def test_op_count_sees_the_hook_path_pass():
    # The counter must be able to fail: the forward-hook path adds a reduction over x.
    bn = ContractBN(24)
    x = torch.randn(16, 24, 9)
    base, tracked, mon = _count_with_and_without(bn, x, x.numel(), norm_stats=False)
    assert mon.source("<model>") == "hook" and tracked > base


def test_fusednorm_batch_norm_record_equals_input_stats():
    fnn = _fused_nn()
    bn = fnn.BatchNorm2d(6)
    x = _offset(4, 6, 5, 5, seed=4)
    with track(bn) as mon:
        bn(x)
    var, mean = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    assert mon.source("<model>") == "norm"
    _close(mon.stats("<model>")["mean"][0].double(), mean)
    _close(mon.stats("<model>")["var"][0].double(), var)


_MODULE_ORACLES = {
    "batch_norm": lambda t: torch.var_mean(t, dim=(0, 2, 3), correction=0),
    "instance_norm": lambda t: torch.var_mean(t.transpose(0, 1).reshape(t.shape[1], -1), dim=1,
                                              correction=0),
    "group_norm": lambda t: torch.var_mean(t.reshape(t.shape[0], 3, -1).transpose(0, 1)
                                           .reshape(3, -1), dim=1, correction=0),
    "layer_norm": lambda t: tuple(v.reshape(1) for v in torch.var_mean(t, correction=0)),
    "rms_norm": lambda t: (t.square().mean().reshape(1), torch.zeros(1, dtype=t.dtype)),
}


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("kind", list(_MODULE_ORACLES))
def test_monitor_records_the_norms_statistics_on_each_backend(kind, backend):
    """The statistics torch's own kernels return (backend "native": mean/rstd of
    native_layer_norm / native_group_norm, save_mean/save_invstd of native_batch_norm,
    _fused_rms_norm's rstd) reach the monitor as the reference's do: source "norm" (no
    extra pass), the input's moments, the same records on both backends."""
    fnn = _fused_nn()
    make = {"batch_norm": lambda: fnn.BatchNorm2d(6), "group_norm": lambda: fnn.GroupNorm(3, 6),
            "instance_norm": lambda: fnn.InstanceNorm2d(6, affine=True, track_running_stats=True),
            "layer_norm": lambda: fnn.LayerNorm([5, 5]), "rms_norm": lambda: fnn.RMSNorm([5])}
    mod = fusednorm.convert(make[kind](), backend=backend)
    x = _offset(4, 6, 5, 5, seed=6)
    with track(mod) as mon:
        for _ in range(2):
            mod(x).sum().backward()
    assert mon.source("<model>") == "norm" and mon.kind("<model>") == kind
    s = mon.stats("<model>")
    assert s["mean"].shape[0] == 2
    var, mean = _MODULE_ORACLES[kind](x.double())
    _close(s["mean"][1].double(), mean, rtol=1e-5, atol=1e-5)
    _close(s["var"][1].double(), var, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_native_batch_norm_running_stats_and_counter(momentum):
    """On "native" the modules keep fusednorm's running-statistics semantics: torch's
    values step by step, momentum=None's cumulative average (on the device), and an empty
    batch that neither updates nor counts."""
    fnn = _fused_nn()
    ref = nn.BatchNorm2d(5, momentum=momentum)
    ours = fusednorm.convert(nn.BatchNorm2d(5, momentum=momentum), backend="native")
    for step in range(3):
        x = _offset(4, 5, 3, 3, seed=10 + step) * (step + 1)
        _close(ours(x), ref(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        _close(getattr(ours, name), getattr(ref, name), rtol=1e-6, atol=1e-6)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    assert ours(torch.empty(0, 5, 3, 3)).shape == (0, 5, 3, 3)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert isinstance(ours, fnn.BatchNorm2d)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-sync check needs CUDA")
def test_no_host_sync_per_step_cuda():
    fnn = _fused_nn()
    model = nn.Sequential(nn.Linear(32, 64), fnn.BatchNorm1d(64), nn.Sigmoid(),
                          nn.Linear(64, 64), fnn.LayerNorm(64)).cuda()
    x = torch.randn(128, 32, device="cuda")
    model(x)
    torch.cuda.synchronize()
    with track(model, layers=["1", "2", "4"]) as mon:
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                model(x)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert len(mon.stats("1")["step"]) == 3


def test_to_pandas_when_installed():
    pd = pytest.importorskip("pandas")
    bn = ContractBN(3)
    with track(bn, reference=1) as mon:
        bn(torch.randn(8, 3))
        bn(torch.randn(8, 3) + 1)
    df = mon.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == 2 and df["sym_kl"].iloc[1] > 0


def test_nested_monitors_both_record_from_the_norm():
    bn = ContractBN(6)
    x = _offset(20, 6, seed=5)
    with track(bn) as outer:
        with track(bn) as inner:
            bn(x)
        bn(x)
    assert outer.source("<model>") == inner.source("<model>") == "norm"
    assert len(outer.stats("<model>")["step"]) == 2 and len(inner.stats("<model>")["step"]) == 1
    torch.testing.assert_close(outer.stats("<model>")["var"][0], inner.stats("<model>")["var"][0])
    assert not hasattr(bn, HOOK_ATTR)


# ------------------------------------------------------------------ import-time behaviour
_LAZY_IMPORT = r"""
import sys
import fusednorm
heavy = [m for m in ("fusednorm.monitor", "matplotlib", "pandas") if m in sys.modules]
assert not heavy, f"import fusednorm imported {heavy}"
assert "monitor" in dir(fusednorm)
track = fusednorm.monitor.track          # first access loads it
assert "fusednorm.monitor" in sys.modules and callable(track)
assert "matplotlib" not in sys.modules   # plotting libraries load only in plot()/to_pandas()
m = fusednorm.convert(__import__("torch").nn.LayerNorm(4))
with fusednorm.monitor.track(m) as mon:
    m(__import__("torch").randn(3, 4))
assert mon.source("<model>") == "norm", mon.source("<model>")
try:
    fusednorm.no_such_thing
except AttributeError as e:
    assert "no_such_thing" in str(e)
else:
    raise AssertionError("missing attribute did not raise")
print("ok")
"""

_NO_CYCLE = r"""
import ast, pathlib, sys
import fusednorm.sync_batch_norm     # first, on its own: no cycle through fusednorm.nn
import fusednorm.nn
pkg = pathlib.Path(fusednorm.nn.__file__).parent
def imports(name):
    tree = ast.parse((pkg / f"{name}.py").read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
assert "nn" not in imports("sync_batch_norm"), imports("sync_batch_norm")
assert fusednorm.nn.SyncBatchNorm is fusednorm.sync_batch_norm.SyncBatchNorm
print("ok")
"""


@pytest.mark.parametrize("script", [_LAZY_IMPORT, _NO_CYCLE], ids=["lazy_monitor", "no_cycle"])
def test_import_in_fresh_process(script):
    """``fusednorm.monitor`` works after a plain ``import fusednorm`` and is loaded only on
    first access (PEP 562), with nothing heavy at import time; nn.py and sync_batch_norm.py
    do not import each other (their shared pieces live in _mixins.py)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
