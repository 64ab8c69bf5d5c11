"""Face-MoGLE: the FLUX transformer with scoped LoRA, fed condition tokens made by MoGLE."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..config import ModelConfig
from .mogle import MoGLE
from .transformer import StreamOptions, add_lora, load_lora, save_lora, three_stream_forward, unreachable_lora_parameters

LORA_FILE = "pytorch_lora_weights.safetensors"
MOGLE_FILE = "mogle.safetensors"
OFFICIAL_MOGLE_FILE = "mogle.pt"


class FaceMoGLE(nn.Module):
    """Trainable parts (LoRA + MoGLE) around a frozen FLUX transformer.

    forward(noisy [B,N,C], timestep [B] in [0,1], mask_latents [B,E,N,C] or None, text...) → [B,N,C]
    """

    def __init__(self, transformer: nn.Module, cfg: ModelConfig, with_lora: bool = True):
        super().__init__()
        self.cfg = cfg
        self.transformer = transformer
        latent_dim = transformer.config.in_channels
        if with_lora:
            add_lora(transformer, cfg.lora)
        self.mogle = MoGLE(
            num_experts=cfg.num_experts, input_dim=latent_dim, hidden_dim=cfg.expert_hidden_dim,
            output_dim=latent_dim, has_expert=cfg.has_expert, has_gating=cfg.has_gating,
            scalar_gating=cfg.scalar_gating, experts=cfg.experts, gate_global_prior=cfg.gate_global_prior,
        )
        self.options = StreamOptions(latent_lora=cfg.latent_lora, union_cond_attn=cfg.union_cond_attn)

    def condition_tokens(self, mask_latents, noisy, timestep, gate_timestep=None) -> torch.Tensor:
        # The gate is trained on t in [0,1]; `gate_timestep` lets a sampler feed another scale.
        gate_t = timestep if gate_timestep is None else gate_timestep
        return self.mogle(mask_latents, noisy, gate_t).to(noisy.dtype)

    def forward(
        self,
        noisy: torch.Tensor,
        timestep: torch.Tensor,
        mask_latents: Optional[torch.Tensor],
        prompt_embeds: torch.Tensor,
        pooled_embeds: torch.Tensor,
        txt_ids: torch.Tensor,
        img_ids: torch.Tensor,
        guidance: Optional[torch.Tensor] = None,
        condition_scale: float = 1.0,
        gate_timestep: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        cond = None
        if mask_latents is not None:
            cond = self.condition_tokens(mask_latents, noisy, timestep, gate_timestep)
        opts = StreamOptions(self.options.latent_lora, self.options.union_cond_attn, condition_scale)
        return three_stream_forward(
            self.transformer, noisy, prompt_embeds, pooled_embeds, timestep, img_ids, txt_ids,
            guidance=guidance, condition_tokens=cond, options=opts,
        )

    def base(self, noisy, timestep, prompt_embeds, pooled_embeds, txt_ids, img_ids, guidance=None) -> torch.Tensor:
        """The frozen base DiT alone: no condition tokens, every LoRA layer bypassed (its text-to-image
        velocity, as before the Face-MoGLE stage)."""
        return three_stream_forward(self.transformer, noisy, prompt_embeds, pooled_embeds, timestep, img_ids, txt_ids,
                                    guidance=guidance, options=StreamOptions(latent_lora=False))

    def trainable_parameters(self) -> list[nn.Parameter]:
        unreachable = set(unreachable_lora_parameters(self.transformer, self.options.latent_lora))
        lora = [p for n, p in self.transformer.named_parameters() if "lora_" in n and n not in unreachable]
        return lora + list(self.mogle.parameters())

    def freeze_base(self) -> None:
        """Only LoRA and MoGLE learn; the base transformer (and LoRA that cannot matter) is frozen."""
        unreachable = set(unreachable_lora_parameters(self.transformer, self.options.latent_lora))
        for name, p in self.transformer.named_parameters():
            p.requires_grad_("lora_" in name and name not in unreachable)
        self.mogle.requires_grad_(True)

    # ---------------------------------------------------------------------------------------

    def save_weights(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        save_lora(self.transformer, folder / LORA_FILE)
        self.mogle.save(folder / MOGLE_FILE)

    def load_weights(self, folder: str | os.PathLike) -> None:
        """Load `pytorch_lora_weights.safetensors` + `mogle.safetensors` (or the official `mogle.pt`)."""
        folder = Path(folder)
        load_lora(self.transformer, folder / LORA_FILE)
        mogle = folder / MOGLE_FILE
        if not mogle.is_file() and (folder / OFFICIAL_MOGLE_FILE).is_file():
            mogle = folder / OFFICIAL_MOGLE_FILE
        self.mogle.load(mogle)
