"""BatchNorm on ResNet-50 activations (batch 256, 224px), NCHW and channels_last, fp32 and bf16.

Training mode (batch statistics) for fwd, bwd and fwd+bwd; eval mode (running statistics) forward
only. Parameters are fp32 as under AMP. Run alone: ``python bench/bench_batch_norm.py [--quick]``.
"""
import os
import sys

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.cases import Case  # noqa: E402

FULL = [
    ((256, 64, 112, 112), "ResNet-50 stem (bn1)"),
    ((256, 256, 56, 56), "ResNet-50 layer1"),
    ((256, 512, 28, 28), "ResNet-50 layer2"),
    ((256, 256, 28, 28), "ResNet-50 layer3 (bottleneck in)"),
    ((256, 1024, 14, 14), "ResNet-50 layer3"),
    ((256, 2048, 7, 7), "ResNet-50 layer4"),
]


def cases(quick: bool = False) -> list:
    out = []
    if quick:
        for dt in ("bf16", "fp32"):
            for lay in ("nchw", "nhwc"):
                out.append(Case("batch_norm", (256, 256, 28, 28), dt, lay, model=FULL[3][1],
                                compile=(dt == "bf16" and lay == "nhwc")))
        return out
    for dt in ("bf16", "fp32"):
        for lay in ("nchw", "nhwc"):
            for shape, m in FULL:
                out.append(Case("batch_norm", shape, dt, lay, model=m,
                                compile=(dt == "bf16" and lay == "nhwc")))
            out.append(Case("batch_norm", (256, 256, 56, 56), dt, lay, variant="eval",
                            model=FULL[1][1] + " (inference)", passes=("fwd",)))
    return out


if __name__ == "__main__":
    from bench.run import main
    sys.exit(main(sys.argv[1:], norms=("batch_norm",)))
