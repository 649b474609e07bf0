"""Ioffe & Szegedy (2015), Figure 1, on scikit-learn's bundled digits, plus monitor drift curves.

A fully connected net, 64 -> 3 x (100 sigmoid units) -> 10, trained with SGD (batch 60) with and
without BatchNorm (fusednorm.nn.BatchNorm1d between each Linear and its sigmoid):

  (a) test accuracy against training step, both nets;
  (b, c) the 15th/50th/85th percentiles, over the test set, of the input of one sigmoid of the
      last hidden layer, without BN (the Linear output) and with BN (the BN output, i.e. after
      BN's affine gamma/beta -- the tensor the sigmoid sees, as in the paper). Both are measured
      with the nets in eval mode (BN uses its running statistics): what the net computes at test
      time.

fusednorm.monitor tracks, on every training step, the batch statistics of the sigmoid inputs of
both nets and of the BN inputs of the BN net; their drift is plotted in a second PNG.

    python examples/ics_figure1.py --steps 5000 --out ics_out

Outputs in --out: ics_figure1.png, ics_figure1.csv (step, net, test_acc, p15, p50, p85),
ics_drift.png, ics_drift_plain.csv, ics_drift_bn.csv (Monitor.to_csv), ics_summary.json.
Runs on CPU, downloads nothing, seeded.
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

from fusednorm import monitor

PERCENTILES = (15, 50, 85)
HIDDEN, LAYERS, BATCH = 100, 3, 60


def load_data(seed, n_test=500):
    """Digits (1797 8x8 images, 16 grey levels), pixels scaled to [0, 1], stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=n_test, stratify=y,
                                          random_state=seed)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return f(Xtr), torch.tensor(ytr), f(Xte), torch.tensor(yte)


def make_net(bn, bn_impl="fusednorm", init_std=0.1):
    """Linear [-> BN] -> Sigmoid, three times, then Linear. Small Gaussian init as in the paper."""
    if bn_impl == "fusednorm":
        import fusednorm.nn as fnn
        BN = fnn.BatchNorm1d
    else:
        BN = nn.BatchNorm1d
    mods, width = [], 64
    for _ in range(LAYERS):
        mods.append(nn.Linear(width, HIDDEN))
        if bn:
            mods.append(BN(HIDDEN))
        mods.append(nn.Sigmoid())
        width = HIDDEN
    mods.append(nn.Linear(width, 10))
    net = nn.Sequential(*mods)
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=init_std)
            nn.init.zeros_(m.bias)
    return net


def movement(p, burn_in, window):
    """Systematic shift of the percentile curves: how far they end up from where they started.

    p: (E, 3) percentiles per evaluation.  After dropping the first `burn_in` evaluations,
    sum over the three percentiles of |mean of the last `window` evaluations - mean of the
    first `window` ones|, in the units the sigmoid sees.  Averaging over windows removes the
    evaluation-to-evaluation jitter, which is not a shift of the distribution.
    """
    p = np.asarray(p, dtype=np.float64)[burn_in:]
    window = max(1, min(window, len(p)))
    return float(np.abs(p[-window:].mean(0) - p[:window].mean(0)).sum())


def total_variation(p, burn_in):
    """sum_k sum_t |p[t+1, k] - p[t, k]| after `burn_in` evaluations: counts jitter as well."""
    return float(np.abs(np.diff(np.asarray(p, dtype=np.float64)[burn_in:], axis=0)).sum())


def train(bn, args, data, unit):
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(args.seed)  # same init stream for both nets' Linear layers
    net = make_net(bn, args.bn_impl, args.init_std)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    sigmoids = [m for m in net if isinstance(m, nn.Sigmoid)]
    bns = [m for m in net if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    # sigmoid inputs (hook path) in both nets; BN inputs (the norm's own statistics) in the BN net
    tracked = {f"sigmoid{i + 1}_in": m for i, m in enumerate(sigmoids)}
    tracked.update({f"bn{i + 1}_in": m for i, m in enumerate(bns)})

    probe = {}
    hook = sigmoids[-1].register_forward_hook(
        lambda m, a, o: probe.__setitem__("x", a[0][:, unit].detach().clone()))
    g = torch.Generator().manual_seed(args.seed + 1)
    rows = []

    def evaluate(step):
        net.eval()
        with torch.no_grad(), mon.paused():
            acc = float((net(Xte).argmax(1) == yte).float().mean())
        net.train()
        q = np.percentile(probe["x"].numpy(), PERCENTILES)
        rows.append({"step": step, "net": "bn" if bn else "plain", "test_acc": acc,
                     **{f"p{p}": float(v) for p, v in zip(PERCENTILES, q)}})

    with monitor.track(net, layers=tracked, reference=args.reference) as mon:
        evaluate(0)
        perm, pos = torch.randperm(len(Xtr), generator=g), 0
        for step in range(1, args.steps + 1):
            if pos + BATCH > len(Xtr):
                perm, pos = torch.randperm(len(Xtr), generator=g), 0
            idx = perm[pos:pos + BATCH]
            pos += BATCH
            loss = loss_fn(net(Xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % args.eval_every == 0 or step == args.steps:
                evaluate(step)
    hook.remove()
    return rows, mon


def smooth(y, w):
    if len(y) < w or w <= 1:
        return y
    c = np.cumsum(np.insert(np.asarray(y, dtype=np.float64), 0, 0.0))
    return np.concatenate([np.full(w - 1, np.nan), (c[w:] - c[:-w]) / w])


def plot_figure1(rows, path, unit):
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = Figure(figsize=(13, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots(1, 3)
    for net, style in (("plain", "--"), ("bn", "-")):
        r = [x for x in rows if x["net"] == net]
        ax[0].plot([x["step"] for x in r], [x["test_acc"] for x in r], style,
                   label="with BN" if net == "bn" else "without BN")
    ax[0].set(title="(a) test accuracy", xlabel="training step", ylim=(0, 1))
    ax[0].legend()
    lims = []
    for a, net, title in ((ax[1], "plain", "(b) without BN: Linear output"),
                          (ax[2], "bn", "(c) with BN: BN output (after gamma, beta)")):
        r = [x for x in rows if x["net"] == net]
        for p in PERCENTILES:
            a.plot([x["step"] for x in r], [x[f"p{p}"] for x in r], label=f"{p}th pct")
            lims += [x[f"p{p}"] for x in r]
        a.set(title=title, xlabel="training step", ylabel=f"input of sigmoid #{unit}, layer 3")
        a.legend(fontsize=8)
    lo, hi = min(lims), max(lims)
    for a in ax[1:]:
        a.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_drift(mons, path, window):
    """sym_kl of each layer's record vs. the reference window, smoothed over `window` steps."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = Figure(figsize=(13, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots(1, 3)
    panels = [
        (ax[0], "(d) sym. KL drift, pre-activation (Linear output)",
         [("plain", "sigmoid"), ("bn", "bn")]),
        (ax[1], "(e) sym. KL drift, sigmoid input", [("plain", "sigmoid"), ("bn", "sigmoid")]),
        (ax[2], "(f) standardized mean shift, sigmoid input",
         [("plain", "sigmoid"), ("bn", "sigmoid")]),
    ]
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for a, title, series in panels:
        measure = "mean_shift" if a is ax[2] else "sym_kl"
        for net, prefix in series:
            mon = mons[net]
            for label in mon.layers:
                if not label.startswith(prefix):
                    continue
                d = mon.drift(label)
                i = int(label[len(prefix)]) - 1
                a.plot(d["step"].numpy(), smooth(d[measure].numpy(), window),
                       "--" if net == "plain" else "-", color=colors[i], lw=1.2,
                       label=f"{net}: {label}")
        a.set(title=title, xlabel="training step (record)", yscale="log")
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--out", default="ics_out", help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--init-std", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=None, help="default: steps // 100")
    ap.add_argument("--unit", type=int, default=0, help="which last-layer sigmoid to follow")
    ap.add_argument("--reference", type=int, default=10, help="monitor reference window")
    ap.add_argument("--burn-in", type=float, default=0.1,
                    help="fraction of evaluations ignored by the movement measures")
    ap.add_argument("--bn-impl", choices=("fusednorm", "torch"), default="fusednorm")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps={args.steps} must be >= 1")
    if not 0 <= args.unit < HIDDEN:
        ap.error(f"--unit={args.unit} must be in [0, {HIDDEN})")
    args.eval_every = args.eval_every or max(1, args.steps // 100)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)  # 60 x 100 matmuls: threads only add overhead (and contention)

    t0 = time.time()
    data = load_data(args.seed)
    rows, mons, result = [], {}, {"args": vars(args)}
    for bn in (False, True):
        r, mon = train(bn, args, data, args.unit)
        rows += r
        net = "bn" if bn else "plain"
        mons[net] = mon
        n_eval = len(r)
        p = [[x[f"p{q}"] for q in PERCENTILES] for x in r]
        burn = int(args.burn_in * n_eval)
        result[net] = {"final_test_acc": r[-1]["test_acc"],
                       "movement": movement(p, burn, max(1, n_eval // 5)),
                       "total_variation": total_variation(p, burn),
                       "summary": mon.summary()}
        mon.to_csv(os.path.join(args.out, f"ics_drift_{net}.csv"))

    with open(os.path.join(args.out, "ics_figure1.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot_figure1(rows, os.path.join(args.out, "ics_figure1.png"), args.unit)
    plot_drift(mons, os.path.join(args.out, "ics_drift.png"), window=max(1, args.steps // 100))
    result["seconds"] = time.time() - t0
    with open(os.path.join(args.out, "ics_summary.json"), "w") as f:
        json.dump(result, f, indent=1)
    if not args.quiet:
        for net in ("plain", "bn"):
            print(f"{net:>5}: final test accuracy {result[net]['final_test_acc']:.4f}, "
                  f"percentile movement {result[net]['movement']:.3f} "
                  f"(total variation {result[net]['total_variation']:.2f})")
            print(result[net]["summary"])
        print(f"wrote {args.out}/ in {result['seconds']:.1f}s")
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
