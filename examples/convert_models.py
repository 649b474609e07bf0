"""fusednorm.convert on a transformers model and a timm model, with the report of what it did.

    python examples/convert_models.py

Needs transformers and timm (pip install -r requirements-models.txt); downloads nothing: the
Llama is a tiny random-init config, saved and loaded back with from_pretrained to show where
convert() goes in a loading script.  Runs on the CPU in a few seconds.
"""
import os
import sys
import tempfile
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# timm imports torchvision, and PyPI's torchvision cannot load its compiled ops beside a
# CPU-only torch; run from this repository, bench/bench_models.py works around that first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
try:
    from bench.bench_models import ensure_torchvision_importable
    ensure_torchvision_importable()
except ImportError:
    pass

import fusednorm  # noqa: E402


def llama_from_pretrained():
    """A model built later: convert() acts on the instances that exist when it runs, so it
    goes after from_pretrained (and after any .to(dtype); either order keeps the dtype)."""
    import transformers
    transformers.utils.logging.disable_progress_bar()
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2)
    with tempfile.TemporaryDirectory() as d:
        transformers.LlamaForCausalLM(config).save_pretrained(d)
        model = transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.bfloat16)
    return fusednorm.convert(model, report=True)


class ScaleNorm(torch.nn.Module):
    """A norm of the user's own (x / ||x|| · g): no adapter knows it, so it is left and
    the report says so."""

    def __init__(self, dim):
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(dim ** 0.5))

    def forward(self, x):
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(1e-5)


def timm_convnext():
    import timm
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10)
    model.head.pre_logits = ScaleNorm(320)   # stands in for a user's own module
    return fusednorm.convert(model, report=True)


def main():
    llama, report = llama_from_pretrained()
    print("== transformers LlamaForCausalLM (from_pretrained, bf16)")
    print(report)
    print(llama.model.norm)                  # repr shows it is fusednorm's
    ids = torch.randint(0, 256, (2, 12))
    print("logits", tuple(llama(input_ids=ids).logits.shape))

    convnext, report = timm_convnext()
    print("\n== timm convnext_atto")
    print(report)
    print(convnext.stem[1])
    for entry in report.left:              # every module left, with the reason
        print(f"left: {entry.name} ({entry.original}): {entry.reason}")
    print("logits", tuple(convnext(torch.randn(2, 3, 64, 64)).shape))


if __name__ == "__main__":
    main()
