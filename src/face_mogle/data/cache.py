"""The latent and text cache: encode every face, mask map and caption once, train from the files.

Without a cache each training step runs the frozen VAE encoder on 21 images per sample (the face
and 20 condition maps) and T5 + CLIP on the caption. The cache stores, per sample, the VAE
posterior (mean, std) of the face, of the global map and of the local maps of the classes that are
PRESENT, and the T5 sequence + pooled CLIP vector of every caption. Absent-class maps, dropped maps
(drop_image_prob) and dropped captions all share one entry per cache (the empty map and the empty
caption ""), so they are stored once. Sampling the posterior and the dropouts still happen at
training time, with the same (seed, epoch, id) choices as the uncached `FaceDataset`.

Layout of `data.cache_dir`:

    manifest.json             format version, backbone identity (+ encoder weight digests), size,
                              global_map, max_sequence_length, dtype, text, shard_size, ids, and the
                              shard list (file, ids, bytes, caption digest, face/mask fingerprints per shard)
    shared.safetensors        empty_map_mean/std [C,h,w]; empty_prompt_embeds [L,D]; empty_pooled_embeds [Dp]
    shard-00000.safetensors   per shard of n samples (metadata "captions": JSON list per sample):
        ids [n] · face_mean/face_std [n,C,h,w] · map_mean/map_std [M,C,h,w] (the non-empty maps)
        map_index [n,20] (row into map_*; -1 = the empty map) · caption_start [n+1] (offsets)
        prompt_embeds [K,L,D] · pooled_embeds [K,Dp] (K = all captions of the shard's samples)

`--no_text` builds a latents-only cache (no T5/CLIP embeddings; captions are then encoded during
training): at FLUX.1-dev scale the T5 sequences are ~4 MiB per caption (512 × 4096 bf16), ~1.15 TiB
for MM-CelebA-HQ's ~300k captions, against ~0.1 TiB for all the latents.

Everything is stored in the backbone's dtype (bfloat16 for FLUX.1-dev, float32 for the tiny
preset). The VAE and text encoders compute in that dtype, so storing in it loses nothing: cached
inputs equal uncached ones. Each shard is written to a temp file and renamed into place, then the
manifest is rewritten (also atomically): a killed build keeps its finished shards and a rerun of
the same command continues where it stopped.

Build:  python -m face_mogle.data.cache --config CONFIG [--set data.cache_dir=DIR] [--split both]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..labels import NUM_CLASSES, NUM_MAPS
from ..utils import DTYPES, atomic_save_safetensors, atomic_write, update_hash
from .dataset import (DataError, SampleChoice, check_files, load_face, read_captions, read_split, sample_choice,
                      split_spec)
from .masks import STORED_IS_SAMPLING_ONLY, MaskError, condition_stack_torch, load_label_map

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARED = "shared.safetensors"
MAX_SHARD_SIZE = 256  # samples per shard, at most
SHARD_BYTES = 1 << 30  # ...and about 1 GiB per shard (a shard is assembled in memory)
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class CacheError(RuntimeError):
    """A missing, incompatible or stale cache; the one-line message says how to (re)build it."""


# --------------------------------------------------------------------------------------------
# Identity and compatibility


def _file_digest(path: Path) -> str:
    """Size + hash of the first MiB: cheap on 10 GB weight files, still catches a swap."""
    h = hashlib.sha1(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _module_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


# What the cached values depend on: the encoders and tokenizers, not the transformer.
ENCODER_PARTS = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def encoder_fingerprint(backbone) -> dict:
    """A short digest per encoder part: weight files (size + first MiB) for a folder, the
    parameters themselves for the in-code tiny preset."""
    if backbone.source == "tiny":
        return {name: _module_digest(getattr(backbone, name)) for name in ("vae", "text_encoder", "text_encoder_2")}
    folder = Path(backbone.source)
    out = {}
    for part in ENCODER_PARTS:
        h = hashlib.sha1()
        for path in sorted(p for p in (folder / part).rglob("*") if p.is_file()):
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(_file_digest(path).encode())
        out[part] = h.hexdigest()[:16]
    return out


def cache_identity(backbone) -> dict:
    """`backbone.identity()` plus what the cache depends on: encoder digests, dtype, VAE factors."""
    ident = dict(backbone.identity())
    vae_cfg = backbone.vae.config
    ident["encoders"] = encoder_fingerprint(backbone)
    ident["compute_dtype"] = _DTYPE_NAMES.get(next(backbone.vae.parameters()).dtype, "float32")
    ident["vae_scaling_factor"] = float(vae_cfg.scaling_factor)
    ident["vae_shift_factor"] = float(vae_cfg.shift_factor or 0.0)
    return _jsonable(ident)


def _jsonable(x):
    return json.loads(json.dumps(x, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


_IGNORED = {"_name_or_path", "_diffusers_version", "_use_default_values", "_class_name"}


def _identity_difference(built: dict, current: dict) -> Optional[str]:
    """First relevant difference between two identities, as words; None when compatible.

    The encoder digests decide when both sides have them (a moved folder is still the same
    weights); otherwise the keys both sides have are compared.
    """
    if "encoders" in built and "encoders" in current:
        parts = list(built["encoders"]) + [p for p in current["encoders"] if p not in built["encoders"]]
        for part in parts:
            if built["encoders"].get(part) != current["encoders"].get(part):
                return (f"backbone {part} differs (built with {built.get('source')!r}, "
                        f"{part} {built['encoders'].get(part)}; now {current.get('source')!r}, "
                        f"{part} {current['encoders'].get(part)})")
        keys = [k for k in ("compute_dtype", "vae_latent_channels", "vae_scale_factor",
                            "vae_scaling_factor", "vae_shift_factor") if k in built or k in current]
    else:
        keys = [k for k in current if k in built]
    for key in keys:
        a, b = built.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            a = {k: v for k, v in a.items() if k not in _IGNORED}
            b = {k: v for k, v in b.items() if k not in _IGNORED}
        if a != b:
            if key == "source":
                return f"backbone differs (built with {a!r}, now {b!r})"
            return f"backbone {key} differs (built with {_short(a)}, now {_short(b)})"
    return None


def _short(x, limit: int = 80) -> str:
    text = json.dumps(x) if not isinstance(x, str) else repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _captions_digest(ids: Sequence[int], captions: dict) -> str:
    h = hashlib.sha1(json.dumps([[int(i), list(captions[i])] for i in ids], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


SOURCES = ("face/{}.jpg", "mask/{}.png")  # the files an entry is encoded from (captions: captions_sha1)


def _content_digest(path: Path) -> str:
    return update_hash(hashlib.sha1(), path).hexdigest()[:16]


def _source_fingerprints(root: Path, ids: Sequence[int]) -> dict:
    """{id: [[size, mtime_ns, content digest] per source file]}, recorded per shard at build time."""
    out = {}
    for i in ids:
        entry = []
        for pattern in SOURCES:
            path = Path(root) / pattern.format(i)
            st = path.stat()
            entry.append([st.st_size, st.st_mtime_ns, _content_digest(path)])
        out[str(i)] = entry
    return out


def _changed_source(root: Path, shard: dict) -> Optional[str]:
    """The first source file of the shard that changed since it was encoded (None: all the same).
    Size and mtime are the fast path; where they differ the content decides (a copy or a touch
    that kept the bytes is no change)."""
    recorded = shard.get("sources")
    if recorded is None:
        return "(no source fingerprints: built by an older version)"
    for i in shard["ids"]:
        for pattern, (size, mtime, digest) in zip(SOURCES, recorded[str(i)]):
            path = Path(root) / pattern.format(i)
            try:
                st = path.stat()
            except OSError:
                return f"{path} (missing)"
            if (st.st_size, st.st_mtime_ns) == (size, mtime):
                continue
            if st.st_size != size or _content_digest(path) != digest:
                return str(path)
    return None


def build_command(cfg, config_path: Optional[str] = None, overwrite: bool = False) -> str:
    cmd = f"python -m face_mogle.data.cache --config {config_path or 'CONFIG'}"
    if cfg.data.cache_dir:
        cmd += f" --set data.cache_dir={cfg.data.cache_dir}"
    return cmd + (" --overwrite" if overwrite else "")


def suggested_cache_dir(cfg) -> str:
    return str(Path(cfg.data.root) / "cache" / str(cfg.data.size))


def require_cache_dir(cfg) -> Path:
    if not cfg.data.cache_dir:
        raise CacheError(
            f"data.cache_dir is not set: pass --set data.cache_dir=DIR (e.g. --set data.cache_dir="
            f"{suggested_cache_dir(cfg)}) or set it in the config"
        )
    return Path(cfg.data.cache_dir)


def _settings(cfg, identity: Optional[dict]) -> dict:
    """The manifest fields a cache must match (besides the backbone identity and ids)."""
    return {
        "format_version": FORMAT_VERSION,
        "size": cfg.data.size,
        "global_map": cfg.model.global_map,
        "max_sequence_length": cfg.max_sequence_length,
        "dtype": (identity or {}).get("compute_dtype", cfg.dtype),
    }


def _settings_difference(manifest: dict, cfg, identity: Optional[dict], text: Optional[bool] = None) -> Optional[str]:
    """What makes `manifest` unusable with this config and backbone (None: compatible).
    identity None checks the config only (before the backbone is loaded); text None accepts a
    cache with or without text embeddings (max_sequence_length only matters with them)."""
    has_text = manifest.get("text", True)
    if text is not None and text != has_text:
        return (f"it was built {'with' if has_text else 'without'} text embeddings, this build asks for "
                f"{'none (--no_text)' if not text else 'them'}")
    wanted = _settings(cfg, identity)
    if not has_text:
        wanted.pop("max_sequence_length")
    names = {"size": "data.size", "global_map": "model.global_map",
             "max_sequence_length": "max_sequence_length", "dtype": "dtype",
             "format_version": "cache format version"}
    for key, value in wanted.items():
        built = manifest.get(key)
        if key == "global_map" and built == "official":
            built = "gray"  # the old name of the grey map: such a cache serves a gray config
        if built != value:
            renamed = " (the old name of 'gray')" if manifest.get(key) == "official" else ""
            return f"it was built with {names[key]}={manifest.get(key)!r}{renamed}, this config has {value!r}"
    if identity is not None:
        return _identity_difference(manifest.get("backbone", {}), identity)
    return None


def read_manifest(cache_dir: Path) -> Optional[dict]:
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CacheError(f"{path}: not valid JSON ({err.msg}); delete the cache folder and rebuild it") from None


def _write_manifest(cache_dir: Path, manifest: dict) -> None:
    manifest["ids"] = [i for shard in manifest["shards"] for i in shard["ids"]]
    text = json.dumps(manifest, indent=1)
    atomic_write(cache_dir / MANIFEST, lambda tmp: Path(tmp).write_text(text))


def _shard_ok(cache_dir: Path, shard: dict) -> bool:
    path = cache_dir / shard["file"]
    return path.is_file() and path.stat().st_size == shard["bytes"]


# --------------------------------------------------------------------------------------------
# Opening a cache for training


class LatentCache:
    """An opened, validated cache: the manifest plus lazy, per-process access to the shards."""

    def __init__(self, cache_dir: str | os.PathLike, manifest: dict):
        self.dir = Path(cache_dir)
        self.manifest = manifest
        self.locations: dict[int, tuple[int, int]] = {}
        for s, shard in enumerate(manifest["shards"]):
            for row, i in enumerate(shard["ids"]):
                self.locations[int(i)] = (s, row)
        self.dtype = DTYPES[manifest["dtype"]]
        self._handles: dict[int, object] = {}
        self._meta: dict[int, dict] = {}
        self._shared: Optional[dict] = None

    # Open file handles cannot cross process boundaries (DataLoader workers reopen lazily).
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    @property
    def ids(self) -> list[int]:
        return list(self.locations)

    @property
    def has_text(self) -> bool:
        """False for a latents-only cache (built with --no_text): captions are encoded in training."""
        return bool(self.manifest.get("text", True))

    @property
    def vae_config(self) -> dict:
        ident = self.manifest["backbone"]
        return {"scaling_factor": ident["vae_scaling_factor"], "shift_factor": ident["vae_shift_factor"]}

    def shared(self) -> dict:
        if self._shared is None:
            from safetensors.torch import load_file

            self._shared = load_file(str(self.dir / SHARED))
        return self._shared

    MAX_OPEN = 32  # open shard files per process (a FLUX.1-dev-scale cache has >1000 shards)

    def _handle(self, s: int):
        if s in self._handles:
            self._handles[s] = self._handles.pop(s)  # most recently used last
        else:
            from safetensors import safe_open

            while len(self._handles) >= self.MAX_OPEN:
                self._handles.pop(next(iter(self._handles)))
            f = safe_open(str(self.dir / self.manifest["shards"][s]["file"]), framework="pt")
            self._handles[s] = f
            if s not in self._meta:
                self._meta[s] = {
                    "map_index": f.get_tensor("map_index"),
                    "caption_start": f.get_tensor("caption_start"),
                    "captions": json.loads(f.metadata()["captions"]),
                }
        return self._handles[s]

    def captions(self, image_id: int) -> list[str]:
        s, row = self.locations[image_id]
        self._handle(s)
        return self._meta[s]["captions"][row]

    def read(self, image_id: int, caption_index: Optional[int], dropped: Optional[np.ndarray] = None) -> dict:
        """Stored tensors of one sample; caption_index None = the empty caption; `dropped`
        (bool [20], 0 = the global map) maps are replaced by the empty map like absent ones."""
        s, row = self.locations[image_id]
        f = self._handle(s)
        meta = self._meta[s]
        shared = self.shared()
        index = meta["map_index"][row].long().clone()  # [20]
        if dropped is not None:
            index[torch.as_tensor(dropped, dtype=torch.bool)] = -1
        present = index >= 0
        map_mean = shared["empty_map_mean"].expand(NUM_MAPS, *shared["empty_map_mean"].shape).clone()
        map_std = shared["empty_map_std"].expand(NUM_MAPS, *shared["empty_map_std"].shape).clone()
        if present.any():
            lo, hi = int(index[present].min()), int(index[present].max()) + 1
            map_mean[present] = f.get_slice("map_mean")[lo:hi][index[present] - lo]
            map_std[present] = f.get_slice("map_std")[lo:hi][index[present] - lo]
        out = {
            "face_mean": f.get_slice("face_mean")[row : row + 1][0],
            "face_std": f.get_slice("face_std")[row : row + 1][0],
            "map_mean": map_mean,
            "map_std": map_std,
        }
        if self.has_text:
            if caption_index is None:
                out["prompt_embeds"], out["pooled_embeds"] = shared["empty_prompt_embeds"], shared["empty_pooled_embeds"]
            else:
                k = int(meta["caption_start"][row]) + caption_index
                out["prompt_embeds"] = f.get_slice("prompt_embeds")[k : k + 1][0]
                out["pooled_embeds"] = f.get_slice("pooled_embeds")[k : k + 1][0]
        return out


def open_cache(cfg, backbone, split: Optional[str] = "train", config_path: Optional[str] = None,
               check_captions: bool = True) -> LatentCache:
    """Open `cfg.data.cache_dir` for training, refusing a stale or incomplete cache.

    backbone: the `Backbone` in use (full check, encoder weights included) or an identity dict
    (`cache_identity(...)`, or `backbone.identity()` for a check on the keys it has).
    split: "train", "test", "both" or None (no id check). Every problem is a one-line CacheError
    that says what differs and the command that (re)builds the cache.
    """
    cache_dir = require_cache_dir(cfg)
    identity = backbone if isinstance(backbone, dict) else cache_identity(backbone)
    where = f"latent cache {cache_dir}"
    manifest = read_manifest(cache_dir)
    if manifest is None:
        raise CacheError(f"no {where} ({MANIFEST} missing); build it with: {build_command(cfg, config_path)}")
    diff = _settings_difference(manifest, cfg, identity)
    if diff:
        raise CacheError(f"{where} is stale: {diff}; rebuild it with: {build_command(cfg, config_path, True)}")
    if not (cache_dir / SHARED).is_file():
        raise CacheError(f"{where} is incomplete: {SHARED} is missing; complete it with: {build_command(cfg, config_path)}")
    bad = [s["file"] for s in manifest["shards"] if not _shard_ok(cache_dir, s)]
    if bad:
        raise CacheError(f"{where} is incomplete: {len(bad)} shard file(s) missing or truncated, e.g. {bad[0]}; "
                         f"complete it with: {build_command(cfg, config_path)}")
    cache = LatentCache(cache_dir, manifest)
    if split is not None:
        wanted = _split_ids(cfg, split)
        missing = [i for i in wanted if i not in cache.locations]
        if missing:
            shown = ", ".join(map(str, missing[:5]))
            raise CacheError(f"{where} lacks {len(missing)} of the {len(wanted)} ids of the {split} split "
                             f"(e.g. {shown}); complete it with: {build_command(cfg, config_path)}")
        if check_captions and Path(cfg.data.root).is_dir():
            changed = _changed_caption_shards(cfg, manifest, set(wanted))
            if changed:
                raise CacheError(f"{where} is stale: the captions of {len(changed)} shard(s) changed since it was "
                                 f"built (e.g. {changed[0]}); update it with: {build_command(cfg, config_path)}")
            changed = [(sh["file"], why) for sh in manifest["shards"] if set(wanted).intersection(sh["ids"])
                       and (why := _changed_source(Path(cfg.data.root), sh))]
            if changed:
                raise CacheError(f"{where} is stale: faces or masks of {len(changed)} shard(s) changed since it was "
                                 f"built (e.g. {changed[0][1]} in {changed[0][0]}); update it with: "
                                 f"{build_command(cfg, config_path)}")
    return cache


def _split_ids(cfg, split: str) -> list[int]:
    if split not in ("train", "test", "both"):
        raise ValueError(f"split must be train, test or both, got {split!r}")
    ids: list[int] = []
    seen = set()
    for name in ("train", "test") if split == "both" else (split,):
        for i in read_split(cfg.data.root, split_spec(name, cfg.data)):
            if i not in seen:
                seen.add(i)
                ids.append(i)
    return ids


def _changed_caption_shards(cfg, manifest: dict, wanted: Optional[set] = None) -> list[str]:
    shards = [s for s in manifest["shards"] if wanted is None or wanted.intersection(s["ids"])]
    all_ids = [i for s in shards for i in s["ids"]]
    captions = read_captions(cfg.data.root, all_ids)
    changed = []
    for s in shards:
        if any(i not in captions for i in s["ids"]):
            continue  # captions unavailable here: nothing to compare against
        if _captions_digest(s["ids"], captions) != s["captions_sha1"]:
            changed.append(s["file"])
    return changed


# --------------------------------------------------------------------------------------------
# The cached dataset


class CachedFaceDataset(torch.utils.data.Dataset):
    """`FaceDataset`'s twin that reads the cache instead of pixels.

    Same ids, same (seed, epoch, id) choices via `sample_choice`. Items: id, caption (""=dropped),
    caption_index, drop_maps bool [20], face_mean/face_std [C,h,w], map_mean/map_std [20,C,h,w]
    (absent and dropped maps = the empty map), prompt_embeds [L,D], pooled_embeds [Dp];
    tensors in the cache dtype. `cached_batch_inputs(collate(items), dataset.vae_config, gen)`
    then gives the training step's inputs.
    """

    def __init__(self, cache: LatentCache, ids: Sequence[int], seed: int = 0, train: bool = True,
                 drop_text_prob: float = 0.1, drop_image_prob: float = 0.1, drop_mask_prob: float = 0.0):
        missing = [i for i in ids if i not in cache.locations]
        if missing:
            raise CacheError(f"latent cache {cache.dir} lacks {len(missing)} of {len(ids)} ids (e.g. {missing[0]})")
        self.cache, self.ids = cache, list(ids)
        self.seed, self.train = seed, train
        self.drop_text_prob, self.drop_image_prob, self.drop_mask_prob = drop_text_prob, drop_image_prob, drop_mask_prob
        self.epoch = 0

    @classmethod
    def from_config(cls, cfg, cache: LatentCache, split: str = "train", seed: int = 0,
                    train: Optional[bool] = None) -> "CachedFaceDataset":
        train = (split == "train") if train is None else train
        return cls(cache, read_split(cfg.data.root, split_spec(split, cfg.data)), seed, train, cfg.data.drop_text_prob,
                   cfg.data.drop_image_prob, cfg.data.drop_mask_prob)

    @property
    def vae_config(self) -> dict:
        return self.cache.vae_config

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def choice(self, image_id: int, epoch: Optional[int] = None) -> SampleChoice:
        epoch = self.epoch if epoch is None else epoch
        return sample_choice(self.seed, epoch, image_id, len(self.cache.captions(image_id)),
                             self.drop_text_prob, self.drop_image_prob, self.train, self.drop_mask_prob)

    def __getitem__(self, index) -> dict:
        # `(index, epoch)` pairs, as for FaceDataset, carry the epoch into loader workers.
        index, epoch = index if isinstance(index, tuple) else (index, None)
        i = self.ids[index]
        choice = self.choice(i, epoch)
        captions = self.cache.captions(i)
        item = {
            "id": i,
            "caption": "" if choice.drop_text else captions[choice.caption_index],
            "caption_index": choice.caption_index,
            "drop_maps": torch.from_numpy(choice.drop_maps),
        }
        item.update(self.cache.read(i, None if choice.drop_text else choice.caption_index, choice.drop_maps))
        return item


# --------------------------------------------------------------------------------------------
# Building


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
                  text: bool = True) -> dict:
    """Encode one shard's samples; returns the tensors of its file."""
    from .. import encoding

    vae, L = backbone.vae, cfg.max_sequence_length
    device = next(vae.parameters()).device
    ids, face_mean, face_std, map_mean, map_std, map_index = [], [], [], [], [], []
    prompt_embeds, pooled_embeds, caption_start = [], [], [0]
    rows = 0
    for batch in loader_batches:
        images = batch["image"].to(device)
        stack = condition_stack_torch(batch["labels"].to(device), cfg.model.global_map)  # [b,20,3,S,S]
        b = stack.shape[0]
        m, s = encoding.encode_distribution(vae, images)
        face_mean.append(m.to(dtype).cpu())
        face_std.append(s.to(dtype).cpu())
        flat = stack.flatten(0, 1)
        nonempty = flat.flatten(1).amax(dim=1) > 0
        index = torch.full((b * NUM_MAPS,), -1, dtype=torch.int32)
        if nonempty.any():
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
    from .. import encoding

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
    `text=False` builds a latents-only cache (captions are then encoded during training).
    """
    from tqdm.auto import tqdm

    from ..models.builder import load_backbone

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

    def refuse(diff):
        return CacheError(f"latent cache {cache_dir} does not match this config: {diff}; pass --overwrite "
                          f"to replace it, or choose another --set data.cache_dir=DIR")

    manifest = read_manifest(cache_dir)
    if manifest is not None and not overwrite and backbone is None:
        diff = _settings_difference(manifest, cfg, None, text)  # fail before loading a large backbone
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
        diff = _settings_difference(manifest, cfg, identity, text)
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
                        text=text, shared=SHARED, shard_size=None, shards=[])

    # Plan: repair listed shards that are missing/truncated/stale, then new shards for the rest.
    todo: list[tuple[Optional[int], list[int]]] = []  # (index of a listed shard or None, ids)
    cached = set()
    for s, shard in enumerate(manifest["shards"]):
        cached.update(shard["ids"])
        unknown = [i for i in shard["ids"] if i not in captions]
        if unknown:  # ids of another split: read their captions too
            captions.update(read_captions(root, unknown))
        ok = _shard_ok(cache_dir, shard)
        if ok and all(i in captions for i in shard["ids"]):  # captions changed since → re-encode
            ok = _captions_digest(shard["ids"], captions) == shard["captions_sha1"]
        if ok:  # a face or mask replaced, touched with new bytes or deleted since → re-encode
            ok = _changed_source(root, shard) is None
        if not ok:
            check_files(root, shard["ids"], captions, need_faces=True)
            todo.append((s, list(shard["ids"])))
    new_ids = [i for i in ids if i not in cached]
    itemsize = torch.empty(0, dtype=dtype).element_size()
    maps_per_sample = _mean_present_maps(root, new_ids or ids, cfg.data.size)
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
        f"{len(pending)} to encode in {len(todo)} shard(s) of <= {shard_size}; storing {_DTYPE_NAMES[dtype]}")
    log(f"projected size of the {split} cache: {_fmt_bytes(total_est['total'])} (faces {_fmt_bytes(total_est['faces'])}, "
        f"mask maps {_fmt_bytes(total_est['maps'])} at ~{maps_per_sample:.1f} non-empty maps/sample, captions "
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
            tensors = _encode_shard(backbone, cfg, shard_batches, captions, dtype, bar, text)
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


# --------------------------------------------------------------------------------------------
# Command line


def _quiet_libraries() -> None:
    """Per-batch library warnings (CLIP's 77-token truncation, dtype casts) would bury the progress bar."""
    import transformers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()


def main(argv: Optional[list[str]] = None) -> int:
    from ..config import ConfigError, load_config
    from ..models.builder import BackboneError

    parser = argparse.ArgumentParser(
        prog="python -m face_mogle.data.cache",
        description="Pre-encode faces, mask maps and captions into data.cache_dir (VAE posteriors, T5 + CLIP "
                    "embeddings). Resumable: rerun the same command to continue an interrupted build.",
    )
    parser.add_argument("--config", required=True, help="YAML config (e.g. configs/face-mogle.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable (e.g. --set data.cache_dir=data/mmcelebahq/cache/512)")
    parser.add_argument("--split", choices=("train", "test", "both"), default="both")
    parser.add_argument("--batch_size", type=int, default=8, help="samples encoded together (x21 images)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--pretrained", default=None, help="FLUX folder or 'tiny' (overrides the config)")
    parser.add_argument("--shard_size", type=int, default=None,
                        help=f"samples per shard (default: up to {MAX_SHARD_SIZE}, about 1 GiB per shard)")
    parser.add_argument("--max_shards", type=int, default=None, help="stop after writing this many shards")
    parser.add_argument("--overwrite", action="store_true", help="delete an incompatible cache and start over")
    parser.add_argument("--no_text", action="store_true",
                        help="latents only: skip the T5/CLIP embeddings (at FLUX.1-dev scale ~4 MiB per caption)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        overrides = list(args.overrides) + ([f"pretrained={args.pretrained}"] if args.pretrained else [])
        cfg = load_config(args.config, overrides)
        if args.shard_size is not None and args.shard_size < 1:
            raise CacheError(f"--shard_size must be >= 1, got {args.shard_size}")
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise CacheError("--device cuda: no CUDA device is available (use --device cpu)")
        require_cache_dir(cfg)
        build_cache(cfg, split=args.split, batch_size=args.batch_size, device=device,
                    shard_size=args.shard_size, overwrite=args.overwrite, max_shards=args.max_shards,
                    progress=not args.no_progress, config_path=args.config, quiet=True, text=not args.no_text)
    except (CacheError, ConfigError, DataError, BackboneError, MaskError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
