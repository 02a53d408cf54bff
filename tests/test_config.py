"""Typed config: presets, per-strategy sections, overrides, helpful errors, the CLI's handling of them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from s2s.experiment_config import ExperimentConfig, as_dict, build_config, config_from_dict
from s2s.config import ConfigError, flatten
from s2s.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def config_error(*overrides, strategy="adapter_stage1", preset="tiny") -> str:
    with pytest.raises(UserError) as info:  # a ConfigError, or an UnknownNameError for a strategy name
        build_config(strategy, preset, list(overrides))
    return str(info.value)


# --- unknown keys -------------------------------------------------------------------------

def test_misspelt_key_suggests_the_closest():
    msg = config_error("train.lrr=1")
    assert "train.lrr" in msg and "Did you mean 'train.lr'?" in msg


def test_bare_leaf_name_suggests_the_full_key():
    assert "Did you mean 'train.lr'?" in config_error("lr=1")
    assert "Did you mean 'train.batch_size'?" in config_error("batch_size=4")


def test_misspelt_strategy_key_suggests_the_strategy_section():
    assert "Did you mean 'strategy.expansion_width'?" in config_error("strategy.expansion_widht=8")


def test_override_without_equals_sign_is_explained():
    assert "key=value" in config_error("train.lr")


# --- bad values ---------------------------------------------------------------------------

def test_out_of_range_names_key_and_range():
    msg = config_error("train.lr=-1")
    assert "train.lr" in msg and "out of range" in msg and "[0.0, 1.0]" in msg
    msg = config_error("train.warmup_ratio=2")
    assert "train.warmup_ratio" in msg and "[0.0, 1.0]" in msg and "2" in msg


def test_bad_choice_lists_the_choices():
    msg = config_error("train.schedule=foo")
    assert "train.schedule" in msg and "foo" in msg
    for choice in ("linear", "cosine", "constant"):
        assert choice in msg


@pytest.mark.parametrize("raw", ["abc", "2.5"])
def test_wrong_type_names_key_and_type(raw):
    msg = config_error(f"train.batch_size={raw}")
    assert "train.batch_size" in msg and "int" in msg and raw in msg


def test_bool_and_list_and_none_values_are_coerced():
    cfg = build_config("adapter_stage1", "tiny", ["train.progress=false", "data.sources=a,b",
                                                  "data.language_column=null", "train.batch_size=4",
                                                  "train.lr=1e-4"])
    assert cfg.train.progress is False
    assert cfg.data.sources == ["a", "b"]
    assert cfg.data.language_column is None
    assert cfg.train.batch_size == 4 and isinstance(cfg.train.batch_size, int)
    assert cfg.train.lr == pytest.approx(1e-4)
    assert "true or false" in config_error("train.progress=maybe")


def test_section_key_cannot_take_a_scalar():
    assert "section" in config_error("train=3")


# --- presets and per-strategy sections ----------------------------------------------------

def test_tiny_preset_loads():
    cfg = build_config("adapter_stage1", "tiny")
    assert isinstance(cfg, ExperimentConfig) and cfg.preset == "tiny"
    assert cfg.backbones.build_tiny is True
    assert cfg.backbones.whisper.endswith("tiny/whisper")
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.batch_size == 8 and cfg.train.grad_accum == 1
    assert cfg.synth_if_missing == 240


def test_full_preset_loads_with_the_card_hyperparameters():
    cfg = build_config("adapter_stage1", "full")
    assert cfg.backbones.whisper == "openai/whisper-large-v3"
    assert cfg.backbones.orpheus == "canopylabs/3b-es_it-ft-research_release"
    assert cfg.backbones.snac == "hubertsiuzdak/snac_24khz"
    assert cfg.backbones.build_tiny is False
    assert cfg.data.text_column == "transcript" and cfg.cache.cache_speech_states is False
    t = cfg.train
    assert (t.lr, t.batch_size, t.grad_accum, t.warmup_ratio, t.label_smoothing, t.max_grad_norm, t.epochs) == \
        (5e-5, 2, 16, 0.05, 0.1, 1.0, 3.0)
    assert t.max_steps is None


def test_per_strategy_section_is_applied():
    tiny = build_config("adapter_stage1", "tiny").strategy
    full = build_config("adapter_stage1", "full").strategy
    # AdapterStage1Config.PRESET_VALUES['tiny']
    assert (tiny.adapter_hidden, tiny.expansion_width, tiny.expansion_blocks, tiny.expansion_heads,
            tiny.expansion_ffn) == (256, 64, 2, 4, 256)
    # the full preset has no section: the card-sized defaults
    assert (full.adapter_hidden, full.expansion_width, full.expansion_blocks) == (2048, 1024, 4)


def test_extra_config_file_and_overrides_take_precedence(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("train:\n  lr: 2.0e-4\n  eval_every: 7\nstrategies:\n  adapter_stage1:\n"
                     "    expansion_blocks: 3\n  some_other_strategy:\n    not_a_key: 1\n")
    cfg = build_config("adapter_stage1", "tiny", ["train.eval_every=9"], [str(extra)])
    assert cfg.train.lr == pytest.approx(2e-4)  # file over preset
    assert cfg.train.eval_every == 9  # override over file
    assert cfg.strategy.expansion_blocks == 3  # the chosen strategy's section of the file
    assert cfg.strategy.expansion_width == 64  # the preset's section still applies underneath


def test_bad_value_in_a_yaml_file_is_caught(tmp_path):
    extra = tmp_path / "bad.yaml"
    extra.write_text("train:\n  warmup_ratio: 5\n")
    with pytest.raises(ConfigError, match="train.warmup_ratio"):
        build_config("adapter_stage1", "tiny", [], [str(extra)])
    with pytest.raises(ConfigError, match="does not exist"):
        build_config("adapter_stage1", "tiny", [], [str(tmp_path / "missing.yaml")])


def test_unknown_strategy_suggests_the_closest():
    msg = config_error(strategy="adapter_stage")
    assert "adapter_stage" in msg and "Did you mean 'adapter_stage1'?" in msg


def test_unknown_preset_lists_presets():
    msg = config_error(preset="huge")
    assert "huge" in msg and "tiny" in msg and "full" in msg


def test_round_trip_through_a_plain_dict():
    cfg = build_config("adapter_stage1", "tiny", ["train.lr=3e-4", "data.sources=[x, y]", "strategy.voice=javi",
                                                  "tracking.run_name=abc", "train.max_steps=17"])
    data = as_dict(cfg)
    again = config_from_dict(data)
    assert again == cfg
    assert again.strategy.voice == "javi" and again.train.max_steps == 17 and again.data.sources == ["x", "y"]
    assert flatten(data)["train.lr"] == pytest.approx(3e-4)
    assert flatten(data)["strategy.expansion_width"] == 64


# --- the CLI ------------------------------------------------------------------------------

def run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_config_error_exits_2_with_suggestion_and_no_traceback():
    proc = run_cli("adapter_stage1", "train.lrr=1")
    assert proc.returncode == 2, proc.stderr
    assert "train.lr" in proc.stderr and "Did you mean" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_list_shows_each_strategy_with_its_summary():
    from s2s.strategies import STRATEGIES

    proc = run_cli("--list")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    line = next(line for line in lines if line.split()[0] == "adapter_stage1")
    assert STRATEGIES["adapter_stage1"].summary in line
    assert len(lines) == len(STRATEGIES)


def test_comma_separated_list_override_is_stripped():
    from s2s.experiment_config import build_config
    cfg = build_config("adapter_stage1", "tiny", ["data.sources=data/a, data/b"])
    assert cfg.data.sources == ["data/a", "data/b"]
