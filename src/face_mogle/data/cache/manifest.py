"""The cache folder's manifest: its settings, its shard list, and whether a config may use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ...utils import atomic_write
from ..dataset import read_captions, read_split, split_spec
from .fingerprint import _captions_digest, _identity_difference

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARED = "shared.safetensors"


class CacheError(RuntimeError):
    """A missing, incompatible or stale cache; the one-line message says how to (re)build it."""



def build_command(cfg, config_path: Optional[str] = None, overwrite: bool = False) -> str:
    cmd = f"python -m face_mogle.data.cache --config {config_path or 'CONFIG'}"
    if cfg.data.cache_dir:
        cmd += f" --set data.cache_dir={cfg.data.cache_dir}"
    return cmd + (" --overwrite" if overwrite else "")


def suggested_cache_dir(cfg) -> str:
    return str(Path(cfg.data.root) / "cache" / str(cfg.data.size))


def require_cache_dir(cfg) -> Path:
    if not cfg.data.cache_dir:
        raise CacheError(
            f"data.cache_dir is not set: pass --set data.cache_dir=DIR (e.g. --set data.cache_dir="
            f"{suggested_cache_dir(cfg)}) or set it in the config"
        )
    return Path(cfg.data.cache_dir)


def _settings(cfg, identity: Optional[dict]) -> dict:
    """The manifest fields a cache must match (besides the backbone identity and ids)."""
    return {
        "format_version": FORMAT_VERSION,
        "size": cfg.data.size,
        "global_map": cfg.model.global_map,
        "max_sequence_length": cfg.max_sequence_length,
        "dtype": (identity or {}).get("compute_dtype", cfg.dtype),
    }


def wants_maps(cfg) -> bool:
    """A `train.mode: base` run (plain text-to-image) never reads mask maps: its cache holds none."""
    return cfg.train.mode != "base"


def _settings_difference(manifest: dict, cfg, identity: Optional[dict], text: Optional[bool] = None,
                         building: bool = False) -> Optional[str]:
    """What makes `manifest` unusable with this config and backbone (None: compatible).
    identity None checks the config only (before the backbone is loaded); text None accepts a
    cache with or without text embeddings (max_sequence_length only matters with them). A build
    must match the cache's mask maps exactly; a base-mode run reads a cache with or without them."""
    has_text = manifest.get("text", True)
    if text is not None and text != has_text:
        return (f"it was built {'with' if has_text else 'without'} text embeddings, this build asks for "
                f"{'none (--no_text)' if not text else 'them'}")
    has_maps = manifest.get("maps", True)
    if (building or wants_maps(cfg)) and has_maps != wants_maps(cfg):
        return (f"it was built {'with' if has_maps else 'without'} mask maps (train.mode "
                f"{'mogle' if has_maps else 'base'}), this config's train.mode {cfg.train.mode} "
                f"{'needs them' if wants_maps(cfg) else 'caches none'}")
    wanted = _settings(cfg, identity)
    if not has_text:
        wanted.pop("max_sequence_length")
    names = {"size": "data.size", "global_map": "model.global_map",
             "max_sequence_length": "max_sequence_length", "dtype": "dtype",
             "format_version": "cache format version"}
    for key, value in wanted.items():
        built = manifest.get(key)
        if key == "global_map" and built == "official":
            built = "gray"  # the old name of the grey map: such a cache serves a gray config
        if built != value:
            renamed = " (the old name of 'gray')" if manifest.get(key) == "official" else ""
            return f"it was built with {names[key]}={manifest.get(key)!r}{renamed}, this config has {value!r}"
    if identity is not None:
        return _identity_difference(manifest.get("backbone", {}), identity)
    return None


def read_manifest(cache_dir: Path) -> Optional[dict]:
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CacheError(f"{path}: not valid JSON ({err.msg}); delete the cache folder and rebuild it") from None


def _write_manifest(cache_dir: Path, manifest: dict) -> None:
    manifest["ids"] = [i for shard in manifest["shards"] for i in shard["ids"]]
    text = json.dumps(manifest, indent=1)
    atomic_write(cache_dir / MANIFEST, lambda tmp: Path(tmp).write_text(text))


def shard_problem(cache_dir: Path, shard: dict) -> Optional[str]:
    """What is wrong with a listed shard file (None: usable): missing, another size than recorded,
    or other ids than the manifest lists (as two builders writing one folder at once could leave)."""
    path = cache_dir / shard["file"]
    if not path.is_file():
        return f"{shard['file']} is missing"
    if path.stat().st_size != shard["bytes"]:
        return f"{shard['file']} has {path.stat().st_size} bytes, the manifest records {shard['bytes']} (truncated?)"
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            stored = f.get_tensor("ids").tolist()
    except Exception as err:  # safetensors' own error type for a damaged header
        return f"{shard['file']} is unreadable ({' '.join(str(err).split())[:120]})"
    if stored != list(shard["ids"]):
        return (f"{shard['file']} holds ids {_span(stored)}, the manifest lists {_span(shard['ids'])} "
                "(written by two builders at once?)")
    return None


def _span(ids) -> str:
    ids = list(ids)
    return "(none)" if not ids else f"{ids[0]}..{ids[-1]} ({len(ids)})" if len(ids) > 3 else ", ".join(map(str, ids))


# --------------------------------------------------------------------------------------------

def _split_ids(cfg, split: str) -> list[int]:
    if split not in ("train", "test", "both"):
        raise ValueError(f"split must be train, test or both, got {split!r}")
    ids: list[int] = []
    seen = set()
    for name in ("train", "test") if split == "both" else (split,):
        for i in read_split(cfg.data.root, split_spec(name, cfg.data)):
            if i not in seen:
                seen.add(i)
                ids.append(i)
    return ids


def _changed_caption_shards(cfg, manifest: dict, wanted: Optional[set] = None) -> list[str]:
    shards = [s for s in manifest["shards"] if wanted is None or wanted.intersection(s["ids"])]
    all_ids = [i for s in shards for i in s["ids"]]
    captions = read_captions(cfg.data.root, all_ids)
    changed = []
    for s in shards:
        if any(i not in captions for i in s["ids"]):
            continue  # captions unavailable here: nothing to compare against
        if _captions_digest(s["ids"], captions) != s["captions_sha1"]:
            changed.append(s["file"])
    return changed


# --------------------------------------------------------------------------------------------
