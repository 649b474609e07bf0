"""convert() on 14 models people train: what it converts, how exactly, and one CPU training step.

    python bench/bench_models.py [--models a,b] [--steps 7] [--threads N] [--out DIR] [--no-timing]

For each model (tiny random-init configs of transformers, timm and diffusers models; nothing
is downloaded) the table gives

* norms: norm-like modules converted / present, before this change (``convert()`` swapped the
  exact torch.nn classes only) and now;
* max |Δ| of the output and of the parameter gradients, converted against the original
  (a deep copy taken before conversion, same inputs, same loss), in fp32 and with the whole
  model in bf16, next to max |ref| of each for scale;
* one training step (forward, loss, backward, SGD step) on the CPU, original and converted:
  the median of ``--steps`` steps after two warm-up steps, the two models taking turns.

Norm weights and biases are randomized first (a model fresh from ``__init__`` has weight 1 and
bias 0, which hides a wrong weight path) and dropout is off, so the two models see the same
numbers.  Results go to ``DIR/models.json`` and ``DIR/models.md``.

Also the model zoo of tests/test_adapters.py, and ``ensure_torchvision_importable()``: timm
(and transformers' image utilities) import torchvision, and PyPI's torchvision is built
against CUDA torch -- beside the CPU torch of CI its compiled ops do not load and ``import
torchvision`` stops at "operator torchvision::nms does not exist".  Defining the schemas of
the two ops whose fake kernels it registers at import (``nms``, ``qnms``; no kernels) lets
the Python package import; classification models never call them.
"""
import argparse
import copy
import glob
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # configs only, never a download
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

_TORCHVISION_SHIM = None


def ensure_torchvision_importable() -> str:
    """Make ``import torchvision`` work beside a torch its compiled ops were not built for.

    Returns what was done: "absent", "imported already", "native ops" (its _C loads: nothing
    to do), or "schemas only" (nms/qnms defined without kernels).  Call it before importing
    timm or transformers."""
    global _TORCHVISION_SHIM
    if "torchvision" in sys.modules:
        return "imported already"
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return "absent"
    if _TORCHVISION_SHIM is not None:
        return "schemas only"
    for lib in glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so")):
        try:
            torch.ops.load_library(lib)
            return "native ops"
        except OSError:
            break
    _TORCHVISION_SHIM = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        _TORCHVISION_SHIM.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return "schemas only"


def library_missing(name: str):
    """None when ``name`` imports, else the reason (for pytest.skip)."""
    ensure_torchvision_importable()
    try:
        __import__(name)
        return None
    except Exception as e:  # an absent package or a broken install: say which
        return f"{name} is not importable ({type(e).__name__}: {e}); pip install -r " \
               "requirements-models.txt"


# ------------------------------------------------------------------------------ the zoo
# name -> (library, builder); a builder returns (model, inputs(gen) -> kwargs, output(out))
def _lm_inputs(vocab, b=2, s=16, decoder=False):
    def make(gen):
        ids = torch.randint(0, vocab, (b, s), generator=gen)
        kw = {"input_ids": ids}
        if decoder:
            kw["decoder_input_ids"] = torch.randint(0, vocab, (b, s // 2), generator=gen)
        return kw
    return make


def _causal(config_cls, model_cls, **over):
    import transformers as T
    cfg = getattr(T, config_cls)(vocab_size=128, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=64,
                                 attention_dropout=0.0, **over)
    return getattr(T, model_cls)(cfg), _lm_inputs(128), lambda out: out.logits


def _llama():
    return _causal("LlamaConfig", "LlamaForCausalLM")


def _qwen2():
    return _causal("Qwen2Config", "Qwen2ForCausalLM")


def _mistral():
    return _causal("MistralConfig", "MistralForCausalLM")


def _t5():
    import transformers as T
    cfg = T.T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                     dropout_rate=0.0, decoder_start_token_id=0)
    return T.T5ForConditionalGeneration(cfg), _lm_inputs(128, decoder=True), \
        lambda out: out.logits


def _gpt2():
    import transformers as T
    cfg = T.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                       eos_token_id=0)
    return T.GPT2LMHeadModel(cfg), _lm_inputs(128), lambda out: out.logits


def _bert():
    import transformers as T
    cfg = T.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=128,
                       max_position_embeddings=64, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
    return T.BertForMaskedLM(cfg), _lm_inputs(128), lambda out: out.logits


def _image_inputs(b=4, c=3, hw=32):
    return lambda gen: {"x": torch.randn(b, c, hw, hw, generator=gen)}


def _timm(name, hw=32, **kw):
    def build():
        ensure_torchvision_importable()
        import timm
        model = timm.create_model(name, pretrained=False, num_classes=10, **kw)
        return model, _image_inputs(hw=hw), lambda out: out
    return build


def _unet():
    import diffusers as D
    model = D.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                          block_out_channels=(32, 64), norm_num_groups=8,
                          down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                          up_block_types=("AttnUpBlock2D", "UpBlock2D"))

    def inputs(gen):
        return {"sample": torch.randn(2, 3, 16, 16, generator=gen),
                "timestep": torch.tensor([3, 17])}
    return model, inputs, lambda out: out.sample


def _dit():
    import diffusers as D
    model = D.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                    out_channels=4, num_layers=2, sample_size=8, patch_size=2,
                                    num_embeds_ada_norm=10)

    def inputs(gen):
        return {"hidden_states": torch.randn(2, 4, 8, 8, generator=gen),
                "timestep": torch.tensor([3, 7]), "class_labels": torch.tensor([1, 4])}
    return model, inputs, lambda out: out.sample


def _flux():
    import diffusers as D
    model = D.FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1,
                                     num_single_layers=1, attention_head_dim=16,
                                     num_attention_heads=2, joint_attention_dim=32,
                                     pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))

    def inputs(gen):
        return {"hidden_states": torch.randn(2, 16, 4, generator=gen),
                "encoder_hidden_states": torch.randn(2, 8, 32, generator=gen),
                "pooled_projections": torch.randn(2, 32, generator=gen),
                "timestep": torch.tensor([0.3, 0.7]),
                "img_ids": torch.zeros(16, 3), "txt_ids": torch.zeros(8, 3)}
    return model, inputs, lambda out: out.sample


MODELS = {
    "llama": ("transformers", _llama),
    "qwen2": ("transformers", _qwen2),
    "mistral": ("transformers", _mistral),
    "t5": ("transformers", _t5),
    "gpt2": ("transformers", _gpt2),
    "bert": ("transformers", _bert),
    "resnet18": ("timm", _timm("resnet18", hw=64)),
    "convnext_atto": ("timm", _timm("convnext_atto")),
    "vit_tiny_patch16_224": ("timm", _timm("vit_tiny_patch16_224", img_size=32)),
    "resnet50_gn": ("timm", _timm("resnet50_gn", hw=64)),
    "unet2d": ("diffusers", _unet),
    "dit": ("diffusers", _dit),
    "flux": ("diffusers", _flux),
}
# Issue #14 names 13 models for its 14; the 14th row here is convnext_atto with conv_mlp=False
# (its blocks normalize channels-last tensors with timm's LayerNorm, the rest LayerNorm2d).
MODELS["convnext_atto_nhwc_mlp"] = ("timm", _timm("convnext_atto", conv_mlp=False))


def build(name: str, seed: int = 0):
    """(model, inputs(gen), output(out)) with random weights, norm parameters randomized."""
    library, builder = MODELS[name]
    reason = library_missing(library)
    if reason:
        raise ImportError(reason)
    torch.manual_seed(seed)
    model, inputs, output = builder()
    randomize_norms(model, seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model, inputs, output


def randomize_norms(model: torch.nn.Module, seed: int = 1):
    """Norm weights ~ 1 + 0.3·N(0, 1) (Gemma's 1 + w: w ~ 0.3·N), biases ~ 0.3·N(0, 1)."""
    from fusednorm import adapters
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if not adapters.is_norm_like(m):
                continue
            zero_centred = "Gemma" in type(m).__name__
            for pname, p in m.named_parameters(recurse=False):
                noise = 0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float32)
                shift = 1.0 if pname == "weight" and not zero_centred else 0.0
                p.copy_((noise + shift).to(p.dtype))


def counts(model: torch.nn.Module):
    """(present, converted by the exact-class swap alone, converted now) -- on a fresh copy."""
    import fusednorm
    from fusednorm import adapters
    from fusednorm.nn import SWAPS
    present = sum(1 for m in model.modules() if adapters.is_norm_like(m))
    before = sum(1 for m in model.modules() if type(m) in SWAPS)
    _, report = fusednorm.convert(copy.deepcopy(model), report=True)
    return present, before, len(report.converted), report


def _output(out, output):
    y = output(out)
    return y if isinstance(y, torch.Tensor) else y[0]


def _max_abs(t):
    return t.detach().double().abs().max().item() if t.numel() else 0.0


def _run(model, kw, output, seed):
    """(output, {param name: grad}) of one forward + backward of a fixed random projection."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same draws for any randomness inside (DiT's label drop)
    y = _output(model(**kw), output)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1))
    (y.double() * g.double()).sum().backward()
    grads = {n: p.grad.detach().double() for n, p in model.named_parameters()
             if p.grad is not None}
    return y.detach().double(), grads


def _delta(a, b):
    """max |a - b| over the output, and over every parameter gradient."""
    out = _max_abs(a[0] - b[0])
    if a[1].keys() != b[1].keys():
        raise AssertionError(f"gradients differ in which parameters have them: "
                             f"{sorted(a[1].keys() ^ b[1].keys())}")
    grad = max((_max_abs(a[1][n] - b[1][n]) for n in a[1]), default=0.0)
    return out, grad


def compare(model, inputs, output, dtypes=(torch.float32, torch.bfloat16), seed=3):
    """For each dtype: max |Δ| of output and parameter grads, converted vs original, and each
    one's error against the original in float64; all relative to max |float64 value|."""
    import fusednorm
    kw64 = inputs(torch.Generator().manual_seed(seed))

    def cast(kw, dtype):
        return {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
                for k, v in kw.items()}

    ref64 = _run(copy.deepcopy(model).double().train(), cast(kw64, torch.float64), output, seed)
    scale_out = _max_abs(ref64[0]) or 1.0
    scale_grad = max((_max_abs(g) for g in ref64[1].values()), default=0.0) or 1.0
    res = {}
    for dtype in dtypes:
        tag = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        ref = copy.deepcopy(model).to(dtype).train()
        ours = fusednorm.convert(copy.deepcopy(model), report=True)[0].to(dtype).train()
        kw = cast(kw64, dtype)
        a, b = _run(ref, kw, output, seed), _run(ours, kw, output, seed)
        for what, (d_out, d_grad) in (("delta", _delta(b, a)), ("err_orig", _delta(a, ref64)),
                                      ("err_ours", _delta(b, ref64))):
            res[f"out_{what}_{tag}"] = d_out / scale_out
            res[f"grad_{what}_{tag}"] = d_grad / scale_grad
    return res


def step_times(models, inputs, output, steps=7, warmup=2, seed=5):
    """Median seconds of one fp32 training step (forward, loss, backward, SGD step) of each
    model; the models take turns step by step, so a load that comes and goes on the machine
    falls on both alike."""
    models = [m.float().train() for m in models]
    opts = [torch.optim.SGD(m.parameters(), lr=1e-4) for m in models]
    kw = inputs(torch.Generator().manual_seed(seed))
    times = [[] for _ in models]
    for i in range(warmup + steps):
        for model, opt, t in zip(models, opts, times):
            t0 = time.perf_counter()
            y = _output(model(**kw), output)
            y.float().square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= warmup:
                t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def measure(name, steps=7, timing=True, threads=None):
    import fusednorm
    model, inputs, output = build(name)
    present, before, after, report = counts(model)
    row = {"model": name, "library": MODELS[name][0], "present": present,
           "converted_before": before, "converted_now": after,
           "left": [f"{e.original.rsplit('.', 1)[-1]}: {e.reason}" for e in report.left]}
    row.update(compare(model, inputs, output))
    if timing:
        ours = fusednorm.convert(copy.deepcopy(model), report=True)[0]
        default = torch.get_num_threads()
        torch.set_num_threads(threads or default)   # timing only: accuracy with torch's default
        try:
            row["step_s_original"], row["step_s_converted"] = step_times(
                [copy.deepcopy(model), ours], inputs, output, steps)
        finally:
            torch.set_num_threads(default)
        row["step_threads"] = threads or default
    return row


def markdown(rows):
    """The table: Δ = max |converted - original|; in brackets each one's error against the
    original computed in float64 (original / converted).  All relative to max |float64|."""
    lines = ["| model | norms converted / present: before → now | output fp32 | output bf16 | "
             "param grads fp32 | param grads bf16 | CPU train step: original / converted |",
             "|" + "---|" * 7]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['error']} | | | | | |")
            continue
        step = (f"{1e3 * r['step_s_original']:.1f} / {1e3 * r['step_s_converted']:.1f} ms"
                if "step_s_original" in r else "–")
        cells = [f"{r[f'{k}_delta_{t}']:.1e} [{r[f'{k}_err_orig_{t}']:.1e} / "
                 f"{r[f'{k}_err_ours_{t}']:.1e}]"
                 for k in ("out", "grad") for t in ("fp32", "bf16")]
        lines.append(f"| {r['model']} | {r['converted_before']} → {r['converted_now']} / "
                     f"{r['present']} | " + " | ".join(cells) + f" | {step} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: "
                   + ", ".join(MODELS))
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the timed steps (default: torch's)")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        t0 = time.perf_counter()
        try:
            row = measure(name, args.steps, timing=not args.no_timing, threads=args.threads)
        except ImportError as e:
            row = {"model": name, "error": str(e)}
        rows.append(row)
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    table = markdown(rows)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "timing_threads": args.threads or torch.get_num_threads()}
    for lib in ("transformers", "timm", "diffusers"):
        mod = sys.modules.get(lib)
        meta[lib] = getattr(mod, "__version__", None)
    print(table)
    for r in rows:
        for why in r.get("left", []):
            print(f"  {r['model']} left: {why}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "models.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        (out / "models.md").write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
