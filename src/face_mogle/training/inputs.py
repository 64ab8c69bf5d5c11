"""A data-loader batch → the tensors a training step consumes (encoding on the fly)."""

from __future__ import annotations

import torch

from ..data.masks import condition_stack_torch, drop_local_maps
from ..encoding import encode_distribution, encode_prompts, latent_tokens


@torch.no_grad()
def encode_batch(batch: dict, backbone, cfg, generator: torch.Generator, device, with_masks: bool = True) -> dict:
    """Faces → posterior-sampled tokens; labels → 20 maps (dropouts applied) → tokens; captions → embeddings.

    As the official trainer does, but with identical maps (absent classes, dropped maps) encoded once.
    """
    vae = backbone.vae
    images = batch["image"].to(device)
    mean, std = encode_distribution(vae, images)
    out = {"x0": latent_tokens(vae, mean, std, sample=True, generator=generator)}
    if with_masks:
        stack = condition_stack_torch(batch["labels"].to(device), cfg.model.global_map)
        stack = drop_local_maps(stack, batch["drop_maps"].to(device))
        b, e = stack.shape[:2]
        mean, std = encode_distribution(vae, stack.flatten(0, 1))
        tokens = latent_tokens(vae, mean, std, sample=True, generator=generator)
        out["mask_latents"] = tokens.view(b, e, *tokens.shape[1:])
    out["prompt_embeds"], out["pooled_embeds"] = encode_prompts(
        backbone, batch["caption"], cfg.max_sequence_length, device=device
    )
    return out
