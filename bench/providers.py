"""The contenders: fusednorm's backends, torch eager, torch.compile, Liger-Kernel, apex.

A ``Provider`` builds, for one case and its parameters, a function ``f(x, residual=None)`` that
runs the op the way that library would be called in training code, and says whether it can
run here (``available``) and on this case (``supports``), with the reason when not.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.cases import EPS, EPS_LN2D, OPS, ROOT, Case


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
        return {"reference": why, "triton": why, "cuda": why}


# --------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------
def eager(case: Case, p: dict):
    """The torch.nn.functional formulation: torch eager, and the input of torch.compile
    (LayerNorm2d: timm's, a permuted F.layer_norm)."""
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
    if op == "layer_norm_2d":
        # timm.layers.LayerNorm2d.forward (timm 1.0): F.layer_norm over the NHWC view, permuted
        # back; no .contiguous() -- F.layer_norm copies an NCHW input's permuted view itself, and
        # the output has channels_last strides either way.
        C = case.shape[1]
        return lambda x, residual=None: F.layer_norm(x.permute(0, 2, 3, 1), (C,), p["weight"], p["bias"],
                                                     EPS_LN2D).permute(0, 3, 1, 2)
    raise ValueError(f"unknown op {op!r}")


# fusednorm's pure-PyTorch backend (the oracle) is "reference"; trees before the backend split
# called it "torch". The bench takes whichever name the imported fusednorm has.
REFERENCE_NAMES = ("reference", "torch")


def reference_backend() -> str:
    have = fusednorm_backends()
    return next((n for n in REFERENCE_NAMES if n in have), REFERENCE_NAMES[0])


def _fusednorm(backend):
    """``backend``: a fusednorm backend name, or a zero-argument function returning one."""
    def build(case: Case, p: dict):
        fn = import_fusednorm()
        be = backend() if callable(backend) else backend
        return _fusednorm_call(fn, be, case, p)
    return build


def _fusednorm_call(fn, backend: str, case: Case, p: dict):
    """fusednorm's function for the case, bound to one backend."""
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
    if op == "layer_norm_2d":
        return lambda x, residual=None: fn.layer_norm_2d(x, p["weight"], p["bias"], EPS_LN2D, backend=backend)
    raise ValueError(f"unknown op {op!r}")


def _compiled(case: Case, p: dict):
    import torch._dynamo
    torch._dynamo.reset()  # one case = one compile; no recompile limit, no automatic dynamic
    return torch.compile(eager(case, p), dynamic=False)


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
    backend: object = None              # fusednorm backend name (or a function returning it)
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
            be = self.backend() if callable(self.backend) else self.backend
            ok = fusednorm_backends().get(be, f"fusednorm has no backend {be!r}")
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
    "fusednorm-torch": Provider("fusednorm-torch", _fusednorm(reference_backend), backend=reference_backend),
    "torch": Provider("torch", eager),
    "torch.compile": Provider("torch.compile", _compiled),
    "liger": Provider("liger", _liger, ops=("layer_norm", "rms_norm", "group_norm"), needs_cuda=True,
                      module="liger_kernel.ops.layer_norm"),
    "apex": Provider("apex", _apex, ops=("layer_norm", "rms_norm"), needs_cuda=True,
                     module="apex.normalization.fused_layer_norm"),
}
# The reference backend is a correctness oracle, not a contender: off by default on a GPU.
DEFAULT_PROVIDERS = ("fusednorm-triton", "fusednorm-cuda", "torch", "torch.compile", "liger", "apex")
