"""Reports of a run: results.json, results.csv, table.md and the PNG plots.

Every row carries two times of the same call (bench/timing.py): ``ms`` (do_bench wall time,
with ``gbps`` / ``pct_copy`` / the speed-ups derived from it: the race against the peers) and
``kernel_ms`` (kernel-only time, with ``kernel_gbps`` / ``kernel_pct_copy``: what the
bandwidth targets are judged on), and ``kernel_method``, how the kernel time was measured.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from bench.cases import OPS, PASSES

ROW_FIELDS = ["op", "variant", "shape", "dtype", "layout", "model", "pass", "provider", "status",
              "ms", "bytes", "gbps", "pct_copy",
              "kernel_ms", "kernel_gbps", "kernel_pct_copy", "kernel_method", "kernel_note",
              "speedup_eager", "speedup_compile", "max_err",
              "first_call_s", "numel", "copy_gbps", "gpu", "torch", "triton", "cuda", "commit", "date"]
FLOAT_FIELDS = ("ms", "gbps", "pct_copy", "kernel_ms", "kernel_gbps", "kernel_pct_copy",
                "speedup_eager", "speedup_compile", "max_err", "first_call_s", "copy_gbps")
INT_FIELDS = ("bytes", "numel")


def write_json(path, meta: dict, rows: list):
    Path(path).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


def read_json(path) -> tuple:
    d = json.loads(Path(path).read_text())
    return d["meta"], d["rows"]


def write_csv(path, rows: list):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=ROW_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in ROW_FIELDS})


def read_csv(path) -> list:
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            for k in ROW_FIELDS:
                v = r.get(k)
                if v == "" or v is None:
                    r[k] = "" if k in ("variant", "model") else None
                elif k in FLOAT_FIELDS:
                    r[k] = float(v)
                elif k in INT_FIELDS:
                    r[k] = int(v)
            rows.append(r)
    return rows


def _f(v, spec, suffix=""):
    return "—" if v is None else f"{v:{spec}}{suffix}"


def skip_summary(rows: list) -> list:
    """One line per (provider, op, reason) for rows that did not run: skips are never silent."""
    seen = {}
    for r in rows:
        if r["status"] != "ok":
            k = (r["provider"], r["op"], r["status"])
            seen[k] = seen.get(k, 0) + 1
    return [f"{p} {op}: {s} ({n} rows)" for (p, op, s), n in seen.items()]


def kernel_time_notes(rows: list) -> list:
    """One line per (provider, op, method, note) for measured rows whose kernel time did not
    come from a CUDA graph (and why), so a fallback is never silent."""
    seen = {}
    for r in rows:
        if r["status"] == "ok" and r.get("kernel_note"):
            k = (r["provider"], r["op"], r.get("kernel_method"), r["kernel_note"])
            seen[k] = seen.get(k, 0) + 1
    return [f"{p} {op}: kernel time by {m} ({note}) ({n} rows)" for (p, op, m, note), n in seen.items()]


def rows_to_markdown(rows: list, meta: dict) -> str:
    copy = meta.get("copy_gbps")
    lines = ["# fusednorm microbenchmarks", "",
             f"{meta.get('gpu')} · torch {meta.get('torch')} · triton {meta.get('triton')} · "
             f"CUDA {meta.get('cuda')} · commit {meta.get('commit')} · {meta.get('date')}", ""]
    if meta.get("tuned_configs"):
        lines += [f"Tuned launch configs: {meta['tuned_configs']}.", ""]
    if copy:
        lines += [f"Device-to-device copy bandwidth: **{copy:.1f} GB/s** (`dst.copy_(src)`, "
                  f"{(meta.get('copy_bytes') or 0) / 1e9:.2f} GB read + written). "
                  "GB/s = bytes model / median time; % copy = GB/s / copy bandwidth.", ""]
    lines += ["*wall*: `do_bench` median of one call from Python (kernels + the host time the GPU "
              "waits for): the race against the peers (× eager, × compile) is run on it. "
              "*kernel*: device time only (`cuda-graph`: replay of the captured call; `profiler`: "
              "sum of the device activities per call): the bandwidth targets are judged on it.", ""]
    for op in OPS:
        ok = [r for r in rows if r["op"] == op and r["status"] == "ok"]
        if not ok:
            continue
        lines += [f"## {op}", "",
                  "| pass | shape | dtype | layout | variant | provider | wall ms | wall GB/s | "
                  "wall % copy | kernel ms | kernel GB/s | kernel % copy | kernel by | "
                  "× eager | × compile |",
                  "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        for r in ok:
            lines.append(
                f"| {r['pass']} | {r['shape']} | {r['dtype']} | {r['layout']} | {r['variant'] or '—'} | "
                f"{r['provider']} | {_f(r['ms'], '.4f')} | {_f(r['gbps'], '.1f')} | "
                f"{_f(r['pct_copy'], '.1f')} | {_f(r.get('kernel_ms'), '.4f')} | "
                f"{_f(r.get('kernel_gbps'), '.1f')} | {_f(r.get('kernel_pct_copy'), '.1f')} | "
                f"{r.get('kernel_method') or '—'} | {_f(r['speedup_eager'], '.2f', '×')} | "
                f"{_f(r['speedup_compile'], '.2f', '×')} |")
        lines.append("")
    notes = kernel_time_notes(rows)
    if notes:
        lines += ["## Kernel time not from a CUDA graph", ""] + [f"- {s}" for s in notes] + [""]
    skipped = skip_summary(rows)
    if skipped:
        lines += ["## Not measured", ""] + [f"- {s}" for s in skipped] + [""]
    return "\n".join(lines)


def make_plots(rows: list, out_dir, copy_gbps=None):
    """GB/s against size, one color per provider (solid: wall time, dotted: kernel time); one
    PNG per (op, variant, dtype, layout) with a panel per pass. Returns the paths, or None
    when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups = {}
    for r in rows:
        if r["status"] == "ok" and r.get("gbps"):
            groups.setdefault((r["op"], r["variant"] or "", r["dtype"], r["layout"]), []).append(r)
    paths = []
    for (op, var, dt, lay), rs in sorted(groups.items()):
        passes = [p for p in PASSES if any(r["pass"] == p for r in rs)]
        fig, axes = plt.subplots(1, len(passes), figsize=(5 * len(passes), 4), squeeze=False)
        for ax, ps in zip(axes[0], passes):
            for prov in sorted({r["provider"] for r in rs}):
                mine = [r for r in rs if r["pass"] == ps and r["provider"] == prov]
                pts = sorted((r["numel"], r["gbps"]) for r in mine)
                if not pts:
                    continue
                line, = ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o",
                                label=f"{prov} (wall)")
                kpts = sorted((r["numel"], r["kernel_gbps"]) for r in mine if r.get("kernel_gbps"))
                if kpts:
                    ax.plot([a for a, _ in kpts], [b for _, b in kpts], marker="x", ls=":",
                            color=line.get_color(), label=f"{prov} (kernel)")
            if copy_gbps:
                ax.axhline(copy_gbps, color="gray", ls="--", lw=1, label="copy")
            ax.set_xscale("log")
            ax.set_xlabel("elements")
            ax.set_ylabel("GB/s (bytes model)")
            ax.set_title(ps)
            ax.grid(True, alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{op}{' ' + var if var else ''} {dt} {lay}")
        fig.tight_layout()
        path = Path(out_dir) / f"plot_{op}{'_' + var if var else ''}_{dt}_{lay}.png".replace("+", "")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
