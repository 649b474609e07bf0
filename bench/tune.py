"""Tune the Triton launch parameters on the benchmark shapes and write the table the launch
heuristics read (``kernels/tuned_configs.json``, format in ``kernels/_tuning.py``).

    python bench/tune.py [--budget-s 280] [--norms ln,rms,gn,in,bn,ln2d] [--full] [--out DIR]
                         [--table PATH] [--min-gain 0.03] [--warmup-ms 5] [--rep-ms 20]
    python bench/tune.py --dry-run [--out DIR]        # no GPU needed: the plumbing only

For each case of the quick benchmark (``--full``: every case; variants such as prenorm/silu/
eval are not tuned: the kernel modules' ``tune_targets`` signature has no variant), the kernel
module ``fusednorm.kernels.<norm>`` (RMSNorm: ``layer_norm``) is asked for
``tune_targets(op, shape, dtype, layout, device)``: a list of ``TuneTarget`` (family, key,
candidates, run(config), nbytes). A module without ``tune_targets`` is skipped with a message.
Each candidate is run once (Triton compiles it), then timed on the kernel-only path: ``run(cfg)``
captured in a CUDA graph whose replays ``triton.testing.do_bench`` times (median; its cache
clearing runs between replays); where the launch cannot be captured, do_bench of the call itself
("do_bench (wall)"). The first candidate is the heuristic's own choice; the winner is the fastest
candidate unless it beats the heuristic by less than ``--min-gain`` (noise), then the heuristic.
Every tuned (family, key) gets an entry ``"<arch>|<key>": dataclasses.asdict(winner)``; entries
of other archs, and of this arch's keys not reached in this run, are kept.

While tuning, ``FUSEDNORM_TUNED_CONFIGS=off``: the heuristics answer analytically, so the first
candidate really is the heuristic's and not an older table entry.

Budget: no new target or candidate starts after ``--budget-s`` seconds; a target cut short
keeps the candidates it timed (status "partial (budget)"); the table and the report are written
with what was tuned. A device error (a candidate that corrupts the context) also stops the
sweep cleanly.

Outputs: the table (``--table``, default the working copy's ``kernels/tuned_configs.json``; written
only when something was tuned), and in ``--out`` (default ``$FUSEDNORM_OUT``, else
``bench/out/tune-<date>``): ``tune.md`` (family, key, the heuristic's config and time, the best
config and time, speed-up), ``tune.json`` (every candidate's time or error), and a copy of the
table as ``tuned_configs.json``.

``--dry-run`` (any machine; CI): Triton's interpreter on the CPU, tiny shapes of the same op,
dtype and layout in place of the benchmark shapes, each target's first candidate run once,
untimed; nothing is written unless ``--out`` is given (then the report and the merged table go
there, never to ``kernels/``).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib
import inspect
import json
import os
import sys
import time

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.cases import OPS, ROOT, get_cases, parse_norms  # noqa: E402

TABLE = ROOT / "kernels" / "tuned_configs.json"
# The kernel module that holds an op's launchers (RMSNorm shares LayerNorm's).
KERNEL_MODULES = {"layer_norm": ("layer_norm",), "rms_norm": ("rms_norm", "layer_norm"),
                  "group_norm": ("group_norm",), "instance_norm": ("instance_norm",),
                  "batch_norm": ("batch_norm",), "layer_norm_2d": ("layer_norm_2d",)}
# --dry-run: small stand-ins (same op, dtype and layout) that the interpreter runs in well under
# a second; GroupNorm keeps G = 32 with 2 channels per group.
TINY_SHAPES = {"layer_norm": (4, 256), "rms_norm": (4, 256), "group_norm": (2, 64, 4, 4),
               "instance_norm": (2, 8, 4, 4), "batch_norm": (4, 8, 4, 4),
               "layer_norm_2d": (2, 32, 4, 4)}
DEFAULT_BUDGET_S = 280.0


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------
def kernel_module(op: str):
    """fusednorm.kernels.<norm> for ``op`` (None when no such module exists)."""
    from bench.providers import import_fusednorm
    import_fusednorm()
    for name in KERNEL_MODULES[op]:
        full = f"fusednorm.kernels.{name}"
        try:
            return importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name != full:
                raise
    return None


def case_label(case) -> str:
    return f"{case.op} {case.shape_str} {case.dtype} {case.layout}"


def targets_for(mod, case, device) -> list:
    """``mod.tune_targets`` for one case; GroupNorm's groups go as ``num_groups=`` where the
    function takes them."""
    fn = mod.tune_targets
    kw = {}
    if case.groups:
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        if "num_groups" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
            kw["num_groups"] = case.groups
    return list(fn(case.op, case.shape, case.torch_dtype, case.layout, torch.device(device), **kw))


def tune_cases(norms, full: bool = False, dry_run: bool = False) -> list:
    """The benchmark cases to tune (no variants), tiny stand-ins under --dry-run, deduplicated."""
    out, seen = [], set()
    for c in get_cases(norms, quick=not full):
        if c.variant:
            continue
        if dry_run:
            c = dataclasses.replace(c, shape=TINY_SHAPES[c.op])
        k = (c.op, c.shape, c.dtype, c.layout, c.groups)
        if k not in seen:
            seen.add(k)
            out.append(c)
    return out


# --------------------------------------------------------------------------------------------
# Timing one candidate
# --------------------------------------------------------------------------------------------
def time_candidate_cuda(target, cfg, warmup_ms: float = 5, rep_ms: float = 20):
    """(ms, method) of one launch of ``target.run(cfg)``, kernel-only where it can be captured."""
    from bench.timing import graph_time, recover, time_cuda
    target.run(cfg)  # compile (Triton JIT) and first-call work outside the timing
    torch.cuda.synchronize()
    try:
        return graph_time(lambda: (lambda: target.run(cfg)), 1, warmup_ms, rep_ms), "cuda-graph"
    except Exception:  # noqa: BLE001 -- the method column says which time this is
        recover()
        return time_cuda(lambda: target.run(cfg), warmup_ms, rep_ms), "do_bench (wall)"


def run_once(target, cfg):
    """--dry-run: one untimed call (its wall time is reported, for information only)."""
    t = time.perf_counter()
    target.run(cfg)
    return (time.perf_counter() - t) * 1e3, "once (dry run)"


def _device_ok() -> bool:
    if not torch.cuda.is_available():
        return True
    try:
        torch.cuda.synchronize()
        return True
    except Exception:  # noqa: BLE001 -- a sticky CUDA error: nothing more can run here
        return False


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------
def config_fields(cfg) -> dict:
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, dict):
        return dict(cfg)
    raise TypeError(f"tune: candidate {cfg!r} is not a dataclass instance (see kernels/_tuning.py)")


def config_str(cfg) -> str:
    if cfg is None:
        return "—"
    try:
        return " ".join(f"{k}={v}" for k, v in config_fields(cfg).items())
    except TypeError:
        return repr(cfg)


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:200]


def tune(cases, device: str, *, time_fn, budget_s: float = DEFAULT_BUDGET_S,
         min_gain: float = 0.03, first_only: bool = False, get_module=None,
         clock=time.perf_counter, log=print) -> dict:
    """Time every target's candidates; returns {"results": [...], "notes": [...],
    "complete": bool}. A result: family, key, case, nbytes, status ("tuned", "partial
    (budget)", "failed: ..."), method, heuristic / best (configs), heuristic_ms / best_ms,
    candidates [(config, ms or None, error or None)]."""
    get_module = get_module or kernel_module
    t0 = clock()
    results, notes = [], []
    seen, told = set(), set()
    complete = True

    def over():
        return clock() - t0 > budget_s

    for ci, case in enumerate(cases):
        if over():
            rest = ", ".join(case_label(c) for c in cases[ci:])
            notes.append(f"time budget {budget_s:.0f}s spent: not reached: {rest}")
            complete = False
            break
        try:
            mod = get_module(case.op)
        except Exception as e:  # noqa: BLE001
            notes.append(f"{case_label(case)}: kernel module not importable: {_short(e)}")
            log(notes[-1])
            continue
        name = getattr(mod, "__name__", f"fusednorm.kernels.{KERNEL_MODULES[case.op][-1]}")
        if mod is None or not hasattr(mod, "tune_targets"):
            if name not in told:
                told.add(name)
                msg = f"skip: {name} has no tune_targets (yet): {case.op} cases not tuned"
                notes.append(msg)
                log(msg)
            continue
        try:
            targets = targets_for(mod, case, device)
        except Exception as e:  # noqa: BLE001
            notes.append(f"{case_label(case)}: tune_targets raised {_short(e)}")
            log(notes[-1])
            continue
        stop = False
        for t in targets:
            if (t.family, t.key) in seen:
                continue  # another case of the same shape class: timed once
            if over():
                notes.append(f"time budget {budget_s:.0f}s spent in {case_label(case)}: "
                             f"{t.family} {t.key} and later targets not reached")
                complete = False
                stop = True
                break
            seen.add((t.family, t.key))
            r = {"family": t.family, "key": t.key, "case": case_label(case), "nbytes": t.nbytes,
                 "status": "tuned", "method": None, "heuristic": None, "heuristic_ms": None,
                 "best": None, "best_ms": None, "candidates": []}
            cands = list(t.candidates)[:1] if first_only else list(t.candidates)
            if not cands:
                r["status"] = "failed: no candidates"
                results.append(r)
                continue
            r["heuristic"] = cands[0]
            methods = set()
            for i, cfg in enumerate(cands):
                if i > 0 and over():
                    r["status"] = "partial (budget)"
                    complete = False
                    break
                try:
                    ms, method = time_fn(t, cfg)
                    methods.add(method)
                    r["candidates"].append((cfg, ms, None))
                except Exception as e:  # noqa: BLE001 -- a config the kernel refuses: noted
                    r["candidates"].append((cfg, None, _short(e)))
                    if not _device_ok():
                        notes.append(f"device error after {t.family} {t.key} {config_str(cfg)}: "
                                     f"{_short(e)}; sweep stopped")
                        log(notes[-1])
                        complete, stop = False, True
                        break
            r["method"] = ", ".join(sorted(methods)) or None
            pick(r, min_gain)
            results.append(r)
            log(f"  {t.family:24s} {t.key:28s} {r['status']:18s} heuristic "
                f"{_ms(r['heuristic_ms'])} -> best {_ms(r['best_ms'])}  {config_str(r['best'])}")
            if stop:
                break
        targets = None
        if device == "cuda":
            torch.cuda.empty_cache()
        if stop:
            complete = False
            done = {case_label(c) for c in cases[:ci + 1]}
            rest = [case_label(c) for c in cases if case_label(c) not in done]
            if rest:
                notes.append("not reached: " + ", ".join(rest))
            break
    return {"results": results, "notes": notes, "complete": complete,
            "elapsed_s": clock() - t0}


def _ms(v):
    return "—" if v is None else f"{v:.4f} ms"


def pick(r: dict, min_gain: float) -> dict:
    """The winner of one target (in place): the fastest candidate, unless it beats the
    heuristic (the first candidate) by less than ``min_gain``; no winner when none ran."""
    ok = [(cfg, ms) for cfg, ms, err in r["candidates"] if ms is not None]
    if not ok:
        errs = [err for _, _, err in r["candidates"] if err]
        if not r["status"].startswith("failed"):
            r["status"] = "failed: " + (errs[0] if errs else "nothing timed")
        return r
    first_cfg, first_ms, _ = r["candidates"][0]
    r["heuristic_ms"] = first_ms
    best_cfg, best_ms = min(ok, key=lambda c: c[1])
    if first_ms is not None and best_ms > first_ms * (1.0 - min_gain):
        best_cfg, best_ms = first_cfg, first_ms
    r["best"], r["best_ms"] = best_cfg, best_ms
    return r


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------
def empty_table() -> dict:
    return {"version": 1, "runs": {}, "entries": {}}


def read_table(path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return empty_table()
    if data.get("version") != 1:
        raise ValueError(f"{path}: version {data.get('version')!r}, expected 1 (kernels/_tuning.py)")
    return data


def entries_of(results: list) -> dict:
    """{family: {key: fields}} of the results that have a winner."""
    out = {}
    for r in results:
        if r.get("best") is not None:
            out.setdefault(r["family"], {})[r["key"]] = config_fields(r["best"])
    return out


def merge_table(existing: dict, arch: str, run: dict, entries: dict) -> dict:
    """``existing`` with this arch's run record replaced and its entries for the tuned keys set;
    other archs, and keys of this arch not tuned now, are kept. Sorted, for stable diffs."""
    merged = {fam: dict(kv) for fam, kv in existing.get("entries", {}).items()}
    for fam, kv in entries.items():
        for key, fields in kv.items():
            merged.setdefault(fam, {})[f"{arch}|{key}"] = fields
    runs = dict(existing.get("runs", {}))
    runs[arch] = run
    return {"version": 1, "runs": {a: runs[a] for a in sorted(runs)},
            "entries": {fam: {k: merged[fam][k] for k in sorted(merged[fam])} for fam in sorted(merged)}}


def write_table(path, data: dict):
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)  # a reader never sees half a table


def run_info(device: str, complete: bool, n_entries: int, budget_s: float) -> dict:
    from bench.meta import collect_meta
    meta = collect_meta(device)
    return {"device": meta["gpu"], "date": meta["date"], "commit": meta["commit"],
            "torch": meta["torch"], "triton": meta["triton"], "cuda": meta["cuda"],
            "complete": complete, "entries": n_entries, "budget_s": budget_s}


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
def summary_line(res: dict) -> str:
    """One line for logs (bench/gpu_check.sh prints it)."""
    rs = res["results"]
    won = [r for r in rs if r.get("best") is not None]
    changed = [r for r in won if r["best"] != r["heuristic"]]
    gains = sorted(r["heuristic_ms"] / r["best_ms"] for r in changed
                   if r["heuristic_ms"] and r["best_ms"])
    top = f", speed-ups {gains[0]:.2f}x..{gains[-1]:.2f}x" if gains else ""
    return (f"tune summary: {len(won)}/{len(rs)} targets tuned, {len(changed)} away from the "
            f"heuristic{top}; {'complete' if res['complete'] else 'INCOMPLETE'} in "
            f"{res['elapsed_s']:.0f}s")


def _cell(text: str) -> str:
    """A Markdown table cell: keys hold "|" (``"bf16|4096"``)."""
    return str(text).replace("|", "\\|")


def report_md(res: dict, info: dict, arch: str, min_gain: float, table_note: str) -> str:
    lines = [f"# Tuned launch configs · {info['device']} ({arch})", "",
             f"torch {info['torch']} · triton {info['triton']} · commit {info['commit']} · "
             f"{info['date']} · {res['elapsed_s']:.0f}s, "
             f"{'complete' if res['complete'] else 'INCOMPLETE (budget or device error)'}", "",
             "Times: `do_bench` median of one launch, kernel-only (CUDA graph replay of "
             "`run(config)`; \"do_bench (wall)\" where the launch could not be captured). "
             "Heuristic = the first candidate (the analytic choice). Best = the fastest "
             f"candidate, or the heuristic's when it is less than {100 * min_gain:.0f}% slower.",
             "", table_note, "",
             "| family | key | case | heuristic config | heuristic ms | best config | best ms | "
             "speed-up | best GB/s | candidates | timed by | status |",
             "|---|---|---|---|---:|---|---:|---:|---:|---:|---|---|"]
    for r in res["results"]:
        sp = (r["heuristic_ms"] / r["best_ms"] if r["heuristic_ms"] and r["best_ms"] else None)
        gb = (r["nbytes"] / (r["best_ms"] * 1e-3) / 1e9 if r["nbytes"] and r["best_ms"] else None)
        n_ok = sum(ms is not None for _, ms, _ in r["candidates"])
        lines.append(
            f"| {_cell(r['family'])} | {_cell(r['key'])} | {r['case']} | {_cell(config_str(r['heuristic']))} | "
            f"{_ms(r['heuristic_ms']).replace(' ms', '')} | {_cell(config_str(r['best']))} | "
            f"{_ms(r['best_ms']).replace(' ms', '')} | {'—' if sp is None else f'{sp:.2f}×'} | "
            f"{'—' if gb is None else f'{gb:.0f}'} | {n_ok}/{len(r['candidates'])} | "
            f"{r['method'] or '—'} | {r['status']} |")
    if res["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def report_json(res: dict, info: dict, arch: str) -> dict:
    def cfg(c):
        try:
            return None if c is None else config_fields(c)
        except TypeError:
            return repr(c)
    return {"arch": arch, "run": info, "complete": res["complete"], "elapsed_s": res["elapsed_s"],
            "notes": res["notes"],
            "results": [dict({k: v for k, v in r.items() if k not in ("heuristic", "best", "candidates")},
                             heuristic=cfg(r["heuristic"]), best=cfg(r["best"]),
                             candidates=[{"config": cfg(c), "ms": ms, "error": err}
                                         for c, ms, err in r["candidates"]])
                        for r in res["results"]]}


def finish(res: dict, *, device: str, arch: str, table_path, out, dry_run: bool,
           min_gain: float, budget_s: float, log=print) -> dict:
    """Merge the winners into the table and write it (not under --dry-run), then the report
    (tune.md, tune.json, a copy of the merged table) into ``out`` when given."""
    from bench.providers import import_fusednorm
    import_fusednorm()
    from fusednorm.kernels import _tuning
    entries = entries_of(res["results"])
    n = sum(len(v) for v in entries.values())
    info = run_info(device, res["complete"], n, budget_s)
    merged, written = None, False
    if n:
        merged = merge_table(read_table(table_path), arch, info, entries)
        if dry_run:
            table_note = "Dry run: the table was not written to kernels/."
        else:
            write_table(table_path, merged)
            _tuning.reload()
            written = True
            table_note = f"Table: {n} entries for {arch} written to `{table_path}`."
    else:
        table_note = "Nothing tuned: the table was not touched."
    log(table_note)
    for note in res["notes"]:
        log("  " + note)
    log(summary_line(res))
    if out:
        os.makedirs(out, exist_ok=True)
        md = report_md(res, info, arch, min_gain, table_note)
        with open(os.path.join(out, "tune.md"), "w") as f:
            f.write(md)
        with open(os.path.join(out, "tune.json"), "w") as f:
            json.dump(report_json(res, info, arch), f, indent=1)
        if merged is not None:
            copy = os.path.join(out, "tuned_configs.json")
            if dry_run or os.path.abspath(copy) != os.path.abspath(table_path):
                write_table(copy, merged)
        log(md)
        log(f"tune: wrote {out}/tune.md, tune.json" + (", tuned_configs.json" if merged else ""))
    return {"entries": n, "written": written, "table": merged, "info": info}

# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(prog="python bench/tune.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help=f"no new target starts after this many seconds (default {DEFAULT_BUDGET_S:.0f})")
    p.add_argument("--norms", default=",".join(OPS), help="comma list of ln, rms, gn, in, bn, ln2d")
    p.add_argument("--full", action="store_true", help="every benchmark case, not the quick ones")
    p.add_argument("--table", default=None, help=f"the table to merge into (default {TABLE})")
    p.add_argument("--out", default=None, help="report folder (default $FUSEDNORM_OUT or "
                                               "bench/out/tune-<date>; --dry-run: none)")
    p.add_argument("--min-gain", type=float, default=0.03,
                   help="keep the heuristic unless the best is this much faster (default 0.03)")
    p.add_argument("--warmup-ms", type=float, default=5.0)
    p.add_argument("--rep-ms", type=float, default=20.0)
    p.add_argument("--dry-run", action="store_true",
                   help="CPU (Triton interpreter), tiny shapes, first candidate once, untimed; "
                        "writes only with --out, never to kernels/")
    return p


def main(argv=None, *, get_module=None, log=print) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        # the interpreter must be on before any @triton.jit function exists (TOOLCHAIN.md)
        os.environ.setdefault("TRITON_INTERPRET", "1")
        device = "cpu"
    elif not torch.cuda.is_available():
        log("tune.py needs a CUDA device (--dry-run tests the plumbing on the CPU)")
        return 2
    else:
        device = "cuda"
    norms = parse_norms(args.norms)
    cases = tune_cases(norms, full=args.full, dry_run=args.dry_run)
    table_path = args.table or os.fspath(TABLE)
    out = args.out
    if out is None and not args.dry_run:
        out = os.environ.get("FUSEDNORM_OUT") or os.path.join(
            ROOT, "bench", "out", "tune-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    # Tune against the analytic heuristics: a heuristic that reads the table first would
    # otherwise present an older tuned config as "the heuristic's".
    from bench.providers import import_fusednorm
    import_fusednorm()
    from fusednorm.kernels import _tuning
    saved_env = os.environ.get(_tuning.TABLE_ENV)
    os.environ[_tuning.TABLE_ENV] = "off"
    _tuning.reload()
    try:
        arch = _tuning.arch_of(torch.device(device))
        log(f"tune: {len(cases)} cases ({'dry run, tiny shapes' if args.dry_run else 'quick' if not args.full else 'full'}), "
            f"arch {arch}, budget {args.budget_s:.0f}s, table {table_path if not args.dry_run else '(not written)'}")
        if args.dry_run:
            time_fn = run_once
        else:
            def time_fn(t, cfg):
                return time_candidate_cuda(t, cfg, args.warmup_ms, args.rep_ms)
        res = tune(cases, device, time_fn=time_fn, budget_s=args.budget_s, min_gain=args.min_gain,
                   first_only=args.dry_run, get_module=get_module, log=log)
    finally:
        if saved_env is None:
            os.environ.pop(_tuning.TABLE_ENV, None)
        else:
            os.environ[_tuning.TABLE_ENV] = saved_env
        _tuning.reload()
    finish(res, device=device, arch=arch, table_path=table_path, out=out, dry_run=args.dry_run,
           min_gain=args.min_gain, budget_s=args.budget_s, log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
