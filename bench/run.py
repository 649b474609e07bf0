"""Entry point of the fusednorm microbenchmarks.

    python bench/run.py [--quick] [--norms ln,rms,gn,in,bn,ln2d] [--providers a,b] [--out DIR]
    python -m bench ...

With a CUDA device: measures the copy bandwidth, then every case x provider x pass -- wall time
(do_bench) and kernel-only time (CUDA graph replay, else the profiler) -- and writes
results.json, results.csv, table.md and plots into --out / $FUSEDNORM_OUT / bench/out/<date>.
Without one: runs the correctness self-check of every available backend (bench/selfcheck.py)
and says that the microbenchmarks need a CUDA device (``--device cpu`` runs the harness on the
CPU anyway, with a perf_counter timer: for testing the harness, not for numbers).
"""
import argparse
import datetime as _dt
import os
import sys

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton kernels on CPU tensors need the interpreter, switched on before any @triton.jit
    # function exists (i.e. before fusednorm is imported).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.cases import OPS, ROOT, get_cases, parse_norms  # noqa: E402
from bench.providers import DEFAULT_PROVIDERS, PROVIDERS  # noqa: E402
from bench.runner import run_cases  # noqa: E402
from bench.timing import KERNEL_METHODS  # noqa: E402


def default_out():
    return os.environ.get("FUSEDNORM_OUT") or os.path.join(
        ROOT, "bench", "out", _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))


def build_parser():
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the small subset (< 4 min on an H100)")
    p.add_argument("--norms", default=",".join(OPS),
                   help="comma list of ln, rms, gn, in, bn, ln2d (or full names); default all")
    p.add_argument("--providers", default=None,
                   help=f"comma list among {', '.join(PROVIDERS)}; default "
                        f"{','.join(DEFAULT_PROVIDERS)} (CUDA) / fusednorm-torch,torch (CPU)")
    p.add_argument("--out", default=None, help="output folder (default $FUSEDNORM_OUT or bench/out/<date>)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: cuda when available; cpu runs the harness with a CPU timer")
    p.add_argument("--warmup-ms", type=float, default=10.0)
    p.add_argument("--rep-ms", type=float, default=40.0)
    p.add_argument("--kernel-time", choices=KERNEL_METHODS, default="auto",
                   help="kernel-only time next to the wall time: auto (CUDA graph replay, else "
                        "the profiler's device time), graph, profiler or off (default auto)")
    p.add_argument("--kernel-rep-ms", type=float, default=None,
                   help="do_bench rep of the graph replays (default: half of --rep-ms)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new cases after this many seconds (rows say so)")
    p.add_argument("--compile-budget-s", type=float, default=None,
                   help="skip torch.compile once this many seconds have passed "
                        "(default: 60%% of --budget-s)")
    p.add_argument("--selfcheck", action="store_true",
                   help="run the correctness self-check (also on a GPU machine) before benchmarking")
    p.add_argument("--selfcheck-only", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def host_cost(extra=()):
    """bench/bench_host.py in its own process (on a CPU it replaces Triton's launch entry
    point with a no-op, which must not leak into anything else); returns its exit code."""
    import subprocess
    script = os.path.join(ROOT, "bench", "bench_host.py")
    return subprocess.call([sys.executable, script, *extra])


def main(argv=None, norms=None):
    args = build_parser().parse_args(argv)
    norm_list = list(norms) if norms and args.norms == ",".join(OPS) else parse_norms(args.norms)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rc = 0
    if args.selfcheck or args.selfcheck_only or (device == "cpu" and args.device is None):
        from bench.selfcheck import selfcheck
        ok = selfcheck(device=device, norms=norm_list)
        rc = 0 if ok else 1
        if args.selfcheck_only:
            return rc
        if args.device is None and device == "cpu":
            print()
            rc = host_cost() or rc
            print("\nThe microbenchmarks need a CUDA device: none here, so only the self-check "
                  "and the host-cost table ran (`--device cpu` runs the harness on the CPU, for "
                  "testing it).")
            return rc
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    providers = (args.providers.split(",") if args.providers else
                 list(DEFAULT_PROVIDERS) if device == "cuda" else ["fusednorm-torch", "torch"])
    cases = get_cases(norm_list, args.quick)
    compile_budget = args.compile_budget_s
    if compile_budget is None and args.budget_s is not None:
        compile_budget = 0.6 * args.budget_s
    out = args.out or default_out()
    print(f"{len(cases)} cases ({'quick' if args.quick else 'full'}), norms {','.join(norm_list)}, "
          f"providers {','.join(providers)} -> {out}", flush=True)
    run_cases(cases, providers, device, out, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms,
              budget_s=args.budget_s, compile_budget_s=compile_budget,
              progress=not args.no_progress, plots=not args.no_plots,
              kernel_method=args.kernel_time, kernel_rep_ms=args.kernel_rep_ms)
    from bench.summary import print_summary
    print_summary(out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
