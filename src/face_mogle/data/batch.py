"""A data batch → exactly what one training step reads, with or without the latent cache.

Both functions return the same dict:

    x0             [B, N, 4C]      face tokens (VAE posterior sample, scaled and packed)
    mask_latents   [B, 20, N, 4C]  one token map per condition map (dropped local maps = the empty map;
                                   absent in `train.mode: base`, which has no condition stream)
    prompt_embeds  [B, L, D]       T5 sequence of the chosen caption ("" when the text was dropped)
    pooled_embeds  [B, Dp]         pooled CLIP vector of the same caption

`encode_batch` encodes a `FaceDataset` batch (pixels, labels, captions) with the frozen backbone;
`cached_batch_inputs` samples the stored posteriors of a `CachedFaceDataset` batch. Random draws
happen in the same order (face noise, then map noise, same shapes), so with the same generator and
a cache stored in the backbone's own dtype the two agree to float precision, sampled or not.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Optional

import torch

from .. import encoding
from .masks import condition_stack_torch, drop_maps


def _vae_like(vae_config) -> object:
    """`encoding.latent_tokens` reads `vae.config.{scaling,shift}_factor`: accept a VAE or its config."""
    if hasattr(vae_config, "config"):
        return vae_config
    if isinstance(vae_config, dict):
        vae_config = SimpleNamespace(**vae_config)
    return SimpleNamespace(config=vae_config)


def encode_batch(batch: dict, backbone, cfg, generator: Optional[torch.Generator] = None,
                 sample: bool = True, with_masks: bool = True) -> dict:
    """Encode a `FaceDataset` batch on the fly (the uncached path).

    batch: "image" [B,3,S,S] in [0,1], "labels" [B,S,S], "drop_maps" bool [B,20], "caption" list.
    The condition stack is built from the labels in `cfg.model.global_map` mode, the dropped
    maps zeroed, and every map encoded like an image; `sample=False` takes posterior means.
    """
    vae = backbone.vae
    device = next(vae.parameters()).device
    face_mean, face_std = encoding.encode_distribution(vae, batch["image"].to(device))
    out = {"x0": encoding.latent_tokens(vae, face_mean, face_std, sample, generator)}
    if with_masks:  # `train.mode: base` has no condition stream
        stack = condition_stack_torch(batch["labels"].to(device), cfg.model.global_map)
        stack = drop_maps(stack, batch["drop_maps"].to(device))
        b, e = stack.shape[:2]
        map_mean, map_std = encoding.encode_distribution(vae, stack.flatten(0, 1))
        maps = encoding.latent_tokens(vae, map_mean, map_std, sample, generator)
        out["mask_latents"] = maps.view(b, e, *maps.shape[1:])
    out["prompt_embeds"], out["pooled_embeds"] = encoding.encode_prompts(
        backbone, batch["caption"], cfg.max_sequence_length
    )
    return out


def cached_batch_inputs(batch: dict, vae_config, generator: Optional[torch.Generator] = None,
                        sample: bool = True, device=None,
                        encode_text: Optional[Callable[[list], tuple]] = None) -> dict:
    """Turn a `CachedFaceDataset` batch into the training step's inputs (the cached path).

    batch: "face_mean"/"face_std" [B,C,h,w], "map_mean"/"map_std" [B,20,C,h,w] (dropped maps
    already replaced by the empty map's posterior), "prompt_embeds" [B,L,D], "pooled_embeds" [B,Dp].
    `vae_config`: the VAE, its config, or `CachedFaceDataset.vae_config` (scaling/shift factors).
    A latents-only cache (built with --no_text) has no embeddings: then `encode_text(captions)`
    must return them, e.g. `lambda c: encoding.encode_prompts(backbone, c, cfg.max_sequence_length)`.
    """
    vae = _vae_like(vae_config)
    device = device if device is not None else (generator.device if generator is not None else batch["face_mean"].device)
    face_mean = batch["face_mean"].to(device, torch.float32)
    face_std = batch["face_std"].to(device, torch.float32)
    out = {"x0": encoding.latent_tokens(vae, face_mean, face_std, sample, generator)}
    if "map_mean" in batch:  # a base-mode dataset gives no maps (no condition stream)
        map_mean = batch["map_mean"].to(device, torch.float32)
        map_std = batch["map_std"].to(device, torch.float32)
        b, e = map_mean.shape[:2]
        maps = encoding.latent_tokens(vae, map_mean.flatten(0, 1), map_std.flatten(0, 1), sample, generator)
        out["mask_latents"] = maps.view(b, e, *maps.shape[1:])
    if "prompt_embeds" in batch:
        out["prompt_embeds"], out["pooled_embeds"] = batch["prompt_embeds"].to(device), batch["pooled_embeds"].to(device)
    elif encode_text is not None:
        out["prompt_embeds"], out["pooled_embeds"] = encode_text(list(batch["caption"]))
    else:
        raise ValueError("this batch comes from a latents-only cache (--no_text): pass encode_text")
    return out
