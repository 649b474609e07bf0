"""Cost of fusednorm.monitor: a training step (fwd + bwd + SGD) with and without tracking.

    python bench/bench_monitor_overhead.py [--quick] [--out DIR] [--rounds 7] [--steps 20]

Three modes per model: "off" (no monitor), "norm" (``track(model)``: the norms' own statistics,
no extra pass), "hook" (``track(model, norm_stats=False)``: a forward hook reduces every norm
input once more, the price the "norm" path avoids).  Timing: blocks of --steps steps, interleaved
off/norm/hook for --rounds rounds (so drift of the machine hits all modes alike), median ms per
step.  On CUDA the block is timed with CUDA events around the queued steps; on CPU with
time.perf_counter.  A fresh monitor per block, entered outside the timed region.

Models: the ICS example's MLP (tiny, launch bound: the worst case for a relative overhead), a
conv stack with BatchNorm2d, a pre-LN MLP block stack with LayerNorm.  Rows go to
``DIR/monitor_overhead.{csv,json}`` tagged with device, versions, commit and date; a Markdown
table is printed.
"""
import argparse
import csv
import json
import os
import statistics
import sys
import time

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.meta import collect_meta  # noqa: E402
from fusednorm import monitor  # noqa: E402


def models(device, quick):
    import fusednorm.nn as fnn
    big = device == "cuda" and not quick

    def mlp_bn():
        layers, w = [], 64
        for _ in range(3):
            layers += [nn.Linear(w, 100), fnn.BatchNorm1d(100), nn.Sigmoid()]
            w = 100
        return nn.Sequential(*layers, nn.Linear(100, 10)), torch.randn(60, 64)

    def cnn_bn():
        c, hw, n = (64, 56, 64) if big else (16, 16, 8)
        layers = [nn.Conv2d(3, c, 3, padding=1)]
        for _ in range(4):
            layers += [fnn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1)]
        return nn.Sequential(*layers), torch.randn(n, 3, hw, hw)

    def mlp_ln():
        d, tokens = (1024, 8 * 512) if big else (128, 256)

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.ln = fnn.LayerNorm(d)
                self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

            def forward(self, x):
                return x + self.ff(self.ln(x))
        return nn.Sequential(*[Block() for _ in range(4)]), torch.randn(tokens, d)

    return {"mlp_bn (ICS example)": mlp_bn, "conv_bn": cnn_bn, "preln_mlp": mlp_ln}


def time_block(step, n, device):
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(n):
            step()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / n
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) * 1e3 / n


def bench_model(name, make, device, rounds, steps):
    torch.manual_seed(0)
    model, x = make()
    model, x = model.to(device), x.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        out = model(x)
        out.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    modes = {"off": None, "norm": {}, "hook": {"norm_stats": False}}
    for kw in modes.values():  # warm-up every path (first-call compiles, allocator)
        with (monitor.track(model, **kw) if kw is not None else _null()):
            for _ in range(3):
                step()
    times = {m: [] for m in modes}
    n_records = {}
    for _ in range(rounds):
        for mode, kw in modes.items():
            if kw is None:
                times[mode].append(time_block(step, steps, device))
                continue
            with monitor.track(model, **kw) as mon:
                times[mode].append(time_block(step, steps, device))
            n_records[mode] = sum(len(mon.stats(layer)["step"]) for layer in mon.layers)
            n_records[mode + "_source"] = ",".join(sorted({mon.source(l) for l in mon.layers}))
    med = {m: statistics.median(t) for m, t in times.items()}
    rows = []
    for mode in modes:
        rows.append({"model": name, "input": "x".join(map(str, x.shape)), "mode": mode,
                     "ms_per_step": med[mode],
                     "overhead_pct": 100 * (med[mode] / med["off"] - 1),
                     "min_ms": min(times[mode]), "max_ms": max(times[mode]),
                     "rounds": rounds, "steps_per_block": steps,
                     "source": n_records.get(mode + "_source", ""),
                     "records_per_block": n_records.get(mode, 0)})
    return rows


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small models (always on CPU)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block")
    ap.add_argument("--out", default=os.environ.get("FUSEDNORM_OUT", "bench/out/monitor"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device = args.device
    if device == "cpu":
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    meta = collect_meta(device)
    rows = []
    backend = os.environ.get("FUSEDNORM_BACKEND", "auto")
    for name, make in models(device, args.quick).items():
        try:
            got = bench_model(name, make, device, args.rounds, args.steps)
        except Exception as e:  # one broken backend/op must not hide the other models
            print(f"{name}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        for r in got:
            rows.append({**r, **meta, "backend": backend,
                         "timer": "cuda events" if device == "cuda" else "perf_counter"})
    if not rows:
        print("no model could be timed")
        return 1
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "monitor_overhead.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, "monitor_overhead.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"device: {meta['gpu']}, torch {meta['torch']}, commit {meta['commit']}, "
          f"FUSEDNORM_BACKEND={backend}, "
          f"timer: {rows[0]['timer']}, median of {args.rounds} blocks of {args.steps} steps")
    print("| model | input | mode | source | ms/step | overhead | min..max ms |")
    print("|---|---|---|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['model']} | {r['input']} | {r['mode']} | {r['source']} | "
              f"{r['ms_per_step']:.3f} | {r['overhead_pct']:+.1f}% | "
              f"{r['min_ms']:.3f}..{r['max_ms']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
