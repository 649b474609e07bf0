"""Backend registry and selection.

Backends are modules implementing the contract in ``fusednorm/backends/__init__.py``; they
are imported on first use, never at ``import fusednorm``.  ``FUSEDNORM_BACKEND`` is read on
every call that does not name a backend.
"""
import importlib
import importlib.util
import os
from typing import Optional

import torch

_MODULES = {
    "torch": "fusednorm.reference",
    "triton": "fusednorm.backends.triton",
    "cuda": "fusednorm.backends.cuda",
}
# "auto" tries these in order for CUDA tensors; CPU tensors always get the reference.
# cuda first: on an H200 (bench/RESULTS.md, 2026-11-26) its fwd+bwd was faster than the
# Triton kernels for every norm on the issue shapes (e.g. LN bf16 16384x8192: 1883 vs 1364
# GB/s; GN: 848 vs 368; BN: 1180 vs 762).  "auto" takes it only when the extension was
# prebuilt at install time: a just-in-time build (a minute or more) happens only when asked
# for by name.
_AUTO_ORDER_CUDA = ("cuda", "triton", "torch")
_loaded = {}


def _load(name: str):
    """(module, None) when backend ``name`` can run at all here, else (None, reason)."""
    if name not in _loaded:
        try:
            mod = importlib.import_module(_MODULES[name])
            reason = mod.unavailable_reason() if hasattr(mod, "unavailable_reason") else None
        except ImportError as e:
            mod, reason = None, f"cannot import {_MODULES[name]}: {e}"
        _loaded[name] = (None, reason) if reason else (mod, None)
    return _loaded[name]


def _prebuilt_extension() -> bool:
    """Whether fusednorm._C was built at install time (looked up, not imported)."""
    return importlib.util.find_spec("fusednorm._C") is not None


def get(name: str):
    return _load(name)[0]


def available_backends() -> dict:
    """name -> True, or a string saying why that backend cannot run here."""
    return {name: (True if _load(name)[0] is not None else _load(name)[1]) for name in _MODULES}


def _device_reason(name: str, mod, op: str, x: torch.Tensor) -> Optional[str]:
    if op not in mod.SUPPORTED:
        return f"backend {name!r} does not implement {op} yet"
    dtypes = getattr(mod, "DTYPES", (torch.float32, torch.float16, torch.bfloat16))
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in sorted(dtypes, key=str))
        return f"backend {name!r} supports dtypes {names}; input is {x.dtype}"
    if name == "cuda" and x.device.type != "cuda":
        return f"backend 'cuda' needs a CUDA tensor; input is on {x.device}"
    if name == "triton" and x.device.type != "cuda" \
            and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return (f"backend 'triton' needs a CUDA tensor; input is on {x.device} "
                "(set TRITON_INTERPRET=1 before importing fusednorm to run it on CPU)")
    return None


def resolve(fn: str, op: str, backend: Optional[str], x: torch.Tensor) -> str:
    """The backend that runs ``op`` for ``x``; raises saying why an explicit one cannot."""
    if backend is None:
        backend = os.environ.get("FUSEDNORM_BACKEND") or "auto"
    if backend == "auto":
        if x.device.type != "cuda":
            return "torch"
        for name in _AUTO_ORDER_CUDA:
            if name == "cuda" and name not in _loaded and not _prebuilt_extension():
                continue
            mod = get(name)
            if mod is not None and _device_reason(name, mod, op, x) is None:
                return name
        return "torch"
    if backend not in _MODULES:
        raise ValueError(f"fusednorm.{fn}: backend={backend!r}; expected None, 'auto' or one "
                         f"of {sorted(_MODULES)}")
    mod, reason = _load(backend)
    if mod is None:
        raise RuntimeError(f"fusednorm.{fn}: backend {backend!r} is not available: {reason}")
    reason = _device_reason(backend, mod, op, x)
    if reason is not None:
        raise RuntimeError(f"fusednorm.{fn}: {reason}")
    return backend
