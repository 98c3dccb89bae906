"""Long-term benchmark: every agent on fresh users, with 95% CIs and learning curves.

Pipeline (one process, CPU by default):

1. item text embeddings of the catalog (``llm_policy.ItemTextEncoder``, all-MiniLM-L6-v2, cached);
2. logs of a behaviour policy (``agents.logs.generate_logs``, ``noisy_quality``) and
   cross-entropy pretraining of the LLM slate policy on them (``llm_policy.pretrain``);
3. the learning agents, each within ``--budget-steps`` environment steps: SlateQ
   (``agents.slateq``), PPO with the item-id MLP policy, PPO with the LLM policy from
   scratch, CE -> PPO, CE -> PPO with a KL penalty to the pretrained policy (``agents.ppo``);
4. every agent (plus random, popularity, myopic, pCTR-greedy = the pretrained policy
   used greedily, and the hidden-state oracle) evaluated on ``--eval-users`` fresh users
   (``agents.evaluate``; a seed no training run used).

Prints a table with 95% CIs, saves the learning curves as PNG, and prints one JSON object
last: ``{agent: {"return", "ci95", "ctr", "retention", "sessions"}}``. The logged data used
for pretraining is offline data and is reported separately from the step budget.

    python benchmarks/long_term.py --env longrec/Video-v0 --budget-steps 500000
    python benchmarks/long_term.py --env longrec/InterestEvolution-v0 --budget-steps 200000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from agents.registry import AGENTS, FIXED_AGENTS, LEARNING_AGENTS

SLATEQ_NUM_ENVS = 256
"""users in parallel while SlateQ collects experience (PPO uses ``--num-envs``)"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="longrec/Video-v0")
    parser.add_argument("--budget-steps", type=int, default=500_000, help="env steps per learning agent")
    parser.add_argument("--eval-users", type=int, default=2000, help="fresh users per agent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument("--model", default="tiny", choices=("tiny", "small", "base"), help="LLM policy size")
    parser.add_argument("--pretrain-users", type=int, default=400, help="logged users for CE pretraining")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--pretrain-batches", type=int, default=150, help="max batches per pretraining epoch")
    parser.add_argument("--num-envs", type=int, default=64, help="parallel users during PPO training")
    parser.add_argument("--n-steps", type=int, default=32, help="PPO rollout length per user")
    parser.add_argument("--ce-learning-rate", type=float, default=1e-4, help="PPO step size from the CE policy")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="PPO step size from scratch")
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--kl-target", type=float, default=None, help="adaptive KL target (default: fixed)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="output folder (default runs/long_term/<env>)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/long_term/{args.env.replace('/', '_')}")
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.agents)
    timings: dict[str, float] = {}
    pretrained_dir = pretrain_policy(args, wanted, out, timings)
    trained, curves = train_agents(args, wanted, pretrained_dir, timings)
    rows = evaluate_agents(args, wanted, pretrained_dir, trained, out, timings)
    print_table(args, rows, timings)
    if curves:
        plot_curves(curves, out / "learning_curves.png", args.env)
        print(f"learning curves: {out / 'learning_curves.png'}")
    summary = {
        name: {"return": row["return"], "ci95": row["return_ci95"], "ctr": row["ctr"],
               "retention": row["return_rate"], "sessions": row["sessions"]}
        for name, row in rows.items()
    }
    print(json.dumps(summary))
    return summary


def pretrain_policy(args: argparse.Namespace, wanted: set[str], out: Path, timings: dict[str, float]) -> Path | None:
    """Item embeddings, behaviour logs and CE pretraining (when an agent needs the pretrained policy)."""
    import envs
    from agents.logs import generate_logs
    from agents.ppo import LLM_SIZES
    from llm_policy import ItemTextEncoder, SlatePolicyConfig
    from llm_policy.pretrain import PretrainConfig, pretrain

    pretrained_dir = None
    if not wanted & {"pctr_greedy", "ppo_scratch", "ce_ppo", "ce_ppo_kl"}:
        return None
    start = time.perf_counter()
    embeddings = ItemTextEncoder(show_progress=False).encode_catalog(envs.make_core(args.env).catalog)
    timings["item_embeddings"] = time.perf_counter() - start
    if wanted & {"pctr_greedy", "ce_ppo", "ce_ppo_kl"}:
        start = time.perf_counter()
        logs = generate_logs(args.env, num_users=args.pretrain_users, seed=args.seed + 1000,
                             behaviour="noisy_quality")
        result = pretrain(
            logs,
            embeddings,
            config=PretrainConfig(epochs=args.pretrain_epochs, batch_size=256, val_fraction=0.2, patience=3,
                                  max_batches_per_epoch=args.pretrain_batches),
            model_config=SlatePolicyConfig(**LLM_SIZES[args.model]),
            output_dir=out / "pretrain",
            seed=args.seed,
            device=args.device,
            progress=False,
        )
        pretrained_dir = result.best_dir
        timings["pretrain"] = time.perf_counter() - start
        print(f"CE pretraining on {len(logs)} logged steps of {args.pretrain_users} users: "
              f"val ndcg@10 {result.metrics['val_before/ndcg@10']:.3f} -> {result.metrics['val/ndcg@10']:.3f}",
              flush=True)
    np.save(out / "item_embeddings.npy", embeddings.numpy())
    return pretrained_dir


def train_agents(args: argparse.Namespace, wanted: set[str], pretrained_dir: Path | None,
                 timings: dict[str, float]) -> tuple[dict[str, object], dict[str, list[tuple[int, float]]]]:
    """Each wanted learning agent trained for ``--budget-steps``: ``{name: policy or agent}`` and learning curves."""
    from agents.kl import KLConfig
    from agents.ppo import LLM_SIZES, PPOConfig, train_ppo
    from agents.slateq import SlateQConfig, train_slateq

    curves: dict[str, list[tuple[int, float]]] = {}
    trained: dict[str, object] = {}

    def sink_for(name: str):
        curve = curves.setdefault(name, [])

        def sink(metrics: dict, step: int) -> None:
            if "charts/episodic_return" in metrics:
                curve.append((step, metrics["charts/episodic_return"]))

        return sink

    pretrained = str(pretrained_dir) if pretrained_dir else None
    ppo_runs = {  # (learning rate, build_ppo arguments)
        "ppo_mlp": (args.learning_rate, dict(policy="mlp")),
        "ppo_scratch": (args.learning_rate, dict(policy="llm", model_config=LLM_SIZES[args.model], text_encoder=None)),
        "ce_ppo": (args.ce_learning_rate, dict(policy="llm", pretrained_path=pretrained)),
        "ce_ppo_kl": (args.ce_learning_rate, dict(policy="llm", pretrained_path=pretrained,
                                                  kl=KLConfig(coef=args.kl_coef, estimator="k3", target=args.kl_target))),
    }
    for name in LEARNING_AGENTS:
        if name not in wanted:
            continue
        start = time.perf_counter()
        if name == "slateq":
            trained[name] = train_slateq(args.env, args.budget_steps, SlateQConfig(), num_envs=SLATEQ_NUM_ENVS,
                                         seed=args.seed, metrics_sink=sink_for(name),
                                         log_interval=max(args.budget_steps // 40, 1), device="cpu")
        else:
            learning_rate, setup = ppo_runs[name]
            config = PPOConfig(n_steps=args.n_steps, batch_size=512, n_epochs=4, learning_rate=learning_rate)
            trained[name] = train_ppo(config, args.budget_steps, env_id=args.env, num_envs=args.num_envs,
                                      seed=args.seed, device=args.device, metrics_sink=sink_for(name),
                                      **setup).model.policy
        timings[f"train_{name}"] = time.perf_counter() - start
        print(f"trained {name}: {args.budget_steps} steps in {timings[f'train_{name}']:.0f}s", flush=True)
    return trained, curves


def evaluate_agents(args: argparse.Namespace, wanted: set[str], pretrained_dir: Path | None,
                    trained: dict[str, object], out: Path, timings: dict[str, float]) -> dict[str, dict]:
    """Every wanted agent on ``--eval-users`` fresh users of a seed no training run used; rows also in rows.jsonl."""
    from agents.baselines import PolicyAgent, make_baseline
    from agents.evaluate import evaluate_agent

    def factory(name: str):
        if name in FIXED_AGENTS:
            return name
        if name == "pctr_greedy":
            return lambda core: make_baseline("pctr_greedy", core, path=pretrained_dir)
        if name == "slateq":
            return lambda core: make_baseline("slateq", core, agent=trained[name])
        return PolicyAgent(trained[name])

    eval_seed = args.seed + 10_000  # users no training run or log has seen
    rows = {}
    for name in AGENTS:
        if name not in wanted:
            continue
        start = time.perf_counter()
        rows[name] = evaluate_agent(factory(name), args.env, num_users=args.eval_users, seeds=[eval_seed],
                                    name=name).row
        timings[f"eval_{name}"] = time.perf_counter() - start
        with open(out / "rows.jsonl", "a") as handle:
            handle.write(json.dumps(rows[name]) + "\n")
    return rows


def print_table(args: argparse.Namespace, rows: dict[str, dict], timings: dict[str, float]) -> None:
    print(f"\n{args.env}: {args.eval_users} fresh users per agent, budget {args.budget_steps} env steps, "
          f"LLM size {args.model}, seed {args.seed}")
    header = f"{'agent':<13}{'return':>20}{'sessions':>10}{'retention':>11}{'CTR':>8}{'final sat':>11}{'coverage':>10}"
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        print(f"{name:<13}{row['return']:>11.1f} ± {row['return_ci95']:<6.1f}{row['sessions']:>10.2f}"
              f"{row['return_rate']:>11.3f}{row['ctr']:>8.3f}{row['final_satisfaction']:>11.3f}{row['coverage']:>10.3f}")
    if "myopic" in rows:
        for name in ("ce_ppo", "ce_ppo_kl", "pctr_greedy"):
            if name in rows:
                print(f"{name} / myopic return = {rows[name]['return'] / rows['myopic']['return']:.2f}")
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, env_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, points in curves.items():
        if points:
            steps, returns = zip(*points, strict=True)
            ax.plot(steps, returns, label=name)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episodic return (lives finished in the window)")
    ax.set_title(f"learning curves, {env_id}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
