"""Identity on held-out SynthFaces people: is a face generated from a reference the same person?

    python bench/identity.py [--run checkpoints/face-mogle-tiny] [--root data/synthfaces-id-128] [--num 200]
        [--modes text+identity,mask+text+identity,text,reference] [--steps N] [--batch_size 16] [--seed 0]
        [--out results.json]

The data is a SynthFaces set with identities (`script/make_synthfaces.py --identities N --per_identity K`);
its test split holds whole identities. For each of the first --num held-out identities the reference
is its first render (lowest id) and the target is its second: the same person with its own mask and
first caption (another expression, hairstyle, clothes, background). Modes:
- text+identity: the target's caption, no mask, the reference's identity;
- mask+text+identity: the target's mask and caption, and the reference's identity;
- text: the target's caption alone, no identity (the chance baseline; runs on any run);
- reference: no sampling, the target's own render (what a perfect generator would draw: the ceiling of
  every figure below under the judge and the parser; runs on any run).
Figures per mode:
- top-1: retrieval of the right identity among the --num by the identity judge (eval/identity_judge;
  gallery: the judge's features of the references; a query in which it finds no face is a miss;
  chance 1/--num); judged: the share of images in which it finds a face;
- judge distance: mean identity distance to the own reference (over the judged images);
- encoder cosine: cosine to the own reference by the run's own identity encoder (the one that made the
  embedding; reported apart, since the judge is independent of it), over images in which it finds a face;
- prompt colour: over the targets whose caption names a hair, shirt or background colour other than the
  reference's, the share of those colours drawn (the copy-paste check: the reference's colour coming
  back is a miss);
- expression: the expression read back from the image (`expression_of`) is the target's;
- face validity (eval/face_validity): as bench/controllability.py scores it (ranges from real renders
  and the same renders through the run's VAE); for data with expressions, ranges from renders with
  expressions and without the VAE (closed lids do not survive it).
Images are judged at the run's sample size (references and target renders resized to it). Seeds are
per target id, the same in every mode. A run trained without identity refuses the identity modes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODES = ("text+identity", "mask+text+identity", "text", "reference")
IDENTITY_MODES = ("text+identity", "mask+text+identity")
# the colours the copy-paste check reads: the ones an identity reference would carry along
COPY_KEYS = ("hair_color", "cloth_color", "background_color")


def _controllability():
    spec = importlib.util.spec_from_file_location("controllability", HERE / "controllability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BenchError(ValueError):
    """Bad data or arguments: one line."""


def held_out_people(root: Path, split: str, num: int) -> list[tuple[int, int, int]]:
    """(identity, reference id, target id) for the first `num` identities of the split that have at
    least two renders, in order of their first id."""
    from face_mogle.data.dataset import read_split

    attrs = json.loads((root / "attributes.json").read_text())
    ids = read_split(root, split)
    missing = [i for i in ids if "identity" not in attrs.get(str(i), {})]
    if missing:
        raise BenchError(f"{root / 'attributes.json'}: id {missing[0]} has no \"identity\" entry; make the set with "
                         "script/make_synthfaces.py --identities N --per_identity K")
    renders: dict[int, list[int]] = {}
    for i in ids:
        renders.setdefault(int(attrs[str(i)]["identity"]), []).append(i)
    people = sorted(((sorted(r)[0], sorted(r)[1], j) for j, r in renders.items() if len(r) >= 2))
    if len(people) < 2:
        raise BenchError(f"{root} split {split}: {len(people)} identities with two renders or more; retrieval needs >= 2")
    return [(j, ref, tgt) for ref, tgt, j in people[:num]]


def check_judge(size: int) -> None:
    """The judge measures one person's spread on renders at `size`; below some size (64 px) their
    eyes or nose vanish in the parse and it cannot: a BenchError, not a traceback."""
    from face_mogle.eval.identity_judge import NoFace, reference_noise

    try:
        reference_noise(size)
    except NoFace:
        raise BenchError(f"the identity judge cannot measure faces at {size} px (its reference renders lose eyes or "
                         "nose there): use a run that samples at 96 px or more") from None


def caption_colors(caption: str) -> dict[str, str]:
    """{attribute: colour} for the colours a caption names (word tags of the text-encoder recipe)."""
    import re

    from face_mogle.training.text_encoders import word_tags

    words = [m.group().lower() for m in re.finditer(r"\w+|[^\w\s]+", caption)]
    return dict(tag.split(":") for tag in word_tags(words) if ":" in tag)


def embed_each(encoder, images, labels=None) -> list:
    """The encoder's embedding [D] of each image (with its parse where given), or None where it finds
    no face."""
    from face_mogle.identity.errors import IdentityError

    try:
        return list(encoder.embed(images, labels).float())
    except IdentityError:  # some image has no face: one at a time, to keep the others
        out = []
        for k, im in enumerate(images):
            try:
                out.append(encoder.embed([im], None if labels is None else [labels[k]]).float()[0])
            except IdentityError:
                out.append(None)
        return out


def score(images: list[np.ndarray], people: dict, gallery: list, encoder, ref_embeds: list, vae, expressions: bool,
          start: float) -> dict:
    """Every figure of one mode (module docstring) for images [S, S, 3] uint8, one per person, in order."""
    from face_mogle.data.synthfaces import caption_color_hits, expression_of, parse
    from face_mogle.eval.face_validity import TooSmallToScore, face_validity
    from face_mogle.eval.identity_judge import identity_distance, identity_features, retrieval_top1

    parsed = [parse(im) for im in images]
    feats = [identity_features(im, lab) for im, lab in zip(images, parsed)]
    n = len(images)
    top1 = retrieval_top1(feats, gallery, np.arange(n))
    dists = [identity_distance(f, g) for f, g in zip(feats, gallery) if f is not None and g is not None]
    dists = [d for d in dists if math.isfinite(d)]

    cosine = float("nan")
    cos_faces = float("nan")
    if encoder is not None:
        # the encoder's own parser is the exact one here: reuse its parse; other parsers read themselves
        embeds = embed_each(encoder, images, parsed if encoder.parser_name == "synthfaces" else None)
        cos = [float(e @ r) for e, r in zip(embeds, ref_embeds) if e is not None and r is not None]
        cosine = float(np.mean(cos)) if cos else float("nan")
        cos_faces = len(cos) / n

    drawn, cases = 0, 0
    per_key = {k: [0, 0] for k in COPY_KEYS}
    expr_right, expr_cases = 0, 0
    for im, lab, caption, ref_attr, tgt_attr in zip(images, parsed, people["captions"], people["ref_attrs"],
                                                    people["tgt_attrs"]):
        named = caption_colors(caption)
        differ = {k: named[k] for k in COPY_KEYS if k in named and named[k] != ref_attr.get(k)}
        if differ:
            for k, hit in caption_color_hits(im, lab, differ, caption).items():
                per_key[k][0] += int(hit)
                per_key[k][1] += 1
                drawn += int(hit)
                cases += 1
        if tgt_attr.get("expression") is not None:
            expr_cases += 1
            expr_right += int(expression_of(lab) == tgt_attr["expression"])
    try:
        # data with expressions: ranges from expressive renders, without the VAE (closed lids, 1 px, do
        # not survive it: 34 of 1000 such renders at 128 px lose a part, too many to measure against)
        validity = face_validity(images, labels=parsed, vae=None if expressions else vae, expressions=expressions)
    except TooSmallToScore:  # small quick-run faces: real renders lose parts there
        validity = {"validity": float("nan"), "failures": {f"not measurable at {images[0].shape[0]} px": n}}
    return {
        "top1": top1,
        "judged": sum(f is not None for f in feats) / n,
        "judge_distance": float(np.mean(dists)) if dists else float("nan"),
        "encoder_cosine": cosine,
        "encoder_faces": cos_faces,
        "prompt_color": drawn / cases if cases else float("nan"),
        "prompt_color_cases": cases,
        "prompt_color_per_key": {k: h / c for k, (h, c) in per_key.items() if c},
        "expression": expr_right / expr_cases if expr_cases else float("nan"),
        "expression_cases": expr_cases,
        "face_validity": validity["validity"],
        "validity_failures": validity["failures"],
        "images": n,
        "seconds": time.perf_counter() - start,
    }


def evaluate(pipe, root: Path, people_list: list, modes: list[str], steps, batch_size: int, seed: int) -> dict:
    """{mode: figures} for the (identity, reference id, target id) triples."""
    from face_mogle.data.dataset import load_face
    from face_mogle.eval.identity_judge import identity_features

    ctrl = _controllability()
    size = pipe.cfg.sample.size
    check_judge(size)
    refs = [r for _, r, _ in people_list]
    tgts = [t for _, _, t in people_list]
    truth = ctrl.load_truth(root, tgts, size)  # the target's first caption, mask at `size`, colours
    attrs = json.loads((root / "attributes.json").read_text())
    people = {"captions": truth["prompts"], "ref_attrs": [attrs[str(i)] for i in refs],
              "tgt_attrs": [attrs[str(i)] for i in tgts]}
    expressions = any(a.get("expression") is not None for a in people["tgt_attrs"])

    def at_size(i):
        return (load_face(root / "face" / f"{i}.jpg", size) * 255).round().byte().permute(1, 2, 0).numpy()

    ref_images = [at_size(i) for i in refs]
    gallery = [identity_features(im) for im in ref_images]
    encoder = pipe.identity_encoder() if pipe.model.identity is not None else None
    ref_files = [root / "face" / f"{i}.jpg" for i in refs]
    # the embeddings the pipeline itself would take from the reference files
    ref_embeds = embed_each(encoder, ref_files) if encoder is not None else [None] * len(refs)
    if any(m in IDENTITY_MODES for m in modes):
        bad = next((f for f, e in zip(ref_files, ref_embeds) if e is None), None)
        if bad is not None:
            raise BenchError(f"reference {bad}: the run's identity encoder finds no face in it")
    seeds = [seed * 1_000_003 + i for i in tgts]
    vae = pipe.backbone.vae
    out = {}
    for mode in modes:
        start = time.perf_counter()
        if mode == "reference":
            images = [at_size(i) for i in tgts]
        else:
            masks = truth["masks"] if mode.startswith("mask") else [None] * len(tgts)
            idents = ref_embeds if mode in IDENTITY_MODES else None
            res = pipe(truth["prompts"], masks, seeds=seeds, steps=steps, batch_size=batch_size, identities=idents,
                       on_step=ctrl.step_bar(f"{Path(str(pipe.run_dir)).name} {mode}"))
            images = [np.asarray(im.convert("RGB")) for im in res.images]
        out[mode] = score(images, people, gallery, encoder, ref_embeds, vae, expressions, start)
    return out


def table(results: dict, n: int) -> str:
    def f(x, fmt=".3f"):
        return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    lines = [f"| mode | top-1 (chance {1 / n:.3f}) | judged | judge distance | encoder cosine | prompt colour (cases) | "
             "expression | face validity | commonest failure |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for mode, r in results.items():
        fails = r["validity_failures"]
        worst = next(iter(fails), None)
        lines.append(f"| {mode} | {f(r['top1'])} | {f(r['judged'])} | {f(r['judge_distance'], '.2f')} | "
                     f"{f(r['encoder_cosine'])} | {f(r['prompt_color'])} ({r['prompt_color_cases']}) | "
                     f"{f(r['expression'])} | {f(r['face_validity'])} | "
                     f"{f'{worst} ({fails[worst]})' if worst else '—'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="checkpoints/face-mogle-tiny", help="run folder to evaluate")
    p.add_argument("--root", default="data/synthfaces-id-128", help="SynthFaces data root made with --identities")
    p.add_argument("--split", default="splits/test.txt", help="held-out ids: START-END or an id-list file")
    p.add_argument("--num", type=int, default=200, help="how many held-out identities (the first ones of the split)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's sample.steps)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", help="write all figures as JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from face_mogle.pipeline import FaceMoGLEPipeline

    root = Path(args.root)
    if not (root / "attributes.json").is_file():
        p.error(f"--root {root}: not a SynthFaces folder (no attributes.json); make it with "
                "script/make_synthfaces.py --identities N --per_identity K")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--modes: each must be one of {', '.join(MODES)} (got {args.modes!r})")
    if args.num < 2:
        p.error(f"--num must be >= 2 (retrieval among one identity says nothing), got {args.num}")
    try:
        people_list = held_out_people(root, args.split, args.num)
    except (BenchError, ValueError) as err:  # DataError (a bad split) is a ValueError
        raise SystemExit(f"error: {err}") from None
    pipe = FaceMoGLEPipeline.from_run(args.run, device=args.device)
    wanted = [m for m in modes if m in IDENTITY_MODES]
    if wanted and pipe.model.identity is None:
        raise SystemExit(f"error: --run {args.run} has no identity (trained without it: model.identity.encoder is null): "
                         f"modes {', '.join(wanted)} need a run with an identity stage; --modes text,reference runs on any run")
    from face_mogle.identity.errors import IdentityError

    try:
        results = evaluate(pipe, root, people_list, modes, args.steps, args.batch_size, args.seed)
    except (BenchError, IdentityError) as err:  # e.g. the run's encoder weights missing: one line
        raise SystemExit(f"error: {err}") from None
    n = len(people_list)
    print(f"\nIdentity on {n} held-out SynthFaces identities ({root}, {args.split}); run {args.run}; "
          f"judge: eval/identity_judge; encoder cosine: the run's {pipe.cfg.model.identity.encoder or 'none'} encoder\n")
    print(table(results, n))
    if args.out:
        Path(args.out).write_text(json.dumps({
            "run": str(args.run), "root": str(root), "split": args.split, "identities": n, "seed": args.seed,
            "steps": args.steps or pipe.cfg.sample.steps, "people": [{"identity": j, "reference": r, "target": t} for j, r, t in people_list],
            "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
