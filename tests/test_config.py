import pytest
import yaml

from face_mogle.config import ConfigError, load_config, save_config, valid_keys


def test_official_config_values():
    cfg = load_config("configs/face-mogle.yaml")
    assert (cfg.data.size, cfg.train.batch_size, cfg.train.grad_clip) == (512, 4, 0.5)
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.init) == (4, 4.0, "gaussian")
    assert cfg.train.optimizer.type == "prodigy" and cfg.train.optimizer.lr == 1.0
    assert cfg.train.optimizer.weight_decay == 0.01 and cfg.train.optimizer.safeguard_warmup
    assert cfg.train.gradient_checkpointing and cfg.train.mixed_precision == "bf16"
    assert cfg.data.drop_text_prob == 0.1 and cfg.data.drop_image_prob == 0.1
    assert cfg.data.drop_mask_prob == 0.0  # the official dropout never drops the global map
    assert len(cfg.model.lora.target_modules) == 13
    assert (cfg.sample.steps, cfg.sample.guidance) == (28, 3.5)
    assert cfg.sample.cfg_scale == 1.0  # FLUX.1-dev is guidance-distilled: no second pass
    assert cfg.sample.text_cfg_scale is None  # = cfg_scale: one joint weight


def test_overrides_are_typed():
    cfg = load_config("configs/tiny.yaml", ["train.batch_size=8", "model.lora.alpha=2", "data.cache_dir=/tmp/c"])
    assert cfg.train.batch_size == 8 and cfg.model.lora.alpha == 2.0 and cfg.data.cache_dir == "/tmp/c"


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.batchsize=8", "'train.batchsize'"),
        ("trian.batch_size=8", "'trian'"),
        ("model.lora.rank=8", "'model.lora.rank'"),
    ],
)
def test_unknown_key_is_named_with_valid_keys(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config("configs/tiny.yaml", [override])
    msg = str(err.value)
    assert needle in msg and "valid keys" in msg and "\n" not in msg


def test_typo_in_yaml_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match="'train.batch_sise'.*did you mean 'batch_size'"):
        load_config(path)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.batch_size=four", "'train.batch_size' must be int"),
        ("train.mode=full", "'train.mode' must be one of"),
        ("data.drop_text_prob=1.5", "'data.drop_text_prob' must be in [0, 1]"),
        ("data.drop_mask_prob=-0.1", "'data.drop_mask_prob' must be in [0, 1]"),
        ("data.size=100", "multiple of 16"),
        ("train.gradient_checkpointing=3", "must be bool"),
        ("model.gate_global_prior=1.0", "'model.gate_global_prior' must be in [0, 1)"),
    ],
)
def test_bad_values(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config("configs/tiny.yaml", [override])
    assert needle in str(err.value)


def test_save_roundtrip(tmp_path):
    cfg = load_config("configs/face-mogle.yaml", ["train.max_steps=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["max_steps"] == 7


def test_valid_keys_cover_sections():
    keys = valid_keys()
    assert "model.lora.r" in keys and "train.optimizer.lr" in keys and "sample.guidance" in keys


def test_timestep_sampling_is_configurable_and_checked():
    from face_mogle.config import ConfigError, load_config

    assert (load_config().train.timestep_sampling.loc, load_config().train.timestep_sampling.scale) == (0.0, 1.0)
    cfg = load_config(None, ["train.timestep_sampling.loc=1.1", "train.timestep_sampling.scale=0.8"])
    assert (cfg.train.timestep_sampling.loc, cfg.train.timestep_sampling.scale) == (1.1, 0.8)
    for bad in ("train.timestep_sampling.scale=0", "train.timestep_sampling.loc=.nan"):
        with pytest.raises(ConfigError, match="timestep_sampling"):
            load_config(None, [bad])


def test_every_float_notation_and_bounds(tmp_path):
    # YAML 1.1 reads "1e-4" (no dot) as text: it is still a float here, in a file and in --set
    cfg = load_config(None, ["train.optimizer.lr=1e-4", "sample.guidance=+2E0"])
    assert cfg.train.optimizer.lr == 1e-4 and cfg.sample.guidance == 2.0
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  optimizer:\n    lr: 3e-4\n")
    assert load_config(path).train.optimizer.lr == 3e-4
    with pytest.raises(ConfigError, match="must be float"):
        load_config(None, ["train.optimizer.lr=fast"])
    for bad, key in (("train.save_interval=0", "train.save_interval"), ("train.max_steps=0", "train.max_steps"),
                     ("train.sample_interval=-1", "train.sample_interval"), ("sample.guidance=.inf", "sample.guidance"),
                     ("sample.max_size=256", "sample.max_size"), ("sample.cfg_scale=0.5", "sample.cfg_scale"),
                     ("sample.cfg_scale=.nan", "sample.cfg_scale"), ("sample.text_cfg_scale=0.5", "sample.text_cfg_scale"),
                     ("sample.text_cfg_scale=.inf", "sample.text_cfg_scale"), ("sample.text_only=none", "sample.text_only")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [bad])


def test_old_global_map_name_is_a_clear_error(tmp_path):
    assert load_config().model.global_map == "palette" == load_config("configs/face-mogle.yaml").model.global_map
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  global_map: official\n")
    with pytest.raises(ConfigError, match=r"old.yaml: .*'official' was renamed.*global_map: gray"):
        load_config(path)
    assert load_config(None, ["model.global_map=gray"]).model.global_map == "gray"
