"""Face label maps: load/validate/save them, and turn them into the 20-map condition stack.

A label map is an [H, W] uint8 array of CelebAMask-HQ labels 0..18 (see `face_mogle.labels`).
The condition stack (DESIGN §2) is 20 RGB maps in [0, 1]: index 0 is the global map, indices
1..19 are one binary local map per class (class c at index c + 1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from face_mogle.image_files import MAX_INPUT_PIXELS, ImageFileError, open_image
from face_mogle.labels import NUM_CLASSES, NUM_MAPS, PALETTE
from face_mogle.utils import atomic_write

# "palette": the classes in CelebAMask-HQ palette colours — what the official code's
# Image.open(mask).convert("RGB") gives for the data set's palette-indexed masks (DESIGN §2–§3),
# so what the released weights saw; "gray": label / 255, what convert("RGB") gives for an 8-bit
# grey label map (a nearly black image); "stored": the mask file rendered as it is stored, i.e.
# Image.open(mask).convert("RGB") itself for every file (palette colours for a P file, grey for an L
# file, its own colours for an RGB file) — the official sampler's global map whatever the file.
# "stored" needs the file's pixels (`render_stored`), so it is a sampling setting only.
GLOBAL_MODES = ("palette", "gray", "stored")
STORED_IS_SAMPLING_ONLY = (
    "'stored' (the mask file rendered as stored) is for sampling only: training builds its maps from "
    "label arrays; use palette (what MM-CelebA-HQ's palette-indexed masks render as) or gray (grey label PNGs)"
)
RENAMED_GLOBAL_MODE = (
    "'official' was renamed: it meant the label/255 grey map, now called 'gray'; the official code's "
    "global map is the mask in palette colours, now 'palette' (the default, what the released weights saw)"
)
_ARRAY_NAME = "<array>"


class MaskError(ValueError):
    """A mask that cannot be used; the message is one line naming the file and the bad values."""


def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _fail(name: str, what: str) -> MaskError:
    return MaskError(f"{name}: {what}")


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Validate an integer [H, W] label array and return it as uint8."""
    if labels.ndim != 2:
        raise _fail(name, f"expected a 2-D label map [H, W], got shape {tuple(labels.shape)}")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating):
            raise _fail(name, f"label map has non-numeric dtype {labels.dtype}")
        finite = np.isfinite(labels)
        fractional = np.unique(labels[~finite | (labels != np.round(labels))])
        if fractional.size:
            raise _fail(name, f"label values must be integers, got {_few(fractional)}")
    if labels.size:
        bad = np.unique(labels[(labels < 0) | (labels >= NUM_CLASSES)])
        if bad.size:
            raise _fail(name, f"label values outside 0..{NUM_CLASSES - 1}: {_few(bad)}")
    return labels.astype(np.uint8)


def _few(values: np.ndarray, limit: int = 5) -> str:
    """'[19, 255]' or '[19, 20, 21, 22, 23, ...] (9 distinct)' for error messages."""
    shown = [v.item() if hasattr(v, "item") else v for v in values[:limit]]
    shown = [int(v) if float(v).is_integer() else float(v) for v in shown]
    text = str(shown)
    if len(values) > limit:
        text = text[:-1] + f", ...] ({len(values)} distinct)"
    return text


def _rgb_to_labels(rgb: np.ndarray, name: str) -> np.ndarray:
    """Invert the CelebAMask-HQ palette exactly; any other colour is an error."""
    rgb = rgb[..., :3].astype(np.int64)
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all() and rgb.max(
        initial=0
    ) < NUM_CLASSES:
        # A grey label PNG saved as RGB (what the official code feeds as the global map).
        return rgb[..., 0].astype(np.uint8)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    pal = PALETTE.astype(np.int64)
    palette_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    order = np.argsort(palette_code)
    pos = np.clip(np.searchsorted(palette_code[order], code), 0, NUM_CLASSES - 1)
    found = palette_code[order][pos] == code
    if not found.all():
        bad_codes, counts = np.unique(code[~found], return_counts=True)
        colours = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in bad_codes[:5])
        more = ", ..." if len(bad_codes) > 5 else ""
        raise _fail(
            name,
            f"{int(counts.sum())} pixels have colours not in the CelebAMask-HQ palette "
            f"({len(bad_codes)} distinct): {colours}{more}",
        )
    return order[pos].astype(np.uint8)


def _image_to_labels(img: Image.Image, name: str) -> np.ndarray:
    mode = img.mode
    if mode in ("L", "P", "1") or mode.startswith("I"):
        # P: the palette indices are the labels (CelebAMask-HQ-style indexed PNGs).
        return _check_labels(np.asarray(img), name)
    if mode in ("LA", "PA"):
        return _check_labels(np.asarray(img)[..., 0], name)
    if mode in ("RGB", "RGBA"):
        return _rgb_to_labels(np.asarray(img), name)
    raise _fail(name, f"unsupported image mode {mode!r} (use L, P, I, I;16 or palette-coloured RGB)")


def _open(path: Path, max_pixels: int) -> Image.Image:
    name = str(path)
    if not path.exists():
        raise _fail(name, "mask file not found")
    if path.is_dir():
        raise _fail(name, "is a directory, not a mask file")
    if path.stat().st_size == 0:
        raise _fail(name, "mask file is empty (0 bytes)")
    try:
        return open_image(path, max_pixels, "mask")  # size-checked before decoding, EXIF orientation applied
    except ImageFileError as err:
        raise MaskError(str(err)) from None


def _target_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def load_label_map(path_or_image: Any, size: int | tuple[int, int] | None = None,
                   max_pixels: int = MAX_INPUT_PIXELS) -> np.ndarray:
    """Read a label map from a file path, PIL image, numpy array or torch tensor.

    Accepted images: single-channel L / P (palette indices are the labels) / I / I;16, and RGB(A)
    painted in the CelebAMask-HQ PALETTE (or grey with values 0..18). `size` (int or (H, W))
    resizes with nearest neighbour only, so no new label values appear; an int size needs a square
    mask (as faces are: a stretch would move every region). A file may hold at most `max_pixels`.
    Returns uint8 [H, W]. Raises MaskError with a one-line message on any bad input.
    """
    if isinstance(path_or_image, (str, os.PathLike)):
        name = str(path_or_image)
        with _open(Path(path_or_image), max_pixels) as img:
            labels = _image_to_labels(img, name)
    elif isinstance(path_or_image, Image.Image):
        name = getattr(path_or_image, "filename", "") or "<image>"
        labels = _image_to_labels(path_or_image, name)
    elif _is_torch(path_or_image):
        name = _ARRAY_NAME
        tensor = path_or_image.detach().cpu()
        labels = _check_labels((tensor.double() if tensor.is_floating_point() else tensor).numpy(), name)
    elif isinstance(path_or_image, np.ndarray):
        name = _ARRAY_NAME
        labels = _check_labels(path_or_image, name)
    else:
        raise MaskError(f"<input>: cannot read a label map from {type(path_or_image).__name__}")

    if labels.size == 0:
        raise _fail(name, f"label map has zero size {labels.shape}")
    if size is not None:
        if isinstance(size, (int, np.integer)) and labels.shape[0] != labels.shape[1]:
            raise _fail(name, f"the mask is {labels.shape[1]}x{labels.shape[0]}: it must be square, as the face "
                              "(a stretch would move every region); crop it to a square first")
        h, w = _target_hw(size)
        if h <= 0 or w <= 0:
            raise _fail(name, f"invalid target size {size}")
        if (h, w) != labels.shape:
            labels = np.array(Image.fromarray(labels, "L").resize((w, h), Image.NEAREST))
    return labels


def render_stored(path_or_image: Any, size: int | tuple[int, int] | None = None,
                  max_pixels: int = MAX_INPUT_PIXELS) -> np.ndarray:
    """The mask as it is stored, in RGB: uint8 [H, W, 3] (the `global_map: stored` map, x 255).

    A file: exactly `Image.open(path).convert("RGB")` (palette colours for a P file, label grey for
    an L file, the file's own colours for an RGB file); a PIL image: `image.convert("RGB")`. A label
    array or tensor has no file: it renders as the L file `save_label_map` would write of it (grey
    label values). `size` resizes with nearest neighbour, picking the same pixels as `load_label_map`.
    Raises MaskError with a one-line message on input `load_label_map` would refuse.
    """
    if isinstance(path_or_image, (str, os.PathLike)):
        name = str(path_or_image)
        with _open(Path(path_or_image), max_pixels) as img:
            _image_to_labels(img, name)  # the same validation (and reading: size bound, EXIF) as the labels
            rgb = img.convert("RGB")
    elif isinstance(path_or_image, Image.Image):
        name = getattr(path_or_image, "filename", "") or "<image>"
        _image_to_labels(path_or_image, name)
        rgb = path_or_image.convert("RGB")
    else:
        name = _ARRAY_NAME
        rgb = Image.fromarray(load_label_map(path_or_image), "L").convert("RGB")
    if size is not None:
        h, w = _target_hw(size)
        if h <= 0 or w <= 0:
            raise _fail(name, f"invalid target size {size}")
        if (h, w) != (rgb.height, rgb.width):
            rgb = rgb.resize((w, h), Image.NEAREST)
    return np.array(rgb, dtype=np.uint8)


def save_label_map(labels: Any, path: str | os.PathLike) -> None:
    """Write labels as an L-mode PNG, atomically (temp file in the same folder, then rename)."""
    arr = load_label_map(labels) if not isinstance(labels, np.ndarray) else _check_labels(labels, str(path))
    atomic_write(path, lambda tmp: Image.fromarray(arr, "L").save(tmp, format="PNG"))


# ---------------------------------------------------------------------------------------------
# Condition stack


def _check_mode(global_mode: str, stored: Any = None) -> None:
    if global_mode == "official":
        raise ValueError(f"global_mode {RENAMED_GLOBAL_MODE}")
    if global_mode not in GLOBAL_MODES:
        raise ValueError(f"global_mode must be one of {GLOBAL_MODES}, got {global_mode!r}")
    if (global_mode == "stored") != (stored is not None):
        raise ValueError("global_mode 'stored' needs the mask as stored (render_stored), and only it takes one")


def _check_stored(stored_shape: tuple, labels_shape: tuple) -> None:
    if tuple(stored_shape) != (*labels_shape, 3):
        raise MaskError(f"{_ARRAY_NAME}: the mask as stored must be uint8 {(*labels_shape, 3)} "
                        f"(the labels' size, RGB), got {tuple(stored_shape)}")


def condition_stack(labels: Any, global_mode: str = "palette", stored: Any = None) -> np.ndarray:
    """Label map [H, W] -> float32 [20, 3, H, W] in [0, 1] (DESIGN §2).

    Index 0, global map: "palette" = PALETTE colour / 255 (the data set's palette-indexed mask
    converted to RGB, as the official code does); "gray" = label / 255 on all 3 channels;
    "stored" = `stored` / 255, the mask as stored (uint8 [H, W, 3] from `render_stored`).
    Index c + 1, local map of class c: 1.0 where label == c, else 0, on all 3 channels.
    A torch tensor input ([H, W] or [B, H, W]) is handed to `condition_stack_torch`.
    """
    if _is_torch(labels):
        return condition_stack_torch(labels, global_mode, stored=stored)
    _check_mode(global_mode, stored)
    labels = _check_labels(np.asarray(labels), _ARRAY_NAME)
    h, w = labels.shape
    out = np.empty((NUM_MAPS, 3, h, w), dtype=np.float32)
    if global_mode == "gray":
        out[0] = labels.astype(np.float32) / 255.0
    elif global_mode == "stored":
        stored = np.asarray(stored)
        _check_stored(stored.shape, labels.shape)
        out[0] = stored.transpose(2, 0, 1).astype(np.float32) / 255.0
    else:
        out[0] = PALETTE[labels].transpose(2, 0, 1).astype(np.float32) / 255.0
    onehot = labels[None] == np.arange(NUM_CLASSES, dtype=np.uint8)[:, None, None]
    out[1:] = onehot[:, None].astype(np.float32)
    return out


def condition_stack_torch(labels, global_mode: str = "palette", dtype=None, stored=None):
    """Torch version of `condition_stack`: labels [B, H, W] (or [H, W]) -> [B, 20, 3, H, W].

    `stored` (global_mode "stored" only): uint8 [B, H, W, 3] (or [H, W, 3]), the masks as stored.
    Stays on the labels' device; dtype defaults to float32.
    """
    _check_mode(global_mode, stored)
    dtype = dtype or torch.float32
    if labels.dim() not in (2, 3):
        raise _fail(_ARRAY_NAME, f"expected labels [H, W] or [B, H, W], got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise MaskError(f"{_ARRAY_NAME}: expected an integer label tensor, got {labels.dtype}")
    unbatched = labels.dim() == 2
    labels = labels.long()
    if unbatched:
        labels = labels[None]
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= NUM_CLASSES:
            bad = torch.unique(labels[(labels < 0) | (labels >= NUM_CLASSES)]).cpu().numpy()
            raise MaskError(f"{_ARRAY_NAME}: label values outside 0..{NUM_CLASSES - 1}: {_few(bad)}")

    if global_mode == "gray":
        glob = (labels.to(dtype) / 255.0)[:, None].expand(-1, 3, -1, -1)
    elif global_mode == "stored":
        stored = torch.as_tensor(stored).to(labels.device)
        if unbatched:
            stored = stored[None]
        _check_stored(stored.shape, labels.shape)
        glob = stored.permute(0, 3, 1, 2).to(dtype) / 255.0
    else:
        palette = torch.as_tensor(PALETTE, device=labels.device).to(dtype) / 255.0
        glob = palette[labels].permute(0, 3, 1, 2)
    classes = torch.arange(NUM_CLASSES, device=labels.device)
    local = (labels[:, None] == classes[None, :, None, None]).to(dtype)  # [B, 19, H, W]
    stack = torch.cat([glob[:, None], local[:, :, None].expand(-1, -1, 3, -1, -1)], dim=1)
    return stack[0] if unbatched else stack


def labels_from_stack(stack: Any, global_mode: str | None = "palette") -> np.ndarray:
    """Inverse of `condition_stack`: [20, 3, H, W] (or [B, 20, 3, H, W]) -> uint8 [H, W] ([B, H, W]).

    The local maps decide; every pixel must be on in exactly one of them. The global map is
    checked against the result in the given mode (None skips that check; "stored" cannot be
    checked without the file, so it is refused: pass None).
    """
    if global_mode == "stored":
        raise ValueError("a 'stored' global map depends on the mask file: check it with global_mode=None")
    if global_mode is not None:
        _check_mode(global_mode)
    arr = stack.detach().cpu().float().numpy() if _is_torch(stack) else np.asarray(stack, dtype=np.float32)
    if arr.ndim == 5:
        return np.stack([labels_from_stack(s, global_mode) for s in arr])
    if arr.ndim != 4 or arr.shape[:2] != (NUM_MAPS, 3):
        raise MaskError(f"{_ARRAY_NAME}: expected a stack [{NUM_MAPS}, 3, H, W], got shape {arr.shape}")
    on = arr[1:, 0] > 0.5  # [19, H, W]
    count = on.sum(axis=0)
    if (count != 1).any():
        n_none, n_many = int((count == 0).sum()), int((count > 1).sum())
        raise MaskError(
            f"{_ARRAY_NAME}: local maps must mark each pixel exactly once; "
            f"{n_none} pixels have no class, {n_many} have several (dropped maps cannot be inverted)"
        )
    labels = on.argmax(axis=0).astype(np.uint8)
    if global_mode is not None:
        expected = condition_stack(labels, global_mode)[0]
        if np.abs(arr[0] - expected).max() > 0.5 / 255:
            raise MaskError(f"{_ARRAY_NAME}: global map disagrees with the local maps ({global_mode} mode)")
    return labels


def drop_maps(stack, dropped):
    """Zero the maps where `dropped` is true (the training dropouts; 0 = the global map).

    stack: [20, 3, H, W] or [B, 20, 3, H, W] (numpy or torch); dropped: bool [20] or [B, 20].
    Returns a new array/tensor.
    """
    if _is_torch(stack):
        keep = ~torch.as_tensor(dropped, dtype=torch.bool, device=stack.device)
        return stack * keep[..., None, None, None].to(stack.dtype)
    keep = ~np.asarray(dropped, dtype=bool)
    return stack * keep[..., None, None, None].astype(stack.dtype)
