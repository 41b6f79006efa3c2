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


@pytest.mark.parametrize("values", [{"tune_fraction": -0.1}, {"tune_fraction": 0.95},
                                    {"tune_fraction": 0.5, "val_fraction": 0.5}])
def test_a_tuning_split_must_leave_training_documents(values):
    with pytest.raises(ValueError, match="invalid tune_fraction="):
        from_dict(values)


def test_the_tuning_split_is_off_by_default_and_set_from_the_command_line():
    assert TrainConfig().tune_fraction == 0.0
    cfg = load_config(["--tune-fraction", "0.05", "--val-fraction", "0.05"])
    assert (cfg.tune_fraction, cfg.val_fraction) == (0.05, 0.05)
    with pytest.raises(ValueError, match="tune_fraction"):
        load_config(["--tune-fraction", "0.5", "--val-fraction", "0.5"])


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


def test_the_old_warmup_key_and_flag_still_work_with_a_warning_naming_the_new(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("warmup_steps: 7\n")
    with pytest.warns(FutureWarning, match="'lr_warmup_steps' \\(--lr-warmup-steps\\)"):
        assert load_config(["--config", str(path)]).lr_warmup_steps == 7
    with pytest.warns(FutureWarning, match="--lr-warmup-steps"):
        assert load_config(["--warmup-steps", "3"]).lr_warmup_steps == 3
    with pytest.warns(FutureWarning):  # a new flag overrides an old key of the file
        assert load_config(["--config", str(path), "--lr-warmup-steps", "9"]).lr_warmup_steps == 9
    with pytest.raises(ValueError, match="both 'warmup_steps' and 'lr_warmup_steps'"):
        from_dict({"warmup_steps": 1, "lr_warmup_steps": 2})


def test_typed_spam_options_reach_the_optimizer_and_conflicts_are_errors():
    from trainers.models import build_model
    from trainers.optimizers import build_optimizer

    cfg = load_config(["--spike-threshold", "7", "--reset-interval", "40", "--reset-warmup-steps", "4",
                       "--clip-delay", "3", "--optimizer-kwargs", '{"eps": 1e-7}'])
    group = build_optimizer(cfg, build_model("llama-tiny", 64, 16, 0)).param_groups[0]
    assert (group["threshold"], group["reset_interval"], group["warmup_steps"], group["clip_delay"],
            group["eps"]) == (7.0, 40, 4, 3, 1e-7)
    with pytest.raises(ValueError, match="reset_interval is set twice"):
        from_dict({"reset_interval": 4, "optimizer_kwargs": {"reset_interval": 5}})
    with pytest.raises(ValueError, match="clip_delay: not an option of optimizer 'stable-spam'"):
        from_dict({"optimizer": "stable-spam", "clip_delay": 4})
    stable = from_dict({"optimizer": "stable-spam", "reset_interval": 9})
    assert stable.spam_options() == {"reset_interval": 9}


def test_choice_lists_are_the_library_s_own():
    from spam_opt.monitor.gradient_monitor import MODES
    from trainers.injection import BAD_BATCH_KINDS
    from trainers.optimizers import OPTIMIZERS

    assert set(MODES) == {"tensor", "element"} and "random" in BAD_BATCH_KINDS
    for key, accepted in (("monitor_mode", MODES), ("bad_batch", BAD_BATCH_KINDS), ("optimizer", OPTIMIZERS)):
        with pytest.raises(ValueError, match=f"accepted values are {', '.join(accepted)}"):
            from_dict({key: "nope"})


@pytest.mark.parametrize("values, match", [
    ({"time_limit": "3 hours"}, "time_limit"),
    ({"save_on_signal": ["SIGKILL"]}, "save_on_signal"),
    ({"max_bad_steps": -1}, "max_bad_steps"),
    ({"requeue_exit_code": 300}, "requeue_exit_code"),
])
def test_preemption_options_are_checked(values, match):
    with pytest.raises(ValueError, match=match):
        from_dict(values)


def test_time_limits_read_like_a_scheduler_s():
    from trainers.preemption import parse_duration

    assert [parse_duration(t) for t in ("3h50m", "90m", "45s", "1h0m30s", "7200", "2.5h")] == [
        13800, 5400, 45, 3630, 7200, 9000]
