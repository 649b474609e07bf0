"""LayerNorm2d (LayerNorm over the channels of each pixel: timm's LayerNorm2d) on ConvNeXt-T
activations, NCHW and channels_last, bf16 (and fp32 at stage 1).

Run alone: ``python bench/bench_layer_norm_2d.py [--quick] [--out DIR]`` (same flags as run.py).
"""
import os
import sys

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.cases import Case  # noqa: E402

# ConvNeXt-T at 224px, batch 32: the stem / downsample LayerNorm2d of each stage
# (and every block's norm in the conv_mlp variants)
FULL = [
    ((32, 96, 56, 56), "ConvNeXt-T stage 1, 224px, batch 32"),
    ((32, 192, 28, 28), "ConvNeXt-T stage 2"),
    ((32, 384, 14, 14), "ConvNeXt-T stage 3"),
    ((32, 768, 7, 7), "ConvNeXt-T stage 4"),
]


def cases(quick: bool = False) -> list:
    out = []
    if quick:
        for shape, m in (FULL[0], FULL[2]):
            for lay in ("nchw", "nhwc"):
                out.append(Case("layer_norm_2d", shape, "bf16", lay, model=m,
                                compile=(shape == FULL[0][0] and lay == "nchw")))
        return out
    for lay in ("nchw", "nhwc"):
        for shape, m in FULL:
            out.append(Case("layer_norm_2d", shape, "bf16", lay, model=m))
        out.append(Case("layer_norm_2d", FULL[0][0], "fp32", lay, model=FULL[0][1], compile=False))
    return out


if __name__ == "__main__":
    from bench.run import main
    sys.exit(main(sys.argv[1:], norms=("layer_norm_2d",)))
