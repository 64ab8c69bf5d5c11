"""From pixels and words to the tokens the transformer reads, and back.

Shared by training, the latent cache and sampling, so all three encode exactly alike:
images → VAE posterior → (z − shift) · scale → 2×2-packed tokens; prompts → T5 sequence + pooled
CLIP vector. Identical inputs are encoded once (many mask maps are the same empty image).
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
from diffusers import FluxPipeline

from .models.builder import Backbone


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] → [B, (h/2)(w/2), 4C] (FLUX's 2×2 patch tokens)."""
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack(tokens: torch.Tensor, size: int, vae_scale_factor: int) -> torch.Tensor:
    return FluxPipeline._unpack_latents(tokens, size, size, vae_scale_factor)


def image_ids(size: int, token_pixels: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """RoPE position ids of the image tokens of a size×size image: [N, 3]."""
    side = size // token_pixels
    return FluxPipeline._prepare_latent_image_ids(1, side, side, device, dtype)


def _unique_rows(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deduplicate identical images: (unique [U, ...], index [B] into unique)."""
    flat = images.flatten(1)
    unique, inverse = torch.unique(flat, dim=0, return_inverse=True)
    return unique.view(-1, *images.shape[1:]), inverse


@torch.no_grad()
def encode_distribution(vae, images: torch.Tensor, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, 3, H, W] in [0, 1] → posterior (mean, std) [B, C, h, w], in float32.

    Identical images are encoded once.
    """
    unique, inverse = _unique_rows(images)
    means, stds = [], []
    dtype = next(vae.parameters()).dtype
    for chunk in unique.split(batch_size):
        dist = vae.encode((chunk * 2 - 1).to(dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means)[inverse], torch.cat(stds)[inverse]


def latent_tokens(
    vae,
    mean: torch.Tensor,
    std: torch.Tensor,
    sample: bool,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Posterior → scaled, packed tokens [B, N, 4C]; `sample` draws z, else takes the mode."""
    z = mean
    if sample:
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + std * noise
    shift = vae.config.shift_factor or 0.0
    return pack((z - shift) * vae.config.scaling_factor)


def encode_images(vae, images: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] → packed latent tokens [B, N, 4C]."""
    mean, std = encode_distribution(vae, images)
    return latent_tokens(vae, mean, std, sample, generator)


def encode_condition_stack(vae, stack: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
    """Condition stacks [B, E, 3, H, W] → mask latents [B, E, N, 4C]."""
    b, e = stack.shape[:2]
    tokens = encode_images(vae, stack.flatten(0, 1), sample, generator)
    return tokens.view(b, e, *tokens.shape[1:])


@torch.no_grad()
def decode_tokens(vae, tokens: torch.Tensor, size: int, vae_scale_factor: int) -> torch.Tensor:
    """Packed latent tokens → images [B, 3, size, size] in [0, 1]."""
    z = unpack(tokens, size, vae_scale_factor)
    z = z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
    dtype = next(vae.parameters()).dtype
    images = vae.decode(z.to(dtype)).sample.float()
    return ((images + 1) / 2).clamp(0, 1)


@torch.no_grad()
def encode_prompts(
    backbone: Backbone, prompts: Sequence[str], max_sequence_length: int, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts → (T5 sequence [B, L, D], pooled CLIP [B, Dp]); each distinct prompt runs once."""
    prompts = list(prompts)
    distinct = sorted(set(prompts))
    pipe = backbone.pipeline()
    device = device or next(backbone.text_encoder_2.parameters()).device
    with _quiet_truncation():  # captions longer than the encoders' windows are cut, as in FLUX
        t5 = pipe._get_t5_prompt_embeds(distinct, max_sequence_length=max_sequence_length, device=device)
        pooled = pipe._get_clip_prompt_embeds(distinct, device=device)
    index = torch.tensor([distinct.index(p) for p in prompts], device=t5.device)
    return t5[index], pooled[index]


def unread_words(backbone: Backbone, prompt: str, max_sequence_length: int) -> list[str]:
    """The words of `prompt` the T5 encoder never sees: unknown to its tokenizer (read as <unk>) or past
    its `max_sequence_length` tokens (cut, as FLUX cuts). Empty for what a full T5 reads; the tiny demo
    encoder knows only the SynthFaces caption words, and a user should hear which words it drops."""
    tok = backbone.tokenizer_2
    enc = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
    kept = max_sequence_length - 1  # FLUX truncates to the window, </s> included
    unread: list[str] = []
    last_end = None  # where the previous unread piece ended: a piece starting there continues its word
    for i, (token, (a, b)) in enumerate(zip(enc.input_ids, enc.offset_mapping)):
        if token != tok.unk_token_id and i < kept:
            last_end = None
        elif a == last_end:
            unread[-1] += prompt[a:b]
            last_end = b
        else:
            unread.append(prompt[a:b])
            last_end = b
    return unread


@contextlib.contextmanager
def _quiet_truncation():
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    d, t = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(d)
        tlog.set_verbosity(t)


def text_ids(length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(length, 3, device=device, dtype=dtype)
