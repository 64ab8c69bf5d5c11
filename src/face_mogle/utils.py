"""Small shared helpers: atomic file writes, dtype names."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, then rename onto `path`: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def stage_file(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a hidden temp file beside `path`, for the caller to `os.replace` onto it later
    (when it must do other work between writing and renaming, e.g. record the file first)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def atomic_save_safetensors(tensors: dict, path: str | os.PathLike, metadata: Optional[dict] = None) -> Path:
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_safetensors(path: str | os.PathLike) -> dict:
    """All tensors of a safetensors file; a truncated, empty or foreign file is a ValueError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors' own error type for a broken header or a short file
        raise ValueError(f"{path}: not a readable safetensors file ({' '.join(str(err).split())}); "
                         "it may be truncated: restore or re-export it") from None


def update_hash(h, path: str | os.PathLike):
    """Feed a file's bytes to the hashlib object `h` in 1 MiB blocks; returns `h`."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h
