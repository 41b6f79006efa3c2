"""The trainer's configuration: YAML, CLI overrides, errors that name the key, and the saved copy."""

from pathlib import Path

import pytest
import yaml

from trainers.config import TrainConfig, from_dict, load_config, save_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_cli_overrides_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("max_steps: 7\nlr: 0.01\noptimizer: adamw\ninject_spike_steps: [3, 5]\n")
    cfg = load_config(["--config", str(path), "--max-steps", "9", "--no-dashboard", "--trackers", ""])
    assert (cfg.max_steps, cfg.lr, cfg.optimizer, cfg.inject_spike_steps) == (9, 0.01, "adamw", [3, 5])
    assert cfg.dashboard is False and cfg.trackers == []
    assert cfg.seq_len == TrainConfig().seq_len


def test_cli_parses_lists_dicts_and_none():
    cfg = load_config(["--inject-spike-steps", "4,8", "--optimizer-kwargs", '{"reset_interval": 50}',
                       "--run-name", "none", "--lr", "3e-4"])
    assert cfg.inject_spike_steps == [4, 8] and cfg.optimizer_kwargs == {"reset_interval": 50}
    assert cfg.run_name is None and cfg.lr == 3e-4


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("max_step: 10\n")
    with pytest.raises(ValueError, match="'max_step'"):
        load_config(["--config", str(path)])


@pytest.mark.parametrize("key, value", [("max_steps", "ten"), ("lr", "fast"), ("dashboard", 1),
                                        ("inject_spike_steps", [1, "x"]), ("seq_len", 1.5)])
def test_wrong_type_is_an_error_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"'{key}'"):
        from_dict({key: value})


def test_bad_cli_value_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        load_config(["--max-steps", "ten"])
    assert "--max-steps" in capsys.readouterr().err


@pytest.mark.parametrize("values, match", [
    ({"optimizer": "sgd"}, "optimizer"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"density": 0.5, "optimizer": "adamw"}, "density"),
    ({"batch_size": 0}, "batch_size"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"state_bits": 4}, "state_bits"),
    ({"optimizer": "adamw", "state_bits": 8}, "state_bits=8 is an option of spam and stable-spam"),
])
def test_values_out_of_range_are_errors(values, match):
    with pytest.raises(ValueError, match=match):
        from_dict(values)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(["--config", str(tmp_path / "nope.yaml")])


def test_saved_config_is_a_valid_config_again(tmp_path):
    cfg = load_config(["--model", "llama-tiny", "--density", "0.25", "--inject-spike-steps", "2"])
    save_config(cfg, tmp_path / "config.yaml", launch={"num_processes": 2})
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["launch"] == {"num_processes": 2}
    assert load_config(["--config", str(tmp_path / "config.yaml")]) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(["--config", str(path)])
    assert cfg.max_steps > 0
