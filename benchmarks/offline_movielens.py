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
Each model's per-user test and validation ranks for a seed are saved as it finishes
(``<out>/seed_<s>/<model>-<digest of its flags>.npz``, with those flags), so seeds can run in separate processes or
sessions (``--models sasrec`` and ``--models llm`` train the two side by side); a finished (seed, model) is never
rerun. A variant of one model (other ``--llm-*`` flags) trains beside the
saved ones and reuses the other model's seeds, and ``--merge-only`` with the same flags aggregates that variant: a
result is only ever merged with the flags it was trained with. The merge also reports validation NDCG@10 and its
paired difference, the numbers on which a variant may be chosen. Each file also keeps the model's validation
NDCG@10 after every epoch, the epoch it kept and its training time; the merge tabulates them per seed and plots the
curves (``<out>/validation_curves.png``), so a screen compares with earlier runs without rerunning them.

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
import hashlib
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

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
from experiments.compare import save_figure  # noqa: E402
from experiments.seeds import parse_seeds  # noqa: E402
from llm_policy.config import TRAINING_WINDOWS, LLMNextItemConfig  # noqa: E402
from llm_policy.metrics import ndcg_at_k  # noqa: E402

Log = Callable[[str], None]


MODELS = ("popularity", "sasrec", "llm")
TRAINED = ("sasrec", "llm")
"""the models trained once per seed (popularity has no seed: it is fit again at the merge)"""
METRICS = ("hr@10", "ndcg@10", "mrr@10")


def parse_trained_models(text: str) -> list[str]:
    """``"sasrec,llm"`` -> ``["sasrec", "llm"]``, refusing a name that is not a trained model."""
    models = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in models if name not in TRAINED]
    if unknown or not models:
        raise argparse.ArgumentTypeError(f"--models {text!r}: expected one or more of {', '.join(TRAINED)}")
    return list(dict.fromkeys(models))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="MovieLens folder (default: $LONGREC_MOVIELENS or data/ml-latest-small)")
    p.add_argument("--seeds", type=parse_seeds, default=[0],
                   help="training seeds of SASRec and the LLM: 0-4, 0,1,2 or 3 (default 0)")
    p.add_argument("--models", type=parse_trained_models, default=list(TRAINED),
                   help="which models to train: sasrec, llm or sasrec,llm (default); one model per process trains "
                        "them side by side, and the run that finds both finished (or --merge-only) merges")
    p.add_argument("--merge-only", action="store_true", help="aggregate the finished seeds under --out trained with the given flags; train nothing")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (SASRec, evaluation)")
    p.add_argument("--llm-threads", type=int, default=1,
                   help="torch CPU threads while the LLM trains (its many small ops run faster on one thread here)")
    p.add_argument("--sasrec-max-len", type=int, default=50)
    p.add_argument("--sasrec-epochs", type=int, default=200, help="upper bound (early stopping on valid NDCG@10)")
    p.add_argument("--sasrec-batch-size", type=int, default=32)
    p.add_argument("--sasrec-hidden", type=int, default=64, help="embedding / hidden size d")
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
    p.add_argument("--llm-future-targets", type=int, default=None,
                   help="train each position on its next K items (soft label; default: LLMNextItemConfig's, 1)")
    p.add_argument("--llm-future-decay", type=float, default=None,
                   help="weight ratio of consecutive future targets (default: LLMNextItemConfig's, 1.0)")
    p.add_argument("--llm-epochs", type=int, default=200, help="upper bound (early stopping on valid NDCG@10)")
    p.add_argument("--llm-steps-per-epoch", type=int, default=None,
                   help="steps between evaluations (default: a full pass over the training windows / examples)")
    p.add_argument("--llm-batch-size", type=int, default=None,
                   help="windows (all_positions) or examples (next_item) per step (default: LLMNextItemConfig's)")
    p.add_argument("--llm-lr", type=float, default=None, help="default: LLMNextItemConfig's")
    p.add_argument("--llm-weight-decay", type=float, default=None, help="default: LLMNextItemConfig's")
    p.add_argument("--llm-d-model", type=int, default=None, help="width of the encoder and decoder (default: the model config's)")
    p.add_argument("--llm-dropout", type=float, default=None, help="default: the model config's")
    p.add_argument("--llm-pooling", choices=("last", "mean"), default=None, help="default: the model config's")
    p.add_argument("--llm-pointer-scale", type=float, default=None,
                   help="pointer-logit multiplier (default: the model config's; 0 = 1/sqrt(d))")
    p.add_argument("--llm-id-min-count", type=int, default=None,
                   help="items with fewer training interactions get no id vector (default: LLMNextItemConfig's)")
    p.add_argument("--llm-id-dropout", type=float, default=None, help="default: the model config's")
    p.add_argument("--llm-ema-decay", type=float, default=None,
                   help="validate, keep and return a moving average of the LLM's weights, moved by 1 - DECAY towards "
                        "them each step (default: LLMNextItemConfig's, none)")
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
    p.add_argument("--llm-no-features-view", action="store_true",
                   help="rank with the id view alone (default: add the features-only view's logits with a weight "
                        "picked on validation users, LLMNextItemConfig.features_view_grid)")
    p.add_argument("--llm-budget-min", type=float, default=120.0,
                   help="wall-clock cap on LLM training (a safety net: it stops on validation first)")
    p.add_argument("--out", default="benchmarks/out/offline_movielens", help="where the LLM checkpoint and metrics go")
    p.add_argument("--skip-calibration", action="store_true", help="do not run the MovieLens-v0 genre calibration")
    return p.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class Training:
    """How one model's training for one seed went: its validation NDCG@10 after each epoch, the epoch whose
    weights were kept and the seconds it took (saved beside the ranks, so runs compare without a rerun)."""

    valid_curve: np.ndarray
    best_epoch: int
    seconds: float
    calibration: Mapping[str, object] = dataclasses.field(default_factory=dict)
    """What was chosen on validation users after training (the LLM's ``features_view_weight`` and text-match
    ``text_match_valid_ndcg@10`` / ``features_view_valid_ndcg@10`` grids); empty for SASRec and older files."""


@dataclasses.dataclass(frozen=True)
class ModelRun:
    """One trained model's per-user ranks for one seed: test, and validation (None in a legacy ``ranks.npz``),
    and how its training went (None in files written before that was saved)."""

    test: EvaluationResult
    valid: EvaluationResult | None
    training: Training | None = None


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
    out, fingerprint, settings = Path(args.out), data_fingerprint(data), training_settings(args)
    for seed in [] if args.merge_only else args.seeds:
        t = time.perf_counter()
        runs = {model: train_or_reuse(args, seed, split, model, fingerprint, log) for model in args.models}
        log(f"\nseed {seed}: {time.perf_counter() - t:.0f} s\n{format_table({m: r.test for m, r in runs.items()})}\n")
    if not args.skip_calibration and not args.merge_only:
        log_genre_calibration(args, data.num_items, log)
    seeds = args.seeds if not args.merge_only else sorted(int(p.name.split("_")[1]) for p in out.glob("seed_*"))
    per_seed = {}
    for seed in seeds:
        found = {model: find_result(out / f"seed_{seed}", model, model_settings(settings, model), fingerprint)
                 for model in TRAINED}
        if all(found.values()):
            per_seed[seed] = {model: hit[0] for model, hit in found.items()}
    if not per_seed and not args.merge_only and set(args.models) != set(TRAINED):
        log(f"trained {', '.join(args.models)} only; once the other model is done, --merge-only with the same "
            f"flags merges the seeds")
        return {}
    if not per_seed:
        raise SystemExit(f"no seed under {out} has both models trained with {flags_text(settings)}"
                         f"{variants_text(out, settings)}")
    log(f"seeds {', '.join(map(str, per_seed))} trained with: {flags_text(settings)}")
    summary = merge(per_seed, evaluate_next_item(PopularityScorer.fit(split), split))
    log(f"\ntotal time {time.perf_counter() - start:.0f} s\n")
    log(merged_table(summary, list(per_seed)))
    if training := training_table(per_seed):
        log(f"\ntraining per seed (curves: {plot_validation_curves(per_seed, out / CURVES_PLOT)})\n\n{training}\n")
    print(json.dumps(summary))
    return summary


def train_or_reuse(args: argparse.Namespace, seed: int, split: LeaveOneOutSplit, model: str, fingerprint: str,
                   log: Log) -> ModelRun:
    """``model``'s run for ``seed`` with the given flags: the saved one under ``--out`` if there is one, else
    trained now and saved (``<out>/seed_<seed>/<model>-<digest>.npz``; the LLM's checkpoint beside it)."""
    seed_dir, wanted = Path(args.out) / f"seed_{seed}", model_settings(training_settings(args), model)
    found = find_result(seed_dir, model, wanted, fingerprint)
    if found is not None:
        log(f"seed {seed}: {model} done before ({found[1]}), not rerun")
        return found[0]
    path = result_path(seed_dir, model, wanted)
    run = {"sasrec": run_sasrec, "llm": run_llm}[model](args, seed, split, path.with_suffix(""), log)
    save_result(path, run, fingerprint, wanted)
    return run


def data_fingerprint(data) -> str:
    """What identifies a data set across machines and checkouts: its folder name and its size."""
    return f"{Path(data.path).name}: {data.num_users} users, {data.num_items} items, {data.num_interactions} ratings"


UNSAVED_FLAGS = frozenset({"data", "seeds", "models", "merge_only", "threads", "llm_threads", "out", "skip_calibration"})
"""flags that do not change a seed's trained models (where they run, which seeds, where results go)"""
FLAGS_BEFORE_THEY_EXISTED = {"sasrec_windows": "tail", "llm_windows": "tail", "llm_no_features_view": True}
"""How a seed saved before one of these flags existed was trained, where today's default differs."""


def training_settings(args: argparse.Namespace) -> dict[str, object]:
    """The flags that shape a seed's models (budgets included), saved with its ranks."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in UNSAVED_FLAGS}


def flags_text(settings: Mapping[str, object]) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())


LEGACY_FILE = "ranks.npz"
"""one file per seed with every model's ranks and all flags (written before 2026-12-01's per-model files); still read"""
CURVES_PLOT = "validation_curves.png"
"""written by the merge under ``--out``: each model's validation NDCG@10 per epoch and seed"""


def model_settings(settings: Mapping[str, object], model: str) -> dict[str, object]:
    """The flags of one model (``--sasrec-*`` or ``--llm-*``): what its saved result depends on."""
    return {k: v for k, v in settings.items() if k.startswith(f"{model}_")}


def result_path(seed_dir: Path, model: str, settings: Mapping[str, object]) -> Path:
    """``<seed_dir>/<model>-<digest of its flags>.npz``: variants of a model (other flags) sit side by side."""
    digest = hashlib.sha1(json.dumps(dict(settings), sort_keys=True).encode()).hexdigest()[:10]
    return seed_dir / f"{model}-{digest}.npz"


def save_result(path: Path, run: ModelRun, fingerprint: str, settings: Mapping[str, object]) -> Path:
    """One model's per-user test and validation ranks for one seed, with the data and the flags that made
    them, written atomically (its presence marks that model's seed done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        training = {} if run.training is None else {
            "valid_curve": run.training.valid_curve, "best_epoch": np.array(run.training.best_epoch),
            "train_seconds": np.array(run.training.seconds),
            "calibration": np.array(json.dumps(dict(run.training.calibration)))}
        np.savez(handle, ranks=run.test.ranks, target_train_counts=run.test.target_train_counts,
                 valid_ranks=run.valid.ranks, valid_target_train_counts=run.valid.target_train_counts,
                 data=np.array(fingerprint), settings=np.array(json.dumps(dict(settings))), **training)
    return path


def differing_flags(saved: Mapping[str, object], wanted: Mapping[str, object]) -> dict[str, tuple[object, object]]:
    """``{flag: (saved value, wanted value)}`` where they differ; a flag added after a result was saved counts
    as what the code did before the flag existed (``FLAGS_BEFORE_THEY_EXISTED``, else its default)."""
    defaults = {**training_settings(parse_args([])), **FLAGS_BEFORE_THEY_EXISTED}
    value = lambda flags, k: flags.get(k, defaults.get(k))  # noqa: E731
    return {k: (value(saved, k), value(wanted, k)) for k in sorted(set(saved) | set(wanted))
            if value(saved, k) != value(wanted, k)}


def saved_results(seed_dir: Path, model: str, fingerprint: str) -> list[tuple[Path, dict, ModelRun]]:
    """Every saved result of ``model`` in ``seed_dir`` (per-model files, then a legacy ``ranks.npz``) as
    (file, the model's flags, result); refuses one made from other data."""
    found = []
    for path in [*sorted(seed_dir.glob(f"{model}-*.npz")), seed_dir / LEGACY_FILE]:
        if not path.exists():
            continue
        with np.load(path) as archive:
            if str(archive["data"]) != fingerprint:
                raise SystemExit(f"{path} was made from {str(archive['data'])!r}, not {fingerprint!r}: "
                                 "give another --out for another data set")
            if "settings" not in archive:
                raise SystemExit(f"{path} records no training flags (written before they were saved): remove it")
            key = "ranks" if path.name != LEGACY_FILE else f"ranks/{model}"
            valid = EvaluationResult(archive["valid_ranks"], archive["valid_target_train_counts"]) \
                if "valid_ranks" in archive else None
            calibration = json.loads(str(archive["calibration"])) if "calibration" in archive else {}
            training = Training(archive["valid_curve"], int(archive["best_epoch"]), float(archive["train_seconds"]),
                                calibration) if "valid_curve" in archive else None
            run = ModelRun(EvaluationResult(archive[key], archive["target_train_counts"]), valid, training)
            found.append((path, model_settings(json.loads(str(archive["settings"])), model), run))
    return found


def find_result(seed_dir: Path, model: str, settings: Mapping[str, object],
                fingerprint: str) -> tuple[ModelRun, Path] | None:
    """The saved result of ``model`` trained with exactly ``settings`` (its flags) in ``seed_dir``, or None."""
    for path, saved, result in saved_results(seed_dir, model, fingerprint):
        if not differing_flags(saved, settings):
            return result, path
    return None


def variants_text(out: Path, settings: Mapping[str, object]) -> str:
    """What was trained under ``out`` instead: each saved model variant's flags that differ from ``settings``."""
    lines = set()
    for seed_dir in sorted(out.glob("seed_*")):
        for model in TRAINED:
            for path in [*seed_dir.glob(f"{model}-*.npz"), seed_dir / LEGACY_FILE]:
                if path.exists():
                    with np.load(path) as archive:
                        saved = model_settings(json.loads(str(archive.get("settings", "{}"))), model)
                    differ = differing_flags(saved, model_settings(settings, model))
                    lines.add(f"{model}: " + (" ".join(f"--{k.replace('_', '-')} {v[0]}" for k, v in differ.items())
                                              or "the flags asked for"))
    return "; found " + ", ".join(sorted(lines)) if lines else ""


def merge(per_seed: Mapping[int, Mapping[str, ModelRun]], popularity: EvaluationResult) -> dict[str, dict]:
    """Means and t-CIs across seeds per model (test; validation NDCG@10 as ``valid_ndcg@10``); the paired
    bootstrap of LLM minus SASRec NDCG@10 over users (test, and ``"valid"`` when every seed has it)."""
    test = {seed: {"popularity": popularity, **{m: run.test for m, run in runs.items()}} for seed, runs in per_seed.items()}
    summary: dict[str, dict] = {}
    for name in MODELS:
        rows = [results[name].metrics() for results in test.values()]
        summary[name] = {"seeds": len(rows)}
        for metric in METRICS:
            mean, half = t_ci95([row[metric] for row in rows])
            summary[name][metric], summary[name][f"{metric}_ci95"] = mean, half
    summary["paired"] = {"llm_vs_sasrec": paired_ndcg(test, "llm", "sasrec")}
    if all(run.valid is not None for runs in per_seed.values() for run in runs.values()):
        valid = {seed: {m: run.valid for m, run in runs.items()} for seed, runs in per_seed.items()}
        for name in TRAINED:
            mean, half = t_ci95([results[name].metrics()["ndcg@10"] for results in valid.values()])
            summary[name]["valid_ndcg@10"], summary[name]["valid_ndcg@10_ci95"] = mean, half
        summary["paired"]["llm_vs_sasrec"]["valid"] = paired_ndcg(valid, "llm", "sasrec")
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
    if "valid" in paired:
        entries.append(("validation users", paired["valid"]))
    for label, entry in entries:
        low, high = entry["ndcg@10_ci95"]
        verdict = "LLM better" if low > 0 else "SASRec better" if high < 0 else "no difference shown"
        name = label if label in ("all", "validation users") else f"target seen {label} times"
        lines.append(f"| {name} ({entry['users']}) | {entry['ndcg@10_diff']:+.4f} | [{low:+.4f}, {high:+.4f}] | "
                     f"{verdict} |")
    return "\n".join(lines)


def sasrec_config(args: argparse.Namespace, seed: int) -> SASRecConfig:
    """The ``--sasrec-*`` flags as a ``SASRecConfig`` for ``seed``."""
    return SASRecConfig(
        max_len=args.sasrec_max_len,
        max_epochs=args.sasrec_epochs,
        batch_size=args.sasrec_batch_size,
        hidden=args.sasrec_hidden,
        windows=args.sasrec_windows,
        seed=seed,
        time_budget_s=60.0 * args.sasrec_budget_min,
    )


def run_sasrec(args: argparse.Namespace, seed: int, split: LeaveOneOutSplit, out: Path, log: Log) -> ModelRun:
    """Train SASRec with the ``--sasrec-*`` settings; its test and validation ranks (``out``: unused, no checkpoint)."""
    t = time.perf_counter()
    sasrec, sasrec_log = train_sasrec(split, sasrec_config(args, seed), progress=log)
    test, valid = (evaluate_next_item(SASRecScorer(sasrec), split, stage=stage) for stage in ("test", "valid"))
    seconds = time.perf_counter() - t
    log(f"sasrec: {sasrec_log.epochs} epochs, best epoch {sasrec_log.best_epoch}, {seconds:.0f} s")
    return ModelRun(test, valid, Training(validation_curve(sasrec_log.history), sasrec_log.best_epoch, seconds))


def llm_config(args: argparse.Namespace) -> MovieLensPretrainConfig:
    """The ``--llm-*`` flags over ``LLMNextItemConfig``'s defaults (unset flags keep them)."""
    base = LLMNextItemConfig()
    objective = args.llm_objective
    given = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731
    model_config = dataclasses.replace(
        base.model,
        item_id_embeddings=not args.llm_no_id_embeddings,
        causal_encoder=objective == "all_positions",
        **given(d_model=args.llm_d_model, dropout=args.llm_dropout, pooling=args.llm_pooling,
                item_id_dropout=args.llm_id_dropout),
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
                future_targets=args.llm_future_targets, future_decay=args.llm_future_decay, ema_decay=args.llm_ema_decay,
            ),
            **({"features_view_grid": ()} if args.llm_no_features_view else {}),
            windows=args.llm_windows,
        ),
    )


def run_llm(args: argparse.Namespace, seed: int, split: LeaveOneOutSplit, out: Path, log: Log) -> ModelRun:
    """Next-item pretraining of the LLM policy (``pretrain_movielens``, on ``--llm-threads``; its checkpoint and
    metrics go to ``out``); its test and validation ranks (``split``: unused, it splits ``--data`` alike)."""
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
    calibration = {"features_view_weight": llm.model.config.features_view_weight,
                   **{k: train_log[k] for k in ("text_match_valid_ndcg@10", "features_view_valid_ndcg@10")}}
    return ModelRun(llm.test, llm.valid_ranks, Training(validation_curve(train_log["history"]), train_log["best_epoch"],
                                                         time.perf_counter() - t, calibration))


def validation_curve(history: Sequence[Mapping[str, float]]) -> np.ndarray:
    """``(epochs,)`` validation NDCG@10 after each epoch of a training log's per-epoch records (NaN where an
    epoch was not evaluated)."""
    return np.array([record.get("valid_ndcg@10", np.nan) for record in history], dtype=np.float64)


def recorded_trainings(per_seed: Mapping[int, Mapping[str, ModelRun]]) -> list[tuple[int, str, Training]]:
    """(seed, model, training) of every run that recorded its training."""
    return [(seed, model, run.training) for seed, runs in per_seed.items() for model, run in runs.items()
            if run.training is not None]


def training_table(per_seed: Mapping[int, Mapping[str, ModelRun]]) -> str:
    """Markdown: per model and seed, the epochs trained, the kept epoch, its validation NDCG@10 and the time
    ("" when no run recorded its training)."""
    rows = recorded_trainings(per_seed)
    if not rows:
        return ""
    lines = ["| model | seed | epochs (kept) | validation NDCG@10 of the kept epoch | features-view weight | seconds |",
             "| --- | ---: | --- | ---: | ---: | ---: |"]
    for seed, model, training in sorted(rows, key=lambda row: (TRAINED.index(row[1]), row[0])):
        kept = training.valid_curve[training.best_epoch - 1]
        weight = training.calibration.get("features_view_weight")
        lines.append(f"| {model} | {seed} | {training.valid_curve.size} ({training.best_epoch}) | {kept:.4f} | "
                     f"{'' if weight is None else f'{weight:g}'} | {training.seconds:.0f} |")
    return "\n".join(lines)


def plot_validation_curves(per_seed: Mapping[int, Mapping[str, ModelRun]], path: Path) -> Path | None:
    """Each model's validation NDCG@10 per epoch, one line per seed, kept epochs marked; None without curves."""
    runs = recorded_trainings(per_seed)
    if not runs:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"sasrec": "tab:blue", "llm": "tab:orange"}
    for seed, model, training in runs:
        epochs = np.arange(1, training.valid_curve.size + 1)
        evaluated = np.isfinite(training.valid_curve)
        ax.plot(epochs[evaluated], training.valid_curve[evaluated], color=colors[model], alpha=0.6, lw=1,
                label=model if seed == min(per_seed) else None)
        ax.plot(training.best_epoch, training.valid_curve[training.best_epoch - 1], "o", color=colors[model], ms=4)
    seeds = f"seed{'s' * (len(per_seed) > 1)} {', '.join(map(str, per_seed))}"
    ax.set(xlabel="epoch", ylabel="validation NDCG@10", title=f"validation NDCG@10 per epoch, {seeds} (dot: kept epoch)")
    ax.legend()
    return save_figure(fig, path, dpi=120)


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
