import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel

from face_mogle.config import LoraConfig, ModelConfig
from face_mogle.models.face_mogle import FaceMoGLE
from face_mogle.models.transformer import StreamOptions, add_lora, load_lora, save_lora, three_stream_forward


def tiny_transformer(seed=0):
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=[4, 6, 6],
    ).eval()


def inputs(batch=2, side=4, n_txt=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img_ids = FluxPipeline._prepare_latent_image_ids(batch, side, side, "cpu", torch.float32)
    return dict(
        hidden_states=torch.randn(batch, side * side, 64, generator=g),
        encoder_hidden_states=torch.randn(batch, n_txt, 32, generator=g),
        pooled_projections=torch.randn(batch, 32, generator=g),
        timestep=torch.rand(batch, generator=g),
        img_ids=img_ids,
        txt_ids=torch.zeros(n_txt, 3),
        guidance=torch.full((batch,), 3.5),
    )


def randomize_lora(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@torch.no_grad()
def test_no_condition_equals_diffusers_forward():
    tr = tiny_transformer()
    x = inputs()
    ref = tr(**x).sample
    ours = three_stream_forward(tr, **x)
    assert (ours - ref).abs().max() <= 1e-5


@torch.no_grad()
def test_lora_scoping_without_condition():
    tr = tiny_transformer()
    x = inputs()
    base = tr(**x).sample
    add_lora(tr, LoraConfig())
    randomize_lora(tr, 1)
    with_lora = tr(**x).sample  # diffusers applies LoRA to every token
    assert (with_lora - base).abs().max() > 1e-3
    # latent_lora off: image/text tokens use the frozen weights bit for bit
    assert torch.equal(three_stream_forward(tr, **x, options=StreamOptions(latent_lora=False)),
                       three_stream_forward(tiny_transformer(), **x))
    assert (three_stream_forward(tr, **x) - base).abs().max() <= 1e-5
    # latent_lora on: LoRA acts on image tokens as in diffusers
    assert (three_stream_forward(tr, **x, options=StreamOptions(latent_lora=True)) - with_lora).abs().max() <= 1e-5


@torch.no_grad()
def test_condition_tokens_as_extra_image_tokens():
    """At t=0 with LoRA on every stream, condition tokens are image tokens with repeated ids."""
    tr = tiny_transformer()
    add_lora(tr, LoraConfig())
    randomize_lora(tr, 2)
    x = inputs()
    x["timestep"] = torch.zeros(2)
    cond = torch.randn_like(x["hidden_states"])
    ours = three_stream_forward(tr, **x, condition_tokens=cond, options=StreamOptions(latent_lora=True))
    y = dict(x, hidden_states=torch.cat([x["hidden_states"], cond], 1), img_ids=torch.cat([x["img_ids"]] * 2))
    ref = tr(**y).sample[:, : cond.shape[1]]
    assert (ours - ref).abs().max() <= 1e-5


@torch.no_grad()
def test_lora_reaches_image_only_through_condition_tokens():
    x = inputs()
    cond = torch.randn_like(x["hidden_states"])
    a, b = tiny_transformer(), tiny_transformer()
    for tr, seed in ((a, 3), (b, 4)):
        add_lora(tr, LoraConfig())
        randomize_lora(tr, seed)
    # blocked image↔condition attention: LoRA weights cannot matter, bit for bit
    blocked = StreamOptions(union_cond_attn=False)
    out_a = three_stream_forward(a, **x, condition_tokens=cond, options=blocked)
    assert torch.equal(out_a, three_stream_forward(b, **x, condition_tokens=cond, options=blocked))
    assert (out_a - three_stream_forward(a, **x)).abs().max() <= 1e-6
    # union attention: the condition tokens (and so LoRA) do change the image
    union_a = three_stream_forward(a, **x, condition_tokens=cond)
    union_b = three_stream_forward(b, **x, condition_tokens=cond)
    assert (union_a - union_b).abs().max() > 1e-4
    assert (union_a - out_a).abs().max() > 1e-4


@torch.no_grad()
def test_image_projections_are_base_weights():
    tr = tiny_transformer()
    add_lora(tr, LoraConfig())
    randomize_lora(tr, 5)
    seen = {}
    q = tr.transformer_blocks[0].attn.to_q
    q.base_layer.register_forward_hook(lambda m, i, o: seen.setdefault("base", []).append(o.clone()))
    q.register_forward_hook(lambda m, i, o: seen.setdefault("lora", []).append(o.clone()))
    x = inputs()
    three_stream_forward(tr, **x, condition_tokens=torch.randn_like(x["hidden_states"]))
    # image tokens: only the base layer ran; condition tokens: the LoRA-wrapped layer ran
    assert len(seen["base"]) == 2 and len(seen["lora"]) == 1
    img_in = tr.x_embedder.base_layer(x["hidden_states"])
    assert not torch.equal(tr.x_embedder(x["hidden_states"]), img_in)


@torch.no_grad()
def test_condition_scale_bias():
    tr = tiny_transformer()
    x = inputs()
    cond = torch.randn_like(x["hidden_states"])
    one = three_stream_forward(tr, **x, condition_tokens=cond)
    assert torch.allclose(three_stream_forward(tr, **x, condition_tokens=cond, options=StreamOptions(condition_scale=1.0)), one)
    strong = three_stream_forward(tr, **x, condition_tokens=cond, options=StreamOptions(condition_scale=4.0))
    assert (strong - one).abs().max() > 1e-4
    # a vanishing scale approaches the blocked attention
    tiny = three_stream_forward(tr, **x, condition_tokens=cond, options=StreamOptions(condition_scale=1e-12))
    blocked = three_stream_forward(tr, **x, condition_tokens=cond, options=StreamOptions(union_cond_attn=False))
    assert (tiny - blocked).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="condition_scale"):
        three_stream_forward(tr, **x, condition_tokens=cond, options=StreamOptions(condition_scale=0.0))


def test_gradient_checkpointing_same_gradients():
    x = inputs()
    cond = torch.randn_like(x["hidden_states"])
    grads = []
    for ckpt in (False, True):
        tr = tiny_transformer()
        add_lora(tr, LoraConfig())
        randomize_lora(tr, 6)
        tr.gradient_checkpointing = ckpt
        tr.train()
        for n, p in tr.named_parameters():
            p.requires_grad_("lora_" in n)
        three_stream_forward(tr, **x, condition_tokens=cond).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in tr.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5)
    # with latent_lora off, image-only LoRA layers get gradients only via condition tokens; all have some
    assert any("x_embedder.lora_B" in n for n in grads[0])


def test_lora_file_is_diffusers_format(tmp_path):
    tr = tiny_transformer()
    add_lora(tr, LoraConfig())
    randomize_lora(tr, 7)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_lora(tr, path)
    state = FluxPipeline.lora_state_dict(str(path))
    state = state[0] if isinstance(state, tuple) else state
    assert "transformer.x_embedder.lora_A.weight" in state
    assert "transformer.transformer_blocks.0.attn.to_q.lora_B.weight" in state
    assert "transformer.single_transformer_blocks.1.proj_out.lora_A.weight" in state
    assert not any("ff_context" in k or "add_q_proj" in k or k.startswith("transformer.proj_out") for k in state)
    # 2 double blocks × 6 + 2 single blocks × 6 + x_embedder = 25 layers × (A, B)
    assert len(state) == 50
    fresh = tiny_transformer()
    add_lora(fresh, LoraConfig())
    load_lora(fresh, path)
    x = inputs()
    cond = torch.randn_like(x["hidden_states"])
    with torch.no_grad():
        assert torch.equal(three_stream_forward(tr, **x, condition_tokens=cond),
                           three_stream_forward(fresh, **x, condition_tokens=cond))
    wrong_rank = tiny_transformer()
    add_lora(wrong_rank, LoraConfig(r=8))
    with pytest.raises(ValueError, match="model.lora.r"):
        load_lora(wrong_rank, path)


def test_face_mogle_save_load(tmp_path):
    cfg = ModelConfig()
    model = FaceMoGLE(tiny_transformer(), cfg)
    randomize_lora(model.transformer, 8)
    model.freeze_base()
    trainable = {id(p) for p in model.trainable_parameters()}
    assert all(p.requires_grad == (id(p) in trainable) for p in model.parameters())
    x = inputs()
    masks = torch.randn(2, 20, x["hidden_states"].shape[1], 64)
    args = (x["hidden_states"], x["timestep"], masks, x["encoder_hidden_states"], x["pooled_projections"],
            x["txt_ids"], x["img_ids"], x["guidance"])
    model.save_weights(tmp_path)
    other = FaceMoGLE(tiny_transformer(), cfg)
    other.load_weights(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(*args), other(*args))
        # the gate's time input is what gate_timestep changes, and nothing else
        a = model(*args, gate_timestep=x["timestep"] * 1000)
        assert (a - model(*args)).abs().max() > 0


def test_every_trainable_parameter_gets_a_gradient():
    """DDP needs it; LoRA that can only touch discarded condition outputs is not trained."""
    model = FaceMoGLE(tiny_transformer(), ModelConfig())
    randomize_lora(model.transformer, 9)
    model.freeze_base()
    model.train()
    x = inputs()
    masks = torch.randn(2, 20, x["hidden_states"].shape[1], 64)
    out = model(x["hidden_states"], x["timestep"], masks, x["encoder_hidden_states"], x["pooled_projections"],
                x["txt_ids"], x["img_ids"], x["guidance"])
    out.square().mean().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable), [
        n for n, p in trainable if p.grad is None or p.grad.abs().sum() == 0]
    frozen_lora = [n for n, p in model.named_parameters() if "lora_" in n and not p.requires_grad]
    assert sorted(frozen_lora) == sorted(
        f"transformer.single_transformer_blocks.1.{m}.lora_{ab}.default.weight" for m in ("proj_mlp", "proj_out", "attn.to_q") for ab in "AB")


def test_lora_target_that_names_no_layer_is_refused():
    from face_mogle.config import ConfigError

    tr = tiny_transformer()
    # one typo among good names: peft alone would skip it silently and train fewer layers
    with pytest.raises(ConfigError, match=r"'transformer_blocks\.\*\.attn\.to_qq' names no linear layer"):
        add_lora(tr, LoraConfig(target_modules=["x_embedder", "transformer_blocks.*.attn.to_qq"]))
    add_lora(tr, LoraConfig(target_modules=["x_embedder", "single_transformer_blocks.*.proj_out"]))
    assert any("lora_A" in n for n, _ in tr.named_parameters())
