"""Does a base text-to-image DiT read its caption? (the tiny recipe's stage 4, before any MoGLE)

    python bench/base_text_reliance.py --backbone checkpoints/tiny-stages/backbone-text \
        --transformer checkpoints/tiny-stages/runs/tiny-demo-base/transformer [--num 64]

Its training loss (rectified flow, fixed noise, posterior means) on held-out SynthFaces with each
face's own first caption, then with the captions swapped between faces — the T5 sequence and the
pooled vector together, and each alone — at each t of the grid. A DiT that ignores its prompt loses
nothing when the captions are swapped; the caption decides colours at high noise, so t >= 0.9 is
where to look. (`bench/controllability.py` measures the same for a whole Face-MoGLE run.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

T_GRID = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="backbone folder (VAE and text encoders)")
    p.add_argument("--transformer", default=None, help="transformer folder (default: the backbone's)")
    p.add_argument("--root", default="data/synthfaces-128", help="SynthFaces data root")
    p.add_argument("--split", default="splits/test.txt", help="held-out ids (the first --num are used)")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--max_sequence_length", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from diffusers import FluxTransformer2DModel

    from face_mogle.data.dataset import load_face, read_captions, read_split
    from face_mogle.encoding import encode_images, encode_prompts, image_ids, text_ids
    from face_mogle.models.builder import load_backbone
    from face_mogle.models.transformer import three_stream_forward
    from face_mogle.training.objective import flow_matching_loss, noisy_and_target

    start = time.perf_counter()
    root = Path(args.root)
    backbone = load_backbone(args.backbone)
    transformer = backbone.transformer if args.transformer is None else \
        FluxTransformer2DModel.from_pretrained(args.transformer, local_files_only=True).eval()
    ids = read_split(root, args.split)[: args.num]
    captions = read_captions(root, ids)
    faces = torch.stack([load_face(root / "face" / f"{i}.jpg", args.size) for i in ids])
    with torch.no_grad():
        x0 = encode_images(backbone.vae, faces)
        t5, pooled = encode_prompts(backbone, [captions[i][0] for i in ids], args.max_sequence_length)
    img, txt = image_ids(args.size, backbone.token_pixels), text_ids(args.max_sequence_length)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(args.seed))
    guidance = torch.ones(len(ids)) if transformer.config.guidance_embeds else None
    variants = {"own": (t5, pooled), "captions swapped": (t5.roll(1, 0), pooled.roll(1, 0)),
                "T5 only swapped": (t5.roll(1, 0), pooled), "pooled only swapped": (t5, pooled.roll(1, 0))}
    print(f"\nBase DiT loss on {len(ids)} held-out faces ({root}), own caption vs swapped (+% = reliance)\n")
    print("| t | own | " + " | ".join(list(variants)[1:]) + " |\n|---:|---:|" + "---:|" * (len(variants) - 1))
    for t_value in T_GRID:
        t = torch.full((len(ids),), t_value)
        x_t, target = noisy_and_target(x0, t, noise)
        with torch.no_grad():
            loss = {name: flow_matching_loss(three_stream_forward(transformer, x_t, e, pooled_, t, img, txt, guidance),
                                             target).item() for name, (e, pooled_) in variants.items()}
        own = loss["own"]
        print(f"| {t_value} | {own:.4f} | " + " | ".join(f"{100 * (loss[n] / own - 1):+.1f}%" for n in list(variants)[1:]) + " |")
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
