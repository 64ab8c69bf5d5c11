"""What each component weighs: built on the meta device from config files only, counted at the
storage dtype under each quantization scheme, plus the trainable LoRA + MoGLE and their
gradients and optimizer state.

Storage layouts (checked against the installed libraries by tests/test_memory.py):
- int8 (torchao 0.18 `Int8WeightOnlyConfig`): int8 weight [out, in] + float32 scale [out, 1] +
  int8 zero point [out, 1];
- fp8 (torchao `Float8WeightOnlyConfig`): float8_e4m3fn weight + float32 scale [out, 1];
- nf4 (bitsandbytes 0.50 `Params4bit`, diffusers/transformers default: no double quantization):
  two 4-bit values per byte + a float32 absmax per 64-weight block + its 16-entry float32 code.
Only nn.Linear weights are quantized (diffusers and transformers quantize those alone); biases,
norms and embeddings stay in the storage dtype. T5's `wo` layers (transformers'
`_keep_in_fp32_modules`) are never quantized, and kept in float32 when the dtype is float16.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

SCHEMES = ("none", "int8", "fp8", "nf4")
QUANTIZED_COMPONENTS = ("transformer", "text_encoder_2")  # what model.quantize touches
CONFIG_FILES = {
    "transformer": "transformer/config.json",
    "text_encoder": "text_encoder/config.json",
    "text_encoder_2": "text_encoder_2/config.json",
    "vae": "vae/config.json",
}
T5_KEEP = ("wo",)  # T5EncoderModel._keep_in_fp32_modules: skipped by every quantizer
NF4_BLOCK = 64
ADAM8_MIN_SIZE = 4096  # bitsandbytes' min_8bit_size: smaller tensors keep 32-bit state
ADAM8_BLOCK = 256


class PlannerError(ValueError):
    """Bad planner input, with a one-line message naming what and how to fix it."""


def linear_weight_bytes(out_features: int, in_features: int, scheme: str, dtype_bytes: int) -> int:
    """Bytes of one nn.Linear weight as the quantization library stores it."""
    n = out_features * in_features
    if scheme == "none":
        return n * dtype_bytes
    if scheme == "int8":
        return n + out_features * (4 + 1)  # int8 data, float32 scale, int8 zero point per row
    if scheme == "fp8":
        return n + out_features * 4  # float8 data, float32 scale per row
    if scheme == "nf4":
        return math.ceil(n / 2) + 4 * math.ceil(n / NF4_BLOCK) + 16 * 4  # packed data, absmax, code
    raise PlannerError(f"unknown quantization scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")


@dataclass
class ComponentSize:
    name: str
    params: int
    bytes: dict  # scheme -> bytes of parameters + buffers at the storage dtype
    quantizable_params: int  # parameters in quantized Linear weights (0 for CLIP and the VAE)
    kept: str  # what stays unquantized, in words
    largest_linear: int  # bytes of the largest Linear weight at the compute dtype (dequantisation, offload)


def _float_bytes(t: torch.Tensor, dtype_bytes: int) -> int:
    return t.numel() * (dtype_bytes if t.is_floating_point() else t.element_size())


def component_size(name: str, module: nn.Module, dtype: torch.dtype) -> ComponentSize:
    """Count `module` (meta or real) as `load_backbone(dtype=...)` stores it, under each scheme."""
    e = torch.empty((), dtype=dtype).element_size()
    quantizable = name in QUANTIZED_COMPONENTS
    keep = {n for n, m in module.named_modules() if name == "text_encoder_2" and n.split(".")[-1] in T5_KEEP}
    keep_bytes = 4 if dtype == torch.float16 else e  # transformers upcasts `wo` for float16 only
    linears = {f"{n}.weight": m for n, m in module.named_modules() if isinstance(m, nn.Linear) and n not in keep}
    kept_width = {f"{n}.{p}" for n in keep for p in ("weight", "bias")}
    plain = 0
    seen = set()
    totals = dict.fromkeys(SCHEMES, 0)
    qparams = 0
    for pname, t in [*module.named_parameters(), *module.named_buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        if quantizable and pname in linears:
            out_f, in_f = t.shape
            qparams += t.numel()
            for s in SCHEMES:
                totals[s] += linear_weight_bytes(out_f, in_f, s, e)
        else:
            plain += _float_bytes(t, keep_bytes if pname in kept_width else e)
    largest = max((m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear)), default=0) * e
    params = sum(p.numel() for p in module.parameters())
    if not quantizable:
        kept = "everything (never quantized)"
    else:
        kept = "norms, embeddings, biases" + (", the `wo` feed-forward outputs" if keep else "")
    return ComponentSize(name, params, {s: plain + totals[s] for s in SCHEMES}, qparams, kept, largest)


# --------------------------------------------------------------------------------------------
# Building on the meta device


def _read_json(folder: Path, name: str) -> dict:
    path = folder / CONFIG_FILES[name]
    if not path.is_file():
        raise PlannerError(f"backbone config not found: {path} (the planner reads only the config.json of "
                           f"transformer/, text_encoder/, text_encoder_2/ and vae/ under `pretrained`)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise PlannerError(f"{path} is not valid JSON: {err}") from None


def meta_backbone(pretrained: str) -> dict:
    """{component name: meta module} from a FLUX folder's config files, or the tiny preset."""
    import logging

    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if str(pretrained) == "tiny":
        from ..models.builder import TinySpec, build_tiny_backbone

        with torch.random.fork_rng(), torch.device("meta"):
            bb = build_tiny_backbone(TinySpec())
        return {"transformer": bb.transformer, "text_encoder": bb.text_encoder,
                "text_encoder_2": bb.text_encoder_2, "vae": bb.vae}
    folder = Path(pretrained)
    if not folder.is_dir():
        raise PlannerError(f"FLUX backbone folder not found: {folder} (set `pretrained` or --set pretrained=DIR; "
                           "only its config.json files are read)")
    configs = {name: _read_json(folder, name) for name in CONFIG_FILES}
    quiet = logging.getLogger("transformers.modeling_utils"), logging.getLogger("diffusers")
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with torch.device("meta"):
            return {
                "transformer": FluxTransformer2DModel.from_config(configs["transformer"]),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**_hf(configs["text_encoder"]))),
                "text_encoder_2": T5EncoderModel(T5Config(**_hf(configs["text_encoder_2"]))),
                "vae": AutoencoderKL.from_config(configs["vae"]),
            }
    except (TypeError, ValueError, KeyError) as err:
        raise PlannerError(f"cannot build the backbone from the config files in {folder}: {err}") from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def _hf(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures", "transformers_version")}


# --------------------------------------------------------------------------------------------
# Trainable parameters and optimizer state


@dataclass
class TrainableSize:
    lora_params: int  # all LoRA weights (the unreachable ones included: they are in memory)
    mogle_params: int
    trainable: list = field(default_factory=list)  # (numel, zero_at_start) per trained tensor
    lora_dtype_bytes: int = 4  # sampling keeps LoRA in the weights dtype; training in float32

    @property
    def trainable_params(self) -> int:
        return sum(n for n, _ in self.trainable)

    def weight_bytes(self, training: bool) -> int:
        lora = self.lora_params * (4 if training else self.lora_dtype_bytes)
        return lora + self.mogle_params * 4  # MoGLE stays float32

    def grad_bytes(self) -> int:
        return 4 * self.trainable_params

    def optimizer_bytes(self, kind: str) -> int:
        """Optimizer state as each implementation allocates it (float32 trainable weights)."""
        if kind == "adamw":  # torch AdamW: exp_avg, exp_avg_sq (the step counters live on the CPU)
            return sum(2 * 4 * n for n, _ in self.trainable)
        if kind == "adamw8bit":  # bitsandbytes: uint8 states + float32 absmax per 256 block; 2 shared maps
            total = 2 * 256 * 4
            for n, _ in self.trainable:
                total += 2 * (n + 4 * math.ceil(n / ADAM8_BLOCK)) if n >= ADAM8_MIN_SIZE else 2 * 4 * n
            return total
        if kind == "prodigy":  # prodigyopt 1.1: s, p0 (a scalar for an all-zero start), exp_avg, exp_avg_sq
            return sum(4 * (3 * n + (1 if zero else n)) for n, zero in self.trainable)
        raise PlannerError(f"unknown optimizer {kind!r}; expected adamw, adamw8bit or prodigy")


def trainable_size(transformer: nn.Module, model_cfg, dtype: torch.dtype) -> TrainableSize:
    """LoRA (peft, on the meta transformer) and MoGLE with the config's shapes."""
    from ..models.face_mogle import FaceMoGLE

    with torch.device("meta"):
        model = FaceMoGLE(transformer, model_cfg)
    model.freeze_base()
    lora = [(n, p) for n, p in transformer.named_parameters() if "lora_" in n]
    trained = {id(p) for p in model.trainable_parameters()}
    # peft starts every lora_B at zero; MoGLE's initial weights are random
    trainable = [(p.numel(), "lora_B" in n) for n, p in lora if id(p) in trained]
    trainable += [(p.numel(), False) for p in model.mogle.parameters()]
    lora_bytes = lora[0][1].element_size() if lora else 4
    return TrainableSize(sum(p.numel() for _, p in lora), sum(p.numel() for p in model.mogle.parameters()),
                         trainable, lora_bytes if dtype != torch.float32 else 4)
