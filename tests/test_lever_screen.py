"""benchmarks/lever_screen.py: one PPO variant from a CE folder, its held-out curve appended as a JSON line."""

import json

import pytest
import torch

from experiments.config import ConfigError
from llm_policy.config import SlatePolicyConfig
from llm_policy.model import SlateModel
from tests.benchmark_scripts import load_benchmark


def load_screen():
    return load_benchmark("lever_screen")


@pytest.fixture
def ce_dir(tmp_path):
    config = SlatePolicyConfig(d_model=16, n_encoder_layers=1, n_encoder_heads=2, n_decoder_layers=1, n_decoder_heads=2,
                               value_hidden=8)
    torch.manual_seed(0)
    return SlateModel(config, torch.randn(2000, 8), context_dim=4).save_pretrained(tmp_path / "ce")


def test_screen_trains_the_variant_and_appends_its_curve(ce_dir, tmp_path, one_torch_thread):
    out = tmp_path / "screen.jsonl"
    argv = ["--ce-dir", str(ce_dir), "--num-envs", "8", "--max-steps", "256", "--eval-every", "128", "--eval-users", "4",
            "--out", str(out), "--ppo", "n_steps=16", "--ppo", "batch_size=64"]
    screen = load_screen()
    first = screen.main([*argv, "--variant", "a"])
    assert [step for step, _, _ in first["curve"]] == [0, 256]
    assert first["ppo"] == ["n_steps=16", "batch_size=64"] and "losses/value_loss" in first["losses"]
    second = screen.main([*argv, "--variant", "a"])
    assert second["curve"] == first["curve"]  # same seed, one thread: same numbers
    assert [json.loads(line)["variant"] for line in out.read_text().splitlines()] == ["a", "a"]
    with pytest.raises(ConfigError, match="no_such_knob"):
        screen.main([*argv, "--variant", "b", "--ppo", "no_such_knob=1"])


def test_screen_control_is_the_long_term_benchmarks_ppo_and_bad_settings_are_refused():
    screen = load_screen()
    control, num_envs = screen.benchmark_ppo_settings(screen.load_long_term(), "ce")
    assert control == ["n_steps=32", "batch_size=512", "n_epochs=4", "learning_rate=0.0003", "ent_coef=0.01"]
    assert num_envs == 64
    with pytest.raises(SystemExit):
        screen.parse_args(["--ce-dir", "ce", "--variant", "a", "--ppo", "vf_coef"])
