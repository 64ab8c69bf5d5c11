"""Writing a SynthFaces set in the MM-CelebA-HQ layout, every file atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from face_mogle.data.masks import save_label_map
from face_mogle.data.synthfaces.identity import identity_params
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
    out, num: int | None, size: int = 256, seed: int = 0, test_fraction: float = 0.1, progress: bool = True,
    expressions: bool = False, identities: int | None = None, per_identity: int | None = None,
) -> Path:
    """Write `num` samples in the MM-CelebA-HQ layout under `out` (see DESIGN §2):
    face/{i}.jpg, mask/{i}.png, text/{i}.txt, text.json, attributes.json, splits/{train,test}.txt.
    The last round(num * test_fraction) ids are the test split. Every file is written atomically.
    expressions: faces with expressions (see `render`), named in captions and attributes.json.
    identities, per_identity: N people with K renders each (num must be None or N * K): id
    i = j * K + k is render k of identity j (see `identity`), attributes.json records "identity": j,
    and the test split is the last round(N * test_fraction) identities, whole."""
    from tqdm import tqdm

    if (identities is None) != (per_identity is None):
        raise ValueError(f"identities and per_identity go together, got identities={identities}, "
                         f"per_identity={per_identity}")
    if identities is not None:
        if identities <= 0 or per_identity <= 0:
            raise ValueError(f"identities and per_identity must be positive, got {identities} and {per_identity}")
        if num is not None and num != identities * per_identity:
            raise ValueError(f"num ({num}) must be identities * per_identity = {identities * per_identity}")
        num = identities * per_identity
    if num is None or num <= 0:
        raise ValueError(f"num must be positive, got {num}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    out = Path(out)
    for sub in ("face", "mask", "text", "splits"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    texts, attrs = {}, {}
    person = None
    for i in tqdm(range(num), desc="SynthFaces", unit="img", disable=not progress):
        if identities is None:
            s = render((seed, i), size, expressions)
        else:
            j = i // per_identity
            if i % per_identity == 0:
                person = identity_params(seed, j)
            s = render((seed, i), size, expressions, identity=person)
            s.attributes["identity"] = j
        _save_jpeg(s.image, out / "face" / f"{i}.jpg")
        save_label_map(s.labels, out / "mask" / f"{i}.png")
        _save_text("\n".join(s.captions) + "\n", out / "text" / f"{i}.txt")
        texts[f"{i}.jpg"] = s.captions
        attrs[str(i)] = s.attributes

    _save_text(json.dumps(texts, indent=1) + "\n", out / "text.json")
    _save_text(json.dumps(attrs, indent=1) + "\n", out / "attributes.json")
    n_test = int(round(num * test_fraction))
    if identities is not None:  # whole identities: a held-out person is never seen in training
        n_test = int(round(identities * test_fraction)) * per_identity
    ids = [str(i) for i in range(num)]
    _save_text("".join(f"{i}\n" for i in ids[: num - n_test]), out / "splits" / "train.txt")
    _save_text("".join(f"{i}\n" for i in ids[num - n_test :]), out / "splits" / "test.txt")
    return out
