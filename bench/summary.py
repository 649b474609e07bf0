"""Compact summary of a benchmark run: ``python bench/summary.py OUT_DIR``.

Prints the copy bandwidth, then one line per op / pass / provider: median GB/s and median % of
the copy bandwidth over the shapes measured, on wall time (do_bench: the race against the peers)
and on kernel-only time (CUDA graph / profiler: the bandwidth targets), geometric-mean speed-up
over torch eager and torch.compile (wall time), and how many shapes. Rows that did not run are
counted per reason.
"""
import math
import os
import statistics
import sys
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cases import OPS, PASSES  # noqa: E402
from bench.report import read_json, skip_summary  # noqa: E402


def _geo(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(rows: list) -> list:
    """Aggregate ok rows by (op, variant, pass, provider) -> dicts, in a stable order."""
    groups = {}
    for r in rows:
        if r["status"] == "ok" and r.get("gbps"):
            groups.setdefault((r["op"], r["variant"] or "", r["pass"], r["provider"]), []).append(r)
    order = {op: i for i, op in enumerate(OPS)}
    out = []
    for (op, var, ps, prov), rs in sorted(groups.items(), key=lambda kv: (
            order.get(kv[0][0], 99), kv[0][1], PASSES.index(kv[0][2]) if kv[0][2] in PASSES else 9, kv[0][3])):
        out.append({"op": op + (f"/{var}" if var else ""), "pass": ps, "provider": prov, "n": len(rs),
                    "gbps": statistics.median(r["gbps"] for r in rs),
                    "pct_copy": statistics.median(r["pct_copy"] for r in rs) if all(r.get("pct_copy") for r in rs) else None,
                    "kernel_gbps": _median(r.get("kernel_gbps") for r in rs),
                    "kernel_pct_copy": _median(r.get("kernel_pct_copy") for r in rs),
                    "x_eager": _geo(r.get("speedup_eager") for r in rs),
                    "x_compile": _geo(r.get("speedup_compile") for r in rs)})
    return out


def format_summary(meta: dict, rows: list) -> str:
    def f(v, spec):  # "—" for a missing number, right-aligned in the column's width
        return format(v, spec) if v is not None else "—".rjust(int(spec.split(".")[0] or 0))
    lines = [f"{meta.get('gpu')} | torch {meta.get('torch')} | triton {meta.get('triton')} | "
             f"CUDA {meta.get('cuda')} | commit {meta.get('commit')} | {meta.get('date')}"]
    notrun = skip_summary(rows)
    if notrun:  # first, so that the table is what a reader sees last
        lines.append("not measured:")
        lines += ["  " + s for s in notrun]
    if meta.get("copy_gbps"):
        lines.append(f"copy bandwidth: {meta['copy_gbps']:.1f} GB/s")
    if meta.get("tuned_configs"):
        lines.append(f"tuned configs: {meta['tuned_configs']}")
    methods = {}
    for r in rows:
        if r["status"] == "ok":
            m = r.get("kernel_method") or "—"
            methods[m] = methods.get(m, 0) + 1
    if methods:
        lines.append("kernel time by: " + ", ".join(f"{m} ({n} rows)" for m, n in methods.items()))
    lines.append("wall = do_bench (host included; the race: x eager, x compile); "
                 "kernel = device time only (the bandwidth targets)")
    lines.append(f"{'':48s} {'---- wall ----':>15s} {'--- kernel ---':>15s}")
    lines.append(f"{'op':22s} {'pass':8s} {'provider':17s} {'GB/s':>8s} {'%copy':>6s} "
                 f"{'GB/s':>8s} {'%copy':>6s} {'x eager':>8s} {'x compile':>9s} {'shapes':>6s}")
    for s in summarize(rows):
        lines.append(f"{s['op']:22s} {s['pass']:8s} {s['provider']:17s} {f(s['gbps'], '8.1f')} "
                     f"{f(s['pct_copy'], '6.1f')} {f(s['kernel_gbps'], '8.1f')} "
                     f"{f(s['kernel_pct_copy'], '6.1f')} {f(s['x_eager'], '8.2f')} "
                     f"{f(s['x_compile'], '9.2f')} {s['n']:6d}")
    return "\n".join(lines)


def print_summary(out_dir) -> bool:
    path = Path(out_dir) / "results.json"
    if not path.exists():
        print(f"no results at {path}")
        return False
    meta, rows = read_json(path)
    print(format_summary(meta, rows), flush=True)
    return True


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(0 if print_summary(sys.argv[1]) else 1)
