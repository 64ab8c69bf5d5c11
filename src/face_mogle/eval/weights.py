"""Where each evaluation model lives on disk, how to say it is missing, and how to name what was used.

Nothing here downloads: every model is read from a local folder (default `checkpoints/eval/<folder>`),
and a missing one is a one-line EvalError naming the folder and what to put there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from face_mogle.eval.errors import EvalError, one_line

DEFAULT_WEIGHTS_DIR = "checkpoints/eval"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class ModelSpec:
    title: str   # how messages name the model
    folder: str  # its folder (or file's folder) under --weights_dir
    source: str  # what the user should place there


CLIP_B16 = ModelSpec("CLIP ViT-B/16", "clip-vit-base-patch16",
                     "the openai/clip-vit-base-patch16 folder (transformers format)")
CLIP_L14_336 = ModelSpec("CLIP ViT-L/14-336", "clip-vit-large-patch14-336",
                         "the openai/clip-vit-large-patch14-336 folder (transformers format)")
DINO_B8 = ModelSpec("DINO ViT-B/8", "dino-vitb8", "the facebook/dino-vitb8 folder (transformers format)")
FACE_PARSER = ModelSpec("SegFormer face parser", "face-parsing",
                        "a SegformerForSemanticSegmentation folder with the 19 CelebAMask-HQ classes, e.g. "
                        "jonathandinu/face-parsing (or use --parser synthfaces on SynthFaces data)")
INCEPTION = ModelSpec("Inception (clean-fid)", "inception",
                      "inception-2015-12-05.pt from https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/"
                      "pretrained/metrics/inception-2015-12-05.pt")
INCEPTION_LEGACY = ModelSpec("Inception (pytorch-fid, --fid_mode legacy_pytorch)", "inception",
                             "pt_inception-2015-12-05-6726825d.pth from https://github.com/mseitzer/pytorch-fid/"
                             "releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth")
IMAGE_REWARD = ModelSpec("ImageReward", "ImageReward",
                         "ImageReward.pt and med_config.json from the THUDM/ImageReward hub repo, and the "
                         "bert-base-uncased tokenizer folder as bert-base-uncased/")


FID_MODES = ("clean", "legacy_pytorch")
CLEAN_FILE = "inception-2015-12-05.pt"  # the name clean-fid's InceptionV3W looks for
LEGACY_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's weights


def inception_file(folder: Path, mode: str) -> tuple[ModelSpec, Path]:
    """The Inception weight file FID/KID need in `mode`, checked to exist."""
    if mode not in FID_MODES:
        raise EvalError(f"--fid_mode {mode}: choose one of {', '.join(FID_MODES)}")
    spec, name = (INCEPTION, CLEAN_FILE) if mode == "clean" else (INCEPTION_LEGACY, LEGACY_FILE)
    return spec, require_file(spec, Path(folder) / name)


def default_path(weights_dir: str | Path, spec: ModelSpec) -> Path:
    return Path(weights_dir) / spec.folder


def missing(spec: ModelSpec, path: Path, detail: str = "") -> EvalError:
    where = f"{path}" + (f" ({detail})" if detail else "")
    return EvalError(f"{spec.title} not found at {where}: place {spec.source} there")


def require_file(spec: ModelSpec, path: Path) -> Path:
    if not path.is_file():
        raise missing(spec, path)
    return path


def require_hf_folder(spec: ModelSpec, path: Path) -> Path:
    """A transformers folder: config.json plus a weight file (safetensors or bin, maybe sharded)."""
    if not path.is_dir():
        raise missing(spec, path)
    if not (path / "config.json").is_file():
        raise missing(spec, path, "the folder has no config.json")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise missing(spec, path, "the folder has no model.safetensors or pytorch_model.bin")
    return path


def quiet_transformers() -> None:
    """Loading bars and "weights not used" notes from transformers only clutter the metric output."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def load_pretrained(cls, spec: ModelSpec, path: Path, **kwargs):
    """`cls.from_pretrained(path)` offline, any failure turned into one line naming the model."""
    quiet_transformers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    except Exception as e:  # corrupt or foreign folder: say which model and why, in one line
        raise EvalError(f"could not load {spec.title} from {path} with {cls.__name__}: {one_line(e)}") from None


def _sha256(path: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = limit
        while remaining is None or remaining > 0:
            chunk = f.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not chunk:
                break
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return h.hexdigest()


def file_identity(path: Path) -> dict:
    """A single weight file: its path and full sha256 (the clean-fid Inception file is ~92 MB)."""
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": _sha256(path)}


def folder_identity(path: Path) -> dict:
    """A transformers folder: path, the name it was saved from, and a cheap fingerprint.

    Hashing multi-GB weights on every run is slow, so the fingerprint covers config.json in full and,
    per weight file, its name, size and first MiB — enough to tell two checkpoints apart.
    """
    ident: dict = {"path": str(path.resolve())}
    config = path / "config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text())
            ident["name_or_path"] = cfg.get("_name_or_path")
            ident["architectures"] = cfg.get("architectures")
        except (OSError, ValueError):
            pass
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        if f.name == "config.json":
            h.update(f.read_bytes())
        elif f.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            h.update(f"{f.name}:{f.stat().st_size}:{_sha256(f, 1 << 20)}".encode())
    ident["fingerprint"] = h.hexdigest()[:16]
    return ident
