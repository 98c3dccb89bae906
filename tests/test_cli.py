"""The ``longrec`` CLI: help of every command, envs listing, dry runs, errors before work, a real eval run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from experiments import cli

HELP_MUST_MENTION = {
    "quickstart": ["--config", "KEY=VALUE", "--quiet", "--no-wandb", "longrec quickstart", "PPO + KL"],
    "train": ["--config", "KEY=VALUE", "--dry-run", "--list-keys", "--runs-dir", "--quiet", "ppo.learning_rate=1e-4",
              "agent="],
    "pretrain": ["--config", "data.source=movielens", "data.path", "--quiet"],
    "eval": ["--checkpoint", "eval.num_users", "agent=", "--quiet"],
    "sweep": ["--backend", "local", "wandb", "ray", "--address", "--cpus-per-trial", "--gpus-per-trial", "--workers",
              "--count", "--sweep-id", "method grid|random|bayes", "results.csv", "kl_lr"],
    "compare": ["RUN_DIR", "--by", "--out", "--curve-metric", "--metrics", "--allow-mixed-envs", "95%"],
    "bench": ["name", "env_throughput", "--"],
    "envs": ["longrec envs"],
}


@pytest.mark.parametrize("command", sorted(HELP_MUST_MENTION))
def test_help_of_each_command_names_its_key_options(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: longrec {command}")
    assert "examples:" in out
    for needle in HELP_MUST_MENTION[command]:
        assert needle in out, f"{command} --help lacks {needle!r}"


def test_top_level_help_lists_all_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in HELP_MUST_MENTION:
        assert f"    {command}" in out


def test_python_dash_m_experiments_is_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "experiments", "train", "-c", "smoke", "--dry-run", "seed=9"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "seed: 9" in result.stdout and "name: smoke" in result.stdout


def test_envs_lists_registered_ids_with_one_line_each(capsys):
    assert cli.main(["envs"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    ids = [line.split()[0] for line in lines]
    assert "longrec/Video-v0" in ids and ids == sorted(ids)
    video = next(line for line in lines if line.startswith("longrec/Video-v0"))
    assert "Video platform" in video


def test_dry_run_prints_the_resolved_config(capsys):
    assert cli.main(["train", "-c", "quickstart", "kl.coef=0.2", "--no-wandb", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "kl:\n  coef: 0.2" in out and "wandb: false" in out and "name: quickstart" in out


def test_list_keys_documents_every_key(capsys):
    assert cli.main(["train", "--list-keys"]) == 0
    out = capsys.readouterr().out
    assert "kl.coef" in out and "penalty coefficient beta" in out and "ppo.n_steps" in out


def test_bad_config_fails_before_any_run_folder(tmp_path, capsys):
    code = cli.main(["train", "--runs-dir", str(tmp_path), "ppo.clip_range=-1"])
    assert code == 2
    assert "config key 'ppo.clip_range' must be > 0.0; got -1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert cli.main(["eval", "env.id=longrec/Vidoe-v0", "--runs-dir", str(tmp_path)]) == 2
    assert "did you mean 'longrec/Video-v0'" in capsys.readouterr().err
    assert cli.main(["bench", "env_trhoughput"]) == 2
    assert "did you mean 'env_throughput'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["train", "agent=random", "ppo.learning_rate=1e-3"],
         "`longrec train agent=random` would ignore ppo.learning_rate=0.001 (agent random has nothing to train); "
         "remove them or set their defaults: ppo.learning_rate=0.0003"),
        (["train", "agent=ce_ppo", "slateq.batch_size=64", "kl.coef=0.1"],
         "ignore slateq.batch_size=64 (agent ce_ppo trains with PPO); kl.coef=0.1 (agent ce_ppo has no KL penalty"),
        (["train", "agent=ppo_mlp", "pretrain.epochs=3", "policy.d_model=32"],
         "pretrain.epochs=3 (agent ppo_mlp does not pretrain); policy.d_model=32 (agent ppo_mlp has no LLM policy)"),
        (["train", "agent=ce_ppo_kl", "init_from=somewhere", "data.num_users=10"],
         "data.num_users=10 (init_from replaces pretraining)"),
        (["train", "agent=ce_ppo_kl", "ppo.mlp_net_arch=[8]"], "ppo.mlp_net_arch=[8] (only agent ppo_mlp has an MLP"),
        (["train", "agent=slateq", "ppo.n_steps=8"], "ppo.n_steps=8 (agent slateq trains with SlateQ, not PPO)"),
        (["pretrain", "ppo.n_steps=8", "total_timesteps=10"],
         "`longrec pretrain` would ignore total_timesteps=10, ppo.n_steps=8 (`longrec pretrain` stops after pretraining)"),
        (["pretrain", "-c", "movielens", "pretrain.patience=5", "policy.d_model=32", "data.num_users=5"],
         "would ignore data.num_users=5, pretrain.patience=5, policy.d_model=32 (MovieLens next-item pretraining "
         "reads the movielens section (its model: movielens.train.model))"),
        (["pretrain", "movielens.train.patience=3"],
         "would ignore movielens.train.patience=3 (used with data.source=movielens)"),
        (["eval", "agent=myopic", "ppo.n_epochs=2", "eval.checkpoint=x"],
         "ppo.n_epochs=2 (`longrec eval` evaluates a trained policy (--checkpoint)); eval.checkpoint='x' (agent "
         "myopic has no checkpoint)"),
        (["eval", "agent=ce_ppo"], "evaluating agent=ce_ppo needs its checkpoint: --checkpoint PATH"),
        (["eval", "-c", "smoke", "agent=random"], "env.num_envs=4"),
    ],
)
def test_a_key_the_job_would_ignore_is_an_error_before_any_run_folder(command, expected, tmp_path, capsys):
    assert cli.main([*command, "--runs-dir", str(tmp_path)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # (a third-party import may warn first)
    assert line.startswith(f"longrec {command[0]}: error: ") and expected in line, line
    assert list(tmp_path.iterdir()) == []


def test_bench_lists_scripts(capsys):
    assert cli.main(["bench"]) == 0
    assert "env_throughput" in capsys.readouterr().out


def test_eval_run_end_to_end(tmp_path, capsys):
    code = cli.main(["eval", "-c", "smoke_eval", "agent=myopic", "eval.baselines=[random]", "eval.num_users=16",
                     "env.kwargs.num_items=200", "--runs-dir", str(tmp_path), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| myopic† |" in out and "| random |" in out and "run folder:" in out
    assert "† privileged: reads the simulator's hidden state or true model" in out
    (run_dir,) = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["job_type"] == "eval"
    assert set(summary["agents"]) == {"myopic", "random"}
    # the myopic agent clicks more but keeps users less long (the clickbait trap), as recorded
    assert summary["agents"]["myopic"]["ctr"] > summary["agents"]["random"]["ctr"]
    assert summary["metrics"]["eval/return"] == summary["agents"]["myopic"]["return"]
    assert (run_dir / "plots" / "eval_agents.png").exists() and (run_dir / "tables" / "eval_agents.csv").exists()
    # per-user outcomes of the same 16 users under every agent (for paired differences); their mean is the row's
    from experiments.jobs import load_per_user

    per_user = load_per_user(run_dir)
    assert per_user["myopic/return"].shape == per_user["random/return"].shape == (16,)
    assert per_user["random/return"].mean() == pytest.approx(summary["agents"]["random"]["return"])
    assert per_user["myopic/sessions"].mean() == pytest.approx(summary["agents"]["myopic"]["sessions"])
    assert np.nanmean(per_user["random/retention"]) == pytest.approx(summary["agents"]["random"]["retention"])
    assert per_user["eval_seed"].tolist() == [1000] * 16  # smoke_eval's evaluation seed, per user


@pytest.mark.expensive
def test_train_slateq_then_evaluate_its_checkpoint(tmp_path, capsys):
    """train -> checkpoint -> evaluation of the saved agent, through the CLI (about a minute on 2 cores)."""
    code = cli.main(["train", "-c", "smoke_eval", "agent=slateq", "total_timesteps=2000", "env.num_envs=4",
                     "slateq.learning_starts=200", "slateq.batch_size=64", "--runs-dir", str(tmp_path), "--quiet"])
    assert code == 0
    (run_dir,) = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_checkpoint"] == "checkpoints/slateq.pt"
    assert set(summary["agents"]) == {"slateq", "random"}
    assert any("charts/SPS" in line for line in (run_dir / "metrics.jsonl").read_text().splitlines())


@pytest.mark.expensive
def test_ce_ppo_kl_pipeline_and_reloaded_checkpoint_give_the_same_numbers(tmp_path, capsys):
    """logs -> CE pretraining -> PPO + KL -> evaluation; the saved policy re-evaluates to the same return."""
    args = ["-c", "smoke", "--runs-dir", str(tmp_path / "train"), "--quiet"]
    assert cli.main(["train", *args, "agent=ce_ppo_kl", "eval.baselines=[myopic,pctr_greedy]"]) == 0
    (run_dir,) = list((tmp_path / "train").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["agents"]) == {"ce_ppo_kl", "myopic", "pctr_greedy"}
    assert summary["final_checkpoint"] == "checkpoints/final_policy"
    keys = set().union(*(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()))
    assert {"pretrain/val/ndcg@10", "charts/SPS", "kl/ref"} <= keys
    policy = run_dir / "checkpoints" / "final_policy"
    assert cli.main(["eval", "-c", "smoke_eval", "agent=ce_ppo_kl", "--checkpoint", str(policy), "eval.baselines=[]",
                     "--runs-dir", str(tmp_path / "eval"), "--quiet"]) == 0
    (eval_dir,) = list((tmp_path / "eval").iterdir())
    again = json.loads((eval_dir / "summary.json").read_text())
    assert again["metrics"]["eval/return"] == pytest.approx(summary["metrics"]["eval/return"])


def test_pretrain_on_a_movielens_folder_writes_a_loadable_policy(tmp_path):
    """``longrec pretrain -c movielens data.path=...``: next-item pretraining on real-format data, end to end."""
    from pathlib import Path

    from llm_policy.model import SlateModel

    fixture = Path(__file__).parent / "fixtures" / "ml_tiny"
    args = ["-c", "movielens", f"data.path={fixture}", "text.encoder=tiny", "movielens.train.model.d_model=16",
            "movielens.train.max_epochs=1", "movielens.train.batch_size=4", "--runs-dir", str(tmp_path), "--quiet",
            "--no-wandb"]
    assert cli.main(["pretrain", *args]) == 0
    (run_dir,) = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.0 <= summary["metrics"]["pretrain/test/ndcg@10"] <= 1.0
    model = SlateModel.from_pretrained(summary["pretrained_policy"])
    # the section keeps the next-item model's defaults where the override does not reach
    assert model.config.item_id_embeddings and model.config.causal_encoder and model.config.d_model == 16
    assert model.num_items == 6
