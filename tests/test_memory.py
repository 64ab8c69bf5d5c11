"""The memory planner: exact sizes against real tiny models (also quantized by the installed
torchao / bitsandbytes), the published FLUX.1-dev sizes on the meta device, the activation
formulas against the CPU allocator, and its one-line errors."""

import copy
from pathlib import Path

import pytest
import torch

from face_mogle.config import ModelConfig, load_config
from face_mogle.memory import PlannerError, plan
from face_mogle.memory.activations import Streams, Width, inference_bytes, training_bytes
from face_mogle.memory.components import component_size, linear_weight_bytes, meta_backbone, trainable_size

ROOT = Path(__file__).resolve().parents[1]
FLUX = ROOT / "tests" / "fixtures" / "flux1-dev-configs"


def real_bytes(module) -> int:
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def stored_bytes(t) -> int:
    """Bytes of a tensor or of the plain tensors inside a tensor subclass (torchao)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        return sum(stored_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_tiny_component_bytes_equal_the_real_models(tiny_backbone, dtype):
    meta = meta_backbone("tiny")
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        real = getattr(tiny_backbone, name)
        size = component_size(name, meta[name], dtype)
        assert size.params == sum(p.numel() for p in real.parameters())
        if name == "text_encoder_2" and dtype == torch.float16:
            continue  # loading keeps `wo` in float32: the next test
        assert size.bytes["none"] == real_bytes(copy.deepcopy(real).to(dtype)), name


def test_t5_keeps_wo_in_float32_under_float16(tmp_path, tiny_backbone):
    """transformers keeps T5's `wo` in float32 when loading in float16: the planner counts that."""
    from transformers import T5EncoderModel

    tiny_backbone.text_encoder_2.save_pretrained(tmp_path / "t5")
    for dtype in (torch.float16, torch.bfloat16):
        real = T5EncoderModel.from_pretrained(tmp_path / "t5", torch_dtype=dtype)
        meta = meta_backbone("tiny")["text_encoder_2"]
        assert component_size("text_encoder_2", meta, dtype).bytes["none"] == real_bytes(real), dtype


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_torchao_quantized_transformer_bytes_are_exact(scheme):
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    from face_mogle.models.builder import TinySpec, build_tiny_backbone

    tr = build_tiny_backbone(TinySpec()).transformer.to(torch.bfloat16)
    quantize_(tr, Int8WeightOnlyConfig() if scheme == "int8" else Float8WeightOnlyConfig())
    real = sum(stored_bytes(t) for t in [*tr.parameters(), *tr.buffers()])
    predicted = component_size("transformer", meta_backbone("tiny")["transformer"], torch.bfloat16).bytes[scheme]
    assert predicted == real


def test_nf4_layout_matches_bitsandbytes():
    """bitsandbytes 0.50 quantizes NF4 on a CPU too: the stored data, absmax and code are what we count."""
    import bitsandbytes.functional as bnbf

    for out_f, in_f in ((48, 96), (7, 9), (64, 130)):
        q, state = bnbf.quantize_4bit(torch.randn(out_f, in_f, dtype=torch.bfloat16), blocksize=64, quant_type="nf4")
        real = stored_bytes(q) + stored_bytes(state.absmax) + stored_bytes(state.code)
        assert linear_weight_bytes(out_f, in_f, "nf4", 2) == real


def test_flux_dev_sizes_on_the_meta_device_are_the_published_ones():
    meta = meta_backbone(str(FLUX))
    tr = component_size("transformer", meta["transformer"], torch.bfloat16)
    t5 = component_size("text_encoder_2", meta["text_encoder_2"], torch.bfloat16)
    assert round(tr.params / 1e9, 2) == 11.90 and round(tr.bytes["none"] / 1e9, 1) == 23.8
    assert round(t5.params / 1e9, 2) == 4.76 and round(t5.bytes["none"] / 1e9, 1) == 9.5
    assert round(component_size("text_encoder", meta["text_encoder"], torch.bfloat16).bytes["none"] / 1e9, 2) == 0.25
    assert round(component_size("vae", meta["vae"], torch.bfloat16).bytes["none"] / 1e9, 2) == 0.17
    # int8 halves the quantized Linear weights (plus a scale per row); NF4 is about a quarter
    assert 0.49 < tr.bytes["int8"] / tr.bytes["none"] < 0.51
    assert 0.27 < tr.bytes["nf4"] / tr.bytes["none"] < 0.29


def _train_one_step(opt_name, params):
    from face_mogle.config import Config, OptimizerConfig, TrainConfig
    from face_mogle.training.trainer import make_optimizer

    cfg = Config(train=TrainConfig(optimizer=OptimizerConfig(type=opt_name, lr=1e-3)))
    optimizer, _ = make_optimizer(cfg, params)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    seen, total = set(), 0
    for state in optimizer.state.values():
        for name, v in state.items():
            if torch.is_tensor(v) and name != "step":  # torch AdamW's step counters stay on the CPU
                key = v.untyped_storage().data_ptr()
                if key not in seen:
                    seen.add(key)
                    total += v.numel() * v.element_size()
    return total


@pytest.mark.parametrize("opt_name", ["adamw", "adamw8bit", "prodigy"])
def test_adapter_and_optimizer_bytes_equal_the_real_ones(opt_name):
    from face_mogle.models.builder import TinySpec, build_tiny_backbone
    from face_mogle.models.face_mogle import FaceMoGLE

    cfg = ModelConfig()
    model = FaceMoGLE(build_tiny_backbone(TinySpec()).transformer, cfg)
    model.freeze_base()
    params = [p.data.float().requires_grad_() for p in model.trainable_parameters()]
    params = [torch.nn.Parameter(p) for p in params]
    # keep LoRA B at zero, as at the start of training (Prodigy stores a scalar p0 for it)
    planned = trainable_size(meta_backbone("tiny")["transformer"], cfg, torch.float32)
    assert planned.trainable_params == sum(p.numel() for p in params)
    assert planned.lora_params == sum(p.numel() for n, p in model.transformer.named_parameters() if "lora_" in n)
    real = _train_one_step(opt_name, params)
    assert planned.optimizer_bytes(opt_name) == real


def _allocator_peak(fn) -> int:
    """Peak of the CPU allocator while `fn` runs (torch.profiler's memory events, in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def _step(heads, head_dim, n, t, dtype, mode):
    from face_mogle.encoding import image_ids, text_ids
    from face_mogle.models.builder import TinySpec, build_tiny_backbone
    from face_mogle.models.face_mogle import FaceMoGLE
    from face_mogle.models.transformer import three_stream_forward

    axes = {16: [4, 6, 6], 32: [8, 12, 12]}[head_dim]
    tr = build_tiny_backbone(TinySpec(num_layers=2, num_single_layers=2, num_attention_heads=heads,
                                      attention_head_dim=head_dim, axes_dims_rope=axes)).transformer
    model = FaceMoGLE(tr, ModelConfig())
    model.freeze_base()
    tr.to(dtype)
    for p in tr.parameters():  # the trainer's layout: a frozen base in `dtype`, LoRA in float32
        if p.requires_grad:
            p.data = p.data.float()
    tr.gradient_checkpointing = mode == "checkpointing"
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1, n, 64, generator=g).to(dtype), torch.randn(1, n, 64, generator=g).to(dtype)
    txt, pooled = torch.randn(1, t, 32, generator=g).to(dtype), torch.randn(1, 32, generator=g).to(dtype)
    ts, guidance = torch.rand(1), torch.ones(1)
    ids_img, ids_txt = image_ids(int(n**0.5) * 8, 8), text_ids(t)
    if mode == "sample":
        for p in tr.parameters():
            p.data = p.data.to(dtype)  # the sampler keeps LoRA in the weights dtype

    def run():
        if mode == "sample":
            with torch.no_grad():
                three_stream_forward(tr, x, txt, pooled, ts, ids_img, ids_txt, guidance, condition_tokens=c)
            return
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = three_stream_forward(tr, x, txt, pooled, ts, ids_img, ids_txt, guidance, condition_tokens=c)
        out.float().square().mean().backward()

    run()  # warm-up: lazily made buffers are not the step's
    tr.zero_grad(set_to_none=True)
    peak = _allocator_peak(run)
    grads = sum(p.numel() * 4 for p in tr.parameters() if p.requires_grad)
    return peak, grads


@pytest.mark.parametrize("mode", ["sample", "train", "checkpointing"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_estimate_is_within_25_percent_of_the_cpu_allocator(mode, dtype):
    heads, head_dim, n, t = 2, 16, 64, 32
    measured, grads = _step(heads, head_dim, n, t, dtype, mode)
    e = 4 if dtype == torch.float32 else 2
    s, w = Streams(t, n, n), Width(heads, head_dim, 2, 2)
    if mode == "sample":
        predicted = inference_bytes(s, w, 1, e)
    else:  # the LoRA gradients are allocated during the backward too
        predicted = training_bytes(s, w, 1, e, checkpointing=mode == "checkpointing") + grads
    assert abs(predicted / measured - 1) < 0.25, (predicted, measured)


def test_plan_settings_and_the_fastest_fit():
    cfg = load_config(ROOT / "configs" / "face-mogle.yaml", [f"pretrained={FLUX}"])
    p = plan(cfg, "sample", gpu_gb=24)
    resident, staged = p.find(quantize="none", placement="resident"), p.find(quantize="none", placement="staged")
    assert resident.peak > staged.peak > p.find(quantize="nf4", placement="staged").peak
    assert p.find(quantize="nf4", placement="leaf").peak < p.find(quantize="nf4", placement="model").peak
    # everything resident holds every component's weights at once
    weights = sum(c.bytes["none"] for c in p.components.values())
    assert resident.peak > weights
    assert not resident.fits and p.best is not None and p.best.fits
    assert p.best.time == min(s.time for s in p.settings if s.fits)
    assert p.current is resident  # the config's own setting: no quantization, nothing offloaded

    t = plan(cfg, "train", gpu_gb=24, batch_size=1)
    ckpt = t.find(quantize="nf4", optimizer="adamw8bit", checkpointing="on", encoders="cached")
    assert ckpt.peak < t.find(quantize="nf4", optimizer="adamw8bit", checkpointing="off", encoders="cached").peak
    assert ckpt.peak < t.find(quantize="none", optimizer="adamw", checkpointing="on", encoders="cached").peak


def test_bad_input_is_one_line(tmp_path):
    cfg = load_config(ROOT / "configs" / "face-mogle.yaml", [f"pretrained={FLUX}"])
    with pytest.raises(PlannerError, match=r"size 500 is not a multiple of the token size 16 px"):
        plan(cfg, "sample", size=500)
    with pytest.raises(PlannerError, match="FLUX backbone folder not found"):
        plan(cfg, "sample", pretrained=str(tmp_path / "nowhere"))
    (tmp_path / "flux" / "transformer").mkdir(parents=True)
    with pytest.raises(PlannerError, match=r"backbone config not found: .*transformer/config.json"):
        plan(cfg, "sample", pretrained=str(tmp_path / "flux"))


def test_cli_prints_the_tables(capsys):
    from face_mogle.memory.__main__ import main

    assert main(["--config", str(ROOT / "configs" / "tiny.yaml"), "--mode", "train", "--gpu_gb", "16"]) == 0
    out = capsys.readouterr().out
    assert "| transformer |" in out and "← config" in out and "fastest setting that fits" in out
    assert main(["--config", str(ROOT / "configs" / "tiny.yaml"), "--size", "60"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: size 60 is not a multiple") and "\n" not in err
