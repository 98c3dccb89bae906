"""Multi-seed launching: ``longrec train --seeds`` / ``seeds:`` on the local pool and through W&B agents."""

from __future__ import annotations

import json

import pytest
import yaml

from experiments import cli
from experiments.seeds import seeds_sweep

FAST = ["-c", "smoke_eval", "agent=random", "eval.baselines=[popularity]", "eval.num_users=16",
        "env.kwargs.num_items=200"]


def test_the_seeds_key_runs_one_run_per_seed_in_one_group_and_ends_with_the_cross_seed_table(tmp_path, capsys):
    assert cli.main(["train", *FAST, "seeds=[0,1,2]", "--workers", "2", "--runs-dir", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    (folder,) = (tmp_path / "seeds").iterdir()
    runs = sorted(p for p in folder.iterdir() if (p / "summary.json").exists())
    summaries = [json.loads((p / "summary.json").read_text()) for p in runs]
    assert sorted(s["seed"] for s in summaries) == [0, 1, 2] and {s["status"] for s in summaries} == {"finished"}
    configs = [yaml.safe_load((p / "config.yaml").read_text()) for p in runs]
    assert {c["logging"]["group"] for c in configs} == {folder.name}  # one W&B group: the mean and band
    assert all(c["seeds"] == [] for c in configs)  # a trial is one run, never a launch of its own
    assert "### return: robust aggregates against popularity" not in out  # no default reference among these
    assert "| popularity | 3 |" in out and f"seeds folder: {folder}" in out
    compare_dir = folder / "compare"
    assert (compare_dir / "compare.md").exists() and (compare_dir / "plots" / "performance_profile.png").exists()
    assert (folder / "results.md").exists()


def test_seeds_flag_registers_a_grid_over_seed_with_wandb(tmp_path, monkeypatch, capsys):
    import wandb

    registered, agents = {}, []
    monkeypatch.setattr("experiments.wandb_logging.is_logged_in", lambda: True)
    monkeypatch.setattr(wandb, "sweep", lambda sweep, project=None, entity=None: registered.update(sweep) or "s1")
    monkeypatch.setattr("experiments.sweep.run_wandb_agents", lambda sweep_id, workers: agents.append((sweep_id, workers)) or 0)
    assert cli.main(["train", *FAST, "--seeds", "0-4", "--backend", "wandb", "--workers", "3", "logging.entity=team",
                     "--runs-dir", str(tmp_path)]) == 0
    assert registered["method"] == "grid" and registered["parameters"] == {"seed": {"values": [0, 1, 2, 3, 4]}}
    command = registered["command"]
    assert command[:5] == ["${env}", "longrec", "train", "--config", "smoke_eval"] and command[-1] == "${args_no_hyphens}"
    assert "agent=random" in command and "seeds=[]" in command
    assert any(w.startswith("logging.group=Video-v0__smoke__") for w in command)
    assert agents == [("team/longrec/s1", 3)]
    assert "W&B sweep of 5 seeds: team/longrec/s1" in capsys.readouterr().out


def test_bad_seeds_fail_in_one_line(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--seeds", "0-x"])
    assert "--seeds '0-x': expected a range (0-4), a list (0,1,2) or one seed" in capsys.readouterr().err
    assert seeds_sweep("video", [3, 1], "g")["parameters"] == {"seed": {"values": [3, 1]}}
    assert cli.main(["train", *FAST, "--workers", "2"]) == 2  # nothing silent: --workers alone would be ignored
    assert "--workers 2 / --backend local apply only to a multi-seed launch: add --seeds" in capsys.readouterr().err
