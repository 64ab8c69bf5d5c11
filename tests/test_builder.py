import pytest
import torch
from diffusers import FluxPipeline

from face_mogle.models.builder import BackboneError, TinySpec, build_tiny_backbone, load_backbone


def outputs(bb):
    with torch.no_grad():
        pipe = bb.pipeline()
        emb, pooled, _ = pipe.encode_prompt("She has red hair.", prompt_2=None, max_sequence_length=24, device="cpu")
        img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        lat = bb.vae.encode(img).latent_dist.mean
        dec = bb.vae.decode(lat).sample
        tokens = (32 // bb.token_pixels) ** 2
        ids = FluxPipeline._prepare_latent_image_ids(1, 32 // bb.token_pixels, 32 // bb.token_pixels, "cpu", torch.float32)
        x = torch.randn(1, tokens, bb.transformer.config.in_channels, generator=torch.Generator().manual_seed(1))
        v = bb.transformer(hidden_states=x, encoder_hidden_states=emb, pooled_projections=pooled,
                           timestep=torch.tensor([0.5]), img_ids=ids, txt_ids=torch.zeros(24, 3),
                           guidance=torch.tensor([3.5])).sample
    return emb, pooled, lat, dec, v


def test_tiny_is_flux_shaped_and_deterministic():
    a, b = build_tiny_backbone(), build_tiny_backbone()
    assert a.latent_channels == 16 and a.transformer.config.in_channels == 64
    assert a.vae_scale_factor == 4 and a.token_pixels == 8
    for x, y in zip(outputs(a), outputs(b)):
        assert torch.equal(x, y)
    assert not torch.equal(outputs(a)[-1], outputs(build_tiny_backbone(TinySpec(seed=1)))[-1])


def test_tiny_save_load_identical(tmp_path):
    bb = build_tiny_backbone()
    bb.save(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "model_index.json").is_file()
    loaded = load_backbone(tmp_path / "tiny")
    assert loaded.source == str(tmp_path / "tiny")
    for (name, a), (_, b) in zip(bb.transformer.state_dict().items(), loaded.transformer.state_dict().items()):
        assert torch.equal(a, b), name
    *same, v = outputs(bb)
    *same_loaded, v_loaded = outputs(loaded)
    for x, y in zip(same, same_loaded):
        assert torch.equal(x, y)
    # equal weights; memory-mapped tensors may take another SIMD path: last-bit differences only
    assert (v - v_loaded).abs().max() <= 1e-6
    # the same folder is a FluxPipeline that samples
    pipe = FluxPipeline.from_pretrained(str(tmp_path / "tiny"), local_files_only=True)
    image = pipe("a face", height=32, width=32, num_inference_steps=2, max_sequence_length=16, output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_load_in_dtype(tmp_path):
    build_tiny_backbone().save(tmp_path / "tiny")
    bb = load_backbone(tmp_path / "tiny", dtype="bfloat16")
    assert bb.transformer.dtype == torch.bfloat16 and bb.text_encoder_2.dtype == torch.bfloat16


def test_missing_folder_is_one_clear_line(tmp_path):
    with pytest.raises(BackboneError) as err:
        load_backbone(tmp_path / "FLUX.1-dev")
    msg = str(err.value)
    assert "FLUX.1-dev" in msg and "put the diffusers-layout" in msg and "\n" not in msg


def test_missing_component_is_named(tmp_path):
    build_tiny_backbone().save(tmp_path / "tiny")
    import shutil

    shutil.rmtree(tmp_path / "tiny" / "text_encoder_2")
    with pytest.raises(BackboneError, match=r"missing text_encoder_2/ \(T5-XXL text encoder\)"):
        load_backbone(tmp_path / "tiny")
    (tmp_path / "tiny" / "text_encoder_2").mkdir()
    with pytest.raises(BackboneError, match="cannot load T5-XXL text encoder"):
        load_backbone(tmp_path / "tiny")


def test_word_tokenizer_knows_every_synthfaces_caption_word():
    from face_mogle.data.synthetic import render
    from face_mogle.models.builder import build_t5_tokenizer

    tok = build_t5_tokenizer("words")
    unk = tok.unk_token_id
    for i in range(60):
        for caption in render((0, i), 64).captions:
            ids = tok(caption).input_ids
            assert unk not in ids, (caption, tok.convert_ids_to_tokens(ids))
            assert ids[-1] == tok.eos_token_id and len(ids) <= 48
    # case and spacing do not matter; an unknown word is <unk>, not an error
    assert tok("Blond  HAIR.").input_ids == tok("blond hair .").input_ids
    assert tok("zebra").input_ids == [unk, tok.eos_token_id]
    with pytest.raises(ValueError, match="t5_vocab"):
        build_t5_tokenizer("bytes")


def test_unread_words_names_unknown_and_cut_words():
    from types import SimpleNamespace

    from face_mogle.encoding import unread_words
    from face_mogle.models.builder import build_t5_tokenizer

    words = SimpleNamespace(tokenizer_2=build_t5_tokenizer("words"))
    assert unread_words(words, "She has blue eyes and red lips.", 48) == []
    assert unread_words(words, "", 48) == []
    # the words the demo vocabulary lacks, as the user typed them, once each, in order
    assert unread_words(words, "She has an Open mouth, and blue eyes.", 48) == ["an", "Open", "mouth"]
    # a window of 4 keeps 3 word tokens and </s> (FLUX truncates to max_sequence_length)
    assert unread_words(words, "she has blue eyes and red lips", 4) == ["eyes", "and", "red", "lips"]
    assert unread_words(words, "she has blue", 4) == []
    # a per-character vocabulary: a word made of several unknown characters is one entry
    chars = SimpleNamespace(tokenizer_2=build_t5_tokenizer("chars"))
    assert unread_words(chars, "blue eyes", 48) == []
    unknown = [c for c in "\u00e9\u00f8\u4e2d\u6587" if chars.tokenizer_2(c, add_special_tokens=False).input_ids
               == [chars.tokenizer_2.unk_token_id]]
    assert len(unknown) == 4
    assert unread_words(chars, "blue \u4e2d\u6587 eyes \u00e9", 48) == ["\u4e2d\u6587", "\u00e9"]


def test_word_level_backbone_saves_and_loads(tmp_path):
    bb = build_tiny_backbone(TinySpec(t5_vocab="words"))
    bb.save(tmp_path / "tiny")
    loaded = load_backbone(tmp_path / "tiny")
    text = "She has blond wavy hair."
    assert loaded.tokenizer_2(text).input_ids == bb.tokenizer_2(text).input_ids
    assert len(bb.tokenizer_2(text).input_ids) == 7
