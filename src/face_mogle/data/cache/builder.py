"""Building a cache: encode a split's faces, maps and captions shard by shard, resumably."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ...labels import NUM_CLASSES, NUM_MAPS
from ...locks import FolderLock
from ...utils import DTYPES, atomic_save_safetensors
from ..dataset import DataError, check_files, load_face, read_captions
from ..masks import STORED_IS_SAMPLING_ONLY, MaskError, condition_stack_torch, load_label_map
from .fingerprint import DTYPE_NAMES, _captions_digest, _changed_source, _source_fingerprints, cache_identity
from .manifest import (FORMAT_VERSION, MANIFEST, SHARED, CacheError, _settings, _settings_difference, shard_problem,
                       _split_ids, _write_manifest, read_manifest, require_cache_dir, wants_maps)

MAX_SHARD_SIZE = 256  # samples per shard, at most
SHARD_BYTES = 1 << 30  # ...and about 1 GiB per shard (a shard is assembled in memory)


class _Source(torch.utils.data.Dataset):
    """Faces and label maps by id, for the builder's DataLoader."""

    def __init__(self, root: Path, ids: list[int], size: int):
        self.root, self.ids, self.size = root, ids, size

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        i = self.ids[index]
        try:
            labels = load_label_map(self.root / "mask" / f"{i}.png", self.size)
        except MaskError as err:
            raise DataError(str(err)) from None
        return {"id": i, "image": load_face(self.root / "face" / f"{i}.jpg", self.size),
                "labels": torch.from_numpy(labels.astype(np.int64))}


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def projected_bytes(num_samples: int, num_captions: int, maps_per_sample: float, latent_shape, prompt_shape,
                    pooled_dim: int, itemsize: int) -> dict:
    """Disk bytes of a cache: (mean, std) per latent, T5 + pooled per caption."""
    latent = 2 * math.prod(latent_shape) * itemsize
    caption = (math.prod(prompt_shape) + pooled_dim) * itemsize
    return {
        "faces": num_samples * latent,
        "maps": num_samples * maps_per_sample * latent,
        "captions": num_captions * caption,
        "total": num_samples * (1 + maps_per_sample) * latent + num_captions * caption,
    }


def _mean_present_maps(root: Path, ids: list[int], size: int, limit: int = 64) -> float:
    """Average non-empty maps per sample (global + present classes), from up to `limit` masks."""
    step = max(1, len(ids) // limit)
    counts = []
    for i in ids[::step][:limit]:
        labels = load_label_map(root / "mask" / f"{i}.png", size)
        counts.append(1 + len(np.unique(labels)))
    return float(np.mean(counts)) if counts else 1.0 + NUM_CLASSES


def _encode_shard(backbone, cfg, loader_batches, captions: dict, dtype: torch.dtype, progress=None,
                  text: bool = True, maps: bool = True) -> dict:
    """Encode one shard's samples; returns the tensors of its file. Without `maps` every map is
    recorded absent (the reader gives the empty map)."""
    from ... import encoding

    vae, L = backbone.vae, cfg.max_sequence_length
    device = next(vae.parameters()).device
    ids, face_mean, face_std, map_mean, map_std, map_index = [], [], [], [], [], []
    prompt_embeds, pooled_embeds, caption_start = [], [], [0]
    rows = 0
    for batch in loader_batches:
        images = batch["image"].to(device)
        b = images.shape[0]
        m, s = encoding.encode_distribution(vae, images)
        face_mean.append(m.to(dtype).cpu())
        face_std.append(s.to(dtype).cpu())
        index = torch.full((b * NUM_MAPS,), -1, dtype=torch.int32)
        if maps:
            flat = condition_stack_torch(batch["labels"].to(device), cfg.model.global_map).flatten(0, 1)  # [b*20,3,S,S]
            nonempty = flat.flatten(1).amax(dim=1) > 0
        if maps and nonempty.any():
            m, s = encoding.encode_distribution(vae, flat[nonempty])
            map_mean.append(m.to(dtype).cpu())
            map_std.append(s.to(dtype).cpu())
            n = int(nonempty.sum())
            index[nonempty.cpu()] = torch.arange(rows, rows + n, dtype=torch.int32)
            rows += n
        map_index.append(index.view(b, NUM_MAPS))
        if text:
            texts = [c for i in batch["id"] for c in captions[int(i)]]
            t5, pooled = encoding.encode_prompts(backbone, texts, L)
            prompt_embeds.append(t5.to(dtype).cpu())
            pooled_embeds.append(pooled.to(dtype).cpu())
        for i in batch["id"]:
            ids.append(int(i))
            caption_start.append(caption_start[-1] + len(captions[int(i)]))
        if progress is not None:
            progress.update(b)
    latent_shape = face_mean[0].shape[1:]
    out = {
        "ids": torch.tensor(ids, dtype=torch.int64),
        "face_mean": torch.cat(face_mean),
        "face_std": torch.cat(face_std),
        "map_mean": torch.cat(map_mean) if map_mean else torch.zeros(0, *latent_shape, dtype=dtype),
        "map_std": torch.cat(map_std) if map_std else torch.zeros(0, *latent_shape, dtype=dtype),
        "map_index": torch.cat(map_index),
        "caption_start": torch.tensor(caption_start, dtype=torch.int64),
    }
    if text:
        out["prompt_embeds"], out["pooled_embeds"] = torch.cat(prompt_embeds), torch.cat(pooled_embeds)
    return out


def _encode_shared(backbone, cfg, dtype, text: bool = True) -> dict:
    from ... import encoding

    device = next(backbone.vae.parameters()).device
    empty = torch.zeros(1, 3, cfg.data.size, cfg.data.size, device=device)
    m, s = encoding.encode_distribution(backbone.vae, empty)
    out = {"empty_map_mean": m[0].to(dtype).cpu().contiguous(), "empty_map_std": s[0].to(dtype).cpu().contiguous()}
    if text:
        t5, pooled = encoding.encode_prompts(backbone, [""], cfg.max_sequence_length)
        out["empty_prompt_embeds"] = t5[0].to(dtype).cpu().contiguous()
        out["empty_pooled_embeds"] = pooled[0].to(dtype).cpu().contiguous()
    return out


def _remove_cache_files(cache_dir: Path) -> None:
    """Only the files this module writes; anything else in the folder is left alone."""
    for path in list(cache_dir.glob("shard-*.safetensors")) + [cache_dir / SHARED, cache_dir / MANIFEST]:
        if path.is_file():
            path.unlink()
    _remove_temp_files(cache_dir)


def _remove_temp_files(cache_dir: Path) -> None:
    for path in cache_dir.glob(".*.tmp"):
        if path.name.startswith((".shard-", f".{SHARED}.", f".{MANIFEST}.")):
            path.unlink()


def build_cache(cfg, split: str = "both", batch_size: int = 8, device: str = "cpu", backbone=None,
                shard_size: Optional[int] = None, overwrite: bool = False, max_shards: Optional[int] = None,
                progress: bool = True, log=print, config_path: Optional[str] = None, quiet: bool = False,
                text: bool = True) -> Path:
    """Encode the faces, maps and captions of `split` into `cfg.data.cache_dir`; resumable.

    Shards already complete (listed in the manifest, file present with its recorded size, captions
    unchanged) are kept; missing or stale ones are re-encoded under the same name and ids; ids not
    yet cached go into new shards. `max_shards` stops after that many shards were written;
    `quiet` silences per-batch library warnings (CLIP's 77-token truncation notes, dtype casts).
    `text=False` builds a latents-only cache (captions are then encoded during training); a
    `train.mode: base` config caches no mask maps (it never reads them).
    One builder per folder: a second one is refused (FolderBusy) while the first runs.
    """
    if cfg.model.global_map == "stored":
        raise CacheError(f"model.global_map {STORED_IS_SAMPLING_ONLY}")
    cache_dir = require_cache_dir(cfg)
    if batch_size < 1:
        raise CacheError(f"--batch_size must be >= 1, got {batch_size}")
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise DataError(f"data root not found: {root} (expected face/, mask/ and text.json or text/)")
    ids = _split_ids(cfg, split)
    captions = read_captions(root, ids)
    check_files(root, ids, captions, need_faces=True)
    # Two builders would interleave their shards under one manifest.
    with FolderLock(cache_dir, "latent cache folder"):
        return _build_locked(cfg, cache_dir, root, ids, captions, split, batch_size, device, backbone, shard_size,
                             overwrite, max_shards, progress, log, config_path, quiet, text)


def _build_locked(cfg, cache_dir: Path, root: Path, ids: list[int], captions: dict, split: str, batch_size: int,
                  device: str, backbone, shard_size: Optional[int], overwrite: bool, max_shards: Optional[int],
                  progress: bool, log, config_path: Optional[str], quiet: bool, text: bool) -> Path:
    from tqdm.auto import tqdm

    from ...models.builder import load_backbone

    maps = wants_maps(cfg)

    def refuse(diff):
        return CacheError(f"latent cache {cache_dir} does not match this config: {diff}; pass --overwrite "
                          f"to replace it, or choose another --set data.cache_dir=DIR")

    manifest = read_manifest(cache_dir)
    if manifest is not None and not overwrite and backbone is None:
        diff = _settings_difference(manifest, cfg, None, text, building=True)  # fail before loading a large backbone
        if diff:
            raise refuse(diff)
    if quiet:
        _quiet_libraries()
    if backbone is None:
        backbone = load_backbone(cfg.pretrained, cfg.dtype, device)
    identity = cache_identity(backbone)
    dtype = DTYPES[identity["compute_dtype"]]

    cache_dir.mkdir(parents=True, exist_ok=True)
    if manifest is not None and overwrite:
        log(f"--overwrite: removing the cache files in {cache_dir}")
        _remove_cache_files(cache_dir)
        manifest = None
    if manifest is not None:
        diff = _settings_difference(manifest, cfg, identity, text, building=True)
        if diff:
            raise refuse(diff)
    _remove_temp_files(cache_dir)

    side = cfg.data.size // backbone.vae_scale_factor
    latent_shape = [backbone.latent_channels, side, side]
    prompt_shape = [cfg.max_sequence_length, backbone.text_encoder_2.config.d_model]
    pooled_dim = backbone.text_encoder.config.hidden_size
    if manifest is None:  # a fresh cache: files without a manifest are leftovers of a killed start
        _remove_cache_files(cache_dir)
        manifest = dict(_settings(cfg, identity), backbone=identity, latent_shape=latent_shape,
                        prompt_shape=prompt_shape if text else None, pooled_dim=pooled_dim if text else None,
                        text=text, maps=maps, shared=SHARED, shard_size=None, shards=[])

    # Plan: repair listed shards that are missing/truncated/stale, then new shards for the rest.
    todo: list[tuple[Optional[int], list[int]]] = []  # (index of a listed shard or None, ids)
    cached = set()
    for s, shard in enumerate(manifest["shards"]):
        cached.update(shard["ids"])
        unknown = [i for i in shard["ids"] if i not in captions]
        if unknown:  # ids of another split: read their captions too
            captions.update(read_captions(root, unknown))
        ok = shard_problem(cache_dir, shard) is None
        if ok and all(i in captions for i in shard["ids"]):  # captions changed since → re-encode
            ok = _captions_digest(shard["ids"], captions) == shard["captions_sha1"]
        if ok:  # a face or mask replaced, touched with new bytes or deleted since → re-encode
            ok = _changed_source(root, shard) is None
        if not ok:
            check_files(root, shard["ids"], captions, need_faces=True)
            todo.append((s, list(shard["ids"])))
    new_ids = [i for i in ids if i not in cached]
    itemsize = torch.empty(0, dtype=dtype).element_size()
    maps_per_sample = _mean_present_maps(root, new_ids or ids, cfg.data.size) if maps else 0.0
    caption_counts = (lambda some: sum(len(captions[i]) for i in some)) if text else (lambda some: 0)
    per_sample = projected_bytes(1, caption_counts(ids) / max(len(ids), 1), maps_per_sample,
                                 latent_shape, prompt_shape, pooled_dim, itemsize)["total"]
    if shard_size is None:  # the first build's choice sticks, so a resumed build cuts shards alike
        shard_size = manifest.get("shard_size") or int(max(1, min(MAX_SHARD_SIZE, SHARD_BYTES // max(per_sample, 1))))
    manifest["shard_size"] = manifest.get("shard_size") or shard_size
    todo += [(None, new_ids[k : k + shard_size]) for k in range(0, len(new_ids), shard_size)]
    if max_shards is not None:
        todo = todo[:max_shards]
    next_name = 1 + max([int(s["file"][6:11]) for s in manifest["shards"]], default=-1)

    pending = [i for _, shard_ids in todo for i in shard_ids]
    num_pending_caps = caption_counts(pending)
    est = projected_bytes(len(pending), num_pending_caps, maps_per_sample, latent_shape, prompt_shape,
                          pooled_dim, itemsize)
    total_est = projected_bytes(len(ids), caption_counts(ids), maps_per_sample, latent_shape,
                                prompt_shape, pooled_dim, itemsize)
    free = shutil.disk_usage(cache_dir).free
    log(f"latent cache {cache_dir}: {len(ids)} samples ({split}), {len(ids) - len(new_ids)} already cached, "
        f"{len(pending)} to encode in {len(todo)} shard(s) of <= {shard_size}; storing {DTYPE_NAMES[dtype]}")
    log(f"projected size of the {split} cache: {_fmt_bytes(total_est['total'])} (faces {_fmt_bytes(total_est['faces'])}, "
        + (f"mask maps {_fmt_bytes(total_est['maps'])} at ~{maps_per_sample:.1f} non-empty maps/sample, " if maps
           else "mask maps not cached (train.mode base), ") + "captions "
        + (f"{_fmt_bytes(total_est['captions'])} = T5 {prompt_shape[0]}x{prompt_shape[1]} + pooled {pooled_dim} per caption); "
           if text else "not cached (--no_text)); ") +
        f"to write now: {_fmt_bytes(est['total'])}; free: {_fmt_bytes(free)}")
    if est["total"] > free:
        log(f"warning: the projected size exceeds the free disk space in {cache_dir}")

    if not (cache_dir / SHARED).is_file():
        atomic_save_safetensors(_encode_shared(backbone, cfg, dtype, text), cache_dir / SHARED,
                                metadata={"format": str(FORMAT_VERSION)})
    _write_manifest(cache_dir, manifest)
    if not todo:
        log("nothing to do: the cache is complete")
        return cache_dir

    batches = [ids_[k : k + batch_size] for _, ids_ in todo for k in range(0, len(ids_), batch_size)]
    flat_ids = [i for b in batches for i in b]
    offsets, pos = [], 0
    for b in batches:
        offsets.append(list(range(pos, pos + len(b))))
        pos += len(b)
    loader = torch.utils.data.DataLoader(
        _Source(root, flat_ids, cfg.data.size), batch_sampler=offsets, num_workers=cfg.data.num_workers,
        collate_fn=_collate_source,
    )
    batch_iter = iter(loader)
    bar = tqdm(total=len(pending), desc="encoding", unit="sample", disable=not progress)
    try:
        for pos, shard_ids in todo:
            num_batches = math.ceil(len(shard_ids) / batch_size)
            shard_batches = (next(batch_iter) for _ in range(num_batches))
            tensors = _encode_shard(backbone, cfg, shard_batches, captions, dtype, bar, text, maps)
            if pos is not None:
                name = manifest["shards"][pos]["file"]
            else:
                name, next_name = f"shard-{next_name:05d}.safetensors", next_name + 1
            # One metadata key only: safetensors writes several in no fixed order (files would differ).
            meta = {"captions": json.dumps([captions[i] for i in shard_ids], ensure_ascii=False)}
            atomic_save_safetensors(tensors, cache_dir / name, metadata=meta)
            record = {"file": name, "ids": list(shard_ids), "bytes": (cache_dir / name).stat().st_size,
                      "captions_sha1": _captions_digest(shard_ids, captions),
                      "sources": _source_fingerprints(root, shard_ids)}
            if pos is not None:
                manifest["shards"][pos] = record
            else:
                manifest["shards"].append(record)
            _write_manifest(cache_dir, manifest)
    finally:
        bar.close()
    done = {i for s in manifest["shards"] for i in s["ids"]}
    left = sum(1 for i in ids if i not in done)
    log(f"wrote {len(todo)} shard(s) to {cache_dir}" + (f"; {left} samples left: rerun to continue" if left else "; the cache is complete"))
    return cache_dir


def _collate_source(items):
    return {"id": [it["id"] for it in items], "image": torch.stack([it["image"] for it in items]),
            "labels": torch.stack([it["labels"] for it in items])}



def _quiet_libraries() -> None:
    """Per-batch library warnings (CLIP's 77-token truncation, dtype casts) would bury the progress bar."""
    import transformers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
