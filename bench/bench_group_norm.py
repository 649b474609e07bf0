"""GroupNorm on SD-UNet and video-VAE activations, NCHW and channels_last, fp32 and bf16.

Run alone: ``python bench/bench_group_norm.py [--quick] [--out DIR]`` (same flags as run.py).
"""
import os
import sys

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.cases import Case  # noqa: E402

FULL = [
    ((8, 320, 64, 64), "SD-1.5 UNet 512px, batch 8, level 0"),
    ((8, 640, 32, 32), "SD-1.5 UNet level 1"),
    ((8, 1280, 16, 16), "SD-1.5 UNet level 2"),
    ((8, 1280, 8, 8), "SD-1.5 UNet mid block"),
    ((2, 320, 128, 128), "SDXL UNet 1024px, batch 2, level 0"),
    ((2, 640, 64, 64), "SDXL UNet level 1"),
    ((32, 320, 64, 64), "SD-1.5 UNet level 0, batch 32"),
    ((1, 128, 16, 256, 256), "video VAE decoder, 16 frames 256px"),
    ((1, 256, 16, 128, 128), "video VAE decoder"),
    ((1, 512, 16, 64, 64), "video VAE mid block"),
]


def cases(quick: bool = False) -> list:
    out = []
    if quick:
        for dt in ("bf16", "fp32"):
            for lay in ("nchw", "nhwc"):
                out.append(Case("group_norm", (32, 320, 64, 64), dt, lay, groups=32,
                                model="SD-1.5 UNet level 0, batch 32",
                                compile=(dt == "bf16" and lay == "nchw")))
        return out
    for dt in ("bf16", "fp32"):
        for lay in ("nchw", "nhwc"):
            for shape, m in FULL:
                out.append(Case("group_norm", shape, dt, lay, groups=32, model=m,
                                compile=(dt == "bf16" and len(shape) == 4)))
    # GroupNorm + SiLU, the pair every UNet/VAE resnet block runs
    for lay in ("nchw", "nhwc"):
        for shape, m in FULL[:2]:
            out.append(Case("group_norm", shape, "bf16", lay, variant="silu", groups=32, model=m))
    return out


if __name__ == "__main__":
    from bench.run import main
    sys.exit(main(sys.argv[1:], norms=("group_norm",)))
