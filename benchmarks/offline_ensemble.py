"""Seed ensembles of ``benchmarks/offline_movielens.py``'s models: the LLM's seeds averaged against SASRec's.

The LLM's test NDCG@10 on ml-latest-small moves with its training seed far more than SASRec's does
(``offline_variants.py --agreement``), so a five-seed mean of single models is uncertain. An ensemble reduces
that variance: each model's members (one per seed) score the whole catalog, the ensemble ranks items by the mean
of the members' log-softmax scores (geometric mean of their next-item probabilities), and the LLM's ensemble is
compared with SASRec's ensemble of the same seeds, NDCG@10 paired per user (95% bootstrap over users,
``offline_movielens.paired_ndcg``) on the validation and the test users, overall and per cold-start bucket.
Nothing is chosen here: the members are the models each seed kept (on validation), combined in one fixed way.

The members come from a results folder of ``offline_movielens.py`` (``RESULTS/seed_<s>/{llm,sasrec}-*.npz``, one
of each per seed, with the flags they were trained with):

* the LLM from its checkpoint ``<checkpoints>/seed_<s>/<llm file's stem>/best`` (the first ``--checkpoints``
  folder holding it: ``offline_movielens.py`` writes it under its ``--out``);
* SASRec, which ``offline_movielens.py`` keeps no checkpoint of, trained again here with the saved flags and seed
  and its weights saved (``<out>/seed_<s>/sasrec-<digest>.pt``, atomically, as each seed finishes: a rerun reuses
  them, so the training can span sessions).

Each member's ranks are checked against the ranks the results folder saved for it (how many users' ranks are
identical): a member that does not reproduce its saved result is reported, and its scores as rebuilt here are the
ones used.

    python benchmarks/offline_ensemble.py benchmarks/results/offline_movielens_d128_fview_ema --seeds 0-4 \\
        --checkpoints benchmarks/out/ema995_mlsmall benchmarks/out/ema_s1 --out benchmarks/out/ensemble_mlsmall

**Two-member ensembles** ask whether the LLM adds what SASRec lacks (the ID-text complementarity of L. Collins
et al., "Exploiting ID-Text Complementarity via Ensembling for Sequential Recommendation", 2025): each seed's LLM
averaged with the same seed's SASRec, against that SASRec averaged with the next seed's SASRec (seeds in a ring).
Both sides have two members, so ensembling alone cannot make the difference; nothing is weighted or chosen.

The last line printed is a JSON object (also saved as ``<out>/ensemble.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import offline_movielens as bench  # noqa: E402
import offline_variants as variants  # noqa: E402

from agents.offline_protocol import (  # noqa: E402
    EvaluationResult,
    LeaveOneOutSplit,
    NextItemScorer,
    evaluate_next_item,
    leave_one_out_split,
)
from agents.sasrec import SASRec, SASRecScorer, train_sasrec  # noqa: E402
from envs.atomic_file import atomic_open, atomic_write_text  # noqa: E402
from envs.movielens import load_movielens  # noqa: E402
from experiments.seeds import parse_seeds  # noqa: E402
from llm_policy.metrics import ndcg_at_k  # noqa: E402
from llm_policy.model import SlateModel  # noqa: E402
from llm_policy.next_item import LLMScorer  # noqa: E402

STAGES = tuple(variants.STAGES)
Log = Callable[[str], None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="an --out folder of offline_movielens.py (one llm and one sasrec "
                   "result per seed)")
    p.add_argument("--seeds", type=parse_seeds, required=True, help="the ensemble's members: 0-4, 0,1,2,4")
    p.add_argument("--checkpoints", type=Path, nargs="+", required=True,
                   help="folders holding the LLM checkpoints (offline_movielens.py --out folders)")
    p.add_argument("--out", type=Path, required=True, help="where SASRec's weights and ensemble.json go")
    p.add_argument("--data", default=None, help="the MovieLens folder the results were trained on "
                   "(default: the project's ml-latest-small)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--train-only", action="store_true",
                   help="train and save the missing SASRec members, then stop (no ensemble)")
    return p.parse_args(argv)


@dataclass(frozen=True)
class Member:
    """One seed's model: its scorer and the ranks its results file saved."""

    seed: int
    scorer: NextItemScorer
    saved: dict[str, np.ndarray]


@dataclass
class LogSoftmaxEnsemble:
    """Ranks items by the mean over ``scorers`` of their per-user log-softmax scores."""

    scorers: Sequence[NextItemScorer]

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        total = None
        for scorer in self.scorers:
            scores = torch.from_numpy(np.asarray(scorer.score(histories), dtype=np.float64))
            part = torch.log_softmax(scores, dim=1)
            total = part if total is None else total + part
        return (total / len(self.scorers)).numpy()


def results_file(results: Path, seed: int, model: str) -> tuple[Path, dict]:
    """The one ``model`` result of ``seed`` in ``results`` and its model's flags."""
    path = variants.seed_files(results, model).get(seed)
    if path is None:
        raise SystemExit(f"{results / f'seed_{seed}'} holds no {model} result; the ensemble needs one per seed")
    with np.load(path) as archive:
        return path, json.loads(str(archive["settings"]))


def trained_flags(settings: dict) -> dict:
    """Every flag of ``offline_movielens.py`` as a saved result was trained with (flags it predates: as the code
    was then, ``FLAGS_BEFORE_THEY_EXISTED``, else today's defaults)."""
    return {**vars(bench.parse_args([])), **bench.FLAGS_BEFORE_THEY_EXISTED, **settings}


def saved_ranks(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {stage: archive[key] for stage, key in variants.STAGES.items()}


def llm_member(args: argparse.Namespace, seed: int) -> Member:
    """The LLM of ``seed``: its ``best/`` checkpoint, scored with the history length it was trained with."""
    path, settings = results_file(args.results, seed, "llm")
    candidates = [folder / f"seed_{seed}" / path.stem / "best" for folder in args.checkpoints]
    checkpoint = next((c for c in candidates if c.is_dir()), None)
    if checkpoint is None:
        raise SystemExit(f"no checkpoint of {path} in {', '.join(map(str, candidates))}")
    model = SlateModel.from_pretrained(checkpoint)
    history = trained_flags(settings)["llm_history"]
    return Member(seed, LLMScorer(model, history, model.context_dim), saved_ranks(path))


def sasrec_member(args: argparse.Namespace, seed: int, split: LeaveOneOutSplit, log: Log) -> Member:
    """SASRec of ``seed``: its weights saved under ``--out``, else trained now with the saved flags and saved."""
    path, settings = results_file(args.results, seed, "sasrec")
    config = bench.sasrec_config(argparse.Namespace(**trained_flags(settings)), seed)
    weights = args.out / f"seed_{seed}" / f"{path.stem}.pt"
    model = SASRec(split.num_items, config)
    if weights.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
    else:
        t = time.perf_counter()
        model, train_log = train_sasrec(split, config, progress=log)
        weights.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(weights, "wb") as handle:
            torch.save(model.state_dict(), handle)
        log(f"seed {seed}: sasrec {train_log.epochs} epochs (kept {train_log.best_epoch}), "
            f"{time.perf_counter() - t:.0f} s -> {weights}")
    return Member(seed, SASRecScorer(model), saved_ranks(path))


def user_ndcg(result: EvaluationResult) -> np.ndarray:
    return ndcg_at_k(result.ranks, 10).numpy()


def reproduction(member: Member, evaluated: dict[str, EvaluationResult]) -> dict[str, dict[str, float]]:
    """Per stage: the share of users whose rank equals the saved one, and NDCG@10 rebuilt vs saved."""
    return {stage: {"same_rank_share": float(np.mean(evaluated[stage].ranks == member.saved[stage])),
                    "ndcg@10": float(user_ndcg(evaluated[stage]).mean()),
                    "saved_ndcg@10": float(ndcg_at_k(member.saved[stage], 10).mean())} for stage in STAGES}


def evaluate_ensembles(members: dict[str, list[Member]], split: LeaveOneOutSplit, log: Log) -> dict:
    """Each member and each model's ensemble on both stages; LLM ensemble minus SASRec ensemble, paired."""
    summary: dict[str, object] = {"seeds": [m.seed for m in members["llm"]], "members": {}, "ensemble": {}}
    ensembles = {}
    for model, group in members.items():
        for member in group:
            evaluated = {stage: evaluate_next_item(member.scorer, split, stage=stage) for stage in STAGES}
            summary["members"][f"{model}/seed_{member.seed}"] = reproduction(member, evaluated)
            log(f"{model} seed {member.seed}: " + ", ".join(
                f"{stage} NDCG@10 {row['ndcg@10']:.4f} (saved {row['saved_ndcg@10']:.4f}, "
                f"{100 * row['same_rank_share']:.0f}% of ranks identical)"
                for stage, row in summary["members"][f"{model}/seed_{member.seed}"].items()))
        singles = [summary["members"][f"{model}/seed_{m.seed}"] for m in group]
        ensemble = LogSoftmaxEnsemble([m.scorer for m in group])
        ensembles[model] = {stage: evaluate_next_item(ensemble, split, stage=stage) for stage in STAGES}
        summary["ensemble"][model] = {
            stage: {**ensembles[model][stage].metrics(),
                    "mean_single_ndcg@10": float(np.mean([s[stage]["ndcg@10"] for s in singles]))} for stage in STAGES}
    summary["paired"] = {"llm_vs_sasrec": {
        stage: bench.paired_ndcg({0: {m: ensembles[m][stage] for m in members}}, "llm", "sasrec") for stage in STAGES}}
    if len(members["llm"]) > 1:
        summary["two_member"] = two_member_ensembles(members, split)
    return summary


def two_member_ensembles(members: dict[str, list[Member]], split: LeaveOneOutSplit) -> dict:
    """Per seed, LLM + SASRec of that seed against SASRec of that seed + SASRec of the next (a ring of seeds),
    NDCG@10 paired per user with the seeds averaged; each side's mean NDCG@10 per stage."""
    llm, sasrec = members["llm"], members["sasrec"]
    pairs = {"llm+sasrec": [(llm[i], sasrec[i]) for i in range(len(llm))],
             "sasrec+sasrec": [(sasrec[i], sasrec[(i + 1) % len(sasrec)]) for i in range(len(sasrec))]}
    out: dict[str, object] = {"members": {name: [[a.seed, b.seed] for a, b in group] for name, group in pairs.items()},
                              "ndcg@10": {}, "paired": {}}
    for stage in STAGES:
        per_seed = {i: {name: evaluate_next_item(LogSoftmaxEnsemble([m.scorer for m in group[i]]), split, stage=stage)
                        for name, group in pairs.items()} for i in range(len(llm))}
        out["ndcg@10"][stage] = {name: float(np.mean([user_ndcg(r[name]).mean() for r in per_seed.values()]))
                                 for name in pairs}
        out["paired"][stage] = bench.paired_ndcg(per_seed, "llm+sasrec", "sasrec+sasrec")
    return out


def difference_cells(paired: dict) -> str:
    """A ``paired_ndcg`` entry as two Markdown cells: the difference and its 95% CI."""
    low, high = paired["ndcg@10_ci95"]
    return f"{paired['ndcg@10_diff']:+.4f} | [{low:+.4f}, {high:+.4f}]"


def summary_table(summary: dict) -> str:
    lines = [f"ensembles of seeds {', '.join(map(str, summary['seeds']))} (mean log-softmax)", "",
             "| users | LLM ensemble NDCG@10 (mean single) | SASRec ensemble NDCG@10 (mean single) | "
             "LLM − SASRec, paired | 95% CI |", "| --- | --- | --- | ---: | ---: |"]
    for stage in STAGES:
        llm, sasrec = (summary["ensemble"][m][stage] for m in ("llm", "sasrec"))
        lines.append(f"| {stage} | {llm['ndcg@10']:.4f} ({llm['mean_single_ndcg@10']:.4f}) | {sasrec['ndcg@10']:.4f} "
                     f"({sasrec['mean_single_ndcg@10']:.4f}) | "
                     f"{difference_cells(summary['paired']['llm_vs_sasrec'][stage])} |")
    for label, row in summary["paired"]["llm_vs_sasrec"]["test"]["by_bucket"].items():
        lines.append(f"| test, target seen {label} times ({row['users']} users) | | | {difference_cells(row)} |")
    if "two_member" in summary:
        two = summary["two_member"]
        lines += ["", "two-member ensembles: each seed's LLM + its SASRec against its SASRec + the next seed's SASRec", "",
                  "| users | LLM + SASRec NDCG@10 | SASRec + SASRec NDCG@10 | difference, paired | 95% CI |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for stage in STAGES:
            ndcg = two["ndcg@10"][stage]
            lines.append(f"| {stage} | {ndcg['llm+sasrec']:.4f} | {ndcg['sasrec+sasrec']:.4f} | "
                         f"{difference_cells(two['paired'][stage])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    data = load_movielens(args.data)
    split = leave_one_out_split(data.sequences(), data.num_items)
    sasrec = [sasrec_member(args, seed, split, log) for seed in args.seeds]
    if args.train_only:
        log(f"SASRec members of seeds {', '.join(map(str, args.seeds))} saved under {args.out}")
        return {}
    members = {"llm": [llm_member(args, seed) for seed in args.seeds], "sasrec": sasrec}
    summary = evaluate_ensembles(members, split, log)
    log("\n" + summary_table(summary))
    atomic_write_text(args.out / "ensemble.json", json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
