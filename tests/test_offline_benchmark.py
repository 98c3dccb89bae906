"""``benchmarks/offline_movielens.py`` over seeds: per-seed results saved, resumed, merged with a paired CI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

FIXTURE = Path(__file__).parent / "fixtures" / "ml_tiny"


def load_offline():
    return load_benchmark("offline_movielens")


def test_seeds_are_saved_resumed_and_merged_with_a_paired_ndcg_interval(tmp_path, capsys):
    bench = load_offline()
    args = ["--data", str(FIXTURE), "--sasrec-epochs", "2", "--llm-epochs", "2", "--skip-calibration", "--threads", "1",
            "--out", str(tmp_path)]
    summary = bench.main([*args, "--seeds", "0-1"])
    assert [p.name for p in sorted(tmp_path.glob("seed_*"))] == ["seed_0", "seed_1"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(summary))  # the JSON line is the summary
    assert summary["sasrec"]["seeds"] == 2 and {"hr@10", "ndcg@10", "mrr@10", "ndcg@10_ci95"} <= set(summary["llm"])
    # the paired difference is the per-user NDCG@10 difference averaged over seeds, from the saved ranks
    ranks = [np.load(tmp_path / f"seed_{s}" / "ranks.npz") for s in (0, 1)]
    ndcg = {m: np.mean([np.where(r[f"ranks/{m}"] <= 10, 1 / np.log2(r[f"ranks/{m}"] + 1), 0) for r in ranks], axis=0)
            for m in ("llm", "sasrec")}
    paired = summary["paired"]["llm_vs_sasrec"]
    assert paired["ndcg@10_diff"] == pytest.approx(float((ndcg["llm"] - ndcg["sasrec"]).mean()), abs=1e-6)
    low, high = paired["ndcg@10_ci95"]
    assert low <= paired["ndcg@10_diff"] <= high and paired["users"] == len(ndcg["llm"])
    # finished seeds are not rerun; --merge-only aggregates what is there
    again = bench.main([*args, "--seeds", "0-1"])
    assert "seed 0: done before" in capsys.readouterr().out and again == summary
    assert bench.main([*args, "--merge-only"]) == summary
    settings = bench.seed_settings(tmp_path / "seed_0")
    assert settings["llm_epochs"] == 2 and settings["sasrec_windows"] == "chunks" and "seeds" not in settings
    with pytest.raises(SystemExit, match="was made from .ml_tiny: .* users"):
        bench.load_seed(tmp_path / "seed_0", "ml-latest-small: 610 users, 9742 items, 100836 ratings", settings)
    # a finished seed trained with other flags is refused, on resume and in a merge, naming the flags
    with pytest.raises(SystemExit, match="seed_0/ranks.npz was trained with --llm-epochs 2, not --llm-epochs 3"):
        bench.main([*args[:-2], "--llm-epochs", "3", "--out", str(tmp_path), "--seeds", "0-2"])
    assert not (tmp_path / "seed_2").exists()  # refused before any training
    # a flag added after a seed ran counts as what the code did then (tail windows), not as today's default
    with np.load(tmp_path / "seed_0" / "ranks.npz") as archive:
        files = {key: archive[key] for key in archive.files}
    original = dict(files)
    files["settings"] = np.array(json.dumps({k: v for k, v in settings.items() if k != "sasrec_windows"}))
    np.savez(tmp_path / "seed_0" / "ranks.npz", **files)
    fingerprint = str(files["data"])
    tail = {**settings, "sasrec_windows": "tail"}
    assert bench.load_seed(tmp_path / "seed_0", fingerprint, tail)["llm"].ranks.shape == files["ranks/llm"].shape
    with pytest.raises(SystemExit, match="trained with --sasrec-windows tail, not --sasrec-windows chunks"):
        bench.load_seed(tmp_path / "seed_0", fingerprint, settings)
    np.savez(tmp_path / "seed_0" / "ranks.npz", **original)
    bench.main([*args[:-2], "--out", str(tmp_path / "other"), "--sasrec-windows", "tail", "--seeds", "0"])
    shutil.copytree(tmp_path / "other" / "seed_0", tmp_path / "seed_2")
    with pytest.raises(SystemExit, match="seed_2/ranks.npz was trained with --sasrec-windows tail, not --sasrec-windows chunks"):
        bench.main([*args, "--merge-only"])


def test_window_flags_reach_both_models_configs():
    bench = load_offline()
    default = bench.parse_args([])  # every training item, for both models
    assert bench.sasrec_config(default, 3).windows == "chunks" and bench.sasrec_config(default, 3).seed == 3
    assert bench.llm_config(default).train.windows == "chunks"
    tail = bench.parse_args(["--sasrec-windows", "tail", "--llm-windows", "tail"])
    assert bench.sasrec_config(tail, 0).windows == "tail" and bench.llm_config(tail).train.windows == "tail"
    with pytest.raises(SystemExit):
        bench.parse_args(["--llm-windows", "all"])


def test_recbole_atomic_files_become_a_movielens_folder(tmp_path):
    from envs.movielens import load_movielens

    module = load_benchmark("recbole_to_movielens")
    source = tmp_path / "atomic"
    source.mkdir()
    (source / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                         "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tUnknown\t\tunknown\n")
    (source / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                          "7\t1\t4\t881250949\n7\t2\t3\t881250950\n8\t1\t5\t881250951\n")
    assert module.convert(source, tmp_path / "out") == (3, 2)
    data = load_movielens(tmp_path / "out")
    assert (data.num_users, data.num_items, data.num_interactions) == (2, 2, 3)
    assert data.titles[0] == "Toy Story" and data.years.tolist()[0] == 1995
    assert data.genres[0] == ("Animation", "Children's", "Comedy")
