"""Weight-only quantization of the frozen base, through the libraries' own quantization configs.

Only the two big components are quantized: the FLUX transformer (11.9 B parameters at FLUX.1-dev
size) and T5-XXL (4.76 B). CLIP-L and the VAE are small and stay in the run's dtype; LoRA and MoGLE
stay float32 and train on top of the quantized layers (peft wraps torchao and bitsandbytes layers).

  int8  torchao Int8WeightOnlyConfig     (CPU and CUDA)
  fp8   torchao Float8WeightOnlyConfig   (CPU; CUDA with compute capability >= 8.9)
  nf4   bitsandbytes 4-bit NormalFloat   (CUDA only: diffusers' loader refuses without a GPU)

A GGUF file of the transformer (`pretrained_transformer`, models.gguf) comes already quantized; it
is not a scheme here, and `quantized_scheme` names it "gguf-<type>".
"""

from __future__ import annotations

import importlib.util

SCHEMES = ("none", "int8", "fp8", "nf4")
QUANTIZED_COMPONENTS = ("transformer", "text_encoder_2")
LIBRARY = {"int8": "torchao", "fp8": "torchao", "nf4": "bitsandbytes"}


class QuantizationError(ValueError):
    """A quantization scheme that is unknown or cannot run here; the message says what to do."""


def compute_dtype(scheme: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a quantized component computes in: its weights dequantize to it. The integer and
    4-bit kernels want a 16-bit one, so a float32 run computes in bfloat16 when quantized."""
    import torch

    if scheme == "none" or dtype in (torch.bfloat16, torch.float16):
        return dtype
    return torch.bfloat16


def check_scheme(scheme: str, device: torch.device | str) -> None:
    """Refuse, in one line, a scheme that is unknown, whose library is missing, or that cannot run
    on `device` (torch is imported here: the scripts' --help reads SCHEMES without it)."""
    import torch

    if scheme not in SCHEMES:
        raise QuantizationError(f"unknown quantization {scheme!r}: use one of {', '.join(SCHEMES)}")
    if scheme == "none":
        return
    library = LIBRARY[scheme]
    if importlib.util.find_spec(library) is None:
        raise QuantizationError(f"quantization {scheme} needs the {library} package: pip install {library}")
    device = torch.device(device)
    if scheme == "nf4" and device.type != "cuda":
        raise QuantizationError(f"quantization nf4 (bitsandbytes) loads only on a CUDA GPU, not on {device.type}: "
                                "use int8 or fp8 (torchao) here")
    if scheme == "fp8" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        major, minor = torch.cuda.get_device_capability(device)
        raise QuantizationError(f"quantization fp8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); "
                                f"this one is {major}.{minor}: use int8 or nf4")


def _torchao_config(scheme: str):
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    return Int8WeightOnlyConfig() if scheme == "int8" else Float8WeightOnlyConfig()


def diffusers_config(scheme: str, dtype: torch.dtype):
    """The diffusers quantization config for the transformer (None for "none")."""
    if scheme == "none":
        return None
    if scheme == "nf4":
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    import logging

    # diffusers warns, on import, that it cannot allow-list torchao's old tensor classes for unpickling:
    # nothing here unpickles torchao checkpoints (weights load from safetensors, then are quantized)
    logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").setLevel(logging.ERROR)
    from diffusers import TorchAoConfig

    return TorchAoConfig(_torchao_config(scheme))


def transformers_config(scheme: str, dtype: torch.dtype):
    """The transformers quantization config for T5 (None for "none")."""
    if scheme == "none":
        return None
    if scheme == "nf4":
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    from transformers import TorchAoConfig

    return TorchAoConfig(_torchao_config(scheme))


def quantized_scheme(module: torch.nn.Module) -> str:
    """The scheme a loaded component's weights are held in ("none" when plain), read off the weights
    themselves (so a model loaded elsewhere is seen as it is). A transformer from a GGUF file
    (`pretrained_transformer`) reads "gguf-" + the type most of its weights hold, e.g. "gguf-q8_0"."""
    from .gguf import main_type

    kind = main_type(module)
    if kind is not None:
        return f"gguf-{kind}"
    for p in module.parameters():
        name = type(p).__name__
        if name == "Params4bit":
            return "nf4"
        if name.startswith("Int8"):
            return "int8"
        if name.startswith("Float8"):
            return "fp8"
    return "none"
