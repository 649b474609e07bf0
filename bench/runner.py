"""The benchmark loop: every case x provider x pass, timed (wall and kernel-only), derived
(GB/s, % of copy, speed-ups) and written after each case (bench/report.py), so an interrupted
run keeps what it measured."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from bench.cases import Case, case_bytes
from bench.inputs import as_tuple, make_buffers, make_params, n_rotating, pass_fn
from bench.meta import collect_meta, tuned_configs_info
from bench.providers import PROVIDERS, eager
from bench.report import (ROW_FIELDS, kernel_time_notes, make_plots, rows_to_markdown,
                          skip_summary, write_csv, write_json)
from bench.timing import copy_bandwidth, gbps, kernel_time, timer_for


class Progress:
    """tqdm when installed and enabled, else one printed line per step."""

    def __init__(self, total: int, desc: str = "", enable: bool = True):
        self.total, self.n, self.desc, self.bar = total, 0, desc, None
        if enable:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, file=sys.stdout)
            except ImportError:
                pass
        self.quiet = not enable

    def step(self, what: str = ""):
        self.n += 1
        if self.bar is not None:
            self.bar.set_postfix_str(what[:60])
            self.bar.update(1)
        elif not self.quiet:
            print(f"[{self.n}/{self.total}] {self.desc} {what}", flush=True)

    def write(self, msg: str):
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def make_row(case: Case, pass_: str, provider: str, status: str, meta: dict, **kw) -> dict:
    r = {k: None for k in ROW_FIELDS}
    r.update(op=case.op, variant=case.variant, shape=case.shape_str, dtype=case.dtype,
             layout=case.layout, model=case.model, provider=provider, status=status,
             bytes=case_bytes(case, pass_), numel=case.numel)
    r["pass"] = pass_
    r.update({k: meta.get(k) for k in ("gpu", "torch", "triton", "cuda", "commit", "date")})
    r.update(kw)
    return r


def run_case(case: Case, providers: list, device: str, meta: dict, *, warmup_ms=10, rep_ms=40,
             n_buffers=None, log=print, skip_compile_reason=None, kernel_method="auto",
             kernel_rep_ms=None) -> list:
    """Time every provider and pass of one case; returns rows (also for skips and errors).

    Per pass: the first call (JIT, compile; ``first_call_s``), the wall time (do_bench), then
    the kernel-only time (``bench.timing.kernel_time``: CUDA graph, else the profiler) of a
    fresh callable on the same input sets."""
    rows = []
    timer = timer_for(device)
    kernel_rep_ms = rep_ms / 2 if kernel_rep_ms is None else kernel_rep_ms
    try:
        bufs = make_buffers(case, device, n_buffers or n_rotating(case, device))
        p = make_params(case, device)
        with torch.no_grad():  # eager output on the first input set: the accuracy yardstick
            ref = as_tuple(eager(case, p)(bufs[0]["x"], bufs[0]["residual"]))
    except torch.OutOfMemoryError as e:
        return [make_row(case, ps, pr.name, f"error: OOM building inputs ({e})".splitlines()[0], meta)
                for pr in providers for ps in case.passes]
    for prov in providers:
        why = prov.available(device)
        if why is True:
            why = prov.supports(case)
        if why is True and prov.name == "torch.compile" and skip_compile_reason:
            why = skip_compile_reason
        if why is not True:
            rows += [make_row(case, ps, prov.name, f"skipped: {why}", meta) for ps in case.passes]
            continue
        try:
            f = prov.build(case, p)
        except Exception as e:  # noqa: BLE001
            msg = f"error: {type(e).__name__}: {e}".splitlines()[0][:300]
            log(f"  {prov.name} {case.op} {case.shape_str} {case.dtype}: {msg}")
            rows += [make_row(case, ps, prov.name, msg, meta) for ps in case.passes]
            continue
        for ps in case.passes:
            try:
                fn = pass_fn(f, case, ps, bufs, p)
                t0 = time.perf_counter()
                out = fn()  # compiles / JITs; excluded from the timing
                _sync(device)
                first = time.perf_counter() - t0
                err = None
                if ps == "fwd":
                    err = max(float((o.detach().float() - r.float()).abs().max()) if o.numel() else 0.0
                              for o, r in zip(out, ref))
                del out
                ms = timer(fn, warmup_ms, rep_ms)
                fn = None  # a bwd pass holds retained graphs: one set at a time
                kt = kernel_time(lambda: pass_fn(f, case, ps, bufs, p), device, n_calls=len(bufs),
                                 method=kernel_method, warmup_ms=min(warmup_ms, 5),
                                 rep_ms=kernel_rep_ms)
                if kt["kernel_note"]:
                    log(f"  {prov.name} {case.op} {case.shape_str} {case.dtype} {ps}: kernel time "
                        f"by {kt['kernel_method']}: {kt['kernel_note']}")
                rows.append(make_row(case, ps, prov.name, "ok", meta, ms=ms, max_err=err,
                                     first_call_s=first, **kt))
            except Exception as e:  # noqa: BLE001 -- recorded in the row and printed
                msg = f"error: {type(e).__name__}: {e}".splitlines()[0][:300]
                if "does not implement" in msg:  # the backend lacks this op (yet): a skip
                    msg = "skipped: " + msg.split(": ", 2)[-1]
                log(f"  {prov.name} {case.op} {case.shape_str} {case.dtype} {ps}: {msg}")
                rows.append(make_row(case, ps, prov.name, msg, meta))
            finally:
                fn = None
                if device == "cuda":
                    torch.cuda.empty_cache()
        f = None
    return rows


def add_derived(rows: list, copy_gbps: float) -> list:
    """Fill GB/s and % of copy on wall and on kernel time, and the speed-ups over torch eager
    and torch.compile (on wall time: the race) (in place)."""
    base = {}
    for r in rows:
        if r["status"] == "ok" and r["provider"] in ("torch", "torch.compile"):
            base[(r["provider"], r["op"], r["variant"], r["shape"], r["dtype"], r["layout"], r["pass"])] = r["ms"]
    for r in rows:
        r["copy_gbps"] = copy_gbps
        if r["status"] != "ok" or not r.get("ms"):
            continue
        r["gbps"] = gbps(r["bytes"], r["ms"])
        r["pct_copy"] = 100.0 * r["gbps"] / copy_gbps if copy_gbps else None
        if r.get("kernel_ms"):
            r["kernel_gbps"] = gbps(r["bytes"], r["kernel_ms"])
            r["kernel_pct_copy"] = 100.0 * r["kernel_gbps"] / copy_gbps if copy_gbps else None
        k = (r["op"], r["variant"], r["shape"], r["dtype"], r["layout"], r["pass"])
        e, c = base.get(("torch",) + k), base.get(("torch.compile",) + k)
        r["speedup_eager"] = e / r["ms"] if e else None
        r["speedup_compile"] = c / r["ms"] if c else None
    return rows


def run_cases(cases: list, provider_names: list, device: str, out_dir, *, warmup_ms=10, rep_ms=40,
              n_buffers=None, copy_bytes=None, budget_s=None, compile_budget_s=None,
              progress=True, plots=True, kernel_method="auto", kernel_rep_ms=None) -> dict:
    """Run everything, writing results.json / results.csv after each case (a killed run keeps
    what it measured) and table.md / plots at the end. Returns the result dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    meta = collect_meta(device)
    meta["tuned_configs"] = tuned_configs_info(device)
    meta["kernel_time"] = kernel_method if device == "cuda" else "n/a (cpu)"
    unknown = [n for n in provider_names if n not in PROVIDERS]
    if unknown:
        raise ValueError(f"unknown providers {unknown}; known: {sorted(PROVIDERS)}")
    providers = [PROVIDERS[n] for n in provider_names]
    print(f"fusednorm bench on {meta['gpu']} | torch {meta['torch']} | triton {meta['triton']} | "
          f"CUDA {meta['cuda']} | commit {meta['commit']} | {meta['date']}", flush=True)
    print(f"  tuned configs: {meta['tuned_configs']}", flush=True)
    for pr in providers:
        why = pr.available(device)
        print(f"  provider {pr.name:17s} {'available' if why is True else 'SKIPPED: ' + why}", flush=True)
    copy = copy_bandwidth(device, copy_bytes)
    meta.update(copy)
    print(f"  copy bandwidth: {copy['copy_gbps']:.1f} GB/s (dst.copy_(src), "
          f"{copy['copy_bytes'] / 1e9:.2f} GB read + written, {copy['copy_ms']:.3f} ms)", flush=True)
    rows = []
    bar = Progress(len(cases), "bench", enable=progress)
    for case in cases:
        elapsed = time.perf_counter() - t_start
        label = f"{case.op}{'/' + case.variant if case.variant else ''} {case.shape_str} {case.dtype} {case.layout}"
        if budget_s is not None and elapsed > budget_s:
            rows += [make_row(case, ps, pr.name, f"skipped: time budget {budget_s:.0f}s spent", meta)
                     for pr in providers for ps in case.passes]
            bar.step("(over budget) " + label)
            continue
        skip_c = None
        if compile_budget_s is not None and elapsed > compile_budget_s:
            skip_c = f"torch.compile skipped after {compile_budget_s:.0f}s of the time budget"
        case_rows = run_case(case, providers, device, meta, warmup_ms=warmup_ms, rep_ms=rep_ms,
                             n_buffers=n_buffers, log=bar.write, skip_compile_reason=skip_c,
                             kernel_method=kernel_method, kernel_rep_ms=kernel_rep_ms)
        rows += case_rows
        add_derived(rows, copy["copy_gbps"])
        write_json(out_dir / "results.json", meta, rows)
        write_csv(out_dir / "results.csv", rows)
        bar.step(label)
    bar.close()
    add_derived(rows, copy["copy_gbps"])
    write_json(out_dir / "results.json", meta, rows)
    write_csv(out_dir / "results.csv", rows)
    (out_dir / "table.md").write_text(rows_to_markdown(rows, meta))
    for line in kernel_time_notes(rows) + skip_summary(rows):
        print("  " + line)
    if plots:
        made = make_plots(rows, out_dir, copy["copy_gbps"])
        print(f"  {len(made)} plots" if made is not None else "  plots skipped: matplotlib not importable")
    print(f"  wrote {out_dir}/results.json, results.csv, table.md "
          f"({time.perf_counter() - t_start:.0f}s)", flush=True)
    return {"meta": meta, "rows": rows}
