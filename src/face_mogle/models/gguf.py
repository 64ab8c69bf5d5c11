"""A FLUX.1 transformer from a GGUF single file (`pretrained_transformer: …/flux1-dev-Q8_0.gguf`).

GGUF conversions of FLUX.1 (city96's and others) keep the original Black Forest Labs tensor names and
fused layouts (one `qkv` for q, k and v; one `linear1` for a single block's q, k, v and MLP input).
They load through diffusers' GGUF quantizer (`from_single_file` with `GGUFQuantizationConfig`): the
weights stay quantized in memory and each layer dequantizes its weight as it runs.

The layout mapping is ours, not diffusers' `convert_flux_transformer_checkpoint_to_diffusers`:
diffusers 0.42 fixes the width in that converter at 3,072 (FLUX.1's), so it cannot read a test-sized
file. Here every size comes from the transformer's config; tests pin the mapping equal to diffusers'
converter at FLUX.1-dev's shapes.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import torch

PREFIX = "model.diffusion_model."  # some conversions keep the original checkpoint's prefix
# The original final norm holds (shift, scale); diffusers' AdaLayerNormContinuous (scale, shift).
SWAPPED = ("final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias")


class GGUFError(ValueError):
    """A GGUF transformer file that is missing, not GGUF, or not this config's transformer."""


def layout(config: dict) -> dict[str, list[str]]:
    """Each original (BFL) tensor name → the diffusers tensors it holds, their rows stacked in order."""
    modules = {
        "img_in": ["x_embedder"], "txt_in": ["context_embedder"],
        "time_in.in_layer": ["time_text_embed.timestep_embedder.linear_1"],
        "time_in.out_layer": ["time_text_embed.timestep_embedder.linear_2"],
        "vector_in.in_layer": ["time_text_embed.text_embedder.linear_1"],
        "vector_in.out_layer": ["time_text_embed.text_embedder.linear_2"],
        "final_layer.linear": ["proj_out"], "final_layer.adaLN_modulation.1": ["norm_out.linear"],
    }
    if config.get("guidance_embeds", False):
        modules["guidance_in.in_layer"] = ["time_text_embed.guidance_embedder.linear_1"]
        modules["guidance_in.out_layer"] = ["time_text_embed.guidance_embedder.linear_2"]
    norms = {}
    for i in range(config["num_layers"]):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        modules.update({
            b + "img_mod.lin": [d + "norm1.linear"], b + "txt_mod.lin": [d + "norm1_context.linear"],
            b + "img_attn.qkv": [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"],
            b + "txt_attn.qkv": [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"],
            b + "img_attn.proj": [d + "attn.to_out.0"], b + "txt_attn.proj": [d + "attn.to_add_out"],
            b + "img_mlp.0": [d + "ff.net.0.proj"], b + "img_mlp.2": [d + "ff.net.2"],
            b + "txt_mlp.0": [d + "ff_context.net.0.proj"], b + "txt_mlp.2": [d + "ff_context.net.2"],
        })
        norms.update({
            b + "img_attn.norm.query_norm.scale": d + "attn.norm_q.weight",
            b + "img_attn.norm.key_norm.scale": d + "attn.norm_k.weight",
            b + "txt_attn.norm.query_norm.scale": d + "attn.norm_added_q.weight",
            b + "txt_attn.norm.key_norm.scale": d + "attn.norm_added_k.weight",
        })
    for i in range(config["num_single_layers"]):
        b, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        modules.update({
            b + "modulation.lin": [d + "norm.linear"],
            b + "linear1": [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp"],
            b + "linear2": [d + "proj_out"],
        })
        norms.update({b + "norm.query_norm.scale": d + "attn.norm_q.weight",
                      b + "norm.key_norm.scale": d + "attn.norm_k.weight"})
    out = {f"{k}.{s}": [f"{v}.{s}" for v in vs] for k, vs in modules.items() for s in ("weight", "bias")}
    out.update({k: [v] for k, v in norms.items()})
    return out


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_bfl(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers FluxTransformer2DModel state dict in the original layout (what GGUF files hold)."""
    out = {}
    for name, parts in layout(config).items():
        t = torch.cat([state[p] for p in parts], dim=0)
        out[name] = _swap_halves(t) if name in SWAPPED else t
    return out


def to_diffusers(checkpoint: dict[str, torch.Tensor], rows: dict[str, int], config: dict) -> dict[str, torch.Tensor]:
    """The inverse of `to_bfl`: fused tensors split by the rows each diffusers tensor has (`rows`). Works
    on diffusers' GGUFParameter too (quantized rows stay whole: Q-blocks run along a row)."""
    out = {}
    for name, parts in layout(config).items():
        t = _swap_halves(checkpoint[name]) if name in SWAPPED else checkpoint[name]
        out.update(zip(parts, torch.split(t, [rows[p] for p in parts], dim=0)))
    return out


def logical_shape(t: torch.Tensor) -> tuple[int, ...]:
    """A tensor's shape as weights (a quantized GGUF tensor is stored as rows of bytes)."""
    return tuple(getattr(t, "quant_shape", None) or t.shape)


def check_fits(checkpoint: dict, shapes: dict[str, tuple], config: dict, path, config_dir) -> None:
    """Refuse, naming one tensor, a file that is not this config's FLUX.1 transformer."""
    missing, names = [], layout(config)
    for name, parts in names.items():
        if name not in checkpoint:
            missing.append(name)
            continue
        want = (sum(shapes[p][0] for p in parts), *shapes[parts[0]][1:])
        got = logical_shape(checkpoint[name])
        if got != want:
            raise GGUFError(f"GGUF file {path} does not fit the transformer of {config_dir}: tensor {name!r} is "
                            f"{'×'.join(map(str, got))}, the config wants {'×'.join(map(str, want))} "
                            "(a different model, or a config of another size)")
    if missing:
        raise GGUFError(f"GGUF file {path} does not hold the FLUX.1 transformer of {config_dir}: it has no tensor "
                        f"{missing[0]!r} ({len(missing)} of its {len(names)} tensors missing: another model?)")
    extra = [name for name in checkpoint if name not in names]
    if extra:  # more blocks, or a guidance embedder the config lacks: these weights would be dropped silently
        raise GGUFError(f"GGUF file {path} does not fit the transformer of {config_dir}: it holds tensor {extra[0]!r}, "
                        f"which that transformer does not have ({len(extra)} such; a different model, or a config of "
                        "another size)")


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a GGUF file (quantized ones as diffusers' GGUFParameter), checked to be GGUF."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"GGUF transformer file not found: {path} (pretrained_transformer: put the .gguf file "
                        "there, e.g. flux1-dev-Q8_0.gguf, or set pretrained_transformer: null)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'): pretrained_transformer "
                        "takes a .gguf single file such as flux1-dev-Q8_0.gguf")
    if importlib.util.find_spec("gguf") is None:
        raise GGUFError(f"reading {path} needs the gguf package: pip install 'gguf>=0.10'")
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    try:
        checkpoint = load_gguf_checkpoint(str(path))
    except Exception as err:  # a truncated file, an unsupported quantization type: say which, in one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GGUFError(f"cannot read GGUF file {path} (cut short or damaged? fetch it again): {first}") from None
    return {k.removeprefix(PREFIX): v for k, v in checkpoint.items()}


def load_gguf_transformer(path: str | os.PathLike, config_dir: str | os.PathLike, dtype: torch.dtype,
                          device: torch.device | str = "cpu"):
    """The FLUX transformer of `config_dir`/config.json with its weights from the GGUF file `path`,
    quantized as the file holds them, computing in `dtype`."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    checkpoint = read_checkpoint(path)
    config = FluxTransformer2DModel.load_config(str(config_dir), local_files_only=True)
    with init_empty_weights():  # shapes only: nothing is allocated
        shapes = {k: tuple(v.shape) for k, v in FluxTransformer2DModel.from_config(config).state_dict().items()}
    check_fits(checkpoint, shapes, config, path, config_dir)
    state = to_diffusers(checkpoint, {k: s[0] for k, s in shapes.items()}, config)
    # Already in diffusers' layout, so from_single_file only quantizes: it skips its own converter.
    model = FluxTransformer2DModel.from_single_file(
        state, config=str(config_dir), quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
        torch_dtype=dtype, local_files_only=True, device=torch.device(device))
    return model.eval()


def main_type(module: torch.nn.Module) -> str | None:
    """The GGUF type most of a module's weights are held in ("q8_0"), None when none are GGUF."""
    sizes: dict[str, int] = {}
    for p in module.parameters():
        if type(p).__name__ == "GGUFParameter":
            kind = getattr(p.quant_type, "name", str(p.quant_type)).lower()
            sizes[kind] = sizes.get(kind, 0) + math.prod(logical_shape(p))
    return max(sizes, key=sizes.get) if sizes else None
