"""The training loop (accelerate): one process or many, CPU or GPU, exact resume.

Determinism: the batch of micro-step k and every random draw of a step are functions of
(seed, step), not of history, so `2N steps` and `N steps + resume + N steps` are bit-identical.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from ..config import Config, ConfigError, from_dict, save_config, to_dict
from ..encoding import image_ids, text_ids
from ..models.builder import load_backbone
from ..models.face_mogle import FaceMoGLE
from ..models.quantization import QuantizationError
from ..models.transformer import three_stream_forward
from ..locks import FolderLock
from ..utils import DTYPES, atomic_write
from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
from .objective import flow_matching_loss, noisy_and_target, sample_t, step_generator
from .region_weights import weighted_flow_matching_loss

# Keys that may change between a run and its resumption (they do not change what is computed;
# `name` too, so that a copied or renamed run folder resumes, e.g. to export an earlier checkpoint).
RESUMABLE_CHANGES = {
    "name", "train.max_steps", "train.save_interval", "train.sample_interval", "train.log_interval",
    "train.keep_checkpoints", "train.tracker", "data.num_workers", "pretrained",
    "data.parser",  # the face parser editing uses: training never reads it
    # the same faces and captions pre-encoded, with the same (seed, epoch, id) choices; open_cache
    # checks the cache against them and the backbone (the recipe's base stage switched to one)
    "data.cache_dir",
}


class TrainingError(RuntimeError):
    """A problem that stops training, with a message for the user."""


class BaseTextToImage(nn.Module):
    """`train.mode: base`: the whole transformer learns plain text-to-image (no condition stream)."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, noisy, timestep, mask_latents, prompt_embeds, pooled_embeds, txt_ids, img_ids, guidance=None, **_):
        return three_stream_forward(self.transformer, noisy, prompt_embeds, pooled_embeds, timestep, img_ids, txt_ids, guidance)


class StepBatches(torch.utils.data.Sampler):
    """Batches of (index, epoch) for micro-steps start, start+1, …; a pure function of the micro-step.

    Each epoch is a seeded permutation; rank r of W takes every W-th batch slot (drop_last).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        self.n, self.batch_size, self.seed, self.rank, self.world, self.start = n, batch_size, seed, rank, world, start
        self.per_epoch = n // (batch_size * world)
        if self.per_epoch == 0:
            raise TrainingError(
                f"the training split has {n} samples, fewer than batch_size × processes = {batch_size * world}"
            )

    def batch(self, k: int) -> list[tuple[int, int]]:
        epoch, j = divmod(k, self.per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        first = (j * self.world + self.rank) * self.batch_size
        return [(int(i), epoch) for i in perm[first : first + self.batch_size]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        k = self.start
        while True:
            yield self.batch(k)
            k += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs this for len()
        return 2**62


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# The learning-rate schedule may change on resume when the rates of the steps already taken stay the
# same (a constant run given a cool-down at its end); a change that rewrites them is refused.
SCHEDULE_KEYS = {"train.optimizer.decay", "train.optimizer.decay_steps"}


def _rates(cfg: Config, steps: int) -> list[float]:
    rate = lr_schedule(cfg)
    return [rate(s) for s in range(steps)]


def check_resume_config(saved: Config, current: Config, source: str = "the run's config.yaml", step: int | None = None) -> None:
    """Refuse to resume from a checkpoint at `step` (None: unknown) trained with other settings."""
    a, b = _flat(to_dict(saved)), _flat(to_dict(current))
    changed = sorted(k for k in a if a[k] != b.get(k) and k not in RESUMABLE_CHANGES | SCHEDULE_KEYS)
    same_rates = step is not None and _rates(saved, step) == _rates(current, step)
    if any(a.get(k) != b.get(k) for k in SCHEDULE_KEYS) and not same_rates:
        changed += sorted(k for k in SCHEDULE_KEYS if a.get(k) != b.get(k))
    if a.get("train.optimizer.decay") == "cosine" and a.get("train.max_steps") != b.get("train.max_steps") and not same_rates:
        changed.append("train.max_steps (the cosine decay is laid out over it)")
    if changed:
        raise TrainingError(
            f"cannot resume: the config differs from {source} in {', '.join(changed)} "
            "(start a new run with another name, or resume with the same settings)"
        )


def _init_from(model, run: Path) -> None:
    """LoRA + MoGLE from a finished run (train.init_from); an identity projector, if any, starts fresh."""
    from ..runs import SamplingError, check_run_dir

    try:
        model.load_weights(check_run_dir(run), with_identity=False)
    except (SamplingError, FileNotFoundError, ValueError, RuntimeError) as err:
        raise TrainingError(f"train.init_from {run}: {' '.join(str(err).split())}") from None


def _full_cache(cfg) -> bool:
    """`data.cache_dir` holds latents and text embeddings (a missing or broken cache is reported
    later, by open_cache, with the command that builds it)."""
    if not cfg.data.cache_dir:
        return False
    from ..data.cache import CacheError
    from ..data.cache.manifest import read_manifest

    try:
        manifest = read_manifest(Path(cfg.data.cache_dir))
    except CacheError:
        return False
    return manifest is not None and bool(manifest.get("text", True))


def split_digest(ids) -> dict:
    """The training split as it was when a checkpoint was saved: its order decides every batch."""
    ids = [int(i) for i in ids]
    return {"count": len(ids), "sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:32]}


def process_change(state: dict, num_processes: int, batch_size: int) -> Optional[str]:
    """What continuing a checkpoint under another process count changes (None: the same count, or a
    checkpoint too old to record it). Allowed, e.g. to finish on fewer GPUs, but never silently."""
    saved = state.get("num_processes")
    if saved is None or saved == num_processes:
        return None
    return (f"the checkpoint was trained by {saved} process(es), this launch has {num_processes}: the effective "
            f"batch changes from {saved * batch_size} to {num_processes * batch_size}, and the batch order with it "
            f"(launch {saved} process(es) to continue exactly)")


def check_resume_split(state: dict, split: dict) -> None:
    """A checkpoint continues on its own training split: other ids would change the batch order."""
    old = state.get("train_split")
    if old is not None and old != split:
        raise TrainingError(
            f"cannot resume: the training split changed since the checkpoint ({old['count']} ids then, "
            f"{split['count']} now, or other ids or order): the batch order would change; restore the split, "
            "or start a new run (--set name=NEW_NAME)")


def make_optimizer(cfg: Config, params: list[nn.Parameter]):
    opt = cfg.train.optimizer
    if opt.type == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise TrainingError("train.optimizer.type is prodigy but prodigyopt is not installed: pip install prodigyopt") from None
        optimizer = Prodigy(
            params, lr=opt.lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay, eps=opt.eps,
            use_bias_correction=opt.use_bias_correction, safeguard_warmup=opt.safeguard_warmup,
        )
    elif opt.type == "adamw8bit":
        try:
            from bitsandbytes.optim import AdamW8bit
        except ImportError:
            raise TrainingError("train.optimizer.type is adamw8bit but bitsandbytes is not installed: pip install bitsandbytes") from None
        # bitsandbytes keeps tensors under 4,096 elements in 32 bits (min_8bit_size): tiny models barely change
        optimizer = AdamW8bit(params, lr=opt.lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay, eps=opt.eps)
    else:
        optimizer = torch.optim.AdamW(params, lr=opt.lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay, eps=opt.eps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg))


def lr_schedule(cfg: Config):
    """The config's learning-rate multiplier as a function of the optimizer step."""
    opt = cfg.train.optimizer
    warmup, total = max(0, opt.warmup_steps), cfg.train.max_steps
    return lambda step: lr_factor(step, warmup, opt.decay, total, opt.decay_steps)


def lr_factor(step: int, warmup: int, decay: str, total: int, decay_steps: int = 0) -> float:
    """The learning-rate multiplier for optimizer step `step` (0-based): linear warm-up, then
    constant or a cosine down to 0 at step `total`, over its last `decay_steps` steps (0: all after warm-up)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    start = max(warmup, total - decay_steps) if decay_steps else warmup
    span = max(1, total - start)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0, step - start) / span)))


EXPORT_RECORD = "export.json"


def _export_sizes(run: Path, unwrapped) -> dict:
    """Every exported file (relative to the run folder) and its size in bytes."""
    kinds = ("transformer",) if not isinstance(unwrapped, FaceMoGLE) else ()
    files = {}
    for name in ["pytorch_lora_weights.safetensors", "mogle.safetensors", *kinds]:
        path = run / name
        if path.is_dir():
            files.update({str(f.relative_to(run)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()})
        elif path.is_file() and isinstance(unwrapped, FaceMoGLE):
            files[name] = path.stat().st_size
    return files


# What makes a folder a run: a fresh start refuses a folder holding any of these.
RUN_CONTENTS = ("checkpoints", "config.yaml", "pytorch_lora_weights.safetensors", "mogle.safetensors", "transformer")


class Trainer:
    def __init__(self, cfg: Config, resume: Optional[str] = None, pretrained: Optional[str] = None,
                 fail_save_at: Optional[int] = None, overwrite: bool = False):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        if cfg.model.global_map == "stored":
            from ..data.masks import STORED_IS_SAMPLING_ONLY

            raise TrainingError(f"model.global_map {STORED_IS_SAMPLING_ONLY}")
        self.cfg = cfg
        self.run_dir = Path(cfg.train.runs_dir) / cfg.name
        self.fail_save_at = fail_save_at  # tests: simulate a crash while saving this step
        tracker = None if cfg.train.tracker == "none" else cfg.train.tracker
        if tracker == "wandb":
            import importlib.util

            if importlib.util.find_spec("wandb") is None:
                raise TrainingError("train.tracker is wandb but wandb is not installed (pip install wandb, or --set train.tracker=tensorboard)")
        from accelerate.utils import DistributedDataParallelKwargs

        # a batch whose every sample dropped its identity leaves the identity projector without a
        # gradient: DDP must be told that a parameter may go unused in a step
        ddp = [DistributedDataParallelKwargs(find_unused_parameters=True)] if cfg.model.identity.encoder else []
        self.acc = Accelerator(
            cpu=not torch.cuda.is_available(),  # so torchrun on CPU gives a gloo multi-process run
            kwargs_handlers=ddp,
            mixed_precision=cfg.train.mixed_precision,
            gradient_accumulation_steps=cfg.train.grad_accum,
            log_with=tracker,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "logs")),
        )
        self.resume_latest = resume == "latest"
        self.resume_from = self._check_run_folder(resume, overwrite)
        if pretrained:
            cfg = dataclasses.replace(cfg, pretrained=pretrained)
            self.cfg = cfg
        self._build()

    # ------------------------------------------------------------------------------------------

    def _check_run_folder(self, resume: Optional[str], overwrite: bool = False) -> Optional[Path]:
        """A fresh start never writes over a run: checkpoints, exported weights or a config in the
        folder are refused unless `overwrite` (then the old checkpoints are removed first)."""
        from ..config import load_config

        # a config mistake (runs_dir a file, a read-only place) is named now, not as a full disk later
        place = next(p for p in [self.run_dir, *self.run_dir.parents] if p.exists())
        if not place.is_dir() or not os.access(place, os.W_OK | os.X_OK):
            what = "is a file, not a folder" if not place.is_dir() else "is not writable"
            raise TrainingError(f"cannot make the run folder {self.run_dir}: {place} {what} (check train.runs_dir and name)")
        if self.acc.is_main_process and self.run_dir.is_dir():  # fail now, not after loading the backbone
            self.run_lock().acquire().release()
        self.overwrite = overwrite
        if resume is None:
            self._refuse_a_held_folder()
            return None
        path = resolve_resume(self.run_dir, resume)
        state = json.loads((path / "state.json").read_text())
        # What the checkpoint's state was trained with: its own record, else its run's config.yaml
        if "config" in state:
            try:
                check_resume_config(from_dict(state["config"]), self.cfg, f"the config of checkpoint {path}", state.get("step"))
            except ConfigError as err:
                raise TrainingError(f"checkpoint {path}: its recorded config no longer loads ({err})") from None
        else:
            for saved in (path.parent.parent / "config.yaml", self.run_dir / "config.yaml"):
                if saved.is_file():
                    check_resume_config(load_config(saved), self.cfg, f"{saved}", state.get("step"))
                    break
        change = process_change(state, self.acc.num_processes, self.cfg.train.batch_size)
        if change and self.acc.is_main_process:
            print(f"warning: {change}", file=sys.stderr)
        return path

    def run_lock(self) -> FolderLock:
        return FolderLock(self.run_dir, "run folder")

    def _refuse_a_held_folder(self) -> None:
        """A fresh start never writes over a run (unless --overwrite)."""
        held = [name for name in RUN_CONTENTS if (self.run_dir / name).exists() and name != "checkpoints"]
        held = (["checkpoints"] if list_checkpoints(self.run_dir) else []) + held
        if held and not self.overwrite:
            raise TrainingError(
                f"run folder {self.run_dir} already holds a run ({', '.join(held)}): pass --resume latest to "
                "continue it, --set name=NEW_NAME for a new run, or --overwrite to replace it"
            )

    def _build(self) -> None:
        cfg, acc = self.cfg, self.acc
        torch.manual_seed(cfg.seed)  # same initial LoRA/MoGLE weights on every rank
        base_mode = cfg.train.mode == "base"
        weight_dtype = torch.float32 if base_mode else DTYPES[cfg.dtype]
        if base_mode and cfg.model.quantize != "none":
            raise TrainingError(f"train.mode base trains every weight of the transformer: it cannot be quantized "
                                f"(model.quantize is {cfg.model.quantize}; set it to none)")
        if base_mode and cfg.pretrained_transformer is not None:
            raise TrainingError(f"train.mode base trains every weight of the transformer: it cannot come from the "
                                f"quantized GGUF file {cfg.pretrained_transformer} (set pretrained_transformer: null)")
        # With a full latent + text cache nothing in a step runs the VAE, CLIP or T5: they stay on the
        # CPU (sample grids bring them in one at a time), so the GPU holds the transformer alone
        self.encoders_on_cpu = acc.device.type != "cpu" and _full_cache(cfg)
        try:
            self.backbone = load_backbone(cfg.pretrained, dtype=weight_dtype, device=acc.device,
                                          quantize=cfg.model.quantize, pretrained_transformer=cfg.pretrained_transformer,
                                          encoders_device="cpu" if self.encoders_on_cpu else None)
        except QuantizationError as err:
            raise TrainingError(str(err)) from None
        tr = self.backbone.transformer
        if base_mode:
            model = BaseTextToImage(tr)
            tr.requires_grad_(True)
        else:
            model = FaceMoGLE(tr, cfg.model)
            if cfg.train.init_from is not None and self.resume_from is None:
                _init_from(model, Path(cfg.train.init_from))
            model.to(acc.device)
            model.freeze_base()
        for p in model.parameters():  # trainable weights stay float32 (mixed precision casts compute)
            if p.requires_grad:
                p.data = p.data.float()
        for m in (self.backbone.vae, self.backbone.text_encoder, self.backbone.text_encoder_2):
            m.requires_grad_(False).eval()
        tr.gradient_checkpointing = cfg.train.gradient_checkpointing
        model.train()
        self.named_trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        optimizer, scheduler = make_optimizer(cfg, list(self.named_trainable.values()))
        self.start_step = 0
        if self.resume_from is not None:
            state = self._load_newest_intact(optimizer, scheduler)
            self.start_step = int(state["step"])
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.scheduler = scheduler  # stepped by hand once per optimizer step
        self.dataset = self._dataset()
        self.split = split_digest(self.dataset.ids)
        if self.resume_from is not None:
            check_resume_split(state, self.split)
        self.identity_pairs = None
        if not base_mode and cfg.model.identity.encoder is not None:
            from .identity_pairs import IdentityPairs

            try:
                self.identity_pairs = IdentityPairs.build(cfg, self.dataset.ids, progress=acc.is_main_process)
            except ValueError as err:  # IdentityError and IdentityFileError among them
                raise TrainingError(" ".join(str(err).split())) from None
        sampler = StepBatches(len(self.dataset), cfg.train.batch_size, cfg.seed, acc.process_index,
                              acc.num_processes, start=self.start_step * cfg.train.grad_accum)
        from ..data.dataset import collate

        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers, collate_fn=collate,
            persistent_workers=False,
        )
        tb = self.backbone.token_pixels
        if cfg.data.size % tb:
            raise TrainingError(f"data.size {cfg.data.size} must be a multiple of {tb} (one token) for this backbone")
        self.img_ids = image_ids(cfg.data.size, tb, device=acc.device)
        self.token_weights = None
        if cfg.train.loss_weighting == "regions":
            from .region_weights import token_weights

            self.token_weights = token_weights(cfg.data.root, self.dataset.ids, cfg.data.size, tb,
                                               progress=acc.is_main_process)
        self.txt_ids = text_ids(cfg.max_sequence_length, device=acc.device)

    def _load_newest_intact(self, optimizer, scheduler) -> dict:
        """Load the resume checkpoint; with `--resume latest`, a checkpoint whose files cannot be read
        (truncated by a full disk, damaged in a copy) is reported and the next older one is used."""
        older = [p for p in list_checkpoints(self.run_dir) if p != self.resume_from] if self.resume_latest else []
        candidates = [self.resume_from] + older[::-1]
        for k, path in enumerate(candidates):
            try:
                state = load_checkpoint(path, self.named_trainable, optimizer, scheduler)
            except CheckpointError:
                raise  # readable but made for another config: not a case for falling back
            except Exception as err:
                why = " ".join(str(err).split()) or type(err).__name__
                if k + 1 == len(candidates):
                    raise TrainingError(f"checkpoint {path} is unreadable ({why})"
                                        + ("; no older intact checkpoint" if k else "")) from None
                print(f"warning: checkpoint {path} is unreadable ({why}); falling back to {candidates[k + 1]}",
                      file=sys.stderr)
                continue
            self.resume_from = path
            return state
        raise AssertionError("unreachable")

    def _dataset(self):
        """Pixels + labels + captions, or — with `data.cache_dir` — pre-encoded latents and embeddings."""
        from ..data.dataset import FaceDataset

        if not self.cfg.data.cache_dir:
            return FaceDataset.from_config(self.cfg.data, "train", seed=self.cfg.seed)
        from ..data.cache import CachedFaceDataset, open_cache

        self.cache = open_cache(self.cfg, self.backbone, "train")
        return CachedFaceDataset.from_config(self.cfg, self.cache, "train", seed=self.cfg.seed)

    # ------------------------------------------------------------------------------------------

    def _inputs(self, batch: dict, generator: torch.Generator) -> dict:
        from ..data.batch import cached_batch_inputs, encode_batch
        from ..encoding import encode_prompts

        if not self.cfg.data.cache_dir:
            return encode_batch(batch, self.backbone, self.cfg, generator, with_masks=self.cfg.train.mode == "mogle")
        encode_text = None
        if not self.cache.has_text:
            encode_text = lambda c: encode_prompts(self.backbone, c, self.cfg.max_sequence_length)  # noqa: E731
        return cached_batch_inputs(batch, self.dataset.vae_config, generator, device=self.acc.device,
                                   encode_text=encode_text)

    def _loss(self, batch: dict, step: int, micro: int) -> torch.Tensor:
        acc = self.acc
        g = step_generator(self.cfg.seed, step, micro, acc.process_index, device=acc.device)
        inp = self._inputs(batch, g)
        x0 = inp["x0"]
        b = x0.shape[0]
        ts = self.cfg.train.timestep_sampling
        t = sample_t(b, g, acc.device, ts.loc, ts.scale)
        noise = torch.randn(x0.shape, generator=g, device=acc.device, dtype=x0.dtype)
        x_t, target = noisy_and_target(x0, t, noise)
        guidance = torch.ones(b, device=acc.device) if self.backbone.transformer.config.guidance_embeds else None
        dtype = DTYPES[self.cfg.dtype] if self.cfg.train.mode == "mogle" else torch.float32
        extra = {}
        if self.identity_pairs is not None:  # another image of the same person, or none (dropout)
            ident, keep = self.identity_pairs.batch(batch["id"], step, micro, acc.process_index)
            extra = dict(identity=ident.to(acc.device), identity_keep=keep.to(acc.device))
        with acc.autocast():
            pred = self.model(
                x_t.to(dtype), t, inp.get("mask_latents"), inp["prompt_embeds"], inp["pooled_embeds"],
                self.txt_ids, self.img_ids, guidance, **extra,
            )
        if self.token_weights is not None:
            weights = torch.stack([self.token_weights[int(i)] for i in batch["id"]])
            return weighted_flow_matching_loss(pred, target, weights)
        return flow_matching_loss(pred, target)

    def _save(self, step: int) -> None:
        acc = self.acc
        bad = [n for n, p in self.named_trainable.items() if not torch.isfinite(p.detach()).all()]
        if bad:  # never write non-finite weights: the previous checkpoint stays the last good one
            kept = list_checkpoints(self.run_dir)
            where = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written yet"
            raise TrainingError(f"weights became non-finite at step {step} ({bad[0]}"
                                f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); nothing saved ({where})")
        acc.wait_for_everyone()
        if acc.is_main_process:
            unwrapped = acc.unwrap_model(self.model)
            fail = "trainable.safetensors" if self.fail_save_at == step else None
            save_checkpoint(
                self.run_dir, step, {n: p for n, p in unwrapped.named_parameters() if p.requires_grad},
                self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer,
                self.scheduler,
                {"mode": self.cfg.train.mode, "seed": self.cfg.seed, "num_processes": acc.num_processes,
                 "train_split": self.split, "config": to_dict(self.cfg)}, keep=self.cfg.train.keep_checkpoints,
                fail_after=fail,
            )
            self.export(unwrapped, step)
        acc.wait_for_everyone()

    def export(self, unwrapped: nn.Module, step: int) -> None:
        """The run folder's usable weights — LoRA + MoGLE, or (base mode) the whole transformer — as
        one unit: written beside, moved into place, then `export.json` (the step, each file's size)
        last. A kill in between leaves an export.json that does not match; `export_is_current` sees
        it and the next start (or --resume) writes the export again from the checkpoint."""
        run = self.run_dir
        tmp = Path(tempfile.mkdtemp(dir=run, prefix=".export.", suffix=".tmp"))
        try:
            if isinstance(unwrapped, FaceMoGLE):
                unwrapped.save_weights(tmp)
            else:
                unwrapped.transformer.save_pretrained(str(tmp / "transformer"), safe_serialization=True)
            (run / EXPORT_RECORD).unlink(missing_ok=True)  # from here until the end, the export is "not current"
            for item in sorted(tmp.iterdir()):
                final = run / item.name
                if item.is_dir() and final.exists():  # swap folders: the old one goes only once the new is in
                    old = run / f".{item.name}.old"
                    shutil.rmtree(old, ignore_errors=True)
                    final.rename(old)
                    item.rename(final)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(item, final)
            record = {"step": step, "files": _export_sizes(run, unwrapped)}
            atomic_write(run / EXPORT_RECORD, lambda t: Path(t).write_text(json.dumps(record, indent=1) + "\n"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def export_is_current(self, step: int) -> bool:
        """Does the run folder hold the complete export of checkpoint `step`?"""
        try:
            record = json.loads((self.run_dir / EXPORT_RECORD).read_text())
        except (OSError, ValueError):
            return False
        files = record.get("files") or {}
        return record.get("step") == step and bool(files) and all(
            (self.run_dir / name).is_file() and (self.run_dir / name).stat().st_size == size for name, size in files.items())

    def train(self, on_step: Optional[Callable[[int, float], None]] = None) -> list[float]:
        lock = self.run_lock() if self.acc.is_main_process else None
        if lock is not None:
            lock.acquire()  # one training per run folder; FolderBusy names the one already at work
        try:
            return self._train(on_step)
        finally:
            if lock is not None:
                lock.release()

    def _train(self, on_step: Optional[Callable[[int, float], None]] = None) -> list[float]:
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.acc
        if acc.is_main_process:
            if self.resume_from is None:  # checked again under the lock: another run may have written here since
                self._refuse_a_held_folder()
                if self.overwrite:
                    shutil.rmtree(self.run_dir / "checkpoints", ignore_errors=True)
            # folders of saves or exports a kill interrupted: never complete, never read
            for leftover in [*self.run_dir.glob(".export.*.tmp"), *self.run_dir.glob("checkpoints/.step-*.tmp")]:
                shutil.rmtree(leftover, ignore_errors=True)
            save_config(cfg, self.run_dir / "config.yaml")
            if self.start_step > 0 and not self.export_is_current(self.start_step):
                # a kill between the export's files, or a lost file: write it again from the checkpoint
                self.export(acc.unwrap_model(self.model), self.start_step)
                print(f"the run folder's exported weights did not match checkpoint step-{self.start_step}: "
                      "written again from it", file=sys.stderr)
        if acc.log_with:
            acc.init_trackers(cfg.name, config={k: str(v) for k, v in _flat(to_dict(cfg)).items()})
        losses: list[float] = []
        batches = iter(self.loader)
        bar = tqdm(total=cfg.train.max_steps, initial=self.start_step, disable=not acc.is_main_process,
                   desc=f"train {cfg.name}", dynamic_ncols=True)
        ema, started, samples = None, time.perf_counter(), 0
        step = self.start_step
        while step < cfg.train.max_steps:
            step_loss = 0.0
            for micro in range(cfg.train.grad_accum):
                batch = next(batches)
                with acc.accumulate(self.model):
                    loss = self._loss(batch, step, micro)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.train.grad_clip > 0:
                        acc.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
                    self.optimizer.step()
                    if acc.sync_gradients:
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach() / cfg.train.grad_accum
                samples += len(batch["id"]) * acc.num_processes
            value = acc.reduce(step_loss, reduction="mean").item()
            if not math.isfinite(value):
                kept = list_checkpoints(self.run_dir)
                where = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written yet"
                raise TrainingError(f"loss became {value} at step {step + 1}; stopping ({where})")
            step += 1
            losses.append(value)
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}", sps=f"{samples / elapsed:.2f}")
            if acc.log_with and (step % cfg.train.log_interval == 0 or step == cfg.train.max_steps):
                acc.log({"loss": value, "loss_ema": ema, "lr": self.scheduler.get_last_lr()[0]}, step=step)
            if on_step is not None:
                on_step(step, value)
            if step % cfg.train.save_interval == 0 or step == cfg.train.max_steps:
                self._save(step)
            if cfg.train.sample_interval > 0 and step % cfg.train.sample_interval == 0:
                self.sample_grid(step)
        bar.close()
        if losses and acc.is_main_process:
            k = max(1, len(losses) // 10)
            first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
            print(f"loss: {first:.4f} (mean of the first {k} steps) → {last:.4f} (last {k}) over {len(losses)} steps")
        self._check_ranks_in_sync()
        if acc.log_with:
            acc.end_training()
        return losses

    def _check_ranks_in_sync(self) -> None:
        """Every rank must hold the same trainable weights; a silent divergence is an error."""
        acc = self.acc
        if acc.num_processes == 1:
            return
        with torch.no_grad():
            total = sum(p.detach().double().sum() for p in self.named_trainable.values())
        sums = acc.gather(total.reshape(1).to(acc.device))
        if not torch.all(sums == sums[0]):
            raise TrainingError(f"ranks diverged: trainable-weight checksums {sums.tolist()}")
        if acc.is_main_process:
            print(f"ranks in sync: {acc.num_processes} processes, weight checksum {sums[0].item():.6f}")

    def sample_grid(self, step: int) -> None:
        """Overridden once the sampling pipeline exists; see `face_mogle.training.samples`."""
        try:
            from .samples import write_sample_grid
        except ImportError:
            return
        if self.acc.is_main_process:
            write_sample_grid(self, step)
        self.acc.wait_for_everyone()
