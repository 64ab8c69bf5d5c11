"""Prompt + face mask → image: batched FLUX flow-matching sampling with Face-MoGLE.

    pipe = FaceMoGLEPipeline.from_run("runs/face-mogle")
    out = pipe(["She has blond hair."], ["mask.png"], seeds=[42])
    out.images[0].save("face.png")

What happens, per batch of images (DESIGN §2 "Sampling"):
  1. prompts → T5 sequence + pooled CLIP vector, once per distinct prompt of the call;
  2. masks → 20-map condition stack → VAE posterior mode (or a sample) → mask latents, once per image;
     no mask (None) = text-only mode: all 20 maps are zero images; with `model.global_map: stored`
     the global map is the mask file as stored (`masks.render_stored`; an array: its grey labels);
  3. noise: image i starts from torch.randn drawn by its own CPU generator seeded with seeds[i], so
     an image depends on its seed only, never on its batch or position;
  4. FLUX Euler flow matching: sigmas linspace(1, 1/steps) shifted by mu (from the image token count,
     the scheduler's config), embedded guidance, MoGLE re-mixing the condition tokens every step with
     its gate fed t · model.gate_timestep_scale; with `cfg_scale` w > 1, true classifier-free
     guidance v_u + w·(v_c − v_u), v_u predicted without the prompt and without the mask; with a
     `text_cfg_scale` w_t ≠ w, the prompt gets its own weight on top of the mask's:
     v_u + w·(v_m − v_u) + w_t·(v_c − v_m), v_m predicted with the mask and without the prompt;
  5. VAE decode → PIL images, and on request the gate weights as an "expert map" per image.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .config import Config, ConfigError, load_config
from .data.masks import MaskError, condition_stack_torch, load_label_map, render_stored
from .encoding import decode_tokens, encode_distribution, encode_prompts, image_ids, latent_tokens, pack, text_ids, unread_words
from .labels import NUM_MAPS, PALETTE
from .models.builder import Backbone, load_backbone
from .models.face_mogle import FaceMoGLE
from .runs import (CONFIG_FILE, SamplingError, check_device, check_run_dir, one_line, preset_overrides,
                   resolve_pretrained, user_errors)
from .utils import DTYPES

GLOBAL_EXPERT_COLOUR = (235, 235, 235)  # expert 0 in expert maps; experts 1..19 use PALETTE


@dataclass
class SampleOutput:
    images: list  # PIL RGB images, size × size
    # With return_gates=True: per image the gate weights [N, 20] (float32, averaged over steps or at
    # `gate_step`) and their expert map (PIL RGB, size × size). None without gating.
    gate_weights: Optional[list] = None
    expert_maps: Optional[list] = None
    settings: dict = field(default_factory=dict)


def mode_name(prompt: str, has_mask: bool) -> str:
    """'mask+text', 'mask-only' (empty prompt), 'text-only' (no mask) or 'unconditional'."""
    if has_mask:
        return "mask+text" if prompt else "mask-only"
    return "text-only" if prompt else "unconditional"


def expert_map(weights: torch.Tensor | np.ndarray, size: int) -> Image.Image:
    """Gate weights [N, E] of a square token grid → RGB image size × size.

    Each token shows its strongest expert: 0 (global) light grey, e ≥ 1 (local expert of class e-1)
    the CelebAMask-HQ palette colour of that class; tokens are upsampled nearest to `size`.
    """
    w = torch.as_tensor(np.asarray(weights) if not torch.is_tensor(weights) else weights).float()
    n, e = w.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"expert_map needs a square token grid, got {n} tokens")
    colours = np.concatenate([np.array([GLOBAL_EXPERT_COLOUR], np.uint8), PALETTE], axis=0)
    if e > len(colours):
        raise ValueError(f"expert_map knows colours for {len(colours)} experts, got {e}")
    winner = w.argmax(dim=1).view(side, side).cpu().numpy()
    return Image.fromarray(colours[winner], "RGB").resize((size, size), Image.NEAREST)


@contextlib.contextmanager
def _quiet_prompt_truncation():
    """CLIP reads 77 tokens at most, in training as here: its truncation warnings are noise."""
    names = ("diffusers.pipelines.flux.pipeline_flux", "transformers.tokenization_utils_base")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _on_cpu(module: torch.nn.Module) -> bool:
    p = next(module.parameters(), None)
    return p is not None and p.device.type == "cpu"


class FaceMoGLEPipeline:
    """Batched sampler over a FaceMoGLE model (transformer + LoRA + MoGLE) and its FLUX backbone."""

    def __init__(self, backbone: Backbone, model: FaceMoGLE, cfg: Config, device: str | torch.device = "cpu",
                 run_dir: Optional[str] = None, offload: Optional[str] = None):
        self.backbone = backbone
        self.model = model.eval()
        for m in (backbone.vae, backbone.text_encoder, backbone.text_encoder_2):
            m.eval()
        self.cfg = cfg
        self.device = torch.device(device)
        self.run_dir = run_dir
        self._identity_encoder = None  # loaded on first use (identity_encoder())
        # `offload` replaces sample.offload: the trainer's sample grids use "model" for its encoders
        # kept on the CPU, and never leaf hooks on the transformer it trains
        self.offload = cfg.sample.offload if offload is None else offload
        if self.offload == "leaf":
            self._group_offload_transformer()

    def _group_offload_transformer(self) -> None:
        """`sample.offload: leaf`: diffusers' leaf-level group offloading of the transformer. Its hooks
        sit on the leaf layers (Linear, norms, embeddings; LoRA's own Linears too), not on the model's
        forward: our three-stream forward calls the blocks' submodules directly, and each call onloads
        the layer it reaches. Needs an accelerator to stream to."""
        if self.device.type == "cpu":
            raise SamplingError("sample.offload leaf streams the transformer's layers to a GPU: it needs a CUDA device "
                                "(on a CPU everything already sits in memory; use none)")
        from diffusers.hooks import apply_group_offloading

        apply_group_offloading(self.backbone.transformer, onload_device=self.device, offload_device=torch.device("cpu"),
                               offload_type="leaf_level", use_stream=True)

    @contextlib.contextmanager
    def placed(self, *names: str):
        """Inside the block the named backbone components sit on the device. With `sample.offload`
        model (or leaf, for everything but the transformer) the ones waiting on the CPU are brought in
        and put back after, so T5 never sits beside the transformer; a component already on the device
        stays (the transformer a trainer is training); without offloading, everything stays where it is."""
        if self.offload == "none" or self.device.type == "cpu":
            yield
            return
        modules = [m for n in names if not (n == "transformer" and self.offload == "leaf")
                   and _on_cpu(m := getattr(self.backbone, n))]
        for m in modules:
            m.to(self.device)
        try:
            yield
        finally:
            for m in modules:
                m.to("cpu")

    # -----------------------------------------------------------------------------------------

    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike,
        pretrained: Optional[str] = None,
        device: Optional[str | torch.device] = None,
        dtype: Optional[str | torch.dtype] = None,
        overrides: Optional[Sequence[str]] = None,
        quantize: Optional[str] = None,
    ) -> "FaceMoGLEPipeline":
        """Load a run folder (config.yaml + LoRA + MoGLE) on its backbone.

        `pretrained` replaces the config's backbone ("tiny" or a folder); `dtype` the config's
        weights dtype; `overrides` are `--set`-style "key=value" config overrides (e.g.
        "model.gate_timestep_scale=1000"); `quantize` the config's `model.quantize` (the base's
        transformer and T5 weight-only quantized: none, int8, fp8, nf4; the config's
        `pretrained_transformer`, a GGUF file, is quantized already). Errors: SamplingError,
        ConfigError, BackboneError, QuantizationError.
        """
        run = check_run_dir(run_dir)
        overrides = list(overrides or []) + ([f"model.quantize={quantize}"] if quantize is not None else [])
        cfg = load_config(run / CONFIG_FILE, overrides)
        source = resolve_pretrained(pretrained or cfg.pretrained, run)
        device = check_device(device)
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise SamplingError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
            dtype = DTYPES[dtype]
        dtype = dtype or DTYPES[cfg.dtype]
        # offloaded components start on the CPU (NF4 layers are placed on the GPU by bitsandbytes itself)
        offloaded = cfg.sample.offload != "none" and device.type != "cpu" and cfg.model.quantize != "nf4"
        gguf = resolve_pretrained(cfg.pretrained_transformer, run) if cfg.pretrained_transformer else None
        backbone = load_backbone(source, dtype=dtype, device="cpu" if offloaded else device, quantize=cfg.model.quantize,
                                 pretrained_transformer=gguf)
        model = FaceMoGLE(backbone.transformer, cfg.model)
        try:
            model.load_weights(run)
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SamplingError(f"cannot load the weights of run {run}: {first}") from None
        # LoRA adapters sit beside their base layers (peft keeps them on the base layer's device).
        # MoGLE stays float32 on the device: it is small, and its output is cast to the transformer's dtype.
        if cfg.sample.offload == "none" or device.type == "cpu":
            model.transformer.to(device)
        elif not offloaded:  # NF4, loaded onto the GPU: every component waits on the CPU until it runs
            backbone.to(device="cpu")
        model.mogle.to(device=device, dtype=torch.float32)
        return cls(backbone, model, cfg, device=device, run_dir=str(run))

    # -----------------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype."""
        return self.backbone.dtype

    @property
    def token_pixels(self) -> int:
        return self.backbone.token_pixels

    def check_size(self, size: int) -> int:
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size <= 0 or size % self.token_pixels:
            raise SamplingError(
                f"size must be a positive multiple of {self.token_pixels} (pixels per image token "
                f"of this backbone), got {size}"
            )
        if size > self.cfg.sample.max_size:
            raise SamplingError(f"size {size} is above sample.max_size {self.cfg.sample.max_size} "
                                f"(raise it with --set sample.max_size=N if you have the memory)")
        return int(size)

    def guidance_scales(self, cfg_scale=None, text_cfg_scale=None) -> tuple[float, float]:
        """(cfg scale, text cfg scale), None = the run config's. A cfg scale given without a text cfg
        scale sets both (one joint weight: `cfg_scale=1` is guidance off, whatever the config's prompt
        weight); so does a config without `sample.text_cfg_scale`."""
        cfg = self.cfg.sample
        if text_cfg_scale is None:
            text_cfg_scale = cfg.text_cfg_scale if cfg_scale is None else cfg_scale
        cfg_scale = cfg.cfg_scale if cfg_scale is None else float(cfg_scale)
        text_cfg_scale = cfg_scale if text_cfg_scale is None else float(text_cfg_scale)
        for name, w in (("cfg scale", cfg_scale), ("text cfg scale", text_cfg_scale)):
            if not (math.isfinite(w) and w >= 1):
                raise SamplingError(f"{name} must be a finite number >= 1 (1 = off), got {w}")
        return cfg_scale, text_cfg_scale

    def settings(self, steps, guidance, condition_scale, size, batch_size, cfg_scale=None, text_cfg_scale=None
                 ) -> tuple[int, float, float, int, float, float]:
        """Sampling settings, None = the run config's `sample.*`, checked: (steps, guidance,
        condition scale, size, cfg scale, text cfg scale)."""
        cfg = self.cfg.sample
        cfg_scale, text_cfg_scale = self.guidance_scales(cfg_scale, text_cfg_scale)
        steps = cfg.steps if steps is None else steps
        guidance = cfg.guidance if guidance is None else float(guidance)
        condition_scale = cfg.condition_scale if condition_scale is None else float(condition_scale)
        size = self.check_size(cfg.size if size is None else size)
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
            raise SamplingError(f"steps must be an integer >= 1, got {steps!r}")
        if not (math.isfinite(condition_scale) and condition_scale > 0):
            raise SamplingError(f"condition scale must be a finite number > 0, got {condition_scale}")
        if not math.isfinite(guidance):
            raise SamplingError(f"guidance must be a finite number, got {guidance}")
        if batch_size < 1:
            raise SamplingError(f"batch size must be >= 1, got {batch_size}")
        return steps, guidance, condition_scale, size, cfg_scale, text_cfg_scale

    def load_mask(self, mask: Any, size: int) -> Optional[np.ndarray]:
        """A mask (path, PIL, array or label tensor; None = text-only) → uint8 labels size × size."""
        if mask is None:
            return None
        return load_label_map(mask, size, self.cfg.sample.max_input_pixels)

    def stored_map(self, mask: Any, size: int) -> Optional[np.ndarray]:
        """With `model.global_map: stored`, the mask as stored, uint8 size × size × 3 (a file:
        Image.open(f).convert("RGB"); an array: its grey labels, see masks.render_stored); None
        otherwise or without a mask. The global map can only be rendered so from the file itself."""
        if mask is None or self.cfg.model.global_map != "stored":
            return None
        return render_stored(mask, size, self.cfg.sample.max_input_pixels)

    def timesteps(self, steps: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(model timesteps in [0,1] [steps], sigmas [steps+1] ending at 0) as FluxPipeline sets them."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        scheduler = copy.deepcopy(self.backbone.scheduler)  # set_timesteps mutates the scheduler
        conf = scheduler.config
        if conf.get("stochastic_sampling", False):
            raise SamplingError("the scheduler config asks for stochastic sampling, which this sampler does not do")
        mu = calculate_shift(
            num_tokens, conf.get("base_image_seq_len", 256), conf.get("max_image_seq_len", 4096),
            conf.get("base_shift", 0.5), conf.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1.0 / steps, steps)
        if conf.get("use_flow_sigmas", False):
            sigmas = None
        scheduler.set_timesteps(num_inference_steps=steps, sigmas=sigmas, mu=mu)
        t = scheduler.timesteps.float() / conf.num_train_timesteps
        return t, scheduler.sigmas.float()

    def initial_noise(self, seed: int, size: int) -> tuple[torch.Tensor, torch.Generator]:
        """Packed noise tokens [1, N, C] of one image, drawn by its own CPU generator (so the same on
        every device), and that generator (for any further draws of this image)."""
        g = torch.Generator("cpu").manual_seed(int(seed))
        side = size // self.backbone.vae_scale_factor
        return pack(torch.randn((1, self.backbone.latent_channels, side, side), generator=g)), g

    @torch.inference_mode()
    def encode_masks(self, labels: list[Optional[np.ndarray]], size: int, generators: list,
                     stored: Optional[list] = None) -> torch.Tensor:
        """Label maps (None = all-zero maps) → mask latents [B, 20, N, C], float32 on the device.
        `stored`: per map its `stored_map` (None, or no list: rendered from the labels, as an array)."""
        stacks = []
        mode = self.cfg.model.global_map
        for i, lab in enumerate(labels):
            if lab is None:
                stacks.append(torch.zeros(NUM_MAPS, 3, size, size))
            else:
                rgb = None
                if mode == "stored":
                    rgb = stored[i] if stored is not None and stored[i] is not None else render_stored(lab)
                    rgb = torch.from_numpy(np.array(rgb))
                stack = condition_stack_torch(torch.from_numpy(np.array(lab)), mode, stored=rgb)
                if self.cfg.sample.local_maps == "blank":
                    stack[1:] = 0  # the official sampler's blank local maps (DESIGN §3)
                stacks.append(stack)
        stack = torch.stack(stacks).to(self.device)  # [B, 20, 3, S, S]
        b = stack.shape[0]
        mean, std = encode_distribution(self.backbone.vae, stack.flatten(0, 1))  # deduplicated
        mean, std = mean.view(b, NUM_MAPS, *mean.shape[1:]), std.view(b, NUM_MAPS, *std.shape[1:])
        vae = self.backbone.vae
        if self.cfg.sample.mask_latent == "sample":
            # Each image's posterior sample comes from its own generator: batch-independent.
            tokens = []
            for i in range(b):
                noise = torch.randn(mean[i].shape, generator=generators[i]).to(self.device)
                tokens.append(latent_tokens(vae, mean[i] + std[i] * noise, std[i], sample=False))
            return torch.stack(tokens)
        tokens = latent_tokens(vae, mean.flatten(0, 1), std.flatten(0, 1), sample=False)
        return tokens.view(b, NUM_MAPS, *tokens.shape[1:])

    # -----------------------------------------------------------------------------------------

    def __call__(
        self,
        prompts: str | Sequence[str],
        masks: Any = None,
        seeds: int | Sequence[int] = 0,
        steps: Optional[int] = None,
        guidance: Optional[float] = None,
        condition_scale: Optional[float] = None,
        size: Optional[int] = None,
        batch_size: int = 4,
        cfg_scale: Optional[float] = None,
        text_cfg_scale: Optional[float] = None,
        return_gates: bool = False,
        gate_step: Optional[int] = None,
        on_step: Optional[Callable[[int, int], None]] = None,
        identities: Any = None,
    ) -> SampleOutput:
        """Generate one image per (prompt, mask, seed).

        prompts: a string or a list ("" = mask-only mode). masks: one mask or a list; each a path,
        PIL image, numpy array or label tensor [H, W], or None (text-only mode: all-zero maps); a
        [B, H, W] array or tensor is B masks. A list of
        length 1 (or a single value) is repeated to the length of the other. seeds: a list, one per
        image, or an int s meaning s, s+1, ... Settings left None come from the run's config
        (`sample.*`). `gate_step` picks one step's gate weights instead of their mean over steps.
        `on_step(done, total)` is called after every denoising step (done counts over all batches).
        identities: who each face is (runs with `model.identity`): a reference face (path, PIL image,
        uint8 array) or its embedding (a 1-D tensor), or None; one, or one per image.
        """
        cfg = self.cfg.sample
        steps, guidance, condition_scale, size, cfg_scale, text_cfg_scale = self.settings(
            steps, guidance, condition_scale, size, batch_size, cfg_scale, text_cfg_scale)
        if gate_step is not None and not 0 <= gate_step < steps:
            raise SamplingError(f"gate step must be in 0..{steps - 1}, got {gate_step}")

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if isinstance(masks, (list, tuple)):
            masks = list(masks)
        elif isinstance(masks, (np.ndarray, torch.Tensor)) and masks.ndim == 3:
            masks = list(masks)  # a batch of label maps [B, H, W]
        else:
            masks = [masks]
        n = max(len(prompts), len(masks))
        if len(prompts) == 1:
            prompts = prompts * n
        if len(masks) == 1:
            masks = masks * n
        if len(prompts) != n or len(masks) != n or n == 0:
            raise SamplingError(f"got {len(prompts)} prompts and {len(masks)} masks: give one each, or one of either")
        for p in prompts:
            if not isinstance(p, str):
                raise SamplingError(f"prompts must be strings, got {type(p).__name__}")
        seeds = [int(seeds) + i for i in range(n)] if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
        if len(seeds) != n:
            raise SamplingError(f"got {len(seeds)} seeds for {n} images")
        bad = next((s for s in seeds if not 0 <= s < 2**63), None)
        if bad is not None:
            raise SamplingError(f"seeds must be in 0..2**63-1, got {bad}")
        labels = [self.load_mask(m, size) for m in masks]  # validate every mask before any work
        stored = [self.stored_map(m, size) for m in masks]
        idents = self.identity_embeddings(identities, n)

        # Text encoders run once per distinct prompt of the call; an embedding is dropped after the
        # last batch that needs it, so memory stays bounded on long lists.
        remaining: dict[str, int] = {}
        for p in prompts:
            remaining[p] = remaining.get(p, 0) + 1
        text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        guided = cfg_scale != 1 or text_cfg_scale != 1
        empty_text = None

        # Staged per batch: text encoders, then the VAE (masks), the transformer, the VAE (decode); with
        # sample.offload each stage's components alone are on the device
        images, gates, maps = [], [], []
        total = steps * math.ceil(n / batch_size)
        done = 0
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            batch_prompts = prompts[sl]
            new = sorted({p for p in batch_prompts if p not in text_cache})
            if new or (empty_text is None and guided):
                with _quiet_prompt_truncation(), self.placed("text_encoder", "text_encoder_2"):
                    if new:
                        t5, pooled = encode_prompts(self.backbone, new, cfg.max_sequence_length, device=self.device)
                    if empty_text is None and guided:  # the prompt the guidance steers away from
                        empty_text = encode_prompts(self.backbone, [""], cfg.max_sequence_length, device=self.device)
                for i, p in enumerate(new):
                    text_cache[p] = (t5[i : i + 1], pooled[i : i + 1])
            t5 = torch.cat([text_cache[p][0] for p in batch_prompts])
            pooled = torch.cat([text_cache[p][1] for p in batch_prompts])
            for p in batch_prompts:
                remaining[p] -= 1
                if remaining[p] == 0:
                    text_cache.pop(p, None)

            def step_done():
                nonlocal done
                done += 1
                if on_step is not None:
                    on_step(done, total)

            batch_images, batch_gates = self._generate_batch(
                t5, pooled, labels[sl], seeds[sl], steps, guidance, condition_scale, size, (cfg_scale, text_cfg_scale),
                return_gates, gate_step, step_done, empty_text, stored[sl], idents[sl],
            )
            images += batch_images
            if return_gates and batch_gates is not None:
                gates += list(batch_gates)
                maps += [expert_map(w, size) for w in batch_gates]

        settings = dict(
            steps=steps, guidance=guidance, condition_scale=condition_scale, cfg_scale=cfg_scale,
            text_cfg_scale=text_cfg_scale, size=size, seeds=seeds, gate_timestep_scale=self.cfg.model.gate_timestep_scale, mask_latent=cfg.mask_latent,
            quantize=self.backbone.quantize, offload=self.offload, text_only=cfg.text_only,
            max_sequence_length=cfg.max_sequence_length,
            modes=[mode_name(p, lab is not None) + ("+identity" if e is not None else "")
                   for p, lab, e in zip(prompts, labels, idents)],
        )
        has_gates = return_gates and len(gates) == n
        return SampleOutput(images, [g.numpy() for g in gates] if has_gates else None,
                            maps if has_gates else None, settings)

    def identity_embeddings(self, identities: Any, n: int) -> list[Optional[torch.Tensor]]:
        """One embedding [D] (or None) per image, from reference faces (through the run's identity
        encoder) or given embeddings; every problem is an IdentityError line, before any sampling."""
        from .identity.errors import IdentityError

        if identities is None:
            return [None] * n
        items = list(identities) if isinstance(identities, (list, tuple)) else [identities]
        if len(items) == 1:
            items = items * n
        if len(items) != n:
            raise SamplingError(f"got {len(items)} identities for {n} images: give one, or one per image")
        if all(x is None for x in items):
            return items
        ident = self.cfg.model.identity
        if self.model.identity is None:
            raise IdentityError("this run was trained without identity (model.identity.encoder is null): it takes no "
                                "--identity; use a run trained with an identity stage")
        faces = [i for i, x in enumerate(items) if x is not None and not isinstance(x, torch.Tensor)]
        out = [x.detach().float().cpu() if isinstance(x, torch.Tensor) else None for x in items]
        if faces:
            embeds = self.identity_encoder().embed([items[i] for i in faces])
            for i, e in zip(faces, embeds):
                out[i] = e.float().cpu()
        for e in out:
            if e is not None and tuple(e.shape) != (ident.embed_dim,):
                raise IdentityError(f"an identity embedding must have {ident.embed_dim} values (model.identity.embed_dim "
                                    f"of this run, its {ident.encoder} encoder), got shape {list(e.shape)}")
        return out

    def identity_encoder(self):
        """The run's identity encoder (model.identity), loaded on first use; relative weights are looked
        up from the current directory, then from the project root the run folder sits in."""
        if self._identity_encoder is None:
            from .identity import load_identity_encoder

            ident = self.cfg.model.identity
            self._identity_encoder = load_identity_encoder(ident.encoder, self.identity_encoder_weights(),
                                                           parser=self.cfg.data.parser
                                                           if ident.encoder == "synthfaces" else None)
        return self._identity_encoder

    def identity_encoder_weights(self) -> Optional[str]:
        """Where the run's identity encoder is read from: model.identity.weights (relative: from the
        current directory, then from the project root the run folder sits in), else the encoder's
        default place; None for a run without identity."""
        from .identity import DEFAULT_WEIGHTS

        ident = self.cfg.model.identity
        if ident.encoder is None:
            return None
        weights = ident.weights if ident.weights is not None else DEFAULT_WEIGHTS[ident.encoder]
        return resolve_pretrained(weights, Path(self.run_dir)) if self.run_dir is not None else weights

    def unread_words(self, prompt: str) -> list[str]:
        """Words of `prompt` this run's T5 does not read (unknown to its tokenizer, or cut): see
        face_mogle.encoding.unread_words."""
        return unread_words(self.backbone, prompt, self.cfg.sample.max_sequence_length)

    def edit(self, images, masks, prompts, source_masks, **kwargs):
        """Edit real faces by editing their masks or descriptions: see face_mogle.editing.edit."""
        from .editing import edit

        return edit(self, images, masks, prompts, source_masks, **kwargs)

    def conditions(self, t5, pooled, labels, generators, size, guidance, condition_scale,
                   cfg_scale: float = 1.0, text_cfg_scale: Optional[float] = None, empty_text=None,
                   stored: Optional[list] = None, base: bool = False,
                   identity: Optional[torch.Tensor] = None) -> "Conditions":
        """Everything the transformer reads besides the latents and t, for a batch (on the device);
        with guidance also the batches it is guided away from: the unconditional one (empty prompt, no
        mask) and, where the prompt has its own weight (`text_cfg_scale` ≠ `cfg_scale`) and the batch
        a mask, the mask-only one (the mask, empty prompt). `text_cfg_scale` None = `cfg_scale`.
        `empty_text`: the empty prompt's (T5, pooled) encoding, if already made (else it is encoded here);
        `stored`: the masks' `stored_map`s (see encode_masks);
        base: a batch without masks sampled by the base DiT alone, its unconditional pass too (one
        model per image: guidance mixing two models' velocities would amplify their difference);
        identity: the batch's identity embeddings [B, D], kept in every pass (guidance steers the mask
        and the prompt, not who the face is)."""
        device, dtype = self.device, self.dtype
        if base and any(lab is not None for lab in labels):
            raise SamplingError("the base DiT samples images without a mask only")
        mogle_dtype = next(self.model.mogle.parameters()).dtype
        mask_latents = None if base else self.encode_masks(labels, size, list(generators), stored).to(mogle_dtype)
        b = len(labels)
        guidance_t = torch.full((b,), guidance, device=device, dtype=torch.float32) \
            if self.backbone.transformer.config.guidance_embeds else None
        cond = Conditions(mask_latents, t5.to(device, dtype), pooled.to(device, dtype),
                          text_ids(t5.shape[1], device=device, dtype=dtype),
                          image_ids(size, self.token_pixels, device=device, dtype=dtype), guidance_t, condition_scale,
                          base=base, identity=None if identity is None else identity.to(device))
        text_w = cfg_scale if text_cfg_scale is None else text_cfg_scale
        # Without any mask the mask-only prediction is the unconditional one: the prompt's weight is all.
        mask_w = cfg_scale if any(lab is not None for lab in labels) else text_w
        if mask_w == 1 and text_w == 1:
            return cond
        # "" and all-zero maps: exactly what the caption and whole-mask dropouts feed in training
        e5, ep = empty_text or encode_prompts(self.backbone, [""], self.cfg.sample.max_sequence_length, device=device)
        e5, ep = e5.expand(b, -1, -1).to(dtype), ep.expand(b, -1).to(dtype)
        e_ids = text_ids(e5.shape[1], device=device, dtype=dtype)
        uncond = mask_only = None
        if mask_w != 1:
            empty = None if base else self.encode_masks([None] * b, size, list(generators)).to(mogle_dtype)
            uncond = Conditions(empty, e5, ep, e_ids, cond.img_ids, guidance_t, condition_scale, base=base,
                                identity=cond.identity)
        if text_w != mask_w:
            mask_only = replace(cond, t5=e5, pooled=ep, txt_ids=e_ids)
        return replace(cond, cfg_scale=mask_w, text_cfg_scale=text_w, uncond=uncond, mask_only=mask_only)

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, cond: "Conditions") -> torch.Tensor:
        """The flow model's velocity at latents (float32 [B, N, C]) and model time t in [0, 1];
        guided when `cond` carries the batches to guide away from: v_u + w·(v_c − v_u) with one weight,
        v_u + w·(v_m − v_u) + w_t·(v_c − v_m) with a mask-only batch (v_u's term absent at w = 1)."""
        t = t.expand(latents.shape[0]).to(self.device)

        def predict(c: "Conditions") -> torch.Tensor:
            if c.base:
                return self.model.base(latents.to(self.dtype), t, c.t5, c.pooled, c.txt_ids, c.img_ids, c.guidance)
            return self.model(
                latents.to(self.dtype), t, c.mask_latents, c.t5, c.pooled, c.txt_ids, c.img_ids,
                guidance=c.guidance, condition_scale=c.condition_scale,
                gate_timestep=t * self.cfg.model.gate_timestep_scale, identity=c.identity,
            )

        if cond.uncond is None and cond.mask_only is None:
            return predict(cond)
        # the conditional pass last, so that the gate weights kept are its own
        v_u = None if cond.uncond is None else predict(cond.uncond).float()
        if cond.mask_only is None:
            return v_u + cond.cfg_scale * (predict(cond).float() - v_u)
        v_m = predict(cond.mask_only).float()
        guided = v_m if v_u is None else v_m + (cond.cfg_scale - 1) * (v_m - v_u)
        return guided + cond.text_cfg_scale * (predict(cond).float() - v_m)

    def decode(self, latents: torch.Tensor, size: int) -> list:
        """Final latents → PIL images; non-finite latents are an error (they decode to black)."""
        if not torch.isfinite(latents).all():
            raise SamplingError("sampling produced non-finite values (NaN or inf): the run's weights or the "
                                "settings are broken; no image written")
        pixels = decode_tokens(self.backbone.vae, latents, size, self.backbone.vae_scale_factor)
        arrays = (pixels * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a, "RGB") for a in arrays]

    @torch.inference_mode()
    def _generate_batch(self, t5, pooled, labels, seeds, steps, guidance, condition_scale, size, cfg_scales,
                        return_gates, gate_step, step_done, empty_text=None, stored=None, identities=None):
        device = self.device
        noise, generators = zip(*(self.initial_noise(s, size) for s in seeds))
        latents = torch.cat(noise).to(device)  # float32; cast to the model dtype per step
        # sample.text_only "base": images without a mask (nor identity) go to the base DiT, the others to
        # Face-MoGLE; images with and without an identity run apart (a token count is per batch). Each
        # part of the batch is conditioned and guided by its own model.
        identities = identities or [None] * len(labels)
        kind = [(self.cfg.sample.text_only == "base" and lab is None and e is None, e is not None)
                for lab, e in zip(labels, identities)]
        parts = []
        with self.placed("vae"):
            for key in sorted(set(kind)):
                rows = [i for i, k in enumerate(kind) if k == key]
                parts.append((rows, self.conditions(
                    t5[rows], pooled[rows], [labels[i] for i in rows], [generators[i] for i in rows], size, guidance,
                    condition_scale, *cfg_scales, empty_text=empty_text,
                    stored=None if stored is None else [stored[i] for i in rows], base=key[0],
                    identity=torch.stack([identities[i] for i in rows]) if key[1] else None)))
        timesteps, sigmas = self.timesteps(steps, latents.shape[1])
        return_gates = return_gates and len(parts) == 1 and not parts[0][1].base  # the base DiT has no gate
        with self.placed("transformer"):
            latents, gate_sum = self._denoise(latents, timesteps, sigmas, parts, return_gates, gate_step, step_done)
        with self.placed("vae"):
            images = self.decode(latents, size)
        gates = None if gate_sum is None else (gate_sum / steps).cpu()
        return images, gates

    def _denoise(self, latents, timesteps, sigmas, parts, return_gates, gate_step, step_done):
        """The Euler steps; `parts`: (rows of the batch, their Conditions), one per model."""
        model, steps = self.model, len(timesteps)
        gate_sum = None
        for i in range(steps):
            if len(parts) == 1:
                velocity = self.velocity(latents, timesteps[i], parts[0][1])
            else:
                velocity = torch.empty_like(latents)
                for rows, cond in parts:
                    velocity[rows] = self.velocity(latents[rows], timesteps[i], cond).float()
            # Euler step of the flow ODE (FlowMatchEulerDiscreteScheduler.step), in float32.
            latents = latents + (sigmas[i + 1] - sigmas[i]).item() * velocity.float()
            if return_gates and model.mogle.last_gate_weights is not None:
                w = model.mogle.last_gate_weights.float()
                if gate_step is None:
                    gate_sum = w if gate_sum is None else gate_sum + w
                elif i == gate_step:
                    gate_sum = w * steps
            step_done()
        return latents, gate_sum


@dataclass
class Conditions:
    """A batch's conditioning as the transformer reads it (see FaceMoGLEPipeline.conditions)."""
    mask_latents: Optional[torch.Tensor]  # [B, 20, N, C]; None for the base DiT
    t5: torch.Tensor
    pooled: torch.Tensor
    txt_ids: torch.Tensor
    img_ids: torch.Tensor
    guidance: Optional[torch.Tensor]
    condition_scale: float
    cfg_scale: float = 1.0  # the mask's weight (and the prompt's, without a mask-only batch)
    text_cfg_scale: float = 1.0  # the prompt's weight on top of the mask's (with a mask-only batch)
    uncond: Optional["Conditions"] = None  # the unconditional batch of classifier-free guidance
    mask_only: Optional["Conditions"] = None  # the mask without the prompt (a separate prompt weight)
    base: bool = False  # sampled by the base DiT alone (no mask latents, LoRA off)
    identity: Optional[torch.Tensor] = None  # [B, D] identity embeddings (runs with model.identity)


__all__ = [
    "FaceMoGLEPipeline", "SampleOutput", "SamplingError", "expert_map", "mode_name", "check_run_dir",
    "resolve_pretrained", "user_errors", "one_line", "preset_overrides", "check_device", "CONFIG_FILE", "ConfigError",
    "MaskError",
]
