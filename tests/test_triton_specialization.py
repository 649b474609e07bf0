"""On a GPU, Triton specializes every integer argument equal to 1 into a compile-time
constant (a plain Python int inside the kernel).  Code such as ``arg.to(tl.int64)`` then fails
to compile -- only on the GPU, only for inputs that make that argument 1 (found on an H200:
the BatchNorm merge kernel with a single split).  The interpreter never specializes, so this
test compiles one variant of every kernel once per integer argument, with that argument
specialized to 1 as Triton would, for sm_90.
"""
import json
import os
import subprocess
import sys

import pytest

_WORKER = r"""
import importlib, json, sys
from _triton_compile import compile_kernel
mods = sys.argv[1].split(",")
for name in mods:
    mod = importlib.import_module(name)
    seen = set()
    for fn, sig, ce, nw in mod.compile_variants():
        kname = fn.fn.__name__ if hasattr(fn, "fn") else fn.__name__
        if kname in seen:
            continue
        seen.add(kname)
        for arg, ty in sig.items():
            if ty not in ("i32", "i64"):
                continue
            sig1 = dict(sig); sig1[arg] = "constexpr"
            ce1 = dict(ce); ce1[arg] = 1
            try:
                compile_kernel(fn, sig1, ce1, 90, nw)
                print("RESULT " + json.dumps({"kernel": kname, "arg": arg, "ok": True}))
            except Exception as e:
                msg = f"{type(e).__name__}: {e}"[:400]
                print("RESULT " + json.dumps({"kernel": kname, "arg": arg, "ok": False, "err": msg}))
"""

MODULES = ["fusednorm.kernels.layer_norm", "fusednorm.kernels.group_norm",
           "fusednorm.kernels.batch_norm", "fusednorm.kernels.layer_norm_2d"]


@pytest.mark.timeout(600)
def test_every_integer_argument_specialized_to_one_compiles():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, m], cwd=here, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for m in (MODULES[0], ",".join(MODULES[1:]))]
    results = []
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, f"worker failed:\n{err[-4000:]}"
        results += [json.loads(l[7:]) for l in out.splitlines() if l.startswith("RESULT ")]
    kernels = {r["kernel"] for r in results}
    print(f"\n{len(results)} specializations over {len(kernels)} kernels")
    assert len(kernels) >= 10, kernels
    failed = [r for r in results if not r["ok"]]
    assert not failed, "kernels that do not compile with an integer argument equal to 1:\n" + \
        "\n".join(f"  {r['kernel']}({r['arg']}=1): {r['err']}" for r in failed)
