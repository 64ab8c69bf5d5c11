"""Memory at FLUX.1-dev size: the planner's predictions, and (on a GPU) measured peaks beside them.

CPU part (runs anywhere, nothing downloaded):
    python bench/memory.py
  - the planner's tables for FLUX.1-dev (config files in tests/fixtures/flux1-dev-configs), 512²,
    sampling at batch 1 and training at batch 1 and 4, common settings;
  - the tiny model: predicted vs real bytes of every component (and of torchao int8/fp8);
  - the three-stream activation formulas vs a shape-only trace of our real forward (and backward)
    at FLUX.1-dev shapes on the meta device.
GPU part (CUDA; random weights of FLUX.1-dev's shapes, 512², 28 steps):
    python bench/memory.py --flux-size
  - denoising with the transformer in bf16 / int8 (torchao) / NF4 (bitsandbytes): peak memory and
    time per image, velocity PSNR vs bf16, the planner's prediction for the same phase;
  - a training step at batch 1 and 4 (checkpointing): bf16 + AdamW vs NF4 + AdamW8bit.
  Staged encoders and offloading run through the pipeline's `sample.offload`, once it exists; until
  then those rows say so.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FLUX = ROOT / "tests" / "fixtures" / "flux1-dev-configs"
GIB = 2**30


def _cfg(overrides=()):
    from face_mogle.config import load_config

    return load_config(ROOT / "configs" / "face-mogle.yaml", [f"pretrained={FLUX}", *overrides])


def planner_tables() -> None:
    from face_mogle.memory import plan

    cfg = _cfg()
    p = plan(cfg, "sample", batch_size=1, gpu_gb=24)
    print("\n### Sampling, FLUX.1-dev, 512², batch 1 (predicted peak, GiB)\n")
    print("| quantize | all resident | staged encoders | offload model | offload leaf |")
    print("|---|---|---|---|---|")
    for q in ("none", "int8", "fp8", "nf4"):
        print(f"| {q} | " + " | ".join(f"{p.find(quantize=q, placement=pl).peak / GIB:.1f}"
                                       for pl in ("resident", "staged", "model", "leaf")) + " |")
    print("\nActivations (GiB): " + ", ".join(f"{k} {v / GIB:.2f}" for k, v in p.activations.items()))
    for b in (1, 4):
        t = plan(cfg, "train", batch_size=b, gpu_gb=24)
        print(f"\n### Training, FLUX.1-dev, 512², batch {b}, latent/text cache (predicted peak, GiB)\n")
        print("| quantize | optimizer | checkpointing on | checkpointing off |")
        print("|---|---|---|---|")
        for q in ("none", "int8", "nf4"):
            for o in ("adamw", "adamw8bit", "prodigy"):
                on, off = (t.find(quantize=q, optimizer=o, checkpointing=c, encoders="cached").peak / GIB for c in ("on", "off"))
                print(f"| {q} | {o} | {on:.1f} | {off:.1f} |")
        print(f"\nActivations at batch {b} (GiB): " + ", ".join(f"{k} {v / GIB:.2f}" for k, v in t.activations.items()))


def tiny_agreement() -> None:
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    from face_mogle.memory.components import component_size, meta_backbone
    from face_mogle.models.builder import build_tiny_backbone

    def stored(t):
        if is_traceable_wrapper_subclass(t):
            return sum(stored(getattr(t, n)) for n in t.__tensor_flatten__()[0])
        return t.numel() * t.element_size()

    real = build_tiny_backbone()
    meta = meta_backbone("tiny")
    print("\n### Tiny preset: predicted vs real bytes\n")
    print("| component | dtype / scheme | predicted | real |")
    print("|---|---|---|---|")
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        m = copy.deepcopy(getattr(real, name)).to(torch.bfloat16)
        print(f"| {name} | bf16 | {component_size(name, meta[name], torch.bfloat16).bytes['none']:,} | "
              f"{sum(stored(t) for t in [*m.parameters(), *m.buffers()]):,} |")
    for scheme, qcfg in (("int8", Int8WeightOnlyConfig()), ("fp8", Float8WeightOnlyConfig())):
        m = copy.deepcopy(real.transformer).to(torch.bfloat16)
        quantize_(m, qcfg)
        print(f"| transformer | {scheme} (torchao) | {component_size('transformer', meta['transformer'], torch.bfloat16).bytes[scheme]:,} | "
              f"{sum(stored(t) for t in [*m.parameters(), *m.buffers()]):,} |")


def formula_vs_trace(batch: int = 1) -> None:
    """The activation formulas against our forward traced on the meta device at FLUX.1-dev shapes."""
    from face_mogle.config import ModelConfig
    from face_mogle.encoding import image_ids, text_ids
    from face_mogle.memory.activations import Streams, Width, inference_bytes, training_bytes
    from face_mogle.memory.components import meta_backbone
    from face_mogle.memory.trace import LiveBytes, fused_attention
    from face_mogle.models.face_mogle import FaceMoGLE
    from face_mogle.models.transformer import three_stream_forward

    tr = meta_backbone(str(FLUX))["transformer"]
    model = FaceMoGLE(tr, ModelConfig())
    model.freeze_base()
    w = Width.of(dict(tr.config))
    t, n = 512, 1024
    s = Streams(t, n, n)
    print(f"\n### Activation formulas vs a shape-only trace of our forward, FLUX.1-dev, 512², batch {batch} (GiB)\n")
    print("| step | formula | trace | formula / trace |")
    print("|---|---|---|---|")
    for label, train, ckpt in (("sampling (bf16, no grad)", False, False), ("training, checkpointing", True, True),
                               ("training, no checkpointing", True, False)):
        tr.to(torch.bfloat16)
        for name, p in tr.named_parameters():
            if train and p.requires_grad:
                p.data = torch.empty_like(p, dtype=torch.float32)
        tr.gradient_checkpointing = ckpt
        mk = lambda *shape: torch.empty(*shape, device="meta", dtype=torch.bfloat16)  # noqa: E731
        x, c, txt, pooled = mk(batch, n, 64), mk(batch, n, 64), mk(batch, t, 4096), mk(batch, 768)
        ts, g = torch.empty(batch, device="meta"), torch.empty(batch, device="meta")
        ids_img, ids_txt = image_ids(512, 16).to("meta"), text_ids(t).to("meta")
        tracker = LiveBytes()
        with fused_attention(), tracker, torch.set_grad_enabled(train), torch.autocast("cpu", torch.bfloat16, enabled=train):
            out = three_stream_forward(tr, x, txt, pooled, ts, ids_img, ids_txt, g, condition_tokens=c)
            if train:
                out.float().square().mean().backward()
        del out
        grads = sum(p.numel() * 4 for p in tr.parameters() if p.requires_grad) if train else 0
        formula = (training_bytes(s, w, batch, 2, ckpt) + grads) if train else inference_bytes(s, w, batch, 2)
        print(f"| {label} | {formula / GIB:.2f} | {tracker.peak / GIB:.2f} | {formula / tracker.peak:.3f} |")
        for p in tr.parameters():
            p.grad = None


# --------------------------------------------------------------------------------------------
# GPU


def flux_gpu(args) -> None:
    if not torch.cuda.is_available():
        sys.exit("--flux-size needs a CUDA GPU; the CPU part runs without the flag")
    from diffusers import FluxTransformer2DModel

    from face_mogle.config import ModelConfig
    from face_mogle.encoding import image_ids, text_ids
    from face_mogle.memory import plan
    from face_mogle.models.face_mogle import FaceMoGLE

    dev, dt, size, steps = "cuda", torch.bfloat16, 512, args.steps
    n, t = (size // 16) ** 2, 512
    ids_img, ids_txt = image_ids(size, 16, device=dev), text_ids(t, device=dev)
    config = FluxTransformer2DModel.load_config(str(FLUX / "transformer"))

    def build(scheme):
        torch.manual_seed(0)
        torch.set_default_dtype(dt)
        with torch.device(dev):
            tr = FluxTransformer2DModel.from_config(config).to(dt)
        torch.set_default_dtype(torch.float32)
        if scheme in ("int8", "fp8"):
            from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

            quantize_(tr, Int8WeightOnlyConfig() if scheme == "int8" else Float8WeightOnlyConfig())
        elif scheme == "nf4":
            _to_nf4(tr)
        model = FaceMoGLE(tr, ModelConfig()).to(dev)
        return model

    def inputs(b, g):
        r = lambda *s: torch.randn(*s, device=dev, generator=g).to(dt)  # noqa: E731
        return r(b, n, 64), r(b, 20, n, 64).float(), r(b, t, 4096), r(b, 768)

    print(f"\n### FLUX.1-dev-sized transformer, random weights, {size}², {steps} steps, {torch.cuda.get_device_name()}\n")
    print("| setting | measured peak (GiB) | predicted (GiB) | s / image | velocity PSNR vs bf16 (dB) |")
    print("|---|---|---|---|---|")
    cfg = _cfg()
    sample_plan = plan(cfg, "sample", batch_size=1, gpu_gb=80)
    reference = None
    for scheme in ("none", "int8", "nf4"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            model = build(scheme).eval()
        except Exception as err:  # a scheme the installed libraries cannot run here
            print(f"| {scheme} | skipped: {str(err).splitlines()[0]} | | | |")
            continue
        g = torch.Generator(dev).manual_seed(0)
        x, masks, txt, pooled = inputs(1, g)
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(steps):
                ts = torch.full((1,), 1 - i / steps, device=dev)
                v = model(x, ts, masks, txt, pooled, ids_txt, ids_img, torch.full((1,), 3.5, device=dev))
                x = (x.float() - v.float() / steps).to(dt)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated()
        # the same phase as the planner's "model offload" denoising row: the transformer alone
        predicted = sample_plan.find(quantize=scheme, placement="model").parts
        predicted = predicted["weights"] + predicted["activations"] if predicted["phase"] == "denoising" else float("nan")
        if reference is None:
            reference, psnr = x.float(), float("inf")
        else:
            mse = (x.float() - reference).pow(2).mean().item()
            psnr = 10 * math.log10(reference.pow(2).max().item() / mse) if mse > 0 else float("inf")
        print(f"| {scheme} | {peak / GIB:.2f} | {predicted / GIB:.2f} | {seconds:.2f} | {psnr:.1f} |")
        del model
    print("| staged encoders / offload model / leaf | owed: run inference.py --offload model|leaf (--quantize ...) on a FLUX.1-dev folder | | | |")

    print("\n| training step (checkpointing) | batch | measured peak (GiB) | predicted (GiB) | s / step |")
    print("|---|---|---|---|---|")
    for scheme, opt_name in (("none", "adamw"), ("nf4", "adamw8bit")):
        for b in (1, 4):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            try:
                model = build(scheme)
            except Exception as err:
                print(f"| {scheme} + {opt_name} | {b} | skipped: {str(err).splitlines()[0]} | | |")
                continue
            model.freeze_base()
            for p in model.trainable_parameters():
                p.data = p.data.float()
            model.transformer.gradient_checkpointing = True
            model.train()
            if opt_name == "adamw8bit":
                from bitsandbytes.optim import AdamW8bit

                opt = AdamW8bit(model.trainable_parameters(), lr=1e-4)
            else:
                opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
            g = torch.Generator(dev).manual_seed(0)
            times = []
            for _ in range(3):
                x, masks, txt, pooled = inputs(b, g)
                torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.autocast("cuda", dtype=dt):
                    pred = model(x, torch.rand(b, device=dev), masks, txt, pooled, ids_txt, ids_img, torch.ones(b, device=dev))
                pred.float().square().mean().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            peak = torch.cuda.max_memory_allocated()
            tp = plan(cfg, "train", batch_size=b, gpu_gb=80)
            predicted = tp.find(quantize=scheme, optimizer=opt_name, checkpointing="on", encoders="cached").peak
            print(f"| {scheme} + {opt_name} | {b} | {peak / GIB:.2f} | {predicted / GIB:.2f} | {min(times[1:]):.2f} |")
            del model, opt


def _to_nf4(module) -> None:
    """Replace every nn.Linear by a bitsandbytes NF4 Linear4bit (what BitsAndBytesConfig does)."""
    import bitsandbytes as bnb

    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=torch.bfloat16, quant_type="nf4", device="cpu")
            q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(module, name, q.to(child.weight.device))
        else:
            _to_nf4(child)


def main() -> None:
    parser = argparse.ArgumentParser(description="FLUX.1-dev memory: the planner's tables and checks (CPU); "
                                     "measured peaks beside the predictions with --flux-size (CUDA)")
    parser.add_argument("--flux-size", action="store_true", help="measure on a CUDA GPU with random FLUX.1-dev weights")
    parser.add_argument("--steps", type=int, default=28, help="denoising steps on the GPU (default: 28)")
    args = parser.parse_args()
    if args.flux_size:
        flux_gpu(args)
        return
    planner_tables()
    tiny_agreement()
    formula_vs_trace(1)
    formula_vs_trace(4)


if __name__ == "__main__":
    main()
