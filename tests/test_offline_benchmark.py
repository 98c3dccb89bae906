"""``benchmarks/offline_movielens.py`` over seeds: per-seed results saved, resumed, merged with a paired CI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm_policy.config import LLMNextItemConfig
from tests.benchmark_scripts import load_benchmark

FIXTURE = Path(__file__).parent / "fixtures" / "ml_tiny"


def load_offline():
    return load_benchmark("offline_movielens")


def ndcg10(ranks: np.ndarray) -> np.ndarray:
    return np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0)


def test_seeds_are_saved_resumed_and_merged_with_a_paired_ndcg_interval(tmp_path, capsys):
    bench = load_offline()
    args = ["--data", str(FIXTURE), "--sasrec-epochs", "2", "--llm-epochs", "2", "--skip-calibration", "--threads", "1",
            "--out", str(tmp_path)]
    summary = bench.main([*args, "--seeds", "0-1"])
    assert [p.name for p in sorted(tmp_path.glob("seed_*"))] == ["seed_0", "seed_1"]
    printed = capsys.readouterr().out
    last = printed.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(summary))  # the JSON line is the summary
    assert summary["sasrec"]["seeds"] == 2 and {"hr@10", "ndcg@10", "mrr@10", "ndcg@10_ci95"} <= set(summary["llm"])
    # one file per (seed, model): test and validation ranks; the paired differences are per-user NDCG@10
    # differences averaged over seeds, from those files
    files = {m: [np.load(next((tmp_path / f"seed_{s}").glob(f"{m}-*.npz"))) for s in (0, 1)] for m in ("llm", "sasrec")}
    paired = summary["paired"]["llm_vs_sasrec"]
    for stage, key in (("test", "ranks"), ("valid", "valid_ranks")):
        ndcg = {m: np.mean([ndcg10(f[key]) for f in files[m]], axis=0) for m in files}
        entry = paired if stage == "test" else paired["valid"]
        assert entry["ndcg@10_diff"] == pytest.approx(float((ndcg["llm"] - ndcg["sasrec"]).mean()), abs=1e-6)
        low, high = entry["ndcg@10_ci95"]
        assert low <= entry["ndcg@10_diff"] <= high and entry["users"] == len(ndcg["llm"])
    assert summary["llm"]["valid_ndcg@10"] == pytest.approx(np.mean([ndcg10(f["valid_ranks"]).mean() for f in files["llm"]]))
    # each file also records how training went: validation NDCG@10 per epoch, the kept (best) epoch, the time;
    # SASRec's kept weights score the validation users exactly as that epoch did
    for model, runs in files.items():
        for f in runs:
            curve, best = f["valid_curve"], int(f["best_epoch"])
            assert curve.shape == (2,) and curve[best - 1] == curve.max() and float(f["train_seconds"]) > 0
            if model == "sasrec":
                assert ndcg10(f["valid_ranks"]).mean() == pytest.approx(curve[best - 1], abs=1e-6)
    assert "| llm | 1 | 2 (" in printed and "| sasrec | 0 | 2 (" in printed
    # the LLM's files also keep what was chosen on validation users after training
    for f in files["llm"]:
        calibration = json.loads(str(f["calibration"]))
        grid = {float(w): v for w, v in calibration["features_view_valid_ndcg@10"].items()}
        assert calibration["features_view_weight"] in grid and calibration["text_match_valid_ndcg@10"]
        assert grid[calibration["features_view_weight"]] == max(grid.values())
        assert f"| {calibration['features_view_weight']:g} |" in printed
    assert (tmp_path / bench.CURVES_PLOT).stat().st_size > 0
    saved = json.loads(str(files["llm"][0]["settings"]))
    assert saved["llm_epochs"] == 2 and "sasrec_windows" not in saved and "seeds" not in saved
    # finished seeds are not rerun; --merge-only aggregates what is there
    again = bench.main([*args, "--seeds", "0-1"])
    assert "seed 0: llm done before" in capsys.readouterr().out and again == summary
    assert bench.main([*args, "--merge-only"]) == summary
    with pytest.raises(SystemExit, match="was made from .ml_tiny: .* users"):
        bench.saved_results(tmp_path / "seed_0", "llm", "ml-latest-small: 610 users, 9742 items, 100836 ratings")
    # another LLM variant trains beside the first and reuses SASRec's seeds; each merges on its own flags
    variant = bench.main([*args, "--llm-epochs", "1", "--seeds", "0"])
    assert "seed 0: sasrec done before" in capsys.readouterr().out
    assert len(list((tmp_path / "seed_0").glob("llm-*.npz"))) == 2 and variant["sasrec"]["seeds"] == 1
    assert variant["sasrec"]["ndcg@10"] == pytest.approx(ndcg10(files["sasrec"][0]["ranks"]).mean())
    assert bench.main([*args, "--merge-only"]) == summary
    with pytest.raises(SystemExit, match=r"no seed under .* has both models trained with .*--llm-epochs 5.*"
                                         r"found llm: --llm-epochs 1, llm: --llm-epochs 2"):
        bench.main([*args, "--llm-epochs", "5", "--merge-only"])


def test_each_model_can_train_in_its_own_process_and_the_last_one_merges(tmp_path, capsys):
    bench = load_offline()
    args = ["--data", str(FIXTURE), "--sasrec-epochs", "1", "--llm-epochs", "1", "--skip-calibration", "--threads", "1",
            "--out", str(tmp_path), "--seeds", "0"]
    assert bench.main([*args, "--models", "sasrec"]) == {}
    assert "trained sasrec only; once the other model is done, --merge-only" in capsys.readouterr().out
    assert [p.name.split("-")[0] for p in (tmp_path / "seed_0").glob("*.npz")] == ["sasrec"]
    summary = bench.main([*args, "--models", "llm"])
    assert "seed 0: sasrec done before" not in capsys.readouterr().out  # not even looked at: only the LLM trains
    assert summary["llm"]["seeds"] == summary["sasrec"]["seeds"] == 1
    assert bench.main([*args, "--merge-only"]) == summary
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "sasrec,bert4rec"])
    assert "--models 'sasrec,bert4rec': expected one or more of sasrec, llm" in capsys.readouterr().err


def test_a_flag_added_after_a_result_was_saved_counts_as_what_the_code_did_then():
    bench = load_offline()
    today = bench.model_settings(bench.training_settings(bench.parse_args([])), "sasrec")
    before = {k: v for k, v in today.items() if k != "sasrec_windows"}  # saved before --sasrec-windows existed
    assert bench.differing_flags(before, today) == {"sasrec_windows": ("tail", "chunks")}
    assert bench.differing_flags(before, {**today, "sasrec_windows": "tail"}) == {}
    assert bench.differing_flags({k: v for k, v in today.items() if k != "sasrec_hidden"}, today) == {}
    llm = bench.model_settings(bench.training_settings(bench.parse_args([])), "llm")
    ranked_by_ids_alone = {k: v for k, v in llm.items() if k != "llm_no_features_view"}  # saved before the features view
    assert bench.differing_flags(ranked_by_ids_alone, llm) == {"llm_no_features_view": (True, False)}
    assert bench.differing_flags(ranked_by_ids_alone, {**llm, "llm_no_features_view": True}) == {}


def test_a_legacy_per_seed_file_is_still_read(tmp_path):
    bench = load_offline()
    settings = bench.training_settings(bench.parse_args(["--llm-epochs", "2"]))
    seed_dir = tmp_path / "seed_0"
    seed_dir.mkdir()
    ranks = {m: np.arange(1, 5) * (i + 1) for i, m in enumerate(("popularity", "sasrec", "llm"))}
    np.savez(seed_dir / "ranks.npz", target_train_counts=np.zeros(4), data=np.array("d"),
             settings=np.array(json.dumps(settings)), **{f"ranks/{m}": r for m, r in ranks.items()})
    run, path = bench.find_result(seed_dir, "llm", bench.model_settings(settings, "llm"), "d")
    assert path.name == "ranks.npz" and run.test.ranks.tolist() == ranks["llm"].tolist() and run.valid is None
    assert bench.find_result(seed_dir, "llm", {"llm_epochs": 3}, "d") is None


def test_window_flags_reach_both_models_configs():
    bench = load_offline()
    default = bench.parse_args([])  # every training item, for both models
    assert bench.sasrec_config(default, 3).windows == "chunks" and bench.sasrec_config(default, 3).seed == 3
    assert bench.llm_config(default).train.windows == "chunks"
    tail = bench.parse_args(["--sasrec-windows", "tail", "--llm-windows", "tail"])
    assert bench.sasrec_config(tail, 0).windows == "tail" and bench.llm_config(tail).train.windows == "tail"
    with pytest.raises(SystemExit):
        bench.parse_args(["--llm-windows", "all"])


def test_weight_averaging_and_features_view_flags_reach_the_llm_config():
    bench = load_offline()
    default = bench.llm_config(bench.parse_args([])).train
    assert default.ema_decay is None and default.features_view_grid == LLMNextItemConfig().features_view_grid != ()
    chosen = bench.llm_config(bench.parse_args(["--llm-ema-decay", "0.99", "--llm-no-features-view"])).train
    assert chosen.ema_decay == 0.99 and chosen.features_view_grid == ()


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
