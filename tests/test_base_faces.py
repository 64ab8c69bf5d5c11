"""bench/base_faces.py: a base-mode training checkpoint (or a transformer folder) replaces the base
weights under a run's LoRA, exactly, and a checkpoint that does not fit is named."""

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from face_mogle.pipeline import FaceMoGLEPipeline

from sampling_helpers import make_run

ROOT = Path(__file__).resolve().parents[1]


def bench():
    spec = importlib.util.spec_from_file_location("base_faces", ROOT / "bench" / "base_faces.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_base_checkpoint_replaces_the_base_weights_under_the_lora(tmp_path):
    bf = bench()
    pipe = FaceMoGLEPipeline.from_run(make_run(tmp_path / "run"))
    tr = pipe.backbone.transformer
    g = torch.Generator().manual_seed(0)
    # what BaseTextToImage saves: every base weight, named transformer.<name> (peft's base_layer left out)
    plain = {n.replace(".base_layer", ""): p for n, p in tr.named_parameters() if "lora_" not in n}
    ckpt = tmp_path / "step-100"
    ckpt.mkdir()
    new = {f"transformer.{n}": torch.randn(p.shape, generator=g) for n, p in plain.items()}
    save_file(new, str(ckpt / "trainable.safetensors"))
    lora_before = {n: p.detach().clone() for n, p in tr.named_parameters() if "lora_" in n}
    bf.load_base_into(tr, bf.base_weights(ckpt), ckpt)
    now = {n.replace(".base_layer", ""): p for n, p in tr.named_parameters() if "lora_" not in n}
    assert all(torch.equal(now[n], new[f"transformer.{n}"]) for n in plain)
    assert all(torch.equal(p, lora_before[n]) for n, p in tr.named_parameters() if "lora_" in n)

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    save_file({"transformer.x_embedder.weight": torch.zeros(3, 3)}, str(wrong / "trainable.safetensors"))
    with pytest.raises(SystemExit, match="x_embedder.weight .* does not fit"):
        bf.load_base_into(tr, bf.base_weights(wrong), wrong)
    with pytest.raises(SystemExit, match="neither trainable.safetensors"):
        bf.base_weights(tmp_path / "run" / "nothing")
