"""Three-stream forward over diffusers' `FluxTransformer2DModel` weights, and LoRA scoping.

Text, image and condition tokens run through every double- and single-stream block together.
Condition tokens share the image stream's weights (x_embedder, norms, attention, MLP), get their
own adaLN modulation from timestep 0, and the RoPE ids of the image tokens they sit on. Attention
is joint over all three streams. LoRA adapters sit on the official target modules; with
`latent_lora=False` they act on condition tokens only, and image/text tokens are computed with
the untouched base weights (`base_layer`), so a LoRA can never change the base model's behaviour
on the other streams.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ConfigError, LoraConfig


@dataclass
class StreamOptions:
    latent_lora: bool = False  # LoRA on image/text tokens as well
    union_cond_attn: bool = True  # False: image/text and condition tokens do not attend to each other
    condition_scale: float = 1.0  # log(scale) added to image/text↔condition attention logits


# --------------------------------------------------------------------------------------------
# LoRA scoping


def _base(module: nn.Module) -> nn.Module:
    """The frozen layer under a peft LoRA wrapper (or the module itself)."""
    get = getattr(module, "get_base_layer", None)
    return get() if get is not None else module


def _linear(module: nn.Module, x: torch.Tensor, lora: bool) -> torch.Tensor:
    return module(x) if lora else _base(module)(x)


OFFICIAL_EXAMPLES = ("x_embedder", "transformer_blocks.*.attn.to_q", "single_transformer_blocks.*.proj_out")


def lora_target_regex(patterns: list[str]) -> str:
    """Official target names ('transformer_blocks.*.attn.to_q') → one regex peft full-matches."""
    parts = [re.escape(p).replace(r"\*", r"\d+") for p in patterns]
    return "^(" + "|".join(parts) + ")$"


def add_lora(transformer: nn.Module, cfg: LoraConfig, adapter_name: str = "default") -> None:
    """Insert LoRA adapters (peft) on the configured target modules of the transformer."""
    from peft import LoraConfig as PeftLoraConfig

    names = [n for n, m in transformer.named_modules() if isinstance(m, nn.Linear)]
    for pattern in cfg.target_modules:  # peft skips a name that matches nothing: a typo would train less
        if not any(re.fullmatch(lora_target_regex([pattern]), n) for n in names):
            raise ConfigError(f"config key 'model.lora.target_modules': {pattern!r} names no linear layer of the "
                              f"transformer (e.g. {', '.join(OFFICIAL_EXAMPLES)})")
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        init_lora_weights=cfg.init if cfg.init == "gaussian" else True,
        target_modules=lora_target_regex(cfg.target_modules),
    )
    transformer.add_adapter(peft_cfg, adapter_name=adapter_name)


def lora_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA weights in the diffusers file format: `transformer.<module>.lora_A.weight`."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer)
    return {f"transformer.{k}": v.detach().contiguous() for k, v in state.items()}


def save_lora(transformer: nn.Module, path: str | os.PathLike) -> None:
    """Write the LoRA file, recording the quantization of the base it was trained on."""
    from ..utils import atomic_save_safetensors
    from .quantization import quantized_scheme

    atomic_save_safetensors(lora_state_dict(transformer), path,
                            metadata={"format": "pt", "base_quantization": quantized_scheme(transformer)})


def _check_base_quantization(transformer: nn.Module, path: Path) -> None:
    """A LoRA learns the residual of the base it was trained on. One trained on a plain base and
    sampled on a weight-quantized one is the point of quantization (the images move a little), and
    the reverse works too: both are allowed, with a one-line warning naming the difference. Files
    without the record (the official release, older runs) were trained on a plain base."""
    import logging

    from safetensors import safe_open

    from .quantization import quantized_scheme

    try:
        with safe_open(str(path), "pt") as f:
            saved = (f.metadata() or {}).get("base_quantization", "none")
    except Exception:
        return  # read_safetensors names an unreadable file
    here = quantized_scheme(transformer)
    if saved != here:
        if saved.startswith("gguf-"):  # a GGUF base (pretrained_transformer) is a file, not a --quantize scheme
            match = f"a {saved.removeprefix('gguf-').upper()} GGUF file as pretrained_transformer matches it"
        elif here.startswith("gguf-"):
            match = "pretrained_transformer: null" + ("" if saved == "none" else f" with --quantize {saved}") + " matches it"
        else:
            match = f"--quantize {saved} matches it"
        logging.getLogger("face_mogle").warning(
            f"warning: LoRA file {path} was trained on a base quantized as {saved}; the base is loaded as {here} "
            f"(images differ slightly from the training base's; {match})")


def load_lora(transformer: nn.Module, path: str | os.PathLike, adapter_name: str = "default") -> None:
    """Load a diffusers-format LoRA file (ours or the official release) into existing adapters."""
    from peft.utils import set_peft_model_state_dict

    from ..utils import read_safetensors

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA weights not found: {path}")
    state = read_safetensors(path)
    _check_base_quantization(transformer, path)
    ours = {k.removeprefix("transformer."): v for k, v in state.items() if k.startswith("transformer.")}
    if not ours:
        raise ValueError(f"{path} holds no 'transformer.*' LoRA keys")
    expected = set(lora_state_dict(transformer))
    got = {f"transformer.{k}" for k in ours}
    if expected != got:
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise ValueError(
            f"LoRA file {path} does not match the model: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]}); check model.lora.* in the config"
        )
    current = lora_state_dict(transformer)
    for key, value in ours.items():
        want = current[f"transformer.{key}"].shape
        if value.shape != want:  # a different rank or width: the config does not match the file
            raise ValueError(f"LoRA file {path}: {key} has shape {tuple(value.shape)}, the model expects {tuple(want)}; check model.lora.r")
    result = set_peft_model_state_dict(transformer, ours, adapter_name=adapter_name)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"LoRA file {path}: unexpected keys {result.unexpected_keys[:3]}")


def unreachable_lora_parameters(transformer: nn.Module, latent_lora: bool) -> list[str]:
    """LoRA weights that cannot affect the image: with LoRA on condition tokens only, the last
    single block's query, MLP-in and output projections act solely on condition outputs, which are dropped.
    They stay in the LoRA file (format compatibility) but are not trained."""
    if latent_lora or not len(transformer.single_transformer_blocks):
        return []
    prefix = f"single_transformer_blocks.{len(transformer.single_transformer_blocks) - 1}."
    return [n for n, _ in transformer.named_parameters()
            if "lora_" in n and n.startswith((prefix + "proj_mlp.", prefix + "proj_out.", prefix + "attn.to_q."))]


# --------------------------------------------------------------------------------------------
# The forward


def _modulation(norm_linear: nn.Module, temb: torch.Tensor, lora: bool, chunks: int):
    return _linear(norm_linear, F.silu(temb), lora).chunk(chunks, dim=1)


def _modulate(x: torch.Tensor, norm: nn.Module, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return norm(x) * (1 + scale[:, None]) + shift[:, None]


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.unflatten(-1, (-1, head_dim))  # [B, S, H, Dh]


def _qkv(attn, x, lora: bool, added: bool = False, need_q: bool = True):
    """Project tokens to normalised query/key and value, each [B, S, H, Dh] (query None if not needed)."""
    hd = attn.head_dim
    if added:  # text tokens: their own projections, never LoRA
        q = attn.add_q_proj(x) if need_q else None
        k, v = attn.add_k_proj(x), attn.add_v_proj(x)
        nq, nk = attn.norm_added_q, attn.norm_added_k
    else:
        q = _linear(attn.to_q, x, lora) if need_q else None
        k, v = _linear(attn.to_k, x, lora), _linear(attn.to_v, x, lora)
        nq, nk = attn.norm_q, attn.norm_k
    return (None if q is None else nq(_heads(q, hd))), nk(_heads(k, hd)), _heads(v, hd)


def _attention(q, k, v, rope, mask, q_rope_len=None) -> torch.Tensor:
    """Joint attention over the concatenated streams; q/k/v [B, S, H, Dh] → [B, S_q, H*Dh].

    `q_rope_len` : queries are the first tokens only (their RoPE rows are the first ones).
    """
    q_rope = rope if q_rope_len is None else tuple(r[:q_rope_len] for r in rope)
    q = apply_rotary_emb(q, q_rope, sequence_dim=1)
    k = apply_rotary_emb(k, rope, sequence_dim=1)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2).flatten(2, 3).to(q.dtype)


def _cond_attention_mask(n_other: int, n_cond: int, opts: StreamOptions, device, dtype) -> Optional[torch.Tensor]:
    """Additive mask between the image/text block and the condition block (None when not needed)."""
    if n_cond == 0 or (opts.union_cond_attn and opts.condition_scale == 1.0):
        return None
    if opts.condition_scale <= 0:
        raise ValueError(f"condition_scale must be > 0, got {opts.condition_scale}")
    bias = -math.inf if not opts.union_cond_attn else math.log(opts.condition_scale)
    n = n_other + n_cond
    mask = torch.zeros(n, n, device=device, dtype=dtype)
    mask[n_other:, :n_other] = bias
    mask[:n_other, n_other:] = bias
    return mask


def double_block(block, img, txt, cond, temb, cond_temb, rope, mask, opts: StreamOptions):
    """One double-stream block over image, text and (optional) condition tokens."""
    lat = opts.latent_lora
    has_cond = cond is not None
    i_shift, i_scale, i_gate, i_shift2, i_scale2, i_gate2 = _modulation(block.norm1.linear, temb, lat, 6)
    t_shift, t_scale, t_gate, t_shift2, t_scale2, t_gate2 = _modulation(block.norm1_context.linear, temb, False, 6)
    attn = block.attn
    qi, ki, vi = _qkv(attn, _modulate(img, block.norm1.norm, i_shift, i_scale), lat)
    qt, kt, vt = _qkv(attn, _modulate(txt, block.norm1_context.norm, t_shift, t_scale), False, added=True)
    qs, ks, vs = [qt, qi], [kt, ki], [vt, vi]
    if has_cond:
        c_shift, c_scale, c_gate, c_shift2, c_scale2, c_gate2 = _modulation(block.norm1.linear, cond_temb, True, 6)
        qc, kc, vc = _qkv(attn, _modulate(cond, block.norm1.norm, c_shift, c_scale), True)
        qs, ks, vs = qs + [qc], ks + [kc], vs + [vc]
    out = _attention(torch.cat(qs, 1), torch.cat(ks, 1), torch.cat(vs, 1), rope, mask)
    n_txt, n_img = txt.shape[1], img.shape[1]
    a_txt, a_img, a_cond = out[:, :n_txt], out[:, n_txt : n_txt + n_img], out[:, n_txt + n_img :]

    img = img + i_gate[:, None] * _linear(attn.to_out[0], a_img.contiguous(), lat)
    img = img + i_gate2[:, None] * _feed_forward(block.ff, _modulate(img, block.norm2, i_shift2, i_scale2), lat)
    txt = txt + t_gate[:, None] * attn.to_add_out(a_txt.contiguous())
    txt = txt + t_gate2[:, None] * block.ff_context(_modulate(txt, block.norm2_context, t_shift2, t_scale2))
    if txt.dtype == torch.float16:
        txt = txt.clip(-65504, 65504)
    if has_cond:
        cond = cond + c_gate[:, None] * _linear(attn.to_out[0], a_cond.contiguous(), True)
        cond = cond + c_gate2[:, None] * _feed_forward(block.ff, _modulate(cond, block.norm2, c_shift2, c_scale2), True)
    return img, txt, cond


def _feed_forward(ff, x, lora: bool) -> torch.Tensor:
    # FeedForward.net = [GELU(proj), Dropout, Linear]; LoRA sits on the last Linear only.
    for module in ff.net[:-1]:
        x = module(x)
    return _linear(ff.net[-1], x, lora)


def single_block(block, hid, cond, temb, cond_temb, rope, mask, opts: StreamOptions, last: bool = False):
    """One single-stream block; `hid` is text+image tokens, `cond` the condition tokens.

    In the `last` block the condition tokens only serve as keys/values: their own output would be
    discarded, so it is not computed.
    """
    lat = opts.latent_lora
    attn = block.attn
    shift, scale, h_gate = _modulation(block.norm.linear, temb, lat, 3)
    h_norm = _modulate(hid, block.norm.norm, shift, scale)
    h_mlp = block.act_mlp(_linear(block.proj_mlp, h_norm, lat))
    q, k, v = _qkv(attn, h_norm, lat)
    n = hid.shape[1]
    q_len = None
    if cond is not None:
        shift, scale, c_gate = _modulation(block.norm.linear, cond_temb, True, 3)
        c_norm = _modulate(cond, block.norm.norm, shift, scale)
        qc, kc, vc = _qkv(attn, c_norm, True, need_q=not last)
        k, v = torch.cat([k, kc], 1), torch.cat([v, vc], 1)
        if last:  # condition queries would only produce discarded outputs: image/text queries only
            q_len, mask = n, None if mask is None else mask[:n]
        else:
            q = torch.cat([q, qc], 1)
    out = _attention(q, k, v, rope, mask, q_rope_len=q_len)
    hid = hid + h_gate[:, None] * _linear(block.proj_out, torch.cat([out[:, :n], h_mlp], 2), lat)
    if hid.dtype == torch.float16:
        hid = hid.clip(-65504, 65504)
    if cond is None or last:
        return hid, None
    c_mlp = block.act_mlp(_linear(block.proj_mlp, c_norm, True))
    cond = cond + c_gate[:, None] * _linear(block.proj_out, torch.cat([out[:, n:], c_mlp], 2), True)
    return hid, cond


def _time_embedding(transformer, timestep, guidance, pooled, dtype):
    t = timestep.to(dtype) * 1000
    if transformer.config.guidance_embeds:
        if guidance is None:
            raise ValueError("this backbone has guidance embeddings: pass a guidance value (1.0 in training)")
        return transformer.time_text_embed(t, guidance.to(dtype) * 1000, pooled)
    return transformer.time_text_embed(t, pooled)


def three_stream_forward(
    transformer,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    pooled_projections: torch.Tensor,
    timestep: torch.Tensor,
    img_ids: torch.Tensor,
    txt_ids: torch.Tensor,
    guidance: Optional[torch.Tensor] = None,
    condition_tokens: Optional[torch.Tensor] = None,
    condition_ids: Optional[torch.Tensor] = None,
    options: StreamOptions = StreamOptions(),
    identity=None,
) -> torch.Tensor:
    """Velocity prediction for the image tokens, [B, N_img, C].

    `timestep` is in [0, 1] (as diffusers' FluxPipeline passes it); condition tokens are packed
    VAE latents like the image tokens, and `condition_ids` default to `img_ids` (spatial alignment).
    `identity` (models.identity_tokens.IdentityTokens): tokens already in the model's width, appended
    to the condition or the text stream with their own RoPE ids.
    """
    tr = transformer
    lat = options.latent_lora
    img = _linear(tr.x_embedder, hidden_states, lat)
    dtype = img.dtype
    temb = _time_embedding(tr, timestep, guidance, pooled_projections, dtype)
    txt = tr.context_embedder(encoder_hidden_states)
    if identity is not None and identity.stream == "text":
        txt = torch.cat([txt, identity.tokens.to(dtype)], dim=1)
        txt_ids = torch.cat([txt_ids, identity.ids.to(txt_ids)], dim=0)

    cond = cond_temb = None
    ids = [txt_ids, img_ids]
    if condition_tokens is not None:
        cond = _linear(tr.x_embedder, condition_tokens, True)
        ids.append(img_ids if condition_ids is None else condition_ids)
    if identity is not None and identity.stream == "condition":
        cond = identity.tokens.to(dtype) if cond is None else torch.cat([cond, identity.tokens.to(dtype)], dim=1)
        ids.append(identity.ids.to(img_ids))
    if cond is not None:
        # Condition tokens are clean: their modulation comes from timestep 0.
        cond_temb = _time_embedding(tr, torch.zeros_like(timestep), guidance, pooled_projections, dtype)
    rope = tr.pos_embed(torch.cat(ids, dim=0))
    n_cond = 0 if cond is None else cond.shape[1]
    mask = _cond_attention_mask(txt.shape[1] + img.shape[1], n_cond, options, img.device, dtype)

    use_ckpt = tr.gradient_checkpointing and torch.is_grad_enabled()

    def run(fn, *args):
        if use_ckpt:
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    # partial() binds per-block arguments now: checkpoint recomputation runs after the loop ends.
    for block in tr.transformer_blocks:
        fn = partial(double_block, rope=rope, mask=mask, opts=options)
        img, txt, cond = run(fn, block, img, txt, cond, temb, cond_temb)
    n_txt = txt.shape[1]
    hid = torch.cat([txt, img], dim=1)
    n_single = len(tr.single_transformer_blocks)
    for i, block in enumerate(tr.single_transformer_blocks):
        fn = partial(single_block, rope=rope, mask=mask, opts=options, last=i == n_single - 1)
        hid, cond = run(fn, block, hid, cond, temb, cond_temb)
    img = hid[:, n_txt:]
    return tr.proj_out(tr.norm_out(img, temb))
