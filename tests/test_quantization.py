"""Low-memory paths: a weight-only quantized base (torchao int8/fp8 on the CPU; NF4 needs CUDA), staged
sampling with offloading, and the 8-bit optimizer."""

import contextlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from face_mogle.models.builder import load_backbone
from face_mogle.models.quantization import QuantizationError, compute_dtype, quantized_scheme
from face_mogle.pipeline import FaceMoGLEPipeline, SamplingError

from sampling_helpers import draw_mask, make_run

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "face-mogle-tiny"


def psnr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = ((a - b) ** 2).mean()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_quantized_backbone_holds_the_transformer_and_t5_quantized(scheme):
    bb = load_backbone("tiny", quantize=scheme)
    assert bb.quantize == scheme
    assert quantized_scheme(bb.transformer) == scheme and quantized_scheme(bb.text_encoder_2) == scheme
    # the small components stay plain, in the run's dtype
    assert quantized_scheme(bb.text_encoder) == "none" and quantized_scheme(bb.vae) == "none"
    assert bb.vae.dtype == torch.float32 and bb.dtype == torch.bfloat16 == compute_dtype(scheme, torch.float32)
    # the quantized weights are the plain ones, rounded: every layer within its quantization step
    plain = load_backbone("tiny")
    q = dict(bb.transformer.named_parameters())
    for name, p in plain.transformer.named_parameters():
        if name.endswith("attn.to_q.weight"):
            deq = q[name].dequantize().float()
            err = (deq - p).abs().max() / p.abs().max()
            assert 0 < err < (0.01 if scheme == "int8" else 0.15), (name, err)


def test_encoders_can_load_apart_from_the_transformer():
    """`encoders_device` (training from a full cache): the VAE, CLIP and T5 go there, unquantized, and the
    transformer stays quantized on its device ("meta" stands in for the CPU beside a GPU)."""
    bb = load_backbone("tiny", quantize="int8", encoders_device="meta")
    assert quantized_scheme(bb.transformer) == "int8" and bb.transformer.device.type == "cpu"
    for part in (bb.vae, bb.text_encoder, bb.text_encoder_2):
        assert quantized_scheme(part) == "none" and all(p.device.type == "meta" for p in part.parameters())


def test_bad_schemes_are_one_line():
    with pytest.raises(QuantizationError, match="unknown quantization 'int4'"):
        load_backbone("tiny", quantize="int4")
    if not torch.cuda.is_available():
        with pytest.raises(QuantizationError, match="nf4 .* only on a CUDA GPU"):
            load_backbone("tiny", quantize="nf4")


def test_int8_sampling_of_the_shipped_model_stays_close():
    """The shipped model (trained on a plain base) sampled on an int8 base: the same faces, within the
    floors measured on it (BENCHMARKS.md, "Quantized base")."""
    prompt = (ROOT / "assets" / "examples" / "prompt.txt").read_text().strip()
    kw = dict(seeds=[42, 43], steps=8)
    plain = FaceMoGLEPipeline.from_run(SHIPPED)([prompt], [str(ROOT / "assets/examples/mask.png"), None], **kw)
    int8 = FaceMoGLEPipeline.from_run(SHIPPED, quantize="int8")
    out = int8([prompt], [str(ROOT / "assets/examples/mask.png"), None], **kw)
    assert out.settings["quantize"] == "int8" and plain.settings["quantize"] == "none"
    values = [psnr(a, b) for a, b in zip(out.images, plain.images)]
    assert all(25 < v < math.inf for v in values), values  # close, and really quantized


def test_lora_file_records_its_base_and_a_mismatch_is_named(tmp_path, caplog):
    run = make_run(tmp_path / "run", overrides=["model.quantize=int8"])
    # make_run saves from a plain base: the file says so
    with safe_open(str(run / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert f.metadata()["base_quantization"] == "none"
    pipe = FaceMoGLEPipeline.from_run(run)
    assert "trained on a base quantized as none; the base is loaded as int8" in caplog.text
    pipe.model.save_weights(tmp_path / "again")
    with safe_open(str(tmp_path / "again" / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert f.metadata()["base_quantization"] == "int8"


def test_staged_sampling_runs_each_component_only_while_it_is_placed(tiny_run):
    """With offloading, each stage brings only its components: T5 never runs beside the transformer.
    On the CPU the moves are no-ops, so the order of use is checked by hooks, and the images must
    equal the unstaged ones (offload none) exactly."""
    reference = FaceMoGLEPipeline.from_run(tiny_run)
    masks = [draw_mask(0, 32), None, draw_mask(1, 32)]
    want = reference(["a face", "b face", ""], masks, seeds=[1, 2, 3], batch_size=2, cfg_scale=2.0, text_cfg_scale=3.0)

    pipe = FaceMoGLEPipeline.from_run(tiny_run, overrides=["sample.offload=model"])
    placed, seen = [], []

    @contextlib.contextmanager
    def recording(*names):
        placed.append(set(names))
        try:
            yield
        finally:
            placed.pop()

    pipe.placed = recording
    bb = pipe.backbone
    for name, module in (("text_encoder", bb.text_encoder), ("text_encoder_2", bb.text_encoder_2),
                         ("vae", bb.vae.encoder), ("vae", bb.vae.decoder), ("transformer", bb.transformer.x_embedder)):
        module.register_forward_pre_hook(lambda m, a, name=name: seen.append((name, set().union(*placed))))
    got = pipe(["a face", "b face", ""], masks, seeds=[1, 2, 3], batch_size=2, cfg_scale=2.0, text_cfg_scale=3.0)
    assert {n for n, _ in seen} == {"text_encoder", "text_encoder_2", "vae", "transformer"}
    assert all(name in active and (name != "transformer" or active == {"transformer"}) for name, active in seen)
    assert all(("text_encoder_2" not in active) or "transformer" not in active for _, active in seen)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got.images, want.images))
    assert got.settings["offload"] == "model"


def test_leaf_offload_needs_a_gpu(tiny_run):
    if torch.cuda.is_available():
        pytest.skip("on a GPU leaf offloading runs (bench/memory.py measures it)")
    with pytest.raises(SamplingError, match="needs a CUDA device"):
        FaceMoGLEPipeline.from_run(tiny_run, overrides=["sample.offload=leaf"])


def test_training_on_an_int8_base_updates_only_lora_and_mogle(tmp_path):
    from accelerate.state import AcceleratorState

    from face_mogle.config import load_config
    from face_mogle.data.synthetic import write_dataset
    from face_mogle.training.trainer import Trainer, TrainingError

    AcceleratorState._reset_state(reset_partial_state=True)
    data = tmp_path / "data"
    write_dataset(data, 12, 64, seed=0, progress=False)
    base = [f"data.root={data}", f"train.runs_dir={tmp_path / 'runs'}", "data.size=32", "data.condition_size=32",
            "train.batch_size=4", "max_sequence_length=48", "train.sample_interval=0", "name=q",
            "model.quantize=int8", "train.optimizer.type=adamw", "train.optimizer.lr=0.01",
            'train.mixed_precision="no"', "train.save_interval=100"]
    trainer = Trainer(load_config(ROOT / "configs" / "tiny.yaml", base + ["train.max_steps=12"]))
    assert quantized_scheme(trainer.backbone.transformer) == "int8"
    frozen = {n: p.detach().dequantize().clone() if hasattr(p, "dequantize") else p.detach().clone()
              for n, p in trainer.backbone.transformer.named_parameters() if "lora_" not in n}
    losses = trainer.train()
    assert np.mean(losses[-4:]) < np.mean(losses[:4])  # it learns
    after = dict(trainer.backbone.transformer.named_parameters())
    for n, before in frozen.items():
        now = after[n].detach()
        now = now.dequantize() if hasattr(now, "dequantize") else now
        assert torch.equal(now, before), n  # the quantized base never moves
    assert all(p.dtype == torch.float32 for p in trainer.named_trainable.values())
    assert all("lora_" in n or n.startswith("mogle.") for n in trainer.named_trainable)
    lora = safe_open(str(tmp_path / "runs" / "q" / "pytorch_lora_weights.safetensors"), "pt")
    assert lora.metadata()["base_quantization"] == "int8"
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(TrainingError, match="cannot be quantized"):
        Trainer(load_config(ROOT / "configs" / "tiny.yaml", base + ["train.mode=base", "name=qb"]))
    AcceleratorState._reset_state(reset_partial_state=True)


def test_adamw8bit_resumes_exactly(tmp_path):
    from accelerate.state import AcceleratorState

    from face_mogle.config import load_config
    from face_mogle.data.synthetic import write_dataset
    from face_mogle.training.trainer import Trainer

    data = tmp_path / "data"
    write_dataset(data, 12, 64, seed=0, progress=False)

    def cfg(runs, steps):
        return load_config(ROOT / "configs" / "tiny.yaml", [
            f"data.root={data}", f"train.runs_dir={runs}", "data.size=32", "data.condition_size=32",
            "train.batch_size=2", "max_sequence_length=48", "train.sample_interval=0", "name=t",
            "train.optimizer.type=adamw8bit", "train.optimizer.lr=0.01", f"train.max_steps={steps}",
            "train.save_interval=2", "model.lora.r=64", "model.lora.alpha=64"])

    def run(runs, steps, resume=None):
        AcceleratorState._reset_state(reset_partial_state=True)
        t = Trainer(cfg(runs, steps), resume=resume)
        return t, t.train()

    straight, losses = run(tmp_path / "a", 4)
    # rank 64 makes LoRA matrices of >= 4,096 elements: bitsandbytes holds their state in 8 bits
    states = [straight.optimizer.state[p] for p in straight.named_trainable.values()]
    assert any(s.get("state1") is not None and s["state1"].dtype == torch.uint8 for s in states)
    _, first = run(tmp_path / "b", 2)
    _, second = run(tmp_path / "b", 4, resume="latest")
    assert first + second == losses
    wa = load_file(str(tmp_path / "a" / "t" / "checkpoints" / "step-4" / "trainable.safetensors"))
    wb = load_file(str(tmp_path / "b" / "t" / "checkpoints" / "step-4" / "trainable.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cli_quantize_and_offload(tmp_path):
    """inference.py --quantize int8 records it in the sidecar; a scheme this machine cannot run is one line."""
    out = tmp_path / "q.png"
    args = [sys.executable, str(ROOT / "inference.py"), "--mask", str(ROOT / "assets/examples/mask.png"),
            "--prompt", "A woman with red hair.", "--steps", "2", "--output", str(out)]
    ok = subprocess.run(args + ["--quantize", "int8", "--offload", "model"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["quantize"] == "int8" and record["offload"] == "model" and record["dtype"] == "bfloat16"
    if not torch.cuda.is_available():
        bad = subprocess.run(args + ["--quantize", "nf4"], capture_output=True, text=True, cwd=ROOT)
        assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0
        assert "nf4 (bitsandbytes) loads only on a CUDA GPU" in bad.stderr
