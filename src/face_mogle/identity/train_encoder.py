"""Train the SynthFaces identity encoder on a SynthFaces folder with identities.

    python -m face_mogle.identity.train_encoder --root data/synthfaces-id --out checkpoints/identity/synthfaces

The folder is a SynthFaces set (face/{i}.jpg, mask/{i}.png, attributes.json) made with identities
(`script/make_synthfaces.py --identities N --per_identity K`: every attributes.json entry has an
"identity"). Crops are aligned with the set's own masks. Faces of splits/train.txt train (all faces
without split files); identities of splits/test.txt with two or more renders are held out, and their
top-1 retrieval (first render = gallery, the others = queries) is reported and saved in encoder.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m face_mogle.identity.train_encoder",
                                description="Train the SynthFaces identity encoder (model.identity.encoder: synthfaces) "
                                            "contrastively over the identities of a SynthFaces folder.")
    p.add_argument("--root", type=Path, required=True, help="SynthFaces folder whose attributes.json has an identity per face")
    p.add_argument("--out", type=Path, required=True, help="output folder: encoder.safetensors + encoder.json "
                                                           "(e.g. checkpoints/identity/synthfaces)")
    p.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    p.add_argument("--identities_per_batch", type=int, default=16, help="identities per batch (default 16)")
    p.add_argument("--renders_per_identity", type=int, default=4, help="renders of each per batch (default 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, cosine-decayed (default 1e-3)")
    p.add_argument("--crop", type=int, default=64, help="aligned crop side, a multiple of 16 (default 64)")
    p.add_argument("--dim", type=int, default=128, help="embedding size (default 128)")
    p.add_argument("--max_faces", type=int, default=None, help="read at most this many training faces (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _split_ids(root: Path, name: str):
    path = root / "splits" / f"{name}.txt"
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_identities(root: Path) -> dict[str, int]:
    """attributes.json → {face id: identity}; an IdentityError when the set has no identities."""
    from face_mogle.identity.errors import IdentityError

    path = root / "attributes.json"
    if not path.is_file():
        raise IdentityError(f"{root}: not a SynthFaces folder (no attributes.json)")
    try:
        attrs = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise IdentityError(f"{path}: not readable JSON ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(attrs, dict) or not attrs:
        raise IdentityError(f"{path}: expected a mapping of face ids to attributes")
    without = [k for k, v in attrs.items() if not (isinstance(v, dict) and isinstance(v.get("identity"), int)
                                                    and not isinstance(v.get("identity"), bool))]
    if len(without) == len(attrs):
        raise IdentityError(f"{root}: its faces have no identities (attributes.json has no \"identity\" field); make the set "
                            "with script/make_synthfaces.py --identities N --per_identity K")
    if without:
        raise IdentityError(f"{path}: face {without[0]} (and {len(without) - 1} more) has no integer \"identity\"")
    return {k: v["identity"] for k, v in attrs.items()}


def read_faces(root: Path, ids, identities: dict[str, int], progress: bool = True):
    """Faces, masks and identities of `ids` → FaceSet (one-line errors for bad files)."""
    from tqdm import tqdm

    from face_mogle.data.masks import MaskError, load_label_map
    from face_mogle.identity.errors import IdentityError
    from face_mogle.identity.synthfaces_encoder import FaceSet
    from face_mogle.image_files import ImageFileError, read_rgb

    images, labels, idents, names = [], [], [], []
    for i in tqdm(ids, desc="reading faces", unit="img", disable=not progress):
        if i not in identities:
            raise IdentityError(f"{root}: face {i} of the split is not in attributes.json")
        face = root / "face" / f"{i}.jpg"
        try:
            img = read_rgb(face)
            lab = load_label_map(root / "mask" / f"{i}.png", size=(img.height, img.width))
        except (ImageFileError, MaskError) as err:
            raise IdentityError(" ".join(str(err).split())) from None
        images.append(img)
        labels.append(lab)
        idents.append(identities[i])
        names.append(str(face))
    return FaceSet(images, labels, np.asarray(idents, dtype=np.int64), names)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.identities_per_batch < 2 or args.renders_per_identity < 2:
        parser.error("--identities_per_batch and --renders_per_identity must be >= 2 (contrast needs both)")
    if args.crop < 16 or args.crop % 16:
        parser.error(f"--crop must be a positive multiple of 16, got {args.crop}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")

    # Imported here so that --help and argument errors stay instant.
    from face_mogle.identity.errors import IdentityError
    from face_mogle.identity.synthfaces_encoder import EncoderConfig, TrainSettings, identity_groups, retrieval_top1, train_encoder

    try:
        identities = read_identities(args.root)
        train_ids = _split_ids(args.root, "train") or sorted(identities, key=lambda k: int(k) if k.isdigit() else k)
        test_ids = _split_ids(args.root, "test") or []
        if args.max_faces is not None:
            train_ids = train_ids[: args.max_faces]
        faces = read_faces(args.root, train_ids, identities, not args.quiet)
        cfg = EncoderConfig(crop=args.crop, dim=args.dim)
        settings = TrainSettings(steps=args.steps, identities_per_batch=args.identities_per_batch,
                                 renders_per_identity=args.renders_per_identity, lr=args.lr, seed=args.seed)
        encoder, losses = train_encoder(faces, cfg, settings, progress=not args.quiet)
        info = {"root": str(args.root)}
        val = [i for i in test_ids if i in identities]
        held = {k: v for k, v in identities.items() if k in set(val)}
        groups = identity_groups(np.asarray(list(held.values()))) if held else {}
        if len(groups) >= 2:
            keep = [i for i in val if identities[i] in groups]
            test_faces = read_faces(args.root, keep, identities, not args.quiet)
            emb = encoder.encode(*zip(*[_crop(encoder, img, lab, name) for img, lab, name in
                                        zip(test_faces.images, test_faces.labels, test_faces.names)]))
            info["heldout_identities"] = len(groups)
            info["heldout_top1"] = retrieval_top1(emb, test_faces.identities)
        encoder.save(args.out, info)
    except IdentityError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    line = f"trained {args.steps} steps on {len(faces.images)} faces of {encoder.info['train_identities']} identities " \
           f"(final loss {encoder.info['final_loss']:.3f})"
    if "heldout_top1" in info:
        line += f"; held-out top-1 retrieval {info['heldout_top1']:.3f} among {info['heldout_identities']} identities"
    print(f"{line}; saved to {args.out}")
    return 0


def _crop(encoder, img, lab, name):
    from face_mogle.identity.align import aligned_crop

    return aligned_crop(img, lab, encoder.crop_size, name)


if __name__ == "__main__":
    sys.exit(main())
