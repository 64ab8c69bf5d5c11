"""Identity pairs for training (`model.identity`): each target face is conditioned on the embedding of
ANOTHER image of the same person (the reference), so the model learns who, not which picture — the
reference's hair, clothes, expression and pose are not the target's, and copying them costs loss.

The embeddings of every training image are computed once, when training starts, by the run's frozen
identity encoder (SynthFaces data: from each face's own mask; other data: through the encoder's face
parser). A person with one image in the split has no other reference: those samples train without
identity, as do `data.drop_identity_prob` of the others (identity is optional at sampling time).
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np
import torch


class IdentityPairs:
    def __init__(self, ids: Sequence[int], person: dict[int, int], embeddings: torch.Tensor, seed: int,
                 drop_prob: float):
        self.row = {int(i): k for k, i in enumerate(ids)}
        self.embeddings = embeddings  # [N, D], row k = ids[k]
        self.seed, self.drop_prob = seed, drop_prob
        by_person: dict[int, list[int]] = {}
        for i in ids:
            by_person.setdefault(person[int(i)], []).append(int(i))
        self.others = {i: [j for j in by_person[person[int(i)]] if j != i] for i in map(int, ids)}

    @classmethod
    def build(cls, cfg, ids: Sequence[int], progress: bool = True, batch_size: int = 64) -> "IdentityPairs":
        from ..data.identities import read_identities

        person = read_identities(cfg.data.root, cfg.data.identity_file)
        missing = [i for i in ids if int(i) not in person]
        if missing:
            raise ValueError(f"{len(missing)} training images have no identity (e.g. id {missing[0]}): "
                             f"data.identity_file (or SynthFaces' attributes.json) must name every image's person")
        embeddings = embed_faces(cfg, ids, progress, batch_size)
        return cls(ids, person, embeddings, cfg.seed, cfg.data.drop_identity_prob)

    def batch(self, ids: Sequence[int], step: int, micro: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference embeddings [B, D] for the batch's target ids and which samples keep theirs [B];
        the same (seed, step, micro, rank) gives the same references (resumes repeat them)."""
        digest = hashlib.sha256(f"identity/{self.seed}/{step}/{micro}/{rank}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        rows, keep = [], []
        for i in map(int, ids):
            others = self.others[i]
            draw, pick = rng.random(), rng.integers(1 << 30)  # both drawn always: one sample never shifts the next
            keep.append(bool(others) and draw >= self.drop_prob)
            rows.append(self.row[others[pick % len(others)]] if others else self.row[i])
        return self.embeddings[rows], torch.tensor(keep)


def embed_faces(cfg, ids: Sequence[int], progress: bool = True, batch_size: int = 64) -> torch.Tensor:
    """The run's identity encoder over the images of `ids` → [N, D] (SynthFaces faces with their own
    masks as the face parse; others parsed by the encoder's parser)."""
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..data.masks import load_label_map
    from ..identity import load_identity_encoder

    ident = cfg.model.identity
    encoder = load_identity_encoder(ident.encoder, ident.weights,
                                    parser=cfg.data.parser if ident.encoder == "synthfaces" else None)
    if encoder.dim != ident.embed_dim:
        raise ValueError(f"model.identity.embed_dim is {ident.embed_dim}, but the {ident.encoder} encoder "
                         f"({ident.weights or 'its default place'}) makes {encoder.dim}-d embeddings: set embed_dim {encoder.dim}")
    root = Path(cfg.data.root)
    own_masks = cfg.data.parser == "synthfaces"
    out = []
    bar = tqdm(total=len(ids), desc="identity embeddings", unit="face", disable=not progress)
    for start in range(0, len(ids), batch_size):
        chunk = [int(i) for i in ids[start : start + batch_size]]
        faces = [root / "face" / f"{i}.jpg" for i in chunk]
        labels: Optional[list] = None
        if own_masks:
            from PIL import Image

            sizes = [Image.open(f).size for f in faces]
            labels = [load_label_map(root / "mask" / f"{i}.png", s[0]) for i, s in zip(chunk, sizes)]
        with torch.no_grad():
            out.append(encoder.embed(faces, labels).float().cpu())
        bar.update(len(chunk))
    bar.close()
    return torch.cat(out)
