"""Generate a face for every image of a data split (what `python test.py` runs).

For each id of the split (MM-CelebA-HQ layout: `mask/{id}.png`, captions in `text.json` or
`text/{id}.txt`) the mask and the image's FIRST caption make one image, written atomically to
`OUT/face/{id}.jpg`, with the caption to `OUT/text/{id}.txt`. The noise of image `id` is seeded
by `image_seed(seed, id)` alone, so any subset, order, batch size or shard gives the same image for
the same id: a run can be resumed (ids whose face test.py already wrote are skipped) and split over
processes (`--shard i/n`, or automatically by RANK under torchrun / accelerate launch).
`OUT/manifest.json` records the settings and the files written (see `output_record`); resuming with
other settings, or into a folder holding files test.py did not write, is refused.

With `identity_root` (`test.py --identity_root DIR`, runs trained with identity) each id is also
that person: DIR/{id}.png (or .jpg, .jpeg, .webp) is its reference face. Every id of the shard must
have exactly one; the ids without are listed in one error before anything is written (a partial set
of people would silently mix identity and no-identity images in one test set). The references are
encoded before the first image is made, so a reference in which no face is found stops the run
before any work, naming the file. The manifest records the root; resuming with another is refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from pathlib import Path
from typing import Optional, Sequence

from . import output_record as record
from .data.dataset import DataError, read_captions, read_split, split_spec
from .locks import FolderBusy
from .outputs import OutputError, check_outputs
from .utils import update_hash

SEED_STRIDE = 1_000_003  # a prime larger than any data set: (seed, id) pairs never collide
JPEG_QUALITY = 95
# Settings that must match to resume into an existing output folder.
RESUME_KEYS = ("run", "weights", "backbone", "root", "split_spec", "seed", "steps", "guidance", "size",
               "condition_scale", "cfg_scale", "text_cfg_scale", "gate_timestep_scale", "mask_latent", "local_maps", "global_map",
               "max_sequence_length", "seeding", "identity_root", "identity_encoder")
WEIGHT_FILES = ("pytorch_lora_weights.safetensors", "mogle.safetensors", "mogle.pt", "identity.safetensors")
REFERENCE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # a reference face in --identity_root: DIR/{id}{suffix}


class GenerationError(ValueError):
    """A problem with the data, split or output folder: one line for the user."""


# ---------------------------------------------------------------------------------------------
# Split reading (self-contained; same semantics as face_mogle.data.dataset.read_split)



def read_split_ids(root: str | os.PathLike, spec: str) -> list[int]:
    """Ids of a split: "START-END" (inclusive) or an id-list file (see `data.dataset.read_split`)."""
    try:
        return read_split(root, spec)
    except DataError as err:
        raise GenerationError(str(err)) from None


def all_ids(root: str | os.PathLike) -> list[int]:
    """`--split all`: every id with a mask in the folder (a zero-shot set such as MM-FFHQ-Female
    has the MM-CelebA-HQ layout and no split file)."""
    ids = sorted(int(p.stem) for p in (Path(root) / "mask").glob("*.png") if p.stem.isdigit())
    if not ids:
        raise GenerationError(f"--split all: no mask/{{id}}.png in {root}")
    return ids


def first_captions(root: str | os.PathLike, ids: Sequence[int]) -> dict[int, str]:
    """The first caption of each id (text.json, else text/{id}.txt); ids without one are left out."""
    try:
        captions = read_captions(root, list(ids))
    except DataError as err:
        raise GenerationError(str(err)) from None
    return {i: caps[0].strip() for i, caps in captions.items() if caps}


# ---------------------------------------------------------------------------------------------
# Seeds and shards


def image_seed(seed: int, image_id: int) -> int:
    """The noise seed of image `image_id`: a function of (seed, id) only."""
    return (int(seed) * SEED_STRIDE + int(image_id)) % (2**63)


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    """'i/n' → (i, n) with 0 <= i < n."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or int(match.group(2)) < 1 or int(match.group(1)) >= int(match.group(2)):
        raise GenerationError(f"--shard must be i/n with 0 <= i < n (e.g. 0/2), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def shard_from_env() -> Optional[tuple[int, int]]:
    """(RANK, WORLD_SIZE) under torchrun / accelerate launch with more than one process."""
    raw_world, raw_rank = os.environ.get("WORLD_SIZE", "1") or "1", os.environ.get("RANK", "0") or "0"
    bad = not raw_world.strip().isdigit() or int(raw_world) < 1
    if not bad and int(raw_world) > 1:  # RANK only matters (and is checked) under a multi-process launcher
        bad = not raw_rank.strip().isdigit() or int(raw_rank) >= int(raw_world)
    if bad:
        raise GenerationError(f"RANK={raw_rank!r} / WORLD_SIZE={raw_world!r} from the environment are not a valid "
                              "process rank and count (0 <= RANK < WORLD_SIZE)")
    world = int(raw_world)
    return (int(raw_rank), world) if world > 1 else None


def reference_faces(identity_root: str | os.PathLike, ids: Sequence[int]) -> dict[int, Path]:
    """{id: DIR/{id}.png|.jpg|...}, one reference face per id; every id missing one, or having two, is
    named in one GenerationError (the first few), before any work."""
    root = Path(identity_root)
    if not root.is_dir():
        raise GenerationError(f"--identity_root {root}: folder not found (expected reference faces named by id, "
                              "e.g. 100.png)")
    found: dict[int, list[Path]] = {}
    for path in root.iterdir():
        if path.suffix.lower() in REFERENCE_SUFFIXES and path.stem.isdigit() and path.is_file():
            found.setdefault(int(path.stem), []).append(path)
    missing = [i for i in ids if i not in found]
    if missing:
        raise GenerationError(
            f"--identity_root {root} has no reference face for {len(missing)} of the {len(ids)} ids to generate, "
            f"e.g. {', '.join(map(str, missing[:5]))} (expected {root}/{{id}}.png or .jpg): add them, or give a "
            "split of only the people you have (--split, --limit)")
    double = [i for i in ids if len(found[i]) > 1]
    if double:
        names = ", ".join(sorted(p.name for p in found[double[0]]))
        raise GenerationError(f"--identity_root {root} holds {len(double)} ids with more than one reference face, "
                              f"e.g. {names}: keep one file per id")
    return {i: found[i][0] for i in ids}


def take_shard(ids: Sequence[int], shard: Optional[tuple[int, int]]) -> list[int]:
    """Every n-th id starting at i."""
    return list(ids) if shard is None else list(ids)[shard[0] :: shard[1]]


# ---------------------------------------------------------------------------------------------
# The run


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise GenerationError(f"output folder {out} exists and is not a folder")
    try:  # a copy of a data set, or face/ or text/ linked into one: its files would be taken for ours
        check_outputs({"--output_dir": out / record.MANIFEST, "--output_dir's face/": out / "face" / "0.jpg",
                       "--output_dir's text/": out / "text" / "0.txt"}, {})
    except OutputError as err:
        raise GenerationError(str(err)) from None
    try:
        for sub in ("face", "text"):
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GenerationError(f"cannot create output folder {out}: {err.strerror or err}") from None
    for sub in ("", "face", "text"):
        if not os.access(out / sub, os.W_OK | os.X_OK):
            raise GenerationError(f"output folder {out / sub} is not writable")
    return out


def weights_digest(run_dir: Optional[str | os.PathLike]) -> Optional[str]:
    """sha256 over the run's weight files: retrained weights in the same folder are other weights."""
    if not run_dir:
        return None
    h = hashlib.sha256()
    for name in WEIGHT_FILES:
        path = Path(run_dir) / name
        if path.is_file():
            h.update(name.encode())
            update_hash(h, path)
    return h.hexdigest()


def intact(path: Path) -> bool:
    """Does this image decode completely? (a crash or a full disk can leave a cut JPEG)"""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return True
    except (OSError, ValueError, SyntaxError):
        return False


def check_resume(out: Path, old: Optional[dict], settings: dict) -> None:
    """Refuse to add images made with other settings to an existing output folder."""
    if old is None:
        return
    old = {"cfg_scale": 1.0, "identity_root": None, "identity_encoder": None, **old}  # folders made before these existed had none
    old.setdefault("text_cfg_scale", old["cfg_scale"])  # nor, before it, a separate prompt weight
    diffs = [f"{k} {old.get(k)!r} != {settings.get(k)!r}" for k in RESUME_KEYS if k in old and old.get(k) != settings.get(k)]
    if diffs:
        raise GenerationError(
            f"{out} holds images made with other settings ({'; '.join(diffs[:3])}): "
            "use another --output_dir, or pass --overwrite to replace them"
        )


def generate_split(
    pipe,
    root: str | os.PathLike,
    split: str,
    output_dir: str | os.PathLike,
    batch_size: int = 4,
    limit: Optional[int] = None,
    seed: int = 42,
    steps: Optional[int] = None,
    guidance: Optional[float] = None,
    condition_scale: Optional[float] = None,
    cfg_scale: Optional[float] = None,
    text_cfg_scale: Optional[float] = None,
    size: Optional[int] = None,
    shard: Optional[tuple[int, int]] = None,
    progress: bool = True,
    log=print,
    overwrite: bool = False,
    identity_root: Optional[str | os.PathLike] = None,
) -> dict:
    """Generate the split's faces into `output_dir` with a FaceMoGLEPipeline; returns a summary.

    `split` is "test"/"train" (the run config's data.test_split / train_split) or a spec itself.
    `limit` keeps the first ids of the split (before sharding), so shards of a limited run still
    partition it. `identity_root`: a folder of reference faces named by id (see the module docstring).
    """
    root = Path(root)
    if not root.is_dir():
        raise GenerationError(f"data root not found: {root} (expected mask/ and text.json or text/)")
    out_resolved = Path(output_dir).resolve()
    if out_resolved == root.resolve() or root.resolve() in out_resolved.parents and out_resolved.relative_to(
            root.resolve()).parts[0] in ("face", "mask", "text"):
        raise GenerationError(f"--output_dir {output_dir} would write into the data set {root} (its face/ and text/ "
                              "files would be replaced): choose a folder outside it")
    if batch_size < 1:
        raise GenerationError(f"--batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise GenerationError(f"--limit must be >= 1, got {limit}")
    cfg = pipe.cfg
    steps = cfg.sample.steps if steps is None else steps
    guidance = cfg.sample.guidance if guidance is None else guidance
    condition_scale = cfg.sample.condition_scale if condition_scale is None else condition_scale
    cfg_scale, text_cfg_scale = pipe.guidance_scales(cfg_scale, text_cfg_scale)
    size = pipe.check_size(cfg.sample.size if size is None else size)

    spec = split_spec(split, cfg.data)
    ids = all_ids(root) if split == "all" else read_split_ids(root, spec)
    if limit is not None:
        ids = ids[:limit]
    ids = take_shard(ids, shard)
    captions = first_captions(root, ids)
    missing = [str(root / "mask" / f"{i}.png") for i in ids if not (root / "mask" / f"{i}.png").is_file()]
    missing += [f"caption of {i} (text.json or text/{i}.txt)" for i in ids if i not in captions]
    if missing:
        raise GenerationError(f"{len(missing)} missing data files under {root}, e.g. {', '.join(missing[:3])}")
    references = None
    if identity_root is not None:
        if cfg.model.identity.encoder is None:
            raise GenerationError(f"--identity_root: run {pipe.run_dir} was trained without identity "
                                  "(model.identity.encoder is null): use a run trained with an identity stage")
        references = reference_faces(identity_root, ids)
        identity_root = Path(identity_root).resolve()
        if identity_root in (out_resolved / "face", out_resolved / "text"):  # its files would be taken for ours
            raise GenerationError(f"--identity_root {identity_root} is the output folder's {identity_root.name}/: "
                                  "keep the reference faces elsewhere")

    out = check_output_dir(output_dir)
    settings = dict(
        run=str(Path(pipe.run_dir).resolve()) if pipe.run_dir else None, weights=weights_digest(pipe.run_dir),
        backbone=pipe.backbone.source, root=str(root.resolve()), split=split, split_spec=spec,
        seed=seed, steps=steps, guidance=guidance, size=size, condition_scale=condition_scale,
        cfg_scale=cfg_scale, text_cfg_scale=text_cfg_scale, gate_timestep_scale=cfg.model.gate_timestep_scale, mask_latent=cfg.sample.mask_latent,
        local_maps=cfg.sample.local_maps, global_map=cfg.model.global_map,
        max_sequence_length=cfg.sample.max_sequence_length,
        seeding=f"image id i gets seed * {SEED_STRIDE} + i", jpeg_quality=JPEG_QUALITY, limit=limit,
        identity_root=None if identity_root is None else str(identity_root),
        identity_encoder=None if identity_root is None else cfg.model.identity.encoder,
    )
    from filelock import Timeout

    lock = record.run_lock(out, shard)
    try:
        lock.acquire()  # one run per shard of a folder; FolderBusy names the one already at work
        try:
            with record.manifest_lock(out):
                todo = _prepare(out, ids, settings, overwrite, lock, log)
            embeddings = _embed_references(pipe, references, todo)
            return _generate(pipe, root, out, ids, todo, captions, settings, shard, split, batch_size, progress, log,
                             embeddings)
        finally:
            lock.release()
    except (record.OutputFolderError, FolderBusy) as err:
        raise GenerationError(str(err)) from None
    except Timeout:
        raise GenerationError(f"another shard held {out / record.MANIFEST_LOCK} for over {record.MANIFEST_WAIT_S} s: "
                              "is it stuck? rerun the same command to continue") from None


def _prepare(out: Path, ids: list[int], settings: dict, overwrite: bool, lock, log) -> list[int]:
    """Under the manifest lock: apply --overwrite, check the settings and the folder's files, record
    the settings; returns the ids still to generate."""
    old = record.read(out)
    files = record.own_files(old, out)
    ours, broken, foreign = record.survey(out, files, intact)
    if overwrite:
        record.refuse_foreign(out, files, foreign, "--overwrite deletes")
        record.check_no_other_writer(out, lock)
        record.clear(out, ours, broken)
        old, files, ours, broken = None, {}, set(), []
    check_resume(out, old, settings)
    record.refuse_foreign(out, files, foreign, "test.py skips and replaces")
    record.write(out, settings, {rel: files[rel] for rel in sorted(ours) + broken})
    if broken:
        log(f"{len(broken)} unreadable images in {out / 'face'} (e.g. {broken[0][5:]}, cut by a crash?): generating them again")
    return [i for i in ids if f"face/{i}.jpg" not in ours]


def _embed_references(pipe, references: Optional[dict], todo: list[int], chunk: int = 64) -> Optional[dict]:
    """{id: identity embedding} of the ids still to generate, all encoded before the first image (a
    reference without a face stops the run here, naming it); None without --identity_root."""
    if references is None:
        return None
    out = {}
    for b in range(0, len(todo), chunk):
        batch = todo[b : b + chunk]
        out.update(zip(batch, pipe.identity_embeddings([str(references[i]) for i in batch], len(batch))))
    return out


def _generate(pipe, root: Path, out: Path, ids, todo, captions, settings: dict, shard, split, batch_size: int,
              progress: bool, log, embeddings: Optional[dict] = None) -> dict:
    from tqdm import tqdm

    skipped = len(ids) - len(todo)
    where = f" (shard {shard[0]}/{shard[1]})" if shard else ""
    log(f"{len(ids)} images in split {split!r}{where}: {skipped} already in {out / 'face'}, {len(todo)} to generate")
    s = settings
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", desc="generate", disable=not progress, dynamic_ncols=True)
    try:
        for b in range(0, len(todo), batch_size):
            batch = todo[b : b + batch_size]
            result = pipe(
                [captions[i] for i in batch], [str(root / "mask" / f"{i}.png") for i in batch],
                seeds=[image_seed(s["seed"], i) for i in batch], steps=s["steps"], guidance=s["guidance"],
                condition_scale=s["condition_scale"], cfg_scale=s["cfg_scale"], text_cfg_scale=s["text_cfg_scale"],
                size=s["size"], batch_size=len(batch),
                identities=None if embeddings is None else [embeddings[i] for i in batch],
            )
            new = {}
            for i, image in zip(batch, result.images):
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
                new[f"text/{i}.txt"] = (captions[i] + "\n").encode()
                new[f"face/{i}.jpg"] = buffer.getvalue()
            record.commit(out, settings, RESUME_KEYS, new)
            bar.update(len(batch))
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return dict(total=len(ids), generated=len(todo), skipped=skipped, seconds=seconds, output_dir=str(out))
