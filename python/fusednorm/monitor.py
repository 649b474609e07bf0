"""Opt-in measurement of internal covariate shift (ICS).

    with fusednorm.monitor.track(model) as mon:
        for x, y in loader:
            loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
    print(mon.summary()); mon.to_csv("drift.csv"); mon.plot("drift.png")

For every tracked layer the monitor keeps, per forward call ("step"), the first two moments of
the layer's *input* batch, as fp32 tensors on the input's device.  Nothing is copied to the host
and nothing synchronizes until you read (``stats``, ``drift``, ``summary``, ``to_csv``, ``plot``).

Where the numbers come from
---------------------------
fusednorm.nn modules call ``self._fusednorm_stats_hook(self, kind, stats)`` after their norm op
with the statistics the op computed anyway (fp32, detached).  The monitor sets that attribute on
enter and restores the previous value on exit (a previous hook is chained, not replaced).  Turning
the statistics into the layer's record costs a few launches over tensors of size (C,), (N, G) or
(M,): no pass over the activations.  A layer for which no such hook fires (torch.nn modules,
arbitrary modules given in ``layers=``, BatchNorm/InstanceNorm in eval mode using running
statistics, where the norm computes no batch statistics) is measured by a forward hook instead: one
extra reduction over the input (``torch.var_mean``; fp16/bf16 inputs are upcast to fp32 first).
The two paths record the same quantities, so mixing them is safe; ``Monitor.source(name)`` says
which one produced a layer's records ("norm", "hook" or "mixed").

What one record holds, by kind (biased variances throughout)
------------------------------------------------------------
==============  ===========================================================================
batch_norm      (C,) per-channel mean and variance over batch and spatial dims: BN's own
                batch statistics, exactly.
instance_norm   (C,) per-channel mean/variance over batch and spatial dims, aggregated from
                the (N, C) per-instance statistics by the law of total variance
                (var = mean_n var_nc + var_n mean_nc; every instance has the same count).
group_norm      (G,) per-group mean/variance over batch, the group's channels and spatial
                dims, aggregated the same way from (N, G).  Channels inside a group are not
                separated: GroupNorm never computes per-channel statistics.
layer_norm      (1,) mean/variance of all input elements, aggregated from the per-row (M,)
                statistics.  Per-feature statistics are not computed by LN; track a
                preceding module with the hook path if you need them.
rms_norm        (1,) mean square E[x^2] of all input elements in the *var* column, 0 in the
                *mean* column (RMSNorm computes no mean): drift then compares zero-mean
                Gaussians with those second moments.
features        the hook path for any other module: (F,) per-feature mean/variance of the
                input (or output, ``capture="output"``) along ``feature_dim`` (default: the
                last dim for nn.Linear / 2-D tensors, dim 1 otherwise), reduced over every
                other dim.
==============  ===========================================================================

For rstd-only kinds the variance is recovered as rstd**-2 - eps: exact up to fp32 rounding of
var + eps, so variances far below eps are not resolved (they are also what the norm treats as
noise).  A module called several times per forward (weight sharing) records once per call.

Drift measures (``Monitor.drift``)
----------------------------------
Reference per channel c: the pooled Gaussian of the first ``reference`` records (mu_ref = mean of
the record means, var_ref = mean of the record variances + variance of the record means).  For
record t, averaged over channels:

    mean_shift     |mu_t - mu_ref| / sqrt(var_ref)               (standardized mean change)
    log_var_ratio  |log(var_t / var_ref)|                        (0 = same variance)
    sym_kl         (KL(p_t||p_ref) + KL(p_ref||p_t)) / 2, Gaussians p = N(mu, var):
                   = ((v_t/v_r + v_r/v_t - 2) + (mu_t - mu_r)^2 (1/v_t + 1/v_r)) / 4

Variances are floored at the norm's eps (hook layers: ``var_floor``) so that dead or constant
channels do not divide by zero.  Records are minibatch statistics: a stationary input still
shows drift of order 1/sqrt(batch elements per channel), a noise floor to compare against.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os

import torch
from torch import nn

__all__ = ["track", "Monitor", "MEASURES"]

HOOK_ATTR = "_fusednorm_stats_hook"
MEASURES = ("mean_shift", "log_var_ratio", "sym_kl")
_NORM_KINDS = ("layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def norm_kind(module):
    """The norm kind of a torch.nn (or fusednorm.nn) norm module, or None for anything else."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batch_norm"
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return "instance_norm"
    if isinstance(module, nn.GroupNorm):
        return "group_norm"
    if isinstance(module, nn.LayerNorm):
        return "layer_norm"
    if hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm):
        return "rms_norm"
    return None


def _pack(mean, var):
    # One (2, K) fp32 tensor per record: a single small allocation, and a copy, so later
    # in-place updates of the norm's own tensors cannot change what was recorded.
    return torch.stack((mean.float(), var.float().clamp_min(0)))


def stats_from_norm(kind, stats):
    """Layer record (2, K) = (mean, var) from the statistics a norm passed to its stats hook.

    Only reductions over the statistics themselves ((C,), (N, G) or (M,) tensors); see the
    module docstring for what K is per kind.
    """
    mean, rstd, eps = stats.get("mean"), stats["rstd"], float(stats["eps"])
    if kind == "batch_norm":
        var = stats.get("var")
        if var is None:
            var = rstd.float().pow(-2) - eps
        return _pack(mean, var)
    # var (or mean square for RMS) of each row / (sample, group), recovered from rstd.
    var = rstd.float().pow(-2) - eps
    if kind == "rms_norm":
        ms = var.mean().reshape(1)
        return _pack(torch.zeros_like(ms), ms)
    if kind == "layer_norm":
        mean, var = mean.reshape(-1), var.reshape(-1)
    elif kind not in ("group_norm", "instance_norm"):
        raise ValueError(f"monitor: unknown norm kind={kind!r}, expected one of {_NORM_KINDS}")
    # Law of total variance over equal-count pieces: Var = E[var_piece] + Var[mean_piece].
    var_of_means, mean_of_means = torch.var_mean(mean.float(), dim=0, correction=0)
    return _pack(mean_of_means.reshape(-1), (var.mean(dim=0) + var_of_means).reshape(-1))


def default_feature_dim(module, x):
    if isinstance(module, (nn.Linear, nn.LayerNorm)) or x.dim() <= 2:
        return x.dim() - 1
    if hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm):
        return x.dim() - 1
    return 1


def stats_from_tensor(kind, module, x, feature_dim=None):
    """Layer record (2, K) computed from the tensor itself (the forward-hook path): one pass."""
    if x.dtype in _LOW_PRECISION or not x.is_floating_point():
        x = x.float()
    if kind == "instance_norm" and x.dim() == module._get_no_batch_dim():
        x = x.unsqueeze(0)  # unbatched (C, *) input
    if kind in ("batch_norm", "instance_norm"):
        dims = [0] + list(range(2, x.dim()))
        var, mean = torch.var_mean(x, dim=dims, correction=0)
    elif kind == "group_norm":
        g = x.reshape(x.shape[0], module.num_groups, -1)
        var, mean = torch.var_mean(g, dim=(0, 2), correction=0)
    elif kind == "layer_norm":
        var, mean = torch.var_mean(x, correction=0)
    elif kind == "rms_norm":
        var = x.square().mean()
        mean = torch.zeros_like(var)
    else:
        d = default_feature_dim(module, x) if feature_dim is None else feature_dim % x.dim()
        dims = [i for i in range(x.dim()) if i != d]
        var, mean = torch.var_mean(x, dim=dims, correction=0)
    return _pack(mean.reshape(-1), var.reshape(-1))


class _Layer:
    """Per-layer state: records live on the device until read."""

    def __init__(self, name, module, kind, floor):
        self.name, self.module, self.kind, self.floor = name, module, kind, floor
        self.records = []      # (2, K) fp32 device tensors
        self.steps = []        # call index of each record
        self.sources = set()   # {"norm", "hook"}
        self.calls = 0         # unpaused forward calls seen
        self.pending = None    # record handed over by the stats hook during the current call
        self.fired = False


class Monitor:
    """Records per-step input statistics of chosen layers; see the module docstring.

    Use ``track(...)`` to build one; it is a context manager (``attach``/``detach`` also work).
    """

    def __init__(self, model, layers=None, *, reference=10, every=1, capture="input",
                 feature_dim=None, norm_stats=True, var_floor=1e-5):
        if capture not in ("input", "output"):
            raise ValueError(f"monitor: capture={capture!r}, expected 'input' or 'output'")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"monitor: every={every!r}, expected an int >= 1")
        if not isinstance(reference, int) or reference < 1:
            raise ValueError(f"monitor: reference={reference!r}, expected an int >= 1")
        self.model, self.reference, self.every = model, reference, every
        self.capture, self.feature_dim, self.norm_stats = capture, feature_dim, norm_stats
        self._paused = False
        self._handles = []
        self._saved_attrs = []
        self._layers = {}
        names = {id(m): n for n, m in model.named_modules()}
        if layers is None:
            chosen = [(n, m) for n, m in model.named_modules() if norm_kind(m) is not None]
            if not chosen:
                raise ValueError("monitor: the model has no norm layers; pass layers=[...] "
                                 "(names or modules) to track other modules with a forward hook")
        else:
            chosen = []
            mods = dict(model.named_modules())
            labelled = isinstance(layers, dict)  # {display name: module or module name}
            for i, (label, spec) in enumerate(layers.items() if labelled else
                                              zip([None] * len(layers), layers)):
                if isinstance(spec, str):
                    if spec not in mods:
                        raise ValueError(f"monitor: layer name {spec!r} is not a submodule of "
                                         "the model (see model.named_modules())")
                    chosen.append((label or spec, mods[spec]))
                elif isinstance(spec, nn.Module):
                    chosen.append((label or names.get(id(spec)) or f"layer{i}", spec))
                else:
                    raise TypeError(f"monitor: layers[{i}] is {type(spec).__name__}, expected a "
                                    "module name (str) or an nn.Module")
        for name, module in chosen:
            kind = norm_kind(module) or "features"
            eps = getattr(module, "eps", None)
            floor = float(eps) if kind != "features" and eps else float(var_floor)
            self._layers[name if name else "<model>"] = _Layer(name, module, kind, floor)

    # ---------------------------------------------------------------- hooks
    def attach(self):
        if self._handles:
            raise RuntimeError("monitor: already attached; use one `with` block at a time")
        for layer in self._layers.values():
            m = layer.module
            if layer.kind != "features" and self.norm_stats:
                prev = m.__dict__.get(HOOK_ATTR, None)
                self._saved_attrs.append((m, HOOK_ATTR in m.__dict__, prev))
                setattr(m, HOOK_ATTR, self._make_stats_hook(layer, prev))
            self._handles.append(m.register_forward_hook(self._make_forward_hook(layer)))
        return self

    def detach(self):
        for h in self._handles:
            h.remove()
        self._handles = []
        for m, had, prev in reversed(self._saved_attrs):
            if had:
                setattr(m, HOOK_ATTR, prev)
            else:
                m.__dict__.pop(HOOK_ATTR, None)
        self._saved_attrs = []
        return self

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.detach()
        return False

    @contextlib.contextmanager
    def paused(self):
        """Forward calls inside this block are neither recorded nor counted (e.g. evaluation)."""
        was, self._paused = self._paused, True
        try:
            yield self
        finally:
            self._paused = was

    def _make_stats_hook(self, layer, prev):
        def hook(module, kind, stats):
            if prev is not None:
                prev(module, kind, stats)
            layer.fired = True
            if self._paused or layer.calls % self.every:
                return
            if stats.get("rstd") is None or stats["rstd"].numel() == 0:
                return
            layer.pending = stats_from_norm(kind, stats)
        return hook

    def _make_forward_hook(self, layer):
        def hook(module, args, output):
            fired, pending = layer.fired, layer.pending
            layer.fired, layer.pending = False, None
            if self._paused:
                return
            step, layer.calls = layer.calls, layer.calls + 1
            if step % self.every:
                return
            if pending is not None:
                layer.records.append(pending)
                layer.steps.append(step)
                layer.sources.add("norm")
                return
            if fired:  # the norm gave statistics but they were empty (empty batch)
                return
            use_output = self.capture == "output" and layer.kind == "features"
            x = output if use_output else (args[0] if args else None)
            if not isinstance(x, torch.Tensor) or x.numel() == 0:
                return
            with torch.no_grad():
                rec = stats_from_tensor(layer.kind, module, x.detach(), self.feature_dim)
            layer.records.append(rec)
            layer.steps.append(step)
            layer.sources.add("hook")
        return hook

    # ---------------------------------------------------------------- reading
    @property
    def layers(self):
        return list(self._layers)

    def kind(self, name):
        return self._layer(name).kind

    def source(self, name):
        s = self._layer(name).sources
        return "mixed" if len(s) > 1 else (next(iter(s)) if s else "none")

    def _layer(self, name):
        if name not in self._layers:
            raise KeyError(f"monitor: no tracked layer {name!r}; tracked: {self.layers}")
        return self._layers[name]

    def stats(self, name):
        """{"step": (T,) int64, "mean": (T, K), "var": (T, K)} on the CPU (synchronizes)."""
        layer = self._layer(name)
        if not layer.records:
            empty = torch.zeros(0, 0)
            return {"step": torch.zeros(0, dtype=torch.int64), "mean": empty, "var": empty}
        rec = torch.stack(layer.records).cpu()
        return {"step": torch.tensor(layer.steps, dtype=torch.int64),
                "mean": rec[:, 0], "var": rec[:, 1]}

    def drift(self, name, reference=None):
        """{"step", "mean_shift", "log_var_ratio", "sym_kl"}: (T,) tensors, see module doc."""
        k = self.reference if reference is None else reference
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"monitor: reference={k!r}, expected an int >= 1")
        s = self.stats(name)
        floor = self._layer(name).floor
        mean, var = s["mean"].double(), s["var"].double()
        out = {"step": s["step"]}
        if mean.shape[0] == 0:
            for m in MEASURES:
                out[m] = torch.zeros(0, dtype=torch.float64)
            return out
        ref_m, ref_v = mean[:k], var[:k]
        mu_r = ref_m.mean(0)
        v_r = (ref_v.mean(0) + ref_m.var(0, correction=0)).clamp_min(floor)
        v_t = var.clamp_min(floor)
        d2 = (mean - mu_r) ** 2
        out["mean_shift"] = (d2.sqrt() / v_r.sqrt()).mean(1)
        out["log_var_ratio"] = (v_t / v_r).log().abs().mean(1)
        out["sym_kl"] = ((v_t / v_r + v_r / v_t - 2) + d2 * (1 / v_t + 1 / v_r)).mean(1) / 4
        return out

    def rows(self, reference=None):
        """One dict per (layer, record): the drift measures and channel-averaged moments."""
        rows = []
        for name in self.layers:
            s, d = self.stats(name), self.drift(name, reference)
            for i in range(len(d["step"])):
                rows.append({"layer": name, "kind": self.kind(name), "source": self.source(name),
                             "step": int(d["step"][i]), "channels": int(s["mean"].shape[1]),
                             "mean_avg": float(s["mean"][i].mean()),
                             "var_avg": float(s["var"][i].mean()),
                             **{m: float(d[m][i]) for m in MEASURES}})
        return rows

    def to_csv(self, path, reference=None):
        rows = self.rows(reference)
        fields = ["layer", "kind", "source", "step", "channels", "mean_avg", "var_avg", *MEASURES]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        return path

    def to_pandas(self, reference=None):
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Monitor.to_pandas() needs pandas, which is not installed; "
                              "`pip install pandas`, or use Monitor.to_csv(path) / "
                              "Monitor.rows() which need nothing extra") from None
        return pd.DataFrame(self.rows(reference))

    def summary(self, reference=None):
        """Text table: per layer, the drift measures averaged over the last `reference` records."""
        k = self.reference if reference is None else reference
        head = (f"{'layer':<24} {'kind':<13} {'src':<5} {'K':>5} {'steps':>6} "
                f"{'mean_shift':>10} {'logvar':>8} {'sym_kl':>9} {'max_kl':>9}")
        lines = [f"drift vs. the first {k} records; last {k} records averaged", head,
                 "-" * len(head)]
        for name in self.layers:
            d = self.drift(name, k)
            n = len(d["step"])
            K = self.stats(name)["mean"].shape[1] if n else 0
            if n:
                last = {m: float(d[m][-k:].mean()) for m in MEASURES}
                mx = float(d["sym_kl"].max())
            else:
                last, mx = {m: math.nan for m in MEASURES}, math.nan
            lines.append(f"{name:<24.24} {self.kind(name):<13} {self.source(name):<5} {K:>5} "
                         f"{n:>6} {last['mean_shift']:>10.4g} {last['log_var_ratio']:>8.4g} "
                         f"{last['sym_kl']:>9.4g} {mx:>9.4g}")
        return "\n".join(lines)

    def plot(self, path, reference=None, title=None):
        """PNG with one panel per drift measure, a line per layer (matplotlib, Agg canvas)."""
        fig = _figure(figsize=(13, 3.6))
        axes = fig.subplots(1, len(MEASURES))
        for ax, m in zip(axes, MEASURES):
            for name in self.layers:
                d = self.drift(name, reference)
                ax.plot(d["step"].numpy(), d[m].numpy(), lw=1, label=name)
            ax.set_xlabel("step (forward call)")
            ax.set_title(m)
            if m == "sym_kl":
                ax.set_yscale("symlog", linthresh=1e-3)
        axes[0].legend(fontsize=7)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        _save(fig, path)
        return path


def _figure(**kw):
    # An Agg canvas of our own: no pyplot, no change to the user's global matplotlib backend.
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=110)


def track(model, layers=None, *, reference=10, every=1, capture="input", feature_dim=None,
          norm_stats=True, var_floor=1e-5):
    """Track the input statistics of `model`'s norm layers (or of `layers`) per forward call.

    layers:      None = every norm module in `model`; else a list of names or modules (any
                 module), or a dict {display name: name or module}.
    reference:   records in the reference window of the drift measures (and the summary's
                 averaging window).
    every:       record every `every`-th forward call of each layer.
    capture:     "input" or "output": which tensor the forward-hook path measures for
                 non-norm layers (norm layers always record their input).
    feature_dim: feature dim for non-norm layers (default: last for nn.Linear / 2-D, else 1).
    norm_stats:  False forces the forward-hook path for norm layers too (one extra pass).
    var_floor:   variance floor of the drift measures for non-norm layers.
    """
    return Monitor(model, layers, reference=reference, every=every, capture=capture,
                   feature_dim=feature_dim, norm_stats=norm_stats, var_floor=var_floor)
