"""``benchmarks/offline_variants.py``: saved offline results compared without training."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark


def ndcg10(ranks: np.ndarray) -> np.ndarray:
    return np.where(ranks <= 10, 1 / np.log2(np.asarray(ranks, dtype=np.float64) + 1), 0)


def save(folder, seed, valid, test, name="llm-abc.npz"):
    seed_dir = folder / f"seed_{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    np.savez(seed_dir / name, ranks=np.asarray(test), valid_ranks=np.asarray(valid))


def test_two_variants_are_paired_per_user_on_validation_and_test(tmp_path, capsys):
    bench = load_benchmark("offline_variants")
    rng = np.random.default_rng(0)
    ranks = {(v, s, stage): rng.integers(1, 30, size=40) for v in "ab" for s in (0, 1, 3) for stage in ("valid", "test")}
    for v in "ab":
        for s in (0, 1, 3):
            save(tmp_path / v, s, ranks[v, s, "valid"], ranks[v, s, "test"])
    save(tmp_path / "b", 2, ranks["b", 0, "valid"], ranks["b", 0, "test"])  # only in B: not paired
    result = bench.main([str(tmp_path / "a"), str(tmp_path / "b")])
    assert result["seeds"] == [0, 1, 3]
    for stage in ("valid", "test"):
        diff = np.mean([ndcg10(ranks["a", s, stage]) - ndcg10(ranks["b", s, stage]) for s in (0, 1, 3)], axis=0)
        entry = result[stage]
        assert entry["ndcg@10_diff"] == pytest.approx(diff.mean())
        low, high = entry["ndcg@10_ci95"]
        assert low < entry["ndcg@10_diff"] < high
        assert entry["per_seed"]["1"] == pytest.approx([ndcg10(ranks["a", 1, stage]).mean(),
                                                       ndcg10(ranks["b", 1, stage]).mean()])
    printed = capsys.readouterr().out
    assert f"| test | {result['test']['ndcg@10_diff']:+.4f} |" in printed
    assert bench.main([str(tmp_path / "a"), str(tmp_path / "b"), "--seeds", "1"])["seeds"] == [1]
    with pytest.raises(SystemExit, match=r"seeds \[2\] are not in both folders: .*a has \[0, 1, 3\]"):
        bench.main([str(tmp_path / "a"), str(tmp_path / "b"), "--seeds", "1,2"])


def test_validation_test_agreement_counts_copies_once(tmp_path, capsys):
    bench = load_benchmark("offline_variants")
    # four models whose validation and test NDCG@10 rise together; the better the model, the more top-1 ranks
    for i in range(4):
        good = np.r_[np.ones(i + 1, dtype=int), np.full(10 - i, 50)]
        save(tmp_path / f"run{i}", 0, good, good)
    shutil.copytree(tmp_path / "run3", tmp_path / "copy_of_run3")
    result = bench.main(["--agreement", *(str(p) for p in sorted(tmp_path.iterdir()))])
    assert result["results"] == 4 and result["spearman"] == pytest.approx(1.0)
    assert "4 distinct results in 5 folders" in capsys.readouterr().out
    users = [ndcg10(np.r_[np.ones(i + 1, dtype=int), np.full(10 - i, 50)]) for i in range(4)]
    pairs = [users[i] - users[j] for i in range(4) for j in range(i + 1, 4)]
    assert result["pair_test_diff_rms"] == pytest.approx(np.sqrt(np.mean([d.mean() ** 2 for d in pairs])))
    assert result["pair_test_diff_se"] == pytest.approx(np.mean([d.std(ddof=1) / np.sqrt(11) for d in pairs]))
    # reversed on test: validation ranks them the other way round
    for i in range(4):
        save(tmp_path / f"run{i}", 0, np.r_[np.ones(i + 1, dtype=int), np.full(10 - i, 50)],
             np.r_[np.ones(4 - i, dtype=int), np.full(7 + i, 50)])
    assert bench.main(["--agreement", *(str(tmp_path / f"run{i}") for i in range(4))])["spearman"] == pytest.approx(-1.0)
    with pytest.raises(SystemExit, match="need at least 3 distinct llm results to correlate, found 2"):
        bench.main(["--agreement", str(tmp_path / "run0"), str(tmp_path / "run1"), str(tmp_path / "copy_of_run3"),
                    "--exclude", "copy"])


def test_bad_input_is_named(tmp_path, capsys):
    bench = load_benchmark("offline_variants")
    with pytest.raises(SystemExit):
        bench.parse_args([str(tmp_path)])
    assert "expected two folders to pair (variant A, variant B), got 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args([str(tmp_path), str(tmp_path), "--seeds", "0,x"])
    assert "--seeds '0,x': expected a range (0-4), a list (0,1,2) or one seed" in capsys.readouterr().err
    save(tmp_path / "a", 0, [1], [1], name="llm-one.npz")
    save(tmp_path / "a", 0, [1], [1], name="llm-two.npz")
    with pytest.raises(SystemExit, match="seed_0 holds 2 llm variants .llm-one.npz, llm-two.npz."):
        bench.seed_files(tmp_path / "a", "llm")
    with pytest.raises(SystemExit, match="is not a folder of offline_movielens.py results"):
        bench.seed_files(tmp_path / "missing", "llm")
