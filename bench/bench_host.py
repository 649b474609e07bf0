"""Host cost of one eager call: microseconds of Python and dispatch per fusednorm call, next to
torch's native ``torch.nn.functional.layer_norm`` on the same tiny tensor, measured in the
same run (rounds interleaved, the minimum of each kept).

Two numbers per norm: the forward without grad (inference, ``torch.no_grad()``) and the
forward + backward (``torch.autograd.grad`` of the output, so no gradient accumulation).
The tensors are tiny, so the kernels cost nothing next to the host path:

* on a CPU-only machine the Triton backend runs with its kernel launches replaced by no-ops
  (Triton's interpreter is switched on, then its launch entry point is stubbed), so the time
  is fusednorm's own Python plus torch's allocations and autograd -- what a GPU host pays
  before the Triton launcher itself;
* on a GPU every launch is real (Triton's launcher and the CUDA extension included) and the
  loop ends with a synchronize, so the time is max(host, device) per call.

The report says which.  Targets (issue #13): forward without grad <= 5x and forward+backward
<= 2x torch's native F.layer_norm call; on a GPU host <= 30 us per call.

    python bench/bench_host.py [--backends triton,cuda] [--calls 2000] [--rounds 7] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

GPU = torch.cuda.is_available()
if not GPU:
    # before fusednorm (and Triton's kernels) are imported: see TOOLCHAIN.md
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.nn.functional as F  # noqa: E402

FN_TARGET = 5.0     # forward without grad, x torch's F.layer_norm
FWBW_TARGET = 2.0   # forward + backward
GPU_US_TARGET = 30.0


def stub_triton_launches():
    """Replace the Triton interpreter's launch with a no-op (CPU only); returns a counter."""
    from triton.runtime.interpreter import InterpretedFunction

    count = {"launches": 0}

    def run(self, *args, grid, warmup, **kwargs):
        count["launches"] += 1

    InterpretedFunction.run = run
    return count


# ------------------------------------------------------------------------------ the calls
def cases(device: str):
    """name -> (tensors with grad, fwd(tensors, backend) -> output, dy shape)."""
    import fusednorm

    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g).to(device)

    x = r(8, 256)
    w, b = r(256), r(256)
    img = r(2, 8, 4, 4)
    cw, cb = r(8), r(8)
    rm, rv = torch.zeros(8, device=device), torch.ones(8, device=device)
    return {
        "F.layer_norm (torch)": ((x, w, b), lambda t, be: F.layer_norm(t[0], (256,), t[1], t[2])),
        "layer_norm": ((x, w, b), lambda t, be: fusednorm.layer_norm(t[0], (256,), t[1], t[2],
                                                                     backend=be)),
        "rms_norm": ((x, w), lambda t, be: fusednorm.rms_norm(t[0], (256,), t[1], backend=be)),
        "group_norm": ((img, cw, cb), lambda t, be: fusednorm.group_norm(t[0], 4, t[1], t[2],
                                                                         backend=be)),
        "instance_norm": ((img, cw, cb), lambda t, be: fusednorm.instance_norm(
            t[0], weight=t[1], bias=t[2], backend=be)),
        "batch_norm (train)": ((img, cw, cb), lambda t, be: fusednorm.batch_norm(
            t[0], rm, rv, t[1], t[2], training=True, backend=be)),
        "batch_norm (eval)": ((img, cw, cb), lambda t, be: fusednorm.batch_norm(
            t[0], rm, rv, t[1], t[2], training=False, backend=be)),
        "layer_norm_2d": ((img, cw, cb), lambda t, be: fusednorm.layer_norm_2d(
            t[0], t[1], t[2], backend=be)),
    }


def _timed(fn, calls: int) -> float:
    """us per call over ``calls`` calls.  On a GPU: wall time, synchronized at the end.  On a
    CPU: this thread's CPU time (time.thread_time), which does not count the time the thread
    waited while other processes ran -- the same host work, measured without their noise."""
    if GPU:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / calls * 1e6
    t0 = time.thread_time()
    for _ in range(calls):
        fn()
    return (time.thread_time() - t0) / calls * 1e6


def measure(backends, calls: int = 2000, rounds: int = 7, device: str = None) -> list:
    """Rows {norm, backend, fwd_us, fwdbwd_us, fwd_x, fwdbwd_x}; the ratios are against the
    F.layer_norm row of the same run."""
    device = device or ("cuda" if GPU else "cpu")
    # one intra-op thread: torch's CPU kernels on tiny tensors otherwise wake a thread pool
    # whose spin-waits make the baseline swing with whatever else runs on the machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(backends, calls, rounds, device)
    finally:
        torch.set_num_threads(threads)


def _measure(backends, calls, rounds, device):
    fns = {}
    for name, (tensors, fwd) in cases(device).items():
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        for be in (["torch-native"] if name.startswith("F.") else backends):
            def nograd(fwd=fwd, tensors=tensors, be=be):
                with torch.no_grad():
                    fwd(tensors, be)

            def fwdbwd(fwd=fwd, leaves=leaves, be=be):
                out = fwd(leaves, be)
                torch.autograd.grad(out, leaves, torch.ones_like(out))

            fns[(name, be)] = (nograd, fwdbwd)
    best = {k: [float("inf"), float("inf")] for k in fns}
    for key, (a, bfn) in fns.items():  # warm-up: compile/caches outside the timing
        for _ in range(50):
            a()
            bfn()
    for _ in range(rounds):  # interleaved: drift in machine load hits every row alike
        for key, (a, bfn) in fns.items():
            best[key][0] = min(best[key][0], _timed(a, calls))
            best[key][1] = min(best[key][1], _timed(bfn, max(1, calls // 4)))
    base = best[("F.layer_norm (torch)", "torch-native")]
    rows = []
    for (name, be), (f_us, fb_us) in best.items():
        rows.append({"norm": name, "backend": be, "fwd_us": f_us, "fwdbwd_us": fb_us,
                     "fwd_x": f_us / base[0], "fwdbwd_x": fb_us / base[1]})
    return rows


def report(rows, stubbed: bool) -> str:
    where = ("GPU: real launches, synchronized" if GPU else
             "CPU: Triton kernel launches replaced by no-ops (host path only)")
    out = [f"host cost per eager call ({where}); tiny tensors, min of interleaved rounds",
           f"targets: forward without grad <= {FN_TARGET:g}x, forward+backward <= "
           f"{FWBW_TARGET:g}x torch's F.layer_norm" + (f"; <= {GPU_US_TARGET:g} us per call"
                                                       if GPU else ""),
           "",
           "| norm | backend | fwd no-grad us | x F.layer_norm | fwd+bwd us | x F.layer_norm |",
           "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ok_f = "" if r["backend"] == "torch-native" else (
            " ok" if r["fwd_x"] <= FN_TARGET else " OVER")
        ok_b = "" if r["backend"] == "torch-native" else (
            " ok" if r["fwdbwd_x"] <= FWBW_TARGET else " OVER")
        out.append(f"| {r['norm']} | {r['backend']} | {r['fwd_us']:.1f} | {r['fwd_x']:.2f}{ok_f}"
                   f" | {r['fwdbwd_us']:.1f} | {r['fwdbwd_x']:.2f}{ok_b} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default=None,
                   help="comma list (default: triton, plus cuda when it is available)")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", default=None, help="also write the rows here")
    a = p.parse_args(argv)
    import fusednorm

    stubbed = not GPU
    if stubbed:
        stub_triton_launches()
    avail = fusednorm.available_backends()
    if a.backends:
        backends = a.backends.split(",")
    else:
        backends = [b for b in ("triton", "cuda") if avail[b] is True]
    backends = [b for b in backends if avail.get(b) is True]
    if not backends:
        print(f"bench_host: no kernel backend can run here: {avail}")
        return 1
    rows = measure(backends, a.calls, a.rounds)
    print(report(rows, stubbed))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"gpu": GPU, "stubbed": stubbed, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
