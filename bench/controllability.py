"""Controllability on held-out SynthFaces: does the face follow its mask and its caption?

    python bench/controllability.py [--run checkpoints/face-mogle-tiny] [--root data/synthfaces-128]
        [--num 300] [--modes mask+text,mask,text] [--runs RUN ...] [--out results.json]

For each held-out id (the test split), generates from its mask and first caption in each mode, then
parses the generated face back with the exact SynthFaces parser:
- mask mIoU: the input label map vs the parse (mean over classes present in either, one confusion
  matrix over all images) — meaningful in modes with a mask;
- attribute accuracy: the colours read off the generated face (hair, eyes, lips, skin, cloth,
  background) vs the ones the caption names — meaningful in modes with text;
- face validity: the share of whole faces (one face region holding two eyes, two brows, a nose and a
  mouth in order, sizes and positions inside the range of real renders; face_mogle.eval.face_validity),
  in every mode, with the commonest reason a face fails.
Text-only images are sampled as each run's config says (`sample.text_only`); `--text_only
official,base` gives one row per setting (official: blank maps through Face-MoGLE; base: the base DiT
alone, no condition tokens, LoRA off).
Several `--runs` (e.g. ablations trained on the same budget) give one table row each. Reference rows
score the real held-out faces passed through the run's VAE (encode → decode: the ceiling the
autoencoder puts on any generated face) and through a 2× / 4× down-and-up resampling (what a little
blur costs under the exact parser). A second table says which conditions a run relies on: its
training loss on the same faces with their own mask and caption, and with captions or masks swapped
between faces (a prompt the model ignores costs nothing when swapped), over t in {0.2 … 0.8} and
apart at high noise (t in {0.9, 0.95, 0.99}), where the caption decides colours. A third table
samples text-only faces under one seed with a colour word swapped through its colours (background,
hair, shirt): how often the asked colour appears, and how many distinct colours one seed gives.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

def load_truth(root: Path, ids: list[int], size: int) -> dict:
    """Each id's first caption, label map (at `size`) and true colours."""
    from face_mogle.data.dataset import read_captions
    from face_mogle.data.masks import load_label_map

    captions = read_captions(root, ids)
    colors = json.loads((root / "attributes.json").read_text())
    return {"prompts": [captions[i][0] for i in ids],
            "masks": [load_label_map(root / "mask" / f"{i}.png", size) for i in ids],
            "colors": [colors[str(i)] for i in ids]}


def score(truth: dict, images: list[np.ndarray], start: float, vae=None) -> dict:
    """Parse each image [S, S, 3] uint8 and score it against its mask and its caption's colours; face
    validity against real renders, also through `vae` (the run's, which decoded the images)."""
    from face_mogle.data.synthfaces import CAPTION_COLOR_KEYS, caption_color_hits, mean_iou, parse
    from face_mogle.eval.face_validity import TooSmallToScore, face_validity

    parsed_all = [parse(arr) for arr in images]
    try:
        validity = face_validity(images, labels=parsed_all, vae=vae)
    except TooSmallToScore:  # e.g. the 32-64 px faces of quick runs: real renders lose parts there
        validity = {"validity": float("nan"), "failures": {f"not measurable at {images[0].shape[0]} px": len(images)}}
    right = dict.fromkeys(CAPTION_COLOR_KEYS, 0)
    total = dict.fromkeys(CAPTION_COLOR_KEYS, 0)
    for arr, parsed, colors, prompt in zip(images, parsed_all, truth["colors"], truth["prompts"]):
        for k, hit in caption_color_hits(arr, parsed, colors, prompt).items():
            total[k] += 1
            right[k] += int(hit)
    n_attr = sum(total.values())
    masks = truth["masks"]
    return {
        "miou": mean_iou(parsed_all, masks),
        "pixel_accuracy": float(np.mean([(a == b).mean() for a, b in zip(parsed_all, masks)])),
        "attribute_accuracy": sum(right.values()) / n_attr if n_attr else float("nan"),
        "per_attribute": {k: right[k] / total[k] for k in CAPTION_COLOR_KEYS if total[k]},
        "face_validity": validity["validity"],
        "validity_failures": validity["failures"],
        "images": len(images),
        "seconds": time.perf_counter() - start,
    }


def step_bar(desc: str):
    """An `on_step(done, total)` callback that shows the sampling steps of one pipeline call as a bar."""
    from tqdm.auto import tqdm

    bar = None

    def on_step(done, total):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="step", leave=False)
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    return on_step


def evaluate(pipe, root: Path, ids: list[int], modes: list[str], steps: int, batch_size: int, seed: int,
             text_only: list[str] | None = None) -> dict:
    """Scores per mode; with `text_only` (sample.text_only settings), one text-only row per setting,
    named "text [setting]"."""
    truth = load_truth(root, ids, pipe.cfg.sample.size)
    prompts, masks = truth["prompts"], truth["masks"]
    seeds = [seed * 1_000_003 + i for i in ids]
    runs = [(m, None) for m in modes if m != "text" or not text_only]
    runs += [(f"text [{s}]", s) for s in (text_only or []) if "text" in modes]
    results = {}
    own = pipe.cfg.sample.text_only
    for name, setting in runs:
        start = time.perf_counter()
        pipe.cfg.sample.text_only = setting or own
        try:
            images = pipe(
                prompts if name != "mask" else [""] * len(ids),
                masks if not name.startswith("text") else [None] * len(ids),
                seeds=seeds, steps=steps, batch_size=batch_size, on_step=step_bar(f"{Path(str(pipe.run_dir)).name} {name}"),
            ).images
        finally:
            pipe.cfg.sample.text_only = own
        results[name] = score(truth, [np.asarray(im.convert("RGB")) for im in images], start, pipe.backbone.vae)
    return results


RELIANCE_T = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
HIGH_NOISE = 0.9  # the caption decides colours at high noise: reported apart, or the mean hides it


def reliance(pipe, root: Path, ids: list[int], batch_size: int, seed: int, t_grid=RELIANCE_T) -> dict:
    """Does the model use each condition? Its training loss (rectified flow, the same fixed noise and
    timesteps `t_grid`) on held-out faces with their own mask and caption, then with each face given
    another face's caption, then another face's mask. A model that ignores the prompt loses nothing
    when the captions are swapped. Faces swap within batches, split evenly so that none holds a
    single face (with one id in all, nothing can be swapped). Returns the means over the grid, and
    `by_t` (each t) and `high_noise` (t >= 0.9) where the grid has them."""
    import torch

    from face_mogle.data.batch import encode_batch
    from face_mogle.data.dataset import load_face
    from face_mogle.encoding import image_ids, text_ids
    from face_mogle.labels import NUM_MAPS
    from face_mogle.training.objective import flow_matching_loss, noisy_and_target

    size, model, device, dtype = pipe.cfg.sample.size, pipe.model, pipe.device, pipe.dtype
    truth = load_truth(root, ids, size)
    img_ids = image_ids(size, pipe.token_pixels, device=device, dtype=dtype)
    names = ("own conditions", "captions swapped", "masks swapped")
    by_t = {t: dict.fromkeys(names, 0.0) for t in t_grid}
    start = time.perf_counter()
    n_chunks = max(1, min(-(-len(ids) // batch_size), len(ids) // 2))  # every chunk holds >= 2 faces
    from tqdm.auto import tqdm

    for chunk in tqdm(np.array_split(np.arange(len(ids)), n_chunks), desc=f"{Path(str(pipe.run_dir)).name} reliance", leave=False):
        batch = {"image": torch.stack([load_face(root / "face" / f"{ids[j]}.jpg", size) for j in chunk]),
                 "labels": torch.from_numpy(np.stack([truth["masks"][j] for j in chunk])).long(),
                 "drop_maps": torch.zeros(len(chunk), NUM_MAPS, dtype=torch.bool),
                 "caption": [truth["prompts"][j] for j in chunk]}
        with torch.inference_mode():
            inp = encode_batch(batch, pipe.backbone, pipe.cfg, sample=False)  # posterior means: no draws
            x0 = inp["x0"].float()
            masks = inp["mask_latents"].to(next(model.mogle.parameters()).dtype)
            t5, pooled = inp["prompt_embeds"].to(dtype), inp["pooled_embeds"].to(dtype)
            txt_ids = text_ids(t5.shape[1], device=device, dtype=dtype)
            noise = torch.cat([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(seed * 1_000_003 + ids[j]))[None]
                               for j in chunk]).to(device)
            guidance = torch.ones(len(chunk), device=device) if pipe.backbone.transformer.config.guidance_embeds else None
            variants = {"own conditions": (masks, t5, pooled),
                        "captions swapped": (masks, t5.roll(1, 0), pooled.roll(1, 0)),
                        "masks swapped": (masks.roll(1, 0), t5, pooled)}
            for t_value in t_grid:
                t = torch.full((len(chunk),), t_value, device=device)
                x_t, target = noisy_and_target(x0, t, noise)
                for name, (m, e, p) in variants.items():
                    pred = model(x_t.to(dtype), t, m, e, p, txt_ids, img_ids, guidance)
                    by_t[t_value][name] += flow_matching_loss(pred, target).item() * len(chunk) / len(ids)
    out = {name: float(np.mean([by_t[t][name] for t in t_grid])) for name in names}
    high = [t for t in t_grid if t >= HIGH_NOISE]
    if high:
        out["high_noise"] = {name: float(np.mean([by_t[t][name] for t in high])) for name in names}
    out["by_t"] = {str(t): v for t, v in by_t.items()}
    out["images"], out["seconds"] = len(ids), time.perf_counter() - start
    return out


def recolor(caption: str, key: str, color: str) -> str | None:
    """The caption with the colour word of attribute `key` (e.g. background_color) replaced by
    `color`, or None when the caption does not name that attribute."""
    import re

    from face_mogle.training.text_encoders import word_tags

    spans = list(re.finditer(r"\w+|[^\w\s]+", caption))
    tags = word_tags([m.group().lower() for m in spans])
    for m, tag in zip(spans, tags):
        if tag.startswith(key + ":") and m.group().lower() == tag.split(":")[1]:
            return caption[: m.start()] + color + caption[m.end():]
    return None


SWAP_KEYS = ("background_color", "hair_color", "cloth_color")


def prompt_swap(pipe, root: Path, ids: list[int], steps: int, batch_size: int, seed: int, keys=SWAP_KEYS) -> dict:
    """Text-only samples under the same seed with one colour word swapped through every colour of its
    attribute (each face's first caption; the background, hair and shirt colours). Per attribute:
    accuracy (the colour read off the face is the one asked for) and the mean number of distinct
    colours one seed gives over the swaps (1 = the prompt is ignored; all = each word obeyed)."""
    from face_mogle.data.synthfaces import ATTRIBUTE_SOURCES, attributes, parse

    truth = load_truth(root, ids, pipe.cfg.sample.size)
    out = {}
    for key in keys:
        colors = list(ATTRIBUTE_SOURCES[key][1])
        jobs = [(i, c, recolor(caption, key, c)) for i, caption in zip(ids, truth["prompts"]) for c in colors]
        jobs = [j for j in jobs if j[2] is not None]
        if not jobs:
            continue
        start = time.perf_counter()
        images = pipe([j[2] for j in jobs], [None] * len(jobs), seeds=[seed * 1_000_003 + j[0] for j in jobs],
                      steps=steps, batch_size=batch_size, on_step=step_bar(f"{Path(str(pipe.run_dir)).name} swap {key}")).images
        seen: dict[int, set] = {}
        right = 0
        for (i, c, _), im in zip(jobs, images):
            arr = np.asarray(im.convert("RGB"))
            got = attributes(arr, parse(arr))[key]
            right += int(got == c)
            seen.setdefault(i, set()).add(got)
        out[key] = {"accuracy": right / len(jobs), "distinct": float(np.mean([len(v) for v in seen.values()])),
                    "colors": len(colors), "faces": len(seen), "images": len(jobs),
                    "seconds": time.perf_counter() - start}
    return out


def reference_rows(pipe, root: Path, ids: list[int], batch_size: int) -> dict:
    """Real held-out faces, degraded, scored the same way: through the run's VAE (encode → decode,
    the ceiling the autoencoder puts on any generated face), and box-downsampled 2× / 4× then
    bicubic-upsampled (how much a little blur costs under the exact parser)."""
    import torch
    from PIL import Image

    from face_mogle.data.dataset import load_face
    from face_mogle.encoding import decode_tokens, encode_images

    size, vae = pipe.cfg.sample.size, pipe.backbone.vae
    truth = load_truth(root, ids, size)
    pixels = [load_face(root / "face" / f"{i}.jpg", size) for i in ids]  # [3, S, S] in [0, 1]
    faces = [(p * 255).round().byte().permute(1, 2, 0).numpy() for p in pixels]

    def through_vae():
        out = []
        for k in range(0, len(faces), batch_size):
            x = torch.stack(pixels[k : k + batch_size])
            with torch.no_grad():
                y = decode_tokens(vae, encode_images(vae, x.to(pipe.device, next(vae.parameters()).dtype)), size,
                                  pipe.backbone.vae_scale_factor)
            out += list((y * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
        return out

    def resampled(factor):
        return [np.asarray(Image.fromarray(f).resize((size // factor,) * 2, Image.BOX).resize((size, size), Image.BICUBIC))
                for f in faces]

    rows = {}
    for name, degrade in (("VAE round trip", through_vae), ("2× down/up", lambda: resampled(2)),
                          ("4× down/up", lambda: resampled(4))):
        start = time.perf_counter()
        rows[name] = score(truth, degrade(), start, vae)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="checkpoints/face-mogle-tiny", help="run folder to evaluate")
    p.add_argument("--runs", nargs="+", help="several run folders (one table row each), e.g. ablations")
    p.add_argument("--root", default="data/synthfaces-128", help="SynthFaces data root (with attributes.json)")
    p.add_argument("--split", default="splits/test.txt", help="held-out ids: START-END or an id-list file")
    p.add_argument("--num", type=int, default=300, help="how many held-out ids (the first ones of the split)")
    p.add_argument("--modes", default="mask+text,mask,text", help="comma-separated: mask+text, mask, text")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's sample.steps)")
    p.add_argument("--cfg_scale", type=float, default=None,
                   help="classifier-free guidance for every run, also the prompt's weight unless --text_cfg_scale is given (default: each run's sample.cfg_scale)")
    p.add_argument("--text_cfg_scale", type=float, default=None,
                   help="the prompt's own guidance weight for every run (default: each run's sample.text_cfg_scale)")
    p.add_argument("--quantize", default=None, choices=["none", "int8", "fp8", "nf4"],
                   help="sample every run on a weight-only quantized base (default: each run's model.quantize)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text_only", default=None,
                   help="comma-separated sample.text_only settings for the text mode, one row each: official (blank maps "
                   "through Face-MoGLE), base (the base DiT alone) (default: each run's own setting, one row)")
    p.add_argument("--no_reliance", action="store_true", help="skip the reliance table (the training loss with swapped conditions)")
    p.add_argument("--swap_num", type=int, default=40,
                   help="faces for the text-only prompt-swap test (each sampled once per colour; 0 skips it)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", help="write all figures as JSON here")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from face_mogle.data.dataset import read_split
    from face_mogle.data.synthfaces import CAPTION_COLOR_KEYS as ATTRIBUTES
    from face_mogle.pipeline import FaceMoGLEPipeline

    root = Path(args.root)
    if not (root / "attributes.json").is_file():
        p.error(f"--root {root}: not a SynthFaces folder (no attributes.json); make it with script/make_synthfaces.py")
    ids = read_split(root, args.split)[: args.num]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in ("mask+text", "mask", "text") for m in modes):
        p.error(f"--modes: each must be mask+text, mask or text (got {args.modes})")
    text_only = [s.strip() for s in args.text_only.split(",") if s.strip()] if args.text_only else None
    if text_only and any(s not in ("official", "base") for s in text_only):
        p.error(f"--text_only: each must be official or base (got {args.text_only})")
    table, reliances, swaps, cfg_scales = {}, {}, {}, {}
    for run in args.runs or [args.run]:
        # as inference.py: a cfg scale given alone is also the prompt's weight
        text_w = args.cfg_scale if args.text_cfg_scale is None else args.text_cfg_scale
        overrides = [f"sample.{k}={v}" for k, v in (("cfg_scale", args.cfg_scale), ("text_cfg_scale", text_w))
                     if v is not None]
        pipe = FaceMoGLEPipeline.from_run(run, device=args.device, overrides=overrides, quantize=args.quantize)
        cfg_scales[run] = pipe.guidance_scales()
        if not table:
            table["real faces (reference)"] = reference_rows(pipe, root, ids, args.batch_size)
        table[run] = evaluate(pipe, root, ids, modes, args.steps, args.batch_size, args.seed, text_only)
        if not args.no_reliance:
            reliances[run] = reliance(pipe, root, ids, args.batch_size, args.seed)
        if args.swap_num > 0:
            swaps[run] = prompt_swap(pipe, root, ids[: args.swap_num], args.steps, args.batch_size, args.seed)
    print(f"\nControllability on {len(ids)} held-out SynthFaces ({root}, {args.split}); exact parser; "
          f"cfg scale (mask, prompt) {', '.join(f'{Path(r).name} {w:g}, {wt:g}' for r, (w, wt) in cfg_scales.items())}\n")
    print("| run | mode | face validity | mask mIoU | pixel acc. | attribute acc. | "
          + " | ".join(a.replace("_color", "").replace("_tone", "") for a in ATTRIBUTES) + " | commonest failure |")
    print("|---|---|---:|---:|---:|---:|" + "---:|" * len(ATTRIBUTES) + "---|")
    for run, res in table.items():
        for mode, r in res.items():
            per = " | ".join(f"{r['per_attribute'].get(a, float('nan')):.2f}" for a in ATTRIBUTES)
            fails = r["validity_failures"]
            worst = next(iter(fails), None)
            worst = f"{worst} ({fails[worst]})" if worst else "—"
            print(f"| {Path(run).name} | {mode} | {r['face_validity']:.3f} | {r['miou']:.3f} | {r['pixel_accuracy']:.3f} | "
                  f"{r['attribute_accuracy']:.3f} | {per} | {worst} |")
    if reliances:
        print("\nTraining loss on the same faces with their own conditions, and with captions or masks swapped "
              "between faces (+% = how much the model relies on that condition)\n")
        print(f"| run | t | own conditions | captions swapped | masks swapped |\n|---|---|---:|---:|---:|")
        for run, r in reliances.items():
            for label, row in (("all", r), (f">= {HIGH_NOISE}", r.get("high_noise"))):
                if row is None:
                    continue
                own = row["own conditions"]
                print(f"| {Path(run).name} | {label} | {own:.4f} | {row['captions swapped']:.4f} "
                      f"({100 * (row['captions swapped'] / own - 1):+.1f}%) | "
                      f"{row['masks swapped']:.4f} ({100 * (row['masks swapped'] / own - 1):+.1f}%) |")
    if swaps:
        print("\nText only, one seed per face, one colour word swapped through its colours: accuracy, and distinct "
              "colours per seed (1 = prompt ignored)\n")
        print("| run | attribute | faces | accuracy | distinct / colours |\n|---|---|---:|---:|---:|")
        for run, res in swaps.items():
            for key, r in res.items():
                print(f"| {Path(run).name} | {key.replace('_color', '')} | {r['faces']} | {r['accuracy']:.3f} | "
                      f"{r['distinct']:.2f} / {r['colors']} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"ids": len(ids), "root": str(root), "cfg_scale": cfg_scales, "results": table,
                                              "reliance": reliances, "prompt_swap": swaps}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
