"""``benchmarks/transfer.py``: target parsing, and a smoke run end to end (source -> zero shot -> fine-tuning)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark


def load_transfer():
    return load_benchmark("transfer")


def test_targets_parse_with_their_env_options():
    transfer = load_transfer()
    assert transfer.parse_target("longrec/Video-v0:catalog_seed=1") == ("longrec/Video-v0", {"catalog_seed": 1})
    assert transfer.parse_target("longrec/News-v0") == ("longrec/News-v0", {})
    assert transfer.target_name("longrec/Video-v0:catalog_seed=1") == "Video-v0_catalog_seed1"


def test_smoke_run_writes_every_record_and_the_json_line(tmp_path, capsys, one_torch_thread):
    transfer = load_transfer()
    args = ["--seeds", "0", "--source-steps", "512", "--finetune-steps", "512", "--eval-users", "4", "--num-envs", "16",
            "--pretrain-users", "12", "--targets", "longrec/Video-v0:catalog_seed=1", "--text-encoder", "tiny",
            "--threads", "1", "--out", str(tmp_path)]
    summary = transfer.main(args)
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(summary))
    zero = summary["zero_shot"]["Video-v0_catalog_seed1"]
    assert set(zero) == {"transfer_rl", "transfer_ce", "ppo_mlp_ids", "slateq_ids", "random", "popularity",
                         "watch_greedy"}
    in_catalog = summary["in_domain"]["ce_ppo"]["return"]
    assert zero["transfer_rl"]["fraction_of_in_domain"] == pytest.approx(zero["transfer_rl"]["return"] / in_catalog)
    # an id agent's fraction is of its own in-catalog return
    for agent in ("ppo_mlp", "slateq"):
        own = summary["in_domain"][agent]["return"]
        assert zero[f"{agent}_ids"]["fraction_of_in_domain"] == pytest.approx(zero[f"{agent}_ids"]["return"] / own)
    paired = summary["zero_shot_paired"]["Video-v0_catalog_seed1"]
    assert set(paired) == {"transfer_rl_minus_random", "transfer_rl_minus_slateq_ids"}  # no counters: no completion_greedy
    users = json.loads((tmp_path / "seed_0" / "Video-v0_catalog_seed1" / "transfer_rl.json").read_text())["returns"]
    randoms = json.loads((tmp_path / "seed_0" / "Video-v0_catalog_seed1" / "random.json").read_text())["returns"]
    assert paired["transfer_rl_minus_random"]["diff"] == pytest.approx(np.mean(np.subtract(users, randoms)))
    tuned = summary["fine_tuned"]["Video-v0_catalog_seed1"]
    assert {"transfer_ft", "target_ce_ppo", "transfer_ft_minus_target_ce_ppo"} <= set(tuned)
    # the transferred policy serves the new catalog: its saved folder records that catalog
    import envs

    saved = json.loads((tmp_path / "seed_0" / "Video-v0_catalog_seed1" / "transferred_policy" / "config.json").read_text())
    assert saved["catalog"] == envs.make_core("longrec/Video-v0", catalog_seed=1).catalog.fingerprint()
    # resumable: a second call reuses every record (nothing retrained) and merges the same numbers
    assert transfer.main(args) == summary


def test_item_statistics_arm_reads_the_targets_own_counters_and_reuses_a_source(tmp_path, capsys, one_torch_thread):
    """``--item-statistics on``: the transferred policy reads the target's logged counters; ``--source-from`` reuses
    a finished source (CE start and ``ce_ppo`` run) instead of training it again."""
    import shutil

    from agents.item_statistics import logged_item_statistics
    from agents.logs import load_logs
    from llm_policy import LLMSlatePolicy

    transfer = load_transfer()
    common = ["--seeds", "0", "--source-steps", "256", "--finetune-steps", "256", "--eval-users", "4", "--num-envs", "16",
              "--pretrain-users", "12", "--targets", "longrec/Video-v0:catalog_seed=1", "--text-encoder", "tiny",
              "--threads", "1", "--item-statistics", "on"]
    first = transfer.main([*common, "--out", str(tmp_path / "first")])
    target = tmp_path / "first" / "seed_0" / "Video-v0_catalog_seed1"
    assert "completion_greedy" in first["zero_shot"]["Video-v0_catalog_seed1"]
    moved = LLMSlatePolicy.from_pretrained(target / "transferred_policy").model
    expected = logged_item_statistics(load_logs(target / "logs.npz"), moved.num_items)
    assert np.abs(expected).sum() > 0
    np.testing.assert_allclose(moved.item_statistics().numpy(), expected, rtol=1e-6)

    finished = tmp_path / "long_term" / "seed_0"  # a benchmarks/long_term.py folder's records of seed 0
    finished.mkdir(parents=True)
    for name in ("pretrain", "ce_ppo"):
        shutil.copy(tmp_path / "first" / "seed_0" / "source" / f"{name}.json", finished / f"{name}.json")
    capsys.readouterr()
    second = transfer.main([*common, "--source-from", str(tmp_path / "long_term"), "--out", str(tmp_path / "second")])
    assert second["in_domain"]["ce_ppo"] == first["in_domain"]["ce_ppo"]
    reused = json.loads((tmp_path / "second" / "seed_0" / "source" / "ce_ppo.json").read_text())
    assert reused["reused_from"] == str(finished)
    with pytest.raises(SystemExit, match="--source-from: .*not found"):
        transfer.main([*common, "--source-from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "third")])
    text_only = [item if item != "on" else "off" for item in common]
    with pytest.raises(SystemExit, match="trained with item_statistics=True, this run has --item-statistics off"):
        transfer.main([*text_only, "--source-from", str(tmp_path / "long_term"), "--out", str(tmp_path / "fourth")])
