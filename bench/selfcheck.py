"""Correctness self-check of every available fusednorm backend against the reference.

For each norm, forward and backward of backend X (in fp32 and bf16) are compared with the
reference backend ("reference"; "torch" in trees before the backend split) computed in float64
on the same values. Error = max |X - ref| / max(1, max |ref|) over
the output and every input gradient; the table shows the forward and backward errors, or why
a backend is unavailable. ``python bench/selfcheck.py [--device cpu|cuda]``.
"""
import os
import sys

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before fusednorm creates @triton.jit kernels

from bench.cases import OPS  # noqa: E402
from bench.providers import fusednorm_backends, import_fusednorm, reference_backend  # noqa: E402

# Small, awkward shapes: odd sizes, rows that are not a power of two.
SHAPES = {"layer_norm": (37, 200), "rms_norm": (37, 200), "group_norm": (3, 12, 5, 7),
          "instance_norm": (3, 6, 5, 7), "batch_norm": (4, 6, 5, 7), "layer_norm_2d": (3, 12, 5, 7)}
# fp32: the backend's rounding only (fp32 statistics, weight grads summed over <= 140 values);
# bf16: a few ulps of bf16 (2^-8) relative to the tensor's scale.
TOL = {"fp32": (1e-4, 1e-4), "bf16": (2e-2, 3e-2)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _call(fn, op, x, w, b, backend, rm=None, rv=None):
    if op == "layer_norm":
        return fn.layer_norm(x, x.shape[-1:], w, b, 1e-5, backend=backend)
    if op == "rms_norm":
        return fn.rms_norm(x, x.shape[-1:], w, 1e-5, backend=backend)
    if op == "group_norm":
        return fn.group_norm(x, 4, w, b, 1e-5, backend=backend)
    if op == "instance_norm":
        return fn.instance_norm(x, None, None, w, b, use_input_stats=True, eps=1e-5, backend=backend)
    if op == "batch_norm":
        return fn.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5, backend=backend)
    if op == "layer_norm_2d":
        return fn.layer_norm_2d(x, w, b, 1e-6, backend=backend)
    raise ValueError(op)


def _run(fn, op, backend, dtype, device, seed=0):
    """Output and gradients (x, weight[, bias]) of one backend, all as float64 on the CPU."""
    g = torch.Generator().manual_seed(seed)
    shape = SHAPES[op]
    C = shape[-1] if op in ("layer_norm", "rms_norm") else shape[1]
    x0 = torch.randn(shape, generator=g) * 2 + 0.5
    w0 = 1 + 0.2 * torch.randn(C, generator=g)
    b0 = 0.2 * torch.randn(C, generator=g)
    dy0 = torch.randn(shape, generator=g)
    leaves = [x0.to(device, dtype).requires_grad_(), w0.to(device, dtype).requires_grad_()]
    if op != "rms_norm":
        leaves.append(b0.to(device, dtype).requires_grad_())
    b = leaves[2] if op != "rms_norm" else None
    stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    rm = torch.zeros(C, device=device, dtype=stat_dtype) if op == "batch_norm" else None
    rv = torch.ones(C, device=device, dtype=stat_dtype) if op == "batch_norm" else None
    y = _call(fn, op, leaves[0], leaves[1], b, backend, rm, rv)
    grads = torch.autograd.grad(y, leaves, dy0.to(device, dtype))
    return y.detach().double().cpu(), [t.double().cpu() for t in grads]


def _err(a, ref):
    return float((a - ref).abs().max()) / max(1.0, float(ref.abs().max())) if ref.numel() else 0.0


def selfcheck(device=None, norms=OPS, dtypes=("fp32", "bf16"), verbose=True):
    """Print the table; return True when every available backend is within tolerance."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    avail = fusednorm_backends()
    results = {}  # (op, dtype, backend) -> cell text
    notes = []  # error messages, printed under the table
    all_ok = True
    try:
        fn = import_fusednorm()
    except Exception as e:  # noqa: BLE001 -- reported through avail
        fn = None
        why = f"{type(e).__name__}: {e}"
        all_ok = False  # nothing could be checked: that is not a pass
    ref_be = reference_backend()
    for op in norms:
        ref = None
        if fn is not None and avail.get(ref_be) is True:
            try:
                ref = _run(fn, op, ref_be, torch.float64, device)
            except Exception as e:  # noqa: BLE001
                notes.append(f"{op} reference (backend {ref_be!r}, float64): {type(e).__name__}: {e}"
                             .splitlines()[0][:200])
                ref = f"reference failed [{len(notes)}]"
        for dt in dtypes:
            for be, ok in avail.items():
                if ok is not True:
                    results[(op, dt, be)] = "unavailable"
                    continue
                if not isinstance(ref, tuple):
                    results[(op, dt, be)] = "FAIL (" + (ref or "no reference") + ")"
                    all_ok = False
                    continue
                try:
                    y, grads = _run(fn, op, be, DTYPES[dt], device)
                    ef = _err(y, ref[0])
                    eb = max(_err(gr, gr_ref) for gr, gr_ref in zip(grads, ref[1]))
                    tf, tb = TOL[dt]
                    good = ef <= tf and eb <= tb  # NaN compares False: a NaN fails
                    all_ok &= good
                    results[(op, dt, be)] = f"{'ok  ' if good else 'FAIL'} fwd {ef:.1e} bwd {eb:.1e}"
                except Exception as e:  # noqa: BLE001
                    msg = f"{type(e).__name__}: {e}".splitlines()[0][:200]
                    if "does not implement" in msg:  # an op this backend lacks: shown, not failed
                        results[(op, dt, be)] = "not implemented"
                        continue
                    all_ok = False
                    notes.append(f"{op} {dt} {be}: {msg}")
                    results[(op, dt, be)] = f"ERROR [{len(notes)}]"
    if verbose:
        backends = list(avail)
        print(f"fusednorm self-check on {device}: each backend vs backend {ref_be!r} in float64 "
              f"(error relative to max(1, max|ref|); tolerance fp32 {TOL['fp32']}, bf16 {TOL['bf16']})")
        w = max([12] + [len(v) for v in results.values()])
        print(f"{'norm':14s} {'dtype':5s} " + " ".join(f"{b:{w}s}" for b in backends))
        for op in norms:
            for dt in dtypes:
                print(f"{op:14s} {dt:5s} " + " ".join(f"{results.get((op, dt, b), ''):{w}s}" for b in backends))
        for i, n in enumerate(notes, 1):
            print(f"  [{i}] {n}")
        for b, ok in avail.items():
            if ok is not True:
                print(f"  {b}: unavailable -- {ok}")
        if fn is None:
            print(f"  fusednorm import failed: {why}")
        print("self-check:", "PASS" if all_ok else "FAIL")
    return all_ok


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None)
    a = ap.parse_args()
    sys.exit(0 if selfcheck(a.device) else 1)
