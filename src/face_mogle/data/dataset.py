"""MM-CelebA-HQ-layout data: splits, captions, and the training dataset.

Layout under a root: `face/{i}.jpg`, `mask/{i}.png` (labels 0..18), and captions in `text.json`
(`{"{i}.jpg": [caption, ...]}`) or `text/{i}.txt` (one per line). A sample is reproducible from
(seed, epoch, id): caption choice and both dropouts come from a generator seeded by those three.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..labels import NUM_CLASSES, NUM_MAPS
from ..image_files import ImageFileError, read_rgb
from .masks import MaskError, load_label_map


class DataError(ValueError):
    """A data set problem, with a one-line message naming the path and what was expected."""


_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def read_split(root: str | os.PathLike, spec: str) -> list[int]:
    """Ids of a split: "START-END" (inclusive) or an id-list file (one id per line) under root."""
    match = _RANGE.match(str(spec))
    if match:
        start, end = int(match.group(1)), int(match.group(2))
        if end < start:
            raise DataError(f"split {spec!r}: END must be >= START")
        return list(range(start, end + 1))
    path = Path(spec) if Path(spec).is_absolute() else Path(root) / spec
    if not path.is_file():
        raise DataError(f"split {spec!r}: not an id range START-END and no id-list file at {path}")
    ids = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if not line.isdigit():
            raise DataError(f"{path}:{n}: expected an image id (a non-negative integer), got {line!r}")
        ids.append(int(line))
    if not ids:
        raise DataError(f"split file {path} holds no ids")
    return ids


def split_spec(name: str, data_cfg) -> str:
    """'train' / 'test' → the config's data.train_split / data.test_split; anything else is a spec."""
    return {"train": data_cfg.train_split, "test": data_cfg.test_split}.get(name, name)


def read_captions(root: str | os.PathLike, ids: list[int]) -> dict[int, list[str]]:
    """Captions per id, from text.json, else text/{id}.txt."""
    root = Path(root)
    table = root / "text.json"
    captions: dict[int, list[str]] = {}
    if table.is_file():
        try:
            data = json.loads(table.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{table}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if not isinstance(data, dict):
            raise DataError(f'{table}: expected a mapping {{"ID.jpg": [captions]}}')
        for i in ids:
            entry = data.get(f"{i}.jpg", data.get(str(i)))
            if entry is not None:
                captions[i] = [entry] if isinstance(entry, str) else [str(c) for c in entry]
                if not captions[i] or any(not c.strip() for c in captions[i]):
                    # "" is what caption dropout feeds: a blank caption in the data is a mistake
                    raise DataError(f'{table}: "{i}.jpg" has an empty caption (or none); fix or remove it')
    for i in ids:
        if i not in captions:
            path = root / "text" / f"{i}.txt"
            if path.is_file():
                captions[i] = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return captions


def check_files(root: str | os.PathLike, ids: list[int], captions: dict[int, list[str]], need_faces: bool = True) -> None:
    """Report every missing file up front (count + first few), not mid-epoch."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root not found: {root} (expected face/, mask/ and text.json or text/)")
    missing = []
    for i in ids:
        if need_faces and not (root / "face" / f"{i}.jpg").is_file():
            missing.append(str(root / "face" / f"{i}.jpg"))
        if not (root / "mask" / f"{i}.png").is_file():
            missing.append(str(root / "mask" / f"{i}.png"))
        if not captions.get(i):
            missing.append(f"captions of {i} (text.json or {root / 'text' / f'{i}.txt'})")
    if missing:
        shown = ", ".join(missing[:3])
        raise DataError(f"{len(missing)} missing data files under {root}, e.g. {shown}")


def load_face(path: str | os.PathLike, size: int) -> torch.Tensor:
    """RGB image → float [3, size, size] in [0, 1]."""
    try:
        img = read_rgb(path)  # upright (EXIF), 16-bit scaled, alpha over white, size-bounded
    except ImageFileError as err:
        raise DataError(str(err)) from None
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


@dataclass
class SampleChoice:
    caption_index: int
    drop_text: bool
    drop_maps: np.ndarray  # bool [20], aligned with the condition stack: 0 = global map, 1..19 = local maps


def sample_choice(seed: int, epoch: int, image_id: int, num_captions: int, drop_text_prob: float,
                  drop_image_prob: float, train: bool, drop_mask_prob: float = 0.0) -> SampleChoice:
    """The random choices of one sample, a pure function of (seed, epoch, id).

    `drop_image_prob` drops each local map on its own (the official dropout: the global map stays);
    `drop_mask_prob` drops the whole mask, global map included, which is text-only mode.
    """
    if not train:
        return SampleChoice(0, False, np.zeros(NUM_MAPS, dtype=bool))
    rng = np.random.default_rng([seed, epoch, image_id])
    caption_index = int(rng.integers(num_captions))
    drop_text = bool(rng.random() < drop_text_prob)
    drop_local = rng.random(NUM_CLASSES) < drop_image_prob
    drop_mask = bool(rng.random() < drop_mask_prob)  # drawn last: the official draws above do not move
    drop_maps = np.concatenate([[drop_mask], drop_local | drop_mask])
    return SampleChoice(caption_index, drop_text, drop_maps)


class FaceDataset(torch.utils.data.Dataset):
    """Items: id, image [3,S,S] in [0,1], labels long [S,S], caption (possibly ""), drop_maps bool [20].

    Labels rather than the 20-map stack travel through the loader (20× smaller); the stack is
    built on the device by `masks.condition_stack_torch`.
    """

    def __init__(self, root: str | os.PathLike, split: str, size: int, seed: int = 0, train: bool = True,
                 drop_text_prob: float = 0.1, drop_image_prob: float = 0.1, load_images: bool = True,
                 drop_mask_prob: float = 0.0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data root not found: {self.root} (expected face/, mask/ and text.json or text/)")
        self.ids = read_split(self.root, split)
        self.captions = read_captions(self.root, self.ids)
        check_files(self.root, self.ids, self.captions, need_faces=load_images)
        self.size, self.seed, self.train = size, seed, train
        self.drop_text_prob, self.drop_image_prob, self.drop_mask_prob = drop_text_prob, drop_image_prob, drop_mask_prob
        self.load_images = load_images
        self.epoch = 0

    @classmethod
    def from_config(cls, data_cfg, split: str = "train", seed: int = 0, train: Optional[bool] = None, **kw):
        train = (split == "train") if train is None else train
        return cls(data_cfg.root, split_spec(split, data_cfg), data_cfg.size, seed, train, data_cfg.drop_text_prob,
                   data_cfg.drop_image_prob, drop_mask_prob=data_cfg.drop_mask_prob, **kw)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def choice(self, image_id: int, epoch: Optional[int] = None) -> SampleChoice:
        epoch = self.epoch if epoch is None else epoch
        return sample_choice(self.seed, epoch, image_id, len(self.captions[image_id]),
                             self.drop_text_prob, self.drop_image_prob, self.train, self.drop_mask_prob)

    def __getitem__(self, index) -> dict:
        # `(index, epoch)` pairs let a sampler carry the epoch into loader worker processes.
        index, epoch = index if isinstance(index, tuple) else (index, None)
        i = self.ids[index]
        choice = self.choice(i, epoch)
        mask_path = self.root / "mask" / f"{i}.png"
        try:
            labels = load_label_map(mask_path, self.size)
        except MaskError as err:
            raise DataError(str(err)) from None
        item = {
            "id": i,
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "caption": "" if choice.drop_text else self.captions[i][choice.caption_index],
            "caption_index": choice.caption_index,
            "drop_maps": torch.from_numpy(choice.drop_maps),
        }
        if self.load_images:
            item["image"] = load_face(self.root / "face" / f"{i}.jpg", self.size)
        return item


def collate(items: list[dict]) -> dict:
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
