"""The latent/text cache: cached inputs equal uncached ones, dedup, resumable builds, staleness, CLI."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from face_mogle import encoding
from face_mogle.config import load_config
from face_mogle.data import cache as cache_mod
from face_mogle.data.batch import cached_batch_inputs, encode_batch
from face_mogle.data.cache import CacheError, CachedFaceDataset, build_cache, cache_identity, open_cache
from face_mogle.data.dataset import FaceDataset, collate
from face_mogle.data.masks import condition_stack_torch, load_label_map
from face_mogle.labels import NUM_CLASSES, NUM_MAPS

REPO = Path(__file__).resolve().parents[1]
SIZE, NUM, SHARD = 32, 12, 5  # 12 samples → shards of 5, 5, 2


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from face_mogle.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synthfaces"), NUM, SIZE, seed=1, progress=False)


def make_cfg(root, cache_dir, *extra):
    return load_config(REPO / "configs" / "tiny.yaml", [
        f"data.root={root}", f"data.cache_dir={cache_dir}", f"data.size={SIZE}", f"data.condition_size={SIZE}",
        "max_sequence_length=32", "data.drop_text_prob=0.4", "data.drop_image_prob=0.3", *extra,
    ])


@pytest.fixture(scope="module")
def built(root, tiny_backbone, tmp_path_factory):
    """A complete cache of all 12 samples."""
    cfg = make_cfg(root, tmp_path_factory.mktemp("cache") / "full")
    build_cache(cfg, "both", batch_size=4, backbone=tiny_backbone, shard_size=SHARD, progress=False, log=lambda m: None)
    return cfg


def cache_files(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if not p.name.startswith(".")}


# ---------------------------------------------------------------------------------------------
# Equivalence


def test_cached_inputs_equal_uncached(built, tiny_backbone):
    cfg = copy.deepcopy(built)
    cfg.data.drop_mask_prob = 0.3  # whole-mask dropout too: the global map becomes the empty map
    cache = open_cache(cfg, tiny_backbone, "both")
    plain = FaceDataset.from_config(cfg.data, "train", seed=5)
    cached = CachedFaceDataset.from_config(cfg, cache, "train", seed=5)
    assert cached.ids == plain.ids
    for ds in (plain, cached):
        ds.set_epoch(2)
    a = collate([plain[i] for i in range(len(plain))])
    b = collate([cached[i] for i in range(len(cached))])
    # same (seed, epoch, id) choices: captions and dropouts, both exercised here
    assert a["caption"] == b["caption"] and torch.equal(a["drop_maps"], b["drop_maps"])
    assert "" in a["caption"] and a["drop_maps"][:, 1:].any()
    whole = a["drop_maps"][:, 0]
    assert whole.any() and not whole.all() and a["drop_maps"][whole].all()
    for sample in (False, True):
        u = encode_batch(a, tiny_backbone, cfg, torch.Generator().manual_seed(0), sample=sample)
        c = cached_batch_inputs(b, cached.vae_config, torch.Generator().manual_seed(0), sample=sample)
        n = (SIZE // tiny_backbone.token_pixels) ** 2
        assert c["x0"].shape == (len(plain), n, 64) and c["mask_latents"].shape == (len(plain), NUM_MAPS, n, 64)
        assert c["prompt_embeds"].shape == (len(plain), 32, 32) and c["pooled_embeds"].shape == (len(plain), 32)
        for key in u:
            assert u[key].shape == c[key].shape and u[key].dtype == c[key].dtype, key
            # float32 storage: equal up to batch-composition rounding in the encoders
            torch.testing.assert_close(c[key], u[key], atol=1e-4, rtol=1e-4, msg=key)
    # sampling draws noise: not the means, with the posterior's spread
    mean = cached_batch_inputs(b, cached.vae_config, sample=False)["mask_latents"]
    drawn = cached_batch_inputs(b, cached.vae_config, torch.Generator().manual_seed(1))["mask_latents"]
    spread = (drawn - mean).std()
    assert 0 < spread and torch.isfinite(spread)


def test_test_split_reads_first_caption_without_dropout(built, tiny_backbone):
    cache = open_cache(built, tiny_backbone, "test")
    ds = CachedFaceDataset.from_config(built, cache, "test")
    item = ds[0]
    assert item["caption"] == cache.captions(item["id"])[0] and not item["drop_maps"].any()


def test_empty_map_is_stored_once(built, root, tiny_backbone):
    cache_dir = Path(built.data.cache_dir)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["ids"] == list(range(NUM)) and [len(s["ids"]) for s in manifest["shards"]] == [5, 5, 2]
    shared = load_file(cache_dir / "shared.safetensors")
    assert shared["empty_map_mean"].shape == (16, SIZE // 4, SIZE // 4)  # one entry, not one per sample
    stored = absent = 0
    for shard in manifest["shards"]:
        t = load_file(cache_dir / shard["file"])
        for row, i in enumerate(shard["ids"]):
            labels = torch.from_numpy(load_label_map(root / "mask" / f"{i}.png", SIZE).astype("int64"))
            nonempty = condition_stack_torch(labels).flatten(1).amax(1) > 0
            assert torch.equal(t["map_index"][row] >= 0, nonempty)  # absent classes → -1
            absent += int((~nonempty).sum())
        assert t["map_mean"].shape[0] == int((t["map_index"] >= 0).sum())  # only present maps stored
        stored += t["map_mean"].shape[0]
    assert absent > 0 and stored + absent == NUM * NUM_MAPS
    # an absent map reads back as the VAE posterior of the all-zero image
    m, s = encoding.encode_distribution(tiny_backbone.vae, torch.zeros(1, 3, SIZE, SIZE))
    torch.testing.assert_close(shared["empty_map_mean"], m[0])
    torch.testing.assert_close(shared["empty_map_std"], s[0])
    cache = open_cache(built, tiny_backbone, None)
    item = CachedFaceDataset(cache, [0], train=False)[0]
    labels = torch.from_numpy(load_label_map(root / "mask" / "0.png", SIZE).astype("int64"))
    missing = [c for c in range(NUM_CLASSES) if not (labels == c).any()]
    assert missing and all(torch.equal(item["map_mean"][c + 1], shared["empty_map_mean"]) for c in missing)


# ---------------------------------------------------------------------------------------------
# Resumability


def test_interrupted_build_resumes_to_identical_files(built, root, tiny_backbone, tmp_path, monkeypatch):
    data = shutil.copytree(root, tmp_path / "data")
    cfg = make_cfg(data, tmp_path / "cache")
    quiet = dict(batch_size=4, backbone=tiny_backbone, shard_size=SHARD, progress=False, log=lambda m: None)
    build_cache(cfg, "both", max_shards=1, **quiet)  # stops after the first shard
    first = tmp_path / "cache" / "shard-00000.safetensors"
    stamp = first.stat().st_mtime_ns
    with pytest.raises(CacheError, match="lacks 6 of the 11 ids of the train split.*python -m face_mogle.data.cache"):
        open_cache(cfg, tiny_backbone, "train")

    # killed in the middle of the second shard (a stray temp file left behind)
    (tmp_path / "cache" / ".shard-00001.safetensors.abc.tmp").write_bytes(b"partial")
    real = cache_mod.builder._encode_shard

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.builder, "_encode_shard", dies)
    with pytest.raises(KeyboardInterrupt):
        build_cache(cfg, "both", **quiet)
    monkeypatch.setattr(cache_mod.builder, "_encode_shard", real)
    assert len(json.loads((tmp_path / "cache" / "manifest.json").read_text())["shards"]) == 1

    build_cache(cfg, "both", **quiet)  # the same command again continues
    assert first.stat().st_mtime_ns == stamp  # the finished shard was kept, not redone
    assert cache_files(tmp_path / "cache") == cache_files(built.data.cache_dir)  # byte for byte
    assert not list((tmp_path / "cache").glob(".*.tmp"))
    open_cache(cfg, tiny_backbone, "both")

    # a deleted shard is an incomplete cache; the builder redoes just that one
    (tmp_path / "cache" / "shard-00001.safetensors").unlink()
    with pytest.raises(CacheError, match="incomplete: 1 shard file.*shard-00001"):
        open_cache(cfg, tiny_backbone, "both")
    build_cache(cfg, "both", **quiet)
    assert first.stat().st_mtime_ns == stamp
    assert cache_files(tmp_path / "cache") == cache_files(built.data.cache_dir)

    # edited captions make their shard stale; the builder re-encodes only that shard
    table = json.loads((data / "text.json").read_text())
    table["11.jpg"] = ["A new caption."]
    (data / "text.json").write_text(json.dumps(table))
    with pytest.raises(CacheError, match="captions of 1 shard.*shard-00002"):
        open_cache(cfg, tiny_backbone, "both")
    build_cache(cfg, "both", **quiet)
    assert first.stat().st_mtime_ns == stamp
    ds = CachedFaceDataset(open_cache(cfg, tiny_backbone, "both"), [11], train=False)
    assert ds[0]["caption"] == "A new caption."

    # a face or mask replaced (or deleted) after the build: refused, naming it; only its shard re-encoded
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    shard_of = {i: sh["file"] for sh in manifest["shards"] for i in sh["ids"]}
    os.utime(data / "face" / "5.jpg")  # touched, same bytes: no change
    open_cache(cfg, tiny_backbone, "both")
    shutil.copy(data / "face" / "6.jpg", data / "face" / "5.jpg")
    with pytest.raises(CacheError, match=rf"faces or masks of 1 shard.*face/5.jpg in {shard_of[5]}.*face_mogle.data.cache"):
        open_cache(cfg, tiny_backbone, "both")
    stamps = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "cache").glob("shard-*")}
    build_cache(cfg, "both", **quiet)
    after = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "cache").glob("shard-*")}
    assert [n for n in stamps if stamps[n] != after[n]] == [shard_of[5]]
    ds = CachedFaceDataset(open_cache(cfg, tiny_backbone, "both"), [5, 6], train=False)
    torch.testing.assert_close(ds[0]["face_mean"], ds[1]["face_mean"])  # 5 now holds 6's face
    (data / "mask" / "7.png").rename(tmp_path / "7.png")
    with pytest.raises(CacheError, match=r"mask/7.png \(missing\)"):
        open_cache(cfg, tiny_backbone, "both")
    (tmp_path / "7.png").rename(data / "mask" / "7.png")


# ---------------------------------------------------------------------------------------------
# Staleness


@pytest.mark.parametrize("override, words", [
    (f"data.size={2 * SIZE}", "data.size=32, this config has 64"),
    ("model.global_map=gray", "model.global_map='palette', this config has 'gray'"),
    ("max_sequence_length=48", "max_sequence_length=32, this config has 48"),
    ("data.train_split=0-12", "lacks 1 of the 13 ids of the train split \\(e.g. 12\\)"),
])
def test_stale_cache_is_refused_in_one_line(built, tiny_backbone, override, words):
    cfg = make_cfg(built.data.root, built.data.cache_dir, override, *(
        [f"data.condition_size={2 * SIZE}"] if override.startswith("data.size") else []))
    with pytest.raises(CacheError, match=words) as err:
        open_cache(cfg, tiny_backbone, "train", config_path="configs/tiny.yaml")
    msg = str(err.value)
    assert "\n" not in msg
    assert f"python -m face_mogle.data.cache --config configs/tiny.yaml --set data.cache_dir={built.data.cache_dir}" in msg


def test_cache_built_under_the_old_grey_name_serves_gray(built, tiny_backbone, tmp_path):
    cache = shutil.copytree(built.data.cache_dir, tmp_path / "old")
    manifest = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps(dict(manifest, global_map="official")))
    open_cache(make_cfg(built.data.root, cache, "model.global_map=gray"), tiny_backbone, "train")
    with pytest.raises(CacheError, match="'official' \\(the old name of 'gray'\\), this config has 'palette'"):
        open_cache(make_cfg(built.data.root, cache), tiny_backbone, "train")


def test_other_backbone_weights_are_refused(built, tiny_backbone):
    from face_mogle.models.builder import TinySpec, build_tiny_backbone

    other = build_tiny_backbone(TinySpec(seed=1))
    with pytest.raises(CacheError, match="stale: backbone vae differs.*--overwrite"):
        open_cache(built, other, "train")
    ident = cache_identity(tiny_backbone)
    ident["encoders"]["text_encoder_2"] = "0123456789abcdef"
    with pytest.raises(CacheError, match="backbone text_encoder_2 differs"):
        open_cache(built, ident, "train")
    # the builder will not mix backbones in one cache either
    with pytest.raises(CacheError, match="does not match this config.*--overwrite"):
        build_cache(built, "both", backbone=other, progress=False, log=lambda m: None)


def test_missing_cache_and_unset_dir(root, tiny_backbone, tmp_path):
    with pytest.raises(CacheError, match="no latent cache .*manifest.json missing.*build it with"):
        open_cache(make_cfg(root, tmp_path / "none"), tiny_backbone)
    cfg = make_cfg(root, tmp_path, "data.cache_dir=null")
    with pytest.raises(CacheError, match=f"data.cache_dir is not set.*data.cache_dir={root}/cache/{SIZE}"):
        open_cache(cfg, tiny_backbone)


def test_only_a_cache_with_text_keeps_the_encoders_off_the_gpu(built, root, tiny_backbone, tmp_path):
    """The trainer parks the VAE, CLIP and T5 on the CPU exactly when nothing in a step runs them."""
    from face_mogle.training.trainer import _full_cache

    assert _full_cache(built)  # latents + text embeddings
    latents_only = make_cfg(root, tmp_path / "latents")
    build_cache(latents_only, "train", backbone=tiny_backbone, text=False, progress=False, log=lambda m: None)
    assert not _full_cache(latents_only)  # captions are encoded in every step
    assert not _full_cache(make_cfg(root, tmp_path / "none"))  # no cache yet: open_cache reports it
    assert not _full_cache(make_cfg(root, tmp_path, "data.cache_dir=null"))


# ---------------------------------------------------------------------------------------------
# Command line


def run_cli(*args, timeout=120):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "face_mogle.data.cache", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout)


@pytest.mark.slow
def test_cli_help_run_and_errors(root, tmp_path):
    out = run_cli("--help")
    assert out.returncode == 0 and "--config" in out.stdout and "--split" in out.stdout

    cache_dir = tmp_path / "cache"
    base = ["--config", "configs/tiny.yaml", "--set", f"data.root={root}", "--set", f"data.size={SIZE}",
            "--set", f"data.condition_size={SIZE}", "--set", "max_sequence_length=32",
            "--set", f"data.cache_dir={cache_dir}", "--split", "test", "--no_progress"]
    out = run_cli(*base, "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "projected size" in out.stdout and "the cache is complete" in out.stdout
    assert json.loads((cache_dir / "manifest.json").read_text())["ids"] == [NUM - 1]

    # a config that does not match the cache: one line, before any backbone is loaded
    out = run_cli(*base, "--set", "data.size=64", "--set", "data.condition_size=64")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "does not match this config: it was built with data.size=32, this config has 64" in out.stderr


def test_one_builder_per_folder_and_shards_hold_the_ids_the_manifest_lists(built, root, tiny_backbone, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from face_mogle.locks import FolderBusy, FolderLock

    cache_dir = tmp_path / "cache"
    shutil.copytree(built.data.cache_dir, cache_dir)
    cfg = make_cfg(root, cache_dir)
    quiet = dict(batch_size=4, backbone=tiny_backbone, shard_size=SHARD, progress=False, log=lambda m: None)
    before = cache_files(cache_dir)
    # another builder at work (the lock held through a second handle): refused at once, naming it
    with FolderLock(cache_dir, "another builder"):
        with pytest.raises(FolderBusy, match=rf"latent cache folder {cache_dir} is in use by pid {os.getpid()} "):
            build_cache(cfg, "both", overwrite=True, **quiet)
        capsys.readouterr()
        args = ["--config", str(REPO / "configs" / "tiny.yaml"), "--no_progress", "--device", "cpu"]
        for setting in (f"data.root={root}", f"data.cache_dir={cache_dir}", f"data.size={SIZE}",
                        f"data.condition_size={SIZE}", "max_sequence_length=32"):
            args += ["--set", setting]
        assert cache_mod.main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is in use by pid" in err
    assert cache_files(cache_dir) == before  # --overwrite deleted nothing
    build_cache(cfg, "both", **quiet)  # free again

    # a shard holding other ids than the manifest lists, at the recorded size (what two builders
    # writing at once left): the reader refuses it, the builder re-encodes it
    first = json.loads((cache_dir / "manifest.json").read_text())["shards"][0]
    path = cache_dir / first["file"]
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    tensors["ids"] = tensors["ids"] + 100
    save_file(tensors, str(path), metadata=meta)
    assert path.stat().st_size == first["bytes"]
    ids = first["ids"]
    with pytest.raises(CacheError, match=rf"{first['file']} holds ids {ids[0] + 100}\.\.{ids[-1] + 100} "
                                         rf"\({len(ids)}\), the manifest lists {ids[0]}\.\.{ids[-1]}"):
        open_cache(cfg, tiny_backbone, "both")
    build_cache(cfg, "both", **quiet)
    assert cache_files(cache_dir) == cache_files(built.data.cache_dir)
    open_cache(cfg, tiny_backbone, "both")


def test_cli_without_cache_dir_says_what_to_pass(root, capsys):
    code = cache_mod.main(["--config", str(REPO / "configs" / "tiny.yaml"), "--set", f"data.root={root}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: data.cache_dir is not set: pass --set data.cache_dir=DIR (e.g. --set data.cache_dir={root}/cache/64)")


def test_bfloat16_cache_matches_bfloat16_encoding(root, tmp_path):
    """Stored in the backbone's dtype: a bf16 backbone's outputs are kept without rounding."""
    from face_mogle.models.builder import build_tiny_backbone

    bb = build_tiny_backbone().to(dtype=torch.bfloat16)
    cfg = make_cfg(root, tmp_path / "bf16", "dtype=bfloat16", "data.train_split=0-3")
    build_cache(cfg, "train", batch_size=4, backbone=bb, progress=False, log=lambda m: None)
    shard = load_file(tmp_path / "bf16" / "shard-00000.safetensors")
    assert shard["face_mean"].dtype == shard["prompt_embeds"].dtype == torch.bfloat16
    cache = open_cache(cfg, bb, "train")
    plain, cached = FaceDataset.from_config(cfg.data, "train", seed=1), CachedFaceDataset.from_config(cfg, cache, "train", seed=1)
    a = collate([plain[i] for i in range(4)])
    b = collate([cached[i] for i in range(4)])
    u = encode_batch(a, bb, cfg, sample=False)
    c = cached_batch_inputs(b, cached.vae_config, sample=False)
    for key in u:
        assert u[key].dtype == c[key].dtype, key
        # bf16 encoders: batch composition changes the rounding of the VAE's convolutions a little
        torch.testing.assert_close(c[key].float(), u[key].float(), atol=1e-2, rtol=1e-2, msg=key)


def test_latents_only_cache(root, tiny_backbone, tmp_path):
    """--no_text: no T5/CLIP embeddings stored; captions are encoded at training time instead."""
    cfg = make_cfg(root, tmp_path / "latents", "data.train_split=0-3")
    build_cache(cfg, "train", batch_size=4, backbone=tiny_backbone, text=False, progress=False, log=lambda m: None)
    assert "prompt_embeds" not in load_file(tmp_path / "latents" / "shard-00000.safetensors")
    assert "empty_prompt_embeds" not in load_file(tmp_path / "latents" / "shared.safetensors")
    # any max_sequence_length goes with a latents-only cache; a text build into it is refused
    cache = open_cache(make_cfg(root, tmp_path / "latents", "data.train_split=0-3", "max_sequence_length=48"),
                       tiny_backbone, "train")
    assert not cache.has_text
    with pytest.raises(CacheError, match="built without text embeddings"):
        build_cache(cfg, "train", backbone=tiny_backbone, progress=False, log=lambda m: None)
    plain, cached = FaceDataset.from_config(cfg.data, "train", seed=2), CachedFaceDataset.from_config(cfg, cache, "train", seed=2)
    a = collate([plain[i] for i in range(4)])
    b = collate([cached[i] for i in range(4)])
    with pytest.raises(ValueError, match="encode_text"):
        cached_batch_inputs(b, cached.vae_config)
    u = encode_batch(a, tiny_backbone, cfg, sample=False)
    c = cached_batch_inputs(b, cached.vae_config, sample=False,
                            encode_text=lambda caps: encoding.encode_prompts(tiny_backbone, caps, cfg.max_sequence_length))
    for key in u:
        torch.testing.assert_close(c[key], u[key], atol=1e-4, rtol=1e-4, msg=key)


def test_folder_backbone_fingerprint(tiny_backbone, tmp_path):
    """A FLUX folder is identified by its encoder files (size + first MiB), not by its path."""
    from face_mogle.data.cache import _identity_difference
    from face_mogle.models.builder import load_backbone

    tiny_backbone.save(tmp_path / "a")
    built = cache_identity(load_backbone(tmp_path / "a"))
    assert set(built["encoders"]) == {"vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"}
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # moved: still the same weights
    assert _identity_difference(built, cache_identity(load_backbone(tmp_path / "b"))) is None
    weights = next((tmp_path / "b" / "text_encoder_2").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert "backbone text_encoder_2 differs" in _identity_difference(built, cache_identity(load_backbone(tmp_path / "b")))


def test_base_mode_cache_holds_no_maps(built, root, tiny_backbone, tmp_path):
    """A train.mode: base config caches faces and captions only; a Face-MoGLE run refuses that
    cache, a base run reads a full one too, and a build never mixes the two kinds."""
    cfg = make_cfg(root, tmp_path / "base", "train.mode=base")
    build_cache(cfg, "both", batch_size=4, backbone=tiny_backbone, shard_size=SHARD, progress=False, log=lambda m: None)
    cache_dir = Path(cfg.data.cache_dir)
    assert json.loads((cache_dir / "manifest.json").read_text())["maps"] is False
    shard = load_file(cache_dir / "shard-00000.safetensors")
    assert shard["map_mean"].shape[0] == 0 and (shard["map_index"] == -1).all()
    full = load_file(Path(built.data.cache_dir) / "shard-00000.safetensors")
    for key in ("ids", "face_mean", "face_std", "prompt_embeds", "pooled_embeds", "caption_start"):
        torch.testing.assert_close(shard[key], full[key], atol=1e-5, rtol=1e-5, msg=key)
    # a base run's inputs from it equal the full cache's, maps aside (it never reads them)
    a = CachedFaceDataset.from_config(cfg, open_cache(cfg, tiny_backbone, "train"), "train", seed=3)
    base_over_full = make_cfg(root, built.data.cache_dir, "train.mode=base")  # a full cache read by a base run
    b = CachedFaceDataset.from_config(base_over_full, open_cache(base_over_full, tiny_backbone, "train"), "train", seed=3)
    ia, ib = (cached_batch_inputs(collate([d[i] for i in range(4)]), d.vae_config, sample=False) for d in (a, b))
    assert set(ia) == set(ib) == {"x0", "prompt_embeds", "pooled_embeds"}  # a base run reads no maps
    for key in ia:
        torch.testing.assert_close(ia[key], ib[key], atol=1e-5, rtol=1e-5, msg=key)
    assert "map_mean" not in a[0] and "map_mean" in CachedFaceDataset.from_config(built, open_cache(built, tiny_backbone), "train")[0]
    with pytest.raises(CacheError, match="built without mask maps"):
        open_cache(make_cfg(root, tmp_path / "base"), tiny_backbone, "train")
    with pytest.raises(CacheError, match="built without mask maps"):
        build_cache(make_cfg(root, tmp_path / "base"), "train", backbone=tiny_backbone, progress=False, log=lambda m: None)
    with pytest.raises(CacheError, match="built with mask maps"):
        build_cache(make_cfg(root, built.data.cache_dir, "train.mode=base"), "train", backbone=tiny_backbone,
                    progress=False, log=lambda m: None)
