"""Edit a real face by editing its mask or its description, with a trained Face-MoGLE (no training).

    out = pipe.edit(["face.png"], ["edited_mask.png"], ["She has red hair."], source_masks=["mask.png"])

Per image:
  1. the face → VAE latents x0; the edit area = the pixels whose label changes between the source and
     the edited mask, plus the classes named in `regions` (a text edit keeps the mask: say which
     part the new words are about), dilated by `margin` pixels; an edit whose area is empty (the
     same mask, no region named) is refused: it would regenerate nothing, or, as it once did, everything;
  2. a start point at noise level sigma_k (k from `strength`, as img2img counts it): "noise" mixes x0
     with the image's seeded noise, (1 - sigma) x0 + sigma eps; "ode" runs the flow ODE backwards from
     x0 under the source mask and source prompt (a deterministic inversion);
  3. the ODE forwards from there under the edited mask and prompt; after every step the latents
     outside the edit area are reset to the source's own path at that noise level (the noised x0, or
     the inversion's trajectory), so the unchanged regions end exactly at x0;
  4. decode, upsample to the input's own size; with `paste_back`, the input's own pixels (at its full
     resolution) are put back outside the (feathered) edit area, so only the edit area is upsampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .encoding import encode_images, encode_prompts, pack
from .image_files import MAX_INPUT_PIXELS, ImageFileError, read_rgb
from .labels import CLASSES

INVERSIONS = ("noise", "ode")
# Measured by bench/editing.py on the shipped tiny model (BENCHMARKS.md "Editing a real face").
DEFAULT_STRENGTH = 1.0
DEFAULT_INVERSION = "noise"
DEFAULT_MARGIN = 4
DEFAULT_PASTE_BACK = True


@dataclass
class EditOutput:
    images: list  # PIL RGB, each at its input face's own size
    areas: list  # per image: bool [size, size], where the face was allowed to change (before the margin)
    settings: dict = field(default_factory=dict)


def read_face(image: Any, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """A face (path, PIL image or uint8 array [H, W, 3]) → PIL RGB at its own size; a file is read
    upright (EXIF), bounded in size, 16-bit scaled, transparency over white (face_mogle.image_files)."""
    from .pipeline import SamplingError

    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise SamplingError(f"a face array must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        return Image.fromarray(image, "RGB")
    try:
        return read_rgb(image, max_pixels)
    except ImageFileError as err:
        raise SamplingError(f"face image {err}") from None


def load_face(image: Any, size: Optional[int] = None, max_pixels: int = MAX_INPUT_PIXELS) -> np.ndarray:
    """A face → uint8 RGB [size, size, 3] (None: its own size). Square only: the masks and the model
    are square, and a silent crop would move every region."""
    from .pipeline import SamplingError

    image = read_face(image, max_pixels)
    if image.width != image.height:
        raise SamplingError(f"the face image must be square (as its mask), got {image.width}x{image.height}")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def class_ids(regions: Optional[Sequence[str]]) -> list[int]:
    """Class names (or label numbers) → label values, or a one-line error naming the bad one."""
    from .pipeline import SamplingError

    out = []
    for r in regions or []:
        r = str(r).strip()
        if r.isdigit() and int(r) < len(CLASSES):
            out.append(int(r))
        elif r in CLASSES:
            out.append(CLASSES.index(r))
        else:
            raise SamplingError(f"unknown region {r!r}: use class names ({', '.join(CLASSES)}) or label numbers 0..{len(CLASSES) - 1}")
    return out


def edit_area(source: np.ndarray, target: np.ndarray, regions: Sequence[int] = ()) -> np.ndarray:
    """Pixels whose label changes, plus those of the named classes in either map (may be empty)."""
    area = source != target
    for c in regions:
        area |= (source == c) | (target == c)
    return area


def at_side(area: np.ndarray, margin: int, side: int) -> tuple[np.ndarray, int]:
    """An edit area (and its margin) at the model's size → the same at `side` pixels (nearest)."""
    if area.shape[0] == side:
        return area, margin
    scaled = round(margin * side / area.shape[0])
    return np.asarray(Image.fromarray(area.astype(np.uint8) * 255, "L").resize((side, side), Image.NEAREST)) > 127, scaled


def dilate(area: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return area
    t = torch.from_numpy(area.astype(np.float32))[None, None]
    return F.max_pool2d(t, 2 * radius + 1, stride=1, padding=radius)[0, 0].numpy() > 0


def feather(area: np.ndarray, radius: int) -> np.ndarray:
    """A soft alpha [H, W] in [0, 1]: 1 inside `area`, fading to 0 over `radius` pixels outside it."""
    a = torch.from_numpy(area.astype(np.float32))[None, None]
    if radius > 0:  # a box blur reaches `radius` pixels out; inside the area the alpha stays 1
        a = torch.maximum(F.avg_pool2d(a, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False), a)
    return a[0, 0].numpy()


def latent_area(area: np.ndarray, latent_pixels: int, channels: int) -> torch.Tensor:
    """A pixel area → the packed-token blend mask [1, N, 4C] (1 = regenerate), one value per latent
    pixel: a latent pixel is regenerated when any pixel it covers is."""
    t = torch.from_numpy(area.astype(np.float32))[None, None]
    t = F.max_pool2d(t, latent_pixels)
    return pack(t.expand(1, channels, *t.shape[2:]).contiguous())


class _Editor:
    def __init__(self, pipe, steps, run_steps, guidance, condition_scale, cfg_scales, size, inversion, margin):
        self.pipe, self.steps, self.run_steps, self.guidance, self.condition_scale = pipe, steps, run_steps, guidance, condition_scale
        self.cfg_scales = cfg_scales  # (cfg scale, text cfg scale)
        self.size, self.inversion, self.margin = size, inversion, margin

    @torch.inference_mode()
    def batch(self, faces, sources, targets, areas, prompts, source_prompts, seeds, step_done,
              stored_sources=None, stored_targets=None) -> list:
        pipe, size = self.pipe, self.size
        device = pipe.device
        noise, generators = zip(*(pipe.initial_noise(s, size) for s in seeds))
        eps = torch.cat(noise).to(device)
        timesteps, sigmas = pipe.timesteps(self.steps, eps.shape[1])
        start = self.steps - self.run_steps

        pixels = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float().div(255).to(device)
        x0 = encode_images(pipe.backbone.vae, pixels)  # the posterior mode, as the training cache
        channels = pipe.backbone.latent_channels
        keep = torch.cat([latent_area(dilate(a, self.margin), pipe.backbone.vae_scale_factor, channels)
                          for a in areas]).to(device)  # 1 = regenerate, 0 = the source's path

        texts = sorted(set(prompts) | (set(source_prompts) if self.inversion == "ode" else set()))  # noise never reads the source's
        t5_all, pooled_all = encode_prompts(pipe.backbone, texts, pipe.cfg.sample.max_sequence_length, device=device)
        pick = lambda ps: (t5_all[[texts.index(p) for p in ps]], pooled_all[[texts.index(p) for p in ps]])  # noqa: E731
        cond = pipe.conditions(*pick(prompts), targets, generators, size, self.guidance, self.condition_scale,
                               *self.cfg_scales, stored=stored_targets)

        # The source's path: its latents at sigmas[i] for i >= start (index i - start).
        if self.inversion == "ode":
            # the same guided field as the way forward, so that an unedited face comes back
            src = pipe.conditions(*pick(source_prompts), sources, generators, size, self.guidance, self.condition_scale,
                                  *self.cfg_scales, stored=stored_sources)
            path = [x0]
            x = x0
            for i in range(self.steps - 1, start - 1, -1):  # sigma_{i+1} → sigma_i, velocity at sigma_{i+1}
                t = timesteps[i + 1] if i + 1 < self.steps else sigmas[self.steps].clone()
                x = x + (sigmas[i] - sigmas[i + 1]).item() * pipe.velocity(x, t, src).float()
                path.append(x)
                step_done()
            path = path[::-1]
        else:
            path = [(1 - sigmas[i].item()) * x0 + sigmas[i].item() * eps for i in range(start, self.steps + 1)]

        latents = path[0]
        for i in range(start, self.steps):
            latents = latents + (sigmas[i + 1] - sigmas[i]).item() * pipe.velocity(latents, timesteps[i], cond).float()
            latents = keep * latents + (1 - keep) * path[i + 1 - start]
            step_done()
        return pipe.decode(latents, size)


def at_input_size(image: Image.Image, face: np.ndarray, area: np.ndarray, margin: int, paste_back: bool) -> Image.Image:
    """The decoded edit (model size) at the input face's own size; with `paste_back`, the input's own
    pixels outside the edit area, so only the edit area is upsampled."""
    side = face.shape[0]
    if image.size != (side, side):
        image = image.resize((side, side), Image.BICUBIC)
    return paste(image, face, *at_side(area, margin, side)) if paste_back else image


def paste(image: Image.Image, face: np.ndarray, area: np.ndarray, margin: int) -> Image.Image:
    """The input face outside the edit area, the edited one inside, blended over `margin` pixels."""
    alpha = feather(area, margin)[..., None]
    out = alpha * np.asarray(image, dtype=np.float32) + (1 - alpha) * face.astype(np.float32)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8), "RGB")


def edit(
    pipe,
    images: Any,
    masks: Any,
    prompts: str | Sequence[str],
    source_masks: Any,
    source_prompts: Optional[str | Sequence[str]] = None,
    seeds: int | Sequence[int] = 0,
    regions: Optional[Sequence[str] | Sequence[Sequence[str]]] = None,
    strength: float = DEFAULT_STRENGTH,
    inversion: str = DEFAULT_INVERSION,
    margin: int = DEFAULT_MARGIN,
    paste_back: bool = DEFAULT_PASTE_BACK,
    steps: Optional[int] = None,
    guidance: Optional[float] = None,
    condition_scale: Optional[float] = None,
    cfg_scale: Optional[float] = None,
    text_cfg_scale: Optional[float] = None,
    size: Optional[int] = None,
    batch_size: int = 4,
    on_step: Optional[Callable[[int, int], None]] = None,
) -> EditOutput:
    """Edit each face (path, PIL or uint8 array) from its source mask + source prompt to the edited
    mask + prompt; see the module docstring. Lists of length 1 are repeated, like generation.
    `source_prompts` default to the prompts (a mask edit) and are read by the "ode" inversion only; `regions` (class names, or one list of
    them per image) widen the edit area, for text edits."""
    from .pipeline import SamplingError

    steps, guidance, condition_scale, size, cfg_scale, text_cfg_scale = pipe.settings(
        steps, guidance, condition_scale, size, batch_size, cfg_scale, text_cfg_scale)
    if not (isinstance(strength, (int, float)) and 0 < strength <= 1):
        raise SamplingError(f"strength must be in (0, 1], got {strength!r}")
    if inversion not in INVERSIONS:
        raise SamplingError(f"inversion must be one of {', '.join(INVERSIONS)}, got {inversion!r}")
    if not isinstance(margin, (int, np.integer)) or margin < 0:
        raise SamplingError(f"margin must be an integer >= 0 (pixels), got {margin!r}")

    def listed(x, name):
        if isinstance(x, (list, tuple)):
            return list(x)
        if isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == (4 if name == "images" else 3):
            return list(x)
        return [x]

    cols = {"images": listed(images, "images"), "masks": listed(masks, "masks"),
            "source masks": listed(source_masks, "source masks"),
            "prompts": [prompts] if isinstance(prompts, str) else list(prompts)}
    cols["source prompts"] = cols["prompts"] if source_prompts is None else (
        [source_prompts] if isinstance(source_prompts, str) else list(source_prompts))
    n = max(len(v) for v in cols.values())
    for name, v in cols.items():
        if len(v) == 1:
            cols[name] = v * n
        elif len(v) != n:
            raise SamplingError(f"got {len(v)} {name} for {n} edits: give one per edit, or one for all")
    if any(m is None for m in cols["masks"] + cols["source masks"]):
        raise SamplingError("editing needs the edited mask and the source mask of every face (no text-only edits "
                            "without a mask: pass the face's own mask as both)")
    for p in cols["prompts"] + cols["source prompts"]:
        if not isinstance(p, str):
            raise SamplingError(f"prompts must be strings, got {type(p).__name__}")
    seeds = [int(seeds) + i for i in range(n)] if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if len(seeds) != n:
        raise SamplingError(f"got {len(seeds)} seeds for {n} edits")
    if any(not 0 <= s < 2**63 for s in seeds):
        raise SamplingError("seeds must be in 0..2**63-1")
    if regions and all(isinstance(r, (list, tuple)) for r in regions):
        if len(regions) not in (1, n):
            raise SamplingError(f"got {len(regions)} region lists for {n} edits: give one per edit, or one for all")
        region_ids = [class_ids(r) for r in regions] * (n if len(regions) == 1 else 1)
    else:
        region_ids = [class_ids(regions)] * n

    # validate every input before any model work
    inputs = [load_face(im, None, pipe.cfg.sample.max_input_pixels) for im in cols["images"]]  # own size
    faces = [load_face(im, size) for im in inputs]
    targets = [pipe.load_mask(m, size) for m in cols["masks"]]
    sources = [pipe.load_mask(m, size) for m in cols["source masks"]]
    stored_targets = [pipe.stored_map(m, size) for m in cols["masks"]]  # global_map: stored only
    stored_sources = [pipe.stored_map(m, size) for m in cols["source masks"]]
    areas = [edit_area(s, t, r) for s, t, r in zip(sources, targets, region_ids)]
    empty = [i for i, a in enumerate(areas) if not a.any()]
    if empty:
        raise SamplingError(f"nothing to edit{'' if n == 1 else f' in edit {empty[0] + 1}'}: the edited mask equals the source "
                            "mask and no region named is in it; name the regions the prompt is about (e.g. hair), "
                            "or every class to redraw the whole face")

    run_steps = min(steps, max(1, round(steps * strength)))  # the last run_steps of the schedule, as img2img counts
    editor = _Editor(pipe, steps, run_steps, guidance, condition_scale, (cfg_scale, text_cfg_scale), size, inversion, int(margin))
    per_batch = run_steps * (2 if inversion == "ode" else 1)
    total, done = per_batch * math.ceil(n / batch_size), 0

    def step_done():
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(done, total)

    images = []
    # an edit reads its encoders between transformer passes (the inversion): with sample.offload every
    # component comes to the device for the whole batch (no saving, but correct)
    with pipe.placed("text_encoder", "text_encoder_2", "vae", "transformer"):
        for b in range(0, n, batch_size):
            sl = slice(b, b + batch_size)
            images += editor.batch(faces[sl], sources[sl], targets[sl], areas[sl], cols["prompts"][sl],
                                   cols["source prompts"][sl], seeds[sl], step_done, stored_sources[sl],
                                   stored_targets[sl])
    images = [at_input_size(im, face, area, int(margin), bool(paste_back)) for im, face, area in zip(images, inputs, areas)]
    settings = dict(steps=steps, denoised_steps=run_steps, guidance=guidance, condition_scale=condition_scale,
                    cfg_scale=cfg_scale, text_cfg_scale=text_cfg_scale,
                    size=size, seeds=seeds, strength=float(strength), inversion=inversion, margin=int(margin),
                    paste_back=bool(paste_back), regions=[[CLASSES[c] for c in r] for r in region_ids],
                    output_sizes=[int(f.shape[0]) for f in inputs],
                    edited_fraction=[round(float(a.mean()), 4) for a in areas])
    return EditOutput(images, areas, settings)


def parse_face(image: Any, parser: str = "segformer", weights_dir: str = "checkpoints/eval",
               device: Optional[str] = None, max_pixels: int = MAX_INPUT_PIXELS) -> np.ndarray:
    """A face's own mask from a face parser: the eval suite's SegFormer (weights under
    `weights_dir`/face-parsing) or SynthFaces' exact colour parser. uint8 labels at the image's size."""
    from .eval.errors import EvalError
    from .eval.miou import load_parser
    from .eval.weights import FACE_PARSER, default_path
    from .pipeline import SamplingError

    img = read_face(image, max_pixels)
    try:
        model = load_parser(parser, default_path(weights_dir, FACE_PARSER), device or "cpu")
    except EvalError as err:
        raise SamplingError(f"no source mask given and no face parser to make one ({err}): pass the face's own "
                            "mask with --source_mask") from None
    return model(model.transform(img)[None], [(img.height, img.width)])[0]

