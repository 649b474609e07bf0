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


def specialization(fn, signature: dict, divisible=None):
    """The ``attrs`` Triton derives at launch time: pointers 16-byte aligned (torch's
    allocations are) and the integer arguments named in ``divisible`` (values that are
    multiples of 16 at run time, e.g. N = 4096 or a row stride) marked tt.divisibility=16.
    ``divisible=None`` marks pointers only.  Without these a compile shows scalar loads
    that the GPU run never has."""
    names = list(fn.arg_names)
    attrs = {}
    for name, ty in signature.items():
        if ty.startswith("*") or (divisible and name in divisible and ty in ("i32", "i64")):
            attrs[(names.index(name),)] = [["tt.divisibility", 16]]
    return attrs


def compile_cubin(fn, signature: dict, constexprs: dict, arch: int, num_warps: int = 4,
                  divisible=None, num_stages=None):
    """triton.compile for sm_<arch> with the launch-time specialization; the CompiledKernel."""
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs,
                    attrs=specialization(fn, signature, divisible))
    options = {"num_warps": num_warps}
    if num_stages is not None:
        options["num_stages"] = num_stages
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def compile_kernel(fn, signature: dict, constexprs: dict, arch: int, num_warps: int = 4,
                   divisible=None):
    """Compile ``fn`` for sm_<arch>; returns a dict with regs, local/stack bytes, shared."""
    kernel = compile_cubin(fn, signature, constexprs, arch, num_warps, divisible)
    regs, local, stack = resource_usage(kernel.asm["cubin"])
    info = {"name": kernel.metadata.name, "arch": arch, "num_warps": num_warps, "regs": regs,
            "local_bytes": local, "stack_bytes": stack, "shared": kernel.metadata.shared}
    print(f"[triton.compile] {info}")
    return info


def compile_in_workers(worker_src: str, jobs: list, workers: int = 2) -> list:
    """Run ``worker_src`` (a Python script reading a JSON list of jobs on stdin and printing
    one ``RESULT <json>`` line per job) in ``workers`` processes without the interpreter, the
    jobs dealt round-robin (slow variants spread evenly); -> every result, one per job."""
    import json
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = os.path.dirname(os.path.abspath(__file__))
    procs = []
    for i in range(workers):
        p = subprocess.Popen([sys.executable, "-c", worker_src], cwd=here, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        p.stdin.write(json.dumps(jobs[i::workers]))
        p.stdin.close()
        procs.append(p)
    results = []
    for p in procs:
        out, err = p.stdout.read(), p.stderr.read()
        p.wait()
        assert p.returncode == 0, f"compile worker failed:\n{err[-4000:]}"
        results += [json.loads(line[7:]) for line in out.splitlines()
                    if line.startswith("RESULT ")]
    assert len(results) == len(jobs), (len(results), len(jobs))
    return results
