"""Build script for fusednorm.

Python sources live in python/fusednorm, Triton kernels in kernels/ (installed as
fusednorm.kernels), CUDA sources in csrc/.  The CUDA extension fusednorm._C is built only
when the installed torch has CUDA and nvcc is found; FUSEDNORM_BUILD_CUDA=0/1 overrides.
Because building the extension needs the installed torch, install with
``pip install --no-build-isolation .`` when you want it (the Makefile does).
"""
import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda():
    flag = os.environ.get("FUSEDNORM_BUILD_CUDA")
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension
    except ImportError:
        if flag == "1":
            sys.exit("FUSEDNORM_BUILD_CUDA=1 but torch is not importable in the build "
                     "environment; install with `pip install --no-build-isolation .`")
        return False, None
    if flag == "0":
        return False, None
    has_cuda = torch.version.cuda is not None
    nvcc = cpp_extension.CUDA_HOME and os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    nvcc = nvcc or shutil.which("nvcc")
    if flag == "1" and not (has_cuda and nvcc):
        sys.exit(f"FUSEDNORM_BUILD_CUDA=1 but torch.version.cuda={torch.version.cuda!r} and "
                 f"nvcc={'found' if nvcc else 'not found'}; a CUDA build of torch and nvcc are needed")
    return bool(has_cuda and nvcc), cpp_extension


def _ext_modules():
    want, cpp_extension = _want_cuda()
    if not want:
        return [], {}
    from fusednorm_build import extension_kwargs  # noqa: E402  (csrc/fusednorm_build.py)
    ext = cpp_extension.CUDAExtension(**extension_kwargs(ROOT))
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


sys.path.insert(0, os.path.join(ROOT, "csrc"))
ext_modules, cmdclass = _ext_modules()

setup(
    name="fusednorm",
    version="0.1.0",
    description="Fused normalization kernels (Triton, CUDA C++, PyTorch reference) for PyTorch",
    packages=["fusednorm", "fusednorm.reference", "fusednorm.ops", "fusednorm.backends",
              "fusednorm.adapters",
              "fusednorm.kernels"],
    package_dir={"fusednorm": "python/fusednorm", "fusednorm.kernels": "kernels"},
    package_data={"fusednorm.kernels": ["tuned_configs.json"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "triton": ["triton>=3.6"],
        "test": ["pytest", "pytest-timeout", "numpy"],
        "bench": ["matplotlib", "tqdm"],
        "build": ["ninja"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
