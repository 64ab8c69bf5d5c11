"""Editing real faces on held-out SynthFaces, with exact ground truth: what changes, what is kept.

    python bench/editing.py [--run checkpoints/face-mogle-tiny] [--num 200] [--kinds hair,expression,color]
        [--inversions noise,ode] [--strengths 1.0] [--out results.json]

The held-out ids (4500, 4501, ... of the recipe's data set, re-rendered from their seed with
expressions) are dealt round the edit kinds (id 4500 hair, 4501 expression, 4502 colour, ...); each
edit has an exactly known target (the same face re-rendered with one thing changed):
- hair: the hair style (and its shape) of the next face → a new mask, the target's caption;
- expression: another expression (neutral / smiling / open mouth / closed eyes) → a new mask;
- color: the hair, background or shirt colour word of the caption changed, the mask kept; the edit
  may change that attribute's classes (`regions`).
Per edit kind, inversion and strength: preservation outside the edit area (PSNR against the input;
the input's own autoencoder round trip, the ceiling, beside it), parse mIoU inside the edit area
(against the model's own generation from noise under the same mask and prompt), the edited
attribute (colour read off the face; expression recovered by the parser; hair IoU) and time per
edit. Paste-back is scored both ways from the same edits (it only touches pixels outside the area).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

FIRST_HELD_OUT = 4500  # the test split of `make_synthfaces.py --num 5000 --seed 0` starts here
KINDS = ("hair", "expression", "color")
COLOR_KEYS = ("hair_color", "background_color", "cloth_color")


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    if not where.any():
        return float("nan")
    mse = float(((a.astype(np.float64) - b.astype(np.float64))[where] ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def area_miou(parsed: list[np.ndarray], targets: list[np.ndarray], areas: list[np.ndarray]) -> float:
    """mIoU over the pixels of the edit areas only (one confusion matrix over all edits)."""
    from face_mogle.data.synthfaces import mean_iou

    return mean_iou([p[a] for p, a in zip(parsed, areas)], [t[a] for t, a in zip(targets, areas)])


def make_edits(kind: str, ids: list[int], size: int) -> list[dict]:
    """Source and exact target of one edit per id (ids whose edit would change nothing are skipped)."""
    from face_mogle.data.synthfaces import ATTRIBUTE_SOURCES, EXPRESSIONS, HAIR_PARAMS, L, render
    from face_mogle.labels import CLASSES

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from controllability import recolor

    edits = []
    for n, i in enumerate(ids):
        src = render((0, i), size, expressions=True)
        edit = {"id": i, "source": src, "source_prompt": src.captions[0], "regions": []}
        if kind == "hair":
            donor = render((0, i + 1), size, expressions=True).params
            tgt = render((0, i), size, expressions=True, changes={k: donor[k] for k in HAIR_PARAMS})
            edit["check"] = ("hair_iou", L["hair"])
        elif kind == "expression":
            order = [e for e in EXPRESSIONS if e != src.attributes["expression"]]
            tgt = render((0, i), size, expressions=True, changes={"expression": order[n % len(order)]})
            edit["check"] = ("expression", tgt.attributes["expression"])
        else:
            key = COLOR_KEYS[n % len(COLOR_KEYS)]
            colors = [c for c in ATTRIBUTE_SOURCES[key][1] if c != src.attributes.get(key)]
            prompt = None if src.attributes.get(key) is None else recolor(src.captions[0], key, colors[n % len(colors)])
            if prompt is None:
                continue
            tgt = render((0, i), size, expressions=True, changes={key: colors[n % len(colors)]})
            edit["regions"] = [CLASSES[c] for c in ATTRIBUTE_SOURCES[key][0]]
            edit["check"] = (key, colors[n % len(colors)])
            edit["prompt"] = prompt
        edit.setdefault("prompt", tgt.captions[0])
        edit["target"] = tgt
        if kind != "color" and np.array_equal(src.labels, tgt.labels):
            continue
        edits.append(edit)
    return edits


def check_attribute(edit: dict, image: np.ndarray, parsed: np.ndarray) -> float:
    from face_mogle.data.synthfaces import attributes, expression_of

    name, value = edit["check"]
    if name == "hair_iou":
        a, b = parsed == value, edit["target"].labels == value
        return float((a & b).sum() / max(1, (a | b).sum()))
    if name == "expression":
        return float(expression_of(parsed) == value)
    return float(attributes(image, parsed)[name] == value)


def run_kind(pipe, edits, inversions, strengths, steps, batch_size, seed) -> dict:
    from face_mogle.data.synthfaces import parse
    import torch

    from face_mogle.editing import DEFAULT_MARGIN, class_ids, edit_area, paste
    from face_mogle.encoding import decode_tokens, encode_images

    size = pipe.cfg.sample.size
    faces = [e["source"].image for e in edits]
    areas = [edit_area(e["source"].labels, e["target"].labels, class_ids(e["regions"])) for e in edits]
    outside = [~a for a in areas]
    seeds = [seed * 1_000_003 + e["id"] for e in edits]
    # the ceiling: the input through the autoencoder and back
    with torch.inference_mode():
        x = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float().div(255).to(pipe.device)
        rt = decode_tokens(pipe.backbone.vae, encode_images(pipe.backbone.vae, x), size, pipe.backbone.vae_scale_factor)
    round_trip = (rt * 255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
    ceiling = float(np.mean([psnr(r, f, o) for r, f, o in zip(round_trip, faces, outside)]))

    # the model's own generation from noise under the target mask and prompt: the mIoU to match
    start = time.perf_counter()
    gen = pipe([e["prompt"] for e in edits], [e["target"].labels for e in edits], seeds=seeds, steps=steps,
               batch_size=batch_size).images
    gen = [np.asarray(im) for im in gen]
    gen_parsed = [parse(g) for g in gen]
    targets = [e["target"].labels for e in edits]
    out = {"edits": len(edits), "ceiling_psnr": ceiling,
           "generation": {"miou_in_area": area_miou(gen_parsed, targets, areas),
                          "attribute": float(np.mean([check_attribute(e, g, p) for e, g, p in zip(edits, gen, gen_parsed)])),
                          "seconds_per_image": (time.perf_counter() - start) / len(edits)},
           "edited_fraction": float(np.mean([a.mean() for a in areas])), "variants": {}}
    for inversion in inversions:
        for strength in strengths:
            start = time.perf_counter()
            res = pipe.edit(faces, targets, [e["prompt"] for e in edits], [e["source"].labels for e in edits],
                            source_prompts=[e["source_prompt"] for e in edits], seeds=seeds, strength=strength,
                            inversion=inversion, paste_back=False, steps=steps, batch_size=batch_size,
                            regions=[e["regions"] for e in edits])
            seconds = (time.perf_counter() - start) / len(edits)
            images = [np.asarray(im) for im in res.images]
            pasted = [np.asarray(paste(im, f, a, DEFAULT_MARGIN)) for im, f, a in zip(res.images, faces, areas)]
            parsed = [parse(im) for im in images]
            out["variants"][f"{inversion} {strength:g}"] = {
                "psnr_outside": float(np.mean([psnr(im, f, o) for im, f, o in zip(images, faces, outside)])),
                "psnr_outside_pasted": float(np.mean([psnr(im, f, o) for im, f, o in zip(pasted, faces, outside)])),
                "miou_in_area": area_miou(parsed, targets, areas),
                "attribute": float(np.mean([check_attribute(e, im, pa) for e, im, pa in zip(edits, images, parsed)])),
                "seconds_per_edit": seconds,
            }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="checkpoints/face-mogle-tiny", help="run folder (default: the shipped tiny model)")
    p.add_argument("--num", type=int, default=200, help="held-out faces (ids 4500, 4501, ...), dealt round the edit kinds")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated: {', '.join(KINDS)}")
    p.add_argument("--inversions", default="noise,ode", help="comma-separated: noise, ode")
    p.add_argument("--strengths", default="1.0", help="comma-separated strengths in (0, 1]")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's sample.steps)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", help="write all figures as JSON here")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    inversions = [k.strip() for k in args.inversions.split(",") if k.strip()]
    if any(k not in KINDS for k in kinds):
        p.error(f"--kinds: each must be one of {', '.join(KINDS)} (got {args.kinds})")
    if any(k not in ("noise", "ode") for k in inversions):
        p.error(f"--inversions: each must be noise or ode (got {args.inversions})")
    try:
        strengths = [float(x) for x in args.strengths.split(",") if x.strip()]
    except ValueError:
        p.error(f"--strengths: comma-separated numbers in (0, 1] (got {args.strengths})")
    if not strengths or any(not 0 < x <= 1 for x in strengths):
        p.error(f"--strengths: each must be in (0, 1] (got {args.strengths})")

    from face_mogle.pipeline import FaceMoGLEPipeline

    pipe = FaceMoGLEPipeline.from_run(args.run, device=args.device)
    ids = list(range(FIRST_HELD_OUT, FIRST_HELD_OUT + args.num))
    results = {}
    for k, kind in enumerate(kinds):
        edits = make_edits(kind, ids[k:: len(kinds)], pipe.cfg.sample.size)
        results[kind] = run_kind(pipe, edits, inversions, strengths, args.steps, args.batch_size, args.seed)
        print(f"{kind}: {json.dumps(results[kind])}", file=sys.stderr, flush=True)

    print(f"\nEditing {args.num} held-out SynthFaces (dealt round {len(kinds)} kinds) with {args.run} ({pipe.cfg.sample.size} px); "
          "exact parser; PSNR outside the edit area vs the input (ceiling: the autoencoder round trip)\n")
    print("| edit | edits | variant | PSNR out | PSNR out, pasted | ceiling | mIoU in area | own generation mIoU | "
          "attribute | own generation | s / edit |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, r in results.items():
        g = r["generation"]
        for name, v in r["variants"].items():
            print(f"| {kind} | {r['edits']} | {name} | {v['psnr_outside']:.1f} | {v['psnr_outside_pasted']:.1f} | "
                  f"{r['ceiling_psnr']:.1f} | {v['miou_in_area']:.3f} | {g['miou_in_area']:.3f} | "
                  f"{v['attribute']:.3f} | {g['attribute']:.3f} | {v['seconds_per_edit']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"run": args.run, "num": args.num, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
