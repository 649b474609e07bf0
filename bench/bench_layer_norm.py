"""LayerNorm and RMSNorm over LLM rows (tokens x hidden), fp32 and bf16.

Run alone: ``python bench/bench_layer_norm.py [--quick] [--out DIR]`` (same flags as run.py).
"""
import os
import sys

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.cases import Case  # noqa: E402

# hidden size -> a model that uses it
HIDDEN = {
    1024: "BERT-large / GPT-2 medium",
    2048: "Llama-3.2-1B",
    4096: "Llama-2-7B / Llama-3-8B",
    5120: "Llama-2-13B / Qwen2.5-14B",
    8192: "Llama-3-70B",
    12288: "GPT-3 175B",
    16384: "Llama-3.1-405B",
}


def cases(quick: bool = False) -> list:
    out = []
    for op in ("layer_norm", "rms_norm"):
        if quick:
            for n in (1024, 4096, 8192, 16384):
                out.append(Case(op, (16384, n), "bf16", model=HIDDEN[n], compile=(n == 4096)))
            continue
        for dt in ("bf16", "fp32"):
            for n in HIDDEN:  # 16K tokens: e.g. batch 4 x 4K context
                out.append(Case(op, (16384, n), dt, model=HIDDEN[n], compile=(dt == "bf16")))
            for n in (1024, 4096, 8192, 16384):
                out.append(Case(op, (4096, n), dt, model=HIDDEN[n], compile=False))
            for n in (4096, 8192):  # 32K tokens
                out.append(Case(op, (32768, n), dt, model=HIDDEN[n], compile=False))
            # very wide rows: a row no longer fits one program's registers
            out.append(Case(op, (1024, 65536), dt, model="wide rows (65536)", compile=False))
            out.append(Case(op, (256, 262144), dt, model="wide rows (262144)", compile=False))
        # pre-norm transformer block: x + residual fused into the norm, both outputs
        for n in (4096, 8192):
            out.append(Case(op, (16384, n), "bf16", variant="prenorm", model=HIDDEN[n]))
    if not quick:
        # ConvNeXt-T LayerNorm over channels in channels_last (batch 128): many short rows
        for shape, m in (((128 * 56 * 56, 96), "ConvNeXt-T stage 1"),
                         ((128 * 14 * 14, 384), "ConvNeXt-T stage 3")):
            for dt in ("bf16", "fp32"):
                out.append(Case("layer_norm", shape, dt, model=m, compile=False))
    return out


if __name__ == "__main__":
    from bench.run import main
    sys.exit(main(sys.argv[1:], norms=("layer_norm", "rms_norm")))
