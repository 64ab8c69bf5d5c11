"""What a cache's contents depend on, as digests: the encoders, the captions and the source files.

A cache is stale when any of these changed since it was built; these helpers compute them at build
time and compare them when the cache is opened or resumed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from ...utils import DTYPES, update_hash

DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def _file_digest(path: Path) -> str:
    """Size + hash of the first MiB: cheap on 10 GB weight files, still catches a swap."""
    h = hashlib.sha1(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _module_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


# What the cached values depend on: the encoders and tokenizers, not the transformer.
ENCODER_PARTS = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def encoder_fingerprint(backbone) -> dict:
    """A short digest per encoder part: weight files (size + first MiB) for a folder, the
    parameters themselves for the in-code tiny preset."""
    if backbone.source == "tiny":
        return {name: _module_digest(getattr(backbone, name)) for name in ("vae", "text_encoder", "text_encoder_2")}
    folder = Path(backbone.source)
    out = {}
    for part in ENCODER_PARTS:
        h = hashlib.sha1()
        for path in sorted(p for p in (folder / part).rglob("*") if p.is_file()):
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(_file_digest(path).encode())
        out[part] = h.hexdigest()[:16]
    return out


def cache_identity(backbone) -> dict:
    """`backbone.identity()` plus what the cache depends on: encoder digests, dtype, VAE factors."""
    ident = dict(backbone.identity())
    vae_cfg = backbone.vae.config
    ident["encoders"] = encoder_fingerprint(backbone)
    ident["compute_dtype"] = DTYPE_NAMES.get(next(backbone.vae.parameters()).dtype, "float32")
    ident["vae_scaling_factor"] = float(vae_cfg.scaling_factor)
    ident["vae_shift_factor"] = float(vae_cfg.shift_factor or 0.0)
    return _jsonable(ident)


def _jsonable(x):
    return json.loads(json.dumps(x, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


_IGNORED = {"_name_or_path", "_diffusers_version", "_use_default_values", "_class_name"}


def _identity_difference(built: dict, current: dict) -> Optional[str]:
    """First relevant difference between two identities, as words; None when compatible.

    The encoder digests decide when both sides have them (a moved folder is still the same
    weights); otherwise the keys both sides have are compared.
    """
    if "encoders" in built and "encoders" in current:
        parts = list(built["encoders"]) + [p for p in current["encoders"] if p not in built["encoders"]]
        for part in parts:
            if built["encoders"].get(part) != current["encoders"].get(part):
                return (f"backbone {part} differs (built with {built.get('source')!r}, "
                        f"{part} {built['encoders'].get(part)}; now {current.get('source')!r}, "
                        f"{part} {current['encoders'].get(part)})")
        keys = [k for k in ("compute_dtype", "vae_latent_channels", "vae_scale_factor",
                            "vae_scaling_factor", "vae_shift_factor") if k in built or k in current]
    else:
        keys = [k for k in current if k in built]
    for key in keys:
        a, b = built.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            a = {k: v for k, v in a.items() if k not in _IGNORED}
            b = {k: v for k, v in b.items() if k not in _IGNORED}
        if a != b:
            if key == "source":
                return f"backbone differs (built with {a!r}, now {b!r})"
            return f"backbone {key} differs (built with {_short(a)}, now {_short(b)})"
    return None


def _short(x, limit: int = 80) -> str:
    text = json.dumps(x) if not isinstance(x, str) else repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _captions_digest(ids: Sequence[int], captions: dict) -> str:
    h = hashlib.sha1(json.dumps([[int(i), list(captions[i])] for i in ids], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


SOURCES = ("face/{}.jpg", "mask/{}.png")  # the files an entry is encoded from (captions: captions_sha1)


def _content_digest(path: Path) -> str:
    return update_hash(hashlib.sha1(), path).hexdigest()[:16]


def _source_fingerprints(root: Path, ids: Sequence[int]) -> dict:
    """{id: [[size, mtime_ns, content digest] per source file]}, recorded per shard at build time."""
    out = {}
    for i in ids:
        entry = []
        for pattern in SOURCES:
            path = Path(root) / pattern.format(i)
            st = path.stat()
            entry.append([st.st_size, st.st_mtime_ns, _content_digest(path)])
        out[str(i)] = entry
    return out


def _changed_source(root: Path, shard: dict) -> Optional[str]:
    """The first source file of the shard that changed since it was encoded (None: all the same).
    Size and mtime are the fast path; where they differ the content decides (a copy or a touch
    that kept the bytes is no change)."""
    recorded = shard.get("sources")
    if recorded is None:
        return "(no source fingerprints: built by an older version)"
    for i in shard["ids"]:
        for pattern, (size, mtime, digest) in zip(SOURCES, recorded[str(i)]):
            path = Path(root) / pattern.format(i)
            try:
                st = path.stat()
            except OSError:
                return f"{path} (missing)"
            if (st.st_size, st.st_mtime_ns) == (size, mtime):
                continue
            if st.st_size != size or _content_digest(path) != digest:
                return str(path)
    return None
