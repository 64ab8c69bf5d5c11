"""Training throughput: re-encoding masks and text every step (the authors' way) vs the latent cache.

CPU, tiny preset (default):
    python bench/train.py [--steps 12 --batch_size 4 --size 64 --repeats 3]
CUDA GPU, FLUX.1-dev-sized transformer with random weights, 512², bf16, gradient checkpointing:
    python bench/train.py --flux-size [--batch_sizes 1 2 4]

Prints a markdown table: median step time, samples/s, the cached/uncached ratio, and on GPU the
peak memory and model FLOPs utilisation (FLOPs counted by torch's FlopCounterMode).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def tiny_cpu(args) -> None:
    from face_mogle.config import load_config
    from face_mogle.data.cache import build_cache
    from face_mogle.data.synthfaces import write_dataset
    from face_mogle.training.trainer import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    write_dataset(tmp / "data", 64, args.size, seed=0, progress=False)
    rows = []
    medians = {}
    for mode in ("uncached", "cached"):
        times = []
        for r in range(args.repeats):
            overrides = [
                f"data.root={tmp / 'data'}", f"train.runs_dir={tmp / 'runs'}", f"name={mode}-{r}",
                f"data.size={args.size}", f"data.condition_size={args.size}", f"train.batch_size={args.batch_size}",
                f"train.max_steps={args.steps}", "train.save_interval=100000", "train.sample_interval=0",
            ]
            if mode == "cached":
                overrides.append(f"data.cache_dir={tmp / 'cache'}")
            cfg = load_config(ROOT / "configs" / "tiny.yaml", overrides)
            if mode == "cached" and r == 0:
                start = time.perf_counter()
                build_cache(cfg, split="train", progress=False, log=lambda *a: None)
                rows.append(("cache build (one-off, train split)", f"{time.perf_counter() - start:.1f} s", "", ""))
            stamps = []
            Trainer(cfg).train(on_step=lambda step, loss: stamps.append(time.perf_counter()))
            steps = [b - a for a, b in zip(stamps[1:], stamps[2:])]  # skip the first (warm-up) steps
            times.append(statistics.median(steps))
        medians[mode] = statistics.median(times)
        rows.append((mode, f"{medians[mode] * 1000:.0f} ms", f"{args.batch_size / medians[mode]:.2f}", ""))
    ratio = medians["uncached"] / medians["cached"]
    rows[-1] = rows[-1][:3] + (f"{ratio:.2f}×",)
    print(f"\nTiny preset, CPU ({torch.get_num_threads()} threads), {args.size}², batch {args.batch_size}, "
          f"median of {args.repeats} runs × {args.steps - 2} steps\n")
    print("| data path | step time | samples/s | speed-up |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def flux_gpu(args) -> None:
    """FLUX.1-dev-sized pieces with random weights (no download), timed on the GPU."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import T5Config, T5EncoderModel

    from face_mogle.config import ModelConfig
    from face_mogle.encoding import image_ids, latent_tokens, text_ids
    from face_mogle.models.face_mogle import FaceMoGLE

    dev = args.device or "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        sys.exit("--flux-size needs a CUDA GPU (or --device cpu --blocks 1,1 --size 64 for a smoke test)")
    dt = torch.bfloat16
    double, single = (int(x) for x in args.blocks.split(","))
    torch.manual_seed(0)
    torch.set_default_dtype(dt)  # build the 12 B transformer and 4.7 B T5 directly in bf16 (fp32 would not fit)
    with torch.device(dev):
        # the FLUX.1-dev config (19 double + 38 single blocks, 24 heads × 128); --blocks shrinks depth only
        tr = FluxTransformer2DModel(guidance_embeds=True, num_layers=double, num_single_layers=single).to(dt)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512],
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
            scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
        ).to(dt).eval()
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                     feed_forward_proj="gated-gelu", is_encoder_decoder=False)).to(dt).eval()
    torch.set_default_dtype(torch.float32)
    model = FaceMoGLE(tr, ModelConfig()).to(dev)
    model.freeze_base()
    for p in model.trainable_parameters():
        p.data = p.data.float()
    tr.gradient_checkpointing = True
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    size = args.size if args.size != 64 else 512
    n_tok, side = (size // 16) ** 2, size // 8
    img_ids, txt_ids = image_ids(size, 16, device=dev), text_ids(512, device=dev)
    peak_flops = args.peak_tflops * 1e12

    def step(b: int, reencode: bool) -> None:
        if reencode:  # what the authors' trainer does each step: 21 VAE encodes + T5 per sample
            with torch.no_grad():
                pixels = torch.rand(b * 21, 3, size, size, device=dev, dtype=dt) * 2 - 1  # face + 20 maps
                dist = vae.encode(pixels).latent_dist
                toks = latent_tokens(vae, dist.mean.float(), dist.std.float(), True)
                x0, masks = toks[:b], toks[b:].view(b, 20, n_tok, 64)
                prompt = t5(torch.randint(0, 32128, (b, 512), device=dev))[0]
        else:  # cached: posterior (mean, std) and text embeddings are read, only sampled here
            mean = torch.randn(b * 21, 16, side, side, device=dev)
            toks = latent_tokens(vae, mean, torch.ones_like(mean) * 0.01, True)
            x0, masks = toks[:b], toks[b:].view(b, 20, n_tok, 64)
            prompt = torch.randn(b, 512, 4096, device=dev, dtype=dt)
        t = torch.rand(b, device=dev)
        noise = torch.randn_like(x0)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        with torch.autocast(torch.device(dev).type, dtype=dt):
            pred = model(xt.to(dt), t, masks.to(dt), prompt, torch.randn(b, 768, device=dev, dtype=dt),
                         txt_ids, img_ids, torch.ones(b, device=dev))
        loss = torch.nn.functional.mse_loss(pred.float(), (noise - x0).float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)

    name = torch.cuda.get_device_name() if dev == "cuda" else "CPU smoke test"
    print(f"\nFLUX.1-dev-sized Face-MoGLE ({double} double + {single} single blocks), random weights, {size}², "
          f"bf16, gradient checkpointing, {name}\n")
    print("| batch | data path | step time | samples/s | peak memory | transformer MFU | speed-up |")
    print("|---|---|---|---|---|---|---|")
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    peak_memory = (lambda: torch.cuda.max_memory_allocated() / 2**30) if dev == "cuda" else (lambda: float("nan"))
    for b in args.batch_sizes:
        flop = FlopCounterMode(display=False)
        with flop:
            step(b, reencode=False)
        model_flops = flop.get_total_flops()  # transformer fwd + recompute + bwd (+ tiny MoGLE)
        results = {}
        for reencode in (True, False):
            sync()
            if dev == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times = []
            for i in range(args.repeats + 1):
                sync()
                start = time.perf_counter()
                step(b, reencode)
                sync()
                if i:
                    times.append(time.perf_counter() - start)
            results[reencode] = (statistics.median(times), peak_memory())
        for reencode in (True, False):
            sec, mem = results[reencode]
            mfu = model_flops / (results[False][0] * peak_flops) if not reencode else float("nan")
            speed = f"{results[True][0] / results[False][0]:.2f}×" if not reencode else ""
            print(f"| {b} | {'re-encode' if reencode else 'cached'} | {sec * 1000:.0f} ms | {b / sec:.2f} | "
                  f"{mem:.1f} GiB | {'' if reencode else f'{mfu * 100:.1f}%'} | {speed} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flux-size", action="store_true", help="FLUX.1-dev-sized run on a CUDA GPU")
    parser.add_argument("--steps", type=int, default=12, help="steps per CPU run (the first two are warm-up)")
    parser.add_argument("--batch_size", type=int, default=4, help="CPU batch size")
    parser.add_argument("--size", type=int, default=64, help="image size (tiny CPU run; with --flux-size 512 unless given)")
    parser.add_argument("--device", default=None, help="with --flux-size: cuda (default) or cpu for a smoke test")
    parser.add_argument("--blocks", default="19,38", help="with --flux-size: double,single blocks (FLUX.1-dev: 19,38)")
    parser.add_argument("--repeats", type=int, default=3, help="runs (CPU) or timed steps (GPU) per setting")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2, 4], help="GPU batch sizes")
    parser.add_argument("--peak_tflops", type=float, default=989.0,
                        help="GPU dense bf16 peak for MFU (H100 SXM 989; H200 989)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    flux_gpu(args) if args.flux_size else tiny_cpu(args)


if __name__ == "__main__":
    main()
