"""Stage 1 of the tiny demo recipe: train a small 16-channel VAE, write a whole FLUX-layout backbone.

    python -m face_mogle.training.vae --data data/synthfaces-128 --out checkpoints/tiny-stages/backbone-vae

The VAE (AutoencoderKL, FLUX's 16 latent channels) learns to reconstruct faces from random crops
(it is convolutional, so crops train it for the full size at a fraction of the cost). The loss
weighs each pixel by its class's rarity and doubles it on class edges: the parse mIoU that bounds
every mask score averages over classes, and eyes, brows and lips are a few dozen pixels each, so a
plain pixel loss lets them blur away. Its latent
shift and scale are then measured as FLUX's were, and the backbone — this VAE plus the tiny preset's
transformer, text encoders, tokenizers and scheduler — is saved in the diffusers layout that
`pretrained:` points at.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.dataset import DataError, read_split
from ..image_files import ImageFileError, read_rgb
from ..models.builder import TINY_DEMO_SPEC, TinySpec, build_tiny_backbone
from .region_weights import pixel_weights


def load_masks(root: Path, ids: list[int], size: int) -> torch.Tensor:
    """The label maps of the split as uint8 [N, S, S]."""
    from ..data.masks import MaskError, load_label_map

    try:
        return torch.from_numpy(np.stack([load_label_map(root / "mask" / f"{i}.png", size) for i in ids]))
    except MaskError as err:
        raise DataError(str(err)) from None


def load_faces(root: Path, ids: list[int], size: int) -> torch.Tensor:
    """All faces of the split as uint8 [N, 3, S, S] (small data sets fit in memory)."""
    out = np.empty((len(ids), size, size, 3), dtype=np.uint8)
    for k, i in enumerate(ids):
        path = root / "face" / f"{i}.jpg"
        try:
            out[k] = np.asarray(read_rgb(path).resize((size, size), Image.BICUBIC))
        except ImageFileError as err:
            raise DataError(str(err)) from None
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def random_crops(faces: torch.Tensor, weights: torch.Tensor, batch: int, crop: int, g: torch.Generator):
    """Random crops of faces (in [-1, 1]) and of their pixel weights: ([B, 3, c, c], [B, 1, c, c])."""
    idx = torch.randint(len(faces), (batch,), generator=g)
    s = faces.shape[-1]
    out = torch.empty(batch, 3, crop, crop, dtype=torch.float32)
    w = torch.empty(batch, 1, crop, crop, dtype=torch.float32)
    for k, i in enumerate(idx.tolist()):
        y, x = torch.randint(s - crop + 1, (2,), generator=g).tolist()
        out[k] = faces[i, :, y : y + crop, x : x + crop].float() / 127.5 - 1
        w[k, 0] = weights[i, y : y + crop, x : x + crop]
    return out, w


def _parse_miou(recon: torch.Tensor, masks: torch.Tensor) -> float:
    """mIoU of the SynthFaces parse of the reconstructions against the true label maps: the
    ceiling this VAE puts on any mask-consistency score measured through it."""
    from ..data.synthfaces import mean_iou, parse

    u8 = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return mean_iou([parse(a) for a in u8], list(masks.numpy()))


@torch.no_grad()
def round_trip(vae, faces: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """uint8 faces [N, 3, S, S] → reconstructions from the posterior mean, in [-1, 1]."""
    x = faces.float() / 127.5 - 1
    return torch.cat([vae.decode(vae.encode(c).latent_dist.mean).sample for c in x.split(batch_size)])


def train_vae(data: Path, out: Path, split: str, size: int, crop: int, steps: int, batch_size: int, lr: float,
              kl_weight: float, spec: TinySpec, seed: int, eval_split: str | None = None, eval_num: int = 100) -> dict:
    """Train, measure the latent statistics, write the backbone; returns the figures. The parse mIoU
    is measured on `eval_split` (held-out faces; the first `eval_num`) or, without one, on training faces."""
    from tqdm.auto import tqdm

    ids = read_split(data, split)
    faces = load_faces(data, ids, size)
    weights = pixel_weights(load_masks(data, ids, size))
    weights = weights / weights.mean()
    torch.manual_seed(seed)
    backbone = build_tiny_backbone(spec)
    vae = backbone.vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.1)
    g = torch.Generator().manual_seed(seed)
    losses = []
    bar = tqdm(range(steps), desc="train VAE", dynamic_ncols=True)
    for step in bar:
        x, w = random_crops(faces, weights, batch_size, crop, g)
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
        recon = vae.decode(z).sample
        err = recon - x
        rec = (w * (err.abs() + err**2)).mean()
        loss = rec + kl_weight * dist.kl().mean()
        if not torch.isfinite(loss):
            raise RuntimeError(f"VAE loss became {loss.item()} at step {step + 1}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(rec.item())
        bar.set_postfix(rec=f"{np.mean(losses[-20:]):.4f}")
    vae.eval().requires_grad_(False)

    # FLUX normalises latents to zero mean / unit variance: measure ours the same way.
    with torch.no_grad():
        sample = faces[: min(256, len(faces))].float() / 127.5 - 1
        z = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in sample.split(32)])
    shift, scale = float(z.mean()), float(1.0 / z.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    eval_ids = (read_split(data, eval_split) if eval_split else ids)[:eval_num]
    eval_faces = load_faces(data, eval_ids, size)
    recon = round_trip(vae, eval_faces)
    psnr = float(10 * torch.log10(4.0 / ((recon - (eval_faces.float() / 127.5 - 1)) ** 2).mean()))
    recon_miou = _parse_miou(recon, load_masks(data, eval_ids, size))

    backbone.save_atomically(out)
    k = max(1, steps // 10)
    return {"rec_first": float(np.mean(losses[:k])), "rec_last": float(np.mean(losses[-k:])), "psnr": psnr,
            "recon_miou": recon_miou, "shift_factor": shift, "scaling_factor": scale, "images": len(ids),
            "eval_images": len(eval_ids), "eval_split": eval_split or split}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data root in the MM-CelebA-HQ layout (e.g. SynthFaces)")
    p.add_argument("--out", required=True, help="backbone folder to write (diffusers FLUX layout)")
    p.add_argument("--split", default="splits/train.txt", help="training ids: START-END or an id-list file")
    p.add_argument("--eval_split", default="splits/test.txt",
                   help="held-out ids on which the round-trip parse mIoU and PSNR are measured ('' = training ids)")
    p.add_argument("--eval_num", type=int, default=100, help="how many of the held-out faces to measure")
    p.add_argument("--size", type=int, default=128, help="face size the VAE is trained for")
    p.add_argument("--crop", type=int, default=64, help="random crop size used in training")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl_weight", type=float, default=1e-6)
    p.add_argument("--spec", choices=["demo", "test"], default="demo",
                   help="backbone sizes: 'demo' (the shipped tiny model) or 'test' (the unit-test preset)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.crop > args.size or args.crop % 8 or args.size % 16:
        p.error(f"--crop must be a multiple of 8 and <= --size, --size a multiple of 16 (got {args.crop}, {args.size})")
    if args.steps < 1 or args.batch_size < 1:
        p.error("--steps and --batch_size must be >= 1")
    data, out = Path(args.data), Path(args.out)
    if not (data / "face").is_dir():
        p.error(f"--data {data}: no face/ folder (make one with script/make_synthfaces.py)")
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = TINY_DEMO_SPEC if args.spec == "demo" else TinySpec()
    start = time.perf_counter()
    try:
        stats = train_vae(data, out, args.split, args.size, args.crop, args.steps, args.batch_size, args.lr,
                          args.kl_weight, dataclasses.replace(spec, seed=args.seed), args.seed,
                          eval_split=args.eval_split or None, eval_num=args.eval_num)
    except (DataError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"VAE: reconstruction loss {stats['rec_first']:.4f} → {stats['rec_last']:.4f}, PSNR {stats['psnr']:.1f} dB, "
          f"parse mIoU of reconstructions {stats['recon_miou']:.3f} ({stats['eval_images']} faces of {stats['eval_split']}), "
          f"shift {stats['shift_factor']:.4f}, scale {stats['scaling_factor']:.4f}, "
          f"{time.perf_counter() - start:.0f} s; backbone written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
