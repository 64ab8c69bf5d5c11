"""Reading image files the way an image viewer shows them, bounded in size.

Every face and mask file the commands read comes through `open_image`: its declared size is checked
before any pixel is decoded (a 12 KB PNG can declare 10000x10000 and take gigabytes), and its EXIF
orientation is applied (a phone photo is stored sideways). `rgb` then makes a face of any mode
deliberately: 16-bit grey is scaled to 8 bits (a plain convert clips it to white), transparent pixels
are laid over white, with a one-line note on stderr.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# The default bound on an input image's pixels (the config's sample.max_input_pixels): a 4096x4096
# face decodes to 48 MB; past it, a sampler at 2048 at most has no use for the detail.
MAX_INPUT_PIXELS = 4096 * 4096
_log = logging.getLogger(__name__)  # no handler set: Python prints warnings as their bare text


class ImageFileError(ValueError):
    """An image file that cannot be used; one line naming the file and what was wrong."""


def open_image(path: str | os.PathLike, max_pixels: int = MAX_INPUT_PIXELS, what: str = "image") -> Image.Image:
    """The decoded image, upright; ImageFileError for a missing, unreadable or too large file."""
    with open_header(path, max_pixels, what) as img:
        try:
            img.load()  # decode now, so truncated data fails here and not later
            return ImageOps.exif_transpose(img)  # a copy, upright (the file's EXIF orientation applied)
        except Exception as err:
            raise ImageFileError(f"{path}: unreadable or corrupt image ({_detail(err)})") from None


def open_header(path: str | os.PathLike, max_pixels: int = MAX_INPUT_PIXELS, what: str = "image") -> Image.Image:
    """The image opened but not decoded (PIL reads the header only), its declared size checked."""
    name = str(path)
    try:
        with warnings.catch_warnings():  # past PIL's warning size: refused below, with our own message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except FileNotFoundError:
        raise ImageFileError(f"{name}: {what} file not found") from None
    except IsADirectoryError:
        raise ImageFileError(f"{name}: is a folder, not an {what} file") from None
    except Image.DecompressionBombError:  # PIL's own limit, raised by open() itself (not an OSError)
        raise ImageFileError(f"{name}: declares an image of more than {2 * Image.MAX_IMAGE_PIXELS} pixels: "
                             f"refused before decoding (the bound is {max_pixels}, sample.max_input_pixels)") from None
    except Exception as err:  # PIL raises many types for bad data (UnidentifiedImageError, SyntaxError, ...)
        raise ImageFileError(f"{name}: unreadable or corrupt image ({_detail(err)})") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageFileError(f"{name}: declares {w}x{h} pixels, more than the {max_pixels} allowed "
                             "(sample.max_input_pixels): refused before decoding; scale it down first")
    return img


def needs_conversion(img: Image.Image) -> str | None:
    """Why a plain `convert("RGB")` would show this image otherwise than a viewer (None: it would not)."""
    if img.getexif().get(0x0112, 1) != 1:
        return "an EXIF orientation"
    if img.mode.startswith("I") or img.mode == "F":
        return f"{img.mode} pixels (more than 8 bits)"
    return None  # (an alpha channel is dropped: right for the usual opaque one)


def rgb(img: Image.Image, name: str = "<image>") -> Image.Image:
    """Any PIL image as 8-bit RGB: 16/32-bit grey scaled (65535 = white), transparency over white."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):  # "I;16" (16-bit PNG) or "I": values in 0..65535
        grey = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(grey.round().clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        raise ImageFileError(f"{name}: floating-point images are not supported; save it as 8- or 16-bit")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if (alpha < 255).any():
            _log.warning(f"note: {name}: {(alpha < 255).mean():.0%} of the pixels are transparent: laid over white")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...: as a viewer shows them


def read_rgb(source: Any, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """A path or a PIL image → upright 8-bit RGB (see `open_image` and `rgb`)."""
    if isinstance(source, Image.Image):
        return rgb(source, getattr(source, "filename", "") or "<image>")
    return rgb(open_image(source, max_pixels, "image"), str(source))


def _detail(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
