"""inference.py and test.py: outputs, sidecars, resume, shards, and one-line errors."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from face_mogle.generate_split import (GenerationError, first_captions, image_seed, parse_shard,
                                       read_split_ids, shard_from_env, take_shard)
from sampling_helpers import SIZE, draw_mask

ROOT = Path(__file__).resolve().parents[1]
IDS = [100, 101, 102, 103, 104]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(script, *args, cwd=None, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=timeout)


def assert_one_line_error(stderr: str, *needles):
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """MM-CelebA-HQ layout: masks, captions in text.json (most ids) or text/{id}.txt, a split file."""
    root = tmp_path_factory.mktemp("data")
    (root / "mask").mkdir()
    (root / "text").mkdir()
    (root / "splits").mkdir()
    table = {}
    for i in IDS:
        Image.fromarray(draw_mask(i, 64), "L").save(root / "mask" / f"{i}.png")
        captions = [f"Face {i} has {'blond' if i % 2 else 'black'} hair.", f"Another caption of {i}."]
        if i == 103:
            (root / "text" / f"{i}.txt").write_text("\n" + "\n".join(captions) + "\n")
        else:
            table[f"{i}.jpg"] = captions
    (root / "text.json").write_text(json.dumps(table))
    (root / "splits" / "test.txt").write_text("".join(f"{i}\n" for i in IDS))
    return root


# ---------------------------------------------------------------------------------------------
# Split reading


def test_split_reader(data_root, monkeypatch):
    assert read_split_ids(data_root, "3-6") == [3, 4, 5, 6]
    assert read_split_ids(data_root, "splits/test.txt") == IDS
    caps = first_captions(data_root, IDS)
    assert caps[100] == "Face 100 has black hair." and caps[103] == "Face 103 has blond hair."
    with pytest.raises(GenerationError, match="END must be >= START"):
        read_split_ids(data_root, "9-3")
    with pytest.raises(GenerationError, match="no id-list file"):
        read_split_ids(data_root, "splits/nope.txt")
    assert take_shard(IDS, (1, 2)) == [101, 103]
    assert parse_shard("1/2") == (1, 2)
    for bad in ("2/2", "x", "1/0"):
        with pytest.raises(GenerationError):
            parse_shard(bad)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    assert shard_from_env() == (2, 3)
    for rank, world in (("3", "3"), ("x", "2"), ("0", "-1"), ("0", "two")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", world)
        with pytest.raises(GenerationError, match="RANK=.*WORLD_SIZE"):
            shard_from_env()
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert len({image_seed(s, i) for s in (0, 1, 42) for i in range(30000)}) == 90000


# ---------------------------------------------------------------------------------------------
# test.py


def faces(folder):
    return {p.name: p.read_bytes() for p in sorted((Path(folder) / "face").glob("*.jpg"))}


def test_generate_split_resume_and_shards(tiny_run, data_root, tmp_path, monkeypatch, capsys):  # noqa: F811
    script = load_script("test")
    base = ["--run", tiny_run, "--root", data_root, "--split", "test", "--set", "data.test_split=splits/test.txt",
            "--quiet", "--seed", "3"]
    full = tmp_path / "full"
    assert script.main([*map(str, base), "--output_dir", str(full), "--batch_size", "2"]) == 0
    made = faces(full)
    assert sorted(made) == [f"{i}.jpg" for i in IDS]
    for i in IDS:
        assert Image.open(full / "face" / f"{i}.jpg").size == (SIZE, SIZE)
    assert (full / "text" / "103.txt").read_text() == "Face 103 has blond hair.\n"
    manifest = json.loads((full / "manifest.json").read_text())
    assert manifest["done"] == IDS and manifest["seed"] == 3 and manifest["steps"] == 2 and manifest["size"] == SIZE

    # Resume: nothing to do, nothing touched.
    stamps = {p.name: p.stat().st_mtime_ns for p in (full / "face").iterdir()}
    capsys.readouterr()
    assert script.main([*map(str, base), "--output_dir", str(full), "--batch_size", "2"]) == 0
    assert "5 already in" in capsys.readouterr().out
    assert faces(full) == made
    assert {p.name: p.stat().st_mtime_ns for p in (full / "face").iterdir()} == stamps

    # Shards, another batch size: together the same bytes.
    sharded = tmp_path / "sharded"
    for shard in ("0/2", "1/2"):
        assert script.main([*map(str, base), "--output_dir", str(sharded), "--batch_size", "3", "--shard", shard]) == 0
    assert faces(sharded) == made

    # Sharding by RANK under a launcher; a partial run resumes to the full set.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    ranked = tmp_path / "ranked"
    assert script.main([*map(str, base), "--output_dir", str(ranked)]) == 0
    assert sorted(faces(ranked)) == ["101.jpg", "103.jpg"]
    monkeypatch.delenv("WORLD_SIZE")
    assert script.main([*map(str, base), "--output_dir", str(ranked), "--batch_size", "4"]) == 0
    assert faces(ranked) == made

    # Other settings into the same folder: refused, one line.
    capsys.readouterr()
    assert script.main([*map(str, base), "--output_dir", str(full), "--steps", "3"]) == 2
    assert_one_line_error(capsys.readouterr().err, "other settings", "steps 2 != 3")
    assert script.main([*map(str, base), "--output_dir", str(full), "--cfg_scale", "2"]) == 2
    assert_one_line_error(capsys.readouterr().err, "other settings", "cfg_scale 1.0 != 2.0")
    # a folder written before guidance existed (no cfg_scale in its manifest) was made without it
    manifest_path = full / "manifest.json"
    old = json.loads(manifest_path.read_text())
    assert old.pop("cfg_scale") == 1.0
    manifest_path.write_text(json.dumps(old))
    assert script.main([*map(str, base), "--output_dir", str(full)]) == 0
    assert script.main([*map(str, base), "--output_dir", str(full), "--cfg_scale", "2"]) == 2
    assert_one_line_error(capsys.readouterr().err, "other settings", "cfg_scale 1.0 != 2.0")
    # the prompt's own weight is a setting of its own; an old manifest without it had the cfg scale's
    assert json.loads(manifest_path.read_text())["text_cfg_scale"] == 1.0
    assert script.main([*map(str, base), "--output_dir", str(full), "--text_cfg_scale", "3"]) == 2
    assert_one_line_error(capsys.readouterr().err, "other settings", "text_cfg_scale 1.0 != 3.0")
    old = json.loads(manifest_path.read_text())
    del old["text_cfg_scale"]
    manifest_path.write_text(json.dumps(old))
    assert script.main([*map(str, base), "--output_dir", str(full), "--text_cfg_scale", "3"]) == 2
    assert_one_line_error(capsys.readouterr().err, "other settings", "text_cfg_scale 1.0 != 3.0")
    assert script.main([*map(str, base), "--output_dir", str(full), "--text_cfg_scale", "0.5"]) == 2
    assert_one_line_error(capsys.readouterr().err, "text cfg scale must be a finite number >= 1")

    # --limit keeps the first ids of the split.
    limited = tmp_path / "limited"
    assert script.main([*map(str, base), "--output_dir", str(limited), "--limit", "2"]) == 0
    assert faces(limited) == {k: made[k] for k in ("100.jpg", "101.jpg")}


def test_split_all_takes_every_mask_in_the_folder(tiny_run, data_root, tmp_path):  # noqa: F811
    script = load_script("test")
    out = tmp_path / "all"
    args = ["--run", str(tiny_run), "--root", str(data_root), "--split", "all", "--quiet", "--output_dir", str(out)]
    assert script.main(args) == 0
    assert sorted(faces(out)) == sorted(f"{i}.jpg" for i in IDS)
    assert json.loads((out / "manifest.json").read_text())["split"] == "all"
    empty = tmp_path / "empty"
    (empty / "mask").mkdir(parents=True)
    assert script.main(["--run", str(tiny_run), "--root", str(empty), "--split", "all", "--output_dir", str(tmp_path / "o")]) == 2


def test_generate_split_never_trusts_a_stale_or_broken_output(tiny_run, data_root, tmp_path, capsys):  # noqa: F811
    from safetensors.torch import load_file, save_file

    script = load_script("test")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    base = ["--run", str(run), "--split", "splits/test.txt", "--quiet", "--seed", "3"]
    out = tmp_path / "out"
    assert script.main([*base, "--root", str(data_root), "--output_dir", str(out)]) == 0
    made = faces(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["weights"]) == 64 and manifest["root"] == str(data_root.resolve())

    # a JPEG cut by a crash is not "done": it is generated again, identically
    cut = out / "face" / "101.jpg"
    cut.write_bytes(made["101.jpg"][: len(made["101.jpg"]) // 2])
    capsys.readouterr()
    assert script.main([*base, "--root", str(data_root), "--output_dir", str(out)]) == 0
    assert "1 unreadable images" in capsys.readouterr().out and faces(out) == made

    # another data root, or weights retrained in the same run folder: refused, nothing touched
    other_root = tmp_path / "other-root"
    shutil.copytree(data_root, other_root)
    capsys.readouterr()
    assert script.main([*base, "--root", str(other_root), "--output_dir", str(out)]) == 2
    assert_one_line_error(capsys.readouterr().err, "other settings", "root", "--overwrite")
    lora = load_file(str(run / "pytorch_lora_weights.safetensors"))
    save_file({k: v * 1.5 for k, v in lora.items()}, str(run / "pytorch_lora_weights.safetensors"))
    assert script.main([*base, "--root", str(data_root), "--output_dir", str(out)]) == 2
    assert_one_line_error(capsys.readouterr().err, "other settings", "weights", "--overwrite")
    assert faces(out) == made
    # --overwrite replaces them
    assert script.main([*base, "--root", str(data_root), "--output_dir", str(out), "--overwrite"]) == 0
    assert sorted(faces(out)) == sorted(made) and faces(out) != made
    assert json.loads((out / "manifest.json").read_text())["weights"] != manifest["weights"]


def tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_generate_split_touches_only_its_own_files(tiny_run, data_root, tmp_path, capsys):  # noqa: F811
    """--overwrite deletes, and a rerun skips, only the files the folder's manifest says test.py wrote."""
    from face_mogle.locks import FolderLock

    script = load_script("test")
    base = ["--run", str(tiny_run), "--root", str(data_root), "--split", "splits/test.txt", "--quiet", "--limit", "2"]

    def refused(out, *needles, extra=()):
        capsys.readouterr()
        assert script.main([*base, "--output_dir", str(out), *extra]) == 2
        assert_one_line_error(capsys.readouterr().err, *needles)

    # a copy of a data set (mask/, text.json, real faces and captions): refused, with --overwrite too
    copy = tmp_path / "copy"
    shutil.copytree(data_root, copy)
    (copy / "face").mkdir()
    for i in IDS:
        Image.new("RGB", (8, 8), "white").save(copy / "face" / f"{i}.jpg")
        (copy / "text" / f"{i}.txt").write_text(f"real caption {i}\n")
    before = tree(copy)
    for extra in ((), ("--overwrite",)):
        refused(copy, "would write into the data set", extra=extra)
    assert tree(copy) == before
    # face/ linked into a data set: the same
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "face").symlink_to(copy / "face")
    for extra in ((), ("--overwrite",)):
        refused(linked, "would write into the data set", extra=extra)
    assert tree(copy) == before

    # a plain folder with faces test.py did not write: neither "already generated" nor deleted
    foreign = tmp_path / "foreign"
    shutil.copytree(copy / "face", foreign / "face")
    for extra in ((), ("--overwrite",)):
        refused(foreign, "holds 5 file(s) in face/ or text/ that test.py did not write", "100.jpg", extra=extra)
    assert tree(foreign) == {k: v for k, v in before.items() if k.startswith("face/")}  # untouched, no manifest

    # its own files: skipped on a rerun, replaced by --overwrite; a foreign file beside them stops both
    out = tmp_path / "out"
    assert script.main([*base, "--output_dir", str(out)]) == 0
    made = tree(out)
    assert sorted(made) == ["face/100.jpg", "face/101.jpg", "manifest.json", "text/100.txt", "text/101.txt"]
    (out / "face" / "999.jpg").write_bytes(b"mine")
    refused(out, "holds 1 file(s)", "face/999.jpg", "--overwrite deletes only what test.py wrote", extra=("--overwrite",))
    refused(out, "holds 1 file(s)", "face/999.jpg")
    assert (out / "face" / "999.jpg").read_bytes() == b"mine" and faces(out)["100.jpg"] == made["face/100.jpg"]
    (out / "face" / "999.jpg").unlink()
    # one of its faces replaced by another (readable) image: not its own any more
    Image.open(out / "face" / "101.jpg").save(out / "face" / "101.jpg", quality=50)
    edited = (out / "face" / "101.jpg").read_bytes()
    refused(out, "face/101.jpg changed since test.py wrote it", extra=("--overwrite",))
    assert (out / "face" / "101.jpg").read_bytes() == edited
    (out / "face" / "101.jpg").write_bytes(made["face/101.jpg"])
    assert script.main([*base, "--output_dir", str(out), "--overwrite"]) == 0
    assert tree(out) == made  # deleted and made again, identically

    # a manifest from before digests were recorded: the ids it lists done are taken as its own
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert script.main([*base, "--output_dir", str(out)]) == 0
    assert "2 already in" in capsys.readouterr().out and tree(out) == made

    # one writer per folder (and shard): a second is refused naming the first; --overwrite too while a shard runs
    with FolderLock(out, "another test.py"):
        refused(out, f"test.py output folder {out} is in use by pid {os.getpid()}")
    with FolderLock(out, "shard 1", ".lock-shard-1-of-2"):
        refused(out, "--overwrite: test.py output folder", "is in use by pid", extra=("--overwrite", "--shard", "0/2"))
    assert tree(out) == made


def test_generate_split_bad_inputs(tiny_run, data_root, tmp_path, capsys):  # noqa: F811
    script = load_script("test")
    out = str(tmp_path / "out")
    cases = [
        (["--run", str(tmp_path / "nope"), "--root", str(data_root), "--output_dir", out], "run folder not found"),
        (["--run", str(tiny_run), "--root", str(tmp_path / "nodata"), "--output_dir", out], "data root not found"),
        (["--run", str(tiny_run), "--root", str(data_root), "--output_dir", out, "--shard", "2/2"], "--shard"),
        (["--run", str(tiny_run), "--root", str(data_root), "--output_dir", out], "missing data files"),  # 27000-29999
        (["--run", str(tiny_run), "--root", str(data_root), "--split", "100-104", "--output_dir", out, "--size", "20"],
         "multiple of 8"),
        (["--run", str(tiny_run), "--root", str(data_root), "--split", "100-104", "--output_dir",
          str(data_root / "text.json")], "not a folder"),
        # writing over the data set's own files is refused
        (["--run", str(tiny_run), "--root", str(data_root), "--split", "100-104", "--output_dir", str(data_root)],
         "would write into the data set"),
        (["--run", str(tiny_run), "--root", str(data_root), "--split", "100-104", "--output_dir",
          str(data_root / "text" / "x")], "would write into the data set"),
    ]
    for args, needle in cases:
        capsys.readouterr()
        assert script.main(args + ["--quiet"]) == 2, args
        assert_one_line_error(capsys.readouterr().err, needle)


# ---------------------------------------------------------------------------------------------
# inference.py


def test_inference_writes_image_and_sidecar(tiny_run, tmp_path):  # noqa: F811
    mask = tmp_path / "mask.png"
    Image.fromarray(draw_mask(0, 64), "L").save(mask)
    out = tmp_path / "out" / "face.png"
    res = run_cli(ROOT / "inference.py", "--run", tiny_run, "--prompt", "She has blond hair.", "--mask", mask,
                  "--output", out, "--seed", 5, "--steps", 2, "--size", 24, "--gates",
                  "--preset", ROOT / "configs" / "official-sampler.yaml", "--set", "sample.mask_latent=mode")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert Image.open(out).size == (24, 24)
    assert Image.open(tmp_path / "out" / "face_gates.png").size == (24, 24)
    meta = json.loads((tmp_path / "out" / "face.json").read_text())
    assert meta["prompt"] == "She has blond hair." and meta["mask"] == str(mask)
    assert (meta["seed"], meta["steps"], meta["size"], meta["guidance"]) == (5, 2, 24, 3.5)
    assert meta["gate_timestep_scale"] == 1000.0 and meta["mode"] == "mask+text" and meta["backbone"] == "tiny"
    # the preset's keys, with the command line's --set applied after it
    assert (meta["local_maps"], meta["global_map"], meta["mask_latent"]) == ("blank", "stored", "mode")
    assert meta["condition_scale"] == 1.0 and meta["seconds"] > 0 and len(meta["gate_mean"]) == 20
    assert meta["cfg_scale"] == 1.0 and meta["text_cfg_scale"] == 1.0
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_inference_without_arguments_needs_the_tiny_model(tmp_path):
    # A copy of the script in an empty folder: no checkpoints/face-mogle-tiny beside it.
    shutil.copy(ROOT / "inference.py", tmp_path / "inference.py")
    res = run_cli(tmp_path / "inference.py", cwd=tmp_path, timeout=60)
    assert res.returncode == 2
    assert_one_line_error(res.stderr, "checkpoints/face-mogle-tiny", "--run RUN")


@pytest.mark.slow
def test_inference_without_arguments_runs_the_demo(tmp_path):
    if not (ROOT / "checkpoints" / "face-mogle-tiny" / "config.yaml").is_file():
        pytest.skip("checkpoints/face-mogle-tiny/ is not shipped yet")
    res = run_cli(ROOT / "inference.py", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    # written under the current folder, not into the repository
    assert Image.open(tmp_path / "outputs" / "inference.png").size == (128, 128)
    record = json.loads((tmp_path / "outputs" / "inference.json").read_text())
    assert record["mode"] == "mask+text" and record["prompt"] == (ROOT / "assets/examples/prompt.txt").read_text().strip()
    assert record["unread_words"] == [] and "warning" not in res.stderr  # the demo prompt is read whole
    # --mask and --prompt without --run: the shipped model too; words its encoder lacks are named
    prompt = "A man with an open mouth."
    res = run_cli(ROOT / "inference.py", "--mask", ROOT / "assets/examples/example-2.png", "--prompt", prompt,
                  "--output", tmp_path / "two.png", "--steps", 2, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    record = json.loads((tmp_path / "two.json").read_text())
    assert Path(record["run_resolved"]) == (ROOT / "checkpoints" / "face-mogle-tiny").resolve()
    assert record["prompt"] == prompt and record["steps"] == 2
    assert record["unread_words"] == ["an", "open", "mouth"]
    warnings = [line for line in res.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "'an', 'open', 'mouth'" in warnings[0], res.stderr


def test_inference_bad_inputs(tiny_run, tmp_path, capsys):  # noqa: F811
    bad_mask = tmp_path / "bad.png"
    bad_mask.write_bytes(b"\x89PNG not really")
    labels = tmp_path / "labels.png"
    Image.fromarray(draw_mask(0, 64) + 19, "L").save(labels)  # values outside 0..18
    blocker = tmp_path / "file"
    blocker.write_text("x")
    good = tmp_path / "good.png"
    Image.fromarray(draw_mask(0, 64), "L").save(good)
    run, out = str(tiny_run), str(tmp_path / "o.png")
    # Checked before any model loads. A few as real subprocesses (no traceback reaches stderr) ...
    for args, needle in [
        (["--run", str(tmp_path / "nope"), "--prompt", "x"], "run folder not found"),
        (["--run", run, "--mask", bad_mask], "bad.png: unreadable or corrupt image"),
        (["--run", run, "--prompt", "x", "--steps", "zero"], "invalid int value"),
    ]:
        res = run_cli(ROOT / "inference.py", *args, "--output", out)
        assert res.returncode == 2, (args, res.stderr)
        assert_one_line_error(res.stderr, needle)
    # ... the rest in-process (same code path, no interpreter start each).
    script = load_script("inference")
    for args, needle in [
        (["--run", run, "--prompt", "x", "--steps", "0"], "--steps must be >= 1"),
        (["--run", run, "--mask", str(labels)], "outside 0..18"),
        (["--run", run, "--mask", str(tmp_path / "missing.png")], "mask file not found"),
        (["--run", run, "--prompt", "x", "--output", str(blocker / "o.png")], "is a file, not a folder"),
        (["--run", run, "--prompt", "x", "--output", str(tmp_path / "o.txt")], "--output must end in"),
        (["--run", run, "--output", out], "give --prompt, --mask or both"),
        (["--run", run, "--prompt", "x", "--guidance", "nan"], "--guidance must be a finite number"),
        (["--run", run, "--prompt", "x", "--condition_scale", "inf"], "--condition_scale must be a finite number"),
        (["--run", run, "--prompt", "x", "--cfg_scale", "0.5"], "--cfg_scale must be a finite number >= 1"),
        (["--run", run, "--prompt", "x", "--text_cfg_scale", "nan"], "--text_cfg_scale must be a finite number >= 1"),
        (["--run", run, "--prompt", "x", "--seed", str(2**70)], "--seed must be in"),
        (["--run", run, "--mask", str(good), "--output", str(good)], "is the input --mask"),
        (["--run", run, "--prompt", "x", "--size", "4096"], "above sample.max_size 2048"),
        # found once the model is loaded
        (["--run", run, "--prompt", "x", "--size", "36"], "multiple of 8"),
        (["--run", run, "--prompt", "x", "--set", "model.nope=1"], "unknown config key 'model.nope'"),
        (["--run", run, "--prompt", "x", "--pretrained", str(tmp_path / "noflux")], "backbone folder not found"),
    ]:
        if "--output" not in args:
            args = [*args, "--output", out]
        capsys.readouterr()
        assert script.main(args) == 2, args
        assert_one_line_error(capsys.readouterr().err, needle)
    assert Image.open(good).size == (64, 64) and not Path(out).exists()  # nothing written, the mask intact


def test_inference_side_files_never_land_on_an_input_or_in_a_data_set(tiny_run, tmp_path, capsys):  # noqa: F811
    script = load_script("inference")
    data = tmp_path / "data"  # a data set: a folder with mask/ and text.json
    (data / "mask").mkdir(parents=True)
    (data / "text.json").write_text('{"0.jpg": ["a face"]}')
    mask, face, gates_named = tmp_path / "m.png", tmp_path / "o_source_mask.png", tmp_path / "o_gates.png"
    Image.fromarray(draw_mask(0, 64), "L").save(mask)
    Image.new("RGB", (64, 64), "white").save(face)
    Image.fromarray(draw_mask(1, 64), "L").save(gates_named)
    inputs = {p: p.read_bytes() for p in (mask, face, gates_named, data / "text.json")}
    (tmp_path / "link").symlink_to(data / "mask")
    out = str(tmp_path / "o.png")
    for args, needles in [
        # --output DATA/text.png: its settings record would have been the data set's text.json
        (["--mask", str(mask), "--output", str(data / "text.png")], ["text.png would write into the data set"]),
        (["--mask", str(mask), "--output", str(data / "mask" / "new.png")], ["--output", "data set"]),
        (["--mask", str(mask), "--output", str(tmp_path / "link" / "new.png")], ["--output", "data set"]),  # link into it
        # the parsed source mask of o.png is o_source_mask.png, here the face being edited
        (["--image", str(face), "--mask", str(mask), "--output", out], ["its parsed source mask", "is the input --image"]),
        # the expert map of o.png is o_gates.png, here the input mask
        (["--mask", str(gates_named), "--gates", "--output", out], ["its expert map", "is the input --mask"]),
    ]:
        capsys.readouterr()
        assert script.main(["--run", str(tiny_run), "--prompt", "x", *args]) == 2, args
        assert_one_line_error(capsys.readouterr().err, *needles)
    assert {p: p.read_bytes() for p in inputs} == inputs
    assert not Path(out).exists() and sorted(p.name for p in data.iterdir()) == ["mask", "text.json"]


def test_truncated_weight_file_is_one_line(tiny_run, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("pytorch_lora_weights.safetensors", "mogle.safetensors"):
        shutil.copytree(tiny_run, run, dirs_exist_ok=True)
        (run / name).write_bytes((run / name).read_bytes()[:64] if name.startswith("p") else b"")
        res = run_cli(ROOT / "inference.py", "--run", run, "--prompt", "x", "--output", tmp_path / "o.png", "--steps", 1)
        assert res.returncode == 2, res.stderr
        assert_one_line_error(res.stderr, name, "not a readable safetensors file")


def test_non_finite_weights_give_an_error_not_a_black_image(tiny_run, tmp_path):  # noqa: F811
    import torch

    from face_mogle.pipeline import FaceMoGLEPipeline, SamplingError

    pipe = FaceMoGLEPipeline.from_run(tiny_run, device="cpu")
    with torch.no_grad():
        next(pipe.model.mogle.parameters()).fill_(float("nan"))
    with pytest.raises(SamplingError, match="non-finite"):
        pipe("x", None, seeds=[0], steps=1, size=32)
