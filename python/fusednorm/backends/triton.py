"""The "triton" backend: re-exports the launchers in ``fusednorm.kernels``.

Each norm's kernels are imported separately, so one norm's kernels being absent or broken
does not take the others down; ``SUPPORTED`` lists what imported.
"""
import importlib

import torch

SUPPORTED = set()
DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})
_errors = {}

try:
    import triton  # noqa: F401
    _TRITON_ERROR = None
except ImportError as e:  # pragma: no cover - depends on the install
    _TRITON_ERROR = f"triton is not installed ({e}); pip install 'fusednorm[triton]'"

_FUNCS = {
    "layer_norm": ("fusednorm.kernels.layer_norm", ("layer_norm_fwd", "layer_norm_bwd")),
    "group_norm": ("fusednorm.kernels.group_norm", ("group_norm_fwd", "group_norm_bwd",
                                                     "instance_norm_running")),
    "batch_norm": ("fusednorm.kernels.batch_norm", ("batch_norm_fwd", "batch_norm_bwd")),
    "layer_norm_2d": ("fusednorm.kernels.layer_norm_2d", ("layer_norm_2d_fwd",
                                                           "layer_norm_2d_bwd")),
}

if _TRITON_ERROR is None:
    for _op, (_mod, _names) in _FUNCS.items():
        try:
            _m = importlib.import_module(_mod)
            for _n in _names:
                globals()[_n] = getattr(_m, _n)
            SUPPORTED.add(_op)
        except (ImportError, AttributeError) as e:
            _errors[_op] = f"{type(e).__name__}: {e}"


def unavailable_reason():
    import os

    if _TRITON_ERROR is not None:
        return _TRITON_ERROR
    if not SUPPORTED:
        return f"no Triton kernels could be imported: {_errors}"
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return "no CUDA device (Triton needs a GPU, or TRITON_INTERPRET=1 for the CPU interpreter)"
    return None
