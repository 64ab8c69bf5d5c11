"""Make a SynthFaces data set: procedural faces in the MM-CelebA-HQ layout.

    python script/make_synthfaces.py --out data/synthfaces --num 2000 --size 256 --seed 0
    python script/make_synthfaces.py --out data/synthfaces-expr --num 2000 --expressions
    python script/make_synthfaces.py --out data/synthfaces-id --identities 1000 --per_identity 4 --expressions
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Write a SynthFaces data set (DESIGN section 6) in the MM-CelebA-HQ layout: "
            "OUT/face/{i}.jpg, OUT/mask/{i}.png (labels 0..18), OUT/text/{i}.txt, OUT/text.json, "
            "OUT/attributes.json and OUT/splits/{train,test}.txt. Sample i depends only on "
            "(seed, i): re-running, or making a larger set with the same seed, gives identical files."
        ),
        epilog="A folder that already holds a data set is refused unless --overwrite (then files with the same "
        "names are replaced atomically; others are left alone).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--num", type=int, default=None,
                        help="number of images (default: 1000; with --identities: identities * per_identity)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels, >= 64 (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (default: 0)")
    parser.add_argument(
        "--test_fraction", type=float, default=0.1,
        help="share of ids, taken from the end, in the test split; in [0, 1) (default: 0.1)",
    )
    parser.add_argument(
        "--expressions", action="store_true",
        help="add facial expressions (neutral, smiling, open mouth, closed eyes), named in the captions and in "
        "attributes.json; every other choice of a face stays as without this flag",
    )
    parser.add_argument(
        "--identities", type=int, default=None,
        help="draw this many people (face geometry, skin tone, eye colour, gender) and render each "
        "--per_identity times with everything else drawn afresh; attributes.json records each image's "
        "\"identity\", and the test split holds whole identities (the last ones)",
    )
    parser.add_argument("--per_identity", type=int, default=None, help="renders of each identity (with --identities)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder that already holds a data set")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.identities is None) != (args.per_identity is None):
        parser.error("--identities and --per_identity go together: give both or neither")
    if args.identities is not None:
        if args.identities <= 0 or args.per_identity <= 0:
            parser.error(f"--identities and --per_identity must be positive, got {args.identities} and "
                         f"{args.per_identity}")
        total = args.identities * args.per_identity
        if args.num is not None and args.num != total:
            parser.error(f"--num {args.num} conflicts with --identities {args.identities} x --per_identity "
                         f"{args.per_identity} = {total}: leave --num out")
        args.num = total
    elif args.num is None:
        args.num = 1000
    if args.num <= 0:
        parser.error(f"--num must be positive, got {args.num}")
    if args.size < 64:
        parser.error(f"--size must be at least 64, got {args.size}")
    if not 0.0 <= args.test_fraction < 1.0:
        parser.error(f"--test_fraction must be in [0, 1), got {args.test_fraction}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")
    held = [n for n in ("text.json", "face", "mask", "text") if (args.out / n).exists()] if args.out.is_dir() else []
    if held and not args.overwrite:
        parser.error(f"--out {args.out} already holds a data set ({', '.join(held)}): choose a new folder, "
                     "or pass --overwrite to replace its files")

    # Imported here so that --help and argument errors stay instant.
    from face_mogle.data.synthfaces import write_dataset

    out = write_dataset(args.out, args.num, args.size, args.seed, args.test_fraction, progress=not args.quiet,
                        expressions=args.expressions, identities=args.identities, per_identity=args.per_identity)
    n_test = int(round(args.num * args.test_fraction))
    kind = "SynthFaces images with expressions" if args.expressions else "SynthFaces images"
    if args.identities is not None:
        n_test = int(round(args.identities * args.test_fraction)) * args.per_identity
        kind += f" of {args.identities} identities x {args.per_identity}"
    print(f"wrote {args.num} {kind} ({args.size}x{args.size}, seed {args.seed}) to {out}: "
          f"{args.num - n_test} train, {n_test} test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
