"""What every command shares around a run folder: its files, the device, presets and the one-line
errors a user sees (inference.py, test.py, app.py, train.py and the benches print `user_errors()`
as one line). Below the pipeline, which imports these back for its callers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from .config import ConfigError
from .models.face_mogle import LORA_FILE, MOGLE_FILE, OFFICIAL_MOGLE_FILE

CONFIG_FILE = "config.yaml"


class SamplingError(ValueError):
    """Bad sampling input (run folder, size, steps, ...): a one-line message for the user."""


def preset_overrides(path: Optional[str | os.PathLike]) -> list[str]:
    """A preset file (YAML, a partial config such as configs/official-sampler.yaml) as `--set`
    overrides, applied on top of a run's config before the command line's own `--set`s."""
    if not path:
        return []
    import yaml

    from .config import load_yaml

    path = Path(path)
    try:
        data = load_yaml(path.read_text())
    except FileNotFoundError:
        raise SamplingError(f"preset not found: {path} (e.g. configs/official-sampler.yaml)") from None
    except (OSError, yaml.YAMLError, ConfigError) as err:
        raise SamplingError(f"preset {path} is not readable YAML: {one_line(err)}") from None
    if not isinstance(data, dict):
        raise SamplingError(f"preset {path} must hold a mapping of config keys")

    def flat(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"

    return list(flat(data))


def user_errors() -> tuple[type, ...]:
    """Exception types whose message is meant for the user (the CLIs print them as one line)."""
    from .data.masks import MaskError
    from .identity.errors import IdentityError
    from .image_files import ImageFileError
    from .models.builder import BackboneError
    from .models.quantization import QuantizationError

    return (SamplingError, ConfigError, BackboneError, MaskError, ImageFileError, QuantizationError, IdentityError)


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: Optional[str | torch.device]) -> torch.device:
    """A usable torch device (default: cuda if there is one, else cpu), or a one-line error."""
    try:
        device = torch.device(device or _default_device())
    except (RuntimeError, TypeError) as err:
        raise SamplingError(f"unknown device {device!r}: {one_line(err)}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SamplingError(f"device {device} requested, but torch sees no CUDA GPU (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SamplingError(f"device {device} requested, but there are {torch.cuda.device_count()} CUDA GPUs")
    return device


def resolve_pretrained(pretrained: str, run_dir: Path) -> str:
    """'tiny' as is; a relative folder is looked up from the current directory, then from the
    project root the run folder sits in (run_dir/../..), so shipped runs work from anywhere."""
    if pretrained == "tiny" or Path(pretrained).is_absolute() or Path(pretrained).exists():
        return pretrained
    candidate = run_dir.resolve().parent.parent / pretrained
    return str(candidate) if candidate.exists() else pretrained


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """A run folder must hold config.yaml, the LoRA file and MoGLE weights; say what is missing."""
    run = Path(run_dir)
    if not run.is_dir():
        raise SamplingError(f"run folder not found: {run} (expected {CONFIG_FILE}, {LORA_FILE}, {MOGLE_FILE})")
    missing = [name for name in (CONFIG_FILE, LORA_FILE) if not (run / name).is_file()]
    if not (run / MOGLE_FILE).is_file() and not (run / OFFICIAL_MOGLE_FILE).is_file():
        missing.append(MOGLE_FILE)
    if missing:
        raise SamplingError(f"run folder {run} is incomplete: missing {', '.join(missing)}")
    return run
