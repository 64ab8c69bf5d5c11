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


# --- issue 28: --set on a section, run names, YAML alias bombs, list contents ----------------------


def test_set_mapping_on_a_section_keeps_the_keys_it_does_not_name(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 200\n  optimizer: {type: adamw, lr: 0.001}\n")
    cfg = load_config(path, ["train={batch_size: 2, optimizer: {weight_decay: 0.5}}"])
    assert cfg.train.batch_size == 2 and cfg.train.max_steps == 200
    opt = cfg.train.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ("adamw", 0.001, 0.5)
    with pytest.raises(ConfigError, match="'train' must be a mapping"):
        load_config(path, ["train=3"])


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "a/b", "", " ", ".", "..", "x" * 300, "a\\b"])
def test_run_name_is_one_folder(name):
    with pytest.raises(ConfigError, match="config key 'name' must be one folder name") as err:
        load_config("configs/tiny.yaml", [f"name={name}"] if name.strip() else [f"name='{name}'"])
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_run_name_accepts_ordinary_names():
    assert load_config("configs/tiny.yaml", ["name=run_2024-05.v2"]).name == "run_2024-05.v2"


def _bomb(levels: int = 6) -> str:
    """A flow list whose last item stands for 9**levels strings through nested aliases."""
    items = ['&a0 [' + ", ".join(["lol"] * 9) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def test_yaml_alias_bomb_is_refused_in_one_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    # the old loader built it and printed the whole expanded value in the type error (at 9 levels:
    # no answer after minutes, gigabytes); 6 levels (531441 strings) keep a failing run short
    path.write_text("train:\n  batch_size: " + _bomb() + "\n")
    with pytest.raises(ConfigError, match="more than 100000 values through its aliases") as err:
        load_config(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="through its aliases"):  # --set values go through the same loader
        load_config("configs/tiny.yaml", ["model.lora.target_modules=" + _bomb()])


def test_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("model:\n  lora:\n    target_modules: &x [*x]\n")
    with pytest.raises(ConfigError, match="through its aliases"):
        load_config(path)


def test_small_aliases_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("data:\n  size: &s 64\n  condition_size: *s\nsample:\n  size: *s\n")
    cfg = load_config(path)
    assert cfg.data.condition_size == cfg.sample.size == 64


def test_error_messages_show_a_bounded_value():
    with pytest.raises(ConfigError) as err:
        load_config("configs/tiny.yaml", ["train.batch_size=[" + ", ".join(["'" + "y" * 500 + "'"] * 500) + "]"])
    assert "'train.batch_size' must be int" in str(err.value) and len(str(err.value)) < 200


@pytest.mark.parametrize("override, needle", [
    ("train.optimizer.betas=[0.9]", "'train.optimizer.betas' must be two numbers in [0, 1)"),
    ("train.optimizer.betas=[0.9, abc]", "'train.optimizer.betas' must be two numbers"),
    ("train.optimizer.betas=[0.9, 1.5]", "'train.optimizer.betas' must be two numbers"),
    ("model.lora.target_modules=[1, 2]", "'model.lora.target_modules' must be a non-empty list"),
    ("model.lora.target_modules=[]", "'model.lora.target_modules' must be a non-empty list"),
    ("model.lora.target_modules=['attn.to_q(']", "'model.lora.target_modules' must be a non-empty list"),
])
def test_list_contents_are_checked(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config("configs/tiny.yaml", [override])
    assert needle in str(err.value)
