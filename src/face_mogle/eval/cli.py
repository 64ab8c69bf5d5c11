"""`python -m face_mogle.eval`: pair generated faces with real ones, run the requested metrics from
local weights, print a table, write JSON (and optionally an HTML report).

Bad input of any kind ends in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path

from face_mogle.eval.errors import EvalError, one_line
from face_mogle.eval.pairing import Pairing, image_folder, pair, read_caption
from face_mogle.eval.weights import (CLIP_B16, CLIP_L14_336, DEFAULT_WEIGHTS_DIR, DINO_B8, FACE_PARSER,
                                     IMAGE_REWARD, INCEPTION, default_path, file_identity, inception_file,
                                     require_hf_folder)
from face_mogle.outputs import OutputError, check_outputs

ALL_METRICS = ("fid", "kid", "clip", "cmmd", "dino", "ir", "miou")
DEFAULT_METRICS = "fid,kid,clip,cmmd,dino,ir"  # the published set; miou needs masks
NEEDS = {"fid": "real", "kid": "real", "cmmd": "real", "dino": "real", "clip": "text", "ir": "text",
         "miou": "masks"}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show "(default: X)" only where there is a default worth showing."""

    def _get_help_string(self, action):
        if action.default is None or action.default is argparse.SUPPRESS or action.required:
            return action.help
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_positive, _non_negative = _int_at_least(1), _int_at_least(0)


def _metric_list(text: str) -> list[str]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    if names == ["all"]:
        return list(ALL_METRICS)
    unknown = [m for m in names if m not in ALL_METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {','.join(ALL_METRICS)} or 'all'")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m face_mogle.eval",
        description="Evaluate generated faces against real ones. Files pair by id (file name without "
                    "extension): FAKE/27000.jpg <-> REAL/27000.jpg, TEXT/27000.txt, MASKS/27000.png. "
                    "All model weights are read from local folders; nothing is downloaded.",
        formatter_class=_HelpFormatter)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--fake", required=True, metavar="DIR",
                    help="generated images ({id}.jpg/.png); a folder with a face/ subfolder means that subfolder")
    io.add_argument("--real", metavar="DIR",
                    help="real images, same ids (needed by fid, kid, cmmd, dino); face/ subfolder used if present")
    io.add_argument("--text", metavar="DIR",
                    help="captions {id}.txt, first line used (clip, ir); default: text/ beside --fake's face/ "
                         "folder, else beside --real's")
    io.add_argument("--masks", metavar="DIR",
                    help="label maps {id}.png, values 0..18 (miou); default: mask/ beside --real's face/ folder")
    io.add_argument("--metrics", type=_metric_list, default=DEFAULT_METRICS, metavar="LIST",
                    help=f"comma-separated subset of {','.join(ALL_METRICS)}, or 'all'")
    io.add_argument("--out", required=True, metavar="FILE.json", help="where to write the results (JSON)")
    io.add_argument("--report", metavar="FILE.html",
                    help="also write a self-contained HTML page: metric table + mask | real | generated grid")
    io.add_argument("--report_samples", type=_non_negative, default=8, metavar="N",
                    help="how many ids the HTML grid shows (spread evenly over the ids)")
    io.add_argument("--limit", type=_positive, metavar="N", help="evaluate only the first N paired ids")

    w = p.add_argument_group("model weights (local folders; nothing downloads)")
    w.add_argument("--weights_dir", default=DEFAULT_WEIGHTS_DIR, metavar="DIR",
                   help="folder holding one subfolder per metric model (the defaults below)")
    w.add_argument("--inception", metavar="DIR", help=f"folder with clean-fid's inception-2015-12-05.pt "
                   f"(or pt_inception-2015-12-05-6726825d.pth for legacy_pytorch) [WEIGHTS_DIR/{INCEPTION.folder}]")
    w.add_argument("--clip_model", metavar="DIR", help=f"CLIP ViT-B/16 for clip [WEIGHTS_DIR/{CLIP_B16.folder}]")
    w.add_argument("--cmmd_model", metavar="DIR",
                   help=f"CLIP ViT-L/14-336 for cmmd [WEIGHTS_DIR/{CLIP_L14_336.folder}]")
    w.add_argument("--dino_model", metavar="DIR", help=f"DINO ViT-B/8 for dino [WEIGHTS_DIR/{DINO_B8.folder}]")
    w.add_argument("--ir_model", metavar="DIR", help="ImageReward.pt, med_config.json, bert-base-uncased/ "
                   f"for ir [WEIGHTS_DIR/{IMAGE_REWARD.folder}]")
    w.add_argument("--parser_model", metavar="DIR",
                   help=f"SegFormer face parser for miou [WEIGHTS_DIR/{FACE_PARSER.folder}]")

    s = p.add_argument_group("settings")
    s.add_argument("--parser", choices=("segformer", "synthfaces"), default="segformer",
                   help="how miou parses generated faces: a SegFormer face parser, or SynthFaces' exact "
                        "colour parser (for models trained on SynthFaces)")
    s.add_argument("--fid_mode", choices=("clean", "legacy_pytorch"), default="clean",
                   help="clean-fid mode: 'clean' (PIL bicubic resize, TorchScript Inception) or "
                        "'legacy_pytorch' (pytorch-fid's bilinear resize and network)")
    s.add_argument("--dino_preprocess", choices=("official", "imagenet"), default="official",
                   help="'official': [0,1] images at --size as the published eval_mask.py feeds them; "
                        "'imagenet': resize to the model's input size + ImageNet normalisation")
    s.add_argument("--size", type=_non_negative, default=512, metavar="N",
                   help="bring every image (and mask, nearest) to N x N before the metrics; 0 keeps file sizes")
    s.add_argument("--device", default=None, metavar="cpu|cuda", help="torch device [cuda if available, else cpu]")
    s.add_argument("--batch_size", type=_positive, default=32, metavar="N", help="images per forward pass")
    s.add_argument("--num_workers", type=_non_negative, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="image-loading worker processes (0 = load in the main process)")
    s.add_argument("--seed", type=int, default=0, help="seed of KID's random subsets")
    return p


def _root(folder: Path) -> Path:
    """The data-set root of an image folder: outputs/run for outputs/run/face."""
    return folder.parent if folder.name == "face" else folder


def _default_folder(name: str, *roots: Path | None) -> Path | None:
    for root in roots:
        if root is not None and (root / name).is_dir():
            return root / name
    return None


def resolve_inputs(args) -> tuple[Pairing, list[str]]:
    """Fill in default --text/--masks, check every requested metric has its inputs, and pair.
    Returns the pairing and the lines that describe it."""
    notes = []
    fake_root = _root(image_folder(args.fake, "--fake"))
    real_root = _root(image_folder(args.real, "--real")) if args.real else None
    needed = {NEEDS[m] for m in args.metrics}
    if "text" in needed and args.text is None:
        args.text = _default_folder("text", fake_root, real_root)
        if args.text is not None:
            notes.append(f"captions from {args.text}")
    if "masks" in needed and args.masks is None:
        args.masks = _default_folder("mask", real_root, fake_root)
        if args.masks is not None:
            notes.append(f"masks from {args.masks}")
    for source, flag in (("real", "--real"), ("text", "--text"), ("masks", "--masks")):
        users = [m for m in args.metrics if NEEDS[m] == source]
        if users and getattr(args, source) is None:
            raise EvalError(f"{','.join(users)} need{'s' if len(users) == 1 else ''} {flag} DIR")
    pairing = pair(args.fake, real=args.real if "real" in needed else None,
                   text=args.text if "text" in needed else None,
                   masks=args.masks if "masks" in needed else None)
    lines = pairing.summary_lines() + notes
    if args.limit and args.limit < len(pairing.ids):
        pairing.ids = pairing.ids[:args.limit]
        lines.append(f"--limit: evaluating the first {args.limit} paired ids")
    return pairing, lines


def model_paths(args) -> dict[str, Path]:
    wd = args.weights_dir
    pick = lambda flag, spec: Path(flag) if flag else default_path(wd, spec)  # noqa: E731
    return {"inception": pick(args.inception, INCEPTION), "clip": pick(args.clip_model, CLIP_B16),
            "cmmd": pick(args.cmmd_model, CLIP_L14_336), "dino": pick(args.dino_model, DINO_B8),
            "ir": pick(args.ir_model, IMAGE_REWARD), "miou": pick(args.parser_model, FACE_PARSER)}


def check_weights(args, paths: dict[str, Path]) -> None:
    """Fail before any work if a requested model is missing (ir is optional and only skipped)."""
    problems = []
    checks = []
    if {"fid", "kid"} & set(args.metrics):
        checks.append(lambda: inception_file(paths["inception"], args.fid_mode))
    for key, spec in (("clip", CLIP_B16), ("cmmd", CLIP_L14_336), ("dino", DINO_B8)):
        if key in args.metrics:
            checks.append(lambda spec=spec, key=key: require_hf_folder(spec, paths[key]))
    if "miou" in args.metrics and args.parser == "segformer":
        checks.append(lambda: require_hf_folder(FACE_PARSER, paths["miou"]))
    for check in checks:
        try:
            check()
        except EvalError as e:
            problems.append(str(e))
    if problems:
        raise EvalError(" | ".join(problems))


def resolve_device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EvalError(f"--device {name}: CUDA is not available here; use --device cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise EvalError(f"--device {name}: use cpu, cuda or cuda:N")
    return name


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "torchvision", "transformers", "clean-fid", "face-mogle", "image-reward"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _check_writable(path: Path) -> None:
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".probe-", suffix=".tmp"):
            pass
    except OSError as err:
        raise EvalError(f"cannot write {path}: {err.strerror or err}") from None


def evaluate(args) -> dict:
    """Run the requested metrics; the JSON is rewritten after each, so finished ones survive a crash."""
    out = Path(args.out)
    if out.is_dir():
        raise EvalError(f"--out {out} is a directory; give a file name such as {out / 'eval.json'}")
    if args.report and Path(args.report).is_dir():
        raise EvalError(f"--report {args.report} is a directory; give a file name ending in .html")
    for target in [out] + ([Path(args.report)] if args.report else []):
        _check_writable(target)  # before minutes of metrics, not after the first one
    pairing, summary = resolve_inputs(args)
    try:  # the JSON is rewritten after each metric: it must not land on an image or caption read here
        targets = {"--out": out, **({"--report": Path(args.report)} if args.report else {})}
        check_outputs(targets, {f"--{name}": files.values() for name, files in pairing.sources.items()})
    except OutputError as err:
        raise EvalError(str(err)) from None
    paths = model_paths(args)
    check_weights(args, paths)
    device = resolve_device(args.device)
    size = args.size or None
    from face_mogle.eval.report import format_table, sample_ids, write_html, write_json  # imports torch

    for line in summary:
        print(line, file=sys.stderr)
    captions = {i: read_caption(pairing.sources["text"][i]) for i in pairing.ids} if "text" in pairing.sources else {}

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(device=device, model_paths={k: str(v) for k, v in paths.items()}, versions=_versions())
    results = {"status": "running", "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
               "metrics": {}, "pairing": pairing.to_json(), "pairing_summary": summary,
               "settings": settings}
    common = dict(device=device, batch_size=args.batch_size, size=size, num_workers=args.num_workers)
    fake = pairing.paths("fake")
    real = pairing.paths("real") if "real" in pairing.sources else None
    texts = [captions[i] for i in pairing.ids] if captions else None

    def record(key: str, value: dict) -> None:
        results["metrics"][key] = value
        write_json(out, results)

    if {"fid", "kid"} & set(args.metrics):
        from face_mogle.eval import fid

        model = fid.load_inception(paths["inception"], args.fid_mode, device)
        ident = file_identity(inception_file(paths["inception"], args.fid_mode)[1])
        kw = dict(mode=args.fid_mode, device=device, batch_size=args.batch_size, size=size,
                  num_workers=args.num_workers)
        real_f = fid.inception_features(real, model, desc="Inception real", **kw)
        fake_f = fid.inception_features(fake, model, desc="Inception fake", **kw)
        base = {"count": len(fake), "mode": args.fid_mode, "model": ident}
        if "fid" in args.metrics:
            note = {"note": "fewer than 2048 images: the covariances are singular and FID is biased upward; "
                            "compare only at equal counts"} if len(fake) <= 2048 else {}
            record("fid", {"value": fid.fid_from_features(real_f, fake_f), **base, **note,
                           "formula": fid.fid_formula(len(fake), real_f.shape[1])})
        if "kid" in args.metrics:
            kid = fid.kid_from_features(real_f, fake_f, seed=args.seed)
            record("kid", {"value": kid * 1000, "raw": kid, "seed": args.seed, **base})
    if "clip" in args.metrics:
        from face_mogle.eval import clip_score

        record("clip", clip_score.run(fake, texts, paths["clip"], **common))
    if "cmmd" in args.metrics:
        from face_mogle.eval import cmmd

        record("cmmd", cmmd.run(real, fake, paths["cmmd"], **common))
    if "dino" in args.metrics:
        from face_mogle.eval import dino

        record("dino", dino.run(real, fake, paths["dino"], preprocess=args.dino_preprocess, **common))
    if "ir" in args.metrics:
        from face_mogle.eval import image_reward

        record("ir", image_reward.run(fake, texts, paths["ir"], **common))
    if "miou" in args.metrics:
        from face_mogle.eval import miou

        record("miou", miou.run(fake, pairing.paths("masks"), args.parser, paths["miou"], **common))

    # Keep the table in the order the user asked for.
    results["metrics"] = {k: results["metrics"][k] for k in args.metrics if k in results["metrics"]}
    results["status"] = "complete"
    write_json(out, results)
    print(format_table(results["metrics"]))
    print(f"wrote {out}", file=sys.stderr)
    if args.report:
        shown = sample_ids(pairing.ids, args.report_samples)
        write_html(args.report, results, pairing.sources, shown, captions)
        print(f"wrote {args.report}", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Every model comes from a local folder; make sure no library quietly reaches for the hub either.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        evaluate(args)
        return 0
    except EvalError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or an environment failure (e.g. GPU out of memory): still one line
        if os.environ.get("FACE_MOGLE_DEBUG"):
            raise
        hint = "; lower --batch_size" if "out of memory" in str(e).lower() else ""
        print(f"error: {type(e).__name__}: {one_line(e)}{hint} (set FACE_MOGLE_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1
