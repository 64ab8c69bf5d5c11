"""FLUX.1 components: loaded from a local diffusers-layout folder, or built tiny in code.

The tiny preset uses the very same classes as FLUX.1-dev (FluxTransformer2DModel, AutoencoderKL,
CLIPTextModel, T5EncoderModel, FlowMatchEulerDiscreteScheduler) with small configs and tokenizers
made offline, so tests and the shipped demo exercise the real code paths. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..utils import DTYPES

# Subfolder → what must be there (diffusers' FluxPipeline layout).
COMPONENTS = {
    "transformer": "the FLUX transformer (config.json + weights)",
    "vae": "the FLUX autoencoder (config.json + weights)",
    "text_encoder": "CLIP-L text encoder",
    "tokenizer": "CLIP tokenizer",
    "text_encoder_2": "T5-XXL text encoder",
    "tokenizer_2": "T5 tokenizer",
    "scheduler": "FlowMatchEulerDiscreteScheduler config",
}


class BackboneError(FileNotFoundError):
    """A missing or incomplete backbone folder; the message says what to put where."""


@dataclass
class TinySpec:
    """Sizes of the tiny preset. Defaults are test-sized; the demo model uses larger ones."""

    num_layers: int = 2
    num_single_layers: int = 2
    num_attention_heads: int = 2
    attention_head_dim: int = 16
    axes_dims_rope: list = field(default_factory=lambda: [4, 6, 6])  # sums to attention_head_dim
    vae_channels: list = field(default_factory=lambda: [16, 16, 16])  # 3 levels → 4× downsampling
    vae_layers_per_block: int = 1
    latent_channels: int = 16  # as FLUX's VAE
    clip_hidden: int = 32
    clip_layers: int = 2
    t5_hidden: int = 32
    t5_layers: int = 2
    t5_vocab: str = "chars"  # "chars": one token per character; "words": the SynthFaces caption words
    # "bytes": one CLIP token per character (77 characters cut most captions); "words": BPE merges
    # that make each caption word one token (a caption fits CLIP's 77-token window)
    clip_vocab: str = "bytes"
    seed: int = 0


# The shipped tiny demo model's sizes (4 double + 6 single blocks, 128 wide; 4× VAE: a 128² face is
# 32×32 latents = 256 tokens per stream, fine enough for eyes and lips; word-level T5 and CLIP tokens
# keep the text short and whole): small enough to train on a CPU and to live in git.
TINY_DEMO_SPEC = TinySpec(
    num_layers=4, num_single_layers=6, num_attention_heads=4, attention_head_dim=32, axes_dims_rope=[8, 12, 12],
    vae_channels=[32, 64, 64], clip_hidden=64, t5_hidden=64, t5_vocab="words", clip_vocab="words",
)


@dataclass
class Backbone:
    transformer: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    text_encoder_2: torch.nn.Module
    tokenizer_2: object
    scheduler: object
    source: str  # folder path, or "tiny"
    quantize: str = "none"  # weight-only quantization of the transformer and T5 (models.quantization)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def token_pixels(self) -> int:
        """Image pixels per side covered by one packed (2×2 latent) token."""
        return 2 * self.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype, read off a layer that no scheme quantizes (biases and
        norms stay in it; a 4-bit weight's own dtype is uint8)."""
        return self.transformer.context_embedder.bias.dtype

    def to(self, device=None, dtype=None) -> "Backbone":
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for m in (self.transformer, self.vae, self.text_encoder, self.text_encoder_2):
            if kwargs:
                m.to(**kwargs)
        return self

    def pipeline(self):
        """A diffusers FluxPipeline sharing these components (for its prompt encoding helpers).

        Built once: encode_prompts calls this every training step.
        """
        from diffusers import FluxPipeline

        if getattr(self, "_pipeline", None) is not None:
            return self._pipeline
        self._pipeline = FluxPipeline(
            scheduler=self.scheduler, vae=self.vae, text_encoder=self.text_encoder,
            tokenizer=self.tokenizer, text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2, transformer=self.transformer,
        )
        return self._pipeline

    def save(self, folder: str | os.PathLike) -> None:
        """Write all components in diffusers' FluxPipeline layout (loadable by `load_backbone`)."""
        self.pipeline().save_pretrained(str(folder), safe_serialization=True)

    def save_atomically(self, folder: str | os.PathLike, extra_files: Optional[dict] = None) -> None:
        """`save` into a temporary folder beside `folder`, then swap it in: a killed stage never
        leaves a half-written backbone where the next stage looks. `extra_files`: {name: text}."""
        import shutil
        import tempfile

        folder = Path(folder)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
        try:
            self.save(tmp)
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def identity(self) -> dict:
        """What identifies these weights (recorded in caches and run folders)."""
        return {
            "source": self.source,
            "transformer": dict(self.transformer.config),
            "vae_latent_channels": self.latent_channels,
            "vae_scale_factor": self.vae_scale_factor,
        }


# --------------------------------------------------------------------------------------------
# Loading from a folder


def check_backbone_folder(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise BackboneError(
            f"FLUX backbone folder not found: {folder} — put the diffusers-layout FLUX.1-dev folder "
            f"(black-forest-labs/FLUX.1-dev: {', '.join(COMPONENTS)}) there, or point `pretrained` / --pretrained at it"
        )
    missing = [name for name in COMPONENTS if not (folder / name).is_dir()]
    if missing:
        what = "; ".join(f"{m}/ ({COMPONENTS[m]})" for m in missing)
        raise BackboneError(f"FLUX backbone folder {folder} is incomplete: missing {what}")
    return folder


def load_backbone(
    source: str | os.PathLike,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    tiny_spec: Optional[TinySpec] = None,
    quantize: str = "none",
    pretrained_transformer: Optional[str | os.PathLike] = None,
    encoders_device: Optional[torch.device | str] = None,
) -> Backbone:
    """Load all FLUX components from `source` (a folder), or build the tiny preset ("tiny").

    `quantize` ("none", "int8", "fp8", "nf4") loads the transformer and T5 weight-only quantized
    through diffusers' / transformers' quantization configs; they then compute in bfloat16 where
    `dtype` is float32 (see models.quantization). `pretrained_transformer`, a GGUF file, replaces the
    transformer's weights (its config still comes from `source`); the backbone's `quantize` then
    names the file's type, e.g. "gguf-q8_0" (models.gguf). `encoders_device` (default: `device`) is
    where the VAE, CLIP and T5 go: training from a full latent/text cache keeps them on the CPU, so
    they never take GPU memory; T5 is then loaded unquantized (it does not run there, and NF4 cannot
    be loaded on a CPU)."""
    from .quantization import QuantizationError, check_scheme

    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    if pretrained_transformer is not None and quantize != "none":
        raise QuantizationError(f"pretrained_transformer {pretrained_transformer} is a GGUF file, already quantized: "
                                f"quantize must be none with it (got {quantize})")
    check_scheme(quantize, device)
    encoders_device = torch.device(device if encoders_device is None else encoders_device)
    apart = encoders_device != torch.device(device)
    if str(source) == "tiny":
        # Built in float32 on the CPU; move/cast only when asked (casting diffusers models warns).
        backbone = build_tiny_backbone(tiny_spec or TinySpec())
        if quantize != "none":
            _quantize_in_place(backbone, quantize, dtype, device, text_encoder=not apart)
        if pretrained_transformer is not None:
            import tempfile

            from .quantization import quantized_scheme

            with tempfile.TemporaryDirectory() as tmp:  # the tiny transformer's config.json, as a folder holds it
                backbone.transformer.save_config(tmp)
                backbone.transformer = _gguf_transformer(pretrained_transformer, tmp, dtype, device)
            backbone.quantize = quantized_scheme(backbone.transformer)
        return _move_unquantized(backbone, device, None if dtype == torch.float32 else dtype, encoders_device)
    folder = check_backbone_folder(source)

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    def load(name, fn):
        try:
            return fn(str(folder / name))
        except BackboneError:
            raise
        except (OSError, ValueError, EnvironmentError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BackboneError(f"cannot load {COMPONENTS[name]} from {folder / name}: {first}") from None

    from .quantization import compute_dtype, diffusers_config

    kw = dict(local_files_only=True, torch_dtype=dtype)
    # quantized components load straight onto the device: bitsandbytes places them itself
    qdtype = compute_dtype(quantize, dtype)
    qkw = dict(kw, torch_dtype=qdtype) if quantize == "none" else dict(
        kw, torch_dtype=qdtype, device_map={"": torch.device(device)})

    def transformer(p):
        if pretrained_transformer is not None:  # the weights from the GGUF file, the config from the folder
            return _gguf_transformer(pretrained_transformer, p, dtype, device)
        return FluxTransformer2DModel.from_pretrained(p, quantization_config=diffusers_config(quantize, qdtype), **qkw)

    backbone = Backbone(
        transformer=load("transformer", transformer),
        vae=load("vae", lambda p: AutoencoderKL.from_pretrained(p, **kw)),
        text_encoder=load("text_encoder", lambda p: CLIPTextModel.from_pretrained(p, **kw)),
        tokenizer=load("tokenizer", lambda p: CLIPTokenizer.from_pretrained(p, local_files_only=True)),
        text_encoder_2=load("text_encoder_2", lambda p: _load_t5(p, T5EncoderModel, "none" if apart else quantize,
                                                                     qdtype, device, kw)),
        tokenizer_2=load("tokenizer_2", lambda p: AutoTokenizer.from_pretrained(p, local_files_only=True)),
        scheduler=load("scheduler", lambda p: FlowMatchEulerDiscreteScheduler.from_pretrained(p, local_files_only=True)),
        source=str(folder),
        quantize=quantize,
    )
    if pretrained_transformer is not None:
        from .quantization import quantized_scheme

        backbone.quantize = quantized_scheme(backbone.transformer)
    return _move_unquantized(backbone, device, None, encoders_device)


def _gguf_transformer(path, config_dir, dtype: torch.dtype, device):
    """The transformer of `config_dir` with its weights from a GGUF file, placed on `device` and
    computing in `dtype`; a bad file is one BackboneError line."""
    from .gguf import GGUFError, load_gguf_transformer

    try:
        return load_gguf_transformer(path, config_dir, dtype, device)
    except GGUFError as err:
        raise BackboneError(str(err)) from None


def _load_t5(path, cls, quantize: str, qdtype: torch.dtype, device, kw: dict):
    from .quantization import transformers_config

    if quantize == "none":
        return cls.from_pretrained(path, **kw)
    kw = {k: v for k, v in kw.items() if k != "torch_dtype"}
    return cls.from_pretrained(path, dtype=qdtype, quantization_config=transformers_config(quantize, qdtype),
                               device_map={"": torch.device(device)}, **kw)


def _move_unquantized(backbone: Backbone, device, dtype: Optional[torch.dtype], encoders_device=None) -> Backbone:
    """Move (and cast) the components that are not quantized: the transformer to `device`, the
    encoders to `encoders_device` (default: `device`). Quantized ones already sit where they were
    loaded (a quantized weight is not cast)."""
    from .quantization import quantized_scheme

    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        where = device if name == "transformer" or encoders_device is None else encoders_device
        kwargs = {k: v for k, v in (("device", None if str(where) == "cpu" else where), ("dtype", dtype)) if v is not None}
        if kwargs and quantized_scheme(getattr(backbone, name)) == "none":  # a GGUF transformer beside a plain T5
            getattr(backbone, name).to(**kwargs)
    return backbone


def _quantize_in_place(backbone: Backbone, quantize: str, dtype: torch.dtype, device, text_encoder: bool = True) -> None:
    """The tiny preset's transformer and (with `text_encoder`) T5, quantized by the same loaders a
    folder goes through: saved to a temporary folder and loaded back with the quantization configs."""
    import tempfile

    from diffusers import FluxTransformer2DModel
    from transformers import T5EncoderModel

    from .quantization import compute_dtype, diffusers_config

    qdtype = compute_dtype(quantize, dtype)
    kw = dict(local_files_only=True, torch_dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        backbone.transformer.save_pretrained(os.path.join(tmp, "transformer"))
        backbone.transformer = FluxTransformer2DModel.from_pretrained(
            os.path.join(tmp, "transformer"), quantization_config=diffusers_config(quantize, qdtype),
            **dict(kw, torch_dtype=qdtype, device_map={"": torch.device(device)})).eval()
        if text_encoder:
            backbone.text_encoder_2.save_pretrained(os.path.join(tmp, "text_encoder_2"))
            backbone.text_encoder_2 = _load_t5(os.path.join(tmp, "text_encoder_2"), T5EncoderModel, quantize, qdtype,
                                               device, kw).eval()
    backbone.quantize = quantize
    backbone._pipeline = None


# --------------------------------------------------------------------------------------------
# The tiny preset


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP byte → printable unicode symbol table (256 symbols)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = 0
    table = {}
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _word_merges(words: list[str]) -> list[str]:
    """BPE merges (in rank order) that turn each word into one token: learned by the `tokenizers` BPE
    trainer on the word list, so applying them in rank order rebuilds every word whole."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(words, trainers.BpeTrainer(vocab_size=1 << 20, min_frequency=1, show_progress=False,
                                                       end_of_word_suffix="</w>"))
    return [" ".join(pair) for pair in json.loads(tok.to_str())["model"]["merges"]]


def build_clip_tokenizer(folder: str | os.PathLike, vocab_kind: str = "bytes"):
    """A CLIP tokenizer made offline: byte-level with no merges (every character a token, "bytes"),
    or with merges that make each word of `T5_WORDS` one token ("words"); other words still spell
    out in pieces down to bytes."""
    from transformers import CLIPTokenizer

    if vocab_kind not in ("bytes", "words"):
        raise ValueError(f"clip_vocab must be 'bytes' or 'words', got {vocab_kind!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    merges = _word_merges(T5_WORDS) if vocab_kind == "words" else []
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


T5_CHARS = [chr(c) for c in range(32, 127)]
# Every word and mark of the SynthFaces captions, plus a few face words a demo user may type;
# anything else becomes <unk>.
T5_WORDS = sorted(set("""
, - . a and background bald black blond blue bob brown buzz cut dark earrings eyes glasses gray
green hair has hat he head is light lips lipstick long man medium navy necklace of on orange person
pink plum portrait purple red she shirt short skin teal this wavy wearing wears white with woman
yellow face her his no smiling young old curly straight beard grey blonde
""".split()))


def build_t5_tokenizer(vocab_kind: str = "chars"):
    """A T5-style tokenizer (pad=0, eos=1, unk=2) made offline: one token per character ("chars"),
    or per lower-cased word/punctuation mark from a fixed list ("words")."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if vocab_kind not in ("chars", "words"):
        raise ValueError(f"t5_vocab must be 'chars' or 'words', got {vocab_kind!r}")
    symbols = T5_CHARS if vocab_kind == "chars" else T5_WORDS
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({c: 3 + i for i, c in enumerate(symbols)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    if vocab_kind == "chars":
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    else:
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def build_tiny_backbone(spec: TinySpec = TinySpec()) -> Backbone:
    """Random-weight FLUX-class components of a tiny size, deterministic by `spec.seed`."""
    import tempfile

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if sum(spec.axes_dims_rope) != spec.attention_head_dim:
        raise ValueError(f"tiny spec: axes_dims_rope {spec.axes_dims_rope} must sum to attention_head_dim {spec.attention_head_dim}")
    torch.manual_seed(spec.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_clip_tokenizer(tmp, spec.clip_vocab)
    tokenizer_2 = build_t5_tokenizer(spec.t5_vocab)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=spec.clip_hidden, intermediate_size=2 * spec.clip_hidden,
            num_hidden_layers=spec.clip_layers, num_attention_heads=2, max_position_embeddings=77,
            projection_dim=spec.clip_hidden, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2), d_model=spec.t5_hidden, d_kv=spec.t5_hidden // 2, d_ff=2 * spec.t5_hidden,
            num_layers=spec.t5_layers, num_heads=2, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
    )
    n = len(spec.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=spec.latent_channels,
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(spec.vae_channels), layers_per_block=spec.vae_layers_per_block,
        norm_num_groups=min(8, min(spec.vae_channels)), scaling_factor=1.0, shift_factor=0.0,
        use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False,
    )
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * spec.latent_channels, num_layers=spec.num_layers,
        num_single_layers=spec.num_single_layers, attention_head_dim=spec.attention_head_dim,
        num_attention_heads=spec.num_attention_heads, joint_attention_dim=spec.t5_hidden,
        pooled_projection_dim=spec.clip_hidden, guidance_embeds=True, axes_dims_rope=list(spec.axes_dims_rope),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    for m in (transformer, vae, text_encoder, text_encoder_2):
        m.eval()
    return Backbone(transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler, source="tiny")


def tiny_spec_dict(spec: TinySpec) -> dict:
    return asdict(spec)
