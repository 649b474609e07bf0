"""Backend registry and selection.

    "native"     torch's own kernels (torch.native_layer_norm, ...): what torch.nn runs
    "reference"  fusednorm's pure-PyTorch implementation: the oracle, fp64, the extras on CPU
    "triton"     fusednorm's Triton kernels
    "cuda"       fusednorm's CUDA C++ kernels

Backends are modules implementing the contract in ``fusednorm/backends/__init__.py`` ("native"
is the exception: differentiable torch ops, see its module); they are imported on first use,
never at ``import fusednorm``.  ``FUSEDNORM_BACKEND`` is read on every call that does not name
a backend.

``auto`` (None): CUDA tensors get the first of cuda (prebuilt), triton that computes the
call; otherwise -- any device, and what the kernels do not cover (float64, complex) --
"native" when torch has a kernel for the call, "reference" when a fusednorm extra is asked
for (``extra``: a residual, a fused activation, SyncBatchNorm's collective statistics).

Selection is cached: the answer depends only on (op, the backend argument, the value of
FUSEDNORM_BACKEND when that argument is None, device type, dtype, extra), so a valid eager
call costs one environment read and one dict lookup.  Errors are never cached: a bad request is
re-examined (and raises the same message) on every call.

Under torch.compile the choice is made at trace time by ``resolve_traced``: the lookup,
which may import a backend module (or load the CUDA extension), runs outside Dynamo through
``torch.compiler.assume_constant_result`` and its answer is a constant of the graph; a
failed lookup is raised from traced code, so Dynamo reports the same exception.
"""
import importlib
import importlib.util
import os
from typing import Optional, Tuple

import torch

_MODULES = {
    "native": "fusednorm.backends.native",
    "reference": "fusednorm.reference",
    "triton": "fusednorm.backends.triton",
    "cuda": "fusednorm.backends.cuda",
}
# Names that once meant something else, refused with what replaced them.
_RETIRED = {
    "torch": "backend='torch' was split in two: 'native' (torch's own kernels: "
             "torch.native_layer_norm / native_group_norm / native_batch_norm / "
             "_fused_rms_norm) and 'reference' (fusednorm's pure-PyTorch implementation, the "
             "test oracle); name one of them, or None/'auto'",
}
# "auto" for CUDA tensors: the first of these that computes the call; then, like every other
# device, "native" (torch's own kernels) unless a fusednorm extra is asked for, else
# "reference".  cuda first: on an H200 (bench/RESULTS.md, 2026-11-26) its fwd+bwd was faster
# than the Triton kernels for every norm on the issue shapes (e.g. LN bf16 16384x8192: 1883
# vs 1364 GB/s; GN: 848 vs 368; BN: 1180 vs 762).  "auto" takes it only when the extension
# was prebuilt at install time: a just-in-time build (a minute or more) happens only when
# asked for by name.
_AUTO_ORDER_CUDA = ("cuda", "triton")
_loaded = {}
# (op, backend argument, env value, device type, dtype, extra) -> (name, module)
_chosen = {}


def _load(name: str):
    """(module, None) when backend ``name`` can run at all here, else (None, reason)."""
    if name not in _loaded:
        try:
            mod = importlib.import_module(_MODULES[name])
            reason = mod.unavailable_reason() if hasattr(mod, "unavailable_reason") else None
        except ImportError as e:
            mod, reason = None, f"cannot import {_MODULES[name]}: {e}"
        _loaded[name] = (None, reason) if reason else (mod, None)
        _chosen.clear()  # "auto" may now prefer a backend that was not loaded before
    return _loaded[name]


def _prebuilt_extension() -> bool:
    """Whether fusednorm._C was built at install time (looked up, not imported)."""
    return importlib.util.find_spec("fusednorm._C") is not None


def get(name: str):
    return _load(name)[0]


def available_backends() -> dict:
    """name -> True, or a string saying why that backend cannot run here."""
    return {name: (True if _load(name)[0] is not None else _load(name)[1]) for name in _MODULES}


def name_error(backend) -> str:
    """Why ``backend`` is not a backend name (the message after "fusednorm.<fn>: ")."""
    if isinstance(backend, str) and backend in _RETIRED:
        return _RETIRED[backend]
    return f"backend={backend!r}; expected None, 'auto' or one of {sorted(_MODULES)}"


def _device_reason(name: str, mod, op: str, device_type: str, dtype, extra: str
                   ) -> Optional[str]:
    if op not in mod.SUPPORTED:
        return f"backend {name!r} does not implement {op} yet"
    dtypes = getattr(mod, "DTYPES", (torch.float32, torch.float16, torch.bfloat16))
    if dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in sorted(dtypes, key=str))
        return f"backend {name!r} supports dtypes {names}; input is {dtype}"
    if extra and getattr(mod, "NATIVE", False):
        return (f"backend {name!r} runs torch's own kernels, which have no {extra}; use "
                "backend='reference' (or None/'auto', which picks it)")
    if name == "cuda" and device_type != "cuda":
        return f"backend 'cuda' needs a CUDA tensor; input is on {device_type}"
    if name == "triton" and device_type != "cuda" \
            and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return (f"backend 'triton' needs a CUDA tensor; input is on {device_type} "
                "(set TRITON_INTERPRET=1 before importing fusednorm to run it on CPU)")
    return None


def _choose(op: str, backend: str, device_type: str, dtype, extra: str = ""
            ) -> Tuple[Optional[str], tuple]:
    """(name, ()) or (None, (exception class, message without the "fusednorm.<fn>: " prefix))."""
    if backend == "auto":
        order = ("native", "reference")
        if device_type == "cuda":
            order = _AUTO_ORDER_CUDA + order
        reasons = []
        for name in order:
            if name == "cuda" and name not in _loaded and not _prebuilt_extension():
                continue
            mod = get(name)
            reason = _load(name)[1] if mod is None else _device_reason(
                name, mod, op, device_type, dtype, extra)
            if reason is None:
                return name, ()
            reasons.append(reason)
        return None, (RuntimeError, "no backend computes this call: " + "; ".join(reasons))
    if not isinstance(backend, str) or backend not in _MODULES:
        return None, (ValueError, name_error(backend))
    mod, reason = _load(backend)
    if mod is None:
        return None, (RuntimeError, f"backend {backend!r} is not available: {reason}")
    reason = _device_reason(backend, mod, op, device_type, dtype, extra)
    if reason is not None:
        return None, (RuntimeError, reason)
    return backend, ()


def resolve_module(fn: str, op: str, backend: Optional[str], x: torch.Tensor,
                   extra: str = ""):
    """(name, module) of the backend that runs ``op`` for ``x`` in eager mode; raises saying
    why an explicitly requested backend cannot.  ``extra``: "" or the fusednorm extra the
    call asks for, in words ("residual", ...): torch's native kernels have none."""
    env = os.environ.get("FUSEDNORM_BACKEND") if backend is None else None
    key = (op, backend, env, x.device.type, x.dtype, extra)
    try:
        return _chosen[key]
    except (KeyError, TypeError):  # TypeError: an unhashable backend argument (refused below)
        pass
    name, err = _choose(op, backend if backend is not None else (env or "auto"),
                        x.device.type, x.dtype, extra)
    if name is None:
        raise err[0](f"fusednorm.{fn}: {err[1]}")
    hit = _chosen[key] = (name, get(name))
    return hit


def resolve(fn: str, op: str, backend: Optional[str], x: torch.Tensor, extra: str = "") -> str:
    """The name of the backend that runs ``op`` for ``x``."""
    return resolve_module(fn, op, backend, x, extra)[0]


def _choose_at_trace_time(op: str, backend: Optional[str], device_type: str, dtype,
                          extra: str):
    """_choose for a traced call: run by Dynamo outside the graph (it may import a backend),
    its result baked into the graph.  Returns (name, error class name, message)."""
    request = backend if backend is not None else (os.environ.get("FUSEDNORM_BACKEND") or "auto")
    name, err = _choose(op, request, device_type, dtype, extra)
    return (name, "", "") if name is not None else (None, err[0].__name__, err[1])


# torch.compiler.assume_constant_result(_choose_at_trace_time), without its cost: the public
# decorator imports torch._dynamo (about 2.5 s) just to set this attribute, and nothing may be
# heavy at `import fusednorm`.  tests/test_paths.py checks the decorator still sets exactly it.
_choose_at_trace_time._dynamo_marked_constant = True

_ERRORS = {"ValueError": ValueError, "RuntimeError": RuntimeError}


def resolve_traced(fn: str, op: str, backend: Optional[str], x: torch.Tensor,
                   extra: str = "") -> str:
    """resolve() for code traced by torch.compile (see the module docstring)."""
    name, exc, msg = _choose_at_trace_time(op, backend, x.device.type, x.dtype, extra)
    if name is None:
        raise _ERRORS[exc](f"fusednorm.{fn}: {msg}")
    return name
