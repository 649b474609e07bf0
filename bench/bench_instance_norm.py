"""InstanceNorm on style-transfer activations (Johnson et al. / fast neural style), fp32 and bf16.

Run alone: ``python bench/bench_instance_norm.py [--quick] [--out DIR]`` (same flags as run.py).
"""
import os
import sys

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.cases import Case  # noqa: E402

FULL = [
    ((16, 32, 256, 256), "fast style transfer 256px, batch 16, conv1"),
    ((16, 64, 128, 128), "fast style transfer conv2"),
    ((16, 128, 64, 64), "fast style transfer residual blocks"),
    ((32, 64, 128, 128), "fast style transfer conv2, batch 32"),
    ((4, 32, 512, 512), "fast style transfer 512px, batch 4, conv1"),
]


def cases(quick: bool = False) -> list:
    if quick:
        return [Case("instance_norm", (32, 64, 128, 128), dt, "nchw", model=FULL[3][1],
                     compile=(dt == "bf16")) for dt in ("bf16", "fp32")]
    out = []
    for dt in ("bf16", "fp32"):
        for shape, m in FULL:
            out.append(Case("instance_norm", shape, dt, "nchw", model=m, compile=(dt == "bf16")))
        out.append(Case("instance_norm", (32, 64, 128, 128), dt, "nhwc", model=FULL[3][1],
                        compile=False))
    return out


if __name__ == "__main__":
    from bench.run import main
    sys.exit(main(sys.argv[1:], norms=("instance_norm",)))
