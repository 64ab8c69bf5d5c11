"""Sampling throughput: batched generation vs one image at a time (the authors' loop), equal outputs.

Both sides run the same FaceMoGLEPipeline on the same prompts, masks and per-image seeds; the
batched side hands it all images at once (`--batch_size` per forward), the other calls it once per
image. The images must agree (max abs pixel difference <= 1/255) or the benchmark fails.

Part 1, tiny preset on the CPU (default): size 64, 8 steps, 8 images, median of 3 timed runs after
one warm-up run, random LoRA/MoGLE weights.

    python bench/sample.py [--device cpu] [--size 64] [--steps 8] [--images 8] [--batch_size 8] [--repeats 3]

Part 2, `--flux-size` (needs a CUDA GPU): a FLUX.1-dev-sized transformer (19 double + 38 single
blocks, 24 heads x 128, 64 latent channels) with random weights in bf16, the FLUX.1 VAE layout
(random), small random text encoders of FLUX's widths (text encoding runs once per prompt and is
not what is measured), 512², 28 steps; reports images/s and torch.cuda.max_memory_allocated.

    python bench/sample.py --flux-size [--images 4] [--batch_size 4] [--repeats 1]

`--blocks D,S --device cpu` shrinks the FLUX-sized transformer's depth for a smoke test of that
code path without a GPU. `--out FILE.json` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def example_masks(n: int, size: int) -> list[np.ndarray]:
    """n distinct label maps: the shipped examples, shifted and mirrored."""
    from face_mogle.data.masks import load_label_map

    bases = [load_label_map(p, size) for p in sorted((REPO / "assets" / "examples").glob("*.png"))]
    if not bases:
        raise SystemExit("bench/sample.py: no example masks in assets/examples/")
    masks = []
    for i in range(n):
        m = bases[i % len(bases)]
        if (i // len(bases)) % 2:
            m = m[:, ::-1]
        masks.append(np.ascontiguousarray(np.roll(m, (i // (2 * len(bases))) * max(1, size // 32), axis=0)))
    return masks


PROMPTS = [
    "A woman with blond wavy hair, blue eyes and red lips, on a gray background.",
    "A man with black short hair and brown eyes, wearing a green shirt.",
    "She has red long hair, green eyes and light skin.",
    "He is bald and wears glasses, on a blue background.",
    "A woman with gray bob-cut hair, wearing earrings and a necklace.",
    "A man with brown hair, pink lips and dark skin, wearing a hat.",
    "",  # mask-only
    "Portrait of a person with black long hair on a purple background.",
]


def randomise(model, seed: int = 0, scale: float = 0.05) -> None:
    """LoRA B and MoGLE weights random, so both take part in the computation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.transformer.named_parameters():
            if "lora_B" in name:
                p.copy_((torch.randn(p.shape, generator=g) * scale).to(p.dtype))
        for p in model.mogle.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.3).to(p.dtype))


def tiny_pipeline(args):
    from face_mogle.config import load_config
    from face_mogle.models.builder import load_backbone
    from face_mogle.models.face_mogle import FaceMoGLE
    from face_mogle.pipeline import FaceMoGLEPipeline

    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"sample.size={args.size}", f"sample.steps={args.steps}",
                                                        f"data.size={args.size}", f"data.condition_size={args.size}"])
    backbone = load_backbone("tiny", dtype=torch.float32, device=args.device)
    model = FaceMoGLE(backbone.transformer, cfg.model)
    randomise(model, scale=1.0)
    model.mogle.to(args.device)
    return FaceMoGLEPipeline(backbone, model, cfg, device=args.device)


def flux_sized_pipeline(args):
    """FLUX.1-dev shapes, random weights, built straight on the device in bf16 (fp32 on CPU)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from face_mogle.config import load_config
    from face_mogle.models.builder import Backbone, build_clip_tokenizer, build_t5_tokenizer
    from face_mogle.models.face_mogle import FaceMoGLE
    from face_mogle.pipeline import FaceMoGLEPipeline

    double, single = (int(x) for x in args.blocks.split(","))
    dtype = torch.bfloat16 if torch.device(args.device).type == "cuda" else torch.float32
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_clip_tokenizer(tmp)
    tokenizer_2 = build_t5_tokenizer()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    torch.manual_seed(0)
    try:
        with torch.device(args.device):
            transformer = FluxTransformer2DModel(
                patch_size=1, in_channels=64, num_layers=double, num_single_layers=single, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=[16, 56, 56],
            )
            vae = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512],
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                layers_per_block=2, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False,
            )
            text_encoder = CLIPTextModel(CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=768, intermediate_size=1024, num_hidden_layers=1,
                num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            ))
            text_encoder_2 = T5EncoderModel(T5Config(
                vocab_size=len(tokenizer_2), d_model=4096, d_kv=64, d_ff=1024, num_layers=1, num_heads=8,
                feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=0, eos_token_id=1,
                decoder_start_token_id=0,
            ))
    finally:
        torch.set_default_dtype(previous)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    for m in (transformer, vae, text_encoder, text_encoder_2):
        m.eval().requires_grad_(False)
    backbone = Backbone(transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler, source="random FLUX.1-dev-sized")
    cfg = load_config(REPO / "configs" / "face-mogle.yaml", [f"sample.size={args.size}", f"sample.steps={args.steps}",
                                                               f"data.size={args.size}", f"data.condition_size={args.size}"])
    model = FaceMoGLE(transformer, cfg.model)
    randomise(model)
    model.mogle.to(args.device)
    model.transformer.to(args.device)
    return FaceMoGLEPipeline(backbone, model, cfg, device=args.device)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device) -> tuple[float, list]:
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run(args) -> list[dict]:
    pipe = flux_sized_pipeline(args) if args.flux_size else tiny_pipeline(args)
    n = args.images
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    masks = example_masks(n, args.size)
    seeds = [1000 + i for i in range(n)]
    kw = dict(steps=args.steps, size=args.size)

    def batched():
        return pipe(prompts, masks, seeds=seeds, batch_size=args.batch_size, **kw).images

    def one_at_a_time():
        return [pipe(p, m, [s], batch_size=1, **kw).images[0] for p, m, s in zip(prompts, masks, seeds)]

    cuda = torch.device(args.device).type == "cuda"
    rows = []
    results = {}
    for name, fn in (("one at a time (authors' loop)", one_at_a_time), (f"batched ({args.batch_size}/forward)", batched)):
        if args.warmup:
            fn() if not args.flux_size else pipe(prompts[:1], masks[:1], seeds=seeds[:1], batch_size=1, **kw)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        seconds, images = timed(fn, args.repeats, args.device)
        results[name] = images
        rows.append(dict(mode=name, images=n, seconds=seconds, images_per_s=n / seconds,
                         max_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None))
    a, b = (np.stack([np.asarray(im, dtype=np.int16) for im in imgs]) for imgs in results.values())
    diff = int(np.abs(a - b).max())
    if diff > 1:
        raise SystemExit(f"bench/sample.py: batched and one-at-a-time images differ by {diff}/255")
    for r in rows:
        r["speedup"] = r["images_per_s"] / rows[0]["images_per_s"]
        r["max_pixel_diff"] = diff
    return rows


def table(rows, args) -> str:
    what = ("FLUX.1-dev-sized transformer (random weights, "
            f"{args.blocks.replace(',', ' double + ')} single blocks)") if args.flux_size else "tiny preset"
    device = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    head = (f"Sampling, {what}, {args.size}², {args.steps} steps, {args.images} images, median of {args.repeats} "
            f"on {device}; batched == one at a time (max pixel diff {rows[0]['max_pixel_diff']}/255)\n\n")
    lines = ["| mode | images | median s | images/s | speed-up | max CUDA memory |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        mem = "—" if r["max_memory_gib"] is None else f"{r['max_memory_gib']:.1f} GiB"
        lines.append(f"| {r['mode']} | {r['images']} | {r['seconds']:.2f} | {r['images_per_s']:.3f} | {r['speedup']:.2f}× | {mem} |")
    return head + "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--flux-size", action="store_true", help="FLUX.1-dev-sized transformer, random bf16 weights (CUDA)")
    p.add_argument("--device", default=None, help="default: cuda with --flux-size, else cpu")
    p.add_argument("--size", type=int, default=None, help="image size (default 64 tiny, 512 FLUX-sized)")
    p.add_argument("--steps", type=int, default=None, help="steps (default 8 tiny, 28 FLUX-sized)")
    p.add_argument("--images", type=int, default=None, help="images per run (default 8 tiny, 4 FLUX-sized)")
    p.add_argument("--batch_size", type=int, default=None, help="images per forward when batched (default: all)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs, median reported (default 3 tiny, 1 FLUX-sized)")
    p.add_argument("--blocks", default="19,38", help="double,single blocks of the FLUX-sized transformer")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    big = args.flux_size
    args.device = args.device or ("cuda" if big else "cpu")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("bench/sample.py: --flux-size needs a CUDA GPU (or --device cpu --blocks 1,1 for a smoke test)", file=sys.stderr)
        return 2
    args.size = args.size or (512 if big else 64)
    args.steps = args.steps or (28 if big else 8)
    args.images = args.images or (4 if big else 8)
    args.batch_size = args.batch_size or args.images
    args.repeats = args.repeats or (1 if big else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    print(table(rows, args))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(settings=vars(args), rows=rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
