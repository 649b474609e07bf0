"""Shared machinery of the fusednorm microbenchmarks.

Cases (shapes from real models) come from the ``bench_<norm>.py`` files; this module holds
what they share: the bytes model, the providers, input buffers, the timers, the copy-bandwidth
baseline, the runner and the reports (JSON, CSV, Markdown, PNG).

Numbers are medians of ``triton.testing.do_bench`` on CUDA; on a CPU-only machine a
``time.perf_counter`` median stands in so the harness itself can be tested in CI.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
EPS = 1e-5
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PASSES = ("fwd", "bwd", "fwd+bwd")
OPS = ("layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm")
# Short names accepted by --norms.
OP_ALIASES = {"ln": "layer_norm", "rms": "rms_norm", "rmsnorm": "rms_norm", "gn": "group_norm",
              "in": "instance_norm", "bn": "batch_norm"}


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One benchmark shape.

    op:      one of OPS
    shape:   LN/RMS: (M, N) rows x hidden; GN/IN/BN: (N, C, *spatial)
    dtype:   "bf16" | "fp16" | "fp32" (input, output and -- except BN -- parameter dtype)
    layout:  "rows" (LN/RMS), "nchw" (contiguous) or "nhwc" (channels_last / channels_last_3d)
    variant: "" | "prenorm" (LN/RMS: x + residual fused, both outputs) | "silu" (GN + SiLU)
             | "eval" (BN with running statistics, forward only)
    groups:  GroupNorm groups (0 elsewhere)
    model:   where the shape comes from
    compile: time torch.compile on this case (compilation dominates the run time)
    """
    op: str
    shape: tuple
    dtype: str
    layout: str = "rows"
    variant: str = ""
    groups: int = 0
    model: str = ""
    compile: bool = True
    passes: tuple = PASSES

    def __post_init__(self):
        if self.layout == "rows" and self.op not in ("layer_norm", "rms_norm"):
            object.__setattr__(self, "layout", "nchw")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def param_dtype(self) -> torch.dtype:
        # BatchNorm parameters stay fp32 under mixed precision (what AMP training does);
        # LN/RMS/GN/IN parameters follow the activations (pure-bf16 LLM / diffusion checkpoints).
        return torch.float32 if self.op == "batch_norm" else self.torch_dtype

    @property
    def n_param(self) -> int:
        """Elements of one parameter vector: hidden size for LN/RMS, channels elsewhere."""
        return self.shape[-1] if self.op in ("layer_norm", "rms_norm") else self.shape[1]

    @property
    def shape_str(self) -> str:
        s = "x".join(str(d) for d in self.shape)
        return f"{s} G={self.groups}" if self.op == "group_norm" else s

    @property
    def key(self) -> tuple:
        return (self.op, self.variant, self.shape_str, self.dtype, self.layout)


# --------------------------------------------------------------------------------------------
# Bytes model
# --------------------------------------------------------------------------------------------
# Minimum DRAM traffic of a fused kernel, in elements of the activation per pass:
#   LN/RMS fwd: read x, write y                                  = 2
#   LN/RMS bwd: read x, dy, write dx (stats are per row: free)   = 3
#   LN/RMS prenorm fwd: read x, residual, write y, x+residual    = 4
#   LN/RMS prenorm bwd: read x+residual, dy, d(x+residual), write dx = 4
#   BN train fwd: read x for the statistics, again to normalize, write y = 3
#   BN train bwd: read x, dy for the reductions, again for dx, write dx  = 5
#   BN eval fwd: read x, write y                                  = 2
#   GN/IN fwd 2, bwd 3 (as LN; a group fits on chip or is re-read from L2)
# plus parameters: the forward reads weight (and bias), the backward reads weight and writes
# the gradient of each affine parameter. Statistics (mean/rstd) are ignored: O(rows).
ACT_FACTOR = {
    ("layer_norm", "", "fwd"): 2, ("layer_norm", "", "bwd"): 3,
    ("layer_norm", "prenorm", "fwd"): 4, ("layer_norm", "prenorm", "bwd"): 4,
    ("batch_norm", "", "fwd"): 3, ("batch_norm", "", "bwd"): 5,
    ("batch_norm", "eval", "fwd"): 2, ("batch_norm", "eval", "bwd"): 3,
    ("group_norm", "", "fwd"): 2, ("group_norm", "", "bwd"): 3,
}


def n_affine(op: str) -> int:
    """Affine parameter tensors: weight and bias, RMSNorm has weight only."""
    return 1 if op == "rms_norm" else 2


def bytes_model(op: str, pass_: str, numel: int, elem_size: int, n_param: int = 0,
                param_size: int = 0, variant: str = "") -> int:
    """Bytes a fused kernel must move for one pass ("fwd", "bwd" or "fwd+bwd")."""
    if pass_ == "fwd+bwd":
        return (bytes_model(op, "fwd", numel, elem_size, n_param, param_size, variant)
                + bytes_model(op, "bwd", numel, elem_size, n_param, param_size, variant))
    family = {"rms_norm": "layer_norm", "instance_norm": "group_norm"}.get(op, op)
    var = variant if variant in ("prenorm", "eval") else ""
    try:
        k = ACT_FACTOR[(family, var, pass_)]
    except KeyError:
        raise ValueError(f"bytes_model: no model for op={op!r} variant={variant!r} "
                         f"pass={pass_!r}") from None
    p = n_param * param_size
    na = n_affine(op)
    params = na * p if pass_ == "fwd" else p + na * p  # bwd: read weight, write the grads
    return k * numel * elem_size + params


def case_bytes(case: Case, pass_: str) -> int:
    return bytes_model(case.op, pass_, case.numel, case.torch_dtype.itemsize, case.n_param,
                       case.param_dtype.itemsize, case.variant)


# --------------------------------------------------------------------------------------------
# fusednorm import (installed, or straight from the source tree)
# --------------------------------------------------------------------------------------------
_FUSEDNORM = None


def import_fusednorm():
    """Import fusednorm; when it is not installed, load it from python/ with kernels/ mapped
    to fusednorm.kernels (what setup.py's package_dir does), so a source checkout works."""
    global _FUSEDNORM
    if _FUSEDNORM is not None:
        return _FUSEDNORM
    try:
        import fusednorm
    except ImportError:
        import importlib.util
        init = ROOT / "python" / "fusednorm" / "__init__.py"
        if not init.exists():
            raise
        spec = importlib.util.spec_from_file_location(
            "fusednorm", init, submodule_search_locations=[str(init.parent), str(ROOT)])
        fusednorm = importlib.util.module_from_spec(spec)
        sys.modules["fusednorm"] = fusednorm
        try:
            spec.loader.exec_module(fusednorm)
        except BaseException:
            del sys.modules["fusednorm"]
            raise
    _FUSEDNORM = fusednorm
    return fusednorm


def fusednorm_backends() -> dict:
    """available_backends() of fusednorm, or every backend unavailable with the import error."""
    try:
        fn = import_fusednorm()
        return dict(fn.available_backends())
    except Exception as e:  # noqa: BLE001 -- the reason is reported, never swallowed
        why = f"fusednorm not importable: {type(e).__name__}: {e}"
        return {"torch": why, "triton": why, "cuda": why}


# --------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------
def _eager(case: Case, p: dict):
    """The torch.nn.functional formulation: torch eager, and the input of torch.compile."""
    op, v = case.op, case.variant
    if op in ("layer_norm", "rms_norm"):
        N = case.shape[-1]
        norm = ((lambda s: F.layer_norm(s, (N,), p["weight"], p["bias"], EPS)) if op == "layer_norm"
                else (lambda s: F.rms_norm(s, (N,), p["weight"], EPS)))
        if v == "prenorm":
            def f(x, residual):
                s = x + residual
                return norm(s), s
            return f
        return lambda x, residual=None: norm(x)
    if op == "group_norm":
        if v == "silu":
            return lambda x, residual=None: F.silu(F.group_norm(x, case.groups, p["weight"], p["bias"], EPS))
        return lambda x, residual=None: F.group_norm(x, case.groups, p["weight"], p["bias"], EPS)
    if op == "instance_norm":
        return lambda x, residual=None: F.instance_norm(x, weight=p["weight"], bias=p["bias"], eps=EPS)
    if op == "batch_norm":
        training = v != "eval"
        return lambda x, residual=None: F.batch_norm(x, p["running_mean"], p["running_var"], p["weight"],
                                                     p["bias"], training=training, momentum=0.1, eps=EPS)
    raise ValueError(f"unknown op {op!r}")


def _fusednorm(backend: str):
    def build(case: Case, p: dict):
        fn = import_fusednorm()
        op, v = case.op, case.variant
        if op == "layer_norm":
            N = case.shape[-1]
            if v == "prenorm":
                return lambda x, residual: fn.layer_norm(x, (N,), p["weight"], p["bias"], EPS,
                                                         residual=residual, prenorm=True, backend=backend)
            return lambda x, residual=None: fn.layer_norm(x, (N,), p["weight"], p["bias"], EPS, backend=backend)
        if op == "rms_norm":
            N = case.shape[-1]
            if v == "prenorm":
                return lambda x, residual: fn.rms_norm(x, (N,), p["weight"], EPS, residual=residual,
                                                       prenorm=True, backend=backend)
            return lambda x, residual=None: fn.rms_norm(x, (N,), p["weight"], EPS, backend=backend)
        if op == "group_norm":
            act = "silu" if v == "silu" else None
            return lambda x, residual=None: fn.group_norm(x, case.groups, p["weight"], p["bias"], EPS,
                                                          activation=act, backend=backend)
        if op == "instance_norm":
            return lambda x, residual=None: fn.instance_norm(x, None, None, p["weight"], p["bias"],
                                                             use_input_stats=True, eps=EPS, backend=backend)
        if op == "batch_norm":
            training = v != "eval"
            return lambda x, residual=None: fn.batch_norm(x, p["running_mean"], p["running_var"], p["weight"],
                                                          p["bias"], training=training, momentum=0.1, eps=EPS,
                                                          backend=backend)
        raise ValueError(f"unknown op {op!r}")
    return build


def _compiled(case: Case, p: dict):
    import torch._dynamo
    torch._dynamo.reset()  # one case = one compile; no recompile limit, no automatic dynamic
    return torch.compile(_eager(case, p), dynamic=False)


def _liger(case: Case, p: dict):
    op, v = case.op, case.variant
    if op == "layer_norm":
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction as LN
        return lambda x, residual=None: LN.apply(x, p["weight"], p["bias"], EPS)
    if op == "rms_norm":
        if v == "prenorm":
            from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction as AR
            return lambda x, residual: AR.apply(x, residual, p["weight"], EPS, 0.0, "llama", False)
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction as RMS
        # in_place=False: the in-place variant overwrites dy, which the timing loop reuses.
        return lambda x, residual=None: RMS.apply(x, p["weight"], EPS, 0.0, "llama", False)
    if op == "group_norm":
        from liger_kernel.ops.group_norm import LigerGroupNormFunction as GN
        C = case.shape[1]
        return lambda x, residual=None: GN.apply(x, p["weight"], p["bias"], C, case.groups, EPS)
    raise ValueError(f"liger: no {op}")


def _apex(case: Case, p: dict):
    from apex.normalization.fused_layer_norm import fused_layer_norm_affine, fused_rms_norm_affine
    N = case.shape[-1]
    if case.op == "layer_norm":
        return lambda x, residual=None: fused_layer_norm_affine(x, p["weight"], p["bias"], (N,), EPS)
    return lambda x, residual=None: fused_rms_norm_affine(x, p["weight"], (N,), EPS)


@dataclass
class Provider:
    name: str
    build: object                       # (case, params) -> f(x, residual=None) -> output(s)
    ops: tuple = OPS
    needs_cuda: bool = False
    backend: str | None = None          # fusednorm backend name
    module: str | None = None           # a module whose import decides availability
    _avail: object = field(default=None, repr=False)

    def available(self, device: str):
        """True, or a string saying why not."""
        if self._avail is None:
            self._avail = self._check()
        if self._avail is True and self.needs_cuda and device != "cuda":
            return "needs a CUDA device"
        return self._avail

    def _check(self):
        if self.backend is not None:
            ok = fusednorm_backends().get(self.backend, f"fusednorm has no backend {self.backend!r}")
            return True if ok is True else str(ok)
        if self.module is not None:
            try:
                __import__(self.module)
            except Exception as e:  # noqa: BLE001
                return f"{self.module} not importable ({type(e).__name__}: {e})"
        return True

    def supports(self, case: Case):
        """True, or why this provider cannot run this case."""
        if case.op not in self.ops:
            return f"{self.name} has no {case.op}"
        if self.name == "liger":
            if case.variant == "prenorm" and case.op == "layer_norm":
                return "liger has no fused residual-add LayerNorm"
            if case.variant == "silu":
                return "liger GroupNorm has no fused activation"
        if self.name == "apex" and case.variant:
            return f"apex has no {case.variant} variant"
        if self.name == "torch.compile" and not case.compile:
            return "torch.compile timed on selected shapes only (compile time dominates)"
        return True


PROVIDERS = {
    "fusednorm-triton": Provider("fusednorm-triton", _fusednorm("triton"), backend="triton"),
    "fusednorm-cuda": Provider("fusednorm-cuda", _fusednorm("cuda"), backend="cuda"),
    "fusednorm-torch": Provider("fusednorm-torch", _fusednorm("torch"), backend="torch"),
    "torch": Provider("torch", _eager),
    "torch.compile": Provider("torch.compile", _compiled),
    "liger": Provider("liger", _liger, ops=("layer_norm", "rms_norm", "group_norm"), needs_cuda=True,
                      module="liger_kernel.ops.layer_norm"),
    "apex": Provider("apex", _apex, ops=("layer_norm", "rms_norm"), needs_cuda=True,
                     module="apex.normalization.fused_layer_norm"),
}
# The reference backend is a correctness oracle, not a contender: off by default on a GPU.
DEFAULT_PROVIDERS = ("fusednorm-triton", "fusednorm-cuda", "torch", "torch.compile", "liger", "apex")


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def _fmt(t: torch.Tensor, case: Case) -> torch.Tensor:
    if case.layout == "nhwc":
        mf = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        return t.contiguous(memory_format=mf)
    return t


def make_params(case: Case, device: str) -> dict:
    g = torch.Generator(device="cpu").manual_seed(1)
    C, pd = case.n_param, case.param_dtype
    w = (1 + 0.1 * torch.randn(C, generator=g)).to(device=device, dtype=pd).requires_grad_(True)
    b = (0.1 * torch.randn(C, generator=g)).to(device=device, dtype=pd).requires_grad_(True)
    p = {"weight": w, "bias": None if case.op == "rms_norm" else b}
    if case.op == "batch_norm":
        p["running_mean"] = torch.zeros(C, device=device, dtype=torch.float32)
        p["running_var"] = torch.ones(C, device=device, dtype=torch.float32)
    return p


def make_buffers(case: Case, device: str, n: int) -> list:
    """n independent input sets (x, residual, grads of the outputs)."""
    bufs = []
    for i in range(n):
        def rnd():
            return _fmt(torch.randn(case.shape, device=device, dtype=case.torch_dtype), case)
        b = {"x": rnd().requires_grad_(True), "residual": None}
        if case.variant == "prenorm":
            b["residual"] = rnd().requires_grad_(True)
            b["grads"] = [rnd(), rnd()]
        else:
            b["grads"] = [rnd()]
        bufs.append(b)
    return bufs


def l2_bytes(device: str) -> int:
    if device == "cuda":
        try:
            return int(torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size)
        except Exception:  # noqa: BLE001
            pass
    return 50 * 2**20  # H100/H200: 50 MB


def n_rotating(case: Case, device: str) -> int:
    """Input sets to cycle through so that a call never finds its inputs in L2: together they
    span twice the L2 size (~100 MB on H100), capped at 64."""
    if device != "cuda":
        return 1
    per = case.numel * case.torch_dtype.itemsize * (2 + (2 if case.variant == "prenorm" else 0))
    return max(1, min(64, math.ceil(2 * l2_bytes(device) / per)))


# --------------------------------------------------------------------------------------------
# Timers and the copy-bandwidth baseline
# --------------------------------------------------------------------------------------------
def time_cpu(fn, warmup_ms: float = 10, rep_ms: float = 40, min_iters: int = 3,
             max_iters: int = 200) -> float:
    """Median milliseconds of fn() with time.perf_counter (the CPU stand-in for do_bench)."""
    t = time.perf_counter()
    fn()
    est = max(time.perf_counter() - t, 1e-7)
    for _ in range(min(max_iters, int(warmup_ms / 1e3 / est))):
        fn()
    n = max(min_iters, min(max_iters, int(rep_ms / 1e3 / est)))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def time_cuda(fn, warmup_ms: float = 10, rep_ms: float = 40) -> float:
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def timer_for(device: str):
    if device == "cuda":
        return time_cuda
    return time_cpu


def gbps(nbytes: float, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


def copy_bandwidth(device: str, nbytes: int | None = None, warmup_ms: float = 10,
                   rep_ms: float = 100) -> dict:
    """Device-to-device copy bandwidth: dst.copy_(src), bytes read + written."""
    if nbytes is None:
        nbytes = 2**30 if device == "cuda" else 2**25  # >= 1 GB on the GPU, as the brief asks
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    ms = timer_for(device)(lambda: dst.copy_(src), warmup_ms, rep_ms)
    moved = 2 * src.numel() * 4
    del src, dst
    return {"copy_bytes": moved, "copy_ms": ms, "copy_gbps": gbps(moved, ms)}


# --------------------------------------------------------------------------------------------
# Progress and metadata
# --------------------------------------------------------------------------------------------
class Progress:
    """tqdm when installed and enabled, else one printed line per step."""

    def __init__(self, total: int, desc: str = "", enable: bool = True):
        self.total, self.n, self.desc, self.bar = total, 0, desc, None
        if enable:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, file=sys.stdout)
            except ImportError:
                pass
        self.quiet = not enable

    def step(self, what: str = ""):
        self.n += 1
        if self.bar is not None:
            self.bar.set_postfix_str(what[:60])
            self.bar.update(1)
        elif not self.quiet:
            print(f"[{self.n}/{self.total}] {self.desc} {what}", flush=True)

    def write(self, msg: str):
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def git_commit() -> str:
    """FUSEDNORM_COMMIT when the caller sets it (the GPU machine's copy of the tree has the last
    landed commit as git HEAD plus the working changes: git alone says "<landed>-dirty"),
    else git's HEAD (+ "-dirty")."""
    if os.environ.get("FUSEDNORM_COMMIT"):
        return os.environ["FUSEDNORM_COMMIT"]
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode == 0 and head.stdout.strip():
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                    "--untracked-files=no"], capture_output=True, text=True, timeout=10)
            return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def collect_meta(device: str) -> dict:
    try:
        import triton
        triton_v = triton.__version__
    except ImportError:
        triton_v = "none"
    gpu = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.machine()})"
    return {"gpu": gpu, "torch": torch.__version__, "triton": triton_v,
            "cuda": torch.version.cuda or "none", "commit": git_commit(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# --------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------
ROW_FIELDS = ["op", "variant", "shape", "dtype", "layout", "model", "pass", "provider", "status",
              "ms", "bytes", "gbps", "pct_copy", "speedup_eager", "speedup_compile", "max_err",
              "first_call_s", "numel", "copy_gbps", "gpu", "torch", "triton", "cuda", "commit", "date"]
FLOAT_FIELDS = ("ms", "gbps", "pct_copy", "speedup_eager", "speedup_compile", "max_err",
                "first_call_s", "copy_gbps")
INT_FIELDS = ("bytes", "numel")


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _leaves(buf: dict, p: dict) -> list:
    xs = [buf["x"]] + ([buf["residual"]] if buf["residual"] is not None else [])
    return xs + [t for t in (p["weight"], p["bias"]) if t is not None]


def pass_fn(f, case: Case, pass_: str, bufs: list, p: dict):
    """A zero-argument callable doing one pass on the next input set (rotating)."""
    it = [0]
    n = len(bufs)

    def nxt():
        b = bufs[it[0] % n]
        it[0] += 1
        return b

    def call(b):
        return _as_tuple(f(b["x"], b["residual"]) if b["residual"] is not None else f(b["x"]))

    if pass_ == "fwd":
        return lambda: call(nxt())
    if pass_ == "fwd+bwd":
        def fb():
            b = nxt()
            return torch.autograd.grad(call(b), _leaves(b, p), b["grads"])
        return fb
    if pass_ == "bwd":
        graphs = [(call(b), _leaves(b, p), b["grads"]) for b in bufs]

        def bw():
            outs, leaves, grads = graphs[it[0] % n]
            it[0] += 1
            # autograd.grad returns the gradients: no accumulation into .grad to pay for.
            return torch.autograd.grad(outs, leaves, grads, retain_graph=True)
        return bw
    raise ValueError(f"unknown pass {pass_!r}")


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _row(case: Case, pass_: str, provider: str, status: str, meta: dict, **kw) -> dict:
    r = {k: None for k in ROW_FIELDS}
    r.update(op=case.op, variant=case.variant, shape=case.shape_str, dtype=case.dtype,
             layout=case.layout, model=case.model, provider=provider, status=status,
             bytes=case_bytes(case, pass_), numel=case.numel)
    r["pass"] = pass_
    r.update({k: meta.get(k) for k in ("gpu", "torch", "triton", "cuda", "commit", "date")})
    r.update(kw)
    return r


def run_case(case: Case, providers: list, device: str, meta: dict, *, warmup_ms=10, rep_ms=40,
             n_buffers=None, log=print, skip_compile_reason=None) -> list:
    """Time every provider and pass of one case; returns rows (also for skips and errors)."""
    rows = []
    timer = timer_for(device)
    try:
        bufs = make_buffers(case, device, n_buffers or n_rotating(case, device))
        p = make_params(case, device)
        with torch.no_grad():  # eager output on the first input set: the accuracy yardstick
            ref = _as_tuple(_eager(case, p)(bufs[0]["x"], bufs[0]["residual"]))
    except torch.OutOfMemoryError as e:
        return [_row(case, ps, pr.name, f"error: OOM building inputs ({e})".splitlines()[0], meta)
                for pr in providers for ps in case.passes]
    for prov in providers:
        why = prov.available(device)
        if why is True:
            why = prov.supports(case)
        if why is True and prov.name == "torch.compile" and skip_compile_reason:
            why = skip_compile_reason
        if why is not True:
            rows += [_row(case, ps, prov.name, f"skipped: {why}", meta) for ps in case.passes]
            continue
        try:
            f = prov.build(case, p)
        except Exception as e:  # noqa: BLE001
            msg = f"error: {type(e).__name__}: {e}".splitlines()[0][:300]
            log(f"  {prov.name} {case.op} {case.shape_str} {case.dtype}: {msg}")
            rows += [_row(case, ps, prov.name, msg, meta) for ps in case.passes]
            continue
        for ps in case.passes:
            try:
                fn = pass_fn(f, case, ps, bufs, p)
                t0 = time.perf_counter()
                out = fn()  # compiles / JITs; excluded from the timing
                _sync(device)
                first = time.perf_counter() - t0
                err = None
                if ps == "fwd":
                    err = max(float((o.detach().float() - r.float()).abs().max()) if o.numel() else 0.0
                              for o, r in zip(out, ref))
                del out
                ms = timer(fn, warmup_ms, rep_ms)
                rows.append(_row(case, ps, prov.name, "ok", meta, ms=ms, max_err=err,
                                 first_call_s=first))
            except Exception as e:  # noqa: BLE001 -- recorded in the row and printed
                msg = f"error: {type(e).__name__}: {e}".splitlines()[0][:300]
                if "does not implement" in msg:  # the backend lacks this op (yet): a skip
                    msg = "skipped: " + msg.split(": ", 2)[-1]
                log(f"  {prov.name} {case.op} {case.shape_str} {case.dtype} {ps}: {msg}")
                rows.append(_row(case, ps, prov.name, msg, meta))
            finally:
                fn = None
                if device == "cuda":
                    torch.cuda.empty_cache()
        f = None
    return rows


def add_derived(rows: list, copy_gbps: float) -> list:
    """Fill gbps, pct_copy and the speed-ups over torch eager and torch.compile (in place)."""
    base = {}
    for r in rows:
        if r["status"] == "ok" and r["provider"] in ("torch", "torch.compile"):
            base[(r["provider"], r["op"], r["variant"], r["shape"], r["dtype"], r["layout"], r["pass"])] = r["ms"]
    for r in rows:
        r["copy_gbps"] = copy_gbps
        if r["status"] != "ok" or not r.get("ms"):
            continue
        r["gbps"] = gbps(r["bytes"], r["ms"])
        r["pct_copy"] = 100.0 * r["gbps"] / copy_gbps if copy_gbps else None
        k = (r["op"], r["variant"], r["shape"], r["dtype"], r["layout"], r["pass"])
        e, c = base.get(("torch",) + k), base.get(("torch.compile",) + k)
        r["speedup_eager"] = e / r["ms"] if e else None
        r["speedup_compile"] = c / r["ms"] if c else None
    return rows


def run_cases(cases: list, provider_names: list, device: str, out_dir, *, warmup_ms=10, rep_ms=40,
              n_buffers=None, copy_bytes=None, budget_s=None, compile_budget_s=None,
              progress=True, plots=True) -> dict:
    """Run everything, writing results.json / results.csv after each case (a killed run keeps
    what it measured) and table.md / plots at the end. Returns the result dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    meta = collect_meta(device)
    unknown = [n for n in provider_names if n not in PROVIDERS]
    if unknown:
        raise ValueError(f"unknown providers {unknown}; known: {sorted(PROVIDERS)}")
    providers = [PROVIDERS[n] for n in provider_names]
    print(f"fusednorm bench on {meta['gpu']} | torch {meta['torch']} | triton {meta['triton']} | "
          f"CUDA {meta['cuda']} | commit {meta['commit']} | {meta['date']}", flush=True)
    for pr in providers:
        why = pr.available(device)
        print(f"  provider {pr.name:17s} {'available' if why is True else 'SKIPPED: ' + why}", flush=True)
    copy = copy_bandwidth(device, copy_bytes)
    meta.update(copy)
    print(f"  copy bandwidth: {copy['copy_gbps']:.1f} GB/s (dst.copy_(src), "
          f"{copy['copy_bytes'] / 1e9:.2f} GB read + written, {copy['copy_ms']:.3f} ms)", flush=True)
    rows = []
    bar = Progress(len(cases), "bench", enable=progress)
    for case in cases:
        elapsed = time.perf_counter() - t_start
        label = f"{case.op}{'/' + case.variant if case.variant else ''} {case.shape_str} {case.dtype} {case.layout}"
        if budget_s is not None and elapsed > budget_s:
            rows += [_row(case, ps, pr.name, f"skipped: time budget {budget_s:.0f}s spent", meta)
                     for pr in providers for ps in case.passes]
            bar.step("(over budget) " + label)
            continue
        skip_c = None
        if compile_budget_s is not None and elapsed > compile_budget_s:
            skip_c = f"torch.compile skipped after {compile_budget_s:.0f}s of the time budget"
        case_rows = run_case(case, providers, device, meta, warmup_ms=warmup_ms, rep_ms=rep_ms,
                             n_buffers=n_buffers, log=bar.write, skip_compile_reason=skip_c)
        rows += case_rows
        add_derived(rows, copy["copy_gbps"])
        write_json(out_dir / "results.json", meta, rows)
        write_csv(out_dir / "results.csv", rows)
        bar.step(label)
    bar.close()
    add_derived(rows, copy["copy_gbps"])
    write_json(out_dir / "results.json", meta, rows)
    write_csv(out_dir / "results.csv", rows)
    (out_dir / "table.md").write_text(rows_to_markdown(rows, meta))
    for line in skip_summary(rows):
        print("  " + line)
    if plots:
        made = make_plots(rows, out_dir, copy["copy_gbps"])
        print(f"  {len(made)} plots" if made is not None else "  plots skipped: matplotlib not importable")
    print(f"  wrote {out_dir}/results.json, results.csv, table.md "
          f"({time.perf_counter() - t_start:.0f}s)", flush=True)
    return {"meta": meta, "rows": rows}


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------
def write_json(path, meta: dict, rows: list):
    Path(path).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


def read_json(path) -> tuple:
    d = json.loads(Path(path).read_text())
    return d["meta"], d["rows"]


def write_csv(path, rows: list):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=ROW_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in ROW_FIELDS})


def read_csv(path) -> list:
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            for k in ROW_FIELDS:
                v = r.get(k)
                if v == "" or v is None:
                    r[k] = "" if k in ("variant", "model") else None
                elif k in FLOAT_FIELDS:
                    r[k] = float(v)
                elif k in INT_FIELDS:
                    r[k] = int(v)
            rows.append(r)
    return rows


def _f(v, spec, suffix=""):
    return "—" if v is None else f"{v:{spec}}{suffix}"


def skip_summary(rows: list) -> list:
    """One line per (provider, op, reason) for rows that did not run: skips are never silent."""
    seen = {}
    for r in rows:
        if r["status"] != "ok":
            k = (r["provider"], r["op"], r["status"])
            seen[k] = seen.get(k, 0) + 1
    return [f"{p} {op}: {s} ({n} rows)" for (p, op, s), n in seen.items()]


def rows_to_markdown(rows: list, meta: dict) -> str:
    copy = meta.get("copy_gbps")
    lines = ["# fusednorm microbenchmarks", "",
             f"{meta.get('gpu')} · torch {meta.get('torch')} · triton {meta.get('triton')} · "
             f"CUDA {meta.get('cuda')} · commit {meta.get('commit')} · {meta.get('date')}", ""]
    if copy:
        lines += [f"Device-to-device copy bandwidth: **{copy:.1f} GB/s** (`dst.copy_(src)`, "
                  f"{(meta.get('copy_bytes') or 0) / 1e9:.2f} GB read + written). "
                  "GB/s = bytes model / median time; % copy = GB/s / copy bandwidth.", ""]
    for op in OPS:
        ok = [r for r in rows if r["op"] == op and r["status"] == "ok"]
        if not ok:
            continue
        lines += [f"## {op}", "",
                  "| pass | shape | dtype | layout | variant | provider | ms | GB/s | % copy | × eager | × compile |",
                  "|---|---|---|---|---|---|---:|---:|---:|---:|---:|"]
        for r in ok:
            lines.append(
                f"| {r['pass']} | {r['shape']} | {r['dtype']} | {r['layout']} | {r['variant'] or '—'} | "
                f"{r['provider']} | {_f(r['ms'], '.4f')} | {_f(r['gbps'], '.1f')} | "
                f"{_f(r['pct_copy'], '.1f')} | {_f(r['speedup_eager'], '.2f', '×')} | "
                f"{_f(r['speedup_compile'], '.2f', '×')} |")
        lines.append("")
    skipped = skip_summary(rows)
    if skipped:
        lines += ["## Not measured", ""] + [f"- {s}" for s in skipped] + [""]
    return "\n".join(lines)


def make_plots(rows: list, out_dir, copy_gbps=None):
    """GB/s against size, one line per provider; one PNG per (op, variant, dtype, layout) with a
    panel per pass. Returns the paths, or None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups = {}
    for r in rows:
        if r["status"] == "ok" and r.get("gbps"):
            groups.setdefault((r["op"], r["variant"] or "", r["dtype"], r["layout"]), []).append(r)
    paths = []
    for (op, var, dt, lay), rs in sorted(groups.items()):
        passes = [p for p in PASSES if any(r["pass"] == p for r in rs)]
        fig, axes = plt.subplots(1, len(passes), figsize=(5 * len(passes), 4), squeeze=False)
        for ax, ps in zip(axes[0], passes):
            for prov in sorted({r["provider"] for r in rs}):
                pts = sorted((r["numel"], r["gbps"]) for r in rs if r["pass"] == ps and r["provider"] == prov)
                if pts:
                    ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=prov)
            if copy_gbps:
                ax.axhline(copy_gbps, color="gray", ls="--", lw=1, label="copy")
            ax.set_xscale("log")
            ax.set_xlabel("elements")
            ax.set_ylabel("GB/s (bytes model)")
            ax.set_title(ps)
            ax.grid(True, alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"{op}{' ' + var if var else ''} {dt} {lay}")
        fig.tight_layout()
        path = Path(out_dir) / f"plot_{op}{'_' + var if var else ''}_{dt}_{lay}.png".replace("+", "")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
