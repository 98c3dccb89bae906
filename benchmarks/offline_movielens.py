"""Offline next-item benchmark on MovieLens: popularity vs SASRec vs the LLM policy.

Runs the protocol of ``agents.offline_protocol`` end to end on CPU (leave-one-out,
full ranking over all items, history items excluded, HR/NDCG/MRR@10, cold-start
buckets by the target item's training interactions):

* ``popularity``: training-interaction counts;
* ``sasrec``: SASRec (Kang & McAuley 2018), ID-only, cross-entropy over all items;
* ``llm``: the LLM slate policy (state encoder over history tokens built from
  all-MiniLM-L6-v2 item-text embeddings, GPT-2 pointer decoder, plus a learned
  text-match term: the cosine between the last clicked movie's text and each
  candidate's) trained on next items over the full catalog; its best weights are saved as a
  ``save_pretrained`` folder that ``LLMSlatePolicy(pretrained_path=...)`` loads for PPO.

Over several training seeds (``--seeds 0-4``) it reports, per model, the mean and
Student-t 95% CI across seeds of HR@10, NDCG@10 and MRR@10, and the paired bootstrap
95% CI over users of LLM minus SASRec NDCG@10 (each user's difference averaged over
the seeds first; ``agents.stats.paired_bootstrap_ci95``), overall and per cold-start
bucket. No choice is made on test users: both models early-stop on validation NDCG@10. Both train on
every training item, cut into windows of the history length + 1 (``--*-windows chunks``); ``tail`` keeps
only each user's last window, as SASRec's reference code (26% of ml-latest-small's training transitions).
Each seed's per-user ranks are saved as it finishes (``<out>/seed_<s>/ranks.npz``, with the
training flags), so seeds can run in separate processes or sessions; finished seeds are not rerun, and
``--merge-only`` aggregates what is there. A finished seed trained with other flags is refused, never mixed in.

It also prints the genre calibration of the ``longrec/MovieLens-v0`` simulator
(Jensen-Shannon divergence of consumed genres under the popularity policy vs
the real ratings). The last line printed is one JSON object
``{model: {"hr@10", "ndcg@10", "mrr@10" (means over seeds), "<metric>_ci95", "seeds"},
"paired": {"llm_vs_sasrec": {"ndcg@10_diff", "ndcg@10_ci95": [low, high], "by_bucket": ...}}}``.

    python benchmarks/offline_movielens.py                      # the project's ml-latest-small, seed 0 (~1 h)
    python benchmarks/offline_movielens.py --seeds 0-4          # 5 seeds and the paired CI (one process per seed works)
    python benchmarks/offline_movielens.py --data ~/ml-25m      # any folder in the same format
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.movielens_pretrain import MovieLensPretrainConfig, pretrain_movielens  # noqa: E402
from agents.offline_protocol import (  # noqa: E402
    EvaluationResult,
    LeaveOneOutSplit,
    PopularityScorer,
    evaluate_next_item,
    format_table,
    leave_one_out_split,
)
from agents.sasrec import SASRecConfig, SASRecScorer, train_sasrec  # noqa: E402
from agents.stats import paired_bootstrap_ci95, t_ci95  # noqa: E402
from envs.atomic_file import atomic_open  # noqa: E402
from envs.movielens import load_movielens  # noqa: E402
from experiments.seeds import parse_seeds  # noqa: E402
from llm_policy.config import TRAINING_WINDOWS, LLMNextItemConfig  # noqa: E402
from llm_policy.metrics import ndcg_at_k  # noqa: E402

Log = Callable[[str], None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="MovieLens folder (default: $LONGREC_MOVIELENS or data/ml-latest-small)")
    p.add_argument("--seeds", type=parse_seeds, default=[0],
                   help="training seeds of SASRec and the LLM: 0-4, 0,1,2 or 3 (default 0)")
    p.add_argument("--merge-only", action="store_true", help="aggregate the finished seeds under --out; train nothing")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (SASRec, evaluation)")
    p.add_argument("--llm-threads", type=int, default=1,
                   help="torch CPU threads while the LLM trains (its many small ops run faster on one thread here)")
    p.add_argument("--sasrec-max-len", type=int, default=50)
    p.add_argument("--sasrec-epochs", type=int, default=200, help="upper bound (early stopping on valid NDCG@10)")
    p.add_argument("--sasrec-batch-size", type=int, default=32)
    p.add_argument("--sasrec-windows", choices=TRAINING_WINDOWS, default="chunks",
                   help="training windows: every training item, in chunks of max_len + 1 (default), or only each "
                        "user's last max_len + 1 items (tail: SASRec's reference code, 26%% of ml-latest-small)")
    p.add_argument("--sasrec-budget-min", type=float, default=60.0,
                   help="wall-clock cap on SASRec training (a safety net: it stops on validation first)")
    p.add_argument("--llm-history", type=int, default=50)
    p.add_argument("--llm-objective", choices=("all_positions", "next_item"), default="all_positions",
                   help="all_positions: causal state encoder, every position of each user's last H + 1 training "
                        "items trained in one pass (as SASRec); next_item: one target per (user, position) example")
    p.add_argument("--llm-windows", choices=TRAINING_WINDOWS, default="chunks",
                   help="all_positions training windows: every training item in chunks of H + 1 (default), "
                        "or only each user's last H + 1 items (tail)")
    p.add_argument("--llm-epochs", type=int, default=200, help="upper bound (early stopping on valid NDCG@10)")
    p.add_argument("--llm-steps-per-epoch", type=int, default=None,
                   help="steps between evaluations (default: a full pass over the training windows / examples)")
    p.add_argument("--llm-batch-size", type=int, default=None,
                   help="windows (all_positions) or examples (next_item) per step (default: LLMNextItemConfig's)")
    p.add_argument("--llm-lr", type=float, default=None, help="default: LLMNextItemConfig's")
    p.add_argument("--llm-weight-decay", type=float, default=None, help="default: LLMNextItemConfig's")
    p.add_argument("--llm-dropout", type=float, default=None, help="default: the model config's")
    p.add_argument("--llm-pooling", choices=("last", "mean"), default=None, help="default: the model config's")
    p.add_argument("--llm-pointer-scale", type=float, default=None,
                   help="pointer-logit multiplier (default: the model config's; 0 = 1/sqrt(d))")
    p.add_argument("--llm-id-min-count", type=int, default=None,
                   help="items with fewer training interactions get no id vector (default: LLMNextItemConfig's)")
    p.add_argument("--llm-id-dropout", type=float, default=None, help="default: the model config's")
    p.add_argument("--llm-lr-decay-patience", type=int, default=None,
                   help="halve the learning rate after this many evaluations without a better valid NDCG@10 "
                        "(default: LLMNextItemConfig's; 0 = after every one)")
    p.add_argument("--llm-patience", type=int, default=None,
                   help="evaluations without a better valid NDCG@10 (default: LLMNextItemConfig's)")
    p.add_argument("--llm-no-popularity", action="store_true", help="score items by their text embedding alone")
    p.add_argument("--llm-no-id-embeddings", action="store_true", help="score by item features alone (no learned item-id embeddings)")
    p.add_argument("--llm-no-release-year", action="store_true", help="leave the release-year features out of the item features")
    p.add_argument("--llm-no-text-match", action="store_true",
                   help="no text-match logit term (cosine between the last clicked movie's text and each candidate's)")
    p.add_argument("--llm-budget-min", type=float, default=120.0,
                   help="wall-clock cap on LLM training (a safety net: it stops on validation first)")
    p.add_argument("--out", default="benchmarks/out/offline_movielens", help="where the LLM checkpoint and metrics go")
    p.add_argument("--skip-calibration", action="store_true", help="do not run the MovieLens-v0 genre calibration")
    return p.parse_args(argv)


MODELS = ("popularity", "sasrec", "llm")
METRICS = ("hr@10", "ndcg@10", "mrr@10")
RESULT_FILE = "ranks.npz"
"""per seed: each model's (U,) test ranks, the targets' training counts and the data folder"""


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    data = load_movielens(args.data)
    split = leave_one_out_split(data.sequences(), data.num_items)
    counts = split.train_item_counts()
    log(
        f"data {data.path}: {data.num_users} users, {data.num_items} items, {data.num_interactions} ratings; "
        f"{split.num_users} users kept (>= 5 interactions); {int((counts == 0).sum())} items never in training"
    )
    out = Path(args.out)
    settings = None if args.merge_only else training_settings(args)
    for seed in [] if args.merge_only else args.seeds:
        seed_dir = out / f"seed_{seed}"
        if (seed_dir / RESULT_FILE).exists():
            load_seed(seed_dir, data_fingerprint(data), settings)  # refuses a seed trained otherwise
            log(f"seed {seed}: done before ({seed_dir / RESULT_FILE}), not rerun")
            continue
        t = time.perf_counter()
        results = {"popularity": evaluate_next_item(PopularityScorer.fit(split), split)}
        results["sasrec"] = run_sasrec(args, seed, split, log)
        results["llm"] = run_llm(args, seed, seed_dir, log)
        save_seed(seed_dir, results, data_fingerprint(data), settings)
        log(f"\nseed {seed}: {time.perf_counter() - t:.0f} s\n{format_table(results)}\n")
    if not args.skip_calibration and not args.merge_only:
        log_genre_calibration(args, data.num_items, log)
    seeds = [s for s in args.seeds if (out / f"seed_{s}" / RESULT_FILE).exists()] if not args.merge_only else \
        sorted(int(p.parent.name.split("_")[1]) for p in out.glob(f"seed_*/{RESULT_FILE}"))
    if not seeds:
        raise SystemExit(f"no finished seed under {out} (each leaves seed_<s>/{RESULT_FILE})")
    if settings is None:  # --merge-only: every seed must have been trained with the first one's flags
        settings = seed_settings(out / f"seed_{seeds[0]}")
        log(f"settings of the seeds: {flags_text(settings)}")
    per_seed = {seed: load_seed(out / f"seed_{seed}", data_fingerprint(data), settings) for seed in seeds}
    summary = merge(per_seed)
    log(f"\ntotal time {time.perf_counter() - start:.0f} s\n")
    log(merged_table(summary, seeds))
    print(json.dumps(summary))
    return summary


def data_fingerprint(data) -> str:
    """What identifies a data set across machines and checkouts: its folder name and its size."""
    return f"{Path(data.path).name}: {data.num_users} users, {data.num_items} items, {data.num_interactions} ratings"


UNSAVED_FLAGS = frozenset({"data", "seeds", "merge_only", "threads", "llm_threads", "out", "skip_calibration"})
"""flags that do not change a seed's trained models (where they run, which seeds, where results go)"""
FLAGS_BEFORE_THEY_EXISTED = {"sasrec_windows": "tail", "llm_windows": "tail"}
"""How a seed saved before one of these flags existed was trained, where today's default differs."""


def training_settings(args: argparse.Namespace) -> dict[str, object]:
    """The flags that shape a seed's models (budgets included), saved with its ranks."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in UNSAVED_FLAGS}


def flags_text(settings: Mapping[str, object]) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())


def save_seed(seed_dir: Path, results: Mapping[str, EvaluationResult], fingerprint: str,
              settings: Mapping[str, object]) -> Path:
    """One seed's per-user test ranks of every model and the flags that trained them, written atomically
    (its presence marks the seed done)."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    first = next(iter(results.values()))
    with atomic_open(seed_dir / RESULT_FILE, "wb") as handle:
        np.savez(handle, target_train_counts=first.target_train_counts, data=np.array(fingerprint),
                 settings=np.array(json.dumps(settings)), **{f"ranks/{name}": res.ranks for name, res in results.items()})
    return seed_dir / RESULT_FILE


def seed_settings(seed_dir: Path) -> dict[str, object]:
    """The training flags a finished seed was run with."""
    with np.load(seed_dir / RESULT_FILE) as archive:
        return _saved_settings(archive, seed_dir)


def _saved_settings(archive: Any, seed_dir: Path) -> dict[str, object]:
    if "settings" not in archive:
        raise SystemExit(f"{seed_dir / RESULT_FILE} records no training flags (written before they were "
                         "saved): rerun that seed")
    return json.loads(str(archive["settings"]))


def load_seed(seed_dir: Path, fingerprint: str, settings: Mapping[str, object]) -> dict[str, EvaluationResult]:
    """A finished seed's results; refuses one made from other data or with other training flags."""
    with np.load(seed_dir / RESULT_FILE) as archive:
        saved = str(archive["data"])
        if saved != fingerprint:
            raise SystemExit(f"{seed_dir / RESULT_FILE} was made from {saved!r}, not {fingerprint!r}: "
                             "give another --out for another data set")
        counts = archive["target_train_counts"]
        results = {name: EvaluationResult(archive[f"ranks/{name}"], counts) for name in MODELS}
        saved_settings = _saved_settings(archive, seed_dir)
    # a flag added after the seed ran counts as what the code did before the flag existed
    defaults = {**training_settings(parse_args([])), **FLAGS_BEFORE_THEY_EXISTED}
    value = lambda flags, k: flags.get(k, defaults.get(k))  # noqa: E731
    differ = sorted(k for k in set(saved_settings) | set(settings) if value(saved_settings, k) != value(settings, k))
    if differ:
        raise SystemExit(
            f"{seed_dir / RESULT_FILE} was trained with {flags_text({k: value(saved_settings, k) for k in differ})}, "
            f"not {flags_text({k: value(settings, k) for k in differ})}: give the same flags or another --out"
        )
    return results


def merge(per_seed: Mapping[int, Mapping[str, EvaluationResult]]) -> dict[str, dict]:
    """Means and t-CIs across seeds per model; the paired bootstrap of LLM minus SASRec NDCG@10 over users."""
    summary: dict[str, dict] = {}
    for name in MODELS:
        rows = [results[name].metrics() for results in per_seed.values()]
        summary[name] = {"seeds": len(rows)}
        for metric in METRICS:
            mean, half = t_ci95([row[metric] for row in rows])
            summary[name][metric], summary[name][f"{metric}_ci95"] = mean, half
    summary["paired"] = {"llm_vs_sasrec": paired_ndcg(per_seed, "llm", "sasrec")}
    return summary


def paired_ndcg(per_seed: Mapping[int, Mapping[str, EvaluationResult]], treatment: str, control: str,
                k: int = 10) -> dict[str, object]:
    """``treatment - control`` NDCG@k per user (averaged over seeds), with bootstrap CIs, overall and per bucket."""
    ndcg = {name: np.stack([ndcg_at_k(results[name].ranks, k).numpy() for results in per_seed.values()])
            for name in (treatment, control)}
    first = next(iter(per_seed.values()))[treatment]
    overall = paired_bootstrap_ci95(ndcg[treatment], ndcg[control])
    out: dict[str, object] = {f"ndcg@{k}_diff": overall.value, f"ndcg@{k}_ci95": [overall.low, overall.high],
                              "users": int(ndcg[treatment].shape[1]), "by_bucket": {}}
    buckets = first.bucket_of_user()
    for b, label in enumerate(first.by_bucket()):
        rows = buckets == b
        if rows.sum() < 2:
            continue
        result = paired_bootstrap_ci95(ndcg[treatment][:, rows], ndcg[control][:, rows])
        out["by_bucket"][label] = {f"ndcg@{k}_diff": result.value, f"ndcg@{k}_ci95": [result.low, result.high],
                                   "users": int(rows.sum())}
    return out


def merged_table(summary: Mapping[str, dict], seeds: Sequence[int]) -> str:
    """Markdown: each model's mean ± 95% CI across seeds, then the paired LLM - SASRec NDCG@10."""
    lines = [f"seeds {', '.join(map(str, seeds))}: mean ± 95% t-CI across seeds", "",
             "| model | HR@10 | NDCG@10 | MRR@10 |", "| --- | ---: | ---: | ---: |"]
    fmt = lambda mean, half: f"{mean:.4f}" + ("" if not np.isfinite(half) else f" ± {half:.4f}")  # noqa: E731
    for name in MODELS:
        row = summary[name]
        lines.append(f"| {name} | " + " | ".join(fmt(row[m], row[f"{m}_ci95"]) for m in METRICS) + " |")
    paired = summary["paired"]["llm_vs_sasrec"]
    lines += ["", "LLM - SASRec NDCG@10, paired per user (seeds averaged), 95% bootstrap CI over users:", "",
              "| users | difference | 95% CI | |", "| --- | ---: | ---: | --- |"]
    entries = [("all", paired), *paired["by_bucket"].items()]
    for label, entry in entries:
        low, high = entry["ndcg@10_ci95"]
        verdict = "LLM better" if low > 0 else "SASRec better" if high < 0 else "no difference shown"
        name = "all" if label == "all" else f"target seen {label} times"
        lines.append(f"| {name} ({entry['users']}) | {entry['ndcg@10_diff']:+.4f} | [{low:+.4f}, {high:+.4f}] | "
                     f"{verdict} |")
    return "\n".join(lines)


def sasrec_config(args: argparse.Namespace, seed: int) -> SASRecConfig:
    """The ``--sasrec-*`` flags as a ``SASRecConfig`` for ``seed``."""
    return SASRecConfig(
        max_len=args.sasrec_max_len,
        max_epochs=args.sasrec_epochs,
        batch_size=args.sasrec_batch_size,
        windows=args.sasrec_windows,
        seed=seed,
        time_budget_s=60.0 * args.sasrec_budget_min,
    )


def run_sasrec(args: argparse.Namespace, seed: int, split: LeaveOneOutSplit, log: Log) -> EvaluationResult:
    """Train SASRec with the ``--sasrec-*`` settings; its test evaluation."""
    t = time.perf_counter()
    sasrec, sasrec_log = train_sasrec(split, sasrec_config(args, seed), progress=log)
    result = evaluate_next_item(SASRecScorer(sasrec), split)
    log(f"sasrec: {sasrec_log.epochs} epochs, best epoch {sasrec_log.best_epoch}, {time.perf_counter() - t:.0f} s")
    return result


def llm_config(args: argparse.Namespace) -> MovieLensPretrainConfig:
    """The ``--llm-*`` flags over ``LLMNextItemConfig``'s defaults (unset flags keep them)."""
    base = LLMNextItemConfig()
    objective = args.llm_objective
    given = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731
    model_config = dataclasses.replace(
        base.model,
        item_id_embeddings=not args.llm_no_id_embeddings,
        causal_encoder=objective == "all_positions",
        **given(dropout=args.llm_dropout, pooling=args.llm_pooling, item_id_dropout=args.llm_id_dropout),
    )
    if args.llm_pointer_scale is not None:
        model_config = dataclasses.replace(model_config, pointer_scale=args.llm_pointer_scale or None)
    return MovieLensPretrainConfig(
        popularity_feature=not args.llm_no_popularity,
        release_year_feature=not args.llm_no_release_year,
        text_match=not args.llm_no_text_match,
        train=dataclasses.replace(
            base,
            model=model_config,
            objective=objective,
            history_length=args.llm_history,
            max_epochs=args.llm_epochs,
            time_budget_s=60.0 * args.llm_budget_min,
            **given(
                batch_size=args.llm_batch_size, steps_per_epoch=args.llm_steps_per_epoch, learning_rate=args.llm_lr,
                weight_decay=args.llm_weight_decay, patience=args.llm_patience,
                lr_decay_patience=args.llm_lr_decay_patience, id_min_count=args.llm_id_min_count,
            ),
            windows=args.llm_windows,
        ),
    )


def run_llm(args: argparse.Namespace, seed: int, out: Path, log: Log) -> EvaluationResult:
    """Next-item pretraining of the LLM policy (``pretrain_movielens``, on ``--llm-threads``); its test evaluation."""
    t = time.perf_counter()
    torch.set_num_threads(args.llm_threads)
    llm = pretrain_movielens(llm_config(args), data_path=args.data, seed=seed, output_dir=out,
                             progress=log)
    torch.set_num_threads(args.threads)
    train_log = llm.train_log
    log(
        f"llm ({args.llm_objective}): {train_log['epochs']} epochs ({train_log['examples_seen']} examples, "
        f"{train_log['targets_seen']} targets), best epoch "
        f"{train_log['best_epoch']}, {time.perf_counter() - t:.0f} s (incl. item-text encoding); "
        f"checkpoint: {llm.best_dir}"
    )
    return llm.test


def log_genre_calibration(args: argparse.Namespace, num_items: int, log: Log) -> None:
    """Genre JSD of ``longrec/MovieLens-v0`` under the popularity policy vs the real ratings."""
    from envs.movielens_preset import genre_calibration

    candidates = min(20, num_items)
    report = genre_calibration(
        num_users=512, num_steps=200, seed=args.seeds[0], data_path=args.data,
        num_candidates=candidates, slate_size=min(5, candidates),
    )
    log(
        f"longrec/MovieLens-v0 calibration: genre JSD (popularity policy vs real ratings, 512 users x 200 steps, "
        f"{report['clicks']} clicks) = {report['jsd']:.4f}"
    )


if __name__ == "__main__":
    main()
