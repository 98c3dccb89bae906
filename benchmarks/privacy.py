"""The price of privacy: user-level DP pretraining at epsilon in {1, 3, 8, inf}, its utility and a membership attack.

Every pretraining is a ``longrec pretrain`` run with ``pretrain.dp.epsilon=<eps>`` (``inf`` = no DP, the same
settings otherwise), through ``benchmarks/long_term.py``'s code path, so the benchmark adds no pipeline:

* ``video``: logs of the production logger (the default, non-privileged behaviour) on ``--env`` for
  ``--video-users`` users (made once, shared by every epsilon); CE pretraining on them; the CE policy used
  greedily (``agent=pctr_greedy init_from=<policy>``) on ``--eval-users`` fresh users: long-term return; and its
  validation NDCG@10 on held-out users' clicks (how well it imitates the logger). The logger optimises clicks,
  so a better imitation need not live longer: the CE start's return is below random's (README's table).
  With ``--rl``, also CE -> RL (``agent=ce_ppo``, ``--budget-steps`` PPO steps) from each policy.
* ``movielens``: ``longrec pretrain -c movielens`` (a small model, ``--ml-epochs`` epochs): test NDCG@10 of
  the leave-one-out protocol on ml-latest-small.
* ``attack``: a small, overfitted run (``--attack-users`` logged users, ``--attack-epochs`` epochs, no early
  stop) and the loss-threshold membership attack (``llm_policy.membership``): its training users against as
  many fresh users of the same logger; ROC-AUC (0.5 = chance).

Each finished (part, epsilon) is recorded in ``<out>/<part>/eps_<eps>.json`` as it ends, so an interrupted
benchmark resumes where it stopped; ``--merge-only`` prints the table and draws ``<out>/privacy.png`` from
the finished cells. The last line printed is JSON ``{"rows": {eps: {...}}, "seconds": total}``.

    python benchmarks/privacy.py                       # defaults: 2 CPU cores, about half an hour
    python benchmarks/privacy.py --parts attack --epsilons 1 inf
    python benchmarks/privacy.py --merge-only
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from experiments.compare import save_figure

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/long_term.py: the shared pipeline

import long_term  # noqa: E402

PARTS = ("video", "movielens", "attack")


def parse_epsilon(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"epsilon must be > 0 (inf = no DP), got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilons", nargs="+", type=parse_epsilon, default=[1.0, 3.0, 8.0, math.inf],
                        help="target epsilons (inf = no DP)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env", default="longrec/Video-v0")
    parser.add_argument("--model", default="tiny", choices=("tiny", "small", "base"), help="LLM policy size (video, attack)")
    parser.add_argument("--text-encoder", default="minilm", help="item-text encoder (text.encoder; tiny for smoke runs)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="per-user clipping bound C (pretrain.dp.max_grad_norm)")
    parser.add_argument("--video-users", type=int, default=2000, help="logged users for CE pretraining")
    parser.add_argument("--video-epochs", type=int, default=5)
    parser.add_argument("--video-batch-size", type=int, default=1024,
                        help="logged steps per gradient step (with DP: in expectation, ~36 users of ~28 clicks)")
    parser.add_argument("--video-lr", type=float, default=1e-3)
    parser.add_argument("--eval-users", type=int, default=500, help="fresh users evaluating each policy")
    parser.add_argument("--rl", action="store_true", help="video: also CE -> RL (ce_ppo) from each pretrained policy")
    parser.add_argument("--budget-steps", type=int, default=100_000, help="PPO steps of --rl")
    parser.add_argument("--ml-epochs", type=int, default=5, help="MovieLens next-item epochs")
    parser.add_argument("--ml-batch-size", type=int, default=64, help="MovieLens users (windows) per step")
    parser.add_argument("--ml-d-model", type=int, default=32)
    parser.add_argument("--attack-users", type=int, default=200, help="logged users of the overfitted run")
    parser.add_argument("--attack-epochs", type=int, default=20)
    parser.add_argument("--attack-batch-size", type=int, default=256)
    parser.add_argument("--attack-lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine two threads of small ops wait on each other)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--wandb", action="store_true", help="log every run to W&B (offline unless logged in)")
    parser.add_argument("--out", default="runs/privacy", help="output folder")
    parser.add_argument("--merge-only", action="store_true", help="only aggregate the finished cells under --out")
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out)
    if not args.merge_only:
        for part in args.parts:
            for epsilon in args.epsilons:
                cell(out, part, epsilon, lambda part=part, epsilon=epsilon: RUNNERS[part](args, out, epsilon))
    return merge(args, out)


def eps_name(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def cell(out: Path, part: str, epsilon: float, make: Any) -> dict[str, Any]:
    """The record of ``(part, epsilon)``: read when it exists, else made by ``make()``, timed and saved."""
    path = out / part / f"eps_{eps_name(epsilon)}.json"
    if path.exists():
        return json.loads(path.read_text())
    start = time.perf_counter()
    record = {"part": part, "epsilon": eps_name(epsilon), **make()}
    record["seconds"] = time.perf_counter() - start
    print(f"{part} epsilon={eps_name(epsilon)}: " + ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
        if k not in ("part", "epsilon", "run", "policy_dir", "runs")), flush=True)
    long_term._write_json(path, record)
    return record


def pipeline_args(args: argparse.Namespace) -> argparse.Namespace:
    """``benchmarks/long_term.py``'s settings for the shared overrides (environment, seed, device, runs, PPO)."""
    argv = ["--env", args.env, "--budget-steps", str(args.budget_steps), "--eval-users", str(args.eval_users),
            "--model", args.model, "--text-encoder", args.text_encoder, "--threads", str(args.threads),
            "--device", args.device, "--eval-every", "0",
            "--item-statistics", "off"]  # logged item counts are not privatised: DP covers the CE weights only
    return long_term.parse_args(argv + (["--wandb"] if args.wandb else []))


def dp_overrides(args: argparse.Namespace, epsilon: float) -> list[str]:
    if math.isinf(epsilon):
        return []
    return [f"pretrain.dp.epsilon={epsilon}", f"pretrain.dp.max_grad_norm={args.max_grad_norm}"]


def dp_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The (epsilon, delta) spent and the noise of a pretraining run's metrics (empty without DP)."""
    return {key.removeprefix("pretrain/"): value for key, value in metrics.items() if key.startswith("pretrain/dp_")}


def logs_once(args: argparse.Namespace, path: Path, users: int, seed: int) -> Path:
    """Logs of the default logger for ``users`` users seeded ``seed`` at ``path`` (made once)."""
    from agents.logs import generate_logs

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        generate_logs(args.env, num_users=users, seed=seed, path=path, behaviour="logger")
    return path


def pretrain_run(args: argparse.Namespace, epsilon: float, runs: Path, logs: Path, overrides: list[str]
                 ) -> tuple[Path, dict[str, Any]]:
    """``longrec pretrain data.path=<logs>`` with the benchmark's model and ``epsilon``; (policy folder, metrics)."""
    settings = pipeline_args(args)
    keys = [*long_term.common_overrides(settings, args.seed, runs), f"data.path={logs}",
            *long_term.policy_overrides(settings), "pretrain.target=click", *overrides, *dp_overrides(args, epsilon)]
    _, result = long_term.run_job("pretrain", keys)
    return Path(result["policy_dir"]), result["metrics"]


# --------------------------------------------------------------------------- parts


def run_video(args: argparse.Namespace, out: Path, epsilon: float) -> dict[str, Any]:
    """CE pretraining on the logger's logs at ``epsilon``; the CE policy (and with --rl, CE -> RL) on fresh users."""
    folder = out / "video"
    logs = logs_once(args, folder / "logs.npz", args.video_users, args.seed + 1000)
    runs = folder / f"runs_eps_{eps_name(epsilon)}"
    policy, metrics = pretrain_run(args, epsilon, runs, logs, [
        f"pretrain.epochs={args.video_epochs}", f"pretrain.batch_size={args.video_batch_size}",
        f"pretrain.learning_rate={args.video_lr}", "pretrain.val_fraction=0.1", f"pretrain.patience={args.video_epochs}"])
    record = {"policy_dir": str(policy), "val_ndcg@10": metrics["pretrain/val/ndcg@10"], **dp_metrics(metrics)}
    settings = pipeline_args(args)
    for agent in ("pctr_greedy", "ce_ppo") if args.rl else ("pctr_greedy",):
        keys = [*long_term.common_overrides(settings, args.seed, runs),
                *long_term.agent_overrides(settings, agent, args.seed, policy)]
        _, result = long_term.run_job("train", keys)
        row = result["agents"][agent]
        prefix = "ce" if agent == "pctr_greedy" else "ce_rl"
        record.update({f"{prefix}_return": row["return"], f"{prefix}_return_ci95": row["return_ci95"]})
    return record


def run_movielens(args: argparse.Namespace, out: Path, epsilon: float) -> dict[str, Any]:
    """``longrec pretrain -c movielens`` with a small model at ``epsilon``: the offline protocol's test metrics."""
    settings = pipeline_args(args)
    heads = max(1, min(4, args.ml_d_model // 16))
    keys = [*long_term.common_overrides(settings, args.seed, out / "movielens" / f"runs_eps_{eps_name(epsilon)}"),
            "name=movielens", "env.id=longrec/MovieLens-v0", "data.source=movielens", f"text.encoder={args.text_encoder}",
            f"movielens.train.max_epochs={args.ml_epochs}", f"movielens.train.patience={args.ml_epochs}",
            f"movielens.train.batch_size={args.ml_batch_size}", f"movielens.train.model.d_model={args.ml_d_model}",
            "movielens.train.model.n_encoder_layers=1", f"movielens.train.model.n_encoder_heads={heads}",
            f"movielens.train.model.n_decoder_heads={heads}", *dp_overrides(args, epsilon)]
    _, result = long_term.run_job("pretrain", keys)
    metrics = result["metrics"]
    return {"policy_dir": str(result["policy_dir"]), "test_ndcg@10": metrics["pretrain/test/ndcg@10"],
            "test_hr@10": metrics["pretrain/test/hr@10"], "valid_ndcg@10": metrics["pretrain/valid/ndcg@10"],
            **dp_metrics(metrics)}


def run_attack(args: argparse.Namespace, out: Path, epsilon: float) -> dict[str, Any]:
    """A small run trained long enough to overfit, then the loss-threshold attack: its training users vs fresh users."""
    import torch

    from agents.logs import load_logs
    from llm_policy.membership import membership_inference
    from llm_policy.model import SlateModel
    from llm_policy.pretrain import LogTensors, PretrainConfig, split_users

    folder = out / "attack"
    members_log = logs_once(args, folder / "logs.npz", args.attack_users, args.seed + 2000)
    fresh_log = logs_once(args, folder / "fresh_logs.npz", args.attack_users, args.seed + 3000)
    val_fraction = 0.1
    policy, metrics = pretrain_run(args, epsilon, folder / f"runs_eps_{eps_name(epsilon)}", members_log, [
        f"pretrain.epochs={args.attack_epochs}", f"pretrain.batch_size={args.attack_batch_size}",
        f"pretrain.learning_rate={args.attack_lr}", f"pretrain.val_fraction={val_fraction}",
        f"pretrain.patience={args.attack_epochs}", "policy.item_id_embeddings=true"])
    torch.set_num_threads(args.threads)
    data = LogTensors.from_logs(load_logs(members_log))
    train_rows, _ = split_users(data.user_id, val_fraction, args.seed)  # the run's own split: its training users
    attack = membership_inference(SlateModel.from_pretrained(policy), data.select(train_rows),
                                  load_logs(fresh_log), PretrainConfig(target="click"))
    return {"policy_dir": str(policy), "auc": attack.auc, "advantage": attack.advantage, "members": attack.members,
            "non_members": attack.non_members, "member_loss": attack.member_loss,
            "non_member_loss": attack.non_member_loss, "val_ndcg@10": metrics["pretrain/val/ndcg@10"],
            "best_epoch": metrics["pretrain/best_epoch"], **dp_metrics(metrics)}


RUNNERS = {"video": run_video, "movielens": run_movielens, "attack": run_attack}


# --------------------------------------------------------------------------- merge


def finished(out: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{epsilon name: {part: record}}`` of every finished cell under ``out``."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(out.glob("*/eps_*.json")):
        record = json.loads(path.read_text())
        rows.setdefault(record["epsilon"], {})[record["part"]] = record
    return dict(sorted(rows.items(), key=lambda item: float(item[0])))


def merge(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Table, plot and JSON line of the finished cells."""
    rows = finished(out)
    print_table(args, rows)
    plot = plot_privacy(rows, out / "privacy.png")
    if plot is not None:
        print(f"plot: {plot}")
    seconds = sum(record.get("seconds", 0.0) for parts in rows.values() for record in parts.values())
    summary = {"rows": rows, "seconds": seconds}
    print(json.dumps(summary, default=str))
    return summary


def _value(parts: dict[str, dict[str, Any]], part: str, key: str, spec: str = ".3f") -> str:
    value = parts.get(part, {}).get(key)
    return "-" if value is None else format(value, spec)


def print_table(args: argparse.Namespace, rows: dict[str, dict[str, dict[str, Any]]]) -> None:
    print(f"\nuser-level DP pretraining, seed {args.seed}: epsilon = target (inf = no DP); 'spent' = Opacus's "
          "accountant at delta = 1 / training users, per part (video / movielens / attack)")
    header = (f"{'epsilon':>8}{'spent':>20}{'CE val NDCG':>13}{'CE return':>16}{'CE->RL return':>16}{'ML NDCG@10':>12}"
              f"{'attack AUC':>12}{'advantage':>11}{'minutes':>9}")
    print(header)
    print("-" * len(header))
    for name, parts in rows.items():
        spent = "/".join(_value(parts, part, "dp_epsilon", ".2f") for part in PARTS)
        ce = parts.get("video", {})
        ce_text = f"{ce['ce_return']:.1f} ± {ce['ce_return_ci95']:.1f}" if "ce_return" in ce else "-"
        rl_text = f"{ce['ce_rl_return']:.1f} ± {ce['ce_rl_return_ci95']:.1f}" if "ce_rl_return" in ce else "-"
        minutes = sum(record.get("seconds", 0.0) for record in parts.values()) / 60
        print(f"{name:>8}{spent:>20}{_value(parts, 'video', 'val_ndcg@10'):>13}{ce_text:>16}{rl_text:>16}"
              f"{_value(parts, 'movielens', 'test_ndcg@10', '.4f'):>12}"
              f"{_value(parts, 'attack', 'auc'):>12}{_value(parts, 'attack', 'advantage'):>11}{minutes:>9.1f}")


def plot_privacy(rows: dict[str, dict[str, dict[str, Any]]], path: Path) -> Path | None:
    """``privacy.png``: the CE policy's validation NDCG@10 and long-term return, MovieLens test NDCG@10 and the
    attack's AUC against epsilon (one panel each)."""
    import matplotlib.pyplot as plt

    panels = [("video", "val_ndcg@10", None, "CE policy: validation NDCG@10"),
              ("video", "ce_return", "ce_return_ci95", "CE policy: long-term return"),
              ("movielens", "test_ndcg@10", None, "MovieLens: test NDCG@10"),
              ("attack", "auc", None, "membership attack: ROC-AUC")]
    panels = [p for p in panels if any(p[1] in parts.get(p[0], {}) for parts in rows.values())]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (part, key, ci, title) in zip(axes[0], panels, strict=True):
        names = [name for name, parts in rows.items() if key in parts.get(part, {})]
        values = [rows[name][part][key] for name in names]
        errors = [rows[name][part].get(ci, 0.0) for name in names] if ci else None
        ax.errorbar(range(len(names)), values, yerr=errors, marker="o", capsize=3)
        if key == "ce_return" and any("ce_rl_return" in rows[name].get("video", {}) for name in names):
            ax.plot(range(len(names)), [rows[name]["video"].get("ce_rl_return", math.nan) for name in names],
                    marker="s", label="CE -> RL")
            ax.legend()
        if part == "attack":
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
            ax.legend()
        ax.set_xticks(range(len(names)), ["∞" if name == "inf" else name for name in names])
        ax.set_xlabel("target epsilon (user level)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    main()
