"""CUDA C++ backend: the contract of ``fusednorm.backends`` on ``torch.ops.fusednorm_cuda``.

The ops live in the compiled extension ``fusednorm._C`` (built by setup.py from csrc/).  When it
is not installed, a CUDA build of torch with a device and nvcc JIT-builds the same sources from
the source tree (``<repo>/csrc``, found from this package's location).  Nothing happens at
import: the first call that needs the ops loads them (once; the outcome is cached), and
``unavailable_reason()`` says why the backend cannot be used.

The schemas return empty tensors (numel 0) for absent outputs; this module turns them into None.
"""
from __future__ import annotations

import importlib.util
import shutil
import threading
from pathlib import Path

import torch

SUPPORTED = {"layer_norm", "group_norm", "batch_norm", "layer_norm_2d"}

_LOCK = threading.Lock()
_STATE: dict = {"done": False, "reason": None}


def _csrc_dir() -> Path:
    import fusednorm

    # <repo>/python/fusednorm/__init__.py -> <repo>/csrc
    return Path(fusednorm.__file__).resolve().parents[2] / "csrc"


def _find_nvcc() -> str | None:
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _jit_sources(sources: list) -> list:
    """torch's JIT names object files by source basename, so the three <norm>/launch.cu would
    collide: compile each through a uniquely named one-line wrapper that #includes it."""
    import tempfile

    wrap_dir = Path(tempfile.gettempdir()) / "fusednorm_jit_sources"
    wrap_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for src in map(Path, sources):
        if src.name != "launch.cu":
            out.append(str(src))
            continue
        wrapper = wrap_dir / f"{src.parent.name}_launch.cu"
        text = f'#include "{src.resolve()}"\n'
        if not wrapper.exists() or wrapper.read_text() != text:  # keep ninja's rebuild check quiet
            wrapper.write_text(text)
        out.append(str(wrapper))
    return out


def _jit_build(import_error: BaseException) -> str | None:
    """Build and load the extension from <repo>/csrc; None on success, else the reason."""
    csrc = _csrc_dir()
    build_py = csrc / "fusednorm_build.py"
    prefix = f"extension not built (import fusednorm._C: {import_error}) and JIT build failed: "
    if not build_py.exists():
        return prefix + (f"the CUDA sources are not at {csrc} (an installed package without its "
                         "source tree); build the extension with `pip install --no-build-isolation .`")
    if _find_nvcc() is None:
        return prefix + "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    try:
        spec = importlib.util.spec_from_file_location("_fusednorm_build", build_py)
        build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(build)
        kw = build.extension_kwargs(str(csrc.parent))
        from torch.utils.cpp_extension import load

        load(name="fusednorm_C_jit", sources=_jit_sources(kw["sources"]),
             extra_include_paths=kw["include_dirs"],
             extra_cflags=kw["extra_compile_args"]["cxx"],
             extra_cuda_cflags=kw["extra_compile_args"]["nvcc"], is_python_module=False,
             verbose=False)
    except Exception as e:  # noqa: BLE001 - any build/load failure becomes the reason
        return prefix + f"{type(e).__name__}: {e}"
    return None


def _load() -> str | None:
    if torch.version.cuda is None:
        return "torch has no CUDA (torch.version.cuda is None)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import fusednorm._C  # noqa: F401  (loading the library registers torch.ops.fusednorm_cuda)
    except (ImportError, OSError) as e:
        reason = _jit_build(e)
        if reason is not None:
            return reason
    if not hasattr(torch.ops.fusednorm_cuda, "layer_norm_fwd"):
        return "the extension loaded but did not register torch.ops.fusednorm_cuda"
    _register_fakes()
    return None


def unavailable_reason() -> str | None:
    """None when the backend is usable, else why not (loads the extension on first call)."""
    if not _STATE["done"]:
        with _LOCK:
            if not _STATE["done"]:
                _STATE["reason"] = _load()
                _STATE["done"] = True
    return _STATE["reason"]


def _ops():
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"fusednorm CUDA backend unavailable: {reason}")
    return torch.ops.fusednorm_cuda


def _opt(t: torch.Tensor) -> torch.Tensor | None:
    return None if t.numel() == 0 else t


# --------------------------------------------------------------------------- contract functions
def layer_norm_fwd(x, residual, weight, bias, eps: float, rms: bool):
    out, xsum, mean, rstd = _ops().layer_norm_fwd(x, residual, weight, bias, float(eps), bool(rms))
    return out, (xsum if residual is not None else None), (None if rms else mean), rstd


def layer_norm_bwd(dy, dxsum, x, weight, bias, mean, rstd, rms: bool):
    dx, dw, db = _ops().layer_norm_bwd(dy, dxsum, x, weight, bias, mean, rstd, bool(rms))
    return dx, (dw if weight is not None else None), (db if bias is not None else None)


def layer_norm_2d_fwd(x, weight, bias, eps: float):
    return tuple(_ops().layer_norm_2d_fwd(x, weight, bias, float(eps)))


def layer_norm_2d_bwd(dy, x, weight, bias, mean, rstd):
    dx, dw, db = _ops().layer_norm_2d_bwd(dy, x, weight, bias, mean, rstd)
    return dx, (dw if weight is not None else None), (db if bias is not None else None)


def group_norm_fwd(x, weight, bias, num_groups: int, eps: float, activation: str):
    return tuple(_ops().group_norm_fwd(x, weight, bias, int(num_groups), float(eps), activation))


def group_norm_bwd(dy, x, weight, bias, mean, rstd, num_groups: int, activation: str):
    dx, dw, db = _ops().group_norm_bwd(dy, x, weight, bias, mean, rstd, int(num_groups), activation)
    return dx, (dw if weight is not None else None), (db if bias is not None else None)


def batch_norm_fwd(x, weight, bias, running_mean, running_var, training: bool, eps: float,
                   momentum=0.1, num_batches_tracked=None):
    # Training updates running_mean / running_var and num_batches_tracked in place, inside the
    # extension's kernels (momentum None: 1 / num_batches_tracked, read on the device).  Eval
    # computes mean / rstd from the running buffers in the normalizing kernel.
    out, mean, rstd, var = _ops().batch_norm_fwd(
        x, weight, bias, running_mean, running_var, bool(training), float(eps),
        None if momentum is None else float(momentum), num_batches_tracked if training else None)
    return out, mean, rstd, (var if training else None)


def instance_norm_running(mean, rstd, running_mean, running_var, momentum, eps, spatial):
    _ops().instance_norm_running(mean, rstd, running_mean, running_var, float(momentum), float(eps),
                                 int(spatial))


def batch_norm_bwd(dy, x, weight, mean, rstd, training: bool):
    dx, dw, db = _ops().batch_norm_bwd(dy, x, weight, mean, rstd, bool(training))
    return dx, (dw if weight is not None else None), db


# --------------------------------------------------------------------------- fake (meta) kernels
# Shapes, dtypes and strides exactly as csrc/binding.cpp allocates them.
def _param_dtype(x, weight, bias):
    if weight is not None:
        return weight.dtype
    if bias is not None:
        return bias.dtype
    return x.dtype


def _none(x):
    return x.new_empty((0,))


def _f32(x, shape):
    return x.new_empty(shape, dtype=torch.float32)


def _fake_layer_norm_fwd(x, residual, weight, bias, eps, rms):
    M, N = x.shape
    xsum = x.new_empty((M, N)) if residual is not None else _none(x)
    return x.new_empty((M, N)), xsum, _f32(x, (0,) if rms else (M,)), _f32(x, (M,))


def _fake_layer_norm_bwd(dy, dxsum, x, weight, bias, mean, rstd, rms):
    M, N = x.shape
    wdt = _param_dtype(x, weight, bias)
    dw = x.new_empty((N,), dtype=wdt) if weight is not None else _none(x)
    db = x.new_empty((N,), dtype=wdt) if bias is not None else _none(x)
    return x.new_empty((M, N)), dw, db


def _fake_layer_norm_2d_fwd(x, weight, bias, eps):
    stats = (x.shape[0],) + tuple(x.shape[2:])
    return torch.empty_like(x), _f32(x, stats), _f32(x, stats)


def _fake_layer_norm_2d_bwd(dy, x, weight, bias, mean, rstd):
    C = x.shape[1]
    wdt = _param_dtype(x, weight, bias)
    dw = x.new_empty((C,), dtype=wdt) if weight is not None else _none(x)
    db = x.new_empty((C,), dtype=wdt) if bias is not None else _none(x)
    return torch.empty_like(x), dw, db


def _fake_group_norm_fwd(x, weight, bias, num_groups, eps, activation):
    return torch.empty_like(x), _f32(x, (x.shape[0], num_groups)), _f32(x, (x.shape[0], num_groups))


def _fake_group_norm_bwd(dy, x, weight, bias, mean, rstd, num_groups, activation):
    C = x.shape[1]
    wdt = _param_dtype(x, weight, bias)
    dw = x.new_empty((C,), dtype=wdt) if weight is not None else _none(x)
    db = x.new_empty((C,), dtype=wdt) if bias is not None else _none(x)
    return torch.empty_like(x), dw, db


def _fake_batch_norm_fwd(x, weight, bias, running_mean, running_var, training, eps, momentum,
                         num_batches_tracked):
    C = x.shape[1]
    return torch.empty_like(x), _f32(x, (C,)), _f32(x, (C,)), _f32(x, (C,) if training else (0,))


def _fake_instance_norm_running(mean, rstd, running_mean, running_var, momentum, eps, spatial):
    return None


def _fake_batch_norm_bwd(dy, x, weight, mean, rstd, training):
    C = x.shape[1]
    wdt = weight.dtype if weight is not None else x.dtype
    dw = x.new_empty((C,), dtype=wdt) if weight is not None else _none(x)
    return torch.empty_like(x), dw, x.new_empty((C,), dtype=wdt)


FAKES = {
    "layer_norm_fwd": _fake_layer_norm_fwd,
    "layer_norm_bwd": _fake_layer_norm_bwd,
    "layer_norm_2d_fwd": _fake_layer_norm_2d_fwd,
    "layer_norm_2d_bwd": _fake_layer_norm_2d_bwd,
    "group_norm_fwd": _fake_group_norm_fwd,
    "group_norm_bwd": _fake_group_norm_bwd,
    "batch_norm_fwd": _fake_batch_norm_fwd,
    "batch_norm_bwd": _fake_batch_norm_bwd,
    "instance_norm_running": _fake_instance_norm_running,
}


def _register_fakes() -> None:
    """register_fake for every fusednorm_cuda op (called once, after the library is loaded)."""
    for name, fn in FAKES.items():
        torch.library.register_fake(f"fusednorm_cuda::{name}", fn)
