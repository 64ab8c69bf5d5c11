"""Opening a cache for training: the validated `LatentCache` and its dataset, `CachedFaceDataset`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ...labels import NUM_MAPS
from ...utils import DTYPES
from ..dataset import SampleChoice, read_split, sample_choice, split_spec
from .fingerprint import _changed_source, cache_identity
from .manifest import (MANIFEST, SHARED, CacheError, _changed_caption_shards, _settings_difference, shard_problem,
                       _split_ids, build_command, read_manifest, require_cache_dir, wants_maps)


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

    def read(self, image_id: int, caption_index: Optional[int], dropped: Optional[np.ndarray] = None,
             maps: bool = True) -> dict:
        """Stored tensors of one sample; caption_index None = the empty caption; `dropped`
        (bool [20], 0 = the global map) maps are replaced by the empty map like absent ones;
        `maps=False` reads no maps (a base-mode run has no condition stream)."""
        s, row = self.locations[image_id]
        f = self._handle(s)
        meta = self._meta[s]
        shared = self.shared()
        out = {
            "face_mean": f.get_slice("face_mean")[row : row + 1][0],
            "face_std": f.get_slice("face_std")[row : row + 1][0],
        }
        if maps:
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
            out["map_mean"], out["map_std"] = map_mean, map_std
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
    bad = [why for s in manifest["shards"] if (why := shard_problem(cache_dir, s))]
    if bad:
        raise CacheError(f"{where} is incomplete: {len(bad)} shard file(s) missing, truncated or not matching the "
                         f"manifest, e.g. {bad[0]}; complete it with: {build_command(cfg, config_path)}")
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


# The cached dataset


class CachedFaceDataset(torch.utils.data.Dataset):
    """`FaceDataset`'s twin that reads the cache instead of pixels.

    Same ids, same (seed, epoch, id) choices via `sample_choice`. Items: id, caption (""=dropped),
    caption_index, drop_maps bool [20], face_mean/face_std [C,h,w], map_mean/map_std [20,C,h,w]
    (absent and dropped maps = the empty map; none for a `train.mode: base` config), prompt_embeds
    [L,D], pooled_embeds [Dp];
    tensors in the cache dtype. `cached_batch_inputs(collate(items), dataset.vae_config, gen)`
    then gives the training step's inputs.
    """

    def __init__(self, cache: LatentCache, ids: Sequence[int], seed: int = 0, train: bool = True,
                 drop_text_prob: float = 0.1, drop_image_prob: float = 0.1, drop_mask_prob: float = 0.0,
                 maps: bool = True):
        missing = [i for i in ids if i not in cache.locations]
        if missing:
            raise CacheError(f"latent cache {cache.dir} lacks {len(missing)} of {len(ids)} ids (e.g. {missing[0]})")
        self.cache, self.ids = cache, list(ids)
        self.seed, self.train = seed, train
        self.drop_text_prob, self.drop_image_prob, self.drop_mask_prob = drop_text_prob, drop_image_prob, drop_mask_prob
        self.maps = maps  # False: items without map_mean/map_std (train.mode base)
        self.epoch = 0

    @classmethod
    def from_config(cls, cfg, cache: LatentCache, split: str = "train", seed: int = 0,
                    train: Optional[bool] = None) -> "CachedFaceDataset":
        train = (split == "train") if train is None else train
        return cls(cache, read_split(cfg.data.root, split_spec(split, cfg.data)), seed, train, cfg.data.drop_text_prob,
                   cfg.data.drop_image_prob, cfg.data.drop_mask_prob, maps=wants_maps(cfg))

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
        item.update(self.cache.read(i, None if choice.drop_text else choice.caption_index, choice.drop_maps, self.maps))
        return item
