"""A GGUF single-file transformer (`pretrained_transformer`): files written here by the gguf package in
the original BFL layout, with Q8_0 weights, as city96's FLUX.1 conversions are."""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from face_mogle.config import ConfigError, load_config
from face_mogle.models.builder import BackboneError, TinySpec, load_backbone
from face_mogle.models.face_mogle import FaceMoGLE
from face_mogle.models.gguf import layout, to_bfl, to_diffusers
from face_mogle.models.quantization import QuantizationError, quantized_scheme
from face_mogle.pipeline import FaceMoGLEPipeline

from sampling_helpers import draw_mask

gguf = pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[1]
Q8_0 = gguf.GGMLQuantizationType.Q8_0


def write_gguf(transformer, path) -> Path:
    """The transformer as a GGUF file: BFL names, 2-D weights in Q8_0 (rows of 32-value blocks),
    biases in F32 and the attention norms' scales in F16."""
    writer = gguf.GGUFWriter(str(path), "flux")
    for name, t in to_bfl(transformer.state_dict(), dict(transformer.config)).items():
        a = t.detach().float().numpy()
        if a.ndim == 2:
            writer.add_tensor(name, gguf.quants.quantize(a, Q8_0), raw_dtype=Q8_0)
        else:
            writer.add_tensor(name, a.astype(np.float16 if name.endswith(".scale") else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def dequantized(p: torch.Tensor) -> torch.Tensor:
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    return dequantize_gguf_tensor(p).float() if type(p).__name__ == "GGUFParameter" else p.float()


def psnr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = ((a - b) ** 2).mean()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_backbone):
    return write_gguf(tiny_backbone.transformer, tmp_path_factory.mktemp("gguf") / "tiny-Q8_0.gguf")


def test_layout_equals_diffusers_converter_at_flux_dev_shapes():
    """Our BFL → diffusers mapping gives what diffusers' own converter gives for FLUX.1-dev: every
    tensor of the original layout is filled with its own row ids (one column: both mappings only cut
    and join rows), so each diffusers tensor must come out holding exactly the same rows."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    config = dict(in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                  joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56])
    with init_empty_weights():
        shapes = {k: tuple(v.shape) for k, v in FluxTransformer2DModel(**config).state_dict().items()}
    assert sum(math.prod(s) for s in shapes.values()) == 11_901_408_320  # FLUX.1-dev's 11.90 B parameters
    checkpoint, start = {}, 0
    for name, parts in layout(config).items():
        rows = sum(shapes[p][0] for p in parts)
        checkpoint[name] = torch.arange(start, start + rows).unsqueeze(1)
        start += rows
    ours = to_diffusers(dict(checkpoint), {k: s[0] for k, s in shapes.items()}, config)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(checkpoint))
    assert ours.keys() == theirs.keys() == shapes.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_gguf_backbone_holds_the_file_weights_quantized(tiny_backbone, tiny_gguf):
    bb = load_backbone("tiny", pretrained_transformer=tiny_gguf)
    assert bb.quantize == "gguf-q8_0" == quantized_scheme(bb.transformer)
    assert quantized_scheme(bb.text_encoder_2) == "none" and bb.dtype == torch.float32
    plain = tiny_backbone.transformer.state_dict()
    loaded = bb.transformer.state_dict()
    assert loaded.keys() == plain.keys()
    n_quantized = 0
    for name, want in plain.items():
        got = dequantized(loaded[name])
        assert got.shape == want.shape, name
        if type(loaded[name]).__name__ == "GGUFParameter":
            n_quantized += 1
            # Q8_0: blocks of 32 values share one scale max|x|/127, so each value is off by at most half
            # a step, plus the scale's own f16 rounding (2^-11 of up to 127 steps: 0.06 step) and diffusers'
            # dequantization computing in f16 (another 0.06 step)
            step = want.reshape(want.shape[0], -1, 32).abs().amax(-1, keepdim=True) / 127
            err = (got - want).reshape(step.shape[0], -1, 32).abs()
            assert (err <= 0.63 * step + 1e-9).all() and err.max() > 0, name
        elif name.endswith((".norm_q.weight", ".norm_k.weight", ".norm_added_q.weight", ".norm_added_k.weight")):
            assert torch.equal(got, want.half().float()), name  # F16 in the file
        else:
            assert torch.equal(got, want), name  # F32 in the file: exact
    assert n_quantized == sum(p.ndim == 2 for p in plain.values())


def test_a_backbone_folder_needs_only_the_transformer_config(tmp_path):
    """From a folder, the GGUF file replaces the transformer's weights: transformer/ may hold only its
    config.json (the shipped demo backbone, its transformer written as Q8_0)."""
    import shutil

    shipped = ROOT / "checkpoints" / "face-mogle-tiny" / "backbone"
    plain = load_backbone(str(shipped)).transformer
    path = write_gguf(plain, tmp_path / "demo-Q8_0.gguf")
    folder = tmp_path / "backbone"
    shutil.copytree(shipped, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    for name in ("vae", "text_encoder", "text_encoder_2"):
        for f in (shipped / name).glob("*.safetensors"):
            shutil.copy(f, folder / name)
    assert [f.name for f in (folder / "transformer").iterdir()] == ["config.json"]
    bb = load_backbone(str(folder), pretrained_transformer=path)
    assert bb.quantize == "gguf-q8_0" and quantized_scheme(bb.text_encoder_2) == "none"
    got = dequantized(bb.transformer.single_transformer_blocks[5].proj_mlp.weight)
    want = plain.single_transformer_blocks[5].proj_mlp.weight.detach()
    assert 0 < (got - want).abs().max() <= want.abs().max() / 127


def test_sampling_on_a_gguf_base_stays_close(tiny_run, tiny_gguf, tmp_path, caplog):
    """A run sampled on its base transformer written as a Q8_0 GGUF file: the same images within the
    floor measured on it, and really the file's (not equal). On the shipped model the same comparison
    measured 58.6 and 47.2 dB (BENCHMARKS.md, "GGUF base")."""
    masks = [draw_mask(0, 32), None, draw_mask(1, 32)]
    kw = dict(seeds=[1, 2, 3], steps=4)
    plain = FaceMoGLEPipeline.from_run(tiny_run)(["a face", "b face", ""], masks, **kw)
    pipe = FaceMoGLEPipeline.from_run(tiny_run, overrides=[f"pretrained_transformer={tiny_gguf}"])
    assert "trained on a base quantized as none; the base is loaded as gguf-q8_0" in caplog.text
    assert "pretrained_transformer: null matches it" in caplog.text
    out = pipe(["a face", "b face", ""], masks, **kw)
    assert out.settings["quantize"] == "gguf-q8_0" and plain.settings["quantize"] == "none"
    values = [psnr(a, b) for a, b in zip(out.images, plain.images)]
    assert all(45 < v < math.inf for v in values), values  # measured 56.4-57.1 dB
    # a LoRA saved on this base records it
    pipe.model.save_weights(tmp_path / "again")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "again" / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert f.metadata()["base_quantization"] == "gguf-q8_0"
    # and loaded on a plain base, the warning names the file type that matches it
    caplog.clear()
    FaceMoGLE(load_backbone("tiny").transformer, pipe.cfg.model).load_weights(tmp_path / "again")
    assert "quantized as gguf-q8_0; the base is loaded as none" in caplog.text
    assert "a Q8_0 GGUF file as pretrained_transformer matches it" in caplog.text


def test_bad_gguf_files_are_one_line(tmp_path, tiny_gguf, monkeypatch):
    def refused(path, match, spec=None):
        with pytest.raises(BackboneError, match=match) as err:
            load_backbone("tiny", pretrained_transformer=path, tiny_spec=spec)
        assert "\n" not in str(err.value)

    refused(tmp_path / "absent.gguf", "GGUF transformer file not found: .*absent.gguf")
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    refused(tmp_path / "model.safetensors", "model.safetensors is not a GGUF file")
    # a FLUX file of another size: the first tensor that differs is named, with both shapes
    refused(tiny_gguf, r"does not fit the transformer of .*: tensor 'img_in.weight' is 32×64, the config wants 64×64",
            spec=TinySpec(attention_head_dim=32, axes_dims_rope=[8, 12, 12]))
    # a FLUX file with more blocks than the config's: nothing of it is dropped silently
    refused(tiny_gguf, r"it holds tensor 'double_blocks.1.img_mod.lin.weight', which that transformer does not have",
            spec=TinySpec(num_layers=1))
    # a file cut short (an interrupted download)
    (tmp_path / "cut.gguf").write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    refused(tmp_path / "cut.gguf", r"cannot read GGUF file .*cut.gguf \(cut short or damaged")
    # not a FLUX.1 transformer at all
    writer = gguf.GGUFWriter(str(tmp_path / "other.gguf"), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((64, 32), np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    refused(tmp_path / "other.gguf", r"does not hold the FLUX.1 transformer of .*: it has no tensor 'img_in.weight'")
    # the gguf package missing
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    refused(tiny_gguf, r"needs the gguf package: pip install 'gguf>=0.10'")


def test_a_gguf_base_is_not_quantized_again(tiny_gguf):
    with pytest.raises(ConfigError, match="already quantized: model.quantize must be none with it"):
        load_config(None, ["pretrained=tiny", f"pretrained_transformer={tiny_gguf}", "model.quantize=int8"])
    with pytest.raises(QuantizationError, match="already quantized"):
        load_backbone("tiny", quantize="int8", pretrained_transformer=tiny_gguf)


def test_cli_names_a_missing_gguf_file_in_one_line(tmp_path):
    args = [sys.executable, str(ROOT / "inference.py"), "--mask", str(ROOT / "assets/examples/mask.png"),
            "--prompt", "A woman.", "--steps", "1", "--output", str(tmp_path / "x.png"),
            "--set", f"pretrained_transformer={tmp_path / 'flux1-dev-Q8_0.gguf'}"]
    bad = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "GGUF transformer file not found" in bad.stderr and not (tmp_path / "x.png").exists()


def test_training_on_a_gguf_base_updates_only_lora_and_mogle(tmp_path, tiny_gguf):
    from accelerate.state import AcceleratorState
    from safetensors import safe_open

    from face_mogle.data.synthetic import write_dataset
    from face_mogle.training.trainer import Trainer, TrainingError

    data = tmp_path / "data"
    write_dataset(data, 8, 64, seed=0, progress=False)
    base = [f"data.root={data}", f"train.runs_dir={tmp_path / 'runs'}", "data.size=32", "data.condition_size=32",
            "train.batch_size=2", "max_sequence_length=48", "train.sample_interval=0", "name=g",
            f"pretrained_transformer={tiny_gguf}", "train.optimizer.type=adamw", "train.optimizer.lr=0.01",
            'train.mixed_precision="no"', "train.save_interval=100", "train.max_steps=3"]
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer = Trainer(load_config(ROOT / "configs" / "tiny.yaml", base))
    assert quantized_scheme(trainer.backbone.transformer) == "gguf-q8_0"
    frozen = {n: p.detach().clone() for n, p in trainer.backbone.transformer.named_parameters() if "lora_" not in n}
    trainable = {n: p.detach().clone() for n, p in trainer.named_trainable.items()}
    losses = trainer.train()
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    after = dict(trainer.backbone.transformer.named_parameters())
    assert all(torch.equal(after[n].detach(), before) for n, before in frozen.items())  # the file's bytes stay
    assert all("lora_" in n or n.startswith("mogle.") for n in trainer.named_trainable)
    moved = [n for n, p in trainer.named_trainable.items() if not torch.equal(p.detach(), trainable[n])]
    assert any("lora_" in n for n in moved) and any(n.startswith("mogle.") for n in moved)
    with safe_open(str(tmp_path / "runs" / "g" / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert f.metadata()["base_quantization"] == "gguf-q8_0"
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(TrainingError, match="cannot come from the quantized GGUF file"):
        Trainer(load_config(ROOT / "configs" / "tiny.yaml", base + ["train.mode=base", "name=gb"]))
    AcceleratorState._reset_state(reset_partial_state=True)
