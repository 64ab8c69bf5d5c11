"""Writing a SynthFaces set in the MM-CelebA-HQ layout, every file atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from face_mogle.data.masks import save_label_map
from face_mogle.data.synthfaces.render import render
from face_mogle.utils import atomic_write


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    # 4:4:4 chroma: the default 4:2:0 subsampling smears colour edges and costs thin parts their labels.
    def write(tmp):
        Image.fromarray(image, "RGB").save(tmp, format="JPEG", quality=95, subsampling=0)

    atomic_write(path, write)


def _save_text(text: str, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_dataset(
    out, num: int, size: int = 256, seed: int = 0, test_fraction: float = 0.1, progress: bool = True,
    expressions: bool = False,
) -> Path:
    """Write `num` samples in the MM-CelebA-HQ layout under `out` (see DESIGN §2):
    face/{i}.jpg, mask/{i}.png, text/{i}.txt, text.json, attributes.json, splits/{train,test}.txt.
    The last round(num * test_fraction) ids are the test split. Every file is written atomically.
    expressions: faces with expressions (see `render`), named in captions and attributes.json."""
    from tqdm import tqdm

    if num <= 0:
        raise ValueError(f"num must be positive, got {num}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    out = Path(out)
    for sub in ("face", "mask", "text", "splits"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    texts, attrs = {}, {}
    for i in tqdm(range(num), desc="SynthFaces", unit="img", disable=not progress):
        s = render((seed, i), size, expressions)
        _save_jpeg(s.image, out / "face" / f"{i}.jpg")
        save_label_map(s.labels, out / "mask" / f"{i}.png")
        _save_text("\n".join(s.captions) + "\n", out / "text" / f"{i}.txt")
        texts[f"{i}.jpg"] = s.captions
        attrs[str(i)] = s.attributes

    _save_text(json.dumps(texts, indent=1) + "\n", out / "text.json")
    _save_text(json.dumps(attrs, indent=1) + "\n", out / "attributes.json")
    n_test = int(round(num * test_fraction))
    ids = [str(i) for i in range(num)]
    _save_text("".join(f"{i}\n" for i in ids[: num - n_test]), out / "splits" / "train.txt")
    _save_text("".join(f"{i}\n" for i in ids[num - n_test :]), out / "splits" / "test.txt")
    return out
