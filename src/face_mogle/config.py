"""Typed configuration: YAML files load into dataclasses; `--set a.b=value` overrides.

Every key is checked: an unknown or mistyped key is an error naming it and listing the valid ones,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import reprlib
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

# The official LoRA targets (DESIGN §2): names are matched against the module's full path.
OFFICIAL_LORA_TARGETS = [
    "x_embedder",
    "transformer_blocks.*.norm1.linear",
    "transformer_blocks.*.attn.to_q",
    "transformer_blocks.*.attn.to_k",
    "transformer_blocks.*.attn.to_v",
    "transformer_blocks.*.attn.to_out.0",
    "transformer_blocks.*.ff.net.2",
    "single_transformer_blocks.*.norm.linear",
    "single_transformer_blocks.*.proj_mlp",
    "single_transformer_blocks.*.proj_out",
    "single_transformer_blocks.*.attn.to_q",
    "single_transformer_blocks.*.attn.to_k",
    "single_transformer_blocks.*.attn.to_v",
]


class ConfigError(ValueError):
    """A configuration problem, with a one-line message meant for the user."""


# --------------------------------------------------------------------------------------------
# Reading YAML safely: a few aliases can stand for billions of nodes ("billion laughs"); a config
# or preset has about a hundred, so a document that would expand past this is refused outright.
MAX_YAML_NODES = 100_000
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother = 2, 4, 4, 40, 40


def shown(value: Any, limit: int = 80) -> str:
    """A value as an error message shows it: a bounded repr (an aliased value can be huge)."""
    text = _SHOWN.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expanded_nodes(root: yaml.Node, limit: int) -> int:
    """How many nodes the document holds with every alias expanded, stopping once past `limit`
    (a recursive alias counts as past it)."""
    sizes: dict[int, int] = {}

    def size(node, active):
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in active:
            return limit + 1
        active.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child, active)
            if total > limit:
                break
        active.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root, set())


class _BoundedLoader(yaml.SafeLoader):
    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and _expanded_nodes(node, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise ConfigError(f"the YAML expands to more than {MAX_YAML_NODES} values through its aliases "
                              "(&anchor/*alias): a config never needs that many")
        return node


def load_yaml(text: str) -> Any:
    """yaml.safe_load with the expansion bound above (ConfigError past it; yaml.YAMLError as usual)."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass


@dataclass
class LoraConfig:
    r: int = 4
    alpha: float = 4.0
    init: str = "gaussian"  # peft init_lora_weights: "gaussian" (official) or "default"
    target_modules: list = field(default_factory=lambda: list(OFFICIAL_LORA_TARGETS))


@dataclass
class IdentityConfig:
    """Who the face is (issue #31): a reference face's embedding as condition tokens."""

    # null: no identity (the model as before); "synthfaces": the small CNN trained on SynthFaces
    # identities (python -m face_mogle.identity.train_encoder); "arcface": a local ONNX
    # face-recognition model (antelopev2 glintr100.onnx or buffalo_l w600k_r50.onnx)
    encoder: Optional[str] = None
    # the encoder's weights: a folder (synthfaces) or an .onnx file (arcface); null: its default place
    # under checkpoints/identity/ (face_mogle.identity.DEFAULT_WEIGHTS)
    weights: Optional[str] = None
    num_tokens: int = 4  # identity tokens the projector makes from one embedding
    embed_dim: int = 512  # the encoder's embedding size (ArcFace 512; the SynthFaces CNN 128)
    # where the tokens enter the transformer: "condition" (beside the mask tokens, with LoRA and the
    # condition stream's timestep-0 modulation) or "text" (after the T5 tokens, read by the frozen
    # text weights); both at a RoPE position apart from the image grid and the text
    entry: str = "condition"


@dataclass
class ModelConfig:
    num_experts: int = 20  # 1 global + 19 local
    expert_hidden_dim: int = 32
    has_expert: bool = True  # ablation: False = identity instead of expert MLPs
    has_gating: bool = True  # ablation: False = plain sum of expert outputs
    scalar_gating: bool = False  # ablation: per-expert weights averaged over tokens
    experts: str = "all"  # ablation: "global" (global expert only) or "local" (local experts only)
    union_cond_attn: bool = True  # False blocks attention between image/text and condition tokens
    latent_lora: bool = False  # True applies LoRA to image/text tokens too
    # The gate is trained with t in [0,1]; the official inference fed the scheduler's t in
    # [0,1000]. 1.0 is the consistent choice; 1000.0 reproduces the official sampler.
    gate_timestep_scale: float = 1.0
    # "palette": classes in palette colours (the official code's global map for the data set's
    # palette-indexed masks, what the released weights saw); "gray": label/255 grey; "stored": the
    # mask file rendered as stored, Image.open(f).convert("RGB") (sampling only; data/masks.py)
    global_map: str = "palette"
    # Initial gate weight of the global expert (0 = the official initialisation, about 1/20);
    # only the starting point of training: weights files do not depend on it.
    gate_global_prior: float = 0.0
    # Weight-only quantization of the frozen base (transformer and T5; CLIP and the VAE are small):
    # "none", "int8" / "fp8" (torchao) or "nf4" (bitsandbytes, CUDA only). LoRA and MoGLE stay in
    # full precision and train on top of it.
    quantize: str = "none"
    lora: LoraConfig = field(default_factory=LoraConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)


@dataclass
class DataConfig:
    root: str = "data/mmcelebahq"
    size: int = 512  # target image size
    condition_size: int = 512  # mask size (must equal size: condition tokens align with image)
    drop_text_prob: float = 0.1
    drop_image_prob: float = 0.1  # each local map on its own (official); the global map stays
    # the whole mask, global map included: trains text-only mode (0 in the official recipe)
    drop_mask_prob: float = 0.0
    # training with model.identity: samples that drop their reference identity (identity is optional)
    drop_identity_prob: float = 0.2
    # Splits: "START-END" id ranges (inclusive) or a path (relative to root) of an id-list file.
    train_split: str = "0-26999"
    test_split: str = "27000-29999"
    cache_dir: Optional[str] = None  # pre-encoded latents/embeddings; None = encode on the fly
    num_workers: int = 4
    # The face parser that reads this data's faces back (editing a face without its mask): "segformer"
    # for real faces, "synthfaces" (the exact colour parser) for a run trained on SynthFaces.
    parser: str = "segformer"
    # Who each image shows (identity conditioning): CelebA's identity_CelebA.txt for MM-CelebA-HQ, with
    # CelebA-HQ-to-CelebA-mapping.txt beside it or in root; None = SynthFaces' attributes.json "identity".
    identity_file: Optional[str] = None


@dataclass
class OptimizerConfig:
    type: str = "prodigy"  # "prodigy", "adamw" or "adamw8bit" (bitsandbytes: 8-bit optimizer state)
    lr: float = 1.0
    weight_decay: float = 0.01
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    use_bias_correction: bool = True  # Prodigy only
    safeguard_warmup: bool = True  # Prodigy only
    warmup_steps: int = 0
    # "constant" (the official recipe's) or "cosine": after warm-up the rate falls to 0 at train.max_steps;
    # a short run then ends on small, averaging steps instead of at full rate.
    decay: str = "constant"
    # cosine only: the fall spans the last decay_steps steps, the rate held until then (warm-up, stable,
    # decay); 0: it spans every step after warm-up
    decay_steps: int = 0


@dataclass
class TimestepSampling:
    """Training timesteps t = sigmoid(N(loc, scale²)) (logit-normal). loc 0, scale 1 is the paper's
    and FLUX's; loc > 0 visits high noise more often, where the caption decides colours."""

    loc: float = 0.0
    scale: float = 1.0


@dataclass
class TrainConfig:
    mode: str = "mogle"  # "mogle": LoRA + MoGLE on a frozen base; "base": full text-to-image
    # a finished run folder whose LoRA and MoGLE weights this run starts from (mode mogle; e.g. an
    # identity stage on top of a Face-MoGLE run: its identity projector starts fresh); null: from scratch
    init_from: Optional[str] = None
    batch_size: int = 4
    grad_accum: int = 1
    max_steps: int = 100000
    grad_clip: float = 0.5
    gradient_checkpointing: bool = True
    mixed_precision: str = "bf16"  # "no", "fp16" or "bf16"
    timestep_sampling: TimestepSampling = field(default_factory=TimestepSampling)
    loss_weighting: str = "none"  # "none" (the paper's) or "regions": rare classes and class edges count more
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    save_interval: int = 1000
    sample_interval: int = 100
    keep_checkpoints: int = 3
    log_interval: int = 10
    tracker: str = "tensorboard"  # "tensorboard", "wandb" or "none"
    runs_dir: str = "runs"


@dataclass
class SampleConfig:
    steps: int = 28
    guidance: float = 3.5
    size: int = 512
    max_sequence_length: int = 512  # T5 tokens
    condition_scale: float = 1.0
    # True classifier-free guidance: v = v_u + cfg_scale * (v_c - v_u), v_u predicted without the
    # prompt and without the mask (what the training dropouts teach). 1 = off, one pass per step;
    # FLUX.1-dev is guidance-distilled and keeps 1 (its knob is `guidance`).
    cfg_scale: float = 1.0
    # The prompt's own guidance weight on top of the mask's: v = v_u + cfg_scale·(v_m − v_u) +
    # text_cfg_scale·(v_c − v_m), v_m predicted with the mask and without the prompt (a third pass per
    # step where a mask is given; without one v_m = v_u and this is the only weight). null = cfg_scale:
    # one joint weight, two passes.
    text_cfg_scale: Optional[float] = None
    mask_latent: str = "mode"  # "mode" or "sample" of the VAE posterior for mask maps
    # "real": one binary map per class (as training builds them); "blank": all 19 local maps empty,
    # as the official inference.py/test.py build them (a PIL-vs-int comparison bug, DESIGN §3) —
    # only to reproduce the published numbers
    local_maps: str = "real"
    # Images without a mask (text-only): "official" feeds all-zero maps through Face-MoGLE (the
    # official sampler); "base" samples them, guidance passes included, with the base DiT alone (no
    # condition tokens, LoRA off). Images with a mask are sampled the same way under both.
    text_only: str = "official"
    # Largest image side a sampler accepts: FLUX.1-dev is trained up to ~2 MP; past this a typo such
    # as 4096 would allocate gigabytes (and on a CPU, hold the demo's queue for minutes)
    max_size: int = 2048
    # Where components live while sampling on a GPU: "none" (all on the device), "model" (each
    # component on the device only while it runs) or "leaf" (the transformer's layers stream in
    # one by one: least memory, slowest)
    offload: str = "none"
    # Largest input image (face or mask, width x height) a command reads, checked on the file's header
    # before decoding: a small file can declare a huge image (the default is 4096 x 4096)
    max_input_pixels: int = 16777216


@dataclass
class Config:
    name: str = "face-mogle"
    # A diffusers-layout FLUX folder, or "tiny" for the in-code tiny preset.
    pretrained: str = "checkpoints/FLUX.1-dev"
    # A GGUF single file of the transformer (e.g. flux1-dev-Q8_0.gguf, original BFL layout), already
    # quantized; everything else (and the transformer's config.json) still comes from `pretrained`.
    pretrained_transformer: Optional[str] = None
    dtype: str = "bfloat16"  # weights dtype of the frozen backbone
    seed: int = 42
    max_sequence_length: int = 512  # T5 tokens in training
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


# --------------------------------------------------------------------------------------------
# Loading and validation


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check `value` against the annotated type, allowing int→float; error names the key."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {shown(value)}")
        return _build(typ, value, key + ".")
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-4" (no dot) as text
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is list or origin is list:
        if isinstance(value, list):
            return value
    else:  # pragma: no cover - only the types above are used
        return value
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"config key '{key}' must be {name}, got {shown(value)}")


def _unknown_key(prefix: str, key: str, valid: list[str]) -> ConfigError:
    key = key if len(key) <= 60 else key[:57] + "..."
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(
        f"unknown config key '{prefix}{key}'{hint}; valid keys"
        f"{' under ' + repr(prefix[:-1]) if prefix else ''}: {', '.join(valid)}"
    )


def _build(cls, data: dict, prefix: str = ""):
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            raise _unknown_key(prefix, str(key), list(types_))
        kwargs[key] = _coerce(value, types_[key], prefix + key)
    return cls(**kwargs)


def from_dict(data: dict) -> Config:
    cfg = _build(Config, data or {})
    validate(cfg)
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.batch_size=8' -> (['train', 'batch_size'], 8); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {shown(text)}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {shown(text)}")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _merged(old: Any, new: Any) -> Any:
    """`new` laid over `old`, mapping by mapping (anything but two mappings: `new`)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    out = dict(old)
    for key, value in new.items():
        out[key] = _merged(old.get(key), value)
    return out


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides to a raw config mapping, checking each path exists."""
    data = dict(data or {})
    for text in overrides or []:
        path, value = parse_override(text)
        cls, node, prefix = Config, data, ""
        for i, part in enumerate(path):
            types_ = _field_types(cls)
            if part not in types_:
                raise _unknown_key(prefix, part, list(types_))
            if i == len(path) - 1:
                # a mapping given to a section updates the keys it names; the others stay as they were
                node[part] = _merged(node.get(part), value) if dataclasses.is_dataclass(types_[part]) else value
            else:
                sub = node.get(part)
                sub = dict(sub) if isinstance(sub, dict) else {}
                node[part] = sub
                node, cls, prefix = sub, types_[part], prefix + part + "."
                if not dataclasses.is_dataclass(cls):
                    raise ConfigError(f"config key '{prefix[:-1]}' is not a section")
    return data


def load_config(path: Optional[str | os.PathLike] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = load_yaml(path.read_text()) or {}
        except ConfigError as err:
            raise ConfigError(f"config file {path}: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}")
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    try:
        return from_dict(apply_overrides(data, overrides or []))
    except ConfigError as err:
        if path is None or str(path) in str(err):
            raise
        raise ConfigError(f"{path}: {err}") from None


# A module path with '*' standing for a block number (models/transformer.py turns it into a regex).
_TARGET = re.compile(r"[A-Za-z0-9_*]+(\.[A-Za-z0-9_*]+)*")
MAX_NAME_LENGTH = 100


def _check_name(name: str) -> None:
    """The run name is one folder under train.runs_dir: never a path that leaves it, never empty."""
    bad = (not name.strip() or name in (".", "..") or any(c in name for c in "/\\") or
           any(ord(c) < 32 for c in name) or len(name) > MAX_NAME_LENGTH)
    if bad:
        raise ConfigError(f"config key 'name' must be one folder name under train.runs_dir (no / or \\, not . or .., "
                          f"1 to {MAX_NAME_LENGTH} characters); got {shown(name)}")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}; got {shown(value)}")


def validate(cfg: Config) -> None:
    """Value checks that types alone cannot express."""
    _check_name(cfg.name)
    _choice("dtype", cfg.dtype, ("float32", "bfloat16", "float16"))
    if cfg.model.global_map == "official":
        from .data.masks import RENAMED_GLOBAL_MODE

        raise ConfigError(f"config key 'model.global_map': {RENAMED_GLOBAL_MODE}. Set model.global_map: gray to "
                          "keep what this config did, or palette for the released weights")
    _choice("model.global_map", cfg.model.global_map, ("palette", "gray", "stored"))
    _choice("model.experts", cfg.model.experts, ("all", "global", "local"))
    _choice("train.mode", cfg.train.mode, ("mogle", "base"))
    if cfg.train.init_from is not None and (cfg.train.mode != "mogle" or not str(cfg.train.init_from).strip()):
        raise ConfigError(f"config key 'train.init_from' names a Face-MoGLE run folder to start LoRA and MoGLE from "
                          f"(train.mode mogle), got {shown(cfg.train.init_from)} with train.mode {cfg.train.mode}")
    _choice("train.loss_weighting", cfg.train.loss_weighting, ("none", "regions"))
    _choice("train.mixed_precision", cfg.train.mixed_precision, ("no", "fp16", "bf16"))
    _choice("train.optimizer.type", cfg.train.optimizer.type, ("prodigy", "adamw", "adamw8bit"))
    _choice("model.quantize", cfg.model.quantize, ("none", "int8", "fp8", "nf4"))
    _choice("sample.offload", cfg.sample.offload, ("none", "model", "leaf"))
    if cfg.pretrained_transformer is not None and cfg.model.quantize != "none":
        raise ConfigError(f"config key 'pretrained_transformer' names a GGUF file, which is already quantized: "
                          f"model.quantize must be none with it (got {cfg.model.quantize!r})")
    _choice("train.optimizer.decay", cfg.train.optimizer.decay, ("constant", "cosine"))
    opt = cfg.train.optimizer
    if opt.decay_steps < 0 or (opt.decay_steps and opt.decay != "cosine"):
        raise ConfigError(f"config key 'train.optimizer.decay_steps' is a number of final steps >= 0 that the cosine "
                          f"decay spans (train.optimizer.decay: cosine); got {opt.decay_steps} with decay {opt.decay}")
    _choice("train.tracker", cfg.train.tracker, ("tensorboard", "wandb", "none"))
    _choice("sample.mask_latent", cfg.sample.mask_latent, ("mode", "sample"))
    _choice("sample.local_maps", cfg.sample.local_maps, ("real", "blank"))
    _choice("sample.text_only", cfg.sample.text_only, ("official", "base"))
    _choice("data.parser", cfg.data.parser, ("segformer", "synthfaces"))
    if cfg.data.identity_file is not None and not cfg.data.identity_file.strip():
        raise ConfigError("config key 'data.identity_file' must be null or a file path (identity_CelebA.txt), got ''")
    _choice("model.lora.init", cfg.model.lora.init, ("gaussian", "default"))
    _check_identity(cfg.model.identity)
    if not 0.0 <= cfg.model.gate_global_prior < 1.0:
        raise ConfigError(f"config key 'model.gate_global_prior' must be in [0, 1), got {cfg.model.gate_global_prior}")
    ts = cfg.train.timestep_sampling
    if not (math.isfinite(ts.loc) and math.isfinite(ts.scale) and ts.scale > 0):
        raise ConfigError(f"config keys 'train.timestep_sampling.loc/scale' must be finite with scale > 0, "
                          f"got loc={ts.loc}, scale={ts.scale}")
    if cfg.model.num_experts < 2:
        raise ConfigError(f"config key 'model.num_experts' must be >= 2, got {cfg.model.num_experts}")
    for key in ("data.drop_text_prob", "data.drop_image_prob", "data.drop_mask_prob", "data.drop_identity_prob"):
        section, name = key.split(".")
        p = getattr(getattr(cfg, section), name)
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"config key '{key}' must be in [0, 1], got {p}")
    for key, value in (("data.size", cfg.data.size), ("sample.size", cfg.sample.size)):
        if value <= 0 or value % 16:
            raise ConfigError(f"config key '{key}' must be a positive multiple of 16, got {value}")
    if cfg.data.condition_size != cfg.data.size:
        raise ConfigError(
            "config keys 'data.condition_size' and 'data.size' must be equal: condition tokens "
            f"are aligned one-to-one with image tokens (got {cfg.data.condition_size} and {cfg.data.size})"
        )
    for key, value in (
        ("train.batch_size", cfg.train.batch_size),
        ("train.grad_accum", cfg.train.grad_accum),
        ("train.max_steps", cfg.train.max_steps),
        ("train.save_interval", cfg.train.save_interval),
        ("train.log_interval", cfg.train.log_interval),
        ("train.keep_checkpoints", cfg.train.keep_checkpoints),
        ("model.lora.r", cfg.model.lora.r),
        ("sample.steps", cfg.sample.steps),
        ("sample.max_input_pixels", cfg.sample.max_input_pixels),
    ):
        if value < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {value}")
    if cfg.train.sample_interval < 0:
        raise ConfigError(f"config key 'train.sample_interval' must be >= 0 (0 = never), got {cfg.train.sample_interval}")
    if cfg.sample.max_size < cfg.sample.size:
        raise ConfigError(f"config key 'sample.max_size' ({cfg.sample.max_size}) must be >= sample.size ({cfg.sample.size})")
    for key, value in (("sample.guidance", cfg.sample.guidance), ("sample.condition_scale", cfg.sample.condition_scale),
                       ("train.optimizer.lr", cfg.train.optimizer.lr)):
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value}")
    if not cfg.sample.condition_scale > 0:
        raise ConfigError(f"config key 'sample.condition_scale' must be > 0, got {cfg.sample.condition_scale}")
    if not (math.isfinite(cfg.sample.cfg_scale) and cfg.sample.cfg_scale >= 1):
        raise ConfigError(f"config key 'sample.cfg_scale' must be a finite number >= 1 (1 = off), got {cfg.sample.cfg_scale}")
    betas = cfg.train.optimizer.betas
    if not (len(betas) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"config key 'train.optimizer.betas' must be two numbers in [0, 1), e.g. [0.9, 0.999]; got {shown(betas)}")
    targets = cfg.model.lora.target_modules
    bad = next((t for t in targets if not (isinstance(t, str) and _TARGET.fullmatch(t))), None)
    if not targets or bad is not None:
        raise ConfigError("config key 'model.lora.target_modules' must be a non-empty list of module names such as "
                          f"'transformer_blocks.*.attn.to_q' (letters, digits, _ . and * for a block number); got {shown(bad if targets else targets)}")
    text_w = cfg.sample.text_cfg_scale
    if text_w is not None and not (isinstance(text_w, (int, float)) and math.isfinite(text_w) and text_w >= 1):
        raise ConfigError(f"config key 'sample.text_cfg_scale' must be null (= sample.cfg_scale) or a finite number >= 1, got {text_w}")


IDENTITY_ENCODERS = ("synthfaces", "arcface")  # face_mogle.identity.ENCODERS
MAX_IDENTITY_TOKENS = 64  # PuLID uses 32; past this the tokens cost more attention than the mask


def _check_identity(ident: IdentityConfig) -> None:
    if ident.encoder is not None and ident.encoder not in IDENTITY_ENCODERS:
        raise ConfigError(f"config key 'model.identity.encoder' must be null (no identity) or one of "
                          f"{', '.join(IDENTITY_ENCODERS)}; got {shown(ident.encoder)}")
    if ident.weights is not None and not ident.weights.strip():
        raise ConfigError("config key 'model.identity.weights' must be a path, or null for the encoder's default place")
    if not 1 <= ident.num_tokens <= MAX_IDENTITY_TOKENS:
        raise ConfigError(f"config key 'model.identity.num_tokens' must be in 1..{MAX_IDENTITY_TOKENS}, got {ident.num_tokens}")
    if not 1 <= ident.embed_dim <= 65536:
        raise ConfigError(f"config key 'model.identity.embed_dim' must be the encoder's embedding size (e.g. 512), "
                          f"got {ident.embed_dim}")
    _choice("model.identity.entry", ident.entry, ("condition", "text"))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def valid_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every dotted key the config accepts (for docs and error messages)."""
    keys = []
    for name, typ in _field_types(cls).items():
        if dataclasses.is_dataclass(typ):
            keys += valid_keys(typ, prefix + name + ".")
        else:
            keys.append(prefix + name)
    return keys
