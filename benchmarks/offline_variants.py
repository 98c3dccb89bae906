"""Compare saved results of ``benchmarks/offline_movielens.py`` without training anything.

Two questions a screen of model variants raises, answered from the per-user ranks each run saved
(``<out>/seed_<s>/<model>-<digest>.npz``):

* **Variant A against variant B** of one model (two ``--out`` folders, one variant each): NDCG@10 of A minus B,
  paired per user (each user's difference averaged over the seeds both folders hold, then a 95% bootstrap over
  users, ``agents.stats.paired_bootstrap_ci95``), on the validation users (where the kept epoch and the
  calibrations are chosen) and on the test users, with each seed's means.
* **Does validation rank the models as test does?** (``--agreement``): over every distinct saved model of the
  given folders, the Spearman correlation between validation and test NDCG@10. Near zero, choosing variants on
  validation users cannot be expected to lift the test figure. It also sets the size (root mean square) of the test differences
  between two of the models against the users' sampling noise (the mean paired standard error): a spread well
  above it means the models really differ on these test users.

    python benchmarks/offline_variants.py benchmarks/results/offline_movielens_d128_fview_ema \\
        benchmarks/results/offline_movielens_d128_fview --seeds 0,1,2,4
    python benchmarks/offline_variants.py --agreement benchmarks/results/*d128* --exclude 100k

The last line printed is a JSON object of what the tables show.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from agents.stats import paired_bootstrap_ci95
from experiments.seeds import parse_seeds
from llm_policy.metrics import ndcg_at_k

STAGES = {"valid": "valid_ranks", "test": "ranks"}
MODELS = ("llm", "sasrec")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="--out folders of offline_movielens.py")
    p.add_argument("--model", default="llm", choices=MODELS, help="which model's results to read")
    p.add_argument("--seeds", type=parse_seeds, default=None,
                   help="seeds to pair: 0-4, 0,1,2,4 (default: every seed both folders hold)")
    p.add_argument("--agreement", action="store_true",
                   help="correlate validation and test NDCG@10 over every saved model of the folders")
    p.add_argument("--exclude", action="append", default=[],
                   help="with --agreement: skip folders whose name contains this text (repeatable)")
    args = p.parse_args(argv)
    if not args.agreement and len(args.folders) != 2:
        p.error(f"expected two folders to pair (variant A, variant B), got {len(args.folders)}; "
                "--agreement takes any number")
    return args


def seed_files(folder: Path, model: str) -> dict[int, Path]:
    """``{seed: file}`` of ``model`` in ``folder``; refuses a seed with several variants (ambiguous)."""
    if not folder.is_dir():
        raise SystemExit(f"{folder} is not a folder of offline_movielens.py results")
    files = {}
    for seed_dir in sorted(folder.glob("seed_*")):
        found = sorted(seed_dir.glob(f"{model}-*.npz"))
        if len(found) > 1:
            raise SystemExit(f"{seed_dir} holds {len(found)} {model} variants ({', '.join(f.name for f in found)}): "
                             "pair folders that hold one each")
        if found:
            files[int(seed_dir.name.removeprefix("seed_"))] = found[0]
    return files


def user_ndcg(path: Path, key: str) -> np.ndarray:
    """Per-user NDCG@10 of the ranks saved under ``key`` (``ranks``: test, ``valid_ranks``: validation)."""
    with np.load(path) as archive:
        if key not in archive:
            raise SystemExit(f"{path} has no {key!r} (saved before validation ranks were kept)")
        return ndcg_at_k(archive[key], 10).numpy()


def compare_variants(a: Path, b: Path, model: str, seeds: Sequence[int] | None = None) -> dict:
    """NDCG@10 of ``a`` minus ``b`` per stage: paired over users (seeds averaged) and per seed."""
    files_a, files_b = seed_files(a, model), seed_files(b, model)
    common = sorted(set(files_a) & set(files_b))
    seeds = common if seeds is None else list(seeds)
    missing = [s for s in seeds if s not in common]
    if missing or not seeds:
        raise SystemExit(f"seeds {missing or seeds} are not in both folders: {a} has {sorted(files_a)}, "
                         f"{b} has {sorted(files_b)}")
    out: dict[str, object] = {"model": model, "seeds": seeds}
    for stage, key in STAGES.items():
        ndcg_a = np.stack([user_ndcg(files_a[s], key) for s in seeds])
        ndcg_b = np.stack([user_ndcg(files_b[s], key) for s in seeds])
        paired = paired_bootstrap_ci95(ndcg_a, ndcg_b)
        per_seed = {str(s): [float(x.mean()), float(y.mean())] for s, x, y in zip(seeds, ndcg_a, ndcg_b, strict=True)}
        out[stage] = {"ndcg@10_diff": paired.value, "ndcg@10_ci95": [paired.low, paired.high], "per_seed": per_seed}
    return out


def validation_test_agreement(folders: Sequence[Path], model: str) -> dict:
    """Spearman correlation of validation and test NDCG@10 over every distinct saved ``model`` result (files that
    are copies of one another, identical ranks, count once)."""
    results: dict[bytes, tuple[str, dict[str, np.ndarray]]] = {}
    for folder in folders:
        for path in seed_files(folder, model).values():
            ndcg = {stage: user_ndcg(path, key) for stage, key in STAGES.items()}
            results.setdefault(ndcg["valid"].tobytes() + ndcg["test"].tobytes(), (str(path), ndcg))
    if len(results) < 3:
        raise SystemExit(f"need at least 3 distinct {model} results to correlate, found {len(results)} in "
                         f"{', '.join(map(str, folders))}")
    valid, test = (np.array([ndcg[stage].mean() for _, ndcg in results.values()]) for stage in STAGES)
    test_users = [ndcg["test"] for _, ndcg in results.values()]
    rho = spearmanr(valid, test)
    pairs = [a - b for i, a in enumerate(test_users) for b in test_users[i + 1:] if len(a) == len(b)]
    return {"model": model, "results": len(results), "spearman": float(rho.statistic), "p_value": float(rho.pvalue),
            "valid_sd": float(valid.std(ddof=1)), "test_sd": float(test.std(ddof=1)),
            "pair_test_diff_rms": float(np.sqrt(np.mean([d.mean() ** 2 for d in pairs]))),
            "pair_test_diff_se": float(np.mean([d.std(ddof=1) / np.sqrt(len(d)) for d in pairs])),
            "files": {path: {"valid": float(v), "test": float(t)}
                      for (path, _), v, t in zip(results.values(), valid, test, strict=True)}}


def comparison_table(result: dict, a: Path, b: Path) -> str:
    lines = [f"{result['model']}: A = {a}, B = {b}; seeds {', '.join(map(str, result['seeds']))}", "",
             "| users | A − B NDCG@10, paired | 95% CI | A per seed | B per seed |", "| --- | ---: | ---: | --- | --- |"]
    for stage in STAGES:
        entry = result[stage]
        low, high = entry["ndcg@10_ci95"]
        per_a = ", ".join(f"{v[0]:.4f}" for v in entry["per_seed"].values())
        per_b = ", ".join(f"{v[1]:.4f}" for v in entry["per_seed"].values())
        lines.append(f"| {stage} | {entry['ndcg@10_diff']:+.4f} | [{low:+.4f}, {high:+.4f}] | {per_a} | {per_b} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.agreement:
        folders = [f for f in args.folders if not any(text in f.name for text in args.exclude)]
        result = validation_test_agreement(folders, args.model)
        print(f"{args.model}: {result['results']} distinct results in {len(folders)} folders; validation vs test "
              f"NDCG@10 Spearman {result['spearman']:+.3f} (p = {result['p_value']:.2f}); spread across results: "
              f"validation sd {result['valid_sd']:.4f}, test sd {result['test_sd']:.4f}; test NDCG@10 differences "
              f"between two of them: root mean square {result['pair_test_diff_rms']:.4f}, against a mean paired standard error "
              f"over users of {result['pair_test_diff_se']:.4f}")
    else:
        result = compare_variants(*args.folders, args.model, args.seeds)
        print(comparison_table(result, *args.folders))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
