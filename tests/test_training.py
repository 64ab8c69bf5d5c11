import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from face_mogle.config import ConfigError, load_config
from face_mogle.data.synthetic import write_dataset
from face_mogle.training import objective
from face_mogle.training.checkpoint import CheckpointError, list_checkpoints
from face_mogle.training.trainer import StepBatches, Trainer, TrainingError, lr_factor, make_optimizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process Trainer gets a fresh accelerate state (it is a process-wide singleton)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, 24, 64, seed=0, progress=False)
    return root


def cfg_for(data, runs, **extra):
    overrides = [
        f"data.root={data}", f"train.runs_dir={runs}", "data.size=32", "data.condition_size=32",
        "train.batch_size=2", "max_sequence_length=48", "train.sample_interval=0", "name=t",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(ROOT / "configs" / "tiny.yaml", overrides)


def weights(run, step):
    return load_file(str(Path(run) / "checkpoints" / f"step-{step}" / "trainable.safetensors"))


def test_objective_matches_design():
    g = objective.step_generator(0, 5, 0, 0)
    t = objective.sample_t(10000, g, "cpu")
    assert 0 < t.min() and t.max() < 1 and abs(t.mean().item() - 0.5) < 0.01  # logit-normal is symmetric
    # the default is exactly sigmoid(N(0, 1)); loc/scale move and widen the logit (train.timestep_sampling)
    assert torch.equal(t, torch.sigmoid(torch.randn(10000, generator=objective.step_generator(0, 5, 0, 0))))
    shifted = objective.sample_t(10000, objective.step_generator(0, 5, 0, 0), "cpu", loc=1.1, scale=0.5)
    logit = torch.log(shifted / (1 - shifted))
    torch.testing.assert_close(logit, torch.logit(t) * 0.5 + 1.1, rtol=1e-4, atol=1e-4)
    assert abs(logit.mean().item() - 1.1) < 0.02 and abs(logit.std().item() - 0.5) < 0.02
    tipped = objective.sample_t(10000, objective.step_generator(0, 5, 0, 0), "cpu", loc=1.1)
    assert (tipped > 0.9).float().mean() > 5 * (t > 0.9).float().mean()  # high noise visited far more often
    x0, eps = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    tt = torch.tensor([0.0, 0.5, 1.0])
    xt, target = objective.noisy_and_target(x0, tt, eps)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], eps[2])
    torch.testing.assert_close(xt[1], 0.5 * x0[1] + 0.5 * eps[1])
    assert torch.equal(target, eps - x0)
    # the same (seed, step, micro, rank) gives the same draws; any change gives others
    a = torch.randn(4, generator=objective.step_generator(1, 2, 0, 0))
    assert torch.equal(a, torch.randn(4, generator=objective.step_generator(1, 2, 0, 0)))
    assert not torch.equal(a, torch.randn(4, generator=objective.step_generator(1, 2, 0, 1)))


def test_step_batches_cover_epochs_and_shard():
    one = StepBatches(10, 2, seed=3)
    epoch0 = [i for k in range(5) for i, e in one.batch(k)]
    assert sorted(epoch0) == list(range(10)) and one.batch(5)[0][1] == 1
    r0, r1 = StepBatches(10, 2, 3, rank=0, world=2), StepBatches(10, 2, 3, rank=1, world=2)
    both = [i for k in range(2) for s in (r0, r1) for i, _ in s.batch(k)]
    assert len(set(both)) == 8  # disjoint across ranks
    with pytest.raises(TrainingError, match="fewer than batch_size"):
        StepBatches(3, 2, 0, world=2)


def test_resume_is_exact(data, tmp_path):
    straight = Trainer(cfg_for(data, tmp_path / "a", **{"train.max_steps": 4, "train.save_interval": 2}))
    losses = straight.train()
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    half = Trainer(cfg_for(data, tmp_path / "b", **{"train.max_steps": 2, "train.save_interval": 2}))
    first = half.train()
    rest = Trainer(cfg_for(data, tmp_path / "b", **{"train.max_steps": 4, "train.save_interval": 2}), resume="latest")
    assert rest.start_step == 2
    second = rest.train()
    assert first + second == losses
    wa, wb = weights(tmp_path / "a" / "t", 4), weights(tmp_path / "b" / "t", 4)
    assert wa.keys() == wb.keys() and len(wa) > 0
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # exported files exist and hold the same LoRA
    la = load_file(str(tmp_path / "a" / "t" / "pytorch_lora_weights.safetensors"))
    lb = load_file(str(tmp_path / "b" / "t" / "pytorch_lora_weights.safetensors"))
    assert all(k.startswith("transformer.") for k in la) and all(torch.equal(la[k], lb[k]) for k in la)


def test_cosine_decay_lays_the_rate_out_over_max_steps(data, tmp_path):
    cfg = cfg_for(data, tmp_path, **{"train.optimizer.type": "adamw", "train.optimizer.lr": 0.01,
                                     "train.optimizer.warmup_steps": 2, "train.optimizer.decay": "cosine",
                                     "train.max_steps": 6})
    optimizer, scheduler = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(3))])
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # warm-up 1/2, 2/2, then 0.01 * (1 + cos(pi * k / 4)) / 2 for k = 0..4: at max_steps the rate is 0
    expected = [0.005, 0.01] + [0.005 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert rates == pytest.approx(expected, abs=1e-12) and rates[-1] == pytest.approx(0.0, abs=1e-12)
    flat_cfg = cfg_for(data, tmp_path, **{"train.optimizer.type": "adamw", "train.optimizer.lr": 0.01, "train.max_steps": 6})
    flat, flat_sched = make_optimizer(flat_cfg, [torch.nn.Parameter(torch.zeros(3))])
    for _ in range(6):
        flat.step()
        flat_sched.step()
    assert flat_cfg.train.optimizer.decay == "constant" and flat.param_groups[0]["lr"] == 0.01  # the default is unchanged
    # a cosine run is laid out over its max_steps: resuming it with another one is refused by name
    Trainer(cfg_for(data, tmp_path, **{"train.optimizer.decay": "cosine", "train.max_steps": 2})).train()
    with pytest.raises(TrainingError, match=r"train\.max_steps \(the cosine decay"):
        Trainer(cfg_for(data, tmp_path, **{"train.optimizer.decay": "cosine", "train.max_steps": 3}), resume="latest")
    with pytest.raises(ConfigError, match="train.optimizer.decay"):
        cfg_for(data, tmp_path, **{"train.optimizer.decay": "linear"})


def test_a_constant_run_resumes_with_a_cool_down_at_its_end(data, tmp_path):
    # decay_steps: the cosine spans only the last steps; the rate is held until then
    assert [lr_factor(s, 1, "cosine", 6, 2) for s in range(7)] == pytest.approx([1, 1, 1, 1, 1, 0.5, 0])
    base = {"train.optimizer.type": "adamw", "train.optimizer.lr": 0.01}
    cool = {**base, "train.optimizer.decay": "cosine", "train.optimizer.decay_steps": 2, "train.max_steps": 4}
    Trainer(cfg_for(data, tmp_path / "a", **base, **{"train.max_steps": 2, "train.save_interval": 2})).train()
    # the two steps taken had the rate the cool-down config gives them, so it may take over ...
    resumed = Trainer(cfg_for(data, tmp_path / "a", **cool), resume="latest")
    resumed.train()
    assert resumed.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    # ... and ends exactly where a run with the cool-down from the start ends
    Trainer(cfg_for(data, tmp_path / "b", **cool)).train()
    wa, wb = weights(tmp_path / "a" / "t", 4), weights(tmp_path / "b" / "t", 4)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], weights(tmp_path / "a" / "t", 2)[k]) for k in wa)
    # a cool-down that would have lowered a step already taken is refused, by name
    with pytest.raises(TrainingError, match=r"train\.optimizer\.decay, train\.optimizer\.decay_steps"):
        Trainer(cfg_for(data, tmp_path / "a", **{**cool, "train.optimizer.decay_steps": 4, "train.max_steps": 4}),
                resume=str(tmp_path / "a" / "t" / "checkpoints" / "step-2"))
    with pytest.raises(ConfigError, match="train.optimizer.decay_steps"):
        cfg_for(data, tmp_path, **{**base, "train.optimizer.decay_steps": 2})


def test_crash_during_save_keeps_previous_checkpoint(data, tmp_path):
    cfg = cfg_for(data, tmp_path, **{"train.max_steps": 4, "train.save_interval": 2})
    with pytest.raises(CheckpointError, match="simulated crash"):
        Trainer(cfg, fail_save_at=4).train()
    run = tmp_path / "t"
    assert [p.name for p in list_checkpoints(run)] == ["step-2"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no half-written folder
    resumed = Trainer(cfg, resume="latest")
    assert resumed.start_step == 2
    resumed.train()
    assert [p.name for p in list_checkpoints(run)] == ["step-2", "step-4"]


def test_nan_loss_stops_with_message(data, tmp_path, monkeypatch):
    cfg = cfg_for(data, tmp_path, **{"train.max_steps": 4, "train.save_interval": 1})
    real = objective.flow_matching_loss
    calls = {"n": 0}

    def sometimes_nan(pred, target):
        calls["n"] += 1
        loss = real(pred, target)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr("face_mogle.training.trainer.flow_matching_loss", sometimes_nan)
    with pytest.raises(TrainingError, match=r"loss became nan at step 3.*step-2"):
        Trainer(cfg).train()
    assert [p.name for p in list_checkpoints(tmp_path / "t")] == ["step-1", "step-2"]


def test_existing_run_needs_resume_and_same_config(data, tmp_path):
    Trainer(cfg_for(data, tmp_path, **{"train.max_steps": 1})).train()
    with pytest.raises(TrainingError, match="--resume latest"):
        Trainer(cfg_for(data, tmp_path, **{"train.max_steps": 2}))
    with pytest.raises(TrainingError, match="model.lora.r"):
        Trainer(cfg_for(data, tmp_path, **{"train.max_steps": 2, "model.lora.r": 8}), resume="latest")


def test_a_base_run_resumes_from_a_cache_of_its_data(data, tmp_path):
    """data.cache_dir may change on resume (same faces and captions, pre-encoded); the cache still
    has to match the config, and a base-mode cache holds no mask maps."""
    from face_mogle.data.cache import build_cache

    base = {"train.mode": "base", "train.max_steps": 1}
    Trainer(cfg_for(data, tmp_path, **base)).train()
    cached = cfg_for(data, tmp_path, **{**base, "train.max_steps": 2, "data.cache_dir": tmp_path / "cache"})
    with pytest.raises(TrainingError, match=r"cannot resume: .* in data\.drop_text_prob \("):  # the cache alone may change
        Trainer(cfg_for(data, tmp_path, **{**base, "train.max_steps": 2, "data.cache_dir": tmp_path / "cache",
                                           "data.drop_text_prob": 0.5}), resume="latest")
    build_cache(cached, "train", batch_size=8, progress=False, log=lambda m: None)
    trainer = Trainer(cached, resume="latest")
    assert trainer.start_step == 1 and not trainer.cache.manifest.get("maps", True)
    losses = trainer.train()
    assert len(losses) == 1 and math.isfinite(losses[0])
    assert set(weights(tmp_path / "t", 2)) == set(weights(tmp_path / "t", 1))
    assert any(not torch.equal(a, weights(tmp_path / "t", 1)[k]) for k, a in weights(tmp_path / "t", 2).items())


def test_another_runs_checkpoint_with_another_lora_rank_is_named_as_such(data, tmp_path):
    Trainer(cfg_for(data, tmp_path, **{"train.max_steps": 1})).train()
    step = tmp_path / "t" / "checkpoints" / "step-1"
    r8 = cfg_for(data, tmp_path, **{"name": "r8", "train.max_steps": 2, "model.lora.r": 8})
    # the checkpoint's recorded config names the key
    with pytest.raises(TrainingError, match=r"differs from the config of checkpoint .*step-1 in model.lora.r"):
        Trainer(r8, resume=str(step))
    # an older checkpoint without that record, from a run folder without its config: its own shapes tell
    import json

    state = json.loads((step / "state.json").read_text())
    (step / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "config"}))
    (tmp_path / "t" / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match=r"step-1 was saved from other layer sizes \(\d+ parameters differ.*there.*here\): was model.lora.r"):
        Trainer(r8, resume=str(step))


def test_resume_refuses_or_states_what_its_checkpoint_was_not_trained_with(data, tmp_path, capsys):
    import json

    split = tmp_path / "train.txt"
    split.write_text("".join(f"{i}\n" for i in range(20)))
    cfg = lambda **kw: cfg_for(data, tmp_path, **{"train.max_steps": 2, "data.train_split": split, **kw})  # noqa: E731
    Trainer(cfg(**{"train.max_steps": 1})).train()
    step1 = tmp_path / "t" / "checkpoints" / "step-1"
    state = json.loads((step1 / "state.json").read_text())
    assert state["num_processes"] == 1 and state["train_split"]["count"] == 20 and state["config"]["name"] == "t"
    # another run's checkpoint into a new name, with another learning rate: the checkpoint's own
    # config decides (its optimizer state would train at 0.001 while the new config.yaml said 0.01)
    with pytest.raises(TrainingError, match=rf"differs from the config of checkpoint {step1} in train.optimizer.lr"):
        Trainer(cfg(name="new", **{"train.optimizer.lr": 0.01}), resume=str(step1))
    assert not (tmp_path / "new").exists()
    # a checkpoint from before this record: the config.yaml of its own run decides
    old = {k: v for k, v in state.items() if k in ("mode", "seed", "step")}
    (step1 / "state.json").write_text(json.dumps(old))
    with pytest.raises(TrainingError, match=rf"differs from {tmp_path / 't' / 'config.yaml'} in train.optimizer.lr"):
        Trainer(cfg(name="new", **{"train.optimizer.lr": 0.01}), resume=str(step1))
    # another process count: allowed (to finish on fewer GPUs), but the changed batch is said
    (step1 / "state.json").write_text(json.dumps(dict(state, num_processes=2)))
    capsys.readouterr()
    assert Trainer(cfg(), resume="latest").start_step == 1
    assert ("warning: the checkpoint was trained by 2 process(es), this launch has 1: the effective batch changes "
            "from 4 to 2") in capsys.readouterr().err
    # the training split lost ids since: the batch order would change
    (step1 / "state.json").write_text(json.dumps(state))
    split.write_text("".join(f"{i}\n" for i in range(19)))
    with pytest.raises(TrainingError, match=r"training split changed since the checkpoint \(20 ids then, 19 now"):
        Trainer(cfg(), resume="latest")
    split.write_text("".join(f"{i}\n" for i in range(20)))
    assert Trainer(cfg(), resume="latest").start_step == 1  # as it was: it continues


def test_one_training_per_run_folder(data, tmp_path, capsys):
    from face_mogle.locks import FolderLock

    sys.path.insert(0, str(ROOT))
    import train as train_script

    (tmp_path / "t").mkdir()
    with FolderLock(tmp_path / "t", "another training"):  # a training at work in runs/t
        with pytest.raises(Exception, match=rf"run folder {tmp_path / 't'} is in use by pid {os.getpid()} "):
            Trainer(cfg_for(data, tmp_path, **{"train.max_steps": 1}))
        capsys.readouterr()
        args = ["--config", str(ROOT / "configs" / "tiny.yaml")]
        for key, value in [("data.root", data), ("train.runs_dir", tmp_path), ("name", "t"), ("train.max_steps", 1)]:
            args += ["--set", f"{key}={value}"]
        assert train_script.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is in use by pid" in err[0]
    # two started together: the first check passes for both; the second finds the run once it may write
    first, second = (Trainer(cfg_for(data, tmp_path, **{"train.max_steps": 1})) for _ in range(2))
    first.train()
    made = {p.name: p.read_bytes() for p in (tmp_path / "t").iterdir() if p.is_file()}
    with pytest.raises(TrainingError, match="already holds a run"):
        second.train()
    assert {p.name: p.read_bytes() for p in (tmp_path / "t").iterdir() if p.is_file()} == made


def test_a_copied_run_folder_resumes_under_its_new_name(data, tmp_path):
    """script/ablation_tiny.sh exports a run's earlier checkpoint from a renamed copy of its folder."""
    import shutil

    Trainer(cfg_for(data, tmp_path, **{"train.max_steps": 4, "train.save_interval": 2})).train()
    copy = tmp_path / "t-at-2"
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "t" / "config.yaml", copy)
    shutil.copytree(tmp_path / "t" / "checkpoints" / "step-2", copy / "checkpoints" / "step-2")
    cut = Trainer(cfg_for(data, tmp_path, **{"name": "t-at-2", "train.max_steps": 2}), resume="latest")
    assert cut.start_step == 2 and cut.train() == []
    exported = load_file(str(copy / "mogle.safetensors"))
    at_2 = weights(tmp_path / "t", 2)
    assert exported and all(torch.equal(v, at_2["mogle." + k]) for k, v in exported.items())
    assert not all(torch.equal(v, weights(tmp_path / "t", 4)["mogle." + k]) for k, v in exported.items())


def test_a_cooled_run_cut_before_its_cool_down_resumes_at_a_held_rate(data, tmp_path):
    """script/ablation_tiny.sh below the full budget: the cut holds its rate, as the full run did until then."""
    import shutil

    cool = {"train.optimizer.type": "adamw", "train.optimizer.warmup_steps": 0, "train.optimizer.decay": "cosine",
            "train.optimizer.decay_steps": 2, "train.max_steps": 4, "train.save_interval": 2}
    Trainer(cfg_for(data, tmp_path, **cool)).train()
    copy = tmp_path / "t-at-2"
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "t" / "config.yaml", copy)
    shutil.copytree(tmp_path / "t" / "checkpoints" / "step-2", copy / "checkpoints" / "step-2")
    # its own cool-down laid over 2 steps would have lowered step 1's rate: refused
    with pytest.raises(TrainingError, match=r"train\.max_steps \(the cosine decay"):
        Trainer(cfg_for(data, tmp_path, **{**cool, "name": "t-at-2", "train.max_steps": 2}), resume="latest")
    held = {"train.optimizer.decay": "constant", "train.optimizer.decay_steps": 0}
    cut = Trainer(cfg_for(data, tmp_path, **{**cool, **held, "name": "t-at-2", "train.max_steps": 2}), resume="latest")
    assert cut.start_step == 2 and cut.train() == []
    exported = load_file(str(copy / "mogle.safetensors"))
    assert exported and all(torch.equal(v, weights(tmp_path / "t", 2)["mogle." + k]) for k, v in exported.items())


def test_finished_run_is_never_overwritten(data, tmp_path):
    """A run folder with exported weights but no checkpoints (cleaned up, copied) is still a run."""
    import shutil

    Trainer(cfg_for(data, tmp_path, **{"train.max_steps": 1})).train()
    run = tmp_path / "t"
    shutil.rmtree(run / "checkpoints")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(TrainingError, match=r"already holds a run \(config.yaml, pytorch_lora_weights.*--overwrite"):
        Trainer(cfg_for(data, tmp_path, **{"train.max_steps": 2}))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # untouched
    # --overwrite starts afresh
    Trainer(cfg_for(data, tmp_path, **{"train.max_steps": 2}), overwrite=True).train()
    assert [p.name for p in list_checkpoints(run)] == ["step-2"]


def test_non_finite_weights_are_never_saved(data, tmp_path):
    trainer = Trainer(cfg_for(data, tmp_path, **{"train.max_steps": 2, "train.save_interval": 1}))
    trainer._save(1)
    name, param = next(iter(trainer.named_trainable.items()))
    with torch.no_grad():
        param.view(-1)[0] = float("inf")  # an update that overflowed while the loss was still finite
    with pytest.raises(TrainingError, match=r"non-finite at step 2 .*nothing saved.*step-1"):
        trainer._save(2)
    assert [p.name for p in list_checkpoints(tmp_path / "t")] == ["step-1"]
    assert torch.isfinite(weights(tmp_path / "t", 1)[name]).all()


def test_resume_latest_skips_a_corrupt_checkpoint(data, tmp_path, capsys):
    cfg = cfg_for(data, tmp_path, **{"train.max_steps": 2, "train.save_interval": 1})
    Trainer(cfg).train()
    run = tmp_path / "t"
    broken = run / "checkpoints" / "step-2" / "trainable.safetensors"
    broken.write_bytes(broken.read_bytes()[:100])  # truncated, as by a full disk
    trainer = Trainer(cfg_for(data, tmp_path, **{"train.max_steps": 3, "train.save_interval": 1}), resume="latest")
    err = capsys.readouterr().err
    assert "step-2 is unreadable" in err and "falling back to" in err and "step-1" in err
    assert trainer.start_step == 1 and trainer.resume_from.name == "step-1"
    for name, p in trainer.named_trainable.items():  # the weights are step 1's
        assert torch.equal(p.detach().cpu(), weights(run, 1)[name])
    # an explicitly named broken checkpoint is an error naming it, not a traceback
    with pytest.raises(TrainingError, match=r"step-2 is unreadable \(.*trainable.safetensors"):
        Trainer(cfg, resume=str(run / "checkpoints" / "step-2"))


@pytest.mark.parametrize("mode", ["mogle", "base"])
def test_export_is_one_unit_and_resume_repairs_it(data, tmp_path, capsys, mode):
    import json
    import shutil

    cfg = cfg_for(data, tmp_path, **{"train.max_steps": 2, "train.save_interval": 1, "train.mode": mode})
    Trainer(cfg).train()
    run = tmp_path / "t"
    record = json.loads((run / "export.json").read_text())
    exported = sorted(record["files"])
    assert record["step"] == 2 and exported and all((run / f).stat().st_size == n for f, n in record["files"].items())
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == [".lock"]  # no temporary leftovers
    # a kill part-way through the export of step 2: one unit replaced by step 1's, or a folder gone
    if mode == "mogle":
        (run / "mogle.safetensors").write_bytes(b"stale")
    else:
        shutil.rmtree(run / "transformer")
    (run / "export.json").unlink()
    trainer = Trainer(cfg, resume="latest")
    assert trainer.start_step == 2 and not trainer.export_is_current(2)
    trainer.train()  # nothing left to train: it repairs the export and says so
    assert "written again" in capsys.readouterr().err
    assert json.loads((run / "export.json").read_text()) == record
    assert trainer.export_is_current(2)


def test_full_disk_is_one_line_and_leftovers_are_cleaned(data, tmp_path, monkeypatch, capsys):
    import errno

    sys.path.insert(0, str(ROOT))
    import train as train_script

    run = tmp_path / "t"
    (run / "checkpoints" / ".step-7.abc.tmp").mkdir(parents=True)  # from a save a kill interrupted
    (run / ".export.xyz.tmp").mkdir()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "checkpoints" / ".step-1.tmp"))

    monkeypatch.setattr("face_mogle.training.trainer.save_checkpoint", full)
    args = ["--config", str(ROOT / "configs/tiny.yaml")] + [a for o in cfg_overrides(data, tmp_path, 1) for a in ("--set", o)]
    assert train_script.main(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (progress bar aside)
    assert len(err) == 1 and "no space left on device at" in err[0] and "--resume latest" in err[0]
    assert "Traceback" not in err[0]
    assert not list(run.rglob("*.tmp"))  # the interrupted saves' folders are gone


def test_runs_dir_mistake_is_named_not_called_a_full_disk(data, tmp_path, monkeypatch, capsys):
    import errno

    sys.path.insert(0, str(ROOT))
    import train as train_script

    afile = tmp_path / "afile"
    afile.write_text("x")
    args = ["--config", str(ROOT / "configs/tiny.yaml")] + [a for o in cfg_overrides(data, afile, 1) for a in ("--set", o)]
    assert train_script.main(args) == 2  # refused before the model is built
    err = capsys.readouterr().err.strip()
    assert err == f"error: cannot make the run folder {afile / 't'}: {afile} is a file, not a folder (check train.runs_dir and name)"

    def denied(*args, **kwargs):  # another write failure during training: no "free space" advice
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "t" / "checkpoints"))

    monkeypatch.setattr("face_mogle.training.trainer.save_checkpoint", denied)
    args = ["--config", str(ROOT / "configs/tiny.yaml")] + [a for o in cfg_overrides(data, tmp_path, 1) for a in ("--set", o)]
    assert train_script.main(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "Permission denied at" in err[0] and "free space" not in err[0]


def cfg_overrides(data, runs, steps):
    return [f"data.root={data}", f"train.runs_dir={runs}", "data.size=32", "data.condition_size=32",
            "train.batch_size=2", "max_sequence_length=48", "train.sample_interval=0", "name=t",
            f"train.max_steps={steps}", "train.tracker=none"]


def run_cli(args, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kw)


def cli_overrides(data, runs, steps):
    return ["--set", f"data.root={data}", "--set", f"train.runs_dir={runs}", "--set", "data.size=32",
            "--set", "data.condition_size=32", "--set", "train.batch_size=2", "--set", "max_sequence_length=48",
            "--set", "train.sample_interval=0", "--set", "name=cli", "--set", f"train.max_steps={steps}",
            "--set", "train.save_interval=2", "--set", "train.tracker=tensorboard"]


def test_cli_errors_are_one_line(data, tmp_path):
    out = run_cli([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/tiny.yaml"),
                   "--set", "train.batchsize=2"])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unknown config key 'train.batchsize'" in out.stderr
    out = run_cli([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/tiny.yaml"),
                   "--set", f"data.root={tmp_path / 'nowhere'}", "--set", f"train.runs_dir={tmp_path}"])
    assert out.returncode == 2 and "data root not found" in out.stderr and "Traceback" not in out.stderr


def test_two_process_ddp_then_resume_single(data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(ROOT / "train.py"), "--config", str(ROOT / "configs/tiny.yaml")] + cli_overrides(data, tmp_path, 2)
    out = run_cli(cmd)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("ranks in sync") == 1 and "2 processes" in out.stdout
    run = tmp_path / "cli"
    assert [p.name for p in list_checkpoints(run)] == ["step-2"]
    assert (run / "logs").is_dir() and (run / "mogle.safetensors").is_file()
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    out = run_cli([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/tiny.yaml"),
                   "--resume", "latest"] + cli_overrides(data, tmp_path, 4))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "trained by 2 process(es), this launch has 1: the effective batch changes from 4 to 2" in out.stderr
    assert [p.name for p in list_checkpoints(run)] == ["step-2", "step-4"]


def test_cached_training_matches_uncached(data, tmp_path):
    from face_mogle.data.cache import build_cache

    plain = Trainer(cfg_for(data, tmp_path / "plain", **{"train.max_steps": 2})).train()
    cfg = cfg_for(data, tmp_path / "cached", **{"train.max_steps": 2, "data.cache_dir": str(tmp_path / "cache")})
    build_cache(cfg, split="train", progress=False, log=lambda *a: None)
    cached = Trainer(cfg).train()
    assert len(cached) == 2
    for a, b in zip(plain, cached):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a))


def test_stale_cache_is_refused(data, tmp_path):
    from face_mogle.data.cache import CacheError, build_cache

    cfg = cfg_for(data, tmp_path, **{"data.cache_dir": str(tmp_path / "cache")})
    build_cache(cfg, split="train", progress=False, log=lambda *a: None)
    stale = cfg_for(data, tmp_path, **{"data.cache_dir": str(tmp_path / "cache"), "model.global_map": "gray"})
    with pytest.raises(CacheError, match="global_map"):
        Trainer(stale)


def test_sample_grid_is_written(data, tmp_path):
    from PIL import Image

    Trainer(cfg_for(data, tmp_path, **{"train.max_steps": 2, "train.sample_interval": 2, "sample.steps": 2})).train()
    grid = Image.open(tmp_path / "t" / "samples" / "step-2.png")
    rows = min(4, len((data / "splits" / "test.txt").read_text().split()))
    assert grid.size == (3 * 32, rows * 32 + 14)  # mask | mask + text | mask only, per validation mask
    pixels = np.asarray(grid.convert("RGB"))[14:, 32:64]
    assert pixels.std() > 0  # a generated image, not a blank tile


def test_prodigy_with_accumulation_and_bf16_autocast(data, tmp_path):
    cfg = cfg_for(data, tmp_path, **{"train.max_steps": 2, "train.grad_accum": 2, "train.optimizer.type": "prodigy",
                                     "train.optimizer.lr": 1.0, "train.mixed_precision": "bf16"})
    trainer = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.named_trainable.items()}
    losses = trainer.train()
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert type(trainer.optimizer.optimizer).__name__ == "Prodigy"
    moved = [n for n, p in trainer.named_trainable.items() if not torch.equal(p.detach(), before[n])]
    assert len(moved) == len(before)  # every trainable tensor was updated


def test_base_mode_trains_the_whole_transformer(data, tmp_path):
    trainer = Trainer(cfg_for(data, tmp_path, **{"train.max_steps": 1, "train.mode": "base"}))
    assert all(n.startswith("transformer.") and "lora" not in n for n in trainer.named_trainable)
    assert len(trainer.named_trainable) == len(list(trainer.backbone.transformer.parameters()))
    trainer.train()
    from diffusers import FluxTransformer2DModel

    exported = FluxTransformer2DModel.from_pretrained(str(tmp_path / "t" / "transformer"))
    for (n, a), b in zip(exported.state_dict().items(), trainer.backbone.transformer.state_dict().values()):
        assert torch.equal(a, b.float()), n
