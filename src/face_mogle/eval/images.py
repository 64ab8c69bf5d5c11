"""Reading images at the evaluation size and feeding them to a model in batches with progress bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from face_mogle.eval.errors import EvalError
from face_mogle.image_files import ImageFileError, read_rgb


def load_rgb(path: str | Path, size: int | None = None, resample: int = Image.BICUBIC) -> Image.Image:
    """An RGB image, resized to size x size (PIL bicubic, antialiased, unless `resample` says
    otherwise) when size is set and differs.

    The published protocol compares 512² images, so real 1024² faces are brought to 512 first.
    """
    try:
        img = read_rgb(path)  # upright (EXIF), 16-bit scaled, alpha over white, size-bounded
    except ImageFileError as e:
        raise EvalError(f"cannot read image {e}") from None
    if size and img.size != (size, size):
        img = img.resize((size, size), resample)
    return img


class ResizeArray:
    """clean-fid's `custom_image_tranform` hook: uint8 HxWx3 array -> same at size x size.

    A class, not a closure, so DataLoader workers can pickle it on any start method.
    """

    def __init__(self, size: int | None):
        self.size = size

    def __call__(self, array: np.ndarray) -> np.ndarray:
        if not self.size or array.shape[:2] == (self.size, self.size):
            return array
        img = Image.fromarray(np.asarray(array, dtype=np.uint8)).resize((self.size, self.size), Image.BICUBIC)
        return np.asarray(img)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class ImageRows(Dataset):
    """Row i = a tuple of images (e.g. (generated, real)), each loaded at `size` then `transform`ed."""

    def __init__(self, rows: Sequence[tuple[Path, ...]], size: int | None,
                 transform: Callable[[Image.Image], torch.Tensor], resample: int = Image.BICUBIC):
        self.rows, self.size, self.transform, self.resample = list(rows), size, transform, resample

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return tuple(self.transform(load_rgb(p, self.size, self.resample)) for p in self.rows[i])


def batches(rows: Sequence[tuple[Path, ...]], size: int | None, transform, batch_size: int,
            num_workers: int, desc: str, resample: int = Image.BICUBIC) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield stacked batches (one tensor per column of `rows`) with a tqdm bar over images."""
    loader = DataLoader(ImageRows(rows, size, transform, resample), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, drop_last=False)
    with tqdm(total=len(rows), desc=desc, unit="img", dynamic_ncols=True) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch[0]))
