"""Training-state checkpoints: `runs/NAME/checkpoints/step-N/`, written atomically.

A checkpoint is first written to a hidden temporary folder and renamed into place when complete,
so a crash mid-save leaves the previous checkpoints untouched and never a half-written `step-N`.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    pass


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_resume(run_dir: str | Path, resume: str) -> Path:
    """'latest' → the newest checkpoint of the run; otherwise a checkpoint folder path."""
    if resume == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            raise CheckpointError(f"--resume latest: no checkpoint in {Path(run_dir) / 'checkpoints'}")
        return found[-1]
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise CheckpointError(f"--resume {resume}: not a checkpoint folder (expected {path / 'state.json'})")
    return path


def rng_state() -> dict:
    """Every RNG's state as tensors, ints and lists, so it reloads with weights_only=True."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(words), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: dict,
    keep: int,
    fail_after: Optional[str] = None,
) -> Path:
    """Write checkpoint `step-N` atomically and prune to the newest `keep`.

    `fail_after` names a file after which to raise: used by tests to simulate a crash mid-save.
    """
    from safetensors.torch import save_file

    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".step-{step}.", suffix=".tmp"))
    try:
        save_file({k: v.detach().float().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        if fail_after == "trainable.safetensors":
            raise CheckpointError("simulated crash during checkpoint save")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(dict(state, step=step), indent=2))
        if final.exists():  # re-saving the same step (e.g. at the end of a run): replace it
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, named_params: dict[str, torch.nn.Parameter], optimizer, scheduler) -> dict:
    """Restore trainable weights, optimizer, scheduler and RNG state; return state.json."""
    from ..utils import read_safetensors

    path = Path(path)
    weights = read_safetensors(path / "trainable.safetensors")
    missing = sorted(set(named_params) - set(weights))
    unexpected = sorted(set(weights) - set(named_params))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match the model ({len(missing)} missing, {len(unexpected)} unexpected "
            f"parameters, e.g. {(missing or unexpected)[:2]}): was the config changed?"
        )
    resized = [(n, tuple(weights[n].shape), tuple(p.shape)) for n, p in named_params.items() if weights[n].shape != p.shape]
    if resized:  # e.g. another model.lora.r: the files are fine, the model is not the one they were saved from
        name, saved, now = resized[0]
        raise CheckpointError(
            f"checkpoint {path} was saved from other layer sizes ({len(resized)} parameters differ, e.g. {name}: "
            f"{list(saved)} there, {list(now)} here): was model.lora.r or another model.* key changed?"
        )
    with torch.no_grad():
        for name, p in named_params.items():
            p.copy_(weights[name].to(p.dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=True))
    return json.loads((path / "state.json").read_text())
