"""The latent and text cache: encode every face, mask map and caption once, train from the files.

Without a cache each training step runs the frozen VAE encoder on 21 images per sample (the face
and 20 condition maps) and T5 + CLIP on the caption. The cache stores, per sample, the VAE
posterior (mean, std) of the face, of the global map and of the local maps of the classes that are
PRESENT, and the T5 sequence + pooled CLIP vector of every caption. Absent-class maps, dropped maps
(drop_image_prob) and dropped captions all share one entry per cache (the empty map and the empty
caption ""), so they are stored once. Sampling the posterior and the dropouts still happen at
training time, with the same (seed, epoch, id) choices as the uncached `FaceDataset`.

Layout of `data.cache_dir`:

    manifest.json             format version, backbone identity (+ encoder weight digests), size,
                              global_map, max_sequence_length, dtype, text, shard_size, ids, and the
                              shard list (file, ids, bytes, caption digest, face/mask fingerprints per shard)
    shared.safetensors        empty_map_mean/std [C,h,w]; empty_prompt_embeds [L,D]; empty_pooled_embeds [Dp]
    shard-00000.safetensors   per shard of n samples (metadata "captions": JSON list per sample):
        ids [n] · face_mean/face_std [n,C,h,w] · map_mean/map_std [M,C,h,w] (the non-empty maps)
        map_index [n,20] (row into map_*; -1 = the empty map) · caption_start [n+1] (offsets)
        prompt_embeds [K,L,D] · pooled_embeds [K,Dp] (K = all captions of the shard's samples)
    .lock, .lock.holder       held by the one builder at work (a second is refused, naming it)

`--no_text` builds a latents-only cache (no T5/CLIP embeddings; captions are then encoded during
training): at FLUX.1-dev scale the T5 sequences are ~4 MiB per caption (512 × 4096 bf16), ~1.15 TiB
for MM-CelebA-HQ's ~300k captions, against ~0.1 TiB for all the latents.

Everything is stored in the backbone's dtype (bfloat16 for FLUX.1-dev, float32 for the tiny
preset). The VAE and text encoders compute in that dtype, so storing in it loses nothing: cached
inputs equal uncached ones. Each shard is written to a temp file and renamed into place, then the
manifest is rewritten (also atomically): a killed build keeps its finished shards and a rerun of
the same command continues where it stopped. A shard whose stored ids differ from the manifest's
list is not used (the reader refuses it, the builder re-encodes it).

Build:  python -m face_mogle.data.cache --config CONFIG [--set data.cache_dir=DIR] [--split both]

Modules: `fingerprint` (what the contents depend on), `manifest` (the folder's record and whether a
config may use it), `reader` (opening it for training), `builder` (encoding), `cli` (the command).
"""

from .builder import MAX_SHARD_SIZE, SHARD_BYTES, build_cache, projected_bytes
from .cli import main
from .fingerprint import _identity_difference, cache_identity, encoder_fingerprint
from .manifest import (FORMAT_VERSION, MANIFEST, SHARED, CacheError, build_command, read_manifest,
                       require_cache_dir, suggested_cache_dir)
from .reader import CachedFaceDataset, LatentCache, open_cache

__all__ = ["MAX_SHARD_SIZE", "SHARD_BYTES", "build_cache", "projected_bytes", "main", "_identity_difference",
           "cache_identity", "encoder_fingerprint", "FORMAT_VERSION", "MANIFEST", "SHARED", "CacheError",
           "build_command", "read_manifest", "require_cache_dir", "suggested_cache_dir", "CachedFaceDataset",
           "LatentCache", "open_cache"]
