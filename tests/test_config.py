"""Config files, dotted overrides, validation messages, run-folder round trips."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from experiments.config import (
    ConfigError,
    ExperimentConfig,
    available_configs,
    describe_keys,
    field_docs,
    from_dict,
    load_config,
    parse_override,
)
from experiments.run import Run, read_metrics


def test_shipped_configs_load_and_inherit():
    names = available_configs()
    assert {"default", "video", "quickstart", "movielens", "smoke"} <= set(names)
    default, video, quick, movielens = (load_config(n) for n in ("default", "video", "quickstart", "movielens"))
    assert video.total_timesteps == 500_000 and default.total_timesteps == 200_000
    assert video.ppo.learning_rate == default.ppo.learning_rate  # inherited through `extends: default`
    assert quick.name == "quickstart" and quick.env.num_envs == 64 and "logger" in quick.eval.baselines
    assert quick.ppo.learning_rate == default.ppo.learning_rate  # inherited
    assert movielens.data.source == "movielens" and movielens.movielens.train.model.causal_encoder


# Effective values of the shipped configs, key for key: the runs they define. The experiment sections are the
# libraries' config classes, so these pin the library defaults the configs rely on as well.
SHARED = {
    "ppo.n_epochs": 4, "ppo.learning_rate": 3e-4, "ppo.gamma": 0.99, "ppo.gae_lambda": 0.95, "ppo.clip_range": 0.2,
    "ppo.ent_coef": 0.0, "ppo.vf_coef": 0.5, "ppo.max_grad_norm": 0.5, "ppo.reward_scale": 0.1, "ppo.target_kl": None,
    "ppo.log_interval_steps": 0, "kl.coef": 0.05, "kl.target": None, "kl.horizon": 10_000,
    "pretrain.weight_decay": 0.01, "pretrain.val_fraction": 0.1, "pretrain.patience": 2, "pretrain.grad_clip": 1.0,
    "pretrain.eval_k": 10, "slateq.learning_rate": 1e-3, "slateq.batch_size": 1024, "slateq.buffer_size": 100_000,
    "slateq.learning_starts": 5_000, "slateq.gradient_steps": 2, "eval.seeds": [1000],
}
BEFORE = {
    "default": {"total_timesteps": 200_000, "env.num_envs": 64, "data.num_users": 2000, "text.encoder": "minilm",
                "policy.d_model": 64, "policy.n_encoder_layers": 2, "policy.n_decoder_layers": 2,
                "data.behaviour": "logger", "pretrain.target": "click", "pretrain.epochs": 5, "pretrain.batch_size": 256,
                "pretrain.learning_rate": 1e-3, "pretrain.max_batches_per_epoch": None, "ppo.n_steps": 128,
                "ppo.batch_size": 1024, "ppo.checkpoint_every": 50_000, "eval.num_users": 2000},
    "quickstart": {"agent": "ce_ppo", "total_timesteps": 300_000, "env.num_envs": 64, "data.num_users": 400,
                   "data.behaviour": "logger", "text.encoder": "minilm", "policy.d_model": 32,
                   "policy.n_encoder_layers": 1, "policy.n_decoder_layers": 1, "policy.value_hidden": 32,
                   "pretrain.target": "click", "pretrain.epochs": 3, "pretrain.batch_size": 256,
                   "pretrain.learning_rate": 1e-3, "pretrain.max_batches_per_epoch": 30, "ppo.n_steps": 32,
                   "ppo.batch_size": 512, "ppo.ent_coef": 0.01, "ppo.eval_every": 60_000, "ppo.eval_users": 100,
                   "ppo.checkpoint_every": 50_000, "eval.num_users": 200, "torch_threads": 1},
    "smoke": {"total_timesteps": 256, "env.num_envs": 4, "data.num_users": 20, "text.encoder": "tiny",
              "policy.d_model": 16, "policy.n_encoder_layers": 1, "policy.n_decoder_layers": 1,
              "policy.n_encoder_heads": 2, "policy.n_decoder_heads": 2, "pretrain.epochs": 1, "pretrain.batch_size": 32,
              "pretrain.learning_rate": 1e-3, "ppo.n_steps": 32, "ppo.batch_size": 64, "ppo.n_epochs": 1,
              "ppo.checkpoint_every": 128, "eval.num_users": 20},
    "video": {"total_timesteps": 500_000, "env.num_envs": 64, "ppo.n_steps": 128, "ppo.batch_size": 1024,
              "pretrain.epochs": 5, "pretrain.batch_size": 256, "eval.num_users": 2000},
    "movielens": {"env.id": "longrec/MovieLens-v0", "data.source": "movielens", "movielens.min_interactions": 5,
                  "text.encoder": "minilm", "movielens.train.model.d_model": 64,
                  "movielens.train.model.n_encoder_layers": 2, "movielens.train.model.n_decoder_layers": 1,
                  "movielens.train.model.n_encoder_heads": 4, "movielens.train.model.n_decoder_heads": 4,
                  "movielens.train.model.dropout": 0.2, "movielens.train.model.item_id_embeddings": True,
                  "movielens.train.model.encoder": "fresh", "movielens.train.model.causal_encoder": True,
                  "movielens.train.max_epochs": 200, "movielens.train.batch_size": 32, "movielens.train.patience": 15,
                  "movielens.train.learning_rate": 2e-3, "movielens.train.weight_decay": 0.0,
                  "movielens.train.windows": "tail", "total_timesteps": 200_000},
}
INTENDED_JOBS = {"default": ("train", "pretrain"), "quickstart": ("quickstart",), "smoke": ("train",),
                 "video": ("train",), "movielens": ("pretrain", "train"), "smoke_eval": ("train",)}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_shipped_configs_keep_their_effective_values(name):
    flat = load_config(name).flat()
    expected = {**SHARED, **BEFORE[name]}
    assert {key: flat[key] for key in expected} == expected


@pytest.mark.parametrize("name", sorted(INTENDED_JOBS))
def test_shipped_configs_set_no_key_their_jobs_would_ignore(name):
    from experiments.jobs import check_config

    assert name in available_configs()
    for job in INTENDED_JOBS[name]:
        check_config(job, load_config(name))


def test_overrides_are_parsed_with_yaml_rules_and_typed():
    cfg = load_config("default", ["ppo.learning_rate=1e-4", "env.id=longrec/News-v0", "eval.seeds=[1, 2]",
                                  "env.kwargs.horizon_days=10", "total_timesteps=1e5", "logging.wandb=false",
                                  "kl.target=null", "logging.tags=[a, b]", "seed=3"])
    assert cfg.ppo.learning_rate == pytest.approx(1e-4) and isinstance(cfg.ppo.learning_rate, float)
    assert cfg.env.id == "longrec/News-v0"
    assert cfg.eval.seeds == (1, 2)
    assert cfg.env.kwargs == {"horizon_days": 10}
    assert cfg.total_timesteps == 100_000 and isinstance(cfg.total_timesteps, int)
    assert cfg.logging.wandb is False and cfg.kl.target is None and cfg.logging.tags == ("a", "b")
    assert cfg.seed == 3
    # unrelated values keep the file's
    assert cfg.ppo.gamma == load_config("default").ppo.gamma
    assert parse_override("kl.coef=0.1") == ("kl.coef", 0.1)


def test_config_is_frozen_and_override_returns_a_copy():
    cfg = load_config("default")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    other = cfg.override("seed=5", "kl.coef=0")
    assert (cfg.seed, other.seed, other.kl.coef) == (0, 5, 0.0)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("ppo.learnig_rate=1", "unknown config key 'ppo.learnig_rate' (did you mean 'ppo.learning_rate'?)"),
        ("wandb=false", "unknown config key 'wandb' (did you mean 'logging.wandb'?)"),
        ("device=gpu", "config key 'device' must be one of 'auto', 'cpu', 'cuda'; got 'gpu'"),
        ("ppo.gamma=1.5", "config key 'ppo.gamma' must be >= 0.0 and <= 1.0; got 1.5"),
        ("ppo.n_steps=abc", "config key 'ppo.n_steps' expects an int, got 'abc'"),
        ("ppo.n_steps=2.5", "config key 'ppo.n_steps' expects an int, got 2.5"),
        ("env.num_envs=0", "config key 'env.num_envs' must be >= 1; got 0"),
        ("logging.wandb=maybe", "config key 'logging.wandb' expects a bool (true/false), got 'maybe'"),
        ("agent=ppo", "config key 'agent' must be one of 'random', "),
        ("eval.baselines=[randon]", "config key 'eval.baselines[0]' must be one of"),
        ("ppo=3", "config key 'ppo' must be a section (mapping), got 3"),
        ("policy.n_decoder_heads=5", "config section 'policy': d_model=64 must be divisible by n_decoder_heads=5"),
        ("slateq.td_target=td0", "config key 'slateq.td_target' must be one of 'sarsa', 'q_learning'"),
        ("pretrain.val_fraction=1", "config key 'pretrain.val_fraction' must be > 0.0 and < 1.0; got 1.0"),
        ("ppo.kl_coef=0.1", "unknown config key 'ppo.kl_coef'"),
        ("seed", "override 'seed' is not of the form key=value"),
        ("--seed=1", "without leading dashes"),
    ],
)
def test_invalid_values_fail_with_a_message_naming_key_and_choices(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config("default", [override])
    assert expected in str(info.value)


def test_unknown_key_lists_the_valid_keys_of_its_section():
    with pytest.raises(ConfigError) as info:
        load_config("default", ["eval.nusers=3"])
    message = str(info.value)
    assert message.endswith("valid keys in 'eval': num_users, seeds, baselines, checkpoint")


def test_unknown_config_name_and_env_id_suggest_the_closest():
    with pytest.raises(ConfigError, match=r"config 'quikstart' not found .*did you mean 'quickstart'"):
        load_config("quikstart")
    with pytest.raises(ConfigError, match=r"unknown environment 'longrec/Vidoe-v0' \(did you mean 'longrec/Video-v0'"):
        load_config("default", ["env.id=longrec/Vidoe-v0"], check_env_id=True)


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: default\nppo:\n  clip_rang: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'ppo.clip_rang' .*'ppo.clip_range'"):
        load_config(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(loop)


def test_every_field_has_a_one_line_docstring():
    rows = describe_keys()
    assert len(rows) > 50
    missing = [key for key, _, _, doc in rows if not doc]
    assert missing == []
    assert field_docs(ExperimentConfig)["seed"] == "seed of every random generator of the run"
    # the training sections are the libraries' classes, documented where they are defined
    assert dict((key, doc) for key, _, _, doc in rows)["ppo.n_steps"] == "rollout length per environment (user) before each update"
    assert [f.type for f in dataclasses.fields(ExperimentConfig) if f.name in ("policy", "pretrain", "ppo", "kl", "slateq")] \
        == ["SlatePolicyConfig", "PretrainConfig", "PPOConfig", "KLConfig", "SlateQConfig"]


def test_yaml_and_flat_round_trip(tmp_path):
    cfg = load_config("quickstart", ["env.kwargs.horizon_days=5", "eval.seeds=[7, 8]"])
    again = from_dict(ExperimentConfig, yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    flat = cfg.flat()
    assert flat["ppo.learning_rate"] == cfg.ppo.learning_rate and flat["env.kwargs.horizon_days"] == 5


def test_run_folder_layout_metrics_and_summary(tmp_path):
    cfg = load_config("smoke", [f"logging.runs_dir={tmp_path}", "seed=4"])
    with Run.create(cfg, job_type="train") as run:
        assert run.path.parent == tmp_path
        assert run.name.startswith("Video-v0__smoke__4__")
        for step in range(3):
            run.log({"charts/episodic_return": 2.0 * step}, step=100 * step)
        # appended and flushed line by line: readable while the run is still going
        assert [r["charts/episodic_return"] for r in read_metrics(run.path)] == [0.0, 2.0, 4.0]
        assert json.loads(run.summary_path.read_text())["status"] == "running"
        run.update_summary(metrics={"eval/return": 12.5})
        checkpoint = run.checkpoints_dir / "final.zip"
        checkpoint.write_bytes(b"weights")
        run.log_checkpoint(checkpoint)
    assert load_config(run.config_path) == cfg  # resolved config saved with the run
    summary = json.loads(run.summary_path.read_text())
    assert summary["status"] == "finished" and summary["metrics"] == {"eval/return": 12.5}
    assert summary["final_checkpoint"] == "checkpoints/final.zip"
    assert {p.name for p in run.path.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json",
                                                    "checkpoints", "plots"}


def test_failed_run_keeps_traceback_and_metrics(tmp_path):
    cfg = load_config("smoke", [f"logging.runs_dir={tmp_path}"])
    with pytest.raises(ZeroDivisionError):
        with Run.create(cfg) as run:
            run.log({"loss": 1.0}, step=1)
            _ = 1 / 0
    summary = json.loads(run.summary_path.read_text())
    assert summary["status"] == "failed" and summary["error"] == "ZeroDivisionError: division by zero"
    assert "ZeroDivisionError" in (run.path / "error.txt").read_text()
    assert read_metrics(run.path) == [{"step": 1, "time": read_metrics(run.path)[0]["time"], "loss": 1.0}]


def test_truncated_metrics_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1.0}\n{"step": 2, "x": 2.0}\n{"step": 3, "x"')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
