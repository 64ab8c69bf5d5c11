"""configs/official-sampler.yaml: the resolved settings are the official sampler's, and its global map
(`model.global_map: stored`) is the mask file as stored, pixel for pixel, for P, L and RGB files."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from face_mogle.config import load_config, valid_keys
from face_mogle.data.masks import condition_stack, condition_stack_torch, labels_from_stack, render_stored
from face_mogle.labels import PALETTE
from face_mogle.models.builder import load_backbone
from face_mogle.models.face_mogle import FaceMoGLE
from face_mogle.pipeline import FaceMoGLEPipeline, preset_overrides
from sampling_helpers import SIZE, draw_mask, make_run

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "official-sampler.yaml"
SHIPPED = ROOT / "checkpoints" / "face-mogle-tiny"

# What the authors' inference.py / test.py (XavierJiezou/Face-MoGLE) sample with, whatever the run:
# generate() with its defaults (28 steps, guidance 3.5, T5 max_sequence_length 512, condition_scale 1),
# no classifier-free guidance, the gate fed the scheduler's t in [0, 1000], the condition's VAE latents
# from latent_dist.sample(), local maps blanked by `local_mask[mask == i] = 255` on a PIL image, the
# global map Image.open(mask).convert("RGB"), and MoGLE() with per-token gating over all 20 experts.
OFFICIAL = {
    "sample.steps": 28, "sample.guidance": 3.5, "sample.max_sequence_length": 512, "sample.condition_scale": 1.0,
    "sample.cfg_scale": 1.0, "sample.text_cfg_scale": 1.0, "sample.mask_latent": "sample", "sample.local_maps": "blank",
    "model.gate_timestep_scale": 1000.0, "model.global_map": "stored", "model.scalar_gating": False, "model.experts": "all",
    "model.quantize": "none", "sample.text_only": "official",
    "model.identity.encoder": None,  # the official model has no identity condition
}
# Keys the official sampler takes from the run too (it reads config["model"] from the run's
# config.yaml; its MoGLE()/LoRA load refuses weights of other shapes), inputs of its command line
# (--size), training-only keys, and our own limit.
FROM_THE_RUN = {
    "model.num_experts", "model.expert_hidden_dim", "model.has_expert", "model.has_gating", "model.union_cond_attn",
    "model.latent_lora", "model.gate_global_prior", "model.lora.r", "model.lora.alpha", "model.lora.init",
    "model.lora.target_modules", "sample.size", "sample.max_size",
    "sample.offload",  # where the components wait between stages: the images do not change
    "sample.max_input_pixels",  # our bound on what a file may declare
    "model.identity.weights", "model.identity.num_tokens", "model.identity.embed_dim", "model.identity.entry",  # unused while the preset pins no identity
}
# A run that differs from the official sampler in every key the preset sets (and is guided).
EVERY_KEY_DIFFERENT = [
    "sample.steps=3", "sample.guidance=1.0", "sample.max_sequence_length=64", "sample.condition_scale=1.5",
    "sample.cfg_scale=2.0", "sample.text_cfg_scale=3.0", "sample.mask_latent=mode", "sample.local_maps=real",
    "model.gate_timestep_scale=1.0", "model.global_map=gray", "model.scalar_gating=true", "model.experts=local",
    "model.latent_lora=true", "model.union_cond_attn=false", "model.quantize=int8",
    "sample.text_only=base", "model.identity.encoder=synthfaces",
]


def resolved(pipe: FaceMoGLEPipeline) -> dict:
    """Every sample.* and model.* setting as the sampler will use it (guidance weights resolved)."""
    cfg = pipe.cfg
    out = {}
    for key in valid_keys():
        section, _, name = key.partition(".")
        if section in ("sample", "model"):
            node = getattr(cfg, section)
            for part in name.split("."):
                node = getattr(node, part)
            out[key] = node
    steps, guidance, condition_scale, _, cfg_scale, text_cfg_scale = pipe.settings(None, None, None, None, 1)
    out.update({"sample.steps": steps, "sample.guidance": guidance, "sample.condition_scale": condition_scale,
                "sample.cfg_scale": cfg_scale, "sample.text_cfg_scale": text_cfg_scale})
    return out


def test_every_sampling_key_is_decided():
    """A new sample.* or model.* key must be placed: set by the preset, or taken from the run."""
    keys = {k for k in valid_keys() if k.split(".")[0] in ("sample", "model")}
    assert keys == set(OFFICIAL) | FROM_THE_RUN and not set(OFFICIAL) & FROM_THE_RUN


def _check(run_pipe: FaceMoGLEPipeline, official_pipe: FaceMoGLEPipeline) -> None:
    run, official = resolved(run_pipe), resolved(official_pipe)
    assert {k: official[k] for k in OFFICIAL} == OFFICIAL
    assert {k: official[k] for k in FROM_THE_RUN} == {k: run[k] for k in FROM_THE_RUN}


def test_preset_gives_the_official_settings_on_a_guided_run(tmp_path):
    run = make_run(tmp_path / "guided", overrides=EVERY_KEY_DIFFERENT)
    ours = FaceMoGLEPipeline.from_run(run, device="cpu")
    assert ours.guidance_scales() == (2.0, 3.0)
    assert all(resolved(ours)[k] != OFFICIAL[k] for k in OFFICIAL)  # the run differs in every key
    _check(ours, FaceMoGLEPipeline.from_run(run, device="cpu", overrides=preset_overrides(PRESET)))


@pytest.mark.skipif(not (SHIPPED / "config.yaml").is_file(), reason="checkpoints/face-mogle-tiny/ is not shipped")
def test_preset_gives_the_official_settings_on_the_shipped_tiny_model():
    ours = FaceMoGLEPipeline.from_run(SHIPPED, device="cpu")
    assert ours.guidance_scales() == (2.0, 3.0)  # what made it 18-25 dB away from the official code
    _check(ours, FaceMoGLEPipeline.from_run(SHIPPED, device="cpu", overrides=preset_overrides(PRESET)))


def test_preset_gives_the_official_settings_on_the_default_config():
    def pipe(overrides):
        cfg = load_config(None, overrides)
        backbone = load_backbone("tiny")  # a model wraps its transformer in LoRA: one each
        return FaceMoGLEPipeline(backbone, FaceMoGLE(backbone.transformer, cfg.model), cfg)

    _check(pipe([]), pipe(preset_overrides(PRESET)))


# ---------------------------------------------------------------------------------------------
# The mask as stored


def mask_files(folder: Path, size: int = 40) -> dict[str, Path]:
    """One mask in every stored form: P with the CelebAMask-HQ palette (MM-CelebA-HQ's), P with a
    palette of its own, L (what save_label_map, SynthFaces and our examples write), palette-coloured
    RGB, grey RGB, and RGBA."""
    labels = draw_mask(3, size)
    own = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    files = {}

    def save(name, img):
        files[name] = folder / f"{name}.png"
        img.save(files[name])

    for name, palette in (("P", PALETTE), ("P-own-palette", own)):
        img = Image.frombytes("P", (size, size), labels.tobytes())
        img.putpalette(palette.tobytes())
        save(name, img)
    save("L", Image.fromarray(labels, "L"))
    save("RGB", Image.fromarray(PALETTE[labels], "RGB"))
    save("RGB-grey", Image.fromarray(np.repeat(labels[..., None], 3, axis=2), "RGB"))
    save("RGBA", Image.fromarray(np.concatenate([PALETTE[labels], np.full((size, size, 1), 200, np.uint8)], 2), "RGBA"))
    return files


def test_render_stored_is_the_file_as_stored(tmp_path):
    files = mask_files(tmp_path)
    assert {Image.open(f).mode for f in files.values()} == {"P", "L", "RGB", "RGBA"}
    for name, f in files.items():
        truth = np.asarray(Image.open(f).convert("RGB"))
        np.testing.assert_array_equal(render_stored(f), truth, err_msg=name)
        np.testing.assert_array_equal(render_stored(str(f)), truth, err_msg=name)
        np.testing.assert_array_equal(render_stored(Image.open(f)), truth, err_msg=name)
        # resized: the same pixels as the labels' nearest-neighbour resize
        for size in (24, 64):
            big = render_stored(f, size)
            np.testing.assert_array_equal(big, np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.NEAREST)))
    # a palette file with the CelebAMask-HQ palette is the palette rendering; a grey file is grey;
    # a file with a palette of its own shows its own colours
    labels = draw_mask(3, 40)
    np.testing.assert_array_equal(render_stored(files["P"]), PALETTE[labels])
    np.testing.assert_array_equal(render_stored(files["L"]), np.repeat(labels[..., None], 3, axis=2))
    assert not np.array_equal(render_stored(files["P-own-palette"]), PALETTE[labels])
    # an array (no file) renders as the L file save_label_map writes of it
    np.testing.assert_array_equal(render_stored(labels), render_stored(files["L"]))
    np.testing.assert_array_equal(render_stored(torch.from_numpy(labels), 24), render_stored(files["L"], 24))


def test_render_stored_refuses_what_load_label_map_refuses(tmp_path):
    from face_mogle.data.masks import MaskError

    off = tmp_path / "off.png"
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8) + np.array([0, 1, 2], np.uint8), "RGB").save(off)
    with pytest.raises(MaskError, match="off.png.*not in the CelebAMask-HQ palette"):
        render_stored(off)
    with pytest.raises(MaskError, match="outside 0..18"):
        render_stored(np.full((4, 4), 30, np.uint8))
    with pytest.raises(MaskError, match="mask file not found"):
        render_stored(tmp_path / "nope.png")


def test_stored_stack_needs_the_rendering():
    labels = draw_mask(1, 16)
    rgb = PALETTE[labels]
    np.testing.assert_array_equal(condition_stack(labels, "stored", stored=rgb), condition_stack(labels, "palette"))
    batch = condition_stack_torch(torch.from_numpy(np.stack([labels, labels])), "stored",
                                  stored=torch.from_numpy(np.stack([rgb, rgb])))
    torch.testing.assert_close(batch[1], torch.from_numpy(condition_stack(labels, "palette")))
    with pytest.raises(ValueError, match="needs the mask as stored"):
        condition_stack_torch(torch.from_numpy(labels), "stored")  # training's label arrays: refused
    with pytest.raises(ValueError, match="only it takes one"):
        condition_stack(labels, "palette", stored=rgb)
    with pytest.raises(ValueError, match="must be uint8"):
        condition_stack(labels, "stored", stored=rgb[:8])
    with pytest.raises(ValueError, match="global_mode=None"):
        labels_from_stack(condition_stack(labels, "palette"), "stored")


def test_sampler_feeds_the_file_as_stored_as_its_global_map(tiny_run, tmp_path, monkeypatch):
    """What the VAE encodes as map 0 under the preset is Image.open(f).convert("RGB") / 255, for
    P, L and RGB files, through the pipeline's own mask loading (also test.py's and the app's)."""
    import face_mogle.pipeline as pipeline_module

    files = mask_files(tmp_path, SIZE)
    seen = []
    real = pipeline_module.encode_distribution

    def spy(vae, pixels):
        seen.append(pixels.detach().cpu().clone())
        return real(vae, pixels)

    monkeypatch.setattr(pipeline_module, "encode_distribution", spy)
    official = FaceMoGLEPipeline.from_run(tiny_run, device="cpu", overrides=preset_overrides(PRESET))
    ours = FaceMoGLEPipeline.from_run(tiny_run, device="cpu")
    names = list(files)
    out = official(["a face"] * len(names), [files[n] for n in names], seeds=0, steps=1, batch_size=len(names))
    assert len(out.images) == len(names)
    stack = seen[0].view(len(names), 20, 3, SIZE, SIZE)
    for i, name in enumerate(names):
        truth = np.asarray(Image.open(files[name]).convert("RGB")).transpose(2, 0, 1)
        got = (stack[i, 0] * 255).round().to(torch.uint8).numpy()
        np.testing.assert_array_equal(got, truth, err_msg=name)
        assert not stack[i, 1:].any()  # the official sampler's blank local maps
    # an array renders grey (as its L file); our default paints palette colours whatever the file
    seen.clear()
    official("a face", draw_mask(3, SIZE), seeds=0, steps=1)
    np.testing.assert_array_equal((seen[0][0] * 255).round().to(torch.uint8).numpy(),
                                  np.asarray(Image.open(files["L"]).convert("RGB")).transpose(2, 0, 1))
    seen.clear()
    ours("a face", files["L"], seeds=0, steps=1)
    np.testing.assert_array_equal((seen[0][0] * 255).round().to(torch.uint8).numpy(),
                                  PALETTE[draw_mask(3, SIZE)].transpose(2, 0, 1))
    # the demo hands the pipeline the uploaded file itself, so it renders as stored there too
    from test_cli_sampling import load_script

    app = load_script("app")
    for name in ("P-own-palette", "L"):
        seen.clear()
        face, _, status = app.Demo(official, {}).generate(str(files[name]), None, "a face", 0, 1, 3.5, 1.0, SIZE)
        assert face is not None, status
        np.testing.assert_array_equal((seen[0][0] * 255).round().to(torch.uint8).numpy(),
                                      np.asarray(Image.open(files[name]).convert("RGB")).transpose(2, 0, 1))


def test_training_refuses_the_stored_global_map(tmp_path):
    from face_mogle.data.cache import CacheError, build_cache
    from face_mogle.training.trainer import Trainer, TrainingError

    cfg = load_config(None, ["pretrained=tiny", "model.global_map=stored", f"train.runs_dir={tmp_path}",
                             f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(TrainingError, match="'stored' .* is for sampling only.*use palette"):
        Trainer(cfg)
    with pytest.raises(CacheError, match="'stored' .* is for sampling only"):
        build_cache(cfg)
    assert not any(tmp_path.iterdir())  # refused before anything was written
