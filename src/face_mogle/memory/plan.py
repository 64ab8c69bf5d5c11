"""The memory plan: every component's weights, the activations of each phase, and the predicted
peak of each setting (quantization × staged encoders × offloading for sampling; quantization ×
optimizer × checkpointing × cached encoders for training), with the fastest one that fits.

Phases and what sits on the GPU in each (W = weights at their storage size):
  sampling, all resident:   every W + the largest phase's activations;
  staged encoders:          encode: T5 + CLIP + VAE W + text/mask activations, then the text
                            encoders go; denoise/decode: transformer + adapters + VAE W + activations;
  offload model:            each component's W only while it runs;
  offload leaf:             as model, but the transformer streams in layer by layer: two of its
                            largest Linear layers (the running one and the prefetched one) resident.
  training:                 transformer W + adapters + gradients + optimizer state + the step's
                            activations; without the latent/text cache also T5, CLIP and the VAE
                            and their encoding phase.
A quantized Linear is dequantised to the compute dtype while it runs: one largest layer on top.
Sizes are in GiB (2³⁰ bytes), as torch.cuda.max_memory_allocated is usually read; `gpu_gb` is the
card's memory in GiB, of which 1 GiB is left for the CUDA context, kernels and allocator slack.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..config import Config
from ..utils import DTYPES
from .activations import (Streams, Width, inference_bytes, mogle_bytes, text_encoder_bytes, training_bytes,
                          vae_decode_bytes, vae_encode_bytes)
from .components import SCHEMES, ComponentSize, PlannerError, component_size, linear_weight_bytes, meta_backbone, trainable_size

GIB = 2**30
RESERVE = 1 * GIB
NUM_MAPS = 20
VAE_CHUNK = 32  # encoding.encode_distribution's batch of distinct maps
# Expected time relative to the fastest choice (rough priors used only to order the settings;
# bench/memory.py measures them on a GPU)
QUANT_TIME = {"none": 1.0, "int8": 1.1, "fp8": 1.1, "nf4": 1.3}
PLACEMENT_TIME = {"resident": 1.0, "staged": 1.02, "model": 1.1, "leaf": 1.5}
OPTIMIZER_TIME = {"adamw": 1.0, "adamw8bit": 1.0, "prodigy": 1.05}


@dataclass
class Setting:
    knobs: dict  # e.g. {"quantize": "int8", "placement": "staged"}
    peak: int  # bytes
    parts: dict  # what the peak phase holds, bytes
    time: float  # expected time factor
    fits: bool = False

    def label(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.knobs.items())


@dataclass
class Plan:
    mode: str
    size: int
    batch: int
    streams: Streams
    components: dict  # name -> ComponentSize
    adapters: object  # TrainableSize
    activations: dict  # name -> bytes
    settings: list = field(default_factory=list)
    budget: Optional[int] = None
    current_knobs: dict = field(default_factory=dict)  # the config's own setting

    @property
    def current(self) -> Setting:
        return self.find(**self.current_knobs)

    @property
    def best(self) -> Optional[Setting]:
        fitting = [s for s in self.settings if s.fits]
        return min(fitting, key=lambda s: (s.time, s.peak)) if fitting else None

    def find(self, **knobs) -> Setting:
        for s in self.settings:
            if all(s.knobs.get(k) == v for k, v in knobs.items()):
                return s
        raise KeyError(knobs)


def token_pixels(vae) -> int:
    return 2 * 2 ** (len(vae.config.block_out_channels) - 1)


def plan(cfg: Config, mode: str, size: Optional[int] = None, batch_size: Optional[int] = None,
         gpu_gb: Optional[float] = None, pretrained: Optional[str] = None) -> Plan:
    """Predict the GPU memory of sampling (`mode="sample"`) or training (`"train"`) with `cfg`."""
    if mode not in ("sample", "train"):
        raise PlannerError(f"mode must be 'sample' or 'train', got {mode!r}")
    if mode == "train" and cfg.train.mode != "mogle":
        raise PlannerError("the planner covers train.mode: mogle (LoRA + MoGLE on a frozen base)")
    training = mode == "train"
    size = size or (cfg.data.size if training else cfg.sample.size)
    batch = batch_size or (cfg.train.batch_size if training else 1)
    if batch < 1:
        raise PlannerError(f"batch size must be >= 1, got {batch}")
    parts = meta_backbone(pretrained or cfg.pretrained)
    tp = token_pixels(parts["vae"])
    if size <= 0 or size % tp:
        raise PlannerError(f"size {size} is not a multiple of the token size {tp} px (one token = 2×2 latents "
                           f"of this VAE); use e.g. {max(tp, size // tp * tp)}")
    dtype = DTYPES[cfg.dtype]
    e = 2 if (training and cfg.train.mixed_precision != "no") else torch.empty((), dtype=dtype).element_size()
    compute = {2: torch.bfloat16, 4: torch.float32}[e] if training else dtype
    sizes = {name: component_size(name, m, dtype) for name, m in parts.items()}
    for name in ("text_encoder", "text_encoder_2", "vae"):  # traced in the weights dtype, as they run
        torch.nn.Module.to(parts[name], dtype)
    tr_config = dict(parts["transformer"].config)
    width = Width.of(tr_config)
    adapters = trainable_size(parts["transformer"], cfg.model, dtype)
    text_len = cfg.max_sequence_length if training else cfg.sample.max_sequence_length
    n = (size // tp) ** 2
    streams = Streams(text_len, n, n)
    channels = tr_config["in_channels"]
    maps = min(VAE_CHUNK, NUM_MAPS * batch)
    acts = {
        "text encoders": max(text_encoder_bytes(parts["text_encoder_2"], batch, text_len, dtype),
                             text_encoder_bytes(parts["text_encoder"], batch, 77, dtype)),
        "mask encoding": vae_encode_bytes(parts["vae"], size, maps + (batch if training else 0), dtype),
        "mogle": mogle_bytes(streams, batch, cfg.model.num_experts, cfg.model.expert_hidden_dim, channels, training),
        # the step's inputs: mask latents [B, 20, N, C] float32, latents, text embeddings
        "inputs": batch * (NUM_MAPS * n * channels * 4 + 3 * n * channels * 4 + text_len * tr_config["joint_attention_dim"] * e),
    }
    if training:
        acts["transformer (checkpointing)"] = training_bytes(streams, width, batch, e, True)
        acts["transformer (no checkpointing)"] = training_bytes(streams, width, batch, e, False)
    else:
        acts["transformer"] = inference_bytes(streams, width, batch, e)
        acts["decoding"] = vae_decode_bytes(parts["vae"], size, batch, dtype)
    result = Plan(mode, size, batch, streams, sizes, adapters, acts)
    largest = _largest_linear_shape(parts["transformer"])
    if training:
        result.settings = _train_settings(cfg, result, largest, e)
        result.current_knobs = {"quantize": cfg.model.quantize, "optimizer": cfg.train.optimizer.type,
                                "checkpointing": "on" if cfg.train.gradient_checkpointing else "off",
                                "encoders": "cached" if cfg.data.cache_dir else "on GPU"}
    else:
        result.settings = _sample_settings(result, largest, e)
        placement = {"none": "resident", "model": "model", "leaf": "leaf"}[cfg.sample.offload]
        result.current_knobs = {"quantize": cfg.model.quantize, "placement": placement}
    if gpu_gb is not None:
        result.budget = int(gpu_gb * GIB) - RESERVE
        for s in result.settings:
            s.fits = s.peak <= result.budget
    return result


def _largest_linear_shape(transformer) -> tuple[int, int]:
    shapes = [m.weight.shape for m in transformer.modules() if isinstance(m, torch.nn.Linear) and "lora_" not in str(type(m))]
    return tuple(max(shapes, key=lambda s: s[0] * s[1]))


def _dequant(scheme: str, largest: tuple[int, int], e: int) -> int:
    return 0 if scheme == "none" else largest[0] * largest[1] * e


def _sample_settings(p: Plan, largest, e: int) -> list[Setting]:
    c, a = p.components, p.activations
    out = []
    for scheme, placement in itertools.product(SCHEMES, ("resident", "staged", "model", "leaf")):
        tr, t5 = c["transformer"].bytes[scheme], c["text_encoder_2"].bytes[scheme]
        clip, vae = c["text_encoder"].bytes["none"], c["vae"].bytes["none"]
        ad = p.adapters.weight_bytes(training=False)
        denoise_act = a["transformer"] + a["mogle"] + a["inputs"] + _dequant(scheme, largest, e)
        if placement == "leaf":  # the running and the prefetched layer, plus MoGLE; LoRA streams too
            tr = 2 * linear_weight_bytes(*largest, scheme, e)
            ad = p.adapters.mogle_params * 4
        if placement == "resident":
            everything = tr + t5 + clip + vae + ad
            phases = {"text encoding": {"weights": everything, "activations": a["text encoders"]},
                      "mask encoding": {"weights": everything, "activations": a["mask encoding"]},
                      "denoising": {"weights": everything, "activations": denoise_act},
                      "decoding": {"weights": everything, "activations": a["decoding"]}}
        elif placement == "staged":
            enc = t5 + clip + vae
            phases = {"text encoding": {"weights": enc, "activations": a["text encoders"]},
                      "mask encoding": {"weights": enc, "activations": a["mask encoding"]},
                      "denoising": {"weights": tr + ad + vae, "activations": denoise_act},
                      "decoding": {"weights": tr + ad + vae, "activations": a["decoding"]}}
        else:
            phases = {"text encoding": {"weights": max(t5, clip), "activations": a["text encoders"]},
                      "mask encoding": {"weights": vae, "activations": a["mask encoding"]},
                      "denoising": {"weights": tr + ad, "activations": denoise_act},
                      "decoding": {"weights": vae, "activations": a["decoding"]}}
        out.append(_setting({"quantize": scheme, "placement": placement}, phases,
                            QUANT_TIME[scheme] * PLACEMENT_TIME[placement]))
    return out


def _train_settings(cfg: Config, p: Plan, largest, e: int) -> list[Setting]:
    c, a = p.components, p.activations
    out = []
    for scheme, optimizer, ckpt, cached in itertools.product(
            SCHEMES, ("adamw", "adamw8bit", "prodigy"), (False, True), (True, False)):
        state = {"transformer": c["transformer"].bytes[scheme], "adapters": p.adapters.weight_bytes(training=True),
                 "gradients": p.adapters.grad_bytes(), "optimizer": p.adapters.optimizer_bytes(optimizer)}
        if not cached:
            state["encoders"] = c["text_encoder_2"].bytes[scheme] + c["text_encoder"].bytes["none"] + c["vae"].bytes["none"]
        weights = sum(state.values())
        step = a["transformer (checkpointing)" if ckpt else "transformer (no checkpointing)"]
        phases = {"step": {"weights": weights, "activations": step + a["mogle"] + a["inputs"] + _dequant(scheme, largest, e)}}
        if not cached:
            phases["encoding"] = {"weights": weights, "activations": max(a["text encoders"], a["mask encoding"])}
        knobs = {"quantize": scheme, "optimizer": optimizer, "checkpointing": "on" if ckpt else "off",
                 "encoders": "cached" if cached else "on GPU"}
        time = QUANT_TIME[scheme] * OPTIMIZER_TIME[optimizer] * (4 / 3 if ckpt else 1.0) * (1.0 if cached else 1.5)
        out.append(_setting(knobs, phases, time))
    return out


def _setting(knobs: dict, phases: dict, time: float) -> Setting:
    name, held = max(phases.items(), key=lambda kv: sum(kv[1].values()))
    return Setting(knobs, sum(held.values()), {"phase": name, **held}, time)
