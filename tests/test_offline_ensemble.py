"""``benchmarks/offline_ensemble.py``: seed ensembles of the offline benchmark's saved models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

FIXTURE = Path(__file__).parent / "fixtures" / "ml_tiny"


class FixedScorer:
    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores

    def score(self, histories):
        return self.scores[: len(histories)]


def test_the_ensemble_ranks_by_the_mean_log_softmax_of_its_members():
    ensemble = load_benchmark("offline_ensemble").LogSoftmaxEnsemble
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 6)), rng.normal(scale=4.0, size=(3, 6))
    log_softmax = lambda x: x - np.log(np.exp(x).sum(axis=1, keepdims=True))  # noqa: E731
    combined = ensemble([FixedScorer(a), FixedScorer(b)]).score([np.array([1])] * 3)
    np.testing.assert_allclose(combined, (log_softmax(a) + log_softmax(b)) / 2)
    # a member's per-user offset does not change the ensemble: only its distribution over items counts
    shifted = ensemble([FixedScorer(a + np.array([[5.0], [-3.0], [100.0]])), FixedScorer(b)]).score([np.array([1])] * 3)
    np.testing.assert_allclose(shifted, combined, atol=1e-9)
    # one member: the ensemble ranks as that member does
    assert (np.argsort(ensemble([FixedScorer(a)]).score([np.array([1])] * 3)) == np.argsort(a)).all()


def test_members_rebuilt_from_checkpoints_reproduce_their_saved_ranks_and_are_compared_as_ensembles(tmp_path, capsys):
    offline = load_benchmark("offline_movielens")
    runs = tmp_path / "runs"
    offline.main(["--data", str(FIXTURE), "--sasrec-epochs", "2", "--llm-epochs", "2", "--skip-calibration",
                  "--threads", "1", "--out", str(runs), "--seeds", "0-1"])
    capsys.readouterr()
    bench = load_benchmark("offline_ensemble")
    args = [str(runs), "--data", str(FIXTURE), "--checkpoints", str(tmp_path / "elsewhere"), str(runs),
            "--out", str(tmp_path / "ensemble"), "--seeds", "0-1"]
    summary = bench.main(args)
    printed = capsys.readouterr().out
    assert json.loads(printed.strip().splitlines()[-1]) == json.loads(json.dumps(summary))
    assert json.loads((tmp_path / "ensemble" / "ensemble.json").read_text()) == json.loads(json.dumps(summary))
    # the LLM from its checkpoint and SASRec trained again with the saved flags and seed score as saved
    assert set(summary["members"]) == {"llm/seed_0", "llm/seed_1", "sasrec/seed_0", "sasrec/seed_1"}
    for row in summary["members"].values():
        for stage in ("valid", "test"):
            assert row[stage]["same_rank_share"] == 1.0
            assert row[stage]["ndcg@10"] == pytest.approx(row[stage]["saved_ndcg@10"])
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "ensemble").glob("seed_*/*.pt")) == ["sasrec"] * 2
    # the paired difference is the two ensembles' NDCG@10 difference, inside its interval
    for stage in ("valid", "test"):
        diff = summary["paired"]["llm_vs_sasrec"][stage]
        ndcg = {m: summary["ensemble"][m][stage]["ndcg@10"] for m in ("llm", "sasrec")}
        assert diff["ndcg@10_diff"] == pytest.approx(ndcg["llm"] - ndcg["sasrec"], abs=1e-9)
        low, high = diff["ndcg@10_ci95"]
        assert low <= diff["ndcg@10_diff"] <= high
    assert "| test | " in printed and "LLM − SASRec, paired" in printed
    # two-member ensembles: each seed's LLM + SASRec against SASRec + the next seed's SASRec (a ring)
    two = summary["two_member"]
    assert two["members"] == {"llm+sasrec": [[0, 0], [1, 1]], "sasrec+sasrec": [[0, 1], [1, 0]]}
    for stage in ("valid", "test"):
        diff = two["paired"][stage]
        assert diff["ndcg@10_diff"] == pytest.approx(
            two["ndcg@10"][stage]["llm+sasrec"] - two["ndcg@10"][stage]["sasrec+sasrec"], abs=1e-9)
        assert diff["ndcg@10_ci95"][0] <= diff["ndcg@10_diff"] <= diff["ndcg@10_ci95"][1]
        # with two seeds every SASRec pair is the two-seed SASRec ensemble
        assert two["ndcg@10"][stage]["sasrec+sasrec"] == pytest.approx(summary["ensemble"]["sasrec"][stage]["ndcg@10"])
    assert "LLM + SASRec NDCG@10" in printed
    # SASRec's saved weights are reused, not trained again
    assert bench.main(args) == summary
    assert "sasrec epoch=" not in capsys.readouterr().out
    # an ensemble of one seed is that seed's model
    single = bench.main([*args[:-1], "0"])
    assert "two_member" not in single  # one seed has no second SASRec to pair with
    for model in ("llm", "sasrec"):
        for stage in ("valid", "test"):
            assert single["ensemble"][model][stage]["ndcg@10"] == pytest.approx(
                single["members"][f"{model}/seed_0"][stage]["ndcg@10"])


def test_a_missing_checkpoint_or_an_ambiguous_seed_is_refused_by_name(tmp_path):
    bench = load_benchmark("offline_ensemble")
    seed_dir = tmp_path / "runs" / "seed_0"
    seed_dir.mkdir(parents=True)
    ranks = np.array([1, 2])
    for name in ("llm-abc.npz", "sasrec-def.npz", "sasrec-ghi.npz"):
        np.savez(seed_dir / name, ranks=ranks, valid_ranks=ranks, settings=np.array("{}"))
    args = bench.parse_args([str(tmp_path / "runs"), "--seeds", "0", "--checkpoints", str(tmp_path / "ckpt"),
                             "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match=r"no checkpoint of .*llm-abc.npz in .*ckpt/seed_0/llm-abc/best"):
        bench.llm_member(args, 0)
    with pytest.raises(SystemExit, match=r"holds 2 sasrec variants \(sasrec-def.npz, sasrec-ghi.npz\)"):
        bench.results_file(tmp_path / "runs", 0, "sasrec")
    with pytest.raises(SystemExit, match=r"seed_1 holds no llm result"):
        bench.results_file(tmp_path / "runs", 1, "llm")
