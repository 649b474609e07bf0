"""Build description of the CUDA extension ``fusednorm._C`` (used by setup.py and the JIT path).

``extension_kwargs(root)`` returns the keyword arguments of ``CUDAExtension``.  Architectures:
torch's BuildExtension reads TORCH_CUDA_ARCH_LIST itself; when it is unset we pass gencode
flags for sm_80 and sm_90 (with sm_90 PTX for newer GPUs); torch then adds no arch flags of
its own, since it skips them when the nvcc flags already name an arch.  MAX_JOBS is read by
ninja.
"""
import os
from pathlib import Path

KERNEL_DIRS = ("layer_norm", "layer_norm_2d", "group_norm", "batch_norm")

DEFAULT_GENCODE = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
]


def csrc_dir(root) -> Path:
    """csrc/ of a source tree given its root (the directory holding setup.py)."""
    return Path(root) / "csrc"


def sources(root) -> list:
    """Absolute paths of the extension's sources: the binding and every kernel launcher."""
    c = csrc_dir(root)
    return [str(c / "binding.cpp")] + [str(c / d / "launch.cu") for d in KERNEL_DIRS]


def include_dirs(root) -> list:
    return [str(csrc_dir(root) / "include")]


def nvcc_flags() -> list:
    # No --use_fast_math: statistics use IEEE division (Welford) and expf (SiLU).
    flags = ["-O3", "-lineinfo"]
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        flags += DEFAULT_GENCODE
    return flags


def extension_kwargs(root) -> dict:
    return dict(
        name="fusednorm._C",
        sources=sources(root),
        include_dirs=include_dirs(root),
        extra_compile_args={"cxx": ["-O3"], "nvcc": nvcc_flags()},
    )
