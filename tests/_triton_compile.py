"""Compile Triton kernels for real GPU targets without a GPU.

The interpreter accepts code the compiler rejects (list comprehensions, loop-carried type
changes, ...), so every kernel variant a launcher can produce is also compiled to cubin for
sm_80 and sm_90.  Register and spill counts are read from the cubin with the cuobjdump that
Triton ships, and printed so the test log carries them (run pytest with -s or see the report).
"""
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ARCHS = (80, 90)


def _cuobjdump():
    import triton.backends.nvidia as nv

    return os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")


def resource_usage(cubin: bytes):
    """(registers, spill stores + spill loads, stack bytes) of the one kernel in a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    regs = int(re.search(r"REG:(\d+)", out).group(1))
    stack = int(re.search(r"STACK:(\d+)", out).group(1))
    # cuobjdump reports local memory as LOCAL; spills show up as local memory / stack use
    local = int(re.search(r"LOCAL:(\d+)", out).group(1))
    return regs, local, stack


def compile_kernel(fn, signature: dict, constexprs: dict, arch: int, num_warps: int = 4):
    """Compile ``fn`` for sm_<arch>; returns a dict with regs, local/stack bytes, shared."""
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": num_warps})
    regs, local, stack = resource_usage(kernel.asm["cubin"])
    info = {"name": kernel.metadata.name, "arch": arch, "num_warps": num_warps, "regs": regs,
            "local_bytes": local, "stack_bytes": stack, "shared": kernel.metadata.shared}
    print(f"[triton.compile] {info}")
    return info
