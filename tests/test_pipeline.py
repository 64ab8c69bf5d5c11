"""FaceMoGLEPipeline: batched sampling equals one-at-a-time, modes, gate time scale, expert maps."""

import numpy as np
import pytest
import torch
from PIL import Image

from face_mogle.data.masks import MaskError
from face_mogle.labels import PALETTE
from face_mogle.pipeline import GLOBAL_EXPERT_COLOUR, FaceMoGLEPipeline, SamplingError, expert_map
from sampling_helpers import SIZE, STEPS, draw_mask, make_run


def pixels(images):
    return np.stack([np.asarray(im).astype(np.int16) for im in images])


PROMPTS = ["She has blond hair.", "", "He wears a hat.", "She has blond hair."]


def test_batch_equals_single_calls(pipe):
    masks = [draw_mask(0), draw_mask(1), None, draw_mask(3)]
    seeds = [11, 12, 13, 14]
    batch = pipe(PROMPTS, masks, seeds=seeds, batch_size=4)
    singles = [pipe(p, m, [s], batch_size=1).images[0] for p, m, s in zip(PROMPTS, masks, seeds)]
    uneven = pipe(PROMPTS, masks, seeds=seeds, batch_size=3)
    assert [im.size for im in batch.images] == [(SIZE, SIZE)] * 4
    assert np.abs(pixels(batch.images) - pixels(singles)).max() <= 1
    assert np.abs(pixels(uneven.images) - pixels(singles)).max() <= 1
    # the same seed gives the same image wherever it sits; another seed another image
    again = pipe([PROMPTS[3], PROMPTS[0]], [masks[3], masks[0]], seeds=[14, 11], batch_size=2)
    assert np.abs(pixels(again.images) - pixels([singles[3], singles[0]])).max() <= 1
    other = pipe(PROMPTS[0], masks[0], [99]).images[0]
    assert np.abs(pixels([other]) - pixels([singles[0]])).max() > 10
    assert batch.settings["modes"] == ["mask+text", "mask-only", "text-only", "mask+text"]


def test_modes_run_and_differ(pipe):
    m = draw_mask(0)
    both = pipe("She has blond hair.", m, [5]).images[0]
    mask_only = pipe("", m, [5]).images[0]
    text_only = pipe("She has blond hair.", None, [5]).images[0]
    a, b, c = pixels([both]), pixels([mask_only]), pixels([text_only])
    # beyond the <= 1 rounding noise that batching may cause
    assert np.abs(a - b).max() > 1 and np.abs(a - c).max() > 1 and np.abs(b - c).max() > 1
    # another mask changes the image too, and so does the mask strength
    hair = np.full((SIZE, SIZE), 13, np.uint8)
    assert np.abs(a - pixels(pipe("She has blond hair.", hair, [5]).images)).max() > 1
    assert np.abs(a - pixels(pipe("She has blond hair.", m, [5], condition_scale=3.0).images)).max() > 1


def test_mask_inputs_agree(pipe, tmp_path):
    lab = draw_mask(2, size=48)  # resized (nearest) to the image size
    path = tmp_path / "m.png"
    Image.fromarray(lab, "L").save(path)
    rgb = Image.fromarray(PALETTE[lab], "RGB")
    outs = [pipe("a face", m, [3]).images[0] for m in (str(path), Image.open(path), lab, torch.from_numpy(lab), rgb)]
    ref = pixels(outs[:1])
    for out in outs[1:]:
        assert np.array_equal(pixels([out]), ref)


def test_encoders_run_once(pipe, monkeypatch):
    import face_mogle.pipeline as P

    seen_prompts, mask_batches = [], []
    real_prompts, real_dist = P.encode_prompts, P.encode_distribution
    monkeypatch.setattr(P, "encode_prompts", lambda bb, prompts, *a, **k: seen_prompts.append(list(prompts)) or real_prompts(bb, prompts, *a, **k))
    monkeypatch.setattr(P, "encode_distribution", lambda vae, x, *a, **k: mask_batches.append(x.shape[0]) or real_dist(vae, x, *a, **k))
    prompts = ["a", "b", "a", "a", "c"]
    pipe(prompts, draw_mask(0), seeds=[1, 2, 3, 4, 5], steps=4, batch_size=2)
    flat = [p for call in seen_prompts for p in call]
    assert sorted(flat) == ["a", "b", "c"]  # every distinct prompt encoded exactly once
    assert mask_batches == [2 * 20, 2 * 20, 1 * 20]  # once per image, not per step


def spy_forward(pipe, monkeypatch):
    """Record what each denoising step feeds the transformer and the MoGLE gate."""
    import face_mogle.models.face_mogle as FM

    log = {"gate_t": [], "t": [], "noisy": [], "text": [], "pooled": []}
    real = FM.three_stream_forward

    def stream(tr, hidden, text, pooled, timestep, *a, **k):
        log["t"].append(timestep.clone()); log["noisy"].append(hidden.clone())
        log["text"].append(text.clone()); log["pooled"].append(pooled.clone())
        return real(tr, hidden, text, pooled, timestep, *a, **k)

    monkeypatch.setattr(FM, "three_stream_forward", stream)
    gating = pipe.model.mogle.gating
    if gating is not None:
        real_gate = gating.forward
        monkeypatch.setattr(gating, "forward", lambda g, n, t, *a: log["gate_t"].append(t.clone()) or real_gate(g, n, t, *a))
    return log


def test_gate_timestep_scale_changes_only_the_gate_input(tiny_run, monkeypatch, tmp_path):
    logs, images = [], []
    for scale in (1.0, 1000.0):
        p = FaceMoGLEPipeline.from_run(tiny_run, device="cpu", overrides=[f"model.gate_timestep_scale={scale}"])
        with monkeypatch.context() as mp:
            log = spy_forward(p, mp)
            images.append(p(["a face", ""], draw_mask(1), seeds=[7, 8], batch_size=2).images)
        logs.append(log)
    one, official = logs
    assert len(one["gate_t"]) == STEPS
    for i in range(STEPS):
        assert torch.allclose(official["gate_t"][i], one["gate_t"][i] * 1000)
        assert 0 < one["gate_t"][i].max() <= 1
        assert torch.equal(official["t"][i], one["t"][i])  # the transformer's time is unchanged
    assert torch.equal(official["noisy"][0], one["noisy"][0])  # same starting noise
    assert torch.equal(official["text"][0], one["text"][0]) and torch.equal(official["pooled"][0], one["pooled"][0])
    assert np.abs(pixels(images[0]) - pixels(images[1])).max() > 0  # the gate saw another time

    # Without a gating network the switch has nothing to act on: identical images.
    run = make_run(tmp_path / "nogate", overrides=["model.has_gating=false"])
    outs = []
    for scale in (1.0, 1000.0):
        p = FaceMoGLEPipeline.from_run(run, device="cpu", overrides=[f"model.gate_timestep_scale={scale}"])
        outs.append(pixels(p(["a face", ""], draw_mask(1), seeds=[7, 8], batch_size=2).images))
        assert p(["a face"], draw_mask(1), [7], return_gates=True).expert_maps is None
    assert np.array_equal(outs[0], outs[1])


def test_gates_and_expert_map(pipe):
    out = pipe(["a face", "a face"], [draw_mask(0), None], seeds=[1, 2], batch_size=2, return_gates=True)
    n = (SIZE // pipe.token_pixels) ** 2
    assert len(out.gate_weights) == 2 and out.gate_weights[0].shape == (n, 20)
    assert np.allclose(out.gate_weights[0].sum(1), 1, atol=1e-4)
    assert [m.size for m in out.expert_maps] == [(SIZE, SIZE)] * 2
    # one chosen step instead of the mean
    step0 = pipe("a face", draw_mask(0), [1], return_gates=True, gate_step=0)
    assert not np.allclose(step0.gate_weights[0], out.gate_weights[0])
    # the colours: global expert light grey, local expert e = palette colour of class e-1
    w = torch.zeros(4, 20)
    w[0, 0] = w[1, 2] = w[2, 14] = w[3, 19] = 1
    img = np.asarray(expert_map(w, 8))
    assert tuple(img[0, 0]) == GLOBAL_EXPERT_COLOUR
    assert tuple(img[0, 7]) == tuple(PALETTE[1])
    assert tuple(img[7, 0]) == tuple(PALETTE[13])
    assert tuple(img[7, 7]) == tuple(PALETTE[18])


def test_timesteps_follow_the_resolution_shift(pipe):
    t_small, s_small = pipe.timesteps(8, 16)
    t_large, s_large = pipe.timesteps(8, 4096)
    assert len(t_small) == 8 and len(s_small) == 9 and s_small[-1] == 0 and s_small[0] == pytest.approx(1.0)
    assert torch.all(s_small[:-1] > s_small[1:])
    assert torch.allclose(t_small, s_small[:-1], atol=1e-6)
    assert torch.all(s_large[1:-1] > s_small[1:-1])  # more tokens, more shift towards noise


def test_sampled_mask_latents_are_per_image(tiny_run):
    p = FaceMoGLEPipeline.from_run(tiny_run, device="cpu", overrides=["sample.mask_latent=sample"])
    masks, seeds = [draw_mask(0), draw_mask(1), draw_mask(2)], [4, 5, 6]
    batch = p("a face", masks, seeds=seeds, batch_size=3).images
    singles = [p("a face", m, [s]).images[0] for m, s in zip(masks, seeds)]
    assert np.abs(pixels(batch) - pixels(singles)).max() <= 1


def one_step_velocity(pipe):
    """velocity(prompt, mask, **guidance) of one step, at fixed noise and t = 0.7."""
    from face_mogle.encoding import encode_prompts

    noise, gen = pipe.initial_noise(3, SIZE)
    t = torch.tensor([0.7])

    def velocity(prompt, mask, **scales):
        label = None if mask is None else pipe.load_mask(mask, SIZE)
        with torch.inference_mode():
            t5, pooled = encode_prompts(pipe.backbone, [prompt], pipe.cfg.sample.max_sequence_length)
            cond = pipe.conditions(t5, pooled, [label], [gen], SIZE, pipe.cfg.sample.guidance, 1.0, **scales)
            return pipe.velocity(noise, t, cond)

    return velocity


def test_cfg_scale_guides_each_step_away_from_no_prompt_and_no_mask(pipe, monkeypatch):
    import face_mogle.models.face_mogle as FM

    calls = []
    real = FM.three_stream_forward
    monkeypatch.setattr(FM, "three_stream_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = pipe("She has blond hair.", draw_mask(0), [5])
    assert len(calls) == STEPS and plain.settings["cfg_scale"] == 1.0  # off: one pass per step
    calls.clear()
    guided = pipe("She has blond hair.", draw_mask(0), [5], cfg_scale=3.0)
    assert len(calls) == 2 * STEPS and guided.settings["cfg_scale"] == 3.0
    assert np.abs(pixels(plain.images) - pixels(guided.images)).max() > 1
    # a batch equals single calls under guidance too
    masks, seeds = [draw_mask(1), None], [6, 7]
    batch = pipe(["a face", "He wears a hat."], masks, seeds=seeds, batch_size=2, cfg_scale=2.0).images
    singles = [pipe(p, m, [s], cfg_scale=2.0).images[0] for p, m, s in zip(["a face", "He wears a hat."], masks, seeds)]
    assert np.abs(pixels(batch) - pixels(singles)).max() <= 1

    # One step against a reference: the conditional velocity and the velocity of text-free,
    # mask-free sampling ("" and no mask), computed apart and mixed by hand.
    velocity, mask = one_step_velocity(pipe), draw_mask(0)
    v_c, v_u = velocity("She has blond hair.", mask), velocity("", None)
    v = velocity("She has blond hair.", mask, cfg_scale=2.5)
    assert (v_c - v_u).abs().max() > 1e-3
    assert torch.allclose(v, v_u + 2.5 * (v_c - v_u), atol=1e-5)


def test_text_cfg_scale_gives_the_prompt_its_own_weight(pipe, monkeypatch):
    import face_mogle.models.face_mogle as FM

    calls = []
    real = FM.three_stream_forward
    monkeypatch.setattr(FM, "three_stream_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    # the prompt weight equal to the cfg scale (or unset) is the joint guidance: two passes, same image
    joint = pipe("She has blond hair.", draw_mask(0), [5], cfg_scale=2.0)
    assert len(calls) == 2 * STEPS and joint.settings["text_cfg_scale"] == 2.0
    same = pipe("She has blond hair.", draw_mask(0), [5], cfg_scale=2.0, text_cfg_scale=2.0)
    assert pixels(same.images).tolist() == pixels(joint.images).tolist()
    calls.clear()
    # a separate prompt weight with a mask: a third pass (the mask without the prompt)
    dual = pipe("She has blond hair.", draw_mask(0), [5], cfg_scale=2.0, text_cfg_scale=3.0)
    assert len(calls) == 3 * STEPS and (dual.settings["cfg_scale"], dual.settings["text_cfg_scale"]) == (2.0, 3.0)
    assert np.abs(pixels(dual.images) - pixels(joint.images)).max() > 1
    # without a mask the mask-only prediction is the unconditional one: two passes, the prompt's weight alone
    calls.clear()
    text_only = pipe("She has blond hair.", None, [5], cfg_scale=2.0, text_cfg_scale=3.0)
    assert len(calls) == 2 * STEPS
    assert pixels(text_only.images).tolist() == pixels(pipe("She has blond hair.", None, [5], cfg_scale=3.0).images).tolist()
    # a config's prompt weight applies with the config's cfg scale; a cfg scale given alone sets both
    pipe.cfg.sample.text_cfg_scale = 3.0
    try:
        assert pipe.guidance_scales() == (1.0, 3.0) and pipe.guidance_scales(2.0) == (2.0, 2.0)
        assert pipe.guidance_scales(1.0) == (1.0, 1.0) and pipe.guidance_scales(2.0, 4.0) == (2.0, 4.0)
        assert pipe.guidance_scales(None, 4.0) == (1.0, 4.0)
    finally:
        pipe.cfg.sample.text_cfg_scale = None
    # a batch mixing both modes equals single calls
    masks, seeds = [draw_mask(1), None], [6, 7]
    batch = pipe(["a face", "He wears a hat."], masks, seeds=seeds, batch_size=2, cfg_scale=2.0, text_cfg_scale=3.0).images
    singles = [pipe(p, m, [s], cfg_scale=2.0, text_cfg_scale=3.0).images[0]
               for p, m, s in zip(["a face", "He wears a hat."], masks, seeds)]
    assert np.abs(pixels(batch) - pixels(singles)).max() <= 1

    # One step against a reference: the three velocities computed apart, mixed by hand.
    velocity, mask = one_step_velocity(pipe), draw_mask(0)
    v_c, v_m, v_u = velocity("She has blond hair.", mask), velocity("", mask), velocity("", None)
    v = velocity("She has blond hair.", mask, cfg_scale=2.0, text_cfg_scale=3.5)
    v_mask_off = velocity("She has blond hair.", mask, cfg_scale=1.0, text_cfg_scale=3.5)
    assert (v_c - v_m).abs().max() > 1e-3 and (v_m - v_u).abs().max() > 1e-3
    assert torch.allclose(v, v_u + 2.0 * (v_m - v_u) + 3.5 * (v_c - v_m), atol=1e-5)
    assert torch.allclose(v_mask_off, v_m + 3.5 * (v_c - v_m), atol=1e-5)  # no mask guidance: no v_u pass


def test_bad_inputs(pipe, tmp_path):
    with pytest.raises(SamplingError, match="multiple of 8"):
        pipe("a", None, [0], size=36)
    with pytest.raises(SamplingError, match="steps"):
        pipe("a", None, [0], steps=0)
    with pytest.raises(SamplingError, match="condition scale"):
        pipe("a", None, [0], condition_scale=0)
    for bad in (0.5, float("inf")):
        with pytest.raises(SamplingError, match="cfg scale must be a finite number >= 1"):
            pipe("a", None, [0], cfg_scale=bad)
        with pytest.raises(SamplingError, match="text cfg scale must be a finite number >= 1"):
            pipe("a", None, [0], text_cfg_scale=bad)
    with pytest.raises(SamplingError, match="2 prompts and 3 masks"):
        pipe(["a", "b"], [None, None, None], [0, 1, 2])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(MaskError, match="bad.png"):
        pipe("a", str(bad), [0])
    with pytest.raises(MaskError, match="outside 0..18"):
        pipe("a", np.full((8, 8), 40, np.uint8), [0])
    with pytest.raises(SamplingError, match="run folder not found"):
        FaceMoGLEPipeline.from_run(tmp_path / "nope")


def test_official_sampler_preset_sets_all_four_and_blanks_local_maps(tiny_run):
    from pathlib import Path

    from face_mogle.encoding import encode_images
    from face_mogle.pipeline import preset_overrides

    preset = Path(__file__).resolve().parents[1] / "configs" / "official-sampler.yaml"
    official = FaceMoGLEPipeline.from_run(tiny_run, device="cpu", overrides=preset_overrides(preset))
    cfg = official.cfg
    assert (cfg.model.gate_timestep_scale, cfg.model.global_map, cfg.sample.mask_latent, cfg.sample.local_maps) == \
        (1000.0, "stored", "sample", "blank")
    # an array has no file: "stored" renders it as its grey L file would
    ours = FaceMoGLEPipeline.from_run(tiny_run, device="cpu", overrides=["sample.mask_latent=sample", "model.global_map=gray"])
    labels = draw_mask(3, SIZE)
    gens = lambda: [torch.Generator().manual_seed(0)]  # noqa: E731
    blank, real = official.encode_masks([labels], SIZE, gens()), ours.encode_masks([labels], SIZE, gens())
    empty = encode_images(ours.backbone.vae, torch.zeros(1, 3, SIZE, SIZE))[0]
    # the global map is the same; every local map is the empty map's latent (here its mode: the
    # posterior sample differs per map only through the generator's stream)
    assert torch.equal(blank[0, 0], real[0, 0])
    present = [c for c in range(19) if (labels == c).any()]
    assert present and not torch.allclose(real[0, 1 + present[0]], blank[0, 1 + present[0]])
    mode = FaceMoGLEPipeline.from_run(tiny_run, device="cpu", overrides=preset_overrides(preset) + ["sample.mask_latent=mode"])
    blank_mode = mode.encode_masks([labels], SIZE, gens())
    for c in range(19):
        torch.testing.assert_close(blank_mode[0, 1 + c], empty)
    with pytest.raises(SamplingError, match="preset not found"):
        preset_overrides("configs/nope.yaml")


def test_preset_alias_bomb_is_refused(tmp_path):
    from face_mogle.pipeline import preset_overrides

    preset = tmp_path / "bomb.yaml"
    items = ["&a0 [" + ", ".join(["lol"] * 9) + "]"] + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 6)]
    preset.write_text("model:\n  lora:\n    target_modules: [" + ", ".join(items) + "]\n")
    with pytest.raises(SamplingError, match=r"bomb.yaml is not readable YAML: .*through its aliases"):
        preset_overrides(preset)


@pytest.fixture(scope="module")
def base_pipe(tmp_path_factory):
    """A run with LoRA on the image tokens too (so text-only sampling through Face-MoGLE differs from
    the base DiT even without condition tokens) that samples text-only images with the base DiT."""
    run = make_run(tmp_path_factory.mktemp("base") / "run", overrides=["model.latent_lora=true", "sample.text_only=base"])
    return FaceMoGLEPipeline.from_run(run, device="cpu")


def plain_base_sampler(pipe, prompt, seed, cfg_scale):
    """Text-to-image with diffusers' own forward of a fresh, LoRA-free tiny transformer: Euler steps
    on the pipeline's noise and timesteps, v_u + w·(v_c − v_u) with v_u from the empty prompt."""
    from face_mogle.encoding import encode_prompts, image_ids, text_ids
    from face_mogle.models.builder import load_backbone

    transformer = load_backbone("tiny").transformer.eval()
    latents, _ = pipe.initial_noise(seed, SIZE)
    timesteps, sigmas = pipe.timesteps(STEPS, latents.shape[1])
    with torch.inference_mode():
        embeds = [encode_prompts(pipe.backbone, [p], pipe.cfg.sample.max_sequence_length) for p in (prompt, "")]
        guidance = torch.full((1,), pipe.cfg.sample.guidance) if transformer.config.guidance_embeds else None

        def v(t5, pooled, t):
            return transformer(hidden_states=latents, timestep=t.expand(1), guidance=guidance, pooled_projections=pooled,
                               encoder_hidden_states=t5, txt_ids=text_ids(t5.shape[1]), img_ids=image_ids(SIZE, pipe.token_pixels),
                               return_dict=False)[0]

        for i in range(STEPS):
            v_c, v_u = v(*embeds[0], timesteps[i]), v(*embeds[1], timesteps[i])
            latents = latents + (sigmas[i + 1] - sigmas[i]).item() * (v_u + cfg_scale * (v_c - v_u))
        return pipe.decode(latents, SIZE)[0]


def test_text_only_base_is_the_plain_base_dit(base_pipe):
    prompt = "She has blond hair."
    for cfg_scale in (1.0, 2.5):
        ours = base_pipe(prompt, None, [8], cfg_scale=cfg_scale)
        assert ours.settings["text_only"] == "base"
        assert np.abs(pixels(ours.images) - pixels([plain_base_sampler(base_pipe, prompt, 8, cfg_scale)])).max() <= 1
    # the official behaviour (blank maps through Face-MoGLE, LoRA on) is another image
    base_pipe.cfg.sample.text_only = "official"
    try:
        official = base_pipe(prompt, None, [8], cfg_scale=2.5).images
        masked = base_pipe(prompt, draw_mask(0), [8], cfg_scale=2.0, text_cfg_scale=3.0).images
    finally:
        base_pipe.cfg.sample.text_only = "base"
    assert np.abs(pixels(official) - pixels(ours.images)).max() > 10
    # an image with a mask is sampled by Face-MoGLE under either setting
    same = base_pipe(prompt, draw_mask(0), [8], cfg_scale=2.0, text_cfg_scale=3.0).images
    assert pixels(same).tolist() == pixels(masked).tolist()


def test_text_only_base_batches_mixing_masks_equal_single_calls(base_pipe):
    prompts = ["a face", "He wears a hat.", "", "She has blond hair."]
    masks, seeds = [draw_mask(1), None, draw_mask(2), None], [6, 7, 8, 9]
    for scales in ({}, {"cfg_scale": 2.0, "text_cfg_scale": 3.0}):
        out = base_pipe(prompts, masks, seeds=seeds, batch_size=4, return_gates=True, **scales)
        singles = [base_pipe(p, m, [s], **scales).images[0] for p, m, s in zip(prompts, masks, seeds)]
        assert np.abs(pixels(out.images) - pixels(singles)).max() <= 1
        assert out.gate_weights is None  # the base DiT has no gate
    # the part with masks keeps its gates when the batch has no text-only image
    assert base_pipe(prompts[0], masks[0], [6], return_gates=True).gate_weights is not None
    with pytest.raises(SamplingError, match="without a mask only"):
        base_pipe.conditions(None, None, [draw_mask(0)], [None], SIZE, 1.0, 1.0, base=True)
