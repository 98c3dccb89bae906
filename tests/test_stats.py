"""``agents.stats``: confidence intervals and paired differences across seeds."""

import math

import numpy as np
import pytest

from agents.stats import mean_ci95, paired_difference, t_ci95


def test_paired_difference_is_per_user_within_a_seed_then_across_seeds():
    rng = np.random.default_rng(0)
    users = rng.normal(100.0, 30.0, size=(3, 500))  # user effects shared by both agents of a seed
    treatment = [u + 5.0 + rng.normal(0, 1, 500) for u in users]
    control = list(users)
    result = paired_difference(treatment, control)
    per_seed = [np.mean(t - c) for t, c in zip(treatment, control, strict=True)]
    assert result.diff == pytest.approx(np.mean(per_seed))
    assert result.ci95 == pytest.approx(t_ci95(per_seed)[1])
    assert result.positive_in_every_seed and result.diff - result.ci95 > 4.0
    # pairing removes the user effects: the unpaired CI of one seed is ~30x wider
    assert result.per_seed[0][1] * 10 < mean_ci95(treatment[0])[1] + mean_ci95(control[0])[1]


def test_paired_difference_of_one_seed_uses_the_users_ci_and_checks_shapes():
    result = paired_difference([np.array([3.0, 1.0, 2.0])], [np.array([1.0, 1.0, 1.0])])
    assert result.diff == pytest.approx(1.0) and result.ci95 == pytest.approx(1.96 * 1.0 / math.sqrt(3))
    assert not paired_difference([np.array([1.0, -3.0])], [np.zeros(2)]).positive_in_every_seed
    with pytest.raises(ValueError, match="same users"):
        paired_difference([np.zeros(3)], [np.zeros(4)])
    with pytest.raises(ValueError, match="same number"):
        paired_difference([np.zeros(3)], [])


def test_benchmark_seed_ranges_and_lists():
    import argparse
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("long_term", Path(__file__).parent.parent / "benchmarks" / "long_term.py")
    long_term = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(long_term)
    assert long_term.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert long_term.parse_seeds("0,2,5") == [0, 2, 5] and long_term.parse_seeds("3") == [3]
    assert long_term.parse_seeds("0-1,1,7") == [0, 1, 7]
    with pytest.raises(argparse.ArgumentTypeError, match="--seeds 'a-b'"):
        long_term.parse_seeds("a-b")


def test_long_term_passes_ppo_settings_to_every_ppo_agent():
    import importlib.util
    from pathlib import Path

    from experiments.config import ConfigError, load_config

    spec = importlib.util.spec_from_file_location("long_term", Path(__file__).parent.parent / "benchmarks" / "long_term.py")
    long_term = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(long_term)
    args = long_term.parse_args(["--ppo", "vf_coef=0.1", "--ppo", "max_grad_norm=5"])
    keys = long_term.agent_overrides(args, "ce_ppo", 0, Path("pretrained"))
    assert keys[-2:] == ["ppo.vf_coef=0.1", "ppo.max_grad_norm=5"]
    cfg = load_config("default", keys)
    assert (cfg.ppo.vf_coef, cfg.ppo.max_grad_norm, cfg.ppo.learning_rate) == (0.1, 5.0, 3e-4)
    assert "ppo.vf_coef=0.1" not in long_term.agent_overrides(args, "random", 0, None)
    with pytest.raises(SystemExit):
        long_term.parse_args(["--ppo", "vf_coef"])
    with pytest.raises(ConfigError, match="no_such_knob"):
        load_config("default", long_term.agent_overrides(long_term.parse_args(["--ppo", "no_such_knob=1"]), "ce_ppo", 0, None))
