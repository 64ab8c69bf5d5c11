"""Face-MoGLE: the FLUX transformer with scoped LoRA, fed condition tokens made by MoGLE."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..config import ModelConfig
from .identity_tokens import IdentityError, IdentityProjector, IdentityTokens, identity_ids
from .mogle import MoGLE
from .transformer import StreamOptions, add_lora, load_lora, save_lora, three_stream_forward, unreachable_lora_parameters

LORA_FILE = "pytorch_lora_weights.safetensors"
MOGLE_FILE = "mogle.safetensors"
OFFICIAL_MOGLE_FILE = "mogle.pt"
IDENTITY_FILE = "identity.safetensors"


class FaceMoGLE(nn.Module):
    """Trainable parts (LoRA + MoGLE) around a frozen FLUX transformer.

    forward(noisy [B,N,C], timestep [B] in [0,1], mask_latents [B,E,N,C] or None, text...) → [B,N,C]
    With `model.identity.encoder` set, also an identity projector: `identity` [B, D] embeddings become
    K tokens of the condition or text stream; with no identity given, nothing changes.
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
        # built after MoGLE, so a run's LoRA and MoGLE start from the same weights with or without it
        ident = cfg.identity
        self.identity = None if ident.encoder is None else IdentityProjector(
            ident.embed_dim, transformer.config.num_attention_heads * transformer.config.attention_head_dim,
            ident.num_tokens)

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
        identity: Optional[torch.Tensor] = None,
        identity_keep: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """`identity`: [B, D] embeddings (None: no identity); `identity_keep` [B] bool: the samples that
        keep theirs (training's identity dropout) — the others run without identity tokens, as a batch
        of their own (a token count is per batch)."""
        if identity is not None and identity_keep is not None and not bool(identity_keep.all()):
            rows = [identity_keep, ~identity_keep]
            out = None
            for keep, r in zip((True, False), rows):
                if not bool(r.any()):
                    continue
                pick = lambda x: None if x is None else x[r]  # noqa: E731
                part = self(noisy[r], timestep[r], pick(mask_latents), prompt_embeds[r], pooled_embeds[r], txt_ids,
                            img_ids, pick(guidance), condition_scale, pick(gate_timestep), identity[r] if keep else None)
                out = part.new_zeros(noisy.shape[:2] + part.shape[2:]) if out is None else out
                out[r] = part
            return out
        cond = None
        if mask_latents is not None:
            cond = self.condition_tokens(mask_latents, noisy, timestep, gate_timestep)
        opts = StreamOptions(self.options.latent_lora, self.options.union_cond_attn, condition_scale)
        return three_stream_forward(
            self.transformer, noisy, prompt_embeds, pooled_embeds, timestep, img_ids, txt_ids,
            guidance=guidance, condition_tokens=cond, options=opts, identity=self.identity_tokens(identity),
        )

    def identity_tokens(self, identity: Optional[torch.Tensor]) -> Optional[IdentityTokens]:
        if identity is None:
            return None
        if self.identity is None:
            raise IdentityError("this run was trained without identity (model.identity.encoder is null): it takes "
                                "no identity; train one with an identity stage (README, Identity)")
        tokens = self.identity(identity)
        return IdentityTokens(tokens, identity_ids(tokens.shape[1], tokens.device), self.cfg.identity.entry)

    def base(self, noisy, timestep, prompt_embeds, pooled_embeds, txt_ids, img_ids, guidance=None) -> torch.Tensor:
        """The frozen base DiT alone: no condition tokens, every LoRA layer bypassed (its text-to-image
        velocity, as before the Face-MoGLE stage)."""
        return three_stream_forward(self.transformer, noisy, prompt_embeds, pooled_embeds, timestep, img_ids, txt_ids,
                                    guidance=guidance, options=StreamOptions(latent_lora=False))

    def trainable_parameters(self) -> list[nn.Parameter]:
        unreachable = set(unreachable_lora_parameters(self.transformer, self.options.latent_lora))
        lora = [p for n, p in self.transformer.named_parameters() if "lora_" in n and n not in unreachable]
        return lora + list(self.mogle.parameters()) + ([] if self.identity is None else list(self.identity.parameters()))

    def freeze_base(self) -> None:
        """Only LoRA and MoGLE learn; the base transformer (and LoRA that cannot matter) is frozen."""
        unreachable = set(unreachable_lora_parameters(self.transformer, self.options.latent_lora))
        for name, p in self.transformer.named_parameters():
            p.requires_grad_("lora_" in name and name not in unreachable)
        self.mogle.requires_grad_(True)
        if self.identity is not None:
            self.identity.requires_grad_(True)

    # ---------------------------------------------------------------------------------------

    def save_weights(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        save_lora(self.transformer, folder / LORA_FILE)
        self.mogle.save(folder / MOGLE_FILE)
        if self.identity is not None:
            from ..utils import atomic_save_safetensors

            atomic_save_safetensors({k: v.detach().contiguous() for k, v in self.identity.state_dict().items()},
                                    folder / IDENTITY_FILE, metadata={"format": "pt"})

    def load_weights(self, folder: str | os.PathLike, with_identity: bool = True) -> None:
        """Load `pytorch_lora_weights.safetensors` + `mogle.safetensors` (or the official `mogle.pt`),
        and the identity projector where the model has one (unless `with_identity` is False)."""
        folder = Path(folder)
        load_lora(self.transformer, folder / LORA_FILE)
        mogle = folder / MOGLE_FILE
        if not mogle.is_file() and (folder / OFFICIAL_MOGLE_FILE).is_file():
            mogle = folder / OFFICIAL_MOGLE_FILE
        self.mogle.load(mogle)
        if self.identity is not None and with_identity:
            self._load_identity(folder / IDENTITY_FILE)

    def _load_identity(self, path: Path) -> None:
        from ..utils import read_safetensors

        if not path.is_file():
            raise FileNotFoundError(f"identity projector weights not found: {path} (the run's config sets "
                                    f"model.identity.encoder {self.cfg.identity.encoder})")
        state = read_safetensors(path)
        want = self.identity.state_dict()
        bad = sorted(k for k in set(want) | set(state) if k not in state or k not in want or state[k].shape != want[k].shape)
        if bad:
            raise ValueError(f"identity projector file {path} does not match model.identity (embed_dim "
                             f"{self.cfg.identity.embed_dim}, num_tokens {self.cfg.identity.num_tokens}): {bad[0]}")
        self.identity.load_state_dict(state)
